/*
 * rngx.c — an rnglite driver written as a third party would: from SDK/ and
 * the datasheet alone, with choices the SDK template does not make. The
 * suite must pass it (see Tests/Fixtures/drivers/nvx/nvx.c).
 *
 * Its choices:
 * - it waits for the FIFO's refill interrupt (an event its handler
 *   signals), not by polling STATUS;
 * - it pops exactly the words STATUS counts, and drops the unused bytes of
 *   a read's last word rather than keep them for the next read;
 * - detach unregisters first (which waits for a read in progress), then
 *   stops the generator, then unhooks.
 */
#include <oyako/oyako.h>
#include <oyako/instances.h>
#include <string.h>

enum { DATA = 0x00, STATUS = 0x04, CTRL = 0x08 };

struct rngx {
    const oy_host *h; oy_device *dev; oy_regs *regs; const oy_host_rng *ext;
    oy_event *ready; oy_irq *irq; oy_rng *rng; int gone;
};

static const oy_host *g_host;
static oy_instance_set g_live;

static void on_irq(void *arg) {
    struct rngx *d = arg;
    d->h->event_signal(d->ready);
}

static int32_t rngx_read(void *inst, void *buffer, uint32_t length, uint32_t *produced) {
    struct rngx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (buffer == NULL || produced == NULL || length == 0) return OY_E_INVALID;
    if (length > OY_RNG_MAX_READ) return OY_E_RANGE;
    *produced = 0;
    if (__atomic_load_n(&d->gone, __ATOMIC_ACQUIRE)) return OY_E_DEVICE_GONE;
    uint8_t *out = buffer;
    uint32_t got = 0;
    uint64_t deadline = d->h->monotonic_ns(d->h) + 100000000ull;
    while (got < length) {
        uint32_t st = d->h->reg_read32(d->regs, STATUS);
        if (st == 0xFFFFFFFFu || (st & 0xFF00u)) return OY_E_DEVICE_GONE;
        uint32_t words = (st >> 16) & 0xFF;
        if (words == 0) {
            if (got > 0) break;                          /* what there is */
            uint64_t now = d->h->monotonic_ns(d->h);
            if (now >= deadline) break;                  /* none within 100 ms */
            (void)d->h->event_wait(d->ready, deadline - now);
            continue;
        }
        /* pop exactly the words the device said it holds */
        while (words-- && got < length) {
            uint32_t w = d->h->reg_read32(d->regs, DATA);
            uint32_t take = length - got < 4 ? length - got : 4;
            memcpy(out + got, &w, take);                 /* the rest of a last word is dropped */
            got += take;
        }
    }
    *produced = got;
    return OY_OK;
}

static void release_all(struct rngx *d) {
    if (d->irq) d->h->irq_unhook(d->irq);
    if (d->ready) d->h->event_destroy(d->ready);
    if (d->regs) d->h->regs_unmap(d->regs);
    d->h->mem_free(d->h, d);
}

static int32_t rngx_attach(void *ctx, oy_device *dev, void **outp) {
    (void)ctx;
    const oy_host *h = g_host;
    struct rngx *d = h->mem_alloc(h, dev, sizeof *d);
    if (!d) return OY_E_NOMEM;
    d->h = h; d->dev = dev;
    int32_t rc; uint64_t size;
    d->ext = h->get_extension(h, OY_RNG_EXTENSION);
    if (!d->ext) { h->mem_free(h, d); return OY_E_NOT_SUPPORTED; }
    if ((rc = h->event_create(h, dev, &d->ready)) || (rc = h->regs_map(dev, 0, &d->regs, &size))) goto fail;
    if (size < 0x10) { rc = OY_E_NOT_SUPPORTED; goto fail; }
    if (h->reg_read32(d->regs, STATUS) == 0xFFFFFFFFu) { rc = OY_E_DEVICE_GONE; goto fail; }
    if ((rc = h->irq_hook(dev, 0, on_irq, d, &d->irq))) goto fail;
    h->reg_write32(d->regs, CTRL, 1);
    oy_rng_ops ops = { sizeof ops, 0, rngx_read };
    if (!oy_instance_add(&g_live, d)) { rc = OY_E_BUSY; goto fail_stop; }
    if ((rc = d->ext->register_rng(dev, &ops, d, &d->rng))) { oy_instance_take(&g_live, d); goto fail_stop; }
    *outp = d;
    return OY_OK;
fail_stop:
    h->reg_write32(d->regs, CTRL, 0);
fail:
    release_all(d);
    return rc;
}

static int32_t rngx_detach(void *inst) {
    struct rngx *d = inst;
    if (!oy_instance_take(&g_live, d)) return OY_E_STATE;
    d->ext->unregister_rng(d->rng);
    if (!d->gone) {
        d->h->reg_write32(d->regs, CTRL, 0);
        (void)d->h->reg_read32(d->regs, STATUS);
    }
    release_all(d);
    return OY_OK;
}

static void rngx_remove(void *inst) {
    struct rngx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return;
    __atomic_store_n(&d->gone, 1, __ATOMIC_RELEASE);
    d->h->event_signal(d->ready);
}

static int32_t rngx_init(const oy_host *h, void **ctx) { g_host = h; *ctx = &g_live; return OY_OK; }
static void rngx_deinit(void *ctx) { (void)ctx; g_host = NULL; }
static int32_t rngx_probe(void *ctx, const oy_device_info *i) {
    (void)ctx;
    if (!i || i->struct_size < sizeof *i) return OY_E_INVALID;
    return i->vendor_id == 0x0A7A && i->device_id == 0x0004 ? OY_OK : OY_E_NOT_SUPPORTED;
}

OY_DRIVER_METADATA(meta) = { OY_META_MAGIC, sizeof(oy_driver_meta), 1, 1, 1, "rngx", "Third Party Entropy", "0.1.0",
                             "rnglite driver written from the datasheet", OY_RNG_EXTENSION, { { 0x0A7A, 0x0004 } } };
static const oy_driver drv = { sizeof drv, 0, &meta, rngx_init, rngx_deinit, rngx_probe, rngx_attach, rngx_detach, rngx_remove, NULL };
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *a) { return oy_negotiate(a, 1, 1, &drv); }
