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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "parse.h"
#include "rs_state.h"

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
    rs_state_stats(app->stated, stdout);
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
        "                       (reconnects while it is absent; see libstate/rs_state.h)\n"
        "  --stated-timeout DUR answer 503 when a non-deterministic update's state is\n"
        "                       not acknowledged by the peer within DUR (default 500ms)\n"
        "  --crash-at N[+B]     fault injection: SIGKILL this process before byte B\n"
        "                       (default 0) of the response to transaction number N leaves\n"
        "                       (first connection to get there)\n"
        "  --help               this text\n"
        "\n"
        "A real application (Roundcube...) goes behind resplice with rs-front.\n"
        "\n"
        "Endpoints:\n"
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
        err = app_conn_open(app, fd, &peer);
        if (err < 0)
            rs_log("error conn-open %s", strerror(-err));
    }
}

/* Once per loop turn: free what closed during it. */
static bool reap(void *ctx)
{
    struct rs_app *app = ctx;

    app_conn_reap(app);
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
        /* rs-front's options, for a hint: the front has its own daemon */
        { "upstream", required_argument, NULL, 'U' },
        { "strip-header", required_argument, NULL, 'U' },
        { "state-dir", required_argument, NULL, 'U' },
        { "apply-cmd", required_argument, NULL, 'U' },
        { "apply-file", required_argument, NULL, 'U' },
        { "apply-timeout", required_argument, NULL, 'U' },
        { "crash-at", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *listen_text = "0.0.0.0:8080", *log_path = NULL, *stated_path = NULL;
    const char *states[16];
    int n_states = 0, opt, li = 0, err = 0;
    uint64_t sync_delay = 0, stated_timeout = RS_STATE_TIMEOUT_NS;

    app.name = "app";
    app.crash_num = -1;
    while ((opt = getopt_long(argc, argv, "h", opts, &li)) != -1) {
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
        case 'U':
            fprintf(stderr, "rs-app: --%s is an option of rs-front, the front of a real application "
                    "(rs-app is the reference application only)\n", opts[li].name);
            return 2;
        case 'C':
            if (rs_parse_crash_at(optarg, &app.crash_num, &app.crash_off) < 0) {
                fprintf(stderr, "rs-app: bad --crash-at '%s' (want N or N+BYTES, e.g. 12+4096)\n", optarg);
                return 2;
            }
            break;
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
    if (log_path && (err = rs_log_to(log_path)) < 0) {
        fprintf(stderr, "rs-app: cannot open log %s: %s\n", log_path, strerror(-err));
        return 1;
    }
    snprintf(log_name, sizeof(log_name), "rs-app[%s]", app.name);
    rs_log_init(log_name);
    if (sodium_init() < 0) {
        fprintf(stderr, "rs-app: libsodium failed to initialise\n");
        return 1;
    }
    rs_raise_nofile();
    if ((err = rs_loop_init(&app.loop)) == 0)
        err = rs_loop_signals(&app.loop, stats_print, &app);
    if (err == 0 && (err = rs_listen_tcp(app.laddr, 1024)) >= 0)
        err = rs_io_start(&app.loop, &app.lio, err, EPOLLIN, on_accept, &app);
    rs_loop_idle(&app.loop, reap, &app);
    if (err == 0 && sync_delay)
        err = app_sync_delay_init(&app, sync_delay);
    if (err == 0 && stated_path && (err = app_stated_init(&app, stated_path, stated_timeout)) < 0) {
        fprintf(stderr, "rs-app: cannot set up --stated %s: %s\n", stated_path, strerror(-err));
        return 1;
    }
    if (err < 0) {
        fprintf(stderr, "rs-app: cannot listen on %s: %s\n", listen_text, strerror(-err));
        return 1;
    }
    rs_log("start listen=%s sync_delay=%" PRIu64 "ns counter=%" PRIu64 " stated=%s",
           RS_A(app.laddr), sync_delay, app.counter, stated_path ? stated_path : "off");
    printf("listening on %s\n", RS_A(app.laddr));
    fflush(stdout);

    if (rs_loop_run(&app.loop) < 0)
        rs_log("error event loop %s", strerror(errno));

    while (app.conns)
        app_conn_close(app.conns, "shutdown");
    app_conn_reap(&app);
    stats_print(&app);
    rs_log("exit");
    rs_state_close(app.stated);
    close(app.lio.fd);
    rs_loop_fini(&app.loop);
    return 0;
}
