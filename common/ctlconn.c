/* Control connections on the event loop (see ctlconn.h). */
#include "ctlconn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "list.h"

#define IN_START       4096u   /* grows for big frames: to RS_CTL_SMALL_FRAME_MAX on an
                                  accepted connection, RS_CTL_FRAME_MAX on our own */
#define BACKOFF_MIN_NS (10ull * 1000000u)
/* A peer that restarts (a proxy's successor) is reached again within this
 * of its start: at 500 ms, the logger's failure notices and words waited
 * that long for a new proxy.  A try costs a SYN and its RST. */
#define BACKOFF_MAX_NS (100ull * 1000000u)
#define CONNECT_NS     (1000ull * 1000000u)  /* a peer that does not answer a SYN in 1 s is down */
#define SERVER_CONNS   1024u
#define SERVER_OUT_MAX (4u << 20)

static void conn_io(struct rs_io *io, uint32_t events);
static void peer_retry(struct rs_timer *t);

/* ---- Calls ---------------------------------------------------------------------- */

static void call_unlink(struct rs_ctl_call *call)
{
    struct rs_ctlconn *c = call->conn;

    if (!c)
        return;
    RS_LIST_UNLINK(c->calls, call);
    rs_timer_stop(c->loop, &call->timer);
    call->conn = NULL;
}

static void call_end(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    call_unlink(call);
    call->done(call, err, reply);
}

static void call_timeout(struct rs_timer *t)
{
    call_end(t->ctx, -ETIMEDOUT, NULL);
}

void rs_ctl_call_cancel(struct rs_ctl_call *call)
{
    call_unlink(call);
}

/* Ends every pending call of 'c' with 'err'.  A callback may start new
 * calls on 'c' (those stay), and may cancel, or free, other calls that
 * are failing: each stays listed on 'c' until its own turn. */
static void calls_fail(struct rs_ctlconn *c, int err)
{
    struct rs_ctl_call *call;

    for (call = c->calls; call; call = call->next)
        call->failing = true;
    for (;;) {
        for (call = c->calls; call && !call->failing; call = call->next)
            ;
        if (!call)
            break;
        call->failing = false;
        call_end(call, err, NULL);
    }
}

/* The client a typed reply names. */
static bool reply_key(const struct rs_ctl_msg *m, struct rs_ctl_conn *k)
{
    switch (m->type) {
    case RS_CTL_STATE_REPORT: *k = m->u.state_report.conn; return true;
    case RS_CTL_PLAN: *k = m->u.plan.client; return true;
    default: return false;
    }
}

/* Offers 'm' to the calls of 'c'.  Returns true when one took it. */
static bool call_match(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct rs_ctl_conn k;
    bool keyed = reply_key(m, &k);

    for (struct rs_ctl_call *call = c->calls; call; call = call->next) {
        if (m->type == RS_CTL_ACK && m->u.ack.status < 0 && m->u.ack.echo_seq == call->seq) {
            /* A refusal ends any call, whatever reply it waited for. */
            call_end(call, m->u.ack.status, m);
            return true;
        }
        if (call->reply_type != m->type)
            continue;
        if (m->type == RS_CTL_ACK ? m->u.ack.echo_seq != call->seq
                                  : keyed && (k.ip4 != call->key.ip4 || k.port != call->key.port))
            continue;
        call_end(call, 0, m);
        return true;
    }
    return false;
}

/* ---- Buffers --------------------------------------------------------------------- */

static void set_events(struct rs_ctlconn *c)
{
    if (!rs_io_active(&c->io))
        return;
    if (c->outgoing && !c->up)
        rs_io_set(&c->io, EPOLLOUT);
    else
        rs_io_set(&c->io, EPOLLIN | (c->out_len > c->out_off ? EPOLLOUT : 0));
}

