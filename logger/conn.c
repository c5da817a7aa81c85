/* rs-logger's log: parses captured frames (Ethernet/SLL/raw, IPv4, TCP),
 * keeps one entry per client connection to the VIP, reassembles both byte
 * streams in the client's sequence spaces, cuts them into transactions,
 * tags them, tracks AckcL and FIN/RST, and releases what recovery can no
 * longer need.
 *
 * Rings start at 64k and double, up to --ring, only when the bytes a
 * recovery may still need do not fit (growing copies: measured, a grow-first
 * policy made the capture drop frames at 200 concurrent downloads).
 * Release policy (bounded memory, see LG_KEEP_TXNS), applied when a ring
 * is three quarters full or refuses bytes:
 *   - response bytes are released up to AckcL: the logger only ever resends
 *     [AckcL, AckTL + p), and a replayed transaction's response is discarded;
 *   - request bytes are kept for the last LG_KEEP_TXNS transactions, and
 *     always from the oldest transaction whose response the client has not
 *     acknowledged, or from an update logged less than LG_UPDATE_HOLD_NS
 *     ago (fresh_update); when that would leave the ring over half full
 *     only the newest one is kept, and the transactionalizer's ring (64)
 *     is a hard limit;
 *   - a connection is forgotten --linger after both FINs or a RST. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <pcap/dlt.h>

#include "logger.h"
#include "seq.h"

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

static const char *dir_name[2] = { "req", "resp" };

const char *lg_nl_str(enum lg_nl nl)
{
    switch (nl) {
    case LG_NL_NONE:      return "none";
    case LG_NL_MIDSTREAM: return "mid-stream";
    case LG_NL_NOMEM:     return "no-memory";
    case LG_NL_LIMIT:     return "too-many-connections";
    }
    return "?";
}

const char *lg_inc_str(enum lg_inc inc)
{
    switch (inc) {
    case LG_INC_NONE:      return "none";
    case LG_INC_REFUSED:   return "refused";
    case LG_INC_CONFLICT:  return "conflict";
    case LG_INC_HTTP:      return "http";
    case LG_INC_TRUNCATED: return "truncated";
    case LG_INC_GAP:       return "gap";
    }
    return "?";
}

const char *lg_tags_str(unsigned tags)
{
    static const char *s[4] = { "ro,det", "update,det", "ro,nondet", "update,nondet" };

    return s[tags & 3];
}

static const char *cid(const struct lg_conn *c)
{
    static char buf[24];

    return rs_addr_str((struct rs_addr){ c->ip, c->port }, buf, sizeof(buf));
}

/* ---- table -------------------------------------------------------------- */

static unsigned bucket(uint32_t ip, uint16_t port)
{
    return ((ip * 2654435761u) ^ (port * 40503u)) % LG_BUCKETS;
}

struct lg_conn *lg_conn_find(struct logger *lg, uint32_t ip, uint16_t port)
{
    for (struct lg_conn *c = lg->buckets[bucket(ip, port)]; c; c = c->next)
        if (c->ip == ip && c->port == port)
            return c;
    return NULL;
}

/* The ended connections are listed by when they ended, so the one that
 * ended longest ago is found at once: a full table makes room on every new
 * connection, and a scan of the whole table each time (4096 connections in
 * 16384 buckets) cost 75 us per connection, measured. */
static void closed_unlink(struct logger *lg, struct lg_conn *c)
{
    if (!c->closed_ns)
        return;
    *(c->closed_prev ? &c->closed_prev->closed_next : &lg->closed) = c->closed_next;
    *(c->closed_next ? &c->closed_next->closed_prev : &lg->closed_last) = c->closed_prev;
    c->closed_prev = c->closed_next = NULL;
}

/* 'c' ended (again: a RST after both FINs) at 'now'. */
static void set_closed(struct logger *lg, struct lg_conn *c, uint64_t now)
{
    closed_unlink(lg, c);
    c->closed_ns = now;
    c->closed_prev = lg->closed_last;
    *(lg->closed_last ? &lg->closed_last->closed_next : &lg->closed) = c;
    lg->closed_last = c;
}

static void conn_free(struct logger *lg, struct lg_conn *c)
{
    struct lg_conn **pp = &lg->buckets[bucket(c->ip, c->port)];

    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    closed_unlink(lg, c);
    for (int d = 0; d < 2; d++) {
        rs_reasm_free(&c->rs[d]);
        if (c->dump[d])
            fclose(c->dump[d]);
    }
    lg->nconns--;
    lg->s.conns_freed++;
    free(c);
}

static void check_gap(struct lg_conn *c);

/* Forgets the connection that ended (both FINs or a RST) longest ago, to
 * make room for a new one: a table full of connections lingering after
 * their end (short "Connection: close" ones, hundreds a second) must not
 * leave a live connection unlogged, hence unrecoverable.  Returns whether
 * one went. */
static bool evict_closed(struct logger *lg)
{
    struct lg_conn *old = lg->closed;

    if (!old)
        return false;
    check_gap(old);
    lg->s.closed_evicted++;
    conn_free(lg, old);
    return true;
}

/* A connection's state, zeroed but for its transactionalizer's ring of
 * transactions (21 KB of its 23: a slot is cleared when its transaction
 * is made, and none is read before; zeroing it for each connection was
 * 15% of the logger's CPU on short connections, measured with perf). */
