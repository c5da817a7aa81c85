/* rs-logger's liveness path: a thread of its own, real-time priority when
 * the system allows it, with its own event loop, so that heartbeats are
 * read and judged however busy the capture and the planner keep the main
 * thread (a starved reader must never declare a healthy backend dead).
 *
 * Backends send HEARTBEAT and FAILURE as UDP datagrams to the control
 * port's number (one authenticated frame each).  Before a backend is
 * declared failed for silence, the socket is drained once more: only a
 * heartbeat that really did not arrive counts.  FAILUREs go to the proxy on
 * the thread's own control connection. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "logger.h"

#define REPORTS_MAX 256
#define LIVE_PRIO 20     /* SCHED_FIFO priority: above any time-shared task, below kernel threads */
#define GAP_WINDOW_NS (5000ull * 1000000u)   /* how long a long gap keeps the bound stretched */
#define STRETCH_MAX 10   /* the stretched bound stays below this many --dead-after */
/* A backend just (re)started has no gap history yet, and its first second
 * is its noisiest (every daemon of a stack starting at once, page faults,
 * sanitizers): silence must last this many --dead-after then (a 125 ms gap
 * at a stack's start-up under ASan was a false failover in the fault
 * campaign).  A process crash is reported at once whatever the bound. */
#define WARMUP_NS   (1000ull * 1000000u)
#define WARMUP_MIN  3

struct lg_live {
    struct logger *lg;
    pthread_t th;
    bool started;
    struct rs_loop loop;
    struct rs_io udp, wake;
    struct rs_timer tick;
    struct rs_ctlconn px;
    struct rs_ctl_replay replay;
    uint64_t seq;
    uint64_t tick_ns;
    /* The longest heartbeat gap of any backend in this and the last window:
     * a loaded host delays every heartbeat, so silence must exceed twice
     * what was recently normal before it means anything. */
    uint64_t gap_cur_ns, gap_prev_ns, window_end_ns;
    pthread_mutex_t mu;           /* guards the fields below */
    struct rs_ctl_msg reports[REPORTS_MAX];
    unsigned n_reports;
    bool stop;
};

static void forward_failure(struct lg_live *lv, uint32_t id, uint16_t reason)
{
    struct logger *lg = lv->lg;
    struct rs_ctl_msg m = { .type = RS_CTL_FAILURE };

    if (!lg->has_proxy) {
        rs_log("failure backend=%u not forwarded: no --proxy", id);
        return;
    }
    m.u.failure = (struct rs_ctl_failure){ id, reason };
    if (!rs_ctl_send(&lv->px, &m))
        __atomic_add_fetch(&lg->s.failures_forwarded, 1, __ATOMIC_RELAXED);
}

static struct lg_backend *backend(struct logger *lg, uint32_t id)
{
    for (int i = 0; i < lg->nbackends; i++)
        if (lg->backends[i].id == id)
            return &lg->backends[i];
    return NULL;
}

static void on_heartbeat(struct lg_live *lv, const struct rs_ctl_heartbeat *h)
{
    struct logger *lg = lv->lg;
    struct lg_backend *b;
    uint64_t now = rs_mono_ns();

    __atomic_add_fetch(&lg->s.heartbeats, 1, __ATOMIC_RELAXED);
    if (h->role != RS_CTL_ROLE_BACKEND)
        return;
    if (!(b = backend(lg, h->backend_id))) {
        if (__atomic_fetch_add(&lg->s.hb_unknown, 1, __ATOMIC_RELAXED) % 1000 == 0)
            rs_log("heartbeat from unmonitored backend=%u", h->backend_id);
        return;
    }
    if (!b->seen || b->failed)
        b->first_ns = now;
    if (!b->seen)
        rs_log("backend=%u first heartbeat", b->id);
    else if (now - b->last_ns > b->max_gap_ns)
        b->max_gap_ns = now - b->last_ns;
    if (b->seen && !b->failed && now - b->last_ns > lv->gap_cur_ns)
        lv->gap_cur_ns = now - b->last_ns;
    if (b->seen && now - b->last_ns > lg->dead_after_ns / 2)
        rs_log("heartbeat-gap backend=%u us=%" PRIu64, b->id, (now - b->last_ns) / 1000);
    if (b->failed)
        rs_log("backend=%u heartbeats resumed (the proxy keeps it fenced until it is readmitted)", b->id);
    else if (b->uncorroborated)
        rs_log("backend=%u heartbeats resumed after %" PRIu64 " us of silence", b->id, (now - b->last_ns) / 1000);
    b->uncorroborated = 0;
    b->seen = true;
    b->failed = false;
    b->last_ns = now;
}

