/* Splicing at the client's SYN (--splice-at syn): the tc program makes a
 * new connection's splice itself, at the client's SYN (struct rs_syn_cfg),
 * so no process stands between a client and the backend while they
 * connect.  This side of it:
 *
 *   - the ports: the free ones wait in the tc program's queue; a port comes
 *     back when its connection is freed, at once where the backend holds
 *     no TIME_WAIT on it (the client closed first, or either side reset)
 *     or once a RST ended that TIME_WAIT, else after SYN_TIME_WAIT_NS;
 *   - the backend new connections go to: the serving primary, whatever
 *     px_roles makes it (px_syn_sync); a SYN sent to a backend fenced
 *     before it answered loses its entries, and its retransmission is
 *     spliced to the next;
 *   - taking a connection on when its backend's SYN-ACK is reported
 *     (RS_FLOW_OPENED, px_syn_take; adopt.c too, for a predecessor's): from
 *     then on it is a spliced connection like any other, whose record
 *     (struct rs_flow_conn) is made from the two SYNs the tc program kept
 *     (rs_splice_syn_conn), as though the proxy had accepted it;
 *   - a port the backend still holds an old connection on (RS_FLOW_STALE:
 *     it answered the SYN with a bare ACK): that connection reset, the
 *     client's SYN sent again (resend_syn);
 *   - a backend that does not answer a SYN (it resets it: nothing
 *     listens; or the client sends its SYN again: the request path's
 *     failed connect) fails (px_backend_failed) and the SYNs it left
 *     unanswered go to the next backend at once (replay_syn);
 *   - swept every --syn-sweep: the entries of SYNs never answered
 *     (forget_unanswered), which also takes on those answered whose event
 *     was lost; and closed --syn-sweep after their SYN-ACK, the
 *     connections whose client never acknowledged it (px_syn_half_open).
 *
 * The backend learns whose connection it is from the option the tc
 * program adds to the SYN (RS_IDENT; the state library reads it with
 * TCP_SAVED_SYN). */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/pkt_cls.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"
#include "splice.h"

#define SYN_TIME_WAIT_NS (61ull * 1000000000ull)   /* Linux's TIME_WAIT, and a second */
#define SYN_AGAIN_MAX 4096     /* SYNs kept to send to the next backend; beyond, the clients' own */

/* The backend new connections go to: the first serving primary. */
static int serving(const struct proxy *p)
{
    for (int i = 0; i < p->nbackends; i++)
        if (p->backends[i].role == ROLE_PRIMARY && !p->backends[i].fenced)
            return i;
    return -1;
}

static int write_cfg(struct proxy *p, const uint16_t *ports, size_t n)
{
    int b = serving(p);
    struct rs_syn_cfg cfg = { .guard = p->logger.port != 0, .local_addr = htonl(p->listen.ip) };

    if (b >= 0) {
        /* A pair's active proxy copies each connection to its standby
         * when it takes it on: no waiting for the next wake-up there. */
        cfg.on = 1 | (p->pair.peer.port ? RS_SYN_EVENTS_WAKE | RS_SYN_HOLD_SYNACK : 0);
        cfg.backend_addr = htonl(p->backends[b].addr.ip);
        cfg.backend_port = htons(p->backends[b].addr.port);
    }
    p->syn.backend = b;
    return px_dp_syn_setup(p->dp, &cfg, ports, n);
}

int px_syn_start(struct proxy *p)
{
    size_t n = (size_t)(p->syn.port_hi - p->syn.port_lo) + 1;
    uint16_t *ports = malloc(n * sizeof(*ports));
    int e;

    if (!ports)
        return -ENOMEM;
    /* From a place of the range of its own: the ports a predecessor handed
     * out last may still be in the backends' TIME_WAITs. */
    for (size_t i = 0, first = (size_t)(rs_mono_ns() / 1000 % n); i < n; i++)
        ports[i] = (uint16_t)(p->syn.port_lo + (first + i) % n);
    e = write_cfg(p, ports, n);
    free(ports);
    if (!e)
        rs_log("splice-at syn: ports %u-%u, backend %s", p->syn.port_lo, p->syn.port_hi,
               p->syn.backend >= 0 ? RS_A(p->backends[p->syn.backend].addr) : "none");
    return e;
}

