/* rs-proxy: accepts client connections on the VIP, hands each to a
 * backend, then splices the two TCP connections at packet level (the data
 * path, datapath.h: a tc eBPF program rewrites every segment) so the
 * proxy's own sockets leave the path.  Hosts the recovery manager
 * (recovery.c).  This header holds the types shared by its files; their
 * functions are px_*. */
#ifndef RS_PROXY_H
#define RS_PROXY_H

#include <net/if.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "ctl_msg.h"
#include "ctlconn.h"
#include "daemon.h"
#include "loop.h"
#include "splice.h"
#include "datapath.h"
#include "splice_map.h"

#define RS_PROXY_MAX_BACKENDS 16
#define RS_PROXY_REQ_MAX (64 * 1024)    /* first request buffered before splicing */
#define RS_PROXY_FD_RESERVE 64          /* descriptors clients never get: for recoveries */
#define RS_PROXY_HELD_MAX 8             /* entries of earlier servers kept in HOLD */
#define RELAY_BUF (256 * 1024)
#define RS_PROXY_BUCKETS 4096

enum pconn_phase {
    PC_READ_REQ,        /* reading the first request from the client */
    PC_MAP,             /* waiting for the backend's rs-stated to take the CONN_MAP */
    PC_CONNECTING,      /* backend connect in progress */
    PC_RELAY,           /* relaying in user space until both connections are quiet */
    PC_SPLICED,         /* sockets closed; the tc program carries the flow */
    PC_CLOSING,         /* ended (FIN both ways, RST, or a relay closed): freed after a linger */
};

/* A backend's role now (px_roles derives it from the configuration and
 * the fences): primaries serve new connections, the alternate takes over
 * failed ones, spares wait to become the alternate. */
enum backend_role {
    ROLE_PRIMARY = RS_CTL_ROLE_PRIMARY_BACKEND,
    ROLE_ALTERNATE = RS_CTL_ROLE_ALTERNATE_BACKEND,
    ROLE_SPARE = RS_CTL_ROLE_SPARE_BACKEND,
};

struct backend {
    uint32_t id;
    struct rs_addr addr;          /* the application's address */
    enum backend_role configured; /* --backend, --alternate, --spare */
    enum backend_role role;       /* now */
    uint32_t rank;                /* place in the chain of standbys: the id, then the end of it
                                   * after a readmission (as every rs-stated orders it) */
    bool fenced;                  /* declared failed: nothing of it reaches a client */
    uint64_t answered_ns;         /* when it last answered a SYN (a connect done, a SYN-ACK at the
                                   * SYN), CLOCK_MONOTONIC */
    unsigned conns;               /* client connections it serves now */
    struct rs_ctlconn stated;     /* its rs-stated (CONN_MAP, FENCE); unused without --stated-port */
};

struct recovery;

