#!/usr/bin/python3
"""make fault-campaign: faults of every component at random moments, judged
from outside.  A study, not a benchmark: it counts what broke.

Per trial a fresh stack serves a workload (below); at a moment drawn
uniformly over the crash-free action (seeded) the harness injects one fault
from outside the component:

  none                  nothing (the false-failover check)
  process               SIGKILL of the primary's application
  host                  the primary host's interfaces down
  hang                  SIGSTOP of the primary's application
  hang-resume           the same, and SIGCONT once the proxy failed it over
                        (0-500 ms later, drawn): the resumed backend goes on
                        with what it was doing (a response, a state, a
                        mail); none of it may reach the client or count
  cut-logger            the primary cut off from the logger only (iptables
                        in its namespace): its heartbeats stop, it lives on
  alternate-in-recovery SIGKILL of the primary, then of the alternate's
                        application as soon as the proxy holds a connection
                        (both backends dead: a clean end is expected)
  logger-idle           SIGKILL of rs-logger (nothing else fails)
  logger-in-recovery    SIGKILL of the primary, then of rs-logger as the
                        first recovery starts (a clean end is expected)
  client-loss           half the packets of every client link dropped for
                        100-600 ms (iptables statistic match on the client hosts)
  second                SIGKILL of the primary, then 0-2 s later one of:
                        client-loss, logger kill, alternate kill
  proxy                 SIGKILL of rs-proxy, started again 200 ms later (a
                        supervisor): the new one adopts the spliced
                        connections; those it had not spliced yet die with
                        its sockets, and new ones wait for it (their SYNs
                        dropped: sent again) or, while it is still dying,
                        are refused (a clean end, counted; see below)
  pair-kill             with a proxy pair (LanTopo(pair=True)): SIGKILL of the
                        active rs-proxy; the standby takes the VIP over, and a
                        supervisor starts the killed one again (as the standby)
                        200 ms later
  pair-hang             with a proxy pair: SIGSTOP of the active rs-proxy; the
                        standby takes over after --takeover-after, and a drawn
                        200-700 ms later the hung one gets SIGCONT: it must step
                        down (exit 3) before it does anything else (a connection
                        that ends from then on is not forgiven as the proxy
                        fault's); a supervisor then starts it again as the
                        standby
  pair-host             with a proxy pair: the active proxy's host's
                        interfaces down (the standby takes over after
                        --takeover-after; the clients of connections still
                        being set up there are reset at once, probed)
  double                with a spare backend (LanTopo(spare=True), the reference
                        app only): SIGKILL of the primary, then of the
                        alternate at a second moment drawn over the rest
                        of the action (at least 50 ms later: it serves the
                        recovered connections by then, or still recovers
                        them): the spare takes over, masked
  auxlog                SIGKILL of rs-auxlog (Roundcube only; not in the
                        default list: it is not replicated, nothing masks it)

Workloads (the reference app's responses are checkable content):
  refapp-1    one client, one connection: a first request at the proxy's
              64 KiB limit (an upload), a 16 MB download, a 6 MB upload,
              two counter updates, a token, a 1 MB download
  refapp-50   50 connections on 5 client hosts: a counter update, a 1 MB
              download, a 256 KB upload, a counter update, a token
  roundcube-action1, roundcube-action2
              Roundcube behind rs-front (the paper's workload), one
              client running the recorded Action 1 (login page and its
              static files) or Action 2 (log in, compose, send, log out):
              Action 2 must deliver its message exactly once (bob's INBOX,
              alice's Sent)
  roundcube-action2x4  four browsers running Action 2 at once, each its
              own session: four messages, each exactly once
  refapp-churn  new connections all along: 8 clients on 2 hosts, each
              opening a connection every ~5 ms for a 1 KB download and a
              counter update (the fault meets connections being set up,
              spliced at the SYN or at the request, and ending)

The checker sees only what lands outside the daemons:
  - the clients' own pcaps: a RST or FIN from the VIP before the client's
    own close is a violation, unless it is a clean end: a RST, after a
    second fault that left no backend to move to (the alternate or the
    logger gone after the primary), within 1 s of that fault (or of the
    connection's SYN, when it came later), for a connection the proxy
    closed with a counted reason; or, after a SIGKILL of the proxy (or of
    the active one of a pair, or its host down), a FIN or RST within 1 s
    of it, for a connection the proxy had not spliced (it died with the
    proxy's sockets; a spliced one must live) and whose first SYN came
    before a proxy served again (restarted, or the pair's standby active:
    a later connection must live too);
  - every response byte checked by rs-client against the content the
    crash-free run sends (content seeds; counter and upload bodies), and
    every byte the alternate sends again compared on the wire with what
    the primary had sent there (the logger's "retransmission differs":
    a non-deterministic response must come back as the primary began it);
  - exactly-once effects: the serving backend's counter after the run must
    be between the updates the clients saw succeed and those plus the
    updates whose outcome the client cannot know (cut off by a clean end);
    for Roundcube's Action 2, bob's INBOX and alice's Sent (+1 each);
  - a time bound on every client (no hang);
  - the daemons' logs: a backend declared failed that no fault touched, or
    before its fault, is a false failover; a sanitizer report fails the
    trial (run it on the sanitized build: make fault-campaign uses
    build/san).

Writes results/faults/trials.csv (one row per trial: seed, fault, moment,
workload, load, verdict, reason, ...; experiments/common.py documents the
columns; make figures draws the matrix and REPORT.md's section), and ends
with 'summary: trials= masked= clean_ends= wrong_bytes= duplicates= hangs=
false_failovers= ...'.  TRIALS= per (fault, workload) (default: 48 for
refapp-1, 18 for refapp-50, 4 for each Roundcube workload, 12 for
refapp-churn: 1428 trials),
QUICK=1 (2 per pair for refapp-1, 1 for the others), FAULTS=,
WORKLOADS=, SEED=, MOMENT_MS= (every fault at this moment: the drawn
moment depends on the machine's pace), HOG=1 (a busy loop on the logger and proxy hosts: the
machine has two cores), RESUME=1 (after an interruption: the trials
already in trials.csv stay and only the missing ones run; use the same
SEED= and FAULTS=).  Exit status 1 when any trial is a violation.
"""
import argparse
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import APP_PORT, ROOT, binary, use_build  # noqa: E402
from emul.shaping import wait_until  # noqa: E402
from emul.stack import Stack  # noqa: E402
from experiments.workloads import RoundcubeWorkload  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments.common import FAULT_VERDICTS, Progress, RowWriter, median, summary, trials  # noqa: E402
from experiments.pcaps import ends  # noqa: E402
from topologies.lan import SERVERS, LanTopo  # noqa: E402

