/* Unit tests for core/auxproto.c: SMTP/IMAP unit splitting (split reads,
 * literals, pipelining, multi-line replies, dot lines, data units, bad and
 * over-long input), command/reply naming, markers and catch-up plans. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "auxproto.h"

#define LINE_MAX_T 256
#define UNIT_MAX_T 4096

/* Feeds 'text' to a splitter 'step' bytes at a time, the way the daemon
 * does, and records what comes out. */
struct run {
    struct rs_aux_split s;
    uint8_t buf[UNIT_MAX_T * 2];
    size_t len;
    char units[16][UNIT_MAX_T];
    size_t unit_len[16];
    bool unit_data[16];
    int n_units;
    int n_literal, n_cont;
    char conts[4][64];
    int err;
    int data_code;      /* SMTP client: reply given to DATA (0: leave waiting) */
};

static void run_init(struct run *r, enum rs_aux_proto p, enum rs_aux_side side)
{
    memset(r, 0, sizeof(*r));
    rs_aux_split_init(&r->s, p, side, LINE_MAX_T, UNIT_MAX_T);
    r->data_code = 354;
}

static void run_feed(struct run *r, const char *text, size_t len, size_t step)
{
    for (size_t off = 0; off < len && !r->err;) {
        size_t n = len - off < step ? len - off : step;
        memcpy(r->buf + r->len, text + off, n);
        r->len += n;
        off += n;
        for (;;) {
            struct rs_aux_event ev;
            int k = rs_aux_split_scan(&r->s, r->buf, r->len, &ev);
            if (k < 0) {
                r->err = k;
                break;
            }
            if (k == RS_AUX_EV_NEED) {
                if (rs_aux_split_waiting(&r->s) && r->data_code) {
                    assert_int_equal(rs_aux_split_data_reply(&r->s, r->data_code), 0);
                    continue;
                }
                break;
            }
            assert_int_equal(k, ev.kind);
            assert_true(ev.end <= r->len && ev.start <= ev.end);
            if (k == RS_AUX_EV_LITERAL) {
                r->n_literal++;
                continue;
            }
            if (k == RS_AUX_EV_CONT) {
                if (r->n_cont < 4)
                    snprintf(r->conts[r->n_cont], 64, "%.*s", (int)(ev.end - ev.start), r->buf + ev.start);
                r->n_cont++;
                memmove(r->buf + ev.start, r->buf + ev.end, r->len - ev.end);
                r->len -= ev.end - ev.start;
                continue;
            }
            assert_true(r->n_units < 16);
            memcpy(r->units[r->n_units], r->buf, ev.end);
            r->unit_len[r->n_units] = ev.end;
            r->unit_data[r->n_units] = ev.data;
            r->n_units++;
            memmove(r->buf, r->buf + ev.end, r->len - ev.end);
            r->len -= ev.end;
        }
    }
}

static void assert_unit(const struct run *r, int i, const char *want)
{
    assert_true(i < r->n_units);
    assert_int_equal(r->unit_len[i], strlen(want));
    assert_memory_equal(r->units[i], want, strlen(want));
}

/* Every chunking of the same stream must cut the same units. */
static void smtp_client_pipelined_and_data(void **state)
{
    static const char in[] =
        "EHLO x-resplice-txn-10-0-1-1-40000-3.resplice.test\r\n"
        "MAIL FROM:<a@x>\r\nRCPT TO:<bob@x>\r\nDATA\r\n"
        "Subject: hi\r\n\r\n..dot stuffed\r\n.x\r\n.\r\n"
        "QUIT\r\n";
    (void)state;
    for (size_t step = 1; step <= sizeof(in); step++) {
        struct run r;
        run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
        run_feed(&r, in, sizeof(in) - 1, step);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.n_units, 6);
        assert_unit(&r, 1, "MAIL FROM:<a@x>\r\n");
        assert_unit(&r, 3, "DATA\r\n");
        assert_false(r.unit_data[3]);
        assert_unit(&r, 4, "Subject: hi\r\n\r\n..dot stuffed\r\n.x\r\n.\r\n");
        assert_true(r.unit_data[4]);
        assert_unit(&r, 5, "QUIT\r\n");
        assert_int_equal(r.len, 0);
    }
}

