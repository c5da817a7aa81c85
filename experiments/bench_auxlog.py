#!/usr/bin/python3
"""make bench-auxlog: what rs-auxlog's relay costs a web backend's mail
conversations while nothing fails, against the same conversations with the
mail store directly, in one run on one LAN testbed (a benchmark: it prints
a table and a summary: line and never fails on time).

The conversation is one of Roundcube's per PHP request: connect, the
greeting, ID naming a web transaction (so that rs-auxlog records it, as it
does Roundcube's), LOGIN, SELECT, FETCH, LOGOUT; one after the other from
the primary, CONVS of them per deployment and round (default 200).

Deployments (the mail store and rs-auxlog as roundcube/deploy.py starts
them for Roundcube):
  direct    the primary talks to the mail store (10.0.0.20)
  auxlog    it talks to rs-auxlog (10.0.0.3), which relays to the mail
            store and records the conversation: what Roundcube behind
            resplice does today
  forward   it talks to the mail store, routed through the auxlog host,
            whose kernel forwards it (no process in the path, nothing
            recorded): the floor of a recorder off the path
  tap       the same with rs-auxlog --tap, which records it from a tc
            program's ring on the auxlog host: what Roundcube's first runs
            cost with the tap (re-runs still come through the relay)

Figures: a conversation's time (connect to the LOGOUT's answer), p50 and
p99, and its extra over direct; rs-auxlog's CPU (user + system, /proc) per
1000 conversations (the tc program's copies are the kernel's, not in it).  ROUNDS= (default 5) repeats the deployments in turn (each round
starting with the next one);
each ratio to direct is taken within a round and the median of the rounds'
ratios printed with their range (these machines drift).  The benchmark
checks that rs-auxlog recorded every conversation it relayed or tapped
(its stats' 'live' count), and none it did not, so that it measures what
it claims.

Measured here (docs/performance.md, session 39): a relayed conversation
costs ~0.9 ms more than a direct one (~1.25x), a forwarded one nothing
measurable: each relayed segment waits 65-85 us for rs-auxlog to be
scheduled (a pcap on the auxlog host), six round trips a conversation."""
import argparse
import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import use_build  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments.bench_splice import _cpu_s, round_ratios  # noqa: E402
from experiments.common import ROOT, Progress, WorkDir, median, summary  # noqa: E402
from roundcube.deploy import AUXLOG_IP, IMAP_PORT, MAILSTORE_IP, USERS, AuxLog, MailStore  # noqa: E402
from topologies.lan import LanTopo  # noqa: E402

DEPLOYMENTS = ("direct", "auxlog", "forward", "tap")
RECORDED = ("auxlog", "tap")
BACKEND = "primary"


# ---- the client (runs on the primary: bench_auxlog.py --client) -----------

