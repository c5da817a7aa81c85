/* The "kmod" data path (datapath.h): the seed's kernel module
 * kmod/tcpspmod.c, driven over generic netlink with libnl-3 (the protocol:
 * tcpsp.h).  Its table is the tc program's, entry for entry, kept by the
 * module per interface; its events come on the family's multicast group,
 * on a socket of their own.  The module must be loaded (modprobe
 * rs_tcpspmod, or insmod build/kmod/rs_tcpspmod.ko). */
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>

#include "datapath.h"
#include "daemon.h"
#include "seq.h"
#include "tcpsp.h"

#define EVENTS_RCVBUF (8 * 1024 * 1024)     /* a burst of 100k events, as the ring buffer holds */

struct dp_kmod {
    struct px_datapath dp;      /* first: the daemon's handle */
    struct nl_sock *req;        /* requests and their answers */
    struct nl_sock *ev;         /* the events group */
    int family;
    uint32_t ifindex;
    uint32_t watch_gen;
    uint64_t events_lost;
    px_dp_event_cb cb;
    void *cb_arg;
};

/* One request's outcome: the kernel's errno, and the attributes answered. */
struct answer {
    int err;
    bool done;
    struct nlattr *tb[RS_TCPSP_A_COUNT];
    struct nl_msg *msg;         /* holds what tb points into */
};

static int on_answer(struct nl_msg *msg, void *arg)
{
    struct answer *a = arg;

    if (!a->msg && !genlmsg_parse(nlmsg_hdr(msg), 0, a->tb, RS_TCPSP_A_COUNT - 1, NULL)) {
        nlmsg_get(msg);
        a->msg = msg;
    }
    return NL_OK;
}

static int on_error(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg)
{
    struct answer *a = arg;

    (void)nla;
    a->err = e->error;
    a->done = true;
    return NL_STOP;
}

static int on_ack(struct nl_msg *msg, void *arg)
{
    struct answer *a = arg;

    (void)msg;
    a->done = true;
    return NL_STOP;
}

/* Attribute 'type' of answer 'a' into 'dst' ('len' bytes, its exact size). */
static int take(const struct answer *a, int type, void *dst, size_t len)
{
    if (!a->tb[type] || (size_t)nla_len(a->tb[type]) != len)
        return -EPROTO;
    memcpy(dst, nla_data(a->tb[type]), len);
    return 0;
}

/* Sends command 'cmd' for our interface with 'n' more attributes, given
 * as (int type, const void *value) pairs after 'n' (each of its size in
 * tcpsp.h), and waits for its answer in '*a' (release it with done()).
 * Returns 0, or the kernel's negative errno. */
static int request(struct dp_kmod *s, uint8_t cmd, struct answer *a, int n, ...)
{
    struct nl_msg *msg = nlmsg_alloc();
    struct nl_cb *cb;
    va_list ap;
    int e = 0;

    memset(a, 0, sizeof(*a));
    if (!msg)
        return -ENOMEM;
    if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, s->family, 0, 0, cmd, RS_TCPSP_VERSION)
        || nla_put_u32(msg, RS_TCPSP_A_IFINDEX, s->ifindex))
        e = -EMSGSIZE;
    va_start(ap, n);
    for (int i = 0; i < n && !e; i++) {
        int type = va_arg(ap, int);
        const void *v = va_arg(ap, const void *);

        if (nla_put(msg, type, (int)rs_tcpsp_attr_size((rs_u32)type), v))
            e = -EMSGSIZE;
    }
    va_end(ap);
    if (!e && nl_send_auto(s->req, msg) < 0)
        e = -EIO;
    nlmsg_free(msg);
    if (e)
        return e;
    cb = nl_cb_clone(nl_socket_get_cb(s->req));
    if (!cb)
        return -ENOMEM;
    nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, on_answer, a);
    nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, on_ack, a);
    nl_cb_err(cb, NL_CB_CUSTOM, on_error, a);
    while (!a->done && !e)
        if (nl_recvmsgs(s->req, cb) < 0 && !a->done)
            e = -EIO;
    nl_cb_put(cb);
    return e ? e : a->err;
}

