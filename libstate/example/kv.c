/* rs-kv: the smallest application that takes part in resplice's state
 * transfer, written only against the public header libstate/rs_state.h (and
 * the event loop it runs on), as a third-party server would be.  A line
 * protocol over TCP; each line is one request, numbered per connection as
 * the contract asks:
 *
 *   set KEY VALUE   stores it; the state "KEY=VALUE" goes to the peer
 *                   asynchronously; answers "ok"
 *   get KEY         answers the value, or "none" (read-only: no state)
 *   token           draws a random token (non-deterministic): its state
 *                   "token=HEX" must reach the peer before the answer
 *                   "token HEX" leaves, so the answer waits for resume()
 *
 * On the alternate, apply() installs the peer's "KEY=VALUE" states; a
 * replayed "token" answers the token the primary drew.
 *
 *   rs-kv --listen 0.0.0.0:8080 --stated /run/rs-stated.sock */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon.h"
#include "loop.h"
#include "options.h"
#include "rs_state.h"
#include "server.h"

#define KEYS     64
#define LINE_MAX 256

struct kv {
    char key[32], value[64];
    rs_txn_id set_by;           /* for a replayed token: the transaction that drew it */
};

struct conn {
    struct conn *next;
    struct server *srv;
    int fd;
    struct rs_io io;
    struct rs_state_conn who;
    uint16_t n;                 /* requests so far */
    char in[LINE_MAX];
    size_t len;
    rs_txn_id held;             /* a token answer waiting for resume() (0: none) */
    char reply[96];
};

struct server {
    struct rs_loop loop;
    struct rs_server server;
    struct rs_state *stated;
    struct conn *conns;
    struct kv kv[KEYS];
};

static struct kv *lookup(struct server *s, const char *key, bool create)
{
    for (int i = 0; i < KEYS; i++)
        if (s->kv[i].key[0] && !strcmp(s->kv[i].key, key))
            return &s->kv[i];
    for (int i = 0; create && i < KEYS; i++)
        if (!s->kv[i].key[0]) {
            snprintf(s->kv[i].key, sizeof(s->kv[i].key), "%s", key);
            return &s->kv[i];
        }
    return NULL;
}

/* "KEY=VALUE" into the table, remembering which transaction set it. */
static int store(struct server *s, const char *state, size_t len, rs_txn_id id)
{
    char text[128];
    const char *eq;
    struct kv *e;

    if (len == 0 || len >= sizeof(text))
        return -EINVAL;
    memcpy(text, state, len);
    text[len] = '\0';
    if (!(eq = strchr(text, '=')) || eq == text || (size_t)(eq - text) >= sizeof(e->key))
        return -EINVAL;
    text[eq - text] = '\0';
    if (!(e = lookup(s, text, true)))
        return -ENOSPC;
    snprintf(e->value, sizeof(e->value), "%s", eq + 1);
    e->set_by = id;
    return 0;
}

static void conn_close(struct conn *c)
{
    struct conn **pp = &c->srv->conns;

    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    if (c->held)
        rs_state_forget(c->srv->stated, c->held);
    rs_io_stop(&c->io);
    close(c->fd);
    free(c);
}

static void answer(struct conn *c, const char *text)
{
    if (send(c->fd, text, strlen(text), MSG_NOSIGNAL) < 0)
        rs_log("send %s: %s", c->who.name, strerror(errno));
}

/* Runs request 'line' (transaction 'id').  Returns false while its answer
 * waits for the peer. */
static bool run(struct conn *c, rs_txn_id id, char *line)
{
    struct server *s = c->srv;
    char key[32], value[64], state[112];
    struct kv *e;

    if (sscanf(line, "set %31s %63s", key, value) == 2) {
        snprintf(state, sizeof(state), "%s=%s", key, value);
        store(s, state, strlen(state), id);
        rs_state_update(s->stated, id, state, strlen(state), false);
        answer(c, "ok\n");
    } else if (sscanf(line, "get %31s", key) == 1) {
        e = lookup(s, key, false);
        snprintf(c->reply, sizeof(c->reply), "%s\n", e ? e->value : "none");
        answer(c, c->reply);
    } else if (!strcmp(line, "token")) {
        uint64_t r;

        /* Replayed here after a failover: the primary's token, not a new one. */
        if ((e = lookup(s, "token", false)) && e->set_by == id) {
            snprintf(c->reply, sizeof(c->reply), "token %s\n", e->value);
            answer(c, c->reply);
            return true;
        }
        if (getrandom(&r, sizeof(r), 0) != sizeof(r))
            r = rs_mono_ns();
        snprintf(state, sizeof(state), "token=%016llx", (unsigned long long)r);
        store(s, state, strlen(state), id);
        snprintf(c->reply, sizeof(c->reply), "token %016llx\n", (unsigned long long)r);
        if (rs_state_update(s->stated, id, state, strlen(state), true) == RS_STATE_WAIT) {
            c->held = id;
            return false;
        }
        answer(c, c->reply);
    } else {
        answer(c, "error\n");
    }
    return true;
}

