"""make experiment-lan's and experiment-wan's pieces end to end, QUICK: each
driver (failover LAN and WAN, overhead) on the testbed with a few
techniques, then figures.py and report.py on what it wrote.  Asserts on content
(rows, columns, outcomes, the report's numbers against the CSV), never on
timing."""
import csv
import json
import os
import subprocess
import tempfile
import unittest

from emul.testbed import leftovers
from experiments import common
from tests.integration.harness import needs_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = "/usr/bin/python3"


@needs_root
class DriverCase(unittest.TestCase):
    """Runs one driver (QUICK, with 'env' and 'args') into a temporary
    results/ for the class, then figures.py and report.py on it."""
    driver, args, env = "failover.py", (), {}

    @classmethod
    def setUpClass(cls):
        assert leftovers() == [], leftovers()
        cls.tmp = tempfile.TemporaryDirectory(prefix="rs-exp-")
        cls.results = os.path.join(cls.tmp.name, "results")
        cls.plots = os.path.join(cls.tmp.name, "plots")
        cls.drv = subprocess.run([PY, os.path.join(ROOT, "experiments", cls.driver), "--results", cls.results]
                                 + list(cls.args), env=dict(os.environ, QUICK="1", **cls.env),
                                 capture_output=True, text=True, timeout=900)
        cls.fig, cls.rep = (subprocess.run([PY, os.path.join(ROOT, "experiments", tool), "--results", cls.results,
                                            "--plots", cls.plots], capture_output=True, text=True, timeout=300)
                            for tool in ("figures.py", "report.py"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        assert leftovers() == [], leftovers()


class ExperimentLan(DriverCase):
    """The LAN driver, QUICK, both workloads, a single backend and resplice."""
    env = {"TECHNIQUES": "none,resplice"}

    def rows(self, workload="roundcube"):
        with open(os.path.join(self.results, "failover", f"{workload}.csv")) as f:
            return list(csv.DictReader(f))

    def test_driver(self):
        self.assertEqual(self.drv.returncode, 0, self.drv.stdout[-3000:] + self.drv.stderr[-3000:])
        for wl, points in (("roundcube", ("mailbox-mid", "send")), ("refapp", ("static-mid", "update"))):
            rows = self.rows(wl)
            self.assertEqual(list(rows[0].keys()), list(common.FAILOVER_COLUMNS))
            # 2 techniques x 2 crash points x 1 trial.
            self.assertEqual(sorted((r["technique"], r["crash_point"]) for r in rows),
                             sorted((t, p) for t in ("none", "resplice") for p in points))
            for r in rows:
                self.assertEqual((r["study"], r["workload"]), ("failover", wl))
                self.assertIn("crash_at", json.loads(r["config"]))
                self.assertEqual(json.loads(r["config"])["timer_phase_s"], 0, "no detection timer")
                self.assertTrue(r["seed"])
                if r["technique"] == "resplice":
                    # Masked: completed, no error, nobody logged in again.
                    self.assertEqual((r["ok"], r["errors"], r["relogins"]), ("1", "0", "0"), r)
                    float(r["failover_ms"])         # a number: the action completed
                    self.assertTrue(r["recover_ms"], r)
                else:
                    # A single backend: the crash is the client's error.
                    self.assertEqual(r["ok"], "0", r)
                    self.assertGreaterEqual(int(r["errors"]), 1, r)
                    self.assertEqual(r["failover_ms"], "", r)
        last = self.drv.stdout.strip().splitlines()[-1]
        s = common.parse_summary(last)
        self.assertEqual((s["roundcube_resplice_ok"], s["refapp_resplice_ok"]), ("2", "2"), last)
        self.assertEqual((s["roundcube_none_ms"], s["refapp_none_ms"]), ("none", "none"), last)

    def test_figures_and_report(self):
        self.assertEqual(self.fig.returncode, 0, self.fig.stdout + self.fig.stderr)
        self.assertEqual(self.rep.returncode, 0, self.rep.stdout + self.rep.stderr)
        png = os.path.join(self.plots, "failover-time-roundcube-action2.png")
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(png), 1000)
        with open(os.path.join(self.results, "REPORT.md")) as f:
            report = f.read()
        rs = [r for r in self.rows() if r["technique"] == "resplice"]
        med = common.median([float(r["failover_ms"]) for r in rs])
        line = [l for l in report.splitlines() if l.startswith("| roundcube | action2 | resplice |")]
        self.assertEqual(len(line), 1, report)
        cells = [c.strip() for c in line[0].strip("|").split("|")]
        self.assertEqual(cells[3:6], ["2", "2", f"{med:.2f}"], line)
        self.assertIn("failover-time-roundcube-action2.png", report)
        line = [l for l in report.splitlines() if l.startswith("| refapp | action1 | resplice |")]
        self.assertEqual(len(line), 1, report)
        self.assertIn("failover-time-refapp-action2.png", report)
        # One resplice trial per crash point kept its client pcap: a timeline each.
        timelines = sorted(f for f in os.listdir(self.plots) if f.startswith("timeline-failover-"))
        self.assertEqual(timelines, sorted(f"timeline-failover-{w}-resplice-{p}.png" for w, p in (
            ("roundcube", "action2-mailbox-mid"), ("roundcube", "action2-send"),
            ("refapp", "action1-static-mid"), ("refapp", "action2-update"))))
        for t in timelines:
            with open(os.path.join(self.plots, t), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class ExperimentWan(DriverCase):
    """make experiment-wan's driver, QUICK: resplice over the 60 ms profile,
    one trial per workload; the WAN figure and the report's WAN table from it."""
    args, env = ("--study", "wan"), {"TECHNIQUES": "resplice", "PROFILES": "wan-60"}

    def test_wan(self):
        self.assertEqual(self.drv.returncode, 0, self.drv.stdout[-3000:] + self.drv.stderr[-3000:])
        self.assertEqual((self.fig.returncode, self.rep.returncode), (0, 0), self.fig.stderr + self.rep.stderr)
        with open(os.path.join(self.results, "REPORT.md")) as f:
            report = f.read()
        for wl, point in (("roundcube", "mailbox-mid"), ("refapp", "static-mid")):
            with open(os.path.join(self.results, "wan", f"{wl}.csv")) as f:
                rows = list(csv.DictReader(f))
            self.assertEqual(len(rows), 1)
            r = rows[0]
            self.assertEqual((r["study"], r["technique"], r["profile"], r["rtt_ms"], r["crash_point"], r["ok"]),
                             ("wan", "resplice", "wan-60", "60", point, "1"), r)
            png = os.path.join(self.plots, f"wan-failover-rtt-{wl}.png")
            with open(png, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
            line = [l for l in report.splitlines() if l.startswith(f"| {wl} | wan-60 |")]
            self.assertEqual(len(line), 1, report)
            self.assertIn(f"{float(r['failover_ms']):.2f} (1)", line[0])


class ExperimentOverhead(DriverCase):
    """The overhead driver, QUICK with three techniques and both workloads:
    rows per run and metric, the figure, and the report's overhead table;
    resplice-nostate (Roundcube without its state) for Roundcube only."""
    driver, env = "overhead.py", {"TECHNIQUES": "direct,resplice,resplice-nostate"}

    def test_overhead(self):
        self.assertEqual(self.drv.returncode, 0, self.drv.stdout[-3000:] + self.drv.stderr[-3000:])
        self.assertEqual((self.fig.returncode, self.rep.returncode), (0, 0), self.fig.stderr + self.rep.stderr)
        with open(os.path.join(self.results, "REPORT.md")) as f:
            report = f.read()
        s = common.parse_summary(self.drv.stdout.strip().splitlines()[-1])
        for wl in ("roundcube", "refapp"):
            with open(os.path.join(self.results, "overhead", f"{wl}.csv")) as f:
                rows = list(csv.DictReader(f))
            self.assertEqual(list(rows[0].keys()), list(common.OVERHEAD_COLUMNS))
            # techniques x (2 actions x 2 runs of latency + 2 of throughput).
            techs = ("direct", "resplice") + (("resplice-nostate",) if wl == "roundcube" else ())
            got = sorted((r["technique"], r["workload"], r["metric"]) for r in rows)
            want = sorted((t, f"{wl}-{a}", m) for t in techs for a, m in
                          (("action1", "latency_ms"), ("action2", "latency_ms"), ("action1", "throughput_mbps"))
                          for _ in range(2))
            self.assertEqual(got, want)
            self.assertTrue(all(float(r["value"]) > 0 for r in rows), rows)
            with open(os.path.join(self.plots, f"overhead-latency_ms-{wl}-action2.png"), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
            med = common.median([float(r["value"]) for r in rows if r["technique"] == "resplice"
                                 and r["workload"] == f"{wl}-action2"])
            line = [l for l in report.splitlines() if l.startswith(f"| {wl}-action2 | latency_ms | resplice |")]
            self.assertEqual(len(line), 1, report)
            self.assertIn(f"| {med:.2f} |", line[0])
            self.assertIn(f"{wl}_resplice_ratio", s)
        self.assertIn("roundcube_resplice_nostate_ratio", s)
        self.assertNotIn("refapp_resplice_nostate_ratio", s)


class ExperimentRequestTimes(DriverCase):
    """Where Action 2's time goes (experiments/request_times.py), QUICK,
    direct and resplice, one round: a row per request and run; each PHP
    request cut in three parts that add up to its time at the client,
    static files in none; the summary names each technique's parts."""
    driver, env = "request_times.py", {"TECHNIQUES": "direct,resplice", "ROUNDS": "1"}

    def test_parts(self):
        self.assertEqual(self.drv.returncode, 0, self.drv.stdout[-3000:] + self.drv.stderr[-3000:])
        with open(os.path.join(self.results, "request-times", "roundcube-action2.csv")) as f:
            rows = list(csv.DictReader(f))
        # 2 techniques x 2 runs x Action 2's 17 requests.
        self.assertEqual(len(rows), 2 * 2 * 17)
        for r in rows:
            static = r["target"].startswith("/program/")
            self.assertEqual(r["app_ms"] == "", static, r)
            if not static:
                parts = [float(r[f"{p}_ms"]) for p in ("in", "app", "after")]
                self.assertTrue(all(p > 0 for p in parts), r)
                self.assertAlmostEqual(sum(parts), float(r["ms"]), delta=0.01)
        s = common.parse_summary(self.drv.stdout.strip().splitlines()[-1])
        for t in ("direct", "resplice"):
            for k in ("ms", "ratio", "in_ms", "app_ms", "after_ms"):
                self.assertIn(f"{t}_{k}", s)
        self.assertEqual(s["direct_ratio"], "1")


class TechniqueTimers(unittest.TestCase):
    """The period each technique's trials spread the client's start over
    (its slowest detection timer)."""

    def test_timer_periods(self):
        from experiments.techniques import TECHNIQUES
        got = {n: t(None, None, None).timer_period for n, t in TECHNIQUES.items()}
        self.assertEqual(got, {"none": 0, "browser": 0, "browser-shared": 0, "haproxy": 2.0,
                               "haproxy-tuned": 0.1, "vrrp": 1.0, "vrrp-tuned": 1.0, "resplice": 0})


class NoStateDeployment(unittest.TestCase):
    """resplice-nostate deploys both backends' Roundcube without the
    resplice plugin (no state, no tracking); resplice with it."""

    def test_plugin_left_out(self):
        from types import SimpleNamespace
        from unittest import mock
        from experiments.techniques import COST_ONLY, Resplice
        from experiments.workloads import RoundcubeWorkload
        tb = SimpleNamespace(topo=SimpleNamespace(spare=False))
        wl = RoundcubeWorkload.__new__(RoundcubeWorkload)
        wl.tb, wl.dir, wl.ms, wl.aux = tb, tempfile.gettempdir(), object(), SimpleNamespace(tap=True)
        for cls, plugins in ((COST_ONLY["resplice-nostate"], []), (Resplice, ["resplice"])):
            with mock.patch("emul.stack.Stack"), mock.patch("roundcube.deploy.ResplicedRoundcube.start",
                                                            lambda self: self):
                t = cls(tb, tempfile.gettempdir(), wl).start(None)
            self.assertEqual({h: rc.settings().get("plugins") for h, rc in t.rr.rc.items()},
                             {"primary": plugins, "alternate": plugins}, cls.name)


class ForgetEarlier(unittest.TestCase):
    def test_only_that_workloads_files(self):
        from experiments.failover import forget_earlier
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "timeline"))
            names = ["refapp.csv", "roundcube.csv", "timeline/refapp-resplice-a.pcap",
                     "timeline/refapp-resplice-a.timeline.json", "timeline/roundcube-resplice-a.pcap"]
            for n in names:
                open(os.path.join(d, n), "w").close()
            forget_earlier(d, "refapp")
            self.assertEqual(sorted(os.listdir(d)), ["roundcube.csv", "timeline"])
            self.assertEqual(os.listdir(os.path.join(d, "timeline")), ["roundcube-resplice-a.pcap"])
            forget_earlier(os.path.join(d, "nothing-here"), "refapp")     # no folder: nothing to do


if __name__ == "__main__":
    unittest.main()
