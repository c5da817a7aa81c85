/* rs-app front mode (--upstream): a numbering reverse proxy in front of a
 * real application (lighttpd + PHP).  Each client request is parsed and
 * numbered as in application mode (the transaction ID the logger gives it),
 * forwarded with an X-Resplice-Txn header over the client's own upstream
 * connection, and its response comes back through libhttp-parser: the
 * X-Resplice-State / X-Resplice-Sync headers become a STATE_UPDATE (xfer.c),
 * per-run headers (Date) are dropped, and the rest streams to the client,
 * held while a synchronous update waits for the alternate.  On the
 * alternate, APPLY runs --apply-cmd on the state blob, or, with
 * --apply-file, renames it over the application's state file.
 *
 * A state blob is an envelope (front_blob_*): the application's state and,
 * for a synchronous (non-deterministic) update, the complete response the
 * client is about to get.  The update then leaves once that response is
 * complete, still before its first byte does.  The alternate keeps such a
 * response (front_rec) and, when the recovery applies that transaction's
 * state because the client already holds part of its response, answers the
 * request from it instead of running it again: re-running would draw new
 * random values (a session id, a token) and answer differently. */
#include "app.h"
#include "xfer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- Limits ----------------------------------------------------------- */

#define FRONT_IN_CAP     16384u         /* client bytes read ahead */
#define FRONT_HEAD_CAP   16384u         /* one request or response head; longer: 431 / 502 */
#define FRONT_UP_OUT_CAP 65536u         /* request bytes queued for the upstream */
#define FRONT_UP_IN_CAP  65536u         /* response bytes read from the upstream */
/* Response bytes queued for the client.  It is also the bound of a held
 * (synchronous) response: once it is full the upstream is not read until
 * the alternate's ACK releases the response (TCP back-pressure on the
 * application; nothing is dropped, nothing leaves early). */
#define FRONT_OUT_CAP    (256u * 1024)
#define FRONT_TXN_Q      32u            /* requests forwarded, response not yet sent */
#define FRONT_CUTS       16u            /* header lines removed from one head */
#define FRONT_NAME_MAX   64u            /* longer header names match nothing we cut */
#define FRONT_PATH_MAX   1024u          /* X-Resplice-State path */
#define FRONT_LOCAL_ROOM 512u           /* 'out' space a locally made response needs */
#define FRONT_TURN_BYTES (1u << 20)     /* bytes one connection sends per wake-up */
#define FRONT_TXN_HDR    "X-Resplice-Txn"   /* request header naming the transaction */
#define FRONT_RERUN_HDR  "X-Resplice-Rerun" /* ... and saying it may have run elsewhere already */
#define FRONT_LINGER_NS  2000000000ull  /* how long a closing socket drains input */
#define FRONT_RECS       8u             /* recorded responses kept on the alternate */
#define FRONT_REC_TTL_NS (300ull * 1000000000ull)  /* ... and for how long */
/* Envelope of a state blob: magic, state length, response length (u32 LE),
 * the state's sequence number (u64 LE, X-Resplice-State-Seq; 0 = none). */
#define FRONT_BLOB_MAGIC "RSF1"
#define FRONT_BLOB_HDR   20u

/* ---- Types ------------------------------------------------------------ */

enum hdr_kind { HK_KEEP, HK_CUT, HK_STATE, HK_SYNC, HK_SEQ };

/* A request or response head being collected: its bytes, and the header
 * lines to drop from it, found through the parser's callbacks. */
struct front_head {
    uint8_t buf[FRONT_HEAD_CAP];
    uint32_t len;
    const char *exec_at;        /* during http_parser_execute: the bytes parsed, */
    uint32_t exec_base;         /*   and their offset in 'buf' once copied */
    bool in_field;              /* the last callback was a header name */
    bool open;                  /* a header line is started and not yet ended */
    bool classified;
    enum hdr_kind kind;
    uint32_t line_start;
    char name[FRONT_NAME_MAX + 1];
    uint32_t name_len;          /* FRONT_NAME_MAX + 1: too long to match */
    uint32_t cut_from[FRONT_CUTS], cut_to[FRONT_CUTS];
    uint32_t n_cuts;
    bool cut_overflow;
    bool done;                  /* headers complete: the final LF is still unparsed */
    uint32_t hend;              /* after done: end of the last header line */
    bool has_state, has_sync;   /* responses: X-Resplice-State / -Sync seen */
    char path[FRONT_PATH_MAX + 1];
    uint32_t path_len;
    bool path_long;
    char sync[8];
    uint32_t sync_len;
    char seq[24];               /* X-Resplice-State-Seq: the state's age, for --apply-file */
    uint32_t seq_len;
};

/* A forwarded request whose response is not yet all sent to the client. */
struct front_txn {
    rs_txn_id id;
    uint64_t start, end;        /* client output stream; 'end' UINT64_MAX while generating */
    uint64_t hold_from;         /* where its final response head starts */
    uint64_t t_start;
    int status;
    int local;                  /* status of a response made here (400, 431, 502, 505), or 0 */
    bool head_req;              /* HEAD: no response body */
    bool started;               /* a response byte is queued */
    bool hooked;                /* txn_update was called: txn_end is owed */
    bool waiting;               /* synchronous update not yet acknowledged: held */
    uint8_t *sync_state;        /* a synchronous update's state, sent with the response */
    uint32_t sync_len;          /*   once that is complete (front_sync_send) */
    uint64_t state_seq;         /* its X-Resplice-State-Seq */
    uint8_t *rec;               /* answered from this recorded response (the alternate) */
    uint32_t rec_len, rec_off;
    char what[80];
};

/* A response that came with a synchronous update (the alternate). */
struct front_rec {
    rs_txn_id id;
    uint8_t *data;              /* NULL: free slot */
    uint32_t len;
    uint64_t t_ns;
};

enum front_phase { PH_IDLE, PH_HEAD, PH_BODY };

struct front_conn {
    struct front_conn *prev, *next;
    struct rs_app *app;
    struct app_front *f;
    int fd, ufd;                /* client and upstream sockets (sio.fd / uio.fd while open) */
    struct rs_io sio, uio;
    struct rs_timer timer;      /* linger */
    uint32_t id_ip4;            /* the client its transaction IDs name */
    uint16_t id_port, id_base;
    bool rerun;                 /* its CONN_MAP said: re-runs after a failover */
    uint32_t n_req;
    char tuple[64];
    /* client -> upstream */
    http_parser rq;
    enum front_phase rq_phase;
    bool rq_skip_lf;            /* the next parsed byte is the head's final LF */
    bool rq_msg_done;
    bool rq_keep, rq_upgrade, rq_head;
    int rq_reject;
    bool rq_stop;               /* no more requests are read */
    bool rq_discard;            /* this request is answered from a record: drop its body */
    bool peer_eof;
    char rq_what[80];
    uint32_t rq_what_len;
    struct front_head rqh;
    uint8_t in[FRONT_IN_CAP];
    uint32_t in_off, in_len;
    uint8_t up_out[FRONT_UP_OUT_CAP];
    uint32_t uo_off, uo_len;
    bool up_connecting;
    /* upstream -> client */
    http_parser rs;
    enum front_phase rs_phase;
    bool rs_skip_lf;
    bool rs_msg_done, rs_keep, rs_interim;
    bool up_eof;
    struct front_head rsh;
    uint8_t up_in[FRONT_UP_IN_CAP];
    uint32_t ui_off, ui_len;
    uint8_t out[FRONT_OUT_CAP];
    uint32_t out_off, out_len;
    uint64_t gen_total, sent_total, recv_total;
    struct front_txn q[FRONT_TXN_Q];
    uint32_t q_head, q_len;
    uint32_t q_done;            /* entries from q_head whose response is complete */
    bool closing;               /* shut the write side once everything queued is sent */
    bool draining;
    bool dead;
};

enum front_stat {
    FS_CONNS, FS_REQS, FS_RESPS, FS_LOCAL, FS_STATES, FS_STATE_BYTES, FS_SYNC, FS_STATE_ERRORS,
    FS_STRIPPED, FS_BYTES_IN, FS_BYTES_OUT, FS_UP_CONNECTS, FS_UP_ERRORS, FS_APPLIES,
    FS_APPLY_ERRORS, FS_RESP_CARRIED, FS_RESP_NOT_CARRIED, FS_RECORDED, FS_FROM_RECORD, FS_MAX,
};

