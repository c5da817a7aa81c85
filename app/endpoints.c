/* rs-app endpoints: checkable static content, a counter (read-only GET,
 * update POST), a non-deterministic token, a slow chunked stream and a health
 * check.  Each ends in an ops table; app_serve routes a request through it. */
#include "app.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "parse.h"

#define M_GET  (1u << 0)
#define M_HEAD (1u << 1)
#define M_POST (1u << 2)

#define SLOW_DELAY_MAX 60000000000ull   /* 60 s think time: longer is a hang */

/* ---- Helpers ---------------------------------------------------------- */

/* Finds 'key' in the query string 'q' ("a=1&b=2") and copies its value into
 * 'val'.  Returns 1 if found, 0 if absent, -EINVAL if the value does not fit. */
static int query_get(const char *q, const char *key, char *val, size_t cap)
{
    size_t klen = strlen(key);

    while (q && *q) {
        const char *end = strchr(q, '&');
        size_t len = end ? (size_t)(end - q) : strlen(q);

        if (len > klen && strncmp(q, key, klen) == 0 && q[klen] == '=') {
            size_t vlen = len - klen - 1;

            if (vlen >= cap)
                return -EINVAL;
            memcpy(val, q + klen + 1, vlen);
            val[vlen] = '\0';
            return 1;
        }
        q = end ? end + 1 : NULL;
    }
    return 0;
}

/* Parses a decimal uint64 that is the whole of 'text'.  Returns 0 or -EINVAL. */
static int parse_u64(const char *text, uint64_t *v)
{
    char *end;

    if (*text < '0' || *text > '9')
        return -EINVAL;
    errno = 0;
    *v = strtoull(text, &end, 10);
    return errno || *end ? -EINVAL : 0;
}

/* Reads the optional 'seed' parameter.  Returns 0 or -EINVAL. */
static int query_seed(const char *query, uint64_t *seed)
{
    char val[32];
    int r = query_get(query, "seed", val, sizeof(val));

    *seed = 0;
    if (r < 0)
        return r;
    return r ? parse_u64(val, seed) : 0;
}

static void resp_text(struct app_conn *c, int status, const char *text)
{
    app_resp_small(c, status, "text/plain", NULL, text, strlen(text));
}

static void resp_bad_param(struct app_conn *c, const char *what)
{
    char body[96];

    snprintf(body, sizeof(body), "bad parameter: %s\n", what);
    resp_text(c, 400, body);
}

/* Hands state 'blob' of transaction c->req to the hooks.  Returns the
 * hook's answer (0 when there is no hook). */
static int state_update(struct rs_app *app, struct app_conn *c, const char *blob, int nondet)
{
    if (!app->hooks.txn_update)
        return 0;
    return app->hooks.txn_update(app->hooks.ctx, c->req.id, blob, strlen(blob), nondet);
}

/* Sends 'body' now, holds it for rs_app_txn_resume, or answers 503,
 * according to the hook's answer 'r'. */
static void resp_after_update(struct rs_app *app, struct app_conn *c, int r, const char *body)
{
    char id[RS_TXN_ID_STRLEN];

    if (r == RS_APP_HOOK_WAIT) {
        c->waiting = true;
        c->held_status = 200;
        snprintf(c->held_body, sizeof(c->held_body), "%s", body);
        return;
    }
    if (r < 0) {
        rs_txn_id_format(c->req.id, id, sizeof(id));
        rs_log("state-update-failed %s %s %s", id, c->who.name, strerror(-r));
        app->stats[ST_REQ_REJECTED]++;
        resp_text(c, 503, "state transfer failed\n");
        return;
    }
    resp_text(c, 200, body);
}

/* ---- Endpoints -------------------------------------------------------- */

/* Content types by extension, so /static can stand in for a site's files
 * (and tag rules like "GET /static/?*.css" have something to match). */
static const char *static_ctype(const char *ext)
{
    static const struct { const char *ext, *ctype; } types[] = {
        { "html", "text/html" }, { "css", "text/css" }, { "js", "application/javascript" },
        { "png", "image/png" }, { "gif", "image/gif" }, { "jpg", "image/jpeg" },
        { "txt", "text/plain" }, { "bin", "application/octet-stream" },
    };

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(ext, types[i].ext) == 0)
            return types[i].ctype;
    return NULL;
}