FAULTS = ("none", "process", "host", "hang", "hang-resume", "cut-logger", "alternate-in-recovery", "logger-idle",
          "logger-in-recovery", "client-loss", "second", "proxy", "pair-kill", "pair-hang", "pair-host", "double")
# These run on a testbed of their own, with a proxy pair, or with a spare.
PAIR_FAULTS = ("pair-kill", "pair-hang", "pair-host")
SPARE_FAULTS = ("double",)
DOUBLE_MIN_S = 0.05
# Faults a campaign runs only when asked (FAULTS=...): rs-auxlog is not
# replicated, so its death is not masked (see the closing notes of issue 14).
OPT_IN = ("auxlog",)
# The seed's model masks one fault: after the primary's, the alternate or
# the logger gone too leaves some connections nothing to move to, and a
# clean end (a RST within 1 s, counted) is a correct outcome for them.
# With a spare (re-protection) the alternate's death is masked too.
def unmaskable(times, backends=2):
    """True when 'times' (the faults injected) hold such a second fault."""
    names = [w for w, _ in times]
    return any(w in ("app-primary", "host", "hang", "cut-logger") for w in names) and \
        any(w == "logger" or (w == "app-alternate" and backends < 3) for w in names)

SECOND = ("client-loss", "logger", "alternate")
PROXY_RESTART_S = 0.2        # a supervisor's delay before it starts a killed rs-proxy again
RESUME_WAIT_S = 3.0          # hang-resume: the longest wait for the failover before the SIGCONT
RESUME_SETTLE_S = 1.0        # hang-resume: the resumed backend's time to act before the judging
PAIR_RESUME_MIN_S = 0.2      # pair-hang: the SIGCONT at least this long after the takeover (its resets are done)


def spliced_before(plog, t):
    """Clients (tcpdump's ip.port) whose connection the proxy of log 'plog'
    had spliced before time 't'.  A splice at connect counts once its
    request is through (`open id=... us=`): until then the request goes
    out through the proxy's own socket, which dies with it (the successor
    ends such a connection: reason=opening-lost)."""
    out = set()
    for m in re.finditer(r"^(\d+\.\d+) rs-proxy (splice|open) id=\d+ client=(\S+) (.*)$", plog, re.M):
        when, what, client, rest = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if when < t and ((what == "splice" and rest.endswith(" pending=0")) or (what == "open" and rest.startswith("us="))):
            out.add(client.replace(":", "."))
    return out


def serving_again(plog, t):
    """When a proxy served the VIP again after the proxy fault at 't': the
    restarted one listening, or a pair's standby active; None if none did.
    A connection whose first SYN came later meets a working proxy: it must
    not end (the port clash session 43 found ended such connections, and
    the rule for connections the dead proxy took down had let it pass)."""
    for m in re.finditer(r"^(\d+\.\d+) rs-proxy (?:listening on |pair: active )", plog, re.M):
        if float(m.group(1)) > t:
            return float(m.group(1))
    return None


VIP = SERVERS["proxy"]
CLEAN_END_S = 1.0
REQ_MAX = 64 * 1024          # rs-proxy's first-request limit (RS_PROXY_REQ_MAX)
BAD_BYTES = {"bad-status", "bad-length", "bad-content", "missing-marker", "bad-capture", "bad-response"}
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")


# ---- workloads -----------------------------------------------------------

def refapp_1(seed):
    # The first request fills the proxy's buffer to its limit: the head
    # rs-client writes is ~130 bytes, the rest is body.
    first = REQ_MAX - 256
    return (f"request POST /upload?seed={seed}\n  fill seed={seed} length={first}\n"
            f"  expect contains \"upload={first} \"\n"
            f"request GET /static/16M?seed={seed}\n  expect content seed={seed}\n"
            f"request POST /upload?seed={seed + 1}\n  fill seed={seed + 1} length=6M\n"
            "  expect contains \"upload=6291456 \"\n"
            "request POST /counter\n  expect contains \"counter=\"\n"
            "request GET /token\n  expect status 200\n  capture tok body \"token=([0-9a-f]{32})\"\n"
            "request POST /counter\n  expect contains \"counter=\"\n"
            f"request GET /static/1M?seed={seed + 2}\n  expect content seed={seed + 2}\n")