static void done(struct answer *a)
{
    if (a->msg)
        nlmsg_free(a->msg);
}

static int kmod_get(struct px_datapath *dp, const struct rs_flow_key *k, struct px_flow_info *out)
{
    struct answer a;
    int e = request((struct dp_kmod *)dp, RS_TCPSP_C_GET, &a, 1, RS_TCPSP_A_KEY, k);

    if (!e && (e = take(&a, RS_TCPSP_A_FLOW, &out->cfg, sizeof(out->cfg))) == 0)
        e = take(&a, RS_TCPSP_A_TRACK, &out->t, sizeof(out->t));
    done(&a);
    return e;
}

/* Writes daemon half 'f' of 'k' (flags RS_TCPSP_F_*; 't': the module's
 * half for a new entry, or for any with RS_TCPSP_F_RESET; NULL: zeroed). */
static int kmod_write(struct dp_kmod *s, const struct rs_flow_key *k, const struct rs_flow *f, uint32_t flags,
                      const struct rs_flow_track *t)
{
    struct answer a;
    int e = t ? request(s, RS_TCPSP_C_SET, &a, 4, RS_TCPSP_A_KEY, k, RS_TCPSP_A_FLOW, f, RS_TCPSP_A_FLAGS, &flags,
                        RS_TCPSP_A_TRACK, t)
              : request(s, RS_TCPSP_C_SET, &a, 3, RS_TCPSP_A_KEY, k, RS_TCPSP_A_FLOW, f, RS_TCPSP_A_FLAGS, &flags);

    done(&a);
    return e;
}

static void kmod_close(struct px_datapath *dp, bool keep)
{
    struct dp_kmod *s = (struct dp_kmod *)dp;
    struct answer a;

    if (!s)
        return;
    if (!keep && s->family > 0) {
        request(s, RS_TCPSP_C_DETACH, &a, 0);
        done(&a);
    }
    if (s->events_lost)
        rs_log("kmod: %llu events lost (the events socket overflowed)", (unsigned long long)s->events_lost);
    nl_socket_free(s->ev);
    nl_socket_free(s->req);
    free(s);
}

static struct px_datapath *kmod_open(const char *ifname, bool adopt, uint64_t event_ring, int *err)
{
    struct dp_kmod *s = calloc(1, sizeof(*s));
    uint32_t flags = adopt ? RS_TCPSP_F_ADOPT : 0;
    struct answer a;
    int grp;

    (void)event_ring;       /* (events come over generic netlink, read as they come) */
    if (!s) {
        *err = -ENOMEM;
        return NULL;
    }
    s->dp.ops = &px_dp_kmod;
    s->ifindex = if_nametoindex(ifname);
    *err = -ENODEV;
    if (!s->ifindex)
        goto fail;
    *err = -ENOMEM;
    s->req = nl_socket_alloc();
    s->ev = nl_socket_alloc();
    if (!s->req || !s->ev)
        goto fail;
    *err = -EIO;
    if (genl_connect(s->req) || genl_connect(s->ev))
        goto fail;
    s->family = genl_ctrl_resolve(s->req, RS_TCPSP_FAMILY);
    grp = genl_ctrl_resolve_grp(s->req, RS_TCPSP_FAMILY, RS_TCPSP_MCGRP);
    if (s->family < 0 || grp < 0) {
        rs_log("kmod: no generic netlink family %s: load the module (insmod build/kmod/rs_tcpspmod.ko)",
               RS_TCPSP_FAMILY);
        *err = -ENOENT;
        goto fail;
    }
    nl_socket_disable_seq_check(s->ev);
    nl_socket_disable_auto_ack(s->ev);
    if (nl_socket_add_membership(s->ev, grp) || nl_socket_set_nonblocking(s->ev))
        goto fail;
    /* Past net.core.rmem_max (the proxy runs as root, as it must for TCP_REPAIR). */
    if (setsockopt(nl_socket_get_fd(s->ev), SOL_SOCKET, SO_RCVBUFFORCE, &(int){ EVENTS_RCVBUF }, sizeof(int)))
        rs_log("kmod: events socket buffer: %s (a burst may overflow it)", strerror(errno));
    *err = request(s, RS_TCPSP_C_ATTACH, &a, 1, RS_TCPSP_A_FLAGS, &flags);
    done(&a);
    if (*err)
        goto fail;
    return &s->dp;
fail:
    s->family = -1;     /* nothing attached to detach */
    kmod_close(&s->dp, false);
    return NULL;
}

