/* rs-front's client connections: the queue of transactions, the buffers,
 * the client socket, the service loop that moves bytes both ways, and the
 * opening, closing and resuming of a connection. */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "list.h"

/* ---- Transactions ----------------------------------------------------- */

static void txn_finish(struct front_conn *c, struct front_txn *t, bool complete)
{
    char id[RS_TXN_ID_STRLEN];
    uint64_t end = complete ? t->end : min_u64(t->end, c->sent_total);
    uint64_t us = (rs_mono_ns() - t->t_start) / 1000;

    if (!t->started)
        end = t->start = 0;
    rs_log("txn %s %s %s %d %" PRIu64 "B %" PRIu64 ".%03" PRIu64 "ms%s%s", rs_txn_str(t->id, id), c->who.name,
           t->what, t->status, end - t->start, us / 1000, us % 1000, t->local ? " local" : "",
           complete ? "" : " aborted");
    if (!complete) {
        c->f->stats[FS_TXN_ABORTED]++;
        if (t->hooked)
            rs_state_forget(c->f->stated, t->id);
    }
    free(t->sync_state);
    free(t->rec);
    t->sync_state = t->rec = NULL;
}

/* Ends the transactions whose last response byte has been sent. */
static void txn_reap_sent(struct front_conn *c)
{
    while (c->q_done > 0) {
        struct front_txn *t = q_at(c, 0);

        if (t->end > c->sent_total)
            break;
        txn_finish(c, t, true);
        c->q_head = (c->q_head + 1) % FRONT_TXN_Q;
        c->q_len--;
        c->q_done--;
    }
}

/* Forgets the transactions after the current one (the upstream will not
 * answer them: it closed, or this connection ends with a local error). */
void txn_drop_after(struct front_conn *c, uint32_t keep)
{
    while (c->q_len > keep) {
        txn_finish(c, q_at(c, c->q_len - 1), false);
        c->q_len--;
    }
}

/* Pushes the entry of the request whose head just completed, or of one
 * answered here with 'local'. */
struct front_txn *txn_push(struct front_conn *c, int local)
{
    struct front_txn *t = q_at(c, c->q_len++);
    const char *m = http_method_str((enum http_method)c->rq.method);
    int n;

    *t = (struct front_txn){ .end = UINT64_MAX, .t_start = rs_mono_ns(), .local = local,
                             .head_req = c->rq_head && !local };
    t->id = rs_txn_id_make(c->who.client_ip, c->who.client_port, (uint16_t)(c->who.first_num + c->n_req));
    n = snprintf(t->what, sizeof(t->what), "%s %s", local ? "-" : m, c->rq_what_len ? c->rq_what : "-");
    if (n >= (int)sizeof(t->what))
        memcpy(t->what + sizeof(t->what) - 4, "...", 4);
    return t;
}

/* ---- Buffers ---------------------------------------------------------- */

void compact(uint8_t *buf, uint32_t *off, uint32_t *len)
{
    if (*off == 0)
        return;
    memmove(buf, buf + *off, *len - *off);
    *len -= *off;
    *off = 0;
}

void out_put(struct front_conn *c, const void *data, uint32_t len)
{
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    c->gen_total += len;
}

/* Client output bytes that may go now: up to the first held response. */
static uint64_t out_limit(const struct front_conn *c)
{
    uint64_t lim = c->gen_total;

    for (uint32_t i = 0; i < c->q_len; i++) {
        const struct front_txn *t = &c->q[(c->q_head + i) % FRONT_TXN_Q];

        if (t->waiting && t->hold_from < lim)
            lim = t->hold_from;
    }
    return lim;
}

/* ---- Client socket ---------------------------------------------------- */

