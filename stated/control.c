/* rs-stated's control port: STATE_UPDATE (buffered), TXN_LOGGED (releases
 * states), STATE_QUERY (Ts, TA), APPLY (recovery), CONN_MAP (to the
 * library) and FENCE. */
#include "stated.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Control requests -------------------------------------------------- */

static bool is_fenced(const struct stated *s, uint32_t id)
{
    for (unsigned i = 0; i < s->n_fenced; i++)
        if (s->fenced[i] == id)
            return true;
    return false;
}

static void on_state_update(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    const struct rs_ctl_state_update *u = &m->u.state_update;
    uint32_t from = (m->sender >> 24) == RS_CTL_ROLE_BACKEND ? (m->sender >> 4) & 0xfffff : 0;
    struct rs_store_client *fc = rs_store_find(&s->store, rs_txn_id_ip4(u->txn), rs_txn_id_port(u->txn));
    int err;

    /* A fenced backend's state must never change what a recovery planned
     * on (Ts, TA).  Before that query it is still welcome: the state of a
     * transaction it finished before it failed, late on the wire (its
     * connection may have ended: nothing else would bring it). */
    if (from && is_fenced(s, from) && fc && fc->queried) {
        if (s->st.updates_fenced++ % 1000 == 0)
            rs_log("update %s %uB from fenced backend=%u refused", RS_TXN(u->txn), u->len, from);
        rs_ctl_ack(cc, m, -EPERM);
        return;
    }
    if (u->kind != RS_CTL_STATE_TXN) {
        /* A snapshot from the predecessor (peer.c): how far it goes for one
         * connection, or the app's whole state.  Down the chain too. */
        err = u->kind == RS_CTL_STATE_COVERED ? rs_store_cover(&s->store, u->txn, rs_mono_ns())
                                              : snapshot_take(s, u->data, u->len);
        if (u->kind == RS_CTL_STATE_SNAPSHOT)
            rs_log("snapshot from backend=%u %uB%s", from, u->len, err ? ": refused" : "");
        if (!err)
            peer_forward(s, m, from);
        rs_ctl_ack(cc, m, err);
        return;
    }
    err = rs_store_put(&s->store, u->txn, u->data, u->len, rs_mono_ns());

    s->st.updates++;
    s->st.update_bytes += u->len;
    if (err == -ESTALE) {
        s->st.updates_stale++;
        rs_log("update %s %uB stale (at or before Ts, or the connection was recovered here): dropped",
               RS_TXN(u->txn), u->len);
        err = 0;
    } else if (err < 0) {
        s->st.updates_refused++;
        rs_log("update %s %uB refused: %s (buffered %" PRIu64 " states %" PRIu64 "B)", RS_TXN(u->txn),
               u->len, strerror(-err), s->store.n_states, s->store.bytes);
    } else {
        struct rs_store_client *c = rs_store_find(&s->store, rs_txn_id_ip4(u->txn), rs_txn_id_port(u->txn));

        rs_log("update %s %uB%s", RS_TXN(u->txn), u->len, u->sync ? " sync" : "");
        peer_forward(s, m, from);
        /* Its TXN_LOGGED may have come first (asynchronous transfer lags). */
        if (c && s->lib_fd >= 0)
            rs_store_drain(&s->store, c, false, 0, apply_fn, s);
    }
    rs_ctl_ack(cc, m, err);
}

/* Applies what the logger's news about 'id''s connection ('err' from
 * recording it) made applicable, and answers. */
static void drain_logged(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m, rs_txn_id id, int err)
{
    if (err == 0 && s->lib_fd >= 0)
        rs_store_drain(&s->store, rs_store_find(&s->store, rs_txn_id_ip4(id), rs_txn_id_port(id)),
                       false, 0, apply_fn, s);
    rs_ctl_ack(cc, m, err);
}

static void on_txn_logged(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    rs_txn_id id = m->u.txn_logged.txn;
    int err = rs_store_logged(&s->store, id, rs_mono_ns());

    s->st.logged++;
    rs_log("logged %s resp_end=%u%s", RS_TXN(id), m->u.txn_logged.resp_end, err ? " (client table full)" : "");
    drain_logged(s, cc, m, id, err);
}

/* The logger gave up on a connection: its states apply as they come. */
static void on_unlogged(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    rs_txn_id id = m->u.unlogged.from;
    int err = rs_store_unlogged(&s->store, id, rs_mono_ns());

    s->st.unlogged++;
    rs_log("unlogged %s: its states apply as they come%s", RS_TXN(id), err ? " (client table full)" : "");
    drain_logged(s, cc, m, id, err);
}