static void on_failure(struct lg_live *lv, const struct rs_ctl_failure *f)
{
    struct logger *lg = lv->lg;
    struct lg_backend *b = backend(lg, f->backend_id);

    if (b && b->failed) {
        rs_log("failure backend=%u reason=%u already declared", f->backend_id, f->reason);
        return;
    }
    if (b)
        b->failed = true;
    __atomic_add_fetch(&lg->s.failures_declared, 1, __ATOMIC_RELAXED);
    rs_log("backend-failed backend=%u reason=%u source=report", f->backend_id, f->reason);
    forward_failure(lv, f->backend_id, f->reason);
}

static void on_frame(struct lg_live *lv, const struct rs_ctl_msg *m)
{
    if (m->type == RS_CTL_HEARTBEAT)
        on_heartbeat(lv, &m->u.heartbeat);
    else if (m->type == RS_CTL_FAILURE)
        on_failure(lv, &m->u.failure);
}

/* Reads every datagram waiting. */
static void drain_udp(struct lg_live *lv)
{
    struct logger *lg = lv->lg;
    uint8_t buf[512];

    for (;;) {
        ssize_t n = recv(lv->udp.fd, buf, sizeof(buf), MSG_DONTWAIT);
        struct rs_ctl_msg m;
        int used;

        if (n < 0)
            return;
        used = rs_ctl_decode(&lg->key, &lv->replay, buf, (size_t)n, &m);
        if (used == (int)n && !rs_ctl_role_may_send(rs_ctl_sender_role(m.sender), m.type))
            used = -EPERM;      /* a FAILURE only from a backend, ... */
        if (used == (int)n) {
            on_frame(lv, &m);
        } else if (used != -EALREADY) {   /* a reordered datagram is no news */
            if (__atomic_fetch_add(&lg->s.ctl_rejected, 1, __ATOMIC_RELAXED) % 1000 == 0)
                rs_log("liveness: rejected datagram (%zd bytes): %s", n, used < 0 ? strerror(-used) : "trailing bytes");
        }
    }
}

static void on_udp(struct rs_io *io, uint32_t events)
{
    (void)events;
    drain_udp(io->ctx);
}

static void on_wake(struct rs_io *io, uint32_t events)
{
    struct lg_live *lv = io->ctx;
    struct rs_ctl_msg batch[REPORTS_MAX];
    unsigned n;
    uint64_t v;
    bool stop;

    (void)events;
    if (read(io->fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return;
    pthread_mutex_lock(&lv->mu);
    n = lv->n_reports;
    memcpy(batch, lv->reports, n * sizeof(batch[0]));
    lv->n_reports = 0;
    stop = lv->stop;
    pthread_mutex_unlock(&lv->mu);
    for (unsigned i = 0; i < n; i++)
        on_frame(lv, &batch[i]);
    if (stop)
        rs_loop_stop(&lv->loop);
}

/* Silence proves a backend dead only when it lasts beyond 'bound' (the
 * configured --dead-after, stretched to twice the longest gap seen lately)
 * and the path it would use is shown to work: another backend was heard
 * after this one's deadline.  When every
 * backend falls silent at once, the logger's host or the network is what
 * stalls (a busy machine defers packet processing), not the backends; and a
 * lone backend has no witness at all: hung or cut-off lone backends are
 * found by the stall detector (a response owed and not sent) instead. */
static bool corroborated(const struct logger *lg, const struct lg_backend *b, uint64_t bound)
{
    uint64_t deadline = b->last_ns + bound;

    for (int i = 0; i < lg->nbackends; i++) {
        const struct lg_backend *o = &lg->backends[i];
        if (o != b && o->seen && !o->failed && o->last_ns > deadline)
            return true;
    }
    return false;
}

static void on_tick(struct rs_timer *t)
{
    struct lg_live *lv = t->ctx;
    struct logger *lg = lv->lg;
    uint64_t now;

    uint64_t bound, recent;

    /* Judge only after reading what has arrived. */
    drain_udp(lv);
    now = rs_mono_ns();
    if (now >= lv->window_end_ns) {
        lv->gap_prev_ns = lv->gap_cur_ns;
        lv->gap_cur_ns = 0;
        lv->window_end_ns = now + GAP_WINDOW_NS;
    }
    recent = lv->gap_cur_ns > lv->gap_prev_ns ? lv->gap_cur_ns : lv->gap_prev_ns;
    bound = 2 * recent > lg->dead_after_ns ? 2 * recent : lg->dead_after_ns;
    if (bound > STRETCH_MAX * lg->dead_after_ns)
        bound = STRETCH_MAX * lg->dead_after_ns;
    for (int i = 0; i < lg->nbackends; i++) {
        struct lg_backend *b = &lg->backends[i];
        uint64_t bb = bound;

        if (now - b->first_ns < WARMUP_NS && bb < WARMUP_MIN * lg->dead_after_ns)
            bb = WARMUP_MIN * lg->dead_after_ns;
        if (!b->seen || b->failed || now - b->last_ns <= bb)
            continue;
        if (!corroborated(lg, b, bb)) {
            if (!b->uncorroborated++)
                rs_log("backend=%u silent for %" PRIu64 " us but no other backend was heard since: not declared",
                       b->id, (now - b->last_ns) / 1000);
            continue;
        }
        b->failed = true;
        __atomic_add_fetch(&lg->s.failures_declared, 1, __ATOMIC_RELAXED);
        rs_log("backend-failed backend=%u reason=timeout silent_us=%" PRIu64 " bound_us=%" PRIu64, b->id,
               (now - b->last_ns) / 1000, bb / 1000);
        forward_failure(lv, b->id, RS_CTL_FAIL_TIMEOUT);
    }
    rs_timer_after(&lv->loop, t, lv->tick_ns);
}

static void on_proxy_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    if (m->type == RS_CTL_ACK && m->u.ack.status)
        rs_log("liveness: proxy answered %s with %s", rs_ctl_type_str(m->u.ack.echo_type),
               strerror(-m->u.ack.status));
    (void)c;
}

static void *live_main(void *arg)
{
    struct lg_live *lv = arg;
    struct sched_param sp = { .sched_priority = LIVE_PRIO };
    int e = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);

    if (e)
        rs_log("liveness: real-time priority refused (%s): heartbeats compete with the capture for the CPU",
               strerror(e));
    rs_loop_run(&lv->loop);
    return NULL;
}

