/* rs-front on the alternate: applies the peer's states (--apply-cmd, run
 * asynchronously, or --apply-file, installed in place) and keeps the
 * responses that came with synchronous states, to answer a recovered
 * request from them instead of re-running it. */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- Recorded responses (the alternate) ------------------------------- */

/* Keeps the response that came with transaction 'id's synchronous state
 * ('len' bytes, copied). */
static void rec_keep(struct front *f, rs_txn_id id, const uint8_t *data, uint32_t len)
{
    struct front_rec *r = &f->recs[f->rec_next++ % FRONT_RECS];
    uint8_t *copy = malloc(len);

    if (!copy)
        return;         /* a crash in its response then re-runs it */
    free(r->data);
    memcpy(copy, data, len);
    *r = (struct front_rec){ id, copy, len, rs_mono_ns() };
    f->stats[FS_RECORDED]++;
}

/* Gives 't' the recorded response of its transaction, if there is one. */
void rec_take(struct front_conn *c, struct front_txn *t)
{
    uint64_t now = rs_mono_ns();

    for (uint32_t i = 0; i < FRONT_RECS; i++) {
        struct front_rec *r = &c->f->recs[i];

        if (!r->data || r->id != t->id)
            continue;
        if (now - r->t_ns > FRONT_REC_TTL_NS) {
            /* Stale: the client port was reused, not a failover. */
            free(r->data);
            r->data = NULL;
            continue;
        }
        t->rec = r->data;
        t->rec_len = r->len;
        r->data = NULL;
        return;
    }
}

/* Moves what fits of 't's recorded response to 'out'.  Returns false when
 * nothing could move. */
bool rec_emit(struct front_conn *c, struct front_txn *t)
{
    char id[RS_TXN_ID_STRLEN];
    uint32_t n;

    compact(c->out, &c->out_off, &c->out_len);
    n = (uint32_t)min_u64(FRONT_OUT_CAP - c->out_len, t->rec_len - t->rec_off);
    if (n == 0 && t->rec_off < t->rec_len)
        return false;
    if (!t->started) {
        t->started = true;
        t->start = t->hold_from = c->gen_total;
        t->status = t->rec_len > 12 ? atoi((const char *)t->rec + 9) : 0;
        rs_log("from-record %s %s %uB", rs_txn_str(t->id, id), c->who.name, t->rec_len);
    }
    out_put(c, t->rec + t->rec_off, n);
    t->rec_off += n;
    if (t->rec_off == t->rec_len) {
        t->end = c->gen_total;
        c->q_done++;
        c->f->stats[FS_RESPS]++;
        c->f->stats[FS_FROM_RECORD]++;
        free(t->rec);
        t->rec = NULL;
    }
    return true;
}

/* ---- Apply (the alternate) -------------------------------------------- */

