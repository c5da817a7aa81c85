/* Unit tests for core/ctl_msg.c: round trips of every type, the exact wire
 * layout, tampering, wrong keys, replays, partial frames, oversize lengths,
 * and fields that pass the MAC but are out of range. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "ctl_msg.h"

static struct rs_ctl_key key_a, key_b;
static uint8_t state_data[64];

static int setup(void **state)
{
    (void)state;
    if (rs_ctl_init() != 0 || rs_ctl_init() != 0) /* idempotent */
        return -1;
    for (unsigned i = 0; i < RS_CTL_KEY_LEN; i++) {
        key_a.bytes[i] = (uint8_t)(i * 7 + 1);
        key_b.bytes[i] = (uint8_t)(i * 7 + 1);
    }
    key_b.bytes[31] ^= 1; /* differs in one bit */
    for (unsigned i = 0; i < sizeof(state_data); i++)
        state_data[i] = (uint8_t)(0xa0 + i);
    return 0;
}

/* A valid message of each type, numbered 0 .. N_SAMPLES-1. */
#define N_SAMPLES 32

static void sample(unsigned i, struct rs_ctl_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->sender = 0x01020304u;
    m->seq = 1000 + i;
    switch (i) {
    case 0:
        m->type = RS_CTL_HEARTBEAT;
        m->u.heartbeat = (struct rs_ctl_heartbeat){ RS_CTL_ROLE_BACKEND, 7, 0x1122334455667788ull };
        break;
    case 1:
        m->type = RS_CTL_HEARTBEAT;
        m->u.heartbeat = (struct rs_ctl_heartbeat){ RS_CTL_ROLE_LOGGER, 0, 1 };
        break;
    case 2:
        m->type = RS_CTL_FAILURE;
        m->u.failure = (struct rs_ctl_failure){ 9, RS_CTL_FAIL_TIMEOUT };
        break;
    case 3:
        m->type = RS_CTL_TXN_LOGGED;
        m->u.txn_logged.txn = rs_txn_id_make(0x0a000001u, 40000, 65535);
        m->u.txn_logged.resp_end = 0xfffffff0u;
        break;
    case 4:
        m->type = RS_CTL_STATE_REPORT;
        m->u.state_report = (struct rs_ctl_state_report){ { 0x0a000002u, 1234 }, true, true, 5, 6 };
        break;
    case 5:
        m->type = RS_CTL_RECOVERY_INFO;
        m->u.recovery_info = (struct rs_ctl_recovery_info){ { 0x0a000002u, 1234 }, true, 65535,
                                                            0x80000000u, 0x7fffffffu };
        break;
    case 6:
        m->type = RS_CTL_RESPLICE;
        m->u.resplice = (struct rs_ctl_resplice){ { 0x0a000002u, 1234 }, { 0x0a0000feu, 80 },
                                                  { 0x0a000010u, 8080 }, 0xdeadbeefu, 0x01u };
        break;
    case 7:
        m->type = RS_CTL_ACK;
        m->u.ack = (struct rs_ctl_ack){ 0xffffffffffffffffull, RS_CTL_RESPLICE, -4095 };
        break;
    case 8:
        m->type = RS_CTL_STATE_UPDATE;
        m->u.state_update = (struct rs_ctl_state_update){ rs_txn_id_make(0x0a000002u, 1234, 3),
                                                          true, sizeof(state_data), state_data,
                                                          RS_CTL_STATE_TXN };
        break;
    case 9:
        m->type = RS_CTL_STATE_UPDATE;
        m->u.state_update = (struct rs_ctl_state_update){ rs_txn_id_make(0x0a000002u, 1234, 4),
                                                          false, 0, NULL, RS_CTL_STATE_TXN };
        break;
    case 10:
        m->type = RS_CTL_CONN_MAP;
        m->u.conn_map = (struct rs_ctl_conn_map){ { 0x0a000001u, 40001 }, { 0x0a000101u, 5555 }, 65535,
                                                  RS_CTL_CONN_MAP_RERUN };
        break;
    case 11:
        m->type = RS_CTL_STATE_QUERY;
        m->u.state_query.client = (struct rs_ctl_conn){ 0x0a000101u, 5555 };
        break;
    case 12:
        m->type = RS_CTL_APPLY;
        m->u.apply = (struct rs_ctl_apply){ { 0x0a000101u, 5555 }, 7 };
        break;
    case 13:
        m->type = RS_CTL_RECOVER;
        m->u.recover = (struct rs_ctl_recover){ { 0x0a000101u, 5555 }, 800, 1, { 0x0a00000cu, 8080 }, true,
                                                0xfffffff0u, 0x12345678u, true, 0x12340000u, true, 0x9abcdef0u, true };
        break;
    case 14:
        m->type = RS_CTL_PLAN;
        m->u.plan = (struct rs_ctl_plan){ .client = { 0x0a000101u, 5555 }, .status = 0,
                                          .flags = RS_CTL_PLAN_HAS_TL | RS_CTL_PLAN_EQ1 | RS_CTL_PLAN_REQ_DONE,
                                          .tl = 4, .tsp = 5, .tr = 5, .replayed = 0, .ack_tl = 0xfffffff0u,
                                          .p = 100, .ackcl = 0xfffffff8u, .resend_from = 0xfffffff8u,
                                          .resend_to = 0x54u, .q = 0x1234u, .len = sizeof(state_data),
                                          .data = state_data };
        break;
    case 15:
        m->type = RS_CTL_PLAN;
        m->u.plan = (struct rs_ctl_plan){ .client = { 0x0a000101u, 5555 }, .status = -34 };
        break;
    case 16:
        m->type = RS_CTL_RESEND;
        m->u.resend = (struct rs_ctl_resend){ { 0x0a000101u, 5555 }, 0xffffff00u, 0x100u };
        break;
    case 17:
        m->type = RS_CTL_SUSPECT;
        m->u.suspect = (struct rs_ctl_suspect){ { 0x0a000101u, 5555 }, RS_CTL_SUSPECT_STALL, 0xfffffffeu };
        break;
    case 18:
        m->type = RS_CTL_FENCE;
        m->u.fence = (struct rs_ctl_fence){ 2, 0x0a00000cu, true };
        break;
    case 19:
        m->type = RS_CTL_FENCE;
        m->u.fence = (struct rs_ctl_fence){ 0xfffffu, 0, false };
        break;
    case 20:
        m->type = RS_CTL_STATUS;
        break;
    case 21:
        m->type = RS_CTL_STATUS_REPORT;
        m->u.status_report.n = 2;
        m->u.status_report.recovering = 3;
        m->u.status_report.recovered = 0xffffffffu;
        m->u.status_report.unrecoverable = 1;
        m->u.status_report.b[0] = (struct rs_ctl_backend_status){ 1, 0x0a00000bu, 8080, RS_CTL_ROLE_PRIMARY_BACKEND,
                                                                  RS_CTL_BACKEND_FENCED, 0 };
        m->u.status_report.b[1] = (struct rs_ctl_backend_status){ 2, 0x0a00000cu, 8080,
                                                                  RS_CTL_ROLE_ALTERNATE_BACKEND, 0, 200 };
        break;
    case 22:
        m->type = RS_CTL_UNLOGGED;
        m->u.unlogged.from = rs_txn_id_make(0x0a000101u, 5555, 3);
        break;
    case 23:
        m->type = RS_CTL_FLOW;
        m->u.flow = (struct rs_ctl_flow){ RS_CTL_FLOW_SET, 0x0123456789abcdefull, 0x0a000101u, 0x0a000001u,
                                          5555, 80, sizeof(state_data), state_data };
        break;
    case 24:
        m->type = RS_CTL_FLOW;
        m->u.flow = (struct rs_ctl_flow){ RS_CTL_FLOW_DEL, 1, 0x0a00000bu, 0x0a000001u, 8080, 40000, 0, NULL };
        break;
    case 25:
        m->type = RS_CTL_FLOW;
        m->u.flow = (struct rs_ctl_flow){ .op = RS_CTL_FLOW_BEGIN, .epoch = 0xffffffffffffffffull };
        break;
    case 26:
        m->type = RS_CTL_STATE_UPDATE;
        m->u.state_update = (struct rs_ctl_state_update){ .kind = RS_CTL_STATE_SNAPSHOT,
                                                          .len = sizeof(state_data), .data = state_data };
        break;
    case 27:
        m->type = RS_CTL_STATE_UPDATE;
        m->u.state_update = (struct rs_ctl_state_update){ .kind = RS_CTL_STATE_COVERED,
                                                          .txn = rs_txn_id_make(0x0a000002u, 1234, 9) };
        break;
    case 28:
        m->type = RS_CTL_CLOSE_ASK;
        m->u.close = (struct rs_ctl_close){ { 0x0a000101u, 5555 }, 0, 0xffffffffu, 0x80000001u };
        break;
    case 29:
        m->type = RS_CTL_CLOSE_WORD;
        m->u.close = (struct rs_ctl_close){ { 0x0a000102u, 5556 }, RS_CTL_CLOSE_MEANT | RS_CTL_CLOSE_ANSWER,
                                            0x12345678u, 0x9abcdef0u };
        break;
    case 30:
        m->type = RS_CTL_OWED_ASK;
        break;
    case 31:
        m->type = RS_CTL_SUSPECT;
        m->u.suspect = (struct rs_ctl_suspect){ { 0x0a000101u, 5555 }, RS_CTL_SUSPECT_OWED, 0 };
        break;
    }
}

