/* Control-plane message framing (see ctl_msg.h).  The decoder frames on the
 * unauthenticated header only as far as it must (magic, version, type,
 * length bound), authenticates, and only then parses fields. */
#include "ctl_msg.h"
#include "wire.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>

/* Payload length of each type; for the types that carry data (STATE_UPDATE,
 * PLAN) it is the minimum, without data. */
static const uint32_t body_len[RS_CTL_TYPE_MAX + 1] = {
    [RS_CTL_HEARTBEAT] = 16,
    [RS_CTL_FAILURE] = 8,
    [RS_CTL_TXN_LOGGED] = 12,
    [RS_CTL_STATE_REPORT] = 12,
    [RS_CTL_RECOVERY_INFO] = 20,
    [RS_CTL_RESPLICE] = 28,
    [RS_CTL_ACK] = 16,
    [RS_CTL_STATE_UPDATE] = RS_CTL_STATE_HDR,
    [RS_CTL_CONN_MAP] = 16,
    [RS_CTL_STATE_QUERY] = 8,
    [RS_CTL_APPLY] = 8,
    [RS_CTL_RECOVER] = 36,
    [RS_CTL_PLAN] = RS_CTL_PLAN_HDR,
    [RS_CTL_RESEND] = 16,
    [RS_CTL_SUSPECT] = 12,
    [RS_CTL_FENCE] = 12,
    [RS_CTL_STATUS] = 4,
    [RS_CTL_STATUS_REPORT] = 16 + 16 * RS_CTL_STATUS_BACKENDS,
    [RS_CTL_UNLOGGED] = 8,
    [RS_CTL_FLOW] = RS_CTL_FLOW_HDR,
    [RS_CTL_CLOSE_ASK] = 16,
    [RS_CTL_CLOSE_WORD] = 16,
    [RS_CTL_OWED_ASK] = 4,
};

static const char *const type_name[RS_CTL_TYPE_MAX + 1] = {
    [RS_CTL_HEARTBEAT] = "HEARTBEAT",
    [RS_CTL_FAILURE] = "FAILURE",
    [RS_CTL_TXN_LOGGED] = "TXN_LOGGED",
    [RS_CTL_STATE_REPORT] = "STATE_REPORT",
    [RS_CTL_RECOVERY_INFO] = "RECOVERY_INFO",
    [RS_CTL_RESPLICE] = "RESPLICE",
    [RS_CTL_ACK] = "ACK",
    [RS_CTL_STATE_UPDATE] = "STATE_UPDATE",
    [RS_CTL_CONN_MAP] = "CONN_MAP",
    [RS_CTL_STATE_QUERY] = "STATE_QUERY",
    [RS_CTL_APPLY] = "APPLY",
    [RS_CTL_RECOVER] = "RECOVER",
    [RS_CTL_PLAN] = "PLAN",
    [RS_CTL_RESEND] = "RESEND",
    [RS_CTL_SUSPECT] = "SUSPECT",
    [RS_CTL_FENCE] = "FENCE",
    [RS_CTL_STATUS] = "STATUS",
    [RS_CTL_STATUS_REPORT] = "STATUS_REPORT",
    [RS_CTL_UNLOGGED] = "UNLOGGED",
    [RS_CTL_FLOW] = "FLOW",
    [RS_CTL_CLOSE_ASK] = "CLOSE_ASK",
    [RS_CTL_CLOSE_WORD] = "CLOSE_WORD",
    [RS_CTL_OWED_ASK] = "OWED_ASK",
};

/* Wire flag bits inside payloads. */
#define F_HAS_TS (1u << 0)
#define F_HAS_TA (1u << 1)
#define F_HAS_TL (1u << 0)
#define F_SYNC   (1u << 0)
#define F_SNAPSHOT (1u << 1)
#define F_COVERED  (1u << 2)

#define ERRNO_MAX 4095

static bool type_known(unsigned type)
{
    return type >= RS_CTL_HEARTBEAT && type <= RS_CTL_TYPE_MAX;
}

static bool has_data(unsigned type)
{
    return type == RS_CTL_STATE_UPDATE || type == RS_CTL_PLAN || type == RS_CTL_FLOW;
}

static uint32_t max_body_len(unsigned type)
{
    return type == RS_CTL_PLAN ? body_len[type] + RS_CTL_PLAN_DATA_MAX
           : type == RS_CTL_FLOW ? body_len[type] + RS_CTL_FLOW_DATA_MAX
           : has_data(type) ? body_len[type] + RS_CTL_STATE_MAX : body_len[type];
}

/* True when the next 'n' bytes are zero (padding must be, so that every
 * message has exactly one encoding). */
static bool get_zero(const uint8_t **p, size_t n)
{
    bool zero = true;
    for (size_t i = 0; i < n; i++)
        zero &= rs_get8(p) == 0;
    return zero;
}

static void put_conn(uint8_t **p, const struct rs_ctl_conn *c)
{
    rs_put32(p, c->ip4);
    rs_put16(p, c->port);
}

static void get_conn(const uint8_t **p, struct rs_ctl_conn *c)
{
    c->ip4 = rs_get32(p);
    c->port = rs_get16(p);
}

/* ---- Validation shared by encoder and decoder ------------------------------ */

static bool conn_ok(const struct rs_ctl_conn *c)
{
    return c->ip4 != 0 && c->port != 0;
}

static bool txn_ok(rs_txn_id id)
{
    return rs_txn_id_ip4(id) != 0 && rs_txn_id_port(id) != 0;
}

