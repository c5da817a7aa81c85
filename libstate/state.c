/* The state library (rs_state.h): sends each update's state through the
 * local rs-stated, holds non-deterministic responses until the peer backend
 * has the state, hands the peer's states to the application, and keeps the
 * connection maps that name accepted connections after their client. */
#include "rs_state.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"     /* rs_log, rs_mono_ns, rs_addr */
#include "loop.h"
#include "pp2.h"
#include "splice.h"     /* rs_ident_opt_get */
#include "xfer_rec.h"

/* ---- Limits ----------------------------------------------------------- */

#define MAP_MAX         1024u                   /* connection maps held */
#define MAP_TTL_NS      5000000000ull           /* unused maps expire */
#define WAIT_MAX        4096u                   /* synchronous updates in flight */
#define OUT_CAP         (2u << 20)              /* unsent records to stated: room for
                                                   a largest (1 MiB) state and more */
#define APPLIED_MAX     256u                    /* transaction IDs applied from the peer */
#define RETRY_MIN_NS    10000000ull             /* reconnect back-off: 10 ms .. 1 s */
#define RETRY_MAX_NS    1000000000ull

/* ---- Types ------------------------------------------------------------ */

struct held {
    uint32_t req;               /* our UPDATE record's id */
    rs_txn_id id;
    uint64_t deadline_ns;
};

struct conn_map {
    bool used;
    uint32_t peer_ip;
    uint16_t peer_port;
    struct rs_ctl_conn client;
    uint16_t next_num;
    uint8_t flags;
    uint64_t expires_ns;
};

enum lib_stat {
    XS_SENT, XS_SENT_SYNC, XS_ACKED, XS_FAILED, XS_TIMEOUTS, XS_UNSENT, XS_SKIPPED,
    XS_APPLIED, XS_APPLY_ERRORS, XS_MAPS, XS_MAPS_USED, XS_MAPS_EXPIRED, XS_HEADERS, XS_SYN_NAMES, XS_CONNECTS,
    XS_DISCONNECTS, XS_UNREPLICATED, XS_MAX,
};

static const char *const xs_names[XS_MAX] = {
    [XS_SENT] = "xfer_sent", [XS_SENT_SYNC] = "xfer_sent_sync", [XS_ACKED] = "xfer_acked",
    [XS_FAILED] = "xfer_failed", [XS_TIMEOUTS] = "xfer_timeouts", [XS_UNREPLICATED] = "xfer_unreplicated", [XS_UNSENT] = "xfer_unsent",
    [XS_SKIPPED] = "xfer_skipped_replayed", [XS_APPLIED] = "xfer_applied",
    [XS_APPLY_ERRORS] = "xfer_apply_errors", [XS_MAPS] = "xfer_maps",
    [XS_MAPS_USED] = "xfer_maps_used", [XS_MAPS_EXPIRED] = "xfer_maps_expired", [XS_HEADERS] = "xfer_headers", [XS_SYN_NAMES] = "xfer_syn_names",
    [XS_CONNECTS] = "xfer_connects", [XS_DISCONNECTS] = "xfer_disconnects",
};

struct rs_state {
    struct rs_loop *loop;
    struct rs_state_ops ops;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int fd;                     /* stated socket (-1: not connected) */
    struct rs_io io;
    struct rs_timer timer;      /* the nearest deadline: a held update, a reconnect */
    uint64_t timeout_ns;
    uint64_t retry_ns, next_try_ns;
    uint32_t next_id;
    uint32_t gen;               /* connections to stated so far: tells a late
                                   apply result from the current socket's */
    bool paused;                /* an APPLY runs on (RS_STATE_PENDING); later records wait */
    uint32_t paused_id;         /*   its record id and transaction */
    rs_txn_id paused_txn;
    uint32_t paused_len;
    uint8_t *in;                /* RS_XFER_IN_CAP bytes */
    size_t in_len;
    uint8_t out[OUT_CAP];
    size_t out_off, out_len;
    struct held held[WAIT_MAX];
    uint32_t n_held;
    struct conn_map maps[MAP_MAX];
    rs_txn_id applied[APPLIED_MAX];
    uint32_t applied_next;
    uint64_t stats[XS_MAX];
};

/* ---- Timer ------------------------------------------------------------ */

