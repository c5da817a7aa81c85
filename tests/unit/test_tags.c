/* Unit tests for core/tags.c: rule parsing, first-match classification,
 * defaults and error reporting. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "tags.h"

static const char rules[] =
    "# roundcube tagging rules\n"
    "\n"
    "GET  /static/*           read-only deterministic\n"
    "POST /api/counter        update deterministic   # trailing comment\n"
    "*    /api/token*         update nondeterministic\n"
    "GET  /?_task=mail&_action=list*   read-only deterministic\n"
    "\t  GET /?_task=mail&_action=send*\tnondeterministic update\r\n"
    "GET  /api/*              update deterministic\n"
    "POST /img/??.png         read-only deterministic\n"
    "M-SEARCH *               read-only nondeterministic";     /* no final newline */

static int setup(void **state)
{
    *state = calloc(1, sizeof(struct rs_tags));
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

static void parse_and_classify(void **state)
{
    struct rs_tags *t = *state;
    int line = -1;

    assert_int_equal(rs_tags_parse(t, rules, strlen(rules), &line), 8);
    assert_int_equal(line, 0);
    assert_string_equal(t->rules[0].method, "GET");
    assert_string_equal(t->rules[0].pattern, "/static/*");
    assert_string_equal(t->rules[2].method, "*");
    assert_int_equal(t->rules[4].flags, RS_TAG_UPDATE | RS_TAG_NONDET);

    assert_int_equal(rs_tags_classify(t, "GET", "/static/js/app.js"), 0);   /* '*' spans '/' */
    assert_int_equal(rs_tags_classify(t, "POST", "/api/counter"), RS_TAG_UPDATE);
    /* The glob matches the whole target: a longer one falls to defaults. */
    assert_int_equal(rs_tags_classify(t, "POST", "/api/counter/x"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, "GET", "/api/counterx"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, "GET", "/api/token?renew=1"), RS_TAG_UPDATE | RS_TAG_NONDET);
    assert_int_equal(rs_tags_classify(t, "DELETE", "/api/token"), RS_TAG_UPDATE | RS_TAG_NONDET);
    assert_int_equal(rs_tags_classify(t, "GET", "/?_task=mail&_action=list&_mbox=INBOX"), 0);
    assert_int_equal(rs_tags_classify(t, "GET", "/?_task=mail&_action=send&_id=1"),
                     RS_TAG_UPDATE | RS_TAG_NONDET);
    /* '?' matches exactly one character. */
    assert_int_equal(rs_tags_classify(t, "POST", "/img/ab.png"), 0);
    assert_int_equal(rs_tags_classify(t, "POST", "/img/abc.png"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, "M-SEARCH", "*"), RS_TAG_NONDET);
    /* Method must match exactly (case matters in HTTP). */
    assert_int_equal(rs_tags_classify(t, "get", "/api/counter"), RS_TAG_UPDATE);
}

static void first_match_wins(void **state)
{
    static const char text[] =
        "GET /a/* update nondeterministic\n"
        "GET /a/b read-only deterministic\n"
        "*   /a/b update deterministic\n";
    struct rs_tags *t = *state;

    assert_int_equal(rs_tags_parse(t, text, strlen(text), NULL), 3);
    assert_int_equal(rs_tags_classify(t, "GET", "/a/b"), RS_TAG_UPDATE | RS_TAG_NONDET);
    assert_int_equal(rs_tags_classify(t, "HEAD", "/a/b"), RS_TAG_UPDATE);
}

static void defaults(void **state)
{
    static const char comments[] = "# only\n\n   \n\t# more\n";
    struct rs_tags *t = *state;
    int line = -1;

    assert_int_equal(rs_tags_parse(t, NULL, 0, &line), 0);
    assert_int_equal(line, 0);
    assert_int_equal(rs_tags_parse(t, comments, strlen(comments), &line), 0);
    assert_int_equal(rs_tags_classify(t, "GET", "/anything"), 0);
    assert_int_equal(rs_tags_classify(t, "HEAD", "/anything"), 0);
    assert_int_equal(rs_tags_classify(t, "POST", "/anything"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, "PUT", "/"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, "OPTIONS", "*"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, NULL, NULL), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(NULL, "GET", "/"), 0);
    rs_tags_init(t);
    assert_int_equal(t->n, 0);
}

static void errors_give_line(void **state)
{
    static const struct {
        const char *text;
        int line;
    } bad[] = {
        { "GET /a read-only\n", 1 },                                  /* missing word */
        { "GET /a read-only deterministic extra\n", 1 },
        { "# c\nGET /a readonly deterministic\n", 2 },                /* unknown word */
        { "GET /a update read-only\n", 1 },                           /* two kinds */
        { "GET /a deterministic nondeterministic\n", 1 },
        { "\n\nget /a update deterministic\n", 3 },                   /* lower-case method */
        { "G3T /a update deterministic\n", 1 },
        { "VERYLONGMETHODNAME /a update deterministic\n", 1 },
        { "GET\n", 1 },
        { "GET /a update\tdeterministic\nPOST /b update deterministic\nPUT /c\n", 3 },
    };
    struct rs_tags *t = *state;
    int line;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        line = -1;
        assert_int_equal(rs_tags_parse(t, bad[i].text, strlen(bad[i].text), &line), -EINVAL);
        assert_int_equal(line, bad[i].line);
        /* A failed parse leaves no half rule set behind. */
        assert_int_equal(t->n, 0);
        assert_int_equal(rs_tags_classify(t, "GET", "/a"), 0);
    }
    /* A NUL inside the text. */
    assert_int_equal(rs_tags_parse(t, "GET /a\0 update deterministic\n", 29, &line), -EINVAL);
    assert_int_equal(line, 1);
    assert_int_equal(rs_tags_parse(t, "x", 1, NULL), -EINVAL);
}

