/* Types of the control messages (ctl_msg.h has their functions): the wire
 * format, the message structs, keys and replay windows. */
#ifndef RS_CTL_MSG_T_H
#define RS_CTL_MSG_T_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "txn_id.h"

/* ---- Wire format -----------------------------------------------------------
 *
 *   off  size  field
 *     0     2  magic "RS"
 *     2     1  version (RS_CTL_VERSION)
 *     3     1  type (enum rs_ctl_type)
 *     4     2  flags (none defined yet: must be 0)
 *     6     4  sender id (non-zero)
 *    10     8  sequence (non-zero, strictly increasing per sender)
 *    18     4  payload length
 *    22     n  payload (type-specific, fixed-size fields, network byte order)
 *  22+n    32  keyed BLAKE2b-256 (libsodium's crypto_generichash) of bytes
 *              [0, 22+n): version 2; version 1 had HMAC-SHA256, 4 times
 *              slower here (a 40 KB state: 197 us against 49 on each end)
 */
#define RS_CTL_VERSION     2u
#define RS_CTL_HDR_LEN     22u
#define RS_CTL_MAC_LEN     32u
#define RS_CTL_KEY_LEN     32u
/* Opaque state of one transaction; bounds the receiver's buffering. */
#define RS_CTL_STATE_MAX   (1u << 20)
#define RS_CTL_STATE_HDR   16u
#define RS_CTL_PLAN_HDR    48u
/* TL+1's logged request in a PLAN: up to the logger's largest ring (an
 * upload in flight).  Only a connection a daemon opened itself takes a
 * frame above RS_CTL_SMALL_FRAME_MAX (a PLAN is the reply to a RECOVER). */
#define RS_CTL_PLAN_DATA_MAX (64u << 20)
/* An entry of the proxies' splice table in a FLOW (opaque here: both ends
 * run the same rs-proxy). */
#define RS_CTL_FLOW_HDR      28u
#define RS_CTL_FLOW_DATA_MAX 512u
#define RS_CTL_PAYLOAD_MAX (RS_CTL_PLAN_HDR + RS_CTL_PLAN_DATA_MAX)
#define RS_CTL_FRAME_MAX   (RS_CTL_HDR_LEN + RS_CTL_PAYLOAD_MAX + RS_CTL_MAC_LEN)
#define RS_CTL_SMALL_FRAME_MAX (RS_CTL_HDR_LEN + RS_CTL_PLAN_HDR + RS_CTL_STATE_MAX + RS_CTL_MAC_LEN)
/* Senders one receiver tracks; a deployment has a handful of daemons. */
#define RS_CTL_REPLAY_PEERS 64u

/* ---- Types ---------------------------------------------------------------- */

enum rs_ctl_type {
    RS_CTL_HEARTBEAT = 1,     /* "I am alive" */
    RS_CTL_FAILURE,           /* a backend is considered dead */
    RS_CTL_TXN_LOGGED,        /* logger -> alternate: response fully logged, apply state */
    RS_CTL_STATE_REPORT,      /* alternate -> logger: Ts and TA of a connection */
    RS_CTL_RECOVERY_INFO,     /* logger -> alternate/proxy: TL, AckTL, p */
    RS_CTL_RESPLICE,          /* recovery manager -> proxies: splice to a new server */
    RS_CTL_ACK,               /* reply to any request (RESPLICE_DONE is an ACK of RESPLICE) */
    RS_CTL_STATE_UPDATE,      /* primary -> alternate: a transaction's state */
    RS_CTL_CONN_MAP,          /* proxy/logger -> stated: the TCP peer about to connect acts for a client */
    RS_CTL_STATE_QUERY,       /* logger -> stated: report Ts and TA of a client connection */
    RS_CTL_APPLY,             /* logger -> stated: apply buffered state of a client up to a number */
    RS_CTL_RECOVER,           /* proxy -> logger: a client's backend failed, plan its recovery */
    RS_CTL_PLAN,              /* logger -> proxy: the recovery plan, with TL+1's logged request */
    RS_CTL_RESEND,            /* proxy -> logger (first frame on a resend connection): send these bytes */
    RS_CTL_SUSPECT,           /* logger -> proxy: this client's backend owes a response and is silent */
    RS_CTL_FENCE,             /* proxy -> stated, operator -> proxy: a backend is fenced (or readmitted) */
    RS_CTL_STATUS,            /* operator -> proxy: report roles and protection */
    RS_CTL_STATUS_REPORT,     /* proxy -> operator: the answer to STATUS */
    RS_CTL_UNLOGGED,          /* logger -> alternate: a connection it cannot log, apply its states as they come */
    RS_CTL_FLOW,              /* active proxy -> standby proxy: its splice table, as it changes */
    RS_CTL_CLOSE_ASK,         /* proxy -> logger: is this backend's end (its FIN, held) meant? */
    RS_CTL_CLOSE_WORD,        /* logger -> proxy: whether a client's connection may end there */
    RS_CTL_OWED_ASK,          /* proxy -> logger, as it comes up: name the connections owing a response */
    RS_CTL_TYPE_MAX = RS_CTL_OWED_ASK,
};

