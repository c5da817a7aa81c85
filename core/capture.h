/* rs-logger's capture by a tc program (logger/bpf/capture.bpf.c, read by
 * logger/capture_ebpf.c): which segments it takes, the size classes of
 * its ring records, and the record and counter layouts the program and
 * the daemon share.  Header-only, no libc: BPF C, user space and the unit
 * tests include it.  Packet bytes are network order; every value passed
 * to or returned by a function is host order. */
#ifndef RS_CAPTURE_H
#define RS_CAPTURE_H

#include "seq.h"

/* ---- Tunables ------------------------------------------------------------- */

/* Packet bytes kept of one segment: libpcap's snap length in the logger
 * (logger/capture.c), so that both sources cut (and report) the same. */
#define RS_CAPTURE_SNAPLEN 262144u
/* The ring: at 2 GB/s, 32 ms of segments while the logger is busy
 * elsewhere (a connection's rings growing fault in fresh pages).  Its
 * pages are vmalloc'd 4 KB ones, and the program's copy into them costs
 * more the larger the ring (page walks; make bench-capture on a 2-core
 * VM, the whole capture's CPU per GB against libpcap's: 128 MB 1.2x,
 * 64 MB 0.9x, 32 MB 0.66x), while 16 MB and less dropped segments when
 * the logger fell behind for a few milliseconds. */
#define RS_CAPTURE_RING_BYTES (64u << 20)

/* A ring record is reserved at a constant size (the verifier wants one),
 * the smallest class that holds the segment: ACKs, one MSS, then GSO
 * super-packets (veth hands them over whole, ~64 KB) and BIG TCP ones.
 * A class wastes at most a third of its room for the segments it holds
 * above 1536 bytes. */
#define RS_CAPTURE_CLASSES 11
#define RS_CAPTURE_CLASS_BYTES(i) \
    ((i) == 0 ? 128u : (i) == 1 ? 1536u : (i) == 2 ? 4096u : (i) == 3 ? 8192u : (i) == 4 ? 16384u   \
     : (i) == 5 ? 24576u : (i) == 6 ? 32768u : (i) == 7 ? 49152u : (i) == 8 ? 65536u                 \
     : (i) == 9 ? 131072u : 262144u)

/* rs-auxlog's tap: the conversations it has judged, at once (an LRU map:
 * the oldest go first, long after they ended), their verdicts, and the
 * mark of what its netfilter queue must judge first. */
#define RS_CAPTURE_VERDICT_MAX 16384u
#define RS_CAPTURE_JUDGED 1             /* its marker judged (or it has none): it passes */
#define RS_CAPTURE_FENCED 2             /* its backend no longer acts for it: dropped */
#define RS_CAPTURE_QUEUE_MARK 0x72736171u

/* ---- Types ---------------------------------------------------------------- */

/* A conversation rs-auxlog's tap judged: its backend-to-store segments'
 * IPv4 source and destination and TCP ports, network order, as they are
 * in the packet. */
struct rs_capture_fence_key {
    rs_u32 saddr, daddr;
    unsigned short sport, dport;
};

/* One ring record: this header, then 'caplen' bytes of the segment from
 * its IPv4 header on (pcap's LINKTYPE_RAW), in a record of the class's
 * size. */
struct rs_capture_rec {
    rs_u32 len;                 /* the packet's bytes on the wire (a GSO super-packet's all) */
    rs_u32 caplen;              /* bytes that follow: less than 'len' when cut at the snap length */
};

/* The program's counters, one per CPU (a per-CPU array of one entry). */
struct rs_capture_counts {
    rs_u64 records;             /* segments copied into the ring */
    rs_u64 drops;               /* segments that found no room (reserve failed) */
    rs_u64 bytes;               /* their 'len', summed */
    rs_u64 truncated;           /* records cut at the snap length */
};

/* ---- Which segments ------------------------------------------------------- */

/* The IPv4 header length of the packet whose first 20 bytes are 'ip' when
 * it is a TCP segment that carries its TCP header (not a later fragment),
 * else 0: nothing to capture. */
static inline rs_u32 rs_capture_ihl(const unsigned char *ip)
{
    rs_u32 ihl = (rs_u32)(ip[0] & 15) * 4;

    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 6 || ((ip[6] & 0x1f) | ip[7]))
        return 0;
    return ihl;
}

/* Whether the segment with IPv4 header 'ip' (its first 20 bytes) and TCP
 * ports 'ports' (the TCP header's first 4 bytes) belongs to the service at
 * 'vip':'port', or at 'vip':'port2' when that is not 0: sent to it or by
 * it.  What the logger keeps of pcap's "tcp and host VIP and port PORT"
 * (logger/conn.c counts the rest not ours); rs-auxlog's tap names the mail
 * store's IMAP and SMTP ports. */
static inline int rs_capture_match(const unsigned char *ip, const unsigned char *ports, rs_u32 vip,
                                   unsigned short port, unsigned short port2)
{
    rs_u32 saddr = ((rs_u32)ip[12] << 24) | ((rs_u32)ip[13] << 16) | ((rs_u32)ip[14] << 8) | ip[15];
    rs_u32 daddr = ((rs_u32)ip[16] << 24) | ((rs_u32)ip[17] << 16) | ((rs_u32)ip[18] << 8) | ip[19];
    unsigned short sport = (unsigned short)((ports[0] << 8) | ports[1]);
    unsigned short dport = (unsigned short)((ports[2] << 8) | ports[3]);

    return (daddr == vip && (dport == port || (port2 && dport == port2)))
           || (saddr == vip && (sport == port || (port2 && sport == port2)));
}

/* ---- Record sizes --------------------------------------------------------- */

/* Bytes kept of a packet of 'len' bytes under snap length 'snaplen'. */
static inline rs_u32 rs_capture_caplen(rs_u32 len, rs_u32 snaplen)
{
    if (snaplen > RS_CAPTURE_SNAPLEN)
        snaplen = RS_CAPTURE_SNAPLEN;
    return len < snaplen ? len : snaplen;
}

/* The smallest class that holds 'caplen' bytes (at most RS_CAPTURE_SNAPLEN). */
static inline int rs_capture_class(rs_u32 caplen)
{
    int i;

    for (i = 0; i < RS_CAPTURE_CLASSES - 1; i++)
        if (caplen <= RS_CAPTURE_CLASS_BYTES(i))
            break;
    return i;
}

#endif /* RS_CAPTURE_H */
