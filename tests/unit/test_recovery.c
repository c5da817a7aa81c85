/* Unit tests for core/recovery.c: the seed's scenarios with explicit
 * numbers, edge cases, malformed input, and a property test over random
 * histories checking that the client gets every response byte exactly once
 * and every update takes effect exactly once. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "recovery.h"

#define U  RS_RECOVERY_F_UPDATE
#define R  0u
#define ND RS_RECOVERY_F_NONDET

/* A logger history built one transaction at a time. */
struct hist {
    struct rs_recovery_txn t[400];
    struct rs_recovery_input in;
    uint32_t req_next, resp_next;
};

static void hist_init(struct hist *h, uint16_t first, uint32_t req_base, uint32_t resp_base)
{
    memset(h, 0, sizeof(*h));
    h->in.txns = h->t;
    h->in.first_num = first;
    h->in.req_base = h->req_next = req_base;
    h->in.resp_base = h->resp_next = resp_base;
}

/* Appends a transaction; 'resp_logged' == 'resp_len' makes it complete. */
static void hist_add(struct hist *h, uint32_t tags, uint32_t req_logged, bool req_done,
                     uint32_t resp_logged, bool resp_done)
{
    struct rs_recovery_txn *t = &h->t[h->in.n_txns];

    t->num = (uint16_t)(h->in.first_num + h->in.n_txns);
    t->flags = tags | (req_done ? RS_RECOVERY_F_REQ_COMPLETE : 0)
               | (resp_done ? RS_RECOVERY_F_RESP_COMPLETE : 0);
    t->req_start = h->req_next;
    t->req_end = h->req_next + req_logged;
    t->resp_start = h->resp_next;
    t->resp_logged = resp_logged;
    t->resp_end = resp_done ? h->resp_next + resp_logged : 0;
    h->req_next = t->req_end;
    if (resp_done)
        h->resp_next = t->resp_end;
    h->in.n_txns++;
}

static void hist_done(struct hist *h, uint32_t tags, uint32_t req_len, uint32_t resp_len)
{
    hist_add(h, tags, req_len, true, resp_len, true);
}

static void set_alt(struct hist *h, bool has_ts, uint16_t ts, bool has_ta, uint16_t ta)
{
    h->in.has_ts = has_ts;
    h->in.ts = ts;
    h->in.has_ta = has_ta;
    h->in.ta = ta;
}

/* Seed's likely case: TL = Ts = TA, so only TL+1 is (re)executed. */
static void common_case_tl_eq_ts_eq_ta(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 5000, 1000);
    hist_done(&h, R, 300, 100);  /* #1 resp [1000,1100) */
    hist_done(&h, U, 250, 200);  /* #2 [1100,1300) */
    hist_done(&h, U, 400, 150);  /* #3 [1300,1450) */
    hist_add(&h, U, 120, true, 40, false); /* #4 = TL+1, 40 bytes logged */
    set_alt(&h, true, 3, true, 3);
    h.in.ack_cl = 1490;          /* equality: client got everything logged */

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.reason, RS_RECOVERY_R_OK);
    assert_true(p.has_tl);
    assert_int_equal(p.tl, 3);
    assert_int_equal(p.ack_tl, 1450);
    assert_int_equal(p.p, 40);
    assert_true(p.eq1_holds);
    assert_int_equal(p.resend_from, 1490);
    assert_int_equal(p.resend_to, 1490);
    assert_int_equal(p.tsp, 4);
    assert_int_equal(p.tr, 4);
    assert_int_equal(p.n_replay, 0);
    assert_int_equal(p.drop_first, 40);
    assert_int_equal(p.resp_resume, 1490);
    assert_true(p.apply_has_ts);
    assert_int_equal(p.apply_after, 3);
    for (uint16_t n = 0; n < 10; n++)
        assert_false(rs_recovery_plan_applies(&p, n));
    assert_true(p.tl1_logged);
    assert_true(p.tl1_req_complete);
    assert_false(p.tl1_from_sync_state);
    assert_int_equal(p.req_fwd_from, 5000 + 300 + 250 + 400);
    assert_int_equal(p.req_resume, 5000 + 300 + 250 + 400 + 120);
}

