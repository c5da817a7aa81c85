/* rs-logger's control plane (docs/recovery.md): backend liveness from
 * heartbeats, FAILURE to the proxy, TXN_LOGGED to the alternate's rs-stated
 * over a persistent connection, RECOVER -> PLAN (state query, apply, replay
 * of update transactions on the alternate), and the resend port that serves
 * logged response bytes. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "logger.h"
#include "recovery.h"
#include "seq.h"

/* Time-outs of the blocking steps of a recovery (all peers are on the LAN). */
#define CALL_TIMEOUT_MS 1000
#define REPLAY_TIMEOUT_MS 2000
#define RESEND_FRAME_NS (5ull * 1000000000ull)   /* to send the RESEND frame */
#define BACKOFF_MIN_NS (10ull * 1000000)
#define BACKOFF_MAX_NS (500ull * 1000000)

struct ctl_conn {
    int fd;
    struct lg_tag tag;
    uint8_t buf[LG_CTL_BUF];
    size_t len;
    /* Per connection: a sender's frames are ordered only within one TCP
     * connection (rs-stated heartbeats on one, answers on another). */
    struct rs_ctl_replay replay;
};

enum resend_state { RS_WAIT_FRAME, RS_SENDING, RS_HOLDING };

struct resend_conn {
    struct resend_conn *next;
    int fd;
    struct lg_tag tag;
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

static const char *tid(rs_txn_id id)
{
    static char buf[RS_TXN_ID_STRLEN];

    rs_txn_id_format(id, buf, sizeof(buf));
    return buf;
}

int lg_ep_add(struct logger *lg, int fd, uint32_t events, struct lg_tag *tag)
{
    struct epoll_event ev = { .events = events, .data.ptr = tag };

    return epoll_ctl(lg->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static void ep_mod(struct logger *lg, int fd, uint32_t events, struct lg_tag *tag)
{
    struct epoll_event ev = { .events = events, .data.ptr = tag };

    epoll_ctl(lg->epfd, EPOLL_CTL_MOD, fd, &ev);
}

/* Closes 'fd' with a RST instead of a FIN. */
static void close_rst(int fd)
{
    struct linger l = { 1, 0 };

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
}

/* Writes all of 'buf' to the non-blocking 'fd', waiting at most 'ms'.
 * Returns 0 or -errno. */
static int write_all(int fd, const uint8_t *buf, size_t len, int ms)
{
    uint64_t deadline = rs_mono_ns() + (uint64_t)ms * 1000000u;

    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -errno;
        uint64_t now = rs_mono_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = { fd, POLLOUT, 0 };
        poll(&p, 1, (int)((deadline - now) / 1000000) + 1);
    }
    return 0;
}

static int encode(struct logger *lg, struct rs_ctl_msg *m, uint32_t sender, uint8_t *buf, size_t len)
{
    m->sender = sender;
    m->seq = ++lg->seq;
    return rs_ctl_encode(&lg->key, m, buf, len);
}

/* ACKs 'req' on an accepted connection; never blocks (a peer that does not
 * read its ACKs loses them, not our loop). */
static void reply_ack(struct logger *lg, int fd, const struct rs_ctl_msg *req, int status)
{
    struct rs_ctl_msg ack = { .type = RS_CTL_ACK };
    uint8_t out[128];
    int n;

    ack.u.ack = (struct rs_ctl_ack){ req->seq, req->type, status };
    n = encode(lg, &ack, LG_SENDER_REPLY, out, sizeof(out));
    if (n > 0 && send(fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
        rs_log("control: ACK of %s not sent", rs_ctl_type_str(req->type));
}

/* ---- persistent peers ------------------------------------------------------ */

static void peer_down(struct logger *lg, struct lg_peer *p, const char *why)
{
    if (p->fd >= 0) {
        if (p->up)
            rs_log("peer %s=%s down: %s (queued=%zu)", p->name, RS_A(p->addr), why, p->qlen);
        close(p->fd);
    }
    p->fd = -1;
    p->up = p->connecting = p->want_out = false;
    p->inlen = 0;
    p->retry_ns = rs_mono_ns() + p->backoff_ns;
    p->backoff_ns = p->backoff_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : p->backoff_ns * 2;
    (void)lg;
}

static void peer_connect(struct logger *lg, struct lg_peer *p)
{
    struct sockaddr_in sin = rs_addr_sin(p->addr);
    int one = 1;

    p->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        peer_down(lg, p, strerror(errno));
        return;
    }
    setsockopt(p->fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one));
    rs_ctl_replay_init(&p->replay);
    if (connect(p->fd, (struct sockaddr *)&sin, sizeof(sin)) && errno != EINPROGRESS) {
        peer_down(lg, p, strerror(errno));
        return;
    }
    p->connecting = true;
    p->tag = (struct lg_tag){ LG_T_PEER, p };
    if (lg_ep_add(lg, p->fd, EPOLLIN | EPOLLOUT, &p->tag))
        peer_down(lg, p, "epoll");
}

/* Writes what the queue holds without blocking. */
static void peer_flush(struct logger *lg, struct lg_peer *p)
{
    size_t off = 0;

    while (p->up && off < p->qlen) {
        ssize_t n = send(p->fd, p->q + off, p->qlen - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        memmove(p->q, p->q + off, p->qlen - off);
        p->qlen -= off;
        peer_down(lg, p, n < 0 ? strerror(errno) : "short write");
        return;
    }
    memmove(p->q, p->q + off, p->qlen - off);
    p->qlen -= off;
    if (p->up && (p->qlen > 0) != p->want_out) {
        p->want_out = p->qlen > 0;
        ep_mod(lg, p->fd, EPOLLIN | (p->want_out ? EPOLLOUT : 0), &p->tag);
    }
}

/* Queues 'm' for 'p'.  Returns 0, or -ENOBUFS when the queue is full (the
 * frame is dropped and counted). */
static int peer_send(struct logger *lg, struct lg_peer *p, struct rs_ctl_msg *m)
{
    uint8_t buf[256];
    int n = encode(lg, m, p->sender, buf, sizeof(buf));

    if (n < 0)
        return n;
    if (p->qlen + (size_t)n > LG_PEER_QUEUE) {
        if (p->dropped++ % 1000 == 0)
            rs_log("peer %s=%s queue full: dropped %s (total %" PRIu64 ")", p->name, RS_A(p->addr),
                   rs_ctl_type_str(m->type), p->dropped);
        return -ENOBUFS;
    }
    memcpy(p->q + p->qlen, buf, (size_t)n);
    p->qlen += (size_t)n;
    p->sent++;
    if (p->up)
        peer_flush(lg, p);
    else if (!p->connecting && p->fd < 0)
        peer_connect(lg, p);   /* urgent news: do not wait for the back-off */
    return 0;
}

/* Handles one frame a peer sent us outside a call: ACKs of what we queued. */
static void peer_frame(struct lg_peer *p, const struct rs_ctl_msg *m)
{
    if (m->type == RS_CTL_ACK && m->u.ack.status)
        rs_log("peer %s=%s: %s answered status=%d (%s)", p->name, RS_A(p->addr),
               rs_ctl_type_str(m->u.ack.echo_type), m->u.ack.status, strerror(-m->u.ack.status));
    else if (m->type != RS_CTL_ACK)
        rs_log("peer %s=%s: unexpected %s", p->name, RS_A(p->addr), rs_ctl_type_str(m->type));
}

/* Reads what is there; returns -errno when the peer went away. */
static int peer_read(struct logger *lg, struct lg_peer *p)
{
    ssize_t n = recv(p->fd, p->in + p->inlen, sizeof(p->in) - p->inlen, MSG_DONTWAIT);

    if (n == 0)
        return -ECONNRESET;
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -errno;
    p->inlen += (size_t)n;
    (void)lg;
    return 0;
}

/* Takes the next whole frame out of p->in.  Returns 1 with '*m' set, 0 when
 * none is complete, -errno when the stream is bad. */
static int peer_next(struct logger *lg, struct lg_peer *p, struct rs_ctl_msg *m)
{
    int used = rs_ctl_decode(&lg->key, &p->replay, p->in, p->inlen, m);

    if (used <= 0)
        return used;
    memmove(p->in, p->in + used, p->inlen - (size_t)used);
    p->inlen -= (size_t)used;
    return 1;
}

static void peer_event(struct logger *lg, struct lg_peer *p, uint32_t events)
{
    struct rs_ctl_msg m;
    int e;

    if (p->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
            peer_down(lg, p, strerror(err ? err : errno));
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN)))
            return;
        p->connecting = false;
        p->up = true;
        p->backoff_ns = BACKOFF_MIN_NS;
        p->want_out = true;
        rs_log("peer %s=%s up (queued=%zu)", p->name, RS_A(p->addr), p->qlen);
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if ((e = peer_read(lg, p)) < 0) {
            peer_down(lg, p, strerror(-e));
            return;
        }
        while ((e = peer_next(lg, p, &m)) > 0)
            peer_frame(p, &m);
        if (e < 0 || p->inlen == sizeof(p->in)) {
            lg->s.ctl_rejected++;
            peer_down(lg, p, e < 0 ? strerror(-e) : "frame too long");
            return;
        }
    }
    peer_flush(lg, p);
}

