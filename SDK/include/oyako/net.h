/*
 * oyako/net.h — the network device class, extension ID "oyako.net/1".
 *
 * Host side: `host->get_extension(host, OY_NET_EXTENSION)` returns an
 * oy_host_net table. In attach the driver registers its interface with
 * register_netdev, passing its oy_net_ops. The OS transmits through
 * ops->transmit; the driver completes each accepted frame exactly once with
 * tx_complete, hands every received frame to receive, and reports link
 * changes with link_changed.
 */
#ifndef OYAKO_NET_H
#define OYAKO_NET_H

#include <oyako/types.h>
#include <oyako/errors.h>

OY_EXTERN_C_BEGIN

#define OY_NET_EXTENSION "oyako.net/1"

/* Largest Ethernet frame without FCS (MTU 1500 + 14-byte header). */
#define OY_NET_MAX_FRAME 1514u
/* Smallest frame on the wire without FCS; shorter frames are padded. */
#define OY_NET_MIN_FRAME 60u

enum oy_link_state { OY_LINK_DOWN = 0, OY_LINK_UP = 1 };

enum oy_net_filter_flags {
    OY_NET_FILTER_BROADCAST = 1u << 0,   /* accept ff:ff:ff:ff:ff:ff */
    OY_NET_FILTER_PROMISCUOUS = 1u << 1  /* accept every unicast */
};

typedef struct oy_net_info {
    uint32_t struct_size;
    uint8_t mac[6];          /* the interface's own address */
    uint16_t reserved;
    uint32_t mtu;            /* payload bytes, 1500 for Ethernet */
    uint32_t max_frame;      /* largest frame transmit accepts, without FCS: 60 to 65535 */
    uint32_t tx_queue_depth; /* frames transmit accepts at once: 1 to 4096 */
    uint32_t link;           /* oy_link_state at registration */
} oy_net_info;

OY_STATIC_ASSERT(sizeof(oy_net_info) == 28, "oy_net_info v1 size");

typedef struct oy_net_stats {
    uint32_t struct_size;
    uint32_t reserved;
    uint64_t tx_packets, tx_bytes, tx_errors, tx_dropped;
    uint64_t rx_packets, rx_bytes, rx_errors, rx_dropped;
} oy_net_stats;

OY_STATIC_ASSERT(sizeof(oy_net_stats) == 72, "oy_net_stats v1 size");

/* One frame to transmit. Owned by the host; the driver may use it from a
 * successful transmit until it calls tx_complete, and never after. */
typedef struct oy_net_frame {
    uint32_t struct_size;
    uint32_t length;          /* bytes at data, without FCS */
    void *data;               /* host memory; the driver copies or dma_maps it */
    void *driver_private[2];  /* scratch for the driver while it owns the frame */
    void *host_private;       /* the host's; the driver must not touch it */
} oy_net_frame;

OY_STATIC_ASSERT(offsetof(oy_net_frame, data) == 8, "oy_net_frame layout is ABI");
OY_STATIC_ASSERT(sizeof(oy_net_frame) == 40, "oy_net_frame v1 size");

typedef struct oy_net_ops {
    uint32_t struct_size;
    uint32_t reserved;
    /* Accept a frame: OY_OK and tx_complete later (possibly before transmit
     * returns, from any thread), or an error and never complete it.
     * OY_E_BUSY when tx_queue_depth frames are outstanding; OY_E_INVALID for
     * a frame shorter than 14 bytes or longer than max_frame;
     * OY_E_DEVICE_GONE after removal. Thread-safe. [any-thread] */
    int32_t (*transmit)(void *instance, oy_net_frame *frame);
    /* Fill counters; `out->struct_size` says how much the host has room
     * for. [any-thread] */
    int32_t (*get_stats)(void *instance, oy_net_stats *out);
    /* Program the receive filter: `count` 6-byte addresses at `macs`
     * (copied) plus oy_net_filter_flags, replacing the previous ones. The
     * interface's own address is always accepted besides. OY_E_RANGE when
     * the device holds fewer addresses, and the filter stays as it was.
     * [passive] */
    int32_t (*set_filter)(void *instance, const uint8_t *macs, uint32_t count, uint32_t flags);
} oy_net_ops;

OY_STATIC_ASSERT(sizeof(oy_net_ops) == 32, "oy_net_ops v1 size");

typedef struct oy_host_net {
    uint32_t struct_size;
    uint32_t reserved;
    /* Register an interface for `device`. `info` and `ops` are copied;
     * `instance` is passed back to ops. [passive] */
    int32_t (*register_netdev)(oy_device *device, const oy_net_info *info, const oy_net_ops *ops, void *instance, oy_netdev **out);
    /* Stop transmitting to it and unregister. Accepted frames must still be
     * completed by the driver. [passive] */
    void (*unregister_netdev)(oy_netdev *netdev);
    /* Complete an accepted frame with OY_OK or an error. Exactly once.
     * [any-thread] */
    void (*tx_complete)(oy_net_frame *frame, int32_t status);
    /* A frame arrived. `data` is copied before this returns. [any-thread] */
    void (*receive)(oy_netdev *netdev, const void *data, uint32_t length);
    /* The link went up or down (oy_link_state). [any-thread] */
    void (*link_changed)(oy_netdev *netdev, uint32_t state);
} oy_host_net;

OY_STATIC_ASSERT(sizeof(oy_host_net) == 48, "oy_host_net v1 size");

OY_EXTERN_C_END

#endif /* OYAKO_NET_H */
