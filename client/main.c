/* rs-client: replays a request trace (core/trace.h) against one server over
 * persistent HTTP/1.1 connections, verifies every response, writes one CSV
 * row per request and ends with a "summary:" line.  Options and the single
 * ppoll() loop live here; one connection's life is in worker.c. */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "options.h"
#include "parse.h"

/* A trace file larger than this is surely not a trace. */
#define TRACE_FILE_MAX (16u << 20)

static volatile sig_atomic_t stop_signal;

void rs_cl_log(const struct rs_cl *cl, const struct rs_cl_worker *w, const char *fmt, ...)
{
    char msg[900];
    va_list ap;

    (void)cl;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (w)
        rs_log("conn=%u run=%u step=%u %s", w->idx, w->run, w->step, msg);
    else
        rs_log("%s", msg);
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: rs-client --server ADDR:PORT --trace FILE [options]\n"
"\n"
"Replays the requests of a trace file over persistent HTTP/1.1 connections,\n"
"verifies each response and times it.  Trace format: see core/trace.h.\n"
"\n"
"  --server ADDR:PORT    server to connect to ([v6addr]:port for IPv6)\n"
"  --trace FILE          the request trace\n"
"  --repeat N            runs of the trace per connection (default 1)\n"
"  --connections N       parallel copies of the trace, each on its own\n"
"                        connection (default 1)\n"
"  --csv FILE            one row per request: run,connection,step,method,target,\n"
"                        start_us,first_byte_us,end_us (CLOCK_REALTIME),status,\n"
"                        bytes (body),result,local_port,retries,txn\n"
"  --timeout DUR         fail a request after DUR without any byte moving\n"
"                        (connect, send or receive; default 10s)\n"
"  --browser             on a reset, timeout, early close or failed connect,\n"
"                        retry on a new connection like a browser would\n"
"  --retry-post          with --browser, retry POST (and other non-idempotent\n"
"                        methods) too, as browsers do after a reset\n"
"  --retries N           retries per request with --browser (default 3)\n"
"  --backoff DUR         first retry delay, doubling, at most 2s (default 100ms)\n"
"  --login-marker TEXT   a response that fails its checks and contains TEXT (the\n"
"                        application's login form) counts as 'login': the session\n"
"                        was lost and the user must log in again\n"
"  -D, --define NAME=VALUE  value of ${NAME} in the trace\n"
"  --host NAME           Host header (default: the --server text)\n"
"  --quiet               log only failures, retries and runs\n"
"  --help                this text\n"
"\n"
"Results: ok bad-status bad-length bad-content missing-marker bad-capture\n"
"bad-response reset timeout eof connect-failed bad-trace login.  Without --browser a\n"
"failed request ends its run (the next run starts on a new connection).\n"
"Cookies are kept per run; each run starts from the -D values only.\n"
"The last stdout line is 'summary: runs= requests= ok= errors= resets=\n"
"timeouts= retries= p50_ms= p95_ms= action_ms_median= ...' where resets,\n"
"timeouts, eofs and connect_failed count every failed attempt (retried or\n"
"not), p50/p95 are over ok requests and the action time over ok runs.\n"
"Exit status: 0 all runs ok, 1 a request failed or interrupted, 2 bad usage.\n");
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
    char *e;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &e, 10);
    if (errno || e == s || *e || *s == '-' || v < min || v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

static int parse_server(const char *s, void *dst)
{
    struct rs_cl *cl = dst;
    char host[256];
    const char *port;
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *ai;
    size_t hl;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -EINVAL;
        hl = (size_t)(rb - s - 1);
        if (hl >= sizeof(host))
            return -EINVAL;
        memcpy(host, s + 1, hl);
        port = rb + 2;
    } else {
        const char *c = strrchr(s, ':');
        if (!c)
            return -EINVAL;
        hl = (size_t)(c - s);
        if (hl >= sizeof(host))
            return -EINVAL;
        memcpy(host, s, hl);
        port = c + 1;
    }
    host[hl] = '\0';
    if (!*port || getaddrinfo(host, port, &hints, &ai) != 0)
        return -EINVAL;
    memcpy(&cl->addr, ai->ai_addr, ai->ai_addrlen);
    cl->addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    snprintf(cl->server, sizeof(cl->server), "%s", s);
    return 0;
}

