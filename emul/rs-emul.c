/* rs-emul: link emulator for kernels without netem.  Packets are steered to
 * it by iptables NFQUEUE rules at a host's ingress (PREROUTING); it holds
 * each packet's verdict for a delay (with jitter that never reorders) or
 * drops it at random, then accepts it.  Only packet metadata is copied to
 * user space, and GSO super-packets stay whole, so it keeps up with
 * multi-Gbit/s veth traffic.
 *
 *   rs-emul queue 0 delay 5ms jitter 1ms loss 1% queue 1 delay 30ms
 */
#include <errno.h>
#include <arpa/inet.h>
#include <inttypes.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "linkem.h"
#include "parse.h"

#define MAX_QUEUES 16
/* Packets one queue may hold: above a 10 ms delay at 1 Gbit/s of MTU-sized
 * packets (~850) with a wide margin; the kernel queue is sized the same. */
#define DEFAULT_BACKLOG 65536
/* Netlink socket buffer: bursts of verdict-pending packets queue here. */
#define RCVBUF_BYTES (32u << 20)

struct pending {
    uint32_t id;
    uint64_t release_ns;
    uint64_t due_ns;        /* what the schedule asked for, to measure lateness */
};

struct equeue {
    uint16_t num;
    struct rs_linkem link;
    struct nfq_q_handle *qh;
    struct pending *fifo;
    uint32_t cap, head, count;
    /* statistics */
    uint64_t received, dropped, released, overflow, max_backlog;
    uint64_t late_sum_ns, late_max_ns;
};

struct emul {
    struct nfq_handle *h;
    struct equeue q[MAX_QUEUES];
    int nq;
    struct rs_rng rng;
    uint32_t backlog;
    int fail_open;
    uint64_t enobufs;
    uint64_t now_ns;        /* arrival time of the packets being read */
};

static volatile sig_atomic_t stop_requested, stats_requested;

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        stats_requested = 1;
    else
        stop_requested = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-emul [--seed N] [--backlog N] [--fail-open] QUEUE...\n"
        "  QUEUE := queue NUM [delay DUR] [jitter DUR] [loss PROB]\n"
        "  DUR: 250us, 10ms, 1s (bare numbers are ms); PROB: 1%% or 0.01\n"
        "Delays, jitters (uniform, no reordering) or drops packets that iptables\n"
        "NFQUEUE rules send to queue NUM.  Prints 'ready' once every queue is bound.\n"
        "--fail-open: the kernel accepts packets when a queue is full instead of dropping.\n"
        "SIGUSR1 prints statistics; SIGTERM/SIGINT releases every held packet and exits.\n");
}

static void print_stats(const struct emul *e, FILE *f)
{
    for (int i = 0; i < e->nq; i++) {
        const struct equeue *q = &e->q[i];
        fprintf(f, "stats queue=%u received=%" PRIu64 " dropped=%" PRIu64 " released=%" PRIu64
                " held=%u overflow=%" PRIu64 " max_backlog=%" PRIu64
                " late_avg_us=%.1f late_max_us=%.1f enobufs=%" PRIu64 "\n",
                q->num, q->received, q->dropped, q->released, q->count, q->overflow,
                q->max_backlog, q->released ? q->late_sum_ns / 1e3 / q->released : 0.0,
                q->late_max_ns / 1e3, e->enobufs);
    }
    fflush(f);
}

static struct equeue *queue_of(struct emul *e, struct nfq_q_handle *qh)
{
    for (int i = 0; i < e->nq; i++)
        if (e->q[i].qh == qh)
            return &e->q[i];
    return NULL;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *arg)
{
    struct emul *e = arg;
    struct equeue *q = queue_of(e, qh);
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    uint64_t release;
    uint32_t id;

    (void)msg;
    if (!ph || !q)
        return 0;
    id = ntohl(ph->packet_id);
    q->received++;
    if (rs_linkem_schedule(&q->link, &e->rng, e->now_ns, &release)) {
        q->dropped++;
        return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
    }
    if (q->count == q->cap) {
        /* Cannot hold it: pass it on undelayed rather than lose it, and say so. */
        q->overflow++;
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    }
    q->fifo[(q->head + q->count) % q->cap] = (struct pending){ id, release, release };
    q->count++;
    if (q->count > q->max_backlog)
        q->max_backlog = q->count;
    return 0;
}

/* Accepts every held packet due at 'now' ('flush': every held packet).
 * Consecutive due packets of a queue are accepted with one batch verdict:
 * ids grow in arrival order and earlier ids have all had their verdict. */
static void release_due(struct emul *e, uint64_t now, int flush)
{
    for (int i = 0; i < e->nq; i++) {
        struct equeue *q = &e->q[i];
        uint32_t last = 0, n = 0;

        while (q->count && (flush || q->fifo[q->head].release_ns <= now)) {
            struct pending *p = &q->fifo[q->head];
            uint64_t late = now > p->due_ns ? now - p->due_ns : 0;

            if (!flush) {
                q->late_sum_ns += late;
                if (late > q->late_max_ns)
                    q->late_max_ns = late;
            }
            last = p->id;
            n++;
            q->head = (q->head + 1) % q->cap;
            q->count--;
        }
        if (n) {
            nfq_set_verdict_batch(q->qh, last, NF_ACCEPT);
            q->released += n;
        }
    }
}

static uint64_t next_release(const struct emul *e)
{
    uint64_t t = UINT64_MAX;

    for (int i = 0; i < e->nq; i++)
        if (e->q[i].count && e->q[i].fifo[e->q[i].head].release_ns < t)
            t = e->q[i].fifo[e->q[i].head].release_ns;
    return t;
}

