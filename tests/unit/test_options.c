/* Unit tests for common/options.c: every kind of value, both spellings,
 * help, and each way a command line can be wrong. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "daemon.h"
#include "options.h"

static int usage_calls;
static void usage(FILE *f) { (void)f; usage_calls++; }

static int odd_only(const char *v, void *dst)
{
    int n = v[0] - '0';

    if (strlen(v) != 1 || n < 0 || n > 9 || n % 2 == 0)
        return -EINVAL;
    *(int *)dst = n;
    return 0;
}

struct vals {
    bool flag, addr_given;
    const char *str;
    struct rs_addr addr;
    uint64_t dur, size;
    uint32_t u;
    int odd;
};

static int parse(struct vals *v, int argc, char **argv)
{
    const struct rs_opt opts[] = {
        RS_OPTION("flag", RS_OPT_FLAG, &v->flag),
        RS_OPTION("str", RS_OPT_STR, &v->str),
        RS_OPTION("addr", RS_OPT_ADDR, &v->addr, .given = &v->addr_given),
        RS_OPTION("dur", RS_OPT_DURATION, &v->dur, .nonzero = true),
        RS_OPTION("size", RS_OPT_SIZE, &v->size),
        RS_OPTION("u", RS_OPT_U32, &v->u, .short_name = 'u'),
        RS_OPTION("odd", RS_OPT_FN, &v->odd, .want = "an odd digit", .fn = odd_only),
        RS_OPTIONS_END,
    };

    memset(v, 0, sizeof(*v));
    return rs_opts_parse("test", argc, argv, opts, usage);
}

static void every_kind_both_spellings(void **state)
{
    char *argv[] = { "prog", "--flag", "--str", "hello", "--addr=10.0.0.1:80", "--dur", "10ms", "--size=64k",
                     "-u", "7", "--odd=3" };
    struct vals v;

    (void)state;
    assert_int_equal(parse(&v, 11, argv), 0);
    assert_true(v.flag);
    assert_string_equal(v.str, "hello");
    assert_true(v.addr_given);
    assert_int_equal(v.addr.ip, 0x0a000001u);
    assert_int_equal(v.addr.port, 80);
    assert_int_equal(v.dur, 10000000u);
    assert_int_equal(v.size, 65536);
    assert_int_equal(v.u, 7);
    assert_int_equal(v.odd, 3);
}

static void help_and_errors(void **state)
{
    char *help[] = { "prog", "--u", "1", "--help" };
    char *unknown[] = { "prog", "--nope", "1" };
    char *missing[] = { "prog", "--str" };
    char *stray[] = { "prog", "stray" };
    char *short_bad[] = { "prog", "-x", "1" };
    char *short_missing[] = { "prog", "-u" };
    char *flagval[] = { "prog", "--flag=1" };
    char *bad[][3] = { { "prog", "--addr", "10.0.0.1" }, { "prog", "--dur", "0" }, { "prog", "--dur", "x" },
                       { "prog", "--size", "-1" }, { "prog", "--u", "4294967296" }, { "prog", "--u", "-3" },
                       { "prog", "--odd", "4" } };
    struct vals v;

    (void)state;
    usage_calls = 0;
    assert_int_equal(parse(&v, 4, help), 1);
    assert_int_equal(usage_calls, 1);
    assert_int_equal(rs_opts_exit(1), 0);
    assert_int_equal(parse(&v, 3, unknown), 2);
    assert_int_equal(usage_calls, 2);
    assert_int_equal(parse(&v, 2, missing), 2);
    assert_int_equal(parse(&v, 2, stray), 2);
    assert_int_equal(parse(&v, 2, flagval), 2);
    assert_int_equal(parse(&v, 3, short_bad), 2);
    assert_int_equal(parse(&v, 2, short_missing), 2);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(parse(&v, 3, bad[i]), 2);
    assert_false(v.addr_given);
}

static int word(const char *v, void *dst)
{
    if (strcmp(v, "go"))
        return -EINVAL;
    ++*(int *)dst;
    return 0;
}

/* A table with a "" entry takes words (a command) and refuses others. */
static void words(void **state)
{
    int n = 0;
    bool flag = false;
    const struct rs_opt opts[] = {
        RS_OPTION("", RS_OPT_FN, &n, .fn = word),
        RS_OPTION("flag", RS_OPT_FLAG, &flag),
        RS_OPTIONS_END,
    };
    char *good[] = { "prog", "go", "--flag", "go" };
    char *bad[] = { "prog", "stop" };

    (void)state;
    assert_int_equal(rs_opts_parse("test", 4, good, opts, usage), 0);
    assert_int_equal(n, 2);
    assert_true(flag);
    assert_int_equal(rs_opts_parse("test", 2, bad, opts, usage), 2);
}

/* "[ID=]ADDR:PORT" (common/daemon.c), as --backend and --peer take it. */
static void id_and_address(void **state)
{
    struct rs_addr a;
    uint32_t id = 7;

    (void)state;
    assert_int_equal(rs_id_addr_parse("10.0.0.12:7073", 15, &id, &a), 0);
    assert_int_equal(id, 0);
    assert_int_equal(a.ip, 0x0a00000cu);
    assert_int_equal(a.port, 7073);
    assert_int_equal(rs_id_addr_parse("3=10.0.0.13:8080", 15, &id, &a), 0);
    assert_int_equal(id, 3);
    assert_int_equal(a.port, 8080);
    assert_int_equal(rs_id_addr_parse("15=1.2.3.4:1", 15, &id, &a), 0);
    assert_int_equal(rs_id_addr_parse("16=1.2.3.4:1", 15, &id, &a), -EINVAL);    /* over the bound */
    assert_int_equal(rs_id_addr_parse("0=1.2.3.4:1", 15, &id, &a), -EINVAL);     /* ids start at 1 */
    assert_int_equal(rs_id_addr_parse("=1.2.3.4:1", 15, &id, &a), -EINVAL);
    assert_int_equal(rs_id_addr_parse("x=1.2.3.4:1", 15, &id, &a), -EINVAL);
    assert_int_equal(rs_id_addr_parse("12345678901234567=1.2.3.4:1", UINT32_MAX, &id, &a), -EINVAL);
    assert_int_equal(rs_id_addr_parse("3=1.2.3.4", 15, &id, &a), -EINVAL);        /* no port */
    assert_int_equal(rs_id_addr_parse(NULL, 15, &id, &a), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_kind_both_spellings),
        cmocka_unit_test(help_and_errors),
        cmocka_unit_test(words),
        cmocka_unit_test(id_and_address),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
