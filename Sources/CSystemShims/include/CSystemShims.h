/* Tiny C shims for what Swift cannot reach directly or safely: GNU-only libc
 * calls and a thread-local execution-context marker. */
#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


/* memfd_create(2) with MFD_CLOEXEC; returns -1 with errno set. */
int oy_shim_memfd_create(const char *name);

/* dladdr(3): copy the path of the object containing `address` into buf.
 * Returns 0 on success, -1 when no object contains it or buf is too small. */
int oy_shim_dladdr_path(const void *address, char *buf, size_t length);

/* The calling thread's execution context (0 passive, 1 interrupt), and the
 * name of the driver callback it is running, for violation reports. */
void oy_shim_set_context(int32_t context, const char *callback);
int32_t oy_shim_context(void);
const char *oy_shim_context_callback(void);
/* The driver whose callback the thread is running (an unretained reference
 * the host sets around the call), so that a violation with a handle the host
 * cannot trace is still attributed. NULL outside driver callbacks. */
void oy_shim_set_context_owner(void *owner);
void *oy_shim_context_owner(void);
/* The driver-host line this thread is in a batching run of (HostLine.batching), or NULL. */
void oy_shim_set_batching_line(void *line);
void *oy_shim_batching_line(void);

/* Atomically swap *slot with value; returns the previous value. Used where
 * a driver may race with itself (completing one request twice). */
void *oy_shim_exchange_pointer(void **slot, void *value);

/* Atomic access to 32-bit words in memory shared with another partition
 * (ring-buffer indices), and a full barrier between publishing data and
 * publishing the index that makes it visible. */
uint32_t oy_shim_load_acquire_u32(const void *address);
void oy_shim_store_release_u32(void *address, uint32_t value);
void oy_shim_full_barrier(void);
/* The same for 16-bit words (virtqueue ring indices). */
uint16_t oy_shim_load_acquire_u16(const void *address);
void oy_shim_store_release_u16(void *address, uint16_t value);

/* Opens /dev/net/tun and attaches a TAP interface called `name` (no packet
 * information header). Returns the descriptor, or -1 with errno set. */
int oy_shim_tap_open(const char *name);

/* On SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT or SIGTRAP, write the faulting
 * thread's frames to `fd` ("\1oycrash SIGNAL ADDR", then one "\1oyframe PC
 * BASE PATH" line per frame, then "\1oycrash-end") and die of the same
 * signal. sigaltstack covers stack overflows. Note: sigaltstack is per
 * thread; other threads' overflows end without frames. Returns 0 or -1. */
int oy_shim_install_crash_reporter(int fd);

/* Ranges of memory a driver freed and the host holds back inaccessible
 * (dma_free'd pages in quarantine): a crash whose address lies in one says
 * so in the crash reporter's header line. At most 256 at once; add returns
 * -1 when full (the range is then not named, only still inaccessible). */
int oy_shim_quarantine_add(const void *start, size_t length);
void oy_shim_quarantine_remove(const void *start);

/* A hang report, for a worker about to be killed for a check that does not
 * end: `oy_shim_report_hangs` sends SIGUSR2 to every thread of the process
 * inside a driver callback (see oy_shim_set_context; each but the caller),
 * and no other; each writes "\1oyhang CALLBACK", its frames as "\1oyframe"
 * lines, then "\1oyhang-end" to the crash reporter's `fd`, and goes on.
 * Returns how many threads were signalled. Needs
 * oy_shim_install_crash_reporter first, or oy_shim_collect_hangs. */
int oy_shim_report_hangs(void);
/* The same, for the threads that entered their callback at least
 * `min_age_ns` ago only (one stuck, not one passing through). */
int oy_shim_report_hangs_older(uint64_t min_age_ns);

/* The kernel thread IDs of the threads inside a driver callback since at
 * least `min_age_ns` (at most `max`); returns how many were stored. */
int oy_shim_threads_in_callbacks(int32_t *tids, int max, uint64_t min_age_ns);

/* For a process without the crash reporter (a driver host): hang reports
 * go to `fd`, and each names `origin` after its callback ("rng read (in its
 * driver host)"). */
void oy_shim_set_hang_reports(int fd, const char *origin);

