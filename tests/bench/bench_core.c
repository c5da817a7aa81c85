/* make bench-core: how fast the logger's core work goes — reassembly
 * (core/reasm.h) and transactionalizing (core/http_txn.h) of one keep-alive
 * connection's two streams — against memcpy of the same bytes in the same
 * run.
 *
 * The connection: --txns transactions, built here from a fixed seed as the
 * reference application serves them (GETs with Cookie headers, one in ten a
 * 2 KB POST; responses of 1 KB to 256 KB, one in seven chunked), cut into
 * 1448-byte segments sent request first, then its response.  Then the
 * network's damage: each segment is swapped with the next one with
 * probability --reorder (default 5%) and sent twice with probability --dup
 * (default 1%; the copy a few segments later).  The logger's loop is then
 * replayed: every segment goes into its direction's ring, both directions'
 * new contiguous bytes go to the transactionalizer, and what it consumed is
 * released.  The memcpy baseline copies every segment, duplicates included,
 * into a ring of the same size.
 *
 * Rates are of the streams' bytes (each byte once, both directions), the
 * median of --rounds.  Exits 1 when the transactions found are not exactly
 * the ones sent (a benchmark of a broken parser measures nothing).  The
 * last line: summary: mb_s= memcpy_mb_s= ratio= txns= ... */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_txn.h"
#include "reasm.h"

#define MSS 1448u
#define RING_CAP (4u << 20)
#define REQ_ISN 1000000u
#define RESP_ISN 4000000000u      /* wraps: seq arithmetic is exercised */

struct seg {
    uint8_t dir;
    uint32_t off, len;
};

struct stream {
    uint8_t *buf;
    size_t len, cap;
};

struct conn_bytes {
    struct stream s[2];         /* RS_DIR_REQ, RS_DIR_RESP */
    struct seg *segs;           /* in the order they arrive */
    size_t nsegs, cap;
    unsigned reordered, duplicated;
};

/* ---- The connection --------------------------------------------------- */

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* True with probability 'pct' percent. */
static int chance(double pct)
{
    return rnd() % 1000000u < (uint32_t)(pct * 10000.0);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "bench-core: out of memory\n");
        exit(2);
    }
    return p;
}

