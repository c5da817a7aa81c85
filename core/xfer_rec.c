/* Encoding and decoding of the records between an application's state
 * library and rs-stated (the layout is in xfer_rec.h). */
#include "xfer_rec.h"
#include "wire.h"

#include <errno.h>
#include <string.h>

size_t rs_xfer_rec_size(const struct rs_xfer_rec *r)
{
    switch (r->type) {
    case RS_XFER_UPDATE: return RS_XFER_UPDATE_HDR + r->len;
    case RS_XFER_APPLY: return RS_XFER_APPLY_HDR + r->len;
    case RS_XFER_CONN_MAP: return RS_XFER_MAP_LEN;
    case RS_XFER_EXPORT: return RS_XFER_REC_HDR;
    case RS_XFER_SNAPSHOT: return RS_XFER_REC_HDR + r->len;
    default: return RS_XFER_DONE_LEN;
    }
}

size_t rs_xfer_rec_encode(const struct rs_xfer_rec *r, uint8_t *buf)
{
    size_t n = rs_xfer_rec_size(r);
    uint8_t *p = buf;

    if (n - RS_XFER_LEN_FIELD > RS_XFER_REC_MAX)
        return 0;
    rs_put32(&p, (uint32_t)(n - RS_XFER_LEN_FIELD));
    rs_put8(&p, r->type);
    rs_put32(&p, r->id);
    switch (r->type) {
    case RS_XFER_UPDATE:
    case RS_XFER_APPLY:
        rs_put64(&p, r->txn);
        if (r->type == RS_XFER_UPDATE)
            rs_put8(&p, r->sync ? 1 : 0);
        rs_put_bytes(&p, r->state, r->len);
        break;
    case RS_XFER_CONN_MAP:
        rs_put32(&p, r->map.peer.ip4);
        rs_put16(&p, r->map.peer.port);
        rs_put32(&p, r->map.client.ip4);
        rs_put16(&p, r->map.client.port);
        rs_put16(&p, r->map.next_num);
        rs_put8(&p, r->map.flags);
        break;
    case RS_XFER_EXPORT:
        break;
    case RS_XFER_SNAPSHOT:
        rs_put_bytes(&p, r->state, r->len);
        break;
    default:
        rs_put32(&p, (uint32_t)r->status);
        break;
    }
    return n;
}

long rs_xfer_rec_decode(const uint8_t *buf, size_t len, struct rs_xfer_rec *r)
{
    const uint8_t *p = buf;
    uint32_t n;

    if (len < RS_XFER_LEN_FIELD)
        return 0;
    n = rs_get32(&p);
    if (n < RS_XFER_REC_MIN || n > RS_XFER_REC_MAX)
        return -EBADMSG;
    if (len < RS_XFER_LEN_FIELD + (size_t)n)
        return 0;
    n += RS_XFER_LEN_FIELD;             /* from here: the whole record */
    memset(r, 0, sizeof(*r));
    r->type = rs_get8(&p);
    r->id = rs_get32(&p);
    switch (r->type) {
    case RS_XFER_UPDATE:
    case RS_XFER_APPLY: {
        size_t hdr = r->type == RS_XFER_UPDATE ? RS_XFER_UPDATE_HDR : RS_XFER_APPLY_HDR;

        if (n < hdr)
            return -EBADMSG;
        r->txn = rs_get64(&p);
        if (r->type == RS_XFER_UPDATE) {
            uint8_t sync = rs_get8(&p);

            if (sync > 1)
                return -EBADMSG;
            r->sync = sync;
        }
        r->state = p;
        r->len = (uint32_t)(n - hdr);
        break;
    }
    case RS_XFER_CONN_MAP:
        if (n != RS_XFER_MAP_LEN)
            return -EBADMSG;
        r->map.peer.ip4 = rs_get32(&p);
        r->map.peer.port = rs_get16(&p);
        r->map.client.ip4 = rs_get32(&p);
        r->map.client.port = rs_get16(&p);
        r->map.next_num = rs_get16(&p);
        r->map.flags = rs_get8(&p);
        break;
    case RS_XFER_DONE:
        if (n != RS_XFER_DONE_LEN)
            return -EBADMSG;
        r->status = (int32_t)rs_get32(&p);
        break;
    case RS_XFER_EXPORT:
        if (n != RS_XFER_REC_HDR)
            return -EBADMSG;
        break;
    case RS_XFER_SNAPSHOT:
        r->state = p;
        r->len = (uint32_t)(n - RS_XFER_REC_HDR);
        break;
    default:
        return -EBADMSG;
    }
    return (long)n;
}
