/* rs-front: puts a real application (Roundcube on lighttpd + PHP) behind
 * resplice.  Parses the options, sets up the listener, the state library
 * and the alternate's apply machinery, and runs the event loop; front.h
 * says what the other files do. */
#include "front.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "ctl_msg.h"
#include "options.h"
#include "parse.h"

/* ---- Stats ------------------------------------------------------------ */

static const char *const fs_names[FS_MAX] = {
    [FS_CONNS] = "front_conns", [FS_REQS] = "front_reqs", [FS_RESPS] = "front_resps",
    [FS_LOCAL] = "front_local_resps", [FS_BAD_REQUESTS] = "front_bad_requests",
    [FS_CLIENT_RESPLICE_HDRS] = "front_client_resplice_hdrs",
    [FS_TXN_ABORTED] = "front_txn_aborted", [FS_STATES] = "front_states",
    [FS_STATE_BYTES] = "front_state_bytes", [FS_SYNC] = "front_sync",
    [FS_STATE_ERRORS] = "front_state_errors", [FS_STRIPPED] = "front_hdrs_stripped",
    [FS_BYTES_IN] = "front_bytes_in", [FS_BYTES_OUT] = "front_bytes_out",
    [FS_UP_CONNECTS] = "front_up_connects", [FS_UP_ERRORS] = "front_up_errors",
    [FS_APPLIES] = "front_applies", [FS_APPLY_ERRORS] = "front_apply_errors",
    [FS_RESP_CARRIED] = "front_resp_carried", [FS_RESP_NOT_CARRIED] = "front_resp_not_carried",
    [FS_RECORDED] = "front_recorded", [FS_FROM_RECORD] = "front_from_record",
};

/* One machine-readable line on stdout: "stats id=NAME key=value ...". */
static void stats_print(void *ctx)
{
    struct front *f = ctx;

    printf("stats id=%s front_conns_open=%" PRIu64, f->name, f->conns_open);
    rs_stats_put(stdout, fs_names, f->stats, FS_MAX);
    rs_state_stats(f->stated, stdout);
    printf("\n");
    fflush(stdout);
}

/* ---- Options ---------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
        "usage: rs-front --upstream ADDR:PORT [options]\n"
        "A numbering reverse proxy that puts a real application behind resplice.\n"
        "\n"
        "  --upstream ADDR:PORT forward every request (keep-alive, one upstream connection\n"
        "                       per client connection) with X-Resplice-Txn: <txn id>;\n"
        "                       a response's X-Resplice-State: <file> (the transaction's\n"
        "                       state, read and deleted) goes to the alternate, held for\n"
        "                       its ACK when X-Resplice-Sync: 1\n"
        "  --listen ADDR:PORT   IPv4 address and port to serve (default 0.0.0.0:8080)\n"
        "  --id NAME            name in log and stats lines (default front)\n"
        "  --log FILE           append event logs to FILE instead of stderr\n"
        "  --stated PATH        the local rs-stated's unix socket (see libstate/rs_state.h)\n"
        "  --stated-timeout DUR answer a synchronous update without a standby copy when the\n"
        "                       peer has not acknowledged it within DUR (default 500ms)\n"
        "  --strip-header NAME  response header never forwarded (repeatable; the first use\n"
        "                       replaces the default, Date; 'none' forwards all):\n"
        "                       both backends must answer byte-identically\n"
        "  --state-dir DIR      X-Resplice-State files must be in DIR; APPLY blobs are\n"
        "                       written there (default /tmp)\n"
        "  --apply-cmd CMD      on the alternate, apply a state blob by running\n"
        "                       sh -c 'CMD \"$@\"' rs-apply BLOBFILE TXNID (exit 0 = applied)\n"
        "  --apply-timeout DUR  kill the apply command after DUR (default 10s)\n"
        "  --apply-file PATH    instead: the state is the whole file PATH, installed by an\n"
        "                       atomic rename (an sqlite database: copied into PATH in\n"
        "                       place; a change set: run on it in one transaction); an\n"
        "                       older state (X-Resplice-State-Seq) than the installed one\n"
        "                       is skipped\n"
        "  --crash-at N[+B]     fault injection: SIGKILL this process before byte B\n"
        "                       (default 0) of the response to transaction number N leaves;\n"
        "                       the bytes it held go to --state-dir/crash-<txn>.resp\n"
        "  --help               this text\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready.  SIGUSR1 prints a stats line;\n"
        "SIGTERM or SIGINT exits cleanly.\n");
}

/* Options that set up the daemon rather than configure the front. */
struct opts {
    const char *log, *stated;
    uint64_t stated_timeout_ns;
};

/* --strip-header: the first use replaces the default (Date); 'none' forwards all. */
static int strip_header(const char *v, void *dst)
{
    struct front_cfg *cfg = dst;
    static bool given;

    if (!given)
        cfg->n_strip = 0;
    given = true;
    if (strcmp(v, "none") == 0)
        return 0;
    if (cfg->n_strip == (int)(sizeof(cfg->strip) / sizeof(cfg->strip[0])))
        return -EINVAL;
    cfg->strip[cfg->n_strip++] = v;
    return 0;
}

static int crash_at(const char *v, void *dst)
{
    struct front_cfg *cfg = dst;

    return rs_parse_crash_at(v, &cfg->crash_num, &cfg->crash_off);
}

