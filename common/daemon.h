/* What every resplice daemon does the same way: one-line event logs with a
 * microsecond timestamp, IPv4 address:port parsing and printing, loading
 * the shared control-plane key, and signals read from a signalfd.  Linked into each daemon (I/O, so
 * not in core/). */
#ifndef RS_DAEMON_H
#define RS_DAEMON_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ctl_msg-t.h"

struct rs_addr {
    uint32_t ip;        /* host order */
    uint16_t port;      /* host order */
};

/* Sets the name rs_log prints after the timestamp ("rs-proxy"). */
void rs_log_init(const char *name);
/* --log FILE: appends stderr (the event log) to 'path' from now on.
 * Returns 0 or -errno. */
int rs_log_to(const char *path);
/* Writes "<epoch>.<us> <name> <message>\n" to stderr. */
void rs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* From now on this thread's lines wait in a buffer (32 KB) until
 * rs_log_flush(), which the event loop calls before it sleeps, and at
 * exit: a burst of events costs one write instead of one per line, and
 * every write ends at a line's end.  The timestamps are the events' own.
 * A SIGKILL loses what the loop's current turn logged. */
void rs_log_hold(void);
void rs_log_flush(void);
/* From a signal handler about to _exit: the held lines, then "<epoch>.<us>
 * <name> <msg>\n", with nothing but write(2) (async-signal-safe; lines
 * the interrupted code was adding or writing may be lost or doubled). */
void rs_log_from_signal(const char *msg);
/* Writes all 'len' bytes (again after EINTR or a short write).  Returns 0
 * or -errno. */
int rs_write_all(int fd, const void *buf, size_t len);
uint64_t rs_now_us(void);   /* CLOCK_REALTIME, microseconds */
uint64_t rs_mono_ns(void);  /* CLOCK_MONOTONIC, nanoseconds (the clock BPF's ktime uses) */

/* Parses "a.b.c.d:port" (port 1..65535).  Returns 0 or -EINVAL. */
int rs_addr_parse(const char *text, struct rs_addr *a);
/* Parses "[ID=]a.b.c.d:port" (an id 1..'max_id'; '*id' 0 without one).
 * Returns 0 or -EINVAL. */
int rs_id_addr_parse(const char *text, uint32_t max_id, uint32_t *id, struct rs_addr *a);
/* Writes "a.b.c.d:port" into 'buf' and returns it. */
const char *rs_addr_str(struct rs_addr a, char *buf, size_t len);
/* rs_addr_str into a temporary, for log arguments. */
#define RS_A(a) rs_addr_str((a), (char[24]){ 0 }, 24)

struct sockaddr_in rs_addr_sin(struct rs_addr a);
struct rs_addr rs_addr_of_sin(const struct sockaddr_in *s);

/* A non-blocking TCP listening socket on 'a' (SO_REUSEADDR, TCP_NODELAY,
 * which the connections it accepts inherit).  Returns the fd or -errno. */
int rs_listen_tcp(struct rs_addr a, int backlog);
/* Accepts the next pending IPv4 connection on listener 'lfd' (one of
 * rs_listen_tcp's: TCP_NODELAY): non-blocking, close-on-exec; its peer
 * into '*peer'.  Returns the fd, or -1 when none is pending (or on an
 * error, which is logged).  Out of file descriptors, it accepts and drops
 * the pending connections with a reserved one, so that a level-triggered
 * listener does not spin. */
int rs_accept_tcp(int lfd, struct sockaddr_in *peer);

/* Sends bytes [*off, len) of 'buf' on non-blocking 'fd' until the socket
 * is full, advancing '*off' (no SIGPIPE).  Returns 0 or a negative errno. */
int rs_send_some(int fd, const uint8_t *buf, size_t len, size_t *off);

/* The error pending on socket 'fd' (SO_ERROR: a connect's outcome, why
 * it hung up), or getsockopt's own errno; 0 when none. */
int rs_sock_error(int fd);

/* A connection whose write side is shut reads and drops what the peer
 * still sends, so unread bytes do not make the kernel reset it under the
 * last response; bounded per call (16 x 4 KiB) so that a peer that keeps
 * sending does not hold the loop.  Returns 0 (nothing more for now), 1
 * when the peer closed, or a negative errno. */
int rs_drain_input(int fd);

/* The stats line (SIGUSR1): appends " name=value" for each of the 'n'
 * counters 'vals' named by 'names' to 'f'. */
void rs_stats_put(FILE *f, const char *const *names, const uint64_t *vals, int n);
/* The same for counters kept as uint64_t fields of a struct: 'fields' names
 * them (RS_STAT(struct stats, accepted) prints " accepted=N"). */
struct rs_stat_field {
    const char *name;
    size_t off;
};
#define RS_STAT(type, field) { #field, offsetof(type, field) }
void rs_stats_fields(FILE *f, const void *base, const struct rs_stat_field *fields, size_t n);

/* Raises the soft limit of open files to the hard one: scale experiments
 * open thousands of connections. */
void rs_raise_nofile(void);

/* For daemons whose connections come and go by the thousand, each with
 * its buffers: keeps freed memory for the next ones instead of giving it
 * back to the kernel (glibc trims the heap's top past 128 KB free and
 * serves blocks from 128 KB up with mmap; the heap shrunk and grown again
 * costs a brk and page faults every few connections). */
void rs_malloc_keep(void);

/* Loads a key file: 64 hex characters (surrounding white space allowed),
 * readable by its owner only (mode 0600; else it says so on stderr).
 * Returns 0, -errno when the file cannot be read, -EPERM when others can
 * read it, or -EINVAL. */
int rs_ctl_key_load(const char *path, struct rs_ctl_key *key);

/* Signals: SIGUSR1 asks for a stats line, SIGTERM and SIGINT for an exit.
 * Blocks those three (they then arrive only through the returned fd, which
 * the daemon adds to its epoll set) and ignores SIGPIPE (a reset peer shows
 * as EPIPE from send).  Returns a non-blocking signalfd, or -errno. */
int rs_signals_open(void);
/* Reads the signals pending on 'sfd' (from rs_signals_open): each SIGUSR1
 * calls 'stats'('ctx') when 'stats' is not NULL; SIGTERM or SIGINT logs
 * "exit on signal N" and stops reading.  Returns true on an exit signal
 * (what is left stays unread: the daemon ends), false when none was pending. */
bool rs_signals_read(int sfd, void (*stats)(void *ctx), void *ctx);

#endif /* RS_DAEMON_H */
