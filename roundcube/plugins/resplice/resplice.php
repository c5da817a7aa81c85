<?php

/**
 * resplice: hands each request's application state to the resplice front
 * (rs-front) in front of lighttpd, so the alternate backend can
 * take over a client's connection.
 *
 * The front numbers the client's requests and sends X-Resplice-Txn with
 * each one.  For every PHP request that came through it (all of them update
 * the session row), this plugin holds the output, and once Roundcube has
 * written the session at shutdown it answers the request's state, in the
 * head when it is small, else in a file in the front's --state-dir:
 *   X-Resplice-State-Data: <base64> (up to INLINE_MAX bytes) or
 *   X-Resplice-State: <that file>   (the front reads, sends and deletes it)
 *   X-Resplice-Sync: 1              for non-deterministic requests (a new
 *                                   session id, token or compose id): the
 *                                   front holds the response until the
 *                                   alternate has the state.
 * The state is, by default, what the request changed ("changes"): triggers
 * (made once per database) note the key of every row any writer inserts,
 * updates or deletes, in resplice_changes; at shutdown the rows the
 * request's own connection noted (self::mine) are written as SQL that
 * sets each row to its image now (or deletes it), stamped with a sequence
 * number taken under the write lock (hrtime), so that on the alternate the
 * newest image of a row wins whatever order states arrive in
 * (resplice_rowver keeps each row's).  A few KB instead of the whole database.  With
 * resplice_state = 'snapshot', or when the changes cannot be read, the
 * state is a copy of the whole database (VACUUM INTO, without the caches).
 * On the alternate, the front (rs-front --apply-file DB) runs the changes
 * in one transaction, or installs a snapshot over the database, the newest
 * (X-Resplice-State-Seq) winning.
 *
 * It also names the transaction in the request's mail conversations, for
 * the auxiliary logger (rs-auxlog) between the backends and the mail store:
 * IMAP: "x-resplice-txn" in the ID sent before login (preauth_ident);
 * SMTP: the EHLO host "x-resplice-txn-A-B-C-D-PORT-N.<smtp_helo_host>".
 * When the front says the request is a re-run after a failover
 * (X-Resplice-Rerun: 1), "rerun" replaces "txn" in both: only those
 * conversations may be answered from another backend's record.  With
 * rs-auxlog --tap (the mail store reached at its own address, recorded on
 * the way), a re-run must come to rs-auxlog's relay instead, which answers
 * from the record: resplice_auxlog_host names it.
 *
 * Config (Roundcube's config.inc.php or this folder's config.inc.php; see
 * config.inc.php.dist):
 *   resplice_state_dir    the front's --state-dir (default: the system temp dir)
 *   resplice_db_path      the sqlite file (default: from db_dsnw)
 *   resplice_sync_actions actions answered synchronously besides any response
 *                         that sets a cookie (default login, logout, compose, send)
 *   resplice_skip_tables  tables emptied in the snapshot and not tracked (default: the caches)
 *   resplice_state        'changes' (default) or 'snapshot'
 *   resplice_state_inline_max  a change set up to this many bytes goes in the
 *                         head (default and at most INLINE_MAX; 0: always a file)
 *   resplice_auxlog_host  rs-auxlog's relay, for re-runs, when its tap records
 *                         the first runs (default: none, every conversation
 *                         goes to imap_host / smtp_host)
 */
class resplice extends rcube_plugin
{
    /** Request header the front adds: "a.b.c.d:port#n". */
    const TXN_HEADER = 'HTTP_X_RESPLICE_TXN';
    /* ... and X-Resplice-Rerun: 1 when it may have run elsewhere already. */
    const RERUN_HEADER = 'HTTP_X_RESPLICE_RERUN';

    private $txn;
    private $marker;            /* 'x-resplice-txn' or 'x-resplice-rerun' */
    private $state_dir;
    private $db_path;
    private $changes_from;      /* resplice_changes' last id when the request began; null: snapshot */
    private $db;                /* Roundcube's own connection to db_path (PDO), or db_path */

