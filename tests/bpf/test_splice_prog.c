/* The tc program rs-proxy runs (build/splice.skel.h, the very object it
 * embeds), fed frames with BPF_PROG_TEST_RUN and compared with
 * core/splice.h's rs_splice_packet on the same frames: the translation the
 * unit tests check is the translation the data path does, checksums
 * included (the program fixes them with the kernel's helpers).  Also: the
 * states that drop, a guarded FIN held back and reported, the ACK clamp.
 * Needs CAP_BPF (root); run by tests/integration/test_splice.py. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <cmocka.h>

#include <linux/pkt_cls.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "splice.h"
#include "splice.skel.h"
#include "splice_map.h"

#define ETH_LEN 14

static struct rs_splice *skel;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static uint16_t csum_fold_not(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static uint32_t sum16(uint32_t sum, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

/* Sets valid IPv4 and TCP checksums on the IPv4 packet at 'ip'. */
static void set_checksums(uint8_t *ip, size_t len)
{
    uint8_t pseudo[12];

    ip[10] = ip[11] = 0;
    rs_splice_store16(ip + 10, csum_fold_not(sum16(0, ip, 20)));
    ip[36] = ip[37] = 0;
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    rs_splice_store16(pseudo + 10, (uint16_t)(len - 20));
    rs_splice_store16(ip + 36, csum_fold_not(sum16(sum16(0, pseudo, 12), ip + 20, len - 20)));
}

/* A checksum and its one's-complement twin (0x0000 / 0xffff) are the same sum. */
static void assert_same_bytes(const uint8_t *a, const uint8_t *b, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (a[i] == b[i])
            continue;
        if ((i == ETH_LEN + 36 || i == ETH_LEN + 37) && (a[i] ^ b[i]) == 0xff)
            continue;
        fail_msg("byte %zu differs: program %#x, core %#x", i, a[i], b[i]);
    }
}

/* A random frame: Ethernet, IPv4 (no options), TCP with random options
 * among NOP, TS and SACK (1..3 blocks), random flags and payload. */
static size_t random_frame(uint8_t *f, uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport)
{
    size_t opt = 0, pay = rnd() % 200, len;
    uint8_t *ip = f + ETH_LEN, *tcp = ip + 20;

    memset(f, 0, ETH_LEN + 20 + 60 + 200);
    f[12] = 0x08;                                       /* IPv4 */
    ip[0] = 0x45;
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    rs_splice_store32(ip + 12, saddr);
    rs_splice_store32(ip + 16, daddr);
    rs_splice_store16(tcp, sport);
    rs_splice_store16(tcp + 2, dport);
    rs_splice_store32(tcp + 4, rnd());
    rs_splice_store32(tcp + 8, rnd());
    tcp[13] = RS_TCP_F_ACK | (rnd() % 4 == 0 ? 0x08 /* PSH */ : 0);
    rs_splice_store16(tcp + 14, (uint16_t)rnd());
    if (rnd() % 4) {                                    /* TS */
        uint8_t ts[12] = { 1, 1, 8, 10 };
        rs_splice_store32(ts + 4, rnd());
        rs_splice_store32(ts + 8, rnd());
        memcpy(tcp + 20, ts, 12);
        opt = 12;
    }
    if (rnd() % 3 == 0) {                               /* SACK, 1..3 blocks */
        unsigned n = 1 + rnd() % 3;
        uint8_t *o = tcp + 20 + opt;
        o[0] = o[1] = 1;
        o[2] = 5;
        o[3] = (uint8_t)(2 + 8 * n);
        for (unsigned i = 0; i < 2 * n; i++)
            rs_splice_store32(o + 4 + 4 * i, rnd());
        opt += 4 + 8 * n;
    }
    tcp[12] = (uint8_t)((20 + opt) / 4 << 4);
    for (size_t i = 0; i < pay; i++)
        tcp[20 + opt + i] = (uint8_t)rnd();
    len = 20 + 20 + opt + pay;
    rs_splice_store16(ip + 2, (uint16_t)len);
    set_checksums(ip, len);
    return ETH_LEN + len;
}

static struct rs_flow_key key_of(const uint8_t *f)
{
    struct rs_flow_key k;

    memcpy(&k.saddr, f + ETH_LEN + 12, 4);
    memcpy(&k.daddr, f + ETH_LEN + 16, 4);
    memcpy(&k.sport, f + ETH_LEN + 20, 2);
    memcpy(&k.dport, f + ETH_LEN + 22, 2);
    return k;
}

static void put_flow(const struct rs_flow_key *k, const struct rs_flow *fl)
{
    struct rs_flow_track t = { 0 };

    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), k, &t, BPF_ANY), 0);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_flows), k, fl, BPF_ANY), 0);
}

/* Runs the program on 'in' ('len' bytes); the frame it leaves in 'out',
 * 'grown' bytes longer (a SYN the program names its client in). */
static int run_grown(const uint8_t *in, size_t len, uint8_t *out, size_t grown)
{
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in, .data_size_in = (uint32_t)len, .data_out = out,
                .data_size_out = (uint32_t)len + 64, .repeat = 1);

    assert_int_equal(bpf_prog_test_run_opts(bpf_program__fd(skel->progs.rs_splice_ingress), &o), 0);
    assert_int_equal(o.data_size_out, len + grown);
    return (int)o.retval;
}

static int run(const uint8_t *in, size_t len, uint8_t *out)
{
    return run_grown(in, len, out, 0);
}

static struct rs_splice_dir random_dir(void)
{
    struct rs_splice_dir d = {
        .seq_delta = rnd(), .ack_delta = rnd(), .tsval_delta = rnd(), .tsecr_delta = rnd(),
        .saddr = 0x0a000001u, .daddr = 0x0a00000bu, .sport = (uint16_t)(1024 + rnd() % 60000), .dport = 8080,
        .win_scale_in = (uint8_t)(rnd() % 15), .win_scale_out = (uint8_t)(rnd() % 15),
        .flags = RS_SPLICE_F_TS | RS_SPLICE_F_SACK,
    };
    return d;
}