/* One client connection, from accept to the removal of its splice. */
struct pconn {
    uint64_t id;
    struct proxy *p;
    enum pconn_phase phase;
    struct rs_io cio, bio;        /* cio.fd / bio.fd: the sockets, -1 once closed */
    struct rs_addr client, vip, backend, local;   /* local: proxy's end towards the backend */
    int backend_idx;              /* into p->backends, -1 when none */
    struct rs_timer timer;        /* connect time-out, relay polling, linger */
    struct rs_ctl_call map_call;  /* CONN_MAP before connecting */
    /* bytes read from one side and not yet written to the other */
    uint8_t *c2b, *b2c;
    size_t c2b_len, b2c_len, c2b_cap;
    bool req_done;
    bool client_eof;              /* the client shut its side down (half-close) */
    bool named;                   /* c2b starts with the PROXY header naming the client */
    bool backend_eof;             /* relay: the backend ended its side */
    bool redispatched;            /* the first backend was unreachable: now on the alternate */
    uint64_t t_accept_us, t_spliced_us;
    uint64_t connect_ns_at;        /* CLOCK_MONOTONIC: when the connect to the backend began */
    uint32_t backend_ack;         /* the backend's last ACK number, read as its entry went */
    bool backend_acked;           /* (there was one) */
    int splice_tries;
    /* spliced at connect: the request still goes out from the backend
     * socket (bio) until the backend acknowledges 'open_ack' (ACK watch
     * 'open_gen'); the client's direction passes ACKs only meanwhile */
    bool opening;
    uint32_t open_ack, open_gen;
    /* what the splice was made from (kept for re-splice) */
    struct rs_splice_conn c;
    uint64_t ts_base_us;          /* when c.ts_now was read */
    uint32_t rtt_us;              /* client's smoothed RTT when spliced (resend progress bound) */
    uint32_t seen;                /* RS_FLOW_SEEN_* from the client (low bits) and the server (<< 4) */
    struct rs_flow_key held[RS_PROXY_HELD_MAX];   /* earlier servers' entries, in HOLD */
    int nheld;
    bool entries_gone;            /* its entries are removed (conn.c's drop_entries) */
    bool client_entry_freed;      /* its client's entry removed early: the client's port is
                                   * another connection's (px_syn_event's RS_FLOW_REUSED) */
    bool reuse_declined;          /* ... or not, as it had not ended here: the client's
                                   * next SYN goes to the listener */
    struct recovery *rec;         /* while recovering */
    struct pconn *next;           /* in the proxy's table, by id */
    struct pconn *cnext;          /* ... and by client */
    /* the logger's word that the application means to end here
     * (CLOSE_WORD): [0] the client's stream end (past its FIN), [1] the
     * response's */
    bool word;
    uint32_t word_end[2];
    bool fin_wait;                /* the backend's FIN is held: waiting for the word */
    uint16_t syn_port;            /* spliced at the SYN (syn.c): the proxy's port, back to the pool at the end */
    bool syn_confirmed;           /* ... and its client acknowledged the backend's SYN-ACK (px_syn_half_open) */
    bool backend_fin_first;       /* the backend sent its FIN before it had the client's: it holds a TIME_WAIT */
    bool fin_asked;               /* ... asked for (CLOSE_ASK) */
    /* request parsing */
    void *parser;                 /* struct http_parser */
    char cookie[128];
    char hdr_name[32];
    size_t hdr_name_len;
    bool in_cookie;
};

struct stats {
    uint64_t accepted, spliced, splice_retries, closed_early, resets, fins, reaped_idle,
        reaped_half_open, resplices, resplice_errors, ctl_rejected, backend_errors,
        conn_map_errors, failures, false_alarms, recovered, unrecoverable, legit_closes, redispatched,
        resets_sent, fenced_drops, suspects, owed_reset, port_clashes, request_timeouts, request_evictions,
        fd_reserve_drops,
        adopted, recovery_retargets, fins_released, close_words, close_asks,
        close_words_late, close_refused, syn_spliced, syn_stale, syn_late, syn_half_open, connects_busy,
        syn_time_waits_reset, syn_reused;
};

/* Splicing at the SYN (syn.c). */
struct px_syn_wait {
    uint16_t port;
    uint64_t due_ns;              /* back to the pool then (the backend's TIME_WAIT is over) */
};

struct px_syn_again {
    struct rs_flow_key kc;        /* the client's entry */
    struct rs_syn_info syn;       /* its SYN */
};

enum { PX_AT_AUTO, PX_AT_REQUEST, PX_AT_SYN };     /* --splice-at: unset (syn where it can be), ... */

struct px_syn {
    int at;                       /* --splice-at (PX_AT_*) */
    bool on;                      /* splicing at the SYN */
    uint16_t port_lo, port_hi;    /* --syn-ports */
    int backend;                  /* where new connections go (index), -1: none */
    struct px_syn_wait *wait;     /* ports waiting, oldest first */
    size_t nwait, capwait;
    uint64_t sweep_ns;            /* --syn-sweep */
    uint64_t swept_ns;            /* the last look for SYNs never answered */
    struct px_syn_again *again;   /* SYNs a failed backend left unanswered, for the next one */
    size_t nagain, capagain;
};

