/* A proxy pair: two rs-proxy instances on two hosts share the VIP.  The
 * active one serves it; the standby keeps a copy of the active's splice
 * table and takes the VIP over when the active dies (its process, or its
 * whole host), so spliced connections continue (docs/failure-handling.md,
 * "A proxy pair").
 *
 *   - The copy.  Every change the active makes to its table (datapath.h
 *     tells it: the daemon's halves of the entries, with each client
 *     entry's connection record) goes to the standby as a FLOW frame on an
 *     authenticated connection between the two (--pair), and the standby
 *     writes it into its own tc program's table, which carries nothing
 *     while it is standby.  A new connection starts with BEGIN and the
 *     whole table.  The data path's halves (what the program saw of each
 *     stream) are not copied: the standby's program learns them from the
 *     next segments, as after a re-splice.  Which backends are fenced
 *     goes with it (FENCE frames), so a backend fenced before a takeover
 *     stays fenced after it.
 *   - Liveness.  The active sends ALIVE every PAIR_ALIVE_NS.  The standby
 *     takes over when the active's connection closes (a killed process:
 *     its host's kernel closes it at once) or stays silent for
 *     --takeover-after (a host down, a hang).
 *   - The VIP.  Both hosts hold it on their loopback and their kernels do
 *     not answer ARP for it (arp_ignore); the active rs-proxy answers
 *     itself, on a packet socket, and announces itself with gratuitous
 *     ARP when it takes over, so every host sends the VIP's segments to it
 *     from then on.  Dying, it stops answering.
 *     Only the active one listens on the VIP and its control port.
 *   - Terms.  Each activation has an epoch (the clock in ms when it began).
 *     An active proxy that hears of a later epoch (a FLOW from the other,
 *     the other's gratuitous ARP, which carries it) was taken over while
 *     it lived (a hang longer than --takeover-after): it steps down,
 *     exiting with its tc program left in place for the stragglers whose
 *     ARP is stale.  So does one whose interface goes down (cut off).
 *
 * The takeover itself is proxy/adopt.c's: the standby rebuilds its
 * connections from the copied entries, as a proxy restarted on the same
 * host does from its predecessor's. */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy.h"

#define PAIR_ALIVE_NS ((uint64_t)50 * 1000000)     /* the active's ALIVE period */
#define PAIR_WATCH_NS ((uint64_t)20 * 1000000)     /* the standby's check period */
#define PAIR_ALONE_NS ((uint64_t)2000 * 1000000)   /* a standby that never heard an active says so */
#define PAIR_OUT_MAX (64u << 20)                   /* FLOW frames queued for a slow standby */
#define PAIR_SNDBUF (8 << 20)                      /* the kernel's share of them: ~30k frames */

/* Gratuitous ARPs after a takeover: at once, then these long after.  The
 * last one also probes again the clients of connections the predecessor
 * was setting up (adopt.c): after the clients' rate limit on answering
 * such segments (500 ms), in case the first answer went astray. */
static const uint64_t garp_after_ns[] = { 0, 100 * 1000000ull, 600 * 1000000ull };
#define N_GARPS (sizeof(garp_after_ns) / sizeof(garp_after_ns[0]))

/* An ARP frame; a proxy's own carry its mark and epoch where the frame's
 * padding goes, so that the other proxy knows whose term is later. */
struct arp_frame {
    struct ether_header eh;
    struct ether_arp ea;
    uint8_t mark[4];            /* PAIR_MARK */
    uint64_t epoch;             /* network order */
} __attribute__((packed));

static const uint8_t PAIR_MARK[4] = { 'R', 'S', 'P', 'X' };

static uint64_t now_ms(void) { return rs_now_us() / 1000; }

/* ---- ARP: the active answers for the VIP ------------------------------------------- */

