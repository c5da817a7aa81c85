/* Unit tests for core/pp2.c: the PROXY protocol v2 header built and read
 * back; every prefix of a header asks for more; a stream that is not one
 * (an HTTP request, a v1 header) is told apart at its first differing
 * byte; malformed headers (version 1 in binary, an unknown command, UDP,
 * IPv6, short address block, oversized body) are refused; TLVs and the
 * LOCAL command are accepted. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "pp2.h"

static void test_round_trip(void **state)
{
    uint8_t h[RS_PP2_V4_LEN + 4];
    struct rs_pp2 p;

    (void)state;
    assert_int_equal(rs_pp2_build_v4(h, 0x0a000101, 40000, 0x0a000001, 80), RS_PP2_V4_LEN);
    memcpy(h + RS_PP2_V4_LEN, "GET ", 4);
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), RS_PP2_V4_LEN);
    assert_false(p.local);
    assert_int_equal(p.src_ip, 0x0a000101);
    assert_int_equal(p.src_port, 40000);
    assert_int_equal(p.dst_ip, 0x0a000001);
    assert_int_equal(p.dst_port, 80);
    /* The layout of the specification: "\r\n\r\n\0\r\nQUIT\n", 0x21, 0x11, length 12. */
    assert_memory_equal(h, "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c", 16);
}

static void test_prefixes_wait(void **state)
{
    uint8_t h[RS_PP2_V4_LEN];
    struct rs_pp2 p;

    (void)state;
    rs_pp2_build_v4(h, 1, 2, 3, 4);
    for (size_t n = 0; n < sizeof(h); n++)
        assert_int_equal(rs_pp2_parse(h, n, &p), 0);
}

static void test_not_a_header(void **state)
{
    struct rs_pp2 p;
    const char *http = "GET / HTTP/1.1\r\n\r\n", *v1 = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";

    (void)state;
    assert_int_equal(rs_pp2_parse((const uint8_t *)http, strlen(http), &p), -ENOENT);
    assert_int_equal(rs_pp2_parse((const uint8_t *)v1, strlen(v1), &p), -ENOENT);
    /* A request that starts like the signature is one only once a byte differs. */
    assert_int_equal(rs_pp2_parse((const uint8_t *)"\r\n\r\n", 4, &p), 0);
    assert_int_equal(rs_pp2_parse((const uint8_t *)"\r\n\r\nX", 5, &p), -ENOENT);
}

static void test_malformed(void **state)
{
    uint8_t h[RS_PP2_V4_LEN];
    struct rs_pp2 p;

    (void)state;
    rs_pp2_build_v4(h, 1, 2, 3, 4);
    h[12] = 0x11;                           /* version 1 */
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), -EPROTO);
    rs_pp2_build_v4(h, 1, 2, 3, 4);
    h[12] = 0x22;                           /* unknown command */
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), -EPROTO);
    rs_pp2_build_v4(h, 1, 2, 3, 4);
    h[13] = 0x12;                           /* UDP over IPv4 */
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), -EPROTO);
    h[13] = 0x21;                           /* TCP over IPv6 */
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), -EPROTO);
    rs_pp2_build_v4(h, 1, 2, 3, 4);
    h[15] = 8;                              /* too short for two IPv4 addresses and ports */
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), -EPROTO);
    h[14] = 0x10;                           /* 4104 bytes: longer than any we read */
    h[15] = 0x08;
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), -EPROTO);
}

static void test_tlvs_and_local(void **state)
{
    uint8_t h[RS_PP2_V4_LEN + 7];
    struct rs_pp2 p;

    (void)state;
    rs_pp2_build_v4(h, 0x01020304, 5, 0x05060708, 6);
    h[15] = 12 + 7;                          /* a 7-byte TLV follows the addresses */
    memcpy(h + RS_PP2_V4_LEN, "\x04\x00\x04" "abcd", 7);
    assert_int_equal(rs_pp2_parse(h, sizeof(h) - 1, &p), 0);
    assert_int_equal(rs_pp2_parse(h, sizeof(h), &p), (int)sizeof(h));
    assert_int_equal(p.src_ip, 0x01020304);
    h[12] = 0x20;                            /* LOCAL: a health check, no client */
    h[13] = 0x00;
    h[15] = 0;
    assert_int_equal(rs_pp2_parse(h, 16, &p), 16);
    assert_true(p.local);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_prefixes_wait),
        cmocka_unit_test(test_not_a_header),  cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_tlvs_and_local),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
