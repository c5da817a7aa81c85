/* The recovery manager (docs/recovery.md): fences a failed backend and
 * moves each of its clients, without the client noticing, to the logger
 * for the bytes it must resend and then to the alternate at TL+1.
 *
 * Every recovery is a state machine on the proxy's loop (struct recovery,
 * steps named after the seed's §4.3): PLAN (RECOVER sent, waiting for the
 * logger's PLAN), RESEND (moved to the logger's resend port, waiting for
 * the client to acknowledge the resent bytes), SPLICE (moving to the
 * alternate).  Many run at once; none waits on another daemon.
 *
 * One primitive does every move (struct move): bind and watch a socket to
 * the target, CONN_MAP it (a backend), connect, read its state, make the
 * target->proxy direction ACTIVE (its pure ACKs still reach the socket while
 * it sends its first bytes), write those bytes (a RESEND frame, or TL+1's
 * logged request), wait for the tc program to report the target's ACK of
 * them, close the socket silently, and only then let the client's segments
 * through.  Each step has a deadline; a recovery that cannot finish ends
 * with a RST to the client, logged and counted. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy.h"
#include "seq.h"

#define RESEND_CHECK_NS (100 * 1000000ull)   /* progress check of a resend */
#define RESEND_IDLE_NS (1000 * 1000000ull)   /* plus 4 RTTs: no ACK progress for this long ends it */

enum rec_step { REC_PLAN, REC_RESEND, REC_SPLICE };
enum move_step { MV_NONE, MV_MAP, MV_CONNECT, MV_PRE };

static const char *const step_name[] = { "plan", "resend", "splice" };

struct recovery;
typedef void (*move_done_fn)(struct recovery *rec, int err);

/* One move of the client to a new server (see the top of this file). */
struct move {
    enum move_step step;
    struct rs_addr target, local;
    int target_idx;               /* a backend (CONN_MAP, guard), -1: the logger */
    struct rs_flow_key kn;
    struct rs_io io;
    struct rs_ctl_call call;
    const uint8_t *pre;
    size_t npre, pre_off;
    uint32_t q, r, client_state;
    uint16_t next_num;
    bool map, guard;
    bool fin;                     /* the client had closed its side: a FIN follows 'pre' */
    struct rs_splice_conn c, s;
    struct rs_splice_dir c2s;
    uint32_t ack_gen;
    move_done_fn done;
};

struct recovery {
    struct pconn *pc;
    enum rec_step step;
    const char *why;
    bool relay_end;               /* relay phase, the backend ended: the client socket stays open
                                   * (held) until the logger says whether the end was meant */
    bool resplice_only;           /* an operator's RESPLICE: one move, no plan */
    bool client_fin;              /* the client sent its FIN after TL+1's request */
    uint64_t ctl_conn, ctl_seq;   /* RESPLICE: whom to answer */
    uint32_t backend_id;
    int target;                   /* the alternate when it began: roles may change meanwhile */
    unsigned attempt;             /* earlier recoveries of this failure whose target failed too */
    bool failing;                 /* in rec_fail: a fence it causes leaves it to rec_fail */
    bool again;                   /* its target failed while the logger plans: start again on
                                   * its answer (a PLAN names only the client: an earlier one
                                   * answering a later RECOVER would be taken for it) */
    uint64_t t0_us, t_plan_us, t_resend_us;
    struct rs_ctl_call call;
    struct rs_ctl_plan plan;      /* plan.data -> data */
    uint8_t *data;
    uint8_t frame[256];           /* the RESEND frame */
    struct move mv;
    struct rs_timer timer;        /* the current step's deadline */
    uint32_t watch_gen, last_ack;
    uint64_t last_progress_ns;
};

static void rec_fail(struct recovery *rec, int err);
static void move_acked(struct recovery *rec);
static int standby_for(struct proxy *p, const struct pconn *pc);

/* Whether recovery reason 'why' is the backend's own end of the connection
 * (a FIN, held at the splice or read by the relay): possibly meant. */
static bool px_recover_ended(const char *why)
{
    return !strcmp(why, "backend-fin") || !strcmp(why, "backend-end-relay");
}

int px_backend_index(struct proxy *p, uint32_t id)
{
    for (int i = 0; i < p->nbackends; i++)
        if (p->backends[i].id == id)
            return i;
    return -1;
}

int px_conn_map(struct proxy *p, int b, struct rs_addr peer, struct rs_addr client, uint16_t next_num,
                uint8_t flags, uint64_t timeout_ns, struct rs_ctl_call *call, rs_ctl_done_fn done, void *ctx)
{
    struct rs_ctl_msg m = { .type = RS_CTL_CONN_MAP };

    if (!p->stated_port || b < 0)
        return -ENOTCONN;
    m.u.conn_map = (struct rs_ctl_conn_map){ { peer.ip, peer.port }, { client.ip, client.port }, next_num, flags };
    return rs_ctl_call(&p->backends[b].stated, &m, RS_CTL_ACK, call, timeout_ns, done, ctx);
}

/* ---- the move primitive ---------------------------------------------------------- */

static void move_cleanup(struct proxy *p, struct move *mv, bool remove_entry)
{
    rs_ctl_call_cancel(&mv->call);
    rs_io_stop(&mv->io);
    if (mv->io.fd >= 0)
        px_close_silently(mv->io.fd);     /* leave without a RST or FIN */
    mv->io.fd = -1;
    if (remove_entry && mv->step != MV_NONE && p->dp)
        px_dp_remove(p->dp, &mv->kn);
    mv->step = MV_NONE;
}

/* A socket a move leaves behind, closed after a grace period rather than at
 * once: a segment the tc program sent towards it just before the switch may
 * still be on its way up the stack (on the other CPU), and without the
 * socket the stack answers it with a RST that resets the target's
 * connection (found by make fault-campaign: 4 MB of an upload's first
 * bytes written by the proxy, the alternate's window updates streaming). */
#define MOVE_GRACE_NS (100 * 1000000ull)

struct lingering {
    struct rs_timer timer;
    int fd;
};

static void lingering_done(struct rs_timer *t)
{
    struct lingering *l = t->ctx;

    close(l->fd);       /* in repair mode: silent */
    free(l);
}

void px_close_after_grace(struct proxy *p, int fd)
{
    struct lingering *l = malloc(sizeof(*l));

    px_repair_on(fd);   /* from now on it sends nothing */
    if (!l) {
        close(fd);
        return;
    }
    l->fd = fd;
    rs_timer_init(&l->timer, lingering_done, l);
    rs_timer_after(&p->loop, &l->timer, MOVE_GRACE_NS);
}

