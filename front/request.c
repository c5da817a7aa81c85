/* rs-front's client -> upstream direction: parses each request, numbers it,
 * rewrites its head (X-Resplice-Txn, X-Resplice-Rerun) and forwards it and
 * its body to the upstream; answers malformed requests itself. */
#include "front.h"

#include <errno.h>
#include <string.h>

#include "http_txn.h"

/* ---- Parser callbacks: requests --------------------------------------- */

static int rq_on_message_begin(http_parser *p)
{
    struct front_conn *c = p->data;

    c->rq_what_len = 0;
    c->rq_reject = 0;
    return 0;
}

static int rq_on_url(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;
    size_t room = sizeof(c->rq_what) - 1 - c->rq_what_len;

    memcpy(c->rq_what + c->rq_what_len, at, len < room ? len : room);
    c->rq_what_len += (uint32_t)(len < room ? len : room);
    c->rq_what[c->rq_what_len] = '\0';
    return 0;
}

static int rq_on_headers_complete(http_parser *p)
{
    struct front_conn *c = p->data;

    if (p->http_major != 1) {
        c->rq_reject = 505;
        return -1;
    }
    c->rq_keep = http_should_keep_alive(p) != 0;
    c->rq_upgrade = p->upgrade != 0;
    c->rq_head = p->method == HTTP_HEAD;
    c->rqh.done = true;
    /* Stop here: the head is rewritten before any body byte goes on. */
    http_parser_pause(p, 1);
    return 0;
}

