/* The generic netlink protocol of tcpspmod (kmod/tcpspmod.c), the kernel
 * module that splices like the tc program of proxy/bpf/: rs-proxy's "kmod"
 * data path (proxy/dp_kmod.c) drives it through libnl-3.  Shared by both
 * sides: the commands, the attributes, and the decoder the module runs on
 * every request (rs_tcpsp_parse), which is fuzzed in user space
 * (tests/fuzz/fuzz_tcpsp.c) because a bad message must never hurt the
 * kernel.  Header-only, no libc.
 *
 * The splice table works like the tc program's maps: one entry per
 * direction of a spliced connection (struct rs_flow_key), holding the
 * daemon's half (struct rs_flow, written by SET) and the module's half
 * (struct rs_flow_track, written by the module only, except when SET
 * creates or resets it).  Each interface has its own table, which
 * outlives the daemon that filled it (a successor adopts it), as a tc
 * filter outlives its process.  Every attribute is a fixed-size binary
 * struct of proxy/splice_map.h in host order, except where noted. */
#ifndef RS_TCPSP_H
#define RS_TCPSP_H

#include "splice_map.h"

#define RS_TCPSP_FAMILY  "rs_tcpsp"
#define RS_TCPSP_VERSION 1
#define RS_TCPSP_MCGRP   "events"      /* RS_TCPSP_C_EVENT messages */

enum rs_tcpsp_cmd {
    RS_TCPSP_C_UNSPEC,
    RS_TCPSP_C_ATTACH,      /* IFINDEX, FLAGS (ADOPT): hook the interface; without ADOPT
                             * an existing table is emptied */
    RS_TCPSP_C_DETACH,      /* IFINDEX: unhook, drop the table */
    RS_TCPSP_C_VIP,         /* IFINDEX, VIP */
    RS_TCPSP_C_TS_TAKE,     /* IFINDEX, KEY -> TS: a client's newest TSval before its
                             * splice, then forgotten (-ENOENT: none) */
    RS_TCPSP_C_GET,         /* IFINDEX, KEY -> KEY, FLOW, TRACK */
    RS_TCPSP_C_SET,         /* IFINDEX, KEY, FLOW, FLAGS, [TRACK] */
    RS_TCPSP_C_DEL,         /* IFINDEX, KEY */
    RS_TCPSP_C_NEXT,        /* IFINDEX, [KEY] -> KEY: the entry after KEY (the first
                             * without KEY, or when KEY is gone); -ENOENT after the last */
    RS_TCPSP_C_EVENT,       /* module -> group: IFINDEX, EVENT */
    RS_TCPSP_C_COUNT
};

enum rs_tcpsp_attr {
    RS_TCPSP_A_UNSPEC,
    RS_TCPSP_A_IFINDEX,     /* u32 */
    RS_TCPSP_A_FLAGS,       /* u32, RS_TCPSP_F_* */
    RS_TCPSP_A_KEY,         /* struct rs_flow_key */
    RS_TCPSP_A_FLOW,        /* struct rs_flow */
    RS_TCPSP_A_TRACK,       /* struct rs_flow_track */
    RS_TCPSP_A_VIP,         /* struct rs_vip */
    RS_TCPSP_A_TS,          /* u32 */
    RS_TCPSP_A_EVENT,       /* struct rs_flow_event */
    RS_TCPSP_A_COUNT
};

/* RS_TCPSP_A_FLAGS */
#define RS_TCPSP_F_ADOPT    (1u << 0)   /* ATTACH: keep the table a predecessor left */
#define RS_TCPSP_F_EXIST    (1u << 1)   /* SET: the entry must exist (else -ENOENT) */
#define RS_TCPSP_F_NOEXIST  (1u << 2)   /* SET: the entry must not exist (else -EEXIST) */
#define RS_TCPSP_F_RESET    (1u << 3)   /* SET: the module's half starts afresh (TRACK, or
                                         * zeroed) even when the entry exists */

/* What rs_tcpsp_parse found: copies (netlink payloads are only 4-byte
 * aligned) and a bit per attribute present. */
struct rs_tcpsp_msg {
    rs_u32 have;            /* 1 << RS_TCPSP_A_* */
    rs_u32 ifindex;
    rs_u32 flags;
    rs_u32 ts;
    struct rs_flow_key key;
    struct rs_flow flow;
    struct rs_flow_track track;
    struct rs_vip vip;
    struct rs_flow_event event;
};

#define RS_TCPSP_BIT(a) (1u << (a))

#ifdef __KERNEL__
#define RS_TCPSP_EINVAL EINVAL
#else
#define RS_TCPSP_EINVAL 22
#endif

/* The payload size of attribute 'type', 0 for an unknown one. */
static inline rs_u32 rs_tcpsp_attr_size(rs_u32 type)
{
    switch (type) {
    case RS_TCPSP_A_IFINDEX:
    case RS_TCPSP_A_FLAGS:
    case RS_TCPSP_A_TS:
        return 4;
    case RS_TCPSP_A_KEY:
        return sizeof(struct rs_flow_key);
    case RS_TCPSP_A_FLOW:
        return sizeof(struct rs_flow);
    case RS_TCPSP_A_TRACK:
        return sizeof(struct rs_flow_track);
    case RS_TCPSP_A_VIP:
        return sizeof(struct rs_vip);
    case RS_TCPSP_A_EVENT:
        return sizeof(struct rs_flow_event);
    default:
        return 0;
    }
}