static bool client_read(struct front_conn *c)
{
    ssize_t r;

    if (c->peer_eof || c->rq_stop)
        return false;
    compact(c->in, &c->in_off, &c->in_len);
    if (c->in_len == FRONT_IN_CAP)
        return false;
    do {
        r = recv(c->fd, c->in + c->in_len, FRONT_IN_CAP - c->in_len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            front_close(c, strerror(errno));
        return false;
    }
    if (r == 0) {
        c->peer_eof = true;
        return true;
    }
    c->in_len += (uint32_t)r;
    c->recv_total += (uint64_t)r;
    c->f->stats[FS_BYTES_IN] += (uint64_t)r;
    return true;
}

/* --crash-at: the output position where this connection's process dies,
 * or UINT64_MAX. */
static uint64_t crash_point(struct front_conn *c, struct front_txn **which)
{
    const struct front_cfg *cfg = &c->f->cfg;

    if (cfg->crash_num < 0 || c->f->crashed)
        return UINT64_MAX;
    for (uint32_t i = 0; i < c->q_len; i++) {
        struct front_txn *t = &c->q[(c->q_head + i) % FRONT_TXN_Q];
        uint64_t at;

        if (rs_txn_id_num(t->id) != (uint16_t)cfg->crash_num || !t->started)
            continue;
        at = t->hold_from + cfg->crash_off;
        if (t->end != UINT64_MAX && at > t->end)
            at = t->end;
        *which = t;
        return at;
    }
    return UINT64_MAX;
}

/* Dies as a crashed backend does, leaving the response bytes it holds of
 * 't' in state_dir/crash-<txn>.resp. */
static void crash_now(struct front_conn *c, struct front_txn *t)
{
    char id[RS_TXN_ID_STRLEN], path[PATH_MAX + 64];
    uint64_t from = t->hold_from > c->sent_total ? t->hold_from : c->sent_total;
    uint64_t to = t->end == UINT64_MAX ? c->gen_total : t->end;
    int fd;

    c->f->crashed = true;
    snprintf(path, sizeof(path), "%s/crash-%s.resp", c->f->state_real, rs_txn_str(t->id, id));
    for (char *p = strrchr(path, '/'); *p; p++)
        if (*p == ':' || *p == '#')
            *p = '_';
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        /* The bytes already sent are gone from 'out'; the file starts at 'from'. */
        ssize_t w = write(fd, c->out + c->out_off + (from - c->sent_total), (size_t)(to - from));

        (void)w;
        close(fd);
    }
    rs_log("crash-at %s %s: SIGKILL after %" PRIu64 "B of the response (offset file %s from byte %" PRIu64 ")",
           id, c->who.name, c->sent_total - t->hold_from, path, from - t->hold_from);
    fflush(NULL);
    raise(SIGKILL);
}

static bool client_flush(struct front_conn *c, uint64_t *budget)
{
    struct front_txn *victim = NULL;
    uint64_t lim = out_limit(c), crash = crash_point(c, &victim);
    bool progress = false;

    if (crash <= c->sent_total)
        crash_now(c, victim);
    lim = min_u64(lim, crash);
    while (c->sent_total < lim && *budget > 0) {
        size_t n = (size_t)min_u64(lim - c->sent_total, *budget);
        ssize_t w = send(c->fd, c->out + c->out_off, n, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            front_close(c, strerror(errno));
            return false;
        }
        c->out_off += (uint32_t)w;
        c->sent_total += (uint64_t)w;
        c->f->stats[FS_BYTES_OUT] += (uint64_t)w;
        *budget -= (uint64_t)w;
        progress = true;
        if (c->sent_total == crash)
            crash_now(c, victim);
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    txn_reap_sent(c);
    return progress;
}

/* Arms the linger timer.  Returns 0. */
static int conn_timer(struct front_conn *c, uint64_t ns)
{
    rs_timer_after(&c->f->loop, &c->timer, ns);
    return 0;
}

/* Write side shut: drop input until the client closes, so unread request
 * bytes do not make the kernel reset the connection under the last response. */
static void conn_drain(struct front_conn *c)
{
    int r = rs_drain_input(c->fd);

    if (r)
        front_close(c, r > 0 ? "closed" : "drain error");
}

static void conn_set_events(struct front_conn *c)
{
    uint32_t ev = 0;

    if (c->draining || (!c->peer_eof && !c->rq_stop && c->in_len - c->in_off < FRONT_IN_CAP))
        ev |= EPOLLIN;
    if (c->sent_total < out_limit(c))
        ev |= EPOLLOUT;
    if (rs_io_set(&c->sio, ev) < 0) {
        front_close(c, "epoll failed");
        return;
    }
    up_set_events(c);
}

void front_service(struct front_conn *c)
{
    uint64_t budget = FRONT_TURN_BYTES;

    if (c->dead)
        return;
    if (c->draining) {
        conn_drain(c);
        return;
    }
    for (int turn = 0; turn < 256; turn++) {
        bool progress = false;

        progress |= client_read(c);
        if (!c->dead)
            progress |= rq_parse(c);
        if (!c->dead)
            progress |= up_flush(c);
        if (!c->dead)
            progress |= up_read(c);
        if (!c->dead)
            progress |= resp_parse(c);
        if (!c->dead)
            progress |= client_flush(c, &budget);
        if (c->dead)
            return;
        if (!progress || budget == 0)
            break;
    }
    if (c->out_off == c->out_len && c->q_len == 0) {
        bool in_done = c->in_off == c->in_len && c->rq_phase != PH_BODY;

        if ((c->closing || c->rq_stop) && c->peer_eof) {
            front_close(c, "done");
            return;
        }
        if (c->closing || c->rq_stop) {
            c->draining = true;
            up_close(c);
            if (shutdown(c->fd, SHUT_WR) < 0 || conn_timer(c, FRONT_LINGER_NS) < 0) {
                front_close(c, "shutdown failed");
                return;
            }
            conn_drain(c);
            if (c->dead)
                return;
        } else if (c->peer_eof && in_done) {
            front_close(c, "peer closed");
            return;
        }
    } else if (c->peer_eof && c->in_off == c->in_len && c->rq_phase != PH_IDLE && !c->rqh.done) {
        /* The client left in the middle of a request: it cannot complete. */
        front_close(c, "peer closed mid-request");
        return;
    }
    conn_set_events(c);
}

/* ---- Events ----------------------------------------------------------- */

static void on_linger(struct rs_timer *t)
{
    struct front_conn *c = t->ctx;

    if (!c->dead && c->draining)
        front_close(c, "linger timeout");
}

static void on_sock(struct rs_io *io, uint32_t events)
{
    struct front_conn *c = io->ctx;

    if (c->dead)
        return;
    if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN)) {
        int err = rs_sock_error(c->fd);

        front_close(c, err ? strerror(err) : "hangup");
        return;
    }
    front_service(c);
}

