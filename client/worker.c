/* One replaying connection of rs-client: runs the trace --repeat times, one
 * persistent connection per run, step by step (think, connect, send, read,
 * verify), classifies every failure, retries like a browser with --browser,
 * and writes one CSV row per request. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "client.h"

#include "content.h"
#include "txn_id.h"

const char *rs_cl_result_str(enum rs_cl_result r)
{
    static const char *const names[RS_CL_N_RESULTS] = {
        [RS_CL_OK] = "ok", [RS_CL_BAD_STATUS] = "bad-status", [RS_CL_BAD_LENGTH] = "bad-length",
        [RS_CL_BAD_CONTENT] = "bad-content", [RS_CL_MISSING_MARKER] = "missing-marker",
        [RS_CL_LOGIN] = "login",
        [RS_CL_BAD_CAPTURE] = "bad-capture", [RS_CL_BAD_RESPONSE] = "bad-response",
        [RS_CL_RESET] = "reset", [RS_CL_TIMEOUT] = "timeout", [RS_CL_EOF] = "eof",
        [RS_CL_CONNECT_FAILED] = "connect-failed", [RS_CL_BAD_TRACE] = "bad-trace",
    };
    return (unsigned)r < RS_CL_N_RESULTS ? names[r] : "?";
}

/* Longest back-off between --browser retries. */
#define BACKOFF_MAX_NS 2000000000ull

static void start_step__(struct rs_cl *cl, struct rs_cl_worker *w);
static void attempt__(struct rs_cl *cl, struct rs_cl_worker *w);

static const struct rs_trace_step *step__(const struct rs_cl *cl, const struct rs_cl_worker *w)
{
    return &cl->trace->steps[w->step];
}

/* "ip:port#n" of the request in flight (n counts from 0 per connection). */
static const char *txn__(const struct rs_cl_worker *w, char *buf, size_t len)
{
    if (w->lport == 0 || w->conn_txns == 0 || rs_txn_id_format(
            rs_txn_id_make(w->lip, w->lport, (uint16_t)(w->conn_txns - 1)), buf, len) < 0)
        snprintf(buf, len, "-");
    return buf;
}

/* Closes the socket but keeps its identity (local address, request count)
 * for the CSV row and log lines still to come; connect__ resets it. */
static void close_conn__(struct rs_cl_worker *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
}

int rs_cl_worker_init(struct rs_cl *cl, struct rs_cl_worker *w, unsigned idx)
{
    (void)cl;
    memset(w, 0, sizeof(*w));
    w->idx = idx;
    w->fd = -1;
    w->state = RS_CL_W_DONE;
    return 0;
}

void rs_cl_worker_stop(struct rs_cl *cl, struct rs_cl_worker *w)
{
    if (w->state != RS_CL_W_DONE) {
        rs_cl_log(cl, w, "abandoned state=%d (stopping)", (int)w->state);
        w->state = RS_CL_W_DONE;
        cl->n_done++;
    }
    close_conn__(w);
    rs_cl_resp_free(&w->resp);
    free(w->req);
    free(w->target);
    w->req = w->target = NULL;
    w->req_cap = w->target_cap = 0;
}

short rs_cl_worker_pollmask(const struct rs_cl_worker *w)
{
    switch (w->state) {
    case RS_CL_W_CONNECTING: return POLLOUT;
    case RS_CL_W_SENDING: return POLLOUT | POLLIN;
    case RS_CL_W_RECEIVING: return POLLIN;
    default: return 0;
    }
}

/* ---- Statistics and CSV ------------------------------------------------- */

static void push__(double **arr, size_t *n, size_t *cap, double v)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        double *na = realloc(*arr, nc * sizeof(**arr));
        if (!na)
            return;             /* lose a sample rather than the run */
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = v;
}

