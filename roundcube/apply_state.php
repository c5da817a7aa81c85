<?php
/*
 * resplice: installs a database snapshot taken by the resplice plugin
 * (plugins/resplice) on the alternate backend.  Run by the front as
 *   rs-app --upstream ... --apply-cmd 'php /path/apply_state.php --db=/path/roundcube.db'
 * which appends the snapshot file and the transaction ID:
 *   php apply_state.php [--db=PATH] SNAPSHOT TXN
 * (without --db, the RESPLICE_DB environment variable names the database).
 *
 * The snapshot is checked (an sqlite database that passes quick_check),
 * copied next to the database and renamed over it, so a reader sees the old
 * database or the new one, never a mix.  A snapshot older than the one last
 * installed (its resplice_meta seq, recorded in DB.resplice-seq) is skipped:
 * every snapshot is the whole database, so the newer one already holds the
 * older one's changes (snapshots of different connections may arrive out of
 * order).  Exit status: 0 installed or skipped as older, 1 failed, 2 usage.
 */

function fail($code, $msg)
{
    fwrite(STDERR, "apply_state: $msg\n");
    exit($code);
}

$db = getenv('RESPLICE_DB') ?: null;
$args = [];
foreach (array_slice($argv, 1) as $a) {
    if (strpos($a, '--db=') === 0) {
        $db = substr($a, 5);
    }
    elseif ($a === '--help' || $a === '-h') {
        fwrite(STDOUT, "usage: php apply_state.php [--db=PATH] SNAPSHOT TXN\n");
        exit(0);
    }
    else {
        $args[] = $a;
    }
}
if (count($args) != 2 || !$db) {
    fail(2, 'usage: php apply_state.php [--db=PATH] SNAPSHOT TXN (or RESPLICE_DB=PATH)');
}
list($snap, $txn) = $args;
if (!preg_match('/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}#\d{1,5}$/', $txn)) {
    fail(2, "bad transaction id '$txn'");
}

// 1. The snapshot must be a sound sqlite database.
try {
    $opts = [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION];
    if (defined('PDO::SQLITE_ATTR_OPEN_FLAGS')) {
        $opts[PDO::SQLITE_ATTR_OPEN_FLAGS] = PDO::SQLITE_OPEN_READONLY;
    }
    $s = new PDO('sqlite:' . $snap, null, null, $opts);
    $check = $s->query('PRAGMA quick_check')->fetchColumn();
    if ($check !== 'ok') {
        fail(1, "$txn: snapshot $snap fails quick_check: $check");
    }
    $seq = null;
    $has_meta = $s->query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'resplice_meta'")
        ->fetchColumn();
    if ($has_meta) {
        $seq = $s->query("SELECT v FROM resplice_meta WHERE k = 'seq'")->fetchColumn();
    }
    $s = null;
}
catch (Exception $e) {
    fail(1, "$txn: snapshot $snap is not an sqlite database: " . $e->getMessage());
}

// 2. Skip it when a newer one is installed.
$seq_file = $db . '.resplice-seq';
$last = @file_get_contents($seq_file);
if ($seq !== null && $seq !== false && $last !== false && ctype_digit(trim($last)) && ctype_digit($seq)
    && strlen($seq) <= 20 && (int) $seq < (int) trim($last)) {
    fwrite(STDOUT, "apply_state: $txn: snapshot seq $seq older than installed " . trim($last) . ": skipped\n");
    exit(0);
}

// 3. A journal left by a writer that died means the live file is mid-change:
// a new file next to it would get that journal rolled into it.
if (file_exists($db . '-wal') || (file_exists($db . '-journal') && filesize($db . '-journal') > 0)) {
    fail(1, "$txn: $db has a journal (-wal/-journal): refusing to replace it");
}

// 4. Copy next to the database (same file system), then rename over it.
$dir = dirname($db);
$tmp = tempnam($dir, '.rs-apply-');
if ($tmp === false) {
    fail(1, "$txn: cannot create a file in $dir");
}
$in = fopen($snap, 'rb');
$out = fopen($tmp, 'wb');
// No fsync: the standby's copy only has to survive the primary's crash, not
// its own (and an fsync per transaction would make the standby lag).
if (!$in || !$out || stream_copy_to_stream($in, $out) === false || !fflush($out)) {
    @unlink($tmp);
    fail(1, "$txn: cannot copy $snap to $tmp");
}
fclose($in);
fclose($out);
// Keep the live database's mode and owner (php-cgi must still open it).
if (file_exists($db)) {
    $st = stat($db);
    chmod($tmp, $st['mode'] & 07777);
    if (function_exists('posix_geteuid') && posix_geteuid() == 0) {
        @chown($tmp, $st['uid']);
        @chgrp($tmp, $st['gid']);
    }
}
if (!rename($tmp, $db)) {
    @unlink($tmp);
    fail(1, "$txn: cannot rename $tmp to $db");
}
if ($seq !== null && $seq !== false) {
    file_put_contents($seq_file . '.tmp', $seq . "\n");
    rename($seq_file . '.tmp', $seq_file);
}
fwrite(STDOUT, "apply_state: $txn: installed " . filesize($db) . " bytes into $db"
    . ($seq ? " (seq $seq)" : '') . "\n");
exit(0);