/* 500 random segments: the program's output equals rs_splice_packet's. */
static void program_translates_as_core_does(void **state)
{
    uint8_t in[400], out[464], want[400];

    (void)state;
    for (int i = 0; i < 500; i++) {
        size_t len = random_frame(in, 0x0a000101u + (uint32_t)i, 0x0a000001u, (uint16_t)(40000 + i), 80);
        struct rs_flow_key k = key_of(in);
        struct rs_flow fl = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .splice_id = 7 };

        put_flow(&k, &fl);
        memcpy(want, in, len);
        assert_int_equal(rs_splice_packet(&fl.dir, want + ETH_LEN, (uint32_t)(len - ETH_LEN)), 0);
        assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
        assert_same_bytes(out, want, len);
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), &k);
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), &k);
    }
}

/* Counts FIN events: ctx[0] those held back (guarded), ctx[1] those passed. */
static int count_fin(void *ctx, void *data, size_t len)
{
    const struct rs_flow_event *e = data;

    if (len >= sizeof(*e) && (e->flags & RS_FLOW_SEEN_FIN))
        ++((int *)ctx)[(e->flags & RS_FLOW_GUARDED) ? 0 : 1];
    return 0;
}

/* A guarded backend's segment that a HOLD drops never reaches the client:
 * its data does not move the sender's position (the proxy's RECOVER says
 * from it how far the backend's bytes went, and the logger waited half its
 * budget, ~390 ms, for bytes the backend's kernel sent on after the hold);
 * its ACK does.  An unguarded sender's segment (the client's) still moves
 * both: the mirror gave the logger its bytes. */
static void hold_keeps_a_guarded_senders_position(void **state)
{
    uint8_t in[400], out[464];
    size_t len = random_frame(in, 0x0a00000bu, 0x0a000001u, 8080, 41001);
    struct rs_flow_key k = key_of(in);
    struct rs_flow fl = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .guard = 1 };
    struct rs_flow_track t;
    size_t hdr = ETH_LEN + 20 + (size_t)(in[ETH_LEN + 32] >> 4) * 4;
    uint32_t pos, ack;

    (void)state;
    put_flow(&k, &fl);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
    pos = t.pos.seq_next;
    ack = t.pos.ack_max;
    fl.state = RS_FLOW_HOLD;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_flows), &k, &fl, BPF_ANY), 0);  /* track kept */
    for (int guard = 1; guard >= 0; guard--) {
        fl.guard = (uint32_t)guard;
        assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_flows), &k, &fl, BPF_ANY), 0);
        rs_splice_store32(in + ETH_LEN + 24, pos);                          /* the next data, */
        rs_splice_store32(in + ETH_LEN + 28, ack + 100 * (uint32_t)(2 - guard));   /* a newer ACK */
        in[ETH_LEN + 33] |= RS_TCP_F_FIN;
        set_checksums(in + ETH_LEN, len - ETH_LEN);
        assert_int_equal(run(in, len, out), TC_ACT_SHOT);
        assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
        assert_int_equal(t.pos.ack_max, ack + 100 * (uint32_t)(2 - guard));
        if (guard) {
            assert_int_equal(t.pos.seq_next, pos);
            assert_false(t.pos.fin_seen);
        } else {
            assert_int_equal(t.pos.seq_next, pos + (uint32_t)(len - hdr) + 1);
            assert_true(t.pos.fin_seen);
        }
    }
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), &k);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), &k);
}

/* FROZEN, HOLD and ACKONLY-with-data drop; a guarded FIN is held back and
 * reported once (data it carries passes without it), its retransmission passes and is reported once the flow is
 * re-activated unguarded (a legitimate close); the track half follows the
 * sender. */
static void states_drop_and_guard(void **state)
{
    uint8_t in[400], out[464], want[400];
    size_t len = random_frame(in, 0x0a000201u, 0x0a000001u, 41000, 80);
    struct rs_flow_key k = key_of(in);
    struct rs_flow fl = { .dir = random_dir(), .state = RS_FLOW_FROZEN, .ifindex = 1 };
    struct rs_flow_track t;
    struct ring_buffer *rb = NULL;
    int events[2] = { 0, 0 };
    uint32_t pos;
    size_t hdr = ETH_LEN + 20 + (size_t)(in[ETH_LEN + 32] >> 4) * 4;

    (void)state;
    put_flow(&k, &fl);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    fl.state = RS_FLOW_HOLD;
    put_flow(&k, &fl);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    fl.state = RS_FLOW_ACKONLY;
    put_flow(&k, &fl);
    assert_int_equal(run(in, len, out), len > hdr ? TC_ACT_SHOT : TC_ACT_REDIRECT);   /* data waits */

    /* A guarded backend: a FIN or RST where its stream stands is dropped and
     * reported once (RS_FLOW_GUARDED); one anywhere else (forged, stale) is
     * dropped, counted, not reported, and does not move the position. */
    fl.state = RS_FLOW_ACTIVE;
    fl.guard = 1;
    put_flow(&k, &fl);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);   /* data: the position is learnt */
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
    assert_true(t.pos.has_seq);
    pos = t.pos.seq_next;
    rb = ring_buffer__new(bpf_map__fd(skel->maps.rs_events), count_fin, events, NULL);
    assert_non_null(rb);
    ring_buffer__consume(rb);               /* what earlier tests left */
    events[0] = events[1] = 0;
    in[ETH_LEN + 33] |= RS_TCP_F_FIN;
    rs_splice_store32(in + ETH_LEN + 24, pos + 100000);      /* forged: far from the stream */
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    ring_buffer__consume(rb);
    assert_int_equal(events[0] + events[1], 0);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
    assert_int_equal(t.ends_refused, 1);
    assert_int_equal(t.pos.seq_next, pos);
    assert_false(t.pos.fin_seen);
    rs_splice_store32(in + ETH_LEN + 24, pos);                /* the real end */
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    /* Data with the FIN passes without it (translated as core does with
     * the FIN flag cleared); only the FIN is held. */
    memcpy(want, in, len);
    want[ETH_LEN + 33] &= (uint8_t)~RS_TCP_F_FIN;
    set_checksums(want + ETH_LEN, len - ETH_LEN);
    assert_int_equal(rs_splice_packet(&fl.dir, want + ETH_LEN, (uint32_t)(len - ETH_LEN)), 0);
    for (int i = 0; i < 2; i++) {                             /* again (stale now): not reported twice */
        assert_int_equal(run(in, len, out), len > hdr ? TC_ACT_REDIRECT : TC_ACT_SHOT);
        if (len > hdr)
            assert_same_bytes(out, want, len);
    }
    ring_buffer__consume(rb);
    assert_int_equal(events[0], 1);
    assert_int_equal(events[1], 0);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
    assert_true(t.pos.fin_seen);
    /* The held FIN is kept for the daemon: a bare FIN after the data. */
    assert_int_equal(t.fin_hdr_len, hdr - ETH_LEN - 20);
    assert_int_equal(rs_splice_load32(t.fin_hdr + 4), pos + (uint32_t)(len - hdr));
    assert_true(t.fin_hdr[13] & RS_TCP_F_FIN);
    assert_int_equal(rs_splice_load32(t.fin_hdr + 4) + 1, t.pos.seq_next);
    /* The logger said the application meant it: re-activated unguarded, the
     * FIN's retransmission passes and ends the splice. */
    fl.guard = 0;
    fl.gen++;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_flows), &k, &fl, BPF_ANY), 0);  /* track kept */
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    ring_buffer__consume(rb);
    assert_int_equal(events[1], 1);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
    assert_int_equal(t.ends_refused, 1);       /* only the forged one */
    ring_buffer__free(rb);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), &k);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), &k);
}

