/* rs-stated: the per-backend state agent of docs/recovery.md.  Buffers the
 * peer backend's STATE_UPDATEs per client connection and applies them to the
 * local app (through its state library, libstate/rs_state.h) once the logger says the
 * transaction is logged; answers STATE_QUERY / APPLY / CONN_MAP / FENCE;
 * relays the local app's own updates to the peer; heartbeats to the logger
 * (UDP, from a real-time thread of its own, so a busy host does not make a
 * healthy backend look dead) while the app is connected, and reports its
 * death at once.  The rest runs on one event loop (common/loop.h), with
 * its control port and the peer link on common/ctlconn.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctlconn.h"
#include "daemon.h"
#include "loop.h"
#include "parse.h"
#include "stated.h"
#include "xfer_rec.h"

/* ---- Limits ----------------------------------------------------------- */

#define LIB_OUT_MAX     (32u << 20)     /* records queued to the app library */
#define LIB_OPS_MAX     65536u          /* records the library has not answered yet */
#define RELAY_MAX       8192u           /* relayed updates not yet acknowledged */
#define PEER_OUT_MAX    (16u << 20)     /* relayed bytes queued for the peer */
#define HB_PRIO         20              /* SCHED_FIFO priority of the heartbeat thread */
#define FAILURE_COPIES  3               /* a FAILURE datagram goes out this many times */
#define FENCED_MAX      16

/* Sender ids: role BACKEND in the top byte, the backend id, and one channel
 * per connection kind, so that a receiver checking sequences per sender
 * never sees one counter interleaved over two connections. */
#define SENDER(id, ch)  (((uint32_t)RS_CTL_ROLE_BACKEND << 24) | ((id) << 4) | (ch))
enum { CH_REPLY = 1, CH_PEER = 2, CH_HEARTBEAT = 3, CH_FAILURE = 4 };

/* ---- Types ------------------------------------------------------------ */

/* A control request answered once the app library has answered. */
struct waiter {
    uint64_t conn_id;
    uint64_t seq;
    uint8_t type;
    uint32_t remaining;         /* library records still unanswered */
    bool armed;                 /* every record is queued: answer at remaining 0 */
    int status;
};

struct lib_op {
    uint32_t id;
    struct waiter *w;           /* NULL: an automatic apply */
    rs_txn_id txn;              /* APPLY's transaction, for the log */
};

/* A STATE_UPDATE relayed for the app: a call on the peer link. */
struct relay {
    struct rs_ctl_call call;
    struct stated *s;
    uint64_t app_gen;
    uint32_t lib_id;
    rs_txn_id txn;
    bool done;
};

struct stats {
    uint64_t ctl_frames, updates, update_bytes, updates_refused,
        updates_stale, logged, applied, applied_forced, apply_errors, queries, conn_maps,
        relayed, relay_acked, relay_failed, heartbeats, failures_sent, app_connects,
        app_disconnects, updates_fenced, relays_degraded;
};

struct stated {
    uint32_t id;
    struct rs_addr listen, peer, logger;
    bool has_peer, has_logger;
    const char *app_path;
    uint64_t heartbeat_ns, relay_timeout_ns;
    struct rs_ctl_key key;
    uint64_t seq;
    struct rs_loop loop;
    struct rs_ctlserver ctlsrv;
    struct rs_io app_io;                /* the unix socket the library connects to */
    /* The app library's connection. */
    int lib_fd;                         /* lib_io.fd while connected, else -1 */
    struct rs_io lib_io;
    uint64_t lib_gen;
    uint8_t *lib_in;
    size_t lib_in_len;
    uint8_t *lib_out;
    size_t lib_out_off, lib_out_len, lib_out_cap;
    uint32_t lib_next_id;
    struct lib_op ops[LIB_OPS_MAX];
    uint32_t ops_head, ops_len;
    bool drain_blocked;
    struct waiter *cur_waiter;          /* for apply_fn during an APPLY */
    /* Outgoing: the peer's stated; UDP datagrams to the logger. */
    struct rs_ctlconn peer_link;
    struct relay relays[RELAY_MAX];
    uint32_t rel_head, rel_len;
    int udp_fd;                         /* connected to the logger */
    uint64_t fail_seq;
    pthread_t hb_thread;
    bool hb_started;
    int app_up;                         /* the heartbeat thread reads it (atomics) */
    pid_t app_pid;                      /* the library's process, for a fence */
    /* Fencing (FENCE from the proxy): this backend's own, its peer's, others'. */
    bool self_fenced, peer_fenced;
    uint32_t fenced[FENCED_MAX];
    unsigned n_fenced;
    struct st_store store;
    struct stats st;
};

static const char *txn_str(rs_txn_id id, char buf[RS_TXN_ID_STRLEN])
{
    rs_txn_id_format(id, buf, RS_TXN_ID_STRLEN);
    return buf;
}
#define TXN(id) txn_str((id), (char[RS_TXN_ID_STRLEN]){ 0 })

