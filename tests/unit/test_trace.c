/* Unit tests for core/trace.c: every directive, quoting, errors with their
 * line numbers, bounds, placeholder substitution and the variable check. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "trace.h"

static int setup(void **state)
{
    *state = calloc(1, sizeof(struct rs_trace));
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

static int parse(struct rs_trace *t, const char *text, struct rs_trace_err *err)
{
    return rs_trace_parse(t, text, strlen(text), err);
}

#define TXT(t, s) rs_trace_text((t), (s))

static const char roundcube[] =
    "# Action 2 of the paper, shortened\n"
    "request GET /static/1048576?seed=3\n"
    "  expect status 200\n"
    "  expect length 1048576\n"
    "  expect content seed=3          # body verified with rs_content_check\n"
    "\n"
    "think 50ms\n"
    "request GET /?_task=login\n"
    "  capture token body \"name=\\\"_token\\\" value=\\\"([^\\\"]+)\\\"\"\n"
    "request POST /?_task=login&_action=login\n"
    "\theader Content-Type: application/x-www-form-urlencoded\n"
    "    header X-Roundcube-Request: ${token}\n"
    "    body _token=${token}&_user=alice&_pass=secret\n"
    "    expect status 302\n"
    "    capture compose_id header Location \"_id=([0-9a-zA-Z]+)\"\n"
    "    expect contains \"sent_successfully\"\n"
    "    expect contains bare-word\n"
    "    expect sha256 00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n"
    "think 1s\r\n"
    "think 500ms\n";

static void parses_every_directive(void **state)
{
    struct rs_trace *t = *state;
    struct rs_trace_err err;
    const struct rs_trace_step *s;

    assert_int_equal(parse(t, roundcube, &err), 0);
    assert_int_equal(t->n_steps, 3);

    s = &t->steps[0];
    assert_int_equal(s->line, 2);
    assert_string_equal(TXT(t, s->method), "GET");
    assert_string_equal(TXT(t, s->target), "/static/1048576?seed=3");
    assert_int_equal(s->status_lo, 200);
    assert_int_equal(s->status_hi, 200);
    assert_true(s->length == 1048576);
    assert_true(s->check_content);
    assert_true(s->content_seed == 3);
    assert_false(s->check_sha256);
    assert_false(s->has_body);
    assert_int_equal(s->n_headers + s->n_contains + s->n_captures, 0);
    assert_true(s->think_ns == 0);

    s = &t->steps[1];
    assert_int_equal(s->line, 8);
    assert_true(s->think_ns == 50000000ull);
    assert_int_equal(s->status_lo, 100);        /* default: below 400 */
    assert_int_equal(s->status_hi, 399);
    assert_true(s->length == -1);
    assert_int_equal(s->n_captures, 1);
    assert_string_equal(s->captures[0].name, "token");
    assert_int_equal(s->captures[0].src, RS_TRACE_CAP_BODY);
    assert_string_equal(TXT(t, s->captures[0].regex), "name=\"_token\" value=\"([^\"]+)\"");
    assert_int_equal(s->captures[0].line, 9);

    s = &t->steps[2];
    assert_int_equal(s->line, 10);
    assert_string_equal(TXT(t, s->method), "POST");
    assert_string_equal(TXT(t, s->target), "/?_task=login&_action=login");
    assert_int_equal(s->n_headers, 2);
    assert_string_equal(TXT(t, s->headers[0].name), "Content-Type");
    assert_string_equal(TXT(t, s->headers[0].value), "application/x-www-form-urlencoded");
    assert_int_equal(s->headers[0].line, 11);
    assert_string_equal(TXT(t, s->headers[1].name), "X-Roundcube-Request");
    assert_string_equal(TXT(t, s->headers[1].value), "${token}");
    assert_true(s->has_body);
    assert_int_equal(s->body_line, 13);
    assert_int_equal(s->body_len, strlen("_token=${token}&_user=alice&_pass=secret"));
    assert_string_equal(TXT(t, s->body), "_token=${token}&_user=alice&_pass=secret");
    assert_int_equal(s->status_lo, 302);
    assert_int_equal(s->captures[0].src, RS_TRACE_CAP_HEADER);
    assert_string_equal(TXT(t, s->captures[0].header), "Location");
    assert_string_equal(TXT(t, s->captures[0].regex), "_id=([0-9a-zA-Z]+)");
    assert_int_equal(s->n_contains, 2);
    assert_string_equal(TXT(t, s->contains[0].text), "sent_successfully");
    assert_int_equal(s->contains[0].line, 16);
    assert_string_equal(TXT(t, s->contains[1].text), "bare-word");
    assert_true(s->check_sha256);
    assert_int_equal(s->sha256[0], 0x00);
    assert_int_equal(s->sha256[1], 0x11);
    assert_int_equal(s->sha256[15], 0xff);
    assert_int_equal(s->sha256[31], 0xff);
    assert_true(t->tail_think_ns == 1500000000ull);     /* thinks add up */
}

