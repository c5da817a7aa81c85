#!/usr/bin/python3
"""make bench-splice: what resplice costs while nothing fails, against the
same client talking to the reference app directly and through HAProxy, in
one run on one LAN testbed (a benchmark: it prints a table and a summary:
line and never fails on time).

Deployments (each started fresh, one after the other, the client on c1):
  direct        rs-app on the primary, the client connects to it
  haproxy-tcp   HAProxy (mode tcp, no logging) on the proxy host in front of it
  haproxy-http  the same in mode http (keep-alive to the server)
  splice        rs-proxy alone (emul/stack.py with recovery=False: no
                logger, no rs-stated)
  resplice      the whole stack: rs-proxy, rs-logger, rs-stated, rs-app
                with its state library (rs-proxy's default: the tc program
                splices each new connection at the client's SYN; the
                backend reads the client's name from the SYN)
  resplice-request  the same with rs-proxy --splice-at request (the proxy
                accepts, reads the request, connects and splices; a PROXY
                v2 header names the client to the backend)
  resplice-map  the same with --identity map as well (a CONN_MAP round
                trip through rs-stated before each backend connect)
  nat           the kernel's NAT on the proxy host (an nftables DNAT of the
                VIP's port to the primary, SNAT to an address of its own;
                nothing else is translated, nothing leaves the testbed): a
                forwarder in the path with no process at all, what a splice
                set up in the kernel at the SYN could at best cost

A stack leaves its tc program on the proxy host when it stops (so that a
successor can adopt its connections); here the next deployment is another
system, so its clsact qdisc is removed with it.

Phases (rs-client for requests, curl for bulk transfers):
  keepalive  REQS 1 KB GETs, one after the other on persistent connections
             (each connection's first request, which connects, left out):
             latency p50 / p99
  newconn    the same, each on a new connection the client closes after
             the response: latency p50 / p99 (connect to last byte)
  close      the same with "Connection: close" (the server closes): p50
  conns      8 clients (8 rs-client processes) opening connections for
             one 1 KB GET each, as fast as they can: new connections per
             second (from the first connect to the last response's end).
             Until session 37 one rs-client ran the 8 connections on its
             one thread, and an in-kernel forwarder's work (the SYN and
             the FIN through the proxy's tc program into the backend's
             TCP) ran inside that thread's connect() and close(), while
             HAProxy ends the client's TCP at itself: that client measured
             its own thread as much as the proxy.
  single     one 200 MB download (median of 3): Gbit/s
  parallel   8 downloads of 50 MB at once: aggregate Gbit/s
and the CPU time each component used (user + system, from /proc): per GB
for the two download phases, per 1000 requests for the others, with the
whole machine's busy time (kernel softirq work of the tc program included)
beside it.

ROUNDS= (default 3) repeats the whole run, the deployments taking turns,
and keeps each figure's median.  A ratio to direct is taken within each
round (the host's drift moves both alike) and the median of the rounds'
ratios reported, with their range beside it: this host's figures move by
tens of percent between runs, and one round's ratio says little.
Every host processes what it receives on either core (RPS over all CPUs,
emul/testbed.py spread_receive), as hosts with multi-queue NICs do with
RSS: on a veth a transfer's whole receive chain otherwise runs on its
sender's core, and each hop a forwarder adds lengthens that one core's
chain (session 38, one run of each: the 200 MB download through resplice
0.70× direct without it, 1.31× with it; HAProxy's 1.13× and 0.83×;
direct's own download unchanged, its new connections slower: 0.105 →
0.167 ms).  RPS=0 measures without it, as until session 38.

REQS= (default 2000); DEPLOYMENTS= a comma list of the above; KEEP=1 keeps
the run directory (the daemons' logs).  Ends with 'summary: ...' holding
every figure, its ratio to direct (x_...) and, with several rounds, the
range of that ratio (x_..._lo, x_..._hi).  Writes
results/bench-splice/runs.csv (one row per round, deployment and figure)."""
import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import APP_PORT, VIP_PORT, binary, use_build  # noqa: E402
from emul.stack import Stack  # noqa: E402
from emul.testbed import Testbed, wait_listening  # noqa: E402
from experiments import baselines  # noqa: E402
from experiments.common import ROOT, Progress, WorkDir, median, percentile, summary  # noqa: E402
from topologies.lan import NAT_SOURCE, SERVERS, LanTopo  # noqa: E402

