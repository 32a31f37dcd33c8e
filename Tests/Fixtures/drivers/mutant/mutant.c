/*
 * mutant.c — a small, correct driver for the nvmelite device's IDs that can
 * be built with one deliberate defect at a time (-DMUTANT_...). The test
 * corpus uses it to prove that the host and the conformance suite catch each
 * class of mistake. Without any define it is well-behaved: attach maps the
 * registers, allocates a DMA page, hooks vector 0 and creates a lock; detach
 * releases all of it.
 */
#include <oyako/oyako.h>
#include <string.h>

#ifndef MUTANT_ABI_MIN
#define MUTANT_ABI_MIN OY_ABI_VERSION_1
#endif
#ifndef MUTANT_ABI_MAX
#define MUTANT_ABI_MAX OY_ABI_VERSION_1
#endif
/* The device ID the metadata lists (0x0001 is nvmelite's). */
#ifndef MUTANT_DEVICE_ID
#define MUTANT_DEVICE_ID 0x0001u
#endif

#ifndef MUTANT_NO_META
OY_DRIVER_METADATA(mutant_meta) = {
    OY_META_MAGIC, sizeof(oy_driver_meta), MUTANT_ABI_MIN, MUTANT_ABI_MAX, 1,
    "mutant", "Oyako Test Corpus", "0.1.0", "Fixture driver with switchable defects", "",
    {{0x0A7Au, MUTANT_DEVICE_ID}},
};
#else
static const oy_driver_meta mutant_meta = {
    OY_META_MAGIC, sizeof(oy_driver_meta), MUTANT_ABI_MIN, MUTANT_ABI_MAX, 1,
    "mutant", "Oyako Test Corpus", "0.1.0", "", "", {{0x0A7Au, 0x0001u}},
};
#endif

#ifdef MUTANT_META_MISMATCH
static const oy_driver_meta other_meta = {
    OY_META_MAGIC, sizeof(oy_driver_meta), MUTANT_ABI_MIN, MUTANT_ABI_MAX, 1,
    "impostor", "Somebody Else", "9.9.9", "", "", {{0x0A7Au, 0x0001u}},
};
#endif

/* Live instances (the correct driver refuses detach twice). */
static oy_instance_set mutant_instances;

typedef struct mutant_ctx {
    const oy_host *host;
} mutant_ctx;

typedef struct mutant_dev {
    mutant_ctx *ctx;
    oy_device *device;
    oy_regs *regs;
    oy_dma_buffer *dma;
    oy_irq *irq;
    oy_lock *lock;
    oy_event *event;
} mutant_dev;

#ifdef MUTANT_FORBIDDEN_IMPORT
#include <stdlib.h>
#endif
#ifdef MUTANT_WRITES_STDOUT
#include <unistd.h>
#endif

static int32_t mutant_init(const oy_host *host, void **out_ctx) {
    mutant_ctx *c;
#ifdef MUTANT_FORBIDDEN_IMPORT
    /* Defect: reads the process environment behind the host's back. */
    if (getenv("OYAKO_MUTANT_DEBUG") != NULL) host->log(host, NULL, OY_LOG_DEBUG, "debug");
#endif
#ifdef MUTANT_INIT_FAILS
    (void)host;
    (void)out_ctx;
    return OY_E_NOT_SUPPORTED;
#endif
    c = (mutant_ctx *)host->mem_alloc(host, NULL, sizeof(*c));
    if (c == NULL) return OY_E_NOMEM;
    c->host = host;
    *out_ctx = c;
    return OY_OK;
}

static void mutant_deinit(void *ctx) {
    mutant_ctx *c = (mutant_ctx *)ctx;
    if (c == NULL) return;
#ifndef MUTANT_LEAK_ON_DEINIT
    c->host->mem_free(c->host, c);
#else
    (void)c;
#endif
}

#ifdef MUTANT_KEEPS_PROBE_INFO
/* Defect: keeps the device info probe borrowed, to read it in attach. */
static const oy_device_info *mutant_kept_info;
#endif

