/* Unit tests for core/http_txn.c: transaction boundaries, seq ranges and
 * failure modes of the HTTP/1.1 transactionalizer. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "http_txn.h"

#define IP4 0x0a000002u
#define PORT 40000
#define ISN_REQ 1000u
#define ISN_RESP 5000u

struct evlog {
    int n;
    struct {
        enum rs_http_event ev;
        uint32_t num;
    } e[256];
};

static void record(void *arg, struct rs_http_conn *conn, const struct rs_http_txn *txn,
                   enum rs_http_event ev)
{
    struct evlog *log = arg;

    (void)conn;
    if (log->n < 256) {
        log->e[log->n].ev = ev;
        log->e[log->n].num = txn ? txn->num : UINT32_MAX;
        log->n++;
    }
}

static struct rs_http_conn *new_conn(uint32_t isn_req, uint32_t isn_resp, struct evlog *log)
{
    struct rs_http_conn *c = calloc(1, sizeof(*c));

    assert_non_null(c);
    rs_http_conn_init(c, IP4, PORT, isn_req, isn_resp);
    if (log) {
        memset(log, 0, sizeof(*log));
        rs_http_conn_set_cb(c, record, log);
    }
    return c;
}

/* Feeds all of 's' at the next expected seq; returns what rs_http_feed did. */
static int feed(struct rs_http_conn *c, enum rs_http_dir d, const char *s)
{
    return rs_http_feed(c, d, rs_http_next_seq(c, d), s, strlen(s));
}

static void feed_ok(struct rs_http_conn *c, enum rs_http_dir d, const char *s)
{
    assert_int_equal(feed(c, d, s), (int)strlen(s));
}

static void feed_bytewise(struct rs_http_conn *c, enum rs_http_dir d, const char *s)
{
    for (size_t i = 0; s[i]; i++)
        assert_int_equal(rs_http_feed(c, d, rs_http_next_seq(c, d), s + i, 1), 1);
}

static const struct rs_http_txn *get(const struct rs_http_conn *c, uint32_t num)
{
    const struct rs_http_txn *t = rs_http_txn_get(c, num);

    assert_non_null(t);
    assert_int_equal(t->num, num);
    return t;
}

static void content_length(void **state)
{
    static const char req[] = "POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    struct evlog log;
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, &log);
    const struct rs_http_txn *t;

    (void)state;
    assert_null(rs_http_txn_get(c, 0));
    /* All but the last body byte: the request is not complete yet. */
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 1, req, sizeof(req) - 2),
                     (int)sizeof(req) - 2);
    t = get(c, 0);
    assert_true(t->req_headers_done);
    assert_false(t->req_done);
    assert_int_equal(t->req_end, ISN_REQ + 1 + sizeof(req) - 2);
    feed_ok(c, RS_DIR_REQ, req + sizeof(req) - 2);
    feed_ok(c, RS_DIR_RESP, resp);

    assert_int_equal(rs_http_txn_count(c), 1);
    assert_int_equal(rs_http_resp_done_count(c), 1);
    assert_string_equal(t->method, "POST");
    assert_string_equal(t->target, "/a?x=1");
    assert_int_equal(t->target_len, 6);
    assert_false(t->target_truncated);
    assert_true(t->id == rs_txn_id_make(IP4, PORT, 0));
    assert_true(t->req_done && t->resp_done && t->resp_begun);
    assert_false(t->close);
    assert_int_equal(t->status, 200);
    assert_int_equal(t->req_content_length, 5);
    assert_int_equal(t->resp_content_length, 3);
    assert_int_equal(t->req_start, ISN_REQ + 1);
    assert_int_equal(t->req_end, ISN_REQ + 1 + sizeof(req) - 1);
    assert_int_equal(t->resp_start, ISN_RESP + 1);
    assert_int_equal(t->resp_end, ISN_RESP + 1 + sizeof(resp) - 1);
    assert_int_equal(t->n_interim, 0);

    assert_int_equal(log.n, 3);
    assert_int_equal(log.e[0].ev, RS_HTTP_EV_REQ_HEADERS);
    assert_int_equal(log.e[1].ev, RS_HTTP_EV_REQ_DONE);
    assert_int_equal(log.e[2].ev, RS_HTTP_EV_RESP_DONE);
    assert_int_equal(log.e[2].num, 0);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_OK);
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_REQ), 0);
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), 0);
    free(c);
}