    /* The state file of a change set starts with this (rs-front tells the kinds apart by it). */
    const CHANGES_MAGIC = '-- resplice changes';
    /* Bumped when the triggers change: each database gets them anew. */
    const TRIGGERS_VERSION = '1';
    /* A change set up to this many bytes goes in the response's head
     * (X-Resplice-State-Data, base64: 8 KB of the front's 16 KB head);
     * a larger one, or a snapshot, in a file (X-Resplice-State). */
    const INLINE_MAX = 6144;
    /* Noted changes older than this many seconds are pruned (no request runs that long). */
    const CHANGES_KEEP_S = 600;
    /* How long the change set begins again for the write lock. */
    const BUSY_WAIT_S = 0.5;

    public function init()
    {
        $txn = isset($_SERVER[self::TXN_HEADER]) ? $_SERVER[self::TXN_HEADER] : '';

        // Not through a front (direct access, CLI): nothing to replicate.
        if (!preg_match('/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}#\d{1,5}$/', $txn)) {
            return;
        }

        $this->load_config();   // plugins/resplice/config.inc.php, when present
        $rcmail = rcube::get_instance();
        $this->txn = $txn;
        $this->marker = isset($_SERVER[self::RERUN_HEADER]) && $_SERVER[self::RERUN_HEADER] === '1'
            ? 'x-resplice-rerun' : 'x-resplice-txn';
        $this->state_dir = rtrim($rcmail->config->get('resplice_state_dir', sys_get_temp_dir()), '/');
        $this->db_path = $rcmail->config->get('resplice_db_path')
            ?: self::sqlite_path($rcmail->config->get('db_dsnw'));

        if (!$this->db_path) {
            rcube::raise_error("resplice: db_dsnw is not sqlite; set resplice_db_path", true, false);
            return;
        }

        if ($rcmail->config->get('resplice_state', 'changes') === 'changes') {
            $this->db = self::roundcube_pdo($rcmail, $this->db_path) ?: $this->db_path;
            try {
                $this->release_roundcubes_statement();
                $this->changes_from = self::track_changes($this->db, $this->skip_tables(),
                                                          $this->db instanceof PDO);
            }
            catch (Exception $e) {
                rcube::raise_error("resplice: {$this->txn}: cannot track changes (a snapshot instead): "
                    . $e->getMessage(), true, false);
            }
        }

        $this->add_hook('storage_connect', [$this, 'storage_connect']);
        $this->add_hook('smtp_connect', [$this, 'smtp_connect']);

        // The state headers can only be added once the session is written,
        // at the very end: keep the body back until then.
        ob_start();
        // Registered after rcube's own shutdown function, so it runs after
        // the session write.
        register_shutdown_function([$this, 'shutdown']);
    }

    /**
     * IMAP: the transaction goes into the ID command sent before login.
     */
    public function storage_connect($args)
    {
        $ident = isset($args['preauth_ident']) && is_array($args['preauth_ident']) ? $args['preauth_ident'] : [];
        $ident['name'] = isset($ident['name']) ? $ident['name'] : 'Roundcube';
        $ident[$this->marker] = $this->txn;
        $args['preauth_ident'] = $ident;
        if ($relay = $this->rerun_relay()) {
            $args['host'] = $relay;
        }

        return $args;
    }

    /**
     * rs-auxlog's relay when this request is a re-run and its tap records
     * the first runs (resplice_auxlog_host), else null.
     */
    private function rerun_relay()
    {
        if ($this->marker !== 'x-resplice-rerun') {
            return null;
        }

        return rcube::get_instance()->config->get('resplice_auxlog_host') ?: null;
    }

