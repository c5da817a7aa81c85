/* libFuzzer target for core/pp2.c, the PROXY protocol v2 header rs-app and
 * rs-front read at the start of every connection from rs-proxy
 * (--identity header).  Checks: it never reads outside the buffer (ASan);
 * a header it accepts is no longer than the input and than the largest it
 * reads; every prefix of an accepted header asks for more; an accepted
 * PROXY header built again from its fields reads back the same. */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pp2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rs_pp2 p, q;
    uint8_t again[RS_PP2_V4_LEN];
    int n = rs_pp2_parse(data, size, &p);

    assert(n == 0 || n == -ENOENT || n == -EPROTO || n > 0);
    if (n <= 0)
        return 0;
    assert((size_t)n <= size && n <= 16 + RS_PP2_BODY_MAX);
    for (int k = 0; k < n; k++)
        assert(rs_pp2_parse(data, (size_t)k, &q) == 0);
    if (!p.local) {
        rs_pp2_build_v4(again, p.src_ip, p.src_port, p.dst_ip, p.dst_port);
        assert(rs_pp2_parse(again, sizeof(again), &q) == RS_PP2_V4_LEN);
        assert(q.src_ip == p.src_ip && q.src_port == p.src_port && q.dst_ip == p.dst_ip && q.dst_port == p.dst_port);
    }
    return 0;
}
