/* rs-proxy: the splicing proxy.  Accepts a client on the VIP, reads its
 * first request, picks a backend (round-robin, or sticky by a session
 * cookie), connects and forwards what it read, relays until both
 * connections are quiet, then splices them: the sockets' exact sequence
 * state is read with TCP_REPAIR, the tc program takes over the flow, and
 * the sockets are closed silently.  A control port takes authenticated
 * RESPLICE messages that move a spliced client to another server. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "parse.h"
#include "proxy.h"
#include "seq.h"

/* ---- small helpers --------------------------------------------------------- */

int rs_local_of(int fd, struct rs_addr *a)
{
    struct sockaddr_in s;
    socklen_t len = sizeof(s);

    if (getsockname(fd, (struct sockaddr *)&s, &len))
        return -errno;
    *a = rs_addr_of_sin(&s);
    return 0;
}

static int ep_add(struct proxy *p, int fd, uint32_t events, struct tag *t)
{
    struct epoll_event ev = { .events = events, .data.ptr = t };

    return epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static void ep_mod(struct proxy *p, int fd, uint32_t events, struct tag *t)
{
    struct epoll_event ev = { .events = events, .data.ptr = t };

    epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &ev);
}

/* The interface that holds 'ip', for the tc program. */
static int ifname_of(uint32_t ip, char *name)
{
    struct ifaddrs *ifa, *i;
    int found = -ENODEV;

    if (getifaddrs(&ifa))
        return -errno;
    for (i = ifa; i; i = i->ifa_next) {
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET
            && ntohl(((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr) == ip) {
            snprintf(name, IF_NAMESIZE, "%s", i->ifa_name);
            found = 0;
            break;
        }
    }
    freeifaddrs(ifa);
    return found;
}

/* ---- connection table -------------------------------------------------------- */

struct pc_tags {
    struct pconn pc;
    struct tag ctag, btag;
};

static struct pconn *pc_new(struct proxy *p)
{
    struct pc_tags *t = calloc(1, sizeof(*t));

    if (!t)
        return NULL;
    t->pc.id = ++p->next_id;
    t->pc.cfd = t->pc.bfd = -1;
    t->ctag = (struct tag){ T_CLIENT, &t->pc };
    t->btag = (struct tag){ T_BACKEND, &t->pc };
    t->pc.next = p->buckets[t->pc.id % RS_PROXY_BUCKETS];
    p->buckets[t->pc.id % RS_PROXY_BUCKETS] = &t->pc;
    return &t->pc;
}

static struct tag *ctag_of(struct pconn *pc) { return &((struct pc_tags *)pc)->ctag; }
static struct tag *btag_of(struct pconn *pc) { return &((struct pc_tags *)pc)->btag; }

static struct pconn *pc_find(struct proxy *p, uint64_t id)
{
    for (struct pconn *pc = p->buckets[id % RS_PROXY_BUCKETS]; pc; pc = pc->next)
        if (pc->id == id)
            return pc;
    return NULL;
}

struct pconn *rs_pc_find_client(struct proxy *p, struct rs_addr client)
{
    for (int b = 0; b < RS_PROXY_BUCKETS; b++)
        for (struct pconn *pc = p->buckets[b]; pc; pc = pc->next)
            if (pc->client.ip == client.ip && pc->client.port == client.port && pc->phase >= PC_SPLICED)
                return pc;
    return NULL;
}

struct rs_flow_key rs_key_c(const struct pconn *pc) { return rs_flow_key_from(pc->client, pc->vip); }
struct rs_flow_key rs_key_b(const struct pconn *pc) { return rs_flow_key_from(pc->backend, pc->local); }

static void pc_free(struct proxy *p, struct pconn *pc)
{
    struct pconn **pp = &p->buckets[pc->id % RS_PROXY_BUCKETS];
    struct rs_flow_key kc = rs_key_c(pc), kb = rs_key_b(pc);

    while (*pp && *pp != pc)
        pp = &(*pp)->next;
    if (*pp)
        *pp = pc->next;
    if (pc->cfd >= 0)
        close(pc->cfd);
    if (pc->bfd >= 0)
        close(pc->bfd);
    if (p->sp) {
        rs_splicer_remove(p->sp, &kc);
        if (pc->backend.ip)
            rs_splicer_remove(p->sp, &kb);
        for (int i = 0; i < pc->nheld; i++)
            rs_splicer_remove(p->sp, &pc->held[i]);
    }
    if (pc->phase == PC_RELAY || pc->phase == PC_CONNECTING)
        p->relaying--;
    free(pc->c2b);
    free(pc->b2c);
    free(pc->parser);
    free(pc);
}

void rs_pc_close(struct proxy *p, struct pconn *pc, const char *why)
{
    rs_log("close id=%" PRIu64 " client=%s backend=%s phase=%d reason=%s", pc->id, RS_A(pc->client),
           pc->backend.ip ? RS_A(pc->backend) : "-", pc->phase, why);
    pc_free(p, pc);
}

/* ---- first request ------------------------------------------------------- */

static int on_hdr_field(http_parser *hp, const char *at, size_t len)
{
    struct pconn *pc = hp->data;

    if (pc->in_cookie || pc->hdr_name_len == (size_t)-1)
        pc->hdr_name_len = 0;
    pc->in_cookie = false;
    if (pc->hdr_name_len + len < sizeof(pc->hdr_name)) {
        memcpy(pc->hdr_name + pc->hdr_name_len, at, len);
        pc->hdr_name_len += len;
    }
    return 0;
}

static int on_hdr_value(http_parser *hp, const char *at, size_t len)
{
    struct pconn *pc = hp->data;
    size_t have = strlen(pc->cookie);

    if (pc->hdr_name_len != (size_t)-1) {
        pc->in_cookie = pc->hdr_name_len == 6 && !strncasecmp(pc->hdr_name, "cookie", 6);
        pc->hdr_name_len = (size_t)-1;
    }
    if (pc->in_cookie && have + len < sizeof(pc->cookie)) {
        memcpy(pc->cookie + have, at, len);
        pc->cookie[have + len] = '\0';
    }
    return 0;
}

static int on_msg_complete(http_parser *hp)
{
    ((struct pconn *)hp->data)->req_done = true;
    return 0;
}

static const http_parser_settings req_settings = {
    .on_header_field = on_hdr_field,
    .on_header_value = on_hdr_value,
    .on_message_complete = on_msg_complete,
};

/* Value of cookie 'name' in the Cookie header 'hdr', or NULL. */
static const char *cookie_value(const char *hdr, const char *name, size_t *len)
{
    size_t n = strlen(name);

    for (const char *c = hdr; c && *c;) {
        while (*c == ' ' || *c == ';')
            c++;
        if (!strncmp(c, name, n) && c[n] == '=') {
            *len = strcspn(c + n + 1, ";");
            return c + n + 1;
        }
        c = strchr(c, ';');
    }
    return NULL;
}

/* Index of the backend for 'pc', or -1 for the alternate when every
 * backend has failed. */
static int pick_backend(struct proxy *p, struct pconn *pc)
{
    size_t len;
    const char *v = p->sticky ? cookie_value(pc->cookie, p->cookie_name, &len) : NULL;
    int alive = 0;

    for (int i = 0; i < p->nbackends; i++)
        alive += !p->dead[i];
    if (!alive)
        return p->alternate.port ? -1 : 0;
    if (alive < p->nbackends) {
        for (int tries = 0; tries < p->nbackends; tries++) {
            int i = p->rr++ % p->nbackends;
            if (!p->dead[i])
                return i;
        }
    }

    if (v) {
        uint32_t h = 2166136261u;   /* FNV-1a: same cookie, same backend */
        for (size_t i = 0; i < len; i++)
            h = (h ^ (uint8_t)v[i]) * 16777619u;
        return (int)(h % (uint32_t)p->nbackends);
    }
    return p->rr++ % p->nbackends;
}

/* ---- backend connection -------------------------------------------------- */

/* Opens a non-blocking socket bound to the proxy's address, with a WATCH
 * entry for segments from 'to' in place before any SYN leaves, so the
 * peer's first TSval is recorded.  Returns the fd or -errno; '*local' gets
 * the proxy's end.  rs_connect_start then connects it. */
int rs_bind_watched(struct proxy *p, struct rs_addr to, uint64_t id, struct rs_addr *local)
{
    struct sockaddr_in me = rs_addr_sin((struct rs_addr){ p->listen.ip, 0 });
    struct rs_flow_key k;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), e;

    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&me, sizeof(me)) || (e = rs_local_of(fd, local)) != 0) {
        e = -errno;
        close(fd);
        return e;
    }
    k = rs_flow_key_from(to, *local);
    if (p->sp && (e = rs_splicer_watch(p->sp, &k, id)) != 0) {
        close(fd);
        return e;
    }
    return fd;
}

