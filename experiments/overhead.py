"""The overhead study (part of make experiment-lan): what each technique
costs when nothing crashes.  For every workload of experiments/workloads.py,
every technique of experiments/techniques.py that applies to it and the
plain deployment ("direct": the workload with nothing in front of it),
TRIALS runs (default 10) of Action 1 and Action 2 on the LAN (Roundcube:
after an untimed warm-up run, on one deployment; the reference app: each
run on a fresh one); one row per run and metric in
results/overhead/<workload>.csv (experiments/common.py's overhead schema):

  workload <w>-<action>, metric latency_ms   each action's time
  workload <w>-<first action>, metric throughput_mbps   its bytes / time (the
                                                 page and its files)

Besides the techniques of the failover studies, resplice-nostate (Roundcube
only): resplice with Roundcube's state left out (no resplice plugin), whose
difference to resplice is what the state's tracking and shipping cost.

TRIALS=, QUICK=1 (2 runs; direct, haproxy-tuned, resplice), TECHNIQUES=,
WORKLOADS=, ROUNDS= (default 1): the techniques take turns ROUNDS times,
each with its share of the TRIALS, each round starting with the next
technique, so that a host that slows down or speeds up during the study
(these machines do, by a third within a minute) weighs on all of them
alike.  Ends with a summary: line (median
Action 2 time, or the last action's, per workload and technique and its
ratio to direct)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.testbed import Testbed  # noqa: E402
from experiments import common  # noqa: E402
from experiments.failover import Study, chosen  # noqa: E402
from experiments.techniques import COST_ONLY, TECHNIQUES, Plain  # noqa: E402
from experiments.workloads import WORKLOADS  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402

QUICK_TECHNIQUES = ("direct", "haproxy-tuned", "resplice")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(common.ROOT, "results"))
    a = ap.parse_args()
    runs = common.trials(10, quick_default=2)
    rounds = max(1, min(runs, int(os.environ.get("ROUNDS", "1"))))
    known = {"direct": Plain, **TECHNIQUES, **COST_ONLY}
    techs = chosen("TECHNIQUES", known, QUICK_TECHNIQUES if common.quick() else known, "technique")
    wls = chosen("WORKLOADS", WORKLOADS, WORKLOADS, "workload")
    plan = [(w, [t for t in techs if known[t].applies(WORKLOADS[w])]) for w in wls]
    with common.WorkDir("rs-overhead-") as work:
        run(a, runs, rounds, known, plan, work.path)


def run(a, runs, rounds, known, plan, tmp):
    progress = common.Progress(rounds * sum(len(ts) for _, ts in plan))
    medians = {}
    for wl, wtechs in plan:
        out = os.path.join(a.results, "overhead", f"{wl}.csv")
        if os.path.exists(out):
            os.unlink(out)
        run_dir = os.path.join(tmp, wl)
        with Testbed(LanTopo(), run_dir) as tb, \
                common.RowWriter(out, "overhead", config={"runs": runs, "rounds": rounds}) as w:
            s = Study(tb, run_dir, w, progress, wl)
            times = {}
            for r in range(rounds):
                share = runs // rounds + (1 if r < runs % rounds else 0)
                # Each round starts with another technique: the one that
                # runs after a given other finds the machine as that one
                # left it (session 39: the second of two variants measured
                # ~7% slower whichever it was).
                for name in wtechs[r % len(wtechs):] + wtechs[:r % len(wtechs)]:
                    progress.step(f"{wl} {name}: both actions x{share}" + (f" (round {r + 1})" if rounds > 1 else ""))
                    tech = known[name](tb, run_dir, s.wl)
                    base = s.baseline(tech, share)
                    for action in s.wl.actions:
                        _, sizes, ts = base[action]
                        for ms in ts:
                            k = len(times.setdefault((name, action), []))
                            times[(name, action)].append(ms)
                            row = dict(technique=name, trial=k, seed=k, profile="lan", config=tech.config())
                            w.write(workload=f"{wl}-{action}", metric="latency_ms", value=round(ms, 3), **row)
                            if action == next(iter(s.wl.actions)):     # the page and its files
                                w.write(workload=f"{wl}-{action}", metric="throughput_mbps",
                                        value=round(sum(sizes) * 8 / (ms * 1000), 3), **row)
            for (name, action), ts in times.items():
                medians[(wl, name, action)] = common.median(ts)
    print()
    summary = {}
    for wl, wtechs in plan:
        actions = list(WORKLOADS[wl].actions)
        last = actions[-1]          # the seed's Action 2: the one with updates
        ref = medians.get((wl, "direct", last))
        for name in wtechs:
            ms = {a: medians[(wl, name, a)] for a in actions}
            print(f"{wl:10s} {name:16s} " + "  ".join(f"{a} {m:8.1f} ms" for a, m in ms.items())
                  + (f"  x{ms[last] / ref:.2f}" if ref else ""))
            key = f"{wl}_{name.replace('-', '_')}"
            summary[f"{key}_{last}_ms"] = round(ms[last], 2)
            if ref:
                summary[f"{key}_ratio"] = round(ms[last] / ref, 2)
    print(common.summary(study="overhead", runs=runs, **summary))


if __name__ == "__main__":
    main()