static void quoting_and_comments(void **state)
{
    struct rs_trace *t = *state;
    const struct rs_trace_step *s;
    static const char text[] =
        "think 5ms   # leading pause\n"
        "request PUT /a#frag   # the '#' inside a word is kept\n"
        "body \"x\\\"y\\\\z\\n\\r\\t\\x41\\x00end\"\n"
        "body plain text with a#hash  # comment\n"
        "header X-Empty:\n"
        "header X-Hash: a#b # c\n"
        "expect contains \"a \\. # b\"\n"
        "expect status 4xx\n"
        "request OPTIONS *\n";

    assert_int_equal(parse(t, text, NULL), 0);
    assert_int_equal(t->n_steps, 2);
    s = &t->steps[0];
    assert_true(s->think_ns == 5000000ull);
    assert_string_equal(TXT(t, s->target), "/a#frag");
    /* x"y\z LF CR TAB A NUL end, then the unquoted line appended as is */
    static const char want[] = "x\"y\\z\n\r\tA\0endplain text with a#hash";
    assert_int_equal(s->body_len, sizeof(want) - 1);
    assert_memory_equal(TXT(t, s->body), want, sizeof(want) - 1);
    assert_int_equal(s->body_line, 3);
    assert_string_equal(TXT(t, s->headers[0].value), "");
    assert_string_equal(TXT(t, s->headers[1].value), "a#b");
    assert_string_equal(TXT(t, s->contains[0].text), "a \\. # b");
    assert_int_equal(s->status_lo, 400);
    assert_int_equal(s->status_hi, 499);
    assert_string_equal(TXT(t, t->steps[1].target), "*");
    assert_true(t->tail_think_ns == 0);

    /* An empty body line still marks a body (POST with Content-Length: 0). */
    assert_int_equal(parse(t, "request POST /x\nbody\n", NULL), 0);
    assert_true(t->steps[0].has_body);
    assert_int_equal(t->steps[0].body_len, 0);
    /* No trailing newline, CRLF line ends. */
    assert_int_equal(parse(t, "request GET /\r\nexpect status 204", NULL), 0);
    assert_int_equal(t->steps[0].status_lo, 204);
}

static void body_appends_across_other_directives(void **state)
{
    struct rs_trace *t = *state;
    const struct rs_trace_step *s;
    static const char text[] =
        "request POST /upload\n"
        "body \"--B\\r\\n\"\n"
        "header Content-Type: multipart/form-data; boundary=B\n"
        "body \"part\\r\\n\"\n"
        "capture x body \"(.)\"\n"
        "body \"--B--\\r\\n\"\n"
        "request POST /second\n"
        "body one\n";

    assert_int_equal(parse(t, text, NULL), 0);
    s = &t->steps[0];
    assert_string_equal(TXT(t, s->body), "--B\r\npart\r\n--B--\r\n");
    assert_int_equal(s->body_len, strlen("--B\r\npart\r\n--B--\r\n"));
    assert_string_equal(TXT(t, s->headers[0].value), "multipart/form-data; boundary=B");
    assert_string_equal(TXT(t, s->captures[0].regex), "(.)");
    assert_string_equal(TXT(t, t->steps[1].body), "one");
}

