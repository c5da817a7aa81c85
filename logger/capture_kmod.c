/* rs-logger's capture from the kernel module kmod/logmod.c (--capture
 * kmod): the module's netfilter hook copies the VIP's TCP segments from
 * the mirror port into a ring this process maps (kmod/logmod.h); each
 * record is an IPv4 packet, handed to lg_packet() as a raw-IP frame, as
 * libpcap's frames are.  Its drops are reported as pcap's are. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pcap/dlt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../kmod/logmod.h"
#include "logger.h"

#define KMOD_RING (64u << 20)      /* the ring the module fills */
#define KMOD_BATCH 4096            /* records per drain: sockets and timers between */

struct lg_kmod {
    int fd;
    uint8_t *map;
    size_t maplen;
    struct rs_logmod_ring *hdr;
    const uint8_t *data;
    uint32_t size;
};

/* Handles up to KMOD_BATCH records; true when more may wait. */
static bool kmod_drain(struct logger *lg)
{
    struct lg_kmod *k = lg->kmod;
    uint64_t head, tail;
    unsigned n = 0;

    if (!k)
        return false;
    head = __atomic_load_n(&k->hdr->head, __ATOMIC_ACQUIRE);
    tail = k->hdr->tail;
    while (tail < head && n < KMOD_BATCH) {
        const struct rs_logmod_rec *r = (const void *)(k->data + (tail & (k->size - 1)));

        if (r->len < sizeof(*r) || r->len > k->size) {
            rs_log("capture kmod: a bad record (len %u): the ring is abandoned", r->len);
            tail = head;
            break;
        }
        if (!(r->flags & RS_LOGMOD_PAD) && r->caplen <= r->len - sizeof(*r)) {
            lg_packet(lg, DLT_RAW, (const uint8_t *)(r + 1), r->caplen, r->caplen);
            n++;
        }
        tail += r->len;
    }
    __atomic_store_n(&k->hdr->tail, tail, __ATOMIC_RELEASE);
    /* More may wait only after a full batch: otherwise the module wakes the
     * loop (poll) for what came meanwhile, rather than the loop spinning. */
    return n == KMOD_BATCH;
}

static void on_readable(struct rs_io *io, uint32_t events)
{
    (void)events;
    kmod_drain(io->ctx);
}

static bool drain_more(void *ctx)
{
    return kmod_drain(ctx);
}

static void kmod_close(struct logger *lg)
{
    struct lg_kmod *k = lg->kmod;

    if (!k)
        return;
    if (rs_io_active(&lg->capture_io))
        rs_io_stop(&lg->capture_io);
    if (k->map)
        munmap(k->map, k->maplen);
    if (k->fd >= 0)
        close(k->fd);
    free(k);
    lg->kmod = NULL;
}

static int kmod_open(struct logger *lg)
{
    struct rs_logmod_cfg cfg = { .vip = htonl(lg->vip.ip), .port = htons(lg->vip.port),
                                 .flags = RS_LOGMOD_EGRESS, .ring_bytes = KMOD_RING };
    struct lg_kmod *k = calloc(1, sizeof(*k));
    int e;

    if (!k)
        return -ENOMEM;
    lg->kmod = k;
    k->fd = open(RS_LOGMOD_DEV, O_RDWR | O_CLOEXEC);
    if (k->fd < 0) {
        e = -errno;
        rs_log("capture kmod: %s: %s (is rs_logmod.ko loaded? make kmod)", RS_LOGMOD_DEV, strerror(-e));
        kmod_close(lg);
        return e;
    }
    snprintf(cfg.ifname, sizeof(cfg.ifname), "%s", lg->iface);
    k->maplen = RS_LOGMOD_HDR + KMOD_RING;
    if (ioctl(k->fd, RS_LOGMOD_START, &cfg) < 0
        || (k->map = mmap(NULL, k->maplen, PROT_READ | PROT_WRITE, MAP_SHARED, k->fd, 0)) == MAP_FAILED) {
        e = -errno;
        k->map = NULL;
        rs_log("capture kmod on %s: %s", lg->iface, strerror(-e));
        kmod_close(lg);
        return e;
    }
    k->hdr = (struct rs_logmod_ring *)k->map;
    k->data = k->map + RS_LOGMOD_HDR;
    k->size = KMOD_RING;
    if (rs_io_start(&lg->loop, &lg->capture_io, k->fd, EPOLLIN, on_readable, lg)) {
        kmod_close(lg);
        return -EIO;
    }
    rs_loop_idle(&lg->loop, drain_more, lg);
    rs_log("capture kmod on %s: a %u MB ring", lg->iface, KMOD_RING >> 20);
    return 0;
}

static int kmod_read_file(struct logger *lg)
{
    (void)lg;
    return -EOPNOTSUPP;     /* files are libpcap's */
}

static void kmod_counts(struct logger *lg, struct lg_capture_stats *out)
{
    struct lg_kmod *k = lg->kmod;

    *out = (struct lg_capture_stats){ 0 };
    if (k)
        *out = (struct lg_capture_stats){ (unsigned)k->hdr->records, (unsigned)k->hdr->drops, 0 };
}

const struct lg_capture_ops lg_capture_kmod = {
    .name = "kmod",
    .open_live = kmod_open,
    .read_file = kmod_read_file,
    .drain = kmod_drain,
    .stats = kmod_counts,
    .close = kmod_close,
};
