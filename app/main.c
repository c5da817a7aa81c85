/* rs-app: the reference web application behind the resplice proxy.  A
 * single-threaded event-loop HTTP/1.1 server (keep-alive, pipelining) with
 * checkable static content, a counter, a random token and a slow chunked
 * stream; see endpoints.c for the URLs and state.h for the state hooks. */
#include "app.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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

#include "options.h"
#include "parse.h"
#include "rs_state.h"
#include "server.h"

/* ---- Stats ------------------------------------------------------------ */

static const char *const stat_names[ST_MAX] = {
    [ST_CONNS_TOTAL] = "conns_total", [ST_REQS] = "reqs", [ST_REQ_STATIC] = "req_static",
    [ST_REQ_COUNTER_READ] = "req_counter_read", [ST_REQ_COUNTER_UPDATE] = "req_counter_update",
    [ST_REQ_TOKEN] = "req_token", [ST_REQ_UPLOAD] = "req_upload", [ST_REQ_SLOW] = "req_slow",
    [ST_REQ_HEALTH] = "req_health",
    [ST_REQ_OTHER] = "req_other", [ST_REQ_REJECTED] = "req_rejected",
    [ST_BAD_REQUEST] = "bad_request", [ST_TXN_ABORTED] = "txn_aborted",
    [ST_BYTES_IN] = "bytes_in", [ST_BYTES_OUT] = "bytes_out",
};

/* One machine-readable line on stdout: "stats id=NAME key=value ...". */
static void stats_print(void *ctx)
{
    struct rs_app *app = ctx;

    printf("stats id=%s conns_open=%" PRIu64, app->name, app->conns_open);
    rs_stats_put(stdout, stat_names, app->stats, ST_MAX);
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
        "  --state BLOB[@TXN]   apply a state blob at start (repeatable): counter=41 (a\n"
        "                       value), counter+=1 (an update's state: an increment), or\n"
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
        "  POST /upload?seed=N                   a body of seed N's checkable content (up to\n"
        "                                        64 MiB): increment, upload=<bytes> counter=<value>\n"
        "                                        (update), or 400 at the first wrong byte\n"
        "  GET /slow?bytes=N&chunk=K&delay=D     chunked, D of think time before each chunk\n"
        "  GET /health                           ok\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready.  SIGUSR1 prints a stats line;\n"
        "SIGTERM or SIGINT exits cleanly.\n");
}

/* ---- Event loop ------------------------------------------------------- */

/* Once per loop turn: free what closed during it. */
static bool reap(void *ctx)
{
    struct rs_app *app = ctx;

    app_conn_reap(app);
    return false;
}

struct state_opts {
    const char *blob[16];
    int n;
};

static int add_state(const char *v, void *dst)
{
    struct state_opts *st = dst;

    if (st->n == (int)(sizeof(st->blob) / sizeof(st->blob[0])))
        return -EINVAL;
    st->blob[st->n++] = v;
    return 0;
}

static int crash_at(const char *v, void *dst)
{
    struct rs_app *app = dst;

    return rs_parse_crash_at(v, &app->crash_num, &app->crash_off);
}

/* The front's options, given to rs-app: a hint where they went. */
static int moved_to_front(const char *v, void *dst)
{
    (void)v;
    fprintf(stderr, "rs-app: --%s is an option of rs-front, the front of a real application "
            "(rs-app is the reference application only)\n", (const char *)dst);
    return -EINVAL;
}

#define FRONT_OPTION(n) RS_OPTION(n, RS_OPT_FN, (void *)n, .want = "rs-front", .fn = moved_to_front)

int main(int argc, char **argv)
{
    static struct rs_app app;   /* about 10 KB of records: not on the stack */
    static char log_name[80];
    const char *listen_text = "0.0.0.0:8080", *log_path = NULL, *stated_path = NULL;
    struct state_opts states = { .n = 0 };
    uint64_t sync_delay = 0, stated_timeout = RS_STATE_TIMEOUT_NS;
    const struct rs_opt opts[] = {
        RS_OPTION("listen", RS_OPT_STR, &listen_text),
        RS_OPTION("id", RS_OPT_STR, &app.name),
        RS_OPTION("log", RS_OPT_STR, &log_path),
        RS_OPTION("state", RS_OPT_FN, &states, .want = "at most 16 of them", .fn = add_state),
        RS_OPTION("sync-delay", RS_OPT_DURATION, &sync_delay, .nonzero = true),
        RS_OPTION("stated", RS_OPT_STR, &stated_path),
        RS_OPTION("stated-timeout", RS_OPT_DURATION, &stated_timeout, .nonzero = true),
        RS_OPTION("crash-at", RS_OPT_FN, &app, .want = "N or N+BYTES, e.g. 12+4096", .fn = crash_at),
        FRONT_OPTION("upstream"), FRONT_OPTION("strip-header"), FRONT_OPTION("state-dir"),
        FRONT_OPTION("apply-cmd"), FRONT_OPTION("apply-file"), FRONT_OPTION("apply-timeout"),
        RS_OPTIONS_END,
    };
    int err;

    app.name = "app";
    app.crash_num = -1;
    if ((err = rs_opts_parse("rs-app", argc, argv, opts, usage)))
        return rs_opts_exit(err);
    if (stated_path && sync_delay) {
        fprintf(stderr, "rs-app: --stated and --sync-delay both want the state hooks\n");
        return 2;
    }
    if (rs_addr_parse(listen_text, &app.laddr) < 0) {
        fprintf(stderr, "rs-app: bad --listen '%s' (want IPv4ADDR:PORT)\n", listen_text);
        return 2;
    }
    for (int i = 0; i < states.n; i++) {
        const char *at = strchr(states.blob[i], '@');
        size_t len = at ? (size_t)(at - states.blob[i]) : strlen(states.blob[i]);
        rs_txn_id id = 0;

        if ((at && rs_txn_id_parse(at + 1, &id) < 0) ||
            rs_app_state_apply(&app, id, states.blob[i], len) < 0) {
            fprintf(stderr, "rs-app: bad --state '%s' (want counter=N, counter+=N or token=<32 hex>@TXN_ID)\n",
                    states.blob[i]);
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
    if (err == 0)
        err = rs_server_open(&app.server, &app.loop, app.laddr, 1024, app_conn_open, &app);
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
    rs_server_close(&app.server);
    rs_loop_fini(&app.loop);
    return 0;
}
