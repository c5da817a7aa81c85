/* rs-logger's recovery planner (docs/recovery.md, "Plan"): RECOVER ->
 * PLAN, one state machine per client connection on the main loop, many at
 * once.  Steps, after the seed's §4.3:
 *   SETTLE  let the mirror's last frames in (a few ms at most);
 *   QUERY   Ts and TA from the alternate's rs-stated;
 *   APPLY   the alternate applies the buffered state of (Ts, TR);
 *   REPLAY  the update transactions of [TR, TL] run again on the alternate
 *           (CONN_MAP, a connection of our own, the logged request, the
 *           response read to its end and dropped);
 * then the PLAN, with TL+1's logged request, goes back to the proxy.  The
 * whole plan ends within the budget the proxy gave (its RECOVER says so):
 * a late plan is no plan. */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "logger.h"
#include "list.h"
#include "recovery.h"
#include "seq.h"

#define RECOVER_SETTLE_MS 20          /* longest wait for the mirror's last frames */
#define BUDGET_DEFAULT_NS (700 * 1000000ull)
#define BUDGET_MARGIN_NS (20 * 1000000ull)   /* answer this much before the proxy gives up */

enum plan_step { PL_SETTLE, PL_QUERY, PL_APPLY, PL_REPLAY };
static const char *const pl_step_name[] = { "settle", "query", "apply", "replay" };

struct resp_reader {
    bool done, head;
};

struct lg_plan {
    struct lg_plan *prev, *next;
    struct logger *lg;
    uint64_t conn_id;             /* the control connection to answer on */
    struct rs_ctl_recover rq;
    uint32_t isn;                 /* the connection's client ISN: the same incarnation throughout */
    enum plan_step step;
    int settle_ms;
    uint64_t budget_ns;           /* from the start to the deadline */
    uint64_t t0_us, t_query, t_apply, t_replay;
    struct rs_timer timer, deadline;
    struct rs_ctl_call call;
    bool has_ts, has_ta;
    uint16_t ts, ta;
    uint32_t first;
    struct rs_recovery_txn txns[RS_HTTP_TXN_RING];
    struct rs_recovery_input in;
    struct rs_recovery_plan plan;
    struct rs_ctl_msg out;
    uint8_t *data;
    /* the replay in progress */
    size_t replay_i;
    struct rs_io rio;
    struct rs_addr rlocal;
    const char *rmethod;
    uint32_t rnum;
    uint8_t *req;
    size_t rlen, roff;
    http_parser hp;
    struct resp_reader rr;
};

/* ---- what the log says ----------------------------------------------------------- */

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
    /* Clamped past log_first: the tags of those are gone, assume updates. */
    in->has_read_only_from = first == c->log_first;
    in->read_only_from = (uint16_t)c->read_only_from;
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

/* Can the log of 'c' back a recovery at all ('rq': what the proxy saw, or
 * NULL)?  Returns 0 or -errno; -ENOBUFS: request bytes the backend
 * acknowledged are not in the log (yet, when the capture lags). */
static int loggable(const struct lg_conn *c, const struct rs_ctl_recover *rq)
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
    if ((c->inc != LG_INC_NONE && c->inc_dir == LG_REQ) || (c->has_ack_srv && rs_seq_gt(c->ack_srv, logged)))
        return -ENOBUFS;
    /* The proxy saw the backend's newest ACK; the mirror's copy of it may
     * still be in the capture's backlog with the bytes it acknowledges. */
    if (rq && rq->has_server_ack && rs_seq_gt(rq->server_ack, logged))
        return -ENOBUFS;
    return 0;
}

/* True when the backend's end of the connection is one the application
 * meant: every request has its whole response, the client sent nothing
 * after the last one, and either the client closed first or the last
 * response said "Connection: close". */
bool lg_closed_as_meant(const struct lg_conn *c)
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

/* True while the log has not seen what the proxy saw of the client: its
 * ACK (response bytes it holds) and its last segment (a FIN takes a
 * sequence number the request log does not hold). */
