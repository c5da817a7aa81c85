/* rs-auxlog internals shared by the files of auxlog/: records of IMAP/SMTP
 * conversations keyed by the web transaction that caused them (record.c),
 * the conversations relayed between a web backend and the mail store
 * (conv.c: sockets and buffers; replay.c: markers, recording, answering a
 * re-run), those forwarded by this host's kernel and recorded on the way
 * (tap.c: --tap, no sockets), and the daemon (main.c: options, listeners,
 * the loop).  What is
 * IMAP or SMTP is core/auxproto.h (pure, unit-tested and fuzzed): these
 * files are the same for both. */
#ifndef RS_AUXLOG_H
#define RS_AUXLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auxproto.h"
#include "daemon.h"
#include "loop.h"
#include "server.h"

#define AUX_LINE_MAX    (64u << 10)     /* a command or reply line, with its CRLF */
#define AUX_UNIT_MAX    (32u << 20)     /* a unit: literals and message data included */
#define AUX_PRE_MAX     (64u << 10)     /* client bytes allowed before the marker */
#define AUX_HIGH_WATER  (1u << 20)      /* stop reading a side while the other owes this much */
#define AUX_READ_CHUNK  65536u
#define AUX_PLAN_MAX    256u            /* units a catch-up may resend */
#define AUX_HASH_BUCKETS 4096u
#define AUX_CONV_MAX    4096u           /* conversations at once; more are refused */
#define AUX_DRAIN_NS    5000000000ull   /* a superseded conversation waits this long for its replies */

/* One request/reply unit: 'c' the client's bytes (none for the greeting),
 * 'r' the reply without continuation requests. */
struct aux_unit {
    uint8_t *c, *r;
    size_t clen, rlen;
    struct rs_aux_unit_sum sum;         /* sum.complete: 'r' holds the whole reply */
};

struct aux_conv;
struct tap;
struct tap_flow;

/* A recorded conversation.  Keyed ones sit in the hash table and the age
 * list; a conversation before its marker keeps an unkeyed one. */
struct aux_record {
    struct aux_record *hnext;           /* hash chain */
    struct aux_record *older, *newer;   /* age list, oldest first */
    enum rs_aux_proto proto;
    rs_txn_id txn;
    unsigned ordinal;
    uint32_t owner_ip;                  /* the backend that made (or took over) the record */
    bool keyed, dead;
    unsigned refs;                      /* conversations pointing at it */
    struct aux_conv *writer;            /* the live conversation appending to it */
    struct aux_unit *u;
    size_t n, cap;
    size_t marker;                      /* index of the marker unit */
    size_t bytes;
    uint64_t touched_ns;
};

/* How many conversations a backend opened for one transaction ('otab'); or,
 * in 'xtab', which backend ('ip') re-ran a transaction after a failover:
 * from then on it alone acts for it (fencing at the mail store: the
 * failed-over backend may only have hung, and resumed it would send its
 * mail a second time). */
struct aux_ordinal {
    struct aux_ordinal *hnext;
    enum rs_aux_proto proto;
    rs_txn_id txn;
    uint32_t ip;
    unsigned count;
    uint64_t touched_ns;
};

struct aux_buf {
    uint8_t *p;
    size_t len, cap;
};

enum aux_mode {
    AUX_PRE,        /* no marker yet: relayed, kept in a private record */
    AUX_LIVE,       /* marked: relayed and recorded */
    AUX_REPLAY,     /* answered from another backend's record */
    AUX_RELAY,      /* unmarked (or no longer recordable): bytes only */
};

