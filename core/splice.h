/* Packet-level TCP splice translation.  Once the proxy has spliced client
 * connection C (client <-> proxy) to backend connection S (proxy <-> backend),
 * every segment is rewritten to fit the other connection: addresses, ports,
 * seq/ack, window (rescaled), timestamps, SACK blocks, with the IPv4 and TCP
 * checksums updated incrementally (RFC 1624).
 *
 * Header-only, no libc: the same code serves user space, BPF C (tc) and the
 * kernel module.  Packet bytes are network order; every number in the
 * structs and every value passed to or returned by a function is host order.
 * Loops have constant bounds and every packet index is checked against a
 * constant maximum.  In BPF, load the IPv4 header (20 bytes) and the TCP
 * header (into a 60-byte stack buffer) separately with bpf_skb_load_bytes,
 * call rs_splice_tcp then rs_splice_ip4_addrs, and store both back; call
 * the option parsing from a global function (proxy/bpf/helpers.h), which
 * the verifier checks once rather than on every path that reaches it.
 * rs_splice_packet, which finds the TCP header at a variable offset in one
 * buffer, is for user space and the kernel module.
 * The checksum helpers assume a complete checksum in the packet, as received
 * from the wire; a CHECKSUM_PARTIAL skb needs the kernel's own helpers.
 * The structs and constants are splice-t.h (what the splice table and the
 * BPF maps hold); this header is the code. */
#ifndef RS_SPLICE_H
#define RS_SPLICE_H

#include "seq.h"
#include "splice-t.h"

/* Keeps the compiler from splitting an index into a checked copy and a
 * dereferenced pointer increment, which the BPF verifier cannot follow
 * (libbpf's barrier_var).  A no-op elsewhere. */
#ifdef __bpf__
#define rs_splice_barrier_var__(v) __asm__ volatile("" : "+r"(v))
#else
#define rs_splice_barrier_var__(v) ((void)0)
#endif

/* ---- Byte order (network-order bytes <-> host-order values) ------------- */

static inline rs_u16 rs_splice_load16(const rs_u8 *p)
{
    return (rs_u16)((p[0] << 8) | p[1]);
}

static inline rs_u32 rs_splice_load32(const rs_u8 *p)
{
    return ((rs_u32)p[0] << 24) | ((rs_u32)p[1] << 16) | ((rs_u32)p[2] << 8) | p[3];
}

static inline void rs_splice_store16(rs_u8 *p, rs_u16 v)
{
    p[0] = (rs_u8)(v >> 8);
    p[1] = (rs_u8)v;
}

static inline void rs_splice_store32(rs_u8 *p, rs_u32 v)
{
    p[0] = (rs_u8)(v >> 24);
    p[1] = (rs_u8)(v >> 16);
    p[2] = (rs_u8)(v >> 8);
    p[3] = (rs_u8)v;
}

/* ---- Incremental checksums (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')) ----
 * 'csum' is the checksum field as a host-order value (rs_splice_load16 of
 * the field); 'old' and 'new' are host-order values of a field whose first
 * byte sits at an even offset from the start of the checksummed data. */

static inline rs_u16 rs_splice_csum_fold__(rs_u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (rs_u16)sum;
}

/* Returns 'csum' updated for a 16-bit field changing from 'old' to 'new'. */
static inline rs_u16 rs_splice_csum_replace16(rs_u16 csum, rs_u16 old, rs_u16 new)
{
    rs_u32 sum = (rs_u16)~csum + (rs_u32)(rs_u16)~old + new;

    return (rs_u16)~rs_splice_csum_fold__(sum);
}

/* Returns 'csum' updated for a 32-bit field changing from 'old' to 'new'. */
static inline rs_u16 rs_splice_csum_replace32(rs_u16 csum, rs_u32 old, rs_u32 new)
{
    rs_u32 sum = (rs_u16)~csum;

    sum += (rs_u16)~(old >> 16);
    sum += (rs_u16)~old;
    sum += new >> 16;
    sum += new & 0xffff;
    return (rs_u16)~rs_splice_csum_fold__(sum);
}

/* Swaps the two bytes of each 16-bit half of 'x'. */
static inline rs_u32 rs_splice_bswap16x2__(rs_u32 x)
{
    return ((x & 0x00ff00ffu) << 8) | ((x >> 8) & 0x00ff00ffu);
}

/* As rs_splice_csum_replace32, for a field at byte offset 'off' from the
 * start of the checksummed data.  TCP options can put a field at an odd
 * offset; the one's complement sum is byte-order independent (RFC 1071), so
 * such a field counts as its byte-swapped 16-bit halves. */
static inline rs_u16 rs_splice_csum_replace32_at(rs_u16 csum, rs_u32 old, rs_u32 new, rs_splice_idx off)
{
    if (off & 1) {
        old = rs_splice_bswap16x2__(old);
        new = rs_splice_bswap16x2__(new);
    }
    return rs_splice_csum_replace32(csum, old, new);
}

