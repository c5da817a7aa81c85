"""Roundcube's state by changes (issue 17): the resplice plugin's change
sets, made by php from a database Roundcube's schema made, run on a copy
of that database (as rs-front runs them: in one transaction), leave it
equal to the primary's, whatever order the change sets arrive in; a
deleted row goes; an older change set never undoes a newer one; the whole
snapshot carries none of the tracking's tables.  rs-front's own apply and
export of an sqlite --apply-file are checked in tests/unit/test_front_changes.c
and, end to end, by the Roundcube failover tests."""
import json
import os
import sqlite3
import subprocess
import tempfile
import unittest

from roundcube.deploy import init_db

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "roundcube", "plugins", "resplice", "resplice.php")
SKIP = ["cache", "cache_shared", "cache_index", "cache_thread", "cache_messages"]

# The plugin's static functions, outside Roundcube: a stand-in base class.
HARNESS = r"""<?php
class rcube_plugin {}
require $argv[1];
$db = $argv[2];
$skip = json_decode($argv[4], true);
if (getenv('RS_PDO') === '1') {
    // A connection as Roundcube's own (rcube_db): silent, numbers as strings.
    $pdo = new PDO('sqlite:' . $db);
    $pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_SILENT);
    $pdo->setAttribute(PDO::ATTR_STRINGIFY_FETCHES, 1);
    $db = $pdo;
}
switch ($argv[3]) {
case 'track':
    echo resplice::track_changes($db, $skip);
    break;
case 'changes':
    echo resplice::changes($db, $argv[5], (int) $argv[6]);
    break;
case 'snapshot':
    echo resplice::snapshot($argv[2], $argv[5], $skip);   // a path, always
    break;
}
if (isset($pdo) && $pdo->getAttribute(PDO::ATTR_ERRMODE) !== PDO::ERRMODE_SILENT) {
    fwrite(STDERR, "the borrowed connection's error mode was not given back\n");
    exit(3);
}
"""


def rows(path, table):
    with sqlite3.connect(path) as db:
        return sorted(db.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)


class ChangeSets(unittest.TestCase):
    env = {}

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-rcstate-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name
        self.harness = os.path.join(self.dir, "harness.php")
        with open(self.harness, "w") as f:
            f.write(HARNESS)
        self.primary, self.alternate = os.path.join(self.dir, "p.db"), os.path.join(self.dir, "a.db")
        init_db(self.primary)
        init_db(self.alternate)
        self.n = 0

    def php(self, *args):
        r = subprocess.run(["php", self.harness, PLUGIN, self.primary, args[0], json.dumps(SKIP)] + list(args[1:]),
                           capture_output=True, text=True, timeout=30, env={**os.environ, **self.env})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def write(self, *sql):
        with sqlite3.connect(self.primary) as db:
            for s in sql:
                db.execute(s)

    def request(self, *sql):
        """One request: its start, its writes, its change set (path, seq)."""
        start = int(self.php("track"))
        self.write(*sql)
        self.n += 1
        path = os.path.join(self.dir, f"state-{self.n}.sql")
        seq = int(self.php("changes", path, str(start)))
        with open(path) as f:
            text = f.read()
        self.assertTrue(text.startswith(f"-- resplice changes seq={seq}\n"), text[:200])
        return path, seq

    def apply(self, path):
        with open(path) as f:
            text = f.read()
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
        s1, _ = self.request(
            "INSERT INTO users (username, mail_host, created, language, preferences) "
            "VALUES ('alice', 'localhost', '2026-12-05 10:00:00', 'en_US', 'a:0:{}')",
            "INSERT INTO session (sess_id, changed, ip, vars) VALUES ('abc', '2026-12-05 10:00:00', '10.0.1.1', "
            "'language|s:5:\"en_US\";')")
        s2, _ = self.request(
            "UPDATE session SET vars = 'x''y|quote\"d', changed = '2026-12-05 10:00:01' WHERE sess_id = 'abc'",
            "INSERT INTO contacts (changed, del, name, email, words, user_id) "
            "VALUES ('2026-12-05 10:00:01', 0, 'Bob', 'bob@example.org', 'bob', 1)",
            "INSERT INTO dictionary (user_id, language, data) VALUES (1, 'en', 'resplice')")
        with open(s2) as f:
            text = f.read()
        self.assertNotIn("cache", text)
        self.assertIn("rowid=", text, "dictionary has no primary key: keyed by rowid")
        for s in (s1, s2):
            self.apply(s)
        self.assert_same("users", "session", "contacts", "dictionary")
        # A deleted row goes.
        s3, _ = self.request("DELETE FROM contacts WHERE name = 'Bob'")
        self.apply(s3)
        self.assert_same("contacts")
        self.assertEqual(rows(self.alternate, "contacts"), [])

    def test_newest_image_wins_in_any_order(self):
        s0, _ = self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'one')")
        s1, q1 = self.request("UPDATE session SET vars = 'two' WHERE sess_id = 's'")
        s2, q2 = self.request("UPDATE session SET vars = 'three' WHERE sess_id = 's'")
        self.assertLess(q1, q2)
        self.apply(s2)
        self.apply(s0)      # older: it must not undo 'three'
        self.apply(s1)
        self.assertEqual(rows(self.alternate, "session"), [("s", "2026-12-05", "", "three")])
        self.assert_same("session")

    def test_cache_untracked_and_snapshot_without_tracking_tables(self):
        self.request("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('s', '2026-12-05', '', 'v')")
        start = int(self.php("track"))
        self.write("INSERT INTO cache (user_id, cache_key, expires, data) VALUES (1, 'k', NULL, 'big')")
        path = os.path.join(self.dir, "cache.sql")
        self.php("changes", path, str(start))
        with open(path) as f:
            self.assertNotIn("INSERT OR REPLACE", f.read(), "a cache write is no state")
        snap = os.path.join(self.dir, "snap.db")
        self.php("snapshot", snap)
        self.assertEqual(rows(snap, "resplice_changes"), [])
        self.assertEqual(rows(snap, "session"), rows(self.primary, "session"))

    def test_triggers_made_once(self):
        self.php("track")
        with sqlite3.connect(self.primary) as db:
            n = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
        self.php("track")
        with sqlite3.connect(self.primary) as db:
            self.assertEqual(db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0], n)
        tables = 17 - len(SKIP)     # Roundcube's schema: 17 tables
        self.assertEqual(n, 3 * tables)


