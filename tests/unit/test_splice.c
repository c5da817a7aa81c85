/* Unit tests for core/splice.h: splice setup, seq/ack/window/timestamp
 * translation, option walking (incl. malformed lists), and incremental
 * checksums checked against a from-scratch recomputation. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "splice.h"

/* ---- test-only helpers -------------------------------------------------- */

/* xorshift64*: deterministic per seed, so failures reproduce. */
static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s ? s : 0x9e3779b97f4a7c15ull; }

static uint32_t rng32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

static uint32_t rng_below(uint32_t n) { return rng32() % n; }

/* Full one's complement sum of 'len' bytes, big-endian words, odd byte padded. */
static uint32_t sum_bytes(uint32_t sum, const uint8_t *p, size_t len)
{
    size_t i;

    for (i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    return sum;
}

static uint16_t fold_not(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* IPv4 header checksum of 'ip' computed from scratch (field taken as 0). */
static uint16_t full_ip_csum(const uint8_t *ip)
{
    uint8_t h[60];
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;

    memcpy(h, ip, ihl);
    h[10] = h[11] = 0;
    return fold_not(sum_bytes(0, h, ihl));
}

/* TCP checksum of the packet at 'ip' computed from scratch (field taken as 0). */
static uint16_t full_tcp_csum(const uint8_t *ip)
{
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4, tot = (size_t)(ip[2] << 8 | ip[3]);
    size_t tcp_len = tot - ihl;
    uint8_t *seg = malloc(tcp_len);
    uint8_t pseudo[12];
    uint32_t sum;

    assert_non_null(seg);
    memcpy(seg, ip + ihl, tcp_len);
    seg[16] = seg[17] = 0;
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    pseudo[10] = (uint8_t)(tcp_len >> 8);
    pseudo[11] = (uint8_t)tcp_len;
    sum = sum_bytes(sum_bytes(0, pseudo, 12), seg, tcp_len);
    free(seg);
    return fold_not(sum);
}

static void set_checksums(uint8_t *ip)
{
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;

    rs_splice_store16(ip + 10, full_ip_csum(ip));
    rs_splice_store16(ip + ihl + 16, full_tcp_csum(ip));
}

static void assert_checksums_valid(const uint8_t *ip)
{
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;

    assert_int_equal(rs_splice_load16(ip + 10), full_ip_csum(ip));
    assert_int_equal(rs_splice_load16(ip + ihl + 16), full_tcp_csum(ip));
}

struct pkt_spec {
    uint32_t saddr, daddr, seq, ack;
    uint16_t sport, dport, win;
    uint8_t flags;
    const uint8_t *opts; /* raw option bytes, a multiple of 4 long */
    size_t opt_len;
    size_t ip_opt_len;   /* multiple of 4, filled with NOPs (IP option 1) */
    size_t payload_len;
};

/* Builds an IPv4+TCP packet with valid checksums into an exactly sized heap
 * buffer (so ASan flags any read past it); '*len' gets its size. */
static uint8_t *build_pkt(const struct pkt_spec *s, size_t *len)
{
    size_t ihl = 20 + s->ip_opt_len, thl = 20 + s->opt_len, tot = ihl + thl + s->payload_len, i;
    uint8_t *p = calloc(1, tot), *t;

    assert_non_null(p);
    assert_true(s->opt_len % 4 == 0 && s->opt_len <= 40 && s->ip_opt_len % 4 == 0);
    p[0] = (uint8_t)(0x40 | ihl / 4);
    rs_splice_store16(p + 2, (uint16_t)tot);
    rs_splice_store16(p + 4, (uint16_t)rng32());
    p[6] = 0x40; /* DF */
    p[8] = 64;
    p[9] = 6;
    rs_splice_store32(p + 12, s->saddr);
    rs_splice_store32(p + 16, s->daddr);
    memset(p + 20, 1, s->ip_opt_len);
    t = p + ihl;
    rs_splice_store16(t, s->sport);
    rs_splice_store16(t + 2, s->dport);
    rs_splice_store32(t + 4, s->seq);
    rs_splice_store32(t + 8, s->ack);
    t[12] = (uint8_t)(thl / 4 << 4);
    t[13] = s->flags;
    rs_splice_store16(t + 14, s->win);
    if (s->opt_len)
        memcpy(t + 20, s->opts, s->opt_len);
    for (i = 0; i < s->payload_len; i++)
        t[thl + i] = (uint8_t)rng32();
    set_checksums(p);
    *len = tot;
    return p;
}

static void default_spec(struct pkt_spec *s)
{
    memset(s, 0, sizeof(*s));
    s->saddr = 0x0a000001u;
    s->daddr = 0x0a000064u;
    s->sport = 40000;
    s->dport = 80;
    s->seq = 1000;
    s->ack = 2000;
    s->win = 502;
    s->flags = RS_TCP_F_ACK;
}

static void default_dir(struct rs_splice_dir *d)
{
    memset(d, 0, sizeof(*d));
    d->seq_delta = 0x11111111u;
    d->ack_delta = 0xf0000000u;
    d->tsval_delta = 12345;
    d->tsecr_delta = 0u - 777u;
    d->saddr = 0x0a000002u;
    d->daddr = 0x0a000003u;
    d->sport = 33333;
    d->dport = 8080;
    d->win_scale_in = 7;
    d->win_scale_out = 7;
    d->flags = RS_SPLICE_F_TS | RS_SPLICE_F_SACK;
}

/* ---- setup ---------------------------------------------------------------- */

static void fill_conns(struct rs_splice_conn *c, struct rs_splice_conn *s)
{
    memset(c, 0, sizeof(*c));
    memset(s, 0, sizeof(*s));
    c->local_addr = 0x0a0000feu; /* VIP */
    c->remote_addr = 0x0a000001u;
    c->local_port = 80;
    c->remote_port = 51000;
    c->snd_nxt = 0x00000100u;     /* proxy -> client */
    c->rcv_nxt = 0xfffffff0u;     /* client -> proxy, about to wrap */
    c->ts_now = 5000;
    c->ts_recent = 0xfffffff0u;   /* client's clock about to wrap */
    c->snd_wscale = 7;
    c->rcv_wscale = 9;
    c->ts_ok = c->sack_ok = 1;
    s->local_addr = 0x0a000002u;
    s->remote_addr = 0x0a000010u;
    s->local_port = 40001;
    s->remote_port = 8080;
    s->snd_nxt = 0x00000010u;     /* proxy -> backend */
    s->rcv_nxt = 0x80000000u;     /* backend -> proxy */
    s->ts_now = 100000;
    s->ts_recent = 42;
    s->snd_wscale = 0;
    s->rcv_wscale = 2;
    s->ts_ok = s->sack_ok = 1;
}

static void init_deltas_and_wrap(void **state)
{
    struct rs_splice_conn c, s;
    struct rs_splice_dir c2s, s2c;
    uint32_t x;
    int i;

    (void)state;
    fill_conns(&c, &s);
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), 0);

    /* the client's next byte is the backend's next expected byte, across the wrap */
    assert_int_equal(rs_splice_seq(&c2s, c.rcv_nxt), s.snd_nxt);
    assert_int_equal(rs_splice_seq(&c2s, 0xfffffff8u), 0x18u);
    assert_int_equal(rs_splice_seq(&c2s, 0x00000005u), 0x25u);
    assert_true(rs_seq_lt(rs_splice_seq(&c2s, 0xfffffffcu), rs_splice_seq(&c2s, 0x4u)));
    /* the client acks the proxy's C numbering; the backend wants its own */
    assert_int_equal(rs_splice_ack(&c2s, c.snd_nxt), s.rcv_nxt);
    assert_int_equal(rs_splice_seq(&s2c, s.rcv_nxt), c.snd_nxt);
    assert_int_equal(rs_splice_ack(&s2c, s.snd_nxt), c.rcv_nxt);
    assert_int_equal(rs_splice_ack(&s2c, 0x20u), 0x0u);

    /* ack translation in one direction undoes seq translation in the other */
    rng_seed(7);
    for (i = 0; i < 1000; i++) {
        x = rng32();
        assert_int_equal(rs_splice_ack(&s2c, rs_splice_seq(&c2s, x)), x);
        assert_int_equal(rs_splice_ack(&c2s, rs_splice_seq(&s2c, x)), x);
    }

    assert_int_equal(c2s.saddr, s.local_addr);
    assert_int_equal(c2s.daddr, s.remote_addr);
    assert_int_equal(c2s.sport, s.local_port);
    assert_int_equal(c2s.dport, s.remote_port);
    assert_int_equal(s2c.saddr, c.local_addr);
    assert_int_equal(s2c.daddr, c.remote_addr);
    assert_int_equal(s2c.sport, c.local_port);
    assert_int_equal(s2c.dport, c.remote_port);
    assert_int_equal(c2s.win_scale_in, 7);
    assert_int_equal(c2s.win_scale_out, 2);
    assert_int_equal(s2c.win_scale_in, 0);
    assert_int_equal(s2c.win_scale_out, 9);
    assert_int_equal(c2s.flags, RS_SPLICE_F_TS | RS_SPLICE_F_SACK);
    assert_int_equal(s2c.flags, RS_SPLICE_F_TS | RS_SPLICE_F_SACK);
}

