/* SMTP/IMAP unit splitting, command and reply naming, transaction markers
 * and catch-up planning for the aux logger (see auxproto.h). */
#include "auxproto.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

enum { S_LINE, S_LITERAL, S_DATA, S_WAIT, S_FAIL };

#define MARKER_LABEL "x-resplice-txn-"
#define MARKER_KEY "x-resplice-txn"
/* The same marker on a re-run (after a failover): only these are replayed. */
#define RERUN_LABEL "x-resplice-rerun-"
#define RERUN_KEY "x-resplice-rerun"

void rs_aux_split_init(struct rs_aux_split *s, enum rs_aux_proto proto, enum rs_aux_side side,
                       size_t max_line, size_t max_unit)
{
    memset(s, 0, sizeof(*s));
    s->proto = (uint8_t)proto;
    s->side = (uint8_t)side;
    s->state = S_LINE;
    s->greeting = side == RS_AUX_SERVER;
    s->max_line = max_line;
    s->max_unit = max_unit;
}

bool rs_aux_split_waiting(const struct rs_aux_split *s)
{
    return s->state == S_WAIT;
}

int rs_aux_split_data_reply(struct rs_aux_split *s, int code)
{
    if (s->state != S_WAIT)
        return -EINVAL;
    s->state = code == 354 ? S_DATA : S_LINE;
    return 0;
}

static int split_fail(struct rs_aux_split *s, int err)
{
    s->state = S_FAIL;
    return err;
}

/* Ends the unit at 'end': the caller drops buf[0, end). */
static int unit_end(struct rs_aux_split *s, size_t end, bool data, struct rs_aux_event *ev)
{
    ev->kind = RS_AUX_EV_UNIT;
    ev->start = 0;
    ev->end = end;
    ev->data = data;
    s->pos = s->line = s->seg = 0;
    s->multiline = false;
    s->greeting = false;
    return RS_AUX_EV_UNIT;
}

/* A line 'p' of 'len' bytes (no CRLF) ending in "{N}" or "{N+}": sets '*n'
 * and '*plus' and returns 1; 0 when it does not; -EMSGSIZE when N does not
 * fit 64 bits. */
static int literal_at_end(const uint8_t *p, size_t len, uint64_t *n, bool *plus)
{
    size_t i, digits = 0;
    uint64_t v = 0;

    if (len < 3 || p[len - 1] != '}')
        return 0;
    i = len - 1;
    *plus = p[i - 1] == '+';
    if (*plus)
        i--;
    while (i > 0 && isdigit(p[i - 1])) {
        i--;
        digits++;
    }
    if (!digits || i == 0 || p[i - 1] != '{')
        return 0;
    if (digits > 19)
        return -EMSGSIZE;
    for (size_t k = i; k < i + digits; k++)
        v = v * 10 + (uint64_t)(p[k] - '0');
    *n = v;
    return 1;
}

/* Length of the line content before its CR?LF ending at 'eol'. */
static size_t content_end(const uint8_t *buf, size_t seg, size_t eol)
{
    size_t e = eol - 1;
    if (e > seg && buf[e - 1] == '\r')
        e--;
    return e;
}

static bool word_is(const uint8_t *p, size_t len, const char *w)
{
    size_t n = strlen(w);
    return len >= n && strncasecmp((const char *)p, w, n) == 0 && (len == n || p[n] == ' ');
}

/* A physical line buf[seg, eol) is complete.  Returns 0 to go on, an event
 * or a negative error. */
