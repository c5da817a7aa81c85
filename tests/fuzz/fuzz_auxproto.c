/* libFuzzer target for core/auxproto.c.  The first byte picks the protocol
 * and side and the chunk size; the rest is fed to a splitter in chunks the
 * way rs-auxlog feeds it.  Checks: events stay inside the buffer, units and
 * continuations end in LF and account for every byte fed,
 * and naming/marker functions accept whatever a unit holds. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auxproto.h"

#define MAX_LINE 512
#define MAX_UNIT 8192

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rs_aux_split s;
    enum rs_aux_proto proto;
    enum rs_aux_side side;
    uint8_t *buf;
    size_t step, len = 0, olen = 0, off = 0;

    if (size < 1)
        return 0;
    proto = data[0] & 1 ? RS_AUX_IMAP : RS_AUX_SMTP;
    side = data[0] & 2 ? RS_AUX_SERVER : RS_AUX_CLIENT;
    step = (size_t)(data[0] >> 2) + 1;
    data++;
    size--;
    buf = malloc(size + 1);
    assert(buf);
    rs_aux_split_init(&s, proto, side, MAX_LINE, MAX_UNIT);
    for (off = 0; off < size;) {
        size_t n = size - off < step ? size - off : step;
        memcpy(buf + len, data + off, n);
        len += n;
        off += n;
        for (;;) {
            struct rs_aux_event ev;
            int k = rs_aux_split_scan(&s, buf, len, &ev);
            if (k < 0)
                goto done;
            if (k == RS_AUX_EV_NEED) {
                /* Alternate the DATA reply so both paths get fuzzed. */
                if (rs_aux_split_waiting(&s) && rs_aux_split_data_reply(&s, off & 1 ? 354 : 554) == 0)
                    continue;
                break;
            }
            assert(ev.start <= ev.end && ev.end <= len);
            if (k == RS_AUX_EV_LITERAL) {
                assert(proto == RS_AUX_IMAP && side == RS_AUX_CLIENT);
                continue;
            }
            if (k == RS_AUX_EV_CONT) {
                assert(proto == RS_AUX_IMAP && side == RS_AUX_SERVER && ev.end > ev.start);
                assert(buf[ev.start] == '+' && buf[ev.end - 1] == '\n');
                memmove(buf + ev.start, buf + ev.end, len - ev.end);
                len -= ev.end - ev.start;
                olen += ev.end - ev.start;
                continue;
            }
            assert(k == RS_AUX_EV_UNIT && ev.end > 0 && ev.end <= MAX_UNIT);
            struct rs_aux_cmd cmd;
            struct rs_aux_reply rp;
            rs_txn_id id;
            if (side == RS_AUX_CLIENT) {
                rs_aux_cmd_parse(proto, buf, ev.end, ev.data, &cmd);
                rs_aux_marker(proto, buf, ev.end, &id);
            } else {
                rs_aux_reply_parse(proto, buf, ev.end, &rp);
            }
            assert(buf[ev.end - 1] == '\n');
            olen += ev.end;
            memmove(buf, buf + ev.end, len - ev.end);
            len -= ev.end;
        }
    }
done:
    /* Without an error every byte fed is in a unit, a continuation or the
     * unit in progress. */
    if (off >= size && olen + len != size && rs_aux_split_scan(&s, buf, len, &(struct rs_aux_event){ 0 }) >= 0)
        assert(0);
    free(buf);
    return 0;
}
