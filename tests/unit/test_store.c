/* Unit tests for core/store.c, rs-stated's buffer of states: order, Ts and
 * TA, release by the logger and by recovery's APPLY, resends, stale states,
 * take-over, bounds, eviction and number wrap. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "store.h"

#define IP   0x0a000101u
#define PORT 40000

static struct rs_store *st;

/* What the apply callback saw, and when it refuses. */
static struct {
    uint16_t nums[64];
    char data[64][16];
    int n;
    int refuse_after;           /* -1: never */
} seen;

static int apply(void *ctx, rs_txn_id id, const uint8_t *data, uint32_t len)
{
    (void)ctx;
    if (seen.refuse_after >= 0 && seen.n >= seen.refuse_after)
        return -ENOBUFS;
    assert_int_equal(rs_txn_id_ip4(id), IP);
    assert_int_equal(rs_txn_id_port(id), PORT);
    seen.nums[seen.n] = rs_txn_id_num(id);
    memcpy(seen.data[seen.n], data, len < 15 ? len : 15);
    seen.data[seen.n][len < 15 ? len : 15] = '\0';
    seen.n++;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    st = calloc(1, sizeof(*st));
    memset(&seen, 0, sizeof(seen));
    seen.refuse_after = -1;
    return st ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rs_store_clear(st);
    assert_int_equal(st->n_states, 0);
    assert_int_equal(st->bytes, 0);
    free(st);
    return 0;
}

static int put(uint16_t num, const char *text)
{
    return rs_store_put(st, rs_txn_id_make(IP, PORT, num), text, (uint32_t)strlen(text), 1000);
}

static struct rs_store_client *client(void)
{
    return rs_store_find(st, IP, PORT);
}

/* Buffered states wait for the logger, then go in number order up to the
 * logged one; Ts follows what was applied, TA what was received. */
static void released_by_the_logger_in_order(void **state)
{
    struct rs_store_client *c;

    (void)state;
    assert_int_equal(put(2, "s2"), 0);
    assert_int_equal(put(0, "s0"), 0);         /* out of order: inserted before */
    assert_int_equal(put(1, "s1"), 0);
    c = client();
    assert_non_null(c);
    assert_true(c->has_ta);
    assert_int_equal(c->ta, 2);
    assert_false(c->has_ts);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 0);   /* nothing logged */
    assert_int_equal(rs_store_logged(st, rs_txn_id_make(IP, PORT, 1), 2000), 0);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 2);
    assert_int_equal(seen.n, 2);
    assert_int_equal(seen.nums[0], 0);
    assert_string_equal(seen.data[1], "s1");
    assert_true(c->has_ts);
    assert_int_equal(c->ts, 1);
    assert_int_equal(c->n_states, 1);
    assert_int_equal(st->bytes, 2);
    /* An older logged number does not move the mark back. */
    assert_int_equal(rs_store_logged(st, rs_txn_id_make(IP, PORT, 0), 3000), 0);
    assert_int_equal(c->logged, 1);
}

/* Once the logger gives up on a connection (UNLOGGED) nothing waits for
 * TXN_LOGGED: what is buffered and what comes later applies at once. */
static void unlogged_applies_as_states_come(void **state)
{
    struct rs_store_client *c;

    (void)state;
    assert_int_equal(put(0, "s0"), 0);
    assert_int_equal(put(1, "s1"), 0);
    c = client();
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 0);
    assert_int_equal(rs_store_unlogged(st, rs_txn_id_make(IP, PORT, 1), 2000), 0);
    assert_true(c->unlogged);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 2);
    assert_int_equal(put(2, "s2"), 0);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 1);
    assert_int_equal(seen.n, 3);
    assert_string_equal(seen.data[2], "s2");
    assert_int_equal(c->ts, 2);
    assert_int_equal(c->n_states, 0);
    /* An unknown connection is created (its states may come later). */
    assert_int_equal(rs_store_unlogged(st, rs_txn_id_make(IP, PORT + 1, 0), 3000), 0);
    assert_true(rs_store_find(st, IP, PORT + 1)->unlogged);
}