static void move_fail(struct recovery *rec, int err)
{
    move_cleanup(rec->pc->p, &rec->mv, true);
    rec->mv.done(rec, err);
}

/* Writes what is left of the first bytes; once all are out, watches for
 * the target's ACK of them. */
static void move_write(struct recovery *rec)
{
    struct proxy *p = rec->pc->p;
    struct move *mv = &rec->mv;
    int e;

    while (mv->pre_off < mv->npre) {
        ssize_t n = send(mv->io.fd, mv->pre + mv->pre_off, mv->npre - mv->pre_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN) {
            rs_io_set(&mv->io, EPOLLOUT);
            return;
        }
        if (n < 0) {
            move_fail(rec, -errno);
            return;
        }
        mv->pre_off += (size_t)n;
    }
    if (mv->fin && shutdown(mv->io.fd, SHUT_WR)) {
        move_fail(rec, -errno);
        return;
    }
    rs_io_set(&mv->io, 0);
    e = px_dp_watch_ack(p->dp, &mv->kn, mv->s.snd_nxt, &mv->ack_gen);
    if (e < 0)
        move_fail(rec, e);
    else if (e == 1)
        move_acked(rec);
}

static void move_connected(struct recovery *rec)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    struct move *mv = &rec->mv;
    struct rs_flow_key kc = px_key_c(pc);
    struct rs_splice_dir s2c;
    struct px_flow_info fn;
    int e;

    if ((e = px_repair_on(mv->io.fd)) || (e = px_repair_read(mv->io.fd, mv->local, mv->target, &mv->s, NULL))
        || (e = px_repair_off(mv->io.fd)) || (e = px_dp_get(p->dp, &mv->kn, &fn))) {
        move_fail(rec, e);
        return;
    }
    mv->s.ts_recent = fn.t.ts_recent;
    /* The first bytes (and the client's FIN after them, which then takes a
     * sequence number on both connections) come from the proxy's socket. */
    mv->s.snd_nxt += (uint32_t)mv->npre + (mv->fin ? 1 : 0);
    /* The client continues at (q, r).  Its clock: it saw at most the old
     * server's clock moved on since the last splice (1 tick/ms), so continue
     * a second past that; TSecr echoes still map back exactly. */
    mv->c = pc->c;
    mv->c.rcv_nxt = mv->q + (mv->fin ? 1 : 0);
    mv->c.snd_nxt = mv->r;
    mv->c.ts_now = pc->c.ts_now + (uint32_t)((rs_now_us() - pc->ts_base_us) / 1000) + 1000;
    if ((e = rs_splice_init(&mv->c, &mv->s, &mv->c2s, &s2c)) != 0
        || (e = px_dp_activate(p->dp, &mv->kn, &s2c, pc->id, RS_FLOW_ACTIVE, mv->guard, &kc)) != 0
        || ((mv->npre || mv->fin) && (e = px_dp_acks_to_stack(p->dp, &mv->kn, true)) != 0)) {
        move_fail(rec, e);
        return;
    }
    mv->step = MV_PRE;
    move_write(rec);
}

static void move_io(struct rs_io *io, uint32_t events)
{
    struct recovery *rec = io->ctx;
    struct move *mv = &rec->mv;

    if (mv->step == MV_CONNECT) {
        int err = rs_sock_error(io->fd);

        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            move_fail(rec, -(err ? err : ECONNREFUSED));
            return;
        }
        rs_io_set(io, 0);
        move_connected(rec);
    } else if (mv->step == MV_PRE && (events & EPOLLOUT)) {
        move_write(rec);
    } else if (events & (EPOLLERR | EPOLLHUP)) {
        move_fail(rec, -ECONNRESET);
    }
}

static void move_connect(struct recovery *rec)
{
    struct proxy *p = rec->pc->p;
    struct move *mv = &rec->mv;
    int e = px_connect_start(mv->io.fd, mv->target);

    if (!e)
        e = rs_io_start(&p->loop, &mv->io, mv->io.fd, EPOLLOUT, move_io, rec);
    if (e) {
        move_fail(rec, e);
        return;
    }
    mv->step = MV_CONNECT;
}

static void on_move_map(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct recovery *rec = call->ctx;

    if (!err && reply->u.ack.status)
        err = reply->u.ack.status;
    if (err) {
        move_fail(rec, err);
        return;
    }
    move_connect(rec);
}

/* The target has acknowledged the first bytes: hand the connection over. */
static void move_acked(struct recovery *rec)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    struct move *mv = &rec->mv;
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    int e;

    /* Switch the target's ACKs back to the client first, then close (in
     * repair mode: silent) once those already on their way have landed. */
    if (mv->npre || mv->fin)
        px_dp_acks_to_stack(p->dp, &mv->kn, false);
    rs_io_stop(&mv->io);
    px_close_after_grace(p, mv->io.fd);
    mv->io.fd = -1;
    if ((e = px_dp_activate(p->dp, &kc, &mv->c2s, pc->id, mv->client_state, false, &mv->kn)) != 0
        || (e = px_dp_clamp_ack(p->dp, &kc)) != 0) {
        move_fail(rec, e);
        return;
    }
    /* The server it leaves is fenced for this connection: nothing it still
     * sends (a late FIN, a RST, retransmissions) reaches the client. */
    if (pc->backend.ip) {
        px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD);
        if (pc->nheld < RS_PROXY_HELD_MAX)
            pc->held[pc->nheld++] = kb;
        else
            px_dp_remove(p->dp, &kb);
    }
    pc->backend = mv->target;
    pc->local = mv->local;
    pc->c = mv->c;
    pc->ts_base_us = rs_now_us();
    px_pc_save(p, pc);
    mv->step = MV_NONE;
    mv->done(rec, 0);
}

