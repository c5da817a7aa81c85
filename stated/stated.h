/* rs-stated internals shared by the files of stated/: the daemon's state
 * and what each file offers the others.  main.c parses the options, sets
 * up and runs the loop; app_link.c is the local application's state
 * library (the unix socket: records of core/xfer_rec.h); peer.c relays the
 * application's updates to the peer backend's rs-stated; control.c answers
 * the control port (STATE_UPDATE, TXN_LOGGED, STATE_QUERY, APPLY,
 * CONN_MAP, FENCE); heartbeat.c tells the logger this backend lives (a
 * real-time thread) or that its application died.  The buffer of states is
 * core/store.h.  See docs/recovery.md for the role of rs-stated. */
#ifndef RS_STATED_H
#define RS_STATED_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ctlconn.h"
#include "daemon.h"
#include "loop.h"
#include "store.h"
#include "txn_id.h"
#include "xfer_rec.h"

/* ---- Limits ----------------------------------------------------------- */

#define LIB_OUT_MAX     (32u << 20)     /* records queued to the app library */
#define LIB_OPS_MAX     65536u          /* records the library has not answered yet */
#define RELAY_MAX       8192u           /* relayed updates not yet acknowledged */
#define PEER_OUT_MAX    (16u << 20)     /* relayed bytes queued for the peer */
#define HB_PRIO         20              /* SCHED_FIFO priority of the heartbeat thread */
#define FAILURE_COPIES  3               /* a FAILURE datagram goes out this many times */
#define FENCED_MAX      16
#define PEERS_MAX       4               /* --peer */

/* Sender ids: role BACKEND in the top byte, the backend id, and one channel
 * per connection kind, so that a receiver checking sequences per sender
 * never sees one counter interleaved over two connections. */
#define SENDER(id, ch)  (((uint32_t)RS_CTL_ROLE_BACKEND << 24) | ((id) << 4) | (ch))
enum { CH_REPLY = 1, CH_PEER = 2, CH_HEARTBEAT = 3, CH_FAILURE = 4 };

/* ---- Types ------------------------------------------------------------ */

struct stated;

/* A control request answered once the app library has answered. */
struct waiter {
    uint64_t conn_id;
    uint64_t seq;
    uint8_t type;
    uint32_t remaining;         /* library records still unanswered */
    bool armed;                 /* every record is queued: answer at remaining 0 */
    int status;
};

struct lib_op {
    uint32_t id;
    uint8_t type;               /* the record sent: RS_XFER_APPLY, _CONN_MAP, _EXPORT */
    struct waiter *w;           /* NULL: an automatic apply */
    rs_txn_id txn;              /* APPLY's transaction, for the log */
};

/* A STATE_UPDATE relayed for the app: a call on the peer link. */
struct relay {
    struct rs_ctl_call call;
    struct stated *s;
    uint64_t app_gen;
    uint32_t lib_id;
    rs_txn_id txn;
    bool done;
};

struct stats {
    uint64_t ctl_frames, updates, update_bytes, updates_refused,
        updates_stale, logged, unlogged, logger_lost, applied, applied_forced, apply_errors, queries, conn_maps,
        relayed, relay_acked, relay_failed, heartbeats, failures_sent, app_connects,
        app_disconnects, updates_fenced, relays_degraded, forwarded, forward_failed, snapshots_sent,
        snapshots_received, refused_joining;
};

/* Another backend's rs-stated (--peer).  This one's successor, the first
 * live peer after it in the chain (the lowest rank above its own; an
 * id-less peer is always after it), receives the local app's updates and
 * forwards of the states this one receives: a chain, primary -> alternate
 * -> spare, so that the spare holds what the alternate holds when it takes
 * over.  Ranks start as the ids; a readmitted backend rejoins at the end
 * of the chain (every rs-stated sees the same FENCEs, so all agree), and
 * its predecessor brings it up to date with a snapshot (peer.c). */
struct peer {
    uint32_t id;                        /* 0: not given */
    uint32_t rank;                      /* place in the chain */
    struct rs_addr addr;
    bool fenced;
};

