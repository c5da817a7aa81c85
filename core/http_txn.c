/* HTTP/1.1 transactionalizer on libhttp-parser: one request parser and one
 * response parser per connection; this file matches responses to requests,
 * numbers transactions and tracks their exact TCP sequence ranges. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "http_txn.h"
#include "seq.h"

static int on_message_begin(http_parser *p);
static int on_url(http_parser *p, const char *at, size_t len);
static int on_headers_complete(http_parser *p);
static int on_message_complete(http_parser *p);

/* Read-only callback table; all state lives in the connection. */
static const http_parser_settings rs_http_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static struct rs_http_txn *slot(struct rs_http_conn *c, uint32_t num)
{
    return &c->ring[num % RS_HTTP_TXN_RING];
}

static enum rs_http_dir dir_of(const http_parser *p)
{
    return p->type == HTTP_REQUEST ? RS_DIR_REQ : RS_DIR_RESP;
}

static void emit(struct rs_http_conn *c, const struct rs_http_txn *t, enum rs_http_event ev)
{
    if (c->cb)
        c->cb(c->cb_arg, c, t, ev);
}

/* First error wins: later ones are consequences of it. */
static void set_err(struct rs_http_conn *c, enum rs_http_err err, enum rs_http_dir dir,
                    uint32_t seq, unsigned hpe)
{
    if (c->err != RS_HTTP_OK)
        return;
    c->err = err;
    c->err_dir = (int)dir;
    c->err_seq = seq;
    c->err_hpe = hpe;
    emit(c, NULL, RS_HTTP_EV_ERROR);
}

static int64_t content_length(const http_parser *p)
{
    if ((p->flags & F_CHUNKED) || p->content_length == ULLONG_MAX ||
        p->content_length > INT64_MAX)
        return -1;
    return (int64_t)p->content_length;
}

/* The request being parsed is always the newest transaction. */
static struct rs_http_txn *cur_req(struct rs_http_conn *c)
{
    return c->n_txn ? slot(c, c->n_txn - 1) : NULL;
}

static void set_method(struct rs_http_txn *t, const http_parser *p)
{
    if (!t->method[0])
        snprintf(t->method, sizeof(t->method), "%s", http_method_str((enum http_method)p->method));
}

/* Binds the response now starting to the oldest unanswered request.  The
 * response parser must know that request's method (HEAD has no body), so a
 * response that overtakes its request waits.  Returns 1 when bound. */
static int resp_attach(struct rs_http_conn *c)
{
    struct rs_http_txn *t;

    if (c->resp_num == c->n_txn)
        return 0;
    t = slot(c, c->resp_num);
    if (!t->method[0])
        return 0;
    if (!t->resp_begun) {
        t->resp_begun = true;
        t->resp_start = c->side[RS_DIR_RESP].boundary;
        t->resp_end = t->resp_start;
    }
    c->resp_stalled = false;
    return 1;
}

static int on_message_begin(http_parser *p)
{
    struct rs_http_conn *c = p->data;
    struct rs_http_side *s = &c->side[dir_of(p)];
    struct rs_http_txn *t;

    /* Debian's libhttp-parser is built non-strict and parses on after a
     * "close" message, so this check is ours. */
    if (s->closed) {
        set_err(c, dir_of(p) == RS_DIR_REQ ? RS_HTTP_ERR_REQ_MALFORMED : RS_HTTP_ERR_RESP_MALFORMED,
                dir_of(p), s->boundary, HPE_CLOSED_CONNECTION);
        return -1;
    }
    s->in_msg = true;
    if (dir_of(p) == RS_DIR_RESP) {
        if (!resp_attach(c)) {
            c->resp_stalled = true;
            http_parser_pause(p, 1);
        }
        return 0;
    }
    /* The ring must never overwrite a transaction still waiting for its
     * response, and a client that pipelines without reading is not worth
     * unbounded state. */
    if (c->n_txn - c->resp_num >= RS_HTTP_MAX_INFLIGHT) {
        set_err(c, RS_HTTP_ERR_PIPELINE, RS_DIR_REQ, s->boundary, HPE_OK);
        return -1;
    }
    t = slot(c, c->n_txn);
    memset(t, 0, sizeof(*t));
    t->num = c->n_txn;
    t->id = rs_txn_id_make(c->client_ip4, c->client_port, (uint16_t)t->num);
    t->req_start = t->req_end = s->boundary;
    t->req_content_length = t->resp_content_length = -1;
    c->n_txn++;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct rs_http_txn *t = cur_req(p->data);
    size_t room;

    if (!t)
        return -1;
    set_method(t, p);
    room = RS_HTTP_TARGET_MAX - 1 - t->target_len;
    if (len > room) {
        len = room;
        t->target_truncated = true;
    }
    memcpy(t->target + t->target_len, at, len);
    t->target_len += (uint16_t)len;
    t->target[t->target_len] = '\0';
    return 0;
}

