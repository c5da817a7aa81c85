/* tc (clsact ingress) program of rs-proxy: segments of spliced connections
 * are rewritten onto the other connection (core/splice.h) and redirected
 * out without touching the proxy's TCP stack; everything else passes.
 * Checksums are fixed with the kernel's helpers, which know whether the
 * skb carries a complete checksum or a CHECKSUM_PARTIAL one (GSO and
 * veth traffic does).  Katran's layout: consts.h, maps.h, helpers.h; the
 * packet logic is core/splice.h. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "helpers.h"
#include "maps.h"

/* Whether the connection of entry 'f' (track 't') has ended: its sender
 * reset it, or it and the peer entry's sender both sent their FIN. */
static __always_inline int ended(const struct rs_flow_track *t, const struct rs_flow *f)
{
    const struct rs_flow_track *pt;

    if (t->seen & RS_FLOW_SEEN_RST)
        return 1;
    if (!(t->seen & RS_FLOW_SEEN_FIN))
        return 0;
    pt = bpf_map_lookup_elem(&rs_track, &f->peer);
    return pt && pt->pos.fin_seen;
}

/* Whether the connection of entry 'f' (track 't') and its peer closed in
 * full (rs_splice_closed_both). */
static __always_inline int closed_both(const struct rs_flow_track *t, const struct rs_flow *f)
{
    const struct rs_flow_track *pt = bpf_map_lookup_elem(&rs_track, &f->peer);
    const struct rs_flow *pf = bpf_map_lookup_elem(&rs_flows, &f->peer);

    return pt && pf && rs_splice_closed_both(&t->pos, &f->dir, &pt->pos, &pf->dir);
}

/* Whether the proxy holds its lease, or may yet be succeeded (struct rs_vip). */
static __always_inline int proxy_alive(const struct rs_vip *vip)
{
    __u64 now = bpf_ktime_get_ns();

    return now <= vip->lease_ns || now > vip->lease_ns + RS_VIP_SUCCESSOR_NS;
}

/* Whether a socket listens where the client's SYN 'k' goes (struct
 * rs_vip.listens): the proxy's own, which its death closes at once. */
static __always_inline int proxy_listens(struct __sk_buff *skb, const struct rs_flow_key *k)
{
    struct bpf_sock_tuple tu = { .ipv4 = { k->saddr, k->daddr, k->sport, k->dport } };
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tu, sizeof(tu.ipv4), BPF_F_CURRENT_NETNS, 0);

    if (!sk)
        return 0;
    bpf_sk_release(sk);
    return 1;
}

/* The client's SYN 'skb' (its IP header 'ip') on the ended connection of
 * entry 'k' ('f', 't'), where new connections are spliced at the SYN and
 * the proxy holds its lease: what the SYN announced is kept in the track
 * and RS_FLOW_REUSED reported, for the proxy to remove the old entry
 * (it alone writes and removes entries a connection it took on has) and
 * send the SYN again through this program (proxy/syn.c).  Returns whether
 * so (the SYN is then dropped). */
static __always_inline int syn_reused(struct __sk_buff *skb, struct rs_tcp_buf *buf, const struct rs_flow_key *k,
                                      const struct rs_flow *f, struct rs_flow_track *t, const __u8 *ip)
{
    __u32 zero = 0, hlen;
    struct rs_vip *vip = bpf_map_lookup_elem(&rs_vips, &zero);
    struct rs_syn_cfg *cfg = bpf_map_lookup_elem(&rs_syn, &zero);
    struct rs_syn_info si;

    if (!vip || !cfg || !cfg->on || !vip->lease_ns || bpf_ktime_get_ns() > vip->lease_ns || ip[0] != 0x45
        || bpf_skb_load_bytes(skb, TCP_OFF, buf->b, RS_TCP_HDR_MIN) < 0)
        return 0;
    hlen = (__u32)(buf->b[12] >> 4) * 4;
    if (skb->len != TCP_OFF + hlen || hlen < RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX
        || bpf_skb_load_bytes(skb, TCP_OFF, buf->b, hlen) < 0 || rs_bpf_syn_info(buf, hlen, &si) != 0)
        return 0;
    t->syn = si;
    t->reused = RS_REUSED_DROPPED;
    report(k, f, RS_FLOW_REUSED, 0, f->gen);
    return 1;
}

