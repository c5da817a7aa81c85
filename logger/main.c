/* rs-logger: logs the client leg of every connection to the VIP from a port
 * mirror (live: a tc program's ring, or libpcap; a pcap file), cuts it into
 * tagged transactions, tells the alternate when a response is fully
 * logged, detects backend
 * failure (heartbeats, on a thread of its own: liveness.c; silent backends
 * that owe a response: conn.c), and plans and feeds recoveries
 * (docs/recovery.md, plan.c).  The main thread is one event loop.  This
 * file: options, set-up, the loop, the stats line; capture*.c (frames in),
 * conn.c (the log), ctl.c (control port and peers), resend.c (the resend
 * port), plan.c, liveness.c. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "logger.h"
#include "options.h"
#include "parse.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-logger (--iface IF | --read FILE.pcap) --vip ADDR:PORT [options]\n"
        "Logs the client leg (client <-> VIP) of every connection from a port mirror,\n"
        "transactionalizes and tags it, detects backend failures and plans recoveries.\n"
        "  --iface IF              live capture on IF (promiscuous)\n"
        "  --capture ebpf|pcap|kmod  where frames come from: a tc program on IF copying the\n"
        "                          VIP's segments into a BPF ring buffer (the default; when it\n"
        "                          cannot load or attach, one line says why and libpcap\n"
        "                          captures instead), libpcap, or the kernel module\n"
        "                          kmod/logmod.c's ring (/dev/rs_logmod)\n"
        "  --read FILE             offline: process a pcap, print the transaction table and\n"
        "                          stats, exit (with --stay: then serve control as live)\n"
        "  --vip ADDR:PORT         the service clients connect to\n"
        "  --listen ADDR:PORT      control port (default 0.0.0.0:7071)\n"
        "  --resend ADDR:PORT      resend port (default 0.0.0.0:7072)\n"
        "  --key FILE              shared control-plane key (64 hex characters)\n"
        "  --proxy ADDR:PORT       the proxy's control port: FAILURE, SUSPECT, CLOSE_WORD go there\n"
        "  --alternate-stated ADDR:PORT  the alternate's rs-stated: TXN_LOGGED, STATE_QUERY,\n"
        "                          APPLY, CONN_MAP go there\n"
        "  --spare-stated ADDR:PORT  another standby's rs-stated (re-protection: the spare;\n"
        "                          a backend that may be readmitted; repeat, at most 4):\n"
        "                          TXN_LOGGED too, and a recovery to it asks it\n"
        "  --backend ID=ADDR       a monitored backend (repeatable), e.g. 1=10.0.0.11\n"
        "  --dead-after DUR        failed after this long without heartbeats, when another\n"
        "                          backend was heard meanwhile (default 100ms);\n"
        "                          heartbeats are UDP datagrams to --listen's port\n"
        "  --stall-after DUR       a backend that owes a response and sends nothing for this\n"
        "                          long while the client could take it is suspected: the\n"
        "                          proxy fails it over (a hung backend; default 2s, 0: off)\n"
        "  --tags FILE             tagging rules (core/tags.h; default: GET/HEAD read-only)\n"
        "  --mem SIZE              log memory budget (default 1G)\n"
        "  --ring SIZE             largest ring per direction per connection (default 64M: an\n"
        "                          upload that does not fit cannot be recovered; each starts\n"
        "                          at 64k and doubles while its unreleased bytes need it)\n"
        "  --max-conns N           connections tracked (default 4096; when full, the one that\n"
        "                          ended longest ago makes room)\n"
        "  --linger DUR            forget a connection this long after both FINs or RST\n"
        "                          (default 10s; one that ended cleanly, every byte logged and\n"
        "                          both FINs acknowledged, is freed at once and only its\n"
        "                          4-tuple kept this long)\n"
        "  --dump DIR              write each connection's streams to DIR/IP_PORT.{req,resp}\n"
        "  --nice N                scheduling priority of the capture (default -10: the log must\n"
        "                          keep up with every backend at once, or recoveries fail)\n"
        "  --help                  this text\n"
        "Logs one line per event on stderr; prints \"listening on ...\" when capturing;\n"
        "SIGUSR1 prints a stats line on stdout; SIGTERM exits (and detaches the tc program).\n");
}

static int capture_source(const char *v, void *dst)
{
    struct logger *lg = dst;

    if (!strcmp(v, "ebpf"))
        lg->capture = &lg_capture_ebpf;
    else if (!strcmp(v, "pcap"))
        lg->capture = &lg_capture_pcap;
    else if (!strcmp(v, "kmod"))
        lg->capture = &lg_capture_kmod;
    else
        return -EINVAL;
    return 0;
}

static int add_spare_stated(const char *v, void *dst)
{
    struct logger *lg = dst;

    if (lg->n_spare_stated == LG_SPARES_MAX || rs_addr_parse(v, &lg->spare_stated[lg->n_spare_stated]) < 0)
        return -EINVAL;
    lg->n_spare_stated++;
    return 0;
}

static int parse_backend(const char *v, void *dst)
{
    struct logger *lg = dst;
    char ip[64];
    const char *eq = strchr(v, '=');
    struct rs_addr a;
    uint64_t id;

    if (!eq || lg->nbackends == LG_MAX_BACKENDS || (size_t)(eq - v) >= sizeof(ip))
        return -EINVAL;
    memcpy(ip, v, (size_t)(eq - v));
    ip[eq - v] = '\0';
    if (rs_parse_size(ip, &id) || !id || id > UINT32_MAX)
        return -EINVAL;
    snprintf(ip, sizeof(ip), "%s:1", eq + 1);
    if (rs_addr_parse(ip, &a))
        return -EINVAL;
    lg->backends[lg->nbackends++] = (struct lg_backend){ .id = (uint32_t)id, .ip = a.ip };
    return 0;
}

static int load_tags(const char *path, void *dst)
{
    struct logger *lg = dst;
    static char text[1 << 20];
    FILE *f = fopen(path, "r");
    size_t n;
    int line, r;

    if (!f)
        return -errno;
    n = fread(text, 1, sizeof(text), f);
    fclose(f);
    r = rs_tags_parse(lg->tags, text, n, &line);
    if (r < 0)
        fprintf(stderr, "rs-logger: %s:%d: bad tagging rule\n", path, line);
    return r < 0 ? r : 0;
}

static int stall_after(const char *v, void *dst)
{
    if (!strcmp(v, "0")) {
        *(uint64_t *)dst = 0;
        return 0;
    }
    return rs_parse_duration(v, dst);
}

static int nice_value(const char *v, void *dst)
{
    char *end;
    long n = strtol(v, &end, 10);

    if (end == v || *end || n < -20 || n > 19)
        return -EINVAL;
    *(int *)dst = (int)n;
    return 0;
}

/* Returns 0, 1 after --help, or 2 (and prints why). */
static int parse_args(struct logger *lg, int argc, char **argv)
{
    const char *keyfile = NULL;
    uint64_t mem = lg->budget.limit, ring = lg->ring, max_conns = lg->max_conns;
    const struct rs_opt opts[] = {
        RS_OPTION("iface", RS_OPT_STR, &lg->iface),
        RS_OPTION("capture", RS_OPT_FN, lg, .want = "ebpf, pcap or kmod", .fn = capture_source),
        RS_OPTION("read", RS_OPT_STR, &lg->readfile),
        RS_OPTION("stay", RS_OPT_FLAG, &lg->stay),
        RS_OPTION("vip", RS_OPT_ADDR, &lg->vip),
        RS_OPTION("listen", RS_OPT_ADDR, &lg->listen),
        RS_OPTION("resend", RS_OPT_ADDR, &lg->resend),
        RS_OPTION("key", RS_OPT_STR, &keyfile),
        RS_OPTION("proxy", RS_OPT_ADDR, &lg->proxy, .given = &lg->has_proxy),
        RS_OPTION("alternate-stated", RS_OPT_ADDR, &lg->stated, .given = &lg->has_stated),
        RS_OPTION("spare-stated", RS_OPT_FN, lg, .want = "IPv4ADDR:PORT", .fn = add_spare_stated),
        RS_OPTION("backend", RS_OPT_FN, lg, .want = "ID=IPv4ADDR", .fn = parse_backend),
        RS_OPTION("dead-after", RS_OPT_DURATION, &lg->dead_after_ns, .nonzero = true),
        RS_OPTION("stall-after", RS_OPT_FN, &lg->stall_after_ns, .want = "a duration, or 0", .fn = stall_after),
        RS_OPTION("linger", RS_OPT_DURATION, &lg->linger_ns),
        RS_OPTION("tags", RS_OPT_FN, lg, .want = "a readable file of tagging rules", .fn = load_tags),
        RS_OPTION("mem", RS_OPT_SIZE, &mem),
        RS_OPTION("ring", RS_OPT_SIZE, &ring),
        RS_OPTION("max-conns", RS_OPT_SIZE, &max_conns, .nonzero = true),
        RS_OPTION("dump", RS_OPT_STR, &lg->dumpdir),
        RS_OPTION("nice", RS_OPT_FN, &lg->nice, .want = "-20..19", .fn = nice_value),
        RS_OPTIONS_END,
    };
    int r = rs_opts_parse("rs-logger", argc, argv, opts, usage);

    if (r)
        return r;
    if (ring < LG_RING_MIN || ring > RS_REASM_CAP_MAX || max_conns > 1000000) {
        fprintf(stderr, "rs-logger: bad --ring (%u..%u) or --max-conns (1..1000000)\n", LG_RING_MIN,
                RS_REASM_CAP_MAX);
        return 2;
    }
    lg->budget.limit = (size_t)mem;
    lg->ring = (size_t)ring;
    lg->max_conns = (unsigned)max_conns;
    if (!lg->vip.port || !!lg->iface == !!lg->readfile) {
        fprintf(stderr, "rs-logger: need --vip and one of --iface / --read\n");
        usage(stderr);
        return 2;
    }
    if (keyfile) {
        int e = rs_ctl_key_load(keyfile, &lg->key);
        if (e) {
            fprintf(stderr, "rs-logger: cannot load key %s: %s\n", keyfile, strerror(-e));
            return 2;
        }
        lg->has_key = true;
    }
    if (!lg->has_key && (lg->iface || lg->stay)) {
        fprintf(stderr, "rs-logger: --key is needed to serve control\n");
        return 2;
    }
    if (lg->dumpdir)
        mkdir(lg->dumpdir, 0755);
    return 0;
}

