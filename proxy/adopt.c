/* A proxy started where another ran (killed, or stopped to hand over)
 * adopts its predecessor's spliced connections.  The data path took over
 * the splice table as it stands (datapath.h, open): the tc program went on
 * translating while no proxy ran, so a spliced client saw nothing.  What
 * the daemon needs besides the translation is the record each client
 * entry carries (struct rs_flow_conn, written by px_pc_save); from it and
 * the entries the proxy rebuilds its connections and protects them again.
 *
 *   - a client entry ACTIVE with a record: a spliced connection, adopted;
 *   - one in HOLD or ACKONLY with a record: its recovery was under way
 *     (the moving socket died with the predecessor): adopted, and its
 *     recovery starts again from the plan; or, ACKONLY towards its own
 *     backend, it was spliced at connect and its request was going out
 *     through the predecessor's socket, whose end reached the backend (or
 *     strands there): ended with a RST (was_opening());
 *   - everything else (connections still relayed in user space, whose
 *     sockets died with the predecessor; a move's half-made entries): the
 *     entries are removed, and the stack answers those clients.
 *
 * A client whose connection was still being set up is probed (probe()),
 * so it learns of its end at once.
 *
 * A connection the predecessor had already seen end lingers and is reaped
 * as usual (idle, half-open).  Known limit: the first backend-failure of
 * an adopted connection that the predecessor had already been told about
 * reaches this proxy only through that connection's own signals (its
 * guard, its stall). */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

void px_pc_save(struct proxy *p, struct pconn *pc)
{
    struct rs_flow_key kc = px_key_c(pc);
    struct rs_flow_conn r = { .ts_base_us = pc->ts_base_us, .c = pc->c, .rtt_us = pc->rtt_us,
                              .backend_ip = pc->backend.ip, .local_ip = pc->local.ip,
                              .backend_port = pc->backend.port, .local_port = pc->local.port };
    int e;

    if (p->dp && (e = px_dp_set_conn(p->dp, &kc, &r)) != 0)
        rs_log("save id=%" PRIu64 " client=%s: %s (a successor would not adopt it)", pc->id, RS_A(pc->client),
               strerror(-e));
}

struct rs_addr px_addr_of(uint32_t ip_net, uint16_t port_net)
{
    return (struct rs_addr){ ntohl(ip_net), ntohs(port_net) };
}

int px_backend_at(struct proxy *p, struct rs_addr a)
{
    for (int i = 0; i < p->nbackends; i++)
        if (p->backends[i].addr.ip == a.ip && p->backends[i].addr.port == a.port)
            return i;
    return -1;
}

/* Rebuilds the connection of client entry 'kc' ('f': its entry).  Returns
 * it, or NULL (out of memory). */
static struct pconn *adopt_one(struct proxy *p, const struct rs_flow_key *kc, const struct px_flow_info *f)
{
    const struct rs_flow_conn *r = &f->cfg.conn;
    struct pconn *pc = px_pc_new(p, f->cfg.splice_id, px_addr_of(kc->saddr, kc->sport));

    if (!pc)
        return NULL;
    pc->phase = PC_SPLICED;
    pc->vip = px_addr_of(kc->daddr, kc->dport);
    pc->backend = (struct rs_addr){ r->backend_ip, r->backend_port };
    pc->local = (struct rs_addr){ r->local_ip, r->local_port };
    pc->c = r->c;
    pc->ts_base_us = r->ts_base_us;
    pc->rtt_us = r->rtt_us;
    pc->t_accept_us = pc->t_spliced_us = rs_now_us();
    if (f->cfg.splice_id >= RS_SYN_ID_BASE)
        pc->syn_port = pc->local.port;    /* spliced at the SYN: its port is the pool's */
    /* The client's ends only: a backend's may have been held back (a
     * failure signal, still queued for us as an event), not passed. */
    pc->seen = f->t.seen & (RS_FLOW_SEEN_FIN | RS_FLOW_SEEN_RST);
    px_pc_set_backend(p, pc, px_backend_at(p, pc->backend));
    return pc;
}

/* Whether entry 'k' ('f') belongs to adopted connection 'pc': its two
 * directions, and the entries of servers it was moved off (HOLD, fenced). */
static bool belongs(const struct pconn *pc, const struct rs_flow_key *k, const struct px_flow_info *f)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);

    return !memcmp(k, &kc, sizeof(*k)) || !memcmp(k, &kb, sizeof(*k))
        || (f->cfg.state == RS_FLOW_HOLD && !memcmp(&f->cfg.peer, &kc, sizeof(kc)));
}

/* A client connection the predecessor was still setting up died with its
 * sockets.  Where its host died too, nothing told the client, which may
 * be waiting in silence for a response: a segment outside its window
 * makes it answer with an ACK, which meets no socket here, and this
 * host's stack resets it. */
void px_probe(struct proxy *p, const struct rs_flow_key *kc)
{
    struct rs_addr client = px_addr_of(kc->saddr, kc->sport), vip = px_addr_of(kc->daddr, kc->dport);
    int e;

    if (p->rawfd >= 0 && (e = px_send_tcp(p->rawfd, vip, client, 0, 0, 0x10)) != 0)
        rs_log("probe client=%s: %s", RS_A(client), strerror(-e));
}

/* Probes 'kc' now and, in a pair, once more later (pair.c). */
static void probe(struct proxy *p, const struct rs_flow_key *kc)
{
    px_probe(p, kc);
    if (p->pair.peer.port) {
        struct rs_flow_key *n = realloc(p->probes, (p->nprobes + 1) * sizeof(*n));
        if (n) {
            p->probes = n;
            p->probes[p->nprobes++] = *kc;
        }
    }
}

