/* rs-auxlog's tap (--tap IFACE): the web backends reach the mail store at
 * its own address, routed through this host, whose kernel forwards their
 * conversations; rs-logger's capture program (logger/bpf/capture.bpf.c),
 * attached at IFACE's ingress, copies every segment to or from the store's
 * IMAP and SMTP ports into a ring that this file reads.  Each TCP
 * connection is reassembled both ways (core/reasm.h) and its bytes go
 * through the relay's own scanning and recording (replay.c) as a
 * conversation without sockets: the record is the same, and a re-run,
 * which still comes through the relay, is answered from it.  Nothing
 * waits for this process on the way: the relay's two wake-ups per round
 * trip are gone (docs/performance.md, session 39).
 *
 * Fencing.  The relay held every unit until its conversation's marker was
 * judged; here the bytes have passed when they are read.  When a backend
 * re-runs a transaction (rerun_claim), the tapped conversations of that
 * transaction from other backends are fenced first: the program drops
 * their backend-to-store segments from then on (rs_cap_verdict), one RCU
 * grace period later every segment that passed before is in the ring, and
 * the ring is read, so the record holds all the mail store saw before the
 * re-run is answered from it.  And from the moment a re-run connects to
 * the relay (tap_judging) until no re-run is remembered, no conversation's
 * backend gets a unit to the store before its marker is judged: the
 * program marks what the backend sends until then, one iptables rule
 * (installed here) queues it to this process (NFQUEUE), which reads the
 * ring, so that the bytes are scanned, and answers: a conversation a
 * fenced backend opens after the re-run began (it hung, and resumed) is
 * dropped at its marker.  One wake-up per conversation while judging;
 * none at all while nothing was re-run (every marker that passed
 * unjudged is read, as the judging starts, before the re-run's own). */
#include "auxlog.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>

#include "capture.h"
#include "capture.skel.h"
#include "list.h"
#include "reasm.h"
#include "tcfilter.h"

#define TAP_TC_HANDLE 1
#define TAP_TC_PRIO 2
#define TAP_BUCKETS 1024u
#define TAP_STREAM_CAP (16u << 10)      /* a direction's reassembly ring to start with */
#define TAP_STREAM_MAX (32u << 20)      /* ... and at most (AUX_UNIT_MAX) */
#define TAP_BUDGET (256ull << 20)       /* all of them together */
#define TAP_IDLE_NS (600ull * 1000000000ull)
#define TAP_QUEUE_LEN 4096u             /* segments awaiting a verdict; more are dropped (and sent again) */
#define TAP_VERDICT_WAIT_US 20000       /* for a queued segment's copy to show in the ring */
#define TAP_CHAIN "rs_auxlog"
/* The ring is read this often, and at every decision that needs it (a
 * verdict, a re-run): the program wakes nobody.  A wake-up per record cost
 * each forwarded segment ~18 us here (irq_work, then an IPI: 19 against
 * 1 us per pass through the host, p50, a pcap on it). */
#define TAP_POLL_NS (10ull * 1000000ull)

/* One TCP connection between a backend and the store, seen on the wire. */
struct tap_flow {
    struct tap_flow *hnext;
    uint32_t bip;                       /* the backend, host order */
    uint16_t bport, sport;              /* its port, the store's */
    struct rs_reasm c2s, s2c;
    bool c_fin, s_fin, fenced, judged;
    uint32_t c_fin_seq, s_fin_seq;      /* the FIN's own seq */
    struct aux_conv *conv;              /* NULL once it ended (or was never recorded) */
    uint64_t last_ns;
};

struct tap {
    struct lg_capture_bpf *skel;
    struct ring_buffer *ring;
    struct rs_tcfilter filter;
    struct rs_io io, qio;
    struct rs_timer poll;
    struct nfq_handle *nfq;
    struct nfq_q_handle *qh;
    bool rule_installed;
    struct rs_reasm_budget budget;
    struct tap_flow *flows[TAP_BUCKETS];
    uint32_t store;                     /* the store's address, host order */
    bool membarrier_ok, judging;
};

/* ---- libbpf's messages ---------------------------------------------------- */

/* Loading, libbpf's warnings say why it failed (a verifier log); attaching,
 * its notes on a filter not there yet are noise. */
static bool libbpf_verbose;

