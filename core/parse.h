/* Parsing of the quantities every daemon takes on its command line:
 * durations ("250us", "10ms", "2s"), percentages ("1%", "0.5%") and
 * sizes ("64k", "16M").  Pure functions, no I/O. */
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

#endif /* RS_PARSE_H */