static int kmod_set_vip(struct px_datapath *dp, uint32_t ip, uint16_t port, uint64_t lease_ns, bool listens)
{
    (void)listens;      /* (the module holds SYNs back on the lease alone) */
    struct rs_vip v = { .addr = htonl(ip), .port = htons(port), .lease_ns = lease_ns };
    struct answer a;
    int e = request((struct dp_kmod *)dp, RS_TCPSP_C_VIP, &a, 1, RS_TCPSP_A_VIP, &v);

    done(&a);
    return e;
}

static int kmod_client_ts(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t *ts)
{
    struct answer a;
    int e = request((struct dp_kmod *)dp, RS_TCPSP_C_TS_TAKE, &a, 1, RS_TCPSP_A_KEY, k);

    if (!e)
        e = take(&a, RS_TCPSP_A_TS, ts, sizeof(*ts));
    done(&a);
    return e;
}

static int kmod_events_fd(struct px_datapath *dp)
{
    return nl_socket_get_fd(((struct dp_kmod *)dp)->ev);
}

static int on_event(struct nl_msg *msg, void *arg)
{
    struct dp_kmod *s = arg;
    struct nlattr *tb[RS_TCPSP_A_COUNT];
    struct rs_flow_event ev;

    if (genlmsg_parse(nlmsg_hdr(msg), 0, tb, RS_TCPSP_A_COUNT - 1, NULL) || !tb[RS_TCPSP_A_EVENT]
        || nla_len(tb[RS_TCPSP_A_EVENT]) != sizeof(ev) || !tb[RS_TCPSP_A_IFINDEX]
        || nla_get_u32(tb[RS_TCPSP_A_IFINDEX]) != s->ifindex)
        return NL_SKIP;         /* another interface's (another proxy in this namespace) */
    memcpy(&ev, nla_data(tb[RS_TCPSP_A_EVENT]), sizeof(ev));
    if (s->cb)
        s->cb(s->cb_arg, &ev);
    return NL_OK;
}

static int kmod_poll_events(struct px_datapath *dp, px_dp_event_cb cb, void *arg)
{
    struct dp_kmod *s = (struct dp_kmod *)dp;
    int e;

    s->cb = cb;
    s->cb_arg = arg;
    nl_socket_modify_cb(s->ev, NL_CB_VALID, NL_CB_CUSTOM, on_event, s);
    for (;;) {
        e = nl_recvmsgs_default(s->ev);
        if (e == -NLE_AGAIN)
            return 0;
        if (e == -NLE_NOMEM) {      /* ENOBUFS: the socket overflowed, events were lost */
            s->events_lost++;
            continue;
        }
        if (e < 0)
            return -EIO;
    }
}

static int kmod_watch(struct px_datapath *dp, const struct rs_flow_key *k, uint64_t id)
{
    struct dp_kmod *s = (struct dp_kmod *)dp;
    struct rs_flow f = { .state = RS_FLOW_WATCH, .splice_id = id, .ifindex = s->ifindex };

    return kmod_write(s, k, &f, RS_TCPSP_F_RESET, NULL);
}

static int kmod_set(struct px_datapath *dp, const struct rs_flow_key *k, enum px_dp_field field, uint32_t v)
{
    struct px_flow_info fi;
    int e = kmod_get(dp, k, &fi);

    if (e || *px_flow_field(&fi.cfg, field) == v)
        return e;
    *px_flow_field(&fi.cfg, field) = v;
    return kmod_write((struct dp_kmod *)dp, k, &fi.cfg, RS_TCPSP_F_EXIST, NULL);
}