/* Arms the timer for the nearest deadline: a held update or a reconnect. */
static void arm(struct rs_state *x)
{
    uint64_t next = UINT64_MAX, now = rs_mono_ns();

    if (x->fd < 0)
        next = x->next_try_ns;
    for (uint32_t i = 0; i < x->n_held; i++)
        if (x->held[i].deadline_ns < next)
            next = x->held[i].deadline_ns;
    if (next == UINT64_MAX)
        rs_timer_stop(x->loop, &x->timer);
    else
        rs_timer_after(x->loop, &x->timer, next > now ? next - now : 1);
}

/* ---- Socket ----------------------------------------------------------- */

static void set_events(struct rs_state *x)
{
    rs_io_set(&x->io, (x->paused ? 0 : EPOLLIN) | (x->out_off < x->out_len ? EPOLLOUT : 0));
}

/* A synchronous update the peer did not take ('err'): the standby is gone
 * or unreachable, so the response goes out unreplicated rather than never.
 * That is safe: should this backend then crash mid-response, the alternate
 * lacks the state and recovery ends the connection cleanly (the plan's
 * "synchronous state missing"), never with a different response. */
static void unreplicated(struct rs_state *x, rs_txn_id id, int err)
{
    char ids[RS_TXN_ID_STRLEN];

    x->stats[XS_UNREPLICATED]++;
    rs_log("state-update %s unreplicated: %s; answering without a standby copy", rs_txn_str(id, ids),
           strerror(-err));
    x->ops.resume(x->ops.ctx, id, err);
}

/* Ends every held update: the standby copy cannot be confirmed. */
static void fail_held(struct rs_state *x, int err)
{
    while (x->n_held > 0) {
        rs_txn_id id = x->held[--x->n_held].id;

        x->stats[XS_FAILED]++;
        unreplicated(x, id, err);
    }
}

static void disconnect(struct rs_state *x, const char *why)
{
    if (x->fd < 0)
        return;
    rs_log("stated-disconnect %s %s waiting=%u", x->path, why, x->n_held);
    x->stats[XS_DISCONNECTS]++;
    rs_io_stop(&x->io);
    close(x->fd);
    x->fd = -1;
    x->in_len = x->out_off = x->out_len = 0;
    x->paused = false;          /* a running apply's result is dropped (gen moves on) */
    x->retry_ns = RETRY_MIN_NS;
    x->next_try_ns = rs_mono_ns() + x->retry_ns;
    fail_held(x, -ECONNRESET);
    arm(x);
}

static void on_io(struct rs_io *io, uint32_t events);

static void try_connect(struct rs_state *x)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    memcpy(sun.sun_path, x->path, sizeof(sun.sun_path));
    /* A unix connect completes or fails at once (EAGAIN: backlog full). */
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        rs_io_start(x->loop, &x->io, fd, EPOLLIN, on_io, x) < 0) {
        if (x->retry_ns == RETRY_MIN_NS)   /* once per outage, not per retry */
            rs_log("stated-connect %s failed: %s (retrying)", x->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        x->next_try_ns = rs_mono_ns() + x->retry_ns;
        x->retry_ns = x->retry_ns * 2 > RETRY_MAX_NS ? RETRY_MAX_NS : x->retry_ns * 2;
        return;
    }
    x->fd = fd;
    x->gen++;
    x->retry_ns = RETRY_MIN_NS;
    x->stats[XS_CONNECTS]++;
    rs_log("stated-connect %s", x->path);
}

/* Writes what the socket takes.  Returns 0 or a negative errno. */
static int flush(struct rs_state *x)
{
    int err = rs_send_some(x->fd, x->out, x->out_len, &x->out_off);

    if (err < 0)
        return err;
    if (x->out_off == x->out_len)
        x->out_off = x->out_len = 0;
    set_events(x);
    return 0;
}