enum rs_ctl_role {
    RS_CTL_ROLE_PROXY = 1,
    RS_CTL_ROLE_LOGGER,
    RS_CTL_ROLE_AUXLOG,
    RS_CTL_ROLE_BACKEND,
    RS_CTL_ROLE_MAX = RS_CTL_ROLE_BACKEND,
};
/* Not a heartbeat role: an operator's tool (rs-ctl). */
#define RS_CTL_ROLE_OPERATOR (RS_CTL_ROLE_MAX + 1)

/* Each daemon numbers the senders of its frames in its own space, so the
 * receiver knows which role sent a frame (the sender field is signed with
 * it) and refuses a type that role never sends (rs_ctl_role_may_send). */
#define RS_CTL_SENDER_PROXY    0x50580000u   /* "PX" << 16 | channel */
#define RS_CTL_SENDER_LOGGER   0x4c4f4700u   /* "LOG" << 8 | channel */
#define RS_CTL_SENDER_OPERATOR 0x7f000000u   /* | the tool's pid */
/* rs-stated: RS_CTL_ROLE_BACKEND << 24 | backend id << 4 | channel */

enum rs_ctl_fail_reason {
    RS_CTL_FAIL_TIMEOUT = 1,  /* heartbeats stopped */
    RS_CTL_FAIL_RESET,        /* backend reset its connections */
    RS_CTL_FAIL_EXITED,       /* the process is known to have exited */
    RS_CTL_FAIL_ADMIN,        /* an operator or the test harness said so */
    RS_CTL_FAIL_MAX = RS_CTL_FAIL_ADMIN,
};

struct rs_ctl_key {
    uint8_t bytes[RS_CTL_KEY_LEN];
};

/* A client's end of a spliced connection (host byte order). */
struct rs_ctl_conn {
    uint32_t ip4;             /* non-zero */
    uint16_t port;            /* non-zero */
};

struct rs_ctl_heartbeat {
    uint8_t role;             /* enum rs_ctl_role */
    uint32_t backend_id;      /* sender's backend id; 0 unless role is BACKEND */
    uint64_t time_us;         /* sender's clock, microseconds */
};

struct rs_ctl_failure {
    uint32_t backend_id;
    uint16_t reason;          /* enum rs_ctl_fail_reason */
};

struct rs_ctl_txn_logged {
    rs_txn_id txn;
    uint32_t resp_end;        /* seq after the transaction's last response byte */
};

/* The logger cannot log client connection 'from' (ip, port) from
 * transaction 'from''s number on (a ring full, a hole, a stream it joined
 * midway): it cannot be recovered, so no TXN_LOGGED will come for it and
 * the alternate applies its states as they arrive, as the primary did. */
struct rs_ctl_unlogged {
    rs_txn_id from;
};

struct rs_ctl_state_report {
    struct rs_ctl_conn conn;
    bool has_ts, has_ta;      /* Ts implies TA; 'ts'/'ta' are 0 when absent */
    uint16_t ts, ta;
};

