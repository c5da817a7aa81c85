/* rs-proxy's socket-level tools: TCP_REPAIR (reading a socket's exact TCP
 * state so a splice continues both byte streams where the proxy left them;
 * closing without a sound) and the RSTs of clean ends. */
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy.h"

/* ---- TCP_REPAIR ------------------------------------------------------------ */

int px_repair_on(int fd)
{
    int one = 1;

    return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one)) ? -errno : 0;
}

int px_repair_off(int fd)
{
    int zero = 0;

    return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &zero, sizeof(zero)) ? -errno : 0;
}

static int queue_seq(int fd, int queue, uint32_t *seq)
{
    socklen_t len = sizeof(*seq);

    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue)))
        return -errno;
    return getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, seq, &len) ? -errno : 0;
}

int px_repair_read(int fd, struct rs_addr local, struct rs_addr remote, struct rs_splice_conn *c,
                   struct tcp_info *info)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    uint32_t ts = 0;
    int e;

    memset(c, 0, sizeof(*c));
    c->local_addr = local.ip;
    c->remote_addr = remote.ip;
    c->local_port = local.port;
    c->remote_port = remote.port;
    if ((e = queue_seq(fd, TCP_SEND_QUEUE, &c->snd_nxt)) || (e = queue_seq(fd, TCP_RECV_QUEUE, &c->rcv_nxt)))
        return e;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
        return -errno;
    c->ts_ok = !!(ti.tcpi_options & TCPI_OPT_TIMESTAMPS);
    c->sack_ok = !!(ti.tcpi_options & TCPI_OPT_SACK);
    if (ti.tcpi_options & TCPI_OPT_WSCALE) {
        c->snd_wscale = ti.tcpi_snd_wscale;
        c->rcv_wscale = ti.tcpi_rcv_wscale;
    }
    len = sizeof(ts);
    if (c->ts_ok && getsockopt(fd, IPPROTO_TCP, TCP_TIMESTAMP, &ts, &len))
        return -errno;
    c->ts_now = ts;
    if (info)
        *info = ti;
    return 0;
}

void px_close_silently(int fd)
{
    if (fd < 0)
        return;
    px_repair_on(fd);   /* a socket in repair mode closes without a FIN or RST */
    close(fd);
}

void px_nodelay(int fd)
{
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
}

int px_sock_unread(int fd)
{
    int in = 0;

    return ioctl(fd, SIOCINQ, &in) ? -errno : in;
}

int px_sock_queued(int fd)
{
    int in = px_sock_unread(fd), out = 0;

    if (in < 0 || ioctl(fd, SIOCOUTQ, &out))
        return in < 0 ? in : -errno;
    return in + out;
}

/* ---- Clean ends -------------------------------------------------------------- */

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

int px_send_tcp(int rawfd, struct rs_addr from, struct rs_addr to, uint32_t seq, uint32_t ack, uint8_t flags)
{
    uint8_t pkt[40] = { 0 };
    struct sockaddr_in dst = rs_addr_sin(to);
    uint32_t sum = 0;

    pkt[0] = 0x45;
    rs_splice_store16(pkt + 2, sizeof(pkt));
    pkt[8] = 64;
    pkt[9] = IPPROTO_TCP;
    rs_splice_store32(pkt + 12, from.ip);
    rs_splice_store32(pkt + 16, to.ip);     /* the kernel fills in the id and the IP checksum */
    rs_splice_store16(pkt + 20, from.port);
    rs_splice_store16(pkt + 22, to.port);
    rs_splice_store32(pkt + 24, seq);
    rs_splice_store32(pkt + 28, ack);
    pkt[32] = 5 << 4;
    pkt[33] = flags;
    /* TCP checksum over the pseudo header and the 20-byte header. */
    sum += (from.ip >> 16) + (from.ip & 0xffff) + (to.ip >> 16) + (to.ip & 0xffff) + IPPROTO_TCP + 20;
    for (int i = 20; i < 40; i += 2)
        sum += rs_splice_load16(pkt + i);
    rs_splice_store16(pkt + 36, csum_fold(sum));
    return sendto(rawfd, pkt, sizeof(pkt), 0, (struct sockaddr *)&dst, sizeof(dst)) == (ssize_t)sizeof(pkt) ? 0
                                                                                                           : -errno;
}

int px_send_hdr(int rawfd, struct rs_addr from, struct rs_addr to, const uint8_t *tcp, uint32_t hlen)
{
    uint8_t pkt[20 + RS_TCP_HDR_MAX] = { 0 };
    struct sockaddr_in dst = rs_addr_sin(to);
    uint32_t sum = 0;

    if (hlen < RS_TCP_HDR_MIN || hlen > RS_TCP_HDR_MAX || hlen % 4)
        return -EINVAL;
    pkt[0] = 0x45;
    rs_splice_store16(pkt + 2, (uint16_t)(20 + hlen));
    pkt[8] = 64;
    pkt[9] = IPPROTO_TCP;
    rs_splice_store32(pkt + 12, from.ip);
    rs_splice_store32(pkt + 16, to.ip);
    memcpy(pkt + 20, tcp, hlen);
    rs_splice_store16(pkt + 20, from.port);
    rs_splice_store16(pkt + 22, to.port);
    pkt[36] = pkt[37] = 0;
    sum += (from.ip >> 16) + (from.ip & 0xffff) + (to.ip >> 16) + (to.ip & 0xffff) + IPPROTO_TCP + hlen;
    for (uint32_t i = 20; i < 20 + hlen; i += 2)
        sum += rs_splice_load16(pkt + i);
    rs_splice_store16(pkt + 36, csum_fold(sum));
    return sendto(rawfd, pkt, 20 + hlen, 0, (struct sockaddr *)&dst, sizeof(dst)) == (ssize_t)(20 + hlen) ? 0 : -errno;
}

int px_send_rst(int rawfd, struct rs_addr from, struct rs_addr to, uint32_t seq)
{
    return px_send_tcp(rawfd, from, to, seq, 0, 0x04);
}
