/*
 * mydriver.c — the smallest complete Oyako driver: it drives the `rnglite`
 * entropy source (vendor 0a7a, device 0004, SDK/datasheets/rnglite.md),
 * registers it with the OS as an entropy source ("oyako.rng/1", the OS's
 * /dev/random) and publishes one control method, `random32`.
 *
 * Copy this folder, rename it, and grow it. Build with `make` (see Makefile);
 * check it with `make check` (runs `oyako conformance`).
 */
#include <oyako/oyako.h>
#include <string.h>

#define RNG_VENDOR 0x0A7Au
#define RNG_DEVICE 0x0004u
#define RNG_DATA 0x00u
#define RNG_STATUS 0x04u
#define RNG_CTRL 0x08u

/* 1. Metadata: read from the file by `oyako driver inspect` and the OS's
 *    device matching, without running any code. */
OY_DRIVER_METADATA(my_meta) = {
    OY_META_MAGIC, sizeof(oy_driver_meta), OY_ABI_VERSION_1, OY_ABI_VERSION_1, 1,
    "mydriver", "Example Vendor", "0.1.0", "Template driver for the rnglite entropy source", OY_RNG_EXTENSION,
    {{RNG_VENDOR, RNG_DEVICE}},
};

typedef struct my_ctx {
    const oy_host *host;       /* valid until deinit returns */
    const oy_host_rng *rng;    /* the OS's entropy class; NULL if it has none */
} my_ctx;

typedef struct my_dev {
    my_ctx *ctx;
    oy_device *device;         /* valid until detach returns */
    oy_regs *regs;
    oy_rng *source;            /* our registration with the OS */
    int gone;                  /* surprise-removed */
} my_dev;

static oy_instance_set my_instances;

/* 2. Driver-wide state: init/deinit, [passive]. */
static int32_t my_init(const oy_host *host, void **out_ctx) {
    my_ctx *c;
    if (host == NULL || out_ctx == NULL) return OY_E_INVALID;
    c = (my_ctx *)host->mem_alloc(host, NULL, sizeof(*c));
    if (c == NULL) return OY_E_NOMEM;
    c->host = host;
    /* Extensions are looked up, never assumed: an older OS may lack it. */
    c->rng = (const oy_host_rng *)host->get_extension(host, OY_RNG_EXTENSION);
    if (c->rng != NULL && c->rng->struct_size < sizeof(oy_host_rng)) c->rng = NULL;
    *out_ctx = c;
    return OY_OK;
}

static void my_deinit(void *ctx) {
    my_ctx *c = (my_ctx *)ctx;
    if (c != NULL) c->host->mem_free(c->host, c);
}

/* 3. Devices: probe must not touch hardware; attach acquires, detach
 *    releases everything attach acquired. */
static int32_t my_probe(void *ctx, const oy_device_info *info) {
    (void)ctx;
    if (info == NULL || info->struct_size < sizeof(oy_device_info)) return OY_E_INVALID;
    if (info->vendor_id != RNG_VENDOR || info->device_id != RNG_DEVICE) return OY_E_NOT_SUPPORTED;
    return OY_OK;
}

/* The entropy class: fill the caller's buffer from the device's FIFO,
 * waiting up to 100 ms for the first word. [passive] */
static int32_t my_read(void *instance, void *buffer, uint32_t length, uint32_t *produced) {
    my_dev *d = (my_dev *)instance;
    const oy_host *h;
    uint8_t *out = (uint8_t *)buffer;
    uint32_t done = 0;
    uint64_t deadline;
    if (buffer == NULL || produced == NULL || length == 0) return OY_E_INVALID;
    if (length > OY_RNG_MAX_READ) return OY_E_RANGE;
    if (!oy_instance_contains(&my_instances, d)) return OY_E_STATE;
    if (d->gone) return OY_E_DEVICE_GONE;
    h = d->ctx->host;
    deadline = h->monotonic_ns(h) + 100000000ull;
    while (done < length) {
        uint32_t status = h->reg_read32(d->regs, RNG_STATUS), word;
        if (status == 0xFFFFFFFFu) return OY_E_DEVICE_GONE; /* reads all ones: removed */
        if (!(status & 1u)) {
            if (done > 0 || h->monotonic_ns(h) > deadline) break;
            continue;
        }
        word = h->reg_read32(d->regs, RNG_DATA);
        if (length - done >= 4) {
            memcpy(out + done, &word, 4);
            done += 4;
        } else {
            memcpy(out + done, &word, length - done);
            done = length;
        }
    }
    *produced = done;
    return OY_OK;
}