# Two requests at once on two connections: the first's change set, taken
# on its own connection ('mine'), must hold its own row only.
TWO_AT_ONCE = r"""<?php
class rcube_plugin {}
require $argv[1];
$skip = json_decode($argv[3], true);
$open = function () use ($argv) {
    $pdo = new PDO('sqlite:' . $argv[2]);
    $pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_SILENT);
    $pdo->query('PRAGMA journal_mode = WAL');
    return $pdo;
};
$mine = $argv[4] === 'mine';
$a = $open();
$b = $open();
$from = resplice::track_changes($a, $skip, $mine);
resplice::track_changes($b, $skip, $mine);
$b->exec("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('theirs', '2026-12-07', '', 'b')");
$a->exec("INSERT INTO session (sess_id, changed, ip, vars) VALUES ('own', '2026-12-07', '', 'a')");
list($seq, $text) = resplice::changes_text($a, $from, $mine);
echo $text;
"""


class ChangeSetsOfOneConnection(unittest.TestCase):
    """Four users at once (the campaign's roundcube-action2x4): a
    request's change set held the rows that requests running at the same
    time on other connections wrote.  One whose backend then died had its
    writes on the alternate before its re-run there (a login re-run found
    its session gone: 401)."""

    def change_set(self, how):
        with tempfile.TemporaryDirectory(prefix="rs-rcstate-") as d:
            db, script = os.path.join(d, "p.db"), os.path.join(d, "two.php")
            init_db(db)
            with open(script, "w") as f:
                f.write(TWO_AT_ONCE)
            r = subprocess.run(["php", script, PLUGIN, db, json.dumps(SKIP), how], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            return r.stdout

    def test_only_its_own_rows(self):
        text = self.change_set("mine")
        self.assertIn("'own'", text)
        self.assertNotIn("'theirs'", text)

    def test_every_row_since_without_mine(self):
        """The paths' way (a connection of its own): every note since."""
        text = self.change_set("since")
        self.assertIn("'own'", text)
        self.assertIn("'theirs'", text)


class ChangeSetsOnRoundcubesConnection(ChangeSets):
    """The same through a connection as Roundcube's own, which the plugin
    borrows in Roundcube (errors silent, numbers as strings): the error
    mode is given back.  (The snapshot opens its own.)"""
    env = {"RS_PDO": "1"}


if __name__ == "__main__":
    unittest.main()
