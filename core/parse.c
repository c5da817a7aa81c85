/* Command-line quantity parsing (see parse.h). */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Parses a non-negative finite number at the start of 'text'; '*end' points
 * past it.  Returns 0 or -EINVAL. */
static int parse_number__(const char *text, double *v, const char **end)
{
    char *e;

    if (!text || !((*text >= '0' && *text <= '9') || *text == '.'))
        return -EINVAL;
    errno = 0;
    *v = strtod(text, &e);
    if (errno || e == text || !isfinite(*v) || *v < 0)
        return -EINVAL;
    *end = e;
    return 0;
}

int rs_parse_duration(const char *text, uint64_t *ns)
{
    static const struct { const char *unit; double scale; } units[] = {
        { "ns", 1 }, { "us", 1e3 }, { "ms", 1e6 }, { "s", 1e9 }, { "", 1e6 },
    };
    const char *end;
    double v;

    if (parse_number__(text, &v, &end))
        return -EINVAL;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double t = v * units[i].scale;
            if (t >= 9.2e18)
                return -EINVAL;
            *ns = (uint64_t)llround(t);
            return 0;
        }
    }
    return -EINVAL;
}

int rs_parse_prob(const char *text, double *prob)
{
    const char *end;
    double v;

    if (parse_number__(text, &v, &end))
        return -EINVAL;
    if (strcmp(end, "%") == 0)
        v /= 100.0;
    else if (*end)
        return -EINVAL;
    if (v > 1.0)
        return -EINVAL;
    *prob = v;
    return 0;
}

int rs_parse_size(const char *text, uint64_t *bytes)
{
    uint64_t v = 0, mult = 1;
    const char *p = text;

    if (!p || *p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > UINT64_MAX / 10 || (v == UINT64_MAX / 10 && d > UINT64_MAX % 10))
            return -EINVAL;
        v = v * 10 + d;
    }
    switch (*p) {
    case '\0': break;
    case 'k': case 'K': mult = 1ull << 10; p++; break;
    case 'M': mult = 1ull << 20; p++; break;
    case 'G': mult = 1ull << 30; p++; break;
    default: return -EINVAL;
    }
    if (*p || (v && mult > UINT64_MAX / v))
        return -EINVAL;
    *bytes = v * mult;
    return 0;
}

int rs_parse_crash_at(const char *text, int *num, uint64_t *off)
{
    unsigned long n;
    unsigned long long b = 0;
    char *end;

    if (!isdigit((unsigned char)text[0]))
        return -EINVAL;
    errno = 0;
    n = strtoul(text, &end, 10);
    if (*end == '+') {
        const char *bs = end + 1;

        if (!isdigit((unsigned char)*bs))
            return -EINVAL;
        b = strtoull(bs, &end, 10);
    }
    if (*end || errno || n > 65535)
        return -EINVAL;
    *num = (int)n;
    *off = b;
    return 0;
}
