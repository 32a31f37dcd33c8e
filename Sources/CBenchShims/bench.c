#include "CBenchShims.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) void oy_bench_nop(void *arg) {
    __asm__ volatile("" : : "r"(arg) : "memory");
}

uint64_t oy_bench_direct_calls(uint64_t n) {
    uint64_t i, start = now_ns();
    for (i = 0; i < n; i++) oy_bench_nop((void *)(uintptr_t)i);
    return now_ns() - start;
}

uint64_t oy_bench_pointer_calls(void (*fn)(void *), void *arg, uint64_t n) {
    void (*volatile target)(void *) = fn;
    uint64_t i, start = now_ns();
    for (i = 0; i < n; i++) target(arg);
    return now_ns() - start;
}

uint64_t oy_bench_host_time_calls(const oy_host *host, uint64_t n) {
    uint64_t i, sink = 0, start = now_ns();
    for (i = 0; i < n; i++) sink += host->monotonic_ns(host);
    __asm__ volatile("" : : "r"(sink));
    return now_ns() - start;
}

uint64_t oy_bench_clock_calls(uint64_t n) {
    uint64_t i, sink = 0, start = now_ns();
    for (i = 0; i < n; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sink += (uint64_t)ts.tv_nsec;
    }
    __asm__ volatile("" : : "r"(sink));
    return now_ns() - start;
}

uint64_t oy_bench_host_lock_pairs(const oy_host *host, oy_device *device, uint64_t n) {
    oy_lock *lock = NULL;
    uint64_t i, start;
    if (host->lock_create(host, device, &lock) != OY_OK) return 0;
    start = now_ns();
    for (i = 0; i < n; i++) {
        host->lock_acquire(lock);
        host->lock_release(lock);
    }
    start = now_ns() - start;
    host->lock_destroy(lock);
    return start;
}

uint64_t oy_bench_mutex_pairs(uint64_t n) {
    pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_t *volatile target = &mutex;
    uint64_t i, start = now_ns();
    for (i = 0; i < n; i++) {
        pthread_mutex_lock(target);
        pthread_mutex_unlock(target);
    }
    return now_ns() - start;
}

uint64_t oy_bench_register_reads(const oy_host *host, oy_regs *regs, uint64_t offset, uint64_t n) {
    uint64_t i, sink = 0, start = now_ns();
    for (i = 0; i < n; i++) sink += host->reg_read32(regs, offset);
    __asm__ volatile("" : : "r"(sink));
    return now_ns() - start;
}

uint64_t oy_bench_memcpy(void *destination, const void *source, uint64_t region, uint64_t length, uint64_t n) {
    uint64_t i, offset = 0, start = now_ns();
    for (i = 0; i < n; i++) {
        memcpy((char *)destination + offset, (const char *)source + offset, length);
        __asm__ volatile("" : : "r"(destination) : "memory");
        offset += length;
        if (offset + length > region) offset = 0;
    }
    return now_ns() - start;
}
