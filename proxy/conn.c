/* rs-proxy's client connections: accept on the VIP, read the first
 * request, pick a backend (round-robin, or sticky by a session cookie),
 * CONN_MAP then connect (redispatching to the alternate when the backend
 * cannot be reached: nothing was sent anywhere yet), relay in user space
 * until both connections are quiet, then splice them (the sockets' exact
 * sequence state read with TCP_REPAIR; the tc program takes the flow over;
 * the sockets close silently).  Also: the tc program's events, reaping,
 * and clean ends (a RST from the VIP the client can act on). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pp2.h"
#include "proxy.h"
#include "seq.h"

#define RELAY_POLL_MIN_NS 200000ull        /* quietness has no event: poll, backing off */
#define RELAY_POLL_MAX_NS (5 * 1000000ull)
#define REAP_NS (500 * 1000000ull)
#define REAP_VISITS 10          /* reads of a connection within the shortest time the reap watches */
#define REAP_SLICES_MAX 16      /* ... and at least one every 8 s */

static void backend_io(struct rs_io *io, uint32_t events);
static void client_io(struct rs_io *io, uint32_t events);
static void relay(struct proxy *p, struct pconn *pc, uint32_t cev, uint32_t bev);
static void pc_timer(struct rs_timer *t);

/* ---- table ------------------------------------------------------------------ */

static struct pconn **client_bucket(struct proxy *p, struct rs_addr client)
{
    return &p->cbuckets[(client.ip ^ client.port * 2654435761u) % RS_PROXY_BUCKETS];
}

struct pconn *px_pc_new(struct proxy *p, uint64_t id, struct rs_addr client)
{
    struct pconn *pc = calloc(1, sizeof(*pc));
    struct pconn **cb = client_bucket(p, client);

    if (!pc)
        return NULL;
    pc->id = id ? id : ++p->next_id;
    pc->p = p;
    pc->client = client;
    pc->cio.fd = pc->bio.fd = -1;
    pc->backend_idx = -1;
    rs_timer_init(&pc->timer, pc_timer, pc);
    pc->next = p->buckets[pc->id % RS_PROXY_BUCKETS];
    p->buckets[pc->id % RS_PROXY_BUCKETS] = pc;
    pc->cnext = *cb;
    *cb = pc;
    return pc;
}

struct pconn *px_pc_find(struct proxy *p, uint64_t id)
{
    for (struct pconn *pc = p->buckets[id % RS_PROXY_BUCKETS]; pc; pc = pc->next)
        if (pc->id == id)
            return pc;
    return NULL;
}

struct pconn *px_pc_find_client(struct proxy *p, struct rs_addr client)
{
    for (struct pconn *pc = *client_bucket(p, client); pc; pc = pc->cnext)
        if (pc->client.ip == client.ip && pc->client.port == client.port && pc->phase != PC_CLOSING)
            return pc;
    return NULL;
}

uint64_t px_pc_backend_quiet_ms(struct proxy *p, struct pconn *pc, bool ack)
{
    struct rs_flow_key kb = px_key_b(pc);
    struct px_flow_info fb;
    uint64_t now, last;

    if (!p->dp || !pc->backend.ip || px_dp_get(p->dp, &kb, &fb))
        return 0;
    last = ack ? fb.t.ack_ns : fb.t.last_ns;
    now = rs_mono_ns();
    return last && now > last ? (now - last) / 1000000 : 0;
}

bool px_backend_read_within(struct proxy *p, int idx, const struct pconn *except, uint64_t ms)
{
    uint64_t now = rs_mono_ns();

    for (int b = 0; p->dp && b < RS_PROXY_BUCKETS; b++)
        for (struct pconn *pc = p->buckets[b]; pc; pc = pc->next) {
            struct rs_flow_key kb = px_key_b(pc);
            struct px_flow_info fb;

            if (pc != except && pc->backend_idx == idx && pc->phase == PC_SPLICED && !pc->rec
                && !px_dp_get(p->dp, &kb, &fb) && fb.t.ack_ns && fb.t.ack_ns + ms * 1000000 > now)
                return true;
        }
    return false;
}

bool px_backend_busy(struct proxy *p, int idx, uint64_t sent_ns)
{
    uint64_t a = p->backends[idx].answered_ns;

    if (!a || a + p->connect_ns < sent_ns)
        return false;
    p->st.connects_busy++;
    return true;
}

unsigned px_pc_count(struct proxy *p, int idx)
{
    unsigned n = 0;

    for (int b = 0; b < RS_PROXY_BUCKETS; b++)
        for (struct pconn *pc = p->buckets[b]; pc; pc = pc->next)
            n += pc->backend_idx == idx && pc->phase != PC_CLOSING;
    return n;
}

struct rs_flow_key px_flow_key(struct rs_addr src, struct rs_addr dst)
{
    return (struct rs_flow_key){ .saddr = htonl(src.ip), .daddr = htonl(dst.ip),
                                 .sport = htons(src.port), .dport = htons(dst.port) };
}

struct rs_flow_key px_key_c(const struct pconn *pc) { return px_flow_key(pc->client, pc->vip); }

bool px_pc_owns_client_entry(struct proxy *p, const struct pconn *pc)
{
    struct rs_flow_key kc = px_key_c(pc);
    struct px_flow_info f;

    return !pc->client_entry_freed && (px_dp_get(p->dp, &kc, &f) || f.cfg.splice_id == pc->id);
}
struct rs_flow_key px_key_b(const struct pconn *pc) { return px_flow_key(pc->backend, pc->local); }

static void close_io(struct rs_io *io, bool silently)
{
    int fd = io->fd;

    rs_io_stop(io);
    if (fd < 0)
        return;
    io->fd = -1;
    if (silently)
        px_close_silently(fd);
    else
        close(fd);
}

/* Closes a socket already in repair mode (no FIN, no RST): its close
 * takes it out of the epoll set too. */
static void close_repaired(struct rs_io *io)
{
    rs_io_forget(io);
    close(io->fd);
    io->fd = -1;
}

void px_pc_set_backend(struct proxy *p, struct pconn *pc, int idx)
{
    if (pc->backend_idx >= 0)
        p->backends[pc->backend_idx].conns--;
    pc->backend_idx = idx;
    if (idx >= 0)
        p->backends[idx].conns++;
}

/* Removes 'pc''s entries from the table, once; 'tc' and 'tb' (may be
 * NULL) receive the data path's halves of the client's and the backend's
 * (zeroed when they were not there). */
static void drop_entries(struct proxy *p, struct pconn *pc, struct rs_flow_track *tc, struct rs_flow_track *tb)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct rs_flow_track t, last;

    if (tc)
        memset(tc, 0, sizeof(*tc));
    if (tb)
        memset(tb, 0, sizeof(*tb));
    if (!p->dp || pc->entries_gone)
        return;
    pc->entries_gone = true;
    for (int i = 0; i < pc->nheld; i++) {
        px_dp_remove_read(p->dp, &pc->held[i], &t);
        p->st.fenced_drops += t.dropped;
    }
    if (px_pc_owns_client_entry(p, pc) && !px_dp_remove_read(p->dp, &kc, &t)) {
        if (tc)
            *tc = t;
        if (!pc->reuse_declined)
            px_syn_reused_again(p, &kc, &t, pc->id);  /* (its event comes too late: no entry) */
    }
    if (pc->backend.ip && !px_dp_remove_read(p->dp, &kb, &last)) {
        pc->backend_ack = last.ack_hi;
        pc->backend_acked = last.ack_ns != 0;
        if (tb)
            *tb = last;
    }
}