/* Starts moving the client of 'rec' to 'target' (see struct move). */
static void move_start(struct recovery *rec, struct rs_addr target, int target_idx, const uint8_t *pre,
                       size_t npre, bool fin, uint32_t q, uint32_t r, uint32_t client_state, bool map,
                       uint16_t next_num, bool guard, move_done_fn done)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    struct move *mv = &rec->mv;
    int fd, e;

    *mv = (struct move){ .target = target, .target_idx = target_idx, .pre = pre, .npre = npre, .fin = fin, .q = q, .r = r,
                         .client_state = client_state, .map = map, .next_num = next_num, .guard = guard,
                         .done = done };
    mv->io.fd = -1;
    fd = px_bind_watched(p, target, pc->id, &mv->local);
    if (fd < 0) {
        done(rec, fd);
        return;
    }
    px_nodelay(fd);
    mv->io.fd = fd;
    mv->kn = px_flow_key(target, mv->local);
    mv->step = MV_MAP;
    if (map && p->stated_port) {
        e = px_conn_map(p, target_idx, mv->local, pc->client, next_num, RS_CTL_CONN_MAP_RERUN, p->recovery_ns,
                        &mv->call, on_move_map, rec);
        if (e)
            move_fail(rec, e);
        return;
    }
    move_connect(rec);
}

/* ---- one recovery ------------------------------------------------------------------- */

static void rec_deadline(struct recovery *rec, uint64_t ns)
{
    rs_timer_at(&rec->pc->p->loop, &rec->timer, rs_loop_now(&rec->pc->p->loop) + ns);
}

/* Ends 'rec' (the connection lives on). */
static void rec_end(struct recovery *rec)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;

    move_cleanup(p, &rec->mv, false);
    rs_ctl_call_cancel(&rec->call);
    rs_timer_stop(&p->loop, &rec->timer);
    free(rec->data);
    free(rec);
    pc->rec = NULL;
    p->recovering--;
}

void px_recovery_drop(struct proxy *p, struct pconn *pc)
{
    struct recovery *rec = pc->rec;

    if (!rec)
        return;
    move_cleanup(p, &rec->mv, true);
    rec_end(rec);
}

static void answer_resplice(struct recovery *rec, int err)
{
    struct proxy *p = rec->pc->p;
    struct rs_ctlconn *cc = rec->ctl_conn ? rs_ctlserver_find(&p->ctlsrv, rec->ctl_conn) : NULL;
    struct rs_ctl_msg req = { .type = RS_CTL_RESPLICE, .seq = rec->ctl_seq };

    if (cc)
        rs_ctl_ack(cc, &req, err);
}

/* Whether 'rec' failed because its target failed too (a second crash
 * while the first one's recoveries run): the target is fenced by now, or
 * the move to it was refused or reset by its host (its application is
 * gone: that fences it, as a refused connect at a connection's start
 * does), and another standby is left to try. */
static bool target_failed(struct recovery *rec, int err)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    struct backend *t = rec->target >= 0 ? &p->backends[rec->target] : NULL;
    bool gone = err == -ECONNREFUSED || err == -ECONNRESET || err == -ENOTCONN || err == -EPIPE;

    if (!t || pc->phase != PC_SPLICED || rec->attempt + 1 >= (unsigned)p->nbackends)
        return false;
    if (!t->fenced && rec->step == REC_SPLICE && gone) {
        rec->failing = true;
        px_backend_failed(p, t->id, "recovery-target");
        rec->failing = false;
    }
    return t->fenced && standby_for(p, pc) >= 0;
}

/* Recovers 'rec''s connection again, towards the next standby: the plan
 * is made afresh (the logger asks the new target's rs-stated). */
static void rec_again(struct recovery *rec, int err)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    const char *why = rec->why;
    unsigned attempt = rec->attempt + 1;
    uint64_t id = pc->id;

    if (!rec->again) {
        p->st.recovery_retargets++;
        rs_log("recover id=%" PRIu64 " client=%s step=%s target=%s failed (%s): again, to the next standby",
               pc->id, RS_A(pc->client), step_name[rec->step], RS_A(p->backends[rec->target].addr), strerror(-err));
    }
    if (rec->step == REC_PLAN && rec->call.conn) {
        rec->again = true;      /* on_plan starts it again */
        return;
    }
    move_cleanup(p, &rec->mv, true);
    rec_end(rec);
    px_recover(p, pc, why);
    if ((pc = px_pc_find(p, id)) != NULL && pc->rec)   /* (else it ended at once) */
        pc->rec->attempt = attempt;
}

static void rec_fail(struct recovery *rec, int err)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;

    if (rec->resplice_only) {
        /* An operator's move that failed: the connection stays where it was. */
        struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
        p->st.resplice_errors++;
        rs_log("resplice id=%" PRIu64 " client=%s to=%s failed: %s", pc->id, RS_A(pc->client),
               RS_A(rec->mv.target), strerror(-err));
        answer_resplice(rec, err);
        move_cleanup(p, &rec->mv, true);
        px_dp_set_state(p->dp, &kb, RS_FLOW_ACTIVE);
        px_dp_set_state(p->dp, &kc, RS_FLOW_ACTIVE);
        rec_end(rec);
        return;
    }
    if (target_failed(rec, err)) {
        rec_again(rec, err);
        return;
    }
    p->st.unrecoverable++;
    rs_log("unrecoverable id=%" PRIu64 " client=%s why=%s step=%s error=%s us=%" PRIu64, pc->id, RS_A(pc->client),
           rec->why, step_name[rec->step], strerror(-err), rs_now_us() - rec->t0_us);
    px_pc_close(p, pc, "unrecoverable", true);   /* frees rec */
}

static void rec_timeout(struct rs_timer *t)
{
    struct recovery *rec = t->ctx;
    struct proxy *p = rec->pc->p;
    struct rs_flow_key kc = px_key_c(rec->pc);
    struct px_flow_info fc;

    if (rec->step == REC_RESEND && rec->mv.step == MV_NONE) {
        /* The client is taking the resent bytes: end only when it stops. */
        uint64_t idle = RESEND_IDLE_NS + 4000ull * rec->pc->rtt_us, now = rs_loop_now(&p->loop);
        if (!px_dp_get(p->dp, &kc, &fc) && fc.t.pos.has_ack && fc.t.pos.ack_max != rec->last_ack) {
            rec->last_ack = fc.t.pos.ack_max;
            rec->last_progress_ns = now;
        }
        if (now - rec->last_progress_ns < idle) {
            rec_deadline(rec, RESEND_CHECK_NS);
            return;
        }
    }
    rec_fail(rec, -ETIMEDOUT);
}