/* Writes what it can.  Errors are left for the next event to notice. */
static void flush(struct rs_ctlconn *c)
{
    while (c->up && c->out_off < c->out_len) {
        ssize_t n = send(c->io.fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0)
            break;
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    set_events(c);
}

/* Room for 'n' more bytes of output.  Returns 0 or -ENOBUFS. */
static int out_reserve(struct rs_ctlconn *c, size_t n)
{
    if (c->out_off && c->out_len + n > c->out_cap) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + n <= c->out_cap)
        return 0;
    if (c->out_len + n > c->out_max)
        return -ENOBUFS;
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + n)
        cap *= 2;
    if (cap > c->out_max)
        cap = c->out_max;
    uint8_t *b = realloc(c->out, cap);
    if (!b)
        return -ENOBUFS;
    c->out = b;
    c->out_cap = cap;
    return 0;
}

int rs_ctl_send(struct rs_ctlconn *c, struct rs_ctl_msg *m)
{
    int n;

    m->sender = c->sender;
    m->seq = ++*c->seq;
    if ((n = rs_ctl_encoded_len(m)) < 0)
        return n;
    if (out_reserve(c, (size_t)n)) {
        if (c->dropped++ % 1000 == 0)
            rs_log("control %s=%s: queue full, %s dropped (%lu so far)", c->name, RS_A(c->addr),
                   rs_ctl_type_str(m->type), (unsigned long)c->dropped);
        return -ENOBUFS;
    }
    n = rs_ctl_encode(c->key, m, c->out + c->out_len, c->out_cap - c->out_len);
    if (n < 0)
        return n;
    c->out_len += (size_t)n;
    if (!c->held)
        flush(c);
    return 0;
}

void rs_ctlconn_hold(struct rs_ctlconn *c)
{
    c->held = true;
}

void rs_ctlconn_flush(struct rs_ctlconn *c)
{
    if (c->out_len > c->out_off)
        flush(c);
}

int rs_ctl_ack(struct rs_ctlconn *c, const struct rs_ctl_msg *req, int status)
{
    struct rs_ctl_msg ack = { .type = RS_CTL_ACK };

    ack.u.ack = (struct rs_ctl_ack){ req->seq, req->type, status };
    return rs_ctl_send(c, &ack);
}

int rs_ctl_call(struct rs_ctlconn *c, struct rs_ctl_msg *m, uint8_t reply_type, struct rs_ctl_call *call,
                uint64_t timeout_ns, rs_ctl_done_fn done, void *ctx)
{
    int e;

    rs_ctl_call_cancel(call);
    if ((e = rs_ctl_send(c, m)) != 0)
        return e;
    call->seq = m->seq;
    call->reply_type = reply_type;
    call->key = (struct rs_ctl_conn){ 0, 0 };
    if (m->type == RS_CTL_STATE_QUERY)
        call->key = m->u.state_query.client;
    else if (m->type == RS_CTL_RECOVER)
        call->key = m->u.recover.client;
    call->done = done;
    call->ctx = ctx;
    call->conn = c;
    call->failing = false;
    RS_LIST_PUSH(c->calls, call);
    rs_timer_init(&call->timer, call_timeout, call);
    rs_timer_after(c->loop, &call->timer, timeout_ns);
    return 0;
}

/* ---- Reading --------------------------------------------------------------------- */

static void conn_down(struct rs_ctlconn *c, int err);

/* Reads and dispatches what 'c' has.  Returns false when 'c' went down.
 * A read that leaves room in the buffer took all there was: the loop's
 * level-triggered watch reports what comes later (no read that only
 * says EAGAIN: a syscall per message saved on both ends). */
