/* rs-client internals: the cookie jar, the response reader/verifier and the
 * per-connection state machine that replays a trace (core/trace.h) over
 * persistent HTTP/1.1 connections, driven by one ppoll() loop in main.c. */
#ifndef RS_CLIENT_H
#define RS_CLIENT_H

#include <regex.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>

#include <http_parser.h>
#include <sodium.h>

#include "daemon.h"
#include "trace.h"

/* ---- Results ------------------------------------------------------------ */

/* What became of one request; the names are the CSV's 'result' column. */
enum rs_cl_result {
    RS_CL_OK = 0,
    RS_CL_BAD_STATUS,           /* status outside 'expect status' */
    RS_CL_BAD_LENGTH,           /* body bytes != 'expect length' */
    RS_CL_BAD_CONTENT,          /* 'expect content' or 'expect sha256' failed */
    RS_CL_MISSING_MARKER,       /* an 'expect contains' text is absent */
    RS_CL_BAD_CAPTURE,          /* a capture's expression did not match */
    RS_CL_BAD_RESPONSE,         /* not parseable as HTTP/1.x */
    RS_CL_RESET,                /* ECONNRESET / EPIPE */
    RS_CL_TIMEOUT,              /* no byte for --timeout (or connect too slow) */
    RS_CL_EOF,                  /* connection closed before the response ended */
    RS_CL_CONNECT_FAILED,       /* connect() refused or unreachable */
    RS_CL_BAD_TRACE,            /* substitution made an invalid request */
    RS_CL_LOGIN,                /* failed, and the body has --login-marker: the
                                 * session is gone, the user must log in again */
    RS_CL_N_RESULTS
};

const char *rs_cl_result_str(enum rs_cl_result r);

/* Transport failures: the ones --browser retries on a new connection. */
static inline bool rs_cl_result_transport(enum rs_cl_result r)
{
    return r == RS_CL_RESET || r == RS_CL_TIMEOUT || r == RS_CL_EOF ||
           r == RS_CL_CONNECT_FAILED;
}

/* ---- Cookie jar (cookie.c) -------------------------------------------- */

/* One jar per replaying connection: it only ever talks to one host.  Domain,
 * Path, Secure and SameSite are ignored; Max-Age and Expires are honoured
 * (a past date or Max-Age <= 0 deletes). */
#define RS_CL_COOKIES 32u
#define RS_CL_COOKIE_NAME 64u        /* with NUL */
#define RS_CL_COOKIE_VALUE 512u      /* with NUL; session ids are far shorter */

struct rs_cl_cookie {
    char name[RS_CL_COOKIE_NAME];
    char value[RS_CL_COOKIE_VALUE];
    int64_t expires;            /* Unix seconds, 0 for a session cookie */
};

struct rs_cl_jar {
    unsigned n;
    struct rs_cl_cookie c[RS_CL_COOKIES];
};

void rs_cl_jar_clear(struct rs_cl_jar *jar);

/* Applies one Set-Cookie header value ('len' bytes) at time 'now'.
 * Returns 0 when stored, 1 when it deleted (or did not store) an expired
 * cookie, -EINVAL when malformed, -E2BIG when name or value is too long,
 * -ENOSPC when the jar is full. */
int rs_cl_jar_set(struct rs_cl_jar *jar, const char *hdr, size_t len, time_t now);

/* Writes the Cookie header value ("a=1; b=2") of the cookies alive at 'now'
 * into 'out' (snprintf-style).  Returns its full length, 0 for none. */
size_t rs_cl_jar_header(const struct rs_cl_jar *jar, time_t now, char *out, size_t out_size);

/* ---- Response reader (resp.c) ----------------------------------------- */

/* Body bytes kept for 'expect contains' and body captures: markers and
 * tokens must lie in the first MiB of a body.  All other checks (length,
 * content, sha256) stream over the whole body, however large. */
#define RS_CL_BODY_KEEP (1u << 20)
#define RS_CL_RESP_HEADERS 64u       /* headers kept per response */
#define RS_CL_HEADER_TEXT 16384u     /* bytes of header names and values */

struct rs_cl_hdr {
    uint32_t name, name_len, value, value_len;     /* offsets in 'htext' */
};

struct rs_cl_resp {
    http_parser parser;
    const struct rs_trace_step *step;
    bool head;                  /* answer to HEAD: no body whatever it says */
    bool keep;                  /* keep a body prefix (contains / captures) */
    bool headers_done, done, bad_header;
    bool keep_alive;            /* valid once done */
    int status;
    uint64_t body_bytes;
    /* headers */
    unsigned n_hdr;
    bool in_value;              /* last header callback was a value */
    uint32_t htext_used;
    struct rs_cl_hdr hdr[RS_CL_RESP_HEADERS];
    char htext[RS_CL_HEADER_TEXT];
    /* streaming checks */
    int64_t content_bad;        /* offset of the first wrong byte, -1 if none */
    crypto_hash_sha256_state sha;
    uint8_t *body;              /* kept prefix (heap, grows to RS_CL_BODY_KEEP) */
    size_t body_len, body_cap;
};

/* Prepares 'r' for the response to 'step' ('head' for a HEAD request). */
void rs_cl_resp_init(struct rs_cl_resp *r, const struct rs_trace_step *step, bool head);