/* Returns 'csum' updated for the byte at offset 'off' changing 'old' -> 'new'. */
static inline rs_u16 rs_splice_csum_replace8_at(rs_u16 csum, rs_u8 old, rs_u8 new, rs_splice_idx off)
{
    if (off & 1)
        return rs_splice_csum_replace16(csum, old, new);
    return rs_splice_csum_replace16(csum, (rs_u16)(old << 8), (rs_u16)(new << 8));
}

/* Updates '*ip_csum' (IPv4 header) and '*l4_csum' (TCP, through the pseudo
 * header) for an IPv4 address changing from 'old' to 'new'. */
static inline void rs_splice_csum_replace_addr(rs_u16 *ip_csum, rs_u16 *l4_csum, rs_u32 old, rs_u32 new)
{
    *ip_csum = rs_splice_csum_replace32(*ip_csum, old, new);
    *l4_csum = rs_splice_csum_replace32(*l4_csum, old, new);
}

/* ---- Setup --------------------------------------------------------------- */

/* Fills '*d' for segments that arrive on the proxy's connection 'in' and
 * leave on its connection 'out'. */
static inline void rs_splice_dir_fill__(struct rs_splice_dir *d, const struct rs_splice_conn *in,
                                        const struct rs_splice_conn *out)
{
    d->seq_delta = out->snd_nxt - in->rcv_nxt;
    d->ack_delta = out->rcv_nxt - in->snd_nxt;
    d->tsval_delta = out->ts_now - in->ts_recent;
    d->tsecr_delta = out->ts_recent - in->ts_now;
    d->saddr = out->local_addr;
    d->daddr = out->remote_addr;
    d->sport = out->local_port;
    d->dport = out->remote_port;
    d->win_scale_in = in->snd_wscale;
    d->win_scale_out = out->rcv_wscale;
    d->pad_ = 0;
    d->flags = 0;
    if (in->ts_ok && out->ts_ok)
        d->flags |= RS_SPLICE_F_TS;
    else if (in->ts_ok)
        d->flags |= RS_SPLICE_F_TS_STRIP;
    else if (out->ts_ok)
        d->flags |= RS_SPLICE_F_TS_ABSENT;
    if (in->sack_ok && out->sack_ok)
        d->flags |= RS_SPLICE_F_SACK;
    else if (in->sack_ok)
        d->flags |= RS_SPLICE_F_SACK_STRIP;
}

/* Fills '*c2s' (segments the client sends on 'c', rewritten onto 's') and
 * '*s2c' (segments the backend sends on 's', rewritten onto 'c') from the
 * proxy's client connection 'c' and backend connection 's'.
 *
 * Bytes the client sends next (c->rcv_nxt) become the bytes the backend
 * expects next (s->snd_nxt), and likewise c->snd_nxt <-> s->rcv_nxt, so any
 * bytes the proxy itself already exchanged on either connection are
 * accounted for.  The client's TSvals are shifted to continue from
 * s->ts_now (the newest TSval the backend got from the proxy), the
 * backend's from c->ts_now; TSecr is shifted back the opposite way so each
 * end sees its own clock echoed.  The window the client sends (its scale
 * c->snd_wscale) is re-expressed in the scale the backend applies to the
 * proxy's windows (s->rcv_wscale), and the other way round.
 *
 * Returns 0, or -RS_SPLICE_EINVAL when a window scale exceeds 14 (the
 * outputs are then untouched). */
static inline int rs_splice_init(const struct rs_splice_conn *c, const struct rs_splice_conn *s,
                                 struct rs_splice_dir *c2s, struct rs_splice_dir *s2c)
{
    if (c->snd_wscale > RS_SPLICE_WSCALE_MAX || c->rcv_wscale > RS_SPLICE_WSCALE_MAX ||
        s->snd_wscale > RS_SPLICE_WSCALE_MAX || s->rcv_wscale > RS_SPLICE_WSCALE_MAX)
        return -RS_SPLICE_EINVAL;
    rs_splice_dir_fill__(c2s, c, s);
    rs_splice_dir_fill__(s2c, s, c);
    return 0;
}

/* ---- Field translation (host-order values) ------------------------------ */

static inline rs_u32 rs_splice_seq(const struct rs_splice_dir *d, rs_u32 seq)
{
    return seq + d->seq_delta;
}

/* Also used for SACK block edges, which number the same bytes as ack. */
static inline rs_u32 rs_splice_ack(const struct rs_splice_dir *d, rs_u32 ack)
{
    return ack + d->ack_delta;
}

static inline rs_u32 rs_splice_tsval(const struct rs_splice_dir *d, rs_u32 tsval)
{
    return tsval + d->tsval_delta;
}

/* TSecr 0 means "nothing echoed" (RFC 7323 §3.2) and stays 0. */
static inline rs_u32 rs_splice_tsecr(const struct rs_splice_dir *d, rs_u32 tsecr)
{
    return tsecr ? tsecr + d->tsecr_delta : 0;
}