/* The proxy pair (pair.c): this proxy and another share the VIP. */
struct pair {
    struct rs_addr peer, listen;  /* --pair (the other's pair port), --pair-listen; peer.port 0: alone */
    bool standby;                 /* --standby: start as the standby */
    bool active;
    bool in_sync, told_unreachable;   /* active: the standby has the table; its absence was logged */
    bool told_alone, told_cut_off;    /* standby: logged once */
    uint64_t watch_ns, alive_ns;      /* when the standby's watch, the active's ALIVE last ran */
    uint64_t takeover_ns;         /* --takeover-after */
    uint64_t epoch;               /* the active's term (ours once active), 0 before any */
    uint64_t started_ns, last_heard_ns;
    uint64_t active_conn;         /* standby: the active's connection (accepted id), 0: none */
    struct rs_ctlserver srv;      /* standby: the active's connection comes here */
    struct rs_ctlconn out;        /* active: to the standby */
    struct rs_timer timer;        /* active: ALIVE; standby: the watch */
    struct rs_timer garp_timer, resync_timer;
    unsigned garp_next;
    int arpfd, ifindex;
    struct rs_io arpio;
    uint8_t mac[6];
    uint64_t sent, applied, apply_errors, garps;
};

struct proxy {
    struct rs_addr listen, ctl;
    struct backend backends[RS_PROXY_MAX_BACKENDS];
    int nbackends, rr;
    /* the ports of backend connections, taken in turn (px_bind_watched) */
    uint16_t port_lo, port_hi, port_next;
    int alternate;                /* index of the alternate in backends, -1 without one */
    struct rs_addr logger, logger_resend;
    uint16_t stated_port;
    bool sticky, nosplice, fresh;
    bool identity_header;         /* --identity header: a PROXY v2 header instead of CONN_MAP */
    char cookie_name[64];
    char ifname[IF_NAMESIZE];
    uint64_t idle_ns, half_open_ns, linger_ns, connect_ns, recovery_ns, relay_first_ns, request_ns;
    uint64_t event_ring;          /* --event-ring (0: the data path's default) */
    struct rs_loop loop;
    struct rs_io lio, eio;        /* the VIP's listening socket, the data path's events */
    struct rs_timer reap_timer, lease_timer;
    unsigned reap_next;           /* the bucket the reap's next turn starts at */
    int rawfd;                    /* raw socket for the RSTs of clean ends */
    long fd_limit;                /* RLIMIT_NOFILE, read again after FD_LIMIT_NS */
    uint64_t fd_limit_ns;
    struct px_datapath *dp;       /* NULL with --no-splice */
    const char *datapath;         /* --datapath */
    struct pconn *buckets[RS_PROXY_BUCKETS];     /* by id */
    struct pconn *cbuckets[RS_PROXY_BUCKETS];    /* by client address */
    uint64_t next_id;
    uint64_t drain_until_ns;      /* stopping: when the hand-over stops waiting */
    unsigned recovering;
    struct rs_ctl_key key;
    bool has_key;
    uint64_t ctl_seq;
    struct rs_ctlserver ctlsrv;
    struct rs_ctlconn logger_conn;
    struct pair pair;
    struct px_syn syn;
    struct rs_flow_key *probes;   /* adopted: clients of dead connections, probed again later */
    size_t nprobes;
    struct stats st;
};

/* Sender ids of our frames, one per connection (see ctlconn.h). */
#define PX_SENDER_REPLY  (RS_CTL_SENDER_PROXY | 1u)      /* replies on accepted connections */
#define PX_SENDER_LOGGER (RS_CTL_SENDER_PROXY | 2u)
#define PX_SENDER_PAIR   (RS_CTL_SENDER_PROXY | 3u)
#define PX_SENDER_STATED (RS_CTL_SENDER_PROXY | 0x10u)   /* + backend index */