struct rs_ctl_recovery_info {
    struct rs_ctl_conn conn;
    bool has_tl;              /* 'tl' is 0 when absent */
    uint16_t tl;
    uint32_t ack_tl;
    uint32_t p;               /* < 2^31 */
};

struct rs_ctl_resplice {
    struct rs_ctl_conn client;
    struct rs_ctl_conn vip;       /* the proxy side of the client connection */
    struct rs_ctl_conn target;    /* the server to splice to */
    uint32_t client_seq;          /* Q: first client byte the target gets directly */
    uint32_t resp_seq;            /* R: first response byte taken from the target */
};

struct rs_ctl_ack {
    uint64_t echo_seq;        /* sequence of the acknowledged message (non-zero) */
    uint8_t echo_type;        /* its type (not ACK) */
    int32_t status;           /* 0, or a negative errno in [-4095, -1] */
};

/* What a STATE_UPDATE carries.  A backend's rs-stated that gets a new
 * successor in the chain (a readmitted backend) first sends it a snapshot:
 * its application's whole state, then, per client connection, how far
 * that state goes (COVERED), then the states it buffers. */
enum rs_ctl_state_kind {
    RS_CTL_STATE_TXN = 0,     /* transaction 'txn''s state */
    RS_CTL_STATE_SNAPSHOT,    /* the sender's whole application state; 'txn' 0, not sync, len > 0 */
    RS_CTL_STATE_COVERED,     /* the snapshot holds the states of 'txn''s connection up to
                               * 'txn' itself; len 0, not sync */
};

struct rs_ctl_state_update {
    rs_txn_id txn;
    bool sync;                /* sent before the response (non-deterministic txn) */
    uint32_t len;             /* <= RS_CTL_STATE_MAX */
    const uint8_t *data;      /* after decode: points into the frame buffer */
    uint8_t kind;             /* enum rs_ctl_state_kind */
};

/* The backend will see a TCP connection from 'peer' (the proxy's or the
 * logger's end); its requests are client 'client''s, numbered from
 * 'next_num' on (so transaction IDs match the logger's). */
struct rs_ctl_conn_map {
    struct rs_ctl_conn peer;
    struct rs_ctl_conn client;
    uint16_t next_num;
    uint8_t flags;            /* RS_CTL_CONN_MAP_* */
};

/* The connection re-runs transactions another backend already ran (a
 * recovery's re-splice to the alternate, the logger's replay): the app
 * says so to its auxiliary conversations, which rs-auxlog may then answer
 * from the record. */
#define RS_CTL_CONN_MAP_RERUN   (1u << 0)

struct rs_ctl_state_query {
    struct rs_ctl_conn client;
};

/* Apply every buffered state of 'client' whose number is below 'upto',
 * logged or not (recovery: (Ts, TR)). */
struct rs_ctl_apply {
    struct rs_ctl_conn client;
    uint16_t upto;
};

struct rs_ctl_recover {
    struct rs_ctl_conn client;
    uint16_t budget_ms;       /* the proxy gives up after this; the logger answers before (0: its default) */
    uint32_t backend_id;      /* the failed backend */
    struct rs_ctl_conn target;/* the alternate that takes over (its application port) */
    /* What the proxy saw of the client: its newest ACK and the end of its
     * newest segment.  The logger plans only once its log has seen as much
     * (or gives up waiting after a few ms). */
    bool has_seen;
    uint32_t client_ack, client_seq_end;
    /* The failed backend's newest ACK of the client's bytes, in the
     * client's numbering: the client will not send those bytes again, so a
     * plan whose log lacks any of them cannot be right. */
    bool has_server_ack;
    uint32_t server_ack;
    /* The end of what the proxy forwarded of the failed backend's bytes
     * (not counting a FIN it held), in the client's numbering: before its
     * verdict on an end (is the last response complete?) the logger waits
     * until its log holds as much, for a capture that lags behind. */
    bool has_server_end;
    uint32_t server_end;
    /* No backend is left to take the connection over: the logger only
     * says whether the backend's end was meant (-ESHUTDOWN) or not
     * (-EHOSTDOWN), and neither queries nor changes any backend's state.
     * 'target' is then the backend that ended. */
    bool verdict_only;
};