/* Runs the complete lines in c->in, in order, until one waits. */
static void serve(struct conn *c)
{
    char *nl;

    if (!c->who.settled) {
        /* rs-proxy names a new connection's client in a header first. */
        int h = rs_state_named_by_header(c->srv->stated, c->in, c->len, false, &c->who);

        if (h == 0)
            return;
        if (h == -EPROTO) {
            conn_close(c);
            return;
        }
        if (h > 0) {
            memmove(c->in, c->in + h, c->len - (size_t)h);
            c->len -= (size_t)h;
        }
    }
    while (!c->held && (nl = memchr(c->in, '\n', c->len))) {
        rs_txn_id id = rs_txn_id_make(c->who.client_ip, c->who.client_port, (uint16_t)(c->who.first_num + c->n++));
        size_t used = (size_t)(nl - c->in) + 1;

        *nl = '\0';
        if (nl > c->in && nl[-1] == '\r')
            nl[-1] = '\0';
        run(c, id, c->in);
        memmove(c->in, c->in + used, c->len - used);
        c->len -= used;
    }
    rs_io_set(&c->io, c->held ? 0 : EPOLLIN);
}

static void on_conn(struct rs_io *io, uint32_t events)
{
    struct conn *c = io->ctx;
    ssize_t r;

    (void)events;
    r = recv(c->fd, c->in + c->len, sizeof(c->in) - c->len, 0);
    if (r <= 0 && !(r < 0 && (errno == EAGAIN || errno == EINTR))) {
        conn_close(c);
        return;
    }
    if (r > 0)
        c->len += (size_t)r;
    if (c->len == sizeof(c->in) && !memchr(c->in, '\n', c->len)) {
        conn_close(c);          /* a line too long */
        return;
    }
    serve(c);
}

static int on_accept(void *ctx, int fd, const struct sockaddr_in *peer)
{
    struct server *s = ctx;
    struct conn *c = calloc(1, sizeof(*c));

    (void)peer;
    if (!c || rs_io_start(&s->loop, &c->io, fd, EPOLLIN, on_conn, c) < 0) {
        free(c);
        close(fd);
        return -ENOMEM;
    }
    c->srv = s;
    c->fd = fd;
    rs_state_accepted(s->stated, fd, &c->who);      /* whose requests, from which number */
    c->next = s->conns;
    s->conns = c;
    return 0;
}

/* ---- The library's callbacks -------------------------------------------------- */

static int apply(void *ctx, rs_txn_id id, const void *state, size_t len, uint64_t token)
{
    (void)token;
    return store(ctx, state, len, id);
}

static void resume(void *ctx, rs_txn_id id, int err)
{
    struct server *s = ctx;

    (void)err;                  /* unreplicated or not, the answer goes */
    for (struct conn *c = s->conns; c; c = c->next)
        if (c->held == id) {
            c->held = 0;
            answer(c, c->reply);
            serve(c);
            return;
        }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: rs-kv --listen ADDR:PORT --stated PATH\n"
               "A key-value line server on libstate (the example of libstate/rs_state.h).\n");
}

int main(int argc, char **argv)
{
    static struct server s;
    struct rs_addr listen = { 0, 8080 };
    const char *stated = NULL;
    const struct rs_opt opts[] = {
        RS_OPTION("listen", RS_OPT_ADDR, &listen),
        RS_OPTION("stated", RS_OPT_STR, &stated),
        RS_OPTIONS_END,
    };
    struct rs_state_ops ops = { .ctx = &s, .apply = apply, .resume = resume };
    int err = rs_opts_parse("rs-kv", argc, argv, opts, usage);

    if (err || !stated)
        return err ? rs_opts_exit(err) : (usage(stderr), 2);
    rs_log_init("rs-kv");
    if (rs_loop_init(&s.loop) < 0 || rs_loop_signals(&s.loop, NULL, NULL) < 0
        || rs_server_open(&s.server, &s.loop, listen, 64, on_accept, &s) < 0
        || !(s.stated = rs_state_open(&s.loop, stated, 0, &ops))) {
        fprintf(stderr, "rs-kv: cannot start: %s\n", strerror(errno));
        return 1;
    }
    printf("listening on %s\n", RS_A(listen));
    fflush(stdout);
    rs_loop_run(&s.loop);
    while (s.conns)
        conn_close(s.conns);
    rs_state_close(s.stated);
    rs_loop_fini(&s.loop);
    return 0;
}
