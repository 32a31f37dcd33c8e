/*
 * e1kx.c — an e1klite driver written as a third party would: from SDK/ and
 * the datasheet alone, with choices Plugins/e1klite does not make. The
 * suite must pass it (see Tests/Fixtures/drivers/nvx/nvx.c).
 *
 * Its choices:
 * - NAPI-style: the interrupt handler reads ICR, masks every cause at the
 *   device (IMC) and queues a work item, which reaps transmits, reports the
 *   link, takes at most 32 received frames and queues itself again while
 *   more wait, and only then unmasks (IMS);
 * - frames are copied into per-descriptor bounce buffers (padded with zeros
 *   to 60 bytes), never dma_mapped;
 * - 128 receive and 64 transmit descriptors in one DMA buffer with all the
 *   buffers; the extra filter addresses in RAL/RAH[1..15];
 * - detach stops the engines and masks, unhooks, destroys the work, and
 *   only then unregisters and completes what the device never sent.
 */
#include <oyako/oyako.h>
#include <oyako/instances.h>
#include <string.h>

#define RXN 128u
#define TXN 64u
#define BUF 2048u
#define BUDGET 32
#define FILTER_SLOTS 15u

enum { CTRL = 0x0000, STATUS = 0x0008, ICR = 0x00C0, IMS = 0x00D0, IMC = 0x00D8, RCTL = 0x0100, TCTL = 0x0400,
       RDBAL = 0x2800, RDBAH = 0x2804, RDLEN = 0x2808, RDH = 0x2810, RDT = 0x2818,
       TDBAL = 0x3800, TDBAH = 0x3804, TDLEN = 0x3808, TDH = 0x3810, TDT = 0x3818, RAL = 0x5400, RAH = 0x5404 };
enum { C_TXDW = 1u << 0, C_LSC = 1u << 2, C_RXO = 1u << 6, C_RXT0 = 1u << 7, CAUSES = C_TXDW | C_LSC | C_RXO | C_RXT0 };
enum { RCTL_EN = 1u << 1, RCTL_UPE = 1u << 3, RCTL_MPE = 1u << 4, RCTL_BAM = 1u << 15 };

struct desc { uint64_t addr; uint16_t len; uint8_t b10, b11, sta, b13; uint16_t special; };

struct e1kx {
    const oy_host *h; oy_device *dev; oy_regs *regs; const oy_host_net *net;
    oy_dma_buffer *mem; uint8_t *cpu; oy_dma_addr da;
    oy_lock *lock; oy_work *poll; oy_irq *irq; oy_netdev *nd;
    uint8_t mac[6];
    uint32_t rx_next, tx_head, tx_tail, tx_count; oy_net_frame *tx_frames[TXN];
    uint32_t pending; int gone; int running; uint32_t link;
    uint64_t txp, txb, txe, rxp, rxb, rxe, rxd;
};

static const oy_host *g_host;
static oy_instance_set g_live;

/* one DMA buffer: rx ring, tx ring, rx buffers, tx bounce buffers */
#define RXR_OFF 0u
#define TXR_OFF 4096u
#define RXB_OFF 8192u
#define TXB_OFF (RXB_OFF + RXN * BUF)
#define MEM_SIZE (TXB_OFF + TXN * BUF)

static uint32_t rd(struct e1kx *d, uint32_t r) { return d->h->reg_read32(d->regs, r); }
static void wr(struct e1kx *d, uint32_t r, uint32_t v) { d->h->reg_write32(d->regs, r, v); }
static volatile struct desc *rxd(struct e1kx *d, uint32_t i) { return (volatile struct desc *)(d->cpu + RXR_OFF + i * 16u); }
static volatile struct desc *txd(struct e1kx *d, uint32_t i) { return (volatile struct desc *)(d->cpu + TXR_OFF + i * 16u); }

/* top half: take the causes, mask them at the device, defer the rest */
static void on_irq(void *arg) {
    struct e1kx *d = arg;
    uint32_t icr = rd(d, ICR);
    if (icr == 0 || icr == 0xFFFFFFFFu) return;
    wr(d, IMC, CAUSES);
    __atomic_or_fetch(&d->pending, icr, __ATOMIC_ACQ_REL);
    d->h->work_queue(d->poll);
}

