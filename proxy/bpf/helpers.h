/* The tc program's helpers: events to the daemon, following each sender's
 * position, the client TSvals before a splice, the ACK clamp.  The packet
 * logic itself is core/splice.h (unit-tested in tests/unit/test_splice.c);
 * these only fetch and store what it works on. */
#ifndef RS_BPF_HELPERS_H
#define RS_BPF_HELPERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "splice.h"

/* Whether the other direction of entry 'f''s splice (a backend's: its
 * client) has sent its FIN. */
static __always_inline int peer_closed(const struct rs_flow *f)
{
    const struct rs_flow_track *pt = bpf_map_lookup_elem(&rs_track, &f->peer);

    return pt && pt->pos.fin_seen;
}

/* Whether an event with 'flags' from entry 'f' goes on the ring that wakes
 * nobody (rs_events_quiet), which rs-proxy reads first whenever it wakes:
 * - a backend's SYN-ACK (RS_FLOW_OPENED);
 * - an end that passed on a running splice (the client's FIN);
 * - a backend's FIN that the guard holds after its client's FIN (the usual
 *   close): the logger's word on it wakes rs-proxy (else the lease's
 *   renewal, within 100 ms).  A backend that crashed after a half-close
 *   is found meanwhile by rs-stated and the logger, whose messages wake
 *   rs-proxy; a RST, or a FIN before the client's, wakes it at once.
 * Only while splicing at the SYN, unless rs-proxy asked for wake-ups
 * (RS_SYN_EVENTS_WAKE: a pair's active proxy). */
static __always_inline int quiet_event(const struct rs_flow *f, __u32 flags)
{
    __u32 zero = 0;
    const struct rs_syn_cfg *cfg;

    if (flags == (RS_FLOW_SEEN_FIN | RS_FLOW_GUARDED)) {
        if (!peer_closed(f))
            return 0;
    } else if (flags != RS_FLOW_OPENED
               && (!(flags & (RS_FLOW_SEEN_FIN | RS_FLOW_SEEN_RST)) || (flags & RS_FLOW_GUARDED)
                   || f->state != RS_FLOW_ACTIVE)) {
        return 0;
    }
    cfg = bpf_map_lookup_elem(&rs_syn, &zero);
    return cfg && (cfg->on & 1) && !(cfg->on & RS_SYN_EVENTS_WAKE);
}

static __always_inline void report(const struct rs_flow_key *k, const struct rs_flow *f,
                                   __u32 flags, __u32 seq, __u32 gen)
{
    int quiet = quiet_event(f, flags);
    struct rs_flow_event *e = quiet ? bpf_ringbuf_reserve(&rs_events_quiet, sizeof(*e), 0)
                                    : bpf_ringbuf_reserve(&rs_events, sizeof(*e), 0);

    if (!e)
        return;
    e->key = *k;
    e->splice_id = f->splice_id;
    e->ns = bpf_ktime_get_ns();
    e->flags = flags;
    e->seq = seq;
    e->gen = gen;
    e->pad_ = 0;
    bpf_ringbuf_submit(e, quiet ? BPF_RB_NO_WAKEUP : 0);
}

/* Follows the sender's position (rs_splice_pos_update) and reports an ACK
 * watch the daemon armed once the sender's ACK reaches it (recovery waits
 * for those without polling). */
static __always_inline void track_seq(struct __sk_buff *skb, const struct rs_flow_key *k, const struct rs_flow *f,
                                      struct rs_flow_track *t, const __u8 *tcp, __u32 hlen)
{
    int has_ack;
    /* A guarded backend's segment that a HOLD drops never reaches the
     * client (the proxy's RECOVER says how far the backend's bytes went,
     * and the logger waits for its log to hold them all: for half its
     * budget, ~390 ms, when the backend's kernel sent on after the hold). */
    __u32 ack = f->state == RS_FLOW_HOLD && f->guard
                    ? rs_splice_pos_ack(&t->pos, tcp, &has_ack)
                    : rs_splice_pos_update(&t->pos, tcp, skb->len - TCP_OFF - hlen, &has_ack);

    if (has_ack && f->ack_watch_gen && t->acked_gen != f->ack_watch_gen && rs_seq_ge(ack, f->ack_watch)) {
        t->acked_gen = f->ack_watch_gen;
        report(k, f, RS_FLOW_ACKED, ack, f->ack_watch_gen);
    }
}

/* Keeps the header of the FIN segment 'skb' ('hlen' header bytes,
 * 'payload' data bytes) that the guard holds, as a bare FIN after the
 * data (which passes), for the daemon to release once the logger says
 * the end was meant (rs_flow_track.fin_hdr). */