/* Waits for 'p' to be connected and its queue written, at most until
 * 'deadline'.  Returns 0 or -errno. */
static int peer_ready(struct logger *lg, struct lg_peer *p, uint64_t deadline)
{
    if (p->fd < 0)
        peer_connect(lg, p);
    while (p->fd >= 0 && (p->connecting || p->qlen)) {
        uint64_t now = rs_mono_ns();
        struct pollfd pfd = { p->fd, POLLOUT | POLLIN, 0 };
        if (now >= deadline)
            return -ETIMEDOUT;
        if (poll(&pfd, 1, (int)((deadline - now) / 1000000) + 1) > 0)
            peer_event(lg, p, (pfd.revents & POLLOUT ? EPOLLOUT : 0) | (pfd.revents & POLLIN ? EPOLLIN : 0)
                                  | (pfd.revents & (POLLERR | POLLHUP) ? EPOLLERR : 0));
    }
    return p->up ? 0 : -ENOTCONN;
}

/* Sends 'm' to 'p' and waits for its answer: the ACK that echoes it, or for
 * STATE_QUERY the STATE_REPORT of the same client.  Frames queued before it
 * go first, so rs-stated sees every TXN_LOGGED we had before the query.
 * Blocks the loop (see lg_recover).  Returns 0 with '*reply' set, or -errno. */