/* Reads, parses and checks the trace; compiles the capture expressions.
 * Returns 0, or -1 after printing "FILE:LINE: message". */
static int load_trace(struct rs_cl *cl)
{
    struct rs_trace_err err;
    FILE *f = fopen(cl->trace_path, "rb");
    char *text;
    size_t len;

    if (!f) {
        fprintf(stderr, "rs-client: %s: %s\n", cl->trace_path, strerror(errno));
        return -1;
    }
    text = malloc(TRACE_FILE_MAX + 1);
    if (!text) {
        fclose(f);
        return -1;
    }
    len = fread(text, 1, TRACE_FILE_MAX + 1, f);
    fclose(f);
    if (len > TRACE_FILE_MAX) {
        fprintf(stderr, "rs-client: %s: larger than %u bytes\n", cl->trace_path, TRACE_FILE_MAX);
        free(text);
        return -1;
    }
    cl->trace = malloc(sizeof(*cl->trace));
    if (!cl->trace || rs_trace_parse(cl->trace, text, len, &err)) {
        if (cl->trace)
            fprintf(stderr, "rs-client: %s:%u: %s\n", cl->trace_path, err.line, err.msg);
        free(text);
        return -1;
    }
    free(text);
    if (cl->trace->n_steps == 0) {
        fprintf(stderr, "rs-client: %s: no request in the trace\n", cl->trace_path);
        return -1;
    }
    if (rs_trace_check_vars(cl->trace, &cl->defs, &err)) {
        fprintf(stderr, "rs-client: %s:%u: %s\n", cl->trace_path, err.line, err.msg);
        return -1;
    }
    cl->re = calloc((size_t)cl->trace->n_steps * RS_TRACE_MAX_CAPTURES, sizeof(regex_t));
    if (!cl->re)
        return -1;
    for (unsigned s = 0; s < cl->trace->n_steps; s++) {
        const struct rs_trace_step *st = &cl->trace->steps[s];
        for (unsigned k = 0; k < st->n_captures; k++) {
            regex_t *re = &cl->re[s * RS_TRACE_MAX_CAPTURES + k];
            int r = regcomp(re, rs_trace_text(cl->trace, st->captures[k].regex), REG_EXTENDED);
            if (r) {
                char msg[128];
                regerror(r, re, msg, sizeof(msg));
                fprintf(stderr, "rs-client: %s:%u: bad regular expression: %s\n",
                        cl->trace_path, st->captures[k].line, msg);
                return -1;
            }
        }
    }
    return 0;
}

static void free_trace(struct rs_cl *cl)
{
    if (cl->re && cl->trace)
        for (unsigned s = 0; s < cl->trace->n_steps; s++)
            for (unsigned k = 0; k < cl->trace->steps[s].n_captures; k++)
                regfree(&cl->re[s * RS_TRACE_MAX_CAPTURES + k]);
    free(cl->re);
    free(cl->trace);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of 'n' sorted values; NAN when there are none. */
static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    size_t rank = (size_t)ceil(p * (double)n);
    return v[rank ? rank - 1 : 0];
}

static void summary(struct rs_cl *cl)
{
    struct rs_cl_stats *s = &cl->st;

    if (s->n_lat > 1)
        qsort(s->lat_ms, s->n_lat, sizeof(double), cmp_double);
    if (s->n_action > 1)
        qsort(s->action_ms, s->n_action, sizeof(double), cmp_double);
    printf("summary: runs=%llu requests=%llu ok=%llu errors=%llu resets=%llu timeouts=%llu "
           "retries=%llu p50_ms=%.3f p95_ms=%.3f action_ms_median=%.3f runs_ok=%llu eofs=%llu "
           "connect_failed=%llu verify_failed=%llu\n",
           (unsigned long long)s->runs, (unsigned long long)s->requests,
           (unsigned long long)s->ok, (unsigned long long)s->errors,
           (unsigned long long)s->resets, (unsigned long long)s->timeouts,
           (unsigned long long)s->retries, pct(s->lat_ms, s->n_lat, 0.50),
           pct(s->lat_ms, s->n_lat, 0.95), pct(s->action_ms, s->n_action, 0.50),
           (unsigned long long)s->runs_ok, (unsigned long long)s->eofs,
           (unsigned long long)s->connect_failed, (unsigned long long)s->verify_failed);
    fflush(stdout);
    free(s->lat_ms);
    free(s->action_ms);
}

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* Runs every worker to completion (or until a signal).  Returns 0, or -1
 * when interrupted. */
