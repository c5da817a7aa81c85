"""The overhead study (part of make experiment-lan): what each technique
costs when nothing crashes.  For every technique of experiments/techniques.py
and the plain deployment ("direct": Roundcube with nothing in front of it),
TRIALS runs (default 10) of Action 1 and Action 2 on the LAN, after an
untimed warm-up run; one row per run and metric in
results/overhead/roundcube.csv (experiments/common.py's overhead schema):

  workload roundcube-action1 / -action2, metric latency_ms   the action's time
  workload roundcube-action1, metric throughput_mbps          its bytes / time

TRIALS=, QUICK=1 (2 runs; direct, haproxy-tuned, resplice), TECHNIQUES=.
Ends with a summary: line (median Action 2 time per technique and its ratio
to direct)."""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.testbed import Testbed  # noqa: E402
from experiments import common  # noqa: E402
from experiments.failover import ACTIONS, Study  # noqa: E402
from experiments.techniques import TECHNIQUES, Plain  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402

QUICK_TECHNIQUES = ("direct", "haproxy-tuned", "resplice")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(common.ROOT, "results"))
    a = ap.parse_args()
    runs = common.trials(10, quick_default=2)
    known = {"direct": Plain, **TECHNIQUES}
    names = os.environ.get("TECHNIQUES")
    techs = names.split(",") if names else list(QUICK_TECHNIQUES if common.quick() else known)
    for n in techs:
        if n not in known:
            sys.exit(f"overhead: unknown technique {n!r} (known: {', '.join(known)})")
    out = os.path.join(a.results, "overhead", "roundcube.csv")
    if os.path.exists(out):
        os.unlink(out)
    tmp = tempfile.mkdtemp(prefix="rs-overhead-")
    os.chmod(tmp, 0o755)        # dovecot's mail processes are not root
    run_dir = os.path.join(tmp, "run")
    progress = common.Progress(len(techs))
    medians = {}
    with Testbed(LanTopo(), run_dir) as tb, \
            common.RowWriter(out, "overhead", config={"runs": runs}) as w:
        s = Study(tb, run_dir, w, progress)
        for name in techs:
            progress.step(f"{name}: both actions x{runs}")
            tech = known[name](tb, run_dir, s.ms, s.aux)
            base = s.baseline(tech, runs)
            for action in ACTIONS:
                _, sizes, times = base[action]
                for k, ms in enumerate(times):
                    row = dict(technique=name, trial=k, seed=k, profile="lan", config=tech.config())
                    w.write(workload=f"roundcube-{action}", metric="latency_ms", value=round(ms, 3), **row)
                    if action == "action1":
                        w.write(workload=f"roundcube-{action}", metric="throughput_mbps",
                                value=round(sum(sizes) * 8 / (ms * 1000), 3), **row)
                medians[(name, action)] = common.median(times)
    print()
    ref = medians.get(("direct", "action2"))
    for name in techs:
        m1, m2 = medians[(name, "action1")], medians[(name, "action2")]
        print(f"{name:15s} action1 {m1:8.1f} ms  action2 {m2:8.1f} ms" + (f"  x{m2 / ref:.2f}" if ref else ""))
    print(common.summary(study="overhead", runs=runs,
                         **{f"{n.replace('-', '_')}_action2_ms": round(medians[(n, "action2")], 2) for n in techs},
                         **({f"{n.replace('-', '_')}_ratio": round(medians[(n, "action2")] / ref, 2)
                             for n in techs} if ref else {})))


if __name__ == "__main__":
    main()