static int32_t mutant_probe(void *ctx, const oy_device_info *info) {
    (void)ctx;
#ifdef MUTANT_KEEPS_PROBE_INFO
    mutant_kept_info = info;
#endif
#ifdef MUTANT_PROBE_FAILS
    (void)info;
    return OY_E_NOT_SUPPORTED;
#endif
#ifdef MUTANT_CRASH_IN_PROBE
    /* Defect: dereferences a pointer it never set (after saying so). */
    {
        mutant_ctx *c = (mutant_ctx *)ctx;
        volatile int *nowhere = (volatile int *)(uintptr_t)info->revision;
        if (c != NULL) c->host->log(c->host, NULL, OY_LOG_INFO, "mutant: probing, about to write through the revision");
        *nowhere = 1;
    }
#endif
#ifdef MUTANT_BAD_ERROR_CODE
    /* Defect: answers bad input with a code from no list. */
    if (info == NULL) return -4242;
#endif
    if (info == NULL || info->struct_size < sizeof(oy_device_info)) return OY_E_INVALID;
    if (info->vendor_id != 0x0A7Au || info->device_id != 0x0001u) return OY_E_NOT_SUPPORTED;
    return OY_OK;
}

static void mutant_irq(void *arg) {
    mutant_dev *d = (mutant_dev *)arg;
#ifdef MUTANT_BLOCK_IN_IRQ
    d->ctx->host->event_wait(d->event, 1000000);
#endif
#ifdef MUTANT_SLOW_IRQ
    /* Defect: 100 ms of work in the interrupt handler. */
    {
        volatile uint64_t spin = 0;
        uint64_t until = d->ctx->host->monotonic_ns(d->ctx->host) + 100000000u;
        while (d->ctx->host->monotonic_ns(d->ctx->host) < until) spin++;
    }
#endif
    d->ctx->host->event_signal(d->event);
}

static int32_t mutant_attach(void *ctx, oy_device *device, void **out) {
    mutant_ctx *c = (mutant_ctx *)ctx;
    const oy_host *h = c->host;
    mutant_dev *d;
    uint64_t size = 0;
#ifdef MUTANT_WRITES_STDOUT
    /* Defect: debug output on the process's standard output, the last of it without a newline. */
    (void)!write(1, "mutant: attaching\nmutant: half a line", 37);
#endif
#ifdef MUTANT_KEEPS_PROBE_INFO
    if (mutant_kept_info != NULL && mutant_kept_info->irq_count == 0) return OY_E_NOT_SUPPORTED;
#endif
    d = (mutant_dev *)h->mem_alloc(h, device, sizeof(*d));
#ifdef MUTANT_STACK_OVERFLOW
    /* Defect: one element past a local array; unnoticed unless the driver
     * is built with AddressSanitizer and run under --sanitize address. */
    {
        volatile unsigned char scratch[8];
        volatile int index = 8;
        scratch[index] = 1;
        (void)scratch[0];
    }
#endif
#ifdef MUTANT_HEAP_OVERFLOW
    /* Defect: writes one byte past the block it asked for. */
    if (d != NULL) ((unsigned char *)d)[sizeof(*d)] = 1;
#endif
    void *cpu = NULL;
    oy_dma_addr addr = 0;
    int32_t rc;
    if (d == NULL) return OY_E_NOMEM;
    d->ctx = c;
    d->device = device;
#ifdef MUTANT_HANG_IN_ATTACH
    /* Defect: waits for something that never happens, without a timeout. */
    { volatile int forever = 1; while (forever) {} }
#endif
#ifdef MUTANT_FORGED_HANDLE
    /* Defect: a device handle of its own making (the host refuses it). */
    {
        oy_regs *bogus = NULL;
        uint64_t bogus_size = 0;
        (void)h->regs_map((oy_device *)(uintptr_t)0xDEAD0000u, 0, &bogus, &bogus_size);
    }
#endif
    if ((rc = h->regs_map(device, 0, &d->regs, &size)) != OY_OK) goto fail;
#ifdef MUTANT_LOG_GARBAGE
    /* Defect: a log message through a pointer that leads nowhere (as a
     * freed or uninitialized one does). */
    h->log(h, device, OY_LOG_INFO, (const char *)(uintptr_t)0x10);
#endif
#ifdef MUTANT_MISALIGNED_REGISTER
    /* Defect: the upper 16 bits of register 0 read as a 32-bit register at
     * offset 2 (the host refuses it: offsets are naturally aligned). */
    (void)h->reg_read32(d->regs, 2);
#endif
    if ((rc = h->dma_alloc(device, 4096, &d->dma, &cpu, &addr)) != OY_OK) goto fail;
    if ((rc = h->lock_create(h, device, &d->lock)) != OY_OK) goto fail;
    if ((rc = h->event_create(h, device, &d->event)) != OY_OK) goto fail;
    if ((rc = h->irq_hook(device, 0, mutant_irq, d, &d->irq)) != OY_OK) goto fail;
#ifdef MUTANT_ATTACH_FAILS
    /* Defect: give up without releasing anything acquired above. */
    return OY_E_IO;
#endif
    oy_instance_add(&mutant_instances, d);
    h->log(h, device, OY_LOG_DEBUG, "mutant: attached");
    *out = d;
    return OY_OK;
fail:
#ifdef MUTANT_NO_CLEANUP_ON_ALLOC_FAIL
    /* Defect: gives up without releasing what it acquired. */
    return rc;
#endif
    if (d->irq) h->irq_unhook(d->irq);
    if (d->event) h->event_destroy(d->event);
    if (d->lock) h->lock_destroy(d->lock);
    if (d->dma) h->dma_free(d->dma);
    if (d->regs) h->regs_unmap(d->regs);
    h->mem_free(h, d);
    return rc;
}