/* Alternate lags: Ts < TA < TL.  TR = TA + 1; read-only ones skipped. */
static void lagging_alternate(void **state)
{
    static const uint32_t tags[] = { U, R, U, U, R, U, R, U }; /* #1..#8 */
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 10000);
    for (size_t i = 0; i < 8; i++)
        hist_done(&h, tags[i], 100, 1000);
    hist_add(&h, U, 100, true, 0, false); /* #9: request in, no response yet */
    set_alt(&h, true, 2, true, 4);
    h.in.ack_cl = 18000;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tl, 8);
    assert_int_equal(p.ack_tl, 18000);
    assert_int_equal(p.p, 0);
    assert_int_equal(p.resend_from, 18000);
    assert_int_equal(p.resend_to, 18000);
    assert_int_equal(p.tsp, 9);
    assert_int_equal(p.tr, 5);
    /* (Ts, TR) = (2, 5): apply #3 and #4. */
    assert_false(rs_recovery_plan_applies(&p, 2));
    assert_true(rs_recovery_plan_applies(&p, 3));
    assert_true(rs_recovery_plan_applies(&p, 4));
    assert_false(rs_recovery_plan_applies(&p, 5));
    /* [TR, TL] = [5, 8]: #6 and #8 are updates. */
    assert_int_equal(p.n_replay, 2);
    assert_int_equal(p.replay[0], 6);
    assert_int_equal(p.replay[1], 8);
    assert_true(rs_recovery_plan_replays(&p, 8));
    assert_false(rs_recovery_plan_replays(&p, 5));
}

/* Alternate ahead: TA = TL + 1 (state of TL+1 arrived before the crash). */
static void alternate_ahead(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 10, 700, 2000);
    hist_done(&h, U, 50, 500);  /* #10 */
    hist_done(&h, U, 50, 500);  /* #11 */
    hist_done(&h, U, 50, 500);  /* #12 = TL */
    hist_add(&h, U, 50, true, 0, false); /* #13 */
    set_alt(&h, true, 11, true, 13);
    h.in.ack_cl = 3500;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tl, 12);
    assert_int_equal(p.tr, 13);
    assert_int_equal(p.n_replay, 0);
    assert_true(rs_recovery_plan_applies(&p, 12));
    assert_false(rs_recovery_plan_applies(&p, 11));
    assert_false(rs_recovery_plan_applies(&p, 13)); /* TL+1's state is dropped: re-executed */
}

/* Equation 1 false: the client acked one byte the logger never logged. */
static void eq1_false_unrecoverable(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 1000);
    hist_done(&h, U, 10, 100);
    hist_add(&h, R, 10, true, 30, false);
    set_alt(&h, true, 1, true, 1);
    h.in.ack_cl = 1131;

    assert_int_equal(rs_recovery_plan(&h.in, &p), -ERANGE);
    assert_int_equal(p.reason, RS_RECOVERY_R_EQ1_FALSE);
    assert_false(p.eq1_holds);
    assert_int_equal(p.ack_tl, 1100);
    assert_int_equal(p.p, 30);
    assert_string_equal(rs_recovery_reason_str(p.reason), "eq1-false");

    h.in.ack_cl = 1130; /* boundary: equality holds */
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_true(p.eq1_holds);
}

/* Packet loss: the client is behind AckTL; the logger resends the tail of
 * TL and the logged part of TL+1. */
static void packet_loss_resend(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 1000);
    hist_done(&h, R, 10, 100);  /* [1000,1100) */
    hist_done(&h, U, 10, 200);  /* [1100,1300) = TL */
    hist_add(&h, R, 10, true, 75, false);
    set_alt(&h, true, 2, true, 2);
    h.in.ack_cl = 1170;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_true(p.eq1_holds);
    assert_int_equal(p.resend_from, 1170);
    assert_int_equal(p.resend_to, 1375);
    assert_int_equal(p.resp_resume, 1375);
    assert_int_equal(p.drop_first, 75);

    /* Client already beyond AckTL, inside the p logged bytes. */
    h.in.ack_cl = 1325;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.resend_from, 1325);
    assert_int_equal(p.resend_to, 1375);
}

