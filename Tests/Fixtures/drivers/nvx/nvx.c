/*
 * nvx.c — an nvmelite driver written as a third party would: from SDK/ and
 * the datasheet alone, making other choices than Plugins/nvmelite wherever
 * the datasheet allows one. The suite must pass it: a check that fails a
 * correct driver for choosing differently is a defect of the suite.
 *
 * Its choices:
 * - admin commands are polled (CQ entries read between short event_wait
 *   naps); vector 0 is never hooked, so the device's admin interrupts go
 *   nowhere, during attach and during detach's queue deletion alike;
 * - completions are reaped in a work item: the interrupt handler masks its
 *   vector and queues the work, which unmasks when it has drained the CQ
 *   (a threaded interrupt, as Linux's request_threaded_irq);
 * - the handler may run before irq_hook returns the handle, and the work
 *   may run while detach unhooks: both go through the lock and a flag;
 * - one DMA buffer holds the queues, the identify page and a PRP-list page
 *   per request slot; 32 requests at once on 64-entry queues;
 * - built with -DNVX_BOUNCE, it never dma_maps a request: data goes through
 *   a 128 KiB bounce buffer per slot (copied in at submit for a write, out
 *   at completion for a read), as drivers for devices with DMA limits do.
 */
#include <oyako/oyako.h>
#include <oyako/instances.h>
#include <string.h>

#define QD 32
#define SQN 64
#define CQN 64
#define ADN 8
#define PG 4096u

enum { R_CAP = 0x00, R_CC = 0x14, R_CSTS = 0x1C, R_AQA = 0x24, R_ASQ = 0x28, R_ACQ = 0x30,
       DB_ASQ = 0x1000, DB_ACQ = 0x1004, DB_SQ = 0x1008, DB_CQ = 0x100C };
/* layout of the one DMA buffer, in pages */
enum { P_ASQ = 0, P_ACQ = 1, P_SQ = 2, P_CQ = 3, P_ID = 4, P_PRP = 5, NPAGES = 5 + QD };

struct slot { oy_block_request *req; oy_dma_map *map; int busy; };

struct nvx {
    const oy_host *h; oy_device *dev; oy_regs *regs; const oy_host_block *blk;
    oy_dma_buffer *buf; uint8_t *cpu; oy_dma_addr da;
    oy_dma_buffer *bounce; uint8_t *bounce_cpu; oy_dma_addr bounce_da;
    oy_lock *lock; oy_work *reap; oy_irq *irq; oy_disk *disk; oy_event *nap;
    uint16_t sq_tail, cq_head, a_tail, a_head; uint8_t cq_phase, a_phase;
    uint16_t a_cid;
    struct slot slots[QD]; int outstanding; int gone; int irq_live;
    uint32_t bs; uint64_t nblocks; uint32_t max_blocks;
};

static const oy_host *g_host;
static oy_instance_set g_live;

static void sleep_us(struct nvx *d, uint64_t us) { d->h->event_wait(d->nap, us * 1000); }

static int wait_ready(struct nvx *d, uint32_t want, uint64_t timeout_ms) {
    uint64_t end = d->h->monotonic_ns(d->h) + timeout_ms * 1000000ull;
    for (;;) {
        uint32_t st = d->h->reg_read32(d->regs, R_CSTS);
        if (st == 0xFFFFFFFFu) return OY_E_DEVICE_GONE;
        if ((st & 2) && want) return OY_E_IO;
        if ((st & 1) == want) return OY_OK;
        if (d->h->monotonic_ns(d->h) > end) return OY_E_TIMEOUT;
        sleep_us(d, 100);
    }
}