/* Writes 's' as one CSV field, quoted when it needs to be (RFC 4180). */
static void csv_field__(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void record__(struct rs_cl *cl, struct rs_cl_worker *w, enum rs_cl_result res,
                     uint64_t end_us)
{
    const struct rs_trace_step *st = step__(cl, w);
    char txn[RS_TXN_ID_STRLEN];

    cl->st.requests++;
    if (res == RS_CL_OK) {
        cl->st.ok++;
        push__(&cl->st.lat_ms, &cl->st.n_lat, &cl->st.cap_lat,
               (double)(rs_mono_ns() - w->t_start_ns) / 1e6);
    } else {
        cl->st.errors++;
        if (!rs_cl_result_transport(res))
            cl->st.verify_failed++;
    }
    if (!cl->csv)
        return;
    fprintf(cl->csv, "%u,%u,%u,", w->run, w->idx, w->step);
    csv_field__(cl->csv, rs_trace_text(cl->trace, st->method));
    fputc(',', cl->csv);
    csv_field__(cl->csv, w->target ? w->target : rs_trace_text(cl->trace, st->target));
    fprintf(cl->csv, ",%llu,%llu,%llu,%d,%llu,%s,%u,%u,%s\n",
            (unsigned long long)w->t_start_us, (unsigned long long)w->t_first_us,
            (unsigned long long)end_us, w->resp.status,
            (unsigned long long)w->resp.body_bytes, rs_cl_result_str(res), w->lport, w->retries,
            txn__(w, txn, sizeof(txn)));
}

/* ---- Runs --------------------------------------------------------------- */

static void start_run__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    w->step = 0;
    w->run_failed = false;
    w->run_start_ns = rs_mono_ns();
    /* Each run is a fresh browser session: -D values only, empty jar. */
    memcpy(&w->vars, &cl->defs, sizeof(w->vars));
    rs_cl_jar_clear(&w->jar);
    rs_cl_log(cl, w, "run-start");
    start_step__(cl, w);
}

static void end_run__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    double ms = (double)(rs_mono_ns() - w->run_start_ns) / 1e6;

    close_conn__(w);            /* one connection per run */
    cl->st.runs++;
    if (!w->run_failed) {
        cl->st.runs_ok++;
        push__(&cl->st.action_ms, &cl->st.n_action, &cl->st.cap_action, ms);
    }
    rs_cl_log(cl, w, "run-end result=%s steps=%u ms=%.3f", w->run_failed ? "failed" : "ok",
              w->step, ms);
    w->run++;
    if (w->run >= cl->repeat) {
        w->state = RS_CL_W_DONE;
        w->deadline = 0;
        cl->n_done++;
        return;
    }
    /* Always through the loop's timer, even without a pause: a run that
     * fails synchronously (refused connect) must not recurse into the next. */
    w->state = RS_CL_W_PAUSE;
    w->deadline = rs_mono_ns() + cl->trace->tail_think_ns;
}

void rs_cl_worker_start(struct rs_cl *cl, struct rs_cl_worker *w)
{
    w->run = 0;
    start_run__(cl, w);
}

/* The step is over: one CSV row, then the next step or the end of the run
 * (any failure ends the run: later steps may depend on this one). */
static void finish_step__(struct rs_cl *cl, struct rs_cl_worker *w, enum rs_cl_result res,
                          const char *why)
{
    uint64_t end_us = rs_now_us();
    char txn[RS_TXN_ID_STRLEN];

    record__(cl, w, res, end_us);
    if (res != RS_CL_OK || !cl->quiet)
        rs_cl_log(cl, w, "%s %s %s txn=%s status=%d bytes=%llu ms=%.3f retries=%u%s%s",
                  res == RS_CL_OK ? "response" : "request-failed", rs_cl_result_str(res),
                  rs_trace_text(cl->trace, step__(cl, w)->method), txn__(w, txn, sizeof(txn)),
                  w->resp.status, (unsigned long long)w->resp.body_bytes,
                  (double)(rs_mono_ns() - w->t_start_ns) / 1e6, w->retries,
                  why && *why ? " why=" : "", why ? why : "");
    if (res != RS_CL_OK) {
        w->run_failed = true;
        end_run__(cl, w);
        return;
    }
    w->step++;
    if (w->step >= cl->trace->n_steps) {
        end_run__(cl, w);
        return;
    }
    start_step__(cl, w);
}