/* Makes room for 'n' more bytes in a growable buffer bounded by 'max'.
 * Returns 0 or -ENOBUFS. */
static int buf_reserve(uint8_t **buf, size_t *off, size_t *len, size_t *cap, size_t max, size_t n)
{
    if (*off > 0 && *len + n > *cap) {
        memmove(*buf, *buf + *off, *len - *off);
        *len -= *off;
        *off = 0;
    }
    if (*len + n <= *cap)
        return 0;
    if (*len + n > max)
        return -ENOBUFS;
    size_t nc = *cap ? *cap : 4096;
    while (nc < *len + n)
        nc *= 2;
    if (nc > max)
        nc = max;
    uint8_t *nb = realloc(*buf, nc);
    if (!nb)
        return -ENOBUFS;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* Sends bytes [*off, len) of 'buf' on non-blocking 'fd' until the socket
 * is full, advancing '*off'.  Returns 0 or a negative errno. */
static int send_some(int fd, const uint8_t *buf, size_t len, size_t *off)
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

/* ---- Control requests answered later ---------------------------------- */

/* Answers a deferred request once every record is queued and answered. */
static void waiter_check(struct stated *s, struct waiter *w)
{
    struct rs_ctlconn *cc;

    if (!w->armed || w->remaining)
        return;
    cc = rs_ctlserver_find(&s->ctlsrv, w->conn_id);
    if (cc) {
        struct rs_ctl_msg req = { .type = w->type, .seq = w->seq };
        rs_ctl_ack(cc, &req, w->status < -4095 ? -EPROTO : w->status);
    }
    free(w);
}

/* ---- The app library's connection ------------------------------------- */

static void lib_set_events(struct stated *s)
{
    rs_io_set(&s->lib_io, EPOLLIN | (s->lib_out_off < s->lib_out_len ? EPOLLOUT : 0));
}

static int lib_flush(struct stated *s)
{
    int err = send_some(s->lib_fd, s->lib_out, s->lib_out_len, &s->lib_out_off);

    if (err < 0)
        return err;
    if (s->lib_out_off == s->lib_out_len)
        s->lib_out_off = s->lib_out_len = 0;
    lib_set_events(s);
    return 0;
}

/* Queues record 'r' for the library (a socket error shows up as EPOLLHUP
 * and is handled there).  Returns 0, -ENOTCONN or -ENOBUFS. */
static int lib_send(struct stated *s, const struct rs_xfer_rec *r)
{
    size_t n = rs_xfer_rec_size(r);

    if (s->lib_fd < 0)
        return -ENOTCONN;
    if (buf_reserve(&s->lib_out, &s->lib_out_off, &s->lib_out_len, &s->lib_out_cap, LIB_OUT_MAX, n))
        return -ENOBUFS;
    s->lib_out_len += rs_xfer_rec_encode(r, s->lib_out + s->lib_out_len);
    lib_flush(s);
    return 0;
}

/* Sends a request record (APPLY, CONN_MAP) whose DONE 'w' waits for. */
static int lib_request(struct stated *s, struct rs_xfer_rec *r, struct waiter *w)
{
    int err;

    if (s->lib_fd < 0)
        return -ENOTCONN;
    if (s->ops_len == LIB_OPS_MAX)
        return -ENOBUFS;
    r->id = ++s->lib_next_id;
    err = lib_send(s, r);
    if (err < 0)
        return err;
    s->ops[(s->ops_head + s->ops_len++) % LIB_OPS_MAX] = (struct lib_op){ r->id, w, r->txn };
    if (w)
        w->remaining++;
    return 0;
}

/* st_apply_fn: one state to the app. */
static int apply_fn(void *ctx, rs_txn_id id, const uint8_t *data, uint32_t len)
{
    struct stated *s = ctx;
    struct rs_xfer_rec r = { .type = RS_XFER_APPLY, .txn = id, .state = data, .len = len };
    int err = lib_request(s, &r, s->cur_waiter);

    if (err == -ENOBUFS)
        s->drain_blocked = true;
    if (err == 0) {
        s->st.applied++;
        if (s->cur_waiter)
            s->st.applied_forced++;
        rs_log("apply %s %uB%s", TXN(id), len, s->cur_waiter ? " forced" : "");
    }
    return err;
}

/* Applies what the logger has released, for every client (after the app
 * connects or its queue drains). */
static void drain_all(struct stated *s)
{
    s->drain_blocked = false;
    for (uint32_t b = 0; b < ST_BUCKETS && s->lib_fd >= 0; b++)
        for (struct st_client *c = s->store.buckets[b]; c; c = c->hnext)
            if (c->head)
                st_store_drain(&s->store, c, false, 0, apply_fn, s);
}

static void lib_close(struct stated *s, const char *why)
{
    if (s->lib_fd < 0)
        return;
    rs_log("app-disconnect %s pending=%u", why, s->ops_len);
    s->st.app_disconnects++;
    rs_io_stop(&s->lib_io);
    close(s->lib_fd);
    s->lib_fd = s->lib_io.fd = -1;
    free(s->lib_in);
    free(s->lib_out);
    s->lib_in = s->lib_out = NULL;
    s->lib_in_len = s->lib_out_off = s->lib_out_len = s->lib_out_cap = 0;
    while (s->ops_len) {
        struct lib_op *op = &s->ops[s->ops_head];

        s->ops_head = (s->ops_head + 1) % LIB_OPS_MAX;
        s->ops_len--;
        if (op->w) {
            op->w->status = -ECONNRESET;
            op->w->remaining--;
            waiter_check(s, op->w);
        }
    }
    __atomic_store_n(&s->app_up, 0, __ATOMIC_RELEASE);
}

/* Relays the app's UPDATE to the peer; answered by DONE when the peer ACKs. */
static void relay_update(struct stated *s, const struct rs_xfer_rec *r);
static void send_failure(struct stated *s);

/* Handles one record from the app.  Returns false when the socket closed. */
static bool on_lib_record(struct stated *s, const struct rs_xfer_rec *r)
{
    switch (r->type) {
    case RS_XFER_UPDATE:
        relay_update(s, r);
        break;
    case RS_XFER_DONE: {
        struct lib_op *op;

        if (!s->ops_len || s->ops[s->ops_head].id != r->id) {
            rs_log("app-done id=%u unexpected (ignored)", r->id);
            break;
        }
        op = &s->ops[s->ops_head];
        s->ops_head = (s->ops_head + 1) % LIB_OPS_MAX;
        s->ops_len--;
        if (r->status < 0 && op->txn) {
            s->st.apply_errors++;
            rs_log("apply %s refused by the app: %s", TXN(op->txn), strerror(-r->status));
        }
        if (op->w) {
            if (r->status < 0)
                op->w->status = r->status >= -4095 ? r->status : -EPROTO;
            op->w->remaining--;
            waiter_check(s, op->w);
        }
        break;
    }
    default:
        rs_log("app-record type=%u unexpected (ignored)", r->type);
    }
    return s->lib_fd >= 0;
}

/* Reads what the app's socket has into s->lib_in and handles each complete
 * record.  Returns 0 when the socket has nothing more for now, -ECANCELED
 * when a record's handler closed it, -ESHUTDOWN at the end of the stream,
 * -EBADMSG on a malformed record, or recv's negative errno. */
static int lib_read(struct stated *s)
{
    for (;;) {
        size_t off = 0;
        ssize_t n = recv(s->lib_fd, s->lib_in + s->lib_in_len, RS_XFER_IN_CAP - s->lib_in_len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        if (n == 0)
            return -ESHUTDOWN;
        s->lib_in_len += (size_t)n;
        for (;;) {
            struct rs_xfer_rec r;
            long used = rs_xfer_rec_decode(s->lib_in + off, s->lib_in_len - off, &r);

            if (used == 0)
                break;
            if (used < 0)
                return -EBADMSG;
            off += (size_t)used;
            if (!on_lib_record(s, &r))
                return -ECANCELED;
        }
        memmove(s->lib_in, s->lib_in + off, s->lib_in_len - off);
        s->lib_in_len -= off;
    }
}

static void on_lib(struct rs_io *io, uint32_t events)
{
    struct stated *s = io->ctx;
    int err = events & EPOLLOUT ? lib_flush(s) : 0;

    if (err < 0) {
        lib_close(s, strerror(-err));
        send_failure(s);
        return;
    }
    if (s->lib_fd >= 0 && s->drain_blocked && s->lib_out_len == 0)
        drain_all(s);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    err = lib_read(s);
    if (err < 0 && err != -ECANCELED) {
        lib_close(s, err == -ESHUTDOWN ? "closed" : err == -EBADMSG ? "malformed record" : strerror(-err));
        send_failure(s);   /* the app's process died: tell the logger now */
    }
}

static void on_lib_accept(struct rs_io *io, uint32_t events)
{
    struct stated *s = io->ctx;

    (void)events;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0)
            return;
        if (s->lib_fd >= 0 || s->self_fenced) {
            rs_log("app-connect refused: %s", s->self_fenced ? "this backend is fenced (readmit it first)"
                                                               : "an app is already connected");
            close(fd);
            continue;
        }
        s->lib_in = malloc(RS_XFER_IN_CAP);
        if (!s->lib_in) {
            rs_log("app-connect refused: no memory");
            close(fd);
            continue;
        }
        if (rs_io_start(&s->loop, &s->lib_io, fd, EPOLLIN, on_lib, s) < 0) {
            close(fd);
            free(s->lib_in);
            s->lib_in = NULL;
            continue;
        }
        s->lib_fd = fd;
        s->lib_gen++;
        {
            struct ucred cr;
            socklen_t cl = sizeof(cr);
            s->app_pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) ? 0 : cr.pid;
        }
        __atomic_store_n(&s->app_up, 1, __ATOMIC_RELEASE);
        s->st.app_connects++;
        rs_log("app-connect pid=%d: heartbeating to %s", (int)s->app_pid,
               s->has_logger ? RS_A(s->logger) : "(no logger)");
        drain_all(s);
    }
}

