/*
 * e1klite.c — vendor driver for the e1klite network controller.
 *
 * Written only against the Oyako SDK. Transmit copies each frame into a
 * per-slot bounce buffer allocated at attach, so the I/O path never
 * allocates; receive posts fixed buffers and hands frames to the OS from
 * the interrupt handler, which also reclaims finished transmits.
 */
#include <oyako/oyako.h>
#include <string.h>

#include "e1klite_regs.h"

#define E1K_RING 128u
/* Receive buffers handled per interrupt (NAPI's default weight). */
#define E1K_RX_BUDGET 64u
#define E1K_BUFFER 2048u

OY_DRIVER_METADATA(e1k_meta) = {
    OY_META_MAGIC, sizeof(oy_driver_meta), OY_ABI_VERSION_1, OY_ABI_VERSION_1, 1,
    "e1klite", "Oyako Reference Devices", "1.0.0",
    "Driver for the e1klite Ethernet controller", OY_NET_EXTENSION,
    {{E1K_VENDOR_ID, E1K_DEVICE_ID}},
};

typedef struct e1k_ctx {
    const oy_host *host;
    const oy_host_net *net;
} e1k_ctx;

typedef struct e1k_dev {
    e1k_ctx *ctx;
    const oy_host *host;
    oy_device *device;
    oy_regs *regs;
    oy_lock *lock;            /* guards the TX ring, counters and state flags */
    oy_irq *irq;
    oy_dma_buffer *tx_ring_buf, *tx_data_buf, *rx_ring_buf, *rx_data_buf;
    volatile e1k_desc *tx_ring, *rx_ring;
    uint8_t *tx_data, *rx_data;
    oy_dma_addr tx_ring_addr, tx_data_addr, rx_ring_addr, rx_data_addr;
    oy_net_frame *tx_frames[E1K_RING];
    uint32_t tx_head, tx_tail, tx_count;
    uint32_t rx_next;
    oy_netdev *netdev;
    uint8_t mac[6];
    uint32_t link;
    int gone, stopping;
    oy_net_stats stats;
} e1k_dev;

/* Live instances, so that detach twice or remove after detach is refused. */
static oy_instance_set e1k_instances;

static void e1k_write(e1k_dev *d, uint32_t reg, uint32_t value) { d->host->reg_write32(d->regs, reg, value); }
static uint32_t e1k_read(e1k_dev *d, uint32_t reg) { return d->host->reg_read32(d->regs, reg); }

/* [interrupt] Frames the device finished sending: collect under the lock,
 * complete outside it (the OS may transmit again from tx_complete). */
static void e1k_reclaim_tx(e1k_dev *d) {
    oy_net_frame *done[E1K_RING];
    uint32_t n = 0, i;
    d->host->lock_acquire(d->lock);
    while (d->tx_count > 0 && (d->tx_ring[d->tx_head].status & E1K_DESC_DD)) {
        done[n++] = d->tx_frames[d->tx_head];
        d->stats.tx_packets++;
        d->stats.tx_bytes += d->tx_frames[d->tx_head]->length;
        d->tx_frames[d->tx_head] = NULL;
        d->tx_head = (d->tx_head + 1u) % E1K_RING;
        d->tx_count--;
    }
    d->host->lock_release(d->lock);
    for (i = 0; i < n; i++) d->ctx->net->tx_complete(done[i], OY_OK);
}

/* [interrupt] Hand filled receive buffers to the OS and re-post them, at
 * most E1K_RX_BUDGET per interrupt: under a flood the device refills what
 * the loop frees, so an unbounded loop would never end. Returns nonzero if
 * filled buffers are left (the caller asks to be interrupted again). */
static int e1k_receive(e1k_dev *d) {
    uint32_t handled;
    for (handled = 0; handled < E1K_RX_BUDGET; handled++) {
        volatile e1k_desc *desc = &d->rx_ring[d->rx_next];
        uint16_t length;
        if (!(desc->status & E1K_DESC_DD)) return 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        length = desc->length;
        if ((desc->status & E1K_RXD_EOP) && length >= 14u && length <= E1K_BUFFER) {
            d->ctx->net->receive(d->netdev, d->rx_data + (size_t)d->rx_next * E1K_BUFFER, length);
            d->stats.rx_packets++;
            d->stats.rx_bytes += length;
        } else {
            d->stats.rx_errors++;
        }
        desc->status = 0;
        e1k_write(d, E1K_RDT, d->rx_next);
        d->rx_next = (d->rx_next + 1u) % E1K_RING;
    }
    return (d->rx_ring[d->rx_next].status & E1K_DESC_DD) != 0;
}