/* Returns the window field to send for a received field 'win': the real
 * window (win << win_scale_in) in the receiver's scale, rounded down so the
 * advertised window never exceeds the real one, clamped to 65535. */
static inline rs_u16 rs_splice_win(const struct rs_splice_dir *d, rs_u16 win)
{
    /* masks keep a corrupt scale from shifting past 31 bits: 65535 << 15 fits */
    rs_u32 real = (rs_u32)win << (d->win_scale_in & 15);
    rs_u32 out = real >> (d->win_scale_out & 15);

    return out > 0xffff ? 0xffff : (rs_u16)out;
}

/* ---- TCP options ---------------------------------------------------------- */

/* Scans the options of the TCP header 'tcp' of 'hdr_len' bytes (20..60)
 * into '*pos' without writing.  Never reads outside 'tcp'[0..'hdr_len').
 * Returns 0; -RS_SPLICE_EINVAL for a malformed option list (bad 'hdr_len',
 * option length below 2, option running past the header, kind without its
 * length byte, TS length other than 10, SACK length not 2 + 8n with n in
 * 1..4, a second TS or SACK option); or -RS_SPLICE_EOPNOTSUPP for
 * TCP-MD5/TCP-AO, whose signatures a rewrite would break. */
static inline int rs_splice_opts_scan(const rs_u8 *tcp, rs_u32 hdr_len, struct rs_splice_optpos *pos)
{
    rs_splice_idx i = RS_TCP_HDR_MIN, end = hdr_len, kind, olen;

    pos->ts = pos->sack = pos->sack_len = 0;
    if (end < RS_TCP_HDR_MIN || end > RS_TCP_HDR_MAX)
        return -RS_SPLICE_EINVAL;
    /* Bounded by a constant: every pass moves 'i' forward by one (NOP) or by
     * 'olen' >= 2 (checked below; that check is what ends the loop), and 'i'
     * stops at RS_TCP_HDR_MAX, so at most 40 passes.  There is no separate
     * pass counter on purpose: in BPF an exact counter makes every pass a
     * distinct verifier state (over the 1M-instruction budget, and unrolling
     * is worse), while this form verifies in about 10k instructions. */
    while (i < end && i < RS_TCP_HDR_MAX) {
        rs_splice_barrier_var__(i);
        if (i >= end || i >= RS_TCP_HDR_MAX)
            break;
        kind = tcp[i];
        if (kind == RS_TCPOPT_EOL)
            break;
        if (kind == RS_TCPOPT_NOP) {
            i++;
            continue;
        }
        if (i + 1 >= end || i + 1 >= RS_TCP_HDR_MAX)
            return -RS_SPLICE_EINVAL;
        olen = tcp[i + 1];
        if (olen < 2 || olen > end - i) /* olen >= 2 also guarantees progress */
            return -RS_SPLICE_EINVAL;
        if (kind == RS_TCPOPT_TS) {
            if (olen != RS_TCPOLEN_TS || pos->ts)
                return -RS_SPLICE_EINVAL;
            pos->ts = i;
        } else if (kind == RS_TCPOPT_SACK) {
            if (olen < 10 || olen > 34 || (olen - 2) % 8 || pos->sack)
                return -RS_SPLICE_EINVAL;
            pos->sack = i;
            pos->sack_len = olen;
        } else if (kind == RS_TCPOPT_MD5 || kind == RS_TCPOPT_AO) {
            return -RS_SPLICE_EOPNOTSUPP;
        }
        /* MSS, window scale, SACK-permitted (SYN only) and unknown kinds pass */
        i += olen;
    }
    return 0;
}

/* Overwrites 'len' bytes at 'tcp'['i'] with NOPs, returning 'csum' updated. */
static inline rs_u16 rs_splice_opt_nop__(rs_u8 *tcp, rs_splice_idx i, rs_splice_idx len, rs_u16 csum)
{
    rs_splice_idx k, off;

    for (k = 0; k < RS_TCP_OPT_MAX; k++) {
        off = i + k;
        rs_splice_barrier_var__(off);
        if (k >= len || off >= RS_TCP_HDR_MAX)
            break;
        csum = rs_splice_csum_replace8_at(csum, tcp[off], RS_TCPOPT_NOP, off);
        tcp[off] = RS_TCPOPT_NOP;
    }
    return csum;
}

/* Rewrites the options found by rs_splice_opts_scan in the 'hdr_len'-byte
 * header 'tcp' as 'd' says, returning the TCP checksum 'csum' updated.
 * The constant bounds repeat what the scan proved, for the BPF verifier. */