static int32_t mutant_detach(void *instance) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
#ifndef MUTANT_CRASH_WRONG_STATE
    if (!oy_instance_take(&mutant_instances, d)) return d == NULL ? OY_E_INVALID : OY_E_STATE;
#endif
    /* With MUTANT_CRASH_WRONG_STATE: trusts the pointer (detach(NULL) crashes). */
    h = d->ctx->host;
    h->irq_unhook(d->irq);
    h->event_destroy(d->event);
    h->lock_destroy(d->lock);
#ifndef MUTANT_LEAK_ON_DETACH
    h->dma_free(d->dma);
#endif
    h->regs_unmap(d->regs);
    h->mem_free(h, d);
    return OY_OK;
}

/* ---- host-service stress, as control methods ---------------------------------------- */

/* One work item's shared state: the worker and the caller both touch it. */
typedef struct stress_state {
    const oy_host *host;
    oy_work *work;
    int starts; /* runs of stress_fn started (atomic) */
    int active; /* runs of stress_fn in progress (atomic) */
    int runs;   /* runs completed (atomic) */
    int requeue; /* the next run queues the item again (atomic) */
} stress_state;

static void stress_spin(const oy_host *h, uint64_t ns) {
    uint64_t until = h->monotonic_ns(h) + ns;
    while (h->monotonic_ns(h) < until) {
    }
}

/* [passive] A bottom half that takes a little while. */
static void stress_fn(void *arg) {
    stress_state *s = (stress_state *)arg;
    __atomic_add_fetch(&s->active, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&s->starts, 1, __ATOMIC_SEQ_CST);
    /* More work arrived while this ran, as an interrupt would announce it. */
    if (__atomic_exchange_n(&s->requeue, 0, __ATOMIC_SEQ_CST)) s->host->work_queue(s->work);
    stress_spin(s->host, 100000);
    __atomic_add_fetch(&s->runs, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&s->active, 1, __ATOMIC_SEQ_CST);
}

/* Each round: queue an item that queues itself again when it starts; queue
 * it again from this thread too while it runs (as an interrupt handler
 * queuing its bottom half does); destroy it, at once or after a short sleep;
 * and check the header's promise: when work_destroy returns, the function is
 * not running and never runs again. Returns the number of rounds that broke it, or a negative
 * error code. */
