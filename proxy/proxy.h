/* rs-proxy: accepts client connections on the VIP, hands each to a
 * backend, then splices the two TCP connections at packet level (a tc eBPF
 * program rewrites every segment) so the proxy's own sockets leave the path.
 * This header holds the types shared by its files. */
#ifndef RS_PROXY_H
#define RS_PROXY_H

#include <net/if.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "ctl_msg.h"
#include "daemon.h"
#include "splice.h"
#include "splice_map.h"

#define RS_PROXY_MAX_BACKENDS 16
#define RS_PROXY_REQ_MAX (64 * 1024)    /* first request buffered before splicing */

enum pconn_phase {
    PC_READ_REQ,        /* reading the first request from the client */
    PC_CONNECTING,      /* backend connect in progress */
    PC_RELAY,           /* relaying in user space until both connections are quiet */
    PC_SPLICED,         /* sockets closed; the tc program carries the flow */
    PC_CLOSING,         /* FIN/RST seen both ways (or reset): entries removed after a linger */
};

/* One client connection, from accept to the removal of its splice. */
struct pconn {
    uint64_t id;
    enum pconn_phase phase;
    int cfd, bfd;
    struct rs_addr client, vip, backend, local;   /* local: proxy's end towards the backend */
    int backend_idx;
    /* bytes read from one side and not yet written to the other */
    uint8_t *c2b, *b2c;
    size_t c2b_len, b2c_len;
    size_t c2b_cap;
    bool req_done;
    uint64_t t_accept_us, t_spliced_us, t_close_us;
    int splice_tries;
    /* what the splice was made from (kept for re-splice) */
    struct rs_splice_conn c;
    uint64_t ts_base_us;          /* when c.ts_now was read */
    uint32_t seen;                /* RS_FLOW_SEEN_* both ways */
    struct rs_flow_key held[4];   /* entries of earlier backends, dropping their late segments */
    int nheld;
    struct pconn *next;           /* in the proxy's list */
    /* request parsing */
    void *parser;                 /* struct http_parser */
    char cookie[128];
    char hdr_name[32];
    size_t hdr_name_len;
    bool in_cookie;
    bool recovering;
};

struct rs_splicer;

#define RELAY_BUF (256 * 1024)
#define CTL_BUF (RS_CTL_HDR_LEN + 4096 + RS_CTL_MAC_LEN)
#define MAX_EVENTS 64
#define RS_PROXY_BUCKETS 4096

enum tag_kind { T_LISTEN, T_CLIENT, T_BACKEND, T_TIMER, T_SIGNAL, T_EVENTS, T_CTL_LISTEN, T_CTL };

struct tag {
    enum tag_kind kind;
    void *ptr;
};

struct ctl_conn {
    int fd;
    struct tag tag;
    uint8_t buf[CTL_BUF];
    size_t len;
};

struct stats {
    uint64_t accepted, spliced, splice_retries, closed_early, resets, fins, reaped_idle,
        reaped_half_open, resplices, resplice_errors, ctl_rejected, backend_errors,
        conn_map_errors, failures, recovered, unrecoverable, legit_closes;
};

struct proxy {
    struct rs_addr listen, ctl;
    struct rs_addr backends[RS_PROXY_MAX_BACKENDS];
    uint32_t backend_ids[RS_PROXY_MAX_BACKENDS];
    bool dead[RS_PROXY_MAX_BACKENDS];
    int nbackends, rr;
    /* recovery: the alternate that takes over, the logger, backends' rs-stated port */
    struct rs_addr alternate, logger, logger_resend;
    uint32_t alternate_id;
    uint16_t stated_port;
    bool sticky, nosplice;
    char cookie_name[64];
    char ifname[IF_NAMESIZE];
    uint64_t idle_ns, half_open_ns, linger_us;
    int epfd, lfd, tfd, sfd, ctlfd;
    struct tag ltag, ttag, stag, etag, ctltag;
    struct rs_splicer *sp;
    struct pconn *buckets[RS_PROXY_BUCKETS];
    uint64_t next_id;
    int relaying;                 /* connections waiting to become quiet */
    struct rs_ctl_key key;
    bool has_key;
    struct rs_ctl_replay replay;
    uint64_t ctl_seq;
    struct stats st;
    bool stop;
};