static void smtp_client_waits_for_data_reply(void **state)
{
    static const char in[] = "DATA\r\nRCPT TO:<x>\r\n.\r\n";
    struct run r;
    struct rs_aux_event ev;

    (void)state;
    run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
    r.data_code = 0;
    run_feed(&r, in, sizeof(in) - 1, 64);
    assert_int_equal(r.n_units, 1);
    assert_true(rs_aux_split_waiting(&r.s));
    assert_int_equal(rs_aux_split_scan(&r.s, r.buf, r.len, &ev), RS_AUX_EV_NEED);
    /* DATA refused (554): what follows are commands again. */
    assert_int_equal(rs_aux_split_data_reply(&r.s, 554), 0);
    assert_int_equal(rs_aux_split_data_reply(&r.s, 354), -EINVAL);
    r.data_code = 354;
    run_feed(&r, "", 0, 1);
    assert_int_equal(rs_aux_split_scan(&r.s, r.buf, r.len, &ev), RS_AUX_EV_UNIT);
    assert_int_equal(ev.end, strlen("RCPT TO:<x>\r\n"));
    assert_false(ev.data);
}

static void smtp_client_empty_message_and_bdat(void **state)
{
    struct run r;
    (void)state;
    run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
    run_feed(&r, "DATA\r\n.\r\n", 9, 3);
    assert_int_equal(r.n_units, 2);
    assert_unit(&r, 1, ".\r\n");
    assert_true(r.unit_data[1]);

    run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
    run_feed(&r, "BDAT 5 LAST\r\nhello", 18, 4);
    assert_int_equal(r.err, -EPROTO);
    struct rs_aux_event ev;
    assert_int_equal(rs_aux_split_scan(&r.s, r.buf, r.len, &ev), -EPROTO);
}

static void smtp_server_multiline_replies(void **state)
{
    static const char in[] =
        "220 mail ESMTP\r\n"
        "250-mail\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n"
        "250 2.1.0 Ok\r\n354\r\n";
    (void)state;
    for (size_t step = 1; step < sizeof(in); step += 3) {
        struct run r;
        run_init(&r, RS_AUX_SMTP, RS_AUX_SERVER);
        run_feed(&r, in, sizeof(in) - 1, step);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.n_units, 4);
        assert_unit(&r, 0, "220 mail ESMTP\r\n");
        assert_unit(&r, 1, "250-mail\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
        assert_unit(&r, 3, "354\r\n");
    }
}

static void smtp_server_bad_lines(void **state)
{
    static const char *bad[] = { "hello\r\n", "25\r\n", "250x\r\n", "2a0 ok\r\n" };
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct run r;
        run_init(&r, RS_AUX_SMTP, RS_AUX_SERVER);
        run_feed(&r, bad[i], strlen(bad[i]), 2);
        assert_int_equal(r.err, -EPROTO);
        assert_int_equal(r.n_units, 0);
    }
}

static void overlong_line_and_unit(void **state)
{
    char big[LINE_MAX_T + 8];
    struct run r;

    (void)state;
    memset(big, 'a', sizeof(big));
    /* A line of exactly max_line bytes with its CRLF is fine; one more is not. */
    run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
    memcpy(big + LINE_MAX_T - 2, "\r\n", 2);
    run_feed(&r, big, LINE_MAX_T, 7);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.n_units, 1);
    run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
    memset(big, 'a', sizeof(big));
    run_feed(&r, big, sizeof(big), 7);   /* no LF at all */
    assert_int_equal(r.err, -EMSGSIZE);

    /* Message data: short lines, too many of them. */
    run_init(&r, RS_AUX_SMTP, RS_AUX_CLIENT);
    run_feed(&r, "DATA\r\n", 6, 6);
    for (int i = 0; i < UNIT_MAX_T / 10 + 2 && !r.err; i++)
        run_feed(&r, "123456789\n", 10, 10);
    assert_int_equal(r.err, -EMSGSIZE);

    /* An IMAP literal bigger than a unit may be. */
    run_init(&r, RS_AUX_IMAP, RS_AUX_CLIENT);
    run_feed(&r, "a1 APPEND x {99999}\r\n", 21, 5);
    assert_int_equal(r.err, -EMSGSIZE);
    run_init(&r, RS_AUX_IMAP, RS_AUX_CLIENT);
    run_feed(&r, "a1 APPEND x {99999999999999999999}\r\n", 36, 5);
    assert_int_equal(r.err, -EMSGSIZE);
}