static void put(struct stream *s, const void *p, size_t n)
{
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->buf = xrealloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void putf(struct stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct stream *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    put(s, line, (size_t)n);
}

static void put_body(struct stream *s, size_t n)
{
    while (n--) {
        uint8_t b = (uint8_t)rnd();
        put(s, &b, 1);
    }
}

static void add_seg(struct conn_bytes *c, struct seg g)
{
    if (c->nsegs == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 4096;
        c->segs = xrealloc(c->segs, c->cap * sizeof(*c->segs));
    }
    c->segs[c->nsegs++] = g;
}

/* Cuts bytes [from, to) of direction 'dir' into segments. */
static void segment(struct conn_bytes *c, uint8_t dir, size_t from, size_t to)
{
    for (size_t o = from; o < to; o += MSS)
        add_seg(c, (struct seg){ .dir = dir, .off = (uint32_t)o,
                                 .len = (uint32_t)(to - o < MSS ? to - o : MSS) });
}

static size_t resp_size(unsigned k)
{
    static const size_t sizes[] = { 1024, 1024, 1024, 4096, 4096, 16384, 65536, 262144 };

    return sizes[k % 8] + rnd() % 512;
}

static void build(struct conn_bytes *c, unsigned txns, double reorder, double dup)
{
    for (unsigned k = 0; k < txns; k++) {
        struct stream *rq = &c->s[RS_DIR_REQ], *rp = &c->s[RS_DIR_RESP];
        size_t q0 = rq->len, p0 = rp->len, body = resp_size(rnd());

        if (k % 10 == 9) {
            putf(rq, "POST /upload?seed=%u HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                 "Cookie: session=%08x%08x\r\nContent-Length: 2048\r\n\r\n", k, rnd(), rnd());
            put_body(rq, 2048);
        } else {
            putf(rq, "GET /file?seed=%u&size=%zu HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench-core/1\r\n"
                 "Accept: */*\r\nAccept-Encoding: identity\r\nCookie: session=%08x%08x\r\n\r\n", k, body, rnd(), rnd());
        }
        if (k % 7 == 6) {
            putf(rp, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            for (size_t left = body; left;) {
                size_t n = left < 4096 ? left : 4096;
                putf(rp, "%zx\r\n", n);
                put_body(rp, n);
                putf(rp, "\r\n");
                left -= n;
            }
            putf(rp, "0\r\n\r\n");
        } else {
            putf(rp, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n", body);
            put_body(rp, body);
        }
        segment(c, RS_DIR_REQ, q0, rq->len);
        segment(c, RS_DIR_RESP, p0, rp->len);
    }
    /* The network's damage, in one pass over the arrival order. */
    size_t n = c->nsegs;
    for (size_t i = 0; i + 1 < n; i++) {
        if (chance(reorder)) {
            struct seg t = c->segs[i];
            c->segs[i] = c->segs[i + 1];
            c->segs[i + 1] = t;
            c->reordered++;
            i++;
        }
    }
    struct seg *order = c->segs;
    c->segs = NULL;
    c->nsegs = c->cap = 0;
    size_t pending_at[4] = { 0 };
    struct seg pending[4];
    unsigned npending = 0;
    for (size_t i = 0; i < n; i++) {
        add_seg(c, order[i]);
        for (unsigned j = 0; j < npending;) {
            if (pending_at[j] == i) {
                add_seg(c, pending[j]);
                pending[j] = pending[--npending];
                pending_at[j] = pending_at[npending];
            } else {
                j++;
            }
        }
        if (npending < 4 && chance(dup)) {
            pending[npending] = order[i];
            pending_at[npending++] = i + 1 + rnd() % 3;
            c->duplicated++;
        }
    }
    for (unsigned j = 0; j < npending; j++)
        add_seg(c, pending[j]);
    free(order);
}

/* ---- The logger's loop ------------------------------------------------ */

struct run {
    struct rs_reasm_budget budget;
    struct rs_reasm rs[2];
    struct rs_http_conn http;
    unsigned done;
};

static void on_event(void *arg, struct rs_http_conn *conn, const struct rs_http_txn *t, enum rs_http_event ev)
{
    (void)conn;
    (void)t;
    if (ev == RS_HTTP_EV_RESP_DONE)
        ((struct run *)arg)->done++;
}

static const uint32_t isn[2] = { REQ_ISN, RESP_ISN };

/* Feeds direction 'd''s new contiguous bytes to the transactionalizer and
 * releases what it consumed. */
static void pump(struct run *r, int d)
{
    struct rs_reasm *s = &r->rs[d];
    uint32_t end = rs_reasm_contig_seq(s);

    for (;;) {
        uint32_t next = rs_http_next_seq(&r->http, (enum rs_http_dir)d);
        const uint8_t *p;
        size_t len;

        if (!rs_seq_lt(next, end) || rs_reasm_peek(s, next, &p, &len) || !len)
            break;
        int n = rs_http_feed(&r->http, (enum rs_http_dir)d, next, p, len);
        if (n <= 0)
            break;
    }
    rs_reasm_release(s, rs_http_next_seq(&r->http, (enum rs_http_dir)d));
}

static struct run *run_start(void)
{
    struct run *r = calloc(1, sizeof(*r));

    if (!r)
        exit(2);
    rs_reasm_budget_init(&r->budget, 2 * RING_CAP);
    for (int d = 0; d < 2; d++) {
        if (rs_reasm_init(&r->rs[d], &r->budget, RING_CAP) || rs_reasm_set_base(&r->rs[d], isn[d] + 1))
            exit(2);
    }
    rs_http_conn_init(&r->http, 0x0a000002, 40000, REQ_ISN, RESP_ISN);
    rs_http_conn_set_cb(&r->http, on_event, r);
    return r;
}

static void run_end(struct run *r)
{
    rs_reasm_free(&r->rs[0]);
    rs_reasm_free(&r->rs[1]);
    free(r);
}

static void logger_loop(struct run *r, const struct conn_bytes *c)
{
    for (size_t i = 0; i < c->nsegs; i++) {
        const struct seg *g = &c->segs[i];
        int d = g->dir;

        if (rs_reasm_add(&r->rs[d], isn[d] + 1 + g->off, c->s[d].buf + g->off, g->len) < 0) {
            fprintf(stderr, "bench-core: segment %zu refused by the ring\n", i);
            exit(1);
        }
        pump(r, RS_DIR_REQ);    /* a response waits for its request */
        pump(r, RS_DIR_RESP);
    }
}

static void memcpy_loop(uint8_t *ring, const struct conn_bytes *c)
{
    for (size_t i = 0; i < c->nsegs; i++) {
        const struct seg *g = &c->segs[i];
        size_t at = g->off % RING_CAP, first = g->len < RING_CAP - at ? g->len : RING_CAP - at;

        memcpy(ring + at, c->s[g->dir].buf + g->off, first);
        memcpy(ring, c->s[g->dir].buf + g->off + first, g->len - first);
    }
}

/* ---- Timing ----------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *e;

    errno = 0;
    *out = strtod(s, &e);
    return errno || e == s || *e || *out < lo || *out > hi ? -1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench-core [--txns N (3000)] [--rounds N (5)] [--reorder PCT (5)] [--dup PCT (1)] [--seed N (1)]\n");
}

int main(int argc, char **argv)
{
    double txns = 3000, rounds = 5, reorder = 5, dup = 1, seed = 1;
    struct { const char *name; double *v, lo, hi; } opts[] = {
        { "--txns", &txns, 1, 1e6 }, { "--rounds", &rounds, 1, 100 }, { "--reorder", &reorder, 0, 50 },
        { "--dup", &dup, 0, 50 }, { "--seed", &seed, 1, 1e9 },
    };

    for (int i = 1; i < argc; i++) {
        unsigned j = 0;
        while (j < sizeof(opts) / sizeof(opts[0]) && strcmp(argv[i], opts[j].name))
            j++;
        if (!strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (j == sizeof(opts) / sizeof(opts[0]) || i + 1 == argc
            || parse_num(argv[i + 1], opts[j].lo, opts[j].hi, opts[j].v)) {
            usage(stderr);
            return 2;
        }
        i++;
    }
    rng_state = 0x9e3779b97f4a7c15ull * (uint64_t)seed;

    struct conn_bytes c = { 0 };
    build(&c, (unsigned)txns, reorder, dup);
    double bytes = (double)(c.s[0].len + c.s[1].len), wire = 0;
    for (size_t i = 0; i < c.nsegs; i++)
        wire += c.segs[i].len;
    printf("connection: %u transactions, %.1f MB of requests, %.1f MB of responses, %zu segments "
           "(%u reordered, %u duplicated)\n", (unsigned)txns, (double)c.s[0].len / 1e6, (double)c.s[1].len / 1e6,
           c.nsegs, c.reordered, c.duplicated);

    uint8_t *ring = malloc(RING_CAP);
    double t_core[100], t_copy[100];
    struct rs_reasm_stats st[2] = { 0 };
    unsigned done = 0;
    if (!ring)
        return 2;
    for (unsigned k = 0; k < (unsigned)rounds; k++) {
        double t0 = now_s();
        memcpy_loop(ring, &c);
        t_copy[k] = now_s() - t0;

        struct run *r = run_start();
        t0 = now_s();
        logger_loop(r, &c);
        t_core[k] = now_s() - t0;
        done = r->done;
        st[0] = *rs_reasm_stats(&r->rs[0]);
        st[1] = *rs_reasm_stats(&r->rs[1]);
        if (rs_http_conn_err(&r->http) || rs_http_txn_count(&r->http) != (unsigned)txns || r->done != (unsigned)txns
            || rs_reasm_contig_off(&r->rs[0]) != c.s[0].len || rs_reasm_contig_off(&r->rs[1]) != c.s[1].len) {
            fprintf(stderr, "bench-core: wrong result: %u transactions, %u responses done, error \"%s\"\n",
                    rs_http_txn_count(&r->http), r->done, rs_http_err_str(rs_http_conn_err(&r->http)));
            return 1;
        }
        run_end(r);
    }
    double core = bytes / median(t_core, (unsigned)rounds) / 1e6;
    double copy = bytes / median(t_copy, (unsigned)rounds) / 1e6;
    uint64_t ooo = st[0].segs_ooo + st[1].segs_ooo, dups = st[0].segs_dup + st[1].segs_dup;

    printf("reassembly + transactionalizing  %8.0f MB/s  (the ring saw %" PRIu64 " out-of-order and %" PRIu64
           " duplicate segments)\n", core, ooo, dups);
    printf("memcpy of the same segments      %8.0f MB/s\n", copy);
    printf("ratio %.3f (targets: >= 1000 MB/s, >= 0.1x memcpy)\n", core / copy);
    printf("summary: mb_s=%.0f memcpy_mb_s=%.0f ratio=%.3f txns=%u responses=%u mb=%.1f wire_mb=%.1f segs=%zu "
           "reordered=%u duplicated=%u ooo=%" PRIu64 " dup=%" PRIu64 " rounds=%u\n", core, copy, core / copy,
           (unsigned)txns, done, bytes / 1e6, wire / 1e6, c.nsegs, c.reordered, c.duplicated, ooo, dups,
           (unsigned)rounds);
    free(ring);
    free(c.segs);
    free(c.s[0].buf);
    free(c.s[1].buf);
    return 0;
}
