/* libFuzzer target for core/reasm.c: the input is a small ring's setup and
 * a list of add / release / read operations; after each, the stream's own
 * invariant check, its counters and every read are compared with a shadow
 * that keeps one flag and one value per byte of the live window. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "reasm.h"

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

/* The shadow's window: offsets [released, released + cap) plus a segment's
 * overhang; offsets are kept modulo SLOTS and cleared when released. */
#define SLOTS 1024
#define MAX_CAP 128
#define MAX_LEN 200

struct shadow {
    int64_t cap, released, contig;
    uint8_t held[SLOTS], byte[SLOTS];
    struct rs_reasm_stats st;
};

static uint8_t *held(struct shadow *m, int64_t off) { return &m->held[off & (SLOTS - 1)]; }
static uint8_t *byte(struct shadow *m, int64_t off) { return &m->byte[off & (SLOTS - 1)]; }

/* Runs of held bytes beyond the contiguous end: the ranges reasm keeps. */
static unsigned shadow_runs(struct shadow *m)
{
    unsigned n = 0;

    for (int64_t i = m->contig + 1; i < m->released + m->cap; i++)
        n += *held(m, i) && !*held(m, i - 1);
    return n;
}

/* Same contract as rs_reasm_add, expressed byte by byte. */
static int shadow_add(struct shadow *m, int64_t o, const uint8_t *d, int64_t n)
{
    const int64_t end = m->released + m->cap, before = m->contig;
    int64_t first_new = -1, last_new = -1;
    uint64_t fresh = 0, clash = 0, beyond = 0, nospace = 0;

    m->st.segs++;
    for (int64_t i = o; i < o + n; i++) {
        if (i < 0) {
            m->st.bytes_before_base++;
        } else if (i < m->released) {
            m->st.bytes_stale++;
        } else if (i >= end) {
            beyond++;
        } else if (*held(m, i)) {
            if (*byte(m, i) == d[i - o])
                m->st.bytes_dup++;
            else
                clash++;
        } else {
            last_new = i;
            if (first_new < 0)
                first_new = i;
        }
    }
    if (first_new >= 0) {
        unsigned runs_before = shadow_runs(m);
        int touches = first_new == m->contig || *held(m, first_new - 1) || *held(m, last_new + 1);

        /* Only a new isolated run can overflow the list: all else merges. */
        for (int64_t i = first_new; i <= last_new; i++)
            touches |= *held(m, i);
        if (!touches && first_new > m->contig && runs_before == RS_REASM_MAX_RANGES) {
            nospace = (uint64_t)(last_new - first_new + 1);
        } else {
            for (int64_t i = first_new; i <= last_new; i++) {
                if (!*held(m, i)) {
                    *held(m, i) = 1;
                    *byte(m, i) = d[i - o];
                    fresh++;
                }
            }
            while (m->contig < end && *held(m, m->contig))
                m->contig++;
        }
    }
    m->st.bytes_accepted += fresh;
    m->st.bytes_conflict += clash;
    m->st.bytes_refused += beyond + nospace;
    m->st.segs_ooo += fresh && o > before;
    m->st.segs_conflict += clash != 0;
    m->st.segs_refused += beyond + nospace != 0;
    m->st.segs_refused_ranges += nospace != 0;
    m->st.segs_dup += !fresh && !beyond && !nospace;
    if (beyond)
        return -ENOBUFS;
    if (nospace)
        return -ENOSPC;
    return (int)fresh;
}

struct input {
    const uint8_t *p;
    size_t n;
};