static bool behind(const struct lg_conn *c, const struct rs_ctl_recover *rq)
{
    uint32_t req_end;

    if (!rq->has_seen)
        return false;
    if (!c->has_ack || rs_seq_lt(c->ack_cl, rq->client_ack))
        return true;
    req_end = c->started ? rs_reasm_contig_seq(&c->rs[LG_REQ]) : 0;
    if (c->fin[LG_REQ] && c->fin_seq[LG_REQ] == req_end)
        req_end++;
    return rs_seq_lt(req_end, rq->client_seq_end);
}

/* True while the log lacks response bytes the proxy forwarded to the
 * client ('rq'->server_end): the verdict on the backend's end (is the
 * last response complete?) must not be taken from a capture that lags. */
static bool resp_behind(const struct lg_conn *c, const struct rs_ctl_recover *rq)
{
    /* (A log that never started cannot back a plan anyway: loggable().) */
    if (!rq->has_server_end || !c->started)
        return false;
    return rs_seq_lt(rs_reasm_contig_seq(&c->rs[LG_RESP]), rq->server_end);
}

/* The log of the plan's connection, if it is still the same incarnation. */
static struct lg_conn *plan_conn(struct lg_plan *pl)
{
    struct lg_conn *c = lg_conn_find(pl->lg, pl->rq.client.ip4, pl->rq.client.port);

    return c && c->syn && c->isn[LG_REQ] == pl->isn ? c : NULL;
}

/* ---- the end ------------------------------------------------------------------------ */

static void replay_close(struct lg_plan *pl)
{
    rs_io_stop(&pl->rio);
    if (pl->rio.fd >= 0)
        close(pl->rio.fd);
    pl->rio.fd = -1;
    free(pl->req);
    pl->req = NULL;
}

static void plan_free(struct lg_plan *pl)
{
    struct logger *lg = pl->lg;

    replay_close(pl);
    rs_ctl_call_cancel(&pl->call);
    rs_timer_stop(&lg->loop, &pl->timer);
    rs_timer_stop(&lg->loop, &pl->deadline);
    RS_LIST_UNLINK(lg->plans, pl);
    lg->n_plans--;
    free(pl->data);
    free(pl);
}

/* Sends the PLAN (status 'e') and ends 'pl'. */
static void plan_reply(struct lg_plan *pl, int e)
{
    struct logger *lg = pl->lg;
    struct rs_ctl_plan *o = &pl->out.u.plan;
    struct rs_ctlconn *cc = rs_ctlserver_find(&lg->ctlsrv, pl->conn_id);
    struct rs_addr client = { pl->rq.client.ip4, pl->rq.client.port };

    pl->out.type = RS_CTL_PLAN;
    o->client = pl->rq.client;
    if (e == -ESHUTDOWN)
        lg->s.legit_closes++;   /* the application meant its end: no error */
    else if (e)
        lg->s.recovery_errors++;
    if (e) {
        o->len = 0;
        o->data = NULL;
    }
    o->status = e;
    rs_log("recover client=%s backend=%u target=%s status=%d%s%s step=%s has_ts=%d ts=%u has_ta=%d ta=%u tl=%u%s"
           " tsp=%u tr=%u replayed=%u ack_tl=%u p=%u ackcl=%u eq1=%d resend=[%u,%u) q=%u len=%u query_us=%" PRIu64
           " apply_us=%" PRIu64 " replay_us=%" PRIu64 " total_us=%" PRIu64 " planning=%u",
           RS_A(client), pl->rq.backend_id, RS_A(((struct rs_addr){ pl->rq.target.ip4, pl->rq.target.port })), e,
           e ? " " : "", e ? strerror(-e) : "", pl_step_name[pl->step], pl->has_ts, pl->ts, pl->has_ta, pl->ta,
           o->tl, pl->plan.has_tl ? "" : "(none)", o->tsp, o->tr, o->replayed, o->ack_tl, o->p, o->ackcl,
           pl->plan.eq1_holds, o->resend_from, o->resend_to, o->q, o->len,
           pl->t_query ? pl->t_query - pl->t0_us : 0, pl->t_apply ? pl->t_apply - pl->t_query : 0,
           pl->t_replay ? pl->t_replay - pl->t_apply : 0, rs_now_us() - pl->t0_us, lg->n_plans);
    if (!cc || rs_ctl_send(cc, &pl->out))
        rs_log("recover client=%s: PLAN not sent (%s)", RS_A(client), cc ? "queue full" : "the proxy hung up");
    plan_free(pl);
}