/* No transaction complete yet: the first response was in flight. */
static void tl_none(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 0, 100, 5001);
    hist_add(&h, U, 80, true, 12, false);
    set_alt(&h, false, 0, false, 0);
    h.in.ack_cl = 5001;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_false(p.has_tl);
    assert_int_equal(p.ack_tl, 5001);
    assert_int_equal(p.p, 12);
    assert_int_equal(p.resend_from, 5001);
    assert_int_equal(p.resend_to, 5013);
    assert_int_equal(p.tsp, 0);
    assert_int_equal(p.tr, 0);
    assert_int_equal(p.n_replay, 0);
    assert_false(p.apply_has_ts);
    assert_false(rs_recovery_plan_applies(&p, 0));
    assert_int_equal(p.req_fwd_from, 100);
    assert_int_equal(p.req_resume, 180);

    /* Nothing at all logged: the connection is idle. */
    hist_init(&h, 0, 100, 5001);
    h.in.ack_cl = 5001;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_false(p.has_tl);
    assert_false(p.tl1_logged);
    assert_int_equal(p.p, 0);
    assert_int_equal(p.tsp, 0);
    assert_int_equal(p.tr, 0);
    assert_int_equal(p.resend_to, 5001);
    assert_int_equal(p.req_fwd_from, 100);
    assert_int_equal(p.req_resume, 100);

    /* Ts set while TL is none: the alternate ran ahead of the client. */
    hist_add(&h, U, 80, true, 0, false);
    set_alt(&h, true, 0, true, 0);
    assert_int_equal(rs_recovery_plan(&h.in, &p), -EINVAL);
    /* TA = TL+1 without Ts is fine: TR = TL + 1 = 0. */
    set_alt(&h, false, 0, true, 0);
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tr, 0);
}

/* Crash between transactions: no TL+1 logged, p = 0; TL+1's request will
 * come from the client after re-splicing. */
static void crash_between_transactions(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 40, 900);
    hist_done(&h, U, 60, 100);
    hist_done(&h, U, 60, 100);
    set_alt(&h, true, 1, true, 1);
    h.in.ack_cl = 1100;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tl, 2);
    assert_int_equal(p.p, 0);
    assert_false(p.tl1_logged);
    assert_false(p.tl1_req_complete);
    assert_int_equal(p.tsp, 3);
    assert_int_equal(p.tr, 2);
    assert_int_equal(p.n_replay, 1);
    assert_int_equal(p.replay[0], 2);
    assert_int_equal(p.resend_from, 1100);
    assert_int_equal(p.resend_to, 1100);
    assert_int_equal(p.req_fwd_from, 160);
    assert_int_equal(p.req_resume, 160);
}

/* TL+1's request is only partly logged: the rest comes from the client. */
static void tl1_request_partial(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 0);
    hist_done(&h, U, 100, 100);
    hist_add(&h, U, 37, false, 0, false);
    set_alt(&h, true, 1, true, 1);
    h.in.ack_cl = 100;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_true(p.tl1_logged);
    assert_false(p.tl1_req_complete);
    assert_int_equal(p.p, 0);
    assert_int_equal(p.req_fwd_from, 100);
    assert_int_equal(p.req_resume, 137);
}

/* Pipelined requests after TL+1 are allowed and supplied by the logger. */
static void pipelined_requests(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 0);
    hist_done(&h, U, 100, 100);
    hist_add(&h, R, 50, true, 20, false);
    hist_add(&h, R, 50, true, 0, false);
    hist_add(&h, R, 25, false, 0, false);
    set_alt(&h, true, 1, true, 1);
    h.in.ack_cl = 120;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tl, 1);
    assert_int_equal(p.p, 20);
    assert_int_equal(p.req_fwd_from, 100);
    assert_int_equal(p.req_resume, 225);

    h.t[2].resp_logged = 1; /* a later response cannot have bytes */
    assert_int_equal(rs_recovery_plan(&h.in, &p), -EINVAL);
}

/* Non-deterministic TL+1 with p > 0: answered from its synchronously sent
 * state, which must have reached the alternate. */
