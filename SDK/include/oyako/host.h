/*
 * oyako/host.h — the host-services table.
 *
 * A driver reaches its environment ONLY through this table: memory, time,
 * timers, deferred work, locks, logging, bus access (config space, register
 * windows, port I/O), DMA, interrupts, and registration with the OS's I/O
 * subsystems (through host extensions such as "oyako.block/1"). It imports
 * nothing environment-specific from libc. That is what lets one binary run on
 * a bare OS and in the root partition unchanged.
 *
 * Lifetime: the table passed to oy_driver.init stays valid, unchanged, until
 * oy_driver.deinit returns. Handles returned by a service are owned by the
 * driver until it releases them with the matching service; the host tracks
 * every one and reports (then reclaims) whatever a detach leaves behind.
 *
 * Owners: services that create something take an `owner` device. Resources
 * created with a device as owner belong to that device instance and must be
 * released before detach returns. Pass NULL as owner only from init/deinit for
 * driver-wide resources, which must be released before deinit returns.
 *
 * Services validate their handles: a stale or foreign handle is refused with
 * OY_E_INVALID (or ignored, for void services) and reported, never trusted.
 */
#ifndef OYAKO_HOST_H
#define OYAKO_HOST_H

#include <oyako/types.h>
#include <oyako/errors.h>

OY_EXTERN_C_BEGIN

enum oy_log_level {
    OY_LOG_ERROR = 0,
    OY_LOG_WARNING = 1,
    OY_LOG_INFO = 2,
    OY_LOG_DEBUG = 3
};

enum oy_dma_direction {
    OY_DMA_TO_DEVICE = 1,   /* device reads the memory (e.g. a write request) */
    OY_DMA_FROM_DEVICE = 2, /* device writes the memory (e.g. a read request) */
    OY_DMA_BIDIRECTIONAL = 3
};

/* Description of a device the host offers to a driver's probe. */
typedef struct oy_device_info {
    uint32_t struct_size;
    uint16_t vendor_id;
    uint16_t device_id;
    uint32_t class_code;   /* PCI-style class << 16 | subclass << 8 | prog-if */
    uint8_t revision;
    uint8_t bar_count;     /* register windows and port ranges, see bar_kind */
    uint16_t irq_count;    /* MSI-style vectors the device can raise */
    uint8_t bar_kind[6];   /* OY_BAR_NONE / OY_BAR_MMIO / OY_BAR_PORT per index */
    uint16_t reserved;
    char location[32];     /* bus location, e.g. "00:02.0", NUL-terminated */
} oy_device_info;

enum oy_bar_kind { OY_BAR_NONE = 0, OY_BAR_MMIO = 1, OY_BAR_PORT = 2 };

OY_STATIC_ASSERT(sizeof(oy_device_info) == 56, "oy_device_info layout is ABI");
OY_STATIC_ASSERT(offsetof(oy_device_info, location) == 24, "oy_device_info layout is ABI");

/* Callbacks a driver hands to the host. `arg` is the driver's, passed back as is. */
typedef void (*oy_irq_fn)(void *arg);   /* [interrupt] */
typedef void (*oy_work_fn)(void *arg);  /* [passive] */
typedef void (*oy_timer_fn)(void *arg); /* [passive] */

typedef struct oy_host oy_host;

struct oy_host {
    uint32_t struct_size;
    uint32_t abi_version;   /* the version negotiated with this driver */
    const char *host_name;  /* e.g. "oyako-kernel"; static, for logs only */

    /* ---- extensions ------------------------------------------------------ */

    /* Look up a host extension by versioned ID ("oyako.block/1"). Returns a
     * pointer to a table that starts with uint32_t struct_size and lives as
     * long as this table, or NULL for an unknown ID. [any-thread] */
    const void *(*get_extension)(const oy_host *host, const char *id);

    /* ---- logging and time ------------------------------------------------ */

    /* Log one line. `device` may be NULL. `message` is copied before this
     * returns. [any-thread], also from [interrupt] and with the driver's own
     * locks held: it never calls back into this driver on this thread. The
     * host records the line and may show it on the console (a serial port,
     * perhaps driven by this very driver) later, from a thread of its own;
     * lines a console driver logs from inside its own `write` are recorded
     * but not written back to that console. It does not block on I/O.
     * A driver may log 100 lines in each 5 s: the host drops the rest, and
     * logs that it did, as Linux's printk_ratelimit (a line per round of a
     * polling loop would flood everything that reads the log). */
    void (*log)(const oy_host *host, oy_device *device, int32_t level, const char *message);