static struct lg_conn *conn_alloc(void)
{
    const size_t from = offsetof(struct lg_conn, http) + offsetof(struct rs_http_conn, ring);
    const size_t to = from + sizeof(((struct rs_http_conn *)0)->ring);
    struct lg_conn *c = malloc(sizeof(*c));

    if (c) {
        memset(c, 0, from);
        memset((char *)c + to, 0, sizeof(*c) - to);
    }
    return c;
}

static struct lg_conn *conn_new(struct logger *lg, uint32_t ip, uint16_t port, uint64_t now)
{
    struct lg_conn *c;
    unsigned b = bucket(ip, port);

    if (lg->nconns >= lg->max_conns && !evict_closed(lg)) {
        if (lg->s.nl_limit++ % 1000 == 0)
            rs_log("not-loggable client=%s reason=%s conns=%u", RS_A(((struct rs_addr){ ip, port })),
                   lg_nl_str(LG_NL_LIMIT), lg->nconns);
        return NULL;
    }
    c = conn_alloc();
    if (!c) {
        lg->s.nl_nomem++;
        return NULL;
    }
    c->lg = lg;
    c->ip = ip;
    c->port = port;
    c->inc_dir = -1;
    c->last_ns = now;
    c->next = lg->buckets[b];
    lg->buckets[b] = c;
    lg->nconns++;
    lg->s.conns++;
    return c;
}

/* ---- connections that ended cleanly ----------------------------------------
 *
 * A connection whose every byte is logged, both FINs too, and each side's
 * FIN acknowledged by the other, has nothing left to recover or resend: it
 * is freed at once and only its 4-tuple is kept (struct lg_ended) for
 * --linger, so that its late segments are told from a new connection's.
 * Kept whole for the linger (23 KB and two rings each, on a busy server
 * thousands of them), the freed memory came back to the next connections
 * only after 10 s: every new connection meanwhile took fresh pages (page
 * faults and malloc were a third of the logger's profile in perf; its CPU
 * per short connection halved without them, 120-150 -> 55-70 us). */

const struct lg_ended *lg_conn_ended(const struct logger *lg, uint32_t ip, uint16_t port)
{
    for (uint32_t i = lg->ended_bucket[bucket(ip, port)]; i; i = lg->ended[i - 1].next)
        if (lg->ended[i - 1].ip == ip && lg->ended[i - 1].port == port)
            return &lg->ended[i - 1];
    return NULL;
}

/* Whether a segment going way 'd' at 'seq' is a late one of ended
 * connection 'e' (a retransmission from near its end), not one of a new
 * connection on the same 4-tuple whose SYN the capture missed (that one
 * is not loggable, and the alternate must be told so). */
static bool ended_late(const struct lg_ended *e, int d, uint32_t seq)
{
    int32_t before_end = e ? rs_seq_diff(e->fin_seq[d] + 1, seq) : -1;

    return before_end >= 0 && before_end < (1 << 24);
}

/* Forgets the oldest record. */
static void ended_drop(struct logger *lg)
{
    uint32_t idx = lg->ended_first, *link;
    struct lg_ended *e = &lg->ended[idx];

    link = &lg->ended_bucket[bucket(e->ip, e->port)];
    while (*link && *link != idx + 1)
        link = &lg->ended[*link - 1].next;
    if (*link)
        *link = e->next;
    lg->ended_first = (idx + 1) % LG_ENDED_MAX;
    lg->n_ended--;
}

static bool settled(const struct lg_conn *c)
{
    if (!c->started || c->nl != LG_NL_NONE || c->inc != LG_INC_NONE || c->rst || !c->fin[LG_REQ]
        || !c->fin[LG_RESP] || !c->has_ack || !c->has_ack_srv || !rs_seq_gt(c->ack_cl, c->fin_seq[LG_RESP])
        || !rs_seq_gt(c->ack_srv, c->fin_seq[LG_REQ]))
        return false;
    for (int d = 0; d < 2; d++)
        if (rs_reasm_nranges(&c->rs[d]) || rs_reasm_contig_seq(&c->rs[d]) != c->fin_seq[d])
            return false;
    return true;
}

/* Frees 'c', which settled, keeping its 4-tuple (the oldest record goes
 * when all LG_ENDED_MAX are taken). */
static void retire(struct logger *lg, struct lg_conn *c, uint64_t now)
{
    uint32_t idx;
    struct lg_ended *e;
    unsigned b = bucket(c->ip, c->port);

    if (lg->n_ended == LG_ENDED_MAX)
        ended_drop(lg);
    idx = (lg->ended_first + lg->n_ended++) % LG_ENDED_MAX;
    e = &lg->ended[idx];
    *e = (struct lg_ended){ .ip = c->ip, .port = c->port, .txns = rs_http_txn_count(&c->http),
                            .done = rs_http_resp_done_count(&c->http), .fin_seq = { c->fin_seq[0], c->fin_seq[1] },
                            .closed_ns = now, .next = lg->ended_bucket[b] };
    lg->ended_bucket[b] = idx + 1;
    lg->s.retired++;
    conn_free(lg, c);
}

/* Forgets the records older than --linger. */
static void ended_gc(struct logger *lg, uint64_t now)
{
    while (lg->n_ended && now - lg->ended[lg->ended_first].closed_ns > lg->linger_ns) {
        const struct lg_ended *e = &lg->ended[lg->ended_first];
        rs_log("forget client=%s txns=%u done=%u", RS_A(((struct rs_addr){ e->ip, e->port })), e->txns, e->done);
        ended_drop(lg);
    }
}