static int arp_send(struct proxy *p, const uint8_t *to_mac, uint16_t op, const uint8_t *tha, uint32_t tpa)
{
    struct pair *pr = &p->pair;
    struct arp_frame f;
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP),
                              .sll_ifindex = pr->ifindex, .sll_halen = ETH_ALEN };
    uint32_t vip = htonl(p->listen.ip);

    memset(&f, 0, sizeof(f));
    memcpy(f.eh.ether_dhost, to_mac, ETH_ALEN);
    memcpy(f.eh.ether_shost, pr->mac, ETH_ALEN);
    f.eh.ether_type = htons(ETHERTYPE_ARP);
    f.ea.arp_hrd = htons(ARPHRD_ETHER);
    f.ea.arp_pro = htons(ETHERTYPE_IP);
    f.ea.arp_hln = ETH_ALEN;
    f.ea.arp_pln = 4;
    f.ea.arp_op = htons(op);
    memcpy(f.ea.arp_sha, pr->mac, ETH_ALEN);
    memcpy(f.ea.arp_spa, &vip, 4);
    memcpy(f.ea.arp_tha, tha, ETH_ALEN);
    memcpy(f.ea.arp_tpa, &tpa, 4);
    memcpy(f.mark, PAIR_MARK, sizeof(f.mark));
    f.epoch = htobe64(pr->epoch);
    memcpy(to.sll_addr, to_mac, ETH_ALEN);
    return sendto(pr->arpfd, &f, sizeof(f), 0, (struct sockaddr *)&to, sizeof(to)) < 0 ? -errno : 0;
}

static void step_down(struct proxy *p, const char *why);

/* ---- A stop longer than the standby waits --------------------------------------------- */

/* An active proxy stopped (a hang, SIGSTOP) longer than the standby waits
 * for its ALIVE has been taken over, or is as it goes (its connection
 * closes): it must do nothing more.  Not a timer, not an event, and not
 * the rest of what it was doing when it stopped: once, stopped between
 * opening its tc program to a FIN the guard held and sending that FIN
 * itself, an old active woke and sent it after the new one had seen the
 * connection closed, and the backend answered the client's ACK with a
 * RST.  So a handler of SIGCONT, which runs before the interrupted code
 * goes on, checks the time since our last ALIVE, and so does the loop
 * whenever it wakes (a stop without SIGCONT: starved of CPU).
 *
 * The mark: when our last ALIVE went (monotonic ns) while the standby is
 * in sync (it takes over only then), else 0.  Atomic: the handler reads
 * it. */
static _Atomic uint64_t alive_mark;
static uint64_t stop_limit_ns;      /* --takeover-after */
#define STOPPED_TOO_LONG "we were stopped longer than --takeover-after"
#define STEPPING_DOWN(why) "pair: stepping down (" why "): exiting, the tc program stays for segments sent here still"

static void set_mark(struct pair *pr)
{
    atomic_store(&alive_mark, pr->active && pr->in_sync ? pr->alive_ns : 0);
}

static bool stopped_too_long(void)
{
    uint64_t mark = atomic_load(&alive_mark);

    return mark && rs_mono_ns() - mark > stop_limit_ns;
}

static void on_sigcont(int sig)
{
    (void)sig;
    if (stopped_too_long()) {
        rs_log_from_signal(STEPPING_DOWN(STOPPED_TOO_LONG));
        _exit(3);
    }
}

/* A gratuitous ARP for the VIP. */
static void announce(struct proxy *p)
{
    static const uint8_t bcast[ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff }, zero[ETH_ALEN] = { 0 };
    int e = arp_send(p, bcast, ARPOP_REQUEST, zero, htonl(p->listen.ip));

    if (e)
        rs_log("pair: gratuitous ARP: %s", strerror(-e));
    else
        p->pair.garps++;
}

#define ARP_BATCH 64

/* Whether frame 'f' ('n' bytes) announces the VIP from another host. */
static bool announces_vip(const struct proxy *p, const struct arp_frame *f, ssize_t n)
{
    uint32_t spa;

    memcpy(&spa, f->ea.arp_spa, 4);
    return spa == htonl(p->listen.ip) && (size_t)n >= offsetof(struct arp_frame, mark);
}

