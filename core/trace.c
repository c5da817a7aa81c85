/* Request-trace parser and ${name} substitution for rs-client (see trace.h).
 * One pass over the lines, strings interned into the trace's own arena. */
#include "trace.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "parse.h"

/* ---- Placeholders ------------------------------------------------------ */

static bool name_char__(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

static bool name_ok__(const char *s, size_t len)
{
    if (len == 0 || len >= RS_TRACE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!name_char__(s[i]))
            return false;
    return true;
}

bool rs_trace_name_ok(const char *s)
{
    return s && name_ok__(s, strnlen(s, RS_TRACE_NAME_MAX));
}

/* Looks a name up; returns its value or NULL when unset. */
typedef const char *(*lookup_fn__)(const void *arg, const char *name, size_t len);

/* Expands 'in' into 'out' (snprintf-style, see rs_trace_subst) using 'lk'.
 * Returns the full length, -EINVAL for a malformed placeholder, or -ENOENT
 * with '*bad'/'*bad_len' set to the unset name. */
static long expand__(const char *in, size_t in_len, lookup_fn__ lk, const void *arg,
                     char *out, size_t out_size, const char **bad, size_t *bad_len)
{
    size_t n = 0, i = 0;

#define EMIT__(ptr, cnt) do {                                               \
        size_t c__ = (cnt);                                                 \
        if (n < out_size) {                                                 \
            size_t room__ = out_size - 1 - n;                               \
            memcpy(out + n, (ptr), c__ < room__ ? c__ : room__);            \
        }                                                                   \
        n += c__;                                                           \
    } while (0)

    while (i < in_len) {
        const char *d = memchr(in + i, '$', in_len - i);
        size_t lit = d ? (size_t)(d - (in + i)) : in_len - i;

        EMIT__(in + i, lit);
        i += lit;
        if (i >= in_len)
            break;
        /* in[i] == '$' */
        if (i + 2 < in_len && in[i + 1] == '$' && in[i + 2] == '{') {
            EMIT__("${", 2);
            i += 3;
        } else if (i + 1 < in_len && in[i + 1] == '{') {
            const char *name = in + i + 2;
            const char *close = memchr(name, '}', in_len - (i + 2));
            const char *val;

            if (!close || !name_ok__(name, (size_t)(close - name)))
                return -EINVAL;
            val = lk(arg, name, (size_t)(close - name));
            if (!val) {
                *bad = name;
                *bad_len = (size_t)(close - name);
                return -ENOENT;
            }
            EMIT__(val, strlen(val));
            i = (size_t)(close - in) + 1;
        } else {
            EMIT__("$", 1);
            i++;
        }
    }
#undef EMIT__
    if (out_size)
        out[n < out_size ? n : out_size - 1] = '\0';
    return (long)n;
}

/* ---- Dictionary -------------------------------------------------------- */

void rs_trace_vars_init(struct rs_trace_vars *v)
{
    v->n = 0;
    v->text_used = 0;
}

static int vars_find__(const struct rs_trace_vars *v, const char *name, size_t len)
{
    for (unsigned i = 0; i < v->n; i++)
        if (strncmp(v->vars[i].name, name, len) == 0 && v->vars[i].name[len] == '\0')
            return (int)i;
    return -1;
}

const char *rs_trace_vars_get(const struct rs_trace_vars *v, const char *name, size_t len)
{
    int i;

    if (!v || !name_ok__(name, len))
        return NULL;
    i = vars_find__(v, name, len);
    return i < 0 ? NULL : v->text + v->vars[i].off;
}

/* Removes entry 'i', compacting the text so space never leaks. */
static void vars_del__(struct rs_trace_vars *v, unsigned i)
{
    uint16_t off = v->vars[i].off, sz = (uint16_t)(v->vars[i].len + 1);

    memmove(v->text + off, v->text + off + sz, v->text_used - off - sz);
    v->text_used -= sz;
    for (unsigned j = 0; j < v->n; j++)
        if (v->vars[j].off > off)
            v->vars[j].off = (uint16_t)(v->vars[j].off - sz);
    v->vars[i] = v->vars[--v->n];
}

