/* rs-auxlog's conversations: one per backend connection, relayed to the
 * mail store; buffers both ways, the socket events, accepting and closing.
 * What a conversation's bytes mean is replay.c's. */
#include "auxlog.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "list.h"

/* ---- Buffers ------------------------------------------------------------ */

int buf_add(struct aux_buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            return -ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_drop(struct aux_buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    /* A big unit leaves a big buffer behind; give it back once drained. */
    if (b->len == 0 && b->cap > (1u << 20)) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static void buf_free(struct aux_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- Conversations: I/O ------------------------------------------------- */

static void conv_arm(struct auxlog *a, struct aux_conv *c)
{
    uint32_t ce = 0, ue = 0;
    bool replay = c->mode == AUX_REPLAY;

    /* Read a side only while what it feeds is not backed up. */
    if (!c->c_eof && (replay ? c->cout.len : c->uout.len) < AUX_HIGH_WATER)
        ce |= EPOLLIN;
    if (c->cout.len)
        ce |= EPOLLOUT;
    if (!c->u_eof && !c->connecting && c->cout.len < AUX_HIGH_WATER)
        ue |= EPOLLIN;
    if (c->uout.len || c->connecting)
        ue |= EPOLLOUT;
    (void)a;
    rs_io_set(&c->cio, ce);
    rs_io_set(&c->uio, ue);
}

/* Sends what 'b' holds on 'fd'.  Returns 0 or -errno. */
static int flush_fd(int fd, struct aux_buf *b)
{
    while (b->len) {
        ssize_t n = send(fd, b->p, b->len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return n < 0 ? -errno : -EPIPE;
        buf_drop(b, (size_t)n);
    }
    return 0;
}

int to_client(struct aux_conv *c, const void *p, size_t n)
{
    if (c->draining || c->tap)
        return 0;       /* its backend is not heard any more, nor told anything; the kernel forwards a tap's */
    return buf_add(&c->cout, p, n);
}

int to_upstream(struct aux_conv *c, const void *p, size_t n)
{
    if (c->tap)
        return 0;       /* the kernel forwards a tapped conversation */
    return buf_add(&c->uout, p, n);
}

static const char *mode_name(const struct aux_conv *c)
{
    if (c->replayed)
        return c->caught_up ? "replay+live" : "replay";
    return "live";
}

void conv_close(struct auxlog *a, struct aux_conv *c, const char *why)
{
    char txn[RS_TXN_ID_STRLEN] = "-";
    /* A draining writer's replays decide once it is gone. */
    struct aux_record *woken = c->draining && c->rec && c->rec->writer == c ? c->rec : NULL;

    if (c->marked)
        rs_txn_id_format(c->txn, txn, sizeof(txn));
    rs_log("end %s backend=%s txn=%s ordinal=%u mode=%s%s units=%zu bytes_c=%" PRIu64 " bytes_s=%" PRIu64
           " ms=%.1f why=%s", proto_name(c->proto), RS_A(c->peer), txn, c->ordinal, mode_name(c),
           c->marked ? "" : "(unmarked)", c->nc, c->bytes_c, c->bytes_s,
           (double)(rs_mono_ns() - c->start_ns) / 1e6, why);
    if (c->rec) {
        if (c->rec->writer == c)
            c->rec->writer = NULL;
        if (!woken)
            record_put(c->rec);     /* else after the wake */
    }
    RS_LIST_UNLINK(a->convs, c);
    tap_conv_closed(c);
    rs_io_stop(&c->cio);
    rs_io_stop(&c->uio);
    if (c->cfd >= 0)
        close(c->cfd);
    if (c->ufd >= 0)
        close(c->ufd);
    buf_free(&c->cin);
    buf_free(&c->sin);
    buf_free(&c->cout);
    buf_free(&c->uout);
    free(c);
    a->n_convs--;
    if (woken) {
        replay_wake(a, woken);
        record_put(woken);
    }
}

static bool conv_progress(struct auxlog *a, struct aux_conv *c);

static void conv_error(struct auxlog *a, struct aux_conv *c, const char *what, int err)
{
    char why[160];
    a->errors++;
    snprintf(why, sizeof(why), "error:%s:%s", what, strerror(err < 0 ? -err : err));
    conv_close(a, c, why);
}

void conv_supersede(struct auxlog *a, struct aux_conv *c)
{
    if (c->draining)
        return;
    if (c->mode != AUX_LIVE || c->nr >= c->nc || c->u_eof) {
        conv_close(a, c, "superseded");
        return;
    }
    /* What it forwarded may have been done (an SMTP DATA's end: the message
     * is delivered): its reply must complete the record, so that the re-run
     * is answered from it instead of doing it again. */
    rs_log("drain %s backend=%s txn=%s ordinal=%u: %zu unit(s) sent await their replies", proto_name(c->proto),
           RS_A(c->peer), RS_TXN(c->txn), c->ordinal, c->nc - c->nr);
    a->drained++;
    c->draining = true;
    c->draining_ns = rs_mono_ns();
    c->c_eof = true;
    if (c->cfd >= 0)
        shutdown(c->cfd, SHUT_RDWR);
    buf_free(&c->cout);
    conv_arm(a, c);
}

void convs_expire(struct auxlog *a)
{
    uint64_t now = rs_mono_ns();
    struct aux_conv *c;

    /* From the head again after each: a close may end others (its replays). */
    do {
        for (c = a->convs; c && !(c->draining && now - c->draining_ns > AUX_DRAIN_NS); c = c->next)
            ;
        if (c)
            conv_close(a, c, "superseded (no reply)");
    } while (c);
}

void replay_wake(struct auxlog *a, struct aux_record *r)
{
    struct aux_conv *c;

    for (c = a->convs; c; c = c->next)
        c->wake = c->waiting && c->rec == r;
    /* One at a time, from the head: resuming one may end others. */
    for (;;) {
        for (c = a->convs; c && !c->wake; c = c->next)
            ;
        if (!c)
            return;
        c->wake = c->waiting = false;
        int e = replay_resume(a, c);
        if (e < 0)
            conv_error(a, c, "backend", e);
        else
            conv_progress(a, c);
    }
}

/* From here on only bytes are relayed: nothing more is recorded. */
void conv_stop_recording(struct auxlog *a, struct aux_conv *c, const char *why)
{
    (void)a;
    if (c->mode == AUX_RELAY)
        return;
    if (c->marked)
        rs_log("stop recording %s backend=%s txn=%s ordinal=%u why=%s", proto_name(c->proto),
               RS_A(c->peer), RS_TXN(c->txn), c->ordinal, why);
    /* Unforwarded client bytes (a held PRE unit) go out now. */
    if (c->cfwd < c->cin.len)
        to_upstream(c, c->cin.p + c->cfwd, c->cin.len - c->cfwd);
    if (c->sfwd < c->sin.len && !c->discard)
        to_client(c, c->sin.p + c->sfwd, c->sin.len - c->sfwd);
    buf_free(&c->cin);
    buf_free(&c->sin);
    c->cfwd = c->sfwd = 0;
    if (c->rec) {
        if (c->rec->writer == c)
            c->rec->writer = NULL;
        record_put(c->rec);
        c->rec = NULL;
    }
    c->mode = AUX_RELAY;
}

/* ---- Events ------------------------------------------------------------- */

/* One recv from 'fd'.  Returns the bytes read (> 0), 0 when there is
 * nothing more for now or the peer closed (then '*eof' is set), or -errno. */
static ssize_t conv_recv(int fd, uint8_t *buf, size_t len, bool *eof)
{
    for (;;) {
        ssize_t n = recv(fd, buf, len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? 0 : -errno;
        if (n == 0)
            *eof = true;
        return n;
    }
}

static int on_client_read(struct auxlog *a, struct aux_conv *c)
{
    uint8_t tmp[AUX_READ_CHUNK];

    for (;;) {
        if ((c->mode == AUX_REPLAY ? c->cout.len : c->uout.len) >= AUX_HIGH_WATER)
            return 0;
        ssize_t n = conv_recv(c->cfd, tmp, sizeof(tmp), &c->c_eof);
        if (n <= 0)
            return (int)n;
        setsockopt(c->cfd, IPPROTO_TCP, TCP_QUICKACK, &(int){ 1 }, sizeof(int));
        c->bytes_c += (uint64_t)n;
        if (c->mode == AUX_RELAY || c->mode == AUX_LIVE) {
            if (to_upstream(c, tmp, (size_t)n) < 0)
                return -ENOMEM;
            if (c->mode == AUX_RELAY)
                continue;
        }
        if (buf_add(&c->cin, tmp, (size_t)n) < 0)
            return -ENOMEM;
        if (c->mode == AUX_LIVE)
            c->cfwd = c->cin.len;
        int e = client_scan(a, c);
        if (e < 0)
            return e;
    }
}

static int on_upstream_read(struct auxlog *a, struct aux_conv *c)
{
    uint8_t tmp[AUX_READ_CHUNK];

    for (;;) {
        if (c->cout.len >= AUX_HIGH_WATER)
            return 0;
        ssize_t n = conv_recv(c->ufd, tmp, sizeof(tmp), &c->u_eof);
        if (n <= 0)
            return (int)n;
        c->bytes_s += (uint64_t)n;
        if (c->mode == AUX_RELAY) {
            if (to_client(c, tmp, (size_t)n) < 0)
                return -ENOMEM;
            continue;
        }
        if (c->mode == AUX_REPLAY) {
            /* The server was told nothing; whatever it says (a timeout) is not the client's. */
            if (!c->stray_warned)
                rs_log("dropped %zd unexpected bytes from upstream during replay backend=%s txn=%s", n,
                       RS_A(c->peer), RS_TXN(c->txn));
            c->stray_warned = true;
            continue;
        }
        if (buf_add(&c->sin, tmp, (size_t)n) < 0)
            return -ENOMEM;
        int e = server_scan(a, c);
        if (e < 0)
            return e;
    }
}

/* Half-closes and closes as the two sides finish.  Returns true when 'c'
 * was closed. */
static bool conv_progress(struct auxlog *a, struct aux_conv *c)
{
    int e;

    if (!c->connecting && (e = flush_fd(c->ufd, &c->uout)) < 0 && !c->u_eof) {
        conv_error(a, c, "send upstream", e);
        return true;
    }
    if (c->draining) {
        if (c->nr >= c->nc || c->u_eof || c->mode != AUX_LIVE) {
            conv_close(a, c, "superseded (drained)");
            return true;
        }
        if (c->rec)
            replay_wake(a, c->rec);
        conv_arm(a, c);
        return false;
    }
    if ((e = flush_fd(c->cfd, &c->cout)) < 0) {
        conv_close(a, c, "backend gone");
        return true;
    }
    if (c->mode == AUX_REPLAY) {
        /* The server never saw this conversation: end it with the client. */
        if (c->c_eof && !c->cout.len) {
            conv_close(a, c, "backend closed");
            return true;
        }
    } else {
        if (c->c_eof && !c->uout.len && !c->u_shut && !c->connecting) {
            shutdown(c->ufd, SHUT_WR);
            c->u_shut = true;
        }
        if (c->u_eof && !c->cout.len && !c->c_shut) {
            shutdown(c->cfd, SHUT_WR);
            c->c_shut = true;
        }
        if (c->c_eof && c->u_eof && !c->cout.len) {
            conv_close(a, c, "closed");
            return true;
        }
        if (c->u_eof && c->uout.len) {
            conv_close(a, c, "upstream closed");
            return true;
        }
    }
    conv_arm(a, c);
    return false;
}

static void conv_event(struct auxlog *a, struct aux_conv *c, bool upstream, uint32_t events)
{
    int e = 0;

    if (upstream && c->connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = rs_sock_error(c->ufd);

        if (err) {
            conv_error(a, c, "connect upstream", err);
            return;
        }
        c->connecting = false;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        e = upstream ? (c->connecting ? 0 : on_upstream_read(a, c)) : on_client_read(a, c);
        if (e == -EACCES) {     /* another backend re-runs its transaction */
            conv_close(a, c, "superseded");
            return;
        }
        if (e < 0) {
            conv_error(a, c, upstream ? "upstream" : "backend", e);
            return;
        }
    }
    conv_progress(a, c);
}

static void on_client(struct rs_io *io, uint32_t events)
{
    struct aux_conv *c = io->ctx;

    conv_event(c->a, c, false, events);
}

static void on_upstream(struct rs_io *io, uint32_t events)
{
    struct aux_conv *c = io->ctx;

    conv_event(c->a, c, true, events);
}

int conv_accept(void *ctx, int fd, const struct sockaddr_in *sin)
{
    struct listener *l = ctx;
    struct auxlog *a = l->a;
    struct aux_conv *c;
    struct sockaddr_in up = rs_addr_sin(l->up);
    int one = 1, ufd;

    if (a->n_convs >= AUX_CONV_MAX) {
        a->refused++;
        rs_log("refused %s backend=%s why=max-conns", proto_name(l->proto), RS_A(rs_addr_of_sin(sin)));
        close(fd);
        return 0;
    }
    tap_judging(a, true);       /* --tap: the relay only serves re-runs then */
    c = calloc(1, sizeof(*c));
    ufd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!c || ufd < 0) {
        free(c);
        if (ufd >= 0)
            close(ufd);
        close(fd);
        a->errors++;
        return -ENOMEM;
    }
    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->id = ++a->next_id;
    c->a = a;
    c->proto = l->proto;
    c->cfd = fd;
    c->ufd = ufd;
    c->peer = rs_addr_of_sin(sin);
    c->up = l->up;
    c->start_ns = rs_mono_ns();
    rs_aux_split_init(&c->cs, c->proto, RS_AUX_CLIENT, AUX_LINE_MAX, AUX_UNIT_MAX);
    rs_aux_split_init(&c->ss, c->proto, RS_AUX_SERVER, AUX_LINE_MAX, AUX_UNIT_MAX);
    c->rec = record_new(c->proto, c->peer.ip);
    c->nc = 1;      /* unit 0 is the greeting */
    RS_LIST_PUSH(a->convs, c);
    a->n_convs++;
    a->conns++;
    if (!c->rec || record_push(a, c->rec, NULL, 0, NULL) < 0) {
        conv_error(a, c, "record", ENOMEM);
        return 0;
    }
    if (rs_io_start(&a->loop, &c->cio, fd, EPOLLIN, on_client, c) < 0
        || rs_io_start(&a->loop, &c->uio, ufd, EPOLLIN, on_upstream, c) < 0) {
        conv_error(a, c, "epoll", errno);
        return 0;
    }
    if (connect(ufd, (struct sockaddr *)&up, sizeof(up)) < 0) {
        if (errno != EINPROGRESS) {
            conv_error(a, c, "connect upstream", errno);
            return 0;
        }
        c->connecting = true;
    }
    conv_arm(a, c);
    return 0;
}