static int peer_call(struct logger *lg, struct lg_peer *p, struct rs_ctl_msg *m, struct rs_ctl_msg *reply)
{
    uint64_t deadline = rs_mono_ns() + (uint64_t)CALL_TIMEOUT_MS * 1000000u;
    uint8_t buf[256];
    int n, e;

    if ((e = peer_ready(lg, p, deadline)))
        return e;
    n = encode(lg, m, p->sender, buf, sizeof(buf));
    if (n < 0)
        return n;
    if ((e = write_all(p->fd, buf, (size_t)n, CALL_TIMEOUT_MS))) {
        peer_down(lg, p, strerror(-e));
        return e;
    }
    for (;;) {
        while ((e = peer_next(lg, p, reply)) > 0) {
            if (reply->type == RS_CTL_ACK && reply->u.ack.echo_seq == m->seq)
                return 0;
            if (m->type == RS_CTL_STATE_QUERY && reply->type == RS_CTL_STATE_REPORT
                && reply->u.state_report.conn.ip4 == m->u.state_query.client.ip4
                && reply->u.state_report.conn.port == m->u.state_query.client.port)
                return 0;
            peer_frame(p, reply);
        }
        if (e < 0 || p->inlen == sizeof(p->in)) {
            lg->s.ctl_rejected++;
            peer_down(lg, p, "bad frame");
            return e < 0 ? e : -EMSGSIZE;
        }
        uint64_t now = rs_mono_ns();
        struct pollfd pfd = { p->fd, POLLIN, 0 };
        if (now >= deadline)
            return -ETIMEDOUT;
        if (poll(&pfd, 1, (int)((deadline - now) / 1000000) + 1) > 0 && (e = peer_read(lg, p)) < 0) {
            peer_down(lg, p, strerror(-e));
            return e;
        }
    }
}

static void peer_init(struct lg_peer *p, const char *name, struct rs_addr a, uint32_t sender)
{
    p->name = name;
    p->addr = a;
    p->sender = sender;
    p->fd = -1;
    p->backoff_ns = BACKOFF_MIN_NS;
    p->q = malloc(LG_PEER_QUEUE);
    rs_ctl_replay_init(&p->replay);
}

void lg_ctl_txn_logged(struct logger *lg, rs_txn_id txn, uint32_t resp_end)
{
    struct rs_ctl_msg m = { .type = RS_CTL_TXN_LOGGED };

    if (!lg->has_stated || !lg->st.q)
        return;
    m.u.txn_logged = (struct rs_ctl_txn_logged){ txn, resp_end };
    peer_send(lg, &lg->st, &m);
}

/* ---- liveness ----------------------------------------------------------------- */

static struct lg_backend *backend(struct logger *lg, uint32_t id)
{
    for (int i = 0; i < lg->nbackends; i++)
        if (lg->backends[i].id == id)
            return &lg->backends[i];
    return NULL;
}

static void forward_failure(struct logger *lg, uint32_t id, uint16_t reason)
{
    struct rs_ctl_msg m = { .type = RS_CTL_FAILURE };

    m.u.failure = (struct rs_ctl_failure){ id, reason };
    if (!lg->has_proxy || !lg->px.q) {
        rs_log("failure backend=%u not forwarded: no --proxy", id);
        return;
    }
    if (!peer_send(lg, &lg->px, &m))
        lg->s.failures_forwarded++;
}

static void on_heartbeat(struct logger *lg, const struct rs_ctl_heartbeat *h)
{
    struct lg_backend *b;

    lg->s.heartbeats++;
    if (h->role != RS_CTL_ROLE_BACKEND)
        return;
    if (!(b = backend(lg, h->backend_id))) {
        if (lg->s.hb_unknown++ % 1000 == 0)
            rs_log("heartbeat from unmonitored backend=%u", h->backend_id);
        return;
    }
    if (!b->seen)
        rs_log("backend=%u first heartbeat", b->id);
    if (b->failed)
        rs_log("backend=%u heartbeats resumed", b->id);
    b->seen = true;
    b->failed = false;
    b->last_ns = rs_mono_ns();
}

static void on_failure(struct logger *lg, const struct rs_ctl_failure *f)
{
    struct lg_backend *b = backend(lg, f->backend_id);

    if (b && b->failed) {
        rs_log("failure backend=%u reason=%u already declared", f->backend_id, f->reason);
        return;
    }
    if (b)
        b->failed = true;
    lg->s.failures_declared++;
    rs_log("backend-failed backend=%u reason=%u source=report", f->backend_id, f->reason);
    forward_failure(lg, f->backend_id, f->reason);
}

