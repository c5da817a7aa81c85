/* rs-smtpd: the mail store's SMTP listener.  Accepts mail for local users
 * (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no auth, no TLS, no relay)
 * and delivers each message into DIR/<user>/Maildir/new/, where dovecot
 * serves it over IMAP.  One event loop (common/loop.h), TCP_NODELAY on every connection:
 * Roundcube waits for each reply, so Nagle + delayed ACK would add 40 ms. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "options.h"
#include "server.h"
#include "loop.h"
#include "parse.h"

#define SMTPD_LINE_MAX 4096u       /* command line or message line, with CRLF */
#define SMTPD_OUT_MAX 2048u        /* pending replies of one connection */
#define SMTPD_RCPT_MAX 16u         /* recipients per message */
#define SMTPD_USER_MAX 64u         /* local part, with its NUL */
#define SMTPD_PATH_MAX 512u
#define SMTPD_IDLE_S 300           /* RFC 5321 4.5.3.2.7: server timeout */

enum smtpd_state { ST_CMD, ST_DATA, ST_CLOSING };

struct smtpd_conn {
    struct smtpd *s;
    struct rs_io io;
    int fd;
    struct rs_addr peer;
    enum smtpd_state state;
    bool helo, have_from, too_big;
    char in[SMTPD_LINE_MAX];
    size_t in_len;
    bool in_overflow;              /* discarding the rest of an overlong line */
    char out[SMTPD_OUT_MAX];
    size_t out_len;
    char from[256];
    unsigned n_rcpt;
    char rcpt[SMTPD_RCPT_MAX][SMTPD_USER_MAX];
    char *msg;                     /* message being received (dot-unstuffed) */
    size_t msg_len, msg_cap;
    time_t last;
    struct smtpd_conn *next;
};

struct smtpd {
    struct rs_addr laddr;
    const char *maildirs;
    const char *hostname;
    uint64_t max_size;
    unsigned max_conns;
    struct rs_loop loop;
    struct rs_server server;
    struct rs_timer reap;
    struct smtpd_conn *conns;
    unsigned n_conns;
    uint64_t seq;                  /* message counter for unique file names */
    /* stats */
    uint64_t accepted, refused, messages, delivered, rejected_rcpt, errors;
};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-smtpd --maildirs DIR [options]\n"
        "SMTP listener of the mail store: delivers every accepted message into\n"
        "DIR/<user>/Maildir/new/ (the recipient's local part is the user; a user\n"
        "without that directory is refused with 550).  No auth, TLS or relaying.\n"
        "\n"
        "  --listen ADDR:PORT   where to accept SMTP (default 0.0.0.0:25)\n"
        "  --maildirs DIR       the users' home directories\n"
        "  --hostname NAME      name in the greeting (default mailstore)\n"
        "  --max-size BYTES     largest message accepted (default 10M)\n"
        "  --max-conns N        concurrent connections (default 64)\n"
        "  --help               this text\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready; logs one line per delivery.\n"
        "SIGUSR1 prints a stats line; SIGTERM or SIGINT exits.\n");
}

/* ---- Replies ---------------------------------------------------------- */

