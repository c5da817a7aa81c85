/* rs-logger's shared types: the per-connection log of the client leg
 * (both byte streams, their transactions and tags, the client's last ACK),
 * the control plane (peers, recovery planning, resend), the liveness thread,
 * and the prototypes the logger's files call across. */
#ifndef RS_LOGGER_H
#define RS_LOGGER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ctl_msg.h"
#include "ctlconn.h"
#include "daemon.h"
#include "loop.h"
#include "http_txn.h"
#include "reasm.h"
#include "tags.h"

/* ---- Tunables ------------------------------------------------------------- */

#define LG_BUCKETS 16384u          /* connection hash buckets */
#define LG_ENDED_MAX 65536u        /* connections that ended cleanly, remembered by their 4-tuple */
#define LG_MAX_CONNS_DEFAULT 4096u /* every connection costs ~23 KB besides its rings */
#define LG_RING_MIN (16u << 10)    /* every ring starts this small and grows (x2) up to --ring
                                    * while its unreleased bytes need it: a thousand idle
                                    * connections cost 32 MB, not 8 GB (and a short one's
                                    * rings stay in the cache) */
/* Requests kept after their transaction is done and acknowledged: the
 * alternate lags by a transaction or two on a LAN (TR > TL - 2); half the
 * transactionalizer's ring leaves room for RS_HTTP_MAX_INFLIGHT pipelined. */
#define LG_KEEP_TXNS 32u
/* An update's request is kept at least this long after its response was
 * logged, whatever the ring's pressure (it grows instead): until its state
 * has reached the alternate, a failover must replay it (conn.c). */
#define LG_UPDATE_HOLD_NS (2000ull * 1000000ull)
#define LG_MAX_BACKENDS 16
#define LG_SPARES_MAX   4               /* --spare-stated */
#define LG_CTL_BUF (RS_CTL_HDR_LEN + 4096 + RS_CTL_MAC_LEN)
#define LG_PEER_QUEUE (4u << 20)   /* bytes of frames queued for one peer */
#define LG_RESEND_HOLD_NS (30ull * 1000000000ull)
#define LG_IDLE_FORGET_NS (60ull * 1000000000ull)  /* not-loggable entries */

/* Sender ids of our frames: one per connection kind, so a receiver that
 * tracks replay per sender never sees one id's frames reordered across
 * two TCP connections. */
#define LG_SENDER_REPLY (RS_CTL_SENDER_LOGGER | 1u)  /* replies on accepted connections */
#define LG_SENDER_PROXY (RS_CTL_SENDER_LOGGER | 2u)
#define LG_SENDER_STATED (RS_CTL_SENDER_LOGGER | 3u)
#define LG_SENDER_PROXY_LIVE (RS_CTL_SENDER_LOGGER | 4u)  /* the liveness thread's FAILUREs */

enum lg_dir { LG_REQ = RS_DIR_REQ, LG_RESP = RS_DIR_RESP };

/* Why a connection is not logged at all. */
enum lg_nl {
    LG_NL_NONE = 0,
    LG_NL_MIDSTREAM,       /* first seen without its SYN */
    LG_NL_NOMEM,           /* budget or malloc refused its rings */
    LG_NL_LIMIT,           /* too many connections */
};

/* Why a logged connection is incomplete from some point on (first wins). */
enum lg_inc {
    LG_INC_NONE = 0,
    LG_INC_REFUSED,        /* ring full (unreleased bytes) or too many holes */
    LG_INC_CONFLICT,       /* a retransmission differed from the logged copy */
    LG_INC_HTTP,           /* the transactionalizer gave up (see http err) */
    LG_INC_TRUNCATED,      /* a captured segment was cut by the snap length */
    LG_INC_GAP,            /* bytes still missing when the log ended or was forgotten */
};

