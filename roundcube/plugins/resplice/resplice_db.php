<?php

/**
 * resplice: the rows each of Roundcube's database connections writes,
 * noted for the resplice plugin's change sets (resplice.php).
 *
 * Before a statement that writes a table (INSERT, REPLACE, UPDATE,
 * DELETE) runs on a connection, resplice_tracker::before() makes sure the
 * connection has TEMP triggers on that table (and, for a delete, on every
 * table a foreign key's cascade can write from it) that hand the key of
 * each row inserted, updated or deleted to a PHP function of the
 * connection's (resplice_note), which keeps it in this request's memory.
 * A temporary trigger fires for its own connection's writes only, and
 * lives in no file:
 *   - the notes are the request's own, whatever other requests write at
 *     the same time (four users at once: a request still running
 *     elsewhere must not have its writes shipped with this one's state);
 *   - the database's schema holds no trigger, which every new connection
 *     would read (Roundcube opens one per request), and its file no note,
 *     which every commit would write and every last close checkpoint.
 *     Triggers and notes in the database cost ~0.7 ms a PHP request in
 *     place (Action 2: 4-8 ms; docs/performance.md, session 44).
 * The schema's facts the triggers need (each table's key, the foreign
 * keys) are read once per version of the schema and kept in a file.
 *
 * Roundcube runs every query through rcube_db::query_execute(): the
 * driver below (db_dsnw "sqlite_resplice:///path/to/db") is its sqlite
 * driver with before() in front of it.  Roundcube makes its database
 * object before it loads plugins, so config.inc.php requires this file.
 */
class resplice_tracker
{
    /** Tables not tracked by default: Roundcube's caches, rebuilt on demand. */
    const CACHES = ['cache', 'cache_shared', 'cache_index', 'cache_thread', 'cache_messages'];

    /** Tables not tracked (the resplice_skip_tables of the plugin's config). */
    public static $skip = self::CACHES;

    /** Where the schema's facts are kept between requests (the driver: Roundcube's temp_dir). */
    public static $cache_dir = null;

    /* Per connection (spl_object_id), in this request: the triggers made
     * or found ("table op" => true); a connection is here once it wrote. */
    private static $armed = [];
    /* Per connection: why its notes are not the whole of its writes. */
    private static $broken = [];
    /* Per connection: the rows its triggers noted, "table\0key SQL" =>
     * [table, key SQL], in the order first written. */
    private static $notes = [];
    /* The schema's facts (schema()), this request's. */
    private static $schema = null;

    /* The SQL function the triggers call with (table, key SQL). */
    const NOTE = 'resplice_note';
    const WRITE = '/^\s*(INSERT|REPLACE|UPDATE|DELETE)\b/i';
    /* The table a write names (after "main.", if it says so; another
     * schema's name matches nothing, and every table is armed). */
    const TABLE = '/^\s*(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)\s+'
        . '(?:(?:main|"main")\s*\.\s*)?("(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[\w$]+)(?![\w$])(?!\s*\.)/i';

    /**
     * Before statement 'sql' runs on 'db': the triggers that note what it
     * writes.  Never fails the statement: a connection whose triggers could
     * not be made is marked (broken()), and its request's state becomes a
     * whole snapshot.
     */
    public static function before(PDO $db, $sql)
    {
        // Most queries read: a look at their first letter spares the patterns.
        if (stripos('IRUDW', $sql[strspn($sql, " \t\r\n")] ?? ' ') === false) {
            return;
        }
        if (preg_match(self::WRITE, $sql, $m)) {
            $ops = [['INSERT' => 'ins', 'REPLACE' => 'ins', 'UPDATE' => 'upd', 'DELETE' => 'del'][strtoupper($m[1])]];
            $table = preg_match(self::TABLE, $sql, $t) ? self::unquote($t[1]) : null;
        }
        elseif (preg_match('/^\s*WITH\b/i', $sql) && preg_match('/\b(INSERT|REPLACE|UPDATE|DELETE)\b/i', $sql)) {
            $ops = ['ins', 'upd', 'del'];       // a write after a WITH: not parsed, everything armed
            $table = null;
        }
        else {
            return;
        }
        try {
            self::using($db, function (PDO $db) use ($ops, $table) {
                foreach ($table !== null ? [$table] : self::tables($db) as $t) {
                    foreach ($ops as $op) {
                        self::arm($db, $t, $op);
                    }
                }
            });
        }
        catch (Exception $e) {
            self::$broken[spl_object_id($db)] = $e->getMessage();
        }
    }

    /** Why 'db''s notes miss some of its writes, or null. */
    public static function broken(PDO $db)
    {
        return self::$broken[spl_object_id($db)] ?? null;
    }

    /**
     * The rows 'db' wrote in this request, [[table, key SQL], ...] in the
     * order first written, each once; and forgets them (a persistent
     * connection's next request starts with none).
     */
    public static function take(PDO $db)
    {
        $id = spl_object_id($db);
        $rows = array_values(self::$notes[$id] ?? []);
        self::$notes[$id] = [];
        foreach ($rows as list($t, $k)) {
            if ($t === '') {
                throw new Exception($k);    // a change the notes do not hold (arm())
            }
        }
        return $rows;
    }