/* Frees the request and relay buffers (and the parser): called once
 * everything in them is out.  A spliced connection lives on for seconds
 * after its end; kept that long, the 64 KB request buffers of the
 * connections lingering took 185 MB of heap after 3200 connections, and
 * each new connection fresh pages (docs/performance.md, session 32). */
static void drop_buffers(struct pconn *pc)
{
    free(pc->c2b);
    free(pc->b2c);
    free(pc->parser);
    pc->c2b = pc->b2c = NULL;
    pc->parser = NULL;
    pc->c2b_len = pc->b2c_len = pc->c2b_cap = 0;
}

void px_pc_free(struct proxy *p, struct pconn *pc)
{
    struct pconn **pp = &p->buckets[pc->id % RS_PROXY_BUCKETS], **cp = client_bucket(p, pc->client);

    while (*pp && *pp != pc)
        pp = &(*pp)->next;
    if (*pp)
        *pp = pc->next;
    while (*cp && *cp != pc)
        cp = &(*cp)->cnext;
    if (*cp)
        *cp = pc->cnext;
    px_recovery_drop(p, pc);
    rs_ctl_call_cancel(&pc->map_call);
    rs_timer_stop(&p->loop, &pc->timer);
    close_io(&pc->cio, false);
    close_io(&pc->bio, false);
    drop_entries(p, pc, NULL, NULL);
    px_pc_set_backend(p, pc, -1);
    px_syn_port_free(p, pc);
    drop_buffers(pc);
    free(pc);
}

/* Resets the client: the highest response byte it may expect next is where
 * a RST must point (RFC 5961: anything else only draws a challenge ACK),
 * so both candidates go out: its newest ACK, and the end of what was sent
 * to it.  Once the entries are gone, the proxy's own stack answers any
 * later segment of the client with a RST as well. */
static void reset_client(struct proxy *p, struct pconn *pc)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct px_flow_info fc, fb;
    uint32_t seqs[2];
    int n = 0;

    if (pc->cio.fd >= 0) {
        struct linger l = { 1, 0 };
        setsockopt(pc->cio.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        close_io(&pc->cio, false);
        p->st.resets_sent++;
        return;
    }
    if (!p->dp || p->rawfd < 0 || px_dp_get(p->dp, &kc, &fc))
        return;
    if (fc.t.pos.has_ack)
        seqs[n++] = fc.t.pos.ack_max;
    if (pc->backend.ip && !px_dp_get(p->dp, &kb, &fb) && fb.t.pos.has_seq && fb.cfg.state != RS_FLOW_WATCH) {
        /* A FIN the guard held never reached the client: it expects the
         * sequence number the FIN took, not the one after it. */
        bool fin_held = fb.t.pos.fin_seen && !(pc->seen & (RS_FLOW_SEEN_FIN << 4));
        uint32_t hi = fb.t.pos.seq_next - (fin_held ? 1 : 0) + fb.cfg.dir.seq_delta;
        if (!n || hi != seqs[0])
            seqs[n++] = hi;
    }
    if (!n)
        seqs[n++] = pc->c.snd_nxt;
    for (int i = 0; i < n; i++)
        if (px_send_rst(p->rawfd, pc->vip, pc->client, seqs[i]) == 0)
            p->st.resets_sent++;
}

void px_pc_close(struct proxy *p, struct pconn *pc, const char *why, bool rst)
{
    rs_log("close id=%" PRIu64 " client=%s backend=%s phase=%d reason=%s%s", pc->id, RS_A(pc->client),
           pc->backend.ip ? RS_A(pc->backend) : "-", pc->phase, why, rst ? " rst=1" : "");
    if (rst && p->dp && !px_pc_owns_client_entry(p, pc))
        rst = false;        /* the client's port is another connection's now */
    if (rst) {
        reset_client(p, pc);
        if (pc->bio.fd >= 0) {
            struct linger l = { 1, 0 };
            setsockopt(pc->bio.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        }
    }
    px_pc_free(p, pc);
}

/* ---- first request -------------------------------------------------------- */

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
    http_parser_pause(hp, 1);   /* what follows is the next request: the backend's */
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

/* Index of the backend for 'pc': a primary that is not fenced (sticky by
 * cookie, else round-robin), else the alternate; the alternate only when
 * 'pc' was redispatched.  -1 when there is none. */
static int pick_backend(struct proxy *p, struct pconn *pc)
{
    size_t len;
    const char *v = p->sticky ? cookie_value(pc->cookie, p->cookie_name, &len) : NULL;
    int alive[RS_PROXY_MAX_BACKENDS], n = 0;

    if (pc->redispatched)
        return p->alternate >= 0 && !p->backends[p->alternate].fenced && pc->backend_idx != p->alternate
               ? p->alternate : -1;
    for (int i = 0; i < p->nbackends; i++)
        if (p->backends[i].role == ROLE_PRIMARY && !p->backends[i].fenced)
            alive[n++] = i;
    if (!n)
        return p->alternate >= 0 && !p->backends[p->alternate].fenced ? p->alternate : -1;
    if (v) {
        uint32_t h = 2166136261u;   /* FNV-1a: same cookie, same backend */
        for (size_t i = 0; i < len; i++)
            h = (h ^ (uint8_t)v[i]) * 16777619u;
        return alive[h % (uint32_t)n];
    }
    return alive[(unsigned)p->rr++ % (unsigned)n];
}

/* ---- backend connection -------------------------------------------------- */

/* Ports another socket of this host holds (bind() refused) before giving
 * up.  Ports whose entries live on are not counted: they are skipped,
 * however many (after a takeover or a restart, the adopted connections'
 * ports are one run of the sequence, thousands long under load). */
#define BIND_TRIES 64

/* The ports of the proxy's connections to backends: it picks them itself,
 * in turn, so a port comes back only after all the others.  (The kernel's
 * bind to port 0 hands out one just freed, and a spliced connection's
 * socket is closed while its entry lives on: one bind in six met a
 * lingering entry.)  Only the ports of the parity bind(0) takes, the
 * opposite of the range's low end: connect() takes the others, so no
 * other program's connection from this host lands on a 4-tuple a splice
 * holds (the tc program would take its segments; seen in bench-splice,
 * HAProxy after the stack on the same host: 2 connects in 2000 hung). */
void px_ports_init(struct proxy *p)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    unsigned lo = 0, hi = 0;

    if (!f || fscanf(f, "%u %u", &lo, &hi) != 2 || lo < 1024 || hi > 65535 || lo + 2 >= hi)
        lo = 32768, hi = 60999;
    if (f)
        fclose(f);
    p->port_lo = (uint16_t)(lo + 1);
    p->port_hi = (uint16_t)hi;
    p->port_next = (uint16_t)(p->port_lo + 2 * (rs_mono_ns() % ((hi - lo) / 2)));
}

static uint16_t next_port(struct proxy *p)
{
    uint16_t port = p->port_next;

    p->port_next = port + 2 > p->port_hi ? p->port_lo : port + 2;
    return port;
}

