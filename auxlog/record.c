/* rs-auxlog's records: each marked conversation's units (request, reply)
 * keyed by the web transaction that caused it and the conversation's
 * ordinal within it, in a hash table and an age list (TTL, byte bound). */
#include "auxlog.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

/* ---- Records ------------------------------------------------------------ */

static unsigned key_hash(enum rs_aux_proto p, rs_txn_id txn, uint64_t extra)
{
    uint64_t h = (txn ^ (extra * 0x9e3779b97f4a7c15ull) ^ (uint64_t)p) * 0xff51afd7ed558ccdull;
    return (unsigned)(h >> 40) % AUX_HASH_BUCKETS;
}

static void unit_free(struct aux_unit *u)
{
    free(u->c);
    free(u->r);
    memset(u, 0, sizeof(*u));
}

/* Drops units from 'n' on. */
void record_truncate(struct auxlog *a, struct aux_record *r, size_t n)
{
    while (r->n > n) {
        struct aux_unit *u = &r->u[--r->n];
        size_t b = u->clen + u->rlen;
        r->bytes -= b;
        if (r->keyed)
            a->record_bytes -= b;
        unit_free(u);
    }
}

static void record_free(struct aux_record *r)
{
    for (size_t i = 0; i < r->n; i++)
        unit_free(&r->u[i]);
    free(r->u);
    free(r);
}

void record_put(struct aux_record *r)
{
    if (r && --r->refs == 0 && (r->dead || !r->keyed))
        record_free(r);
}

struct aux_record *record_new(enum rs_aux_proto proto, uint32_t owner)
{
    struct aux_record *r = calloc(1, sizeof(*r));
    if (r) {
        r->proto = proto;
        r->owner_ip = owner;
        r->refs = 1;
        r->touched_ns = rs_mono_ns();
    }
    return r;
}


/* Takes 'r' out of the table (expired, evicted or replaced).  Its writer
 * stops recording; readers keep their reference until they let go. */
void record_unkey(struct auxlog *a, struct aux_record *r)
{
    struct aux_record **pp = &a->rtab[key_hash(r->proto, r->txn, r->ordinal)];

    while (*pp && *pp != r)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = r->hnext;
    if (r->older)
        r->older->newer = r->newer;
    else
        a->oldest = r->newer;
    if (r->newer)
        r->newer->older = r->older;
    else
        a->newest = r->older;
    r->older = r->newer = r->hnext = NULL;
    a->n_records--;
    a->record_bytes -= r->bytes;
    r->keyed = false;
    r->dead = true;
    if (r->writer)
        conv_stop_recording(a, r->writer, "record dropped");
    if (r->refs == 0)
        record_free(r);
}

void record_key(struct auxlog *a, struct aux_record *r, rs_txn_id txn, unsigned ordinal)
{
    unsigned h = key_hash(r->proto, txn, ordinal);

    r->txn = txn;
    r->ordinal = ordinal;
    r->keyed = true;
    r->hnext = a->rtab[h];
    a->rtab[h] = r;
    r->older = a->newest;
    r->newer = NULL;
    if (a->newest)
        a->newest->newer = r;
    else
        a->oldest = r;
    a->newest = r;
    a->n_records++;
    a->record_bytes += r->bytes;
}

struct aux_record *record_find(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, unsigned ord)
{
    for (struct aux_record *r = a->rtab[key_hash(p, txn, ord)]; r; r = r->hnext)
        if (r->proto == p && r->txn == txn && r->ordinal == ord)
            return r;
    return NULL;
}

/* Keeps the table under --max-bytes by dropping the oldest records. */
void records_evict(struct auxlog *a)
{
    while (a->record_bytes > a->max_bytes && a->oldest) {
        struct aux_record *r = a->oldest;
        rs_log("evict %s txn=%s ordinal=%u bytes=%zu (record_bytes=%" PRIu64 " > max %" PRIu64 ")",
               proto_name(r->proto), RS_TXN(r->txn), r->ordinal, r->bytes, a->record_bytes, a->max_bytes);
        a->evicted++;
        record_unkey(a, r);
    }
}

static void expire_chain(struct aux_ordinal **pp, uint64_t now, uint64_t ttl)
{
    while (*pp) {
        struct aux_ordinal *o = *pp;
        if (now - o->touched_ns >= ttl) {
            *pp = o->hnext;
            free(o);
        } else {
            pp = &o->hnext;
        }
    }
}

