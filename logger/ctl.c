/* rs-logger's control plane (docs/recovery.md): the control port (RECOVER
 * goes to the planner, plan.c; HEARTBEAT and FAILURE that come over TCP go
 * to the liveness thread), the persistent peers (TXN_LOGGED to the
 * alternate's rs-stated, SUSPECT and CLOSE_WORD to the proxy; CLOSE_ASK
 * answered), and the periodic tick.
 * Everything runs on the main thread's loop without blocking. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "logger.h"

/* ---- peers ------------------------------------------------------------------------ */

static void on_peer_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    if (m->type == RS_CTL_ACK && m->u.ack.status)
        rs_log("peer %s=%s: %s answered status=%d (%s)", c->name, RS_A(c->addr), rs_ctl_type_str(m->u.ack.echo_type),
               m->u.ack.status, strerror(-m->u.ack.status));
    else if (m->type != RS_CTL_ACK)
        rs_log("peer %s=%s: unexpected %s", c->name, RS_A(c->addr), rs_ctl_type_str(m->type));
}

/* Up (again): the alternate's rs-stated learns at once that this
 * connection is the logger's (a HEARTBEAT of role LOGGER), so it knows the
 * logger gone when it closes, even before any TXN_LOGGED (else the states
 * it buffered would wait for ever). */
static void on_stated_state(struct rs_ctlconn *c, int err)
{
    struct rs_ctl_msg m = { .type = RS_CTL_HEARTBEAT };

    if (err)
        return;
    m.u.heartbeat.role = RS_CTL_ROLE_LOGGER;
    rs_ctl_send(c, &m);
}

/* Up (again), perhaps to a proxy started after the last one died: the
 * words that went to that one went with it. */
static void on_px_state(struct rs_ctlconn *c, int err)
{
    struct logger *lg = c->ctx;

    if (!err)
        lg->px_ups++;
}

void lg_ctl_txn_logged(struct logger *lg, rs_txn_id txn, uint32_t resp_end)
{
    struct rs_ctl_msg m = { .type = RS_CTL_TXN_LOGGED };

    if (!lg->has_stated || !lg->st.loop)
        return;
    m.u.txn_logged = (struct rs_ctl_txn_logged){ txn, resp_end };
    if (rs_ctl_send(&lg->st, &m) == 0)
        lg->s.txn_logged_sent++;
    for (int i = 0; i < lg->n_spare_stated; i++)
        rs_ctl_send(&lg->st_spare[i], &m);
}

struct rs_ctlconn *lg_ctl_stated_of(struct logger *lg, uint32_t ip)
{
    for (int i = 0; i < lg->n_spare_stated; i++)
        if (ip == lg->spare_stated[i].ip)
            return &lg->st_spare[i];
    return &lg->st;
}

void lg_ctl_unlogged(struct logger *lg, rs_txn_id from)
{
    struct rs_ctl_msg m = { .type = RS_CTL_UNLOGGED };

    if (!lg->has_stated || !lg->st.loop)
        return;
    m.u.unlogged.from = from;
    rs_ctl_send(&lg->st, &m);
    for (int i = 0; i < lg->n_spare_stated; i++)
        rs_ctl_send(&lg->st_spare[i], &m);
}

static void flush_px(void *ctx)
{
    rs_ctlconn_flush(&((struct logger *)ctx)->px);
}

void lg_ctl_suspect(struct logger *lg, struct rs_ctlconn *to, const struct lg_conn *c, uint16_t reason,
                    uint32_t silent_ms)
{
    struct rs_ctl_msg m = { .type = RS_CTL_SUSPECT };

    lg->s.suspects += reason != RS_CTL_SUSPECT_OWED;
    rs_log("%s client=%s why=%s silent_ms=%u txns=%u done=%u", reason == RS_CTL_SUSPECT_OWED ? "owed" : "suspect",
           RS_A(((struct rs_addr){ c->ip, c->port })),
           reason == RS_CTL_SUSPECT_STALL ? "response-stall" : reason == RS_CTL_SUSPECT_OWED ? "new-proxy"
                                                                                         : "not-reading",
           silent_ms, rs_http_txn_count(&c->http), rs_http_resp_done_count(&c->http));
    if (!to && (!lg->has_proxy || !lg->px.loop))
        return;
    m.u.suspect = (struct rs_ctl_suspect){ { c->ip, c->port }, reason, silent_ms };
    rs_ctl_send(to ? to : &lg->px, &m);
}

int lg_ctl_close_word(struct logger *lg, struct rs_ctlconn *to, const struct rs_ctl_conn *client, uint8_t flags,
                      uint32_t req_end, uint32_t resp_end)
{
    struct rs_ctl_msg m = { .type = RS_CTL_CLOSE_WORD };
    int e;

    m.u.close = (struct rs_ctl_close){ *client, flags, req_end, resp_end };
    if ((e = rs_ctl_send(to, &m)) == 0)
        lg->s.close_words++;
    return e;
}

/* The proxy holds a backend's FIN and asks whether it is meant: answered
 * from the log as it stands once the capture is read (a RECOVER judges
 * what this cannot say). */
