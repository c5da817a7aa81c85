/* Stream reassembly into a bounded log ring: one direction of one TCP
 * connection, fed every mirrored segment in whatever order it arrives, keeps
 * the logged bytes readable until the caller releases them.  Pure logic: no
 * I/O, no globals; memory comes from a budget the caller shares between
 * streams, so a flood of connections cannot grow it. */
#ifndef RS_REASM_H
#define RS_REASM_H

#include <stddef.h>
#include <stdint.h>

#include "seq.h"

/* ---- Types ------------------------------------------------------------ */

/* Largest ring one stream may have.  TCP's window cannot exceed 2^30 (RFC
 * 7323), and staying well below 2^31 keeps every in-window seq unambiguous. */
#define RS_REASM_CAP_MAX (1u << 30)

/* Largest segment rs_reasm_add takes (GSO super-packets are ~64 KB; anything
 * near 2^31 would make its end seq ambiguous). */
#define RS_REASM_SEG_MAX (1u << 30)

/* Out-of-order byte ranges held beyond the contiguous prefix.  Each is one
 * hole's worth of bookkeeping; a segment that would need one more is refused
 * rather than letting a hostile or broken sender grow the state. */
#define RS_REASM_MAX_RANGES 32

/* Memory shared by many streams.  'limit' and 'used' are ring bytes;
 * 'refused' counts stream inits turned away because they would exceed it. */
struct rs_reasm_budget {
    size_t limit;
    size_t used;
    uint64_t refused;
};

/* Counters; "bytes" are payload bytes of segments passed to rs_reasm_add. */
struct rs_reasm_stats {
    uint64_t segs;              /* segments with payload */
    uint64_t segs_ooo;          /* stored new bytes beyond a hole (out of order) */
    uint64_t segs_dup;          /* nothing new, nothing refused (retransmission) */
    uint64_t segs_conflict;     /* had at least one conflicting byte */
    uint64_t segs_refused;      /* had at least one refused byte */
    uint64_t segs_refused_ranges; /* of those, refused for lack of a range slot */
    uint64_t segs_invalid;      /* rejected with -EINVAL (too long, NULL data) */
    uint64_t bytes_accepted;    /* newly stored (prefix or out of order) */
    uint64_t bytes_dup;         /* already stored, identical */
    uint64_t bytes_conflict;    /* already stored, different: first copy kept */
    uint64_t bytes_stale;       /* at or after the base but already released */
    uint64_t bytes_before_base; /* before the stream's first byte */
    uint64_t bytes_refused;     /* new, but no room (window or range slots) */
};

/* A byte range [start, end) of stream offsets, stored in the ring. */
struct rs_reasm_range {
    int64_t start, end;
};

/* One stream.  Positions are 64-bit stream offsets (bytes since the base),
 * so a stream longer than 4 GB is fine; seq numbers are mapped to offsets
 * relative to the contiguous end, where they are unambiguous.  The byte at
 * offset o lives at ring[o % cap].  Invariants:
 *   0 <= released <= contig <= released + cap
 *   ranges sorted, disjoint, not adjacent, contig < start, end <= released+cap
 * Treat the fields as read-only; use the functions below. */
struct rs_reasm {
    uint8_t *ring;
    size_t cap;
    struct rs_reasm_budget *budget;
    int has_base;
    uint32_t base_seq;          /* seq of stream offset 0 */
    int64_t released;           /* oldest byte still readable */
    int64_t contig;             /* end of the contiguous logged prefix */
    unsigned nranges;
    struct rs_reasm_range ranges[RS_REASM_MAX_RANGES];
    struct rs_reasm_stats stats;
};

/* ---- Budget ----------------------------------------------------------- */

static inline void rs_reasm_budget_init(struct rs_reasm_budget *b, size_t limit)
{
    b->limit = limit;
    b->used = 0;
    b->refused = 0;
}

/* ---- Life cycle ------------------------------------------------------- */

/* Sets up 's' with a ring of 'cap' bytes reserved from 'budget' (which must
 * outlive 's').  The base is left unset: call rs_reasm_set_base with SYN+1
 * when the handshake was seen; otherwise the first segment with payload
 * defines it (mid-stream pickup; anything earlier is then "before base").
 * Returns 0, -EINVAL when 'cap' is 0 or above RS_REASM_CAP_MAX or 'budget'
 * is NULL, or -ENOMEM when the budget (or malloc) cannot supply 'cap' bytes;
 * a budget refusal is counted in budget->refused.  On error 's' is left in a
 * state rs_reasm_free accepts. */
int rs_reasm_init(struct rs_reasm *s, struct rs_reasm_budget *budget, size_t cap);

/* Releases the ring and gives its bytes back to the budget.  Safe on a
 * stream whose init failed and on one already freed. */
void rs_reasm_free(struct rs_reasm *s);

/* Grows the ring of 's' to 'cap' bytes (from the same budget), keeping
 * every logged byte readable at its seq: a stream starts small and grows
 * only when its unreleased bytes need it.  Returns 0 (also when 'cap' is
 * not larger than now), -EINVAL when 'cap' is above RS_REASM_CAP_MAX or 's'
 * has no ring, or -ENOMEM when the budget (or malloc) refuses; 's' is then
 * unchanged. */
