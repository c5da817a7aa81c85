/* Unit tests for core/content.c: the pattern matches the one documented in
 * content.h (vectors computed with its Python version), filling is
 * position-independent, and the checker finds the first wrong byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "content.h"

static void content_known_vectors(void **state)
{
    uint8_t buf[64];

    (void)state;
    rs_content_fill(0, 0, buf, 32);
    assert_memory_equal(buf, "0000 0000000000\n0000 0000000010\n", 32);
    rs_content_fill(1, 5, buf, 20);
    assert_memory_equal(buf, "0000000000\n9e37 0000", 20);
    /* Offset text wraps at 2^40; the tag does not. */
    rs_content_fill(12345, RS_CONTENT_WRAP - 8, buf, 24);
    assert_memory_equal(buf, "ffffff0\na12c 0000000000\n", 24);
    rs_content_fill(UINT64_MAX, 0, buf, 16);
    assert_memory_equal(buf, "61c8 0000000000\n", 16);
    assert_int_equal(rs_content_tag(1), 0x9e37);
    assert_int_equal(rs_content_tag(0), 0);
}

/* Any window of the stream equals the same bytes cut from a bigger fill. */
static void content_fill_is_position_independent(void **state)
{
    enum { N = 4096 };
    uint8_t *all = malloc(N), *part = malloc(N);
    const uint64_t base = 0xfffffffff0ull;  /* crosses the 2^40 wrap */

    (void)state;
    assert_non_null(all);
    assert_non_null(part);
    rs_content_fill(77, base, all, N);
    for (size_t off = 0; off < 40; off++) {
        for (size_t len = 0; len < 40; len++) {
            memset(part, 0xAA, len + 1);
            rs_content_fill(77, base + off, part, len);
            assert_memory_equal(part, all + off, len);
            assert_int_equal(part[len], 0xAA);      /* wrote nothing past len */
        }
    }
    rs_content_fill(77, base + 1000, part, N - 1000);
    assert_memory_equal(part, all + 1000, N - 1000);
    free(all);
    free(part);
}

static void content_check_accepts_right_bytes(void **state)
{
    uint8_t buf[1000] = { 0 };

    (void)state;
    assert_int_equal(rs_content_check(5, 0, buf, 0), -1);
    assert_int_equal(rs_content_check(5, 12345, NULL, 0), -1);
    rs_content_fill(5, 333, buf, sizeof(buf));
    assert_int_equal(rs_content_check(5, 333, buf, sizeof(buf)), -1);
    assert_int_equal(rs_content_check(5, 400, buf + 67, 500), -1);
}

static void content_check_finds_corruption(void **state)
{
    uint8_t buf[256], bad[256];
    const uint64_t off = 1000;

    (void)state;
    rs_content_fill(9, off, buf, sizeof(buf));

    /* A flipped byte anywhere, including the first and the last. */
    for (size_t i = 0; i < sizeof(buf); i++) {
        memcpy(bad, buf, sizeof(buf));
        bad[i] ^= 0x01;
        assert_int_equal(rs_content_check(9, off, bad, sizeof(bad)), (int64_t)(off + i));
    }

    /* A dropped byte at i shifts the rest: found at the first byte where the
     * shifted stream differs, which is within one record (the offset field
     * changes every record).  A drop in the last record can look like a
     * correct shorter stream, which is why clients also check lengths. */
    for (size_t i = 0; i + RS_CONTENT_RECORD + 1 < sizeof(buf); i++) {
        size_t first = i;

        memcpy(bad, buf, i);
        memcpy(bad + i, buf + i + 1, sizeof(buf) - i - 1);
        while (bad[first] == buf[first])
            first++;
        assert_true(first < i + RS_CONTENT_RECORD);
        assert_int_equal(rs_content_check(9, off, bad, sizeof(buf) - 1), (int64_t)(off + first));
    }

    /* A duplicated record (16 bytes repeated), as a replayed segment would be. */
    memcpy(bad, buf, 48);
    memcpy(bad + 48, buf + 32, 16);
    memcpy(bad + 64, buf + 48, 64);
    assert_int_equal(rs_content_check(9, off, bad, 128), (int64_t)(off + 48 + 5));

    /* The right bytes at the wrong offset, and the right bytes of another seed. */
    assert_true(rs_content_check(9, off + 16, buf, sizeof(buf)) != -1);
    /* off is mid-record, so the first tag byte is at the next record start;
     * it is wrong at the first hex digit where the two tags differ. */
    int digit = 0;
    while (((rs_content_tag(9) ^ rs_content_tag(10)) >> (12 - 4 * digit) & 0xf) == 0)
        digit++;
    assert_int_equal(rs_content_check(10, off, buf, sizeof(buf)), (int64_t)(off + 8 + (uint64_t)digit));
}

/* Different seeds give different tags for the seeds a test is likely to use. */
static void content_tags_differ(void **state)
{
    (void)state;
    for (uint64_t a = 0; a < 256; a++)
        for (uint64_t b = a + 1; b < 256; b++)
            assert_int_not_equal(rs_content_tag(a), rs_content_tag(b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(content_known_vectors),
        cmocka_unit_test(content_fill_is_position_independent),
        cmocka_unit_test(content_check_accepts_right_bytes),
        cmocka_unit_test(content_check_finds_corruption),
        cmocka_unit_test(content_tags_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
