/* Authenticated control connections on an rs_loop (frames of
 * core/ctl_msg.h; who sends what is docs/recovery.md):
 *   - rs_ctlserver accepts connections; every frame goes to one callback
 *     with the connection it came on, which replies on it (at once, or
 *     later by the connection's id);
 *   - an outgoing rs_ctlconn ("peer") connects in the background, reconnects
 *     with back-off, queues frames (bounded) while down, and carries calls:
 *     a request whose reply (the ACK that echoes it, or a typed reply that
 *     names the same client) comes back to a callback, or a timeout does.
 * Nothing here blocks.  Replay protection: one table per server (so a
 * frame captured on one connection is refused on another); a sender id
 * must therefore be used on one connection at a time. */
#ifndef RS_CTLCONN_H
#define RS_CTLCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl_msg.h"
#include "daemon.h"
#include "loop.h"

struct rs_ctlconn;
struct rs_ctlserver;
struct rs_ctl_call;

/* A frame arrived on 'c' (authenticated, not replayed, not a reply that a call took). */
typedef void (*rs_ctl_msg_fn)(struct rs_ctlconn *c, const struct rs_ctl_msg *m);
/* An outgoing connection came up ('err' 0) or went down ('err' < 0). */
typedef void (*rs_ctl_state_fn)(struct rs_ctlconn *c, int err);
/* A call ended: 'err' 0 with its 'reply', or -ETIMEDOUT / -ECONNRESET / -errno
 * ('reply' NULL).  An ACK's own status is the caller's to read. */
typedef void (*rs_ctl_done_fn)(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply);

struct rs_ctl_call {
    struct rs_ctl_call *prev, *next;
    struct rs_ctlconn *conn;      /* NULL when not pending */
    uint64_t seq;                 /* of the request */
    uint8_t reply_type;           /* RS_CTL_ACK, or the typed reply that answers */
    struct rs_ctl_conn key;       /* typed replies: the client they must name */
    struct rs_timer timer;
    rs_ctl_done_fn done;
    void *ctx;
    bool failing;                 /* its connection went down: it ends soon */
};

struct rs_ctlconn {
    struct rs_loop *loop;
    struct rs_io io;
    const char *name;             /* for the logs: "logger", "stated-2" ... */
    struct rs_addr addr;          /* the far end */
    uint64_t id;                  /* accepted: unique per server, for late replies */
    const struct rs_ctl_key *key;
    uint64_t *seq;                /* the daemon's sequence counter */
    uint32_t sender;
    struct rs_ctl_replay own_replay;
    struct rs_ctl_replay *replay; /* accepted: the server's; outgoing: own_replay */
    bool outgoing, up;
    bool held;                    /* rs_ctlconn_hold: frames wait for rs_ctlconn_flush */
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap, out_max;
    struct rs_ctl_call *calls;
    struct rs_timer retry;        /* outgoing: reconnect, or connect time-out */
    uint64_t backoff_ns, connect_timeout_ns;
    rs_ctl_msg_fn on_msg;
    rs_ctl_state_fn on_state;
    void *ctx;
    struct rs_ctlserver *server;
    struct rs_ctlconn *prev, *next;
    uint64_t frames, dropped, rejected;
};

struct rs_ctlserver {
    struct rs_loop *loop;
    struct rs_io io;
    const struct rs_ctl_key *key;
    uint64_t *seq;
    uint32_t sender;              /* of our replies */
    struct rs_ctl_replay replay;
    struct rs_ctlconn *conns;
    unsigned n_conns, max_conns;
    uint64_t next_id;
    size_t out_max;
    rs_ctl_msg_fn on_msg;
    rs_ctl_state_fn on_close;     /* may be NULL: an accepted connection ends */
    void *ctx;
    uint64_t accepted, rejected;
};

/* ---- Server ------------------------------------------------------------------ */

/* Listens on 'a' (TCP); frames go to 'on_msg' ('ctx' in the server).
 * Replies are signed with 'key' as 'sender', numbered from '*seq'.
 * Returns 0 or -errno. */
int rs_ctlserver_open(struct rs_ctlserver *s, struct rs_loop *l, struct rs_addr a, const struct rs_ctl_key *key,
                      uint64_t *seq, uint32_t sender, rs_ctl_msg_fn on_msg, void *ctx);
void rs_ctlserver_close(struct rs_ctlserver *s);
/* The accepted connection with id 'id', or NULL when it has gone. */
struct rs_ctlconn *rs_ctlserver_find(struct rs_ctlserver *s, uint64_t id);

/* ---- Outgoing peers ------------------------------------------------------------ */

/* Prepares peer 'c' to 'a'; connects at once and then keeps reconnecting
 * (back-off 10 ms .. 100 ms).  'out_max' bounds the frames queued for it.
 * 'on_msg' gets the frames no call takes; 'on_state' (may be NULL) hears
 * of ups and downs.  Returns 0 or -ENOMEM. */
int rs_ctlconn_peer(struct rs_ctlconn *c, struct rs_loop *l, const char *name, struct rs_addr a,
                    const struct rs_ctl_key *key, uint64_t *seq, uint32_t sender, size_t out_max,
                    rs_ctl_msg_fn on_msg, rs_ctl_state_fn on_state, void *ctx);
/* Ends 'c' (fails its calls with -ECANCELED, frees its buffers). */
void rs_ctlconn_close(struct rs_ctlconn *c);

/* ---- Sending ---------------------------------------------------------------------- */

/* Queues 'm' (its sender and seq are set here) and writes what it can.
 * Returns 0, -ENOBUFS (queue full: dropped and counted), or -EINVAL. */
int rs_ctl_send(struct rs_ctlconn *c, struct rs_ctl_msg *m);
/* From now on, what rs_ctl_send queues on 'c' waits for rs_ctlconn_flush
 * (which the owner calls once per turn of its loop, rs_loop_before_sleep):
 * the frames a turn raises go out in one write, not a system call each. */
void rs_ctlconn_hold(struct rs_ctlconn *c);
/* Writes what 'c' holds queued, as far as the socket takes it. */
void rs_ctlconn_flush(struct rs_ctlconn *c);
/* ACKs 'req' with 'status'.  Returns as rs_ctl_send. */
int rs_ctl_ack(struct rs_ctlconn *c, const struct rs_ctl_msg *req, int status);
/* Sends 'm' and waits (without blocking) 'timeout_ns' for its reply: an ACK
 * echoing it when 'reply_type' is RS_CTL_ACK, else the next 'reply_type'
 * frame naming the same client as 'm' (STATE_QUERY -> STATE_REPORT,
 * RECOVER -> PLAN) or any (STATUS -> STATUS_REPORT).  'call' (the
 * caller's, it must stay valid) ends in done(call, err, reply) exactly
 * once, unless cancelled.  Returns 0, or -errno when the request could not
 * even be queued (done is then not called). */
int rs_ctl_call(struct rs_ctlconn *c, struct rs_ctl_msg *m, uint8_t reply_type, struct rs_ctl_call *call,
                uint64_t timeout_ns, rs_ctl_done_fn done, void *ctx);
/* Forgets a pending 'call' without calling done (a no-op when not pending). */
void rs_ctl_call_cancel(struct rs_ctl_call *call);
static inline bool rs_ctl_call_pending(const struct rs_ctl_call *call) { return call->conn != NULL; }

#endif /* RS_CTLCONN_H */