static void on_alternate(struct recovery *rec, int err)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    uint64_t t_done = rs_now_us(), t_from = rec->t_resend_us ? rec->t_resend_us : rec->t_plan_us;

    if (err) {
        rec_fail(rec, err);
        return;
    }
    if (rec->resplice_only) {
        p->st.resplices++;
        rs_log("resplice id=%" PRIu64 " client=%s to=%s local=%s q=%u r=%u", pc->id, RS_A(pc->client),
               RS_A(pc->backend), RS_A(pc->local), rec->mv.q, rec->mv.r);
        answer_resplice(rec, 0);
        rec_end(rec);
        return;
    }
    px_pc_set_backend(p, pc, rec->target);
    p->st.recovered++;
    rs_log("recovered id=%" PRIu64 " client=%s alternate=%s plan_us=%" PRIu64 " resend_us=%" PRIu64
           " splice_us=%" PRIu64 " total_us=%" PRIu64, pc->id, RS_A(pc->client), RS_A(pc->backend),
           rec->t_plan_us - rec->t0_us, rec->t_resend_us ? rec->t_resend_us - rec->t_plan_us : 0, t_done - t_from,
           t_done - rec->t0_us);
    rec_end(rec);
}

/* Step 4: re-splice to the alternate at Tsp = TL+1 with TL+1's logged
 * request; its response lands at AckTL, so the p bytes the client has are
 * dropped by the client's own TCP as duplicates. */
static void splice_alternate(struct recovery *rec)
{
    struct proxy *p = rec->pc->p;
    const struct rs_ctl_plan *pl = &rec->plan;

    rec->step = REC_SPLICE;
    rec_deadline(rec, p->recovery_ns);
    move_start(rec, p->backends[rec->target].addr, rec->target, rec->data, pl->len, rec->client_fin,
               pl->q + pl->len, pl->ack_tl, RS_FLOW_ACTIVE, true, pl->tsp, true, on_alternate);
}

static void resent(struct recovery *rec)
{
    rec->t_resend_us = rs_now_us();
    rs_log("recover id=%" PRIu64 " client=%s step=resent bytes=%u us=%" PRIu64, rec->pc->id, RS_A(rec->pc->client),
           rec->plan.resend_to - rec->plan.resend_from, rec->t_resend_us - rec->t_plan_us);
    splice_alternate(rec);
}

/* Step 3 done moving: the logger now sends [from, to); the client's ACKs
 * (only) reach it.  Wait for the client to acknowledge 'to'. */
static void on_logger(struct recovery *rec, int err)
{
    struct proxy *p = rec->pc->p;
    struct rs_flow_key kc = px_key_c(rec->pc);
    int e;

    if (err) {
        rec_fail(rec, err);
        return;
    }
    e = px_dp_watch_ack(p->dp, &kc, rec->plan.resend_to, &rec->watch_gen);
    if (e < 0) {
        rec_fail(rec, e);
        return;
    }
    if (e == 1) {
        resent(rec);
        return;
    }
    rec->last_progress_ns = rs_loop_now(&p->loop);
    rec->last_ack = 0;
    rec_deadline(rec, RESEND_CHECK_NS);
}

/* Releases the FIN the guard held from the backend ('fb': its entry) to
 * the client, translated as the backend sent it: the backend's own
 * retransmission would come only after its RTO (200 ms at least).
 * Returns whether it went out.  Only a FIN where the backend's stream ends
 * (nothing it sent after it) is released. */
static bool release_fin(struct proxy *p, struct pconn *pc, const struct px_flow_info *fb)
{
    uint8_t hdr[RS_TCP_HDR_MAX];
    uint32_t len = fb->t.fin_hdr_len;

    if (p->rawfd < 0 || len < RS_TCP_HDR_MIN || len > sizeof(hdr) || !fb->t.pos.fin_seen || !fb->t.pos.has_seq)
        return false;
    memcpy(hdr, fb->t.fin_hdr, len);
    if (!(hdr[13] & RS_TCP_F_FIN) || (hdr[13] & (RS_TCP_F_RST | RS_TCP_F_SYN))
        || rs_splice_load32(hdr + 4) + 1 != fb->t.pos.seq_next || rs_splice_tcp(&fb->cfg.dir, hdr, len)
        || px_send_hdr(p->rawfd, pc->vip, pc->client, hdr, len))
        return false;
    rs_log("fin id=%" PRIu64 " from=%s client=%s backend=%s seq=%u released", pc->id, RS_A(pc->backend),
           RS_A(pc->client), RS_A(pc->backend), rs_splice_load32(hdr + 4));
    return true;
}

/* Lets the FIN of 'pc''s backend ('fb': its entry) through: the one the
 * guard held at once, its retransmissions as they come (unguarded). */
static void pass_fin(struct proxy *p, struct pconn *pc, const struct px_flow_info *fb)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);

    px_dp_activate(p->dp, &kb, &fb->cfg.dir, pc->id, RS_FLOW_ACTIVE, false, &kc);
    if (release_fin(p, pc, fb)) {
        p->st.fins_released++;
        p->st.fins++;
        pc->seen |= RS_FLOW_SEEN_FIN << 4;   /* it passed: the client's FIN ends the splice */
    }
}

static void legit_close(struct recovery *rec)
{
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct px_flow_info fb;

    p->st.legit_closes++;
    rs_log("recover id=%" PRIu64 " client=%s step=legit-close", pc->id, RS_A(pc->client));
    if (rec->relay_end) {
        /* The client has every byte; pass the end on as a relay would. */
        px_dp_set_state(p->dp, &kc, RS_FLOW_WATCH);
        shutdown(pc->cio.fd, SHUT_WR);
        rs_io_start(&p->loop, &pc->cio, pc->cio.fd, EPOLLIN, pc->cio.fn, pc);
        pc->phase = PC_CLOSING;
        rec_end(rec);
        rs_timer_after(&p->loop, &pc->timer, p->linger_ns);
        return;
    }
    /* The application closed after a complete response: let its FIN
     * through (the client's answer, its own FIN, comes within an RTT: its
     * direction opens first). */
    px_dp_set_state(p->dp, &kc, RS_FLOW_ACTIVE);
    if (!px_dp_get(p->dp, &kb, &fb))
        pass_fin(p, pc, &fb);
    rec_end(rec);
    px_pc_check_end(p, pc);     /* the client may have closed meanwhile */
}

/* ---- the logger's word without a RECOVER (CLOSE_ASK, CLOSE_WORD) ------------------- */