/* A guarded backend's FIN is held and reported even after the client's own
 * FIN: a client that closed its side right after its last request still
 * waits for the response, which a crashed backend's FIN would cut short
 * (it passed at once before, found with a client that half-closes). */
static void guarded_fin_held_after_client_fin(void **state)
{
    uint8_t in[400], out[464];
    size_t len = random_frame(in, 0x0a00000bu, 0x0a000001u, 8080, 44000);
    struct rs_flow_key kb = key_of(in), kc = { .saddr = htonl(0x0a000401u), .daddr = htonl(0x0a000001u),
                                               .sport = htons(45000), .dport = htons(80) };
    struct rs_flow fb = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .guard = 1, .peer = kc };
    struct rs_flow fc = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .peer = kb };
    struct rs_flow_track t, ct = { .pos = { .has_seq = 1, .fin_seen = 1 } };
    struct ring_buffer *rb;
    int events[2] = { 0, 0 };

    (void)state;
    put_flow(&kc, &fc);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), &kc, &ct, BPF_ANY), 0);
    put_flow(&kb, &fb);
    in[ETH_LEN + 33] &= (uint8_t)~RS_TCP_F_FIN;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);   /* the position is learnt */
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kb, &t), 0);
    rb = ring_buffer__new(bpf_map__fd(skel->maps.rs_events), count_fin, events, NULL);
    assert_non_null(rb);
    ring_buffer__consume(rb);
    events[0] = events[1] = 0;
    rs_splice_store32(in + ETH_LEN + 24, t.pos.seq_next);     /* a bare FIN where the stream ends */
    in[ETH_LEN + 33] |= RS_TCP_F_FIN;
    len = ETH_LEN + 20 + (size_t)(in[ETH_LEN + 32] >> 4) * 4;
    in[ETH_LEN + 2] = (uint8_t)((len - ETH_LEN) >> 8);
    in[ETH_LEN + 3] = (uint8_t)(len - ETH_LEN);
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    ring_buffer__consume(rb);
    assert_int_equal(events[0], 1);          /* held and reported, for the logger's verdict */
    assert_int_equal(events[1], 0);
    ring_buffer__free(rb);
    for (int i = 0; i < 2; i++) {
        const struct rs_flow_key *k = i ? &kc : &kb;
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), k);
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), k);
    }
}

/* Sends a bare FIN from the sender of frame 'in' ('len' bytes) where its
 * stream stands, after a segment that teaches the program that place.
 * Returns the program's verdict on the FIN. */
static int fin_at_end(uint8_t *in, size_t len, uint8_t *out)
{
    struct rs_flow_key k = key_of(in);
    struct rs_flow_track t;

    in[ETH_LEN + 33] &= (uint8_t)~RS_TCP_F_FIN;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &k, &t), 0);
    rs_splice_store32(in + ETH_LEN + 24, t.pos.seq_next);
    in[ETH_LEN + 33] |= RS_TCP_F_FIN;
    len = ETH_LEN + 20 + (size_t)(in[ETH_LEN + 32] >> 4) * 4;
    in[ETH_LEN + 2] = (uint8_t)((len - ETH_LEN) >> 8);
    in[ETH_LEN + 3] = (uint8_t)(len - ETH_LEN);
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    return run(in, len, out);
}

/* Forgets that the sender of entry 'k' ended its side, then sends its FIN
 * again (fin_at_end) where its stream stands, from 'src':'sport' to
 * 'dst':'dport' (built in 'in').  Returns the program's verdict on it. */
static int fin_again(const struct rs_flow_key *k, uint8_t *in, uint32_t src, uint16_t sport, uint32_t dst,
                     uint16_t dport, uint8_t *out)
{
    struct rs_flow_track t;
    size_t len;

    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), k, &t), 0);
    t.seen = 0;
    t.pos.fin_seen = 0;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), k, &t, BPF_ANY), 0);
    len = random_frame(in, src, dst, sport, dport);
    rs_splice_store32(in + ETH_LEN + 24, t.pos.seq_next);
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    return fin_at_end(in, len, out);
}