static void conn_close(struct smtpd *s, struct smtpd_conn *c)
{
    struct smtpd_conn **pp;

    for (pp = &s->conns; *pp && *pp != c; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = c->next;
    rs_io_stop(&c->io);
    close(c->fd);
    free(c->msg);
    free(c);
    s->n_conns--;
}

/* Sends what is pending.  Returns 0, or -1 when the connection is dead. */
static int conn_flush(struct smtpd *s, struct smtpd_conn *c)
{
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return -1;
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    (void)s;
    rs_io_set(&c->io, EPOLLIN | (c->out_len ? EPOLLOUT : 0));
    return 0;
}

static void reply(struct smtpd_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct smtpd_conn *c, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(c->out + c->out_len, SMTPD_OUT_MAX - c->out_len, fmt, ap);
    va_end(ap);
    /* A client that pipelines more than SMTPD_OUT_MAX of replies without
     * reading them is not one we serve: close it. */
    if (n < 0 || (size_t)n >= SMTPD_OUT_MAX - c->out_len) {
        c->state = ST_CLOSING;
        return;
    }
    c->out_len += (size_t)n;
}

/* ---- Delivery ---------------------------------------------------------- */

/* Writes the message into 'user's Maildir: tmp/ first, then a rename into
 * new/, so dovecot never sees a partial file.  The file gets the Maildir's
 * owner (dovecot reads it as the mail user; we run as root).
 * Returns 0 or -errno. */
static int deliver(struct smtpd *s, struct smtpd_conn *c, const char *user, char *name, size_t name_len)
{
    char dir[SMTPD_PATH_MAX], tmp[2 * SMTPD_PATH_MAX], dst[2 * SMTPD_PATH_MAX], head[512];
    struct timeval tv;
    struct stat st;
    int fd, r = 0, hl;

    if (snprintf(dir, sizeof(dir), "%s/%s/Maildir", s->maildirs, user) >= (int)sizeof(dir))
        return -ENAMETOOLONG;
    if (stat(dir, &st) < 0)
        return -errno;
    gettimeofday(&tv, NULL);
    /* Maildir's unique name: time, microseconds, pid, our own counter, host. */
    if (snprintf(name, name_len, "%lld.M%06ldP%dQ%" PRIu64 ".%s", (long long)tv.tv_sec, (long)tv.tv_usec,
                 (int)getpid(), ++s->seq, s->hostname) >= (int)name_len ||
        snprintf(tmp, sizeof(tmp), "%s/tmp/%s", dir, name) >= (int)sizeof(tmp) ||
        snprintf(dst, sizeof(dst), "%s/new/%s", dir, name) >= (int)sizeof(dst))
        return -ENAMETOOLONG;
    hl = snprintf(head, sizeof(head), "Return-Path: <%s>\r\nDelivered-To: %s\r\n", c->from, user);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    r = rs_write_all(fd, head, (size_t)hl);
    if (!r)
        r = rs_write_all(fd, c->msg, c->msg_len);
    if (!r && fchown(fd, st.st_uid, st.st_gid) < 0)
        r = -errno;
    if (close(fd) < 0 && !r)
        r = -errno;
    if (!r && rename(tmp, dst) < 0)
        r = -errno;
    if (r)
        unlink(tmp);
    return r;
}

static void end_of_data(struct smtpd *s, struct smtpd_conn *c)
{
    char name[256];
    unsigned ok = 0;

    s->messages++;
    if (c->too_big) {
        reply(c, "552 5.3.4 message exceeds %" PRIu64 " bytes\r\n", s->max_size);
        rs_log("refused from=<%s> peer=%s why=too-big", c->from, RS_A(c->peer));
    } else {
        for (unsigned i = 0; i < c->n_rcpt; i++) {
            int r = deliver(s, c, c->rcpt[i], name, sizeof(name));
            if (r < 0) {
                s->errors++;
                rs_log("delivery failed to=%s from=<%s> err=%s", c->rcpt[i], c->from, strerror(-r));
                continue;
            }
            ok++;
            s->delivered++;
            rs_log("delivered to=%s from=<%s> bytes=%zu file=%s peer=%s", c->rcpt[i], c->from,
                   c->msg_len, name, RS_A(c->peer));
        }
        if (ok == c->n_rcpt)
            reply(c, "250 2.0.0 Ok: queued as %" PRIu64 "\r\n", s->seq);
        else
            reply(c, "451 4.3.0 delivery failed for %u of %u recipients\r\n", c->n_rcpt - ok, c->n_rcpt);
    }
    c->state = ST_CMD;
    c->have_from = c->too_big = false;
    c->n_rcpt = 0;
    c->msg_len = 0;
}

/* Appends one message line (without its CRLF, dot-unstuffed) and CRLF. */
static void data_line(struct smtpd *s, struct smtpd_conn *c, const char *line, size_t len)
{
    if (len && line[0] == '.') {
        line++;
        len--;
    }
    if (c->too_big || c->msg_len + len + 2 > s->max_size) {
        c->too_big = true;
        return;
    }
    if (c->msg_len + len + 2 > c->msg_cap) {
        size_t cap = c->msg_cap ? c->msg_cap : 16384;
        while (cap < c->msg_len + len + 2)
            cap *= 2;
        char *m = realloc(c->msg, cap);
        if (!m) {
            c->too_big = true;
            return;
        }
        c->msg = m;
        c->msg_cap = cap;
    }
    memcpy(c->msg + c->msg_len, line, len);
    memcpy(c->msg + c->msg_len + len, "\r\n", 2);
    c->msg_len += len + 2;
}

/* ---- Commands ---------------------------------------------------------- */

/* Copies the address inside <...> after "FROM:" / "TO:" into 'out'.
 * Returns 0, or -EINVAL when there is none or it does not fit. */
static int path_arg(const char *arg, char *out, size_t out_len)
{
    const char *lt = strchr(arg, '<'), *gt = lt ? strchr(lt, '>') : NULL;
    size_t n;

    if (!lt || !gt)
        return -EINVAL;
    n = (size_t)(gt - lt - 1);
    if (n >= out_len)
        return -EINVAL;
    memcpy(out, lt + 1, n);
    out[n] = '\0';
    return 0;
}

/* The local part of 'addr', lower-cased, if it names a plausible user. */
static int local_user(const char *addr, char *user)
{
    const char *at = strchr(addr, '@');
    size_t n = at ? (size_t)(at - addr) : strlen(addr);

    if (n == 0 || n >= SMTPD_USER_MAX)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char ch = (char)tolower((unsigned char)addr[i]);
        if (!isalnum((unsigned char)ch) && ch != '.' && ch != '_' && ch != '-')
            return -EINVAL;
        user[i] = ch;
    }
    user[n] = '\0';
    return user[0] == '.' ? -EINVAL : 0;
}