static void init_rejects_bad_scale(void **state)
{
    struct rs_splice_conn c, s;
    struct rs_splice_dir c2s, s2c, before;

    (void)state;
    fill_conns(&c, &s);
    memset(&c2s, 0xab, sizeof(c2s));
    before = c2s;
    s.rcv_wscale = 15;
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), -EINVAL);
    assert_memory_equal(&c2s, &before, sizeof(c2s));
    s.rcv_wscale = 14;
    c.snd_wscale = 200;
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), -EINVAL);
    c.snd_wscale = 14;
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), 0);
}

static void init_option_mismatch(void **state)
{
    struct rs_splice_conn c, s;
    struct rs_splice_dir c2s, s2c;

    (void)state;
    fill_conns(&c, &s);
    s.ts_ok = 0;
    s.sack_ok = 0;
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), 0);
    assert_int_equal(c2s.flags, RS_SPLICE_F_TS_STRIP | RS_SPLICE_F_SACK_STRIP);
    assert_int_equal(s2c.flags, RS_SPLICE_F_TS_ABSENT);
    c.ts_ok = c.sack_ok = 0;
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), 0);
    assert_int_equal(c2s.flags, 0);
    assert_int_equal(s2c.flags, 0);
}

static void errno_values_match_libc(void **state)
{
    (void)state;
    assert_int_equal(RS_SPLICE_EINVAL, EINVAL);
    assert_int_equal(RS_SPLICE_EOPNOTSUPP, EOPNOTSUPP);
}

/* ---- windows ------------------------------------------------------------- */

static void window_rescale(void **state)
{
    struct rs_splice_dir d;
    uint32_t si, so, real, out;
    int i;

    (void)state;
    memset(&d, 0, sizeof(d));
    d.win_scale_in = 7;
    d.win_scale_out = 0;
    assert_int_equal(rs_splice_win(&d, 1000), 65535);  /* 128000 bytes: clamped */
    assert_int_equal(rs_splice_win(&d, 511), 65408);
    assert_int_equal(rs_splice_win(&d, 512), 65535);   /* 65536: one past the field */
    assert_int_equal(rs_splice_win(&d, 0), 0);
    d.win_scale_in = 0;
    d.win_scale_out = 7;
    assert_int_equal(rs_splice_win(&d, 1000), 7);      /* 896 <= 1000: rounded down */
    assert_int_equal(rs_splice_win(&d, 127), 0);
    assert_int_equal(rs_splice_win(&d, 128), 1);
    assert_int_equal(rs_splice_win(&d, 65535), 511);
    d.win_scale_in = 14;
    d.win_scale_out = 14;
    assert_int_equal(rs_splice_win(&d, 65535), 65535);
    d.win_scale_out = 0;
    assert_int_equal(rs_splice_win(&d, 1), 16384);
    assert_int_equal(rs_splice_win(&d, 4), 65535);
    d.win_scale_in = 3;
    d.win_scale_out = 5;
    assert_int_equal(rs_splice_win(&d, 100), 25);

    /* every pair: never above the real window, never more than one unit below it */
    rng_seed(11);
    for (i = 0; i < 20000; i++) {
        si = rng_below(15);
        so = rng_below(15);
        d.win_scale_in = (rs_u8)si;
        d.win_scale_out = (rs_u8)so;
        real = (uint32_t)(uint16_t)rng32() << si;
        out = rs_splice_win(&d, (rs_u16)(real >> si));
        assert_true((uint64_t)out << so <= real);
        if (out < 65535)
            assert_true(real - (out << so) < (1u << so));
    }
}

/* ---- whole packets ------------------------------------------------------ */

