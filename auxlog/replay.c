/* rs-auxlog's protocol logic: cuts each side into units (core/auxproto.h
 * knows IMAP and SMTP), finds the marker that names the web transaction,
 * records a live conversation, and answers a re-run from the record
 * (catching up, or giving up when the conversation diverges). */
#include "auxlog.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Conversations: the protocol ---------------------------------------- */

/* Goes live at the client's unit 'cur' of a replayed conversation: resends
 * the recorded units that set up the server's session (their replies are
 * dropped), then everything the client sent from 'cur' on.  Returns 0 or
 * -errno (the conversation cannot go on). */
static int catch_up(struct auxlog *a, struct aux_conv *c, size_t cur, bool cur_data, const char *why)
{
    struct aux_record *r = c->rec;
    size_t j = (size_t)((ptrdiff_t)cur + c->off), plan[AUX_PLAN_MAX];
    struct rs_aux_unit_sum *sums;
    int k;

    if (c->u_eof)
        return -ENOTCONN;
    if (!(sums = calloc(r->n ? r->n : 1, sizeof(*sums))))
        return -ENOMEM;
    for (size_t i = 0; i < r->n; i++)
        sums[i] = r->u[i].sum;
    /* 'j' is at most r->n: the replay only got this far through complete units. */
    k = j > r->n ? -EINVAL : rs_aux_catchup_plan(c->proto, sums, r->n, r->marker, j, cur_data, plan, AUX_PLAN_MAX);
    free(sums);
    if (k < 0)
        return k;
    for (int i = 0; i < k; i++)
        if (to_upstream(c, r->u[plan[i]].c, r->u[plan[i]].clen) < 0)
            return -ENOMEM;
    rs_log("catch-up %s backend=%s txn=%s ordinal=%u at=%zu resent=%d why=%s", proto_name(c->proto),
           RS_A(c->peer), RS_TXN(c->txn), c->ordinal, j, k, why);
    c->discard = (size_t)k;
    c->nr = cur;
    /* Everything the client sent from this unit on goes upstream now. */
    if (to_upstream(c, c->cin.p + c->cfwd, c->cin.len - c->cfwd) < 0)
        return -ENOMEM;
    c->cfwd = c->cin.len;
    c->caught_up = true;
    a->caught_up++;
    /* This conversation continues the record; a writer still on it stops. */
    if (r->writer && r->writer != c)
        conv_stop_recording(a, r->writer, "taken over by a catch-up");
    record_truncate(a, r, j);
    r->writer = c;
    r->owner_ip = c->peer.ip;
    c->mode = AUX_LIVE;
    return 0;
}

#define AUX_WAIT 2

/* REPLAY: decides whether the client's unit 'cur' (its head is 'cmd') is
 * answered from the record or the conversation catches up and goes live.
 * Returns 1 for replay, 0 for live, AUX_WAIT when the recorded unit's reply
 * is still coming to a draining writer (it may have been done: resending it
 * could do it twice), or -errno. */
static int replay_decide(struct auxlog *a, struct aux_conv *c, const struct rs_aux_cmd *cmd, bool parsed)
{
    struct aux_record *r;

    tap_sync(a);        /* --tap: the record as far as the store has seen it */
    r = c->rec;
    ptrdiff_t jj = (ptrdiff_t)c->nc + c->off;
    size_t j = (size_t)jj;
    char why[256];

    if (!r->dead && jj >= 0 && j < r->n && !r->u[j].sum.complete && r->writer && r->writer != c
        && r->writer->draining)
        return AUX_WAIT;
    c->cur_decided = true;
    if (!r->dead && jj >= 0 && j < r->n && r->u[j].sum.complete && parsed &&
        rs_aux_cmd_same(cmd, &r->u[j].sum.cmd)) {
        c->cur_replay = true;
        return 1;
    }
    c->cur_replay = false;
    if (r->dead) {
        snprintf(why, sizeof(why), "record dropped");
    } else if (jj >= 0 && j < r->n && r->u[j].sum.complete) {
        c->diverged = true;
        a->diverged++;
        snprintf(why, sizeof(why), "diverged: %s %s vs recorded %s %s", cmd->tag, cmd->data ? "<data>" : cmd->verb,
                 r->u[j].sum.cmd.tag, r->u[j].sum.cmd.data ? "<data>" : r->u[j].sum.cmd.verb);
    } else {
        snprintf(why, sizeof(why), "record has no complete unit %zu", j);
    }
    if (r->dead)
        return -ENOENT;
    int e = catch_up(a, c, c->nc, cmd->data, why);
    return e < 0 ? e : 0;
}