static int encode(const struct rs_ctl_msg *m, uint8_t *buf, size_t len)
{
    int n = rs_ctl_encode(&key_a, m, buf, len);
    assert_true(n > 0);
    assert_int_equal(n, rs_ctl_encoded_len(m));
    return n;
}

/* Recomputes the MAC after a test edits a frame, so that field checks (not
 * the MAC) are what rejects it. */
static void resign(uint8_t *buf, size_t n)
{
    rs_ctl_mac(buf + n - RS_CTL_MAC_LEN, buf, (size_t)n - RS_CTL_MAC_LEN, &key_a);
}

static void roundtrip_every_type(void **state)
{
    uint8_t buf[256];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    bool seen[RS_CTL_TYPE_MAX + 1] = { false };

    (void)state;
    rs_ctl_replay_init(&rp);
    for (unsigned i = 0; i < N_SAMPLES; i++) {
        int n;

        sample(i, &m);
        n = encode(&m, buf, sizeof(buf));
        assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
        assert_true(rs_ctl_msg_equal(&m, &out));
        seen[m.type] = true;
        if (m.type == RS_CTL_STATE_UPDATE && m.u.state_update.len) {
            assert_ptr_equal(out.u.state_update.data, buf + RS_CTL_HDR_LEN + RS_CTL_STATE_HDR);
            out.u.state_update.data = buf; /* different content: must differ */
            assert_false(rs_ctl_msg_equal(&m, &out));
        }
    }
    for (unsigned t = RS_CTL_HEARTBEAT; t <= RS_CTL_TYPE_MAX; t++) {
        assert_true(seen[t]);
        assert_string_not_equal(rs_ctl_type_str(t), "?");
    }
    assert_string_equal(rs_ctl_type_str(0), "?");
    assert_string_equal(rs_ctl_type_str(RS_CTL_TYPE_MAX + 1), "?");
    assert_int_equal(rp.n, 1);
    assert_true(rp.peer[0].last_seq == 1000 + N_SAMPLES - 1);
}