/* Sends client 'kc''s SYN (as '*si' describes it) through the tc program
 * as though it came again, and on to the backend the program sends it to
 * (made a splice, or one already: the program names the client), so that
 * the client need not wait a second or more for its own retransmission. */
static int replay_syn(struct proxy *p, const struct rs_flow_key *kc, const struct rs_syn_info *si)
{
    uint8_t in[14 + 20 + RS_TCP_HDR_MAX] = { 0 }, out[sizeof(in) + 64], *tcp = in + 34;
    uint32_t hlen = rs_syn_build(si, tcp), n = sizeof(out);
    struct rs_flow_key k;
    int v;

    if (p->rawfd < 0)
        return -EBADF;
    in[12] = 0x08;                          /* Ethernet, IPv4; addresses unused */
    in[14] = 0x45;
    rs_splice_store16(in + 16, (uint16_t)(20 + hlen));
    in[22] = 64;
    in[23] = IPPROTO_TCP;
    memcpy(in + 26, &kc->saddr, 4);
    memcpy(in + 30, &kc->daddr, 4);
    memcpy(tcp, &kc->sport, 2);
    memcpy(tcp + 2, &kc->dport, 2);
    if ((v = px_dp_replay(p->dp, in, 34 + hlen, out, &n)) < 0)
        return v;
    if (v != TC_ACT_REDIRECT || n < 34 + RS_TCP_HDR_MIN || n < 34 + (hlen = (uint32_t)(out[46] >> 4) * 4))
        return -EAGAIN;                     /* not spliced (no port free): the client's own SYN will be */
    memcpy(&k.saddr, out + 26, 4);
    memcpy(&k.daddr, out + 30, 4);
    memcpy(&k.sport, out + 34, 2);
    memcpy(&k.dport, out + 36, 2);
    return px_send_hdr(p->rawfd, px_addr_of(k.saddr, k.sport), px_addr_of(k.daddr, k.dport), out + 34, hlen);
}

/* Keeps client 'kc''s SYN to send to the next backend (px_syn_sync). */
static void keep_syn(struct proxy *p, const struct rs_flow_key *kc, const struct rs_syn_info *si)
{
    if (p->syn.nagain == p->syn.capagain) {
        size_t cap = p->syn.capagain ? 2 * p->syn.capagain : 64;
        struct px_syn_again *a = cap <= SYN_AGAIN_MAX ? realloc(p->syn.again, cap * sizeof(*a)) : NULL;

        if (!a)
            return;     /* its client's own retransmission will do */
        p->syn.again = a;
        p->syn.capagain = cap;
    }
    p->syn.again[p->syn.nagain++] = (struct px_syn_again){ *kc, *si };
}

/* Removes the entries of SYNs spliced that nobody took on (no SYN-ACK
 * came): those to a backend other than the serving one ('idle_ns' 0: it
 * failed; their SYNs go to the next one, px_syn_sync), or those whose
 * client has been silent for 'idle_ns' (it gave up). */