static void chunked_extensions_trailers(void **state)
{
    static const char req[] =
        "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3;name=v\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
        "GET /next HTTP/1.1\r\n\r\n";
    static const char resp1[] =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;ext=1;q=\"x\"\r\nhello\r\n"
        "a\r\n0123456789\r\n"
        "0\r\nX-Trailer: y\r\nX-Other: z\r\n\r\n";
    static const char resp2[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    const size_t req1_len = sizeof(req) - 1 - strlen("GET /next HTTP/1.1\r\n\r\n");
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);
    const struct rs_http_txn *t0, *t1;

    (void)state;
    feed_ok(c, RS_DIR_REQ, req);
    assert_int_equal(rs_http_txn_count(c), 2);
    t0 = get(c, 0);
    t1 = get(c, 1);
    assert_true(t0->req_done && t1->req_done);
    assert_int_equal(t0->req_content_length, -1);
    assert_int_equal(t0->req_end, ISN_REQ + 1 + req1_len);
    assert_int_equal(t1->req_start, t0->req_end);
    assert_int_equal(t1->req_end, ISN_REQ + sizeof(req));
    assert_string_equal(t1->target, "/next");

    /* Up to the last LF of the trailers the response is not over. */
    assert_int_equal(rs_http_feed(c, RS_DIR_RESP, ISN_RESP + 1, resp1, sizeof(resp1) - 2),
                     (int)sizeof(resp1) - 2);
    assert_false(t0->resp_done);
    assert_int_equal(t0->resp_end, ISN_RESP + 1 + sizeof(resp1) - 2);
    feed_ok(c, RS_DIR_RESP, resp1 + sizeof(resp1) - 2);
    assert_true(t0->resp_done);
    assert_int_equal(t0->status, 200);
    assert_int_equal(t0->resp_content_length, -1);
    assert_int_equal(t0->resp_end, ISN_RESP + sizeof(resp1));
    feed_ok(c, RS_DIR_RESP, resp2);
    assert_true(t1->resp_done);
    assert_int_equal(t1->status, 404);
    assert_int_equal(t1->resp_content_length, 0);
    assert_int_equal(t1->resp_start, t0->resp_end);
    assert_int_equal(t1->resp_end, t0->resp_end + strlen(resp2));
    free(c);
}

static void head_has_no_body(void **state)
{
    static const char req[] = "HEAD /big HTTP/1.1\r\n\r\nGET /small HTTP/1.1\r\n\r\n";
    static const char resp1[] = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    static const char resp2[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);
    const struct rs_http_txn *t0, *t1;

    (void)state;
    feed_ok(c, RS_DIR_REQ, req);
    feed_ok(c, RS_DIR_RESP, resp1);
    t0 = get(c, 0);
    assert_string_equal(t0->method, "HEAD");
    assert_true(t0->resp_done);
    assert_int_equal(t0->resp_content_length, 100000);
    assert_int_equal(t0->resp_end, ISN_RESP + sizeof(resp1));
    feed_ok(c, RS_DIR_RESP, resp2);
    t1 = get(c, 1);
    assert_true(t1->resp_done);
    assert_int_equal(t1->resp_start, t0->resp_end);
    assert_int_equal(t1->resp_end, t0->resp_end + strlen(resp2));
    assert_int_equal(rs_http_resp_done_count(c), 2);

    /* The same response to a GET would still be waiting for its body. */
    free(c);
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET /big HTTP/1.1\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, resp1);
    assert_false(get(c, 0)->resp_done);
    free(c);
}

