/* The aux logger's protocol logic (DESIGN.md "aux logger"): cuts the byte
 * streams of an SMTP or IMAP conversation into request/reply units, names
 * the commands and replies in them, finds the transaction marker a web
 * backend puts in its IMAP ID / SMTP EHLO, and picks the recorded commands a
 * catch-up must resend.  Pure logic: no I/O, no globals. */
#ifndef RS_AUXPROTO_H
#define RS_AUXPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "txn_id.h"

/* ---- Types ------------------------------------------------------------ */

enum rs_aux_proto { RS_AUX_SMTP = 0, RS_AUX_IMAP = 1 };
enum rs_aux_side { RS_AUX_CLIENT = 0, RS_AUX_SERVER = 1 };

/* What rs_aux_split_scan found. */
enum rs_aux_ev {
    RS_AUX_EV_NEED = 0,     /* everything scanned; feed more bytes */
    RS_AUX_EV_UNIT = 1,     /* a unit ends at 'end' */
    RS_AUX_EV_LITERAL = 2,  /* IMAP client: a synchronizing literal "{N}\r\n" ends at 'end' */
    RS_AUX_EV_CONT = 3,     /* IMAP server: a continuation request "+ ..." at [start, end) */
};

struct rs_aux_event {
    enum rs_aux_ev kind;
    size_t start, end;      /* byte offsets into the caller's unit buffer */
    bool data;              /* SMTP client unit: message data after a 354 */
};

/* Incremental splitter of one direction of one conversation.  The caller
 * keeps the bytes of the unit in progress in its own buffer, starting at
 * the unit's first byte, appends what it reads and calls
 * rs_aux_split_scan; the splitter remembers how far it has looked, so each
 * byte is examined once.  Unit 0 of the server side is the greeting. */
struct rs_aux_split {
    uint8_t proto, side, state;
    bool greeting;          /* server: the next unit is the greeting */
    bool multiline;         /* SMTP server: saw an "NNN-" line of this reply */
    size_t pos;             /* bytes of the unit scanned so far */
    size_t line;            /* where the logical line (with its literals) starts */
    size_t seg;             /* where the current physical line starts */
    uint64_t literal;       /* literal bytes still to pass over */
    size_t max_line, max_unit;
};

/* Longest tag and command name kept (longer ones are refused). */
#define RS_AUX_TAG_MAX 64
#define RS_AUX_VERB_MAX 24

/* The command at the head of a client unit. */
struct rs_aux_cmd {
    char tag[RS_AUX_TAG_MAX];   /* IMAP tag; "" for SMTP */
    char verb[RS_AUX_VERB_MAX]; /* upper case: "LOGIN", "UID STORE", "MAIL"; "" for SMTP data */
    bool data;                  /* SMTP message data unit */
};

/* The end of a reply unit. */
struct rs_aux_reply {
    int code;                   /* SMTP: the reply code (200..599 ...); IMAP: 0 */
    bool ok;                    /* SMTP 2xx/3xx; IMAP last line's status OK or PREAUTH */
    char tag[RS_AUX_TAG_MAX];   /* IMAP: tag of the last line ("*" for a greeting) */
};

/* What the catch-up planner needs to know of each recorded unit. */
struct rs_aux_unit_sum {
    struct rs_aux_cmd cmd;
    struct rs_aux_reply reply;
    bool complete;              /* the reply is complete */
};

/* ---- Splitting -------------------------------------------------------- */

/* Prepares 's' for one direction.  'max_line' caps a physical line (with
 * its CRLF), 'max_unit' a whole unit (literals and message data included). */
void rs_aux_split_init(struct rs_aux_split *s, enum rs_aux_proto proto, enum rs_aux_side side,
                       size_t max_line, size_t max_unit);

/* Scans 'buf' of 'len' bytes: the unit in progress from its first byte.
 * Returns RS_AUX_EV_NEED, or the event it stopped at, filled into '*ev':
 *  UNIT     the unit is buf[0, end); the splitter starts over for the next
 *           unit, so the caller drops those bytes from its buffer first;
 *  LITERAL  (IMAP client) the server would now send a continuation; call
 *           again to go on;
 *  CONT     (IMAP server) buf[start, end) is a continuation request; the
 *           caller must cut those bytes out of its buffer before the next
 *           call (the splitter has rewound to 'start').
 * Returns -EMSGSIZE for an over-long line or unit and -EPROTO for input
 * that is not the protocol (SMTP reply line without a code, BDAT); the
 * splitter then stays failed.  An SMTP client splitter stops after a DATA
 * command until rs_aux_split_data_reply tells it the reply. */
