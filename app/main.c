/* rs-app: the reference web application behind the resplice proxy.  A
 * single-threaded event-loop HTTP/1.1 server (keep-alive, pipelining) with
 * checkable static content, a counter, a random token and a slow chunked
 * stream; see endpoints.c for the URLs and state.h for the state hooks. */
#include "app.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "parse.h"
#include "xfer.h"

/* ---- Stats ------------------------------------------------------------ */

static const char *const stat_names[ST_MAX] = {
    [ST_CONNS_TOTAL] = "conns_total", [ST_REQS] = "reqs", [ST_REQ_STATIC] = "req_static",
    [ST_REQ_COUNTER_READ] = "req_counter_read", [ST_REQ_COUNTER_UPDATE] = "req_counter_update",
    [ST_REQ_TOKEN] = "req_token", [ST_REQ_SLOW] = "req_slow", [ST_REQ_HEALTH] = "req_health",
    [ST_REQ_OTHER] = "req_other", [ST_REQ_REJECTED] = "req_rejected",
    [ST_BAD_REQUEST] = "bad_request", [ST_TXN_ABORTED] = "txn_aborted",
    [ST_BYTES_IN] = "bytes_in", [ST_BYTES_OUT] = "bytes_out",
};

/* One machine-readable line on stdout: "stats id=NAME key=value ...". */
static void stats_print(void *ctx)
{
    struct rs_app *app = ctx;

    printf("stats id=%s conns_open=%" PRIu64, app->name, app->conns_open);
    for (int i = 0; i < ST_MAX; i++)
        printf(" %s=%" PRIu64, stat_names[i], app->stats[i]);
    printf(" counter=%" PRIu64, app->counter);
    app_xfer_stats(app, stdout);
    app_front_stats(app, stdout);
    printf("\n");
    fflush(stdout);
}

/* ---- Set-up ----------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-app [options]\n"
        "Reference web application for resplice (HTTP/1.1, keep-alive, pipelining).\n"
        "\n"
        "  --listen ADDR:PORT   IPv4 address and port to serve (default 0.0.0.0:8080)\n"
        "  --id NAME            name in log and stats lines (default app)\n"
        "  --log FILE           append event logs to FILE instead of stderr\n"
        "  --state BLOB[@TXN]   apply a state blob at start (repeatable): counter=41, or\n"
        "                       token=<32 hex>@10.0.0.1:40000#3 to answer that token to\n"
        "                       that transaction's /token, as the alternate does on replay\n"
        "  --sync-delay DUR     hold each non-deterministic response DUR (e.g. 5ms),\n"
        "                       standing in for a synchronous state transfer\n"
        "  --stated PATH        send each update's state through the local rs-stated's\n"
        "                       unix socket PATH and apply the state it forwards\n"
        "                       (reconnects while it is absent; see app/xfer.h)\n"
        "  --stated-timeout DUR answer 503 when a non-deterministic update's state is\n"
        "                       not acknowledged by the peer within DUR (default 500ms)\n"
        "  --crash-at N[+B]     fault injection: SIGKILL this process before byte B\n"
        "                       (default 0) of the response to transaction number N leaves\n"
        "                       (first connection to get there); in front mode the bytes\n"
        "                       it held go to --state-dir/crash-<txn>.resp\n"
        "  --help               this text\n"
        "\n"
        "Front mode: a numbering reverse proxy in front of a real application\n"
        "  --upstream ADDR:PORT forward every request (keep-alive, one upstream connection\n"
        "                       per client connection) with X-Resplice-Txn: <txn id>;\n"
        "                       a response's X-Resplice-State: <file> (the transaction's\n"
        "                       state, read and deleted) goes to the alternate, held for\n"
        "                       its ACK when X-Resplice-Sync: 1; no endpoints of our own\n"
        "  --strip-header NAME  response header never forwarded (repeatable; the first use\n"
        "                       replaces the default, Date; 'none' forwards all):\n"
        "                       both backends must answer byte-identically\n"
        "  --state-dir DIR      X-Resplice-State files must be in DIR; APPLY blobs are\n"
        "                       written there (default /tmp)\n"
        "  --apply-cmd CMD      on the alternate, apply a state blob by running\n"
        "                       sh -c 'CMD \"$@\"' rs-apply BLOBFILE TXNID (exit 0 = applied)\n"
        "  --apply-timeout DUR  kill the apply command after DUR (default 10s)\n"
        "  --apply-file PATH    instead: the state is the whole file PATH (e.g. an sqlite\n"
        "                       database), installed by an atomic rename; an older state\n"
        "                       (X-Resplice-State-Seq) than the installed one is skipped\n"
        "\n"
        "Endpoints (application mode):\n"
        "  GET|HEAD /static/SIZE[.EXT][?seed=N]  SIZE (e.g. 1M) bytes of checkable content\n"
        "  GET|HEAD /counter                     counter=<value>  (read-only)\n"
        "  POST /counter                         increment, counter=<new value>  (update)\n"
        "  GET|POST /token                       token=<32 hex>  (non-deterministic)\n"
        "  GET /slow?bytes=N&chunk=K&delay=D     chunked, D of think time before each chunk\n"
        "  GET /health                           ok\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready.  SIGUSR1 prints a stats line;\n"
        "SIGTERM or SIGINT exits cleanly.\n");
}

/* Scale experiments open thousands of connections: take all the fds allowed. */
static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- Event loop ------------------------------------------------------- */

