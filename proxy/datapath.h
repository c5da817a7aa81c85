/* rs-proxy's data path, behind one ops table: the splice table (a pair of
 * entries per spliced connection, splice_map.h) and whatever rewrites and
 * redirects the segments of spliced connections.  The model is iproute2's
 * qdisc_util: an implementation fills a struct px_datapath_ops, and
 * px_datapath_find() picks one by the name --datapath gives: "ebpf"
 * (dp_ebpf.c, the tc program of proxy/bpf/) or "kmod" (dp_kmod.c, the
 * seed's kernel module kmod/tcpspmod.c).  The daemon calls the px_dp_* wrappers
 * below and never an implementation directly. */
#ifndef RS_PROXY_DATAPATH_H
#define RS_PROXY_DATAPATH_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "splice_map.h"

/* The daemon's and the data path's halves of one entry. */
struct px_flow_info {
    struct rs_flow cfg;
    struct rs_flow_track t;
};

/* The single-valued fields of an entry's daemon half that px_dp_set writes. */
enum px_dp_field {
    PX_DP_STATE,            /* enum rs_flow_state */
    PX_DP_ACKS_TO_STACK,    /* rs_flow.acks_to_stack */
    PX_DP_CLAMP_ACK,        /* rs_flow.clamp_ack */
    PX_DP_AT_SYN,           /* rs_flow.at_syn */
};

typedef void (*px_dp_event_cb)(void *arg, const struct rs_flow_event *ev);
/* Entry 'k''s daemon half changed ('gone': it was removed). */
typedef void (*px_dp_change_cb)(void *arg, const struct rs_flow_key *k, bool gone);

/* An open data path; implementations embed it first in their own struct.
 * 'changed' (set by the daemon, may be NULL) hears of every change the
 * px_dp_* wrappers below make to the table: a standby proxy keeps a copy. */
struct px_datapath {
    const struct px_datapath_ops *ops;
    px_dp_change_cb changed;
    void *changed_arg;
};

struct px_datapath_ops {
    const char *name;
    /* Attaches to interface 'ifname'.  Where a predecessor left its data
     * path attached there (killed, or stopped to hand over), the table is
     * taken over as it stands: its entries go on being translated without
     * a gap (px_dp_next_key lists them) — unless not 'adopt': then the
     * table starts empty.  'event_ring': the bytes of the ring its events
     * wait in for the daemon, where it has one (0: its own default; a
     * table taken over keeps its ring).  Returns the data path, or NULL
     * with '*err' a negative errno. */
    struct px_datapath *(*open)(const char *ifname, bool adopt, uint64_t event_ring, int *err);
    /* 'keep': leave the data path attached with its table, for a successor
     * (spliced connections go on meanwhile, unprotected). */
    void (*close)(struct px_datapath *dp, bool keep);
    /* Where clients connect: segments to it of no splice yet have their
     * TSval recorded (the splice must continue the client's clock).
     * 'lease_ns': the proxy is alive until then (CLOCK_MONOTONIC; 0: no
     * lease): once it runs out, new connections' SYNs are held back for a
     * successor (struct rs_vip); 'listens': also once the proxy's listener
     * on the VIP is gone (the tc program only). */
    int (*set_vip)(struct px_datapath *dp, uint32_t ip, uint16_t port, uint64_t lease_ns, bool listens);
    /* The newest TSval client connection 'k' sent before its splice (the
     * kernel module then forgets it; the tc program's LRU map keeps it
     * until a SYN on that 4-tuple writes it afresh).  Returns 0 or -ENOENT. */
    int (*client_ts)(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t *ts);
    /* An fd that is readable when events (struct rs_flow_event) wait, and
     * the call that hands them to 'cb'. */
    int (*events_fd)(struct px_datapath *dp);
    int (*poll_events)(struct px_datapath *dp, px_dp_event_cb cb, void *arg);
    /* Optional: handles the events that woke nobody (poll_events does
     * too, first), without a system call when there are none. */
    int (*poll_quiet)(struct px_datapath *dp, px_dp_event_cb cb, void *arg);
    /* Creates entry 'k' in WATCH (both halves).  Returns 0 or -errno. */
    int (*watch)(struct px_datapath *dp, const struct rs_flow_key *k, uint64_t id);
    int (*get)(struct px_datapath *dp, const struct rs_flow_key *k, struct px_flow_info *out);
    int (*set)(struct px_datapath *dp, const struct rs_flow_key *k, enum px_dp_field field, uint32_t v);
    /* Makes 'k' translate with 'd' in 'state' (ACTIVE, ACKONLY); 'guard'
     * holds back FIN/RST from that sender (a backend) and reports them;
     * 'peer' is the other direction's entry.  Starts a new generation
     * ('seen' afresh) and clears the ACK clamp, the watch and the flags. */
    int (*activate)(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                    uint64_t id, uint32_t state, bool guard, const struct rs_flow_key *peer);
    /* Arms an ACK watch on 'k': an RS_FLOW_ACKED event carrying '*gen'
     * comes once its sender acknowledges 'ack'.  Returns 1 when it already
     * has (no event then, and maybe no watch), 0 when armed, -errno. */
    int (*watch_ack)(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t ack, uint32_t *gen);
    /* Removes entry 'k'; 'last' (may be NULL) receives its data path's
     * half as it was (zeroed when there was none). */
    int (*remove)(struct px_datapath *dp, const struct rs_flow_key *k, struct rs_flow_track *last);
    /* Makes entry 'k''s daemon half 'f' as another proxy's table has it
     * (its own interface in place of the other's); the data path's half
     * starts afresh where the entry is new.  Returns 0 or -errno. */
    int (*put)(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow *f);
    /* Writes the client entry 'k''s connection record. */
    int (*set_conn)(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow_conn *conn);
    /* The key after 'prev' (NULL: the first) in the table's own order.
     * Returns 0, or -ENOENT after the last. */
    int (*next_key)(struct px_datapath *dp, const struct rs_flow_key *prev, struct rs_flow_key *next);
    /* Splicing at the SYN (struct rs_syn_cfg); optional (NULL: the data
     * path cannot).  syn_setup() writes the configuration (its id counter
     * goes on from a predecessor's) and, unless 'ports' is NULL, makes
     * 'ports' (host order) the free ones, less those of entries the table
     * holds; syn_port_put()
     * gives one back; learn() takes entry 'k', which the data path made,
     * into the daemon's knowledge. */
    int (*syn_setup)(struct px_datapath *dp, const struct rs_syn_cfg *cfg, const uint16_t *ports, size_t n);
    int (*syn_port_put)(struct px_datapath *dp, uint16_t port);
    int (*learn)(struct px_datapath *dp, const struct rs_flow_key *k);
    /* Optional: runs the data path on Ethernet frame 'in' ('len' bytes) as
     * though it had just arrived, its maps changed as they would be, and
     * leaves in 'out' (*out_len bytes, then its length) the frame as it
     * would leave.  Returns the tc verdict (TC_ACT_REDIRECT: translated,
     * to be sent) or -errno. */
    int (*replay)(struct px_datapath *dp, const uint8_t *in, uint32_t len, uint8_t *out, uint32_t *out_len);
    /* Optional (NULL: every change is made at once).  After hold(), the
     * changes of the daemon's halves (the newest per entry) and the fresh
     * data path's halves of new WATCH entries wait in this process until
     * flush() makes them, in order, in one call per map. */
    void (*hold)(struct px_datapath *dp);
    int (*flush)(struct px_datapath *dp);
};