static void forget_unanswered(struct proxy *p, uint64_t idle_ns)
{
    struct rs_flow_key k, *prev = NULL, *keys = NULL;
    size_t n = 0, cap = 0;
    uint64_t now = rs_mono_ns();

    while (!px_dp_next_key(p->dp, prev, &k)) {
        if (n == cap) {
            struct rs_flow_key *nk = realloc(keys, (cap = cap ? 2 * cap : 64) * sizeof(*keys));
            if (!nk)
                break;
            keys = nk;
        }
        keys[n++] = k;
        prev = &keys[n - 1];
    }
    for (size_t i = 0; i < n; i++) {
        struct px_flow_info f, fc;
        struct rs_addr from = px_addr_of(keys[i].saddr, keys[i].sport), to = px_addr_of(keys[i].daddr, keys[i].dport);
        int b = p->syn.backend;
        bool have_c;

        /* A backend's entry: to one of the pool's ports (the VIP may be
         * the proxy's address too: its port tells the clients' apart). */
        if (to.ip != p->listen.ip || to.port < p->syn.port_lo || to.port > p->syn.port_hi
            || (!idle_ns && b >= 0 && !memcmp(&from, &p->backends[b].addr, sizeof(from)))
            || px_dp_learn(p->dp, &keys[i]) || px_dp_get(p->dp, &keys[i], &f) || !f.cfg.at_syn
            || f.cfg.splice_id < RS_SYN_ID_BASE || px_pc_find(p, f.cfg.splice_id))
            continue;
        if (f.t.syn.flags & RS_SYN_SEEN) {
            /* Answered, but its event was lost (the ring was full): taken
             * on now, as a successor takes a predecessor's (adopt.c). */
            if (px_syn_take(p, &keys[i], f.cfg.splice_id, now))
                p->st.syn_late++;
            continue;
        }
        have_c = !px_dp_learn(p->dp, &f.cfg.peer) && !px_dp_get(p->dp, &f.cfg.peer, &fc);
        if (idle_ns && (!have_c || fc.t.last_ns + idle_ns > now))
            continue;
        if (!idle_ns && have_c && (fc.t.syn.flags & RS_SYN_SEEN))
            keep_syn(p, &f.cfg.peer, &fc.t.syn);
        rs_log("syn-forget client=%s backend=%s port=%u: entries removed",
               RS_A(px_addr_of(f.cfg.peer.saddr, f.cfg.peer.sport)), RS_A(from), to.port);
        px_dp_remove(p->dp, &keys[i]);
        if (!px_dp_learn(p->dp, &f.cfg.peer))
            px_dp_remove(p->dp, &f.cfg.peer);
        px_dp_syn_port_put(p->dp, to.port);
    }
    free(keys);
}

/* True when every backend is fenced: none will answer a SYN again until
 * an operator readmits one. */
static bool none_left(const struct proxy *p)
{
    for (int i = 0; i < p->nbackends; i++)
        if (!p->backends[i].fenced)
            return false;
    return true;
}

/* Ends the SYNs kept for the next backend when none is left: each client
 * gets a RST now (acknowledging its SYN, as SYN-SENT requires), counted as
 * a new connection's at accept with no backend, rather than after its own
 * retransmission a second or more later. */
static void refuse_kept(struct proxy *p)
{
    for (size_t i = 0; i < p->syn.nagain; i++) {
        const struct px_syn_again *a = &p->syn.again[i];
        struct rs_addr client = px_addr_of(a->kc.saddr, a->kc.sport);
        int e = p->rawfd < 0 ? -EBADF
                             : px_send_tcp(p->rawfd, px_addr_of(a->kc.daddr, a->kc.dport), client, 0,
                                           a->syn.isn + 1, 0x14 /* RST, ACK */);

        p->st.closed_early++;
        if (!e)
            p->st.resets_sent++;
        rs_log("close id=0 client=%s backend=- phase=syn reason=no-backend rst=1%s%s", RS_A(client),
               e ? ": " : "", e ? strerror(-e) : "");
    }
    p->syn.nagain = 0;
}

void px_syn_sync(struct proxy *p)
{
    int e;

    /* A pair's standby splices nothing until px_serve's px_syn_start,
     * which numbers its splices above the copied table's: from the base
     * the other proxy numbered from, a new splice could carry an adopted
     * connection's id, be taken for it, and have its SYN-ACK held for
     * good (TestProxyPair.test_new_connections_across_a_kill_of_the_active). */
    if (!p->syn.on || !p->dp || serving(p) == p->syn.backend || px_standing_by(p))
        return;
    if ((e = write_cfg(p, NULL, 0)) != 0) {
        rs_log("splice-at syn: cannot change the backend: %s", strerror(-e));
        return;
    }
    rs_log("splice-at syn: backend %s", p->syn.backend >= 0 ? RS_A(p->backends[p->syn.backend].addr) : "none");
    forget_unanswered(p, 0);
    if (p->syn.backend < 0 && none_left(p))
        refuse_kept(p);
    if (p->syn.backend < 0 || !p->syn.nagain)
        return;                 /* kept until a backend serves */
    for (size_t i = 0; i < p->syn.nagain; i++) {
        struct px_syn_again *a = &p->syn.again[i];

        e = replay_syn(p, &a->kc, &a->syn);
        rs_log("syn-redispatch client=%s backend=%s%s%s", RS_A(px_addr_of(a->kc.saddr, a->kc.sport)),
               RS_A(p->backends[p->syn.backend].addr), e ? ": " : "", e ? strerror(-e) : "");
    }
    p->syn.nagain = 0;
}

