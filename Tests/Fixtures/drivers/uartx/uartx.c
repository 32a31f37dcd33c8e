/*
 * uartx.c — a uart16550 driver written as a third party would: from SDK/
 * and the datasheet alone, with choices Plugins/uart16550 does not make.
 * The suite must pass it (see Tests/Fixtures/drivers/nvx/nvx.c).
 *
 * Its choices:
 * - the interrupt handler only reads IIR, clears IER and queues a work
 *   item; the work drains the receive FIFO, refills the transmitter and
 *   sets IER again;
 * - overruns are summed and reported in one error() call per run, also
 *   those its transmit path saw (reading LSR for THRE clears OE);
 * - a 1 KiB software transmit queue; automatic RTS/CTS flow control on;
 * - built with -DUARTX_POLL, no interrupt at all: a 1 ms timer runs the
 *   work (IER stays 0), as drivers for parts without a usable IRQ line do.
 */
#include <oyako/oyako.h>
#include <oyako/instances.h>
#include <string.h>

#define TXQ 1024u
enum { RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5 };
enum { IER_RX = 1, IER_THRE = 2, IER_LS = 4 };

struct uartx {
    const oy_host *h; oy_device *dev; oy_ports *ports; const oy_host_serial *ser;
    oy_lock *lock; oy_work *work; oy_irq *irq; oy_serial *port; oy_timer *timer; int polling;
    uint8_t txq[TXQ]; uint32_t head, count; int tx_blocked; int gone; int running;
    uint8_t ier; uint8_t lcr; uint32_t overruns;
};

static const oy_host *g_host;
static oy_instance_set g_live;

static uint8_t in(struct uartx *d, uint32_t p) { return d->h->port_in8(d->ports, p); }
static void out(struct uartx *d, uint32_t p, uint8_t v) { d->h->port_out8(d->ports, p, v); }

/* top half: silence the UART's interrupts and defer to the work item */
static void on_irq(void *arg) {
    struct uartx *d = arg;
    uint8_t iir = in(d, IIR);
    if (iir == 0xFF || (iir & 1)) return;
    out(d, IER, 0);
    d->h->work_queue(d->work);
}

/* fills the FIFO from the software queue; lock held */
static void refill(struct uartx *d) {
    uint8_t lsr = in(d, LSR);
    if (lsr != 0xFF && (lsr & 2)) d->overruns++;   /* reading LSR cleared it: keep it for the work */
    if (!(lsr & 0x20)) return;
    for (int i = 0; i < 16 && d->count; i++) {
        out(d, THR, d->txq[d->head]);
        d->head = (d->head + 1) % TXQ;
        d->count--;
    }
}

static void work_fn(void *arg);

/* UARTX_POLL: the timer does what the interrupt would, then comes again */
static void tick(void *arg) {
    struct uartx *d = arg;
    work_fn(d);
    if (__atomic_load_n(&d->polling, __ATOMIC_ACQUIRE)) d->h->timer_arm(d->timer, 1000000);
}

static void work_fn(void *arg) {
    struct uartx *d = arg;
    uint8_t buf[64]; uint32_t n = 0; uint32_t overruns = 0; int ready = 0;
    if (__atomic_load_n(&d->gone, __ATOMIC_ACQUIRE)) return;
    d->h->lock_acquire(d->lock);
    for (int rounds = 0; rounds < 256; rounds++) {
        uint8_t lsr = in(d, LSR);
        if (lsr == 0xFF) break;
        if (lsr & 2) overruns++;
        if (!(lsr & 1)) break;
        buf[n++] = in(d, RBR);
        if (n == sizeof buf) {
            d->h->lock_release(d->lock);
            d->ser->receive(d->port, buf, n);
            n = 0;
            d->h->lock_acquire(d->lock);
        }
    }
    refill(d);
    if (d->tx_blocked && d->count < TXQ / 2) { d->tx_blocked = 0; ready = 1; }
    if (d->running) out(d, IER, d->ier);
    overruns += d->overruns;
    d->overruns = 0;
    d->h->lock_release(d->lock);
    if (n) d->ser->receive(d->port, buf, n);
    if (overruns) d->ser->error(d->port, overruns);
    if (ready) d->ser->tx_ready(d->port);
}

