/* The event loop every resplice daemon runs (one per thread): file
 * descriptors, timers and signals, each with a callback.  Nothing in a
 * callback may block; work that waits on the network is a state machine
 * that arms an rs_io or an rs_timer and returns.
 *
 * Timers live in a binary heap and fire with nanosecond resolution
 * (epoll_pwait2), so thousands of per-connection deadlines cost O(log n)
 * each.  An fd removed with rs_io_stop() while events of the same batch
 * are pending is never called again, so callbacks may free objects. */
#ifndef RS_LOOP_H
#define RS_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

struct rs_loop;
struct rs_io;
struct rs_timer;

/* Called with the epoll events (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP...). */
typedef void (*rs_io_fn)(struct rs_io *io, uint32_t events);
/* Called once when the timer's time has come; it is disarmed by then. */
typedef void (*rs_timer_fn)(struct rs_timer *t);

struct rs_io {
    struct rs_loop *loop;
    int fd;                   /* the owner's; the loop never closes it */
    bool on;                  /* registered with the loop */
    uint32_t events;          /* what epoll watches now */
    rs_io_fn fn;
    void *ctx;                /* the owner's object */
};

struct rs_timer {
    uint64_t when_ns;         /* CLOCK_MONOTONIC */
    uint32_t slot;            /* heap index + 1; 0 when not armed */
    rs_timer_fn fn;
    void *ctx;
};

#define RS_LOOP_BATCH 64

struct rs_loop {
    int epfd;
    struct rs_timer **heap;
    uint32_t n_timers, cap_timers;
    struct epoll_event evs[RS_LOOP_BATCH];
    int n_evs, cur_ev;        /* the batch being dispatched */
    uint64_t now_ns;          /* monotonic time at the last wake-up */
    bool stop;
    /* idle: called after every batch; true = more work pending, poll again at once */
    bool (*idle)(void *ctx);
    void *idle_ctx;
    /* woken: called before each round of timers and each batch */
    void (*woken)(void *ctx);
    void *woken_ctx;
    /* before_sleep: called at the end of every turn, before epoll waits */
    void (*before_sleep)(void *ctx);
    void *before_sleep_ctx;
    /* signals (rs_loop_signals) */
    struct rs_io sig;
    void (*stats)(void *ctx);
    void *stats_ctx;
};

/* ---- The loop ------------------------------------------------------------ */

/* Returns 0 or -errno. */
int rs_loop_init(struct rs_loop *l);
/* Closes the loop's own fds; registered fds are the owners' to close. */
void rs_loop_fini(struct rs_loop *l);
/* Runs until rs_loop_stop().  Returns 0, or -errno when epoll fails. */
int rs_loop_run(struct rs_loop *l);
void rs_loop_stop(struct rs_loop *l);
/* Monotonic time of the current wake-up (cheap; refreshed each batch). */
static inline uint64_t rs_loop_now(const struct rs_loop *l) { return l->now_ns; }
/* 'fn'('ctx') runs after each batch; while it returns true the loop does
 * not sleep (e.g. a capture that has more packets than one batch takes). */
void rs_loop_idle(struct rs_loop *l, bool (*fn)(void *ctx), void *ctx);
/* 'fn'('ctx') runs before the due timers and before each batch of
 * descriptors are handled: what it brings up to date (state that arrived
 * without waking the loop) every handler sees. */
void rs_loop_woken(struct rs_loop *l, void (*fn)(void *ctx), void *ctx);
/* 'fn'('ctx') runs at the end of every turn, after the due timers, right
 * before the loop waits (or polls again at once): what the turn's
 * handlers held back goes out together (rs_ctlconn_hold). */
void rs_loop_before_sleep(struct rs_loop *l, void (*fn)(void *ctx), void *ctx);
/* SIGTERM and SIGINT stop the loop ("exit on signal N" is logged); SIGUSR1
 * calls 'stats'('ctx') when not NULL.  SIGPIPE is ignored.  For the main
 * thread only (the signals are blocked process-wide first).  Returns 0 or -errno. */
int rs_loop_signals(struct rs_loop *l, void (*stats)(void *ctx), void *ctx);

/* ---- File descriptors ---------------------------------------------------- */

/* Watches 'fd' for 'events' (EPOLLIN | EPOLLOUT ...; level-triggered).
 * Returns 0 or -errno. */
int rs_io_start(struct rs_loop *l, struct rs_io *io, int fd, uint32_t events, rs_io_fn fn, void *ctx);
/* Changes what 'io' watches (a no-op when unchanged).  Returns 0 or -errno. */
int rs_io_set(struct rs_io *io, uint32_t events);
/* Stops watching (the fd stays open and in io->fd) and drops its pending
 * events.  A no-op when not watching. */
void rs_io_stop(struct rs_io *io);
/* As rs_io_stop() for an fd about to be closed that has no duplicate:
 * closing it takes it out of the epoll set, so no epoll_ctl is made. */
void rs_io_forget(struct rs_io *io);
static inline bool rs_io_active(const struct rs_io *io) { return io->on; }

/* ---- Timers ---------------------------------------------------------------- */

void rs_timer_init(struct rs_timer *t, rs_timer_fn fn, void *ctx);
/* (Re)arms 't' for monotonic time 'when_ns'. */
void rs_timer_at(struct rs_loop *l, struct rs_timer *t, uint64_t when_ns);
/* (Re)arms 't' for 'delay_ns' from now. */
void rs_timer_after(struct rs_loop *l, struct rs_timer *t, uint64_t delay_ns);
/* Disarms 't' (a no-op when it is not armed). */
void rs_timer_stop(struct rs_loop *l, struct rs_timer *t);
static inline bool rs_timer_armed(const struct rs_timer *t) { return t->slot != 0; }

#endif /* RS_LOOP_H */