static inline rs_u16 rs_splice_opts_apply__(const struct rs_splice_dir *d, rs_u8 *tcp,
                                            const struct rs_splice_optpos *pos, rs_u16 csum)
{
    rs_splice_idx i = pos->ts, e, off, end;
    rs_u32 oldv, newv;

    rs_splice_barrier_var__(i);
    if (i)      /* two tests, not one merged range test on a copy (see rs_splice_tsval_get) */
        rs_splice_barrier_var__(i);
    else
        i = RS_TCP_HDR_MAX;             /* no TS option: fails the test below */
    if (i <= RS_TCP_HDR_MAX - RS_TCPOLEN_TS) {
        if (d->flags & RS_SPLICE_F_TS) {
            oldv = rs_splice_load32(tcp + i + 2);
            newv = rs_splice_tsval(d, oldv);
            rs_splice_store32(tcp + i + 2, newv);
            csum = rs_splice_csum_replace32_at(csum, oldv, newv, i + 2);
            oldv = rs_splice_load32(tcp + i + 6);
            newv = rs_splice_tsecr(d, oldv);
            rs_splice_store32(tcp + i + 6, newv);
            csum = rs_splice_csum_replace32_at(csum, oldv, newv, i + 6);
        } else if (d->flags & RS_SPLICE_F_TS_STRIP) {
            csum = rs_splice_opt_nop__(tcp, i, RS_TCPOLEN_TS, csum);
        }
    }

    i = pos->sack;
    end = i + pos->sack_len;
    if (!i || end > RS_TCP_HDR_MAX)
        return csum;
    if (d->flags & RS_SPLICE_F_SACK) {
        for (e = 0; e < 8; e++) { /* at most 4 blocks of 2 edges */
            off = i + 2 + 4 * e;
            rs_splice_barrier_var__(off);
            if (off + 4 > end || off > RS_TCP_HDR_MAX - 4)
                break;
            oldv = rs_splice_load32(tcp + off);
            newv = rs_splice_ack(d, oldv);
            rs_splice_store32(tcp + off, newv);
            csum = rs_splice_csum_replace32_at(csum, oldv, newv, off);
        }
    } else if (d->flags & RS_SPLICE_F_SACK_STRIP) {
        csum = rs_splice_opt_nop__(tcp, i, pos->sack_len, csum);
    }
    return csum;
}

/* Rewrites the TS and SACK options of TCP header 'tcp' ('hdr_len' bytes,
 * 20..60) as 'd' says, updating the TCP checksum.  Returns 0, or the
 * negative error of rs_splice_opts_scan with the header unchanged. */
static inline int rs_splice_opts_rewrite(const struct rs_splice_dir *d, rs_u8 *tcp, rs_u32 hdr_len)
{
    struct rs_splice_optpos pos;
    int err = rs_splice_opts_scan(tcp, hdr_len, &pos);

    if (err)
        return err;
    rs_splice_store16(tcp + 16, rs_splice_opts_apply__(d, tcp, &pos, rs_splice_load16(tcp + 16)));
    return 0;
}

/* ---- Whole headers ----------------------------------------------------------- */

/* Rewrites the TCP header at 'tcp' ('len' readable bytes, at least the
 * header with its options): ports, seq, ack (when ACK is set), window
 * (except on SYN, whose window is never scaled), options; updates the TCP
 * checksum for all of them but not for the pseudo header (see
 * rs_splice_ip4_addrs).  Returns 0, -RS_SPLICE_EINVAL when the header is
 * short or malformed, or -RS_SPLICE_EOPNOTSUPP (MD5/AO); on error nothing
 * was written. */
static inline int rs_splice_tcp(const struct rs_splice_dir *d, rs_u8 *tcp, rs_u32 len)
{
    struct rs_splice_optpos pos;
    rs_u32 hdr_len, oldv, newv;
    rs_u16 csum, old16, new16;
    rs_u8 flags;
    int err;

    if (len < RS_TCP_HDR_MIN)
        return -RS_SPLICE_EINVAL;
    hdr_len = (rs_u32)(tcp[12] >> 4) * 4;
    if (hdr_len < RS_TCP_HDR_MIN || hdr_len > len)
        return -RS_SPLICE_EINVAL;
    err = rs_splice_opts_scan(tcp, hdr_len, &pos);
    if (err)
        return err;

    flags = tcp[13];
    csum = rs_splice_load16(tcp + 16);

    old16 = rs_splice_load16(tcp);
    rs_splice_store16(tcp, d->sport);
    csum = rs_splice_csum_replace16(csum, old16, d->sport);
    old16 = rs_splice_load16(tcp + 2);
    rs_splice_store16(tcp + 2, d->dport);
    csum = rs_splice_csum_replace16(csum, old16, d->dport);

    oldv = rs_splice_load32(tcp + 4);
    newv = rs_splice_seq(d, oldv);
    rs_splice_store32(tcp + 4, newv);
    csum = rs_splice_csum_replace32(csum, oldv, newv);

    if (flags & RS_TCP_F_ACK) {
        oldv = rs_splice_load32(tcp + 8);
        newv = rs_splice_ack(d, oldv);
        rs_splice_store32(tcp + 8, newv);
        csum = rs_splice_csum_replace32(csum, oldv, newv);
    }

    if (!(flags & RS_TCP_F_SYN)) {
        old16 = rs_splice_load16(tcp + 14);
        new16 = rs_splice_win(d, old16);
        rs_splice_store16(tcp + 14, new16);
        csum = rs_splice_csum_replace16(csum, old16, new16);
    }

    rs_splice_store16(tcp + 16, rs_splice_opts_apply__(d, tcp, &pos, csum));
    return 0;
}