/* Largest state update: exactly RS_CTL_STATE_MAX bytes. */
static void roundtrip_max_state(void **state)
{
    size_t cap = RS_CTL_FRAME_MAX;
    uint8_t *buf = malloc(cap), *data = malloc(RS_CTL_STATE_MAX);
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    int n;

    (void)state;
    assert_non_null(buf);
    assert_non_null(data);
    for (size_t i = 0; i < RS_CTL_STATE_MAX; i++)
        data[i] = (uint8_t)(i * 13);
    rs_ctl_replay_init(&rp);
    memset(&m, 0, sizeof(m));
    m.type = RS_CTL_STATE_UPDATE;
    m.sender = 5;
    m.seq = 1;
    m.u.state_update = (struct rs_ctl_state_update){ rs_txn_id_make(1, 1, 1), false,
                                                     RS_CTL_STATE_MAX, data, RS_CTL_STATE_TXN };
    n = rs_ctl_encode(&key_a, &m, buf, cap);
    assert_int_equal(n, (int)(RS_CTL_HDR_LEN + RS_CTL_STATE_HDR + RS_CTL_STATE_MAX + RS_CTL_MAC_LEN));
    assert_true((size_t)n <= RS_CTL_FRAME_MAX);
    assert_int_equal(rs_ctl_encode(&key_a, &m, buf, (size_t)n - 1), -ENOSPC);
    n = rs_ctl_encode(&key_a, &m, buf, cap);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
    assert_true(rs_ctl_msg_equal(&m, &out));

    m.u.state_update.len = RS_CTL_STATE_MAX + 1;
    assert_int_equal(rs_ctl_encode(&key_a, &m, buf, cap), -EINVAL);
    free(buf);
    free(data);
}

/* Largest plan: RS_CTL_PLAN_DATA_MAX bytes of TL+1's request (an upload),
 * far above a state's bound; one byte more is refused. */
static void roundtrip_max_plan(void **state)
{
    size_t cap = RS_CTL_FRAME_MAX;
    uint8_t *buf = malloc(cap), *data = calloc(1, RS_CTL_PLAN_DATA_MAX);
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    int n;

    (void)state;
    assert_non_null(buf);
    assert_non_null(data);
    data[RS_CTL_PLAN_DATA_MAX - 1] = 7;
    rs_ctl_replay_init(&rp);
    memset(&m, 0, sizeof(m));
    m.type = RS_CTL_PLAN;
    m.sender = 5;
    m.seq = 1;
    m.u.plan.client = (struct rs_ctl_conn){ 0x0a000101u, 5555 };
    m.u.plan.len = RS_CTL_PLAN_DATA_MAX;
    m.u.plan.data = data;
    n = rs_ctl_encode(&key_a, &m, buf, cap);
    assert_int_equal(n, (int)RS_CTL_FRAME_MAX);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
    assert_true(rs_ctl_msg_equal(&m, &out));
    m.u.plan.len = RS_CTL_PLAN_DATA_MAX + 1;
    assert_int_equal(rs_ctl_encode(&key_a, &m, buf, cap), -EINVAL);
    assert_true(RS_CTL_SMALL_FRAME_MAX < RS_CTL_FRAME_MAX);
    free(buf);
    free(data);
}

