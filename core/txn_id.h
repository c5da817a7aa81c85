/* Transaction IDs, as in the seed (§4.2): 64 bits made of the client's IPv4
 * address, the client's TCP port and the transaction's number on that
 * connection.  Layout: [63..32] IPv4 (host order), [31..16] port,
 * [15..0] transaction number (wraps after 65535 transactions on one
 * connection; comparisons are only made within one connection). */
#ifndef RS_TXN_ID_H
#define RS_TXN_ID_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

typedef uint64_t rs_txn_id;

#define RS_TXN_NUM_MAX 0xffffu

/* Builds an ID from 'ip4' and 'port' in host byte order and 'num'. */
static inline rs_txn_id rs_txn_id_make(uint32_t ip4, uint16_t port, uint16_t num)
{
    return ((uint64_t)ip4 << 32) | ((uint64_t)port << 16) | num;
}

static inline uint32_t rs_txn_id_ip4(rs_txn_id id) { return (uint32_t)(id >> 32); }
static inline uint16_t rs_txn_id_port(rs_txn_id id) { return (uint16_t)(id >> 16); }
static inline uint16_t rs_txn_id_num(rs_txn_id id) { return (uint16_t)id; }

/* Transaction-number order within one connection (numbers wrap at 2^16). */
static inline bool rs_txn_num_lt(uint16_t a, uint16_t b) { return (int16_t)(uint16_t)(a - b) < 0; }
static inline bool rs_txn_num_le(uint16_t a, uint16_t b) { return a == b || rs_txn_num_lt(a, b); }

/* Longest text rs_txn_id_format writes, with its NUL: "255.255.255.255:65535#65535". */
#define RS_TXN_ID_STRLEN 28

/* Writes 'id' as "a.b.c.d:port#num" into 'buf' of 'len' bytes.
 * Returns the number of characters written (without NUL), or -ENOSPC when
 * 'len' is too small (buf then holds a truncated, NUL-terminated string). */
int rs_txn_id_format(rs_txn_id id, char *buf, size_t len);

/* rs_txn_id_format into 'buf', returned: for log arguments. */
static inline const char *rs_txn_str(rs_txn_id id, char buf[RS_TXN_ID_STRLEN])
{
    rs_txn_id_format(id, buf, RS_TXN_ID_STRLEN);
    return buf;
}
/* rs_txn_str into a temporary of the enclosing block (several in one call are fine). */
#define RS_TXN(id) rs_txn_str((id), (char[RS_TXN_ID_STRLEN]){ 0 })

/* Parses "a.b.c.d:port#num" from 'str' into '*id'.
 * Returns 0, or -EINVAL when 'str' is not exactly that form. */
int rs_txn_id_parse(const char *str, rs_txn_id *id);

#endif /* RS_TXN_ID_H */
