/* rs-app's state-transfer library (issue 5): the state hooks talk to the
 * local rs-stated over a unix stream socket; rs-stated holds the key and the
 * TCP connections.  This header defines that socket's records (shared with
 * stated/, which includes it) and the library's entry points for rs-app. */
#ifndef RS_APP_XFER_H
#define RS_APP_XFER_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "ctl_msg.h"
#include "txn_id.h"

/* ---- The unix-socket protocol ----------------------------------------------
 *
 * A stream of records, both ways; integers in network byte order; no MAC
 * (the socket is local and its file mode guards it):
 *
 *   off size field
 *     0    4 len: bytes after this field, XFER_REC_MIN..XFER_REC_MAX
 *     4    1 type (enum xfer_rec_type)
 *     5    4 id: the sender's number for this record; a DONE names the
 *              record it answers by that record's id
 *     9    . body:
 *   UPDATE   (app -> stated)  u64 txn, u8 sync (0|1), state bytes (rest).
 *            stated sends STATE_UPDATE{txn, sync, state} to its --peer and
 *            answers DONE with the peer's ACK status, or -ETIMEDOUT,
 *            -ECONNRESET, -ENOBUFS, -ENOTCONN (no --peer) when it cannot.
 *   APPLY    (stated -> app)  u64 txn, state bytes (rest).  The app applies
 *            (rs_app_state_apply) and answers DONE with its status.
 *   CONN_MAP (stated -> app)  u32 peer ip, u16 peer port, u32 client ip,
 *            u16 client port, u16 next number.  Answered DONE once recorded
 *            (0, or -ENOBUFS when the table is full).
 *   DONE     (both)           i32 status (0 or a negative errno).
 *
 * Records are answered in the order they arrive.  A reader that sees a
 * record it cannot parse has lost the framing and closes the socket (the
 * app then reconnects; stated reports the closed app as failed, so neither
 * side sends junk). */
enum xfer_rec_type {
    XFER_UPDATE = 1,
    XFER_APPLY,
    XFER_CONN_MAP,
    XFER_DONE,
};

#define XFER_LEN_FIELD  4u
#define XFER_REC_HDR    9u                          /* len, type, id */
#define XFER_REC_MIN    5u                          /* type + id */
#define XFER_UPDATE_HDR (XFER_REC_HDR + 9u)
#define XFER_APPLY_HDR  (XFER_REC_HDR + 8u)
#define XFER_MAP_LEN    (XFER_REC_HDR + 18u)
#define XFER_DONE_LEN   (XFER_REC_HDR + 4u)
/* Longest record: an UPDATE carrying the largest state a STATE_UPDATE can. */
#define XFER_REC_MAX    (XFER_UPDATE_HDR - XFER_LEN_FIELD + RS_CTL_STATE_MAX)

/* One decoded record; 'state' points into the caller's buffer. */
struct xfer_rec {
    uint8_t type;
    uint32_t id;
    rs_txn_id txn;                  /* UPDATE, APPLY */
    bool sync;                      /* UPDATE */
    const uint8_t *state;           /* UPDATE, APPLY */
    uint32_t len;
    struct rs_ctl_conn_map map;     /* CONN_MAP */
    int32_t status;                 /* DONE */
};

