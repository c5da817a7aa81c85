/* rs-front's upstream -> client direction: parses each response, rewrites
 * its head, hands its state to update.c and streams it to the client, or
 * answers from a recorded response or with a response made here. */
#include "front.h"

#include <stdio.h>
#include <string.h>

#include "http_txn.h"

/* ---- Parser callbacks: responses -------------------------------------- */

static int resp_on_headers_complete(http_parser *p)
{
    struct front_conn *c = p->data;
    const struct front_txn *t = q_at(c, c->q_done);

    c->rsh.done = true;
    c->rs_interim = p->status_code / 100 == 1;
    http_parser_pause(p, 1);
    return t->head_req ? 1 : 0;      /* 1: a response to HEAD has no body */
}

static int resp_on_message_complete(http_parser *p)
{
    struct front_conn *c = p->data;

    c->rs_msg_done = true;
    c->rs_keep = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings resp_settings = {
    .on_header_field = head_on_field,
    .on_header_value = head_on_value,
    .on_headers_complete = resp_on_headers_complete,
    .on_message_complete = resp_on_message_complete,
};

/* ---- Responses: upstream -> client ------------------------------------ */

/* Writes the response made here for 't' and ends the connection after it. */
static void local_resp(struct front_conn *c, struct front_txn *t)
{
    char buf[FRONT_LOCAL_ROOM];
    const char *text = rs_http_reason(t->local);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nServer: rs-front\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                     t->local, text, strlen(text) + 1, text);

    t->status = t->local;
    t->start = t->hold_from = c->gen_total;
    t->started = true;
    compact(c->out, &c->out_off, &c->out_len);
    out_put(c, buf, (uint32_t)n);
    t->end = c->gen_total;
    c->q_done++;
    c->closing = true;
    c->f->stats[FS_LOCAL]++;
    txn_drop_after(c, c->q_done);
}

/* Moves the completed response head, rewritten, to 'out'.  Returns true
 * when done, false while 'out' lacks room. */
static bool resp_head_flush(struct front_conn *c, struct front_txn *t)
{
    uint32_t need = head_out_len(&c->rsh, 0);

    compact(c->out, &c->out_off, &c->out_len);
    if (FRONT_OUT_CAP - c->out_len < need)
        return false;
    if (!t->started) {
        t->started = true;
        t->start = c->gen_total;
    }
    c->f->stats[FS_STRIPPED] += c->rsh.n_cuts;
    c->out_len += head_build(&c->rsh, "", 0, c->out + c->out_len);
    c->gen_total += need;
    head_reset(&c->rsh);
    http_parser_pause(&c->rs, 0);
    c->rs_skip_lf = true;
    c->rs_phase = PH_BODY;
    return true;
}

/* The current response is complete. */
static void resp_done(struct front_conn *c, struct front_txn *t)
{
    http_parser_pause(&c->rs, 0);
    c->rs_msg_done = false;
    c->rs_phase = PH_IDLE;
    if (c->rs_interim)
        return;                 /* 100 Continue & co: the final response follows */
    t->end = c->gen_total;
    c->q_done++;
    c->f->stats[FS_RESPS]++;
    if (t->sync_state)
        update_send_held(c, t, true);
    if (!c->rs_keep) {
        /* The upstream closes after this response (Connection: close, or
         * HTTP/1.0): so does the client connection.  Requests pipelined
         * behind it were never answered; the client retries them. */
        txn_drop_after(c, c->q_done);
        c->rq_stop = c->closing = true;
        up_close(c);
    }
}

