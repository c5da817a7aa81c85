/* Unit tests for proxy/tcpsp.h, the decoder of tcpspmod's generic netlink
 * requests (shared by kmod/tcpspmod.c; tests/fuzz/fuzz_tcpsp.c fuzzes it):
 * well-formed requests decode to their values, every kind of malformed
 * one is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tcpsp.h"

struct msg {
    uint8_t b[1024];
    uint32_t len;
};

/* Appends attribute 'type' with 'len' payload bytes from 'v' (aligned). */
static void put(struct msg *m, uint16_t type, const void *v, uint16_t len)
{
    uint16_t alen = (uint16_t)(4 + len);

    memcpy(m->b + m->len, &alen, 2);
    memcpy(m->b + m->len + 2, &type, 2);
    memcpy(m->b + m->len + 4, v, len);
    m->len += (alen + 3u) & ~3u;
}

static void put_u32(struct msg *m, uint16_t type, uint32_t v)
{
    put(m, type, &v, 4);
}

static void set_request_decodes(void **state)
{
    struct rs_flow_key key = { .saddr = 1, .daddr = 2, .sport = 3, .dport = 4 };
    struct rs_flow flow = { .state = RS_FLOW_ACTIVE, .splice_id = 42, .dir.win_scale_out = 7 };
    struct rs_flow_track t = { .last_ns = 5 };
    struct rs_tcpsp_msg m;
    struct msg r = { .len = 0 };

    (void)state;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 3);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    put(&r, RS_TCPSP_A_FLOW, &flow, sizeof(flow));
    put_u32(&r, RS_TCPSP_A_FLAGS, RS_TCPSP_F_RESET);
    put(&r, RS_TCPSP_A_TRACK, &t, sizeof(t));
    assert_int_equal(rs_tcpsp_parse(RS_TCPSP_C_SET, r.b, r.len, &m), 0);
    assert_int_equal(m.ifindex, 3);
    assert_int_equal(m.flags, RS_TCPSP_F_RESET);
    assert_memory_equal(&m.key, &key, sizeof(key));
    assert_memory_equal(&m.flow, &flow, sizeof(flow));
    assert_memory_equal(&m.track, &t, sizeof(t));
    assert_int_equal(m.have, RS_TCPSP_BIT(RS_TCPSP_A_IFINDEX) | RS_TCPSP_BIT(RS_TCPSP_A_KEY) |
                     RS_TCPSP_BIT(RS_TCPSP_A_FLOW) | RS_TCPSP_BIT(RS_TCPSP_A_FLAGS) | RS_TCPSP_BIT(RS_TCPSP_A_TRACK));
}

static void optional_key_of_next(void **state)
{
    struct rs_tcpsp_msg m;
    struct msg r = { .len = 0 };
    struct rs_flow_key key = { 0 };

    (void)state;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 9);
    assert_int_equal(rs_tcpsp_parse(RS_TCPSP_C_NEXT, r.b, r.len, &m), 0);
    assert_false(m.have & RS_TCPSP_BIT(RS_TCPSP_A_KEY));
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    assert_int_equal(rs_tcpsp_parse(RS_TCPSP_C_NEXT, r.b, r.len, &m), 0);
    assert_true(m.have & RS_TCPSP_BIT(RS_TCPSP_A_KEY));
}

static void malformed_requests_refused(void **state)
{
    struct rs_flow_key key = { 0 };
    struct rs_flow flow = { 0 };
    struct rs_tcpsp_msg m;
    struct msg r;
    uint32_t bad_len = 0x00c80003;   /* length 200, type KEY: past the end */

    (void)state;
#define REFUSED(cmd) assert_int_equal(rs_tcpsp_parse((cmd), r.b, r.len, &m), -RS_TCPSP_EINVAL)
    r.len = 0;                                          /* nothing: no interface */
    REFUSED(RS_TCPSP_C_ATTACH);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 0);                 /* interface 0 */
    REFUSED(RS_TCPSP_C_ATTACH);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    REFUSED(RS_TCPSP_C_GET);                            /* without its key */
    REFUSED(RS_TCPSP_C_UNSPEC);                         /* no such command */
    REFUSED(RS_TCPSP_C_COUNT);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key) - 1);     /* short */
    REFUSED(RS_TCPSP_C_GET);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));         /* twice */
    REFUSED(RS_TCPSP_C_GET);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    REFUSED(RS_TCPSP_C_DETACH);                         /* an attribute it does not take */
    put_u32(&r, 30, 1);                                 /* unknown */
    REFUSED(RS_TCPSP_C_GET);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    memcpy(r.b + r.len, &bad_len, 4);
    r.len += 4;
    REFUSED(RS_TCPSP_C_GET);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    r.len += 2;                                         /* two bytes after the last attribute */
    REFUSED(RS_TCPSP_C_DETACH);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    put_u32(&r, RS_TCPSP_A_FLAGS, 0x10);                /* unknown flag */
    REFUSED(RS_TCPSP_C_ATTACH);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    flow.state = RS_FLOW_ACKONLY + 1;                   /* unknown state */
    put(&r, RS_TCPSP_A_FLOW, &flow, sizeof(flow));
    REFUSED(RS_TCPSP_C_SET);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    flow.state = RS_FLOW_ACTIVE;
    flow.dir.win_scale_in = 15;                         /* a window scale RFC 7323 forbids */
    put(&r, RS_TCPSP_A_FLOW, &flow, sizeof(flow));
    REFUSED(RS_TCPSP_C_SET);
    r.len = 0;
    put_u32(&r, RS_TCPSP_A_IFINDEX, 1);
    put(&r, RS_TCPSP_A_KEY, &key, sizeof(key));
    flow.dir.win_scale_in = 0;
    put(&r, RS_TCPSP_A_FLOW, &flow, sizeof(flow));
    put_u32(&r, RS_TCPSP_A_FLAGS, RS_TCPSP_F_EXIST | RS_TCPSP_F_NOEXIST);
    REFUSED(RS_TCPSP_C_SET);
#undef REFUSED
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(set_request_decodes),
        cmocka_unit_test(optional_key_of_next),
        cmocka_unit_test(malformed_requests_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