/* ---- Relaying the app's updates ---------------------------------------- */

static void relay_pop_done(struct stated *s)
{
    while (s->rel_len && s->relays[s->rel_head].done) {
        s->rel_head = (s->rel_head + 1) % RELAY_MAX;
        s->rel_len--;
    }
}

static void relay_done(struct stated *s, struct relay *rl, int status)
{
    struct rs_xfer_rec r = { .type = RS_XFER_DONE, .id = rl->lib_id, .status = status };

    rl->done = true;
    if (status == 0) {
        s->st.relay_acked++;
    } else {
        s->st.relay_failed++;
        rs_log("relay %s failed: %s", TXN(rl->txn), strerror(-status));
    }
    if (rl->app_gen == s->lib_gen && s->lib_fd >= 0)
        lib_send(s, &r);
}

/* The peer's ACK of a relayed update, or its time-out, or the link's end:
 * the app hears it (a synchronous update is held until then). */
static void on_relay_ack(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct relay *rl = call->ctx;

    relay_done(rl->s, rl, err ? err : reply->u.ack.status);
    relay_pop_done(rl->s);
}

static void relay_update(struct stated *s, const struct rs_xfer_rec *r)
{
    struct rs_xfer_rec done = { .type = RS_XFER_DONE, .id = r->id };
    struct rs_ctl_msg m = { .type = RS_CTL_STATE_UPDATE };
    struct relay *rl;
    int err;

    if (!s->has_peer || s->peer_fenced) {
        /* No standby (or it was declared failed): the app answers at once,
         * unreplicated, instead of waiting for a peer that will not come. */
        done.status = s->has_peer ? -EHOSTDOWN : -ENOTCONN;
        if (s->peer_fenced && s->st.relays_degraded++ % 1000 == 0)
            rs_log("relay %s: the peer is fenced, degraded (updates not replicated)", TXN(r->txn));
        lib_send(s, &done);
        return;
    }
    if (s->rel_len == RELAY_MAX) {
        err = -ENOBUFS;
    } else {
        rl = &s->relays[(s->rel_head + s->rel_len) % RELAY_MAX];
        *rl = (struct relay){ .s = s, .app_gen = s->lib_gen, .lib_id = r->id, .txn = r->txn };
        m.u.state_update = (struct rs_ctl_state_update){ r->txn, r->sync, r->len, r->state };
        err = rs_ctl_call(&s->peer_link, &m, RS_CTL_ACK, &rl->call, s->relay_timeout_ns, on_relay_ack, rl);
        if (!err) {
            s->rel_len++;
            s->st.relayed++;
            rs_log("relay %s %uB%s seq=%" PRIu64, TXN(r->txn), r->len, r->sync ? " sync" : "", m.seq);
            return;
        }
    }
    s->st.relay_failed++;
    rs_log("relay %s refused: %s", TXN(r->txn), strerror(-err));
    done.status = err;
    lib_send(s, &done);
}