/* 0 when every field of 'm' is in range, else -EINVAL. */
static int validate__(const struct rs_ctl_msg *m)
{
    bool ok;

    if (!type_known(m->type) || m->sender == 0 || m->seq == 0)
        return -EINVAL;
    switch (m->type) {
    case RS_CTL_HEARTBEAT: {
        const struct rs_ctl_heartbeat *b = &m->u.heartbeat;
        ok = b->role >= RS_CTL_ROLE_PROXY && b->role <= RS_CTL_ROLE_MAX
             && (b->role == RS_CTL_ROLE_BACKEND) == (b->backend_id != 0);
        break;
    }
    case RS_CTL_FAILURE:
        ok = m->u.failure.backend_id != 0 && m->u.failure.reason >= RS_CTL_FAIL_TIMEOUT
             && m->u.failure.reason <= RS_CTL_FAIL_MAX;
        break;
    case RS_CTL_TXN_LOGGED:
        ok = txn_ok(m->u.txn_logged.txn);
        break;
    case RS_CTL_UNLOGGED:
        ok = txn_ok(m->u.unlogged.from);
        break;
    case RS_CTL_STATE_REPORT: {
        const struct rs_ctl_state_report *b = &m->u.state_report;
        ok = conn_ok(&b->conn) && (b->has_ta || !b->has_ts)
             && (b->has_ts || b->ts == 0) && (b->has_ta || b->ta == 0);
        break;
    }
    case RS_CTL_RECOVERY_INFO: {
        const struct rs_ctl_recovery_info *b = &m->u.recovery_info;
        ok = conn_ok(&b->conn) && (b->has_tl || b->tl == 0) && b->p <= 0x7fffffffu;
        break;
    }
    case RS_CTL_RESPLICE: {
        const struct rs_ctl_resplice *b = &m->u.resplice;
        ok = conn_ok(&b->client) && conn_ok(&b->vip) && conn_ok(&b->target);
        break;
    }
    case RS_CTL_ACK: {
        const struct rs_ctl_ack *b = &m->u.ack;
        ok = b->echo_seq != 0 && type_known(b->echo_type) && b->echo_type != RS_CTL_ACK
             && b->status <= 0 && b->status >= -ERRNO_MAX;
        break;
    }
    case RS_CTL_STATE_UPDATE: {
        const struct rs_ctl_state_update *b = &m->u.state_update;
        ok = b->len <= RS_CTL_STATE_MAX && (b->len == 0 || b->data)
             && (b->kind == RS_CTL_STATE_TXN        ? txn_ok(b->txn)
                 : b->kind == RS_CTL_STATE_SNAPSHOT ? b->txn == 0 && !b->sync && b->len > 0
                 : b->kind == RS_CTL_STATE_COVERED  ? txn_ok(b->txn) && !b->sync && b->len == 0
                                                    : false);
        break;
    }
    case RS_CTL_CONN_MAP:
        ok = conn_ok(&m->u.conn_map.peer) && conn_ok(&m->u.conn_map.client);
        break;
    case RS_CTL_STATE_QUERY:
        ok = conn_ok(&m->u.state_query.client);
        break;
    case RS_CTL_APPLY:
        ok = conn_ok(&m->u.apply.client);
        break;
    case RS_CTL_RECOVER:
        ok = conn_ok(&m->u.recover.client) && conn_ok(&m->u.recover.target)
             && m->u.recover.backend_id != 0
             && (m->u.recover.has_seen || (!m->u.recover.client_ack && !m->u.recover.client_seq_end))
             && (m->u.recover.has_server_ack || !m->u.recover.server_ack)
             && (m->u.recover.has_server_end || !m->u.recover.server_end);
        break;
    case RS_CTL_PLAN: {
        const struct rs_ctl_plan *b = &m->u.plan;
        ok = conn_ok(&b->client) && b->status <= 0 && b->status >= -ERRNO_MAX
             && !(b->flags & ~RS_CTL_PLAN_FLAGS_ALL) && ((b->flags & RS_CTL_PLAN_HAS_TL) || b->tl == 0)
             && b->len <= RS_CTL_PLAN_DATA_MAX && (b->len == 0 || b->data);
        break;
    }
    case RS_CTL_RESEND:
        ok = conn_ok(&m->u.resend.client);
        break;
    case RS_CTL_CLOSE_ASK:
        ok = conn_ok(&m->u.close.client) && m->u.close.flags == 0;
        break;
    case RS_CTL_CLOSE_WORD:
        ok = conn_ok(&m->u.close.client) && !(m->u.close.flags & ~RS_CTL_CLOSE_FLAGS_ALL);
        break;
    case RS_CTL_SUSPECT:
        ok = conn_ok(&m->u.suspect.client) && m->u.suspect.reason >= RS_CTL_SUSPECT_STALL
             && m->u.suspect.reason <= RS_CTL_SUSPECT_MAX;
        break;
    case RS_CTL_FENCE:
        ok = m->u.fence.backend_id != 0;
        break;
    case RS_CTL_STATUS:
    case RS_CTL_OWED_ASK:
        ok = true;
        break;
    case RS_CTL_FLOW: {
        const struct rs_ctl_flow *b = &m->u.flow;
        bool keyed = b->op == RS_CTL_FLOW_SET || b->op == RS_CTL_FLOW_DEL;
        bool key_zero = !b->saddr && !b->daddr && !b->sport && !b->dport;
        ok = b->op >= RS_CTL_FLOW_BEGIN && b->op <= RS_CTL_FLOW_OP_MAX && b->epoch != 0
             && (keyed ? b->saddr && b->daddr && b->sport && b->dport : key_zero)
             && (b->op == RS_CTL_FLOW_SET ? b->len > 0 && b->len <= RS_CTL_FLOW_DATA_MAX && b->data : b->len == 0);
        break;
    }
    case RS_CTL_STATUS_REPORT: {
        const struct rs_ctl_status_report *b = &m->u.status_report;
        ok = b->n <= RS_CTL_STATUS_BACKENDS;
        for (unsigned i = 0; ok && i < b->n; i++)
            ok = b->b[i].id != 0 && b->b[i].role >= RS_CTL_ROLE_PRIMARY_BACKEND
                 && b->b[i].role <= RS_CTL_ROLE_SPARE_BACKEND && !(b->b[i].flags & ~RS_CTL_BACKEND_FLAGS_ALL);
        for (unsigned i = b->n; ok && i < RS_CTL_STATUS_BACKENDS; i++)
            ok = !b->b[i].id && !b->b[i].ip4 && !b->b[i].port && !b->b[i].role && !b->b[i].flags && !b->b[i].conns;
        break;
    }
    default:
        ok = false;
    }
    return ok ? 0 : -EINVAL;
}