extern const struct px_datapath_ops px_dp_ebpf;     /* dp_ebpf.c */
extern const struct px_datapath_ops px_dp_kmod;     /* dp_kmod.c */

/* What the implementations share: their tables hold the same entries and
 * change them the same way, by reading the daemon's half, changing it and
 * writing it back (the daemon is its only writer). */
/* The field 'field' of daemon half 'f'. */
uint32_t *px_flow_field(struct rs_flow *f, enum px_dp_field field);
/* Daemon half 'f' as ops->activate leaves it (out of interface 'ifindex'). */
void px_flow_activate(struct rs_flow *f, const struct rs_splice_dir *d, uint64_t id, uint32_t state, bool guard,
                      const struct rs_flow_key *peer, uint32_t ifindex);
/* Arms the ACK watch of 'f' for 'ack' with the next of the generations
 * '*gen_counter' numbers (never 0); returns it. */
uint32_t px_flow_watch_ack(struct rs_flow *f, uint32_t ack, uint32_t *gen_counter);

/* The implementation called 'name', or NULL. */
const struct px_datapath_ops *px_datapath_find(const char *name);
/* "ebpf" (the names px_datapath_find knows, for --help and errors). */
const char *px_datapath_names(void);

/* ---- What the daemon calls ------------------------------------------------- */

/* Tells the daemon's listener of a change when 'e' (the change's result) is 0. */
static inline int px_dp_tell(struct px_datapath *dp, const struct rs_flow_key *k, bool gone, int e)
{
    if (e >= 0 && dp->changed)
        dp->changed(dp->changed_arg, k, gone);
    return e;
}