/* While splicing at the SYN, an end that passes (the client's FIN) is
 * reported on the ring that wakes nobody, and so is the backend's FIN the
 * guard holds once the client's has passed (the logger's word on it wakes
 * rs-proxy, which reads that ring first); before the client's, it wakes
 * rs-proxy.  Told to wake (a pair's active proxy), or not splicing at the
 * SYN, on the ring that wakes it. */
static void passed_end_reported_quietly(void **state)
{
    uint8_t in[400], out[464];
    size_t len = random_frame(in, 0x0a000402u, 0x0a000001u, 45002, 80);
    struct rs_flow_key kc = key_of(in), kb = { .saddr = htonl(0x0a00000bu), .daddr = htonl(0x0a000001u),
                                               .sport = htons(8080), .dport = htons(44002) };
    struct rs_flow fc = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .peer = kb };
    struct rs_flow fb = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .guard = 1, .peer = kc };
    struct rs_syn_cfg cfg = { .on = 1 };
    uint32_t zero = 0;
    int loud[2] = { 0, 0 }, quiet[2] = { 0, 0 };
    struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.rs_events), count_fin, loud, NULL);
    struct ring_buffer *qb = ring_buffer__new(bpf_map__fd(skel->maps.rs_events_quiet), count_fin, quiet, NULL);

    (void)state;
    assert_non_null(rb);
    assert_non_null(qb);
    put_flow(&kc, &fc);
    put_flow(&kb, &fb);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY), 0);
    ring_buffer__consume(rb);
    ring_buffer__consume(qb);
    loud[0] = loud[1] = quiet[0] = quiet[1] = 0;

    /* The backend's FIN before the client's, held: it wakes rs-proxy. */
    {
        uint8_t bin[400];
        size_t blen = random_frame(bin, 0x0a00000bu, 0x0a000001u, 8080, 44002);

        assert_int_equal(fin_at_end(bin, blen, out), TC_ACT_SHOT);
        ring_buffer__consume(rb);
        ring_buffer__consume(qb);
        assert_int_equal(loud[0], 1);
        assert_int_equal(quiet[0], 0);
    }

    /* The client's FIN passes, quietly. */
    assert_int_equal(fin_at_end(in, len, out), TC_ACT_REDIRECT);
    ring_buffer__consume(rb);
    ring_buffer__consume(qb);
    assert_int_equal(quiet[1], 1);
    assert_int_equal(loud[1], 0);

    /* The backend's FIN after it (its first report forgotten): held, quietly. */
    assert_int_equal(fin_again(&kb, in, 0x0a00000bu, 8080, 0x0a000001u, 44002, out), TC_ACT_SHOT);
    ring_buffer__consume(rb);
    ring_buffer__consume(qb);
    assert_int_equal(loud[0], 1);
    assert_int_equal(quiet[0], 1);

    /* The client's end again, for a proxy that asked to be woken, then
     * for one not splicing at the SYN. */
    for (int i = 0; i < 2; i++) {
        cfg.on = i == 0 ? 1 | RS_SYN_EVENTS_WAKE : 0;
        assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY), 0);
        assert_int_equal(fin_again(&kc, in, 0x0a000402u, 45002, 0x0a000001u, 80, out), TC_ACT_REDIRECT);
        ring_buffer__consume(rb);
        ring_buffer__consume(qb);
        assert_int_equal(loud[1], i + 1);
        assert_int_equal(quiet[1], 1);
    }
    ring_buffer__free(rb);
    ring_buffer__free(qb);
    for (int i = 0; i < 2; i++) {
        const struct rs_flow_key *k = i ? &kc : &kb;
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), k);
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), k);
    }
}

/* A backend's RST once both sides closed and acknowledged each other's
 * FIN is dropped (counted): the client, in TIME_WAIT, never sees it.
 * Before the client's last ACK it passes as any RST. */
static void rst_after_closing_in_full_dropped(void **state)
{
    uint8_t in[400], out[464];
    size_t len = random_frame(in, 0x0a00000bu, 0x0a000001u, 8080, 44010);
    struct rs_flow_key kb = key_of(in), kc = { .saddr = htonl(0x0a000402u), .daddr = htonl(0x0a000001u),
                                               .sport = htons(45010), .dport = htons(80) };
    struct rs_flow fb = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .peer = kc };
    struct rs_flow fc = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .peer = kb };
    struct rs_flow_track tb = { .pos = { .seq_next = 9001, .has_seq = 1, .fin_seen = 1, .has_ack = 1 } };
    struct rs_flow_track tc = { .pos = { .seq_next = 20001, .has_seq = 1, .fin_seen = 1, .has_ack = 1 } }, t;
    int track = bpf_map__fd(skel->maps.rs_track);

    (void)state;
    tb.pos.ack_max = 20001 - fb.dir.ack_delta;      /* the backend acknowledged the client's FIN */
    tc.pos.ack_max = 9001 - fc.dir.ack_delta - 1;   /* the client not yet the backend's */
    put_flow(&kc, &fc);
    put_flow(&kb, &fb);
    assert_int_equal(bpf_map_update_elem(track, &kc, &tc, BPF_ANY), 0);
    assert_int_equal(bpf_map_update_elem(track, &kb, &tb, BPF_ANY), 0);
    in[ETH_LEN + 33] = RS_TCP_F_RST | RS_TCP_F_ACK;
    len = ETH_LEN + 20 + (size_t)(in[ETH_LEN + 32] >> 4) * 4;
    in[ETH_LEN + 2] = (uint8_t)((len - ETH_LEN) >> 8);
    in[ETH_LEN + 3] = (uint8_t)(len - ETH_LEN);
    rs_splice_store32(in + ETH_LEN + 24, 9001);
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    tc.pos.ack_max++;                               /* now it has: closed in full */
    assert_int_equal(bpf_map_update_elem(track, &kc, &tc, BPF_ANY), 0);
    assert_int_equal(bpf_map_update_elem(track, &kb, &tb, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    assert_int_equal(bpf_map_lookup_elem(track, &kb, &t), 0);
    assert_int_equal(t.dropped, 1);
    for (int i = 0; i < 2; i++) {
        const struct rs_flow_key *k = i ? &kc : &kb;
        bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), k);
        bpf_map_delete_elem(track, k);
    }
}

