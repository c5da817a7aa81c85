/* The splice table shared by the tc program (proxy/bpf/splice.bpf.c) and
 * rs-proxy: one pair of entries per direction of a spliced connection,
 * keyed by the 4-tuple of segments as they arrive at the proxy.
 *
 * Each field has one writer, so neither side can lose the other's update:
 * rs_flows (struct rs_flow) is written by the daemon only, rs_track
 * (struct rs_flow_track) by the tc program only (the daemon creates it
 * zeroed and deletes it).  Types only; compiled by clang -target bpf and
 * by gcc alike. */
#ifndef RS_SPLICE_MAP_H
#define RS_SPLICE_MAP_H

#include <linux/bpf.h>

#include "splice-t.h"

#define RS_SPLICE_MAP_MAX 65536   /* directions spliced at once (two per connection) */
#define RS_SPLICE_EVENTS_BYTES (1024 * 1024)   /* 1000 connections' FINs, RSTs and ACK watches at once */

#define RS_TS_MAP_MAX 65536      /* connections whose clients' TSvals are watched before a splice */

/* New connections whose proxy is gone wait this long for its successor
 * (see struct rs_vip). */
#define RS_VIP_SUCCESSOR_NS (5000ull * 1000000ull)

/* Where clients connect (network order): segments to it that belong to no
 * splice yet have their TSval recorded in rs_ts, because the splice must
 * continue the client's clock and the proxy's socket does not tell it. */
struct rs_vip {
    rs_u32 addr;
    rs_u16 port;
    rs_u16 listens;            /* non-zero: the proxy listens on the VIP here, and a SYN that
                                * finds no socket listening (its death closed them all at
                                * once) is dropped as after its lease, which runs on up to
                                * its length: clients spliced meanwhile by a dead proxy's
                                * program would reach nobody once a pair's other proxy
                                * holds the VIP (the tc program only) */
    rs_u64 lease_ns;           /* the proxy is alive until then (bpf_ktime_get_ns; renewed
                                * as it runs, ended by a stop; 0: no lease).  For
                                * RS_VIP_SUCCESSOR_NS after a lease ran out, new connections'
                                * SYNs are dropped: their clients retry them and the
                                * successor takes them, where the host would refuse them */
};

/* Splicing at the client's SYN (rs-proxy --splice-at syn; one entry):
 * a SYN to the VIP that belongs to no splice takes a port of the proxy's
 * from rs_syn_ports (which rs-proxy fills) and becomes a splice to the
 * backend named here, set up by the tc program alone: both entries made
 * with zero deltas (client and backend negotiate their options end to
 * end), the client's name added to the SYN.  rs-proxy learns of it from
 * the backend's SYN-ACK (RS_FLOW_OPENED) and takes the connection on as
 * though it had spliced it.  With the port queue empty, or 'on' zero, a
 * SYN goes to the stack's listener as before. */
struct rs_syn_cfg {
    rs_u32 backend_addr;       /* network order, as the entries' keys */
    rs_u32 local_addr;         /* the proxy's address towards it */
    rs_u16 backend_port;
    rs_u16 on;                 /* non-zero: splice at the SYN; RS_SYN_EVENTS_WAKE too: report
                                * every event on the ring that wakes rs-proxy (a pair's
                                * standby must learn of each connection at once) */
    rs_u32 ifindex;            /* where the segments leave */
    rs_u32 guard;              /* the backend entry's rs_flow.guard */
};