/* Whether client entry 'fc' of 'pc' is a connection its predecessor
 * spliced at connect (conn.c, open_write) and was still opening: ACKONLY
 * towards its own backend, whose request went out through the
 * predecessor's own socket. */
static bool was_opening(const struct pconn *pc, const struct px_flow_info *fc)
{
    struct rs_flow_key kb = px_key_b(pc);

    return fc->cfg.state == RS_FLOW_ACKONLY && !memcmp(&fc->cfg.peer, &kb, sizeof(kb));
}

int px_adopt(struct proxy *p)
{
    struct rs_flow_key *keys = NULL, k, *prev = NULL;
    struct pconn **owner;
    size_t n = 0, cap = 0, adopted = 0, resumed = 0, dropped = 0, opening_lost = 0;
    uint64_t max_id = 0;

    if (!p->dp)
        return 0;
    /* The keys first: entries are removed below, which would upset the walk. */
    while (!px_dp_next_key(p->dp, prev, &k)) {
        if (n == cap) {
            struct rs_flow_key *nk = realloc(keys, (cap = cap ? cap * 2 : 256) * sizeof(*keys));
            if (!nk) {
                free(keys);
                return -ENOMEM;
            }
            keys = nk;
        }
        keys[n++] = k;
        prev = &keys[n - 1];
    }
    if (!n)
        return 0;
    if (!(owner = calloc(n, sizeof(*owner)))) {
        free(keys);
        return -ENOMEM;
    }
    /* 1. Client entries with a record: the connections. */
    for (size_t i = 0; i < n; i++) {
        struct px_flow_info f;
        struct pconn *pc;

        if (px_dp_get(p->dp, &keys[i], &f) || !f.cfg.conn.ts_base_us
            || ntohl(keys[i].daddr) != p->listen.ip || ntohs(keys[i].dport) != p->listen.port
            || (f.cfg.state != RS_FLOW_ACTIVE && f.cfg.state != RS_FLOW_HOLD && f.cfg.state != RS_FLOW_ACKONLY))
            continue;
        if (!(pc = adopt_one(p, &keys[i], &f)))
            break;
        owner[i] = pc;
        if (f.cfg.splice_id > max_id && f.cfg.splice_id < RS_SYN_ID_BASE)     /* the tc program's go on there */
            max_id = f.cfg.splice_id;
        adopted++;
    }
    /* 1b. Connections spliced at the SYN that the predecessor had not
     * taken on yet (it died between their SYN-ACK and its event): taken
     * on here from their SYNs; those not answered yet are left to their
     * SYN-ACK's event (or to the sweep of syn.c). */
    for (size_t i = 0; i < n; i++) {
        struct px_flow_info f;
        struct pconn *pc;

        if (owner[i] || px_dp_get(p->dp, &keys[i], &f) || f.cfg.conn.ts_base_us || !f.cfg.at_syn
            || f.cfg.splice_id < RS_SYN_ID_BASE || ntohs(keys[i].dport) != p->listen.port
            || !(pc = px_syn_take(p, &f.cfg.peer, f.cfg.splice_id, rs_mono_ns())))
            continue;
        owner[i] = pc;
        adopted++;
    }
    if (max_id > p->next_id)
        p->next_id = max_id;
    /* 2. Every other entry belongs to one of them, or goes. */
    for (size_t i = 0; i < n; i++) {
        struct px_flow_info f;
        struct pconn *pc;

        if (owner[i] || px_dp_get(p->dp, &keys[i], &f))
            continue;
        pc = f.cfg.splice_id ? px_pc_find(p, f.cfg.splice_id) : NULL;
        if (!pc && f.cfg.at_syn && f.cfg.splice_id >= RS_SYN_ID_BASE)
            continue;       /* a SYN spliced, not answered yet (1b) */
        if (pc && belongs(pc, &keys[i], &f)) {
            struct rs_flow_key kb = px_key_b(pc);

            if (memcmp(&keys[i], &kb, sizeof(kb)) && pc->nheld < RS_PROXY_HELD_MAX)
                pc->held[pc->nheld++] = keys[i];
            continue;
        }
        px_dp_remove(p->dp, &keys[i]);
        dropped++;
        if (ntohl(keys[i].daddr) == p->listen.ip && ntohs(keys[i].dport) == p->listen.port)
            probe(p, &keys[i]);
    }
    /* 3. Recoveries the predecessor left half-done start again. */
    for (size_t i = 0; i < n; i++) {
        struct rs_flow_key kc;
        struct px_flow_info f;
        struct pconn *pc = owner[i];

        if (!pc || (kc = px_key_c(pc), memcmp(&keys[i], &kc, sizeof(kc))) || px_dp_get(p->dp, &kc, &f))
            continue;
        rs_log("adopt id=%" PRIu64 " client=%s backend=%s state=%u held=%d", pc->id, RS_A(pc->client),
               RS_A(pc->backend), f.cfg.state, pc->nheld);
        if (was_opening(pc, &f)) {
            /* That socket's end went to the backend with the predecessor
             * (its kernel's FIN or RST), or it strands there (a proxy host
             * cut off): the backend's connection is lost.  Moving the
             * client to a standby would leave two backends serving, each
             * with part of the updates: the client gets a clean end. */
            opening_lost++;
            px_pc_close(p, pc, "opening-lost", true);
        } else if (f.cfg.state != RS_FLOW_ACTIVE) {
            resumed++;
            px_recover(p, pc, "adopted-midway");
        }
    }
    rs_log("adopted %zu spliced connections (%zu recoveries started again, %zu ended: caught opening), "
           "removed %zu other entries", adopted - opening_lost, resumed, opening_lost, dropped);
    p->st.adopted += adopted;
    free(owner);
    free(keys);
    return (int)adopted;
}