def refapp_50(seed):
    return ("request POST /counter\n  expect contains \"counter=\"\n"
            f"request GET /static/1M?seed={seed}\n  expect content seed={seed}\n"
            f"request POST /upload?seed={seed + 1}\n  fill seed={seed + 1} length=256k\n"
            "  expect contains \"upload=262144 \"\n"
            "request POST /counter\n  expect contains \"counter=\"\n"
            "request GET /token\n  expect status 200\n  capture tok body \"token=([0-9a-f]{32})\"\n")


def refapp_churn(seed):
    # Run again and again (CHURN_RUNS), each run on a new connection.
    return (f"request GET /static/1000?seed={seed}\n  expect content seed={seed}\n"
            "request POST /counter\n  expect contains \"counter=\"\n"
            "think 5ms\n")


CHURN_RUNS = 120


def kind(r):
    """"POST /counter" for a client row."""
    return f"{r['method']} {r['target'].split('?')[0]}"


class Refapp:
    """rs-app on both backends (one process each); its side effect is the
    counter, which every update (POST /counter, POST /upload) increments."""
    UPDATES = ("POST /counter", "POST /upload")

    def __init__(self, tb, work, make, nhosts, conns, runs=1):
        """'runs': of the trace per client connection, each on a new one."""
        self.tb, self.work, self.make = tb, work, make
        self.hosts = [f"c{i + 1}" for i in range(nhosts)]
        self.conns, self.runs = conns, runs
        self.stack = None

    def start(self):
        self.stack = Stack(self.tb, self.work).start()
        return self.stack

    def stop(self):
        self.stack.stop()

    def processes(self, host):
        """The application's processes on backend 'host' (a hang stops
        them all)."""
        d = self.stack.d[f"app-{host}"]
        return [d.pid] if d.alive() else []

    def kill(self, host):
        """A process crash of the application on backend 'host'."""
        self.tb.kill(self.stack.d[f"app-{host}"])

    def app_alive(self, host):
        return self.stack.d[f"app-{host}"].alive()

    def serving(self):
        """The backend that holds the application's state now: the first,
        in the chain's order, that the proxy did not declare failed (it may
        do so after the clients are done: a partitioned primary) and whose
        application lives."""
        plog, chain = self.stack.proxy_log(), self.stack.backends
        for i, host in enumerate(chain[:-1]):
            if not re.search(rf"rs-proxy failure backend_id={i + 1} ", plog) and self.app_alive(host):
                return host
        return chain[-1]

    def trace(self, host, seed):
        path = os.path.join(self.work, f"{host}.trace")
        with open(path, "w") as f:
            f.write(self.make(seed))
        return path

    def client_args(self):
        return ["--connections", str(self.conns), "--repeat", str(self.runs)]

    def before(self):
        return None

    def auxlog(self):
        """rs-auxlog, or None: only Roundcube talks to a mail store."""
        return None

    def effects(self, results, before):
        """(fields, violations) of the side effects: the serving backend's
        counter must settle between the updates the clients saw succeed
        and those plus the ones cut off (the client cannot know whether
        they ran).  The logger confirms states to the alternate a little
        behind the clients (the mirror's backlog), so wait for it."""
        okd = sum(r["result"] == "ok" and kind(r) in self.UPDATES for r in results)
        unsure = sum(r["result"] != "ok" and kind(r) in self.UPDATES for r in results)
        fields = {"updates_ok": okd, "updates_unsure": unsure}

        def read():
            host = self.serving()
            return counter_of(self.tb, host) if self.app_alive(host) else None

        if not self.app_alive(self.serving()):
            return fields, []       # both backends dead: no state left to check
        counter = {}
        wait_until(lambda: (counter.update(v=read()) or (counter["v"] is not None and counter["v"] >= okd)), 5, 0.1)
        time.sleep(0.2)
        v = read()
        fields["counter"] = "" if v is None else v
        if v is None:
            return fields, ["no_counter"]
        if v > okd + unsure:
            return fields, ["duplicates"]
        if v < okd:
            return fields, ["lost_update"]
        return fields, []


class Roundcube(Refapp):
    """Roundcube behind rs-front on both backends (lighttpd and php-cgi
    behind each front: a process crash kills all three, a hang stops all
    three), the mail store and rs-auxlog, one client running the recorded
    action.  Action 2 sends one message: bob's INBOX and alice's Sent must
    each grow by exactly one (by at most one when the action was cut off
    by a clean end)."""

    shared = None       # the mail store and rs-auxlog: one per campaign

    def __init__(self, tb, work, action, conns=1):
        """'conns': browsers running the action at once, each on its own
        connection and session (Action 2: each sends its message)."""
        super().__init__(tb, work, None, 1, conns)
        self.action = action
        if Roundcube.shared is None:
            os.chmod(work, 0o755)       # dovecot's mail processes are not root
            Roundcube.shared = RoundcubeWorkload(tb, work)
        self.wl = Roundcube.shared
        self.rr = None

    def start(self):
        self.rr = self.wl.resplice(None).start()
        self.stack = self.rr.stack
        return self.stack

    def stop(self):
        self.rr.stop()

    def processes(self, host):
        return super().processes(host) + self.rr.rc[host].pids()

    def kill(self, host):
        super().kill(host)
        self.rr.rc[host].crash()

    def trace(self, host, seed):
        return os.path.join(ROOT, "roundcube", "traces", f"{self.action}.trace")

    def client_args(self):
        return self.wl.client_args() + ["--connections", str(self.conns)]

    def before(self):
        return self.wl.effects()

    def auxlog(self):
        return self.wl.aux

    def effects(self, results, before):
        """Each browser whose whole action succeeded sent its message once;
        one whose action was cut off (a clean end) sent it at most once."""
        if self.action != "action2":
            return {}, []
        with open(self.trace(None, None)) as f:
            steps = sum(line.startswith("request ") for line in f)
        ok = sum(len(rows) == steps and all(r["result"] == "ok" for r in rows)
                 for rows in ([r for r in results if r["connection"] == str(c)] for c in range(self.conns)))
        unsure = self.conns - ok
        wait_until(lambda: min(a - b for a, b in zip(self.wl.effects(), before)) >= ok, 5 if ok else 1, 0.1)
        time.sleep(0.2)
        got = self.wl.effects()
        delta = (got[0] - before[0], got[1] - before[1])
        fields = {"updates_ok": ok, "updates_unsure": unsure, "counter": f"{delta[0]}/{delta[1]}"}
        if max(delta) > ok + unsure:
            return fields, ["duplicates"]
        if min(delta) < ok:
            return fields, ["lost_update"]
        return fields, []