static void imap_client_literals_split_across_reads(void **state)
{
    static const char in[] =
        "A1 LOGIN {5}\r\nalice {3+}\r\nx\r\n\r\n"
        "A2 APPEND Sent (\\Seen) {12+}\r\nline\r\n{3}\r\n!\r\n"
        "A3 APPEND Sent ~{4}\r\n\r\n\r\n\r\n"
        "A4 LOGOUT\r\n";
    (void)state;
    for (size_t step = 1; step <= sizeof(in); step++) {
        struct run r;
        run_init(&r, RS_AUX_IMAP, RS_AUX_CLIENT);
        run_feed(&r, in, sizeof(in) - 1, step);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.n_units, 4);
        assert_int_equal(r.n_literal, 2);  /* {5} and ~{4}; the {N+} ones need no continuation */
        assert_unit(&r, 0, "A1 LOGIN {5}\r\nalice {3+}\r\nx\r\n\r\n");
        assert_unit(&r, 1, "A2 APPEND Sent (\\Seen) {12+}\r\nline\r\n{3}\r\n!\r\n");
        assert_unit(&r, 2, "A3 APPEND Sent ~{4}\r\n\r\n\r\n\r\n");
        assert_unit(&r, 3, "A4 LOGOUT\r\n");
    }
}

static void imap_server_untagged_literals_and_continuations(void **state)
{
    static const char in[] =
        "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"
        "* ID (\"name\" \"Dovecot\")\r\nA1 OK ID done\r\n"
        "+ OK\r\n* 1 FETCH (BODY[] {14}\r\nA2 OK fake\r\n\r\n)\r\nA2 OK done\r\n"
        "A3 NO [TRYCREATE] no\r\n";
    (void)state;
    for (size_t step = 1; step <= sizeof(in); step++) {
        struct run r;
        run_init(&r, RS_AUX_IMAP, RS_AUX_SERVER);
        run_feed(&r, in, sizeof(in) - 1, step);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.n_units, 4);
        assert_unit(&r, 0, "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n");
        assert_unit(&r, 1, "* ID (\"name\" \"Dovecot\")\r\nA1 OK ID done\r\n");
        /* The literal's "A2 OK fake" line does not end the unit; the "+" is cut out. */
        assert_unit(&r, 2, "* 1 FETCH (BODY[] {14}\r\nA2 OK fake\r\n\r\n)\r\nA2 OK done\r\n");
        assert_int_equal(r.n_cont, 1);
        assert_string_equal(r.conts[0], "+ OK\r\n");
        assert_unit(&r, 3, "A3 NO [TRYCREATE] no\r\n");
    }
}

static void imap_greeting_bare_lf(void **state)
{
    struct run r;
    (void)state;
    run_init(&r, RS_AUX_IMAP, RS_AUX_SERVER);
    run_feed(&r, "* PREAUTH hi\n* 2 EXISTS\na OK\n", 29, 1);
    assert_int_equal(r.n_units, 2);
    assert_unit(&r, 0, "* PREAUTH hi\n");
    assert_unit(&r, 1, "* 2 EXISTS\na OK\n");
}

