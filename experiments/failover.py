"""The LAN failover study (make experiment-lan): workload (the reference
app, Roundcube) x technique of experiments/techniques.py x action x crash
point x trial, one row per trial in results/failover/<workload>.csv
(experiments/common.py's failover schema).

Crash points (experiments/workloads.py; the primary's rs-app dies before
byte B of request N's response, rs-app --crash-at N+B):
  refapp    action1 static-mid   the middle of Action 1's largest file
            action2 token-mid    inside the token (non-deterministic)
            action2 update       the counter update ran, no response byte left
  roundcube action1 static-mid   the middle of Action 1's largest static file
            action2 login-mid    inside the login response (a new session: non-deterministic)
            action2 mailbox-mid  the middle of the mailbox page after login
            action2 send         the send request ran (mail sent), no response byte left
            action2 compose-mid  the middle of the compose page
Per trial: ok (the action completed, every check passed: for the refapp
every update applied once, for Roundcube the message delivered exactly
once), errors (failed attempts the client saw, retries included, plus
duplicate deliveries), relogins (Roundcube: the session was gone, the login
form came instead of a logged-in page, rs-client's "login" result),
failover_ms (how much longer the crashed request took than its crash-free
median with the same technique; blank when the action failed; noise-bound
at WAN round trips and for large files, where it can go negative),
stall_ms (what the user felt, from the client's own pcap: the longest wait
between the crashed request sent or a segment bringing new bytes and the
next one that did, on the connection that completed it; retransmissions
are no progress; blank when the request failed), detect_ms /
recover_ms (resplice: crash -> proxy hold -> re-spliced; blank for the
others).  The seed (the trial number) draws when, within the period of the
technique's slowest detection timer (keepalived's 1 s check script,
HAProxy's check interval), the client starts: the crash meets the timer at
a different phase in each trial (config's timer_phase_s).

TRIALS= (default 3 for the reference app, 5 for Roundcube), QUICK=1 (1 trial, two crash points per workload, four
techniques), TECHNIQUES=a,b,... and WORKLOADS=a,b to choose; RESUME=1 after an
interruption keeps the trials already in the CSVs and runs only the rest
(KEEP=1: common.WorkDir).  Ends with a
summary: line (median failover per workload and technique over all crash
points).

--study wan (make experiment-wan): the same trials over emulated client
links (topologies/profiles.conf: PROFILES=a,b, default the five WAN
profiles), at each workload's headline crash point with four techniques,
3 trials each; results/wan/<workload>.csv (profile, rtt_ms, loss_pct)."""
import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import binary  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments import common, pcaps  # noqa: E402
from experiments.techniques import TECHNIQUES  # noqa: E402
from experiments.workloads import WORKLOADS  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402
from topologies.profiles import get as get_profile  # noqa: E402

QUICK_TECHNIQUES = ("none", "browser", "haproxy-tuned", "resplice")
TS = re.compile(r"^(\d+\.\d+) ")


def ts_of(log, pattern):
    for line in log.splitlines():
        if re.search(pattern, line):
            m = TS.match(line)
            return float(m.group(1)) if m else None
    return None


def run_ms(rows):
    """Wall time of one run (its rs-client CSV rows), first request sent to
    last response byte, in ms."""
    return (max(int(r["end_us"]) for r in rows) - min(int(r["start_us"]) for r in rows)) / 1000


def steps_of(rows):
    """[(result, ms, retries)] per step of one run, in step order."""
    rows = sorted(rows, key=lambda r: int(r["step"]))
    return [(r["result"], (int(r["end_us"]) - int(r["start_us"])) / 1000, int(r["retries"] or 0)) for r in rows]