/* one admin command, polled; returns the status code or a negative error */
static int admin(struct nvx *d, uint8_t op, uint32_t nsid, oy_dma_addr prp1, uint32_t c10, uint32_t c11, uint32_t *result) {
    uint8_t *e = d->cpu + P_ASQ * PG + d->a_tail * 64u;
    uint16_t cid = ++d->a_cid;
    memset(e, 0, 64);
    e[0] = op; memcpy(e + 2, &cid, 2); memcpy(e + 4, &nsid, 4); memcpy(e + 24, &prp1, 8);
    memcpy(e + 40, &c10, 4); memcpy(e + 44, &c11, 4);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    d->a_tail = (uint16_t)((d->a_tail + 1) % ADN);
    d->h->reg_write32(d->regs, DB_ASQ, d->a_tail);
    uint64_t end = d->h->monotonic_ns(d->h) + 2000000000ull;
    for (;;) {
        volatile uint8_t *c = d->cpu + P_ACQ * PG + d->a_head * 16u;
        uint16_t status; memcpy(&status, (const void *)(c + 14), 2);
        if ((status & 1) == d->a_phase) {
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (result) memcpy(result, (const void *)c, 4);
            d->a_head = (uint16_t)((d->a_head + 1) % ADN);
            if (d->a_head == 0) d->a_phase ^= 1;
            d->h->reg_write32(d->regs, DB_ACQ, d->a_head);
            return status >> 1;
        }
        if (d->h->monotonic_ns(d->h) > end) return OY_E_TIMEOUT;
        sleep_us(d, 50);
    }
}

static int controller_reset(struct nvx *d) {
    uint64_t cap = d->h->reg_read64(d->regs, R_CAP);
    if (cap == ~0ull) return OY_E_DEVICE_GONE;
    uint64_t to = ((cap >> 24) & 0xFF) * 500;
    d->h->reg_write32(d->regs, R_CC, 0);
    return wait_ready(d, 0, to ? to : 1000);
}

#define BOUNCE (128u * 1024u)

static void finish(struct nvx *d, struct slot *s, oy_block_request *r, int32_t status) {
    if (d->bounce && status == OY_OK && r->op == OY_BLOCK_READ)
        memcpy(r->data, d->bounce_cpu + (size_t)(s - d->slots) * BOUNCE, (size_t)r->block_count * d->bs);
    if (s->map) d->h->dma_unmap(s->map);
    s->map = NULL;
    __atomic_store_n(&s->busy, 0, __ATOMIC_RELEASE);
    d->blk->complete(r, status);
}

/* reaps up to 64 completions; returns how many */
static int reap_some(struct nvx *d) {
    struct slot *done[64]; oy_block_request *reqs[64]; int32_t st[64]; int n = 0;
    d->h->lock_acquire(d->lock);
    while (n < 64) {
        volatile uint8_t *c = d->cpu + P_CQ * PG + d->cq_head * 16u;
        uint16_t status, cid; memcpy(&status, (const void *)(c + 14), 2);
        if ((status & 1) != d->cq_phase) break;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        memcpy(&cid, (const void *)(c + 12), 2);
        d->cq_head = (uint16_t)((d->cq_head + 1) % CQN);
        if (d->cq_head == 0) d->cq_phase ^= 1;
        if (cid < QD && d->slots[cid].req) {
            done[n] = &d->slots[cid]; reqs[n] = d->slots[cid].req; d->slots[cid].req = NULL;
            st[n] = (status >> 1) ? OY_E_IO : OY_OK;
            d->outstanding--; n++;
        }
    }
    if (n) d->h->reg_write32(d->regs, DB_CQ, d->cq_head);
    d->h->lock_release(d->lock);
    for (int i = 0; i < n; i++) finish(d, done[i], reqs[i], st[i]);
    return n;
}

static void reap_work(void *arg) {
    struct nvx *d = arg;
    while (reap_some(d) == 64) {}
    /* detach clears irq_live under the lock before it unhooks */
    d->h->lock_acquire(d->lock);
    if (d->irq_live) d->h->irq_unmask(d->irq);
    d->h->lock_release(d->lock);
}

static void on_irq(void *arg) {
    struct nvx *d = arg;
    /* may run before irq_hook has returned our handle */
    oy_irq *irq = __atomic_load_n(&d->irq, __ATOMIC_ACQUIRE);
    if (irq) d->h->irq_mask(irq);
    d->h->work_queue(d->reap);
}

