"""Tests of the experiment tooling without Mininet: experiments/common.py
(CSV rows, statistics, TRIALS/QUICK, progress line, summary line),
experiments/baselines.py (the configs pass the real haproxy and keepalived
checkers), experiments/figures.py and report.py on synthetic results (every
figure drawn as a real PNG, REPORT.md's tables equal to statistics computed
here from the CSVs, a missing study reported as missing)."""
import csv
import io
import json
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXP = os.path.join(ROOT, "experiments")
sys.path.insert(0, EXP)

import baselines  # noqa: E402
import common  # noqa: E402
import figures  # noqa: E402
import report  # noqa: E402

PY = "/usr/bin/python3"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- independent reference statistics (stdlib, not experiments/common) ----

def ref_quantile(values, p):
    """Type-7 quantile via statistics.quantiles(method='inclusive')."""
    x = sorted(values)
    if not x:
        return None
    if len(x) == 1:
        return x[0]
    if p == 0.5:
        return statistics.median(x)
    return statistics.quantiles(x, n=100, method="inclusive")[round(p * 100) - 1]


def f2(x):
    return "–" if x is None else f"{x:.2f}"


# ---- synthetic inputs --------------------------------------------------------

TECHS = ["none", "browser", "haproxy", "haproxy-tuned", "vrrp-tuned", "resplice"]
BASE_MS = {"none": None, "browser": 3000, "haproxy": 6000, "haproxy-tuned": 250,
           "vrrp-tuned": 400, "resplice": 40}


def write_failover(results, rnd):
    """Failover rows over two CSV files (drivers may write one per run)."""
    paths = [os.path.join(results, "failover", n) for n in ("run-a.csv", "run-b.csv")]
    ws = [common.RowWriter(p, "failover", config={"driver": "synthetic"}) for p in paths]
    seed = 1000
    for wl in ("refapp", "roundcube"):
        for action in ("action1", "action2"):
            for tech in TECHS:
                for cp in ("mid-response", "between"):
                    n = 3 if tech != "haproxy-tuned" else (1 if cp == "between" else 2)
                    for trial in range(n):
                        seed += 1
                        base = BASE_MS[tech]
                        fo = None if base is None else round(base * (0.5 + rnd.random()), 3)
                        ws[seed % 2].write(
                            workload=wl, action=action, technique=tech, crash_point=cp, trial=trial,
                            seed=seed, ok=int(fo is not None and rnd.random() > 0.2), failover_ms=fo,
                            stall_ms=None if fo is None else round(fo + 20 * rnd.random(), 3),
                            action_ms=round(500 + rnd.random() * 100, 3), errors=rnd.randint(0, 3),
                            relogins=rnd.randint(0, 1) if tech == "browser" else 0,
                            detect_ms=None if fo is None else fo / 2, recover_ms=None,
                            profile="lan", rtt_ms=0.2, loss_pct=0,
                            config={"technique": tech, "crash_point": cp})
    # A crash-free row: it counts as a trial but has no failover time.
    ws[0].write(workload="refapp", action="action1", technique="resplice", crash_point="none",
                trial=9, seed=1, ok=1, failover_ms=None, errors=0, relogins=0, profile="lan",
                rtt_ms=0.2, loss_pct=0)
    for w in ws:
        w.close()
    return paths


WAN_PROFILES = [("lan", 0.2, 0), ("wan60", 60, 0), ("wan250", 250, 1), ("wan300", 300, 2)]


def write_wan(results, rnd):
    p = os.path.join(results, "wan", "trials.csv")
    with common.RowWriter(p, "wan") as w:
        for prof, rtt, loss in WAN_PROFILES:
            for tech in ("haproxy-tuned", "vrrp", "resplice"):
                for trial in range(4 if prof != "wan300" else 1):
                    w.write(workload="refapp", action="action2", technique=tech,
                            crash_point="mid-response", trial=trial, seed=trial + 7, ok=1,
                            failover_ms=round(BASE_MS.get(tech, 3600) + 2 * rtt + rnd.random() * 50, 3),
                            stall_ms=round(BASE_MS.get(tech, 3600) + rnd.random() * 50, 3),
                            errors=0, relogins=0, profile=prof, rtt_ms=rtt, loss_pct=loss)
    return p


def write_overhead(results, rnd):
    p = os.path.join(results, "overhead", "overhead.csv")
    with common.RowWriter(p, "overhead") as w:
        for tech in ("none", "haproxy", "resplice"):
            for trial in range(5):
                w.write(technique=tech, workload="refapp", metric="latency_ms",
                        value=round(0.2 + rnd.random(), 4), trial=trial, seed=trial, profile="lan")
                w.write(technique=tech, workload="refapp", metric="throughput_mbps",
                        value=round(900 + rnd.random() * 100, 2), trial=trial, seed=trial, profile="lan")
    return p


