/* rs-proxy: the splicing proxy and recovery manager.  Options, set-up, the
 * control port (RESPLICE, FAILURE, SUSPECT, FENCE, STATUS), stats, and the
 * event loop; the connections are conn.c, the recoveries recovery.c, the
 * data path datapath.h (the eBPF one: dp_ebpf.c and bpf/; the kernel
 * module's: dp_kmod.c), the socket tools (TCP_REPAIR, RSTs) repair.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "options.h"
#include "parse.h"
#include "proxy.h"

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

static void print_stats(void *ctx)
{
    struct proxy *p = ctx;

    static const struct rs_stat_field fields[] = {
        RS_STAT(struct stats, accepted), RS_STAT(struct stats, spliced), RS_STAT(struct stats, splice_retries),
        RS_STAT(struct stats, closed_early), RS_STAT(struct stats, fins), RS_STAT(struct stats, resets),
        RS_STAT(struct stats, reaped_idle), RS_STAT(struct stats, reaped_half_open),
        RS_STAT(struct stats, request_timeouts), RS_STAT(struct stats, request_evictions),
        RS_STAT(struct stats, fd_reserve_drops),
        RS_STAT(struct stats, resplices), RS_STAT(struct stats, resplice_errors),
        RS_STAT(struct stats, backend_errors), RS_STAT(struct stats, conn_map_errors),
        RS_STAT(struct stats, failures), RS_STAT(struct stats, false_alarms), RS_STAT(struct stats, suspects),
        RS_STAT(struct stats, owed_reset),
        RS_STAT(struct stats, recovered), RS_STAT(struct stats, unrecoverable),
        RS_STAT(struct stats, recovery_retargets),
        RS_STAT(struct stats, legit_closes), RS_STAT(struct stats, fins_released),
        RS_STAT(struct stats, syn_spliced), RS_STAT(struct stats, syn_stale), RS_STAT(struct stats, syn_late),
        RS_STAT(struct stats, syn_half_open), RS_STAT(struct stats, connects_busy),
        RS_STAT(struct stats, syn_time_waits_reset), RS_STAT(struct stats, syn_reused),
        RS_STAT(struct stats, close_words), RS_STAT(struct stats, close_asks),
        RS_STAT(struct stats, close_words_late), RS_STAT(struct stats, close_refused),
        RS_STAT(struct stats, redispatched),
        RS_STAT(struct stats, resets_sent), RS_STAT(struct stats, fenced_drops),
        RS_STAT(struct stats, port_clashes), RS_STAT(struct stats, adopted),
    };

    printf("stats recovering=%u ctl_rejected=%" PRIu64, p->recovering, p->ctlsrv.rejected + p->st.ctl_rejected);
    rs_stats_fields(stdout, &p->st, fields, sizeof(fields) / sizeof(fields[0]));
    if (p->pair.peer.port)
        printf(" pair_role=%s pair_epoch=%" PRIu64 " pair_sent=%" PRIu64 " pair_applied=%" PRIu64
               " pair_apply_errors=%" PRIu64 " garps=%" PRIu64, p->pair.active ? "active" : "standby", p->pair.epoch,
               p->pair.sent, p->pair.applied, p->pair.apply_errors, p->pair.garps);
    printf("\n");
    fflush(stdout);
}

/* ---- control plane -------------------------------------------------------- */

static void status_report(struct proxy *p, struct rs_ctlconn *c)
{
    struct rs_ctl_msg m = { .type = RS_CTL_STATUS_REPORT };
    struct rs_ctl_status_report *r = &m.u.status_report;
    bool alt_ok = p->alternate >= 0 && !p->backends[p->alternate].fenced;

    r->recovering = p->recovering;
    r->recovered = (uint32_t)p->st.recovered;
    r->unrecoverable = (uint32_t)p->st.unrecoverable;
    for (int i = 0; i < p->nbackends && r->n < RS_CTL_STATUS_BACKENDS; i++) {
        const struct backend *b = &p->backends[i];
        bool protected = !b->fenced && p->logger.port && (i == p->alternate ? false : alt_ok);
        r->b[r->n++] = (struct rs_ctl_backend_status){ b->id, b->addr.ip, b->addr.port, (uint8_t)b->role,
                                                       (uint8_t)((b->fenced ? RS_CTL_BACKEND_FENCED : 0)
                                                                 | (protected ? RS_CTL_BACKEND_PROTECTED : 0)),
                                                       px_pc_count(p, i) };
    }
    rs_ctl_send(c, &m);
}

static const char *fail_reason(uint16_t r)
{
    switch (r) {
    case RS_CTL_FAIL_TIMEOUT: return "heartbeat-timeout";
    case RS_CTL_FAIL_RESET: return "backend-reset";
    case RS_CTL_FAIL_EXITED: return "process-exited";
    case RS_CTL_FAIL_ADMIN: return "operator";
    }
    return "?";
}