static void print_stats(void *ctx)
{
#define LG_STAT(f) RS_STAT(struct lg_stats, f)
    static const struct rs_stat_field fields[] = {
        LG_STAT(packets), LG_STAT(bytes), LG_STAT(non_tcp), LG_STAT(not_ours), LG_STAT(truncated),
        { "conns_total", offsetof(struct lg_stats, conns) }, LG_STAT(conns_freed), LG_STAT(closed_evicted),
        LG_STAT(retired), LG_STAT(late_segments),
        LG_STAT(nl_midstream),
        LG_STAT(nl_nomem), LG_STAT(nl_limit), LG_STAT(rings_grown), LG_STAT(rings_full), LG_STAT(inc_refused),
        LG_STAT(inc_conflict), LG_STAT(inc_http), LG_STAT(inc_truncated), LG_STAT(inc_gap), LG_STAT(txns),
        LG_STAT(txns_logged), LG_STAT(released_bytes), LG_STAT(heartbeats), LG_STAT(hb_unknown),
        LG_STAT(failures_declared), LG_STAT(failures_forwarded), LG_STAT(recoveries), LG_STAT(recovery_errors),
        LG_STAT(legit_closes), LG_STAT(close_words), LG_STAT(close_asks),
        LG_STAT(replays), LG_STAT(resends), LG_STAT(resend_errors), LG_STAT(suspects),
    };
#undef LG_STAT
    struct logger *lg = ctx;
    struct lg_capture_stats ps;
    const struct lg_stats *s = &lg->s;
    uint64_t max_gap = 0;

    for (int i = 0; i < lg->nbackends; i++)
        if (lg->backends[i].max_gap_ns > max_gap)
            max_gap = lg->backends[i].max_gap_ns;
    if (lg->capture)
        lg->capture->stats(lg, &ps);
    else
        ps = (struct lg_capture_stats){ 0 };
    printf("stats received=%u dropped=%u ifdropped=%u connections=%u not_loggable=%" PRIu64 " incomplete=%" PRIu64
           " txn_logged_sent=%" PRIu64 " txn_logged_dropped=%" PRIu64 " mem_used=%zu mem_refused=%" PRIu64
           " ctl_rejected=%" PRIu64 " planning=%u hb_max_gap_us=%" PRIu64,
           ps.received, ps.dropped, ps.ifdropped, lg->nconns, s->nl_midstream + s->nl_nomem + s->nl_limit,
           s->inc_refused + s->inc_conflict + s->inc_http + s->inc_truncated + s->inc_gap,
           s->txn_logged_sent, lg->has_stated ? lg->st.dropped : 0, lg->budget.used,
           lg->budget.refused, s->ctl_rejected + lg->ctlsrv.rejected, lg->n_plans, max_gap / 1000);
    rs_stats_fields(stdout, s, fields, sizeof(fields) / sizeof(fields[0]));
    printf("\n");
    fflush(stdout);
}

