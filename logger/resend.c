/* rs-logger's resend port: after a crash the proxy splices the client to a
 * connection from here, which sends the logged response bytes [from, to)
 * the client lacks (RESEND{X, from, to}, its first frame), then holds the
 * socket until the client has acknowledged them and closes it silently
 * (TCP_REPAIR: no FIN, no RST reaches a client the proxy moved on). */
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "logger.h"
#include "seq.h"

#define RESEND_FRAME_NS (5ull * 1000000000ull)   /* to send the RESEND frame */

enum resend_state { RS_WAIT_FRAME, RS_SENDING, RS_HOLDING };

struct resend_conn {
    struct resend_conn *next;
    struct logger *lg;
    struct rs_io io;
    enum resend_state state;
    uint8_t buf[LG_CTL_BUF];
    size_t len;
    struct rs_ctl_replay replay;
    struct rs_addr client;
    uint32_t from, to;
    uint8_t *data;
    size_t dlen, dpos;
    uint64_t deadline_ns;
};

static void resend_end(struct logger *lg, struct resend_conn *r, const char *how)
{
    struct resend_conn **pp = (struct resend_conn **)&lg->resends;

    while (*pp && *pp != r)
        pp = &(*pp)->next;
    if (*pp)
        *pp = r->next;
    rs_io_stop(&r->io);
    if (!strcmp(how, "rst")) {
        struct linger l = { 1, 0 };
        setsockopt(r->io.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    } else if (!strcmp(how, "silent")) {
        int one = 1;   /* in repair mode a close sends nothing at all */
        setsockopt(r->io.fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one));
    }
    close(r->io.fd);
    free(r->data);
    free(r);
}

static void resend_write(struct logger *lg, struct resend_conn *r)
{
    while (r->dpos < r->dlen) {
        ssize_t n = send(r->io.fd, r->data + r->dpos, r->dlen - r->dpos, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            r->dpos += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            rs_io_set(&r->io, EPOLLIN | EPOLLOUT);
            return;
        }
        lg->s.resend_errors++;
        rs_log("resend client=%s [%u,%u) write failed at %zu: %s", RS_A(r->client), r->from, r->to, r->dpos,
               strerror(errno));
        resend_end(lg, r, "rst");
        return;
    }
    rs_log("resend client=%s [%u,%u) sent bytes=%zu", RS_A(r->client), r->from, r->to, r->dlen);
    free(r->data);
    r->data = NULL;
    r->state = RS_HOLDING;
    r->deadline_ns = rs_loop_now(&lg->loop) + LG_RESEND_HOLD_NS;
    rs_io_set(&r->io, EPOLLIN);
}

/* The first frame of a resend connection: RESEND{X, from, to}. */
static void resend_start(struct logger *lg, struct resend_conn *r, const struct rs_ctl_resend *rq)
{
    struct lg_conn *c = lg_conn_find(lg, rq->client.ip4, rq->client.port);
    uint32_t len = rs_seq_dist(rq->from, rq->to);
    int e = 0;

    r->client = (struct rs_addr){ rq->client.ip4, rq->client.port };
    r->from = rq->from;
    r->to = rq->to;
    if (!c || !c->started)
        e = -ENOENT;
    else if (len > RS_REASM_CAP_MAX)
        e = -EINVAL;
    else if (!(r->data = malloc(len ? len : 1)))
        e = -ENOMEM;
    else
        e = rs_reasm_read(&c->rs[LG_RESP], rq->from, len, r->data);   /* a copy: release may go on */
    if (e) {
        lg->s.resend_errors++;
        rs_log("resend client=%s [%u,%u) refused: %s", RS_A(r->client), r->from, r->to, strerror(-e));
        resend_end(lg, r, "rst");
        return;
    }
    lg->s.resends++;
    r->dlen = len;
    r->state = RS_SENDING;
    resend_write(lg, r);
}

static void on_resend(struct rs_io *io, uint32_t events)
{
    struct resend_conn *r = io->ctx;
    struct logger *lg = r->lg;
    struct rs_ctl_msg m;
    ssize_t n;
    int used;

    if (r->state == RS_SENDING && (events & EPOLLOUT)) {
        resend_write(lg, r);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    if (r->state != RS_WAIT_FRAME) {
        uint8_t junk[4096];
        n = recv(io->fd, junk, sizeof(junk), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            rs_log("resend client=%s peer closed", RS_A(r->client));
            resend_end(lg, r, "close");
        }
        return;
    }
    n = recv(io->fd, r->buf + r->len, sizeof(r->buf) - r->len, MSG_DONTWAIT);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        resend_end(lg, r, "rst");
        return;
    }
    r->len += (size_t)n;
    used = rs_ctl_decode(&lg->key, &r->replay, r->buf, r->len, &m);
    if (used == 0 && r->len < sizeof(r->buf))
        return;
    if (used <= 0 || m.type != RS_CTL_RESEND || !rs_ctl_role_may_send(rs_ctl_sender_role(m.sender), m.type)) {
        lg->s.ctl_rejected++;
        rs_log("resend: rejected first frame: %s", used < 0 ? strerror(-used) : used ? rs_ctl_type_str(m.type)
                                                                                  : "too long");
        resend_end(lg, r, "rst");
        return;
    }
    resend_start(lg, r, &m.u.resend);
}

static void on_resend_accept(struct rs_io *io, uint32_t events)
{
    struct logger *lg = io->ctx;

    (void)events;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct resend_conn *r;

        if (fd < 0)
            return;
        r = calloc(1, sizeof(*r));
        if (!r || rs_io_start(&lg->loop, &r->io, fd, EPOLLIN, on_resend, r)) {
            close(fd);
            free(r);
            continue;
        }
        r->lg = lg;
        r->deadline_ns = rs_loop_now(&lg->loop) + RESEND_FRAME_NS;
        rs_ctl_replay_init(&r->replay);
        r->next = lg->resends;
        lg->resends = r;
    }
}

/* Periodic: resend connections that waited too long for their frame, and
 * finished ones: once the client has acknowledged every byte (the proxy has
 * moved it on), the socket closes without a sound. */
void lg_resend_tick(struct logger *lg, uint64_t now)
{
    for (struct resend_conn *r = lg->resends, *next; r; r = next) {
        int unacked = 0;

        next = r->next;
        if (r->state == RS_HOLDING && !ioctl(r->io.fd, SIOCOUTQ, &unacked) && unacked == 0) {
            resend_end(lg, r, "silent");
            continue;
        }
        if (now < r->deadline_ns || r->state == RS_SENDING)
            continue;
        if (r->state == RS_WAIT_FRAME)
            rs_log("resend: no RESEND frame in time");
        else
            rs_log("resend client=%s [%u,%u) held 30 s: closing", RS_A(r->client), r->from, r->to);
        resend_end(lg, r, r->state == RS_HOLDING ? "silent" : "rst");
    }
}

int lg_resend_open(struct logger *lg)
{
    int fd, e;

    if ((fd = rs_listen_tcp(lg->resend, 1024)) < 0
        || (e = rs_io_start(&lg->loop, &lg->resend_io, fd, EPOLLIN, on_resend_accept, lg))) {
        e = fd < 0 ? fd : e;
        rs_log("cannot listen on %s: %s", RS_A(lg->resend), strerror(-e));
        return e;
    }
    return 0;
}

void lg_resend_close_all(struct logger *lg)
{
    while (lg->resends)
        resend_end(lg, lg->resends, "rst");
}
