"""make regress (experiments/regress.py): its two exact tests against brute
force, its verdicts on made-up trials (the same trials pass; slower,
masking less or a missing crash point fail; a shift under the floors or
faster passes), the command's exit status, and end to end on the testbed: a
short real study passes against itself and fails against a reference
made faster (an injected regression)."""
import csv
import itertools
import math
import os
import random
import shutil
import subprocess
import tempfile
import unittest

from emul.testbed import leftovers
from experiments import common
from experiments.regress import WORKLOADS, compare, fisher_less, mann_whitney_greater
from tests.integration.harness import needs_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGRESS = os.path.join(ROOT, "experiments", "regress.py")
PY = "/usr/bin/python3"
TIMES = ("failover_ms", "stall_ms", "detect_ms", "recover_ms")


def brute_mw(ref, cur):
    """P(U >= observed) over every way of splitting the pooled values."""
    def u(c, r):
        return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in c for y in r)
    pooled, obs = ref + cur, u(cur, ref)
    splits = list(itertools.combinations(range(len(pooled)), len(cur)))
    hits = sum(1 for idx in splits
               if u([pooled[i] for i in idx], [pooled[i] for i in range(len(pooled)) if i not in idx]) >= obs - 1e-9)
    return hits / len(splits)


def trials(workload, point, n, failover=20.0, detect=1.0, recover=3.0, ok=None, seed=1):
    """n made-up resplice trials of one crash point, times spread +-10%."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        good = ok is None or k < ok
        row = dict(workload=workload, crash_point=point, technique="resplice", trial=str(k), ok="1" if good else "0")
        for m, v in zip(TIMES, (failover, failover + 5, detect, recover)):
            row[m] = f"{v * rng.uniform(0.9, 1.1):.3f}" if good else ""
        rows.append(row)
    return rows


def grouped(*row_lists):
    return common.group([r for rows in row_lists for r in rows], "workload", "crash_point")


class Tests(unittest.TestCase):
    def test_mann_whitney_exact(self):
        rng = random.Random(7)
        for n, m in ((1, 1), (2, 3), (3, 3), (4, 5), (5, 4)):
            for _ in range(5):
                ref = [rng.uniform(0, 10) for _ in range(m)]      # no ties: the test's table assumes none
                cur = [rng.uniform(0, 10) for _ in range(n)]
                self.assertAlmostEqual(mann_whitney_greater(ref, cur), brute_mw(ref, cur), places=12,
                                       msg=(ref, cur))
        self.assertAlmostEqual(mann_whitney_greater(list(range(10)), list(range(10, 20))), 1 / math.comb(20, 10))
        self.assertEqual(mann_whitney_greater([], [1.0]), 1.0)

    def test_fisher_exact(self):
        for ref_ok, ref_n, cur_ok, cur_n in ((10, 10, 5, 10), (3, 5, 1, 4), (0, 3, 0, 3), (7, 9, 9, 9)):
            good, total = ref_ok + cur_ok, ref_n + cur_n
            want = sum(math.comb(good, k) * math.comb(total - good, cur_n - k)
                       for k in range(cur_ok + 1)) / math.comb(total, cur_n)
            self.assertAlmostEqual(fisher_less(ref_ok, ref_n, cur_ok, cur_n), want)
        self.assertAlmostEqual(fisher_less(10, 10, 5, 10), 3003 / 184756)


class Verdicts(unittest.TestCase):
    ref = grouped(trials("refapp", "update", 10, seed=1), trials("roundcube", "send", 10, failover=70, seed=2))

    def verdicts(self, cur):
        lines, regressed = compare(self.ref, cur)
        return {(x["group"], x["metric"]): x["verdict"] for x in lines}, regressed

    def test_same_passes(self):
        v, regressed = self.verdicts(grouped(trials("refapp", "update", 10, seed=3),
                                             trials("roundcube", "send", 10, failover=70, seed=4)))
        self.assertFalse(regressed, v)
        self.assertEqual(set(v.values()), {"ok"})

    def test_slower_failover_regresses(self):
        v, regressed = self.verdicts(grouped(trials("refapp", "update", 10, seed=3),
                                             trials("roundcube", "send", 10, failover=140, seed=4)))
        self.assertTrue(regressed)
        self.assertEqual(v[("roundcube/send", "failover_ms")], "REGRESSED")
        self.assertEqual(v[("refapp/update", "failover_ms")], "ok")

    def test_small_shift_under_the_floor_passes(self):
        # detect 1.0 -> 1.4 ms: 40% slower and significant, but under 0.5 ms.
        v, regressed = self.verdicts(grouped(trials("refapp", "update", 10, detect=1.4, seed=3),
                                             trials("roundcube", "send", 10, failover=70, seed=4)))
        self.assertFalse(regressed, v)

    def test_masking_less_regresses(self):
        v, regressed = self.verdicts(grouped(trials("refapp", "update", 10, ok=4, seed=3),
                                             trials("roundcube", "send", 10, failover=70, seed=4)))
        self.assertTrue(regressed)
        self.assertEqual(v[("refapp/update", "masked")], "REGRESSED")

    def test_missing_point_regresses_faster_passes(self):
        v, regressed = self.verdicts(grouped(trials("refapp", "update", 10, failover=5, recover=1, seed=3)))
        self.assertTrue(regressed)
        self.assertEqual(v[("roundcube/send", "trials")], "MISSING")
        self.assertEqual(v[("refapp/update", "failover_ms")], "faster")


def write(folder, groups):
    os.makedirs(folder, exist_ok=True)
    by_w = {}
    for rows in groups.values():
        for r in rows:
            by_w.setdefault(r["workload"], []).append(r)
    for w, rows in by_w.items():
        with open(os.path.join(folder, f"{w}.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            wr.writeheader()
            wr.writerows(rows)


class Command(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-regress-")
        self.addCleanup(self.tmp.cleanup)

    def run_cmd(self, *args):
        return subprocess.run([PY, REGRESS] + list(args), capture_output=True, text=True, timeout=120)

    def test_exit_status(self):
        ref, same, slow = (os.path.join(self.tmp.name, n) for n in ("ref", "same", "slow"))
        write(ref, grouped(trials("refapp", "update", 10, seed=1)))
        write(same, grouped(trials("refapp", "update", 10, seed=2)))
        write(slow, grouped(trials("refapp", "update", 10, recover=9.0, seed=2)))
        r = self.run_cmd("--current", same, "--reference", ref)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("summary: regress=pass", r.stdout)
        r = self.run_cmd("--current", slow, "--reference", ref)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"refapp/update\s+recover_ms .* REGRESSED")
        self.assertIn("summary: regress=REGRESSED", r.stdout)
        r = self.run_cmd("--current", same, "--reference", os.path.join(self.tmp.name, "none"))
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("make regress-update", r.stderr)


@needs_root
class EndToEnd(unittest.TestCase):
    """The real short study (7 trials a crash point: the fewest with which
    the exact test can reach the Bonferroni bound), then the comparison:
    against itself it passes; against a reference whose times are a third
    of its own (what a regression to 3x looks like) it fails."""

    def test_study_then_compare(self):
        self.assertEqual(leftovers(), [])
        with tempfile.TemporaryDirectory(prefix="rs-regress-") as tmp:
            run = os.path.join(tmp, "run")
            r = subprocess.run([PY, REGRESS, "--out", run, "--reference", run + "-none"],
                               env=dict(os.environ, REGRESS_TRIALS="7"), capture_output=True, text=True, timeout=900)
            self.assertEqual(r.returncode, 2, r.stdout[-2000:] + r.stderr[-2000:])   # no reference yet
            for w in WORKLOADS:
                with open(os.path.join(run, f"{w}.csv")) as f:
                    rows = list(csv.DictReader(f))
                self.assertEqual(len(rows), 14, w)      # 2 crash points x 7 trials
                self.assertTrue(all(r["technique"] == "resplice" for r in rows))
            r = subprocess.run([PY, REGRESS, "--current", run, "--reference", run], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            fast = os.path.join(tmp, "fast")
            shutil.copytree(run, fast)
            for w in WORKLOADS:
                p = os.path.join(fast, f"{w}.csv")
                with open(p) as f:
                    rows = list(csv.DictReader(f))
                for row in rows:
                    for m in TIMES:
                        if common.num(row[m]) is not None:
                            row[m] = f"{common.num(row[m]) / 3:.3f}"
                with open(p, "w", newline="") as f:
                    wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                    wr.writeheader()
                    wr.writerows(rows)
            r = subprocess.run([PY, REGRESS, "--current", run, "--reference", fast], capture_output=True, text=True)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("REGRESSED", r.stdout)
        self.assertEqual(leftovers(), [])


if __name__ == "__main__":
    unittest.main()
