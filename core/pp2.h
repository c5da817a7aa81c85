/* The PROXY protocol, version 2 (HAProxy's proxy-protocol.txt, section 2.2):
 * the binary header a proxy writes before the first byte it forwards on a
 * connection to a server, naming the client the connection is for.  rs-proxy
 * sends it with --identity header, so that the application learns whose
 * requests it serves from the connection itself, without the CONN_MAP
 * round trip through rs-stated (docs/recovery.md).  Only TCP over IPv4 is
 * built; parsing accepts any TLVs (skipped) and the LOCAL command.  Pure
 * functions, no allocation. */
#ifndef RS_PP2_H
#define RS_PP2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RS_PP2_SIG_LEN 12
/* Signature, version 2 + PROXY, TCP over IPv4, 12 address bytes: 28 bytes. */
#define RS_PP2_V4_LEN 28
/* Longest header parsed: 16 fixed bytes and at most this many more (the
 * addresses and TLVs); a longer one is refused rather than waited for. */
#define RS_PP2_BODY_MAX 512

struct rs_pp2 {
    bool local;                 /* LOCAL command: no client (a health check) */
    uint32_t src_ip, dst_ip;    /* host order; TCP over IPv4 only */
    uint16_t src_port, dst_port;
};

/* Writes the header of a PROXY connection from 'src_ip':'src_port' to
 * 'dst_ip':'dst_port' (host order) to 'out'.  Returns RS_PP2_V4_LEN. */
size_t rs_pp2_build_v4(uint8_t out[RS_PP2_V4_LEN], uint32_t src_ip, uint16_t src_port, uint32_t dst_ip,
                       uint16_t dst_port);

/* Reads a header at the start of the 'len' bytes at 'buf'.  Returns its
 * length (> 0, the bytes to skip) with 'out' filled; 0 when the bytes are
 * the start of a header that has not all arrived (read more); -ENOENT when
 * they do not start with the signature (no header: the stream is the
 * application's own); -EPROTO when they do but the header is malformed,
 * another version, longer than RS_PP2_BODY_MAX, or a PROXY command for
 * another family than TCP over IPv4. */
int rs_pp2_parse(const uint8_t *buf, size_t len, struct rs_pp2 *out);

#endif /* RS_PP2_H */