    /**
     * SMTP: the transaction becomes the first label of the EHLO host.
     */
    public function smtp_connect($args)
    {
        $helo = !empty($args['smtp_helo_host']) ? $args['smtp_helo_host'] : 'localhost';
        $args['smtp_helo_host'] = $this->marker . '-' . strtr($this->txn, '.:#', '---') . '.' . $helo;
        if (($relay = $this->rerun_relay()) && !empty($args['smtp_host'])) {
            // The host of "[scheme://]host[:port]", the rest kept.
            $args['smtp_host'] = preg_replace('#^((?:[a-z]+://)?)[^:/]+#i', '${1}' . $relay, $args['smtp_host']);
        }

        return $args;
    }

    /**
     * Snapshots the database and adds the X-Resplice-* headers.
     */
    public function shutdown()
    {
        if (headers_sent($file, $line)) {
            // Something flushed the output early (a download): this
            // transaction goes unreplicated, and the front logs nothing for it.
            rcube::raise_error("resplice: {$this->txn}: headers already sent at $file:$line;"
                . " state not replicated", true, false);
            return;
        }

        $seq = $text = $tmp = null;
        if ($this->changes_from !== null) {
            try {
                $this->release_roundcubes_statement();
                list($seq, $text) = self::changes_text($this->db, $this->changes_from, $this->db instanceof PDO);
            }
            catch (Exception $e) {
                rcube::raise_error("resplice: {$this->txn}: changes failed (a snapshot instead): "
                    . $e->getMessage(), true, false);
            }
        }
        // A small change set travels in the response's head; anything else
        // in a file of the front's --state-dir.
        $inline = (int) rcube::get_instance()->config->get('resplice_state_inline_max', self::INLINE_MAX);
        if ($text === null || strlen($text) > min($inline, self::INLINE_MAX)) {
            $tmp = @tempnam($this->state_dir, 'rs-state-');
            if ($tmp === false) {
                rcube::raise_error("resplice: {$this->txn}: cannot create a file in {$this->state_dir}", true, false);
                return;
            }
            try {
                if ($text !== null) {
                    self::write($tmp, $text);
                }
                else {
                    $seq = self::snapshot($this->db_path, $tmp, $this->skip_tables());
                }
            }
            catch (Exception $e) {
                @unlink($tmp);
                rcube::raise_error("resplice: {$this->txn}: state not written: " . $e->getMessage(), true, false);
                return;
            }
        }

        // Roundcube's no-cache headers carry the current time: a re-run on
        // the alternate a second later would differ in those bytes.  The
        // same meaning, without the clock (Cache-Control says no-store).
        foreach (headers_list() as $h) {
            if (stripos($h, 'Expires:') === 0) {
                header('Expires: Thu, 01 Jan 1970 00:00:00 GMT');
            }
        }
        header_remove('Last-Modified');

        if ($tmp !== null) {
            header('X-Resplice-State: ' . $tmp);
        }
        else {
            header('X-Resplice-State-Data: ' . base64_encode($text));
        }
        // Its age: the alternate keeps the newest image of each row.
        header('X-Resplice-State-Seq: ' . $seq);
        if ($this->is_nondeterministic()) {
            header('X-Resplice-Sync: 1');
        }
        // The buffered body follows when PHP flushes its output buffers.
    }

