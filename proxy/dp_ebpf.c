/* The "ebpf" data path (datapath.h): the tc clsact program of proxy/bpf/,
 * embedded as a libbpf skeleton, attached at the interface's ingress; the
 * splice table is its maps (rs_flows written here, rs_track by the
 * program), its events a ring buffer.
 *
 * This process is rs_flows' only writer (the program only reads it), so
 * it keeps a copy of each entry it wrote or read: a change is one update,
 * not a lookup and an update, and reading an entry's configuration costs
 * no syscall (a splice makes a dozen fewer).  An entry not in the copy,
 * one a predecessor left, is read from the map once. */
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

#include "datapath.h"
#include "daemon.h"
#include "seq.h"
#include "splice.skel.h"

#define COPY_BUCKETS 16384u
#define HOLD_MAX 8      /* changes held for one flush (a splice makes 2; more flush early) */

/* The copy of one rs_flows entry. */
struct flow_copy {
    struct flow_copy *next;
    struct rs_flow_key k;
    struct rs_flow f;
};

struct dp_ebpf {
    struct px_datapath dp;      /* first: the daemon's handle */
    struct flow_copy *copy[COPY_BUCKETS];
    struct rs_splice *skel;
    struct ring_buffer *events;
    struct ring_buffer *quiet;          /* rs_events_quiet (read first, never woken by) */
    struct bpf_tc_hook hook;
    struct bpf_tc_opts opts;
    int ifindex;
    int map_fd, track_fd;
    uint32_t watch_gen;
    bool complete;              /* every entry of rs_flows has its copy: a miss is no entry */
    bool holding;               /* changes wait here for ebpf_flush: */
    unsigned nheld, nheld_t;
    struct rs_flow_key held_k[HOLD_MAX];
    struct rs_flow held_f[HOLD_MAX];
    struct rs_flow_key held_tk[HOLD_MAX];   /* new WATCH entries' track halves, written after */
    bool hook_created;
    px_dp_event_cb cb;
    void *cb_arg;
};

/* ---- The copy of rs_flows ------------------------------------------------ */

static struct flow_copy **copy_slot(struct dp_ebpf *s, const struct rs_flow_key *k)
{
    uint32_t h = (k->saddr * 2654435761u) ^ (k->daddr * 2246822519u) ^ ((uint32_t)k->sport << 16 | k->dport);
    struct flow_copy **c = &s->copy[(h ^ h >> 15) % COPY_BUCKETS];

    while (*c && memcmp(&(*c)->k, k, sizeof(*k)))
        c = &(*c)->next;
    return c;
}

static void copy_forget(struct dp_ebpf *s, const struct rs_flow_key *k)
{
    struct flow_copy **c = copy_slot(s, k), *gone = *c;

    if (gone) {
        *c = gone->next;
        free(gone);
    }
}

/* Keeps 'f' as entry 'k''s copy.  Without memory for it the copy is
 * dropped: the entry is then read from the map. */
static void copy_keep(struct dp_ebpf *s, const struct rs_flow_key *k, const struct rs_flow *f)
{
    struct flow_copy **c = copy_slot(s, k);

    if (!*c && (*c = calloc(1, sizeof(**c))))
        (*c)->k = *k;
    if (*c)
        (*c)->f = *f;
    else
        s->complete = false;
}

/* Copies every entry the table holds (a predecessor's, when adopted).
 * Returns whether the copy is complete. */
static bool copy_load(struct dp_ebpf *s)
{
    struct rs_flow_key k, prev;
    struct rs_flow f;
    bool first = true;

    s->complete = true;
    while (!bpf_map_get_next_key(s->map_fd, first ? NULL : &prev, &k)) {
        if (!bpf_map_lookup_elem(s->map_fd, &k, &f))
            copy_keep(s, &k, &f);
        prev = k;
        first = false;
    }
    return s->complete;
}

/* Entry 'k''s configuration.  Returns 0 or -errno (-ENOENT: no entry). */
static int cfg_read(struct dp_ebpf *s, const struct rs_flow_key *k, struct rs_flow *f)
{
    struct flow_copy *c = *copy_slot(s, k);

    if (c) {
        *f = c->f;
        return 0;
    }
    if (s->complete)
        return -ENOENT;
    if (bpf_map_lookup_elem(s->map_fd, k, f))
        return -errno;
    copy_keep(s, k, f);
    return 0;
}