int px_bind_watched(struct proxy *p, struct rs_addr to, uint64_t id, struct rs_addr *local)
{
    struct sockaddr_in me = rs_addr_sin((struct rs_addr){ p->listen.ip, 0 });
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), e = -EADDRINUSE;

    if (fd < 0)
        return -errno;
    for (unsigned tries = 0, left = (p->port_hi - p->port_lo) / 2u + 1u; tries < BIND_TRIES && left; left--) {
        struct px_flow_info f;
        struct rs_flow_key k;

        *local = (struct rs_addr){ p->listen.ip, next_port(p) };
        k = px_flow_key(to, *local);
        /* A port whose entry towards 'to' lives on (a splice, or a
         * connection that ended lingering) is that connection's 4-tuple. */
        if (p->dp && !px_dp_get(p->dp, &k, &f)) {
            p->st.port_clashes++;
            continue;
        }
        me.sin_port = htons(local->port);
        if (bind(fd, (struct sockaddr *)&me, sizeof(me))) {
            if (errno == EADDRINUSE) {
                tries++;        /* another socket of this host holds it */
                continue;
            }
            e = -errno;
            break;
        }
        /* (Flushed with the client's entry, if the accept held it back:
         * both must be in the table before this socket's SYN leaves.) */
        if ((e = p->dp ? px_dp_watch(p->dp, &k, id) : 0) == 0 && (e = p->dp ? px_dp_flush(p->dp) : 0) == 0)
            return fd;
        break;
    }
    close(fd);
    return e;
}