/* Parses "queue NUM [delay D] [jitter D] [loss P] ..." into 'e'.
 * Returns 0, or -1 after printing what was wrong. */
static int parse_args(struct emul *e, int argc, char **argv)
{
    uint64_t seed = 1, n;
    struct equeue *cur = NULL;

    e->backlog = DEFAULT_BACKLOG;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--fail-open")) {
            e->fail_open = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "rs-emul: '%s' needs a value\n", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--seed")) {
            if (rs_parse_size(v, &seed))
                goto bad;
        } else if (!strcmp(a, "--backlog")) {
            if (rs_parse_size(v, &n) || n == 0 || n > (1u << 24))
                goto bad;
            e->backlog = (uint32_t)n;
        } else if (!strcmp(a, "queue")) {
            if (rs_parse_size(v, &n) || n > 65535)
                goto bad;
            if (e->nq == MAX_QUEUES) {
                fprintf(stderr, "rs-emul: at most %d queues\n", MAX_QUEUES);
                return -1;
            }
            cur = &e->q[e->nq++];
            cur->num = (uint16_t)n;
        } else if (!cur) {
            fprintf(stderr, "rs-emul: '%s' before any 'queue NUM'\n", a);
            return -1;
        } else if (!strcmp(a, "delay")) {
            if (rs_parse_duration(v, &cur->link.delay_ns))
                goto bad;
        } else if (!strcmp(a, "jitter")) {
            if (rs_parse_duration(v, &cur->link.jitter_ns))
                goto bad;
        } else if (!strcmp(a, "loss")) {
            if (rs_parse_prob(v, &cur->link.loss))
                goto bad;
        } else {
            fprintf(stderr, "rs-emul: unknown argument '%s'\n", a);
            usage(stderr);
            return -1;
        }
        continue;
bad:
        fprintf(stderr, "rs-emul: bad value '%s' for '%s'\n", v, a);
        return -1;
    }
    if (!e->nq) {
        usage(stderr);
        return -1;
    }
    if (e->fail_open)
        fprintf(stderr, "rs-emul: fail-open: packets pass unshaped when a queue is full\n");
    rs_rng_seed(&e->rng, seed);
    return 0;
}

static int bind_queues(struct emul *e)
{
    e->h = nfq_open();
    if (!e->h) {
        fprintf(stderr, "rs-emul: nfq_open: %s\n", strerror(errno));
        return -1;
    }
    nfnl_rcvbufsiz(nfq_nfnlh(e->h), RCVBUF_BYTES);
    for (int i = 0; i < e->nq; i++) {
        struct equeue *q = &e->q[i];
        uint32_t flags = NFQA_CFG_F_GSO | (e->fail_open ? NFQA_CFG_F_FAIL_OPEN : 0);

        q->cap = e->backlog;
        q->fifo = calloc(q->cap, sizeof(*q->fifo));
        q->qh = q->fifo ? nfq_create_queue(e->h, q->num, on_packet, e) : NULL;
        if (!q->qh) {
            fprintf(stderr, "rs-emul: cannot bind queue %u: %s (another process holds it?)\n",
                    q->num, strerror(errno));
            return -1;
        }
        if (nfq_set_mode(q->qh, NFQNL_COPY_META, 0) < 0
            || nfq_set_queue_maxlen(q->qh, q->cap) < 0
            || nfq_set_queue_flags(q->qh, flags, flags) < 0) {
            fprintf(stderr, "rs-emul: cannot configure queue %u: %s\n", q->num, strerror(errno));
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct emul e;
    static char buf[65536] __attribute__((aligned));
    struct sigaction sa = { .sa_handler = on_signal };
    sigset_t block, orig;
    int fd;

    if (parse_args(&e, argc, argv))
        return 2;
    if (bind_queues(&e))
        return 1;
    /* Wake up within a microsecond of the timer, not the default 50 us. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &orig);

    fd = nfq_fd(e.h);
    printf("ready queues=%d\n", e.nq);
    for (int i = 0; i < e.nq; i++)
        printf("queue %u delay_us=%.1f jitter_us=%.1f loss=%.4f\n", e.q[i].num,
               e.q[i].link.delay_ns / 1e3, e.q[i].link.jitter_ns / 1e3, e.q[i].link.loss);
    fflush(stdout);

    while (!stop_requested) {
        uint64_t now = mono_ns(), next;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        struct timespec ts, *tsp = NULL;

        release_due(&e, now, 0);
        next = next_release(&e);
        if (next != UINT64_MAX) {
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = (time_t)(wait / 1000000000ull);
            ts.tv_nsec = (long)(wait % 1000000000ull);
            tsp = &ts;
        }
        if (stats_requested) {
            stats_requested = 0;
            print_stats(&e, stdout);
        }
        if (ppoll(&pfd, 1, tsp, &orig) <= 0)
            continue;
        e.now_ns = mono_ns();
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n < 0) {
                if (errno == ENOBUFS) {
                    /* The kernel dropped queue messages: those packets stay
                     * unverdicted until we exit.  Count it loudly. */
                    if (!e.enobufs++)
                        fprintf(stderr, "rs-emul: netlink ENOBUFS: packets lost to the emulator\n");
                    continue;
                }
                break;
            }
            nfq_handle_packet(e.h, buf, (int)n);
        }
    }
    release_due(&e, 0, 1);
    print_stats(&e, stdout);
    for (int i = 0; i < e.nq; i++) {
        nfq_destroy_queue(e.q[i].qh);
        free(e.q[i].fifo);
    }
    nfq_close(e.h);
    return 0;
}