/* GET|HEAD /static/<size>[.<ext>][?seed=N]: 'size' bytes of checkable content. */
static void ep_static(struct rs_app *app, struct app_conn *c, const char *path, const char *query)
{
    char num[32];
    const char *arg = path + strlen("/static/"), *dot = strchr(arg, '.');
    const char *ctype = "text/plain";
    size_t nlen = dot ? (size_t)(dot - arg) : strlen(arg);
    uint64_t size, seed;

    app->stats[ST_REQ_STATIC]++;
    if (nlen == 0 || nlen >= sizeof(num))
        return resp_bad_param(c, "size");
    memcpy(num, arg, nlen);
    num[nlen] = '\0';
    if (rs_parse_size(num, &size) < 0 || size > APP_STATIC_MAX)
        return resp_bad_param(c, "size");
    if (dot && !(ctype = static_ctype(dot + 1)))
        return resp_bad_param(c, "extension");
    if (query_seed(query, &seed) < 0)
        return resp_bad_param(c, "seed");
    c->body = (struct app_body){ .kind = BODY_STATIC, .seed = seed, .total = size };
    app_resp_stream(c, 200, ctype, (int64_t)size);
}

/* GET|HEAD /counter reads; POST /counter increments (an update). */
static void ep_counter(struct rs_app *app, struct app_conn *c, const char *path, const char *query)
{
    char body[48];

    (void)path;
    (void)query;
    if (strcmp(c->req.method, "POST") != 0) {
        app->stats[ST_REQ_COUNTER_READ]++;
        snprintf(body, sizeof(body), "counter=%" PRIu64 "\n", app->counter);
        resp_text(c, 200, body);
        return;
    }
    app->stats[ST_REQ_COUNTER_UPDATE]++;
    app->counter++;
    snprintf(body, sizeof(body), "counter=%" PRIu64 "\n", app->counter);
    resp_after_update(app, c, state_update(app, c, APP_COUNTER_INCREMENT, 0), body);
}

/* GET|POST /token: 128 random bits.  On the alternate, a token recorded by
 * rs_app_state_apply for this transaction is answered instead. */
static void ep_token(struct rs_app *app, struct app_conn *c, const char *path, const char *query)
{
    char blob[RS_APP_STATE_MAX], hex[33], body[48];
    uint8_t raw[16];

    (void)path;
    (void)query;
    app->stats[ST_REQ_TOKEN]++;
    if (!app_token_take(app, c->req.id, hex)) {
        randombytes_buf(raw, sizeof(raw));
        sodium_bin2hex(hex, sizeof(hex), raw, sizeof(raw));
    }
    snprintf(blob, sizeof(blob), "token=%s", hex);
    snprintf(body, sizeof(body), "token=%s\n", hex);
    resp_after_update(app, c, state_update(app, c, blob, 1), body);
}

bool app_upload_seed(const char *url, uint64_t *seed)
{
    size_t n = strlen("/upload?");
    char val[32];

    return strncmp(url, "/upload?", n) == 0 && query_get(url + n, "seed", val, sizeof(val)) == 1 &&
           parse_u64(val, seed) == 0;
}

/* POST /upload?seed=N: a body of checkable content, checked as it streamed
 * in (http.c); a whole one increments the counter, an update like POST
 * /counter.  The alternate answers a replayed upload the same way, so a
 * failover that loses or garbles a request byte shows as a 400. */
static void ep_upload(struct rs_app *app, struct app_conn *c, const char *path, const char *query)
{
    char body[96];

    (void)path;
    (void)query;
    app->stats[ST_REQ_UPLOAD]++;
    if (!c->req.check_body)
        return resp_bad_param(c, "seed");
    if (c->req.body_bad >= 0) {
        snprintf(body, sizeof(body), "upload wrong at byte %" PRId64 "\n", c->req.body_bad);
        return resp_text(c, 400, body);
    }
    app->counter++;
    snprintf(body, sizeof(body), "upload=%" PRIu64 " counter=%" PRIu64 "\n", c->req.body_bytes, app->counter);
    resp_after_update(app, c, state_update(app, c, APP_COUNTER_INCREMENT, 0), body);
}

/* GET|HEAD /slow?bytes=N&chunk=K&delay=D[&seed=S]: N content bytes in chunks
 * of K, each after D of think time, so a crash can land mid-response. */
