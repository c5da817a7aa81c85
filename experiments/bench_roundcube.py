"""make bench-roundcube: the paper's workload (seed §6) on the LAN testbed.

1. Overhead: Action 1 and Action 2 completion time, Roundcube served
   directly (lighttpd + php-cgi on the primary, no resplice) vs through
   resplice (VIP, splice, fronts, state transfer, logger, rs-auxlog), the
   two measured in the same run, TRIALS runs each (one rs-client run per
   trial, a new connection each).
2. Failover: a fresh resplice stack per trial; the primary's front dies at
   a crash point (rs-app --crash-at N+B) and lighttpd and php-cgi with it.
   Crash points: before the first response byte of every Action 2 request,
   and mid-response in Action 1's largest static file (MID=1 adds the middle
   of every Action 2 response).  Failover time = how much longer the
   crashed request took than its crash-free median through resplice;
   detection = crash (the front's log) -> the proxy holds the connection;
   recovery = the proxy's hold -> re-spliced (its recovered line).

Rows go to results/bench-roundcube/roundcube.csv (experiments/common.py's
failover schema; crash_point "none" for the overhead runs, technique
"direct" or "resplice").  Benchmark, not a test: it prints figures and
ends with a summary: line.  TRIALS= (default 20), QUICK=1 (2 trials), MID=1."""
import argparse
import csv
import os
import re
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.stack import binary  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments import common  # noqa: E402
from roundcube.deploy import AuxLog, MailStore, ResplicedRoundcube, Roundcube, count_messages  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402

TRACES = os.path.join(common.ROOT, "roundcube", "traces")
ACTIONS = {"action1": "action1.trace", "action2": "action2.trace"}
TS = re.compile(r"^(\d+\.\d+) ")


def ts_of(log, pattern):
    """Timestamp (s) of the first log line matching 'pattern', or None."""
    for line in log.splitlines():
        if re.search(pattern, line):
            m = TS.match(line)
            return float(m.group(1)) if m else None
    return None