static const char *const fs_names[FS_MAX] = {
    [FS_CONNS] = "front_conns", [FS_REQS] = "front_reqs", [FS_RESPS] = "front_resps",
    [FS_LOCAL] = "front_local_resps", [FS_STATES] = "front_states",
    [FS_STATE_BYTES] = "front_state_bytes", [FS_SYNC] = "front_sync",
    [FS_STATE_ERRORS] = "front_state_errors", [FS_STRIPPED] = "front_hdrs_stripped",
    [FS_BYTES_IN] = "front_bytes_in", [FS_BYTES_OUT] = "front_bytes_out",
    [FS_UP_CONNECTS] = "front_up_connects", [FS_UP_ERRORS] = "front_up_errors",
    [FS_APPLIES] = "front_applies", [FS_APPLY_ERRORS] = "front_apply_errors",
    [FS_RESP_CARRIED] = "front_resp_carried", [FS_RESP_NOT_CARRIED] = "front_resp_not_carried",
    [FS_RECORDED] = "front_recorded", [FS_FROM_RECORD] = "front_from_record",
};

struct app_front {
    struct app_front_cfg cfg;
    char state_real[PATH_MAX];  /* realpath of cfg.state_dir */
    struct front_conn *conns, *dead;
    uint64_t conns_open;
    uint8_t *blob;              /* RS_CTL_STATE_MAX: one state read at a time */
    /* The running apply command (one at a time: stated's records are answered in order). */
    pid_t apply_pid;
    int apply_pidfd;
    struct rs_io apply_io;      /* the command's pidfd: readable when it ends */
    struct rs_timer apply_timer;    /* --apply-timeout */
    uint64_t apply_cookie, apply_t0;
    rs_txn_id apply_txn;
    uint32_t apply_len;
    bool apply_timed_out;
    char apply_path[PATH_MAX + 32];
    struct front_rec recs[FRONT_RECS];
    uint32_t rec_next;
    uint64_t installed_seq;     /* --apply-file: the newest state installed */
    bool crashed;               /* --crash-at fired (a test's fault injection) */
    uint64_t stats[FS_MAX];
};

static void front_service(struct front_conn *c);
static void front_close(struct front_conn *c, const char *why);
static void on_sock(struct rs_io *io, uint32_t events);
static void on_up(struct rs_io *io, uint32_t events);
static void on_linger(struct rs_timer *t);
static void on_apply_end(struct rs_io *io, uint32_t events);

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static const char *txn_str(rs_txn_id id, char buf[RS_TXN_ID_STRLEN])
{
    rs_txn_id_format(id, buf, RS_TXN_ID_STRLEN);
    return buf;
}

static struct front_txn *q_at(struct front_conn *c, uint32_t i)
{
    return &c->q[(c->q_head + i) % FRONT_TXN_Q];
}

/* ---- Heads: header lines to drop -------------------------------------- */

static void head_reset(struct front_head *h)
{
    h->len = 0;
    h->in_field = h->open = h->classified = false;
    h->n_cuts = 0;
    h->cut_overflow = h->done = false;
    h->has_state = h->has_sync = h->path_long = false;
    h->path_len = h->sync_len = h->seq_len = 0;
}

static uint32_t head_pos(const struct front_head *h, const char *at)
{
    return h->exec_base + (uint32_t)(at - h->exec_at);
}

