/* rs-app connections: non-blocking socket I/O, request parsing with
 * libhttp-parser (one request at a time; pipelined ones wait in 'in' and are
 * answered in order), response queueing and streaming through a bounded
 * 'out' buffer, and an orderly (lingering) close. */
#include "app.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "content.h"
#include "http_txn.h"
#include "list.h"
#include "rs_state.h"

/* ---- Parser callbacks ------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    struct app_req *r = &((struct app_conn *)p->data)->req;

    r->method[0] = '\0';
    r->url[0] = '\0';
    r->url_len = 0;
    r->hdr_bytes = 0;
    r->body_bytes = 0;
    r->check_body = false;
    r->body_bad = -1;
    r->reject = 0;
    r->complete = false;
    r->hooked = false;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct app_req *r = &((struct app_conn *)p->data)->req;

    r->hdr_bytes += (uint32_t)len;
    if (len >= APP_URL_MAX - r->url_len) {
        r->reject = 414;
        return -1;
    }
    memcpy(r->url + r->url_len, at, len);
    r->url_len += (uint32_t)len;
    r->url[r->url_len] = '\0';
    return 0;
}

/* Header names and values are not needed (http_parser tracks Connection,
 * Content-Length and Transfer-Encoding itself); only their size is. */
static int on_header_bytes(http_parser *p, const char *at, size_t len)
{
    struct app_req *r = &((struct app_conn *)p->data)->req;

    (void)at;
    if (len > APP_HDR_MAX || (r->hdr_bytes += (uint32_t)len) > APP_HDR_MAX) {
        r->reject = 431;
        return -1;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct app_req *r = &((struct app_conn *)p->data)->req;

    snprintf(r->method, sizeof(r->method), "%s", http_method_str((enum http_method)p->method));
    if (p->http_major != 1) {
        r->reject = 505;        /* http_parser takes any digit: only 1.x is spoken here */
        return -1;
    }
    r->http10 = p->http_minor == 0;
    r->keep_alive = http_should_keep_alive(p) != 0;
    r->head = p->method == HTTP_HEAD;
    /* ULLONG_MAX means "no Content-Length" (chunked bodies are counted in on_body). */
    if (p->content_length != ULLONG_MAX && p->content_length > APP_BODY_MAX) {
        r->reject = 413;
        return -1;
    }
    r->check_body = p->method == HTTP_POST && app_upload_seed(r->url, &r->body_seed);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct app_req *r = &((struct app_conn *)p->data)->req;

    /* Bodies are counted and dropped; an upload's is checked on the way. */
    if (r->check_body && r->body_bad < 0)
        r->body_bad = rs_content_check(r->body_seed, r->body_bytes, (const uint8_t *)at, len);
    r->body_bytes += len;
    if (r->body_bytes > APP_BODY_MAX) {
        r->reject = 413;
        return -1;
    }
    return 0;
}

/* Stop after each request so the next one is parsed only when this one's
 * response is under way: pipelined requests are then answered in order
 * without a per-connection request queue. */
static int on_message_complete(http_parser *p)
{
    struct app_req *r = &((struct app_conn *)p->data)->req;

    r->complete = true;
    r->upgrade = p->upgrade != 0;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_bytes,
    .on_header_value = on_header_bytes,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- Transactions in flight ------------------------------------------ */

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Logs transaction 't' and ends it for the hooks. */
static void txn_finish(struct app_conn *c, struct app_txn *t, bool complete)
{
    struct rs_app *app = c->app;
    char id[RS_TXN_ID_STRLEN];
    uint64_t end = complete ? t->end : min_u64(t->end, c->sent_total);
    uint64_t us = (rs_mono_ns() - t->t_start) / 1000;

    rs_txn_id_format(t->id, id, sizeof(id));
    rs_log("txn %s %s %s %d %" PRIu64 "B %" PRIu64 ".%03" PRIu64 "ms%s", id, c->who.name,
            t->what, t->status, end - t->start, us / 1000, us % 1000,
            complete ? "" : " aborted");
    if (!complete)
        app->stats[ST_TXN_ABORTED]++;
    if (t->hooked && app->hooks.txn_end)
        app->hooks.txn_end(app->hooks.ctx, t->id, complete);
}

/* Finishes the transactions whose last byte has been sent. */
static void txn_reap_sent(struct app_conn *c)
{
    while (c->q_len > 0) {
        struct app_txn *t = &c->q[c->q_head];

        if (t->end > c->sent_total)
            break;
        txn_finish(c, t, true);
        c->q_head = (c->q_head + 1) % APP_TXN_Q;
        c->q_len--;
    }
}

/* Starts the queue entry of the response about to be written for c->req. */
static struct app_txn *txn_push(struct app_conn *c, int status)
{
    struct app_txn *t = &c->q[(c->q_head + c->q_len) % APP_TXN_Q];
    int n;

    c->q_len++;
    t->id = c->req.id;
    t->start = c->gen_total;
    t->end = UINT64_MAX;
    t->t_start = c->req.t_start;
    t->status = status;
    t->hooked = c->req.hooked;
    c->req.hooked = false;      /* the entry owes the txn_end now */
    n = snprintf(t->what, sizeof(t->what), "%s %s", c->req.method[0] ? c->req.method : "-",
                 c->req.url[0] ? c->req.url : "-");
    if (n >= (int)sizeof(t->what))      /* long targets are cut in the log only */
        memcpy(t->what + sizeof(t->what) - 4, "...", 4);
    return t;
}

/* ---- Output ----------------------------------------------------------- */

static void out_compact(struct app_conn *c)
{
    if (c->out_off == 0)
        return;
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
}

static void out_put(struct app_conn *c, const void *data, size_t len)
{
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len;
    c->gen_total += len;
}

/* Writes the response header.  No Date (or other per-run) header: a
 * deterministic request must get byte-identical responses from the primary
 * and from the alternate that replays it. */
static void resp_head(struct app_conn *c, int status, const char *ctype, int64_t clen,
                      const char *extra)
{
    char h[APP_SMALL_MAX / 2], len_line[48];
    const char *conn_line = "";
    int n;

    if (clen >= 0)
        snprintf(len_line, sizeof(len_line), "Content-Length: %" PRId64 "\r\n", clen);
    else
        snprintf(len_line, sizeof(len_line), "Transfer-Encoding: chunked\r\n");
    if (c->closing)
        conn_line = "Connection: close\r\n";
    else if (c->req.http10)
        conn_line = "Connection: keep-alive\r\n";
    n = snprintf(h, sizeof(h), "HTTP/1.1 %d %s\r\nServer: rs-app\r\nContent-Type: %s\r\n%s%s%s\r\n",
                 status, rs_http_reason(status), ctype, len_line, conn_line, extra ? extra : "");
    if (n < 0 || n >= (int)sizeof(h))
        n = 0;          /* cannot happen with our fixed strings; send nothing rather than junk */
    out_compact(c);
    out_put(c, h, (size_t)n);
}

void app_resp_small(struct app_conn *c, int status, const char *ctype, const char *extra,
                    const char *body, size_t len)
{
    struct app_txn *t = txn_push(c, status);

    resp_head(c, status, ctype, (int64_t)len, extra);
    if (!c->req.head)
        out_put(c, body, len);
    t->end = c->gen_total;
}

void app_resp_stream(struct app_conn *c, int status, const char *ctype, int64_t clen)
{
    struct app_txn *t = txn_push(c, status);

    resp_head(c, status, ctype, clen, NULL);
    if (c->req.head) {
        c->body.kind = BODY_NONE;
        t->end = c->gen_total;
    }
}

/* ---- Body streaming --------------------------------------------------- */

/* Arms the connection's timer (think time, linger).  Returns 0. */
static int conn_timer(struct app_conn *c, uint64_t ns)
{
    rs_timer_after(&c->app->loop, &c->timer, ns);
    return 0;
}

static void body_done(struct app_conn *c)
{
    c->q[(c->q_head + c->q_len - 1) % APP_TXN_Q].end = c->gen_total;
    c->body.kind = BODY_NONE;
}

static void body_fill(struct app_conn *c, uint64_t n)
{
    rs_content_fill(c->body.seed, c->body.off, c->out + c->out_len, (size_t)n);
    c->out_len += (uint32_t)n;
    c->gen_total += n;
    c->body.off += n;
}

/* Produces as much of the current body as fits in 'out'.  Returns true if
 * it produced anything (or finished), false when it waits for room or for
 * its timer, or when the timer failed (the connection is then closed). */
static bool body_produce(struct app_conn *c)
{
    struct app_body *b = &c->body;
    bool progress = false;

    out_compact(c);
    while (b->kind != BODY_NONE) {
        uint64_t room = APP_OUT_CAP - c->out_len;

        if (b->kind == BODY_STATIC) {
            uint64_t n = min_u64(room, b->total - b->off);

            body_fill(c, n);
            progress |= n > 0;
            if (b->off == b->total) {
                body_done(c);
                progress = true;
            }
            break;
        }
        /* BODY_SLOW: [think time] size CRLF data CRLF ... 0 CRLF CRLF */
        if (b->crlf_pending) {
            if (room < 2)
                break;
            out_put(c, "\r\n", 2);
            b->crlf_pending = false;
        } else if (b->in_chunk > 0) {
            uint64_t n = min_u64(room, b->in_chunk);

            if (n == 0)
                break;
            body_fill(c, n);
            b->in_chunk -= n;
            b->crlf_pending = b->in_chunk == 0 && b->chunked;
        } else if (b->off == b->total) {
            if (b->chunked) {
                if (room < 5)
                    break;
                out_put(c, "0\r\n\r\n", 5);
            }
            body_done(c);
        } else if (!b->timer_fired && b->delay_ns > 0) {
            int err;

            if (b->timer_wait)
                break;
            err = conn_timer(c, b->delay_ns);
            if (err < 0) {
                rs_log("error %s slow-timer %s", c->who.name, strerror(-err));
                app_conn_close(c, "timer failed");
                return false;
            }
            b->timer_wait = true;
            break;
        } else {
            uint64_t k = min_u64(b->chunk, b->total - b->off);

            if (b->chunked) {
                char h[24];
                int n = snprintf(h, sizeof(h), "%" PRIx64 "\r\n", k);

                if (room < (uint64_t)n)
                    break;
                out_put(c, h, (size_t)n);
            }
            b->in_chunk = k;
            b->timer_fired = false;
        }
        progress = true;
    }
    return progress;
}

/* ---- Socket I/O ------------------------------------------------------- */

/* --crash-at: the position in this connection's output stream where the
 * process dies, or UINT64_MAX. */
static uint64_t crash_point(const struct app_conn *c, const struct app_txn **which)
{
    const struct rs_app *app = c->app;

    if (app->crash_num < 0)
        return UINT64_MAX;
    for (uint32_t i = 0; i < c->q_len; i++) {
        const struct app_txn *t = &c->q[(c->q_head + i) % APP_TXN_Q];
        uint64_t at = t->start + app->crash_off;

        if (rs_txn_id_num(t->id) != (uint16_t)app->crash_num)
            continue;
        *which = t;
        return t->end != UINT64_MAX && at > t->end ? t->end : at;
    }
    return UINT64_MAX;
}

/* Dies as a crashed backend does, 't''s response cut where it is. */
static void crash_now(const struct app_conn *c, const struct app_txn *t)
{
    char id[RS_TXN_ID_STRLEN];

    rs_txn_id_format(t->id, id, sizeof(id));
    rs_log("crash-at %s %s: SIGKILL after %" PRIu64 "B of the response", id, c->who.name,
           c->sent_total - t->start);
    fflush(NULL);
    raise(SIGKILL);
}

/* Sends queued bytes, at most '*budget' of them.  Returns 0 (all sent, the
 * socket is full or the budget spent) or a negative errno. */
static int conn_flush(struct app_conn *c, uint64_t *budget)
{
    const struct app_txn *victim = NULL;
    uint64_t crash = crash_point(c, &victim);

    if (crash <= c->sent_total)
        crash_now(c, victim);
    while (c->out_off < c->out_len && *budget > 0 && c->sent_total < crash) {
        size_t n = (size_t)min_u64(min_u64(c->out_len - c->out_off, *budget), crash - c->sent_total);
        ssize_t w = send(c->fd, c->out + c->out_off, n, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -errno;
        }
        c->out_off += (uint32_t)w;
        c->sent_total += (uint64_t)w;
        c->app->stats[ST_BYTES_OUT] += (uint64_t)w;
        *budget -= (uint64_t)w;
        if (c->sent_total == crash)
            crash_now(c, victim);
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    txn_reap_sent(c);
    return 0;
}

/* Reads what fits into 'in'.  Returns the bytes read, 0 when nothing is
 * available or there is no room, or a negative errno; sets peer_eof on EOF. */
static ssize_t conn_read(struct app_conn *c)
{
    ssize_t r;

    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_len == APP_IN_CAP)
        return 0;
    do {
        r = recv(c->fd, c->in + c->in_len, APP_IN_CAP - c->in_len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    if (r == 0) {
        c->peer_eof = true;
        return 0;
    }
    c->in_len += (uint32_t)r;
    c->recv_total += (uint64_t)r;
    c->app->stats[ST_BYTES_IN] += (uint64_t)r;
    return r;
}

/* A request the parser rejected: answer it and close. */
static void conn_reject(struct app_conn *c, int status, const char *why)
{
    char id[RS_TXN_ID_STRLEN], body[64];
    int n;

    c->app->stats[ST_BAD_REQUEST]++;
    c->closing = true;
    c->req.id = rs_txn_id_make(c->who.client_ip, c->who.client_port, (uint16_t)(c->who.first_num + c->n_req));
    c->req.t_start = rs_mono_ns();
    c->req.head = false;
    rs_txn_id_format(c->req.id, id, sizeof(id));
    rs_log("bad-request %s %s %d %s", id, c->who.name, status, why);
    n = snprintf(body, sizeof(body), "%s\n", rs_http_reason(status));
    app_resp_small(c, status, "text/plain", NULL, body, (size_t)n);
}

/* Parses buffered input up to the end of the next request and serves it.
 * Returns true if anything was consumed or answered. */
static bool conn_parse(struct app_conn *c)
{
    uint32_t avail = c->in_len - c->in_off;
    enum http_errno e;
    size_t n;

    if (avail == 0)
        return false;
    if (!c->who.settled) {
        /* rs-proxy --identity header: the client's name comes first. */
        int h = rs_state_named_by_header(c->app->stated, c->in + c->in_off, avail, c->peer_eof, &c->who);

        if (h == 0)
            return false;
        if (h == -EPROTO) {
            conn_reject(c, 400, "malformed PROXY header");
            return true;
        }
        if (h > 0) {
            c->in_off += (uint32_t)h;
            if (c->in_off == c->in_len)
                c->in_off = c->in_len = 0;
            return true;
        }
    }
    n = http_parser_execute(&c->parser, &parser_settings, (const char *)c->in + c->in_off, avail);
    e = HTTP_PARSER_ERRNO(&c->parser);
    c->in_off += (uint32_t)n;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    if (e == HPE_PAUSED && c->req.complete) {
        http_parser_pause(&c->parser, 0);
        c->req.id = rs_txn_id_make(c->who.client_ip, c->who.client_port, (uint16_t)(c->who.first_num + c->n_req));
        c->n_req++;
        c->req.t_start = rs_mono_ns();
        c->app->stats[ST_REQS]++;
        if (!c->req.keep_alive || c->req.upgrade)
            c->closing = true;          /* Connection: close, HTTP/1.0, Upgrade */
        app_serve(c->app, c);
        return true;
    }
    if (e != HPE_OK) {
        int status = c->req.reject ? c->req.reject : e == HPE_HEADER_OVERFLOW ? 431 : 400;

        conn_reject(c, status, c->req.reject ? rs_http_reason(status) : http_errno_description(e));
        return true;
    }
    return n > 0;
}

/* Write side shut: read and drop input until the client closes too, so that
 * unread request bytes do not make the kernel reset the connection before
 * the client has read the last response. */
static void conn_drain(struct app_conn *c)
{
    int r = rs_drain_input(c->fd);      /* the linger timer ends a client that keeps sending */

    if (r)
        app_conn_close(c, r > 0 ? "closed" : "drain error");
}

static void conn_set_events(struct app_conn *c)
{
    uint32_t ev = 0;

    if (c->draining || (!c->peer_eof && !c->closing && c->in_len < APP_IN_CAP))
        ev |= EPOLLIN;
    if (c->out_off < c->out_len || (c->body.kind != BODY_NONE && !c->body.timer_wait))
        ev |= EPOLLOUT;
    if (rs_io_set(&c->io, ev) < 0) {
        rs_log("error %s epoll_ctl %s", c->who.name, strerror(errno));
        app_conn_close(c, "epoll failed");
    }
}

void app_conn_service(struct app_conn *c)
{
    uint64_t budget = APP_TURN_BYTES;
    int err;

    if (c->dead)
        return;
    if (c->draining) {
        conn_drain(c);
        return;
    }
    for (;;) {
        bool progress = false;

        if (c->body.kind != BODY_NONE && !c->body.timer_wait)
            progress |= body_produce(c);
        if (c->dead)
            return;
        err = conn_flush(c, &budget);
        if (err < 0) {
            app_conn_close(c, strerror(-err));
            return;
        }
        if (budget == 0)
            break;      /* EPOLLOUT (level-triggered) brings us back next turn */
        if (c->body.kind == BODY_NONE && !c->waiting && !c->closing && c->q_len < APP_TXN_Q &&
            APP_OUT_CAP - (c->out_len - c->out_off) >= APP_SMALL_MAX)
            progress |= conn_parse(c);
        if (c->dead)
            return;
        if (!c->peer_eof && !c->closing) {
            ssize_t r = conn_read(c);

            if (r < 0) {
                app_conn_close(c, strerror((int)-r));
                return;
            }
            progress |= r > 0;
        }
        if (!progress)
            break;
    }

    if (c->body.kind == BODY_NONE && !c->waiting && c->out_off == c->out_len) {
        if (c->closing && c->peer_eof) {
            app_conn_close(c, "done");
            return;
        }
        if (c->closing) {
            c->draining = true;
            if (shutdown(c->fd, SHUT_WR) < 0 || conn_timer(c, APP_LINGER_NS) < 0) {
                app_conn_close(c, "shutdown failed");
                return;
            }
            conn_drain(c);
            if (c->dead)
                return;
        } else if (c->peer_eof && c->in_off == c->in_len) {
            app_conn_close(c, "peer closed");
            return;
        }
    }
    conn_set_events(c);
}

static void conn_on_timer(struct rs_timer *t)
{
    struct app_conn *c = t->ctx;

    if (c->dead)
        return;
    if (c->draining) {
        app_conn_close(c, "linger timeout");
        return;
    }
    if (c->body.timer_wait) {
        c->body.timer_wait = false;
        c->body.timer_fired = true;
    }
    app_conn_service(c);
}

static void conn_on_io(struct rs_io *io, uint32_t events)
{
    struct app_conn *c = io->ctx;

    if (c->dead)
        return;
    if (events & (EPOLLERR | EPOLLHUP)) {
        int err = rs_sock_error(c->fd);

        app_conn_close(c, err ? strerror(err) : "hangup");
        return;
    }
    app_conn_service(c);
}

/* ---- Open and close --------------------------------------------------- */

int app_conn_open(void *ctx, int fd, const struct sockaddr_in *peer)
{
    struct rs_app *app = ctx;
    struct app_conn *c = calloc(1, sizeof(*c));
    struct rs_addr pa = rs_addr_of_sin(peer);

    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->app = app;
    c->fd = fd;
    rs_timer_init(&c->timer, conn_on_timer, c);
    c->peer_ip4 = pa.ip;
    c->peer_port = pa.port;
    rs_state_accepted(app->stated, fd, &c->who);     /* TCP_NODELAY: the listener's, inherited */
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;

    if (rs_io_start(&app->loop, &c->io, fd, EPOLLIN, conn_on_io, c) < 0) {
        int err = -errno;
        close(fd);
        free(c);
        return err;
    }
    RS_LIST_PUSH(app->conns, c);
    app->conns_open++;
    app->stats[ST_CONNS_TOTAL]++;
    rs_log("conn-open %s", c->who.name);
    return 0;
}

void app_conn_close(struct app_conn *c, const char *why)
{
    struct rs_app *app = c->app;

    if (c->dead)
        return;
    c->dead = true;
    txn_reap_sent(c);
    while (c->q_len > 0) {
        txn_finish(c, &c->q[c->q_head], false);
        c->q_head = (c->q_head + 1) % APP_TXN_Q;
        c->q_len--;
    }
    if (c->req.hooked) {        /* held by a waiting hook, or refused mid-way */
        app->stats[ST_TXN_ABORTED]++;
        if (app->hooks.txn_end)
            app->hooks.txn_end(app->hooks.ctx, c->req.id, 0);
        c->req.hooked = false;
    }
    rs_log("conn-close %s reqs=%u in=%" PRIu64 "B out=%" PRIu64 "B %s", c->who.name,
            c->n_req, c->recv_total, c->sent_total, why);
    rs_io_stop(&c->io);
    rs_timer_stop(&app->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    RS_LIST_UNLINK(app->conns, c);
    /* Freed by app_conn_reap after this loop turn: callers up the stack may still hold it. */
    c->next = app->dead;
    app->dead = c;
    app->conns_open--;
}

void app_conn_reap(struct rs_app *app)
{
    while (app->dead) {
        struct app_conn *c = app->dead;

        app->dead = c->next;
        free(c);
    }
}
