/* rs-app internals shared by the files of app/: the server, its connections,
 * the response machinery (http.c), the endpoints (endpoints.c), the state
 * hooks and their link to the state library (state.c), and the options and
 * event loop (main.c).  state.h is the public part. */
#ifndef RS_APP_APP_H
#define RS_APP_APP_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <netinet/in.h>
#include <http_parser.h>

#include "daemon.h"     /* rs_log, rs_mono_ns, rs_addr */
#include "loop.h"
#include "server.h"
#include "rs_state.h"
#include "state.h"
#include "txn_id.h"

/* ---- Limits ----------------------------------------------------------- */

#define APP_IN_CAP      8192u       /* read-ahead; the parser streams, so small is fine */
#define APP_OUT_CAP     16384u      /* queued response bytes per connection */
#define APP_URL_MAX     2048u       /* longer request targets get 414 */
#define APP_HDR_MAX     8192u       /* request target + header bytes; more gets 431 */
#define APP_BODY_MAX    (64u << 20) /* request body bytes (streamed, not kept); more gets 413 */
#define APP_SMALL_MAX   1024u       /* free 'out' space a buffered response needs */
#define APP_TXN_Q       32u         /* finished-but-unsent responses per connection */
#define APP_TURN_BYTES  (1u << 20)  /* bytes one connection sends per wake-up, so a
                                       1 GiB response does not starve the others */
#define APP_LINGER_NS   2000000000ull   /* how long a closing socket drains input */
#define APP_STATIC_MAX  (1ull << 40)    /* content offsets repeat after 1 TiB */
#define APP_TOKEN_REC   64u         /* replay tokens kept on the alternate */
#define APP_DELAY_MAX   4096u       /* held transactions under --sync-delay */

/* ---- Types ------------------------------------------------------------ */

struct app_conn;
struct rs_state;

/* Counters for the SIGUSR1 stats line. */
enum app_stat {
    ST_CONNS_TOTAL, ST_REQS, ST_REQ_STATIC, ST_REQ_COUNTER_READ, ST_REQ_COUNTER_UPDATE,
    ST_REQ_TOKEN, ST_REQ_UPLOAD, ST_REQ_SLOW, ST_REQ_HEALTH, ST_REQ_OTHER, ST_REQ_REJECTED,
    ST_BAD_REQUEST, ST_TXN_ABORTED, ST_BYTES_IN, ST_BYTES_OUT, ST_MAX,
};

/* The request being parsed, then served. */
struct app_req {
    char method[16];
    char url[APP_URL_MAX];
    uint32_t url_len;
    uint32_t hdr_bytes;
    uint64_t body_bytes;
    bool check_body;            /* POST /upload: the body must be seed 'body_seed''s content */
    uint64_t body_seed;
    int64_t body_bad;           /* first wrong body byte, -1: none (yet) */
    int reject;                 /* 413/414/431 decided by a parser callback */
    bool complete;
    bool keep_alive;
    bool http10;
    bool upgrade;
    bool head;                  /* HEAD: headers only */
    bool hooked;                /* txn_begin returned 0 and no txn entry owns it yet */
    rs_txn_id id;
    uint64_t t_start;           /* CLOCK_MONOTONIC ns when it was complete */
};

/* The body being streamed into 'out' for the current response. */
enum app_body_kind { BODY_NONE, BODY_STATIC, BODY_SLOW };

struct app_body {
    enum app_body_kind kind;
    uint64_t seed;
    uint64_t off, total;        /* content bytes produced, and to produce */
    uint64_t chunk;             /* slow: content bytes per chunk */
    uint64_t delay_ns;          /* slow: think time before each chunk */
    uint64_t in_chunk;          /* slow: bytes left of the current chunk */
    bool chunked;               /* slow: chunked framing (not for HTTP/1.0) */
    bool crlf_pending;          /* slow: the current chunk's CRLF is owed */
    bool timer_wait;            /* slow: think time running */
    bool timer_fired;           /* slow: think time over, next chunk may go */
};

/* A response in 'out', logged and ended (txn_end) once its last byte is sent. */
struct app_txn {
    rs_txn_id id;
    uint64_t start, end;        /* position in the connection's output stream;
                                   'end' is UINT64_MAX while still generating */
    uint64_t t_start;
    int status;
    bool hooked;                /* txn_begin returned 0: txn_end is owed */
    char what[80];              /* "GET /static/1M" for the log */
};