class Study:
    """The trials of one workload on one testbed, written to 'writer'."""

    def __init__(self, tb, run_dir, writer, progress, workload, profile=None):
        self.tb, self.dir, self.w, self.progress, self.profile = tb, run_dir, writer, progress, profile
        self.wl = WORKLOADS[workload](tb, run_dir) if isinstance(workload, str) else workload
        self.n = 0

    def client(self, tech, action, runs=1):
        self.n += 1
        out = os.path.join(self.dir, f"c{self.n}.csv")
        d = self.tb.start("c1", f"client-{self.n}", [
            binary("rs-client"), "--server", tech.server(), "--trace", self.wl.actions[action],
            "--csv", out, "--timeout", "10s", "--repeat", str(runs), "--quiet"]
            + self.wl.client_args() + tech.client_args())
        d.popen.wait(300)
        if not os.path.exists(out):
            return []
        with open(out) as f:
            return list(csv.DictReader(f))

    def runs(self, tech, action, runs, warm=True):
        """'runs' crash-free runs of 'action' on a started 'tech', after an
        untimed warm-up run ('warm'): their rows, per run."""
        if warm:
            self.client(tech, action)
        by_run = {}
        for r in self.client(tech, action, runs):
            by_run.setdefault(int(r["run"]), []).append(r)
        return [by_run[k] for k in sorted(by_run)]

    def fresh_runs(self, tech, action, runs):
        """The same, each run on a fresh deployment, without warm-up (the
        workload's actions expect its initial state)."""
        out = []
        for _ in range(runs):
            t = tech.start(None)
            try:
                out.append(self.client(t, action))
            finally:
                t.stop()
        return out

    def baseline(self, tech, runs=3, row=None, actions=None, warm=True):
        """Crash-free runs of each action: {action: (per-step median ms, body
        sizes, [action ms per run])}.  'row(action, run, ok, ms)', when
        given, records each run; 'warm': an untimed run first (when the
        workload allows, see runs())."""
        base, t = {}, None
        try:
            for action in actions or self.wl.actions:
                if action in self.wl.fresh_actions:
                    if t is not None:
                        t.stop()
                        t = None
                    per_run = self.fresh_runs(tech, action, runs)
                else:
                    t = t or tech.start(None)
                    per_run = self.runs(t, action, runs, warm)
                per_run = [r for r in per_run if r]
                if not per_run:
                    raise RuntimeError(f"{tech.name}: no crash-free run of {self.wl.name} {action} completed; "
                                       f"see {self.dir}")
                per, totals = [], []
                for k, rows in enumerate(per_run):
                    per.append(steps_of(rows))
                    totals.append(run_ms(rows))
                    if row:
                        row(action, k, all(r["result"] == "ok" for r in rows), totals[-1])
                sizes = [int(r["bytes"]) for r in sorted(per_run[0], key=lambda r: int(r["step"]))]
                base[action] = ([common.median([p[i][1] for p in per if len(p) > i]) for i in range(len(sizes))],
                                sizes, totals)
        finally:
            if t is not None:
                t.stop()
        return base

    def trial(self, tech, action, point, step, offset, trial, base, timeline=None):
        """One crash trial: 'tech' crashes at byte 'offset' of request
        'step' of 'action'; 'base' is baseline()'s.  Writes its row; returns
        (ok, failover ms or None).  'timeline' (a directory; resplice only):
        keep the client's pcap and the failover's times there for figures.py."""
        before = self.wl.effects()
        t = tech.start(f"{step}+{offset}")
        # The client starts at a random (seeded) phase of the technique's
        # detection timer, so the crash does not always meet it at one point.
        phase = random.Random(trial).uniform(0, tech.timer_period)
        time.sleep(phase)
        crashed = {}
        w = threading.Thread(target=lambda: crashed.update(t=t.crash()), daemon=True)
        w.start()
        # The client's own pcap: the stall it felt (and the timeline's figure).
        cap = self.tb.capture("c1", f"trial-{self.n}", bpf_filter=f"tcp port {t.server().rsplit(':', 1)[1]}",
                              snaplen=96)
        rows = self.client(t, action)
        w.join(60)
        time.sleep(0.2)
        self.tb.stop_capture(cap[0])
        st = steps_of(rows)
        hit = [r for r in rows if int(r["step"]) == step]      # the crashed request
        stall = (pcaps.stall_ms(cap[1], int(hit[0]["local_port"]), int(hit[0]["start_us"]) / 1e6,
                                int(hit[0]["end_us"]) / 1e6) if hit and hit[0]["result"] == "ok" else None)
        ok = bool(st) and len(st) == len(base[action][0]) and all(r == "ok" for r, _, _ in st)
        effects_ok, dup = self.wl.effects_ok(action, before)
        ok = ok and effects_ok
        errors = sum(rt for _, _, rt in st) + sum(1 for r, _, _ in st if r != "ok") + dup
        relogin = int(any(r == "login" for r, _, _ in st))
        failover = st[step][1] - base[action][0][step] if ok and len(st) > step else None
        detect = recover = None
        if tech.name == "resplice":
            plog, flog = t.rr.stack.log("proxy"), t.rr.stack.log("app-primary")
            tc, th = ts_of(flog, r"crash-at "), ts_of(plog, r"step=hold")
            m = re.search(r"recovered id=\d+ .*total_us=(\d+)", plog)
            detect = (th - tc) * 1000 if tc and th else None
            recover = int(m.group(1)) / 1000 if m else None
            if timeline:
                keep_timeline(timeline, f"{self.wl.name}-{tech.name}-{action}-{point}", cap[1], {
                    "crash": tc, "detect": th, "resend": ts_of(plog, r"step=resent"),
                    "resplice": ts_of(plog, r"recovered id=")}, f"{tech.name}: {self.wl.name} {action}, crash {point}")
        t.stop()
        os.unlink(cap[1])
        self.w.write(workload=self.wl.name, action=action, technique=tech.name, crash_point=point, trial=trial,
                     seed=trial, ok=int(ok), failover_ms=failover, stall_ms=stall,
                     action_ms=sum(ms for _, ms, _ in st) if st else None, errors=errors, relogins=relogin,
                     detect_ms=detect, recover_ms=recover, profile=self.profile.name if self.profile else "lan",
                     rtt_ms=self.profile.rtt_ms if self.profile else 0,
                     loss_pct=self.profile.loss * 100 if self.profile else 0,
                     config={**tech.config(), "crash_at": f"{step}+{offset}", "request": step,
                             "timer_phase_s": round(phase, 3),
                             "client": tech.client_args()})
        return ok, failover


