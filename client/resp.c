/* rs-client's response reader: libhttp-parser does the HTTP; this file
 * keeps the headers, streams the body through the length/content/sha256
 * checks, keeps a bounded prefix, and finally verifies and captures. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client.h"
#include "content.h"

static struct rs_cl_resp *resp__(http_parser *p)
{
    return p->data;
}

static int on_message_begin__(http_parser *p)
{
    struct rs_cl_resp *r = resp__(p);

    /* A 1xx interim response was just completed: start over. */
    r->n_hdr = 0;
    r->htext_used = 0;
    r->in_value = false;
    r->headers_done = false;
    memset(&r->hdr[0], 0, sizeof(r->hdr[0]));
    return 0;
}

/* Appends a piece of the current header's name or value.  http_parser
 * calls back name, value, name, value ... (a value callback, maybe empty,
 * always follows a name), and pieces of one name or value arrive back to
 * back, so each stays contiguous in 'htext'.  Headers beyond the bounds are
 * dropped and marked, not fatal: they may be ones nobody reads. */
static void hdr_add__(struct rs_cl_resp *r, const char *at, size_t len, bool value)
{
    struct rs_cl_hdr *h;

    if (!value && r->in_value) {
        r->in_value = false;
        r->n_hdr++;             /* the previous header is complete */
        if (r->n_hdr < RS_CL_RESP_HEADERS)
            memset(&r->hdr[r->n_hdr], 0, sizeof(r->hdr[0]));
    }
    if (r->n_hdr >= RS_CL_RESP_HEADERS) {
        r->bad_header = true;
        return;
    }
    h = &r->hdr[r->n_hdr];
    if (!value && h->name_len == 0)
        h->name = r->htext_used;
    if (value && !r->in_value) {
        r->in_value = true;
        h->value = r->htext_used;
        h->value_len = 0;
    }
    if (len > RS_CL_HEADER_TEXT - r->htext_used) {
        r->bad_header = true;
        return;
    }
    memcpy(r->htext + r->htext_used, at, len);
    r->htext_used += (uint32_t)len;
    if (value)
        h->value_len += (uint32_t)len;
    else
        h->name_len += (uint32_t)len;
}

static int on_header_field__(http_parser *p, const char *at, size_t len)
{
    hdr_add__(resp__(p), at, len, false);
    return 0;
}

static int on_header_value__(http_parser *p, const char *at, size_t len)
{
    hdr_add__(resp__(p), at, len, true);
    return 0;
}

static int on_headers_complete__(http_parser *p)
{
    struct rs_cl_resp *r = resp__(p);

    if (r->in_value) {
        r->in_value = false;
        r->n_hdr++;
    }
    if (r->n_hdr > RS_CL_RESP_HEADERS)
        r->n_hdr = RS_CL_RESP_HEADERS;
    r->status = p->status_code;
    r->headers_done = true;
    /* 1 tells http_parser there is no body, whatever the headers say. */
    return r->head && p->status_code >= 200 ? 1 : 0;
}

static int on_body__(http_parser *p, const char *at, size_t len)
{
    struct rs_cl_resp *r = resp__(p);
    const struct rs_trace_step *st = r->step;

    if (st->check_content && r->content_bad < 0) {
        int64_t bad = rs_content_check(st->content_seed, r->body_bytes, (const uint8_t *)at, len);
        if (bad >= 0)
            r->content_bad = bad;
    }
    if (st->check_sha256)
        crypto_hash_sha256_update(&r->sha, (const unsigned char *)at, len);
    if (r->keep && r->body_len < RS_CL_BODY_KEEP) {
        size_t take = len < RS_CL_BODY_KEEP - r->body_len ? len : RS_CL_BODY_KEEP - r->body_len;
        if (r->body_len + take > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 16384;
            while (cap < r->body_len + take)
                cap *= 2;
            if (cap > RS_CL_BODY_KEEP)
                cap = RS_CL_BODY_KEEP;
            uint8_t *nb = realloc(r->body, cap);
            if (!nb) {
                take = 0;       /* out of memory: keep what we have */
            } else {
                r->body = nb;
                r->body_cap = cap;
            }
        }
        memcpy(r->body + r->body_len, at, take);
        r->body_len += take;
    }
    r->body_bytes += len;
    return 0;
}