/* Rewrites the addresses of IPv4 header 'ip' (20 bytes or more) to
 * d->saddr/d->daddr, updating the IPv4 header checksum and, through the
 * pseudo header, the checksum of the TCP header 'tcp'. */
static inline void rs_splice_ip4_addrs(const struct rs_splice_dir *d, rs_u8 *ip, rs_u8 *tcp)
{
    rs_u16 ip_csum = rs_splice_load16(ip + 10), tcp_csum = rs_splice_load16(tcp + 16);

    rs_splice_csum_replace_addr(&ip_csum, &tcp_csum, rs_splice_load32(ip + 12), d->saddr);
    rs_splice_csum_replace_addr(&ip_csum, &tcp_csum, rs_splice_load32(ip + 16), d->daddr);
    rs_splice_store32(ip + 12, d->saddr);
    rs_splice_store32(ip + 16, d->daddr);
    rs_splice_store16(ip + 10, ip_csum);
    rs_splice_store16(tcp + 16, tcp_csum);
}

/* Translates the IPv4/TCP packet at 'pkt' ('len' readable bytes, from the
 * IPv4 header on; the TCP payload need not be present as long as the IPv4
 * total length covers it: only header bytes are read or written) for
 * direction 'd'.
 * Returns 0; -RS_SPLICE_EINVAL when 'pkt' is not a well-formed IPv4 TCP
 * packet (short, bad version/IHL/total length/data offset, not TCP) or its
 * options are malformed; -RS_SPLICE_EOPNOTSUPP for a fragment or a segment
 * carrying TCP-MD5/TCP-AO.  On error 'pkt' is unchanged. */
static inline int rs_splice_packet(const struct rs_splice_dir *d, rs_u8 *pkt, rs_u32 len)
{
    rs_u32 ihl, tot;
    int err;

    if (len < RS_IP4_HDR_MIN + RS_TCP_HDR_MIN || (pkt[0] >> 4) != 4)
        return -RS_SPLICE_EINVAL;
    ihl = (rs_u32)(pkt[0] & 0x0f) * 4;
    tot = rs_splice_load16(pkt + 2);
    if (ihl < RS_IP4_HDR_MIN || tot < ihl + RS_TCP_HDR_MIN || pkt[9] != 6 /* TCP */)
        return -RS_SPLICE_EINVAL;
    /* the header bytes must be readable; the payload only has to be declared */
    if (ihl + RS_TCP_HDR_MIN > len)
        return -RS_SPLICE_EINVAL;
    if (rs_splice_load16(pkt + 6) & 0x3fff) /* MF or a fragment offset */
        return -RS_SPLICE_EOPNOTSUPP;
    if ((rs_u32)(pkt[ihl + 12] >> 4) * 4 > tot - ihl)
        return -RS_SPLICE_EINVAL;
    err = rs_splice_tcp(d, pkt + ihl, len - ihl);
    if (err)
        return err;
    rs_splice_ip4_addrs(d, pkt, pkt + ihl);
    return 0;
}

/* ---- What the data path keeps of each sender (struct rs_splice_pos) ---------------- */

/* How far one segment may move a position (its sequence or its ACK): more
 * than any TCP window (Linux's largest receive buffer is a few MB by
 * default, a window at most 1 GB), so a segment that would move it further
 * is forged or garbage (a blind spoofer's random sequence number lands
 * here with probability 2^25 / 2^32, under 1 %) and is not followed. */
#define RS_SPLICE_POS_JUMP_MAX (1u << 25)

/* Follows the ACK of segment 'tcp' (a TCP header, at least 20 bytes)
 * only: a segment whose data (and FIN) will not reach its receiver, which
 * the data path drops for good, acknowledges what its sender received all
 * the same.  Returns its ACK number when it carried one (and sets
 * '*has_ack'). */
static inline rs_u32 rs_splice_pos_ack(struct rs_splice_pos *p, const rs_u8 *tcp, int *has_ack)
{
    rs_u32 ack = 0;

    *has_ack = (tcp[13] & RS_TCP_F_ACK) != 0;
    if (*has_ack) {
        ack = rs_splice_load32(tcp + 8);
        if (!p->has_ack || (rs_seq_gt(ack, p->ack_max) && ack - p->ack_max <= RS_SPLICE_POS_JUMP_MAX)) {
            p->ack_max = ack;
            p->has_ack = 1;
        }
    }
    return ack;
}

/* Follows segment 'tcp' (a TCP header, at least 20 bytes) that carried
 * 'payload' bytes of data.  Returns its ACK number when it carried one (and
 * sets '*has_ack'). */
