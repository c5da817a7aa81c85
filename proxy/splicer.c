/* The proxy's data path: loading and attaching the tc program, managing
 * the splice table, and reading a socket's exact TCP state with TCP_REPAIR
 * so the splice continues both byte streams where the proxy left them. */
#include <errno.h>
#include <stddef.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "proxy.h"
#include "seq.h"
#include "splice.skel.h"

struct rs_splicer {
    struct rs_splice *skel;
    struct ring_buffer *events;
    struct bpf_tc_hook hook;
    struct bpf_tc_opts opts;
    int ifindex;
    int map_fd, track_fd;
    uint32_t watch_gen;
    bool hook_created;
    rs_splicer_event_cb cb;
    void *cb_arg;
};

static int libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_DEBUG)
        return 0;
    return vfprintf(stderr, fmt, ap);
}

static int on_ring_event(void *ctx, void *data, size_t len)
{
    struct rs_splicer *s = ctx;

    if (len >= sizeof(struct rs_flow_event) && s->cb)
        s->cb(s->cb_arg, data);
    return 0;
}

int rs_splicer_set_vip(struct rs_splicer *s, uint32_t ip, uint16_t port)
{
    struct rs_vip v = { .addr = htonl(ip), .port = htons(port) };
    uint32_t zero = 0;

    return bpf_map_update_elem(bpf_map__fd(s->skel->maps.rs_vips), &zero, &v, BPF_ANY) ? -errno : 0;
}

int rs_splicer_client_ts(struct rs_splicer *s, const struct rs_flow_key *k, uint32_t *ts)
{
    int fd = bpf_map__fd(s->skel->maps.rs_ts);

    if (bpf_map_lookup_elem(fd, k, ts))
        return -errno;
    bpf_map_delete_elem(fd, k);
    return 0;
}

struct rs_splicer *rs_splicer_open(const char *ifname, int *err)
{
    struct rs_splicer *s = calloc(1, sizeof(*s));
    int e;

    if (!s) {
        *err = -ENOMEM;
        return NULL;
    }
    libbpf_set_print(libbpf_quiet);
    s->ifindex = (int)if_nametoindex(ifname);
    if (!s->ifindex) {
        *err = -ENODEV;
        goto fail;
    }
    s->skel = rs_splice__open_and_load();
    if (!s->skel) {
        *err = -errno ? -errno : -EINVAL;
        goto fail;
    }
    s->map_fd = bpf_map__fd(s->skel->maps.rs_flows);
    s->track_fd = bpf_map__fd(s->skel->maps.rs_track);
    s->hook = (struct bpf_tc_hook){ .sz = sizeof(s->hook), .ifindex = s->ifindex,
                                    .attach_point = BPF_TC_INGRESS };
    e = bpf_tc_hook_create(&s->hook);
    if (e && e != -EEXIST) {
        *err = e;
        goto fail;
    }
    s->hook_created = e == 0;
    s->opts = (struct bpf_tc_opts){ .sz = sizeof(s->opts), .handle = 1, .priority = 1,
                                    .prog_fd = bpf_program__fd(s->skel->progs.rs_splice_ingress) };
    e = bpf_tc_attach(&s->hook, &s->opts);
    if (e) {
        *err = e;
        goto fail;
    }
    s->events = ring_buffer__new(bpf_map__fd(s->skel->maps.rs_events), on_ring_event, s, NULL);
    if (!s->events) {
        *err = -errno;
        goto fail;
    }
    return s;
fail:
    rs_splicer_close(s);
    return NULL;
}

void rs_splicer_close(struct rs_splicer *s)
{
    if (!s)
        return;
    if (s->opts.prog_id) {
        s->opts.prog_fd = s->opts.prog_id = 0;
        s->opts.flags = 0;
        bpf_tc_detach(&s->hook, &s->opts);
    }
    if (s->hook_created)
        bpf_tc_hook_destroy(&s->hook);
    ring_buffer__free(s->events);
    rs_splice__destroy(s->skel);
    free(s);
}

int rs_splicer_ifindex(const struct rs_splicer *s)
{
    return s->ifindex;
}

int rs_splicer_events_fd(struct rs_splicer *s)
{
    return ring_buffer__epoll_fd(s->events);
}

int rs_splicer_poll_events(struct rs_splicer *s, rs_splicer_event_cb cb, void *arg)
{
    s->cb = cb;
    s->cb_arg = arg;
    return ring_buffer__consume(s->events);
}