struct aux_conv {
    struct aux_conv *prev, *next;
    uint64_t id;
    enum rs_aux_proto proto;
    struct auxlog *a;
    struct rs_io cio, uio;              /* the backend's side, the mail store's side */
    int cfd, ufd;
    struct rs_addr peer, up;
    bool connecting, c_eof, u_eof, c_shut, u_shut;
    enum aux_mode mode;
    bool marked, replayed, caught_up, diverged, stray_warned;
    /* Superseded (another backend re-runs its transaction) while a unit it
     * forwarded awaits its reply: the backend is no longer heard, the mail
     * store's reply still completes the record (draining_ns: since when). */
    bool draining;
    uint64_t draining_ns;
    /* REPLAY: the client's unit cin[0, wait_end) waits for a draining
     * writer to complete its reply in the record (wait_literal: an IMAP
     * literal's announcement, not a whole unit). */
    bool waiting, wait_data, wait_literal, wake;
    size_t wait_end;
    rs_txn_id txn;
    unsigned ordinal;
    struct aux_buf cin, sin, cout, uout;
    size_t cfwd, sfwd;                  /* bytes of cin/sin already forwarded (or dropped) */
    struct rs_aux_split cs, ss;
    struct aux_record *rec;
    ptrdiff_t off;                      /* record index = conversation index + off */
    size_t nc;                          /* client units seen; the next one is unit nc */
    size_t nr;                          /* the next reply from upstream answers unit nr */
    size_t discard;                     /* catch-up replies still to drop */
    size_t marker;                      /* conversation index of the marker unit */
    bool cur_decided, cur_replay;       /* REPLAY: verdict on the unit in progress */
    uint64_t start_ns, bytes_c, bytes_s;
    struct tap_flow *tap;               /* a tapped conversation (tap.c): no sockets, nothing to forward */
};

/* A listening port (--imap, --smtp) and the mail store behind it. */
struct listener {
    struct auxlog *a;
    struct rs_server server;
    enum rs_aux_proto proto;
    struct rs_addr laddr, up;
};

/* The daemon. */
struct auxlog {
    struct listener ls[2];
    unsigned n_ls;
    uint64_t ttl_ns, max_bytes;
    struct rs_loop loop;
    struct rs_timer expire;
    struct aux_conv *convs;
    unsigned n_convs;
    uint64_t next_id;
    struct aux_record *rtab[AUX_HASH_BUCKETS];
    struct aux_ordinal *otab[AUX_HASH_BUCKETS];
    struct aux_ordinal *xtab[AUX_HASH_BUCKETS];
    struct aux_record *oldest, *newest;
    uint64_t n_records, record_bytes;
    /* stats */
    uint64_t conns, live, unmarked, replayed, caught_up, diverged, expired, evicted, stale, errors, refused,
        superseded, drained, tapped, fenced, queued, queue_dropped;
    struct tap *tap;                    /* --tap (tap.c), or NULL */
};

static inline const char *proto_name(enum rs_aux_proto p)
{
    return p == RS_AUX_IMAP ? "imap" : "smtp";
}

/* ---- record.c ------------------------------------------------------------- */

/* A new unkeyed record of 'proto' made by backend 'owner' (one reference). */
struct aux_record *record_new(enum rs_aux_proto proto, uint32_t owner);
/* Drops one reference; the last frees an unkeyed or dead record. */
void record_put(struct aux_record *r);
/* Files 'r' under ('txn', 'ordinal') / takes it out of the table. */
void record_key(struct auxlog *a, struct aux_record *r, rs_txn_id txn, unsigned ordinal);
void record_unkey(struct auxlog *a, struct aux_record *r);
/* The record of conversation 'ord' of transaction 'txn', or NULL. */
struct aux_record *record_find(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, unsigned ord);
/* The ordinal of the next conversation backend 'ip' opens for 'txn', or a
 * negative errno. */
int ordinal_next(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, uint32_t ip);
/* The backend that re-ran 'txn' last (0: none within --ttl); records that
 * 'ip' re-runs it now.  rerun_set returns 0 or -ENOMEM. */
uint32_t rerun_owner(struct auxlog *a, rs_txn_id txn);
int rerun_set(struct auxlog *a, rs_txn_id txn, uint32_t ip);
/* Appends a unit with client bytes 'c' (and 'clen'); extends unit 'i''s
 * client bytes; appends reply bytes to unit 'i'.  Return 0 or -ENOMEM. */
