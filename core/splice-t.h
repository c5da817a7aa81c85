/* Types of the packet-level splice (splice.h has the code): the state of
 * one of the proxy's connections read at splice time, how one direction is
 * rewritten, where a sender's stream stands, and the TCP constants they
 * use.  No libc: user space, BPF C and the kernel module include it. */
#ifndef RS_SPLICE_T_H
#define RS_SPLICE_T_H

#include "seq.h"

typedef unsigned char rs_u8;
typedef unsigned short rs_u16;
/* Byte index into a header.  64 bits so that, in BPF, the register the
 * compiler bounds-checks is the one it dereferences (a 32-bit index gets
 * re-zero-extended into a copy whose bounds the verifier has lost). */
typedef rs_u64 rs_splice_idx;

/* ---- Types -------------------------------------------------------------- */

/* Error codes, as negative returns.  Spelled out because no libc header is
 * included; the values are Linux's EINVAL and (x86, arm, arm64, riscv,
 * powerpc) EOPNOTSUPP. */
#ifdef __KERNEL__
#include <linux/errno.h>
#define RS_SPLICE_EINVAL     EINVAL
#define RS_SPLICE_EOPNOTSUPP EOPNOTSUPP
#else
#define RS_SPLICE_EINVAL     22
#define RS_SPLICE_EOPNOTSUPP 95
#endif

/* One of the proxy's two connections, read from the proxy's own socket under
 * TCP_REPAIR at splice time, with both socket queues drained (so the send
 * queue's write_seq equals snd_nxt).  All fields host order. */
struct rs_splice_conn {
    rs_u32 local_addr;  /* proxy's IPv4 address on this connection (VIP on C) */
    rs_u32 remote_addr; /* peer's IPv4 address (client on C, backend on S) */
    rs_u16 local_port;
    rs_u16 remote_port;
    rs_u32 snd_nxt;     /* next seq the proxy sends: TCP_QUEUE_SEQ of TCP_SEND_QUEUE */
    rs_u32 rcv_nxt;     /* next seq the proxy expects: TCP_QUEUE_SEQ of TCP_RECV_QUEUE */
    rs_u32 ts_now;      /* TSval the proxy's socket would send now: getsockopt(TCP_TIMESTAMP) */
    rs_u32 ts_recent;   /* newest TSval received from the peer (from the peer's last segment) */
    rs_u8 snd_wscale;   /* scale the peer announced, applied to windows it sends (tcpi_snd_wscale); 0 if none */
    rs_u8 rcv_wscale;   /* scale the proxy announced, applied by the peer to windows the proxy sends (tcpi_rcv_wscale) */
    rs_u8 ts_ok;        /* non-zero when timestamps were negotiated (TCPI_OPT_TIMESTAMPS) */
    rs_u8 sack_ok;      /* non-zero when SACK was negotiated (TCPI_OPT_SACK) */
};

/* Flags of struct rs_splice_dir. */
#define RS_SPLICE_F_TS         (1 << 0) /* translate TSval/TSecr */
#define RS_SPLICE_F_TS_STRIP   (1 << 1) /* overwrite TS options with NOPs: receiver did not negotiate them */
#define RS_SPLICE_F_TS_ABSENT  (1 << 2) /* receiver expects TS but the sender sends none; we cannot add
                                         * bytes, Linux accepts such segments (RFC 7323 lets others drop) */
#define RS_SPLICE_F_SACK       (1 << 3) /* translate SACK block edges */
#define RS_SPLICE_F_SACK_STRIP (1 << 4) /* overwrite SACK options with NOPs: receiver did not negotiate SACK */

/* How to rewrite segments flowing one way (client -> backend or back).
 * Every delta is added mod 2^32 to the field of a segment as received. */
