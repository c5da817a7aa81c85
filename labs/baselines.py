#!/usr/bin/python3
"""Lab 4, resplice against HAProxy and VRRP (docs/labs/lab-4.md): `make
lab-4` runs it, `make lab-4-check` checks it.

run:   the reference app's Action 1 (a page and its files, the largest 1 MB)
       on the LAN testbed, the primary killed in the middle of that 1 MB
       file, once behind HAProxy with tuned health checks, once with VRRP
       (keepalived, tuned adverts) moving the address, once behind resplice
       (the failover study's trial: experiments/failover.py); the
       baselines' client retries as a browser would.  Leaves in
       labs/run/lab-4/ (or DIR): trials.csv (one row per technique: ok,
       errors the client saw, failover_ms, stall_ms), resplice's timeline
       (timeline/), and answers.txt.
check: that the run shows the difference (resplice completed the action
       with no error the client saw; each baseline's client saw at least
       one and had to fetch again), then that answers.txt matches
       trials.csv.  Exit 0 and "lab-4: all observations made", or 1."""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labs import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "labs", "run", "lab-4")
TECHS = ("haproxy-tuned", "vrrp-tuned", "resplice")
ANSWERS = """# Lab 4: resplice against HAProxy and VRRP (docs/labs/lab-4.md).  Read
# trials.csv (and the timeline), fill in each line, then run
#   make lab-4-check
# Q1. How many errors did the client see behind each technique (column errors)?
errors_haproxy_tuned =
errors_vrrp_tuned =
errors_resplice =
# Q2. Which technique took longest to get the crashed file to the client
#     (the largest failover_ms)?  haproxy-tuned, vrrp-tuned or resplice:
slowest =
# Q3. Under which technique did the client keep its TCP connection (yes for
#     each that did, no for the others)?
kept_connection_haproxy_tuned =
kept_connection_vrrp_tuned =
kept_connection_resplice =
"""


def rows_of(folder):
    path = os.path.join(folder, "trials.csv")
    if not os.path.exists(path):
        raise ValueError(f"no trials.csv in {folder}: run make lab-4 first")
    with open(path, newline="") as f:
        rows = {r["technique"]: r for r in csv.DictReader(f) if r["crash_point"] != "none"}
    missing = [t for t in TECHS if t not in rows]
    if missing:
        raise ValueError(f"trials.csv has no trial of {', '.join(missing)}")
    return rows


def truth(folder):
    rows = rows_of(folder)
    r = rows["resplice"]
    if r["ok"] != "1" or int(r["errors"]):
        raise ValueError("resplice's trial did not complete without an error the client saw")
    for t in TECHS[:2]:
        if not int(rows[t]["errors"]):
            raise ValueError(f"{t}'s client saw no error: the crash missed the in-flight response")
    fo = {t: float(rows[t]["failover_ms"]) if rows[t]["failover_ms"] else float("inf") for t in TECHS}
    out = {f"errors_{t.replace('-', '_')}": int(rows[t]["errors"]) for t in TECHS}
    out["slowest"] = max(TECHS, key=lambda t: fo[t])
    for t in TECHS:     # an error the client saw is a connection it lost (it retried on a new one)
        out[f"kept_connection_{t.replace('-', '_')}"] = "no" if int(rows[t]["errors"]) else "yes"
    return out


def check(folder):
    return common.check("lab-4", folder, truth, "the difference: resplice's client saw no error, the baselines' did")


def run(folder):
    from emul.testbed import Testbed
    from experiments import common as studies
    from experiments.failover import Study
    from experiments.techniques import TECHNIQUES
    from topologies.lan import LanTopo
    progress = studies.Progress(2 * len(TECHS))
    with common.fresh("lab-4", folder) as scratch, Testbed(LanTopo(), scratch.path) as tb, \
            studies.RowWriter(os.path.join(folder, "trials.csv"), "failover") as out:
        work = scratch.path
        s = Study(tb, work, out, progress, "refapp")
        action, _, _ = s.wl.points["static-mid"]
        for name in TECHS:
            tech = TECHNIQUES[name](tb, work, s.wl)
            progress.step(f"{name}: crash-free runs")
            base = s.baseline(tech, runs=2, actions=[action])
            sizes = base[action][1]
            step = max(range(1, len(sizes)), key=lambda i: sizes[i])
            progress.step(f"{name}: the primary killed in the middle of request {step} ({sizes[step]} bytes)")
            tl = os.path.join(folder, "timeline") if name == "resplice" else None
            s.trial(tech, action, "static-mid", step, sizes[step] // 2, 0, base, timeline=tl)
    common.draw_timeline(folder, os.path.join(folder, "timeline"), "refapp-resplice-action1-static-mid",
                         os.path.join(folder, "timeline.png"))
    common.hand_over("lab-4", folder, ANSWERS)


def main():
    return common.main(__doc__, run, check, RUN)


if __name__ == "__main__":
    sys.exit(main())
