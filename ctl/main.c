/* rs-ctl: sends one authenticated control-plane message to a resplice
 * daemon and prints its reply.  For tests, labs and operators:
 *
 *   rs-ctl --to 10.0.0.1:7070 --key key.hex resplice --client 10.0.1.1:40000 \
 *          --vip 10.0.0.1:80 --target 10.0.0.12:8080 [--q SEQ --r SEQ]
 *   rs-ctl --to 10.0.0.1:7070 --key key.hex heartbeat
 *   rs-ctl --to 10.0.0.2:7071 --key key.hex heartbeat --backend-id 1
 *   rs-ctl --to 10.0.0.2:7071 --key key.hex recover --client 10.0.1.1:40000 \
 *          --backend-id 1 --target 10.0.0.12:8080
 *   rs-ctl --to 10.0.0.2:7072 --key key.hex resend --client 10.0.1.1:40000 \
 *          --from SEQ --to-seq SEQ [--out FILE]
 *   rs-ctl --to 10.0.0.12:7073 --key key.hex state-query --client 10.0.1.1:40000
 *   rs-ctl --to 10.0.0.1:7070 --key key.hex status
 *   rs-ctl --to 10.0.0.1:7070 --key key.hex fence --backend-id 1   (readmit: the same)
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ctl_msg.h"
#include "daemon.h"
#include "options.h"
#include "parse.h"
#include "seq.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: rs-ctl --to ADDR:PORT --key FILE [--timeout DUR] MESSAGE [fields]\n"
        "  resplice --client IP:PORT --vip IP:PORT --target IP:PORT [--q SEQ --r SEQ]\n"
        "           (without --q/--r: where the client's streams stand now)\n"
        "  heartbeat [--backend-id N]   (one UDP datagram, as rs-stated sends them; role\n"
        "           BACKEND with an id, else PROXY; no reply)\n"
        "  status   (to the proxy: each backend's role, fenced, protected, connections)\n"
        "  fence --backend-id N [--target IP:PORT]   (to the proxy: declare it failed; its\n"
        "           connections move.  To an rs-stated, as the proxy sends it: --target is\n"
        "           the backend's address, which names a --peer given without an id)\n"
        "  readmit --backend-id N [--target IP:PORT]  (take it back after its rejoin)\n"
        "  recover --client IP:PORT --backend-id N --target IP:PORT   (prints the PLAN)\n"
        "  resend --client IP:PORT --from SEQ --to-seq SEQ [--out FILE]\n"
        "         (to a logger's resend port: writes the bytes received to FILE or stdout)\n"
        "  conn-map --peer IP:PORT --client IP:PORT --next N [--flags F] (1: the txns are re-runs)\n"
        "  txn-logged --txn IP:PORT#N --resp-end SEQ\n"
        "  state-query --client IP:PORT   (prints \"report client=IP:PORT ts=N|none ta=N|none\")\n"
        "  apply --client IP:PORT --upto N\n"
        "Prints the reply; exits 0 when the daemon answered status 0.\n");
}

/* What the command line says. */
struct args {
    struct rs_ctl_msg m;
    struct rs_addr to, client, target, peer, vip;
    const char *keyfile, *outfile;
    uint32_t backend_id, from, to_seq, resp_end, flags;
    uint16_t num;
    bool has_num;
    rs_txn_id txn;
    uint64_t timeout_ns;
};

