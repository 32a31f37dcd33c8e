/*
 * uart16550.c — vendor driver for a 16550A UART.
 *
 * Written only against the Oyako SDK: port I/O through the host table.
 * Writes never block: they go into a software transmit ring that the
 * interrupt handler feeds to the 16-byte FIFO whenever the transmitter
 * empties. Received bytes are drained from the FIFO in the interrupt
 * handler and handed to the OS in order.
 */
#include <oyako/oyako.h>
#include <string.h>

#define U_VENDOR_ID 0x0A7Au
#define U_DEVICE_ID 0x0003u
#define U_CLOCK 1843200u
#define U_FIFO 16u
#define U_TX_RING 4096u

/* Registers (port offsets) */
#define U_RBR 0u /* read: receive buffer; write: THR */
#define U_THR 0u
#define U_DLL 0u
#define U_IER 1u
#define U_DLM 1u
#define U_IIR 2u /* read */
#define U_FCR 2u /* write */
#define U_LCR 3u
#define U_MCR 4u
#define U_LSR 5u

#define U_IER_RDA 0x01u
#define U_IER_THRE 0x02u
#define U_IER_RLS 0x04u
#define U_LCR_DLAB 0x80u
#define U_LSR_DR 0x01u
#define U_LSR_OE 0x02u
#define U_LSR_THRE 0x20u

OY_DRIVER_METADATA(u_meta) = {
    OY_META_MAGIC, sizeof(oy_driver_meta), OY_ABI_VERSION_1, OY_ABI_VERSION_1, 1,
    "uart16550", "Oyako Reference Devices", "1.0.0",
    "Driver for 16550A-compatible UARTs", OY_SERIAL_EXTENSION,
    {{U_VENDOR_ID, U_DEVICE_ID}},
};

typedef struct u_ctx {
    const oy_host *host;
    const oy_host_serial *serial;
} u_ctx;

typedef struct u_dev {
    u_ctx *ctx;
    const oy_host *host;
    oy_device *device;
    oy_ports *ports;
    oy_lock *lock;          /* guards the TX ring and line settings */
    oy_irq *irq;
    oy_serial *port;
    uint8_t tx[U_TX_RING];
    uint32_t tx_head, tx_count;
    int tx_was_full;
    int gone;
    oy_serial_line line;
} u_dev;

/* Live instances, so that detach twice or remove after detach is refused. */
static oy_instance_set u_instances;

static uint8_t u_in(u_dev *d, uint32_t reg) { return d->host->port_in8(d->ports, reg); }
static void u_out(u_dev *d, uint32_t reg, uint8_t v) { d->host->port_out8(d->ports, reg, v); }

/* Reads LSR. Reading clears OE, so every read reports an overrun it shows:
 * the hardware cannot count lost bytes, so each OE is one error report. */
static uint8_t u_lsr(u_dev *d) {
    uint8_t lsr = u_in(d, U_LSR);
    if (lsr != 0xFFu && (lsr & U_LSR_OE) && d->port) d->ctx->serial->error(d->port, 1);
    return lsr;
}

/* Moves up to a FIFO's worth from the ring to the transmitter. Caller holds
 * the lock. Returns nonzero if a writer was waiting for room. */
static int u_fill_fifo(u_dev *d) {
    uint32_t n = 0;
    int wake;
    if (!(u_lsr(d) & U_LSR_THRE)) return 0;
    while (d->tx_count > 0 && n < U_FIFO) {
        u_out(d, U_THR, d->tx[d->tx_head]);
        d->tx_head = (d->tx_head + 1u) % U_TX_RING;
        d->tx_count--;
        n++;
    }
    wake = d->tx_was_full && d->tx_count < U_TX_RING / 2u;
    if (wake) d->tx_was_full = 0;
    return wake;
}

/* [interrupt] */
static void u_irq(void *arg) {
    u_dev *d = (u_dev *)arg;
    uint8_t buffer[64];
    int rounds;
    for (rounds = 0; rounds < 64; rounds++) {
        uint8_t iir = u_in(d, U_IIR);
        uint32_t n = 0;
        if (iir == 0xFFu || (iir & 0x01u)) break; /* gone, or nothing pending */
        switch (iir & 0x0Eu) {
        case 0x06: /* line status */
            (void)u_lsr(d);
            break;
        case 0x04: /* received data */
        case 0x0C: /* character timeout */
            while (n < sizeof(buffer) && (u_lsr(d) & U_LSR_DR)) buffer[n++] = u_in(d, U_RBR);
            if (n > 0 && d->port) d->ctx->serial->receive(d->port, buffer, n);
            break;
        case 0x02: { /* transmitter empty */
            int wake;
            d->host->lock_acquire(d->lock);
            wake = u_fill_fifo(d);
            d->host->lock_release(d->lock);
            if (wake && d->port) d->ctx->serial->tx_ready(d->port);
            break;
        }
        default:
            return;
        }
    }
}