static bool verb_is(const char *line, const char *verb)
{
    size_t n = strlen(verb);
    return strncasecmp(line, verb, n) == 0 && (line[n] == '\0' || line[n] == ' ');
}

static void command(struct smtpd *s, struct smtpd_conn *c, char *line)
{
    char user[SMTPD_USER_MAX], addr[256], dir[SMTPD_PATH_MAX];
    struct stat st;

    if (verb_is(line, "EHLO")) {
        c->helo = true;
        c->have_from = false;
        c->n_rcpt = 0;
        reply(c, "250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE %" PRIu64 "\r\n250 SMTPUTF8\r\n",
              s->hostname, s->max_size);
    } else if (verb_is(line, "HELO")) {
        c->helo = true;
        c->have_from = false;
        c->n_rcpt = 0;
        reply(c, "250 %s\r\n", s->hostname);
    } else if (strncasecmp(line, "MAIL FROM:", 10) == 0) {
        if (!c->helo)
            reply(c, "503 5.5.1 EHLO first\r\n");
        else if (c->have_from)
            reply(c, "503 5.5.1 nested MAIL command\r\n");
        else if (path_arg(line + 10, c->from, sizeof(c->from)) < 0)
            reply(c, "501 5.1.7 bad sender address\r\n");
        else {
            c->have_from = true;
            c->n_rcpt = 0;
            reply(c, "250 2.1.0 Ok\r\n");
        }
    } else if (strncasecmp(line, "RCPT TO:", 8) == 0) {
        if (!c->have_from)
            reply(c, "503 5.5.1 MAIL first\r\n");
        else if (c->n_rcpt >= SMTPD_RCPT_MAX)
            reply(c, "452 4.5.3 too many recipients\r\n");
        else if (path_arg(line + 8, addr, sizeof(addr)) < 0 || local_user(addr, user) < 0)
            reply(c, "501 5.1.3 bad recipient address\r\n");
        else if (snprintf(dir, sizeof(dir), "%s/%s/Maildir", s->maildirs, user) >= (int)sizeof(dir) ||
                 stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            s->rejected_rcpt++;
            rs_log("rcpt refused to=<%s> why=no-such-user peer=%s", addr, RS_A(c->peer));
            reply(c, "550 5.1.1 <%s>: no such user\r\n", addr);
        } else {
            memcpy(c->rcpt[c->n_rcpt++], user, sizeof(user));
            reply(c, "250 2.1.5 Ok\r\n");
        }
    } else if (verb_is(line, "DATA")) {
        if (!c->n_rcpt)
            reply(c, "503 5.5.1 RCPT first\r\n");
        else {
            c->state = ST_DATA;
            c->msg_len = 0;
            c->too_big = false;
            reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
        }
    } else if (verb_is(line, "RSET")) {
        c->have_from = false;
        c->n_rcpt = 0;
        reply(c, "250 2.0.0 Ok\r\n");
    } else if (verb_is(line, "NOOP")) {
        reply(c, "250 2.0.0 Ok\r\n");
    } else if (verb_is(line, "QUIT")) {
        reply(c, "221 2.0.0 Bye\r\n");
        c->state = ST_CLOSING;
    } else if (verb_is(line, "VRFY")) {
        reply(c, "252 2.0.0 Cannot VRFY user\r\n");
    } else {
        reply(c, "502 5.5.2 command not implemented\r\n");
    }
}