/* The marker unit arrived in PRE mode: pick LIVE or REPLAY.  Returns 0 or -errno. */
/* A first run of 'txn' by 'ip': records of it made by other backends belong
 * to an earlier connection that had the same client address and port (the
 * port was reused); dropping them keeps a later re-run from replaying them. */
static void records_drop_stale(struct auxlog *a, enum rs_aux_proto p, rs_txn_id txn, uint32_t ip)
{
    for (struct aux_record *r = a->oldest, *next; r; r = next) {
        next = r->newer;
        if (r->proto == p && r->txn == txn && r->owner_ip != ip) {
            rs_log("drop %s txn=%s ordinal=%u from=%u.%u.%u.%u: a first run of it came again", proto_name(p),
                   RS_TXN(txn), r->ordinal, r->owner_ip >> 24, (r->owner_ip >> 16) & 255, (r->owner_ip >> 8) & 255,
                   r->owner_ip & 255);
            a->stale++;
            record_unkey(a, r);
        }
    }
}

/* Backend 'c->peer' re-runs 'txn' after a failover: it alone acts for it
 * from now on.  Another backend's conversations of it still open are cut
 * (a cut SMTP DATA sends nothing): that backend was failed over and fenced,
 * and if it only hung, resumed it would send its mail a second time (found
 * by make fault-campaign: a SIGSTOP of Roundcube's php-cgi mid-send). */
static int rerun_claim(struct auxlog *a, struct aux_conv *c, rs_txn_id txn)
{
    int e = rerun_set(a, txn, c->peer.ip);

    tap_fence_txn(a, txn, c->peer.ip);      /* --tap: what they sent is in the records before this goes on */

    for (struct aux_conv *x = a->convs, *next; x; x = next) {
        next = x->next;
        if (x != c && x->marked && x->txn == txn && x->peer.ip != c->peer.ip && !x->draining) {
            a->superseded++;
            rs_log("cut %s backend=%s txn=%s ordinal=%u: re-run by %s", proto_name(x->proto), RS_A(x->peer),
                   RS_TXN(txn), x->ordinal, RS_A(c->peer));
            conv_supersede(a, x);
        }
    }
    return e;
}

/* 'rerun': the marker says the backend runs 'txn' again after a failover;
 * only then may another backend's record answer it.  Returns 0, -EACCES
 * when another backend re-runs 'txn' (this one must not act for it), or
 * another negative errno. */
