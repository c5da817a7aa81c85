"""Studies clean up after themselves and go on after an interruption:
the LAN failover study and the fault campaign, cut short (their last rows
dropped, as Ctrl-C leaves them), run again with RESUME=1 run only the
missing trials and keep the others as they were; neither leaves its run
directory in /tmp unless KEEP=1 (common.WorkDir, unit-tested in
test_experiment_outputs)."""
import csv
import glob
import os
import subprocess
import sys
import tempfile
import unittest

from emul.places import ROOT, build_dir
from emul.testbed import leftovers
from tests.integration.harness import needs_root

PY = "/usr/bin/python3"


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cut(path, keep):
    """Keeps the header and the first 'keep' rows of CSV 'path'."""
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(lines[:1 + keep])


@needs_root
class Resume(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [])
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-hygiene-")
        self.addCleanup(self.tmp.cleanup)
        os.chmod(self.tmp.name, 0o755)

    def run_study(self, cmd, env):
        r = subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)
        self.assertIn(r.returncode, (0, 1), r.stdout[-3000:] + r.stderr[-3000:])
        return r

    def test_failover_study_resumes_and_cleans_up(self):
        before = set(glob.glob("/tmp/rs-failover-*"))
        cmd = [PY, os.path.join(ROOT, "experiments", "failover.py"), "--results", self.tmp.name]
        env = {"QUICK": "1", "TECHNIQUES": "resplice", "WORKLOADS": "refapp", "TRIALS": "2"}
        self.run_study(cmd, env)
        table = os.path.join(self.tmp.name, "failover", "refapp.csv")
        first = rows(table)
        self.assertEqual(len(first), 4)                 # 2 crash points x 2 trials
        self.assertEqual(set(glob.glob("/tmp/rs-failover-*")), before, "the run directory was left behind")
        cut(table, 1)
        r = self.run_study(cmd, dict(env, RESUME="1"))
        self.assertIn("resuming, 1 trials already in", r.stderr)
        again = rows(table)
        self.assertEqual(again[0], first[0], "a finished trial was run again")
        self.assertEqual(sorted((x["crash_point"], x["trial"]) for x in again),
                         sorted((x["crash_point"], x["trial"]) for x in first))
        # The progress lines count the three missing trials and one baseline.
        self.assertRegex(r.stderr, r"\[\s*4/4\] refapp lan resplice")
        self.assertEqual(leftovers(), [])

    def test_fault_campaign_resumes(self):
        san = os.path.join(build_dir(), "san")
        self.assertTrue(os.access(os.path.join(san, "rs-proxy"), os.X_OK), f"no sanitized build in {san}: make san")
        out = os.path.join(self.tmp.name, "faults")
        cmd = [sys.executable, os.path.join(ROOT, "experiments", "fault_campaign.py"), "--build", san, "--out", out]
        env = {"FAULTS": "none,process", "WORKLOADS": "refapp-1", "TRIALS": "1", "SEED": "3"}
        self.run_study(cmd, env)
        table = os.path.join(out, "trials.csv")
        first = rows(table)
        self.assertEqual([x["fault"] for x in first], ["none", "process"])
        cut(table, 1)
        r = self.run_study(cmd, dict(env, RESUME="1"))
        self.assertIn("resuming, 1 trials already in", r.stdout)
        again = rows(table)
        self.assertEqual(again[0], first[0], "a finished trial was run again")
        self.assertEqual([x["fault"] for x in again], ["none", "process"])
        self.assertEqual(again[1]["moment_ms"], first[1]["moment_ms"], "the same seed draws the same moment")
        self.assertEqual(r.stdout.strip().splitlines()[-1].split()[1], "trials=2")
        self.assertEqual(leftovers(), [])


if __name__ == "__main__":
    unittest.main()