/* One complete line (CRLF or LF stripped). */
static void on_line(struct smtpd *s, struct smtpd_conn *c, char *line, size_t len, bool overlong)
{
    if (c->state == ST_DATA) {
        if (len == 1 && line[0] == '.' && !overlong)
            end_of_data(s, c);
        else if (overlong)
            c->too_big = true;     /* RFC 5321 4.5.3.1.6: a line is at most 1000 bytes */
        else
            data_line(s, c, line, len);
        return;
    }
    if (overlong) {
        reply(c, "500 5.5.6 line too long\r\n");
        return;
    }
    line[len] = '\0';
    command(s, c, line);
}

/* Splits the input into lines and handles each.  Returns 0 or -1 (close). */
static int conn_read(struct smtpd *s, struct smtpd_conn *c)
{
    if (c->state == ST_CLOSING)
        return 0;                  /* after QUIT: only the reply goes out */
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, SMTPD_LINE_MAX - c->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return -1;
        c->last = time(NULL);
        c->in_len += (size_t)n;
        /* The client writes the message and the final "." separately; with
         * Nagle on its side the "." waits for our ACK of the message, which
         * delayed ACK would hold for 40 ms.  TCP_QUICKACK is reset by the
         * kernel, so it is set again after each read. */
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &(int){ 1 }, sizeof(int));
        size_t start = 0;
        for (;;) {
            char *nl = memchr(c->in + start, '\n', c->in_len - start);
            if (!nl)
                break;
            size_t len = (size_t)(nl - (c->in + start));
            if (len && c->in[start + len - 1] == '\r')
                len--;
            if (c->in_overflow) {
                /* tail of an overlong line: the line was already reported */
                c->in_overflow = false;
                on_line(s, c, c->in + start, 0, true);
            } else {
                on_line(s, c, c->in + start, len, false);
            }
            start = (size_t)(nl - c->in) + 1;
            if (c->state == ST_CLOSING)
                return 0;
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
        if (c->in_len == SMTPD_LINE_MAX) {
            /* No newline in a full buffer: drop it, remember to skip the rest. */
            c->in_len = 0;
            c->in_overflow = true;
        }
    }
}

static void conn_event(struct rs_io *io, uint32_t events)
{
    struct smtpd_conn *c = io->ctx;
    struct smtpd *s = c->s;

    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && conn_read(s, c) < 0) {
        conn_close(s, c);
        return;
    }
    if (conn_flush(s, c) < 0 || (c->state == ST_CLOSING && c->out_len == 0))
        conn_close(s, c);
}

/* rs_server_fn: a new SMTP session, or "421" when there are too many. */
static int on_accept(void *ctx, int fd, const struct sockaddr_in *sin)
{
    struct smtpd *s = ctx;
    struct smtpd_conn *c;

    if (s->n_conns >= s->max_conns) {
        static const char busy[] = "421 4.3.2 too many connections\r\n";
        ssize_t w = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL);

        (void)w;
        close(fd);
        s->refused++;
        rs_log("refused peer=%s why=max-conns", RS_A(rs_addr_of_sin(sin)));
        return 0;
    }
    if (!(c = calloc(1, sizeof(*c)))) {
        close(fd);
        return -ENOMEM;
    }
    c->s = s;
    c->fd = fd;
    c->peer = rs_addr_of_sin(sin);
    c->last = time(NULL);
    c->next = s->conns;
    s->conns = c;
    s->n_conns++;
    s->accepted++;
    if (rs_io_start(&s->loop, &c->io, fd, EPOLLIN, conn_event, c) < 0) {
        conn_close(s, c);
        return 0;
    }
    reply(c, "220 %s ESMTP rs-smtpd\r\n", s->hostname);
    if (conn_flush(s, c) < 0)
        conn_close(s, c);
    return 0;
}

