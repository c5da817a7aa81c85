/* rs-front's head filter: finds, through the parser's callbacks, the header
 * lines to drop from a request head (every X-Resplice-*: a client must not
 * name its own transaction) or a response head (X-Resplice-*, read first:
 * the state's file or the state itself, its sync and its age; and the
 * --strip-header names), and writes the head without them. */
#include "front.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

/* ---- Heads: header lines to drop -------------------------------------- */

void head_reset(struct front_head *h)
{
    h->len = 0;
    h->in_field = h->open = h->classified = false;
    h->n_cuts = 0;
    h->cut_overflow = h->done = false;
    h->has_state = h->has_sync = h->has_data = h->path_long = false;
    h->path_len = h->sync_len = h->seq_len = 0;
}

static uint32_t head_pos(const struct front_head *h, const char *at)
{
    return h->exec_base + (uint32_t)(at - h->exec_at);
}

static bool name_is(const struct front_head *h, const char *name)
{
    return !h->name_long && h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

/* True for a name of resplice's own, X-Resplice-*, as the application may
 * see it: web servers hand headers to CGI with '-' and '_' alike
 * (lighttpd: X_Resplice_Rerun and X-Resplice-Rerun both become
 * HTTP_X_RESPLICE_RERUN), in any case, and at any length. */
static bool name_is_ours(const struct front_head *h)
{
    static const char pfx[] = "x-resplice-";

    if (h->name_len < sizeof(pfx) - 1)
        return false;
    for (size_t i = 0; i < sizeof(pfx) - 1; i++) {
        char ch = (char)tolower((unsigned char)h->name[i]);

        if ((ch == '_' ? '-' : ch) != pfx[i])
            return false;
    }
    return true;
}

/* Decides what becomes of the current header line.  Requests lose every
 * X-Resplice-* header, however spelled (a client must not name its own
 * transaction or claim a re-run; logged and counted); responses lose
 * X-Resplice-* (State and Sync are read first) and the --strip-header
 * names. */
static void head_classify(struct front_conn *c, struct front_head *h)
{
    bool ours = name_is_ours(h);

    h->classified = true;
    h->kind = HK_KEEP;
    if (h == &c->rqh) {
        if (ours) {
            h->kind = HK_CUT;
            c->f->stats[FS_CLIENT_RESPLICE_HDRS]++;
            rs_log("client-header %s '%.*s%s' dropped: resplice's own", c->who.name, (int)h->name_len, h->name,
                   h->name_long ? "..." : "");
        }
        return;
    }
    if (name_is(h, "X-Resplice-State")) {
        h->kind = HK_STATE;
        h->has_state = true;
        h->path_len = 0;        /* the last one counts */
        h->path_long = false;
    } else if (name_is(h, "X-Resplice-State-Data")) {
        h->kind = HK_STATE_DATA;
        h->has_data = true;
        h->data_from = UINT32_MAX;      /* the last one counts */
        h->data_to = 0;
    } else if (name_is(h, "X-Resplice-Sync")) {
        h->kind = HK_SYNC;
        h->has_sync = true;
        h->sync_len = 0;
    } else if (name_is(h, "X-Resplice-State-Seq")) {
        h->kind = HK_SEQ;
        h->seq_len = 0;
    } else if (ours) {
        h->kind = HK_CUT;
    } else {
        for (int i = 0; i < c->f->cfg.n_strip; i++)
            if (name_is(h, c->f->cfg.strip[i]))
                h->kind = HK_CUT;
    }
}

/* Ends the open header line at head offset 'end'. */
static void head_close_line(struct front_conn *c, struct front_head *h, uint32_t end)
{
    if (!h->open)
        return;
    if (!h->classified)
        head_classify(c, h);
    h->open = false;
    if (h->kind == HK_KEEP)
        return;
    if (h->n_cuts == FRONT_CUTS) {
        h->cut_overflow = true;
        return;
    }
    h->cut_from[h->n_cuts] = h->line_start;
    h->cut_to[h->n_cuts++] = end;
}

static void head_field(struct front_conn *c, struct front_head *h, const char *at, size_t len)
{
    if (!h->in_field) {         /* a new header line starts here */
        head_close_line(c, h, head_pos(h, at));
        h->open = h->in_field = true;
        h->classified = false;
        h->line_start = head_pos(h, at);
        h->name_len = 0;
        h->name_long = false;
    }
    if (h->name_len + len > FRONT_NAME_MAX) {
        h->name_long = true;
        len = FRONT_NAME_MAX - h->name_len;     /* keep the first bytes: the prefix decides */
    }
    memcpy(h->name + h->name_len, at, len);
    h->name_len += (uint32_t)len;
}

static void head_value(struct front_conn *c, struct front_head *h, const char *at, size_t len)
{
    if (h->in_field) {
        h->in_field = false;
        head_classify(c, h);
    }
    if (h->kind == HK_STATE_DATA) {
        /* The value stays where it is, in the head's bytes. */
        if (h->data_from == UINT32_MAX)
            h->data_from = head_pos(h, at);
        h->data_to = head_pos(h, at) + (uint32_t)len;
    } else if (h->kind == HK_STATE) {
        if (h->path_len + len > FRONT_PATH_MAX) {
            h->path_long = true;
            return;
        }
        memcpy(h->path + h->path_len, at, len);
        h->path_len += (uint32_t)len;
        h->path[h->path_len] = '\0';
    } else if (h->kind == HK_SYNC && h->sync_len + len < sizeof(h->sync)) {
        memcpy(h->sync + h->sync_len, at, len);
        h->sync_len += (uint32_t)len;
        h->sync[h->sync_len] = '\0';
    } else if (h->kind == HK_SEQ && h->seq_len + len < sizeof(h->seq)) {
        memcpy(h->seq + h->seq_len, at, len);
        h->seq_len += (uint32_t)len;
        h->seq[h->seq_len] = '\0';
    }
}

/* The parsers' callbacks: the request parser (c->rq) feeds c->rqh, the
 * response parser c->rsh. */
int head_on_field(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;

    head_field(c, p == &c->rq ? &c->rqh : &c->rsh, at, len);
    return 0;
}

int head_on_value(http_parser *p, const char *at, size_t len)
{
    struct front_conn *c = p->data;

    head_value(c, p == &c->rq ? &c->rqh : &c->rsh, at, len);
    return 0;
}

/* Headers are complete; the parser stopped before the final LF ('next' is
 * the byte after the parsed ones).  Finds where the last header line ends.
 * Returns 0, or -EPROTO when the bytes are not what the parser promised or
 * too many lines are to be cut. */
int head_finish(struct front_conn *c, struct front_head *h, uint8_t next)
{
    uint32_t e = h->len;

    if (next != '\n')
        return -EPROTO;
    if (e > 0 && h->buf[e - 1] == '\r')
        e--;
    if (e == 0 || h->buf[e - 1] != '\n')
        return -EPROTO;
    head_close_line(c, h, e);
    h->hend = e;
    return h->cut_overflow ? -EPROTO : 0;
}

/* Bytes head_build writes for 'h' plus 'extra_len' bytes of extra lines. */
uint32_t head_out_len(const struct front_head *h, size_t extra_len)
{
    uint32_t n = h->hend + (uint32_t)extra_len + 2;

    for (uint32_t i = 0; i < h->n_cuts; i++)
        n -= h->cut_to[i] - h->cut_from[i];
    return n;
}

/* Writes the head without its cut lines, then 'extra' lines, then the
 * blank line, to 'dst' (head_out_len bytes of room).  Returns the length. */
uint32_t head_build(const struct front_head *h, const char *extra, size_t extra_len, uint8_t *dst)
{
    uint32_t pos = 0, n = 0;

    for (uint32_t i = 0; i <= h->n_cuts; i++) {
        uint32_t to = i < h->n_cuts ? h->cut_from[i] : h->hend;

        memcpy(dst + n, h->buf + pos, to - pos);
        n += to - pos;
        if (i < h->n_cuts)
            pos = h->cut_to[i];
    }
    memcpy(dst + n, extra, extra_len);
    n += (uint32_t)extra_len;
    memcpy(dst + n, "\r\n", 2);
    return n + 2;
}

