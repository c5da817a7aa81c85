/* rs-front internals shared by the files of front/.  rs-front puts a real
 * application (lighttpd + PHP: Roundcube) behind resplice: a numbering
 * reverse proxy.  Each client request is parsed and numbered as the
 * logger numbers it, forwarded with an X-Resplice-Txn header over the
 * client's own upstream connection, and its response comes back through
 * libhttp-parser: the X-Resplice-State / X-Resplice-Sync headers become a
 * state update for the state library (libstate/rs_state.h), per-run headers
 * (Date) are dropped, and the rest streams to the client, held while a
 * synchronous update waits for the alternate.  On the alternate, the
 * peer's states are applied with --apply-cmd or --apply-file.
 *
 * A state blob is an envelope (update.c): the application's state and, for
 * a synchronous (non-deterministic) update, the complete response the
 * client is about to get.  The update then leaves once that response is
 * complete, still before its first byte does.  The alternate keeps such a
 * response (front_rec) and, when the recovery applies that transaction's
 * state because the client already holds part of its response, answers the
 * request from it instead of running it again: re-running would draw new
 * random values (a session id, a token) and answer differently.
 *
 * Files: main.c (options, set-up, stats), conn.c (a client connection: its
 * transactions, buffers and socket, the service loop), request.c (client ->
 * upstream), upstream.c (the upstream socket), response.c (upstream ->
 * client), head.c (header lines to drop from a head), update.c (a
 * response's state to the library), alternate.c (applying the peer's
 * states, recorded responses). */
#ifndef RS_FRONT_H
#define RS_FRONT_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <http_parser.h>

#include "daemon.h"     /* rs_log, rs_mono_ns, rs_addr */
#include "loop.h"
#include "server.h"
#include "rs_state.h"
#include "txn_id.h"

/* ---- Limits ----------------------------------------------------------- */

#define FRONT_IN_CAP     16384u         /* client bytes read ahead */
#define FRONT_HEAD_CAP   16384u         /* one request or response head; longer: 431 / 502 */
#define FRONT_UP_OUT_CAP 65536u         /* request bytes queued for the upstream */
#define FRONT_UP_IN_CAP  65536u         /* response bytes read from the upstream */
/* Response bytes queued for the client.  It is also the bound of a held
 * (synchronous) response: once it is full the upstream is not read until
 * the alternate's ACK releases the response (TCP back-pressure on the
 * application; nothing is dropped, nothing leaves early). */
#define FRONT_OUT_CAP    (256u * 1024)
#define FRONT_TXN_Q      32u            /* requests forwarded, response not yet sent */
#define FRONT_CUTS       16u            /* header lines removed from one head */
#define FRONT_NAME_MAX   64u            /* header name bytes kept: longer names match no
                                           exact name, but their prefix is still checked */
#define FRONT_PATH_MAX   1024u          /* X-Resplice-State path */
#define FRONT_LOCAL_ROOM 512u           /* 'out' space a locally made response needs */
#define FRONT_TURN_BYTES (1u << 20)     /* bytes one connection sends per wake-up */
#define FRONT_TXN_HDR    "X-Resplice-Txn"   /* request header naming the transaction */
#define FRONT_RERUN_HDR  "X-Resplice-Rerun" /* ... and saying it may have run elsewhere already */
#define FRONT_LINGER_NS  2000000000ull  /* how long a closing socket drains input */
#define FRONT_RECS       8u             /* recorded responses kept on the alternate */
#define FRONT_REC_TTL_NS (300ull * 1000000000ull)  /* ... and for how long */
/* Envelope of a state blob: magic, state length, response length (u32 LE),
 * the state's sequence number (u64 LE, X-Resplice-State-Seq; 0 = none). */
#define FRONT_BLOB_MAGIC "RSF1"
#define FRONT_BLOB_HDR   20u

/* ---- Types ------------------------------------------------------------ */

enum hdr_kind { HK_KEEP, HK_CUT, HK_STATE, HK_STATE_DATA, HK_SYNC, HK_SEQ };

/* A request or response head being collected: its bytes, and the header
 * lines to drop from it, found through the parser's callbacks. */