# name -> (make the target on a testbed and run dir)
WORKLOADS = {
    "refapp-1": lambda tb, work: Refapp(tb, work, refapp_1, 1, 1),
    "refapp-50": lambda tb, work: Refapp(tb, work, refapp_50, 5, 10),
    "roundcube-action1": lambda tb, work: Roundcube(tb, work, "action1"),
    "roundcube-action2": lambda tb, work: Roundcube(tb, work, "action2"),
    "refapp-churn": lambda tb, work: Refapp(tb, work, refapp_churn, 2, 4, CHURN_RUNS),
    "roundcube-action2x4": lambda tb, work: Roundcube(tb, work, "action2", 4),
}
CLIENT_HOSTS = 5
# Trials per fault of each workload in the full campaign (TRIALS= sets them
# all): 1428 trials (90 per fault, 78 for 'double', which runs with the
# reference app only).  Measured at 3c78304, before session 43 added
# refapp-churn and roundcube-action2x4: 1028 trials in 32.7 minutes (a
# trial: refapp-1 1.6 s, refapp-50 2.2 s, Roundcube 3.0 s; 51.1 minutes
# before the stack's start was cut from 0.95 s to 0.35 s: the tc program's
# verification, 0.6 s of every rs-proxy start, fell to 0.1 s, and the
# daemons and captures start side by side); refapp-churn's trials take
# 2.7 s, roundcube-action2x4's 5 s.
FULL_TRIALS = {"refapp-1": 48, "refapp-50": 18, "roundcube-action1": 4, "roundcube-action2": 4,
               "refapp-churn": 12, "roundcube-action2x4": 4}


# ---- faults ----------------------------------------------------------------