/* [interrupt] */
static void e1k_irq(void *arg) {
    e1k_dev *d = (e1k_dev *)arg;
    uint32_t cause = e1k_read(d, E1K_ICR);
    if (cause == 0xFFFFFFFFu) return; /* device gone */
    if (cause & E1K_ICR_LSC) {
        d->link = (e1k_read(d, E1K_STATUS) & E1K_STATUS_LU) ? OY_LINK_UP : OY_LINK_DOWN;
        if (d->netdev) d->ctx->net->link_changed(d->netdev, d->link);
    }
    if (cause & E1K_ICR_RXO) d->stats.rx_dropped++;
    /* Budget spent with buffers still filled: raise RXT0 again (ICS) and
     * come back after other work has had the CPU, as NAPI reschedules. */
    if ((cause & (E1K_ICR_RXT0 | E1K_ICR_RXO)) && d->netdev && e1k_receive(d)) e1k_write(d, E1K_ICS, E1K_ICR_RXT0);
    if (cause & E1K_ICR_TXDW) e1k_reclaim_tx(d);
}

/* [any-thread] */
static int32_t e1k_transmit(void *instance, oy_net_frame *frame) {
    e1k_dev *d = (e1k_dev *)instance;
    uint32_t slot, length;
    volatile e1k_desc *desc;
    if (d == NULL || frame == NULL || frame->struct_size < sizeof(oy_net_frame) || frame->data == NULL) return OY_E_INVALID;
    if (frame->length < 14u || frame->length > OY_NET_MAX_FRAME) return OY_E_INVALID;
    d->host->lock_acquire(d->lock);
    if (d->gone) {
        d->host->lock_release(d->lock);
        return OY_E_DEVICE_GONE;
    }
    if (d->stopping) {
        d->host->lock_release(d->lock);
        return OY_E_STATE;
    }
    if (d->tx_count >= E1K_RING - 1u) {
        d->host->lock_release(d->lock);
        return OY_E_BUSY;
    }
    slot = d->tx_tail;
    length = frame->length < OY_NET_MIN_FRAME ? OY_NET_MIN_FRAME : frame->length;
    memcpy(d->tx_data + (size_t)slot * E1K_BUFFER, frame->data, frame->length);
    if (length > frame->length) memset(d->tx_data + (size_t)slot * E1K_BUFFER + frame->length, 0, length - frame->length);
    desc = &d->tx_ring[slot];
    desc->buffer = d->tx_data_addr + (oy_dma_addr)slot * E1K_BUFFER;
    desc->length = (uint16_t)length;
    desc->cso_or_csum_lo = 0;
    desc->cmd_or_csum_hi = E1K_TXD_EOP | E1K_TXD_IFCS | E1K_TXD_RS;
    desc->status = 0;
    d->tx_frames[slot] = frame;
    d->tx_tail = (slot + 1u) % E1K_RING;
    d->tx_count++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e1k_write(d, E1K_TDT, d->tx_tail);
    d->host->lock_release(d->lock);
    return OY_OK;
}

static int32_t e1k_get_stats(void *instance, oy_net_stats *out) {
    e1k_dev *d = (e1k_dev *)instance;
    uint32_t size;
    if (d == NULL || out == NULL || out->struct_size < 8u) return OY_E_INVALID;
    size = out->struct_size < sizeof(oy_net_stats) ? out->struct_size : (uint32_t)sizeof(oy_net_stats);
    d->host->lock_acquire(d->lock);
    memcpy((uint8_t *)out + 8, (const uint8_t *)&d->stats + 8, size - 8u);
    d->host->lock_release(d->lock);
    return OY_OK;
}

static int32_t e1k_set_filter(void *instance, const uint8_t *macs, uint32_t count, uint32_t flags) {
    e1k_dev *d = (e1k_dev *)instance;
    uint32_t i, rctl;
    int gone;
    if (d == NULL || (count > 0 && macs == NULL)) return OY_E_INVALID;
    if (count > E1K_RA_ENTRIES - 1u) return OY_E_RANGE;
    d->host->lock_acquire(d->lock);
    gone = d->gone;
    d->host->lock_release(d->lock);
    if (gone) return OY_E_DEVICE_GONE; /* removed: nothing to program */
    for (i = 1; i < E1K_RA_ENTRIES; i++) {
        if (i <= count) {
            const uint8_t *m = macs + 6u * (i - 1u);
            e1k_write(d, E1K_RAL(i), (uint32_t)m[0] | (uint32_t)m[1] << 8 | (uint32_t)m[2] << 16 | (uint32_t)m[3] << 24);
            e1k_write(d, E1K_RAH(i), (uint32_t)m[4] | (uint32_t)m[5] << 8 | E1K_RAH_AV);
        } else {
            e1k_write(d, E1K_RAH(i), 0);
        }
    }
    rctl = E1K_RCTL_EN | E1K_RCTL_MPE;
    if (flags & OY_NET_FILTER_BROADCAST) rctl |= E1K_RCTL_BAM;
    if (flags & OY_NET_FILTER_PROMISCUOUS) rctl |= E1K_RCTL_UPE;
    e1k_write(d, E1K_RCTL, rctl);
    return OY_OK;
}