static void arp_readable(struct rs_io *io, uint32_t events)
{
    struct proxy *p = io->ctx;
    struct pair *pr = &p->pair;
    struct arp_frame f[ARP_BATCH];
    ssize_t len[ARP_BATCH];
    struct sockaddr_ll from;
    socklen_t fl;
    uint32_t vip = htonl(p->listen.ip), spa, tpa;
    int n = 0;

    (void)events;
    for (;;) {
        /* A batch first: a later term's announcement among the frames that
         * waited (a proxy that hung) must be seen before any request in
         * front of it is answered. */
        for (n = 0; n < ARP_BATCH; n++) {
            fl = sizeof(from);
            len[n] = recvfrom(pr->arpfd, &f[n], sizeof(f[n]), 0, (struct sockaddr *)&from, &fl);
            if (len[n] < 0)
                break;
            if ((size_t)len[n] < offsetof(struct arp_frame, mark) || from.sll_pkttype == PACKET_OUTGOING
                || f[n].ea.arp_hln != ETH_ALEN || f[n].ea.arp_pln != 4 || f[n].ea.arp_pro != htons(ETHERTYPE_IP)
                || !memcmp(f[n].ea.arp_sha, pr->mac, ETH_ALEN))
                n--;    /* not for us: dropped */
        }
        if (!pr->active)
            return;     /* a standby only drains them */
        for (int i = 0; i < n; i++) {
            /* The other proxy announces the VIP: in a later term it took
             * over; in an earlier one it woke up late (a hang), and its
             * announcement must not stand. */
            const uint8_t *m = f[i].ea.arp_sha;
            uint64_t theirs = (size_t)len[i] >= sizeof(f[i]) && !memcmp(f[i].mark, PAIR_MARK, sizeof(f[i].mark))
                                  ? be64toh(f[i].epoch) : 0;
            char why[96];

            if (!announces_vip(p, &f[i], len[i]))
                continue;
            if (theirs > pr->epoch) {
                snprintf(why, sizeof(why), "%02x:%02x:%02x:%02x:%02x:%02x announced the VIP in a later term",
                         m[0], m[1], m[2], m[3], m[4], m[5]);
                step_down(p, why);
            }
            rs_log("pair: %02x:%02x:%02x:%02x:%02x:%02x announced the VIP in an earlier term (%" PRIu64
                   "): announcing it again", m[0], m[1], m[2], m[3], m[4], m[5], theirs);
            announce(p);
        }
        for (int i = 0; i < n; i++) {
            memcpy(&spa, f[i].ea.arp_spa, 4);
            memcpy(&tpa, f[i].ea.arp_tpa, 4);
            if (tpa == vip && spa != vip && f[i].ea.arp_op == htons(ARPOP_REQUEST))
                arp_send(p, f[i].ea.arp_sha, ARPOP_REPLY, f[i].ea.arp_sha, spa);
        }
        if (n < ARP_BATCH)
            return;
    }
}

static void garp(struct rs_timer *t)
{
    struct proxy *p = t->ctx;
    struct pair *pr = &p->pair;

    /* What came meanwhile first: a proxy that slept through a takeover
     * learns of it (and exits) before it announces anything. */
    arp_readable(&pr->arpio, EPOLLIN);
    announce(p);
    if (++pr->garp_next < N_GARPS) {
        rs_timer_after(&p->loop, t, garp_after_ns[pr->garp_next] - garp_after_ns[pr->garp_next - 1]);
    } else {
        for (size_t i = 0; i < p->nprobes; i++)
            px_probe(p, &p->probes[i]);
        free(p->probes);
        p->probes = NULL;
        p->nprobes = 0;
    }
}

static int arp_open(struct proxy *p)
{
    struct pair *pr = &p->pair;
    struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP) };
    struct ifreq ifr;
    int e;

    pr->ifindex = (int)if_nametoindex(p->ifname);
    if (!pr->ifindex)
        return -errno;
    pr->arpfd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (pr->arpfd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", p->ifname);
    sll.sll_ifindex = pr->ifindex;
    if (bind(pr->arpfd, (struct sockaddr *)&sll, sizeof(sll)) || ioctl(pr->arpfd, SIOCGIFHWADDR, &ifr))
        return -errno;
    memcpy(pr->mac, ifr.ifr_hwaddr.sa_data, ETH_ALEN);
    if ((e = rs_io_start(&p->loop, &pr->arpio, pr->arpfd, EPOLLIN, arp_readable, p)) < 0)
        return e;
    return 0;
}

/* ---- The active: its table to the standby ------------------------------------------ */

static void send_flow(struct proxy *p, uint8_t op, const struct rs_flow_key *k, const struct rs_flow *f)
{
    struct pair *pr = &p->pair;
    struct rs_ctl_msg m = { .type = RS_CTL_FLOW };

    if (!pr->out.up)
        return;     /* the copy is made afresh when it comes up */
    m.u.flow = (struct rs_ctl_flow){ .op = op, .epoch = pr->epoch };
    if (k) {
        m.u.flow.saddr = ntohl(k->saddr);
        m.u.flow.daddr = ntohl(k->daddr);
        m.u.flow.sport = ntohs(k->sport);
        m.u.flow.dport = ntohs(k->dport);
    }
    if (f) {
        m.u.flow.len = sizeof(*f);
        m.u.flow.data = (const uint8_t *)f;
    }
    if (rs_ctl_send(&pr->out, &m) == 0) {
        pr->sent++;
        return;
    }
    /* Its queue is full: the copy lost a change.  A new connection starts
     * it afresh (BEGIN and the whole table), from the loop, not from here. */
    if (pr->in_sync) {
        rs_log("pair: the standby's queue is full: its copy starts afresh");
        pr->in_sync = false;
        set_mark(pr);
        rs_timer_after(&p->loop, &pr->resync_timer, 0);
    }
}

