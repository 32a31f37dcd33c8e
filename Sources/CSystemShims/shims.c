#define _GNU_SOURCE
#include "CSystemShims.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
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

/* Whether this thread lets SIGUSR2 in. Dispatch's worker threads start
 * with it blocked; a thread entering a driver callback opens it once, so
 * that a hang report (oy_shim_report_hangs) reaches every thread inside a
 * driver, whichever started it. */
static _Thread_local int hang_signal_open;

/* The threads inside a driver callback now, by kernel thread ID, with
 * when each entered its outermost callback: the ones a hang report signals
 * (and no other thread, which might be in a system call that a signal
 * would end with EINTR). A slot's tid is 0 when free and -1 while a thread
 * fills it in; a thread takes one as it enters its outermost callback and
 * frees it as it leaves. A thread that finds every slot taken is not
 * reported. */
#define CALLBACK_THREAD_SLOTS 512
static struct {
    pid_t tid;
    uint64_t since;
} callback_threads[CALLBACK_THREAD_SLOTS];
static _Thread_local int callback_slot = -1;
/* This thread's kernel ID, asked once (a system call per callback otherwise). */
static _Thread_local pid_t callback_tid;

static uint64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void enter_callbacks(void) {
    int i;
    for (i = 0; i < CALLBACK_THREAD_SLOTS; i++) {
        pid_t expected = 0;
        if (__atomic_compare_exchange_n(&callback_threads[i].tid, &expected, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            callback_threads[i].since = monotonic_ns();
            if (callback_tid == 0) callback_tid = (pid_t)syscall(SYS_gettid);
            __atomic_store_n(&callback_threads[i].tid, callback_tid, __ATOMIC_RELEASE);
            callback_slot = i;
            return;
        }
    }
}

void oy_shim_set_context(int32_t context, const char *callback) {
    current_context = context;
    current_callback = callback;
    if (callback != NULL && !hang_signal_open) {
        sigset_t usr2;
        sigemptyset(&usr2);
        sigaddset(&usr2, SIGUSR2);
        (void)pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
        hang_signal_open = 1;
    }
    if (callback != NULL && callback_slot < 0) {
        enter_callbacks();
    } else if (callback == NULL && callback_slot >= 0) {
        __atomic_store_n(&callback_threads[callback_slot].tid, 0, __ATOMIC_RELEASE);
        callback_slot = -1;
    }
}

int oy_shim_threads_in_callbacks(int32_t *tids, int max, uint64_t min_age_ns) {
    uint64_t now = monotonic_ns();
    int i, count = 0;
    for (i = 0; i < CALLBACK_THREAD_SLOTS && count < max; i++) {
        pid_t tid = __atomic_load_n(&callback_threads[i].tid, __ATOMIC_ACQUIRE);
        if (tid > 0 && now - callback_threads[i].since >= min_age_ns) tids[count++] = (int32_t)tid;
    }
    return count;
}

int32_t oy_shim_context(void) { return current_context; }

const char *oy_shim_context_callback(void) { return current_callback; }

static _Thread_local void *current_owner;

void oy_shim_set_context_owner(void *owner) { current_owner = owner; }

void *oy_shim_context_owner(void) { return current_owner; }

static _Thread_local void *current_batching_line;

void oy_shim_set_batching_line(void *line) { current_batching_line = line; }

void *oy_shim_batching_line(void) { return current_batching_line; }

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

/* Closes `fd` after a failed call and returns -1, errno still the call's. */
static int close_failing(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int oy_shim_tap_open(const char *name) {
    struct ifreq request;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    memset(&request, 0, sizeof(request));
    request.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &request) < 0) {
        return close_failing(fd);
    }
    return fd;
}

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>

ssize_t oy_shim_recv_fds(int socket, void *buffer, size_t length, int *fds, int max_fds, int *fd_count, int *truncated) {
    char control[CMSG_SPACE(sizeof(int) * 32)];
    struct iovec iov = {buffer, length};
    struct msghdr msg;
    struct cmsghdr *c;
    ssize_t n;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    *fd_count = 0;
    *truncated = 0;
    do {
        n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        int i, count;
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd_count < max_fds) {
                fds[(*fd_count)++] = fd;
            } else {
                close(fd);
                *truncated = 1;
            }
        }
    }
    return n;
}