def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Faults:
    """Injects one trial's faults and undoes them; 'times' lists (what,
    time.time()) for every fault injected."""

    def __init__(self, tb, target, rng):
        self.tb, self.target, self.rng = tb, target, rng
        self.stack, self.hosts = target.stack, target.hosts
        self.times, self.undo = [], []
        self.dead_proxy_log = ""     # the log of an rs-proxy killed and replaced

    def mark(self, what):
        self.times.append((what, time.time()))

    def kill(self, name):
        """SIGKILL of daemon 'name' of the stack (the application's whole
        process group for "app-HOST")."""
        self.mark(name)
        if name.startswith("app-"):
            self.target.kill(name[4:])
        else:
            self.tb.kill(self.stack.d[name])

    def primary_kill(self):
        self.kill("app-primary")

    def host(self):
        self.mark("host")
        self.tb.host_down("primary")
        self.undo.append(lambda: self.tb.host_up("primary"))

    def hang(self):
        self.mark("hang")
        pids = self.target.processes("primary")
        for pid in pids:
            signal_pid(pid, signal.SIGSTOP)
        # Killed, not resumed, after the trial: the fence stops only the
        # front, and a php-cgi resumed later would act in the next trial
        # (rs-auxlog keeps its mail from counting twice: a superseded
        # conversation drains; docs/failure-handling.md).
        self.undo.append(lambda: [signal_pid(pid, signal.SIGKILL) for pid in pids])
        return pids

    def hang_resume(self):
        """A hang that ends: SIGCONT once the proxy declared the primary
        failed (or after RESUME_WAIT_S when it did not), a drawn 0-500 ms
        later; then RESUME_SETTLE_S for the resumed backend to finish what
        it was doing before the trial is judged."""
        pids, delay = self.hang(), self.rng.uniform(0, 0.5)

        def resume():
            wait_until(lambda: "rs-proxy failure backend_id=1 " in self.stack.proxy_log(), RESUME_WAIT_S, 0.02)
            time.sleep(delay)
            self.mark("resume")
            for pid in pids:
                signal_pid(pid, signal.SIGCONT)
            time.sleep(RESUME_SETTLE_S)

        t = threading.Timer(0, resume)
        t.start()
        return t

    def cut_logger(self):
        self.mark("cut-logger")
        lg, h = SERVERS["logger"], self.tb["primary"]
        h.cmd(f"iptables -w -A OUTPUT -d {lg} -j DROP; iptables -w -A INPUT -s {lg} -j DROP")
        self.undo.append(lambda: h.cmd("iptables -w -F"))

    def client_loss(self):
        """Half the segments to and from the VIP lost on every client host
        for 100-600 ms (iptables' statistic match: this kernel has neither
        netem nor tc's gact)."""
        ms = self.rng.uniform(100, 600)
        rules = [f"INPUT -p tcp -s {VIP} --sport 80", f"OUTPUT -p tcp -d {VIP} --dport 80"]
        drop = "-m statistic --mode random --probability 0.5 -j DROP"
        hs = [self.tb[h] for h in self.hosts]
        self.mark("client-loss")
        for h in hs:
            out = h.cmd("; ".join(f"iptables -w -A {r} {drop}" for r in rules) + "; iptables -w -S | grep -c statistic")
            if out.strip().splitlines()[-1] != "2":
                raise RuntimeError(f"loss rules not set on {h.name}: {out}")
        time.sleep(ms / 1000)
        for h in hs:
            h.cmd("; ".join(f"iptables -w -D {r} {drop}" for r in rules))

    def after_hold(self, action):
        """Runs 'action' as soon as the proxy holds a connection of the
        failed primary (a recovery has begun), in the background."""
        return self.tb.crash_when(lambda: "step=hold" in self.stack.proxy_log(), action, timeout=5)

    def inject(self, fault):
        """Injects 'fault'; returns a handle to wait for when it has a
        second part in the background (or None)."""
        if fault == "process":
            self.primary_kill()
        elif fault == "host":
            self.host()
        elif fault == "hang":
            self.hang()
        elif fault == "hang-resume":
            return self.hang_resume()
        elif fault == "cut-logger":
            self.cut_logger()
        elif fault == "logger-idle":
            self.kill("logger")
        elif fault == "client-loss":
            self.client_loss()
        elif fault == "auxlog":
            aux = self.target.auxlog()
            self.mark("auxlog")
            self.tb.kill(aux.d)
            self.undo.append(aux.start)
        elif fault == "alternate-in-recovery":
            self.primary_kill()
            return self.after_hold(lambda: self.kill("app-alternate"))
        elif fault == "logger-in-recovery":
            self.primary_kill()
            return self.after_hold(lambda: self.kill("logger"))
        elif fault == "proxy":
            self.kill("proxy")
            t = threading.Timer(PROXY_RESTART_S, self.restart_proxy)
            t.start()
            return t
        elif fault == "pair-kill":
            self.kill("proxy")
            t = threading.Timer(PROXY_RESTART_S, self.restart_proxy, kwargs={"standby": True})
            t.start()
            return t
        elif fault == "pair-hang":
            return self.pair_hang()
        elif fault == "pair-host":
            self.mark("proxy")
            self.tb.host_down("proxy")
            self.undo.append(lambda: self.tb.host_up("proxy"))
        elif fault == "double":
            self.primary_kill()
            rest = max(2 * DOUBLE_MIN_S, self.window - self.moment)
            t = threading.Timer(self.rng.uniform(DOUBLE_MIN_S, rest), lambda: self.kill("app-alternate"))
            t.start()
            return t
        elif fault == "second":
            second, delay = self.rng.choice(SECOND), self.rng.uniform(0, 2)
            self.primary_kill()
            act = {"client-loss": self.client_loss, "logger": lambda: self.kill("logger"),
                   "alternate": lambda: self.kill("app-alternate")}[second]
            self.mark(f"second={second}")
            t = threading.Timer(delay, act)
            t.start()
            return t
        return None

    def pair_hang(self):
        """SIGSTOP of the active proxy; SIGCONT a drawn 200-700 ms after the
        standby took over (or after RESUME_WAIT_S): it must exit (status 3)
        at once; then a supervisor starts it again as the standby.  One
        that lives on is SIGKILLed and marked "proxy-stuck" (a violation)."""
        d, delay = self.stack.d["proxy"], self.rng.uniform(PAIR_RESUME_MIN_S, PAIR_RESUME_MIN_S + 0.5)
        self.mark("proxy")
        d.popen.send_signal(signal.SIGSTOP)

        def resume():
            wait_until(lambda: "pair: active" in self.stack.log("proxy2"), RESUME_WAIT_S, 0.02)
            time.sleep(delay)
            self.mark("resume")
            d.popen.send_signal(signal.SIGCONT)
            try:
                d.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.mark("proxy-stuck")
                self.tb.kill(d)
            if d.popen.returncode != 3:
                self.mark("proxy-stuck")
            time.sleep(PROXY_RESTART_S)
            self.restart_proxy(standby=True)

        t = threading.Timer(0, resume)
        t.start()
        return t

    def restart_proxy(self, standby=False):
        self.dead_proxy_log = self.stack.log("proxy")
        self.stack.start_proxy("proxy-restarted", standby=standby)
        self.mark("proxy-restarted")

    def wait(self, handle):
        if handle is None:
            return
        if isinstance(handle, threading.Timer):
            handle.join(8)
        else:
            handle.fired.wait(6)

    def revert(self):
        for u in reversed(self.undo):
            u()


# ---- judging ---------------------------------------------------------------

def false_failovers(plog, times):
    """Backends the proxy declared failed (it acts on every failure the
    logger declares) that no fault explains: one no fault touched, or one
    declared before its fault."""
    primary_t = next((t for w, t in times if w in ("app-primary", "host", "hang", "cut-logger")), None)
    alt_t = next((t for w, t in times if w == "app-alternate"), None)
    n = 0
    for m in re.finditer(r"^(\d+\.\d+) rs-proxy failure backend_id=(\d+) ", plog, re.M):
        t, bid = float(m.group(1)), int(m.group(2))
        since = {1: primary_t, 2: alt_t}.get(bid)
        if since is None or t < since:
            n += 1
    return n


def counter_of(tb, host):
    """The counter of 'host''s application, read on its own loopback, or None."""
    out = tb[host].cmd(f"curl -s -m 2 http://127.0.0.1:{APP_PORT}/counter")
    m = re.search(r"counter=(\d+)", out)
    return int(m.group(1)) if m else None