static void no_body_statuses(void **state)
{
    static const char req[] = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
    /* Content-Length on 304 is legal (size of the cached entity); a broken
     * server may send it with 204 too.  Neither has a body. */
    static const char r204[] = "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n";
    static const char r304[] = "HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n";
    static const char r200[] = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nZ";
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

    (void)state;
    feed_ok(c, RS_DIR_REQ, req);
    feed_ok(c, RS_DIR_RESP, r204);
    feed_ok(c, RS_DIR_RESP, r304);
    feed_ok(c, RS_DIR_RESP, r200);
    assert_int_equal(rs_http_resp_done_count(c), 3);
    assert_int_equal(get(c, 0)->status, 204);
    assert_int_equal(get(c, 0)->resp_end, ISN_RESP + sizeof(r204));
    assert_int_equal(get(c, 1)->status, 304);
    assert_int_equal(get(c, 1)->resp_end, ISN_RESP + sizeof(r204) - 1 + sizeof(r304));
    assert_int_equal(get(c, 2)->status, 200);
    assert_int_equal(get(c, 2)->resp_end, ISN_RESP + 1 + strlen(r204) + strlen(r304) + strlen(r200));
    assert_false(get(c, 2)->close);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_OK);
    free(c);
}

static void expect_100_continue(void **state)
{
    static const char hdr[] = "POST /send HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    static const char hints[] = "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n";
    static const char final[] = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    struct evlog log;
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, &log);
    const struct rs_http_txn *t;

    (void)state;
    feed_ok(c, RS_DIR_REQ, hdr);
    feed_ok(c, RS_DIR_RESP, cont);
    t = get(c, 0);
    assert_true(t->resp_begun);
    assert_false(t->resp_done);
    assert_int_equal(t->status, 0);
    assert_int_equal(t->n_interim, 1);
    assert_int_equal(t->resp_end, ISN_RESP + sizeof(cont));
    assert_int_equal(rs_http_resp_done_count(c), 0);
    feed_ok(c, RS_DIR_REQ, "body");
    assert_true(t->req_done);
    feed_ok(c, RS_DIR_RESP, hints);
    feed_ok(c, RS_DIR_RESP, final);
    assert_true(t->resp_done);
    assert_int_equal(t->status, 201);
    assert_int_equal(t->n_interim, 2);
    /* The range covers the interim responses too: no byte is ownerless. */
    assert_int_equal(t->resp_start, ISN_RESP + 1);
    assert_int_equal(t->resp_end, ISN_RESP + 1 + strlen(cont) + strlen(hints) + strlen(final));
    assert_int_equal(rs_http_resp_done_count(c), 1);
    assert_int_equal(log.n, 3);
    assert_int_equal(log.e[2].ev, RS_HTTP_EV_RESP_DONE);
    free(c);
}

static void pipelined_three(void **state)
{
    static const char *reqs[3] = {
        "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        "\r\nDELETE /3 HTTP/1.1\r\n\r\n",   /* a stray CRLF before it */
    };
    static const char *resps[3] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n22\r\n0\r\n\r\n",
        "HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\n\r\n333",
    };
    static const char *methods[3] = { "GET", "POST", "DELETE" };
    static const uint16_t status[3] = { 200, 200, 202 };
    char all_req[256] = "", all_resp[256] = "";
    struct evlog log;
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, &log);
    uint32_t rq = ISN_REQ + 1, rs = ISN_RESP + 1;

    (void)state;
    for (int i = 0; i < 3; i++) {
        strcat(all_req, reqs[i]);
        strcat(all_resp, resps[i]);
    }
    feed_ok(c, RS_DIR_REQ, all_req);
    assert_int_equal(rs_http_txn_count(c), 3);
    assert_int_equal(rs_http_resp_done_count(c), 0);
    feed_ok(c, RS_DIR_RESP, all_resp);
    assert_int_equal(rs_http_resp_done_count(c), 3);
    for (uint32_t i = 0; i < 3; i++) {
        const struct rs_http_txn *t = get(c, i);

        assert_string_equal(t->method, methods[i]);
        assert_int_equal(t->status, status[i]);
        assert_int_equal(t->req_start, rq);
        assert_int_equal(t->req_end, rq + strlen(reqs[i]));
        assert_int_equal(t->resp_start, rs);
        assert_int_equal(t->resp_end, rs + strlen(resps[i]));
        assert_true(t->id == rs_txn_id_make(IP4, PORT, (uint16_t)i));
        assert_ptr_equal(rs_http_txn_find(c, RS_DIR_REQ, t->req_start), t);
        assert_ptr_equal(rs_http_txn_find(c, RS_DIR_REQ, t->req_end - 1), t);
        assert_ptr_equal(rs_http_txn_find(c, RS_DIR_RESP, t->resp_end - 1), t);
        rq = t->req_end;
        rs = t->resp_end;
    }
    assert_null(rs_http_txn_find(c, RS_DIR_REQ, rq));
    assert_null(rs_http_txn_find(c, RS_DIR_RESP, ISN_RESP));
    /* 3 x REQ_HEADERS + REQ_DONE, then 3 x RESP_DONE in order. */
    assert_int_equal(log.n, 9);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(log.e[6 + i].ev, RS_HTTP_EV_RESP_DONE);
        assert_int_equal(log.e[6 + i].num, i);
    }
    free(c);
}