/* Queues record 'r' and tries to send it.  Returns 0, -ENOTCONN or -ENOBUFS. */
static int send_rec(struct rs_state *x, const struct rs_xfer_rec *r)
{
    size_t n = rs_xfer_rec_size(r);
    int err;

    if (x->fd < 0)
        return -ENOTCONN;
    if (x->out_off > 0 && x->out_len + n > OUT_CAP) {
        memmove(x->out, x->out + x->out_off, x->out_len - x->out_off);
        x->out_len -= x->out_off;
        x->out_off = 0;
    }
    if (x->out_len + n > OUT_CAP)
        return -ENOBUFS;
    x->out_len += rs_xfer_rec_encode(r, x->out + x->out_len);
    /* A broken socket is closed from the event loop (EPOLLHUP), not here:
     * this may run inside the application's handler, where resuming other
     * requests must wait. */
    err = flush(x);
    return err < 0 ? -ENOTCONN : 0;
}

static void send_done(struct rs_state *x, uint32_t id, int status)
{
    struct rs_xfer_rec r = { .type = RS_XFER_DONE, .id = id, .status = status };

    if (send_rec(x, &r) < 0)
        rs_log("stated-done id=%u lost (socket full or closed)", id);
}

/* ---- Connection maps -------------------------------------------------- */

static void map_expire(struct rs_state *x, uint64_t now)
{
    for (uint32_t i = 0; i < MAP_MAX; i++) {
        struct conn_map *m = &x->maps[i];

        if (m->used && m->expires_ns <= now) {
            m->used = false;
            x->stats[XS_MAPS_EXPIRED]++;
            rs_log("conn-map-expired peer=%s", RS_A(((struct rs_addr){ m->peer_ip, m->peer_port })));
        }
    }
}

static int map_put(struct rs_state *x, const struct rs_ctl_conn_map *cm)
{
    uint64_t now = rs_mono_ns();
    struct conn_map *free_slot = NULL;

    map_expire(x, now);
    for (uint32_t i = 0; i < MAP_MAX; i++) {
        struct conn_map *m = &x->maps[i];

        if (m->used && m->peer_ip == cm->peer.ip4 && m->peer_port == cm->peer.port) {
            free_slot = m;      /* a newer map for the same peer replaces the old */
            break;
        }
        if (!m->used && !free_slot)
            free_slot = m;
    }
    if (!free_slot)
        return -ENOBUFS;
    *free_slot = (struct conn_map){ true, cm->peer.ip4, cm->peer.port, cm->client, cm->next_num, cm->flags,
                                    now + MAP_TTL_NS };
    x->stats[XS_MAPS]++;
    return 0;
}

/* Uses up the map of peer 'pa' into 'out'.  Returns false when none is held. */
static bool map_take(struct rs_state *x, struct rs_addr pa, struct rs_state_conn *out)
{
    map_expire(x, rs_mono_ns());
    for (uint32_t i = 0; i < MAP_MAX; i++) {
        struct conn_map *m = &x->maps[i];

        if (m->used && m->peer_ip == pa.ip && m->peer_port == pa.port) {
            m->used = false;
            out->client_ip = m->client.ip4;
            out->client_port = m->client.port;
            out->first_num = m->next_num;
            out->rerun = m->flags & RS_CTL_CONN_MAP_RERUN;
            x->stats[XS_MAPS_USED]++;
            return true;
        }
    }
    return false;
}

int rs_state_listening(struct rs_state *s, int fd)
{
    int one = 1;

    if (!s)
        return 0;
    return setsockopt(fd, IPPROTO_TCP, TCP_SAVE_SYN, &one, sizeof(one)) ? -errno : 0;
}

/* The client the SYN of 'fd' names (the option rs-proxy's tc program adds
 * when it splices at the SYN).  Returns whether there was one. */
static bool named_by_syn(struct rs_state *s, int fd, struct rs_state_conn *out)
{
    uint8_t syn[RS_IP4_HDR_MIN + 40 + RS_TCP_HDR_MAX];
    socklen_t len = sizeof(syn);
    uint32_t ihl, hlen, ip;
    uint16_t port;

    if (getsockopt(fd, IPPROTO_TCP, TCP_SAVED_SYN, syn, &len) || len < RS_IP4_HDR_MIN + RS_TCP_HDR_MIN
        || syn[0] >> 4 != 4)
        return false;
    ihl = (uint32_t)(syn[0] & 0x0f) * 4;
    if (ihl < RS_IP4_HDR_MIN || len < ihl + RS_TCP_HDR_MIN)
        return false;
    hlen = (uint32_t)(syn[ihl + 12] >> 4) * 4;
    if (len < ihl + hlen || rs_ident_opt_get(syn + ihl, hlen, &ip, &port))
        return false;
    out->client_ip = ip;
    out->client_port = port;
    out->first_num = 0;
    out->settled = true;
    s->stats[XS_SYN_NAMES]++;
    rs_log("conn-named %s client=%s (SYN option)", out->name, RS_A(((struct rs_addr){ ip, port })));
    return true;
}

