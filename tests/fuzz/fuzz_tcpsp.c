/* libFuzzer target for proxy/tcpsp.h, the decoder tcpspmod runs on every
 * generic netlink request (kmod/tcpspmod.c): the first byte is the
 * command, the rest the attributes.  Checks: it never reads outside the
 * buffer (ASan), and what it accepts is what the protocol allows: the
 * command's required attributes are there, no other than it takes, the
 * values are usable, and encoding the result again decodes to the same. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tcpsp.h"

/* Appends attribute 'type' (its payload at 'v') to 'buf' at '*len'. */
static void put(uint8_t *buf, uint32_t *len, uint16_t type, const void *v)
{
    uint16_t alen = (uint16_t)(4 + rs_tcpsp_attr_size(type));

    memcpy(buf + *len, &alen, 2);
    memcpy(buf + *len + 2, &type, 2);
    memcpy(buf + *len + 4, v, alen - 4u);
    memset(buf + *len + alen, 0, ((alen + 3u) & ~3u) - alen);
    *len += (alen + 3u) & ~3u;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t again[4096];
    struct rs_tcpsp_msg m, m2;
    uint32_t need, may, len = 0, cmd;
    uint8_t *copy;
    int e;

    if (size < 1 || size > 65535)
        return 0;
    cmd = data[0];
    copy = malloc(size - 1 ? size - 1 : 1);     /* exactly the input: ASan sees any overread */
    assert(copy);
    memcpy(copy, data + 1, size - 1);
    e = rs_tcpsp_parse(cmd, copy, (rs_u32)(size - 1), &m);
    free(copy);
    if (e) {
        assert(e == -RS_TCPSP_EINVAL);
        return 0;
    }
    assert(!rs_tcpsp_cmd_attrs(cmd, &need, &may));
    assert((m.have & need) == need && !(m.have & ~(need | may)) && m.ifindex);
    if (cmd == RS_TCPSP_C_SET)
        assert(rs_tcpsp_flow_ok(&m.flow) && !(m.flags & ~(RS_TCPSP_F_EXIST | RS_TCPSP_F_NOEXIST | RS_TCPSP_F_RESET)));
    /* Encoded again (aligned, in attribute order), it decodes the same. */
    for (uint16_t t = 1; t < RS_TCPSP_A_COUNT; t++) {
        static const size_t off[RS_TCPSP_A_COUNT] = {
            [RS_TCPSP_A_IFINDEX] = offsetof(struct rs_tcpsp_msg, ifindex),
            [RS_TCPSP_A_FLAGS] = offsetof(struct rs_tcpsp_msg, flags),
            [RS_TCPSP_A_KEY] = offsetof(struct rs_tcpsp_msg, key),
            [RS_TCPSP_A_FLOW] = offsetof(struct rs_tcpsp_msg, flow),
            [RS_TCPSP_A_TRACK] = offsetof(struct rs_tcpsp_msg, track),
            [RS_TCPSP_A_VIP] = offsetof(struct rs_tcpsp_msg, vip),
            [RS_TCPSP_A_TS] = offsetof(struct rs_tcpsp_msg, ts),
            [RS_TCPSP_A_EVENT] = offsetof(struct rs_tcpsp_msg, event),
        };
        if (m.have & RS_TCPSP_BIT(t))
            put(again, &len, t, (const uint8_t *)&m + off[t]);
    }
    assert(!rs_tcpsp_parse(cmd, again, len, &m2));
    assert(!memcmp(&m, &m2, sizeof(m)));
    return 0;
}
