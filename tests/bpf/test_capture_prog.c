/* The tc program rs-logger runs for --capture ebpf (build/capture.skel.h,
 * the very object it embeds), fed frames with BPF_PROG_TEST_RUN: it copies
 * the VIP's segments byte for byte into its ring with their lengths, cuts
 * them at the snap length and says so, counts a full ring's drops, drops
 * the mirror's frames it copied (addressed to another host) and passes
 * everything else on; it wakes a reader that caught up, but not while
 * rs-logger polls the ring (rs_cap_polled).  Needs CAP_BPF (root); run by
 * tests/integration/test_capture.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <cmocka.h>

#include <linux/pkt_cls.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "capture.h"
#include "capture.skel.h"

#define ETH_LEN 14
#define VIP 0x0a000001u         /* 10.0.0.1 */
#define PORT 80
#define CLIENT 0x0a000064u      /* 10.0.0.100 */

static struct lg_capture_bpf *skel;

/* Records the ring held at the last drain(). */
static struct rec {
    uint32_t len, caplen, size;
    uint8_t data[4096];
} recs[8];
static int nrecs;

/* Loads the program for VIP:PORT with 'snaplen' and a ring of 'ring_bytes'. */
static void load(uint32_t snaplen, uint32_t ring_bytes)
{
    skel = lg_capture_bpf__open();
    assert_non_null(skel);
    skel->rodata->rs_cap_vip = VIP;
    skel->rodata->rs_cap_port = PORT;
    skel->rodata->rs_cap_snaplen = snaplen;
    assert_int_equal(bpf_map__set_max_entries(skel->maps.rs_cap_ring, ring_bytes), 0);
    assert_int_equal(lg_capture_bpf__load(skel), 0);
}

static int unload(void **state)
{
    (void)state;
    lg_capture_bpf__destroy(skel);
    skel = NULL;
    return 0;
}

/* An Ethernet frame to MAC 'dst' carrying an IPv4 TCP segment of 'iplen'
 * bytes from src:sport to dst:dport (payload a pattern), into 'f'. */
static size_t frame(uint8_t *f, const uint8_t mac[6], uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                    size_t iplen)
{
    uint8_t *ip = f + ETH_LEN;

    memcpy(f, mac, 6);
    memcpy(f + 6, "\x02\x00\x00\x00\x00\x09", 6);
    f[12] = 0x08;
    f[13] = 0x00;
    memset(ip, 0, 40);
    ip[0] = 0x45;
    ip[2] = (uint8_t)(iplen >> 8);
    ip[3] = (uint8_t)iplen;
    ip[8] = 64;
    ip[9] = 6;
    for (int i = 0; i < 4; i++) {
        ip[12 + i] = (uint8_t)(src >> (24 - 8 * i));
        ip[16 + i] = (uint8_t)(dst >> (24 - 8 * i));
    }
    ip[20] = (uint8_t)(sport >> 8);
    ip[21] = (uint8_t)sport;
    ip[22] = (uint8_t)(dport >> 8);
    ip[23] = (uint8_t)dport;
    ip[32] = 0x50;      /* data offset 5 */
    ip[33] = 0x18;      /* PSH ACK */
    for (size_t i = 40; i < iplen; i++)
        ip[i] = (uint8_t)(i * 7 + 3);
    return ETH_LEN + iplen;
}

static const uint8_t OTHER_MAC[6] = { 0x02, 0, 0, 0, 0, 0x01 };    /* another host's: a mirror's copy */
static const uint8_t HOST_MAC[6] = { 0, 0, 0, 0, 0, 0 };           /* lo's, where the test runs */

/* Runs the program on 'len' bytes of 'f'; returns its verdict. */
static int run(const uint8_t *f, size_t len)
{
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = f, .data_size_in = (uint32_t)len, .repeat = 1);

    assert_int_equal(bpf_prog_test_run_opts(bpf_program__fd(skel->progs.rs_capture_ingress), &o), 0);
    return (int)o.retval;
}

