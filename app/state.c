/* rs-app state hooks (see state.h): installing hooks, applying state blobs on
 * the alternate, resuming held responses; --stated, the hooks that link the
 * state library (libstate/rs_state.h) to the local rs-stated; and
 * --sync-delay, a stand-in hook that holds every non-deterministic response
 * for a fixed time, so the held-response path can be measured alone. */
#include "app.h"
#include "rs_state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void rs_app_set_hooks(struct rs_app *app, const struct rs_app_hooks *hooks)
{
    if (hooks)
        app->hooks = *hooks;
    else
        memset(&app->hooks, 0, sizeof(app->hooks));
}

static bool is_hex32(const char *s, size_t len)
{
    if (len != 32)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int rs_app_state_apply(struct rs_app *app, rs_txn_id id, const void *state, size_t len)
{
    char text[RS_APP_STATE_MAX + 1];
    uint64_t v = 0;

    if (!state || len == 0 || len > RS_APP_STATE_MAX)
        return -EINVAL;
    memcpy(text, state, len);
    text[len] = '\0';
    if (strlen(text) != len)
        return -EINVAL;         /* embedded NUL */

    if (strncmp(text, "counter=", 8) == 0 || strncmp(text, "counter+=", 9) == 0) {
        bool add = text[7] == '+';
        const char *p = text + (add ? 9 : 8);

        if (*p == '\0')
            return -EINVAL;
        for (; *p; p++) {
            if (*p < '0' || *p > '9' || v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
                return -EINVAL;
            v = v * 10 + (uint64_t)(*p - '0');
        }
        if (add && v > UINT64_MAX - app->counter)
            return -ERANGE;
        /* An update's increment (APP_COUNTER_INCREMENT), or a value that
         * sets the counter. */
        app->counter = add ? app->counter + v : v;
        return 0;
    }
    if (strncmp(text, "token=", 6) == 0 && is_hex32(text + 6, len - 6)) {
        /* A ring: the alternate applies tokens in transaction order and
         * replays only the last few, so old records may be overwritten. */
        struct app_token_rec *rec = &app->tokens[app->token_next++ % APP_TOKEN_REC];

        rec->id = id;
        rec->used = false;
        memcpy(rec->token, text + 6, 33);
        return 0;
    }
    return -EINVAL;
}

const char *app_token_take(struct rs_app *app, rs_txn_id id, char out[33])
{
    for (uint32_t i = 0; i < APP_TOKEN_REC; i++) {
        struct app_token_rec *rec = &app->tokens[i];

        if (rec->token[0] && !rec->used && rec->id == id) {
            rec->used = true;
            memcpy(out, rec->token, 33);
            return out;
        }
    }
    return NULL;
}

int rs_app_txn_resume(struct rs_app *app, rs_txn_id id, int err)
{
    for (struct app_conn *c = app->conns; c; c = c->next) {
        if (!c->waiting || c->req.id != id)
            continue;
        c->waiting = false;
        if (err < 0) {
            char ids[RS_TXN_ID_STRLEN];

            rs_txn_id_format(id, ids, sizeof(ids));
            rs_log("state-update-failed %s %s %s", ids, c->who.name, strerror(-err));
            app->stats[ST_REQ_REJECTED]++;
            app_resp_small(c, 503, "text/plain", NULL, "state transfer failed\n", 22);
        } else {
            app_resp_small(c, c->held_status, "text/plain", NULL, c->held_body,
                           strlen(c->held_body));
        }
        app_conn_service(c);
        return 0;
    }
    return -ENOENT;
}

/* ---- --stated: the state library -------------------------------------- */

static int stated_update(void *ctx, rs_txn_id id, const void *state, size_t len, int nondet)
{
    struct rs_app *app = ctx;
    int r = rs_state_update(app->stated, id, state, len, nondet != 0);

    return r == RS_STATE_WAIT ? RS_APP_HOOK_WAIT : r;
}

static void stated_end(void *ctx, rs_txn_id id, int complete)
{
    struct rs_app *app = ctx;

    if (!complete)
        rs_state_forget(app->stated, id);
}

static int stated_apply(void *ctx, rs_txn_id id, const void *state, size_t len, uint64_t token)
{
    struct rs_app *app = ctx;
    int err = rs_app_state_apply(app, id, state, len);

    (void)token;
    if (err == 0) {
        char ids[RS_TXN_ID_STRLEN];

        rs_txn_id_format(id, ids, sizeof(ids));
        rs_log("state-apply %s %.*s", ids, (int)len, (const char *)state);
    }
    return err;
}

/* The library gave up on the standby or got its ACK: the response goes
 * either way (an unreplicated one is logged and counted by the library). */
static void stated_resume(void *ctx, rs_txn_id id, int err)
{
    (void)err;
    rs_app_txn_resume(ctx, id, 0);      /* -ENOENT: its connection closed */
}

/* The whole state for a standby joining the chain: the counter's value
 * (a token matters only to its own transaction's replay, which a standby
 * that has the state after it never runs). */
static int stated_export(void *ctx, const void **state, size_t *len)
{
    static char text[RS_APP_STATE_MAX];
    const struct rs_app *app = ctx;
    int n = snprintf(text, sizeof(text), "counter=%" PRIu64, app->counter);

    *state = text;
    *len = (size_t)n;
    rs_log("state-export %s", text);
    return 0;
}

int app_stated_init(struct rs_app *app, const char *path, uint64_t timeout_ns)
{
    struct rs_state_ops ops = { .ctx = app, .apply = stated_apply, .resume = stated_resume,
                                .export = stated_export };
    struct rs_app_hooks hooks = { .ctx = app, .txn_update = stated_update, .txn_end = stated_end };

    app->stated = rs_state_open(&app->loop, path, timeout_ns, &ops);
    if (!app->stated)
        return -errno;
    rs_app_set_hooks(app, &hooks);
    return rs_state_listening(app->stated, app->server.io.fd);     /* opened before */
}

/* ---- --sync-delay ----------------------------------------------------- */

static void delay_arm(struct rs_app *app)
{
    uint64_t now = rs_mono_ns(), next = UINT64_MAX;

    for (uint32_t i = 0; i < app->n_delayed; i++)
        if (app->delayed[i].due_ns < next)
            next = app->delayed[i].due_ns;
    if (next == UINT64_MAX)
        rs_timer_stop(&app->loop, &app->delay_timer);
    else
        rs_timer_after(&app->loop, &app->delay_timer, next > now ? next - now : 1);
}

static int delay_update(void *ctx, rs_txn_id id, const void *state, size_t len, int nondet)
{
    struct rs_app *app = ctx;

    (void)state;
    (void)len;
    if (!nondet)
        return 0;
    if (app->n_delayed == APP_DELAY_MAX)
        return -EBUSY;
    app->delayed[app->n_delayed++] = (struct app_delayed){ id, rs_mono_ns() + app->sync_delay_ns };
    delay_arm(app);
    return RS_APP_HOOK_WAIT;
}

static void sync_delay_fire(struct rs_timer *t)
{
    struct rs_app *app = t->ctx;
    uint64_t now = rs_mono_ns();
    uint32_t i = 0;

    while (i < app->n_delayed) {
        if (app->delayed[i].due_ns <= now) {
            rs_txn_id id = app->delayed[i].id;

            app->delayed[i] = app->delayed[--app->n_delayed];
            rs_app_txn_resume(app, id, 0);      /* -ENOENT: its connection closed */
        } else {
            i++;
        }
    }
    delay_arm(app);
}

int app_sync_delay_init(struct rs_app *app, uint64_t ns)
{
    struct rs_app_hooks hooks = { .ctx = app, .txn_update = delay_update };

    rs_timer_init(&app->delay_timer, sync_delay_fire, app);
    app->sync_delay_ns = ns;
    rs_app_set_hooks(app, &hooks);
    return 0;
}