/* After a failed write of 'k': the copy no longer knows what the map holds. */
static void copy_lost(struct dp_ebpf *s, const struct rs_flow_key *k, int e)
{
    copy_forget(s, k);
    if (e != -ENOENT && e != -E2BIG)    /* not "no such entry": it may still be there */
        s->complete = false;
}

static int ebpf_flush(struct px_datapath *dp);

/* Where 'k' is among the 'n' held keys 'keys'; 'n' when it is not. */
static unsigned held_find(const struct rs_flow_key *keys, unsigned n, const struct rs_flow_key *k)
{
    unsigned i = 0;

    while (i < n && memcmp(&keys[i], k, sizeof(*k)))
        i++;
    return i;
}

/* Room for one more in a held list of 'n': a full one is flushed first
 * (and the holding goes on).  Returns 0 or -errno. */
static int held_room(struct dp_ebpf *s, unsigned n)
{
    int e;

    if (n < HOLD_MAX)
        return 0;
    e = ebpf_flush(&s->dp);
    s->holding = true;
    return e;
}

/* Writes entry 'k' ('flags' as for bpf_map_update_elem; BPF_F_LOCK always),
 * or, while changes are held, replaces the one held for 'k' or queues it.
 * (A held change is written with BPF_ANY: the callers that ask for
 * BPF_EXIST have read the entry from the copy first, and this process is
 * the map's only writer.) */
static int cfg_write(struct dp_ebpf *s, const struct rs_flow_key *k, const struct rs_flow *f, uint64_t flags)
{
    if (s->holding) {
        unsigned i = held_find(s->held_k, s->nheld, k);
        int e;

        if (i == s->nheld) {
            if ((e = held_room(s, s->nheld)) != 0)
                return e;
            i = s->nheld++;
            s->held_k[i] = *k;
        }
        s->held_f[i] = *f;
        copy_keep(s, k, f);
        return 0;
    }
    if (bpf_map_update_elem(s->map_fd, k, f, flags | BPF_F_LOCK)) {
        int e = -errno;
        copy_lost(s, k, e);
        return e;
    }
    copy_keep(s, k, f);
    return 0;
}

static void ebpf_hold(struct px_datapath *dp)
{
    ((struct dp_ebpf *)dp)->holding = true;
}

/* The held configurations in one BPF_MAP_UPDATE_BATCH (element by
 * element, in the order they were first made), then the fresh track
 * halves of new WATCH entries in another. */
static int ebpf_flush(struct px_datapath *dp)
{
    static const struct rs_flow_track fresh[HOLD_MAX];
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = BPF_F_LOCK);
    LIBBPF_OPTS(bpf_map_batch_opts, topts);
    uint32_t held = s->nheld, done = held, tracks = s->nheld_t;
    int e = 0;

    s->holding = false;
    s->nheld = s->nheld_t = 0;
    if (held == 1 && bpf_map_update_elem(s->map_fd, &s->held_k[0], &s->held_f[0], BPF_F_LOCK))
        e = -errno, done = 0;
    else if (held > 1 && bpf_map_update_batch(s->map_fd, s->held_k, s->held_f, &done, &opts))
        e = -errno;     /* 'done': how many were written */
    for (uint32_t i = done; e && i < held; i++)
        copy_lost(s, &s->held_k[i], e);
    /* The track halves after their configurations (ebpf_watch says why);
     * none when those failed (the caller removes the entries). */
    if (!e && tracks && bpf_map_update_batch(s->track_fd, s->held_tk, fresh, &tracks, &topts))
        e = -errno;
    return e;
}

/* Forgets the change held for 'k' in 'keys' (and its value in 'vals', of
 * 'vsize' bytes each), if any. */
static void held_drop(struct rs_flow_key *keys, void *vals, size_t vsize, unsigned *n, const struct rs_flow_key *k)
{
    unsigned i = held_find(keys, *n, k);

    if (i == *n)
        return;
    memmove(&keys[i], &keys[i + 1], (*n - i - 1) * sizeof(*k));
    if (vals)
        memmove((char *)vals + i * vsize, (char *)vals + (i + 1) * vsize, (*n - i - 1) * vsize);
    --*n;
}

static int libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_DEBUG)
        return 0;
    return vfprintf(stderr, fmt, ap);
}

static int on_ring_event(void *ctx, void *data, size_t len)
{
    struct dp_ebpf *s = ctx;

    if (len >= sizeof(struct rs_flow_event) && s->cb)
        s->cb(s->cb_arg, data);
    return 0;
}