/* The logger names a connection that owes a response, as we come up.
 * One that neither we nor our tc program know (no connection, no entry)
 * was accepted by a predecessor that died before copying it or handing
 * it over: nobody can answer it, and its client would wait in silence.
 * It is reset: a probe, which this host's stack answers with a RST.  (A
 * connection still in our accept queue has its socket: the probe's answer
 * meets it, and nothing happens.) */
static void owed(struct proxy *p, const struct rs_ctl_suspect *s)
{
    struct rs_addr client = { s->client.ip4, s->client.port };
    struct rs_flow_key kc = px_flow_key(client, p->listen);
    struct px_flow_info f;

    if (px_pc_find_client(p, client) || px_standing_by(p) || (p->dp && !px_dp_get(p->dp, &kc, &f)))
        return;
    p->st.owed_reset++;
    rs_log("owed client=%s: no connection here (its proxy died before copying it): reset", RS_A(client));
    px_probe(p, &kc);
}

static void on_ctl(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct proxy *p = c->ctx;

    switch (m->type) {
    case RS_CTL_RESPLICE: {
        struct rs_addr client = { m->u.resplice.client.ip4, m->u.resplice.client.port };
        struct rs_addr target = { m->u.resplice.target.ip4, m->u.resplice.target.port };
        struct pconn *pc = px_pc_find_client(p, client);
        int e = pc ? px_resplice(p, pc, target, m->u.resplice.client_seq, m->u.resplice.resp_seq, c->id, m->seq)
                   : -ENOENT;
        if (e) {
            rs_log("resplice client=%s to=%s failed: %s", RS_A(client), RS_A(target), strerror(-e));
            rs_ctl_ack(c, m, e);
        }
        break;   /* answered when the move is done */
    }
    case RS_CTL_FAILURE:
        rs_ctl_ack(c, m, 0);
        px_backend_failed(p, m->u.failure.backend_id, fail_reason(m->u.failure.reason));
        break;
    case RS_CTL_SUSPECT: {
        struct rs_addr client = { m->u.suspect.client.ip4, m->u.suspect.client.port };
        struct pconn *pc = px_pc_find_client(p, client);

        if (m->u.suspect.reason == RS_CTL_SUSPECT_OWED) {     /* (it comes on logger_conn: on_peer_msg) */
            rs_ctl_ack(c, m, 0);
            owed(p, &m->u.suspect);
            break;
        }
        bool reading = m->u.suspect.reason == RS_CTL_SUSPECT_NOT_READING;
        uint64_t quiet_ms = pc ? px_pc_backend_quiet_ms(p, pc, reading) : 0;
        /* The logger's view may have holes (a capture that fell behind): a
         * backend the tc program saw sending (or, for one that stopped
         * reading, moving its ACK) meanwhile is not hung. */
        bool confirmed = pc && pc->backend_idx >= 0 && !pc->rec && quiet_ms * 2 >= m->u.suspect.silent_ms;
        /* A hung application reads nothing anywhere; one that takes in
         * another client's bytes meanwhile is only slow to this one (a
         * loaded alternate after a failover of many uploads): not failed. */
        bool elsewhere = confirmed && reading
                         && px_backend_read_within(p, pc->backend_idx, pc, m->u.suspect.silent_ms / 2);

        confirmed = confirmed && !elsewhere;

        rs_ctl_ack(c, m, 0);
        p->st.suspects++;
        rs_log("suspect client=%s backend=%s why=%s silent_ms=%u quiet_here_ms=%" PRIu64 "%s", RS_A(client),
               pc && pc->backend_idx >= 0 ? RS_A(p->backends[pc->backend_idx].addr) : "-",
               reading ? "not-reading" : "response-stall", m->u.suspect.silent_ms, quiet_ms,
               confirmed ? "" : elsewhere ? " (it reads other connections: slow, not hung)" : " (not confirmed: ignored)");
        if (confirmed)
            px_backend_failed(p, p->backends[pc->backend_idx].id, reading ? "not-reading" : "response-stall");
        break;
    }
    case RS_CTL_FENCE:
        if (m->u.fence.fenced) {
            int known = px_backend_index(p, m->u.fence.backend_id) >= 0;
            rs_ctl_ack(c, m, known ? 0 : -ENOENT);
            if (known)
                px_backend_failed(p, m->u.fence.backend_id, "operator");
        } else {
            rs_ctl_ack(c, m, px_backend_readmit(p, m->u.fence.backend_id));
        }
        break;
    case RS_CTL_STATUS:
        status_report(p, c);
        break;
    case RS_CTL_CLOSE_WORD:
        px_close_word(p, &m->u.close);    /* a word, not a request: no ACK */
        break;
    case RS_CTL_ACK:
        break;
    default:
        rs_ctl_ack(c, m, -EOPNOTSUPP);
    }
}

/* Frames from rs-stated or the logger outside a call: ACKs of FENCE, the
 * logger's answers to CLOSE_ASK. */