struct front_head {
    uint8_t buf[FRONT_HEAD_CAP];
    uint32_t len;
    const char *exec_at;        /* during http_parser_execute: the bytes parsed, */
    uint32_t exec_base;         /*   and their offset in 'buf' once copied */
    bool in_field;              /* the last callback was a header name */
    bool open;                  /* a header line is started and not yet ended */
    bool classified;
    enum hdr_kind kind;
    uint32_t line_start;
    char name[FRONT_NAME_MAX];  /* the name's first bytes */
    uint32_t name_len;          /* bytes in 'name' */
    bool name_long;             /* the name is longer than 'name' holds */
    uint32_t cut_from[FRONT_CUTS], cut_to[FRONT_CUTS];
    uint32_t n_cuts;
    bool cut_overflow;
    bool done;                  /* headers complete: the final LF is still unparsed */
    uint32_t hend;              /* after done: end of the last header line */
    bool has_state, has_sync;   /* responses: X-Resplice-State / -Sync seen */
    bool has_data;              /* X-Resplice-State-Data: the state itself, base64 ... */
    uint32_t data_from, data_to;    /* ... at buf[data_from, data_to) */
    char path[FRONT_PATH_MAX + 1];
    uint32_t path_len;
    bool path_long;
    char sync[8];
    uint32_t sync_len;
    char seq[24];               /* X-Resplice-State-Seq: the state's age, for --apply-file */
    uint32_t seq_len;
};

/* A forwarded request whose response is not yet all sent to the client. */
struct front_txn {
    rs_txn_id id;
    uint64_t start, end;        /* client output stream; 'end' UINT64_MAX while generating */
    uint64_t hold_from;         /* where its final response head starts */
    uint64_t t_start;
    int status;
    int local;                  /* status of a response made here (400, 431, 502, 505), or 0 */
    bool head_req;              /* HEAD: no response body */
    bool started;               /* a response byte is queued */
    bool hooked;                /* its state went to the library: rs_state_forget is owed
                                   if it ends unsent */
    bool waiting;               /* synchronous update not yet acknowledged: held */
    uint8_t *sync_state;        /* a synchronous update's state, sent with the response */
    uint32_t sync_len;          /*   once that is complete (front_sync_send) */
    uint64_t state_seq;         /* its X-Resplice-State-Seq */
    uint8_t *rec;               /* answered from this recorded response (the alternate) */
    uint32_t rec_len, rec_off;
    char what[80];
};

/* A response that came with a synchronous update (the alternate). */
struct front_rec {
    rs_txn_id id;
    uint8_t *data;              /* NULL: free slot */
    uint32_t len;
    uint64_t t_ns;
};

enum front_phase { PH_IDLE, PH_HEAD, PH_BODY };

struct front_conn {
    struct front_conn *prev, *next;
    struct front *f;
    int fd, ufd;                /* client and upstream sockets (sio.fd / uio.fd while open) */
    struct rs_io sio, uio;
    struct rs_timer timer;      /* linger */
    struct rs_state_conn who;   /* the client its transaction IDs name, from which
                                   number, re-runs or not; who.name for logs */
    uint32_t n_req;
    /* client -> upstream */
    http_parser rq;
    enum front_phase rq_phase;
    bool rq_skip_lf;            /* the next parsed byte is the head's final LF */
    bool rq_msg_done;
    bool rq_keep, rq_upgrade, rq_head;
    int rq_reject;
    bool rq_stop;               /* no more requests are read */
    bool rq_discard;            /* this request is answered from a record: drop its body */
    bool peer_eof;
    char rq_what[80];
    uint32_t rq_what_len;
    struct front_head rqh;
    uint8_t in[FRONT_IN_CAP];
    uint32_t in_off, in_len;
    uint8_t up_out[FRONT_UP_OUT_CAP];
    uint32_t uo_off, uo_len;
    bool up_connecting;
    /* upstream -> client */
    http_parser rs;
    enum front_phase rs_phase;
    bool rs_skip_lf;
    bool rs_msg_done, rs_keep, rs_interim;
    bool up_eof;
    struct front_head rsh;
    uint8_t up_in[FRONT_UP_IN_CAP];
    uint32_t ui_off, ui_len;
    uint8_t out[FRONT_OUT_CAP];
    uint32_t out_off, out_len;
    uint64_t gen_total, sent_total, recv_total;
    struct front_txn q[FRONT_TXN_Q];
    uint32_t q_head, q_len;
    uint32_t q_done;            /* entries from q_head whose response is complete */
    bool closing;               /* shut the write side once everything queued is sent */
    bool draining;
    bool dead;
};

enum front_stat {
    FS_CONNS, FS_REQS, FS_RESPS, FS_LOCAL, FS_BAD_REQUESTS, FS_CLIENT_RESPLICE_HDRS, FS_TXN_ABORTED, FS_STATES,
    FS_STATE_BYTES, FS_SYNC, FS_STATE_ERRORS, FS_STRIPPED, FS_BYTES_IN, FS_BYTES_OUT,
    FS_UP_CONNECTS, FS_UP_ERRORS, FS_APPLIES, FS_APPLY_ERRORS, FS_RESP_CARRIED,
    FS_RESP_NOT_CARRIED, FS_RECORDED, FS_FROM_RECORD, FS_MAX,
};