static int ebpf_set_vip(struct px_datapath *dp, uint32_t ip, uint16_t port, uint64_t lease_ns, bool listens)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_vip v = { .addr = htonl(ip), .port = htons(port), .listens = listens, .lease_ns = lease_ns };
    uint32_t zero = 0;

    return bpf_map_update_elem(bpf_map__fd(s->skel->maps.rs_vips), &zero, &v, BPF_ANY) ? -errno : 0;
}

static int ebpf_client_ts(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t *ts)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    int fd = bpf_map__fd(s->skel->maps.rs_ts);

    /* Left in place: the map is an LRU one, and a new connection's SYN
     * writes its entry afresh (a delete was a syscall per connection). */
    return bpf_map_lookup_elem(fd, k, ts) ? -errno : 0;
}

static void ebpf_close(struct px_datapath *dp, bool keep);
static int ebpf_remove(struct px_datapath *dp, const struct rs_flow_key *k, struct rs_flow_track *last);

/* The program a predecessor left at our place on the interface: its maps
 * become ours (bpf_map__reuse_fd, before the load), so the entries stay
 * while the new program replaces the old one.  Nothing is taken over when
 * there is none, or when a map differs (another version of the table):
 * the replacement then starts with an empty table.  Returns the number of
 * maps taken over. */
static int reuse_maps(struct dp_ebpf *s)
{
    LIBBPF_OPTS(bpf_tc_opts, q, .handle = 1, .priority = 1);
    struct bpf_prog_info pinfo = { 0 };
    uint32_t ids[16], plen = sizeof(pinfo);
    int pfd, fds[16], n = 0, ok = 1;

    if (bpf_tc_query(&s->hook, &q) || !q.prog_id || (pfd = bpf_prog_get_fd_by_id(q.prog_id)) < 0)
        return 0;
    pinfo.nr_map_ids = 16;
    pinfo.map_ids = (uint64_t)(uintptr_t)ids;
    if (bpf_obj_get_info_by_fd(pfd, &pinfo, &plen) || pinfo.nr_map_ids > 16)
        ok = 0;
    close(pfd);
    for (uint32_t i = 0; ok && i < pinfo.nr_map_ids; i++) {
        struct bpf_map_info mi = { 0 };
        uint32_t mlen = sizeof(mi);
        struct bpf_map *m;
        int fd = bpf_map_get_fd_by_id(ids[i]);

        if (fd < 0 || bpf_obj_get_info_by_fd(fd, &mi, &mlen)) {
            if (fd >= 0)
                close(fd);
            ok = 0;
            break;
        }
        fds[n++] = fd;
        m = bpf_object__find_map_by_name(s->skel->obj, mi.name);
        if (!m || strncmp(mi.name, "rs_", 3))
            continue;       /* the program's own data sections: fresh ones */
        if (bpf_map__type(m) != mi.type || bpf_map__key_size(m) != mi.key_size
            || bpf_map__value_size(m) != mi.value_size || bpf_map__max_entries(m) != mi.max_entries)
            ok = 0;
    }
    for (int i = 0; ok && i < n; i++) {
        struct bpf_map_info mi = { 0 };
        uint32_t mlen = sizeof(mi);
        struct bpf_map *m;

        if (!bpf_obj_get_info_by_fd(fds[i], &mi, &mlen) && !strncmp(mi.name, "rs_", 3)
            && (m = bpf_object__find_map_by_name(s->skel->obj, mi.name)) && bpf_map__reuse_fd(m, fds[i]))
            ok = 0;
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);      /* reuse_fd keeps its own copy */
    if (!ok) {
        rs_log("ebpf: the program attached to ifindex %d has another table layout: not taken over", s->ifindex);
        return 0;
    }
    return n;
}

static struct px_datapath *ebpf_open(const char *ifname, bool adopt, uint64_t event_ring, int *err)
{
    struct dp_ebpf *s = calloc(1, sizeof(*s));
    int e;