static void keep_alive_and_close(void **state)
{
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

    (void)state;
    /* HTTP/1.1 default: persistent. Then the server says close. */
    feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_false(get(c, 0)->close);
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert_true(get(c, 1)->close);
    assert_true(get(c, 1)->resp_done);
    /* Anything after a close-marked response is not HTTP any more. */
    assert_int_equal(feed(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\n"), -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_RESP_MALFORMED);
    assert_non_null(strstr(rs_http_conn_err_detail(c), "close"));
    free(c);

    /* Client asks to close; stray line ends after it are tolerated, a
     * further request is not. */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n\r\n");
    assert_true(get(c, 0)->close);
    assert_int_equal(feed(c, RS_DIR_REQ, "GET /more HTTP/1.1\r\n\r\n"), -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_REQ_MALFORMED);
    assert_int_equal(rs_http_txn_count(c), 1);
    free(c);

    /* HTTP/1.0 closes unless both sides say keep-alive. */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.0\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx");
    assert_true(get(c, 0)->close);
    assert_true(get(c, 0)->resp_done);
    free(c);

    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx");
    assert_false(get(c, 0)->close);
    feed_ok(c, RS_DIR_REQ, "GET /again HTTP/1.0\r\n\r\n");
    assert_int_equal(rs_http_txn_count(c), 2);
    free(c);
}

static void close_delimited_body(void **state)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
    struct evlog log;
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, &log);
    const struct rs_http_txn *t;

    (void)state;
    feed_ok(c, RS_DIR_REQ, "GET /stream HTTP/1.1\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, resp);
    t = get(c, 0);
    assert_false(t->resp_done);
    assert_int_equal(t->resp_end, ISN_RESP + sizeof(resp));     /* p: bytes so far */
    feed_ok(c, RS_DIR_RESP, " more");
    assert_int_equal(t->resp_end, ISN_RESP + sizeof(resp) + 5);
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), 0);
    assert_true(t->resp_done);
    assert_true(t->close);
    assert_int_equal(t->resp_end, ISN_RESP + sizeof(resp) + 5);
    assert_int_equal(t->resp_content_length, -1);
    assert_int_equal(log.e[log.n - 1].ev, RS_HTTP_EV_RESP_DONE);
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), -EPIPE);
    assert_int_equal(feed(c, RS_DIR_RESP, "x"), -EPIPE);
    free(c);

    /* A FIN inside a Content-Length body is a truncation, not an end. */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.1\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), 1);
    assert_false(get(c, 0)->resp_done);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_OK);
    /* ... and a FIN inside a request likewise. */
    feed_ok(c, RS_DIR_REQ, "POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab");
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_REQ), 1);
    assert_false(get(c, 1)->req_done);
    free(c);

    /* Between an interim 100 and the final response counts as inside. */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.1\r\n\r\n");
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), 1);
    free(c);
}

