/* The event loop (see loop.h): epoll for fds, a binary min-heap of timers
 * woken through epoll_pwait2's nanosecond timeout, signals on a signalfd. */
#include "loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"

/* ---- Timer heap ------------------------------------------------------------ */

static void heap_set__(struct rs_loop *l, uint32_t i, struct rs_timer *t)
{
    l->heap[i] = t;
    t->slot = i + 1;
}

static void heap_up__(struct rs_loop *l, uint32_t i)
{
    struct rs_timer *t = l->heap[i];

    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (l->heap[parent]->when_ns <= t->when_ns)
            break;
        heap_set__(l, i, l->heap[parent]);
        i = parent;
    }
    heap_set__(l, i, t);
}

static void heap_down__(struct rs_loop *l, uint32_t i)
{
    struct rs_timer *t = l->heap[i];

    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= l->n_timers)
            break;
        if (c + 1 < l->n_timers && l->heap[c + 1]->when_ns < l->heap[c]->when_ns)
            c++;
        if (t->when_ns <= l->heap[c]->when_ns)
            break;
        heap_set__(l, i, l->heap[c]);
        i = c;
    }
    heap_set__(l, i, t);
}

void rs_timer_init(struct rs_timer *t, rs_timer_fn fn, void *ctx)
{
    t->when_ns = 0;
    t->slot = 0;
    t->fn = fn;
    t->ctx = ctx;
}

void rs_timer_stop(struct rs_loop *l, struct rs_timer *t)
{
    uint32_t i;

    if (!t->slot)
        return;
    i = t->slot - 1;
    t->slot = 0;
    if (i == --l->n_timers)
        return;
    struct rs_timer *moved = l->heap[l->n_timers];
    heap_set__(l, i, moved);
    heap_up__(l, i);
    heap_down__(l, moved->slot - 1);
}

void rs_timer_at(struct rs_loop *l, struct rs_timer *t, uint64_t when_ns)
{
    rs_timer_stop(l, t);
    if (l->n_timers == l->cap_timers) {
        uint32_t cap = l->cap_timers ? l->cap_timers * 2 : 64;
        struct rs_timer **h = realloc(l->heap, cap * sizeof(*h));
        if (!h) {
            /* Cannot happen in practice; firing late beats never firing. */
            rs_log("loop: out of memory for a timer: firing it now");
            t->fn(t);
            return;
        }
        l->heap = h;
        l->cap_timers = cap;
    }
    t->when_ns = when_ns;
    heap_set__(l, l->n_timers++, t);
    heap_up__(l, l->n_timers - 1);
}

void rs_timer_after(struct rs_loop *l, struct rs_timer *t, uint64_t delay_ns)
{
    /* From the clock, not the wake-up: a long batch must not shorten a deadline. */
    rs_timer_at(l, t, rs_mono_ns() + delay_ns);
}

/* Fires every timer that is due at 'l->now_ns'. */
static void run_timers__(struct rs_loop *l)
{
    while (l->n_timers && l->heap[0]->when_ns <= l->now_ns && !l->stop) {
        struct rs_timer *t = l->heap[0];
        rs_timer_stop(l, t);
        t->fn(t);
    }
}

/* ---- File descriptors ------------------------------------------------------ */

int rs_io_start(struct rs_loop *l, struct rs_io *io, int fd, uint32_t events, rs_io_fn fn, void *ctx)
{
    struct epoll_event ev = { .events = events, .data.ptr = io };

    io->loop = l;
    io->fd = fd;
    io->events = events;
    io->fn = fn;
    io->ctx = ctx;
    io->on = epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) == 0;
    return io->on ? 0 : -errno;
}

int rs_io_set(struct rs_io *io, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = io };

    if (!rs_io_active(io) || io->events == events)
        return 0;
    if (epoll_ctl(io->loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0)
        return -errno;
    io->events = events;
    return 0;
}