static void on_deadline(struct rs_timer *t)
{
    plan_reply(t->ctx, -ETIMEDOUT);
}

static uint64_t remaining(const struct lg_plan *pl)
{
    uint64_t now = rs_loop_now(&pl->lg->loop);

    return pl->deadline.when_ns > now ? pl->deadline.when_ns - now : 1;
}

/* 5. TL+1's request as logged so far: every contiguous client byte from
 * q, so the client's own bytes take over exactly at q + len. */
static void plan_finish(struct lg_plan *pl)
{
    struct lg_conn *c = plan_conn(pl);
    struct rs_ctl_plan *o = &pl->out.u.plan;
    uint32_t end, len;
    int e = 0;

    pl->t_replay = rs_now_us();
    if (!c) {
        plan_reply(pl, -ENOENT);
        return;
    }
    end = rs_reasm_contig_seq(&c->rs[LG_REQ]);
    len = rs_seq_dist(pl->plan.req_fwd_from, end);
    if (rs_seq_lt(end, pl->plan.req_fwd_from) || len > RS_CTL_PLAN_DATA_MAX) {
        plan_reply(pl, -EMSGSIZE);
        return;
    }
    if (len && (!(pl->data = malloc(len)) || (e = rs_reasm_read(&c->rs[LG_REQ], pl->plan.req_fwd_from, len, pl->data)))) {
        plan_reply(pl, e ? e : -ENOMEM);
        return;
    }
    o->len = len;
    o->data = pl->data;
    plan_reply(pl, 0);
}

/* ---- 4. replay ------------------------------------------------------------------------ */

static void replay_next(struct lg_plan *pl);

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

static const http_parser_settings rr_settings = { .on_headers_complete = rr_headers,
                                                  .on_message_complete = rr_complete };

static void replay_done(struct lg_plan *pl, int e)
{
    struct logger *lg = pl->lg;
    rs_txn_id id = rs_txn_id_make(pl->rq.client.ip4, pl->rq.client.port, (uint16_t)pl->rnum);
    struct rs_addr target = { pl->rq.target.ip4, pl->rq.target.port };

    replay_close(pl);
    if (e) {
        rs_log("replay id=%s target=%s failed: %s", RS_TXN(id), RS_A(target), strerror(-e));
        plan_reply(pl, e);
        return;
    }
    lg->s.replays++;
    pl->out.u.plan.replayed++;
    rs_log("replayed id=%s local=%s target=%s status=%u", RS_TXN(id), RS_A(pl->rlocal), RS_A(target),
           pl->hp.status_code);
    pl->replay_i++;
    replay_next(pl);
}

static void replay_io(struct rs_io *io, uint32_t events)
{
    struct lg_plan *pl = io->ctx;
    uint8_t in[16384];

    if (pl->roff < pl->rlen) {
        int err = rs_sock_error(io->fd);

        if (err) {
            replay_done(pl, -err);
            return;
        }
        while (pl->roff < pl->rlen) {
            ssize_t n = send(io->fd, pl->req + pl->roff, pl->rlen - pl->roff, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno == EAGAIN)
                return;
            if (n < 0) {
                replay_done(pl, -errno);
                return;
            }
            pl->roff += (size_t)n;
        }
        rs_io_set(io, EPOLLIN);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ssize_t n = recv(io->fd, in, sizeof(in), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            /* A close-delimited body ends here; anything else is cut short. */
            http_parser_execute(&pl->hp, &rr_settings, NULL, 0);
            replay_done(pl, pl->rr.done ? 0 : n < 0 ? -errno : -ECONNRESET);
            return;
        }
        http_parser_execute(&pl->hp, &rr_settings, (const char *)in, (size_t)n);
        if (pl->rr.done) {
            replay_done(pl, 0);
            return;
        }
        if (HTTP_PARSER_ERRNO(&pl->hp) != HPE_OK) {
            replay_done(pl, -EBADMSG);
            return;
        }
    }
}