int rs_reasm_grow(struct rs_reasm *s, size_t cap);
/* Declares 'seq' the stream's first byte (the SYN's seq + 1).
 * Returns 0, -EALREADY when the base is already set (explicitly or by a
 * first segment), or -EINVAL when 's' has no ring. */
int rs_reasm_set_base(struct rs_reasm *s, uint32_t seq);

/* ---- Feeding and releasing -------------------------------------------- */

/* Logs the 'len' bytes at 'data' that a segment carried at 'seq'.  Bytes
 * before the base or already released are counted and ignored; bytes
 * already stored are compared (the first copy wins, differing bytes are
 * counted as conflicts); new bytes are stored in place, beyond a hole if
 * need be.  New bytes never overwrite unreleased ones: those past
 * released + cap are refused, and so is a segment that would open one more
 * out-of-order range than RS_REASM_MAX_RANGES.  Whatever fits is stored.
 * Returns the number of new bytes stored (0 for a pure duplicate or for
 * 'len' 0), or:
 *   -ENOBUFS  some bytes lay beyond the window (ring full of unreleased data)
 *   -ENOSPC   the new bytes needed another out-of-order range
 *   -EINVAL   'len' above RS_REASM_SEG_MAX, NULL 'data', or no ring
 * On -ENOBUFS / -ENOSPC the stats say how many bytes were refused. */
int rs_reasm_add(struct rs_reasm *s, uint32_t seq, const void *data, size_t len);

/* Marks the bytes before 'upto' as no longer needed: their ring space may
 * be reused and reading them fails from now on.  Nothing is ever released
 * automatically.  Returns the number of bytes newly released (0 when 'upto'
 * is at or before the current release point), -ERANGE when 'upto' lies
 * beyond the contiguous end, or -EINVAL when no base is set. */
int rs_reasm_release(struct rs_reasm *s, uint32_t upto);

/* ---- Reading ---------------------------------------------------------- */

/* Copies the 'len' logged bytes starting at 'seq' into 'out'.  Only the
 * contiguous prefix is readable (out-of-order bytes become readable when
 * the hole before them fills).  Returns 0, -ESTALE when part of the range
 * was released (or is before the base), -ENODATA when part of it is not yet
 * contiguously logged (or no base is set). */
int rs_reasm_read(const struct rs_reasm *s, uint32_t seq, size_t len, void *out);

/* Zero-copy variant: points '*p' at the longest run of logged bytes that
 * starts at 'seq' and is contiguous in memory, and sets '*len' to its size
 * (0 when 'seq' is the contiguous end).  Loop to walk the ring's wrap.  The
 * bytes stay valid until the caller releases them.  Returns 0, -ESTALE or
 * -ENODATA as rs_reasm_read. */
int rs_reasm_peek(const struct rs_reasm *s, uint32_t seq, const uint8_t **p, size_t *len);

/* ---- Accessors -------------------------------------------------------- */

static inline int rs_reasm_has_base(const struct rs_reasm *s) { return s->has_base; }
static inline uint32_t rs_reasm_base_seq(const struct rs_reasm *s) { return s->base_seq; }

/* Seq of the next byte the contiguous prefix is waiting for. */
static inline uint32_t rs_reasm_contig_seq(const struct rs_reasm *s)
{
    return s->base_seq + (uint32_t)s->contig;
}

/* Seq of the oldest byte still readable. */
static inline uint32_t rs_reasm_released_seq(const struct rs_reasm *s)
{
    return s->base_seq + (uint32_t)s->released;
}

/* The same two points as stream offsets (bytes since the base). */
static inline uint64_t rs_reasm_contig_off(const struct rs_reasm *s) { return (uint64_t)s->contig; }
static inline uint64_t rs_reasm_released_off(const struct rs_reasm *s) { return (uint64_t)s->released; }

/* Stream offset of 'seq', read within 2^31 of the contiguous end (the
 * interpretation rs_reasm_add, _read and _release use).  Negative means
 * before the base.  Meaningless until a base is set. */
static inline int64_t rs_reasm_off(const struct rs_reasm *s, uint32_t seq)
{
    return s->contig + rs_seq_diff(seq, rs_reasm_contig_seq(s));
}

static inline const struct rs_reasm_stats *rs_reasm_stats(const struct rs_reasm *s)
{
    return &s->stats;
}

/* Number of out-of-order ranges held, and the bytes in them. */
static inline unsigned rs_reasm_nranges(const struct rs_reasm *s) { return s->nranges; }
uint64_t rs_reasm_ooo_bytes(const struct rs_reasm *s);

/* Verifies the invariants listed at struct rs_reasm, and that the bytes
 * accepted so far equal the prefix plus the held ranges (so the counters
 * must not be reset).  Returns 0, or -EUCLEAN when one is broken (a bug
 * here, or a caller writing the fields). */
int rs_reasm_check(const struct rs_reasm *s);

#endif /* RS_REASM_H */