static int32_t uartx_write(void *inst, const void *data, uint32_t length, uint32_t *written) {
    struct uartx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (written == NULL || (data == NULL && length > 0)) return OY_E_INVALID;
    *written = 0;
    d->h->lock_acquire(d->lock);
    if (d->gone) { d->h->lock_release(d->lock); return OY_E_DEVICE_GONE; }
    uint32_t take = TXQ - d->count < length ? TXQ - d->count : length;
    for (uint32_t i = 0; i < take; i++) d->txq[(d->head + d->count + i) % TXQ] = ((const uint8_t *)data)[i];
    d->count += take;
    if (take < length) d->tx_blocked = 1;
    uint32_t before = d->overruns;
    refill(d);
    int report = d->overruns != before;
    d->h->lock_release(d->lock);
    if (report) d->h->work_queue(d->work);
    *written = take;
    return OY_OK;
}

static int32_t uartx_set_line(void *inst, const oy_serial_line *l) {
    struct uartx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return OY_E_STATE;
    if (l == NULL || l->struct_size < sizeof *l) return OY_E_INVALID;
    if (l->data_bits < 5 || l->data_bits > 8 || l->parity > 2 || (l->stop_bits != 1 && l->stop_bits != 2)) return OY_E_INVALID;
    if (l->baud == 0 || 115200u % l->baud != 0) return OY_E_RANGE;
    uint32_t div = 115200u / l->baud;
    if (div > 0xFFFF) return OY_E_RANGE;
    if (d->gone) return OY_E_DEVICE_GONE;
    uint8_t lcr = (uint8_t)((l->data_bits - 5) | (l->stop_bits == 2 ? 4 : 0));
    if (l->parity == OY_PARITY_ODD) lcr |= 0x08;
    if (l->parity == OY_PARITY_EVEN) lcr |= 0x18;
    d->h->lock_acquire(d->lock);
    out(d, LCR, 0x80 | lcr);
    out(d, DLL, (uint8_t)div); out(d, DLM, (uint8_t)(div >> 8));
    out(d, LCR, lcr);
    d->lcr = lcr;
    d->h->lock_release(d->lock);
    return OY_OK;
}

static void release_all(struct uartx *d) {
    __atomic_store_n(&d->polling, 0, __ATOMIC_RELEASE);
    if (d->timer) d->h->timer_destroy(d->timer);
    if (d->irq) d->h->irq_unhook(d->irq);
    if (d->work) d->h->work_destroy(d->work);
    if (d->ports) d->h->ports_release(d->ports);
    if (d->lock) d->h->lock_destroy(d->lock);
    d->h->mem_free(d->h, d);
}

static void quiet(struct uartx *d) {
    d->h->lock_acquire(d->lock);
    d->running = 0;
    out(d, IER, 0);
    out(d, MCR, 0);
    d->h->lock_release(d->lock);
}

