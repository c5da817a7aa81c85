"""The normal-operation benchmarks still run and still measure what they
claim (issue 17): bench-core finds every transaction of its damaged
connection, and bench-splice brings up each deployment, gets every
request answered and prints every figure with its ratio to direct (with
several rounds, the median of the rounds' ratios and their range).  They
never gate on time: only the shape of the results is checked."""
import os
import subprocess
import sys
import tempfile
import unittest

from emul.places import binary
from emul.testbed import leftovers
from experiments.bench_splice import round_ratios
from tests.integration.harness import needs_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def summary(out):
    line = [ln for ln in out.splitlines() if ln.startswith("summary: ")]
    return dict(kv.split("=", 1) for kv in line[-1].split()[1:]) if line else {}


class TestBenchCore(unittest.TestCase):
    def test_finds_every_transaction(self):
        r = subprocess.run([binary("bench_core"), "--txns", "300", "--rounds", "1", "--reorder", "10", "--dup", "5"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        s = summary(r.stdout)
        self.assertEqual(s.get("responses"), "300", r.stdout)
        self.assertGreater(int(s["ooo"]), 0, "no segment reached the ring out of order")
        self.assertGreater(int(s["dup"]), 0, "no duplicate reached the ring")
        self.assertGreater(float(s["mb_s"]), 0)

    def test_bad_option(self):
        r = subprocess.run([binary("bench_core"), "--txns", "0"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage:", r.stderr)


@needs_root
class TestBenchSplice(unittest.TestCase):
    def test_every_deployment_measured(self):
        with tempfile.TemporaryDirectory(prefix="rs-test-bench-") as out:
            env = dict(os.environ, REQS="32", ROUNDS="1",
                       DEPLOYMENTS="direct,nat,haproxy-tcp,splice,resplice,resplice-request,resplice-map")
            r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "bench_splice.py"), "--out", out],
                               capture_output=True, text=True, timeout=300, env=env)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-3000:])
            s = summary(r.stdout)
            for dep in ("nat", "haproxy_tcp", "splice", "resplice", "resplice_request", "resplice_map"):
                for fig in ("ka_p50_ms", "new_p99_ms", "close_p50_ms", "conns_per_s", "single_gbps", "parallel_gbps"):
                    self.assertRegex(s.get(f"x_{dep}_{fig}", ""), r"^\d+(\.\d+)?$", f"x_{dep}_{fig} in {s}")
            # Every component's CPU was read (the whole stack has all four).
            for comp in ("proxy", "logger", "stated", "app"):
                self.assertIn(f"cpu_req_resplice_{comp}", s)
            with open(os.path.join(out, "runs.csv")) as f:
                self.assertEqual(sum(1 for _ in f), 1 + 7 * 8)
        self.assertEqual(leftovers(), [])

    def test_rounds_give_ratio_ranges(self):
        """Two rounds: each ratio is the median of the rounds' own ratios,
        within the range printed beside it."""
        with tempfile.TemporaryDirectory(prefix="rs-test-bench-") as out:
            env = dict(os.environ, REQS="16", ROUNDS="2", DEPLOYMENTS="direct,splice")
            r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "bench_splice.py"), "--out", out],
                               capture_output=True, text=True, timeout=300, env=env)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-3000:])
            s = summary(r.stdout)
            self.assertEqual(s.get("rounds"), "2", s)
            for fig in ("ka_p50_ms", "new_p50_ms", "conns_per_s", "single_gbps"):
                lo, x, hi = (float(s[f"x_splice_{fig}{k}"]) for k in ("_lo", "", "_hi"))
                self.assertTrue(0 < lo <= x <= hi, (fig, lo, x, hi))
            with open(os.path.join(out, "runs.csv")) as f:
                self.assertEqual(sum(1 for _ in f), 1 + 2 * 2 * 8)
        self.assertEqual(leftovers(), [])

    def test_round_ratios(self):
        # Per round, not the ratio of the medians (8 / 2 = 4.0 here).
        self.assertEqual(round_ratios([2, 8, 30], [1, 2, 10]), (3.0, 2.0, 4.0))
        self.assertEqual(round_ratios([5, 6], [0, 3]), (2.0, 2.0, 2.0))     # a round with no base left out
        self.assertIsNone(round_ratios([5], [0]))


if __name__ == "__main__":
    unittest.main()


@needs_root
class TestBenchAuxlog(unittest.TestCase):
    def test_every_deployment_measured(self):
        """bench-auxlog times each deployment's conversations, prints each
        ratio within its range, and rs-auxlog recorded exactly the relayed
        and the tapped ones (the bench exits 1 otherwise)."""
        with tempfile.TemporaryDirectory(prefix="rs-test-bench-") as out:
            env = dict(os.environ, CONVS="10", ROUNDS="2")
            r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "bench_auxlog.py"), "--out", out],
                               capture_output=True, text=True, timeout=300, env=env)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-3000:])
            s = summary(r.stdout)
            self.assertEqual(s.get("convs"), "10", s)
            for dep in ("auxlog", "forward", "tap"):
                for fig in ("p50", "p99"):
                    lo, x, hi = (float(s[f"x_{dep}_{fig}{k}"]) for k in ("_lo", "", "_hi"))
                    self.assertTrue(0 < lo <= x <= hi, (dep, fig, lo, x, hi))
            for dep in ("auxlog", "tap"):       # /proc's ticks: 10 conversations may round to 0
                self.assertGreaterEqual(float(s[f"{dep}_cpu_s_per_1000"]), 0, s)
            with open(os.path.join(out, "summary.txt")) as f:
                self.assertEqual(summary(f.read()), s)
        self.assertEqual(leftovers(), [])
