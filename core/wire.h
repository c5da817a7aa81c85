/* Big-endian integers on the wire: writers and readers that advance a
 * cursor.  The callers check lengths first; these do no bounds checks. */
#ifndef RS_WIRE_H
#define RS_WIRE_H

#include <stdint.h>
#include <string.h>

static inline void rs_put8(uint8_t **p, uint8_t v) { *(*p)++ = v; }
static inline void rs_put16(uint8_t **p, uint16_t v) { rs_put8(p, (uint8_t)(v >> 8)); rs_put8(p, (uint8_t)v); }
static inline void rs_put32(uint8_t **p, uint32_t v) { rs_put16(p, (uint16_t)(v >> 16)); rs_put16(p, (uint16_t)v); }
static inline void rs_put64(uint8_t **p, uint64_t v) { rs_put32(p, (uint32_t)(v >> 32)); rs_put32(p, (uint32_t)v); }
static inline void rs_put_bytes(uint8_t **p, const void *b, size_t n) { if (n) memcpy(*p, b, n); *p += n; }
static inline void rs_put_zero(uint8_t **p, size_t n) { memset(*p, 0, n); *p += n; }

static inline uint8_t rs_get8(const uint8_t **p) { return *(*p)++; }
static inline uint16_t rs_get16(const uint8_t **p) { uint16_t hi = rs_get8(p); return (uint16_t)(hi << 8 | rs_get8(p)); }
static inline uint32_t rs_get32(const uint8_t **p) { uint32_t hi = rs_get16(p); return hi << 16 | rs_get16(p); }
static inline uint64_t rs_get64(const uint8_t **p) { uint64_t hi = rs_get32(p); return hi << 32 | rs_get32(p); }

#endif /* RS_WIRE_H */