static inline rs_u32 rs_splice_pos_update(struct rs_splice_pos *p, const rs_u8 *tcp, rs_u32 payload,
                                          int *has_ack)
{
    rs_u32 seq = rs_splice_load32(tcp + 4);
    rs_u32 end = seq + payload + ((tcp[13] & (RS_TCP_F_SYN | RS_TCP_F_FIN)) ? 1 : 0);

    if (!p->has_seq || (rs_seq_gt(end, p->seq_next) && end - p->seq_next <= RS_SPLICE_POS_JUMP_MAX)) {
        p->seq_next = end;
        p->has_seq = 1;
    }
    if (tcp[13] & RS_TCP_F_FIN)
        p->fin_seen = 1;
    return rs_splice_pos_ack(p, tcp, has_ack);
}

/* Whether segment 'tcp' starts where the sender's stream stands (before
 * rs_splice_pos_update of it), or nothing is known of the sender yet.  A
 * FIN or RST is a sender's real end only there: one elsewhere is a
 * retransmission or forged (RFC 5961 asks a RST to sit exactly at the
 * next expected sequence number), and must not end or move a connection. */
static inline int rs_splice_pos_at(const struct rs_splice_pos *p, const rs_u8 *tcp)
{
    return !p->has_seq || rs_splice_load32(tcp + 4) == p->seq_next;
}

/* Whether FIN or RST segment 'tcp' (carrying 'payload' bytes) is the
 * sender's real end, given 'at' = rs_splice_pos_at before its update: at
 * the stream's position, or the retransmission of the FIN already
 * followed (ending exactly where that FIN left the position).  The data
 * path may hold a FIN back and let its retransmission through later; that
 * retransmission still ends the connection. */
static inline int rs_splice_pos_is_end(const struct rs_splice_pos *p, const rs_u8 *tcp, rs_u32 payload, int at)
{
    if (at)
        return 1;
    return (tcp[13] & RS_TCP_F_FIN) && !(tcp[13] & RS_TCP_F_RST) && p->fin_seen
        && rs_splice_load32(tcp + 4) + payload + 1 == p->seq_next;
}

/* Whether the connection of two directions ('own': a sender's position
 * and its entry's translation; 'peer': the other direction's) closed in
 * full: each sender sent its FIN and the other acknowledged it (each
 * ACK, as its sender numbered it, translated by its entry into the data
 * sender's own numbering).  Its receivers are then in TIME_WAIT or
 * closed: a RST now answers a segment that came after the end (a FIN sent
 * again crossed the last ACK, and the socket it reached is gone) and
 * tells nobody anything. */
static inline int rs_splice_closed_both(const struct rs_splice_pos *own, const struct rs_splice_dir *own_dir,
                                        const struct rs_splice_pos *peer, const struct rs_splice_dir *peer_dir)
{
    return own->fin_seen && own->has_seq && own->has_ack && peer->fin_seen && peer->has_seq && peer->has_ack
        && rs_seq_ge(rs_splice_ack(peer_dir, peer->ack_max), own->seq_next)
        && rs_seq_ge(rs_splice_ack(own_dir, own->ack_max), peer->seq_next);
}

/* After a re-splice the new server regenerates a response whose first p
 * bytes the client already has: the client's (translated) ACK can then be
 * ahead of anything the server has sent, and a TCP drops such ACKs — the
 * server would stall.  Bytes below the client's ACK are bytes the client
 * holds, so acknowledging everything the server has sent so far ('sent',
 * its rs_splice_pos.seq_next) is exact; the window grows by the same
 * amount so its right edge stays ('win_scale': the receiver's, as in
 * rs_splice_dir.win_scale_out).  'tcp' is a translated segment with ACK
 * set; the checksum is updated.  Returns the bytes the ACK moved back (0:
 * untouched). */
static inline rs_u32 rs_splice_clamp_ack(rs_u8 *tcp, rs_u32 sent, rs_u8 win_scale)
{
    rs_u32 ack = rs_splice_load32(tcp + 8), d, real, w;
    rs_u16 csum = rs_splice_load16(tcp + 16), oldw = rs_splice_load16(tcp + 14), neww;

    if (!rs_seq_gt(ack, sent))
        return 0;
    d = ack - sent;
    real = ((rs_u32)oldw << (win_scale & 15)) + d;
    w = real >> (win_scale & 15);
    neww = (rs_u16)(w > 0xffff ? 0xffff : w);
    rs_splice_store32(tcp + 8, sent);
    rs_splice_store16(tcp + 14, neww);
    csum = rs_splice_csum_replace32(csum, ack, sent);
    rs_splice_store16(tcp + 16, rs_splice_csum_replace16(csum, oldw, neww));
    return d;
}

/* The TSval of TCP header 'tcp' ('hdr_len' bytes).  Returns 0 and sets
 * '*tsval', or -RS_SPLICE_EINVAL when the header carries none (or its
 * options are malformed). */
