/* rs-auxlog's types: records of IMAP/SMTP conversations keyed by the web
 * transaction that caused them, and the conversations relayed between a
 * web backend and the mail store.  See auxlog.c for the behaviour. */
#ifndef RS_AUXLOG_H
#define RS_AUXLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auxproto.h"
#include "daemon.h"
#include "loop.h"

#define AUX_LINE_MAX    (64u << 10)     /* a command or reply line, with its CRLF */
#define AUX_UNIT_MAX    (32u << 20)     /* a unit: literals and message data included */
#define AUX_PRE_MAX     (64u << 10)     /* client bytes allowed before the marker */
#define AUX_HIGH_WATER  (1u << 20)      /* stop reading a side while the other owes this much */
#define AUX_READ_CHUNK  65536u
#define AUX_PLAN_MAX    256u            /* units a catch-up may resend */
#define AUX_HASH_BUCKETS 4096u
#define AUX_CONV_MAX    4096u           /* conversations at once; more are refused */

/* One request/reply unit: 'c' the client's bytes (none for the greeting),
 * 'r' the reply without continuation requests. */
struct aux_unit {
    uint8_t *c, *r;
    size_t clen, rlen;
    struct rs_aux_unit_sum sum;         /* sum.complete: 'r' holds the whole reply */
};

struct aux_conv;

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

/* How many conversations a backend opened for one transaction. */
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
};

#endif /* RS_AUXLOG_H */
