/* rs-app's state-transfer library (see xfer.h): the state hooks send each
 * update's state through the local rs-stated, hold non-deterministic
 * responses until the peer backend has the state, apply state the peer sent,
 * and keep the connection maps that give accepted connections the identity
 * of the client they act for. */
#include "app.h"
#include "xfer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct xfer_wait {
    uint32_t req;               /* our UPDATE record's id */
    rs_txn_id id;
    uint64_t deadline_ns;
};

struct xfer_map {
    bool used;
    uint32_t peer_ip;
    uint16_t peer_port;
    struct rs_ctl_conn client;
    uint16_t next_num;
    uint8_t flags;
    uint64_t expires_ns;
};

enum xfer_stat {
    XS_SENT, XS_SENT_SYNC, XS_ACKED, XS_FAILED, XS_TIMEOUTS, XS_UNSENT, XS_SKIPPED,
    XS_APPLIED, XS_APPLY_ERRORS, XS_MAPS, XS_MAPS_USED, XS_MAPS_EXPIRED, XS_CONNECTS,
    XS_DISCONNECTS, XS_UNREPLICATED, XS_MAX,
};

static const char *const xs_names[XS_MAX] = {
    [XS_SENT] = "xfer_sent", [XS_SENT_SYNC] = "xfer_sent_sync", [XS_ACKED] = "xfer_acked",
    [XS_FAILED] = "xfer_failed", [XS_TIMEOUTS] = "xfer_timeouts", [XS_UNREPLICATED] = "xfer_unreplicated", [XS_UNSENT] = "xfer_unsent",
    [XS_SKIPPED] = "xfer_skipped_replayed", [XS_APPLIED] = "xfer_applied",
    [XS_APPLY_ERRORS] = "xfer_apply_errors", [XS_MAPS] = "xfer_maps",
    [XS_MAPS_USED] = "xfer_maps_used", [XS_MAPS_EXPIRED] = "xfer_maps_expired",
    [XS_CONNECTS] = "xfer_connects", [XS_DISCONNECTS] = "xfer_disconnects",
};

struct app_xfer {
    struct rs_app *app;
    const char *path;
    int fd;                     /* stated socket (-1: not connected) */
    struct rs_io io;
    struct rs_timer timer;      /* the nearest deadline: a waiting update, a reconnect */
    uint64_t timeout_ns;
    uint64_t retry_ns, next_try_ns;
    uint32_t next_id;
    uint32_t gen;               /* connections to stated so far: tells a late
                                   apply result from the current socket's */
    bool paused;                /* front mode: an APPLY runs; later records wait */
    uint32_t paused_id;         /*   its record id and transaction */
    rs_txn_id paused_txn;
    uint32_t paused_len;
    uint8_t *in;                /* XFER_REC_MAX + XFER_LEN_FIELD bytes */
    size_t in_len;
    uint8_t out[XFER_OUT_CAP];
    size_t out_off, out_len;
    struct xfer_wait wait[XFER_WAIT_MAX];
    uint32_t n_wait;
    struct xfer_map maps[XFER_MAP_MAX];
    rs_txn_id applied[XFER_APPLIED_MAX];
    uint32_t applied_next;
    uint64_t stats[XS_MAX];
};

static const char *txn_str(rs_txn_id id, char buf[RS_TXN_ID_STRLEN])
{
    rs_txn_id_format(id, buf, RS_TXN_ID_STRLEN);
    return buf;
}

/* ---- Timer ------------------------------------------------------------ */

/* Arms the timer for the nearest deadline: a waiting update or a reconnect. */
static void xfer_arm(struct app_xfer *x)
{
    uint64_t next = UINT64_MAX, now = rs_mono_ns();

    if (x->fd < 0)
        next = x->next_try_ns;
    for (uint32_t i = 0; i < x->n_wait; i++)
        if (x->wait[i].deadline_ns < next)
            next = x->wait[i].deadline_ns;
    if (next == UINT64_MAX)
        rs_timer_stop(&x->app->loop, &x->timer);
    else
        rs_timer_after(&x->app->loop, &x->timer, next > now ? next - now : 1);
}

/* ---- Socket ----------------------------------------------------------- */

