/* Unit tests for common/loop.c: the timer heap (order, re-arming, stopping
 * in any position, against a sorted reference), fd events, an fd stopped
 * while its event is pending in the same batch, the idle hook; and
 * rs_accept_tcp out of file descriptors (common/daemon.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <cmocka.h>

#include "daemon.h"
#include "loop.h"

#define N_TIMERS 500

struct fired {
    int order[N_TIMERS + 8];
    int n;
    struct rs_loop *loop;
    int stop_after;
};

struct tctx {
    struct fired *f;
    int id;
};

static void on_fire(struct rs_timer *t)
{
    struct tctx *c = t->ctx;

    c->f->order[c->f->n++] = c->id;
    if (c->f->n == c->f->stop_after)
        rs_loop_stop(c->f->loop);
}

/* Timers fire in time order whatever order they were armed, stopped and
 * re-armed in (a heap with a position kept in each timer). */
static void timers_fire_in_order(void **state)
{
    static struct rs_timer t[N_TIMERS];
    static struct tctx c[N_TIMERS];
    static uint64_t when[N_TIMERS];
    struct rs_loop l;
    struct fired f = { .n = 0 };
    uint64_t base;
    unsigned seed = 7, live = 0;
    int prev = -1;

    (void)state;
    assert_int_equal(rs_loop_init(&l), 0);
    f.loop = &l;
    base = rs_mono_ns() + 20000000ull;   /* all in the future, close together */
    for (int i = 0; i < N_TIMERS; i++) {
        c[i] = (struct tctx){ &f, i };
        rs_timer_init(&t[i], on_fire, &c[i]);
        when[i] = base + (uint64_t)(rand_r(&seed) % 5000000);
        rs_timer_at(&l, &t[i], when[i]);
    }
    /* Stop every third, re-arm every fifth elsewhere: positions all over the heap. */
    for (int i = 0; i < N_TIMERS; i++) {
        if (i % 3 == 0) {
            rs_timer_stop(&l, &t[i]);
            assert_false(rs_timer_armed(&t[i]));
        } else if (i % 5 == 0) {
            when[i] = base + (uint64_t)(rand_r(&seed) % 5000000);
            rs_timer_at(&l, &t[i], when[i]);
        }
    }
    rs_timer_stop(&l, &t[0]);   /* stopping a stopped timer is a no-op */
    for (int i = 0; i < N_TIMERS; i++)
        live += i % 3 != 0;
    f.stop_after = (int)live;
    assert_int_equal(rs_loop_run(&l), 0);
    assert_int_equal(f.n, (int)live);
    for (int k = 0; k < f.n; k++) {
        int id = f.order[k];
        assert_true(id % 3 != 0);
        if (prev >= 0)
            assert_true(when[prev] <= when[id]);
        prev = id;
    }
    assert_true(rs_mono_ns() >= when[prev]);
    rs_loop_fini(&l);
}

struct io_ctx {
    struct rs_io a, b;
    int fds_a[2], fds_b[2];
    int calls_a, calls_b;
    struct rs_loop *loop;
};

/* 'a' stops 'b' while both are ready in the same batch: 'b' is not called. */
static void on_a(struct rs_io *io, uint32_t events)
{
    struct io_ctx *x = io->ctx;
    char c;

    assert_true(events & EPOLLIN);
    assert_int_equal(read(io->fd, &c, 1), 1);
    x->calls_a++;
    if (rs_io_active(&x->b))
        rs_io_stop(&x->b);
    rs_loop_stop(x->loop);
}

static void on_b(struct rs_io *io, uint32_t events)
{
    struct io_ctx *x = io->ctx;

    (void)events;
    x->calls_b++;
    rs_io_stop(&x->a);
    rs_loop_stop(x->loop);
}