int record_push(struct auxlog *a, struct aux_record *r, const uint8_t *c, size_t clen,
                const struct rs_aux_cmd *cmd);
int record_extend(struct auxlog *a, struct aux_record *r, size_t i, const uint8_t *p, size_t n);
int record_reply(struct auxlog *a, struct aux_record *r, size_t i, const uint8_t *p, size_t n);
/* Keeps the first 'n' units of 'r'. */
void record_truncate(struct auxlog *a, struct aux_record *r, size_t n);
/* Drops the oldest records while over --max-bytes / past --ttl. */
void records_evict(struct auxlog *a);
void records_expire(struct auxlog *a);

/* ---- conv.c --------------------------------------------------------------- */

/* rs_server_fn of each listener ('ctx'): a new conversation from a backend. */
int conv_accept(void *ctx, int fd, const struct sockaddr_in *sin);
/* Queues bytes for the backend / the mail store.  Return 0 or -ENOMEM. */
int to_client(struct aux_conv *c, const void *p, size_t n);
int to_upstream(struct aux_conv *c, const void *p, size_t n);
/* Appends 'n' bytes to 'b' / drops its first 'n'.  buf_add returns 0 or
 * -ENOMEM. */
int buf_add(struct aux_buf *b, const void *p, size_t n);
void buf_drop(struct aux_buf *b, size_t n);
/* Ends 'c' (both sockets closed, its record let go), logging 'why'. */
void conv_close(struct auxlog *a, struct aux_conv *c, const char *why);
/* The conversation goes on relaying only (its record is closed, 'why'). */
void conv_stop_recording(struct auxlog *a, struct aux_conv *c, const char *why);
/* Another backend re-runs 'c''s transaction: 'c' ends, or drains when a
 * unit it forwarded awaits its reply (see struct aux_conv). */
void conv_supersede(struct auxlog *a, struct aux_conv *c);
/* Ends the draining conversations older than AUX_DRAIN_NS. */
void convs_expire(struct auxlog *a);
/* Record 'r''s draining writer got a reply or is gone: the replays
 * waiting on it decide again. */
void replay_wake(struct auxlog *a, struct aux_record *r);

/* ---- replay.c ------------------------------------------------------------- */

/* Handles the complete units the backend / the mail store sent.  Return 0
 * or a negative errno (the conversation then ends). */
int client_scan(struct auxlog *a, struct aux_conv *c);
int server_scan(struct auxlog *a, struct aux_conv *c);
/* REPLAY: 'c' waited for its record (struct aux_conv, 'waiting'): decides
 * again and goes on.  Returns 0 (perhaps waiting again) or -errno. */
int replay_resume(struct auxlog *a, struct aux_conv *c);

/* ---- tap.c --------------------------------------------------------------- */

/* --tap IFACE: records the conversations this host forwards to and from the
 * store of the listeners' upstream (one address), judging each one's
 * marker before it passes on netfilter queue 'queue'.  Returns 0 or -errno. */
int tap_open(struct auxlog *a, const char *ifname, unsigned queue);
void tap_close(struct auxlog *a);
/* Reads the ring to its end: every segment that passed until now is in
 * the records. */
void tap_sync(struct auxlog *a);
/* A re-run connected to the relay ('on') / none is remembered any more:
 * markers are judged before they pass, or not. */
void tap_judging(struct auxlog *a, bool on);
/* Backend 'ip' re-runs 'txn': the tapped conversations of it from other
 * backends are fenced, and what they sent before is read. */
void tap_fence_txn(struct auxlog *a, rs_txn_id txn, uint32_t ip);
/* Ends the flows idle for long (their backend vanished without a FIN). */
void tap_expire(struct auxlog *a);
/* conv_close of a tapped conversation: its flow forgets it. */
void tap_conv_closed(struct aux_conv *c);

#endif /* RS_AUXLOG_H */
