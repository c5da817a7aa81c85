/* Stream reassembly into a bounded log ring (see reasm.h).  Every position
 * is a 64-bit stream offset; a segment is cut into the part before the base,
 * the released part, the part overlapping the logged prefix, and the part
 * beyond it, and each is handled on its own. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "reasm.h"

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int rs_reasm_init(struct rs_reasm *s, struct rs_reasm_budget *budget, size_t cap)
{
    memset(s, 0, sizeof(*s));
    if (!budget || cap == 0 || cap > RS_REASM_CAP_MAX)
        return -EINVAL;
    if (cap > budget->limit || budget->used > budget->limit - cap) {
        budget->refused++;
        return -ENOMEM;
    }
    s->ring = malloc(cap);
    if (!s->ring) {
        budget->refused++;
        return -ENOMEM;
    }
    budget->used += cap;
    s->budget = budget;
    s->cap = cap;
    return 0;
}

void rs_reasm_free(struct rs_reasm *s)
{
    if (s->ring) {
        free(s->ring);
        s->budget->used -= s->cap;
    }
    memset(s, 0, sizeof(*s));
}

static size_t ring_idx__(const struct rs_reasm *s, int64_t off);

int rs_reasm_grow(struct rs_reasm *s, size_t cap)
{
    struct rs_reasm_budget *b = s->budget;
    size_t more, done = 0;
    uint8_t *ring;

    if (!s->ring || cap > RS_REASM_CAP_MAX)
        return -EINVAL;
    if (cap <= s->cap)
        return 0;
    more = cap - s->cap;
    if (more > b->limit || b->used > b->limit - more) {
        b->refused++;
        return -ENOMEM;
    }
    if (!(ring = malloc(cap))) {
        b->refused++;
        return -ENOMEM;
    }
    /* Every byte keeps its stream offset: the window [released, released +
     * old cap) moves to its places modulo the new capacity, in the few
     * pieces where either ring wraps. */
    while (done < s->cap) {
        int64_t off = s->released + (int64_t)done;
        size_t from = ring_idx__(s, off), to = (size_t)((uint64_t)off % cap);
        size_t n = s->cap - done;
        if (n > s->cap - from)
            n = s->cap - from;
        if (n > cap - to)
            n = cap - to;
        memcpy(ring + to, s->ring + from, n);
        done += n;
    }
    free(s->ring);
    s->ring = ring;
    b->used += more;
    s->cap = cap;
    return 0;
}

int rs_reasm_set_base(struct rs_reasm *s, uint32_t seq)
{
    if (!s->ring)
        return -EINVAL;
    if (s->has_base)
        return -EALREADY;
    s->has_base = 1;
    s->base_seq = seq;
    return 0;
}

/* Ring position of stream offset 'off' (never negative here). */
static size_t ring_idx__(const struct rs_reasm *s, int64_t off)
{
    return (size_t)((uint64_t)off % s->cap);
}

static void ring_put__(struct rs_reasm *s, int64_t off, const uint8_t *src, size_t n)
{
    size_t idx = ring_idx__(s, off), first = n < s->cap - idx ? n : s->cap - idx;

    memcpy(s->ring + idx, src, first);
    if (n > first)
        memcpy(s->ring, src + first, n - first);
}

static void ring_get__(const struct rs_reasm *s, int64_t off, uint8_t *dst, size_t n)
{
    size_t idx = ring_idx__(s, off), first = n < s->cap - idx ? n : s->cap - idx;

    memcpy(dst, s->ring + idx, first);
    if (n > first)
        memcpy(dst + first, s->ring, n - first);
}

/* Number of the 'n' bytes at 'src' that differ from the stored bytes at
 * stream offset 'off'.  memcmp first: retransmissions nearly always match. */
static uint64_t ring_diff__(const struct rs_reasm *s, int64_t off, const uint8_t *src, size_t n)
{
    uint64_t diff = 0;

    while (n > 0) {
        size_t idx = ring_idx__(s, off), run = n < s->cap - idx ? n : s->cap - idx;
        const uint8_t *have = s->ring + idx;

        if (memcmp(have, src, run) != 0)
            for (size_t i = 0; i < run; i++)
                diff += have[i] != src[i];
        off += (int64_t)run;
        src += run;
        n -= run;
    }
    return diff;
}

