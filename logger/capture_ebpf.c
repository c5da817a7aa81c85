/* rs-logger's capture by a tc program (--capture ebpf; the default for
 * live capture where it loads): logger/bpf/capture.bpf.c, embedded as a
 * libbpf skeleton and attached at --iface's clsact ingress, copies the
 * VIP's segments into a BPF ring buffer that this file drains from the
 * event loop, each record handed to lg_packet() as a raw-IP frame (as
 * capture_kmod.c's are).  The program drops the mirror's frames it copied,
 * so the host's stack does no more work on them.  Its drops (a full ring)
 * are reported as pcap's are. */
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <pcap/dlt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "capture.h"
#include "capture.skel.h"
#include "logger.h"
#include "tcfilter.h"

#define EBPF_BATCH 4096            /* records per drain: sockets and timers between */
/* While segments keep coming, the ring is read every half millisecond
 * with its wake-ups off, rather than woken for each record that finds the
 * logger caught up (a context switch each: with two downloads at 200 MB/s
 * that was half the logger's CPU).  The log then lags the wire by 0.5 ms
 * at most.  Every 1 ms (libpcap's TPACKET_V3 block timeout) made each
 * drain a burst that landed in some connection's path on two cores, and
 * the logger's words on closes, which rs-proxy waits for, a burst of
 * their own: new connections one after another, p99 0.43-0.49 ms against
 * 0.34-0.38 (docs/performance.md, session 37). */
#define EBPF_POLL_NS (500ull * 1000ull)
#define EBPF_BATCH_FULL (-EAGAIN)  /* what the record callback returns to end a drain */
/* Where the filter sits in the ingress chain: a fixed place, so that the
 * filter a SIGKILLed logger left behind (tc filters outlive their process)
 * is replaced by its successor's, never stacked under it.  Priority 2: the
 * proxy's program is at 1, and neither may replace the other should they
 * ever share an interface. */
#define EBPF_TC_HANDLE 1
#define EBPF_TC_PRIO 2

struct lg_ebpf {
    struct lg_capture_bpf *skel;
    struct ring_buffer *ring;
    struct rs_tcfilter filter;
    int promisc_fd;                 /* holds the interface promiscuous while open */
    unsigned batch;                 /* records handled in the current drain */
    unsigned since_wake;            /* records handled since the last wake-up or poll */
    struct rs_timer poll;           /* armed while segments keep coming (EBPF_POLL_NS) */
    int ncpus;
    struct rs_capture_counts *percpu;   /* one per possible CPU, for the counters' lookup */
};

/* ---- libbpf's messages ------------------------------------------------------ */

/* With an explicit --capture ebpf, libbpf's warnings (a verifier log, say)
 * are printed; as the default, the one line that says why libpcap captures
 * instead is enough. */
static bool libbpf_verbose;

static int on_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_DEBUG || !libbpf_verbose)
        return 0;
    return vfprintf(stderr, fmt, ap);
}

/* ---- Draining ------------------------------------------------------------------ */

static int on_record(void *ctx, void *data, size_t size)
{
    struct logger *lg = ctx;
    const struct rs_capture_rec *r = data;

    if (size >= sizeof(*r) && r->caplen <= size - sizeof(*r))
        lg_packet(lg, DLT_RAW, (const uint8_t *)(r + 1), r->caplen, r->len);
    lg->ebpf->since_wake++;
    return ++lg->ebpf->batch < EBPF_BATCH ? 0 : EBPF_BATCH_FULL;
}

/* After a drain that found records ('busy') or none: while segments keep
 * coming, the ring's wake-ups are off, in the program too (rs_cap_polled:
 * no interrupt per catch-up), and the poll timer reads it; once a drain
 * finds it empty, the program's next record wakes the loop.  A record
 * that came meanwhile is seen when the wake-ups are back on: the flag is
 * cleared first, then epoll checks the watch it modifies (the program's
 * side of this is in its copy()). */