/* ---- datapath.h: the splice table and the segment rewriting ---------------------

   (px_dp_* calls, one implementation per --datapath.) */

/* Key of the direction whose segments come from 'src' to 'dst'. */
struct rs_flow_key px_flow_key(struct rs_addr src, struct rs_addr dst);

/* ---- repair.c: TCP_REPAIR, raw RSTs ------------------------------------------------ */

/* Reads the proxy's view of connection 'fd' (which must be in TCP_REPAIR
 * mode) into 'c'; 'local'/'remote' name its ends.  'info', when not NULL,
 * gets the socket's TCP_INFO (its state, its RTT) read on the way.
 * Returns 0 or -errno. */
struct tcp_info;
int px_repair_read(int fd, struct rs_addr local, struct rs_addr remote, struct rs_splice_conn *c,
                   struct tcp_info *info);
int px_repair_on(int fd);
int px_repair_off(int fd);
/* Closes 'fd' without a FIN or RST (repair mode). */
void px_close_silently(int fd);
/* Queued bytes: unread received (SIOCINQ) plus unacknowledged sent (SIOCOUTQ). */
int px_sock_queued(int fd);
/* Unread received bytes only (SIOCINQ), or -errno. */
int px_sock_unread(int fd);
/* TCP_NODELAY on 'fd': for sockets that relay or write in pieces. */
void px_nodelay(int fd);
/* Sends a RST from 'from' to 'to' with sequence number 'seq' on raw socket
 * 'rawfd' (IPPROTO_RAW).  Returns 0 or -errno. */
int px_send_rst(int rawfd, struct rs_addr from, struct rs_addr to, uint32_t seq);
/* Sends a bare TCP segment with 'flags' (RS_TCP_F_*, 0x10 ACK) likewise. */
int px_send_tcp(int rawfd, struct rs_addr from, struct rs_addr to, uint32_t seq, uint32_t ack, uint8_t flags);
/* Sends the TCP header 'tcp' ('hlen' bytes, options included, no data) from
 * 'from' to 'to' (ports written over, checksum computed).  Returns 0 or
 * -errno. */
int px_send_hdr(int rawfd, struct rs_addr from, struct rs_addr to, const uint8_t *tcp, uint32_t hlen);

/* ---- conn.c: the connection table, accept, relay, splice, ends ------------------ */

void px_pc_accept(struct rs_io *io, uint32_t events);
/* Spliced 'pc' (not recovering) ended on both sides (pc->seen: both FINs
 * passed, or a RST): it lingers, then goes. */
void px_pc_check_end(struct proxy *p, struct pconn *pc);
/* Ends the opening of a connection spliced at connect (its backend socket
 * goes, the request unsent stays unsent): a recovery takes it over. */
void px_pc_open_abandon(struct proxy *p, struct pconn *pc);
struct pconn *px_pc_find(struct proxy *p, uint64_t id);
/* The connection of 'client' that is not closing, or NULL. */
struct pconn *px_pc_find_client(struct proxy *p, struct rs_addr client);
struct rs_flow_key px_key_c(const struct pconn *pc);
struct rs_flow_key px_key_b(const struct pconn *pc);
/* A new connection of 'client' with id 'id' (0: the next free one), in the table. */
struct pconn *px_pc_new(struct proxy *p, uint64_t id, struct rs_addr client);
/* Whether 'pc''s client entry is its own (a new connection of the same
 * client port may have replaced an adopted one's). */
bool px_pc_owns_client_entry(struct proxy *p, const struct pconn *pc);
/* Frees 'pc' at once (its entries are removed). */
void px_pc_free(struct proxy *p, struct pconn *pc);
/* Ends 'pc' cleanly: logged with 'why', entries removed; the client gets a
 * RST when 'rst' (an end the client did not cause), else it is simply forgotten. */
void px_pc_close(struct proxy *p, struct pconn *pc, const char *why, bool rst);
/* Reads the host's ephemeral port range, where px_bind_watched takes the
 * ports of backend connections in turn (those of bind(0)'s parity). */
