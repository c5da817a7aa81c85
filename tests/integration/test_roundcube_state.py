"""Roundcube's state by changes (issue 17): the rows a request's database
connection writes, noted by the resplice plugin's tracker
(roundcube/plugins/resplice/resplice_db.php: temporary triggers made
before each write), become a change set that, run on a copy of the
database (as rs-front runs them: in one transaction), leaves it equal to
the primary's, whatever order the change sets arrive in; a deleted row
goes, and so do the rows a foreign key's cascade deletes with it; an older
change set never undoes a newer one; another connection's writes are not
this one's; the schema gets no trigger; the whole snapshot carries none of
the tracking's tables.  Roundcube's own database layer is checked to pass
every query through the tracker (the driver, db_dsnw "sqlite_resplice:").
rs-front's own apply and export of an sqlite --apply-file are checked in
tests/unit/test_front_changes.c and, end to end, by the Roundcube failover
tests."""
import json
import os
import sqlite3
import subprocess
import tempfile
import unittest

from roundcube.deploy import RC_INSTALL, init_db

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "roundcube", "plugins", "resplice", "resplice.php")
SKIP = ["cache", "cache_shared", "cache_index", "cache_thread", "cache_messages"]

# One request's connection, as Roundcube's (errors silent, numbers as
# strings): each statement of argv[3] (JSON) noted, then run; its change
# set printed (or "failed: why").  argv[4], when given: statements another
# connection runs meanwhile, between the first and the rest.
REQUEST = r"""<?php
class rcube_plugin {}
require $argv[1];
$open = function () use ($argv) {
    $pdo = new PDO('sqlite:' . $argv[2]);
    $pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_SILENT);
    $pdo->setAttribute(PDO::ATTR_STRINGIFY_FETCHES, 1);
    $pdo->query('PRAGMA journal_mode = WAL');
    $pdo->query('PRAGMA foreign_keys = ON');
    return $pdo;
};
$run = function (PDO $pdo, $sql) {
    resplice_tracker::before($pdo, $sql);
    if ($pdo->exec($sql) === false) {
        fwrite(STDERR, "$sql: " . $pdo->errorInfo()[2] . "\n");
        exit(2);
    }
};
resplice_tracker::$cache_dir = dirname($argv[2]);
$own = $open();
$sqls = json_decode($argv[3], true);
$run($own, array_shift($sqls));
if (isset($argv[4])) {
    $other = $open();
    foreach (json_decode($argv[4], true) as $sql) {
        $run($other, $sql);
    }
}
foreach ($sqls as $sql) {
    $run($own, $sql);
}
try {
    list($seq, $text) = resplice::changes_text($own);
    echo $text;
}
catch (Exception $e) {
    echo 'failed: ', $e->getMessage();
}
if ($own->getAttribute(PDO::ATTR_ERRMODE) !== PDO::ERRMODE_SILENT) {
    fwrite(STDERR, "the connection's error mode was not given back\n");
    exit(3);
}
"""

SNAPSHOT = r"""<?php
class rcube_plugin {}
require $argv[1];
echo resplice::snapshot($argv[2], $argv[3], json_decode($argv[4], true));
"""


def rows(path, table):
    with sqlite3.connect(path) as db:
        return sorted(db.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)


