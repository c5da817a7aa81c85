<?php

/**
 * resplice: hands each request's application state to the resplice front
 * (rs-front) in front of lighttpd, so the alternate backend can
 * take over a client's connection.
 *
 * The front numbers the client's requests and sends X-Resplice-Txn with
 * each one.  For every PHP request that came through it (all of them update
 * the session row), this plugin holds the output, and once Roundcube has
 * written the session at shutdown it copies the sqlite database (VACUUM
 * INTO, a consistent snapshot without the cache tables) to a file in the
 * front's --state-dir and answers
 *   X-Resplice-State: <that file>   (the front reads, sends and deletes it)
 *   X-Resplice-Sync: 1              for non-deterministic requests (a new
 *                                   session id, token or compose id): the
 *                                   front holds the response until the
 *                                   alternate has the state.
 * On the alternate, the front installs the snapshot over the database
 * (rs-app --apply-file), the newest (X-Resplice-State-Seq) winning.
 *
 * It also names the transaction in the request's mail conversations, for
 * the auxiliary logger (rs-auxlog) between the backends and the mail store:
 * IMAP: "x-resplice-txn" in the ID sent before login (preauth_ident);
 * SMTP: the EHLO host "x-resplice-txn-A-B-C-D-PORT-N.<smtp_helo_host>".
 * When the front says the request is a re-run after a failover
 * (X-Resplice-Rerun: 1), "rerun" replaces "txn" in both: only those
 * conversations may be answered from another backend's record.
 *
 * Config (Roundcube's config.inc.php or this folder's config.inc.php; see
 * config.inc.php.dist):
 *   resplice_state_dir    the front's --state-dir (default: the system temp dir)
 *   resplice_db_path      the sqlite file (default: from db_dsnw)
 *   resplice_sync_actions actions answered synchronously besides any response
 *                         that sets a cookie (default login, logout, compose, send)
 *   resplice_skip_tables  tables emptied in the snapshot (default: the caches)
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

        return $args;
    }

    /**
     * SMTP: the transaction becomes the first label of the EHLO host.
     */
    public function smtp_connect($args)
    {
        $helo = !empty($args['smtp_helo_host']) ? $args['smtp_helo_host'] : 'localhost';
        $args['smtp_helo_host'] = $this->marker . '-' . strtr($this->txn, '.:#', '---') . '.' . $helo;

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

        $tmp = @tempnam($this->state_dir, 'rs-state-');
        if ($tmp === false) {
            rcube::raise_error("resplice: {$this->txn}: cannot create a file in {$this->state_dir}", true, false);
            return;
        }

        try {
            $seq = self::snapshot($this->db_path, $tmp, $this->skip_tables());
        }
        catch (Exception $e) {
            @unlink($tmp);
            rcube::raise_error("resplice: {$this->txn}: snapshot failed: " . $e->getMessage(), true, false);
            return;
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

        header('X-Resplice-State: ' . $tmp);
        // Its age: the alternate keeps the newest whole-database copy.
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