static int32_t mutant_m_work_destroy_races(void *instance, uint32_t rounds) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
    stress_state s;
    oy_event *pause = NULL;
    int32_t broken = 0;
    uint32_t round;
    if (!oy_instance_contains(&mutant_instances, d)) return OY_E_STATE;
    if (rounds > 1000) return OY_E_RANGE;
    h = d->ctx->host;
    if (h->event_create(h, d->device, &pause) != OY_OK) return OY_E_NOMEM;
    for (round = 0; round < rounds; round++) {
        uint64_t deadline;
        int runs;
        memset(&s, 0, sizeof(s));
        s.host = h;
        s.requeue = 1;
        if (h->work_create(h, d->device, stress_fn, &s, &s.work) != OY_OK) {
            h->event_destroy(pause);
            return OY_E_NOMEM;
        }
        h->work_queue(s.work);
        deadline = h->monotonic_ns(h) + 1000000000ull;
        while (__atomic_load_n(&s.starts, __ATOMIC_SEQ_CST) == 0 && h->monotonic_ns(h) < deadline) {
        }
        h->work_queue(s.work);
        /* Destroy at varying points of the run: at once, or after sleeping
         * a little (so another worker has a processor and may pick the item
         * up again). */
        if (round % 10 != 0) (void)h->event_wait(pause, (uint64_t)(round % 10) * 20000);
        h->work_destroy(s.work);
        if (__atomic_load_n(&s.active, __ATOMIC_SEQ_CST) != 0) {
            broken++;
            /* s lives on this stack: let the stray run finish before reuse. */
            while (__atomic_load_n(&s.active, __ATOMIC_SEQ_CST) != 0) {
            }
            continue;
        }
        runs = __atomic_load_n(&s.runs, __ATOMIC_SEQ_CST);
        stress_spin(h, 200000);
        if (__atomic_load_n(&s.runs, __ATOMIC_SEQ_CST) != runs || __atomic_load_n(&s.active, __ATOMIC_SEQ_CST) != 0) {
            broken++;
            while (__atomic_load_n(&s.active, __ATOMIC_SEQ_CST) != 0) {
            }
        }
    }
    h->event_destroy(pause);
    return broken;
}

/* A handler on vector 1 that runs a while, then masks and unmasks its own
 * vector through its handle, as a threaded handler's top half does. */
typedef struct unhook_state {
    const oy_host *host;
    oy_irq *irq;
    int started; /* atomic */
    int active;  /* atomic */
} unhook_state;

static void unhook_fn(void *arg) {
    unhook_state *s = (unhook_state *)arg;
    oy_irq *irq;
    __atomic_add_fetch(&s->active, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&s->started, 1, __ATOMIC_SEQ_CST);
    stress_spin(s->host, 500000); /* the caller unhooks meanwhile */
    irq = __atomic_load_n(&s->irq, __ATOMIC_ACQUIRE);
    if (irq != NULL) {
        s->host->irq_mask(irq);
        s->host->irq_unmask(irq);
    }
    __atomic_sub_fetch(&s->active, 1, __ATOMIC_SEQ_CST);
}

/* Each round: hook vector 1 (the caller raises it all along), wait until
 * the handler runs, and unhook while it does. irq_unhook waits for it, and
 * until it returns the handler's handle is valid (the host reports any
 * call it refused). Returns the rounds in which irq_unhook returned while
 * the handler still ran, or a negative error code. */
static int32_t mutant_m_irq_unhook_races(void *instance, uint32_t rounds) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
    unhook_state s;
    int32_t broken = 0;
    uint32_t round;
    if (!oy_instance_contains(&mutant_instances, d)) return OY_E_STATE;
    if (rounds > 1000) return OY_E_RANGE;
    h = d->ctx->host;
    for (round = 0; round < rounds; round++) {
        oy_irq *irq;
        uint64_t deadline;
        int32_t rc;
        memset(&s, 0, sizeof(s));
        s.host = h;
        if ((rc = h->irq_hook(d->device, 1, unhook_fn, &s, &irq)) != OY_OK) return rc;
        __atomic_store_n(&s.irq, irq, __ATOMIC_RELEASE);
        deadline = h->monotonic_ns(h) + 1000000000ull;
        while (__atomic_load_n(&s.started, __ATOMIC_SEQ_CST) == 0 && h->monotonic_ns(h) < deadline) {
        }
        h->irq_unhook(irq);
        if (__atomic_load_n(&s.started, __ATOMIC_SEQ_CST) == 0) return OY_E_TIMEOUT;
        if (__atomic_load_n(&s.active, __ATOMIC_SEQ_CST) != 0) {
            broken++;
            while (__atomic_load_n(&s.active, __ATOMIC_SEQ_CST) != 0) {
            }
        }
    }
    return broken;
}