    /**
     * Gives 'db' the SQL function its triggers note rows with.  The driver
     * calls it as each request opens its connection (a persistent one
     * loses it at the end of the request, its triggers stay); arm() too.
     */
    public static function attach(PDO $db)
    {
        $id = spl_object_id($db);
        $db->sqliteCreateFunction(self::NOTE, function ($t, $k) use ($id) {
            self::$notes[$id]["$t\0$k"] = [$t, $k];
            return null;
        }, 2);
    }

    /** Table 't''s columns (rowid first for a table keyed by it). */
    public static function columns(PDO $db, $t)
    {
        return self::table($db, $t)[0];
    }

    /**
     * Makes the trigger of 'op' on table 't', once per connection: for a
     * delete also those of updates and deletes on every table a cascade
     * reaches from it; for an update of a table other rows reference, the
     * one that marks a change of their key.
     */
    private static function arm(PDO $db, $t, $op)
    {
        $id = spl_object_id($db);
        if (!isset(self::$armed[$id])) {
            // Its first write in this request.
            self::attach($db);
            self::$notes[$id] = [];
            self::$armed[$id] = [];
        }
        if (isset(self::$armed[$id]["$t $op"]) || in_array($t, self::$skip, true) || strpos($t, 'resplice_') === 0
            || strpos($t, 'sqlite_') === 0) {
            return;
        }
        $note = function ($row) use ($db, $t) {
            return 'SELECT ' . self::NOTE . '(' . $db->quote($t) . ', ' . self::key_sql($db, $t, $row) . ');';
        };
        $what = ['ins' => ['INSERT', $note('NEW')], 'upd' => ['UPDATE', $note('OLD') . ' ' . $note('NEW')],
                 'del' => ['DELETE', $note('OLD')]][$op];
        $db->exec('CREATE TEMP TRIGGER IF NOT EXISTS ' . self::ident("resplice_{$t}_$op") . " AFTER {$what[0]} ON main."
            . self::ident($t) . " BEGIN {$what[1]} END");
        self::$armed[$id]["$t $op"] = true;
        list($children, $keys) = self::referenced($db, $t);
        if ($op === 'del') {
            // A delete's foreign key actions (Roundcube's: CASCADE) write
            // the rows that reference it.
            foreach ($children as $child) {
                self::arm($db, $child, 'upd');
                self::arm($db, $child, 'del');
            }
        }
        elseif ($op === 'upd' && $keys && !isset(self::$armed[$id]["$t key"])) {
            // So would an update of a referenced key, which Roundcube never
            // makes: its trigger marks the notes incomplete (the state is
            // then a whole snapshot) instead of every referencing table
            // getting triggers at each ordinary update (of the users row,
            // at most logins: some 16 triggers, ~45 us each).
            $db->exec('CREATE TEMP TRIGGER IF NOT EXISTS ' . self::ident("resplice_{$t}_key") . ' AFTER UPDATE OF '
                . implode(', ', array_map([self::class, 'ident'], $keys)) . ' ON main.' . self::ident($t)
                . ' BEGIN SELECT ' . self::NOTE . "('', " . $db->quote("a key of $t that other rows reference changed")
                . '); END');
            self::$armed[$id]["$t key"] = true;
        }
    }

    /**
     * The SQL of a row's key in a trigger ('row': OLD or NEW), as the change
     * set's WHERE clause: "col"='value' AND ..., built by sqlite's quote();
     * rowid for a table without a primary key.
     */
    private static function key_sql(PDO $db, $t, $row)
    {
        list(, $pk) = self::table($db, $t);
        if (!$pk) {
            return "'rowid=' || $row.rowid";
        }
        $parts = [];
        foreach ($pk as $c) {
            $parts[] = "'" . str_replace("'", "''", self::ident($c)) . "=' || quote($row." . self::ident($c) . ")";
        }
        return implode(" || ' AND ' || ", $parts);
    }

    /** Table 't': [its columns (rowid first without a primary key), its primary key's]. */
    private static function table(PDO $db, $t)
    {
        if (!isset(self::schema($db)['tables'][$t])) {
            self::$schema = null;       // made since this request read the schema?
            if (!isset(self::schema($db)['tables'][$t])) {
                throw new Exception("no table $t");
            }
        }
        return self::$schema['tables'][$t];
    }

    /**
     * [the tables whose foreign keys reference table 't', the columns of
     * 't' they reference].
     */
    private static function referenced(PDO $db, $t)
    {
        $r = self::schema($db)['references'][$t] ?? [];
        return [array_keys($r[0] ?? []), array_keys($r[1] ?? [])];
    }

