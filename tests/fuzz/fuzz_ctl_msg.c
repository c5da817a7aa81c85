/* libFuzzer target for core/ctl_msg.c.  The first input byte picks a mode:
 *   0  decode the rest as a byte stream under a fixed key (must never crash;
 *      whatever decodes must re-encode to the very same bytes);
 *   1  build a message from the bytes, encode it, decode it: equal;
 *   2  sign the bytes as header+payload with the fixed key and decode, so
 *      the field checks behind the MAC get fuzzed too. */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ctl_msg.h"

/* Seeds in corpus/fuzz_ctl_msg/ are signed with this key: byte i = 3i + 5. */
static void fuzz_key(struct rs_ctl_key *key)
{
    for (unsigned i = 0; i < RS_CTL_KEY_LEN; i++)
        key->bytes[i] = (uint8_t)(3 * i + 5);
}

/* A decoded frame has exactly one encoding. */
static void check_canonical(const struct rs_ctl_key *key, const struct rs_ctl_msg *m,
                            const uint8_t *frame, int n)
{
    uint8_t *again = malloc((size_t)n);
    int rc;

    assert(again);
    rc = rs_ctl_encode(key, m, again, (size_t)n);
    assert(rc == n);
    assert(memcmp(again, frame, (size_t)n) == 0);
    free(again);
}

static void decode_stream(const struct rs_ctl_key *key, const uint8_t *data, size_t size)
{
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m;
    size_t off = 0;

    rs_ctl_replay_init(&rp);
    while (off < size) {
        int rc = rs_ctl_decode(key, &rp, data + off, size - off, &m);
        if (rc <= 0)
            break;
        assert((size_t)rc <= size - off);
        check_canonical(key, &m, data + off, rc);
        off += (size_t)rc;
    }
}

struct reader {
    const uint8_t *p;
    size_t left;
};

static uint64_t take(struct reader *r, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        v = v << 8 | (r->left ? *r->p : 0);
        if (r->left) {
            r->p++;
            r->left--;
        }
    }
    return v;
}

static void take_conn(struct reader *r, struct rs_ctl_conn *c)
{
    c->ip4 = (uint32_t)take(r, 4);
    c->port = (uint16_t)take(r, 2);
}

