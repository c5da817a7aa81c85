/* rs-front's state updates: the state file a response names
 * (X-Resplice-State), or the state it carries (X-Resplice-State-Data,
 * base64), goes, in an envelope, to the state library; a
 * synchronous one (X-Resplice-Sync: 1) waits for its complete response and
 * carries it along. */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "ctl_msg.h"

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

/* ---- The envelope ---------------------------------------------------------
 *
 *   off size
 *     0    4 FRONT_BLOB_MAGIC
 *     4    4 state length S (LE)
 *     8    4 response length R (LE): 0, or the complete response of a
 *            synchronous update
 *    12    8 the state's sequence number (LE, X-Resplice-State-Seq; 0 = none)
 *    20    S state, then R response bytes
 */

int front_blob_parse(const void *data, size_t len, struct front_blob *b)
{
    const uint8_t *p = data;

    if (len < FRONT_BLOB_HDR || memcmp(p, FRONT_BLOB_MAGIC, 4) != 0)
        return 0;
    b->slen = get_le32(p + 4);
    b->rlen = get_le32(p + 8);
    b->seq = get_le64(p + 12);
    if ((uint64_t)FRONT_BLOB_HDR + b->slen + b->rlen != len)
        return -EINVAL;
    b->state = p + FRONT_BLOB_HDR;
    b->resp = b->state + b->slen;
    return 1;
}

static void blob_header(uint8_t *b, uint32_t slen, uint32_t rlen, uint64_t seq)
{
    memcpy(b, FRONT_BLOB_MAGIC, 4);
    put_le32(b + 4, slen);
    put_le32(b + 8, rlen);
    put_le32(b + 12, (uint32_t)seq);
    put_le32(b + 16, (uint32_t)(seq >> 32));
}

/* Keeps a copy of 'len' bytes of whole state 'seq' when it is the newest
 * this front made (an export's; a state without a sequence is kept as
 * newest).  A change set is no whole state: an export then copies the
 * database. */
static void own_keep(struct front *f, const uint8_t *state, uint32_t len, uint64_t seq)
{
    uint8_t *p;

    if (front_is_changes(state, len)) {
        free(f->own);
        f->own = NULL;
        f->own_len = 0;
        f->own_seq = 0;
        return;
    }
    if (seq && seq < f->own_seq)
        return;
    if (!(p = realloc(f->own, len ? len : 1)))
        return;         /* an export then offers the previous one: older, still consistent */
    memcpy(p, state, len);
    f->own = p;
    f->own_len = len;
    f->own_seq = seq;
}

int front_export(void *ctx, const void **state, size_t *len)
{
    struct front *f = ctx;
    uint8_t *b = f->blob;
    uint64_t seq;
    size_t slen;

    if (f->own && f->own_seq >= f->installed_seq) {
        seq = f->own_seq;
        slen = f->own_len;
        memcpy(b + FRONT_BLOB_HDR, f->own, slen);
    } else if (f->cfg.apply_file) {
        /* The state installed by rename: whole whenever it is read.  An
         * sqlite database changes in place (change sets, the application
         * itself): a copy of it, numbered before it is taken, so that the
         * change sets numbered after it still apply over it. */
        char copy[PATH_MAX + 16], why[256];
        const char *path = f->cfg.apply_file;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd < 0 ? -1 : read(fd, b + FRONT_BLOB_HDR, RS_CTL_STATE_MAX - FRONT_BLOB_HDR + 1);

        if (fd >= 0)
            close(fd);
        seq = f->installed_seq;
        if (n > 0 && front_is_sqlite(b + FRONT_BLOB_HDR, (size_t)n)) {
            seq = rs_mono_ns();
            snprintf(copy, sizeof(copy), "%s.rs-export", path);
            if (front_sqlite_copy(path, copy, why, sizeof(why))) {
                rs_log("state-export: copy of %s: %s", path, why);
                return -EIO;
            }
            fd = open(copy, O_RDONLY | O_CLOEXEC);
            n = fd < 0 ? -1 : read(fd, b + FRONT_BLOB_HDR, RS_CTL_STATE_MAX - FRONT_BLOB_HDR + 1);
            if (fd >= 0)
                close(fd);
            unlink(copy);
        }
        if (n < 0 || (size_t)n > RS_CTL_STATE_MAX - FRONT_BLOB_HDR)
            return n < 0 ? -errno : -EMSGSIZE;
        slen = (size_t)n;
    } else {
        return -EOPNOTSUPP;     /* --apply-cmd: the state lives in the application */
    }
    blob_header(b, (uint32_t)slen, 0, seq);
    *state = b;
    *len = FRONT_BLOB_HDR + slen;
    rs_log("state-export %zuB seq=%" PRIu64, slen, seq);
    return 0;
}

/* Hands the envelope in f->blob (the state of 'slen' bytes and a response
 * of 'rlen' bytes already after the header) to the library. */
static void state_send(struct front_conn *c, struct front_txn *t, uint32_t slen, uint32_t rlen, bool sync)
{
    uint8_t *b = c->f->blob;
    char id[RS_TXN_ID_STRLEN];
    int r;

    blob_header(b, slen, rlen, t->state_seq);
    own_keep(c->f, b + FRONT_BLOB_HDR, slen, t->state_seq);
    t->hooked = true;
    r = rs_state_update(c->f->stated, t->id, b, FRONT_BLOB_HDR + slen + rlen, sync);
    t->waiting = r == RS_STATE_WAIT;
    if (r < 0)
        rs_log("state-update-failed %s %s %s (the application already ran it: answered anyway)",
               rs_txn_str(t->id, id), c->who.name, strerror(-r));
}