/* ---- transactionalizer events ------------------------------------------- */

/* The log of 'c' ends here: it cannot be recovered, so the alternate must
 * not wait for TXN_LOGGED to apply its states (they would be lost with
 * the primary). */
static void give_up(struct lg_conn *c)
{
    uint16_t next = c->started ? (uint16_t)rs_http_txn_count(&c->http) : 0;

    lg_ctl_unlogged(c->lg, rs_txn_id_make(c->ip, c->port, next));
}

static void set_inc(struct lg_conn *c, enum lg_inc why, int dir, uint32_t seq, const char *detail)
{
    struct lg_stats *s = &c->lg->s;

    if (c->inc != LG_INC_NONE)
        return;
    c->inc = why;
    c->inc_dir = dir;
    c->inc_seq = seq;
    if (why == LG_INC_REFUSED)
        s->inc_refused++;
    else if (why == LG_INC_CONFLICT)
        s->inc_conflict++;
    else if (why == LG_INC_HTTP)
        s->inc_http++;
    else if (why == LG_INC_TRUNCATED)
        s->inc_truncated++;
    else
        s->inc_gap++;
    rs_log("incomplete client=%s reason=%s dir=%s seq=%u off=%" PRId64 " next_txn=%u %s", cid(c),
           lg_inc_str(why), dir >= 0 ? dir_name[dir] : "-", seq,
           dir >= 0 && c->started ? rs_reasm_off(&c->rs[dir], seq) : -1, rs_http_txn_count(&c->http),
           detail ? detail : "");
    give_up(c);
}

static void txn_line(FILE *f, const struct lg_conn *c, const struct rs_http_txn *t)
{
    uint32_t rb = c->isn[LG_REQ] + 1, sb = c->isn[LG_RESP] + 1;

    fprintf(f, "txn id=%s method=%s target=%s status=%u tags=%s req_start=%u req_end=%u resp_start=%u"
            " resp_end=%u req_off=%u req_len=%u resp_off=%u resp_len=%u req_done=%d resp_done=%d\n",
            RS_TXN(t->id), t->method[0] ? t->method : "-", t->target_len ? t->target : "-", t->status,
            lg_tags_str(c->tags[t->num % RS_HTTP_TXN_RING]), t->req_start, t->req_end,
            t->resp_begun ? t->resp_start : 0, t->resp_begun ? t->resp_end : 0, rs_seq_dist(rb, t->req_start),
            rs_seq_dist(t->req_start, t->req_end), t->resp_begun ? rs_seq_dist(sb, t->resp_start) : 0,
            t->resp_begun ? rs_seq_dist(t->resp_start, t->resp_end) : 0, t->req_done, t->resp_done);
}

static void on_http(void *arg, struct rs_http_conn *hc, const struct rs_http_txn *t, enum rs_http_event ev)
{
    struct lg_conn *c = arg;
    struct logger *lg = c->lg;

    switch (ev) {
    case RS_HTTP_EV_REQ_HEADERS:
        c->tags[t->num % RS_HTTP_TXN_RING] = (uint8_t)rs_tags_classify(lg->tags, t->method, t->target);
        lg->s.txns++;
        rs_log("txn-request id=%s method=%s target=%s tags=%s req_start=%u", RS_TXN(t->id), t->method, t->target,
               lg_tags_str(c->tags[t->num % RS_HTTP_TXN_RING]), t->req_start);
        break;
    case RS_HTTP_EV_REQ_DONE:
        c->progress_ns = rs_mono_ns();
        c->suspected = false;
        break;
    case RS_HTTP_EV_RESP_DONE:
        lg->s.txns_logged++;
        c->logged_sent = t->num + 1;
        c->logged_ns[t->num % RS_HTTP_TXN_RING] = rs_mono_ns();
        rs_log("txn-logged id=%s status=%u req=[%u,%u) resp=[%u,%u) close=%d", RS_TXN(t->id), t->status,
               t->req_start, t->req_end, t->resp_start, t->resp_end, t->close);
        /* The alternate applies a transaction's state once it is logged; a
         * read-only transaction has none, so it goes unannounced: one
         * message and its ACK less per static file.  (rs-stated's mark only
         * grows: a state an application sent for a request tagged
         * read-only is released by the next update's TXN_LOGGED.) */
        if (c->tags[t->num % RS_HTTP_TXN_RING] & RS_TAG_UPDATE)
            lg_ctl_txn_logged(lg, t->id, t->resp_end);
        if (lg->readfile)
            txn_line(stdout, c, t);
        break;
    case RS_HTTP_EV_ERROR:
        set_inc(c, LG_INC_HTTP, hc->err_dir, hc->err_seq, rs_http_err_str(rs_http_conn_err(hc)));
        rs_log("http-error client=%s error=\"%s\" detail=\"%s\"", cid(c), rs_http_err_str(rs_http_conn_err(hc)),
               rs_http_conn_err_detail(hc));
        break;
    }
}

/* ---- streams ------------------------------------------------------------ */