static int on_message_complete__(http_parser *p)
{
    struct rs_cl_resp *r = resp__(p);

    if (p->status_code >= 100 && p->status_code < 200 && p->status_code != 101)
        return 0;               /* interim: the final response follows */
    r->done = true;
    r->keep_alive = http_should_keep_alive(p) != 0;
    /* Stop here: bytes after the response are not ours to parse. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings__ = {
    .on_message_begin = on_message_begin__,
    .on_header_field = on_header_field__,
    .on_header_value = on_header_value__,
    .on_headers_complete = on_headers_complete__,
    .on_body = on_body__,
    .on_message_complete = on_message_complete__,
};

void rs_cl_resp_init(struct rs_cl_resp *r, const struct rs_trace_step *step, bool head)
{
    uint8_t *body = r->body;
    size_t cap = r->body_cap;

    http_parser_init(&r->parser, HTTP_RESPONSE);
    r->parser.data = r;
    r->step = step;
    r->head = head;
    r->keep = step->n_contains > 0;
    for (unsigned k = 0; k < step->n_captures; k++)
        if (step->captures[k].src == RS_TRACE_CAP_BODY)
            r->keep = true;
    r->headers_done = r->done = r->bad_header = r->keep_alive = false;
    r->status = 0;
    r->body_bytes = 0;
    r->n_hdr = 0;
    r->in_value = false;
    r->htext_used = 0;
    memset(&r->hdr[0], 0, sizeof(r->hdr[0]));
    r->content_bad = -1;
    if (step->check_sha256)
        crypto_hash_sha256_init(&r->sha);
    r->body = body;             /* the buffer is reused across requests */
    r->body_cap = cap;
    r->body_len = 0;
}

void rs_cl_resp_free(struct rs_cl_resp *r)
{
    free(r->body);
    r->body = NULL;
    r->body_cap = r->body_len = 0;
}

int rs_cl_resp_feed(struct rs_cl_resp *r, const char *data, size_t len, size_t *used)
{
    size_t n = http_parser_execute(&r->parser, &settings__, data, len);

    *used = n;
    if (r->done)
        return 1;
    if (HTTP_PARSER_ERRNO(&r->parser) != HPE_OK)
        return -EPROTO;
    if (r->parser.upgrade)
        return -EPROTO;         /* 101 / upgrade: no longer HTTP for us */
    return 0;
}

int rs_cl_resp_eof(struct rs_cl_resp *r)
{
    if (r->done)
        return 1;
    http_parser_execute(&r->parser, &settings__, NULL, 0);
    return r->done ? 1 : 0;
}

const char *rs_cl_resp_error(const struct rs_cl_resp *r)
{
    if (r->parser.upgrade)
        return "protocol upgrade";
    return http_errno_description(HTTP_PARSER_ERRNO(&r->parser));
}

const char *rs_cl_resp_header(const struct rs_cl_resp *r, const char *name, unsigned *from,
                              size_t *len)
{
    size_t nl = strlen(name);

    for (unsigned i = *from; i < r->n_hdr; i++) {
        const struct rs_cl_hdr *h = &r->hdr[i];
        if (h->name_len == nl && strncasecmp(r->htext + h->name, name, nl) == 0) {
            *from = i + 1;
            *len = h->value_len;
            return r->htext + h->value;
        }
    }
    *from = r->n_hdr;
    return NULL;
}

/* Runs 're' over 'len' bytes at 's' (NULs allowed, REG_STARTEND) and stores
 * group 1, or the whole match without groups, into 'name'.
 * Returns 1 on a stored match, 0 on no match, <0 when the value is refused. */