    /**
     * Copies sqlite database 'src' to the empty or absent file 'dst':
     * VACUUM INTO is one read transaction, so the copy is consistent even
     * while other requests write; 'skip' tables are emptied in the copy
     * (caches: rebuilt on demand, and they would blow the 1 MiB state limit).
     * A resplice_meta row records when the copy was taken, so the alternate
     * can ignore a snapshot older than one it already has; returns that
     * sequence number (hrtime).
     */
    public static function snapshot($src, $dst, array $skip = [])
    {
        $opts = [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5];
        $db = new PDO('sqlite:' . $src, null, null, $opts);
        // The change tracking's own tables mean nothing in another database.
        $skip = array_merge($skip, ['resplice_changes', 'resplice_rowver']);
        // The copy is a transient file: no fsync (it costs more than the copy).
        $db->exec('PRAGMA synchronous = OFF');
        $db->exec('VACUUM INTO ' . $db->quote($dst));
        $db = null;

        $copy = new PDO('sqlite:' . $dst, null, null, $opts);
        $copy->exec('PRAGMA journal_mode = OFF');
        $copy->exec('PRAGMA synchronous = OFF');
        $tables = $copy->query("SELECT name FROM sqlite_master WHERE type = 'table'")
            ->fetchAll(PDO::FETCH_COLUMN);
        $emptied = false;
        foreach ($skip as $table) {
            $q = '"' . str_replace('"', '""', $table) . '"';
            if (in_array($table, $tables, true) && $copy->query("SELECT 1 FROM $q LIMIT 1")->fetchColumn()) {
                $copy->exec("DELETE FROM $q");
                $emptied = true;
            }
        }
        $copy->exec('CREATE TABLE IF NOT EXISTS resplice_meta (k TEXT PRIMARY KEY, v TEXT)');
        // hrtime: monotonic on this host; snapshots only come from the primary.
        $seq = (string) hrtime(true);
        $st = $copy->prepare("INSERT OR REPLACE INTO resplice_meta (k, v) VALUES ('seq', ?)");
        $st->execute([$seq]);
        if ($emptied) {
            $copy->exec('VACUUM');
        }
        $copy = null;

        return $seq;
    }

    /**
     * Makes sure every table of 'src' but the 'skip' ones has the triggers
     * that note changed rows in resplice_changes (once per database and
     * TRIGGERS_VERSION), and returns the last note's id: the request's
     * changes are the notes after it.  'src': a PDO or a path (self::using).
     * 'mine' (a PDO: the connection the request writes on): only the notes
     * this connection makes from now on are the request's (self::mine).
     */
    public static function track_changes($src, array $skip, $mine = false)
    {
        return self::using($src, function (PDO $db) use ($skip, $mine) {
            $from = self::track_changes_in($db, $skip);
            if ($mine) {
                self::mine($db);
            }
            return $from;
        });
    }

    /**
     * Notes the ids of the notes connection 'db' makes, in its own
     * temporary table (a temporary trigger fires for its connection's
     * writes only).  With several users at once the notes after a
     * request's start are others' too: a request still running elsewhere,
     * which may never answer (its backend dies), must not have its writes
     * shipped with this one's state (its re-run on the alternate would
     * find them done: a login re-run found its session gone, 401).
     */
    private static function mine(PDO $db)
    {
        $db->exec('CREATE TEMP TABLE IF NOT EXISTS resplice_mine (id INTEGER PRIMARY KEY)');
        $db->exec('DELETE FROM temp.resplice_mine');    // a persistent connection's earlier request
        $db->exec('CREATE TEMP TRIGGER IF NOT EXISTS resplice_mine AFTER INSERT ON main.resplice_changes'
            . ' BEGIN INSERT INTO resplice_mine (id) VALUES (NEW.id); END');
    }

    private static function track_changes_in(PDO $db, array $skip)
    {
        $ver = null;
        try {
            $ver = $db->query("SELECT v FROM resplice_meta WHERE k = 'triggers'")->fetchColumn();
        }
        catch (PDOException $e) {
            if (stripos($e->getMessage(), 'no such table') === false) {
                throw $e;       // not "no resplice_meta yet": the triggers stay as they are
            }
        }
        if ($ver !== self::TRIGGERS_VERSION) {
            self::begin_write($db);
            try {
                $db->exec('CREATE TABLE IF NOT EXISTS resplice_changes (id INTEGER PRIMARY KEY AUTOINCREMENT,'
                    . ' tbl TEXT NOT NULL, k TEXT NOT NULL, at INTEGER NOT NULL)');
                $tables = $db->query("SELECT name FROM sqlite_master WHERE type = 'table'"
                    . " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'resplice_%'")->fetchAll(PDO::FETCH_COLUMN);
                foreach (array_diff($tables, $skip) as $t) {
                    foreach (self::trigger_sql($db, $t) as $sql) {
                        $db->exec($sql);
                    }
                }
                $db->exec("INSERT OR REPLACE INTO resplice_meta (k, v) VALUES ('triggers', "
                    . $db->quote(self::TRIGGERS_VERSION) . ")");
                $db->commit();
            }
            catch (Exception $e) {
                $db->rollBack();
                throw $e;
            }
        }
        return (int) $db->query('SELECT COALESCE(MAX(id), 0) FROM resplice_changes')->fetchColumn();
    }

