/* Shared daemon plumbing (see daemon.h). */
#include "daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "parse.h"

static const char *log_name = "rs";

/* Lines held by rs_log_hold()'s thread until rs_log_flush(). */
#define LOG_HOLD_BYTES 32768
static __thread char *held;
static __thread size_t held_len;

int rs_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void rs_log_flush(void)
{
    if (held_len) {
        rs_write_all(STDERR_FILENO, held, held_len);    /* a failure has nowhere to be reported */
        held_len = 0;
    }
}

/* Writes 'v' in decimal, at least 'width' digits, ending at 'end'; returns
 * where it starts. */
static char *decimal(char *end, uint64_t v, int width)
{
    for (int n = 0; v || n < width || n == 0; n++) {
        *--end = (char)('0' + v % 10);
        v /= 10;
    }
    return end;
}

void rs_log_from_signal(const char *msg)
{
    struct timespec ts;
    char stamp[64], *s = stamp + sizeof(stamp);

    rs_log_flush();
    clock_gettime(CLOCK_REALTIME, &ts);
    *--s = ' ';
    s = decimal(s, (uint64_t)ts.tv_nsec / 1000u, 6);
    *--s = '.';
    s = decimal(s, (uint64_t)ts.tv_sec, 1);
    rs_write_all(STDERR_FILENO, s, (size_t)(stamp + sizeof(stamp) - s));
    rs_write_all(STDERR_FILENO, log_name, strlen(log_name));
    rs_write_all(STDERR_FILENO, " ", 1);
    rs_write_all(STDERR_FILENO, msg, strlen(msg));
    rs_write_all(STDERR_FILENO, "\n", 1);
}

static void flush_at_exit(void)
{
    rs_log_flush();
}

void rs_log_hold(void)
{
    if (!held && (held = malloc(LOG_HOLD_BYTES)) != NULL)
        atexit(flush_at_exit);
}

void rs_log_init(const char *name)
{
    log_name = name;
    setvbuf(stderr, NULL, _IOLBF, 0);
}

int rs_log_to(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644), err = 0;

    rs_log_flush();     /* what was logged before goes where it was meant to */

    if (fd < 0)
        return -errno;
    if (dup2(fd, STDERR_FILENO) < 0)
        err = -errno;
    close(fd);
    return err;
}

uint64_t rs_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t rs_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rs_log(const char *fmt, ...)
{
    uint64_t t = rs_now_us();
    char line[1024];
    int n;
    va_list ap;

    n = snprintf(line, sizeof(line), "%" PRIu64 ".%06" PRIu64 " %s ", t / 1000000, t % 1000000, log_name);
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (!held) {
        fprintf(stderr, "%s\n", line);
        return;
    }
    n = (int)strlen(line);
    if (held_len + (size_t)n + 1 > LOG_HOLD_BYTES)
        rs_log_flush();
    memcpy(held + held_len, line, (size_t)n);
    held_len += (size_t)n;
    held[held_len++] = '\n';
}

int rs_addr_parse(const char *text, struct rs_addr *a)
{
    char host[64];
    const char *colon = text ? strrchr(text, ':') : NULL;
    struct in_addr in;
    uint64_t port;

    if (!colon || (size_t)(colon - text) >= sizeof(host))
        return -EINVAL;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    if (inet_pton(AF_INET, host, &in) != 1 || rs_parse_size(colon + 1, &port) || !port || port > 65535)
        return -EINVAL;
    a->ip = ntohl(in.s_addr);
    a->port = (uint16_t)port;
    return 0;
}

int rs_id_addr_parse(const char *text, uint32_t max_id, uint32_t *id, struct rs_addr *a)
{
    const char *eq = text ? strchr(text, '=') : NULL;
    uint64_t n;

    *id = 0;
    if (eq) {
        char num[16];
        if ((size_t)(eq - text) >= sizeof(num))
            return -EINVAL;
        memcpy(num, text, (size_t)(eq - text));
        num[eq - text] = '\0';
        if (rs_parse_size(num, &n) || !n || n > max_id)
            return -EINVAL;
        *id = (uint32_t)n;
        text = eq + 1;
    }
    return rs_addr_parse(text, a);
}