static void check_liveness(struct logger *lg, uint64_t now)
{
    for (int i = 0; i < lg->nbackends; i++) {
        struct lg_backend *b = &lg->backends[i];
        if (!b->seen || b->failed || now - b->last_ns <= lg->dead_after_ns)
            continue;
        b->failed = true;
        lg->s.failures_declared++;
        rs_log("backend-failed backend=%u reason=timeout silent_us=%" PRIu64, b->id, (now - b->last_ns) / 1000);
        forward_failure(lg, b->id, RS_CTL_FAIL_TIMEOUT);
    }
}

/* ---- recovery ----------------------------------------------------------------- */

/* The local address that reaches 'to' (the logger's IP on that path). */
static int local_ip_for(struct rs_addr to, uint32_t *ip)
{
    struct sockaddr_in sin = rs_addr_sin(to), me;
    socklen_t len = sizeof(me);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), e = 0;

    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) || getsockname(fd, (struct sockaddr *)&me, &len))
        e = -errno;
    else
        *ip = ntohl(me.sin_addr.s_addr);
    close(fd);
    return e;
}

struct resp_reader {
    bool done, head;
};

static int rr_headers(http_parser *hp)
{
    struct resp_reader *r = hp->data;

    return hp->status_code / 100 == 1 ? 0 : r->head || hp->status_code == 204 || hp->status_code == 304;
}

static int rr_complete(http_parser *hp)
{
    struct resp_reader *r = hp->data;

    if (hp->status_code / 100 != 1)
        r->done = true;
    return 0;
}

/* Replays logged transaction 't' of 'c' on 'target' as client 'c' (docs/
 * recovery.md step 2): CONN_MAP for a bound local port, the request bytes,
 * the response read to its end and dropped.  Returns 0 or -errno. */
static int replay_one(struct logger *lg, struct lg_conn *c, const struct rs_http_txn *t, struct rs_addr target)
{
    static const http_parser_settings settings = { .on_headers_complete = rr_headers,
                                                   .on_message_complete = rr_complete };
    struct rs_addr local = { 0 };
    struct sockaddr_in sin = rs_addr_sin(target), me;
    socklen_t len = sizeof(me);
    struct rs_ctl_msg m = { .type = RS_CTL_CONN_MAP }, reply;
    struct resp_reader rr = { false, !strcmp(t->method, "HEAD") };
    uint32_t rlen = rs_seq_dist(t->req_start, t->req_end);
    uint64_t deadline = rs_mono_ns() + (uint64_t)REPLAY_TIMEOUT_MS * 1000000u;
    http_parser hp;
    uint8_t *req = NULL, in[16384];
    int fd, e;

    if ((e = local_ip_for(target, &local.ip)))
        return e;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    me = rs_addr_sin(local);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&me, sizeof(me)) || getsockname(fd, (struct sockaddr *)&me, &len)) {
        e = -errno;
        goto out;
    }
    local = rs_addr_of_sin(&me);
    m.u.conn_map = (struct rs_ctl_conn_map){ { local.ip, local.port }, { c->ip, c->port }, (uint16_t)t->num,
                                             RS_CTL_CONN_MAP_RERUN };
    if ((e = peer_call(lg, &lg->st, &m, &reply)))
        goto out;
    if (reply.type != RS_CTL_ACK || (e = reply.u.ack.status))
        goto out;
    if (!(req = malloc(rlen ? rlen : 1))) {
        e = -ENOMEM;
        goto out;
    }
    if ((e = rs_reasm_read(&c->rs[LG_REQ], t->req_start, rlen, req)))
        goto out;
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) && errno != EINPROGRESS) {
        e = -errno;
        goto out;
    }
    if ((e = write_all(fd, req, rlen, REPLAY_TIMEOUT_MS)))
        goto out;
    http_parser_init(&hp, HTTP_RESPONSE);
    hp.data = &rr;
    while (!rr.done) {
        uint64_t now = rs_mono_ns();
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t n;
        if (now >= deadline) {
            e = -ETIMEDOUT;
            goto out;
        }
        poll(&pfd, 1, (int)((deadline - now) / 1000000) + 1);
        n = recv(fd, in, sizeof(in), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0) {
            /* A close-delimited body ends here; anything else is cut short. */
            http_parser_execute(&hp, &settings, NULL, 0);
            e = rr.done ? 0 : n < 0 ? -errno : -ECONNRESET;
            goto out;
        }
        http_parser_execute(&hp, &settings, (const char *)in, (size_t)n);
        if (HTTP_PARSER_ERRNO(&hp) != HPE_OK && !rr.done) {
            e = -EBADMSG;
            goto out;
        }
    }
    lg->s.replays++;
    rs_log("replayed id=%s local=%s target=%s req_bytes=%u status=%u", tid(t->id), RS_A(local), RS_A(target),
           rlen, hp.status_code);
out:
    free(req);
    close(fd);
    if (e)
        rs_log("replay id=%s target=%s failed: %s", tid(t->id), RS_A(target), strerror(-e));
    return e;
}

/* Fills 'in' (with 'txns' of RS_HTTP_TXN_RING entries) from the log of 'c'.
 * Returns the (32-bit) number of its first transaction. */