/* Without a logger nothing waits for TXN_LOGGED, for any connection;
 * once it is back, new states wait again. */
static void logger_gone_and_back(void **state)
{
    struct rs_store_client *c;

    (void)state;
    assert_int_equal(put(0, "s0"), 0);
    c = client();
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 0);
    rs_store_set_logger(st, false);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 1);
    assert_int_equal(put(1, "s1"), 0);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 1);
    rs_store_set_logger(st, true);
    assert_int_equal(put(2, "s2"), 0);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 0);
    assert_int_equal(seen.n, 2);
    assert_int_equal(c->n_states, 1);
}

/* A resend replaces the buffered copy; a state at or before Ts is stale. */
static void resend_and_stale(void **state)
{
    struct rs_store_client *c;

    (void)state;
    assert_int_equal(put(0, "old"), 0);
    assert_int_equal(put(1, "one"), 0);
    assert_int_equal(put(0, "newer"), 0);
    c = client();
    assert_int_equal(c->n_states, 2);
    assert_int_equal(st->bytes, 5 + 3);
    assert_int_equal(rs_store_drain(st, c, true, 1, apply, NULL), 1);     /* force below 1 */
    assert_string_equal(seen.data[0], "newer");
    assert_int_equal(put(0, "again"), -ESTALE);
    assert_int_equal(c->n_states, 1);
}

/* Recovery's APPLY applies what is below 'upto' whether logged or not; a
 * refusal stops the drain and keeps the state. */
static void forced_drain_and_refusal(void **state)
{
    struct rs_store_client *c;

    (void)state;
    for (uint16_t i = 0; i < 5; i++)
        assert_int_equal(put(i, "x"), 0);
    c = client();
    seen.refuse_after = 2;
    assert_int_equal(rs_store_drain(st, c, true, 4, apply, NULL), 2);
    assert_int_equal(c->ts, 1);
    assert_int_equal(c->head->num, 2);
    assert_int_equal(rs_store_drain(st, c, true, 4, apply, NULL), -ENOBUFS);   /* refused first */
    seen.refuse_after = -1;
    assert_int_equal(rs_store_drain(st, c, true, 4, apply, NULL), 2);
    assert_int_equal(c->ts, 3);
    assert_int_equal(c->n_states, 1);
}

/* After a take-over from 'upto' the primary's later states are dropped
 * and refused; earlier ones stay. */
static void take_over(void **state)
{
    struct rs_store_client *c;

    (void)state;
    for (uint16_t i = 0; i < 6; i++)
        assert_int_equal(put(i, "y"), 0);
    c = client();
    assert_int_equal(rs_store_take_over(st, c, 3), 3);
    assert_int_equal(c->n_states, 3);
    assert_int_equal(c->tail->num, 2);
    assert_int_equal(st->n_states, 3);
    assert_int_equal(put(7, "late"), -ESTALE);
    assert_int_equal(rs_store_drain(st, c, true, 3, apply, NULL), 3);
    assert_null(c->head);
    assert_null(c->tail);
}

/* A snapshot (or the app's own update) covers the connection up to a
 * number: Ts and TA rise to it, the buffered states up to it go, later
 * ones stay and apply once logged; a lower cover changes nothing. */