/* Ends every relay in flight with 'status' (the peer was fenced). */
static void relay_fail_all(struct stated *s, int status)
{
    for (uint32_t i = 0; i < s->rel_len; i++) {
        struct relay *rl = &s->relays[(s->rel_head + i) % RELAY_MAX];
        if (!rl->done) {
            rs_ctl_call_cancel(&rl->call);
            relay_done(s, rl, status);
        }
    }
    relay_pop_done(s);
}

static void on_peer_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    rs_log("%s-reply type=%s unexpected (ignored)", c->name, rs_ctl_type_str(m->type));
}

static void peer_open(struct stated *s)
{
    rs_ctlconn_peer(&s->peer_link, &s->loop, "peer", s->peer, &s->key, &s->seq, SENDER(s->id, CH_PEER),
                    PEER_OUT_MAX, on_peer_msg, NULL, s);
}

/* The app's process is gone: the logger hears it at once (a few copies of
 * one datagram; a lost heartbeat-silence would tell it too, later). */
static void send_failure(struct stated *s)
{
    struct rs_ctl_msg m = { .type = RS_CTL_FAILURE };
    uint8_t buf[128];

    if (s->udp_fd < 0)
        return;
    m.sender = SENDER(s->id, CH_FAILURE);
    m.u.failure.backend_id = s->id;
    m.u.failure.reason = RS_CTL_FAIL_EXITED;
    for (int i = 0; i < FAILURE_COPIES; i++) {
        int n;
        m.seq = ++s->fail_seq;
        n = rs_ctl_encode(&s->key, &m, buf, sizeof(buf));
        if (n > 0 && send(s->udp_fd, buf, (size_t)n, MSG_DONTWAIT) != n)
            rs_log("failure report to %s: %s", RS_A(s->logger), strerror(errno));
    }
    s->st.failures_sent++;
    rs_log("failure-sent backend=%u reason=EXITED to %s", s->id, RS_A(s->logger));
}