static bool name_is(const struct front_head *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

/* Decides what becomes of the current header line.  Requests lose every
 * X-Resplice-* header (a client must not name its own transaction); responses
 * lose X-Resplice-* (State and Sync are read first) and the --strip-header
 * names. */
static void head_classify(struct front_conn *c, struct front_head *h)
{
    const char *pfx = "x-resplice-";
    bool ours = h->name_len <= FRONT_NAME_MAX && h->name_len >= strlen(pfx) &&
                strncasecmp(h->name, pfx, strlen(pfx)) == 0;

    h->classified = true;
    h->kind = HK_KEEP;
    if (h == &c->rqh) {
        if (ours)
            h->kind = HK_CUT;
        return;
    }
    if (name_is(h, "X-Resplice-State")) {
        h->kind = HK_STATE;
        h->has_state = true;
        h->path_len = 0;        /* the last one counts */
        h->path_long = false;
    } else if (name_is(h, "X-Resplice-Sync")) {
        h->kind = HK_SYNC;
        h->has_sync = true;
        h->sync_len = 0;
    } else if (name_is(h, "X-Resplice-State-Seq")) {
        h->kind = HK_SEQ;
        h->seq_len = 0;
    } else if (ours) {
        h->kind = HK_CUT;
    } else {
        for (int i = 0; i < c->f->cfg.n_strip; i++)
            if (name_is(h, c->f->cfg.strip[i]))
                h->kind = HK_CUT;
    }
}

/* Ends the open header line at head offset 'end'. */
static void head_close_line(struct front_conn *c, struct front_head *h, uint32_t end)
{
    if (!h->open)
        return;
    if (!h->classified)
        head_classify(c, h);
    h->open = false;
    if (h->kind == HK_KEEP)
        return;
    if (h->n_cuts == FRONT_CUTS) {
        h->cut_overflow = true;
        return;
    }
    h->cut_from[h->n_cuts] = h->line_start;
    h->cut_to[h->n_cuts++] = end;
}

static void head_field(struct front_conn *c, struct front_head *h, const char *at, size_t len)
{
    if (!h->in_field) {         /* a new header line starts here */
        head_close_line(c, h, head_pos(h, at));
        h->open = h->in_field = true;
        h->classified = false;
        h->line_start = head_pos(h, at);
        h->name_len = 0;
    }
    if (h->name_len + len > FRONT_NAME_MAX) {
        h->name_len = FRONT_NAME_MAX + 1;
        return;
    }
    memcpy(h->name + h->name_len, at, len);
    h->name_len += (uint32_t)len;
}

static void head_value(struct front_conn *c, struct front_head *h, const char *at, size_t len)
{
    if (h->in_field) {
        h->in_field = false;
        head_classify(c, h);
    }
    if (h->kind == HK_STATE) {
        if (h->path_len + len > FRONT_PATH_MAX) {
            h->path_long = true;
            return;
        }
        memcpy(h->path + h->path_len, at, len);
        h->path_len += (uint32_t)len;
        h->path[h->path_len] = '\0';
    } else if (h->kind == HK_SYNC && h->sync_len + len < sizeof(h->sync)) {
        memcpy(h->sync + h->sync_len, at, len);
        h->sync_len += (uint32_t)len;
        h->sync[h->sync_len] = '\0';
    } else if (h->kind == HK_SEQ && h->seq_len + len < sizeof(h->seq)) {
        memcpy(h->seq + h->seq_len, at, len);
        h->seq_len += (uint32_t)len;
        h->seq[h->seq_len] = '\0';
    }
}

/* Headers are complete; the parser stopped before the final LF ('next' is
 * the byte after the parsed ones).  Finds where the last header line ends.
 * Returns 0, or -EPROTO when the bytes are not what the parser promised or
 * too many lines are to be cut. */
static int head_finish(struct front_conn *c, struct front_head *h, uint8_t next)
{
    uint32_t e = h->len;

    if (next != '\n')
        return -EPROTO;
    if (e > 0 && h->buf[e - 1] == '\r')
        e--;
    if (e == 0 || h->buf[e - 1] != '\n')
        return -EPROTO;
    head_close_line(c, h, e);
    h->hend = e;
    return h->cut_overflow ? -EPROTO : 0;
}

/* Bytes head_build writes for 'h' plus 'extra_len' bytes of extra lines. */
static uint32_t head_out_len(const struct front_head *h, size_t extra_len)
{
    uint32_t n = h->hend + (uint32_t)extra_len + 2;

    for (uint32_t i = 0; i < h->n_cuts; i++)
        n -= h->cut_to[i] - h->cut_from[i];
    return n;
}

/* Writes the head without its cut lines, then 'extra' lines, then the
 * blank line, to 'dst' (head_out_len bytes of room).  Returns the length. */
static uint32_t head_build(const struct front_head *h, const char *extra, size_t extra_len, uint8_t *dst)
{
    uint32_t pos = 0, n = 0;

    for (uint32_t i = 0; i <= h->n_cuts; i++) {
        uint32_t to = i < h->n_cuts ? h->cut_from[i] : h->hend;

        memcpy(dst + n, h->buf + pos, to - pos);
        n += to - pos;
        if (i < h->n_cuts)
            pos = h->cut_to[i];
    }
    memcpy(dst + n, extra, extra_len);
    n += (uint32_t)extra_len;
    memcpy(dst + n, "\r\n", 2);
    return n + 2;
}

/* ---- Parser callbacks: requests --------------------------------------- */

static int rq_on_message_begin(http_parser *p)
{
    struct front_conn *c = p->data;

    c->rq_what_len = 0;
    c->rq_reject = 0;
    return 0;
}

static int rq_on_url(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;
    size_t room = sizeof(c->rq_what) - 1 - c->rq_what_len;

    memcpy(c->rq_what + c->rq_what_len, at, len < room ? len : room);
    c->rq_what_len += (uint32_t)(len < room ? len : room);
    c->rq_what[c->rq_what_len] = '\0';
    return 0;
}

static int rq_on_field(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;

    head_field(c, &c->rqh, at, len);
    return 0;
}

static int rq_on_value(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;

    head_value(c, &c->rqh, at, len);
    return 0;
}

static int rq_on_headers_complete(http_parser *p)
{
    struct front_conn *c = p->data;

    if (p->http_major != 1) {
        c->rq_reject = 505;
        return -1;
    }
    c->rq_keep = http_should_keep_alive(p) != 0;
    c->rq_upgrade = p->upgrade != 0;
    c->rq_head = p->method == HTTP_HEAD;
    c->rqh.done = true;
    /* Stop here: the head is rewritten before any body byte goes on. */
    http_parser_pause(p, 1);
    return 0;
}

static int rq_on_message_complete(http_parser *p)
{
    struct front_conn *c = p->data;

    c->rq_msg_done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings rq_settings = {
    .on_message_begin = rq_on_message_begin,
    .on_url = rq_on_url,
    .on_header_field = rq_on_field,
    .on_header_value = rq_on_value,
    .on_headers_complete = rq_on_headers_complete,
    .on_message_complete = rq_on_message_complete,
};

/* ---- Parser callbacks: responses -------------------------------------- */

static int rs_on_field(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;

    head_field(c, &c->rsh, at, len);
    return 0;
}

static int rs_on_value(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;

    head_value(c, &c->rsh, at, len);
    return 0;
}

static int rs_on_headers_complete(http_parser *p)
{
    struct front_conn *c = p->data;
    const struct front_txn *t = q_at(c, c->q_done);

    c->rsh.done = true;
    c->rs_interim = p->status_code / 100 == 1;
    http_parser_pause(p, 1);
    return t->head_req ? 1 : 0;      /* 1: a response to HEAD has no body */
}

static int rs_on_message_complete(http_parser *p)
{
    struct front_conn *c = p->data;

    c->rs_msg_done = true;
    c->rs_keep = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings rs_settings = {
    .on_header_field = rs_on_field,
    .on_header_value = rs_on_value,
    .on_headers_complete = rs_on_headers_complete,
    .on_message_complete = rs_on_message_complete,
};

/* ---- Transactions ----------------------------------------------------- */

static void txn_finish(struct front_conn *c, struct front_txn *t, bool complete)
{
    struct rs_app *app = c->app;
    char id[RS_TXN_ID_STRLEN];
    uint64_t end = complete ? t->end : min_u64(t->end, c->sent_total);
    uint64_t us = (rs_mono_ns() - t->t_start) / 1000;

    if (!t->started)
        end = t->start = 0;
    rs_log("txn %s %s %s %d %" PRIu64 "B %" PRIu64 ".%03" PRIu64 "ms%s%s", txn_str(t->id, id), c->tuple,
           t->what, t->status, end - t->start, us / 1000, us % 1000, t->local ? " local" : "",
           complete ? "" : " aborted");
    if (!complete)
        app->stats[ST_TXN_ABORTED]++;
    if (t->hooked && app->hooks.txn_end)
        app->hooks.txn_end(app->hooks.ctx, t->id, complete);
    free(t->sync_state);
    free(t->rec);
    t->sync_state = t->rec = NULL;
}

/* Ends the transactions whose last response byte has been sent. */
static void txn_reap_sent(struct front_conn *c)
{
    while (c->q_done > 0) {
        struct front_txn *t = q_at(c, 0);

        if (t->end > c->sent_total)
            break;
        txn_finish(c, t, true);
        c->q_head = (c->q_head + 1) % FRONT_TXN_Q;
        c->q_len--;
        c->q_done--;
    }
}

/* Forgets the transactions after the current one (the upstream will not
 * answer them: it closed, or this connection ends with a local error). */
static void txn_drop_after(struct front_conn *c, uint32_t keep)
{
    while (c->q_len > keep) {
        txn_finish(c, q_at(c, c->q_len - 1), false);
        c->q_len--;
    }
}

/* Pushes the entry of the request whose head just completed, or of one
 * answered here with 'local'. */
static struct front_txn *txn_push(struct front_conn *c, int local)
{
    struct front_txn *t = q_at(c, c->q_len++);
    const char *m = http_method_str((enum http_method)c->rq.method);
    int n;

    *t = (struct front_txn){ .end = UINT64_MAX, .t_start = rs_mono_ns(), .local = local,
                             .head_req = c->rq_head && !local };
    t->id = rs_txn_id_make(c->id_ip4, c->id_port, (uint16_t)(c->id_base + c->n_req));
    n = snprintf(t->what, sizeof(t->what), "%s %s", local ? "-" : m, c->rq_what_len ? c->rq_what : "-");
    if (n >= (int)sizeof(t->what))
        memcpy(t->what + sizeof(t->what) - 4, "...", 4);
    return t;
}

/* ---- Buffers ---------------------------------------------------------- */

static void compact(uint8_t *buf, uint32_t *off, uint32_t *len)
{
    if (*off == 0)
        return;
    memmove(buf, buf + *off, *len - *off);
    *len -= *off;
    *off = 0;
}

static void out_put(struct front_conn *c, const void *data, uint32_t len)
{
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    c->gen_total += len;
}

/* Client output bytes that may go now: up to the first held response. */
static uint64_t out_limit(const struct front_conn *c)
{
    uint64_t lim = c->gen_total;

    for (uint32_t i = 0; i < c->q_len; i++) {
        const struct front_txn *t = &c->q[(c->q_head + i) % FRONT_TXN_Q];

        if (t->waiting && t->hold_from < lim)
            lim = t->hold_from;
    }
    return lim;
}

/* ---- Recorded responses (the alternate) ------------------------------- */

/* Keeps the response that came with transaction 'id's synchronous state
 * ('len' bytes, copied). */
static void rec_keep(struct app_front *f, rs_txn_id id, const uint8_t *data, uint32_t len)
{
    struct front_rec *r = &f->recs[f->rec_next++ % FRONT_RECS];
    uint8_t *copy = malloc(len);

    if (!copy)
        return;         /* a crash in its response then re-runs it */
    free(r->data);
    memcpy(copy, data, len);
    *r = (struct front_rec){ id, copy, len, rs_mono_ns() };
    f->stats[FS_RECORDED]++;
}

/* Gives 't' the recorded response of its transaction, if there is one. */
static void rec_take(struct front_conn *c, struct front_txn *t)
{
    uint64_t now = rs_mono_ns();

    for (uint32_t i = 0; i < FRONT_RECS; i++) {
        struct front_rec *r = &c->f->recs[i];

        if (!r->data || r->id != t->id)
            continue;
        if (now - r->t_ns > FRONT_REC_TTL_NS) {
            /* Stale: the client port was reused, not a failover. */
            free(r->data);
            r->data = NULL;
            continue;
        }
        t->rec = r->data;
        t->rec_len = r->len;
        r->data = NULL;
        return;
    }
}

/* Moves what fits of 't's recorded response to 'out'.  Returns false when
 * nothing could move. */
static bool rec_emit(struct front_conn *c, struct front_txn *t)
{
    char id[RS_TXN_ID_STRLEN];
    uint32_t n;

    compact(c->out, &c->out_off, &c->out_len);
    n = (uint32_t)min_u64(FRONT_OUT_CAP - c->out_len, t->rec_len - t->rec_off);
    if (n == 0 && t->rec_off < t->rec_len)
        return false;
    if (!t->started) {
        t->started = true;
        t->start = t->hold_from = c->gen_total;
        t->status = t->rec_len > 12 ? atoi((const char *)t->rec + 9) : 0;
        rs_log("from-record %s %s %uB", txn_str(t->id, id), c->tuple, t->rec_len);
    }
    out_put(c, t->rec + t->rec_off, n);
    t->rec_off += n;
    if (t->rec_off == t->rec_len) {
        t->end = c->gen_total;
        c->q_done++;
        c->f->stats[FS_RESPS]++;
        c->f->stats[FS_FROM_RECORD]++;
        free(t->rec);
        t->rec = NULL;
    }
    return true;
}

/* ---- Requests: client -> upstream ------------------------------------- */

/* Answers the next request here with 'status' (the request was malformed):
 * its turn comes after the responses before it, then the connection closes. */
static void rq_reject(struct front_conn *c, int status, const char *why)
{
    char id[RS_TXN_ID_STRLEN];
    struct front_txn *t;

    c->rq_stop = true;
    c->app->stats[ST_BAD_REQUEST]++;
    if (c->q_len == FRONT_TXN_Q) {     /* cannot happen: heads are parsed only with room */
        front_close(c, "bad request");
        return;
    }
    t = txn_push(c, status);
    rs_log("bad-request %s %s %d %s", txn_str(t->id, id), c->tuple, status, why);
}

/* Moves the completed request head, rewritten, to 'up_out'.  Returns true
 * when done, false while 'up_out' lacks room. */
static bool rq_head_flush(struct front_conn *c)
{
    char line[96 + RS_TXN_ID_STRLEN], id[RS_TXN_ID_STRLEN];
    struct front_txn *t = q_at(c, c->q_len - 1);
    int n = snprintf(line, sizeof(line), FRONT_TXN_HDR ": %s\r\n%s", txn_str(t->id, id),
                     c->rerun ? FRONT_RERUN_HDR ": 1\r\n" : "");
    uint32_t need = head_out_len(&c->rqh, (size_t)n);

    if (t->rec)
        need = 0;       /* answered from its record: the application never sees it */
    c->rq_discard = t->rec != NULL;
    compact(c->up_out, &c->uo_off, &c->uo_len);
    if (FRONT_UP_OUT_CAP - c->uo_len < need)
        return false;
    if (!t->rec)
        c->uo_len += head_build(&c->rqh, line, (size_t)n, c->up_out + c->uo_len);
    head_reset(&c->rqh);
    http_parser_pause(&c->rq, 0);
    c->rq_skip_lf = true;
    c->rq_phase = PH_BODY;
    return true;
}

/* Parses client input: request heads into 'rqh', bodies straight into
 * 'up_out'.  Returns true on progress. */
static bool rq_parse(struct front_conn *c)
{
    bool progress = false;

    while (!c->rq_stop && !c->dead) {
        uint32_t avail = c->in_len - c->in_off;
        const char *at = (const char *)c->in + c->in_off;
        enum http_errno e;
        size_t lim, n;

        if (c->rq_phase == PH_BODY && c->rqh.done) {
            if (!rq_head_flush(c))
                return progress;
            progress = true;
        }
        if (avail == 0)
            return progress;
        if (c->rq_phase != PH_BODY) {
            if (c->q_len == FRONT_TXN_Q)
                return progress;        /* pipelined too deep: wait for responses */
            lim = min_u64(avail, FRONT_HEAD_CAP - c->rqh.len);
            if (lim == 0) {
                rq_reject(c, 431, "request head too large");
                return true;
            }
            c->rqh.exec_at = at;
            c->rqh.exec_base = c->rqh.len;
            n = http_parser_execute(&c->rq, &rq_settings, at, lim);
            memcpy(c->rqh.buf + c->rqh.len, at, n);
            c->rqh.len += (uint32_t)n;
            c->in_off += (uint32_t)n;
            e = HTTP_PARSER_ERRNO(&c->rq);
            c->rq_phase = PH_HEAD;
            if (e == HPE_PAUSED && c->rqh.done) {
                if (c->in_off >= c->in_len || head_finish(c, &c->rqh, c->in[c->in_off]) < 0) {
                    c->rqh.done = false;
                    rq_reject(c, 400, "request head not understood");
                    return true;
                }
                rec_take(c, txn_push(c, 0));
                c->n_req++;
                c->app->stats[ST_REQS]++;
                c->f->stats[FS_REQS]++;
                c->rq_phase = PH_BODY;   /* head waits in 'rqh' until up_out has room */
                progress = true;
                continue;
            }
            if (e != HPE_OK) {
                int status = c->rq_reject ? c->rq_reject : e == HPE_HEADER_OVERFLOW ? 431 : 400;

                rq_reject(c, status, c->rq_reject ? app_status_text(status) : http_errno_description(e));
                return true;
            }
            progress |= n > 0;
            if (n < lim)
                return progress;
            continue;
        }
        /* Body (and the head's final LF): verbatim to the upstream. */
        compact(c->up_out, &c->uo_off, &c->uo_len);
        lim = c->rq_discard ? avail : min_u64(avail, FRONT_UP_OUT_CAP - c->uo_len + (c->rq_skip_lf ? 1 : 0));
        if (lim == 0)
            return progress;
        n = http_parser_execute(&c->rq, &rq_settings, at, lim);
        e = HTTP_PARSER_ERRNO(&c->rq);
        if (n > 0) {
            uint32_t skip = c->rq_skip_lf ? 1 : 0;

            if (!c->rq_discard) {
                memcpy(c->up_out + c->uo_len, at + skip, n - skip);
                c->uo_len += (uint32_t)(n - skip);
            }
            c->in_off += (uint32_t)n;
            c->rq_skip_lf = false;
            progress = true;
        }
        if (e == HPE_PAUSED && c->rq_msg_done) {
            http_parser_pause(&c->rq, 0);
            c->rq_msg_done = c->rq_discard = false;
            c->rq_phase = PH_IDLE;
            if (!c->rq_keep || c->rq_upgrade)
                c->rq_stop = true;      /* Connection: close, HTTP/1.0, Upgrade */
            continue;
        }
        if (e != HPE_OK) {
            /* Part of it went on already: nothing sensible can follow. */
            rs_log("error %s request body: %s", c->tuple, http_errno_description(e));
            front_close(c, "bad request body");
            return false;
        }
        if (n < lim)
            return progress;
    }
    return progress;
}

/* ---- Upstream socket -------------------------------------------------- */

static void up_close(struct front_conn *c)
{
    if (c->ufd < 0)
        return;
    rs_io_stop(&c->uio);
    close(c->ufd);
    c->ufd = -1;
    c->up_connecting = c->up_eof = false;
    c->uo_off = c->uo_len = 0;
    c->ui_off = c->ui_len = 0;
    c->rs_phase = PH_IDLE;
    c->rs_skip_lf = c->rs_msg_done = false;
    head_reset(&c->rsh);
    http_parser_init(&c->rs, HTTP_RESPONSE);
    c->rs.data = c;
}

static void local_resp(struct front_conn *c, struct front_txn *t);

/* The upstream failed ('why').  A response not yet begun is answered 502
 * and the connection closes after it; one under way cannot be finished, so
 * the client connection closes now (to resplice, like a backend crash). */
static void up_fail(struct front_conn *c, const char *why)
{
    struct front_txn *t = c->q_done < c->q_len ? q_at(c, c->q_done) : NULL;

    c->f->stats[FS_UP_ERRORS]++;
    rs_log("upstream-error %s %s: %s", c->tuple, RS_A(c->f->cfg.upstream), why);
    if (t && t->sync_state) {   /* its response will not complete: nothing to hold for */
        free(t->sync_state);
        t->sync_state = NULL;
        t->waiting = false;
    }
    if (t && t->started) {
        up_close(c);
        front_close(c, "upstream failed mid-response");
        return;
    }
    up_close(c);
    if (t) {
        t->local = 502;
        txn_drop_after(c, c->q_done + 1);
        c->rq_stop = true;
    }
}

static void up_set_events(struct front_conn *c)
{
    uint32_t ev = 0;

    if (c->ufd < 0)
        return;
    if (c->up_connecting || c->uo_off < c->uo_len)
        ev |= EPOLLOUT;
    if (!c->up_connecting && !c->up_eof && c->ui_len - c->ui_off < FRONT_UP_IN_CAP)
        ev |= EPOLLIN;
    rs_io_set(&c->uio, ev);
}

/* Starts the upstream connection.  Returns 0 or a negative errno. */
static int up_connect(struct front_conn *c)
{
    struct sockaddr_in sin = rs_addr_sin(c->f->cfg.upstream);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 && errno != EINPROGRESS) {
        int err = -errno;

        close(fd);
        return err;
    }
    if (rs_io_start(&c->app->loop, &c->uio, fd, EPOLLOUT, on_up, c) < 0) {
        int err = -errno;

        close(fd);
        return err;
    }
    c->ufd = fd;
    c->up_connecting = true;
    c->f->stats[FS_UP_CONNECTS]++;
    return 0;
}

/* Connects when requests wait and sends what the upstream takes.  Returns
 * true on progress. */
static bool up_flush(struct front_conn *c)
{
    bool progress = false;

    if (c->ufd < 0) {
        int err;

        if (c->uo_off == c->uo_len)
            return false;
        if ((err = up_connect(c)) < 0) {
            up_fail(c, strerror(-err));
            return true;
        }
    }
    if (c->up_connecting) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);

        /* Still connecting shows as ENOTCONN from getpeername. */
        if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
            up_fail(c, strerror(soerr ? soerr : errno));
            return true;
        }
        {
            struct sockaddr_in peer;
            socklen_t pl = sizeof(peer);

            if (getpeername(c->ufd, (struct sockaddr *)&peer, &pl) < 0)
                return false;
        }
        c->up_connecting = false;
        progress = true;
    }
    while (c->uo_off < c->uo_len) {
        ssize_t w = send(c->ufd, c->up_out + c->uo_off, c->uo_len - c->uo_off, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            up_fail(c, strerror(errno));
            return true;
        }
        c->uo_off += (uint32_t)w;
        progress = true;
    }
    if (c->uo_off == c->uo_len)
        c->uo_off = c->uo_len = 0;
    return progress;
}