static void bounds(void **state)
{
    struct rs_tags *t = *state;
    size_t cap = (RS_TAGS_MAX_RULES + 2) * (RS_TAGS_PATTERN_MAX + 64);
    char *text = malloc(cap), pat[RS_TAGS_PATTERN_MAX + 1];
    size_t len = 0;
    int line;

    assert_non_null(text);
    /* Longest pattern accepted, one more byte refused. */
    memset(pat, 'p', sizeof(pat));
    pat[0] = '/';
    pat[RS_TAGS_PATTERN_MAX - 1] = '\0';
    len = (size_t)snprintf(text, cap, "POST %s read-only deterministic\n", pat);
    assert_int_equal(rs_tags_parse(t, text, len, &line), 1);
    assert_int_equal(rs_tags_classify(t, "POST", pat), 0);
    pat[RS_TAGS_PATTERN_MAX - 1] = 'p';
    pat[RS_TAGS_PATTERN_MAX] = '\0';
    len = (size_t)snprintf(text, cap, "# x\nPOST %s read-only deterministic\n", pat);
    assert_int_equal(rs_tags_parse(t, text, len, &line), -EINVAL);
    assert_int_equal(line, 2);

    /* Exactly RS_TAGS_MAX_RULES rules fit; the next is refused. */
    len = 0;
    for (int i = 0; i < RS_TAGS_MAX_RULES; i++)
        len += (size_t)snprintf(text + len, cap - len, "GET /r%d update deterministic\n", i);
    assert_int_equal(rs_tags_parse(t, text, len, &line), RS_TAGS_MAX_RULES);
    assert_int_equal(rs_tags_classify(t, "GET", "/r255"), RS_TAG_UPDATE);
    assert_int_equal(rs_tags_classify(t, "GET", "/r256"), 0);
    len += (size_t)snprintf(text + len, cap - len, "# comments do not count\n");
    assert_int_equal(rs_tags_parse(t, text, len, &line), RS_TAGS_MAX_RULES);
    len += (size_t)snprintf(text + len, cap - len, "GET /r256 update deterministic\n");
    assert_int_equal(rs_tags_parse(t, text, len, &line), -ENOSPC);
    assert_int_equal(line, RS_TAGS_MAX_RULES + 2);
    assert_int_equal(t->n, 0);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(parse_and_classify, setup, teardown),
        cmocka_unit_test_setup_teardown(first_match_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(errors_give_line, setup, teardown),
        cmocka_unit_test_setup_teardown(bounds, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
