/* Tight loops written in C, so that a benchmark measures the call it is
 * about, not Swift's loop overhead. Each returns elapsed nanoseconds. */
#ifndef CBENCHSHIMS_H
#define CBENCHSHIMS_H

#include <stdint.h>
#include <oyako/oyako.h>

/* Calls a plain C function that does nothing, n times (the baseline). */
uint64_t oy_bench_direct_calls(uint64_t n);

/* Calls fn(arg) through a function pointer, n times: with a Swift
 * @convention(c) no-op this is the cost of crossing from C into Swift
 * alone, the floor under every host service (not a host-table entry). */
uint64_t oy_bench_pointer_calls(void (*fn)(void *), void *arg, uint64_t n);

/* host->monotonic_ns through the real host table, n times. */
uint64_t oy_bench_host_time_calls(const oy_host *host, uint64_t n);

/* clock_gettime(CLOCK_MONOTONIC) called directly, n times: the baseline
 * for host->monotonic_ns, which does the same behind the host table. */
uint64_t oy_bench_clock_calls(uint64_t n);

/* host->lock_acquire then host->lock_release on a lock made with
 * host->lock_create for `device`, n pairs; 0 if the lock cannot be made. */
uint64_t oy_bench_host_lock_pairs(const oy_host *host, oy_device *device, uint64_t n);

/* pthread_mutex_lock then pthread_mutex_unlock called directly, n pairs:
 * the baseline for the host table's lock pair (a mutex behind a handle). */
uint64_t oy_bench_mutex_pairs(uint64_t n);

/* host->reg_read32 on a mapped window, n times. */
uint64_t oy_bench_register_reads(const oy_host *host, oy_regs *regs, uint64_t offset, uint64_t n);

/* n memcpy calls of `length` bytes walking through `region` bytes of
 * source and destination (the ring's copy baseline, same footprint). */
uint64_t oy_bench_memcpy(void *destination, const void *source, uint64_t region, uint64_t length, uint64_t n);

#endif
