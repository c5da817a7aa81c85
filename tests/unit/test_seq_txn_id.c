/* Unit tests for core/seq.h and core/txn_id.c. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "seq.h"
#include "txn_id.h"

static void seq_compare_across_wrap(void **state)
{
    (void)state;
    assert_true(rs_seq_lt(0xfffffff0u, 0x10u));
    assert_true(rs_seq_gt(0x10u, 0xfffffff0u));
    assert_true(rs_seq_le(5, 5));
    assert_false(rs_seq_lt(5, 5));
    assert_int_equal(rs_seq_diff(0x10u, 0xfffffff0u), 0x20);
    assert_int_equal(rs_seq_diff(0xfffffff0u, 0x10u), -0x20);
    assert_int_equal(rs_seq_dist(0xfffffff0u, 0x10u), 0x20u);
    assert_int_equal(rs_seq_max(0xfffffff0u, 0x10u), 0x10u);
    assert_int_equal(rs_seq_min(0xfffffff0u, 0x10u), 0xfffffff0u);
}

static void seq_in_range(void **state)
{
    (void)state;
    assert_true(rs_seq_in(0xffffffffu, 0xfffffff0u, 0x10u));
    assert_true(rs_seq_in(0u, 0xfffffff0u, 0x10u));
    assert_false(rs_seq_in(0x10u, 0xfffffff0u, 0x10u));
    assert_false(rs_seq_in(0xffffffefu, 0xfffffff0u, 0x10u));
}

static void txn_id_roundtrip(void **state)
{
    char buf[RS_TXN_ID_STRLEN];
    rs_txn_id id = rs_txn_id_make(0x0a000001u, 54321, 7), back = 0;

    (void)state;
    assert_int_equal(rs_txn_id_ip4(id), 0x0a000001u);
    assert_int_equal(rs_txn_id_port(id), 54321);
    assert_int_equal(rs_txn_id_num(id), 7);
    assert_true(rs_txn_id_format(id, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "10.0.0.1:54321#7");
    assert_int_equal(rs_txn_id_parse(buf, &back), 0);
    assert_true(back == id);

    id = rs_txn_id_make(0xffffffffu, 65535, 65535);
    assert_int_equal(rs_txn_id_format(id, buf, sizeof(buf)), (int)sizeof(buf) - 1);
    assert_int_equal(rs_txn_id_parse(buf, &back), 0);
    assert_true(back == id);
}

static void txn_id_rejects_bad_text(void **state)
{
    static const char *bad[] = {
        "", "10.0.0.1:80", "10.0.0.256:80#1", "10.0.0.1:65536#1", "10.0.0.1:80#65536",
        "10.0.0.1:80#1x", " 10.0.0.1:80#1", "10.0.0.1:-80#1", "10.0.0:80#1",
    };
    rs_txn_id id;
    char small[8];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(rs_txn_id_parse(bad[i], &id), -EINVAL);
    assert_int_equal(rs_txn_id_format(rs_txn_id_make(1, 2, 3), small, sizeof(small)), -ENOSPC);
    assert_int_equal(strlen(small), sizeof(small) - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(seq_compare_across_wrap),
        cmocka_unit_test(seq_in_range),
        cmocka_unit_test(txn_id_roundtrip),
        cmocka_unit_test(txn_id_rejects_bad_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
