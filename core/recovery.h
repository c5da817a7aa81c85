/* Recovery arithmetic of the seed (§4.2-4.3): from the logger's view of one
 * connection, the client's last ACK and the alternate's Ts/TA, works out
 * TL, AckTL, p, equation 1, the bytes the logger resends, Tsp, TR and the
 * transactions the alternate replays.  Pure: no I/O, no globals. */
#ifndef RS_RECOVERY_H
#define RS_RECOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "seq.h"
#include "txn_id.h"

/* ---- Types ---------------------------------------------------------------- */

/* Transaction tags.  The low two bits equal RS_TAG_UPDATE/RS_TAG_NONDET of
 * core/tags.h, so the tagger's flags can be copied in unchanged. */
#define RS_RECOVERY_F_UPDATE        (1u << 0) /* changes application state; else read-only */
#define RS_RECOVERY_F_NONDET        (1u << 1) /* non-deterministic: the primary sends its
                                                * state synchronously, before the response */
#define RS_RECOVERY_F_REQ_COMPLETE  (1u << 2) /* the whole request is logged */
#define RS_RECOVERY_F_RESP_COMPLETE (1u << 3) /* the whole response is logged */
#define RS_RECOVERY_F_ALL           0xfu

/* Largest history one call accepts; keeps transaction-number arithmetic
 * (mod 2^16, see txn_id.h) unambiguous and the work bounded. */
#define RS_RECOVERY_MAX_TXNS   4096u
/* Longest replay list; on a LAN the alternate lags by a transaction or two. */
#define RS_RECOVERY_MAX_REPLAY 256u

/* One transaction as the logger saw it.  Request seqs are in the
 * client->server space, response seqs in the server->client space as the
 * client sees it (after splice translation), so they compare with AckcL. */
struct rs_recovery_txn {
    uint16_t num;        /* number part of the transaction ID (rs_txn_id_num) */
    uint32_t flags;      /* RS_RECOVERY_F_* */
    uint32_t req_start;  /* seq of the first request byte */
    uint32_t req_end;    /* seq after the last request byte logged so far */
    uint32_t resp_start; /* seq of the first response byte; only checked while
                          * the response has bytes or is the one after TL */
    uint32_t resp_end;   /* seq after the last response byte; only read when
                          * RS_RECOVERY_F_RESP_COMPLETE is set */
    uint32_t resp_logged;/* response bytes logged contiguously from resp_start */
};

/* What the recovery manager knows about one connection at failure time.
 * 'txns' lists consecutive transactions in order: every one with a
 * complete response, then at most one with a partial response (TL+1), then
 * only requests without response bytes (pipelined). */
struct rs_recovery_input {
    const struct rs_recovery_txn *txns;
    size_t n_txns;
    uint16_t first_num;  /* number of txns[0]; of the next transaction if n_txns == 0 */
    bool has_prior;      /* earlier transactions existed, all complete, and were
                          * trimmed from the log; else first_num opens the connection */
    bool has_read_only_from; /* the trimmed transactions numbered from */
    uint16_t read_only_from; /* read_only_from on were read-only: TR may be among
                              * them (their responses are all the client needs) */
    uint32_t req_base;   /* client->server seq where txns[0]'s request starts
                          * (the next request byte when n_txns == 0) */
    uint32_t resp_base;  /* server->client seq where txns[0]'s response starts
                          * (the next response byte when n_txns == 0) */
    uint32_t ack_cl;     /* AckcL: last ACK number received from the client */
    bool has_ts;         /* false: the alternate applied no state yet */
    uint16_t ts;         /* Ts: last transaction whose state the alternate applied */
    bool has_ta;         /* false: the alternate received no state yet */
    uint16_t ta;         /* TA: last transaction whose state the alternate received */
};

/* Why a plan could not be made (plan->reason). */
enum rs_recovery_reason {
    RS_RECOVERY_R_OK = 0,
    RS_RECOVERY_R_BAD_INPUT,       /* inconsistent history or Ts/TA (-EINVAL) */
    RS_RECOVERY_R_EQ1_FALSE,       /* AckcL > AckTL + p: client acked unlogged bytes (-ERANGE) */
    RS_RECOVERY_R_ACK_BEFORE_LOG,  /* AckcL before the logged bytes start (-ENODATA) */
    RS_RECOVERY_R_TRIMMED,         /* TR precedes the logged history, and an update may
                                    * be among the trimmed transactions from TR on (-ENODATA) */
    RS_RECOVERY_R_NONDET_NO_STATE, /* a non-deterministic transaction would have to be
                                    * re-executed but its state never reached the
                                    * alternate (-ENOTRECOVERABLE) */
    RS_RECOVERY_R_REPLAY_TOO_LONG, /* more than RS_RECOVERY_MAX_REPLAY to replay (-E2BIG) */
};