/* Reads the translated packet back and compares to the expected rewrite. */
static void check_fixed_fields(const struct rs_splice_dir *d, const struct pkt_spec *s, const uint8_t *p)
{
    const uint8_t *t = p + (p[0] & 0x0f) * 4;

    assert_int_equal(rs_splice_load32(p + 12), d->saddr);
    assert_int_equal(rs_splice_load32(p + 16), d->daddr);
    assert_int_equal(rs_splice_load16(t), d->sport);
    assert_int_equal(rs_splice_load16(t + 2), d->dport);
    assert_int_equal(rs_splice_load32(t + 4), s->seq + d->seq_delta);
    if (s->flags & RS_TCP_F_ACK)
        assert_int_equal(rs_splice_load32(t + 8), s->ack + d->ack_delta);
    else
        assert_int_equal(rs_splice_load32(t + 8), s->ack);
    if (s->flags & RS_TCP_F_SYN)
        assert_int_equal(rs_splice_load16(t + 14), s->win);
    else
        assert_int_equal(rs_splice_load16(t + 14), rs_splice_win(d, s->win));
    assert_int_equal(t[13], s->flags);
}

static void timestamps_rewritten(void **state)
{
    /* NOP NOP TS: TSval at an even offset; then TS at odd offsets */
    uint8_t even[12] = {1, 1, 8, 10, 0, 0, 0x10, 0, 0xff, 0xff, 0xff, 0xf0};
    uint8_t odd[12] = {1, 8, 10, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0};
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t *p;
    size_t len;

    (void)state;
    default_dir(&d);
    default_spec(&s);
    s.opts = even;
    s.opt_len = sizeof(even);
    s.payload_len = 101;
    p = build_pkt(&s, &len);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    check_fixed_fields(&d, &s, p);
    assert_int_equal(rs_splice_load32(p + 40 + 4), 0x1000u + 12345u);
    assert_int_equal(rs_splice_load32(p + 40 + 8), 0xfffffff0u - 777u);
    assert_checksums_valid(p);
    free(p);

    /* odd offset; TSval wraps past 2^32; TSecr 0 stays 0 */
    s.opts = odd;
    s.opt_len = sizeof(odd);
    s.payload_len = 0;
    p = build_pkt(&s, &len);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    assert_int_equal(rs_splice_load32(p + 40 + 3), 0xffffffffu + 12345u);
    assert_int_equal(rs_splice_load32(p + 40 + 7), 0);
    assert_int_equal(p[40 + 11], 0); /* EOL padding untouched */
    assert_checksums_valid(p);
    free(p);
}

static void timestamps_roundtrip(void **state)
{
    struct rs_splice_conn c, s;
    struct rs_splice_dir c2s, s2c;
    uint32_t v, seen;
    int i;

    (void)state;
    fill_conns(&c, &s);
    assert_int_equal(rs_splice_init(&c, &s, &c2s, &s2c), 0);
    /* client TSvals from its newest on continue the backend's view of the proxy */
    assert_int_equal(rs_splice_tsval(&c2s, c.ts_recent), s.ts_now);
    assert_true(rs_seq_lt(rs_splice_tsval(&c2s, c.ts_recent), rs_splice_tsval(&c2s, c.ts_recent + 100)));
    assert_int_equal(rs_splice_tsval(&s2c, s.ts_recent), c.ts_now);
    /* an echo of a translated TSval reaches its origin as the original value */
    rng_seed(3);
    for (i = 0; i < 1000; i++) {
        v = rng32();
        seen = rs_splice_tsval(&s2c, v);
        if (seen)
            assert_int_equal(rs_splice_tsecr(&c2s, seen), v);
        seen = rs_splice_tsval(&c2s, v);
        if (seen)
            assert_int_equal(rs_splice_tsecr(&s2c, seen), v);
    }
    assert_int_equal(rs_splice_tsecr(&c2s, 0), 0);
}

static void sack_one_to_four_blocks(void **state)
{
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t opts[40];
    uint32_t edges[8];
    size_t len, n, k, off, base;
    uint8_t *p;
    int with_ts;

    (void)state;
    default_dir(&d);
    rng_seed(5);
    for (n = 1; n <= 4; n++) {
        for (with_ts = 0; with_ts <= 1; with_ts++) {
            if (n == 4 && with_ts)
                continue; /* 12 + 36 > 40 */
            memset(opts, 0, sizeof(opts));
            off = 0;
            if (with_ts) {
                uint8_t ts[12] = {1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8};
                memcpy(opts, ts, sizeof(ts));
                off = sizeof(ts);
            }
            opts[off++] = 1;
            opts[off++] = 1;
            opts[off++] = 5;
            opts[off++] = (uint8_t)(2 + 8 * n);
            base = off;
            for (k = 0; k < 2 * n; k++) {
                edges[k] = 0xfffffff0u + (uint32_t)k * 0x10000u + rng_below(100);
                rs_splice_store32(opts + off, edges[k]);
                off += 4;
            }
            default_spec(&s);
            s.opts = opts;
            s.opt_len = (off + 3) & ~(size_t)3;
            s.payload_len = n * 7;
            p = build_pkt(&s, &len);
            assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
            check_fixed_fields(&d, &s, p);
            for (k = 0; k < 2 * n; k++)
                assert_int_equal(rs_splice_load32(p + 40 + base + 4 * k), edges[k] + d.ack_delta);
            assert_checksums_valid(p);
            free(p);
        }
    }

    /* a SACK block at odd offset (single NOP in front) */
    {
        uint8_t odd[12] = {1, 5, 10, 0, 0, 0, 1, 0x80, 0, 0, 0, 0};
        default_spec(&s);
        s.opts = odd;
        s.opt_len = sizeof(odd);
        s.payload_len = 3;
        p = build_pkt(&s, &len);
        assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
        assert_int_equal(rs_splice_load32(p + 40 + 3), 1u + d.ack_delta);
        assert_int_equal(rs_splice_load32(p + 40 + 7), 0x80000000u + d.ack_delta);
        assert_checksums_valid(p);
        free(p);
    }
}

static void strip_when_not_negotiated(void **state)
{
    uint8_t opts[24] = {1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 5, 10, 0, 0, 0, 9, 0, 0, 0, 10, 0, 0, 0};
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t *p;
    size_t len, i;

    (void)state;
    default_dir(&d);
    d.flags = RS_SPLICE_F_TS_STRIP | RS_SPLICE_F_SACK_STRIP;
    default_spec(&s);
    s.opts = opts;
    s.opt_len = sizeof(opts);
    s.payload_len = 9;
    p = build_pkt(&s, &len);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    for (i = 0; i < 21; i++)
        assert_int_equal(p[40 + i], RS_TCPOPT_NOP);
    assert_int_equal(p[40 + 21], 0); /* padding after the option list untouched */
    check_fixed_fields(&d, &s, p);
    assert_checksums_valid(p);
    free(p);

    /* neither flag: options pass through untouched */
    d.flags = 0;
    p = build_pkt(&s, &len);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    assert_memory_equal(p + 40, opts, sizeof(opts));
    assert_checksums_valid(p);
    free(p);
}