/* Parses upstream input into 'out'.  Returns true on progress. */
bool resp_parse(struct front_conn *c)
{
    bool progress = false;

    while (!c->dead) {
        struct front_txn *t = c->q_done < c->q_len ? q_at(c, c->q_done) : NULL;
        uint32_t avail = c->ui_len - c->ui_off;
        const char *at = (const char *)c->up_in + c->ui_off;
        enum http_errno e;
        size_t lim, n;

        if (t && t->local) {
            compact(c->out, &c->out_off, &c->out_len);
            if (FRONT_OUT_CAP - c->out_len < FRONT_LOCAL_ROOM)
                return progress;
            local_resp(c, t);
            return true;
        }
        if (t && t->rec) {
            if (!rec_emit(c, t))
                return progress;
            progress = true;
            continue;
        }
        if (!t) {
            if (avail > 0) {
                rs_log("upstream-error %s: %u response bytes nobody asked for", c->who.name, avail);
                up_close(c);
                return true;
            }
            if (c->up_eof) {    /* an idle keep-alive connection closed: reconnect when needed */
                up_close(c);
                return true;
            }
            return progress;
        }
        if (c->rs_phase == PH_BODY && c->rsh.done) {
            if (!resp_head_flush(c, t)) {
                if (t->sync_state)
                    update_send_held(c, t, false);
                return progress;
            }
            progress = true;
        }
        if (avail == 0) {
            if (!c->up_eof)
                return progress;
            if (c->rs_phase == PH_BODY && !c->rs_skip_lf) {
                /* Close-delimited body: EOF ends it. */
                http_parser_execute(&c->rs, &resp_settings, NULL, 0);
                if (HTTP_PARSER_ERRNO(&c->rs) == HPE_PAUSED && c->rs_msg_done) {
                    c->rs_keep = false;
                    resp_done(c, t);
                    return true;
                }
            }
            up_fail(c, c->rs_phase == PH_BODY ? "closed mid-response" : "closed before responding");
            return true;
        }
        if (c->rs_phase != PH_BODY) {
            lim = min_u64(avail, FRONT_HEAD_CAP - c->rsh.len);
            if (lim == 0) {
                up_fail(c, "response head too large");
                return true;
            }
            c->rsh.exec_at = at;
            c->rsh.exec_base = c->rsh.len;
            n = http_parser_execute(&c->rs, &resp_settings, at, lim);
            memcpy(c->rsh.buf + c->rsh.len, at, n);
            c->rsh.len += (uint32_t)n;
            c->ui_off += (uint32_t)n;
            c->rs_phase = PH_HEAD;
            e = HTTP_PARSER_ERRNO(&c->rs);
            if (e == HPE_PAUSED && c->rsh.done) {
                if (c->ui_off >= c->ui_len || head_finish(c, &c->rsh, c->up_in[c->ui_off]) < 0) {
                    up_fail(c, "response head not understood");
                    return true;
                }
                if (c->rs.status_code == 101) {
                    up_fail(c, "protocol upgrade is not supported");
                    return true;
                }
                if (!c->rs_interim) {
                    /* Every earlier byte is in 'out': the head goes here. */
                    t->hold_from = c->gen_total;
                    t->status = c->rs.status_code;
                    update_take(c, t);
                }
                c->rs_phase = PH_BODY;  /* head waits in 'rsh' until 'out' has room */
                progress = true;
                continue;
            }
            if (e != HPE_OK) {
                up_fail(c, http_errno_description(e));
                return true;
            }
            progress |= n > 0;
            if (n < lim)
                return progress;
            continue;
        }
        compact(c->out, &c->out_off, &c->out_len);
        lim = min_u64(avail, FRONT_OUT_CAP - c->out_len + (c->rs_skip_lf ? 1 : 0));
        if (lim == 0) {
            if (t->sync_state)
                update_send_held(c, t, false);
            return progress;    /* 'out' full (maybe held): back-pressure on the upstream */
        }
        n = http_parser_execute(&c->rs, &resp_settings, at, lim);
        e = HTTP_PARSER_ERRNO(&c->rs);
        if (n > 0) {
            uint32_t skip = c->rs_skip_lf ? 1 : 0;

            out_put(c, at + skip, (uint32_t)(n - skip));
            c->ui_off += (uint32_t)n;
            c->rs_skip_lf = false;
            progress = true;
        }
        if (e == HPE_PAUSED && c->rs_msg_done) {
            resp_done(c, t);
            continue;
        }
        if (e != HPE_OK) {
            up_fail(c, http_errno_description(e));
            return true;
        }
        if (n < lim)
            return progress;
    }
    return progress;
}