/* ---- Encoding ---------------------------------------------------------------- */

int rs_ctl_init(void)
{
    /* 0: initialised now; 1: already was; -1: failure. */
    return sodium_init() < 0 ? -EIO : 0;
}

void rs_ctl_replay_init(struct rs_ctl_replay *replay)
{
    memset(replay, 0, sizeof(*replay));
}

static uint32_t payload_len(const struct rs_ctl_msg *m)
{
    return body_len[m->type] + (m->type == RS_CTL_STATE_UPDATE ? m->u.state_update.len
                                : m->type == RS_CTL_PLAN ? m->u.plan.len
                                : m->type == RS_CTL_FLOW ? m->u.flow.len : 0);
}

int rs_ctl_encoded_len(const struct rs_ctl_msg *msg)
{
    if (!msg || validate__(msg))
        return -EINVAL;
    return (int)(RS_CTL_HDR_LEN + payload_len(msg) + RS_CTL_MAC_LEN);
}

static void put_body(uint8_t **p, const struct rs_ctl_msg *m)
{
    switch (m->type) {
    case RS_CTL_HEARTBEAT:
        rs_put8(p, m->u.heartbeat.role);
        rs_put_zero(p, 3);
        rs_put32(p, m->u.heartbeat.backend_id);
        rs_put64(p, m->u.heartbeat.time_us);
        break;
    case RS_CTL_FAILURE:
        rs_put32(p, m->u.failure.backend_id);
        rs_put16(p, m->u.failure.reason);
        rs_put_zero(p, 2);
        break;
    case RS_CTL_TXN_LOGGED:
        rs_put64(p, m->u.txn_logged.txn);
        rs_put32(p, m->u.txn_logged.resp_end);
        break;
    case RS_CTL_UNLOGGED:
        rs_put64(p, m->u.unlogged.from);
        break;
    case RS_CTL_FLOW: {
        const struct rs_ctl_flow *b = &m->u.flow;
        rs_put8(p, b->op);
        rs_put_zero(p, 3);
        rs_put64(p, b->epoch);
        rs_put32(p, b->saddr);
        rs_put32(p, b->daddr);
        rs_put16(p, b->sport);
        rs_put16(p, b->dport);
        rs_put32(p, b->len);
        if (b->len)
            memmove(*p, b->data, b->len);
        *p += b->len;
        break;
    }
    case RS_CTL_STATE_REPORT: {
        const struct rs_ctl_state_report *b = &m->u.state_report;
        put_conn(p, &b->conn);
        rs_put8(p, (uint8_t)((b->has_ts ? F_HAS_TS : 0) | (b->has_ta ? F_HAS_TA : 0)));
        rs_put_zero(p, 1);
        rs_put16(p, b->ts);
        rs_put16(p, b->ta);
        break;
    }
    case RS_CTL_RECOVERY_INFO: {
        const struct rs_ctl_recovery_info *b = &m->u.recovery_info;
        put_conn(p, &b->conn);
        rs_put8(p, b->has_tl ? F_HAS_TL : 0);
        rs_put_zero(p, 1);
        rs_put16(p, b->tl);
        rs_put_zero(p, 2);
        rs_put32(p, b->ack_tl);
        rs_put32(p, b->p);
        break;
    }
    case RS_CTL_RESPLICE: {
        const struct rs_ctl_resplice *b = &m->u.resplice;
        put_conn(p, &b->client);
        put_conn(p, &b->vip);
        put_conn(p, &b->target);
        rs_put_zero(p, 2);
        rs_put32(p, b->client_seq);
        rs_put32(p, b->resp_seq);
        break;
    }
    case RS_CTL_ACK:
        rs_put64(p, m->u.ack.echo_seq);
        rs_put8(p, m->u.ack.echo_type);
        rs_put_zero(p, 3);
        rs_put32(p, (uint32_t)m->u.ack.status);
        break;
    case RS_CTL_STATE_UPDATE: {
        const struct rs_ctl_state_update *b = &m->u.state_update;
        rs_put64(p, b->txn);
        rs_put8(p, (b->sync ? F_SYNC : 0) | (b->kind == RS_CTL_STATE_SNAPSHOT ? F_SNAPSHOT : 0)
                       | (b->kind == RS_CTL_STATE_COVERED ? F_COVERED : 0));
        rs_put_zero(p, 3);
        rs_put32(p, b->len);
        if (b->len)
            memmove(*p, b->data, b->len); /* the caller's data may live in 'buf' */
        *p += b->len;
        break;
    }
    case RS_CTL_CONN_MAP:
        put_conn(p, &m->u.conn_map.peer);
        put_conn(p, &m->u.conn_map.client);
        rs_put16(p, m->u.conn_map.next_num);
        rs_put8(p, m->u.conn_map.flags);
        rs_put_zero(p, 1);
        break;
    case RS_CTL_STATE_QUERY:
        put_conn(p, &m->u.state_query.client);
        rs_put_zero(p, 2);
        break;
    case RS_CTL_APPLY:
        put_conn(p, &m->u.apply.client);
        rs_put16(p, m->u.apply.upto);
        break;
    case RS_CTL_RECOVER:
        put_conn(p, &m->u.recover.client);
        rs_put16(p, m->u.recover.budget_ms);
        rs_put32(p, m->u.recover.backend_id);
        put_conn(p, &m->u.recover.target);
        rs_put8(p, (m->u.recover.has_seen ? 1 : 0) | (m->u.recover.has_server_ack ? 2 : 0)
                       | (m->u.recover.verdict_only ? 4 : 0) | (m->u.recover.has_server_end ? 8 : 0));
        rs_put_zero(p, 1);
        rs_put32(p, m->u.recover.client_ack);
        rs_put32(p, m->u.recover.client_seq_end);
        rs_put32(p, m->u.recover.server_ack);
        rs_put32(p, m->u.recover.server_end);
        break;
    case RS_CTL_PLAN: {
        const struct rs_ctl_plan *b = &m->u.plan;
        put_conn(p, &b->client);
        rs_put8(p, b->flags);
        rs_put_zero(p, 1);
        rs_put32(p, (uint32_t)b->status);
        rs_put16(p, b->tl);
        rs_put16(p, b->tsp);
        rs_put16(p, b->tr);
        rs_put16(p, b->replayed);
        rs_put32(p, b->ack_tl);
        rs_put32(p, b->p);
        rs_put32(p, b->ackcl);
        rs_put32(p, b->resend_from);
        rs_put32(p, b->resend_to);
        rs_put32(p, b->q);
        rs_put32(p, b->len);
        if (b->len)
            memmove(*p, b->data, b->len);
        *p += b->len;
        break;
    }
    case RS_CTL_RESEND:
        put_conn(p, &m->u.resend.client);
        rs_put_zero(p, 2);
        rs_put32(p, m->u.resend.from);
        rs_put32(p, m->u.resend.to);
        break;
    case RS_CTL_CLOSE_ASK:
    case RS_CTL_CLOSE_WORD:
        put_conn(p, &m->u.close.client);
        rs_put8(p, m->u.close.flags);
        rs_put_zero(p, 1);
        rs_put32(p, m->u.close.req_end);
        rs_put32(p, m->u.close.resp_end);
        break;
    case RS_CTL_SUSPECT:
        put_conn(p, &m->u.suspect.client);
        rs_put16(p, m->u.suspect.reason);
        rs_put32(p, m->u.suspect.silent_ms);
        break;
    case RS_CTL_FENCE:
        rs_put32(p, m->u.fence.backend_id);
        rs_put32(p, m->u.fence.ip4);
        rs_put8(p, m->u.fence.fenced ? 1 : 0);
        rs_put_zero(p, 3);
        break;
    case RS_CTL_STATUS:
    case RS_CTL_OWED_ASK:
        rs_put_zero(p, 4);
        break;
    case RS_CTL_STATUS_REPORT: {
        const struct rs_ctl_status_report *b = &m->u.status_report;
        rs_put8(p, b->n);
        rs_put_zero(p, 3);
        rs_put32(p, b->recovering);
        rs_put32(p, b->recovered);
        rs_put32(p, b->unrecoverable);
        for (unsigned i = 0; i < RS_CTL_STATUS_BACKENDS; i++) {
            rs_put32(p, b->b[i].id);
            rs_put32(p, b->b[i].ip4);
            rs_put16(p, b->b[i].port);
            rs_put8(p, b->b[i].role);
            rs_put8(p, b->b[i].flags);
            rs_put32(p, b->b[i].conns);
        }
        break;
    }
    }
}

