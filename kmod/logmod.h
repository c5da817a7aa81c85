/* logmod's interface to user space (the kernel module kmod/logmod.c and
 * its readers): a misc device, /dev/rs_logmod, one capture per open file.
 *
 *   1. ioctl(fd, RS_LOGMOD_START, &cfg): copy every TCP segment to or from
 *      cfg.vip:cfg.port seen on interface cfg.ifname (ingress, and egress
 *      with RS_LOGMOD_EGRESS) into a ring of cfg.ring_bytes (a power of
 *      two, RS_LOGMOD_RING_MIN..RS_LOGMOD_RING_MAX).
 *   2. mmap(NULL, RS_LOGMOD_HDR + ring_bytes, PROT_READ | PROT_WRITE,
 *      MAP_SHARED, fd, 0): the header (struct rs_logmod_ring) then the ring.
 *   3. poll(fd, POLLIN) waits for a record; read each record at
 *      data[tail % size], then advance 'tail' (the only field user space
 *      writes).  Closing the file (or the process dying) ends the capture.
 *
 * The ring is in kernel memory mapped into the reader (a vmalloc'd buffer
 * mmap'd through the device) rather than user memory pinned by the kernel
 * (the seed's get_user_pages): the module owns its lifetime, so a reader
 * that dies can never leave the kernel writing into freed pages, and the
 * refcount of the file (held by the mapping) keeps the module loaded.
 *
 * A record: struct rs_logmod_rec, then 'caplen' bytes of the segment from
 * its IPv4 header on (no link-layer header: pcap's LINKTYPE_RAW), padded to
 * 8 bytes ('len' covers it all).  A record
 * with caplen 0 and RS_LOGMOD_PAD is padding up to the ring's end: skip it.
 * A segment that does not fit is dropped and counted in 'drops'. */
#ifndef RS_LOGMOD_H
#define RS_LOGMOD_H

#ifdef __KERNEL__
#include <linux/ioctl.h>
#include <linux/types.h>
#else
#include <linux/ioctl.h>
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif

#define RS_LOGMOD_DEV       "/dev/rs_logmod"
#define RS_LOGMOD_HDR       4096u               /* the header's page */
#define RS_LOGMOD_RING_MIN  (64u << 10)
#define RS_LOGMOD_RING_MAX  (256u << 20)
#define RS_LOGMOD_EGRESS    (1u << 0)           /* cfg.flags: the interface's egress too */
#define RS_LOGMOD_PAD       (1u << 0)           /* rec.flags */

struct rs_logmod_cfg {
    char ifname[16];
    __u32 vip;              /* network order */
    __u16 port;             /* network order */
    __u16 flags;            /* RS_LOGMOD_EGRESS */
    __u32 ring_bytes;
};

struct rs_logmod_ring {
    __u64 head;             /* bytes written (the kernel's) */
    __u64 tail;             /* bytes consumed (the reader's) */
    __u64 records, drops;   /* segments copied; segments that found no room */
    __u64 bytes;            /* packet bytes copied */
    __u32 size;             /* ring bytes */
    __u32 pad;
};

struct rs_logmod_rec {
    __u32 len;              /* the record's bytes, header and padding included */
    __u32 caplen;           /* packet bytes that follow (a GSO segment may exceed 64 KiB) */
    __u32 flags;            /* RS_LOGMOD_PAD */
    __u32 pad;
    __u64 ts_ns;            /* ktime_get_real_ns() when copied */
};

#define RS_LOGMOD_START _IOW('r', 1, struct rs_logmod_cfg)

#endif /* RS_LOGMOD_H */
