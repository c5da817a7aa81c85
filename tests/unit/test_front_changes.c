/* Unit tests for front/changes.c: a change set runs on an sqlite database
 * in one transaction (all of it or, on any error, none of it), a NUL byte
 * is refused, the two kinds of state are told apart, a snapshot goes into
 * the database in place, and the export's copy is the database without
 * the change tracking's tables. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <sqlite3.h>

#include "front.h"

struct fx {
    char dir[64], db[96], copy[96];
};

static void sql(const char *path, const char *text)
{
    sqlite3 *db;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, text, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static int count(const char *path, const char *query)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    int n = -1;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, query, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    strcpy(f->dir, "/tmp/rs-test-changes-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof(f->db), "%s/a.db", f->dir);
    snprintf(f->copy, sizeof(f->copy), "%s/copy.db", f->dir);
    sql(f->db, "CREATE TABLE session (sess_id TEXT PRIMARY KEY, vars TEXT);"
               "INSERT INTO session VALUES ('old', 'x');");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    static const char *const left[] = { "a.db-wal", "a.db-shm", "snap.db" };     /* by a test that failed */
    char path[128];

    front_changes_close();
    unlink(f->db);
    unlink(f->copy);
    for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", f->dir, left[i]);
        unlink(path);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void test_kinds(void **state)
{
    static const char changes[] = FRONT_CHANGES_MAGIC "seq=1\n";
    static const char db[16] = "SQLite format 3";

    (void)state;
    assert_true(front_is_changes(changes, strlen(changes)));
    assert_false(front_is_changes(changes, 5));
    assert_false(front_is_changes("RSF1....", 8));
    assert_true(front_is_sqlite(db, sizeof(db)));
    assert_false(front_is_sqlite(db, sizeof(db) - 1));
    assert_false(front_is_sqlite(changes, strlen(changes)));
}

static void test_apply_all(void **state)
{
    struct fx *f = *state;
    static const char set[] = FRONT_CHANGES_MAGIC "seq=7\n"
        "INSERT OR REPLACE INTO session VALUES ('abc', 'y');\n"
        "DELETE FROM session WHERE sess_id = 'old';\n";
    char why[128] = "";

    assert_int_equal(front_changes_apply(f->db, set, strlen(set), why, sizeof(why)), 0);
    assert_int_equal(count(f->db, "SELECT count(*) FROM session WHERE sess_id = 'abc' AND vars = 'y'"), 1);
    assert_int_equal(count(f->db, "SELECT count(*) FROM session"), 1);
}

static void test_apply_none_on_error(void **state)
{
    struct fx *f = *state;
    static const char set[] = FRONT_CHANGES_MAGIC "seq=8\n"
        "INSERT OR REPLACE INTO session VALUES ('abc', 'y');\n"
        "INSERT INTO no_such_table VALUES (1);\n";
    char why[128] = "";

    assert_int_equal(front_changes_apply(f->db, set, strlen(set), why, sizeof(why)), -EIO);
    assert_non_null(strstr(why, "no_such_table"));
    assert_int_equal(count(f->db, "SELECT count(*) FROM session WHERE sess_id = 'abc'"), 0);
    assert_int_equal(count(f->db, "SELECT count(*) FROM session"), 1);
}

static void test_refuses_nul_and_missing_db(void **state)
{
    struct fx *f = *state;
    static const char set[] = FRONT_CHANGES_MAGIC "seq=9\nDELETE FROM session;\0DROP TABLE session;";
    char why[128] = "", missing[128];

    assert_int_equal(front_changes_apply(f->db, set, sizeof(set) - 1, why, sizeof(why)), -EINVAL);
    assert_int_equal(count(f->db, "SELECT count(*) FROM session"), 1);
    snprintf(missing, sizeof(missing), "%s/none.db", f->dir);
    assert_int_equal(front_changes_apply(missing, set, 10, why, sizeof(why)), -EIO);
    assert_int_equal(access(missing, F_OK), -1);        /* not created */
}

/* The connection kept between change sets follows the path: a snapshot
 * installed by rename in between gets the next change set. */