/* The options (main.c fills them). */
struct front_cfg {
    struct rs_addr upstream;        /* where the application listens */
    const char *strip[16];          /* response headers never forwarded (Date by default) */
    int n_strip;
    const char *state_dir;          /* X-Resplice-State files must be in here; APPLY blobs go here */
    const char *apply_cmd;          /* NULL: APPLY is refused (-EOPNOTSUPP) */
    const char *apply_file;         /* or: the state is this whole file, installed by rename */
    uint64_t apply_timeout_ns;
    /* Fault injection (--crash-at N+B): SIGKILL ourselves before byte B of
     * the response to transaction number N leaves (crash_num < 0: never);
     * the response bytes held then are written to state_dir/crash-<txn>.resp
     * so a test can compare them with what the client got. */
    int crash_num;
    uint64_t crash_off;
};

struct front {
    const char *name;               /* --id */
    struct front_cfg cfg;
    struct rs_loop loop;
    struct rs_server server;        /* the listening socket */
    struct rs_addr laddr;
    struct rs_state *stated;        /* --stated: the state library, or NULL */
    char state_real[PATH_MAX];      /* realpath of cfg.state_dir */
    struct front_conn *conns, *dead;
    uint64_t conns_open;
    uint8_t *blob;                  /* RS_CTL_STATE_MAX: one state read at a time */
    /* The running apply command (one at a time: stated's records are answered in order). */
    pid_t apply_pid;
    int apply_pidfd;
    struct rs_io apply_io;          /* the command's pidfd: readable when it ends */
    struct rs_timer apply_timer;    /* --apply-timeout */
    uint64_t apply_token, apply_t0;
    rs_txn_id apply_txn;
    uint32_t apply_len;
    bool apply_timed_out;
    char apply_path[PATH_MAX + 32];
    struct front_rec recs[FRONT_RECS];
    uint32_t rec_next;
    uint64_t installed_seq;         /* --apply-file: the newest state installed */
    /* The newest state this front's own updates carried (a copy), for an
     * export to a standby joining the chain (update.c). */
    uint8_t *own;
    uint32_t own_len;
    uint64_t own_seq;
    bool crashed;                   /* --crash-at fired (a test's fault injection) */
    uint64_t stats[FS_MAX];
};

/* ---- Small helpers ------------------------------------------------------ */

static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* The 'i'th transaction queued on 'c' (0: the oldest). */
static inline struct front_txn *q_at(struct front_conn *c, uint32_t i)
{
    return &c->q[(c->q_head + i) % FRONT_TXN_Q];
}

/* ---- conn.c: a client connection ------------------------------------------ */

/* rs_server_fn: takes client connection 'fd' of the front 'ctx'.  Returns
 * 0 or a negative errno (then 'fd' is closed). */
int front_conn_open(void *ctx, int fd, const struct sockaddr_in *peer);
/* Does all the work the connection can do now (read, forward, answer, send). */
void front_service(struct front_conn *c);
/* Closes 'c' now; unsent transactions end incomplete.  Freed by front_reap. */
void front_close(struct front_conn *c, const char *why);
/* Frees the connections closed during this loop turn. */
void front_reap(struct front *f);
/* The library's answer to a synchronous update: sends the held response
 * of 'id'. */
void front_resume(void *ctx, rs_txn_id id, int err);
/* Pushes the entry of the request whose head just completed, or of one
 * answered here with status 'local'. */
struct front_txn *txn_push(struct front_conn *c, int local);
/* Forgets the transactions after the first 'keep' (they will not be answered). */
void txn_drop_after(struct front_conn *c, uint32_t keep);
/* Moves the unsent bytes of 'buf' to its start. */
void compact(uint8_t *buf, uint32_t *off, uint32_t *len);
/* Appends response bytes for the client to 'out' (the caller made room). */
void out_put(struct front_conn *c, const void *data, uint32_t len);
/* The upstream socket's event handler. */
void front_on_up(struct rs_io *io, uint32_t events);

/* ---- request.c: client -> upstream ------------------------------------------ */

/* Parses client input: request heads into 'rqh', bodies straight into
 * 'up_out'.  Returns true on progress. */
bool rq_parse(struct front_conn *c);

/* ---- upstream.c: the upstream socket ------------------------------------------ */

/* Closes the upstream connection and resets the response side. */
void up_close(struct front_conn *c);
/* The upstream failed ('why'): 502 for a response not begun, else the end
 * of the client connection. */