/* Return 1 tells http_parser "this response has no body". */
static int on_headers_complete(http_parser *p)
{
    struct rs_http_conn *c = p->data;
    struct rs_http_txn *t;
    unsigned status;

    if (dir_of(p) == RS_DIR_REQ) {
        t = cur_req(c);
        if (!t)
            return -1;
        set_method(t, p);
        t->req_content_length = content_length(p);
        t->req_headers_done = true;
        emit(c, t, RS_HTTP_EV_REQ_HEADERS);
        return 0;
    }
    t = slot(c, c->resp_num);
    status = p->status_code;
    if (status == 101) {
        set_err(c, RS_HTTP_ERR_UPGRADE, RS_DIR_RESP, c->side[RS_DIR_RESP].boundary, HPE_OK);
        return -1;
    }
    /* RFC 7230 3.3.3: 1xx, 204 and 304 never have a body, whatever the
     * headers say; nor does the answer to HEAD. */
    if (status / 100 == 1)
        return 1;
    t->status = (uint16_t)status;
    t->resp_content_length = content_length(p);
    return status == 204 || status == 304 || !strcmp(t->method, "HEAD");
}

/* Pausing here makes http_parser_execute return right after the message's
 * last byte, which gives the exact end seq. */
static int on_message_complete(http_parser *p)
{
    struct rs_http_conn *c = p->data;

    c->side[dir_of(p)].msg_done = true;
    http_parser_pause(p, 1);
    return 0;
}

/* Handles a message that ended at side->next. */
static void finish_msg(struct rs_http_conn *c, enum rs_http_dir dir)
{
    struct rs_http_side *s = &c->side[dir];
    http_parser *p = &s->parser;
    struct rs_http_txn *t;

    s->msg_done = false;
    s->in_msg = false;
    s->boundary = s->next;
    if (dir == RS_DIR_REQ) {
        t = cur_req(c);
        t->req_end = s->next;
        t->req_done = true;
        if (!http_should_keep_alive(p))
            t->close = s->closed = true;
        emit(c, t, RS_HTTP_EV_REQ_DONE);
        return;
    }
    t = slot(c, c->resp_num);
    if (p->status_code / 100 == 1) {
        /* Interim (e.g. 100 Continue): the final response is still to come. */
        if (t->n_interim < UINT8_MAX)
            t->n_interim++;
        t->resp_end = s->next;
        return;
    }
    t->resp_end = s->next;
    t->resp_done = true;
    if (!http_should_keep_alive(p))
        t->close = s->closed = true;
    c->resp_num++;
    emit(c, t, RS_HTTP_EV_RESP_DONE);
}

/* http_parser reports the target piecewise (at least at each buffer end) and
 * drops the unreported piece on error, so a half-parsed target would depend
 * on chunking: a request that failed before its headers ended has none. */
static void forget_partial_target(struct rs_http_conn *c, enum rs_http_dir dir)
{
    struct rs_http_txn *t = cur_req(c);

    if (dir != RS_DIR_REQ || !t || t->req_headers_done)
        return;
    t->method[0] = t->target[0] = '\0';
    t->target_len = 0;
    t->target_truncated = false;
}

/* Looks at the parser after an execute.  Returns 0 to go on, -EPROTO when
 * the connection just became untransactionalizable. */