/* ---- Building the request ------------------------------------------------ */

static int reserve__(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < need)
        nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
        return -ENOMEM;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* Appends 'in' with placeholders filled to the request buffer. */
static int put_subst__(struct rs_cl_worker *w, const char *in, size_t len, char *missing)
{
    int n = rs_trace_subst(&w->vars, in, len, NULL, 0, missing);

    if (n < 0)
        return n;
    if (reserve__(&w->req, &w->req_cap, w->req_len + (size_t)n + 1))
        return -ENOMEM;
    rs_trace_subst(&w->vars, in, len, w->req + w->req_len, (size_t)n + 1, missing);
    w->req_len += (size_t)n;
    return n;
}

static int put__(struct rs_cl_worker *w, const char *s, size_t len)
{
    if (reserve__(&w->req, &w->req_cap, w->req_len + len + 1))
        return -ENOMEM;
    memcpy(w->req + w->req_len, s, len);
    w->req_len += len;
    return 0;
}

static int puts__(struct rs_cl_worker *w, const char *s)
{
    return put__(w, s, strlen(s));
}

static bool has_header__(const struct rs_trace *t, const struct rs_trace_step *st,
                         const char *name)
{
    for (unsigned k = 0; k < st->n_headers; k++)
        if (strcasecmp(rs_trace_text(t, st->headers[k].name), name) == 0)
            return true;
    return false;
}

/* Builds the request of the current step into w->req.  Headers the trace
 * does not set itself: Host, User-Agent, Cookie (from the jar) and
 * Content-Length (for a body, or for POST/PUT/PATCH).
 * Returns 0, or -EINVAL with 'why' filled (unset placeholder, or a filled
 * value that would break the request line or a header). */