int rs_connect_start(int fd, struct rs_addr to)
{
    struct sockaddr_in dst = rs_addr_sin(to);

    return connect(fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS ? -errno : 0;
}

static void start_backend(struct proxy *p, struct pconn *pc)
{
    int fd;

    int e;

    pc->backend_idx = pick_backend(p, pc);
    pc->backend = pc->backend_idx < 0 ? p->alternate : p->backends[pc->backend_idx];
    fd = rs_bind_watched(p, pc->backend, pc->id, &pc->local);
    /* The backend must know whose requests these are before it accepts. */
    if (fd >= 0 && (e = rs_conn_map(p, pc->backend, pc->local, pc->client, 0, 0)) != 0) {
        p->st.conn_map_errors++;
        rs_log("conn-map id=%" PRIu64 " backend=%s failed: %s (transaction ids there will not match)",
               pc->id, RS_A(pc->backend), strerror(-e));
    }
    if (fd >= 0 && (e = rs_connect_start(fd, pc->backend)) != 0) {
        close(fd);
        fd = e;
    }
    if (fd < 0) {
        p->st.backend_errors++;
        rs_log("backend id=%" PRIu64 " %s: connect: %s", pc->id, RS_A(pc->backend), strerror(-fd));
        rs_pc_close(p, pc, "backend-connect");
        return;
    }
    pc->bfd = fd;
    pc->phase = PC_CONNECTING;
    p->relaying++;
    ep_add(p, fd, EPOLLOUT | EPOLLIN, btag_of(pc));
}

/* ---- relay and splice ---------------------------------------------------- */

/* Moves bytes between 'from' and 'to' through 'buf'.  Returns 0, 1 on EOF
 * from 'from', or -errno. */
static int pump(int from, int to, uint8_t *buf, size_t *len, size_t cap, bool can_read)
{
    ssize_t n;

    if (can_read && *len < cap) {
        n = read(from, buf + *len, cap - *len);
        if (n == 0)
            return 1;
        if (n < 0 && errno != EAGAIN)
            return -errno;
        if (n > 0)
            *len += (size_t)n;
    }
    if (*len && to >= 0) {
        n = write(to, buf, *len);
        if (n < 0 && errno != EAGAIN)
            return -errno;
        if (n > 0) {
            memmove(buf, buf + n, *len - (size_t)n);
            *len -= (size_t)n;
        }
    }
    return 0;
}

/* Splices 'pc' if both connections are quiet: every byte read was
 * forwarded and every byte sent was acknowledged.  The flow's entries are
 * frozen (segments dropped, peers retransmit) while the sockets' state is
 * read, so nothing can slip into the stack in between.
 * Returns 1 when spliced, 0 when not quiet yet, -errno on failure. */
static int try_splice(struct proxy *p, struct pconn *pc)
{
    struct rs_flow_key kc = rs_key_c(pc), kb = rs_key_b(pc);
    struct rs_splice_conn s;
    struct rs_splice_dir c2s, s2c;
    struct rs_flow fb, fc;
    int e;

    if (pc->c2b_len || pc->b2c_len || rs_sock_queued(pc->cfd) || rs_sock_queued(pc->bfd))
        return 0;
    if ((e = rs_splicer_set_state(p->sp, &kc, RS_FLOW_FROZEN))
        || (e = rs_splicer_set_state(p->sp, &kb, RS_FLOW_FROZEN)))
        return e;
    if (rs_sock_queued(pc->cfd) || rs_sock_queued(pc->bfd)) {
        /* something arrived between the check and the freeze */
        rs_splicer_set_state(p->sp, &kc, RS_FLOW_WATCH);
        rs_splicer_set_state(p->sp, &kb, RS_FLOW_WATCH);
        p->st.splice_retries++;
        pc->splice_tries++;
        return 0;
    }
    if ((e = rs_repair_on(pc->cfd)) || (e = rs_repair_on(pc->bfd))
        || (e = rs_repair_read(pc->cfd, pc->vip, pc->client, &pc->c))
        || (e = rs_repair_read(pc->bfd, pc->local, pc->backend, &s))
        || (e = rs_splicer_get(p->sp, &kb, &fb)))
        goto undo;
    pc->ts_base_us = rs_now_us();
    /* Newest TSval each peer sent, recorded by the tc program before the
     * freeze: the client's since its SYN, the backend's since its SYN-ACK. */
    if (pc->c.ts_ok && (e = rs_splicer_client_ts(p->sp, &kc, &pc->c.ts_recent)) != 0)
        goto undo;
    if (pc->c.ts_ok && !rs_splicer_get(p->sp, &kc, &fc) && fc.has_seq && fc.ts_recent
        && rs_seq_gt(fc.ts_recent, pc->c.ts_recent))
        pc->c.ts_recent = fc.ts_recent;
    s.ts_recent = fb.ts_recent;
    if ((e = rs_splice_init(&pc->c, &s, &c2s, &s2c)) != 0
        || (e = rs_splicer_activate(p->sp, &kb, &s2c, pc->id, RS_FLOW_ACTIVE, p->logger.port != 0)) != 0
        || (e = rs_splicer_activate(p->sp, &kc, &c2s, pc->id, RS_FLOW_ACTIVE, false)) != 0)
        goto undo;
    /* Closed in repair mode: no FIN, no RST; the tc program owns the flow. */
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, pc->cfd, NULL);
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, pc->bfd, NULL);
    close(pc->cfd);
    close(pc->bfd);
    pc->cfd = pc->bfd = -1;
    pc->phase = PC_SPLICED;
    p->relaying--;
    pc->t_spliced_us = rs_now_us();
    p->st.spliced++;
    rs_log("splice id=%" PRIu64 " client=%s vip=%s local=%s backend=%s c.rcv_nxt=%u c.snd_nxt=%u "
           "s.snd_nxt=%u s.rcv_nxt=%u wscale=%u/%u,%u/%u ts=%d sack=%d tries=%d setup_us=%" PRIu64,
           pc->id, RS_A(pc->client), RS_A(pc->vip), RS_A(pc->local), RS_A(pc->backend), pc->c.rcv_nxt, pc->c.snd_nxt,
           s.snd_nxt, s.rcv_nxt, pc->c.snd_wscale, pc->c.rcv_wscale, s.snd_wscale, s.rcv_wscale,
           pc->c.ts_ok && s.ts_ok, pc->c.sack_ok && s.sack_ok, pc->splice_tries,
           pc->t_spliced_us - pc->t_accept_us);
    return 1;