static void test_apply_after_rename(void **state)
{
    struct fx *f = *state;
    static const char one[] = FRONT_CHANGES_MAGIC "seq=10\nINSERT OR REPLACE INTO session VALUES ('one', 'y');\n";
    static const char two[] = FRONT_CHANGES_MAGIC "seq=11\nINSERT OR REPLACE INTO session VALUES ('two', 'y');\n";
    char why[128] = "", snap[128];

    assert_int_equal(front_changes_apply(f->db, one, strlen(one), why, sizeof(why)), 0);
    snprintf(snap, sizeof(snap), "%s/snap.db", f->dir);
    sql(snap, "CREATE TABLE session (sess_id TEXT PRIMARY KEY, vars TEXT);");
    assert_int_equal(rename(snap, f->db), 0);
    assert_int_equal(front_changes_apply(f->db, two, strlen(two), why, sizeof(why)), 0);
    assert_int_equal(count(f->db, "SELECT count(*) FROM session"), 1);
    assert_int_equal(count(f->db, "SELECT count(*) FROM session WHERE sess_id = 'two'"), 1);
}

/* A snapshot goes into the database in place: a connection that stays
 * open on it (php's, with db_persistent) reads the snapshot's rows, and
 * the change set after it runs on them.  Something that is no database
 * leaves the database as it was. */
static void test_install_in_place(void **state)
{
    struct fx *f = *state;
    static const char two[] = FRONT_CHANGES_MAGIC "seq=11\nINSERT OR REPLACE INTO session VALUES ('two', 'y');\n";
    char why[128] = "", snap[128];
    sqlite3 *php;
    sqlite3_stmt *st;
    FILE *junk;

    sql(f->db, "PRAGMA journal_mode = WAL");
    assert_int_equal(front_changes_apply(f->db, two, strlen(two), why, sizeof(why)), 0);
    assert_int_equal(sqlite3_open(f->db, &php), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(php, "SELECT group_concat(sess_id) FROM session", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "old,two");
    sqlite3_reset(st);

    snprintf(snap, sizeof(snap), "%s/snap.db", f->dir);
    sql(snap, "CREATE TABLE session (sess_id TEXT PRIMARY KEY, vars TEXT);"
              "INSERT INTO session VALUES ('snap', 'z');");
    assert_int_equal(front_sqlite_install(f->db, snap, why, sizeof(why)), 0);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "snap");
    sqlite3_reset(st);
    assert_int_equal(front_changes_apply(f->db, two, strlen(two), why, sizeof(why)), 0);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "snap,two");
    sqlite3_reset(st);

    assert_non_null(junk = fopen(snap, "w"));
    fputs("not a database, but long enough to look at its header", junk);
    fclose(junk);
    assert_int_equal(front_sqlite_install(f->db, snap, why, sizeof(why)), -EIO);
    assert_non_null(strstr(why, "install"));
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "snap,two");
    sqlite3_finalize(st);
    sqlite3_close(php);
    unlink(snap);
}

static void test_copy_without_tracking(void **state)
{
    struct fx *f = *state;
    char why[128] = "";

    sql(f->db, "CREATE TABLE resplice_rowver (tbl, k, seq, PRIMARY KEY (tbl, k));"
               "INSERT INTO resplice_rowver VALUES ('session', 'x', 5);");
    assert_int_equal(front_sqlite_copy(f->db, f->copy, why, sizeof(why)), 0);
    assert_int_equal(count(f->copy, "SELECT count(*) FROM session"), 1);
    assert_int_equal(count(f->copy, "SELECT count(*) FROM resplice_rowver"), 0);
    assert_int_equal(count(f->db, "SELECT count(*) FROM resplice_rowver"), 1);     /* the original untouched */
    /* And a database without it copies too. */
    sql(f->db, "DROP TABLE resplice_rowver;");
    assert_int_equal(front_sqlite_copy(f->db, f->copy, why, sizeof(why)), 0);
    assert_int_equal(count(f->copy, "SELECT count(*) FROM session"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kinds),
        cmocka_unit_test_setup_teardown(test_apply_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_after_rename, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_none_on_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_nul_and_missing_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_without_tracking, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
