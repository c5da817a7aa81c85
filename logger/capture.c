/* rs-logger's capture: where the mirrored frames come from, behind one ops
 * table (struct lg_capture_ops): here libpcap, live on --iface or a pcap
 * file with --read; beside it a tc program's ring buffer (capture_ebpf.c,
 * the default for live capture) and a kernel module's (capture_kmod.c). */
#include <errno.h>
#include <inttypes.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#include "logger.h"

#define SNAPLEN 262144            /* GSO super-packets are up to ~64 KB (more with BIG TCP) */
#define PCAP_BUFFER (256 << 20)   /* absorbs bursts while the CPU is busy elsewhere */
#define DISPATCH_ROUNDS 8         /* pcap_dispatch calls per loop turn: sockets and timers
                                   * are served between turns (the loop comes back at once) */

/* ---- libpcap -------------------------------------------------------------- */

static void on_pcap(u_char *arg, const struct pcap_pkthdr *h, const u_char *bytes)
{
    struct logger *lg = (struct logger *)arg;

    lg_packet(lg, pcap_datalink(lg->pcap), bytes, h->caplen, h->len);
}

static int set_filter(struct logger *lg)
{
    struct bpf_program prog;
    char filter[128];

    snprintf(filter, sizeof(filter), "tcp and host %u.%u.%u.%u and port %u", lg->vip.ip >> 24,
             (lg->vip.ip >> 16) & 255, (lg->vip.ip >> 8) & 255, lg->vip.ip & 255, lg->vip.port);
    if (pcap_compile(lg->pcap, &prog, filter, 1, PCAP_NETMASK_UNKNOWN) || pcap_setfilter(lg->pcap, &prog)) {
        rs_log("pcap filter \"%s\": %s", filter, pcap_geterr(lg->pcap));
        return -EINVAL;
    }
    pcap_freecode(&prog);
    return 0;
}

/* Returns true when libpcap may hold more packets than it handed out. */
static bool pcap_drain(struct logger *lg)
{
    if (!lg->pcap)
        return false;
    for (int i = 0; i < DISPATCH_ROUNDS; i++) {
        int r = pcap_dispatch(lg->pcap, 256, on_pcap, (u_char *)lg);
        if (r == 0)
            return false;
        if (r < 0) {
            rs_log("pcap: %s", pcap_geterr(lg->pcap));
            return false;
        }
    }
    return true;
}

static void on_readable(struct rs_io *io, uint32_t events)
{
    (void)events;
    pcap_drain(io->ctx);
}

static bool drain_more(void *ctx)
{
    return pcap_drain(ctx);
}

static int pcap_open_live_iface(struct logger *lg)
{
    char err[PCAP_ERRBUF_SIZE];
    pcap_t *p = pcap_create(lg->iface, err);
    int r;

    if (!p) {
        rs_log("pcap %s: %s", lg->iface, err);
        return -ENODEV;
    }
    lg->pcap = p;
    pcap_set_snaplen(p, SNAPLEN);
    pcap_set_promisc(p, 1);
    /* TPACKET_V3 (not immediate mode, which is TPACKET_V2 with one
     * snaplen-sized slot per frame: a 256 MB buffer then held only ~1000
     * frames and 1000 downloads overflowed it); its blocks are handed over
     * when full or after 1 ms, so the log lags the wire by 1 ms at most. */
    pcap_set_timeout(p, 1);
    pcap_set_buffer_size(p, PCAP_BUFFER);
    if ((r = pcap_activate(p)) < 0) {
        rs_log("pcap %s: %s", lg->iface, pcap_geterr(p));
        return -EIO;
    }
    if (r > 0)
        rs_log("pcap %s: warning: %s", lg->iface, pcap_statustostr(r));
    if (set_filter(lg))
        return -EINVAL;
    /* Non-blocking, driven by epoll: otherwise pcap_dispatch waits in poll
     * inside libpcap when the ring is idle. */
    if (pcap_setnonblock(p, 1, err)) {
        rs_log("pcap %s: %s", lg->iface, err);
        return -EIO;
    }
    if (rs_io_start(&lg->loop, &lg->capture_io, pcap_get_selectable_fd(p), EPOLLIN, on_readable, lg)) {
        rs_log("pcap: no selectable fd");
        return -EIO;
    }
    rs_loop_idle(&lg->loop, drain_more, lg);
    return 0;
}

static int pcap_read_all(struct logger *lg)
{
    char err[PCAP_ERRBUF_SIZE];
    int r;

    lg->pcap = pcap_open_offline(lg->readfile, err);
    if (!lg->pcap) {
        rs_log("cannot read %s: %s", lg->readfile, err);
        return -EIO;
    }
    if (set_filter(lg))
        return -EINVAL;
    while ((r = pcap_dispatch(lg->pcap, -1, on_pcap, (u_char *)lg)) > 0)
        ;
    if (r < 0) {        /* a truncated or damaged file: what came before it is logged */
        fprintf(stderr, "rs-logger: reading %s: %s (the table covers the %" PRIu64 " packets before it)\n",
                lg->readfile, pcap_geterr(lg->pcap), lg->s.packets);
        return -EPIPE;
    }
    return 0;
}

static void pcap_counts(struct logger *lg, struct lg_capture_stats *out)
{
    struct pcap_stat ps = { 0 };

    if (lg->pcap && lg->iface)
        pcap_stats(lg->pcap, &ps);
    *out = (struct lg_capture_stats){ ps.ps_recv, ps.ps_drop, ps.ps_ifdrop };
}

static void pcap_stop(struct logger *lg)
{
    if (rs_io_active(&lg->capture_io))
        rs_io_stop(&lg->capture_io);
    if (lg->pcap)
        pcap_close(lg->pcap);
    lg->pcap = NULL;
}

const struct lg_capture_ops lg_capture_pcap = {
    .name = "pcap",
    .open_live = pcap_open_live_iface,
    .read_file = pcap_read_all,
    .drain = pcap_drain,
    .stats = pcap_counts,
    .close = pcap_stop,
};

/* ---- What the rest of the logger calls ------------------------------------------ */

int lg_capture_start(struct logger *lg)
{
    int e;

    if (setpriority(PRIO_PROCESS, 0, lg->nice))
        rs_log("capture: nice %d refused (%s): it competes for the CPU as an equal", lg->nice, strerror(errno));
    if (lg->capture)
        return lg->capture->open_live(lg);
    /* The default: the tc program costs a copy per segment in softirq and
     * none of AF_PACKET's per-frame work; where it cannot run (no BPF
     * permission, an old kernel), libpcap (the failure is logged). */
    e = lg_capture_ebpf.open_live(lg);
    if (e == 0 || e == -ENODEV) {
        lg->capture = &lg_capture_ebpf;
        return e;
    }
    lg->capture = &lg_capture_pcap;
    return lg->capture->open_live(lg);
}

void lg_capture_drain(struct logger *lg)
{
    for (int i = 0; i < 64 && lg->capture->drain(lg); i++)
        ;
}