static void out_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m);
static void out_state(struct rs_ctlconn *c, int err);

static void connect_standby(struct proxy *p)
{
    rs_ctlconn_peer(&p->pair.out, &p->loop, "pair", p->pair.peer, &p->key, &p->ctl_seq, PX_SENDER_PAIR,
                    PAIR_OUT_MAX, out_msg, out_state, p);
}

static void resync(struct rs_timer *t)
{
    struct proxy *p = t->ctx;

    rs_ctlconn_close(&p->pair.out);
    connect_standby(p);
}

/* datapath.h's change listener while active. */
static void table_changed(void *arg, const struct rs_flow_key *k, bool gone)
{
    struct proxy *p = arg;
    struct px_flow_info f;

    if (gone)
        send_flow(p, RS_CTL_FLOW_DEL, k, NULL);
    else if (px_dp_get(p->dp, k, &f) == 0)
        send_flow(p, RS_CTL_FLOW_SET, k, &f.cfg);
}

static void out_state(struct rs_ctlconn *c, int err)
{
    struct proxy *p = c->ctx;
    struct rs_flow_key k, *prev = NULL;
    struct px_flow_info f;
    size_t n = 0;

    if (err) {
        if (p->pair.in_sync || !p->pair.told_unreachable)
            rs_log("pair: standby %s unreachable: %s (the VIP is unprotected; retrying)", RS_A(c->addr),
                   strerror(-err));
        p->pair.in_sync = false;
        p->pair.told_unreachable = true;
        set_mark(&p->pair);
        return;
    }
    /* Every change must be in the kernel's hands before the segments it
     * describes flow: what the socket does not take waits in this
     * process and dies with it (a burst of new connections filled the
     * default 16 KB and the standby never learned the last splices).
     * Past wmem_max: the proxy runs as root. */
    if (setsockopt(c->io.fd, SOL_SOCKET, SO_SNDBUFFORCE, &(int){ PAIR_SNDBUF }, sizeof(int)))
        rs_log("pair: send buffer: %s (a burst of changes may wait in this process)", strerror(errno));
    p->pair.in_sync = true;
    set_mark(&p->pair);
    send_flow(p, RS_CTL_FLOW_BEGIN, NULL, NULL);
    while (!px_dp_next_key(p->dp, prev, &k)) {
        if (!px_dp_get(p->dp, &k, &f)) {
            send_flow(p, RS_CTL_FLOW_SET, &k, &f.cfg);
            n++;
        }
        prev = &k;
    }
    for (int b = 0; b < p->nbackends; b++)
        px_pair_fence(p, b);
    rs_log("pair: standby %s in sync (%zu entries sent)", RS_A(c->addr), n);
}

void px_pair_fence(struct proxy *p, int b)
{
    struct rs_ctl_msg m = { .type = RS_CTL_FENCE };

    if (!p->pair.active || !p->pair.out.up)
        return;
    m.u.fence = (struct rs_ctl_fence){ p->backends[b].id, p->backends[b].addr.ip, p->backends[b].fenced };
    if (rs_ctl_send(&p->pair.out, &m) == 0)
        p->pair.sent++;
}

/* Frames from the standby: only an ACK refusing us (it knows a later term). */
static void out_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    if (m->type == RS_CTL_ACK && m->u.ack.echo_type == RS_CTL_FLOW && m->u.ack.status == -ESTALE)
        step_down(c->ctx, "the other proxy is active in a later term");
}

void px_pair_woken(struct proxy *p)
{
    if (stopped_too_long())
        step_down(p, STOPPED_TOO_LONG);
}

static void alive(struct rs_timer *t)
{
    struct proxy *p = t->ctx;
    struct pair *pr = &p->pair;

    /* (A stop since the last one was found as the loop woke: px_pair_woken.) */
    pr->alive_ns = rs_mono_ns();
    set_mark(pr);
    if (!px_link_up(p)) {
        /* Cut off (its host's interfaces down, a cable): the standby takes
         * over, and nothing done from here could be right. */
        step_down(p, "our interface is down");
        return;
    }
    send_flow(p, RS_CTL_FLOW_ALIVE, NULL, NULL);
    rs_timer_after(&p->loop, t, PAIR_ALIVE_NS);
}