void rs_ctl_mac(uint8_t mac[RS_CTL_MAC_LEN], const uint8_t *buf, size_t len, const struct rs_ctl_key *key)
{
    crypto_generichash(mac, RS_CTL_MAC_LEN, buf, len, key->bytes, sizeof(key->bytes));
}

int rs_ctl_encode(const struct rs_ctl_key *key, const struct rs_ctl_msg *msg,
                  uint8_t *buf, size_t buflen)
{
    uint8_t *p = buf;
    uint32_t plen;
    int n;

    if (!key || !msg || !buf)
        return -EINVAL;
    n = rs_ctl_encoded_len(msg);
    if (n < 0)
        return n;
    if (buflen < (size_t)n)
        return -ENOSPC;
    plen = payload_len(msg);
    /* Body first: STATE_UPDATE data inside 'buf' must be moved before the
     * header overwrites it.  memmove copes with the overlap. */
    p = buf + RS_CTL_HDR_LEN;
    put_body(&p, msg);
    p = buf;
    rs_put8(&p, 'R');
    rs_put8(&p, 'S');
    rs_put8(&p, RS_CTL_VERSION);
    rs_put8(&p, msg->type);
    rs_put16(&p, 0);
    rs_put32(&p, msg->sender);
    rs_put64(&p, msg->seq);
    rs_put32(&p, plen);
    rs_ctl_mac(buf + RS_CTL_HDR_LEN + plen, buf, RS_CTL_HDR_LEN + plen, key);
    return n;
}