int rs_trace_vars_set(struct rs_trace_vars *v, const char *name, const char *value, size_t len)
{
    size_t nlen = name ? strnlen(name, RS_TRACE_NAME_MAX) : 0;
    char copy[RS_TRACE_VALUE_MAX + 1];
    int old;
    size_t old_sz;

    if (!name_ok__(name, nlen) || (len && !value) || (len && memchr(value, '\0', len)))
        return -EINVAL;
    if (len > RS_TRACE_VALUE_MAX)
        return -E2BIG;
    old = vars_find__(v, name, nlen);
    old_sz = old >= 0 ? v->vars[old].len + 1u : 0;
    if (v->text_used - old_sz + len + 1 > RS_TRACE_VARS_TEXT ||
        (old < 0 && v->n >= RS_TRACE_MAX_VARS))
        return -ENOSPC;
    if (len && value >= v->text && value < v->text + sizeof(v->text)) {
        memcpy(copy, value, len);       /* compaction below may move it */
        value = copy;
    }
    if (old >= 0)
        vars_del__(v, (unsigned)old);
    struct rs_trace_var *e = &v->vars[v->n++];
    memcpy(e->name, name, nlen);
    e->name[nlen] = '\0';
    e->off = (uint16_t)v->text_used;
    e->len = (uint16_t)len;
    if (len)
        memcpy(v->text + e->off, value, len);
    v->text[e->off + len] = '\0';
    v->text_used += (uint32_t)len + 1;
    return 0;
}

int rs_trace_vars_define(struct rs_trace_vars *v, const char *def)
{
    const char *eq = def ? strchr(def, '=') : NULL;
    char name[RS_TRACE_NAME_MAX];

    if (!eq || !name_ok__(def, (size_t)(eq - def)))
        return -EINVAL;
    memcpy(name, def, (size_t)(eq - def));
    name[eq - def] = '\0';
    return rs_trace_vars_set(v, name, eq + 1, strlen(eq + 1));
}

static const char *vars_lookup__(const void *arg, const char *name, size_t len)
{
    return rs_trace_vars_get(arg, name, len);
}

int rs_trace_subst(const struct rs_trace_vars *v, const char *in, size_t in_len,
                   char *out, size_t out_size, char *missing)
{
    const char *bad = NULL;
    size_t bad_len = 0;
    long r;

    if (in_len > RS_TRACE_TEXT_MAX)
        return -E2BIG;
    if ((!in && in_len) || (!out && out_size))
        return -EINVAL;
    r = expand__(in, in_len, vars_lookup__, v, out, out_size, &bad, &bad_len);
    if (r == -ENOENT && missing) {
        memcpy(missing, bad, bad_len);
        missing[bad_len] = '\0';
    }
    return (int)r;
}

/* ---- Parser state ------------------------------------------------------ */

struct parser__ {
    struct rs_trace *t;
    struct rs_trace_err *err;
    unsigned line;
    const char *p, *end;         /* cursor in the current line */
    char buf[RS_TRACE_LINE_MAX + 1];     /* unescaped argument */
    size_t buf_len;
};