static void ebpf_pace(struct logger *lg, bool busy)
{
    struct lg_ebpf *b = lg->ebpf;

    if (busy) {
        if (!b->poll.slot)
            rs_timer_after(&lg->loop, &b->poll, EBPF_POLL_NS);
        b->skel->bss->rs_cap_polled = 1;
        rs_io_set(&lg->capture_io, 0);
    } else {
        rs_timer_stop(&lg->loop, &b->poll);
        __atomic_store_n(&b->skel->bss->rs_cap_polled, 0, __ATOMIC_SEQ_CST);
        rs_io_set(&lg->capture_io, EPOLLIN);
    }
}

/* Handles up to EBPF_BATCH records; true when more may wait. */
static bool ebpf_drain(struct logger *lg)
{
    struct lg_ebpf *b = lg->ebpf;
    int r;

    if (!b || !b->ring)
        return false;
    b->batch = 0;
    r = ring_buffer__consume(b->ring);
    if (r < 0 && r != EBPF_BATCH_FULL) {
        rs_log("capture ebpf: reading the ring: %s", strerror(-r));
        return false;
    }
    return b->batch == EBPF_BATCH;
}

/* A wake-up or the poll timer: whether segments keep coming is whether
 * any came since the last one, this drain's or the loop's idle drains'
 * (these run after every batch of events, so a poll right after one
 * finds the ring empty, however busy the wire). */
static void ebpf_wake(struct logger *lg)
{
    if (!ebpf_drain(lg) && lg->ebpf && rs_io_active(&lg->capture_io)) {
        ebpf_pace(lg, lg->ebpf->since_wake > 0);
        lg->ebpf->since_wake = 0;
    }
}

static void on_readable(struct rs_io *io, uint32_t events)
{
    (void)events;
    ebpf_wake(io->ctx);
}

static void on_poll(struct rs_timer *t)
{
    ebpf_wake(t->ctx);
}

static bool drain_more(void *ctx)
{
    return ebpf_drain(ctx);
}

/* ---- Set-up and tear-down -------------------------------------------------------- */

static void ebpf_close(struct logger *lg)
{
    struct lg_ebpf *b = lg->ebpf;

    if (!b)
        return;
    if (rs_io_active(&lg->capture_io))
        rs_io_stop(&lg->capture_io);
    rs_timer_stop(&lg->loop, &b->poll);
    if (!rs_tcfilter_detach(&b->filter))
        rs_log("capture ebpf: detaching the filter from ifindex %d failed", b->filter.hook.ifindex);
    ring_buffer__free(b->ring);
    lg_capture_bpf__destroy(b->skel);
    if (b->promisc_fd >= 0)
        close(b->promisc_fd);
    free(b->percpu);
    free(b);
    lg->ebpf = NULL;
}

/* Attaches the loaded program at 'ifindex''s ingress, replacing the filter
 * a previous logger left there.  Returns 0, -EBUSY when another program
 * holds the place, or libbpf's -errno. */
static int ebpf_attach(struct logger *lg, int ifindex)
{
    struct lg_ebpf *b = lg->ebpf;
    int e = rs_tcfilter_attach(&b->filter, ifindex, EBPF_TC_HANDLE, EBPF_TC_PRIO, b->skel->progs.rs_capture_ingress);

    if (!e && b->filter.replaced)
        rs_log("capture ebpf on %s: replaced the filter a previous rs-logger left (program %u)", lg->iface,
               b->filter.replaced);
    return e;
}

/* Puts the interface in promiscuous mode while we run, as libpcap does for
 * its source: a real NIC on a mirror port filters out frames addressed to
 * other hosts otherwise.  The socket has no protocol, so it receives
 * nothing; the membership ends with it, however the process ends. */
static int promisc(struct lg_ebpf *b, int ifindex)
{
    struct packet_mreq mr = { .mr_ifindex = ifindex, .mr_type = PACKET_MR_PROMISC };

    b->promisc_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (b->promisc_fd < 0 || setsockopt(b->promisc_fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)))
        return -errno;
    return 0;
}