static void apply_finish(struct front *f)
{
    char ids[RS_TXN_ID_STRLEN], how[48];
    uint64_t us = (rs_mono_ns() - f->apply_t0) / 1000;
    int st = 0, status;
    pid_t r;

    do {
        r = waitpid(f->apply_pid, &st, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return;                 /* not yet */
    if (r < 0)
        status = -ECHILD;
    else if (f->apply_timed_out)
        status = -ETIMEDOUT;
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        status = 0;
    else
        status = -EIO;
    if (r > 0 && WIFEXITED(st))
        snprintf(how, sizeof(how), "exit=%d", WEXITSTATUS(st));
    else if (r > 0 && WIFSIGNALED(st))
        snprintf(how, sizeof(how), "signal=%d", WTERMSIG(st));
    else
        snprintf(how, sizeof(how), "lost");
    rs_io_stop(&f->apply_io);
    close(f->apply_pidfd);
    rs_timer_stop(&f->loop, &f->apply_timer);
    unlink(f->apply_path);
    f->apply_pidfd = -1;
    f->apply_pid = 0;
    f->stats[status ? FS_APPLY_ERRORS : FS_APPLIES]++;
    rs_log("state-apply %s cmd %s %uB %" PRIu64 ".%03" PRIu64 "ms%s", rs_txn_str(f->apply_txn, ids), how,
           f->apply_len, us / 1000, us % 1000, f->apply_timed_out ? " timed out" : "");
    rs_state_apply_done(f->stated, f->apply_token, status);
}

/* Writes 'len' bytes of 'data' to a new file made from template 'tmpl'
 * (mkostemp: the name is left there) with 'mode'.  Returns 0, or -errno
 * and no file. */
static int write_temp(char *tmpl, const void *data, size_t len, mode_t mode)
{
    size_t off = 0;
    int fd = mkostemp(tmpl, O_CLOEXEC), err;

    if (fd < 0)
        return -errno;
    while (off < len) {
        ssize_t w = write(fd, (const uint8_t *)data + off, len - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            err = -errno;
            close(fd);
            unlink(tmpl);
            return err;
        }
        off += (size_t)w;
    }
    if (fchmod(fd, mode) < 0 || close(fd) < 0) {
        err = -errno;
        unlink(tmpl);
        return err;
    }
    return 0;
}

/* --apply-file: the state is the application's whole state file; one
 * rename installs it (an sqlite database: copied into the file in place),
 * unless a newer one ('seq', X-Resplice-State-Seq) is
 * already there (states of different client connections can be logged,
 * hence applied, out of the order they were taken in).  Or it is an sqlite
 * change set (changes.c), run on the file in one transaction: it sets each
 * row it names to the newest image this file has seen.  Returns 0 or -errno. */
static int apply_file(struct front *f, rs_txn_id id, const void *state, size_t len, uint64_t seq)
{
    char tmp[PATH_MAX + 16], ids[RS_TXN_ID_STRLEN], why[256];
    bool changes = front_is_changes(state, len), sqlite = front_is_sqlite(state, len);
    struct stat st;
    int err;

    rs_txn_str(id, ids);
    if (seq && seq < f->installed_seq) {
        rs_log("state-apply %s %s %zuB seq=%" PRIu64 " older than the installed %" PRIu64 ": skipped", ids,
               changes ? "changes" : "file", len, seq, f->installed_seq);
        return 0;
    }
    if (changes) {
        uint64_t t0 = rs_mono_ns();

        if ((err = front_changes_apply(f->cfg.apply_file, state, len, why, sizeof(why))) != 0) {
            f->stats[FS_APPLY_ERRORS]++;
            rs_log("state-apply %s changes %zuB seq=%" PRIu64 " failed: %s", ids, len, seq, why);
            return err;
        }
        f->stats[FS_APPLIES]++;
        rs_log("state-apply %s changes %zuB seq=%" PRIu64 " us=%" PRIu64, ids, len, seq, (rs_mono_ns() - t0) / 1000);
        return 0;
    }
    snprintf(tmp, sizeof(tmp), "%s.rs-XXXXXX", f->cfg.apply_file);
    err = write_temp(tmp, state, len, stat(f->cfg.apply_file, &st) == 0 ? st.st_mode & 07777 : 0640);
    if (err < 0) {
        snprintf(why, sizeof(why), "%s", strerror(-err));
    } else if (sqlite) {
        /* In place: php's connections may stay open on the file. */
        err = front_sqlite_install(f->cfg.apply_file, tmp, why, sizeof(why));
        unlink(tmp);
    } else if (rename(tmp, f->cfg.apply_file) < 0) {
        err = -errno;
        snprintf(why, sizeof(why), "%s", strerror(-err));
        unlink(tmp);
    }
    if (err < 0) {
        f->stats[FS_APPLY_ERRORS]++;
        rs_log("state-apply %s file %s: %s", ids, f->cfg.apply_file, why);
        return err;
    }
    if (seq)
        f->installed_seq = seq;
    f->stats[FS_APPLIES]++;
    rs_log("state-apply %s file %zuB seq=%" PRIu64 "%s", ids, len, seq, sqlite ? " in place" : "");
    return 0;
}

static void on_apply_end(struct rs_io *io, uint32_t events);

int front_apply(void *ctx, rs_txn_id id, const void *state, size_t len, uint64_t token)
{
    struct front *f = ctx;
    struct front_blob env;
    char ids[RS_TXN_ID_STRLEN], *cmd = NULL;
    char *argv[6];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dfl;
    uint64_t seq = 0;
    pid_t pid;
    int err = front_blob_parse(state, len, &env);

    if (!f->cfg.apply_cmd && !f->cfg.apply_file)
        return -EOPNOTSUPP;
    if (f->apply_pid > 0)
        return -EBUSY;
    if (err < 0) {
        rs_log("state-apply %s: bad envelope (%zuB)", rs_txn_str(id, ids), len);
        return err;
    }
    if (err > 0) {
        seq = env.seq;
        if (env.rlen)
            rec_keep(f, id, env.resp, env.rlen);
        if (env.slen == 0)
            return 0;
        state = env.state;
        len = env.slen;
    }
    if (f->cfg.apply_file)
        return apply_file(f, id, state, len, seq);
    snprintf(f->apply_path, sizeof(f->apply_path), "%s/rs-apply-XXXXXX", f->state_real);
    if ((err = write_temp(f->apply_path, state, len, 0600)) < 0)
        return err;
    /* sh -c 'CMD "$@"' rs-apply FILE TXN: the blob and the ID are CMD's
     * last two arguments ($1 and $2 inside a script). */
    if (asprintf(&cmd, "%s \"$@\"", f->cfg.apply_cmd) < 0) {
        unlink(f->apply_path);
        return -ENOMEM;
    }
    argv[0] = "/bin/sh";
    argv[1] = "-c";
    argv[2] = cmd;
    argv[3] = "rs-apply";
    argv[4] = f->apply_path;
    argv[5] = (char *)rs_txn_str(id, ids);
    {
        char *full[7] = { argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], NULL };

        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);    /* output to our log */
        posix_spawnattr_init(&attr);
        sigemptyset(&none);
        sigemptyset(&dfl);
        sigaddset(&dfl, SIGPIPE);
        posix_spawnattr_setsigmask(&attr, &none);       /* we block SIGTERM & co for signalfd */
        posix_spawnattr_setsigdefault(&attr, &dfl);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        err = -posix_spawn(&pid, "/bin/sh", &fa, &attr, full, environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
    }
    free(cmd);
    if (err < 0) {
        unlink(f->apply_path);
        return err;
    }
    f->apply_pid = pid;
    f->apply_txn = id;
    f->apply_len = (uint32_t)len;
    f->apply_token = token;
    f->apply_t0 = rs_mono_ns();
    f->apply_timed_out = false;
    f->apply_pidfd = pidfd_open(pid, 0);
    if (f->apply_pidfd < 0 || rs_io_start(&f->loop, &f->apply_io, f->apply_pidfd, EPOLLIN, on_apply_end, f) < 0) {
        /* Cannot watch it: wait for it here (rare; pidfds exist since 5.3). */
        int st;

        rs_log("state-apply %s: cannot watch the command (%s): waiting for it", ids, strerror(errno));
        if (f->apply_pidfd >= 0)
            close(f->apply_pidfd);
        f->apply_pidfd = -1;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        unlink(f->apply_path);
        f->apply_pid = 0;
        f->stats[WIFEXITED(st) && WEXITSTATUS(st) == 0 ? FS_APPLIES : FS_APPLY_ERRORS]++;
        return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
    }
    rs_timer_after(&f->loop, &f->apply_timer, f->cfg.apply_timeout_ns);
    rs_log("state-apply %s start %zuB file=%s", ids, len, f->apply_path);
    return RS_STATE_PENDING;
}

static void on_apply_end(struct rs_io *io, uint32_t events)
{
    struct front *f = io->ctx;

    (void)events;
    if (f->apply_pid > 0)
        apply_finish(f);
}

static void on_apply_timeout(struct rs_timer *t)
{
    struct front *f = t->ctx;

    if (f->apply_pid > 0) {
        f->apply_timed_out = true;
        rs_log("state-apply: command ran past --apply-timeout: killing it");
        kill(f->apply_pid, SIGKILL);
    }
}

void front_apply_init(struct front *f)
{
    f->apply_pidfd = -1;
    rs_timer_init(&f->apply_timer, on_apply_timeout, f);
}

void front_apply_fini(struct front *f)
{
    if (f->apply_pid > 0) {
        kill(f->apply_pid, SIGKILL);
        while (waitpid(f->apply_pid, NULL, 0) < 0 && errno == EINTR)
            ;
        unlink(f->apply_path);
    }
    rs_io_stop(&f->apply_io);
    rs_timer_stop(&f->loop, &f->apply_timer);
    if (f->apply_pidfd >= 0)
        close(f->apply_pidfd);
    for (uint32_t i = 0; i < FRONT_RECS; i++)
        free(f->recs[i].data);
}