static void syn_and_ackless_fields(void **state)
{
    uint8_t opts[4] = {2, 4, 0x05, 0xb4}; /* MSS passes through */
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t *p;
    size_t len;

    (void)state;
    default_dir(&d);
    d.win_scale_in = 0;
    d.win_scale_out = 3;
    default_spec(&s);
    s.opts = opts;
    s.opt_len = sizeof(opts);
    s.flags = RS_TCP_F_SYN | RS_TCP_F_ACK;
    s.win = 64240;
    p = build_pkt(&s, &len);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    check_fixed_fields(&d, &s, p); /* SYN window unscaled */
    assert_memory_equal(p + 40, opts, sizeof(opts));
    assert_checksums_valid(p);
    free(p);

    s.flags = 0x04; /* bare RST: ack field is not meaningful and stays */
    s.opt_len = 0;
    p = build_pkt(&s, &len);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    check_fixed_fields(&d, &s, p);
    assert_int_equal(rs_splice_load16(p + 20 + 14), 64240 >> 3);
    assert_checksums_valid(p);
    free(p);
}

/* ---- malformed input ------------------------------------------------------ */

struct bad_opts {
    uint8_t bytes[40];
    size_t len;
    int err;
};

static void malformed_options_rejected(void **state)
{
    static const struct bad_opts bad[] = {
        {{2, 0, 0, 0}, 4, -EINVAL},                         /* length 0 */
        {{2, 1, 0, 0}, 4, -EINVAL},                         /* length 1 */
        {{1, 1, 1, 2}, 4, -EINVAL},                         /* kind at the last byte, no length */
        {{1, 1, 3, 3, 1, 1, 2, 4, 5, 180, 1, 1}, 8, -EINVAL}, /* MSS length past end (last 4 bytes cut) */
        {{8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1}, 8, -EINVAL},  /* TS runs past the header */
        {{8, 9, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0}, 12, -EINVAL},  /* TS length 9 */
        {{8, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 12, -EINVAL},/* TS length 12 */
        {{5, 2, 0, 0}, 4, -EINVAL},                         /* SACK without blocks */
        {{5, 6, 0, 0, 0, 1, 0, 0}, 8, -EINVAL},             /* SACK with half a block */
        {{5, 14, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0}, 16, -EINVAL}, /* 1.5 blocks */
        {{1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2}, 12, -EINVAL},/* truncated SACK: 2 blocks, room for 1 */
        {{5, 42}, 40, -EINVAL},                              /* SACK longer than the option area */
        {{1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 255}, 16, -EINVAL}, /* second option length 255 */
        {{8, 10, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 2}, 24, -EINVAL}, /* two TS */
        {{5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 10, 0, 0, 0, 3, 0, 0, 0, 4}, 20, -EINVAL}, /* two SACK */
        {{19, 18, 0}, 20, -EOPNOTSUPP},                      /* TCP-MD5 */
        {{29, 4, 0, 0}, 4, -EOPNOTSUPP},                     /* TCP-AO */
    };
    struct rs_splice_dir d;
    struct pkt_spec s;
    size_t i, len;
    uint8_t *p, *copy;

    (void)state;
    default_dir(&d);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        default_spec(&s);
        s.opts = bad[i].bytes;
        s.opt_len = bad[i].len;
        p = build_pkt(&s, &len);
        copy = malloc(len);
        assert_non_null(copy);
        memcpy(copy, p, len);
        if (rs_splice_packet(&d, p, (rs_u32)len) != bad[i].err)
            fail_msg("case %zu: expected %d", i, bad[i].err);
        assert_memory_equal(p, copy, len);
        /* same through the header-only entry points, with the buffer ending
         * exactly at the last option byte */
        assert_int_equal(rs_splice_tcp(&d, p + 20, (rs_u32)(20 + s.opt_len)), bad[i].err);
        assert_int_equal(rs_splice_opts_rewrite(&d, p + 20, (rs_u32)(20 + s.opt_len)), bad[i].err);
        assert_memory_equal(p, copy, len);
        free(copy);
        free(p);
    }
}

static void malformed_headers_rejected(void **state)
{
    struct rs_splice_optpos pos;
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t *p, *copy, *q;
    size_t len, n;

    (void)state;
    default_dir(&d);
    default_spec(&s);
    s.payload_len = 10;
    p = build_pkt(&s, &len);
    copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, p, len);

    /* every truncation of the headers fails, reading only what it was given */
    for (n = 0; n < 40; n++) {
        q = malloc(n ? n : 1);
        assert_non_null(q);
        memcpy(q, p, n);
        assert_int_equal(rs_splice_packet(&d, q, (rs_u32)n), -EINVAL);
        free(q);
    }
    /* headers present, payload absent: fine (only header bytes are touched) */
    q = malloc(40);
    assert_non_null(q);
    memcpy(q, p, 40);
    assert_int_equal(rs_splice_packet(&d, q, 40), 0);
    free(q);

    p[0] = 0x65;                                   /* IPv6 version */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    p[0] = 0x44;                                   /* IHL 4 */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    p[0] = 0x4f;                                   /* IHL 15: past the buffer's TCP */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    p[0] = 0x45;
    p[9] = 17;                                     /* UDP */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    p[9] = 6;
    rs_splice_store16(p + 2, 39);                  /* total length below IP+TCP */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    rs_splice_store16(p + 2, (uint16_t)len);
    p[6] = 0x20;                                   /* MF */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EOPNOTSUPP);
    p[6] = 0x00;
    p[7] = 0x10;                                   /* fragment offset */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EOPNOTSUPP);
    p[6] = 0x40;
    p[7] = 0;
    p[32] = 0x40;                                  /* data offset 4 */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    p[32] = 0xf0;                                  /* data offset 15: beyond total length */
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), -EINVAL);
    assert_int_equal(rs_splice_tcp(&d, p + 20, 59), -EINVAL);
    p[32] = 0x50;
    assert_memory_equal(p, copy, len);
    assert_int_equal(rs_splice_opts_scan(p + 20, 19, &pos), -EINVAL);
    assert_int_equal(rs_splice_opts_scan(p + 20, 61, &pos), -EINVAL);
    assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
    assert_checksums_valid(p);
    free(copy);
    free(p);
}

/* Random bytes in the option area: never a crash or an out-of-bounds read;
 * success leaves valid checksums, failure leaves the packet as it was. */
