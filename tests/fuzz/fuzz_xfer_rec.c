/* libFuzzer target for core/xfer_rec.c: decodes a stream of records the way
 * the state library and rs-stated read their socket.  Checks: a decoded
 * record lies inside the input, encodes back to exactly the bytes it came
 * from (one encoding per record), and a malformed stream stops decoding. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xfer_rec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t out[RS_XFER_IN_CAP];
    size_t off = 0;

    while (off < size) {
        struct rs_xfer_rec r;
        long used = rs_xfer_rec_decode(data + off, size - off, &r);

        if (used <= 0)
            break;
        assert((size_t)used <= size - off);
        if (r.len)
            assert(r.state >= data + off && r.state + r.len <= data + off + used);
        assert(rs_xfer_rec_encode(&r, out) == (size_t)used);
        assert(memcmp(out, data + off, (size_t)used) == 0);
        off += (size_t)used;
    }
    return 0;
}