static int rq_on_message_complete(http_parser *p)
{
    struct front_conn *c = p->data;

    c->rq_msg_done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings rq_settings = {
    .on_message_begin = rq_on_message_begin,
    .on_url = rq_on_url,
    .on_header_field = head_on_field,
    .on_header_value = head_on_value,
    .on_headers_complete = rq_on_headers_complete,
    .on_message_complete = rq_on_message_complete,
};

/* ---- Requests: client -> upstream ------------------------------------- */

/* Answers the next request here with 'status' (the request was malformed):
 * its turn comes after the responses before it, then the connection closes. */
static void rq_reject(struct front_conn *c, int status, const char *why)
{
    char id[RS_TXN_ID_STRLEN];
    struct front_txn *t;

    c->rq_stop = true;
    c->f->stats[FS_BAD_REQUESTS]++;
    if (c->q_len == FRONT_TXN_Q) {     /* cannot happen: heads are parsed only with room */
        front_close(c, "bad request");
        return;
    }
    t = txn_push(c, status);
    rs_log("bad-request %s %s %d %s", rs_txn_str(t->id, id), c->who.name, status, why);
}

/* Moves the completed request head, rewritten, to 'up_out'.  Returns true
 * when done, false while 'up_out' lacks room. */
static bool rq_head_flush(struct front_conn *c)
{
    char line[96 + RS_TXN_ID_STRLEN], id[RS_TXN_ID_STRLEN];
    struct front_txn *t = q_at(c, c->q_len - 1);
    int n = snprintf(line, sizeof(line), FRONT_TXN_HDR ": %s\r\n%s", rs_txn_str(t->id, id),
                     c->who.rerun ? FRONT_RERUN_HDR ": 1\r\n" : "");
    uint32_t need = head_out_len(&c->rqh, (size_t)n);

    if (t->rec)
        need = 0;       /* answered from its record: the application never sees it */
    c->rq_discard = t->rec != NULL;
    compact(c->up_out, &c->uo_off, &c->uo_len);
    if (FRONT_UP_OUT_CAP - c->uo_len < need)
        return false;
    if (!t->rec)
        c->uo_len += head_build(&c->rqh, line, (size_t)n, c->up_out + c->uo_len);
    head_reset(&c->rqh);
    http_parser_pause(&c->rq, 0);
    c->rq_skip_lf = true;
    c->rq_phase = PH_BODY;
    return true;
}

/* Parses client input: request heads into 'rqh', bodies straight into
 * 'up_out'.  Returns true on progress. */
bool rq_parse(struct front_conn *c)
{
    bool progress = false;

    while (!c->rq_stop && !c->dead) {
        uint32_t avail = c->in_len - c->in_off;
        const char *at = (const char *)c->in + c->in_off;
        enum http_errno e;
        size_t lim, n;

        if (c->rq_phase == PH_BODY && c->rqh.done) {
            if (!rq_head_flush(c))
                return progress;
            progress = true;
        }
        if (avail == 0)
            return progress;
        if (!c->who.settled) {
            /* rs-proxy --identity header: the client's name comes first. */
            int h = rs_state_named_by_header(c->f->stated, at, avail, c->peer_eof, &c->who);

            if (h == 0)
                return progress;
            if (h == -EPROTO) {
                rq_reject(c, 400, "malformed PROXY header");
                return true;
            }
            if (h > 0) {
                c->in_off += (uint32_t)h;
                progress = true;
                continue;
            }
        }
        if (c->rq_phase != PH_BODY) {
            if (c->q_len == FRONT_TXN_Q)
                return progress;        /* pipelined too deep: wait for responses */
            lim = min_u64(avail, FRONT_HEAD_CAP - c->rqh.len);
            if (lim == 0) {
                rq_reject(c, 431, "request head too large");
                return true;
            }
            c->rqh.exec_at = at;
            c->rqh.exec_base = c->rqh.len;
            n = http_parser_execute(&c->rq, &rq_settings, at, lim);
            memcpy(c->rqh.buf + c->rqh.len, at, n);
            c->rqh.len += (uint32_t)n;
            c->in_off += (uint32_t)n;
            e = HTTP_PARSER_ERRNO(&c->rq);
            c->rq_phase = PH_HEAD;
            if (e == HPE_PAUSED && c->rqh.done) {
                if (c->in_off >= c->in_len || head_finish(c, &c->rqh, c->in[c->in_off]) < 0) {
                    c->rqh.done = false;
                    rq_reject(c, 400, "request head not understood");
                    return true;
                }
                rec_take(c, txn_push(c, 0));
                c->n_req++;
                c->f->stats[FS_REQS]++;
                c->rq_phase = PH_BODY;   /* head waits in 'rqh' until up_out has room */
                progress = true;
                continue;
            }
            if (e != HPE_OK) {
                int status = c->rq_reject ? c->rq_reject : e == HPE_HEADER_OVERFLOW ? 431 : 400;

                rq_reject(c, status, c->rq_reject ? rs_http_reason(status) : http_errno_description(e));
                return true;
            }
            progress |= n > 0;
            if (n < lim)
                return progress;
            continue;
        }
        /* Body (and the head's final LF): verbatim to the upstream. */
        compact(c->up_out, &c->uo_off, &c->uo_len);
        lim = c->rq_discard ? avail : min_u64(avail, FRONT_UP_OUT_CAP - c->uo_len + (c->rq_skip_lf ? 1 : 0));
        if (lim == 0)
            return progress;
        n = http_parser_execute(&c->rq, &rq_settings, at, lim);
        e = HTTP_PARSER_ERRNO(&c->rq);
        if (n > 0) {
            uint32_t skip = c->rq_skip_lf ? 1 : 0;

            if (!c->rq_discard) {
                memcpy(c->up_out + c->uo_len, at + skip, n - skip);
                c->uo_len += (uint32_t)(n - skip);
            }
            c->in_off += (uint32_t)n;
            c->rq_skip_lf = false;
            progress = true;
        }
        if (e == HPE_PAUSED && c->rq_msg_done) {
            http_parser_pause(&c->rq, 0);
            c->rq_msg_done = c->rq_discard = false;
            c->rq_phase = PH_IDLE;
            if (!c->rq_keep || c->rq_upgrade)
                c->rq_stop = true;      /* Connection: close, HTTP/1.0, Upgrade */
            continue;
        }
        if (e != HPE_OK) {
            /* Part of it went on already: nothing sensible can follow. */
            rs_log("error %s request body: %s", c->who.name, http_errno_description(e));
            front_close(c, "bad request body");
            return false;
        }
        if (n < lim)
            return progress;
    }
    return progress;
}

