/* Request traces for rs-client: a small line-oriented text format that says
 * which requests to send, what each response must look like and which values
 * to scrape from it for later requests (${name} placeholders).  Parsing and
 * placeholder substitution are pure: no I/O, no heap, bounded sizes.
 *
 * ---- Format ----------------------------------------------------------------
 *
 *   # comment                     (also after a directive: a '#' that starts
 *                                   a word outside quotes ends the line)
 *   request METHOD TARGET         starts a step; TARGET may hold ${name}
 *     header Name: value          value is the rest of the line (${name} ok)
 *     fill seed=N length=SIZE     the body is SIZE (e.g. 4M, at most 1G) bytes of
 *                                   rs_content_fill(N, 0, ...), as rs-app's
 *                                   POST /upload?seed=N checks; not with 'body'
 *     body TEXT | body "TEXT"     appends to the body (several lines append
 *                                   without separator: use "\r\n" to break)
 *     expect status 200 | 3xx     default: any status below 400
 *     expect length N             body bytes
 *     expect content seed=N       body is rs_content_fill(N, 0, ...)
 *     expect sha256 HEX           64 hex digits, SHA-256 of the body
 *     expect contains "TEXT"      TEXT (${name} ok) occurs in the body
 *     capture NAME body "ERE"     NAME := group 1 (or the whole match) of
 *     capture NAME header Hdr "ERE"  the POSIX ERE over the body / header Hdr
 *   think DURATION                pause before the next request (after the
 *                                   last one: at the end of each run)
 *
 * Indentation is optional.  Quoted strings know \" \\ \n \r \t \xHH; any
 * other backslash pair is kept as is, so regular expressions keep \. \? ...
 * Placeholders are ${name}, name = [A-Za-z0-9_]{1,31}; "$${" is a literal
 * "${".  A step may use names captured by earlier steps or defined on the
 * command line (rs_trace_check_vars), not its own captures. */
#ifndef RS_TRACE_H
#define RS_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Types ------------------------------------------------------------ */

#define RS_TRACE_MAX_STEPS 512u
#define RS_TRACE_MAX_HEADERS 16u     /* per step */
#define RS_TRACE_MAX_CONTAINS 8u     /* per step */
#define RS_TRACE_MAX_CAPTURES 8u     /* per step */
/* All strings of one trace (targets, headers, bodies, patterns) share this
 * arena; a multipart body with a small attachment still fits. */
#define RS_TRACE_TEXT_MAX (256u << 10)
#define RS_TRACE_LINE_MAX 8192u      /* bytes per line without the newline */
#define RS_TRACE_NAME_MAX 32u        /* placeholder name, with its NUL */
#define RS_TRACE_ERR_MAX 160u        /* error message, with its NUL */
#define RS_TRACE_FILL_MAX (1ull << 30)  /* bytes of one 'fill' body */

/* Offset of a NUL-terminated string in the trace's arena; 0 is "". */
typedef uint32_t rs_trace_str;

enum rs_trace_cap_src {
    RS_TRACE_CAP_BODY = 0,
    RS_TRACE_CAP_HEADER = 1,
};

struct rs_trace_header {
    rs_trace_str name;           /* as written, without the colon */
    rs_trace_str value;          /* may hold placeholders */
    unsigned line;
};

struct rs_trace_capture {
    char name[RS_TRACE_NAME_MAX];
    enum rs_trace_cap_src src;
    rs_trace_str header;         /* header name for RS_TRACE_CAP_HEADER */
    rs_trace_str regex;          /* POSIX extended regular expression */
    unsigned line;
};

struct rs_trace_contains {
    rs_trace_str text;           /* may hold placeholders */
    unsigned line;
};

/* One request and what its response must satisfy. */
struct rs_trace_step {
    unsigned line;               /* line of the 'request' directive */
    rs_trace_str method;
    rs_trace_str target;         /* may hold placeholders */
    uint8_t n_headers, n_contains, n_captures;
    struct rs_trace_header headers[RS_TRACE_MAX_HEADERS];
    bool has_body;
    rs_trace_str body;           /* may hold placeholders and NUL bytes */
    uint32_t body_len;
    unsigned body_line;          /* line of the first 'body' directive */
    bool has_fill;               /* 'fill': the body is generated content */
    uint64_t fill_seed, fill_len;
    uint16_t status_lo, status_hi;      /* accepted status range, inclusive */
    int64_t length;              /* expected body bytes, -1: not checked */
    bool check_content;
    uint64_t content_seed;
    bool check_sha256;
    uint8_t sha256[32];
    struct rs_trace_contains contains[RS_TRACE_MAX_CONTAINS];
    struct rs_trace_capture captures[RS_TRACE_MAX_CAPTURES];
    uint64_t think_ns;           /* pause before sending this request */
};