void rs_state_accepted(struct rs_state *s, int fd, struct rs_state_conn *out)
{
    struct sockaddr_in peer, local;
    socklen_t pl = sizeof(peer), ll = sizeof(local);
    struct rs_addr pa = { 0, 0 }, la = { 0, 0 };

    if (getpeername(fd, (struct sockaddr *)&peer, &pl) == 0)
        pa = rs_addr_of_sin(&peer);
    if (getsockname(fd, (struct sockaddr *)&local, &ll) == 0)
        la = rs_addr_of_sin(&local);
    *out = (struct rs_state_conn){ .client_ip = pa.ip, .client_port = pa.port, .settled = !s };
    snprintf(out->name, sizeof(out->name), "%s->%s", RS_A(pa), RS_A(la));
    /* A proxy or the logger acting for a client: name that client's
     * transactions as the logger does. */
    if (s && map_take(s, pa, out)) {
        out->settled = true;
        rs_log("conn-mapped %s client=%s next=%u%s", out->name,
               RS_A(((struct rs_addr){ out->client_ip, out->client_port })), out->first_num,
               out->rerun ? " rerun" : "");
        return;
    }
    if (s)
        named_by_syn(s, fd, out);
}

int rs_state_named_by_header(struct rs_state *s, const void *buf, size_t len, bool eof, struct rs_state_conn *who)
{
    struct rs_pp2 h;
    int n;

    if (who->settled || !s)
        return -ENOENT;
    n = rs_pp2_parse(buf, len, &h);
    if (n == 0 && !eof)
        return 0;
    who->settled = true;
    if (n <= 0)
        return n < 0 ? n : -ENOENT;
    if (!h.local) {
        who->client_ip = h.src_ip;
        who->client_port = h.src_port;
        who->first_num = 0;
        s->stats[XS_HEADERS]++;
        rs_log("conn-named %s client=%s (PROXY header)", who->name, RS_A(((struct rs_addr){ h.src_ip, h.src_port })));
    }
    return n;
}

/* ---- Records from stated ---------------------------------------------- */

static bool applied_here(struct rs_state *x, rs_txn_id id)
{
    for (uint32_t i = 0; i < APPLIED_MAX; i++)
        if (x->applied[i] == id)
            return true;
    return false;
}

/* Counts the apply of 'txn' ('len' bytes) that ended with 'err', logs a
 * failed one and remembers an applied one (rs_state_update then does not
 * send its state back). */
static void applied(struct rs_state *x, rs_txn_id txn, int err, uint32_t len)
{
    char ids[RS_TXN_ID_STRLEN];

    if (err < 0) {
        x->stats[XS_APPLY_ERRORS]++;
        rs_log("state-apply %s failed: %s (%u bytes)", rs_txn_str(txn, ids), strerror(-err), len);
        return;
    }
    x->stats[XS_APPLIED]++;
    x->applied[x->applied_next++ % APPLIED_MAX] = txn;
}

/* stated's answer to our UPDATE 'r->id'. */
static void on_done(struct rs_state *x, const struct rs_xfer_rec *r)
{
    for (uint32_t i = 0; i < x->n_held; i++) {
        struct held *w = &x->held[i];
        rs_txn_id id;

        if (w->req != r->id)
            continue;
        id = w->id;
        *w = x->held[--x->n_held];
        x->stats[r->status ? XS_FAILED : XS_ACKED]++;
        if (r->status)
            unreplicated(x, id, r->status < 0 && r->status >= -4095 ? r->status : -EPROTO);
        else
            x->ops.resume(x->ops.ctx, id, 0);
        arm(x);
        return;
    }
    if (r->status < 0) {        /* an asynchronous update that did not arrive */
        x->stats[XS_FAILED]++;
        rs_log("state-update id=%u failed: %s", r->id, strerror(-r->status));
    } else {
        x->stats[XS_ACKED]++;
    }
}