static int line_done(struct rs_aux_split *s, const uint8_t *buf, size_t eol, struct rs_aux_event *ev)
{
    size_t ce = content_end(buf, s->seg, eol), clen = ce - s->seg;
    const uint8_t *c = buf + s->seg;

    if (s->proto == RS_AUX_SMTP) {
        if (s->side == RS_AUX_CLIENT) {
            if (s->state == S_DATA) {
                if (clen == 1 && c[0] == '.') {
                    s->state = S_LINE;
                    return unit_end(s, eol, true, ev);
                }
                s->seg = eol;
                return 0;
            }
            /* BDAT chunks are counted, not line-framed; rs-smtpd does not offer CHUNKING. */
            if (word_is(c, clen, "BDAT"))
                return split_fail(s, -EPROTO);
            if (clen == 4 && strncasecmp((const char *)c, "DATA", 4) == 0) {
                unit_end(s, eol, false, ev);
                s->state = S_WAIT;
                return RS_AUX_EV_UNIT;
            }
            return unit_end(s, eol, false, ev);
        }
        if (clen < 3 || !isdigit(c[0]) || !isdigit(c[1]) || !isdigit(c[2]) ||
            (clen > 3 && c[3] != ' ' && c[3] != '-'))
            return split_fail(s, -EPROTO);
        if (clen > 3 && c[3] == '-') {
            s->multiline = true;
            s->seg = eol;
            return 0;
        }
        return unit_end(s, eol, false, ev);
    }

    /* IMAP: a line ending in a literal continues after the literal's bytes. */
    uint64_t n;
    bool plus;
    int lit = literal_at_end(c, clen, &n, &plus);
    if (lit < 0)
        return split_fail(s, lit);
    if (lit) {
        if (n > s->max_unit)
            return split_fail(s, -EMSGSIZE);
        s->literal = n;
        s->state = n ? S_LITERAL : S_LINE;
        s->seg = eol;
        if (s->side == RS_AUX_CLIENT && !plus) {
            ev->kind = RS_AUX_EV_LITERAL;
            ev->start = s->line;
            ev->end = eol;
            ev->data = false;
            return RS_AUX_EV_LITERAL;
        }
        return 0;
    }
    if (s->side == RS_AUX_CLIENT)
        return unit_end(s, eol, false, ev);
    switch (buf[s->line]) {
    case '+':
        ev->kind = RS_AUX_EV_CONT;
        ev->start = s->line;
        ev->end = eol;
        ev->data = false;
        s->pos = s->seg = s->line;   /* the caller cuts the line out */
        return RS_AUX_EV_CONT;
    case '*':
        if (s->greeting)
            return unit_end(s, eol, false, ev);
        s->line = s->seg = eol;
        return 0;
    default:
        return unit_end(s, eol, false, ev);
    }
}

int rs_aux_split_scan(struct rs_aux_split *s, const uint8_t *buf, size_t len, struct rs_aux_event *ev)
{
    ev->kind = RS_AUX_EV_NEED;
    ev->start = ev->end = 0;
    ev->data = false;
    if (s->state == S_FAIL)
        return -EPROTO;
    if (s->state == S_WAIT)
        return RS_AUX_EV_NEED;
    while (s->pos < len) {
        if (s->state == S_LITERAL) {
            size_t take = len - s->pos;
            if ((uint64_t)take > s->literal)
                take = (size_t)s->literal;
            s->pos += take;
            s->literal -= take;
            if (s->literal == 0) {
                s->state = S_LINE;
                s->seg = s->pos;
            }
        } else {
            const uint8_t *nl = memchr(buf + s->pos, '\n', len - s->pos);
            if (!nl) {
                s->pos = len;
                if (s->pos - s->seg >= s->max_line)
                    return split_fail(s, -EMSGSIZE);
                break;
            }
            size_t eol = (size_t)(nl - buf) + 1;
            s->pos = eol;
            if (eol - s->seg > s->max_line)
                return split_fail(s, -EMSGSIZE);
            if (eol > s->max_unit)
                return split_fail(s, -EMSGSIZE);
            int r = line_done(s, buf, eol, ev);
            if (r != 0)
                return r;
            if (s->state == S_WAIT)
                return RS_AUX_EV_NEED;
        }
        if (s->pos > s->max_unit)
            return split_fail(s, -EMSGSIZE);
    }
    if (s->pos > s->max_unit)
        return split_fail(s, -EMSGSIZE);
    return RS_AUX_EV_NEED;
}

/* ---- Naming units ----------------------------------------------------- */

/* Length of the first line of 'p' without its CR?LF. */
static size_t first_line(const uint8_t *p, size_t len)
{
    const uint8_t *nl = memchr(p, '\n', len);
    size_t n = nl ? (size_t)(nl - p) : len;
    if (n && p[n - 1] == '\r')
        n--;
    return n;
}

/* Copies the word at p[*i] made of letters (and digits after the first)
 * into 'out' in upper case, appending to what is there.  Returns its
 * length, or -EINVAL when empty or too long. */
static int take_word(const uint8_t *p, size_t len, size_t *i, char *out, size_t cap)
{
    size_t o = strlen(out), start = *i;

    while (*i < len && (isalpha(p[*i]) || (*i > start && (isdigit(p[*i]) || p[*i] == '-')))) {
        if (o + 1 >= cap)
            return -EINVAL;
        out[o++] = (char)toupper(p[*i]);
        (*i)++;
    }
    out[o] = '\0';
    if (*i == start || (*i < len && p[*i] != ' '))
        return -EINVAL;
    return (int)(*i - start);
}