/* Senders tell their role; each role sends only its own messages. */
static void roles_of_senders(void **state)
{
    (void)state;
    assert_int_equal(rs_ctl_sender_role(RS_CTL_SENDER_PROXY | 0x102), RS_CTL_ROLE_PROXY);
    assert_int_equal(rs_ctl_sender_role(RS_CTL_SENDER_LOGGER | 4), RS_CTL_ROLE_LOGGER);
    assert_int_equal(rs_ctl_sender_role(RS_CTL_SENDER_OPERATOR | 12345), RS_CTL_ROLE_OPERATOR);
    assert_int_equal(rs_ctl_sender_role((uint32_t)RS_CTL_ROLE_BACKEND << 24 | 2 << 4 | 1), RS_CTL_ROLE_BACKEND);
    assert_int_equal(rs_ctl_sender_role(5), 0);
    assert_int_equal(rs_ctl_sender_role(0x4c4f4800u), 0);           /* "LOH": no one's */
    /* The two: FAILURE and RESPLICE. */
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_LOGGER, RS_CTL_FAILURE));
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_BACKEND, RS_CTL_FAILURE));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_OPERATOR, RS_CTL_FAILURE));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_PROXY, RS_CTL_FAILURE));
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_PROXY, RS_CTL_RESPLICE));
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_OPERATOR, RS_CTL_RESPLICE));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_BACKEND, RS_CTL_RESPLICE));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_BACKEND, RS_CTL_FENCE));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_LOGGER, RS_CTL_STATE_UPDATE));
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_BACKEND, RS_CTL_ACK));
    /* Only a proxy writes into another proxy's splice table. */
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_PROXY, RS_CTL_FLOW));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_OPERATOR, RS_CTL_FLOW));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_LOGGER, RS_CTL_FLOW));
    /* Only the logger, whose log it rests on, says a close was meant;
     * only the proxy, whose guard holds the FIN, asks. */
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_LOGGER, RS_CTL_CLOSE_WORD));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_OPERATOR, RS_CTL_CLOSE_WORD));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_BACKEND, RS_CTL_CLOSE_WORD));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_PROXY, RS_CTL_CLOSE_WORD));
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_PROXY, RS_CTL_CLOSE_ASK));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_LOGGER, RS_CTL_CLOSE_ASK));
    /* A proxy coming up asks the logger which connections owe a response. */
    assert_true(rs_ctl_role_may_send(RS_CTL_ROLE_PROXY, RS_CTL_OWED_ASK));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_OPERATOR, RS_CTL_OWED_ASK));
    /* Unknown roles and types send nothing. */
    assert_false(rs_ctl_role_may_send(0, RS_CTL_ACK));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_OPERATOR + 1, RS_CTL_ACK));
    assert_false(rs_ctl_role_may_send(RS_CTL_ROLE_LOGGER, RS_CTL_TYPE_MAX + 1));
    /* Every type has a sender. */
    for (unsigned t = RS_CTL_HEARTBEAT; t <= RS_CTL_TYPE_MAX; t++) {
        bool any = false;
        for (int r = RS_CTL_ROLE_PROXY; r <= RS_CTL_ROLE_OPERATOR; r++)
            any |= rs_ctl_role_may_send(r, t);
        assert_true(any);
    }
}

/* Every field at its documented offset, in network byte order. */
static void wire_layout(void **state)
{
    static const uint8_t want[RS_CTL_HDR_LEN + 16] = {
        'R', 'S', 2, RS_CTL_HEARTBEAT, 0, 0,
        0x01, 0x02, 0x03, 0x04,                         /* sender */
        0, 0, 0, 0, 0, 0, 0x03, 0xe8,                   /* seq 1000 */
        0, 0, 0, 16,                                    /* payload length */
        RS_CTL_ROLE_BACKEND, 0, 0, 0, 0, 0, 0, 7,       /* role, pad, backend id */
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* time */
    };
    uint8_t buf[128], mac[RS_CTL_MAC_LEN];
    struct rs_ctl_msg m;
    int n;

    (void)state;
    sample(0, &m);
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(n, RS_CTL_HDR_LEN + 16 + RS_CTL_MAC_LEN);
    assert_memory_equal(buf, want, sizeof(want));
    crypto_generichash(mac, sizeof(mac), want, sizeof(want), key_a.bytes, sizeof(key_a.bytes));  /* keyed BLAKE2b-256 */
    assert_memory_equal(buf + sizeof(want), mac, sizeof(mac));
}