/* A parsed trace, about 0.5 MB: allocate it, do not copy it around. */
struct rs_trace {
    unsigned n_steps;
    uint64_t tail_think_ns;      /* pause after the last step of a run */
    uint32_t text_used;          /* bytes of 'text' in use */
    struct rs_trace_step steps[RS_TRACE_MAX_STEPS];
    char text[RS_TRACE_TEXT_MAX];
};

/* Where and why parsing or checking failed. */
struct rs_trace_err {
    unsigned line;               /* 1-based; 0 when not tied to a line */
    char msg[RS_TRACE_ERR_MAX];
};

/* A dictionary of placeholder values: bounded, no heap. */
#define RS_TRACE_MAX_VARS 64u
#define RS_TRACE_VARS_TEXT 8192u     /* all values with their NULs */
#define RS_TRACE_VALUE_MAX 4095u     /* bytes of one value */

struct rs_trace_var {
    char name[RS_TRACE_NAME_MAX];
    uint16_t off, len;           /* value in 'text' */
};

struct rs_trace_vars {
    unsigned n;
    uint32_t text_used;
    struct rs_trace_var vars[RS_TRACE_MAX_VARS];
    char text[RS_TRACE_VARS_TEXT];
};

/* ---- Parsing ---------------------------------------------------------- */

/* Parses 'len' bytes of trace text into 't' (which needs no initialisation).
 * Returns 0; -EINVAL for malformed text (a bad directive, argument, quoted
 * string or placeholder; a directive outside a request; a NUL byte outside a
 * body); -E2BIG when a bound above is exceeded (steps, headers, contains,
 * captures, arena, line length).  On error '*err' (if not NULL) holds the
 * line number and a message, and 't' holds no steps. */
int rs_trace_parse(struct rs_trace *t, const char *text, size_t len,
                   struct rs_trace_err *err);

/* Returns the NUL-terminated string 's' of 't'. */
static inline const char *rs_trace_text(const struct rs_trace *t, rs_trace_str s)
{
    return t->text + s;
}

/* Checks that every placeholder of every step is either in 'defined' (may be
 * NULL) or captured by an earlier step.
 * Returns 0, or -ENOENT with '*err' naming the first unset placeholder and
 * the line of the directive that uses it. */
int rs_trace_check_vars(const struct rs_trace *t, const struct rs_trace_vars *defined,
                        struct rs_trace_err *err);

/* ---- Placeholder values ----------------------------------------------- */

void rs_trace_vars_init(struct rs_trace_vars *v);

/* Sets 'name' (NUL-terminated) to the 'len' bytes at 'value', replacing an
 * earlier value.  Returns 0; -EINVAL for a bad name or a NUL byte in the
 * value; -E2BIG for a value longer than RS_TRACE_VALUE_MAX; -ENOSPC when the
 * dictionary is full (the old value, if any, is then kept). */
int rs_trace_vars_set(struct rs_trace_vars *v, const char *name,
                      const char *value, size_t len);

/* Parses a command-line definition "name=value" and sets it.
 * Returns what rs_trace_vars_set returns, or -EINVAL without '='. */
int rs_trace_vars_define(struct rs_trace_vars *v, const char *def);

/* Returns the value of the 'name_len'-byte name, NUL-terminated, or NULL. */
const char *rs_trace_vars_get(const struct rs_trace_vars *v, const char *name,
                              size_t name_len);

/* Copies 'in' ('in_len' bytes, NULs allowed) to 'out' with every ${name}
 * replaced by its value from 'v' and "$${" by "${".  Like snprintf, writes at
 * most 'out_size' bytes including a terminating NUL ('out' may be NULL when
 * 'out_size' is 0) and returns the full length of the result (without NUL):
 * a return value >= 'out_size' means 'out' was too small.
 * Returns -ENOENT for an unset name (copied into 'missing', if not NULL, of
 * RS_TRACE_NAME_MAX bytes), -EINVAL for a malformed placeholder, -E2BIG when
 * 'in_len' exceeds RS_TRACE_TEXT_MAX. */
int rs_trace_subst(const struct rs_trace_vars *v, const char *in, size_t in_len,
                   char *out, size_t out_size, char *missing);

/* Returns true when 's' (NUL-terminated) is a valid placeholder name. */
bool rs_trace_name_ok(const char *s);

#endif /* RS_TRACE_H */