#define RS_SYN_EVENTS_WAKE 2      /* rs_syn_cfg.on */
#define RS_SYN_HOLD_SYNACK 4      /* rs_syn_cfg.on: each backend's entry is made with
                                   * RS_AT_SYN_HOLD (a pair's active proxy) */
/* rs_flow.at_syn of a backend's entry: its SYN-ACK is held (dropped, the
 * header kept in the track's fin_hdr, the event reported) until the daemon
 * has taken the connection on and clears this; the daemon sends the kept
 * one, retransmissions pass.  A pair's active proxy thus copies each new
 * connection to its standby before its client can use it: should it die
 * first, the client sends its SYN again, to whichever proxy holds the VIP
 * by then, instead of holding a connection no proxy knows. */
#define RS_AT_SYN_HOLD 2

#define RS_SYN_ID_BASE (1ull << 62)   /* the tc program's splice ids; below: the daemon's */

/* Address fields in network order, exactly as read from the packet. */
struct rs_flow_key {
    rs_u32 saddr;
    rs_u32 daddr;
    rs_u16 sport;
    rs_u16 dport;
};

enum rs_flow_state {
    RS_FLOW_WATCH = 0,    /* pass to the stack; record the sender's TSval and seq */
    RS_FLOW_ACTIVE = 1,   /* translate and redirect */
    RS_FLOW_FROZEN = 2,   /* drop: the daemon is reading socket state (microseconds) */
    RS_FLOW_HOLD = 3,     /* drop: the sender failed or was moved off (fenced), or
                           * recovery is re-splicing the connection */
    RS_FLOW_ACKONLY = 4,  /* translate segments without payload (ACKs), drop the rest:
                           * the client's ACKs reach the logger resending to it, its
                           * data waits (unacknowledged) for the alternate */
};

/* Flags of rs_flow_track.seen and rs_flow_event.flags. */
#define RS_FLOW_SEEN_FIN (1 << 0)
#define RS_FLOW_SEEN_RST (1 << 1)
#define RS_FLOW_GUARDED  (1 << 2)  /* event only: the segment was dropped, not passed */
#define RS_FLOW_ACKED    (1 << 3)  /* event only: the sender acknowledged rs_flow.ack_watch */
#define RS_FLOW_OPENED   (1 << 4)  /* event only: a backend's SYN-ACK passed a splice made at the SYN */
#define RS_FLOW_STALE    (1 << 5)  /* event only: a backend answered a splice made at the SYN with a
                                    * bare ACK (an old connection holds the port there, a TIME_WAIT
                                    * another proxy left): dropped; seq is that ACK's number */
#define RS_FLOW_REFUSED  (1 << 6)  /* event only: a guarded backend reset a splice made at the SYN
                                    * before answering it (nothing listens there): dropped */
#define RS_FLOW_UNANSWERED (1 << 7) /* event only: the client sent its SYN again on a splice made at
                                    * the SYN that its backend has not answered; seq: the
                                    * microseconds since its previous SYN (the SYN passes) */
#define RS_REUSED_PASSED  1        /* rs_flow_track.reused */
#define RS_REUSED_DROPPED 2
#define RS_FLOW_REUSED   (1 << 8)  /* event only: a client's bare SYN came on its ended connection's
                                    * entry (a splice made at the SYN lingers): dropped, what it
                                    * announced kept in the entry's rs_flow_track.syn */

/* What the daemon needs, besides the translation, to go on with a spliced
 * connection: kept in the client's entry (zero in the others), so a proxy
 * started on the same interface adopts its predecessor's connections from
 * the table alone (proxy/adopt.c).  Written at the splice and after every
 * completed move. */
struct rs_flow_conn {
    rs_u64 ts_base_us;         /* CLOCK_REALTIME when c.ts_now was read (0: no record) */
    struct rs_splice_conn c;   /* the proxy's client connection when spliced */
    rs_u32 rtt_us;             /* the client's smoothed RTT then */
    rs_u32 backend_ip;         /* the server the client is spliced to, and the */
    rs_u32 local_ip;           /* proxy's end towards it (host order) */
    rs_u16 backend_port;
    rs_u16 local_port;
};

/* How a direction is handled: the daemon's half. */
struct rs_flow {
    struct rs_splice_dir dir;  /* how to rewrite this direction */
    rs_u32 ifindex;            /* where rewritten segments leave */
    rs_u32 state;              /* enum rs_flow_state */
    rs_u64 splice_id;          /* the daemon's id of the connection */
    rs_u32 guard;              /* drop FIN/RST from this sender and report them (a backend's
                                * end of a connection is a failure signal unless the logger
                                * confirms the application meant it, even after the client's
                                * own FIN; data a FIN carries passes without it) */
    rs_u32 clamp_ack;          /* never acknowledge past what the 'peer' entry's sender has
                                * sent (see the tc program) */
    struct rs_flow_key peer;   /* the other direction of the same splice (zero: none) */
    rs_u32 gen;                /* bumped at each (re)activation: 'seen' starts afresh */
    rs_u32 ack_watch;          /* report RS_FLOW_ACKED once the sender's ACK reaches this */
    rs_u32 ack_watch_gen;      /* non-zero: the watch is armed; a new watch, a new value */
    rs_u32 at_syn;             /* made by the tc program at the client's SYN (--splice-at syn):
                                * the client's entry adds the client's name to its SYNs
                                * (RS_IDENT), the backend's reports its SYN-ACK (RS_FLOW_OPENED) */
    rs_u32 acks_to_stack;      /* pass segments without payload, FIN, RST or SYN to the stack
                                * untranslated: the proxy's own socket is still sending to
                                * this sender (a re-splice's first bytes) and needs its ACKs */
    struct bpf_spin_lock lock; /* never taken here: its presence makes the daemon's updates
                                * (BPF_F_LOCK) write the entry in place.  A replacing update
                                * recycles the old element at once (a preallocated hash map
                                * keeps it as the CPU's spare), so the tc program, still
                                * reading it on another CPU, would see another entry's values
                                * (a backend's segment sent to the backend's address) */
    struct rs_flow_conn conn;  /* the client's entry only: see above (never read here) */
};

/* What the tc program saw of a direction: the tc program's half. */
struct rs_flow_track {
    rs_u64 last_ns;            /* bpf_ktime_get_ns of the last segment */
    rs_u64 pkts;               /* translated and redirected */
    rs_u64 bytes;
    rs_u64 dropped;            /* segments dropped while FROZEN, HOLD or ACKONLY */
    rs_u64 errors;             /* segments that could not be translated */
    rs_u32 seen;               /* RS_FLOW_SEEN_* since activation 'seen_gen' */
    rs_u32 seen_gen;
    rs_u32 ts_recent;          /* newest TSval from the sender, as received (WATCH only) */
    rs_u32 acked_gen;          /* the last ack_watch_gen reported */
    struct rs_splice_pos pos;  /* where the sender's stream stands, in any state */
    rs_u32 ends_refused;       /* FIN/RST not at the stream's position
                                * (rs_splice_pos_at), never reported: a guarded
                                * one is dropped, another passed on (the
                                * receiver's TCP judges it) */
    rs_u32 ack_hi;             /* the sender's highest ACK number (its own numbering) */
    rs_u64 ack_ns;             /* when it last moved: a backend that stops reading a
                                * request stops moving it, though it still answers probes */
    rs_u32 reused;             /* a bare SYN came after the sender's end: a new connection on
                                * the same 4-tuple, whose segments go to the stack until the
                                * daemon replaces the entry; RS_REUSED_DROPPED: that SYN was
                                * dropped and RS_FLOW_REUSED reported, for the daemon to
                                * remove the entry and send the SYN again */
    rs_u32 fin_hdr_len;        /* non-zero: fin_hdr holds the TCP header of the FIN the guard
                                * held last (as received; seq moved past any data it carried,
                                * which passed), so the daemon can release it at once when the
                                * logger says the end was meant, without the sender's RTO;
                                * before that, a backend's SYN-ACK held (RS_AT_SYN_HOLD) */
    rs_u8 fin_hdr[RS_TCP_HDR_MAX];
    struct rs_syn_info syn;    /* what the sender's SYN announced (a splice made at the SYN;
                                * after RS_FLOW_REUSED, the new connection's SYN) */
};

/* Sent on the ring buffer when a FIN or RST passes (or is held at) a
 * splice, and when an ACK watch is reached. */
struct rs_flow_event {
    struct rs_flow_key key;
    rs_u64 splice_id;
    rs_u64 ns;
    rs_u32 flags;              /* RS_FLOW_SEEN_*, RS_FLOW_GUARDED, RS_FLOW_ACKED */
    rs_u32 seq;                /* FIN/RST: the segment's seq, translated (host order); ACKED: the ack */
    rs_u32 gen;                /* ACKED: the ack_watch_gen it answers */
    rs_u32 pad_;
};

#endif /* RS_SPLICE_MAP_H */