/* The attributes command 'cmd' needs, and those it may carry besides. */
static inline int rs_tcpsp_cmd_attrs(rs_u32 cmd, rs_u32 *need, rs_u32 *may)
{
    const rs_u32 ifi = RS_TCPSP_BIT(RS_TCPSP_A_IFINDEX), key = RS_TCPSP_BIT(RS_TCPSP_A_KEY);

    *may = 0;
    switch (cmd) {
    case RS_TCPSP_C_ATTACH:
        *need = ifi;
        *may = RS_TCPSP_BIT(RS_TCPSP_A_FLAGS);
        return 0;
    case RS_TCPSP_C_DETACH:
        *need = ifi;
        return 0;
    case RS_TCPSP_C_VIP:
        *need = ifi | RS_TCPSP_BIT(RS_TCPSP_A_VIP);
        return 0;
    case RS_TCPSP_C_TS_TAKE:
    case RS_TCPSP_C_GET:
    case RS_TCPSP_C_DEL:
        *need = ifi | key;
        return 0;
    case RS_TCPSP_C_SET:
        *need = ifi | key | RS_TCPSP_BIT(RS_TCPSP_A_FLOW);
        *may = RS_TCPSP_BIT(RS_TCPSP_A_FLAGS) | RS_TCPSP_BIT(RS_TCPSP_A_TRACK);
        return 0;
    case RS_TCPSP_C_NEXT:
        *need = ifi;
        *may = key;
        return 0;
    case RS_TCPSP_C_EVENT:
        *need = ifi | RS_TCPSP_BIT(RS_TCPSP_A_EVENT);
        return 0;
    default:
        return -RS_TCPSP_EINVAL;
    }
}

/* Whether the daemon's half 'f' can be used as it stands: a known state,
 * window scales a shift can take. */
static inline int rs_tcpsp_flow_ok(const struct rs_flow *f)
{
    return f->state <= RS_FLOW_ACKONLY && f->dir.win_scale_in <= RS_SPLICE_WSCALE_MAX
        && f->dir.win_scale_out <= RS_SPLICE_WSCALE_MAX;
}

/* Decodes the attributes of a request for command 'cmd' ('len' bytes at
 * 'buf': the generic netlink payload after its header) into '*m'.  Every
 * attribute must be known, of its exact size, present at most once, and
 * one the command takes; the command's required ones must be there; the
 * flags and the values must make sense (rs_tcpsp_flow_ok, a non-zero
 * interface).  Never reads outside buf[0..len).  Returns 0 or
 * -RS_TCPSP_EINVAL. */
static inline int rs_tcpsp_parse(rs_u32 cmd, const void *buf, rs_u32 len, struct rs_tcpsp_msg *m)
{
    const unsigned char *p = (const unsigned char *)buf;
    rs_u32 need, may, off = 0;

    __builtin_memset(m, 0, sizeof(*m));
    if (rs_tcpsp_cmd_attrs(cmd, &need, &may))
        return -RS_TCPSP_EINVAL;
    while (len - off >= 4) {
        rs_u16 alen16, type16;
        rs_u32 alen, type, size;
        void *dst;

        __builtin_memcpy(&alen16, p + off, 2);
        __builtin_memcpy(&type16, p + off + 2, 2);
        alen = alen16;
        type = type16 & 0x3fffu;   /* NLA_TYPE_MASK: without the nested and byte-order bits */
        if (alen < 4 || alen > len - off)
            return -RS_TCPSP_EINVAL;
        size = rs_tcpsp_attr_size(type);
        if (!size || alen - 4 != size || !((need | may) & RS_TCPSP_BIT(type)) || (m->have & RS_TCPSP_BIT(type)))
            return -RS_TCPSP_EINVAL;
        switch (type) {
        case RS_TCPSP_A_IFINDEX: dst = &m->ifindex; break;
        case RS_TCPSP_A_FLAGS: dst = &m->flags; break;
        case RS_TCPSP_A_TS: dst = &m->ts; break;
        case RS_TCPSP_A_KEY: dst = &m->key; break;
        case RS_TCPSP_A_FLOW: dst = &m->flow; break;
        case RS_TCPSP_A_TRACK: dst = &m->track; break;
        case RS_TCPSP_A_VIP: dst = &m->vip; break;
        default: dst = &m->event; break;
        }
        __builtin_memcpy(dst, p + off + 4, size);
        m->have |= RS_TCPSP_BIT(type);
        off += (alen + 3u) & ~3u;       /* NLA_ALIGN */
        if (off > len)
            off = len;
    }
    if (off != len || (m->have & need) != need || !m->ifindex)
        return -RS_TCPSP_EINVAL;
    if (cmd == RS_TCPSP_C_ATTACH && (m->flags & ~RS_TCPSP_F_ADOPT))
        return -RS_TCPSP_EINVAL;
    if (cmd == RS_TCPSP_C_SET) {
        if ((m->flags & ~(RS_TCPSP_F_EXIST | RS_TCPSP_F_NOEXIST | RS_TCPSP_F_RESET))
            || ((m->flags & RS_TCPSP_F_EXIST) && (m->flags & RS_TCPSP_F_NOEXIST)) || !rs_tcpsp_flow_ok(&m->flow))
            return -RS_TCPSP_EINVAL;
    }
    return 0;
}

#endif /* RS_TCPSP_H */