struct app_conn {
    struct app_conn *prev, *next;
    struct rs_app *app;
    int fd;                     /* the socket (io.fd while open) */
    struct rs_io io;
    struct rs_timer timer;      /* think time of a slow body, linger */
    uint32_t peer_ip4;          /* host order */
    uint16_t peer_port;
    struct rs_state_conn who;   /* the client its transaction IDs name (the peer, or
                                   the client of a connection map) and the number of
                                   its first one; who.name ("peer->local") for logs */
    http_parser parser;
    struct app_req req;
    uint32_t n_req;             /* requests so far: the next transaction number */
    bool waiting;               /* txn_update said RS_APP_HOOK_WAIT */
    bool closing;               /* no more requests: close once 'out' is sent */
    bool draining;              /* write side shut: discard input until EOF */
    bool peer_eof;
    bool dead;                  /* closed: free after the current event */
    /* Held response while waiting. */
    int held_status;
    char held_body[RS_APP_STATE_MAX + 16];
    uint8_t in[APP_IN_CAP];
    uint32_t in_off, in_len;
    uint8_t out[APP_OUT_CAP];
    uint32_t out_off, out_len;
    uint64_t gen_total, sent_total;     /* bytes queued / sent on this connection */
    uint64_t recv_total;
    struct app_body body;
    struct app_txn q[APP_TXN_Q];
    uint32_t q_head, q_len;
};

struct app_token_rec {
    rs_txn_id id;
    bool used;
    char token[33];
};

struct app_delayed {
    rs_txn_id id;
    uint64_t due_ns;
};

struct rs_app {
    const char *name;           /* --id */
    struct rs_loop loop;
    struct rs_server server;    /* the listening socket */
    struct rs_timer delay_timer;    /* --sync-delay */
    struct rs_addr laddr;
    struct app_conn *conns;     /* open connections */
    struct app_conn *dead;      /* closed this loop turn, freed at its end */
    uint64_t conns_open;
    struct rs_app_hooks hooks;
    uint64_t counter;
    struct app_token_rec tokens[APP_TOKEN_REC];
    uint32_t token_next;
    uint64_t sync_delay_ns;
    struct app_delayed delayed[APP_DELAY_MAX];
    uint32_t n_delayed;
    struct rs_state *stated;    /* --stated: the state library, or NULL */
    /* --crash-at N+B (fault injection): SIGKILL ourselves before byte B of
     * transaction N's response leaves (crash_num < 0: never). */
    int crash_num;
    uint64_t crash_off;
    uint64_t stats[ST_MAX];
};

/* ---- http.c ----------------------------------------------------------- */

/* rs_server_fn: registers accepted connection 'fd' from 'peer' of the app
 * 'ctx'.  Returns 0 or a negative errno (then 'fd' is closed). */
int app_conn_open(void *ctx, int fd, const struct sockaddr_in *peer);

/* Does all the work the connection can do now (parse, serve, send). */
void app_conn_service(struct app_conn *c);
/* Closes 'c' now; held and unsent transactions end incomplete. */
void app_conn_close(struct app_conn *c, const char *why);
/* Frees the connections closed during this loop turn. */
void app_conn_reap(struct rs_app *app);

/* Response builders for endpoints.c: a whole small response ('body' of
 * 'len' bytes, dropped for HEAD; 'extra' NULL or more "Name: value\r\n"
 * header lines), or the header of a streamed one whose body 'c->body'
 * describes ('clen' -1 for chunked).  The caller has checked that 'out' has
 * APP_SMALL_MAX bytes free and that the transaction queue has room. */
void app_resp_small(struct app_conn *c, int status, const char *ctype, const char *extra,
                    const char *body, size_t len);
void app_resp_stream(struct app_conn *c, int status, const char *ctype, int64_t clen);

/* ---- endpoints.c ------------------------------------------------------ */

/* Runs the complete request c->req and starts its response. */
void app_serve(struct rs_app *app, struct app_conn *c);
/* True when request target 'url' is an upload whose body must be checkable
 * content (POST /upload?seed=N); '*seed' is then N. */
bool app_upload_seed(const char *url, uint64_t *seed);

/* ---- state.c ---------------------------------------------------------- */

/* Returns the recorded token for 'id' (and forgets it), or NULL. */
const char *app_token_take(struct rs_app *app, rs_txn_id id, char out[33]);
/* Installs the --sync-delay hooks: every nondet update waits 'ns'. */
int app_sync_delay_init(struct rs_app *app, uint64_t ns);
/* --stated: opens the state library on rs-stated's socket 'path' and
 * installs the hooks that use it.  Returns 0 or a negative errno. */
int app_stated_init(struct rs_app *app, const char *path, uint64_t timeout_ns);

#endif /* RS_APP_APP_H */