    /* Monotonic time in nanoseconds. [any-thread] */
    uint64_t (*monotonic_ns)(const oy_host *host);

    /* ---- memory ---------------------------------------------------------- */

    /* Allocate `size` bytes aligned to 16, zeroed. NULL when out of memory,
     * when size is 0 or when it is over 1 GiB. The memory is NOT reachable by
     * devices (see dma_alloc). A driver holds at most 1 GiB of mem_alloc
     * blocks, all its devices together, and in a driver host the whole
     * process holds at most 1 GiB of private memory: a leak ends in NULL
     * (and one warning in the OS's log), not in the OOM killer's choice of
     * victim.
     * [any-thread] */
    void *(*mem_alloc)(const oy_host *host, oy_device *owner, size_t size);

    /* Free memory from mem_alloc. NULL is ignored. [any-thread] */
    void (*mem_free)(const oy_host *host, void *ptr);

    /* ---- locks and events ------------------------------------------------ */

    /* A spin lock: may be taken in any context; hold it briefly and call no
     * blocking service while holding it. Not recursive. */
    int32_t (*lock_create)(const oy_host *host, oy_device *owner, oy_lock **out); /* [passive] */
    void (*lock_destroy)(oy_lock *lock);  /* [passive]; must not be held */
    void (*lock_acquire)(oy_lock *lock);  /* [any-thread] */
    void (*lock_release)(oy_lock *lock);  /* [any-thread] */

    /* An auto-reset event for waiting on the device in passive context. */
    int32_t (*event_create)(const oy_host *host, oy_device *owner, oy_event **out); /* [passive] */
    void (*event_destroy)(oy_event *event);   /* [passive] */
    void (*event_signal)(oy_event *event);    /* [any-thread] */
    /* Wait until signalled or `timeout_ns` passed: OY_OK or OY_E_TIMEOUT.
     * [passive] only: from [interrupt] it returns OY_E_WRONG_CONTEXT. */
    int32_t (*event_wait)(oy_event *event, uint64_t timeout_ns);

    /* ---- deferred work and timers ---------------------------------------- */

    /* A work item runs `fn(arg)` on a host worker thread [passive]. Create it
     * up front so queuing never allocates. */
    int32_t (*work_create)(const oy_host *host, oy_device *owner, oy_work_fn fn, void *arg, oy_work **out); /* [passive] */
    /* Queue the item; a no-op if it is already queued and not yet running.
     * An item never runs on two threads at once: queued while it runs, it
     * runs again once that run has returned (so a bottom half may queue
     * itself again to go on later). [any-thread] */
    void (*work_queue)(oy_work *work);
    /* Cancel if queued, wait for a running fn to return, then free. [passive],
     * never from the item's own fn. */
    void (*work_destroy)(oy_work *work);

    /* A one-shot timer calling `fn(arg)` [passive] after the armed delay. */
    int32_t (*timer_create)(const oy_host *host, oy_device *owner, oy_timer_fn fn, void *arg, oy_timer **out); /* [passive] */
    /* (Re-)arm to fire once after `delay_ns`. [any-thread] */
    void (*timer_arm)(oy_timer *timer, uint64_t delay_ns);
    /* Disarm; a callback already running completes. [any-thread] */
    void (*timer_cancel)(oy_timer *timer);
    /* Disarm, wait for a running callback, free. [passive], never from its fn. */
    void (*timer_destroy)(oy_timer *timer);

    /* ---- bus access -------------------------------------------------------- */

    /* Read/write `width` (1, 2 or 4) bytes of the device's config space at
     * `offset`. [passive] */
    int32_t (*config_read)(oy_device *device, uint32_t offset, uint32_t width, uint32_t *value);
    int32_t (*config_write)(oy_device *device, uint32_t offset, uint32_t width, uint32_t value);