/* A readmitted backend before its snapshot has nothing a recovery could
 * plan on: the query (or APPLY) is refused, the recovery ends cleanly. */
static bool refuse_joining(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    if (!s->joining && !s->snap_in)
        return false;
    s->st.refused_joining++;
    rs_log("%s refused: readmitted, no snapshot applied yet", rs_ctl_type_str(m->type));
    rs_ctl_ack(cc, m, -EAGAIN);
    return true;
}

static void on_state_query(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    struct rs_ctl_conn cl = m->u.state_query.client;
    struct rs_store_client *c = rs_store_get(&s->store, cl.ip4, cl.port, rs_mono_ns());
    struct rs_ctl_msg r = { .type = RS_CTL_STATE_REPORT };
    char ts[8] = "none", ta[8] = "none";

    if (refuse_joining(s, cc, m))
        return;

    r.u.state_report.conn = cl;
    if (c) {
        c->queried = true;      /* no fenced backend's state may move TA now */
        r.u.state_report = (struct rs_ctl_state_report){ cl, c->has_ts, c->has_ta,
                                                        c->has_ts ? c->ts : 0, c->has_ta ? c->ta : 0 };
        if (c->has_ts)
            snprintf(ts, sizeof(ts), "%u", c->ts);
        if (c->has_ta)
            snprintf(ta, sizeof(ta), "%u", c->ta);
    }
    s->st.queries++;
    rs_log("query client=%s ts=%s ta=%s buffered=%u", RS_A(((struct rs_addr){ cl.ip4, cl.port })), ts,
           ta, c ? c->n_states : 0);
    rs_ctl_send(cc, &r);
}

static void on_apply(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    struct rs_ctl_conn cl = m->u.apply.client;
    struct rs_store_client *c = rs_store_find(&s->store, cl.ip4, cl.port);
    struct waiter *w;
    int n = 0;

    if (refuse_joining(s, cc, m))
        return;
    rs_log("apply-request client=%s upto=%u buffered=%u", RS_A(((struct rs_addr){ cl.ip4, cl.port })),
           m->u.apply.upto, c ? c->n_states : 0);
    if (!c)
        c = rs_store_get(&s->store, cl.ip4, cl.port, rs_mono_ns());
    if (c) {
        int dropped = rs_store_take_over(&s->store, c, m->u.apply.upto);

        if (dropped)
            rs_log("take-over client=%s from=%u dropped=%d", RS_A(((struct rs_addr){ cl.ip4, cl.port })),
                   m->u.apply.upto, dropped);
    }
    if (!c || !c->head || !rs_txn_num_lt(c->head->num, m->u.apply.upto)) {
        rs_ctl_ack(cc, m, 0);     /* nothing to apply */
        return;
    }
    w = calloc(1, sizeof(*w));
    if (!w) {
        rs_ctl_ack(cc, m, -ENOMEM);
        return;
    }
    *w = (struct waiter){ cc->id, m->seq, m->type, 0, false, 0 };
    s->cur_waiter = w;
    n = rs_store_drain(&s->store, c, true, m->u.apply.upto, apply_fn, s);
    s->cur_waiter = NULL;
    if (n < 0)
        w->status = n;
    else if (c->head && rs_txn_num_lt(c->head->num, m->u.apply.upto))
        w->status = -ENOBUFS;   /* the app's queue filled: the rest stays buffered */
    w->armed = true;
    waiter_check(s, w);         /* answers now when nothing went to the app */
}

static void on_conn_map(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    const struct rs_ctl_conn_map *cm = &m->u.conn_map;
    struct rs_xfer_rec r = { .type = RS_XFER_CONN_MAP, .map = *cm };
    struct waiter *w = calloc(1, sizeof(*w));
    int err;

    s->st.conn_maps++;
    rs_log("conn-map peer=%s client=%s next=%u%s", RS_A(((struct rs_addr){ cm->peer.ip4, cm->peer.port })),
           RS_A(((struct rs_addr){ cm->client.ip4, cm->client.port })), cm->next_num,
           cm->flags & RS_CTL_CONN_MAP_RERUN ? " rerun" : "");
    if (!w) {
        rs_ctl_ack(cc, m, -ENOMEM);
        return;
    }
    *w = (struct waiter){ cc->id, m->seq, m->type, 0, false, 0 };
    err = lib_request(s, &r, w);
    if (err < 0) {
        rs_log("conn-map refused: %s", strerror(-err));
        w->status = err;
    }
    w->armed = true;
    waiter_check(s, w);
}

