/* rs-stated's side of the local application's state library: the unix
 * socket, the records both ways (core/xfer_rec.h), the requests that wait
 * for the library's answers, and applying buffered states through it. */
#include "stated.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

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

/* ---- Control requests answered later ---------------------------------- */

/* Answers a deferred request once every record is queued and answered. */
void waiter_check(struct stated *s, struct waiter *w)
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

/* ---- The connection ----------------------------------------------------- */

static void lib_set_events(struct stated *s)
{
    rs_io_set(&s->lib_io, EPOLLIN | (s->lib_out_off < s->lib_out_len ? EPOLLOUT : 0));
}

static int lib_flush(struct stated *s)
{
    int err = rs_send_some(s->lib_fd, s->lib_out, s->lib_out_len, &s->lib_out_off);

    if (err < 0)
        return err;
    if (s->lib_out_off == s->lib_out_len)
        s->lib_out_off = s->lib_out_len = 0;
    lib_set_events(s);
    return 0;
}

/* Queues record 'r' for the library (a socket error shows up as EPOLLHUP
 * and is handled there).  Returns 0, -ENOTCONN or -ENOBUFS. */
int lib_send(struct stated *s, const struct rs_xfer_rec *r)
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
int lib_request(struct stated *s, struct rs_xfer_rec *r, struct waiter *w)
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
    s->ops[(s->ops_head + s->ops_len++) % LIB_OPS_MAX] = (struct lib_op){ r->id, r->type, w, r->txn };
    if (w)
        w->remaining++;
    return 0;
}

/* rs_store_apply_fn: one state to the app. */
int apply_fn(void *ctx, rs_txn_id id, const uint8_t *data, uint32_t len)
{
    struct stated *s = ctx;
    struct rs_xfer_rec r = { .type = RS_XFER_APPLY, .txn = id, .state = data, .len = len };
    int err;

    /* Nothing applies under a snapshot being made (it would be in neither
     * the app's export nor the buffered states sent after it), nor before
     * a readmitted backend's snapshot (which would overwrite it). */
    if (s->snap_pending || s->joining)
        return -EAGAIN;
    err = lib_request(s, &r, s->cur_waiter);
    if (err == -ENOBUFS)
        s->drain_blocked = true;
    if (err == 0) {
        s->st.applied++;
        if (s->cur_waiter)
            s->st.applied_forced++;
        rs_log("apply %s %uB%s", RS_TXN(id), len, s->cur_waiter ? " forced" : "");
    }
    return err;
}

void drain_all(struct stated *s)
{
    s->drain_blocked = false;
    for (uint32_t b = 0; b < RS_STORE_BUCKETS && s->lib_fd >= 0; b++)
        for (struct rs_store_client *c = s->store.buckets[b]; c; c = c->hnext)
            if (c->head)
                rs_store_drain(&s->store, c, false, 0, apply_fn, s);
}

void lib_close(struct stated *s, const char *why)
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
    s->snap_pending = false;
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

/* Handles one record from the app.  Returns false when the socket closed. */
static bool on_lib_record(struct stated *s, const struct rs_xfer_rec *r)
{
    switch (r->type) {
    case RS_XFER_UPDATE:
        relay_update(s, r);
        break;
    case RS_XFER_SNAPSHOT:
    case RS_XFER_DONE: {
        struct lib_op *op;

        if (!s->ops_len || s->ops[s->ops_head].id != r->id
            || (r->type == RS_XFER_SNAPSHOT) != (s->ops[s->ops_head].type == RS_XFER_EXPORT)) {
            rs_log("app-%s id=%u unexpected (ignored)", r->type == RS_XFER_DONE ? "done" : "snapshot", r->id);
            break;
        }
        op = &s->ops[s->ops_head];
        s->ops_head = (s->ops_head + 1) % LIB_OPS_MAX;
        s->ops_len--;
        if (op->type == RS_XFER_EXPORT) {
            snapshot_send(s, r->state, r->len, r->type == RS_XFER_DONE ? (r->status < 0 ? r->status : -EPROTO) : 0);
            break;
        }
        if (r->status < 0 && op->txn) {
            s->st.apply_errors++;
            rs_log("apply %s refused by the app: %s", RS_TXN(op->txn), strerror(-r->status));
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

void app_link_accept(struct rs_io *io, uint32_t events)
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
        if (s->snap_in) {
            /* A snapshot came before the app: first thing it gets. */
            uint8_t *blob = s->snap_in;

            s->snap_in = NULL;
            s->st.snapshots_received--;     /* counted when it came */
            snapshot_take(s, blob, s->snap_in_len);
            free(blob);
        }
        drain_all(s);
    }
}

int app_link_listen(const char *path)
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