static int build__(struct rs_cl *cl, struct rs_cl_worker *w, char *why, size_t why_len)
{
    const struct rs_trace *t = cl->trace;
    const struct rs_trace_step *st = step__(cl, w);
    const char *method = rs_trace_text(t, st->method), *target = rs_trace_text(t, st->target);
    char missing[RS_TRACE_NAME_MAX], num[32], cookie[4096];
    size_t mark;
    int n;

    w->req_len = 0;
    w->req_off = 0;
    if (puts__(w, method) || puts__(w, " "))
        goto nomem;
    mark = w->req_len;
    if ((n = put_subst__(w, target, strlen(target), missing)) < 0) {
        snprintf(why, why_len, "line %u: target: placeholder %s%s%s", st->line,
                 n == -ENOENT ? "${" : "", n == -ENOENT ? missing : "malformed",
                 n == -ENOENT ? "} not set" : "");
        return -EINVAL;
    }
    if (reserve__(&w->target, &w->target_cap, (size_t)n + 1))
        goto nomem;
    memcpy(w->target, w->req + mark, (size_t)n);
    w->target[n] = '\0';
    if (strpbrk(w->target, " \t\r\n") || n == 0) {
        snprintf(why, why_len, "line %u: target \"%.80s\" is empty or holds blanks", st->line,
                 w->target);
        return -EINVAL;
    }
    if (puts__(w, " HTTP/1.1\r\n"))
        goto nomem;
    if (!has_header__(t, st, "Host") &&
        (puts__(w, "Host: ") || puts__(w, cl->host) || puts__(w, "\r\n")))
        goto nomem;
    if (!has_header__(t, st, "User-Agent") && puts__(w, "User-Agent: rs-client\r\n"))
        goto nomem;
    for (unsigned k = 0; k < st->n_headers; k++) {
        const char *v = rs_trace_text(t, st->headers[k].value);
        if (puts__(w, rs_trace_text(t, st->headers[k].name)) || puts__(w, ": "))
            goto nomem;
        mark = w->req_len;
        if ((n = put_subst__(w, v, strlen(v), missing)) < 0) {
            snprintf(why, why_len, "line %u: header: placeholder ${%s} not set",
                     st->headers[k].line, n == -ENOENT ? missing : "?");
            return -EINVAL;
        }
        if (memchr(w->req + mark, '\r', (size_t)n) || memchr(w->req + mark, '\n', (size_t)n)) {
            snprintf(why, why_len, "line %u: header value holds a line break after filling",
                     st->headers[k].line);
            return -EINVAL;
        }
        if (puts__(w, "\r\n"))
            goto nomem;
    }
    if (!has_header__(t, st, "Cookie")) {
        size_t cl_len = rs_cl_jar_header(&w->jar, time(NULL), cookie, sizeof(cookie));
        if (cl_len >= sizeof(cookie)) {
            snprintf(why, why_len, "cookies exceed %zu bytes", sizeof(cookie));
            return -EINVAL;
        }
        if (cl_len && (puts__(w, "Cookie: ") || put__(w, cookie, cl_len) || puts__(w, "\r\n")))
            goto nomem;
    }
    /* The body goes after the head; its length is only known once filled,
     * so fill it first at the end of the buffer and move it. */
    size_t head_len = w->req_len;
    size_t body_len = 0;
    if (st->has_body) {
        if ((n = put_subst__(w, rs_trace_text(t, st->body), st->body_len, missing)) < 0) {
            snprintf(why, why_len, "line %u: body: placeholder ${%s} not set", st->body_line,
                     n == -ENOENT ? missing : "?");
            return -EINVAL;
        }
        body_len = (size_t)n;
    } else if (st->has_fill) {
        if (reserve__(&w->req, &w->req_cap, w->req_len + st->fill_len + 1))
            goto nomem;
        rs_content_fill(st->fill_seed, 0, (uint8_t *)w->req + w->req_len, st->fill_len);
        w->req_len += st->fill_len;
        body_len = st->fill_len;
    }
    bool want_cl = st->has_body || st->has_fill || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                   strcmp(method, "PATCH") == 0;
    char extra[64];
    size_t extra_len = 0;
    if (want_cl && !has_header__(t, st, "Content-Length") &&
        !has_header__(t, st, "Transfer-Encoding")) {
        snprintf(num, sizeof(num), "%zu", body_len);
        extra_len = (size_t)snprintf(extra, sizeof(extra), "Content-Length: %s\r\n", num);
    }
    extra[extra_len] = '\0';
    extra_len += 2;             /* the blank line */
    if (reserve__(&w->req, &w->req_cap, w->req_len + extra_len + 1))
        goto nomem;
    memmove(w->req + head_len + extra_len, w->req + head_len, body_len);
    memcpy(w->req + head_len, extra, extra_len - 2);
    memcpy(w->req + head_len + extra_len - 2, "\r\n", 2);
    w->req_len += extra_len;
    w->idempotent = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ||
                    strcmp(method, "OPTIONS") == 0 || strcmp(method, "TRACE") == 0 ||
                    strcmp(method, "PUT") == 0 || strcmp(method, "DELETE") == 0;
    return 0;
nomem:
    snprintf(why, why_len, "out of memory");
    return -EINVAL;
}

static enum rs_cl_result errno_result__(int err)
{
    switch (err) {
    case ETIMEDOUT: return RS_CL_TIMEOUT;       /* the kernel gave up retransmitting */
    case ECONNREFUSED: case ENETUNREACH: case EHOSTUNREACH: return RS_CL_CONNECT_FAILED;
    default: return RS_CL_RESET;                /* ECONNRESET, EPIPE, ECONNABORTED ... */
    }
}

/* ---- Steps and attempts ------------------------------------------------- */