static void fill_generates_a_body(void **state)
{
    struct rs_trace *t = *state;
    static const char text[] =
        "request POST /upload?seed=7\n"
        "fill seed=7 length=4M\n"
        "request POST /upload?seed=8\n"
        "fill seed=18446744073709551615 length=60000\n";

    assert_int_equal(parse(t, text, NULL), 0);
    assert_true(t->steps[0].has_fill);
    assert_false(t->steps[0].has_body);
    assert_int_equal(t->steps[0].fill_seed, 7);
    assert_int_equal(t->steps[0].fill_len, 4u << 20);
    assert_int_equal(t->steps[1].fill_seed, UINT64_MAX);
    assert_int_equal(t->steps[1].fill_len, 60000);
}

static void empty_input(void **state)
{
    struct rs_trace *t = *state;
    struct rs_trace_err err;

    assert_int_equal(rs_trace_parse(t, "", 0, &err), 0);
    assert_int_equal(t->n_steps, 0);
    assert_int_equal(rs_trace_parse(t, NULL, 0, &err), 0);
    assert_int_equal(parse(t, "\n\n   # only comments\n\t\n", &err), 0);
    assert_int_equal(t->n_steps, 0);
    assert_int_equal(rs_trace_parse(t, NULL, 5, &err), -EINVAL);
}

static void errors_carry_line_numbers(void **state)
{
    static const struct {
        const char *text;
        int code;
        unsigned line;
        const char *msg_part;
    } cases[] = {
        { "header X: y\n", -EINVAL, 1, "outside a request" },
        { "request GET /\nthink 1ms\nexpect status 200\n", -EINVAL, 3, "outside a request" },
        { "request GET /\nfrobnicate\n", -EINVAL, 2, "unknown directive" },
        { "request get /\n", -EINVAL, 1, "method" },
        { "request GET\n", -EINVAL, 1, "target" },
        { "request GET index.html\n", -EINVAL, 1, "target" },
        { "request GET / extra\n", -EINVAL, 1, "unexpected text" },
        { "\n\nrequest GET /\nheader NoColon\n", -EINVAL, 4, "Name: value" },
        { "request GET /\nheader : v\n", -EINVAL, 2, "Name: value" },
        { "request GET /\nexpect status 99\n", -EINVAL, 2, "status" },
        { "request GET /\nexpect status 600\n", -EINVAL, 2, "status" },
        { "request GET /\nexpect status 6xx\n", -EINVAL, 2, "status" },
        { "request GET /\nexpect status 0200\n", -EINVAL, 2, "status" },
        { "request GET /\nexpect status 200\nexpect status 201\n", -EINVAL, 3, "duplicate" },
        { "request GET /\nexpect length -1\n", -EINVAL, 2, "length" },
        { "request GET /\nexpect length 99999999999999999999\n", -EINVAL, 2, "length" },
        { "request GET /\nexpect length 1\nexpect length 1\n", -EINVAL, 3, "duplicate" },
        { "request GET /\nexpect content 3\n", -EINVAL, 2, "seed=N" },
        { "request GET /\nexpect content seed=\n", -EINVAL, 2, "seed=N" },
        { "request GET /\nexpect content seed=18446744073709551616\n", -EINVAL, 2, "seed=N" },
        { "request GET /\nexpect sha256 abc\n", -EINVAL, 2, "64 hex" },
        { "request GET /\nexpect sha256 zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
          -EINVAL, 2, "64 hex" },
        { "request GET /\nexpect contains \"\"\n", -EINVAL, 2, "non-empty" },
        { "request GET /\nexpect contains\n", -EINVAL, 2, "missing" },
        { "request GET /\nexpect bogus 1\n", -EINVAL, 2, "unknown expectation" },
        { "request GET /\nexpect\n", -EINVAL, 2, "expect wants" },
        { "request POST /\nfill seed=1\n", -EINVAL, 2, "fill wants" },
        { "request POST /\nfill length=1 seed=1\n", -EINVAL, 2, "seed=N first" },
        { "request POST /\nfill seed=1 size=1\n", -EINVAL, 2, "length=SIZE" },
        { "request POST /\nfill seed=1 length=2G\n", -EINVAL, 2, "up to 1G" },
        { "request POST /\nfill seed=1 length=1x\n", -EINVAL, 2, "up to 1G" },
        { "request POST /\nfill seed=1 length=1 more\n", -EINVAL, 2, "unexpected text" },
        { "request POST /\nbody x\nfill seed=1 length=1\n", -EINVAL, 3, "'body' and 'fill'" },
        { "request POST /\nfill seed=1 length=1\nbody x\n", -EINVAL, 3, "'body' and 'fill'" },
        { "request POST /\nfill seed=1 length=1\nfill seed=1 length=1\n", -EINVAL, 3, "duplicate fill" },
        { "request GET /\ncapture bad-name body \"x\"\n", -EINVAL, 2, "name" },
        { "request GET /\ncapture n trailer \"x\"\n", -EINVAL, 2, "body" },
        { "request GET /\ncapture n header\n", -EINVAL, 2, "header name" },
        { "request GET /\ncapture n body\n", -EINVAL, 2, "missing" },
        { "request GET /\ncapture n body \"unterminated\n", -EINVAL, 2, "unterminated" },
        { "request GET /\ncapture n body \"a\"b\n", -EINVAL, 2, "closing quote" },
        { "request GET /\ncapture n body \"\\x4\"\n", -EINVAL, 2, "\\x" },
        { "request GET /\ncapture n body \"a\\x00b\"\n", -EINVAL, 2, "NUL" },
        { "request GET /\nbody \"a\" b\n", -EINVAL, 2, "unexpected text" },
        { "request GET /${bad-name}\n", -EINVAL, 1, "placeholder" },
        { "request GET /${bad name}\n", -EINVAL, 1, "unexpected text" },
        { "request GET /\nheader X: ${unterminated\n", -EINVAL, 2, "placeholder" },
        { "request GET /\nbody ${}\n", -EINVAL, 2, "placeholder" },
        { "request GET /\nexpect contains \"${a-b}\"\n", -EINVAL, 2, "placeholder" },
        { "think\n", -EINVAL, 1, "duration" },
        { "think 5 parsecs\n", -EINVAL, 1, "unexpected text" },
        { "think 5parsecs\n", -EINVAL, 1, "duration" },
    };
    struct rs_trace *t = *state;
    struct rs_trace_err err;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int r = parse(t, cases[i].text, &err);
        if (r != cases[i].code || err.line != cases[i].line ||
            !strstr(err.msg, cases[i].msg_part))
            fail_msg("case %zu: got %d line %u '%s'", i, r, err.line, err.msg);
        assert_int_equal(t->n_steps, 0);        /* nothing half-parsed */
    }
    /* A raw NUL byte in the text. */
    static const char nul[] = "request GET /\nbody a\0b\n";
    assert_int_equal(rs_trace_parse(t, nul, sizeof(nul) - 1, &err), -EINVAL);
    assert_int_equal(err.line, 2);
    /* err may be NULL. */
    assert_int_equal(parse(t, "bogus\n", NULL), -EINVAL);
}