static void xfer_set_events(struct app_xfer *x)
{
    rs_io_set(&x->io, (x->paused ? 0 : EPOLLIN) | (x->out_off < x->out_len ? EPOLLOUT : 0));
}

/* A synchronous update the peer did not take ('err'): the standby is gone
 * or unreachable, so the response goes out unreplicated rather than never.
 * That is safe: should this backend then crash mid-response, the alternate
 * lacks the state and recovery ends the connection cleanly (the plan's
 * "synchronous state missing"), never with a different response. */
static void xfer_unreplicated(struct app_xfer *x, rs_txn_id id, int err)
{
    char ids[RS_TXN_ID_STRLEN];

    x->stats[XS_UNREPLICATED]++;
    rs_log("state-update %s unreplicated: %s; answering without a standby copy", txn_str(id, ids),
           strerror(-err));
    rs_app_txn_resume(x->app, id, 0);
}

/* Ends every waiting update: the standby copy cannot be confirmed. */
static void xfer_fail_waiters(struct app_xfer *x, int err)
{
    while (x->n_wait > 0) {
        rs_txn_id id = x->wait[--x->n_wait].id;

        x->stats[XS_FAILED]++;
        xfer_unreplicated(x, id, err);
    }
}

static void xfer_disconnect(struct app_xfer *x, const char *why)
{
    if (x->fd < 0)
        return;
    rs_log("stated-disconnect %s %s waiting=%u", x->path, why, x->n_wait);
    x->stats[XS_DISCONNECTS]++;
    rs_io_stop(&x->io);
    close(x->fd);
    x->fd = -1;
    x->in_len = x->out_off = x->out_len = 0;
    x->paused = false;          /* a running apply's result is dropped (gen moves on) */
    x->retry_ns = XFER_RETRY_MIN_NS;
    x->next_try_ns = rs_mono_ns() + x->retry_ns;
    xfer_fail_waiters(x, -ECONNRESET);
    xfer_arm(x);
}

static void xfer_on_io(struct rs_io *io, uint32_t events);

static void xfer_connect(struct app_xfer *x)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", x->path);
    /* A unix connect completes or fails at once (EAGAIN: backlog full). */
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        rs_io_start(&x->app->loop, &x->io, fd, EPOLLIN, xfer_on_io, x) < 0) {
        if (x->retry_ns == XFER_RETRY_MIN_NS)   /* once per outage, not per retry */
            rs_log("stated-connect %s failed: %s (retrying)", x->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        x->next_try_ns = rs_mono_ns() + x->retry_ns;
        x->retry_ns = x->retry_ns * 2 > XFER_RETRY_MAX_NS ? XFER_RETRY_MAX_NS : x->retry_ns * 2;
        return;
    }
    x->fd = fd;
    x->gen++;
    x->retry_ns = XFER_RETRY_MIN_NS;
    x->stats[XS_CONNECTS]++;
    rs_log("stated-connect %s", x->path);
}

/* Writes what the socket takes.  Returns 0 or a negative errno. */
static int xfer_flush(struct app_xfer *x)
{
    while (x->out_off < x->out_len) {
        ssize_t w = send(x->fd, x->out + x->out_off, x->out_len - x->out_off, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -errno;
        }
        x->out_off += (size_t)w;
    }
    if (x->out_off == x->out_len)
        x->out_off = x->out_len = 0;
    xfer_set_events(x);
    return 0;
}

/* Queues record 'r' and tries to send it.  Returns 0, -ENOTCONN or -ENOBUFS. */
static int xfer_send(struct app_xfer *x, const struct xfer_rec *r)
{
    size_t n = xfer_rec_size(r);
    int err;

    if (x->fd < 0)
        return -ENOTCONN;
    if (x->out_off > 0 && x->out_len + n > XFER_OUT_CAP) {
        memmove(x->out, x->out + x->out_off, x->out_len - x->out_off);
        x->out_len -= x->out_off;
        x->out_off = 0;
    }
    if (x->out_len + n > XFER_OUT_CAP)
        return -ENOBUFS;
    x->out_len += xfer_rec_encode(r, x->out + x->out_len);
    /* A broken socket is closed from the event loop (EPOLLHUP), not here:
     * this may run inside a hook, where resuming other requests must wait. */
    err = xfer_flush(x);
    return err < 0 ? -ENOTCONN : 0;
}