const char *rs_addr_str(struct rs_addr a, char *buf, size_t len)
{
    snprintf(buf, len, "%u.%u.%u.%u:%u", a.ip >> 24, (a.ip >> 16) & 255, (a.ip >> 8) & 255, a.ip & 255,
             a.port);
    return buf;
}

struct sockaddr_in rs_addr_sin(struct rs_addr a)
{
    return (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(a.port),
                                 .sin_addr.s_addr = htonl(a.ip) };
}

struct rs_addr rs_addr_of_sin(const struct sockaddr_in *s)
{
    return (struct rs_addr){ ntohl(s->sin_addr.s_addr), ntohs(s->sin_port) };
}

int rs_listen_tcp(struct rs_addr a, int backlog)
{
    struct sockaddr_in s = rs_addr_sin(a);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Inherited by every connection it accepts: a syscall per accept saved. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&s, sizeof(s)) || listen(fd, backlog)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int rs_accept_tcp(int lfd, struct sockaddr_in *peer)
{
    static int reserve = -1;    /* a spare descriptor, for when none is left */

    if (reserve < 0)
        reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (;;) {
        socklen_t sl = sizeof(*peer);
        int fd = accept4(lfd, (struct sockaddr *)peer, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd >= 0 && peer->sin_family == AF_INET)
            return fd;
        if (fd >= 0) {
            close(fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if ((errno == EMFILE || errno == ENFILE) && reserve >= 0) {
            /* EMFILE comes before the look for a pending one: maybe none is. */
            int e = errno;

            close(reserve);
            fd = accept(lfd, NULL, NULL);
            if (fd >= 0)
                close(fd);
            reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return -1;      /* none pending after all */
            rs_log("error accept %s: dropped a connection", strerror(e));
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            rs_log("error accept %s", strerror(errno));
        return -1;
    }
}

int rs_ctl_key_load(const char *path, struct rs_ctl_key *key)
{
    char text[256];
    const char *end = NULL;
    size_t len = 0;
    struct stat st;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        int err = -errno;

        close(fd);
        return err;
    }
    if (st.st_mode & 077) {
        close(fd);
        fprintf(stderr, "key file %s can be read by others (mode %04o): chmod 600 it\n", path,
                (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n < 0)
        return -errno;
    text[n] = '\0';
    /* Leading white space is skipped; what follows the hex must be white space. */
    if (sodium_hex2bin(key->bytes, sizeof(key->bytes), text, n, " \t\r\n", &len, &end) != 0
        || len != sizeof(key->bytes))
        return -EINVAL;
    return end[strspn(end, " \t\r\n")] ? -EINVAL : 0;
}

int rs_signals_open(void)
{
    sigset_t set;
    int fd;

    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;
    fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

bool rs_signals_read(int sfd, void (*stats)(void *ctx), void *ctx)
{
    struct signalfd_siginfo si;

    while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGUSR1) {
            if (stats)
                stats(ctx);
            continue;
        }
        rs_log("exit on signal %u", si.ssi_signo);
        return true;
    }
    return false;
}

void rs_raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

void rs_malloc_keep(void)
{
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_MMAP_THRESHOLD, 16 << 20);
}

void rs_stats_put(FILE *f, const char *const *names, const uint64_t *vals, int n)
{
    for (int i = 0; i < n; i++)
        fprintf(f, " %s=%" PRIu64, names[i], vals[i]);
}

void rs_stats_fields(FILE *f, const void *base, const struct rs_stat_field *fields, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v;

        memcpy(&v, (const char *)base + fields[i].off, sizeof(v));
        fprintf(f, " %s=%" PRIu64, fields[i].name, v);
    }
}

int rs_send_some(int fd, const uint8_t *buf, size_t len, size_t *off)
{
    while (*off < len) {
        ssize_t w = send(fd, buf + *off, len - *off, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        *off += (size_t)w;
    }
    return 0;
}

int rs_sock_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);

    return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 ? errno : err;
}

int rs_drain_input(int fd)
{
    char sink[4096];

    for (int i = 0; i < 16; i++) {
        ssize_t r = recv(fd, sink, sizeof(sink), 0);

        if (r > 0 || (r < 0 && errno == EINTR))
            continue;
        if (r == 0)
            return 1;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    }
    return 0;
}