/* The backend's SYN-ACK of 'pc' (entry 'kb', 'fb'), held by the tc program
 * until now (RS_AT_SYN_HOLD: a pair's standby has the connection by the
 * time its client can use it): its retransmissions pass from now on, and
 * the one kept goes to the client at once. */
static void release_synack(struct proxy *p, struct pconn *pc, const struct rs_flow_key *kb,
                           const struct px_flow_info *fb)
{
    uint8_t hdr[RS_TCP_HDR_MAX];
    uint32_t len = fb->t.fin_hdr_len;
    int e = px_dp_release_synack(p->dp, kb);

    if (!e && (p->rawfd < 0 || len < RS_TCP_HDR_MIN || len > sizeof(hdr)))
        e = -ENODATA;
    if (!e) {
        memcpy(hdr, fb->t.fin_hdr, len);
        if ((hdr[13] & (RS_TCP_F_SYN | RS_TCP_F_ACK | RS_TCP_F_FIN | RS_TCP_F_RST)) != (RS_TCP_F_SYN | RS_TCP_F_ACK)
            || rs_splice_tcp(&fb->cfg.dir, hdr, len))
            e = -EBADMSG;
        else
            e = px_send_hdr(p->rawfd, pc->vip, pc->client, hdr, len);
    }
    if (e)
        rs_log("syn-ack id=%" PRIu64 " client=%s: not sent (%s): the backend's own retransmission will do", pc->id,
               RS_A(pc->client), strerror(-e));
}

struct pconn *px_syn_take(struct proxy *p, const struct rs_flow_key *kb, uint64_t id, uint64_t ns)
{
    struct px_flow_info fb, fc;
    struct rs_flow_key kc;
    struct pconn *pc;
    uint64_t now_mono = rs_mono_ns();
    bool ours;

    if ((pc = px_pc_find(p, id)) != NULL)
        return pc;                          /* a SYN-ACK again */
    if (px_dp_learn(p->dp, kb) || px_dp_get(p->dp, kb, &fb) || fb.cfg.splice_id != id
        || !(fb.t.syn.flags & RS_SYN_SEEN))
        return NULL;                        /* gone already (forget_unanswered), or not answered yet */
    kc = fb.cfg.peer;
    ours = !px_dp_learn(p->dp, &kc) && !px_dp_get(p->dp, &kc, &fc) && fc.cfg.splice_id == id;
    if (!ours || !(fc.t.syn.flags & RS_SYN_SEEN) || !(pc = px_pc_new(p, id, px_addr_of(kc.saddr, kc.sport)))) {
        rs_log("syn-spliced id=%" PRIu64 ": cannot take it on (no client entry, or no memory): removed", id);
        px_dp_remove(p->dp, kb);
        if (ours)           /* another connection's, else: left alone */
            px_dp_remove(p->dp, &kc);
        px_dp_syn_port_put(p->dp, ntohs(kb->dport));    /* nothing holds it now */
        return NULL;
    }
    pc->phase = PC_SPLICED;
    pc->vip = px_addr_of(kc.daddr, kc.dport);
    pc->backend = px_addr_of(kb->saddr, kb->sport);
    pc->local = px_addr_of(kb->daddr, kb->dport);
    pc->syn_port = pc->local.port;
    rs_splice_syn_conn(&fc.t.syn, &fb.t.syn, pc->vip.ip, pc->vip.port, pc->client.ip, pc->client.port, &pc->c);
    /* The backend's TSval was read when its SYN-ACK passed ('ns'). */
    pc->ts_base_us = rs_now_us() - (now_mono > ns ? (now_mono - ns) / 1000 : 0);
    pc->rtt_us = 1000;      /* not measured: a LAN's order, rounded up (the resend's patience) */
    pc->t_accept_us = pc->t_spliced_us = rs_now_us();
    pc->seen = fc.t.seen & (RS_FLOW_SEEN_FIN | RS_FLOW_SEEN_RST);
    px_pc_set_backend(p, pc, px_backend_at(p, pc->backend));
    px_pc_save(p, pc);
    p->st.accepted++;
    p->st.spliced++;
    p->st.syn_spliced++;
    rs_log("syn-spliced id=%" PRIu64 " client=%s backend=%s port=%u", pc->id, RS_A(pc->client),
           RS_A(pc->backend), pc->local.port);
    if (fb.cfg.at_syn & RS_AT_SYN_HOLD)
        release_synack(p, pc, kb, &fb);
    /* Taken on late (its SYN-ACK's event lost, or a predecessor's): the
     * backend may have ended its side meanwhile, its FIN or RST held by
     * the guard and reported once, to nobody. */
    if (fb.cfg.guard && (fb.t.seen & (RS_FLOW_SEEN_FIN | RS_FLOW_SEEN_RST))) {
        px_backend_end(p, pc, fb.t.seen & RS_FLOW_SEEN_RST);
        return px_pc_find(p, id);   /* (NULL: its recovery could not start, and ended it) */
    }
    pc->seen |= (fb.t.seen & (RS_FLOW_SEEN_FIN | RS_FLOW_SEEN_RST)) << 4;       /* (it passed) */
    px_pc_check_end(p, pc);
    return pc;
}