static bool conn_read(struct rs_ctlconn *c)
{
    for (bool drained = false; !drained;) {
        ssize_t n;
        size_t off = 0;

        if (c->in_len == c->in_cap) {
            size_t cap = c->in_cap ? c->in_cap * 2 : IN_START;
            size_t max = c->server ? RS_CTL_SMALL_FRAME_MAX : RS_CTL_FRAME_MAX;
            uint8_t *b;
            if (cap > max)
                cap = max;
            if (cap <= c->in_cap || !(b = realloc(c->in, cap))) {
                conn_down(c, -EMSGSIZE);
                return false;
            }
            c->in = b;
            c->in_cap = cap;
        }
        n = recv(c->io.fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (n <= 0) {
            conn_down(c, n == 0 ? -ECONNRESET : -errno);
            return false;
        }
        drained = (size_t)n < c->in_cap - c->in_len;
        c->in_len += (size_t)n;
        for (;;) {
            struct rs_ctl_msg m;
            int used = rs_ctl_decode(c->key, c->replay, c->in + off, c->in_len - off, &m);
            if (used == 0)
                break;
            if (used < 0) {
                c->rejected++;
                if (c->server)
                    c->server->rejected++;
                rs_log("control %s=%s: rejected message: %s", c->name, RS_A(c->addr),
                       used == -EACCES ? "bad MAC (wrong key?)"
                       : used == -EALREADY ? "replayed (sequence not above the sender's last)" : strerror(-used));
                conn_down(c, used);
                return false;
            }
            off += (size_t)used;
            c->frames++;
            if (!rs_ctl_role_may_send(rs_ctl_sender_role(m.sender), m.type)) {
                /* Signed, but the role its sender belongs to never sends this. */
                c->rejected++;
                if (c->server)
                    c->server->rejected++;
                rs_log("control %s=%s: %s from sender %08x refused: its role does not send it", c->name,
                       RS_A(c->addr), rs_ctl_type_str(m.type), m.sender);
                continue;
            }
            if (!call_match(c, &m) && c->on_msg)
                c->on_msg(c, &m);
            if (!rs_io_active(&c->io))
                return false;   /* a handler's send found the connection broken */
        }
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return true;
}

/* ---- Accepted connections ------------------------------------------------------ */

static void accepted_free(struct rs_ctlconn *c)
{
    struct rs_ctlserver *s = c->server;

    RS_LIST_UNLINK(s->conns, c);
    s->n_conns--;
    free(c->in);
    free(c->out);
    free(c);
}

static void conn_down(struct rs_ctlconn *c, int err)
{
    rs_io_stop(&c->io);
    if (c->io.fd >= 0)
        close(c->io.fd);
    c->io.fd = -1;
    c->up = false;
    c->in_len = 0;
    if (!c->outgoing) {
        calls_fail(c, err);
        if (c->server->on_close)
            c->server->on_close(c, err);
        accepted_free(c);
        return;
    }
    if (c->out_len > c->out_off)
        rs_log("control %s=%s down: %s (%zu bytes of frames dropped)", c->name, RS_A(c->addr),
               strerror(-err), c->out_len - c->out_off);
    c->out_off = c->out_len = 0;
    rs_timer_after(c->loop, &c->retry, c->backoff_ns);
    c->backoff_ns = c->backoff_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : c->backoff_ns * 2;
    calls_fail(c, err);
    if (c->on_state)
        c->on_state(c, err);
}

static void conn_io(struct rs_io *io, uint32_t events)
{
    struct rs_ctlconn *c = io->ctx;

    if (c->outgoing && !c->up) {
        int err = rs_sock_error(io->fd);

        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            conn_down(c, -(err ? err : ECONNREFUSED));
            return;
        }
        c->up = true;
        c->backoff_ns = BACKOFF_MIN_NS;
        rs_timer_stop(c->loop, &c->retry);
        rs_ctl_replay_init(&c->own_replay);
        rs_log("control %s=%s up", c->name, RS_A(c->addr));
        flush(c);
        if (c->on_state)
            c->on_state(c, 0);
        return;
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !conn_read(c))
        return;
    if (events & EPOLLOUT)
        flush(c);
}

static void server_io(struct rs_io *io, uint32_t events)
{
    struct rs_ctlserver *s = io->ctx;

    (void)events;
    for (;;) {
        struct sockaddr_in sin;
        int fd = rs_accept_tcp(io->fd, &sin);
        struct rs_ctlconn *c;

        if (fd < 0)
            return;
        c = s->n_conns < s->max_conns ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            rs_log("control: connection refused (%u open)", s->n_conns);
            close(fd);
            continue;
        }
        c->loop = s->loop;
        c->name = "client";
        c->addr = rs_addr_of_sin(&sin);
        c->id = ++s->next_id;
        c->key = s->key;
        c->seq = s->seq;
        c->sender = s->sender;
        c->replay = &s->replay;
        c->up = true;
        c->out_max = s->out_max;
        c->on_msg = s->on_msg;
        c->ctx = s->ctx;
        c->server = s;
        if (rs_io_start(s->loop, &c->io, fd, EPOLLIN, conn_io, c) < 0) {
            close(fd);
            free(c);
            continue;
        }
        RS_LIST_PUSH(s->conns, c);
        s->n_conns++;
        s->accepted++;
    }
}

