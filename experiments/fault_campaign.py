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
  cut-logger            the primary cut off from the logger only (iptables
                        in its namespace): its heartbeats stop, it lives on
  alternate-in-recovery SIGKILL of the primary, then of the alternate's
                        application as soon as the proxy holds a connection
                        (both backends dead: a clean end is expected)
  logger-idle           SIGKILL of rs-logger (nothing else fails)
  logger-in-recovery    SIGKILL of the primary, then of rs-logger as the
                        first recovery starts (a clean end is expected)
  client-loss           half the packets of every client link dropped for
                        100-600 ms (tc gact on the client hosts)
  second                SIGKILL of the primary, then 0-2 s later one of:
                        client-loss, logger kill, alternate kill

Workloads (the reference app; every response is checkable content):
  refapp-1    one client, one connection: a first request at the proxy's
              64 KiB limit (an upload), a 16 MB download, a 6 MB upload,
              two counter updates, a token, a 1 MB download
  refapp-50   50 connections on 5 client hosts: a counter update, a 2 MB
              download, a 1 MB upload, a counter update, a token

The checker sees only what lands outside the daemons:
  - the clients' own pcaps: a RST or FIN from the VIP before the client's
    own close is a violation, unless it is a clean end: a RST, for a fault
    that leaves no backend to move to, within 1 s of that fault, the
    proxy's log naming the connection unrecoverable with a reason;
  - every response byte checked by rs-client against the content the
    crash-free run sends (content seeds; counter and upload bodies);
  - exactly-once effects: the serving backend's counter after the run must
    be between the updates the clients saw succeed and those plus the
    updates whose outcome the client cannot know (cut off by a clean end);
  - a time bound on every client (no hang);
  - the daemons' logs: a backend declared failed that no fault touched, or
    before its fault, is a false failover; a sanitizer report fails the
    trial (run it on the sanitized build: make fault-campaign uses
    build/san).