static __always_inline void keep_fin(struct __sk_buff *skb, struct rs_flow_track *t, __u32 hlen, __u32 payload)
{
    __u32 seq;

    t->fin_hdr_len = 0;
    if (hlen < RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX || bpf_skb_load_bytes(skb, TCP_OFF, t->fin_hdr, hlen) < 0)
        return;
    __builtin_memcpy(&seq, t->fin_hdr + 4, 4);
    seq = bpf_htonl(bpf_ntohl(seq) + payload);
    __builtin_memcpy(t->fin_hdr + 4, &seq, 4);
    t->fin_hdr[13] &= ~0x08;    /* PSH was the data's */
    t->fin_hdr_len = hlen;
}

/* The TCP header buffer the global functions below take: a pointer
 * argument of a global function must name a type of known size. */
struct rs_tcp_buf {
    __u8 b[RS_TCP_HDR_MAX];
};

/* The option parsing of core/splice.h behind global (not inlined, not
 * static) functions: the verifier checks a global function once, on its
 * own, instead of again on every path that reaches it.  Inlined, it went
 * over 600k of the 1M instructions the verifier allows and took 0.6 s of
 * every rs-proxy start; this way 185k and about 0.1 s.  Each returns -1
 * on a NULL argument (the verifier insists on the check). */
__attribute__((noinline)) int rs_bpf_splice_tcp(const struct rs_splice_dir *d, struct rs_tcp_buf *tcp, __u32 hlen)
{
    if (!d || !tcp)
        return -1;
    return rs_splice_tcp(d, tcp->b, hlen);
}

__attribute__((noinline)) int rs_bpf_tsval_get(const struct rs_tcp_buf *tcp, __u32 hlen, __u32 *ts)
{
    if (!tcp || !ts)
        return -1;
    return rs_splice_tsval_get(tcp->b, hlen, ts);
}

__attribute__((noinline)) int rs_bpf_syn_info(const struct rs_tcp_buf *tcp, __u32 hlen, struct rs_syn_info *si)
{
    if (!tcp || !si)
        return -1;
    return rs_splice_syn_info(tcp->b, hlen, si);
}

/* Loads the TCP header of 'skb' into 'tcp' and returns its TSval in '*ts'.
 * Returns 0, or -1 when it has none. */
static __always_inline int load_tsval(struct __sk_buff *skb, struct rs_tcp_buf *buf, __u32 *ts)
{
    __u8 *tcp = buf->b;
    __u32 hlen;

    if (bpf_skb_load_bytes(skb, TCP_OFF, tcp, RS_TCP_HDR_MIN) < 0)
        return -1;
    hlen = (__u32)(tcp[12] >> 4) * 4;
    if (hlen <= RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX || bpf_skb_load_bytes(skb, TCP_OFF, tcp, hlen) < 0)
        return -1;
    return rs_bpf_tsval_get(buf, hlen, ts) ? -1 : 0;
}

/* Records the TSval of a client segment to the VIP in rs_ts. */
static __always_inline void record_ts(struct __sk_buff *skb, const struct rs_flow_key *key)
{
    struct rs_tcp_buf tcp;
    __u32 ts;

    if (load_tsval(skb, &tcp, &ts) == 0)
        bpf_map_update_elem(&rs_ts, key, &ts, BPF_ANY);
}

/* A client segment after a re-splice to a regenerating server: its ACK
 * never goes past what that server (the 'peer' entry's sender) has sent. */
static __always_inline void clamp_ack(const struct rs_flow *f, __u8 *tcp)
{
    struct rs_flow_track *r = bpf_map_lookup_elem(&rs_track, &f->peer);

    if (r && r->pos.has_seq)
        rs_splice_clamp_ack(tcp, r->pos.seq_next, f->dir.win_scale_out);
}

/* ---- Splicing at the SYN (struct rs_syn_cfg) ----------------------------- */

/* Whether the SYN 'skb' ('hlen' header bytes, 20..60) can be spliced: its
 * options are well formed and none is one a splice cannot carry (TCP-MD5,
 * whose segments would all be refused).  Its first 20 bytes stay in 'buf'. */
static __always_inline int syn_spliceable(struct __sk_buff *skb, struct rs_tcp_buf *buf, __u32 hlen)
{
    struct rs_syn_info si;

    return bpf_skb_load_bytes(skb, TCP_OFF, buf->b, hlen) == 0 && rs_bpf_syn_info(buf, hlen, &si) == 0;
}

/* Makes the splice of the client's SYN 'kc' (a bare SYN without data to
 * the VIP; TCP header 'tcp', 'hlen' bytes): a port from the queue, both
 * entries with their tracks, the backend's first (its SYN-ACK must find
 * it).  Returns 0, or -1 when it cannot be made here (not configured, no
 * port free, no room for the client's name in the SYN): the SYN then goes
 * to the stack's listener. */