/* The ACK clamp: a client ACK past what the server (the peer entry) has
 * sent leaves as rs_splice_clamp_ack makes it. */
static void ack_clamp_as_core_does(void **state)
{
    uint8_t in[400], out[464], want[400], srv[400];
    size_t len = random_frame(in, 0x0a000301u, 0x0a000001u, 42000, 80);
    size_t slen = random_frame(srv, 0x0a00000bu, 0x0a000001u, 8080, 43000);
    struct rs_flow_key kc = key_of(in), ks = key_of(srv);
    struct rs_flow fc = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .clamp_ack = 1,
                          .peer = ks };
    struct rs_flow fs = { .dir = random_dir(), .state = RS_FLOW_WATCH, .ifindex = 1 };
    struct rs_flow_track ts;

    (void)state;
    put_flow(&ks, &fs);
    assert_int_equal(run(srv, slen, out), TC_ACT_OK);         /* WATCH: to the stack, position kept */
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &ks, &ts), 0);
    assert_true(ts.pos.has_seq);
    put_flow(&kc, &fc);
    /* Make the translated ACK land 1000 past the server's position. */
    rs_splice_store32(in + ETH_LEN + 28, ts.pos.seq_next + 1000 - fc.dir.ack_delta);
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    memcpy(want, in, len);
    assert_int_equal(rs_splice_packet(&fc.dir, want + ETH_LEN, (uint32_t)(len - ETH_LEN)), 0);
    assert_int_equal(rs_splice_clamp_ack(want + ETH_LEN + 20, ts.pos.seq_next, fc.dir.win_scale_out), 1000);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_same_bytes(out, want, len);
}

/* A bare SYN on a spliced 4-tuple after the connection's end opens a new
 * connection (the old entry lingers, or was adopted and not yet reaped):
 * it and what follows go to the stack as they are.  Before the end (a
 * half-close is not one), a SYN is translated like any segment (a forged
 * one steals nothing). */
static void bare_syn_after_end_goes_to_stack(void **state)
{
    uint8_t in[400], out[464];
    size_t len = random_frame(in, 0x0a000109u, 0x0a000001u, 41000, 80);
    struct rs_flow_key k = key_of(in);
    struct rs_flow_key kp = { 0x0b0000a0u, 0x0a000001u, 8080, 40000 };   /* the backend's direction */
    struct rs_flow fl = { .dir = random_dir(), .state = RS_FLOW_ACTIVE, .ifindex = 1, .splice_id = 9, .gen = 3,
                          .peer = kp };
    struct rs_flow_track t = { .seen = RS_FLOW_SEEN_RST, .seen_gen = 3 }, pt = { .pos = { .fin_seen = 1 } };
    int track = bpf_map__fd(skel->maps.rs_track);

    (void)state;
    put_flow(&k, &fl);
    in[ETH_LEN + 20 + 13] = 0x02;      /* SYN, no end yet: translated */
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), &k, &t, BPF_ANY), 0);
    in[ETH_LEN + 20 + 13] = 0x12;      /* SYN-ACK: not a new connection */
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    t.seen = RS_FLOW_SEEN_FIN;         /* half-closed (the server still sends): translated */
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), &k, &t, BPF_ANY), 0);
    in[ETH_LEN + 20 + 13] = 0x02;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(bpf_map_update_elem(track, &kp, &pt, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_OK);       /* both FINs: the stack's */
    assert_same_bytes(out, in, len);
    in[ETH_LEN + 20 + 13] = 0x10;      /* the handshake's ACK follows it there */
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    bpf_map_delete_elem(track, &kp);
    t.seen = RS_FLOW_SEEN_RST;         /* afresh: the client reset it */
    assert_int_equal(bpf_map_update_elem(track, &k, &t, BPF_ANY), 0);
    in[ETH_LEN + 20 + 13] = 0x02;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), &k);
    bpf_map_delete_elem(track, &k);
}

/* New connections' SYNs to the VIP are dropped (retried, for a
 * successor) from the end of the proxy's lease for RS_VIP_SUCCESSOR_NS;
 * nothing else is, and nothing without a lease. */
static void syn_held_back_without_proxy(void **state)
{
    uint8_t in[400], out[464];
    size_t len = random_frame(in, 0x0a00010au, 0x0a000001u, 41001, 80);
    uint32_t zero = 0;
    int vips = bpf_map__fd(skel->maps.rs_vips);
    struct timespec now;
    uint64_t now_ns;
    struct rs_vip v = { .addr = htonl(0x0a000001u), .port = htons(80) };
    const struct { int64_t lease; int syn; } cases[] = {
        { 0, TC_ACT_OK },                                            /* no lease */
        { 1000000000ll, TC_ACT_OK },                                 /* alive for another second */
        { -1000000ll, TC_ACT_SHOT },                                 /* ran out 1 ms ago */
        { -2 * (int64_t)RS_VIP_SUCCESSOR_NS, TC_ACT_OK },            /* no successor came */
    };

    (void)state;
    clock_gettime(CLOCK_MONOTONIC, &now);
    now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        v.lease_ns = cases[i].lease ? now_ns + (uint64_t)cases[i].lease : 0;
        assert_int_equal(bpf_map_update_elem(vips, &zero, &v, BPF_ANY), 0);
        in[ETH_LEN + 20 + 13] = 0x02;      /* SYN */
        set_checksums(in + ETH_LEN, len - ETH_LEN);
        assert_int_equal(run(in, len, out), cases[i].syn);
        in[ETH_LEN + 20 + 13] = 0x10;      /* an ACK of no splice: always the stack's */
        set_checksums(in + ETH_LEN, len - ETH_LEN);
        assert_int_equal(run(in, len, out), TC_ACT_OK);
    }

    /* Within its lease, a proxy that listened (rs_vip.listens) and whose
     * listener is gone (it died): dropped; listening: the stack's. */
    v.lease_ns = now_ns + 1000000000ull;
    v.listens = 1;
    assert_int_equal(bpf_map_update_elem(vips, &zero, &v, BPF_ANY), 0);
    in[ETH_LEN + 20 + 13] = 0x02;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(80), .sin_addr.s_addr = htonl(0x0a000001u) };
        int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);     /* the VIP is not this host's: IP_FREEBIND */

        assert_true(fd >= 0);
        assert_int_equal(setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)), 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(listen(fd, 1), 0);
        assert_int_equal(run(in, len, out), TC_ACT_OK);
        close(fd);
    }
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    v.listens = 0;
    v.lease_ns = 0;
    assert_int_equal(bpf_map_update_elem(vips, &zero, &v, BPF_ANY), 0);
}