/* completes sent frames (all of them with `forced` when force) outside the lock */
static void tx_reclaim(struct e1kx *d, int force, int32_t forced) {
    oy_net_frame *done[TXN]; int32_t st[TXN]; uint32_t n = 0;
    d->h->lock_acquire(d->lock);
    while (d->tx_count) {
        volatile struct desc *t = txd(d, d->tx_head);
        int sent = (t->sta & 1) != 0;
        if (!sent && !force) break;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        done[n] = d->tx_frames[d->tx_head];
        d->tx_frames[d->tx_head] = NULL;
        st[n] = sent ? OY_OK : forced;
        if (sent) { d->txp++; d->txb += done[n]->length; } else d->txe++;
        n++;
        d->tx_head = (d->tx_head + 1) % TXN;
        d->tx_count--;
    }
    d->h->lock_release(d->lock);
    for (uint32_t i = 0; i < n; i++) d->net->tx_complete(done[i], st[i]);
}

/* up to BUDGET frames; nonzero when more are waiting */
static int rx_poll(struct e1kx *d) {
    for (int n = 0;; n++) {
        volatile struct desc *r = rxd(d, d->rx_next);
        if (!(r->sta & 1)) return 0;
        if (n == BUDGET) return 1;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint16_t len = r->len;
        uint8_t errors = r->b13;
        if (errors || len < 14 || len > 1514) d->rxe++;
        else {
            d->rxp++; d->rxb += len;
            d->net->receive(d->nd, d->cpu + RXB_OFF + d->rx_next * BUF, len);
        }
        r->sta = 0; r->len = 0;
        r->addr = d->da + RXB_OFF + d->rx_next * BUF;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        wr(d, RDT, d->rx_next);   /* hand the slot back: RDT is one past the last posted */
        d->rx_next = (d->rx_next + 1) % RXN;
    }
}

static void poll_work(void *arg) {
    struct e1kx *d = arg;
    uint32_t causes = __atomic_exchange_n(&d->pending, 0, __ATOMIC_ACQ_REL);
    if (__atomic_load_n(&d->gone, __ATOMIC_ACQUIRE)) return;
    if (causes & C_LSC) {
        uint32_t up = (rd(d, STATUS) >> 1) & 1;
        if (up != d->link) { d->link = up; d->net->link_changed(d->nd, up ? OY_LINK_UP : OY_LINK_DOWN); }
    }
    if (causes & C_RXO) d->rxd++;
    tx_reclaim(d, 0, OY_OK);
    if (rx_poll(d)) { d->h->work_queue(d->poll); return; }
    d->h->lock_acquire(d->lock);
    if (d->running) wr(d, IMS, CAUSES);
    d->h->lock_release(d->lock);
}

static int32_t e1kx_transmit(void *inst, oy_net_frame *f) {
    struct e1kx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (f == NULL || f->struct_size < sizeof(oy_net_frame) || f->data == NULL) return OY_E_INVALID;
    if (f->length < 14 || f->length > 1514) return OY_E_INVALID;
    d->h->lock_acquire(d->lock);
    if (d->gone) { d->h->lock_release(d->lock); return OY_E_DEVICE_GONE; }
    if (d->tx_count >= TXN - 1) { d->h->lock_release(d->lock); return OY_E_BUSY; }
    uint32_t i = d->tx_tail;
    uint8_t *b = d->cpu + TXB_OFF + i * BUF;
    uint32_t len = f->length < 60 ? 60 : f->length;
    memcpy(b, f->data, f->length);
    if (len > f->length) memset(b + f->length, 0, len - f->length);
    volatile struct desc *t = txd(d, i);
    t->addr = d->da + TXB_OFF + i * BUF; t->len = (uint16_t)len; t->b10 = 0;
    t->b11 = 1u | 8u; /* EOP | RS */
    t->sta = 0; t->b13 = 0; t->special = 0;
    d->tx_frames[i] = f;
    d->tx_tail = (i + 1) % TXN;
    d->tx_count++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    wr(d, TDT, d->tx_tail);
    d->h->lock_release(d->lock);
    return OY_OK;
}

