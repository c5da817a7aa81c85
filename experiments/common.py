"""What every experiment driver shares: the CSV schemas, a row writer that
stamps each row with its seed, full configuration, machine and commit,
reading results back, the statistics the figures and REPORT.md use, TRIALS=
and QUICK=1 handling, a progress line with ETA, and the `summary:` line.

Layout: each study writes results/<study>/*.csv (every CSV in that folder is
one table; drivers may write one file per run).  Studies: "failover" (LAN,
make experiment-lan), "wan" (make experiment-wan), "overhead".

Failover CSV (study "failover"; the "wan" study uses the same columns, its
profile column naming the RTT/loss profile; on the LAN profile is "lan"),
one row per trial:

  study        "failover" or "wan"
  workload     refapp | roundcube
  action       action1 (login page + static files) | action2 (log in,
               compose, send, log out) | a driver-defined name
  technique    one of TECHNIQUES (unknown names sort last)
  crash_point  where the crash was injected (e.g. request, mid-response,
               between, state-transfer, recovery); "none" for no crash
  trial        trial index within its (technique, workload, action, point)
  seed         the seed that reproduces this trial
  ok           1 when the action completed with correct responses (the
               client's checks passed), else 0
  failover_ms  what the crash cost the client: how much longer the crashed
               request took than its crash-free median with the same
               technique (same run), in ms; noise can make it slightly
               negative; blank when there was no crash or the action failed
  action_ms    wall time of the whole action at the client, ms
  errors       client-visible errors (failed requests, resets, reloads)
  relogins     times the user had to log in again
  detect_ms    crash -> the technique noticed it (proxy hold, HAProxy
               marks server DOWN, VRRP backup becomes MASTER), ms; blank if
               unknown
  recover_ms   detection -> service restored (re-splice, redispatch, VIP
               moved), ms; blank if unknown
  profile      link profile name ("lan" on the LAN)
  rtt_ms       the profile's round-trip time, ms
  loss_pct     the profile's loss rate, percent
  config       the full configuration of the trial, compact JSON
  machine      {"host", "nproc", "kernel"} as compact JSON
  commit       git commit of the code that ran (12 hex digits, or "unknown")
  timestamp    UTC, ISO 8601, when the row was written

Overhead CSV (study "overhead"), one row per measured value:

  study, technique, workload, metric (latency_ms | throughput_mbps), value,
  trial, seed, profile, config, machine, commit, timestamp

Fault CSV (study "faults", make fault-campaign), one row per trial:

  fault, workload, load (concurrent connections), trial, seed, moment_ms
  (when the first fault came, from the action's start), faults (each fault
  injected, with its time), verdict (masked | clean_end | violation),
  reason (the violations, blank otherwise), detail, then what the checker
  saw: action_ms, serving (the backend whose counter was read), no_backend
  (1: none left alive), requests, failed, resets, clean_ends, clean_end_ms
  (the slowest clean end, from the last fault or its SYN), updates_ok,
  updates_unsure, counter, recovered, unrecoverable, false_failovers,
  sanitizer (daemons with a sanitizer report), kept (where a violation's
  logs and pcaps went), and the stamp columns.

Statistics: percentiles use linear interpolation between closest ranks
(Hyndman & Fan type 7, numpy's default): for sorted x[0..n-1] and p in [0,1],
h = (n-1)p, q = x[floor h] + (h - floor h)(x[floor h + 1] - x[floor h]).  So
the median of an even n is the mean of the two middle values, and every
percentile of n = 1 is that single value.
"""
import csv
import datetime
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUDIES = ("failover", "wan", "overhead", "faults", "nospof")
# Each workload's headline crash point: the WAN study's only one, and the
# one the summary: lines of make experiment-lan / -wan report.
HEADLINE = {"refapp": "static-mid", "roundcube": "mailbox-mid"}
STUDY_TITLES = {"failover": "LAN failover", "wan": "WAN failover", "overhead": "Overhead (no crash)",
                "faults": "Fault campaign", "nospof": "No single point of failure (the proxy, two backends)"}