/* Frees the kept body buffer. */
void rs_cl_resp_free(struct rs_cl_resp *r);

/* Feeds 'len' received bytes; '*used' gets how many belong to this response.
 * Returns 1 when the response is complete, 0 when more is needed, -EPROTO
 * when the bytes are not HTTP (the parser's reason via rs_cl_resp_error). */
int rs_cl_resp_feed(struct rs_cl_resp *r, const char *data, size_t len, size_t *used);

/* Tells the parser the server closed.  Returns 1 when that completed the
 * response (a close-delimited body), 0 when the response is cut short. */
int rs_cl_resp_eof(struct rs_cl_resp *r);

const char *rs_cl_resp_error(const struct rs_cl_resp *r);

/* Value of the first header 'name' (case-insensitive) from index '*from' on;
 * sets '*len' and moves '*from' past it.  Returns NULL when none is left. */
const char *rs_cl_resp_header(const struct rs_cl_resp *r, const char *name,
                              unsigned *from, size_t *len);

/* Checks a complete response against its step and runs the captures into
 * 'vars'.  're' holds the step's compiled capture expressions.  Writes a
 * short reason into 'why' unless the result is RS_CL_OK. */
enum rs_cl_result rs_cl_resp_verify(struct rs_cl_resp *r, const struct rs_trace *t,
                                    const regex_t *re, struct rs_trace_vars *vars,
                                    char *why, size_t why_len);

/* ---- Replay ----------------------------------------------------------- */

enum rs_cl_wstate {
    RS_CL_W_THINK,              /* pause before the current step */
    RS_CL_W_PAUSE,              /* pause between runs */
    RS_CL_W_BACKOFF,            /* --browser: wait before a retry */
    RS_CL_W_CONNECTING,
    RS_CL_W_SENDING,            /* request not fully written (reads too) */
    RS_CL_W_RECEIVING,
    RS_CL_W_DONE,
};

/* One parallel copy of the trace (--connections). */
struct rs_cl_worker {
    unsigned idx;
    unsigned run, step;
    enum rs_cl_wstate state;
    uint64_t deadline;          /* CLOCK_MONOTONIC ns; 0: none */
    /* connection */
    int fd;
    uint32_t lip;               /* local IPv4 (host order), 0 for IPv6 */
    uint16_t lport;
    uint32_t conn_txns;         /* requests sent on this connection */
    /* current request */
    char *req;
    size_t req_len, req_cap, req_off;
    char *target;               /* substituted target, for logs and CSV */
    size_t target_cap;
    bool idempotent;
    unsigned retries;
    uint64_t t_start_us, t_first_us;    /* CLOCK_REALTIME */
    uint64_t t_start_ns;                /* CLOCK_MONOTONIC */
    struct rs_cl_resp resp;
    /* current run */
    uint64_t run_start_ns;
    bool run_failed;
    struct rs_trace_vars vars;
    struct rs_cl_jar jar;
};

struct rs_cl_stats {
    uint64_t runs, runs_ok, requests, ok, errors;
    uint64_t resets, timeouts, eofs, connect_failed, verify_failed, retries;
    double *lat_ms;             /* latencies of ok requests */
    size_t n_lat, cap_lat;
    double *action_ms;          /* durations of ok runs */
    size_t n_action, cap_action;
};

struct rs_cl {
    /* options */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char server[300];           /* as given, for logs */
    char host[300];             /* Host header */
    const char *trace_path;
    unsigned repeat, connections, max_retries;
    uint64_t timeout_ns, backoff_ns;
    bool browser, retry_post, quiet;
    const char *login_marker;   /* --login-marker, or NULL */
    /* trace */
    struct rs_trace *trace;
    regex_t *re;                /* [step * RS_TRACE_MAX_CAPTURES + k] */
    struct rs_trace_vars defs;  /* -D definitions: each run starts from them */
    /* output */
    FILE *csv;
    struct rs_cl_stats st;
    struct rs_cl_worker *w;
    unsigned n_done;            /* workers in RS_CL_W_DONE */
};

/* One event line through rs_log (common/daemon.h):
 * "<s.us> rs-client conn=.. run=.. step=.. <msg>"; 'w' may be NULL. */
void rs_cl_log(const struct rs_cl *cl, const struct rs_cl_worker *w, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Worker life (worker.c).  rs_cl_worker_start begins the first run;
 * rs_cl_worker_events handles poll 'revents'; rs_cl_worker_timer handles an
 * expired deadline.  A worker ends in RS_CL_W_DONE. */
int rs_cl_worker_init(struct rs_cl *cl, struct rs_cl_worker *w, unsigned idx);
void rs_cl_worker_start(struct rs_cl *cl, struct rs_cl_worker *w);
void rs_cl_worker_events(struct rs_cl *cl, struct rs_cl_worker *w, short revents);
void rs_cl_worker_timer(struct rs_cl *cl, struct rs_cl_worker *w);
/* Abandons whatever is in flight (shutdown): closes, frees, no CSV row. */
void rs_cl_worker_stop(struct rs_cl *cl, struct rs_cl_worker *w);

/* Poll events the worker waits for, 0 when it waits for none. */
short rs_cl_worker_pollmask(const struct rs_cl_worker *w);

#endif /* RS_CLIENT_H */