/* How long a FIN the guard held waits for the logger's answer to
 * CLOSE_ASK before a RECOVER asks the careful way: it comes within a few
 * hundred us unless the logger is down or starved of CPU.  (A RECOVER
 * needs the logger as well, so waiting longer costs nothing when it is
 * down; 20 ms was overrun by ~1% of closes with two busy loops on the
 * 2-core machine, 50 ms rarely.) */
#define CLOSE_WORD_WAIT_NS (50 * 1000000ull)
/* After the client's own FIN the client waits for nothing: the FIN
 * waits this long for the unasked word (the logger reads its capture
 * every 0.5 ms while segments keep coming) before it asks, which saves a
 * question and its answer per connection.  (A crash there is found by
 * rs-stated meanwhile, ~1-2 ms.) */
#define CLOSE_WORD_UNASKED_NS (2 * 1000000ull)

/* Passes the FIN the guard holds from 'pc''s backend ('fc', 'fb': the two
 * entries) if the logger's word covers it: the FIN comes exactly where the
 * logged response ends, and the client's stream stands where the log's
 * does.  Returns whether it did. */
static bool close_as_told(struct proxy *p, struct pconn *pc, const struct px_flow_info *fc,
                          const struct px_flow_info *fb)
{
    if (!pc->word || !fb->t.pos.fin_seen || !fb->t.pos.has_seq || !fc->t.pos.has_seq
        || fb->t.pos.seq_next - 1 + fb->cfg.dir.seq_delta != pc->word_end[1] || fc->t.pos.seq_next != pc->word_end[0])
        return false;
    pc->fin_wait = false;
    p->st.legit_closes++;
    p->st.close_words++;
    rs_log("close id=%" PRIu64 " client=%s backend=%s meant (the logger's word)", pc->id, RS_A(pc->client),
           RS_A(pc->backend));
    pass_fin(p, pc, fb);
    px_pc_check_end(p, pc);     /* (the timer: the linger's now, or idle) */
    return true;
}

/* Reads both of 'pc''s entries, which must show the FIN the guard holds
 * and both streams' positions (and tell, for a splice made at the SYN,
 * which side closed first).  Returns 0, or -errno when they do not. */
static int flows(struct proxy *p, struct pconn *pc, struct px_flow_info *fc, struct px_flow_info *fb)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    int e = px_dp_get(p->dp, &kc, fc);

    if (e || (e = px_dp_get(p->dp, &kb, fb)))
        return e;
    if (pc->syn_port && fb->t.pos.fin_seen)
        pc->backend_fin_first = px_syn_backend_closed_first(fc, fb);
    return fb->t.pos.fin_seen && fb->t.pos.has_seq && fc->t.pos.has_seq ? 0 : -ENODATA;
}

/* Asks the logger about the FIN held from 'pc''s backend ('fc', 'fb': the
 * two entries), or recovers when it cannot. */
static void close_ask(struct proxy *p, struct pconn *pc, const struct px_flow_info *fc,
                      const struct px_flow_info *fb)
{
    struct rs_ctl_msg m = { .type = RS_CTL_CLOSE_ASK };

    m.u.close = (struct rs_ctl_close){ { pc->client.ip, pc->client.port }, 0, fc->t.pos.seq_next,
                                       fb->t.pos.seq_next - 1 + fb->cfg.dir.seq_delta };
    if (!p->logger_conn.up || rs_ctl_send(&p->logger_conn, &m)) {
        pc->fin_wait = false;
        px_recover(p, pc, "backend-fin");
        return;
    }
    p->st.close_asks++;
    pc->fin_wait = pc->fin_asked = true;
    rs_timer_after(&p->loop, &pc->timer, CLOSE_WORD_WAIT_NS);
}

void px_backend_end(struct proxy *p, struct pconn *pc, bool rst)
{
    struct px_flow_info fc, fb;

    if (pc->phase != PC_SPLICED || pc->rec)
        return;
    /* A RST is never meant. */
    if (rst || !p->logger.port) {
        px_recover(p, pc, rst ? "backend-rst" : "backend-fin");
        return;
    }
    if ((pc->seen & RS_FLOW_SEEN_FIN) && !pc->word) {
        /* (The entries are read when the word comes, or the wait ends.) */
        pc->fin_wait = true;
        rs_timer_after(&p->loop, &pc->timer, CLOSE_WORD_UNASKED_NS);
        return;
    }
    if (flows(p, pc, &fc, &fb)) {
        px_recover(p, pc, "backend-fin");
        return;
    }
    if (!close_as_told(p, pc, &fc, &fb))
        close_ask(p, pc, &fc, &fb);
}

void px_fin_wait_over(struct proxy *p, struct pconn *pc)
{
    struct px_flow_info fc, fb;

    if (!pc->fin_asked) {
        if (!flows(p, pc, &fc, &fb))
            close_ask(p, pc, &fc, &fb);
        else
            px_recover(p, pc, "backend-fin");
        return;
    }
    pc->fin_wait = false;
    p->st.close_words_late++;
    rs_log("close id=%" PRIu64 " client=%s: no word from the logger within %llu ms", pc->id, RS_A(pc->client),
           CLOSE_WORD_WAIT_NS / 1000000);
    px_recover(p, pc, "backend-fin");
}

void px_close_word(struct proxy *p, const struct rs_ctl_close *w)
{
    struct pconn *pc = px_pc_find_client(p, (struct rs_addr){ w->client.ip4, w->client.port });
    struct px_flow_info fc, fb;

    if (!pc || pc->phase != PC_SPLICED || pc->rec)
        return;
    if (w->flags & RS_CTL_CLOSE_MEANT) {
        pc->word = true;
        pc->word_end[0] = w->req_end;
        pc->word_end[1] = w->resp_end;
    }
    if (!pc->fin_wait || (!flows(p, pc, &fc, &fb) && close_as_told(p, pc, &fc, &fb)))
        return;
    /* Not meant, or not at these ends (an unasked word the answer may
     * still correct is waited past). */
    if (w->flags & RS_CTL_CLOSE_ANSWER) {
        p->st.close_refused++;
        rs_log("close id=%" PRIu64 " client=%s: %s", pc->id, RS_A(pc->client),
               w->flags & RS_CTL_CLOSE_MEANT ? "the client's stream moved since the question"
                                             : "not meant, as far as the log tells");
        px_recover(p, pc, "backend-fin");
    }
}

