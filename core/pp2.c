/* The PROXY protocol v2 header: see pp2.h. */
#include "pp2.h"

#include <errno.h>
#include <string.h>

static const uint8_t sig[RS_PP2_SIG_LEN] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

#define VER2 0x20
#define CMD_LOCAL 0x00
#define CMD_PROXY 0x01
#define FAM_TCP4 0x11
#define V4_ADDRS 12

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

size_t rs_pp2_build_v4(uint8_t out[RS_PP2_V4_LEN], uint32_t src_ip, uint16_t src_port, uint32_t dst_ip,
                       uint16_t dst_port)
{
    memcpy(out, sig, sizeof(sig));
    out[12] = VER2 | CMD_PROXY;
    out[13] = FAM_TCP4;
    out[14] = 0;
    out[15] = V4_ADDRS;
    put_be32(out + 16, src_ip);
    put_be32(out + 20, dst_ip);
    out[24] = (uint8_t)(src_port >> 8);
    out[25] = (uint8_t)src_port;
    out[26] = (uint8_t)(dst_port >> 8);
    out[27] = (uint8_t)dst_port;
    return RS_PP2_V4_LEN;
}

int rs_pp2_parse(const uint8_t *buf, size_t len, struct rs_pp2 *out)
{
    size_t n = len < sizeof(sig) ? len : sizeof(sig), body;

    if (memcmp(buf, sig, n) != 0)
        return -ENOENT;
    if (len < 16)
        return 0;
    if ((buf[12] & 0xf0) != VER2 || (buf[12] & 0x0f) > CMD_PROXY)
        return -EPROTO;
    body = (size_t)buf[14] << 8 | buf[15];
    if (body > RS_PP2_BODY_MAX)
        return -EPROTO;
    if ((buf[12] & 0x0f) == CMD_PROXY && (buf[13] != FAM_TCP4 || body < V4_ADDRS))
        return -EPROTO;
    if (len < 16 + body)
        return 0;
    memset(out, 0, sizeof(*out));
    if ((buf[12] & 0x0f) == CMD_LOCAL) {
        out->local = true;
    } else {
        out->src_ip = get_be32(buf + 16);
        out->dst_ip = get_be32(buf + 20);
        out->src_port = (uint16_t)(buf[24] << 8 | buf[25]);
        out->dst_port = (uint16_t)(buf[26] << 8 | buf[27]);
    }
    return (int)(16 + body);
}