#ifdef MUTANT_SERVICE_MISUSE
static void mutant_timer_fired(void *arg) { __atomic_store_n((int *)arg, 1, __ATOMIC_SEQ_CST); }

/* A timer callback that misuses a handle: the host must pin it on this driver. */
typedef struct {
    const oy_host *host;
    oy_event *done;
} mutant_misuse_run;

static void mutant_timer_misuses(void *arg) {
    mutant_misuse_run *run = (mutant_misuse_run *)arg;
    oy_lock *forged = (oy_lock *)(uintptr_t)((5ull << 32) | 0x80000003ull);
    run->host->lock_acquire(forged);
    run->host->event_signal(run->done);
}

/* Defect on request: misuses a lock the way buggy drivers do; each case is a violation the
 * host must report and survive. 1: acquire and release after destroy;
 * 2: a forged handle; 3: destroy while held, then release; 4: a lock
 * handle given to an event service; 5: mutual exclusion still holds for a
 * new lock afterwards (returns the count, 2000). */
static int32_t mutant_m_lock_misuse(void *instance, uint32_t which) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
    oy_lock *lock = NULL;
    if (!oy_instance_contains(&mutant_instances, d)) return OY_E_STATE;
    h = d->ctx->host;
    if (which == 2) {
        oy_lock *forged = (oy_lock *)(uintptr_t)((3ull << 32) | 0x80000001ull);
        h->lock_acquire(forged);
        h->lock_release(forged);
        return 0;
    }
    if (h->lock_create(h, d->device, &lock) != OY_OK) return OY_E_NOMEM;
    switch (which) {
    case 1:
        h->lock_destroy(lock);
        h->lock_acquire(lock);
        h->lock_release(lock);
        return 0;
    case 3:
        h->lock_acquire(lock);
        h->lock_destroy(lock);
        h->lock_release(lock);
        return 0;
    case 4:
        h->event_signal((oy_event *)lock);
        h->lock_destroy(lock);
        return 0;
    case 7: {
        /* A timer armed for the longest delay there is must not fire at once. */
        static int fired;
        oy_timer *timer = NULL;
        oy_event *pause = NULL;
        fired = 0;
        h->lock_destroy(lock);
        if (h->timer_create(h, d->device, mutant_timer_fired, &fired, &timer) != OY_OK) return OY_E_NOMEM;
        if (h->event_create(h, d->device, &pause) != OY_OK) {
            h->timer_destroy(timer);
            return OY_E_NOMEM;
        }
        h->timer_arm(timer, ~0ull);
        (void)h->event_wait(pause, 50000000ull);
        h->timer_destroy(timer);
        h->event_destroy(pause);
        return __atomic_load_n(&fired, __ATOMIC_SEQ_CST) ? 0 : 1;
    }
    case 9:
        /* Released without being taken. */
        h->lock_release(lock);
        h->lock_destroy(lock);
        return 0;
    case 8: {
        /* A forged handle used from a timer callback, a deferred context. */
        mutant_misuse_run run = {h, NULL};
        oy_timer *timer = NULL;
        int32_t status;
        h->lock_destroy(lock);
        if (h->event_create(h, d->device, &run.done) != OY_OK) return OY_E_NOMEM;
        if (h->timer_create(h, d->device, mutant_timer_misuses, &run, &timer) != OY_OK) {
            h->event_destroy(run.done);
            return OY_E_NOMEM;
        }
        h->timer_arm(timer, 1000000ull);
        status = h->event_wait(run.done, 5000000000ull);
        h->timer_destroy(timer);
        h->event_destroy(run.done);
        return status == OY_OK ? 0 : 1;
    }
    case 6: {
        /* mem_alloc of sizes no allocator gives: each must be NULL, not a crash. */
        size_t sizes[4] = {(size_t)-1, (size_t)-1 / 2 + 1, (size_t)-1 / 2 - 8, ((size_t)1 << 30) + 1};
        int32_t refused = 0;
        int k;
        for (k = 0; k < 4; k++) {
            void *p = h->mem_alloc(h, d->device, sizes[k]);
            if (p == NULL) refused++; else h->mem_free(h, p);
        }
        h->lock_destroy(lock);
        return refused;
    }
    case 5: {
        int32_t count = 0;
        int i;
        for (i = 0; i < 2000; i++) {
            h->lock_acquire(lock);
            count++;
            h->lock_release(lock);
        }
        h->lock_destroy(lock);
        return count;
    }
    default:
        h->lock_destroy(lock);
        return OY_E_RANGE;
    }
}
#endif