static void on_plan(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct recovery *rec = call->ctx;
    struct pconn *pc = rec->pc;
    struct proxy *p = pc->p;
    const struct rs_ctl_plan *pl = &rec->plan;
    struct rs_flow_key kc = px_key_c(pc);
    struct px_flow_info fc = { 0 };
    struct rs_ctl_msg m = { .type = RS_CTL_RESEND };
    uint32_t q;
    int n;

    if (rec->again) {
        rec_again(rec, err ? err : -EHOSTDOWN);
        return;
    }
    if (!err && reply->type != RS_CTL_PLAN)
        err = reply->u.ack.status ? reply->u.ack.status : -EPROTO;
    if (err) {
        rec_fail(rec, err);
        return;
    }
    rec->plan = reply->u.plan;
    rec->plan.data = NULL;
    if (pl->len && !(rec->data = malloc(pl->len))) {
        rec_fail(rec, -ENOMEM);
        return;
    }
    if (pl->len)
        memcpy(rec->data, reply->u.plan.data, pl->len);
    rec->t_plan_us = rs_now_us();
    rs_log("recover id=%" PRIu64 " client=%s step=plan status=%d tl=%s%u tsp=%u tr=%u replayed=%u ack_tl=%u p=%u "
           "ackcl=%u resend=[%u,%u) q=%u req_bytes=%u us=%" PRIu64, pc->id, RS_A(pc->client), pl->status,
           pl->flags & RS_CTL_PLAN_HAS_TL ? "" : "none/", pl->tl, pl->tsp, pl->tr, pl->replayed, pl->ack_tl, pl->p,
           pl->ackcl, pl->resend_from, pl->resend_to, pl->q, pl->len, rec->t_plan_us - rec->t0_us);
    if (pl->status == -ESHUTDOWN) {
        legit_close(rec);
        return;
    }
    if (pl->status || rec->target < 0) {
        rec_fail(rec, pl->status ? pl->status : -EHOSTDOWN);
        return;
    }
    if (rec->relay_end && (err = px_pc_detach(p, pc)) != 0) {
        rec_fail(rec, err);
        return;
    }
    /* Where the client's own bytes stand: after the last byte it sent. */
    q = !px_dp_get(p->dp, &kc, &fc) && fc.t.pos.has_seq ? fc.t.pos.seq_next : pc->c.rcv_nxt;
    if (fc.t.pos.fin_seen || pc->client_eof) {
        /* The client closed its side (request, then FIN): the alternate
         * must get that FIN right after TL+1's request, or a client reading
         * to the end would wait forever.  Only when nothing else is missing. */
        if (q != pl->q + pl->len + 1) {
            rec_fail(rec, -EPIPE);
            return;
        }
        rec->client_fin = true;
    }
    if (pl->resend_from == pl->resend_to) {
        splice_alternate(rec);
        return;
    }
    /* Step 3: resend from the log what the client has not acknowledged. */
    m.u.resend = (struct rs_ctl_resend){ pl->client, pl->resend_from, pl->resend_to };
    m.sender = PX_SENDER_LOGGER + 0x100;
    m.seq = ++p->ctl_seq;
    n = rs_ctl_encode(&p->key, &m, rec->frame, sizeof(rec->frame));
    if (n < 0) {
        rec_fail(rec, n);
        return;
    }
    rec->step = REC_RESEND;
    rec_deadline(rec, p->recovery_ns);
    /* The logger's socket acknowledges the client's bytes only up to where
     * the alternate takes over (q + len), never up to where the client
     * stands: bytes the client sent during the hold that the plan lacks
     * would count as delivered, the client would never send them again,
     * and the alternate would wait for them forever. */
    move_start(rec, p->logger_resend, -1, rec->frame, (size_t)n, false, pl->q + pl->len, pl->resend_from,
               RS_FLOW_ACKONLY, false, 0, true, on_logger);
}

static struct recovery *rec_new(struct proxy *p, struct pconn *pc, const char *why)
{
    struct recovery *rec = calloc(1, sizeof(*rec));

    if (!rec)
        return NULL;
    rec->pc = pc;
    rec->why = why;
    rec->t0_us = rs_now_us();
    rec->mv.io.fd = -1;
    rs_timer_init(&rec->timer, rec_timeout, rec);
    pc->rec = rec;
    p->recovering++;
    return rec;
}

void px_recover(struct proxy *p, struct pconn *pc, const char *why)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct rs_ctl_msg req = { .type = RS_CTL_RECOVER };
    struct recovery *rec;
    uint64_t budget_ms = p->recovery_ns / 1000000;
    bool spliced = pc->phase == PC_SPLICED;
    int e;

    if (pc->rec || (pc->phase != PC_SPLICED && pc->phase != PC_RELAY))
        return;
    if (pc->fin_wait) {
        pc->fin_wait = false;
        rs_timer_stop(&p->loop, &pc->timer);
    }
    if (!(rec = rec_new(p, pc, why))) {
        px_pc_close(p, pc, "out-of-memory", true);
        return;
    }
    rec->backend_id = pc->backend_idx >= 0 ? p->backends[pc->backend_idx].id : 1;
    px_pc_open_abandon(p, pc);      /* spliced at connect, the request still going out */
    /* 1. Un-splice: nothing from the failed backend reaches the client (no
     * FIN, no RST), nothing from the client reaches the proxy's stack. */
    if (pc->phase == PC_SPLICED) {
        px_dp_set_state(p->dp, &kc, RS_FLOW_HOLD);
        px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD);
    } else {
        /* Relay phase: the proxy knows exactly what it forwarded.  A backend
         * that ended its side by itself (not fenced) may have meant it:
         * keep the client socket until the logger says. */
        rs_io_stop(&pc->cio);
        rs_io_stop(&pc->bio);
        rec->relay_end = pc->backend_eof && pc->backend_idx >= 0 && !p->backends[pc->backend_idx].fenced;
        if (rec->relay_end) {
            px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD);
            px_dp_set_state(p->dp, &kc, RS_FLOW_FROZEN);
        } else if ((e = px_pc_detach(p, pc)) != 0) {
            rec_fail(rec, e);
            return;
        }
    }
    rs_log("recover id=%" PRIu64 " client=%s backend=%s step=hold why=%s", pc->id, RS_A(pc->client),
           RS_A(pc->backend), why);
    if (!p->logger.port) {
        rec_fail(rec, -ENOTSUP);
        return;
    }
    if ((rec->target = standby_for(p, pc)) < 0 && !px_recover_ended(why)) {
        rec_fail(rec, -EHOSTDOWN);   /* no standby left to take the connection */
        return;
    }
    /* 2. Plan (the logger also brings the alternate's state up to TR and
     * replays [TR, TL]); it answers within the budget we give it.  With no
     * standby left (a connection already moved once) a backend's FIN may
     * still be the application's own close after a "Connection: close"
     * response: only the logger's verdict is asked for then, or every
     * such connection would end in a RST. */
    {
        struct rs_addr to = rec->target >= 0 ? p->backends[rec->target].addr : pc->backend;
        req.u.recover = (struct rs_ctl_recover){ { pc->client.ip, pc->client.port },
                                                 (uint16_t)(budget_ms > 65535 ? 65535 : budget_ms), rec->backend_id,
                                                 { to.ip, to.port }, false, 0, 0, false, 0, false, 0,
                                                 rec->target < 0 };
    }
    {
        struct px_flow_info fc, fb;
        if (!px_dp_get(p->dp, &kc, &fc) && fc.t.pos.has_ack && fc.t.pos.has_seq) {
            req.u.recover.has_seen = true;
            req.u.recover.client_ack = fc.t.pos.ack_max;
            req.u.recover.client_seq_end = fc.t.pos.seq_next;
        }
        /* Spliced: what the backend acknowledged of the client's bytes,
         * in the client's numbering (relayed, the proxy's socket did). */
        if (spliced && !px_dp_get(p->dp, &kb, &fb) && fb.t.pos.has_ack) {
            req.u.recover.has_server_ack = true;
            req.u.recover.server_ack = fb.t.pos.ack_max + fb.cfg.dir.ack_delta;
        }
        /* Spliced: how far the backend's bytes went to the client (a FIN
         * the guard held did not), in the client's numbering. */
        if (spliced && !px_dp_get(p->dp, &kb, &fb) && fb.t.pos.has_seq && fb.cfg.state != RS_FLOW_WATCH) {
            req.u.recover.has_server_end = true;
            req.u.recover.server_end = fb.t.pos.seq_next - (fb.t.pos.fin_seen ? 1 : 0) + fb.cfg.dir.seq_delta;
        }
    }
    rec->step = REC_PLAN;
    e = rs_ctl_call(&p->logger_conn, &req, RS_CTL_PLAN, &rec->call, p->recovery_ns, on_plan, rec);
    if (e)
        rec_fail(rec, e);
}