/* ---- Decoding ---------------------------------------------------------------- */

/* Parses the authenticated payload of 'plen' bytes at 'p' into 'm' (whose
 * type is set).  Returns 0 or -EBADMSG. */
static int get_body(const uint8_t *p, uint32_t plen, struct rs_ctl_msg *m)
{
    bool pad_ok = true;
    uint8_t fl;

    if (plen < body_len[m->type]
        || (!has_data(m->type) && plen != body_len[m->type]))
        return -EBADMSG;
    switch (m->type) {
    case RS_CTL_HEARTBEAT:
        m->u.heartbeat.role = rs_get8(&p);
        pad_ok = get_zero(&p, 3);
        m->u.heartbeat.backend_id = rs_get32(&p);
        m->u.heartbeat.time_us = rs_get64(&p);
        break;
    case RS_CTL_FAILURE:
        m->u.failure.backend_id = rs_get32(&p);
        m->u.failure.reason = rs_get16(&p);
        pad_ok = get_zero(&p, 2);
        break;
    case RS_CTL_TXN_LOGGED:
        m->u.txn_logged.txn = rs_get64(&p);
        m->u.txn_logged.resp_end = rs_get32(&p);
        break;
    case RS_CTL_UNLOGGED:
        m->u.unlogged.from = rs_get64(&p);
        break;
    case RS_CTL_FLOW: {
        struct rs_ctl_flow *b = &m->u.flow;
        b->op = rs_get8(&p);
        pad_ok = get_zero(&p, 3);
        b->epoch = rs_get64(&p);
        b->saddr = rs_get32(&p);
        b->daddr = rs_get32(&p);
        b->sport = rs_get16(&p);
        b->dport = rs_get16(&p);
        b->len = rs_get32(&p);
        if (b->len != plen - RS_CTL_FLOW_HDR)
            return -EBADMSG;
        b->data = b->len ? p : NULL;
        break;
    }
    case RS_CTL_STATE_REPORT: {
        struct rs_ctl_state_report *b = &m->u.state_report;
        get_conn(&p, &b->conn);
        fl = rs_get8(&p);
        pad_ok = get_zero(&p, 1) && !(fl & ~(F_HAS_TS | F_HAS_TA));
        b->has_ts = fl & F_HAS_TS;
        b->has_ta = fl & F_HAS_TA;
        b->ts = rs_get16(&p);
        b->ta = rs_get16(&p);
        break;
    }
    case RS_CTL_RECOVERY_INFO: {
        struct rs_ctl_recovery_info *b = &m->u.recovery_info;
        get_conn(&p, &b->conn);
        fl = rs_get8(&p);
        pad_ok = get_zero(&p, 1) && !(fl & ~F_HAS_TL);
        b->has_tl = fl & F_HAS_TL;
        b->tl = rs_get16(&p);
        pad_ok &= get_zero(&p, 2);
        b->ack_tl = rs_get32(&p);
        b->p = rs_get32(&p);
        break;
    }
    case RS_CTL_RESPLICE: {
        struct rs_ctl_resplice *b = &m->u.resplice;
        get_conn(&p, &b->client);
        get_conn(&p, &b->vip);
        get_conn(&p, &b->target);
        pad_ok = get_zero(&p, 2);
        b->client_seq = rs_get32(&p);
        b->resp_seq = rs_get32(&p);
        break;
    }
    case RS_CTL_ACK:
        m->u.ack.echo_seq = rs_get64(&p);
        m->u.ack.echo_type = rs_get8(&p);
        pad_ok = get_zero(&p, 3);
        m->u.ack.status = (int32_t)rs_get32(&p);
        break;
    case RS_CTL_STATE_UPDATE: {
        struct rs_ctl_state_update *b = &m->u.state_update;
        b->txn = rs_get64(&p);
        fl = rs_get8(&p);
        pad_ok = get_zero(&p, 3) && !(fl & ~(F_SYNC | F_SNAPSHOT | F_COVERED))
                 && (fl & (F_SNAPSHOT | F_COVERED)) != (F_SNAPSHOT | F_COVERED);
        b->sync = fl & F_SYNC;
        b->kind = fl & F_SNAPSHOT ? RS_CTL_STATE_SNAPSHOT : fl & F_COVERED ? RS_CTL_STATE_COVERED : RS_CTL_STATE_TXN;
        b->len = rs_get32(&p);
        /* The inner length must account for the whole payload. */
        if (b->len != plen - RS_CTL_STATE_HDR)
            return -EBADMSG;
        b->data = b->len ? p : NULL;
        break;
    }
    case RS_CTL_CONN_MAP:
        get_conn(&p, &m->u.conn_map.peer);
        get_conn(&p, &m->u.conn_map.client);
        m->u.conn_map.next_num = rs_get16(&p);
        m->u.conn_map.flags = rs_get8(&p);
        pad_ok = get_zero(&p, 1) && !(m->u.conn_map.flags & ~RS_CTL_CONN_MAP_RERUN);
        break;
    case RS_CTL_STATE_QUERY:
        get_conn(&p, &m->u.state_query.client);
        pad_ok = get_zero(&p, 2);
        break;
    case RS_CTL_APPLY:
        get_conn(&p, &m->u.apply.client);
        m->u.apply.upto = rs_get16(&p);
        break;
    case RS_CTL_RECOVER:
        get_conn(&p, &m->u.recover.client);
        m->u.recover.budget_ms = rs_get16(&p);
        m->u.recover.backend_id = rs_get32(&p);
        get_conn(&p, &m->u.recover.target);
        fl = rs_get8(&p);
        pad_ok = fl <= 15 && get_zero(&p, 1);
        m->u.recover.has_seen = (fl & 1) != 0;
        m->u.recover.has_server_ack = (fl & 2) != 0;
        m->u.recover.verdict_only = (fl & 4) != 0;
        m->u.recover.has_server_end = (fl & 8) != 0;
        m->u.recover.client_ack = rs_get32(&p);
        m->u.recover.client_seq_end = rs_get32(&p);
        m->u.recover.server_ack = rs_get32(&p);
        m->u.recover.server_end = rs_get32(&p);
        break;
    case RS_CTL_PLAN: {
        struct rs_ctl_plan *b = &m->u.plan;
        get_conn(&p, &b->client);
        b->flags = rs_get8(&p);
        pad_ok = get_zero(&p, 1);
        b->status = (int32_t)rs_get32(&p);
        b->tl = rs_get16(&p);
        b->tsp = rs_get16(&p);
        b->tr = rs_get16(&p);
        b->replayed = rs_get16(&p);
        b->ack_tl = rs_get32(&p);
        b->p = rs_get32(&p);
        b->ackcl = rs_get32(&p);
        b->resend_from = rs_get32(&p);
        b->resend_to = rs_get32(&p);
        b->q = rs_get32(&p);
        b->len = rs_get32(&p);
        if (b->len != plen - RS_CTL_PLAN_HDR)
            return -EBADMSG;
        b->data = b->len ? p : NULL;
        break;
    }
    case RS_CTL_RESEND:
        get_conn(&p, &m->u.resend.client);
        pad_ok = get_zero(&p, 2);
        m->u.resend.from = rs_get32(&p);
        m->u.resend.to = rs_get32(&p);
        break;
    case RS_CTL_CLOSE_ASK:
    case RS_CTL_CLOSE_WORD:
        get_conn(&p, &m->u.close.client);
        m->u.close.flags = rs_get8(&p);
        pad_ok = get_zero(&p, 1);
        m->u.close.req_end = rs_get32(&p);
        m->u.close.resp_end = rs_get32(&p);
        break;
    case RS_CTL_SUSPECT:
        get_conn(&p, &m->u.suspect.client);
        m->u.suspect.reason = rs_get16(&p);
        m->u.suspect.silent_ms = rs_get32(&p);
        break;
    case RS_CTL_FENCE:
        m->u.fence.backend_id = rs_get32(&p);
        m->u.fence.ip4 = rs_get32(&p);
        fl = rs_get8(&p);
        pad_ok = fl <= 1 && get_zero(&p, 3);
        m->u.fence.fenced = fl == 1;
        break;
    case RS_CTL_STATUS:
    case RS_CTL_OWED_ASK:
        pad_ok = get_zero(&p, 4);
        break;
    case RS_CTL_STATUS_REPORT: {
        struct rs_ctl_status_report *b = &m->u.status_report;
        b->n = rs_get8(&p);
        pad_ok = get_zero(&p, 3);
        b->recovering = rs_get32(&p);
        b->recovered = rs_get32(&p);
        b->unrecoverable = rs_get32(&p);
        for (unsigned i = 0; i < RS_CTL_STATUS_BACKENDS; i++) {
            b->b[i].id = rs_get32(&p);
            b->b[i].ip4 = rs_get32(&p);
            b->b[i].port = rs_get16(&p);
            b->b[i].role = rs_get8(&p);
            b->b[i].flags = rs_get8(&p);
            b->b[i].conns = rs_get32(&p);
        }
        break;
    }
    }
    if (!pad_ok || validate__(m))
        return -EBADMSG;
    return 0;
}