/* One client connection, keyed by the client's ip:port (the VIP is fixed). */
struct lg_conn {
    struct lg_conn *next;            /* hash chain */
    struct logger *lg;               /* for the transactionalizer's callback */
    uint32_t ip;                     /* client, host order */
    uint16_t port;
    enum lg_nl nl;
    enum lg_inc inc;
    uint32_t inc_seq;                /* where 'inc' happened */
    int inc_dir;
    bool syn, synack, started;       /* 'started': rings and parser set up */
    uint32_t isn[2];                 /* [LG_REQ] client's ISN, [LG_RESP] server's */
    bool has_ack, has_ack_srv;
    uint32_t ack_cl;                 /* AckcL: highest ACK the client sent */
    uint32_t ack_srv;                /* highest ACK the server side sent the client */
    bool fin[2], eof_fed[2], rst;
    uint32_t fin_seq[2];
    uint64_t closed_ns;              /* both FINs or RST seen (0: open) */
    struct lg_conn *closed_prev, *closed_next;  /* lg->closed, oldest end first */
    uint64_t last_ns;
    uint64_t progress_ns;            /* last request completed or response byte logged */
    uint64_t ack_srv_ns;             /* when the backend's ACK (ack_srv) last moved, or client bytes
                                      * began to wait for it (all before acknowledged) */
    uint16_t win_srv;                /* the backend's last window field (0: it stopped reading) */
    uint16_t win_cl;                 /* window field of the client's newest ACK (unscaled) */
    bool suspected;                  /* a SUSPECT went out since the last progress */
    bool word_sent;                  /* an unasked CLOSE_WORD went out for the ends below */
    uint32_t word_end[2];            /* [LG_REQ] req_end, [LG_RESP] resp_end of the last one */
    uint64_t word_px_up;             /* logger.px_ups when it went (the connection it went on) */
    uint32_t log_first;              /* oldest transaction whose request is still held */
    uint32_t read_only_from;         /* the released transactions from this one on were read-only */
    uint32_t logged_sent;            /* TXN_LOGGED sent for transactions below this */
    uint64_t bytes[2];               /* fed to the transactionalizer */
    struct rs_reasm rs[2];
    uint8_t tags[RS_HTTP_TXN_RING];  /* RS_TAG_* by number % ring */
    uint64_t logged_ns[RS_HTTP_TXN_RING]; /* when each one's response was all logged (0: not yet) */
    FILE *dump[2];
    uint32_t dump_seq[2];            /* next byte to write to dump[dir] */
    struct rs_http_conn http;
};

/* A connection that ended cleanly (retire() in conn.c), all that is kept
 * of it until --linger has passed: what tells its late segments (a
 * retransmitted FIN or ACK) from a new connection's. */
struct lg_ended {
    uint32_t ip;
    uint16_t port;
    uint32_t next;                   /* hash chain: index + 1 (0: the end) */
    uint32_t txns, done;
    uint32_t fin_seq[2];             /* [LG_REQ] the client's FIN, [LG_RESP] the server's */
    uint64_t closed_ns;
};

/* A monitored backend: owned by the liveness thread once it runs. */
struct lg_backend {
    uint32_t id;
    uint32_t ip;
    uint64_t last_ns;                /* last heartbeat (monotonic) */
    uint64_t first_ns;               /* first heartbeat since it was (re)started */
    uint64_t max_gap_ns;             /* longest time between two heartbeats seen */
    unsigned uncorroborated;         /* ticks silent past dead-after with no witness */
    bool seen, failed;
};

struct lg_live;
struct lg_plan;
struct logger;

/* Counters of a capture source, as libpcap's pcap_stat has them. */
struct lg_capture_stats {
    unsigned received, dropped, ifdropped;
};

/* A capture source.  Each hands every frame to lg_packet(). */
struct lg_capture_ops {
    const char *name;
    /* Starts capturing on lg->iface, its fd on lg->loop.  Returns 0 or -errno (logged). */
    int (*open_live)(struct logger *lg);
    /* Reads the whole of lg->readfile.  Returns 0, -EPIPE when it stopped
     * early at damaged or truncated data (what came before is logged), or
     * another -errno when nothing could be read (logged). */
    int (*read_file)(struct logger *lg);
    /* Handles frames waiting now; true when more may wait. */
    bool (*drain)(struct logger *lg);
    void (*stats)(struct logger *lg, struct lg_capture_stats *out);
    void (*close)(struct logger *lg);
};

struct lg_stats {
    uint64_t packets, bytes, non_tcp, not_ours, truncated;
    uint64_t conns, conns_freed, closed_evicted, retired, late_segments;
    uint64_t nl_midstream, nl_nomem, nl_limit, rings_grown, rings_full;
    uint64_t inc_refused, inc_conflict, inc_http, inc_truncated, inc_gap;
    uint64_t txns, txns_logged, txn_logged_sent, released_bytes;
    uint64_t heartbeats, hb_unknown, failures_declared, failures_forwarded;   /* liveness thread */
    uint64_t recoveries, recovery_errors, legit_closes, replays, resends, resend_errors, ctl_rejected, suspects;
    uint64_t close_words, close_asks;
};

