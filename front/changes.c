/* rs-front and an sqlite database (--apply-file DB): the resplice plugin's
 * change sets (roundcube/plugins/resplice: SQL that sets each changed row
 * to its image, the newest image of a row winning) run in one transaction
 * on the alternate, and a consistent copy of the whole database for an
 * export. */
#include "front.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#define BUSY_MS 5000        /* the application may hold the write lock a while */

bool front_is_changes(const void *state, size_t len)
{
    return len >= sizeof(FRONT_CHANGES_MAGIC) - 1 && !memcmp(state, FRONT_CHANGES_MAGIC, sizeof(FRONT_CHANGES_MAGIC) - 1);
}

bool front_is_sqlite(const void *head, size_t len)
{
    static const char magic[] = "SQLite format 3";     /* with its NUL: 16 bytes */

    return len >= sizeof(magic) && !memcmp(head, magic, sizeof(magic));
}

static int open_db(const char *path, int flags, sqlite3 **db, char *why, size_t whylen)
{
    if (sqlite3_open_v2(path, db, flags, NULL) != SQLITE_OK) {
        snprintf(why, whylen, "open %s: %s", path, *db ? sqlite3_errmsg(*db) : "out of memory");
        sqlite3_close(*db);
        *db = NULL;
        return -EIO;
    }
    sqlite3_busy_timeout(*db, BUSY_MS);
    return 0;
}

/* Runs 'sql'; on failure says why and returns -EIO. */
static int run(sqlite3 *db, const char *sql, char *why, size_t whylen)
{
    char *msg = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    snprintf(why, whylen, "%s", msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -EIO;
}

/* The database change sets run in, open from one to the next: opening it
 * reads its whole schema, 1 ms for Roundcube's (measured), where the
 * change set itself takes 0.05.  Opened anew when 'path' names another
 * file (replaced by a rename: rs-front itself copies a snapshot in place,
 * front_sqlite_install) or after a failure. */
static struct {
    char *path;
    sqlite3 *db;
    dev_t dev;
    ino_t ino;
} kept;

void front_changes_close(void)
{
    sqlite3_close(kept.db);
    free(kept.path);
    memset(&kept, 0, sizeof(kept));
}

static int kept_open(const char *path, char *why, size_t whylen)
{
    struct stat st;
    int err;

    if (stat(path, &st) < 0) {
        snprintf(why, whylen, "open %s: %s", path, strerror(errno));
        front_changes_close();
        return -EIO;
    }
    if (kept.db && !strcmp(kept.path, path) && kept.dev == st.st_dev && kept.ino == st.st_ino)
        return 0;
    front_changes_close();
    if (!(kept.path = strdup(path)))
        return -ENOMEM;
    kept.dev = st.st_dev;
    kept.ino = st.st_ino;
    /* No fsync: the standby's copy is as durable as an installed
     * snapshot (written and renamed, not synced); a synced commit took
     * 3.5 ms per change set here. */
    if ((err = open_db(path, SQLITE_OPEN_READWRITE, &kept.db, why, whylen)) != 0
        || (err = run(kept.db, "PRAGMA synchronous = OFF", why, whylen)) != 0)
        front_changes_close();
    return err;
}

int front_changes_apply(const char *path, const void *sql, size_t len, char *why, size_t whylen)
{
    char *text = malloc(len + 1);
    int err;

    if (!text)
        return -ENOMEM;
    memcpy(text, sql, len);
    text[len] = '\0';
    if (strlen(text) != len) {
        snprintf(why, whylen, "a NUL byte in the change set");
        free(text);
        return -EINVAL;
    }
    if ((err = kept_open(path, why, whylen)) == 0 && (err = run(kept.db, "BEGIN IMMEDIATE", why, whylen)) == 0) {
        if ((err = run(kept.db, text, why, whylen)) == 0)
            err = run(kept.db, "COMMIT", why, whylen);
        if (err)
            sqlite3_exec(kept.db, "ROLLBACK", NULL, NULL, NULL);
    }
    if (err)
        front_changes_close();
    free(text);
    return err;
}

int front_sqlite_copy(const char *path, const char *copy, char *why, size_t whylen)
{
    sqlite3 *db = NULL;
    char *sql;
    int err;

    unlink(copy);       /* VACUUM INTO wants no file there */
    if ((err = open_db(path, SQLITE_OPEN_READONLY, &db, why, whylen)) != 0)
        return err;
    sql = sqlite3_mprintf("VACUUM INTO %Q", copy);
    err = sql ? run(db, sql, why, whylen) : -ENOMEM;
    sqlite3_free(sql);
    sqlite3_close(db);
    if (err || (err = open_db(copy, SQLITE_OPEN_READWRITE, &db, why, whylen)) != 0)
        return err;
    /* The change sets' versions mean nothing in another database. */
    sqlite3_exec(db, "DELETE FROM resplice_rowver", NULL, NULL, NULL);
    sqlite3_close(db);
    return 0;
}

int front_sqlite_install(const char *path, const char *snapshot, char *why, size_t whylen)
{
    sqlite3 *dst = NULL, *src = NULL;
    sqlite3_backup *b;
    int err, rc;

    if ((err = open_db(snapshot, SQLITE_OPEN_READONLY, &src, why, whylen)) != 0)
        return err;
    if ((err = open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &dst, why, whylen)) != 0) {
        sqlite3_close(src);
        return err;
    }
    /* One step copies every page in one write transaction of 'dst' (its
     * busy handler waits for a writer); readers see the old database or
     * the new one. */
    if (!(b = sqlite3_backup_init(dst, "main", src, "main"))) {
        snprintf(why, whylen, "install %s: %s", path, sqlite3_errmsg(dst));
        err = -EIO;
    } else {
        rc = sqlite3_backup_step(b, -1);
        if (sqlite3_backup_finish(b) != SQLITE_OK || rc != SQLITE_DONE) {
            snprintf(why, whylen, "install %s: %s", path, sqlite3_errmsg(dst));
            err = -EIO;
        }
    }
    sqlite3_close(src);
    sqlite3_close(dst);
    return err;
}