static void on_peer_msg(struct rs_ctlconn *c, const struct rs_ctl_msg *m)
{
    struct proxy *p = c->ctx;

    if (m->type == RS_CTL_CLOSE_WORD && c == &p->logger_conn)
        px_close_word(p, &m->u.close);
    else if (m->type == RS_CTL_SUSPECT && m->u.suspect.reason == RS_CTL_SUSPECT_OWED && c == &p->logger_conn)
        owed(p, &m->u.suspect);
    else if (m->type == RS_CTL_ACK && m->u.ack.status)
        rs_log("control %s=%s: %s answered %s", c->name, RS_A(c->addr), rs_ctl_type_str(m->u.ack.echo_type),
               strerror(-m->u.ack.status));
}

/* Up (again): a predecessor that died may have left connections we do
 * not know; the logger names those that owe a response (owed()). */
static void on_logger_state(struct rs_ctlconn *c, int err)
{
    struct rs_ctl_msg m = { .type = RS_CTL_OWED_ASK };

    if (!err)
        rs_ctl_send(c, &m);
}

/* ---- options ------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-proxy --listen VIP:PORT --backend ADDR:PORT [--backend ...] [options]\n"
        "  --sticky COOKIE    pick the backend by a hash of this cookie (default: round-robin)\n"
        "  --ifname IF        interface of the data path (default: the one holding VIP)\n"
        "  --datapath NAME    what splices segments: ebpf (default; a tc program) or kmod\n"
        "                     (the kernel module kmod/tcpspmod.c, loaded beforehand)\n"
        "  --event-ring SIZE  ebpf: each of the two rings the tc program's events wait in for\n"
        "                     rs-proxy, a power of two of pages (default 1M: the FINs and\n"
        "                     SYN-ACKs of 6000 connections; one found full loses events, which the\n"
        "                     sweep and the connection's next event make up for)\n"
        "  --control ADDR:PORT  control port (RESPLICE, FAILURE, SUSPECT, FENCE, STATUS; needs --key)\n"
        "  --key FILE         shared control-plane key: 64 hex characters\n"
        "  --idle DUR         reap spliced connections idle this long (default 600s)\n"
        "  --half-open DUR    reap after one FIN and this long idle (default 60s)\n"
        "  --linger DUR       keep a closed connection's entries this long (default 2s)\n"
        "  --connect-timeout DUR  give up connecting to a backend (then: the alternate) (default 500ms)\n"
        "  --request-timeout DUR  a client whose first request is not whole by then is reset\n"
        "                     (a slow or idle client holds no descriptor for long) (default 10s)\n"
        "  --fresh            start with an empty splice table: do not adopt the connections a\n"
        "                     proxy stopped (SIGTERM hands them over) or killed here left\n"
        "  --no-splice        relay in user space only (baseline, debugging)\n"
        "  --pair ADDR:PORT   the other proxy of a pair (its --pair-listen): the active one keeps\n"
        "                     the standby's copy of its splice table; the standby takes the VIP\n"
        "                     over when the active dies (the VIP on both hosts' loopback, their\n"
        "                     kernels not answering ARP for it: arp_ignore=1; needs --ifname)\n"
        "  --pair-listen ADDR:PORT  where the other proxy of the pair connects\n"
        "  --standby          start as the standby of the pair (default: active)\n"
        "  --takeover-after DUR  the standby takes over after the active is silent this long\n"
        "                     (default 300ms; at once when the active's connection closes)\n"
        "  --relay-first DUR  relay each new connection in user space at least this long before\n"
        "                     splicing it (default 0: as soon as both sides are quiet; tests)\n"
        "Failover (docs/recovery.md):\n"
        "  --backend [ID=]ADDR:PORT  backend ids default to 1, 2, ... in order\n"
        "  --alternate [ID=]ADDR:PORT  the backend that takes over failed connections\n"
        "  --spare [ID=]ADDR:PORT  becomes the alternate once the alternate serves (re-protection;\n"
        "                     its rs-stated receives the alternate's states: rs-stated --peer)\n"
        "  --logger ADDR:PORT  the logger's control port (enables recovery; needs --key)\n"
        "  --logger-resend ADDR:PORT  the logger's resend port (default: logger's address, 7072)\n"
        "  --stated-port N    rs-stated's port on each backend host (CONN_MAP, FENCE)\n"
        "  --identity header|map  at the request, how a backend learns whose requests a new\n"
        "                     connection carries (at the SYN, an option of the SYN names it): a\n"
        "                     PROXY protocol v2 header before the request (header, the default: no\n"
        "                     round trip; an application hung at connect is found by the stall\n"
        "                     detector), or CONN_MAP to its rs-stated before the connect (map: a\n"
        "                     hung application is found at connect, within --connect-timeout)\n"
        "  --splice-at request|syn  when a new connection is spliced: by the tc program at the\n"
        "                     client's SYN, no process in the way (syn: the default where it can be:\n"
        "                     the eBPF data path, one --backend, not --sticky; the backend reads the\n"
        "                     client's name from its SYN, docs/recovery.md), or once the proxy has\n"
        "                     read its request (request: --identity applies)\n"
        "  --syn-ports LO-HI  the proxy's ports for connections spliced at the SYN (default:\n"
        "                     the larger range outside the host's ephemeral ports, 1024-32767\n"
        "                     with Linux's 32768-60999)\n"
        "  --syn-sweep DUR    how long a client may stay silent after a SYN the backend has not\n"
        "                     answered, or leave the backend's SYN-ACK unacknowledged, before its\n"
        "                     port is taken back (default 30s; a client gives a connect up after\n"
        "                     ~2 min of SYN retransmissions)\n"
        "  --recovery-timeout DUR  each control step of a recovery (plan, each move) ends by then,\n"
        "                     else the client gets a RST (default 800ms)\n"
        "Logs one line per event on stderr; SIGUSR1 prints a stats line on stdout.\n");
}

/* Parses "[ID=]ADDR:PORT"; without an ID the backend gets 'default_id'. */
static int parse_backend(const char *v, struct rs_addr *a, uint32_t *id, uint32_t default_id)
{
    int e = rs_id_addr_parse(v, UINT32_MAX, id, a);

    if (!e && !*id)
        *id = default_id;
    return e;
}

