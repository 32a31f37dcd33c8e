/*
 * oyako/block.h — the block device class, extension ID "oyako.block/1".
 *
 * The host side: `host->get_extension(host, OY_BLOCK_EXTENSION)` returns an
 * oy_host_block table. In attach the driver describes the disk and registers
 * it with register_disk, passing its oy_block_ops. From then on the OS submits
 * requests through ops->submit; the driver completes each accepted request
 * exactly once through oy_host_block.complete.
 */
#ifndef OYAKO_BLOCK_H
#define OYAKO_BLOCK_H

#include <oyako/types.h>
#include <oyako/errors.h>

OY_EXTERN_C_BEGIN

#define OY_BLOCK_EXTENSION "oyako.block/1"

enum oy_block_op {
    OY_BLOCK_READ = 1,
    OY_BLOCK_WRITE = 2,
    OY_BLOCK_FLUSH = 3   /* make every completed write durable; no data */
};

enum oy_block_flags {
    OY_BLOCK_CAN_FLUSH = 1u << 0  /* geometry: the device has a volatile cache */
};

typedef struct oy_block_geometry {
    uint32_t struct_size;
    uint32_t block_size;          /* bytes, a power of two >= 512 */
    uint64_t block_count;
    uint32_t max_transfer_blocks; /* largest request the driver accepts */
    uint32_t queue_depth;         /* requests the driver accepts at once */
    uint32_t flags;               /* OY_BLOCK_CAN_FLUSH */
    uint32_t reserved;
} oy_block_geometry;

OY_STATIC_ASSERT(sizeof(oy_block_geometry) == 32, "oy_block_geometry v1 size");

/* One request. Owned by the host; the driver may use it from a successful
 * submit until the moment it calls complete, and never after. */
typedef struct oy_block_request {
    uint32_t struct_size;
    uint32_t op;                  /* oy_block_op */
    uint64_t lba;                 /* first block */
    uint32_t block_count;         /* 0 only for FLUSH */
    uint32_t flags;               /* none defined yet; ignore unknown bits */
    void *data;                   /* block_count * block_size bytes; NULL for FLUSH.
                                     Host memory the driver may pass to dma_map. */
    void *driver_private[4];      /* scratch space for the driver while it owns the request */
    void *host_private;           /* the host's; the driver must not touch it */
} oy_block_request;

OY_STATIC_ASSERT(offsetof(oy_block_request, data) == 24, "oy_block_request layout is ABI");
OY_STATIC_ASSERT(sizeof(oy_block_request) == 72, "oy_block_request v1 size");

/* The driver's operations for one registered disk. */
typedef struct oy_block_ops {
    uint32_t struct_size;
    uint32_t reserved;
    /* Accept a request: return OY_OK and complete it later (possibly before
     * submit returns, from any thread), or return an error and never complete
     * it. OY_E_BUSY when queue_depth requests are already outstanding;
     * OY_E_INVALID/OY_E_RANGE for a malformed request; OY_E_DEVICE_GONE after
     * removal. Thread-safe: the OS calls it from many threads at once.
     * [any-thread] */
    int32_t (*submit)(void *instance, oy_block_request *request);
} oy_block_ops;

OY_STATIC_ASSERT(sizeof(oy_block_ops) == 16, "oy_block_ops v1 size");

/* The host's block extension table. */
typedef struct oy_host_block {
    uint32_t struct_size;
    uint32_t reserved;
    /* Register a disk for `device`. `geometry` and `ops` are copied;
     * `instance` is passed back to ops. Returns the disk handle. [passive] */
    int32_t (*register_disk)(oy_device *device, const oy_block_geometry *geometry,
                             const oy_block_ops *ops, void *instance, oy_disk **out);
    /* Stop new submissions and unregister. Requests already accepted must
     * still be completed by the driver. [passive] */
    void (*unregister_disk)(oy_disk *disk);
    /* Complete an accepted request with OY_OK or an error code. Exactly once
     * per accepted request. [any-thread] */
    void (*complete)(oy_block_request *request, int32_t status);
} oy_host_block;

OY_STATIC_ASSERT(sizeof(oy_host_block) == 32, "oy_host_block v1 size");

OY_EXTERN_C_END

#endif /* OYAKO_BLOCK_H */