Writes results/faults/trials.csv (one row per trial: seed, fault, moment,
workload, load, verdict, reason, ...), results/faults/matrix.csv, and ends
with 'summary: trials= masked= clean_ends= wrong_bytes= duplicates= hangs=
false_failovers= ...'.  TRIALS= per (fault, workload) (default 50: 1000
trials), QUICK=1 (2 per pair for refapp-1, 1 for refapp-50), FAULTS=,
WORKLOADS=, SEED=.  Exit status 1 when any trial is a violation.
"""
import argparse
import csv
import os
import random
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import APP_PORT, use_build, binary  # noqa: E402
from emul.shaping import wait_until  # noqa: E402
from emul.stack import Stack  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments.common import Progress, median, quick, summary, trials  # noqa: E402
from experiments.pcaps import ends  # noqa: E402
from topologies.lan import SERVERS, LanTopo  # noqa: E402

FAULTS = ("none", "process", "host", "hang", "cut-logger", "alternate-in-recovery", "logger-idle",
          "logger-in-recovery", "client-loss", "second")
# Faults after which no backend is left for some connections: a clean end
# (a RST within 1 s, counted) is a correct outcome there.
UNMASKABLE = {"alternate-in-recovery", "logger-in-recovery", "second"}
SECOND = ("client-loss", "logger", "alternate")
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
            f"request GET /static/2M?seed={seed}\n  expect content seed={seed}\n"
            f"request POST /upload?seed={seed + 1}\n  fill seed={seed + 1} length=1M\n"
            "  expect contains \"upload=1048576 \"\n"
            "request POST /counter\n  expect contains \"counter=\"\n"
            "request GET /token\n  expect status 200\n  capture tok body \"token=([0-9a-f]{32})\"\n")


# name -> (trace maker, client hosts, connections per host)
WORKLOADS = {"refapp-1": (refapp_1, 1, 1), "refapp-50": (refapp_50, 5, 10)}
UPDATES = ("POST /counter", "POST /upload")


# ---- faults ----------------------------------------------------------------

class Faults:
    """Injects one trial's faults and undoes them; 'times' lists (what,
    time.time()) for every fault injected."""

    def __init__(self, tb, stack, hosts, rng):
        self.tb, self.stack, self.hosts, self.rng = tb, stack, hosts, rng
        self.times, self.undo = [], []

    def mark(self, what):
        self.times.append((what, time.time()))

    def kill(self, name):
        self.mark(name)
        self.tb.kill(self.stack.d[name])

    def primary_kill(self):
        self.kill("app-primary")

    def host(self):
        self.mark("host")
        self.tb.host_down("primary")
        self.undo.append(lambda: self.tb.host_up("primary"))

    def hang(self):
        self.mark("hang")
        p = self.stack.d["app-primary"].popen
        p.send_signal(signal.SIGSTOP)
        self.undo.append(lambda: p.poll() is None and p.send_signal(signal.SIGCONT))

    def cut_logger(self):
        self.mark("cut-logger")
        lg, h = SERVERS["logger"], self.tb["primary"]
        h.cmd(f"iptables -w -A OUTPUT -d {lg} -j DROP; iptables -w -A INPUT -s {lg} -j DROP")
        self.undo.append(lambda: h.cmd("iptables -w -F"))

    def client_loss(self):
        ms = self.rng.uniform(100, 600)
        self.mark("client-loss")
        hs = [self.tb[h] for h in self.hosts]
        for h in hs:
            dev = f"{h.name}-eth0"
            h.cmd(f"tc qdisc add dev {dev} clsact; "
                  f"tc filter add dev {dev} ingress matchall action gact pass random netrand drop 2; "
                  f"tc filter add dev {dev} egress matchall action gact pass random netrand drop 2")
        time.sleep(ms / 1000)
        for h in hs:
            h.cmd(f"tc qdisc del dev {h.name}-eth0 clsact")

    def after_hold(self, action):
        """Runs 'action' as soon as the proxy holds a connection of the
        failed primary (a recovery has begun), in the background."""
        return self.tb.crash_when(lambda: "step=hold" in self.stack.log("proxy"), action, timeout=5)

    def inject(self, fault):
        """Injects 'fault'; returns a handle to wait for when it has a
        second part in the background (or None)."""
        if fault == "process":
            self.primary_kill()
        elif fault == "host":
            self.host()
        elif fault == "hang":
            self.hang()
        elif fault == "cut-logger":
            self.cut_logger()
        elif fault == "logger-idle":
            self.kill("logger")
        elif fault == "client-loss":
            self.client_loss()
        elif fault == "alternate-in-recovery":
            self.primary_kill()
            return self.after_hold(lambda: self.kill("app-alternate"))
        elif fault == "logger-in-recovery":
            self.primary_kill()
            return self.after_hold(lambda: self.kill("logger"))
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

    def wait(self, handle):
        if handle is None:
            return
        if isinstance(handle, threading.Timer):
            handle.join(5)
        else:
            handle.fired.wait(6)

    def revert(self):
        for u in reversed(self.undo):
            u()


# ---- judging ---------------------------------------------------------------

def false_failovers(plog, llog, fault, times):
    """Backends declared failed that no fault explains (the proxy's and
    the logger's logs)."""
    primary_t = next((t for w, t in times if w in ("app-primary", "host", "hang", "cut-logger")), None)
    alt_t = next((t for w, t in times if w == "app-alternate"), None)
    n = 0
    for m in re.finditer(r"^(\d+\.\d+) rs-proxy failure backend_id=(\d+) ", plog, re.M):
        t, bid = float(m.group(1)), int(m.group(2))
        since = primary_t if bid == 1 else alt_t
        if since is None or t < since:
            n += 1
    return n


def counter_of(tb, host):
    """The counter of 'host''s application, read on its own loopback, or None."""
    out = tb[host].cmd(f"curl -s -m 2 http://127.0.0.1:{APP_PORT}/counter")
    m = re.search(r"counter=(\d+)", out)
    return int(m.group(1)) if m else None


def judge(row, clients, flows, plog, fault, times, counter):
    """Fills the verdict of 'row' from outside: client rows, pcap ends,
    the proxy's log, the counter.  Returns the list of violations."""
    bad = []
    results = [r for c in clients for r in c["rows"]]
    row["requests"] = len(results)
    row["failed"] = sum(r["result"] != "ok" for r in results)
    if any(r["result"] in BAD_BYTES for r in results):
        bad.append("wrong_bytes")
    if any(c["hung"] for c in clients):
        bad.append("hang")
    last_fault = max((t for _, t in times), default=None)
    # tcpdump names a client ip.port, the proxy ip:port.
    unrecoverable = {c.replace(":", ".") for c in
                     re.findall(r"rs-proxy unrecoverable id=\d+ client=(\S+) why=\S+", plog)}
    clean, detail = 0, []
    for client, e in flows.items():
        server = [t for k, t in e.items() if k.startswith("server")]
        end = min(server) if server else None
        if end is None or ("client_end" in e and e["client_end"] <= end):
            continue
        ok = ("server_rst" in e and e["server_rst"] == end and fault in UNMASKABLE and client in unrecoverable
              and last_fault is not None and end - last_fault <= CLEAN_END_S)
        if ok:
            clean += 1
        else:
            bad.append("unclean_end")
            detail.append(("rst" if "server_rst" in e else "fin") + f"@{client}"
                          + (f"+{(end - last_fault) * 1000:.0f}ms" if last_fault else ""))
    row["clean_ends"] = clean
    row["resets"] = sum(r["result"] == "reset" for r in results)
    # Exactly once: every update the clients saw succeed, plus at most the
    # ones cut off by a clean end (the client cannot know whether they ran).
    okd = sum(r["result"] == "ok" and f"{r['method']} {r['target'].split('?')[0]}" in UPDATES for r in results)
    unsure = sum(r["result"] != "ok" and f"{r['method']} {r['target'].split('?')[0]}" in UPDATES
                 for r in results)
    row.update(updates_ok=okd, updates_unsure=unsure, counter=counter if counter is not None else "")
    if counter is None:
        if not row["no_backend"]:
            bad.append("no_counter")
    elif counter > okd + unsure:
        bad.append("duplicates")
    elif counter < okd:
        bad.append("lost_update")
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

def run_clients(tb, args, workload, seed):
    make, nhosts, conns = WORKLOADS[workload]
    out = []
    for i in range(nhosts):
        host = f"c{i + 1}"
        trace = os.path.join(args.work, f"{host}.trace")
        with open(trace, "w") as f:
            f.write(make(seed * 10 + i * 1000))
        csvp = os.path.join(args.work, f"{host}.csv")
        d = tb.start(host, f"client-{host}", [binary("rs-client"), "--server", f"{VIP}:80", "--trace", trace,
                                              "--csv", csvp, "--connections", str(conns), "--quiet",
                                              "--timeout", "10s"])
        out.append({"host": host, "d": d, "csv": csvp, "hung": False, "rows": []})
    return out


def trial(tb, args, fault, workload, n, seed, window):
    rng = random.Random(seed)
    stack = Stack(tb, args.work).start()
    _, nhosts, _ = WORKLOADS[workload]
    hosts = [f"c{i + 1}" for i in range(nhosts)]
    caps = [tb.capture(h, f"cap-{h}", bpf_filter="tcp port 80", snaplen=96) for h in hosts]
    faults = Faults(tb, stack, hosts, rng)
    moment = rng.uniform(0, window) if fault != "none" else None
    t0 = time.time()
    clients = run_clients(tb, args, workload, seed)
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
    for cap, _ in caps:
        tb.stop_capture(cap)
    faults.revert()
    time.sleep(0.05)
    serving = "alternate" if re.search(r"rs-proxy failure backend_id=1 ", stack.log("proxy")) else "primary"
    # Both backends dead: no state left to check (nor to serve from).
    no_backend = not stack.d[f"app-{serving}"].alive()
    counter = None if no_backend else counter_of(tb, serving)
    plog, llog = stack.log("proxy"), stack.log("logger")
    stack.stop()
    san = [name for name, d in list(stack_files(args.work)) if SANITIZER.search(d)]
    for c in clients:
        with open(c["csv"]) as f:
            c["rows"] = list(csv.DictReader(f))
    flows = {}
    for _, pcap in caps:
        flows.update(ends(pcap, VIP))
    row = {"fault": fault, "workload": workload, "load": nhosts * WORKLOADS[workload][2],
           "trial": n, "seed": seed, "moment_ms": round(moment * 1000, 1) if moment is not None else "",
           "faults": " ".join(f"{w}@{(t - t0) * 1000:.0f}ms" for w, t in faults.times),
           "action_ms": round(action_s * 1000, 1), "serving": serving, "no_backend": int(no_backend),
           "false_failovers": false_failovers(plog, llog, fault, faults.times), "sanitizer": " ".join(san),
           "recovered": plog.count("rs-proxy recovered id="), "unrecoverable": plog.count("rs-proxy unrecoverable id=")}
    bad = judge(row, clients, flows, plog, fault, faults.times, counter)
    if bad:
        keep = os.path.join(args.out, "violations", f"{fault}-{workload}-{n}")
        os.makedirs(keep, exist_ok=True)
        for name in os.listdir(args.work):
            os.replace(os.path.join(args.work, name), os.path.join(keep, name))
        row["kept"] = os.path.relpath(keep, args.out)
    return row


def stack_files(work):
    for name in os.listdir(work):
        if name.endswith(".err"):
            with open(os.path.join(work, name), errors="replace") as f:
                yield name, f.read()


# ---- the campaign ----------------------------------------------------------

def write_csv(path, rows):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def matrix(rows, faults, workloads):
    """(fault, workload) -> {"masked": n, "clean_end": n, "violation": n}"""
    m = {}
    for f in faults:
        for w in workloads:
            rs = [r for r in rows if r["fault"] == f and r["workload"] == w]
            m[(f, w)] = {v: sum(r["verdict"] == v for r in rs) for v in ("masked", "clean_end", "violation")}
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("BUILD_DIR", "build/san"))
    ap.add_argument("--out", default="results/faults")
    ap.add_argument("--faults", default=os.environ.get("FAULTS", ",".join(FAULTS)))
    ap.add_argument("--workloads", default=os.environ.get("WORKLOADS", ",".join(WORKLOADS)))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    ap.add_argument("--bound", type=float, default=30.0, help="a client still running after this many s hangs")
    args = ap.parse_args()
    use_build(args.build)
    if not os.access(binary("rs-proxy"), os.X_OK):
        sys.exit(f"fault-campaign: no {binary('rs-proxy')}: build it first (make san)")
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    faults = [f for f in args.faults.split(",") if f]
    workloads = [w for w in args.workloads.split(",") if w]
    for f in faults:
        if f not in FAULTS:
            sys.exit(f"fault-campaign: unknown fault {f!r} (known: {', '.join(FAULTS)})")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"fault-campaign: unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    per = {w: trials(50, quick_default=2 if w == "refapp-1" else 1) for w in workloads}
    if "none" in faults:       # first: it measures the window the others draw from
        faults = ["none"] + [f for f in faults if f != "none"]
    os.makedirs(args.out, exist_ok=True)
    args.work = os.path.join(args.out, "run")
    os.makedirs(args.work, exist_ok=True)
    prog = Progress(sum(per[w] for w in workloads) * len(faults))
    rows, t_start = [], time.time()
    with Testbed(LanTopo(clients=max(WORKLOADS[w][1] for w in workloads)), args.work, seed=args.seed) as tb:
        for w in workloads:
            window = None
            for f in faults:
                for n in range(per[w]):
                    if f != "none" and window is None:
                        # No crash-free run in this campaign: measure one.
                        seed = args.seed * 1000000 + 999999
                        window = trial(tb, args, "none", w, -1, seed, 0)["action_ms"] / 1000
                    seed = args.seed * 1000000 + FAULTS.index(f) * 10000 + list(WORKLOADS).index(w) * 1000 + n
                    prog.step(f"{f} {w} trial {n}")
                    r = trial(tb, args, f, w, n, seed, window or 0)
                    rows.append(r)
                    if r["verdict"] == "violation":
                        print(f"  VIOLATION {f} {w} trial {n} seed={seed}: {r['reason']} ({r['faults']}; "
                              f"kept in {r.get('kept')})", flush=True)
                if f == "none":
                    window = median([r["action_ms"] for r in rows if r["workload"] == w and r["fault"] == "none"
                                     and r["verdict"] != "violation"]) or None
                    window = window / 1000 if window else None
    write_csv(os.path.join(args.out, "trials.csv"), rows)
    m = matrix(rows, faults, workloads)
    write_csv(os.path.join(args.out, "matrix.csv"),
              [{"fault": f, "workload": w, **m[(f, w)]} for f in faults for w in workloads])
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