int px_connect_start(int fd, struct rs_addr to)
{
    struct sockaddr_in dst = rs_addr_sin(to);

    return connect(fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS ? -errno : 0;
}

/* Drops the connection to the current backend (nothing was relayed yet)
 * and starts over on the alternate, once. */
void px_pc_redispatch(struct proxy *p, struct pconn *pc, const char *why)
{
    struct rs_flow_key kb = px_key_b(pc);
    struct rs_addr old = pc->backend;

    rs_ctl_call_cancel(&pc->map_call);
    rs_timer_stop(&p->loop, &pc->timer);
    close_io(&pc->bio, false);
    if (p->dp)
        px_dp_remove(p->dp, &kb);
    if (pc->redispatched || p->alternate < 0 || pc->backend_idx == p->alternate
        || p->backends[p->alternate].fenced) {
        p->st.closed_early++;
        px_pc_close(p, pc, why, true);
        return;
    }
    pc->redispatched = true;
    p->st.redispatched++;
    rs_log("redispatch id=%" PRIu64 " client=%s from=%s why=%s", pc->id, RS_A(pc->client), RS_A(old), why);
    px_pc_start_backend(p, pc);
}

static void connect_failed(struct proxy *p, struct pconn *pc, int err)
{
    int idx = pc->backend_idx;

    p->st.backend_errors++;
    rs_log("backend id=%" PRIu64 " %s: connect: %s", pc->id, RS_A(pc->backend), strerror(-err));
    /* Refused: nothing listens there, the application is gone; timed out:
     * the host or the application is gone or hung.  With recovery on either
     * is a failure signal for the whole backend: fenced before the alternate
     * serves anyone, so a hung backend that wakes up cannot serve with state
     * of its own (its other connections move; this one is redispatched as
     * part of it). */
    if (p->logger.port && idx >= 0 && !p->backends[idx].fenced) {
        /* (The kernel gave up on its SYNs, ~2 min, while the backend
         * answered others: overloaded that long; this client is let go.) */
        if (err == -ETIMEDOUT && px_backend_busy(p, idx, pc->connect_ns_at)) {
            px_pc_close(p, pc, "connect-timeout", true);
            return;
        }
        px_backend_failed(p, p->backends[idx].id, err == -ECONNREFUSED ? "connect-refused" : "connect-failed");
        if (!p->backends[idx].fenced)
            px_pc_close(p, pc, "isolated", true);
        return;
    }
    px_pc_redispatch(p, pc, "backend-connect");
}

static void connect_backend(struct proxy *p, struct pconn *pc)
{
    int e = px_connect_start(pc->bio.fd, pc->backend);

    if (e) {
        connect_failed(p, pc, e);
        return;
    }
    pc->phase = PC_CONNECTING;
    pc->connect_ns_at = rs_mono_ns();
    if ((e = rs_io_start(&p->loop, &pc->bio, pc->bio.fd, EPOLLOUT | EPOLLIN, backend_io, pc)) < 0) {
        px_pc_close(p, pc, "epoll", true);
        return;
    }
    rs_timer_after(&p->loop, &pc->timer, p->connect_ns);
}

static void on_map_done(struct rs_ctl_call *call, int err, const struct rs_ctl_msg *reply)
{
    struct pconn *pc = call->ctx;
    struct proxy *p = pc->p;
    int idx = pc->backend_idx;

    if (!err && reply->u.ack.status)
        err = reply->u.ack.status;
    if (!err) {
        connect_backend(p, pc);
        return;
    }
    p->st.conn_map_errors++;
    rs_log("conn-map id=%" PRIu64 " backend=%s failed: %s", pc->id, RS_A(pc->backend), strerror(-err));
    /* Its rs-stated has no application: the backend's process is gone. */
    if (err == -ENOTCONN && p->logger.port && idx >= 0 && !p->backends[idx].fenced) {
        px_backend_failed(p, p->backends[idx].id, "no-application");
        if (!p->backends[idx].fenced)       /* not believed (we are cut off): pc is ours still */
            px_pc_close(p, pc, "isolated", true);
        return;
    }
    /* Its rs-stated does not answer (host down, cut off, application hung:
     * CONN_MAP goes through it): nothing was sent to the backend yet, so the
     * alternate can take the request, once the backend is fenced (above). */
    if (err == -ETIMEDOUT || err == -ECONNREFUSED || err == -ECONNRESET || err == -EHOSTUNREACH) {
        if (p->logger.port && idx >= 0 && !p->backends[idx].fenced) {
            px_backend_failed(p, p->backends[idx].id, "stated-unreachable");
            if (!p->backends[idx].fenced)
                px_pc_close(p, pc, "isolated", true);
        } else {
            px_pc_redispatch(p, pc, "stated-unreachable");
        }
        return;
    }
    connect_backend(p, pc);   /* transaction ids there will not match */
}

void px_pc_start_backend(struct proxy *p, struct pconn *pc)
{
    int idx = pick_backend(p, pc), fd, e;

    if (idx < 0) {
        p->st.closed_early++;
        px_pc_close(p, pc, "no-backend", true);
        return;
    }
    px_pc_set_backend(p, pc, idx);
    pc->backend = p->backends[idx].addr;
    fd = px_bind_watched(p, pc->backend, pc->id, &pc->local);
    if (fd < 0) {
        p->st.backend_errors++;
        rs_log("backend id=%" PRIu64 " %s: socket: %s", pc->id, RS_A(pc->backend), strerror(-fd));
        px_pc_close(p, pc, "backend-socket", true);
        return;
    }
    pc->bio.fd = fd;
    /* --identity header: the request carries the client's name itself
     * (core/pp2.h), read by the backend's state library before the
     * request; no CONN_MAP to wait for.  Only to resplice backends (their
     * rs-stated known: --stated-port), as CONN_MAP. */
    if (p->identity_header && p->stated_port && !pc->named && pc->c2b_cap - pc->c2b_len >= RS_PP2_V4_LEN) {
        memmove(pc->c2b + RS_PP2_V4_LEN, pc->c2b, pc->c2b_len);
        rs_pp2_build_v4(pc->c2b, pc->client.ip, pc->client.port, pc->vip.ip, pc->vip.port);
        pc->c2b_len += RS_PP2_V4_LEN;
        pc->named = true;
    }
    if (pc->named) {
        connect_backend(p, pc);
        return;
    }
    /* The backend must know whose requests these are before it accepts. */
    pc->phase = PC_MAP;
    e = px_conn_map(p, idx, pc->local, pc->client, 0, 0, p->connect_ns, &pc->map_call, on_map_done, pc);
    if (e == -ENOTCONN && !p->stated_port) {
        connect_backend(p, pc);
    } else if (e) {
        p->st.conn_map_errors++;
        rs_log("conn-map id=%" PRIu64 " backend=%s failed: %s (transaction ids there will not match)", pc->id,
               RS_A(pc->backend), strerror(-e));
        connect_backend(p, pc);
    }
}

/* ---- relay and splice ---------------------------------------------------- */

static void relay_events(struct pconn *pc)
{
    uint32_t ce = (!pc->client_eof && pc->c2b_len < pc->c2b_cap ? EPOLLIN : 0) | (pc->b2c_len ? EPOLLOUT : 0);
    uint32_t be = (!pc->backend_eof && pc->b2c_len < RELAY_BUF ? EPOLLIN : 0) | (pc->c2b_len ? EPOLLOUT : 0);

    rs_io_set(&pc->cio, ce);
    rs_io_set(&pc->bio, be);
}

/* Writes from 'buf' to 'fd'.  Returns 0 or -errno. */
static int drain(int fd, uint8_t *buf, size_t *len)
{
    ssize_t n;

    if (!*len || fd < 0)
        return 0;
    n = send(fd, buf, *len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN ? 0 : -errno;
    memmove(buf, buf + n, *len - (size_t)n);
    *len -= (size_t)n;
    return 0;
}

/* Reads into 'buf'.  Returns 0, 1 on EOF, -errno. */
static int fill(int fd, uint8_t *buf, size_t *len, size_t cap)
{
    ssize_t n;

    if (*len >= cap)
        return 0;
    n = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
    if (n == 0)
        return 1;
    if (n < 0)
        return errno == EAGAIN ? 0 : -errno;
    *len += (size_t)n;
    return 0;
}

/* Whether the peer of a socket whose TCP_INFO is 'ti' has ended its side
 * (its FIN is in the socket, read or not): the socket left ESTABLISHED.  A
 * FIN queues no byte, so px_sock_queued() does not see it; a splice taken
 * then would start the peer's numbering one past the FIN the other side
 * never got. */
static bool sock_peer_ended(const struct tcp_info *ti)
{
    return ti->tcpi_state != 1 /* TCP_ESTABLISHED */;
}

/* Whether the tc program saw more of the sender of entry 'f' than its
 * socket holds in order ('rcv_nxt'): a segment the freeze dropped, or one
 * the socket keeps out of order (the repair read does not carry it over).
 * The sender retransmits it; the splice must wait for that, or the guard
 * would take a retransmitted FIN for an end the client never saw the data
 * of. */
static bool flow_ahead(const struct px_flow_info *f, uint32_t rcv_nxt)
{
    return f->t.pos.has_seq && rs_seq_gt(f->t.pos.seq_next, rcv_nxt);
}

static void open_write(struct proxy *p, struct pconn *pc);

/* Puts both of 'pc''s entries in 'state' with one change of the table. */
static int set_both(struct proxy *p, const struct rs_flow_key *kc, const struct rs_flow_key *kb, uint32_t state)
{
    int e, f;

    px_dp_hold(p->dp);
    if ((e = px_dp_set_state(p->dp, kc, state)) == 0)
        e = px_dp_set_state(p->dp, kb, state);
    f = px_dp_flush(p->dp);
    return e ? e : f;
}

/* Whether bytes wait in either socket: unread, or (but 'at_connect',
 * when the proxy has written neither) not yet acknowledged. */
static bool socks_queued(int cfd, int bfd, bool at_connect)
{
    if (at_connect)
        return px_sock_unread(cfd) || px_sock_unread(bfd);
    return px_sock_queued(cfd) || px_sock_queued(bfd);
}

/* Splices 'pc' if both connections are quiet: every byte read was
 * forwarded and every byte sent was acknowledged.  The flow's entries are
 * frozen (segments dropped, peers retransmit) while the sockets' state is
 * read, so nothing can slip into the stack in between.
 *
 * 'at_connect': the backend connection is up and the proxy has not written
 * it a byte yet, so the backend cannot be sending (HTTP: the client speaks
 * first) and the freeze drops nothing of its.  Later, a quiet moment is
 * only the pause between the backend's ACK of the request and its
 * response: a response dropped there came back an RTO (200 ms) later,
 * merged with the FIN.  The request read so far (c2b) then goes out from
 * the backend socket after the splice (open_write): the backend's
 * direction is translated at once (its pure ACKs go to that socket), the
 * client's passes ACKs only until the backend acknowledges the request.
 * Returns 1 when spliced, 0 when not quiet yet, -errno on failure. */
static int try_splice(struct proxy *p, struct pconn *pc, bool at_connect)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct rs_splice_conn s;
    struct rs_splice_dir c2s, s2c;
    struct px_flow_info fb, fc;
    struct tcp_info cinfo, binfo;
    int cfd = pc->cio.fd, bfd = pc->bio.fd, e, f;
    bool guard = p->logger.port != 0;
    uint32_t pending = at_connect ? (uint32_t)pc->c2b_len : 0;

    /* (At connect both sockets are as good as always quiet: only the check
     * after the freeze, which decides, is made.) */
    if (pc->client_eof || pc->backend_eof || (pc->c2b_len && !at_connect) || pc->b2c_len
        || (!at_connect && (px_sock_queued(cfd) || px_sock_queued(bfd))))
        return 0;
    if ((e = set_both(p, &kc, &kb, RS_FLOW_FROZEN)) != 0)
        return e;
    if (socks_queued(cfd, bfd, at_connect)) {
        /* something arrived between the check and the freeze */
        set_both(p, &kc, &kb, RS_FLOW_WATCH);
        p->st.splice_retries++;
        pc->splice_tries++;
        return 0;
    }
    if ((e = px_repair_on(cfd)) || (e = px_repair_on(bfd))
        || (e = px_repair_read(cfd, pc->vip, pc->client, &pc->c, &cinfo))
        || (e = px_repair_read(bfd, pc->local, pc->backend, &s, &binfo)) || (e = px_dp_get(p->dp, &kb, &fb))
        || (e = px_dp_get(p->dp, &kc, &fc)))
        goto undo;
    if (sock_peer_ended(&cinfo) || sock_peer_ended(&binfo) || flow_ahead(&fc, pc->c.rcv_nxt)
        || flow_ahead(&fb, s.rcv_nxt)) {
        /* Not quiet after all: a FIN the relay has not read yet (it will),
         * or segments that came during the freeze and were dropped. */
        px_repair_off(cfd);
        px_repair_off(bfd);
        set_both(p, &kc, &kb, RS_FLOW_WATCH);
        p->st.splice_retries++;
        pc->splice_tries++;
        return 0;
    }
    pc->ts_base_us = rs_now_us();
    pc->rtt_us = cinfo.tcpi_rtt;
    /* Newest TSval each peer sent, recorded by the tc program before the
     * freeze: the client's since its SYN, the backend's since its SYN-ACK. */
    if (pc->c.ts_ok && (e = px_dp_client_ts(p->dp, &kc, &pc->c.ts_recent)) != 0)
        goto undo;
    if (pc->c.ts_ok && fc.t.pos.has_seq && fc.t.ts_recent
        && rs_seq_gt(fc.t.ts_recent, pc->c.ts_recent))
        pc->c.ts_recent = fc.t.ts_recent;
    s.ts_recent = fb.t.ts_recent;
    s.snd_nxt += pending;       /* the client's next byte lands after the request */
    if ((e = rs_splice_init(&pc->c, &s, &c2s, &s2c)) != 0)
        goto undo;
    /* Both directions and the client entry's record (adopt.c) in one
     * change of the table, the backend's entry first: the client's
     * segments are translated only once the backend's answers are. */
    px_dp_hold(p->dp);
    if ((e = px_dp_activate(p->dp, &kb, &s2c, pc->id, RS_FLOW_ACTIVE, guard, &kc)) == 0
        && (!pending || (e = px_dp_acks_to_stack(p->dp, &kb, true)) == 0)
        && (e = px_dp_activate(p->dp, &kc, &c2s, pc->id, pending ? RS_FLOW_ACKONLY : RS_FLOW_ACTIVE, false,
                               &kb)) == 0)
        px_pc_save(p, pc);
    f = px_dp_flush(p->dp);
    if ((e = e ? e : f) != 0)
        goto undo;
    /* Closed in repair mode: no FIN, no RST; the tc program owns the flow. */
    close_repaired(&pc->cio);
    if (pending) {
        pc->opening = true;
        pc->open_ack = s.snd_nxt;
        px_repair_off(bfd);
    } else {
        close_repaired(&pc->bio);
    }
    rs_timer_stop(&p->loop, &pc->timer);
    pc->phase = PC_SPLICED;
    pc->t_spliced_us = rs_now_us();
    p->st.spliced++;
    rs_log("splice id=%" PRIu64 " client=%s vip=%s local=%s backend=%s c.rcv_nxt=%u c.snd_nxt=%u "
           "s.snd_nxt=%u s.rcv_nxt=%u wscale=%u/%u,%u/%u ts=%d sack=%d tries=%d rtt_us=%u setup_us=%" PRIu64
           " pending=%u", pc->id, RS_A(pc->client), RS_A(pc->vip), RS_A(pc->local), RS_A(pc->backend),
           pc->c.rcv_nxt, pc->c.snd_nxt, s.snd_nxt, s.rcv_nxt, pc->c.snd_wscale, pc->c.rcv_wscale, s.snd_wscale,
           s.rcv_wscale, pc->c.ts_ok && s.ts_ok, pc->c.sack_ok && s.sack_ok, pc->splice_tries, pc->rtt_us,
           pc->t_spliced_us - pc->t_accept_us, pending);
    if (pending)
        open_write(p, pc);      /* may free 'pc' */
    else
        drop_buffers(pc);
    return 1;
undo:
    px_repair_off(cfd);
    px_repair_off(bfd);
    set_both(p, &kc, &kb, RS_FLOW_WATCH);
    return e;
}

/* The backend acknowledged the request: the client's direction opens and
 * the backend socket goes (silently, after a grace). */
static void open_done(struct proxy *p, struct pconn *pc)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);

    pc->opening = false;
    pc->open_gen = 0;
    rs_io_stop(&pc->bio);
    px_close_after_grace(p, pc->bio.fd);
    pc->bio.fd = -1;
    px_dp_hold(p->dp);
    px_dp_acks_to_stack(p->dp, &kb, false);
    px_dp_set_state(p->dp, &kc, RS_FLOW_ACTIVE);
    px_dp_flush(p->dp);
    rs_log("open id=%" PRIu64 " client=%s us=%" PRIu64, pc->id, RS_A(pc->client), rs_now_us() - pc->t_spliced_us);
}

