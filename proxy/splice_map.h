/* The splice table shared by the tc program (proxy/bpf/splice.bpf.c) and
 * rs-proxy: one entry per direction of a spliced connection, keyed by the
 * 4-tuple of segments as they arrive at the proxy.  Types only; compiled
 * by clang -target bpf and by gcc alike. */
#ifndef RS_SPLICE_MAP_H
#define RS_SPLICE_MAP_H

#include "splice.h"

#define RS_SPLICE_MAP_MAX 65536   /* directions spliced at once (two per connection) */
#define RS_SPLICE_EVENTS_BYTES (256 * 1024)

#define RS_TS_MAP_MAX 65536      /* connections whose clients' TSvals are watched before a splice */

/* Where clients connect (network order): segments to it that belong to no
 * splice yet have their TSval recorded in rs_ts, because the splice must
 * continue the client's clock and the proxy's socket does not tell it. */
struct rs_vip {
    rs_u32 addr;
    rs_u16 port;
    rs_u16 pad_;
};

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
    RS_FLOW_HOLD = 3,     /* drop: the backend failed, recovery is re-splicing */
    RS_FLOW_ACKONLY = 4,  /* translate segments without payload (ACKs), drop the rest:
                           * the client's ACKs reach the logger resending to it, its
                           * data waits (unacknowledged) for the alternate */
};

/* Flags of rs_flow.seen and rs_flow_event.flags. */
#define RS_FLOW_SEEN_FIN (1 << 0)
#define RS_FLOW_SEEN_RST (1 << 1)
#define RS_FLOW_GUARDED  (1 << 2)  /* event only: the segment was dropped, not passed */

struct rs_flow {
    struct rs_splice_dir dir;  /* how to rewrite this direction */
    rs_u32 ifindex;            /* where rewritten segments leave */
    rs_u32 state;              /* enum rs_flow_state */
    rs_u64 splice_id;          /* the daemon's id of the connection */
    rs_u64 last_ns;            /* bpf_ktime_get_ns of the last segment */
    rs_u64 pkts;
    rs_u64 bytes;
    rs_u64 dropped;            /* segments dropped while FROZEN or HOLD */
    rs_u64 errors;             /* segments that could not be translated */
    rs_u32 seen;               /* RS_FLOW_SEEN_* */
    rs_u32 ts_recent;          /* newest TSval from the sender, as received (WATCH only) */
    rs_u32 seq_next;           /* end of the sender's newest segment, as received */
    rs_u32 has_seq;            /* seq_next and ts_recent are set */
    rs_u32 ack_max;            /* newest ACK number the sender sent, as received */
    rs_u32 has_ack;
    rs_u32 guard;              /* set by the daemon: drop FIN/RST from this sender and report
                                * them (a backend's end of a connection is a failure signal
                                * unless the logger confirms the application meant it) */
    rs_u32 clamp_ack;          /* set by the daemon: never acknowledge past what the
                                * peer entry's sender has sent (see the tc program) */
    struct rs_flow_key peer;   /* the other direction's entry, for clamp_ack */
};

/* Sent on the ring buffer when a FIN or RST passes a splice. */
struct rs_flow_event {
    struct rs_flow_key key;
    rs_u64 splice_id;
    rs_u64 ns;
    rs_u32 flags;              /* RS_FLOW_SEEN_* of this segment */
    rs_u32 seq;                /* the segment's seq, translated (host order) */
};

#endif /* RS_SPLICE_MAP_H */
