/* rs-stated's link to the peer backend's rs-stated: the local
 * application's updates, relayed as STATE_UPDATE calls, and their ACKs back
 * to the application. */
#include "stated.h"

#include <errno.h>
#include <inttypes.h>
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

    if (!s->has_peer || s->peer_fenced) {
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
        m.u.state_update = (struct rs_ctl_state_update){ r->txn, r->sync, r->len, r->state };
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

static void on_peer_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    rs_log("%s-reply type=%s unexpected (ignored)", c->name, rs_ctl_type_str(m->type));
}

void peer_open(struct stated *s)
{
    rs_ctlconn_peer(&s->peer_link, &s->loop, "peer", s->peer, &s->key, &s->seq, SENDER(s->id, CH_PEER),
                    PEER_OUT_MAX, on_peer_msg, NULL, s);
}

/* The app's process is gone: the logger hears it at once (a few copies of
 * one datagram; a lost heartbeat-silence would tell it too, later). */