/* The heartbeat thread: every --heartbeat while the app is connected, one
 * datagram.  Real-time priority so that neither the app's own load nor
 * anything else on the host delays it into a false failure. */
static void *heartbeats(void *arg)
{
    struct stated *s = arg;
    struct sched_param sp = { .sched_priority = HB_PRIO };
    struct rs_ctl_msg m = { .type = RS_CTL_HEARTBEAT };
    struct timespec next;
    uint8_t buf[128];
    int e = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);

    if (e)
        rs_log("heartbeat: real-time priority refused (%s)", strerror(e));
    m.sender = SENDER(s->id, CH_HEARTBEAT);
    m.seq = rs_now_us();
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        uint64_t ns = (uint64_t)next.tv_nsec + s->heartbeat_ns;
        next.tv_sec += (time_t)(ns / 1000000000u);
        next.tv_nsec = (long)(ns % 1000000000u);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        if (!__atomic_load_n(&s->app_up, __ATOMIC_ACQUIRE))
            continue;
        m.seq++;
        m.u.heartbeat = (struct rs_ctl_heartbeat){ RS_CTL_ROLE_BACKEND, s->id, rs_now_us() };
        int n = rs_ctl_encode(&s->key, &m, buf, sizeof(buf));
        if (n > 0 && send(s->udp_fd, buf, (size_t)n, MSG_DONTWAIT) == n)
            __atomic_add_fetch(&s->st.heartbeats, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* ---- Control requests -------------------------------------------------- */

static bool is_fenced(const struct stated *s, uint32_t id)
{
    for (unsigned i = 0; i < s->n_fenced; i++)
        if (s->fenced[i] == id)
            return true;
    return false;
}

static void on_state_update(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    const struct rs_ctl_state_update *u = &m->u.state_update;
    uint32_t from = (m->sender >> 24) == RS_CTL_ROLE_BACKEND ? (m->sender >> 4) & 0xfffff : 0;
    int err;

    if (from && is_fenced(s, from)) {
        /* A fenced backend's state must never overwrite what the survivor does now. */
        if (s->st.updates_fenced++ % 1000 == 0)
            rs_log("update %s %uB from fenced backend=%u refused", TXN(u->txn), u->len, from);
        rs_ctl_ack(cc, m, -EPERM);
        return;
    }
    err = st_store_put(&s->store, u->txn, u->data, u->len, rs_mono_ns());

    s->st.updates++;
    s->st.update_bytes += u->len;
    if (err == -ESTALE) {
        s->st.updates_stale++;
        rs_log("update %s %uB stale (at or before Ts, or the connection was recovered here): dropped",
               TXN(u->txn), u->len);
        err = 0;
    } else if (err < 0) {
        s->st.updates_refused++;
        rs_log("update %s %uB refused: %s (buffered %" PRIu64 " states %" PRIu64 "B)", TXN(u->txn),
               u->len, strerror(-err), s->store.n_states, s->store.bytes);
    } else {
        struct st_client *c = st_store_find(&s->store, rs_txn_id_ip4(u->txn), rs_txn_id_port(u->txn));

        rs_log("update %s %uB%s", TXN(u->txn), u->len, u->sync ? " sync" : "");
        /* Its TXN_LOGGED may have come first (asynchronous transfer lags). */
        if (c && s->lib_fd >= 0)
            st_store_drain(&s->store, c, false, 0, apply_fn, s);
    }
    rs_ctl_ack(cc, m, err);
}

static void on_txn_logged(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    rs_txn_id id = m->u.txn_logged.txn;
    int err = st_store_logged(&s->store, id, rs_mono_ns());

    s->st.logged++;
    rs_log("logged %s resp_end=%u%s", TXN(id), m->u.txn_logged.resp_end, err ? " (client table full)" : "");
    if (err == 0 && s->lib_fd >= 0)
        st_store_drain(&s->store, st_store_find(&s->store, rs_txn_id_ip4(id), rs_txn_id_port(id)),
                       false, 0, apply_fn, s);
    rs_ctl_ack(cc, m, err);
}

static void on_state_query(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    struct rs_ctl_conn cl = m->u.state_query.client;
    struct st_client *c = st_store_find(&s->store, cl.ip4, cl.port);
    struct rs_ctl_msg r = { .type = RS_CTL_STATE_REPORT };
    char ts[8] = "none", ta[8] = "none";

    r.u.state_report.conn = cl;
    if (c) {
        r.u.state_report = (struct rs_ctl_state_report){ cl, c->has_ts, c->has_ta,
                                                        c->has_ts ? c->ts : 0, c->has_ta ? c->ta : 0 };
        if (c->has_ts)
            snprintf(ts, sizeof(ts), "%u", c->ts);
        if (c->has_ta)
            snprintf(ta, sizeof(ta), "%u", c->ta);
    }
    s->st.queries++;
    rs_log("query client=%s ts=%s ta=%s buffered=%u", RS_A(((struct rs_addr){ cl.ip4, cl.port })), ts,
           ta, c ? c->n_states : 0);
    rs_ctl_send(cc, &r);
}

static void on_apply(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    struct rs_ctl_conn cl = m->u.apply.client;
    struct st_client *c = st_store_find(&s->store, cl.ip4, cl.port);
    struct waiter *w;
    int n = 0;

    rs_log("apply-request client=%s upto=%u buffered=%u", RS_A(((struct rs_addr){ cl.ip4, cl.port })),
           m->u.apply.upto, c ? c->n_states : 0);
    if (!c)
        c = st_store_get(&s->store, cl.ip4, cl.port, rs_mono_ns());
    if (c) {
        int dropped = st_store_take_over(&s->store, c, m->u.apply.upto);

        if (dropped)
            rs_log("take-over client=%s from=%u dropped=%d", RS_A(((struct rs_addr){ cl.ip4, cl.port })),
                   m->u.apply.upto, dropped);
    }
    if (!c || !c->head || !st_num_lt(c->head->num, m->u.apply.upto)) {
        rs_ctl_ack(cc, m, 0);     /* nothing to apply */
        return;
    }
    w = calloc(1, sizeof(*w));
    if (!w) {
        rs_ctl_ack(cc, m, -ENOMEM);
        return;
    }
    *w = (struct waiter){ cc->id, m->seq, m->type, 0, false, 0 };
    s->cur_waiter = w;
    n = st_store_drain(&s->store, c, true, m->u.apply.upto, apply_fn, s);
    s->cur_waiter = NULL;
    if (n < 0)
        w->status = n;
    else if (c->head && st_num_lt(c->head->num, m->u.apply.upto))
        w->status = -ENOBUFS;   /* the app's queue filled: the rest stays buffered */
    w->armed = true;
    waiter_check(s, w);         /* answers now when nothing went to the app */
}

static void on_conn_map(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    const struct rs_ctl_conn_map *cm = &m->u.conn_map;
    struct rs_xfer_rec r = { .type = RS_XFER_CONN_MAP, .map = *cm };
    struct waiter *w = calloc(1, sizeof(*w));
    int err;

    s->st.conn_maps++;
    rs_log("conn-map peer=%s client=%s next=%u%s", RS_A(((struct rs_addr){ cm->peer.ip4, cm->peer.port })),
           RS_A(((struct rs_addr){ cm->client.ip4, cm->client.port })), cm->next_num,
           cm->flags & RS_CTL_CONN_MAP_RERUN ? " rerun" : "");
    if (!w) {
        rs_ctl_ack(cc, m, -ENOMEM);
        return;
    }
    *w = (struct waiter){ cc->id, m->seq, m->type, 0, false, 0 };
    err = lib_request(s, &r, w);
    if (err < 0) {
        rs_log("conn-map refused: %s", strerror(-err));
        w->status = err;
    }
    w->armed = true;
    waiter_check(s, w);
}

/* FENCE from the proxy: backend 'id' was declared failed (or readmitted).
 * Ourselves: stop the app and take no other until readmitted.  Our peer:
 * stop replicating to it (degraded).  Anyone: refuse its states. */
static void on_fence(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    const struct rs_ctl_fence *f = &m->u.fence;
    bool peer = s->has_peer && f->ip4 && f->ip4 == s->peer.ip;

    rs_log("fence backend=%u fenced=%d%s", f->backend_id, f->fenced,
           f->backend_id == s->id ? " (this backend)" : peer ? " (the peer)" : "");
    if (f->fenced && !is_fenced(s, f->backend_id) && s->n_fenced < FENCED_MAX)
        s->fenced[s->n_fenced++] = f->backend_id;
    if (!f->fenced)
        for (unsigned i = 0; i < s->n_fenced; i++)
            if (s->fenced[i] == f->backend_id)
                s->fenced[i--] = s->fenced[--s->n_fenced];
    if (f->backend_id == s->id) {
        s->self_fenced = f->fenced;
        if (f->fenced && s->lib_fd >= 0) {
            rs_log("fenced: stopping the app (pid %d)", (int)s->app_pid);
            if (s->app_pid > 0)
                kill(s->app_pid, SIGKILL);
            lib_close(s, "fenced");
        }
    } else if (peer) {
        if (f->fenced && !s->peer_fenced) {
            /* Updates waiting for the fenced peer: answered now, unreplicated;
             * nothing more goes to it until it is readmitted. */
            relay_fail_all(s, -EHOSTDOWN);
            rs_ctlconn_close(&s->peer_link);
        } else if (!f->fenced && s->peer_fenced) {
            peer_open(s);
        }
        s->peer_fenced = f->fenced;
    }
    rs_ctl_ack(cc, m, 0);
}

/* One authenticated frame on the control port. */
static void on_ctl(struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    struct stated *s = cc->ctx;

    s->st.ctl_frames++;
    switch (m->type) {
    case RS_CTL_STATE_UPDATE: on_state_update(s, cc, m); break;
    case RS_CTL_TXN_LOGGED: on_txn_logged(s, cc, m); break;
    case RS_CTL_STATE_QUERY: on_state_query(s, cc, m); break;
    case RS_CTL_APPLY: on_apply(s, cc, m); break;
    case RS_CTL_CONN_MAP: on_conn_map(s, cc, m); break;
    case RS_CTL_FENCE: on_fence(s, cc, m); break;
    case RS_CTL_HEARTBEAT: rs_ctl_ack(cc, m, 0); break;
    case RS_CTL_ACK: break;     /* never answered */
    default:
        rs_log("ctl from=%s type=%s not handled here", RS_A(cc->addr), rs_ctl_type_str(m->type));
        rs_ctl_ack(cc, m, -EOPNOTSUPP);
    }
}

/* ---- Stats, set-up ------------------------------------------------------ */

static void stats_print(void *ctx)
{
    const struct stated *s = ctx;
    const struct stats *t = &s->st;

    printf("stats id=%u app=%d clients=%u buffered=%" PRIu64 " buffered_bytes=%" PRIu64
           " evicted=%" PRIu64 " ctl_conns=%u ctl_accepted=%" PRIu64 " ctl_frames=%" PRIu64
           " ctl_rejected=%" PRIu64 " updates=%" PRIu64 " update_bytes=%" PRIu64
           " updates_refused=%" PRIu64 " updates_stale=%" PRIu64 " logged=%" PRIu64
           " applied=%" PRIu64 " applied_forced=%" PRIu64 " apply_errors=%" PRIu64
           " queries=%" PRIu64 " conn_maps=%" PRIu64 " relayed=%" PRIu64 " relay_acked=%" PRIu64
           " relay_failed=%" PRIu64 " relay_queued=%u peer_up=%d heartbeats=%" PRIu64
           " failures_sent=%" PRIu64 " app_connects=%" PRIu64 " app_disconnects=%" PRIu64 " fenced=%d peer_fenced=%d"
           " updates_fenced=%" PRIu64 " relays_degraded=%" PRIu64 "\n",
           s->id, s->lib_fd >= 0, s->store.n_clients, s->store.n_states, s->store.bytes,
           s->store.evicted, s->ctlsrv.n_conns, s->ctlsrv.accepted, t->ctl_frames, s->ctlsrv.rejected, t->updates,
           t->update_bytes, t->updates_refused, t->updates_stale, t->logged, t->applied,
           t->applied_forced, t->apply_errors, t->queries, t->conn_maps, t->relayed, t->relay_acked,
           t->relay_failed, s->rel_len, s->peer_link.up, __atomic_load_n(&t->heartbeats, __ATOMIC_RELAXED),
           t->failures_sent, t->app_connects, t->app_disconnects, s->self_fenced, s->peer_fenced, t->updates_fenced,
           t->relays_degraded);
    fflush(stdout);
}

/* ---- Set-up ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-stated --id N --key FILE --app-socket PATH [options]\n"
        "Per-backend state agent (docs/recovery.md): buffers the peer backend's state\n"
        "updates, applies them to the local app once logged, answers STATE_QUERY, APPLY\n"
        "and CONN_MAP, relays the local app's updates to the peer, heartbeats to the logger.\n"
        "\n"
        "  --id N               this backend's id (1..1048575)\n"
        "  --listen ADDR:PORT   control port (default 0.0.0.0:7073)\n"
        "  --app-socket PATH    unix socket the app's state library connects to\n"
        "  --key FILE           shared control-plane key: 64 hex characters\n"
        "  --peer ADDR:PORT     the other backend's rs-stated: where the local app's\n"
        "                       updates go (without it they are refused)\n"
        "  --logger ADDR:PORT   where HEARTBEAT and FAILURE go (without it: none)\n"
        "  --heartbeat DUR      heartbeat interval while the app is connected (default 10ms)\n"
        "  --relay-timeout DUR  fail a relayed update the peer has not taken in DUR\n"
        "                       (default 1s)\n"
        "  --help               this text\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready.  SIGUSR1 prints a stats line;\n"
        "SIGTERM or SIGINT exits cleanly.\n");
}

static int listen_unix(const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path))
        return -ENAMETOOLONG;
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unlink(path);       /* a stale socket of an earlier run */
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || chmod(path, 0600) < 0 ||
        listen(fd, 8) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int main(int argc, char **argv)
{
    static struct stated s;     /* large: records and relay ring */
    static const char *const names[] = { "id", "listen", "app-socket", "key", "peer", "logger",
                                         "heartbeat", "relay-timeout" };
    const char *listen_text = "0.0.0.0:7073", *keyfile = NULL;
    uint64_t id = 0;
    int err;

    s.heartbeat_ns = 10000000ull;
    s.relay_timeout_ns = 1000000000ull;
    s.lib_fd = s.lib_io.fd = s.app_io.fd = -1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, k;

        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 0;
        }
        for (k = 0; k < (int)(sizeof(names) / sizeof(names[0])); k++)
            if (!strncmp(o, "--", 2) && !strcmp(o + 2, names[k]))
                break;
        if (k == (int)(sizeof(names) / sizeof(names[0]))) {
            fprintf(stderr, "rs-stated: unknown argument %s\n", o);
            usage(stderr);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "rs-stated: %s needs a value\n", o);
            return 2;
        }
        i++;
        switch (k) {
        case 0: bad = rs_parse_size(v, &id) || id == 0 || id >= (1u << 20); break;
        case 1: listen_text = v; bad = rs_addr_parse(v, &s.listen); break;
        case 2: s.app_path = v; break;
        case 3: keyfile = v; break;
        case 4: bad = rs_addr_parse(v, &s.peer); s.has_peer = true; break;
        case 5: bad = rs_addr_parse(v, &s.logger); s.has_logger = true; break;
        case 6: bad = rs_parse_duration(v, &s.heartbeat_ns) || s.heartbeat_ns == 0; break;
        case 7: bad = rs_parse_duration(v, &s.relay_timeout_ns) || s.relay_timeout_ns == 0; break;
        }
        if (bad) {
            fprintf(stderr, "rs-stated: bad value '%s' for %s\n", v, o);
            return 2;
        }
    }
    if (!id || !keyfile || !s.app_path) {
        fprintf(stderr, "rs-stated: --id, --key and --app-socket are required\n");
        usage(stderr);
        return 2;
    }
    if (rs_addr_parse(listen_text, &s.listen) < 0) {
        fprintf(stderr, "rs-stated: bad --listen '%s'\n", listen_text);
        return 2;
    }
    s.id = (uint32_t)id;
    rs_log_init("rs-stated");
    if (rs_ctl_init() < 0 || (err = rs_ctl_key_load(keyfile, &s.key)) != 0) {
        fprintf(stderr, "rs-stated: cannot load key %s\n", keyfile);
        return 1;
    }
    s.seq = rs_now_us();
    if ((err = rs_loop_init(&s.loop)) || (err = rs_loop_signals(&s.loop, stats_print, &s))) {
        fprintf(stderr, "rs-stated: cannot set up the event loop: %s\n", strerror(-err));
        return 1;
    }
    if ((err = rs_ctlserver_open(&s.ctlsrv, &s.loop, s.listen, &s.key, &s.seq, SENDER(s.id, CH_REPLY), on_ctl,
                                 &s))) {
        fprintf(stderr, "rs-stated: cannot listen on %s: %s\n", RS_A(s.listen), strerror(-err));
        return 1;
    }
    if ((err = listen_unix(s.app_path)) < 0 || (err = rs_io_start(&s.loop, &s.app_io, err, EPOLLIN, on_lib_accept, &s))) {
        fprintf(stderr, "rs-stated: cannot listen on %s: %s\n", s.app_path, strerror(-err));
        return 1;
    }
    if (s.has_peer)
        peer_open(&s);
    s.udp_fd = -1;
    if (s.has_logger) {
        struct sockaddr_in lsin = rs_addr_sin(s.logger);
        s.fail_seq = rs_now_us();
        s.udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s.udp_fd < 0 || connect(s.udp_fd, (struct sockaddr *)&lsin, sizeof(lsin))
            || pthread_create(&s.hb_thread, NULL, heartbeats, &s)) {
            fprintf(stderr, "rs-stated: cannot start heartbeats to %s: %s\n", RS_A(s.logger), strerror(errno));
            return 1;
        }
        s.hb_started = true;
    }
    rs_log("start id=%u listen=%s app-socket=%s peer=%s logger=%s heartbeat=%" PRIu64 "us",
           s.id, RS_A(s.listen), s.app_path, s.has_peer ? RS_A(s.peer) : "none",
           s.has_logger ? RS_A(s.logger) : "none", s.heartbeat_ns / 1000);
    printf("listening on %s\n", RS_A(s.listen));
    fflush(stdout);

    if (rs_loop_run(&s.loop) < 0)
        rs_log("event loop: %s", strerror(errno));

    lib_close(&s, "shutdown");
    rs_ctlserver_close(&s.ctlsrv);
    rs_ctlconn_close(&s.peer_link);
    stats_print(&s);
    st_store_clear(&s.store);
    rs_io_stop(&s.app_io);
    close(s.app_io.fd);
    unlink(s.app_path);
    rs_loop_fini(&s.loop);
    rs_log("exit");
    return 0;
}