static int add_backend(const char *v, void *dst)
{
    struct proxy *p = dst;
    struct backend *b = &p->backends[p->nbackends];

    if (p->nbackends == RS_PROXY_MAX_BACKENDS - 1 || parse_backend(v, &b->addr, &b->id, (uint32_t)p->nbackends + 1))
        return -EINVAL;
    b->configured = b->role = ROLE_PRIMARY;
    b->rank = b->id;
    p->nbackends++;
    return 0;
}

struct backend_opt {
    struct rs_addr addr;
    uint32_t id;
};

#define SPARES_MAX 1       /* the logger knows one (--spare-stated) */

struct spares_opt {
    struct backend_opt s[SPARES_MAX];
    int n;
};

static int add_spare(const char *v, void *dst)
{
    struct spares_opt *sp = dst;

    if (sp->n == SPARES_MAX || parse_backend(v, &sp->s[sp->n].addr, &sp->s[sp->n].id, 0))
        return -EINVAL;
    sp->n++;
    return 0;
}

static int set_alternate(const char *v, void *dst)
{
    struct backend_opt *a = dst;

    return parse_backend(v, &a->addr, &a->id, 0);
}

static int port_number(const char *v, void *dst)
{
    uint64_t n;

    if (rs_parse_size(v, &n) || !n || n > 65535)
        return -EINVAL;
    *(uint16_t *)dst = (uint16_t)n;
    return 0;
}

static int datapath_name(const char *v, void *dst)
{
    if (!px_datapath_find(v))
        return -EINVAL;
    *(const char **)dst = v;
    return 0;
}

static int splice_at(const char *v, void *dst)
{
    if (strcmp(v, "request") && strcmp(v, "syn"))
        return -EINVAL;
    *(int *)dst = !strcmp(v, "syn") ? PX_AT_SYN : PX_AT_REQUEST;
    return 0;
}

static int port_range(const char *v, void *dst)
{
    struct px_syn *s = dst;
    unsigned lo, hi;
    int n = 0;

    if (sscanf(v, "%u-%u%n", &lo, &hi, &n) != 2 || v[n] || !lo || lo > hi || hi > 65535)
        return -EINVAL;
    s->port_lo = (uint16_t)lo;
    s->port_hi = (uint16_t)hi;
    return 0;
}

static int identity_mode(const char *v, void *dst)
{
    if (strcmp(v, "map") && strcmp(v, "header"))
        return -EINVAL;
    *(bool *)dst = !strcmp(v, "header");
    return 0;
}