/* Reads what fits into 'up_in'.  Returns true on progress (EOF included). */
static bool up_read(struct front_conn *c)
{
    ssize_t r;

    if (c->ufd < 0 || c->up_connecting || c->up_eof)
        return false;
    compact(c->up_in, &c->ui_off, &c->ui_len);
    if (c->ui_len == FRONT_UP_IN_CAP)
        return false;
    do {
        r = recv(c->ufd, c->up_in + c->ui_len, FRONT_UP_IN_CAP - c->ui_len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return false;
        up_fail(c, strerror(errno));
        return true;
    }
    if (r == 0) {
        c->up_eof = true;
        return true;
    }
    c->ui_len += (uint32_t)r;
    return true;
}

/* ---- Responses: upstream -> client ------------------------------------ */

/* Writes the response made here for 't' and ends the connection after it. */
static void local_resp(struct front_conn *c, struct front_txn *t)
{
    char buf[FRONT_LOCAL_ROOM];
    const char *text = app_status_text(t->local);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nServer: rs-app\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                     t->local, text, strlen(text) + 1, text);

    t->status = t->local;
    t->start = t->hold_from = c->gen_total;
    t->started = true;
    compact(c->out, &c->out_off, &c->out_len);
    out_put(c, buf, (uint32_t)n);
    t->end = c->gen_total;
    c->q_done++;
    c->closing = true;
    c->f->stats[FS_LOCAL]++;
    txn_drop_after(c, c->q_done);
}

