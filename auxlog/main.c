/* rs-auxlog: the aux logger of DESIGN.md.  Sits between the web backends
 * and the mail store, relays IMAP and SMTP, records each marked
 * conversation against its web transaction, and answers a re-run of that
 * conversation by another backend (after a failover) from the record, so
 * that an email is sent once and stored once.  One event loop (common/loop.h). */
#include "auxlog.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "parse.h"

/* ---- Main ---------------------------------------------------------------- */

static void print_stats(void *ctx)
{
    const struct auxlog *a = ctx;

    printf("stats: open=%u conns=%" PRIu64 " live=%" PRIu64 " unmarked=%" PRIu64 " replayed=%" PRIu64
           " caught_up=%" PRIu64 " diverged=%" PRIu64 " records=%" PRIu64 " record_bytes=%" PRIu64
           " expired=%" PRIu64 " evicted=%" PRIu64 " stale=%" PRIu64 " errors=%" PRIu64 " refused=%" PRIu64 "\n",
           a->n_convs, a->conns, a->live, a->unmarked, a->replayed, a->caught_up, a->diverged, a->n_records,
           a->record_bytes, a->expired, a->evicted, a->stale, a->errors, a->refused);
    fflush(stdout);
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-auxlog [--imap LISTEN=UPSTREAM] [--smtp LISTEN=UPSTREAM] [options]\n"
        "Aux logger: relays IMAP and SMTP from the web backends to the mail store,\n"
        "records each conversation that names its web transaction (IMAP ID\n"
        "\"x-resplice-txn\", SMTP EHLO x-resplice-txn-A-B-C-D-PORT-N...) and answers\n"
        "another backend's re-run of it from the record, so side effects happen once.\n"
        "\n"
        "  --imap ADDR:PORT=ADDR:PORT   IMAP listener and the IMAP server behind it\n"
        "  --smtp ADDR:PORT=ADDR:PORT   SMTP listener and the SMTP server behind it\n"
        "  --ttl DUR                    how long a record is kept (default 120s)\n"
        "  --max-bytes N                all records together (default 64M; oldest go first)\n"
        "  --log FILE                   append the event log to FILE instead of stderr\n"
        "  --help                       this text\n"
        "\n"
        "At least one of --imap/--smtp.  Prints \"listening on ...\" when ready; logs\n"
        "one line per conversation.  SIGUSR1 prints a stats line; SIGTERM/SIGINT exit.\n");
}

static int parse_pair(const char *text, struct rs_addr *l, struct rs_addr *u)
{
    char buf[64];
    const char *eq = strchr(text, '=');

    if (!eq || (size_t)(eq - text) >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, text, (size_t)(eq - text));
    buf[eq - text] = '\0';
    return rs_addr_parse(buf, l) < 0 || rs_addr_parse(eq + 1, u) < 0 ? -EINVAL : 0;
}

static void on_expire(struct rs_timer *t)
{
    struct auxlog *a = t->ctx;

    records_expire(a);
    rs_timer_after(&a->loop, t, 1000000000ull);
}

static int setup(struct auxlog *a)
{
    int e;

    if ((e = rs_loop_init(&a->loop)) || (e = rs_loop_signals(&a->loop, print_stats, a)))
        return e;
    for (unsigned i = 0; i < a->n_ls; i++) {
        struct listener *l = &a->ls[i];
        int fd = rs_listen_tcp(l->laddr, 256);
        if (fd < 0) {
            rs_log("cannot listen on %s: %s", RS_A(l->laddr), strerror(-fd));
            return fd;
        }
        l->a = a;
        if ((e = rs_io_start(&a->loop, &l->io, fd, EPOLLIN, conv_accept, l)) < 0) {
            close(fd);
            return e;
        }
    }
    rs_timer_init(&a->expire, on_expire, a);
    rs_timer_after(&a->loop, &a->expire, 1000000000ull);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "imap", required_argument, NULL, 'i' },
        { "smtp", required_argument, NULL, 's' },
        { "ttl", required_argument, NULL, 't' },
        { "max-bytes", required_argument, NULL, 'm' },
        { "log", required_argument, NULL, 'L' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    /* A record is needed for a failover's few seconds; a long TTL only widens
     * the window in which a reused client port meets an old record. */
    static struct auxlog a = { .ttl_ns = 120ull * 1000000000ull, .max_bytes = 64u << 20 };
    bool have[2] = { false, false };
    int o;

    rs_log_init("rs-auxlog");
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'i':
        case 's': {
            enum rs_aux_proto p = o == 'i' ? RS_AUX_IMAP : RS_AUX_SMTP;
            struct listener *l = &a.ls[a.n_ls];
            if (have[p]) {
                fprintf(stderr, "rs-auxlog: --%s given twice\n", proto_name(p));
                return 2;
            }
            if (parse_pair(optarg, &l->laddr, &l->up) < 0) {
                fprintf(stderr, "rs-auxlog: bad --%s %s (want ADDR:PORT=ADDR:PORT)\n", proto_name(p), optarg);
                return 2;
            }
            l->proto = p;
            have[p] = true;
            a.n_ls++;
            break;
        }
        case 't':
            if (rs_parse_duration(optarg, &a.ttl_ns) < 0 || a.ttl_ns == 0) {
                fprintf(stderr, "rs-auxlog: bad --ttl %s (e.g. 600s, 1500ms)\n", optarg);
                return 2;
            }
            break;
        case 'm':
            if (rs_parse_size(optarg, &a.max_bytes) < 0 || a.max_bytes == 0) {
                fprintf(stderr, "rs-auxlog: bad --max-bytes %s (e.g. 64M)\n", optarg);
                return 2;
            }
            break;
        case 'L':
            if (!freopen(optarg, "a", stderr)) {
                fprintf(stdout, "rs-auxlog: cannot open --log %s: %s\n", optarg, strerror(errno));
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || a.n_ls == 0) {
        fprintf(stderr, "rs-auxlog: %s\n", optind != argc ? "unexpected argument" : "give --imap and/or --smtp");
        usage(stderr);
        return 2;
    }
    rs_log_init("rs-auxlog");   /* line-buffers the (maybe reopened) stderr */
    if (setup(&a) < 0)
        return 1;
    for (unsigned i = 0; i < a.n_ls; i++) {
        printf("listening on %s %s -> %s\n", proto_name(a.ls[i].proto), RS_A(a.ls[i].laddr), RS_A(a.ls[i].up));
        rs_log("listening on %s %s -> %s ttl=%.1fs max_bytes=%" PRIu64, proto_name(a.ls[i].proto),
               RS_A(a.ls[i].laddr), RS_A(a.ls[i].up), (double)a.ttl_ns / 1e9, a.max_bytes);
    }
    fflush(stdout);
    if (rs_loop_run(&a.loop) < 0) {
        rs_log("event loop: %s", strerror(errno));
        return 1;
    }
    print_stats(&a);
    return 0;
}