static void nondet_tl1(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 0);
    hist_done(&h, U, 10, 10);
    hist_add(&h, U | ND, 10, true, 5, false);
    set_alt(&h, true, 1, true, 2);
    h.in.ack_cl = 15;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_true(p.tl1_from_sync_state);
    assert_int_equal(p.tr, 2);
    assert_int_equal(p.drop_first, 5);

    set_alt(&h, true, 1, true, 1); /* sync state missing */
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENOTRECOVERABLE);
    assert_int_equal(p.reason, RS_RECOVERY_R_NONDET_NO_STATE);

    h.t[1].resp_logged = 0; /* p = 0: plain re-execution is fine */
    h.in.ack_cl = 10;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_false(p.tl1_from_sync_state);

    /* Read-only nondet with p > 0 also needs its state (the response). */
    h.t[1].flags = ND | RS_RECOVERY_F_REQ_COMPLETE;
    h.t[1].resp_logged = 3;
    h.in.ack_cl = 13;
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENOTRECOVERABLE);
}

/* A non-deterministic update in [TR, TL] means its synchronous state is
 * missing (TA below it): replaying would diverge. */
static void nondet_in_replay_range(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 1, 0, 0);
    hist_done(&h, U, 10, 10);
    hist_done(&h, U | ND, 10, 10);
    hist_done(&h, U, 10, 10);
    set_alt(&h, true, 1, true, 1);
    h.in.ack_cl = 30;
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENOTRECOVERABLE);
    set_alt(&h, true, 1, true, 2); /* received: fine, applied not replayed */
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.n_replay, 1);
    assert_int_equal(p.replay[0], 3);
    assert_true(rs_recovery_plan_applies(&p, 2));
    /* A read-only nondet one in range is simply skipped. */
    h.t[1].flags &= ~U;
    set_alt(&h, true, 1, true, 1);
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.n_replay, 1);
}

/* Sequence numbers and transaction numbers both wrap. */
static void wraparound(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 65534, 0xfffffff0u, 0xffffff00u);
    hist_done(&h, U, 0x20, 0x80);  /* #65534 [..ff00, ..ff80) */
    hist_done(&h, R, 0x20, 0x80);  /* #65535 [..ff80, 0) */
    hist_done(&h, U, 0x20, 0x80);  /* #0     [0, 0x80) = TL */
    hist_add(&h, U, 0x20, true, 0x10, false); /* #1 */
    set_alt(&h, true, 65534, true, 65534);
    h.in.ack_cl = 0xffffffc0u;

    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tl, 0);
    assert_int_equal(p.ack_tl, 0x80);
    assert_int_equal(p.resend_from, 0xffffffc0u);
    assert_int_equal(p.resend_to, 0x90);
    assert_int_equal(p.tsp, 1);
    assert_int_equal(p.tr, 65535);
    assert_int_equal(p.n_replay, 1);
    assert_int_equal(p.replay[0], 0);
    assert_false(rs_recovery_plan_applies(&p, 65534));
    assert_int_equal(p.req_fwd_from, 0x50);
    assert_int_equal(p.req_resume, 0x70);

    h.in.ack_cl = 0x91;
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ERANGE);
}

/* The logger trimmed old history. */
static void trimmed_history(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 20, 0, 1000);
    h.in.has_prior = true;
    hist_done(&h, U, 10, 100);  /* #20 */
    hist_done(&h, U, 10, 100);  /* #21 = TL */
    set_alt(&h, true, 19, true, 19);
    h.in.ack_cl = 1200;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tr, 20);
    assert_int_equal(p.n_replay, 2);

    set_alt(&h, true, 17, true, 18); /* TR = 19: not in the log any more */
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENODATA);
    assert_int_equal(p.reason, RS_RECOVERY_R_TRIMMED);
    assert_int_equal(p.tl, 21); /* filled for the log line */

    set_alt(&h, false, 0, false, 0);
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENODATA);

    /* ... unless the log knows the trimmed ones from TR on were read-only
     * (TA = 18, #19 a trimmed GET): TR moves to the log's first. */
    set_alt(&h, true, 17, true, 18);
    h.in.has_read_only_from = true;
    h.in.read_only_from = 19;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.tr, 20);
    assert_int_equal(p.n_replay, 2);
    assert_true(rs_recovery_plan_applies(&p, 18));      /* received, not applied */
    assert_false(rs_recovery_plan_applies(&p, 20));
    h.in.read_only_from = 20;           /* #19 was an update: it would need a replay */
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENODATA);
    assert_int_equal(p.reason, RS_RECOVERY_R_TRIMMED);
    h.in.has_read_only_from = false;

    set_alt(&h, true, 19, true, 19);
    h.in.ack_cl = 999; /* client lacks bytes the logger dropped */
    assert_int_equal(rs_recovery_plan(&h.in, &p), -ENODATA);
    assert_int_equal(p.reason, RS_RECOVERY_R_ACK_BEFORE_LOG);

    /* Trimmed history, empty log: TL is the last trimmed transaction. */
    hist_init(&h, 20, 0, 1000);
    h.in.has_prior = true;
    set_alt(&h, true, 19, true, 19);
    h.in.ack_cl = 1000;
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_true(p.has_tl);
    assert_int_equal(p.tl, 19);
    assert_int_equal(p.tsp, 20);
    assert_int_equal(p.tr, 20);
}