static void xfer_done(struct app_xfer *x, uint32_t id, int status)
{
    struct xfer_rec r = { .type = XFER_DONE, .id = id, .status = status };

    if (xfer_send(x, &r) < 0)
        rs_log("stated-done id=%u lost (socket full or closed)", id);
}

/* ---- Connection maps -------------------------------------------------- */

static void map_expire(struct app_xfer *x, uint64_t now)
{
    for (uint32_t i = 0; i < XFER_MAP_MAX; i++) {
        struct xfer_map *m = &x->maps[i];

        if (m->used && m->expires_ns <= now) {
            m->used = false;
            x->stats[XS_MAPS_EXPIRED]++;
            rs_log("conn-map-expired peer=%s", RS_A(((struct rs_addr){ m->peer_ip, m->peer_port })));
        }
    }
}

static int map_put(struct app_xfer *x, const struct rs_ctl_conn_map *cm)
{
    uint64_t now = rs_mono_ns();
    struct xfer_map *free_slot = NULL;

    map_expire(x, now);
    for (uint32_t i = 0; i < XFER_MAP_MAX; i++) {
        struct xfer_map *m = &x->maps[i];

        if (m->used && m->peer_ip == cm->peer.ip4 && m->peer_port == cm->peer.port) {
            free_slot = m;      /* a newer map for the same peer replaces the old */
            break;
        }
        if (!m->used && !free_slot)
            free_slot = m;
    }
    if (!free_slot)
        return -ENOBUFS;
    *free_slot = (struct xfer_map){ true, cm->peer.ip4, cm->peer.port, cm->client, cm->next_num, cm->flags,
                                    now + XFER_MAP_TTL_NS };
    x->stats[XS_MAPS]++;
    return 0;
}

bool app_xfer_map_take(struct rs_app *app, uint32_t peer_ip, uint16_t peer_port,
                       uint32_t *client_ip, uint16_t *client_port, uint16_t *next_num, uint8_t *flags)
{
    struct app_xfer *x = app->xfer;

    if (!x)
        return false;
    map_expire(x, rs_mono_ns());
    for (uint32_t i = 0; i < XFER_MAP_MAX; i++) {
        struct xfer_map *m = &x->maps[i];

        if (m->used && m->peer_ip == peer_ip && m->peer_port == peer_port) {
            m->used = false;
            *client_ip = m->client.ip4;
            *client_port = m->client.port;
            *next_num = m->next_num;
            *flags = m->flags;
            x->stats[XS_MAPS_USED]++;
            return true;
        }
    }
    return false;
}

/* ---- Records from stated ---------------------------------------------- */

static bool applied_here(struct app_xfer *x, rs_txn_id id)
{
    for (uint32_t i = 0; i < XFER_APPLIED_MAX; i++)
        if (x->applied[i] == id)
            return true;
    return false;
}

/* Counts and logs the apply of 'txn' ('len' bytes; 'state' is logged when
 * given) that ended with 'err', and remembers an applied one (hook_update
 * then does not send its state back). */
static void xfer_applied(struct app_xfer *x, rs_txn_id txn, int err, const void *state, uint32_t len)
{
    char ids[RS_TXN_ID_STRLEN];

    if (err < 0) {
        x->stats[XS_APPLY_ERRORS]++;
        rs_log("state-apply %s failed: %s (%u bytes)", txn_str(txn, ids), strerror(-err), len);
        return;
    }
    x->stats[XS_APPLIED]++;
    x->applied[x->applied_next++ % XFER_APPLIED_MAX] = txn;
    if (state)
        rs_log("state-apply %s %.*s", txn_str(txn, ids), (int)len, (const char *)state);
}