struct rs_flow_key rs_flow_key_from(struct rs_addr src, struct rs_addr dst)
{
    return (struct rs_flow_key){ .saddr = htonl(src.ip), .daddr = htonl(dst.ip),
                                 .sport = htons(src.port), .dport = htons(dst.port) };
}

int rs_splicer_watch(struct rs_splicer *s, const struct rs_flow_key *k, uint64_t id)
{
    struct rs_flow f = { .state = RS_FLOW_WATCH, .splice_id = id, .ifindex = (rs_u32)s->ifindex };
    struct rs_flow_track t = { 0 };

    /* The track half first: the tc program needs both once the config exists. */
    if (bpf_map_update_elem(s->track_fd, k, &t, BPF_ANY) || bpf_map_update_elem(s->map_fd, k, &f, BPF_ANY)) {
        int e = -errno;
        bpf_map_delete_elem(s->track_fd, k);
        return e;
    }
    return 0;
}

int rs_splicer_get(struct rs_splicer *s, const struct rs_flow_key *k, struct rs_flow_info *out)
{
    if (bpf_map_lookup_elem(s->map_fd, k, &out->cfg))
        return -errno;
    if (bpf_map_lookup_elem(s->track_fd, k, &out->t))
        memset(&out->t, 0, sizeof(out->t));
    return 0;
}

/* Sets the 32-bit field at 'off' of entry 'k''s config to 'v'.  The daemon
 * is the only writer of rs_flows, so a read-modify-write loses nothing. */
static int cfg_set(struct rs_splicer *s, const struct rs_flow_key *k, size_t off, uint32_t v)
{
    struct rs_flow f;

    if (bpf_map_lookup_elem(s->map_fd, k, &f))
        return -errno;
    if (!memcmp((char *)&f + off, &v, sizeof(v)))
        return 0;
    memcpy((char *)&f + off, &v, sizeof(v));
    return bpf_map_update_elem(s->map_fd, k, &f, BPF_EXIST) ? -errno : 0;
}

int rs_splicer_set_state(struct rs_splicer *s, const struct rs_flow_key *k, uint32_t state)
{
    return cfg_set(s, k, offsetof(struct rs_flow, state), state);
}

int rs_splicer_activate(struct rs_splicer *s, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                        uint64_t id, uint32_t state, bool guard, const struct rs_flow_key *peer)
{
    struct rs_flow f;
    struct rs_flow_track t = { 0 };

    if (bpf_map_lookup_elem(s->map_fd, k, &f)) {
        memset(&f, 0, sizeof(f));
        if (bpf_map_update_elem(s->track_fd, k, &t, BPF_NOEXIST) && errno != EEXIST)
            return -errno;
    }
    f.dir = *d;
    f.state = state;
    f.guard = guard;
    f.clamp_ack = 0;
    f.acks_to_stack = 0;
    f.pass_fin = 0;
    f.ack_watch = f.ack_watch_gen = 0;
    f.gen++;
    f.splice_id = id;
    f.ifindex = (rs_u32)s->ifindex;
    if (peer)
        f.peer = *peer;
    return bpf_map_update_elem(s->map_fd, k, &f, BPF_ANY) ? -errno : 0;
}

int rs_splicer_acks_to_stack(struct rs_splicer *s, const struct rs_flow_key *k, bool on)
{
    return cfg_set(s, k, offsetof(struct rs_flow, acks_to_stack), on);
}

int rs_splicer_pass_fin(struct rs_splicer *s, const struct rs_flow_key *k)
{
    return cfg_set(s, k, offsetof(struct rs_flow, pass_fin), 1);
}

int rs_splicer_clamp_ack(struct rs_splicer *s, const struct rs_flow_key *k)
{
    return cfg_set(s, k, offsetof(struct rs_flow, clamp_ack), 1);
}

int rs_splicer_watch_ack(struct rs_splicer *s, const struct rs_flow_key *k, uint32_t ack, uint32_t *gen)
{
    struct rs_flow f;
    struct rs_flow_track t;

    if (bpf_map_lookup_elem(s->map_fd, k, &f))
        return -errno;
    f.ack_watch = ack;
    f.ack_watch_gen = ++s->watch_gen ? s->watch_gen : ++s->watch_gen;
    *gen = f.ack_watch_gen;
    if (bpf_map_update_elem(s->map_fd, k, &f, BPF_EXIST))
        return -errno;
    /* An ACK that came before the watch was armed raises no event. */
    if (!bpf_map_lookup_elem(s->track_fd, k, &t) && t.has_ack && rs_seq_ge(t.ack_max, ack))
        return 1;
    return 0;
}