int px_resplice(struct proxy *p, struct pconn *pc, struct rs_addr target, uint32_t q, uint32_t r,
                uint64_t ctl_conn, uint64_t ctl_seq)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct px_flow_info fc, fb;
    struct recovery *rec;
    int e;

    if (pc->rec || pc->phase != PC_SPLICED)
        return -EBUSY;
    if ((e = px_dp_get(p->dp, &kc, &fc)) || (e = px_dp_get(p->dp, &kb, &fb)))
        return e;
    if (!q && !r) {
        q = fc.t.pos.seq_next;
        r = fb.t.pos.seq_next + fb.cfg.dir.seq_delta;
    }
    if (!(rec = rec_new(p, pc, "resplice")))
        return -ENOMEM;
    rec->resplice_only = true;
    rec->ctl_conn = ctl_conn;
    rec->ctl_seq = ctl_seq;
    rec->step = REC_SPLICE;
    px_dp_set_state(p->dp, &kc, RS_FLOW_HOLD);
    px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD);
    rec_deadline(rec, p->recovery_ns);
    move_start(rec, target, -1, NULL, 0, false, q, r, RS_FLOW_ACTIVE, false, 0,
               p->logger.port != 0, on_alternate);
    return 0;
}

bool px_recovery_event(struct proxy *p, struct pconn *pc, const struct rs_flow_event *ev)
{
    struct recovery *rec = pc->rec;
    struct rs_flow_key kc = px_key_c(pc);

    (void)p;
    if (ev->flags & RS_FLOW_ACKED) {
        if (rec->mv.step == MV_PRE && ev->gen == rec->mv.ack_gen && !memcmp(&ev->key, &rec->mv.kn, sizeof(kc)))
            move_acked(rec);
        else if (rec->step == REC_RESEND && rec->mv.step == MV_NONE && ev->gen == rec->watch_gen
                 && !memcmp(&ev->key, &kc, sizeof(kc)))
            resent(rec);
        return true;
    }
    if ((ev->flags & RS_FLOW_GUARDED) && rec->mv.step != MV_NONE && !memcmp(&ev->key, &rec->mv.kn, sizeof(kc))) {
        /* The server we are moving to ended the connection under us. */
        rs_log("recover id=%" PRIu64 " client=%s: %s from the target %s", pc->id, RS_A(pc->client),
               ev->flags & RS_FLOW_SEEN_RST ? "rst" : "fin", RS_A(rec->mv.target));
        move_fail(rec, -ECONNRESET);
        return true;
    }
    return (ev->flags & RS_FLOW_GUARDED) != 0;   /* held FIN/RST of servers being left: nothing to do */
}

/* ---- fencing ------------------------------------------------------------------------- */

/* Tells every backend's rs-stated that backend 'b' is fenced or readmitted:
 * its own stops (or restarts) serving, the others refuse (or take) its states. */
static void announce_fence(struct proxy *p, int b, bool fenced)
{
    struct rs_ctl_msg m = { .type = RS_CTL_FENCE };

    px_pair_fence(p, b);
    if (!p->stated_port)
        return;
    for (int i = 0; i < p->nbackends; i++) {
        m.u.fence = (struct rs_ctl_fence){ p->backends[b].id, p->backends[b].addr.ip, fenced };
        rs_ctl_send(&p->backends[i].stated, &m);
    }
}