static int on_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    return level == LIBBPF_DEBUG || !libbpf_verbose ? 0 : vfprintf(stderr, fmt, ap);
}

/* ---- Flows ---------------------------------------------------------------- */

static unsigned flow_hash(uint32_t bip, uint16_t bport, uint16_t sport)
{
    uint64_t k = (uint64_t)bip << 32 | (uint32_t)bport << 16 | sport;

    return (unsigned)((k * 0x9e3779b97f4a7c15ull) >> 40) % TAP_BUCKETS;
}

static struct tap_flow **flow_slot(struct tap *t, uint32_t bip, uint16_t bport, uint16_t sport)
{
    struct tap_flow **pp = &t->flows[flow_hash(bip, bport, sport)];

    while (*pp && !((*pp)->bip == bip && (*pp)->bport == bport && (*pp)->sport == sport))
        pp = &(*pp)->hnext;
    return pp;
}

/* Ends flow 'f' (and its conversation, logging 'why'). */
static void flow_end(struct auxlog *a, struct tap_flow *f, const char *why)
{
    struct tap_flow **pp = flow_slot(a->tap, f->bip, f->bport, f->sport);

    if (f->conv)
        conv_close(a, f->conv, why);   /* clears f->conv (tap_conv_closed) */
    if (*pp == f)
        *pp = f->hnext;
    rs_reasm_free(&f->c2s);
    rs_reasm_free(&f->s2c);
    free(f);
}

void tap_conv_closed(struct aux_conv *c)
{
    if (c->tap)
        c->tap->conv = NULL;
    c->tap = NULL;
}

/* A new conversation for flow 'f' (its backend's SYN), as conv_accept
 * makes one, without sockets. */
static struct aux_conv *tap_conv_new(struct auxlog *a, struct tap_flow *f)
{
    struct aux_conv *c = calloc(1, sizeof(*c));
    enum rs_aux_proto proto = RS_AUX_IMAP;

    for (unsigned i = 0; i < a->n_ls; i++)
        if (a->ls[i].up.port == f->sport)
            proto = a->ls[i].proto;
    if (!c)
        return NULL;
    c->id = ++a->next_id;
    c->a = a;
    c->proto = proto;
    c->cfd = c->ufd = -1;
    c->tap = f;
    c->peer = (struct rs_addr){ .ip = f->bip, .port = f->bport };
    c->up = (struct rs_addr){ .ip = a->tap->store, .port = f->sport };
    c->start_ns = rs_mono_ns();
    rs_aux_split_init(&c->cs, c->proto, RS_AUX_CLIENT, AUX_LINE_MAX, AUX_UNIT_MAX);
    rs_aux_split_init(&c->ss, c->proto, RS_AUX_SERVER, AUX_LINE_MAX, AUX_UNIT_MAX);
    c->rec = record_new(c->proto, c->peer.ip);
    c->nc = 1;
    RS_LIST_PUSH(a->convs, c);
    a->n_convs++;
    a->conns++;
    a->tapped++;
    if (!c->rec || record_push(a, c->rec, NULL, 0, NULL) < 0) {
        conv_close(a, c, "error:record:no memory");
        return NULL;
    }
    return c;
}

/* ---- Fencing -------------------------------------------------------------- */

static struct rs_capture_fence_key fence_key(const struct tap *t, uint32_t bip, uint16_t bport, uint16_t sport)
{
    return (struct rs_capture_fence_key){
        .saddr = htonl(bip), .daddr = htonl(t->store), .sport = htons(bport), .dport = htons(sport),
    };
}

/* Tells the program verdict 'v' on the conversation of backend 'bip':'bport'
 * with the store's port 'sport' (RS_CAPTURE_JUDGED, RS_CAPTURE_FENCED). */
static void verdict_set(struct auxlog *a, uint32_t bip, uint16_t bport, uint16_t sport, uint8_t v)
{
    struct rs_capture_fence_key k = fence_key(a->tap, bip, bport, sport);

    if (bpf_map_update_elem(bpf_map__fd(a->tap->skel->maps.rs_cap_verdict), &k, &v, BPF_ANY))
        rs_log("tap: a verdict on %s: %s", RS_A(((struct rs_addr){ .ip = bip, .port = bport })), strerror(errno));
}