/* Keeps the ring's last RS_FLOW_OPENED, STALE, REFUSED, UNANSWERED and
 * REUSED events in ctx[0..4]. */
static int opened(void *ctx, void *data, size_t len)
{
    const struct rs_flow_event *e = data;

    if (len < sizeof(*e))
        return 0;
    for (int i = 0; i < 5; i++)
        if (e->flags & (RS_FLOW_OPENED << i))
            ((struct rs_flow_event *)ctx)[i] = *e;
    return 0;
}

/* A SYN frame of client 'c':'cport' to 'vip':80 (Linux's options: MSS,
 * SACK-permitted, TS, NOP, window scale 7), or the backend's SYN-ACK. */
static size_t syn_frame(uint8_t *f, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, uint32_t isn,
                        bool ack)
{
    static const uint8_t opts[20] = { 2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7 };
    uint8_t *ip = f + ETH_LEN, *tcp = ip + 20;

    memset(f, 0, ETH_LEN + 60);
    f[12] = 0x08;
    ip[0] = 0x45;
    ip[8] = 64;
    ip[9] = 6;
    rs_splice_store16(ip + 2, 60);
    rs_splice_store32(ip + 12, src);
    rs_splice_store32(ip + 16, dst);
    rs_splice_store16(tcp, sport);
    rs_splice_store16(tcp + 2, dport);
    rs_splice_store32(tcp + 4, isn);
    if (ack)
        rs_splice_store32(tcp + 8, 1001);
    tcp[12] = 10 << 4;
    tcp[13] = RS_TCP_F_SYN | (ack ? RS_TCP_F_ACK : 0);
    rs_splice_store16(tcp + 14, 64240);
    memcpy(tcp + 20, opts, sizeof(opts));
    set_checksums(ip, 60);
    return ETH_LEN + 60;
}

/* Splicing at the SYN as the proxy sets it up: a lease a second long on
 * VIP 'v', 'cfg', splice ids from 'id0', one port in the queue. */
static void syn_set_up(struct rs_vip *v, const struct rs_syn_cfg *cfg, uint64_t id0, uint16_t port)
{
    struct timespec now;
    uint32_t zero = 0;

    clock_gettime(CLOCK_MONOTONIC, &now);
    v->lease_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec + 1000000000ull;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_vips), &zero, v, BPF_ANY), 0);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, cfg, BPF_ANY), 0);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn_ids), &zero, &id0, BPF_ANY), 0);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn_ports), NULL, &port, BPF_ANY), 0);
}

/* Splicing at the SYN (struct rs_syn_cfg): a client's SYN to the VIP takes
 * a port from the queue and goes to the backend with the client's name
 * added, both entries made; the backend's SYN-ACK goes to the client and
 * is reported; a SYN on the ended connection's 4-tuple is reported; with
 * no port left, or the splicing off, or no lease, a SYN is the stack's. */
