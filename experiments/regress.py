#!/usr/bin/python3
"""make regress: has failover got slower, or masked less, than the committed
reference?  For engineers who change resplice and want to know.

It runs a short fixed failover study (experiments/failover.py: resplice
only, both workloads, each workload's two QUICK=1 crash points: the
reference app's static-mid and update, Roundcube's mailbox-mid and send;
REGRESS_TRIALS= trials each, default 15; about two minutes here) into
results/regress/, then compares it, crash point by crash point, with
results/reference/regress/ (made by `make regress-update`, the same study,
with the machine and commit it ran on in machine.json):

  failover_ms   how much longer the crashed request took than crash-free
  stall_ms      the client's longest wait for a new byte of it (its own pcap)
  detect_ms     crash -> the proxy holds the connection
  recover_ms    the proxy's recovery, hold -> re-spliced
  masked        the fraction of trials the client completed with every check

A time regresses when all three hold: a one-sided Mann-Whitney U test
(exact) says the current trials are slower (p below ALPHA = 0.01 divided
by the number of time tests made, Bonferroni), its median grew by more than
20%, and by more than the metric's floor (failover and stall 5 ms, detect
0.5 ms, recover 1 ms: smaller shifts are noise on these machines however
significant).  The masked fraction regresses when a one-sided Fisher
exact test says it fell, p below ALPHA at each crash point (resplice masks
every trial, so a reference of 10/10 cannot raise a false alarm; with 10
trials a point it catches a fall to 4/10, not one to 7/10: the fault
campaign is the place for single violations).  A crash point the reference
has and the current run lacks regresses too.  Faster is reported, never
a failure.

Exit status 0 (no regression), 1 (a regression: the table says where),
2 (no reference, bad input).  --current DIR compares an existing run
(DIR/<workload>.csv) without running; --reference DIR another reference;
--out DIR where the run goes; --update (make regress-update) makes the run
the new reference.  Ends with
'summary: ...'."""
import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

REFERENCE = os.path.join(common.ROOT, "results", "reference", "regress")
CURRENT = os.path.join(common.ROOT, "results", "regress")
WORKLOADS = ("refapp", "roundcube")
ALPHA = 0.01
GROWTH = 0.20
FLOORS = {"failover_ms": 5.0, "stall_ms": 5.0, "detect_ms": 0.5, "recover_ms": 1.0}


# ---- the tests -----------------------------------------------------------

def mann_whitney_greater(ref, cur):
    """One-sided p-value of the exact Mann-Whitney U test that the values
    of 'cur' tend to be larger than those of 'ref': the chance, with the
    two samples drawn from one distribution, of a U at least the one
    observed (U: the pairs (c, r) with c > r, ties counting one half; the
    exact null distribution of U without ties).  1.0 when either is empty."""
    n, m = len(cur), len(ref)
    if not n or not m:
        return 1.0
    u = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c in cur for r in ref)
    # counts[k][u]: orderings of k current and j reference values with U = u,
    # built up one reference value at a time (the classic recurrence).
    counts = [[1] + [0] * (n * m) for _ in range(n + 1)]     # j = 0: U = 0 only
    for j in range(1, m + 1):
        nxt = [[0] * (n * m + 1) for _ in range(n + 1)]
        nxt[0][0] = 1
        for k in range(1, n + 1):
            for v in range(n * m + 1):
                # the largest of the k + j values is a current one (it beats
                # all j reference values) or a reference one
                nxt[k][v] = (nxt[k - 1][v - j] if v >= j else 0) + counts[k][v]
        counts = nxt
    total = math.comb(n + m, n)
    return sum(counts[n][v] for v in range(math.ceil(u - 1e-9), n * m + 1)) / total


def fisher_less(ref_ok, ref_n, cur_ok, cur_n):
    """One-sided p-value of Fisher's exact test that the current success
    fraction (cur_ok of cur_n) is lower than the reference's: the chance
    of cur_ok or fewer successes among cur_n drawn from all ref_n + cur_n
    trials with ref_ok + cur_ok successes."""
    total, good = ref_n + cur_n, ref_ok + cur_ok
    if not cur_n or not ref_n:
        return 1.0
    denom = math.comb(total, cur_n)
    return sum(math.comb(good, k) * math.comb(total - good, cur_n - k)
               for k in range(0, cur_ok + 1)) / denom


# ---- reading and comparing ---------------------------------------------------

def load(folder):
    """{(workload, crash_point): [row, ...]} of the resplice rows in
    folder/<workload>.csv; {} when there is none."""
    rows = []
    for w in WORKLOADS:
        p = os.path.join(folder, f"{w}.csv")
        if os.path.exists(p):
            with open(p, newline="") as f:
                rows += list(csv.DictReader(f))
    return common.group([r for r in rows if r.get("technique") == "resplice"], "workload", "crash_point")


def values(rows, metric):
    """The metric's numbers over the trials that completed."""
    return [v for v in (common.num(r.get(metric)) for r in rows if r.get("ok") == "1") if v is not None]