/* Flipping any bit pattern in any byte must never yield an accepted message;
 * which check fires depends on where the byte is. */
static void tamper_each_byte(void **state)
{
    static const uint8_t masks[] = { 0x01, 0x80, 0xff };
    uint8_t buf[256], bad[256];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;

    (void)state;
    for (unsigned s = 0; s < N_SAMPLES; s++) {
        int n;

        sample(s, &m);
        n = encode(&m, buf, sizeof(buf));
        for (int i = 0; i < n; i++) {
            for (unsigned k = 0; k < sizeof(masks); k++) {
                int rc;

                memcpy(bad, buf, (size_t)n);
                bad[i] ^= masks[k];
                rs_ctl_replay_init(&rp);
                rc = rs_ctl_decode(&key_a, &rp, bad, (size_t)n, &out);
                assert_true(rc <= 0);
                assert_int_equal(rp.n, 0);
                if (i < 2)
                    assert_int_equal(rc, -EPROTO);
                else if (i == 2)
                    assert_int_equal(rc, -EPROTONOSUPPORT);
                else if (i == 3)
                    assert_true(rc == -ENOMSG || rc == -EMSGSIZE || rc == -EACCES);
                else if (i >= 18 && i < 22) /* length: longer waits, shorter fails MAC */
                    assert_true(rc == 0 || rc == -EMSGSIZE || rc == -EACCES);
                else
                    assert_int_equal(rc, -EACCES);
            }
        }
    }
}

static void wrong_key_rejected(void **state)
{
    uint8_t buf[256];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;

    (void)state;
    rs_ctl_replay_init(&rp);
    for (unsigned s = 0; s < N_SAMPLES; s++) {
        int n;

        sample(s, &m);
        n = encode(&m, buf, sizeof(buf));
        assert_int_equal(rs_ctl_decode(&key_b, &rp, buf, (size_t)n, &out), -EACCES);
    }
    assert_int_equal(rp.n, 0);
}

static void replay_rejected(void **state)
{
    uint8_t buf[256], old[256];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    int n, n_old;

    (void)state;
    rs_ctl_replay_init(&rp);
    sample(2, &m);
    m.seq = 10;
    n_old = encode(&m, old, sizeof(old));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, old, (size_t)n_old, &out), n_old);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, old, (size_t)n_old, &out), -EALREADY);

    m.seq = 9; /* older */
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EALREADY);
    m.seq = 11;
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, old, (size_t)n_old, &out), -EALREADY);

    /* Another sender has its own sequence space. */
    m.sender = 77;
    m.seq = 10;
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
    assert_int_equal(rp.n, 2);

    /* A rejected frame does not advance the sender's sequence. */
    m.seq = 1000;
    n = encode(&m, buf, sizeof(buf));
    buf[n - 1] ^= 1;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EACCES);
    m.seq = 12;
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);

    /* The table is bounded: a sender past RS_CTL_REPLAY_PEERS is refused,
     * known senders keep working. */
    for (uint32_t s = 1000; rp.n < RS_CTL_REPLAY_PEERS; s++) {
        m.sender = s;
        n = encode(&m, buf, sizeof(buf));
        assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
    }
    m.sender = 999;
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -ENOBUFS);
    m.sender = 77;
    m.seq = 13;
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);

    m.seq = UINT64_MAX; /* the largest sequence still works, and is final */
    n = encode(&m, buf, sizeof(buf));
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), n);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EALREADY);
}

/* Every strict prefix of a frame asks for more; two frames back to back
 * decode one after the other (stream use). */
static void partial_frames_need_more(void **state)
{
    uint8_t buf[512];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;

    (void)state;
    for (unsigned s = 0; s < N_SAMPLES; s++) {
        int n;

        sample(s, &m);
        n = encode(&m, buf, sizeof(buf));
        rs_ctl_replay_init(&rp);
        for (int len = 0; len < n; len++) {
            /* Copy into an exact-size heap block so ASan catches over-reads. */
            uint8_t *part = malloc(len ? (size_t)len : 1);
            assert_non_null(part);
            memcpy(part, buf, (size_t)len);
            assert_int_equal(rs_ctl_decode(&key_a, &rp, part, (size_t)len, &out), 0);
            free(part);
        }
        assert_int_equal(rp.n, 0);
    }

    {
        int n1, n2;

        rs_ctl_replay_init(&rp);
        sample(4, &m);
        n1 = encode(&m, buf, sizeof(buf));
        sample(8, &m);
        n2 = encode(&m, buf + n1, sizeof(buf) - (size_t)n1);
        assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)(n1 + n2), &out), n1);
        assert_int_equal(out.type, RS_CTL_STATE_REPORT);
        assert_int_equal(rs_ctl_decode(&key_a, &rp, buf + n1, (size_t)n2, &out), n2);
        assert_int_equal(out.type, RS_CTL_STATE_UPDATE);
    }
    assert_int_equal(rs_ctl_decode(&key_a, &rp, NULL, 0, &out), 0);
}