static void stopped_io_not_called(void **state)
{
    struct rs_loop l;
    struct io_ctx x = { .calls_a = 0 };

    (void)state;
    assert_int_equal(rs_loop_init(&l), 0);
    x.loop = &l;
    assert_int_equal(pipe(x.fds_a), 0);
    assert_int_equal(pipe(x.fds_b), 0);
    assert_int_equal(rs_io_start(&l, &x.a, x.fds_a[0], EPOLLIN, on_a, &x), 0);
    assert_int_equal(rs_io_start(&l, &x.b, x.fds_b[0], EPOLLIN, on_b, &x), 0);
    assert_int_equal(write(x.fds_a[1], "a", 1), 1);
    assert_int_equal(write(x.fds_b[1], "b", 1), 1);
    assert_int_equal(rs_loop_run(&l), 0);
    /* Whichever ran first stopped the other, whose pending event was dropped. */
    assert_int_equal(x.calls_a + x.calls_b, 1);
    assert_int_equal(x.b.fd, x.fds_b[0]);        /* the fd stays the owner's */
    assert_true(rs_io_active(&x.a) != rs_io_active(&x.b));
    assert_int_equal(rs_io_set(&x.a, EPOLLIN | EPOLLOUT), 0);
    for (int i = 0; i < 2; i++) {
        close(x.fds_a[i]);
        close(x.fds_b[i]);
    }
    rs_loop_fini(&l);
}

static int idle_left;

static bool idle_more(void *ctx)
{
    struct rs_loop *l = ctx;

    if (--idle_left == 0)
        rs_loop_stop(l);
    return idle_left > 0;
}

/* While the idle hook says there is more, the loop does not sleep: with no
 * fd and no timer it would otherwise block forever. */
static void idle_keeps_polling(void **state)
{
    struct rs_loop l;

    (void)state;
    assert_int_equal(rs_loop_init(&l), 0);
    idle_left = 1000;
    rs_loop_idle(&l, idle_more, &l);
    assert_int_equal(rs_loop_run(&l), 0);
    assert_int_equal(idle_left, 0);
    rs_loop_fini(&l);
}

/* Out of file descriptors, a pending connection is accepted with the
 * reserve and dropped (its client sees the end) instead of staying in the
 * backlog, where a level-triggered listener would wake the loop forever;
 * with descriptors again, accepting works as before. */
static void accept_out_of_fds_drops(void **state)
{
    struct rs_addr lo = { 0x7f000001, 0 };
    struct sockaddr_in sin, peer;
    socklen_t sl = sizeof(sin);
    struct rlimit old, low;
    struct timeval tv = { .tv_sec = 2 };
    int lfd = rs_listen_tcp(lo, 8), c1, c2, fd, fill[64], n_fill = 0;
    char b;

    (void)state;
    assert_true(lfd >= 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    assert_int_equal(rs_accept_tcp(lfd, &peer), -1);     /* none pending; opens the reserve */
    c1 = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c1, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(c1, (struct sockaddr *)&sin, sizeof(sin)), 0);
    /* Every descriptor below 64 in use (the reserve among them), 64 the limit. */
    while ((fd = dup(0)) >= 0 && fd < 63)
        fill[n_fill++] = fd;
    assert_int_equal(fd, 63);
    fill[n_fill++] = fd;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = 64;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    fd = rs_accept_tcp(lfd, &peer);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    assert_int_equal(fd, -1);
    while (n_fill)
        close(fill[--n_fill]);
    assert_true(recv(c1, &b, 1, 0) == 0 || errno == ECONNRESET);    /* dropped, not left pending */
    c2 = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(c2, (struct sockaddr *)&sin, sizeof(sin)), 0);
    fd = rs_accept_tcp(lfd, &peer);
    assert_true(fd >= 0);
    assert_int_equal(peer.sin_family, AF_INET);
    close(fd);
    close(c1);
    close(c2);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(timers_fire_in_order),
        cmocka_unit_test(stopped_io_not_called),
        cmocka_unit_test(idle_keeps_polling),
        cmocka_unit_test(accept_out_of_fds_drops),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