static void print_stats(void *ctx)
{
    const struct smtpd *s = ctx;

    printf("stats: conns=%u accepted=%" PRIu64 " refused=%" PRIu64 " messages=%" PRIu64
           " delivered=%" PRIu64 " rejected_rcpt=%" PRIu64 " errors=%" PRIu64 "\n",
           s->n_conns, s->accepted, s->refused, s->messages, s->delivered, s->rejected_rcpt, s->errors);
    fflush(stdout);
}

/* Drops connections idle for longer than SMTPD_IDLE_S (every 10 s). */
static void reap_idle(struct rs_timer *t)
{
    struct smtpd *s = t->ctx;
    time_t now = time(NULL);

    for (struct smtpd_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (now - c->last > SMTPD_IDLE_S) {
            rs_log("idle close peer=%s", RS_A(c->peer));
            conn_close(s, c);
        }
    }
    rs_timer_after(&s->loop, t, 10000000000ull);
}

static int setup(struct smtpd *s)
{
    int e;

    if ((e = rs_loop_init(&s->loop)) || (e = rs_loop_signals(&s->loop, print_stats, s))
        || (e = rs_server_open(&s->server, &s->loop, s->laddr, 128, on_accept, s)))
        return e;
    rs_timer_init(&s->reap, reap_idle, s);
    rs_timer_after(&s->loop, &s->reap, 10000000000ull);
    return 0;
}

static int hostname(const char *v, void *dst)
{
    if (!*v || strlen(v) > 64 || strpbrk(v, "/ \r\n"))
        return -EINVAL;
    *(const char **)dst = v;
    return 0;
}

static int max_size(const char *v, void *dst)
{
    uint64_t n;

    if (rs_parse_size(v, &n) < 0 || n < 1024 || n > (1u << 30))
        return -EINVAL;
    *(uint64_t *)dst = n;
    return 0;
}

static int max_conns(const char *v, void *dst)
{
    uint64_t n;

    if (rs_parse_size(v, &n) < 0 || n == 0 || n > 100000)
        return -EINVAL;
    *(unsigned *)dst = (unsigned)n;
    return 0;
}

int main(int argc, char **argv)
{
    struct smtpd s = { .hostname = "mailstore", .max_size = 10u << 20, .max_conns = 64,
                       .laddr = { 0, 25 } };
    const struct rs_opt opts[] = {
        RS_OPTION("listen", RS_OPT_ADDR, &s.laddr),
        RS_OPTION("maildirs", RS_OPT_STR, &s.maildirs),
        RS_OPTION("hostname", RS_OPT_FN, &s.hostname, .want = "a name of up to 64 characters", .fn = hostname),
        RS_OPTION("max-size", RS_OPT_FN, &s.max_size, .want = "1K..1G", .fn = max_size),
        RS_OPTION("max-conns", RS_OPT_FN, &s.max_conns, .want = "1..100000", .fn = max_conns),
        RS_OPTIONS_END,
    };
    struct stat st;
    int r;

    rs_log_init("rs-smtpd");
    if ((r = rs_opts_parse("rs-smtpd", argc, argv, opts, usage)))
        return rs_opts_exit(r);
    if (!s.maildirs) {
        usage(stderr);
        return 2;
    }
    if (stat(s.maildirs, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "rs-smtpd: --maildirs %s is not a directory\n", s.maildirs);
        return 2;
    }
    if ((r = setup(&s)) < 0) {
        rs_log("cannot listen on %s: %s", RS_A(s.laddr), strerror(-r));
        return 1;
    }
    printf("listening on %s\n", RS_A(s.laddr));
    fflush(stdout);
    if (rs_loop_run(&s.loop) < 0) {
        rs_log("event loop: %s", strerror(errno));
        return 1;
    }
    print_stats(&s);
    while (s.conns)
        conn_close(&s, s.conns);
    rs_server_close(&s.server);
    rs_loop_fini(&s.loop);
    return 0;
}
