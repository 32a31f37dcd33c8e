/*
 * oyako/driver.h — what a driver exports: the entry point, its metadata and
 * its driver table.
 *
 * A driver exports exactly one symbol, the function oy_driver_entry. The host
 * calls it once per load with the range of ABI versions it speaks; the driver
 * answers with the highest version both speak and its driver table, or with
 * OY_E_INCOMPATIBLE. Helper oy_negotiate() below does this correctly.
 *
 * Metadata (name, vendor, version, ABI range, device IDs) lives in a section
 * named "oyako_meta" with a fixed layout, so tools read it from the file
 * without running any driver code (`oyako driver inspect`). Declare it with
 * OY_DRIVER_METADATA and point oy_driver.meta at the same object, so what the
 * file says and what the loaded driver reports cannot disagree.
 */
#ifndef OYAKO_DRIVER_H
#define OYAKO_DRIVER_H

#include <oyako/types.h>
#include <oyako/errors.h>
#include <oyako/host.h>

OY_EXTERN_C_BEGIN

/* ---- metadata ---------------------------------------------------------------- */

#define OY_META_MAGIC "OYAKOMD"   /* 7 chars + NUL = 8 bytes */
#define OY_META_SECTION "oyako_meta"
#define OY_META_MAX_IDS 16

/* Match any value of a device ID field. */
#define OY_ID_ANY 0xFFFFu

typedef struct oy_device_id {
    uint16_t vendor_id;
    uint16_t device_id;     /* OY_ID_ANY matches every device of the vendor */
} oy_device_id;

typedef struct oy_driver_meta {
    char magic[8];          /* OY_META_MAGIC */
    uint32_t struct_size;   /* sizeof(oy_driver_meta) */
    uint32_t abi_min;       /* lowest ABI version the driver speaks */
    uint32_t abi_max;       /* highest ABI version the driver speaks */
    uint32_t id_count;      /* entries used in ids[] */
    char name[32];          /* short name, e.g. "nvmelite"; NUL-terminated */
    char vendor[64];
    char version[32];       /* the driver's own version, e.g. "1.0.0" */
    char description[128];
    char device_class[32];  /* class extension it provides, e.g. "oyako.block/1" */
    oy_device_id ids[OY_META_MAX_IDS];
} oy_driver_meta;

OY_STATIC_ASSERT(sizeof(oy_device_id) == 4, "oy_device_id layout is ABI");
OY_STATIC_ASSERT(offsetof(oy_driver_meta, name) == 24, "oy_driver_meta layout is ABI");
OY_STATIC_ASSERT(offsetof(oy_driver_meta, ids) == 312, "oy_driver_meta layout is ABI");
OY_STATIC_ASSERT(sizeof(oy_driver_meta) == 376, "oy_driver_meta v1 size");

/* Place the driver's metadata object in the metadata section. Use at file
 * scope: OY_DRIVER_METADATA(my_meta) = { OY_META_MAGIC, sizeof(oy_driver_meta), ... }; */
#if defined(__GNUC__) || defined(__clang__)
#define OY_DRIVER_METADATA(var) \
    static __attribute__((used, section(OY_META_SECTION), aligned(8))) const oy_driver_meta var
#else
#define OY_DRIVER_METADATA(var) static const oy_driver_meta var
#endif

/* ---- driver table -------------------------------------------------------------- */

/* State machine the host follows, per load and per device:
 *   load: entry -> init ............................................ deinit -> unload
 *   device:          probe -> attach -> I/O ... -> [remove] -> detach -> attach ...
 * Calls out of this order are host bugs, but a robust driver answers them
 * with OY_E_STATE instead of crashing; the conformance suite checks that. */