/* Sets up rings (small: they grow on demand) and parser once both ISNs are known. */
static void conn_start(struct logger *lg, struct lg_conn *c)
{
    size_t cap = lg->ring < LG_RING_MIN ? lg->ring : LG_RING_MIN;
    int e;

    if ((e = rs_reasm_init(&c->rs[LG_REQ], &lg->budget, cap)) || (e = rs_reasm_init(&c->rs[LG_RESP], &lg->budget, cap))) {
        rs_reasm_free(&c->rs[LG_REQ]);
        rs_reasm_free(&c->rs[LG_RESP]);
        c->nl = LG_NL_NOMEM;
        lg->s.nl_nomem++;
        rs_log("not-loggable client=%s reason=%s budget_used=%zu", cid(c), lg_nl_str(c->nl), lg->budget.used);
        give_up(c);
        return;
    }
    rs_reasm_set_base(&c->rs[LG_REQ], c->isn[LG_REQ] + 1);
    rs_reasm_set_base(&c->rs[LG_RESP], c->isn[LG_RESP] + 1);
    rs_http_conn_init(&c->http, c->ip, c->port, c->isn[LG_REQ], c->isn[LG_RESP]);
    rs_http_conn_set_cb(&c->http, on_http, c);
    c->dump_seq[LG_REQ] = c->isn[LG_REQ] + 1;
    c->dump_seq[LG_RESP] = c->isn[LG_RESP] + 1;
    c->started = true;
    rs_log("conn client=%s isn_req=%u isn_resp=%u ring=%zu", cid(c), c->isn[LG_REQ], c->isn[LG_RESP], cap);
}

static void dump_write(struct logger *lg, struct lg_conn *c, int d)
{
    uint32_t end = rs_reasm_contig_seq(&c->rs[d]);

    if (!c->dump[d]) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%u.%u.%u.%u_%u.%s", lg->dumpdir, c->ip >> 24, (c->ip >> 16) & 255,
                 (c->ip >> 8) & 255, c->ip & 255, c->port, dir_name[d]);
        c->dump[d] = fopen(path, "wb");
        if (!c->dump[d]) {
            rs_log("dump: cannot open %s: %s", path, strerror(errno));
            lg->dumpdir = NULL;
            return;
        }
    }
    while (c->dump_seq[d] != end) {
        const uint8_t *p;
        size_t len;
        if (rs_reasm_peek(&c->rs[d], c->dump_seq[d], &p, &len) || !len)
            break;
        fwrite(p, 1, len, c->dump[d]);
        c->dump_seq[d] += (uint32_t)len;
    }
    fflush(c->dump[d]);   /* readable while the logger runs */
}

/* Feeds each direction's newly contiguous bytes to the transactionalizer
 * (requests first: a response waits for its request), then FINs. */
static void pump(struct logger *lg, struct lg_conn *c)
{
    for (int d = 0; d < 2; d++) {
        uint32_t end = rs_reasm_contig_seq(&c->rs[d]);

        if (lg->dumpdir)
            dump_write(lg, c, d);
        while (c->inc != LG_INC_HTTP) {
            uint32_t next = rs_http_next_seq(&c->http, (enum rs_http_dir)d);
            const uint8_t *p;
            size_t len;
            int n;

            if (!rs_seq_lt(next, end) || rs_reasm_peek(&c->rs[d], next, &p, &len) || !len)
                break;
            n = rs_http_feed(&c->http, (enum rs_http_dir)d, next, p, len);
            if (n <= 0)
                break;   /* a stalled response (0) or an error the callback reported */
            c->bytes[d] += (uint64_t)n;
        }
    }
    for (int d = 0; d < 2; d++) {
        if (c->fin[d] && !c->eof_fed[d] && c->inc != LG_INC_HTTP
            && rs_http_next_seq(&c->http, (enum rs_http_dir)d) == c->fin_seq[d]) {
            c->eof_fed[d] = true;
            if (rs_http_txn_eof(&c->http, (enum rs_http_dir)d) == 1)
                rs_log("eof client=%s dir=%s inside a message", cid(c), dir_name[d]);
        }
    }
}

static uint64_t held(const struct rs_reasm *r)
{
    return rs_reasm_contig_off(r) - rs_reasm_released_off(r);
}

/* Frees ring space of direction 'd' (see the release policy at the top of
 * this file).  Called when the ring is three quarters full or refused bytes:
 * rings are reserved whole from the budget, so releasing earlier would save
 * nothing, and late release keeps acknowledged bytes available for labs
 * and resends of what a client may not have yet. */
/* Whether transaction 'num' of 'c' is an update whose response was logged
 * less than LG_UPDATE_HOLD_NS ago.  Its state goes to the alternate
 * asynchronously: a primary that dies just after answering (its host's
 * interfaces down 2 ms after a 64 KB upload, in the fault campaign) may
 * never have sent it, and the failover must replay the request, which a
 * release at once had taken (the plan failed, history-trimmed: the update
 * was lost).  Knowing when the alternate has the state would be exact;
 * the time bound covers the transfer's usual milliseconds many times. */
static bool fresh_update(const struct lg_conn *c, uint32_t num, uint64_t now)
{
    uint64_t at = c->logged_ns[num % RS_HTTP_TXN_RING];

    return (c->tags[num % RS_HTTP_TXN_RING] & RS_TAG_UPDATE) && at && now - at < LG_UPDATE_HOLD_NS;
}