static void replay_too_long(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
    hist_init(&h, 0, 0, 0);
    for (unsigned i = 0; i < RS_RECOVERY_MAX_REPLAY + 1; i++)
        hist_done(&h, U, 1, 1);
    set_alt(&h, false, 0, false, 0);
    h.in.ack_cl = RS_RECOVERY_MAX_REPLAY + 1;
    assert_int_equal(rs_recovery_plan(&h.in, &p), -E2BIG);
    assert_int_equal(p.reason, RS_RECOVERY_R_REPLAY_TOO_LONG);
    /* One fewer fits exactly. */
    set_alt(&h, true, 0, true, 0);
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(p.n_replay, RS_RECOVERY_MAX_REPLAY);
    assert_int_equal(p.replay[RS_RECOVERY_MAX_REPLAY - 1], RS_RECOVERY_MAX_REPLAY);
}

static void rejects_malformed(void **state)
{
    struct hist h;
    struct rs_recovery_plan p;

    (void)state;
#define BASE()                                   \
    do {                                         \
        hist_init(&h, 1, 0, 1000);               \
        hist_done(&h, U, 10, 100);               \
        hist_done(&h, U, 10, 100);               \
        hist_add(&h, U, 10, true, 5, false);     \
        set_alt(&h, true, 1, true, 2);           \
        h.in.ack_cl = 1205;                      \
    } while (0)
#define EXPECT_EINVAL()                                                  \
    do {                                                                 \
        assert_int_equal(rs_recovery_plan(&h.in, &p), -EINVAL);          \
        assert_int_equal(p.reason, RS_RECOVERY_R_BAD_INPUT);             \
    } while (0)

    BASE();
    assert_int_equal(rs_recovery_plan(&h.in, &p), 0);
    assert_int_equal(rs_recovery_plan(NULL, &p), -EINVAL);
    assert_int_equal(rs_recovery_plan(&h.in, NULL), -EINVAL);
    BASE(); h.t[1].num = 7; EXPECT_EINVAL();                 /* numbers not consecutive */
    BASE(); h.t[0].flags |= 1u << 7; EXPECT_EINVAL();        /* unknown flag */
    BASE(); h.t[1].resp_start += 1; EXPECT_EINVAL();         /* gap in the response stream */
    BASE(); h.t[1].resp_end += 1; EXPECT_EINVAL();           /* end disagrees with bytes */
    BASE(); h.t[1].req_start += 1; EXPECT_EINVAL();          /* gap in the request stream */
    BASE(); h.t[0].req_end = h.t[0].req_start - 1;           /* negative request length */
    h.t[1].req_start = h.t[0].req_end; EXPECT_EINVAL();
    BASE(); h.t[2].resp_start -= 1; EXPECT_EINVAL();         /* TL+1 must start at AckTL */
    BASE(); h.t[0].flags &= ~RS_RECOVERY_F_REQ_COMPLETE; EXPECT_EINVAL();
    BASE(); h.t[2].flags &= ~RS_RECOVERY_F_REQ_COMPLETE; EXPECT_EINVAL(); /* bytes w/o request */
    BASE(); h.t[1].resp_logged = 0x80000000u; h.t[1].resp_end = h.t[1].resp_start + 0x80000000u;
    EXPECT_EINVAL();
    BASE(); h.t[1].flags &= ~RS_RECOVERY_F_RESP_COMPLETE;   /* bytes past TL+1 */
    EXPECT_EINVAL();
    BASE(); h.t[0].flags &= ~RS_RECOVERY_F_RESP_COMPLETE;   /* complete after partial */
    h.t[0].resp_logged = 50; EXPECT_EINVAL();
    BASE(); set_alt(&h, true, 3, true, 3); EXPECT_EINVAL();  /* Ts > TL */
    BASE(); set_alt(&h, true, 2, true, 1); EXPECT_EINVAL();  /* Ts > TA */
    BASE(); set_alt(&h, true, 1, false, 0); EXPECT_EINVAL(); /* applied, not received */
    BASE(); set_alt(&h, true, 0, true, 1); EXPECT_EINVAL();  /* before the connection */
    BASE(); h.in.n_txns = RS_RECOVERY_MAX_TXNS + 1; EXPECT_EINVAL();
    BASE(); h.in.txns = NULL; EXPECT_EINVAL();
    BASE(); h.in.req_base = 1; EXPECT_EINVAL();
#undef BASE
#undef EXPECT_EINVAL
}