static void state_send(struct front_conn *c, struct front_txn *t, uint32_t slen, uint32_t rlen, bool sync);

/* Reads the state file a response named and hands it to the hooks; sets
 * 't->waiting' when the response must wait for the alternate. */
static void rs_state(struct front_conn *c, struct front_txn *t)
{
    struct rs_app *app = c->app;
    struct front_head *h = &c->rsh;
    struct app_front *f = c->f;
    char id[RS_TXN_ID_STRLEN], real[PATH_MAX];
    bool sync = h->has_sync && strtol(h->sync, NULL, 10) == 1;
    const char *err = NULL;
    size_t dlen = strlen(f->state_real);
    ssize_t len = 0;
    struct stat st;
    int fd = -1;

    if (!h->has_state) {
        if (sync)
            rs_log("state %s %s: X-Resplice-Sync without X-Resplice-State (ignored)", txn_str(t->id, id),
                   c->tuple);
        return;
    }
    /* Only files in --state-dir, so a response cannot make us read (and
     * delete) anything else. */
    if (h->path_long || h->path_len == 0)
        err = "bad path";
    else if (!realpath(h->path, real))
        err = strerror(errno);
    else if (strncmp(real, f->state_real, dlen) != 0 || real[dlen] != '/')
        err = "not in --state-dir";
    else if ((fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        err = strerror(errno);
    else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        err = "not a regular file";
    else if ((uint64_t)st.st_size > RS_CTL_STATE_MAX - FRONT_BLOB_HDR)
        err = "larger than the state limit (1 MiB)";
    else if ((len = read(fd, f->blob + FRONT_BLOB_HDR, (size_t)st.st_size)) != (ssize_t)st.st_size)
        err = len < 0 ? strerror(errno) : "short read";
    if (fd >= 0)
        close(fd);
    if (!err || fd >= 0)
        unlink(real);           /* ours now, read or not */
    if (err) {
        f->stats[FS_STATE_ERRORS]++;
        rs_log("state %s %s file '%s': %s; the transaction goes unreplicated", txn_str(t->id, id),
               c->tuple, h->path_long ? "(too long)" : h->path, err);
        return;
    }
    f->stats[FS_STATES]++;
    f->stats[FS_STATE_BYTES] += (uint64_t)len;
    if (sync)
        f->stats[FS_SYNC]++;
    if (!app->hooks.txn_update)
        return;
    t->state_seq = h->seq_len ? strtoull(h->seq, NULL, 10) : 0;
    if (sync && (t->sync_state = malloc((size_t)len + 1))) {
        /* Held; it leaves with the complete response (front_sync_send). */
        memcpy(t->sync_state, f->blob + FRONT_BLOB_HDR, (size_t)len);
        t->sync_len = (uint32_t)len;
        t->waiting = true;
        return;
    }
    state_send(c, t, (uint32_t)len, 0, sync);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

/* Hands the envelope in f->blob (the state of 'slen' bytes and a response
 * of 'rlen' bytes already after the header) to the hooks. */
static void state_send(struct front_conn *c, struct front_txn *t, uint32_t slen, uint32_t rlen, bool sync)
{
    struct rs_app *app = c->app;
    uint8_t *b = c->f->blob;
    char id[RS_TXN_ID_STRLEN];
    int r;

    memcpy(b, FRONT_BLOB_MAGIC, 4);
    put_le32(b + 4, slen);
    put_le32(b + 8, rlen);
    put_le32(b + 12, (uint32_t)t->state_seq);
    put_le32(b + 16, (uint32_t)(t->state_seq >> 32));
    t->hooked = true;
    r = app->hooks.txn_update(app->hooks.ctx, t->id, b, FRONT_BLOB_HDR + slen + rlen, sync);
    t->waiting = r == RS_APP_HOOK_WAIT;
    if (r < 0)
        rs_log("state-update-failed %s %s %s (the application already ran it: answered anyway)",
               txn_str(t->id, id), c->tuple, strerror(-r));
}

/* Sends the held synchronous update of 't' with its response, which is
 * complete and not yet sent when 'with_resp'; without it (the response
 * does not fit in 'out' or in a state message) when not: a crash in the
 * middle of that response then re-runs the request on the alternate. */
static void front_sync_send(struct front_conn *c, struct front_txn *t, bool with_resp)
{
    struct app_front *f = c->f;
    uint64_t rlen = with_resp ? t->end - t->hold_from : 0;
    char id[RS_TXN_ID_STRLEN];

    if (FRONT_BLOB_HDR + (uint64_t)t->sync_len + rlen > RS_CTL_STATE_MAX)
        rlen = 0;
    if (rlen)
        memcpy(f->blob + FRONT_BLOB_HDR + t->sync_len, c->out + c->out_off + (t->hold_from - c->sent_total),
               (size_t)rlen);
    else
        rs_log("state %s %s: response not carried with the synchronous state (%s)", txn_str(t->id, id),
               c->tuple, with_resp ? "state + response over 1 MiB" : "response larger than the hold buffer");
    f->stats[rlen ? FS_RESP_CARRIED : FS_RESP_NOT_CARRIED]++;
    memcpy(f->blob + FRONT_BLOB_HDR, t->sync_state, t->sync_len);
    free(t->sync_state);
    t->sync_state = NULL;
    state_send(c, t, t->sync_len, (uint32_t)rlen, true);
}

/* Moves the completed response head, rewritten, to 'out'.  Returns true
 * when done, false while 'out' lacks room. */
static bool rs_head_flush(struct front_conn *c, struct front_txn *t)
{
    uint32_t need = head_out_len(&c->rsh, 0);

    compact(c->out, &c->out_off, &c->out_len);
    if (FRONT_OUT_CAP - c->out_len < need)
        return false;
    if (!t->started) {
        t->started = true;
        t->start = c->gen_total;
    }
    c->f->stats[FS_STRIPPED] += c->rsh.n_cuts;
    c->out_len += head_build(&c->rsh, "", 0, c->out + c->out_len);
    c->gen_total += need;
    head_reset(&c->rsh);
    http_parser_pause(&c->rs, 0);
    c->rs_skip_lf = true;
    c->rs_phase = PH_BODY;
    return true;
}

/* The current response is complete. */
static void rs_done(struct front_conn *c, struct front_txn *t)
{
    http_parser_pause(&c->rs, 0);
    c->rs_msg_done = false;
    c->rs_phase = PH_IDLE;
    if (c->rs_interim)
        return;                 /* 100 Continue & co: the final response follows */
    t->end = c->gen_total;
    c->q_done++;
    c->f->stats[FS_RESPS]++;
    if (t->sync_state)
        front_sync_send(c, t, true);
    if (!c->rs_keep) {
        /* The upstream closes after this response (Connection: close, or
         * HTTP/1.0): so does the client connection.  Requests pipelined
         * behind it were never answered; the client retries them. */
        txn_drop_after(c, c->q_done);
        c->rq_stop = c->closing = true;
        up_close(c);
    }
}

/* Parses upstream input into 'out'.  Returns true on progress. */
static bool rs_parse(struct front_conn *c)
{
    bool progress = false;

    while (!c->dead) {
        struct front_txn *t = c->q_done < c->q_len ? q_at(c, c->q_done) : NULL;
        uint32_t avail = c->ui_len - c->ui_off;
        const char *at = (const char *)c->up_in + c->ui_off;
        enum http_errno e;
        size_t lim, n;

        if (t && t->local) {
            compact(c->out, &c->out_off, &c->out_len);
            if (FRONT_OUT_CAP - c->out_len < FRONT_LOCAL_ROOM)
                return progress;
            local_resp(c, t);
            return true;
        }
        if (t && t->rec) {
            if (!rec_emit(c, t))
                return progress;
            progress = true;
            continue;
        }
        if (!t) {
            if (avail > 0) {
                rs_log("upstream-error %s: %u response bytes nobody asked for", c->tuple, avail);
                up_close(c);
                return true;
            }
            if (c->up_eof) {    /* an idle keep-alive connection closed: reconnect when needed */
                up_close(c);
                return true;
            }
            return progress;
        }
        if (c->rs_phase == PH_BODY && c->rsh.done) {
            if (!rs_head_flush(c, t)) {
                if (t->sync_state)
                    front_sync_send(c, t, false);
                return progress;
            }
            progress = true;
        }
        if (avail == 0) {
            if (!c->up_eof)
                return progress;
            if (c->rs_phase == PH_BODY && !c->rs_skip_lf) {
                /* Close-delimited body: EOF ends it. */
                http_parser_execute(&c->rs, &rs_settings, NULL, 0);
                if (HTTP_PARSER_ERRNO(&c->rs) == HPE_PAUSED && c->rs_msg_done) {
                    c->rs_keep = false;
                    rs_done(c, t);
                    return true;
                }
            }
            up_fail(c, c->rs_phase == PH_BODY ? "closed mid-response" : "closed before responding");
            return true;
        }
        if (c->rs_phase != PH_BODY) {
            lim = min_u64(avail, FRONT_HEAD_CAP - c->rsh.len);
            if (lim == 0) {
                up_fail(c, "response head too large");
                return true;
            }
            c->rsh.exec_at = at;
            c->rsh.exec_base = c->rsh.len;
            n = http_parser_execute(&c->rs, &rs_settings, at, lim);
            memcpy(c->rsh.buf + c->rsh.len, at, n);
            c->rsh.len += (uint32_t)n;
            c->ui_off += (uint32_t)n;
            c->rs_phase = PH_HEAD;
            e = HTTP_PARSER_ERRNO(&c->rs);
            if (e == HPE_PAUSED && c->rsh.done) {
                if (c->ui_off >= c->ui_len || head_finish(c, &c->rsh, c->up_in[c->ui_off]) < 0) {
                    up_fail(c, "response head not understood");
                    return true;
                }
                if (c->rs.status_code == 101) {
                    up_fail(c, "protocol upgrade is not supported");
                    return true;
                }
                if (!c->rs_interim) {
                    /* Every earlier byte is in 'out': the head goes here. */
                    t->hold_from = c->gen_total;
                    t->status = c->rs.status_code;
                    rs_state(c, t);
                }
                c->rs_phase = PH_BODY;  /* head waits in 'rsh' until 'out' has room */
                progress = true;
                continue;
            }
            if (e != HPE_OK) {
                up_fail(c, http_errno_description(e));
                return true;
            }
            progress |= n > 0;
            if (n < lim)
                return progress;
            continue;
        }
        compact(c->out, &c->out_off, &c->out_len);
        lim = min_u64(avail, FRONT_OUT_CAP - c->out_len + (c->rs_skip_lf ? 1 : 0));
        if (lim == 0) {
            if (t->sync_state)
                front_sync_send(c, t, false);
            return progress;    /* 'out' full (maybe held): back-pressure on the upstream */
        }
        n = http_parser_execute(&c->rs, &rs_settings, at, lim);
        e = HTTP_PARSER_ERRNO(&c->rs);
        if (n > 0) {
            uint32_t skip = c->rs_skip_lf ? 1 : 0;

            out_put(c, at + skip, (uint32_t)(n - skip));
            c->ui_off += (uint32_t)n;
            c->rs_skip_lf = false;
            progress = true;
        }
        if (e == HPE_PAUSED && c->rs_msg_done) {
            rs_done(c, t);
            continue;
        }
        if (e != HPE_OK) {
            up_fail(c, http_errno_description(e));
            return true;
        }
        if (n < lim)
            return progress;
    }
    return progress;
}

/* ---- Client socket ---------------------------------------------------- */

static bool client_read(struct front_conn *c)
{
    ssize_t r;

    if (c->peer_eof || c->rq_stop)
        return false;
    compact(c->in, &c->in_off, &c->in_len);
    if (c->in_len == FRONT_IN_CAP)
        return false;
    do {
        r = recv(c->fd, c->in + c->in_len, FRONT_IN_CAP - c->in_len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            front_close(c, strerror(errno));
        return false;
    }
    if (r == 0) {
        c->peer_eof = true;
        return true;
    }
    c->in_len += (uint32_t)r;
    c->recv_total += (uint64_t)r;
    c->f->stats[FS_BYTES_IN] += (uint64_t)r;
    c->app->stats[ST_BYTES_IN] += (uint64_t)r;
    return true;
}

/* --crash-at: the output position where this connection's process dies,
 * or UINT64_MAX. */
static uint64_t crash_point(struct front_conn *c, struct front_txn **which)
{
    const struct app_front_cfg *cfg = &c->f->cfg;

    if (cfg->crash_num < 0 || c->f->crashed)
        return UINT64_MAX;
    for (uint32_t i = 0; i < c->q_len; i++) {
        struct front_txn *t = &c->q[(c->q_head + i) % FRONT_TXN_Q];
        uint64_t at;

        if (rs_txn_id_num(t->id) != (uint16_t)cfg->crash_num || !t->started)
            continue;
        at = t->hold_from + cfg->crash_off;
        if (t->end != UINT64_MAX && at > t->end)
            at = t->end;
        *which = t;
        return at;
    }
    return UINT64_MAX;
}

/* Dies as a crashed backend does, leaving the response bytes it holds of
 * 't' in state_dir/crash-<txn>.resp. */
static void crash_now(struct front_conn *c, struct front_txn *t)
{
    char id[RS_TXN_ID_STRLEN], path[PATH_MAX + 64];
    uint64_t from = t->hold_from > c->sent_total ? t->hold_from : c->sent_total;
    uint64_t to = t->end == UINT64_MAX ? c->gen_total : t->end;
    int fd;

    c->f->crashed = true;
    snprintf(path, sizeof(path), "%s/crash-%s.resp", c->f->state_real, txn_str(t->id, id));
    for (char *p = strrchr(path, '/'); *p; p++)
        if (*p == ':' || *p == '#')
            *p = '_';
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        /* The bytes already sent are gone from 'out'; the file starts at 'from'. */
        ssize_t w = write(fd, c->out + c->out_off + (from - c->sent_total), (size_t)(to - from));

        (void)w;
        close(fd);
    }
    rs_log("crash-at %s %s: SIGKILL after %" PRIu64 "B of the response (offset file %s from byte %" PRIu64 ")",
           id, c->tuple, c->sent_total - t->hold_from, path, from - t->hold_from);
    fflush(NULL);
    raise(SIGKILL);
}

static bool client_flush(struct front_conn *c, uint64_t *budget)
{
    struct front_txn *victim = NULL;
    uint64_t lim = out_limit(c), crash = crash_point(c, &victim);
    bool progress = false;

    if (crash <= c->sent_total)
        crash_now(c, victim);
    lim = min_u64(lim, crash);
    while (c->sent_total < lim && *budget > 0) {
        size_t n = (size_t)min_u64(lim - c->sent_total, *budget);
        ssize_t w = send(c->fd, c->out + c->out_off, n, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            front_close(c, strerror(errno));
            return false;
        }
        c->out_off += (uint32_t)w;
        c->sent_total += (uint64_t)w;
        c->f->stats[FS_BYTES_OUT] += (uint64_t)w;
        c->app->stats[ST_BYTES_OUT] += (uint64_t)w;
        *budget -= (uint64_t)w;
        progress = true;
        if (c->sent_total == crash)
            crash_now(c, victim);
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    txn_reap_sent(c);
    return progress;
}

/* Arms the linger timer.  Returns 0. */
static int conn_timer(struct front_conn *c, uint64_t ns)
{
    rs_timer_after(&c->app->loop, &c->timer, ns);
    return 0;
}

/* Write side shut: drop input until the client closes, so unread request
 * bytes do not make the kernel reset the connection under the last response. */
static void conn_drain(struct front_conn *c)
{
    char sink[4096];

    for (int i = 0; i < 16; i++) {
        ssize_t r = recv(c->fd, sink, sizeof(sink), 0);

        if (r > 0 || (r < 0 && errno == EINTR))
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        front_close(c, r == 0 ? "closed" : "drain error");
        return;
    }
}

static void conn_set_events(struct front_conn *c)
{
    uint32_t ev = 0;

    if (c->draining || (!c->peer_eof && !c->rq_stop && c->in_len - c->in_off < FRONT_IN_CAP))
        ev |= EPOLLIN;
    if (c->sent_total < out_limit(c))
        ev |= EPOLLOUT;
    if (rs_io_set(&c->sio, ev) < 0) {
        front_close(c, "epoll failed");
        return;
    }
    up_set_events(c);
}

static void front_service(struct front_conn *c)
{
    uint64_t budget = FRONT_TURN_BYTES;

    if (c->dead)
        return;
    if (c->draining) {
        conn_drain(c);
        return;
    }
    for (int turn = 0; turn < 256; turn++) {
        bool progress = false;

        progress |= client_read(c);
        if (!c->dead)
            progress |= rq_parse(c);
        if (!c->dead)
            progress |= up_flush(c);
        if (!c->dead)
            progress |= up_read(c);
        if (!c->dead)
            progress |= rs_parse(c);
        if (!c->dead)
            progress |= client_flush(c, &budget);
        if (c->dead)
            return;
        if (!progress || budget == 0)
            break;
    }
    if (c->out_off == c->out_len && c->q_len == 0) {
        bool in_done = c->in_off == c->in_len && c->rq_phase != PH_BODY;

        if ((c->closing || c->rq_stop) && c->peer_eof) {
            front_close(c, "done");
            return;
        }
        if (c->closing || c->rq_stop) {
            c->draining = true;
            up_close(c);
            if (shutdown(c->fd, SHUT_WR) < 0 || conn_timer(c, FRONT_LINGER_NS) < 0) {
                front_close(c, "shutdown failed");
                return;
            }
            conn_drain(c);
            if (c->dead)
                return;
        } else if (c->peer_eof && in_done) {
            front_close(c, "peer closed");
            return;
        }
    } else if (c->peer_eof && c->in_off == c->in_len && c->rq_phase != PH_IDLE && !c->rqh.done) {
        /* The client left in the middle of a request: it cannot complete. */
        front_close(c, "peer closed mid-request");
        return;
    }
    conn_set_events(c);
}

/* ---- Open and close --------------------------------------------------- */

int app_front_conn_open(struct rs_app *app, int fd, const struct sockaddr_in *peer)
{
    struct app_front *f = app->front;
    struct front_conn *c = calloc(1, sizeof(*c));
    struct rs_addr pa = rs_addr_of_sin(peer);

    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->app = app;
    c->f = f;
    c->fd = fd;
    c->ufd = -1;
    rs_timer_init(&c->timer, on_linger, c);
    app_conn_identity(app, fd, pa, c->tuple, sizeof(c->tuple), &c->id_ip4, &c->id_port, &c->id_base, &c->rerun);
    http_parser_init(&c->rq, HTTP_REQUEST);
    c->rq.data = c;
    http_parser_init(&c->rs, HTTP_RESPONSE);
    c->rs.data = c;

    if (rs_io_start(&app->loop, &c->sio, fd, EPOLLIN, on_sock, c) < 0) {
        int err = -errno;

        close(fd);
        free(c);
        return err;
    }
    c->next = f->conns;
    if (f->conns)
        f->conns->prev = c;
    f->conns = c;
    f->conns_open++;
    app->conns_open++;
    app->stats[ST_CONNS_TOTAL]++;
    f->stats[FS_CONNS]++;
    rs_log("conn-open %s", c->tuple);
    return 0;
}

static void front_close(struct front_conn *c, const char *why)
{
    struct app_front *f = c->f;

    if (c->dead)
        return;
    c->dead = true;
    txn_reap_sent(c);
    while (c->q_len > 0) {
        txn_finish(c, q_at(c, 0), false);
        c->q_head = (c->q_head + 1) % FRONT_TXN_Q;
        c->q_len--;
    }
    c->q_done = 0;
    rs_log("conn-close %s reqs=%u in=%" PRIu64 "B out=%" PRIu64 "B %s", c->tuple, c->n_req,
           c->recv_total, c->sent_total, why);
    up_close(c);
    rs_io_stop(&c->sio);
    rs_timer_stop(&c->app->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        f->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    /* Freed at the end of the loop turn: callers up the stack may still hold it. */
    c->next = f->dead;
    c->prev = NULL;
    f->dead = c;
    f->conns_open--;
    c->app->conns_open--;
}

void app_front_reap(struct rs_app *app)
{
    struct app_front *f = app->front;

    while (f && f->dead) {
        struct front_conn *c = f->dead;

        f->dead = c->next;
        free(c);
    }
}

int app_front_resume(struct rs_app *app, rs_txn_id id, int err)
{
    for (struct front_conn *c = app->front->conns; c; c = c->next) {
        for (uint32_t i = 0; i < c->q_len; i++) {
            struct front_txn *t = q_at(c, i);
            char ids[RS_TXN_ID_STRLEN];

            if (!t->waiting || t->id != id)
                continue;
            t->waiting = false;
            if (err < 0)        /* the application ran it: its response goes regardless */
                rs_log("state-update-failed %s %s %s (answered without a standby copy)",
                       txn_str(id, ids), c->tuple, strerror(-err));
            front_service(c);
            return 0;
        }
    }
    return -ENOENT;
}

/* ---- Apply (the alternate) -------------------------------------------- */

static void apply_finish(struct app_front *f, struct rs_app *app)
{
    char ids[RS_TXN_ID_STRLEN], how[48];
    uint64_t us = (rs_mono_ns() - f->apply_t0) / 1000;
    int st = 0, status;
    pid_t r;

    do {
        r = waitpid(f->apply_pid, &st, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return;                 /* not yet */
    if (r < 0)
        status = -ECHILD;
    else if (f->apply_timed_out)
        status = -ETIMEDOUT;
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        status = 0;
    else
        status = -EIO;
    if (r > 0 && WIFEXITED(st))
        snprintf(how, sizeof(how), "exit=%d", WEXITSTATUS(st));
    else if (r > 0 && WIFSIGNALED(st))
        snprintf(how, sizeof(how), "signal=%d", WTERMSIG(st));
    else
        snprintf(how, sizeof(how), "lost");
    rs_io_stop(&f->apply_io);
    close(f->apply_pidfd);
    rs_timer_stop(&app->loop, &f->apply_timer);
    unlink(f->apply_path);
    f->apply_pidfd = -1;
    f->apply_pid = 0;
    f->stats[status ? FS_APPLY_ERRORS : FS_APPLIES]++;
    rs_log("state-apply %s cmd %s %uB %" PRIu64 ".%03" PRIu64 "ms%s", txn_str(f->apply_txn, ids), how,
           f->apply_len, us / 1000, us % 1000, f->apply_timed_out ? " timed out" : "");
    app_xfer_apply_done(app, f->apply_cookie, status);
}

/* Writes 'len' bytes of 'data' to a new file made from template 'tmpl'
 * (mkostemp: the name is left there) with 'mode'.  Returns 0, or -errno
 * and no file. */
static int write_temp(char *tmpl, const void *data, size_t len, mode_t mode)
{
    size_t off = 0;
    int fd = mkostemp(tmpl, O_CLOEXEC), err;

    if (fd < 0)
        return -errno;
    while (off < len) {
        ssize_t w = write(fd, (const uint8_t *)data + off, len - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            err = -errno;
            close(fd);
            unlink(tmpl);
            return err;
        }
        off += (size_t)w;
    }
    if (fchmod(fd, mode) < 0 || close(fd) < 0) {
        err = -errno;
        unlink(tmpl);
        return err;
    }
    return 0;
}

/* --apply-file: the state is the application's whole state file; one
 * rename installs it, unless a newer one ('seq', X-Resplice-State-Seq) is
 * already there (states of different client connections can be logged,
 * hence applied, out of the order they were taken in).  Returns 0 or -errno. */
static int apply_file(struct app_front *f, rs_txn_id id, const void *state, size_t len, uint64_t seq)
{
    char tmp[PATH_MAX + 16], ids[RS_TXN_ID_STRLEN];
    struct stat st;
    int err;

    txn_str(id, ids);
    if (seq && seq < f->installed_seq) {
        rs_log("state-apply %s file %zuB seq=%" PRIu64 " older than the installed %" PRIu64 ": skipped", ids,
               len, seq, f->installed_seq);
        return 0;
    }
    snprintf(tmp, sizeof(tmp), "%s.rs-XXXXXX", f->cfg.apply_file);
    err = write_temp(tmp, state, len, stat(f->cfg.apply_file, &st) == 0 ? st.st_mode & 07777 : 0640);
    if (err == 0 && rename(tmp, f->cfg.apply_file) < 0) {
        err = -errno;
        unlink(tmp);
    }
    if (err < 0) {
        f->stats[FS_APPLY_ERRORS]++;
        rs_log("state-apply %s file %s: %s", ids, f->cfg.apply_file, strerror(-err));
        return err;
    }
    if (seq)
        f->installed_seq = seq;
    f->stats[FS_APPLIES]++;
    rs_log("state-apply %s file %zuB seq=%" PRIu64, ids, len, seq);
    return 0;
}

int app_front_apply(struct rs_app *app, rs_txn_id id, const void *state, size_t len, uint64_t cookie)
{
    struct app_front *f = app->front;
    char ids[RS_TXN_ID_STRLEN], *cmd = NULL;
    char *argv[6];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dfl;
    uint64_t seq = 0;
    pid_t pid;
    int err;

    if (!f->cfg.apply_cmd && !f->cfg.apply_file)
        return -EOPNOTSUPP;
    if (f->apply_pid > 0)
        return -EBUSY;
    if (len >= FRONT_BLOB_HDR && memcmp(state, FRONT_BLOB_MAGIC, 4) == 0) {
        const uint8_t *b = state;
        uint32_t slen = get_le32(b + 4), rlen = get_le32(b + 8);

        if ((uint64_t)FRONT_BLOB_HDR + slen + rlen != len) {
            rs_log("state-apply %s: bad envelope (%zuB, state %u, response %u)", txn_str(id, ids), len,
                   slen, rlen);
            return -EINVAL;
        }
        seq = get_le64(b + 12);
        if (rlen)
            rec_keep(f, id, b + FRONT_BLOB_HDR + slen, rlen);
        if (slen == 0)
            return 0;
        state = b + FRONT_BLOB_HDR;
        len = slen;
    }
    if (f->cfg.apply_file)
        return apply_file(f, id, state, len, seq);
    snprintf(f->apply_path, sizeof(f->apply_path), "%s/rs-apply-XXXXXX", f->state_real);
    if ((err = write_temp(f->apply_path, state, len, 0600)) < 0)
        return err;
    /* sh -c 'CMD "$@"' rs-apply FILE TXN: the blob and the ID are CMD's
     * last two arguments ($1 and $2 inside a script). */
    if (asprintf(&cmd, "%s \"$@\"", f->cfg.apply_cmd) < 0) {
        unlink(f->apply_path);
        return -ENOMEM;
    }
    argv[0] = "/bin/sh";
    argv[1] = "-c";
    argv[2] = cmd;
    argv[3] = "rs-apply";
    argv[4] = f->apply_path;
    argv[5] = (char *)txn_str(id, ids);
    {
        char *full[7] = { argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], NULL };

        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);    /* output to our log */
        posix_spawnattr_init(&attr);
        sigemptyset(&none);
        sigemptyset(&dfl);
        sigaddset(&dfl, SIGPIPE);
        posix_spawnattr_setsigmask(&attr, &none);       /* we block SIGTERM & co for signalfd */
        posix_spawnattr_setsigdefault(&attr, &dfl);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        err = -posix_spawn(&pid, "/bin/sh", &fa, &attr, full, environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
    }
    free(cmd);
    if (err < 0) {
        unlink(f->apply_path);
        return err;
    }
    f->apply_pid = pid;
    f->apply_txn = id;
    f->apply_len = (uint32_t)len;
    f->apply_cookie = cookie;
    f->apply_t0 = rs_mono_ns();
    f->apply_timed_out = false;
    f->apply_pidfd = pidfd_open(pid, 0);
    if (f->apply_pidfd < 0 || rs_io_start(&app->loop, &f->apply_io, f->apply_pidfd, EPOLLIN, on_apply_end, app) < 0) {
        /* Cannot watch it: wait for it here (rare; pidfds exist since 5.3). */
        int st;

        rs_log("state-apply %s: cannot watch the command (%s): waiting for it", ids, strerror(errno));
        if (f->apply_pidfd >= 0)
            close(f->apply_pidfd);
        f->apply_pidfd = -1;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        unlink(f->apply_path);
        f->apply_pid = 0;
        f->stats[WIFEXITED(st) && WEXITSTATUS(st) == 0 ? FS_APPLIES : FS_APPLY_ERRORS]++;
        return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
    }
    rs_timer_after(&app->loop, &f->apply_timer, f->cfg.apply_timeout_ns);
    rs_log("state-apply %s start %zuB file=%s", ids, len, f->apply_path);
    return 1;
}

/* ---- Events, set-up, stats -------------------------------------------- */

static void on_apply_end(struct rs_io *io, uint32_t events)
{
    struct rs_app *app = io->ctx;

    (void)events;
    if (app->front->apply_pid > 0)
        apply_finish(app->front, app);
}

static void on_apply_timeout(struct rs_timer *t)
{
    struct app_front *f = t->ctx;

    if (f->apply_pid > 0) {
        f->apply_timed_out = true;
        rs_log("state-apply: command ran past --apply-timeout: killing it");
        kill(f->apply_pid, SIGKILL);
    }
}

static void on_linger(struct rs_timer *t)
{
    struct front_conn *c = t->ctx;

    if (!c->dead && c->draining)
        front_close(c, "linger timeout");
}

static void on_sock(struct rs_io *io, uint32_t events)
{
    struct front_conn *c = io->ctx;

    if (c->dead)
        return;
    if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN)) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);

        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        front_close(c, soerr ? strerror(soerr) : "hangup");
        return;
    }
    front_service(c);
}

static void on_up(struct rs_io *io, uint32_t events)
{
    struct front_conn *c = io->ctx;

    (void)events;
    if (!c->dead)
        front_service(c);
}

int app_front_init(struct rs_app *app, const struct app_front_cfg *cfg)
{
    struct app_front *f = calloc(1, sizeof(*f));

    if (!f)
        return -ENOMEM;
    f->cfg = *cfg;
    if (!realpath(cfg->state_dir, f->state_real)) {
        int err = -errno;

        free(f);
        return err;
    }
    f->blob = malloc(RS_CTL_STATE_MAX);
    f->apply_pidfd = -1;
    if (!f->blob) {
        free(f);
        return -ENOMEM;
    }
    rs_timer_init(&f->apply_timer, on_apply_timeout, f);
    app->front = f;
    return 0;
}

void app_front_stats(struct rs_app *app, FILE *out)
{
    struct app_front *f = app->front;

    if (!f)
        return;
    fprintf(out, " front_conns_open=%" PRIu64, f->conns_open);
    for (int i = 0; i < FS_MAX; i++)
        fprintf(out, " %s=%" PRIu64, fs_names[i], f->stats[i]);
}

void app_front_close(struct rs_app *app)
{
    struct app_front *f = app->front;

    if (!f)
        return;
    while (f->conns)
        front_close(f->conns, "shutdown");
    app_front_reap(app);
    if (f->apply_pid > 0) {
        kill(f->apply_pid, SIGKILL);
        while (waitpid(f->apply_pid, NULL, 0) < 0 && errno == EINTR)
            ;
        unlink(f->apply_path);
    }
    rs_io_stop(&f->apply_io);
    rs_timer_stop(&app->loop, &f->apply_timer);
    if (f->apply_pidfd >= 0)
        close(f->apply_pidfd);
    free(f->blob);
    free(f);
    app->front = NULL;
}