static void on_close_ask(struct logger *lg, struct rs_ctlconn *cc, const struct rs_ctl_close *q)
{
    struct lg_conn *c;
    uint32_t req_end, resp_end;
    bool meant;

    lg->s.close_asks++;
    lg_capture_drain(lg);
    c = lg_conn_find(lg, q->client.ip4, q->client.port);
    meant = c && lg_conn_meant_ends(c, &req_end, &resp_end) && req_end == q->req_end && resp_end == q->resp_end;
    /* The drain may have sent the unasked word for these very ends: it
     * answers the question as well, if it went over the connection up
     * now (not one sent to a proxy that died since, unread). */
    if (meant && lg->px.up && lg_word_went(lg, c, req_end, resp_end))
        return;
    lg_ctl_close_word(lg, cc, &q->client, RS_CTL_CLOSE_ANSWER | (meant ? RS_CTL_CLOSE_MEANT : 0), q->req_end,
                      q->resp_end);
}

/* ---- the control port --------------------------------------------------------------- */

static void on_ctl(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct logger *lg = c->ctx;

    switch (m->type) {
    case RS_CTL_HEARTBEAT:
    case RS_CTL_FAILURE:
        lg_live_report(lg, m);
        rs_ctl_ack(c, m, 0);
        break;
    case RS_CTL_RECOVER:
        lg_plan_start(lg, c->id, m);
        break;
    case RS_CTL_CLOSE_ASK:
        on_close_ask(lg, c, &m->u.close);
        break;
    case RS_CTL_OWED_ASK:
        rs_ctl_ack(c, m, 0);
        lg_capture_drain(lg);
        lg_conn_tell_owed(lg, c);
        break;
    case RS_CTL_ACK:
        break;
    default:
        rs_ctl_ack(c, m, -EOPNOTSUPP);
    }
}

/* ---- set-up, ticks ---------------------------------------------------------------- */

static void on_tick(struct rs_timer *t)
{
    struct logger *lg = t->ctx;
    uint64_t now = rs_loop_now(&lg->loop);

    lg_resend_tick(lg, now);
    if (lg->stall_after_ns && now - lg->last_stall_ns >= lg->stall_after_ns / 10) {
        lg->last_stall_ns = now;
        lg_conn_check_stalls(lg, now);
    }
    if (now - lg->last_gc_ns > 1000000000ull) {
        lg_conn_gc(lg, now);
        lg->last_gc_ns = now;
    }
    rs_timer_after(&lg->loop, t, 10 * 1000000ull);
}

int lg_ctl_setup(struct logger *lg)
{
    int e;

    if ((e = rs_ctlserver_open(&lg->ctlsrv, &lg->loop, lg->listen, &lg->key, &lg->seq, LG_SENDER_REPLY, on_ctl,
                               lg))) {
        rs_log("cannot listen on %s: %s", RS_A(lg->listen), strerror(-e));
        return e;
    }
    lg->ctlsrv.out_max += RS_CTL_FRAME_MAX;   /* a PLAN with a large request (an upload) */
    if ((e = lg_resend_open(lg)))
        return e;
    if (lg->has_proxy) {
        rs_ctlconn_peer(&lg->px, &lg->loop, "proxy", lg->proxy, &lg->key, &lg->seq, LG_SENDER_PROXY, LG_PEER_QUEUE,
                        on_peer_msg, on_px_state, lg);
        /* One drain of the capture raises a word for each connection
         * that closed in it: they go out in one write at the end of the
         * loop's turn (a send each was half the logger's CPU at ~5000
         * new connections a second). */
        rs_ctlconn_hold(&lg->px);
        rs_loop_before_sleep(&lg->loop, flush_px, lg);
    }
    if (lg->has_stated)
        rs_ctlconn_peer(&lg->st, &lg->loop, "stated", lg->stated, &lg->key, &lg->seq, LG_SENDER_STATED,
                        LG_PEER_QUEUE, on_peer_msg, on_stated_state, lg);
    for (int i = 0; i < lg->n_spare_stated; i++)
        rs_ctlconn_peer(&lg->st_spare[i], &lg->loop, "spare-stated", lg->spare_stated[i], &lg->key, &lg->seq,
                        LG_SENDER_STATED, LG_PEER_QUEUE, on_peer_msg, on_stated_state, lg);
    if ((e = lg_live_start(lg))) {
        rs_log("cannot start the liveness thread: %s", strerror(-e));
        return e;
    }
    rs_timer_init(&lg->tick, on_tick, lg);
    rs_timer_after(&lg->loop, &lg->tick, 10 * 1000000ull);
    return 0;
}

void lg_ctl_shutdown(struct logger *lg)
{
    lg_live_stop(lg);
    lg_plan_abort_all(lg);
    lg_resend_close_all(lg);
    rs_ctlserver_close(&lg->ctlsrv);
    rs_ctlconn_close(&lg->px);
    rs_ctlconn_close(&lg->st);
    for (int i = 0; i < lg->n_spare_stated; i++)
        rs_ctlconn_close(&lg->st_spare[i]);
}