/* ---- Property test ------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: reproducible across platforms, seeded per run. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static uint32_t rnd(uint64_t *s, uint32_t n) { return n ? (uint32_t)(rng_next(s) % n) : 0; }

#define PMAX_TXNS 10
#define PMAX_RESP 400

/* Byte 'off' of transaction 'i's response: what a deterministic server
 * (or the synchronously transferred state) regenerates. */
static uint8_t resp_byte(size_t i, uint32_t off) { return (uint8_t)(i * 31u + off * 7u + 1u); }

struct pstats { unsigned ok, eq1, nondet, trimmed, no_tl, wrapped, replays, applies; };

static void property_case(uint64_t *s, struct pstats *st)
{
    struct hist h;
    struct rs_recovery_plan p;
    uint32_t req_len[PMAX_TXNS], resp_len[PMAX_TXNS], tags[PMAX_TXNS], resp_off[PMAX_TXNS + 1];
    size_t n_all = rnd(s, PMAX_TXNS + 1), k;
    uint16_t first = (uint16_t)rng_next(s);
    uint32_t req_base = rnd(s, 2) ? 0xffffffffu - rnd(s, 6000) : (uint32_t)rng_next(s);
    uint32_t resp_base = rnd(s, 2) ? 0xffffffffu - rnd(s, 6000) : (uint32_t)rng_next(s);
    uint32_t p_log = 0, logged_end, ack, tp;
    int32_t o_ta, o_ts, o_tl, o_tr, lo;
    bool has_prior = rnd(s, 4) == 0, expect_nondet = false;
    int rc;

    resp_off[0] = 0;
    for (size_t i = 0; i < n_all; i++) {
        req_len[i] = 1 + rnd(s, 300);
        resp_len[i] = rnd(s, 10) ? 1 + rnd(s, PMAX_RESP) : 0;
        tags[i] = (rnd(s, 2) ? U : 0) | (rnd(s, 5) == 0 ? ND : 0);
        resp_off[i + 1] = resp_off[i] + resp_len[i];
    }

    /* Crash: k = index of TL+1 in the full history. */
    k = rnd(s, (uint32_t)n_all + 1);
    hist_init(&h, first, req_base, resp_base);
    h.in.has_prior = has_prior;
    for (size_t i = 0; i < k; i++)
        hist_done(&h, tags[i], req_len[i], resp_len[i]);
    if (k < n_all) {
        uint32_t req_got = rnd(s, req_len[k] + 1);
        if (req_got == req_len[k] && resp_len[k] && rnd(s, 2)) {
            p_log = rnd(s, resp_len[k]); /* mid-response */
            hist_add(&h, tags[k], req_got, true, p_log, false);
            /* pipelined requests behind it */
            for (size_t i = k + 1; i < n_all && rnd(s, 3) == 0; i++) {
                uint32_t got = 1 + rnd(s, req_len[i]);
                hist_add(&h, tags[i], got, got == req_len[i], 0, false);
                if (got != req_len[i])
                    break;
            }
        } else if (req_got) {
            hist_add(&h, tags[k], req_got, req_got == req_len[k], 0, false);
        }
    }
    logged_end = resp_base + resp_off[k] + p_log;

    /* Client ACK: anywhere it could be, sometimes beyond what was logged. */
    ack = resp_base + rnd(s, resp_off[k] + p_log + 1);
    if (rnd(s, 10) == 0)
        ack = logged_end + 1 + rnd(s, 50);
    if (has_prior && rnd(s, 20) == 0)
        ack = resp_base - 1 - rnd(s, 50);

    /* Alternate: TA anywhere from none to TL+1 (ordinals from first). */
    o_tl = (int32_t)k - 1;
    lo = has_prior ? -4 : -1;
    o_ta = lo + (int32_t)rnd(s, (uint32_t)(o_tl + 2 - lo + 1));
    /* Usually honour the synchronous transfer of nondet transactions. */
    if (rnd(s, 8)) {
        for (size_t i = 0; i < k; i++)
            if ((tags[i] & ND) && o_ta < (int32_t)i)
                o_ta = (int32_t)i;
        if (k < n_all && (tags[k] & ND) && p_log && o_ta < (int32_t)k)
            o_ta = (int32_t)k;
    }
    o_ts = lo + (int32_t)rnd(s, (uint32_t)((o_ta < o_tl ? o_ta : o_tl) - lo + 1));
    h.in.has_ta = has_prior ? o_ta > -4 : o_ta >= 0;
    h.in.ta = (uint16_t)(first + o_ta);
    h.in.has_ts = has_prior ? o_ts > -4 : o_ts >= 0;
    h.in.ts = (uint16_t)(first + o_ts);
    if (!h.in.has_ta)
        o_ta = has_prior ? -100000 : -1;
    if (!h.in.has_ts)
        o_ts = has_prior ? -100000 : -1;
    h.in.ack_cl = ack;

    /* The seed's formula, independently. */
    o_tr = o_tl >= o_ta ? o_ta + 1 : o_tl + 1;
    for (int32_t j = o_tr < 0 ? 0 : o_tr; j <= o_tl; j++)
        if ((tags[j] & U) && (tags[j] & ND))
            expect_nondet = true;
    if (k < n_all && (size_t)k < h.in.n_txns && (tags[k] & ND) && p_log && o_ta < (int32_t)k)
        expect_nondet = true;

    rc = rs_recovery_plan(&h.in, &p);
    if (rs_seq_gt(ack, logged_end)) {
        assert_int_equal(rc, -ERANGE);
        assert_false(p.eq1_holds);
        st->eq1++;
        return;
    }
    if (rs_seq_lt(ack, resp_base) || o_tr < 0) {
        assert_int_equal(rc, -ENODATA);
        st->trimmed++;
        return;
    }
    if (expect_nondet) {
        assert_int_equal(rc, -ENOTRECOVERABLE);
        st->nondet++;
        return;
    }
    assert_int_equal(rc, 0);
    st->ok++;

    /* TL, AckTL, p and equation 1. */
    assert_int_equal(p.has_tl, k > 0 || has_prior);
    st->no_tl += !p.has_tl;
    if (p.has_tl)
        assert_int_equal(p.tl, (uint16_t)(first + o_tl));
    assert_int_equal(p.ack_tl, resp_base + resp_off[k]);
    assert_int_equal(p.p, p_log);
    assert_true(p.eq1_holds);
    assert_int_equal(p.tsp, (uint16_t)(first + k));

    /* Resend ends exactly at the last logged byte and the alternate picks
     * up right there. */
    assert_int_equal(p.resend_from, ack);
    assert_int_equal(p.resend_to, logged_end);
    assert_int_equal(p.resp_resume, p.ack_tl + p.drop_first);
    assert_int_equal(p.resp_resume, p.resend_to);
    st->wrapped += logged_end < resp_base;

    /* Simulate the client's byte stream from its ACK on: logger resend,
     * then the alternate's TL+1 minus drop_first, then later transactions.
     * Every byte must arrive once and equal the crash-free stream. */
    {
        static uint8_t seen[PMAX_TXNS * PMAX_RESP + 1], data[PMAX_TXNS * PMAX_RESP + 1];
        uint32_t total = resp_off[n_all], start = rs_seq_dist(resp_base, ack);

        memset(seen, 0, total);
        for (uint32_t b = rs_seq_dist(resp_base, p.resend_from); b < rs_seq_dist(resp_base, p.resend_to); b++) {
            size_t t = 0;
            while (resp_off[t + 1] <= b)
                t++;
            seen[b]++;
            data[b] = resp_byte(t, b - resp_off[t]); /* from the log */
        }
        for (size_t t = k; t < n_all; t++) {
            uint32_t from = t == k ? p.drop_first : 0;
            uint32_t at = rs_seq_dist(resp_base, p.ack_tl) + (resp_off[t] - resp_off[k]);
            for (uint32_t off = from; off < resp_len[t]; off++) {
                seen[at + off]++;
                data[at + off] = resp_byte(t, off); /* regenerated */
            }
        }
        for (uint32_t b = start; b < total; b++) {
            size_t t = 0;
            while (resp_off[t + 1] <= b)
                t++;
            assert_int_equal(seen[b], 1);
            assert_int_equal(data[b], resp_byte(t, b - resp_off[t]));
        }
    }

    /* TR and the replay list: exactly the updates in [TR, TL]. */
    tp = (uint16_t)(first + o_tr);
    assert_int_equal(p.tr, tp);
    assert_true(p.tr == (uint16_t)(first + o_ta + 1) || p.tr == (uint16_t)(first + o_tl + 1));
    {
        size_t want = 0;
        for (int32_t j = o_tr; j <= o_tl; j++) {
            if (!(tags[j] & U))
                continue;
            assert_true(want < p.n_replay);
            assert_int_equal(p.replay[want], (uint16_t)(first + j));
            want++;
        }
        assert_int_equal(p.n_replay, want);
        st->replays += want > 0;
    }

    /* Every update up to TL takes effect exactly once: applied before
     * (<= Ts), applied now (buffered, <= TA) or replayed.  Nothing after TL
     * is applied or replayed. */
    for (int32_t j = 0; j < (int32_t)n_all; j++) {
        uint16_t num = (uint16_t)(first + j);
        bool before = j <= o_ts, now = rs_recovery_plan_applies(&p, num);
        bool again = rs_recovery_plan_replays(&p, num);

        if (j > o_tl) {
            assert_false(now);
            assert_false(again);
            continue;
        }
        if (now) {
            assert_true(j <= o_ta);
            st->applies++;
        }
        if (tags[j] & U)
            assert_int_equal((int)before + (int)now + (int)again, 1);
        else
            assert_false(again);
    }

    assert_int_equal(p.tl1_logged, k < h.in.n_txns);
    assert_int_equal(p.tl1_from_sync_state, p.tl1_logged && (tags[k] & ND) && p_log > 0);
    assert_int_equal(p.req_resume, h.in.n_txns ? h.t[h.in.n_txns - 1].req_end : req_base);
    assert_int_equal(p.req_fwd_from, p.tl1_logged ? h.t[k].req_start : p.req_resume);
}