static void cover(void **state)
{
    struct rs_store_client *c;

    (void)state;
    for (uint16_t i = 2; i < 7; i++)
        assert_int_equal(put(i, "z"), 0);
    assert_int_equal(rs_store_cover(st, rs_txn_id_make(IP, PORT, 4), 1000), 0);
    c = client();
    assert_true(c->has_ts && c->has_ta);
    assert_int_equal(c->ts, 4);
    assert_int_equal(c->ta, 6);
    assert_int_equal(c->n_states, 2);
    assert_int_equal(c->head->num, 5);
    assert_int_equal(st->n_states, 2);
    assert_int_equal(put(4, "old"), -ESTALE);
    assert_int_equal(rs_store_cover(st, rs_txn_id_make(IP, PORT, 1), 1000), 0);
    assert_int_equal(c->ts, 4);
    assert_int_equal(rs_store_logged(st, rs_txn_id_make(IP, PORT, 6), 1000), 0);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 2);
    assert_int_equal(seen.nums[0], 5);
    assert_int_equal(c->ts, 6);
    /* All covered: the list empties, TA follows. */
    assert_int_equal(put(8, "w"), 0);
    assert_int_equal(rs_store_cover(st, rs_txn_id_make(IP, PORT, 9), 1000), 0);
    assert_null(c->head);
    assert_null(c->tail);
    assert_int_equal(c->ta, 9);
    assert_int_equal(st->bytes, 0);
}

/* Numbers wrap at 2^16: 65535 comes before 0. */
static void numbers_wrap(void **state)
{
    struct rs_store_client *c;

    (void)state;
    assert_true(rs_txn_num_lt(65535, 0));
    assert_false(rs_txn_num_lt(0, 65535));
    assert_true(rs_txn_num_le(7, 7));
    assert_int_equal(put(0, "after"), 0);
    assert_int_equal(put(65535, "before"), 0);
    c = client();
    assert_int_equal(c->head->num, 65535);
    assert_int_equal(c->ta, 0);
    assert_int_equal(rs_store_logged(st, rs_txn_id_make(IP, PORT, 0), 1), 0);
    assert_int_equal(rs_store_drain(st, c, false, 0, apply, NULL), 2);
    assert_string_equal(seen.data[0], "before");
    assert_int_equal(c->ts, 0);
}

/* One connection holds at most RS_STORE_CLIENT_STATES states. */
static void per_client_bound(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < RS_STORE_CLIENT_STATES; i++)
        assert_int_equal(put((uint16_t)i, "z"), 0);
    assert_int_equal(put((uint16_t)RS_STORE_CLIENT_STATES, "z"), -ENOBUFS);
    assert_int_equal(st->n_states, RS_STORE_CLIENT_STATES);
}

/* A full table evicts the least recently active client without state;
 * when every client holds state, a new one is refused. */
static void eviction(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < RS_STORE_CLIENTS_MAX; i++)
        assert_non_null(rs_store_get(st, 0x0b000000u + i, 1, 100 + i));
    assert_int_equal(st->n_clients, RS_STORE_CLIENTS_MAX);
    rs_store_get(st, 0x0b000000u, 1, 999999);          /* the oldest is active again */
    assert_non_null(rs_store_get(st, IP, PORT, 1000000));
    assert_int_equal(st->evicted, 1);
    assert_null(rs_store_find(st, 0x0b000001u, 1));    /* the next oldest went */
    assert_non_null(rs_store_find(st, 0x0b000000u, 1));
    rs_store_clear(st);
    for (uint32_t i = 0; i < RS_STORE_CLIENTS_MAX; i++)
        assert_int_equal(rs_store_put(st, rs_txn_id_make(0x0c000000u + i, 1, 0), "s", 1, 5), 0);
    assert_null(rs_store_get(st, IP, PORT, 6));
    assert_int_equal(put(0, "s"), -ENOBUFS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(released_by_the_logger_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(unlogged_applies_as_states_come, setup, teardown),
        cmocka_unit_test_setup_teardown(logger_gone_and_back, setup, teardown),
        cmocka_unit_test_setup_teardown(resend_and_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(forced_drain_and_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(take_over, setup, teardown),
        cmocka_unit_test_setup_teardown(cover, setup, teardown),
        cmocka_unit_test_setup_teardown(numbers_wrap, setup, teardown),
        cmocka_unit_test_setup_teardown(per_client_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(eviction, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