/* Returns 0, 1 after --help, or 2 (and prints why). */
static int parse_args(struct proxy *p, int argc, char **argv)
{
    const char *keyfile = NULL, *sticky = NULL, *ifname = NULL;
    struct backend_opt alt = { { 0, 0 }, 0 };
    struct spares_opt spares = { .n = 0 };
    char dp_want[80];
    const struct rs_opt opts[] = {
        RS_OPTION("listen", RS_OPT_ADDR, &p->listen),
        RS_OPTION("backend", RS_OPT_FN, p, .want = "[ID=]IPv4ADDR:PORT", .fn = add_backend),
        RS_OPTION("alternate", RS_OPT_FN, &alt, .want = "[ID=]IPv4ADDR:PORT", .fn = set_alternate),
        RS_OPTION("spare", RS_OPT_FN, &spares, .want = "[ID=]IPv4ADDR:PORT (one)", .fn = add_spare),
        RS_OPTION("logger", RS_OPT_ADDR, &p->logger),
        RS_OPTION("logger-resend", RS_OPT_ADDR, &p->logger_resend),
        RS_OPTION("stated-port", RS_OPT_FN, &p->stated_port, .want = "a port, 1..65535", .fn = port_number),
        RS_OPTION("identity", RS_OPT_FN, &p->identity_header, .want = "map or header", .fn = identity_mode),
        RS_OPTION("splice-at", RS_OPT_FN, &p->syn.at, .want = "request or syn", .fn = splice_at),
        RS_OPTION("syn-ports", RS_OPT_FN, &p->syn, .want = "LO-HI, 1..65535", .fn = port_range),
        RS_OPTION("syn-sweep", RS_OPT_DURATION, &p->syn.sweep_ns, .nonzero = true),
        RS_OPTION("sticky", RS_OPT_STR, &sticky),
        RS_OPTION("datapath", RS_OPT_FN, &p->datapath, .want = dp_want, .fn = datapath_name),
        RS_OPTION("event-ring", RS_OPT_SIZE, &p->event_ring),
        RS_OPTION("ifname", RS_OPT_STR, &ifname),
        RS_OPTION("control", RS_OPT_ADDR, &p->ctl),
        RS_OPTION("key", RS_OPT_STR, &keyfile),
        RS_OPTION("no-splice", RS_OPT_FLAG, &p->nosplice),
        RS_OPTION("fresh", RS_OPT_FLAG, &p->fresh),
        RS_OPTION("idle", RS_OPT_DURATION, &p->idle_ns, .nonzero = true),
        RS_OPTION("half-open", RS_OPT_DURATION, &p->half_open_ns, .nonzero = true),
        RS_OPTION("linger", RS_OPT_DURATION, &p->linger_ns, .nonzero = true),
        RS_OPTION("connect-timeout", RS_OPT_DURATION, &p->connect_ns, .nonzero = true),
        RS_OPTION("request-timeout", RS_OPT_DURATION, &p->request_ns, .nonzero = true),
        RS_OPTION("recovery-timeout", RS_OPT_DURATION, &p->recovery_ns, .nonzero = true),
        RS_OPTION("relay-first", RS_OPT_DURATION, &p->relay_first_ns),
        RS_OPTION("pair", RS_OPT_ADDR, &p->pair.peer),
        RS_OPTION("pair-listen", RS_OPT_ADDR, &p->pair.listen),
        RS_OPTION("standby", RS_OPT_FLAG, &p->pair.standby),
        RS_OPTION("takeover-after", RS_OPT_DURATION, &p->pair.takeover_ns, .nonzero = true),
        RS_OPTIONS_END,
    };
    int r;

    snprintf(dp_want, sizeof(dp_want), "one of: %s", px_datapath_names());

    p->datapath = "ebpf";
    p->idle_ns = 600ull * 1000000000u;
    p->half_open_ns = 60ull * 1000000000u;
    p->linger_ns = 2000000000ull;
    p->connect_ns = 500000000ull;
    p->syn.sweep_ns = 30000000000ull;
    p->identity_header = true;
    p->request_ns = 10ull * 1000000000u;
    p->recovery_ns = 800000000ull;
    p->alternate = -1;
    p->pair.takeover_ns = 300000000ull;
    p->syn.backend = -1;
    r = rs_opts_parse("rs-proxy", argc, argv, opts, usage);
    if (r)
        return r;
    if (sticky) {
        p->sticky = true;
        snprintf(p->cookie_name, sizeof(p->cookie_name), "%s", sticky);
    }
    if (ifname)
        snprintf(p->ifname, sizeof(p->ifname), "%s", ifname);
    if (!p->listen.ip || !p->nbackends) {
        usage(stderr);
        return 2;
    }
    if (alt.addr.port) {
        struct backend *b = &p->backends[p->nbackends];
        *b = (struct backend){ .id = alt.id ? alt.id : (uint32_t)p->nbackends + 1, .addr = alt.addr,
                               .configured = ROLE_ALTERNATE, .role = ROLE_ALTERNATE };
        b->rank = b->id;
        p->alternate = p->nbackends++;
    }
    if (spares.n && !alt.addr.port) {
        fprintf(stderr, "rs-proxy: --spare needs --alternate\n");
        return 2;
    }
    for (int i = 0; i < spares.n && p->nbackends < RS_PROXY_MAX_BACKENDS; i++) {
        struct backend *b = &p->backends[p->nbackends];
        *b = (struct backend){ .id = spares.s[i].id ? spares.s[i].id : (uint32_t)p->nbackends + 1,
                               .addr = spares.s[i].addr, .configured = ROLE_SPARE, .role = ROLE_SPARE };
        b->rank = b->id;
        p->nbackends++;
    }
    if (p->logger.port && !p->logger_resend.port)
        p->logger_resend = (struct rs_addr){ p->logger.ip, 7072 };
    if (p->logger.port && (!keyfile || !alt.addr.port)) {
        fprintf(stderr, "rs-proxy: --logger needs --key and --alternate\n");
        return 2;
    }
    if ((p->pair.peer.port != 0) != (p->pair.listen.port != 0) || (p->pair.standby && !p->pair.peer.port)) {
        fprintf(stderr, "rs-proxy: --pair and --pair-listen go together (and --standby needs them)\n");
        return 2;
    }
    if (p->pair.peer.port && (!keyfile || !ifname || p->nosplice)) {
        fprintf(stderr, "rs-proxy: --pair needs --key and --ifname, and splicing\n");
        return 2;
    }
    {
        int primaries = 0;
        bool can = !p->nosplice && !p->sticky && !strcmp(p->datapath, "ebpf");

        for (int i = 0; i < p->nbackends; i++)
            primaries += p->backends[i].configured == ROLE_PRIMARY;
        can = can && primaries == 1;
        if (p->syn.at == PX_AT_SYN && !can) {
            fprintf(stderr, "rs-proxy: --splice-at syn needs the ebpf data path and one --backend (not --sticky "
                            "or --no-splice)\n");
            return 2;
        }
        p->syn.on = p->syn.at == PX_AT_SYN || (p->syn.at == PX_AT_AUTO && can);
    }
    if ((p->ctl.port || p->stated_port) && !keyfile) {
        fprintf(stderr, "rs-proxy: --control and --stated-port need --key\n");
        return 2;
    }
    if (p->event_ring && (p->event_ring < 4096 || p->event_ring > (1u << 30) || (p->event_ring & (p->event_ring - 1)))) {
        fprintf(stderr, "rs-proxy: --event-ring must be a power of two from 4k to 1G\n");
        return 2;
    }
    if (keyfile) {
        int e = rs_ctl_key_load(keyfile, &p->key);
        if (e) {
            fprintf(stderr, "rs-proxy: cannot load key %s: %s\n", keyfile, strerror(-e));
            return 2;
        }
        p->has_key = true;
    }
    return 0;
}