def conversation(host, txn):
    """One IMAP conversation like Roundcube's; returns its seconds."""
    t0 = time.perf_counter()
    with socket.create_connection((host, IMAP_PORT), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")

        def command(tag, text):
            s.sendall(f"{tag} {text}\r\n".encode())
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError(f"the server closed during {text.split()[0]}")
                if line.startswith(tag.encode() + b" "):
                    if not line.startswith(tag.encode() + b" OK"):
                        raise ConnectionError(f"{text.split()[0]}: {line!r}")
                    return

        if not f.readline().startswith(b"* OK"):
            raise ConnectionError("no greeting")
        command("A1", f'ID ("name" "bench-auxlog" "x-resplice-txn" "{txn}")')
        command("A2", f"LOGIN alice {USERS['alice']}")
        command("A3", "SELECT INBOX")
        command("A4", "UID FETCH 1:* (UID FLAGS)")
        command("A5", "LOGOUT")
    return time.perf_counter() - t0


def client(host, n, first):
    """'n' conversations with 'host', each naming its own transaction
    (client 10.0.1.1, port and number from 'first' on); prints their
    milliseconds as JSON."""
    ms = []
    for i in range(first, first + n):
        ms.append(conversation(host, f"10.0.1.1:{10000 + i // 1000}#{i % 1000 + 1}") * 1000)
    print(json.dumps(ms))


# ---- the bench ------------------------------------------------------------

def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


class Bench:
    def __init__(self, tb, run_dir):
        self.tb, self.dir = tb, run_dir
        self.ms = MailStore(tb, run_dir).start()
        self.aux = AuxLog(tb, run_dir, tap=False).start()
        aux = tb["auxlog"]
        aux.cmd("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 "
                f"net.ipv4.conf.{aux.defaultIntf()}.send_redirects=0")
        self.next_txn = 0

    def stop(self):
        self.aux.stop()
        self.ms.stop()

    def live(self):
        """rs-auxlog's count of recorded conversations (its stats line)."""
        d = self.aux.d
        before = d.output().count("stats:")
        d.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while d.output().count("stats:") == before and time.monotonic() < deadline:
            time.sleep(0.02)
        line = [ln for ln in d.output().splitlines() if ln.startswith("stats:")][-1]
        return int(dict(kv.split("=", 1) for kv in line.split()[1:])["live"])

    def _auxlog(self, tap):
        """rs-auxlog running with --tap or without."""
        if self.aux.tap != tap:
            self.aux.stop()
            self.aux = AuxLog(self.tb, self.dir, tap=tap).start()

    def run(self, name, n):
        """'n' conversations through deployment 'name': (their ms, rs-auxlog's
        CPU seconds, conversations it recorded)."""
        self._auxlog(name == "tap")
        self.aux.route(BACKEND, name in ("forward", "tap"))
        host = AUXLOG_IP if name == "auxlog" else MAILSTORE_IP
        live0, cpu0 = self.live(), _cpu_s(self.aux.d.pid)
        out = os.path.join(self.dir, f"client-{name}-{self.next_txn}.json")
        argv = ["/usr/bin/python3", os.path.abspath(__file__), "--client", host, str(n), str(self.next_txn)]
        d = self.tb.start(BACKEND, f"client-{name}-{self.next_txn}", argv)
        self.next_txn += n
        if d.popen.wait(600) != 0:
            raise RuntimeError(f"bench-auxlog: the {name} client failed; see {d.err}")
        with open(d.out) as f, open(out, "w") as g:
            ms = json.loads(f.read())
            json.dump(ms, g)
        cpu = _cpu_s(self.aux.d.pid) - cpu0
        self.aux.route(BACKEND, False)
        return ms, cpu, self.live() - live0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "bench-auxlog"))
    ap.add_argument("--client", nargs=3, metavar=("HOST", "N", "FIRST"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        return client(a.client[0], int(a.client[1]), int(a.client[2]))
    if a.build:
        use_build(a.build)
    rounds = int(os.environ.get("ROUNDS", "5"))
    n = int(os.environ.get("CONVS", "200"))
    if rounds < 1 or n < 1:
        sys.exit("bench-auxlog: ROUNDS and CONVS must be at least 1")
    os.makedirs(a.out, exist_ok=True)
    p50, p99, cpu = {d: [] for d in DEPLOYMENTS}, {d: [] for d in DEPLOYMENTS}, {d: [] for d in RECORDED}
    progress = Progress(rounds * len(DEPLOYMENTS))
    with WorkDir("rs-bench-auxlog-") as work, Testbed(LanTopo(), work.path) as tb:
        b = Bench(tb, work.path)
        try:
            b.run("direct", 20)             # dovecot's and the page cache's first use, untimed
            for k in range(rounds):
                # Each round starts with another deployment: the one after a
                # given other finds the machine as that one left it.
                for name in DEPLOYMENTS[k % len(DEPLOYMENTS):] + DEPLOYMENTS[:k % len(DEPLOYMENTS)]:
                    progress.step(f"round {k + 1}: {name} x{n}")
                    ms, cpu_s, live = b.run(name, n)
                    want = n if name in RECORDED else 0
                    if live != want:
                        sys.exit(f"bench-auxlog: rs-auxlog recorded {live} of the {name} deployment's "
                                 f"{n} conversations (want {want})")
                    p50[name].append(median(ms))
                    p99[name].append(pct(ms, 99))
                    if name in RECORDED:
                        cpu[name].append(cpu_s / n * 1000)
        finally:
            b.stop()
    print()
    print(f"{'':28s}" + "".join(f"{d:>22s}" for d in DEPLOYMENTS))
    kv = [("rounds", rounds), ("convs", n)]
    for key, label, figs in (("p50", "conversation p50 ms", p50), ("p99", "conversation p99 ms", p99)):
        cells = []
        for d in DEPLOYMENTS:
            v = median(figs[d])
            x = round_ratios(figs[d], figs["direct"])
            cells.append(f"{v:8.3f} x{x[0]:.2f} ({x[1]:.2f}-{x[2]:.2f})")
            kv.append((f"{d}_{key}_ms", round(v, 3)))
            if d != "direct":
                kv += [(f"x_{d}_{key}", round(x[0], 3)), (f"x_{d}_{key}_lo", round(x[1], 3)),
                       (f"x_{d}_{key}_hi", round(x[2], 3))]
        print(f"{label:28s}" + "".join(f"{c:>22s}" for c in cells))
    extra = {d: median([v - b for v, b in zip(p50[d], p50["direct"])]) for d in DEPLOYMENTS if d != "direct"}
    print(f"{'extra over direct, p50 ms':28s}{'':>22s}" + "".join(f"{extra[d]:22.3f}" for d in extra))
    print(f"{'rs-auxlog CPU s/1000 convs':28s}" + "".join(f"{median(cpu[d]):22.3f}" if d in cpu else f"{'':>22s}"
                                                         for d in DEPLOYMENTS))
    kv += [(f"extra_{d}_ms", round(v, 3)) for d, v in extra.items()]
    kv += [(f"{d}_cpu_s_per_1000", round(median(cpu[d]), 3)) for d in RECORDED]
    line = summary(*kv)
    with open(os.path.join(a.out, "summary.txt"), "w") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