static const oy_rng_ops my_rng_ops = {sizeof(oy_rng_ops), 0, my_read};

static int32_t my_attach(void *ctx, oy_device *device, void **out_instance) {
    my_ctx *c = (my_ctx *)ctx;
    my_dev *d;
    uint64_t size = 0;
    int32_t rc;
    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;
    d = (my_dev *)c->host->mem_alloc(c->host, device, sizeof(*d));
    if (d == NULL) return OY_E_NOMEM;
    d->ctx = c;
    d->device = device;
    rc = c->host->regs_map(device, 0, &d->regs, &size);
    if (rc != OY_OK || !oy_instance_add(&my_instances, d)) {
        if (d->regs) c->host->regs_unmap(d->regs);
        c->host->mem_free(c->host, d);
        return rc != OY_OK ? rc : OY_E_BUSY;
    }
    c->host->reg_write32(d->regs, RNG_CTRL, 1); /* enable */
    if (c->rng != NULL && (rc = c->rng->register_rng(device, &my_rng_ops, d, &d->source)) != OY_OK) {
        c->host->reg_write32(d->regs, RNG_CTRL, 0);
        oy_instance_take(&my_instances, d);
        c->host->regs_unmap(d->regs);
        c->host->mem_free(c->host, d);
        return rc;
    }
    *out_instance = d;
    return OY_OK;
}

static int32_t my_detach(void *instance) {
    my_dev *d = (my_dev *)instance;
    if (d == NULL) return OY_E_INVALID;
    if (!oy_instance_take(&my_instances, d)) return OY_E_STATE; /* detached already */
    if (d->source != NULL) d->ctx->rng->unregister_rng(d->source); /* waits for a read in progress */
    d->ctx->host->reg_write32(d->regs, RNG_CTRL, 0);
    d->ctx->host->regs_unmap(d->regs);
    d->ctx->host->mem_free(d->ctx->host, d);
    return OY_OK;
}

/* 4. A control method: callable as `oyako driver call mydriver.so random32`. */
static uint32_t my_random32(void *instance) {
    my_dev *d = (my_dev *)instance;
    uint32_t tries;
    if (!oy_instance_contains(&my_instances, d)) return 0;
    for (tries = 0; tries < 1000; tries++) {
        if (d->ctx->host->reg_read32(d->regs, RNG_STATUS) & 1u) return d->ctx->host->reg_read32(d->regs, RNG_DATA);
    }
    return 0;
}

static const oy_control_method my_methods[] = {
    {sizeof(oy_control_method), 0, "random32", "u32()", "A random word from the device", (oy_control_fn)my_random32},
};
static const oy_control_table my_control = {sizeof(oy_control_table), 1, my_methods};

static const void *my_get_extension(void *instance, const char *id) {
    (void)instance;
    if (id != NULL && strcmp(id, OY_CONTROL_EXTENSION) == 0) return &my_control;
    return NULL;
}

/* Surprise removal: reads fail from now on; detach follows. */
static void my_remove(void *instance) {
    my_dev *d = (my_dev *)instance;
    if (oy_instance_contains(&my_instances, d)) d->gone = 1;
}

static const oy_driver my_driver = {
    sizeof(oy_driver), 0, &my_meta,
    my_init, my_deinit, my_probe, my_attach, my_detach, my_remove, my_get_extension,
};

/* 5. The one exported symbol. */
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *args) {
    return oy_negotiate(args, OY_ABI_VERSION_1, OY_ABI_VERSION_1, &my_driver);
}