/* Finds 'sender' in 'r'; returns its slot, r->n when absent. */
static unsigned replay_slot(const struct rs_ctl_replay *r, uint32_t sender)
{
    unsigned i;

    for (i = 0; i < r->n; i++)
        if (r->peer[i].sender == sender)
            break;
    return i;
}

int rs_ctl_decode(const struct rs_ctl_key *key, struct rs_ctl_replay *replay,
                  const uint8_t *buf, size_t len, struct rs_ctl_msg *msg)
{
    uint8_t mac[RS_CTL_MAC_LEN];
    const uint8_t *p;
    uint32_t plen;
    size_t frame;
    unsigned slot;
    uint8_t type;
    int err;

    if (!key || !replay || !msg || (!buf && len) || replay->n > RS_CTL_REPLAY_PEERS)
        return -EINVAL;
    /* Reject garbage as early as the bytes allow, so a stream reader does
     * not wait for a frame that can never be valid. */
    if ((len > 0 && buf[0] != 'R') || (len > 1 && buf[1] != 'S'))
        return -EPROTO;
    if (len > 2 && buf[2] != RS_CTL_VERSION)
        return -EPROTONOSUPPORT;
    if (len > 3 && !type_known(buf[3]))
        return -ENOMSG;
    if (len < RS_CTL_HDR_LEN)
        return 0;
    type = buf[3];
    p = buf + 18;
    plen = rs_get32(&p);
    if (plen > max_body_len(type))
        return -EMSGSIZE;
    frame = RS_CTL_HDR_LEN + (size_t)plen + RS_CTL_MAC_LEN;
    if (len < frame)
        return 0;
    rs_ctl_mac(mac, buf, RS_CTL_HDR_LEN + plen, key);
    if (crypto_verify_32(buf + RS_CTL_HDR_LEN + plen, mac) != 0)
        return -EACCES;

    memset(msg, 0, sizeof(*msg));
    p = buf + 4;
    if (rs_get16(&p) != 0)
        return -EBADMSG;
    msg->type = type;
    msg->sender = rs_get32(&p);
    msg->seq = rs_get64(&p);
    err = get_body(buf + RS_CTL_HDR_LEN, plen, msg);
    if (err)
        return err;

    /* Accept only sequences above the sender's last; record it last so any
     * failure leaves 'replay' as it was. */
    slot = replay_slot(replay, msg->sender);
    if (slot < replay->n && msg->seq <= replay->peer[slot].last_seq)
        return -EALREADY;
    if (slot == replay->n) {
        if (replay->n == RS_CTL_REPLAY_PEERS)
            return -ENOBUFS;
        replay->peer[slot].sender = msg->sender;
        replay->n++;
    }
    replay->peer[slot].last_seq = msg->seq;
    return (int)frame;
}