static void begin_send__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    char why[200] = "";

    w->retries = 0;
    w->t_start_us = rs_now_us();
    w->t_start_ns = rs_mono_ns();
    w->t_first_us = 0;
    rs_cl_resp_init(&w->resp, step__(cl, w), false);
    if (build__(cl, w, why, sizeof(why))) {
        finish_step__(cl, w, RS_CL_BAD_TRACE, why);
        return;
    }
    attempt__(cl, w);
}

static void start_step__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    const struct rs_trace_step *st = step__(cl, w);

    if (w->target)
        w->target[0] = '\0';
    if (st->think_ns) {
        w->state = RS_CL_W_THINK;
        w->deadline = rs_mono_ns() + st->think_ns;
        return;
    }
    begin_send__(cl, w);
}

/* A transport failure or a broken response ends this attempt.  --browser
 * retries transport failures on a new connection: at once when a reused
 * keep-alive connection failed before any response byte (browsers resend
 * silently then: the server may just have closed it), otherwise after a
 * back-off that doubles (a user reloading). */
static void attempt_failed__(struct rs_cl *cl, struct rs_cl_worker *w, enum rs_cl_result res,
                             const char *why)
{
    char txn[RS_TXN_ID_STRLEN];
    bool reused = w->conn_txns > 1, got_bytes = w->t_first_us != 0;
    bool may_retry = cl->browser && rs_cl_result_transport(res) &&
                     (w->idempotent || cl->retry_post) && w->retries < cl->max_retries;

    switch (res) {
    case RS_CL_RESET: cl->st.resets++; break;
    case RS_CL_TIMEOUT: cl->st.timeouts++; break;
    case RS_CL_EOF: cl->st.eofs++; break;
    case RS_CL_CONNECT_FAILED: cl->st.connect_failed++; break;
    default: break;
    }
    rs_cl_log(cl, w, "%s txn=%s lport=%u sent=%zu/%zu got_bytes=%d reused=%d %s%s",
              rs_cl_result_str(res), txn__(w, txn, sizeof(txn)), w->lport, w->req_off,
              w->req_len, got_bytes, reused, why ? why : "", may_retry ? " (retrying)" : "");
    close_conn__(w);
    if (!may_retry) {
        finish_step__(cl, w, res, why);
        return;
    }
    w->retries++;
    cl->st.retries++;
    uint64_t b = cl->backoff_ns;
    for (unsigned i = 1; i < w->retries && b < BACKOFF_MAX_NS; i++)
        b *= 2;
    if (b > BACKOFF_MAX_NS)
        b = BACKOFF_MAX_NS;
    if (reused && !got_bytes && w->retries == 1)
        b = 0;                  /* a stale keep-alive connection: resend at once */
    w->state = RS_CL_W_BACKOFF;
    w->deadline = rs_mono_ns() + b;
    rs_cl_log(cl, w, "retry n=%u backoff_ms=%.1f", w->retries, (double)b / 1e6);
}

/* A kept-alive connection the server may have closed while we were idle:
 * peek without blocking.  Returns true when it still looks usable. */
static bool conn_alive__(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Local address of the connection, so rows and logs match pcaps. */
static void local_addr__(struct rs_cl_worker *w)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (getsockname(w->fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
            w->lip = ntohl(a->sin_addr.s_addr);
            w->lport = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            w->lport = ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
}

static void connected__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    local_addr__(w);
    if (!cl->quiet)
        rs_cl_log(cl, w, "connected lport=%u", w->lport);
    w->state = RS_CL_W_SENDING;
    w->deadline = rs_mono_ns() + cl->timeout_ns;
}

static void connect__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    int one = 1;
    char why[128];

    w->lport = 0;
    w->lip = 0;
    w->conn_txns = 0;
    w->fd = socket(cl->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (w->fd < 0) {
        snprintf(why, sizeof(why), "socket: %s", strerror(errno));
        attempt_failed__(cl, w, RS_CL_CONNECT_FAILED, why);
        return;
    }
    /* Requests go out whole; do not let Nagle hold a body's tail. */
    setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(w->fd, (const struct sockaddr *)&cl->addr, cl->addr_len) == 0) {
        connected__(cl, w);
        return;
    }
    if (errno != EINPROGRESS) {
        int err = errno;
        snprintf(why, sizeof(why), "connect: %s", strerror(err));
        attempt_failed__(cl, w, err == ETIMEDOUT ? RS_CL_TIMEOUT : RS_CL_CONNECT_FAILED, why);
        return;
    }
    local_addr__(w);            /* the SYN is out: its port is known */
    w->state = RS_CL_W_CONNECTING;
    w->deadline = rs_mono_ns() + cl->timeout_ns;
}