static void release(struct logger *lg, struct lg_conn *c, int d)
{
    struct rs_reasm *r = &c->rs[d];
    uint32_t n = rs_http_txn_count(&c->http), done = rs_http_resp_done_count(&c->http);
    uint32_t first = c->log_first, upto;
    const struct rs_http_txn *t = NULL;
    int got;

    if (d == LG_RESP) {
        if (!c->has_ack)
            return;
        upto = rs_seq_min(c->ack_cl, rs_http_next_seq(&c->http, RS_DIR_RESP));
        upto = rs_seq_min(upto, rs_reasm_contig_seq(r));
        /* Down to half full only: the newest acknowledged bytes stay
         * readable (labs, the resend port) at no extra cost. */
        upto = rs_seq_min(upto, rs_reasm_contig_seq(r) - (uint32_t)(r->cap / 2));
        if (rs_seq_le(upto, rs_reasm_released_seq(r)))
            return;
    } else {
        uint64_t now = rs_mono_ns();

        for (uint32_t keep = LG_KEEP_TXNS;; keep = 1) {
            while (first + keep < n && first < done && (t = rs_http_txn_get(&c->http, first)) && c->has_ack
                   && rs_seq_le(t->resp_end, c->ack_cl) && !fresh_update(c, first, now))
                first++;
            t = rs_http_txn_get(&c->http, first);
            if (keep == 1 || !t || held(r) - rs_seq_dist(rs_reasm_released_seq(r), t->req_start) <= r->cap / 2)
                break;
        }
        if (n > RS_HTTP_TXN_RING && first < n - RS_HTTP_TXN_RING)
            first = n - RS_HTTP_TXN_RING;   /* its metadata is gone: useless for recovery */
        if (first == c->log_first || !(t = rs_http_txn_get(&c->http, first)))
            return;
        upto = t->req_start;
    }
    if (c->dump[d])
        upto = rs_seq_min(upto, c->dump_seq[d]);
    got = rs_reasm_release(r, upto);
    if (got >= 0) {
        lg->s.released_bytes += (uint64_t)got;
        if (d == LG_REQ && t && upto == t->req_start) {
            /* Remember where the released ones stopped changing state (a
             * tag already overwritten in the ring counts as an update). */
            for (uint32_t i = c->log_first; i < first; i++)
                if (i + RS_HTTP_TXN_RING < n || (c->tags[i % RS_HTTP_TXN_RING] & RS_TAG_UPDATE))
                    c->read_only_from = i + 1;
            c->log_first = first;
        }
    }
}

/* Doubles the ring of direction 'd' (up to --ring).  Returns true when it grew. */
static bool grow(struct logger *lg, struct lg_conn *c, int d)
{
    size_t cap = c->rs[d].cap * 2 < lg->ring ? c->rs[d].cap * 2 : lg->ring;

    if (c->rs[d].cap >= lg->ring)
        return false;
    if (rs_reasm_grow(&c->rs[d], cap)) {
        lg->s.rings_full++;
        return false;
    }
    lg->s.rings_grown++;
    return true;
}

static void add_bytes(struct logger *lg, struct lg_conn *c, int d, uint32_t seq, const uint8_t *data, uint32_t len)
{
    const struct rs_reasm_stats *st = rs_reasm_stats(&c->rs[d]);
    uint64_t conflicts = st->segs_conflict;
    int r = rs_reasm_add(&c->rs[d], seq, data, len);

    /* What fitted is stored; make room and offer the rest again. */
    if (r == -ENOBUFS) {
        release(lg, c, d);
        r = rs_reasm_add(&c->rs[d], seq, data, len);
    }
    /* Still full of bytes recovery may need: a bigger ring, up to --ring. */
    while (r == -ENOBUFS && grow(lg, c, d))
        r = rs_reasm_add(&c->rs[d], seq, data, len);
    if (r == -ENOBUFS || r == -ENOSPC)
        set_inc(c, LG_INC_REFUSED, d, seq, r == -ENOBUFS ? "ring full" : "too many holes");
    else if (r == -EINVAL)
        set_inc(c, LG_INC_REFUSED, d, seq, "invalid segment");
    if (st->segs_conflict != conflicts)
        set_inc(c, LG_INC_CONFLICT, d, seq, "retransmission differs");
}

bool lg_conn_meant_ends(const struct lg_conn *c, uint32_t *req_end, uint32_t *resp_end)
{
    if (!c->started || c->nl != LG_NL_NONE || c->inc != LG_INC_NONE || c->rst || !lg_closed_as_meant(c))
        return false;
    *req_end = rs_reasm_contig_seq(&c->rs[LG_REQ]);
    if (*req_end != rs_http_next_seq(&c->http, RS_DIR_REQ) || (c->fin[LG_REQ] && c->fin_seq[LG_REQ] != *req_end))
        return false;
    if (c->fin[LG_REQ])
        ++*req_end;     /* the FIN's sequence number */
    *resp_end = rs_reasm_contig_seq(&c->rs[LG_RESP]);
    return true;
}

bool lg_word_went(const struct logger *lg, const struct lg_conn *c, uint32_t req_end, uint32_t resp_end)
{
    return c->word_sent && c->word_px_up == lg->px_ups && c->word_end[LG_REQ] == req_end
           && c->word_end[LG_RESP] == resp_end;
}

/* Tells the proxy, unasked, as soon as the log shows an end the
 * application means: the backend's FIN, which the guard holds, then
 * passes without a question (CLOSE_ASK) or a RECOVER.  Again whenever
 * either end moves (the client's FIN after a "Connection: close"
 * response; a response whose last bytes came late). */