static int32_t e1kx_stats(void *inst, oy_net_stats *out) {
    struct e1kx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (out == NULL || out->struct_size < 8) return OY_E_INVALID;
    oy_net_stats s; memset(&s, 0, sizeof s);
    d->h->lock_acquire(d->lock);
    s.tx_packets = d->txp; s.tx_bytes = d->txb; s.tx_errors = d->txe;
    s.rx_packets = d->rxp; s.rx_bytes = d->rxb; s.rx_errors = d->rxe; s.rx_dropped = d->rxd;
    d->h->lock_release(d->lock);
    uint32_t room = out->struct_size < sizeof s ? out->struct_size : (uint32_t)sizeof s;
    memcpy((uint8_t *)out + 8, (uint8_t *)&s + 8, room - 8);
    return OY_OK;
}

static void write_ra(struct e1kx *d, uint32_t n, const uint8_t *m) {
    wr(d, RAL + 8 * n, (uint32_t)m[0] | (uint32_t)m[1] << 8 | (uint32_t)m[2] << 16 | (uint32_t)m[3] << 24);
    wr(d, RAH + 8 * n, (uint32_t)m[4] | (uint32_t)m[5] << 8 | 0x80000000u);
}

static int32_t e1kx_filter(void *inst, const uint8_t *macs, uint32_t count, uint32_t flags) {
    struct e1kx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (macs == NULL && count > 0) return OY_E_INVALID;
    if (count > FILTER_SLOTS) return OY_E_RANGE;
    if (d->gone) return OY_E_DEVICE_GONE;
    for (uint32_t n = 1; n <= FILTER_SLOTS; n++) {
        if (n <= count) write_ra(d, n, macs + 6 * (n - 1));
        else { wr(d, RAH + 8 * n, 0); wr(d, RAL + 8 * n, 0); }
    }
    uint32_t rctl = RCTL_EN | RCTL_MPE;
    if (flags & OY_NET_FILTER_BROADCAST) rctl |= RCTL_BAM;
    if (flags & OY_NET_FILTER_PROMISCUOUS) rctl |= RCTL_UPE;
    wr(d, RCTL, rctl);
    return OY_OK;
}

static void release_all(struct e1kx *d) {
    if (d->irq) d->h->irq_unhook(d->irq);
    if (d->poll) d->h->work_destroy(d->poll);
    if (d->mem) d->h->dma_free(d->mem);
    if (d->regs) d->h->regs_unmap(d->regs);
    if (d->lock) d->h->lock_destroy(d->lock);
    d->h->mem_free(d->h, d);
}

static void stop_device(struct e1kx *d) {
    d->h->lock_acquire(d->lock);
    d->running = 0;
    d->h->lock_release(d->lock);
    wr(d, IMC, CAUSES);
    wr(d, RCTL, 0);
    wr(d, TCTL, 0);
    (void)rd(d, STATUS); /* the writes have reached the device */
}