/* A script mixing every feature, fed whole or byte by byte. */
static const struct step {
    enum rs_http_dir dir;
    const char *data;
} script[] = {
    { RS_DIR_REQ, "GET /index.html HTTP/1.1\r\nHost: h\r\n\r\nHEAD /x HTTP/1.1\r\n\r\n" },
    { RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody" },
    { RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" },
    { RS_DIR_REQ, "POST /send HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n" },
    { RS_DIR_RESP, "HTTP/1.1 100 Continue\r\n\r\n" },
    { RS_DIR_REQ, "4;a=b\r\nwxyz\r\n0\r\nT: 1\r\n\r\n" },
    { RS_DIR_RESP, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n!\r\n0\r\n\r\n" },
    { RS_DIR_REQ, "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /last HTTP/1.1\r\nConnection: close\r\n\r\n" },
    { RS_DIR_RESP, "HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n" },
    { RS_DIR_RESP, "HTTP/1.1 200 OK\r\n\r\nclose-delimited" },
};

static void assert_txn_equal(const struct rs_http_txn *a, const struct rs_http_txn *b)
{
    assert_int_equal(a->num, b->num);
    assert_true(a->id == b->id);
    assert_string_equal(a->method, b->method);
    assert_string_equal(a->target, b->target);
    assert_int_equal(a->target_len, b->target_len);
    assert_int_equal(a->target_truncated, b->target_truncated);
    assert_int_equal(a->req_headers_done, b->req_headers_done);
    assert_int_equal(a->req_done, b->req_done);
    assert_int_equal(a->resp_begun, b->resp_begun);
    assert_int_equal(a->resp_done, b->resp_done);
    assert_int_equal(a->close, b->close);
    assert_int_equal(a->n_interim, b->n_interim);
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->req_content_length, b->req_content_length);
    assert_int_equal(a->resp_content_length, b->resp_content_length);
    assert_int_equal(a->req_start, b->req_start);
    assert_int_equal(a->req_end, b->req_end);
    assert_int_equal(a->resp_start, b->resp_start);
    assert_int_equal(a->resp_end, b->resp_end);
}

static void bytewise_equals_whole(void **state)
{
    struct evlog log_a, log_b;
    struct rs_http_conn *a = new_conn(ISN_REQ, ISN_RESP, &log_a);
    struct rs_http_conn *b = new_conn(ISN_REQ, ISN_RESP, &log_b);

    (void)state;
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++) {
        feed_ok(a, script[i].dir, script[i].data);
        feed_bytewise(b, script[i].dir, script[i].data);
    }
    assert_int_equal(rs_http_txn_eof(a, RS_DIR_RESP), 0);
    assert_int_equal(rs_http_txn_eof(b, RS_DIR_RESP), 0);
    assert_int_equal(rs_http_conn_err(a), RS_HTTP_OK);
    assert_int_equal(rs_http_conn_err(b), RS_HTTP_OK);
    assert_int_equal(rs_http_txn_count(a), 6);
    assert_int_equal(rs_http_txn_count(b), 6);
    assert_int_equal(rs_http_resp_done_count(a), 6);
    assert_int_equal(rs_http_resp_done_count(b), 6);
    for (uint32_t n = 0; n < 6; n++)
        assert_txn_equal(get(a, n), get(b, n));
    assert_int_equal(log_a.n, log_b.n);
    for (int i = 0; i < log_a.n; i++) {
        assert_int_equal(log_a.e[i].ev, log_b.e[i].ev);
        assert_int_equal(log_a.e[i].num, log_b.e[i].num);
    }
    /* Spot checks that the script parsed as meant. */
    assert_string_equal(get(a, 1)->method, "HEAD");
    assert_int_equal(get(a, 2)->n_interim, 1);
    assert_int_equal(get(a, 2)->status, 200);
    assert_int_equal(get(a, 3)->status, 304);
    assert_int_equal(get(a, 4)->status, 204);
    assert_string_equal(get(a, 5)->target, "/last");
    assert_true(get(a, 5)->close);
    assert_int_equal(rs_http_next_seq(a, RS_DIR_RESP), rs_http_next_seq(b, RS_DIR_RESP));
    free(a);
    free(b);
}

static void seq_wrap(void **state)
{
    static const char req[] = "GET /wrap HTTP/1.1\r\nHost: h\r\n\r\n";        /* 31 bytes */
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    const uint32_t isn = 0xfffffff0u;
    struct rs_http_conn *c = new_conn(isn, 0xffffffffu, NULL);
    const struct rs_http_txn *t;

    (void)state;
    /* Response ISN 0xffffffff: the first byte is at seq 0. */
    assert_int_equal(rs_http_next_seq(c, RS_DIR_RESP), 0);
    feed_bytewise(c, RS_DIR_REQ, req);
    feed_ok(c, RS_DIR_REQ, req);
    feed_ok(c, RS_DIR_RESP, resp);
    t = get(c, 0);
    assert_int_equal(t->req_start, 0xfffffff1u);
    assert_int_equal(t->req_end, (uint32_t)(0xfffffff1u + strlen(req)));
    assert_true(t->req_end < 0x100u);
    assert_int_equal(get(c, 1)->req_start, t->req_end);
    assert_int_equal(get(c, 1)->req_end, (uint32_t)(0xfffffff1u + 2 * strlen(req)));
    assert_int_equal(t->resp_start, 0);
    assert_int_equal(t->resp_end, strlen(resp));
    assert_ptr_equal(rs_http_txn_find(c, RS_DIR_REQ, 0xffffffffu), t);
    assert_ptr_equal(rs_http_txn_find(c, RS_DIR_REQ, 0), t);
    assert_ptr_equal(rs_http_txn_find(c, RS_DIR_REQ, t->req_end), get(c, 1));
    assert_null(rs_http_txn_find(c, RS_DIR_REQ, 0xfffffff0u));
    free(c);
}

static void gaps_and_refeeding(void **state)
{
    static const char req[] = "GET /g HTTP/1.1\r\n\r\n";
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

    (void)state;
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 2, req + 1, 3), -ERANGE);
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 1, req, 0), 0);
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 1, NULL, 3), -EINVAL);
    assert_int_equal(rs_http_feed(c, (enum rs_http_dir)7, ISN_REQ + 1, req, 3), -EINVAL);
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 1, req, 5), 5);
    /* Entirely old: nothing new is parsed, all of it counts as consumed. */
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 1, req, 5), 5);
    /* Overlapping: the first 5 bytes are skipped. */
    assert_int_equal(rs_http_feed(c, RS_DIR_REQ, ISN_REQ + 1, req, strlen(req)), (int)strlen(req));
    assert_int_equal(rs_http_next_seq(c, RS_DIR_REQ), ISN_REQ + 1 + strlen(req));
    assert_int_equal(rs_http_txn_count(c), 1);
    assert_string_equal(get(c, 0)->target, "/g");
    assert_true(get(c, 0)->req_done);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_OK);
    free(c);
}