/* Garbage is refused as soon as the bytes that prove it arrive. */
static void early_rejection(void **state)
{
    struct rs_ctl_replay rp;
    struct rs_ctl_msg out;
    uint8_t b[4];

    (void)state;
    rs_ctl_replay_init(&rp);
    b[0] = 'X';
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 1, &out), -EPROTO);
    b[0] = 'R';
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 1, &out), 0);
    b[1] = 's';
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 2, &out), -EPROTO);
    b[1] = 'S';
    b[2] = RS_CTL_VERSION - 1;      /* version 1: HMAC-SHA256, no longer spoken */
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 3, &out), -EPROTONOSUPPORT);
    b[2] = RS_CTL_VERSION + 1;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 3, &out), -EPROTONOSUPPORT);
    b[2] = RS_CTL_VERSION;
    b[3] = 0;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 4, &out), -ENOMSG);
    b[3] = RS_CTL_TYPE_MAX + 1;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 4, &out), -ENOMSG);
    b[3] = RS_CTL_ACK;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, b, 4, &out), 0);
}

/* A length over the bound is refused from the header alone, without
 * waiting for (or reading) the payload. */
static void oversize_length(void **state)
{
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    uint8_t tmp[256], *hdr = malloc(RS_CTL_HDR_LEN);
    int n;

    (void)state;
    assert_non_null(hdr);
    rs_ctl_replay_init(&rp);
    sample(8, &m);
    n = encode(&m, tmp, sizeof(tmp));
    assert_true(n > (int)RS_CTL_HDR_LEN);

    memcpy(hdr, tmp, RS_CTL_HDR_LEN);
    hdr[18] = 0xff; hdr[19] = 0xff; hdr[20] = 0xff; hdr[21] = 0xff;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, hdr, RS_CTL_HDR_LEN, &out), -EMSGSIZE);
    /* Just over the STATE_UPDATE bound, and exactly at it. */
#define STATE_PAYLOAD_MAX (RS_CTL_STATE_HDR + RS_CTL_STATE_MAX)
    hdr[18] = (uint8_t)((STATE_PAYLOAD_MAX + 1) >> 24);
    hdr[19] = (uint8_t)((STATE_PAYLOAD_MAX + 1) >> 16);
    hdr[20] = (uint8_t)((STATE_PAYLOAD_MAX + 1) >> 8);
    hdr[21] = (uint8_t)(STATE_PAYLOAD_MAX + 1);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, hdr, RS_CTL_HDR_LEN, &out), -EMSGSIZE);
    hdr[21] = (uint8_t)STATE_PAYLOAD_MAX;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, hdr, RS_CTL_HDR_LEN, &out), 0);

    /* Fixed-size types allow exactly their size. */
    sample(0, &m);
    encode(&m, tmp, sizeof(tmp));
    memcpy(hdr, tmp, RS_CTL_HDR_LEN);
    hdr[21] = 17;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, hdr, RS_CTL_HDR_LEN, &out), -EMSGSIZE);
    free(hdr);
}

/* Frames with a valid MAC but invalid content; the encoder refuses the same
 * messages. */
static void bad_fields_rejected(void **state)
{
    uint8_t buf[256];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    int n;

    (void)state;
#define DECODE_BAD_N(sample_no, off, len, val)                                   \
    do {                                                                          \
        sample((sample_no), &m);                                                  \
        n = encode(&m, buf, sizeof(buf));                                         \
        memset(buf + (off), (val), (len));                                        \
        resign(buf, (size_t)n);                                                   \
        rs_ctl_replay_init(&rp);                                                  \
        assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EBADMSG); \
        assert_int_equal(rp.n, 0);                                                \
    } while (0)