struct logger {
    /* configuration */
    const char *iface, *readfile, *dumpdir;
    bool stay;                       /* --read then keep serving control */
    struct rs_addr vip, listen, resend, proxy, stated;
    struct rs_addr spare_stated[LG_SPARES_MAX];
    int n_spare_stated;
    bool has_proxy, has_stated, has_key;
    struct rs_ctl_key key;
    struct lg_backend backends[LG_MAX_BACKENDS];
    int nbackends;
    uint64_t dead_after_ns, linger_ns, stall_after_ns;
    size_t ring;
    unsigned max_conns;
    int nice;
    struct rs_tags *tags;
    /* state */
    struct rs_reasm_budget budget;
    struct lg_conn *buckets[LG_BUCKETS];
    unsigned nconns;
    struct lg_conn *closed, *closed_last;  /* the ended connections, by closed_ns */
    struct lg_ended ended[LG_ENDED_MAX];   /* a ring: n_ended from ended_first, oldest first */
    uint32_t ended_bucket[LG_BUCKETS];     /* index + 1 of each chain's first (0: none) */
    uint32_t ended_first, n_ended;
    uint64_t seq;                    /* our control-frame sequence (main thread's senders) */
    struct rs_loop loop;
    struct rs_ctlserver ctlsrv;
    struct rs_ctlconn px, st;        /* the proxy (SUSPECT), the alternate's rs-stated */
    uint64_t px_ups;                 /* times px came up: a word sent before the last time may
                                      * have died unread with the proxy it went to */
    struct rs_ctlconn st_spare[LG_SPARES_MAX];  /* other standbys' rs-stated (re-protection) */
    const struct lg_capture_ops *capture;   /* where frames come from (capture.c); NULL until
                                             * live capture starts: the default, ebpf or pcap */
    struct rs_io capture_io, resend_io;
    struct rs_timer tick;            /* resend time-outs, stalls, forgetting */
    uint64_t last_gc_ns, last_stall_ns;
    struct lg_live *live;            /* the liveness thread */
    struct lg_plan *plans;           /* recoveries being planned */
    unsigned n_plans;
    struct lg_stats s;
    void *resends;                   /* resend.c's list of resend connections */
    void *pcap;                      /* pcap_t of lg_capture_pcap */
    struct lg_kmod *kmod;            /* lg_capture_kmod's (capture_kmod.c) */
    struct lg_ebpf *ebpf;            /* lg_capture_ebpf's (capture_ebpf.c) */
};

/* ---- conn.c: the log ----------------------------------------------------- */

/* Handles one captured frame of link type 'dlt'; 'caplen' bytes of the
 * 'wirelen' on the wire. */
void lg_packet(struct logger *lg, int dlt, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen);
struct lg_conn *lg_conn_find(struct logger *lg, uint32_t ip, uint16_t port);
/* ip:port's connection if it ended cleanly and was freed (within
 * --linger), else NULL. */
const struct lg_ended *lg_conn_ended(const struct logger *lg, uint32_t ip, uint16_t port);
/* Forgets closed and idle connections. */
void lg_conn_gc(struct logger *lg, uint64_t now_ns);
/* Prints every connection and its unfinished transactions (offline mode). */
void lg_conn_table(struct logger *lg, FILE *f);
void lg_conn_free_all(struct logger *lg);
const char *lg_nl_str(enum lg_nl nl);
const char *lg_inc_str(enum lg_inc inc);
/* "ro,det" style tag text. */
const char *lg_tags_str(unsigned tags);

/* Clients whose backend owes them a response and has been silent for
 * --stall-after while they could take it: a SUSPECT goes to the proxy for each. */
void lg_conn_check_stalls(struct logger *lg, uint64_t now_ns);
/* Names to a proxy coming up ('to') every connection owing a response. */
void lg_conn_tell_owed(struct logger *lg, struct rs_ctlconn *to);

/* ---- ctl.c: control plane -------------------------------------------------- */

/* Opens the control and resend ports and starts connecting the peers.
 * Returns 0 or -errno (logged). */
int lg_ctl_setup(struct logger *lg);
/* Queues TXN_LOGGED for 'txn' to the alternate's rs-stated (and the
 * spares': each holds the alternate's states, forwarded down the chain,
 * for when it takes over). */