static void response_before_request(void **state)
{
    static const char req[] = "HEAD /h HTTP/1.1\r\n\r\n";
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n";
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);
    int n;

    (void)state;
    n = feed(c, RS_DIR_RESP, resp);
    assert_true(n >= 0 && n < (int)strlen(resp));
    assert_int_equal(rs_http_next_seq(c, RS_DIR_RESP), ISN_RESP + 1 + n);
    /* Still waiting: nothing more is taken. */
    assert_int_equal(rs_http_feed(c, RS_DIR_RESP, ISN_RESP + 1, resp, strlen(resp)), n);
    feed_ok(c, RS_DIR_REQ, req);
    /* Re-feed the whole prefix; the parser now knows it answers a HEAD. */
    assert_int_equal(rs_http_feed(c, RS_DIR_RESP, ISN_RESP + 1, resp, strlen(resp)), (int)strlen(resp));
    assert_true(get(c, 0)->resp_done);
    assert_int_equal(get(c, 0)->resp_start, ISN_RESP + 1);
    assert_int_equal(get(c, 0)->resp_end, ISN_RESP + sizeof(resp));
    free(c);

    /* A server answering early (before the request body) and closing. */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\npart");
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert_true(get(c, 0)->resp_done);
    assert_false(get(c, 0)->req_done);
    assert_true(get(c, 0)->close);
    assert_int_equal(get(c, 0)->status, 413);
    free(c);
}