DEPLOYMENTS = ("direct", "nat", "haproxy-tcp", "haproxy-http", "splice", "resplice", "resplice-request", "resplice-map")
PROXY_ARGS = {"resplice-request": ["--splice-at", "request"],
              "resplice-map": ["--splice-at", "request", "--identity", "map"]}
PARALLEL = 8
SINGLE_BYTES, PARALLEL_BYTES = 200_000_000, 50_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
NAT_TABLE = "rs_bench_nat"
# The nat deployment translates to NAT_SOURCE, not the proxy's address, so
# that the TIME_WAITs its connections leave on the primary (their ports are
# the client's, of either parity) never meet a later deployment's connects
# from the proxy (2% of HAProxy's waited 12 ms on them).

# Figures: key, unit, how to print it, whether lower is better.
FIGURES = [
    ("ka_p50_ms", "ms", "keep-alive p50", True), ("ka_p99_ms", "ms", "keep-alive p99", True),
    ("new_p50_ms", "ms", "new conn p50", True), ("new_p99_ms", "ms", "new conn p99", True),
    ("close_p50_ms", "ms", "server closes p50", True),
    ("conns_per_s", "/s", "new conns/s (8 clients)", False),
    ("single_gbps", "Gbit/s", "one 200 MB download", False),
    ("parallel_gbps", "Gbit/s", f"{PARALLEL} x 50 MB at once", False),
]