static void bounds(void **state)
{
    struct rs_trace *t = *state;
    struct rs_trace_err err;
    size_t cap = (RS_TRACE_MAX_STEPS + 2) * 32 + 4096;
    char *text = malloc(RS_TRACE_TEXT_MAX * 2), *p;
    int r;

    assert_non_null(text);
    /* Exactly the maximum number of steps, then one more. */
    p = text;
    for (unsigned i = 0; i < RS_TRACE_MAX_STEPS; i++)
        p += sprintf(p, "request GET /%u\n", i);
    assert_int_equal(parse(t, text, &err), 0);
    assert_int_equal(t->n_steps, RS_TRACE_MAX_STEPS);
    assert_string_equal(TXT(t, t->steps[RS_TRACE_MAX_STEPS - 1].target), "/511");
    sprintf(p, "request GET /last\n");
    assert_int_equal(parse(t, text, &err), -E2BIG);
    assert_int_equal(err.line, RS_TRACE_MAX_STEPS + 1);
    assert_true(strlen(text) < cap);

    /* Headers, contains and captures per step. */
    static const char *const items[] = { "header H: v\n", "expect contains x\n",
                                         "capture c body x\n" };
    static const unsigned maxes[] = { RS_TRACE_MAX_HEADERS, RS_TRACE_MAX_CONTAINS,
                                      RS_TRACE_MAX_CAPTURES };
    for (size_t k = 0; k < 3; k++) {
        p = text + sprintf(text, "request GET /\n");
        for (unsigned i = 0; i < maxes[k]; i++)
            p += sprintf(p, "%s", items[k]);
        assert_int_equal(parse(t, text, &err), 0);
        sprintf(p, "%s", items[k]);
        assert_int_equal(parse(t, text, &err), -E2BIG);
        assert_int_equal(err.line, maxes[k] + 2);
    }

    /* Longest line accepted, one byte more refused. */
    p = text + sprintf(text, "request GET /\nbody ");
    memset(p, 'a', RS_TRACE_LINE_MAX - 5);
    p[RS_TRACE_LINE_MAX - 5] = '\0';
    assert_int_equal(parse(t, text, &err), 0);
    assert_int_equal(t->steps[0].body_len, RS_TRACE_LINE_MAX - 5);
    strcat(p, "a");
    assert_int_equal(parse(t, text, &err), -E2BIG);
    assert_int_equal(err.line, 2);

    /* Arena: body lines until the text no longer fits. */
    p = text + sprintf(text, "request POST /\n");
    unsigned lines = 1;
    while ((size_t)(p - text) < RS_TRACE_TEXT_MAX + 2 * RS_TRACE_LINE_MAX) {
        p += sprintf(p, "body ");
        memset(p, 'b', 4000);
        p += 4000;
        *p++ = '\n';
        lines++;
    }
    *p = '\0';
    r = parse(t, text, &err);
    assert_int_equal(r, -E2BIG);
    assert_true(err.line > 2 && err.line <= lines);
    assert_non_null(strstr(err.msg, "exceeds"));
    free(text);
}