void up_fail(struct front_conn *c, const char *why);
void up_set_events(struct front_conn *c);
/* Connects when requests wait and sends what the upstream takes.  Returns
 * true on progress. */
bool up_flush(struct front_conn *c);
/* Reads what fits into 'up_in'.  Returns true on progress (EOF included). */
bool up_read(struct front_conn *c);

/* ---- response.c: upstream -> client ------------------------------------------ */

/* Parses upstream input into 'out'.  Returns true on progress. */
bool resp_parse(struct front_conn *c);

/* ---- head.c: header lines to drop ---------------------------------------------- */

void head_reset(struct front_head *h);
/* Parser callbacks (both directions): a piece of a header name or value. */
int head_on_field(http_parser *p, const char *at, size_t len);
int head_on_value(http_parser *p, const char *at, size_t len);
/* Headers are complete; 'next' is the byte after the parsed ones.  Returns
 * 0, or -EPROTO when the head is not what the parser promised. */
int head_finish(struct front_conn *c, struct front_head *h, uint8_t next);
/* Bytes head_build writes for 'h' plus 'extra_len' bytes of extra lines. */
uint32_t head_out_len(const struct front_head *h, size_t extra_len);
/* Writes the head without its cut lines, then 'extra', then the blank
 * line, to 'dst'.  Returns the length. */
uint32_t head_build(const struct front_head *h, const char *extra, size_t extra_len, uint8_t *dst);

/* ---- update.c: a response's state to the library ------------------------------- */

/* The state blob envelope, decoded. */
struct front_blob {
    const uint8_t *state, *resp;
    uint32_t slen, rlen;
    uint64_t seq;
};

/* Takes the state file the response head of 't' named (X-Resplice-State)
 * and sends it, or holds it in 't' for a synchronous update. */
void update_take(struct front_conn *c, struct front_txn *t);
/* Sends the held synchronous update of 't', with its response when
 * 'with_resp' (complete and not yet sent). */
void update_send_held(struct front_conn *c, struct front_txn *t, bool with_resp);
/* Decodes envelope 'data' ('len' bytes).  Returns 1 when it is one, 0 when
 * the data is a bare state, -EINVAL when the envelope is malformed. */
int front_blob_parse(const void *data, size_t len, struct front_blob *b);
/* The library's ops.export: the newest whole state this backend has, its
 * own update's or the one --apply-file installed, in an envelope.  With
 * --apply-cmd the state lives in the application: -EOPNOTSUPP. */
int front_export(void *ctx, const void **state, size_t *len);

/* ---- changes.c: an sqlite --apply-file ------------------------------------ */

/* A state that starts with this line is a change set (SQL), not a whole file. */
#define FRONT_CHANGES_MAGIC "-- resplice changes "

bool front_is_changes(const void *state, size_t len);
/* Whether the 'len' bytes at 'head' begin an sqlite database file. */
bool front_is_sqlite(const void *head, size_t len);
/* Runs change set 'sql' ('len' bytes) on database 'path' in one
 * transaction, on a connection kept open until the next (reopened when
 * 'path' is another file by then).  Returns 0, or -errno with 'why' said
 * (nothing applied). */
int front_changes_apply(const char *path, const void *sql, size_t len, char *why, size_t whylen);
/* Closes the connection front_changes_apply keeps. */
void front_changes_close(void);
/* Writes a consistent copy of database 'path' to 'copy' (VACUUM INTO),
 * without the change tracking's tables.  Returns 0 or -errno ('why'). */
int front_sqlite_copy(const char *path, const char *copy, char *why, size_t whylen);
/* Makes database 'path' (created if absent) a copy of database file
 * 'snapshot', in place (sqlite's backup, one transaction): connections
 * that stay open on 'path' (php's, with Roundcube's db_persistent) see the
 * copy, where a rename would leave them on the old file.  Returns 0 or
 * -errno ('why'); 'path' is unchanged on failure. */
int front_sqlite_install(const char *path, const char *snapshot, char *why, size_t whylen);

/* ---- alternate.c: the peer's states and recorded responses ---------------------- */

/* Applies the peer's state blob (the library's ops.apply). */
int front_apply(void *ctx, rs_txn_id id, const void *state, size_t len, uint64_t token);
/* Gives 't' the recorded response of its transaction, if there is one. */
void rec_take(struct front_conn *c, struct front_txn *t);
/* Moves what fits of 't''s recorded response to 'out'.  Returns false
 * when nothing could move. */
bool rec_emit(struct front_conn *c, struct front_txn *t);
void front_apply_init(struct front *f);
/* Kills a running apply command and frees the records. */
void front_apply_fini(struct front *f);

#endif /* RS_FRONT_H */