ssize_t oy_shim_send_fds(int socket, const void *buffer, size_t length, const int *fds, int fd_count) {
    char control[CMSG_SPACE(sizeof(int) * 32)];
    struct iovec iov = {(void *)buffer, length};
    struct msghdr msg;
    ssize_t n;
    if (fd_count < 0 || fd_count > 32) {
        errno = EINVAL;
        return -1;
    }
    memset(&msg, 0, sizeof(msg));
    memset(control, 0, sizeof(control));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd_count > 0) {
        struct cmsghdr *c;
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)fd_count);
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)fd_count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)fd_count);
    }
    do {
        n = sendmsg(socket, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
}

/* A close-on-exec Unix stream socket and `path` as its address; -1 with
 * errno for a path too long. */
static int unix_socket(const char *path, struct sockaddr_un *address) {
    if (strlen(path) >= sizeof(address->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    strcpy(address->sun_path, path);
    return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

int oy_shim_unix_listen(const char *path, unsigned mode, int group) {
    struct sockaddr_un address;
    int fd = unix_socket(path, &address);
    if (fd < 0) return -1;
    struct stat st;
    if (lstat(path, &st) == 0) {
        // Only a stale socket is replaced: a file that is no socket stays
        // (EEXIST), and so does a socket someone still listens on (EADDRINUSE).
        int busy = S_ISSOCK(st.st_mode) && connect(fd, (struct sockaddr *)&address, sizeof(address)) == 0;
        if (!S_ISSOCK(st.st_mode) || busy) {
            close(fd);
            errno = busy ? EADDRINUSE : EEXIST;
            return -1;
        }
        close(fd);
        unlink(path);
        fd = unix_socket(path, &address);
        if (fd < 0) return -1;
    }
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        return close_failing(fd);
    }
    // The group and mode are set between bind and listen: no one can
    // connect before they hold. A socket that cannot get them goes.
    if ((group != -1 && chown(path, (uid_t)-1, (gid_t)group) != 0) || chmod(path, mode) != 0 || listen(fd, 8) != 0) {
        int saved = errno;
        unlink(path);
        errno = saved;
        return close_failing(fd);
    }
    return fd;
}

#include <sys/prctl.h>

void oy_shim_name_thread(const char *name) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

int oy_shim_seqpacket_pair(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds);
}

int oy_shim_unix_connect(const char *path) {
    struct sockaddr_un address;
    int fd = unix_socket(path, &address);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        return close_failing(fd);
    }
    return fd;
}

#include <sys/eventfd.h>

int oy_shim_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC);
}

#include <signal.h>
#include <sys/prctl.h>

/* In a forked child: inherit no descriptor above 2, unblock every signal,
 * and exec `path` (or end with 127). Async-signal-safe. */
static void exec_clean(const char *path, char *const argv[]) {
    close_range(3, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(path, argv);
    _exit(127);
}

int oy_shim_spawn_tethered(const char *path, char *const argv[], int output_fd) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;  /* the parent, or -1 with errno */
    /* The child: only async-signal-safe calls until exec. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    setpgid(0, 0);
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(output_fd, 1) < 0 || dup2(output_fd, 2) < 0) _exit(127);
    /* Nothing else of the supervisor's leaks in (sockets, pipes, memfds). */
    exec_clean(path, argv);
    return -1;
}

int oy_shim_spawn_driver_host(const char *path, char *const argv[], int socket_fd) {
    pid_t pid = fork();
    if (pid != 0) return pid;  /* the parent, or -1 with errno */
    /* The child: only async-signal-safe calls until exec. Its line to the
     * Kernel becomes its standard input; standard output and error stay
     * the Kernel's; nothing else is inherited. */
    setpgid(0, 0);
    if (dup2(socket_fd, 0) < 0) _exit(127);
    exec_clean(path, argv);
    return -1;
}

static _Thread_local uint64_t os_time_ns;

void oy_shim_os_time_add(uint64_t ns) { os_time_ns += ns; }

uint64_t oy_shim_os_time_take(void) {
    uint64_t spent = os_time_ns;
    os_time_ns = 0;
    return spent;
}

/* Reads through the kernel (process_vm_readv on this process), so that an
 * address that is not mapped answers EFAULT instead of SIGSEGV. Where that
 * call is refused (a seccomp filter), a pipe does the same: write(2) from
 * the address fails with EFAULT too. */
static int copy_in_once(void *destination, const void *source, size_t length) {
    struct iovec local = {destination, length}, remote = {(void *)source, length};
    ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    if (n == (ssize_t)length) return 0;
    if (n >= 0 || errno == EFAULT) return -1;
    {
        int fds[2], ok;
        if (pipe2(fds, O_CLOEXEC) != 0) return -1;
        ok = write(fds[1], source, length) == (ssize_t)length && read(fds[0], destination, length) == (ssize_t)length;
        close(fds[0]);
        close(fds[1]);
        return ok ? 0 : -1;
    }
}

int oy_shim_copy_in(void *destination, const void *source, size_t length) {
    size_t done = 0;
    if (length == 0) return 0;
    if (source == NULL) return -1;
    /* In pieces of at most a page: a pipe holds that much at once. */
    while (done < length) {
        size_t piece = length - done < 4096 ? length - done : 4096;
        if (copy_in_once((char *)destination + done, (const char *)source + done, piece) != 0) return -1;
        done += piece;
    }
    return 0;
}

long oy_shim_copy_in_string(char *buffer, size_t capacity, const char *source) {
    size_t done = 0;
    if (source == NULL || capacity == 0) return -1;
    while (done < capacity - 1) {
        /* Up to the end of the page the next byte is on: a string that ends
         * before an unmapped page is still read. */
        uintptr_t at = (uintptr_t)source + done;
        size_t piece = 4096 - (at & 4095u), i;
        if (piece > capacity - 1 - done) piece = capacity - 1 - done;
        if (copy_in_once(buffer + done, source + done, piece) != 0) return -1;
        for (i = 0; i < piece; i++) {
            if (buffer[done + i] == '\0') return (long)(done + i);
        }
        done += piece;
    }
    buffer[capacity - 1] = '\0';
    return -2;
}
