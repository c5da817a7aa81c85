/* The state library: what an application links to take part in resplice's
 * state transfer (docs/recovery.md, seen from the application's side).
 * rs-app (the reference application) and rs-front (the front of a real
 * application such as Roundcube) both use it; a third-party C server can
 * too.  It talks to the local rs-stated over a unix socket (records of
 * core/xfer_rec.h) and runs on the caller's event loop (common/loop.h).
 *
 * The contract:
 *   1. Name transactions as the logger does.  For each accepted connection
 *      call rs_state_accepted(): the proxy (or the logger's replay) told
 *      rs-stated beforehand which client the connection acts for and from
 *      which number its requests count; requests are numbered from there,
 *      one per request, 0-based (core/txn_id.h).  Then, until the name is
 *      settled, hand the connection's first bytes to
 *      rs_state_named_by_header(): a new client connection from rs-proxy
 *      (its default --identity header) carries the client's name in a
 *      PROXY protocol v2 header before the first request instead.
 *   2. After an update transaction changed the state and before any byte of
 *      its response is sent, call rs_state_update() with the state the
 *      alternate needs to take over.  A deterministic update (sync false)
 *      goes asynchronously; a non-deterministic one (sync true) holds its
 *      response: send it when ops.resume is called for it.
 *   3. On the alternate, ops.apply receives the peer's states, in the order
 *      the transactions were logged; apply them (or report why not).  That
 *      order holds per client connection only: across connections a
 *      state made earlier can come later, so a snapshot state must carry
 *      what tells the newer one (a version, a sequence number), or the
 *      state must be a change that commutes (an increment: the alternate
 *      re-executes the transactions whose state it lacks on its own
 *      state, and a snapshot would swallow such an update).  A
 *      transaction whose state was applied here and that is then replayed
 *      here sends no update back (rs_state_update returns 0 and counts it).
 *   4. When a transaction ends before its held response was resumed (its
 *      connection died), call rs_state_forget().
 *   5. Optionally, ops.export gives the whole state at once, so that a
 *      backend readmitted after a restart can become a standby again.
 * The library is single-threaded: call it from the loop's thread only.
 * Link: build/librs-state.a build/libresplice.a -lsodium -lhttp_parser -lm
 * (make builds both).  libstate/example/kv.c is a whole application in
 * under 300 lines, tested in tests/integration/test_stated.py. */
#ifndef RS_STATE_H
#define RS_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "txn_id.h"

struct rs_loop;
struct rs_state;

/* rs_state_update's answer: hold the response until ops.resume. */
#define RS_STATE_WAIT    1
/* ops.apply's answer: the apply runs on; report with rs_state_apply_done. */
#define RS_STATE_PENDING 1

#define RS_STATE_TIMEOUT_NS 500000000ull    /* default bound of a synchronous update */

struct rs_state_ops {
    void *ctx;
    /* The peer's state of transaction 'id' ('len' bytes, valid during the
     * call).  Returns 0 when applied, a negative errno when it cannot be,
     * or RS_STATE_PENDING when the apply goes on asynchronously: the later
     * records wait (answers keep their order) until rs_state_apply_done
     * with 'token'. */
    int (*apply)(void *ctx, rs_txn_id id, const void *state, size_t len, uint64_t token);
    /* A synchronous update is over: send the held response of 'id'.  'err'
     * is 0 when the peer has the state, or why it could not be confirmed
     * (-ETIMEDOUT, -ECONNRESET, -ENOTCONN, ...): the response goes
     * unreplicated (logged and counted) rather than never, as the standby
     * is gone or unreachable. */
    void (*resume)(void *ctx, rs_txn_id id, int err);
    /* Optional: the application's whole state, in the form 'apply' takes
     * (at most RS_CTL_STATE_MAX bytes; '*state' valid until the next call
     * into the library), including every update passed to
     * rs_state_update before.  rs-stated asks for it when a standby joins
     * the chain behind this backend (a readmitted one), to bring it up to
     * date.  Returns 0 or a negative errno.  Without it a joining standby
     * cannot be brought up to date through this backend. */
    int (*export)(void *ctx, const void **state, size_t *len);
};

/* Who an accepted connection's transactions are named after. */
struct rs_state_conn {
    uint32_t client_ip;         /* host order: the client, or the peer itself */
    uint16_t client_port;
    uint16_t first_num;         /* number of its first request */
    bool rerun;                 /* its requests may have run on another backend */
    bool settled;               /* named for good: mapped, or its first bytes were read */
    char name[64];              /* "peer->local" for logs */
};

/* Connects to rs-stated's socket 'path' on 'loop' (retrying in the
 * background while it is absent); 'timeout_ns' bounds a synchronous update
 * (0: RS_STATE_TIMEOUT_NS).  'ops' is copied.  Returns the library, or NULL
 * with errno set (ENOMEM, ENAMETOOLONG). */
struct rs_state *rs_state_open(struct rs_loop *loop, const char *path, uint64_t timeout_ns,
                               const struct rs_state_ops *ops);

/* Makes listening socket 'fd' keep each connection's SYN (TCP_SAVE_SYN),
 * where rs-proxy --splice-at syn names the client (a TCP option; see
 * rs_state_accepted).  Does nothing with 's' NULL.  Returns 0 or -errno. */
int rs_state_listening(struct rs_state *s, int fd);

/* Names accepted connection 'fd' (see struct rs_state_conn).  A connection
 * map for its peer is used up; without one, the client a SYN spliced by
 * rs-proxy --splice-at syn names (when the listener keeps SYNs:
 * rs_state_listening) is the connection's, numbering from 0; without
 * either (or with 's' NULL, no rs-stated) the peer is the client and
 * numbering starts at 0. */
void rs_state_accepted(struct rs_state *s, int fd, struct rs_state_conn *out);

/* A connection with no map may start with the PROXY protocol v2 header
 * rs-proxy --identity header sends (core/pp2.h): it names the client in
 * the connection itself, numbering from 0.  Call with the connection's
 * first unread bytes ('eof': no more will come) until 'who' is settled.
 * Returns the header's length (skip it: 'who' now names its client), 0
 * when more bytes are needed to tell, -ENOENT when there is none (the
 * bytes are the application's; 'who' stays as it is), or -EPROTO for a
 * malformed header (refuse the connection).  Without rs-stated ('s' NULL:
 * not a resplice backend) no header is believed. */
int rs_state_named_by_header(struct rs_state *s, const void *buf, size_t len, bool eof, struct rs_state_conn *who);

/* Hands transaction 'id''s state ('len' bytes, at most RS_CTL_STATE_MAX) to
 * the peer.  Returns 0 (asynchronous, or nothing to send: not connected,
 * replayed here), RS_STATE_WAIT (sync: hold the response until ops.resume),
 * or -EBUSY (too many held; answer an error, the state stays local). */
int rs_state_update(struct rs_state *s, rs_txn_id id, const void *state, size_t len, bool sync);

/* Transaction 'id' ended before its held response was resumed. */
void rs_state_forget(struct rs_state *s, rs_txn_id id);

/* An apply that returned RS_STATE_PENDING ended with 'status' (0 or a
 * negative errno); the records behind it go on. */
void rs_state_apply_done(struct rs_state *s, uint64_t token, int status);

/* Appends " xfer_key=value ..." counters to a stats line on 'f'. */
void rs_state_stats(const struct rs_state *s, FILE *f);

/* Closes the socket and frees the library (NULL: nothing). */
void rs_state_close(struct rs_state *s);

#endif /* RS_STATE_H */