static void cmd_and_reply_names(void **state)
{
    struct rs_aux_cmd c;
    struct rs_aux_reply rp;

    (void)state;
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"A0001 uid store 1 +FLAGS x\r\n", 28,
                                      false, &c), 0);
    assert_string_equal(c.tag, "A0001");
    assert_string_equal(c.verb, "UID STORE");
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"A1 LOGOUT\r\n", 11, false, &c), 0);
    assert_string_equal(c.verb, "LOGOUT");
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"DONE\r\n", 6, false, &c), -EINVAL);
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"AGFsaWNl\r\n", 10, false, &c), -EINVAL);
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"\r\n", 2, false, &c), -EINVAL);
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"* OK\r\n", 6, false, &c), -EINVAL);
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_IMAP, (const uint8_t *)"A1 UID\r\n", 8, false, &c), -EINVAL);
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_SMTP, (const uint8_t *)"mail FROM:<x>\r\n", 15, false, &c), 0);
    assert_string_equal(c.verb, "MAIL");
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_SMTP, (const uint8_t *)"x\r\n.\r\n", 6, true, &c), 0);
    assert_true(c.data);
    assert_string_equal(c.verb, "");
    assert_int_equal(rs_aux_cmd_parse(RS_AUX_SMTP, (const uint8_t *)"\r\n", 2, false, &c), -EINVAL);

    assert_int_equal(rs_aux_reply_parse(RS_AUX_SMTP, (const uint8_t *)"250-a\r\n250 b\r\n", 14, &rp), 0);
    assert_int_equal(rp.code, 250);
    assert_true(rp.ok);
    assert_int_equal(rs_aux_reply_parse(RS_AUX_SMTP, (const uint8_t *)"354\r\n", 5, &rp), 0);
    assert_true(rp.ok);
    assert_int_equal(rs_aux_reply_parse(RS_AUX_SMTP, (const uint8_t *)"550 no\r\n", 8, &rp), 0);
    assert_false(rp.ok);
    assert_int_equal(rs_aux_reply_parse(RS_AUX_SMTP, (const uint8_t *)"", 0, &rp), -EINVAL);
    assert_int_equal(rs_aux_reply_parse(RS_AUX_IMAP, (const uint8_t *)"* 1 EXISTS\r\nA2 NO full\r\n", 24,
                                        &rp), 0);
    assert_string_equal(rp.tag, "A2");
    assert_false(rp.ok);
    assert_int_equal(rs_aux_reply_parse(RS_AUX_IMAP, (const uint8_t *)"A2 ok [APPENDUID 1 2] x\r\n", 25,
                                        &rp), 0);
    assert_true(rp.ok);
    assert_int_equal(rs_aux_reply_parse(RS_AUX_IMAP, (const uint8_t *)"A2 MAYBE\r\n", 10, &rp), -EINVAL);

    struct rs_aux_cmd a = { .tag = "A1", .verb = "APPEND" }, b = a;
    assert_true(rs_aux_cmd_same(&a, &b));
    strcpy(b.tag, "A2");
    assert_false(rs_aux_cmd_same(&a, &b));
}

static int marker(enum rs_aux_proto p, const char *s, rs_txn_id *id)
{
    return rs_aux_marker(p, (const uint8_t *)s, strlen(s), id);
}

static void markers(void **state)
{
    rs_txn_id id = 0, want = rs_txn_id_make(0x0a000101u, 40000, 3);

    (void)state;
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-1-40000-3.resplice.test\r\n", &id), 1);
    assert_true(id == want);
    assert_int_equal(marker(RS_AUX_SMTP, "helo X-RESPLICE-TXN-10-0-1-1-40000-3\r\n", &id), 1);
    assert_true(id == want);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-255-255-255-255-65535-65535\r\n", &id), 1);
    assert_true(id == rs_txn_id_make(0xffffffffu, 65535, 65535));
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO web1.resplice.test\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_SMTP, "MAIL FROM:<x-resplice-txn-1-2-3-4-5-6>\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-1-40000\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-256-1-1\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-1-65536-1\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-1-1-1x.a\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-1-1-0000001\r\n", &id), -EINVAL);

    id = 0;
    assert_int_equal(marker(RS_AUX_IMAP, "A0001 ID (\"name\" \"Roundcube\" \"version\" \"1.6\" "
                                         "\"x-resplice-txn\" \"10.0.1.1:40000#3\")\r\n", &id), 1);
    assert_true(id == want);
    assert_int_equal(marker(RS_AUX_IMAP, "a id (X-Resplice-Txn \"10.0.1.1:40000#3\")\r\n", &id), 1);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-txn\" {16}\r\n10.0.1.1:40000#3)\r\n", &id), 1);
    assert_true(id == want);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"k\\\"q\" \"v\" \"x-resplice-txn\" \"10.0.1.1:40000#3\")\r\n",
                            &id), 1);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID NIL\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"name\" \"Roundcube\")\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-txn\"\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"name\" \"x-resplice-txn\")\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_IMAP, "a LOGIN x-resplice-txn 10.0.1.1:40000#3\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-txn\" NIL)\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-txn\" \"10.0.1.1:40000\")\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-txn\" \"10.0.1.1:40000#3 and a long tail\")\r\n",
                            &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-txn\" {99}\r\n10.0.1.1:40000#3)\r\n", &id), 0);
    assert_int_equal(marker(RS_AUX_IMAP, "", &id), 0);

    /* Re-runs after a failover say so; everything else is the same. */
    id = 0;
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-rerun-10-0-1-1-40000-3.resplice.test\r\n", &id),
                     RS_AUX_MARKER_RERUN);
    assert_true(id == want);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-txn-10-0-1-1-40000-3\r\n", &id), RS_AUX_MARKER_TXN);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-rerun-10-0-1-1-40000\r\n", &id), -EINVAL);
    assert_int_equal(marker(RS_AUX_SMTP, "EHLO x-resplice-rerunx-10-0-1-1-40000-3\r\n", &id), 0);
    id = 0;
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"name\" \"Roundcube\" \"x-resplice-rerun\" \"10.0.1.1:40000#3\")\r\n",
                            &id), RS_AUX_MARKER_RERUN);
    assert_true(id == want);
    assert_int_equal(marker(RS_AUX_IMAP, "a ID (\"x-resplice-rerun\" NIL)\r\n", &id), -EINVAL);
}

