#define _GNU_SOURCE
#include "CSystemShims.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

int oy_shim_memfd_create(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int oy_shim_dladdr_path(const void *address, char *buf, size_t length) {
    Dl_info info;
    size_t n;
    if (dladdr(address, &info) == 0 || info.dli_fname == NULL) return -1;
    n = strlen(info.dli_fname);
    if (n + 1 > length) return -1;
    memcpy(buf, info.dli_fname, n + 1);
    return 0;
}

static _Thread_local int32_t current_context;
static _Thread_local const char *current_callback;

void oy_shim_set_context(int32_t context, const char *callback) {
    current_context = context;
    current_callback = callback;
}

int32_t oy_shim_context(void) { return current_context; }

const char *oy_shim_context_callback(void) { return current_callback; }

int oy_shim_errno(void) { return errno; }

void *oy_shim_exchange_pointer(void **slot, void *value) {
    return __atomic_exchange_n(slot, value, __ATOMIC_ACQ_REL);
}

uint32_t oy_shim_load_acquire_u32(const void *address) {
    return __atomic_load_n((const uint32_t *)address, __ATOMIC_ACQUIRE);
}

void oy_shim_store_release_u32(void *address, uint32_t value) {
    __atomic_store_n((uint32_t *)address, value, __ATOMIC_RELEASE);
}

void oy_shim_full_barrier(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