#define DECODE_BAD(sample_no, off, val) DECODE_BAD_N(sample_no, off, 1, val)
#define P(off) (RS_CTL_HDR_LEN + (off))

    DECODE_BAD(0, 5, 1);        /* header flags */
    DECODE_BAD(0, P(0), 0);     /* role 0 */
    DECODE_BAD(0, P(0), RS_CTL_ROLE_MAX + 1);
    DECODE_BAD(0, P(0), RS_CTL_ROLE_PROXY); /* proxy with a backend id */
    DECODE_BAD(0, P(1), 1);     /* padding */
    DECODE_BAD(2, P(5), 0);     /* failure reason 0 */
    DECODE_BAD(2, P(5), RS_CTL_FAIL_MAX + 1);
    DECODE_BAD(2, P(7), 1);     /* padding */
    DECODE_BAD_N(2, P(0), 4, 0);/* backend id 0 */
    DECODE_BAD_N(3, P(0), 4, 0);/* transaction ID without client address */
    DECODE_BAD_N(3, P(4), 2, 0);/* ... or port */
    DECODE_BAD(4, P(6), 0x1);   /* has_ts without has_ta */
    DECODE_BAD(4, P(6), 0x7);   /* unknown flag */
    DECODE_BAD(4, P(6), 0x2);   /* ts non-zero without has_ts */
    DECODE_BAD(4, P(7), 1);     /* padding */
    DECODE_BAD_N(4, P(4), 2, 0);/* client port 0 */
    DECODE_BAD(5, P(6), 0);     /* tl non-zero without has_tl */
    DECODE_BAD(5, P(6), 3);     /* unknown flag */
    DECODE_BAD(5, P(16), 0x80); /* p >= 2^31 */
    DECODE_BAD(5, P(11), 1);    /* padding */
    DECODE_BAD_N(6, P(16), 2, 0);/* target port 0 */
    DECODE_BAD_N(6, P(6), 4, 0);/* VIP address 0 */
    DECODE_BAD(6, P(18), 1);    /* padding */
    DECODE_BAD(7, P(8), RS_CTL_ACK);   /* acknowledging an ACK */
    DECODE_BAD(7, P(8), 0);
    DECODE_BAD(7, P(9), 1);     /* padding */
    DECODE_BAD(7, P(12), 0);    /* status -4095 -> positive */
    DECODE_BAD(7, P(14), 0xef); /* status below -4095 */
    DECODE_BAD_N(7, P(0), 8, 0);/* echoed sequence 0 */
    DECODE_BAD(8, P(8), 2);     /* unknown state flag */
    DECODE_BAD(8, P(11), 1);    /* padding */
    DECODE_BAD(8, P(15), 63);   /* inner length disagrees with the frame */
    DECODE_BAD(9, P(15), 1);
    DECODE_BAD_N(8, P(0), 4, 0);/* transaction ID without client address */
    DECODE_BAD(10, P(14), 2);   /* unknown CONN_MAP flag */
    DECODE_BAD(10, P(15), 1);   /* padding */
    DECODE_BAD(13, P(18), 16);  /* RECOVER's flags: has_seen, has_server_ack, verdict_only, has_server_end */
    DECODE_BAD(13, P(19), 1);   /* padding */
    DECODE_BAD_N(17, P(6), 2, 0);/* suspect reason 0 */
    DECODE_BAD(17, P(7), RS_CTL_SUSPECT_MAX + 1);
    DECODE_BAD_N(18, P(0), 4, 0);/* fence of backend 0 */
    DECODE_BAD(18, P(8), 2);    /* fenced is 0 or 1 */
    DECODE_BAD(18, P(9), 1);    /* padding */
    DECODE_BAD(20, P(3), 1);    /* STATUS carries only padding */
    DECODE_BAD_N(28, P(4), 2, 0);/* CLOSE_ASK of client port 0 */
    DECODE_BAD(28, P(6), RS_CTL_CLOSE_MEANT);  /* an ask has no flags */
    DECODE_BAD(28, P(7), 1);    /* padding */
    DECODE_BAD(29, P(6), 0x07); /* unknown CLOSE_WORD flag */
    DECODE_BAD(29, P(7), 1);    /* padding */
    DECODE_BAD(21, P(0), RS_CTL_STATUS_BACKENDS + 1); /* more entries than fit */
    DECODE_BAD(21, P(26), RS_CTL_ROLE_SPARE_BACKEND + 1); /* unknown role */
    DECODE_BAD(21, P(27), 0x04); /* unknown backend flag */
    DECODE_BAD(21, P(48), 1);   /* an unused entry must be zero */
#undef DECODE_BAD
#undef DECODE_BAD_N
#undef P
}