static int on_marker(struct auxlog *a, struct aux_conv *c, rs_txn_id txn, bool rerun)
{
    uint32_t owner = rerun_owner(a, txn);
    struct aux_record *r;
    int ord, e;

    if (!rerun && owner && owner != c->peer.ip) {
        a->superseded++;
        rs_log("refused %s backend=%s txn=%s: re-run by %u.%u.%u.%u", proto_name(c->proto), RS_A(c->peer),
               RS_TXN(txn), owner >> 24, (owner >> 16) & 255, (owner >> 8) & 255, owner & 255);
        return -EACCES;
    }
    if (rerun && (e = rerun_claim(a, c, txn)) < 0)
        return e;
    if (rerun && c->tap) {
        /* The plugin sends a re-run through the relay; this one reached
         * the store: nothing can be answered from a record any more. */
        a->errors++;
        conv_stop_recording(a, c, "a re-run on the tap, not through the relay");
        return 0;
    }
    if ((ord = ordinal_next(a, c->proto, txn, c->peer.ip)) < 0)
        return ord;
    c->marked = true;
    c->txn = txn;
    c->ordinal = (unsigned)ord;
    c->marker = c->nc;
    if (!rerun)
        records_drop_stale(a, c->proto, txn, c->peer.ip);
    r = record_find(a, c->proto, txn, c->ordinal);
    if (r && rerun && r->owner_ip != c->peer.ip) {
        if (c->nr != c->nc) {
            /* Replies still owed before the marker would come after the replayed ones. */
            rs_log("no replay %s backend=%s txn=%s: client pipelined before the marker",
                   proto_name(c->proto), RS_A(c->peer), RS_TXN(txn));
            a->errors++;
            conv_stop_recording(a, c, "pipelined before marker");
            return 0;
        }
        record_put(c->rec);     /* the private record: not needed */
        c->rec = r;
        r->refs++;
        c->off = (ptrdiff_t)r->marker - (ptrdiff_t)c->marker;
        c->mode = AUX_REPLAY;
        c->replayed = true;
        a->replayed++;
        rs_log("replay %s backend=%s txn=%s ordinal=%u from=%u.%u.%u.%u units=%zu%s", proto_name(c->proto),
               RS_A(c->peer), RS_TXN(txn), c->ordinal, r->owner_ip >> 24, (r->owner_ip >> 16) & 255,
               (r->owner_ip >> 8) & 255, r->owner_ip & 255, r->n, r->writer ? " (still open)" : "");
        return 0;
    }
    if (r) {
        rs_log("replace %s txn=%s ordinal=%u backend=%s", proto_name(c->proto), RS_TXN(txn), c->ordinal,
               RS_A(c->peer));
        record_unkey(a, r);
    }
    c->rec->marker = c->marker;
    record_key(a, c->rec, txn, c->ordinal);
    c->rec->writer = c;
    c->mode = AUX_LIVE;
    a->live++;
    rs_log("live %s backend=%s txn=%s ordinal=%u%s", proto_name(c->proto), RS_A(c->peer), RS_TXN(txn), c->ordinal,
           rerun ? " rerun (nothing recorded)" : "");
    return 0;
}