STUDY_TARGETS = {"failover": "make experiment-lan", "wan": "make experiment-wan",
                 "overhead": "make experiment-lan", "faults": "make fault-campaign",
                 "nospof": "make experiment-nospof"}

# Canonical technique names, in the order tables and figures show them.
TECHNIQUES = ("none", "browser", "browser-shared", "haproxy", "haproxy-tuned",
              "vrrp", "vrrp-tuned", "resplice", "resplice-nostate")
TECHNIQUE_TITLES = {
    "none": "none (single backend)",
    "browser": "browser retry",
    "browser-shared": "browser retry, shared sessions",
    "haproxy": "HAProxy (inter 2s fall 3)",
    "haproxy-tuned": "HAProxy (inter 100ms fall 2)",
    "vrrp": "VRRP (advert 1s)",
    "vrrp-tuned": "VRRP (advert 100ms)",
    "resplice": "resplice",
    "resplice-nostate": "resplice without the application's state",
}

STAMP_COLUMNS = ["config", "machine", "commit", "timestamp"]
FAILOVER_COLUMNS = ["study", "workload", "action", "technique", "crash_point", "trial", "seed",
                    "ok", "failover_ms", "stall_ms", "action_ms", "errors", "relogins", "detect_ms",
                    "recover_ms", "profile", "rtt_ms", "loss_pct"] + STAMP_COLUMNS
OVERHEAD_COLUMNS = ["study", "technique", "workload", "metric", "value", "trial", "seed",
                    "profile"] + STAMP_COLUMNS
OVERHEAD_METRICS = ("latency_ms", "throughput_mbps")
FAULT_COLUMNS = ["study", "fault", "workload", "load", "trial", "seed", "moment_ms", "faults", "verdict", "reason",
                 "detail", "action_ms", "serving", "no_backend", "requests", "failed", "resets", "clean_ends",
                 "clean_end_ms", "updates_ok", "updates_unsure", "counter", "recovered", "unrecoverable", "false_failovers",
                 "sanitizer", "kept"] + STAMP_COLUMNS
FAULT_VERDICTS = ("masked", "clean_end", "violation")
NOSPOF_COLUMNS = ["study", "technique", "fault", "trial", "seed", "moment_ms", "masked", "completed", "stall_ms",
                  "connections", "cut", "hung", "requests"] + STAMP_COLUMNS
COLUMNS = {"failover": FAILOVER_COLUMNS, "wan": FAILOVER_COLUMNS, "overhead": OVERHEAD_COLUMNS,
           "faults": FAULT_COLUMNS, "nospof": NOSPOF_COLUMNS}


# ---- environment: TRIALS=, QUICK=1 ----------------------------------------

def quick(env=None):
    """True when QUICK=1 (or any value other than "", "0", "no", "false")."""
    v = (os.environ if env is None else env).get("QUICK", "")
    return v.strip().lower() not in ("", "0", "no", "false")


def trials(default, quick_default=1, env=None):
    """Trials per configuration: TRIALS= if set (a positive integer, else
    ValueError), else 'quick_default' under QUICK=1, else 'default'."""
    env = os.environ if env is None else env
    v = env.get("TRIALS", "").strip()
    if v:
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"TRIALS={v!r}: not an integer") from None
        if n < 1:
            raise ValueError(f"TRIALS={v!r}: must be at least 1")
        return n
    return quick_default if quick(env) else default


# ---- run directories: KEEP= ------------------------------------------------