#ifdef MUTANT_SERVICE_MISUSE
static void mutant_nothing(void *arg) { (void)arg; }

static uint64_t fuzz_next(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 11;
}

#define FUZZ_POOL 64

/* `rounds` host-service calls with random arguments: handles of every kind
 * (live, released, of the wrong kind, forged), offsets, widths, sizes,
 * indices and delays. Its own pointers are always valid: what is tried is
 * the host's checking, not C's. Returns the calls made. */
static int32_t mutant_m_service_fuzz(void *instance, uint32_t seed) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
    void *pool[FUZZ_POOL];
    int held[FUZZ_POOL];
    uint64_t state = 0x9E3779B97F4A7C15ull ^ seed;
    uint32_t value32 = 0, count = 0;
    uint64_t size = 0, value64 = 0;
    int32_t calls = 0;
    int i;
    if (!oy_instance_contains(&mutant_instances, d)) return OY_E_STATE;
    h = d->ctx->host;
    for (i = 0; i < FUZZ_POOL; i++) {
        held[i] = 0;
        switch (i % 4) {
        case 0: pool[i] = (void *)(uintptr_t)fuzz_next(&state); break;  /* anything */
        case 1: pool[i] = (void *)(uintptr_t)((fuzz_next(&state) << 32) | (1u << 31) | (fuzz_next(&state) & 0xFF)); break; /* lock-like */
        case 2: pool[i] = (void *)(uintptr_t)((fuzz_next(&state) & 0xF) << 32 | (fuzz_next(&state) & 0x3F)); break; /* handle-like */
        default: pool[i] = NULL; break;
        }
    }
    for (int32_t round = 0; round < 3000; round++) {
        uint64_t r = fuzz_next(&state);
        int slot = (int)(fuzz_next(&state) % FUZZ_POOL);
        void *any = pool[(int)(fuzz_next(&state) % FUZZ_POOL)];
        uint64_t big = fuzz_next(&state) % 3 == 0 ? ~0ull >> (fuzz_next(&state) % 64) : fuzz_next(&state) % 8192;
        void *made = NULL;
        calls++;
        switch (r % 30) {
        case 0: made = h->mem_alloc(h, d->device, (size_t)big); break;
        case 1: h->mem_free(h, any); break;
        case 2: if (h->lock_create(h, d->device, (oy_lock **)&made) != OY_OK) made = NULL; break;
        case 3: if (!held[slot]) h->lock_destroy((oy_lock *)pool[slot]); break;
        case 4: if (!held[slot] && pool[slot] != NULL) { h->lock_acquire((oy_lock *)pool[slot]); held[slot] = 1; } break;
        case 5: if (held[slot]) { h->lock_release((oy_lock *)pool[slot]); held[slot] = 0; } break;
        case 6: if (h->event_create(h, d->device, (oy_event **)&made) != OY_OK) made = NULL; break;
        case 7: h->event_signal((oy_event *)any); break;
        case 8: (void)h->event_wait((oy_event *)any, big % 1000000u); break;
        case 9: if (h->work_create(h, d->device, mutant_nothing, NULL, (oy_work **)&made) != OY_OK) made = NULL; break;
        case 10: h->work_queue((oy_work *)any); break;
        case 11: if (h->timer_create(h, d->device, mutant_nothing, NULL, (oy_timer **)&made) != OY_OK) made = NULL; break;
        case 12: h->timer_arm((oy_timer *)any, big); break;
        case 13: h->timer_cancel((oy_timer *)any); break;
        case 14: (void)h->config_read(d->device, (uint32_t)big, (uint32_t)(fuzz_next(&state) % 9), &value32); break;
        case 15: (void)h->config_write(d->device, (uint32_t)big, (uint32_t)(fuzz_next(&state) % 9), (uint32_t)fuzz_next(&state)); break;
        case 16: if (h->regs_map(d->device, (uint32_t)(fuzz_next(&state) % 8), (oy_regs **)&made, &size) != OY_OK) made = NULL; break;
        case 17: value32 = h->reg_read32((oy_regs *)any, big); break;
        case 18: h->reg_write32((oy_regs *)any, big, (uint32_t)fuzz_next(&state)); break;
        case 19: value64 = h->reg_read64((oy_regs *)any, big); break;
        case 20: h->reg_write64((oy_regs *)any, big, fuzz_next(&state)); break;
        case 21: if (h->ports_claim(d->device, (uint32_t)(fuzz_next(&state) % 8), (oy_ports **)&made, &count) != OY_OK) made = NULL; break;
        case 22: h->port_out8((oy_ports *)any, (uint32_t)big, (uint8_t)fuzz_next(&state)); break;
        case 23: {
            void *cpu = NULL;
            oy_dma_addr address = 0;
            if (h->dma_alloc(d->device, (size_t)big, (oy_dma_buffer **)&made, &cpu, &address) != OY_OK) made = NULL;
            break;
        }
        case 24: {
            oy_dma_addr address = 0;
            if (h->dma_map(d->device, any, (size_t)big, (uint32_t)(fuzz_next(&state) % 5), (oy_dma_map **)&made, &address) != OY_OK) made = NULL;
            break;
        }
        case 25: if (h->irq_hook(d->device, (uint32_t)(fuzz_next(&state) % 6), mutant_nothing, NULL, (oy_irq **)&made) != OY_OK) made = NULL; break;
        case 26: h->irq_mask((oy_irq *)any); h->irq_unmask((oy_irq *)any); break;
        /* Releases of whatever is in the pool, of whatever kind. */
        case 27: h->regs_unmap((oy_regs *)any); h->ports_release((oy_ports *)any); break;
        case 28: h->dma_free((oy_dma_buffer *)any); h->dma_unmap((oy_dma_map *)any); h->irq_unhook((oy_irq *)any); break;
        default: h->event_destroy((oy_event *)any); h->work_destroy((oy_work *)any); h->timer_destroy((oy_timer *)any); break;
        }
        if (made != NULL && !held[slot]) pool[slot] = made;
    }
    for (i = 0; i < FUZZ_POOL; i++) if (held[i]) h->lock_release((oy_lock *)pool[i]);
    (void)value64;
    return calls;
}
#endif