static void fence(struct auxlog *a, struct tap_flow *f)
{
    if (f->fenced)
        return;
    verdict_set(a, f->bip, f->bport, f->sport, RS_CAPTURE_FENCED);
    f->fenced = f->judged = true;
    a->fenced++;
}

/* 'f''s marker is judged (or it has none, or it is no longer recorded):
 * what its backend sends passes without waiting for this process. */
static void judge(struct auxlog *a, struct tap_flow *f)
{
    if (f->judged || (f->conv && f->conv->mode == AUX_PRE))
        return;
    verdict_set(a, f->bip, f->bport, f->sport, RS_CAPTURE_JUDGED);
    f->judged = true;
}

/* Waits until every run of the program that may not have seen a fence has
 * ended: tc programs run under RCU, and MEMBARRIER_CMD_GLOBAL waits for a
 * grace period (synchronize_rcu). */
static void grace_period(struct tap *t)
{
    if (t->membarrier_ok && syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0)
        return;
    usleep(20000);      /* no membarrier: far longer than a softirq's run */
}

void tap_judging(struct auxlog *a, bool on)
{
    struct tap *t = a->tap;

    if (!t || t->judging == on)
        return;
    __atomic_store_n(&t->skel->bss->rs_cap_judging, on ? 1u : 0u, __ATOMIC_SEQ_CST);
    t->judging = on;
    rs_log("tap: %s", on ? "judging every conversation's marker before it passes (a re-run connected)"
                         : "markers pass unjudged again (no re-run remembered)");
    if (on) {
        /* Every marker that passed unjudged is read now, before the
         * re-run's own: the conversation it names is live, and a re-run of
         * its transaction fences it (tap_fence_txn). */
        grace_period(t);
        tap_sync(a);
    }
}

