/* rs-auxlog: the aux logger of DESIGN.md.  Sits between the web backends
 * and the mail store, relays IMAP and SMTP, records each marked
 * conversation against its web transaction, and answers a re-run of that
 * conversation by another backend (after a failover) from the record, so
 * that an email is sent once and stored once.  One event loop (common/loop.h). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auxlog.h"
#include "parse.h"

struct listener {
    struct auxlog *a;
    struct rs_io io;
    enum rs_aux_proto proto;
    struct rs_addr laddr, up;
    int fd;
};

struct auxlog {
    struct listener ls[2];
    unsigned n_ls;
    uint64_t ttl_ns, max_bytes;
    struct rs_loop loop;
    struct rs_timer expire;
    struct aux_conv *convs;
    unsigned n_convs;
    uint64_t next_id;
    struct aux_record *rtab[AUX_HASH_BUCKETS];
    struct aux_ordinal *otab[AUX_HASH_BUCKETS];
    struct aux_record *oldest, *newest;
    uint64_t n_records, record_bytes;
    /* stats */
    uint64_t conns, live, unmarked, replayed, caught_up, diverged, expired, evicted, stale, errors, refused;
};

static const char *proto_name(enum rs_aux_proto p)
{
    return p == RS_AUX_IMAP ? "imap" : "smtp";
}

#define TXN_S(id) txn_str((id), (char[RS_TXN_ID_STRLEN]){ 0 })
static const char *txn_str(rs_txn_id id, char *buf)
{
    rs_txn_id_format(id, buf, RS_TXN_ID_STRLEN);
    return buf;
}

/* ---- Buffers ------------------------------------------------------------ */

