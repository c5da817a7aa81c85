/* rs-front's upstream socket: one connection to the application per client
 * connection, opened when a request waits, and what happens when it fails. */
#include "front.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- Upstream socket -------------------------------------------------- */

void up_close(struct front_conn *c)
{
    if (c->ufd < 0)
        return;
    rs_io_stop(&c->uio);
    close(c->ufd);
    c->ufd = -1;
    c->up_connecting = c->up_eof = false;
    c->uo_off = c->uo_len = 0;
    c->ui_off = c->ui_len = 0;
    c->rs_phase = PH_IDLE;
    c->rs_skip_lf = c->rs_msg_done = false;
    head_reset(&c->rsh);
    http_parser_init(&c->rs, HTTP_RESPONSE);
    c->rs.data = c;
}

/* The upstream failed ('why').  A response not yet begun is answered 502
 * and the connection closes after it; one under way cannot be finished, so
 * the client connection closes now (to resplice, like a backend crash). */
void up_fail(struct front_conn *c, const char *why)
{
    struct front_txn *t = c->q_done < c->q_len ? q_at(c, c->q_done) : NULL;

    c->f->stats[FS_UP_ERRORS]++;
    rs_log("upstream-error %s %s: %s", c->who.name, RS_A(c->f->cfg.upstream), why);
    if (t && t->sync_state) {   /* its response will not complete: nothing to hold for */
        free(t->sync_state);
        t->sync_state = NULL;
        t->waiting = false;
    }
    if (t && t->started) {
        up_close(c);
        front_close(c, "upstream failed mid-response");
        return;
    }
    up_close(c);
    if (t) {
        t->local = 502;
        txn_drop_after(c, c->q_done + 1);
        c->rq_stop = true;
    }
}

void up_set_events(struct front_conn *c)
{
    uint32_t ev = 0;

    if (c->ufd < 0)
        return;
    if (c->up_connecting || c->uo_off < c->uo_len)
        ev |= EPOLLOUT;
    if (!c->up_connecting && !c->up_eof && c->ui_len - c->ui_off < FRONT_UP_IN_CAP)
        ev |= EPOLLIN;
    rs_io_set(&c->uio, ev);
}

/* Starts the upstream connection.  Returns 0 or a negative errno. */
static int up_connect(struct front_conn *c)
{
    struct sockaddr_in sin = rs_addr_sin(c->f->cfg.upstream);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 && errno != EINPROGRESS) {
        int err = -errno;

        close(fd);
        return err;
    }
    if (rs_io_start(&c->f->loop, &c->uio, fd, EPOLLOUT, front_on_up, c) < 0) {
        int err = -errno;

        close(fd);
        return err;
    }
    c->ufd = fd;
    c->up_connecting = true;
    c->f->stats[FS_UP_CONNECTS]++;
    return 0;
}

/* Connects when requests wait and sends what the upstream takes.  Returns
 * true on progress. */
bool up_flush(struct front_conn *c)
{
    bool progress = false;

    if (c->ufd < 0) {
        int err;

        if (c->uo_off == c->uo_len)
            return false;
        if ((err = up_connect(c)) < 0) {
            up_fail(c, strerror(-err));
            return true;
        }
    }
    if (c->up_connecting) {
        int err = rs_sock_error(c->ufd);

        /* Still connecting shows as ENOTCONN from getpeername. */
        if (err) {
            up_fail(c, strerror(err));
            return true;
        }
        {
            struct sockaddr_in peer;
            socklen_t pl = sizeof(peer);

            if (getpeername(c->ufd, (struct sockaddr *)&peer, &pl) < 0)
                return false;
        }
        c->up_connecting = false;
        progress = true;
    }
    while (c->uo_off < c->uo_len) {
        ssize_t w = send(c->ufd, c->up_out + c->uo_off, c->uo_len - c->uo_off, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            up_fail(c, strerror(errno));
            return true;
        }
        c->uo_off += (uint32_t)w;
        progress = true;
    }
    if (c->uo_off == c->uo_len)
        c->uo_off = c->uo_len = 0;
    return progress;
}

/* Reads what fits into 'up_in'.  Returns true on progress (EOF included). */
bool up_read(struct front_conn *c)
{
    ssize_t r;

    if (c->ufd < 0 || c->up_connecting || c->up_eof)
        return false;
    compact(c->up_in, &c->ui_off, &c->ui_len);
    if (c->ui_len == FRONT_UP_IN_CAP)
        return false;
    do {
        r = recv(c->ufd, c->up_in + c->ui_len, FRONT_UP_IN_CAP - c->ui_len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return false;
        up_fail(c, strerror(errno));
        return true;
    }
    if (r == 0) {
        c->up_eof = true;
        return true;
    }
    c->ui_len += (uint32_t)r;
    return true;
}