int lg_live_start(struct logger *lg)
{
    struct lg_live *lv = calloc(1, sizeof(*lv));
    struct sockaddr_in sin = rs_addr_sin(lg->listen);
    int fd, wfd, e;

    if (!lv)
        return -ENOMEM;
    lv->lg = lg;
    lv->seq = rs_now_us();
    /* Ticks fine enough that detection costs at most a sixth of dead-after more. */
    lv->tick_ns = lg->dead_after_ns / 6 ? lg->dead_after_ns / 6 : 1000000;
    pthread_mutex_init(&lv->mu, NULL);
    rs_ctl_replay_init(&lv->replay);
    if ((e = rs_loop_init(&lv->loop)))
        goto fail;
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin))) {
        e = -errno;
        if (fd >= 0)
            close(fd);
        rs_log("liveness: cannot bind udp %s: %s", RS_A(lg->listen), strerror(-e));
        goto fail;
    }
    wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wfd < 0 || (e = rs_io_start(&lv->loop, &lv->udp, fd, EPOLLIN, on_udp, lv))
        || (e = rs_io_start(&lv->loop, &lv->wake, wfd, EPOLLIN, on_wake, lv))) {
        e = e ? e : -errno;
        goto fail;
    }
    if (lg->has_proxy)
        rs_ctlconn_peer(&lv->px, &lv->loop, "proxy(liveness)", lg->proxy, &lg->key, &lv->seq,
                        LG_SENDER_PROXY_LIVE, 1u << 20, on_proxy_msg, NULL, lv);
    rs_timer_init(&lv->tick, on_tick, lv);
    rs_timer_after(&lv->loop, &lv->tick, lv->tick_ns);
    if ((e = -pthread_create(&lv->th, NULL, live_main, lv)))
        goto fail;
    lv->started = true;
    lg->live = lv;
    return 0;
fail:
    free(lv);
    return e;
}

void lg_live_report(struct logger *lg, const struct rs_ctl_msg *m)
{
    struct lg_live *lv = lg->live;
    uint64_t one = 1;

    if (!lv)
        return;
    pthread_mutex_lock(&lv->mu);
    if (lv->n_reports < REPORTS_MAX)
        lv->reports[lv->n_reports++] = *m;
    pthread_mutex_unlock(&lv->mu);
    if (write(lv->wake.fd, &one, sizeof(one)) < 0)
        rs_log("liveness: wake-up failed: %s", strerror(errno));
}

void lg_live_stop(struct logger *lg)
{
    struct lg_live *lv = lg->live;
    uint64_t one = 1;

    if (!lv)
        return;
    pthread_mutex_lock(&lv->mu);
    lv->stop = true;
    pthread_mutex_unlock(&lv->mu);
    if (write(lv->wake.fd, &one, sizeof(one)) < 0 || pthread_join(lv->th, NULL))
        rs_log("liveness: cannot stop the thread");
    rs_ctlconn_close(&lv->px);
    close(lv->udp.fd);
    close(lv->wake.fd);
    rs_loop_fini(&lv->loop);
    lg->live = NULL;
    free(lv);
}