def keep_timeline(folder, name, pcap, marks, title):
    """Copies a trial's client pcap into 'folder' with the sidecar that
    figures.py draws the failover timeline from (marks: epoch seconds, the
    daemons' log clock = tcpdump's)."""
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, f"{name}.pcap")
    shutil.copy(pcap, dst)
    t = [v for v in marks.values() if v]
    meta = {"pcap": os.path.basename(dst), "server": "10.0.0.1", "title": title,
            "marks": {k: v for k, v in marks.items() if v}}
    if t:
        meta["xrange"] = [min(t) - 0.05, max(t) + 0.05]
    with open(os.path.join(folder, f"{name}.timeline.json"), "w") as f:
        json.dump(meta, f, indent=1)


# The WAN study (make experiment-wan): each workload's headline crash point
# only, over each client-link profile (topologies/profiles.conf), fewer
# techniques.
WAN_PROFILES = ("wan-60", "wan-250", "wan-300", "wan-60-loss1", "wan-250-loss2")
WAN_TECHNIQUES = ("browser-shared", "haproxy-tuned", "vrrp-tuned", "resplice")


def chosen(env_name, known, default, what):
    """The names in $env_name (comma-separated), else 'default'; exits
    with the known names on an unknown one."""
    names = os.environ.get(env_name)
    names = names.split(",") if names else list(default)
    for n in names:
        if n not in known:
            sys.exit(f"failover: unknown {what} {n!r} (known: {', '.join(known)})")
    return names


def forget_earlier(out_dir, workload):
    """Removes what an earlier run of 'workload' left in 'out_dir': its CSV
    and its timeline pcaps and sidecars."""
    tl_dir = os.path.join(out_dir, "timeline")
    old = [os.path.join(tl_dir, n) for n in (os.listdir(tl_dir) if os.path.isdir(tl_dir) else [])
           if n.startswith(f"{workload}-")]
    for f in old + [os.path.join(out_dir, f"{workload}.csv")]:
        if os.path.exists(f):
            os.unlink(f)