/* Handles one record.  Returns false when the socket was closed meanwhile. */
static bool on_record(struct rs_state *x, const struct rs_xfer_rec *r)
{
    switch (r->type) {
    case RS_XFER_APPLY: {
        int err = x->ops.apply(x->ops.ctx, r->txn, r->state, r->len, (uint64_t)x->gen << 32 | r->id);

        if (err == RS_STATE_PENDING) {
            /* stated wants answers in order: the records behind this one
             * wait for rs_state_apply_done. */
            x->paused = true;
            x->paused_id = r->id;
            x->paused_txn = r->txn;
            x->paused_len = r->len;
            break;
        }
        applied(x, r->txn, err, r->len);
        send_done(x, r->id, err);
        break;
    }
    case RS_XFER_CONN_MAP: {
        int err = map_put(x, &r->map);
        struct rs_addr peer = { r->map.peer.ip4, r->map.peer.port };
        struct rs_addr client = { r->map.client.ip4, r->map.client.port };

        rs_log("conn-map peer=%s client=%s next=%u%s", RS_A(peer), RS_A(client), r->map.next_num,
               err ? " refused: table full" : "");
        send_done(x, r->id, err);
        break;
    }
    case RS_XFER_DONE:
        on_done(x, r);
        break;
    case RS_XFER_EXPORT: {
        struct rs_xfer_rec s = { .type = RS_XFER_SNAPSHOT, .id = r->id };
        const void *state = NULL;
        size_t len = 0;
        int err = x->ops.export ? x->ops.export(x->ops.ctx, &state, &len) : -EOPNOTSUPP;

        if (!err && (len == 0 || len > RS_CTL_STATE_MAX))
            err = -EMSGSIZE;
        if (!err) {
            s.state = state;
            s.len = (uint32_t)len;
            if (send_rec(x, &s) < 0)
                rs_log("state-export id=%u lost (socket full or closed)", r->id);
        } else {
            send_done(x, r->id, err);
        }
        rs_log("state-export id=%u %zuB%s%s", r->id, len, err ? ": " : "", err ? strerror(-err) : "");
        break;
    }
    default:
        rs_log("stated-record type=%u unexpected (ignored)", r->type);
        break;
    }
    return x->fd >= 0;
}

/* Hands the complete records in 'in' to on_record until one pauses the
 * stream.  Returns false when the socket was closed meanwhile. */
static bool process(struct rs_state *x)
{
    size_t off = 0;

    while (!x->paused) {
        struct rs_xfer_rec r;
        long used = rs_xfer_rec_decode(x->in + off, x->in_len - off, &r);

        if (used == 0)
            break;
        if (used < 0) {
            disconnect(x, "malformed record");
            return false;
        }
        off += (size_t)used;
        if (!on_record(x, &r))
            return false;       /* closed: 'in' was reset */
    }
    memmove(x->in, x->in + off, x->in_len - off);
    x->in_len -= off;
    return true;
}

/* Reads and handles records; stops reading while an APPLY is paused. */
static void on_readable(struct rs_state *x)
{
    for (;;) {
        ssize_t n;

        if (!process(x))
            return;
        if (x->paused || x->in_len == RS_XFER_IN_CAP) {
            set_events(x);
            return;
        }
        n = recv(x->fd, x->in + x->in_len, RS_XFER_IN_CAP - x->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                disconnect(x, strerror(errno));
            return;
        }
        if (n == 0) {
            disconnect(x, "closed by stated");
            return;
        }
        x->in_len += (size_t)n;
    }
}

void rs_state_apply_done(struct rs_state *x, uint64_t token, int status)
{
    if (!x->paused || x->fd < 0 || (uint32_t)(token >> 32) != x->gen || (uint32_t)token != x->paused_id) {
        rs_log("state-apply result %d dropped: stated reconnected meanwhile", status);
        return;
    }
    x->paused = false;
    applied(x, x->paused_txn, status, x->paused_len);
    send_done(x, x->paused_id, status);
    if (x->fd >= 0)
        on_readable(x);
    if (x->fd >= 0)
        set_events(x);
}