/* [any-thread] */
static int32_t u_write(void *instance, const void *data, uint32_t length, uint32_t *written) {
    u_dev *d = (u_dev *)instance;
    uint32_t taken = 0;
    if (d == NULL || written == NULL || (length > 0 && data == NULL)) return OY_E_INVALID;
    d->host->lock_acquire(d->lock);
    if (d->gone) {
        d->host->lock_release(d->lock);
        *written = 0;
        return OY_E_DEVICE_GONE;
    }
    while (taken < length && d->tx_count < U_TX_RING) {
        d->tx[(d->tx_head + d->tx_count) % U_TX_RING] = ((const uint8_t *)data)[taken++];
        d->tx_count++;
    }
    if (taken < length) d->tx_was_full = 1;
    (void)u_fill_fifo(d);
    d->host->lock_release(d->lock);
    *written = taken;
    return OY_OK;
}

/* [passive] */
static int32_t u_set_line(void *instance, const oy_serial_line *line) {
    u_dev *d = (u_dev *)instance;
    uint32_t divisor;
    uint8_t lcr;
    if (d == NULL || line == NULL || line->struct_size < sizeof(oy_serial_line)) return OY_E_INVALID;
    if (line->baud == 0 || U_CLOCK / 16u % line->baud != 0) return OY_E_RANGE;
    if (line->data_bits < 5 || line->data_bits > 8 || line->parity > OY_PARITY_EVEN || line->stop_bits < 1 || line->stop_bits > 2) return OY_E_INVALID;
    divisor = U_CLOCK / 16u / line->baud;
    if (divisor > 0xFFFFu) return OY_E_RANGE;
    lcr = (uint8_t)((line->data_bits - 5u) | (line->stop_bits == 2 ? 0x04u : 0u) |
                    (line->parity == OY_PARITY_NONE ? 0u : (line->parity == OY_PARITY_EVEN ? 0x18u : 0x08u)));
    d->host->lock_acquire(d->lock);
    if (d->gone) {
        d->host->lock_release(d->lock);
        return OY_E_DEVICE_GONE; /* removed: the line stays as it was */
    }
    u_out(d, U_LCR, U_LCR_DLAB);
    u_out(d, U_DLL, (uint8_t)(divisor & 0xFFu));
    u_out(d, U_DLM, (uint8_t)(divisor >> 8));
    u_out(d, U_LCR, lcr);
    d->line = *line;
    d->host->lock_release(d->lock);
    return OY_OK;
}

static const oy_serial_ops u_ops = {sizeof(oy_serial_ops), 0, u_write, u_set_line};

static int32_t u_init(const oy_host *host, void **out_ctx) {
    u_ctx *c;
    const oy_host_serial *serial;
    if (host == NULL || out_ctx == NULL) return OY_E_INVALID;
    serial = (const oy_host_serial *)host->get_extension(host, OY_SERIAL_EXTENSION);
    if (serial == NULL || serial->struct_size < sizeof(oy_host_serial)) return OY_E_NOT_SUPPORTED;
    c = (u_ctx *)host->mem_alloc(host, NULL, sizeof(*c));
    if (c == NULL) return OY_E_NOMEM;
    c->host = host;
    c->serial = serial;
    *out_ctx = c;
    return OY_OK;
}

static void u_deinit(void *ctx) {
    u_ctx *c = (u_ctx *)ctx;
    if (c) c->host->mem_free(c->host, c);
}

static int32_t u_probe(void *ctx, const oy_device_info *info) {
    (void)ctx;
    if (info == NULL || info->struct_size < sizeof(oy_device_info)) return OY_E_INVALID;
    if (info->vendor_id != U_VENDOR_ID || info->device_id != U_DEVICE_ID) return OY_E_NOT_SUPPORTED;
    if (info->bar_count < 1 || info->bar_kind[0] != OY_BAR_PORT || info->irq_count < 1) return OY_E_NOT_SUPPORTED;
    return OY_OK;
}

static void u_teardown(u_dev *d) {
    const oy_host *h = d->host;
    if (d->ports && !d->gone) u_out(d, U_IER, 0);
    if (d->irq) h->irq_unhook(d->irq);
    if (d->lock) h->lock_destroy(d->lock);
    if (d->ports) h->ports_release(d->ports);
    h->mem_free(h, d);
}

