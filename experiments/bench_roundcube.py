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
"direct" or "resplice").  The crash trials are experiments/failover.py's.  Benchmark, not a test: it prints figures and
ends with a summary: line.  TRIALS= (default 20), QUICK=1 (2 trials), MID=1."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import use_build  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments import common  # noqa: E402
from experiments.failover import Study  # noqa: E402
from experiments.techniques import Plain, Resplice  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=None)
    ap.add_argument("--results", default=os.path.join(common.ROOT, "results"))
    a = ap.parse_args()
    if a.build:
        use_build(a.build)
    trials = common.trials(20, quick_default=2)
    mid = os.environ.get("MID") == "1"
    out = os.path.join(a.results, "bench-roundcube", "roundcube.csv")
    if os.path.exists(out):
        os.unlink(out)
    n_points = 17 * (2 if mid else 1) + 1
    progress = common.Progress(2 + n_points * trials)
    by_point = {}
    with common.WorkDir("rs-bench-rc-") as work, Testbed(LanTopo(), os.path.join(work.path, "run")) as tb, \
            common.RowWriter(out, "bench-roundcube", config={"trials": trials, "mid": mid},
                             columns=common.FAILOVER_COLUMNS) as w:
        run_dir = os.path.join(work.path, "run")
        s = Study(tb, run_dir, w, progress, "roundcube")
        base, resplice = {}, Resplice(tb, run_dir, s.wl)
        for tech in (Plain(tb, run_dir, s.wl), resplice):
            progress.step(f"{tech.name}: both actions x{trials}, no crash")
            row = lambda action, run, ok, ms, name=tech.name: w.write(  # noqa: E731
                workload="roundcube", action=action, technique=name, crash_point="none", trial=run, seed=run,
                ok=int(ok), action_ms=ms, errors=0 if ok else 1, relogins=0, profile="lan", rtt_ms=0, loss_pct=0)
            base[tech.name] = s.baseline(tech, trials, row)
        sizes = base["resplice"]["action1"][1]
        big = max(range(1, len(sizes)), key=lambda i: sizes[i])
        points = [("action1", big, sizes[big] // 2)] + [("action2", k, 0) for k in range(17)]
        if mid:
            points += [("action2", k, 200) for k in range(17)]     # inside every response
        for action, step, offset in points:
            for t in range(trials):
                progress.step(f"crash {action} request {step}+{offset} trial {t}")
                ok, f = s.trial(resplice, action, f"{step}+{offset}", step, offset, t, base["resplice"])
                if not ok:
                    work.keep(f"{action} request {step}+{offset} trial {t} not masked")
                by_point.setdefault((action, step, offset), []).append(f)
    rows = common.read_rows(a.results, "bench-roundcube")
    crash_rows = [r for r in rows if r["crash_point"] != "none"]
    failed = sum(1 for r in crash_rows if r["ok"] != "1")
    failover = [x for v in by_point.values() for x in v if x is not None]
    print(f"\nRoundcube on the LAN, {trials} trials each (ms; median [p5, p95])")
    print(f"{'action':8s} {'direct':>22s} {'resplice':>22s} {'ratio':>6s}")
    ratio = {}
    for action in ("action1", "action2"):
        d, r = common.stats(base["direct"][action][2]), common.stats(base["resplice"][action][2])
        ratio[action] = r["median"] / d["median"]
        print(f"{action:8s} {d['median']:8.1f} [{d['p5']:5.1f},{d['p95']:6.1f}] "
              f"{r['median']:8.1f} [{r['p5']:5.1f},{r['p95']:6.1f}] {ratio[action]:6.2f}")
    print("\nfailover time per crash point (extra ms for the crashed request; median [p5, p95] n)")
    for (action, step, offset), v in sorted(by_point.items()):
        st = common.stats([x for x in v if x is not None])
        if st["n"]:
            print(f"  {action} request {step:2d} +{offset:<7d} {st['median']:7.1f} [{st['p5']:6.1f}, "
                  f"{st['p95']:6.1f}] {st['n']}/{len(v)}")
        else:
            print(f"  {action} request {step:2d} +{offset:<7d} failed {len(v)}/{len(v)}")
    det = [common.num(r["detect_ms"]) for r in crash_rows if common.num(r["detect_ms"]) is not None]
    rec = [common.num(r["recover_ms"]) for r in crash_rows if common.num(r["recover_ms"]) is not None]
    fs = common.stats(failover)
    print(f"\ndetection (crash -> proxy hold) median {common.median(det) or 0:.2f} ms; recovery (hold -> "
          f"re-spliced: plan, apply, replay, resend) median {common.median(rec) or 0:.2f} ms, "
          f"p95 {common.percentile(rec, 0.95) or 0:.2f} ms")
    r2 = lambda x: round(x, 2) if x is not None else "none"  # noqa: E731
    print(common.summary(trials=trials, points=len(points), failed=failed,
                         action1_direct_ms=r2(common.median(base["direct"]["action1"][2])),
                         action1_resplice_ms=r2(common.median(base["resplice"]["action1"][2])),
                         action1_ratio=r2(ratio["action1"]),
                         action2_direct_ms=r2(common.median(base["direct"]["action2"][2])),
                         action2_resplice_ms=r2(common.median(base["resplice"]["action2"][2])),
                         action2_ratio=r2(ratio["action2"]),
                         failover_median_ms=r2(fs["median"]), failover_p95_ms=r2(fs["p95"]),
                         failover_max_ms=r2(fs["max"]), detect_median_ms=r2(common.median(det)),
                         recover_median_ms=r2(common.median(rec))))


if __name__ == "__main__":
    main()
