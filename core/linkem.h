/* Link-emulation schedule: when a packet that arrived at time 'now' may
 * leave, given a base delay, a jitter and a loss probability.  Pure logic
 * behind emul/rs-emul; the caller supplies the clock and the random draws,
 * so the schedule is reproducible from a seed and testable. */
#ifndef RS_LINKEM_H
#define RS_LINKEM_H

#include <stdint.h>

struct rs_linkem {
    uint64_t delay_ns;      /* base one-way delay */
    uint64_t jitter_ns;     /* delay varies uniformly in [delay - jitter, delay + jitter] */
    double loss;            /* drop probability per packet, [0, 1] */
    uint64_t last_release;  /* release time of the previous packet: keeps FIFO order */
};

/* Small fast PRNG (xorshift64*): reproducible from 'seed', never zero state. */
struct rs_rng { uint64_t s; };

static inline void rs_rng_seed(struct rs_rng *r, uint64_t seed)
{
    r->s = seed ? seed : 0x9e3779b97f4a7c15ull;
}

static inline uint64_t rs_rng_next(struct rs_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

/* Uniform double in [0, 1). */
static inline double rs_rng_unit(struct rs_rng *r)
{
    return (double)(rs_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Decides the fate of a packet arriving at 'now_ns'.  Returns 0 and sets
 * '*release_ns' (never earlier than the previous packet's release, so
 * jitter does not reorder), or 1 when the packet is to be dropped. */
int rs_linkem_schedule(struct rs_linkem *l, struct rs_rng *rng, uint64_t now_ns,
                       uint64_t *release_ns);

#endif /* RS_LINKEM_H */