static void vars_dictionary(void **state)
{
    struct rs_trace_vars *v = malloc(sizeof(*v));
    char name[16], big[RS_TRACE_VALUE_MAX + 2];

    (void)state;
    assert_non_null(v);
    rs_trace_vars_init(v);
    assert_null(rs_trace_vars_get(v, "a", 1));
    assert_int_equal(rs_trace_vars_set(v, "a", "one", 3), 0);
    assert_int_equal(rs_trace_vars_set(v, "b", "two", 3), 0);
    assert_int_equal(rs_trace_vars_set(v, "c", "", 0), 0);
    assert_string_equal(rs_trace_vars_get(v, "a", 1), "one");
    assert_string_equal(rs_trace_vars_get(v, "abc", 1), "one");   /* length counts */
    assert_null(rs_trace_vars_get(v, "ab", 2));
    assert_string_equal(rs_trace_vars_get(v, "c", 1), "");
    /* Replacing compacts: the later value keeps its content. */
    assert_int_equal(rs_trace_vars_set(v, "a", "uno-longer", 10), 0);
    assert_string_equal(rs_trace_vars_get(v, "a", 1), "uno-longer");
    assert_string_equal(rs_trace_vars_get(v, "b", 1), "two");
    assert_int_equal(v->n, 3);
    assert_int_equal(v->text_used, 11 + 4 + 1);
    /* Setting from its own storage. */
    assert_int_equal(rs_trace_vars_set(v, "b", rs_trace_vars_get(v, "a", 1), 3), 0);
    assert_string_equal(rs_trace_vars_get(v, "b", 1), "uno");
    assert_string_equal(rs_trace_vars_get(v, "a", 1), "uno-longer");

    assert_int_equal(rs_trace_vars_set(v, "bad name", "x", 1), -EINVAL);
    assert_int_equal(rs_trace_vars_set(v, "", "x", 1), -EINVAL);
    assert_int_equal(rs_trace_vars_set(v, "n", "a\0b", 3), -EINVAL);
    assert_int_equal(rs_trace_vars_set(v, "abcdefghijabcdefghijabcdefghijab", "x", 1), -EINVAL);
    assert_int_equal(rs_trace_vars_set(v, "abcdefghijabcdefghijabcdefghija", "x", 1), 0);
    memset(big, 'v', sizeof(big));
    assert_int_equal(rs_trace_vars_set(v, "big", big, RS_TRACE_VALUE_MAX + 1), -E2BIG);
    assert_int_equal(rs_trace_vars_set(v, "big", big, RS_TRACE_VALUE_MAX), 0);
    assert_int_equal(rs_trace_vars_set(v, "big2", big, 4000), 0);
    /* Text full: refused, and the old value stays. */
    assert_int_equal(rs_trace_vars_set(v, "big", big, RS_TRACE_VALUE_MAX), 0);
    assert_int_equal(rs_trace_vars_set(v, "a", big, 200), -ENOSPC);
    assert_string_equal(rs_trace_vars_get(v, "a", 1), "uno-longer");

    /* Count full. */
    rs_trace_vars_init(v);
    for (unsigned i = 0; i < RS_TRACE_MAX_VARS; i++) {
        snprintf(name, sizeof(name), "v%u", i);
        assert_int_equal(rs_trace_vars_set(v, name, "x", 1), 0);
    }
    assert_int_equal(rs_trace_vars_set(v, "one_more", "x", 1), -ENOSPC);
    assert_int_equal(rs_trace_vars_set(v, "v7", "replaced", 8), 0);     /* replacing still works */
    assert_string_equal(rs_trace_vars_get(v, "v7", 2), "replaced");

    rs_trace_vars_init(v);
    assert_int_equal(rs_trace_vars_define(v, "user=alice=x"), 0);
    assert_string_equal(rs_trace_vars_get(v, "user", 4), "alice=x");
    assert_int_equal(rs_trace_vars_define(v, "empty="), 0);
    assert_string_equal(rs_trace_vars_get(v, "empty", 5), "");
    assert_int_equal(rs_trace_vars_define(v, "noequals"), -EINVAL);
    assert_int_equal(rs_trace_vars_define(v, "=x"), -EINVAL);
    assert_int_equal(rs_trace_vars_define(v, NULL), -EINVAL);
    assert_true(rs_trace_name_ok("_a9"));
    assert_false(rs_trace_name_ok("a.b"));
    assert_false(rs_trace_name_ok(NULL));
    free(v);
}