static void property_random_histories(void **state)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    struct pstats st = { 0 };

    (void)state;
    for (int i = 0; i < 20000; i++)
        property_case(&s, &st);
    /* The generator must reach every branch, or the test proves little. */
    assert_true(st.ok > 5000);
    assert_true(st.eq1 > 500);
    assert_true(st.nondet > 50);
    assert_true(st.trimmed > 50);
    assert_true(st.no_tl > 100);
    assert_true(st.wrapped > 100);
    assert_true(st.replays > 1000);
    assert_true(st.applies > 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(common_case_tl_eq_ts_eq_ta),
        cmocka_unit_test(lagging_alternate),
        cmocka_unit_test(alternate_ahead),
        cmocka_unit_test(eq1_false_unrecoverable),
        cmocka_unit_test(packet_loss_resend),
        cmocka_unit_test(tl_none),
        cmocka_unit_test(crash_between_transactions),
        cmocka_unit_test(tl1_request_partial),
        cmocka_unit_test(pipelined_requests),
        cmocka_unit_test(nondet_tl1),
        cmocka_unit_test(nondet_in_replay_range),
        cmocka_unit_test(wraparound),
        cmocka_unit_test(trimmed_history),
        cmocka_unit_test(replay_too_long),
        cmocka_unit_test(rejects_malformed),
        cmocka_unit_test(property_random_histories),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