/* Fills 'f->cfg' and 'o' from the command line.  Returns 0, 1 after
 * --help, or 2 after printing why the options are wrong. */
static int parse_options(int argc, char **argv, struct front *f, struct opts *o)
{
    struct front_cfg *cfg = &f->cfg;
    bool has_upstream = false;
    const struct rs_opt opts[] = {
        RS_OPTION("upstream", RS_OPT_ADDR, &cfg->upstream, .given = &has_upstream),
        RS_OPTION("listen", RS_OPT_ADDR, &f->laddr),
        RS_OPTION("id", RS_OPT_STR, &f->name),
        RS_OPTION("log", RS_OPT_STR, &o->log),
        RS_OPTION("stated", RS_OPT_STR, &o->stated),
        RS_OPTION("stated-timeout", RS_OPT_DURATION, &o->stated_timeout_ns, .nonzero = true),
        RS_OPTION("strip-header", RS_OPT_FN, cfg, .want = "a header name, at most 16", .fn = strip_header),
        RS_OPTION("state-dir", RS_OPT_STR, &cfg->state_dir),
        RS_OPTION("apply-cmd", RS_OPT_STR, &cfg->apply_cmd),
        RS_OPTION("apply-file", RS_OPT_STR, &cfg->apply_file),
        RS_OPTION("apply-timeout", RS_OPT_DURATION, &cfg->apply_timeout_ns, .nonzero = true),
        RS_OPTION("crash-at", RS_OPT_FN, cfg, .want = "N or N+BYTES, e.g. 12+4096", .fn = crash_at),
        RS_OPTIONS_END,
    };
    int r = rs_opts_parse("rs-front", argc, argv, opts, usage);

    if (r)
        return r;
    if (!has_upstream) {
        fprintf(stderr, "rs-front: --upstream ADDR:PORT is required (where the application listens)\n");
        return 2;
    }
    if (cfg->apply_cmd && cfg->apply_file) {
        fprintf(stderr, "rs-front: --apply-cmd or --apply-file, not both\n");
        return 2;
    }
    return 0;
}

/* ---- Event loop ------------------------------------------------------- */

/* Once per loop turn: free what closed during it. */
static bool reap(void *ctx)
{
    front_reap(ctx);
    return false;
}

/* Sets up everything the loop serves.  Returns 0, or 1 after printing why not. */
static int setup(struct front *f, const struct opts *o)
{
    struct rs_state_ops ops = { .ctx = f, .apply = front_apply, .resume = front_resume, .export = front_export };
    int err;

    if (!realpath(f->cfg.state_dir, f->state_real)) {
        fprintf(stderr, "rs-front: bad --state-dir %s: %s\n", f->cfg.state_dir, strerror(errno));
        return 1;
    }
    if (!(f->blob = malloc(RS_CTL_STATE_MAX))) {
        fprintf(stderr, "rs-front: out of memory\n");
        return 1;
    }
    front_apply_init(f);
    if ((err = rs_loop_init(&f->loop)) == 0)
        err = rs_loop_signals(&f->loop, stats_print, f);
    if (err == 0)
        err = rs_server_open(&f->server, &f->loop, f->laddr, 1024, front_conn_open, f);
    if (err < 0) {
        fprintf(stderr, "rs-front: cannot listen on %s: %s\n", RS_A(f->laddr), strerror(-err));
        return 1;
    }
    rs_loop_idle(&f->loop, reap, f);
    if (o->stated && (!(f->stated = rs_state_open(&f->loop, o->stated, o->stated_timeout_ns, &ops))
                      || (errno = -rs_state_listening(f->stated, f->server.io.fd)) != 0)) {
        fprintf(stderr, "rs-front: cannot set up --stated %s: %s\n", o->stated, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct front f = {   /* ~1 MB of records: not on the stack */
        .name = "front",
        .laddr = { 0, 8080 },
        .cfg = { .strip = { "Date" }, .n_strip = 1, .state_dir = "/tmp",
                 .apply_timeout_ns = 10000000000ull, .crash_num = -1 },
    };
    static char log_name[80];
    struct opts o = { .log = NULL };
    int err = parse_options(argc, argv, &f, &o);

    if (err)
        return err == 1 ? 0 : err;
    if (o.log && (err = rs_log_to(o.log)) < 0) {
        fprintf(stderr, "rs-front: cannot open log %s: %s\n", o.log, strerror(-err));
        return 1;
    }
    snprintf(log_name, sizeof(log_name), "rs-front[%s]", f.name);
    rs_log_init(log_name);
    rs_raise_nofile();
    if (setup(&f, &o))
        return 1;
    rs_log("start listen=%s upstream=%s stated=%s apply=%s", RS_A(f.laddr), RS_A(f.cfg.upstream),
           o.stated ? o.stated : "off", f.cfg.apply_cmd ? "cmd" : f.cfg.apply_file ? "file" : "off");
    printf("listening on %s\n", RS_A(f.laddr));
    fflush(stdout);

    if (rs_loop_run(&f.loop) < 0)
        rs_log("error event loop %s", strerror(errno));

    while (f.conns)
        front_close(f.conns, "shutdown");
    front_reap(&f);
    stats_print(&f);
    front_apply_fini(&f);
    rs_log("exit");
    rs_state_close(f.stated);
    free(f.blob);
    free(f.own);
    rs_server_close(&f.server);
    rs_loop_fini(&f.loop);
    return 0;
}
