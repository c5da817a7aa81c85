/* HTTP/1.1 transactionalizer: cuts the two byte streams of one TCP connection
 * (client->server requests, server->client responses) into transactions, each
 * with its number, method, target and exact TCP sequence ranges.  Parsing is
 * done by libhttp-parser; this module only does the bookkeeping around it. */
#ifndef RS_HTTP_TXN_H
#define RS_HTTP_TXN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <http_parser.h>

#include "txn_id.h"

/* ---- Types ------------------------------------------------------------ */

/* Transactions kept readable per connection (a ring indexed by number). */
#define RS_HTTP_TXN_RING 64u
/* Transactions whose final response is not yet complete.  Half the ring, so
 * the last 32 finished transactions stay readable even under full pipelining;
 * one more request marks the connection RS_HTTP_ERR_PIPELINE. */
#define RS_HTTP_MAX_INFLIGHT 32u
/* Bytes of the request target kept, including the NUL. */
#define RS_HTTP_TARGET_MAX 256u
/* Longest method name http_parser knows is 11 ("UNSUBSCRIBE"). */
#define RS_HTTP_METHOD_MAX 16u
/* Largest chunk one rs_http_feed call consumes (keeps counts in an int and
 * seq ranges unambiguous); the return value says how much was taken. */
#define RS_HTTP_FEED_MAX (1u << 30)

enum rs_http_dir {
    RS_DIR_REQ = 0,             /* client -> server */
    RS_DIR_RESP = 1,            /* server -> client */
};

/* Why a connection was given up on.  Once set it never changes, and the
 * connection yields no more transactions or events. */
enum rs_http_err {
    RS_HTTP_OK = 0,
    RS_HTTP_ERR_REQ_MALFORMED,  /* http_parser rejected the request stream */
    RS_HTTP_ERR_RESP_MALFORMED, /* http_parser rejected the response stream */
    RS_HTTP_ERR_PIPELINE,       /* more than RS_HTTP_MAX_INFLIGHT unanswered */
    RS_HTTP_ERR_UPGRADE,        /* CONNECT, Upgrade or 101: no longer HTTP */
};

/* One transaction.  Sequence ranges are half-open [start, end) in TCP seq
 * space (mod 2^32).  Each direction's stream is partitioned: a transaction's
 * range starts where the previous one ended, so blank lines between messages
 * belong to the following message and a response range includes any interim
 * 1xx responses before the final one.  While a side is incomplete its 'end'
 * is the end of the bytes fed so far (for the response side this is the
 * seed's p: response bytes of an unfinished transaction already logged). */
struct rs_http_txn {
    uint32_t num;               /* 0, 1, 2 ... on this connection */
    rs_txn_id id;               /* client ip4, client port, (uint16_t)num */
    char method[RS_HTTP_METHOD_MAX];    /* "GET", ... ; "" until parsed */
    char target[RS_HTTP_TARGET_MAX];    /* request target as sent, NUL-terminated */
    uint16_t target_len;        /* bytes in 'target' without the NUL */
    bool target_truncated;      /* target was longer than RS_HTTP_TARGET_MAX-1 */
    bool req_headers_done;      /* method, target, req_content_length final */
    bool req_done;              /* whole request (with body) seen */
    bool resp_begun;            /* first response byte seen: resp_start valid */
    bool resp_done;             /* whole final response seen */
    bool close;                 /* connection closes after this transaction */
    uint8_t n_interim;          /* 1xx responses before the final one (saturates) */
    uint16_t status;            /* final status code, 0 until its headers end */
    int64_t req_content_length; /* Content-Length, -1 when absent or chunked */
    int64_t resp_content_length;
    uint32_t req_start, req_end;
    uint32_t resp_start, resp_end;
};

enum rs_http_event {
    RS_HTTP_EV_REQ_HEADERS,     /* method and target known: tag it now */
    RS_HTTP_EV_REQ_DONE,        /* request complete, req_end final */
    RS_HTTP_EV_RESP_DONE,       /* final response complete, resp_end final */
    RS_HTTP_EV_ERROR,           /* connection untransactionalizable; txn NULL */
};

struct rs_http_conn;

/* Called from inside rs_http_feed / rs_http_txn_eof.  'txn' is valid only
 * during the call; the callback must not feed the same connection. */
typedef void (*rs_http_event_cb)(void *arg, struct rs_http_conn *conn,
                                 const struct rs_http_txn *txn, enum rs_http_event ev);

/* Per-direction state.  Treat every field of rs_http_conn as private. */
struct rs_http_side {
    http_parser parser;
    uint32_t next;              /* seq of the next byte to consume */
    uint32_t boundary;          /* seq where the next message's range starts */
    bool in_msg;                /* between message begin and complete */
    bool eof;
    bool msg_done;              /* message_complete seen, not yet handled */
    bool closed;                /* a message said close: no further one allowed */
};