static void on_replay_map(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct lg_plan *pl = call->ctx;
    struct sockaddr_in sin = rs_addr_sin((struct rs_addr){ pl->rq.target.ip4, pl->rq.target.port });

    if (!err && reply->u.ack.status)
        err = reply->u.ack.status;
    if (!err && connect(pl->rio.fd, (struct sockaddr *)&sin, sizeof(sin)) && errno != EINPROGRESS)
        err = -errno;
    if (!err)
        err = rs_io_start(&pl->lg->loop, &pl->rio, pl->rio.fd, EPOLLOUT, replay_io, pl);
    if (err)
        replay_done(pl, err);
}

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

/* Replays the next update transaction of [TR, TL] on the alternate as the
 * client (docs/recovery.md step 2), or finishes the plan. */
static void replay_next(struct lg_plan *pl)
{
    struct logger *lg = pl->lg;
    struct lg_conn *c = plan_conn(pl);
    const struct rs_http_txn *t;
    struct rs_ctl_msg m = { .type = RS_CTL_CONN_MAP };
    struct sockaddr_in me;
    socklen_t len = sizeof(me);
    int fd, e;

    if (pl->replay_i == pl->plan.n_replay) {
        plan_finish(pl);
        return;
    }
    pl->step = PL_REPLAY;
    pl->rnum = pl->first + (uint16_t)(pl->plan.replay[pl->replay_i] - pl->in.first_num);
    if (!c || !(t = rs_http_txn_get(&c->http, pl->rnum))) {
        plan_reply(pl, -ENODATA);
        return;
    }
    pl->rmethod = t->method;
    pl->rr = (struct resp_reader){ false, !strcmp(t->method, "HEAD") };
    http_parser_init(&pl->hp, HTTP_RESPONSE);
    pl->hp.data = &pl->rr;
    pl->rlen = rs_seq_dist(t->req_start, t->req_end);
    pl->roff = 0;
    pl->req = malloc(pl->rlen ? pl->rlen : 1);
    e = pl->req ? rs_reasm_read(&c->rs[LG_REQ], t->req_start, (uint32_t)pl->rlen, pl->req) : -ENOMEM;
    if (e) {
        plan_reply(pl, e);
        return;
    }
    pl->rlocal = (struct rs_addr){ 0, 0 };
    if ((e = local_ip_for((struct rs_addr){ pl->rq.target.ip4, pl->rq.target.port }, &pl->rlocal.ip))) {
        plan_reply(pl, e);
        return;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    me = rs_addr_sin(pl->rlocal);
    if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof(me)) || getsockname(fd, (struct sockaddr *)&me, &len)) {
        e = -errno;
        if (fd >= 0)
            close(fd);
        plan_reply(pl, e);
        return;
    }
    pl->rio.fd = fd;
    pl->rlocal = rs_addr_of_sin(&me);
    m.u.conn_map = (struct rs_ctl_conn_map){ { pl->rlocal.ip, pl->rlocal.port }, pl->rq.client, (uint16_t)t->num,
                                             RS_CTL_CONN_MAP_RERUN };
    if ((e = rs_ctl_call(lg_ctl_stated_of(lg, pl->rq.target.ip4), &m, RS_CTL_ACK, &pl->call, remaining(pl),
                         on_replay_map, pl)))
        replay_done(pl, e);
}

/* ---- 1-3. query, plan, apply --------------------------------------------------------- */

static void on_applied(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct lg_plan *pl = call->ctx;

    if (!err)
        err = reply->u.ack.status;
    if (err) {
        plan_reply(pl, err);
        return;
    }
    pl->t_apply = rs_now_us();
    replay_next(pl);
}

