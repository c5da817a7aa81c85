/* Unit tests for common/ctlconn.c: the calls of a connection that goes
 * down end exactly once each, even when one's callback cancels and frees
 * another that was failing with it (the proxy's CONN_MAP callbacks fence a
 * backend, which ends the other connections waiting on the same rs-stated);
 * a held connection writes nothing until it is flushed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "ctlconn.h"

struct waiter {
    struct rs_ctl_call call;
    int ended, err;
    struct waiter *victim;        /* cancelled and freed by this one's callback */
    struct rs_ctlconn *conn;      /* a new call on it from the callback */
    struct waiter *fresh;
};

static void on_done(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct waiter *w = call->ctx;

    (void)reply;
    w->ended++;
    w->err = err;
    if (w->victim) {
        rs_ctl_call_cancel(&w->victim->call);
        memset(w->victim, 0xa5, sizeof(*w->victim));
        free(w->victim);
        w->victim = NULL;
    }
    if (w->fresh) {
        struct rs_ctl_msg m = { .type = RS_CTL_STATUS };
        assert_int_equal(rs_ctl_call(w->conn, &m, RS_CTL_STATUS_REPORT, &w->fresh->call, 1000000000ull, on_done,
                                     w->fresh), 0);
    }
}

static struct waiter *start(struct rs_ctlconn *c)
{
    struct waiter *w = calloc(1, sizeof(*w));
    struct rs_ctl_msg m = { .type = RS_CTL_STATUS };

    assert_non_null(w);
    assert_int_equal(rs_ctl_call(c, &m, RS_CTL_STATUS_REPORT, &w->call, 1000000000ull, on_done, w), 0);
    return w;
}

static void calls_end_once_when_one_frees_another(void **state)
{
    struct rs_loop l;
    struct rs_ctlconn c;
    struct rs_ctl_key key = { { 0 } };
    uint64_t seq = 1;
    struct waiter *w[4], fresh = { 0 };

    (void)state;
    assert_int_equal(rs_ctl_init(), 0);
    assert_int_equal(rs_loop_init(&l), 0);
    /* Nobody listens there: the calls wait in the queue of a peer that is down. */
    assert_int_equal(rs_ctlconn_peer(&c, &l, "t", (struct rs_addr){ 0x7f000001u, 9 }, &key, &seq,
                                     RS_CTL_SENDER_OPERATOR | 1, 1u << 20, NULL, NULL, NULL), 0);
    for (int i = 0; i < 4; i++)
        w[i] = start(&c);
    /* Each ends in turn, newest first; the first to end frees the next,
     * which must then never end; a new call started meanwhile stays. */
    w[3]->victim = w[2];
    w[3]->conn = &c;
    w[3]->fresh = &fresh;
    rs_ctlconn_close(&c);
    assert_int_equal(w[3]->ended, 1);
    assert_int_equal(w[3]->err, -ECANCELED);
    assert_int_equal(w[1]->ended, 1);
    assert_int_equal(w[0]->ended, 1);
    assert_int_equal(fresh.ended, 0);
    assert_true(rs_ctl_call_pending(&fresh.call));
    rs_ctl_call_cancel(&fresh.call);
    for (int i = 0; i < 4; i++)
        if (i != 2)
            free(w[i]);
    rs_loop_fini(&l);
}

static void on_frame(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    (void)m;
    ++*(int *)c->ctx;
}

static void on_stop(struct rs_timer *t)
{
    rs_loop_stop(t->ctx);
}

/* Runs 'l' for 'ms' milliseconds. */
static void spin(struct rs_loop *l, uint64_t ms)
{
    struct rs_timer t;

    rs_timer_init(&t, on_stop, l);
    rs_timer_after(l, &t, ms * 1000000ull);
    l->stop = false;
    assert_int_equal(rs_loop_run(l), 0);
}

static void held_frames_wait_for_the_flush(void **state)
{
    struct rs_loop l;
    struct rs_ctlserver s;
    struct rs_ctlconn c;
    struct rs_ctl_key key = { { 0 } };
    uint64_t seq = 1, sseq = 1;
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    int got = 0;

    (void)state;
    assert_int_equal(rs_ctl_init(), 0);
    assert_int_equal(rs_loop_init(&l), 0);
    assert_int_equal(rs_ctlserver_open(&s, &l, (struct rs_addr){ 0x7f000001u, 0 }, &key, &sseq, 2, on_frame, &got),
                     0);
    assert_int_equal(getsockname(s.io.fd, (struct sockaddr *)&sin, &len), 0);
    assert_int_equal(rs_ctlconn_peer(&c, &l, "t", (struct rs_addr){ 0x7f000001u, ntohs(sin.sin_port) }, &key, &seq,
                                     RS_CTL_SENDER_OPERATOR | 1, 1u << 20, NULL, NULL, NULL), 0);
    spin(&l, 50);
    assert_true(c.up);
    rs_ctlconn_hold(&c);
    for (int i = 0; i < 3; i++) {
        struct rs_ctl_msg m = { .type = RS_CTL_STATUS };
        assert_int_equal(rs_ctl_send(&c, &m), 0);
    }
    spin(&l, 50);
    assert_int_equal(got, 0);
    rs_ctlconn_flush(&c);
    spin(&l, 50);
    assert_int_equal(got, 3);
    rs_ctlconn_close(&c);
    rs_ctlserver_close(&s);
    rs_loop_fini(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(calls_end_once_when_one_frees_another),
        cmocka_unit_test(held_frames_wait_for_the_flush),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