static void attempt__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    w->req_off = 0;
    w->t_first_us = 0;
    rs_cl_resp_init(&w->resp, step__(cl, w),
                    strcmp(rs_trace_text(cl->trace, step__(cl, w)->method), "HEAD") == 0);
    if (w->fd >= 0 && !conn_alive__(w->fd)) {
        rs_cl_log(cl, w, "stale connection lport=%u closed by server while idle: reconnecting",
                  w->lport);
        close_conn__(w);
    }
    if (w->fd < 0) {
        connect__(cl, w);
        return;
    }
    w->state = RS_CL_W_SENDING;
    w->deadline = rs_mono_ns() + cl->timeout_ns;
}

/* ---- I/O ---------------------------------------------------------------- */

static void complete__(struct rs_cl *cl, struct rs_cl_worker *w, bool reusable)
{
    char why[200] = "";
    enum rs_cl_result res;
    unsigned from = 0;
    size_t len;
    const char *v;
    time_t now = time(NULL);

    /* Cookies first: a failing response may still set them, and browsers
     * store them whatever the status. */
    while ((v = rs_cl_resp_header(&w->resp, "Set-Cookie", &from, &len))) {
        int r = rs_cl_jar_set(&w->jar, v, len, now);
        if (r < 0)
            rs_cl_log(cl, w, "cookie refused (%s): %.80s", strerror(-r), v);
    }
    if (w->resp.bad_header)
        rs_cl_log(cl, w, "response headers beyond %u or %u bytes dropped", RS_CL_RESP_HEADERS,
                  RS_CL_HEADER_TEXT);
    res = rs_cl_resp_verify(&w->resp, cl->trace, &cl->re[w->step * RS_TRACE_MAX_CAPTURES],
                            &w->vars, why, sizeof(why));
    /* A failed check on a page that asks the user to log in: the session
     * is gone (the baselines' forced re-login), not a wrong page. */
    if (cl->login_marker && (res == RS_CL_BAD_STATUS || res == RS_CL_MISSING_MARKER || res == RS_CL_BAD_CAPTURE)
        && w->resp.body_len && memmem(w->resp.body, w->resp.body_len, cl->login_marker, strlen(cl->login_marker)))
        res = RS_CL_LOGIN;
    if (!reusable || !w->resp.keep_alive || w->req_off < w->req_len)
        close_conn__(w);
    finish_step__(cl, w, res, why);
}

/* After send/recv set errno: returns 1 to try again at once (EINTR), 0 to
 * wait for poll (EAGAIN), -1 when the attempt failed (reported). */
static int io_failed__(struct rs_cl *cl, struct rs_cl_worker *w, const char *op)
{
    int err = errno;
    char why[64];

    if (err == EAGAIN || err == EWOULDBLOCK)
        return 0;
    if (err == EINTR)
        return 1;
    snprintf(why, sizeof(why), "%s: %s", op, strerror(err));
    attempt_failed__(cl, w, errno_result__(err), why);
    return -1;
}