undo:
    rs_repair_off(pc->cfd);
    rs_repair_off(pc->bfd);
    rs_splicer_set_state(p->sp, &kc, RS_FLOW_WATCH);
    rs_splicer_set_state(p->sp, &kb, RS_FLOW_WATCH);
    return e;
}

static void relay(struct proxy *p, struct pconn *pc, uint32_t cev, uint32_t bev)
{
    int e;

    if (pc->phase == PC_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (!(bev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        getsockopt(pc->bfd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            p->st.backend_errors++;
            rs_log("backend id=%" PRIu64 " %s: connect: %s", pc->id, RS_A(pc->backend), strerror(err));
            rs_pc_close(p, pc, "backend-connect");
            return;
        }
        pc->phase = PC_RELAY;
        rs_log("connect id=%" PRIu64 " client=%s backend=%s local=%s", pc->id, RS_A(pc->client),
               RS_A(pc->backend), RS_A(pc->local));
        ep_mod(p, pc->bfd, EPOLLIN, btag_of(pc));
        bev = EPOLLIN;
    }
    e = pump(pc->cfd, pc->bfd, pc->c2b, &pc->c2b_len, pc->c2b_cap, cev & (EPOLLIN | EPOLLHUP | EPOLLERR));
    if (e == 0)
        e = pump(pc->bfd, pc->cfd, pc->b2c, &pc->b2c_len, RELAY_BUF, bev & (EPOLLIN | EPOLLHUP | EPOLLERR));
    if (e) {
        p->st.closed_early++;
        rs_pc_close(p, pc, e > 0 ? "eof-before-splice" : strerror(-e));
        return;
    }
    if (p->nosplice)
        return;
    e = try_splice(p, pc);
    if (e < 0) {
        rs_log("splice id=%" PRIu64 " client=%s failed: %s", pc->id, RS_A(pc->client), strerror(-e));
        rs_pc_close(p, pc, "splice-failed");
    }
}

static void read_request(struct proxy *p, struct pconn *pc)
{
    ssize_t n = read(pc->cfd, pc->c2b + pc->c2b_len, pc->c2b_cap - pc->c2b_len);
    size_t used;

    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        p->st.closed_early++;
        rs_pc_close(p, pc, n == 0 ? "eof-before-request" : strerror(errno));
        return;
    }
    if (n < 0)
        return;
    used = http_parser_execute(pc->parser, &req_settings, (char *)pc->c2b + pc->c2b_len, (size_t)n);
    pc->c2b_len += (size_t)n;
    if (!pc->req_done && (used != (size_t)n || HTTP_PARSER_ERRNO((http_parser *)pc->parser) != HPE_OK)) {
        rs_pc_close(p, pc, "bad-request");
        return;
    }
    if (!pc->req_done) {
        if (pc->c2b_len == pc->c2b_cap)
            rs_pc_close(p, pc, "request-too-large");
        return;
    }
    start_backend(p, pc);
}

static void on_accept(struct proxy *p)
{
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        int one = 1, fd = accept4(p->lfd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct pconn *pc;
        struct rs_flow_key k;

        if (fd < 0)
            return;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pc = pc_new(p);
        if (!pc) {
            close(fd);
            continue;
        }
        p->st.accepted++;
        pc->cfd = fd;
        pc->client = rs_addr_of_sin(&peer);
        rs_local_of(fd, &pc->vip);
        pc->t_accept_us = rs_now_us();
        pc->c2b_cap = RS_PROXY_REQ_MAX;
        pc->c2b = malloc(pc->c2b_cap);
        pc->b2c = malloc(RELAY_BUF);
        pc->parser = malloc(sizeof(http_parser));
        if (!pc->c2b || !pc->b2c || !pc->parser) {
            rs_pc_close(p, pc, "out-of-memory");
            continue;
        }
        http_parser_init(pc->parser, HTTP_REQUEST);
        ((http_parser *)pc->parser)->data = pc;
        pc->phase = PC_READ_REQ;
        k = rs_key_c(pc);
        if (p->sp && rs_splicer_watch(p->sp, &k, pc->id)) {
            rs_pc_close(p, pc, "splice-table-full");
            continue;
        }
        ep_add(p, fd, EPOLLIN, ctag_of(pc));
        rs_log("accept id=%" PRIu64 " client=%s vip=%s", pc->id, RS_A(pc->client), RS_A(pc->vip));
    }
}

/* ---- splice events and reaping --------------------------------------------- */

static void on_flow_event(void *arg, const struct rs_flow_event *ev)
{
    struct proxy *p = arg;
    struct pconn *pc = pc_find(p, ev->splice_id);
    struct rs_addr from = { ntohl(ev->key.saddr), ntohs(ev->key.sport) };

    if (!pc)
        return;
    if (ev->flags & RS_FLOW_GUARDED) {
        /* A backend ended its side: the fastest sign of a process crash.
         * Recovery asks the logger whether the application meant it. */
        rs_log("%s id=%" PRIu64 " from=%s client=%s held (guarded)", ev->flags & RS_FLOW_SEEN_RST ? "rst" : "fin",
               pc->id, RS_A(from), RS_A(pc->client));
        if (pc->phase == PC_SPLICED && !pc->recovering)
            rs_recover(p, pc, ev->flags & RS_FLOW_SEEN_RST ? "backend-rst" : "backend-fin");
        return;
    }
    if (ev->flags & RS_FLOW_SEEN_RST)
        p->st.resets++;
    else
        p->st.fins++;
    pc->seen |= (from.ip == pc->client.ip && from.port == pc->client.port) ? ev->flags : ev->flags << 4;
    rs_log("%s id=%" PRIu64 " from=%s client=%s backend=%s seq=%u", ev->flags & RS_FLOW_SEEN_RST ? "rst" : "fin",
           pc->id, RS_A(from), RS_A(pc->client), RS_A(pc->backend), ev->seq);
    if ((pc->seen & RS_FLOW_SEEN_RST) || (pc->seen & (RS_FLOW_SEEN_RST << 4))
        || ((pc->seen & RS_FLOW_SEEN_FIN) && (pc->seen & (RS_FLOW_SEEN_FIN << 4)))) {
        if (pc->phase == PC_SPLICED) {
            pc->phase = PC_CLOSING;
            pc->t_close_us = rs_now_us();
        }
    }
}

static void reap(struct proxy *p)
{
    uint64_t now = rs_mono_ns(), now_us = rs_now_us();

    for (int b = 0; b < RS_PROXY_BUCKETS; b++) {
        struct pconn *pc = p->buckets[b], *next;
        for (; pc; pc = next) {
            struct rs_flow fc, fb;
            struct rs_flow_key kc = rs_key_c(pc), kb = rs_key_b(pc);
            uint64_t last;

            next = pc->next;
            if (pc->phase == PC_CLOSING && now_us - pc->t_close_us > p->linger_us) {
                rs_splicer_get(p->sp, &kc, &fc);
                rs_splicer_get(p->sp, &kb, &fb);
                rs_log("unsplice id=%" PRIu64 " client=%s backend=%s c2s_pkts=%" PRIu64 " s2c_pkts=%" PRIu64
                       " s2c_bytes=%" PRIu64 " errors=%" PRIu64 " dropped=%" PRIu64, pc->id, RS_A(pc->client),
                       RS_A(pc->backend), fc.pkts, fb.pkts, fb.bytes, fc.errors + fb.errors, fc.dropped + fb.dropped);
                pc_free(p, pc);
                continue;
            }
            if (pc->phase != PC_SPLICED || rs_splicer_get(p->sp, &kc, &fc) || rs_splicer_get(p->sp, &kb, &fb))
                continue;
            last = fc.last_ns > fb.last_ns ? fc.last_ns : fb.last_ns;
            if (now - last > p->idle_ns) {
                p->st.reaped_idle++;
                rs_pc_close(p, pc, "idle");
            } else if (pc->seen && now - last > p->half_open_ns) {
                p->st.reaped_half_open++;
                rs_pc_close(p, pc, "half-open");
            }
        }
    }
}

static void print_stats(struct proxy *p)
{
    printf("stats accepted=%" PRIu64 " spliced=%" PRIu64 " splice_retries=%" PRIu64 " closed_early=%" PRIu64
           " fins=%" PRIu64 " resets=%" PRIu64 " reaped_idle=%" PRIu64 " reaped_half_open=%" PRIu64
           " resplices=%" PRIu64 " resplice_errors=%" PRIu64 " ctl_rejected=%" PRIu64 " backend_errors=%" PRIu64
           " conn_map_errors=%" PRIu64 " failures=%" PRIu64 " recovered=%" PRIu64 " unrecoverable=%" PRIu64
           " legit_closes=%" PRIu64 "\n", p->st.accepted, p->st.spliced, p->st.splice_retries, p->st.closed_early,
           p->st.fins, p->st.resets, p->st.reaped_idle, p->st.reaped_half_open, p->st.resplices,
           p->st.resplice_errors, p->st.ctl_rejected, p->st.backend_errors, p->st.conn_map_errors, p->st.failures,
           p->st.recovered, p->st.unrecoverable, p->st.legit_closes);
    fflush(stdout);
}

/* ---- control plane -------------------------------------------------------- */

static void ctl_reply(struct proxy *p, struct ctl_conn *cc, const struct rs_ctl_msg *req, int status)
{
    struct rs_ctl_msg ack = { .type = RS_CTL_ACK, .sender = 1, .seq = ++p->ctl_seq };
    uint8_t out[256];
    int n;

    ack.u.ack.echo_seq = req->seq;
    ack.u.ack.echo_type = req->type;
    ack.u.ack.status = status;
    n = rs_ctl_encode(&p->key, &ack, out, sizeof(out));
    if (n > 0 && write(cc->fd, out, (size_t)n) != n)
        rs_log("control: short reply");
}

static void on_ctl(struct proxy *p, struct ctl_conn *cc)
{
    ssize_t n = read(cc->fd, cc->buf + cc->len, sizeof(cc->buf) - cc->len);

    if (n <= 0) {
        if (n < 0 && errno == EAGAIN)
            return;
        close(cc->fd);
        free(cc);
        return;
    }
    cc->len += (size_t)n;
    for (;;) {
        struct rs_ctl_msg m;
        int used = rs_ctl_decode(&p->key, &p->replay, cc->buf, cc->len, &m);
        if (used == 0)
            return;
        if (used < 0) {
            p->st.ctl_rejected++;
            rs_log("control: rejected message: %s", strerror(-used));
            close(cc->fd);
            free(cc);
            return;
        }
        memmove(cc->buf, cc->buf + used, cc->len - (size_t)used);
        cc->len -= (size_t)used;
        if (m.type == RS_CTL_RESPLICE) {
            struct rs_addr client = { m.u.resplice.client.ip4, m.u.resplice.client.port };
            struct rs_addr target = { m.u.resplice.target.ip4, m.u.resplice.target.port };
            struct pconn *pc = rs_pc_find_client(p, client);
            int e = pc ? rs_resplice(p, pc, target, m.u.resplice.client_seq, m.u.resplice.resp_seq) : -ENOENT;
            if (e)
                rs_log("resplice client=%s to=%s failed: %s", RS_A(client), RS_A(target), strerror(-e));
            ctl_reply(p, cc, &m, e);
        } else if (m.type == RS_CTL_FAILURE) {
            ctl_reply(p, cc, &m, 0);
            rs_backend_failed(p, m.u.failure.backend_id,
                              m.u.failure.reason == RS_CTL_FAIL_EXITED ? "process-exited" : "heartbeat-timeout");
        } else {
            ctl_reply(p, cc, &m, -EOPNOTSUPP);
        }
    }
}

static void on_ctl_accept(struct proxy *p)
{
    for (;;) {
        int fd = accept4(p->ctlfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct ctl_conn *cc;

        if (fd < 0)
            return;
        cc = calloc(1, sizeof(*cc));
        if (!cc) {
            close(fd);
            continue;
        }
        cc->fd = fd;
        cc->tag = (struct tag){ T_CTL, cc };
        ep_add(p, fd, EPOLLIN, &cc->tag);
    }
}

/* ---- setup and main loop ----------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-proxy --listen VIP:PORT --backend ADDR:PORT [--backend ...] [options]\n"
        "  --sticky COOKIE    pick the backend by a hash of this cookie (default: round-robin)\n"
        "  --ifname IF        interface for the tc program (default: the one holding VIP)\n"
        "  --control ADDR:PORT  control port for RESPLICE messages (needs --key)\n"
        "  --key FILE         shared control-plane key: 64 hex characters\n"
        "  --idle DUR         reap spliced connections idle this long (default 600s)\n"
        "  --half-open DUR    reap after one FIN and this long idle (default 60s)\n"
        "  --no-splice        relay in user space only (baseline, debugging)\n"
        "Failover (docs/recovery.md):\n"
        "  --backend [ID=]ADDR:PORT  backend ids default to 1, 2, ... in order\n"
        "  --alternate [ID=]ADDR:PORT  the backend that takes over failed connections\n"
        "  --logger ADDR:PORT  the logger's control port (enables recovery; needs --key)\n"
        "  --logger-resend ADDR:PORT  the logger's resend port (default: logger's address, 7072)\n"
        "  --stated-port N    rs-stated's port on each backend host (CONN_MAP before connecting)\n"
        "Logs one line per event on stderr; SIGUSR1 prints a stats line on stdout.\n");
}

/* Parses "[ID=]ADDR:PORT"; without an ID the backend gets 'default_id'. */
static int parse_backend(const char *v, struct rs_addr *a, uint32_t *id, uint32_t default_id)
{
    const char *eq = strchr(v, '=');
    uint64_t n;

    *id = default_id;
    if (eq) {
        char num[16];
        if ((size_t)(eq - v) >= sizeof(num))
            return -EINVAL;
        memcpy(num, v, (size_t)(eq - v));
        num[eq - v] = '\0';
        if (rs_parse_size(num, &n) || !n || n > UINT32_MAX)
            return -EINVAL;
        *id = (uint32_t)n;
        v = eq + 1;
    }
    return rs_addr_parse(v, a);
}

static int parse_args(struct proxy *p, int argc, char **argv)
{
    const char *keyfile = NULL;
    uint64_t ns;

    p->idle_ns = 600ull * 1000000000u;
    p->half_open_ns = 60ull * 1000000000u;
    p->linger_us = 2000000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--no-splice")) {
            p->nosplice = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "rs-proxy: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--listen")) {
            if (rs_addr_parse(v, &p->listen))
                goto bad;
        } else if (!strcmp(a, "--backend")) {
            if (p->nbackends == RS_PROXY_MAX_BACKENDS
                || parse_backend(v, &p->backends[p->nbackends], &p->backend_ids[p->nbackends],
                                 (uint32_t)p->nbackends + 1))
                goto bad;
            p->nbackends++;
        } else if (!strcmp(a, "--alternate")) {
            if (parse_backend(v, &p->alternate, &p->alternate_id, 0))
                goto bad;
        } else if (!strcmp(a, "--logger")) {
            if (rs_addr_parse(v, &p->logger))
                goto bad;
        } else if (!strcmp(a, "--logger-resend")) {
            if (rs_addr_parse(v, &p->logger_resend))
                goto bad;
        } else if (!strcmp(a, "--stated-port")) {
            if (rs_parse_size(v, &ns) || !ns || ns > 65535)
                goto bad;
            p->stated_port = (uint16_t)ns;
        } else if (!strcmp(a, "--sticky")) {
            p->sticky = true;
            snprintf(p->cookie_name, sizeof(p->cookie_name), "%s", v);
        } else if (!strcmp(a, "--ifname")) {
            snprintf(p->ifname, sizeof(p->ifname), "%s", v);
        } else if (!strcmp(a, "--control")) {
            if (rs_addr_parse(v, &p->ctl))
                goto bad;
        } else if (!strcmp(a, "--key")) {
            keyfile = v;
        } else if (!strcmp(a, "--idle")) {
            if (rs_parse_duration(v, &ns) || !ns)
                goto bad;
            p->idle_ns = ns;
        } else if (!strcmp(a, "--half-open")) {
            if (rs_parse_duration(v, &ns) || !ns)
                goto bad;
            p->half_open_ns = ns;
        } else {
            fprintf(stderr, "rs-proxy: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
        continue;
bad:
        fprintf(stderr, "rs-proxy: bad value '%s' for %s\n", v, a);
        return -1;
    }
    if (!p->listen.ip || !p->nbackends) {
        usage(stderr);
        return -1;
    }
    if (p->alternate.port && !p->alternate_id)
        p->alternate_id = (uint32_t)p->nbackends + 1;
    if (p->logger.port && !p->logger_resend.port)
        p->logger_resend = (struct rs_addr){ p->logger.ip, 7072 };
    if (p->logger.port && (!keyfile || !p->alternate.port)) {
        fprintf(stderr, "rs-proxy: --logger needs --key and --alternate\n");
        return -1;
    }
    if (p->ctl.port && !keyfile) {
        fprintf(stderr, "rs-proxy: --control needs --key\n");
        return -1;
    }
    if (keyfile) {
        int e = rs_ctl_key_load(keyfile, &p->key);
        if (e) {
            fprintf(stderr, "rs-proxy: cannot load key %s: %s\n", keyfile, strerror(-e));
            return -1;
        }
        p->has_key = true;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct proxy px;
    struct proxy *p = &px;
    struct epoll_event evs[MAX_EVENTS];
    struct itimerspec tick = { .it_interval = { 0, 200000 }, .it_value = { 0, 200000 } };
    sigset_t mask;
    uint64_t last_reap = 0;
    int e;

    rs_log_init("rs-proxy");
    if (parse_args(p, argc, argv))
        return 2;
    if (rs_ctl_init()) {
        fprintf(stderr, "rs-proxy: libsodium init failed\n");
        return 1;
    }
    rs_ctl_replay_init(&p->replay);
    p->ctl_seq = rs_now_us();
    if (!p->ifname[0] && (e = ifname_of(p->listen.ip, p->ifname))) {
        fprintf(stderr, "rs-proxy: no interface holds %s\n", RS_A(p->listen));
        return 1;
    }
    if (!p->nosplice) {
        p->sp = rs_splicer_open(p->ifname, &e);
        if (!p->sp) {
            fprintf(stderr, "rs-proxy: cannot attach the splice program to %s: %s\n", p->ifname, strerror(-e));
            return 1;
        }
        if ((e = rs_splicer_set_vip(p->sp, p->listen.ip, p->listen.port)) != 0) {
            fprintf(stderr, "rs-proxy: cannot configure the splice program: %s\n", strerror(-e));
            return 1;
        }
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->lfd = rs_listen_tcp(p->listen, 1024);
    if (p->lfd < 0) {
        fprintf(stderr, "rs-proxy: cannot listen on %s: %s\n", RS_A(p->listen), strerror(-p->lfd));
        return 1;
    }
    p->ltag = (struct tag){ T_LISTEN, NULL };
    ep_add(p, p->lfd, EPOLLIN, &p->ltag);
    if (p->ctl.port) {
        p->ctlfd = rs_listen_tcp(p->ctl, 1024);
        if (p->ctlfd < 0) {
            fprintf(stderr, "rs-proxy: cannot listen on %s: %s\n", RS_A(p->ctl), strerror(-p->ctlfd));
            return 1;
        }
        p->ctltag = (struct tag){ T_CTL_LISTEN, NULL };
        ep_add(p, p->ctlfd, EPOLLIN, &p->ctltag);
    }
    /* The timer checks relaying connections for quietness (no event says
     * "all sent bytes acknowledged") and reaps spliced ones. */
    p->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    timerfd_settime(p->tfd, 0, &tick, NULL);
    p->ttag = (struct tag){ T_TIMER, NULL };
    ep_add(p, p->tfd, EPOLLIN, &p->ttag);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    p->sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    p->stag = (struct tag){ T_SIGNAL, NULL };
    ep_add(p, p->sfd, EPOLLIN, &p->stag);
    if (p->sp) {
        p->etag = (struct tag){ T_EVENTS, NULL };
        ep_add(p, rs_splicer_events_fd(p->sp), EPOLLIN, &p->etag);
    }
    rs_log("listening on %s ifname=%s backends=%d splice=%s control=%s", RS_A(p->listen), p->ifname,
           p->nbackends, p->nosplice ? "off" : "ebpf", p->ctl.port ? RS_A(p->ctl) : "off");
    printf("listening on %s\n", RS_A(p->listen));
    fflush(stdout);

    while (!p->stop) {
        int n = epoll_wait(p->epfd, evs, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            struct tag *t = evs[i].data.ptr;
            struct pconn *pc = t->ptr;
            switch (t->kind) {
            case T_LISTEN:
                on_accept(p);
                break;
            case T_CLIENT:
                if (pc->phase == PC_READ_REQ)
                    read_request(p, pc);
                else
                    relay(p, pc, evs[i].events, 0);
                break;
            case T_BACKEND:
                relay(p, pc, 0, evs[i].events);
                break;
            case T_TIMER: {
                uint64_t exp;
                if (read(p->tfd, &exp, sizeof(exp)) < 0)
                    break;
                if (p->relaying)
                    for (int b = 0; b < RS_PROXY_BUCKETS; b++)
                        for (struct pconn *q = p->buckets[b], *nx; q; q = nx) {
                            nx = q->next;
                            if (q->phase == PC_RELAY)
                                relay(p, q, 0, 0);
                        }
                if (p->sp && rs_mono_ns() - last_reap > 500000000ull) {
                    last_reap = rs_mono_ns();
                    reap(p);
                }
                break;
            }
            case T_EVENTS:
                rs_splicer_poll_events(p->sp, on_flow_event, p);
                break;
            case T_SIGNAL: {
                struct signalfd_siginfo si;
                if (read(p->sfd, &si, sizeof(si)) != sizeof(si))
                    break;
                if (si.ssi_signo == SIGUSR1)
                    print_stats(p);
                else
                    p->stop = true;
                break;
            }
            case T_CTL_LISTEN:
                on_ctl_accept(p);
                break;
            case T_CTL:
                on_ctl(p, t->ptr);
                break;
            }
        }
    }
    print_stats(p);
    rs_log("exiting: spliced connections stay with the tc program until it is detached");
    rs_splicer_close(p->sp);
    return 0;
}
