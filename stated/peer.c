/* rs-stated's link to its successor's rs-stated (stated.h, struct peer):
 * the local application's updates, relayed as STATE_UPDATE calls, and
 * their ACKs back to the application; and the states this backend
 * receives, forwarded down the chain. */
#include "stated.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>


/* ---- Relaying the app's updates ---------------------------------------- */

static void relay_pop_done(struct stated *s)
{
    while (s->rel_len && s->relays[s->rel_head].done) {
        s->rel_head = (s->rel_head + 1) % RELAY_MAX;
        s->rel_len--;
    }
}

static void relay_done(struct stated *s, struct relay *rl, int status)
{
    struct rs_xfer_rec r = { .type = RS_XFER_DONE, .id = rl->lib_id, .status = status };

    rl->done = true;
    if (status == 0) {
        s->st.relay_acked++;
    } else {
        s->st.relay_failed++;
        rs_log("relay %s failed: %s", RS_TXN(rl->txn), strerror(-status));
    }
    if (rl->app_gen == s->lib_gen && s->lib_fd >= 0)
        lib_send(s, &r);
}

/* The peer's ACK of a relayed update, or its time-out, or the link's end:
 * the app hears it (a synchronous update is held until then). */
static void on_relay_ack(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct relay *rl = call->ctx;

    relay_done(rl->s, rl, err ? err : reply->u.ack.status);
    relay_pop_done(rl->s);
}

void relay_update(struct stated *s, const struct rs_xfer_rec *r)
{
    struct rs_xfer_rec done = { .type = RS_XFER_DONE, .id = r->id };
    struct rs_ctl_msg m = { .type = RS_CTL_STATE_UPDATE };
    struct relay *rl;
    int err;

    /* The app has this connection's state up to here: what a snapshot for
     * a later successor says (COVERED). */
    rs_store_cover(&s->store, r->txn, rs_mono_ns());
    if (s->successor < 0) {
        /* No standby (or it was declared failed): the app answers at once,
         * unreplicated, instead of waiting for a peer that will not come. */
        done.status = s->has_peer ? -EHOSTDOWN : -ENOTCONN;
        if (s->peer_fenced && s->st.relays_degraded++ % 1000 == 0)
            rs_log("relay %s: the peer is fenced, degraded (updates not replicated)", RS_TXN(r->txn));
        lib_send(s, &done);
        return;
    }
    if (s->rel_len == RELAY_MAX) {
        err = -ENOBUFS;
    } else {
        rl = &s->relays[(s->rel_head + s->rel_len) % RELAY_MAX];
        *rl = (struct relay){ .s = s, .app_gen = s->lib_gen, .lib_id = r->id, .txn = r->txn };
        m.u.state_update = (struct rs_ctl_state_update){ r->txn, r->sync, r->len, r->state, RS_CTL_STATE_TXN };
        err = rs_ctl_call(&s->peer_link, &m, RS_CTL_ACK, &rl->call, s->relay_timeout_ns, on_relay_ack, rl);
        if (!err) {
            s->rel_len++;
            s->st.relayed++;
            rs_log("relay %s %uB%s seq=%" PRIu64, RS_TXN(r->txn), r->len, r->sync ? " sync" : "", m.seq);
            return;
        }
    }
    s->st.relay_failed++;
    rs_log("relay %s refused: %s", RS_TXN(r->txn), strerror(-err));
    done.status = err;
    lib_send(s, &done);
}

/* Ends every relay in flight with 'status' (the peer was fenced). */
void relay_fail_all(struct stated *s, int status)
{
    for (uint32_t i = 0; i < s->rel_len; i++) {
        struct relay *rl = &s->relays[(s->rel_head + i) % RELAY_MAX];
        if (!rl->done) {
            rs_ctl_call_cancel(&rl->call);
            relay_done(s, rl, status);
        }
    }
    relay_pop_done(s);
}