static uint32_t build_input(struct lg_conn *c, struct rs_recovery_txn *txns, struct rs_recovery_input *in)
{
    uint32_t n = rs_http_txn_count(&c->http);
    uint32_t first = c->log_first;
    uint32_t resp_next = rs_http_next_seq(&c->http, RS_DIR_RESP);
    const struct rs_http_txn *t;

    if (n > RS_HTTP_TXN_RING && first < n - RS_HTTP_TXN_RING)
        first = n - RS_HTTP_TXN_RING;
    if (first < n && (t = rs_http_txn_get(&c->http, first)) && t->resp_begun)
        resp_next = t->resp_start;
    else if (first > 0 && first <= n && (t = rs_http_txn_get(&c->http, first - 1)) && t->resp_done)
        resp_next = t->resp_end;
    memset(in, 0, sizeof(*in));
    in->txns = txns;
    in->first_num = (uint16_t)first;
    in->has_prior = first > 0;
    in->req_base = first < n ? rs_http_txn_get(&c->http, first)->req_start : rs_http_next_seq(&c->http, RS_DIR_REQ);
    in->resp_base = resp_next;
    for (uint32_t i = first; i < n; i++) {
        struct rs_recovery_txn *r = &txns[in->n_txns++];
        t = rs_http_txn_get(&c->http, i);
        r->num = (uint16_t)i;
        r->flags = (c->tags[i % RS_HTTP_TXN_RING] & (RS_RECOVERY_F_UPDATE | RS_RECOVERY_F_NONDET))
                 | (t->req_done ? RS_RECOVERY_F_REQ_COMPLETE : 0) | (t->resp_done ? RS_RECOVERY_F_RESP_COMPLETE : 0);
        r->req_start = t->req_start;
        r->req_end = t->req_end;
        r->resp_start = t->resp_begun ? t->resp_start : resp_next;
        r->resp_end = t->resp_end;
        r->resp_logged = t->resp_begun ? rs_seq_dist(t->resp_start, t->resp_end) : 0;
        if (t->resp_done)
            resp_next = t->resp_end;
    }
    in->ack_cl = c->has_ack ? c->ack_cl : c->isn[LG_RESP] + 1;
    return first;
}

/* Can the log of 'c' back a recovery at all?  Returns 0 or -errno. */
static int loggable(const struct lg_conn *c)
{
    uint32_t logged;

    if (c->nl != LG_NL_NONE || !c->started)
        return -ENODATA;
    if (c->inc == LG_INC_CONFLICT)
        return -EIO;
    if (c->inc == LG_INC_HTTP)
        return -EPROTO;
    /* A request byte the server acknowledged but we lack is lost for good:
     * the client will not send it again. */
    logged = rs_reasm_contig_seq(&c->rs[LG_REQ]);
    /* The client's FIN takes a sequence number but no byte of the log. */
    if (c->fin[LG_REQ] && c->fin_seq[LG_REQ] == logged)
        logged++;
    if ((c->inc != LG_INC_NONE && c->inc_dir == LG_REQ)
        || (c->has_ack_srv && rs_seq_gt(c->ack_srv, logged)))
        return -ENOBUFS;
    return 0;
}

#define RECOVER_SETTLE_MS 20   /* longest wait for the mirror's last frames */

/* True when the backend's end of the connection is one the application
 * meant: every request has its whole response, the client sent nothing
 * after the last one, and either the client closed first or the last
 * response said "Connection: close". */
static bool closed_as_meant(const struct lg_conn *c)
{
    uint32_t n = rs_http_txn_count(&c->http);
    const struct rs_http_txn *t = n ? rs_http_txn_get(&c->http, n - 1) : NULL;
    uint32_t next = rs_http_next_seq(&c->http, RS_DIR_REQ);

    if (!t)
        return c->fin[LG_REQ];
    if (!t->resp_done || next != t->req_end)
        return false;
    return c->fin[LG_REQ] || t->close;
}

/* RECOVER -> PLAN (docs/recovery.md, "Plan").  This blocks the loop for the
 * duration of one recovery (tens of ms on a LAN: a query, an apply, the
 * replays): capture waits in the kernel's 64 MB ring meanwhile.  A
 * concurrent design would run each recovery as a state machine. */