/* FENCE from the proxy: backend 'id' was declared failed (or readmitted).
 * Ourselves: stop the app and take no other until readmitted.  Our
 * successor: replicate to the next one (a spare), or nobody (degraded).
 * Anyone: refuse its states. */
static void on_fence(struct stated *s, struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    const struct rs_ctl_fence *f = &m->u.fence;
    bool peer = f->backend_id != s->id && peer_fence(s, f->backend_id, f->ip4, f->fenced);

    rs_log("fence backend=%u fenced=%d%s", f->backend_id, f->fenced,
           f->backend_id == s->id ? " (this backend)" : peer ? " (the peer)" : "");
    if (f->fenced && !is_fenced(s, f->backend_id) && s->n_fenced < FENCED_MAX)
        s->fenced[s->n_fenced++] = f->backend_id;
    if (!f->fenced)
        for (unsigned i = 0; i < s->n_fenced; i++)
            if (s->fenced[i] == f->backend_id)
                s->fenced[i--] = s->fenced[--s->n_fenced];
    if (!f->fenced)
        peer_rejoin(s, f->backend_id);      /* the proxy readmits only a fenced one */
    if (f->backend_id == s->id) {
        s->self_fenced = f->fenced;
        if (f->fenced && s->lib_fd >= 0) {
            rs_log("fenced: stopping the app (pid %d)", (int)s->app_pid);
            if (s->app_pid > 0)
                kill(s->app_pid, SIGKILL);
            lib_close(s, "fenced");
        }
    }
    if (peer || (f->backend_id == s->id && !f->fenced))
        peer_choose(s);     /* nothing more to a fenced one until it is readmitted; the chain's new order */
    rs_ctl_ack(cc, m, 0);
}

/* The logger's TXN_LOGGED and UNLOGGED come on its connection; it says
 * which it is as soon as it connects (a HEARTBEAT of role LOGGER). */
static void logger_seen(struct stated *s, struct rs_ctlconn *cc)
{
    if (s->logger_conn == cc->id)
        return;
    s->logger_conn = cc->id;
    if (s->store.no_logger) {
        rs_store_set_logger(&s->store, true);
        rs_log("logger back from %s: states wait for TXN_LOGGED again", RS_A(cc->addr));
    }
}

void control_on_close(struct rs_ctlconn *cc, int err)
{
    struct stated *s = cc->ctx;
    uint64_t applied;

    if (cc->id != s->logger_conn)
        return;
    /* No recovery can need a buffered state any more: the primary's state
     * must not die with it (the updates of finished transactions). */
    s->logger_conn = 0;
    s->st.logger_lost++;
    rs_store_set_logger(&s->store, false);
    applied = s->st.applied;
    drain_all(s);
    rs_log("logger gone (%s): %" PRIu64 " buffered states applied, the rest apply as they arrive",
           err ? strerror(-err) : "closed", s->st.applied - applied);
}

/* One authenticated frame on the control port. */
void control_on_msg(struct rs_ctlconn *cc, const struct rs_ctl_msg *m)
{
    struct stated *s = cc->ctx;

    s->st.ctl_frames++;
    if ((m->type == RS_CTL_TXN_LOGGED || m->type == RS_CTL_UNLOGGED
         || (m->type == RS_CTL_HEARTBEAT && m->u.heartbeat.role == RS_CTL_ROLE_LOGGER))
        && rs_ctl_sender_role(m->sender) == RS_CTL_ROLE_LOGGER)
        logger_seen(s, cc);     /* not an operator's rs-ctl standing in for it */
    switch (m->type) {
    case RS_CTL_STATE_UPDATE: on_state_update(s, cc, m); break;
    case RS_CTL_TXN_LOGGED: on_txn_logged(s, cc, m); break;
    case RS_CTL_UNLOGGED: on_unlogged(s, cc, m); break;
    case RS_CTL_STATE_QUERY: on_state_query(s, cc, m); break;
    case RS_CTL_APPLY: on_apply(s, cc, m); break;
    case RS_CTL_CONN_MAP: on_conn_map(s, cc, m); break;
    case RS_CTL_FENCE: on_fence(s, cc, m); break;
    case RS_CTL_HEARTBEAT: rs_ctl_ack(cc, m, 0); break;
    case RS_CTL_ACK: break;     /* never answered */
    default:
        rs_log("ctl from=%s type=%s not handled here", RS_A(cc->addr), rs_ctl_type_str(m->type));
        rs_ctl_ack(cc, m, -EOPNOTSUPP);
    }
}