void px_syn_take_late(struct proxy *p, const struct rs_flow_event *ev)
{
    struct rs_flow_key kb = ev->key;
    struct px_flow_info f;

    if (!p->syn.on || px_dp_learn(p->dp, &ev->key) || px_dp_get(p->dp, &ev->key, &f) || !f.cfg.at_syn
        || f.cfg.splice_id != ev->splice_id)
        return;
    if (px_backend_at(p, px_addr_of(kb.saddr, kb.sport)) < 0)
        kb = f.cfg.peer;            /* the client's entry told */
    if (px_syn_take(p, &kb, ev->splice_id, rs_mono_ns())) {
        p->st.syn_late++;
        rs_log("syn-late id=%" PRIu64 ": taken on at a later event (its SYN-ACK's was lost)", ev->splice_id);
    }
}

/* Sends the client's SYN of the splice whose backend entry is 'kb' to its
 * backend again (replay_syn). */
static int resend_syn(struct proxy *p, const struct rs_flow_key *kb)
{
    struct px_flow_info fb, fc;
    int e;

    if ((e = px_dp_learn(p->dp, kb)) || (e = px_dp_get(p->dp, kb, &fb)) || (e = px_dp_learn(p->dp, &fb.cfg.peer))
        || (e = px_dp_get(p->dp, &fb.cfg.peer, &fc)))
        return e;
    if (!(fc.t.syn.flags & RS_SYN_SEEN))
        return -ENOENT;
    return replay_syn(p, &fb.cfg.peer, &fc.t.syn);
}

/* An RS_FLOW_REFUSED or RS_FLOW_UNANSWERED event: the backend of a splice
 * made at the SYN did not answer it, which is what a failed connect is on
 * the request path (connect_failed in conn.c): a failure of the backend,
 * where recovery is on.  A SYN sent again sooner than --connect-timeout
 * after the previous one (replay_syn's, then the client's) says nothing,
 * nor does one a backend left unanswered while it answered others: busy. */
static void not_answered(struct proxy *p, const struct rs_flow_event *ev)
{
    bool refused = ev->flags & RS_FLOW_REFUSED;
    struct px_flow_info f;
    struct rs_flow_key kb = ev->key, kc;
    int b;

    if ((!refused && ev->seq < p->connect_ns / 1000) || !p->logger.port || px_dp_learn(p->dp, &ev->key)
        || px_dp_get(p->dp, &ev->key, &f) || f.cfg.splice_id != ev->splice_id)
        return;     /* (or the entry was made again since: for the next backend) */
    kc = refused ? f.cfg.peer : ev->key;
    if (!refused)
        kb = f.cfg.peer;
    if ((b = px_backend_at(p, px_addr_of(kb.saddr, kb.sport))) < 0 || p->backends[b].fenced)
        return;
    /* (The client's previous SYN was sent 'seq' us before.) */
    if (!refused && px_backend_busy(p, b, ev->ns - (uint64_t)ev->seq * 1000)) {
        rs_log("syn-unanswered id=%" PRIu64 " client=%s backend=%s again_after_ms=%u: it answers other SYNs "
               "(busy, not failed)", ev->splice_id, RS_A(px_addr_of(kc.saddr, kc.sport)), RS_A(p->backends[b].addr),
               ev->seq / 1000);
        return;
    }
    if (refused)
        rs_log("syn-refused id=%" PRIu64 " client=%s backend=%s", ev->splice_id, RS_A(px_addr_of(kc.saddr, kc.sport)),
               RS_A(p->backends[b].addr));
    else
        rs_log("syn-unanswered id=%" PRIu64 " client=%s backend=%s again_after_ms=%u", ev->splice_id,
               RS_A(px_addr_of(kc.saddr, kc.sport)), RS_A(p->backends[b].addr), ev->seq / 1000);
    px_backend_failed(p, p->backends[b].id, refused ? "connect-refused" : "connect-failed");
}