void px_ports_init(struct proxy *p);
/* Opens a non-blocking socket bound to the proxy's address, with a WATCH
 * entry for segments from 'to' in place before any SYN leaves.  Returns the
 * fd or -errno; '*local' gets the proxy's end.  Nagle's algorithm stays on
 * (px_nodelay): a socket spliced at connect writes its request at once,
 * in one piece, and goes. */
int px_bind_watched(struct proxy *p, struct rs_addr to, uint64_t id, struct rs_addr *local);
int px_connect_start(int fd, struct rs_addr to);
/* Relay phase: takes the client connection out of the proxy's stack (its
 * exact state into pc->c; the socket closed silently; the client's segments
 * held at the tc program) and fences the backend's socket.  Returns 0 or -errno. */
int px_pc_detach(struct proxy *p, struct pconn *pc);
/* Starts the connection to a backend. */
void px_pc_start_backend(struct proxy *p, struct pconn *pc);
/* Gives up the backend 'pc' is connecting to (nothing was relayed yet) and
 * starts over on the alternate, once; else ends it with a RST ('why'). */
void px_pc_redispatch(struct proxy *p, struct pconn *pc, const char *why);
/* Makes backend 'idx' (-1: none) the one serving 'pc' (connection counts). */
void px_pc_set_backend(struct proxy *p, struct pconn *pc, int idx);
/* The data path's events: FIN/RST and ACK watches. */
void px_pc_events(struct rs_io *io, uint32_t events);
/* The events that woke nobody (connections to take on): whenever the loop
 * wakes, before its timers and descriptors (rs_loop_woken). */
void px_pc_events_quiet(void *ctx);
void px_pc_reap(struct rs_timer *t);
/* Counts the connections of backend 'idx' (status). */
unsigned px_pc_count(struct proxy *p, int idx);
/* How long ago the tc program saw a segment from the backend of 'pc' (with
 * 'ack': saw its ACK number move), ms (0 when unknown). */
uint64_t px_pc_backend_quiet_ms(struct proxy *p, struct pconn *pc, bool ack);
/* Whether backend 'idx' took in client bytes (its ACK moved) on a spliced
 * connection other than 'except' within the last 'ms'. */
bool px_backend_read_within(struct proxy *p, int idx, const struct pconn *except, uint64_t ms);
/* Whether backend 'idx', which left a SYN sent at 'sent_ns'
 * (CLOCK_MONOTONIC) unanswered, answered another no more than
 * --connect-timeout before it, or after: then it is busy (its accept
 * queue full for a moment: a burst, a slow application), not failed, and
 * the SYN's sender sends it again.  A hung application answers nobody
 * once its queue is full; a dead host nobody at all.  Counts the
 * judgement (connects_busy) when it is busy. */
bool px_backend_busy(struct proxy *p, int idx, uint64_t sent_ns);

/* ---- adopt.c: a predecessor's spliced connections --------------------------------- */

/* Writes 'pc''s record into its client entry (at the splice, after a move). */
void px_pc_save(struct proxy *p, struct pconn *pc);
/* Rebuilds the connections of the splice table the data path took over.
 * Returns how many, or -errno. */
int px_adopt(struct proxy *p);
/* Makes the client of dead client entry 'kc' answer, so that this host's
 * stack resets it (a segment outside its window). */
void px_probe(struct proxy *p, const struct rs_flow_key *kc);

/* ---- pair.c: a standby proxy, or the active one of a pair ------------------------- */

/* With --pair: starts as the active proxy (then px_serve) or as the
 * standby (which calls px_serve when it takes over).  Returns 0 or -errno. */
int px_pair_start(struct proxy *p);
/* A pair's proxy that has not taken over: it acts on no event of its tc
 * program, and configures no splicing at the SYN (conn.c). */
bool px_standing_by(const struct proxy *p);
/* Backend 'b' was fenced or readmitted: the standby learns it. */
void px_pair_fence(struct proxy *p, int b);
/* Called first whenever the loop wakes: an active proxy stopped longer
 * than --takeover-after exits before it does anything else. */