/* Appends 'n' bytes.  Returns 0 or -ENOMEM. */
static int buf_add(struct aux_buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            return -ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_drop(struct aux_buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    /* A big unit leaves a big buffer behind; give it back once drained. */
    if (b->len == 0 && b->cap > (1u << 20)) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static void buf_free(struct aux_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

/* ---- Records ------------------------------------------------------------ */

static unsigned key_hash(enum rs_aux_proto p, rs_txn_id txn, uint64_t extra)
{
    uint64_t h = (txn ^ (extra * 0x9e3779b97f4a7c15ull) ^ (uint64_t)p) * 0xff51afd7ed558ccdull;
    return (unsigned)(h >> 40) % AUX_HASH_BUCKETS;
}

static void unit_free(struct aux_unit *u)
{
    free(u->c);
    free(u->r);
    memset(u, 0, sizeof(*u));
}

/* Drops units from 'n' on. */
static void record_truncate(struct auxlog *a, struct aux_record *r, size_t n)
{
    while (r->n > n) {
        struct aux_unit *u = &r->u[--r->n];
        size_t b = u->clen + u->rlen;
        r->bytes -= b;
        if (r->keyed)
            a->record_bytes -= b;
        unit_free(u);
    }
}

static void record_free(struct aux_record *r)
{
    for (size_t i = 0; i < r->n; i++)
        unit_free(&r->u[i]);
    free(r->u);
    free(r);
}

static void record_put(struct aux_record *r)
{
    if (r && --r->refs == 0 && (r->dead || !r->keyed))
        record_free(r);
}

static struct aux_record *record_new(enum rs_aux_proto proto, uint32_t owner)
{
    struct aux_record *r = calloc(1, sizeof(*r));
    if (r) {
        r->proto = proto;
        r->owner_ip = owner;
        r->refs = 1;
        r->touched_ns = rs_mono_ns();
    }
    return r;
}

static void conv_stop_recording(struct auxlog *a, struct aux_conv *c, const char *why);

/* Takes 'r' out of the table (expired, evicted or replaced).  Its writer
 * stops recording; readers keep their reference until they let go. */
static void record_unkey(struct auxlog *a, struct aux_record *r)
{
    struct aux_record **pp = &a->rtab[key_hash(r->proto, r->txn, r->ordinal)];

    while (*pp && *pp != r)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = r->hnext;
    if (r->older)
        r->older->newer = r->newer;
    else
        a->oldest = r->newer;
    if (r->newer)
        r->newer->older = r->older;
    else
        a->newest = r->older;
    r->older = r->newer = r->hnext = NULL;
    a->n_records--;
    a->record_bytes -= r->bytes;
    r->keyed = false;
    r->dead = true;
    if (r->writer)
        conv_stop_recording(a, r->writer, "record dropped");
    if (r->refs == 0)
        record_free(r);
}

static void record_key(struct auxlog *a, struct aux_record *r, rs_txn_id txn, unsigned ordinal)
{
    unsigned h = key_hash(r->proto, txn, ordinal);

    r->txn = txn;
    r->ordinal = ordinal;
    r->keyed = true;
    r->hnext = a->rtab[h];
    a->rtab[h] = r;
    r->older = a->newest;
    r->newer = NULL;
    if (a->newest)
        a->newest->newer = r;
    else
        a->oldest = r;
    a->newest = r;
    a->n_records++;
    a->record_bytes += r->bytes;
}

static struct aux_record *record_find(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, unsigned ord)
{
    for (struct aux_record *r = a->rtab[key_hash(p, txn, ord)]; r; r = r->hnext)
        if (r->proto == p && r->txn == txn && r->ordinal == ord)
            return r;
    return NULL;
}

/* Keeps the table under --max-bytes by dropping the oldest records. */
static void records_evict(struct auxlog *a)
{
    while (a->record_bytes > a->max_bytes && a->oldest) {
        struct aux_record *r = a->oldest;
        rs_log("evict %s txn=%s ordinal=%u bytes=%zu (record_bytes=%" PRIu64 " > max %" PRIu64 ")",
               proto_name(r->proto), TXN_S(r->txn), r->ordinal, r->bytes, a->record_bytes, a->max_bytes);
        a->evicted++;
        record_unkey(a, r);
    }
}

static void records_expire(struct auxlog *a)
{
    uint64_t now = rs_mono_ns();

    for (struct aux_record *r = a->oldest, *next; r; r = next) {
        next = r->newer;
        if (r->writer || now - r->touched_ns < a->ttl_ns)
            continue;
        a->expired++;
        record_unkey(a, r);
    }
    for (unsigned b = 0; b < AUX_HASH_BUCKETS; b++)
        for (struct aux_ordinal **pp = &a->otab[b]; *pp;) {
            struct aux_ordinal *o = *pp;
            if (now - o->touched_ns >= a->ttl_ns) {
                *pp = o->hnext;
                free(o);
            } else {
                pp = &o->hnext;
            }
        }
}

/* Returns the ordinal of 'ip's next conversation for 'txn', or -ENOMEM. */
static int ordinal_next(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, uint32_t ip)
{
    unsigned h = key_hash(p, txn, ip);
    struct aux_ordinal *o;

    for (o = a->otab[h]; o; o = o->hnext)
        if (o->proto == p && o->txn == txn && o->ip == ip)
            break;
    if (!o) {
        if (!(o = calloc(1, sizeof(*o))))
            return -ENOMEM;
        o->proto = p;
        o->txn = txn;
        o->ip = ip;
        o->hnext = a->otab[h];
        a->otab[h] = o;
    }
    o->touched_ns = rs_mono_ns();
    return (int)o->count++;
}

/* Appends a unit with client bytes 'c' and no reply yet.  Returns 0 or -ENOMEM. */
static int record_push(struct auxlog *a, struct aux_record *r, const uint8_t *c, size_t clen,
                       const struct rs_aux_cmd *cmd)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct aux_unit *u = realloc(r->u, cap * sizeof(*u));
        if (!u)
            return -ENOMEM;
        r->u = u;
        r->cap = cap;
    }
    struct aux_unit *u = &r->u[r->n];
    memset(u, 0, sizeof(*u));
    if (clen && !(u->c = dup_bytes(c, clen)))
        return -ENOMEM;
    u->clen = clen;
    if (cmd)
        u->sum.cmd = *cmd;
    r->n++;
    r->bytes += clen;
    r->touched_ns = rs_mono_ns();
    if (r->keyed)
        a->record_bytes += clen;
    return 0;
}

/* Appends 'n' more client bytes to unit 'i' (a SASL response, IDLE's DONE). */
static int record_extend(struct auxlog *a, struct aux_record *r, size_t i, const uint8_t *p, size_t n)
{
    struct aux_unit *u = &r->u[i];
    uint8_t *q = realloc(u->c, u->clen + n);
    if (!q)
        return -ENOMEM;
    memcpy(q + u->clen, p, n);
    u->c = q;
    u->clen += n;
    r->bytes += n;
    if (r->keyed)
        a->record_bytes += n;
    return 0;
}

static int record_reply(struct auxlog *a, struct aux_record *r, size_t i, const uint8_t *p, size_t n)
{
    struct aux_unit *u = &r->u[i];
    if (!(u->r = dup_bytes(p, n)))
        return -ENOMEM;
    u->rlen = n;
    rs_aux_reply_parse(r->proto, p, n, &u->sum.reply);
    u->sum.complete = true;
    r->bytes += n;
    r->touched_ns = rs_mono_ns();
    if (r->keyed)
        a->record_bytes += n;
    return 0;
}

/* ---- Conversations: I/O ------------------------------------------------- */

static void conv_arm(struct auxlog *a, struct aux_conv *c)
{
    uint32_t ce = 0, ue = 0;
    bool replay = c->mode == AUX_REPLAY;

    /* Read a side only while what it feeds is not backed up. */
    if (!c->c_eof && (replay ? c->cout.len : c->uout.len) < AUX_HIGH_WATER)
        ce |= EPOLLIN;
    if (c->cout.len)
        ce |= EPOLLOUT;
    if (!c->u_eof && !c->connecting && c->cout.len < AUX_HIGH_WATER)
        ue |= EPOLLIN;
    if (c->uout.len || c->connecting)
        ue |= EPOLLOUT;
    (void)a;
    rs_io_set(&c->cio, ce);
    rs_io_set(&c->uio, ue);
}

/* Sends what 'b' holds on 'fd'.  Returns 0 or -errno. */
static int flush_fd(int fd, struct aux_buf *b)
{
    while (b->len) {
        ssize_t n = send(fd, b->p, b->len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return n < 0 ? -errno : -EPIPE;
        buf_drop(b, (size_t)n);
    }
    return 0;
}

static int to_client(struct aux_conv *c, const void *p, size_t n)
{
    return buf_add(&c->cout, p, n);
}

static int to_upstream(struct aux_conv *c, const void *p, size_t n)
{
    return buf_add(&c->uout, p, n);
}

static const char *mode_name(const struct aux_conv *c)
{
    if (c->replayed)
        return c->caught_up ? "replay+live" : "replay";
    return "live";
}

static void conv_close(struct auxlog *a, struct aux_conv *c, const char *why)
{
    char txn[RS_TXN_ID_STRLEN] = "-";

    if (c->marked)
        rs_txn_id_format(c->txn, txn, sizeof(txn));
    rs_log("end %s backend=%s txn=%s ordinal=%u mode=%s%s units=%zu bytes_c=%" PRIu64 " bytes_s=%" PRIu64
           " ms=%.1f why=%s", proto_name(c->proto), RS_A(c->peer), txn, c->ordinal, mode_name(c),
           c->marked ? "" : "(unmarked)", c->nc, c->bytes_c, c->bytes_s,
           (double)(rs_mono_ns() - c->start_ns) / 1e6, why);
    if (c->rec) {
        if (c->rec->writer == c)
            c->rec->writer = NULL;
        record_put(c->rec);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        a->convs = c->next;
    if (c->next)
        c->next->prev = c->prev;
    rs_io_stop(&c->cio);
    rs_io_stop(&c->uio);
    close(c->cfd);
    close(c->ufd);
    buf_free(&c->cin);
    buf_free(&c->sin);
    buf_free(&c->cout);
    buf_free(&c->uout);
    free(c);
    a->n_convs--;
}

static void conv_error(struct auxlog *a, struct aux_conv *c, const char *what, int err)
{
    char why[160];
    a->errors++;
    snprintf(why, sizeof(why), "error:%s:%s", what, strerror(err < 0 ? -err : err));
    conv_close(a, c, why);
}

/* From here on only bytes are relayed: nothing more is recorded. */
static void conv_stop_recording(struct auxlog *a, struct aux_conv *c, const char *why)
{
    (void)a;
    if (c->mode == AUX_RELAY)
        return;
    if (c->marked)
        rs_log("stop recording %s backend=%s txn=%s ordinal=%u why=%s", proto_name(c->proto),
               RS_A(c->peer), TXN_S(c->txn), c->ordinal, why);
    /* Unforwarded client bytes (a held PRE unit) go out now. */
    if (c->cfwd < c->cin.len)
        to_upstream(c, c->cin.p + c->cfwd, c->cin.len - c->cfwd);
    if (c->sfwd < c->sin.len && !c->discard)
        to_client(c, c->sin.p + c->sfwd, c->sin.len - c->sfwd);
    buf_free(&c->cin);
    buf_free(&c->sin);
    c->cfwd = c->sfwd = 0;
    if (c->rec) {
        if (c->rec->writer == c)
            c->rec->writer = NULL;
        record_put(c->rec);
        c->rec = NULL;
    }
    c->mode = AUX_RELAY;
}

/* ---- Conversations: the protocol ---------------------------------------- */

/* Goes live at the client's unit 'cur' of a replayed conversation: resends
 * the recorded units that set up the server's session (their replies are
 * dropped), then everything the client sent from 'cur' on.  Returns 0 or
 * -errno (the conversation cannot go on). */
static int catch_up(struct auxlog *a, struct aux_conv *c, size_t cur, bool cur_data, const char *why)
{
    struct aux_record *r = c->rec;
    size_t j = (size_t)((ptrdiff_t)cur + c->off), plan[AUX_PLAN_MAX];
    struct rs_aux_unit_sum *sums;
    int k;

    if (c->u_eof)
        return -ENOTCONN;
    if (!(sums = calloc(r->n ? r->n : 1, sizeof(*sums))))
        return -ENOMEM;
    for (size_t i = 0; i < r->n; i++)
        sums[i] = r->u[i].sum;
    /* 'j' is at most r->n: the replay only got this far through complete units. */
    k = j > r->n ? -EINVAL : rs_aux_catchup_plan(c->proto, sums, r->n, r->marker, j, cur_data, plan, AUX_PLAN_MAX);
    free(sums);
    if (k < 0)
        return k;
    for (int i = 0; i < k; i++)
        if (to_upstream(c, r->u[plan[i]].c, r->u[plan[i]].clen) < 0)
            return -ENOMEM;
    rs_log("catch-up %s backend=%s txn=%s ordinal=%u at=%zu resent=%d why=%s", proto_name(c->proto),
           RS_A(c->peer), TXN_S(c->txn), c->ordinal, j, k, why);
    c->discard = (size_t)k;
    c->nr = cur;
    /* Everything the client sent from this unit on goes upstream now. */
    if (to_upstream(c, c->cin.p + c->cfwd, c->cin.len - c->cfwd) < 0)
        return -ENOMEM;
    c->cfwd = c->cin.len;
    c->caught_up = true;
    a->caught_up++;
    /* This conversation continues the record; a writer still on it stops. */
    if (r->writer && r->writer != c)
        conv_stop_recording(a, r->writer, "taken over by a catch-up");
    record_truncate(a, r, j);
    r->writer = c;
    r->owner_ip = c->peer.ip;
    c->mode = AUX_LIVE;
    return 0;
}

/* REPLAY: decides whether the client's unit 'cur' (its head is 'cmd') is
 * answered from the record or the conversation catches up and goes live.
 * Returns 1 for replay, 0 for live, or -errno. */
static int replay_decide(struct auxlog *a, struct aux_conv *c, const struct rs_aux_cmd *cmd, bool parsed)
{
    struct aux_record *r = c->rec;
    ptrdiff_t jj = (ptrdiff_t)c->nc + c->off;
    size_t j = (size_t)jj;
    char why[256];

    c->cur_decided = true;
    if (!r->dead && jj >= 0 && j < r->n && r->u[j].sum.complete && parsed &&
        rs_aux_cmd_same(cmd, &r->u[j].sum.cmd)) {
        c->cur_replay = true;
        return 1;
    }
    c->cur_replay = false;
    if (r->dead) {
        snprintf(why, sizeof(why), "record dropped");
    } else if (jj >= 0 && j < r->n && r->u[j].sum.complete) {
        c->diverged = true;
        a->diverged++;
        snprintf(why, sizeof(why), "diverged: %s %s vs recorded %s %s", cmd->tag, cmd->data ? "<data>" : cmd->verb,
                 r->u[j].sum.cmd.tag, r->u[j].sum.cmd.data ? "<data>" : r->u[j].sum.cmd.verb);
    } else {
        snprintf(why, sizeof(why), "record has no complete unit %zu", j);
    }
    if (r->dead)
        return -ENOENT;
    int e = catch_up(a, c, c->nc, cmd->data, why);
    return e < 0 ? e : 0;
}

/* The marker unit arrived in PRE mode: pick LIVE or REPLAY.  Returns 0 or -errno. */
/* A first run of 'txn' by 'ip': records of it made by other backends belong
 * to an earlier connection that had the same client address and port (the
 * port was reused); dropping them keeps a later re-run from replaying them. */
static void records_drop_stale(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, uint32_t ip)
{
    for (struct aux_record *r = a->oldest, *next; r; r = next) {
        next = r->newer;
        if (r->proto == p && r->txn == txn && r->owner_ip != ip) {
            rs_log("drop %s txn=%s ordinal=%u from=%u.%u.%u.%u: a first run of it came again", proto_name(p),
                   TXN_S(txn), r->ordinal, r->owner_ip >> 24, (r->owner_ip >> 16) & 255, (r->owner_ip >> 8) & 255,
                   r->owner_ip & 255);
            a->stale++;
            record_unkey(a, r);
        }
    }
}

/* 'rerun': the marker says the backend runs 'txn' again after a failover;
 * only then may another backend's record answer it. */
static int on_marker(struct auxlog *a, struct aux_conv *c, rs_txn_id txn, bool rerun)
{
    int ord = ordinal_next(a, c->proto, txn, c->peer.ip);
    struct aux_record *r;

    if (ord < 0)
        return ord;
    c->marked = true;
    c->txn = txn;
    c->ordinal = (unsigned)ord;
    c->marker = c->nc;
    if (!rerun)
        records_drop_stale(a, c->proto, txn, c->peer.ip);
    r = record_find(a, c->proto, txn, c->ordinal);
    if (r && rerun && r->owner_ip != c->peer.ip) {
        if (c->nr != c->nc) {
            /* Replies still owed before the marker would come after the replayed ones. */
            rs_log("no replay %s backend=%s txn=%s: client pipelined before the marker",
                   proto_name(c->proto), RS_A(c->peer), TXN_S(txn));
            a->errors++;
            conv_stop_recording(a, c, "pipelined before marker");
            return 0;
        }
        record_put(c->rec);     /* the private record: not needed */
        c->rec = r;
        r->refs++;
        c->off = (ptrdiff_t)r->marker - (ptrdiff_t)c->marker;
        c->mode = AUX_REPLAY;
        c->replayed = true;
        a->replayed++;
        rs_log("replay %s backend=%s txn=%s ordinal=%u from=%u.%u.%u.%u units=%zu%s", proto_name(c->proto),
               RS_A(c->peer), TXN_S(txn), c->ordinal, r->owner_ip >> 24, (r->owner_ip >> 16) & 255,
               (r->owner_ip >> 8) & 255, r->owner_ip & 255, r->n, r->writer ? " (still open)" : "");
        return 0;
    }
    if (r) {
        rs_log("replace %s txn=%s ordinal=%u backend=%s", proto_name(c->proto), TXN_S(txn), c->ordinal,
               RS_A(c->peer));
        record_unkey(a, r);
    }
    c->rec->marker = c->marker;
    record_key(a, c->rec, txn, c->ordinal);
    c->rec->writer = c;
    c->mode = AUX_LIVE;
    a->live++;
    rs_log("live %s backend=%s txn=%s ordinal=%u%s", proto_name(c->proto), RS_A(c->peer), TXN_S(txn), c->ordinal,
           rerun ? " rerun (nothing recorded)" : "");
    return 0;
}

/* A complete client unit cin[0, len).  Returns 0 or -errno. */
static int client_unit(struct auxlog *a, struct aux_conv *c, size_t len, bool data)
{
    struct rs_aux_cmd cmd;
    bool parsed = rs_aux_cmd_parse(c->proto, c->cin.p, len, data, &cmd) == 0;
    int e;

    if (!parsed)
        memset(&cmd, 0, sizeof(cmd));
    if (c->mode == AUX_PRE) {
        rs_txn_id txn;
        int m = parsed ? rs_aux_marker(c->proto, c->cin.p, len, &txn) : 0;
        if (m < 0)
            rs_log("bad marker %s backend=%s: %.*s", proto_name(c->proto), RS_A(c->peer),
                   (int)(len > 120 ? 120 : len), c->cin.p);
        if (m < 0 || (m == 0 && (!rs_aux_cmd_pre_marker(c->proto, &cmd) || c->bytes_c > AUX_PRE_MAX))) {
            a->unmarked++;
            conv_stop_recording(a, c, "unmarked");
            return 0;
        }
        if (m > 0) {
            if ((e = record_push(a, c->rec, c->cin.p, len, &cmd)) < 0)
                return e;
            if ((e = on_marker(a, c, txn, m == RS_AUX_MARKER_RERUN)) < 0)
                return e;
            if (c->mode == AUX_REPLAY) {
                /* The pushed unit was in the private record, now gone. */
                c->cur_decided = false;
            } else {
                if (c->mode == AUX_LIVE) {
                    /* Live from here: what the client pipelined after the marker goes too. */
                    to_upstream(c, c->cin.p + c->cfwd, c->cin.len - c->cfwd);
                    c->cfwd = c->cin.len;
                    c->nc++;
                }
                return 0;
            }
        } else {
            if ((e = record_push(a, c->rec, c->cin.p, len, &cmd)) < 0)
                return e;
            to_upstream(c, c->cin.p + c->cfwd, len - c->cfwd);
            c->cfwd = len;
            c->nc++;
            return 0;
        }
    }
    if (c->mode == AUX_LIVE) {
        struct aux_record *r = c->rec;
        size_t j = (size_t)((ptrdiff_t)c->nc + c->off);
        if (!parsed && c->proto == RS_AUX_IMAP) {
            /* Not a command: a SASL response or IDLE's DONE, part of the unit before. */
            if (j == 0 || j != r->n || r->u[j - 1].sum.complete) {
                conv_stop_recording(a, c, "client line outside any command");
                return 0;
            }
            return record_extend(a, r, j - 1, c->cin.p, len);
        }
        if (j != r->n) {
            conv_stop_recording(a, c, "record out of step");
            return 0;
        }
        if ((e = record_push(a, r, c->cin.p, len, &cmd)) < 0)
            return e;
        c->nc++;
        records_evict(a);
        return 0;
    }
    if (c->mode == AUX_REPLAY) {
        if (!c->cur_decided) {
            e = replay_decide(a, c, &cmd, parsed);
            if (e < 0)
                return e;
        }
        if (!c->cur_replay)
            return client_unit(a, c, len, data);   /* now live: record it */
        struct aux_unit *u = &c->rec->u[(size_t)((ptrdiff_t)c->nc + c->off)];
        if ((e = to_client(c, u->r, u->rlen)) < 0)
            return e;
        c->nc++;
        c->nr = c->nc;
        if (rs_aux_split_waiting(&c->cs))
            rs_aux_split_data_reply(&c->cs, u->sum.reply.code);
    }
    return 0;
}

/* Cuts the client's bytes into units.  Returns 0 or -errno. */
static int client_scan(struct auxlog *a, struct aux_conv *c)
{
    while (c->mode != AUX_RELAY) {
        struct rs_aux_event ev;
        int k = rs_aux_split_scan(&c->cs, c->cin.p, c->cin.len, &ev), e;

        if (k < 0)
            return k;
        if (k == RS_AUX_EV_NEED)
            return 0;
        if (k == RS_AUX_EV_LITERAL) {
            if (c->mode == AUX_PRE) {
                to_upstream(c, c->cin.p + c->cfwd, ev.end - c->cfwd);
                c->cfwd = ev.end;
            } else if (c->mode == AUX_REPLAY) {
                if (!c->cur_decided) {
                    struct rs_aux_cmd cmd;
                    bool parsed = rs_aux_cmd_parse(c->proto, c->cin.p, ev.end, false, &cmd) == 0;
                    if (!parsed)
                        memset(&cmd, 0, sizeof(cmd));
                    if ((e = replay_decide(a, c, &cmd, parsed)) < 0)
                        return e;
                }
                /* We stand in for the server: ask for the literal ourselves. */
                if (c->cur_replay && (e = to_client(c, "+ OK\r\n", 6)) < 0)
                    return e;
            }
            continue;
        }
        if ((e = client_unit(a, c, ev.end, ev.data)) < 0)
            return e;
        if (c->mode == AUX_RELAY)
            return 0;
        buf_drop(&c->cin, ev.end);
        c->cfwd = c->cfwd > ev.end ? c->cfwd - ev.end : 0;
        c->cur_decided = c->cur_replay = false;
    }
    return 0;
}

/* A complete reply sin[0, len) from upstream.  Returns 0 or -errno. */
static int server_unit(struct auxlog *a, struct aux_conv *c, size_t len)
{
    struct aux_record *r = c->rec;
    size_t i = c->nr++, j = (size_t)((ptrdiff_t)i + c->off);
    struct rs_aux_reply rp;

    if (j >= r->n || r->u[j].sum.complete) {
        conv_stop_recording(a, c, "reply without a command");
        return 0;
    }
    if (record_reply(a, r, j, c->sin.p, len) < 0)
        return -ENOMEM;
    rp = r->u[j].sum.reply;
    if (c->proto == RS_AUX_IMAP && i > 0 && strcmp(rp.tag, r->u[j].sum.cmd.tag) != 0) {
        conv_stop_recording(a, c, "reply tag does not match its command");
        return 0;
    }
    if (c->proto == RS_AUX_SMTP && rs_aux_split_waiting(&c->cs) && strcmp(r->u[j].sum.cmd.verb, "DATA") == 0)
        rs_aux_split_data_reply(&c->cs, rp.code);
    records_evict(a);
    return 0;
}

/* Cuts the server's bytes into replies, forwarding them (except a
 * catch-up's).  Returns 0 or -errno. */
static int server_scan(struct auxlog *a, struct aux_conv *c)
{
    bool again = false;

    while (c->mode == AUX_PRE || c->mode == AUX_LIVE) {
        struct rs_aux_event ev;
        int k = rs_aux_split_scan(&c->ss, c->sin.p, c->sin.len, &ev), e;

        if (k < 0)
            return k;
        if (k == RS_AUX_EV_NEED) {
            /* A reply in progress goes out as it comes, unless it is dropped. */
            if (!c->discard && c->sfwd < c->sin.len)
                to_client(c, c->sin.p + c->sfwd, c->sin.len - c->sfwd);
            c->sfwd = c->sin.len;
            break;
        }
        if (k == RS_AUX_EV_CONT) {
            if (!c->discard) {
                if (c->sfwd < ev.end)
                    to_client(c, c->sin.p + c->sfwd, ev.end - c->sfwd);
            }
            memmove(c->sin.p + ev.start, c->sin.p + ev.end, c->sin.len - ev.end);
            c->sin.len -= ev.end - ev.start;
            c->sfwd = ev.start;
            continue;
        }
        if (c->discard) {
            c->discard--;
        } else {
            if (c->sfwd < ev.end)
                to_client(c, c->sin.p + c->sfwd, ev.end - c->sfwd);
            c->sfwd = ev.end;
            if ((e = server_unit(a, c, ev.end)) < 0)
                return e;
            again = true;
        }
        if (c->mode == AUX_RELAY)
            break;
        buf_drop(&c->sin, ev.end);
        c->sfwd = 0;
    }
    /* An SMTP DATA reply lets the client splitter go on. */
    return again ? client_scan(a, c) : 0;
}

/* ---- Events ------------------------------------------------------------- */

/* One recv from 'fd'.  Returns the bytes read (> 0), 0 when there is
 * nothing more for now or the peer closed (then '*eof' is set), or -errno. */
static ssize_t conv_recv(int fd, uint8_t *buf, size_t len, bool *eof)
{
    for (;;) {
        ssize_t n = recv(fd, buf, len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? 0 : -errno;
        if (n == 0)
            *eof = true;
        return n;
    }
}

static int on_client_read(struct auxlog *a, struct aux_conv *c)
{
    uint8_t tmp[AUX_READ_CHUNK];

    for (;;) {
        if ((c->mode == AUX_REPLAY ? c->cout.len : c->uout.len) >= AUX_HIGH_WATER)
            return 0;
        ssize_t n = conv_recv(c->cfd, tmp, sizeof(tmp), &c->c_eof);
        if (n <= 0)
            return (int)n;
        setsockopt(c->cfd, IPPROTO_TCP, TCP_QUICKACK, &(int){ 1 }, sizeof(int));
        c->bytes_c += (uint64_t)n;
        if (c->mode == AUX_RELAY || c->mode == AUX_LIVE) {
            if (to_upstream(c, tmp, (size_t)n) < 0)
                return -ENOMEM;
            if (c->mode == AUX_RELAY)
                continue;
        }
        if (buf_add(&c->cin, tmp, (size_t)n) < 0)
            return -ENOMEM;
        if (c->mode == AUX_LIVE)
            c->cfwd = c->cin.len;
        int e = client_scan(a, c);
        if (e < 0)
            return e;
    }
}

static int on_upstream_read(struct auxlog *a, struct aux_conv *c)
{
    uint8_t tmp[AUX_READ_CHUNK];

    for (;;) {
        if (c->cout.len >= AUX_HIGH_WATER)
            return 0;
        ssize_t n = conv_recv(c->ufd, tmp, sizeof(tmp), &c->u_eof);
        if (n <= 0)
            return (int)n;
        c->bytes_s += (uint64_t)n;
        if (c->mode == AUX_RELAY) {
            if (to_client(c, tmp, (size_t)n) < 0)
                return -ENOMEM;
            continue;
        }
        if (c->mode == AUX_REPLAY) {
            /* The server was told nothing; whatever it says (a timeout) is not the client's. */
            if (!c->stray_warned)
                rs_log("dropped %zd unexpected bytes from upstream during replay backend=%s txn=%s", n,
                       RS_A(c->peer), TXN_S(c->txn));
            c->stray_warned = true;
            continue;
        }
        if (buf_add(&c->sin, tmp, (size_t)n) < 0)
            return -ENOMEM;
        int e = server_scan(a, c);
        if (e < 0)
            return e;
    }
}

/* Half-closes and closes as the two sides finish.  Returns true when 'c'
 * was closed. */
static bool conv_progress(struct auxlog *a, struct aux_conv *c)
{
    int e;

    if (!c->connecting && (e = flush_fd(c->ufd, &c->uout)) < 0 && !c->u_eof) {
        conv_error(a, c, "send upstream", e);
        return true;
    }
    if ((e = flush_fd(c->cfd, &c->cout)) < 0) {
        conv_close(a, c, "backend gone");
        return true;
    }
    if (c->mode == AUX_REPLAY) {
        /* The server never saw this conversation: end it with the client. */
        if (c->c_eof && !c->cout.len) {
            conv_close(a, c, "backend closed");
            return true;
        }
    } else {
        if (c->c_eof && !c->uout.len && !c->u_shut && !c->connecting) {
            shutdown(c->ufd, SHUT_WR);
            c->u_shut = true;
        }
        if (c->u_eof && !c->cout.len && !c->c_shut) {
            shutdown(c->cfd, SHUT_WR);
            c->c_shut = true;
        }
        if (c->c_eof && c->u_eof && !c->cout.len) {
            conv_close(a, c, "closed");
            return true;
        }
        if (c->u_eof && c->uout.len) {
            conv_close(a, c, "upstream closed");
            return true;
        }
    }
    conv_arm(a, c);
    return false;
}

static void conv_event(struct auxlog *a, struct aux_conv *c, bool upstream, uint32_t events)
{
    int e = 0;

    if (upstream && c->connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            conv_error(a, c, "connect upstream", err);
            return;
        }
        c->connecting = false;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        e = upstream ? (c->connecting ? 0 : on_upstream_read(a, c)) : on_client_read(a, c);
        if (e < 0) {
            conv_error(a, c, upstream ? "upstream" : "backend", e);
            return;
        }
    }
    conv_progress(a, c);
}

static void on_client(struct rs_io *io, uint32_t events)
{
    struct aux_conv *c = io->ctx;

    conv_event(c->a, c, false, events);
}

static void on_upstream(struct rs_io *io, uint32_t events)
{
    struct aux_conv *c = io->ctx;

    conv_event(c->a, c, true, events);
}

static void on_accept(struct rs_io *io, uint32_t events)
{
    struct listener *l = io->ctx;
    struct auxlog *a = l->a;

    (void)events;
    for (;;) {
        struct sockaddr_in sin;
        int one = 1, fd = rs_accept_tcp(io->fd, &sin);
        if (fd < 0)
            return;
        if (a->n_convs >= AUX_CONV_MAX) {
            a->refused++;
            rs_log("refused %s backend=%s why=max-conns", proto_name(l->proto), RS_A(rs_addr_of_sin(&sin)));
            close(fd);
            continue;
        }
        struct aux_conv *c = calloc(1, sizeof(*c));
        struct sockaddr_in up = rs_addr_sin(l->up);
        int ufd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (!c || ufd < 0) {
            free(c);
            if (ufd >= 0)
                close(ufd);
            close(fd);
            a->errors++;
            continue;
        }
        setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->id = ++a->next_id;
        c->a = a;
        c->proto = l->proto;
        c->cfd = fd;
        c->ufd = ufd;
        c->peer = rs_addr_of_sin(&sin);
        c->up = l->up;
        c->start_ns = rs_mono_ns();
        rs_aux_split_init(&c->cs, c->proto, RS_AUX_CLIENT, AUX_LINE_MAX, AUX_UNIT_MAX);
        rs_aux_split_init(&c->ss, c->proto, RS_AUX_SERVER, AUX_LINE_MAX, AUX_UNIT_MAX);
        c->rec = record_new(c->proto, c->peer.ip);
        c->nc = 1;      /* unit 0 is the greeting */
        c->next = a->convs;
        if (a->convs)
            a->convs->prev = c;
        a->convs = c;
        a->n_convs++;
        a->conns++;
        if (!c->rec || record_push(a, c->rec, NULL, 0, NULL) < 0) {
            conv_error(a, c, "record", ENOMEM);
            continue;
        }
        if (rs_io_start(&a->loop, &c->cio, fd, EPOLLIN, on_client, c) < 0
            || rs_io_start(&a->loop, &c->uio, ufd, EPOLLIN, on_upstream, c) < 0) {
            conv_error(a, c, "epoll", errno);
            continue;
        }
        if (connect(ufd, (struct sockaddr *)&up, sizeof(up)) < 0) {
            if (errno != EINPROGRESS) {
                conv_error(a, c, "connect upstream", errno);
                continue;
            }
            c->connecting = true;
        }
        conv_arm(a, c);
    }
}

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
        if ((e = rs_io_start(&a->loop, &l->io, fd, EPOLLIN, on_accept, l)) < 0) {
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
