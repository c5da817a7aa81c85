/* tc (clsact ingress) program of rs-proxy: segments of spliced connections
 * are rewritten onto the other connection (core/splice.h) and redirected
 * out without touching the proxy's TCP stack; everything else passes.
 * Checksums are fixed with the kernel's helpers, which know whether the
 * skb carries a complete checksum or a CHECKSUM_PARTIAL one (GSO and
 * veth traffic does). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "splice_map.h"

#define ETH_HLEN_ 14
#define IP_CSUM_OFF (ETH_HLEN_ + 10)
#define IP_SADDR_OFF (ETH_HLEN_ + 12)
#define IP_DADDR_OFF (ETH_HLEN_ + 16)
#define TCP_OFF (ETH_HLEN_ + 20)     /* only option-less IPv4 headers are spliced */
#define TCP_CSUM_OFF (TCP_OFF + 16)

/* The daemon's half of each entry: read here, never written. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RS_SPLICE_MAP_MAX);
    __type(key, struct rs_flow_key);
    __type(value, struct rs_flow);
} rs_flows SEC(".maps");

/* Our half: written here only (the daemon creates and deletes it). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RS_SPLICE_MAP_MAX);
    __type(key, struct rs_flow_key);
    __type(value, struct rs_flow_track);
} rs_track SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rs_vip);
} rs_vips SEC(".maps");

/* Newest TSval of each client connection to the VIP that is not spliced yet. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RS_TS_MAP_MAX);
    __type(key, struct rs_flow_key);
    __type(value, __u32);
} rs_ts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, RS_SPLICE_EVENTS_BYTES);
} rs_events SEC(".maps");

static __always_inline void report(const struct rs_flow_key *k, const struct rs_flow *f,
                                   __u32 flags, __u32 seq, __u32 gen)
{
    struct rs_flow_event *e = bpf_ringbuf_reserve(&rs_events, sizeof(*e), 0);

    if (!e)
        return;
    e->key = *k;
    e->splice_id = f->splice_id;
    e->ns = bpf_ktime_get_ns();
    e->flags = flags;
    e->seq = seq;
    e->gen = gen;
    e->pad_ = 0;
    bpf_ringbuf_submit(e, 0);
}

/* Keeps t->seq_next at the end of the newest segment the sender sent (raw
 * numbering): where its byte stream stands, for a re-splice "at the current
 * position" and for the logs; t->ack_max likewise; and reports an ACK
 * watch the daemon armed once the sender's ACK reaches it (recovery waits
 * for those without polling). */
static __always_inline void track_seq(struct __sk_buff *skb, const struct rs_flow_key *k, const struct rs_flow *f,
                                      struct rs_flow_track *t, const __u8 *tcp, __u32 hlen)
{
    __u32 seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
    __u32 end = seq + (skb->len - TCP_OFF - hlen) + ((tcp[13] & 0x03) ? 1 : 0);

    if (!t->has_seq || rs_seq_gt(end, t->seq_next)) {
        t->seq_next = end;
        t->has_seq = 1;
    }
    if (tcp[13] & 0x01)
        t->fin_seen = 1;
    if (tcp[13] & 0x10) {
        __u32 ack = ((__u32)tcp[8] << 24) | ((__u32)tcp[9] << 16) | ((__u32)tcp[10] << 8) | tcp[11];
        if (!t->has_ack || rs_seq_gt(ack, t->ack_max)) {
            t->ack_max = ack;
            t->has_ack = 1;
        }
        if (f->ack_watch_gen && t->acked_gen != f->ack_watch_gen && rs_seq_ge(ack, f->ack_watch)) {
            t->acked_gen = f->ack_watch_gen;
            report(k, f, RS_FLOW_ACKED, ack, f->ack_watch_gen);
        }
    }
}