static int capture__(const regex_t *re, const char *s, size_t len, struct rs_trace_vars *vars,
                     const char *name)
{
    regmatch_t m[2];
    const regmatch_t *g;

    m[0].rm_so = 0;
    m[0].rm_eo = (regoff_t)len;
    if (regexec(re, s, 2, m, REG_STARTEND) != 0)
        return 0;
    g = (re->re_nsub >= 1 && m[1].rm_so >= 0) ? &m[1] : &m[0];
    return rs_trace_vars_set(vars, name, s + g->rm_so, (size_t)(g->rm_eo - g->rm_so)) ? -1 : 1;
}

enum rs_cl_result rs_cl_resp_verify(struct rs_cl_resp *r, const struct rs_trace *t,
                                    const regex_t *re, struct rs_trace_vars *vars,
                                    char *why, size_t why_len)
{
    const struct rs_trace_step *st = r->step;

    if (r->status < st->status_lo || r->status > st->status_hi) {
        snprintf(why, why_len, "status %d, want %u..%u", r->status, st->status_lo, st->status_hi);
        return RS_CL_BAD_STATUS;
    }
    if (st->length >= 0 && r->body_bytes != (uint64_t)st->length) {
        snprintf(why, why_len, "body %llu bytes, want %lld",
                 (unsigned long long)r->body_bytes, (long long)st->length);
        return RS_CL_BAD_LENGTH;
    }
    if (st->check_content && r->content_bad >= 0) {
        snprintf(why, why_len, "content seed=%llu wrong at byte %lld",
                 (unsigned long long)st->content_seed, (long long)r->content_bad);
        return RS_CL_BAD_CONTENT;
    }
    if (st->check_sha256) {
        uint8_t h[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_final(&r->sha, h);
        if (memcmp(h, st->sha256, sizeof(h)) != 0) {
            snprintf(why, why_len, "sha256 mismatch over %llu body bytes",
                     (unsigned long long)r->body_bytes);
            return RS_CL_BAD_CONTENT;
        }
    }
    for (unsigned k = 0; k < st->n_contains; k++) {
        const char *text = rs_trace_text(t, st->contains[k].text);
        char small[512], *want = small;
        int n = rs_trace_subst(vars, text, strlen(text), small, sizeof(small), NULL);
        bool found;

        if (n < 0) {
            snprintf(why, why_len, "line %u: expect contains: placeholder not set",
                     st->contains[k].line);
            return RS_CL_BAD_TRACE;
        }
        if ((size_t)n >= sizeof(small)) {
            want = malloc((size_t)n + 1);
            if (!want || rs_trace_subst(vars, text, strlen(text), want, (size_t)n + 1, NULL) != n) {
                free(want);
                snprintf(why, why_len, "out of memory");
                return RS_CL_BAD_TRACE;
            }
        }
        found = n == 0 || (r->body_len && memmem(r->body, r->body_len, want, (size_t)n));
        if (!found)
            snprintf(why, why_len, "line %u: body%s lacks \"%.60s\"", st->contains[k].line,
                     r->body_bytes > r->body_len ? " (first MiB)" : "", want);
        if (want != small)
            free(want);
        if (!found)
            return RS_CL_MISSING_MARKER;
    }
    for (unsigned k = 0; k < st->n_captures; k++) {
        const struct rs_trace_capture *c = &st->captures[k];
        int got = 0;

        if (c->src == RS_TRACE_CAP_BODY) {
            got = capture__(&re[k], r->body ? (const char *)r->body : "", r->body_len, vars,
                            c->name);
        } else {
            unsigned from = 0;
            size_t len;
            const char *v;
            while (!got && (v = rs_cl_resp_header(r, rs_trace_text(t, c->header), &from, &len)))
                got = capture__(&re[k], v, len, vars, c->name);
        }
        if (got <= 0) {
            snprintf(why, why_len, "line %u: capture %s %s", c->line, c->name,
                     got < 0 ? "value too long or dictionary full" : "did not match");
            return RS_CL_BAD_CAPTURE;
        }
    }
    return RS_CL_OK;
}