static int loop(struct rs_cl *cl)
{
    unsigned n = cl->connections;
    struct pollfd *fds = calloc(n, sizeof(*fds));
    unsigned *map = calloc(n, sizeof(*map));

    if (!fds || !map) {
        free(fds);
        free(map);
        return -1;
    }
    for (unsigned i = 0; i < n; i++)
        rs_cl_worker_start(cl, &cl->w[i]);
    while (cl->n_done < n && !stop_signal) {
        uint64_t now = rs_mono_ns(), next = UINT64_MAX;
        struct timespec ts, *tsp = NULL;
        nfds_t nf = 0;

        for (unsigned i = 0; i < n; i++) {
            struct rs_cl_worker *w = &cl->w[i];
            short mask = rs_cl_worker_pollmask(w);
            if (mask && w->fd >= 0) {
                fds[nf] = (struct pollfd){ .fd = w->fd, .events = mask };
                map[nf++] = i;
            }
            if (w->state != RS_CL_W_DONE && w->deadline && w->deadline < next)
                next = w->deadline;
        }
        if (next != UINT64_MAX) {
            uint64_t d = next > now ? next - now : 0;
            ts.tv_sec = (time_t)(d / 1000000000ull);
            ts.tv_nsec = (long)(d % 1000000000ull);
            tsp = &ts;
        } else if (nf == 0) {
            rs_cl_log(cl, NULL, "internal: nothing to wait for with %u of %u workers done",
                      cl->n_done, n);
            break;
        }
        int r = ppoll(fds, nf, tsp, NULL);
        if (r < 0 && errno != EINTR) {
            rs_cl_log(cl, NULL, "ppoll: %s", strerror(errno));
            break;
        }
        for (nfds_t k = 0; r > 0 && k < nf; k++)
            if (fds[k].revents)
                rs_cl_worker_events(cl, &cl->w[map[k]], fds[k].revents);
        now = rs_mono_ns();
        for (unsigned i = 0; i < n; i++) {
            struct rs_cl_worker *w = &cl->w[i];
            if (w->state != RS_CL_W_DONE && w->deadline && w->deadline <= now)
                rs_cl_worker_timer(cl, w);
        }
    }
    free(fds);
    free(map);
    if (cl->n_done < n) {
        rs_cl_log(cl, NULL, "interrupted (%s): %u of %u connections unfinished",
                  stop_signal ? strsignal(stop_signal) : "error", n - cl->n_done, n);
        return -1;
    }
    return 0;
}