static void lg_recover(struct logger *lg, struct ctl_conn *cc, const struct rs_ctl_msg *req)
{
    static struct rs_recovery_txn txns[RS_HTTP_TXN_RING];
    static struct rs_recovery_plan plan;
    const struct rs_ctl_recover *rq = &req->u.recover;
    struct rs_addr client = { rq->client.ip4, rq->client.port }, target = { rq->target.ip4, rq->target.port };
    struct rs_ctl_msg out = { .type = RS_CTL_PLAN }, m, reply;
    struct rs_ctl_plan *pl = &out.u.plan;
    struct rs_recovery_input in;
    struct lg_conn *c = lg_conn_find(lg, client.ip, client.port);
    uint64_t t0 = rs_now_us(), t_query = 0, t_apply = 0, t_replay = 0;
    uint8_t *data = NULL, *frame = NULL;
    bool has_ts = false, has_ta = false;
    uint16_t ts = 0, ta = 0;
    uint32_t first = 0;
    int e, n;

    lg->s.recoveries++;
    memset(&plan, 0, sizeof(plan));
    pl->client = rq->client;
    /* The mirror's copies of the last segments may still be in the capture
     * buffer, or — the mirror does not order one port's frames against
     * another's — a server's ACK may have overtaken the request bytes it
     * acknowledges: process what is there, and give stragglers a few ms. */
    for (int wait_ms = 0;; wait_ms++) {
        lg_capture_drain(lg);
        c = lg_conn_find(lg, client.ip, client.port);
        if ((c && loggable(c) != -ENOBUFS) || wait_ms == RECOVER_SETTLE_MS)
            break;
        usleep(1000);
    }
    if (!c) {
        e = -ENOENT;
        goto reply;
    }
    if ((e = loggable(c)))
        goto reply;
    if (closed_as_meant(c)) {
        /* The backend's FIN ends a complete response that said
         * "Connection: close": the application meant it, nothing to recover. */
        e = -ESHUTDOWN;
        goto reply;
    }
    if (!lg->has_stated) {
        e = -ENOTCONN;
        goto reply;
    }
    /* 1. Ts and TA from the alternate. */
    m = (struct rs_ctl_msg){ .type = RS_CTL_STATE_QUERY };
    m.u.state_query.client = rq->client;
    if ((e = peer_call(lg, &lg->st, &m, &reply)))
        goto reply;
    if (reply.type == RS_CTL_ACK) {
        e = reply.u.ack.status ? reply.u.ack.status : -EBADMSG;
        goto reply;
    }
    has_ts = reply.u.state_report.has_ts;
    has_ta = reply.u.state_report.has_ta;
    ts = reply.u.state_report.ts;
    ta = reply.u.state_report.ta;
    t_query = rs_now_us();
    /* 2. The plan. */
    first = build_input(c, txns, &in);
    in.has_ts = has_ts;
    in.ts = ts;
    in.has_ta = has_ta;
    in.ta = ta;
    e = rs_recovery_plan(&in, &plan);
    pl->flags = (uint8_t)((plan.has_tl ? RS_CTL_PLAN_HAS_TL : 0) | (plan.eq1_holds ? RS_CTL_PLAN_EQ1 : 0)
                          | (plan.tl1_req_complete ? RS_CTL_PLAN_REQ_DONE : 0)
                          | (plan.tl1_from_sync_state ? RS_CTL_PLAN_SYNC_STATE : 0));
    pl->tl = plan.has_tl ? plan.tl : 0;
    pl->tsp = plan.tsp;
    pl->tr = plan.tr;
    pl->ack_tl = plan.ack_tl;
    pl->p = plan.p;
    pl->ackcl = in.ack_cl;
    pl->resend_from = plan.resend_from;
    pl->resend_to = plan.resend_to;
    pl->q = plan.req_fwd_from;
    if (e) {
        rs_log("recover client=%s plan failed: %s (%s)", RS_A(client), rs_recovery_reason_str(plan.reason),
               strerror(-e));
        goto reply;
    }
    /* The resend range must still be in the log. */
    if (rs_seq_lt(plan.resend_from, rs_reasm_released_seq(&c->rs[LG_RESP]))) {
        e = -ESTALE;
        goto reply;
    }
    /* 3. Apply the buffered state of (Ts, TR); of (Ts, TL+1] when TL+1 is
     * answered from its synchronously sent state (the client holds p bytes
     * of a response only that state reproduces; then TR = TL+1). */
    m = (struct rs_ctl_msg){ .type = RS_CTL_APPLY };
    m.u.apply = (struct rs_ctl_apply){ rq->client, plan.tl1_from_sync_state ? (uint16_t)(plan.tsp + 1) : plan.tr };
    if ((e = peer_call(lg, &lg->st, &m, &reply)) || (e = reply.type == RS_CTL_ACK ? reply.u.ack.status : -EBADMSG))
        goto reply;
    t_apply = rs_now_us();
    /* 4. Replay the update transactions of [TR, TL]. */
    for (size_t i = 0; i < plan.n_replay; i++) {
        uint32_t num = first + (uint16_t)(plan.replay[i] - in.first_num);
        const struct rs_http_txn *t = rs_http_txn_get(&c->http, num);
        if (!t) {
            e = -ENODATA;
            goto reply;
        }
        if ((e = replay_one(lg, c, t, target)))
            goto reply;
        pl->replayed++;
    }
    t_replay = rs_now_us();
    /* 5. TL+1's request as logged so far: every contiguous client byte from
     * q, so the client's own bytes take over exactly at q + len. */
    {
        uint32_t end = rs_reasm_contig_seq(&c->rs[LG_REQ]);
        uint32_t len = rs_seq_dist(plan.req_fwd_from, end);
        if (rs_seq_lt(end, plan.req_fwd_from) || len > RS_CTL_STATE_MAX) {
            e = -EMSGSIZE;
            goto reply;
        }
        if (len && (!(data = malloc(len)) || (e = rs_reasm_read(&c->rs[LG_REQ], plan.req_fwd_from, len, data)))) {
            e = e ? e : -ENOMEM;
            goto reply;
        }
        pl->len = len;
        pl->data = data;
    }
reply:
    if (e) {
        lg->s.recovery_errors++;
        pl->len = 0;
        pl->data = NULL;
    }
    pl->status = e;
    rs_log("recover client=%s backend=%u target=%s status=%d%s%s has_ts=%d ts=%u has_ta=%d ta=%u tl=%u%s tsp=%u"
           " tr=%u replayed=%u ack_tl=%u p=%u ackcl=%u eq1=%d resend=[%u,%u) q=%u len=%u query_us=%" PRIu64
           " apply_us=%" PRIu64 " replay_us=%" PRIu64 " total_us=%" PRIu64,
           RS_A(client), rq->backend_id, RS_A(target), e, e ? " " : "", e ? strerror(-e) : "", has_ts, ts, has_ta,
           ta, pl->tl, plan.has_tl ? "" : "(none)", pl->tsp, pl->tr, pl->replayed, pl->ack_tl, pl->p, pl->ackcl,
           plan.eq1_holds, pl->resend_from, pl->resend_to, pl->q, pl->len, t_query ? t_query - t0 : 0,
           t_apply ? t_apply - t_query : 0, t_replay ? t_replay - t_apply : 0, rs_now_us() - t0);
    frame = malloc(RS_CTL_FRAME_MAX);
    n = frame ? encode(lg, &out, LG_SENDER_REPLY, frame, RS_CTL_FRAME_MAX) : -ENOMEM;
    if (n < 0 || write_all(cc->fd, frame, (size_t)n, CALL_TIMEOUT_MS))
        rs_log("recover client=%s: PLAN not sent (%s)", RS_A(client), n < 0 ? strerror(-n) : "write");
    free(frame);
    free(data);
}