class WorkDir:
    """A study's scratch directory under /tmp (the daemons' logs, traces
    and pcaps of its trials), as a context manager: removed at the end
    unless KEEP=1, or the study failed (an exception), or keep() was called
    (a trial went wrong: its evidence stays); a kept one is named on
    stderr.  World-readable: dovecot's mail processes are not root."""

    def __init__(self, prefix, env=None, stream=None):
        self.prefix, self.env, self.stream = prefix, os.environ if env is None else env, stream
        self.path, self.reasons = None, []

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix=self.prefix)
        os.chmod(self.path, 0o755)
        return self

    def keep(self, reason):
        """Keeps the directory whatever happens ('reason' is printed)."""
        self.reasons.append(reason)

    def __exit__(self, exc_type, exc, tb):
        why = list(self.reasons)
        if self.env.get("KEEP") == "1":
            why.append("KEEP=1")
        if exc_type is not None and exc_type is not GeneratorExit:
            why.append(f"the study failed ({exc_type.__name__})")
        if why:
            print(f"run directory kept: {self.path} ({'; '.join(why[:3])}{'; ...' if len(why) > 3 else ''})",
                  file=self.stream or sys.stderr, flush=True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


# ---- row stamping -------------------------------------------------------

_machine = None
_commit = None


def machine():
    """This machine as compact JSON: hostname, CPUs, kernel release."""
    global _machine
    if _machine is None:
        _machine = json.dumps({"host": socket.gethostname(), "nproc": os.cpu_count() or 0,
                               "kernel": platform.release()}, separators=(",", ":"), sort_keys=True)
    return _machine


def git_commit(root=ROOT):
    """The checked-out commit (12 hex digits), or "unknown" outside git."""
    global _commit
    if _commit is None:
        try:
            r = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                               capture_output=True, text=True, timeout=10)
            _commit = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
        except (OSError, subprocess.SubprocessError):
            _commit = "unknown"
    return _commit