static int32_t e1kx_attach(void *ctx, oy_device *dev, void **out) {
    (void)ctx;
    const oy_host *h = g_host;
    struct e1kx *d = h->mem_alloc(h, dev, sizeof *d);
    if (!d) return OY_E_NOMEM;
    d->h = h; d->dev = dev;
    int32_t rc; uint64_t size; void *cpu;
    d->net = h->get_extension(h, OY_NET_EXTENSION);
    if (!d->net) { h->mem_free(h, d); return OY_E_NOT_SUPPORTED; }
    if ((rc = h->lock_create(h, dev, &d->lock)) || (rc = h->regs_map(dev, 0, &d->regs, &size))) goto fail;
    if (size < 0x8000) { rc = OY_E_NOT_SUPPORTED; goto fail; }
    if (rd(d, STATUS) == 0xFFFFFFFFu) { rc = OY_E_DEVICE_GONE; goto fail; }
    wr(d, IMC, CAUSES);
    wr(d, CTRL, 1u << 26);
    (void)rd(d, ICR);
    if ((rc = h->dma_alloc(dev, MEM_SIZE, &d->mem, &cpu, &d->da))) goto fail;
    d->cpu = cpu;
    uint32_t ral = rd(d, RAL), rah = rd(d, RAH);
    for (int i = 0; i < 4; i++) d->mac[i] = (uint8_t)(ral >> (8 * i));
    d->mac[4] = (uint8_t)rah; d->mac[5] = (uint8_t)(rah >> 8);
    for (uint32_t i = 0; i < RXN; i++) rxd(d, i)->addr = d->da + RXB_OFF + i * BUF;
    wr(d, RDBAL, (uint32_t)(d->da + RXR_OFF)); wr(d, RDBAH, (uint32_t)((d->da + RXR_OFF) >> 32));
    wr(d, RDLEN, RXN * 16u); wr(d, RDH, 0); wr(d, RDT, RXN - 1);
    wr(d, TDBAL, (uint32_t)(d->da + TXR_OFF)); wr(d, TDBAH, (uint32_t)((d->da + TXR_OFF) >> 32));
    wr(d, TDLEN, TXN * 16u); wr(d, TDH, 0); wr(d, TDT, 0);
    if ((rc = h->work_create(h, dev, poll_work, d, &d->poll))) goto fail;
    if ((rc = h->irq_hook(dev, 0, on_irq, d, &d->irq))) goto fail;
    d->link = (rd(d, STATUS) >> 1) & 1;
    oy_net_info info = { sizeof info, {0}, 0, 1500, 1514, TXN - 1, d->link ? OY_LINK_UP : OY_LINK_DOWN };
    memcpy(info.mac, d->mac, 6);
    oy_net_ops ops = { sizeof ops, 0, e1kx_transmit, e1kx_stats, e1kx_filter };
    d->running = 1;
    wr(d, TCTL, 1u << 1);
    wr(d, RCTL, RCTL_EN | RCTL_BAM | RCTL_MPE);
    wr(d, IMS, CAUSES);
    if (!oy_instance_add(&g_live, d)) { rc = OY_E_BUSY; goto fail_stop; }
    if ((rc = d->net->register_netdev(dev, &info, &ops, d, &d->nd))) { oy_instance_take(&g_live, d); goto fail_stop; }
    *out = d;
    return OY_OK;
fail_stop:
    stop_device(d);
fail:
    release_all(d);
    return rc;
}

static int32_t e1kx_detach(void *inst) {
    struct e1kx *d = inst;
    if (!oy_instance_take(&g_live, d)) return OY_E_STATE;
    if (!d->gone) stop_device(d);
    d->h->irq_unhook(d->irq); d->irq = NULL;
    d->h->work_destroy(d->poll); d->poll = NULL;
    d->net->unregister_netdev(d->nd);
    tx_reclaim(d, 1, OY_E_DEVICE_GONE);
    release_all(d);
    return OY_OK;
}

static void e1kx_remove(void *inst) {
    struct e1kx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return;
    d->h->lock_acquire(d->lock);
    d->gone = 1;
    d->running = 0;
    d->h->lock_release(d->lock);
    tx_reclaim(d, 1, OY_E_DEVICE_GONE);
}

static int32_t e1kx_init(const oy_host *h, void **ctx) { g_host = h; *ctx = &g_live; return OY_OK; }
static void e1kx_deinit(void *ctx) { (void)ctx; g_host = NULL; }
static int32_t e1kx_probe(void *ctx, const oy_device_info *i) {
    (void)ctx;
    if (!i || i->struct_size < sizeof *i) return OY_E_INVALID;
    return i->vendor_id == 0x0A7A && i->device_id == 0x0002 ? OY_OK : OY_E_NOT_SUPPORTED;
}

OY_DRIVER_METADATA(meta) = { OY_META_MAGIC, sizeof(oy_driver_meta), 1, 1, 1, "e1kx", "Third Party Networks", "0.2.0",
                             "e1klite driver written from the datasheet", OY_NET_EXTENSION, { { 0x0A7A, 0x0002 } } };
static const oy_driver drv = { sizeof drv, 0, &meta, e1kx_init, e1kx_deinit, e1kx_probe, e1kx_attach, e1kx_detach, e1kx_remove, NULL };
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *a) { return oy_negotiate(a, 1, 1, &drv); }