static void syn_spliced_by_the_program(void **state)
{
    uint8_t in[128], out[200], want[200];
    const uint32_t vip = 0x0a000001u, client = 0x0a000101u, backend = 0x0a00000bu;
    uint32_t zero = 0, addr;
    uint16_t port = 61000, cport;
    struct rs_vip v = { .addr = htonl(vip), .port = htons(80) };
    struct rs_syn_cfg cfg = { .backend_addr = htonl(backend), .local_addr = htonl(vip), .backend_port = htons(8080),
                              .on = 1, .ifindex = 1, .guard = 1 };
    uint64_t id0 = RS_SYN_ID_BASE;
    struct rs_flow_key kc = { htonl(client), htonl(vip), htons(42000), htons(80) };
    struct rs_flow_key kb = { htonl(backend), htonl(vip), htons(8080), htons(port) };
    struct rs_flow fc, fb;
    struct rs_flow_track t;
    struct rs_flow_event evs[5], ev;
    struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.rs_events), opened, evs, NULL);
    struct ring_buffer *quiet = ring_buffer__new(bpf_map__fd(skel->maps.rs_events_quiet), opened, evs, NULL);
    size_t len;

    (void)state;
    assert_non_null(rb);
    assert_non_null(quiet);
    ring_buffer__consume(rb);
    ring_buffer__consume(quiet);
    memset(evs, 0, sizeof(evs));
    syn_set_up(&v, &cfg, id0, port);

    /* The client's SYN: to the backend from the proxy's port, named. */
    len = syn_frame(in, client, 42000, vip, 80, 1000, false);
    {
        LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in, .data_size_in = (uint32_t)len, .data_out = out,
                    .data_size_out = sizeof(out), .repeat = 1);

        assert_int_equal(bpf_prog_test_run_opts(bpf_program__fd(skel->progs.rs_splice_ingress), &o), 0);
        assert_int_equal(o.retval, TC_ACT_REDIRECT);
        assert_int_equal(o.data_size_out, len + RS_IDENT_ROOM);
    }
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 12), vip);
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 16), backend);
    assert_int_equal(rs_splice_load16(out + ETH_LEN + 20), port);
    assert_int_equal(rs_splice_load16(out + ETH_LEN + 22), 8080);
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 24), 1000);             /* seq: the client's own */
    assert_int_equal(out[ETH_LEN + 32] >> 4, 13);
    assert_int_equal(rs_splice_load16(out + ETH_LEN + 2), 72);
    assert_int_equal(rs_ident_opt_get(out + ETH_LEN + 20, 52, &addr, &cport), 0);
    assert_int_equal(addr, client);
    assert_int_equal(cport, 42000);
    memcpy(want, out, len + RS_IDENT_ROOM);                                    /* checksums right */
    set_checksums(want + ETH_LEN, 72);
    assert_same_bytes(out, want, len + RS_IDENT_ROOM);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_flows), &kc, &fc), 0);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_flows), &kb, &fb), 0);
    assert_true(fc.at_syn && fb.at_syn);
    assert_int_equal(fc.splice_id, RS_SYN_ID_BASE);
    assert_int_equal(fb.guard, 1);
    assert_int_equal(fc.guard, 0);
    assert_memory_equal(&fc.peer, &kb, sizeof(kb));
    assert_memory_equal(&fb.peer, &kc, sizeof(kc));
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kc, &t), 0);
    assert_int_equal(t.syn.isn, 1000);
    assert_int_equal(t.syn.wscale, 7);
    assert_int_equal(t.syn.tsval, 12345);

    /* An old connection on the port answers with a bare ACK: the client
     * does not see it; it is reported with its ACK number. */
    len = syn_frame(in, backend, 8080, vip, port, 0x80000000u, true);
    in[ETH_LEN + 20 + 13] = RS_TCP_F_ACK;
    rs_splice_store32(in + ETH_LEN + 20 + 8, 424242);
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    assert_int_equal(ring_buffer__consume(rb) >= 1, 1);
    assert_int_equal(evs[1].flags, RS_FLOW_STALE);
    assert_int_equal(evs[1].seq, 424242);
    assert_memory_equal(&evs[1].key, &kb, sizeof(kb));

    /* The client's SYN again, unanswered: passed, reported with the time
     * since its first; then the backend's RST (nothing listens there):
     * dropped, reported. */
    usleep(2000);
    len = syn_frame(in, client, 42000, vip, 80, 1000, false);
    assert_int_equal(run_grown(in, len, out, RS_IDENT_ROOM), TC_ACT_REDIRECT);
    assert_int_equal(ring_buffer__consume(rb) >= 1, 1);
    assert_int_equal(evs[3].flags, RS_FLOW_UNANSWERED);
    assert_memory_equal(&evs[3].key, &kc, sizeof(kc));
    assert_true(evs[3].seq >= 2000 && evs[3].seq < 1000000);
    len = syn_frame(in, backend, 8080, vip, port, 0, true);
    in[ETH_LEN + 20 + 13] = RS_TCP_F_RST | RS_TCP_F_ACK;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    assert_int_equal(ring_buffer__consume(rb) >= 1, 1);
    assert_int_equal(evs[2].flags, RS_FLOW_REFUSED);
    assert_memory_equal(&evs[2].key, &kb, sizeof(kb));

    /* The backend's SYN-ACK: to the client from the VIP, reported. */
    len = syn_frame(in, backend, 8080, vip, port, 5000, true);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 12), vip);
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 16), client);
    assert_int_equal(rs_splice_load16(out + ETH_LEN + 20), 80);
    assert_int_equal(rs_splice_load16(out + ETH_LEN + 22), 42000);
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 24), 5000);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kb, &t), 0);
    assert_int_equal(t.pos.seq_next, 5001);         /* the old connection's ACK moved nothing */
    assert_int_equal(ring_buffer__consume(rb), 0);  /* on the ring that wakes nobody */
    assert_int_equal(ring_buffer__consume(quiet), 1);
    ev = evs[0];
    assert_int_equal(ev.flags & RS_FLOW_OPENED, RS_FLOW_OPENED);
    assert_memory_equal(&ev.key, &kb, sizeof(kb));
    assert_int_equal(ev.seq, 5000);
    /* Again (a retransmission), told to wake (a pair's active proxy): on
     * the other ring. */
    cfg.on = 1 | RS_SYN_EVENTS_WAKE;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(ring_buffer__consume(quiet), 0);
    assert_int_equal(ring_buffer__consume(rb), 1);
    assert_int_equal(evs[0].flags & RS_FLOW_OPENED, RS_FLOW_OPENED);
    cfg.on = 1;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY), 0);
    /* A SYN again once it was answered: no sign of anything. */
    memset(evs, 0, sizeof(evs));
    len = syn_frame(in, client, 42000, vip, 80, 1000, false);
    assert_int_equal(run_grown(in, len, out, RS_IDENT_ROOM), TC_ACT_REDIRECT);
    ring_buffer__consume(rb);
    assert_int_equal(evs[3].flags, 0);

    /* Both ends sent their FIN; the client's SYN on the same 4-tuple (its
     * port reused while the entry lingers): dropped, what it announced
     * kept, reported for the proxy to free the 4-tuple and send it again.
     * Its retransmission goes to the stack's listener. */
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kc, &t), 0);
    t.seen = RS_FLOW_SEEN_FIN;
    t.seen_gen = fc.gen;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), &kc, &t, BPF_ANY), 0);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kb, &t), 0);
    t.pos.fin_seen = 1;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_track), &kb, &t, BPF_ANY), 0);
    len = syn_frame(in, client, 42000, vip, 80, 777777, false);
    assert_int_equal(run(in, len, out), TC_ACT_SHOT);
    assert_int_equal(ring_buffer__consume(rb) >= 1, 1);
    assert_int_equal(evs[4].flags, RS_FLOW_REUSED);
    assert_int_equal(evs[4].splice_id, RS_SYN_ID_BASE);
    assert_memory_equal(&evs[4].key, &kc, sizeof(kc));
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kc, &t), 0);
    assert_int_equal(t.reused, RS_REUSED_DROPPED);
    assert_int_equal(t.syn.isn, 777777);
    assert_int_equal(t.syn.tsval, 12345);
    memset(evs, 0, sizeof(evs));
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    ring_buffer__consume(rb);
    assert_int_equal(evs[4].flags, 0);

    /* A SYN with TCP-MD5, which no splice carries: the stack's, with the
     * port still free. */
    len = syn_frame(in, client + 2, 42002, vip, 80, 9, false);
    in[ETH_LEN + 20 + 26] = RS_TCPOPT_MD5;
    set_checksums(in + ETH_LEN, len - ETH_LEN);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn_ports), NULL, &port, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    assert_int_equal(bpf_map_lookup_and_delete_elem(bpf_map__fd(skel->maps.rs_syn_ports), NULL, &port), 0);

    /* No port left; then splicing off; then no lease: the stack's. */
    len = syn_frame(in, client + 1, 42001, vip, 80, 7, false);
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn_ports), NULL, &port, BPF_ANY), 0);
    cfg.on = 0;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    cfg.on = 1;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY), 0);
    v.lease_ns = 0;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_vips), &zero, &v, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_OK);
    kc.saddr = htonl(client + 1);
    kc.sport = htons(42001);
    assert_true(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_flows), &kc, &fc) < 0);
    assert_int_equal(bpf_map_lookup_and_delete_elem(bpf_map__fd(skel->maps.rs_syn_ports), NULL, &port), 0);

    cfg.on = 0;
    bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY);
    ring_buffer__free(rb);
    ring_buffer__free(quiet);
}