static int on_rec(void *ctx, void *data, size_t size)
{
    const struct rs_capture_rec *r = data;

    (void)ctx;
    assert_true(nrecs < 8);
    assert_true(size >= sizeof(*r) && r->caplen <= size - sizeof(*r) && r->caplen <= sizeof(recs[0].data));
    recs[nrecs] = (struct rec){ .len = r->len, .caplen = r->caplen, .size = (uint32_t)size };
    memcpy(recs[nrecs].data, r + 1, r->caplen);
    nrecs++;
    return 0;
}

/* Reads every record in the ring into recs[]; returns how many. */
static int drain(void)
{
    struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.rs_cap_ring), on_rec, NULL, NULL);

    assert_non_null(rb);
    nrecs = 0;
    assert_true(ring_buffer__consume(rb) >= 0);
    ring_buffer__free(rb);
    return nrecs;
}

static struct rs_capture_counts counts(void)
{
    int n = libbpf_num_possible_cpus();
    struct rs_capture_counts *pc = calloc((size_t)n, sizeof(*pc)), sum = { 0 };
    uint32_t zero = 0;

    assert_non_null(pc);
    assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.rs_cap_counts), &zero, pc), 0);
    for (int i = 0; i < n; i++) {
        sum.records += pc[i].records;
        sum.drops += pc[i].drops;
        sum.bytes += pc[i].bytes;
        sum.truncated += pc[i].truncated;
    }
    free(pc);
    return sum;
}

static void test_copies_both_directions(void **state)
{
    uint8_t req[2048], resp[2048];
    size_t lq = frame(req, OTHER_MAC, CLIENT, VIP, 40000, PORT, 300);
    size_t lr = frame(resp, OTHER_MAC, VIP, CLIENT, PORT, 40000, 1500);
    struct rs_capture_counts c;

    (void)state;
    load(RS_CAPTURE_SNAPLEN, 1u << 20);
    assert_int_equal(run(req, lq), TC_ACT_SHOT);
    assert_int_equal(run(resp, lr), TC_ACT_SHOT);
    assert_int_equal(drain(), 2);
    assert_int_equal(recs[0].len, 300);
    assert_int_equal(recs[0].caplen, 300);
    assert_memory_equal(recs[0].data, req + ETH_LEN, 300);
    assert_int_equal(recs[1].len, 1500);
    assert_int_equal(recs[1].caplen, 1500);
    assert_memory_equal(recs[1].data, resp + ETH_LEN, 1500);
    /* Each in the smallest class that holds it. */
    assert_int_equal(recs[0].size, sizeof(struct rs_capture_rec) + 1536);
    assert_int_equal(recs[1].size, sizeof(struct rs_capture_rec) + 1536);
    c = counts();
    assert_int_equal(c.records, 2);
    assert_int_equal(c.bytes, 1800);
    assert_int_equal(c.drops, 0);
    assert_int_equal(c.truncated, 0);
}

static void test_others_pass_untouched(void **state)
{
    uint8_t f[2048];
    size_t n;

    (void)state;
    load(RS_CAPTURE_SNAPLEN, 1u << 20);
    n = frame(f, OTHER_MAC, CLIENT, VIP, 40000, 81, 100);             /* another port of the VIP */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    n = frame(f, OTHER_MAC, CLIENT, 0x0a000002u, 40000, PORT, 100);   /* another host's port 80 */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    n = frame(f, OTHER_MAC, VIP, CLIENT, 40000, PORT, 100);           /* the VIP as a client of port 80 */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    n = frame(f, OTHER_MAC, CLIENT, VIP, 40000, PORT, 100);
    f[ETH_LEN + 9] = 17;                                              /* UDP */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    n = frame(f, OTHER_MAC, CLIENT, VIP, 40000, PORT, 100);
    f[ETH_LEN + 7] = 100;                                             /* a later fragment */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    n = frame(f, OTHER_MAC, CLIENT, VIP, 40000, PORT, 100);
    f[12] = 0x08;
    f[13] = 0x06;                                                     /* ARP */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    assert_int_equal(run(f, ETH_LEN + 10), TC_ACT_UNSPEC);            /* runt */
    assert_int_equal(drain(), 0);
    assert_int_equal(counts().records, 0);
}