void px_pc_open_abandon(struct proxy *p, struct pconn *pc)
{
    if (!pc->opening)
        return;
    pc->opening = false;
    pc->open_gen = 0;
    rs_io_stop(&pc->bio);
    px_close_after_grace(p, pc->bio.fd);
    pc->bio.fd = -1;
}

/* A connection spliced at connect whose request cannot go out: the backend
 * is as good as failed for it. */
static void open_failed(struct proxy *p, struct pconn *pc, int err)
{
    rs_log("open id=%" PRIu64 " client=%s backend=%s failed: %s", pc->id, RS_A(pc->client), RS_A(pc->backend),
           strerror(-err));
    px_pc_open_abandon(p, pc);
    if (p->logger.port)
        px_recover(p, pc, "backend-error");
    else
        px_pc_close(p, pc, "splice-failed", true);
}

/* Writes what is left of the request to the backend; once all is out,
 * watches for the backend's ACK of it. */
static void open_write(struct proxy *p, struct pconn *pc)
{
    struct rs_flow_key kb = px_key_b(pc);
    int e;

    if ((e = drain(pc->bio.fd, pc->c2b, &pc->c2b_len)) != 0) {
        open_failed(p, pc, e);
        return;
    }
    if (pc->c2b_len) {
        px_nodelay(pc->bio.fd);     /* the rest must not wait for an ACK */
        rs_io_set(&pc->bio, EPOLLOUT);
        return;
    }
    drop_buffers(pc);
    e = px_dp_watch_ack(p->dp, &kb, pc->open_ack, &pc->open_gen);
    if (e < 0)
        open_failed(p, pc, e);
    else if (e == 1)
        open_done(p, pc);
    else
        rs_io_set(&pc->bio, 0);     /* only a hang-up or an error now */
}

int px_pc_detach(struct proxy *p, struct pconn *pc)
{
    struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
    struct px_flow_info fc;
    struct tcp_info cinfo;
    int cfd = pc->cio.fd, e;

    if (pc->phase == PC_SPLICED)
        return 0;
    if (cfd < 0 || !p->dp)
        return -ENOTCONN;
    /* Nothing more from the backend, nothing more into the client socket. */
    if (pc->backend.ip)
        px_dp_set_state(p->dp, &kb, RS_FLOW_HOLD);
    if ((e = px_dp_set_state(p->dp, &kc, RS_FLOW_FROZEN)) || (e = px_repair_on(cfd))
        || (e = px_repair_read(cfd, pc->vip, pc->client, &pc->c, &cinfo)))
        return e;
    pc->ts_base_us = rs_now_us();
    pc->rtt_us = cinfo.tcpi_rtt;
    if (pc->c.ts_ok && px_dp_client_ts(p->dp, &kc, &pc->c.ts_recent))
        pc->c.ts_recent = 0;
    if (pc->c.ts_ok && !px_dp_get(p->dp, &kc, &fc) && fc.t.ts_recent
        && (!pc->c.ts_recent || rs_seq_gt(fc.t.ts_recent, pc->c.ts_recent)))
        pc->c.ts_recent = fc.t.ts_recent;
    px_dp_set_state(p->dp, &kc, RS_FLOW_HOLD);
    close_repaired(&pc->cio);
    close_io(&pc->bio, true);
    rs_timer_stop(&p->loop, &pc->timer);
    drop_buffers(pc);
    pc->phase = PC_SPLICED;
    rs_log("detach id=%" PRIu64 " client=%s c.rcv_nxt=%u c.snd_nxt=%u rtt_us=%u", pc->id, RS_A(pc->client),
           pc->c.rcv_nxt, pc->c.snd_nxt, pc->rtt_us);
    return 0;
}