/* Reads the state file a response named into f->blob, after the envelope's
 * header, and deletes it.  Returns its length; sets '*err' when it could
 * not. */
static ssize_t state_file(struct front_conn *c, const char **err)
{
    struct front_head *h = &c->rsh;
    struct front *f = c->f;
    char real[PATH_MAX];
    size_t dlen = strlen(f->state_real);
    ssize_t len = 0;
    struct stat st;
    int fd = -1;

    /* Only files in --state-dir, so a response cannot make us read (and
     * delete) anything else. */
    if (h->path_long || h->path_len == 0)
        *err = "bad path";
    else if (!realpath(h->path, real))
        *err = strerror(errno);
    else if (strncmp(real, f->state_real, dlen) != 0 || real[dlen] != '/')
        *err = "not in --state-dir";
    else if ((fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        *err = strerror(errno);
    else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        *err = "not a regular file";
    else if ((uint64_t)st.st_size > RS_CTL_STATE_MAX - FRONT_BLOB_HDR)
        *err = "larger than the state limit (1 MiB)";
    else if ((len = read(fd, f->blob + FRONT_BLOB_HDR, (size_t)st.st_size)) != (ssize_t)st.st_size)
        *err = len < 0 ? strerror(errno) : "short read";
    if (fd >= 0)
        close(fd);
    if (!*err || fd >= 0)
        unlink(real);           /* ours now, read or not */
    return len;
}

/* Decodes the state a response carried itself (X-Resplice-State-Data,
 * base64: a small one spares the application a file, and us reading it)
 * into f->blob, after the envelope's header.  Returns its length; sets
 * '*err' when it could not. */
static ssize_t state_data(struct front_conn *c, const char **err)
{
    struct front_head *h = &c->rsh;
    size_t n = 0;

    if (h->data_from == UINT32_MAX || h->data_to < h->data_from
        || sodium_base642bin(c->f->blob + FRONT_BLOB_HDR, RS_CTL_STATE_MAX - FRONT_BLOB_HDR,
                             (const char *)h->buf + h->data_from, h->data_to - h->data_from, " \t", &n, NULL,
                             sodium_base64_VARIANT_ORIGINAL) != 0) {
        *err = "not base64, or larger than the state limit";
        return -1;
    }
    return (ssize_t)n;
}

/* Reads the state a response named (a file) or carried, and hands it to
 * the library; sets 't->waiting' when the response must wait for the
 * alternate. */
void update_take(struct front_conn *c, struct front_txn *t)
{
    struct front_head *h = &c->rsh;
    struct front *f = c->f;
    char id[RS_TXN_ID_STRLEN];
    bool sync = h->has_sync && strtol(h->sync, NULL, 10) == 1;
    const char *err = NULL;
    ssize_t len;

    if (!h->has_state && !h->has_data) {
        if (sync)
            rs_log("state %s %s: X-Resplice-Sync without X-Resplice-State (ignored)", rs_txn_str(t->id, id),
                   c->who.name);
        return;
    }
    len = h->has_data ? state_data(c, &err) : state_file(c, &err);
    if (err) {
        f->stats[FS_STATE_ERRORS]++;
        if (h->has_data)
            rs_log("state %s %s X-Resplice-State-Data: %s; the transaction goes unreplicated", rs_txn_str(t->id, id),
                   c->who.name, err);
        else
            rs_log("state %s %s file '%s': %s; the transaction goes unreplicated", rs_txn_str(t->id, id),
                   c->who.name, h->path_long ? "(too long)" : h->path, err);
        return;
    }
    f->stats[FS_STATES]++;
    f->stats[FS_STATE_BYTES] += (uint64_t)len;
    if (sync)
        f->stats[FS_SYNC]++;
    if (!f->stated)
        return;
    t->state_seq = h->seq_len ? strtoull(h->seq, NULL, 10) : 0;
    if (sync && (t->sync_state = malloc((size_t)len + 1))) {
        /* Held; it leaves with the complete response (update_send_held). */
        memcpy(t->sync_state, f->blob + FRONT_BLOB_HDR, (size_t)len);
        t->sync_len = (uint32_t)len;
        t->waiting = true;
        return;
    }
    state_send(c, t, (uint32_t)len, 0, sync);
}

/* Sends the held synchronous update of 't' with its response, which is
 * complete and not yet sent when 'with_resp'; without it (the response
 * does not fit in 'out' or in a state message) when not: a crash in the
 * middle of that response then re-runs the request on the alternate. */
void update_send_held(struct front_conn *c, struct front_txn *t, bool with_resp)
{
    struct front *f = c->f;
    uint64_t rlen = with_resp ? t->end - t->hold_from : 0;
    char id[RS_TXN_ID_STRLEN];

    if (FRONT_BLOB_HDR + (uint64_t)t->sync_len + rlen > RS_CTL_STATE_MAX)
        rlen = 0;
    if (rlen)
        memcpy(f->blob + FRONT_BLOB_HDR + t->sync_len, c->out + c->out_off + (t->hold_from - c->sent_total),
               (size_t)rlen);
    else
        rs_log("state %s %s: response not carried with the synchronous state (%s)", rs_txn_str(t->id, id),
               c->who.name, with_resp ? "state + response over 1 MiB" : "response larger than the hold buffer");
    f->stats[rlen ? FS_RESP_CARRIED : FS_RESP_NOT_CARRIED]++;
    memcpy(f->blob + FRONT_BLOB_HDR, t->sync_state, t->sync_len);
    free(t->sync_state);
    t->sync_state = NULL;
    state_send(c, t, t->sync_len, (uint32_t)rlen, true);
}