    if (!s) {
        *err = -ENOMEM;
        return NULL;
    }
    s->dp.ops = &px_dp_ebpf;
    libbpf_set_print(libbpf_quiet);
    s->ifindex = (int)if_nametoindex(ifname);
    if (!s->ifindex) {
        *err = -ENODEV;
        goto fail;
    }
    s->skel = rs_splice__open();
    if (!s->skel) {
        *err = -errno ? -errno : -EINVAL;
        goto fail;
    }
    {
        LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = s->ifindex, .attach_point = BPF_TC_INGRESS);
        s->hook = hook;
    }
    if (event_ring && ((e = bpf_map__set_max_entries(s->skel->maps.rs_events, (uint32_t)event_ring)) != 0
                       || (e = bpf_map__set_max_entries(s->skel->maps.rs_events_quiet, (uint32_t)event_ring)) != 0)) {
        *err = e;
        goto fail;
    }
    if (adopt && reuse_maps(s))
        rs_log("ebpf: took over the splice table of the program attached to %s", ifname);
    if ((e = rs_splice__load(s->skel)) != 0) {
        *err = e;
        goto fail;
    }
    s->map_fd = bpf_map__fd(s->skel->maps.rs_flows);
    s->track_fd = bpf_map__fd(s->skel->maps.rs_track);
    if (!copy_load(s))
        rs_log("ebpf: no memory for a copy of the splice table: entries are read from it");
    {
        /* REPLACE: a proxy killed (or stopped to hand over) on this
         * interface left its program attached (tc filters outlive their
         * process); this one takes its place atomically. */
        LIBBPF_OPTS(bpf_tc_opts, opts, .handle = 1, .priority = 1, .flags = BPF_TC_F_REPLACE,
                    .prog_fd = bpf_program__fd(s->skel->progs.rs_splice_ingress));
        s->opts = opts;
    }
    e = bpf_tc_hook_create(&s->hook);
    if (e && e != -EEXIST) {
        *err = e;
        goto fail;
    }
    s->hook_created = e == 0;
    e = bpf_tc_attach(&s->hook, &s->opts);
    if (e) {
        *err = e;
        goto fail;
    }
    s->events = ring_buffer__new(bpf_map__fd(s->skel->maps.rs_events), on_ring_event, s, NULL);
    s->quiet = ring_buffer__new(bpf_map__fd(s->skel->maps.rs_events_quiet), on_ring_event, s, NULL);
    if (!s->events || !s->quiet) {
        *err = -errno;
        goto fail;
    }
    return &s->dp;
fail:
    ebpf_close(&s->dp, false);
    return NULL;
}

static void ebpf_close(struct px_datapath *dp, bool keep)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;

    if (!s)
        return;
    if (keep)
        s->opts.prog_id = 0, s->hook_created = false;   /* the filter keeps program and maps alive */
    if (s->opts.prog_id) {
        s->opts.prog_fd = s->opts.prog_id = 0;
        s->opts.flags = 0;
        bpf_tc_detach(&s->hook, &s->opts);
    }
    if (s->hook_created)
        bpf_tc_hook_destroy(&s->hook);
    ring_buffer__free(s->events);
    ring_buffer__free(s->quiet);
    rs_splice__destroy(s->skel);
    for (unsigned b = 0; b < COPY_BUCKETS; b++)
        for (struct flow_copy *c = s->copy[b], *next; c; c = next) {
            next = c->next;
            free(c);
        }
    free(s);
}

static int ebpf_events_fd(struct px_datapath *dp)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    return ring_buffer__epoll_fd(s->events);
}

static int ebpf_poll_quiet(struct px_datapath *dp, px_dp_event_cb cb, void *arg)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;

    s->cb = cb;
    s->cb_arg = arg;
    return ring_buffer__consume(s->quiet);
}

static int ebpf_poll_events(struct px_datapath *dp, px_dp_event_cb cb, void *arg)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    /* The quiet ring first: a connection's RS_FLOW_OPENED was written
     * before any later event of it. */
    int n = ebpf_poll_quiet(dp, cb, arg);

    return n < 0 ? n : ring_buffer__consume(s->events);
}

static int ebpf_watch(struct px_datapath *dp, const struct rs_flow_key *k, uint64_t id)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow f = { .state = RS_FLOW_WATCH, .splice_id = id, .ifindex = (rs_u32)s->ifindex };
    struct rs_flow_track t = { 0 };

    /* The configuration first: a WATCH entry sends every segment to the
     * stack, with or without its track half.  The other order left an
     * instant where a 4-tuple used again (a client port in TIME_WAIT reused)
     * had a fresh track under the old connection's ACTIVE configuration,
     * which translated the new connection's request to the old backend
     * port, whose RST reset the client (seen once in ~15000 connections
     * of make bench-splice). */
    int e = cfg_write(s, k, &f, BPF_ANY);

    if (e)
        return e;
    if (s->holding) {
        /* (All track halves go after all configurations: their own order
         * does not matter.) */
        if (held_find(s->held_tk, s->nheld_t, k) == s->nheld_t) {
            if ((e = held_room(s, s->nheld_t)) != 0)
                return e;
            s->held_tk[s->nheld_t++] = *k;
        }
        return 0;
    }
    if (bpf_map_update_elem(s->track_fd, k, &t, BPF_ANY)) {
        e = -errno;
        ebpf_remove(dp, k, NULL);
    }
    return e;
}