void px_pair_woken(struct proxy *p);

/* ---- main.c ----------------------------------------------------------------------- */

/* Starts serving the VIP: its listening socket and the control port, the
 * lease, the logger's and the rs-stateds' connections, and the adoption
 * of the spliced connections in the table.  Returns 0 or -errno. */
int px_serve(struct proxy *p);
/* Whether the data path's interface is up (a proxy cut off acts on nothing). */
bool px_link_up(struct proxy *p);
/* Prints the stats and exits with 'status' at once, the tc program left
 * attached (a proxy of a pair that steps down). */
void px_exit(struct proxy *p, int status) __attribute__((noreturn));

/* ---- recovery.c: the recovery manager and fencing -------------------------------- */

/* Tells the rs-stated of backend 'b' that the connection from 'peer' carries
 * client 'client''s requests from number 'next_num' ('flags':
 * RS_CTL_CONN_MAP_*); 'done' hears the ACK, or the time-out after
 * 'timeout_ns'.  Returns 0 or -errno (done is then not called); without
 * --stated-port it returns -ENOTCONN. */
int px_conn_map(struct proxy *p, int b, struct rs_addr peer, struct rs_addr client, uint16_t next_num,
                uint8_t flags, uint64_t timeout_ns, struct rs_ctl_call *call, rs_ctl_done_fn done, void *ctx);
/* Moves spliced connection 'pc' to 'target' so the target's first request
 * byte is client byte 'q' and its first response byte lands at client-side
 * response byte 'r' (both 0: where the streams stand now).  Asynchronous:
 * when it is done, the RESPLICE with sequence 'ctl_seq' on control
 * connection 'ctl_conn' is ACKed.  Returns 0 when started, or -errno. */
int px_resplice(struct proxy *p, struct pconn *pc, struct rs_addr target, uint32_t q, uint32_t r,
                uint64_t ctl_conn, uint64_t ctl_seq);
/* Starts the recovery of 'pc' from the failure of its backend
 * (docs/recovery.md); 'why' is logged.  The connection either continues on
 * the alternate or ends cleanly (RST, counted): then 'pc' may be freed on
 * return (find it again by its id).  A no-op when it already recovers. */
void px_recover(struct proxy *p, struct pconn *pc, const char *why);
/* Closes 'fd' silently once segments already on their way to it landed. */
void px_close_after_grace(struct proxy *p, int fd);
/* Backend 'id' failed: fence it (its segments are dropped for every
 * connection it had, its rs-stated and the others are told) and recover
 * its connections, all at once. */
void px_backend_failed(struct proxy *p, uint32_t id, const char *why);
/* An operator readmits backend 'id' (after its rejoin).  A fenced one
 * rejoins at the end of the chain, as a standby (never as a primary: its
 * state is brought up to date by its predecessor's snapshot). */
int px_backend_readmit(struct proxy *p, uint32_t id);
/* Backend 'b' is readmitted (here, or by the active proxy of a pair). */
void px_backend_rejoin(struct proxy *p, int b);
/* The guard held a FIN ('rst': a RST) from 'pc''s backend: it passes at
 * once if the logger's word (CLOSE_WORD) covers it, else the logger is
 * asked (CLOSE_ASK); a RST, a FIN the answer does not cover, or no answer
 * within a bound: the recovery judges (px_recover). */
void px_backend_end(struct proxy *p, struct pconn *pc, bool rst);   /* (may free 'pc', as px_recover) */
/* The logger's CLOSE_WORD 'w', asked or not. */
void px_close_word(struct proxy *p, const struct rs_ctl_close *w);
/* The FIN 'pc''s backend sent waited its time for a word: ask (after the
 * unasked word's 2 ms), or recover (the answer's 50 ms). */