static inline void px_dp_close(struct px_datapath *dp, bool keep)
{
    if (dp)
        dp->ops->close(dp, keep);
}
static inline int px_dp_set_vip(struct px_datapath *dp, uint32_t ip, uint16_t port, uint64_t lease_ns,
                                bool listens)
{
    return dp->ops->set_vip(dp, ip, port, lease_ns, listens);
}
static inline int px_dp_client_ts(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t *ts)
{
    return dp->ops->client_ts(dp, k, ts);
}
static inline int px_dp_events_fd(struct px_datapath *dp) { return dp->ops->events_fd(dp); }
static inline int px_dp_poll_events(struct px_datapath *dp, px_dp_event_cb cb, void *arg)
{
    return dp->ops->poll_events(dp, cb, arg);
}
static inline int px_dp_poll_quiet(struct px_datapath *dp, px_dp_event_cb cb, void *arg)
{
    return dp->ops->poll_quiet ? dp->ops->poll_quiet(dp, cb, arg) : 0;
}
static inline int px_dp_watch(struct px_datapath *dp, const struct rs_flow_key *k, uint64_t id)
{
    return px_dp_tell(dp, k, false, dp->ops->watch(dp, k, id));
}
static inline int px_dp_get(struct px_datapath *dp, const struct rs_flow_key *k, struct px_flow_info *out)
{
    return dp->ops->get(dp, k, out);
}
static inline int px_dp_set_state(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t state)
{
    return px_dp_tell(dp, k, false, dp->ops->set(dp, k, PX_DP_STATE, state));
}
/* Sends the pure ACKs from 'k''s sender to the proxy's own stack,
 * untranslated ('on'), or translates them like any other segment. */
static inline int px_dp_acks_to_stack(struct px_datapath *dp, const struct rs_flow_key *k, bool on)
{
    return px_dp_tell(dp, k, false, dp->ops->set(dp, k, PX_DP_ACKS_TO_STACK, on));
}
/* Makes 'k' (a client's direction) never acknowledge past what the sender
 * of its peer entry has sent (after a re-splice to a regenerating server). */
static inline int px_dp_clamp_ack(struct px_datapath *dp, const struct rs_flow_key *k)
{
    return px_dp_tell(dp, k, false, dp->ops->set(dp, k, PX_DP_CLAMP_ACK, 1));
}
/* Lets the SYN-ACKs of backend entry 'k' pass (clears RS_AT_SYN_HOLD). */
static inline int px_dp_release_synack(struct px_datapath *dp, const struct rs_flow_key *k)
{
    return px_dp_tell(dp, k, false, dp->ops->set(dp, k, PX_DP_AT_SYN, 1));
}
static inline int px_dp_activate(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                                 uint64_t id, uint32_t state, bool guard, const struct rs_flow_key *peer)
{
    return px_dp_tell(dp, k, false, dp->ops->activate(dp, k, d, id, state, guard, peer));
}
static inline int px_dp_watch_ack(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t ack, uint32_t *gen)
{
    return px_dp_tell(dp, k, false, dp->ops->watch_ack(dp, k, ack, gen));
}
static inline int px_dp_remove(struct px_datapath *dp, const struct rs_flow_key *k)
{
    return px_dp_tell(dp, k, true, dp->ops->remove(dp, k, NULL));
}
/* Removes 'k' and reads its data path's half in the same call. */
static inline int px_dp_remove_read(struct px_datapath *dp, const struct rs_flow_key *k, struct rs_flow_track *last)
{
    return px_dp_tell(dp, k, true, dp->ops->remove(dp, k, last));
}
static inline int px_dp_syn_setup(struct px_datapath *dp, const struct rs_syn_cfg *cfg, const uint16_t *ports,
                                  size_t n)
{
    return dp->ops->syn_setup ? dp->ops->syn_setup(dp, cfg, ports, n) : -EOPNOTSUPP;
}
static inline int px_dp_syn_port_put(struct px_datapath *dp, uint16_t port)
{
    return dp->ops->syn_port_put ? dp->ops->syn_port_put(dp, port) : -EOPNOTSUPP;
}
static inline int px_dp_learn(struct px_datapath *dp, const struct rs_flow_key *k)
{
    return px_dp_tell(dp, k, false, dp->ops->learn ? dp->ops->learn(dp, k) : -EOPNOTSUPP);
}
static inline int px_dp_replay(struct px_datapath *dp, const uint8_t *in, uint32_t len, uint8_t *out,
                               uint32_t *out_len)
{
    return dp->ops->replay ? dp->ops->replay(dp, in, len, out, out_len) : -EOPNOTSUPP;
}
/* The changes made between the two calls go to the table together, when
 * px_dp_flush() returns (one syscall instead of one each, where the data
 * path can); nothing of them holds before.  Returns 0 or -errno. */
static inline void px_dp_hold(struct px_datapath *dp)
{
    if (dp->ops->hold)
        dp->ops->hold(dp);
}
static inline int px_dp_flush(struct px_datapath *dp)
{
    return dp->ops->flush ? dp->ops->flush(dp) : 0;
}
static inline int px_dp_set_conn(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow_conn *c)
{
    return px_dp_tell(dp, k, false, dp->ops->set_conn(dp, k, c));
}
/* Not told to 'changed': the copy is written from what it reports. */
static inline int px_dp_put(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow *f)
{
    return dp->ops->put(dp, k, f);
}
static inline int px_dp_next_key(struct px_datapath *dp, const struct rs_flow_key *prev, struct rs_flow_key *next)
{
    return dp->ops->next_key(dp, prev, next);
}

#endif /* RS_PROXY_DATAPATH_H */
