/* rs-logger's control plane (docs/recovery.md): the control port (RECOVER
 * goes to the planner, plan.c; HEARTBEAT and FAILURE that come over TCP go
 * to the liveness thread), the persistent peers (TXN_LOGGED to the
 * alternate's rs-stated, SUSPECT to the proxy), and the resend port that
 * serves logged response bytes.  Everything runs on the main thread's loop
 * without blocking. */
#include <errno.h>
#include <inttypes.h>
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

/* ---- peers ------------------------------------------------------------------------ */

static void on_peer_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    if (m->type == RS_CTL_ACK && m->u.ack.status)
        rs_log("peer %s=%s: %s answered status=%d (%s)", c->name, RS_A(c->addr), rs_ctl_type_str(m->u.ack.echo_type),
               m->u.ack.status, strerror(-m->u.ack.status));
    else if (m->type != RS_CTL_ACK)
        rs_log("peer %s=%s: unexpected %s", c->name, RS_A(c->addr), rs_ctl_type_str(m->type));
}

void lg_ctl_txn_logged(struct logger *lg, rs_txn_id txn, uint32_t resp_end)
{
    struct rs_ctl_msg m = { .type = RS_CTL_TXN_LOGGED };

    if (!lg->has_stated || !lg->st.loop)
        return;
    m.u.txn_logged = (struct rs_ctl_txn_logged){ txn, resp_end };
    rs_ctl_send(&lg->st, &m);
}

void lg_ctl_suspect(struct logger *lg, const struct lg_conn *c, uint32_t silent_ms)
{
    struct rs_ctl_msg m = { .type = RS_CTL_SUSPECT };

    lg->s.suspects++;
    rs_log("suspect client=%s silent_ms=%u txns=%u done=%u", RS_A(((struct rs_addr){ c->ip, c->port })), silent_ms,
           rs_http_txn_count(&c->http), rs_http_resp_done_count(&c->http));
    if (!lg->has_proxy || !lg->px.loop)
        return;
    m.u.suspect = (struct rs_ctl_suspect){ { c->ip, c->port }, RS_CTL_SUSPECT_STALL, silent_ms };
    rs_ctl_send(&lg->px, &m);
}

/* ---- the control port --------------------------------------------------------------- */

static void on_ctl(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct logger *lg = c->ctx;

    switch (m->type) {
    case RS_CTL_HEARTBEAT:
    case RS_CTL_FAILURE:
        lg_live_report(lg, m);
        rs_ctl_ack(c, m, 0);
        break;
    case RS_CTL_RECOVER:
        lg_plan_start(lg, c->id, m);
        break;
    case RS_CTL_ACK:
        break;
    default:
        rs_ctl_ack(c, m, -EOPNOTSUPP);
    }
}

/* ---- resend port ---------------------------------------------------------------- */

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
    if (used <= 0 || m.type != RS_CTL_RESEND) {
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
static void resend_tick(struct logger *lg, uint64_t now)
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

/* ---- set-up, ticks ---------------------------------------------------------------- */

static void on_tick(struct rs_timer *t)
{
    struct logger *lg = t->ctx;
    uint64_t now = rs_loop_now(&lg->loop);

    resend_tick(lg, now);
    if (lg->stall_after_ns && now - lg->last_stall_ns >= lg->stall_after_ns / 10) {
        lg->last_stall_ns = now;
        lg_conn_check_stalls(lg, now);
    }
    if (now - lg->last_gc_ns > 1000000000ull) {
        lg_conn_gc(lg, now);
        lg->last_gc_ns = now;
    }
    rs_timer_after(&lg->loop, t, 10 * 1000000ull);
}

int lg_ctl_setup(struct logger *lg)
{
    int fd, e;

    if ((e = rs_ctlserver_open(&lg->ctlsrv, &lg->loop, lg->listen, &lg->key, &lg->seq, LG_SENDER_REPLY, on_ctl,
                               lg))) {
        rs_log("cannot listen on %s: %s", RS_A(lg->listen), strerror(-e));
        return e;
    }
    if ((fd = rs_listen_tcp(lg->resend, 1024)) < 0
        || (e = rs_io_start(&lg->loop, &lg->resend_io, fd, EPOLLIN, on_resend_accept, lg))) {
        e = fd < 0 ? fd : e;
        rs_log("cannot listen on %s: %s", RS_A(lg->resend), strerror(-e));
        return e;
    }
    if (lg->has_proxy)
        rs_ctlconn_peer(&lg->px, &lg->loop, "proxy", lg->proxy, &lg->key, &lg->seq, LG_SENDER_PROXY, LG_PEER_QUEUE,
                        on_peer_msg, NULL, lg);
    if (lg->has_stated)
        rs_ctlconn_peer(&lg->st, &lg->loop, "stated", lg->stated, &lg->key, &lg->seq, LG_SENDER_STATED,
                        LG_PEER_QUEUE, on_peer_msg, NULL, lg);
    if ((e = lg_live_start(lg))) {
        rs_log("cannot start the liveness thread: %s", strerror(-e));
        return e;
    }
    rs_timer_init(&lg->tick, on_tick, lg);
    rs_timer_after(&lg->loop, &lg->tick, 10 * 1000000ull);
    return 0;
}

void lg_ctl_shutdown(struct logger *lg)
{
    lg_live_stop(lg);
    lg_plan_abort_all(lg);
    while (lg->resends)
        resend_end(lg, lg->resends, "rst");
    rs_ctlserver_close(&lg->ctlsrv);
    rs_ctlconn_close(&lg->px);
    rs_ctlconn_close(&lg->st);
}
