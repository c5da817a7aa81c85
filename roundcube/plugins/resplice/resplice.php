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
 * The state is, by default, what the request changed ("changes"): the
 * database driver of resplice_db.php (db_dsnw "sqlite_resplice:...") notes
 * the key of every row Roundcube's connection inserts, updates or deletes
 * (temporary triggers, made before its first write of each table); at
 * shutdown those rows are written as SQL that sets each row to its image
 * now (or deletes it), stamped with a sequence number taken under the
 * write lock (hrtime), so that on the alternate the newest image of a row
 * wins whatever order states arrive in (resplice_rowver keeps each row's).
 * A few KB instead of the whole database.  With resplice_state =
 * 'snapshot', without that driver, or when the changes cannot be read,
 * the state is a copy of the whole database (VACUUM INTO, without the
 * caches).
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
 *   resplice_skip_tables  tables emptied in the snapshot and not tracked (default: the caches;
 *                         in Roundcube's own config.inc.php, which the driver reads)
 *   resplice_state        'changes' (default) or 'snapshot'
 *   resplice_state_inline_max  a change set up to this many bytes goes in the
 *                         head (default and at most INLINE_MAX; 0: always a file)
 *   resplice_auxlog_host  rs-auxlog's relay, for re-runs, when its tap records
 *                         the first runs (default: none, every conversation
 *                         goes to imap_host / smtp_host)
 */
require_once __DIR__ . '/resplice_db.php';

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
    private $db;                /* Roundcube's own connection (PDO) when its writes are noted; null: snapshot */

    /* The state file of a change set starts with this (rs-front tells the kinds apart by it). */
    const CHANGES_MAGIC = '-- resplice changes';
    /* A change set up to this many bytes goes in the response's head
     * (X-Resplice-State-Data, base64: 8 KB of the front's 16 KB head);
     * a larger one, or a snapshot, in a file (X-Resplice-State). */
    const INLINE_MAX = 6144;
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

        if ($rcmail->config->get('resplice_state', 'changes') === 'changes'
            && !($this->db = self::roundcube_pdo($rcmail, $this->db_path))) {
            rcube::raise_error("resplice: {$this->txn}: Roundcube's database is not " . $this->db_path
                . " through the sqlite_resplice driver (resplice_db.php): changes not tracked, a snapshot instead",
                true, false);
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
        if ($this->db) {
            try {
                $this->release_roundcubes_statement();
                list($seq, $text) = self::changes_text($this->db);
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
        // The change sets' versions mean nothing in another database.
        $skip = array_merge($skip, ['resplice_rowver']);
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
     * The rows Roundcube's connection 'db' wrote in this request
     * (resplice_tracker), as SQL for the alternate: each row set to its
     * image now (INSERT OR REPLACE) or deleted, only if this state's
     * sequence number is the newest the alternate has seen for that row
     * (resplice_rowver): [the sequence number, the SQL text].  The images
     * and the number are taken under the write lock, so a later number
     * never goes with an older image.
     */
    public static function changes_text(PDO $db)
    {
        return resplice_tracker::using($db, function (PDO $db) {
            return self::changes_in($db);
        });
    }

    private static function write($dst, $text)
    {
        if (file_put_contents($dst, $text) !== strlen($text)) {
            throw new Exception("cannot write $dst");
        }
    }

    private static function changes_in(PDO $db)
    {
        if ($why = resplice_tracker::broken($db)) {
            throw new Exception("its writes were not all noted: $why");
        }
        self::begin_write($db);
        try {
            $seq = (string) hrtime(true);
            $out = self::CHANGES_MAGIC . " seq=$seq\n"
                . "CREATE TABLE IF NOT EXISTS resplice_rowver (tbl TEXT NOT NULL, k TEXT NOT NULL,"
                . " seq INTEGER NOT NULL, PRIMARY KEY (tbl, k));\n";
            foreach (resplice_tracker::take($db) as list($t, $k)) {
                $cols = resplice_tracker::columns($db, $t);
                $names = implode(', ', array_map([self::class, 'ident'], $cols));
                $quoted = implode(" || ',' || ", array_map(function ($c) {
                    return 'quote(' . self::ident($c) . ')';
                }, $cols));
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
     * Roundcube's own connection, when it is to sqlite file 'path' through
     * the driver that notes its writes (resplice_db.php), else null: the
     * change set is taken on it.  rcube_db keeps its PDO protected; a
     * closure bound to it reads it.
     */
    private static function roundcube_pdo($rcmail, $path)
    {
        $rc = $rcmail->get_dbh();
        $own = self::sqlite_path($rcmail->config->get('db_dsnw'));
        if (!($rc instanceof rcube_db_sqlite_resplice) || !$own || @realpath($own) !== @realpath($path)) {
            return null;
        }
        $rc->db_connect('w');
        $pdo = (function () {
            return $this->dbh;
        })->call($rc);
        return $pdo instanceof PDO ? $pdo : null;
    }

    /** An sqlite identifier, quoted. */
    public static function ident($name)
    {
        return resplice_tracker::ident($name);
    }

    /**
     * The database file of an sqlite DSN ("sqlite:////path/db?mode=0640",
     * or the same through the driver, "sqlite_resplice:..."), or null.
     */
    public static function sqlite_path($dsn)
    {
        if (!is_string($dsn) || !preg_match('/^sqlite(_resplice)?:/i', $dsn)) {
            return null;
        }
        if (class_exists('rcube_db')) {
            $parsed = rcube_db::parse_dsn($dsn);
            return !empty($parsed['database']) ? $parsed['database'] : null;
        }
        $path = preg_replace('/\?.*$/', '', preg_replace('#^sqlite(_resplice)?://#i', '', $dsn));
        return $path !== '' ? $path : null;
    }

    private function skip_tables()
    {
        return (array) rcube::get_instance()->config->get('resplice_skip_tables', resplice_tracker::CACHES);
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