    /**
     * What the tracking needs of the database's schema: every table's
     * columns and primary key, and which tables reference which by a
     * foreign key.  Read from the schema (~0.07 ms a request in place:
     * table_info, the foreign keys) only when its version changed:
     * kept in a JSON file of $cache_dir named by the database's file and
     * the schema's version, so a request reads two pragmas and that file
     * (a database in memory, which has no file, reads the schema).
     */
    private static function schema(PDO $db)
    {
        if (self::$schema !== null) {
            return self::$schema;
        }
        // (Two pragmas: 7 us; one SELECT of their table-valued functions: 40.)
        $file = '';
        foreach ($db->query('PRAGMA database_list')->fetchAll(PDO::FETCH_NUM) as list(, $name, $f)) {
            $file = $name === 'main' ? (string) $f : $file;
        }
        $ver = (string) $db->query('PRAGMA main.schema_version')->fetchColumn();
        $dir = rtrim(self::$cache_dir ?: sys_get_temp_dir(), '/');
        $path = "$dir/resplice-schema-" . md5($file) . "-$ver.json";
        if ($file !== '' && is_readable($path)) {
            $kept = json_decode((string) file_get_contents($path), true);
            if (is_array($kept) && ($kept['file'] ?? null) === $file) {
                return self::$schema = $kept;
            }
        }
        $kept = self::read_schema($db, $file);
        $tmp = $file !== '' ? @tempnam($dir, 'resplice-schema-') : null;
        if ($tmp === false || $tmp && (file_put_contents($tmp, json_encode($kept)) === false || !rename($tmp, $path))) {
            @unlink((string) $tmp);
            error_log("resplice: cannot keep the schema's facts in $dir: each request reads them");
        }
        return self::$schema = $kept;
    }

    private static function read_schema(PDO $db, $file)
    {
        $kept = ['file' => $file, 'tables' => [], 'references' => []];
        foreach (self::tables($db) as $t) {
            $cols = $pk = [];
            foreach ($db->query('PRAGMA main.table_info(' . self::ident($t) . ')')->fetchAll(PDO::FETCH_ASSOC) as $c) {
                $cols[] = $c['name'];
                if ($c['pk'] > 0) {
                    $pk[$c['pk']] = $c['name'];
                }
            }
            ksort($pk);
            if (!$pk) {
                array_unshift($cols, 'rowid');
            }
            $kept['tables'][$t] = [$cols, array_values($pk)];
        }
        $fks = $db->query('SELECT f."table", f."to", m.name FROM main.sqlite_master m,'
            . " pragma_foreign_key_list(m.name) f WHERE m.type = 'table'")->fetchAll(PDO::FETCH_NUM);
        foreach ($fks as list($parent, $to, $child)) {
            $kept['references'][$parent][0][$child] = true;
            // No column named: the parent's primary key.
            foreach ($to !== null ? [$to] : $kept['tables'][$parent][1] ?? [] as $c) {
                $kept['references'][$parent][1][$c] = true;
            }
        }
        return $kept;
    }

    /** Every table of the database (a write whose table was not found). */
    private static function tables(PDO $db)
    {
        return $db->query("SELECT name FROM main.sqlite_master WHERE type = 'table'")->fetchAll(PDO::FETCH_COLUMN);
    }

    /**
     * Runs 'fn' on 'db' made to throw for the while (Roundcube's connection
     * is silent).
     */
    public static function using(PDO $db, callable $fn)
    {
        $mode = $db->getAttribute(PDO::ATTR_ERRMODE);
        $db->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_EXCEPTION);
        try {
            return $fn($db);
        }
        finally {
            $db->setAttribute(PDO::ATTR_ERRMODE, $mode);
        }
    }

    /** An sqlite identifier, quoted. */
    public static function ident($name)
    {
        return '"' . str_replace('"', '""', $name) . '"';
    }

    private static function unquote($name)
    {
        $q = $name[0];
        if ($q === '"') {
            return str_replace('""', '"', substr($name, 1, -1));
        }
        return $q === '`' || $q === '[' ? substr($name, 1, -1) : $name;
    }
}

// Roundcube's sqlite driver, its writes noted (autoloaded in Roundcube;
// absent where Roundcube is not, as in the plugin's tests).
if (class_exists('rcube_db_sqlite')) {
    class rcube_db_sqlite_resplice extends rcube_db_sqlite
    {
        public function __construct($db_dsnw, $db_dsnr = '', $pconn = false)
        {
            parent::__construct($db_dsnw, $db_dsnr, $pconn);
            $config = rcube::get_instance()->config;
            resplice_tracker::$skip = (array) $config->get('resplice_skip_tables', resplice_tracker::CACHES);
            resplice_tracker::$cache_dir = $config->get('temp_dir') ?: null;
        }

        /** Each request's connection, persistent or not, gets the triggers' function first. */
        protected function conn_configure($dsn, $dbh)
        {
            parent::conn_configure($dsn, $dbh);
            resplice_tracker::attach($dbh);
        }

        /** PDO knows the driver as sqlite. */
        protected function dsn_string($dsn)
        {
            return 'sqlite:' . $dsn['database'];
        }

        protected function query_execute($query)
        {
            // The statement of the last query (a SELECT not read to its
            // end) goes first, as rcube_db does before the next one: it
            // would hold the connection's read transaction during the
            // triggers' making.
            $this->last_result = null;
            if ($this->dbh) {
                resplice_tracker::before($this->dbh, $query);
            }
            return parent::query_execute($query);
        }
    }
}