/* One connection: about 22 KB, no heap memory, nothing to free.  Embed it or
 * allocate it; initialise with rs_http_conn_init. */
struct rs_http_conn {
    uint32_t client_ip4;
    uint16_t client_port;
    struct rs_http_side side[2];
    uint32_t n_txn;             /* transactions created (next request's number) */
    uint32_t resp_num;          /* transaction awaiting its final response */
    bool resp_stalled;          /* response began before its request: waiting */
    enum rs_http_err err;
    int err_dir;                /* direction that failed, -1 if none */
    uint32_t err_seq;           /* seq of the first byte not consumed there */
    unsigned err_hpe;           /* http_parser errno (enum http_errno) */
    rs_http_event_cb cb;
    void *cb_arg;
    struct rs_http_txn ring[RS_HTTP_TXN_RING];
};

/* ---- Set-up ----------------------------------------------------------- */

/* Initialises 'conn' for the client 'client_ip4':'client_port' (host order).
 * 'req_isn' and 'resp_isn' are the initial sequence numbers of the client's
 * and the server's SYN: the first payload byte of each stream is isn + 1. */
void rs_http_conn_init(struct rs_http_conn *conn, uint32_t client_ip4,
                       uint16_t client_port, uint32_t req_isn, uint32_t resp_isn);

/* Sets the event callback ('cb' NULL for none). */
void rs_http_conn_set_cb(struct rs_http_conn *conn, rs_http_event_cb cb, void *arg);

/* ---- Feeding ---------------------------------------------------------- */

/* Feeds 'len' bytes of direction 'dir' whose first byte has sequence number
 * 'seq'.  Bytes must come in order: 'seq' may be at or before the next
 * expected byte (already consumed bytes are skipped, so a caller may re-feed
 * its whole contiguous prefix) but not after it.
 * Returns the number of bytes of 'data' now consumed, counting skipped ones;
 * this is less than 'len' when 'len' > RS_HTTP_FEED_MAX, or when a response
 * begins before its request has been fed (the response side then waits: feed
 * more requests, then the rest of the response again).
 * Returns -ERANGE on a gap ('seq' after the next expected byte), -EINVAL for a
 * bad 'dir' or NULL 'data' with 'len' > 0, -EPIPE after rs_http_txn_eof on
 * 'dir', -EPROTO when the connection is (or just became) untransactionalizable:
 * see rs_http_conn_err.  Transactions finished before the failure stay as
 * they were; a request that failed before its headers ended has method and
 * target "". */
int rs_http_feed(struct rs_http_conn *conn, enum rs_http_dir dir, uint32_t seq,
                 const void *data, size_t len);

/* Signals that direction 'dir' ended (FIN).  A response body delimited by
 * the connection close completes here.
 * Returns 0 when the stream ended between messages (or closed such a body),
 * 1 when it ended inside a message (that transaction stays incomplete),
 * -EPIPE when already called for 'dir', -EINVAL for a bad 'dir', -EPROTO when
 * the connection is untransactionalizable. */
int rs_http_txn_eof(struct rs_http_conn *conn, enum rs_http_dir dir);

/* ---- Queries ---------------------------------------------------------- */

/* Returns transaction 'num', or NULL if it does not exist yet or has left
 * the ring (only the last RS_HTTP_TXN_RING are kept). */
const struct rs_http_txn *rs_http_txn_get(const struct rs_http_conn *conn, uint32_t num);

/* Number of transactions created so far (the next request's number). */
uint32_t rs_http_txn_count(const struct rs_http_conn *conn);

/* Number of transactions whose final response is complete.  Responses
 * complete in order, so these are transactions 0 .. n-1 (TL = n - 1). */
uint32_t rs_http_resp_done_count(const struct rs_http_conn *conn);

/* Sequence number of the next byte 'dir' expects. */
uint32_t rs_http_next_seq(const struct rs_http_conn *conn, enum rs_http_dir dir);

/* Finds the transaction in the ring whose 'dir' range contains 'seq'
 * (incomplete ranges count up to the bytes fed).
 * Returns it, or NULL when none does. */
const struct rs_http_txn *rs_http_txn_find(const struct rs_http_conn *conn,
                                           enum rs_http_dir dir, uint32_t seq);

/* Returns why the connection is untransactionalizable, RS_HTTP_OK if it is not. */
enum rs_http_err rs_http_conn_err(const struct rs_http_conn *conn);

/* Short text for 'err', e.g. "too many pipelined". */
const char *rs_http_err_str(enum rs_http_err err);

/* The parser's own description of a malformed-stream error (e.g. "invalid
 * HTTP method"), or "" when the error did not come from the parser. */
const char *rs_http_conn_err_detail(const struct rs_http_conn *conn);

/* The reason phrase of a status code that resplice's servers answer
 * themselves (rs-app, rs-front): "Bad Gateway" for 502; "Unknown" for
 * codes they never make. */
const char *rs_http_reason(int status);

#endif /* RS_HTTP_TXN_H */