/* Records the TSval of a client segment to the VIP in rs_ts. */
static __always_inline void record_ts(struct __sk_buff *skb, const struct rs_flow_key *key)
{
    __u8 tcp[RS_TCP_HDR_MAX];
    struct rs_splice_optpos pos;
    __u32 hlen, ts;

    if (bpf_skb_load_bytes(skb, TCP_OFF, tcp, RS_TCP_HDR_MIN) < 0)
        return;
    hlen = (__u32)(tcp[12] >> 4) * 4;
    if (hlen <= RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX || bpf_skb_load_bytes(skb, TCP_OFF, tcp, hlen) < 0)
        return;
    if (rs_splice_opts_scan(tcp, hlen, &pos) == 0 && pos.ts && pos.ts <= RS_TCP_HDR_MAX - 10) {
        ts = rs_splice_load32(tcp + pos.ts + 2);
        bpf_map_update_elem(&rs_ts, key, &ts, BPF_ANY);
    }
}

/* After a re-splice the new server regenerates a response whose first p
 * bytes the client already has: the client's (translated) ACK can then be
 * ahead of anything the server has sent, and a TCP drops such ACKs — the
 * server would stall.  Bytes below the client's ACK are bytes the client
 * holds, so acknowledging everything the server has sent so far is exact;
 * the window field grows by the same amount so its right edge stays. */
static __always_inline void clamp_ack(const struct rs_flow *f, __u8 *tcp)
{
    struct rs_flow_track *r = bpf_map_lookup_elem(&rs_track, &f->peer);
    __u32 ack, d, real, w;

    if (!r || !r->has_seq)
        return;
    ack = rs_splice_load32(tcp + 8);
    if (!rs_seq_gt(ack, r->seq_next))
        return;
    d = ack - r->seq_next;
    rs_splice_store32(tcp + 8, r->seq_next);
    w = rs_splice_load16(tcp + 14);
    real = (w << (f->dir.win_scale_out & 15)) + d;
    w = real >> (f->dir.win_scale_out & 15);
    rs_splice_store16(tcp + 14, (__u16)(w > 0xffff ? 0xffff : w));
}