/* ---- control connections ------------------------------------------------------ */

static void ctl_close(struct logger *lg, struct ctl_conn *cc)
{
    (void)lg;
    close(cc->fd);
    free(cc);
}

static void on_ctl(struct logger *lg, struct ctl_conn *cc)
{
    ssize_t n = recv(cc->fd, cc->buf + cc->len, sizeof(cc->buf) - cc->len, MSG_DONTWAIT);

    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        ctl_close(lg, cc);
        return;
    }
    cc->len += (size_t)n;
    for (;;) {
        struct rs_ctl_msg m;
        int used = rs_ctl_decode(&lg->key, &cc->replay, cc->buf, cc->len, &m);
        if (used == 0 && cc->len == sizeof(cc->buf))
            used = -EMSGSIZE;
        if (used == 0)
            return;
        if (used < 0) {
            lg->s.ctl_rejected++;
            rs_log("control: rejected message: %s", strerror(-used));
            ctl_close(lg, cc);
            return;
        }
        memmove(cc->buf, cc->buf + used, cc->len - (size_t)used);
        cc->len -= (size_t)used;
        switch (m.type) {
        case RS_CTL_HEARTBEAT:
            on_heartbeat(lg, &m.u.heartbeat);
            reply_ack(lg, cc->fd, &m, 0);
            break;
        case RS_CTL_FAILURE:
            on_failure(lg, &m.u.failure);
            reply_ack(lg, cc->fd, &m, 0);
            break;
        case RS_CTL_RECOVER:
            lg_recover(lg, cc, &m);
            break;
        default:
            reply_ack(lg, cc->fd, &m, -EOPNOTSUPP);
        }
    }
}

static void on_accept(struct logger *lg, int lfd, enum lg_tag_kind kind)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (kind == LG_T_CTL) {
            struct ctl_conn *cc = calloc(1, sizeof(*cc));
            if (!cc) {
                close(fd);
                continue;
            }
            cc->fd = fd;
            cc->tag = (struct lg_tag){ LG_T_CTL, cc };
            rs_ctl_replay_init(&cc->replay);
            if (lg_ep_add(lg, fd, EPOLLIN, &cc->tag))
                ctl_close(lg, cc);
        } else {
            struct resend_conn *r = calloc(1, sizeof(*r));
            if (!r) {
                close_rst(fd);
                continue;
            }
            r->fd = fd;
            r->tag = (struct lg_tag){ LG_T_RESEND, r };
            r->deadline_ns = rs_mono_ns() + RESEND_FRAME_NS;
            rs_ctl_replay_init(&r->replay);
            r->next = lg->resends;
            lg->resends = r;
            lg_ep_add(lg, fd, EPOLLIN, &r->tag);
        }
    }
}

/* ---- resend port ---------------------------------------------------------------- */

static void resend_end(struct logger *lg, struct resend_conn *r, bool rst)
{
    struct resend_conn **pp = (struct resend_conn **)&lg->resends;

    while (*pp && *pp != r)
        pp = &(*pp)->next;
    if (*pp)
        *pp = r->next;
    if (rst)
        close_rst(r->fd);
    else
        close(r->fd);
    free(r->data);
    free(r);
}