static void random_options_never_misbehave(void **state)
{
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t opts[40], *p, *copy;
    size_t len, k;
    int i, r, ok = 0, rejected = 0;

    (void)state;
    rng_seed(99);
    default_dir(&d);
    for (i = 0; i < 20000; i++) {
        default_spec(&s);
        s.opt_len = 4 * rng_below(11);
        for (k = 0; k < s.opt_len; k++) {
            /* bias towards the kinds the walker interprets */
            static const uint8_t kinds[] = {0, 1, 5, 8, 2, 19};
            opts[k] = rng_below(3) ? kinds[rng_below(6)] : (uint8_t)rng32();
            if (k && rng_below(2) && (opts[k - 1] == 5 || opts[k - 1] == 8))
                opts[k] = (uint8_t)(rng_below(2) ? 10 + 8 * rng_below(4) : rng_below(40));
        }
        s.opts = opts;
        s.payload_len = rng_below(3);
        d.flags = (rs_u8)rng_below(32);
        p = build_pkt(&s, &len);
        copy = malloc(len);
        assert_non_null(copy);
        memcpy(copy, p, len);
        r = rs_splice_packet(&d, p, (rs_u32)len);
        if (r == 0) {
            assert_checksums_valid(p);
            ok++;
        } else {
            assert_true(r == -EINVAL || r == -EOPNOTSUPP);
            assert_memory_equal(p, copy, len);
            rejected++;
        }
        free(copy);
        free(p);
    }
    assert_true(ok > 1000 && rejected > 1000); /* both paths exercised */
}

/* ---- checksums ------------------------------------------------------------ */

static void csum_helpers_match_recompute(void **state)
{
    uint8_t buf[64];
    uint32_t off, oldv, newv;
    uint16_t c, old16, new16;
    int i;

    (void)state;
    rng_seed(21);
    for (i = 0; i < 20000; i++) {
        size_t n = 8 + rng_below(50);
        for (off = 0; off < n; off++)
            buf[off] = (uint8_t)rng32();
        if (i % 100 == 0)
            memset(buf, 0, n); /* mostly zero data */
        /* byte 0 never changes and is never 0, like an IPv4 header's first
         * byte: RFC 1624 eqn. 3 differs from a recompute (0 vs 0xffff) only
         * for all-zero data, which no IP or TCP header is */
        buf[0] = 0x45;
        c = fold_not(sum_bytes(0, buf, n));

        off = 1 + rng_below((uint32_t)n - 4);
        oldv = rs_splice_load32(buf + off);
        newv = (i % 7 == 0) ? 0 : (i % 11 == 0) ? 0xffffffffu : rng32();
        rs_splice_store32(buf + off, newv);
        c = rs_splice_csum_replace32_at(c, oldv, newv, off);
        assert_int_equal(c, fold_not(sum_bytes(0, buf, n)));

        off = 1 + rng_below((uint32_t)n - 1);
        old16 = buf[off];
        buf[off] = (uint8_t)rng32();
        c = rs_splice_csum_replace8_at(c, (rs_u8)old16, buf[off], off);
        assert_int_equal(c, fold_not(sum_bytes(0, buf, n)));

        off = 2 + 2 * rng_below((uint32_t)n / 2 - 1);
        old16 = rs_splice_load16(buf + off);
        new16 = (uint16_t)rng32();
        rs_splice_store16(buf + off, new16);
        c = rs_splice_csum_replace16(c, old16, new16);
        assert_int_equal(c, fold_not(sum_bytes(0, buf, n)));
    }
}

/* Random packets (addresses, ports, IP options, option layouts at odd and
 * even offsets, odd and even payload lengths, any flags and deltas):
 * translated fields are what the deltas say, and both checksums equal a
 * full recomputation. */
static void random_packets_checksum_identity(void **state)
{
    struct rs_splice_dir d;
    struct pkt_spec s;
    uint8_t opts[40], *p, *t, ipbuf[60], tcpbuf[RS_TCP_HDR_MAX];
    size_t len, off, k, ts_at, sack_at, nblk, ihl;
    uint32_t tsval, tsecr, edges[8];
    int i, has_ts;

    (void)state;
    rng_seed(2024);
    for (i = 0; i < 5000; i++) {
        memset(&d, 0, sizeof(d));
        d.seq_delta = rng32();
        d.ack_delta = rng32();
        d.tsval_delta = rng32();
        d.tsecr_delta = rng32();
        d.saddr = rng32();
        d.daddr = rng32();
        d.sport = (rs_u16)rng32();
        d.dport = (rs_u16)rng32();
        d.win_scale_in = (rs_u8)rng_below(15);
        d.win_scale_out = (rs_u8)rng_below(15);
        d.flags = RS_SPLICE_F_TS | RS_SPLICE_F_SACK;

        /* options: leading NOPs (0..3) shift the rest to any parity */
        memset(opts, 0, sizeof(opts));
        off = rng_below(4);
        memset(opts, 1, off);
        ts_at = sack_at = 0;
        tsval = rng32();
        tsecr = rng_below(8) ? rng32() : 0;
        has_ts = (int)rng_below(2);
        if (has_ts) {
            ts_at = off;
            opts[off] = 8;
            opts[off + 1] = 10;
            rs_splice_store32(opts + off + 2, tsval);
            rs_splice_store32(opts + off + 6, tsecr);
            off += 10;
        }
        nblk = (40 - off - 2) / 8;
        if (nblk > 4)
            nblk = 4;
        nblk = nblk ? rng_below((uint32_t)nblk + 1) : 0;
        if (nblk) {
            sack_at = off;
            opts[off] = 5;
            opts[off + 1] = (uint8_t)(2 + 8 * nblk);
            for (k = 0; k < 2 * nblk; k++) {
                edges[k] = rng32();
                rs_splice_store32(opts + off + 2 + 4 * k, edges[k]);
            }
            off += 2 + 8 * nblk;
        }
        if (off <= 36 && rng_below(2)) {
            opts[off] = 254; /* unknown experimental option passes */
            opts[off + 1] = 4;
            opts[off + 2] = (uint8_t)rng32();
            opts[off + 3] = (uint8_t)rng32();
            off += 4;
        }

        default_spec(&s);
        s.saddr = rng32();
        s.daddr = rng32();
        s.sport = (uint16_t)rng32();
        s.dport = (uint16_t)rng32();
        s.seq = rng32();
        s.ack = rng32();
        s.win = (uint16_t)rng32();
        s.flags = (uint8_t)rng32();
        s.opts = opts;
        s.opt_len = (off + 3) & ~(size_t)3;
        s.ip_opt_len = rng_below(4) ? 0 : 4 * rng_below(11);
        s.payload_len = rng_below(4) ? rng_below(64) : rng_below(1461);
        p = build_pkt(&s, &len);
        /* the BPF way: IP header and a 60-byte TCP header buffer apart */
        ihl = 20 + s.ip_opt_len;
        memset(tcpbuf, 0xee, sizeof(tcpbuf));
        memcpy(ipbuf, p, ihl);
        memcpy(tcpbuf, p + ihl, 20 + s.opt_len);
        assert_int_equal(rs_splice_tcp(&d, tcpbuf, sizeof(tcpbuf)), 0);
        rs_splice_ip4_addrs(&d, ipbuf, tcpbuf);
        if (20 + s.opt_len < sizeof(tcpbuf))
            assert_int_equal(tcpbuf[20 + s.opt_len], 0xee); /* nothing past the header */

        assert_int_equal(rs_splice_packet(&d, p, (rs_u32)len), 0);
        assert_memory_equal(ipbuf, p, ihl);
        assert_memory_equal(tcpbuf, p + ihl, 20 + s.opt_len);

        check_fixed_fields(&d, &s, p);
        t = p + ihl;
        if (has_ts) {
            assert_int_equal(rs_splice_load32(t + 20 + ts_at + 2), tsval + d.tsval_delta);
            assert_int_equal(rs_splice_load32(t + 20 + ts_at + 6), tsecr ? tsecr + d.tsecr_delta : 0);
        }
        for (k = 0; k < 2 * nblk; k++)
            assert_int_equal(rs_splice_load32(t + 20 + sack_at + 2 + 4 * k), edges[k] + d.ack_delta);
        assert_checksums_valid(p);
        free(p);
    }
}