/* A held update's deadline or a reconnect is due. */
static void on_timer(struct rs_timer *t)
{
    struct rs_state *x = t->ctx;
    uint64_t now = rs_mono_ns();
    uint32_t i = 0;

    while (i < x->n_held) {
        if (x->held[i].deadline_ns <= now) {
            rs_txn_id id = x->held[i].id;
            char ids[RS_TXN_ID_STRLEN];

            x->held[i] = x->held[--x->n_held];
            x->stats[XS_TIMEOUTS]++;
            rs_log("state-update %s timed out: no ACK from the peer", rs_txn_str(id, ids));
            unreplicated(x, id, -ETIMEDOUT);
        } else {
            i++;
        }
    }
    if (x->fd < 0 && now >= x->next_try_ns)
        try_connect(x);
    arm(x);
}

static void on_io(struct rs_io *io, uint32_t events)
{
    struct rs_state *x = io->ctx;

    if (x->fd < 0)
        return;
    if (events & EPOLLOUT) {
        int err = flush(x);

        if (err < 0) {
            disconnect(x, strerror(-err));
            return;
        }
    }
    if (x->paused && (events & (EPOLLHUP | EPOLLERR))) {
        disconnect(x, "closed by stated");     /* not read while paused: no EOF seen */
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        on_readable(x);
}

/* ---- Updates ---------------------------------------------------------- */

int rs_state_update(struct rs_state *x, rs_txn_id id, const void *state, size_t len, bool sync)
{
    struct rs_xfer_rec r = { .type = RS_XFER_UPDATE, .txn = id, .sync = sync, .state = state,
                             .len = (uint32_t)len };
    char ids[RS_TXN_ID_STRLEN];
    int err;

    if (applied_here(x, id)) {
        /* A replayed transaction: its state came from the peer. */
        x->stats[XS_SKIPPED]++;
        return 0;
    }
    if (sync && x->n_held == WAIT_MAX)
        return -EBUSY;
    r.id = ++x->next_id;
    err = send_rec(x, &r);
    if (err < 0) {
        x->stats[XS_UNSENT]++;
        rs_log("state-update %s not sent: %s%s", rs_txn_str(id, ids), strerror(-err),
               sync ? " (answered without a standby copy)" : " (asynchronous: the peer misses it)");
        if (sync)
            x->stats[XS_UNREPLICATED]++;
        return 0;
    }
    x->stats[XS_SENT]++;
    if (!sync)
        return 0;
    x->stats[XS_SENT_SYNC]++;
    x->held[x->n_held++] = (struct held){ r.id, id, rs_mono_ns() + x->timeout_ns };
    arm(x);
    return RS_STATE_WAIT;
}

void rs_state_forget(struct rs_state *x, rs_txn_id id)
{
    for (uint32_t i = 0; i < x->n_held; i++) {
        if (x->held[i].id == id) {
            x->held[i] = x->held[--x->n_held];
            arm(x);
            return;
        }
    }
}

/* ---- Set-up ----------------------------------------------------------- */

struct rs_state *rs_state_open(struct rs_loop *loop, const char *path, uint64_t timeout_ns,
                               const struct rs_state_ops *ops)
{
    struct rs_state *x;

    if (strlen(path) >= sizeof(x->path)) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    x = calloc(1, sizeof(*x));
    if (!x || !(x->in = malloc(RS_XFER_IN_CAP))) {
        free(x);
        errno = ENOMEM;
        return NULL;
    }
    x->loop = loop;
    x->ops = *ops;
    snprintf(x->path, sizeof(x->path), "%s", path);
    x->fd = -1;
    x->timeout_ns = timeout_ns ? timeout_ns : RS_STATE_TIMEOUT_NS;
    x->retry_ns = RETRY_MIN_NS;
    rs_timer_init(&x->timer, on_timer, x);
    try_connect(x);
    arm(x);
    return x;
}

void rs_state_stats(const struct rs_state *x, FILE *f)
{
    if (!x)
        return;
    fprintf(f, " xfer_connected=%d xfer_waiting=%u", x->fd >= 0, x->n_held);
    rs_stats_put(f, xs_names, x->stats, XS_MAX);
}

void rs_state_close(struct rs_state *x)
{
    if (!x)
        return;
    rs_io_stop(&x->io);
    rs_timer_stop(x->loop, &x->timer);
    if (x->fd >= 0)
        close(x->fd);
    free(x->in);
    free(x);
}