/* Flags of rs_ctl_plan. */
#define RS_CTL_PLAN_HAS_TL      (1u << 0)
#define RS_CTL_PLAN_EQ1         (1u << 1)  /* equation 1 holds */
#define RS_CTL_PLAN_REQ_DONE    (1u << 2)  /* TL+1's whole request is in 'data' */
#define RS_CTL_PLAN_SYNC_STATE  (1u << 3)  /* TL+1 is answered from synchronously sent state */
#define RS_CTL_PLAN_FLAGS_ALL   0x0fu

/* The recovery of one client connection, in the client's sequence spaces:
 * resend [resend_from, resend_to) of the response stream from the log;
 * then the alternate gets 'data' (TL+1's request bytes logged so far,
 * which start at client byte 'q') and its response to TL+1 lands at
 * response byte 'ack_tl'. */
struct rs_ctl_plan {
    struct rs_ctl_conn client;
    int32_t status;           /* 0, or why the connection cannot be recovered (negative errno) */
    uint8_t flags;            /* RS_CTL_PLAN_* */
    uint16_t tl, tsp, tr;     /* tl is 0 without RS_CTL_PLAN_HAS_TL */
    uint16_t replayed;        /* transactions replayed on the alternate */
    uint32_t ack_tl, p, ackcl;
    uint32_t resend_from, resend_to;
    uint32_t q;
    uint32_t len;             /* <= RS_CTL_PLAN_DATA_MAX */
    const uint8_t *data;      /* after decode: points into the frame buffer */
};

struct rs_ctl_resend {
    struct rs_ctl_conn client;
    uint32_t from, to;        /* response bytes [from, to) in the client's numbering */
};

enum rs_ctl_suspect_reason {
    RS_CTL_SUSPECT_STALL = 1, /* a complete request, no response byte for the configured bound */
    RS_CTL_SUSPECT_NOT_READING, /* request bytes wait unacknowledged, the backend's ACK has not
                                 * moved for the bound (it stopped reading: an upload in flight) */
    RS_CTL_SUSPECT_OWED,      /* the answer to OWED_ASK, one for each connection owing a response:
                               * one the proxy does not know died with its predecessor */
    RS_CTL_SUSPECT_MAX = RS_CTL_SUSPECT_OWED,
};

/* The connection of 'client' owes a response its backend has not begun
 * (or stopped) sending for 'silent_ms' while the client could take it:
 * the backend is hung, or cut off. */
struct rs_ctl_suspect {
    struct rs_ctl_conn client;
    uint16_t reason;          /* enum rs_ctl_suspect_reason */
    uint32_t silent_ms;
};

#define RS_CTL_CLOSE_MEANT  (1u << 0)  /* the application means its end there */
#define RS_CTL_CLOSE_ANSWER (1u << 1)  /* the answer to a CLOSE_ASK (else unasked) */
#define RS_CTL_CLOSE_FLAGS_ALL 0x03u

/* The verdict on a backend's end without a RECOVER (docs/recovery.md).
 * CLOSE_ASK (flags 0): the guard holds the FIN of the backend of 'client'
 * at 'resp_end'; the client's stream stands at 'req_end'.  CLOSE_WORD:
 * the logger's log shows an end the application means (MEANT: every
 * request has its whole response, and the client closed its side or the
 * last response said "Connection: close") at these ends — unasked as soon
 * as it does, or the ANSWER to an ask (then without MEANT when it cannot
 * say so: a RECOVER judges).  Both in the client's numbering, 'req_end'
 * past the client's FIN if it sent one. */
struct rs_ctl_close {
    struct rs_ctl_conn client;
    uint8_t flags;            /* RS_CTL_CLOSE_* */
    uint32_t req_end;
    uint32_t resp_end;
};

/* Backend 'backend_id' (whose host is 'ip4') is fenced: nothing it sends
 * reaches a client, its rs-stated stops its application and every rs-stated
 * refuses its states ('fenced' 1); or it is readmitted ('fenced' 0). */
struct rs_ctl_fence {
    uint32_t backend_id;
    uint32_t ip4;             /* 0 when the sender does not know it */
    bool fenced;
};

