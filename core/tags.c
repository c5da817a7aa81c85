/* Transaction tagging rules: a line-oriented parser for the rule text and
 * first-match classification with fnmatch(3). */
#include <errno.h>
#include <fnmatch.h>
#include <string.h>

#include "tags.h"

/* One whitespace-separated field of a line. */
struct field {
    const char *at;
    size_t len;
};

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Splits 'line' into at most 'max' fields, stopping at a field that starts
 * with '#'.  Returns the number of fields, or max + 1 if there are more. */
static unsigned split(const char *line, size_t len, struct field *f, unsigned max)
{
    unsigned n = 0;
    size_t i = 0;

    for (;;) {
        while (i < len && is_space(line[i]))
            i++;
        if (i == len || line[i] == '#')
            return n;
        if (n == max)
            return max + 1;
        f[n].at = line + i;
        while (i < len && !is_space(line[i]))
            i++;
        f[n].len = (size_t)(line + i - f[n].at);
        n++;
    }
}

static int field_is(const struct field *f, const char *word)
{
    return f->len == strlen(word) && !memcmp(f->at, word, f->len);
}

static int parse_method(const struct field *f, char *out)
{
    if (field_is(f, "*")) {
        strcpy(out, "*");
        return 0;
    }
    if (f->len >= RS_TAGS_METHOD_MAX)
        return -EINVAL;
    for (size_t i = 0; i < f->len; i++)
        if (!((f->at[i] >= 'A' && f->at[i] <= 'Z') || f->at[i] == '-'))
            return -EINVAL;
    memcpy(out, f->at, f->len);
    out[f->len] = '\0';
    return 0;
}

/* Reads the two tag words into '*flags'. */
static int parse_tags(const struct field *w, unsigned *flags)
{
    int kind = 0, det = 0;

    *flags = 0;
    for (int i = 0; i < 2; i++) {
        if (field_is(&w[i], "read-only") || field_is(&w[i], "update")) {
            if (kind++)
                return -EINVAL;
            if (field_is(&w[i], "update"))
                *flags |= RS_TAG_UPDATE;
        } else if (field_is(&w[i], "deterministic") || field_is(&w[i], "nondeterministic")) {
            if (det++)
                return -EINVAL;
            if (field_is(&w[i], "nondeterministic"))
                *flags |= RS_TAG_NONDET;
        } else {
            return -EINVAL;
        }
    }
    return 0;
}

/* Parses one line; blank and comment lines add nothing.  Returns 0 or a
 * negative errno. */
static int parse_line(struct rs_tags *tags, const char *line, size_t len)
{
    struct field f[4];
    struct rs_tags_rule *r;
    unsigned n = split(line, len, f, 4);
    int rc;

    if (n == 0)
        return 0;
    if (n != 4)
        return -EINVAL;
    if (tags->n == RS_TAGS_MAX_RULES)
        return -ENOSPC;
    r = &tags->rules[tags->n];
    if (f[1].len >= RS_TAGS_PATTERN_MAX)
        return -EINVAL;
    rc = parse_method(&f[0], r->method);
    if (rc == 0)
        rc = parse_tags(&f[2], &r->flags);
    if (rc < 0)
        return rc;
    memcpy(r->pattern, f[1].at, f[1].len);
    r->pattern[f[1].len] = '\0';
    tags->n++;
    return 0;
}

void rs_tags_init(struct rs_tags *tags)
{
    tags->n = 0;
}

int rs_tags_parse(struct rs_tags *tags, const char *text, size_t len, int *err_line)
{
    size_t pos = 0;
    int line = 0, rc = 0;

    rs_tags_init(tags);
    if (err_line)
        *err_line = 0;
    if (!text && len)
        return -EINVAL;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;

        line++;
        /* A NUL would silently cut a pattern short in fnmatch. */
        if (memchr(text + pos, '\0', end - pos))
            rc = -EINVAL;
        else
            rc = parse_line(tags, text + pos, end - pos);
        if (rc < 0) {
            if (err_line)
                *err_line = line;
            rs_tags_init(tags);
            return rc;
        }
        pos = end + 1;
    }
    return (int)tags->n;
}

unsigned rs_tags_classify(const struct rs_tags *tags, const char *method, const char *target)
{
    if (!method)
        method = "";
    if (!target)
        target = "";
    for (unsigned i = 0; tags && i < tags->n; i++) {
        const struct rs_tags_rule *r = &tags->rules[i];

        if (strcmp(r->method, "*") && strcmp(r->method, method))
            continue;
        if (fnmatch(r->pattern, target, 0) == 0)
            return r->flags;
    }
    if (!strcmp(method, "GET") || !strcmp(method, "HEAD"))
        return 0;
    return RS_TAG_UPDATE;
}