def judge(row, clients, flows, plog, times, effects, backends=2):
    """Fills the verdict of 'row' from outside: client rows, pcap ends,
    the proxy's log, the side effects ((fields, violations) from the
    workload), on a stack of 'backends' backends.  Returns the list of
    violations."""
    bad = []
    results = [r for c in clients for r in c["rows"]]
    row["requests"] = len(results)
    row["failed"] = sum(r["result"] != "ok" for r in results)
    if any(r["result"] in BAD_BYTES for r in results):
        bad.append("wrong_bytes")
    if any(c["hung"] for c in clients):
        bad.append("hang")
    if any(w == "proxy-stuck" for w, _ in times):
        bad.append("proxy_stuck")      # a hung active proxy, woken, did not step down
    last_fault = max((t for _, t in times), default=None)
    proxy_t = next((t for w, t in times if w == "proxy"), None)
    spliced_at_kill = spliced_before(plog, proxy_t) if proxy_t is not None else set()
    successor_t = serving_again(plog, proxy_t) if proxy_t is not None else None
    # A hung proxy woken after its successor took over must do nothing:
    # what ends from then on was not the fault's doing (pair-hang).
    resume_t = next((t for w, t in times if w == "resume"), None)
    # Connections the proxy reset with a counted reason (unrecoverable, or
    # a new one with no backend left); tcpdump names a client ip.port, the
    # proxy ip:port.
    counted = {c.replace(":", ".") for c in re.findall(r"rs-proxy close id=\d+ client=(\S+) .*reason=\S+ rst=1", plog)}
    clean, slowest, detail = 0, 0.0, []
    for client, e in flows.items():
        if "client_syn" not in e:
            # Not this trial's (each begins with its SYN in the capture): a
            # late FIN of an earlier trial's connection, from a proxy host
            # whose interfaces came back up (the client answers it with a RST).
            continue
        server = [t for k, t in e.items() if k.startswith("server")]
        end = min(server) if server else None
        if end is None or ("client_end" in e and e["client_end"] <= end):
            continue
        since = max(last_fault or 0, e.get("client_syn", 0))
        ok = ("server_rst" in e and e["server_rst"] == end and unmaskable(times, backends) and client in counted
              and last_fault is not None and end - since <= CLEAN_END_S)
        if (proxy_t is not None and client not in spliced_at_kill
                and (successor_t is None or e["client_syn"] < successor_t)
                and (resume_t is None or end < resume_t)):
            ok = ok or 0 <= end - max(proxy_t, e["client_syn"]) <= CLEAN_END_S
        if ok:
            clean += 1
            slowest = max(slowest, end - since)
        else:
            bad.append("unclean_end")
            detail.append(("rst" if "server_rst" in e else "fin") + f"@{client}"
                          + (f"+{(end - since) * 1000:.0f}ms" if last_fault else ""))
    row["clean_ends"] = clean
    # How close the slowest clean end came to CLEAN_END_S.
    row["clean_end_ms"] = round(slowest * 1000) if clean else ""
    row["resets"] = sum(r["result"] == "reset" for r in results)
    fields, effects_bad = effects
    row.update(fields)
    bad += effects_bad
    if row["false_failovers"]:
        bad.append("false_failover")
    if row["sanitizer"]:
        bad.append("sanitizer")
    if not bad and row["failed"] and not clean:
        bad.append("client_failed")
    row["verdict"] = "violation" if bad else "clean_end" if clean else "masked"
    row["reason"] = " ".join(sorted(set(bad)))
    row["detail"] = " ".join(detail[:5])
    return bad


# ---- a trial ---------------------------------------------------------------

def run_clients(tb, args, target, seed):
    out = []
    for i, host in enumerate(target.hosts):
        csvp = os.path.join(args.work, f"{host}.csv")
        if os.path.exists(csvp):
            os.remove(csvp)
        d = tb.start(host, f"client-{host}", [args.client, "--server", f"{VIP}:80", "--trace",
                                              target.trace(host, seed * 10 + i * 1000), "--csv", csvp,
                                              "--quiet", "--timeout", "10s"] + target.client_args())
        out.append({"host": host, "d": d, "csv": csvp, "hung": False, "rows": []})
    return out


def keep(args, name):
    """Copies the trial's logs, traces, tables and pcaps to
    OUT/violations/NAME; returns that folder, relative to OUT."""
    dst = os.path.join(args.out, "violations", name)
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(args.work):
        src = os.path.join(args.work, f)
        if os.path.isfile(src) and f.endswith((".err", ".out", ".csv", ".trace", ".pcap")):
            shutil.copy(src, dst)
    return os.path.relpath(dst, args.out)