def write_faults(results):
    """A campaign's table: 2 faults x 2 workloads, 4 trials each; one
    violation, two clean ends."""
    p = os.path.join(results, "faults", "trials.csv")
    with common.RowWriter(p, "faults") as w:
        n = 0
        for fault in ("none", "alternate-in-recovery"):
            for wl in ("refapp-1", "refapp-50"):
                for trial in range(4):
                    verdict = "masked"
                    if fault != "none" and trial < 1 + (wl == "refapp-1"):
                        verdict = "violation" if (wl, trial) == ("refapp-50", 0) else "clean_end"
                    w.write(fault=fault, workload=wl, load=1 if wl == "refapp-1" else 50, trial=trial, seed=n,
                            verdict=verdict, reason="hang" if verdict == "violation" else "",
                            kept="violations/x" if verdict == "violation" else "")
                    n += 1
    return p


def write_nospof(results):
    """The proxy-failure study: 2 techniques x (none, proxy-kill), 3
    trials each.  resplice: stalls 10, 12, 14 ms crash-free and 15, 16, 400
    ms with the fault, all masked; haproxy-vrrp: 10 ms crash-free, 700,
    800, 900 ms with the fault, none masked, two completed."""
    p = os.path.join(results, "nospof", "trials.csv")
    stalls = {("resplice", "none"): (10, 12, 14), ("resplice", "proxy-kill"): (15, 16, 400),
              ("haproxy-vrrp", "none"): (10, 10, 10), ("haproxy-vrrp", "proxy-kill"): (700, 800, 900)}
    with common.RowWriter(p, "nospof") as w:
        n = 0
        for (tech, fault), st in stalls.items():
            for trial, stall in enumerate(st):
                masked = int(tech == "resplice" or fault == "none")
                w.write(technique=tech, fault=fault, trial=trial, seed=n, masked=masked,
                        completed=int(masked or trial < 2), stall_ms=stall, connections=1, cut=1 - masked,
                        hung=0, requests=3)
                n += 1
    return p