SEC("tc")
int rs_splice_ingress(struct __sk_buff *skb)
{
    __u8 ip[20], old[RS_TCP_HDR_MAX];
    struct rs_tcp_buf buf;
    __u8 *tcp = buf.b;
    struct rs_flow_key key;
    struct rs_flow *f;
    struct rs_flow_track *t;
    __u32 hlen, i, evflags, payload;
    int at_pos, at_end, hold_fin = 0, name_client = 0;
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

        if (!vip || vip->addr != key.daddr || vip->port != key.dport)
            return TC_ACT_OK;
        if ((tcp[13] & 0x12) == 0x02) {
            if (vip->lease_ns && (!proxy_alive(vip) || (vip->listens && !proxy_listens(skb, &key))))
                return TC_ACT_SHOT;
            /* Splicing at the SYN: only while the proxy holds its lease
             * (it takes the connection on when the SYN-ACK comes). */
            hlen = (__u32)(tcp[12] >> 4) * 4;
            if (vip->lease_ns && bpf_ktime_get_ns() <= vip->lease_ns && ip[0] == 0x45
                && skb->len == TCP_OFF + hlen && hlen >= RS_TCP_HDR_MIN && hlen <= RS_TCP_HDR_MAX
                && syn_spliceable(skb, &buf, hlen) && syn_splice(&key, tcp, hlen) == 0)
                f = bpf_map_lookup_elem(&rs_flows, &key);
        }
        if (!f) {
            record_ts(skb, &key);
            return TC_ACT_OK;
        }
    }
    t = bpf_map_lookup_elem(&rs_track, &key);
    if (!t)
        return f->state == RS_FLOW_WATCH ? TC_ACT_OK : TC_ACT_SHOT;   /* the daemon creates both */
    /* A bare SYN on a connection that has ended (the sender reset it, or
     * both sides sent their FIN) opens a new one on the same 4-tuple (the
     * old entry lingers, or was adopted from a predecessor and not yet
     * reaped).  Where new connections are spliced at the SYN, the proxy
     * frees the 4-tuple and sends the SYN again (syn_reused); otherwise,
     * or should it not, it and what follows go to the stack's listener
     * until the proxy replaces the entry.  On a live connection, half-closed ones
     * included, a SYN is translated like any segment (the server's TCP
     * answers it with a challenge ACK): a forged one steals nothing. */
    if (!t->reused && (tcp[13] & 0x12) == 0x02 && t->seen_gen == f->gen && ended(t, f)) {
        t->reused = RS_REUSED_PASSED;
        if (syn_reused(skb, &buf, &key, f, t, ip))
            return TC_ACT_SHOT;
    }
    if (t->reused) {
        record_ts(skb, &key);       /* as for any connection not spliced yet */
        return TC_ACT_OK;
    }

    /* A splice made at the SYN whose backend answers the client's SYN
     * with a bare ACK (before any SYN-ACK: only a client's entry has seen
     * a SYN then): an old connection of the port's, which the client must
     * not see, nor the track follow; rs-proxy resets it and sends the
     * client's SYN again. */
    if (f->at_syn && !t->syn.flags && (tcp[13] & 0x17) == RS_TCP_F_ACK) {
        __u32 ack;

        __builtin_memcpy(&ack, tcp + 8, 4);
        report(&key, f, RS_FLOW_STALE, bpf_ntohl(ack), f->gen);
        __sync_fetch_and_add(&t->dropped, 1);
        return TC_ACT_SHOT;
    }
    /* Before the backend's SYN-ACK, signs that it will not answer (the
     * request path's failed connect): its RST (nothing listens there),
     * which the client must not see, and the client's SYN sent again (its
     * retransmission); rs-proxy judges them (syn.c). */
    if (f->at_syn && f->guard && !t->syn.flags && (tcp[13] & RS_TCP_F_RST)) {
        report(&key, f, RS_FLOW_REFUSED, 0, f->gen);
        __sync_fetch_and_add(&t->dropped, 1);
        return TC_ACT_SHOT;
    }
    if (f->at_syn && t->syn.flags && (tcp[13] & 0x12) == RS_TCP_F_SYN) {
        const struct rs_flow_track *pt = bpf_map_lookup_elem(&rs_track, &f->peer);
        __u64 since = (bpf_ktime_get_ns() - t->last_ns) / 1000;

        if (pt && !pt->syn.flags)
            report(&key, f, RS_FLOW_UNANSWERED, since > 0xffffffffu ? 0xffffffffu : (__u32)since, f->gen);
    }
    /* A RST once both sides closed and acknowledged each other's FIN ends
     * nothing (it answers a segment sent after the end: a FIN sent again
     * crossed the last ACK, and the socket it reached is gone): dropped,
     * so a client in TIME_WAIT never sees a RST it did not cause. */
    if ((tcp[13] & RS_TCP_F_RST) && f->state == RS_FLOW_ACTIVE && closed_both(t, f))
        goto drop;
    t->last_ns = bpf_ktime_get_ns();
    if (tcp[13] & 0x10) {
        __u32 ack;

        __builtin_memcpy(&ack, tcp + 8, 4);
        ack = bpf_ntohl(ack);
        if (!t->ack_ns || (__s32)(ack - t->ack_hi) > 0) {
            t->ack_hi = ack;
            t->ack_ns = t->last_ns;
        }
    }
    if (t->seen_gen != f->gen) {
        t->seen = 0;    /* re-activated: FIN/RST held back while guarded are reported again */
        t->seen_gen = f->gen;
    }
    hlen = (__u32)(tcp[12] >> 4) * 4;
    if (ip[0] != 0x45 || hlen < RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX)
        goto bad;
    payload = skb->len - TCP_OFF - hlen;
    at_pos = rs_splice_pos_at(&t->pos, tcp);
    /* Before the update: whether a FIN or RST here really ends the stream. */
    at_end = rs_splice_pos_is_end(&t->pos, tcp, payload, at_pos);
    /* A forged end does not move the position, nor does a segment the
     * freeze drops (the daemon is reading the sockets): its sender sends
     * it again, and until then the receiver has not got it.  Counted as
     * received, a FIN retransmitted before the data it follows (a tail
     * loss probe sends the last segment first) would sit "at the end" and
     * be taken for the backend's end of a response the client never got. */
    if ((at_pos || !f->guard || !(tcp[13] & 0x05)) && f->state != RS_FLOW_FROZEN)
        track_seq(skb, &key, f, t, tcp, hlen);
    if (f->state == RS_FLOW_WATCH) {
        /* Before the splice: the stack handles it; remember the sender's
         * clock, which the splice must continue. */
        __u32 ts;

        if (load_tsval(skb, &buf, &ts) == 0)
            t->ts_recent = ts;
        return TC_ACT_OK;
    }
    if (f->acks_to_stack && f->state == RS_FLOW_ACTIVE && skb->len == TCP_OFF + hlen && !(tcp[13] & 0x07))
        return TC_ACT_OK;
    if (f->state == RS_FLOW_ACKONLY && (skb->len > TCP_OFF + hlen || (tcp[13] & 0x05)))
        goto drop;
    if (f->state != RS_FLOW_ACTIVE && f->state != RS_FLOW_ACKONLY)
        goto drop;
    if (f->guard && (tcp[13] & 0x05)) {
        /* Every end from a guarded backend waits for the logger's word,
         * even one after the client's own FIN: a client may close its side
         * right after its last request (shutdown(SHUT_WR)) and still wait
         * for the response, which a crashed backend's FIN would cut short. */
        if (!at_end) {
            /* Not where the sender's stream stands: forged or stale,
             * no failure signal (counted, dropped). */
            __sync_fetch_and_add(&t->ends_refused, 1);
            goto drop;
        }
        evflags = (tcp[13] & 0x01 ? RS_FLOW_SEEN_FIN : 0) | (tcp[13] & 0x04 ? RS_FLOW_SEEN_RST : 0);
        if ((t->seen & evflags) != evflags) {
            t->seen |= evflags;
            if (evflags == RS_FLOW_SEEN_FIN)
                keep_fin(skb, t, hlen, payload);
            report(&key, f, evflags | RS_FLOW_GUARDED, 0, f->gen);
        }
        /* Data that comes with the FIN (a response's last segment; a
         * retransmission merges what is unacknowledged) is the
         * response's, whatever the FIN turns out to be: it passes,
         * only the FIN is held. */
        if ((tcp[13] & 0x04) || !payload)
            goto drop;
        hold_fin = 1;
    }
    if (bpf_skb_load_bytes(skb, TCP_OFF, tcp, hlen) < 0)
        goto bad;
    /* A splice made at the SYN: what each end's SYN announced, kept for
     * the proxy's record of the connection; the backend's SYN-ACK tells
     * the proxy (retransmissions too: it takes the first). */
    if (f->at_syn && (tcp[13] & RS_TCP_F_SYN)) {
        struct rs_syn_info si;
        /* Held until the proxy takes the connection on (RS_AT_SYN_HOLD):
         * kept before the event, which the proxy may read at once. */
        int hold = (f->at_syn & RS_AT_SYN_HOLD) && (tcp[13] & RS_TCP_F_ACK);

        if (hold)
            t->fin_hdr_len = hlen >= RS_TCP_HDR_MIN && hlen <= RS_TCP_HDR_MAX
                             && bpf_skb_load_bytes(skb, TCP_OFF, t->fin_hdr, hlen) == 0 ? hlen : 0;
        if (rs_bpf_syn_info(&buf, hlen, &si) == 0) {
            t->syn = si;
            if (tcp[13] & RS_TCP_F_ACK)
                report(&key, f, RS_FLOW_OPENED, si.isn, f->gen);
        }
        if (hold)
            goto drop;
        name_client = !(tcp[13] & RS_TCP_F_ACK) && payload == 0;
    }
    __builtin_memcpy(old, tcp, sizeof(old));
    if (rs_bpf_splice_tcp(&f->dir, &buf, hlen) < 0)
        goto bad;
    if (f->clamp_ack && (tcp[13] & 0x10))
        clamp_ack(f, tcp);
    if (hold_fin)
        tcp[13] &= ~0x01;       /* the checksum below follows */

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
    if (tcp[13] & 0x01)
        evflags |= RS_FLOW_SEEN_FIN;
    if (tcp[13] & 0x04)
        evflags |= RS_FLOW_SEEN_RST;
    if (evflags && !at_end) {
        /* Forged or stale: passed on (the receiver's TCP judges it), but
         * no end of the splice (counted). */
        __sync_fetch_and_add(&t->ends_refused, 1);
    } else if (evflags && (t->seen & evflags) != evflags) {
        t->seen |= evflags;
        i = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
        report(&key, f, evflags, i, f->gen);
    }
    /* Last, as it moves the checksums' ground: the client's name. */
    if (name_client && syn_name_client(skb, &key, tcp, hlen) < 0)
        goto bad;
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
