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

#include "daemon.h"
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
        "  fence --backend-id N    (to the proxy: declare it failed; its connections move)\n"
        "  readmit --backend-id N  (to the proxy: take it back after its rejoin)\n"
        "  recover --client IP:PORT --backend-id N --target IP:PORT   (prints the PLAN)\n"
        "  resend --client IP:PORT --from SEQ --to-seq SEQ [--out FILE]\n"
        "         (to a logger's resend port: writes the bytes received to FILE or stdout)\n"
        "  conn-map --peer IP:PORT --client IP:PORT --next N [--flags F] (1: the txns are re-runs)\n"
        "  txn-logged --txn IP:PORT#N --resp-end SEQ\n"
        "  state-query --client IP:PORT   (prints \"report client=IP:PORT ts=N|none ta=N|none\")\n"
        "  apply --client IP:PORT --upto N\n"
        "Prints the reply; exits 0 when the daemon answered status 0.\n");
}

static int get_u16(const char *v, uint16_t *out)
{
    uint64_t n;

    if (rs_parse_size(v, &n) || n > UINT16_MAX)
        return -EINVAL;
    *out = (uint16_t)n;
    return 0;
}

static int get_u32(const char *v, uint32_t *out)
{
    uint64_t n;

    if (rs_parse_size(v, &n) || n > UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)n;
    return 0;
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
    struct rs_addr to = { 0 }, a, client = { 0 }, target = { 0 }, peer = { 0 };
    struct rs_ctl_key key;
    struct rs_ctl_msg m = { 0 }, reply;
    struct rs_ctl_replay replay;
    const char *keyfile = NULL, *outfile = NULL;
    static uint8_t buf[RS_CTL_FRAME_MAX];   /* a PLAN carries up to RS_CTL_STATE_MAX bytes */
    uint32_t backend_id = 0, from = 0, to_seq = 0, resp_end = 0, flags = 0;
    uint16_t num = 0;
    rs_txn_id txn = 0;
    int has_num = 0;
    uint64_t timeout_ns = 5000000000ull;
    size_t have = 0;
    int fd, n;

    m.sender = 0x7f000000u | (uint32_t)(getpid() & 0xffffff);
    m.seq = rs_now_us();
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(o, "resplice")) {
            m.type = RS_CTL_RESPLICE;
        } else if (!strcmp(o, "heartbeat")) {
            m.type = RS_CTL_HEARTBEAT;
            m.u.heartbeat.role = RS_CTL_ROLE_PROXY;
            m.u.heartbeat.time_us = rs_now_us();
        } else if (!strcmp(o, "recover")) {
            m.type = RS_CTL_RECOVER;
        } else if (!strcmp(o, "resend")) {
            m.type = RS_CTL_RESEND;
        } else if (!strcmp(o, "conn-map")) {
            m.type = RS_CTL_CONN_MAP;
        } else if (!strcmp(o, "txn-logged")) {
            m.type = RS_CTL_TXN_LOGGED;
        } else if (!strcmp(o, "state-query")) {
            m.type = RS_CTL_STATE_QUERY;
        } else if (!strcmp(o, "apply")) {
            m.type = RS_CTL_APPLY;
        } else if (!strcmp(o, "status")) {
            m.type = RS_CTL_STATUS;
        } else if (!strcmp(o, "fence") || !strcmp(o, "readmit")) {
            m.type = RS_CTL_FENCE;
            m.u.fence.fenced = !strcmp(o, "fence");
        } else if (!v) {
            fprintf(stderr, "rs-ctl: %s needs a value\n", o);
            return 2;
        } else {
            int bad = 0;
            i++;
            if (!strcmp(o, "--to"))
                bad = rs_addr_parse(v, &to);
            else if (!strcmp(o, "--key"))
                keyfile = v;
            else if (!strcmp(o, "--timeout"))
                bad = rs_parse_duration(v, &timeout_ns);
            else if (!strcmp(o, "--client") && !(bad = rs_addr_parse(v, &a)))
                m.u.resplice.client = (struct rs_ctl_conn){ a.ip, a.port }, client = a;
            else if (!strcmp(o, "--vip") && !(bad = rs_addr_parse(v, &a)))
                m.u.resplice.vip = (struct rs_ctl_conn){ a.ip, a.port };
            else if (!strcmp(o, "--target") && !(bad = rs_addr_parse(v, &a)))
                m.u.resplice.target = (struct rs_ctl_conn){ a.ip, a.port }, target = a;
            else if (!strcmp(o, "--backend-id"))
                bad = get_u32(v, &backend_id);
            else if (!strcmp(o, "--from"))
                bad = get_u32(v, &from);
            else if (!strcmp(o, "--to-seq"))
                bad = get_u32(v, &to_seq);
            else if (!strcmp(o, "--out"))
                outfile = v;
            else if (!strcmp(o, "--peer"))
                bad = rs_addr_parse(v, &peer);
            else if (!strcmp(o, "--next") || !strcmp(o, "--upto"))
                bad = get_u16(v, &num), has_num = 1;
            else if (!strcmp(o, "--txn"))
                bad = rs_txn_id_parse(v, &txn);
            else if (!strcmp(o, "--flags"))
                bad = get_u32(v, &flags);
            else if (!strcmp(o, "--resp-end"))
                bad = get_u32(v, &resp_end);
            else if (!strcmp(o, "--q"))
                bad = get_u32(v, &m.u.resplice.client_seq);
            else if (!strcmp(o, "--r"))
                bad = get_u32(v, &m.u.resplice.resp_seq);
            else if (strcmp(o, "--client") && strcmp(o, "--vip") && strcmp(o, "--target")) {
                fprintf(stderr, "rs-ctl: unknown argument %s\n", o);
                usage(stderr);
                return 2;
            }
            if (bad) {
                fprintf(stderr, "rs-ctl: bad value '%s' for %s\n", v, o);
                return 2;
            }
        }
    }
    if (!to.port || !keyfile || !m.type) {
        usage(stderr);
        return 2;
    }
    /* The options fill the RESPLICE layout; the other messages take theirs here. */
    if (m.type == RS_CTL_HEARTBEAT && backend_id) {
        m.u.heartbeat.role = RS_CTL_ROLE_BACKEND;
        m.u.heartbeat.backend_id = backend_id;
    } else if (m.type == RS_CTL_RECOVER) {
        m.u.recover = (struct rs_ctl_recover){ { client.ip, client.port }, 0, backend_id,
                                               { target.ip, target.port }, false, 0, 0 };
    } else if (m.type == RS_CTL_FENCE) {
        m.u.fence.backend_id = backend_id;
    } else if (m.type == RS_CTL_RESEND) {
        m.u.resend = (struct rs_ctl_resend){ { client.ip, client.port }, from, to_seq };
    } else if (m.type == RS_CTL_CONN_MAP) {
        m.u.conn_map = (struct rs_ctl_conn_map){ { peer.ip, peer.port }, { client.ip, client.port }, num,
                                                 (uint8_t)flags };
    } else if (m.type == RS_CTL_TXN_LOGGED) {
        m.u.txn_logged = (struct rs_ctl_txn_logged){ txn, resp_end };
    } else if (m.type == RS_CTL_STATE_QUERY) {
        m.u.state_query.client = (struct rs_ctl_conn){ client.ip, client.port };
    } else if (m.type == RS_CTL_APPLY) {
        m.u.apply = (struct rs_ctl_apply){ { client.ip, client.port }, num };
    }
    if ((m.type == RS_CTL_CONN_MAP || m.type == RS_CTL_APPLY) && !has_num) {
        fprintf(stderr, "rs-ctl: %s needs %s N\n", rs_ctl_type_str(m.type),
                m.type == RS_CTL_APPLY ? "--upto" : "--next");
        return 2;
    }
    if (rs_ctl_init() || (n = rs_ctl_key_load(keyfile, &key)) != 0) {
        fprintf(stderr, "rs-ctl: cannot load key %s\n", keyfile);
        return 1;
    }
    n = rs_ctl_encode(&key, &m, buf, sizeof(buf));
    if (n < 0) {
        fprintf(stderr, "rs-ctl: cannot encode: %s (a field is missing or invalid)\n", strerror(-n));
        return 2;
    }
    struct sockaddr_in sin = rs_addr_sin(to);
    if (m.type == RS_CTL_HEARTBEAT) {
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0 || sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&sin, sizeof(sin)) != n) {
            fprintf(stderr, "rs-ctl: cannot send to %s: %s\n", RS_A(to), strerror(errno));
            return 1;
        }
        printf("sent HEARTBEAT to %s (udp)\n", RS_A(to));
        return 0;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin)) || write(fd, buf, (size_t)n) != n) {
        fprintf(stderr, "rs-ctl: cannot send to %s: %s\n", RS_A(to), strerror(errno));
        return 1;
    }
    if (m.type == RS_CTL_RESEND)
        return resend_dump(fd, rs_seq_dist(from, to_seq), outfile, timeout_ns);
    rs_ctl_replay_init(&replay);
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t r;
        if (poll(&pfd, 1, (int)(timeout_ns / 1000000)) <= 0) {
            fprintf(stderr, "rs-ctl: no reply from %s\n", RS_A(to));
            return 1;
        }
        r = read(fd, buf + have, sizeof(buf) - have);
        if (r <= 0) {
            fprintf(stderr, "rs-ctl: %s closed the connection (message rejected?)\n", RS_A(to));
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
                   r->b[i].role == RS_CTL_ROLE_PRIMARY_BACKEND ? "primary" : "alternate",
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