static const oy_net_ops e1k_ops = {sizeof(oy_net_ops), 0, e1k_transmit, e1k_get_stats, e1k_set_filter};

static int32_t e1k_init(const oy_host *host, void **out_ctx) {
    e1k_ctx *c;
    const oy_host_net *net;
    if (host == NULL || out_ctx == NULL) return OY_E_INVALID;
    net = (const oy_host_net *)host->get_extension(host, OY_NET_EXTENSION);
    if (net == NULL || net->struct_size < sizeof(oy_host_net)) return OY_E_NOT_SUPPORTED;
    c = (e1k_ctx *)host->mem_alloc(host, NULL, sizeof(*c));
    if (c == NULL) return OY_E_NOMEM;
    c->host = host;
    c->net = net;
    *out_ctx = c;
    return OY_OK;
}

static void e1k_deinit(void *ctx) {
    e1k_ctx *c = (e1k_ctx *)ctx;
    if (c) c->host->mem_free(c->host, c);
}

static int32_t e1k_probe(void *ctx, const oy_device_info *info) {
    (void)ctx;
    if (info == NULL || info->struct_size < sizeof(oy_device_info)) return OY_E_INVALID;
    if (info->vendor_id != E1K_VENDOR_ID || info->device_id != E1K_DEVICE_ID) return OY_E_NOT_SUPPORTED;
    if (info->bar_count < 1 || info->bar_kind[0] != OY_BAR_MMIO || info->irq_count < 1) return OY_E_NOT_SUPPORTED;
    return OY_OK;
}

static void e1k_teardown(e1k_dev *d) {
    const oy_host *h = d->host;
    if (d->regs && !d->gone) {
        e1k_write(d, E1K_IMC, 0xFFFFFFFFu);
        e1k_write(d, E1K_RCTL, 0);
        e1k_write(d, E1K_TCTL, 0);
    }
    if (d->irq) h->irq_unhook(d->irq);
    if (d->rx_data_buf) h->dma_free(d->rx_data_buf);
    if (d->rx_ring_buf) h->dma_free(d->rx_ring_buf);
    if (d->tx_data_buf) h->dma_free(d->tx_data_buf);
    if (d->tx_ring_buf) h->dma_free(d->tx_ring_buf);
    if (d->lock) h->lock_destroy(d->lock);
    if (d->regs) h->regs_unmap(d->regs);
    h->mem_free(h, d);
}