/* The recovery plan.  Transaction numbers wrap mod 2^16 like txn_id.h. */
struct rs_recovery_plan {
    enum rs_recovery_reason reason;
    bool has_tl;          /* false: no response was fully logged yet ("TL = none") */
    uint16_t tl;          /* TL */
    uint32_t ack_tl;      /* AckTL: seq after TL's last response byte (resp_base if no TL) */
    uint32_t p;           /* response bytes of TL+1 already logged */
    bool eq1_holds;       /* AckcL <= AckTL + p (mod 2^32) */
    uint32_t resend_from; /* logger resends [resend_from, resend_to) = [AckcL, AckTL + p) */
    uint32_t resend_to;   /*   ... to the client; empty when equal */
    uint16_t tsp;         /* Tsp = TL + 1: the client is re-spliced to the alternate here */
    uint32_t drop_first;  /* = p: bytes of the alternate's TL+1 response to discard */
    uint32_t resp_resume; /* R = AckTL + p: first response byte the alternate delivers */

    uint16_t tr;          /* TR = TA + 1 if TL >= TA, else TL + 1 */
    bool apply_has_ts;    /* apply buffered state of transactions t with Ts < t < TR */
    uint16_t apply_after; /*   (= Ts; when !apply_has_ts, every buffered t < TR) */
    size_t n_replay;      /* update transactions in [TR, TL], in order */
    uint16_t replay[RS_RECOVERY_MAX_REPLAY];

    bool tl1_logged;       /* some request bytes of TL+1 are logged */
    bool tl1_req_complete; /* the whole TL+1 request is logged (else the rest
                            * comes from the client after re-splicing) */
    bool tl1_from_sync_state; /* TL+1 is non-deterministic with p > 0: answer it from
                               * its synchronously transferred state, not by
                               * re-executing it (the client holds p of its bytes) */
    uint32_t req_fwd_from; /* logger supplies client bytes [req_fwd_from, req_resume) */
    uint32_t req_resume;   /*   (TL+1 and later) after the replayed requests; Q =
                            *   req_resume is where the client's own bytes take over */
};

/* ---- Functions ------------------------------------------------------------ */

/* Computes the recovery plan for 'in' into '*plan'.  Returns:
 *   0                 plan is complete;
 *   -EINVAL           'in' is malformed or contradicts itself (non-consecutive
 *                     numbers, gaps in a byte stream, Ts > TL, Ts > TA, ...);
 *   -ERANGE           equation 1 is false: unrecoverable, the client
 *                     acknowledged response bytes the logger never logged;
 *   -ENODATA          the logger no longer holds bytes or requests the plan
 *                     needs (AckcL before resp_base, or TR before first_num);
 *   -ENOTRECOVERABLE  a non-deterministic transaction would be re-executed
 *                     though its synchronously sent state is missing (TA too low);
 *   -E2BIG            the replay list exceeds RS_RECOVERY_MAX_REPLAY.
 * On every error plan->reason says which case; on -ERANGE, -ENODATA and
 * -ENOTRECOVERABLE the fields computed before the failure (TL, AckTL, p,
 * eq1_holds, ...) are filled in so the caller can log them. */
int rs_recovery_plan(const struct rs_recovery_input *in, struct rs_recovery_plan *plan);

/* True when the alternate applies the buffered state of transaction 'num'
 * under 'plan' (Ts < num < TR). */
bool rs_recovery_plan_applies(const struct rs_recovery_plan *plan, uint16_t num);

/* True when 'plan' replays transaction 'num'. */
bool rs_recovery_plan_replays(const struct rs_recovery_plan *plan, uint16_t num);

/* Short name of 'reason' for log lines. */
const char *rs_recovery_reason_str(enum rs_recovery_reason reason);

#endif /* RS_RECOVERY_H */
