/* Transaction tagging: read-only vs update and deterministic vs not, from
 * per-application rules (method + request-target glob).  The rules come as
 * text; reading the file is the daemon's job.  Format, one rule a line:
 *
 *   # comment (also after the fields)
 *   GET  /static/?*.css   read-only deterministic
 *   *    /api/token*      update    nondeterministic
 *
 * Method is an upper-case token or "*"; the pattern is an fnmatch(3) glob
 * (no FNM_PATHNAME, so '*' also matches '/'; '\' escapes) matched against
 * the whole target, query included; the two tag words come in either order.
 * The first matching rule wins; with none, GET and HEAD are read-only
 * deterministic and everything else update deterministic. */
#ifndef RS_TAGS_H
#define RS_TAGS_H

#include <stddef.h>

/* ---- Types ------------------------------------------------------------ */

#define RS_TAG_UPDATE (1u << 0)     /* changes application state: replay it */
#define RS_TAG_NONDET (1u << 1)     /* state goes to the alternate synchronously */

#define RS_TAGS_MAX_RULES 256       /* a web application has a few dozen */
#define RS_TAGS_PATTERN_MAX 256     /* bytes with the NUL, like a logged target */
#define RS_TAGS_METHOD_MAX 16       /* with the NUL; longest HTTP method is 11 */

struct rs_tags_rule {
    char method[RS_TAGS_METHOD_MAX];    /* "*" matches any method */
    char pattern[RS_TAGS_PATTERN_MAX];
    unsigned flags;                     /* RS_TAG_* */
};

/* A rule set, about 70 KB: allocate it, do not put it on a small stack. */
struct rs_tags {
    unsigned n;
    struct rs_tags_rule rules[RS_TAGS_MAX_RULES];
};

/* ---- Functions -------------------------------------------------------- */

/* Empties 'tags': classification then uses the defaults only. */
void rs_tags_init(struct rs_tags *tags);

/* Parses 'len' bytes of rule text into 'tags', replacing what it held.
 * Returns the number of rules (0 for empty or comment-only text), or
 * -EINVAL on a malformed line (bad method, over-long pattern, missing,
 * unknown, repeated or extra tag words, NUL byte) or -ENOSPC past
 * RS_TAGS_MAX_RULES rules; then '*err_line' (if not NULL) is the 1-based
 * line number and 'tags' holds no rules.  '*err_line' is 0 on success. */
int rs_tags_parse(struct rs_tags *tags, const char *text, size_t len, int *err_line);

/* Returns the RS_TAG_* flags for a request with 'method' and 'target'
 * (NULL counts as ""). */
unsigned rs_tags_classify(const struct rs_tags *tags, const char *method, const char *target);

#endif /* RS_TAGS_H */