void records_expire(struct auxlog *a)
{
    uint64_t now = rs_mono_ns();

    for (struct aux_record *r = a->oldest, *next; r; r = next) {
        next = r->newer;
        if (r->writer || now - r->touched_ns < a->ttl_ns)
            continue;
        a->expired++;
        record_unkey(a, r);
    }
    bool rerun = false;
    for (unsigned b = 0; b < AUX_HASH_BUCKETS; b++) {
        expire_chain(&a->otab[b], now, a->ttl_ns);
        expire_chain(&a->xtab[b], now, a->ttl_ns);
        rerun = rerun || a->xtab[b];
    }
    if (a->tap && !rerun) {
        bool relayed = false;
        for (struct aux_conv *c = a->convs; c && !relayed; c = c->next)
            relayed = !c->tap;
        if (!relayed)
            tap_judging(a, false);
    }
}

uint32_t rerun_owner(struct auxlog *a, rs_txn_id txn)
{
    for (struct aux_ordinal *x = a->xtab[key_hash(RS_AUX_IMAP, txn, 0)]; x; x = x->hnext)
        if (x->txn == txn)
            return x->ip;
    return 0;
}

int rerun_set(struct auxlog *a, rs_txn_id txn, uint32_t ip)
{
    unsigned h = key_hash(RS_AUX_IMAP, txn, 0);
    struct aux_ordinal *x;

    for (x = a->xtab[h]; x && x->txn != txn; x = x->hnext)
        ;
    if (!x) {
        if (!(x = calloc(1, sizeof(*x))))
            return -ENOMEM;
        x->txn = txn;
        x->hnext = a->xtab[h];
        a->xtab[h] = x;
    }
    x->ip = ip;
    x->touched_ns = rs_mono_ns();
    return 0;
}

/* Returns the ordinal of 'ip's next conversation for 'txn', or -ENOMEM. */
int ordinal_next(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, uint32_t ip)
{
    unsigned h = key_hash(p, txn, ip);
    struct aux_ordinal *o;

    for (o = a->otab[h]; o; o = o->hnext)
        if (o->proto == p && o->txn == txn && o->ip == ip)
            break;
    if (!o) {
        if (!(o = calloc(1, sizeof(*o))))
            return -ENOMEM;
        o->proto = p;
        o->txn = txn;
        o->ip = ip;
        o->hnext = a->otab[h];
        a->otab[h] = o;
    }
    o->touched_ns = rs_mono_ns();
    return (int)o->count++;
}

/* Appends a unit with client bytes 'c' and no reply yet.  Returns 0 or -ENOMEM. */
int record_push(struct auxlog *a, struct aux_record *r, const uint8_t *c, size_t clen,
                const struct rs_aux_cmd *cmd)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct aux_unit *u = realloc(r->u, cap * sizeof(*u));
        if (!u)
            return -ENOMEM;
        r->u = u;
        r->cap = cap;
    }
    struct aux_unit *u = &r->u[r->n];
    memset(u, 0, sizeof(*u));
    if (clen && !(u->c = dup_bytes(c, clen)))
        return -ENOMEM;
    u->clen = clen;
    if (cmd)
        u->sum.cmd = *cmd;
    r->n++;
    r->bytes += clen;
    r->touched_ns = rs_mono_ns();
    if (r->keyed)
        a->record_bytes += clen;
    return 0;
}

/* Appends 'n' more client bytes to unit 'i' (a SASL response, IDLE's DONE). */
int record_extend(struct auxlog *a, struct aux_record *r, size_t i, const uint8_t *p, size_t n)
{
    struct aux_unit *u = &r->u[i];
    uint8_t *q = realloc(u->c, u->clen + n);
    if (!q)
        return -ENOMEM;
    memcpy(q + u->clen, p, n);
    u->c = q;
    u->clen += n;
    r->bytes += n;
    if (r->keyed)
        a->record_bytes += n;
    return 0;
}

int record_reply(struct auxlog *a, struct aux_record *r, size_t i, const uint8_t *p, size_t n)
{
    struct aux_unit *u = &r->u[i];
    if (!(u->r = dup_bytes(p, n)))
        return -ENOMEM;
    u->rlen = n;
    rs_aux_reply_parse(r->proto, p, n, &u->sum.reply);
    u->sum.complete = true;
    r->bytes += n;
    r->touched_ns = rs_mono_ns();
    if (r->keyed)
        a->record_bytes += n;
    return 0;
}