static struct rs_aux_unit_sum sum(const char *verb, int code, bool ok, bool data)
{
    struct rs_aux_unit_sum u;
    memset(&u, 0, sizeof(u));
    snprintf(u.cmd.verb, sizeof(u.cmd.verb), "%s", verb);
    u.cmd.data = data;
    u.reply.code = code;
    u.reply.ok = ok;
    u.complete = true;
    return u;
}

static void catchup_smtp(void **state)
{
    /* greeting, EHLO(marker), MAIL, RCPT, DATA, data(250), MAIL, RCPT(550), RCPT, DATA, data(?) */
    struct rs_aux_unit_sum u[11] = {
        sum("", 220, true, false), sum("EHLO", 250, true, false), sum("MAIL", 250, true, false),
        sum("RCPT", 250, true, false), sum("DATA", 354, true, false), sum("", 250, true, true),
        sum("MAIL", 250, true, false), sum("RCPT", 550, false, false), sum("RCPT", 250, true, false),
        sum("DATA", 354, true, false), sum("", 0, false, true),
    };
    size_t out[8];

    (void)state;
    u[10].complete = false;
    /* Crash mid-data of the second message: EHLO, its MAIL, good RCPT, DATA. */
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 10, true, out, 8), 4);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 6);
    assert_int_equal(out[2], 8);
    assert_int_equal(out[3], 9);
    /* Mid-data of the first: nothing of the second exists yet. */
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 5, true, out, 8), 4);
    assert_int_equal(out[1], 2);
    assert_int_equal(out[3], 4);
    /* After the first message was delivered: only EHLO; never its data. */
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 6, false, out, 8), 1);
    assert_int_equal(out[0], 1);
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 1, false, out, 8), 0);
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 10, true, out, 3), -ENOSPC);
    /* Data not preceded by a DATA answered 354; bad indices. */
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 7, true, out, 8), -EINVAL);
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 12, false, out, 8), -EINVAL);
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 5, 2, false, out, 8), -EINVAL);
    /* RSET closes the open transaction. */
    u[7] = sum("RSET", 250, true, false);
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_SMTP, u, 11, 1, 9, false, out, 8), 2);
    assert_int_equal(out[1], 8);
}

static void catchup_imap(void **state)
{
    struct rs_aux_unit_sum u[8] = {
        sum("", 0, true, false), sum("ID", 0, true, false), sum("LOGIN", 0, true, false),
        sum("SELECT", 0, false, false), sum("SELECT", 0, true, false), sum("APPEND", 0, true, false),
        sum("UID STORE", 0, true, false), sum("EXPUNGE", 0, true, false),
    };
    size_t out[8];

    (void)state;
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_IMAP, u, 8, 1, 8, false, out, 8), 3);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 2);
    assert_int_equal(out[2], 4);   /* the failed SELECT is not resent */
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_IMAP, u, 8, 1, 8, true, out, 8), -EINVAL);
    assert_int_equal(rs_aux_catchup_plan(RS_AUX_IMAP, NULL, 0, 0, 0, false, out, 8), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(smtp_client_pipelined_and_data),
        cmocka_unit_test(smtp_client_waits_for_data_reply),
        cmocka_unit_test(smtp_client_empty_message_and_bdat),
        cmocka_unit_test(smtp_server_multiline_replies),
        cmocka_unit_test(smtp_server_bad_lines),
        cmocka_unit_test(overlong_line_and_unit),
        cmocka_unit_test(imap_client_literals_split_across_reads),
        cmocka_unit_test(imap_server_untagged_literals_and_continuations),
        cmocka_unit_test(imap_greeting_bare_lf),
        cmocka_unit_test(cmd_and_reply_names),
        cmocka_unit_test(markers),
        cmocka_unit_test(catchup_smtp),
        cmocka_unit_test(catchup_imap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