static int32_t e1k_attach(void *ctx, oy_device *device, void **out_instance) {
    e1k_ctx *c = (e1k_ctx *)ctx;
    const oy_host *h;
    e1k_dev *d;
    uint64_t size = 0;
    void *cpu;
    uint32_t i, ral, rah;
    oy_net_info info;
    int32_t rc;
    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;
    h = c->host;
    d = (e1k_dev *)h->mem_alloc(h, device, sizeof(*d));
    if (d == NULL) return OY_E_NOMEM;
    d->ctx = c;
    d->host = h;
    d->device = device;
    d->stats.struct_size = sizeof(oy_net_stats);

#define E1K_TRY(expr)               \
    do {                            \
        rc = (expr);                \
        if (rc != OY_OK) goto fail; \
    } while (0)

    E1K_TRY(h->regs_map(device, 0, &d->regs, &size));
    if (size < E1K_RAH(E1K_RA_ENTRIES - 1u) + 4u) {
        rc = OY_E_NOT_SUPPORTED;
        goto fail;
    }
    if (e1k_read(d, E1K_STATUS) == 0xFFFFFFFFu) {
        rc = OY_E_DEVICE_GONE;
        goto fail;
    }
    e1k_write(d, E1K_CTRL, E1K_CTRL_RST);
    ral = e1k_read(d, E1K_RAL(0));
    rah = e1k_read(d, E1K_RAH(0));
    d->mac[0] = (uint8_t)ral; d->mac[1] = (uint8_t)(ral >> 8); d->mac[2] = (uint8_t)(ral >> 16);
    d->mac[3] = (uint8_t)(ral >> 24); d->mac[4] = (uint8_t)rah; d->mac[5] = (uint8_t)(rah >> 8);

    E1K_TRY(h->lock_create(h, device, &d->lock));
    E1K_TRY(h->dma_alloc(device, E1K_RING * sizeof(e1k_desc), &d->tx_ring_buf, &cpu, &d->tx_ring_addr));
    d->tx_ring = (volatile e1k_desc *)cpu;
    E1K_TRY(h->dma_alloc(device, E1K_RING * E1K_BUFFER, &d->tx_data_buf, &cpu, &d->tx_data_addr));
    d->tx_data = (uint8_t *)cpu;
    E1K_TRY(h->dma_alloc(device, E1K_RING * sizeof(e1k_desc), &d->rx_ring_buf, &cpu, &d->rx_ring_addr));
    d->rx_ring = (volatile e1k_desc *)cpu;
    E1K_TRY(h->dma_alloc(device, E1K_RING * E1K_BUFFER, &d->rx_data_buf, &cpu, &d->rx_data_addr));
    d->rx_data = (uint8_t *)cpu;
    for (i = 0; i < E1K_RING; i++) {
        d->rx_ring[i].buffer = d->rx_data_addr + (oy_dma_addr)i * E1K_BUFFER;
        d->rx_ring[i].status = 0;
    }

    e1k_write(d, E1K_TDBAL, (uint32_t)d->tx_ring_addr);
    e1k_write(d, E1K_TDBAH, (uint32_t)(d->tx_ring_addr >> 32));
    e1k_write(d, E1K_TDLEN, E1K_RING * (uint32_t)sizeof(e1k_desc));
    e1k_write(d, E1K_TDH, 0);
    e1k_write(d, E1K_TDT, 0);
    e1k_write(d, E1K_RDBAL, (uint32_t)d->rx_ring_addr);
    e1k_write(d, E1K_RDBAH, (uint32_t)(d->rx_ring_addr >> 32));
    e1k_write(d, E1K_RDLEN, E1K_RING * (uint32_t)sizeof(e1k_desc));
    e1k_write(d, E1K_RDH, 0);
    e1k_write(d, E1K_RDT, E1K_RING - 1u);

    E1K_TRY(h->irq_hook(device, 0, e1k_irq, d, &d->irq));
    d->link = (e1k_read(d, E1K_STATUS) & E1K_STATUS_LU) ? OY_LINK_UP : OY_LINK_DOWN;

    memset(&info, 0, sizeof(info));
    info.struct_size = sizeof(info);
    memcpy(info.mac, d->mac, 6);
    info.mtu = 1500;
    info.max_frame = OY_NET_MAX_FRAME;
    info.tx_queue_depth = E1K_RING - 1u;
    info.link = d->link;
    if (!oy_instance_add(&e1k_instances, d)) {
        rc = OY_E_BUSY;
        goto fail;
    }
    rc = c->net->register_netdev(device, &info, &e1k_ops, d, &d->netdev);
    if (rc != OY_OK) {
        oy_instance_take(&e1k_instances, d);
        goto fail;
    }
    e1k_write(d, E1K_TCTL, E1K_TCTL_EN);
    e1k_write(d, E1K_RCTL, E1K_RCTL_EN | E1K_RCTL_BAM | E1K_RCTL_MPE);
    e1k_write(d, E1K_IMS, E1K_ICR_TXDW | E1K_ICR_LSC | E1K_ICR_RXO | E1K_ICR_RXT0);
#undef E1K_TRY
    *out_instance = d;
    return OY_OK;
fail:
    if (d->netdev) c->net->unregister_netdev(d->netdev);
    e1k_teardown(d);
    return rc;
}

/* [passive] Complete every frame still in the TX ring with `status`. */
static void e1k_fail_tx(e1k_dev *d, int32_t status) {
    for (;;) {
        oy_net_frame *frame = NULL;
        d->host->lock_acquire(d->lock);
        if (d->tx_count > 0) {
            frame = d->tx_frames[d->tx_head];
            d->tx_frames[d->tx_head] = NULL;
            d->tx_head = (d->tx_head + 1u) % E1K_RING;
            d->tx_count--;
            d->stats.tx_dropped++;
        }
        d->host->lock_release(d->lock);
        if (frame == NULL) break;
        d->ctx->net->tx_complete(frame, status);
    }
}

