/* The conformance worker's crash reporter: on a fatal signal, write the
 * faulting thread's frames to a descriptor, then die of the same signal (so
 * the parent sees it, and a core is written where the system allows). Only
 * async-signal-tolerant work happens here: backtrace(3) (preloaded at
 * install), dladdr(3) and write(2); symbolization happens in the parent. */
#define _GNU_SOURCE
#include "CSystemShims.h"

#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <errno.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <limits.h>
#include <ucontext.h>
#include <unistd.h>

static int crash_fd = -1;
/* Where this thread's handler writes: the crash reporter's descriptor, or
 * a hang collection's (oy_shim_collect_hangs). Set by each handler first. */
static _Thread_local int put_fd = -1;

/* The line being written: a report line leaves in one write(), so that
 * what other threads write to the same descriptor meanwhile (a driver's
 * log line) cannot land inside it. Up to PIPE_BUF, a pipe keeps it whole. */
static _Thread_local char put_line[PIPE_BUF];
static _Thread_local size_t put_length;

static void put_flush(void) {
    const char *s = put_line;
    size_t n = put_length;
    put_length = 0;
    while (n > 0) {
        ssize_t w = write(put_fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void put(const char *s) {
    for (; *s != '\0'; s++) {
        if (put_length == sizeof(put_line)) put_flush();
        put_line[put_length++] = *s;
        if (*s == '\n') put_flush();
    }
}

static void put_hex(uint64_t v) {
    char buf[19];
    int i = 18;
    buf[i] = '\0';
    do {
        buf[--i] = "0123456789abcdef"[v & 0xF];
        v >>= 4;
    } while (v != 0 && i > 2);
    buf[--i] = 'x';
    buf[--i] = '0';
    put(buf + i);
}

static void put_dec(uint64_t v) {
    char buf[21];
    int i = 20;
    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && i > 0);
    put(buf + i);
}

/* One line per frame: "\1oyframe PC BASE PATH". */
static void put_frame(void *pc) {
    Dl_info info;
    put("\001oyframe ");
    put_hex((uint64_t)(uintptr_t)pc);
    if (dladdr(pc, &info) != 0 && info.dli_fname != NULL) {
        put(" ");
        put_hex((uint64_t)(uintptr_t)info.dli_fbase);
        put(" ");
        put(info.dli_fname);
    } else {
        put(" 0x0 ?");
    }
    put("\n");
}

/* The byte a completed request or frame is filled with (LentRequest.poison). */
#define OY_POISON_WORD 0xA5A5A5A5A5A5A5A5ull

static int holds_poison(const ucontext_t *uc) {
#if defined(__x86_64__)
    int i;
    for (i = 0; i < NGREG; i++) {
        if ((uint64_t)uc->uc_mcontext.gregs[i] == OY_POISON_WORD) return 1;
    }
#elif defined(__aarch64__)
    int i;
    for (i = 0; i < 31; i++) {
        if ((uint64_t)uc->uc_mcontext.regs[i] == OY_POISON_WORD) return 1;
    }
#else
    (void)uc;
#endif
    return 0;
}

/* Quarantined ranges: `end` 0 is a free slot, 1 one being filled. */
#define OY_QUARANTINE_SLOTS 256
static struct {
    uintptr_t start;
    uintptr_t end;
} quarantine[OY_QUARANTINE_SLOTS];

int oy_shim_quarantine_add(const void *start, size_t length) {
    int i;
    for (i = 0; i < OY_QUARANTINE_SLOTS; i++) {
        uintptr_t empty = 0;
        if (__atomic_compare_exchange_n(&quarantine[i].end, &empty, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            __atomic_store_n(&quarantine[i].start, (uintptr_t)start, __ATOMIC_RELAXED);
            __atomic_store_n(&quarantine[i].end, (uintptr_t)start + length, __ATOMIC_RELEASE);
            return 0;
        }
    }
    return -1;
}

void oy_shim_quarantine_remove(const void *start) {
    int i;
    for (i = 0; i < OY_QUARANTINE_SLOTS; i++) {
        if (__atomic_load_n(&quarantine[i].end, __ATOMIC_ACQUIRE) > 1 && __atomic_load_n(&quarantine[i].start, __ATOMIC_RELAXED) == (uintptr_t)start) {
            __atomic_store_n(&quarantine[i].end, 0, __ATOMIC_RELEASE);
            return;
        }
    }
}

static int in_quarantine(uintptr_t address) {
    int i;
    for (i = 0; i < OY_QUARANTINE_SLOTS; i++) {
        uintptr_t end = __atomic_load_n(&quarantine[i].end, __ATOMIC_ACQUIRE);
        if (end > 1 && address >= __atomic_load_n(&quarantine[i].start, __ATOMIC_RELAXED) && address < end) return 1;
    }
    return 0;
}

static void on_fatal(int signal, siginfo_t *info, void *context) {
    void *frames[64];
    int count, i, start;
    ucontext_t *uc = (ucontext_t *)context;
    void *pc = NULL;
    put_fd = crash_fd;
#if defined(__x86_64__)
    pc = (void *)(uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    pc = (void *)(uintptr_t)uc->uc_mcontext.pc;
#else
    (void)uc;
#endif
    put("\001oycrash ");
    put_dec((uint64_t)signal);
    put(" ");
    put_hex((uint64_t)(uintptr_t)info->si_addr);
    /* A non-canonical address faults as a general protection fault, which
     * the kernel reports with si_code SI_KERNEL and si_addr 0. Whether a
     * register held the host's poison word (what a completed request or
     * frame is filled with) tells a pointer read after completion. */
    put(" ");
    put_dec((uint64_t)(uint32_t)info->si_code);
    put(" ");
    put_dec((uint64_t)holds_poison(uc));
    /* Whether the address is memory the driver freed (dma_free'd pages). */
    put(" ");
    put_dec((uint64_t)in_quarantine((uintptr_t)info->si_addr));
    put("\n");
    if (pc != NULL) put_frame(pc);
    count = backtrace(frames, 64);
    /* frames[] begins inside this handler and the kernel's signal
     * trampoline: start after the faulting frame, or after those two. */
    start = 2;
    for (i = 0; i < count; i++) {
        if (frames[i] == pc) {
            start = i + 1;
            break;
        }
    }
    for (i = start; i < count; i++) put_frame(frames[i]);
    put("\001oycrash-end\n");
    /* SA_RESETHAND restored the default action: die of the same signal. */
    raise(signal);
}

/* One thread's hang report at a time: several threads in callbacks may
 * write at once. A spin lock (the handler never re-enters on one thread:
 * SIGUSR2 is blocked while it runs). */
static volatile int hang_writer;
/* Said after the callback's name when not empty (a driver host's reports). */
static const char *hang_origin = "";
/* While a collection runs (oy_shim_collect_hangs): where reports go, and
 * how many signalled threads have finished their handler. */
static volatile int collect_fd = -1;
static volatile int hang_answers;

static void on_hang_report(int signal, siginfo_t *info, void *context) {
    void *frames[64];
    int count, i, saved = errno, collecting = collect_fd >= 0, fd = collecting ? collect_fd : crash_fd;
    const char *callback = oy_shim_context_callback();
    (void)signal;
    (void)info;
    (void)context;
    if (callback == NULL || fd < 0) {
        __atomic_add_fetch(&hang_answers, 1, __ATOMIC_RELEASE);
        return;
    }
    put_fd = fd;
    while (__atomic_exchange_n(&hang_writer, 1, __ATOMIC_ACQUIRE)) {}
    put("\001oyhang ");
    put(callback);
    /* The origin is for a reader of many processes' reports; a collector
     * asked one process. */
    if (hang_origin[0] != '\0' && !collecting) {
        put(" (");
        put(hang_origin);
        put(")");
    }
    put("\n");
    count = backtrace(frames, 64);
    /* frames[0] is this handler, frames[1] the kernel's signal trampoline. */
    for (i = 2; i < count; i++) put_frame(frames[i]);
    put("\001oyhang-end\n");
    __atomic_store_n(&hang_writer, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&hang_answers, 1, __ATOMIC_RELEASE);
    errno = saved;
}

void oy_shim_set_hang_reports(int fd, const char *origin) {
    if (crash_fd < 0) crash_fd = fd;
    hang_origin = origin != NULL ? strdup(origin) : "";
}

int oy_shim_report_hangs(void) { return oy_shim_report_hangs_older(0); }

int oy_shim_report_hangs_older(uint64_t min_age_ns) {
    struct sigaction action;
    int32_t tids[512];
    void *warm[2];
    pid_t self = (pid_t)syscall(SYS_gettid), process = getpid();
    int signalled = 0, count, i;
    /* The first backtrace() loads the unwinder, which may allocate: not in
     * the handlers (a process without the crash reporter has not done it). */
    (void)backtrace(warm, 2);
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_hang_report;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGUSR2, &action, NULL) != 0) return -1;
    /* Only the threads inside driver callbacks: the others would not
     * answer, and a signal could end a system call of theirs early. */
    count = oy_shim_threads_in_callbacks(tids, 512, min_age_ns);
    for (i = 0; i < count; i++) {
        if ((pid_t)tids[i] == self) continue;
        if (syscall(SYS_tgkill, process, (pid_t)tids[i], SIGUSR2) == 0) signalled++;
    }
    return signalled;
}

int oy_shim_collect_hangs(int fd, int timeout_ms, uint64_t min_age_ns) {
    static pthread_mutex_t collecting = PTHREAD_MUTEX_INITIALIZER;
    int signalled, waited = 0;
    pthread_mutex_lock(&collecting);
    __atomic_store_n(&hang_answers, 0, __ATOMIC_RELEASE);
    collect_fd = fd;
    signalled = oy_shim_report_hangs_older(min_age_ns);
    while (signalled > 0 && __atomic_load_n(&hang_answers, __ATOMIC_ACQUIRE) < signalled && waited < timeout_ms) {
        usleep(1000);
        waited++;
    }
    /* A handler still writing keeps its own copy of the descriptor's number;
     * the caller reads what is complete ("\1oyhang-end"). */
    collect_fd = -1;
    pthread_mutex_unlock(&collecting);
    return signalled;
}

int oy_shim_install_crash_reporter(int fd) {
    static char stack[64 * 1024];
    stack_t alt;
    struct sigaction action;
    void *warm[2];
    const int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP};
    size_t i;
    sigset_t wanted;
    crash_fd = fd;
    /* A signal mask is inherited through fork and exec, and the process
     * that started this one (a test runner, a supervisor) may block these:
     * unblock them here, before the threads that inherit this mask start. */
    sigemptyset(&wanted);
    for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) sigaddset(&wanted, signals[i]);
    sigaddset(&wanted, SIGUSR2);
    (void)pthread_sigmask(SIG_UNBLOCK, &wanted, NULL);
    /* The first backtrace() loads the unwinder (it may allocate): do it now. */
    (void)backtrace(warm, 2);
    alt.ss_sp = stack;
    alt.ss_size = sizeof(stack);
    alt.ss_flags = 0;
    if (sigaltstack(&alt, NULL) != 0) return -1;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_fatal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        if (sigaction(signals[i], &action, NULL) != 0) return -1;
    }
    return 0;
}