def compact_json(obj):
    """'obj' as one-line JSON with sorted keys (stable across runs)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str)


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return ""
        return f"{v:.6f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))
    return str(v)


class RowWriter:
    """Appends rows of one study to a CSV file, header first when the file
    is new.  Every row gets study, config (compact JSON of the merged
    'config' and the row's own 'config'), machine, commit and timestamp; a
    row without a seed is refused.  Each row is flushed, so an interrupted
    run keeps what it measured."""

    def __init__(self, path, study, config=None, columns=None):
        if columns is None:
            if study not in COLUMNS:
                raise ValueError(f"unknown study {study!r}; pass columns")
            columns = COLUMNS[study]
        self.path, self.study, self.columns = path, study, list(columns)
        self.config = dict(config or {})
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        if exists:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != self.columns:
                raise ValueError(f"{path}: existing header {header} differs from {self.columns}")
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.columns)
        if not exists:
            self._w.writeheader()
            self._f.flush()
        self.rows = 0

    def write(self, **fields):
        """Writes one row; returns the dict written (all cells as strings).
        ValueError for an unknown column or a missing seed."""
        unknown = set(fields) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown column(s) {sorted(unknown)} for study {self.study}")
        if fields.get("seed") in (None, ""):
            raise ValueError("every row needs its seed")
        cfg = dict(self.config)
        extra = fields.pop("config", None)
        if isinstance(extra, dict):
            cfg.update(extra)
        elif extra not in (None, ""):
            cfg["extra"] = extra
        row = {c: "" for c in self.columns}
        row.update({k: _cell(v) for k, v in fields.items()})
        row["study"] = self.study
        row["config"] = compact_json(cfg)
        row["machine"] = machine()
        row["commit"] = git_commit()
        row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._w.writerow(row)
        self._f.flush()
        self.rows += 1
        return row

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- reading back -------------------------------------------------------

def study_files(results, study):
    """The CSV files of 'study' under 'results', sorted; [] when none."""
    d = os.path.join(results, study)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".csv"))


def read_rows(results, study):
    """All rows of 'study' (dicts of strings), file by file in name order;
    [] when the study has no CSV."""
    rows = []
    for p in study_files(results, study):
        with open(p, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def num(s):
    """A CSV cell as float; None for blank or non-numeric."""
    if s is None:
        return None
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def group(rows, *keys):
    """Rows grouped by the tuple of their 'keys' values, insertion order."""
    out = {}
    for r in rows:
        out.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    return out


def technique_order(name):
    """Sort key: canonical techniques first, in TECHNIQUES order."""
    return (TECHNIQUES.index(name), "") if name in TECHNIQUES else (len(TECHNIQUES), name)


def natural_key(s):
    """Sort key for names like action2 < action10, crash points, profiles."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


# ---- statistics ----------------------------------------------------------

def percentile(values, p):
    """The 'p'-quantile (0 <= p <= 1) of 'values' by linear interpolation
    between closest ranks (type 7); None for no values."""
    if not 0 <= p <= 1:
        raise ValueError(f"percentile {p} outside [0, 1]")
    x = sorted(values)
    if not x:
        return None
    h = (len(x) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(x) - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def median(values):
    return percentile(values, 0.5)


def stats(values):
    """{"n", "median", "p5", "p95", "min", "max"} of the numbers in
    'values' (None entries ignored); the statistics are None when n = 0."""
    x = [v for v in values if v is not None]
    return {"n": len(x), "median": percentile(x, 0.5), "p5": percentile(x, 0.05),
            "p95": percentile(x, 0.95), "min": min(x) if x else None, "max": max(x) if x else None}


# ---- progress and summary -------------------------------------------------

def fmt_duration(seconds):
    """M:SS below an hour, H:MM:SS above; "?" for None."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One line per step on stderr:
        [  7/40] resplice action2 crash=send trial 3  elapsed 0:41  eta 3:12
    step() is called as a step starts; the ETA is the mean duration of the
    steps already finished times the steps left including this one ("?"
    before the first step finished)."""

    def __init__(self, total, stream=None, clock=time.monotonic):
        self.total, self.clock = int(total), clock
        self.stream = sys.stderr if stream is None else stream
        self.start = clock()
        self.index = 0

    def line(self, label):
        """The line step() would print for the next step, without printing."""
        k = self.index + 1
        elapsed = self.clock() - self.start
        done = k - 1
        eta = elapsed / done * (self.total - done) if done > 0 else None
        w = max(3, len(str(self.total)))
        return f"[{k:>{w}}/{self.total}] {label}  elapsed {fmt_duration(elapsed)}  eta {fmt_duration(eta)}"

    def step(self, label):
        text = self.line(label)
        self.index += 1
        print(text, file=self.stream, flush=True)
        return text

    def elapsed(self):
        return self.clock() - self.start


def summary(*pairs, **kv):
    """'summary: key=value ...' from (key, value) pairs and/or keywords, in
    order.  Floats print with at most 3 decimals, None as "na", spaces in
    values become '_' so the line splits on blanks."""
    items = list(pairs) + list(kv.items())
    parts = []
    for k, v in items:
        if v is None:
            s = "na"
        elif isinstance(v, float):
            s = f"{v:.3f}".rstrip("0").rstrip(".") if math.isfinite(v) else "na"
        else:
            s = str(v).replace(" ", "_")
        parts.append(f"{k}={s}")
    return "summary: " + " ".join(parts)


def parse_summary(line):
    """The key=value pairs of a summary line, as a dict of strings."""
    if not line.startswith("summary:"):
        raise ValueError("not a summary line")
    return dict(p.split("=", 1) for p in line[len("summary:"):].split() if "=" in p)


# ---- the proxy-failure study --------------------------------------------

def nospof_cells(rows):
    """[(technique, fault, masked %, completed %, median extra stall ms)] of
    the proxy-failure study: the stall over the technique's crash-free
    median."""
    out = []
    for t in dict.fromkeys(r["technique"] for r in rows):
        base = median([num(r["stall_ms"]) for r in rows if r["technique"] == t and r["fault"] == "none"])
        for f in dict.fromkeys(r["fault"] for r in rows if r["fault"] != "none"):
            rs = [r for r in rows if r["technique"] == t and r["fault"] == f]
            if not rs:
                continue
            extra = median([num(r["stall_ms"]) - base for r in rs]) if base is not None else None
            out.append((t, f, 100.0 * sum(num(r["masked"]) for r in rs) / len(rs),
                        100.0 * sum(num(r["completed"]) for r in rs) / len(rs), extra))
    return out
