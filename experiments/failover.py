"""The LAN failover study (make experiment-lan): each technique of
experiments/techniques.py x Roundcube action x crash point x trial, one row
per trial in results/failover/roundcube.csv (experiments/common.py's
failover schema).

Crash points (the primary's front dies before byte B of request N's
response, rs-app --crash-at N+B; then lighttpd and php-cgi):
  action1 static-mid   the middle of Action 1's largest static file
  action2 login-mid    inside the login response (a new session: non-deterministic)
  action2 mailbox-mid  the middle of the mailbox page after login
  action2 send         the send request ran (mail sent), no response byte left
  action2 compose-mid  the middle of the compose page
Per trial: ok (the action completed, every check passed, the message
delivered exactly once), errors (failed attempts the client saw, retries
included, plus duplicate deliveries), relogins (the session was gone: the
login form came instead of a logged-in page, rs-client's "login" result), failover_ms (how much longer
the crashed request took than its crash-free median with the same
technique; blank when the action failed), detect_ms / recover_ms (resplice:
crash -> proxy hold -> re-spliced; blank for the others).

TRIALS= (default 5), QUICK=1 (1 trial, two crash points, four techniques),
TECHNIQUES=a,b,... to choose.  Ends with a summary: line (median failover
per technique over all crash points).

--study wan (make experiment-wan): the same trials over emulated client
links (topologies/profiles.conf: PROFILES=a,b, default the five WAN
profiles), at the headline crash point (mailbox-mid) with four techniques,
3 trials each; results/wan/roundcube.csv (profile, rtt_ms, loss_pct)."""
import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.stack import binary  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments import common  # noqa: E402
from experiments.techniques import TECHNIQUES  # noqa: E402
from roundcube.deploy import AuxLog, MailStore, count_messages  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402
from topologies.profiles import get as get_profile  # noqa: E402

