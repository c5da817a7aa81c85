/* The records of the unix stream socket between an application's state
 * library (libstate/) and its backend's rs-stated.  Pure encode/decode: no
 * I/O.  rs-stated holds the key and the TCP connections; the socket is
 * local and its file mode guards it, so records carry no MAC.
 *
 * A stream of records, both ways; integers in network byte order:
 *
 *   off size field
 *     0    4 len: bytes after this field, RS_XFER_REC_MIN..RS_XFER_REC_MAX
 *     4    1 type (enum rs_xfer_type)
 *     5    4 id: the sender's number for this record; a DONE names the
 *              record it answers by that record's id
 *     9    . body:
 *   UPDATE   (app -> stated)  u64 txn, u8 sync (0|1), state bytes (rest).
 *            stated sends STATE_UPDATE{txn, sync, state} to its --peer and
 *            answers DONE with the peer's ACK status, or -ETIMEDOUT,
 *            -ECONNRESET, -ENOBUFS, -ENOTCONN (no --peer) when it cannot.
 *   APPLY    (stated -> app)  u64 txn, state bytes (rest).  The app applies
 *            the state and answers DONE with its status.
 *   CONN_MAP (stated -> app)  u32 peer ip, u16 peer port, u32 client ip,
 *            u16 client port, u16 next number, u8 flags.  Answered DONE once
 *            recorded (0, or -ENOBUFS when the table is full).
 *   DONE     (both)           i32 status (0 or a negative errno).
 *   EXPORT   (stated -> app)  no body: the app's whole state, please (a new
 *            standby in the chain needs it).  Answered by SNAPSHOT, or by
 *            DONE with a negative status when the app cannot export.
 *   SNAPSHOT (app -> stated)  state bytes (rest): the whole state, in the
 *            form an APPLY takes, including every UPDATE sent before it.
 *
 * Records are answered in the order they arrive.  A reader that sees a
 * record it cannot parse has lost the framing and closes the socket (the
 * app then reconnects; stated reports the closed app as failed, so neither
 * side sends junk). */
#ifndef RS_XFER_REC_H
#define RS_XFER_REC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl_msg-t.h"
#include "txn_id.h"

enum rs_xfer_type {
    RS_XFER_UPDATE = 1,
    RS_XFER_APPLY,
    RS_XFER_CONN_MAP,
    RS_XFER_DONE,
    RS_XFER_EXPORT,
    RS_XFER_SNAPSHOT,
};

#define RS_XFER_LEN_FIELD  4u
#define RS_XFER_REC_HDR    9u                               /* len, type, id */
#define RS_XFER_REC_MIN    5u                               /* type + id */
#define RS_XFER_UPDATE_HDR (RS_XFER_REC_HDR + 9u)
#define RS_XFER_APPLY_HDR  (RS_XFER_REC_HDR + 8u)
#define RS_XFER_MAP_LEN    (RS_XFER_REC_HDR + 15u)
#define RS_XFER_DONE_LEN   (RS_XFER_REC_HDR + 4u)
/* Longest record: an UPDATE carrying the largest state a STATE_UPDATE can. */
#define RS_XFER_REC_MAX    (RS_XFER_UPDATE_HDR - RS_XFER_LEN_FIELD + RS_CTL_STATE_MAX)
/* Room a reader's buffer needs for the longest record. */
#define RS_XFER_IN_CAP     (RS_XFER_LEN_FIELD + RS_XFER_REC_MAX)

/* One decoded record; 'state' points into the caller's buffer. */
struct rs_xfer_rec {
    uint8_t type;
    uint32_t id;
    rs_txn_id txn;                  /* UPDATE, APPLY */
    bool sync;                      /* UPDATE */
    const uint8_t *state;           /* UPDATE, APPLY, SNAPSHOT */
    uint32_t len;
    struct rs_ctl_conn_map map;     /* CONN_MAP */
    int32_t status;                 /* DONE */
};

/* Bytes record 'r' encodes to (its state included). */
size_t rs_xfer_rec_size(const struct rs_xfer_rec *r);

/* Writes 'r' into 'buf' (rs_xfer_rec_size(r) bytes of room).  Returns the
 * length written, or 0 when 'r' is too long for a record. */
size_t rs_xfer_rec_encode(const struct rs_xfer_rec *r, uint8_t *buf);

/* Decodes the record at the start of 'buf' ('len' bytes).  Returns the
 * bytes it takes (> 0), 0 when more bytes are needed, or -EBADMSG when the
 * stream is not a record stream (bad length or type, malformed body). */
long rs_xfer_rec_decode(const uint8_t *buf, size_t len, struct rs_xfer_rec *r);

#endif /* RS_XFER_REC_H */
