/* rs-stated's buffer of states (see store.h): a hash table of client
 * connections, each with its states in transaction order. */
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t bucket_of(uint32_t ip, uint16_t port)
{
    uint32_t h = ip * 2654435761u ^ ((uint32_t)port * 40503u);

    return (h ^ (h >> 16)) % RS_STORE_BUCKETS;
}

static void client_free_states(struct rs_store *st, struct rs_store_client *c)
{
    while (c->head) {
        struct rs_store_state *s = c->head;

        c->head = s->next;
        st->n_states--;
        st->bytes -= s->len;
        free(s);
    }
    c->tail = NULL;
    c->n_states = 0;
}

void rs_store_clear(struct rs_store *st)
{
    for (uint32_t b = 0; b < RS_STORE_BUCKETS; b++) {
        while (st->buckets[b]) {
            struct rs_store_client *c = st->buckets[b];

            st->buckets[b] = c->hnext;
            client_free_states(st, c);
            free(c);
        }
    }
    st->n_clients = 0;
}

struct rs_store_client *rs_store_find(struct rs_store *st, uint32_t ip, uint16_t port)
{
    for (struct rs_store_client *c = st->buckets[bucket_of(ip, port)]; c; c = c->hnext)
        if (c->ip == ip && c->port == port)
            return c;
    return NULL;
}

/* Frees the least recently active client that holds no state.  Returns
 * false when every client holds state.  A linear scan: it runs only when
 * the table is full. */
static bool evict_one(struct rs_store *st)
{
    struct rs_store_client **victim = NULL;

    for (uint32_t b = 0; b < RS_STORE_BUCKETS; b++)
        for (struct rs_store_client **pc = &st->buckets[b]; *pc; pc = &(*pc)->hnext)
            if (!(*pc)->head && (!victim || (*pc)->last_ns < (*victim)->last_ns))
                victim = pc;
    if (!victim)
        return false;
    struct rs_store_client *c = *victim;

    *victim = c->hnext;
    free(c);
    st->n_clients--;
    st->evicted++;
    return true;
}

struct rs_store_client *rs_store_get(struct rs_store *st, uint32_t ip, uint16_t port, uint64_t now_ns)
{
    struct rs_store_client *c = rs_store_find(st, ip, port);
    uint32_t b;

    if (c) {
        c->last_ns = now_ns;
        return c;
    }
    if (st->n_clients >= RS_STORE_CLIENTS_MAX && !evict_one(st))
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ip = ip;
    c->port = port;
    c->last_ns = now_ns;
    b = bucket_of(ip, port);
    c->hnext = st->buckets[b];
    st->buckets[b] = c;
    st->n_clients++;
    return c;
}

int rs_store_put(struct rs_store *st, rs_txn_id id, const void *data, uint32_t len, uint64_t now_ns)
{
    uint16_t num = rs_txn_id_num(id);
    struct rs_store_client *c = rs_store_get(st, rs_txn_id_ip4(id), rs_txn_id_port(id), now_ns);
    struct rs_store_state *s, **pp;

    if (!c)
        return -ENOBUFS;
    if (c->taken_over || (c->has_ts && rs_txn_num_le(num, c->ts)))
        return -ESTALE;
    if (c->n_states >= RS_STORE_CLIENT_STATES || st->n_states >= RS_STORE_STATES_MAX ||
        st->bytes + len > RS_STORE_BYTES_MAX)
        return -ENOBUFS;
    s = malloc(sizeof(*s) + len);
    if (!s)
        return -ENOMEM;
    s->num = num;
    s->len = len;
    if (len)
        memcpy(s->data, data, len);
    /* States arrive in order over one connection: append is the usual case. */
    if (!c->tail || rs_txn_num_lt(c->tail->num, num)) {
        s->next = NULL;
        if (c->tail)
            c->tail->next = s;
        else
            c->head = s;
        c->tail = s;
    } else {
        for (pp = &c->head; *pp && rs_txn_num_lt((*pp)->num, num); pp = &(*pp)->next)
            ;
        if (*pp && (*pp)->num == num) {     /* a resend: the newer copy wins */
            struct rs_store_state *old = *pp;

            s->next = old->next;
            *pp = s;
            if (c->tail == old)
                c->tail = s;
            st->bytes -= old->len;
            st->n_states--;
            c->n_states--;
            free(old);
        } else {
            s->next = *pp;
            *pp = s;
        }
    }
    c->n_states++;
    st->n_states++;
    st->bytes += len;
    if (!c->has_ta || rs_txn_num_lt(c->ta, num)) {
        c->has_ta = true;
        c->ta = num;
    }
    return 0;
}