def trial(tb, args, target, fault, workload, n, seed, window):
    rng = random.Random(seed)
    stack = target.start()
    caps = [tb.capture(h, f"cap-{h}", bpf_filter="tcp port 80", snaplen=96, wait=False) for h in target.hosts]
    tb.wait_ready(*[cap for cap, _ in caps])
    faults = Faults(tb, target, rng)
    moment = rng.uniform(0, window) if fault != "none" else None
    if moment is not None and args.moment_ms is not None:     # reproducing a kept trial
        moment = args.moment_ms / 1000
    faults.window, faults.moment = window, moment
    before = target.before()
    t0 = time.time()
    clients = run_clients(tb, args, target, seed)
    handle = None
    if moment is not None:
        time.sleep(max(0.0, t0 + moment - time.time()))
        handle = faults.inject(fault)
    deadline = t0 + args.bound
    for c in clients:
        try:
            c["d"].popen.wait(max(0.1, deadline - time.time()))
        except Exception:
            c["hung"] = True
            c["d"].popen.kill()
            c["d"].popen.wait()
    action_s = time.time() - t0
    faults.wait(handle)
    tb.stop(*[cap for cap, _ in caps], sig=signal.SIGINT)
    faults.revert()
    for c in clients:
        with open(c["csv"]) as f:
            c["rows"] = list(csv.DictReader(f))
    results = [r for c in clients for r in c["rows"]]
    effects = target.effects(results, before)
    serving = target.serving()
    no_backend = not target.app_alive(serving)
    plog, llog = faults.dead_proxy_log + stack.proxy_log(), stack.log("logger")
    target.stop()
    san = [name for name, d in stack_files(args.work) if SANITIZER.search(d)]
    flows = {}
    for _, pcap in caps:
        flows.update(ends(pcap, VIP))
    row = {"fault": fault, "workload": workload, "load": len(target.hosts) * target.conns,
           "trial": n, "seed": seed, "moment_ms": round(moment * 1000, 1) if moment is not None else "",
           "faults": " ".join(f"{w}@{(t - t0) * 1000:.0f}ms" for w, t in faults.times),
           "action_ms": round(action_s * 1000, 1), "serving": serving,
           "no_backend": int(no_backend),
           "false_failovers": false_failovers(plog, faults.times), "sanitizer": " ".join(san),
           "recovered": plog.count("rs-proxy recovered id="), "unrecoverable": plog.count("rs-proxy unrecoverable id=")}
    # A byte the alternate sent again that differs from what the primary
    # had sent there (a token regenerated, a page rendered differently):
    # the logger compares every such byte on the wire.
    if "reason=conflict" in llog:
        effects = (effects[0], effects[1] + ["wrong_bytes"])
    if judge(row, clients, flows, plog, faults.times, effects, len(stack.backends)):
        row["kept"] = keep(args, f"{fault}-{workload}-{n}")
        if "wrong_bytes" in row["reason"]:
            row["detail"] = " | ".join(wrong_bytes_lines(clients, llog) + [row["detail"]])
    return row


def wrong_bytes_lines(clients, llog, most=3):
    """What a wrong-bytes verdict rests on, for the violation's line (a CI
    run shows that line and nothing of the folder it keeps): the clients'
    failed checks and the logger's "retransmission differs"."""
    lines = []
    for c in clients:
        with open(c["d"].err, errors="replace") as f:
            lines += [l.strip() for l in f if "request-failed" in l and any(b in l for b in BAD_BYTES)]
    lines += [l.strip() for l in llog.splitlines() if "reason=conflict" in l]
    return [l[:300] for l in lines[:most]]


def stack_files(work):
    for name in os.listdir(work):
        if name.endswith(".err"):
            with open(os.path.join(work, name), errors="replace") as f:
                yield name, f.read()


# ---- the campaign ----------------------------------------------------------

def matrix(rows, faults, workloads):
    """(fault, workload) -> {"masked": n, "clean_end": n, "violation": n}"""
    return {(f, w): {v: sum(r["fault"] == f and r["workload"] == w and r["verdict"] == v for r in rows)
                     for v in FAULT_VERDICTS} for f in faults for w in workloads}


def runs(f, w):
    """Whether fault 'f' runs with workload 'w'."""
    if f == "auxlog":
        return w.startswith("roundcube")      # only Roundcube talks to a mail store
    return f not in SPARE_FAULTS or not w.startswith("roundcube")


def read_table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def resumed(row):
    """A row of trials.csv as trial() returned it (the numbers the matrix
    and the summary add up)."""
    r = dict(row)
    r["trial"] = int(r["trial"])
    r["false_failovers"] = int(float(r["false_failovers"] or 0))
    r["action_ms"] = float(r["action_ms"]) if r["action_ms"] not in ("", None) else None
    return r


