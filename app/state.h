/* rs-app's per-transaction state hooks: where the state-transfer layer (the
 * primary sending each update's state to the alternate, issue 5) plugs into
 * the reference application, and where the alternate feeds state back in.
 * The default hooks do nothing; rs-app then is a plain web server. */
#ifndef RS_APP_STATE_H
#define RS_APP_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "txn_id.h"

/* ---- Types ------------------------------------------------------------ */

struct rs_app;

/* A hook's "hold the response" answer (see txn_update). */
#define RS_APP_HOOK_WAIT 1

/* Longest state blob the app produces or accepts. */
#define RS_APP_STATE_MAX 64u

/* The state of a counter update: the increment, not the value.  The
 * alternate applies the states of different client connections in the
 * order the logger confirms them, and re-executes the transactions whose
 * state it lacks on its own counter; increments commute, so every update
 * counts once whatever the order (a snapshot "counter=N" applied after a
 * re-executed later update was swallowed: found by make fault-campaign,
 * 50 clients, a lost update).  "counter=N" (--state) sets the value. */
#define APP_COUNTER_INCREMENT "counter+=1"

/* Called by the app from its event loop; a hook must not block for long
 * (it stalls every connection) and must not call back into the app except
 * through rs_app_txn_resume / rs_app_state_apply *after* returning.
 * Every pointer argument is valid only during the call.  Any member may be
 * NULL, which means "no-op, proceed".
 *
 * Transaction IDs are made from the peer address of the accepted socket (the
 * client as the app sees it) and the request's number on that connection,
 * 0 for the first request, as the logger's transactionalizer counts them. */
struct rs_app_hooks {
    void *ctx;

    /* A complete, well-formed request 'method' 'target' (as sent, query
     * included) is about to run.  Returns 0 to run it, or a negative errno
     * to refuse it: the client gets 503 and nothing runs. */
    int (*txn_begin)(void *ctx, rs_txn_id id, const char *method, const char *target);

    /* Transaction 'id' produced 'len' bytes of 'state' (a blob for
     * rs_app_state_apply on the alternate): "counter=<value>" after POST
     * /counter (deterministic, 'nondet' 0: may be sent asynchronously) or
     * "token=<32 hex>" for /token ('nondet' 1: the seed wants it at the
     * alternate before the response leaves).  Called after the local state
     * changed and before any response byte is queued.
     * Returns 0 to send the response now; RS_APP_HOOK_WAIT to hold it until
     * the hook layer calls rs_app_txn_resume(app, id, err) (the synchronous
     * transfer; the rest of the loop keeps running); a negative errno to
     * answer 503 instead (the local state change stays). */
    int (*txn_update)(void *ctx, rs_txn_id id, const void *state, size_t len, int nondet);

    /* Transaction 'id' is over: its last response byte was handed to the
     * kernel ('complete' 1), or the connection died first ('complete' 0).
     * Called once for every txn_begin that returned 0. */
    void (*txn_end)(void *ctx, rs_txn_id id, int complete);
};

/* ---- Functions -------------------------------------------------------- */

/* Installs 'hooks' (copied; NULL restores the no-op defaults). */
void rs_app_set_hooks(struct rs_app *app, const struct rs_app_hooks *hooks);

/* Applies a state blob (the alternate's side of txn_update): "counter=N"
 * sets the counter to N; "token=<32 hex>" records the token that the /token
 * request with transaction 'id' must answer when it is replayed here, so the
 * alternate repeats the primary's non-deterministic response.
 * Returns 0, or -EINVAL for a blob of neither form. */
int rs_app_state_apply(struct rs_app *app, rs_txn_id id, const void *state, size_t len);

/* Completes a txn_update that returned RS_APP_HOOK_WAIT: with 'err' 0 the
 * held response is sent, with a negative 'err' the client gets 503.
 * Returns 0, or -ENOENT when no request waits under 'id' (its connection
 * may have closed meanwhile). */
int rs_app_txn_resume(struct rs_app *app, rs_txn_id id, int err);

#endif /* RS_APP_STATE_H */