static void close_word(struct logger *lg, struct lg_conn *c)
{
    struct rs_ctl_conn client = { c->ip, c->port };
    uint32_t req_end, resp_end;

    if (!lg->has_proxy || lg->readfile || !lg->px.up || c->fin[LG_RESP]
        || !lg_conn_meant_ends(c, &req_end, &resp_end) || lg_word_went(lg, c, req_end, resp_end))
        return;
    if (lg_ctl_close_word(lg, &lg->px, &client, RS_CTL_CLOSE_MEANT, req_end, resp_end))
        return;
    c->word_sent = true;
    c->word_end[LG_REQ] = req_end;
    c->word_end[LG_RESP] = resp_end;
    c->word_px_up = lg->px_ups;
}

/* One TCP segment of the client leg; 'd' says which way it went. */
static void segment(struct logger *lg, int d, uint32_t cip, uint16_t cport, uint32_t seq, uint32_t ack,
                    uint8_t flags, uint16_t win, const uint8_t *data, uint32_t len, bool truncated)
{
    uint64_t now = rs_mono_ns();
    struct lg_conn *c = lg_conn_find(lg, cip, cport);

    if (d == LG_REQ && (flags & TH_SYN) && !(flags & TH_ACK)) {
        if (c && c->syn && c->isn[LG_REQ] == seq)
            return;   /* retransmitted SYN */
        if (c) {
            rs_log("forget client=%s reason=new-syn txns=%u", cid(c), rs_http_txn_count(&c->http));
            conn_free(lg, c);
        }
        if (!(c = conn_new(lg, cip, cport, now)))
            return;
        c->syn = true;
        c->isn[LG_REQ] = seq;
        return;
    }
    if (!c && ended_late(lg_conn_ended(lg, cip, cport), d, seq)) {
        lg->s.late_segments++;      /* a retransmission after the end */
        return;
    }
    if (!c) {
        if (!(c = conn_new(lg, cip, cport, now)))
            return;
        c->nl = LG_NL_MIDSTREAM;
        lg->s.nl_midstream++;
        rs_log("not-loggable client=%s reason=%s dir=%s seq=%u", cid(c), lg_nl_str(c->nl), dir_name[d], seq);
        give_up(c);
    }
    c->last_ns = now;
    if (c->nl == LG_NL_NONE && !c->started) {
        if (d == LG_RESP && (flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK) && ack == c->isn[LG_REQ] + 1) {
            c->synack = true;
            c->isn[LG_RESP] = seq;
        } else if (d == LG_REQ && (flags & TH_ACK) && !(flags & TH_SYN)) {
            /* The SYN-ACK escaped the mirror: the handshake's ACK names it. */
            c->synack = true;
            c->isn[LG_RESP] = ack - 1;
            rs_log("conn client=%s syn-ack not seen, isn_resp=%u from the client's ack", cid(c), ack - 1);
        } else {
            return;
        }
        conn_start(lg, c);
    }
    if (flags & TH_RST) {
        if (!c->rst)
            rs_log("rst client=%s from=%s seq=%u txns=%u", cid(c), d == LG_REQ ? "client" : "server", seq,
                   c->started ? rs_http_txn_count(&c->http) : 0);
        c->rst = true;
        set_closed(lg, c, now);
        return;
    }
    if (flags & TH_FIN) {
        c->fin[d] = true;
        c->fin_seq[d] = seq + len;
        if (c->fin[0] && c->fin[1] && !c->closed_ns)
            set_closed(lg, c, now);
    }
    if (c->nl != LG_NL_NONE || (flags & TH_SYN))
        return;
    if (d == LG_REQ && (flags & TH_ACK) && (!c->has_ack || rs_seq_ge(ack, c->ack_cl))) {
        c->has_ack = true;
        c->ack_cl = ack;
        c->win_cl = win;
    }
    if (d == LG_RESP && (flags & TH_ACK) && (!c->has_ack_srv || rs_seq_ge(ack, c->ack_srv))) {
        if (!c->has_ack_srv || ack != c->ack_srv) {
            c->ack_srv_ns = now;
            c->suspected = false;
        }
        c->has_ack_srv = true;
        c->ack_srv = ack;
        c->win_srv = win;
    }
    if (len && d == LG_RESP) {
        /* Any response segment, even one the log already has (an alternate
         * regenerating bytes the client holds), shows the server at work. */
        c->progress_ns = now;
        c->suspected = false;
    }
    if (len) {
        /* Client bytes that find every earlier one acknowledged start the
         * backend's wait for its ACK now, not when its ACK last moved
         * (a long response ago, perhaps). */
        bool waited = d == LG_REQ && c->has_ack_srv && rs_seq_lt(c->ack_srv, rs_reasm_contig_seq(&c->rs[LG_REQ]));

        add_bytes(lg, c, d, seq, data, len);
        if (d == LG_REQ && c->has_ack_srv && !waited
            && rs_seq_lt(c->ack_srv, rs_reasm_contig_seq(&c->rs[LG_REQ])))
            c->ack_srv_ns = now;
        if (truncated)
            set_inc(c, LG_INC_TRUNCATED, d, seq + len, "raise the snap length");
    }
    pump(lg, c);
    /* (Not from a file: --read reports every connection at the end.) */
    if (!lg->readfile && settled(c) && !lg_plan_for(lg, c->ip, c->port)) {
        retire(lg, c, now);
        return;
    }
    close_word(lg, c);
    for (int k = 0; k < 2; k++)
        if (held(&c->rs[k]) > c->rs[k].cap / 4 * 3)
            release(lg, c, k);
}

