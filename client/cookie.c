/* rs-client's cookie jar: Set-Cookie in, Cookie out, for the one host a
 * replaying connection talks to (see client.h for what is ignored). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client.h"

void rs_cl_jar_clear(struct rs_cl_jar *jar)
{
    jar->n = 0;
}

static void trim__(const char **s, const char **e)
{
    while (*s < *e && (**s == ' ' || **s == '\t'))
        (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
        (*e)--;
}

/* Parses an HTTP date as servers write it in Expires (RFC 1123, the
 * Netscape "dd-Mon-yyyy" form PHP sends, and RFC 850).  Returns 0 or -1. */
static int http_date__(const char *s, size_t len, int64_t *t)
{
    static const char *const fmts[] = {
        "%a, %d %b %Y %H:%M:%S GMT", "%a, %d-%b-%Y %H:%M:%S GMT",
        "%A, %d-%b-%y %H:%M:%S GMT",
    };
    char buf[64];

    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(buf, fmts[i], &tm);
        if (end && *end == '\0') {
            *t = (int64_t)timegm(&tm);
            return 0;
        }
    }
    return -1;
}

static int find__(const struct rs_cl_jar *jar, const char *name, size_t len)
{
    for (unsigned i = 0; i < jar->n; i++)
        if (strlen(jar->c[i].name) == len && memcmp(jar->c[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

int rs_cl_jar_set(struct rs_cl_jar *jar, const char *hdr, size_t len, time_t now)
{
    const char *end = hdr + len, *semi = memchr(hdr, ';', len);
    const char *ns = hdr, *ne = semi ? semi : end, *eq, *vs, *ve;
    bool have_max_age = false, expired = false;
    int64_t expires = 0;
    int i;

    eq = memchr(ns, '=', (size_t)(ne - ns));
    if (!eq)
        return -EINVAL;
    vs = eq + 1;
    ve = ne;
    trim__(&vs, &ve);
    trim__(&ns, &eq);
    if (eq == ns)
        return -EINVAL;
    if ((size_t)(eq - ns) >= RS_CL_COOKIE_NAME || (size_t)(ve - vs) >= RS_CL_COOKIE_VALUE)
        return -E2BIG;
    /* Attributes: only the lifetime matters here.  Max-Age wins over
     * Expires (RFC 6265 5.3 step 3). */
    for (const char *a = semi; a && a < end;) {
        const char *as = a + 1, *ae = memchr(as, ';', (size_t)(end - as));
        const char *next = ae;
        if (!ae)
            ae = end;
        trim__(&as, &ae);
        const char *aeq = memchr(as, '=', (size_t)(ae - as));
        const char *kv = aeq ? aeq + 1 : ae, *ke = aeq ? aeq : ae;
        trim__(&as, &ke);
        trim__(&kv, &ae);
        if ((size_t)(ke - as) == 7 && strncasecmp(as, "max-age", 7) == 0 && aeq) {
            char num[24];
            size_t nl = (size_t)(ae - kv);
            if (nl && nl < sizeof(num)) {
                char *e;
                memcpy(num, kv, nl);
                num[nl] = '\0';
                long long v = strtoll(num, &e, 10);
                if (*e == '\0') {
                    have_max_age = true;
                    expired = v <= 0;
                    expires = v > 0 ? (int64_t)now + v : 0;
                }
            }
        } else if (!have_max_age && (size_t)(ke - as) == 7 &&
                   strncasecmp(as, "expires", 7) == 0 && aeq) {
            int64_t t;
            if (http_date__(kv, (size_t)(ae - kv), &t) == 0) {
                expired = t <= (int64_t)now;
                expires = t;
            }
        }
        a = next;
    }
    i = find__(jar, ns, (size_t)(eq - ns));
    if (expired) {
        if (i >= 0)
            jar->c[i] = jar->c[--jar->n];
        return 1;
    }
    if (i < 0) {
        if (jar->n >= RS_CL_COOKIES)
            return -ENOSPC;
        i = (int)jar->n++;
        memcpy(jar->c[i].name, ns, (size_t)(eq - ns));
        jar->c[i].name[eq - ns] = '\0';
    }
    memcpy(jar->c[i].value, vs, (size_t)(ve - vs));
    jar->c[i].value[ve - vs] = '\0';
    jar->c[i].expires = expires;
    return 0;
}

size_t rs_cl_jar_header(const struct rs_cl_jar *jar, time_t now, char *out, size_t out_size)
{
    size_t n = 0;

    if (out_size)
        out[0] = '\0';
    for (unsigned i = 0; i < jar->n; i++) {
        const struct rs_cl_cookie *c = &jar->c[i];
        if (c->expires && c->expires <= (int64_t)now)
            continue;
        int w = snprintf(out && n < out_size ? out + n : NULL, n < out_size ? out_size - n : 0,
                         "%s%s=%s", n ? "; " : "", c->name, c->value);
        if (w > 0)
            n += (size_t)w;
    }
    return n;
}