    /**
     * The statements that (re)make table 't''s three triggers.  A row's
     * key is noted as SQL ("sess_id"='abc' AND ...), built by sqlite's
     * quote(); a table without a primary key is keyed by rowid.
     */
    private static function trigger_sql(PDO $db, $t)
    {
        $pk = [];
        foreach ($db->query('PRAGMA table_info(' . self::ident($t) . ')') as $c) {
            if ($c['pk'] > 0) {
                $pk[$c['pk']] = $c['name'];
            }
        }
        ksort($pk);
        $key = function ($row) use ($pk) {
            if (!$pk) {
                return "'rowid=' || $row.rowid";
            }
            $parts = [];
            foreach ($pk as $c) {
                $parts[] = "'" . str_replace("'", "''", self::ident($c)) . "=' || quote($row." . self::ident($c) . ")";
            }
            return implode(" || ' AND ' || ", $parts);
        };
        $note = function ($row) use ($db, $t, $key) {
            return 'INSERT INTO resplice_changes (tbl, k, at) VALUES (' . $db->quote($t) . ', ' . $key($row)
                . ", CAST(strftime('%s', 'now') AS INTEGER));";
        };
        $name = function ($what) use ($t) {
            return self::ident('resplice_' . $t . '_' . $what);
        };
        $on = self::ident($t);
        return [
            'DROP TRIGGER IF EXISTS ' . $name('ins'), 'DROP TRIGGER IF EXISTS ' . $name('upd'),
            'DROP TRIGGER IF EXISTS ' . $name('del'),
            'CREATE TRIGGER ' . $name('ins') . " AFTER INSERT ON $on BEGIN " . $note('NEW') . ' END',
            'CREATE TRIGGER ' . $name('upd') . " AFTER UPDATE ON $on BEGIN " . $note('OLD') . ' ' . $note('NEW') . ' END',
            'CREATE TRIGGER ' . $name('del') . " AFTER DELETE ON $on BEGIN " . $note('OLD') . ' END',
        ];
    }

    /**
     * Writes to 'dst' the rows of 'src' noted after id 'from' as SQL for
     * the alternate: each row set to its image now (INSERT OR REPLACE) or
     * deleted, only if this state's sequence number is the newest the
     * alternate has seen for that row (resplice_rowver).  The images and
     * the number are taken under the write lock, so a later number never
     * goes with an older image.  Returns the sequence number.  'src': a
     * PDO or a path (self::using).
     */
    public static function changes($src, $dst, $from)
    {
        list($seq, $text) = self::changes_text($src, $from);
        self::write($dst, $text);
        return $seq;
    }

    /**
     * The same, as [the sequence number, the SQL text]; 'mine': only the
     * rows this connection wrote (track_changes' 'mine').
     */
    public static function changes_text($src, $from, $mine = false)
    {
        return self::using($src, function (PDO $db) use ($from, $mine) {
            return self::changes_in($db, $from, $mine);
        });
    }

    private static function write($dst, $text)
    {
        if (file_put_contents($dst, $text) !== strlen($text)) {
            throw new Exception("cannot write $dst");
        }
    }