static bool on_record(void *ctx, const struct xfer_rec *r)
{
    struct app_xfer *x = ctx;

    switch (r->type) {
    case XFER_APPLY: {
        int err;

        if (x->app->front) {
            /* The apply command runs asynchronously; stated wants answers in
             * order, so the records behind this one wait (app_xfer_apply_done). */
            err = app_front_apply(x->app, r->txn, r->state, r->len, (uint64_t)x->gen << 32 | r->id);
            if (err > 0) {
                x->paused = true;
                x->paused_id = r->id;
                x->paused_txn = r->txn;
                x->paused_len = r->len;
                break;
            }
            xfer_applied(x, r->txn, err, NULL, r->len);
        } else {
            err = rs_app_state_apply(x->app, r->txn, r->state, r->len);
            xfer_applied(x, r->txn, err, r->state, r->len);
        }
        xfer_done(x, r->id, err);
        break;
    }
    case XFER_CONN_MAP: {
        int err = map_put(x, &r->map);
        struct rs_addr peer = { r->map.peer.ip4, r->map.peer.port };
        struct rs_addr client = { r->map.client.ip4, r->map.client.port };

        rs_log("conn-map peer=%s client=%s next=%u%s", RS_A(peer), RS_A(client), r->map.next_num,
               err ? " refused: table full" : "");
        xfer_done(x, r->id, err);
        break;
    }
    case XFER_DONE:
        for (uint32_t i = 0; i < x->n_wait; i++) {
            struct xfer_wait *w = &x->wait[i];
            rs_txn_id id;

            if (w->req != r->id)
                continue;
            id = w->id;
            *w = x->wait[--x->n_wait];
            x->stats[r->status ? XS_FAILED : XS_ACKED]++;
            if (r->status)
                xfer_unreplicated(x, id, r->status < 0 && r->status >= -4095 ? r->status : -EPROTO);
            else
                rs_app_txn_resume(x->app, id, 0);
            xfer_arm(x);
            return x->fd >= 0;
        }
        if (r->status < 0) {    /* an asynchronous update that did not arrive */
            x->stats[XS_FAILED]++;
            rs_log("state-update id=%u failed: %s", r->id, strerror(-r->status));
        } else {
            x->stats[XS_ACKED]++;
        }
        break;
    default:
        rs_log("stated-record type=%u unexpected (ignored)", r->type);
        break;
    }
    return x->fd >= 0;
}

/* Hands the complete records in 'in' to on_record until one pauses the
 * stream.  Returns false when the socket was closed meanwhile. */