/* ---- set-up -------------------------------------------------------------------- */

#define LEASE_NS ((uint64_t)500 * 1000000)        /* how long the tc program trusts we are alive */
#define LEASE_RENEW_NS ((uint64_t)100 * 1000000)

/* While the proxy runs, its lease in the tc program does not run out; when
 * it dies (or stops), new connections wait for a successor (struct rs_vip).
 * Its death also ends the lease at once (its listener, which it holds from
 * px_serve on, closed), unless it splices at the SYN without a pair: the
 * program's splices of the meantime then reach the backend at once, and
 * its successor on this host takes them on (adopt.c), where a pair's
 * other proxy, holding the VIP, would not know of them, and where
 * without splicing at the SYN the host would refuse them. */
static void renew_lease(struct rs_timer *t)
{
    struct proxy *p = t->ctx;
    int e = px_dp_set_vip(p->dp, p->listen.ip, p->listen.port, rs_mono_ns() + LEASE_NS,
                          !p->syn.on || p->pair.peer.port);

    if (e)
        rs_log("lease: %s", strerror(-e));
    rs_timer_after(&p->loop, t, LEASE_RENEW_NS);
}

/* Whenever the loop wakes, before anything else is handled: an active
 * pair's proxy that was stopped too long steps down; then the events that
 * wake nobody (a connection to take on) are read, whatever woke the loop
 * (the lease's renewal does every 100 ms): reading an empty ring costs no
 * system call. */
static void woken(void *ctx)
{
    struct proxy *p = ctx;

    if (p->pair.peer.port)
        px_pair_woken(p);
    if (p->dp)
        px_pc_events_quiet(p);
}

/* --syn-ports by default: the larger of the ranges below and above the
 * host's ephemeral ports (from 1024), less the VIP's port and what lies
 * beyond it on the smaller side.  (32768-60999, Linux's: 1024-32767.) */
static void default_syn_ports(struct proxy *p)
{
    unsigned eph_lo = p->port_lo - 1u, eph_hi = p->port_hi, lo = 1024, hi = eph_lo - 1;
    unsigned vip = p->listen.port;

    if (eph_lo <= 1024 || 65535 - eph_hi > hi - lo)
        lo = eph_hi + 1, hi = 65535;
    if (vip >= lo && vip <= hi) {
        if (vip - lo > hi - vip)
            hi = vip - 1;
        else
            lo = vip + 1;
    }
    if (lo > hi || hi > 65535)
        lo = hi = eph_hi;       /* none: the check below splices at the request */
    p->syn.port_lo = (uint16_t)lo;
    p->syn.port_hi = (uint16_t)hi;
}