void rs_io_forget(struct rs_io *io)
{
    struct rs_loop *l = io->loop;

    if (!rs_io_active(io))
        return;
    /* Events of this batch not dispatched yet must not reach a freed owner. */
    for (int i = l->cur_ev + 1; i < l->n_evs; i++)
        if (l->evs[i].data.ptr == io)
            l->evs[i].data.ptr = NULL;
    io->on = false;
}

void rs_io_stop(struct rs_io *io)
{
    if (rs_io_active(io))
        epoll_ctl(io->loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    rs_io_forget(io);
}

/* ---- The loop ------------------------------------------------------------------ */

int rs_loop_init(struct rs_loop *l)
{
    memset(l, 0, sizeof(*l));
    l->sig.fd = -1;
    l->epfd = -1;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0)
        return -errno;
    l->now_ns = rs_mono_ns();
    return 0;
}

void rs_loop_fini(struct rs_loop *l)
{
    if (l->sig.fd >= 0) {
        rs_io_stop(&l->sig);
        close(l->sig.fd);
        l->sig.fd = -1;
    }
    for (uint32_t i = 0; i < l->n_timers; i++)
        l->heap[i]->slot = 0;
    free(l->heap);
    l->heap = NULL;
    l->n_timers = l->cap_timers = 0;
    if (l->epfd >= 0)
        close(l->epfd);
    l->epfd = -1;
}

void rs_loop_stop(struct rs_loop *l)
{
    l->stop = true;
}

void rs_loop_idle(struct rs_loop *l, bool (*fn)(void *ctx), void *ctx)
{
    l->idle = fn;
    l->idle_ctx = ctx;
}

void rs_loop_woken(struct rs_loop *l, void (*fn)(void *ctx), void *ctx)
{
    l->woken = fn;
    l->woken_ctx = ctx;
}

void rs_loop_before_sleep(struct rs_loop *l, void (*fn)(void *ctx), void *ctx)
{
    l->before_sleep = fn;
    l->before_sleep_ctx = ctx;
}

static void on_signal__(struct rs_io *io, uint32_t events)
{
    struct rs_loop *l = io->ctx;

    (void)events;
    if (rs_signals_read(io->fd, l->stats, l->stats_ctx))
        rs_loop_stop(l);
}

int rs_loop_signals(struct rs_loop *l, void (*stats)(void *ctx), void *ctx)
{
    int fd = rs_signals_open(), e;

    if (fd < 0)
        return fd;
    l->stats = stats;
    l->stats_ctx = ctx;
    if ((e = rs_io_start(l, &l->sig, fd, EPOLLIN, on_signal__, l)) < 0) {
        close(fd);
        return e;
    }
    return 0;
}

int rs_loop_run(struct rs_loop *l)
{
    bool busy = l->idle != NULL;   /* the idle hook gets the first turn too */

    l->stop = false;
    while (!l->stop) {
        struct timespec ts, *tp = NULL;
        int n;

        l->now_ns = rs_mono_ns();
        if (l->woken)
            l->woken(l->woken_ctx);
        run_timers__(l);
        if (l->stop)
            break;
        if (busy) {
            ts = (struct timespec){ 0, 0 };
            tp = &ts;
        } else if (l->n_timers) {
            uint64_t when = l->heap[0]->when_ns, d = when > l->now_ns ? when - l->now_ns : 0;
            ts = (struct timespec){ (time_t)(d / 1000000000u), (long)(d % 1000000000u) };
            tp = &ts;
        }
        if (l->before_sleep)
            l->before_sleep(l->before_sleep_ctx);
        rs_log_flush();
        n = epoll_pwait2(l->epfd, l->evs, RS_LOOP_BATCH, tp, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        l->now_ns = rs_mono_ns();
        if (l->woken && n > 0)
            l->woken(l->woken_ctx);
        l->n_evs = n;
        for (l->cur_ev = 0; l->cur_ev < n; l->cur_ev++) {
            struct rs_io *io = l->evs[l->cur_ev].data.ptr;
            if (io && io->on)
                io->fn(io, l->evs[l->cur_ev].events);
        }
        l->n_evs = l->cur_ev = 0;
        busy = l->idle && l->idle(l->idle_ctx);
    }
    return 0;
}