static void become_active(struct proxy *p, const char *why)
{
    struct pair *pr = &p->pair;
    uint64_t was = pr->epoch;
    int e;

    pr->active = true;
    pr->epoch = now_ms() > was ? now_ms() : was + 1;
    /* Our frames to the logger and the rs-stateds use the senders the
     * other proxy used: their numbers must go on above its. */
    if (p->ctl_seq < rs_now_us())
        p->ctl_seq = rs_now_us();
    rs_timer_stop(&p->loop, &pr->timer);
    rs_log("pair: active (%s), epoch %" PRIu64 ", last heard of the other %" PRIu64 " ms ago", why, pr->epoch,
           pr->last_heard_ns ? (rs_mono_ns() - pr->last_heard_ns) / 1000000 : 0);
    /* The VIP first, so that the answers to adopt.c's probes come here.
     * Until px_serve listens, new connections' SYNs are dropped (a lease
     * that has just run out: struct rs_vip), not refused by the host:
     * their clients send them again. */
    if ((e = px_dp_set_vip(p->dp, p->listen.ip, p->listen.port, rs_mono_ns(), false)) != 0)
        rs_log("pair: new connections cannot be held back until we listen: %s", strerror(-e));
    pr->garp_next = 0;
    rs_timer_init(&pr->garp_timer, garp, p);
    garp(&pr->garp_timer);
    if ((e = px_serve(p)) != 0) {
        /* Another process holds the VIP's port here: nothing can be served. */
        step_down(p, "cannot listen on the VIP");
        return;
    }
    p->dp->changed = table_changed;
    p->dp->changed_arg = p;
    rs_timer_init(&pr->resync_timer, resync, p);
    connect_standby(p);
    rs_timer_init(&pr->timer, alive, p);
    rs_timer_after(&p->loop, &pr->timer, PAIR_ALIVE_NS);
}

/* ---- The standby: the copy, and the watch -------------------------------------------- */

static void forget_table(struct proxy *p)
{
    struct rs_flow_key k;

    while (!px_dp_next_key(p->dp, NULL, &k))
        if (p->dp->ops->remove(p->dp, &k, NULL))
            break;
}

static int apply_flow(struct proxy *p, const struct rs_ctl_flow *fl)
{
    struct rs_flow_key k = { htonl(fl->saddr), htonl(fl->daddr), htons(fl->sport), htons(fl->dport) };
    struct rs_flow f;

    if (fl->op == RS_CTL_FLOW_DEL)
        return p->dp->ops->remove(p->dp, &k, NULL);
    if (fl->len != sizeof(f))
        return -EBADMSG;    /* another version of rs-proxy */
    memcpy(&f, fl->data, sizeof(f));
    if (f.state > RS_FLOW_ACKONLY)
        return -EBADMSG;
    return px_dp_put(p->dp, &k, &f);
}

static void pair_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct proxy *p = c->ctx;
    struct pair *pr = &p->pair;
    const struct rs_ctl_flow *fl = &m->u.flow;
    int e;

    if (m->type == RS_CTL_FENCE && !pr->active && c->id == pr->active_conn) {
        /* The active proxy fenced (or readmitted) a backend: so will we. */
        int b = px_backend_index(p, m->u.fence.backend_id);
        if (b >= 0 && p->backends[b].fenced != m->u.fence.fenced)
            rs_log("pair: backend_id=%u %s by the active proxy", m->u.fence.backend_id,
                   m->u.fence.fenced ? "fenced" : "readmitted");
        if (b >= 0 && m->u.fence.fenced) {
            p->backends[b].fenced = true;
            px_roles(p);
        } else if (b >= 0 && p->backends[b].fenced) {
            px_backend_rejoin(p, b);
        }
        pr->last_heard_ns = rs_mono_ns();
        return;
    }
    if (m->type != RS_CTL_FLOW) {
        rs_ctl_ack(c, m, -EOPNOTSUPP);
        return;
    }
    if (pr->active) {
        /* The other believes it is active too: the later term wins. */
        if (fl->epoch > pr->epoch) {
            step_down(p, "the other proxy became active in a later term");
        } else {
            if (fl->op == RS_CTL_FLOW_BEGIN)
                rs_log("pair: %s claims the VIP with an earlier term (%" PRIu64 " < %" PRIu64 "): refused",
                       RS_A(c->addr), fl->epoch, pr->epoch);
            rs_ctl_ack(c, m, -ESTALE);
        }
        return;
    }
    if (fl->op == RS_CTL_FLOW_BEGIN) {
        if (fl->epoch < pr->epoch) {
            rs_ctl_ack(c, m, -ESTALE);
            return;
        }
        forget_table(p);
        for (int b = 0; b < p->nbackends; b++)
            p->backends[b].fenced = false;      /* the active's FENCEs follow */
        px_roles(p);
        pr->epoch = fl->epoch;
        pr->active_conn = c->id;
        rs_log("pair: standby of %s (epoch %" PRIu64 ")", RS_A(c->addr), fl->epoch);
    } else if (c->id != pr->active_conn) {
        return;     /* an earlier active's late frame */
    } else if (fl->op != RS_CTL_FLOW_ALIVE && (e = apply_flow(p, fl)) != 0) {
        if (!pr->apply_errors++)
            rs_log("pair: cannot copy an entry: %s (a takeover would lose it)", strerror(-e));
    } else if (fl->op != RS_CTL_FLOW_ALIVE) {
        pr->applied++;
    }
    pr->last_heard_ns = rs_mono_ns();
}