/* Frames from the successor that no call took: the ACKs of forwards. */
static void on_peer_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct stated *s = c->ctx;

    if (m->type == RS_CTL_ACK && m->u.ack.echo_type == RS_CTL_STATE_UPDATE) {
        if (m->u.ack.status && s->st.forward_failed++ % 1000 == 0)
            rs_log("forward refused by the successor: %s", strerror(-m->u.ack.status));
        return;
    }
    rs_log("%s-reply type=%s unexpected (ignored)", c->name, rs_ctl_type_str(m->type));
}

int peer_add(const char *v, void *dst)
{
    struct stated *s = dst;
    struct peer *pr = &s->peers[s->n_peers];

    if (s->n_peers == PEERS_MAX || rs_id_addr_parse(v, (1u << 20) - 1, &pr->id, &pr->addr))
        return -EINVAL;
    pr->fenced = false;
    pr->rank = pr->id;
    s->n_peers++;
    s->has_peer = true;
    return 0;
}

bool peer_fence(struct stated *s, uint32_t id, uint32_t ip, bool fenced)
{
    bool ours = false;

    for (int i = 0; i < s->n_peers; i++)
        if (s->peers[i].id ? s->peers[i].id == id : ip && s->peers[i].addr.ip == ip) {
            s->peers[i].fenced = fenced;
            ours = true;
        }
    return ours;
}

/* Asks the app for its whole state, for a new successor. */
static void snapshot_begin(struct stated *s)
{
    struct rs_xfer_rec r = { .type = RS_XFER_EXPORT };
    int e;

    if (s->snap_pending)
        return;         /* its answer goes to the successor of that moment */
    if (s->lib_fd < 0) {
        if (s->st.app_connects)
            rs_log("snapshot for backend=%u: no app connected", s->peers[s->successor].id);
        return;
    }
    if ((e = lib_request(s, &r, NULL)) < 0) {
        rs_log("snapshot for backend=%u: %s", s->peers[s->successor].id, strerror(-e));
        return;
    }
    s->snap_pending = true;
    rs_log("snapshot for backend=%u: asking the app", s->peers[s->successor].id);
}

/* Queues one message of a snapshot; counts those the link refused. */
static void snapshot_put(struct stated *s, const struct rs_ctl_state_update *u, unsigned *refused)
{
    struct rs_ctl_msg m = { .type = RS_CTL_STATE_UPDATE, .u.state_update = *u };

    if (rs_ctl_send(&s->peer_link, &m) < 0)
        (*refused)++;
}

void snapshot_send(struct stated *s, const uint8_t *blob, uint32_t len, int err)
{
    unsigned covered = 0, buffered = 0, refused = 0;

    s->snap_pending = false;
    if (err || s->successor < 0) {
        rs_log("snapshot: %s", err ? strerror(-err) : "no successor any more");
        drain_all(s);
        return;
    }
    /* How far the app's state goes per connection, then the state itself,
     * then what is buffered beyond it: the successor applies in that order. */
    for (uint32_t b = 0; b < RS_STORE_BUCKETS; b++)
        for (struct rs_store_client *c = s->store.buckets[b]; c; c = c->hnext)
            if (c->has_ts) {
                snapshot_put(s, &(struct rs_ctl_state_update){
                    .kind = RS_CTL_STATE_COVERED, .txn = rs_txn_id_make(c->ip, c->port, c->ts) }, &refused);
                covered++;
            }
    snapshot_put(s, &(struct rs_ctl_state_update){ .kind = RS_CTL_STATE_SNAPSHOT, .len = len, .data = blob },
                 &refused);
    for (uint32_t b = 0; b < RS_STORE_BUCKETS; b++)
        for (struct rs_store_client *c = s->store.buckets[b]; c; c = c->hnext)
            for (struct rs_store_state *st = c->head; st; st = st->next) {
                snapshot_put(s, &(struct rs_ctl_state_update){ .txn = rs_txn_id_make(c->ip, c->port, st->num),
                                                               .len = st->len, .data = st->data }, &refused);
                buffered++;
            }
    s->st.snapshots_sent++;
    rs_log("snapshot to backend=%u: %uB covered=%u buffered=%u%s", s->peers[s->successor].id, len, covered,
           buffered, refused ? " (some refused: the link's queue is full; it is no standby)" : "");
    drain_all(s);
}