void px_syn_reused_again(struct proxy *p, const struct rs_flow_key *kc, const struct rs_flow_track *last, uint64_t id)
{
    int e;

    if (last->reused != RS_REUSED_DROPPED)
        return;
    p->st.syn_reused++;
    e = last->syn.flags & RS_SYN_SEEN ? replay_syn(p, kc, &last->syn) : -ENOENT;
    rs_log("syn-reused id=%" PRIu64 " client=%s: its ended connection's entry removed, the SYN sent again%s%s", id,
           RS_A(px_addr_of(kc->saddr, kc->sport)), e ? ": " : "", e ? strerror(-e) : "");
}

/* An RS_FLOW_REUSED event: client 'ev->key' sent a SYN on the 4-tuple of
 * its ended connection, whose entry lingers (the client's TCP reused a
 * port in TIME_WAIT: tcp_tw_reuse does after a second, the linger is
 * longer).  The tc program dropped it and kept what it announced; the old
 * entry goes (that connection's backend half lingers on: a late segment of
 * the old backend still finds it) and the SYN is sent again, spliced like
 * any new one, as the client's SYN would have been.  (Where the linger
 * ended first, drop_entries sent it.)  Should the old connection not have
 * ended here (recovering), the client's own retransmission goes to the
 * listener, as before. */
static void reused(struct proxy *p, const struct rs_flow_event *ev)
{
    struct pconn *pc = px_pc_find(p, ev->splice_id);
    struct px_flow_info f;
    struct rs_flow_track last;

    if (px_dp_learn(p->dp, &ev->key) || px_dp_get(p->dp, &ev->key, &f) || f.cfg.splice_id != ev->splice_id)
        return;                     /* removed since, the SYN sent */
    if (pc && (pc->phase != PC_CLOSING || pc->rec)) {
        pc->reuse_declined = true;  /* (nor is the SYN sent when its entry goes) */
        rs_log("syn-reused id=%" PRIu64 " client=%s: the old connection has not ended here; its next SYN goes "
               "to the listener", ev->splice_id, RS_A(px_addr_of(ev->key.saddr, ev->key.sport)));
        return;
    }
    if (pc)
        pc->client_entry_freed = true;
    if (!px_dp_remove_read(p->dp, &ev->key, &last))
        px_syn_reused_again(p, &ev->key, &last, ev->splice_id);
}

void px_syn_event(struct proxy *p, const struct rs_flow_event *ev)
{
    struct rs_addr backend = px_addr_of(ev->key.saddr, ev->key.sport), local = px_addr_of(ev->key.daddr, ev->key.dport);
    int e = -EBADF;

    if (ev->flags & RS_FLOW_OPENED) {
        int b = px_backend_at(p, backend);

        if (b >= 0 && ev->ns > p->backends[b].answered_ns)
            p->backends[b].answered_ns = ev->ns;
        px_syn_take(p, &ev->key, ev->splice_id, ev->ns);
        return;
    }
    if (ev->flags & (RS_FLOW_REFUSED | RS_FLOW_UNANSWERED)) {
        not_answered(p, ev);
        return;
    }
    if (ev->flags & RS_FLOW_REUSED) {
        reused(p, ev);
        return;
    }
    /* The backend still holds an old connection on this port (a TIME_WAIT
     * left by another proxy, which handed out the same ports): a RST at
     * its ACK ends it there (RFC 1337's hazard, which Linux accepts by
     * default), and the client's next SYN makes the new one. */
    p->st.syn_stale++;
    if (p->rawfd >= 0 && (e = px_send_rst(p->rawfd, local, backend, ev->seq)) == 0)
        e = resend_syn(p, &ev->key);
    rs_log("syn-stale id=%" PRIu64 " backend=%s port=%u: an old connection answered the SYN; reset, SYN sent again%s%s",
           ev->splice_id, RS_A(backend), local.port, e ? ": " : "", e ? strerror(-e) : "");
}