static void on_report(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct lg_plan *pl = call->ctx;
    struct lg_conn *c = plan_conn(pl);
    struct rs_recovery_plan *plan = &pl->plan;
    struct rs_ctl_plan *o = &pl->out.u.plan;
    struct rs_ctl_msg m = { .type = RS_CTL_APPLY };
    int e;

    if (!err && reply->type == RS_CTL_ACK)
        err = reply->u.ack.status ? reply->u.ack.status : -EBADMSG;
    if (!err && !c)
        err = -ENOENT;
    if (err) {
        plan_reply(pl, err);
        return;
    }
    pl->has_ts = reply->u.state_report.has_ts;
    pl->has_ta = reply->u.state_report.has_ta;
    pl->ts = reply->u.state_report.ts;
    pl->ta = reply->u.state_report.ta;
    pl->t_query = rs_now_us();
    /* 2. The plan. */
    pl->first = build_input(c, pl->txns, &pl->in);
    pl->in.has_ts = pl->has_ts;
    pl->in.ts = pl->ts;
    pl->in.has_ta = pl->has_ta;
    pl->in.ta = pl->ta;
    e = rs_recovery_plan(&pl->in, plan);
    o->flags = (uint8_t)((plan->has_tl ? RS_CTL_PLAN_HAS_TL : 0) | (plan->eq1_holds ? RS_CTL_PLAN_EQ1 : 0)
                         | (plan->tl1_req_complete ? RS_CTL_PLAN_REQ_DONE : 0)
                         | (plan->tl1_from_sync_state ? RS_CTL_PLAN_SYNC_STATE : 0));
    o->tl = plan->has_tl ? plan->tl : 0;
    o->tsp = plan->tsp;
    o->tr = plan->tr;
    o->ack_tl = plan->ack_tl;
    o->p = plan->p;
    o->ackcl = pl->in.ack_cl;
    o->resend_from = plan->resend_from;
    o->resend_to = plan->resend_to;
    o->q = plan->req_fwd_from;
    if (e) {
        rs_log("recover client=%s plan failed: %s (%s)", RS_A(((struct rs_addr){ c->ip, c->port })),
               rs_recovery_reason_str(plan->reason), strerror(-e));
        plan_reply(pl, e);
        return;
    }
    /* The resend range must still be in the log. */
    if (rs_seq_lt(plan->resend_from, rs_reasm_released_seq(&c->rs[LG_RESP]))) {
        plan_reply(pl, -ESTALE);
        return;
    }
    /* 3. Apply the buffered state of (Ts, TR); of (Ts, TL+1] when TL+1 is
     * answered from its synchronously sent state (the client holds p bytes
     * of a response only that state reproduces; then TR = TL+1). */
    pl->step = PL_APPLY;
    m.u.apply = (struct rs_ctl_apply){ pl->rq.client, plan->tl1_from_sync_state ? (uint16_t)(plan->tsp + 1) : plan->tr };
    if ((e = rs_ctl_call(lg_ctl_stated_of(pl->lg, pl->rq.target.ip4), &m, RS_CTL_ACK, &pl->call, remaining(pl),
                         on_applied, pl)))
        plan_reply(pl, e);
}