/* Per-call tallies, folded into the stats once at the end. */
struct reasm_tally {
    uint64_t fresh, dup, conflict, refused;
};

/* Compares the already-stored bytes [from, to) with the segment's copy. */
static void compare__(const struct rs_reasm *s, int64_t from, int64_t to,
                      const uint8_t *src, struct reasm_tally *t)
{
    uint64_t n = (uint64_t)(to - from), d = ring_diff__(s, from, src, n);

    t->conflict += d;
    t->dup += n - d;
}

/* Stores [o, end) — already clipped to the window and at or after the
 * contiguous end — filling the gaps between held ranges, comparing the
 * parts they cover, and merging the result into the range list (or the
 * prefix).  'src' holds the byte for offset 'o'.  Returns 0, or -ENOSPC
 * when the bytes would need one range more than the list holds. */
static int store_beyond__(struct rs_reasm *s, int64_t o, int64_t end,
                          const uint8_t *src, struct reasm_tally *t)
{
    unsigned first = 0, last, k, count;
    int64_t cur = o, ns = o, ne = end;

    /* Ranges that overlap or touch [o, end] all merge with it. */
    while (first < s->nranges && s->ranges[first].end < o)
        first++;
    last = first;
    while (last < s->nranges && s->ranges[last].start <= end)
        last++;
    k = last - first;
    count = s->nranges - k + (o > s->contig ? 1 : 0);
    if (count > RS_REASM_MAX_RANGES) {
        t->refused += (uint64_t)(end - o);
        return -ENOSPC;
    }

    for (unsigned i = first; i < last; i++) {
        const struct rs_reasm_range *r = &s->ranges[i];

        if (cur < r->start) {
            int64_t to = min64(end, r->start);

            ring_put__(s, cur, src + (cur - o), (size_t)(to - cur));
            t->fresh += (uint64_t)(to - cur);
            cur = to;
        }
        if (cur < end && cur < r->end) {
            int64_t to = min64(end, r->end);

            compare__(s, cur, to, src + (cur - o), t);
            cur = to;
        }
    }
    if (cur < end) {
        ring_put__(s, cur, src + (cur - o), (size_t)(end - cur));
        t->fresh += (uint64_t)(end - cur);
    }

    if (k > 0) {
        ns = min64(o, s->ranges[first].start);
        ne = max64(end, s->ranges[last - 1].end);
    }
    /* Replace ranges [first, last) by [ns, ne), or fold it into the prefix
     * when it starts at the contiguous end (then 'first' is 0). */
    if (ns <= s->contig) {
        memmove(&s->ranges[first], &s->ranges[last],
                (s->nranges - last) * sizeof(s->ranges[0]));
        s->nranges -= k;
        s->contig = ne;
    } else {
        memmove(&s->ranges[first + 1], &s->ranges[last],
                (s->nranges - last) * sizeof(s->ranges[0]));
        s->ranges[first].start = ns;
        s->ranges[first].end = ne;
        s->nranges = s->nranges - k + 1;
    }
    return 0;
}

