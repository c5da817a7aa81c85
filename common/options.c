/* The one command-line parser of the daemons (options.h). */
#include "options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "parse.h"

static const char *const kind_want[] = {
    [RS_OPT_FLAG] = "no value",
    [RS_OPT_STR] = "text",
    [RS_OPT_ADDR] = "IPv4ADDR:PORT",
    [RS_OPT_DURATION] = "a duration, e.g. 10ms",
    [RS_OPT_SIZE] = "a size, e.g. 64k",
    [RS_OPT_U32] = "a number",
    [RS_OPT_FN] = "another value",
};

static int parse_u32(const char *v, uint32_t *out)
{
    char *end;
    unsigned long n;

    if (*v < '0' || *v > '9')
        return -EINVAL;
    errno = 0;
    n = strtoul(v, &end, 10);
    if (*end || errno || n > UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)n;
    return 0;
}

/* Stores 'v' for option 'o'.  Returns 0 or -EINVAL. */
static int store(const struct rs_opt *o, const char *v)
{
    switch (o->kind) {
    case RS_OPT_FLAG:
        *(bool *)o->dst = true;
        return 0;
    case RS_OPT_STR:
        *(const char **)o->dst = v;
        return 0;
    case RS_OPT_ADDR:
        return rs_addr_parse(v, o->dst) < 0 ? -EINVAL : 0;
    case RS_OPT_DURATION:
        return rs_parse_duration(v, o->dst) < 0 || (o->nonzero && !*(uint64_t *)o->dst) ? -EINVAL : 0;
    case RS_OPT_SIZE:
        return rs_parse_size(v, o->dst) < 0 || (o->nonzero && !*(uint64_t *)o->dst) ? -EINVAL : 0;
    case RS_OPT_U32:
        return parse_u32(v, o->dst) < 0 || (o->nonzero && !*(uint32_t *)o->dst) ? -EINVAL : 0;
    case RS_OPT_FN:
        return o->fn(v, o->dst) < 0 ? -EINVAL : 0;
    }
    return -EINVAL;
}

/* The entry for argument 'a' ("--name", "--name=value", "-c"), or NULL;
 * '*eq' gets the value after '=' (NULL without one). */
static const struct rs_opt *find(const struct rs_opt *opts, const char *a, const char **eq)
{
    const struct rs_opt *o;
    size_t len;

    *eq = NULL;
    if (a[1] != '-') {
        for (o = opts; o->name; o++)
            if (a[2] == '\0' && o->short_name == a[1])
                return o;
        return NULL;
    }
    *eq = strchr(a + 2, '=');
    len = *eq ? (size_t)(*eq - a - 2) : strlen(a + 2);
    for (o = opts; o->name; o++)
        if (o->name[0] && strlen(o->name) == len && !strncmp(o->name, a + 2, len))
            return o;
    return NULL;
}

int rs_opts_parse(const char *prog, int argc, char **argv, const struct rs_opt *opts, void (*usage)(FILE *))
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq, *v = "";
        const struct rs_opt *o;

        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (a[0] != '-' || !a[1]) {             /* a word: the table's "" entry takes it */
            for (o = opts; o->name && o->name[0]; o++)
                ;
            if (o->name && o->fn(a, o->dst) == 0)
                continue;
            fprintf(stderr, "%s: unexpected argument '%s'\n", prog, a);
            if (o->name)
                usage(stderr);
            return 2;
        }
        if (!(o = find(opts, a, &eq))) {
            fprintf(stderr, "%s: unknown option %.*s\n", prog, eq ? (int)(eq - a) : (int)strlen(a), a);
            usage(stderr);
            return 2;
        }
        if (o->kind == RS_OPT_FLAG && eq) {
            fprintf(stderr, "%s: --%s takes no value\n", prog, o->name);
            return 2;
        }
        if (o->kind != RS_OPT_FLAG) {
            if (!eq && i + 1 >= argc) {
                fprintf(stderr, "%s: --%s needs a value (%s)\n", prog, o->name,
                        o->want ? o->want : kind_want[o->kind]);
                return 2;
            }
            v = eq ? eq + 1 : argv[++i];
        }
        if (store(o, v) < 0) {
            fprintf(stderr, "%s: bad --%s '%s' (want %s)\n", prog, o->name, v, o->want ? o->want : kind_want[o->kind]);
            return 2;
        }
        if (o->given)
            *o->given = true;
    }
    return 0;
}
