/* tc (clsact ingress) program of rs-logger (--capture ebpf): on the
 * capture interface, a port mirror, it copies every TCP segment to or from
 * the VIP into a ring buffer that rs-logger drains (logger/capture_ebpf.c),
 * then drops the copied frames that are not addressed to this host: they
 * are the mirror's copies, which the stack would only parse and discard.
 * Every other frame goes on to the next filter untouched (TC_ACT_UNSPEC).
 * The segment test, record layout and size classes are core/capture.h. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "capture.h"
#include "maps.h"

#define ETH_HLEN_ 14

/* The service, host order, and the snap length: set by rs-logger (or
 * rs-auxlog's tap, which names a second port) before the load (read-only
 * afterwards, so the verifier knows them). */
const volatile __u32 rs_cap_vip = 0;
const volatile __u16 rs_cap_port = 0;
const volatile __u16 rs_cap_port2 = 0;
/* rs-auxlog's tap (tap_verdict); rs_cap_judging: non-zero while it judges
 * markers (a re-run may come: it writes it through .bss). */
const volatile __u8 rs_cap_tap = 0;
__u32 rs_cap_judging = 0;
const volatile __u32 rs_cap_snaplen = RS_CAPTURE_SNAPLEN;

/* Non-zero while rs-logger reads the ring on a timer (it is busy): then a
 * record wakes nobody.  Otherwise the ring wakes it when it has caught
 * up, through an interrupt that this machine pays dearly for, and that
 * would be wasted on a logger that polls.  rs-logger writes it through
 * the skeleton's mapping of .bss (logger/capture_ebpf.c, ebpf_pace);
 * rs-auxlog's tap sets it for good (it reads on a timer, auxlog/tap.c). */
__u32 rs_cap_polled = 0;

enum { COPIED = 0, NO_ROOM = -1, UNREADABLE = -2 };

/* Copies the first 'caplen' bytes of the packet ('len' bytes, from its IP
 * header on) into a record of 'room' bytes of data: a constant once
 * inlined, as bpf_ringbuf_reserve needs.  Returns COPIED, NO_ROOM (the ring
 * is full) or UNREADABLE. */
static __always_inline int copy(struct __sk_buff *skb, __u32 len, __u32 caplen, const __u32 room)
{
    struct rs_capture_rec *r = bpf_ringbuf_reserve(&rs_cap_ring, sizeof(*r) + room, 0);

    if (!r)
        return NO_ROOM;
    if (caplen == 0 || caplen > room || bpf_skb_load_bytes(skb, ETH_HLEN_, r + 1, caplen) < 0) {
        bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
        return UNREADABLE;
    }
    r->len = len;
    r->caplen = caplen;
    /* An atomic read, a full barrier: the reservation above (which makes
     * the ring readable) is seen before the flag is.  rs-logger clears the
     * flag, then asks whether the ring is readable, so one of the two sees
     * the other: no record is left unread with nobody woken. */
    if (__sync_fetch_and_add(&rs_cap_polled, 0))
        bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    else
        bpf_ringbuf_submit(r, 0);   /* wakes rs-logger only when it has caught up */
    return COPIED;
}

/* rs-auxlog's tap: while it judges markers, what a conversation's backend
 * sends before rs-auxlog has judged its marker is marked for the netfilter
 * queue it reads (one iptables rule queues it: rs-auxlog answers once it
 * has read the ring);
 * what a fenced one sends is dropped, uncopied; a SYN (the backend's port
 * used again: a new connection) forgets the old one's verdict.  The
 * store's replies pass.  Returns TC_ACT_SHOT to drop, else TC_ACT_UNSPEC. */
static __always_inline int tap_verdict(struct __sk_buff *skb, const __u8 *ip, const __u8 *tcp, __u32 ihl)
{
    struct rs_capture_fence_key k;
    __u32 daddr = ((__u32)ip[16] << 24) | ((__u32)ip[17] << 16) | ((__u32)ip[18] << 8) | ip[19];
    __u32 tot = ((__u32)ip[2] << 8) | ip[3], hdrs = ihl + (__u32)(tcp[12] >> 4) * 4;
    __u8 *v;

    if (daddr != rs_cap_vip)
        return TC_ACT_UNSPEC;
    __builtin_memcpy(&k.saddr, ip + 12, 4);
    __builtin_memcpy(&k.daddr, ip + 16, 4);
    __builtin_memcpy(&k.sport, tcp, 2);
    __builtin_memcpy(&k.dport, tcp + 2, 2);
    if ((tcp[13] & 0x12) == 0x02) {
        bpf_map_delete_elem(&rs_cap_verdict, &k);
        return TC_ACT_UNSPEC;
    }
    v = bpf_map_lookup_elem(&rs_cap_verdict, &k);
    if (v && *v == RS_CAPTURE_FENCED)
        return TC_ACT_SHOT;
    if (!v && tot > hdrs && rs_cap_judging)
        skb->mark = RS_CAPTURE_QUEUE_MARK;
    return TC_ACT_UNSPEC;
}

#define CLASS(i) \
    case i: \
        e = copy(skb, len, caplen, RS_CAPTURE_CLASS_BYTES(i)); \
        break;

SEC("tc")
int rs_capture_ingress(struct __sk_buff *skb)
{
    __u8 ip[20], ports[14];        /* the TCP header, its ports to its flags */
    struct rs_capture_counts *c;
    __u32 zero = 0, ihl, len, caplen;
    int e;

    if (skb->protocol != bpf_htons(ETH_P_IP) || skb->len < ETH_HLEN_ + 20)
        return TC_ACT_UNSPEC;
    if (bpf_skb_load_bytes(skb, ETH_HLEN_, ip, sizeof(ip)) < 0)
        return TC_ACT_UNSPEC;
    ihl = rs_capture_ihl(ip);
    if (!ihl || bpf_skb_load_bytes(skb, ETH_HLEN_ + ihl, ports, sizeof(ports)) < 0)
        return TC_ACT_UNSPEC;
    if (!rs_capture_match(ip, ports, rs_cap_vip, rs_cap_port, rs_cap_port2))
        return TC_ACT_UNSPEC;
    if (rs_cap_tap && tap_verdict(skb, ip, ports, ihl) == TC_ACT_SHOT)
        return TC_ACT_SHOT;
    len = skb->len - ETH_HLEN_;
    caplen = rs_capture_caplen(len, rs_cap_snaplen);
    switch (rs_capture_class(caplen)) {
    CLASS(0) CLASS(1) CLASS(2) CLASS(3) CLASS(4) CLASS(5) CLASS(6) CLASS(7) CLASS(8) CLASS(9)
    default:
        e = copy(skb, len, caplen, RS_CAPTURE_CLASS_BYTES(RS_CAPTURE_CLASSES - 1));
        break;
    }
    c = bpf_map_lookup_elem(&rs_cap_counts, &zero);
    if (c) {
        if (e == COPIED) {
            c->records++;
            c->bytes += len;
            c->truncated += caplen < len;
        } else if (e == NO_ROOM) {
            c->drops++;
        }
    }
    if (e == COPIED && skb->pkt_type == PACKET_OTHERHOST)
        return TC_ACT_SHOT;
    /* The tap lets nothing pass unrecorded: the sender sends it again. */
    if (rs_cap_tap && e != COPIED)
        return TC_ACT_SHOT;
    return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