class ChangeSets(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-rcstate-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name
        self.primary, self.alternate = os.path.join(self.dir, "p.db"), os.path.join(self.dir, "a.db")
        init_db(self.primary)
        init_db(self.alternate)
        self.n = 0

    def php(self, script, *args):
        path = os.path.join(self.dir, "script.php")
        with open(path, "w") as f:
            f.write(script)
        r = subprocess.run(["php", path, PLUGIN] + list(args), capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def request(self, *sql, meanwhile=None):
        """One request's writes on one connection: its change set (text)."""
        args = [self.primary, json.dumps(list(sql))] + ([json.dumps(meanwhile)] if meanwhile else [])
        return self.php(REQUEST, *args)

    def write(self, *sql):
        with sqlite3.connect(self.primary) as db:
            for q in sql:
                db.execute(q)

    def apply(self, text):
        self.assertTrue(text.startswith("-- resplice changes seq="), text[:200])
        db = sqlite3.connect(self.alternate, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executescript(text)      # commits what BEGIN opened
        finally:
            db.close()

    def assert_same(self, *tables):
        for t in tables:
            self.assertEqual(rows(self.alternate, t), rows(self.primary, t), t)

    def test_login_session_and_contacts(self):
        s1 = self.request(
            "INSERT INTO users (username, mail_host, created, language, preferences) "
            "VALUES ('alice', 'localhost', '2026-12-05 10:00:00', 'en_US', 'a:0:{}')",
            "INSERT INTO session (sess_id, changed, ip, vars) VALUES ('abc', '2026-12-05 10:00:00', '10.0.1.1', "
            "'language|s:5:\"en_US\";')")
        s2 = self.request(
            "UPDATE session SET vars = 'x''y|quote\"d', changed = '2026-12-05 10:00:01' WHERE sess_id = 'abc'",
            "INSERT INTO contacts (changed, del, name, email, words, user_id) "
            "VALUES ('2026-12-05 10:00:01', 0, 'Bob', 'bob@example.org', 'bob', 1)",
            "INSERT INTO dictionary (user_id, language, data) VALUES (1, 'en', 'resplice')")
        self.assertNotIn("cache", s2)
        self.assertIn("rowid=", s2, "dictionary has no primary key: keyed by rowid")
        for s in (s1, s2):
            self.apply(s)
        self.assert_same("users", "session", "contacts", "dictionary")
        # A deleted row goes.
        self.apply(self.request("DELETE FROM contacts WHERE name = 'Bob'"))
        self.assert_same("contacts")
        self.assertEqual(rows(self.alternate, "contacts"), [])

    def test_newest_image_wins_in_any_order(self):
        s0 = self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'one')")
        s1 = self.request("UPDATE session SET vars = 'two' WHERE sess_id = 's'")
        s2 = self.request("UPDATE session SET vars = 'three' WHERE sess_id = 's'")
        self.apply(s2)
        self.apply(s0)      # older: it must not undo 'three'
        self.apply(s1)
        self.assertEqual(rows(self.alternate, "session"), [("s", "2026-12-05", "", "three")])
        self.assert_same("session")

    def test_a_cascade_deletes_with_its_row(self):
        """Deleting a user deletes its identities (ON DELETE CASCADE):
        those rows are in the change set too."""
        self.apply(self.request(
            "INSERT INTO users (user_id, username, mail_host, created, language, preferences) "
            "VALUES (7, 'bob', 'localhost', '2026-12-05', 'en_US', '')",
            "INSERT INTO identities (user_id, changed, del, standard, name, email) "
            "VALUES (7, '2026-12-05', 0, 1, 'Bob', 'bob@example.org')"))
        self.assertEqual(len(rows(self.alternate, "identities")), 1)
        text = self.request("DELETE FROM users WHERE user_id = 7")
        self.assertIn('DELETE FROM "identities"', text)
        self.apply(text)
        self.assert_same("users", "identities")
        self.assertEqual(rows(self.alternate, "identities"), [])

    def test_a_referenced_key_changed_is_no_change_set(self):
        """An update of a key other rows reference would cascade to them;
        instead of tracking every referencing table at each update, the
        change set fails (the plugin then sends a whole snapshot)."""
        self.request("INSERT INTO users (user_id, username, mail_host, created, language, preferences) "
                     "VALUES (7, 'bob', 'localhost', '2026-12-05', 'en_US', '')")
        text = self.request("UPDATE users SET preferences = 'x' WHERE user_id = 7")
        self.assertIn('INSERT OR REPLACE INTO "users"', text, "an ordinary update of the users row")
        text = self.request("UPDATE users SET user_id = 8 WHERE user_id = 7")
        self.assertTrue(text.startswith("failed: a key of users that other rows reference changed"), text)

    def test_cache_untracked_and_snapshot_without_tracking_tables(self):
        self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'v')",
                     "INSERT INTO users (user_id, username, mail_host, created, language, preferences) "
                     "VALUES (1, 'alice', 'localhost', '2026-12-05', 'en_US', '')")
        text = self.request("INSERT INTO cache (user_id, cache_key, expires, data) VALUES (1, 'k', NULL, 'big')")
        self.assertNotIn("INSERT OR REPLACE", text, "a cache write is no state")
        # A database that was an alternate's before (a failover) has the
        # change sets' versions: they mean nothing in another one.
        self.write("CREATE TABLE resplice_rowver (tbl TEXT NOT NULL, k TEXT NOT NULL, seq INTEGER NOT NULL,"
                   " PRIMARY KEY (tbl, k))", "INSERT INTO resplice_rowver VALUES ('session', 'x', 1)")
        snap = os.path.join(self.dir, "snap.db")
        self.php(SNAPSHOT, self.primary, snap, json.dumps(SKIP))
        self.assertEqual(rows(snap, "resplice_rowver"), [])
        self.assertEqual(rows(snap, "cache"), [])
        self.assertEqual(rows(snap, "session"), rows(self.primary, "session"))

    def test_nothing_in_the_schema(self):
        """The triggers are temporary: nothing in the database's schema
        (every new connection would read it) but the table of foreign keys
        kept, resplice_meta."""
        self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'v')",
                     "DELETE FROM users WHERE user_id = 1")
        with sqlite3.connect(self.primary) as db:
            self.assertEqual(db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0], 0)
            self.assertEqual([r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'resplice%'")],
                             ["resplice_meta"])

    def test_only_its_own_rows(self):
        """Four users at once (the campaign's roundcube-action2x4): a
        request's change set held the rows that requests running at the
        same time on other connections wrote.  One whose backend then died
        had its writes on the alternate before its re-run there (a login
        re-run found its session gone: 401)."""
        text = self.request(
            "INSERT INTO session (sess_id, changed, ip, vars) VALUES ('own', '2026-12-07', '', 'a')",
            "UPDATE session SET vars = 'a2' WHERE sess_id = 'own'",
            meanwhile=["INSERT INTO session (sess_id, changed, ip, vars) VALUES ('theirs', '2026-12-07', '', 'b')"])
        self.assertIn("'own'", text)
        self.assertNotIn("'theirs'", text)

    def test_the_schemas_facts_kept_per_version(self):
        """Each table's key and the foreign keys are read once per version
        of the schema and kept in a file: a table made later is read then,
        and tracked by its own key."""
        # (The first change set makes resplice_meta: a new version.)
        self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'v')")
        kept = lambda: sorted(f for f in os.listdir(self.dir) if f.startswith("resplice-schema-"))
        self.request("UPDATE session SET vars = 'w' WHERE sess_id = 's'")
        first = kept()
        with open(os.path.join(self.dir, first[-1])) as f:
            self.assertEqual(json.load(f)["tables"]["session"][1], ["sess_id"])
        self.request("UPDATE session SET vars = 'x' WHERE sess_id = 's'")
        self.assertEqual(kept(), first, "read again at an unchanged schema")
        for db in (self.primary, self.alternate):
            with sqlite3.connect(db) as c:
                c.execute("CREATE TABLE later (name TEXT PRIMARY KEY, v TEXT)")
        text = self.request("INSERT INTO later (name, v) VALUES ('n', 'x')")
        self.assertEqual(len(kept()), len(first) + 1, kept())
        self.assertIn("'\"name\"=''n'''", text, "keyed by its primary key, not rowid")
        self.apply(text)
        self.assert_same("later")
        # One made by the request itself, after its first write.
        text = self.request("UPDATE later SET v = 'y' WHERE name = 'n'",
                            "CREATE TABLE sooner (id INTEGER PRIMARY KEY, v TEXT)",
                            "INSERT INTO sooner (id, v) VALUES (5, 'z')")
        self.assertIn("'\"id\"=5'", text)

    def test_a_request_without_writes_changes_nothing(self):
        self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'v')")
        text = self.request("SELECT * FROM session")
        self.assertNotIn("INSERT", text)
        self.assertNotIn("DELETE", text)


