/* The recovery manager (docs/recovery.md): moves a spliced client to
 * another server without the client noticing — to the logger for the bytes
 * it has to resend, then to the alternate at transaction TL+1.
 *
 * One primitive does every move: splice_to() connects to the target, makes
 * the target->proxy direction ACTIVE first (so no byte the target sends can
 * reach the proxy's stack), writes what the target must get from the proxy
 * (a RESEND frame, or TL+1's logged request), waits until the target has
 * acknowledged it, closes the socket silently, and only then lets the
 * client's segments through.  The steps block the proxy's loop for the few
 * milliseconds a recovery takes on a LAN. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy.h"
#include "seq.h"

#define STEP_TIMEOUT_MS 2000
#define CTL_REPLY_MAX (RS_CTL_HDR_LEN + RS_CTL_PAYLOAD_MAX + RS_CTL_MAC_LEN)

/* Waits until 'fd' is writable (connected) or 'ms' pass.  Returns 0 or -errno. */
static int wait_connected(int fd, int ms)
{
    struct pollfd pfd = { fd, POLLOUT, 0 };
    int err = 0;
    socklen_t len = sizeof(err);

    if (poll(&pfd, 1, ms) != 1)
        return -ETIMEDOUT;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) || err)
        return -(err ? err : errno);
    return 0;
}

static int write_all(int fd, const uint8_t *buf, size_t len, int ms)
{
    while (len) {
        struct pollfd pfd = { fd, POLLOUT, 0 };
        ssize_t n = write(fd, buf, len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && errno != EAGAIN) {
            return -errno;
        } else if (poll(&pfd, 1, ms) != 1) {
            return -ETIMEDOUT;
        }
    }
    return 0;
}

/* Sends 'req' to 'to' on a new connection and reads one reply into 'reply'
 * (whose data, for PLAN, points into 'buf').  Returns 0 or -errno. */
static int ctl_call(struct proxy *p, struct rs_addr to, struct rs_ctl_msg *req, struct rs_ctl_msg *reply,
                    uint8_t *buf, size_t cap)
{
    struct sockaddr_in sin = rs_addr_sin(to);
    struct rs_ctl_replay replay;
    size_t have = 0;
    int fd, n, e;

    req->sender = 1;
    req->seq = ++p->ctl_seq;
    n = rs_ctl_encode(&p->key, req, buf, cap);
    if (n < 0)
        return n;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if ((connect(fd, (struct sockaddr *)&sin, sizeof(sin)) && errno != EINPROGRESS)
        || (e = wait_connected(fd, STEP_TIMEOUT_MS)) != 0 || (e = write_all(fd, buf, (size_t)n, STEP_TIMEOUT_MS)) != 0) {
        e = errno ? -errno : -EIO;
        close(fd);
        return e;
    }
    rs_ctl_replay_init(&replay);
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t r;

        if (poll(&pfd, 1, STEP_TIMEOUT_MS) != 1) {
            close(fd);
            return -ETIMEDOUT;
        }
        r = read(fd, buf + have, cap - have);
        if (r <= 0) {
            close(fd);
            return r ? -errno : -ECONNRESET;
        }
        have += (size_t)r;
        n = rs_ctl_decode(&p->key, &replay, buf, have, reply);
        if (n != 0)
            break;
    }
    close(fd);
    return n < 0 ? n : 0;
}

int rs_conn_map(struct proxy *p, struct rs_addr backend, struct rs_addr peer, struct rs_addr client,
                uint16_t next_num, uint8_t flags)
{
    struct rs_ctl_msg m = { .type = RS_CTL_CONN_MAP }, r;
    uint8_t buf[512];
    int e;

    if (!p->stated_port)
        return 0;
    m.u.conn_map = (struct rs_ctl_conn_map){ { peer.ip, peer.port }, { client.ip, client.port }, next_num, flags };
    e = ctl_call(p, (struct rs_addr){ backend.ip, p->stated_port }, &m, &r, buf, sizeof(buf));
    if (e)
        return e;
    return r.type == RS_CTL_ACK ? r.u.ack.status : -EPROTO;
}