#ifdef MUTANT_KEEPS_STRING_ARG
/* Defect: keeps the string a control call borrowed, to read it in the next call. */
static const char *mutant_kept_name;

static int32_t mutant_m_remember(void *instance, const char *name) {
    (void)instance;
    mutant_kept_name = name;
    return 0;
}

static int32_t mutant_m_recall(void *instance) {
    (void)instance;
    return mutant_kept_name != NULL ? (int32_t)strlen(mutant_kept_name) : -1;
}
#endif

#ifdef MUTANT_HOARDS_MEMORY
/* Defect: keeps every block it asks for, as a driver that leaks one per
 * request does; the host takes them back when the device detaches. */
static int32_t mutant_m_hoard(void *instance, uint32_t mebibytes, uint32_t most) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
    int32_t blocks = 0;
    if (!oy_instance_contains(&mutant_instances, d)) return OY_E_STATE;
    h = d->ctx->host;
    if (mebibytes == 0 || mebibytes > 1024) return OY_E_RANGE;
    while ((uint32_t)blocks < most && h->mem_alloc(h, d->device, (size_t)mebibytes << 20) != NULL) blocks++;
    return blocks;
}

static int32_t mutant_m_hoard_dma(void *instance, uint32_t kibibytes, uint32_t most) {
    mutant_dev *d = (mutant_dev *)instance;
    const oy_host *h;
    oy_dma_buffer *buffer;
    void *cpu;
    oy_dma_addr addr;
    int32_t blocks = 0;
    if (!oy_instance_contains(&mutant_instances, d)) return OY_E_STATE;
    h = d->ctx->host;
    if (kibibytes == 0 || kibibytes > 65536) return OY_E_RANGE;
    while ((uint32_t)blocks < most && h->dma_alloc(d->device, (size_t)kibibytes << 10, &buffer, &cpu, &addr) == OY_OK) blocks++;
    return blocks;
}
#endif

