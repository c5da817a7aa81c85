/* libFuzzer target for core/http_txn.c.  Input: byte 0 seeds the chunking,
 * byte 1 picks the ISNs (near 2^32 wrap or not), then the request stream up
 * to the first NUL and the response stream after it.  Three runs: both
 * directions interleaved in random chunks with overlapping re-feeds
 * (invariants only), and requests-then-responses fed whole versus in random
 * chunks, which must agree exactly.  The request part is also parsed as tagging
 * rules and the transactions classified with them. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "http_txn.h"
#include "seq.h"
#include "tags.h"

#ifndef CHECK
#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)
#endif

struct stream {
    const uint8_t *data;
    size_t len;
    size_t off;                 /* consumed so far */
    uint32_t base;              /* seq of data[0] */
};

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static size_t chunk(uint32_t *s)
{
    uint32_t r = rnd(s);

    return r % 64 == 0 ? 1 + r % 4096 : 1 + r % 16;
}

/* Checks what must hold after any call; 'req'/'resp' were fed up to off. */
static void check(const struct rs_http_conn *c, const struct stream *req, const struct stream *resp)
{
    uint32_t n = rs_http_txn_count(c), done = rs_http_resp_done_count(c);
    uint32_t first = n > RS_HTTP_TXN_RING ? n - RS_HTTP_TXN_RING : 0;
    const struct rs_http_txn *prev = NULL;

    /* After an error the parser may have taken bytes the caller was not
     * told about, but never more than it was given. */
    uint32_t req_next = rs_seq_dist(req->base, rs_http_next_seq(c, RS_DIR_REQ));
    uint32_t resp_next = rs_seq_dist(resp->base, rs_http_next_seq(c, RS_DIR_RESP));

    CHECK(req_next <= req->len && resp_next <= resp->len);
    if (rs_http_conn_err(c) == RS_HTTP_OK)
        CHECK(req_next == req->off && resp_next == resp->off);
    CHECK(done <= n);
    CHECK(n - done <= RS_HTTP_MAX_INFLIGHT);
    CHECK(rs_http_txn_get(c, n) == NULL);
    if (first > 0)
        CHECK(rs_http_txn_get(c, first - 1) == NULL);
    for (uint32_t num = first; num < n; num++) {
        const struct rs_http_txn *t = rs_http_txn_get(c, num);
        uint32_t rs = rs_seq_dist(req->base, t->req_start), re = rs_seq_dist(req->base, t->req_end);

        CHECK(t && t->num == num);
        CHECK(t->id == rs_txn_id_make(0x0a000001u, 1234, (uint16_t)num));
        CHECK(t->target_len < RS_HTTP_TARGET_MAX && t->target[t->target_len] == '\0');
        CHECK(memchr(t->method, '\0', sizeof(t->method)) != NULL);
        CHECK(rs <= re && re <= req_next);
        CHECK(!t->req_done || t->req_headers_done);
        CHECK((num < done) == t->resp_done);
        CHECK(t->status <= 999);
        if (t->resp_begun) {
            uint32_t ss = rs_seq_dist(resp->base, t->resp_start), se = rs_seq_dist(resp->base, t->resp_end);

            CHECK(ss <= se && se <= resp_next);
            CHECK(t->method[0] != '\0' || rs_http_conn_err(c) != RS_HTTP_OK);
        } else {
            CHECK(!t->resp_done && t->n_interim == 0);
        }
        if (t->resp_done)
            CHECK(t->status / 100 != 1);
        if (prev) {
            /* Streams are partitioned, in order. */
            CHECK(prev->req_done && prev->req_end == t->req_start);
            if (t->resp_begun)
                CHECK(prev->resp_done && prev->resp_end == t->resp_start);
        }
        prev = t;
    }
}

static void init(struct rs_http_conn *c, struct stream *req, struct stream *resp,
                 uint32_t isn_req, uint32_t isn_resp)
{
    rs_http_conn_init(c, 0x0a000001u, 1234, isn_req, isn_resp);
    req->off = resp->off = 0;
    req->base = isn_req + 1;
    resp->base = isn_resp + 1;
}

/* Feeds up to 'len' bytes of 's' from its cursor; returns bytes consumed or
 * a negative errno. */
static int feed(struct rs_http_conn *c, enum rs_http_dir d, struct stream *s, size_t len)
{
    int rc;

    if (len > s->len - s->off)
        len = s->len - s->off;
    rc = rs_http_feed(c, d, s->base + (uint32_t)s->off, s->data + s->off, len);
    CHECK(rc < 0 || (size_t)rc <= len);
    if (rc > 0)
        s->off += (size_t)rc;
    return rc;
}

static void run_interleaved(struct rs_http_conn *c, struct stream *req, struct stream *resp,
                            uint32_t isn_req, uint32_t isn_resp, uint32_t seed)
{
    init(c, req, resp, isn_req, isn_resp);
    for (int guard = 0; guard < 100000; guard++) {
        int want_resp = (rnd(&seed) & 1) && resp->off < resp->len;
        struct stream *s = want_resp || req->off == req->len ? resp : req;
        enum rs_http_dir d = s == req ? RS_DIR_REQ : RS_DIR_RESP;
        uint32_t before_n = rs_http_txn_count(c);
        enum rs_http_err before_err = rs_http_conn_err(c);
        int rc;

        if (s->off == s->len)
            break;
        if (rnd(&seed) % 8 == 0 && s->off > 0) {
            /* Re-feed an overlapping window: old bytes are skipped. */
            size_t back = 1 + rnd(&seed) % (s->off < 32 ? s->off : 32), old = s->off;

            s->off -= back;
            rc = feed(c, d, s, back + chunk(&seed));
            if (rc >= 0)
                CHECK(s->off >= old);
            else
                s->off = old;
        } else {
            rc = feed(c, d, s, chunk(&seed));
        }
        if (before_err != RS_HTTP_OK) {
            CHECK(rc == -EPROTO && rs_http_txn_count(c) == before_n);
            break;
        }
        CHECK(rc >= 0 || rc == -EPROTO);
        check(c, req, resp);
        if (rc < 0)
            break;
        /* A waiting response needs more requests; with none left, stop. */
        if (d == RS_DIR_RESP && rc == 0 && req->off == req->len)
            break;
    }
    CHECK(rs_http_feed(c, RS_DIR_REQ, req->base + (uint32_t)req->off + 1, "x", 1) ==
          (rs_http_conn_err(c) ? -EPROTO : -ERANGE));
    rs_http_txn_eof(c, RS_DIR_REQ);
    rs_http_txn_eof(c, RS_DIR_RESP);
    check(c, req, resp);
}