enum rs_ctl_flow_op {
    RS_CTL_FLOW_BEGIN = 1,    /* the sender is the active proxy since 'epoch': forget the
                               * copy of its table, the whole table follows */
    RS_CTL_FLOW_SET,          /* entry 'key' is now 'data' */
    RS_CTL_FLOW_DEL,          /* entry 'key' is gone */
    RS_CTL_FLOW_ALIVE,        /* the active proxy of 'epoch' is alive (sent every few ms) */
    RS_CTL_FLOW_OP_MAX = RS_CTL_FLOW_ALIVE,
};

/* The active proxy keeps its standby's copy of the splice table (proxy/pair.c).
 * 'epoch' (non-zero) names the active proxy's term: its clock, in ms, when
 * it became active; a later term wins.  The key is an entry's 4-tuple (host
 * order), zero in BEGIN and ALIVE. */
struct rs_ctl_flow {
    uint8_t op;               /* enum rs_ctl_flow_op */
    uint64_t epoch;
    uint32_t saddr, daddr;
    uint16_t sport, dport;
    uint32_t len;             /* SET: 1 .. RS_CTL_FLOW_DATA_MAX; else 0 */
    const uint8_t *data;      /* after decode: points into the frame buffer */
};

/* Roles and flags of rs_ctl_backend_status. */
#define RS_CTL_ROLE_PRIMARY_BACKEND   1u   /* new connections go to it */
#define RS_CTL_ROLE_ALTERNATE_BACKEND 2u   /* takes over failed connections */
#define RS_CTL_ROLE_SPARE_BACKEND     3u   /* the alternate's standby: it takes over from it */
#define RS_CTL_BACKEND_FENCED    (1u << 0) /* declared failed, not readmitted */
#define RS_CTL_BACKEND_PROTECTED (1u << 1) /* a live alternate would take over its connections */
#define RS_CTL_BACKEND_FLAGS_ALL 0x03u
#define RS_CTL_STATUS_BACKENDS 8u

struct rs_ctl_backend_status {
    uint32_t id;
    uint32_t ip4;
    uint16_t port;
    uint8_t role;             /* RS_CTL_ROLE_*_BACKEND */
    uint8_t flags;            /* RS_CTL_BACKEND_* */
    uint32_t conns;           /* client connections it serves now */
};

struct rs_ctl_status_report {
    uint8_t n;                /* entries of 'b' in use, <= RS_CTL_STATUS_BACKENDS */
    uint32_t recovering, recovered, unrecoverable;
    struct rs_ctl_backend_status b[RS_CTL_STATUS_BACKENDS];
};

struct rs_ctl_msg {
    uint8_t type;             /* enum rs_ctl_type */
    uint32_t sender;          /* non-zero */
    uint64_t seq;             /* non-zero; start from a clock so restarts keep increasing */
    union {
        struct rs_ctl_heartbeat heartbeat;
        struct rs_ctl_failure failure;
        struct rs_ctl_txn_logged txn_logged;
        struct rs_ctl_unlogged unlogged;
        struct rs_ctl_state_report state_report;
        struct rs_ctl_recovery_info recovery_info;
        struct rs_ctl_resplice resplice;
        struct rs_ctl_ack ack;
        struct rs_ctl_state_update state_update;
        struct rs_ctl_conn_map conn_map;
        struct rs_ctl_state_query state_query;
        struct rs_ctl_apply apply;
        struct rs_ctl_recover recover;
        struct rs_ctl_plan plan;
        struct rs_ctl_resend resend;
        struct rs_ctl_suspect suspect;
        struct rs_ctl_fence fence;
        struct rs_ctl_status_report status_report;
        struct rs_ctl_flow flow;
        struct rs_ctl_close close;        /* CLOSE_ASK, CLOSE_WORD */
    } u;
};

/* Receiver's memory of the last sequence accepted from each sender. */
struct rs_ctl_replay {
    unsigned n;
    struct {
        uint32_t sender;
        uint64_t last_seq;
    } peer[RS_CTL_REPLAY_PEERS];
};

#endif /* RS_CTL_MSG_T_H */
