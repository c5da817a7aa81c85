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

/* Follows the sender's position (rs_splice_pos_update) and reports an ACK
 * watch the daemon armed once the sender's ACK reaches it (recovery waits
 * for those without polling). */
static __always_inline void track_seq(struct __sk_buff *skb, const struct rs_flow_key *k, const struct rs_flow *f,
                                      struct rs_flow_track *t, const __u8 *tcp, __u32 hlen)
{
    int has_ack;
    __u32 ack = rs_splice_pos_update(&t->pos, tcp, skb->len - TCP_OFF - hlen, &has_ack);

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

#endif /* RS_BPF_HELPERS_H */