int rs_splicer_remove(struct rs_splicer *s, const struct rs_flow_key *k)
{
    int e = bpf_map_delete_elem(s->map_fd, k) && errno != ENOENT ? -errno : 0;

    bpf_map_delete_elem(s->track_fd, k);
    return e;
}

/* ---- TCP_REPAIR ------------------------------------------------------------ */

int rs_repair_on(int fd)
{
    int one = 1;

    return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one)) ? -errno : 0;
}

int rs_repair_off(int fd)
{
    int zero = 0;

    return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &zero, sizeof(zero)) ? -errno : 0;
}

static int queue_seq(int fd, int queue, uint32_t *seq)
{
    socklen_t len = sizeof(*seq);

    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue)))
        return -errno;
    return getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, seq, &len) ? -errno : 0;
}

int rs_repair_read(int fd, struct rs_addr local, struct rs_addr remote, struct rs_splice_conn *c)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    uint32_t ts = 0;
    int e;

    memset(c, 0, sizeof(*c));
    c->local_addr = local.ip;
    c->remote_addr = remote.ip;
    c->local_port = local.port;
    c->remote_port = remote.port;
    if ((e = queue_seq(fd, TCP_SEND_QUEUE, &c->snd_nxt)) || (e = queue_seq(fd, TCP_RECV_QUEUE, &c->rcv_nxt)))
        return e;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
        return -errno;
    c->ts_ok = !!(ti.tcpi_options & TCPI_OPT_TIMESTAMPS);
    c->sack_ok = !!(ti.tcpi_options & TCPI_OPT_SACK);
    if (ti.tcpi_options & TCPI_OPT_WSCALE) {
        c->snd_wscale = ti.tcpi_snd_wscale;
        c->rcv_wscale = ti.tcpi_rcv_wscale;
    }
    len = sizeof(ts);
    if (c->ts_ok && getsockopt(fd, IPPROTO_TCP, TCP_TIMESTAMP, &ts, &len))
        return -errno;
    c->ts_now = ts;
    return 0;
}

void rs_close_silently(int fd)
{
    if (fd < 0)
        return;
    rs_repair_on(fd);   /* a socket in repair mode closes without a FIN or RST */
    close(fd);
}

int rs_sock_queued(int fd)
{
    int in = 0, out = 0;

    if (ioctl(fd, SIOCINQ, &in) || ioctl(fd, SIOCOUTQ, &out))
        return -errno;
    return in + out;
}

/* ---- Clean ends -------------------------------------------------------------- */

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

int rs_send_rst(int rawfd, struct rs_addr from, struct rs_addr to, uint32_t seq)
{
    uint8_t pkt[40] = { 0 };
    struct sockaddr_in dst = rs_addr_sin(to);
    uint32_t sum = 0;

    pkt[0] = 0x45;
    rs_splice_store16(pkt + 2, sizeof(pkt));
    pkt[8] = 64;
    pkt[9] = IPPROTO_TCP;
    rs_splice_store32(pkt + 12, from.ip);
    rs_splice_store32(pkt + 16, to.ip);     /* the kernel fills in the id and the IP checksum */
    rs_splice_store16(pkt + 20, from.port);
    rs_splice_store16(pkt + 22, to.port);
    rs_splice_store32(pkt + 24, seq);
    pkt[32] = 5 << 4;
    pkt[33] = 0x04;                         /* RST */
    /* TCP checksum over the pseudo header and the 20-byte header. */
    sum += (from.ip >> 16) + (from.ip & 0xffff) + (to.ip >> 16) + (to.ip & 0xffff) + IPPROTO_TCP + 20;
    for (int i = 20; i < 40; i += 2)
        sum += rs_splice_load16(pkt + i);
    rs_splice_store16(pkt + 36, csum_fold(sum));
    return sendto(rawfd, pkt, sizeof(pkt), 0, (struct sockaddr *)&dst, sizeof(dst)) == (ssize_t)sizeof(pkt) ? 0
                                                                                                           : -errno;
}