TRACES = os.path.join(common.ROOT, "roundcube", "traces")
ACTIONS = {"action1": "action1.trace", "action2": "action2.trace"}
# name -> (action, request, offset: bytes, or "mid" = half the crash-free body)
POINTS = {
    "static-mid": ("action1", "largest", "mid"),
    "login-mid": ("action2", 1, 40),
    "mailbox-mid": ("action2", 2, "mid"),
    "send": ("action2", 12, 0),
    "compose-mid": ("action2", 8, "mid"),
}
QUICK_POINTS = ("mailbox-mid", "send")
QUICK_TECHNIQUES = ("none", "browser", "haproxy-tuned", "resplice")
LOGIN_FORM = 'id="login-form"'     # rs-client --login-marker: the session was lost
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
    def __init__(self, tb, run_dir, writer, progress, profile=None):
        self.tb, self.dir, self.w, self.progress, self.profile = tb, run_dir, writer, progress, profile
        self.ms = MailStore(tb, run_dir).start()
        self.aux = AuxLog(tb, run_dir).start()
        self.n = 0

    def counts(self):
        return count_messages(self.dir, "bob", "INBOX"), count_messages(self.dir, "alice", "Sent")

    def client(self, tech, action, runs=1):
        self.n += 1
        out = os.path.join(self.dir, f"c{self.n}.csv")
        d = self.tb.start("c1", f"client-{self.n}", [
            binary("rs-client"), "--server", tech.server(), "--trace", os.path.join(TRACES, ACTIONS[action]),
            "--csv", out, "--timeout", "10s", "--repeat", str(runs), "--quiet", "--login-marker", LOGIN_FORM]
            + tech.client_args())
        d.popen.wait(300)
        if not os.path.exists(out):
            return []
        with open(out) as f:
            return list(csv.DictReader(f))

    def baseline(self, tech, runs=3, row=None, actions=ACTIONS):
        """Crash-free runs of each action: {action: (per-step median ms, body
        sizes, [action ms per run])}.  'row(action, run, ok, ms)', when
        given, records each run."""
        t = tech.start(None)
        base = {}
        try:
            for action in actions:
                self.client(t, action)                  # warm-up
                by_run = {}
                for r in self.client(t, action, runs):
                    by_run.setdefault(int(r["run"]), []).append(r)
                per, totals = [], []
                for k in sorted(by_run):
                    per.append(steps_of(by_run[k]))
                    totals.append(run_ms(by_run[k]))
                    if row:
                        row(action, k, all(r["result"] == "ok" for r in by_run[k]), totals[-1])
                sizes = [int(r["bytes"]) for r in sorted(by_run[min(by_run)], key=lambda r: int(r["step"]))]
                base[action] = ([common.median([p[i][1] for p in per if len(p) > i]) for i in range(len(sizes))],
                                sizes, totals)
        finally:
            t.stop()
        return base

    def trial(self, tech, action, point, step, offset, trial, base, timeline=None):
        """One crash trial: 'tech' crashes at byte 'offset' of request
        'step' of 'action'; 'base' is baseline()'s.  Writes its row; returns
        (ok, failover ms or None).  'timeline' (a directory; resplice only):
        keep the client's pcap and the failover's times there for figures.py."""
        before = self.counts()
        t = tech.start(f"{step}+{offset}")
        crashed = {}
        w = threading.Thread(target=lambda: crashed.update(t=t.crash()), daemon=True)
        w.start()
        cap = self.tb.capture("c1", f"timeline-{self.n}", bpf_filter="tcp port 80", snaplen=96) if timeline else None
        rows = self.client(t, action)
        w.join(60)
        time.sleep(0.2)
        if cap:
            self.tb.stop_capture(cap[0])
        st = steps_of(rows)
        ok = bool(st) and len(st) == len(base[action][0]) and all(r == "ok" for r, _, _ in st)
        dup = 0
        if action == "action2":
            got = self.counts()
            dup = max(0, (got[0] - before[0]) - 1) + max(0, (got[1] - before[1]) - 1)
            ok = ok and got == (before[0] + 1, before[1] + 1)
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
            if cap:
                keep_timeline(timeline, f"{tech.name}-{action}-{point}", cap[1], {
                    "crash": tc, "detect": th, "resend": ts_of(plog, r"step=resent"),
                    "resplice": ts_of(plog, r"recovered id=")}, f"{tech.name}: {action}, crash {point}")
        t.stop()
        self.w.write(workload="roundcube", action=action, technique=tech.name, crash_point=point, trial=trial,
                     seed=trial, ok=int(ok), failover_ms=failover,
                     action_ms=sum(ms for _, ms, _ in st) if st else None, errors=errors, relogins=relogin,
                     detect_ms=detect, recover_ms=recover, profile=self.profile.name if self.profile else "lan",
                     rtt_ms=self.profile.rtt_ms if self.profile else 0,
                     loss_pct=self.profile.loss * 100 if self.profile else 0,
                     config={**tech.config(), "crash_at": f"{step}+{offset}", "request": step,
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


# The WAN study (make experiment-wan): the headline crash point only, over
# each client-link profile (topologies/profiles.conf), fewer techniques.
WAN_PROFILES = ("wan-60", "wan-250", "wan-300", "wan-60-loss1", "wan-250-loss2")
WAN_POINTS = ("mailbox-mid",)
WAN_TECHNIQUES = ("browser-shared", "haproxy-tuned", "vrrp-tuned", "resplice")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(common.ROOT, "results"))
    ap.add_argument("--study", choices=("failover", "wan"), default="failover",
                    help="failover: the LAN study; wan: over the client-link profiles (PROFILES=a,b)")
    a = ap.parse_args()
    quick, wan = common.quick(), a.study == "wan"
    trials = common.trials(3 if wan else 5, quick_default=1)
    names = os.environ.get("TECHNIQUES")
    techs = names.split(",") if names else list(
        QUICK_TECHNIQUES if quick and not wan else WAN_TECHNIQUES if wan else TECHNIQUES)
    for n in techs:
        if n not in TECHNIQUES:
            sys.exit(f"failover: unknown technique {n!r} (known: {', '.join(TECHNIQUES)})")
    points = list(WAN_POINTS if wan else QUICK_POINTS if quick else POINTS)
    profiles = [None]
    if wan:
        names = os.environ.get("PROFILES")
        profiles = [get_profile(n) for n in (names.split(",") if names else
                                             WAN_PROFILES[:1] if quick else WAN_PROFILES)]
    out_dir = os.path.join(a.results, a.study)
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "roundcube.csv")
    if os.path.exists(out):
        os.unlink(out)
    tmp = tempfile.mkdtemp(prefix=f"rs-{a.study}-")
    os.chmod(tmp, 0o755)        # dovecot's mail processes are not root
    progress = common.Progress(len(profiles) * len(techs) * (1 + len(points) * trials))
    by_tech = {}
    with common.RowWriter(out, a.study, config={"trials": trials}) as w:
        for k, profile in enumerate(profiles):
            run_dir = os.path.join(tmp, f"run-{k}")
            pname = profile.name if profile else "lan"
            with Testbed(LanTopo(profile=profile), run_dir) as tb:
                s = Study(tb, run_dir, w, progress, profile)
                for name in techs:
                    tech = TECHNIQUES[name](tb, run_dir, s.ms, s.aux)
                    progress.step(f"{pname} {name} crash-free baseline")
                    actions = sorted({POINTS[p][0] for p in points})
                    base = s.baseline(tech, runs=1 if wan else 3, actions=actions)
                    for point in points:
                        action, step, off = POINTS[point]
                        sizes = base[action][1]
                        if step == "largest":
                            step = max(range(1, len(sizes)), key=lambda i: sizes[i])
                        offset = max(sizes[step] // 2, 40) if off == "mid" else off
                        for trial in range(trials):
                            progress.step(f"{pname} {name} {action} crash={point} trial {trial}")
                            tl = (os.path.join(out_dir, "timeline") if name == "resplice" and trial == 0
                                  and not wan else None)
                            ok, f = s.trial(tech, action, point, step, offset, trial, base, timeline=tl)
                            by_tech.setdefault(name, []).append(f)
    print()
    for name in techs:
        v = [x for x in by_tech.get(name, []) if x is not None]
        n = len(by_tech.get(name, []))
        med = f"{common.median(v):.1f} ms" if v else "-"
        print(f"{name:15s} completed {len(v)}/{n}  median failover {med}")
    print(common.summary(study=a.study, trials=trials, points=len(points), profiles=len(profiles),
                         **{f"{n.replace('-', '_')}_ms": (round(common.median([x for x in by_tech[n] if x is not None]), 2)
                                                         if any(x is not None for x in by_tech.get(n, [])) else "none")
                            for n in techs},
                         **{f"{n.replace('-', '_')}_ok": sum(1 for x in by_tech.get(n, []) if x is not None)
                            for n in techs}))


if __name__ == "__main__":
    main()