void px_fin_wait_over(struct proxy *p, struct pconn *pc);
/* The ring-buffer event 'ev' belongs to a recovery of 'pc'.  Returns true when taken. */
bool px_recovery_event(struct proxy *p, struct pconn *pc, const struct rs_flow_event *ev);
/* 'pc' is being freed: ends its recovery, if any (no callbacks). */
void px_recovery_drop(struct proxy *p, struct pconn *pc);
/* The index of backend 'id', or -1. */
int px_backend_index(struct proxy *p, uint32_t id);
/* Derives every backend's role from the configuration and the fences:
 * while a configured primary lives, the primaries serve and the first
 * live of the alternate and the spares (in rank order) is the alternate;
 * else the first of those serves and the next one is its alternate
 * (re-protection).  Logs a change. */
void px_roles(struct proxy *p);

/* ---- syn.c: splicing at the client's SYN (--splice-at syn) ----------------------- */

/* Fills the port pool and names the backend (after adopting). */
int px_syn_start(struct proxy *p);
/* The serving backend may have changed (fence, roles): new SYNs go to the new one. */
void px_syn_sync(struct proxy *p);
/* An RS_FLOW_OPENED event: takes the connection the tc program spliced
 * on; RS_FLOW_STALE: resets the old connection its backend answered with;
 * RS_FLOW_REFUSED, RS_FLOW_UNANSWERED: its backend did not answer, which
 * may be its failure; RS_FLOW_REUSED: a client's SYN on its ended
 * connection's 4-tuple, spliced after the old entry is removed. */
void px_syn_event(struct proxy *p, const struct rs_flow_event *ev);
/* Takes on the connection spliced at the SYN whose backend entry is 'kb'
 * (splice id 'id'), its SYN-ACK seen at 'ns' (CLOCK_MONOTONIC): its record
 * made of the two SYNs.  Returns it, or NULL when it is gone, its
 * backend has not answered yet, or it ended at once (its backend's end,
 * held by the guard, started a recovery that could not go on) (adopt.c
 * calls it for a predecessor's). */
struct pconn *px_syn_take(struct proxy *p, const struct rs_flow_key *kb, uint64_t id, uint64_t ns);
/* Whether the backend whose FIN the guard holds (its entry 'fb', the
 * client's 'fc') sent it before it had the client's: it then holds a
 * TIME_WAIT on the port.  The held FIN's acknowledgement tells, whenever
 * the entries are read. */
bool px_syn_backend_closed_first(const struct px_flow_info *fc, const struct px_flow_info *fb);
/* Closes 'pc', spliced at the SYN, when its client (entry 'fc') has not
 * acknowledged the backend's SYN-ACK within --syn-sweep (half-open: a SYN
 * flood, a client gone): nothing else would end it for --idle, and it
 * holds a port of the pool.  Returns whether it did. */
bool px_syn_half_open(struct proxy *p, struct pconn *pc, const struct px_flow_info *fc);
/* The client entry 'kc' of connection 'id', just removed ('last': its
 * track): a SYN the tc program dropped on it (RS_FLOW_REUSED) is sent
 * again, spliced as a new connection. */
void px_syn_reused_again(struct proxy *p, const struct rs_flow_key *kc, const struct rs_flow_track *last, uint64_t id);
/* An event of a splice made at the SYN that no connection holds: its
 * backend's SYN-ACK was reported into a full ring; taken on now. */
void px_syn_take_late(struct proxy *p, const struct rs_flow_event *ev);
/* 'pc' is freed: its port goes back to the pool (now, or after the
 * backend's TIME_WAIT if a RST could not end it). */
void px_syn_port_free(struct proxy *p, const struct pconn *pc);
/* Gives back the ports whose wait is over (the reaper's timer). */
void px_syn_tick(struct proxy *p);
/* The address of a key's fields (network order), in host order (adopt.c). */
struct rs_addr px_addr_of(uint32_t ip_net, uint16_t port_net);
/* The index of the backend at 'a', or -1 (adopt.c). */
int px_backend_at(struct proxy *p, struct rs_addr a);

#endif /* RS_PROXY_H */