int rs_store_logged(struct rs_store *st, rs_txn_id id, uint64_t now_ns)
{
    uint16_t num = rs_txn_id_num(id);
    struct rs_store_client *c = rs_store_get(st, rs_txn_id_ip4(id), rs_txn_id_port(id), now_ns);

    if (!c)
        return -ENOBUFS;
    if (!c->has_logged || rs_txn_num_lt(c->logged, num)) {
        c->has_logged = true;
        c->logged = num;
    }
    return 0;
}

int rs_store_unlogged(struct rs_store *st, rs_txn_id id, uint64_t now_ns)
{
    struct rs_store_client *c = rs_store_get(st, rs_txn_id_ip4(id), rs_txn_id_port(id), now_ns);

    if (!c)
        return -ENOBUFS;
    c->unlogged = true;
    return 0;
}

void rs_store_set_logger(struct rs_store *st, bool present)
{
    st->no_logger = !present;
}

int rs_store_drain(struct rs_store *st, struct rs_store_client *c, bool force, uint16_t upto,
                   rs_store_apply_fn fn, void *ctx)
{
    int n = 0;

    while (c->head) {
        struct rs_store_state *s = c->head;
        int err;

        if (force ? !rs_txn_num_lt(s->num, upto)
                  : !(st->no_logger || c->unlogged || (c->has_logged && rs_txn_num_le(s->num, c->logged))))
            break;
        err = fn(ctx, rs_txn_id_make(c->ip, c->port, s->num), s->data, s->len);
        if (err < 0)
            return n ? n : err;
        c->head = s->next;
        if (!c->head)
            c->tail = NULL;
        c->n_states--;
        st->n_states--;
        st->bytes -= s->len;
        c->has_ts = true;
        c->ts = s->num;
        free(s);
        n++;
    }
    return n;
}

int rs_store_cover(struct rs_store *st, rs_txn_id id, uint64_t now_ns)
{
    uint16_t num = rs_txn_id_num(id);
    struct rs_store_client *c = rs_store_get(st, rs_txn_id_ip4(id), rs_txn_id_port(id), now_ns);

    if (!c)
        return -ENOBUFS;
    while (c->head && rs_txn_num_le(c->head->num, num)) {
        struct rs_store_state *s = c->head;

        c->head = s->next;
        c->n_states--;
        st->n_states--;
        st->bytes -= s->len;
        free(s);
    }
    if (!c->head)
        c->tail = NULL;
    if (!c->has_ts || rs_txn_num_lt(c->ts, num)) {
        c->has_ts = true;
        c->ts = num;
    }
    if (!c->has_ta || rs_txn_num_lt(c->ta, num)) {
        c->has_ta = true;
        c->ta = num;
    }
    return 0;
}

int rs_store_take_over(struct rs_store *st, struct rs_store_client *c, uint16_t upto)
{
    struct rs_store_state **pp = &c->head;
    int n = 0;

    c->taken_over = true;
    c->tail = NULL;
    while (*pp) {
        struct rs_store_state *s = *pp;

        if (rs_txn_num_lt(s->num, upto)) {
            c->tail = s;
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        c->n_states--;
        st->n_states--;
        st->bytes -= s->len;
        free(s);
        n++;
    }
    return n;
}