static int32_t nvx_submit(void *inst, oy_block_request *r) {
    struct nvx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (r == NULL || r->struct_size < sizeof(oy_block_request)) return OY_E_INVALID;
    if (r->op != OY_BLOCK_READ && r->op != OY_BLOCK_WRITE && r->op != OY_BLOCK_FLUSH) return OY_E_INVALID;
    if (r->op != OY_BLOCK_FLUSH) {
        if (r->block_count == 0 || r->data == NULL) return OY_E_INVALID;
        if (r->block_count > d->max_blocks) return OY_E_RANGE;
        if (r->lba >= d->nblocks || d->nblocks - r->lba < r->block_count) return OY_E_RANGE;
    }
    if (__atomic_load_n(&d->gone, __ATOMIC_ACQUIRE)) return OY_E_DEVICE_GONE;

    int idx = -1;
    for (int i = 0; i < QD; i++) {
        int z = 0;
        if (__atomic_compare_exchange_n(&d->slots[i].busy, &z, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) { idx = i; break; }
    }
    if (idx < 0) return OY_E_BUSY;
    struct slot *s = &d->slots[idx];
    oy_dma_addr prp1 = 0, prp2 = 0;
    if (r->op != OY_BLOCK_FLUSH) {
        size_t len = (size_t)r->block_count * d->bs;
        oy_dma_addr a;
        if (d->bounce) {
            a = d->bounce_da + (oy_dma_addr)idx * BOUNCE;
            s->map = NULL;
            if (r->op == OY_BLOCK_WRITE) memcpy(d->bounce_cpu + (size_t)idx * BOUNCE, r->data, len);
        } else {
            int rc = d->h->dma_map(d->dev, r->data, len, r->op == OY_BLOCK_READ ? OY_DMA_FROM_DEVICE : OY_DMA_TO_DEVICE, &s->map, &a);
            if (rc != OY_OK) { s->map = NULL; __atomic_store_n(&s->busy, 0, __ATOMIC_RELEASE); return rc; }
        }
        prp1 = a;
        size_t first = PG - (size_t)(a & (PG - 1));
        if (len > first) {
            size_t rest = len - first;
            oy_dma_addr next = a + first;
            if (rest <= PG) prp2 = next;
            else {
                uint64_t *list = (uint64_t *)(d->cpu + (P_PRP + idx) * PG);
                size_t k = 0;
                for (size_t off = 0; off < rest; off += PG) list[k++] = next + off;
                prp2 = d->da + (P_PRP + idx) * PG;
            }
        }
    }
    s->req = r;
    d->h->lock_acquire(d->lock);
    if (d->gone) {
        d->h->lock_release(d->lock);
        if (s->map) d->h->dma_unmap(s->map);
        s->map = NULL; s->req = NULL; __atomic_store_n(&s->busy, 0, __ATOMIC_RELEASE);
        return OY_E_DEVICE_GONE;
    }
    uint8_t *e = d->cpu + P_SQ * PG + d->sq_tail * 64u;
    uint16_t cid = (uint16_t)idx; uint32_t nsid = 1;
    memset(e, 0, 64);
    e[0] = r->op == OY_BLOCK_FLUSH ? 0x00 : r->op == OY_BLOCK_WRITE ? 0x01 : 0x02;
    memcpy(e + 2, &cid, 2); memcpy(e + 4, &nsid, 4); memcpy(e + 24, &prp1, 8); memcpy(e + 32, &prp2, 8);
    if (r->op != OY_BLOCK_FLUSH) {
        uint32_t lo = (uint32_t)r->lba, hi = (uint32_t)(r->lba >> 32), nlb = r->block_count - 1;
        memcpy(e + 40, &lo, 4); memcpy(e + 44, &hi, 4); memcpy(e + 48, &nlb, 4);
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    d->sq_tail = (uint16_t)((d->sq_tail + 1) % SQN);
    d->outstanding++;
    d->h->reg_write32(d->regs, DB_SQ, d->sq_tail);
    d->h->lock_release(d->lock);
    return OY_OK;
}

/* completes every request still held with `status` */
static void fail_all(struct nvx *d, int32_t status) {
    struct slot *take[QD]; int n = 0;
    d->h->lock_acquire(d->lock);
    for (int i = 0; i < QD; i++) if (d->slots[i].req) { take[n++] = &d->slots[i]; d->outstanding--; }
    /* mark them so the reaper skips them */
    oy_block_request *reqs[QD];
    for (int i = 0; i < n; i++) { reqs[i] = take[i]->req; take[i]->req = NULL; }
    d->h->lock_release(d->lock);
    for (int i = 0; i < n; i++) finish(d, take[i], reqs[i], status);
}

static void release_all(struct nvx *d) {
    if (d->irq) {
        d->h->lock_acquire(d->lock);
        d->irq_live = 0;
        d->h->lock_release(d->lock);
        d->h->irq_unhook(d->irq);
    }
    if (d->reap) d->h->work_destroy(d->reap);
    if (d->buf) d->h->dma_free(d->buf);
    if (d->bounce) d->h->dma_free(d->bounce);
    if (d->regs) d->h->regs_unmap(d->regs);
    if (d->nap) d->h->event_destroy(d->nap);
    if (d->lock) d->h->lock_destroy(d->lock);
    d->h->mem_free(d->h, d);
}

static int32_t nvx_attach(void *ctx, oy_device *dev, void **out) {
    (void)ctx;
    const oy_host *h = g_host;
    struct nvx *d = h->mem_alloc(h, dev, sizeof *d);
    if (!d) return OY_E_NOMEM;
    d->h = h; d->dev = dev;
    int rc; uint64_t sz;
    d->blk = h->get_extension(h, OY_BLOCK_EXTENSION);
    if (!d->blk) { h->mem_free(h, d); return OY_E_NOT_SUPPORTED; }
    if ((rc = h->lock_create(h, dev, &d->lock)) || (rc = h->event_create(h, dev, &d->nap))
        || (rc = h->regs_map(dev, 0, &d->regs, &sz))) goto fail;
    if (sz < 0x2000) { rc = OY_E_NOT_SUPPORTED; goto fail; }
    void *cpu;
    if ((rc = h->dma_alloc(dev, NPAGES * PG, &d->buf, &cpu, &d->da))) goto fail;
    d->cpu = cpu;
#ifdef NVX_BOUNCE
    if ((rc = h->dma_alloc(dev, (size_t)QD * BOUNCE, &d->bounce, &cpu, &d->bounce_da))) goto fail;
    d->bounce_cpu = cpu;
#endif
    if ((rc = controller_reset(d))) goto fail;
    d->a_phase = 1; d->cq_phase = 1;
    h->reg_write32(d->regs, R_AQA, (ADN - 1) | ((ADN - 1) << 16));
    h->reg_write64(d->regs, R_ASQ, d->da + P_ASQ * PG);
    h->reg_write64(d->regs, R_ACQ, d->da + P_ACQ * PG);
    h->reg_write32(d->regs, R_CC, 1);
    if ((rc = wait_ready(d, 1, 10000))) goto fail;
    if (admin(d, 0x06, 0, d->da + P_ID * PG, 1, 0, NULL) != 0) { rc = OY_E_IO; goto fail; }
    uint8_t mdts = d->cpu[P_ID * PG + 77];
    if (admin(d, 0x06, 1, d->da + P_ID * PG, 0, 0, NULL) != 0) { rc = OY_E_IO; goto fail; }
    memcpy(&d->nblocks, d->cpu + P_ID * PG, 8);
    uint8_t lbads = d->cpu[P_ID * PG + 130];
    if (lbads < 9 || lbads > 12) { rc = OY_E_NOT_SUPPORTED; goto fail; }
    d->bs = 1u << lbads;
    uint64_t maxbytes = mdts ? (uint64_t)PG << mdts : 1u << 20;
    if (maxbytes > (uint64_t)PG * (PG / 8)) maxbytes = (uint64_t)PG * (PG / 8);
    if (d->bounce && maxbytes > BOUNCE) maxbytes = BOUNCE;
    d->max_blocks = (uint32_t)(maxbytes / d->bs);
    if ((rc = h->work_create(h, dev, reap_work, d, &d->reap))) goto fail;
    oy_irq *irq;
    if ((rc = h->irq_hook(dev, 1, on_irq, d, &irq))) goto fail;
    h->lock_acquire(d->lock);
    __atomic_store_n(&d->irq, irq, __ATOMIC_RELEASE);
    d->irq_live = 1;
    h->lock_release(d->lock);
    if (admin(d, 0x05, 0, d->da + P_CQ * PG, 1 | ((CQN - 1) << 16), 2 | (1u << 16), NULL) != 0) { rc = OY_E_IO; goto fail; }
    if (admin(d, 0x01, 0, d->da + P_SQ * PG, 1 | ((SQN - 1) << 16), 1u << 16, NULL) != 0) { rc = OY_E_IO; goto fail; }
    oy_block_geometry g = { sizeof g, d->bs, d->nblocks, d->max_blocks, QD, OY_BLOCK_CAN_FLUSH, 0 };
    oy_block_ops ops = { sizeof ops, 0, nvx_submit };
    if (!oy_instance_add(&g_live, d)) { rc = OY_E_BUSY; goto fail_reset; }
    if ((rc = d->blk->register_disk(dev, &g, &ops, d, &d->disk))) { oy_instance_take(&g_live, d); goto fail_reset; }
    *out = d;
    return OY_OK;
fail_reset:
    controller_reset(d);
fail:
    if (d->regs && d->buf) controller_reset(d);
    release_all(d);
    return rc < 0 ? rc : OY_E_IO;
}

static int32_t nvx_detach(void *inst) {
    struct nvx *d = inst;
    if (!oy_instance_take(&g_live, d)) return OY_E_STATE;
    d->blk->unregister_disk(d->disk);
    uint64_t end = d->h->monotonic_ns(d->h) + 5000000000ull;
    for (;;) {
        d->h->lock_acquire(d->lock);
        int left = d->outstanding;
        d->h->lock_release(d->lock);
        if (!left || d->gone || d->h->monotonic_ns(d->h) > end) break;
        sleep_us(d, 200);
    }
    if (!d->gone) {
        admin(d, 0x00, 0, 0, 1, 0, NULL);
        admin(d, 0x04, 0, 0, 1, 0, NULL);
        controller_reset(d);
    }
    /* the controller is off: reap what it posted, fail what it never will */
    while (reap_some(d) == 64) {}
    fail_all(d, OY_E_DEVICE_GONE);
    release_all(d);
    return OY_OK;
}

static void nvx_remove(void *inst) {
    struct nvx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return;
    d->h->lock_acquire(d->lock);
    d->gone = 1;
    d->h->lock_release(d->lock);
    fail_all(d, OY_E_DEVICE_GONE);
}

static int32_t nvx_init(const oy_host *h, void **ctx) { g_host = h; *ctx = (void *)&g_live; return OY_OK; }
static void nvx_deinit(void *ctx) { (void)ctx; g_host = NULL; }
static int32_t nvx_probe(void *ctx, const oy_device_info *i) {
    (void)ctx;
    if (!i || i->struct_size < sizeof *i) return OY_E_INVALID;
    return i->vendor_id == 0x0A7A && i->device_id == 0x0001 ? OY_OK : OY_E_NOT_SUPPORTED;
}

OY_DRIVER_METADATA(meta) = { OY_META_MAGIC, sizeof(oy_driver_meta), 1, 1, 1, "nvx", "Third Party Storage", "0.3.0",
                             "nvmelite driver written from the datasheet", OY_BLOCK_EXTENSION, { { 0x0A7A, 0x0001 } } };
static const oy_driver drv = { sizeof drv, 0, &meta, nvx_init, nvx_deinit, nvx_probe, nvx_attach, nvx_detach, nvx_remove, NULL };
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *a) { return oy_negotiate(a, 1, 1, &drv); }