class Bench:
    def __init__(self, tb, run_dir, writer, progress):
        self.tb, self.dir, self.w, self.progress = tb, run_dir, writer, progress
        self.ms = MailStore(tb, run_dir).start()
        self.aux = AuxLog(tb, run_dir).start()
        self.n = 0

    def counts(self):
        return count_messages(self.dir, "bob", "INBOX"), count_messages(self.dir, "alice", "Sent")

    def client(self, server, action, runs=1):
        """Runs the action's trace 'runs' times; returns the CSV rows."""
        self.n += 1
        out = os.path.join(self.dir, f"c{self.n}.csv")
        d = self.tb.start("c1", f"client-{self.n}", [
            binary("rs-client"), "--server", server, "--trace", os.path.join(TRACES, ACTIONS[action]),
            "--csv", out, "--timeout", "10s", "--repeat", str(runs), "--quiet"])
        d.popen.wait(600)
        with open(out) as f:
            return list(csv.DictReader(f))

    @staticmethod
    def runs(rows):
        """{run: (ok, action ms, [per-step ms])} from rs-client's CSV rows."""
        out = {}
        for r in rows:
            out.setdefault(int(r["run"]), []).append(r)
        res = {}
        for run, rs in out.items():
            rs.sort(key=lambda r: int(r["step"]))
            ms = (max(int(r["end_us"]) for r in rs) - min(int(r["start_us"]) for r in rs)) / 1000
            res[run] = (all(r["result"] == "ok" for r in rs), ms,
                        [(int(r["end_us"]) - int(r["start_us"])) / 1000 for r in rs])
        return res

    def overhead(self, trials):
        """Crash-free action times, direct vs through resplice.  Returns
        {(technique, action): [action ms]} and the per-step medians through
        resplice."""
        times, steps = {}, {}
        rc = Roundcube(self.tb, self.dir, "primary", mailstore_ip=self.ms.ip).start()
        for action in ACTIONS:
            self.client(rc.addr, action)        # warm-up (opcache), not timed
            self.progress.step(f"direct {action} x{trials}")
            for run, (ok, ms, _) in sorted(self.runs(self.client(rc.addr, action, trials)).items()):
                times.setdefault(("direct", action), []).append(ms)
                self.row("direct", action, "none", run, ok, action_ms=ms)
        rc.stop()
        rr = ResplicedRoundcube(self.tb, self.dir, mailstore=self.ms, aux=self.aux).start()
        for action in ACTIONS:
            self.client(rr.vip, action)         # warm-up through the whole path, not timed
            self.progress.step(f"resplice {action} x{trials}")
            per_step = []
            for run, (ok, ms, st) in sorted(self.runs(self.client(rr.vip, action, trials)).items()):
                times.setdefault(("resplice", action), []).append(ms)
                per_step.append(st)
                self.row("resplice", action, "none", run, ok, action_ms=ms)
            steps[action] = [common.median([s[i] for s in per_step if len(s) > i]) for i in range(len(per_step[0]))]
        rr.stop()
        return times, steps

    def crash_trial(self, action, step, offset, trial, base_ms):
        before = self.counts()
        rr = ResplicedRoundcube(self.tb, self.dir, crash_at=f"{step}+{offset}", mailstore=self.ms,
                                aux=self.aux).start()
        crashed = {}
        w = threading.Thread(target=lambda: crashed.update(t=rr.crash(60)), daemon=True)
        w.start()
        rows = self.client(rr.vip, action)
        w.join(60)
        time.sleep(0.2)
        ok, ms, st = self.runs(rows).get(0, (False, None, []))
        plog, flog = rr.stack.log("proxy"), rr.stack.log("app-primary")
        t_crash = ts_of(flog, r"crash-at ")
        t_hold = ts_of(plog, r"step=hold")
        m = re.search(r"recovered id=\d+ .*total_us=(\d+)", plog)
        after = self.counts()
        dup = action == "action2" and after != (before[0] + 1, before[1] + 1)
        errors = sum(1 for r in rows if r["result"] != "ok") + (1 if dup else 0)
        failover = st[step] - base_ms[step] if ok and len(st) > step else None
        self.row("resplice", action, f"{step}+{offset}", trial, ok and not dup, action_ms=ms, errors=errors,
                 failover_ms=failover,
                 detect_ms=(t_hold - t_crash) * 1000 if t_crash and t_hold else None,
                 recover_ms=int(m.group(1)) / 1000 if m else None)
        rr.stop()
        return ok and not dup, failover

    def row(self, technique, action, point, trial, ok, **kw):
        self.w.write(workload="roundcube", action=action, technique=technique, crash_point=point, trial=trial,
                     seed=trial, ok=int(bool(ok)), errors=kw.pop("errors", 0 if ok else 1), relogins=0,
                     profile="lan", rtt_ms=0, loss_pct=0, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=None)
    ap.add_argument("--out", default=os.path.join(common.ROOT, "results", "bench-roundcube"))
    a = ap.parse_args()
    if a.build:
        import emul.testbed
        emul.testbed.BUILD = os.path.abspath(a.build)
    trials = common.trials(20, quick_default=2)
    mid = os.environ.get("MID") == "1"
    os.makedirs(a.out, exist_ok=True)
    out = os.path.join(a.out, "roundcube.csv")
    if os.path.exists(out):
        os.unlink(out)
    tmp = tempfile.mkdtemp(prefix="rs-bench-rc-")
    os.chmod(tmp, 0o755)        # dovecot's mail processes are not root
    run_dir = os.path.join(tmp, "run")
    n_points = 17 * (2 if mid else 1) + 1
    progress = common.Progress(4 + n_points * trials)
    failover, bad = [], 0
    with Testbed(LanTopo(), run_dir) as tb, \
            common.RowWriter(out, "bench-roundcube", config={"trials": trials, "mid": mid},
                             columns=common.FAILOVER_COLUMNS) as w:
        b = Bench(tb, run_dir, w, progress)
        times, base = b.overhead(trials)
        # Action 1's largest static file, from a crash-free run's body sizes.
        rr = ResplicedRoundcube(tb, run_dir, mailstore=b.ms, aux=b.aux).start()
        sizes = [int(r["bytes"]) for r in b.client(rr.vip, "action1")]
        rr.stop()
        big = max(range(1, len(sizes)), key=lambda i: sizes[i])
        points = [("action1", big, sizes[big] // 2)] + [("action2", k, 0) for k in range(17)]
        if mid:
            points += [("action2", k, 200) for k in range(17)]     # inside every response
        by_point = {}
        for action, step, offset in points:
            for t in range(trials):
                progress.step(f"crash {action} request {step}+{offset} trial {t}")
                ok, f = b.crash_trial(action, step, offset, t, base[action])
                bad += 0 if ok else 1
                if f is not None:
                    failover.append(f)
                    by_point.setdefault((action, step, offset), []).append(f)
    print(f"\nRoundcube on the LAN, {trials} trials each (ms; median [p5, p95])")
    print(f"{'action':8s} {'direct':>22s} {'resplice':>22s} {'ratio':>6s}")
    ratio = {}
    for action in ACTIONS:
        d, r = common.stats(times[("direct", action)]), common.stats(times[("resplice", action)])
        ratio[action] = r["median"] / d["median"]
        print(f"{action:8s} {d['median']:8.1f} [{d['p5']:5.1f},{d['p95']:6.1f}] "
              f"{r['median']:8.1f} [{r['p5']:5.1f},{r['p95']:6.1f}] {ratio[action]:6.2f}")
    print("\nfailover time per crash point (extra ms for the crashed request; median [p5, p95] n)")
    for (action, step, offset), v in sorted(by_point.items()):
        s = common.stats(v)
        print(f"  {action} request {step:2d} +{offset:<7d} {s['median']:7.1f} [{s['p5']:6.1f}, {s['p95']:6.1f}] {s['n']}")
    fs = common.stats(failover) if failover else {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
    crash_rows = [r for r in common.read_rows(os.path.dirname(a.out), "bench-roundcube") if r["crash_point"] != "none"]
    det = [common.num(r["detect_ms"]) for r in crash_rows if common.num(r["detect_ms"]) is not None]
    rec = [common.num(r["recover_ms"]) for r in crash_rows if common.num(r["recover_ms"]) is not None]
    print(f"\ndetection (crash -> proxy hold) median {common.median(det):.2f} ms; "
          f"recovery (hold -> re-spliced: plan, apply, resend) median {common.median(rec):.2f} ms, "
          f"p95 {common.percentile(rec, 0.95):.2f} ms")
    print(common.summary(trials=trials, points=len(points), failed=bad,
                         action1_direct_ms=round(common.median(times[("direct", "action1")]), 2),
                         action1_resplice_ms=round(common.median(times[("resplice", "action1")]), 2),
                         action1_ratio=round(ratio["action1"], 2),
                         action2_direct_ms=round(common.median(times[("direct", "action2")]), 2),
                         action2_resplice_ms=round(common.median(times[("resplice", "action2")]), 2),
                         action2_ratio=round(ratio["action2"], 2),
                         failover_median_ms=round(fs["median"], 2), failover_p95_ms=round(fs["p95"], 2),
                         failover_max_ms=round(fs["max"], 2), detect_median_ms=round(common.median(det), 2),
                         recover_median_ms=round(common.median(rec), 2)))


if __name__ == "__main__":
    main()
