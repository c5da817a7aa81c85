/* Checkable content generator and checker (see content.h).  Records are
 * built with a table lookup rather than snprintf: rs-app streams gigabytes
 * of this and the client checks every byte. */
#include "content.h"

#include <string.h>

static const char hex__[16] = "0123456789abcdef";

uint16_t rs_content_tag(uint64_t seed)
{
    return (uint16_t)((seed * 0x9E3779B97F4A7C15ull) >> 48);
}

/* Writes the whole record that starts at stream offset 'rec_off' into 'out'. */
static void record__(uint16_t tag, uint64_t rec_off, uint8_t out[RS_CONTENT_RECORD])
{
    uint64_t v = rec_off & (RS_CONTENT_WRAP - 1);

    out[0] = (uint8_t)hex__[(tag >> 12) & 0xf];
    out[1] = (uint8_t)hex__[(tag >> 8) & 0xf];
    out[2] = (uint8_t)hex__[(tag >> 4) & 0xf];
    out[3] = (uint8_t)hex__[tag & 0xf];
    out[4] = ' ';
    for (int i = 14; i >= 5; i--, v >>= 4)
        out[i] = (uint8_t)hex__[v & 0xf];
    out[15] = '\n';
}

void rs_content_fill(uint64_t seed, uint64_t off, uint8_t *buf, size_t len)
{
    uint16_t tag = rs_content_tag(seed);
    uint8_t rec[RS_CONTENT_RECORD];

    while (len > 0) {
        size_t skip = (size_t)(off % RS_CONTENT_RECORD);
        size_t n = RS_CONTENT_RECORD - skip;

        if (n > len)
            n = len;
        if (n == RS_CONTENT_RECORD) {
            record__(tag, off, buf);
        } else {
            record__(tag, off - skip, rec);
            memcpy(buf, rec + skip, n);
        }
        buf += n;
        off += n;
        len -= n;
    }
}

int64_t rs_content_check(uint64_t seed, uint64_t off, const uint8_t *buf, size_t len)
{
    uint16_t tag = rs_content_tag(seed);
    uint8_t rec[RS_CONTENT_RECORD];
    uint64_t start = off;
    size_t done = 0;

    while (done < len) {
        size_t skip = (size_t)(off % RS_CONTENT_RECORD);
        size_t n = RS_CONTENT_RECORD - skip;

        if (n > len - done)
            n = len - done;
        record__(tag, off - skip, rec);
        if (memcmp(buf + done, rec + skip, n) != 0) {
            for (size_t i = 0; i < n; i++)
                if (buf[done + i] != rec[skip + i])
                    return (int64_t)(start + done + i);
        }
        done += n;
        off += n;
    }
    return -1;
}