static int fail__(struct parser__ *ps, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail__(struct parser__ *ps, int code, const char *fmt, ...)
{
    va_list ap;

    if (ps->err) {
        ps->err->line = ps->line;
        va_start(ap, fmt);
        vsnprintf(ps->err->msg, sizeof(ps->err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

static bool space__(char c)
{
    return c == ' ' || c == '\t';
}

static void skip_ws__(struct parser__ *ps)
{
    while (ps->p < ps->end && space__(*ps->p))
        ps->p++;
}

/* True when only blanks or a comment are left. */
static bool at_end__(struct parser__ *ps)
{
    skip_ws__(ps);
    return ps->p >= ps->end || *ps->p == '#';
}

/* Next blank-delimited word; false at the end of the line or a comment. */
static bool word__(struct parser__ *ps, const char **w, size_t *len)
{
    if (at_end__(ps))
        return false;
    *w = ps->p;
    while (ps->p < ps->end && !space__(*ps->p))
        ps->p++;
    *len = (size_t)(ps->p - *w);
    return true;
}

static bool word_is__(const char *w, size_t len, const char *s)
{
    return strlen(s) == len && memcmp(w, s, len) == 0;
}

static int hex_val__(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads a quoted string (cursor on the opening quote) into ps->buf. */
static int quoted__(struct parser__ *ps)
{
    size_t n = 0;

    ps->p++;
    while (ps->p < ps->end && *ps->p != '"') {
        char c = *ps->p++;
        if (c == '\\' && ps->p < ps->end) {
            char e = *ps->p++;
            switch (e) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'x': {
                int hi = ps->p < ps->end ? hex_val__(ps->p[0]) : -1;
                int lo = ps->p + 1 < ps->end ? hex_val__(ps->p[1]) : -1;
                if (hi < 0 || lo < 0)
                    return fail__(ps, -EINVAL, "bad \\x escape (want two hex digits)");
                c = (char)(hi * 16 + lo);
                ps->p += 2;
                break;
            }
            default:            /* kept for regular expressions: \. \? \( ... */
                ps->buf[n++] = '\\';
                c = e;
                break;
            }
        }
        ps->buf[n++] = c;
    }
    if (ps->p >= ps->end)
        return fail__(ps, -EINVAL, "unterminated quoted string");
    ps->p++;
    if (ps->p < ps->end && !space__(*ps->p))
        return fail__(ps, -EINVAL, "text right after a closing quote");
    ps->buf_len = n;
    return 0;
}

/* Reads one argument, quoted or a bare word, into ps->buf. */
static int arg__(struct parser__ *ps, const char *what)
{
    const char *w;
    size_t len;

    if (at_end__(ps))
        return fail__(ps, -EINVAL, "missing %s", what);
    if (*ps->p == '"')
        return quoted__(ps);
    word__(ps, &w, &len);
    memcpy(ps->buf, w, len);
    ps->buf_len = len;
    return 0;
}

/* Reads the rest of the line (up to a comment, trimmed) into ps->buf. */
static void rest__(struct parser__ *ps)
{
    const char *s, *e;

    skip_ws__(ps);
    s = e = ps->p;
    while (ps->p < ps->end) {
        if (*ps->p == '#' && space__(ps->p[-1]))
            break;
        ps->p++;
        e = ps->p;
    }
    while (e > s && space__(e[-1]))
        e--;
    memcpy(ps->buf, s, (size_t)(e - s));
    ps->buf_len = (size_t)(e - s);
    ps->p = ps->end;
}

static int no_more__(struct parser__ *ps, const char *directive)
{
    if (!at_end__(ps))
        return fail__(ps, -EINVAL, "unexpected text after %s", directive);
    return 0;
}

/* Copies 'len' bytes into the arena with a NUL; '*s' gets the offset. */
static int intern__(struct parser__ *ps, const char *data, size_t len, rs_trace_str *s)
{
    struct rs_trace *t = ps->t;

    if (len + 1 > RS_TRACE_TEXT_MAX - t->text_used)
        return fail__(ps, -E2BIG, "trace text exceeds %u bytes", RS_TRACE_TEXT_MAX);
    *s = t->text_used;
    memcpy(t->text + t->text_used, data, len);
    t->text[t->text_used + len] = '\0';
    t->text_used += (uint32_t)len + 1;
    return 0;
}

/* ps->buf as an arena string; rejects NUL bytes (only bodies may hold them). */
static int intern_buf__(struct parser__ *ps, const char *what, rs_trace_str *s)
{
    if (memchr(ps->buf, '\0', ps->buf_len))
        return fail__(ps, -EINVAL, "NUL byte in %s", what);
    return intern__(ps, ps->buf, ps->buf_len, s);
}

static const char *empty_lookup__(const void *arg, const char *name, size_t len)
{
    (void)arg, (void)name, (void)len;
    return "";
}

/* Checks the placeholder syntax of 'len' bytes at 'data'. */
static int placeholders_ok__(struct parser__ *ps, const char *data, size_t len, const char *what)
{
    const char *bad;
    size_t bad_len;

    if (expand__(data, len, empty_lookup__, NULL, NULL, 0, &bad, &bad_len) < 0)
        return fail__(ps, -EINVAL, "malformed placeholder in %s (want ${name}, name [A-Za-z0-9_]{1,%u})",
                      what, RS_TRACE_NAME_MAX - 1);
    return 0;
}

/* Parses a decimal number below or at 'max'. */
static bool number__(const char *w, size_t len, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;

    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (w[i] < '0' || w[i] > '9')
            return false;
        uint64_t d = (uint64_t)(w[i] - '0');
        if (x > (max - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *v = x;
    return true;
}

/* ---- Directives -------------------------------------------------------- */

static bool method_ok__(const char *w, size_t len)
{
    if (len == 0 || len > 16)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((w[i] >= 'A' && w[i] <= 'Z') || w[i] == '-'))
            return false;
    return true;
}

static bool target_ok__(const char *w, size_t len)
{
    return (len >= 1 && (w[0] == '/' || (len == 1 && w[0] == '*'))) ||
           (len >= 7 && memcmp(w, "http://", 7) == 0) ||
           (len >= 8 && memcmp(w, "https://", 8) == 0) ||
           (len >= 2 && w[0] == '$' && w[1] == '{');
}

static int d_request__(struct parser__ *ps, uint64_t *think)
{
    struct rs_trace *t = ps->t;
    struct rs_trace_step *st;
    const char *m, *tg;
    size_t mlen, tlen;
    int r;

    if (t->n_steps >= RS_TRACE_MAX_STEPS)
        return fail__(ps, -E2BIG, "more than %u requests", RS_TRACE_MAX_STEPS);
    if (!word__(ps, &m, &mlen) || !method_ok__(m, mlen))
        return fail__(ps, -EINVAL, "request wants a method (upper-case letters)");
    if (!word__(ps, &tg, &tlen) || !target_ok__(tg, tlen))
        return fail__(ps, -EINVAL, "request wants a target starting with '/', '*', http:// or ${");
    if ((r = no_more__(ps, "request target")) || (r = placeholders_ok__(ps, tg, tlen, "target")))
        return r;
    st = &t->steps[t->n_steps];
    memset(st, 0, sizeof(*st));
    st->line = ps->line;
    st->status_lo = 100;
    st->status_hi = 399;
    st->length = -1;
    st->think_ns = *think;
    *think = 0;
    if ((r = intern__(ps, m, mlen, &st->method)) || (r = intern__(ps, tg, tlen, &st->target)))
        return r;
    t->n_steps++;
    return 0;
}

static bool tchar__(char c)
{
    return name_char__(c) || (c && strchr("!#$%&'*+-.^`|~", c));
}

static int d_header__(struct parser__ *ps, struct rs_trace_step *st)
{
    struct rs_trace_header *h;
    const char *n;
    int r;

    if (st->n_headers >= RS_TRACE_MAX_HEADERS)
        return fail__(ps, -E2BIG, "more than %u headers in one request", RS_TRACE_MAX_HEADERS);
    skip_ws__(ps);
    n = ps->p;
    while (ps->p < ps->end && tchar__(*ps->p))
        ps->p++;
    if (ps->p == n || ps->p >= ps->end || *ps->p != ':')
        return fail__(ps, -EINVAL, "header wants 'Name: value'");
    h = &st->headers[st->n_headers];
    h->line = ps->line;
    if ((r = intern__(ps, n, (size_t)(ps->p - n), &h->name)))
        return r;
    ps->p++;
    rest__(ps);
    if ((r = placeholders_ok__(ps, ps->buf, ps->buf_len, "header value")) ||
        (r = intern_buf__(ps, "header value", &h->value)))
        return r;
    st->n_headers++;
    return 0;
}

static int d_body__(struct parser__ *ps, struct rs_trace_step *st)
{
    struct rs_trace *t = ps->t;
    size_t add;
    int r;

    if (st->has_fill)
        return fail__(ps, -EINVAL, "'body' and 'fill' in one request");
    skip_ws__(ps);
    if (ps->p < ps->end && *ps->p == '"') {
        if ((r = quoted__(ps)) || (r = no_more__(ps, "quoted body")))
            return r;
    } else {
        rest__(ps);
    }
    if ((r = placeholders_ok__(ps, ps->buf, ps->buf_len, "body")))
        return r;
    add = ps->buf_len;
    if (!st->has_body) {
        st->has_body = true;
        st->body_line = ps->line;
        st->body_len = (uint32_t)add;
        return intern__(ps, ps->buf, add, &st->body);
    }
    /* Appending: the body must end the arena, so move it there if a later
     * string was interned after it (the old copy is simply left behind). */
    if (st->body + st->body_len + 1 != t->text_used) {
        rs_trace_str moved;
        if (st->body_len + 1 > RS_TRACE_TEXT_MAX - t->text_used)
            return fail__(ps, -E2BIG, "trace text exceeds %u bytes", RS_TRACE_TEXT_MAX);
        moved = t->text_used;
        memmove(t->text + moved, t->text + st->body, st->body_len);
        t->text_used += st->body_len + 1;
        st->body = moved;
    }
    if (add > RS_TRACE_TEXT_MAX - t->text_used)
        return fail__(ps, -E2BIG, "trace text exceeds %u bytes", RS_TRACE_TEXT_MAX);
    memcpy(t->text + st->body + st->body_len, ps->buf, add);
    st->body_len += (uint32_t)add;
    t->text[st->body + st->body_len] = '\0';
    t->text_used += (uint32_t)add;
    return 0;
}

/* fill seed=N length=SIZE */
static int d_fill__(struct parser__ *ps, struct rs_trace_step *st)
{
    const char *w[2];
    size_t len[2];
    char size[32];
    int r;

    if (st->has_body || st->has_fill)
        return fail__(ps, -EINVAL, st->has_fill ? "duplicate fill" : "'body' and 'fill' in one request");
    if (!word__(ps, &w[0], &len[0]) || !word__(ps, &w[1], &len[1]))
        return fail__(ps, -EINVAL, "fill wants seed=N length=SIZE");
    if ((r = no_more__(ps, "fill")))
        return r;
    if (len[0] < 6 || memcmp(w[0], "seed=", 5) != 0 || !number__(w[0] + 5, len[0] - 5, UINT64_MAX, &st->fill_seed))
        return fail__(ps, -EINVAL, "fill wants seed=N first");
    if (len[1] < 8 || len[1] - 7 >= sizeof(size) || memcmp(w[1], "length=", 7) != 0)
        return fail__(ps, -EINVAL, "fill wants length=SIZE second");
    memcpy(size, w[1] + 7, len[1] - 7);
    size[len[1] - 7] = '\0';
    if (rs_parse_size(size, &st->fill_len) || st->fill_len > RS_TRACE_FILL_MAX)
        return fail__(ps, -EINVAL, "fill length wants a size up to 1G, not '%s'", size);
    st->has_fill = true;
    return 0;
}

static int d_expect__(struct parser__ *ps, struct rs_trace_step *st)
{
    const char *w, *a;
    size_t len, alen;
    uint64_t v;
    int r;

    if (!word__(ps, &w, &len))
        return fail__(ps, -EINVAL, "expect wants status, length, content, sha256 or contains");
    if (word_is__(w, len, "contains")) {
        struct rs_trace_contains *c;
        if (st->n_contains >= RS_TRACE_MAX_CONTAINS)
            return fail__(ps, -E2BIG, "more than %u 'expect contains' in one request",
                          RS_TRACE_MAX_CONTAINS);
        if ((r = arg__(ps, "text to look for")) || (r = no_more__(ps, "expect contains")))
            return r;
        if (ps->buf_len == 0)
            return fail__(ps, -EINVAL, "expect contains wants non-empty text");
        c = &st->contains[st->n_contains];
        c->line = ps->line;
        if ((r = placeholders_ok__(ps, ps->buf, ps->buf_len, "expect contains")) ||
            (r = intern_buf__(ps, "expect contains", &c->text)))
            return r;
        st->n_contains++;
        return 0;
    }
    if (!word__(ps, &a, &alen))
        return fail__(ps, -EINVAL, "expect %.*s wants a value", (int)len, w);
    if ((r = no_more__(ps, "expectation")))
        return r;
    if (word_is__(w, len, "status")) {
        /* No explicit value yields the default 100..399, so this is exact. */
        if (st->status_lo != 100 || st->status_hi != 399)
            return fail__(ps, -EINVAL, "duplicate expect status");
        if (alen == 3 && a[0] >= '1' && a[0] <= '5' && a[1] == 'x' && a[2] == 'x') {
            st->status_lo = (uint16_t)((a[0] - '0') * 100);
            st->status_hi = (uint16_t)(st->status_lo + 99);
        } else if (number__(a, alen, 599, &v) && v >= 100 && alen == 3) {
            st->status_lo = st->status_hi = (uint16_t)v;
        } else {
            return fail__(ps, -EINVAL, "expect status wants 100..599 or a class like 2xx");
        }
    } else if (word_is__(w, len, "length")) {
        if (st->length >= 0)
            return fail__(ps, -EINVAL, "duplicate expect length");
        if (!number__(a, alen, INT64_MAX, &v))
            return fail__(ps, -EINVAL, "expect length wants a byte count");
        st->length = (int64_t)v;
    } else if (word_is__(w, len, "content")) {
        if (st->check_content)
            return fail__(ps, -EINVAL, "duplicate expect content");
        if (alen < 6 || memcmp(a, "seed=", 5) != 0 || !number__(a + 5, alen - 5, UINT64_MAX, &v))
            return fail__(ps, -EINVAL, "expect content wants seed=N");
        st->check_content = true;
        st->content_seed = v;
    } else if (word_is__(w, len, "sha256")) {
        if (st->check_sha256)
            return fail__(ps, -EINVAL, "duplicate expect sha256");
        if (alen != 64)
            return fail__(ps, -EINVAL, "expect sha256 wants 64 hex digits");
        for (size_t i = 0; i < 32; i++) {
            int hi = hex_val__(a[2 * i]), lo = hex_val__(a[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return fail__(ps, -EINVAL, "expect sha256 wants 64 hex digits");
            st->sha256[i] = (uint8_t)(hi * 16 + lo);
        }
        st->check_sha256 = true;
    } else {
        return fail__(ps, -EINVAL, "unknown expectation '%.*s'", (int)len, w);
    }
    return 0;
}

static int d_capture__(struct parser__ *ps, struct rs_trace_step *st)
{
    struct rs_trace_capture *c;
    const char *n, *src, *h;
    size_t nlen, slen, hlen;
    int r;

    if (st->n_captures >= RS_TRACE_MAX_CAPTURES)
        return fail__(ps, -E2BIG, "more than %u captures in one request", RS_TRACE_MAX_CAPTURES);
    if (!word__(ps, &n, &nlen) || !name_ok__(n, nlen))
        return fail__(ps, -EINVAL, "capture wants a name [A-Za-z0-9_]{1,%u}", RS_TRACE_NAME_MAX - 1);
    c = &st->captures[st->n_captures];
    memset(c, 0, sizeof(*c));
    memcpy(c->name, n, nlen);
    c->line = ps->line;
    if (!word__(ps, &src, &slen))
        return fail__(ps, -EINVAL, "capture wants 'body' or 'header NAME'");
    if (word_is__(src, slen, "body")) {
        c->src = RS_TRACE_CAP_BODY;
    } else if (word_is__(src, slen, "header")) {
        c->src = RS_TRACE_CAP_HEADER;
        if (!word__(ps, &h, &hlen))
            return fail__(ps, -EINVAL, "capture header wants a header name");
        for (size_t i = 0; i < hlen; i++)
            if (!tchar__(h[i]))
                return fail__(ps, -EINVAL, "bad header name in capture");
        if ((r = intern__(ps, h, hlen, &c->header)))
            return r;
    } else {
        return fail__(ps, -EINVAL, "capture wants 'body' or 'header NAME'");
    }
    if ((r = arg__(ps, "regular expression")) || (r = no_more__(ps, "capture")))
        return r;
    if (ps->buf_len == 0)
        return fail__(ps, -EINVAL, "capture wants a non-empty regular expression");
    if ((r = intern_buf__(ps, "regular expression", &c->regex)))
        return r;
    st->n_captures++;
    return 0;
}

static int d_think__(struct parser__ *ps, uint64_t *think)
{
    const char *w;
    size_t len;
    char dur[32];
    uint64_t ns;
    int r;

    if (!word__(ps, &w, &len) || len >= sizeof(dur))
        return fail__(ps, -EINVAL, "think wants a duration like 50ms");
    if ((r = no_more__(ps, "think")))
        return r;
    memcpy(dur, w, len);
    dur[len] = '\0';
    if (rs_parse_duration(dur, &ns))
        return fail__(ps, -EINVAL, "think wants a duration like 50ms, not '%s'", dur);
    *think = ns > UINT64_MAX - *think ? UINT64_MAX : *think + ns;
    return 0;
}

static int line__(struct parser__ *ps, uint64_t *think)
{
    struct rs_trace *t = ps->t;
    const char *w;
    size_t len;

    if (!word__(ps, &w, &len))
        return 0;
    if (word_is__(w, len, "request"))
        return d_request__(ps, think);
    if (word_is__(w, len, "think"))
        return d_think__(ps, think);
    if (!word_is__(w, len, "header") && !word_is__(w, len, "body") && !word_is__(w, len, "fill") &&
        !word_is__(w, len, "expect") && !word_is__(w, len, "capture"))
        return fail__(ps, -EINVAL, "unknown directive '%.*s'", (int)(len > 40 ? 40 : len), w);
    if (t->n_steps == 0 || *think)
        return fail__(ps, -EINVAL, "'%.*s' outside a request", (int)len, w);
    struct rs_trace_step *st = &t->steps[t->n_steps - 1];
    switch (w[0]) {
    case 'h': return d_header__(ps, st);
    case 'b': return d_body__(ps, st);
    case 'e': return d_expect__(ps, st);
    case 'f': return d_fill__(ps, st);
    default: return d_capture__(ps, st);
    }
}

int rs_trace_parse(struct rs_trace *t, const char *text, size_t len, struct rs_trace_err *err)
{
    struct parser__ ps = { .t = t, .err = err };
    uint64_t think = 0;
    size_t i = 0;
    int r = 0;

    t->n_steps = 0;
    t->tail_think_ns = 0;
    t->text[0] = '\0';
    t->text_used = 1;
    if (err) {
        err->line = 0;
        err->msg[0] = '\0';
    }
    if (!text && len)
        return fail__(&ps, -EINVAL, "no text");
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - (text + i)) : len - i;

        ps.line++;
        ps.p = text + i;
        ps.end = text + i + ll;
        i += ll + (nl ? 1 : 0);
        if (ps.end > ps.p && ps.end[-1] == '\r')
            ps.end--;
        if ((size_t)(ps.end - ps.p) > RS_TRACE_LINE_MAX) {
            r = fail__(&ps, -E2BIG, "line longer than %u bytes", RS_TRACE_LINE_MAX);
            break;
        }
        if (memchr(ps.p, '\0', (size_t)(ps.end - ps.p))) {
            r = fail__(&ps, -EINVAL, "NUL byte in trace text (use \\x00 in a quoted body)");
            break;
        }
        if ((r = line__(&ps, &think)))
            break;
    }
    if (r) {
        t->n_steps = 0;
        return r;
    }
    t->tail_think_ns = think;
    return 0;
}

/* ---- Static placeholder check ------------------------------------------ */

struct check_ctx__ {
    const struct rs_trace *t;
    const struct rs_trace_vars *defined;
    unsigned step;               /* captures of steps before this one count */
};

static const char *check_lookup__(const void *arg, const char *name, size_t len)
{
    const struct check_ctx__ *c = arg;

    if (c->defined && rs_trace_vars_get(c->defined, name, len))
        return "";
    for (unsigned s = 0; s < c->step; s++) {
        const struct rs_trace_step *st = &c->t->steps[s];
        for (unsigned k = 0; k < st->n_captures; k++)
            if (strncmp(st->captures[k].name, name, len) == 0 &&
                st->captures[k].name[len] == '\0')
                return "";
    }
    return NULL;
}

static int check_one__(struct check_ctx__ *c, const char *s, size_t len, unsigned line,
                       const char *what, struct rs_trace_err *err)
{
    const char *bad = NULL;
    size_t bad_len = 0;
    long r = expand__(s, len, check_lookup__, c, NULL, 0, &bad, &bad_len);

    if (r >= 0)
        return 0;
    if (err) {
        err->line = line;
        if (r == -ENOENT)
            snprintf(err->msg, sizeof(err->msg),
                     "placeholder ${%.*s} in %s is not set (capture it in an earlier request or define it with -D)",
                     (int)bad_len, bad, what);
        else
            snprintf(err->msg, sizeof(err->msg), "malformed placeholder in %s", what);
    }
    return r == -ENOENT ? -ENOENT : -EINVAL;
}

int rs_trace_check_vars(const struct rs_trace *t, const struct rs_trace_vars *defined,
                        struct rs_trace_err *err)
{
    struct check_ctx__ c = { .t = t, .defined = defined };
    int r;

    for (c.step = 0; c.step < t->n_steps; c.step++) {
        const struct rs_trace_step *st = &t->steps[c.step];
        const char *tg = rs_trace_text(t, st->target);

        if ((r = check_one__(&c, tg, strlen(tg), st->line, "target", err)))
            return r;
        for (unsigned k = 0; k < st->n_headers; k++) {
            const char *v = rs_trace_text(t, st->headers[k].value);
            if ((r = check_one__(&c, v, strlen(v), st->headers[k].line, "header", err)))
                return r;
        }
        if (st->has_body &&
            (r = check_one__(&c, rs_trace_text(t, st->body), st->body_len, st->body_line,
                             "body", err)))
            return r;
        for (unsigned k = 0; k < st->n_contains; k++) {
            const char *v = rs_trace_text(t, st->contains[k].text);
            if ((r = check_one__(&c, v, strlen(v), st->contains[k].line, "expect contains", err)))
                return r;
        }
    }
    return 0;
}