static inline int rs_splice_tsval_get(const rs_u8 *tcp, rs_u32 hdr_len, rs_u32 *tsval)
{
    struct rs_splice_optpos pos;
    rs_splice_idx i;

    if (hdr_len <= RS_TCP_HDR_MIN || hdr_len > RS_TCP_HDR_MAX || rs_splice_opts_scan(tcp, hdr_len, &pos) || !pos.ts)
        return -RS_SPLICE_EINVAL;
    /* Apart from the test above: merged into one range test on a copy,
     * the bound would not reach the index for older verifiers (6.1). */
    i = pos.ts;
    rs_splice_barrier_var__(i);
    if (i > RS_TCP_HDR_MAX - RS_TCPOLEN_TS)
        return -RS_SPLICE_EINVAL;
    *tsval = rs_splice_load32(tcp + i + 2);
    return 0;
}

/* ---- A splice made at the client's SYN ------------------------------------------ */

/* Reads what SYN (or SYN-ACK) 'tcp' ('hdr_len' bytes: 20..60) announces
 * into '*si': its sequence number and its MSS, window scale, SACK-permitted
 * and timestamp options.  Never reads outside 'tcp'[0..'hdr_len').  Returns
 * 0, or -RS_SPLICE_EINVAL when it is no SYN, when its option list is
 * malformed (as rs_splice_opts_scan judges it, and an MSS, window scale or
 * SACK-permitted option of the wrong length) or carries TCP-MD5/AO (which
 * no splice carries).  Its loop is rs_splice_opts_scan's on purpose: one
 * loop recording these options too went over the verifier's budget. */
static inline int rs_splice_syn_info(const rs_u8 *tcp, rs_u32 hdr_len, struct rs_syn_info *si)
{
    rs_splice_idx i = RS_TCP_HDR_MIN, end = hdr_len, kind, olen, v;

    si->isn = si->tsval = 0;
    si->mss = si->win = si->pad_ = 0;
    si->wscale = si->flags = 0;
    if (end < RS_TCP_HDR_MIN || end > RS_TCP_HDR_MAX || !(tcp[13] & RS_TCP_F_SYN))
        return -RS_SPLICE_EINVAL;
    si->isn = rs_splice_load32(tcp + 4);
    si->win = rs_splice_load16(tcp + 14);
    /* Bounded as rs_splice_opts_scan's loop is (see there). */
    while (i < end && i < RS_TCP_HDR_MAX) {
        rs_splice_barrier_var__(i);
        if (i >= end || i >= RS_TCP_HDR_MAX)
            break;
        kind = tcp[i];
        if (kind == RS_TCPOPT_EOL)
            break;
        if (kind == RS_TCPOPT_NOP) {
            i++;
            continue;
        }
        /* The length byte's index: a copy of its own, tested against the
         * constant on that very register (6.1's verifier learns nothing
         * from a test against 'end', a register). */
        v = i + 1;
        rs_splice_barrier_var__(v);
        if (v >= end || v >= RS_TCP_HDR_MAX)
            return -RS_SPLICE_EINVAL;
        olen = tcp[v];
        if (olen < 2 || olen > end - i || kind == RS_TCPOPT_MD5 || kind == RS_TCPOPT_AO)
            return -RS_SPLICE_EINVAL;
        /* The option's value at 'v': a copy the verifier bounds on its
         * own (as rs_splice_tsval_get's index). */
        v = i + 2;
        rs_splice_barrier_var__(v);
        if (kind == RS_TCPOPT_MSS) {
            if (olen != 4 || v > RS_TCP_HDR_MAX - 2)
                return -RS_SPLICE_EINVAL;
            si->mss = rs_splice_load16(tcp + v);
        } else if (kind == RS_TCPOPT_WS) {
            if (olen != 3 || v > RS_TCP_HDR_MAX - 1)
                return -RS_SPLICE_EINVAL;
            si->wscale = tcp[v] > RS_SPLICE_WSCALE_MAX ? RS_SPLICE_WSCALE_MAX : tcp[v];
            si->flags |= RS_SYN_WS;
        } else if (kind == RS_TCPOPT_SACKOK) {
            if (olen != 2)
                return -RS_SPLICE_EINVAL;
            si->flags |= RS_SYN_SACK;
        } else if (kind == RS_TCPOPT_TS) {
            if (olen != RS_TCPOLEN_TS || v > RS_TCP_HDR_MAX - 4)
                return -RS_SPLICE_EINVAL;
            si->tsval = rs_splice_load32(tcp + v);
            si->flags |= RS_SYN_TS;
        }
        i += olen;
    }
    si->flags |= RS_SYN_SEEN;
    return 0;
}

/* Writes the RS_IDENT_ROOM bytes of the option naming client 'addr':'port'
 * (host order) at 'p'. */
static inline void rs_ident_opt_put(rs_u8 *p, rs_u32 addr, rs_u16 port)
{
    p[0] = p[1] = RS_TCPOPT_NOP;
    p[2] = RS_TCPOPT_EXP;
    p[3] = RS_IDENT_OPT_LEN;
    rs_splice_store16(p + 4, RS_IDENT_EXID);
    rs_splice_store32(p + 6, addr);
    rs_splice_store16(p + 10, port);
}