static int32_t u_attach(void *ctx, oy_device *device, void **out_instance) {
    u_ctx *c = (u_ctx *)ctx;
    const oy_host *h;
    u_dev *d;
    uint32_t count = 0;
    oy_serial_line line;
    int32_t rc;
    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;
    h = c->host;
    d = (u_dev *)h->mem_alloc(h, device, sizeof(*d));
    if (d == NULL) return OY_E_NOMEM;
    d->ctx = c;
    d->host = h;
    d->device = device;
    if ((rc = h->ports_claim(device, 0, &d->ports, &count)) != OY_OK) goto fail;
    if (count < 8u) {
        rc = OY_E_NOT_SUPPORTED;
        goto fail;
    }
    /* A scratch-register round trip tells a present UART from an empty bus. */
    u_out(d, 7, 0x5A);
    if (u_in(d, 7) != 0x5A) {
        rc = OY_E_DEVICE_GONE;
        goto fail;
    }
    if ((rc = h->lock_create(h, device, &d->lock)) != OY_OK) goto fail;
    memset(&line, 0, sizeof(line));
    line.struct_size = sizeof(line);
    line.baud = 115200;
    line.data_bits = 8;
    line.parity = OY_PARITY_NONE;
    line.stop_bits = 1;
    if ((rc = u_set_line(d, &line)) != OY_OK) goto fail;
    u_out(d, U_FCR, 0x07); /* enable and clear FIFOs */
    u_out(d, U_MCR, 0x2B); /* DTR, RTS, OUT2, auto flow control */
    if ((rc = h->irq_hook(device, 0, u_irq, d, &d->irq)) != OY_OK) goto fail;
    if (!oy_instance_add(&u_instances, d)) {
        rc = OY_E_BUSY;
        goto fail;
    }
    if ((rc = c->serial->register_port(device, &line, &u_ops, d, &d->port)) != OY_OK) {
        oy_instance_take(&u_instances, d);
        goto fail;
    }
    u_out(d, U_IER, U_IER_RDA | U_IER_THRE | U_IER_RLS);
    *out_instance = d;
    return OY_OK;
fail:
    u_teardown(d);
    return rc;
}

static int32_t u_detach(void *instance) {
    u_dev *d = (u_dev *)instance;
    if (d == NULL) return OY_E_INVALID;
    if (!oy_instance_take(&u_instances, d)) return OY_E_STATE;
    /* Quiet the device before unregistering: with its interrupts off and
     * the handler unhooked (which waits for a running one), no input
     * reaches the port after it is gone. */
    if (d->ports && !d->gone) u_out(d, U_IER, 0);
    if (d->irq) {
        d->host->irq_unhook(d->irq);
        d->irq = NULL;
    }
    if (d->port) d->ctx->serial->unregister_port(d->port);
    d->port = NULL;
    u_teardown(d);
    return OY_OK;
}

static void u_remove(void *instance) {
    u_dev *d = (u_dev *)instance;
    if (!oy_instance_contains(&u_instances, d)) return;
    d->host->lock_acquire(d->lock);
    d->gone = 1;
    d->tx_count = 0;
    d->host->lock_release(d->lock);
}

/* ---- control methods ------------------------------------------------------------- */

static uint32_t u_m_baud(void *instance) {
    u_dev *d = (u_dev *)instance;
    return oy_instance_contains(&u_instances, d) ? d->line.baud : 0;
}

static int32_t u_m_set_baud(void *instance, uint32_t baud) {
    u_dev *d = (u_dev *)instance;
    oy_serial_line line;
    if (!oy_instance_contains(&u_instances, d)) return OY_E_STATE;
    line = d->line;
    line.baud = baud;
    return u_set_line(d, &line);
}

static const oy_control_method u_methods[] = {
    {sizeof(oy_control_method), 0, "baud", "u32()", "Current line rate in bits per second", (oy_control_fn)u_m_baud},
    {sizeof(oy_control_method), 0, "set_baud", "i32(u32)", "Change the line rate (115200 divided by an integer)", (oy_control_fn)u_m_set_baud},
};

static const oy_control_table u_control = {sizeof(oy_control_table), 2, u_methods};

static const void *u_get_extension(void *instance, const char *id) {
    (void)instance;
    if (id == NULL) return NULL;
    if (strcmp(id, OY_SERIAL_EXTENSION) == 0) return &u_ops;
    if (strcmp(id, OY_CONTROL_EXTENSION) == 0) return &u_control;
    return NULL;
}

static const oy_driver u_driver = {
    sizeof(oy_driver), 0, &u_meta,
    u_init, u_deinit, u_probe, u_attach, u_detach, u_remove, u_get_extension,
};

OY_EXPORT int32_t oy_driver_entry(oy_entry_args *args) {
    return oy_negotiate(args, OY_ABI_VERSION_1, OY_ABI_VERSION_1, &u_driver);
}