void tap_fence_txn(struct auxlog *a, rs_txn_id txn, uint32_t ip)
{
    unsigned n = 0;

    if (!a->tap)
        return;
    tap_sync(a);        /* markers that passed until now */
    for (struct aux_conv *c = a->convs; c; c = c->next)
        if (c->tap && c->marked && c->txn == txn && c->peer.ip != ip && !c->tap->fenced) {
            rs_log("fence %s backend=%s txn=%s ordinal=%u: re-run by %u.%u.%u.%u", proto_name(c->proto),
                   RS_A(c->peer), RS_TXN(txn), c->ordinal, ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
            fence(a, c->tap);
            n++;
        }
    if (n) {
        grace_period(a->tap);
        tap_sync(a);    /* what passed before the fence */
    }
}

/* ---- Segments --------------------------------------------------------------- */

/* Hands the new contiguous bytes of 'f''s direction 's' to its
 * conversation.  Returns 0 or -errno (the conversation then ends). */
static int feed(struct auxlog *a, struct tap_flow *f, bool to_store)
{
    struct rs_reasm *s = to_store ? &f->c2s : &f->s2c;

    while (f->conv && rs_reasm_has_base(s) && rs_reasm_released_seq(s) != rs_reasm_contig_seq(s)) {
        struct aux_conv *c = f->conv;
        uint32_t at = rs_reasm_released_seq(s);
        const uint8_t *p;
        size_t n;
        int e;

        if (rs_reasm_peek(s, at, &p, &n) < 0 || n == 0)
            break;
        e = to_store ? (c->bytes_c += n, c->mode == AUX_RELAY ? 0 : buf_add(&c->cin, p, n))
                     : (c->bytes_s += n, c->mode == AUX_RELAY ? 0 : buf_add(&c->sin, p, n));
        rs_reasm_release(s, at + (uint32_t)n);
        if (e < 0)
            return e;
        if (c->mode == AUX_RELAY)
            continue;
        if (to_store) {
            if (c->mode == AUX_LIVE)
                c->cfwd = c->cin.len;
            e = client_scan(a, c);
        } else {
            e = server_scan(a, c);
        }
        if (e == -EACCES) {     /* another backend re-runs its transaction */
            fence(a, f);
            conv_close(a, c, "superseded (fenced)");
            return 0;
        }
        if (e < 0)
            return e;
    }
    return 0;
}

/* After 'f''s segments: ends a drained superseded conversation, wakes the
 * replays waiting on its record, ends the flow once both sides closed. */
static void settle(struct auxlog *a, struct tap_flow *f)
{
    struct aux_conv *c = f->conv;
    bool c_eof = f->c_fin && rs_reasm_has_base(&f->c2s) && rs_reasm_contig_seq(&f->c2s) == f->c_fin_seq;
    bool s_eof = f->s_fin && rs_reasm_has_base(&f->s2c) && rs_reasm_contig_seq(&f->s2c) == f->s_fin_seq;

    if (c) {
        c->c_eof = c->c_eof || c_eof;
        c->u_eof = c->u_eof || s_eof;
        if (c->draining && (c->nr >= c->nc || c->u_eof || c->mode != AUX_LIVE))
            conv_close(a, c, "superseded (drained)");
        else if (c->draining && c->rec)
            replay_wake(a, c->rec);
    }
    if (c_eof && s_eof)
        flow_end(a, f, "closed");
}

static void on_segment(struct auxlog *a, const uint8_t *ip, size_t len)
{
    struct tap *t = a->tap;
    uint32_t ihl = rs_capture_ihl(ip), saddr, daddr, seq, doff;
    uint16_t sport, dport, bport, stport;
    uint8_t flags;
    bool to_store;
    struct tap_flow **pp, *f;
    const uint8_t *tcp;
    size_t plen;

    if (len < 20 || !ihl || len < ihl + 20)
        return;
    tcp = ip + ihl;
    saddr = (uint32_t)ip[12] << 24 | (uint32_t)ip[13] << 16 | (uint32_t)ip[14] << 8 | ip[15];
    daddr = (uint32_t)ip[16] << 24 | (uint32_t)ip[17] << 16 | (uint32_t)ip[18] << 8 | ip[19];
    sport = (uint16_t)(tcp[0] << 8 | tcp[1]);
    dport = (uint16_t)(tcp[2] << 8 | tcp[3]);
    seq = (uint32_t)tcp[4] << 24 | (uint32_t)tcp[5] << 16 | (uint32_t)tcp[6] << 8 | tcp[7];
    doff = (uint32_t)(tcp[12] >> 4) * 4;
    flags = tcp[13];
    if (doff < 20 || len < ihl + doff)
        return;
    plen = ((size_t)ip[2] << 8 | ip[3]) < len ? ((size_t)ip[2] << 8 | ip[3]) : len;
    plen = plen > ihl + doff ? plen - ihl - doff : 0;
    to_store = daddr == t->store;
    bport = to_store ? sport : dport;
    stport = to_store ? dport : sport;
    pp = flow_slot(t, to_store ? saddr : daddr, bport, stport);
    f = *pp;
    if (to_store && (flags & 0x02) && !(flags & 0x10)) {        /* the backend's SYN */
        if (f && rs_reasm_has_base(&f->c2s) && rs_reasm_base_seq(&f->c2s) == seq + 1)
            return;     /* retransmitted */
        if (f)
            flow_end(a, f, "port used again");
        if (!(f = calloc(1, sizeof(*f))))
            return;
        f->bip = saddr;
        f->bport = bport;
        f->sport = stport;
        if (rs_reasm_init(&f->c2s, &t->budget, TAP_STREAM_CAP) || rs_reasm_init(&f->s2c, &t->budget, TAP_STREAM_CAP)) {
            rs_reasm_free(&f->c2s);
            rs_reasm_free(&f->s2c);
            free(f);
            a->errors++;
            return;
        }
        rs_reasm_set_base(&f->c2s, seq + 1);
        pp = flow_slot(t, f->bip, f->bport, f->sport);
        f->hnext = *pp;
        *pp = f;
        f->conv = tap_conv_new(a, f);
    }
    if (!f)
        return;         /* joined mid-conversation (not recorded), or ended */
    f->last_ns = rs_mono_ns();
    if (flags & 0x04) {         /* RST */
        flow_end(a, f, to_store ? "reset by the backend" : "reset by the store");
        return;
    }
    if (!to_store && (flags & 0x12) == 0x12 && !rs_reasm_has_base(&f->s2c))
        rs_reasm_set_base(&f->s2c, seq + 1);
    if (flags & 0x02)
        seq++;
    if (plen) {
        /* The ring holds what is not fed yet: bytes beyond a hole, and this
         * segment (a GSO one is ~64 KB). */
        struct rs_reasm *s = to_store ? &f->c2s : &f->s2c;
        int32_t ahead = (int32_t)(seq - rs_reasm_contig_seq(s));
        size_t want = (size_t)(rs_reasm_contig_off(s) - rs_reasm_released_off(s)) + plen + (ahead > 0 ? (size_t)ahead : 0);

        if (want > s->cap && want <= TAP_STREAM_MAX)
            rs_reasm_grow(s, want * 2 > TAP_STREAM_MAX ? TAP_STREAM_MAX : want * 2);
        if (rs_reasm_add(s, seq, tcp + doff, plen) < 0 && f->conv) {
            a->errors++;
            conv_stop_recording(a, f->conv, "a segment the reassembly could not keep");
        }
    }
    if (flags & 0x01) {         /* FIN */
        if (to_store) {
            f->c_fin = true;
            f->c_fin_seq = seq + (uint32_t)plen;
        } else {
            f->s_fin = true;
            f->s_fin_seq = seq + (uint32_t)plen;
        }
    }
    if (plen && f->conv) {
        int e = feed(a, f, to_store);
        if (e < 0 && f->conv) {
            char why[160];
            a->errors++;
            snprintf(why, sizeof(why), "error:%s:%s", to_store ? "backend" : "store", strerror(-e));
            conv_close(a, f->conv, why);
        }
    }
    if (!f->fenced)
        judge(a, f);
    settle(a, f);
}

/* ---- Verdicts on what waits in the queue ------------------------------------ */

/* A segment a backend sent before its conversation's marker was judged,
 * 'ip' its first 'len' bytes (its headers at least).  Its copy is in the
 * ring (the tc program ran before netfilter), though a record another CPU
 * reserved before it may hold it back for a moment: the ring is read until
 * the segment's bytes have been scanned.  Returns NF_ACCEPT or NF_DROP. */
static int queued_verdict(struct auxlog *a, const uint8_t *ip, size_t len)
{
    struct tap *t = a->tap;
    uint32_t ihl = len >= 20 ? rs_capture_ihl(ip) : 0, saddr, seq, end;
    uint16_t sport, dport;
    uint64_t deadline = rs_mono_ns() + TAP_VERDICT_WAIT_US * 1000ull;
    const uint8_t *tcp;

    if (!ihl || len < ihl + 20)
        return NF_ACCEPT;       /* not the program's mark: not ours to judge */
    tcp = ip + ihl;
    saddr = (uint32_t)ip[12] << 24 | (uint32_t)ip[13] << 16 | (uint32_t)ip[14] << 8 | ip[15];
    sport = (uint16_t)(tcp[0] << 8 | tcp[1]);
    dport = (uint16_t)(tcp[2] << 8 | tcp[3]);
    seq = (uint32_t)tcp[4] << 24 | (uint32_t)tcp[5] << 16 | (uint32_t)tcp[6] << 8 | tcp[7];
    end = seq + (((uint32_t)ip[2] << 8 | ip[3]) - ihl - (uint32_t)(tcp[12] >> 4) * 4);
    for (;;) {
        struct tap_flow *f;

        tap_sync(a);
        f = *flow_slot(t, saddr, sport, dport);
        if (f && f->fenced)
            return NF_DROP;
        if (f && (f->judged || !f->conv)) {
            if (!f->fenced)
                verdict_set(a, saddr, sport, dport, RS_CAPTURE_JUDGED);     /* judged before the judging began */
            return NF_ACCEPT;
        }
        /* Still before its marker: these bytes were scanned (or lie beyond
         * a hole, and complete nothing the store could act on). */
        if (f && rs_reasm_has_base(&f->c2s) && (int32_t)(end - rs_reasm_contig_seq(&f->c2s)) <= 0)
            return NF_ACCEPT;
        if (f && rs_reasm_has_base(&f->c2s) && (int32_t)(seq - rs_reasm_contig_seq(&f->c2s)) > 0)
            return NF_ACCEPT;
        if (rs_mono_ns() > deadline) {
            if (f)
                return NF_DROP;         /* never scanned: its sender sends it again */
            /* A connection from before this process (no SYN seen): not
             * recorded, nothing to judge. */
            verdict_set(a, saddr, sport, dport, RS_CAPTURE_JUDGED);
            return NF_ACCEPT;
        }
        usleep(50);
    }
}

static int on_queued(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *ctx)
{
    struct auxlog *a = ctx;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    unsigned char *p = NULL;
    int n = nfq_get_payload(nfa, &p), v;

    (void)msg;
    if (!ph)
        return 0;
    v = n > 0 ? queued_verdict(a, p, (size_t)n) : NF_ACCEPT;
    a->queued++;
    a->queue_dropped += v == NF_DROP;
    return nfq_set_verdict(qh, ntohl(ph->packet_id), (uint32_t)v, 0, NULL);
}

static void on_queue(struct rs_io *io, uint32_t events)
{
    struct auxlog *a = io->ctx;
    static char buf[65536] __attribute__((aligned));

    (void)events;
    for (;;) {
        ssize_t n = recv(io->fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n <= 0) {
            if (n < 0 && errno == ENOBUFS)
                rs_log("tap: the queue's socket overflowed: its segments are dropped (and sent again)");
            if (n < 0 && errno != EAGAIN && errno != ENOBUFS)
                rs_log("tap: reading the queue: %s", strerror(errno));
            if (n < 0 && errno == ENOBUFS)
                continue;
            return;
        }
        nfq_handle_packet(a->tap->nfq, buf, (int)n);
    }
}

/* Runs 'script' with /bin/sh.  Returns 0 or -1. */
static int shell(const char *script)
{
    int st = system(script);

    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* The rule that queues the program's marked segments, in a chain of our
 * own in the mangle table's FORWARD (iptables' NFQUEUE target: this
 * kernel's nftables has no queue expression); the chain a killed
 * predecessor left is emptied and used again.  '--queue-bypass': with
 * nobody reading, they pass (unjudged, as they are unrecorded then). */
static int queue_open(struct auxlog *a, unsigned num)
{
    struct tap *t = a->tap;
    char script[768];

    snprintf(script, sizeof(script),
             "iptables -w -t mangle -N " TAP_CHAIN " 2>/dev/null; "
             "iptables -w -t mangle -F " TAP_CHAIN " && "
             "iptables -w -t mangle -A " TAP_CHAIN " -m mark --mark 0x%x -j NFQUEUE --queue-num %u --queue-bypass && "
             "{ iptables -w -t mangle -C FORWARD -j " TAP_CHAIN " 2>/dev/null || "
             "iptables -w -t mangle -A FORWARD -j " TAP_CHAIN "; }", RS_CAPTURE_QUEUE_MARK, num);
    if (!(t->nfq = nfq_open()) || !(t->qh = nfq_create_queue(t->nfq, (uint16_t)num, on_queued, a)))
        return errno ? -errno : -EIO;
    if (nfq_set_mode(t->qh, NFQNL_COPY_PACKET, 128) < 0 || nfq_set_queue_maxlen(t->qh, TAP_QUEUE_LEN) < 0)
        return -EIO;
    if (shell(script) < 0)
        return -ENOEXEC;
    t->rule_installed = true;
    return rs_io_start(&a->loop, &t->qio, nfq_fd(t->nfq), EPOLLIN, on_queue, a);
}

static void queue_close(struct tap *t)
{
    rs_io_stop(&t->qio);
    if (t->rule_installed && shell("iptables -w -t mangle -D FORWARD -j " TAP_CHAIN " && "
                                   "iptables -w -t mangle -F " TAP_CHAIN " && iptables -w -t mangle -X " TAP_CHAIN) < 0)
        rs_log("tap: removing the iptables chain " TAP_CHAIN " failed");
    if (t->qh)
        nfq_destroy_queue(t->qh);
    if (t->nfq)
        nfq_close(t->nfq);
}

static int on_record(void *ctx, void *data, size_t size)
{
    const struct rs_capture_rec *r = data;

    if (size >= sizeof(*r) && r->caplen <= size - sizeof(*r))
        on_segment(ctx, (const uint8_t *)(r + 1), r->caplen);
    return 0;
}

void tap_sync(struct auxlog *a)
{
    if (a->tap && a->tap->ring) {
        int e = ring_buffer__consume(a->tap->ring);
        if (e < 0)
            rs_log("tap: reading the ring: %s", strerror(-e));
    }
}

static void on_readable(struct rs_io *io, uint32_t events)
{
    (void)events;
    tap_sync(io->ctx);
}

static void on_poll(struct rs_timer *tm)
{
    struct auxlog *a = tm->ctx;

    tap_sync(a);
    rs_timer_after(&a->loop, &a->tap->poll, TAP_POLL_NS);
}

void tap_expire(struct auxlog *a)
{
    uint64_t now = rs_mono_ns();

    if (!a->tap)
        return;
    for (unsigned b = 0; b < TAP_BUCKETS; b++)
        for (struct tap_flow *f = a->tap->flows[b], *next; f; f = next) {
            next = f->hnext;
            if (now - f->last_ns > TAP_IDLE_NS)
                flow_end(a, f, "idle");
        }
}

/* ---- Set-up and tear-down ----------------------------------------------------- */

void tap_close(struct auxlog *a)
{
    struct tap *t = a->tap;

    if (!t)
        return;
    rs_io_stop(&t->io);
    rs_timer_stop(&a->loop, &t->poll);
    queue_close(t);
    for (unsigned b = 0; b < TAP_BUCKETS; b++)
        while (t->flows[b])
            flow_end(a, t->flows[b], "exiting");
    if (t->skel && !rs_tcfilter_detach(&t->filter))
        rs_log("tap: detaching the filter from ifindex %d failed", t->filter.hook.ifindex);
    ring_buffer__free(t->ring);
    lg_capture_bpf__destroy(t->skel);
    free(t);
    a->tap = NULL;
}

int tap_open(struct auxlog *a, const char *ifname, unsigned queue)
{
    struct tap *t = calloc(1, sizeof(*t));
    const char *step = "allocate";
    int ifindex = (int)if_nametoindex(ifname), e = -ENOMEM;
    struct rs_addr store = a->ls[0].up;

    if (!t)
        goto fail;
    a->tap = t;
    rs_reasm_budget_init(&t->budget, TAP_BUDGET);
    t->store = store.ip;
    libbpf_set_print(on_libbpf);
    e = -ENODEV;
    step = "find the interface";
    if (!ifindex)
        goto fail;
    step = "open the program";
    if (!(t->skel = lg_capture_bpf__open())) {
        e = -errno;
        goto fail;
    }
    t->skel->rodata->rs_cap_vip = store.ip;
    t->skel->rodata->rs_cap_port = a->ls[0].up.port;
    t->skel->rodata->rs_cap_port2 = a->n_ls > 1 ? a->ls[1].up.port : 0;
    t->skel->rodata->rs_cap_tap = 1;
    step = "load the program";
    libbpf_verbose = true;
    e = lg_capture_bpf__load(t->skel);
    libbpf_verbose = false;
    if (e)
        goto fail;
    step = "attach it";
    if ((e = rs_tcfilter_attach(&t->filter, ifindex, TAP_TC_HANDLE, TAP_TC_PRIO, t->skel->progs.rs_capture_ingress)))
        goto fail;
    step = "map its ring";
    if (!(t->ring = ring_buffer__new(bpf_map__fd(t->skel->maps.rs_cap_ring), on_record, a, NULL))) {
        e = -errno;
        goto fail;
    }
    step = "poll its ring";
    if ((e = rs_io_start(&a->loop, &t->io, bpf_map__fd(t->skel->maps.rs_cap_ring), EPOLLIN, on_readable, a)))
        goto fail;
    t->skel->bss->rs_cap_polled = 1;    /* records wake nobody (TAP_POLL_NS) */
    rs_timer_init(&t->poll, on_poll, a);
    rs_timer_after(&a->loop, &t->poll, TAP_POLL_NS);
    step = "queue what waits for a verdict (NFQUEUE, iptables)";
    if ((e = queue_open(a, queue)))
        goto fail;
    t->membarrier_ok = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) > 0
                       && (syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) & MEMBARRIER_CMD_GLOBAL);
    rs_log("tap on %s: the conversations forwarded to and from %s (ports %u, %u), judged on queue %u%s%s", ifname,
           RS_A(store), a->ls[0].up.port, a->n_ls > 1 ? a->ls[1].up.port : 0, queue,
           t->filter.replaced ? "; replaced a previous rs-auxlog's filter" : "",
           t->membarrier_ok ? "" : "; no membarrier: fences wait 20 ms");
    return 0;
fail:
    rs_log("tap on %s: cannot %s: %s", ifname, step, strerror(e < 0 ? -e : EINVAL));
    tap_close(a);
    return e < 0 ? e : -EINVAL;
}
