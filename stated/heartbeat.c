/* rs-stated's liveness reports to the logger: a heartbeat datagram every
 * --heartbeat from a real-time thread while the application is connected,
 * and FAILURE datagrams the moment it goes. */
#include "stated.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

void send_failure(struct stated *s)
{
    struct rs_ctl_msg m = { .type = RS_CTL_FAILURE };
    uint8_t buf[128];

    if (s->udp_fd < 0)
        return;
    m.sender = SENDER(s->id, CH_FAILURE);
    m.u.failure.backend_id = s->id;
    m.u.failure.reason = RS_CTL_FAIL_EXITED;
    for (int i = 0; i < FAILURE_COPIES; i++) {
        int n;
        m.seq = ++s->fail_seq;
        n = rs_ctl_encode(&s->key, &m, buf, sizeof(buf));
        if (n > 0 && send(s->udp_fd, buf, (size_t)n, MSG_DONTWAIT) != n)
            rs_log("failure report to %s: %s", RS_A(s->logger), strerror(errno));
    }
    s->st.failures_sent++;
    rs_log("failure-sent backend=%u reason=EXITED to %s", s->id, RS_A(s->logger));
}

/* The heartbeat thread: every --heartbeat while the app is connected, one
 * datagram.  Real-time priority so that neither the app's own load nor
 * anything else on the host delays it into a false failure. */
static void *heartbeats(void *arg)
{
    struct stated *s = arg;
    struct sched_param sp = { .sched_priority = HB_PRIO };
    struct rs_ctl_msg m = { .type = RS_CTL_HEARTBEAT };
    struct timespec next;
    uint8_t buf[128];
    int e = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);

    if (e)
        rs_log("heartbeat: real-time priority refused (%s)", strerror(e));
    m.sender = SENDER(s->id, CH_HEARTBEAT);
    m.seq = rs_now_us();
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        uint64_t ns = (uint64_t)next.tv_nsec + s->heartbeat_ns;
        next.tv_sec += (time_t)(ns / 1000000000u);
        next.tv_nsec = (long)(ns % 1000000000u);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        if (!__atomic_load_n(&s->app_up, __ATOMIC_ACQUIRE))
            continue;
        m.seq++;
        m.u.heartbeat = (struct rs_ctl_heartbeat){ RS_CTL_ROLE_BACKEND, s->id, rs_now_us() };
        int n = rs_ctl_encode(&s->key, &m, buf, sizeof(buf));
        if (n > 0 && send(s->udp_fd, buf, (size_t)n, MSG_DONTWAIT) == n)
            __atomic_add_fetch(&s->st.heartbeats, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int heartbeat_start(struct stated *s)
{
    struct sockaddr_in lsin = rs_addr_sin(s->logger);
    int err;

    s->fail_seq = rs_now_us();
    s->udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s->udp_fd < 0 || connect(s->udp_fd, (struct sockaddr *)&lsin, sizeof(lsin)) < 0)
        return -errno;
    if ((err = pthread_create(&s->hb_thread, NULL, heartbeats, s)) != 0)
        return -err;
    s->hb_started = true;
    return 0;
}