static int after_execute(struct rs_http_conn *c, enum rs_http_dir dir, size_t n, size_t asked)
{
    struct rs_http_side *s = &c->side[dir];
    http_parser *p = &s->parser;
    enum http_errno hpe = HTTP_PARSER_ERRNO(p);
    enum rs_http_err bad = dir == RS_DIR_REQ ? RS_HTTP_ERR_REQ_MALFORMED : RS_HTTP_ERR_RESP_MALFORMED;

    if (hpe == HPE_PAUSED) {
        http_parser_pause(p, 0);
    } else if (hpe != HPE_OK) {
        set_err(c, bad, dir, s->next, hpe);
        forget_partial_target(c, dir);
        return -EPROTO;
    } else if (n < asked && !p->upgrade) {
        /* The parser stopped without saying why; never spin on it. */
        set_err(c, bad, dir, s->next, HPE_UNKNOWN);
        return -EPROTO;
    }
    if (!s->msg_done)
        return 0;
    finish_msg(c, dir);
    /* http_parser raises 'upgrade' at the headers but parses any body first;
     * once the message is over, CONNECT or Upgrade means another protocol. */
    if (p->upgrade) {
        set_err(c, RS_HTTP_ERR_UPGRADE, dir, s->next, HPE_OK);
        return -EPROTO;
    }
    return 0;
}

/* Brings the unfinished transactions' ends up to the bytes fed. */
static void extend_partial(struct rs_http_conn *c, enum rs_http_dir dir)
{
    struct rs_http_txn *t;

    if (dir == RS_DIR_REQ) {
        t = cur_req(c);
        if (t && c->side[RS_DIR_REQ].in_msg && !t->req_done)
            t->req_end = c->side[RS_DIR_REQ].next;
    } else if (c->resp_num != c->n_txn) {
        t = slot(c, c->resp_num);
        if (t->resp_begun && !t->resp_done)
            t->resp_end = c->side[RS_DIR_RESP].next;
    }
}

void rs_http_conn_init(struct rs_http_conn *conn, uint32_t client_ip4,
                       uint16_t client_port, uint32_t req_isn, uint32_t resp_isn)
{
    /* Not the ring (most of the 22 KB): a slot is cleared when its
     * transaction is created, and none is read before (n_txn guards). */
    memset(conn, 0, offsetof(struct rs_http_conn, ring));
    conn->client_ip4 = client_ip4;
    conn->client_port = client_port;
    conn->err_dir = -1;
    http_parser_init(&conn->side[RS_DIR_REQ].parser, HTTP_REQUEST);
    http_parser_init(&conn->side[RS_DIR_RESP].parser, HTTP_RESPONSE);
    /* The SYN takes one sequence number. */
    conn->side[RS_DIR_REQ].next = conn->side[RS_DIR_REQ].boundary = req_isn + 1;
    conn->side[RS_DIR_RESP].next = conn->side[RS_DIR_RESP].boundary = resp_isn + 1;
}

void rs_http_conn_set_cb(struct rs_http_conn *conn, rs_http_event_cb cb, void *arg)
{
    conn->cb = cb;
    conn->cb_arg = arg;
}

/* Returns 0 when 'dir' of 'conn' may still be parsed, else the errno that
 * rs_http_feed and rs_http_txn_eof report. */
static int side_usable(struct rs_http_conn *conn, enum rs_http_dir dir)
{
    if (!conn || (dir != RS_DIR_REQ && dir != RS_DIR_RESP))
        return -EINVAL;
    if (conn->err != RS_HTTP_OK)
        return -EPROTO;
    if (conn->side[dir].eof)
        return -EPIPE;
    conn->side[dir].parser.data = conn;     /* the caller may have moved 'conn' */
    return 0;
}

int rs_http_feed(struct rs_http_conn *conn, enum rs_http_dir dir, uint32_t seq,
                 const void *data, size_t len)
{
    struct rs_http_side *s;
    const char *at = data;
    size_t skip, used = 0;
    int rc = side_usable(conn, dir);

    if (rc < 0)
        return rc;
    s = &conn->side[dir];
    if (len == 0)
        return 0;
    if (!data)
        return -EINVAL;
    if (len > RS_HTTP_FEED_MAX)
        len = RS_HTTP_FEED_MAX;
    if (rs_seq_gt(seq, s->next))
        return -ERANGE;
    skip = rs_seq_dist(seq, s->next);
    if (skip >= len)
        return (int)len;

    if (dir == RS_DIR_RESP && conn->resp_stalled && !resp_attach(conn))
        return (int)skip;
    while (skip + used < len) {
        size_t asked = len - skip - used;
        size_t n = http_parser_execute(&s->parser, &rs_http_settings, at + skip + used, asked);

        if (n > asked)          /* never trust a count past the buffer */
            n = asked;
        used += n;
        s->next += (uint32_t)n;
        rc = after_execute(conn, dir, n, asked);
        if (rc < 0 || (dir == RS_DIR_RESP && conn->resp_stalled))
            break;
    }
    /* Also on error, so the ranges do not depend on how bytes were chunked. */
    extend_partial(conn, dir);
    return rc < 0 ? rc : (int)(skip + used);
}