/* Polls until the entry 'k' has seen an ACK at or after 'ack', or times out. */
static int wait_acked(struct proxy *p, const struct rs_flow_key *k, uint32_t ack)
{
    uint64_t end = rs_mono_ns() + STEP_TIMEOUT_MS * 1000000ull;
    struct rs_flow f;

    while (rs_mono_ns() < end) {
        if (!rs_splicer_get(p->sp, k, &f) && f.has_ack && rs_seq_ge(f.ack_max, ack))
            return 0;
        usleep(20);
    }
    return -ETIMEDOUT;
}

/* Moves client 'pc' to a new connection to 'target': the proxy first sends
 * 'pre' ('npre' bytes); the client's own bytes continue from client byte
 * 'q'; the target's first byte to the proxy lands at client response byte
 * 'r'.  The client's entry ends in 'client_state'.  'map' asks the target's
 * rs-stated to number its requests from 'next_num'; 'guard' holds back the
 * target's FIN/RST (a backend).  Returns 0 or -errno; the old target's
 * entry joins pc->held. */
static int splice_to(struct proxy *p, struct pconn *pc, struct rs_addr target, const uint8_t *pre, size_t npre,
                     uint32_t q, uint32_t r, uint32_t client_state, bool map, uint16_t next_num, bool guard)
{
    struct rs_flow_key kc = rs_key_c(pc), kb = rs_key_b(pc), kn;
    struct rs_splice_conn c = pc->c, s;
    struct rs_splice_dir c2s, s2c;
    struct rs_flow fn;
    struct rs_addr local;
    int fd, e;

    if (pc->nheld == (int)(sizeof(pc->held) / sizeof(pc->held[0])))
        return -EMLINK;
    fd = rs_bind_watched(p, target, pc->id, &local);
    if (fd < 0)
        return fd;
    kn = rs_flow_key_from(target, local);
    /* Only a recovery maps (to the alternate, which re-runs TL+1). */
    if ((map && (e = rs_conn_map(p, target, local, pc->client, next_num, RS_CTL_CONN_MAP_RERUN)) != 0)
        || (e = rs_connect_start(fd, target)) != 0 || (e = wait_connected(fd, STEP_TIMEOUT_MS)) != 0
        || (e = rs_repair_on(fd)) != 0 || (e = rs_repair_read(fd, local, target, &s)) != 0
        || (e = rs_repair_off(fd)) != 0 || (e = rs_splicer_get(p->sp, &kn, &fn)) != 0)
        goto fail;
    s.ts_recent = fn.ts_recent;
    s.snd_nxt += (uint32_t)npre;
    /* The client continues at (q, r).  Its clock: it saw at most the old
     * server's clock moved on since the last splice (1 tick/ms), so continue
     * a second past that; TSecr echoes still map back exactly. */
    c.rcv_nxt = q;
    c.snd_nxt = r;
    c.ts_now = pc->c.ts_now + (uint32_t)((rs_now_us() - pc->ts_base_us) / 1000) + 1000;
    if ((e = rs_splice_init(&c, &s, &c2s, &s2c)) != 0
        || (e = rs_splicer_activate(p->sp, &kn, &s2c, pc->id, RS_FLOW_ACTIVE, guard)) != 0)
        goto fail;
    if (npre && ((e = write_all(fd, pre, npre, STEP_TIMEOUT_MS)) != 0 || (e = wait_acked(p, &kn, s.snd_nxt)) != 0))
        goto fail;
    /* Closed in repair mode: silent.  The target's ACK of 'pre' went to the
     * client (translated), not to this socket, which therefore still holds
     * 'pre' as unacknowledged — another reason it must not send anything. */
    rs_repair_on(fd);
    close(fd);
    fd = -1;
    if ((e = rs_splicer_activate(p->sp, &kc, &c2s, pc->id, client_state, false)) != 0
        || (e = rs_splicer_clamp_ack(p->sp, &kc, &kn)) != 0)
        goto fail;
    pc->held[pc->nheld++] = kb;
    pc->backend = target;
    pc->local = local;
    pc->c = c;
    pc->ts_base_us = rs_now_us();
    return 0;
fail:
    rs_splicer_remove(p->sp, &kn);
    if (fd >= 0) {
        rs_repair_on(fd);   /* leave without a RST or FIN */
        close(fd);
    }
    return e;
}