static void substitution(void **state)
{
    struct rs_trace_vars *v = malloc(sizeof(*v));
    char out[64], missing[RS_TRACE_NAME_MAX];
    const char *in;

    (void)state;
    assert_non_null(v);
    rs_trace_vars_init(v);
    assert_int_equal(rs_trace_vars_define(v, "token=T0K"), 0);
    assert_int_equal(rs_trace_vars_define(v, "id=42"), 0);

    in = "_token=${token}&_id=${id}${id}";
    assert_int_equal(rs_trace_subst(v, in, strlen(in), out, sizeof(out), missing),
                     (int)strlen("_token=T0K&_id=4242"));
    assert_string_equal(out, "_token=T0K&_id=4242");

    in = "cost $5, $${literal}, ${ x, $";
    assert_int_equal(rs_trace_subst(v, in, 19, out, sizeof(out), missing), 18);
    assert_string_equal(out, "cost $5, ${literal");
    in = "$";
    assert_int_equal(rs_trace_subst(v, in, 1, out, sizeof(out), NULL), 1);
    assert_string_equal(out, "$");

    /* Unset name: -ENOENT and its name. */
    in = "a=${id}&b=${nope}";
    assert_int_equal(rs_trace_subst(v, in, strlen(in), out, sizeof(out), missing), -ENOENT);
    assert_string_equal(missing, "nope");
    assert_int_equal(rs_trace_subst(v, in, strlen(in), out, sizeof(out), NULL), -ENOENT);
    /* Malformed. */
    static const char *const bad[] = { "${", "${id", "x${}", "${a b}", "${a-b}",
                                       "${abcdefghijabcdefghijabcdefghijab}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(rs_trace_subst(v, bad[i], strlen(bad[i]), out, sizeof(out), NULL),
                         -EINVAL);

    /* snprintf semantics: truncated but NUL-terminated, full length back. */
    in = "${token}${token}";
    assert_int_equal(rs_trace_subst(v, in, strlen(in), out, 4, NULL), 6);
    assert_string_equal(out, "T0K");
    assert_int_equal(rs_trace_subst(v, in, strlen(in), NULL, 0, NULL), 6);
    assert_int_equal(rs_trace_subst(v, in, strlen(in), out, 1, NULL), 6);
    assert_string_equal(out, "");
    assert_int_equal(rs_trace_subst(v, NULL, 0, out, sizeof(out), NULL), 0);
    assert_string_equal(out, "");
    assert_int_equal(rs_trace_subst(v, NULL, 3, out, sizeof(out), NULL), -EINVAL);

    /* NUL bytes in the input pass through. */
    static const char withnul[] = "a\0${id}\0";
    assert_int_equal(rs_trace_subst(v, withnul, sizeof(withnul) - 1, out, sizeof(out), NULL), 5);
    assert_memory_equal(out, "a\0" "42\0", 6);

    /* Longest value, and inputs beyond the arena bound. */
    char *big = malloc(RS_TRACE_TEXT_MAX + 2);
    assert_non_null(big);
    memset(big, 'z', RS_TRACE_VALUE_MAX);
    assert_int_equal(rs_trace_vars_set(v, "long", big, RS_TRACE_VALUE_MAX), 0);
    assert_int_equal(rs_trace_subst(v, "<${long}>", 9, NULL, 0, NULL), RS_TRACE_VALUE_MAX + 2);
    memset(big, 'y', RS_TRACE_TEXT_MAX + 1);
    assert_int_equal(rs_trace_subst(v, big, RS_TRACE_TEXT_MAX + 1, NULL, 0, NULL), -E2BIG);
    assert_int_equal(rs_trace_subst(v, big, RS_TRACE_TEXT_MAX, NULL, 0, NULL),
                     (int)RS_TRACE_TEXT_MAX);
    free(big);
    free(v);
}

