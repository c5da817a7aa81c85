/* rs-auxlog: the aux logger of DESIGN.md.  Sits between the web backends
 * and the mail store, relays IMAP and SMTP (or, with --tap, records what
 * its host forwards: tap.c), records each marked conversation against its
 * web transaction, and answers a re-run of that conversation by another
 * backend (after a failover) from the record, so that an email is sent
 * once and stored once.  One event loop (common/loop.h). */
#include "auxlog.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "options.h"
#include "parse.h"

/* ---- Main ---------------------------------------------------------------- */

static void print_stats(void *ctx)
{
    const struct auxlog *a = ctx;

    printf("stats: open=%u conns=%" PRIu64 " live=%" PRIu64 " unmarked=%" PRIu64 " replayed=%" PRIu64
           " caught_up=%" PRIu64 " diverged=%" PRIu64 " records=%" PRIu64 " record_bytes=%" PRIu64
           " expired=%" PRIu64 " evicted=%" PRIu64 " stale=%" PRIu64 " errors=%" PRIu64 " refused=%" PRIu64
           " superseded=%" PRIu64 " drained=%" PRIu64 " tapped=%" PRIu64 " fenced=%" PRIu64 " queued=%" PRIu64
           " queue_dropped=%" PRIu64 "\n",
           a->n_convs, a->conns, a->live, a->unmarked, a->replayed, a->caught_up, a->diverged, a->n_records,
           a->record_bytes, a->expired, a->evicted, a->stale, a->errors, a->refused, a->superseded,
           a->drained, a->tapped, a->fenced, a->queued, a->queue_dropped);
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
        "  --tap IFACE                  also record the conversations this host forwards\n"
        "                               to and from the mail store (the upstreams' address),\n"
        "                               from a tc program on IFACE: the backends' first runs\n"
        "                               need not come through the relay (re-runs must);\n"
        "                               once a re-run connects, and while one is remembered,\n"
        "                               a conversation's first units wait for its marker's\n"
        "                               judgment on a netfilter queue (iptables: a chain\n"
        "                               rs_auxlog in mangle's FORWARD is installed for it)\n"
        "  --tap-queue NUM              that queue's number (default 7)\n"
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
    convs_expire(a);
    tap_expire(a);
    rs_timer_after(&a->loop, t, 1000000000ull);
}

static int setup(struct auxlog *a)
{
    int e;

    if ((e = rs_loop_init(&a->loop)) || (e = rs_loop_signals(&a->loop, print_stats, a)))
        return e;
    for (unsigned i = 0; i < a->n_ls; i++) {
        struct listener *l = &a->ls[i];

        l->a = a;
        if ((e = rs_server_open(&l->server, &a->loop, l->laddr, 256, conv_accept, l)) < 0) {
            rs_log("cannot listen on %s: %s", RS_A(l->laddr), strerror(-e));
            return e;
        }
    }
    rs_timer_init(&a->expire, on_expire, a);
    rs_timer_after(&a->loop, &a->expire, 1000000000ull);
    return 0;
}

/* --imap / --smtp LISTEN=UPSTREAM: a listener (each protocol once). */
static int add_listener(struct auxlog *a, enum rs_aux_proto p, const char *v)
{
    struct listener *l = &a->ls[a->n_ls];

    for (unsigned i = 0; i < a->n_ls; i++)
        if (a->ls[i].proto == p)
            return -EINVAL;
    if (parse_pair(v, &l->laddr, &l->up) < 0)
        return -EINVAL;
    l->proto = p;
    a->n_ls++;
    return 0;
}

static int imap_listener(const char *v, void *dst) { return add_listener(dst, RS_AUX_IMAP, v); }
static int smtp_listener(const char *v, void *dst) { return add_listener(dst, RS_AUX_SMTP, v); }

int main(int argc, char **argv)
{
    /* A record is needed for a failover's few seconds; a long TTL only widens
     * the window in which a reused client port meets an old record. */
    static struct auxlog a = { .ttl_ns = 120ull * 1000000000ull, .max_bytes = 64u << 20 };
    const char *log_path = NULL, *tap_if = NULL;
    uint32_t tap_queue = 7;
    const struct rs_opt opts[] = {
        RS_OPTION("imap", RS_OPT_FN, &a, .want = "ADDR:PORT=ADDR:PORT, once", .fn = imap_listener),
        RS_OPTION("smtp", RS_OPT_FN, &a, .want = "ADDR:PORT=ADDR:PORT, once", .fn = smtp_listener),
        RS_OPTION("ttl", RS_OPT_DURATION, &a.ttl_ns, .nonzero = true),
        RS_OPTION("max-bytes", RS_OPT_SIZE, &a.max_bytes, .nonzero = true),
        RS_OPTION("log", RS_OPT_STR, &log_path),
        RS_OPTION("tap", RS_OPT_STR, &tap_if),
        RS_OPTION("tap-queue", RS_OPT_U32, &tap_queue),
        RS_OPTIONS_END,
    };
    int err;

    if ((err = rs_opts_parse("rs-auxlog", argc, argv, opts, usage)))
        return rs_opts_exit(err);
    if (a.n_ls == 0) {
        fprintf(stderr, "rs-auxlog: give --imap and/or --smtp\n");
        usage(stderr);
        return 2;
    }
    if (tap_queue > 65535) {
        fprintf(stderr, "rs-auxlog: --tap-queue is a netfilter queue's number, 0 to 65535\n");
        return 2;
    }
    if (tap_if && a.n_ls == 2 && a.ls[0].up.ip != a.ls[1].up.ip) {
        fprintf(stderr, "rs-auxlog: --tap needs the IMAP and SMTP upstreams on one address\n");
        return 2;
    }
    if (log_path && (err = rs_log_to(log_path)) < 0) {
        fprintf(stderr, "rs-auxlog: cannot open --log %s: %s\n", log_path, strerror(-err));
        return 2;
    }
    rs_log_init("rs-auxlog");   /* line-buffers the (maybe reopened) stderr */
    if (setup(&a) < 0 || (tap_if && tap_open(&a, tap_if, (unsigned)tap_queue) < 0))
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
    tap_close(&a);
    return 0;
}