/* Checks that are whole-field, stated with messages rather than bytes. */
static void invalid_messages(void **state)
{
    uint8_t buf[256];
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    int n;

    (void)state;
#define BAD_MSG(sample_no, stmt)                                            \
    do {                                                                    \
        sample((sample_no), &m);                                            \
        stmt;                                                               \
        assert_int_equal(rs_ctl_encode(&key_a, &m, buf, sizeof(buf)), -EINVAL); \
        assert_int_equal(rs_ctl_encoded_len(&m), -EINVAL);                  \
    } while (0)
    BAD_MSG(0, m.sender = 0);
    BAD_MSG(0, m.seq = 0);
    BAD_MSG(0, m.type = 0);
    BAD_MSG(0, m.type = RS_CTL_TYPE_MAX + 1);
    BAD_MSG(0, m.u.heartbeat.backend_id = 0);
    BAD_MSG(1, m.u.heartbeat.backend_id = 3);
    BAD_MSG(2, m.u.failure.backend_id = 0);
    BAD_MSG(3, m.u.txn_logged.txn = rs_txn_id_make(0, 1, 1));
    BAD_MSG(3, m.u.txn_logged.txn = rs_txn_id_make(1, 0, 1));
    BAD_MSG(22, m.u.unlogged.from = rs_txn_id_make(0, 1, 1));
    BAD_MSG(4, m.u.state_report.conn.ip4 = 0);
    BAD_MSG(4, m.u.state_report.conn.port = 0);
    BAD_MSG(4, (m.u.state_report.has_ta = false, m.u.state_report.ta = 0));
    BAD_MSG(5, m.u.recovery_info.p = 0x80000000u);
    BAD_MSG(6, m.u.resplice.vip.port = 0);
    BAD_MSG(6, m.u.resplice.target.ip4 = 0);
    BAD_MSG(13, (m.u.recover.has_seen = false, m.u.recover.client_ack = 1));
    BAD_MSG(13, (m.u.recover.has_server_ack = false, m.u.recover.server_ack = 1));
    BAD_MSG(7, m.u.ack.status = 1);
    BAD_MSG(7, m.u.ack.echo_seq = 0);
    BAD_MSG(8, m.u.state_update.data = NULL);
    BAD_MSG(8, m.u.state_update.kind = RS_CTL_STATE_COVERED + 1);
    BAD_MSG(9, m.u.state_update.txn = 0);
    BAD_MSG(26, m.u.state_update.txn = rs_txn_id_make(0x0a000002u, 1234, 9));
    BAD_MSG(26, m.u.state_update.sync = true);
    BAD_MSG(26, (m.u.state_update.len = 0, m.u.state_update.data = NULL));
    BAD_MSG(27, m.u.state_update.txn = 0);
    BAD_MSG(27, (m.u.state_update.len = sizeof(state_data), m.u.state_update.data = state_data));
    BAD_MSG(27, m.u.state_update.sync = true);
    BAD_MSG(23, m.u.flow.epoch = 0);
    BAD_MSG(23, m.u.flow.op = 0);
    BAD_MSG(23, m.u.flow.op = RS_CTL_FLOW_OP_MAX + 1);
    BAD_MSG(23, m.u.flow.len = 0);
    BAD_MSG(23, m.u.flow.len = RS_CTL_FLOW_DATA_MAX + 1);
    BAD_MSG(23, m.u.flow.dport = 0);
    BAD_MSG(24, m.u.flow.len = 1);
    BAD_MSG(25, m.u.flow.sport = 1);
#undef BAD_MSG

    /* Header fields zeroed after signing are refused by the decoder too. */
    sample(0, &m);
    n = encode(&m, buf, sizeof(buf));
    memset(buf + 6, 0, 4);
    resign(buf, (size_t)n);
    rs_ctl_replay_init(&rp);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EBADMSG);
    n = encode(&m, buf, sizeof(buf));
    memset(buf + 10, 0, 8);
    resign(buf, (size_t)n);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EBADMSG);

    /* A fixed-size payload that is too short (length and MAC consistent). */
    sample(0, &m);
    n = encode(&m, buf, sizeof(buf));
    buf[21] = 8;
    n = RS_CTL_HDR_LEN + 8 + RS_CTL_MAC_LEN;
    resign(buf, (size_t)n);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, (size_t)n, &out), -EBADMSG);

    /* Misuse. */
    assert_int_equal(rs_ctl_encode(NULL, &m, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(rs_ctl_encode(&key_a, &m, NULL, 0), -EINVAL);
    assert_int_equal(rs_ctl_encode(&key_a, &m, buf, 10), -ENOSPC);
    assert_int_equal(rs_ctl_decode(&key_a, NULL, buf, 10, &out), -EINVAL);
    assert_int_equal(rs_ctl_decode(NULL, &rp, buf, 10, &out), -EINVAL);
    assert_int_equal(rs_ctl_decode(&key_a, &rp, NULL, 10, &out), -EINVAL);
    rp.n = RS_CTL_REPLAY_PEERS + 1;
    assert_int_equal(rs_ctl_decode(&key_a, &rp, buf, 10, &out), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(roundtrip_every_type),
        cmocka_unit_test(roundtrip_max_state),
        cmocka_unit_test(roundtrip_max_plan),
        cmocka_unit_test(roles_of_senders),
        cmocka_unit_test(wire_layout),
        cmocka_unit_test(tamper_each_byte),
        cmocka_unit_test(wrong_key_rejected),
        cmocka_unit_test(replay_rejected),
        cmocka_unit_test(partial_frames_need_more),
        cmocka_unit_test(early_rejection),
        cmocka_unit_test(oversize_length),
        cmocka_unit_test(bad_fields_rejected),
        cmocka_unit_test(invalid_messages),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