static void resend_write(struct logger *lg, struct resend_conn *r)
{
    while (r->dpos < r->dlen) {
        ssize_t n = send(r->fd, r->data + r->dpos, r->dlen - r->dpos, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            r->dpos += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            ep_mod(lg, r->fd, EPOLLIN | EPOLLOUT, &r->tag);
            return;
        }
        lg->s.resend_errors++;
        rs_log("resend client=%s [%u,%u) write failed at %zu: %s", RS_A(r->client), r->from, r->to, r->dpos,
               strerror(errno));
        resend_end(lg, r, true);
        return;
    }
    rs_log("resend client=%s [%u,%u) sent bytes=%zu", RS_A(r->client), r->from, r->to, r->dlen);
    free(r->data);
    r->data = NULL;
    r->state = RS_HOLDING;
    r->deadline_ns = rs_mono_ns() + LG_RESEND_HOLD_NS;
    ep_mod(lg, r->fd, EPOLLIN, &r->tag);
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
        resend_end(lg, r, true);
        return;
    }
    lg->s.resends++;
    r->dlen = len;
    r->state = RS_SENDING;
    resend_write(lg, r);
}

static void on_resend(struct logger *lg, struct resend_conn *r, uint32_t events)
{
    if (r->state == RS_SENDING && (events & EPOLLOUT)) {
        resend_write(lg, r);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    if (r->state != RS_WAIT_FRAME) {
        uint8_t junk[4096];
        ssize_t n = recv(r->fd, junk, sizeof(junk), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            rs_log("resend client=%s peer closed", RS_A(r->client));
            resend_end(lg, r, false);
        }
        return;
    }
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof(r->buf) - r->len, MSG_DONTWAIT);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        resend_end(lg, r, true);
        return;
    }
    r->len += (size_t)n;
    struct rs_ctl_msg m;
    int used = rs_ctl_decode(&lg->key, &r->replay, r->buf, r->len, &m);
    if (used == 0 && r->len < sizeof(r->buf))
        return;
    if (used <= 0 || m.type != RS_CTL_RESEND) {
        lg->s.ctl_rejected++;
        rs_log("resend: rejected first frame: %s", used < 0 ? strerror(-used) : used ? rs_ctl_type_str(m.type)
                                                                                  : "too long");
        resend_end(lg, r, true);
        return;
    }
    resend_start(lg, r, &m.u.resend);
}

/* ---- set-up, events, ticks ---------------------------------------------------- */

int lg_ctl_setup(struct logger *lg)
{
    if ((lg->ctlfd = rs_listen_tcp(lg->listen, 1024)) < 0) {
        rs_log("cannot listen on %s: %s", RS_A(lg->listen), strerror(-lg->ctlfd));
        return lg->ctlfd;
    }
    if ((lg->resendfd = rs_listen_tcp(lg->resend, 1024)) < 0) {
        rs_log("cannot listen on %s: %s", RS_A(lg->resend), strerror(-lg->resendfd));
        return lg->resendfd;
    }
    lg->ctltag = (struct lg_tag){ LG_T_CTL_LISTEN, NULL };
    lg->resendtag = (struct lg_tag){ LG_T_RESEND_LISTEN, NULL };
    lg_ep_add(lg, lg->ctlfd, EPOLLIN, &lg->ctltag);
    lg_ep_add(lg, lg->resendfd, EPOLLIN, &lg->resendtag);
    if (lg->has_proxy) {
        peer_init(&lg->px, "proxy", lg->proxy, LG_SENDER_PROXY);
        peer_connect(lg, &lg->px);
    }
    if (lg->has_stated) {
        peer_init(&lg->st, "stated", lg->stated, LG_SENDER_STATED);
        peer_connect(lg, &lg->st);
    }
    return 0;
}

void lg_ctl_event(struct logger *lg, struct lg_tag *tag, uint32_t events)
{
    switch (tag->kind) {
    case LG_T_CTL_LISTEN:
        on_accept(lg, lg->ctlfd, LG_T_CTL);
        break;
    case LG_T_RESEND_LISTEN:
        on_accept(lg, lg->resendfd, LG_T_RESEND);
        break;
    case LG_T_CTL:
        on_ctl(lg, tag->ptr);
        break;
    case LG_T_RESEND:
        on_resend(lg, tag->ptr, events);
        break;
    case LG_T_PEER:
        peer_event(lg, tag->ptr, events);
        break;
    default:
        break;
    }
}

void lg_ctl_tick(struct logger *lg, uint64_t now)
{
    struct resend_conn *r, *next;

    check_liveness(lg, now);
    if (lg->has_proxy && lg->px.fd < 0 && now >= lg->px.retry_ns)
        peer_connect(lg, &lg->px);
    if (lg->has_stated && lg->st.fd < 0 && now >= lg->st.retry_ns)
        peer_connect(lg, &lg->st);
    for (r = lg->resends; r; r = next) {
        next = r->next;
        if (now < r->deadline_ns || r->state == RS_SENDING)
            continue;
        if (r->state == RS_WAIT_FRAME)
            rs_log("resend: no RESEND frame in time");
        else
            rs_log("resend client=%s [%u,%u) held 30 s: closing", RS_A(r->client), r->from, r->to);
        resend_end(lg, r, true);
    }
}

void lg_ctl_shutdown(struct logger *lg)
{
    while (lg->resends)
        resend_end(lg, lg->resends, true);
    if (lg->px.fd >= 0 && lg->px.q)
        close(lg->px.fd);
    if (lg->st.fd >= 0 && lg->st.q)
        close(lg->st.fd);
    free(lg->px.q);
    free(lg->st.q);
}
