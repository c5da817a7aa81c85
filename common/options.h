/* Command-line options of a daemon, declared as a table: each --name takes
 * a value of one kind and says where it goes.  One parser for every
 * daemon, so they all accept "--name value" and "--name=value", answer
 * -h/--help, and explain a bad value the same way:
 *     rs-stated: bad --heartbeat 'x' (want a duration, e.g. 10ms) */
#ifndef RS_OPTIONS_H
#define RS_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum rs_opt_kind {
    RS_OPT_FLAG,        /* no value: *(bool *)dst = true */
    RS_OPT_STR,         /* const char **dst: the text itself */
    RS_OPT_ADDR,        /* struct rs_addr *dst: IPv4ADDR:PORT */
    RS_OPT_DURATION,    /* uint64_t *dst, nanoseconds: "250us", "10ms", "2s" */
    RS_OPT_SIZE,        /* uint64_t *dst: "4096", "64k", "16M" */
    RS_OPT_U32,         /* uint32_t *dst: a decimal number */
    RS_OPT_FN,          /* fn(value, dst): 0, or -EINVAL for a bad value.  With the
                           name "" it takes the words that are not options (a
                           command: rs-ctl status); -EINVAL refuses the word */
};

struct rs_opt {
    const char *name;           /* without the leading "--" */
    enum rs_opt_kind kind;
    void *dst;
    const char *want;           /* for errors: what a good value looks like (NULL: the kind's) */
    int (*fn)(const char *value, void *dst);
    bool *given;                /* set when the option appears (may be NULL) */
    bool nonzero;               /* DURATION, SIZE, U32: 0 is a bad value */
    char short_name;            /* also "-c value" (0: none) */
};

/* One table entry: RS_OPTION("heartbeat", RS_OPT_DURATION, &s.heartbeat_ns,
 * .nonzero = true); the table ends with RS_OPTIONS_END. */
#define RS_OPTION(n, k, d, ...) { .name = (n), .kind = (k), .dst = (d), __VA_ARGS__ }
#define RS_OPTIONS_END { .name = NULL }

/* Parses argv[1..argc) with 'opts' (ended by an entry with name NULL).
 * Returns 0; 1 after printing usage on stdout for -h/--help; 2 after
 * printing, as "PROG: ...", why on stderr (an unknown option with the
 * usage, a missing value, a bad value, a stray argument). */
int rs_opts_parse(const char *prog, int argc, char **argv, const struct rs_opt *opts, void (*usage)(FILE *));

/* What main returns for a result of rs_opts_parse that is not 0. */
static inline int rs_opts_exit(int r) { return r == 1 ? 0 : r; }

#endif /* RS_OPTIONS_H */