def pcap_bytes(segments, linktype=1):
    """A classic little-endian pcap (µs) of IPv4/TCP 'segments': (t, src,
    sport, dst, dport, seq, flags, payload_len); payloads are cut at a
    96-byte snaplen as tcpdump -s 96 would."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, linktype)]
    for t, src, sport, dst, dport, seq, flags, plen in segments:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
        total = 20 + len(tcp) + plen
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0,
                         bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
        frame = b"\x00" * 12 + b"\x08\x00" + ip + tcp + b"x" * plen
        cap = frame[:96]
        sec = int(t)
        out.append(struct.pack("<IIII", sec, int(round((t - sec) * 1e6)), len(cap), len(frame)) + cap)
    return b"".join(out)


SRV, CLI = ("10.0.0.100", 80), ("10.0.0.1", 40000)
ISN = 2**32 - 2500          # the client-side seq wraps inside the transfer


def timeline_segments():
    segs = [(100.0, CLI[0], CLI[1], SRV[0], SRV[1], 7, 0x02, 0),
            (100.001, SRV[0], SRV[1], CLI[0], CLI[1], ISN, 0x12, 0),
            (100.002, CLI[0], CLI[1], SRV[0], SRV[1], 8, 0x10, 0)]
    t, seq = 100.01, ISN + 1
    for i in range(10):     # before the crash
        segs.append((t, SRV[0], SRV[1], CLI[0], CLI[1], seq % 2**32, 0x18, 1000))
        segs.append((t + 0.0005, CLI[0], CLI[1], SRV[0], SRV[1], 8, 0x10, 0))
        t, seq = t + 0.01, seq + 1000
    t += 0.3                # the stall
    for i in range(10):     # after the re-splice
        segs.append((t, SRV[0], SRV[1], CLI[0], CLI[1], seq % 2**32, 0x18, 1000))
        t, seq = t + 0.01, seq + 1000
    segs.append((t, SRV[0], SRV[1], CLI[0], CLI[1], seq % 2**32, 0x11, 0))
    return segs


def write_timeline(results, study="failover"):
    d = os.path.join(results, study, "run", "resplice-0")
    os.makedirs(d)
    with open(os.path.join(d, "c1.pcap"), "wb") as f:
        f.write(pcap_bytes(timeline_segments()))
    with open(os.path.join(d, "trial0.timeline.json"), "w") as f:
        json.dump({"pcap": "c1.pcap", "server": "10.0.0.100:80", "title": "resplice action2 trial 0",
                   "marks": {"crash": 100.115, "detect": 100.2, "resend": 100.3, "resplice": 100.4}}, f)
    # A window with no data segment inside (a crash before a response's
    # first byte): the figure widens it to the segments around it.
    with open(os.path.join(d, "trial1.timeline.json"), "w") as f:
        json.dump({"pcap": "c1.pcap", "marks": {"crash": 100.15, "resplice": 100.25},
                   "xrange": [100.14, 100.26]}, f)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        return None
    return struct.unpack("!II", head[16:24])


def md_table(text, first_header):
    """The rows (lists of cells) of the markdown table whose header starts
    with 'first_header' after a given section."""
    lines = text.splitlines()
    for i, l in enumerate(lines):
        if l.startswith("| " + first_header + " |"):
            rows = []
            for r in lines[i + 2:]:
                if not r.startswith("|"):
                    break
                rows.append([c.strip() for c in r.strip().strip("|").split("|")])
            header = [c.strip() for c in l.strip().strip("|").split("|")]
            return header, rows
    raise AssertionError(f"no table starting with {first_header!r}")


def section(text, study):
    m = re.search(r"^## .*\(study `%s`\)$(.*?)(?=^## |\Z)" % study, text, re.M | re.S)
    assert m, f"no section for {study}"
    return m.group(1)


class Statistics(unittest.TestCase):
    def test_known_values(self):
        self.assertIsNone(common.percentile([], 0.5))
        self.assertEqual(common.stats([])["n"], 0)
        self.assertIsNone(common.stats([])["median"])
        # n = 1: every percentile is the value.
        for p in (0, 0.05, 0.5, 0.95, 1):
            self.assertEqual(common.percentile([7.5], p), 7.5)
        # Even n: the median is the mean of the middle two.
        self.assertEqual(common.median([4, 1, 3, 2]), 2.5)
        self.assertEqual(common.median([1, 2, 3]), 2)
        # Type 7 on 1..10: h = 9p.
        x = list(range(1, 11))
        self.assertAlmostEqual(common.percentile(x, 0.95), 9.55)
        self.assertAlmostEqual(common.percentile(x, 0.05), 1.45)
        self.assertEqual(common.percentile(x, 0), 1)
        self.assertEqual(common.percentile(x, 1), 10)
        # Two values: p95 = a + 0.95 (b - a).
        self.assertAlmostEqual(common.percentile([10, 20], 0.95), 19.5)
        # None entries are ignored, order does not matter.
        st = common.stats([None, 3, None, 1, 2])
        self.assertEqual((st["n"], st["median"], st["min"], st["max"]), (3, 2, 1, 3))
        with self.assertRaises(ValueError):
            common.percentile([1], 1.5)

    def test_against_stdlib(self):
        rnd = random.Random(5)
        for n in (2, 3, 4, 7, 20, 101):
            x = [rnd.uniform(0, 1000) for _ in range(n)]
            for p in (0.05, 0.5, 0.95):
                self.assertAlmostEqual(common.percentile(x, p), ref_quantile(x, p), places=9)

    def test_num(self):
        self.assertIsNone(common.num(""))
        self.assertIsNone(common.num("x"))
        self.assertIsNone(common.num("nan"))
        self.assertEqual(common.num("2.5"), 2.5)


class Environment(unittest.TestCase):
    def test_trials_and_quick(self):
        self.assertEqual(common.trials(10, env={}), 10)
        self.assertEqual(common.trials(10, env={"QUICK": "1"}), 1)
        self.assertEqual(common.trials(10, quick_default=2, env={"QUICK": "yes"}), 2)
        self.assertEqual(common.trials(10, env={"QUICK": "0"}), 10)
        self.assertEqual(common.trials(10, env={"TRIALS": "4", "QUICK": "1"}), 4)
        for bad in ("0", "-3", "x", "2.5"):
            with self.assertRaises(ValueError):
                common.trials(10, env={"TRIALS": bad})
        self.assertFalse(common.quick({"QUICK": "false"}))
        self.assertTrue(common.quick({"QUICK": "1"}))


class ProgressAndSummary(unittest.TestCase):
    def test_progress_line_and_eta(self):
        now = [0.0]
        out = io.StringIO()
        p = common.Progress(40, stream=out, clock=lambda: now[0])
        first = p.step("resplice action2 crash=send trial 0")
        self.assertEqual(first, "[  1/40] resplice action2 crash=send trial 0  elapsed 0:00  eta ?")
        # 6 steps done in 41 s: 34 left including the 7th -> 41/6*34 = 232.3 s.
        for i in range(5):
            p.step(f"s{i}")
        now[0] = 41.0
        line = p.step("resplice action2 crash=send trial 3")
        self.assertEqual(line, "[  7/40] resplice action2 crash=send trial 3  elapsed 0:41  eta 3:52")
        self.assertEqual(out.getvalue().splitlines()[-1], line)
        self.assertEqual(len(out.getvalue().splitlines()), 7)
        # Hours, and a total wider than three digits.
        now[0] = 0
        p = common.Progress(1200, stream=io.StringIO(), clock=lambda: now[0])
        p.step("a")
        now[0] = 3725
        self.assertTrue(p.line("b").startswith("[   2/1200] b  elapsed 1:02:05  eta "))
        # 1 step in 3725 s, 1199 left.
        self.assertTrue(p.line("b").endswith("eta " + common.fmt_duration(3725 * 1199)))
        self.assertEqual(common.fmt_duration(59.6), "1:00")
        self.assertEqual(common.fmt_duration(None), "?")

    def test_summary(self):
        s = common.summary(("trials", 40), ok=39, median_ms=12.3456, p95_ms=None, technique="a b", x=2.0)
        self.assertEqual(s, "summary: trials=40 ok=39 median_ms=12.346 p95_ms=na technique=a_b x=2")
        self.assertEqual(common.parse_summary(s)["median_ms"], "12.346")
        with self.assertRaises(ValueError):
            common.parse_summary("nope")


class WorkDirs(unittest.TestCase):
    """common.WorkDir: a study's /tmp directory goes at the end unless
    KEEP=1, the study failed or a trial asked to keep it; a kept one is
    named."""

    def work(self, env, fail=False, keep=None):
        out = io.StringIO()
        try:
            with common.WorkDir("rs-test-workdir-", env=env, stream=out) as w:
                with open(os.path.join(w.path, "trial.log"), "w") as f:
                    f.write("evidence")
                if keep:
                    w.keep(keep)
                if fail:
                    raise RuntimeError("boom")
        except RuntimeError:
            pass
        kept = os.path.isdir(w.path)
        if kept:
            self.addCleanup(shutil.rmtree, w.path, True)
        return kept, out.getvalue(), w.path

    def test_removed_unless_kept(self):
        kept, said, _ = self.work({})
        self.assertFalse(kept)
        self.assertEqual(said, "")
        for env, fail, keep, why in (({"KEEP": "1"}, False, None, "KEEP=1"),
                                     ({}, True, None, "the study failed (RuntimeError)"),
                                     ({}, False, "trial 3 not masked", "trial 3 not masked")):
            kept, said, path = self.work(env, fail, keep)
            self.assertTrue(kept, why)
            self.assertTrue(os.path.exists(os.path.join(path, "trial.log")))
            self.assertIn(f"run directory kept: {path} ({why}", said)


class RowWriting(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rs-exp-rows.")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_stamps_and_refusals(self):
        p = os.path.join(self.tmp, "failover", "x.csv")
        with common.RowWriter(p, "failover", config={"a": 1, "profile": "lan"}) as w:
            w.write(workload="refapp", action="action1", technique="resplice", crash_point="between",
                    trial=0, seed=42, ok=True, failover_ms=12.5, config={"b": [1, 2]})
            with self.assertRaises(ValueError):
                w.write(workload="refapp", bogus=1, seed=1)
            with self.assertRaises(ValueError):
                w.write(workload="refapp")              # no seed
        rows = common.read_rows(self.tmp, "failover")
        self.assertEqual(len(rows), 1)
        r = rows[0]
        self.assertEqual(list(r), common.FAILOVER_COLUMNS)
        self.assertEqual((r["study"], r["seed"], r["ok"], r["failover_ms"], r["detect_ms"]),
                         ("failover", "42", "1", "12.5", ""))
        self.assertEqual(json.loads(r["config"]), {"a": 1, "b": [1, 2], "profile": "lan"})
        m = json.loads(r["machine"])
        self.assertEqual(set(m), {"host", "kernel", "nproc"})
        self.assertEqual(m["nproc"], os.cpu_count())
        self.assertRegex(r["commit"], r"^([0-9a-f]{12}|unknown)$")
        self.assertRegex(r["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        # Appending keeps one header; a different schema is refused.
        with common.RowWriter(p, "failover") as w:
            w.write(seed=43)
        with open(p) as f:
            self.assertEqual(sum(1 for l in f if l.startswith("study,")), 1)
        with self.assertRaises(ValueError):
            common.RowWriter(p, "overhead")
        self.assertEqual(common.read_rows(self.tmp, "wan"), [])


class Baselines(unittest.TestCase):
    SERVERS = [("primary", "10.0.0.3:80"), ("alternate", "10.0.0.4:80")]

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rs-exp-base.")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def haproxy_check(self, text):
        p = os.path.join(self.tmp, "h.cfg")
        with open(p, "w") as f:
            f.write(text)
        r = subprocess.run(["haproxy", "-c", "-f", p], capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    def keepalived_check(self, text, iface="rs-vrrp0"):
        """keepalived -t in a fresh network namespace holding 'iface' (a
        veth: it checks the interface exists); returns (rc, output)."""
        p = os.path.join(self.tmp, "k.conf")
        with open(p, "w") as f:
            f.write(text)
        cmd = f"ip link add {iface} type veth peer name {iface}p && keepalived -t -f {p}"
        r = subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    @unittest.skipUnless(shutil.which("haproxy"), "haproxy not installed (make deps)")
    def test_haproxy_configs_pass_checker(self):
        for timers in ("default", "tuned"):
            for sticky in (True, False):
                text = baselines.haproxy_cfg("10.0.0.100", self.SERVERS, timers=timers,
                                             check_path="/health", sticky=sticky,
                                             stats_socket=os.path.join(self.tmp, "s.sock"))
                rc, out = self.haproxy_check(text)
                self.assertEqual(rc, 0, out)
                self.assertNotIn("[WARNING]", out)
                for needle in ("mode http", "option redispatch", "retries 3",
                               "retry-on all-retryable-errors", "server primary 10.0.0.3:80 check",
                               "server alternate 10.0.0.4:80 check"):
                    self.assertIn(needle, text)
                t = baselines.HAPROXY_TIMERS[timers]
                self.assertIn(f"inter {t['inter']} fall {t['fall']} rise {t['rise']}", text)
                self.assertEqual("cookie SRV insert" in text, sticky)
        self.assertIn("inter 2s fall 3 rise 2", baselines.haproxy_cfg("10.0.0.100", self.SERVERS))
        self.assertIn("inter 100ms fall 2 rise 1",
                      baselines.haproxy_cfg("10.0.0.100", self.SERVERS, timers="tuned"))
        for mode in ("tcp", "http"):
            text = baselines.plain_proxy_cfg("10.0.0.100", ["10.0.0.3:80", "10.0.0.4:80"], mode=mode)
            rc, out = self.haproxy_check(text)
            self.assertEqual(rc, 0, out)
            self.assertNotIn("[WARNING]", out)
            self.assertNotIn(" check", text)
            self.assertNotIn("redispatch", text)
            self.assertIn("retries 0", text)
        # The checker really checks: a broken retry-on is refused.
        rc, _ = self.haproxy_check(baselines.haproxy_cfg("10.0.0.100", self.SERVERS, retry_on="bogus"))
        self.assertNotEqual(rc, 0)

    @unittest.skipUnless(shutil.which("keepalived") and shutil.which("unshare") and os.geteuid() == 0,
                         "keepalived/unshare/root missing")
    def test_keepalived_configs_pass_checker(self):
        for advert in ("default", "tuned"):
            for unicast in (True, False):
                m, b = baselines.keepalived_pair("10.0.0.100", ("rs-vrrp0", "10.0.0.3"),
                                                 ("rs-vrrp0", "10.0.0.4"), advert=advert,
                                                 track_process="rs-app", unicast=unicast,
                                                 check_script="/usr/bin/curl -fso /dev/null http://127.0.0.1/health")
                for text, state in ((m, "MASTER"), (b, "BACKUP")):
                    rc, out = self.keepalived_check(text)
                    self.assertEqual(rc, 0, out + text)
                    self.assertIn(f"state {state}", text)
                    self.assertIn("10.0.0.100/8 dev rs-vrrp0", text)
                    self.assertEqual("unicast_peer" in text, unicast)
                a = baselines.VRRP_ADVERT[advert]
                self.assertIn(f"advert_int {baselines._fmt_advert(a['advert_int'])}\n", m)
                self.assertIn(f"version {a['version']}\n", m)
        self.assertIn("advert_int 0.1\n", baselines.keepalived_conf("BACKUP", "e", "10.0.0.9", advert="tuned"))
        self.assertIn("advert_int 1\n", baselines.keepalived_conf("BACKUP", "e", "10.0.0.9"))
        # What keepalived itself refuses, refused early.
        with self.assertRaises(ValueError):
            baselines.keepalived_conf("MASTER", "e", "1.2.3.4", advert={"version": 2, "advert_int": 0.1})
        with self.assertRaises(ValueError):
            baselines.keepalived_conf("MASTER", "e", "1.2.3.4", check_script="true", check_interval=0.5)
        with self.assertRaises(ValueError):
            baselines.keepalived_conf("PRIMARY", "e", "1.2.3.4")
        # The checker really checks: a missing interface fails.
        rc, _ = self.keepalived_check(baselines.keepalived_conf("MASTER", "nosuch0", "10.0.0.100"))
        self.assertNotEqual(rc, 0)

    def test_timer_arithmetic(self):
        self.assertEqual(baselines.haproxy_detect_ms("default"), 6000)
        self.assertEqual(baselines.haproxy_detect_ms("tuned"), 200)
        self.assertAlmostEqual(baselines.master_down_ms("default", 100), 3000 + 156 / 256 * 1000)
        self.assertAlmostEqual(baselines.master_down_ms("tuned", 100), 300 + 15.6 / 256 * 1000)
        for t in common.TECHNIQUES:
            self.assertEqual(baselines.config_record(t)["technique"], t)


class Outputs(unittest.TestCase):
    """figures.py and report.py on synthetic results."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rs-exp-out.")
        cls.results = os.path.join(cls.tmp, "results")
        cls.plots = os.path.join(cls.tmp, "plots")
        rnd = random.Random(1)
        write_failover(cls.results, rnd)
        write_wan(cls.results, rnd)
        write_overhead(cls.results, rnd)
        write_faults(cls.results)
        write_nospof(cls.results)
        write_timeline(cls.results)
        cls.fig = subprocess.run([PY, os.path.join(EXP, "figures.py"), "--results", cls.results,
                                  "--plots", cls.plots], capture_output=True, text=True, timeout=300)
        cls.rep = subprocess.run([PY, os.path.join(EXP, "report.py"), "--results", cls.results,
                                  "--plots", cls.plots], capture_output=True, text=True, timeout=120)
        with open(os.path.join(cls.results, "REPORT.md")) as f:
            cls.report = f.read()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def rows(self, study):
        out = []
        for n in sorted(os.listdir(os.path.join(self.results, study))):
            if n.endswith(".csv"):
                with open(os.path.join(self.results, study, n), newline="") as f:
                    out += list(csv.DictReader(f))
        return out

    def test_figures(self):
        self.assertEqual(self.fig.returncode, 0, self.fig.stderr)
        self.assertTrue(self.fig.stdout.strip().splitlines()[-1].startswith("summary: "))
        want = [f"failover-time-{w}-{a}.png" for w in ("refapp", "roundcube") for a in ("action1", "action2")]
        want += ["failover-errors-refapp.png", "failover-errors-roundcube.png", "wan-errors-refapp.png",
                 "overhead-latency_ms-refapp.png", "overhead-throughput_mbps-refapp.png",
                 "timeline-failover-trial0.png", "timeline-failover-trial1.png"]
        want += ["wan-failover-rtt-refapp.png", "faults-matrix.png", "nospof-proxy.png"]
        made = sorted(os.listdir(self.plots))
        self.assertEqual(made, sorted(want))
        for n in made:
            size = png_size(os.path.join(self.plots, n))
            self.assertIsNotNone(size, n)
            self.assertGreater(size[0], 100)
            self.assertGreater(os.path.getsize(os.path.join(self.plots, n)), 5000, n)
        s = common.parse_summary(self.fig.stdout.strip().splitlines()[-1])
        self.assertEqual((s["figures"], s["failed"], s["skipped_studies"]), (str(len(want)), "0", "0"))

    def test_every_figure_linked_with_a_sentence(self):
        linked = re.findall(r"^- \[([^\]]+\.png)\]\([^)]+\): (.*)$", self.report, re.M)
        self.assertEqual(sorted(n for n, _ in linked), sorted(os.listdir(self.plots)))
        for name, sentence in linked:
            self.assertTrue(sentence.endswith(".") and len(sentence) > 30, (name, sentence))

    def test_lan_table_matches_csv(self):
        self.assertEqual(self.rep.returncode, 0, self.rep.stderr)
        self.assertTrue(self.rep.stdout.strip().splitlines()[-1].startswith("summary: studies=5 missing=0"))
        header, got = md_table(section(self.report, "failover"), "workload")
        self.assertEqual(header, ["workload", "action", "technique", "trials", "ok", "failover median (ms)",
                                  "failover p95 (ms)", "n", "errors", "re-logins", "stall median (ms)"])
        rows = self.rows("failover")
        expect = {}
        for r in rows:
            expect.setdefault((r["workload"], r["action"], r["technique"]), []).append(r)
        self.assertEqual(len(got), len(expect))
        for cells in got:
            rs = expect[tuple(cells[:3])]
            fo = [float(r["failover_ms"]) for r in rs if r["failover_ms"] != ""]
            stall = [float(r["stall_ms"]) for r in rs if r.get("stall_ms", "") != ""]
            self.assertEqual(cells[3:], [str(len(rs)), str(sum(r["ok"] == "1" for r in rs)),
                                         f2(ref_quantile(fo, 0.5)), f2(ref_quantile(fo, 0.95)), str(len(fo)),
                                         str(sum(int(r["errors"]) for r in rs)),
                                         str(sum(int(r["relogins"]) for r in rs)), f2(ref_quantile(stall, 0.5))],
                             cells[:3])
        # Canonical technique order within each (workload, action).
        techs = [c[2] for c in got if c[:2] == ["refapp", "action1"]]
        self.assertEqual(techs, [t for t in common.TECHNIQUES if t in techs])
        # The crash-free row counts as a trial without a failover time.
        res = [c for c in got if c[:3] == ["refapp", "action1", "resplice"]][0]
        self.assertEqual(int(res[3]), int(res[7]) + 1)
        # haproxy-tuned has n = 1 per (crash point) somewhere: none has no values.
        none = [c for c in got if c[2] == "none"][0]
        self.assertEqual((none[5], none[6], none[7]), ("–", "–", "0"))

    def test_point_table_matches_csv(self):
        header, got = md_table(section(self.report, "failover"), "workload | action | crash point")
        techs = header[3:]
        self.assertEqual(techs, list(TECHS))
        rows = self.rows("failover")
        keys = sorted({(r["workload"], r["action"], r["crash_point"]) for r in rows})
        self.assertEqual(sorted(tuple(c[:3]) for c in got), keys)
        for cells in got:
            for t, cell in zip(techs, cells[3:]):
                rs = [r for r in rows if (r["workload"], r["action"], r["crash_point"]) == tuple(cells[:3])
                      and r["technique"] == t]
                fo = [float(r["failover_ms"]) for r in rs if r["failover_ms"] != ""]
                want = f"{f2(ref_quantile(fo, 0.5)) if fo else '–'} ({len(fo)}/{len(rs)})" if rs else "–"
                self.assertEqual(cell, want, (cells[:3], t))

    def test_headline_summary(self):
        rows = [dict(workload="refapp", technique=t, crash_point=cp, failover_ms=fo)
                for t, cp, fo in (("resplice", "static-mid", "2"), ("resplice", "static-mid", "4"),
                                  ("resplice", "update", "100"), ("haproxy", "static-mid", ""),
                                  ("vrrp", "update", "7"))]
        rows.append(dict(workload="roundcube", technique="resplice", crash_point="mailbox-mid", failover_ms="9"))
        self.assertEqual(report.headline(rows), {"refapp_haproxy_ms": "none", "refapp_resplice_ms": 3.0,
                                                 "roundcube_resplice_ms": 9.0})
        r = subprocess.run([PY, os.path.join(EXP, "report.py"), "--results", self.results, "--plots", self.plots,
                            "--out", os.path.join(self.tmp, "r2.md"), "--headline", "wan"],
                           capture_output=True, text=True, timeout=120)
        s = common.parse_summary(r.stdout.strip().splitlines()[-1])
        self.assertEqual(s["studies"], "5", r.stdout + r.stderr)

    def test_wan_table_matches_csv(self):
        header, got = md_table(section(self.report, "wan"), "workload")
        techs = header[4:]
        self.assertEqual(techs, ["haproxy-tuned", "vrrp", "resplice"])
        rows = self.rows("wan")
        self.assertEqual([c[1] for c in got], [p for p, _, _ in WAN_PROFILES])
        for cells in got:
            prof = cells[1]
            _, rtt, loss = [p for p in WAN_PROFILES if p[0] == prof][0]
            self.assertEqual(float(cells[2]), rtt)
            self.assertEqual(float(cells[3]), loss)
            for t, cell in zip(techs, cells[4:]):
                fo = [float(r["failover_ms"]) for r in rows if r["profile"] == prof and r["technique"] == t]
                stall = [float(r["stall_ms"]) for r in rows if r["profile"] == prof and r["technique"] == t]
                self.assertEqual(cell, f"{f2(ref_quantile(fo, 0.5))} ({len(fo)}), stall {f2(ref_quantile(stall, 0.5))}")

    def test_overhead_table_matches_csv(self):
        header, got = md_table(section(self.report, "overhead"), "workload")
        self.assertEqual(header, ["workload", "metric", "technique", "median", "p5", "p95", "n"])
        rows = self.rows("overhead")
        self.assertEqual(len(got), 6)
        for wl, metric, tech, med, p5, p95, n in got:
            v = [float(r["value"]) for r in rows if (r["workload"], r["metric"], r["technique"]) == (wl, metric, tech)]
            self.assertEqual([med, p5, p95, n], [f2(ref_quantile(v, 0.5)), f2(ref_quantile(v, 0.05)),
                                                 f2(ref_quantile(v, 0.95)), str(len(v))])

    def test_report_links_and_machine(self):
        m = json.loads(self.rows("failover")[0]["machine"])
        self.assertIn(f"Machine: {m['host']} (nproc {m['nproc']}, kernel {m['kernel']})", self.report)
        links = re.findall(r"\]\((\.\./plots/[^)]+\.png)\)", self.report)
        self.assertEqual(sorted(set(os.path.basename(l) for l in links)), sorted(os.listdir(self.plots)))
        for l in links:
            self.assertTrue(os.path.exists(os.path.join(self.results, l)), l)
        self.assertNotIn("Missing:", self.report)
        self.assertIn("timeline-failover-trial0.png", section(self.report, "failover"))

    def test_missing_study(self):
        tmp = tempfile.mkdtemp(prefix="rs-exp-miss.")
        try:
            results, plots = os.path.join(tmp, "results"), os.path.join(tmp, "plots")
            write_overhead(results, random.Random(2))
            fig = subprocess.run([PY, os.path.join(EXP, "figures.py"), "--results", results, "--plots", plots],
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(fig.returncode, 0, fig.stderr)
            self.assertIn("no results for study wan", fig.stderr)
            self.assertIn("no results for study failover", fig.stderr)
            self.assertEqual(sorted(os.listdir(plots)), ["overhead-latency_ms-refapp.png",
                                                         "overhead-throughput_mbps-refapp.png"])
            env = dict(os.environ, RS_RESULTS=results, RS_PLOTS=plots)
            rep = subprocess.run([PY, os.path.join(EXP, "report.py")], capture_output=True, text=True,
                                 timeout=60, env=env)
            self.assertEqual(rep.returncode, 0, rep.stderr)
            s = common.parse_summary(rep.stdout.strip().splitlines()[-1])
            self.assertEqual((s["studies"], s["missing"], s["figures"]), ("1", "4", "2"))
            with open(os.path.join(results, "REPORT.md")) as f:
                text = f.read()
            for study in ("failover", "wan", "faults", "nospof"):
                self.assertIn(f"Missing: no results for study `{study}`", section(text, study))
            self.assertNotIn("Missing", section(text, "overhead"))
            # Nothing at all: still a report, every study missing.
            empty = os.path.join(tmp, "empty")
            rep = subprocess.run([PY, os.path.join(EXP, "report.py"), "--results", empty, "--plots", plots],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(rep.returncode, 0, rep.stderr)
            self.assertIn("missing=5", rep.stdout)
        finally:
            shutil.rmtree(tmp)


def report_section(case, write, study):
    """REPORT.md's section of 'study' from the results 'write' makes alone."""
    tmp = tempfile.mkdtemp(prefix=f"rs-exp-{study}.")
    try:
        results = os.path.join(tmp, "results")
        write(results)
        rep = subprocess.run([PY, os.path.join(EXP, "report.py"), "--results", results, "--plots",
                              os.path.join(tmp, "plots")], capture_output=True, text=True, timeout=60)
        case.assertEqual(rep.returncode, 0, rep.stderr)
        with open(os.path.join(results, "REPORT.md")) as f:
            return section(f.read(), study)
    finally:
        shutil.rmtree(tmp)


class FaultsSection(unittest.TestCase):
    """REPORT.md's fault campaign section from a synthetic table."""

    def test_matrix_and_violations(self):
        text = report_section(self, write_faults, "faults")
        header, rows = md_table(text, "fault")
        self.assertEqual(header, ["fault", "refapp-1", "refapp-50"])
        self.assertEqual(rows, [["none", "4/0/0", "4/0/0"], ["alternate-in-recovery", "2/2/0", "3/0/1"]])
        self.assertIn("16 trials: 13 masked, 2 clean ends, 1 violations.", text)
        self.assertIn("| alternate-in-recovery | refapp-50 | 0 | 12 | hang | violations/x |", text)


class NospofSection(unittest.TestCase):
    """REPORT.md's proxy-failure section from a synthetic table: masked and
    completed shares, the extra stall over each technique's crash-free
    median."""

    def test_table(self):
        header, rows = md_table(report_section(self, write_nospof, "nospof"), "technique")
        self.assertEqual(header, ["technique", "fault", "trials", "masked", "completed", "extra stall ms"])
        self.assertEqual(rows, [["resplice", "proxy-kill", "3", "100%", "100%", "4"],
                                ["haproxy-vrrp", "proxy-kill", "3", "0%", "67%", "790"]])


class YScale(unittest.TestCase):
    def test_scales(self):
        self.assertEqual(figures._yscale([2, 2000]), ("set logscale y\n", "1:2:3:4"))
        self.assertEqual(figures._yscale([2, 50]), ("set yrange [0:*]\n", "1:2:3:4"))
        # Zero or negative values (a noisy crash-free median) on a log scale
        # are drawn at the floor, and the figure says so.
        script, cols = figures._yscale([-2, 5, 2000])
        self.assertIn("set logscale y", script)
        self.assertIn("drawn at 0.1", script)
        self.assertEqual(cols, "1:($2 > 0.1 ? $2 : 0.1):($3 > 0.1 ? $3 : 0.1):($4 > 0.1 ? $4 : 0.1)")
        self.assertEqual(figures._yscale([-10, 90]), ("set yrange [-15:*]\n", "1:2:3:4"))


class WanPerLoss(unittest.TestCase):
    def test_one_file_per_loss_when_an_rtt_has_several(self):
        with tempfile.TemporaryDirectory() as tmp:
            results, plots = os.path.join(tmp, "results"), os.path.join(tmp, "plots")
            with common.RowWriter(os.path.join(results, "wan", "t.csv"), "wan") as w:
                for rtt, loss in ((60, 0), (60, 1), (250, 0), (250, 1)):
                    for tech in ("haproxy", "resplice"):
                        w.write(workload="roundcube", action="action1", technique=tech, crash_point="between",
                                trial=0, seed=3, ok=1, failover_ms=rtt * 3 + loss, profile=f"p{rtt}-{loss}",
                                rtt_ms=rtt, loss_pct=loss)
            r = subprocess.run([PY, os.path.join(EXP, "figures.py"), "--results", results, "--plots", plots],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(sorted(os.listdir(plots)), ["wan-errors-roundcube.png",
                                                         "wan-failover-rtt-roundcube-loss0.png",
                                                         "wan-failover-rtt-roundcube-loss1.png"])


class Timeline(unittest.TestCase):
    def test_pcap_parse_and_relative_seq_across_wrap(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "t.pcap")
            with open(p, "wb") as f:
                f.write(pcap_bytes(timeline_segments()))
            segs = figures.read_pcap(p)
            self.assertEqual(len(segs), len(timeline_segments()))
            # Payload length comes from the IP header, not the 96-byte capture.
            self.assertEqual(segs[3]["len"], 1000)
            self.assertAlmostEqual(segs[3]["t"], 100.01, places=6)
            server, conns = figures.timeline_series(segs, "10.0.0.100:80")
            self.assertEqual(server, "10.0.0.100:80")
            self.assertEqual(list(conns), ["10.0.0.1:40000"])
            pts = conns["10.0.0.1:40000"]
            rels = [rel for _, rel, fl in pts if not fl & 0x02 and not fl & 0x01]
            self.assertEqual(rels, [1000 * (i + 1) for i in range(20)])     # monotone through the wrap
            self.assertEqual(pts[0][1], 0)                                     # SYN-ACK at 0
            self.assertEqual(pts[-1][1], 20000)                                # FIN after the data
            # Re-sent data (a retransmission below the highest seq) is told apart.
            new, again = figures.split_resent([(0, 0, 0x12), (1, 1000, 0x18), (2, 2000, 0x18),
                                               (3, 1000, 0x18), (4, 3000, 0x18)])
            self.assertEqual((new, again), ([(0, 0), (1, 1000), (2, 2000), (4, 3000)], [(3, 1000)]))
            # tcpdump reads the synthetic pcap the same way.
            if shutil.which("tcpdump"):
                out = subprocess.run(["tcpdump", "-tt", "-n", "-r", p], capture_output=True, text=True).stdout
                ts = [float(l.split()[0]) for l in out.splitlines() if l.strip()]
                self.assertEqual(len(ts), len(segs))
                for a, b in zip(ts, segs):
                    self.assertAlmostEqual(a, b["t"], places=5)
            # Auto-detection picks the sender of most payload.
            self.assertEqual(figures.timeline_series(segs)[0], "10.0.0.100:80")
            with open(p, "wb") as f:
                f.write(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)
            with self.assertRaises(ValueError):
                figures.read_pcap(p)


if __name__ == "__main__":
    unittest.main()
