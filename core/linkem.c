/* Link-emulation schedule (see linkem.h). */
#include "linkem.h"

int rs_linkem_schedule(struct rs_linkem *l, struct rs_rng *rng, uint64_t now_ns,
                       uint64_t *release_ns)
{
    uint64_t t = now_ns + l->delay_ns;

    if (l->loss > 0 && rs_rng_unit(rng) < l->loss)
        return 1;
    if (l->jitter_ns) {
        /* Uniform in [-jitter, +jitter], as netem without a distribution table. */
        uint64_t span = 2 * l->jitter_ns + 1;
        uint64_t j = rs_rng_next(rng) % span;
        t = t + j >= l->jitter_ns ? t + j - l->jitter_ns : 0;
        if (t < now_ns)
            t = now_ns;
    }
    if (t < l->last_release)
        t = l->last_release;
    l->last_release = t;
    *release_ns = t;
    return 0;
}