int snapshot_take(struct stated *s, const uint8_t *blob, uint32_t len)
{
    struct rs_xfer_rec r = { .type = RS_XFER_APPLY, .state = blob, .len = len };
    int e = 0;

    s->st.snapshots_received++;
    if (s->lib_fd >= 0 && (e = lib_request(s, &r, NULL)) == 0) {
        free(s->snap_in);
        s->snap_in = NULL;
        if (s->joining)
            rs_log("snapshot applied (%uB): a standby again", len);
        s->joining = false;
        drain_all(s);
        return 0;
    }
    /* Kept for the app, which gets it first when it connects. */
    uint8_t *copy = malloc(len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, blob, len);
    free(s->snap_in);
    s->snap_in = copy;
    s->snap_in_len = len;
    rs_log("snapshot kept (%uB): %s", len, e ? strerror(-e) : "no app connected");
    return 0;
}

void peer_rejoin(struct stated *s, uint32_t id)
{
    uint32_t last = s->rank;

    for (int i = 0; i < s->n_peers; i++)
        if (s->peers[i].rank > last)
            last = s->peers[i].rank;
    if (id == s->id) {
        s->rank = last + 1;
        s->joining = s->n_peers > 0;
        rs_log("readmitted: rank %u (the end of the chain)%s", s->rank,
               s->joining ? ", a standby once a snapshot came" : "");
        return;
    }
    for (int i = 0; i < s->n_peers; i++)
        if (s->peers[i].id == id) {
            s->peers[i].rank = last + 1;
            rs_log("backend=%u rejoins at rank %u", id, last + 1);
        }
}

void peer_choose(struct stated *s)
{
    int next = -1;

    for (int i = 0; i < s->n_peers; i++) {
        const struct peer *pr = &s->peers[i];

        if (pr->fenced || (pr->id && pr->rank < s->rank))
            continue;
        if (next < 0 || (pr->id && pr->rank < s->peers[next].rank))
            next = i;
    }
    s->peer_fenced = s->n_peers && next < 0;
    if (next == s->successor && (next < 0 || s->peer_link.loop))
        return;
    if (s->successor >= 0) {
        /* Updates waiting for the old successor: answered now, unreplicated. */
        relay_fail_all(s, -EHOSTDOWN);
        rs_ctlconn_close(&s->peer_link);
        memset(&s->peer_link, 0, sizeof(s->peer_link));
    }
    s->successor = next;
    if (next < 0) {
        if (s->n_peers)
            rs_log("no successor: the app's updates are not replicated (degraded)");
        return;
    }
    s->peer = s->peers[next].addr;
    rs_log("successor backend=%u at %s", s->peers[next].id, RS_A(s->peer));
    rs_ctlconn_peer(&s->peer_link, &s->loop, "peer", s->peer, &s->key, &s->seq, SENDER(s->id, CH_PEER),
                    PEER_OUT_MAX, on_peer_msg, NULL, s);
    /* A new successor (a readmitted backend, or the next one after a
     * fenced one) gets what this one holds. */
    snapshot_begin(s);
}

void peer_forward(struct stated *s, const struct rs_ctl_msg *m, uint32_t from)
{
    struct rs_ctl_msg f = *m;

    /* Only down a chain of ids (each successor after its predecessor):
     * a peer without one may be where the state came from.  While a
     * snapshot is made the state stays buffered: it follows the snapshot. */
    if (s->successor < 0 || !s->peers[s->successor].id || s->peers[s->successor].id == from || s->snap_pending)
        return;
    if (rs_ctl_send(&s->peer_link, &f) == 0)
        s->st.forwarded++;
    else if (s->st.forward_failed++ % 1000 == 0)
        rs_log("forward %s: the successor's queue is full", RS_TXN(m->u.state_update.txn));
}

/* The app's process is gone: the logger hears it at once (a few copies of
 * one datagram; a lost heartbeat-silence would tell it too, later). */