static void pair_closed(struct rs_ctlconn *c, int err)
{
    struct proxy *p = c->ctx;
    struct pair *pr = &p->pair;

    (void)err;
    if (pr->active || c->id != pr->active_conn)
        return;
    pr->active_conn = 0;
    become_active(p, "the active proxy's connection closed");
}

/* The standby's check.  It takes over only from an active it has heard
 * (a standby that never did, its --pair wrong or its key, must not evict a
 * healthy active it cannot see), only while its own interface is up (cut
 * off, it would only lose), and not in the round after a stall of its
 * own (the ALIVEs that waited meanwhile are read first). */
static void watch(struct rs_timer *t)
{
    struct proxy *p = t->ctx;
    struct pair *pr = &p->pair;
    uint64_t now = rs_mono_ns(), last = pr->watch_ns;

    pr->watch_ns = now;
    rs_timer_after(&p->loop, t, PAIR_WATCH_NS);
    if (last && now - last > pr->takeover_ns)
        return;
    if (pr->active_conn && now - pr->last_heard_ns > pr->takeover_ns) {
        if (!px_link_up(p)) {
            if (!pr->told_cut_off)
                rs_log("pair: the active proxy is silent, but our interface is down: not taking over");
            pr->told_cut_off = true;
            return;
        }
        rs_timer_stop(&p->loop, t);
        become_active(p, "the active proxy is silent");
        return;
    }
    pr->told_cut_off = false;
    if (!pr->epoch && now - pr->started_ns > PAIR_ALONE_NS && !pr->told_alone) {
        rs_log("pair: no active proxy heard yet (check --pair and the key on both): standing by");
        pr->told_alone = true;
    }
}

/* ---- Both ------------------------------------------------------------------------------ */

/* Exits at once: nothing a proxy does after the other took over (a
 * timer's RST, a recovery, an ARP reply) could be right. */
static void step_down(struct proxy *p, const char *why)
{
    rs_log(STEPPING_DOWN("%s"), why);
    px_exit(p, 3);
}

int px_pair_start(struct proxy *p)
{
    struct pair *pr = &p->pair;
    int e;

    pr->arpfd = -1;
    pr->started_ns = rs_mono_ns();
    stop_limit_ns = pr->takeover_ns;
    if (sigaction(SIGCONT, &(struct sigaction){ .sa_handler = on_sigcont, .sa_flags = SA_RESTART }, NULL))
        rs_log("pair: SIGCONT: %s (a proxy woken from a long stop may act before it steps down)", strerror(errno));
    if ((e = arp_open(p)) != 0) {
        rs_log("pair: packet socket on %s: %s", p->ifname, strerror(-e));
        return e;
    }
    if ((e = rs_ctlserver_open(&pr->srv, &p->loop, pr->listen, &p->key, &p->ctl_seq, PX_SENDER_REPLY, pair_msg, p))
        != 0) {
        rs_log("pair: cannot listen on %s: %s", RS_A(pr->listen), strerror(-e));
        return e;
    }
    pr->srv.on_close = pair_closed;
    if (!pr->standby) {
        become_active(p, "started active");
        return 0;
    }
    rs_log("pair: standby, waiting for the active proxy (takeover after %" PRIu64 " ms of silence)",
           pr->takeover_ns / 1000000);
    rs_timer_init(&pr->timer, watch, p);
    rs_timer_after(&p->loop, &pr->timer, PAIR_WATCH_NS);
    return 0;
}