/* The backend ended its side during the relay: once everything it sent
 * is with the client, the logger says whether the application meant it
 * (a legitimate close goes on as a relayed close) or it crashed. */
static void relay_backend_ended(struct proxy *p, struct pconn *pc)
{
    if (pc->b2c_len || px_sock_queued(pc->cio.fd) > 0) {
        if (!rs_timer_armed(&pc->timer))   /* poll until the client has it all */
            rs_timer_after(&p->loop, &pc->timer, RELAY_POLL_MAX_NS);
        return;
    }
    if (!p->logger.port) {
        /* No recovery: pass the end on. */
        shutdown(pc->cio.fd, SHUT_WR);
        if (pc->client_eof) {
            pc->phase = PC_CLOSING;
            rs_timer_after(&p->loop, &pc->timer, p->linger_ns);
        }
        return;
    }
    px_recover(p, pc, "backend-end-relay");
}

static void relay(struct proxy *p, struct pconn *pc, uint32_t cev, uint32_t bev)
{
    int cfd = pc->cio.fd, bfd = pc->bio.fd, e = 0, r;
    size_t moved = pc->c2b_len + pc->b2c_len;

    if (pc->rec)
        return;
    if ((cev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !pc->client_eof) {
        r = fill(cfd, pc->c2b, &pc->c2b_len, pc->c2b_cap);
        if (r < 0) {
            p->st.closed_early++;
            px_pc_close(p, pc, "client-error", false);
            return;
        }
        if (r > 0) {
            pc->client_eof = true;
            rs_log("half-close id=%" PRIu64 " client=%s", pc->id, RS_A(pc->client));
        }
    }
    if ((bev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !pc->backend_eof) {
        if (!pc->b2c && !(pc->b2c = malloc(RELAY_BUF))) {
            px_pc_close(p, pc, "out-of-memory", true);
            return;
        }
        r = fill(bfd, pc->b2c, &pc->b2c_len, RELAY_BUF);
        if (r != 0) {
            pc->backend_eof = true;
            rs_log("backend-end id=%" PRIu64 " client=%s backend=%s %s", pc->id, RS_A(pc->client),
                   RS_A(pc->backend), r > 0 ? "fin" : strerror(-r));
        }
    }
    if ((e = drain(bfd, pc->c2b, &pc->c2b_len)) != 0 && !pc->backend_eof) {
        /* The backend reset the connection before the request was all
         * out (its application died at connect): its end, recovered
         * below like any, not the client's. */
        pc->backend_eof = true;
        rs_log("backend-end id=%" PRIu64 " client=%s backend=%s %s", pc->id, RS_A(pc->client), RS_A(pc->backend),
               strerror(-e));
    }
    e = drain(cfd, pc->b2c, &pc->b2c_len);
    if (e) {
        p->st.closed_early++;
        px_pc_close(p, pc, strerror(-e), true);
        return;
    }
    if (pc->client_eof && !pc->c2b_len && bfd >= 0 && !pc->backend_eof)
        shutdown(bfd, SHUT_WR);
    if (moved != pc->c2b_len + pc->b2c_len)
        pc->splice_tries = 0;       /* data moved: poll quietness from the start again */
    relay_events(pc);
    if (pc->backend_eof) {
        relay_backend_ended(p, pc);   /* may free 'pc' */
        return;
    }
    if (p->nosplice || pc->client_eof)
        return;
    e = rs_now_us() - pc->t_accept_us >= p->relay_first_ns / 1000 ? try_splice(p, pc, false) : 0;
    if (e < 0) {
        rs_log("splice id=%" PRIu64 " client=%s failed: %s", pc->id, RS_A(pc->client), strerror(-e));
        px_pc_close(p, pc, "splice-failed", true);
    } else if (e == 0 && !rs_timer_armed(&pc->timer)) {
        uint64_t d = RELAY_POLL_MIN_NS << (pc->splice_tries < 5 ? pc->splice_tries : 5);
        rs_timer_after(&p->loop, &pc->timer, d < RELAY_POLL_MAX_NS ? d : RELAY_POLL_MAX_NS);
    }
}

static void backend_io(struct rs_io *io, uint32_t events)
{
    struct pconn *pc = io->ctx;
    struct proxy *p = pc->p;

    if (pc->phase == PC_CONNECTING) {
        int err;

        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        /* (A failed connect raises EPOLLERR: EPOLLOUT alone is no error to ask for.) */
        if ((events & (EPOLLERR | EPOLLHUP)) && (err = rs_sock_error(io->fd))) {
            connect_failed(pc->p, pc, -err);
            return;
        }
        rs_timer_stop(&p->loop, &pc->timer);
        pc->phase = PC_RELAY;
        if (pc->backend_idx >= 0)
            p->backends[pc->backend_idx].answered_ns = rs_mono_ns();
        rs_log("connect id=%" PRIu64 " client=%s backend=%s local=%s", pc->id, RS_A(pc->client),
               RS_A(pc->backend), RS_A(pc->local));
        if (p->dp && !p->nosplice && !p->relay_first_ns) {
            int e = try_splice(p, pc, true);
            if (e < 0) {
                rs_log("splice id=%" PRIu64 " client=%s failed: %s", pc->id, RS_A(pc->client), strerror(-e));
                px_pc_close(p, pc, "splice-failed", true);
            }
            if (e)
                return;
        }
        px_nodelay(pc->bio.fd);
        relay(p, pc, EPOLLIN, EPOLLIN);
        return;
    }
    if (pc->phase == PC_RELAY)
        relay(p, pc, 0, events);
    else if (pc->phase == PC_SPLICED && pc->opening) {
        if (events & (EPOLLERR | EPOLLHUP))
            open_failed(p, pc, -(rs_sock_error(io->fd) ?: ECONNRESET));
        else if (events & EPOLLOUT)
            open_write(p, pc);
    }
}

static void read_request(struct proxy *p, struct pconn *pc)
{
    http_parser *hp = pc->parser;
    ssize_t n = recv(pc->cio.fd, pc->c2b + pc->c2b_len, pc->c2b_cap - pc->c2b_len, MSG_DONTWAIT);
    size_t used;

    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        p->st.closed_early++;
        px_pc_close(p, pc, n == 0 ? "eof-before-request" : strerror(errno), false);
        return;
    }
    if (n < 0) {
        rs_io_set(&pc->cio, EPOLLIN);
        return;
    }
    used = http_parser_execute(hp, &req_settings, (char *)pc->c2b + pc->c2b_len, (size_t)n);
    pc->c2b_len += (size_t)n;
    if (!pc->req_done && (used != (size_t)n || HTTP_PARSER_ERRNO(hp) != HPE_OK)) {
        px_pc_close(p, pc, "bad-request", true);
        return;
    }
    if (!pc->req_done) {
        if (pc->c2b_len == pc->c2b_cap)
            px_pc_close(p, pc, "request-too-large", true);
        else
            rs_io_set(&pc->cio, EPOLLIN);
        return;
    }
    rs_io_set(&pc->cio, 0);   /* the relay reads on once the backend is connected */
    rs_timer_stop(&p->loop, &pc->timer);
    px_pc_start_backend(p, pc);
}

static void client_io(struct rs_io *io, uint32_t events)
{
    struct pconn *pc = io->ctx;

    if (pc->phase == PC_READ_REQ)
        read_request(pc->p, pc);
    else if (pc->phase == PC_RELAY)
        relay(pc->p, pc, events, 0);
    else if (pc->phase == PC_MAP || pc->phase == PC_CONNECTING) {
        if (events & (EPOLLHUP | EPOLLERR)) {
            pc->p->st.closed_early++;
            px_pc_close(pc->p, pc, "client-gone", false);
        }
    } else if (pc->phase == PC_CLOSING) {
        uint8_t junk[4096];
        ssize_t n = recv(io->fd, junk, sizeof(junk), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            px_pc_free(pc->p, pc);   /* the client closed too */
    }
}

/* One timer per connection: the first request's time-out, connect
 * time-out, relay polling, linger. */
static void pc_timer(struct rs_timer *t)
{
    struct pconn *pc = t->ctx;
    struct proxy *p = pc->p;

    switch (pc->phase) {
    case PC_READ_REQ:
        p->st.request_timeouts++;
        px_pc_close(p, pc, "request-timeout", true);
        break;
    case PC_CONNECTING:
        /* (Judged from the connect's first SYN: its kernel sends it again
         * 1, 3, 7 ... s later, when the backend may answer everyone at
         * once; a backend found dead or hung meanwhile, by its heartbeats
         * or the stall detector, is fenced and the connect moved.) */
        if (pc->backend_idx >= 0 && px_backend_busy(p, pc->backend_idx, pc->connect_ns_at)) {
            rs_log("backend id=%" PRIu64 " %s: connect: no answer within %" PRIu64 " ms, but it answers others "
                   "(busy, not failed): the kernel sends the SYN again", pc->id, RS_A(pc->backend),
                   p->connect_ns / 1000000);
            rs_timer_after(&p->loop, &pc->timer, p->connect_ns);
            break;
        }
        connect_failed(p, pc, -ETIMEDOUT);
        break;
    case PC_RELAY:
        pc->splice_tries++;
        relay(p, pc, 0, 0);
        break;
    case PC_SPLICED:
        if (pc->fin_wait)
            px_fin_wait_over(p, pc);
        break;
    case PC_CLOSING:
        if (pc->cio.fd < 0) {
            struct rs_flow_track tc, tb;
            drop_entries(p, pc, &tc, &tb);
            rs_log("unsplice id=%" PRIu64 " client=%s backend=%s c2s_pkts=%" PRIu64 " s2c_pkts=%" PRIu64
                   " s2c_bytes=%" PRIu64 " errors=%" PRIu64 " dropped=%" PRIu64 " ends_refused=%u", pc->id,
                   RS_A(pc->client), RS_A(pc->backend), tc.pkts, tb.pkts, tb.bytes, tc.errors + tb.errors,
                   tc.dropped + tb.dropped, tb.ends_refused);
        }
        px_pc_free(p, pc);
        break;
    default:
        break;
    }
}

/* The connection that has waited longest for its whole first request, or
 * NULL. */
static struct pconn *slowest_request(struct proxy *p)
{
    struct pconn *old = NULL;

    for (int b = 0; b < RS_PROXY_BUCKETS; b++)
        for (struct pconn *pc = p->buckets[b]; pc; pc = pc->next)
            if (pc->phase == PC_READ_REQ && (!old || pc->t_accept_us < old->t_accept_us))
                old = pc;
    return old;
}

/* The descriptor limit, read again once a second (an operator may change
 * it; a read on every accept was a syscall per connection). */
static long fd_limit(struct proxy *p)
{
    struct rlimit rl;

    if (!p->fd_limit_ns || p->loop.now_ns - p->fd_limit_ns >= 1000000000ull) {
        p->fd_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)LONG_MAX ? (long)rl.rlim_cur
                                                                                          : LONG_MAX;
        p->fd_limit_ns = p->loop.now_ns ? p->loop.now_ns : 1;
    }
    return p->fd_limit;
}

void px_pc_accept(struct rs_io *io, uint32_t events)
{
    struct proxy *p = io->ctx;
    long limit = fd_limit(p);

    (void)events;
    for (;;) {
        struct sockaddr_in peer;
        int fd = rs_accept_tcp(io->fd, &peer);
        struct sockaddr_in me;
        socklen_t mlen = sizeof(me);
        struct pconn *pc;
        struct rs_flow_key k;
        uint64_t id;

        if (fd < 0)
            return;
        /* Descriptors are handed out lowest first, so 'fd' tells how many
         * are open: the last RS_PROXY_FD_RESERVE stay for recoveries (a
         * connection to the alternate, one to the logger's resend port)
         * and the control plane, whatever clients hold.  Under that
         * pressure the client that has waited longest for its first
         * request (slowloris) makes room; without one, the new one goes. */
        if (fd >= limit - RS_PROXY_FD_RESERVE && (pc = slowest_request(p))) {
            int low;

            p->st.request_evictions++;
            px_pc_close(p, pc, "evicted-slow-request", true);
            /* Into the descriptor just freed, so the count stays exact. */
            if ((low = fcntl(fd, F_DUPFD_CLOEXEC, 0)) >= 0 && low < fd) {
                close(fd);
                fd = low;
            } else if (low >= 0) {
                close(low);
            }
        } else if (fd >= limit - RS_PROXY_FD_RESERVE) {
            if (p->st.fd_reserve_drops++ % 1000 == 0)
                rs_log("accept client=%s dropped: descriptor %d of %ld, the last %d are for recoveries (%" PRIu64
                       " dropped)", RS_A(rs_addr_of_sin(&peer)), fd, limit, RS_PROXY_FD_RESERVE,
                       p->st.fd_reserve_drops);
            close(fd);
            continue;
        }
        pc = px_pc_new(p, 0, rs_addr_of_sin(&peer));
        if (!pc) {
            close(fd);
            continue;
        }
        p->st.accepted++;
        if (p->listen.ip) {
            pc->vip = p->listen;        /* bound to it: no need to ask */
        } else {
            getsockname(fd, (struct sockaddr *)&me, &mlen);
            pc->vip = rs_addr_of_sin(&me);
        }
        pc->t_accept_us = rs_now_us();
        pc->c2b_cap = RS_PROXY_REQ_MAX;
        pc->c2b = malloc(pc->c2b_cap);
        pc->parser = malloc(sizeof(http_parser));
        /* Watched for nothing yet (a hang-up or error still wakes it): the
         * request has as good as always come with the handshake's last ACK
         * and is read below at once; EPOLLIN only if it has not. */
        if (rs_io_start(&p->loop, &pc->cio, fd, 0, client_io, pc) < 0) {
            close(fd);
            px_pc_free(p, pc);
            continue;
        }
        if (!pc->c2b || !pc->parser) {
            px_pc_close(p, pc, "out-of-memory", true);
            continue;
        }
        http_parser_init(pc->parser, HTTP_REQUEST);
        ((http_parser *)pc->parser)->data = pc;
        pc->phase = PC_READ_REQ;
        rs_timer_after(&p->loop, &pc->timer, p->request_ns);
        k = px_key_c(pc);
        /* The client's entry waits for the backend's (px_bind_watched):
         * both in one change of the table, usually. */
        if (p->dp)
            px_dp_hold(p->dp);
        if (p->dp && px_dp_watch(p->dp, &k, pc->id)) {
            px_dp_flush(p->dp);
            px_pc_close(p, pc, "splice-table-full", true);
            continue;
        }
        rs_log("accept id=%" PRIu64 " client=%s vip=%s", pc->id, RS_A(pc->client), RS_A(pc->vip));
        id = pc->id;
        read_request(p, pc);    /* may free 'pc' */
        if (p->dp && px_dp_flush(p->dp) && (pc = px_pc_find(p, id)))
            px_pc_close(p, pc, "splice-table-full", true);
    }
}

/* ---- splice events and reaping --------------------------------------------- */

static void on_flow_event(void *arg, const struct rs_flow_event *ev)
{
    struct proxy *p = arg;
    struct pconn *pc = px_pc_find(p, ev->splice_id);
    struct rs_addr from = { ntohl(ev->key.saddr), ntohs(ev->key.sport) };
    struct rs_flow_key kb;

    if (ev->flags & (RS_FLOW_OPENED | RS_FLOW_STALE | RS_FLOW_REFUSED | RS_FLOW_UNANSWERED | RS_FLOW_REUSED)) {
        px_syn_event(p, ev);
        return;
    }
    if (!pc && ev->splice_id >= RS_SYN_ID_BASE) {
        px_syn_take_late(p, ev);    /* (what it tells, its entries show) */
        return;
    }
    if (!pc || (pc->rec && px_recovery_event(p, pc, ev)))
        return;
    kb = px_key_b(pc);
    /* Until its entries tell otherwise (recovery.c reads them for the
     * logger's word: px_syn_backend_closed_first), a backend that ended
     * its side holds a TIME_WAIT on the port.  Without a guard nothing
     * tells: as though it did. */
    if (pc->syn_port && (ev->flags & RS_FLOW_SEEN_FIN) && !memcmp(&ev->key, &kb, sizeof(kb)))
        pc->backend_fin_first = true;
    if (ev->flags & RS_FLOW_ACKED) {
        if (pc->opening && pc->open_gen && ev->gen == pc->open_gen && !memcmp(&ev->key, &kb, sizeof(kb)))
            open_done(p, pc);
        return;
    }
    if (ev->flags & RS_FLOW_GUARDED) {
        bool ours = !memcmp(&ev->key, &kb, sizeof(kb));
        rs_log("%s id=%" PRIu64 " from=%s client=%s held (guarded)%s", ev->flags & RS_FLOW_SEEN_RST ? "rst" : "fin",
               pc->id, RS_A(from), RS_A(pc->client), ours ? "" : ", not the serving backend: ignored");
        /* A backend ended its side: the fastest sign of a process crash,
         * unless the logger says the application meant it. */
        if (ours)
            px_backend_end(p, pc, ev->flags & RS_FLOW_SEEN_RST);
        return;
    }
    if (ev->flags & RS_FLOW_SEEN_RST)
        p->st.resets++;
    else
        p->st.fins++;
    pc->seen |= (from.ip == pc->client.ip && from.port == pc->client.port) ? ev->flags : ev->flags << 4;
    rs_log("%s id=%" PRIu64 " from=%s client=%s backend=%s seq=%u", ev->flags & RS_FLOW_SEEN_RST ? "rst" : "fin",
           pc->id, RS_A(from), RS_A(pc->client), RS_A(pc->backend), ev->seq);
    px_pc_check_end(p, pc);
}

void px_pc_check_end(struct proxy *p, struct pconn *pc)
{
    if ((pc->seen & RS_FLOW_SEEN_RST) || (pc->seen & (RS_FLOW_SEEN_RST << 4))
        || ((pc->seen & RS_FLOW_SEEN_FIN) && (pc->seen & (RS_FLOW_SEEN_FIN << 4)))) {
        if (pc->phase == PC_SPLICED && !pc->rec) {
            pc->phase = PC_CLOSING;
            rs_timer_after(&p->loop, &pc->timer, p->linger_ns);
        }
    }
}

/* A standby of a pair acts on no event of its program: the connections
 * are the active proxy's, and it has no logger or rs-stated to ask.  What
 * its program reported (before it stood by: a proxy restarted where the
 * active one ran; or what a stale ARP entry sent it) waits in the rings
 * until it takes over (px_serve) and has adopted the table. */
bool px_standing_by(const struct proxy *p)
{
    return p->pair.peer.port && !p->pair.active;
}

void px_pc_events(struct rs_io *io, uint32_t events)
{
    struct proxy *p = io->ctx;

    (void)events;
    if (px_standing_by(p)) {
        rs_io_set(io, 0);       /* again in px_serve */
        return;
    }
    px_dp_poll_events(p->dp, on_flow_event, p);
}

void px_pc_events_quiet(void *ctx)
{
    struct proxy *p = ctx;

    if (!px_standing_by(p))
        px_dp_poll_quiet(p->dp, on_flow_event, p);
}

/* How many turns of the reap it takes to read every connection once: each
 * is read REAP_VISITS times within the shortest of the times the reap
 * watches for (--idle, the half-open time, --syn-sweep), no more often
 * (two bpf reads a connection each time: 2000 idle keep-alive connections
 * cost rs-proxy 15 ms of CPU a second when every turn read them all). */
static unsigned reap_slices(const struct proxy *p)
{
    uint64_t shortest = p->idle_ns < p->half_open_ns ? p->idle_ns : p->half_open_ns, n;

    if (p->syn.on && p->syn.sweep_ns < shortest)
        shortest = p->syn.sweep_ns;
    n = shortest / REAP_VISITS / REAP_NS;
    return n < 1 ? 1 : n > REAP_SLICES_MAX ? REAP_SLICES_MAX : (unsigned)n;
}

void px_pc_reap(struct rs_timer *t)
{
    struct proxy *p = t->ctx;
    unsigned slices = reap_slices(p), per = (RS_PROXY_BUCKETS + slices - 1) / slices;

    for (unsigned i = 0; i < per; i++) {
        unsigned b = (p->reap_next + i) % RS_PROXY_BUCKETS;

        for (struct pconn *pc = p->buckets[b], *next; pc; pc = next) {
            struct px_flow_info fc, fb;
            struct rs_flow_key kc = px_key_c(pc), kb = px_key_b(pc);
            uint64_t last, now;

            next = pc->next;
            if (pc->phase != PC_SPLICED || pc->rec || px_dp_get(p->dp, &kc, &fc)
                || px_dp_get(p->dp, &kb, &fb))
                continue;
            if (fc.cfg.splice_id != pc->id) {
                /* A new connection of the same client port took the entry:
                 * this one (adopted, long ended) goes without a word. */
                px_pc_close(p, pc, "superseded", false);
                continue;
            }
            if (pc->syn_port && px_syn_half_open(p, pc, &fc))
                continue;
            last = fc.t.last_ns > fb.t.last_ns ? fc.t.last_ns : fb.t.last_ns;
            /* Read the clock after the entries: a segment stamped in between
             * is newer than a clock read before, and "now - last" would wrap. */
            now = rs_mono_ns();
            if (last >= now)
                continue;
            if (now - last > p->idle_ns) {
                p->st.reaped_idle++;
                px_pc_close(p, pc, "idle", true);
            } else if (pc->seen && now - last > p->half_open_ns) {
                p->st.reaped_half_open++;
                px_pc_close(p, pc, "half-open", true);
            }
        }
    }
    p->reap_next = (p->reap_next + per) % RS_PROXY_BUCKETS;
    px_syn_tick(p);
    rs_timer_after(&p->loop, t, REAP_NS);
}