static int ebpf_open(struct logger *lg)
{
    bool fallback = lg->capture != &lg_capture_ebpf;   /* the default: libpcap after us */
    struct lg_ebpf *b = calloc(1, sizeof(*b));
    const char *step = "allocate";
    int ifindex, e = -ENOMEM;

    if (!b)
        goto fail;
    lg->ebpf = b;
    b->promisc_fd = -1;
    rs_timer_init(&b->poll, on_poll, lg);
    libbpf_verbose = !fallback;
    libbpf_set_print(on_libbpf);
    ifindex = (int)if_nametoindex(lg->iface);
    if (!ifindex) {
        /* libpcap could not open it either: no fallback, and one clear line. */
        rs_log("capture on %s: no such interface", lg->iface);
        ebpf_close(lg);
        return -ENODEV;
    }
    b->ncpus = libbpf_num_possible_cpus();
    if (b->ncpus <= 0 || !(b->percpu = calloc((size_t)b->ncpus, sizeof(*b->percpu))))
        goto fail;
    step = "open the program";
    if (!(b->skel = lg_capture_bpf__open())) {
        e = -errno;
        goto fail;
    }
    b->skel->rodata->rs_cap_vip = lg->vip.ip;
    b->skel->rodata->rs_cap_port = lg->vip.port;
    bpf_map__set_max_entries(b->skel->maps.rs_cap_verdict, 1);    /* rs-auxlog's tap's, unused here */
    step = "load the program";
    if ((e = lg_capture_bpf__load(b->skel)))
        goto fail;
    step = "attach it";
    if ((e = ebpf_attach(lg, ifindex)))
        goto fail;
    step = "map its ring";
    b->ring = ring_buffer__new(bpf_map__fd(b->skel->maps.rs_cap_ring), on_record, lg, NULL);
    if (!b->ring) {
        e = -errno;
        goto fail;
    }
    step = "make the interface promiscuous";
    if ((e = promisc(b, ifindex)))
        goto fail;
    step = "poll its ring";
    if ((e = rs_io_start(&lg->loop, &lg->capture_io, bpf_map__fd(b->skel->maps.rs_cap_ring), EPOLLIN, on_readable,
                         lg)))
        goto fail;
    rs_loop_idle(&lg->loop, drain_more, lg);
    rs_log("capture ebpf on %s: tc ingress filter (handle %d prio %d), a %u MB ring", lg->iface, EBPF_TC_HANDLE,
           EBPF_TC_PRIO, RS_CAPTURE_RING_BYTES >> 20);
    return 0;
fail:
    if (e == -EBUSY)
        rs_log("capture ebpf on %s: cannot attach it: another program's filter holds handle %d prio %d%s", lg->iface,
               EBPF_TC_HANDLE, EBPF_TC_PRIO, fallback ? "; libpcap instead" : "");
    else
        rs_log("capture ebpf on %s: cannot %s: %s%s", lg->iface, step, strerror(e < 0 ? -e : EINVAL),
               fallback ? "; libpcap instead" : "");
    ebpf_close(lg);
    return e < 0 ? e : -EINVAL;
}

static int ebpf_read_file(struct logger *lg)
{
    (void)lg;
    return -EOPNOTSUPP;     /* files are libpcap's */
}

static void ebpf_counts(struct logger *lg, struct lg_capture_stats *out)
{
    struct lg_ebpf *b = lg->ebpf;
    uint32_t zero = 0;
    uint64_t records = 0, drops = 0;

    *out = (struct lg_capture_stats){ 0 };
    if (!b || bpf_map_lookup_elem(bpf_map__fd(b->skel->maps.rs_cap_counts), &zero, b->percpu))
        return;
    for (int i = 0; i < b->ncpus; i++) {
        records += b->percpu[i].records;
        drops += b->percpu[i].drops;
    }
    /* As libpcap's: 'received' counts what the filter took, dropped or not. */
    *out = (struct lg_capture_stats){ (unsigned)(records + drops), (unsigned)drops, 0 };
}

const struct lg_capture_ops lg_capture_ebpf = {
    .name = "ebpf",
    .open_live = ebpf_open,
    .read_file = ebpf_read_file,
    .drain = ebpf_drain,
    .stats = ebpf_counts,
    .close = ebpf_close,
};