/* Requests, then responses, in chunks of chunk(seed) bytes or whole when
 * 'seed' is 0. */
static void run_ordered(struct rs_http_conn *c, struct stream *req, struct stream *resp,
                        uint32_t isn_req, uint32_t isn_resp, uint32_t seed)
{
    struct stream *order[2] = { req, resp };

    init(c, req, resp, isn_req, isn_resp);
    for (int i = 0; i < 2; i++) {
        struct stream *s = order[i];

        while (s->off < s->len) {
            int rc = feed(c, i ? RS_DIR_RESP : RS_DIR_REQ, s, seed ? chunk(&seed) : s->len);

            check(c, req, resp);
            if (rc <= 0)
                break;
        }
    }
    rs_http_txn_eof(c, RS_DIR_REQ);
    rs_http_txn_eof(c, RS_DIR_RESP);
    check(c, req, resp);
}

static void same(const struct rs_http_conn *a, const struct rs_http_conn *b)
{
    uint32_t n = rs_http_txn_count(a);

    CHECK(n == rs_http_txn_count(b));
    CHECK(rs_http_resp_done_count(a) == rs_http_resp_done_count(b));
    CHECK(rs_http_conn_err(a) == rs_http_conn_err(b));
    CHECK(rs_http_next_seq(a, RS_DIR_REQ) == rs_http_next_seq(b, RS_DIR_REQ));
    CHECK(rs_http_next_seq(a, RS_DIR_RESP) == rs_http_next_seq(b, RS_DIR_RESP));
    for (uint32_t num = n > RS_HTTP_TXN_RING ? n - RS_HTTP_TXN_RING : 0; num < n; num++) {
        const struct rs_http_txn *x = rs_http_txn_get(a, num), *y = rs_http_txn_get(b, num);

        CHECK(!strcmp(x->method, y->method));
        CHECK(x->target_len == y->target_len && !memcmp(x->target, y->target, x->target_len));
        CHECK(x->target_truncated == y->target_truncated);
        CHECK(x->req_headers_done == y->req_headers_done && x->req_done == y->req_done);
        CHECK(x->resp_begun == y->resp_begun && x->resp_done == y->resp_done);
        CHECK(x->close == y->close && x->n_interim == y->n_interim && x->status == y->status);
        CHECK(x->req_content_length == y->req_content_length);
        CHECK(x->resp_content_length == y->resp_content_length);
        CHECK(x->req_start == y->req_start && x->req_end == y->req_end);
        CHECK(x->resp_start == y->resp_start && x->resp_end == y->resp_end);
    }
}

/* ~22 KB each (rules ~70 KB): kept off the stack. */
static struct rs_http_conn a, b;
static struct rs_tags tags;

/* The request stream doubles as a rule text; whatever it parses to,
 * classifying the transactions must stay within the flags. */
static void tag_all(const uint8_t *data, size_t size, const struct rs_http_conn *c)
{
    int line = -1, rc = rs_tags_parse(&tags, (const char *)data, size, &line);
    uint32_t n = rs_http_txn_count(c);

    CHECK(rc <= RS_TAGS_MAX_RULES);
    CHECK(rc >= 0 ? line == 0 && (unsigned)rc == tags.n : line >= 1 && tags.n == 0);
    for (uint32_t num = n > RS_HTTP_TXN_RING ? n - RS_HTTP_TXN_RING : 0; num < n; num++) {
        const struct rs_http_txn *t = rs_http_txn_get(c, num);

        CHECK((rs_tags_classify(&tags, t->method, t->target) & ~(RS_TAG_UPDATE | RS_TAG_NONDET)) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t isns[4] = { 0, 0xffffff00u, 0x7fffffffu, 0xffffffffu };
    struct stream req, resp;
    const uint8_t *nul;
    uint32_t seed, isn_req, isn_resp;

    if (size < 2)
        return 0;
    seed = 0x9e3779b9u ^ ((uint32_t)data[0] << 8 | data[0]);
    isn_req = isns[data[1] & 3] + ((data[1] >> 2) & 15) * 16;
    isn_resp = isns[(data[1] >> 6) & 3] - ((data[1] >> 2) & 15) * 13;
    data += 2;
    size -= 2;
    nul = memchr(data, '\0', size);
    req.data = data;
    req.len = nul ? (size_t)(nul - data) : size;
    resp.data = nul ? nul + 1 : data + size;
    resp.len = nul ? size - req.len - 1 : 0;

    run_interleaved(&a, &req, &resp, isn_req, isn_resp, seed);
    run_ordered(&a, &req, &resp, isn_req, isn_resp, 0);
    run_ordered(&b, &req, &resp, isn_req, isn_resp, seed);
    same(&a, &b);
    tag_all(req.data, req.len, &a);
    return 0;
}
