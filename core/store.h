/* rs-stated's buffer of states: per client connection, the states received
 * from the primary in transaction order, Ts (last applied), TA (last
 * received) and how far the logger has logged, with the bounds it keeps.
 * Pure logic, no I/O: applying goes through a callback.  See
 * docs/recovery.md ("Applying") for the role it plays. */
#ifndef RS_STORE_H
#define RS_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "txn_id.h"

/* ---- Limits ----------------------------------------------------------- */

#define RS_STORE_BUCKETS        4096u
#define RS_STORE_CLIENTS_MAX    16384u        /* client connections tracked; idle ones are evicted */
#define RS_STORE_CLIENT_STATES  1024u         /* buffered states of one client connection */
#define RS_STORE_STATES_MAX     65536u        /* buffered states in all */
#define RS_STORE_BYTES_MAX      (64u << 20)   /* buffered state bytes in all */

/* ---- Types ------------------------------------------------------------ */

/* One buffered state: transaction 'num' of its client connection. */
struct rs_store_state {
    struct rs_store_state *next;      /* ascending 'num' */
    uint16_t num;
    uint32_t len;
    uint8_t data[];
};

/* What rs-stated knows of one client connection (its transactions come from
 * the primary as STATE_UPDATE and from the logger as TXN_LOGGED). */
struct rs_store_client {
    struct rs_store_client *hnext;
    uint32_t ip;                /* host order */
    uint16_t port;
    bool has_ts, has_ta, has_logged;
    uint16_t ts;                /* Ts: last transaction whose state was applied */
    uint16_t ta;                /* TA: last transaction whose state was received */
    uint16_t logged;            /* last transaction the logger logged completely */
    struct rs_store_state *head, *tail;
    uint32_t n_states;
    uint64_t last_ns;           /* last activity, for eviction */
    bool taken_over;            /* recovered here: the primary's states are over */
    bool unlogged;              /* the logger gave up on it: apply states as they come */
    bool queried;               /* a recovery read Ts and TA: its plan stands on them */
};

struct rs_store {
    struct rs_store_client *buckets[RS_STORE_BUCKETS];
    bool no_logger;             /* the logger is gone: states apply as they arrive */
    uint32_t n_clients;
    uint64_t n_states, bytes;
    uint64_t evicted;
};

/* Hands one state to the application.  Returns 0 when it was passed on
 * (it then counts as applied), or a negative errno when it cannot be now
 * (no application connected, its queue full): the state stays buffered. */
typedef int (*rs_store_apply_fn)(void *ctx, rs_txn_id id, const uint8_t *data, uint32_t len);

/* ---- Functions -------------------------------------------------------- */

/* Empties 'st' (frees every client and state). */
void rs_store_clear(struct rs_store *st);

/* The client connection 'ip':'port', or NULL when unknown. */
struct rs_store_client *rs_store_find(struct rs_store *st, uint32_t ip, uint16_t port);

/* The client connection 'ip':'port', created when unknown (evicting the
 * least recently active client without buffered state when the table is
 * full).  Returns NULL when the table is full of clients holding state or
 * memory is short. */
struct rs_store_client *rs_store_get(struct rs_store *st, uint32_t ip, uint16_t port, uint64_t now_ns);

/* Buffers 'len' bytes of state of transaction 'id' (a repeated number
 * replaces the earlier state) and raises TA.  Returns:
 *   0          buffered;
 *   -ESTALE    its number is not after Ts (already applied or passed): dropped;
 *   -ENOBUFS   a bound (per client, count, bytes, clients) is reached;
 *   -ENOMEM    no memory. */
int rs_store_put(struct rs_store *st, rs_txn_id id, const void *data, uint32_t len, uint64_t now_ns);

/* Records that the logger has transaction 'id''s response (and so every
 * earlier one of its connection).  Returns 0, or -ENOBUFS when the client
 * cannot be tracked. */
int rs_store_logged(struct rs_store *st, rs_txn_id id, uint64_t now_ns);

/* Records that the logger cannot log the connection of 'id' (it will never
 * be recovered): from now on its states are applied as they arrive.
 * Returns 0, or -ENOBUFS when the client cannot be tracked. */
int rs_store_unlogged(struct rs_store *st, rs_txn_id id, uint64_t now_ns);

/* Whether the logger is there.  Without it (its connection ended) no
 * recovery can need a buffered state: every state of every connection may
 * be applied (rs_store_drain) until it is back. */
void rs_store_set_logger(struct rs_store *st, bool present);

/* Applies, in number order, the buffered states of 'c' that may be applied:
 * with 'force' false those the logger has logged (all, once it gave up on
 * the connection or is gone: rs_store_unlogged, rs_store_set_logger); with 'force' true every
 * one numbered below 'upto' (recovery's APPLY).  Stops at the first state
 * 'fn' refuses.  Returns the number applied, or fn's error when it refused
 * before applying any. */
int rs_store_drain(struct rs_store *st, struct rs_store_client *c, bool force, uint16_t upto,
                   rs_store_apply_fn fn, void *ctx);

/* The application holds the state of connection 'id' up to transaction
 * 'id' itself: its own update (this backend serves it), or a snapshot
 * that came whole from the predecessor in the chain.  Ts and TA rise to
 * it and the buffered states numbered up to it are dropped.  Returns 0,
 * or -ENOBUFS when the client cannot be tracked. */
int rs_store_cover(struct rs_store *st, rs_txn_id id, uint64_t now_ns);

/* Recovery moved 'c' to this backend from transaction 'upto' on: drops the
 * buffered states numbered 'upto' and later (this backend answers those
 * transactions itself now; the failed primary's copies would overwrite its
 * state once the logger logs its responses) and refuses later ones
 * (rs_store_put: -ESTALE).  Returns the number dropped. */
int rs_store_take_over(struct rs_store *st, struct rs_store_client *c, uint16_t upto);

#endif /* RS_STORE_H */
