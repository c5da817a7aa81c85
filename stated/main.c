/* rs-stated: the per-backend state agent of docs/recovery.md.  Buffers the
 * peer backend's STATE_UPDATEs per client connection and applies them to the
 * local app (through its state library, libstate/rs_state.h) once the logger says the
 * transaction is logged; answers STATE_QUERY / APPLY / CONN_MAP / FENCE;
 * relays the local app's own updates to the peer; heartbeats to the logger
 * (UDP, from a real-time thread of its own, so a busy host does not make a
 * healthy backend look dead) while the app is connected, and reports its
 * death at once.  The rest runs on one event loop (common/loop.h), with
 * its control port and the peer link on common/ctlconn.h.  This file:
 * options, set-up, the loop; stated.h says what the others do. */
#include "stated.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "options.h"
#include "parse.h"

/* ---- Stats ------------------------------------------------------------ */

static void stats_print(void *ctx)
{
    static const struct rs_stat_field fields[] = {
        RS_STAT(struct stats, ctl_frames), RS_STAT(struct stats, updates), RS_STAT(struct stats, update_bytes),
        RS_STAT(struct stats, updates_refused), RS_STAT(struct stats, updates_stale), RS_STAT(struct stats, logged),
        RS_STAT(struct stats, unlogged), RS_STAT(struct stats, logger_lost),
        RS_STAT(struct stats, applied), RS_STAT(struct stats, applied_forced), RS_STAT(struct stats, apply_errors),
        RS_STAT(struct stats, queries), RS_STAT(struct stats, conn_maps), RS_STAT(struct stats, relayed),
        RS_STAT(struct stats, relay_acked), RS_STAT(struct stats, relay_failed),
        RS_STAT(struct stats, failures_sent), RS_STAT(struct stats, app_connects),
        RS_STAT(struct stats, app_disconnects), RS_STAT(struct stats, updates_fenced),
        RS_STAT(struct stats, relays_degraded), RS_STAT(struct stats, forwarded),
        RS_STAT(struct stats, forward_failed), RS_STAT(struct stats, snapshots_sent),
        RS_STAT(struct stats, snapshots_received), RS_STAT(struct stats, refused_joining),
    };
    const struct stated *s = ctx;

    printf("stats id=%u app=%d clients=%u buffered=%" PRIu64 " buffered_bytes=%" PRIu64 " evicted=%" PRIu64
           " ctl_conns=%u ctl_accepted=%" PRIu64 " ctl_rejected=%" PRIu64 " relay_queued=%u peer_up=%d"
           " heartbeats=%" PRIu64 " fenced=%d peer_fenced=%d", s->id, s->lib_fd >= 0, s->store.n_clients,
           s->store.n_states, s->store.bytes, s->store.evicted, s->ctlsrv.n_conns, s->ctlsrv.accepted,
           s->ctlsrv.rejected, s->rel_len, s->peer_link.up, __atomic_load_n(&s->st.heartbeats, __ATOMIC_RELAXED),
           s->self_fenced, s->peer_fenced);
    rs_stats_fields(stdout, &s->st, fields, sizeof(fields) / sizeof(fields[0]));
    printf("\n");
    fflush(stdout);
}