/* The sender's position: the end of its newest segment (SYN and FIN count
 * one; retransmissions and reordered segments do not move it back), its
 * newest ACK, a FIN for good; across the sequence wrap. */
static void position_follows_the_sender(void **state)
{
    struct rs_splice_pos p = { 0 };
    struct pkt_spec s;
    uint8_t *pkt;
    size_t len;
    int has_ack;

    (void)state;
    default_spec(&s);
    s.flags = RS_TCP_F_SYN;
    s.seq = 0xfffffff0u;
    pkt = build_pkt(&s, &len);
    assert_true(rs_splice_pos_at(&p, pkt + 20));  /* nothing known yet */
    assert_int_equal(rs_splice_pos_update(&p, pkt + 20, 0, &has_ack), 0);
    assert_false(has_ack);
    assert_true(p.has_seq);
    assert_int_equal(p.seq_next, 0xfffffff1u);
    assert_false(p.has_ack);
    free(pkt);

    s.flags = RS_TCP_F_ACK;
    s.seq = 0xfffffff1u;
    s.ack = 5000;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_pos_update(&p, pkt + 20, 100, &has_ack), 5000);
    assert_true(has_ack);
    assert_int_equal(p.seq_next, 0x55u);           /* wrapped */
    assert_int_equal(p.ack_max, 5000);
    free(pkt);

    /* A segment the data path drops for good (a HOLD): its ACK counts,
     * its data and FIN do not. */
    s.flags = RS_TCP_F_ACK | RS_TCP_F_FIN;
    s.seq = 0x55u;
    s.ack = 5100;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_pos_ack(&p, pkt + 20, &has_ack), 5100);
    assert_true(has_ack);
    assert_int_equal(p.seq_next, 0x55u);
    assert_false(p.fin_seen);
    assert_int_equal(p.ack_max, 5100);
    p.ack_max = 5000;
    free(pkt);
    s.flags = RS_TCP_F_ACK;

    s.seq = 0xfffffff1u;                           /* a retransmission of less */
    s.ack = 4000;                                  /* and an older ACK */
    pkt = build_pkt(&s, &len);
    rs_splice_pos_update(&p, pkt + 20, 10, &has_ack);
    assert_int_equal(p.seq_next, 0x55u);
    assert_int_equal(p.ack_max, 5000);
    assert_false(p.fin_seen);
    free(pkt);

    s.seq = 0x55u + RS_SPLICE_POS_JUMP_MAX;        /* forged far ahead: not followed */
    s.ack = 5000 + RS_SPLICE_POS_JUMP_MAX + 1;
    pkt = build_pkt(&s, &len);
    rs_splice_pos_update(&p, pkt + 20, 10, &has_ack);
    assert_int_equal(p.seq_next, 0x55u);
    assert_int_equal(p.ack_max, 5000);
    free(pkt);
    s.seq = 0x55u + RS_SPLICE_POS_JUMP_MAX - 10;   /* as far as a window may reach */
    s.ack = 5000 + RS_SPLICE_POS_JUMP_MAX;
    pkt = build_pkt(&s, &len);
    rs_splice_pos_update(&p, pkt + 20, 10, &has_ack);
    assert_int_equal(p.seq_next, 0x55u + RS_SPLICE_POS_JUMP_MAX);
    assert_int_equal(p.ack_max, 5000 + RS_SPLICE_POS_JUMP_MAX);
    p.seq_next = 0x55u;
    p.ack_max = 5000;
    free(pkt);

    s.seq = 0x56u;                                 /* not where the stream stands */
    s.ack = 4000;
    s.flags = RS_TCP_F_ACK | RS_TCP_F_RST;
    pkt = build_pkt(&s, &len);
    assert_false(rs_splice_pos_at(&p, pkt + 20));
    free(pkt);

    s.seq = 0x55u;
    s.flags = RS_TCP_F_ACK | RS_TCP_F_FIN;
    pkt = build_pkt(&s, &len);
    assert_true(rs_splice_pos_at(&p, pkt + 20));  /* exactly at its end */
    assert_false(rs_splice_pos_is_end(&p, pkt + 20, 0, 0));
    rs_splice_pos_update(&p, pkt + 20, 0, &has_ack);
    assert_int_equal(p.seq_next, 0x56u);
    assert_true(p.fin_seen);
    /* Its retransmission (held back the first time) is still the end... */
    assert_false(rs_splice_pos_at(&p, pkt + 20));
    assert_true(rs_splice_pos_is_end(&p, pkt + 20, 0, 0));
    assert_false(rs_splice_pos_is_end(&p, pkt + 20, 1, 0));
    free(pkt);
    s.flags = RS_TCP_F_ACK | RS_TCP_F_RST;         /* ...a RST there is not */
    pkt = build_pkt(&s, &len);
    assert_false(rs_splice_pos_is_end(&p, pkt + 20, 0, 0));
    assert_true(rs_splice_pos_is_end(&p, pkt + 20, 0, 1));
    free(pkt);
}

/* The ACK clamp: an ACK past what the server sent comes back to it, the
 * window's right edge stays (saturating at 0xffff), the checksum stays
 * valid; an ACK at or below it is untouched. */
