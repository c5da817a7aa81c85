/* Unit tests for core/capture.h, what rs-logger's tc program runs: which
 * segments it takes (IPv4 TCP to or from the VIP, no later fragments), the
 * snap length, and the record size classes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "capture.h"

#define VIP 0x0a000001u     /* 10.0.0.1 */
#define PORT 80

/* A 20-byte IPv4 header from 'src' to 'dst' and TCP ports 'sport' -> 'dport'. */
static void segment(uint8_t ip[20], uint8_t ports[4], uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport)
{
    memset(ip, 0, 20);
    ip[0] = 0x45;
    ip[9] = 6;
    for (int i = 0; i < 4; i++) {
        ip[12 + i] = (uint8_t)(src >> (24 - 8 * i));
        ip[16 + i] = (uint8_t)(dst >> (24 - 8 * i));
    }
    ports[0] = (uint8_t)(sport >> 8);
    ports[1] = (uint8_t)sport;
    ports[2] = (uint8_t)(dport >> 8);
    ports[3] = (uint8_t)dport;
}

static void test_ihl(void **state)
{
    uint8_t ip[20], ports[4];

    (void)state;
    segment(ip, ports, 0x0a000002u, VIP, 40000, PORT);
    assert_int_equal(rs_capture_ihl(ip), 20);
    ip[0] = 0x4f;                                   /* 40 bytes of options */
    assert_int_equal(rs_capture_ihl(ip), 60);
    ip[0] = 0x44;                                   /* shorter than a header */
    assert_int_equal(rs_capture_ihl(ip), 0);
    ip[0] = 0x65;                                   /* IPv6's version */
    assert_int_equal(rs_capture_ihl(ip), 0);
    ip[0] = 0x45;
    ip[9] = 17;                                     /* UDP */
    assert_int_equal(rs_capture_ihl(ip), 0);
    ip[9] = 6;
    ip[6] = 0x20;                                   /* MF: the first fragment has the ports */
    assert_int_equal(rs_capture_ihl(ip), 20);
    ip[6] = 0x40;                                   /* DF */
    assert_int_equal(rs_capture_ihl(ip), 20);
    ip[7] = 1;                                      /* a later fragment: no TCP header */
    assert_int_equal(rs_capture_ihl(ip), 0);
    ip[6] = 0x01;
    ip[7] = 0;
    assert_int_equal(rs_capture_ihl(ip), 0);
}

static void test_match(void **state)
{
    uint8_t ip[20], ports[4];

    (void)state;
    segment(ip, ports, 0x0a000002u, VIP, 40000, PORT);        /* a request */
    assert_true(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, VIP, 0x0a000002u, PORT, 40000);        /* a response */
    assert_true(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, 0x0a000002u, VIP, 40000, 81);          /* another port of the VIP */
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, 0x0a000002u, 0x0a000003u, 40000, PORT); /* another host's port 80 */
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    /* The VIP's own client connection whose peer port happens to be 80:
     * pcap's filter takes it, the log counts it not ours; not taken. */
    segment(ip, ports, VIP, 0x0a000003u, 40000, PORT);
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, 0x0a000002u, VIP, PORT, 40000);
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    /* Byte order: 10.0.0.1 is not 1.0.0.10, port 80 is not 20480. */
    segment(ip, ports, 0x0a000002u, 0x0100000au, 40000, PORT);
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, 0x0a000002u, VIP, 40000, 0x5000);
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, 0xfffffffeu, 0xfffffffdu, 65535, 65534);
    assert_true(rs_capture_match(ip, ports, 0xfffffffdu, 65534, 0));
    /* A second port (rs-auxlog's IMAP and SMTP); 0 names none, not port 0. */
    segment(ip, ports, 0x0a000002u, VIP, 40000, 25);
    assert_true(rs_capture_match(ip, ports, VIP, PORT, 25));
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, VIP, 0x0a000002u, 25, 40000);
    assert_true(rs_capture_match(ip, ports, VIP, PORT, 25));
    segment(ip, ports, 0x0a000002u, VIP, 40000, 0);
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 0));
    segment(ip, ports, 0x0a000002u, 0x0a000003u, 40000, 25);  /* another host's port 25 */
    assert_false(rs_capture_match(ip, ports, VIP, PORT, 25));
}

static void test_caplen(void **state)
{
    (void)state;
    assert_int_equal(rs_capture_caplen(40, RS_CAPTURE_SNAPLEN), 40);
    assert_int_equal(rs_capture_caplen(65212, RS_CAPTURE_SNAPLEN), 65212);
    assert_int_equal(rs_capture_caplen(300000, RS_CAPTURE_SNAPLEN), RS_CAPTURE_SNAPLEN);
    assert_int_equal(rs_capture_caplen(1000, 100), 100);
    assert_int_equal(rs_capture_caplen(100, 100), 100);
    /* A snap length above the largest class is the largest class. */
    assert_int_equal(rs_capture_caplen(600000, 1u << 20), RS_CAPTURE_SNAPLEN);
}

static void test_classes(void **state)
{
    (void)state;
    /* Increasing, 8-byte multiples (records stay aligned), the last one
     * the snap length: every segment has a class. */
    for (int i = 1; i < RS_CAPTURE_CLASSES; i++)
        assert_true(RS_CAPTURE_CLASS_BYTES(i) > RS_CAPTURE_CLASS_BYTES(i - 1));
    for (int i = 0; i < RS_CAPTURE_CLASSES; i++)
        assert_int_equal(RS_CAPTURE_CLASS_BYTES(i) % 8, 0);
    assert_int_equal(RS_CAPTURE_CLASS_BYTES(RS_CAPTURE_CLASSES - 1), RS_CAPTURE_SNAPLEN);
    /* The typical segments: an ACK, one MSS, a ~64 KB GSO super-packet. */
    assert_int_equal(RS_CAPTURE_CLASS_BYTES(rs_capture_class(52)), 128);
    assert_int_equal(RS_CAPTURE_CLASS_BYTES(rs_capture_class(1500)), 1536);
    assert_int_equal(RS_CAPTURE_CLASS_BYTES(rs_capture_class(65212)), 65536);
    assert_int_equal(rs_capture_class(RS_CAPTURE_SNAPLEN), RS_CAPTURE_CLASSES - 1);
    /* The smallest class that holds it, at every boundary. */
    for (int i = 0; i < RS_CAPTURE_CLASSES; i++) {
        uint32_t b = RS_CAPTURE_CLASS_BYTES(i);

        assert_int_equal(rs_capture_class(b), i);
        assert_int_equal(rs_capture_class(b - 1), i == 0 || b - 1 > RS_CAPTURE_CLASS_BYTES(i - 1) ? i : i - 1);
        if (i + 1 < RS_CAPTURE_CLASSES)
            assert_int_equal(rs_capture_class(b + 1), i + 1);
    }
    /* Every length from 1 to the snap length fits its class and not the one below. */
    for (uint32_t len = 1; len <= RS_CAPTURE_SNAPLEN; len += 7) {
        int c = rs_capture_class(len);

        assert_true(len <= RS_CAPTURE_CLASS_BYTES(c));
        if (c > 0)
            assert_true(len > RS_CAPTURE_CLASS_BYTES(c - 1));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ihl),
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_caplen),
        cmocka_unit_test(test_classes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