/* ---- Set-up ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-stated --id N --key FILE --app-socket PATH [options]\n"
        "Per-backend state agent (docs/recovery.md): buffers the peer backend's state\n"
        "updates, applies them to the local app once logged, answers STATE_QUERY, APPLY\n"
        "and CONN_MAP, relays the local app's updates to the peer, heartbeats to the logger.\n"
        "\n"
        "  --id N               this backend's id (1..1048575)\n"
        "  --listen ADDR:PORT   control port (default 0.0.0.0:7073)\n"
        "  --app-socket PATH    unix socket the app's state library connects to\n"
        "  --key FILE           shared control-plane key: 64 hex characters\n"
        "  --peer [ID=]ADDR:PORT  another backend's rs-stated (repeat it, in the chain's\n"
        "                       order): the first live one after this backend (a higher\n"
        "                       id; one without an id always is) gets the local app's\n"
        "                       updates and the states this one receives (without any,\n"
        "                       updates are refused)\n"
        "  --logger ADDR:PORT   where HEARTBEAT and FAILURE go (without it: none)\n"
        "  --heartbeat DUR      heartbeat interval while the app is connected (default 10ms)\n"
        "  --relay-timeout DUR  fail a relayed update the peer has not taken in DUR\n"
        "                       (default 1s)\n"
        "  --help               this text\n"
        "\n"
        "Prints \"listening on ADDR:PORT\" when ready.  SIGUSR1 prints a stats line;\n"
        "SIGTERM or SIGINT exits cleanly.\n");
}

static int backend_id(const char *v, void *dst)
{
    uint64_t id;

    if (rs_parse_size(v, &id) < 0 || id == 0 || id >= (1u << 20))
        return -EINVAL;
    *(uint32_t *)dst = (uint32_t)id;
    return 0;
}

int main(int argc, char **argv)
{
    static struct stated s;     /* large: records and relay ring */
    const char *keyfile = NULL;
    const struct rs_opt opts[] = {
        RS_OPTION("id", RS_OPT_FN, &s.id, .want = "1..1048575", .fn = backend_id),
        RS_OPTION("listen", RS_OPT_ADDR, &s.listen),
        RS_OPTION("app-socket", RS_OPT_STR, &s.app_path),
        RS_OPTION("key", RS_OPT_STR, &keyfile),
        RS_OPTION("peer", RS_OPT_FN, &s, .want = "[ID=]IPv4ADDR:PORT", .fn = peer_add),
        RS_OPTION("logger", RS_OPT_ADDR, &s.logger, .given = &s.has_logger),
        RS_OPTION("heartbeat", RS_OPT_DURATION, &s.heartbeat_ns, .nonzero = true),
        RS_OPTION("relay-timeout", RS_OPT_DURATION, &s.relay_timeout_ns, .nonzero = true),
        RS_OPTIONS_END,
    };
    int err;

    s.listen = (struct rs_addr){ 0, 7073 };
    s.heartbeat_ns = 10000000ull;
    s.relay_timeout_ns = 1000000000ull;
    s.lib_fd = s.lib_io.fd = s.app_io.fd = -1;
    if ((err = rs_opts_parse("rs-stated", argc, argv, opts, usage)))
        return rs_opts_exit(err);
    for (int i = 1; i < s.n_peers; i++)
        if (!s.peers[i].id != !s.peers[0].id) {
            /* A chain needs every id: a state must never come back to where it came from. */
            fprintf(stderr, "rs-stated: give every --peer an id (ID=ADDR:PORT), or none\n");
            return 2;
        }
    if (!s.id || !keyfile || !s.app_path) {
        fprintf(stderr, "rs-stated: --id, --key and --app-socket are required\n");
        usage(stderr);
        return 2;
    }
    rs_log_init("rs-stated");
    if (rs_ctl_init() < 0 || (err = rs_ctl_key_load(keyfile, &s.key)) != 0) {
        fprintf(stderr, "rs-stated: cannot load key %s\n", keyfile);
        return 1;
    }
    s.seq = rs_now_us();
    if ((err = rs_loop_init(&s.loop)) || (err = rs_loop_signals(&s.loop, stats_print, &s))) {
        fprintf(stderr, "rs-stated: cannot set up the event loop: %s\n", strerror(-err));
        return 1;
    }
    if ((err = rs_ctlserver_open(&s.ctlsrv, &s.loop, s.listen, &s.key, &s.seq, SENDER(s.id, CH_REPLY), control_on_msg,
                                 &s))) {
        fprintf(stderr, "rs-stated: cannot listen on %s: %s\n", RS_A(s.listen), strerror(-err));
        return 1;
    }
    s.ctlsrv.on_close = control_on_close;
    if ((err = app_link_listen(s.app_path)) < 0 || (err = rs_io_start(&s.loop, &s.app_io, err, EPOLLIN, app_link_accept, &s))) {
        fprintf(stderr, "rs-stated: cannot listen on %s: %s\n", s.app_path, strerror(-err));
        return 1;
    }
    s.successor = -1;
    s.rank = s.id;
    peer_choose(&s);
    s.udp_fd = -1;
    if (s.has_logger && (err = heartbeat_start(&s)) < 0) {
        fprintf(stderr, "rs-stated: cannot start heartbeats to %s: %s\n", RS_A(s.logger), strerror(-err));
        return 1;
    }
    rs_log("start id=%u listen=%s app-socket=%s peer=%s logger=%s heartbeat=%" PRIu64 "us",
           s.id, RS_A(s.listen), s.app_path, s.successor >= 0 ? RS_A(s.peer) : "none",
           s.has_logger ? RS_A(s.logger) : "none", s.heartbeat_ns / 1000);
    printf("listening on %s\n", RS_A(s.listen));
    fflush(stdout);

    if (rs_loop_run(&s.loop) < 0)
        rs_log("event loop: %s", strerror(errno));

    lib_close(&s, "shutdown");
    rs_ctlserver_close(&s.ctlsrv);
    rs_ctlconn_close(&s.peer_link);
    stats_print(&s);
    rs_store_clear(&s.store);
    free(s.snap_in);
    rs_io_stop(&s.app_io);
    close(s.app_io.fd);
    unlink(s.app_path);
    rs_loop_fini(&s.loop);
    rs_log("exit");
    return 0;
}