/* The command word: the message type. */
static int command(const char *w, void *dst)
{
    struct rs_ctl_msg *m = dst;
    static const struct { const char *word; uint8_t type; } cmds[] = {
        { "resplice", RS_CTL_RESPLICE }, { "heartbeat", RS_CTL_HEARTBEAT }, { "recover", RS_CTL_RECOVER },
        { "resend", RS_CTL_RESEND }, { "conn-map", RS_CTL_CONN_MAP }, { "txn-logged", RS_CTL_TXN_LOGGED },
        { "state-query", RS_CTL_STATE_QUERY }, { "apply", RS_CTL_APPLY }, { "status", RS_CTL_STATUS },
        { "fence", RS_CTL_FENCE }, { "readmit", RS_CTL_FENCE },
    };

    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(w, cmds[i].word))
            continue;
        m->type = cmds[i].type;
        if (m->type == RS_CTL_HEARTBEAT) {
            m->u.heartbeat.role = RS_CTL_ROLE_PROXY;
            m->u.heartbeat.time_us = rs_now_us();
        }
        if (m->type == RS_CTL_FENCE)
            m->u.fence.fenced = !strcmp(w, "fence");
        return 0;
    }
    return -EINVAL;
}

static int u16_value(const char *v, void *dst)
{
    uint64_t n;

    if (rs_parse_size(v, &n) || n > UINT16_MAX)
        return -EINVAL;
    *(uint16_t *)dst = (uint16_t)n;
    return 0;
}

static int txn_value(const char *v, void *dst)
{
    return rs_txn_id_parse(v, dst);
}

/* Reads what a logger's resend port sends after the RESEND frame: 'want'
 * bytes, written to 'path' (stdout when NULL).  Returns the exit status. */
static int resend_dump(int fd, uint32_t want, const char *path, uint64_t timeout_ns)
{
    FILE *f = path ? fopen(path, "wb") : stdout;
    uint8_t chunk[65536];
    uint64_t got = 0;

    if (!f) {
        fprintf(stderr, "rs-ctl: cannot open %s\n", path);
        return 1;
    }
    while (got < want) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t r;
        if (poll(&pfd, 1, (int)(timeout_ns / 1000000)) <= 0 || (r = read(fd, chunk, sizeof(chunk))) <= 0)
            break;
        fwrite(chunk, 1, (size_t)r, f);
        got += (uint64_t)r;
    }
    if (f != stdout)
        fclose(f);
    fprintf(stderr, "rs-ctl: resend got %llu of %u bytes\n", (unsigned long long)got, want);
    return got == want ? 0 : 1;
}