static int ebpf_get(struct px_datapath *dp, const struct rs_flow_key *k, struct px_flow_info *out)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    int e = cfg_read(s, k, &out->cfg);

    if (e)
        return e;
    if (bpf_map_lookup_elem(s->track_fd, k, &out->t))
        memset(&out->t, 0, sizeof(out->t));
    return 0;
}

static int ebpf_set(struct px_datapath *dp, const struct rs_flow_key *k, enum px_dp_field field, uint32_t v)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow f;
    int e = cfg_read(s, k, &f);

    if (e)
        return e;
    if (*px_flow_field(&f, field) == v)
        return 0;
    *px_flow_field(&f, field) = v;
    return cfg_write(s, k, &f, BPF_EXIST);
}

static int ebpf_activate(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                         uint64_t id, uint32_t state, bool guard, const struct rs_flow_key *peer)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow f;
    struct rs_flow_track t = { 0 };

    if (cfg_read(s, k, &f)) {
        memset(&f, 0, sizeof(f));
        if (bpf_map_update_elem(s->track_fd, k, &t, BPF_NOEXIST) && errno != EEXIST)
            return -errno;
    }
    px_flow_activate(&f, d, id, state, guard, peer, (uint32_t)s->ifindex);
    return cfg_write(s, k, &f, BPF_ANY);
}

static int ebpf_watch_ack(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t ack, uint32_t *gen)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow f;
    struct rs_flow_track t;
    int e = cfg_read(s, k, &f);

    if (e)
        return e;
    /* Usually the ACK is there already (the stack answers a segment as
     * it is sent): no watch then. */
    if (!bpf_map_lookup_elem(s->track_fd, k, &t) && t.pos.has_ack && rs_seq_ge(t.pos.ack_max, ack))
        return 1;
    *gen = px_flow_watch_ack(&f, ack, &s->watch_gen);
    if ((e = cfg_write(s, k, &f, BPF_EXIST)) != 0)
        return e;
    /* An ACK that came before the watch was armed raises no event. */
    if (!bpf_map_lookup_elem(s->track_fd, k, &t) && t.pos.has_ack && rs_seq_ge(t.pos.ack_max, ack))
        return 1;
    return 0;
}

static int ebpf_remove(struct px_datapath *dp, const struct rs_flow_key *k, struct rs_flow_track *last)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    int e;

    /* A held change would bring it back. */
    held_drop(s->held_k, s->held_f, sizeof(s->held_f[0]), &s->nheld, k);
    held_drop(s->held_tk, NULL, 0, &s->nheld_t, k);
    e = bpf_map_delete_elem(s->map_fd, k) && errno != ENOENT ? -errno : 0;
    copy_forget(s, k);
    if (e)
        s->complete = false;
    if (!last)
        bpf_map_delete_elem(s->track_fd, k);
    else if (bpf_map_lookup_and_delete_elem(s->track_fd, k, last))
        memset(last, 0, sizeof(*last));
    return e;
}

static int ebpf_put(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow *f)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow mine = *f;
    /* Idle since now (no segment seen yet here is no idleness of its own). */
    struct rs_flow_track t = { .last_ns = rs_mono_ns() };

    mine.ifindex = (rs_u32)s->ifindex;
    /* Another proxy's entry is a daemon's here, whoever made it: its track
     * starts afresh, without the SYNs a splice made at the SYN waits for
     * (a bare ACK would be taken for an old connection's). */
    mine.at_syn = 0;
    if (bpf_map_update_elem(s->track_fd, k, &t, BPF_NOEXIST) && errno != EEXIST)
        return -errno;
    return cfg_write(s, k, &mine, BPF_ANY);
}

static int ebpf_set_conn(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow_conn *c)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow f;
    int e = cfg_read(s, k, &f);

    if (e)
        return e;
    f.conn = *c;
    return cfg_write(s, k, &f, BPF_EXIST);
}