/* splicer.c: the BPF side and TCP_REPAIR. */
struct rs_splicer *rs_splicer_open(const char *ifname, int *err);
void rs_splicer_close(struct rs_splicer *s);
int rs_splicer_ifindex(const struct rs_splicer *s);
/* Tells the tc program where clients connect, so it records their TSvals. */
int rs_splicer_set_vip(struct rs_splicer *s, uint32_t ip, uint16_t port);
/* The newest TSval client connection 'k' sent before its splice (then
 * forgotten).  Returns 0 or -ENOENT. */
int rs_splicer_client_ts(struct rs_splicer *s, const struct rs_flow_key *k, uint32_t *ts);
int rs_splicer_events_fd(struct rs_splicer *s);
typedef void (*rs_splicer_event_cb)(void *arg, const struct rs_flow_event *ev);
int rs_splicer_poll_events(struct rs_splicer *s, rs_splicer_event_cb cb, void *arg);

/* Keys of the two directions of a connection, as segments arrive at the proxy. */
struct rs_flow_key rs_flow_key_from(struct rs_addr src, struct rs_addr dst);

int rs_splicer_watch(struct rs_splicer *s, const struct rs_flow_key *k, uint64_t id);
int rs_splicer_set_state(struct rs_splicer *s, const struct rs_flow_key *k, uint32_t state);
/* Makes 'k' translate with 'd' in 'state' (ACTIVE or ACKONLY); 'guard'
 * holds back FIN/RST from that sender (a backend) and reports them. */
int rs_splicer_activate(struct rs_splicer *s, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                        uint64_t id, uint32_t state, bool guard);
/* Makes 'k' (a client's direction) never acknowledge past what the sender
 * of entry 'peer' has sent (after a re-splice to a regenerating server). */
int rs_splicer_clamp_ack(struct rs_splicer *s, const struct rs_flow_key *k, const struct rs_flow_key *peer);
int rs_splicer_get(struct rs_splicer *s, const struct rs_flow_key *k, struct rs_flow *out);
int rs_splicer_remove(struct rs_splicer *s, const struct rs_flow_key *k);

/* Reads the proxy's view of connection 'fd' (which must be in TCP_REPAIR
 * mode) into 'c'; 'local'/'remote' name its ends.  Returns 0 or -errno. */
int rs_repair_read(int fd, struct rs_addr local, struct rs_addr remote, struct rs_splice_conn *c);
int rs_repair_on(int fd);
int rs_repair_off(int fd);
/* Queued bytes: unread received (SIOCINQ) plus unacknowledged sent (SIOCOUTQ). */
int rs_sock_queued(int fd);

/* main.c: the connection table and sockets */
int rs_local_of(int fd, struct rs_addr *a);
int rs_bind_watched(struct proxy *p, struct rs_addr to, uint64_t id, struct rs_addr *local);
int rs_connect_start(int fd, struct rs_addr to);
struct rs_flow_key rs_key_c(const struct pconn *pc);
struct rs_flow_key rs_key_b(const struct pconn *pc);
void rs_pc_close(struct proxy *p, struct pconn *pc, const char *why);
struct pconn *rs_pc_find_client(struct proxy *p, struct rs_addr client);

/* recovery.c: moving a spliced client to another server, and failover */
/* Tells the rs-stated of 'backend' (same host, p->stated_port) that the
 * connection from 'peer' carries client 'client''s requests from number
 * 'next_num' ('flags': RS_CTL_CONN_MAP_*).  Returns 0 (also when no stated
 * port is configured) or -errno. */
int rs_conn_map(struct proxy *p, struct rs_addr backend, struct rs_addr peer, struct rs_addr client,
                uint16_t next_num, uint8_t flags);
/* Moves spliced connection 'pc' to 'target' so the target's first request
 * byte is client byte 'q' and its first response byte lands at client-side
 * response byte 'r' (both 0: where the streams stand now).  Returns 0 or -errno. */
int rs_resplice(struct proxy *p, struct pconn *pc, struct rs_addr target, uint32_t q, uint32_t r);
/* Recovers 'pc' from the failure of its backend (docs/recovery.md).
 * Returns 0 when the client now talks to the alternate, or -errno after
 * closing the connection with a logged, counted reason. */
int rs_recover(struct proxy *p, struct pconn *pc, const char *why);
/* The failure of backend 'id': marks it dead and recovers its connections. */
void rs_backend_failed(struct proxy *p, uint32_t id, const char *why);

#endif /* RS_PROXY_H */
