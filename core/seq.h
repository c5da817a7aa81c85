/* TCP sequence-number arithmetic, mod 2^32 (RFC 793 / RFC 1982 style).
 * Header-only with no libc so the same code serves user space, BPF C and
 * kernel modules.  "a before b" means b is reachable from a by moving
 * forward less than 2^31 bytes. */
#ifndef RS_SEQ_H
#define RS_SEQ_H

#ifdef __KERNEL__
#include <linux/types.h>
typedef __u32 rs_u32;
typedef __s32 rs_s32;
typedef __u64 rs_u64;
#elif defined(__bpf__)
typedef unsigned int rs_u32;
typedef int rs_s32;
typedef unsigned long long rs_u64;
#else
#include <stdint.h>
typedef uint32_t rs_u32;
typedef int32_t rs_s32;
typedef uint64_t rs_u64;
#endif

/* Signed distance from 'a' to 'b': positive when 'b' is after 'a'. */
static inline rs_s32 rs_seq_diff(rs_u32 b, rs_u32 a)
{
    return (rs_s32)(b - a);
}

static inline int rs_seq_lt(rs_u32 a, rs_u32 b) { return rs_seq_diff(b, a) > 0; }
static inline int rs_seq_le(rs_u32 a, rs_u32 b) { return rs_seq_diff(b, a) >= 0; }
static inline int rs_seq_gt(rs_u32 a, rs_u32 b) { return rs_seq_lt(b, a); }
static inline int rs_seq_ge(rs_u32 a, rs_u32 b) { return rs_seq_le(b, a); }

/* Forward distance from 'from' to 'to' (bytes 'to' is ahead), mod 2^32. */
static inline rs_u32 rs_seq_dist(rs_u32 from, rs_u32 to)
{
    return to - from;
}

static inline rs_u32 rs_seq_max(rs_u32 a, rs_u32 b) { return rs_seq_ge(a, b) ? a : b; }
static inline rs_u32 rs_seq_min(rs_u32 a, rs_u32 b) { return rs_seq_le(a, b) ? a : b; }

/* True when 'x' lies in the half-open range ['lo', 'hi'). */
static inline int rs_seq_in(rs_u32 x, rs_u32 lo, rs_u32 hi)
{
    return rs_seq_le(lo, x) && rs_seq_lt(x, hi);
}

#endif /* RS_SEQ_H */