static void ep_slow(struct rs_app *app, struct app_conn *c, const char *path, const char *query)
{
    char val[32];
    uint64_t bytes = 4096, chunk = 1024, delay = 20000000, seed;
    int r;

    (void)path;
    app->stats[ST_REQ_SLOW]++;
    if ((r = query_get(query, "bytes", val, sizeof(val))) < 0 ||
        (r && (rs_parse_size(val, &bytes) < 0 || bytes > APP_STATIC_MAX)))
        return resp_bad_param(c, "bytes");
    if ((r = query_get(query, "chunk", val, sizeof(val))) < 0 ||
        (r && (rs_parse_size(val, &chunk) < 0 || chunk == 0 || chunk > APP_STATIC_MAX)))
        return resp_bad_param(c, "chunk");
    if ((r = query_get(query, "delay", val, sizeof(val))) < 0 ||
        (r && (rs_parse_duration(val, &delay) < 0 || delay > SLOW_DELAY_MAX)))
        return resp_bad_param(c, "delay");
    if (query_seed(query, &seed) < 0)
        return resp_bad_param(c, "seed");
    /* HTTP/1.0 has no chunked coding: same pacing, Content-Length framing. */
    c->body = (struct app_body){ .kind = BODY_SLOW, .seed = seed, .total = bytes,
                                 .chunk = chunk, .delay_ns = delay, .chunked = !c->req.http10 };
    app_resp_stream(c, 200, "text/plain", c->body.chunked ? -1 : (int64_t)bytes);
}

static void ep_health(struct rs_app *app, struct app_conn *c, const char *path, const char *query)
{
    (void)path;
    (void)query;
    app->stats[ST_REQ_HEALTH]++;
    resp_text(c, 200, "ok\n");
}

static const struct app_endpoint {
    const char *path;
    bool prefix;                /* 'path' is a prefix ("/static/...") */
    unsigned methods;           /* M_* */
    const char *allow;          /* for 405 */
    void (*run)(struct rs_app *app, struct app_conn *c, const char *path, const char *query);
} endpoints[] = {
    { "/static/", true, M_GET | M_HEAD, "GET, HEAD", ep_static },
    { "/counter", false, M_GET | M_HEAD | M_POST, "GET, HEAD, POST", ep_counter },
    { "/token", false, M_GET | M_POST, "GET, POST", ep_token },
    { "/upload", false, M_POST, "POST", ep_upload },
    { "/slow", false, M_GET | M_HEAD, "GET, HEAD", ep_slow },
    { "/health", false, M_GET | M_HEAD, "GET, HEAD", ep_health },
};

/* ---- Routing ---------------------------------------------------------- */

static unsigned method_bit(const char *m)
{
    return !strcmp(m, "GET") ? M_GET : !strcmp(m, "HEAD") ? M_HEAD : !strcmp(m, "POST") ? M_POST : 0;
}

/* Copies URL field 'f' of c->req.url into 'out' (cap APP_URL_MAX). */
static void url_field(const struct app_conn *c, const struct http_parser_url *u,
                      enum http_parser_url_fields f, char *out)
{
    size_t len = 0;

    if (u->field_set & (1u << f)) {
        len = u->field_data[f].len;
        memcpy(out, c->req.url + u->field_data[f].off, len);
    }
    out[len] = '\0';
}

void app_serve(struct rs_app *app, struct app_conn *c)
{
    static char path[APP_URL_MAX], query[APP_URL_MAX];     /* one request at a time */
    struct http_parser_url u;
    char extra[64];

    http_parser_url_init(&u);
    if (http_parser_parse_url(c->req.url, c->req.url_len, 0, &u) != 0 ||
        !(u.field_set & (1u << UF_PATH))) {
        c->closing = true;
        app->stats[ST_BAD_REQUEST]++;
        resp_text(c, 400, "bad request target\n");
        return;
    }
    url_field(c, &u, UF_PATH, path);
    url_field(c, &u, UF_QUERY, query);

    if (app->hooks.txn_begin) {
        int r = app->hooks.txn_begin(app->hooks.ctx, c->req.id, c->req.method, c->req.url);

        if (r < 0) {
            char id[RS_TXN_ID_STRLEN];

            rs_txn_id_format(c->req.id, id, sizeof(id));
            rs_log("txn-refused %s %s %s", id, c->who.name, strerror(-r));
            app->stats[ST_REQ_REJECTED]++;
            resp_text(c, 503, "refused\n");
            return;
        }
    }
    c->req.hooked = true;

    for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++) {
        const struct app_endpoint *ep = &endpoints[i];

        if (ep->prefix ? strncmp(path, ep->path, strlen(ep->path)) != 0 : strcmp(path, ep->path) != 0)
            continue;
        if (!(method_bit(c->req.method) & ep->methods)) {
            app->stats[ST_REQ_OTHER]++;
            snprintf(extra, sizeof(extra), "Allow: %s\r\n", ep->allow);
            app_resp_small(c, 405, "text/plain", extra, "method not allowed\n", 19);
            return;
        }
        ep->run(app, c, path, query);
        return;
    }
    app->stats[ST_REQ_OTHER]++;
    resp_text(c, 404, "not found\n");
}