# Roundcube's database layer, with the driver: every query it runs goes
# through the tracker (rcube_db::query_execute).
THROUGH_ROUNDCUBE = r"""<?php
define('INSTALL_PATH', $argv[1] . '/');
define('RCUBE_INSTALL_PATH', INSTALL_PATH);
require INSTALL_PATH . 'program/lib/Roundcube/bootstrap.php';
require $argv[2];
class rcube_plugin {}
require $argv[3];
$rc = rcube::get_instance();
$rc->config->set('db_dsnw', 'sqlite_resplice:///' . $argv[4]);
$rc->config->set('temp_dir', dirname($argv[4]));
$db = $rc->get_dbh();
echo get_class($db), "\n";
$db->query("INSERT INTO session (sess_id, changed, ip, vars) VALUES (?, datetime('now'), '', ?)", 'rc', 'v1');
$db->query("UPDATE session SET vars = ? WHERE sess_id = ?", 'v2', 'rc');
$db->db_connect('w');
$pdo = (function () { return $this->dbh; })->call($db);
list($seq, $text) = resplice::changes_text($pdo);
echo $text;
"""


class ThroughRoundcubesDriver(unittest.TestCase):
    def test_roundcubes_queries_are_noted(self):
        with tempfile.TemporaryDirectory(prefix="rs-rcstate-") as d:
            db, script = os.path.join(d, "p.db"), os.path.join(d, "rc.php")
            init_db(db)
            with open(script, "w") as f:
                f.write(THROUGH_ROUNDCUBE)
            driver = os.path.join(os.path.dirname(PLUGIN), "resplice_db.php")
            r = subprocess.run(["php", script, RC_INSTALL, driver, PLUGIN, db], capture_output=True, text=True,
                               timeout=30, env={**os.environ, "ROUNDCUBE_CONFIG_DIR": d})
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertTrue(r.stdout.startswith("rcube_db_sqlite_resplice\n"), r.stdout[:300])
            self.assertIn("'rc'", r.stdout)
            self.assertIn("'v2'", r.stdout)


if __name__ == "__main__":
    unittest.main()