static void on_writable__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    while (w->req_off < w->req_len) {
        ssize_t n = send(w->fd, w->req + w->req_off, w->req_len - w->req_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (io_failed__(cl, w, "send") > 0)
                continue;
            return;
        }
        if (w->req_off == 0)
            w->conn_txns++;
        w->req_off += (size_t)n;
        w->deadline = rs_mono_ns() + cl->timeout_ns;
    }
    w->state = RS_CL_W_RECEIVING;
}

static void on_readable__(struct rs_cl *cl, struct rs_cl_worker *w)
{
    static char buf[65536];     /* one loop, one thread: shared by all */

    /* A bounded number of reads per wake-up keeps the other connections fed. */
    for (int round = 0; round < 16; round++) {
        ssize_t n = recv(w->fd, buf, sizeof(buf), 0);
        size_t used;
        int r;

        if (n < 0) {
            if (io_failed__(cl, w, "recv") > 0)
                continue;
            return;
        }
        if (n == 0) {
            if (rs_cl_resp_eof(&w->resp) == 1) {
                complete__(cl, w, false);       /* close-delimited body */
                return;
            }
            attempt_failed__(cl, w, RS_CL_EOF,
                             w->t_first_us ? "server closed mid-response"
                                           : "server closed before responding");
            return;
        }
        if (w->t_first_us == 0)
            w->t_first_us = rs_now_us();
        w->deadline = rs_mono_ns() + cl->timeout_ns;
        r = rs_cl_resp_feed(&w->resp, buf, (size_t)n, &used);
        if (r < 0) {
            char why[128];
            snprintf(why, sizeof(why), "malformed response: %s", rs_cl_resp_error(&w->resp));
            /* Not a transport failure: retrying would not make it HTTP. */
            attempt_failed__(cl, w, RS_CL_BAD_RESPONSE, why);
            return;
        }
        if (r == 1) {
            if (used < (size_t)n)
                rs_cl_log(cl, w, "%zu unsolicited bytes after the response: not reusing the connection",
                          (size_t)n - used);
            complete__(cl, w, used == (size_t)n);
            return;
        }
    }
}

void rs_cl_worker_events(struct rs_cl *cl, struct rs_cl_worker *w, short revents)
{
    if (w->state == RS_CL_W_CONNECTING) {
        int err = rs_sock_error(w->fd);

        if (err) {
            char why[64];
            snprintf(why, sizeof(why), "connect: %s", strerror(err));
            attempt_failed__(cl, w, err == ETIMEDOUT ? RS_CL_TIMEOUT : RS_CL_CONNECT_FAILED, why);
            return;
        }
        connected__(cl, w);
        return;
    }
    /* Read first: a response (or the RST's error) may already be queued. */
    if ((revents & (POLLIN | POLLERR | POLLHUP)) &&
        (w->state == RS_CL_W_SENDING || w->state == RS_CL_W_RECEIVING)) {
        on_readable__(cl, w);
        if (w->state != RS_CL_W_SENDING && w->state != RS_CL_W_RECEIVING)
            return;
    }
    if ((revents & POLLOUT) && w->state == RS_CL_W_SENDING)
        on_writable__(cl, w);
}

void rs_cl_worker_timer(struct rs_cl *cl, struct rs_cl_worker *w)
{
    char why[96];

    w->deadline = 0;
    switch (w->state) {
    case RS_CL_W_THINK:
        begin_send__(cl, w);
        break;
    case RS_CL_W_PAUSE:
        start_run__(cl, w);
        break;
    case RS_CL_W_BACKOFF:
        attempt__(cl, w);
        break;
    case RS_CL_W_CONNECTING:
    case RS_CL_W_SENDING:
    case RS_CL_W_RECEIVING:
        snprintf(why, sizeof(why), "no progress for %.3f s while %s", (double)cl->timeout_ns / 1e9,
                 w->state == RS_CL_W_CONNECTING ? "connecting"
                 : w->state == RS_CL_W_SENDING ? "sending" : "waiting for the response");
        attempt_failed__(cl, w, RS_CL_TIMEOUT, why);
        break;
    case RS_CL_W_DONE:
        break;
    }
}