def compare(ref, cur):
    """One verdict per crash point and metric: dicts with group, metric,
    ref / cur (median, or masked as "k/n"), ratio, p, verdict ("ok",
    "faster", "REGRESSED", "MISSING").  Returns (lines, regressed)."""
    bound = ALPHA / max(1, sum(len(FLOORS) for g in ref if g in cur))     # the times' tests
    lines, regressed = [], False
    for g in sorted(ref, key=common.natural_key):
        name = "/".join(g)
        if g not in cur:
            lines.append(dict(group=name, metric="trials", ref=len(ref[g]), cur=0, ratio=None, p=None,
                              verdict="MISSING"))
            regressed = True
            continue
        r_ok = sum(1 for r in ref[g] if r.get("ok") == "1")
        c_ok = sum(1 for r in cur[g] if r.get("ok") == "1")
        p = fisher_less(r_ok, len(ref[g]), c_ok, len(cur[g]))
        bad = p < ALPHA
        regressed |= bad
        lines.append(dict(group=name, metric="masked", ref=f"{r_ok}/{len(ref[g])}", cur=f"{c_ok}/{len(cur[g])}",
                          ratio=None, p=p, verdict="REGRESSED" if bad else "ok"))
        for metric, floor in FLOORS.items():
            a, b = values(ref[g], metric), values(cur[g], metric)
            ma, mb = common.median(a), common.median(b)
            if ma is None or mb is None:
                lines.append(dict(group=name, metric=metric, ref=ma, cur=mb, ratio=None, p=None,
                                  verdict="ok" if ma is None else "MISSING"))
                regressed |= ma is not None
                continue
            p = mann_whitney_greater(a, b)
            slower = p < bound and mb > ma * (1 + GROWTH) and mb - ma > floor
            faster = mann_whitney_greater(b, a) < bound and ma > mb * (1 + GROWTH) and ma - mb > floor
            regressed |= slower
            lines.append(dict(group=name, metric=metric, ref=ma, cur=mb, ratio=mb / ma if ma else None, p=p,
                              verdict="REGRESSED" if slower else "faster" if faster else "ok"))
    return lines, regressed


def table(lines, out=sys.stdout):
    def cell(v, fmt):
        return "-" if v is None else fmt.format(v) if isinstance(v, float) else str(v)
    print(f"{'crash point':24s} {'metric':12s} {'reference':>10s} {'current':>10s} {'ratio':>6s} {'p':>9s}  verdict",
          file=out)
    for x in lines:
        print(f"{x['group']:24s} {x['metric']:12s} {cell(x['ref'], '{:.2f}'):>10s} {cell(x['cur'], '{:.2f}'):>10s} "
              f"{cell(x['ratio'], '{:.2f}'):>6s} {cell(x['p'], '{:.2g}'):>9s}  {x['verdict']}", file=out)


# ---- running ---------------------------------------------------------------------

def run_study(out, trials):
    """The fixed study into 'out' (out/<workload>.csv); returns its seconds."""
    work = out + ".study"
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, QUICK="1", TECHNIQUES="resplice", WORKLOADS=",".join(WORKLOADS), TRIALS=str(trials))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, os.path.join(common.ROOT, "experiments", "failover.py"), "--results", work],
                       env=env)
    if r.returncode:
        sys.exit(f"regress: the study failed (exit {r.returncode})")
    os.makedirs(out, exist_ok=True)
    for w in WORKLOADS:
        shutil.move(os.path.join(work, "failover", f"{w}.csv"), os.path.join(out, f"{w}.csv"))
    shutil.rmtree(work, ignore_errors=True)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default=REFERENCE)
    ap.add_argument("--current", help="compare this run (DIR/<workload>.csv) instead of running the study")
    ap.add_argument("--out", default=CURRENT, help="where the study's run goes (default results/regress)")
    ap.add_argument("--update", action="store_true", help="make the run the new reference")
    a = ap.parse_args()
    trials = common.trials(15, env={"TRIALS": os.environ.get("REGRESS_TRIALS", "")})
    seconds = None
    cur_dir = a.current
    if not cur_dir:
        cur_dir = a.out
        seconds = run_study(cur_dir, trials)
    cur = load(cur_dir)
    if not cur:
        sys.exit(f"regress: no resplice trials in {cur_dir}/<workload>.csv")
    if a.update:
        os.makedirs(a.reference, exist_ok=True)
        for w in WORKLOADS:
            src = os.path.join(cur_dir, f"{w}.csv")
            if os.path.exists(src):
                shutil.copy(src, os.path.join(a.reference, f"{w}.csv"))
        with open(os.path.join(a.reference, "machine.json"), "w") as f:
            json.dump({"machine": json.loads(common.machine()), "commit": common.git_commit(),
                       "trials": trials, "study_s": round(seconds, 1) if seconds else None,
                       "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"regress: the reference is now {a.reference} ({sum(len(v) for v in cur.values())} trials)")
        print(common.summary(regress="updated", groups=len(cur), study_s=seconds))
        return 0
    ref = load(a.reference)
    if not ref:
        print(f"regress: no reference in {a.reference} (make regress-update makes one)", file=sys.stderr)
        return 2
    lines, regressed = compare(ref, cur)
    table(lines)
    worst = max((x["ratio"] for x in lines if x["ratio"] is not None), default=None)
    print(common.summary(regress="REGRESSED" if regressed else "pass", groups=len(ref),
                         regressions=sum(1 for x in lines if x["verdict"] in ("REGRESSED", "MISSING")),
                         worst_ratio=worst, study_s=seconds))
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
