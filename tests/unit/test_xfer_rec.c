/* Unit tests for core/xfer_rec.c: round trips of every record type, the
 * exact wire layout, partial records, and streams that are not records. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "xfer_rec.h"

static const uint8_t state_bytes[] = "cart=3;user=ann";

static struct rs_xfer_rec sample(uint8_t type)
{
    struct rs_xfer_rec r = { .type = type, .id = 0x01020304u };

    switch (type) {
    case RS_XFER_UPDATE:
        r.sync = true;
        /* fall through */
    case RS_XFER_APPLY:
        r.txn = 0x1122334455667788ull;
        r.state = state_bytes;
        r.len = sizeof(state_bytes) - 1;
        break;
    case RS_XFER_CONN_MAP:
        r.map.peer = (struct rs_ctl_conn){ .ip4 = 0x0a000003u, .port = 40000 };
        r.map.client = (struct rs_ctl_conn){ .ip4 = 0x0a000101u, .port = 51000 };
        r.map.next_num = 7;
        r.map.flags = RS_CTL_CONN_MAP_RERUN;
        break;
    case RS_XFER_EXPORT:
        break;
    case RS_XFER_SNAPSHOT:
        r.state = state_bytes;
        r.len = sizeof(state_bytes) - 1;
        break;
    default:
        r.status = -ETIMEDOUT;
        break;
    }
    return r;
}

static void round_trip_every_type(void **state)
{
    (void)state;
    for (uint8_t t = RS_XFER_UPDATE; t <= RS_XFER_SNAPSHOT; t++) {
        struct rs_xfer_rec in = sample(t), out;
        uint8_t buf[256];
        size_t n = rs_xfer_rec_encode(&in, buf);

        assert_int_equal(n, rs_xfer_rec_size(&in));
        assert_int_equal(rs_xfer_rec_decode(buf, n, &out), (long)n);
        assert_int_equal(out.type, t);
        assert_int_equal(out.id, in.id);
        assert_int_equal(out.txn, in.txn);
        assert_int_equal(out.sync, in.sync);
        assert_int_equal(out.len, in.len);
        if (in.len)
            assert_memory_equal(out.state, in.state, in.len);
        assert_int_equal(out.map.peer.ip4, in.map.peer.ip4);
        assert_int_equal(out.map.peer.port, in.map.peer.port);
        assert_int_equal(out.map.client.ip4, in.map.client.ip4);
        assert_int_equal(out.map.client.port, in.map.client.port);
        assert_int_equal(out.map.next_num, in.map.next_num);
        assert_int_equal(out.map.flags, in.map.flags);
        assert_int_equal(out.status, in.status);
    }
}

/* The layout of xfer_rec.h, byte for byte: the library and rs-stated are
 * separate programs and must agree without sharing memory. */
static void wire_layout(void **state)
{
    struct rs_xfer_rec m = sample(RS_XFER_CONN_MAP), d = sample(RS_XFER_DONE);
    struct rs_xfer_rec u = sample(RS_XFER_UPDATE);
    static const uint8_t map_bytes[] = {
        0, 0, 0, 20, RS_XFER_CONN_MAP, 1, 2, 3, 4,
        10, 0, 0, 3, 0x9c, 0x40, 10, 0, 1, 1, 0xc7, 0x38, 0, 7, 1,
    };
    static const uint8_t done_bytes[] = {
        0, 0, 0, 9, RS_XFER_DONE, 1, 2, 3, 4, 0xff, 0xff, 0xff, 0x100 - ETIMEDOUT,
    };
    uint8_t buf[256];

    (void)state;
    assert_int_equal(rs_xfer_rec_encode(&m, buf), sizeof(map_bytes));
    assert_memory_equal(buf, map_bytes, sizeof(map_bytes));
    assert_int_equal(rs_xfer_rec_encode(&d, buf), sizeof(done_bytes));
    assert_memory_equal(buf, done_bytes, sizeof(done_bytes));
    assert_int_equal(rs_xfer_rec_encode(&u, buf), RS_XFER_UPDATE_HDR + u.len);
    assert_int_equal(buf[9], 0x11);                 /* txn, high byte first */
    assert_int_equal(buf[16], 0x88);
    assert_int_equal(buf[17], 1);                   /* sync */
    assert_memory_equal(buf + 18, state_bytes, u.len);
    /* EXPORT: the header alone; SNAPSHOT: the state right after it. */
    struct rs_xfer_rec e = sample(RS_XFER_EXPORT), s = sample(RS_XFER_SNAPSHOT);
    assert_int_equal(rs_xfer_rec_encode(&e, buf), RS_XFER_REC_HDR);
    assert_memory_equal(buf, ((uint8_t[]){ 0, 0, 0, 5, RS_XFER_EXPORT, 1, 2, 3, 4 }), RS_XFER_REC_HDR);
    assert_int_equal(rs_xfer_rec_encode(&s, buf), RS_XFER_REC_HDR + s.len);
    assert_int_equal(buf[4], RS_XFER_SNAPSHOT);
    assert_memory_equal(buf + RS_XFER_REC_HDR, state_bytes, s.len);
}

