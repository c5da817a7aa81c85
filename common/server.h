/* A TCP server on the event loop: a listening socket whose accepted
 * connections (non-blocking, close-on-exec, TCP_NODELAY: rs_accept_tcp)
 * each go to one function.  What rs-app, rs-front, rs-auxlog, rs-smtpd and
 * rs-kv listen with. */
#ifndef RS_SERVER_H
#define RS_SERVER_H

#include <netinet/in.h>

#include "daemon.h"
#include "loop.h"

/* Takes accepted connection 'fd' from 'peer'.  Returns 0, or a negative
 * errno (logged; the function has closed 'fd'). */
typedef int (*rs_server_fn)(void *ctx, int fd, const struct sockaddr_in *peer);

struct rs_server {
    struct rs_io io;
    rs_server_fn fn;
    void *ctx;
};

/* Listens on 'addr' with 'backlog' and starts accepting on 'loop'.
 * Returns 0 or a negative errno. */
int rs_server_open(struct rs_server *s, struct rs_loop *loop, struct rs_addr addr, int backlog, rs_server_fn fn,
                   void *ctx);
/* Stops accepting and closes the listening socket. */
void rs_server_close(struct rs_server *s);

#endif /* RS_SERVER_H */