static inline void xfer_put32__(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void xfer_put16__(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t xfer_get32__(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t xfer_get16__(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* Bytes record 'r' encodes to (its state included). */
static inline size_t xfer_rec_size(const struct xfer_rec *r)
{
    switch (r->type) {
    case XFER_UPDATE: return XFER_UPDATE_HDR + r->len;
    case XFER_APPLY: return XFER_APPLY_HDR + r->len;
    case XFER_CONN_MAP: return XFER_MAP_LEN;
    default: return XFER_DONE_LEN;
    }
}

/* Writes 'r' into 'buf' (xfer_rec_size(r) bytes of room).  Returns the
 * length written, or 0 when 'r' is too long for a record. */
static inline size_t xfer_rec_encode(const struct xfer_rec *r, uint8_t *buf)
{
    size_t n = xfer_rec_size(r);
    uint8_t *p = buf + XFER_REC_HDR;

    if (n - XFER_LEN_FIELD > XFER_REC_MAX)
        return 0;
    xfer_put32__(buf, (uint32_t)(n - XFER_LEN_FIELD));
    buf[4] = r->type;
    xfer_put32__(buf + 5, r->id);
    switch (r->type) {
    case XFER_UPDATE:
    case XFER_APPLY:
        xfer_put32__(p, (uint32_t)(r->txn >> 32));
        xfer_put32__(p + 4, (uint32_t)r->txn);
        p += 8;
        if (r->type == XFER_UPDATE)
            *p++ = r->sync ? 1 : 0;
        if (r->len)
            memcpy(p, r->state, r->len);
        break;
    case XFER_CONN_MAP:
        xfer_put32__(p, r->map.peer.ip4);
        xfer_put16__(p + 4, r->map.peer.port);
        xfer_put32__(p + 6, r->map.client.ip4);
        xfer_put16__(p + 10, r->map.client.port);
        xfer_put16__(p + 12, r->map.next_num);
        p[14] = r->map.flags;
        break;
    default:
        xfer_put32__(p, (uint32_t)r->status);
        break;
    }
    return n;
}

/* Decodes the record at the start of 'buf' ('len' bytes).  Returns the
 * bytes it takes (> 0), 0 when more bytes are needed, or -EBADMSG when the
 * stream is not a record stream (bad length or type, malformed body). */
static inline long xfer_rec_decode(const uint8_t *buf, size_t len, struct xfer_rec *r)
{
    uint32_t n;
    const uint8_t *p;

    if (len < XFER_LEN_FIELD)
        return 0;
    n = xfer_get32__(buf);
    if (n < XFER_REC_MIN || n > XFER_REC_MAX)
        return -EBADMSG;
    if (len < XFER_LEN_FIELD + (size_t)n)
        return 0;
    memset(r, 0, sizeof(*r));
    r->type = buf[4];
    r->id = xfer_get32__(buf + 5);
    p = buf + XFER_REC_HDR;
    n += XFER_LEN_FIELD;
    switch (r->type) {
    case XFER_UPDATE:
    case XFER_APPLY: {
        size_t hdr = r->type == XFER_UPDATE ? XFER_UPDATE_HDR : XFER_APPLY_HDR;

        if (n < hdr)
            return -EBADMSG;
        r->txn = (uint64_t)xfer_get32__(p) << 32 | xfer_get32__(p + 4);
        if (r->type == XFER_UPDATE) {
            if (p[8] > 1)
                return -EBADMSG;
            r->sync = p[8];
        }
        r->state = buf + hdr;
        r->len = (uint32_t)(n - hdr);
        break;
    }
    case XFER_CONN_MAP:
        if (n != XFER_MAP_LEN)
            return -EBADMSG;
        r->map.peer.ip4 = xfer_get32__(p);
        r->map.peer.port = xfer_get16__(p + 4);
        r->map.client.ip4 = xfer_get32__(p + 6);
        r->map.client.port = xfer_get16__(p + 10);
        r->map.next_num = xfer_get16__(p + 12);
        r->map.flags = p[14];
        break;
    case XFER_DONE:
        if (n != XFER_DONE_LEN)
            return -EBADMSG;
        r->status = (int32_t)xfer_get32__(p);
        break;
    default:
        return -EBADMSG;
    }
    return (long)n;
}

/* Room a reader's buffer needs for the longest record. */
#define XFER_IN_CAP (XFER_LEN_FIELD + XFER_REC_MAX)

/* Reads what non-blocking socket 'fd' has into 'buf' (holding '*len'
 * bytes, XFER_IN_CAP of room) and hands each complete record to 'fn' (its
 * 'state' is valid during the call).  'fn' returns false when it closed the
 * socket; 'buf' is then not touched again.  Returns 0 when the socket has
 * nothing more for now, -ECANCELED when 'fn' stopped, -ESHUTDOWN at the end
 * of the stream, -EBADMSG on a malformed record, or recv's negative errno. */
static inline int xfer_read(int fd, uint8_t *buf, size_t *len,
                            bool (*fn)(void *ctx, const struct xfer_rec *r), void *ctx)
{
    for (;;) {
        size_t off = 0;
        ssize_t n = recv(fd, buf + *len, XFER_IN_CAP - *len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        if (n == 0)
            return -ESHUTDOWN;
        *len += (size_t)n;
        for (;;) {
            struct xfer_rec r;
            long used = xfer_rec_decode(buf + off, *len - off, &r);

            if (used == 0)
                break;
            if (used < 0)
                return -EBADMSG;
            off += (size_t)used;
            if (!fn(ctx, &r))
                return -ECANCELED;
        }
        memmove(buf, buf + off, *len - off);
        *len -= off;
    }
}

/* ---- The library (app/xfer.c) ------------------------------------------------
 *
 * What the hooks do:
 *   txn_update   deterministic ('nondet' 0): an UPDATE with sync 0, return
 *                0 at once (asynchronous; a failure is logged and counted).
 *                Non-deterministic: an UPDATE with sync 1 and
 *                RS_APP_HOOK_WAIT; the response goes when stated relays the
 *                peer's ACK (rs_app_txn_resume with its status), or as 503
 *                after the timeout (-ETIMEDOUT), when the socket closes
 *                (-ECONNRESET), or at once when stated is not connected
 *                (-ENOTCONN).  State that arrived here from the peer (APPLY
 *                of the same transaction ID, i.e. a replayed transaction on
 *                the alternate) is not sent back: the hook returns 0.
 *   txn_end      forgets a transaction still waiting (its connection died).
 * CONN_MAP records go into a table keyed by the peer address; an accepted
 * connection from a mapped peer takes the mapped client identity and
 * numbers its transactions from the mapped next number.  Entries are used
 * once and expire after XFER_MAP_TTL_NS. */

struct rs_app;
struct app_xfer;

#define XFER_MAP_MAX     1024u                  /* connection maps held */
#define XFER_MAP_TTL_NS  5000000000ull          /* unused maps expire */
#define XFER_WAIT_MAX    4096u                  /* synchronous updates in flight */
#define XFER_OUT_CAP     (2u << 20)             /* unsent records to stated: room for
                                                   a largest (1 MiB) state and more */
#define XFER_APPLIED_MAX 256u                   /* transaction IDs applied from the peer */
#define XFER_TIMEOUT_NS  500000000ull           /* default synchronous-update timeout */
#define XFER_RETRY_MIN_NS 10000000ull           /* reconnect back-off: 10 ms .. 1 s */
#define XFER_RETRY_MAX_NS 1000000000ull

/* Connects 'app' to the stated socket at 'path' (retrying in the
 * background while it is absent; its events on the app's loop) and
 * installs the hooks; 'timeout_ns' bounds a synchronous update.  Returns 0,
 * or a negative errno when the library cannot be set up (memory). */
int app_xfer_init(struct rs_app *app, const char *path, uint64_t timeout_ns);

/* For an accepted connection from 'peer_ip':'peer_port' (host order): when
 * a map for that peer is held, sets the client identity, first number and
 * the map's RS_CTL_CONN_MAP_* flags and returns true (the map is used up);
 * else leaves them and returns false. */
bool app_xfer_map_take(struct rs_app *app, uint32_t peer_ip, uint16_t peer_port,
                       uint32_t *client_ip, uint16_t *client_port, uint16_t *next_num, uint8_t *flags);

/* Front mode: the apply command started for the APPLY record 'cookie'
 * (see app_front_apply) ended with 'status' (0 or a negative errno).
 * Answers stated's record and resumes reading the records behind it, which
 * waited so that answers keep their order. */
void app_xfer_apply_done(struct rs_app *app, uint64_t cookie, int status);

/* Appends " xfer_key=value ..." counters to the stats line on 'f'. */
void app_xfer_stats(struct rs_app *app, FILE *f);

/* Closes the socket and frees the library. */
void app_xfer_close(struct rs_app *app);

#endif /* RS_APP_XFER_H */