static __always_inline int syn_splice(const struct rs_flow_key *kc, const __u8 *tcp, __u32 hlen)
{
    __u32 zero = 0;
    __u16 port;
    struct rs_syn_cfg *cfg = bpf_map_lookup_elem(&rs_syn, &zero);
    struct rs_syn_scratch *sc = bpf_map_lookup_elem(&rs_syn_scratch, &zero);
    struct rs_flow *fc, *fb;
    struct rs_flow_key kb;
    __u64 *ids = bpf_map_lookup_elem(&rs_syn_ids, &zero), id;

    if (!cfg || !sc || !ids || !cfg->on || hlen + RS_IDENT_ROOM > RS_TCP_HDR_MAX)
        return -1;
    if (bpf_map_pop_elem(&rs_syn_ports, &port))
        return -1;
    kb.saddr = cfg->backend_addr;
    kb.daddr = cfg->local_addr;
    kb.sport = cfg->backend_port;
    kb.dport = bpf_htons(port);
    id = __sync_fetch_and_add(ids, 1);
    fc = (struct rs_flow *)sc->fc;
    fb = (struct rs_flow *)sc->fb;
    __builtin_memset(sc->fc, 0, sizeof(sc->fc));
    __builtin_memset(sc->fb, 0, sizeof(sc->fb));
    fc->dir.saddr = bpf_ntohl(cfg->local_addr);
    fc->dir.daddr = bpf_ntohl(cfg->backend_addr);
    fc->dir.sport = port;
    fc->dir.dport = bpf_ntohs(cfg->backend_port);
    fb->dir.saddr = bpf_ntohl(kc->daddr);
    fb->dir.daddr = bpf_ntohl(kc->saddr);
    fb->dir.sport = bpf_ntohs(kc->dport);
    fb->dir.dport = bpf_ntohs(kc->sport);
    fc->ifindex = fb->ifindex = cfg->ifindex;
    fc->state = fb->state = RS_FLOW_ACTIVE;
    fc->splice_id = fb->splice_id = id;
    fc->gen = fb->gen = 1;
    fc->at_syn = 1;
    fb->at_syn = cfg->on & RS_SYN_HOLD_SYNACK ? 1 | RS_AT_SYN_HOLD : 1;
    fb->guard = cfg->guard;
    fc->peer = kb;
    fb->peer = *kc;
    if (bpf_map_update_elem(&rs_track, kc, sc->zero_track, BPF_ANY)
        || bpf_map_update_elem(&rs_track, &kb, sc->zero_track, BPF_ANY))
        goto undo;
    if (bpf_map_update_elem(&rs_flows, &kb, fb, BPF_NOEXIST))
        goto undo;
    if (bpf_map_update_elem(&rs_flows, kc, fc, BPF_NOEXIST)) {
        bpf_map_delete_elem(&rs_flows, &kb);
        goto undo;
    }
    return 0;
undo:
    bpf_map_delete_elem(&rs_track, kc);
    bpf_map_delete_elem(&rs_track, &kb);
    bpf_map_push_elem(&rs_syn_ports, &port, 0);
    return -1;
}

/* Adds the option naming client 'kc' to the SYN 'skb', whose TCP header
 * (the whole segment: a SYN made into a splice carries no data) is 'hlen'
 * bytes, its first 14 in 'tcp'.  Returns 0 or -1. */
static __always_inline int syn_name_client(struct __sk_buff *skb, const struct rs_flow_key *kc, const __u8 *tcp,
                                           __u32 hlen)
{
    __u8 opt[RS_IDENT_ROOM];
    __u16 old16, new16;
    __u16 tot;
    __s64 diff;

    rs_ident_opt_put(opt, bpf_ntohl(kc->saddr), bpf_ntohs(kc->sport));
    if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 2, &tot, 2) < 0
        || bpf_skb_change_tail(skb, skb->len + RS_IDENT_ROOM, 0) < 0
        || bpf_skb_store_bytes(skb, TCP_OFF + hlen, opt, RS_IDENT_ROOM, 0) < 0)
        return -1;
    /* The option's bytes, the header length (its byte shares a word with
     * the flags), the pseudo header's TCP length, the IP total length. */
    diff = bpf_csum_diff(0, 0, (__be32 *)opt, RS_IDENT_ROOM, 0);
    old16 = bpf_htons((__u16)tcp[12] << 8 | tcp[13]);
    new16 = bpf_htons((__u16)((hlen + RS_IDENT_ROOM) / 4) << 12 | (__u16)(tcp[12] & 0x0f) << 8 | tcp[13]);
    if (diff < 0 || bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, (__u32)diff, 0) < 0
        || bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old16, new16, 2) < 0
        || bpf_skb_store_bytes(skb, TCP_OFF + 12, &new16, 2, 0) < 0
        || bpf_l4_csum_replace(skb, TCP_CSUM_OFF, bpf_htons(hlen), bpf_htons(hlen + RS_IDENT_ROOM),
                               BPF_F_PSEUDO_HDR | 2) < 0)
        return -1;
    new16 = bpf_htons(bpf_ntohs(tot) + RS_IDENT_ROOM);
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, tot, new16, 2) < 0
        || bpf_skb_store_bytes(skb, ETH_HLEN_ + 2, &new16, 2, 0) < 0)
        return -1;
    return 0;
}

#endif /* RS_BPF_HELPERS_H */