void front_on_up(struct rs_io *io, uint32_t events)
{
    struct front_conn *c = io->ctx;

    (void)events;
    if (!c->dead)
        front_service(c);
}

/* ---- Open and close --------------------------------------------------- */

int front_conn_open(void *ctx, int fd, const struct sockaddr_in *peer)
{
    struct front *f = ctx;
    struct front_conn *c = calloc(1, sizeof(*c));

    (void)peer;                 /* named by rs_state_accepted */

    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->f = f;
    c->fd = fd;
    c->ufd = -1;
    rs_timer_init(&c->timer, on_linger, c);
    rs_state_accepted(f->stated, fd, &c->who);
    http_parser_init(&c->rq, HTTP_REQUEST);
    c->rq.data = c;
    http_parser_init(&c->rs, HTTP_RESPONSE);
    c->rs.data = c;

    if (rs_io_start(&f->loop, &c->sio, fd, EPOLLIN, on_sock, c) < 0) {
        int err = -errno;

        close(fd);
        free(c);
        return err;
    }
    RS_LIST_PUSH(f->conns, c);
    f->conns_open++;
    f->stats[FS_CONNS]++;
    rs_log("conn-open %s", c->who.name);
    return 0;
}

void front_close(struct front_conn *c, const char *why)
{
    struct front *f = c->f;

    if (c->dead)
        return;
    c->dead = true;
    txn_reap_sent(c);
    while (c->q_len > 0) {
        txn_finish(c, q_at(c, 0), false);
        c->q_head = (c->q_head + 1) % FRONT_TXN_Q;
        c->q_len--;
    }
    c->q_done = 0;
    rs_log("conn-close %s reqs=%u in=%" PRIu64 "B out=%" PRIu64 "B %s", c->who.name, c->n_req,
           c->recv_total, c->sent_total, why);
    up_close(c);
    rs_io_stop(&c->sio);
    rs_timer_stop(&c->f->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    RS_LIST_UNLINK(f->conns, c);
    /* Freed at the end of the loop turn: callers up the stack may still hold it. */
    c->next = f->dead;
    f->dead = c;
    f->conns_open--;
}

void front_reap(struct front *f)
{
    while (f->dead) {
        struct front_conn *c = f->dead;

        f->dead = c->next;
        free(c);
    }
}

void front_resume(void *ctx, rs_txn_id id, int err)
{
    struct front *f = ctx;

    (void)err;      /* the application ran it: its response goes regardless (the
                       library logged and counted an unreplicated one) */
    for (struct front_conn *c = f->conns; c; c = c->next) {
        for (uint32_t i = 0; i < c->q_len; i++) {
            struct front_txn *t = q_at(c, i);

            if (!t->waiting || t->id != id)
                continue;
            t->waiting = false;
            front_service(c);
            return;
        }
    }
}