def run_technique(s, name, points, n_trials, todo, wan, out_dir, work, by_tech):
    """Technique 'name' on Study 's': its crash-free baseline, then its
    trials at 'points' that 'todo' holds ({(crash point, trial)}); each
    trial's failover ms into by_tech[(workload, name)]; a resplice trial not
    masked keeps the run directory ('work')."""
    w, pname = s.wl.name, s.profile.name if s.profile else "lan"
    tech = TECHNIQUES[name](s.tb, s.dir, s.wl)
    s.progress.step(f"{w} {pname} {name} crash-free baseline")
    # Over a WAN link the round trips dwarf what a warm-up run would take
    # away; it would cost minutes.
    base = s.baseline(tech, runs=2 if wan else 3, warm=not wan, actions=sorted({s.wl.points[p][0] for p in points}))
    for point in points:
        action, step, off = s.wl.points[point]
        sizes = base[action][1]
        if step == "largest":
            step = max(range(1, len(sizes)), key=lambda i: sizes[i])
        offset = max(sizes[step] // 2, 40) if off == "mid" else off
        for trial in range(n_trials):
            if (point, trial) not in todo:
                continue
            s.progress.step(f"{w} {pname} {name} {action} crash={point} trial {trial}")
            tl = os.path.join(out_dir, "timeline") if name == "resplice" and trial == 0 and not wan else None
            ok, f = s.trial(tech, action, point, step, offset, trial, base, timeline=tl)
            if name == "resplice" and not ok:
                work.keep(f"{w} {pname} {action} crash={point} trial {trial} not masked")
            by_tech.setdefault((w, name), []).append(f)


def done_trials(path):
    """RESUME=1: {(technique, profile, crash_point, trial): failover ms or
    None} of the trials already in 'path'."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {(r["technique"], r["profile"], r["crash_point"], int(r["trial"])): common.num(r["failover_ms"])
                for r in csv.DictReader(f)}


def crash_points(wl, quick, wan):
    return [wl.headline] if wan else list(wl.quick_points if quick else wl.points)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(common.ROOT, "results"))
    ap.add_argument("--study", choices=("failover", "wan"), default="failover",
                    help="failover: the LAN study; wan: over the client-link profiles (PROFILES=a,b)")
    a = ap.parse_args()
    quick, wan = common.quick(), a.study == "wan"
    trials = {w.name: common.trials(3 if wan else w.trials, quick_default=1) for w in WORKLOADS.values()}
    techs = chosen("TECHNIQUES", TECHNIQUES, QUICK_TECHNIQUES if quick and not wan else
                   WAN_TECHNIQUES if wan else TECHNIQUES, "technique")
    wls = chosen("WORKLOADS", WORKLOADS, WORKLOADS, "workload")
    profiles = [None]
    if wan:
        names = os.environ.get("PROFILES")
        profiles = [get_profile(n) for n in (names.split(",") if names else
                                             WAN_PROFILES[:1] if quick else WAN_PROFILES)]
    out_dir = os.path.join(a.results, a.study)
    os.makedirs(out_dir, exist_ok=True)
    resume = os.environ.get("RESUME") == "1"
    for w in wls:
        if not resume:
            forget_earlier(out_dir, w)
    with common.WorkDir(f"rs-{a.study}-") as work:
        tmp = work.path
        plan = [(w, [t for t in techs if TECHNIQUES[t].applies(WORKLOADS[w])]) for w in wls]
        progress = common.Progress(len(profiles) * sum(
            len(ts) * (1 + len(crash_points(WORKLOADS[w], quick, wan)) * trials[w]) for w, ts in plan))
        by_tech = {}
        for w, wtechs in plan:
            done = done_trials(os.path.join(out_dir, f"{w}.csv")) if resume else {}
            for (name, *_), f in done.items():
                by_tech.setdefault((w, name), []).append(f)
            if done:
                print(f"{w}: resuming, {len(done)} trials already in {out_dir}/{w}.csv", file=sys.stderr)
            with common.RowWriter(os.path.join(out_dir, f"{w}.csv"), a.study, config={"trials": trials[w]}) as out:
                for k, profile in enumerate(profiles):
                    run_dir = os.path.join(tmp, f"{w}-{k}")
                    pname = profile.name if profile else "lan"
                    with Testbed(LanTopo(profile=profile), run_dir) as tb:
                        s = Study(tb, run_dir, out, progress, w, profile)
                        points = crash_points(s.wl, quick, wan)
                        for name in wtechs:
                            todo = {(point, trial) for point in points for trial in range(trials[w])
                                    if (name, pname, point, trial) not in done}
                            progress.total -= len(points) * trials[w] - len(todo) + (0 if todo else 1)
                            if not todo:
                                continue
                            run_technique(s, name, points, trials[w], todo, wan, out_dir, work, by_tech)
    print()
    summary = {}
    for w, wtechs in plan:
        for name in wtechs:
            got = by_tech.get((w, name), [])
            v = [x for x in got if x is not None]
            med = f"{common.median(v):.1f} ms" if v else "-"
            print(f"{w:10s} {name:15s} completed {len(v)}/{len(got)}  median failover {med}")
            key = f"{w}_{name.replace('-', '_')}"
            summary[f"{key}_ms"] = round(common.median(v), 2) if v else "none"
            summary[f"{key}_ok"] = len(v)
    print(common.summary(study=a.study, **{f"{w}_trials": trials[w] for w in wls}, workloads=len(wls),
                         profiles=len(profiles), **summary))


if __name__ == "__main__":
    main()