static int run(struct logger *lg)
{
    int e;

    if ((e = rs_loop_init(&lg->loop)) || (e = rs_loop_signals(&lg->loop, print_stats, lg))) {
        rs_log("setup: %s", strerror(-e));
        return 1;
    }
    if (lg->iface && lg_capture_start(lg))
        return 1;
    if (lg_ctl_setup(lg)) {
        lg->capture->close(lg);     /* detaches the tc program */
        return 1;
    }
    printf("listening on control=%s resend=%s capture=%s vip=%s source=%s\n", RS_A(lg->listen), RS_A(lg->resend),
           lg->iface ? lg->iface : lg->readfile, RS_A(lg->vip), lg->capture->name);
    fflush(stdout);
    rs_log("start vip=%s capture=%s control=%s resend=%s backends=%d dead_after_us=%" PRIu64
           " stall_after_ms=%" PRIu64 " ring=%zu mem=%zu source=%s", RS_A(lg->vip),
           lg->iface ? lg->iface : lg->readfile, RS_A(lg->listen), RS_A(lg->resend), lg->nbackends,
           lg->dead_after_ns / 1000, lg->stall_after_ns / 1000000, lg->ring, lg->budget.limit, lg->capture->name);
    rs_log_hold();      /* lines per connection: one write per turn of the loop */
    rs_loop_run(&lg->loop);
    rs_log("exit");
    print_stats(lg);
    lg_ctl_shutdown(lg);
    if (lg->capture)
        lg->capture->close(lg);
    rs_loop_fini(&lg->loop);
    return 0;
}