struct rs_splice_dir {
    rs_u32 seq_delta;    /* seq: sender's numbering -> what the receiver expects */
    rs_u32 ack_delta;    /* ack and SACK edges: receiver's data numbering as the sender saw it -> receiver's own */
    rs_u32 tsval_delta;  /* TSval: sender's clock -> continues what the receiver saw from the proxy */
    rs_u32 tsecr_delta;  /* non-zero TSecr: echo of a proxy/peer TSval -> the receiver's own clock */
    rs_u32 saddr;        /* IPv4 source address written into the segment */
    rs_u32 daddr;        /* IPv4 destination address */
    rs_u16 sport;        /* TCP source port written into the segment */
    rs_u16 dport;        /* TCP destination port */
    rs_u8 win_scale_in;  /* scale of the window field as received */
    rs_u8 win_scale_out; /* scale the receiver applies to the window field as sent */
    rs_u8 flags;         /* RS_SPLICE_F_* */
    rs_u8 pad_;
};

#define RS_SPLICE_WSCALE_MAX 14  /* RFC 7323 §2.3 */
#define RS_TCP_HDR_MIN       20
#define RS_TCP_HDR_MAX       60
#define RS_TCP_OPT_MAX       40  /* RS_TCP_HDR_MAX - RS_TCP_HDR_MIN */
#define RS_IP4_HDR_MIN       20

#define RS_TCPOPT_EOL  0
#define RS_TCPOPT_NOP  1
#define RS_TCPOPT_SACK 5
#define RS_TCPOPT_TS   8
#define RS_TCPOPT_MD5  19
#define RS_TCPOPT_AO   29
#define RS_TCPOLEN_TS  10

#define RS_TCP_F_SYN 0x02
#define RS_TCP_F_ACK 0x10

/* Where the options a splice rewrites sit in a TCP header: byte offsets
 * from the header's start, 0 when absent (options start at 20). */
struct rs_splice_optpos {
    rs_splice_idx ts;       /* TS option (10 bytes) */
    rs_splice_idx sack;     /* SACK option */
    rs_splice_idx sack_len; /* its length: 2 + 8n, n in 1..4 */
};

/* Where one sender's byte stream stands, from the segments it sent (raw
 * numbering, as received): for a re-splice "at the current position", for
 * ACK watches, and for the ACK clamp below. */
struct rs_splice_pos {
    rs_u32 seq_next;    /* end of its newest segment (SYN and FIN count one) */
    rs_u32 ack_max;     /* newest ACK number it sent */
    rs_u32 has_seq;     /* seq_next is set */
    rs_u32 has_ack;     /* ack_max is set */
    rs_u32 fin_seen;    /* it sent a FIN at some time: it closed its side for good */
};

#define RS_TCP_F_FIN 0x01
#define RS_TCP_F_RST 0x04

/* ---- A splice made at the client's SYN (rs-proxy --splice-at syn) ------- */

#define RS_TCPOPT_MSS    2
#define RS_TCPOPT_WS     3
#define RS_TCPOPT_SACKOK 4

/* Flags of struct rs_syn_info. */
#define RS_SYN_SEEN (1 << 0)   /* the info is filled in */
#define RS_SYN_WS   (1 << 1)   /* the sender announced a window scale */
#define RS_SYN_SACK (1 << 2)   /* ... SACK-permitted */
#define RS_SYN_TS   (1 << 3)   /* ... timestamps (tsval is its TSval) */

/* What one end announced in its SYN (or SYN-ACK), host order. */
struct rs_syn_info {
    rs_u32 isn;         /* its initial sequence number */
    rs_u32 tsval;
    rs_u16 mss;         /* 0: none announced */
    rs_u8 wscale;
    rs_u8 flags;        /* RS_SYN_* */
    rs_u16 win;         /* its window field */
    rs_u16 pad_;
};

/* The client's name in its SYN, for the backend (which reads it with
 * getsockopt(TCP_SAVED_SYN)): an experimental option (RFC 6994, kind 253)
 * with ExID "RS", then the client's IPv4 address and port.  Two NOPs before
 * it keep the header a multiple of 4 bytes. */
#define RS_TCPOPT_EXP      253
#define RS_IDENT_EXID      0x5253
#define RS_IDENT_OPT_LEN   10
#define RS_IDENT_ROOM      12

#endif /* RS_SPLICE_T_H */
