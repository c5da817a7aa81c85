/* Control-plane messages between proxy, logger, aux logger and backends:
 * versioned, length-prefixed frames authenticated with keyed BLAKE2b-256
 * (libsodium's crypto_generichash) under a shared key, with per-sender sequence numbers against replay.
 * Pure encode/decode: no I/O, no globals (receiver state is the caller's).
 * The wire format and the message types are ctl_msg-t.h; this header is
 * what to do with them. */
#ifndef RS_CTL_MSG_H
#define RS_CTL_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl_msg-t.h"

/* ---- Functions ------------------------------------------------------------ */

/* Initialises libsodium; safe to call any number of times.  Returns 0, or
 * -EIO when libsodium cannot start. */
int rs_ctl_init(void);

/* Forgets every sender. */
void rs_ctl_replay_init(struct rs_ctl_replay *replay);

/* Frame length 'msg' encodes to, or -EINVAL when a field is invalid. */
int rs_ctl_encoded_len(const struct rs_ctl_msg *msg);

/* Encodes and authenticates 'msg' under 'key' into 'buf' of 'buflen' bytes.
 * Returns the frame length, -EINVAL when a field of 'msg' is invalid (the
 * same checks the decoder applies), or -ENOSPC when 'buflen' is too small. */
int rs_ctl_encode(const struct rs_ctl_key *key, const struct rs_ctl_msg *msg,
                 uint8_t *buf, size_t buflen);

/* The MAC of 'len' bytes at 'buf' (a frame's header and payload) under
 * 'key', as the frame carries it after them. */
void rs_ctl_mac(uint8_t mac[RS_CTL_MAC_LEN], const uint8_t *buf, size_t len, const struct rs_ctl_key *key);

/* Decodes the frame at the start of 'buf' ('len' bytes, possibly a partial
 * or several frames from a stream) into '*msg'.  Returns:
 *   > 0               bytes consumed: '*msg' is valid and the sender's
 *                     sequence is recorded in 'replay';
 *   0                 the frame is incomplete: call again with more bytes;
 *   -EPROTO           bad magic;
 *   -EPROTONOSUPPORT  unknown version;
 *   -ENOMSG           unknown message type;
 *   -EMSGSIZE         payload length over the bound for the type (checked
 *                     before waiting for the payload);
 *   -EACCES           bad MAC (wrong key or tampered frame);
 *   -EBADMSG          authenticated but a field is invalid (flags, length
 *                     for the type, enum value, padding, zero sender/seq);
 *   -EALREADY         replayed: sequence not above the sender's last one;
 *   -ENOBUFS          a new sender and 'replay' already tracks RS_CTL_REPLAY_PEERS;
 *   -EINVAL           a NULL argument.
 * Any negative return leaves 'replay' untouched; on a stream the connection
 * should be closed since framing can no longer be trusted.  For
 * STATE_UPDATE, msg->u.state_update.data points into 'buf'. */
int rs_ctl_decode(const struct rs_ctl_key *key, struct rs_ctl_replay *replay,
                 const uint8_t *buf, size_t len, struct rs_ctl_msg *msg);

/* True when 'a' and 'b' carry the same message (state data compared by
 * content). */
bool rs_ctl_msg_equal(const struct rs_ctl_msg *a, const struct rs_ctl_msg *b);

/* The role that numbers its senders like 'sender' (RS_CTL_ROLE_PROXY,
 * _LOGGER, _BACKEND, RS_CTL_ROLE_OPERATOR), 0 when none does. */
int rs_ctl_sender_role(uint32_t sender);

/* Whether 'role' ever sends messages of 'type': a FAILURE comes from the
 * logger or a backend's rs-stated, a RESPLICE from the logger, a proxy or
 * an operator, ... (docs/recovery.md).  Receivers refuse the others. */
bool rs_ctl_role_may_send(int role, unsigned type);

/* Name of message type 'type' ("HEARTBEAT", ...), "?" when unknown. */
const char *rs_ctl_type_str(unsigned type);

#endif /* RS_CTL_MSG_H */
