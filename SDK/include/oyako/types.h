/*
 * oyako/types.h — base types, version numbers and conventions of the Oyako
 * driver ABI. Every other SDK header includes this one.
 *
 * Conventions used throughout the SDK
 * -----------------------------------
 * Calling contexts (each callback and service names one):
 *   [passive]     a normal thread that may block: the host's driver threads,
 *                 work items and timer callbacks. Everything is allowed.
 *   [interrupt]   an interrupt handler. Must not block: no event_wait, no
 *                 dma_alloc/dma_free, no hook/unhook, no register_disk. May
 *                 take locks (they are spin locks), read/write registers,
 *                 queue work, arm timers and complete requests.
 *   [any-thread]  may be called from any context, including [interrupt].
 *
 * Tables: every struct that crosses the boundary starts with
 * `uint32_t struct_size`. Fields are only ever appended. A receiver must check
 * `struct_size` before reading a field (use OY_HAS_FIELD).
 *
 * Ownership: unless a comment says otherwise, a pointer passed into a call
 * is borrowed for the duration of that call only.
 */
#ifndef OYAKO_TYPES_H
#define OYAKO_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define OY_EXTERN_C_BEGIN extern "C" {
#define OY_EXTERN_C_END }
#define OY_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define OY_EXTERN_C_BEGIN
#define OY_EXTERN_C_END
#define OY_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* The one macro that exports a symbol from a driver. Only oy_driver_entry uses it. */
#if defined(__GNUC__) || defined(__clang__)
#define OY_EXPORT __attribute__((visibility("default")))
#else
#define OY_EXPORT
#endif

/* ABI versions are plain integers. A host and a driver each speak a range
 * [min, max]; the entry picks the highest version both speak. */
#define OY_ABI_VERSION_1 1u
#define OY_ABI_VERSION_CURRENT OY_ABI_VERSION_1

/* True when a struct of the given (received) size contains `field` entirely. */
#define OY_HAS_FIELD(ptr, type, field) \
    ((ptr) != NULL && (size_t)(ptr)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* Opaque handles. Drivers never look inside them; they are only valid while
 * the object exists and only in the process that handed them out. */
typedef struct oy_device oy_device;         /* one device instance bound to a driver */
typedef struct oy_regs oy_regs;             /* a mapped register window (MMIO BAR) */
typedef struct oy_ports oy_ports;           /* a claimed port I/O range */
typedef struct oy_dma_buffer oy_dma_buffer; /* coherent DMA memory from dma_alloc */
typedef struct oy_dma_map oy_dma_map;       /* a streaming mapping from dma_map */
typedef struct oy_irq oy_irq;               /* a hooked interrupt vector */
typedef struct oy_timer oy_timer;
typedef struct oy_work oy_work;
typedef struct oy_lock oy_lock;
typedef struct oy_event oy_event;
typedef struct oy_disk oy_disk;             /* a block device registered with the OS */
typedef struct oy_netdev oy_netdev;         /* a network interface registered with the OS */
typedef struct oy_serial oy_serial;         /* a serial port registered with the OS */
typedef struct oy_rng oy_rng;               /* an entropy source registered with the OS */

/* An address as the device sees it (after the IOMMU), never a CPU pointer. */
typedef uint64_t oy_dma_addr;

#endif /* OYAKO_TYPES_H */