static int kmod_activate(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                         uint64_t id, uint32_t state, bool guard, const struct rs_flow_key *peer)
{
    struct dp_kmod *s = (struct dp_kmod *)dp;
    struct px_flow_info fi;
    int e = kmod_get(dp, k, &fi);

    if (e == -ENOENT)
        memset(&fi, 0, sizeof(fi));     /* a new entry: the module's half starts zeroed */
    else if (e)
        return e;
    px_flow_activate(&fi.cfg, d, id, state, guard, peer, s->ifindex);
    return kmod_write(s, k, &fi.cfg, 0, NULL);
}

static int kmod_watch_ack(struct px_datapath *dp, const struct rs_flow_key *k, uint32_t ack, uint32_t *gen)
{
    struct dp_kmod *s = (struct dp_kmod *)dp;
    struct px_flow_info fi;
    int e = kmod_get(dp, k, &fi);

    if (e)
        return e;
    if (fi.t.pos.has_ack && rs_seq_ge(fi.t.pos.ack_max, ack))
        return 1;       /* acknowledged already: no watch */
    *gen = px_flow_watch_ack(&fi.cfg, ack, &s->watch_gen);
    if ((e = kmod_write(s, k, &fi.cfg, RS_TCPSP_F_EXIST, NULL)) != 0)
        return e;
    /* An ACK that came before the watch was armed raises no event. */
    if (!kmod_get(dp, k, &fi) && fi.t.pos.has_ack && rs_seq_ge(fi.t.pos.ack_max, ack))
        return 1;
    return 0;
}

static int kmod_remove(struct px_datapath *dp, const struct rs_flow_key *k, struct rs_flow_track *last)
{
    struct px_flow_info fi;
    struct answer a;
    int e;

    if (last)
        *last = kmod_get(dp, k, &fi) ? (struct rs_flow_track){ 0 } : fi.t;
    e = request((struct dp_kmod *)dp, RS_TCPSP_C_DEL, &a, 1, RS_TCPSP_A_KEY, k);

    done(&a);
    return e == -ENOENT ? 0 : e;
}

static int kmod_put(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow *f)
{
    struct dp_kmod *s = (struct dp_kmod *)dp;
    struct rs_flow mine = *f;
    /* Idle since now (no segment seen yet here is no idleness of its own). */
    struct rs_flow_track t = { .last_ns = rs_mono_ns() };

    mine.ifindex = s->ifindex;
    return kmod_write(s, k, &mine, 0, &t);
}

static int kmod_set_conn(struct px_datapath *dp, const struct rs_flow_key *k, const struct rs_flow_conn *c)
{
    struct px_flow_info fi;
    int e = kmod_get(dp, k, &fi);

    if (e)
        return e;
    fi.cfg.conn = *c;
    return kmod_write((struct dp_kmod *)dp, k, &fi.cfg, RS_TCPSP_F_EXIST, NULL);
}

static int kmod_next_key(struct px_datapath *dp, const struct rs_flow_key *prev, struct rs_flow_key *next)
{
    struct answer a;
    int e = prev ? request((struct dp_kmod *)dp, RS_TCPSP_C_NEXT, &a, 1, RS_TCPSP_A_KEY, prev)
                 : request((struct dp_kmod *)dp, RS_TCPSP_C_NEXT, &a, 0);

    if (!e)
        e = take(&a, RS_TCPSP_A_KEY, next, sizeof(*next));
    done(&a);
    return e;
}

const struct px_datapath_ops px_dp_kmod = {
    .name = "kmod",
    .open = kmod_open,
    .close = kmod_close,
    .set_vip = kmod_set_vip,
    .client_ts = kmod_client_ts,
    .events_fd = kmod_events_fd,
    .poll_events = kmod_poll_events,
    .watch = kmod_watch,
    .get = kmod_get,
    .set = kmod_set,
    .activate = kmod_activate,
    .watch_ack = kmod_watch_ack,
    .remove = kmod_remove,
    .put = kmod_put,
    .set_conn = kmod_set_conn,
    .next_key = kmod_next_key,
};
