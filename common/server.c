/* The TCP server of the daemons (server.h). */
#include "server.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

static void on_accept(struct rs_io *io, uint32_t events)
{
    struct rs_server *s = io->ctx;

    (void)events;
    for (;;) {
        struct sockaddr_in peer;
        int fd = rs_accept_tcp(io->fd, &peer), err;

        if (fd < 0)
            return;
        if ((err = s->fn(s->ctx, fd, &peer)) < 0)
            rs_log("error conn-open %s: %s", RS_A(rs_addr_of_sin(&peer)), strerror(-err));
    }
}

int rs_server_open(struct rs_server *s, struct rs_loop *loop, struct rs_addr addr, int backlog, rs_server_fn fn,
                   void *ctx)
{
    int fd = rs_listen_tcp(addr, backlog), err;

    if (fd < 0)
        return fd;
    s->fn = fn;
    s->ctx = ctx;
    if ((err = rs_io_start(loop, &s->io, fd, EPOLLIN, on_accept, s)) < 0) {
        close(fd);
        return err;
    }
    return 0;
}

void rs_server_close(struct rs_server *s)
{
    if (!rs_io_active(&s->io))
        return;
    rs_io_stop(&s->io);
    close(s->io.fd);
}