static void malformed_request(void **state)
{
    static const char *bad[] = {
        "G@T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/9x\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "\x01\x02\x03",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct evlog log;
        struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, &log);

        /* One good transaction first: it must survive the failure. */
        feed_ok(c, RS_DIR_REQ, "GET /ok HTTP/1.1\r\n\r\n");
        feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_int_equal(feed(c, RS_DIR_REQ, bad[i]), -EPROTO);
        assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_REQ_MALFORMED);
        assert_string_equal(rs_http_err_str(rs_http_conn_err(c)), "malformed request");
        assert_true(strlen(rs_http_conn_err_detail(c)) > 0);
        assert_int_equal(log.e[log.n - 1].ev, RS_HTTP_EV_ERROR);
        int events = log.n;
        uint32_t count = rs_http_txn_count(c);

        assert_true(get(c, 0)->resp_done);
        /* Nothing more comes out. */
        assert_int_equal(feed(c, RS_DIR_REQ, "GET / HTTP/1.1\r\n\r\n"), -EPROTO);
        assert_int_equal(feed(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\n\r\n"), -EPROTO);
        assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), -EPROTO);
        assert_int_equal(rs_http_txn_count(c), count);
        assert_int_equal(log.n, events);
        free(c);
    }
}

static void malformed_response(void **state)
{
    static const char *bad[] = {
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "XTTP/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\ngarbage",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

        feed_ok(c, RS_DIR_REQ, "GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        assert_int_equal(feed(c, RS_DIR_RESP, bad[i]), -EPROTO);
        assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_RESP_MALFORMED);
        assert_true(strlen(rs_http_conn_err_detail(c)) > 0);
        assert_int_equal(feed(c, RS_DIR_REQ, "GET / HTTP/1.1\r\n\r\n"), -EPROTO);
        assert_int_equal(rs_http_txn_count(c), 2);
        free(c);
    }
}

static void upgrade_is_untransactionalizable(void **state)
{
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

    (void)state;
    assert_int_equal(feed(c, RS_DIR_REQ, "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03"), -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_UPGRADE);
    assert_string_equal(rs_http_conn_err_detail(c), "");
    free(c);

    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    assert_int_equal(feed(c, RS_DIR_REQ,
                          "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
                     -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_UPGRADE);
    assert_true(get(c, 0)->req_done);
    free(c);

    /* An Upgrade request with a body is still HTTP until its body ends. */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "POST /h2 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                           "Content-Length: 3\r\n\r\na");
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_OK);
    assert_false(get(c, 0)->req_done);
    assert_int_equal(feed(c, RS_DIR_REQ, "bc"), -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_UPGRADE);
    assert_true(get(c, 0)->req_done);
    assert_int_equal(get(c, 0)->req_end, rs_http_next_seq(c, RS_DIR_REQ));
    free(c);

    /* A bare 101 (the parser does not flag it without Upgrade headers). */
    c = new_conn(ISN_REQ, ISN_RESP, NULL);
    feed_ok(c, RS_DIR_REQ, "GET /x HTTP/1.1\r\n\r\n");
    assert_int_equal(feed(c, RS_DIR_RESP, "HTTP/1.1 101 Switching Protocols\r\n\r\n"), -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_UPGRADE);
    assert_string_equal(rs_http_err_str(RS_HTTP_ERR_UPGRADE), "protocol upgrade");
    free(c);
}

static void too_many_pipelined(void **state)
{
    static const char req[] = "GET /p HTTP/1.1\r\n\r\n";
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

    (void)state;
    for (unsigned i = 0; i < RS_HTTP_MAX_INFLIGHT; i++)
        feed_ok(c, RS_DIR_REQ, req);
    assert_int_equal(rs_http_txn_count(c), RS_HTTP_MAX_INFLIGHT);
    /* One answered makes room for exactly one more. */
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    feed_ok(c, RS_DIR_REQ, req);
    assert_int_equal(feed(c, RS_DIR_REQ, req), -EPROTO);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_ERR_PIPELINE);
    assert_string_equal(rs_http_err_str(rs_http_conn_err(c)), "too many pipelined");
    assert_int_equal(rs_http_txn_count(c), RS_HTTP_MAX_INFLIGHT + 1);
    assert_non_null(rs_http_txn_get(c, 0));
    free(c);
}