bool px_syn_backend_closed_first(const struct px_flow_info *fc, const struct px_flow_info *fb)
{
    if (!fc->t.pos.fin_seen)
        return true;            /* the client's FIN has not even passed */
    /* The FINs may have crossed: the backend had the client's only if its
     * own FIN acknowledges it (the guard kept that FIN's header). */
    if (fb->t.fin_hdr_len < RS_TCP_HDR_MIN)
        return true;
    return !rs_seq_ge(rs_splice_ack(&fb->cfg.dir, rs_splice_load32(fb->t.fin_hdr + 8)), fc->t.pos.seq_next);
}

void px_syn_port_free(struct proxy *p, const struct pconn *pc)
{
    bool rst = pc->seen & (RS_FLOW_SEEN_RST | RS_FLOW_SEEN_RST << 4);
    bool client_first = (pc->seen & RS_FLOW_SEEN_FIN) && (pc->seen & RS_FLOW_SEEN_FIN << 4) && !pc->backend_fin_first;

    if (!pc->syn_port || !p->syn.on)
        return;
    /* The backend closed first: its TIME_WAIT on the port ends at a RST
     * exactly at its next expected byte (RFC 1337's hazard, which Linux
     * accepts by default), the client's FIN acknowledged in the last ACK
     * it sent; the linger (--linger) has let old segments die out, as
     * tcp_tw_reuse's second does.  Should the RST be lost, the port's
     * next SYN meets the TIME_WAIT's ACK: RS_FLOW_STALE. */
    if (!rst && !client_first && pc->backend_acked && p->rawfd >= 0
        && px_send_rst(p->rawfd, pc->local, pc->backend, pc->backend_ack) == 0) {
        p->st.syn_time_waits_reset++;
        rst = true;
    }
    if (rst || client_first) {
        px_dp_syn_port_put(p->dp, pc->syn_port);
        return;
    }
    if (p->syn.nwait == p->syn.capwait) {
        size_t cap = p->syn.capwait ? 2 * p->syn.capwait : 256;
        struct px_syn_wait *w = realloc(p->syn.wait, cap * sizeof(*w));

        if (!w)
            return;     /* the port is lost until a restart: better than a clash */
        p->syn.wait = w;
        p->syn.capwait = cap;
    }
    p->syn.wait[p->syn.nwait++] = (struct px_syn_wait){ pc->syn_port, rs_mono_ns() + SYN_TIME_WAIT_NS };
}

bool px_syn_half_open(struct proxy *p, struct pconn *pc, const struct px_flow_info *fc)
{
    if (pc->syn_confirmed || fc->t.ack_ns) {
        pc->syn_confirmed = true;
        return false;
    }
    if (pc->rec || pc->t_accept_us + p->syn.sweep_ns / 1000 > rs_now_us())
        return false;
    p->st.syn_half_open++;
    /* The backend's half of it goes too (it would answer the port's next
     * SYN as its own), so the port is free at once. */
    if (p->rawfd >= 0 && !px_send_rst(p->rawfd, pc->local, pc->backend, fc->t.syn.isn + 1))
        pc->seen |= RS_FLOW_SEEN_RST;
    px_pc_close(p, pc, "half-open", false);
    return true;
}

void px_syn_tick(struct proxy *p)
{
    uint64_t now = rs_mono_ns();
    size_t i = 0;

    if (!p->syn.on)
        return;
    if (now > p->syn.swept_ns + p->syn.sweep_ns) {
        forget_unanswered(p, p->syn.sweep_ns);
        p->syn.swept_ns = now;
    }
    while (i < p->syn.nwait && p->syn.wait[i].due_ns <= now)
        px_dp_syn_port_put(p->dp, p->syn.wait[i++].port);
    if (i) {
        memmove(p->syn.wait, p->syn.wait + i, (p->syn.nwait - i) * sizeof(*p->syn.wait));
        p->syn.nwait -= i;
    }
}