static void test_own_frames_copied_not_dropped(void **state)
{
    uint8_t f[2048];
    size_t n = frame(f, HOST_MAC, CLIENT, VIP, 40000, PORT, 200);

    (void)state;
    /* Addressed to this host (the logger is a client of the VIP, say):
     * its stack needs the frame. */
    load(RS_CAPTURE_SNAPLEN, 1u << 20);
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    memset(f, 0xff, 6);                                               /* broadcast */
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);
    assert_int_equal(drain(), 2);
    assert_memory_equal(recs[0].data, f + ETH_LEN, 200);
}

static void test_snaplen_cuts_and_says_so(void **state)
{
    uint8_t f[2048];
    size_t n = frame(f, OTHER_MAC, VIP, CLIENT, PORT, 40000, 1000);

    (void)state;
    load(100, 1u << 20);
    assert_int_equal(run(f, n), TC_ACT_SHOT);
    assert_int_equal(drain(), 1);
    assert_int_equal(recs[0].len, 1000);
    assert_int_equal(recs[0].caplen, 100);
    assert_int_equal(recs[0].size, sizeof(struct rs_capture_rec) + 128);
    assert_memory_equal(recs[0].data, f + ETH_LEN, 100);
    assert_int_equal(counts().truncated, 1);
}

static void test_full_ring_counts_drops(void **state)
{
    uint8_t f[2048];
    size_t n = frame(f, OTHER_MAC, VIP, CLIENT, PORT, 40000, 1500);
    struct rs_capture_counts c;

    (void)state;
    /* One page: two 1536-byte records (and their headers) fit, a third does not. */
    load(RS_CAPTURE_SNAPLEN, 4096);
    assert_int_equal(run(f, n), TC_ACT_SHOT);
    assert_int_equal(run(f, n), TC_ACT_SHOT);
    assert_int_equal(run(f, n), TC_ACT_UNSPEC);     /* not copied: not dropped either */
    c = counts();
    assert_int_equal(c.records, 2);
    assert_int_equal(c.drops, 1);
    assert_int_equal(drain(), 2);
    /* Read, the room is there again. */
    assert_int_equal(run(f, n), TC_ACT_SHOT);
    assert_int_equal(drain(), 1);
    assert_int_equal(counts().drops, 1);
}

/* Whether the ring's watch in 'ep' was woken within 'ms'. */
static int woken(int ep, int ms)
{
    struct epoll_event e;

    return epoll_wait(ep, &e, 1, ms);
}

static void test_polled_ring_wakes_nobody(void **state)
{
    uint8_t f[2048];
    size_t n = frame(f, OTHER_MAC, CLIENT, VIP, 40000, PORT, 300);
    struct epoll_event ev = { .events = EPOLLIN };
    int ep = epoll_create1(EPOLL_CLOEXEC);

    (void)state;
    load(RS_CAPTURE_SNAPLEN, 1u << 20);
    assert_true(ep >= 0);
    assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, bpf_map__fd(skel->maps.rs_cap_ring), &ev), 0);
    /* rs-logger reads the ring on a timer: a record wakes nobody, though
     * the reader had read everything before it. */
    skel->bss->rs_cap_polled = 1;
    assert_int_equal(run(f, n), TC_ACT_SHOT);
    assert_int_equal(woken(ep, 100), 0);
    assert_int_equal(drain(), 1);
    /* It waits for the ring again: the next record wakes it. */
    skel->bss->rs_cap_polled = 0;
    assert_int_equal(run(f, n), TC_ACT_SHOT);
    assert_int_equal(woken(ep, 2000), 1);
    assert_int_equal(drain(), 1);
    close(ep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_copies_both_directions, unload),
        cmocka_unit_test_teardown(test_others_pass_untouched, unload),
        cmocka_unit_test_teardown(test_own_frames_copied_not_dropped, unload),
        cmocka_unit_test_teardown(test_snaplen_cuts_and_says_so, unload),
        cmocka_unit_test_teardown(test_full_ring_counts_drops, unload),
        cmocka_unit_test_teardown(test_polled_ring_wakes_nobody, unload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