/* A complete client unit cin[0, len).  Returns 0 or -errno. */
static int client_unit(struct auxlog *a, struct aux_conv *c, size_t len, bool data)
{
    struct rs_aux_cmd cmd;
    bool parsed = rs_aux_cmd_parse(c->proto, c->cin.p, len, data, &cmd) == 0;
    int e;

    if (!parsed)
        memset(&cmd, 0, sizeof(cmd));
    if (c->mode == AUX_PRE) {
        rs_txn_id txn;
        int m = parsed ? rs_aux_marker(c->proto, c->cin.p, len, &txn) : 0;
        if (m < 0)
            rs_log("bad marker %s backend=%s: %.*s", proto_name(c->proto), RS_A(c->peer),
                   (int)(len > 120 ? 120 : len), c->cin.p);
        if (m < 0 || (m == 0 && (!rs_aux_cmd_pre_marker(c->proto, &cmd) || c->bytes_c > AUX_PRE_MAX))) {
            a->unmarked++;
            conv_stop_recording(a, c, "unmarked");
            return 0;
        }
        if (m > 0) {
            if ((e = record_push(a, c->rec, c->cin.p, len, &cmd)) < 0)
                return e;
            if ((e = on_marker(a, c, txn, m == RS_AUX_MARKER_RERUN)) < 0)
                return e;
            if (c->mode == AUX_REPLAY) {
                /* The pushed unit was in the private record, now gone. */
                c->cur_decided = false;
            } else {
                if (c->mode == AUX_LIVE) {
                    /* Live from here: what the client pipelined after the marker goes too. */
                    to_upstream(c, c->cin.p + c->cfwd, c->cin.len - c->cfwd);
                    c->cfwd = c->cin.len;
                    c->nc++;
                }
                return 0;
            }
        } else {
            if ((e = record_push(a, c->rec, c->cin.p, len, &cmd)) < 0)
                return e;
            to_upstream(c, c->cin.p + c->cfwd, len - c->cfwd);
            c->cfwd = len;
            c->nc++;
            return 0;
        }
    }
    if (c->mode == AUX_LIVE) {
        struct aux_record *r = c->rec;
        size_t j = (size_t)((ptrdiff_t)c->nc + c->off);
        if (!parsed && c->proto == RS_AUX_IMAP) {
            /* Not a command: a SASL response or IDLE's DONE, part of the unit before. */
            if (j == 0 || j != r->n || r->u[j - 1].sum.complete) {
                conv_stop_recording(a, c, "client line outside any command");
                return 0;
            }
            return record_extend(a, r, j - 1, c->cin.p, len);
        }
        if (j != r->n) {
            conv_stop_recording(a, c, "record out of step");
            return 0;
        }
        if ((e = record_push(a, r, c->cin.p, len, &cmd)) < 0)
            return e;
        c->nc++;
        records_evict(a);
        return 0;
    }
    if (c->mode == AUX_REPLAY) {
        if (!c->cur_decided) {
            e = replay_decide(a, c, &cmd, parsed);
            if (e < 0 || e == AUX_WAIT)
                return e;
        }
        if (!c->cur_replay)
            return client_unit(a, c, len, data);   /* now live: record it */
        struct aux_unit *u = &c->rec->u[(size_t)((ptrdiff_t)c->nc + c->off)];
        if ((e = to_client(c, u->r, u->rlen)) < 0)
            return e;
        c->nc++;
        c->nr = c->nc;
        if (rs_aux_split_waiting(&c->cs))
            rs_aux_split_data_reply(&c->cs, u->sum.reply.code);
    }
    return 0;
}

/* Handles the client's unit cin[0, end) and, unless it waits or the
 * conversation now only relays, lets the splitter go on after it.
 * Returns 0, AUX_WAIT or -errno. */
static int take_unit(struct auxlog *a, struct aux_conv *c, size_t end, bool data)
{
    int e = client_unit(a, c, end, data);

    if (e == AUX_WAIT) {
        c->waiting = true;
        c->wait_literal = false;
        c->wait_end = end;
        c->wait_data = data;
    }
    if (e || c->mode == AUX_RELAY)
        return e;
    buf_drop(&c->cin, end);
    c->cfwd = c->cfwd > end ? c->cfwd - end : 0;
    c->cur_decided = c->cur_replay = false;
    return 0;
}

/* REPLAY: decides on the IMAP literal announced by cin[0, end); when it is
 * answered from the record, asks for the literal in the server's stead.
 * Returns 0, AUX_WAIT or -errno. */
static int take_literal(struct auxlog *a, struct aux_conv *c, size_t end)
{
    int e;

    if (!c->cur_decided) {
        struct rs_aux_cmd cmd;
        bool parsed = rs_aux_cmd_parse(c->proto, c->cin.p, end, false, &cmd) == 0;
        if (!parsed)
            memset(&cmd, 0, sizeof(cmd));
        if ((e = replay_decide(a, c, &cmd, parsed)) < 0)
            return e;
        if (e == AUX_WAIT) {
            c->waiting = c->wait_literal = true;
            c->wait_end = end;
            return e;
        }
    }
    return c->cur_replay ? to_client(c, "+ OK\r\n", 6) : 0;
}

int replay_resume(struct auxlog *a, struct aux_conv *c)
{
    int e = c->wait_literal ? take_literal(a, c, c->wait_end) : take_unit(a, c, c->wait_end, c->wait_data);

    if (e < 0 || e == AUX_WAIT)
        return e < 0 ? e : 0;
    return client_scan(a, c);
}

