#define _GNU_SOURCE
#include "CSystemShims.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <unistd.h>

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

uint16_t oy_shim_load_acquire_u16(const void *address) {
    return __atomic_load_n((const uint16_t *)address, __ATOMIC_ACQUIRE);
}

void oy_shim_store_release_u16(void *address, uint16_t value) {
    __atomic_store_n((uint16_t *)address, value, __ATOMIC_RELEASE);
}

void oy_shim_full_barrier(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int oy_shim_tap_open(const char *name) {
    struct ifreq request;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    memset(&request, 0, sizeof(request));
    request.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &request) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