/* Where this process's threads inside driver callbacks (for at least
 * `min_age_ns`) are now, for a supervisor asking about a driver that
 * stopped answering: the same reports as oy_shim_report_hangs, written to
 * `fd` (a memfd: the writes must not block), without the crash reporter.
 * Waits until every signalled thread has answered or `timeout_ms` passed.
 * One collection at a time. Returns how many threads were signalled, or -1. */
int oy_shim_collect_hangs(int fd, int timeout_ms, uint64_t min_age_ns);

/* recvmsg(2) with SCM_RIGHTS: up to `length` bytes and up to `max_fds`
 * descriptors (close-on-exec). Returns the bytes read (0 at end of file) or
 * -1 with errno; `*fd_count` descriptors are stored in `fds`. Descriptors
 * beyond `max_fds`, or a truncated control message, set `*truncated` (the
 * extra descriptors are closed). */
ssize_t oy_shim_recv_fds(int socket, void *buffer, size_t length, int *fds, int max_fds, int *fd_count, int *truncated);

/* sendmsg(2) of `length` bytes with `fd_count` descriptors (at most 32);
 * never raises SIGPIPE. Returns the bytes sent or -1 with errno. */
ssize_t oy_shim_send_fds(int socket, const void *buffer, size_t length, const int *fds, int fd_count);

/* A listening Unix stream socket at `path` with file mode `mode` and, when
 * `group` is not -1, that group (set with the mode, between bind and listen,
 * so no one connects before both hold). A stale
 * socket file there (no one listening) is replaced; a live one is left and
 * fails with EADDRINUSE, any other file with EEXIST. Returns the descriptor
 * or -1 with errno. */
int oy_shim_unix_listen(const char *path, unsigned mode, int group);

/* Names the calling thread for the OS (ps, perf, /proc): its first 15
 * bytes. Foundation's Thread.name does not reach the OS on Linux. */
void oy_shim_name_thread(const char *name);

/* A connected pair of close-on-exec Unix SOCK_SEQPACKET sockets (message
 * boundaries kept): a driver host's line to the Kernel. 0 or -1 with errno. */
int oy_shim_seqpacket_pair(int fds[2]);

/* A Unix stream socket connected to `path`. Returns the descriptor or -1
 * with errno. */
int oy_shim_unix_connect(const char *path);

/* A close-on-exec eventfd counting from 0 (the kick, call and stop
 * doorbells of vhost-user queues). Returns the descriptor or -1 with errno. */
int oy_shim_eventfd(void);

/* Starts `path` with `argv` (NULL-terminated) in its own process group,
 * stdin from /dev/null, stdout and stderr to `output_fd`, no other
 * descriptor inherited, and tethered: the
 * kernel sends it SIGKILL when the thread that started it ends, so a VMM
 * never outlives the process supervising it (call from a thread that lives
 * as long as the process). Returns the pid or -1 with errno. */
int oy_shim_spawn_tethered(const char *path, char *const argv[], int output_fd);

/* Starts a driver-host process: `socket_fd` becomes its standard input,
 * standard output and error are inherited, no other descriptor is. It ends
 * itself when the socket closes (the Kernel's process went away). Returns
 * the pid or -1 with errno. */
int oy_shim_spawn_driver_host(const char *path, char *const argv[], int socket_fd);

/* CPU nanoseconds this thread spent in the OS on a driver's behalf (its
 * completions and received frames), so that a callback's budget counts the
 * driver's own time: add after each such upcall, take (and reset) around
 * the callback. */
void oy_shim_os_time_add(uint64_t ns);
uint64_t oy_shim_os_time_take(void);

/* Memory a driver names (a table it returned, a string in it), read
 * without trusting it: an address that is not readable answers an error
 * instead of a SIGSEGV in the host. oy_shim_copy_in copies `length` bytes
 * and returns 0, or -1 when part of them is not readable.
 * oy_shim_copy_in_string copies the NUL-terminated string at `source` into
 * `buffer` (`capacity` bytes, NUL included) and returns its length; -1 when
 * it is not readable, -2 when no NUL comes within capacity - 1 bytes. */
int oy_shim_copy_in(void *destination, const void *source, size_t length);
long oy_shim_copy_in_string(char *buffer, size_t capacity, const char *source);

/* errno of the last failing call on this thread. */
int oy_shim_errno(void);

#endif