void lg_ctl_txn_logged(struct logger *lg, rs_txn_id txn, uint32_t resp_end);
/* The rs-stated of the backend at 'ip' that a recovery moves a connection
 * to: a spare's (--spare-stated at that address) once it is the
 * alternate, else the alternate's. */
struct rs_ctlconn *lg_ctl_stated_of(struct logger *lg, uint32_t ip);
/* Tells the alternate's rs-stated that the connection of 'from' cannot be
 * logged from that transaction on (UNLOGGED): it applies its states as
 * they come instead of waiting for TXN_LOGGED. */
void lg_ctl_unlogged(struct logger *lg, rs_txn_id from);
/* Tells the proxy (over 'to', or the logger's own connection to it when
 * NULL) that the backend of 'c' owes it a response and is silent, or, as
 * RS_CTL_SUSPECT_OWED, just that it owes one. */
void lg_ctl_suspect(struct logger *lg, struct rs_ctlconn *to, const struct lg_conn *c, uint16_t reason,
                    uint32_t silent_ms);
/* Sends CLOSE_WORD{client, flags, req_end, resp_end} on 'to'; 0 or -errno. */
int lg_ctl_close_word(struct logger *lg, struct rs_ctlconn *to, const struct rs_ctl_conn *client, uint8_t flags,
                      uint32_t req_end, uint32_t resp_end);
void lg_ctl_shutdown(struct logger *lg);

/* ---- plan.c: recovery planning ------------------------------------------------ */

/* Starts planning the recovery that RECOVER 'req' (on control connection
 * 'conn_id') asks for; the PLAN goes back on that connection. */
void lg_plan_start(struct logger *lg, uint64_t conn_id, const struct rs_ctl_msg *req);
/* Ends every plan in progress (shutdown). */
void lg_plan_abort_all(struct logger *lg);
/* Whether a recovery of client ip:port is being planned. */
bool lg_plan_for(const struct logger *lg, uint32_t ip, uint16_t port);
/* Whether the backend's end of 'c' is one the application means: every
 * request has its whole response, and the client closed first or the
 * last response said "Connection: close". */
bool lg_closed_as_meant(const struct lg_conn *c);
/* Whether the log of 'c' shows an end the application means, over a log
 * without holes; then where its two streams end (the client's past its FIN). */
bool lg_conn_meant_ends(const struct lg_conn *c, uint32_t *req_end, uint32_t *resp_end);
/* Whether an unasked word for these ends went to the proxy now connected. */
bool lg_word_went(const struct logger *lg, const struct lg_conn *c, uint32_t req_end, uint32_t resp_end);

/* ---- liveness.c: the liveness thread ---------------------------------------------- */

/* Starts the thread: UDP on --listen's port, FAILURE to --proxy.  Returns 0 or -errno. */
int lg_live_start(struct logger *lg);
/* Hands a HEARTBEAT or FAILURE received some other way (TCP) to the thread. */
void lg_live_report(struct logger *lg, const struct rs_ctl_msg *m);
void lg_live_stop(struct logger *lg);

/* ---- capture.c: where frames come from -------------------------------------------- */

extern const struct lg_capture_ops lg_capture_pcap;
/* capture_kmod.c: from the kernel module kmod/logmod.c (--capture kmod). */
extern const struct lg_capture_ops lg_capture_kmod;
/* capture_ebpf.c: from the tc program logger/bpf/capture.bpf.c (--capture ebpf). */
extern const struct lg_capture_ops lg_capture_ebpf;
/* Starts lg->capture on lg->iface (at lg->nice); without one, the tc
 * program where it loads and attaches, else libpcap (one line says why).
 * Returns 0 or -errno (logged). */
int lg_capture_start(struct logger *lg);
/* Processes every frame the capture holds now (a recovery must see what
 * the mirror has already delivered). */
void lg_capture_drain(struct logger *lg);

/* ---- resend.c: the resend port ------------------------------------------------------ */

/* Listens on lg->resend.  Returns 0 or -errno (logged). */
int lg_resend_open(struct logger *lg);
/* Ends resend connections whose frame is late or whose bytes the client
 * has all acknowledged. */
void lg_resend_tick(struct logger *lg, uint64_t now_ns);
void lg_resend_close_all(struct logger *lg);

#endif /* RS_LOGGER_H */