struct stated {
    uint32_t id;
    struct rs_addr listen, peer, logger;    /* peer: the successor's (when peer_link is open) */
    bool has_peer, has_logger;              /* has_peer: any --peer */
    struct peer peers[PEERS_MAX];
    int n_peers;
    int successor;                          /* into peers, -1: none alive */
    uint32_t rank;                          /* this backend's place in the chain */
    /* A new successor is brought up to date: the app's whole state (EXPORT),
     * then how far it goes per connection, then the buffered states.  While
     * the app's answer is awaited no state is applied or forwarded. */
    bool snap_pending;
    /* Readmitted: not a standby until its predecessor's snapshot came (and
     * was applied: 'snap_in' keeps one that came while no app was connected). */
    bool joining;
    uint8_t *snap_in;
    uint32_t snap_in_len;
    const char *app_path;
    uint64_t heartbeat_ns, relay_timeout_ns;
    struct rs_ctl_key key;
    uint64_t seq;
    struct rs_loop loop;
    struct rs_ctlserver ctlsrv;
    struct rs_io app_io;                /* the unix socket the library connects to */
    /* The app library's connection. */
    int lib_fd;                         /* lib_io.fd while connected, else -1 */
    struct rs_io lib_io;
    uint64_t lib_gen;
    uint8_t *lib_in;
    size_t lib_in_len;
    uint8_t *lib_out;
    size_t lib_out_off, lib_out_len, lib_out_cap;
    uint32_t lib_next_id;
    struct lib_op ops[LIB_OPS_MAX];
    uint32_t ops_head, ops_len;
    bool drain_blocked;
    struct waiter *cur_waiter;          /* for apply_fn during an APPLY */
    /* Outgoing: the peer's stated; UDP datagrams to the logger. */
    struct rs_ctlconn peer_link;
    struct relay relays[RELAY_MAX];
    uint32_t rel_head, rel_len;
    int udp_fd;                         /* connected to the logger */
    uint64_t fail_seq;
    pthread_t hb_thread;
    bool hb_started;
    int app_up;                         /* the heartbeat thread reads it (atomics) */
    pid_t app_pid;                      /* the library's process, for a fence */
    /* Fencing (FENCE from the proxy): this backend's own, its peer's, others'.
     * peer_fenced: every peer after this one is fenced (no successor). */
    bool self_fenced, peer_fenced;
    uint32_t fenced[FENCED_MAX];
    unsigned n_fenced;
    struct rs_store store;
    uint64_t logger_conn;               /* id of the accepted connection TXN_LOGGED comes on, 0: none */
    struct stats st;
};


#define RS_TXN(id) rs_txn_str((id), (char[RS_TXN_ID_STRLEN]){ 0 })

/* ---- app_link.c: the application's state library --------------------------- */

/* Listens on unix socket 'path' for the library (mode 0600).  Returns the
 * fd or a negative errno. */
int app_link_listen(const char *path);
/* The listening socket's handler: takes one application at a time. */
void app_link_accept(struct rs_io *io, uint32_t events);
/* Queues record 'r' for the library.  Returns 0, -ENOTCONN or -ENOBUFS. */
int lib_send(struct stated *s, const struct rs_xfer_rec *r);
/* Sends a request record (APPLY, CONN_MAP) whose DONE 'w' waits for
 * ('w' NULL: nobody waits). */
int lib_request(struct stated *s, struct rs_xfer_rec *r, struct waiter *w);
/* Closes the library's connection; requests waiting for it fail. */
void lib_close(struct stated *s, const char *why);
/* rs_store_apply_fn: one state to the application. */
int apply_fn(void *ctx, rs_txn_id id, const uint8_t *data, uint32_t len);
/* Answers a deferred request once every record is queued and answered. */
void waiter_check(struct stated *s, struct waiter *w);

/* ---- peer.c: the application's updates to the peer --------------------------- */

/* Parses --peer "[ID=]ADDR:PORT" into s->peers (an RS_OPT_FN). */
int peer_add(const char *v, void *dst);
/* Picks the successor (the first live peer after this backend) and opens
 * the link to it, after a FENCE too; updates in flight to a successor
 * that was fenced are answered at once, unreplicated. */
void peer_choose(struct stated *s);
/* Marks peer 'id' (or, for one given without an id, the one at 'ip')
 * fenced or not; returns whether it is one of ours. */
bool peer_fence(struct stated *s, uint32_t id, uint32_t ip, bool fenced);
/* Passes a STATE_UPDATE this backend received from backend 'from' on to
 * its successor (the chain), unless it came from there. */
void peer_forward(struct stated *s, const struct rs_ctl_msg *m, uint32_t from);
/* Relays the app's UPDATE to the peer; the library hears DONE when the
 * peer ACKs (or at once, unreplicated, without a peer or with it fenced). */
void relay_update(struct stated *s, const struct rs_xfer_rec *r);
/* Backend 'id' was readmitted: it rejoins at the end of the chain (this
 * one too: it then waits for a snapshot before it is a standby). */
void peer_rejoin(struct stated *s, uint32_t id);
/* The app answered the EXPORT of a snapshot for the successor: 'blob'
 * ('len' bytes), or 'err' when it cannot export. */
void snapshot_send(struct stated *s, const uint8_t *blob, uint32_t len, int err);
/* A snapshot came from the predecessor: applied now, or kept until an app
 * connects.  Returns 0 or a negative errno. */
int snapshot_take(struct stated *s, const uint8_t *blob, uint32_t len);
/* Ends every relay in flight with 'status' (the peer was fenced). */
void relay_fail_all(struct stated *s, int status);

/* ---- control.c: the control port ------------------------------------------- */

/* One authenticated frame on the control port. */
void control_on_msg(struct rs_ctlconn *cc, const struct rs_ctl_msg *m);
/* Applies what the logger has released, for every client (after the app
 * connects or its queue drains, or when the logger is gone). */
void drain_all(struct stated *s);
/* An accepted control connection ended: the logger's means it is gone. */
void control_on_close(struct rs_ctlconn *cc, int err);

/* ---- heartbeat.c: liveness to the logger ------------------------------------- */

/* Opens the datagram socket to the logger and starts the heartbeat thread.
 * Returns 0 or a negative errno. */
int heartbeat_start(struct stated *s);
/* The application's process is gone: tells the logger at once. */
void send_failure(struct stated *s);

#endif /* RS_STATED_H */