static void on_accept(struct rs_io *io, uint32_t events)
{
    struct rs_app *app = io->ctx;

    (void)events;
    for (;;) {
        struct sockaddr_in peer;
        int fd = rs_accept_tcp(io->fd, &peer), err;

        if (fd < 0)
            return;
        err = app->front ? app_front_conn_open(app, fd, &peer) : app_conn_open(app, fd, &peer);
        if (err < 0)
            rs_log("error conn-open %s", strerror(-err));
    }
}

/* Once per loop turn: free what closed during it. */
static bool reap(void *ctx)
{
    struct rs_app *app = ctx;

    app_conn_reap(app);
    app_front_reap(app);
    return false;
}

int main(int argc, char **argv)
{
    static struct rs_app app;   /* about 10 KB of records: not on the stack */
    static char log_name[80];
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },
        { "id", required_argument, NULL, 'i' },
        { "log", required_argument, NULL, 'L' },
        { "state", required_argument, NULL, 's' },
        { "sync-delay", required_argument, NULL, 'd' },
        { "stated", required_argument, NULL, 'S' },
        { "stated-timeout", required_argument, NULL, 'T' },
        { "upstream", required_argument, NULL, 'U' },
        { "strip-header", required_argument, NULL, 'H' },
        { "state-dir", required_argument, NULL, 'D' },
        { "apply-cmd", required_argument, NULL, 'A' },
        { "apply-file", required_argument, NULL, 'F' },
        { "apply-timeout", required_argument, NULL, 'O' },
        { "crash-at", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *listen_text = "0.0.0.0:8080", *log_path = NULL, *stated_path = NULL;
    const char *states[16];
    int n_states = 0, opt, err = 0;
    uint64_t sync_delay = 0, stated_timeout = XFER_TIMEOUT_NS;
    static struct app_front_cfg front = { .strip = { "Date" }, .n_strip = 1, .state_dir = "/tmp",
                                          .apply_timeout_ns = 10000000000ull, .crash_num = -1 };
    const char *upstream_text = NULL;
    bool strip_given = false;

    app.name = "app";
    app.crash_num = -1;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'l': listen_text = optarg; break;
        case 'i': app.name = optarg; break;
        case 'L': log_path = optarg; break;
        case 's':
            if (n_states == (int)(sizeof(states) / sizeof(states[0]))) {
                fprintf(stderr, "rs-app: too many --state options\n");
                return 2;
            }
            states[n_states++] = optarg;
            break;
        case 'd':
            if (rs_parse_duration(optarg, &sync_delay) < 0 || sync_delay == 0) {
                fprintf(stderr, "rs-app: bad --sync-delay '%s' (e.g. 5ms)\n", optarg);
                return 2;
            }
            break;
        case 'S': stated_path = optarg; break;
        case 'T':
            if (rs_parse_duration(optarg, &stated_timeout) < 0 || stated_timeout == 0) {
                fprintf(stderr, "rs-app: bad --stated-timeout '%s' (e.g. 500ms)\n", optarg);
                return 2;
            }
            break;
        case 'U': upstream_text = optarg; break;
        case 'H':
            if (!strip_given)
                front.n_strip = 0;      /* the first --strip-header replaces the default */
            strip_given = true;
            if (strcmp(optarg, "none") == 0)
                break;
            if (front.n_strip == (int)(sizeof(front.strip) / sizeof(front.strip[0]))) {
                fprintf(stderr, "rs-app: too many --strip-header options\n");
                return 2;
            }
            front.strip[front.n_strip++] = optarg;
            break;
        case 'D': front.state_dir = optarg; break;
        case 'A': front.apply_cmd = optarg; break;
        case 'F': front.apply_file = optarg; break;
        case 'O':
            if (rs_parse_duration(optarg, &front.apply_timeout_ns) < 0 || front.apply_timeout_ns == 0) {
                fprintf(stderr, "rs-app: bad --apply-timeout '%s' (e.g. 10s)\n", optarg);
                return 2;
            }
            break;
        case 'C': {
            char *end;
            unsigned long n = strtoul(optarg, &end, 10);
            unsigned long long b = 0;

            if (end != optarg && *end == '+') {
                char *bend;

                b = strtoull(end + 1, &bend, 10);
                end = bend == end + 1 ? end : bend;
            }
            if (end == optarg || *end || n > 65535 || optarg[0] == '-') {
                fprintf(stderr, "rs-app: bad --crash-at '%s' (want N or N+BYTES, e.g. 12+4096)\n", optarg);
                return 2;
            }
            app.crash_num = front.crash_num = (int)n;
            app.crash_off = front.crash_off = b;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rs-app: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (stated_path && sync_delay) {
        fprintf(stderr, "rs-app: --stated and --sync-delay both want the state hooks\n");
        return 2;
    }
    if (upstream_text && (sync_delay || n_states)) {
        fprintf(stderr, "rs-app: --upstream serves another application: no --sync-delay or --state\n");
        return 2;
    }
    if (front.apply_cmd && front.apply_file) {
        fprintf(stderr, "rs-app: --apply-cmd or --apply-file, not both\n");
        return 2;
    }
    if (!upstream_text && (strip_given || front.apply_cmd || front.apply_file)) {
        fprintf(stderr, "rs-app: --strip-header, --apply-cmd and --apply-file need --upstream\n");
        return 2;
    }
    if (upstream_text && rs_addr_parse(upstream_text, &front.upstream) < 0) {
        fprintf(stderr, "rs-app: bad --upstream '%s' (want IPv4ADDR:PORT)\n", upstream_text);
        return 2;
    }
    if (rs_addr_parse(listen_text, &app.laddr) < 0) {
        fprintf(stderr, "rs-app: bad --listen '%s' (want IPv4ADDR:PORT)\n", listen_text);
        return 2;
    }
    for (int i = 0; i < n_states; i++) {
        const char *at = strchr(states[i], '@');
        size_t len = at ? (size_t)(at - states[i]) : strlen(states[i]);
        rs_txn_id id = 0;

        if ((at && rs_txn_id_parse(at + 1, &id) < 0) ||
            rs_app_state_apply(&app, id, states[i], len) < 0) {
            fprintf(stderr, "rs-app: bad --state '%s' (want counter=N or token=<32 hex>@TXN_ID)\n",
                    states[i]);
            return 2;
        }
    }
    if (log_path) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

        if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) {
            fprintf(stderr, "rs-app: cannot open log %s: %s\n", log_path, strerror(errno));
            return 1;
        }
        close(fd);
    }
    snprintf(log_name, sizeof(log_name), "rs-app[%s]", app.name);
    rs_log_init(log_name);
    if (sodium_init() < 0) {
        fprintf(stderr, "rs-app: libsodium failed to initialise\n");
        return 1;
    }
    raise_nofile();
    if ((err = rs_loop_init(&app.loop)) == 0)
        err = rs_loop_signals(&app.loop, stats_print, &app);
    if (err == 0 && (err = rs_listen_tcp(app.laddr, 1024)) >= 0)
        err = rs_io_start(&app.loop, &app.lio, err, EPOLLIN, on_accept, &app);
    rs_loop_idle(&app.loop, reap, &app);
    if (err == 0 && sync_delay)
        err = app_sync_delay_init(&app, sync_delay);
    if (err == 0 && upstream_text && (err = app_front_init(&app, &front)) < 0) {
        fprintf(stderr, "rs-app: cannot set up front mode (--state-dir %s): %s\n", front.state_dir,
                strerror(-err));
        return 1;
    }
    if (err == 0 && stated_path && (err = app_xfer_init(&app, stated_path, stated_timeout)) < 0) {
        fprintf(stderr, "rs-app: cannot set up --stated %s: %s\n", stated_path, strerror(-err));
        return 1;
    }
    if (err < 0) {
        fprintf(stderr, "rs-app: cannot listen on %s: %s\n", listen_text, strerror(-err));
        return 1;
    }
    rs_log("start listen=%s sync_delay=%" PRIu64 "ns counter=%" PRIu64 " stated=%s upstream=%s apply_cmd=%s",
           RS_A(app.laddr), sync_delay, app.counter, stated_path ? stated_path : "off",
           upstream_text ? upstream_text : "off", front.apply_cmd ? "set" : "off");
    printf("listening on %s\n", RS_A(app.laddr));
    fflush(stdout);

    if (rs_loop_run(&app.loop) < 0)
        rs_log("error event loop %s", strerror(errno));

    while (app.conns)
        app_conn_close(app.conns, "shutdown");
    app_conn_reap(&app);
    stats_print(&app);
    app_front_close(&app);      /* before the library: its hooks see the ends */
    rs_log("exit");
    app_xfer_close(&app);
    close(app.lio.fd);
    rs_loop_fini(&app.loop);
    return 0;
}