void px_backend_failed(struct proxy *p, uint32_t id, const char *why)
{
    int idx = px_backend_index(p, id);
    uint64_t *ids = NULL;
    size_t n = 0, cap = 0;

    p->st.failures++;
    if (idx < 0) {
        rs_log("failure backend_id=%u why=%s: not one of ours", id, why);
        return;
    }
    if (!p->backends[idx].fenced && !px_link_up(p)) {
        /* Everything is unreachable from a proxy cut off: that says nothing
         * of the backend, and a fence would reach it when the link returns. */
        rs_log("not fencing backend_id=%u (why=%s): our interface %s is down", id, why, p->ifname);
        return;
    }
    if (!p->backends[idx].fenced)
        rs_log("failure backend_id=%u backend=%s why=%s conns=%u: fenced", id, RS_A(p->backends[idx].addr), why,
               px_pc_count(p, idx));
    p->backends[idx].fenced = true;
    px_syn_sync(p);     /* new connections' SYNs go elsewhere at once */
    /* 1. Fence first, in one pass: from now on nothing this backend sends
     * reaches any client, before any connection moves. */
    for (int b = 0; b < RS_PROXY_BUCKETS; b++) {
        for (struct pconn *pc = p->buckets[b], *next; pc; pc = next) {
            struct rs_flow_key kb = px_key_b(pc), kc = px_key_c(pc);
            int e = 0;

            next = pc->next;    /* a fence that fails frees pc */

            if (pc->rec && pc->rec->target == idx && !pc->rec->resplice_only && pc->backend_idx != idx
                && !pc->rec->failing) {
                /* Being recovered to it: again, to the next standby (below). */
                e = 0;
                goto keep;
            }
            if (pc->backend_idx != idx || pc->phase == PC_CLOSING)
                continue;
            if (pc->phase == PC_SPLICED && !pc->rec) {
                if (!(e = px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD)))
                    e = px_dp_set_state(p->dp, &kc, RS_FLOW_HOLD);
            } else if (pc->phase == PC_RELAY) {
                if (p->dp)
                    e = px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD);
                rs_io_stop(&pc->bio);
            }
            if (e) {
                /* Not fenced means not safe to keep: end it (its entries go,
                 * so nothing of the backend can reach the client). */
                rs_log("fence id=%" PRIu64 " client=%s failed: %s", pc->id, RS_A(pc->client), strerror(-e));
                p->st.unrecoverable++;
                px_pc_close(p, pc, "fence-failed", true);
                continue;
            }
        keep:
            if (n == cap) {
                uint64_t *nid = realloc(ids, (cap = cap ? cap * 2 : 64) * sizeof(*ids));
                if (!nid)
                    break;
                ids = nid;
            }
            ids[n++] = pc->id;
        }
    }
    announce_fence(p, idx, true);
    /* 2. Then move them, all at once: each recovery runs on its own. */
    for (size_t i = 0; i < n; i++) {
        struct pconn *pc = px_pc_find(p, ids[i]);
        if (pc && pc->rec && pc->rec->target == idx && pc->backend_idx != idx) {
            if (standby_for(p, pc) >= 0 && pc->phase == PC_SPLICED && !pc->rec->resplice_only)
                rec_again(pc->rec, -EHOSTDOWN);
            continue;   /* else it fails by itself, and ends cleanly */
        }
        if (!pc || pc->backend_idx != idx)
            continue;
        if (pc->phase == PC_MAP || pc->phase == PC_CONNECTING)
            px_pc_redispatch(p, pc, why);
        else if (pc->phase == PC_SPLICED || pc->phase == PC_RELAY)
            px_recover(p, pc, why);
    }
    free(ids);
    /* 3. The survivor serves; a spare becomes its alternate. */
    px_roles(p);
}

/* Where a connection of a failed backend goes: the alternate; or, when it
 * is already there (its first recovery came from its own signals, before
 * any FAILURE changed the roles), the next live standby after it, down the
 * chain its states went (a spare). */
static int standby_for(struct proxy *p, const struct pconn *pc)
{
    int best = -1;

    if (p->alternate >= 0 && !p->backends[p->alternate].fenced && pc->backend_idx != p->alternate)
        return p->alternate;
    for (int i = 0; pc->backend_idx >= 0 && i < p->nbackends; i++) {
        const struct backend *b = &p->backends[i];

        if (b->configured != ROLE_PRIMARY && !b->fenced && b->rank > p->backends[pc->backend_idx].rank
            && (best < 0 || b->rank < p->backends[best].rank))
            best = i;
    }
    return best;
}

/* The backends' indexes in rank order (the chain's). */
static void rank_order(const struct proxy *p, int *order)
{
    for (int i = 0; i < p->nbackends; i++) {
        int j = i;

        for (; j > 0 && p->backends[order[j - 1]].rank > p->backends[i].rank; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
}

void px_roles(struct proxy *p)
{
    int primaries = 0, serve = -1, alt = -1, order[RS_PROXY_MAX_BACKENDS];

    rank_order(p, order);
    for (int i = 0; i < p->nbackends; i++)
        primaries += p->backends[i].configured == ROLE_PRIMARY && !p->backends[i].fenced;
    for (int k = 0; k < p->nbackends; k++) {
        int i = order[k];

        if (p->backends[i].configured == ROLE_PRIMARY || p->backends[i].fenced)
            continue;
        if (!primaries && serve < 0)
            serve = i;
        else if (alt < 0)
            alt = i;
    }
    for (int i = 0; i < p->nbackends; i++) {
        struct backend *b = &p->backends[i];
        enum backend_role r = b->configured == ROLE_PRIMARY || i == serve ? ROLE_PRIMARY
                              : i == alt                                  ? ROLE_ALTERNATE
                              : b->fenced                                 ? b->configured
                                                                          : ROLE_SPARE;
        if (r != b->role)
            rs_log("role backend_id=%u backend=%s %s -> %s", b->id, RS_A(b->addr),
                   b->role == ROLE_PRIMARY ? "primary" : b->role == ROLE_ALTERNATE ? "alternate" : "spare",
                   r == ROLE_PRIMARY ? "primary" : r == ROLE_ALTERNATE ? "alternate" : "spare");
        b->role = r;
    }
    p->alternate = alt;
    px_syn_sync(p);
}

void px_backend_rejoin(struct proxy *p, int b)
{
    struct backend *be = &p->backends[b];
    uint32_t last = 0;

    for (int i = 0; i < p->nbackends; i++)
        if (p->backends[i].rank > last)
            last = p->backends[i].rank;
    be->fenced = false;
    be->rank = last + 1;
    if (be->configured == ROLE_PRIMARY)
        be->configured = ROLE_SPARE;    /* its state is the chain's now, not its own */
    rs_log("readmit backend_id=%u backend=%s rank=%u", be->id, RS_A(be->addr), be->rank);
    px_roles(p);
}

int px_backend_readmit(struct proxy *p, uint32_t id)
{
    int idx = px_backend_index(p, id);

    if (idx < 0)
        return -ENOENT;
    if (!p->backends[idx].fenced)
        return 0;       /* nothing to take back (and its place in the chain stays) */
    px_backend_rejoin(p, idx);
    announce_fence(p, idx, false);
    return 0;
}