int rs_reasm_add(struct rs_reasm *s, uint32_t seq, const void *data, size_t len)
{
    struct rs_reasm_stats *st = &s->stats;
    struct reasm_tally t = { 0, 0, 0, 0 };
    const uint8_t *src = data;
    int64_t o, o0, end, win;
    int err = 0, ooo = 0;

    if (!s->ring)
        return -EINVAL;
    if (len == 0)
        return 0;
    if (!data || len > RS_REASM_SEG_MAX) {
        st->segs_invalid++;
        return -EINVAL;
    }
    if (!s->has_base) {
        s->has_base = 1;
        s->base_seq = seq;
    }
    st->segs++;
    o0 = o = rs_reasm_off(s, seq);
    end = o + (int64_t)len;

    if (o < 0) {
        int64_t to = min64(end, 0);

        st->bytes_before_base += (uint64_t)(to - o);
        o = to;
    }
    /* Released bytes may already be overwritten: nothing to compare with. */
    if (o < end && o < s->released) {
        int64_t to = min64(end, s->released);

        st->bytes_stale += (uint64_t)(to - o);
        o = to;
    }
    if (o < end && o < s->contig) {
        int64_t to = min64(end, s->contig);

        compare__(s, o, to, src + (o - o0), &t);
        o = to;
    }
    /* Never overwrite unreleased bytes: the window ends at released + cap. */
    win = s->released + (int64_t)s->cap;
    if (o < end && end > win) {
        int64_t from = max64(o, win);

        t.refused += (uint64_t)(end - from);
        end = from;
        err = -ENOBUFS;
    }
    if (o < end) {
        int64_t contig = s->contig;
        uint64_t before = t.fresh;
        int r = store_beyond__(s, o, end, src + (o - o0), &t);

        if (r < 0) {
            st->segs_refused_ranges++;
            if (!err)
                err = r;
        }
        ooo = o > contig && t.fresh > before;
    }

    st->bytes_accepted += t.fresh;
    st->bytes_dup += t.dup;
    st->bytes_conflict += t.conflict;
    st->bytes_refused += t.refused;
    st->segs_ooo += ooo;
    st->segs_conflict += t.conflict > 0;
    st->segs_refused += t.refused > 0;
    st->segs_dup += t.fresh == 0 && t.refused == 0;
    return err ? err : (int)t.fresh;
}

int rs_reasm_release(struct rs_reasm *s, uint32_t upto)
{
    int64_t o, n;

    if (!s->ring || !s->has_base)
        return -EINVAL;
    o = rs_reasm_off(s, upto);
    if (o > s->contig)
        return -ERANGE;
    if (o <= s->released)
        return 0;
    n = o - s->released;
    s->released = o;
    return (int)n;
}

/* Stream offset of 'seq' when [seq, seq + len) is readable, else the error. */
static int64_t readable__(const struct rs_reasm *s, uint32_t seq, size_t len)
{
    int64_t o;

    if (!s->ring || !s->has_base)
        return -ENODATA;
    o = rs_reasm_off(s, seq);
    if (o < s->released)
        return -ESTALE;
    if (o > s->contig || len > (uint64_t)(s->contig - o))
        return -ENODATA;
    return o;
}

int rs_reasm_read(const struct rs_reasm *s, uint32_t seq, size_t len, void *out)
{
    int64_t o = readable__(s, seq, len);

    if (o < 0)
        return (int)o;
    if (len > 0)
        ring_get__(s, o, out, len);
    return 0;
}

int rs_reasm_peek(const struct rs_reasm *s, uint32_t seq, const uint8_t **p, size_t *len)
{
    int64_t o = readable__(s, seq, 0);
    size_t idx, avail;

    *p = NULL;
    *len = 0;
    if (o < 0)
        return (int)o;
    idx = ring_idx__(s, o);
    avail = (size_t)(s->contig - o);
    *p = s->ring + idx;
    *len = avail < s->cap - idx ? avail : s->cap - idx;
    return 0;
}

uint64_t rs_reasm_ooo_bytes(const struct rs_reasm *s)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < s->nranges && i < RS_REASM_MAX_RANGES; i++)
        n += (uint64_t)(s->ranges[i].end - s->ranges[i].start);
    return n;
}

int rs_reasm_check(const struct rs_reasm *s)
{
    int64_t prev;

    if (!s->ring)
        return s->nranges == 0 && s->contig == 0 && s->released == 0 ? 0 : -EUCLEAN;
    if (s->nranges > RS_REASM_MAX_RANGES || s->released < 0 || s->contig < s->released ||
        s->contig - s->released > (int64_t)s->cap)
        return -EUCLEAN;
    if (!s->has_base && (s->contig != 0 || s->nranges != 0))
        return -EUCLEAN;
    prev = s->contig;
    for (unsigned i = 0; i < s->nranges; i++) {
        const struct rs_reasm_range *r = &s->ranges[i];

        /* Strictly after the previous end: touching ranges must have merged. */
        if (r->start <= prev || r->end <= r->start ||
            r->end > s->released + (int64_t)s->cap)
            return -EUCLEAN;
        prev = r->end;
    }
    /* Every byte ever stored is either in the prefix or in a range. */
    if (s->stats.bytes_accepted != (uint64_t)s->contig + rs_reasm_ooo_bytes(s))
        return -EUCLEAN;
    return 0;
}
