/* rs-stated internals: the per-client-connection state buffer (store.c,
 * pure logic: no I/O) and the limits the daemon (main.c) works within.
 * See docs/recovery.md for the role of rs-stated. */
#ifndef RS_STATED_H
#define RS_STATED_H

#include <stdbool.h>
#include <stdint.h>

#include "txn_id.h"

/* ---- Limits ----------------------------------------------------------- */

#define ST_BUCKETS        4096u
#define ST_CLIENTS_MAX    16384u        /* client connections tracked; idle ones are evicted */
#define ST_CLIENT_STATES  1024u         /* buffered states of one client connection */
#define ST_STATES_MAX     65536u        /* buffered states in all */
#define ST_BYTES_MAX      (64u << 20)   /* buffered state bytes in all */

/* ---- Types ------------------------------------------------------------ */

/* One buffered state: transaction 'num' of its client connection. */
struct st_state {
    struct st_state *next;      /* ascending 'num' */
    uint16_t num;
    uint32_t len;
    uint8_t data[];
};

/* What rs-stated knows of one client connection (its transactions come from
 * the primary as STATE_UPDATE and from the logger as TXN_LOGGED). */
struct st_client {
    struct st_client *hnext;
    uint32_t ip;                /* host order */
    uint16_t port;
    bool has_ts, has_ta, has_logged;
    uint16_t ts;                /* Ts: last transaction whose state was applied */
    uint16_t ta;                /* TA: last transaction whose state was received */
    uint16_t logged;            /* last transaction the logger logged completely */
    struct st_state *head, *tail;
    uint32_t n_states;
    uint64_t last_ns;           /* last activity, for eviction */
    bool taken_over;            /* recovered here: the primary's states are over */
};

struct st_store {
    struct st_client *buckets[ST_BUCKETS];
    uint32_t n_clients;
    uint64_t n_states, bytes;
    uint64_t evicted;
};

/* Hands one state to the application.  Returns 0 when it was passed on
 * (it then counts as applied), or a negative errno when it cannot be now
 * (no application connected, its queue full): the state stays buffered. */
typedef int (*st_apply_fn)(void *ctx, rs_txn_id id, const uint8_t *data, uint32_t len);

/* ---- Functions -------------------------------------------------------- */

/* Empties 'st' (frees every client and state). */
void st_store_clear(struct st_store *st);

/* The client connection 'ip':'port', or NULL when unknown. */
struct st_client *st_store_find(struct st_store *st, uint32_t ip, uint16_t port);

/* The client connection 'ip':'port', created when unknown (evicting the
 * least recently active client without buffered state when the table is
 * full).  Returns NULL when the table is full of clients holding state or
 * memory is short. */
struct st_client *st_store_get(struct st_store *st, uint32_t ip, uint16_t port, uint64_t now_ns);

/* Buffers 'len' bytes of state of transaction 'id' (a repeated number
 * replaces the earlier state) and raises TA.  Returns:
 *   0          buffered;
 *   -ESTALE    its number is not after Ts (already applied or passed): dropped;
 *   -ENOBUFS   a bound (per client, count, bytes, clients) is reached;
 *   -ENOMEM    no memory. */
int st_store_put(struct st_store *st, rs_txn_id id, const void *data, uint32_t len, uint64_t now_ns);

/* Records that the logger has transaction 'id''s response (and so every
 * earlier one of its connection).  Returns 0, or -ENOBUFS when the client
 * cannot be tracked. */
int st_store_logged(struct st_store *st, rs_txn_id id, uint64_t now_ns);

/* Applies, in number order, the buffered states of 'c' that may be applied:
 * with 'force' false those the logger has logged; with 'force' true every
 * one numbered below 'upto' (recovery's APPLY).  Stops at the first state
 * 'fn' refuses.  Returns the number applied, or fn's error when it refused
 * before applying any. */
int st_store_drain(struct st_store *st, struct st_client *c, bool force, uint16_t upto,
                   st_apply_fn fn, void *ctx);

/* Recovery moved 'c' to this backend from transaction 'upto' on: drops the
 * buffered states numbered 'upto' and later (this backend answers those
 * transactions itself now; the failed primary's copies would overwrite its
 * state once the logger logs its responses) and refuses later ones
 * (st_store_put: -ESTALE).  Returns the number dropped. */
int st_store_take_over(struct st_store *st, struct st_client *c, uint16_t upto);

/* Transaction-number order within one connection (numbers wrap at 2^16). */
static inline bool st_num_lt(uint16_t a, uint16_t b) { return (int16_t)(uint16_t)(a - b) < 0; }
static inline bool st_num_le(uint16_t a, uint16_t b) { return a == b || st_num_lt(a, b); }

#endif /* RS_STATED_H */