int rs_resplice(struct proxy *p, struct pconn *pc, struct rs_addr target, uint32_t q, uint32_t r)
{
    struct rs_flow_key kc = rs_key_c(pc), kb = rs_key_b(pc);
    struct rs_flow fc, fb;
    int e;

    if ((e = rs_splicer_get(p->sp, &kc, &fc)) || (e = rs_splicer_get(p->sp, &kb, &fb)))
        return e;
    if (!q && !r) {
        q = fc.seq_next;
        r = fb.seq_next + fb.dir.seq_delta;
    }
    rs_splicer_set_state(p->sp, &kc, RS_FLOW_HOLD);
    rs_splicer_set_state(p->sp, &kb, RS_FLOW_HOLD);
    e = splice_to(p, pc, target, NULL, 0, q, r, RS_FLOW_ACTIVE, false, 0, p->logger.port != 0);
    if (e) {
        p->st.resplice_errors++;
        return e;
    }
    rs_log("resplice id=%" PRIu64 " client=%s to=%s local=%s q=%u r=%u", pc->id, RS_A(pc->client),
           RS_A(target), RS_A(pc->local), q, r);
    p->st.resplices++;
    return 0;
}

/* Step 3 of docs/recovery.md: the logger resends [from, to) of the response
 * stream; the client's ACKs (only) reach it.  Returns once the client has
 * acknowledged 'to'. */
static int resend_from_log(struct proxy *p, struct pconn *pc, const struct rs_ctl_plan *plan, uint32_t q)
{
    struct rs_ctl_msg m = { .type = RS_CTL_RESEND, .sender = 1 };
    struct rs_flow_key kc = rs_key_c(pc);
    uint8_t frame[256];
    int n, e;

    m.seq = ++p->ctl_seq;
    m.u.resend = (struct rs_ctl_resend){ plan->client, plan->resend_from, plan->resend_to };
    n = rs_ctl_encode(&p->key, &m, frame, sizeof(frame));
    if (n < 0)
        return n;
    e = splice_to(p, pc, p->logger_resend, frame, (size_t)n, q, plan->resend_from, RS_FLOW_ACKONLY, false, 0,
                  false);
    if (e)
        return e;
    /* The client's ACKs, as it sends them, number the response stream. */
    return wait_acked(p, &kc, plan->resend_to);
}