int rs_aux_cmd_parse(enum rs_aux_proto proto, const uint8_t *unit, size_t len, bool data,
                     struct rs_aux_cmd *cmd)
{
    size_t n = first_line(unit, len), i = 0;

    memset(cmd, 0, sizeof(*cmd));
    if (proto == RS_AUX_SMTP) {
        if (data) {
            cmd->data = true;
            return 0;
        }
        return take_word(unit, n, &i, cmd->verb, sizeof(cmd->verb)) < 0 ? -EINVAL : 0;
    }
    /* IMAP tag: ASTRING-CHAR except '+'; "*" and "+" start server lines. */
    while (i < n && unit[i] > ' ' && unit[i] < 0x7f && !strchr("(){%*\"\\+", unit[i])) {
        if (i + 1 >= sizeof(cmd->tag))
            return -EINVAL;
        cmd->tag[i] = (char)unit[i];
        i++;
    }
    if (i == 0 || i >= n || unit[i] != ' ')
        return -EINVAL;
    i++;
    if (take_word(unit, n, &i, cmd->verb, sizeof(cmd->verb)) < 0)
        return -EINVAL;
    if (strcmp(cmd->verb, "UID") == 0) {
        if (i >= n)
            return -EINVAL;
        i++;
        strcat(cmd->verb, " ");
        if (take_word(unit, n, &i, cmd->verb, sizeof(cmd->verb)) < 0)
            return -EINVAL;
    }
    return 0;
}

int rs_aux_reply_parse(enum rs_aux_proto proto, const uint8_t *unit, size_t len,
                       struct rs_aux_reply *r)
{
    size_t start, n, i = 0;
    const uint8_t *p;
    char status[RS_AUX_VERB_MAX] = "";

    memset(r, 0, sizeof(*r));
    if (len == 0)
        return -EINVAL;
    /* The last line starts after the last LF before the final one. */
    start = len - 1;
    while (start > 0 && unit[start - 1] != '\n')
        start--;
    p = unit + start;
    n = first_line(p, len - start);
    if (proto == RS_AUX_SMTP) {
        if (n < 3 || !isdigit(p[0]) || !isdigit(p[1]) || !isdigit(p[2]) || (n > 3 && p[3] != ' '))
            return -EINVAL;
        r->code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        r->ok = r->code >= 200 && r->code < 400;
        return 0;
    }
    while (i < n && p[i] != ' ') {
        if (i + 1 >= sizeof(r->tag))
            return -EINVAL;
        r->tag[i] = (char)p[i];
        i++;
    }
    if (i == 0 || i >= n || strcmp(r->tag, "+") == 0)
        return -EINVAL;
    i++;
    if (take_word(p, n, &i, status, sizeof(status)) < 0)
        return -EINVAL;
    if (strcmp(status, "OK") && strcmp(status, "NO") && strcmp(status, "BAD") &&
        strcmp(status, "PREAUTH") && strcmp(status, "BYE"))
        return -EINVAL;
    r->ok = strcmp(status, "OK") == 0 || strcmp(status, "PREAUTH") == 0;
    return 0;
}

bool rs_aux_cmd_same(const struct rs_aux_cmd *a, const struct rs_aux_cmd *b)
{
    return a->data == b->data && strcmp(a->verb, b->verb) == 0 && strcmp(a->tag, b->tag) == 0;
}

static bool verb_in(const struct rs_aux_cmd *c, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(c->verb, *list) == 0)
            return true;
    return false;
}

bool rs_aux_cmd_pre_marker(enum rs_aux_proto proto, const struct rs_aux_cmd *cmd)
{
    static const char *const imap[] = { "CAPABILITY", "NOOP", "ID", "LOGIN", "AUTHENTICATE",
                                        "ENABLE", NULL };
    return proto == RS_AUX_IMAP && verb_in(cmd, imap);
}

bool rs_aux_cmd_is_marker(enum rs_aux_proto proto, const struct rs_aux_cmd *cmd)
{
    static const char *const smtp[] = { "EHLO", "HELO", NULL }, *const imap[] = { "ID", NULL };
    return !cmd->data && verb_in(cmd, proto == RS_AUX_SMTP ? smtp : imap);
}