/* A pair's active proxy (RS_SYN_HOLD_SYNACK): the backend's SYN-ACK is
 * held, its header kept in the track and its event reported, until the
 * daemon clears RS_AT_SYN_HOLD in the backend's entry; then it passes. */
static void synack_held_until_taken_on(void **state)
{
    uint8_t in[128], out[200];
    const uint32_t vip = 0x0a000001u, client = 0x0a000102u, backend = 0x0a00000bu;
    uint32_t zero = 0;
    uint16_t port = 61100;
    struct rs_vip v = { .addr = htonl(vip), .port = htons(80) };
    struct rs_syn_cfg cfg = { .backend_addr = htonl(backend), .local_addr = htonl(vip), .backend_port = htons(8080),
                              .on = 1 | RS_SYN_EVENTS_WAKE | RS_SYN_HOLD_SYNACK, .ifindex = 1, .guard = 1 };
    uint64_t id0 = RS_SYN_ID_BASE + 100;
    struct rs_flow_key kc = { htonl(client), htonl(vip), htons(43000), htons(80) };
    struct rs_flow_key kb = { htonl(backend), htonl(vip), htons(8080), htons(port) };
    struct rs_flow fb;
    struct rs_flow_track t;
    struct rs_flow_event evs[5];
    struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.rs_events), opened, evs, NULL);
    size_t len;

    (void)state;
    assert_non_null(rb);
    ring_buffer__consume(rb);
    memset(evs, 0, sizeof(evs));
    syn_set_up(&v, &cfg, id0, port);

    len = syn_frame(in, client, 43000, vip, 80, 2000, false);
    assert_int_equal(run_grown(in, len, out, RS_IDENT_ROOM), TC_ACT_REDIRECT);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_flows), &kb, &fb), 0);
    assert_int_equal(fb.at_syn, 1 | RS_AT_SYN_HOLD);

    /* Held: dropped, kept, reported; a retransmission too. */
    len = syn_frame(in, backend, 8080, vip, port, 7000, true);
    for (int i = 0; i < 2; i++) {
        memset(evs, 0, sizeof(evs));
        assert_int_equal(run(in, len, out), TC_ACT_SHOT);
        assert_int_equal(ring_buffer__consume(rb), 1);
        assert_int_equal(evs[0].flags & RS_FLOW_OPENED, RS_FLOW_OPENED);
        assert_int_equal(evs[0].splice_id, id0);
        assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_track), &kb, &t), 0);
        assert_int_equal(t.fin_hdr_len, len - ETH_LEN - 20);
        assert_memory_equal(t.fin_hdr, in + ETH_LEN + 20, t.fin_hdr_len);
        assert_int_equal(t.syn.isn, 7000);
    }
    /* Taken on: it passes, to the client. */
    fb.at_syn = 1;
    assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.rs_flows), &kb, &fb, BPF_ANY), 0);
    assert_int_equal(run(in, len, out), TC_ACT_REDIRECT);
    assert_int_equal(rs_splice_load32(out + ETH_LEN + 16), client);
    assert_int_equal(rs_splice_load16(out + ETH_LEN + 22), 43000);

    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), &kb);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_flows), &kc);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), &kb);
    bpf_map_delete_elem(bpf_map__fd(skel->maps.rs_track), &kc);
    cfg.on = 0;
    bpf_map_update_elem(bpf_map__fd(skel->maps.rs_syn), &zero, &cfg, BPF_ANY);
    v.lease_ns = 0;
    bpf_map_update_elem(bpf_map__fd(skel->maps.rs_vips), &zero, &v, BPF_ANY);
    ring_buffer__free(rb);
}

static int setup(void **state)
{
    (void)state;
    skel = rs_splice__open_and_load();
    return skel ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rs_splice__destroy(skel);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(program_translates_as_core_does),
        cmocka_unit_test(states_drop_and_guard),
        cmocka_unit_test(hold_keeps_a_guarded_senders_position),
        cmocka_unit_test(guarded_fin_held_after_client_fin),
        cmocka_unit_test(rst_after_closing_in_full_dropped),
        cmocka_unit_test(passed_end_reported_quietly),
        cmocka_unit_test(ack_clamp_as_core_does),
        cmocka_unit_test(bare_syn_after_end_goes_to_stack),
        cmocka_unit_test(syn_held_back_without_proxy),
        cmocka_unit_test(syn_spliced_by_the_program),
        cmocka_unit_test(synack_held_until_taken_on),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