    /* Map register window `bar` (an OY_BAR_MMIO index). `size` receives its
     * length in bytes. [passive] */
    int32_t (*regs_map)(oy_device *device, uint32_t bar, oy_regs **out, uint64_t *size);
    void (*regs_unmap)(oy_regs *regs); /* [passive] */
    /* Register access. Offsets must be naturally aligned and inside the
     * window. A read of a removed device or of a bad offset returns all ones,
     * like a master abort on real hardware.
     * Writes (here and port_out8) are posted, as on PCI: one may reach the
     * device after the call returns, but in order, and before any later
     * register or port read, config access, monotonic_ns or event_wait on
     * the same thread, and by the time the callback returns. To wait for the device
     * to react to a write, wait in one of those ways: a loop that calls none
     * of them may still hold the write back. Across threads the device sees
     * accesses in the order they were made: a write made before a lock
     * release (or any store another thread waits for) arrives before the
     * accesses of the thread that goes on after it. [any-thread] */
    uint32_t (*reg_read32)(oy_regs *regs, uint64_t offset);
    void (*reg_write32)(oy_regs *regs, uint64_t offset, uint32_t value);
    uint64_t (*reg_read64)(oy_regs *regs, uint64_t offset);
    void (*reg_write64)(oy_regs *regs, uint64_t offset, uint64_t value);

    /* Claim port range `bar` (an OY_BAR_PORT index); `count` receives its
     * length in ports. [passive] */
    int32_t (*ports_claim)(oy_device *device, uint32_t bar, oy_ports **out, uint32_t *count);
    void (*ports_release)(oy_ports *ports); /* [passive] */
    uint8_t (*port_in8)(oy_ports *ports, uint32_t port);              /* [any-thread] */
    void (*port_out8)(oy_ports *ports, uint32_t port, uint8_t value); /* [any-thread] */

    /* ---- DMA ---------------------------------------------------------------- */

    /* Allocate `size` bytes of zeroed, physically contiguous, page-aligned
     * memory that both the CPU (`*cpu`) and the device (`*device_addr`) can
     * reach. The device address is NOT the CPU pointer and, under a
     * hypervisor, not the machine address either. At most 64 MiB at once
     * (OY_E_INVALID past it). The buffers are the OS's own memory: one
     * device's buffers together may take at most half of it, and past that
     * dma_alloc answers OY_E_NOMEM (the OS logs it once). [passive] */
    int32_t (*dma_alloc)(oy_device *device, size_t size, oy_dma_buffer **out, void **cpu, oy_dma_addr *device_addr);
    void (*dma_free)(oy_dma_buffer *buffer); /* [passive] */

    /* Make `length` bytes at `cpu` (memory the host handed to the driver in a
     * request) reachable by the device for `direction`. The device sees one
     * contiguous range starting at `*device_addr`. Fails with OY_E_INVALID for
     * memory the host did not hand out. [any-thread] */
    int32_t (*dma_map)(oy_device *device, void *cpu, size_t length, uint32_t direction, oy_dma_map **out, oy_dma_addr *device_addr);
    void (*dma_unmap)(oy_dma_map *map); /* [any-thread] */

    /* ---- interrupts ---------------------------------------------------------- */

    /* Route vector `index` (< oy_device_info.irq_count) to `fn(arg)`, which
     * runs in [interrupt] context. The vector starts unmasked. [passive] */
    int32_t (*irq_hook)(oy_device *device, uint32_t index, oy_irq_fn fn, void *arg, oy_irq **out);
    /* Unhook; waits for a running handler to return. Until then the handle
     * stays valid for that handler (it may mask or unmask its own vector).
     * [passive] */
    void (*irq_unhook)(oy_irq *irq);
    /* While masked, a raised vector stays pending and is delivered on unmask.
     * [any-thread] */
    void (*irq_mask)(oy_irq *irq);
    void (*irq_unmask)(oy_irq *irq);
};

/* Sizes and offsets are ABI: appending fields changes the size assert only. */
OY_STATIC_ASSERT(offsetof(oy_host, get_extension) == 16, "oy_host layout is ABI");
OY_STATIC_ASSERT(offsetof(oy_host, mem_alloc) == 40, "oy_host layout is ABI");
OY_STATIC_ASSERT(offsetof(oy_host, config_read) == 176, "oy_host layout is ABI");
OY_STATIC_ASSERT(offsetof(oy_host, dma_alloc) == 272, "oy_host layout is ABI");
OY_STATIC_ASSERT(sizeof(oy_host) == 336, "oy_host v1 size");

OY_EXTERN_C_END

#endif /* OYAKO_HOST_H */