static void ring_keeps_recent(void **state)
{
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);
    char req[64];

    (void)state;
    for (unsigned i = 0; i < 3 * RS_HTTP_TXN_RING; i++) {
        snprintf(req, sizeof(req), "GET /n%u HTTP/1.1\r\n\r\n", i);
        feed_ok(c, RS_DIR_REQ, req);
        feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    assert_int_equal(rs_http_txn_count(c), 3 * RS_HTTP_TXN_RING);
    assert_null(rs_http_txn_get(c, 2 * RS_HTTP_TXN_RING - 1));
    assert_non_null(rs_http_txn_get(c, 2 * RS_HTTP_TXN_RING));
    assert_null(rs_http_txn_get(c, 3 * RS_HTTP_TXN_RING));
    snprintf(req, sizeof(req), "/n%u", 3 * RS_HTTP_TXN_RING - 1);
    assert_string_equal(get(c, 3 * RS_HTTP_TXN_RING - 1)->target, req);
    /* Transaction numbers above 65535 wrap only in the 16-bit id field. */
    assert_true(get(c, 150)->id == rs_txn_id_make(IP4, PORT, 150));
    free(c);
}

static void long_target_truncated(void **state)
{
    char req[1024], path[600];
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);
    const struct rs_http_txn *t;

    (void)state;
    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\n\r\n", path);
    feed_bytewise(c, RS_DIR_REQ, req);
    t = get(c, 0);
    assert_true(t->target_truncated);
    assert_int_equal(t->target_len, RS_HTTP_TARGET_MAX - 1);
    assert_int_equal(strlen(t->target), RS_HTTP_TARGET_MAX - 1);
    assert_memory_equal(t->target, path, RS_HTTP_TARGET_MAX - 1);
    assert_true(t->req_done);

    /* Exactly RS_HTTP_TARGET_MAX - 1 bytes fit without truncation. */
    path[RS_HTTP_TARGET_MAX - 1] = '\0';
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\n\r\n", path);
    feed_ok(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    feed_ok(c, RS_DIR_REQ, req);
    assert_false(get(c, 1)->target_truncated);
    assert_string_equal(get(c, 1)->target, path);
    free(c);
}

static void eof_edge_cases(void **state)
{
    struct rs_http_conn *c = new_conn(ISN_REQ, ISN_RESP, NULL);

    (void)state;
    assert_int_equal(rs_http_txn_eof(c, (enum rs_http_dir)2), -EINVAL);
    /* Empty streams end cleanly. */
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_REQ), 0);
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_REQ), -EPIPE);
    assert_int_equal(feed(c, RS_DIR_REQ, "GET"), -EPIPE);
    assert_int_equal(rs_http_txn_count(c), 0);
    /* A response whose request never came: it ends waiting. */
    assert_true(feed(c, RS_DIR_RESP, "HTTP/1.1 200 OK\r\n\r\n") >= 0);
    assert_int_equal(rs_http_txn_eof(c, RS_DIR_RESP), 1);
    assert_int_equal(rs_http_conn_err(c), RS_HTTP_OK);
    free(c);
}

static void reason_phrases(void **state)
{
    (void)state;
    assert_string_equal(rs_http_reason(200), "OK");
    assert_string_equal(rs_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(rs_http_reason(502), "Bad Gateway");
    assert_string_equal(rs_http_reason(505), "HTTP Version Not Supported");
    assert_string_equal(rs_http_reason(299), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(content_length),
        cmocka_unit_test(chunked_extensions_trailers),
        cmocka_unit_test(head_has_no_body),
        cmocka_unit_test(no_body_statuses),
        cmocka_unit_test(expect_100_continue),
        cmocka_unit_test(pipelined_three),
        cmocka_unit_test(keep_alive_and_close),
        cmocka_unit_test(close_delimited_body),
        cmocka_unit_test(bytewise_equals_whole),
        cmocka_unit_test(seq_wrap),
        cmocka_unit_test(gaps_and_refeeding),
        cmocka_unit_test(response_before_request),
        cmocka_unit_test(malformed_request),
        cmocka_unit_test(malformed_response),
        cmocka_unit_test(upgrade_is_untransactionalizable),
        cmocka_unit_test(too_many_pipelined),
        cmocka_unit_test(ring_keeps_recent),
        cmocka_unit_test(long_target_truncated),
        cmocka_unit_test(eof_edge_cases),
        cmocka_unit_test(reason_phrases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