def run_group(args, topo, faults, workloads, per, windows, prog, rows, out):
    """The trials of 'faults' on one testbed (LanTopo's 'topo' options: a
    proxy pair, a spare, or neither)."""
    Roundcube.shared = None     # its daemons live on one testbed
    with Testbed(LanTopo(clients=CLIENT_HOSTS, **topo), args.work, seed=args.seed) as tb:
        if args.hog:        # the machine has two cores: everything competes with these
            for h in ("logger", "proxy") + (("proxy2",) if topo.get("pair") else ()):
                tb.start(h, f"hog-{h}", ["sh", "-c", "while :; do :; done"])
        for w in workloads:
            if not any(runs(f, w) for f in faults):
                continue
            target = WORKLOADS[w](tb, args.work)
            for f in faults:
                if not runs(f, w):
                    continue
                for n in range(per[w]):
                    if (f, w, n) in args.done:
                        continue        # RESUME=1: in the table from before
                    if f != "none" and windows.get(w) is None:
                        # No crash-free run in this campaign: measure one.
                        seed = args.seed * 1000000 + 999999
                        windows[w] = trial(tb, args, target, "none", w, -1, seed, 0)["action_ms"] / 1000
                    seed = args.seed * 1000000 + (FAULTS + OPT_IN).index(f) * 10000 + list(WORKLOADS).index(w) * 1000 + n
                    prog.step(f"{f} {w} trial {n}")
                    r = trial(tb, args, target, f, w, n, seed, windows.get(w) or 0)
                    rows.append(r)
                    out.write(**r)
                    if r["verdict"] == "violation":
                        print(f"  VIOLATION {f} {w} trial {n} seed={seed}: {r['reason']} ({r['faults']}; "
                              f"kept in {r.get('kept')})" + (f"\n    {r['detail']}" if r["detail"] else ""),
                              flush=True)
                if f == "none":
                    window = median([r["action_ms"] for r in rows if r["workload"] == w and r["fault"] == "none"
                                     and r["verdict"] != "violation" and r["action_ms"] is not None]) or None
                    windows[w] = window / 1000 if window else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("BUILD_DIR", "build/san"))
    ap.add_argument("--out", default="results/faults")
    ap.add_argument("--faults", default=os.environ.get("FAULTS", ",".join(FAULTS)))
    ap.add_argument("--workloads", default=os.environ.get("WORKLOADS", ",".join(WORKLOADS)))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    ap.add_argument("--moment-ms", type=float, default=float(os.environ["MOMENT_MS"]) if os.environ.get("MOMENT_MS") else None,
                    help="inject every fault this many ms into the action instead of at the drawn moment "
                         "(MOMENT_MS=; to reproduce a trial another machine kept)")
    ap.add_argument("--bound", type=float, default=30.0, help="a client still running after this many s hangs")
    ap.add_argument("--hog", action="store_true", default=os.environ.get("HOG", "") not in ("", "0"),
                    help="a CPU hog (busy loop) on the logger and proxy hosts all along (HOG=1)")
    ap.add_argument("--client", default=os.path.join(ROOT, "build", "rs-client"),
                    help="the client (not under test: without sanitizers, so it keeps its pace)")
    args = ap.parse_args()
    use_build(args.build)
    if not os.access(binary("rs-proxy"), os.X_OK):
        sys.exit(f"fault-campaign: no {binary('rs-proxy')}: build it first (make san)")
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    faults = [f for f in args.faults.split(",") if f]
    workloads = [w for w in args.workloads.split(",") if w]
    for f in faults:
        if f not in FAULTS + OPT_IN:
            sys.exit(f"fault-campaign: unknown fault {f!r} (known: {', '.join(FAULTS + OPT_IN)})")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"fault-campaign: unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    per = {w: trials(FULL_TRIALS[w], quick_default=2 if w == "refapp-1" else 1) for w in workloads}
    if "none" in faults:       # first: it measures the window the others draw from
        faults = ["none"] + [f for f in faults if f != "none"]
    os.makedirs(args.out, exist_ok=True)
    args.work = os.path.join(args.out, "run")
    # One campaign, one run directory: an earlier campaign's logs would be
    # judged again (a stale sanitizer report failed every trial).
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work, exist_ok=True)
    table = os.path.join(args.out, "trials.csv")
    rows, args.done = [], set()
    if os.environ.get("RESUME") == "1" and os.path.exists(table):
        # Resuming an interrupted campaign: its trials stay; only the
        # missing ones run (the same SEED draws the same moments).
        rows = [resumed(r) for r in read_table(table) if r["fault"] in faults and r["workload"] in workloads]
        args.done = {(r["fault"], r["workload"], r["trial"]) for r in rows}
        print(f"fault-campaign: resuming, {len(rows)} trials already in {table}", flush=True)
    elif os.path.exists(table):     # one campaign, one table
        os.remove(table)
    out = RowWriter(table, "faults", config={"faults": faults, "workloads": workloads, "per": per,
                                             "build": args.build, "bound_s": args.bound, "hog": args.hog})
    prog = Progress(sum(per[w] * sum(runs(f, w) for f in faults) for w in workloads) - len(args.done))
    t_start = time.time()
    windows = {}     # workload -> the crash-free action's length (s), measured once
    for w in workloads:
        window = median([r["action_ms"] for r in rows if r["workload"] == w and r["fault"] == "none"
                         and r["verdict"] != "violation" and r["action_ms"] is not None])
        if window:
            windows[w] = window / 1000
    for topo, kinds in (({}, None), ({"pair": True}, PAIR_FAULTS), ({"spare": True}, SPARE_FAULTS)):
        group = [f for f in faults if (f in kinds if kinds else f not in PAIR_FAULTS + SPARE_FAULTS)]
        if group:
            run_group(args, topo, group, workloads, per, windows, prog, rows, out)
    out.close()
    m = matrix(rows, faults, workloads)
    print(f"{'fault':22s} " + " ".join(f"{w:>22s}" for w in workloads))
    for f in faults:
        print(f"{f:22s} " + " ".join(f"{'%d/%d/%d' % (m[(f, w)]['masked'], m[(f, w)]['clean_end'], m[(f, w)]['violation']):>22s}"
                                     for w in workloads))
    print("(masked/clean end/violation)")
    reasons = lambda key: sum(key in r["reason"].split() for r in rows)  # noqa: E731
    print(summary(trials=len(rows), masked=sum(r["verdict"] == "masked" for r in rows),
                  clean_ends=sum(r["verdict"] == "clean_end" for r in rows),
                  wrong_bytes=reasons("wrong_bytes"), duplicates=reasons("duplicates"), hangs=reasons("hang"),
                  false_failovers=sum(r["false_failovers"] for r in rows),
                  violations=sum(r["verdict"] == "violation" for r in rows),
                  unclean_ends=reasons("unclean_end"), lost_updates=reasons("lost_update"),
                  sanitizer=reasons("sanitizer"), minutes=round((time.time() - t_start) / 60, 1)))
    sys.exit(1 if any(r["verdict"] == "violation" for r in rows) else 0)


if __name__ == "__main__":
    main()