/* ---- frames ------------------------------------------------------------- */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

void lg_packet(struct logger *lg, int dlt, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen)
{
    uint32_t off, ethertype, ihl, totlen, doff, iplen_cap, cip, sip, dip;
    uint16_t sport, dport, cport;
    const uint8_t *ip, *tcp;
    uint32_t avail, plen;
    bool truncated;
    int d;

    lg->s.packets++;
    lg->s.bytes += wirelen;
    switch (dlt) {
    case DLT_EN10MB:
        if (caplen < 14)
            goto not_tcp;
        off = 14;
        ethertype = rd16(pkt + 12);
        while ((ethertype == 0x8100 || ethertype == 0x88a8) && caplen >= off + 4) {
            ethertype = rd16(pkt + off + 2);
            off += 4;
        }
        break;
    case DLT_LINUX_SLL:
        if (caplen < 16)
            goto not_tcp;
        off = 16;
        ethertype = rd16(pkt + 14);
        break;
    case DLT_LINUX_SLL2:
        if (caplen < 20)
            goto not_tcp;
        off = 20;
        ethertype = rd16(pkt);
        break;
    case DLT_RAW:
#ifdef DLT_IPV4
    case DLT_IPV4:
#endif
        off = 0;
        ethertype = 0x0800;
        break;
    default:
        goto not_tcp;
    }
    if (ethertype != 0x0800 || caplen < off + 20)
        goto not_tcp;
    ip = pkt + off;
    iplen_cap = caplen - off;
    ihl = (uint32_t)(ip[0] & 15) * 4;
    totlen = rd16(ip + 2);
    /* GSO super-packets above 64 KB carry total length 0. */
    if (totlen == 0)
        totlen = wirelen - off;
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 6 || totlen < ihl + 20 || iplen_cap < ihl + 20
        || (rd16(ip + 6) & 0x3fff))   /* fragments: never seen from a TCP stack with PMTU */
        goto not_tcp;
    tcp = ip + ihl;
    doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || totlen < ihl + doff || iplen_cap < ihl + doff)
        goto not_tcp;
    sip = rd32(ip + 12);
    dip = rd32(ip + 16);
    sport = rd16(tcp);
    dport = rd16(tcp + 2);
    if (dip == lg->vip.ip && dport == lg->vip.port) {
        d = LG_REQ;
        cip = sip;
        cport = sport;
    } else if (sip == lg->vip.ip && sport == lg->vip.port) {
        d = LG_RESP;
        cip = dip;
        cport = dport;
    } else {
        lg->s.not_ours++;
        return;
    }
    plen = totlen - ihl - doff;
    avail = iplen_cap - ihl - doff;
    truncated = avail < plen;
    if (truncated) {
        lg->s.truncated++;
        plen = avail;
    }
    segment(lg, d, cip, cport, rd32(tcp + 4), rd32(tcp + 8), tcp[13], rd16(tcp + 14), tcp + doff, plen, truncated);
    return;
not_tcp:
    lg->s.non_tcp++;
}

/* ---- upkeep and reports --------------------------------------------------- */

/* At the end of a log, a hole (or bytes short of a FIN) is lost data. */
static void check_gap(struct lg_conn *c)
{
    for (int d = 0; d < 2 && c->started; d++)
        if (rs_reasm_nranges(&c->rs[d]) || (c->fin[d] && rs_reasm_contig_seq(&c->rs[d]) != c->fin_seq[d]))
            set_inc(c, LG_INC_GAP, d, rs_reasm_contig_seq(&c->rs[d]), "bytes missing at the end");
}

void lg_conn_gc(struct logger *lg, uint64_t now)
{
    ended_gc(lg, now);
    for (unsigned b = 0; b < LG_BUCKETS; b++) {
        struct lg_conn *c = lg->buckets[b], *next;
        for (; c; c = next) {
            next = c->next;
            if ((c->closed_ns && now - c->closed_ns > lg->linger_ns)
                || (c->nl != LG_NL_NONE && now - c->last_ns > LG_IDLE_FORGET_NS)) {
                check_gap(c);
                rs_log("forget client=%s txns=%u done=%u", cid(c), c->started ? rs_http_txn_count(&c->http) : 0,
                       c->started ? rs_http_resp_done_count(&c->http) : 0);
                conn_free(lg, c);
            }
        }
    }
}

/* Is the backend of 'c' hung?  Returns the SUSPECT reason, or 0:
 * - RS_CTL_SUSPECT_NOT_READING: its ACK has not moved for the bound while
 *   the client's bytes wait unacknowledged, or the rest of a request waits
 *   for a window it keeps shut (it stopped reading, e.g. mid-upload; its
 *   kernel still answers the client's window probes; or it never took the
 *   connection in: while its accept queue is full, the handshake's end
 *   and the request are dropped);
 * - RS_CTL_SUSPECT_STALL: it owes a response (the oldest transaction
 *   without its whole response has its whole request, which it has
 *   acknowledged) and has sent nothing since that request ended or since
 *   its last response byte, while the client could take more: it has
 *   acknowledged everything and its window is open. */
/* How long ago 'then' was at 'now': 0 when it is later (a segment taken
 * in after the caller read its clock: the loop's time is read once a turn). */