static int ebpf_next_key(struct px_datapath *dp, const struct rs_flow_key *prev, struct rs_flow_key *next)
{
    return bpf_map_get_next_key(((struct dp_ebpf *)dp)->map_fd, prev, next) ? -errno : 0;
}

/* ---- Splicing at the SYN ---------------------------------------------------- */

static int ebpf_syn_setup(struct px_datapath *dp, const struct rs_syn_cfg *cfg, const uint16_t *ports, size_t n)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    int qfd = bpf_map__fd(s->skel->maps.rs_syn_ports), ifd = bpf_map__fd(s->skel->maps.rs_syn_ids);
    struct rs_syn_cfg c = *cfg;
    struct rs_flow_key k, prev;
    struct rs_flow f;
    uint64_t id = 0, above = RS_SYN_ID_BASE;
    uint32_t zero = 0;
    uint16_t port;
    uint8_t *used = calloc(65536, 1);
    bool first = true;

    if (!used)
        return -ENOMEM;
    /* The ports of the table's entries towards the backend stay taken
     * (a predecessor's connections, adopted), and so do their splice ids:
     * a pair's other proxy's program numbered its own from the same base,
     * and a new splice with an adopted one's id would be taken for it. */
    while (ports && !bpf_map_get_next_key(s->map_fd, first ? NULL : &prev, &k)) {
        if (k.daddr == cfg->local_addr)
            used[ntohs(k.dport)] = 1;     /* a client's entry marks the VIP's port: not in the pool */
        if (!cfg_read(s, &k, &f) && f.splice_id >= above)
            above = f.splice_id + 1;
        prev = k;
        first = false;
    }
    while (ports && !bpf_map_lookup_and_delete_elem(qfd, NULL, &port))
        ;
    for (size_t i = 0; i < n; i++)
        if (!used[ports[i]] && bpf_map_update_elem(qfd, NULL, &ports[i], BPF_ANY)) {
            free(used);
            return -errno;
        }
    free(used);
    if (bpf_map_lookup_elem(ifd, &zero, &id) || id < above) {
        id = above;
        if (bpf_map_update_elem(ifd, &zero, &id, BPF_ANY))
            return -errno;
    }
    c.ifindex = (rs_u32)s->ifindex;
    return bpf_map_update_elem(bpf_map__fd(s->skel->maps.rs_syn), &zero, &c, BPF_ANY) ? -errno : 0;
}

static int ebpf_syn_port_put(struct px_datapath *dp, uint16_t port)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;

    return bpf_map_update_elem(bpf_map__fd(s->skel->maps.rs_syn_ports), NULL, &port, BPF_ANY) ? -errno : 0;
}

static int ebpf_learn(struct px_datapath *dp, const struct rs_flow_key *k)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    struct rs_flow f;

    if (bpf_map_lookup_elem(s->map_fd, k, &f))
        return -errno;
    copy_keep(s, k, &f);
    return 0;
}

static int ebpf_replay(struct px_datapath *dp, const uint8_t *in, uint32_t len, uint8_t *out, uint32_t *out_len)
{
    struct dp_ebpf *s = (struct dp_ebpf *)dp;
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in, .data_size_in = len, .data_out = out,
                .data_size_out = *out_len, .repeat = 1);

    if (bpf_prog_test_run_opts(bpf_program__fd(s->skel->progs.rs_splice_ingress), &o))
        return -errno;
    *out_len = o.data_size_out;
    return (int)o.retval;
}

const struct px_datapath_ops px_dp_ebpf = {
    .name = "ebpf",
    .open = ebpf_open,
    .close = ebpf_close,
    .set_vip = ebpf_set_vip,
    .client_ts = ebpf_client_ts,
    .events_fd = ebpf_events_fd,
    .poll_events = ebpf_poll_events,
    .poll_quiet = ebpf_poll_quiet,
    .watch = ebpf_watch,
    .get = ebpf_get,
    .set = ebpf_set,
    .activate = ebpf_activate,
    .watch_ack = ebpf_watch_ack,
    .remove = ebpf_remove,
    .put = ebpf_put,
    .set_conn = ebpf_set_conn,
    .next_key = ebpf_next_key,
    .syn_setup = ebpf_syn_setup,
    .syn_port_put = ebpf_syn_port_put,
    .learn = ebpf_learn,
    .replay = ebpf_replay,
    .hold = ebpf_hold,
    .flush = ebpf_flush,
};
