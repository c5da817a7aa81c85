/* Printing and parsing of transaction IDs (see txn_id.h). */
#include "txn_id.h"

#include <errno.h>
#include <stdio.h>

int rs_txn_id_format(rs_txn_id id, char *buf, size_t len)
{
    uint32_t ip = rs_txn_id_ip4(id);
    int n = snprintf(buf, len, "%u.%u.%u.%u:%u#%u", ip >> 24, (ip >> 16) & 0xff,
                     (ip >> 8) & 0xff, ip & 0xff, rs_txn_id_port(id), rs_txn_id_num(id));
    if (n < 0 || (size_t)n >= len)
        return -ENOSPC;
    return n;
}

int rs_txn_id_parse(const char *str, rs_txn_id *id)
{
    unsigned a, b, c, d, port, num;
    int end = 0;

    /* sscanf alone would accept spaces and signs ("- 1"). */
    for (const char *p = str; *p; p++)
        if (!((*p >= '0' && *p <= '9') || *p == '.' || *p == ':' || *p == '#'))
            return -EINVAL;
    if (sscanf(str, "%3u.%3u.%3u.%3u:%5u#%5u%n", &a, &b, &c, &d, &port, &num, &end) != 6
        || str[end] != '\0')
        return -EINVAL;
    if (a > 255 || b > 255 || c > 255 || d > 255 || port > 0xffff || num > RS_TXN_NUM_MAX)
        return -EINVAL;
    *id = rs_txn_id_make((a << 24) | (b << 16) | (c << 8) | d, (uint16_t)port, (uint16_t)num);
    return 0;
}