int main(int argc, char **argv)
{
    static struct logger lg;
    int rc;

    rs_log_init("rs-logger");
    /* Each connection has ~55 KB of rings and parser: given back each time,
     * the heap trimmed and grown again cost a third of the logger's CPU on
     * short connections (perf). */
    rs_malloc_keep();
    /* Heartbeats come every 10 ms; on a busy 2-core host their gaps were
     * measured up to 27 ms (the kernel defers packet processing), and a
     * 30 ms bound failed healthy backends over.  Process crashes are seen
     * at once anyway (FIN/RST, the EXITED report); this bounds host crashes. */
    lg.dead_after_ns = 100 * 1000000ull;
    lg.stall_after_ns = 2000 * 1000000ull;
    lg.nice = -10;
    lg.linger_ns = 10 * 1000000000ull;
    lg.ring = 64u << 20;
    lg.max_conns = LG_MAX_CONNS_DEFAULT;
    lg.listen = (struct rs_addr){ 0, 7071 };
    lg.resend = (struct rs_addr){ 0, 7072 };
    lg.tags = calloc(1, sizeof(*lg.tags));
    if (!lg.tags)
        return 1;
    rs_tags_init(lg.tags);
    rs_reasm_budget_init(&lg.budget, 1024u << 20);
    if ((rc = parse_args(&lg, argc, argv)))
        return rs_opts_exit(rc);
    if (rs_ctl_init()) {
        fprintf(stderr, "rs-logger: libsodium failed to start\n");
        return 1;
    }
    lg.seq = rs_now_us();
    if (lg.readfile)
        lg.capture = &lg_capture_pcap;      /* files are libpcap's */
    if (lg.readfile) {
        int err = lg.capture->read_file(&lg);

        if (err && err != -EPIPE)
            return 1;
        lg_conn_table(&lg, stdout);     /* a partial one for a truncated file */
        print_stats(&lg);
        lg.capture->close(&lg);
        rc = err ? 1 : lg.stay ? run(&lg) : 0;
    } else {
        rc = run(&lg);
    }
    lg_conn_free_all(&lg);
    free(lg.tags);
    return rc;
}