int rs_aux_split_scan(struct rs_aux_split *s, const uint8_t *buf, size_t len, struct rs_aux_event *ev);

/* True when an SMTP client splitter waits for the reply to DATA. */
bool rs_aux_split_waiting(const struct rs_aux_split *s);

/* Tells a waiting SMTP client splitter the DATA reply's 'code': 354 makes
 * the next unit message data.  Returns 0, or -EINVAL when it was not
 * waiting. */
int rs_aux_split_data_reply(struct rs_aux_split *s, int code);

/* ---- Naming units ----------------------------------------------------- */

/* Reads the command at the head of client unit 'unit' of 'len' bytes ('data'
 * as the splitter said).  Returns 0, or -EINVAL when the first line is not
 * a command (IMAP: no "tag SP name"; e.g. a SASL response or IDLE's DONE). */
int rs_aux_cmd_parse(enum rs_aux_proto proto, const uint8_t *unit, size_t len, bool data,
                     struct rs_aux_cmd *cmd);

/* Reads the status of reply unit 'unit' of 'len' bytes from its last line.
 * Returns 0, or -EINVAL when that line is not a status line. */
int rs_aux_reply_parse(enum rs_aux_proto proto, const uint8_t *unit, size_t len,
                       struct rs_aux_reply *r);

/* Loose equality of two commands, for checking a re-run against its
 * record: same tag and name (IMAP), same verb or both data (SMTP). */
bool rs_aux_cmd_same(const struct rs_aux_cmd *a, const struct rs_aux_cmd *b);

/* True for a command after which the client may send a marker: IMAP
 * CAPABILITY, NOOP, ID, LOGIN, AUTHENTICATE, ENABLE; SMTP none (the marker
 * is in the first EHLO/HELO). */
bool rs_aux_cmd_pre_marker(enum rs_aux_proto proto, const struct rs_aux_cmd *cmd);

/* ---- Markers ---------------------------------------------------------- */

/* What rs_aux_marker found. */
#define RS_AUX_MARKER_TXN   1   /* the transaction's first run */
#define RS_AUX_MARKER_RERUN 2   /* a re-run after a failover (recovered connection
                                 * or the logger's replay): may be answered from a record */

/* The marker in a client unit: IMAP "TAG ID (... "x-resplice-txn" "ID" ...)"
 * (key case-insensitive; quoted, atom or literal strings), SMTP
 * "EHLO|HELO x-resplice-txn-A-B-C-D-PORT-N[.domain]"; on a re-run the key
 * is "x-resplice-rerun" and the label "x-resplice-rerun-...".
 * Returns RS_AUX_MARKER_TXN or RS_AUX_MARKER_RERUN and sets '*id' when
 * found, 0 when the unit is not a marker command (or is one without the
 * marker), -EINVAL when the marker is there but malformed. */
int rs_aux_marker(enum rs_aux_proto proto, const uint8_t *unit, size_t len, rs_txn_id *id);

/* True for the command that may carry the marker (IMAP ID, SMTP EHLO/HELO). */
bool rs_aux_cmd_is_marker(enum rs_aux_proto proto, const struct rs_aux_cmd *cmd);

/* ---- Catch-up ---------------------------------------------------------- */

/* Picks the recorded units a re-run must resend to the real server before
 * going live at unit 'cur', so that the server holds the same session state
 * the replayed replies told the client about.  'units' are the record's
 * units, 'marker' the index of the marker unit (always resent: the replay
 * answered it), 'cur' (> marker) the first unit not replayed, 'cur_data'
 * whether the client's unit 'cur' is SMTP message data.
 *  IMAP: LOGIN, AUTHENTICATE, SELECT, EXAMINE, ENABLE that completed OK.
 *  SMTP: MAIL and RCPT of the mail transaction still open at 'cur' (after
 *  the last data unit, RSET or EHLO/HELO), and its DATA when 'cur' is data.
 * Never a data unit or an IMAP APPEND/STORE/COPY/MOVE/EXPUNGE.
 * Writes up to 'max' indices, ascending, into 'out'.  Returns their number,
 * -EINVAL for bad arguments, -ENOSPC when 'max' is too small. */
int rs_aux_catchup_plan(enum rs_aux_proto proto, const struct rs_aux_unit_sum *units, size_t n,
                        size_t marker, size_t cur, bool cur_data, size_t *out, size_t max);

#endif /* RS_AUXPROTO_H */