/* Every prefix of a record asks for more bytes; two records back to back
 * decode one at a time. */
static void partial_and_back_to_back(void **state)
{
    struct rs_xfer_rec a = sample(RS_XFER_APPLY), b = sample(RS_XFER_DONE), out;
    uint8_t buf[256];
    size_t na = rs_xfer_rec_encode(&a, buf);
    size_t nb = rs_xfer_rec_encode(&b, buf + na);

    (void)state;
    for (size_t k = 0; k < na; k++)
        assert_int_equal(rs_xfer_rec_decode(buf, k, &out), 0);
    assert_int_equal(rs_xfer_rec_decode(buf, na + nb, &out), (long)na);
    assert_int_equal(out.type, RS_XFER_APPLY);
    assert_int_equal(rs_xfer_rec_decode(buf + na, nb, &out), (long)nb);
    assert_int_equal(out.type, RS_XFER_DONE);
}

static void empty_state(void **state)
{
    struct rs_xfer_rec in = sample(RS_XFER_UPDATE), out;
    uint8_t buf[64];

    (void)state;
    in.len = 0;
    in.state = NULL;
    assert_int_equal(rs_xfer_rec_decode(buf, rs_xfer_rec_encode(&in, buf), &out),
                     RS_XFER_UPDATE_HDR);
    assert_int_equal(out.len, 0);
}

static void oversize_state_is_refused(void **state)
{
    struct rs_xfer_rec in = sample(RS_XFER_UPDATE);
    uint8_t *buf = malloc(RS_XFER_IN_CAP + 16), *big = calloc(1, RS_CTL_STATE_MAX + 1);

    (void)state;
    assert_non_null(buf);
    assert_non_null(big);
    in.len = RS_CTL_STATE_MAX;
    in.state = big;
    assert_int_equal(rs_xfer_rec_encode(&in, buf), RS_XFER_IN_CAP);
    in.len = RS_CTL_STATE_MAX + 1;
    assert_int_equal(rs_xfer_rec_encode(&in, buf), 0);
    free(big);
    free(buf);
}

/* Bad lengths, unknown types, wrong fixed sizes and a sync flag that is
 * neither 0 nor 1 all say the stream is not a record stream. */
static void malformed_streams(void **state)
{
    struct rs_xfer_rec out;
    uint8_t buf[256];
    size_t n;

    (void)state;
    memcpy(buf, (uint8_t[]){ 0, 0, 0, 4 }, 4);                      /* too short */
    assert_int_equal(rs_xfer_rec_decode(buf, 4, &out), -EBADMSG);
    memcpy(buf, (uint8_t[]){ 0x7f, 0, 0, 0 }, 4);                   /* too long */
    assert_int_equal(rs_xfer_rec_decode(buf, 4, &out), -EBADMSG);

    struct rs_xfer_rec d = sample(RS_XFER_DONE);
    n = rs_xfer_rec_encode(&d, buf);
    buf[4] = 99;                                                    /* unknown type */
    assert_int_equal(rs_xfer_rec_decode(buf, n, &out), -EBADMSG);
    buf[4] = RS_XFER_CONN_MAP;                                      /* wrong size */
    assert_int_equal(rs_xfer_rec_decode(buf, n, &out), -EBADMSG);
    buf[4] = RS_XFER_EXPORT;                                        /* EXPORT has no body */
    assert_int_equal(rs_xfer_rec_decode(buf, n, &out), -EBADMSG);

    struct rs_xfer_rec u = sample(RS_XFER_UPDATE);
    n = rs_xfer_rec_encode(&u, buf);
    buf[17] = 2;                                                    /* sync 2 */
    assert_int_equal(rs_xfer_rec_decode(buf, n, &out), -EBADMSG);
    memcpy(buf, (uint8_t[]){ 0, 0, 0, 8 }, 4);                      /* no room for txn */
    buf[4] = RS_XFER_APPLY;
    assert_int_equal(rs_xfer_rec_decode(buf, 12, &out), -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_every_type),
        cmocka_unit_test(wire_layout),
        cmocka_unit_test(partial_and_back_to_back),
        cmocka_unit_test(empty_state),
        cmocka_unit_test(oversize_state_is_refused),
        cmocka_unit_test(malformed_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