/* ---- Helpers ------------------------------------------------------------------ */

static bool conn_eq(const struct rs_ctl_conn *a, const struct rs_ctl_conn *b)
{
    return a->ip4 == b->ip4 && a->port == b->port;
}

bool rs_ctl_msg_equal(const struct rs_ctl_msg *a, const struct rs_ctl_msg *b)
{
    if (a->type != b->type || a->sender != b->sender || a->seq != b->seq)
        return false;
    switch (a->type) {
    case RS_CTL_HEARTBEAT:
        return a->u.heartbeat.role == b->u.heartbeat.role
               && a->u.heartbeat.backend_id == b->u.heartbeat.backend_id
               && a->u.heartbeat.time_us == b->u.heartbeat.time_us;
    case RS_CTL_FAILURE:
        return a->u.failure.backend_id == b->u.failure.backend_id
               && a->u.failure.reason == b->u.failure.reason;
    case RS_CTL_TXN_LOGGED:
        return a->u.txn_logged.txn == b->u.txn_logged.txn
               && a->u.txn_logged.resp_end == b->u.txn_logged.resp_end;
    case RS_CTL_UNLOGGED:
        return a->u.unlogged.from == b->u.unlogged.from;
    case RS_CTL_FLOW: {
        const struct rs_ctl_flow *x = &a->u.flow, *y = &b->u.flow;
        return x->op == y->op && x->epoch == y->epoch && x->saddr == y->saddr && x->daddr == y->daddr
               && x->sport == y->sport && x->dport == y->dport && x->len == y->len
               && (x->len == 0 || x->data == y->data || (x->data && y->data && !memcmp(x->data, y->data, x->len)));
    }
    case RS_CTL_STATE_REPORT: {
        const struct rs_ctl_state_report *x = &a->u.state_report, *y = &b->u.state_report;
        return conn_eq(&x->conn, &y->conn) && x->has_ts == y->has_ts && x->has_ta == y->has_ta
               && x->ts == y->ts && x->ta == y->ta;
    }
    case RS_CTL_RECOVERY_INFO: {
        const struct rs_ctl_recovery_info *x = &a->u.recovery_info, *y = &b->u.recovery_info;
        return conn_eq(&x->conn, &y->conn) && x->has_tl == y->has_tl && x->tl == y->tl
               && x->ack_tl == y->ack_tl && x->p == y->p;
    }
    case RS_CTL_RESPLICE: {
        const struct rs_ctl_resplice *x = &a->u.resplice, *y = &b->u.resplice;
        return conn_eq(&x->client, &y->client) && conn_eq(&x->vip, &y->vip)
               && conn_eq(&x->target, &y->target) && x->client_seq == y->client_seq
               && x->resp_seq == y->resp_seq;
    }
    case RS_CTL_ACK:
        return a->u.ack.echo_seq == b->u.ack.echo_seq && a->u.ack.echo_type == b->u.ack.echo_type
               && a->u.ack.status == b->u.ack.status;
    case RS_CTL_STATE_UPDATE: {
        const struct rs_ctl_state_update *x = &a->u.state_update, *y = &b->u.state_update;
        return x->txn == y->txn && x->sync == y->sync && x->kind == y->kind && x->len == y->len
               && (x->len == 0 || x->data == y->data
                   || (x->data && y->data && memcmp(x->data, y->data, x->len) == 0));
    }
    case RS_CTL_CONN_MAP:
        return conn_eq(&a->u.conn_map.peer, &b->u.conn_map.peer)
               && conn_eq(&a->u.conn_map.client, &b->u.conn_map.client)
               && a->u.conn_map.next_num == b->u.conn_map.next_num && a->u.conn_map.flags == b->u.conn_map.flags;
    case RS_CTL_STATE_QUERY:
        return conn_eq(&a->u.state_query.client, &b->u.state_query.client);
    case RS_CTL_APPLY:
        return conn_eq(&a->u.apply.client, &b->u.apply.client) && a->u.apply.upto == b->u.apply.upto;
    case RS_CTL_RECOVER:
        return conn_eq(&a->u.recover.client, &b->u.recover.client)
               && a->u.recover.budget_ms == b->u.recover.budget_ms
               && a->u.recover.backend_id == b->u.recover.backend_id
               && conn_eq(&a->u.recover.target, &b->u.recover.target)
               && a->u.recover.has_seen == b->u.recover.has_seen && a->u.recover.client_ack == b->u.recover.client_ack
               && a->u.recover.client_seq_end == b->u.recover.client_seq_end
               && a->u.recover.has_server_ack == b->u.recover.has_server_ack
               && a->u.recover.server_ack == b->u.recover.server_ack;
    case RS_CTL_PLAN: {
        const struct rs_ctl_plan *x = &a->u.plan, *y = &b->u.plan;
        return conn_eq(&x->client, &y->client) && x->status == y->status && x->flags == y->flags
               && x->tl == y->tl && x->tsp == y->tsp && x->tr == y->tr && x->replayed == y->replayed
               && x->ack_tl == y->ack_tl && x->p == y->p && x->ackcl == y->ackcl
               && x->resend_from == y->resend_from && x->resend_to == y->resend_to && x->q == y->q
               && x->len == y->len
               && (x->len == 0 || x->data == y->data
                   || (x->data && y->data && memcmp(x->data, y->data, x->len) == 0));
    }
    case RS_CTL_RESEND:
        return conn_eq(&a->u.resend.client, &b->u.resend.client) && a->u.resend.from == b->u.resend.from
               && a->u.resend.to == b->u.resend.to;
    case RS_CTL_CLOSE_ASK:
    case RS_CTL_CLOSE_WORD:
        return conn_eq(&a->u.close.client, &b->u.close.client) && a->u.close.flags == b->u.close.flags
               && a->u.close.req_end == b->u.close.req_end && a->u.close.resp_end == b->u.close.resp_end;
    case RS_CTL_SUSPECT:
        return conn_eq(&a->u.suspect.client, &b->u.suspect.client) && a->u.suspect.reason == b->u.suspect.reason
               && a->u.suspect.silent_ms == b->u.suspect.silent_ms;
    case RS_CTL_FENCE:
        return a->u.fence.backend_id == b->u.fence.backend_id && a->u.fence.ip4 == b->u.fence.ip4
               && a->u.fence.fenced == b->u.fence.fenced;
    case RS_CTL_STATUS:
    case RS_CTL_OWED_ASK:
        return true;
    case RS_CTL_STATUS_REPORT: {
        const struct rs_ctl_status_report *x = &a->u.status_report, *y = &b->u.status_report;
        if (x->n != y->n || x->recovering != y->recovering || x->recovered != y->recovered
            || x->unrecoverable != y->unrecoverable)
            return false;
        for (unsigned i = 0; i < RS_CTL_STATUS_BACKENDS; i++)
            if (x->b[i].id != y->b[i].id || x->b[i].ip4 != y->b[i].ip4 || x->b[i].port != y->b[i].port
                || x->b[i].role != y->b[i].role || x->b[i].flags != y->b[i].flags || x->b[i].conns != y->b[i].conns)
                return false;
        return true;
    }
    }
    return true; /* unknown types carry no body to compare */
}