static void ack_clamped_to_what_was_sent(void **state)
{
    struct pkt_spec s;
    uint8_t *pkt;
    size_t len;

    (void)state;
    default_spec(&s);
    s.ack = 0x00000010u;               /* past 0xfffffff0 by 0x20, across the wrap */
    s.win = 100;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_clamp_ack(pkt + 20, 0xfffffff0u, 7), 0x20);
    assert_int_equal(rs_splice_load32(pkt + 28), 0xfffffff0u);
    assert_int_equal(rs_splice_load16(pkt + 34), (100 * 128 + 0x20) >> 7);
    assert_checksums_valid(pkt);
    assert_int_equal(rs_splice_clamp_ack(pkt + 20, 0xfffffff0u, 7), 0);   /* now at it: untouched */
    free(pkt);

    s.ack = 2000;
    s.win = 0xfff0;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_clamp_ack(pkt + 20, 1000, 0), 1000);
    assert_int_equal(rs_splice_load16(pkt + 34), 0xffff);                  /* saturates */
    assert_checksums_valid(pkt);
    free(pkt);

    s.ack = 900;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_clamp_ack(pkt + 20, 1000, 0), 0);
    assert_int_equal(rs_splice_load32(pkt + 28), 900);
    free(pkt);
}

/* The TSval of a header with a TS option; none without one or with
 * malformed options. */
/* Closed in full only when both FINs were sent and each acknowledged by
 * the other side, through the entries' ACK translations. */
static void closed_both_ways(void **state)
{
    struct rs_splice_dir db = { .ack_delta = 1000 }, dc = { .ack_delta = (rs_u32)-5000 };
    /* The backend's numbering: its FIN ends at 9001; the client's: 20001. */
    struct rs_splice_pos b = { .seq_next = 9001, .has_seq = 1, .fin_seen = 1, .ack_max = 19001, .has_ack = 1 };
    struct rs_splice_pos c = { .seq_next = 20001, .has_seq = 1, .fin_seen = 1, .ack_max = 14001, .has_ack = 1 };

    (void)state;
    assert_true(rs_splice_closed_both(&b, &db, &c, &dc));   /* 19001+1000 >= 20001, 14001-5000 >= 9001 */
    assert_true(rs_splice_closed_both(&c, &dc, &b, &db));
    c.ack_max = 14000;                                       /* the backend's FIN not acknowledged */
    assert_false(rs_splice_closed_both(&b, &db, &c, &dc));
    c.ack_max = 14001;
    b.ack_max = 19000;                                       /* the client's FIN not acknowledged */
    assert_false(rs_splice_closed_both(&b, &db, &c, &dc));
    b.ack_max = 19001;
    c.fin_seen = 0;                                          /* the client never closed */
    assert_false(rs_splice_closed_both(&b, &db, &c, &dc));
    c.fin_seen = 1;
    b.has_ack = 0;
    assert_false(rs_splice_closed_both(&b, &db, &c, &dc));
    b.has_ack = 1;
    c.seq_next = 0xfffffff0u;                                /* across the wrap */
    b.ack_max = (rs_u32)(0x10u - 1000u);                    /* its ACK 0x10, past it */
    assert_true(rs_splice_closed_both(&b, &db, &c, &dc));
}

static void tsval_found(void **state)
{
    static const uint8_t ts[] = { 1, 1, 8, 10, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 9 };
    static const uint8_t bad[] = { 1, 1, 8, 9, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 9 };
    struct pkt_spec s;
    uint8_t *pkt;
    size_t len;
    uint32_t v = 0;

    (void)state;
    default_spec(&s);
    s.opts = ts;
    s.opt_len = sizeof(ts);
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_tsval_get(pkt + 20, 32, &v), 0);
    assert_int_equal(v, 0x11223344u);
    free(pkt);
    s.opts = bad;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_tsval_get(pkt + 20, 32, &v), -RS_SPLICE_EINVAL);
    free(pkt);
    s.opt_len = 0;
    pkt = build_pkt(&s, &len);
    assert_int_equal(rs_splice_tsval_get(pkt + 20, 20, &v), -RS_SPLICE_EINVAL);
    free(pkt);
}

/* ---- A splice made at the client's SYN ------------------------------------ */

/* A SYN as Linux sends it: MSS, SACK-permitted, TS, NOP, window scale. */
static size_t linux_syn(uint8_t *t, uint32_t isn, uint32_t tsval, uint8_t ws, uint8_t flags)
{
    static const uint8_t opts[20] = { 2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 0 };

    memset(t, 0, 40);
    rs_splice_store32(t + 4, isn);
    t[12] = 10 << 4;
    t[13] = flags;
    memcpy(t + 20, opts, sizeof(opts));
    rs_splice_store32(t + 28, tsval);
    t[39] = ws;
    return 40;
}

static void syn_info_read(void **state)
{
    uint8_t t[60];
    struct rs_syn_info si;

    (void)state;
    linux_syn(t, 0xfffffff0u, 12345, 7, RS_TCP_F_SYN);
    assert_int_equal(rs_splice_syn_info(t, 40, &si), 0);
    assert_int_equal(si.isn, 0xfffffff0u);
    assert_int_equal(si.tsval, 12345);
    assert_int_equal(si.mss, 1460);
    assert_int_equal(si.wscale, 7);
    assert_int_equal(si.flags, RS_SYN_SEEN | RS_SYN_WS | RS_SYN_SACK | RS_SYN_TS);

    /* Options absent: none claimed. */
    memset(t + 20, RS_TCPOPT_NOP, 20);
    assert_int_equal(rs_splice_syn_info(t, 40, &si), 0);
    assert_int_equal(si.flags, RS_SYN_SEEN);
    assert_int_equal(si.mss, 0);

    /* A scale above 14 is taken as 14 (RFC 7323 §2.3). */
    linux_syn(t, 1, 1, 15, RS_TCP_F_SYN | RS_TCP_F_ACK);
    assert_int_equal(rs_splice_syn_info(t, 40, &si), 0);
    assert_int_equal(si.wscale, 14);
}

static void syn_info_rejects(void **state)
{
    uint8_t t[60];
    struct rs_syn_info si;

    (void)state;
    linux_syn(t, 1, 1, 7, RS_TCP_F_ACK);                /* no SYN */
    assert_int_equal(rs_splice_syn_info(t, 40, &si), -RS_SPLICE_EINVAL);
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    t[38] = 4;                                          /* window scale of length 4 */
    assert_int_equal(rs_splice_syn_info(t, 40, &si), -RS_SPLICE_EINVAL);
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    t[21] = 3;                                          /* MSS of length 3 */
    assert_int_equal(rs_splice_syn_info(t, 40, &si), -RS_SPLICE_EINVAL);
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    t[38] = 5;                                          /* runs past the header */
    assert_int_equal(rs_splice_syn_info(t, 40, &si), -RS_SPLICE_EINVAL);
    assert_int_equal(rs_splice_syn_info(t, 64, &si), -RS_SPLICE_EINVAL);
    assert_int_equal(rs_splice_syn_info(t, 16, &si), -RS_SPLICE_EINVAL);
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    t[26] = RS_TCPOPT_MD5;                              /* TCP-MD5 where TS was (18 bytes): no splice carries it */
    t[27] = 10;
    assert_int_equal(rs_splice_syn_info(t, 40, &si), -RS_SPLICE_EINVAL);
}