/* Lets --connections use as many descriptors as the hard limit allows. */
static void raise_nofile(unsigned need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need + 16) {
        rl.rlim_cur = rl.rlim_max < need + 16 ? rl.rlim_max : need + 16;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int repeat_count(const char *v, void *dst) { return parse_uint(v, 1, 100000000, dst); }
static int conn_count(const char *v, void *dst) { return parse_uint(v, 1, 1000000, dst); }
static int retry_count(const char *v, void *dst) { return parse_uint(v, 0, 1000, dst); }

static int define(const char *v, void *dst)
{
    int r = rs_trace_vars_define(dst, v);

    if (r && r != -EINVAL)
        fprintf(stderr, "rs-client: -D %s: %s\n", v, strerror(-r));
    return r;
}

int main(int argc, char **argv)
{
    static struct rs_cl cl;
    const char *csv_path = NULL, *host = NULL;
    bool have_server = false;
    const struct rs_opt opts[] = {
        RS_OPTION("server", RS_OPT_FN, &cl, .want = "ADDR:PORT", .fn = parse_server, .given = &have_server),
        RS_OPTION("trace", RS_OPT_STR, &cl.trace_path),
        RS_OPTION("repeat", RS_OPT_FN, &cl.repeat, .want = "a count >= 1", .fn = repeat_count),
        RS_OPTION("connections", RS_OPT_FN, &cl.connections, .want = "a count >= 1", .fn = conn_count),
        RS_OPTION("csv", RS_OPT_STR, &csv_path),
        RS_OPTION("timeout", RS_OPT_DURATION, &cl.timeout_ns, .nonzero = true),
        RS_OPTION("browser", RS_OPT_FLAG, &cl.browser),
        RS_OPTION("retry-post", RS_OPT_FLAG, &cl.retry_post),
        RS_OPTION("login-marker", RS_OPT_STR, &cl.login_marker),
        RS_OPTION("retries", RS_OPT_FN, &cl.max_retries, .want = "0..1000", .fn = retry_count),
        RS_OPTION("backoff", RS_OPT_DURATION, &cl.backoff_ns),
        RS_OPTION("define", RS_OPT_FN, &cl.defs, .want = "NAME=VALUE, NAME of [A-Za-z0-9_]", .fn = define,
                  .short_name = 'D'),
        RS_OPTION("host", RS_OPT_STR, &host),
        RS_OPTION("quiet", RS_OPT_FLAG, &cl.quiet),
        RS_OPTIONS_END,
    };
    int r, rc;

    cl.repeat = cl.connections = 1;
    cl.max_retries = 3;
    cl.timeout_ns = 10000000000ull;
    cl.backoff_ns = 100000000ull;
    rs_trace_vars_init(&cl.defs);
    rs_log_init("rs-client");
    if ((r = rs_opts_parse("rs-client", argc, argv, opts, usage)))
        return rs_opts_exit(r);
    if (!have_server || !cl.trace_path) {
        fprintf(stderr, "rs-client: --server and --trace are required\n");
        usage(stderr);
        return 2;
    }
    snprintf(cl.host, sizeof(cl.host), "%s", host ? host : cl.server);
    if (strpbrk(cl.host, "\r\n")) {
        fprintf(stderr, "rs-client: --host holds a line break\n");
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "rs-client: libsodium failed to initialise\n");
        return 2;
    }
    if (load_trace(&cl)) {
        free_trace(&cl);
        return 2;
    }
    if (csv_path) {
        cl.csv = fopen(csv_path, "w");
        if (!cl.csv) {
            fprintf(stderr, "rs-client: %s: %s\n", csv_path, strerror(errno));
            free_trace(&cl);
            return 2;
        }
        setvbuf(cl.csv, NULL, _IOLBF, 0);      /* rows survive a kill */
        fputs("run,connection,step,method,target,start_us,first_byte_us,end_us,status,bytes,"
              "result,local_port,retries,txn\n", cl.csv);
    }
    raise_nofile(cl.connections);
    cl.w = calloc(cl.connections, sizeof(*cl.w));
    if (!cl.w) {
        fprintf(stderr, "rs-client: out of memory for %u connections\n", cl.connections);
        return 2;
    }
    for (unsigned i = 0; i < cl.connections; i++)
        rs_cl_worker_init(&cl, &cl.w[i], i);

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rs_cl_log(&cl, NULL, "start server=%s host=%s trace=%s steps=%u repeat=%u connections=%u "
              "timeout_ms=%.1f browser=%d retry_post=%d retries=%u",
              cl.server, cl.host, cl.trace_path, cl.trace->n_steps, cl.repeat, cl.connections,
              (double)cl.timeout_ns / 1e6, cl.browser, cl.retry_post, cl.max_retries);
    r = loop(&cl);
    for (unsigned i = 0; i < cl.connections; i++)
        rs_cl_worker_stop(&cl, &cl.w[i]);
    if (cl.csv)
        fclose(cl.csv);
    rc = (r < 0 || cl.st.errors || cl.st.runs_ok != cl.st.runs) ? 1 : 0;
    summary(&cl);
    free(cl.w);
    free_trace(&cl);
    return rc;
}