/* Reads the option naming a client from TCP header 'tcp' ('hdr_len'
 * bytes) and returns 0 with the client in '*addr':'*port' (host order);
 * -1 when there is none.  Only the header's last RS_IDENT_ROOM bytes are
 * read, exactly as rs_ident_opt_put wrote them: the tc program appends the
 * option after all the client's own, so one a client put in its SYN to
 * name somebody else is never believed, nor is the name lost after a
 * client's end-of-options (a macOS SYN's).  (A client that reaches the
 * backend without the proxy could still name anyone: backends take
 * connections from the proxy alone, as the PROXY header's readers do.) */
static inline int rs_ident_opt_get(const rs_u8 *tcp, rs_u32 hdr_len, rs_u32 *addr, rs_u16 *port)
{
    const rs_u8 *p;

    if (hdr_len < RS_TCP_HDR_MIN + RS_IDENT_ROOM || hdr_len > RS_TCP_HDR_MAX)
        return -1;
    p = tcp + hdr_len - RS_IDENT_ROOM;
    if (p[0] != RS_TCPOPT_NOP || p[1] != RS_TCPOPT_NOP || p[2] != RS_TCPOPT_EXP || p[3] != RS_IDENT_OPT_LEN
        || rs_splice_load16(p + 4) != RS_IDENT_EXID)
        return -1;
    *addr = rs_splice_load32(p + 6);
    *port = rs_splice_load16(p + 10);
    return 0;
}

/* Writes into 'tcp' (RS_TCP_HDR_MAX bytes) the SYN that '*si' describes
 * (Linux's option order: MSS, SACK-permitted, TS, NOP, window scale), as
 * its client sent it: ports zero, no name (the tc program adds it).
 * Returns its length. */
static inline rs_u32 rs_syn_build(const struct rs_syn_info *si, rs_u8 *tcp)
{
    rs_u32 n = RS_TCP_HDR_MIN, i;

    for (i = 0; i < RS_TCP_HDR_MAX; i++)
        tcp[i] = 0;
    rs_splice_store32(tcp + 4, si->isn);
    tcp[13] = RS_TCP_F_SYN;
    rs_splice_store16(tcp + 14, si->win);
    if (si->mss) {
        tcp[n] = RS_TCPOPT_MSS;
        tcp[n + 1] = 4;
        rs_splice_store16(tcp + n + 2, si->mss);
        n += 4;
    }
    if (si->flags & RS_SYN_SACK) {
        tcp[n] = RS_TCPOPT_SACKOK;
        tcp[n + 1] = 2;
        n += 2;
    }
    if (si->flags & RS_SYN_TS) {
        tcp[n] = RS_TCPOPT_TS;
        tcp[n + 1] = RS_TCPOLEN_TS;
        rs_splice_store32(tcp + n + 2, si->tsval);
        n += RS_TCPOLEN_TS;
    }
    if (si->flags & RS_SYN_WS) {
        tcp[n] = RS_TCPOPT_NOP;
        tcp[n + 1] = RS_TCPOPT_WS;
        tcp[n + 2] = 3;
        tcp[n + 3] = si->wscale;
        n += 4;
    }
    while (n % 4)
        tcp[n++] = RS_TCPOPT_NOP;
    tcp[12] = (rs_u8)(n / 4 << 4);
    return n;
}

/* The proxy's client connection of a splice made at the SYN, as though
 * the proxy had accepted it and answered with the backend's SYN-ACK: the
 * record a recovery starts from (struct rs_flow_conn).  'syn' is what the
 * client's SYN announced, 'synack' the backend's SYN-ACK; 'vip':'vport'
 * where the client connected, 'client':'cport' the client (host order).
 * A window scale is in effect only when both ends announced one, and
 * likewise timestamps and SACK (RFC 7323, RFC 2018). */
static inline void rs_splice_syn_conn(const struct rs_syn_info *syn, const struct rs_syn_info *synack, rs_u32 vip,
                                      rs_u16 vport, rs_u32 client, rs_u16 cport, struct rs_splice_conn *c)
{
    int ws = (syn->flags & RS_SYN_WS) && (synack->flags & RS_SYN_WS);

    c->local_addr = vip;
    c->remote_addr = client;
    c->local_port = vport;
    c->remote_port = cport;
    c->snd_nxt = synack->isn + 1;
    c->rcv_nxt = syn->isn + 1;
    c->ts_now = synack->tsval;
    c->ts_recent = syn->tsval;
    c->snd_wscale = ws ? syn->wscale : 0;
    c->rcv_wscale = ws ? synack->wscale : 0;
    c->ts_ok = (syn->flags & RS_SYN_TS) && (synack->flags & RS_SYN_TS);
    c->sack_ok = (syn->flags & RS_SYN_SACK) && (synack->flags & RS_SYN_SACK);
}

#endif /* RS_SPLICE_H */