static bool xfer_process(struct app_xfer *x)
{
    size_t off = 0;

    while (!x->paused) {
        struct xfer_rec r;
        long used = xfer_rec_decode(x->in + off, x->in_len - off, &r);

        if (used == 0)
            break;
        if (used < 0) {
            xfer_disconnect(x, "malformed record");
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

/* Like xfer_read (xfer.h), but stops reading while an APPLY is paused. */
static void xfer_on_readable(struct app_xfer *x)
{
    for (;;) {
        ssize_t n;

        if (!xfer_process(x))
            return;
        if (x->paused || x->in_len == XFER_IN_CAP) {
            xfer_set_events(x);
            return;
        }
        n = recv(x->fd, x->in + x->in_len, XFER_IN_CAP - x->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                xfer_disconnect(x, strerror(errno));
            return;
        }
        if (n == 0) {
            xfer_disconnect(x, "closed by stated");
            return;
        }
        x->in_len += (size_t)n;
    }
}

void app_xfer_apply_done(struct rs_app *app, uint64_t cookie, int status)
{
    struct app_xfer *x = app->xfer;

    if (!x || !x->paused || x->fd < 0 || (uint32_t)(cookie >> 32) != x->gen ||
        (uint32_t)cookie != x->paused_id) {
        rs_log("state-apply result %d dropped: stated reconnected meanwhile", status);
        return;
    }
    x->paused = false;
    xfer_applied(x, x->paused_txn, status, NULL, x->paused_len);
    xfer_done(x, x->paused_id, status);
    if (x->fd >= 0)
        xfer_on_readable(x);
    if (x->fd >= 0)
        xfer_set_events(x);
}

/* A waiting update's deadline or a reconnect is due. */
static void xfer_on_timer(struct rs_timer *t)
{
    struct app_xfer *x = t->ctx;
    uint64_t now = rs_mono_ns();
    uint32_t i = 0;

    while (i < x->n_wait) {
        if (x->wait[i].deadline_ns <= now) {
            rs_txn_id id = x->wait[i].id;
            char ids[RS_TXN_ID_STRLEN];

            x->wait[i] = x->wait[--x->n_wait];
            x->stats[XS_TIMEOUTS]++;
            rs_log("state-update %s timed out: no ACK from the peer", txn_str(id, ids));
            xfer_unreplicated(x, id, -ETIMEDOUT);
        } else {
            i++;
        }
    }
    if (x->fd < 0 && now >= x->next_try_ns)
        xfer_connect(x);
    xfer_arm(x);
}

static void xfer_on_io(struct rs_io *io, uint32_t events)
{
    struct app_xfer *x = io->ctx;

    if (x->fd < 0)
        return;
    if (events & EPOLLOUT) {
        int err = xfer_flush(x);

        if (err < 0) {
            xfer_disconnect(x, strerror(-err));
            return;
        }
    }
    if (x->paused && (events & (EPOLLHUP | EPOLLERR))) {
        xfer_disconnect(x, "closed by stated");     /* not read while paused: no EOF seen */
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        xfer_on_readable(x);
}

/* ---- Hooks ------------------------------------------------------------ */

static int hook_update(void *ctx, rs_txn_id id, const void *state, size_t len, int nondet)
{
    struct app_xfer *x = ctx;
    struct xfer_rec r = { .type = XFER_UPDATE, .txn = id, .sync = nondet != 0, .state = state,
                          .len = (uint32_t)len };
    char ids[RS_TXN_ID_STRLEN];
    int err;

    if (applied_here(x, id)) {
        /* A replayed transaction: its state came from the peer. */
        x->stats[XS_SKIPPED]++;
        return 0;
    }
    if (nondet && x->n_wait == XFER_WAIT_MAX)
        return -EBUSY;
    r.id = ++x->next_id;
    err = xfer_send(x, &r);
    if (err < 0) {
        x->stats[XS_UNSENT]++;
        rs_log("state-update %s not sent: %s%s", txn_str(id, ids), strerror(-err),
               nondet ? " (answered without a standby copy)" : " (asynchronous: the peer misses it)");
        if (nondet)
            x->stats[XS_UNREPLICATED]++;
        return 0;
    }
    x->stats[XS_SENT]++;
    if (!nondet)
        return 0;
    x->stats[XS_SENT_SYNC]++;
    x->wait[x->n_wait++] = (struct xfer_wait){ r.id, id, rs_mono_ns() + x->timeout_ns };
    xfer_arm(x);
    return RS_APP_HOOK_WAIT;
}

static void hook_end(void *ctx, rs_txn_id id, int complete)
{
    struct app_xfer *x = ctx;

    if (complete)
        return;
    for (uint32_t i = 0; i < x->n_wait; i++) {
        if (x->wait[i].id == id) {
            x->wait[i] = x->wait[--x->n_wait];
            xfer_arm(x);
            return;
        }
    }
}

/* ---- Set-up ----------------------------------------------------------- */

int app_xfer_init(struct rs_app *app, const char *path, uint64_t timeout_ns)
{
    struct app_xfer *x = calloc(1, sizeof(*x));
    struct rs_app_hooks hooks;

    if (!x)
        return -ENOMEM;
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        free(x);
        return -ENAMETOOLONG;
    }
    x->in = malloc(XFER_IN_CAP);
    if (!x->in) {
        free(x);
        return -ENOMEM;
    }
    x->app = app;
    x->path = path;
    x->fd = -1;
    x->timeout_ns = timeout_ns;
    x->retry_ns = XFER_RETRY_MIN_NS;
    rs_timer_init(&x->timer, xfer_on_timer, x);
    app->xfer = x;
    hooks = (struct rs_app_hooks){ .ctx = x, .txn_update = hook_update, .txn_end = hook_end };
    rs_app_set_hooks(app, &hooks);
    xfer_connect(x);
    xfer_arm(x);
    return 0;
}

void app_xfer_stats(struct rs_app *app, FILE *f)
{
    struct app_xfer *x = app->xfer;

    if (!x)
        return;
    fprintf(f, " xfer_connected=%d xfer_waiting=%u", x->fd >= 0, x->n_wait);
    for (int i = 0; i < XS_MAX; i++)
        fprintf(f, " %s=%" PRIu64, xs_names[i], x->stats[i]);
}

void app_xfer_close(struct rs_app *app)
{
    struct app_xfer *x = app->xfer;

    if (!x)
        return;
    rs_io_stop(&x->io);
    rs_timer_stop(&app->loop, &x->timer);
    if (x->fd >= 0)
        close(x->fd);
    free(x->in);
    free(x);
    app->xfer = NULL;
}