typedef struct oy_driver {
    uint32_t struct_size;
    uint32_t reserved;
    /* The same object as the file's metadata section. Mandatory. */
    const oy_driver_meta *meta;

    /* Mandatory. Called once after negotiation. `host` stays valid until
     * deinit returns. Store driver-wide state in *out_ctx. [passive] */
    int32_t (*init)(const oy_host *host, void **out_ctx);

    /* Mandatory. Every device is detached before this is called. Release all
     * driver-wide resources. [passive] */
    void (*deinit)(void *ctx);

    /* Mandatory. Return OY_OK to claim the device, OY_E_NOT_SUPPORTED if it
     * is not one of this driver's. Must not touch the hardware. [passive] */
    int32_t (*probe)(void *ctx, const oy_device_info *info);

    /* Mandatory. Bring the device up: map registers, allocate DMA, hook
     * interrupts, register with the I/O subsystem. On failure, release
     * everything acquired and return the error. `device` stays valid until
     * detach returns. [passive] */
    int32_t (*attach)(void *ctx, oy_device *device, void **out_instance);

    /* Mandatory. Stop the device and release every resource of the instance.
     * All requests the driver accepted must be completed before it returns.
     * [passive] */
    int32_t (*detach)(void *instance);

    /* Optional (may be NULL). Surprise removal: the device is already gone
     * (reads return all ones). Complete every outstanding request with
     * OY_E_DEVICE_GONE and refuse new ones; detach follows. [passive] */
    void (*remove)(void *instance);

    /* Optional (may be NULL). Look up a driver extension by versioned ID for
     * an attached instance. Unknown IDs return NULL. [any-thread] */
    const void *(*get_extension)(void *instance, const char *id);
} oy_driver;

OY_STATIC_ASSERT(offsetof(oy_driver, meta) == 8, "oy_driver layout is ABI");
OY_STATIC_ASSERT(sizeof(oy_driver) == 72, "oy_driver v1 size");

/* ---- entry and negotiation --------------------------------------------------------- */

typedef struct oy_entry_args {
    uint32_t struct_size;      /* in: sizeof(oy_entry_args) as the host knows it */
    uint32_t host_abi_min;     /* in */
    uint32_t host_abi_max;     /* in */
    uint32_t driver_abi_min;   /* out: always filled, also on refusal */
    uint32_t driver_abi_max;   /* out: always filled, also on refusal */
    uint32_t abi_version;      /* out: the chosen version, on OY_OK */
    const oy_driver *driver;   /* out: on OY_OK; static, lives until unload */
} oy_entry_args;

OY_STATIC_ASSERT(offsetof(oy_entry_args, driver) == 24, "oy_entry_args layout is ABI");
OY_STATIC_ASSERT(sizeof(oy_entry_args) == 32, "oy_entry_args v1 size");

/* The one symbol a driver exports. Returns OY_OK, OY_E_INCOMPATIBLE when the
 * ranges do not overlap, or OY_E_INVALID for malformed args. [passive], once
 * per load, before anything else. */
typedef int32_t (*oy_driver_entry_fn)(oy_entry_args *args);
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *args);

/* Helper for drivers: pick the highest version in both ranges. */
static inline int32_t oy_negotiate(oy_entry_args *args, uint32_t driver_min, uint32_t driver_max,
                                   const oy_driver *driver) {
    uint32_t low, high;
    if (args == NULL || args->struct_size < sizeof(oy_entry_args)) return OY_E_INVALID;
    args->driver_abi_min = driver_min;
    args->driver_abi_max = driver_max;
    args->abi_version = 0;
    args->driver = NULL;
    if (args->host_abi_min > args->host_abi_max) return OY_E_INVALID;
    low = args->host_abi_min > driver_min ? args->host_abi_min : driver_min;
    high = args->host_abi_max < driver_max ? args->host_abi_max : driver_max;
    if (low > high) return OY_E_INCOMPATIBLE;
    args->abi_version = high;
    args->driver = driver;
    return OY_OK;
}

OY_EXTERN_C_END

#endif /* OYAKO_DRIVER_H */