class Deployment:
    """One deployment on the testbed: start(), server (ip:port), cpu(), stop()."""

    def __init__(self, tb, run_dir, name):
        self.tb, self.dir, self.name = tb, os.path.join(run_dir, name), name
        os.makedirs(self.dir, exist_ok=True)
        self.stack, self.ds = None, {}

    def app(self, host):
        return self.tb.start(host, f"{self.name}-app-{host}", [binary("rs-app"), "--listen", f"0.0.0.0:{APP_PORT}",
                                                              "--id", host], ready="listening")

    def start(self):
        if self.name == "splice" or self.name.startswith("resplice"):
            self.stack = Stack(self.tb, self.dir, recovery=self.name != "splice",
                               proxy_args=PROXY_ARGS.get(self.name, [])).start()
            self.server = self.stack.vip
            return self
        self.ds["app"] = self.app("primary")
        self.server = f"{SERVERS['primary']}:{APP_PORT}"
        if self.name == "nat":
            self._nat(True)
            self.server = f"{SERVERS['proxy']}:{VIP_PORT}"
        if self.name.startswith("haproxy"):
            cfg = os.path.join(self.dir, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(baselines.plain_proxy_cfg(SERVERS["proxy"], [("primary", self.server)], port=VIP_PORT,
                                                  mode=self.name.split("-")[1], log=None))
            self.ds["proxy"] = self.tb.start("proxy", f"{self.name}-haproxy", ["haproxy", "-db", "-f", cfg])
            if not wait_listening(self.tb["proxy"], VIP_PORT, 10):
                raise RuntimeError(f"haproxy did not start; see {self.ds['proxy'].err}")
            self.server = f"{SERVERS['proxy']}:{VIP_PORT}"
        return self

    def daemons(self):
        """{component: [Daemon]}: proxy, logger, stated, app."""
        if self.stack:
            out = {}
            for key, d in self.stack.d.items():
                comp = key.split("-")[0]
                out.setdefault("proxy" if comp == "proxy" else comp, []).append(d)
            return out
        return {k: [d] for k, d in self.ds.items()}

    def cpu(self):
        """{component: CPU seconds so far}."""
        return {comp: sum(_cpu_s(d.pid) for d in ds) for comp, ds in self.daemons().items()}

    def _nat(self, on):
        """Sets up (or removes) the nat deployment on the proxy host: its own
        table (deleted whole: the kernel tracks connections only while some
        table needs it), its source address, forwarding."""
        h, vip, prim = self.tb["proxy"], SERVERS["proxy"], SERVERS["primary"]
        # Forwarded out of the interface it came in by: no ICMP redirect.
        out = h.cmd(f"sysctl -qw net.ipv4.ip_forward={int(on)} net.ipv4.conf.all.send_redirects={int(not on)} "
                    f"net.ipv4.conf.proxy-eth0.send_redirects={int(not on)}; echo rc=$?")
        if not on:
            h.cmd(f"nft delete table ip {NAT_TABLE} 2>/dev/null; ip addr del {NAT_SOURCE}/32 dev proxy-eth0")
            return
        out += h.cmd(f"ip addr add {NAT_SOURCE}/32 dev proxy-eth0; echo rc=$?")
        rules = os.path.join(self.dir, "nat.nft")
        with open(rules, "w") as f:
            f.write(f"table ip {NAT_TABLE} {{\n"
                    f"  chain pre {{ type nat hook prerouting priority dstnat;"
                    f" ip daddr {vip} tcp dport {VIP_PORT} dnat to {prim}:{APP_PORT}; }}\n"
                    f"  chain post {{ type nat hook postrouting priority srcnat;"
                    f" ip daddr {prim} tcp dport {APP_PORT} snat to {NAT_SOURCE}; }}\n}}\n")
        out += h.cmd(f"nft -f {rules} 2>&1; echo rc=$?")
        if out.count("rc=0") != 3:
            raise RuntimeError(f"nat: the proxy host's table failed: {out.strip()}")

    def stop(self):
        if self.stack:
            self.stack.stop()
            self.tb["proxy"].cmd("tc qdisc del dev proxy-eth0 clsact 2>/dev/null")
        else:
            self.tb.stop(*self.ds.values())
            if self.name == "nat":
                self._nat(False)


def _cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _machine_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK       # all but idle and iowait


class Bench:
    def __init__(self, tb, run_dir, reqs):
        self.tb, self.dir, self.reqs = tb, run_dir, reqs
        self.c1 = tb["c1"]
        # Thousands of connections a round, each closed by the client: its
        # TIME_WAITs would use up the ports (its own namespace's settings).
        self.c1.cmd("sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1")
        # The proxy host's own connects to the backend (HAProxy's, rs-proxy's
        # at the request) leave TIME_WAITs too, reused as the client's are.
        # (HAProxy once fell to 1200 connections a second in a later round,
        # its TIME_WAITs suspected, not proven.)  Its port range stays:
        # rs-proxy's --syn-ports is chosen outside it.
        tb["proxy"].cmd("sysctl -qw net.ipv4.tcp_tw_reuse=1")

    def trace(self, name, steps, close=False):
        path = os.path.join(self.dir, f"{name}.trace")
        with open(path, "w") as f:
            for _ in range(steps):
                f.write("request GET /static/1024?seed=1\n  expect length 1024\n")
                if close:
                    f.write("  header Connection: close\n")
        return path

    def client(self, dep, name, trace, repeat, connections=1, processes=1):
        """Runs rs-client on c1 ('processes' of them at once, each with
        'connections'); returns (rows of their CSVs, wall seconds)."""
        ds, rows = [], []
        t0 = time.monotonic()
        for i in range(processes):
            tag = f"{name}-{i}" if processes > 1 else name
            csv_path = os.path.join(self.dir, f"{dep.name}-{tag}.csv")
            argv = [binary("rs-client"), "--server", dep.server, "--trace", trace, "--repeat", str(repeat),
                    "--connections", str(connections), "--csv", csv_path, "--quiet", "--timeout", "10s"]
            ds.append((self.tb.start(self.c1, f"{dep.name}-client-{tag}", argv), csv_path))
        for d, csv_path in ds:
            rc = d.popen.wait(600)
            with open(csv_path) as f:
                mine = list(csv.DictReader(f))
            bad = [r for r in mine if r["result"] != "ok"]
            if rc or bad:
                raise RuntimeError(f"{dep.name} {name}: rs-client exit {rc}, {len(bad)} failed requests; see {d.err}")
            rows += mine
        return rows, time.monotonic() - t0

    @staticmethod
    def rate(rows):
        """Requests per second from the first request's start to the last's
        end: rs-client's own start (~0.1 s, as long as direct's whole phase)
        left out."""
        span_us = max(int(r["end_us"]) for r in rows) - min(int(r["start_us"]) for r in rows)
        return len(rows) / max(span_us, 1) * 1e6

    @staticmethod
    def latencies_ms(rows, skip_first=False):
        return [(int(r["end_us"]) - int(r["start_us"])) / 1000 for r in rows
                if not (skip_first and r["step"] == "0")]

    def download(self, dep, size, n):
        """'n' curls of 'size' bytes at once on c1; returns aggregate Gbit/s."""
        url = f"http://{dep.server}/static/{size}.bin"
        cmd = " & ".join([f"curl -sf -o /dev/null {url}"] * n) + " ; wait"
        t0 = time.monotonic()
        out = self.c1.cmd(f"{cmd}; echo rc=$?")
        wall = time.monotonic() - t0
        if "rc=0" not in out:
            raise RuntimeError(f"{dep.name}: curl of {url} failed: {out.strip()}")
        return size * n * 8 / wall / 1e9

    def measure(self, dep):
        """Every figure of FIGURES, and CPU per component, for 'dep'."""
        fig, cpu = {}, {}
        n = self.reqs

        def phase(kind, units, fn):
            c0, m0 = dep.cpu(), _machine_busy_s()
            r = fn()
            c1, m1 = dep.cpu(), _machine_busy_s()
            for comp in c1:
                cpu.setdefault((kind, comp), 0.0)
                cpu[(kind, comp)] += c1[comp] - c0.get(comp, 0.0)
            cpu.setdefault((kind, "machine"), 0.0)
            cpu[(kind, "machine")] += m1 - m0
            cpu.setdefault((kind, "units"), 0.0)
            cpu[(kind, "units")] += units
            return r

        per_conn = 500                     # at most RS_TRACE_MAX_STEPS steps per run
        rows, _ = phase("req", n, lambda: self.client(dep, "keepalive", self.trace("ka", per_conn),
                                                      max(1, n // per_conn)))
        lat = self.latencies_ms(rows, skip_first=True)
        fig["ka_p50_ms"], fig["ka_p99_ms"] = percentile(lat, 0.5), percentile(lat, 0.99)
        rows, _ = phase("req", n, lambda: self.client(dep, "newconn", self.trace("one", 1), n))
        lat = self.latencies_ms(rows)
        fig["new_p50_ms"], fig["new_p99_ms"] = percentile(lat, 0.5), percentile(lat, 0.99)
        rows, _ = phase("req", n // 2, lambda: self.client(dep, "close", self.trace("close", 1, close=True), n // 2))
        fig["close_p50_ms"] = percentile(self.latencies_ms(rows), 0.5)
        rows, _ = phase("req", n, lambda: self.client(dep, "conns", self.trace("one", 1), n // PARALLEL,
                                                      processes=PARALLEL))
        fig["conns_per_s"] = self.rate(rows)
        singles = [phase("bulk", SINGLE_BYTES / 1e9, lambda: self.download(dep, SINGLE_BYTES, 1)) for _ in range(3)]
        fig["single_gbps"] = median(singles)
        fig["parallel_gbps"] = phase("bulk", PARALLEL_BYTES * PARALLEL / 1e9,
                                     lambda: self.download(dep, PARALLEL_BYTES, PARALLEL))
        return fig, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "bench-splice"))
    a = ap.parse_args()
    if a.build:
        use_build(a.build)
    rounds = int(os.environ.get("ROUNDS", "3"))
    reqs = int(os.environ.get("REQS", "2000"))
    spread = os.environ.get("RPS", "1") != "0"
    deps = [d.strip() for d in os.environ.get("DEPLOYMENTS", ",".join(DEPLOYMENTS)).split(",") if d.strip()]
    unknown = [d for d in deps if d not in DEPLOYMENTS]
    if unknown or "direct" not in deps or reqs < 2 * PARALLEL:
        sys.exit(f"bench-splice: DEPLOYMENTS must include direct and name only {', '.join(DEPLOYMENTS)} "
                 f"(got {unknown or deps}); REQS >= {2 * PARALLEL}")
    os.makedirs(a.out, exist_ok=True)
    figs, cpus = {}, {}
    progress = Progress(rounds * len(deps))
    rows = []
    with WorkDir("rs-bench-splice-") as work, Testbed(LanTopo(), work.path) as tb:
        tmp = work.path
        if spread:
            tb.spread_receive()
        for k in range(rounds):
            for name in deps:
                progress.step(f"round {k + 1}: {name}")
                dep = Deployment(tb, os.path.join(tmp, f"r{k}"), name).start()
                try:
                    b = Bench(tb, dep.dir, reqs)
                    fig, cpu = b.measure(dep)
                finally:
                    dep.stop()
                for key, v in fig.items():
                    figs.setdefault((name, key), []).append(v)
                    rows.append(dict(round=k, deployment=name, figure=key, value=round(v, 4)))
                for key, v in cpu.items():
                    cpus.setdefault((name,) + key, []).append(v)
    with open(os.path.join(a.out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["round", "deployment", "figure", "value"])
        w.writeheader()
        w.writerows(rows)
    report(deps, figs, {k: median(v) for k, v in cpus.items()}, rounds, reqs, spread)


def round_ratios(values, bases):
    """The ratios of 'values' to 'bases', round by round (the two lists in
    the same order of rounds; a round whose base is 0 left out): (median,
    lowest, highest), or None when no round has both."""
    r = [v / b for v, b in zip(values, bases) if b]
    return (median(r), min(r), max(r)) if r else None


def report(deps, figs, cpu, rounds, reqs, spread):
    """Prints the table and the summary line.  'figs': {(deployment,
    figure): [one value per round]}; 'cpu': {(deployment, kind, component):
    median seconds}."""
    width = 14 if rounds == 1 else 26
    print()
    print(f"{'':26s}" + "".join(f"{d:>{width}s}" for d in deps))
    kv = [("rounds", rounds), ("reqs", reqs), ("rps", int(spread))]
    for key, unit, label, _ in FIGURES:
        cells = []
        for d in deps:
            vals = figs.get((d, key))
            x = round_ratios(vals, figs.get(("direct", key), [])) if vals else None
            v = median(vals) if vals else None
            name = d.replace('-', '_')
            kv.append((f"{name}_{key}", v))
            if v is None or x is None:
                cells.append("na" if v is None else f"{v:8.3f}")
                continue
            cells.append(f"{v:8.3f} x{x[0]:4.2f}" + (f" ({x[1]:.2f}-{x[2]:.2f})" if rounds > 1 else ""))
            if d != "direct":
                kv.append((f"x_{name}_{key}", x[0]))
                if rounds > 1:
                    kv += [(f"x_{name}_{key}_lo", x[1]), (f"x_{name}_{key}_hi", x[2])]
        print(f"{label + ' (' + unit + ')':26s}" + "".join(f"{c:>{width}s}" for c in cells))
    print()
    for kind, unit in (("req", "per 1000 requests"), ("bulk", "per GB")):
        print(f"CPU seconds {unit}:")
        comps = sorted({c for (d, k, c) in cpu if k == kind and c not in ("units", "machine")}) + ["machine"]
        print(f"{'':12s}" + "".join(f"{d:>14s}" for d in deps))
        for comp in comps:
            cells = []
            for d in deps:
                units = cpu.get((d, kind, "units"))
                v = cpu.get((d, kind, comp))
                scaled = v / units * (1000 if kind == "req" else 1) if v is not None and units else None
                cells.append(f"{scaled:.3f}" if scaled is not None else "-")
                if scaled is not None:
                    kv.append((f"cpu_{kind}_{d.replace('-', '_')}_{comp}", scaled))
            print(f"{comp:12s}" + "".join(f"{c:>14s}" for c in cells))
        print()
    print(summary(*kv))


if __name__ == "__main__":
    main()
