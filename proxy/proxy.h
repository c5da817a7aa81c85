/* rs-proxy: accepts client connections on the VIP, hands each to a
 * backend, then splices the two TCP connections at packet level (a tc eBPF
 * program rewrites every segment) so the proxy's own sockets leave the path.
 * This header holds the types shared by its files. */
#ifndef RS_PROXY_H
#define RS_PROXY_H

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
};

struct rs_splicer;

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
int rs_splicer_activate(struct rs_splicer *s, const struct rs_flow_key *k, const struct rs_splice_dir *d,
                        uint64_t id);
int rs_splicer_get(struct rs_splicer *s, const struct rs_flow_key *k, struct rs_flow *out);
int rs_splicer_remove(struct rs_splicer *s, const struct rs_flow_key *k);

/* Reads the proxy's view of connection 'fd' (which must be in TCP_REPAIR
 * mode) into 'c'; 'local'/'remote' name its ends.  Returns 0 or -errno. */
int rs_repair_read(int fd, struct rs_addr local, struct rs_addr remote, struct rs_splice_conn *c);
int rs_repair_on(int fd);
int rs_repair_off(int fd);
/* Queued bytes: unread received (SIOCINQ) plus unacknowledged sent (SIOCOUTQ). */
int rs_sock_queued(int fd);

#endif /* RS_PROXY_H */
