/* Checkable content: the bytes rs-app serves for /static and /slow and that
 * rs-client verifies.  Byte 'off' of the stream for 'seed' depends only on
 * (seed, off), so a byte that is misplaced, duplicated or dropped anywhere in
 * a response is caught at the first place it differs.  Pure, no I/O.
 *
 * ---- Pattern --------------------------------------------------------------
 *
 * The stream is a sequence of 16-byte printable records; record r covers
 * bytes [16r, 16r + 16) and reads
 *
 *     "tttt oooooooooo\n"      e.g. "9e37 0000000010\n"
 *
 * where tttt = 4 lower-case hex digits of the seed's tag,
 *     tag = ((seed * 0x9E3779B97F4A7C15) mod 2^64) >> 48,
 * and oooooooooo = 10 lower-case hex digits of the record's own byte offset
 * 16r (mod 2^40, so it repeats only after 1 TiB).  A hex dump shows where
 * each line sits in the stream.  The same pattern in Python:
 *
 *     def content(seed, off, n):
 *         tag = (seed * 0x9E3779B97F4A7C15 % 2**64) >> 48
 *         first = off - off % 16
 *         text = "".join("%04x %010x\n" % (tag, r % 2**40)
 *                        for r in range(first, off + n, 16))
 *         return text.encode()[off - first:off - first + n]
 */
#ifndef RS_CONTENT_H
#define RS_CONTENT_H

#include <stddef.h>
#include <stdint.h>

/* Bytes per record. */
#define RS_CONTENT_RECORD 16u
/* Offsets wrap in the text after this many bytes (10 hex digits). */
#define RS_CONTENT_WRAP (1ull << 40)

/* Returns the 16-bit tag that 'seed' writes at the start of each record. */
uint16_t rs_content_tag(uint64_t seed);

/* Writes bytes [off, off + len) of the stream for 'seed' into 'buf'.
 * Any 'off' and 'len' (0 included) are valid. */
void rs_content_fill(uint64_t seed, uint64_t off, uint8_t *buf, size_t len);

/* Checks that 'buf' holds bytes [off, off + len) of the stream for 'seed'.
 * Offsets are meant to stay below 2^63 (the return value is signed).
 * Returns -1 when every byte is right, else the stream offset (off + i) of
 * the first wrong byte. */
int64_t rs_content_check(uint64_t seed, uint64_t off, const uint8_t *buf, size_t len);

#endif /* RS_CONTENT_H */