static void ident_option_roundtrip(void **state)
{
    uint8_t t[60];
    uint32_t addr = 0;
    uint16_t port = 0;

    (void)state;
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    assert_int_equal(rs_ident_opt_get(t, 40, &addr, &port), -1);    /* none */
    rs_ident_opt_put(t + 40, 0x0a000102u, 54321);
    t[12] = 13 << 4;
    assert_int_equal(rs_ident_opt_get(t, 52, &addr, &port), 0);
    assert_int_equal(addr, 0x0a000102u);
    assert_int_equal(port, 54321);
    /* The SYN's other options still read the same. */
    {
        struct rs_syn_info si;

        assert_int_equal(rs_splice_syn_info(t, 52, &si), 0);
        assert_int_equal(si.wscale, 7);
        assert_int_equal(si.mss, 1460);
    }
    /* Cut short, or with another experiment's ExID: not ours. */
    assert_int_equal(rs_ident_opt_get(t, 48, &addr, &port), -1);
    t[45] ^= 1;
    assert_int_equal(rs_ident_opt_get(t, 52, &addr, &port), -1);
    t[45] ^= 1;
    /* A client's own option naming somebody else, then its options ended
     * early (EOL), then the program's: the program's alone is believed. */
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    rs_ident_opt_put(t + 20, 0x0a000999u, 1);
    t[32] = RS_TCPOPT_EOL;
    rs_ident_opt_put(t + 40, 0x0a000102u, 54321);
    t[12] = 13 << 4;
    assert_int_equal(rs_ident_opt_get(t, 52, &addr, &port), 0);
    assert_int_equal(addr, 0x0a000102u);
    assert_int_equal(port, 54321);
    /* The client's alone (not at the end: other options follow): none. */
    linux_syn(t, 1, 1, 7, RS_TCP_F_SYN);
    rs_ident_opt_put(t + 20, 0x0a000999u, 1);
    memset(t + 32, RS_TCPOPT_NOP, 20);
    t[12] = 13 << 4;
    assert_int_equal(rs_ident_opt_get(t, 52, &addr, &port), -1);
}

static void syn_built_reads_back(void **state)
{
    uint8_t t[60], b[60];
    struct rs_syn_info si, back;
    uint32_t addr;
    uint16_t port;
    uint32_t n;

    (void)state;
    linux_syn(t, 0x12345678u, 777, 9, RS_TCP_F_SYN);
    rs_splice_store16(t + 14, 42340);
    assert_int_equal(rs_splice_syn_info(t, 40, &si), 0);
    n = rs_syn_build(&si, b);
    assert_int_equal(n, 40);
    assert_int_equal(b[12] >> 4, 10);
    assert_memory_equal(b + 12, t + 12, 28);           /* Linux's SYN, byte for byte past the ports */
    assert_int_equal(rs_splice_syn_info(b, n, &back), 0);
    assert_memory_equal(&back, &si, sizeof(si));
    assert_int_equal(rs_ident_opt_get(b, n, &addr, &port), -1);   /* no name: the program adds it */
    /* No options at all. */
    memset(&si, 0, sizeof(si));
    si.isn = 5;
    si.flags = RS_SYN_SEEN;
    n = rs_syn_build(&si, b);
    assert_int_equal(n, 20);
    assert_int_equal(rs_splice_syn_info(b, n, &back), 0);
    assert_int_equal(back.flags, RS_SYN_SEEN);
    assert_int_equal(back.isn, 5);
}

static void syn_conn_from_handshake(void **state)
{
    struct rs_syn_info syn = { .isn = 100, .tsval = 5000, .mss = 1460, .wscale = 7,
                               .flags = RS_SYN_SEEN | RS_SYN_WS | RS_SYN_SACK | RS_SYN_TS };
    struct rs_syn_info synack = { .isn = 0xffffffffu, .tsval = 9000, .mss = 1460, .wscale = 9,
                                  .flags = RS_SYN_SEEN | RS_SYN_WS | RS_SYN_SACK | RS_SYN_TS };
    struct rs_splice_conn c;

    (void)state;
    rs_splice_syn_conn(&syn, &synack, 0x0a000001u, 80, 0x0a000102u, 40000, &c);
    assert_int_equal(c.local_addr, 0x0a000001u);
    assert_int_equal(c.local_port, 80);
    assert_int_equal(c.remote_addr, 0x0a000102u);
    assert_int_equal(c.remote_port, 40000);
    assert_int_equal(c.rcv_nxt, 101);
    assert_int_equal(c.snd_nxt, 0);             /* wraps */
    assert_int_equal(c.ts_recent, 5000);
    assert_int_equal(c.ts_now, 9000);
    assert_int_equal(c.snd_wscale, 7);
    assert_int_equal(c.rcv_wscale, 9);
    assert_true(c.ts_ok && c.sack_ok);

    /* One end without window scale, SACK or timestamps: none in effect. */
    synack.flags = RS_SYN_SEEN;
    rs_splice_syn_conn(&syn, &synack, 1, 2, 3, 4, &c);
    assert_int_equal(c.snd_wscale, 0);
    assert_int_equal(c.rcv_wscale, 0);
    assert_false(c.ts_ok || c.sack_ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(init_deltas_and_wrap),
        cmocka_unit_test(init_rejects_bad_scale),
        cmocka_unit_test(init_option_mismatch),
        cmocka_unit_test(errno_values_match_libc),
        cmocka_unit_test(window_rescale),
        cmocka_unit_test(timestamps_rewritten),
        cmocka_unit_test(timestamps_roundtrip),
        cmocka_unit_test(sack_one_to_four_blocks),
        cmocka_unit_test(strip_when_not_negotiated),
        cmocka_unit_test(syn_and_ackless_fields),
        cmocka_unit_test(malformed_options_rejected),
        cmocka_unit_test(malformed_headers_rejected),
        cmocka_unit_test(random_options_never_misbehave),
        cmocka_unit_test(csum_helpers_match_recompute),
        cmocka_unit_test(random_packets_checksum_identity),
        cmocka_unit_test(position_follows_the_sender),
        cmocka_unit_test(ack_clamped_to_what_was_sent),
        cmocka_unit_test(closed_both_ways),
        cmocka_unit_test(tsval_found),
        cmocka_unit_test(syn_info_read),
        cmocka_unit_test(syn_info_rejects),
        cmocka_unit_test(ident_option_roundtrip),
        cmocka_unit_test(syn_conn_from_handshake),
        cmocka_unit_test(syn_built_reads_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