static void settle(struct rs_timer *t)
{
    struct lg_plan *pl = t->ctx;
    struct logger *lg = pl->lg;
    struct lg_conn *c;
    struct rs_ctl_msg m = { .type = RS_CTL_STATE_QUERY };
    const struct lg_ended *e_old;
    bool lacking, resp_lags;
    int e;

    /* The mirror's copies of the last segments may still be in the capture
     * buffer, or — the mirror does not order one port's frames against
     * another's — a server's ACK may have overtaken the request bytes it
     * acknowledges: process what is there, and give stragglers a few ms. */
    lg_capture_drain(lg);
    c = lg_conn_find(lg, pl->rq.client.ip4, pl->rq.client.port);
    e_old = c ? NULL : lg_conn_ended(lg, pl->rq.client.ip4, pl->rq.client.port);
    if (e_old && pl->rq.has_seen && pl->rq.client_seq_end == e_old->fin_seq[LG_REQ] + 1) {
        /* It ended cleanly (both FINs acknowledged) and was freed: nothing
         * to recover, the ends were meant.  (The proxy's view of the
         * client's stream ends at that FIN: the same connection.) */
        plan_reply(pl, -ESHUTDOWN);
        return;
    }
    lacking = c && loggable(c, &pl->rq) == -ENOBUFS;
    resp_lags = c && resp_behind(c, &pl->rq);
    if ((!c || lacking || resp_lags || behind(c, &pl->rq)) && pl->settle_ms++ < RECOVER_SETTLE_MS) {
        rs_timer_after(&lg->loop, &pl->timer, 1000000);
        return;
    }
    /* Bytes the backend acknowledged are still missing: a capture that
     * lags (a loaded machine) brings them later.  Wait while half the
     * budget is left for the rest of the plan; without them the plan would
     * hand the alternate a request with a hole the client never fills.
     * Likewise for response bytes the client was sent: without them a
     * complete "Connection: close" response looks cut short, and a meant
     * close becomes a failover. */
    if ((lacking || resp_lags) && remaining(pl) > pl->budget_ns / 2) {
        pl->settle_ms++;
        rs_timer_after(&lg->loop, &pl->timer, 1000000);
        return;
    }
    if (!c) {
        plan_reply(pl, -ENOENT);
        return;
    }
    if (pl->settle_ms)
        rs_log("recover client=%s settled in %d ms%s", RS_A(((struct rs_addr){ c->ip, c->port })), pl->settle_ms,
               behind(c, &pl->rq) ? " (the log is still behind the proxy's view)"
               : lacking ? " (the log still lacks bytes the backend acknowledged)"
               : resp_lags ? " (the log still lacks response bytes the client was sent)" : "");
    pl->isn = c->isn[LG_REQ];
    if ((e = loggable(c, &pl->rq))) {
        plan_reply(pl, e);
        return;
    }
    if (lg_closed_as_meant(c)) {
        /* The backend's FIN ends a complete response that said
         * "Connection: close": the application meant it, nothing to recover. */
        plan_reply(pl, -ESHUTDOWN);
        return;
    }
    if (pl->rq.verdict_only) {
        /* Not meant, and the proxy has no backend left to move it to. */
        plan_reply(pl, -EHOSTDOWN);
        return;
    }
    if (!lg->has_stated) {
        plan_reply(pl, -ENOTCONN);
        return;
    }
    /* 1. Ts and TA from the alternate. */
    pl->step = PL_QUERY;
    m.u.state_query.client = pl->rq.client;
    if ((e = rs_ctl_call(lg_ctl_stated_of(lg, pl->rq.target.ip4), &m, RS_CTL_STATE_REPORT, &pl->call,
                         remaining(pl), on_report, pl)))
        plan_reply(pl, e);
}

bool lg_plan_for(const struct logger *lg, uint32_t ip, uint16_t port)
{
    for (const struct lg_plan *pl = lg->plans; pl; pl = pl->next)
        if (pl->rq.client.ip4 == ip && pl->rq.client.port == port)
            return true;
    return false;
}

void lg_plan_start(struct logger *lg, uint64_t conn_id, const struct rs_ctl_msg *req)
{
    struct lg_plan *pl = calloc(1, sizeof(*pl));
    uint64_t budget = req->u.recover.budget_ms ? req->u.recover.budget_ms * 1000000ull : BUDGET_DEFAULT_NS;

    lg->s.recoveries++;
    if (!pl) {
        struct rs_ctlconn *cc = rs_ctlserver_find(&lg->ctlsrv, conn_id);
        if (cc)
            rs_ctl_ack(cc, req, -ENOMEM);
        return;
    }
    pl->lg = lg;
    pl->conn_id = conn_id;
    pl->rq = req->u.recover;
    pl->t0_us = rs_now_us();
    pl->rio.fd = -1;
    RS_LIST_PUSH(lg->plans, pl);
    lg->n_plans++;
    rs_timer_init(&pl->timer, settle, pl);
    rs_timer_init(&pl->deadline, on_deadline, pl);
    pl->budget_ns = budget > 2 * BUDGET_MARGIN_NS ? budget - BUDGET_MARGIN_NS : budget / 2;
    rs_timer_after(&lg->loop, &pl->deadline, pl->budget_ns);
    settle(&pl->timer);
}

void lg_plan_abort_all(struct logger *lg)
{
    while (lg->plans)
        plan_free(lg->plans);
}