static uint64_t age(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

static uint16_t stalled(const struct lg_conn *c, uint64_t now, uint64_t bound)
{
    uint32_t done = rs_http_resp_done_count(&c->http), n;
    const struct rs_http_txn *t;
    bool unacked;

    if (!c->started || c->nl != LG_NL_NONE || c->closed_ns || c->fin[LG_RESP] || c->rst || c->suspected
        || c->inc == LG_INC_HTTP)
        return 0;
    n = rs_http_txn_count(&c->http);
    unacked = c->has_ack_srv && rs_seq_lt(c->ack_srv, rs_reasm_contig_seq(&c->rs[LG_REQ]));
    if (n && c->has_ack_srv && age(now, c->ack_srv_ns) >= bound
        && (unacked || (c->win_srv == 0 && (t = rs_http_txn_get(&c->http, n - 1)) && !t->req_done)))
        return RS_CTL_SUSPECT_NOT_READING;
    if (done >= n || !c->has_ack_srv || unacked)
        return 0;
    t = rs_http_txn_get(&c->http, done);
    if (!t || !t->req_done || age(now, c->progress_ns) < bound)
        return 0;
    return c->has_ack && c->ack_cl == rs_reasm_contig_seq(&c->rs[LG_RESP]) && c->win_cl ? RS_CTL_SUSPECT_STALL : 0;
}

void lg_conn_check_stalls(struct logger *lg, uint64_t now)
{
    for (unsigned b = 0; b < LG_BUCKETS; b++) {
        for (struct lg_conn *c = lg->buckets[b]; c; c = c->next) {
            uint16_t why = stalled(c, now, lg->stall_after_ns);

            if (!why)
                continue;
            c->suspected = true;
            uint64_t since = why == RS_CTL_SUSPECT_STALL ? c->progress_ns : c->ack_srv_ns;

            lg_ctl_suspect(lg, NULL, c, why, (uint32_t)(age(now, since) / 1000000));
        }
    }
}

/* A proxy coming up asks (OWED_ASK), perhaps one that took over from a
 * dead one (a restart, or a pair's standby): the connections its
 * predecessor had accepted but not yet copied or handed over, it does
 * not know, and nobody would answer their clients, who wait in silence
 * for a response.  Names to it, over 'to', every connection that owes
 * one; the proxy resets those it does not know (docs/failure-handling.md,
 * "A proxy pair"). */
void lg_conn_tell_owed(struct logger *lg, struct rs_ctlconn *to)
{
    uint64_t now = rs_mono_ns();

    for (unsigned b = 0; b < LG_BUCKETS; b++) {
        for (struct lg_conn *c = lg->buckets[b]; c; c = c->next) {
            if (!c->started || c->closed_ns || c->fin[LG_RESP] || c->rst
                || rs_http_resp_done_count(&c->http) >= rs_http_txn_count(&c->http))
                continue;
            lg_ctl_suspect(lg, to, c, RS_CTL_SUSPECT_OWED, (uint32_t)(age(now, c->progress_ns) / 1000000));
        }
    }
}

void lg_conn_table(struct logger *lg, FILE *f)
{
    for (unsigned b = 0; b < LG_BUCKETS; b++) {
        for (struct lg_conn *c = lg->buckets[b]; c; c = c->next) {
            uint32_t n = c->started ? rs_http_txn_count(&c->http) : 0;
            const char *state;

            check_gap(c);
            state = c->nl != LG_NL_NONE ? "not-loggable" : !c->started ? "handshake"
                              : c->inc != LG_INC_NONE ? "incomplete" : "complete";

            fprintf(f, "conn client=%s state=%s reason=%s txns=%u done=%u req_bytes=%" PRIu64
                    " resp_bytes=%" PRIu64 " isn_req=%u isn_resp=%u ackcl=%u fin_client=%d fin_server=%d rst=%d"
                    " req_holes=%u resp_holes=%u resp_dup_segs=%" PRIu64 " resp_ooo_segs=%" PRIu64 "\n",
                    cid(c), state, c->nl != LG_NL_NONE ? lg_nl_str(c->nl) : lg_inc_str(c->inc), n,
                    c->started ? rs_http_resp_done_count(&c->http) : 0, c->bytes[LG_REQ], c->bytes[LG_RESP],
                    c->isn[LG_REQ], c->isn[LG_RESP], c->ack_cl, c->fin[LG_REQ], c->fin[LG_RESP], c->rst,
                    c->started ? rs_reasm_nranges(&c->rs[LG_REQ]) : 0,
                    c->started ? rs_reasm_nranges(&c->rs[LG_RESP]) : 0,
                    c->started ? rs_reasm_stats(&c->rs[LG_RESP])->segs_dup : 0,
                    c->started ? rs_reasm_stats(&c->rs[LG_RESP])->segs_ooo : 0);
            for (uint32_t i = n > RS_HTTP_TXN_RING ? n - RS_HTTP_TXN_RING : 0; i < n; i++) {
                const struct rs_http_txn *t = rs_http_txn_get(&c->http, i);
                if (t && !t->resp_done)
                    txn_line(f, c, t);
            }
        }
    }
    fflush(f);
}

void lg_conn_free_all(struct logger *lg)
{
    for (unsigned b = 0; b < LG_BUCKETS; b++)
        while (lg->buckets[b])
            conn_free(lg, lg->buckets[b]);
}