    private static function changes_in(PDO $db, $from, $mine)
    {
        self::begin_write($db);
        try {
            $seq = (string) hrtime(true);
            $out = self::CHANGES_MAGIC . " seq=$seq\n"
                . "CREATE TABLE IF NOT EXISTS resplice_rowver (tbl TEXT NOT NULL, k TEXT NOT NULL,"
                . " seq INTEGER NOT NULL, PRIMARY KEY (tbl, k));\n";
            $rows = $db->prepare('SELECT tbl, k FROM resplice_changes WHERE id > ?'
                . ($mine ? ' AND id IN (SELECT id FROM temp.resplice_mine)' : '')
                . ' GROUP BY tbl, k ORDER BY MIN(id)');
            $rows->execute([(int) $from]);
            $cols = [];
            foreach ($rows->fetchAll(PDO::FETCH_NUM) as list($t, $k)) {
                if (!isset($cols[$t])) {
                    $cols[$t] = $db->query('PRAGMA table_info(' . self::ident($t) . ')')->fetchAll(PDO::FETCH_COLUMN, 1);
                    if (strpos($k, 'rowid=') === 0) {
                        array_unshift($cols[$t], 'rowid');
                    }
                }
                $names = implode(', ', array_map([self::class, 'ident'], $cols[$t]));
                $quoted = implode(" || ',' || ", array_map(function ($c) {
                    return 'quote(' . self::ident($c) . ')';
                }, $cols[$t]));
                $image = $db->query("SELECT $quoted FROM " . self::ident($t) . " WHERE $k")->fetchColumn();
                $tq = $db->quote($t);
                $kq = $db->quote($k);
                $won = "(SELECT seq FROM resplice_rowver WHERE tbl = $tq AND k = $kq) = $seq";
                $out .= "INSERT INTO resplice_rowver (tbl, k, seq) VALUES ($tq, $kq, $seq) ON CONFLICT (tbl, k)"
                    . " DO UPDATE SET seq = excluded.seq WHERE excluded.seq > resplice_rowver.seq;\n";
                $out .= $image !== false
                    ? 'INSERT OR REPLACE INTO ' . self::ident($t) . " ($names) SELECT $image WHERE $won;\n"
                    : 'DELETE FROM ' . self::ident($t) . " WHERE $k AND $won;\n";
            }
            if (mt_rand(0, 63) === 0) {
                $db->exec("DELETE FROM resplice_changes WHERE at < CAST(strftime('%s', 'now') AS INTEGER) - "
                    . self::CHANGES_KEEP_S);
            }
            $db->commit();
        }
        catch (Exception $e) {
            $db->rollBack();
            throw $e;
        }
        return [$seq, $out];
    }

    /**
     * Begins a write transaction on 'db' with the write lock taken at once,
     * as BEGIN IMMEDIATE, but through PDO, which then knows of it: with
     * Roundcube's db_persistent the connection outlives the request, and
     * PDO rolls back a transaction that a request died in instead of
     * leaving it, and the write lock, to the next request.
     */
    private static function begin_write(PDO $db)
    {
        // In WAL mode (Roundcube's), a transaction that read first cannot
        // take the write lock once another connection has committed since
        // (SQLITE_BUSY_SNAPSHOT, "database is locked", at once): begun
        // again on a new snapshot, for up to BUSY_WAIT_S (only while no
        // statement of the connection holds an older one:
        // release_roundcubes_statement).
        for ($t0 = microtime(true), $pause = 100; ; $pause = min(2 * $pause, 10000)) {
            $db->beginTransaction();
            try {
                $db->exec('CREATE TABLE IF NOT EXISTS resplice_meta (k TEXT PRIMARY KEY, v TEXT)');
                $db->exec('DELETE FROM resplice_meta WHERE 0');     // takes the write lock, changes nothing
                return;
            }
            catch (PDOException $e) {
                $db->rollBack();
                if (stripos($e->getMessage(), 'database is locked') === false
                    || microtime(true) - $t0 > self::BUSY_WAIT_S) {
                    throw $e;
                }
            }
            usleep($pause);
        }
    }