/* Cuts the client's bytes into units.  Returns 0 or -errno. */
int client_scan(struct auxlog *a, struct aux_conv *c)
{
    while (c->mode != AUX_RELAY && !c->waiting) {
        struct rs_aux_event ev;
        int k = rs_aux_split_scan(&c->cs, c->cin.p, c->cin.len, &ev), e;

        if (k < 0)
            return k;
        if (k == RS_AUX_EV_NEED)
            return 0;
        if (k == RS_AUX_EV_LITERAL) {
            if (c->mode == AUX_PRE) {
                to_upstream(c, c->cin.p + c->cfwd, ev.end - c->cfwd);
                c->cfwd = ev.end;
            } else if (c->mode == AUX_REPLAY && (e = take_literal(a, c, ev.end)) < 0) {
                return e;
            }
            continue;
        }
        if ((e = take_unit(a, c, ev.end, ev.data)) < 0)
            return e;
    }
    return 0;
}

/* A complete reply sin[0, len) from upstream.  Returns 0 or -errno. */
static int server_unit(struct auxlog *a, struct aux_conv *c, size_t len)
{
    struct aux_record *r = c->rec;
    size_t i = c->nr++, j = (size_t)((ptrdiff_t)i + c->off);
    struct rs_aux_reply rp;

    if (j >= r->n || r->u[j].sum.complete) {
        conv_stop_recording(a, c, "reply without a command");
        return 0;
    }
    if (record_reply(a, r, j, c->sin.p, len) < 0)
        return -ENOMEM;
    rp = r->u[j].sum.reply;
    if (c->proto == RS_AUX_IMAP && i > 0 && strcmp(rp.tag, r->u[j].sum.cmd.tag) != 0) {
        conv_stop_recording(a, c, "reply tag does not match its command");
        return 0;
    }
    if (c->proto == RS_AUX_SMTP && rs_aux_split_waiting(&c->cs) && strcmp(r->u[j].sum.cmd.verb, "DATA") == 0)
        rs_aux_split_data_reply(&c->cs, rp.code);
    records_evict(a);
    return 0;
}

/* Cuts the server's bytes into replies, forwarding them (except a
 * catch-up's).  Returns 0 or -errno. */
int server_scan(struct auxlog *a, struct aux_conv *c)
{
    bool again = false;

    while (c->mode == AUX_PRE || c->mode == AUX_LIVE) {
        struct rs_aux_event ev;
        int k = rs_aux_split_scan(&c->ss, c->sin.p, c->sin.len, &ev), e;

        if (k < 0)
            return k;
        if (k == RS_AUX_EV_NEED) {
            /* A reply in progress goes out as it comes, unless it is dropped. */
            if (!c->discard && c->sfwd < c->sin.len)
                to_client(c, c->sin.p + c->sfwd, c->sin.len - c->sfwd);
            c->sfwd = c->sin.len;
            break;
        }
        if (k == RS_AUX_EV_CONT) {
            if (!c->discard) {
                if (c->sfwd < ev.end)
                    to_client(c, c->sin.p + c->sfwd, ev.end - c->sfwd);
            }
            memmove(c->sin.p + ev.start, c->sin.p + ev.end, c->sin.len - ev.end);
            c->sin.len -= ev.end - ev.start;
            c->sfwd = ev.start;
            continue;
        }
        if (c->discard) {
            c->discard--;
        } else {
            if (c->sfwd < ev.end)
                to_client(c, c->sin.p + c->sfwd, ev.end - c->sfwd);
            c->sfwd = ev.end;
            if ((e = server_unit(a, c, ev.end)) < 0)
                return e;
            again = true;
        }
        if (c->mode == AUX_RELAY)
            break;
        buf_drop(&c->sin, ev.end);
        c->sfwd = 0;
    }
    /* An SMTP DATA reply lets the client splitter go on. */
    return again ? client_scan(a, c) : 0;
}