static void roundtrip(const struct rs_ctl_key *key, const uint8_t *data, size_t size)
{
    static uint8_t buf[RS_CTL_FRAME_MAX];
    struct reader r = { data, size };
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m, out;
    int n, rc;

    memset(&m, 0, sizeof(m));
    m.type = (uint8_t)take(&r, 1);
    m.sender = (uint32_t)take(&r, 4);
    m.seq = take(&r, 8);
    switch (m.type) {
    case RS_CTL_HEARTBEAT:
        m.u.heartbeat.role = (uint8_t)take(&r, 1);
        m.u.heartbeat.backend_id = (uint32_t)take(&r, 4);
        m.u.heartbeat.time_us = take(&r, 8);
        break;
    case RS_CTL_FAILURE:
        m.u.failure.backend_id = (uint32_t)take(&r, 4);
        m.u.failure.reason = (uint16_t)take(&r, 2);
        break;
    case RS_CTL_TXN_LOGGED:
        m.u.txn_logged.txn = take(&r, 8);
        m.u.txn_logged.resp_end = (uint32_t)take(&r, 4);
        break;
    case RS_CTL_STATE_REPORT: {
        uint8_t fl;
        take_conn(&r, &m.u.state_report.conn);
        fl = (uint8_t)take(&r, 1);
        m.u.state_report.has_ts = fl & 1;
        m.u.state_report.has_ta = fl & 2;
        m.u.state_report.ts = (uint16_t)take(&r, 2);
        m.u.state_report.ta = (uint16_t)take(&r, 2);
        break;
    }
    case RS_CTL_RECOVERY_INFO:
        take_conn(&r, &m.u.recovery_info.conn);
        m.u.recovery_info.has_tl = take(&r, 1) & 1;
        m.u.recovery_info.tl = (uint16_t)take(&r, 2);
        m.u.recovery_info.ack_tl = (uint32_t)take(&r, 4);
        m.u.recovery_info.p = (uint32_t)take(&r, 4);
        break;
    case RS_CTL_RESPLICE:
        take_conn(&r, &m.u.resplice.client);
        take_conn(&r, &m.u.resplice.vip);
        take_conn(&r, &m.u.resplice.target);
        m.u.resplice.client_seq = (uint32_t)take(&r, 4);
        m.u.resplice.resp_seq = (uint32_t)take(&r, 4);
        break;
    case RS_CTL_ACK:
        m.u.ack.echo_seq = take(&r, 8);
        m.u.ack.echo_type = (uint8_t)take(&r, 1);
        m.u.ack.status = (int32_t)(uint32_t)take(&r, 4);
        break;
    case RS_CTL_STATE_UPDATE:
        m.u.state_update.txn = take(&r, 8);
        m.u.state_update.sync = take(&r, 1) & 1;
        m.u.state_update.len = (uint32_t)r.left; /* the rest is the state */
        m.u.state_update.data = r.left ? r.p : NULL;
        break;
    case RS_CTL_CONN_MAP:
        take_conn(&r, &m.u.conn_map.peer);
        take_conn(&r, &m.u.conn_map.client);
        m.u.conn_map.next_num = (uint16_t)take(&r, 2);
        break;
    case RS_CTL_STATE_QUERY:
        take_conn(&r, &m.u.state_query.client);
        break;
    case RS_CTL_APPLY:
        take_conn(&r, &m.u.apply.client);
        m.u.apply.upto = (uint16_t)take(&r, 2);
        break;
    case RS_CTL_RECOVER:
        take_conn(&r, &m.u.recover.client);
        m.u.recover.budget_ms = (uint16_t)take(&r, 2);
        m.u.recover.backend_id = (uint32_t)take(&r, 4);
        take_conn(&r, &m.u.recover.target);
        m.u.recover.has_seen = take(&r, 1) & 1;
        m.u.recover.client_ack = (uint32_t)take(&r, 4);
        m.u.recover.client_seq_end = (uint32_t)take(&r, 4);
        m.u.recover.has_server_ack = take(&r, 1) & 1;
        m.u.recover.server_ack = (uint32_t)take(&r, 4);
        m.u.recover.verdict_only = take(&r, 1) & 1;
        m.u.recover.has_server_end = take(&r, 1) & 1;
        m.u.recover.server_end = m.u.recover.has_server_end ? (uint32_t)take(&r, 4) : 0;
        break;
    case RS_CTL_PLAN: {
        struct rs_ctl_plan *b = &m.u.plan;
        take_conn(&r, &b->client);
        b->status = (int32_t)(uint32_t)take(&r, 4);
        b->flags = (uint8_t)take(&r, 1);
        b->tl = (uint16_t)take(&r, 2);
        b->tsp = (uint16_t)take(&r, 2);
        b->tr = (uint16_t)take(&r, 2);
        b->replayed = (uint16_t)take(&r, 2);
        b->ack_tl = (uint32_t)take(&r, 4);
        b->p = (uint32_t)take(&r, 4);
        b->ackcl = (uint32_t)take(&r, 4);
        b->resend_from = (uint32_t)take(&r, 4);
        b->resend_to = (uint32_t)take(&r, 4);
        b->q = (uint32_t)take(&r, 4);
        b->len = (uint32_t)r.left;
        b->data = r.left ? r.p : NULL;
        break;
    }
    case RS_CTL_RESEND:
        take_conn(&r, &m.u.resend.client);
        m.u.resend.from = (uint32_t)take(&r, 4);
        m.u.resend.to = (uint32_t)take(&r, 4);
        break;
    case RS_CTL_CLOSE_ASK:
    case RS_CTL_CLOSE_WORD:
        take_conn(&r, &m.u.close.client);
        m.u.close.flags = (uint8_t)take(&r, 1);
        m.u.close.req_end = (uint32_t)take(&r, 4);
        m.u.close.resp_end = (uint32_t)take(&r, 4);
        break;
    case RS_CTL_SUSPECT:
        take_conn(&r, &m.u.suspect.client);
        m.u.suspect.reason = (uint16_t)take(&r, 2);
        m.u.suspect.silent_ms = (uint32_t)take(&r, 4);
        break;
    case RS_CTL_FENCE:
        m.u.fence.backend_id = (uint32_t)take(&r, 4);
        m.u.fence.ip4 = (uint32_t)take(&r, 4);
        m.u.fence.fenced = take(&r, 1) & 1;
        break;
    case RS_CTL_STATUS:
        break;
    case RS_CTL_STATUS_REPORT: {
        struct rs_ctl_status_report *b = &m.u.status_report;
        b->n = (uint8_t)take(&r, 1);
        b->recovering = (uint32_t)take(&r, 4);
        b->recovered = (uint32_t)take(&r, 4);
        b->unrecoverable = (uint32_t)take(&r, 4);
        for (unsigned i = 0; i < RS_CTL_STATUS_BACKENDS && i < b->n; i++) {
            b->b[i].id = (uint32_t)take(&r, 4);
            b->b[i].ip4 = (uint32_t)take(&r, 4);
            b->b[i].port = (uint16_t)take(&r, 2);
            b->b[i].role = (uint8_t)take(&r, 1);
            b->b[i].flags = (uint8_t)take(&r, 1);
            b->b[i].conns = (uint32_t)take(&r, 4);
        }
        break;
    }
    case RS_CTL_FLOW: {
        struct rs_ctl_flow *b = &m.u.flow;
        b->op = (uint8_t)take(&r, 1);
        b->epoch = take(&r, 8);
        b->saddr = (uint32_t)take(&r, 4);
        b->daddr = (uint32_t)take(&r, 4);
        b->sport = (uint16_t)take(&r, 2);
        b->dport = (uint16_t)take(&r, 2);
        b->len = (uint32_t)r.left;
        b->data = r.left ? r.p : NULL;
        break;
    }
    default:
        break; /* invalid type: encode must refuse it */
    }

    n = rs_ctl_encode(key, &m, buf, sizeof(buf));
    assert(n == rs_ctl_encoded_len(&m));
    if (n < 0) {
        assert(n == -EINVAL);
        return;
    }
    rs_ctl_replay_init(&rp);
    /* Any strict prefix only asks for more bytes. */
    rc = rs_ctl_decode(key, &rp, buf, (size_t)(m.seq % (uint64_t)n), &out);
    assert(rc == 0);
    rc = rs_ctl_decode(key, &rp, buf, (size_t)n, &out);
    assert(rc == n);
    assert(rs_ctl_msg_equal(&m, &out));
    assert(rs_ctl_decode(key, &rp, buf, (size_t)n, &out) == -EALREADY);
}

static void signed_decode(const struct rs_ctl_key *key, const uint8_t *data, size_t size)
{
    struct rs_ctl_replay rp;
    struct rs_ctl_msg m;
    uint8_t *frame;
    int rc;

    if (size > RS_CTL_HDR_LEN + RS_CTL_PAYLOAD_MAX)
        return;
    frame = malloc(size + RS_CTL_MAC_LEN);
    assert(frame);
    memcpy(frame, data, size);
    rs_ctl_mac(frame + size, frame, size, key);
    rs_ctl_replay_init(&rp);
    rc = rs_ctl_decode(key, &rp, frame, size + RS_CTL_MAC_LEN, &m);
    if (rc > 0) {
        assert((size_t)rc <= size + RS_CTL_MAC_LEN);
        check_canonical(key, &m, frame, rc);
    }
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rs_ctl_key key;

    if (size == 0 || rs_ctl_init() != 0)
        return 0;
    fuzz_key(&key);
    switch (data[0] % 3) {
    case 0:
        decode_stream(&key, data + 1, size - 1);
        break;
    case 1:
        roundtrip(&key, data + 1, size - 1);
        break;
    default:
        signed_decode(&key, data + 1, size - 1);
        break;
    }
    return 0;
}