static void check_vars(void **state)
{
    struct rs_trace *t = *state;
    struct rs_trace_vars *v = malloc(sizeof(*v));
    struct rs_trace_err err;

    assert_non_null(v);
    rs_trace_vars_init(v);
    assert_int_equal(parse(t, roundcube, &err), 0);
    assert_int_equal(rs_trace_check_vars(t, NULL, &err), 0);    /* token captured earlier */

    /* A step cannot use its own capture. */
    static const char own[] =
        "request GET /\n"
        "capture tok body \"(x)\"\n"
        "header X-T: ${tok}\n";
    assert_int_equal(parse(t, own, &err), 0);
    assert_int_equal(rs_trace_check_vars(t, NULL, &err), -ENOENT);
    assert_int_equal(err.line, 3);
    assert_non_null(strstr(err.msg, "${tok}"));
    /* ...unless defined on the command line. */
    assert_int_equal(rs_trace_vars_define(v, "tok=1"), 0);
    assert_int_equal(rs_trace_check_vars(t, v, &err), 0);

    static const char where[] =
        "request GET /${a}\n"
        "capture b body \"(x)\"\n"
        "request POST /\n"
        "body \"${b}\"\n"
        "body ${c}\n"
        "request GET /\n"
        "expect contains \"${d}\"\n";
    rs_trace_vars_init(v);
    assert_int_equal(parse(t, where, &err), 0);
    assert_int_equal(rs_trace_check_vars(t, v, &err), -ENOENT);
    assert_int_equal(err.line, 1);
    assert_non_null(strstr(err.msg, "${a}"));
    assert_int_equal(rs_trace_vars_define(v, "a=1"), 0);
    assert_int_equal(rs_trace_check_vars(t, v, &err), -ENOENT);
    assert_int_equal(err.line, 4);          /* the body's first line */
    assert_non_null(strstr(err.msg, "${c}"));
    assert_int_equal(rs_trace_vars_define(v, "c=1"), 0);
    assert_int_equal(rs_trace_check_vars(t, v, &err), -ENOENT);
    assert_int_equal(err.line, 7);
    assert_int_equal(rs_trace_vars_define(v, "d=1"), 0);
    assert_int_equal(rs_trace_check_vars(t, v, &err), 0);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(parses_every_directive, setup, teardown),
        cmocka_unit_test_setup_teardown(quoting_and_comments, setup, teardown),
        cmocka_unit_test_setup_teardown(body_appends_across_other_directives, setup, teardown),
        cmocka_unit_test_setup_teardown(fill_generates_a_body, setup, teardown),
        cmocka_unit_test_setup_teardown(empty_input, setup, teardown),
        cmocka_unit_test_setup_teardown(errors_carry_line_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(bounds, setup, teardown),
        cmocka_unit_test(vars_dictionary),
        cmocka_unit_test(substitution),
        cmocka_unit_test_setup_teardown(check_vars, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