static const oy_control_method mutant_methods[] = {
    {sizeof(oy_control_method), 0, "work_destroy_races", "i32(u32)",
     "Rounds (at most 1000) in which work_destroy returned while the item ran or before its last run", (oy_control_fn)mutant_m_work_destroy_races},
    {sizeof(oy_control_method), 0, "irq_unhook_races", "i32(u32)",
     "Rounds (at most 1000) in which irq_unhook returned while the handler of vector 1, raised by the caller, ran", (oy_control_fn)mutant_m_irq_unhook_races},
#ifdef MUTANT_SERVICE_MISUSE
    {sizeof(oy_control_method), 0, "service_fuzz", "i32(u32)", "3000 host-service calls with random arguments from a seed", (oy_control_fn)mutant_m_service_fuzz},
    {sizeof(oy_control_method), 0, "lock_misuse", "i32(u32)", "Misuses a lock one way (1-5), asks mem_alloc for impossible sizes (6), arms a timer for ever (7); see the source", (oy_control_fn)mutant_m_lock_misuse},
#endif
#ifdef MUTANT_HOARDS_MEMORY
    {sizeof(oy_control_method), 0, "hoard", "i32(u32,u32)", "mem_alloc blocks of so many MiB, at most so many, until NULL, kept; how many it got", (oy_control_fn)mutant_m_hoard},
    {sizeof(oy_control_method), 0, "hoard_dma", "i32(u32,u32)", "dma_alloc buffers of so many KiB, at most so many, until refused, kept; how many it got", (oy_control_fn)mutant_m_hoard_dma},
#endif
#ifdef MUTANT_KEEPS_STRING_ARG
    {sizeof(oy_control_method), 0, "remember", "i32(str)", "Keeps a name", (oy_control_fn)mutant_m_remember},
    {sizeof(oy_control_method), 0, "recall", "i32()", "Length of the kept name", (oy_control_fn)mutant_m_recall},
#endif
};

static const oy_control_table mutant_control = {sizeof(oy_control_table), sizeof(mutant_methods) / sizeof(mutant_methods[0]), mutant_methods};

static const void *mutant_get_extension(void *instance, const char *id) {
    (void)instance;
    if (id != NULL && strcmp(id, OY_CONTROL_EXTENSION) == 0) return &mutant_control;
    return NULL;
}

static const oy_driver mutant_driver = {
    sizeof(oy_driver), 0,
#ifdef MUTANT_META_MISMATCH
    &other_meta,
#else
    &mutant_meta,
#endif
    mutant_init, mutant_deinit,
#ifdef MUTANT_NULL_PROBE
    NULL,
#else
    mutant_probe,
#endif
    mutant_attach, mutant_detach, NULL, mutant_get_extension,
};

#ifdef MUTANT_EXTRA_EXPORT
OY_EXPORT int mutant_helper(void);
OY_EXPORT int mutant_helper(void) { return 42; }
#endif

#ifndef MUTANT_NO_ENTRY
OY_EXPORT int32_t oy_driver_entry(oy_entry_args *args) {
#ifdef MUTANT_ENTRY_FAILS
    (void)args;
    return OY_E_INVALID;
#elif defined(MUTANT_BAD_NEGOTIATION)
    /* Defect: refuses any host newer than itself instead of picking the
     * highest common version. */
    if (args != NULL && args->host_abi_max > MUTANT_ABI_MAX) {
        args->driver_abi_min = MUTANT_ABI_MIN;
        args->driver_abi_max = MUTANT_ABI_MAX;
        return OY_E_INCOMPATIBLE;
    }
    return oy_negotiate(args, MUTANT_ABI_MIN, MUTANT_ABI_MAX, &mutant_driver);
#else
    return oy_negotiate(args, MUTANT_ABI_MIN, MUTANT_ABI_MAX, &mutant_driver);
#endif
}
#else
/* Defect: the entry has the wrong name. */
OY_EXPORT int32_t oy_driver_main(oy_entry_args *args);
OY_EXPORT int32_t oy_driver_main(oy_entry_args *args) {
    return oy_negotiate(args, MUTANT_ABI_MIN, MUTANT_ABI_MAX, &mutant_driver);
}
#endif
