/* Recovery arithmetic (see recovery.h and the seed, §4.3).  Transaction
 * numbers are turned into ordinals relative to first_num so that "TL >= TA"
 * and friends are plain integer comparisons even when numbers wrap. */
#include "recovery.h"

#include <errno.h>
#include <string.h>

/* Byte counts above this would make mod-2^32 comparisons ambiguous. */
#define RS_RECOVERY_MAX_SPAN 0x7fffffffu

/* Ordinal of "none" when history before first_num was trimmed: far enough
 * below every real ordinal that TR = none + 1 is still before the log. */
#define ORD_FAR_PAST (-0x100000)

static int32_t ord_of(uint16_t num, uint16_t first)
{
    return (int16_t)(uint16_t)(num - first);
}

static uint16_t num_of(int32_t ord, uint16_t first)
{
    return (uint16_t)(first + (uint16_t)ord);
}

static int fail(struct rs_recovery_plan *plan, enum rs_recovery_reason why, int err)
{
    plan->reason = why;
    return err;
}

/* Checks the history's shape and finds k, the index of the first transaction
 * without a complete response (TL+1), and AckTL.  Returns 0 or -EINVAL. */
static int scan_history__(const struct rs_recovery_input *in, size_t *k_out, uint32_t *ack_tl)
{
    uint32_t req_next = in->req_base, resp_next = in->resp_base;
    size_t k = in->n_txns;

    if (in->n_txns > RS_RECOVERY_MAX_TXNS || (in->n_txns && !in->txns))
        return -EINVAL;
    for (size_t i = 0; i < in->n_txns; i++) {
        const struct rs_recovery_txn *t = &in->txns[i];
        bool req_done = t->flags & RS_RECOVERY_F_REQ_COMPLETE;
        bool resp_done = t->flags & RS_RECOVERY_F_RESP_COMPLETE;

        if (t->num != num_of((int32_t)i, in->first_num) || (t->flags & ~RS_RECOVERY_F_ALL))
            return -EINVAL;
        /* Requests follow one another on the stream; only the last can be partial. */
        if (t->req_start != req_next || rs_seq_dist(t->req_start, t->req_end) > RS_RECOVERY_MAX_SPAN)
            return -EINVAL;
        if (!req_done && i + 1 != in->n_txns)
            return -EINVAL;
        req_next = t->req_end;

        if (t->resp_logged > RS_RECOVERY_MAX_SPAN)
            return -EINVAL;
        /* A response with bytes answers a whole request (HTTP/1.1 order). */
        if ((resp_done || t->resp_logged) && !req_done)
            return -EINVAL;
        if (k == in->n_txns) {
            if (t->resp_start != resp_next)
                return -EINVAL;
            if (resp_done) {
                if (rs_seq_dist(t->resp_start, t->resp_end) != t->resp_logged)
                    return -EINVAL;
                resp_next = t->resp_end;
            } else {
                k = i;
            }
        } else if (resp_done || t->resp_logged) {
            /* Past TL+1 nothing can have response bytes yet. */
            return -EINVAL;
        }
    }
    *k_out = k;
    *ack_tl = resp_next;
    return 0;
}