static int32_t uartx_attach(void *ctx, oy_device *dev, void **outp) {
    (void)ctx;
    const oy_host *h = g_host;
    struct uartx *d = h->mem_alloc(h, dev, sizeof *d);
    if (!d) return OY_E_NOMEM;
    d->h = h; d->dev = dev;
    int32_t rc; uint32_t count;
    d->ser = h->get_extension(h, OY_SERIAL_EXTENSION);
    if (!d->ser) { h->mem_free(h, d); return OY_E_NOT_SUPPORTED; }
    if ((rc = h->lock_create(h, dev, &d->lock)) || (rc = h->ports_claim(dev, 0, &d->ports, &count))) goto fail;
    if (count < 8) { rc = OY_E_NOT_SUPPORTED; goto fail; }
    if (in(d, LSR) == 0xFF) { rc = OY_E_DEVICE_GONE; goto fail; }
    out(d, IER, 0);
    out(d, LCR, 0x80); out(d, DLL, 1); out(d, DLM, 0); out(d, LCR, 0x03);
    d->lcr = 0x03;
    out(d, FCR, 0x06);
    (void)in(d, LSR); (void)in(d, IIR);
    if ((rc = h->work_create(h, dev, work_fn, d, &d->work))) goto fail;
#ifdef UARTX_POLL
    (void)on_irq;
    if ((rc = h->timer_create(h, dev, tick, d, &d->timer))) goto fail;
#else
    (void)tick;
    if ((rc = h->irq_hook(dev, 0, on_irq, d, &d->irq))) goto fail;
#endif
    oy_serial_line line = { sizeof line, 115200, 8, OY_PARITY_NONE, 1, 0 };
    oy_serial_ops ops = { sizeof ops, 0, uartx_write, uartx_set_line };
    if (!oy_instance_add(&g_live, d)) { rc = OY_E_BUSY; goto fail; }
    if ((rc = d->ser->register_port(dev, &line, &ops, d, &d->port))) { oy_instance_take(&g_live, d); goto fail; }
#ifdef UARTX_POLL
    d->ier = 0;
#else
    d->ier = IER_RX | IER_THRE | IER_LS;
#endif
    h->lock_acquire(d->lock);
    d->running = 1;
    out(d, MCR, 0x20 | 0x08 | 0x02 | 0x01);  /* auto flow control, OUT2, RTS, DTR */
    out(d, IER, d->ier);
    h->lock_release(d->lock);
    if (d->timer) {
        d->polling = 1;
        h->timer_arm(d->timer, 1000000);
    }
    *outp = d;
    return OY_OK;
fail:
    if (d->ports) quiet(d);
    release_all(d);
    return rc;
}

static int32_t uartx_detach(void *inst) {
    struct uartx *d = inst;
    if (!oy_instance_take(&g_live, d)) return OY_E_STATE;
    __atomic_store_n(&d->polling, 0, __ATOMIC_RELEASE);
    if (d->timer) { d->h->timer_destroy(d->timer); d->timer = NULL; }
    if (!d->gone) quiet(d);
    if (d->irq) { d->h->irq_unhook(d->irq); d->irq = NULL; }
    d->h->work_destroy(d->work); d->work = NULL;
    d->ser->unregister_port(d->port);
    release_all(d);
    return OY_OK;
}

static void uartx_remove(void *inst) {
    struct uartx *d = inst;
    if (!oy_instance_contains(&g_live, d)) return;
    d->h->lock_acquire(d->lock);
    d->gone = 1; d->running = 0; d->count = 0;
    d->h->lock_release(d->lock);
}

static int32_t uartx_init(const oy_host *h, void **ctx) { g_host = h; *ctx = &g_live; return OY_OK; }
static void uartx_deinit(void *ctx) { (void)ctx; g_host = NULL; }
static int32_t uartx_probe(void *ctx, const oy_device_info *i) {
    (void)ctx;
    if (!i || i->struct_size < sizeof *i) return OY_E_INVALID;
    return i->vendor_id == 0x0A7A && i->device_id == 0x0003 ? OY_OK : OY_E_NOT_SUPPORTED;
}

OY_DRIVER_METADATA(meta) = { OY_META_MAGIC, sizeof(oy_driver_meta), 1, 1, 1, "uartx", "Third Party Serial", "0.1.0",
                             "uart16550 driver written from the datasheet", OY_SERIAL_EXTENSION, { { 0x0A7A, 0x0003 } } };
static const oy_driver drv = { sizeof drv, 0, &meta, uartx_init, uartx_deinit, uartx_probe, uartx_attach, uartx_detach, uartx_remove, NULL };
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *a) { return oy_negotiate(a, 1, 1, &drv); }