static int setup(struct proxy *p)
{
    int e;

    if (!p->ifname[0] && (e = ifname_of(p->listen.ip, p->ifname))) {
        fprintf(stderr, "rs-proxy: no interface holds %s\n", RS_A(p->listen));
        return -1;
    }
    if ((e = rs_loop_init(&p->loop)) || (e = rs_loop_signals(&p->loop, print_stats, p))) {
        fprintf(stderr, "rs-proxy: cannot set up the event loop: %s\n", strerror(-e));
        return -1;
    }
    p->rawfd = p->lio.fd = -1;
    px_ports_init(p);
    if (!p->syn.port_lo)
        default_syn_ports(p);
    if (p->syn.on && ((p->syn.port_lo <= p->port_hi && p->syn.port_hi >= p->port_lo)
                      || (p->syn.port_lo <= p->listen.port && p->syn.port_hi >= p->listen.port))) {
        fprintf(stderr, "rs-proxy: --syn-ports %u-%u overlaps the host's ephemeral ports %u-%u or the VIP's%s\n",
                p->syn.port_lo, p->syn.port_hi, p->port_lo, p->port_hi,
                p->syn.at == PX_AT_AUTO ? ": splicing at the request" : "");
        if (p->syn.at != PX_AT_AUTO)
            return -1;
        p->syn.on = false;
    }
    if (!p->nosplice) {
        p->dp = px_datapath_find(p->datapath)->open(p->ifname, !p->fresh, p->event_ring, &e);
        if (!p->dp) {
            fprintf(stderr, "rs-proxy: cannot attach the %s data path to %s: %s\n", p->datapath, p->ifname,
                    strerror(-e));
            return -1;
        }
        if ((e = px_dp_set_vip(p->dp, p->listen.ip, p->listen.port, 0, false)) != 0
            || (e = rs_io_start(&p->loop, &p->eio, px_dp_events_fd(p->dp), EPOLLIN, px_pc_events, p)) != 0) {
            fprintf(stderr, "rs-proxy: cannot configure the splice program: %s\n", strerror(-e));
            return -1;
        }
        p->rawfd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
        if (p->rawfd < 0)
            rs_log("raw socket: %s (unrecoverable spliced clients get no RST)", strerror(errno));
        rs_timer_init(&p->reap_timer, px_pc_reap, p);
        rs_timer_after(&p->loop, &p->reap_timer, 500000000ull);
        rs_timer_init(&p->lease_timer, renew_lease, p);
    }
    rs_loop_woken(&p->loop, woken, p);
    p->ctl_seq = rs_now_us();
    if (p->pair.peer.port) {
        /* Until it takes over, a pair's proxy splices no SYN (px_syn_sync):
         * a program kept from an earlier life here as the active one may
         * still, numbering from where it stopped, below the ids the other
         * proxy gave since. */
        if (p->dp && p->syn.on && (e = px_dp_syn_setup(p->dp, &(struct rs_syn_cfg){ 0 }, NULL, 0)) != 0) {
            fprintf(stderr, "rs-proxy: cannot configure the splice program: %s\n", strerror(-e));
            return -1;
        }
        if ((e = px_pair_start(p)) != 0) {
            fprintf(stderr, "rs-proxy: cannot start the pair: %s\n", strerror(-e));
            return -1;
        }
        return 0;
    }
    return px_serve(p) ? -1 : 0;
}

/* The VIP's listening socket and the control port: only a proxy that
 * serves has them (a standby's would take what a stale ARP entry sends
 * it, as if it served). */
static int listen_vip(struct proxy *p)
{
    int lfd = rs_listen_tcp(p->listen, 4096), e = lfd < 0 ? lfd : 0;

    if (lfd < 0 || (e = rs_io_start(&p->loop, &p->lio, lfd, EPOLLIN, px_pc_accept, p)) != 0) {
        rs_log("cannot listen on %s: %s", RS_A(p->listen), strerror(-e));
        if (lfd >= 0)
            close(lfd);
        return e;
    }
    if (p->ctl.port && (e = rs_ctlserver_open(&p->ctlsrv, &p->loop, p->ctl, &p->key, &p->ctl_seq, PX_SENDER_REPLY,
                                              on_ctl, p)) != 0) {
        rs_log("cannot listen on %s: %s", RS_A(p->ctl), strerror(-e));
        return e;
    }
    return 0;
}

void px_exit(struct proxy *p, int status)
{
    print_stats(p);
    px_dp_close(p->dp, true);
    exit(status);
}

bool px_link_up(struct proxy *p)
{
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    bool up = true;

    if (fd < 0)
        return true;    /* cannot tell: act as before */
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", p->ifname);
    if (!ioctl(fd, SIOCGIFFLAGS, &ifr))
        up = (ifr.ifr_flags & (IFF_UP | IFF_RUNNING)) == (IFF_UP | IFF_RUNNING);
    close(fd);
    return up;
}

int px_serve(struct proxy *p)
{
    int e;

    if ((e = listen_vip(p)) != 0)
        return e;
    if (p->dp) {
        renew_lease(&p->lease_timer);
        rs_io_set(&p->eio, EPOLLIN);    /* a standby's events waited (px_standing_by) */
    }
    if (p->logger.port)
        rs_ctlconn_peer(&p->logger_conn, &p->loop, "logger", p->logger, &p->key, &p->ctl_seq, PX_SENDER_LOGGER,
                        16u << 20, on_peer_msg, on_logger_state, p);
    for (int i = 0; p->stated_port && i < p->nbackends; i++) {
        static char names[RS_PROXY_MAX_BACKENDS][24];
        snprintf(names[i], sizeof(names[i]), "stated-%u", p->backends[i].id);
        rs_ctlconn_peer(&p->backends[i].stated, &p->loop, names[i],
                        (struct rs_addr){ p->backends[i].addr.ip, p->stated_port }, &p->key, &p->ctl_seq,
                        PX_SENDER_STATED + (uint32_t)i, 4u << 20, on_peer_msg, NULL, p);
    }
    /* Last: adopting may start recoveries, which use the peers above. */
    if (p->dp && (e = px_adopt(p)) < 0)
        rs_log("adopting the previous proxy's connections: %s", strerror(-e));
    if (p->syn.on && (e = px_syn_start(p)) != 0) {
        rs_log("splice-at syn: cannot set up: %s", strerror(-e));
        return e;
    }
    return 0;
}

