/* rs-front: puts a real application (Roundcube on lighttpd + PHP) behind
 * resplice.  Parses the options, sets up the listener, the state library
 * and the alternate's apply machinery, and runs the event loop; front.h
 * says what the other files do. */
#include "front.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "ctl_msg.h"
#include "parse.h"

/* ---- Stats ------------------------------------------------------------ */

static const char *const fs_names[FS_MAX] = {
    [FS_CONNS] = "front_conns", [FS_REQS] = "front_reqs", [FS_RESPS] = "front_resps",
    [FS_LOCAL] = "front_local_resps", [FS_BAD_REQUESTS] = "front_bad_requests",
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
    for (int i = 0; i < FS_MAX; i++)
        printf(" %s=%" PRIu64, fs_names[i], f->stats[i]);
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
        "  --apply-file PATH    instead: the state is the whole file PATH (e.g. an sqlite\n"
        "                       database), installed by an atomic rename; an older state\n"
        "                       (X-Resplice-State-Seq) than the installed one is skipped\n"
        "  --crash-at N[+B]     fault injection: SIGKILL this process before byte B\n"
        "                       (default 0) of the response to transaction number N leaves;\n"
        "                       the bytes it held go to --state-dir/crash-<txn>.resp\n"
        "  --help               this text\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready.  SIGUSR1 prints a stats line;\n"
        "SIGTERM or SIGINT exits cleanly.\n");
}

struct opts {
    const char *listen, *log, *stated, *upstream;
    uint64_t stated_timeout_ns;
    bool strip_given;
};

/* Fills 'f->cfg' and 'o' from the command line.  Returns 0, 1 after
 * --help, or 2 after printing why the options are wrong. */
static int parse_options(int argc, char **argv, struct front *f, struct opts *o)
{
    static const struct option opts[] = {
        { "upstream", required_argument, NULL, 'U' },
        { "listen", required_argument, NULL, 'l' },
        { "id", required_argument, NULL, 'i' },
        { "log", required_argument, NULL, 'L' },
        { "stated", required_argument, NULL, 'S' },
        { "stated-timeout", required_argument, NULL, 'T' },
        { "strip-header", required_argument, NULL, 'H' },
        { "state-dir", required_argument, NULL, 'D' },
        { "apply-cmd", required_argument, NULL, 'A' },
        { "apply-file", required_argument, NULL, 'F' },
        { "apply-timeout", required_argument, NULL, 'O' },
        { "crash-at", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct front_cfg *cfg = &f->cfg;
    int opt;

    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'U': o->upstream = optarg; break;
        case 'l': o->listen = optarg; break;
        case 'i': f->name = optarg; break;
        case 'L': o->log = optarg; break;
        case 'S': o->stated = optarg; break;
        case 'T':
            if (rs_parse_duration(optarg, &o->stated_timeout_ns) < 0 || o->stated_timeout_ns == 0) {
                fprintf(stderr, "rs-front: bad --stated-timeout '%s' (e.g. 500ms)\n", optarg);
                return 2;
            }
            break;
        case 'H':
            if (!o->strip_given)
                cfg->n_strip = 0;       /* the first --strip-header replaces the default */
            o->strip_given = true;
            if (strcmp(optarg, "none") == 0)
                break;
            if (cfg->n_strip == (int)(sizeof(cfg->strip) / sizeof(cfg->strip[0]))) {
                fprintf(stderr, "rs-front: too many --strip-header options\n");
                return 2;
            }
            cfg->strip[cfg->n_strip++] = optarg;
            break;
        case 'D': cfg->state_dir = optarg; break;
        case 'A': cfg->apply_cmd = optarg; break;
        case 'F': cfg->apply_file = optarg; break;
        case 'O':
            if (rs_parse_duration(optarg, &cfg->apply_timeout_ns) < 0 || cfg->apply_timeout_ns == 0) {
                fprintf(stderr, "rs-front: bad --apply-timeout '%s' (e.g. 10s)\n", optarg);
                return 2;
            }
            break;
        case 'C':
            if (rs_parse_crash_at(optarg, &cfg->crash_num, &cfg->crash_off) < 0) {
                fprintf(stderr, "rs-front: bad --crash-at '%s' (want N or N+BYTES, e.g. 12+4096)\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rs-front: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->upstream) {
        fprintf(stderr, "rs-front: --upstream ADDR:PORT is required (where the application listens)\n");
        return 2;
    }
    if (rs_addr_parse(o->upstream, &cfg->upstream) < 0) {
        fprintf(stderr, "rs-front: bad --upstream '%s' (want IPv4ADDR:PORT)\n", o->upstream);
        return 2;
    }
    if (rs_addr_parse(o->listen, &f->laddr) < 0) {
        fprintf(stderr, "rs-front: bad --listen '%s' (want IPv4ADDR:PORT)\n", o->listen);
        return 2;
    }
    if (cfg->apply_cmd && cfg->apply_file) {
        fprintf(stderr, "rs-front: --apply-cmd or --apply-file, not both\n");
        return 2;
    }
    return 0;
}

/* ---- Event loop ------------------------------------------------------- */

static void on_accept(struct rs_io *io, uint32_t events)
{
    struct front *f = io->ctx;

    (void)events;
    for (;;) {
        struct sockaddr_in peer;
        int fd = rs_accept_tcp(io->fd, &peer), err;

        if (fd < 0)
            return;
        if ((err = front_conn_open(f, fd)) < 0)
            rs_log("error conn-open %s", strerror(-err));
    }
}

/* Once per loop turn: free what closed during it. */
static bool reap(void *ctx)
{
    front_reap(ctx);
    return false;
}

/* Sets up everything the loop serves.  Returns 0, or 1 after printing why not. */
static int setup(struct front *f, const struct opts *o)
{
    struct rs_state_ops ops = { .ctx = f, .apply = front_apply, .resume = front_resume };
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
    if (err == 0 && (err = rs_listen_tcp(f->laddr, 1024)) >= 0)
        err = rs_io_start(&f->loop, &f->lio, err, EPOLLIN, on_accept, f);
    if (err < 0) {
        fprintf(stderr, "rs-front: cannot listen on %s: %s\n", o->listen, strerror(-err));
        return 1;
    }
    rs_loop_idle(&f->loop, reap, f);
    if (o->stated && !(f->stated = rs_state_open(&f->loop, o->stated, o->stated_timeout_ns, &ops))) {
        fprintf(stderr, "rs-front: cannot set up --stated %s: %s\n", o->stated, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct front f = {   /* ~1 MB of records: not on the stack */
        .name = "front",
        .cfg = { .strip = { "Date" }, .n_strip = 1, .state_dir = "/tmp",
                 .apply_timeout_ns = 10000000000ull, .crash_num = -1 },
    };
    static char log_name[80];
    struct opts o = { .listen = "0.0.0.0:8080" };
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
    close(f.lio.fd);
    rs_loop_fini(&f.loop);
    return 0;
}