static uint8_t next(struct input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

/* Deterministic content, so that most copies agree and duplicates are seen. */
static uint8_t pat(int64_t off) { return (uint8_t)((uint64_t)off * 151u >> 3); }

static void check_state(const struct rs_reasm *s, struct shadow *m)
{
    CHECK(rs_reasm_check(s) == 0);
    CHECK((int64_t)rs_reasm_contig_off(s) == m->contig);
    CHECK((int64_t)rs_reasm_released_off(s) == m->released);
    CHECK(rs_reasm_nranges(s) == shadow_runs(m));
    CHECK(memcmp(rs_reasm_stats(s), &m->st, sizeof(m->st)) == 0);
}

/* 'base' is the seq the first add uses when no base was set. */
static void op_add(struct rs_reasm *s, struct shadow *m, struct input *in, uint8_t op,
                   uint32_t base)
{
    uint8_t data[MAX_LEN];
    int64_t off = m->released + (int8_t)next(in);
    size_t len = next(in) % MAX_LEN;
    uint32_t seq;

    if (op & 0x10) {            /* anywhere in seq space */
        seq = (uint32_t)next(in) << 24 | (uint32_t)next(in) << 8;
        off = m->contig + rs_seq_diff(seq, rs_reasm_contig_seq(s));
    }
    if (!rs_reasm_has_base(s))
        off = 0;                /* this segment defines the base */
    for (size_t i = 0; i < len; i++)
        data[i] = op & 4 ? next(in) : pat(off + (int64_t)i);
    if ((op & 8) && len)
        data[next(in) % len] ^= 1 + (next(in) & 0x7f);
    seq = (rs_reasm_has_base(s) ? rs_reasm_base_seq(s) : base) + (uint32_t)off;
    CHECK(rs_reasm_add(s, seq, data, len) == (len ? shadow_add(m, off, data, (int64_t)len) : 0));
}

static void op_release(struct rs_reasm *s, struct shadow *m, struct input *in, uint8_t op)
{
    int64_t span = m->contig - m->released + 1;
    int64_t upto = op & 4 ? m->released + next(in) % span : m->released + (int8_t)next(in);
    int want = upto > m->contig ? -ERANGE : upto <= m->released ? 0 : (int)(upto - m->released);

    if (!rs_reasm_has_base(s)) {
        CHECK(rs_reasm_release(s, 0) == -EINVAL);
        return;
    }
    CHECK(rs_reasm_release(s, rs_reasm_base_seq(s) + (uint32_t)upto) == want);
    for (; want > 0 && m->released < upto; m->released++)
        *held(m, m->released) = 0;
}

static void op_read(struct rs_reasm *s, struct shadow *m, struct input *in)
{
    uint8_t out[MAX_LEN];
    const uint8_t *p;
    int64_t off = m->released + (int8_t)next(in);
    size_t len = next(in) % MAX_LEN, run;
    uint32_t seq = rs_reasm_base_seq(s) + (uint32_t)off;
    int want = !rs_reasm_has_base(s) ? -ENODATA : off < m->released ? -ESTALE
             : off + (int64_t)len > m->contig ? -ENODATA : 0;

    CHECK(rs_reasm_read(s, seq, len, out) == want);
    for (size_t i = 0; want == 0 && i < len; i++)
        CHECK(out[i] == *byte(m, off + (int64_t)i));
    want = !rs_reasm_has_base(s) ? -ENODATA : off < m->released ? -ESTALE
         : off > m->contig ? -ENODATA : 0;
    CHECK(rs_reasm_peek(s, seq, &p, &run) == want);
    if (want == 0) {
        CHECK(run <= (size_t)(m->contig - off) && (run > 0 || off == m->contig));
        for (size_t i = 0; i < run; i++)
            CHECK(p[i] == *byte(m, off + (int64_t)i));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = { data, size };
    struct rs_reasm_budget budget;
    struct rs_reasm s, other;
    struct shadow m;
    size_t cap, cap2;
    uint32_t base;
    uint8_t flags;
    int r;

    if (size < 6)
        return 0;
    cap = 1 + next(&in) % MAX_CAP;
    base = (uint32_t)next(&in) | (uint32_t)next(&in) << 8 | (uint32_t)next(&in) << 16 |
           (uint32_t)next(&in) << 24;
    flags = next(&in);
    cap2 = 1 + (flags >> 2);

    /* Two streams share a budget that may or may not fit both. */
    rs_reasm_budget_init(&budget, cap + (flags & 2 ? cap2 : cap2 - 1));
    CHECK(rs_reasm_init(&s, &budget, cap) == 0);
    r = rs_reasm_init(&other, &budget, cap2);
    CHECK(flags & 2 ? r == 0 && budget.used == cap + cap2 : r == -ENOMEM && budget.refused == 1);

    memset(&m, 0, sizeof(m));
    m.cap = (int64_t)cap;
    if (flags & 1) {
        CHECK(rs_reasm_set_base(&s, base) == 0);
        CHECK(rs_reasm_set_base(&s, base + 1) == -EALREADY);
    }

    while (in.n) {
        uint8_t op = next(&in);

        switch (op & 3) {
        case 0:
        case 1:
            op_add(&s, &m, &in, op, base);
            break;
        case 2:
            op_release(&s, &m, &in, op);
            break;
        case 3:
            op_read(&s, &m, &in);
            break;
        }
        check_state(&s, &m);
        CHECK(!rs_reasm_has_base(&s) || rs_reasm_base_seq(&s) == base);
    }

    rs_reasm_free(&other);
    rs_reasm_free(&s);
    CHECK(budget.used == 0);
    return 0;
}