/* ---- hand-over ----------------------------------------------------------------- */

#define DRAIN_NS ((uint64_t)2000 * 1000000)    /* the most a stop waits for relays and recoveries */
#define DRAIN_CHECK_NS ((uint64_t)10 * 1000000)
#define LISTEN_LAST_NS ((uint64_t)50 * 1000000)  /* handshakes under way when SYNs stop still complete */

/* Connections a stop would cut (not spliced yet, or moving); with
 * 'spliced', those it hands over. */
static unsigned unsettled(struct proxy *p, unsigned *spliced)
{
    unsigned n = 0, s = 0;

    for (int b = 0; b < RS_PROXY_BUCKETS; b++)
        for (struct pconn *pc = p->buckets[b]; pc; pc = pc->next) {
            bool moving = pc->rec || (pc->phase != PC_SPLICED && pc->phase != PC_CLOSING);
            n += moving;
            s += !moving && pc->phase == PC_SPLICED;
        }
    if (spliced)
        *spliced = s;
    return n;
}

static void stop_listening(struct proxy *p)
{
    if (p->lio.fd < 0)
        return;
    rs_io_stop(&p->lio);
    close(p->lio.fd);
    p->lio.fd = -1;
}

static void drain_check(struct rs_timer *t)
{
    struct proxy *p = t->ctx;
    uint64_t now = rs_loop_now(&p->loop);

    if (now >= p->drain_until_ns - DRAIN_NS + LISTEN_LAST_NS)
        stop_listening(p);
    if ((p->lio.fd < 0 && !unsettled(p, NULL)) || now >= p->drain_until_ns)
        rs_loop_stop(&p->loop);
    else
        rs_timer_after(&p->loop, t, DRAIN_CHECK_NS);
}

/* SIGTERM: hand the spliced connections over to whoever starts next on
 * this interface (adopt.c).  The lease ends at once: new connections' SYNs
 * are dropped by the tc program (their clients retry: the successor takes
 * them; after RS_VIP_SUCCESSOR_NS without one, the host refuses them);
 * handshakes already under way get LISTEN_LAST_NS to complete, and
 * connections still relayed up to DRAIN_NS to splice, recoveries to
 * finish; then the tc program stays attached with its table.  A second
 * signal stops at once. */
static void hand_over(struct proxy *p)
{
    struct rs_timer t;
    unsigned n = 0, spliced = 0;
    int e;

    if (p->dp) {
        uint64_t now = rs_mono_ns();

        rs_timer_stop(&p->loop, &p->lease_timer);
        if ((e = px_dp_set_vip(p->dp, p->listen.ip, p->listen.port, now, false)) != 0)
            rs_log("stopping: new connections cannot be held back: %s", strerror(-e));
        p->drain_until_ns = now + DRAIN_NS;
        rs_timer_init(&t, drain_check, p);
        rs_timer_after(&p->loop, &t, DRAIN_CHECK_NS);
        rs_loop_run(&p->loop);
        rs_timer_stop(&p->loop, &t);
        n = unsettled(p, &spliced);
    }
    stop_listening(p);
    rs_log("exiting: %u spliced connections handed over to the tc program (a new rs-proxy adopts them), %u cut",
           spliced, n);
}

int main(int argc, char **argv)
{
    static struct proxy px;
    struct proxy *p = &px;

    rs_log_init("rs-proxy");
    rs_malloc_keep();   /* a 64 KB request buffer per connection (RS_PROXY_REQ_MAX) */
    int r = parse_args(p, argc, argv);

    if (r)
        return rs_opts_exit(r);
    rs_raise_nofile();
    if (rs_ctl_init()) {
        fprintf(stderr, "rs-proxy: libsodium init failed\n");
        return 1;
    }
    if (setup(p))
        return 1;
    rs_log("%s %s ifname=%s backends=%d alternate=%s splice=%s splice_at=%s control=%s recovery_timeout_ms=%" PRIu64,
           p->lio.fd >= 0 ? "listening on" : "standing by for", RS_A(p->listen), p->ifname, p->nbackends,
           p->alternate >= 0 ? RS_A(p->backends[p->alternate].addr) : "none", p->nosplice ? "off" : p->datapath,
           p->nosplice ? "-" : p->syn.on ? "syn" : "request", p->ctl.port ? RS_A(p->ctl) : "off",
           p->recovery_ns / 1000000);
    printf("listening on %s\n", RS_A(p->listen));     /* the readiness line (a standby: ready to take over) */
    fflush(stdout);
    rs_log_hold();      /* four lines per connection: one write per turn of the loop */
    if (rs_loop_run(&p->loop) < 0)
        rs_log("event loop: %s", strerror(errno));
    hand_over(p);
    print_stats(p);
    px_dp_close(p->dp, true);
    return 0;
}