int rs_ctlserver_open(struct rs_ctlserver *s, struct rs_loop *l, struct rs_addr a, const struct rs_ctl_key *key,
                      uint64_t *seq, uint32_t sender, rs_ctl_msg_fn on_msg, void *ctx)
{
    int fd = rs_listen_tcp(a, 1024), e;

    memset(s, 0, sizeof(*s));
    s->io.fd = -1;
    if (fd < 0)
        return fd;
    s->loop = l;
    s->key = key;
    s->seq = seq;
    s->sender = sender;
    s->max_conns = SERVER_CONNS;
    s->out_max = SERVER_OUT_MAX;
    s->on_msg = on_msg;
    s->ctx = ctx;
    rs_ctl_replay_init(&s->replay);
    if ((e = rs_io_start(l, &s->io, fd, EPOLLIN, server_io, s)) < 0) {
        close(fd);
        return e;
    }
    return 0;
}

void rs_ctlserver_close(struct rs_ctlserver *s)
{
    rs_io_stop(&s->io);
    if (s->io.fd >= 0)
        close(s->io.fd);
    s->io.fd = -1;
    while (s->conns)
        conn_down(s->conns, -ECANCELED);
}

struct rs_ctlconn *rs_ctlserver_find(struct rs_ctlserver *s, uint64_t id)
{
    for (struct rs_ctlconn *c = s->conns; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* ---- Outgoing peers ---------------------------------------------------------------- */

static void peer_connect(struct rs_ctlconn *c)
{
    struct sockaddr_in sin = rs_addr_sin(c->addr);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        rs_timer_after(c->loop, &c->retry, c->backoff_ns);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->io.fd = fd;
    if ((connect(fd, (struct sockaddr *)&sin, sizeof(sin)) && errno != EINPROGRESS)
        || rs_io_start(c->loop, &c->io, fd, EPOLLOUT, conn_io, c) < 0) {
        conn_down(c, -errno);   /* closes fd (c->io.fd) */
        return;
    }
    /* Until it is up, the retry timer is the connect time-out. */
    rs_timer_after(c->loop, &c->retry, c->connect_timeout_ns);
}

static void peer_retry(struct rs_timer *t)
{
    struct rs_ctlconn *c = t->ctx;

    if (rs_io_active(&c->io)) {          /* still connecting: give up on this try */
        conn_down(c, -ETIMEDOUT);
        return;
    }
    peer_connect(c);
}

int rs_ctlconn_peer(struct rs_ctlconn *c, struct rs_loop *l, const char *name, struct rs_addr a,
                    const struct rs_ctl_key *key, uint64_t *seq, uint32_t sender, size_t out_max,
                    rs_ctl_msg_fn on_msg, rs_ctl_state_fn on_state, void *ctx)
{
    memset(c, 0, sizeof(*c));
    c->loop = l;
    c->io.fd = -1;
    c->name = name;
    c->addr = a;
    c->key = key;
    c->seq = seq;
    c->sender = sender;
    c->replay = &c->own_replay;
    c->outgoing = true;
    c->out_max = out_max;
    c->backoff_ns = BACKOFF_MIN_NS;
    c->connect_timeout_ns = CONNECT_NS;
    c->on_msg = on_msg;
    c->on_state = on_state;
    c->ctx = ctx;
    rs_timer_init(&c->retry, peer_retry, c);
    peer_connect(c);
    return 0;
}

void rs_ctlconn_close(struct rs_ctlconn *c)
{
    if (!c->loop)
        return;
    rs_io_stop(&c->io);
    if (c->io.fd >= 0)
        close(c->io.fd);
    c->io.fd = -1;
    rs_timer_stop(c->loop, &c->retry);
    c->on_state = NULL;
    calls_fail(c, -ECANCELED);
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_off = c->out_cap = 0;
    c->up = false;
}