int rs_recovery_plan(const struct rs_recovery_input *in, struct rs_recovery_plan *plan)
{
    int32_t none, o_tl, o_ts, o_ta, o_tr;
    uint32_t ack_tl;
    size_t k;
    int err;

    if (!plan)
        return -EINVAL;
    memset(plan, 0, sizeof(*plan));
    if (!in)
        return fail(plan, RS_RECOVERY_R_BAD_INPUT, -EINVAL);
    err = scan_history__(in, &k, &ack_tl);
    if (err)
        return fail(plan, RS_RECOVERY_R_BAD_INPUT, err);

    /* Ordinal 0 is first_num.  Without trimmed history, "none" is the slot
     * just before the connection's first transaction. */
    none = in->has_prior ? ORD_FAR_PAST : -1;
    o_tl = (int32_t)k - 1;
    o_ts = in->has_ts ? ord_of(in->ts, in->first_num) : none;
    o_ta = in->has_ta ? ord_of(in->ta, in->first_num) : none;
    if (!in->has_prior && ((in->has_ts && o_ts < 0) || (in->has_ta && o_ta < 0)))
        return fail(plan, RS_RECOVERY_R_BAD_INPUT, -EINVAL);
    /* Applied implies received; applying past TL would break invariant 3. */
    if ((in->has_ts && !in->has_ta) || o_ts > o_ta || o_ts > o_tl)
        return fail(plan, RS_RECOVERY_R_BAD_INPUT, -EINVAL);

    plan->has_tl = k > 0 || in->has_prior;
    plan->tl = num_of(o_tl, in->first_num);
    plan->tsp = num_of(o_tl + 1, in->first_num);
    plan->ack_tl = ack_tl;
    plan->p = k < in->n_txns ? in->txns[k].resp_logged : 0;
    plan->drop_first = plan->p;
    plan->resp_resume = ack_tl + plan->p;
    plan->tl1_logged = k < in->n_txns;
    plan->tl1_req_complete = plan->tl1_logged && (in->txns[k].flags & RS_RECOVERY_F_REQ_COMPLETE);
    plan->req_resume = in->n_txns ? in->txns[in->n_txns - 1].req_end : in->req_base;
    plan->req_fwd_from = plan->tl1_logged ? in->txns[k].req_start : plan->req_resume;
    plan->apply_has_ts = in->has_ts;
    plan->apply_after = in->ts;

    /* Equation 1: the logger can only resend what it logged. */
    plan->eq1_holds = rs_seq_le(in->ack_cl, plan->resp_resume);
    plan->resend_from = in->ack_cl;
    plan->resend_to = plan->resp_resume;
    if (!plan->eq1_holds)
        return fail(plan, RS_RECOVERY_R_EQ1_FALSE, -ERANGE);
    if (rs_seq_lt(in->ack_cl, in->resp_base))
        return fail(plan, RS_RECOVERY_R_ACK_BEFORE_LOG, -ENODATA);

    o_tr = o_tl >= o_ta ? o_ta + 1 : o_tl + 1;
    if (o_tr < 0) {
        /* Trimmed transactions from TR on need no replay if all were read-only. */
        if (!in->has_read_only_from || ord_of(in->read_only_from, in->first_num) > o_tr)
            return fail(plan, RS_RECOVERY_R_TRIMMED, -ENODATA);
        o_tr = 0;
    }
    plan->tr = num_of(o_tr, in->first_num);

    /* The client holds p bytes of a response that re-execution would not
     * reproduce; the primary sent this state before those bytes, so it must
     * have reached the alternate (TA >= TL+1). */
    if (plan->tl1_logged && plan->p && (in->txns[k].flags & RS_RECOVERY_F_NONDET)) {
        if (o_ta < o_tl + 1)
            return fail(plan, RS_RECOVERY_R_NONDET_NO_STATE, -ENOTRECOVERABLE);
        plan->tl1_from_sync_state = true;
    }

    for (int32_t o = o_tr; o <= o_tl; o++) {
        const struct rs_recovery_txn *t = &in->txns[o];

        if (!(t->flags & RS_RECOVERY_F_UPDATE))
            continue; /* read-only: its logged response is all the client needs */
        /* Replaying would produce different state; a synchronous transfer
         * would have put it at or below TA, hence before TR. */
        if (t->flags & RS_RECOVERY_F_NONDET)
            return fail(plan, RS_RECOVERY_R_NONDET_NO_STATE, -ENOTRECOVERABLE);
        if (plan->n_replay == RS_RECOVERY_MAX_REPLAY)
            return fail(plan, RS_RECOVERY_R_REPLAY_TOO_LONG, -E2BIG);
        plan->replay[plan->n_replay++] = t->num;
    }
    plan->reason = RS_RECOVERY_R_OK;
    return 0;
}

bool rs_recovery_plan_applies(const struct rs_recovery_plan *plan, uint16_t num)
{
    if (plan->apply_has_ts && (int16_t)(uint16_t)(num - plan->apply_after) <= 0)
        return false;
    return (int16_t)(uint16_t)(plan->tr - num) > 0;
}

bool rs_recovery_plan_replays(const struct rs_recovery_plan *plan, uint16_t num)
{
    for (size_t i = 0; i < plan->n_replay; i++)
        if (plan->replay[i] == num)
            return true;
    return false;
}

const char *rs_recovery_reason_str(enum rs_recovery_reason reason)
{
    switch (reason) {
    case RS_RECOVERY_R_OK:              return "ok";
    case RS_RECOVERY_R_BAD_INPUT:       return "bad-input";
    case RS_RECOVERY_R_EQ1_FALSE:       return "eq1-false";
    case RS_RECOVERY_R_ACK_BEFORE_LOG:  return "ack-before-log";
    case RS_RECOVERY_R_TRIMMED:         return "history-trimmed";
    case RS_RECOVERY_R_NONDET_NO_STATE: return "nondet-state-missing";
    case RS_RECOVERY_R_REPLAY_TOO_LONG: return "replay-too-long";
    }
    return "unknown";
}