int main(int argc, char **argv)
{
    static struct args a = { .timeout_ns = 5000000000ull };
    const struct rs_opt opts[] = {
        RS_OPTION("", RS_OPT_FN, &a.m, .fn = command),
        RS_OPTION("to", RS_OPT_ADDR, &a.to),
        RS_OPTION("key", RS_OPT_STR, &a.keyfile),
        RS_OPTION("timeout", RS_OPT_DURATION, &a.timeout_ns),
        RS_OPTION("client", RS_OPT_ADDR, &a.client),
        RS_OPTION("vip", RS_OPT_ADDR, &a.vip),
        RS_OPTION("target", RS_OPT_ADDR, &a.target),
        RS_OPTION("backend-id", RS_OPT_U32, &a.backend_id),
        RS_OPTION("from", RS_OPT_U32, &a.from),
        RS_OPTION("to-seq", RS_OPT_U32, &a.to_seq),
        RS_OPTION("out", RS_OPT_STR, &a.outfile),
        RS_OPTION("peer", RS_OPT_ADDR, &a.peer),
        RS_OPTION("next", RS_OPT_FN, &a.num, .want = "0..65535", .fn = u16_value, .given = &a.has_num),
        RS_OPTION("upto", RS_OPT_FN, &a.num, .want = "0..65535", .fn = u16_value, .given = &a.has_num),
        RS_OPTION("txn", RS_OPT_FN, &a.txn, .want = "IP:PORT#N", .fn = txn_value),
        RS_OPTION("flags", RS_OPT_U32, &a.flags),
        RS_OPTION("resp-end", RS_OPT_U32, &a.resp_end),
        RS_OPTION("q", RS_OPT_U32, &a.m.u.resplice.client_seq),
        RS_OPTION("r", RS_OPT_U32, &a.m.u.resplice.resp_seq),
        RS_OPTIONS_END,
    };
    struct rs_ctl_key key;
    struct rs_ctl_msg m, reply;
    struct rs_ctl_replay replay;
    static uint8_t buf[RS_CTL_FRAME_MAX];   /* a PLAN carries up to RS_CTL_STATE_MAX bytes */
    size_t have = 0;
    int fd, n;

    if ((n = rs_opts_parse("rs-ctl", argc, argv, opts, usage)))
        return rs_opts_exit(n);
    m = a.m;
    m.sender = RS_CTL_SENDER_OPERATOR | (uint32_t)(getpid() & 0xffffff);
    m.seq = rs_now_us();
    if (!a.to.port || !a.keyfile || !m.type) {
        usage(stderr);
        return 2;
    }
    /* Each message takes its fields from the options. */
    if (m.type == RS_CTL_RESPLICE) {
        m.u.resplice.client = (struct rs_ctl_conn){ a.client.ip, a.client.port };
        m.u.resplice.vip = (struct rs_ctl_conn){ a.vip.ip, a.vip.port };
        m.u.resplice.target = (struct rs_ctl_conn){ a.target.ip, a.target.port };
    } else if (m.type == RS_CTL_HEARTBEAT && a.backend_id) {
        m.u.heartbeat.role = RS_CTL_ROLE_BACKEND;
        m.u.heartbeat.backend_id = a.backend_id;
    } else if (m.type == RS_CTL_RECOVER) {
        m.u.recover = (struct rs_ctl_recover){ { a.client.ip, a.client.port }, 0, a.backend_id,
                                               { a.target.ip, a.target.port }, false, 0, 0, false, 0, false, 0,
                                               false };
    } else if (m.type == RS_CTL_FENCE) {
        m.u.fence.backend_id = a.backend_id;
        m.u.fence.ip4 = a.target.ip;
    } else if (m.type == RS_CTL_RESEND) {
        m.u.resend = (struct rs_ctl_resend){ { a.client.ip, a.client.port }, a.from, a.to_seq };
    } else if (m.type == RS_CTL_CONN_MAP) {
        m.u.conn_map = (struct rs_ctl_conn_map){ { a.peer.ip, a.peer.port }, { a.client.ip, a.client.port },
                                                 a.num, (uint8_t)a.flags };
    } else if (m.type == RS_CTL_TXN_LOGGED) {
        m.u.txn_logged = (struct rs_ctl_txn_logged){ a.txn, a.resp_end };
    } else if (m.type == RS_CTL_STATE_QUERY) {
        m.u.state_query.client = (struct rs_ctl_conn){ a.client.ip, a.client.port };
    } else if (m.type == RS_CTL_APPLY) {
        m.u.apply = (struct rs_ctl_apply){ { a.client.ip, a.client.port }, a.num };
    }
    if ((m.type == RS_CTL_CONN_MAP || m.type == RS_CTL_APPLY) && !a.has_num) {
        fprintf(stderr, "rs-ctl: %s needs %s N\n", rs_ctl_type_str(m.type),
                m.type == RS_CTL_APPLY ? "--upto" : "--next");
        return 2;
    }
    if (rs_ctl_init() || (n = rs_ctl_key_load(a.keyfile, &key)) != 0) {
        fprintf(stderr, "rs-ctl: cannot load key %s\n", a.keyfile);
        return 1;
    }
    n = rs_ctl_encode(&key, &m, buf, sizeof(buf));
    if (n < 0) {
        fprintf(stderr, "rs-ctl: cannot encode: %s (a field is missing or invalid)\n", strerror(-n));
        return 2;
    }
    struct sockaddr_in sin = rs_addr_sin(a.to);
    if (m.type == RS_CTL_HEARTBEAT) {
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0 || sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&sin, sizeof(sin)) != n) {
            fprintf(stderr, "rs-ctl: cannot send to %s: %s\n", RS_A(a.to), strerror(errno));
            return 1;
        }
        printf("sent HEARTBEAT to %s (udp)\n", RS_A(a.to));
        return 0;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin)) || write(fd, buf, (size_t)n) != n) {
        fprintf(stderr, "rs-ctl: cannot send to %s: %s\n", RS_A(a.to), strerror(errno));
        return 1;
    }
    if (m.type == RS_CTL_RESEND)
        return resend_dump(fd, rs_seq_dist(a.from, a.to_seq), a.outfile, a.timeout_ns);
    rs_ctl_replay_init(&replay);
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t r;
        if (poll(&pfd, 1, (int)(a.timeout_ns / 1000000)) <= 0) {
            fprintf(stderr, "rs-ctl: no reply from %s\n", RS_A(a.to));
            return 1;
        }
        r = read(fd, buf + have, sizeof(buf) - have);
        if (r <= 0) {
            fprintf(stderr, "rs-ctl: %s closed the connection (message rejected?)\n", RS_A(a.to));
            return 1;
        }
        have += (size_t)r;
        n = rs_ctl_decode(&key, &replay, buf, have, &reply);
        if (n < 0) {
            fprintf(stderr, "rs-ctl: bad reply: %s\n", strerror(-n));
            return 1;
        }
        if (n > 0)
            break;
    }
    if (reply.type == RS_CTL_PLAN) {
        const struct rs_ctl_plan *pl = &reply.u.plan;
        printf("plan status=%d flags=0x%x tl=%u tsp=%u tr=%u replayed=%u ack_tl=%u p=%u ackcl=%u"
               " resend_from=%u resend_to=%u q=%u len=%u\n", pl->status, pl->flags, pl->tl, pl->tsp,
               pl->tr, pl->replayed, pl->ack_tl, pl->p, pl->ackcl, pl->resend_from, pl->resend_to, pl->q,
               pl->len);
        return pl->status ? 1 : 0;
    }
    if (reply.type == RS_CTL_STATE_REPORT) {
        const struct rs_ctl_state_report *sr = &reply.u.state_report;
        char ts[8] = "none", ta[8] = "none";

        if (sr->has_ts)
            snprintf(ts, sizeof(ts), "%u", sr->ts);
        if (sr->has_ta)
            snprintf(ta, sizeof(ta), "%u", sr->ta);
        printf("report client=%s ts=%s ta=%s\n",
               RS_A(((struct rs_addr){ sr->conn.ip4, sr->conn.port })), ts, ta);
        return 0;
    }
    if (reply.type == RS_CTL_STATUS_REPORT) {
        const struct rs_ctl_status_report *r = &reply.u.status_report;

        printf("status recovering=%u recovered=%u unrecoverable=%u\n", r->recovering, r->recovered,
               r->unrecoverable);
        for (unsigned i = 0; i < r->n; i++)
            printf("backend id=%u addr=%s role=%s fenced=%d protected=%d conns=%u\n", r->b[i].id,
                   RS_A(((struct rs_addr){ r->b[i].ip4, r->b[i].port })),
                   r->b[i].role == RS_CTL_ROLE_PRIMARY_BACKEND     ? "primary"
                   : r->b[i].role == RS_CTL_ROLE_ALTERNATE_BACKEND ? "alternate"
                                                                   : "spare",
                   !!(r->b[i].flags & RS_CTL_BACKEND_FENCED), !!(r->b[i].flags & RS_CTL_BACKEND_PROTECTED),
                   r->b[i].conns);
        return 0;
    }
    if (reply.type != RS_CTL_ACK) {
        printf("reply type=%s\n", rs_ctl_type_str(reply.type));
        return 1;
    }
    printf("ack %s status=%d%s%s\n", rs_ctl_type_str(reply.u.ack.echo_type), reply.u.ack.status,
           reply.u.ack.status ? " " : "", reply.u.ack.status ? strerror(-reply.u.ack.status) : "");
    return reply.u.ack.status ? 1 : 0;
}