    /**
     * Runs 'fn' on 'src': a PDO (Roundcube's own connection, made to throw
     * for the while), or a path, opened for it.
     */
    private static function using($src, callable $fn)
    {
        if (!($src instanceof PDO)) {
            return $fn(self::open($src));
        }
        $mode = $src->getAttribute(PDO::ATTR_ERRMODE);
        $src->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_EXCEPTION);
        try {
            return $fn($src);
        }
        finally {
            $src->setAttribute(PDO::ATTR_ERRMODE, $mode);
        }
    }

    /**
     * Ends the statement Roundcube keeps from its last query (rcube_db's
     * last_result) when the state is taken on its connection.  A SELECT
     * not read to its end holds its read transaction, in WAL mode a
     * snapshot: a write lock wanted on that connection then fails at once
     * (SQLITE_BUSY_SNAPSHOT) as soon as another request has committed
     * since, however often it is tried.  Four users at once failed there
     * for most requests, and a whole snapshot went instead.
     */
    private function release_roundcubes_statement()
    {
        if (!($this->db instanceof PDO) || !($rc = rcube::get_instance()->get_dbh())) {
            return;
        }
        (function () {
            $this->last_result = null;
        })->call($rc);
    }

    /**
     * Roundcube's own connection, when it is to sqlite file 'path', else
     * null.  Each new connection reads the whole schema (about 0.7 ms for
     * Roundcube's tables and these triggers): borrowing this one spares
     * two per request.  rcube_db keeps its PDO protected; a closure bound
     * to it reads it.
     */
    private static function roundcube_pdo($rcmail, $path)
    {
        $rc = $rcmail->get_dbh();
        $own = self::sqlite_path($rcmail->config->get('db_dsnw'));
        if (!$rc || !$own || @realpath($own) !== @realpath($path)) {
            return null;
        }
        $rc->db_connect('w');
        $pdo = (function () {
            return $this->dbh;
        })->call($rc);
        return $pdo instanceof PDO ? $pdo : null;
    }

    private static function open($path)
    {
        return new PDO('sqlite:' . $path, null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
                                                       PDO::ATTR_TIMEOUT => 5]);
    }

    /** An sqlite identifier, quoted. */
    public static function ident($name)
    {
        return '"' . str_replace('"', '""', $name) . '"';
    }

    /**
     * The database file of an sqlite DSN ("sqlite:////path/db?mode=0640"),
     * or null.
     */
    public static function sqlite_path($dsn)
    {
        if (!is_string($dsn) || stripos($dsn, 'sqlite:') !== 0) {
            return null;
        }
        if (class_exists('rcube_db')) {
            $parsed = rcube_db::parse_dsn($dsn);
            return !empty($parsed['database']) ? $parsed['database'] : null;
        }
        $path = preg_replace('/\?.*$/', '', substr($dsn, strlen('sqlite://')));
        return $path !== '' ? $path : null;
    }

    private function skip_tables()
    {
        $default = ['cache', 'cache_shared', 'cache_index', 'cache_thread', 'cache_messages'];
        return (array) rcube::get_instance()->config->get('resplice_skip_tables', $default);
    }

    /**
     * Whether re-running this request on the alternate could answer
     * differently: it set a cookie (new session id), or it is one of the
     * actions that draw random values (login and logout rotate the session
     * and its request token, compose makes a compose id, send a Message-ID),
     * and the first page after login.
     */
    private function is_nondeterministic()
    {
        foreach (headers_list() as $h) {
            if (stripos($h, 'Set-Cookie:') === 0) {
                return true;
            }
        }

        $rcmail = rcube::get_instance();
        $actions = (array) $rcmail->config->get('resplice_sync_actions', ['login', 'logout', 'compose', 'send']);

        // The first page after login (the login's redirect carries _token):
        // Roundcube draws the user's client hash (env user_id) when it
        // renders a page for a user who has none yet.
        $after_login = $rcmail->task == 'mail' && $rcmail->action === '' && isset($_GET['_token']);

        return in_array($rcmail->task, ['login', 'logout'], true) && $rcmail->action !== ''
            || in_array($rcmail->action, $actions, true) || $after_login;
    }
}