/* [passive] Transmits still with the device; read under the lock, since the
 * interrupt handler changes it. */
static uint32_t e1k_tx_pending(e1k_dev *d) {
    uint32_t n;
    d->host->lock_acquire(d->lock);
    n = d->tx_count;
    d->host->lock_release(d->lock);
    return n;
}

static int32_t e1k_detach(void *instance) {
    e1k_dev *d = (e1k_dev *)instance;
    oy_event *wait = NULL;
    int tries;
    if (d == NULL) return OY_E_INVALID;
    if (!oy_instance_take(&e1k_instances, d)) return OY_E_STATE;
    /* Quiet the receive side before unregistering: once the receiver and
     * the interrupt are off and the handler unhooked (which waits for a
     * running one), nothing reaches the netdev after it is gone. Queued
     * transmits are reclaimed below by polling. */
    if (!d->gone) {
        e1k_write(d, E1K_IMC, 0xFFFFFFFFu);
        e1k_write(d, E1K_RCTL, 0);
    }
    if (d->irq) {
        d->host->irq_unhook(d->irq);
        d->irq = NULL;
    }
    d->ctx->net->unregister_netdev(d->netdev);
    d->host->lock_acquire(d->lock);
    d->stopping = 1;
    d->host->lock_release(d->lock);
    /* Give queued transmits a moment to leave, then cancel the rest. */
    if (!d->gone && d->host->event_create(d->host, d->device, &wait) == OY_OK) {
        for (tries = 0; tries < 100 && e1k_tx_pending(d) > 0; tries++) {
            e1k_reclaim_tx(d);
            d->host->event_wait(wait, 1000000);
        }
        d->host->event_destroy(wait);
    }
    e1k_fail_tx(d, d->gone ? OY_E_DEVICE_GONE : OY_E_CANCELED);
    e1k_teardown(d);
    return OY_OK;
}

static void e1k_remove(void *instance) {
    e1k_dev *d = (e1k_dev *)instance;
    if (!oy_instance_contains(&e1k_instances, d)) return;
    d->host->lock_acquire(d->lock);
    d->gone = 1;
    d->host->lock_release(d->lock);
    e1k_fail_tx(d, OY_E_DEVICE_GONE);
}

/* ---- control methods ------------------------------------------------------------- */

static uint32_t e1k_m_link(void *instance) {
    e1k_dev *d = (e1k_dev *)instance;
    return oy_instance_contains(&e1k_instances, d) ? d->link : OY_LINK_DOWN;
}

static uint64_t e1k_m_tx_packets(void *instance) {
    e1k_dev *d = (e1k_dev *)instance;
    return oy_instance_contains(&e1k_instances, d) ? d->stats.tx_packets : 0;
}

static int32_t e1k_m_set_promiscuous(void *instance, _Bool on) {
    e1k_dev *d = (e1k_dev *)instance;
    if (!oy_instance_contains(&e1k_instances, d)) return OY_E_STATE;
    return e1k_set_filter(d, NULL, 0, OY_NET_FILTER_BROADCAST | (on ? OY_NET_FILTER_PROMISCUOUS : 0u));
}

static const oy_control_method e1k_methods[] = {
    {sizeof(oy_control_method), 0, "link", "u32()", "Link state: 1 up, 0 down", (oy_control_fn)e1k_m_link},
    {sizeof(oy_control_method), 0, "tx_packets", "u64()", "Frames transmitted since attach", (oy_control_fn)e1k_m_tx_packets},
    {sizeof(oy_control_method), 0, "set_promiscuous", "i32(bool)", "Accept every unicast frame", (oy_control_fn)e1k_m_set_promiscuous},
};

static const oy_control_table e1k_control = {sizeof(oy_control_table), 3, e1k_methods};

static const void *e1k_get_extension(void *instance, const char *id) {
    (void)instance;
    if (id == NULL) return NULL;
    if (strcmp(id, OY_NET_EXTENSION) == 0) return &e1k_ops;
    if (strcmp(id, OY_CONTROL_EXTENSION) == 0) return &e1k_control;
    return NULL;
}

static const oy_driver e1k_driver = {
    sizeof(oy_driver), 0, &e1k_meta,
    e1k_init, e1k_deinit, e1k_probe, e1k_attach, e1k_detach, e1k_remove, e1k_get_extension,
};

OY_EXPORT int32_t oy_driver_entry(oy_entry_args *args) {
    return oy_negotiate(args, OY_ABI_VERSION_1, OY_ABI_VERSION_1, &e1k_driver);
}