SEC("tc")
int rs_splice_ingress(struct __sk_buff *skb)
{
    __u8 ip[20], old[RS_TCP_HDR_MAX], tcp[RS_TCP_HDR_MAX];
    struct rs_flow_key key;
    struct rs_flow *f;
    struct rs_flow_track *t;
    __u32 hlen, i, evflags;
    __s64 diff;

    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN_, ip, sizeof(ip)) < 0 || ip[9] != IPPROTO_TCP)
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, TCP_OFF, tcp, RS_TCP_HDR_MIN) < 0)
        return TC_ACT_OK;
    __builtin_memcpy(&key.saddr, ip + 12, 4);
    __builtin_memcpy(&key.daddr, ip + 16, 4);
    __builtin_memcpy(&key.sport, tcp, 2);
    __builtin_memcpy(&key.dport, tcp + 2, 2);
    f = bpf_map_lookup_elem(&rs_flows, &key);
    if (!f) {
        __u32 zero = 0;
        struct rs_vip *vip = bpf_map_lookup_elem(&rs_vips, &zero);

        if (vip && vip->addr == key.daddr && vip->port == key.dport)
            record_ts(skb, &key);
        return TC_ACT_OK;
    }
    t = bpf_map_lookup_elem(&rs_track, &key);
    if (!t)
        return f->state == RS_FLOW_WATCH ? TC_ACT_OK : TC_ACT_SHOT;   /* the daemon creates both */

    t->last_ns = bpf_ktime_get_ns();
    if (t->seen_gen != f->gen) {
        t->seen = 0;    /* re-activated: FIN/RST held back while guarded are reported again */
        t->seen_gen = f->gen;
    }
    hlen = (__u32)(tcp[12] >> 4) * 4;
    if (ip[0] != 0x45 || hlen < RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX)
        goto bad;
    track_seq(skb, &key, f, t, tcp, hlen);
    if (f->state == RS_FLOW_WATCH) {
        /* Before the splice: the stack handles it; remember the sender's
         * clock, which the splice must continue. */
        if (bpf_skb_load_bytes(skb, TCP_OFF, tcp, hlen) == 0) {
            struct rs_splice_optpos pos;
            if (rs_splice_opts_scan(tcp, hlen, &pos) == 0 && pos.ts && pos.ts <= RS_TCP_HDR_MAX - 10)
                t->ts_recent = rs_splice_load32(tcp + pos.ts + 2);
        }
        return TC_ACT_OK;
    }
    if (f->acks_to_stack && f->state == RS_FLOW_ACTIVE && skb->len == TCP_OFF + hlen && !(tcp[13] & 0x07))
        return TC_ACT_OK;
    if (f->state == RS_FLOW_ACKONLY && (skb->len > TCP_OFF + hlen || (tcp[13] & 0x05)))
        goto drop;
    if (f->state != RS_FLOW_ACTIVE && f->state != RS_FLOW_ACKONLY)
        goto drop;
    if (f->guard && (tcp[13] & 0x05)) {
        /* A FIN answering the client's own FIN is the normal end: pass it.
         * Anything else ends the connection behind the client's back. */
        struct rs_flow_track *pt = (tcp[13] & 0x04) ? 0 : bpf_map_lookup_elem(&rs_track, &f->peer);

        if (!(f->pass_fin && !(tcp[13] & 0x04)) && (!pt || !pt->fin_seen)) {
            evflags = (tcp[13] & 0x01 ? RS_FLOW_SEEN_FIN : 0) | (tcp[13] & 0x04 ? RS_FLOW_SEEN_RST : 0);
            if ((t->seen & evflags) != evflags) {
                t->seen |= evflags;
                report(&key, f, evflags | RS_FLOW_GUARDED, 0, f->gen);
            }
            goto drop;
        }
    }
    if (bpf_skb_load_bytes(skb, TCP_OFF, tcp, hlen) < 0)
        goto bad;
    __builtin_memcpy(old, tcp, sizeof(old));
    if (rs_splice_tcp(&f->dir, tcp, hlen) < 0)
        goto bad;
    if (f->clamp_ack && (tcp[13] & 0x10))
        clamp_ack(f, tcp);

    /* TCP header: the helpers recompute the checksum from the difference of
     * the headers with their checksum fields set equal. */
    tcp[16] = old[16];
    tcp[17] = old[17];
    diff = bpf_csum_diff((__be32 *)old, hlen, (__be32 *)tcp, hlen, 0);
    if (diff < 0 || bpf_skb_store_bytes(skb, TCP_OFF, tcp, hlen, 0) < 0
        || bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, (__u32)diff, 0) < 0)
        goto bad;
    /* Addresses: IPv4 header checksum and the TCP pseudo header. */
    {
        __u32 osrc = key.saddr, odst = key.daddr;
        __u32 nsrc = bpf_htonl(f->dir.saddr), ndst = bpf_htonl(f->dir.daddr);

        if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, osrc, nsrc, BPF_F_PSEUDO_HDR | 4) < 0
            || bpf_l4_csum_replace(skb, TCP_CSUM_OFF, odst, ndst, BPF_F_PSEUDO_HDR | 4) < 0
            || bpf_l3_csum_replace(skb, IP_CSUM_OFF, osrc, nsrc, 4) < 0
            || bpf_l3_csum_replace(skb, IP_CSUM_OFF, odst, ndst, 4) < 0
            || bpf_skb_store_bytes(skb, IP_SADDR_OFF, &nsrc, 4, 0) < 0
            || bpf_skb_store_bytes(skb, IP_DADDR_OFF, &ndst, 4, 0) < 0)
            goto bad;
    }
    __sync_fetch_and_add(&t->pkts, 1);
    __sync_fetch_and_add(&t->bytes, skb->len);

    evflags = 0;
    if (old[13] & 0x01)
        evflags |= RS_FLOW_SEEN_FIN;
    if (old[13] & 0x04)
        evflags |= RS_FLOW_SEEN_RST;
    if (evflags && (t->seen & evflags) != evflags) {
        t->seen |= evflags;
        i = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
        report(&key, f, evflags, i, f->gen);
    }
    /* The kernel fills in the MAC addresses from its FIB and neighbours. */
    return bpf_redirect_neigh(f->ifindex, NULL, 0, 0);
bad:
    __sync_fetch_and_add(&t->errors, 1);
    return TC_ACT_SHOT;
drop:
    /* Nothing of a spliced flow may reach the proxy's stack: its socket is
     * gone (or going) and the stack would answer with a RST. */
    __sync_fetch_and_add(&t->dropped, 1);
    return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