/* ---- Markers ---------------------------------------------------------- */

/* Reads "N" (decimal, at most 'max') at p[*i].  Returns 0 or -EINVAL. */
static int take_num(const uint8_t *p, size_t len, size_t *i, unsigned max, unsigned *v)
{
    size_t start = *i;

    *v = 0;
    while (*i < len && isdigit(p[*i]) && *i - start < 6) {
        *v = *v * 10 + (unsigned)(p[*i] - '0');
        (*i)++;
    }
    return *i == start || (*i < len && isdigit(p[*i])) || *v > max ? -EINVAL : 0;
}

static int smtp_marker(const uint8_t *p, size_t n, rs_txn_id *id)
{
    static const unsigned max[6] = { 255, 255, 255, 255, 65535, RS_TXN_NUM_MAX };
    const size_t pl = sizeof(MARKER_LABEL) - 1, rl = sizeof(RERUN_LABEL) - 1;
    unsigned v[6];
    size_t i = 5;
    int kind;

    /* "EHLO " is checked by the caller. */
    while (i < n && p[i] == ' ')
        i++;
    if (n - i >= pl && strncasecmp((const char *)p + i, MARKER_LABEL, pl) == 0) {
        kind = RS_AUX_MARKER_TXN;
        i += pl;
    } else if (n - i >= rl && strncasecmp((const char *)p + i, RERUN_LABEL, rl) == 0) {
        kind = RS_AUX_MARKER_RERUN;
        i += rl;
    } else {
        return 0;
    }
    for (int k = 0; k < 6; k++) {
        if (k && (i >= n || p[i++] != '-'))
            return -EINVAL;
        if (take_num(p, n, &i, max[k], &v[k]) < 0)
            return -EINVAL;
    }
    if (i < n && p[i] != '.' && p[i] != ' ')
        return -EINVAL;
    *id = rs_txn_id_make(v[0] << 24 | v[1] << 16 | v[2] << 8 | v[3], (uint16_t)v[4], (uint16_t)v[5]);
    return kind;
}

/* Reads one IMAP string (quoted, literal, atom or NIL) at p[*i] into 'out'
 * (truncated to 'cap'-1; '*full' false then).  Returns 0, 1 for NIL, or
 * -EINVAL. */
static int imap_string(const uint8_t *p, size_t len, size_t *i, char *out, size_t cap, bool *full)
{
    size_t o = 0;

    *full = true;
    if (*i >= len)
        return -EINVAL;
    if (p[*i] == '"') {
        for ((*i)++; *i < len && p[*i] != '"'; (*i)++) {
            if (p[*i] == '\\' && ++(*i) >= len)
                return -EINVAL;
            if (p[*i] == '\r' || p[*i] == '\n')
                return -EINVAL;
            if (o + 1 < cap)
                out[o++] = (char)p[*i];
            else
                *full = false;
        }
        if (*i >= len)
            return -EINVAL;
        (*i)++;
    } else if (p[*i] == '{' || (p[*i] == '~' && *i + 1 < len && p[*i + 1] == '{')) {
        uint64_t n = 0;
        size_t k = *i + (p[*i] == '~') + 1;
        while (k < len && isdigit(p[k]) && n < (1u << 30))
            n = n * 10 + (uint64_t)(p[k++] - '0');
        if (k < len && p[k] == '+')
            k++;
        if (k + 1 >= len || p[k] != '}' || p[k + 1] != '\r' || k + 2 >= len || p[k + 2] != '\n')
            return -EINVAL;
        k += 3;
        if (n > len - k)
            return -EINVAL;
        for (uint64_t j = 0; j < n; j++) {
            if (o + 1 < cap)
                out[o++] = (char)p[k + j];
            else
                *full = false;
        }
        *i = k + (size_t)n;
    } else {
        size_t start = *i;
        while (*i < len && p[*i] > ' ' && p[*i] != '(' && p[*i] != ')' && p[*i] != '"' && p[*i] < 0x7f) {
            if (o + 1 < cap)
                out[o++] = (char)p[*i];
            else
                *full = false;
            (*i)++;
        }
        if (*i == start)
            return -EINVAL;
        out[o] = '\0';
        return strcasecmp(out, "NIL") == 0 ? 1 : 0;
    }
    out[o] = '\0';
    return 0;
}