int rs_http_txn_eof(struct rs_http_conn *conn, enum rs_http_dir dir)
{
    struct rs_http_side *s;
    enum http_errno hpe;
    int rc = side_usable(conn, dir);

    if (rc < 0)
        return rc;
    s = &conn->side[dir];
    s->eof = true;
    if (dir == RS_DIR_RESP && conn->resp_stalled)
        return 1;
    http_parser_execute(&s->parser, &rs_http_settings, NULL, 0);
    hpe = HTTP_PARSER_ERRNO(&s->parser);
    if (hpe == HPE_PAUSED)
        http_parser_pause(&s->parser, 0);
    if (s->msg_done) {
        /* A body delimited by the close: the FIN ends it. */
        finish_msg(conn, dir);
        return 0;
    }
    /* The direction is closed, so the parser's EOF error is only a report. */
    if ((hpe != HPE_OK && hpe != HPE_PAUSED) || s->in_msg)
        return 1;
    /* Between an interim 1xx and the final response is inside a transaction. */
    if (dir == RS_DIR_RESP && conn->resp_num != conn->n_txn && slot(conn, conn->resp_num)->resp_begun)
        return 1;
    return 0;
}

const struct rs_http_txn *rs_http_txn_get(const struct rs_http_conn *conn, uint32_t num)
{
    if (num >= conn->n_txn || conn->n_txn - num > RS_HTTP_TXN_RING)
        return NULL;
    return &conn->ring[num % RS_HTTP_TXN_RING];
}

uint32_t rs_http_txn_count(const struct rs_http_conn *conn)
{
    return conn->n_txn;
}

uint32_t rs_http_resp_done_count(const struct rs_http_conn *conn)
{
    return conn->resp_num;
}

uint32_t rs_http_next_seq(const struct rs_http_conn *conn, enum rs_http_dir dir)
{
    return conn->side[dir == RS_DIR_RESP ? RS_DIR_RESP : RS_DIR_REQ].next;
}

const struct rs_http_txn *rs_http_txn_find(const struct rs_http_conn *conn,
                                           enum rs_http_dir dir, uint32_t seq)
{
    uint32_t first = conn->n_txn > RS_HTTP_TXN_RING ? conn->n_txn - RS_HTTP_TXN_RING : 0;

    for (uint32_t n = first; n < conn->n_txn; n++) {
        const struct rs_http_txn *t = &conn->ring[n % RS_HTTP_TXN_RING];

        if (dir == RS_DIR_REQ && rs_seq_in(seq, t->req_start, t->req_end))
            return t;
        if (dir == RS_DIR_RESP && t->resp_begun && rs_seq_in(seq, t->resp_start, t->resp_end))
            return t;
    }
    return NULL;
}

enum rs_http_err rs_http_conn_err(const struct rs_http_conn *conn)
{
    return conn->err;
}

const char *rs_http_err_str(enum rs_http_err err)
{
    switch (err) {
    case RS_HTTP_OK:                 return "ok";
    case RS_HTTP_ERR_REQ_MALFORMED:  return "malformed request";
    case RS_HTTP_ERR_RESP_MALFORMED: return "malformed response";
    case RS_HTTP_ERR_PIPELINE:       return "too many pipelined";
    case RS_HTTP_ERR_UPGRADE:        return "protocol upgrade";
    }
    return "unknown";
}

const char *rs_http_conn_err_detail(const struct rs_http_conn *conn)
{
    if (conn->err != RS_HTTP_ERR_REQ_MALFORMED && conn->err != RS_HTTP_ERR_RESP_MALFORMED)
        return "";
    return http_errno_description((enum http_errno)conn->err_hpe);
}

const char *rs_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
