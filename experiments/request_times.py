"""Where a Roundcube action's time goes, request by request, per technique
(issue 17): the overhead study's deployments taking turns (ROUNDS=, default
4; TRIALS= runs of the action in all, default 24; ACTION=, default
action2; TECHNIQUES=, default direct,haproxy-tuned,resplice,resplice-
nostate), each PHP request's time at the client cut in three by php's own
clock (roundcube/php_times.php, prepended to every request):

  in      the client sent the request -> php began it (the proxies, the
          front, lighttpd)
  app     php's request, to the end of its last shutdown function
          (Roundcube, the plugin's state, the mail store's answers)
  after   -> the client's last byte (php's end: destructors, the
          database's close; lighttpd; the front's hold of a state; the
          proxies)

Prints each step's median per technique, then the three parts' sums of
medians over the PHP requests; one row per request in
results/request-times/roundcube-<action>.csv; ends with a summary: line
(the action's median and ratio to direct, and the parts, per technique).
Static files have no php part: they count in the step table only."""
import argparse
import bisect
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.testbed import Testbed  # noqa: E402
from experiments import common  # noqa: E402
from experiments.failover import Study, chosen  # noqa: E402
from experiments.techniques import COST_ONLY, TECHNIQUES, Plain  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402

DEFAULT_TECHNIQUES = ("direct", "haproxy-tuned", "resplice", "resplice-nostate")
PARTS = ("in", "app", "after")


def php_times(paths):
    """[(start_us, end_us, uri)] of every PHP request the files name, by start."""
    out = []
    for p in paths:
        if os.path.exists(p):
            with open(p) as f:
                for line in f:
                    uri, t0, t1 = line.rsplit(" ", 2)
                    out.append((float(t0) * 1e6, float(t1) * 1e6, uri))
    return sorted(out)


def split(row, php, starts):
    """{in, app, after} ms of one client request (its CSV row), or None when
    no PHP request of its target began while it ran (a static file)."""
    s, e = int(row["start_us"]), int(row["end_us"])
    i = bisect.bisect_left(starts, s)
    if i == len(php) or php[i][0] > e or php[i][2] != row["target"]:
        return None
    p0, p1, _ = php[i]
    return {"in": (p0 - s) / 1000, "app": (p1 - p0) / 1000, "after": (e - p1) / 1000}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(common.ROOT, "results"))
    a = ap.parse_args()
    known = {"direct": Plain, **TECHNIQUES, **COST_ONLY}
    techs = chosen("TECHNIQUES", known, DEFAULT_TECHNIQUES, "technique")
    action = os.environ.get("ACTION", "action2")
    runs = common.trials(24, quick_default=2)
    rounds = max(1, min(runs, int(os.environ.get("ROUNDS", "4"))))
    with common.WorkDir("rs-reqtimes-") as work:
        os.environ["RS_PHP_TIMES"] = os.path.join(work.path, "php-times")
        try:
            rows = measure(known, techs, action, runs, rounds, work.path)
        finally:
            del os.environ["RS_PHP_TIMES"]
        php = php_times([os.path.join(work.path, f"php-times.{h}") for h in ("primary", "alternate", "spare")])
    report(a, techs, action, rows, php)


def measure(known, techs, action, runs, rounds, tmp):
    """[(technique, round, client CSV row)] of every timed run."""
    progress = common.Progress(rounds * len(techs))
    run_dir = os.path.join(tmp, "roundcube")
    out = []
    with Testbed(LanTopo(), run_dir) as tb:
        s = Study(tb, run_dir, None, progress, "roundcube")
        if action not in s.wl.actions:
            raise SystemExit(f"ACTION={action}: not one of {', '.join(s.wl.actions)}")
        for r in range(rounds):
            share = runs // rounds + (1 if r < runs % rounds else 0)
            for name in techs[r % len(techs):] + techs[:r % len(techs)]:
                progress.step(f"{name}: {action} x{share} (round {r + 1})")
                tech = known[name](tb, run_dir, s.wl).start(None)
                try:
                    for run in s.runs(tech, action, share):
                        out += [(name, r, row) for row in run]
                finally:
                    tech.stop()
    return out


def report(a, techs, action, rows, php):
    starts = [p[0] for p in php]
    steps, labels, totals, parts = {}, {}, {}, {}
    path = os.path.join(a.results, "request-times", f"roundcube-{action}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["technique", "round", "run", "step", "method", "target", "ms"] + [f"{p}_ms" for p in PARTS])
        for name, r, row in rows:
            k = int(row["step"])
            ms = (int(row["end_us"]) - int(row["start_us"])) / 1000
            cut = split(row, php, starts)
            labels.setdefault(k, f"{row['method']} {row['target']}"[:56])
            steps.setdefault(k, {}).setdefault(name, []).append(ms)
            totals.setdefault(name, {}).setdefault((r, row["run"]), []).append(row)
            if cut:
                for p in PARTS:
                    parts.setdefault((name, k, p), []).append(cut[p])
            w.writerow([name, r, row["run"], k, row["method"], row["target"], round(ms, 3)]
                       + [round(cut[p], 3) if cut else "" for p in PARTS])
    action_ms = {n: common.median([(max(int(x["end_us"]) for x in run) - min(int(x["start_us"]) for x in run)) / 1000
                                   for run in totals.get(n, {}).values()]) for n in techs if totals.get(n)}
    print()
    print(f"{'step':60s}" + "".join(f"{n[:14]:>15s}" for n in techs))
    for k in sorted(steps):
        print(f"{k:2d} {labels[k]:57s}" + "".join(
            f"{common.median(steps[k][n]):15.2f}" if n in steps[k] else " " * 15 for n in techs))
    print(f"{action + ' (median of runs)':60s}" + "".join(f"{action_ms.get(n, 0):15.2f}" for n in techs))
    print()
    print("PHP requests, sums of the steps' medians (ms):")
    summary = {}
    ref = action_ms.get("direct")
    for n in techs:
        sums = {p: sum(common.median(v) for (t, _, q), v in parts.items() if t == n and q == p) for p in PARTS}
        print(f"  {n:18s} " + "  ".join(f"{p} {sums[p]:7.2f}" for p in PARTS))
        key = n.replace("-", "_")
        summary[f"{key}_ms"] = round(action_ms.get(n, 0), 2)
        if ref:
            summary[f"{key}_ratio"] = round(action_ms.get(n, 0) / ref, 3)
        summary.update({f"{key}_{p}_ms": round(sums[p], 2) for p in PARTS})
    print(f"rows: {path}")
    runs = min(len(v) for v in totals.values()) if totals else 0
    print(common.summary(study="request-times", action=action, runs=runs, **summary))


if __name__ == "__main__":
    main()