int rs_ctl_sender_role(uint32_t sender)
{
    if ((sender & 0xffff0000u) == RS_CTL_SENDER_PROXY)
        return RS_CTL_ROLE_PROXY;
    if ((sender & 0xffffff00u) == RS_CTL_SENDER_LOGGER)
        return RS_CTL_ROLE_LOGGER;
    if ((sender & 0xff000000u) == RS_CTL_SENDER_OPERATOR)
        return RS_CTL_ROLE_OPERATOR;
    if (sender >> 24 == RS_CTL_ROLE_BACKEND)
        return RS_CTL_ROLE_BACKEND;
    return 0;
}

bool rs_ctl_role_may_send(int role, unsigned type)
{
#define R(x) (1u << (x))
    enum { P = R(RS_CTL_ROLE_PROXY), L = R(RS_CTL_ROLE_LOGGER), B = R(RS_CTL_ROLE_BACKEND),
           O = R(RS_CTL_ROLE_OPERATOR) };
    static const unsigned senders[RS_CTL_TYPE_MAX + 1] = {
        [RS_CTL_HEARTBEAT] = P | L | B | O,
        [RS_CTL_FAILURE] = L | B,
        [RS_CTL_TXN_LOGGED] = L | O,
        [RS_CTL_STATE_REPORT] = B,
        [RS_CTL_RECOVERY_INFO] = L,
        [RS_CTL_RESPLICE] = L | P | O,
        [RS_CTL_ACK] = P | L | B | O,
        [RS_CTL_STATE_UPDATE] = B,
        [RS_CTL_CONN_MAP] = P | L | O,
        [RS_CTL_STATE_QUERY] = L | O,
        [RS_CTL_APPLY] = L | O,
        [RS_CTL_RECOVER] = P | O,
        [RS_CTL_PLAN] = L,
        [RS_CTL_RESEND] = P | O,
        [RS_CTL_SUSPECT] = L,
        [RS_CTL_FENCE] = P | O,
        [RS_CTL_STATUS] = O,
        [RS_CTL_STATUS_REPORT] = P,
        [RS_CTL_UNLOGGED] = L | O,
        [RS_CTL_FLOW] = P,
        [RS_CTL_CLOSE_ASK] = P,
        [RS_CTL_CLOSE_WORD] = L,
        [RS_CTL_OWED_ASK] = P,
    };
#undef R

    return role > 0 && role <= RS_CTL_ROLE_OPERATOR && type <= RS_CTL_TYPE_MAX && (senders[type] & (1u << role));
}

const char *rs_ctl_type_str(unsigned type)
{
    return type_known(type) ? type_name[type] : "?";
}