int rs_recover(struct proxy *p, struct pconn *pc, const char *why)
{
    struct rs_flow_key kc = rs_key_c(pc), kb = rs_key_b(pc);
    struct rs_ctl_msg req = { .type = RS_CTL_RECOVER }, reply;
    static uint8_t buf[CTL_REPLY_MAX];
    const struct rs_ctl_plan *plan = &reply.u.plan;
    uint64_t t0 = rs_now_us(), t_plan = 0, t_resend = 0, t_done;
    struct rs_flow fc;
    uint32_t q;
    int e, backend_id = pc->backend_idx >= 0 ? (int)p->backend_ids[pc->backend_idx] : 0;

    pc->recovering = true;
    /* 1. Un-splice: nothing from the failed backend reaches the client (no
     * FIN, no RST), nothing from the client reaches the proxy's stack. */
    rs_splicer_set_state(p->sp, &kc, RS_FLOW_HOLD);
    rs_splicer_set_state(p->sp, &kb, RS_FLOW_HOLD);
    rs_log("recover id=%" PRIu64 " client=%s backend=%s step=hold why=%s", pc->id, RS_A(pc->client),
           RS_A(pc->backend), why);
    if (!p->logger.port || !p->alternate.port) {
        e = -ENOTSUP;
        goto fail;
    }
    /* 2. Plan (the logger also brings the alternate's state up to TR and
     * replays [TR, TL]). */
    req.u.recover = (struct rs_ctl_recover){ { pc->client.ip, pc->client.port }, backend_id ? (uint32_t)backend_id : 1,
                                             { p->alternate.ip, p->alternate.port } };
    if ((e = ctl_call(p, p->logger, &req, &reply, buf, sizeof(buf))) != 0)
        goto fail;
    if (reply.type != RS_CTL_PLAN) {
        e = reply.type == RS_CTL_ACK && reply.u.ack.status ? reply.u.ack.status : -EPROTO;
        goto fail;
    }
    t_plan = rs_now_us();
    rs_log("recover id=%" PRIu64 " client=%s step=plan status=%d tl=%s%u tsp=%u tr=%u replayed=%u ack_tl=%u p=%u "
           "ackcl=%u resend=[%u,%u) q=%u req_bytes=%u us=%" PRIu64, pc->id, RS_A(pc->client), plan->status,
           plan->flags & RS_CTL_PLAN_HAS_TL ? "" : "none/", plan->tl, plan->tsp, plan->tr, plan->replayed,
           plan->ack_tl, plan->p, plan->ackcl, plan->resend_from, plan->resend_to, plan->q, plan->len, t_plan - t0);
    if (plan->status == -ESHUTDOWN) {
        /* The application closed after a complete response: let its FIN through. */
        struct rs_flow fb;
        if (!rs_splicer_get(p->sp, &kb, &fb))
            rs_splicer_activate(p->sp, &kb, &fb.dir, pc->id, RS_FLOW_ACTIVE, false);
        rs_splicer_set_state(p->sp, &kc, RS_FLOW_ACTIVE);
        p->st.legit_closes++;
        pc->recovering = false;
        rs_log("recover id=%" PRIu64 " client=%s step=legit-close", pc->id, RS_A(pc->client));
        return 0;
    }
    if (plan->status) {
        e = plan->status;
        goto fail;
    }
    /* Where the client's own bytes stand: after the last byte it sent. */
    if ((e = rs_splicer_get(p->sp, &kc, &fc)) != 0)
        goto fail;
    q = fc.seq_next;
    /* 3. Resend from the log what the client has not acknowledged. */
    if (plan->resend_from != plan->resend_to) {
        if ((e = resend_from_log(p, pc, plan, q)) != 0)
            goto fail;
        t_resend = rs_now_us();
        rs_log("recover id=%" PRIu64 " client=%s step=resent bytes=%u us=%" PRIu64, pc->id, RS_A(pc->client),
               plan->resend_to - plan->resend_from, t_resend - t_plan);
    }
    /* 4. Re-splice to the alternate at Tsp = TL+1 with TL+1's logged request;
     * its response lands at AckTL, so the p bytes the client has are dropped
     * by the client's own TCP as duplicates. */
    if ((e = splice_to(p, pc, p->alternate, plan->data, plan->len, plan->q + plan->len, plan->ack_tl,
                       RS_FLOW_ACTIVE, true, plan->tsp, true)) != 0)
        goto fail;
    t_done = rs_now_us();
    pc->backend_idx = -1;
    pc->recovering = false;
    p->st.recovered++;
    rs_log("recovered id=%" PRIu64 " client=%s alternate=%s plan_us=%" PRIu64 " resend_us=%" PRIu64
           " splice_us=%" PRIu64 " total_us=%" PRIu64, pc->id, RS_A(pc->client), RS_A(p->alternate), t_plan - t0,
           t_resend ? t_resend - t_plan : 0, t_done - (t_resend ? t_resend : t_plan), t_done - t0);
    return 0;
fail:
    p->st.unrecoverable++;
    rs_log("unrecoverable id=%" PRIu64 " client=%s why=%s error=%s", pc->id, RS_A(pc->client), why, strerror(-e));
    pc->recovering = false;
    rs_pc_close(p, pc, "unrecoverable");
    return e;
}

void rs_backend_failed(struct proxy *p, uint32_t id, const char *why)
{
    int idx = -1;

    for (int i = 0; i < p->nbackends; i++)
        if (p->backend_ids[i] == id)
            idx = i;
    p->st.failures++;
    if (idx < 0) {
        rs_log("failure backend_id=%u why=%s: not one of ours", id, why);
        return;
    }
    if (!p->dead[idx])
        rs_log("failure backend_id=%u backend=%s why=%s", id, RS_A(p->backends[idx]), why);
    p->dead[idx] = true;
    for (int b = 0; b < RS_PROXY_BUCKETS; b++)
        for (struct pconn *pc = p->buckets[b], *next; pc; pc = next) {
            next = pc->next;
            if (pc->phase == PC_SPLICED && pc->backend_idx == idx && !pc->recovering)
                rs_recover(p, pc, why);
        }
}