static int imap_marker(const uint8_t *p, size_t len, size_t i, rs_txn_id *id)
{
    char key[32], val[RS_TXN_ID_STRLEN + 8];
    bool kfull, vfull;

    while (i < len && p[i] == ' ')
        i++;
    if (i >= len || p[i] != '(')
        return 0;               /* "ID NIL" */
    i++;
    for (;;) {
        while (i < len && p[i] == ' ')
            i++;
        if (i >= len || p[i] == ')')
            return 0;
        int kr = imap_string(p, len, &i, key, sizeof(key), &kfull);
        if (kr < 0)
            return 0;           /* not a parameter list we understand: no marker */
        while (i < len && p[i] == ' ')
            i++;
        int vr = imap_string(p, len, &i, val, sizeof(val), &vfull);
        if (vr < 0)
            return 0;
        if (kr == 0 && kfull && (strcasecmp(key, MARKER_KEY) == 0 || strcasecmp(key, RERUN_KEY) == 0)) {
            if (vr == 1 || !vfull || rs_txn_id_parse(val, id) < 0)
                return -EINVAL;
            return strcasecmp(key, MARKER_KEY) == 0 ? RS_AUX_MARKER_TXN : RS_AUX_MARKER_RERUN;
        }
    }
}

int rs_aux_marker(enum rs_aux_proto proto, const uint8_t *unit, size_t len, rs_txn_id *id)
{
    struct rs_aux_cmd cmd;

    if (rs_aux_cmd_parse(proto, unit, len, false, &cmd) < 0 || !rs_aux_cmd_is_marker(proto, &cmd))
        return 0;
    if (proto == RS_AUX_SMTP)
        return smtp_marker(unit, first_line(unit, len), id);
    /* Skip "TAG ID" ; the rest may hold literals, so scan the whole unit. */
    size_t i = strlen(cmd.tag) + 1;
    while (i < len && unit[i] != ' ' && unit[i] != '\r' && unit[i] != '\n')
        i++;
    return imap_marker(unit, len, i, id);
}

/* ---- Catch-up ---------------------------------------------------------- */

static int plan_add(size_t *out, size_t max, size_t *k, size_t idx)
{
    if (*k >= max)
        return -ENOSPC;
    out[(*k)++] = idx;
    return 0;
}

int rs_aux_catchup_plan(enum rs_aux_proto proto, const struct rs_aux_unit_sum *units, size_t n,
                        size_t marker, size_t cur, bool cur_data, size_t *out, size_t max)
{
    static const char *const imap_state[] = { "LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE",
                                              "ENABLE", NULL };
    static const char *const smtp_reset[] = { "RSET", "EHLO", "HELO", NULL };
    static const char *const smtp_txn[] = { "MAIL", "RCPT", NULL };
    size_t k = 0, last = marker;

    if (!units || cur < marker || cur > n || marker >= n || (cur_data && proto != RS_AUX_SMTP))
        return -EINVAL;
    if (cur == marker)
        return 0;
    if (plan_add(out, max, &k, marker) < 0)
        return -ENOSPC;
    if (proto == RS_AUX_IMAP) {
        for (size_t i = marker + 1; i < cur; i++)
            if (units[i].complete && units[i].reply.ok && verb_in(&units[i].cmd, imap_state) &&
                plan_add(out, max, &k, i) < 0)
                return -ENOSPC;
        return (int)k;
    }
    /* SMTP: only the mail transaction still open at 'cur' matters. */
    for (size_t i = marker + 1; i < cur; i++)
        if (units[i].cmd.data || verb_in(&units[i].cmd, smtp_reset))
            last = i;
    if (last > marker && !units[last].cmd.data && strcmp(units[last].cmd.verb, "RSET") != 0 &&
        plan_add(out, max, &k, last) < 0)
        return -ENOSPC;
    for (size_t i = last + 1; i < cur; i++)
        if (units[i].complete && units[i].reply.ok && verb_in(&units[i].cmd, smtp_txn) &&
            plan_add(out, max, &k, i) < 0)
            return -ENOSPC;
    if (cur_data) {
        /* The data's DATA command, answered 354, is the unit before it. */
        if (cur == marker + 1 || strcmp(units[cur - 1].cmd.verb, "DATA") != 0 ||
            units[cur - 1].reply.code != 354)
            return -EINVAL;
        if (plan_add(out, max, &k, cur - 1) < 0)
            return -ENOSPC;
    }
    return (int)k;
}
