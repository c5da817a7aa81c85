/* Parsing of the quantities every daemon takes on its command line:
 * durations ("250us", "10ms", "2s"), percentages ("1%", "0.5%"), sizes
 * ("64k", "16M") and crash points ("12+4096").  Pure functions, no I/O. */
#ifndef RS_PARSE_H
#define RS_PARSE_H

#include <stdint.h>

/* Parses a duration with unit ns, us, ms or s (a bare number is ms) into
 * '*ns'.  Returns 0, or -EINVAL for text that is not a non-negative
 * duration below ~292 years. */
int rs_parse_duration(const char *text, uint64_t *ns);

/* Parses "P%" or a bare fraction "0.01" into a probability in [0, 1].
 * Returns 0, or -EINVAL. */
int rs_parse_prob(const char *text, double *prob);

/* Parses a byte count with optional suffix k, M or G (powers of 1024).
 * Returns 0, or -EINVAL (also on overflow). */
int rs_parse_size(const char *text, uint64_t *bytes);

/* Parses a crash point "N" or "N+B" (--crash-at of rs-app and rs-front:
 * before byte B of the response to request number N) into '*num' (0..65535)
 * and '*off' (0 when absent).  Returns 0, or -EINVAL. */
int rs_parse_crash_at(const char *text, int *num, uint64_t *off);

#endif /* RS_PARSE_H */
