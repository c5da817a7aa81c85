#!/usr/bin/python3
"""make bench-scale: N concurrent keep-alive clients (on four client hosts),
each in the middle of a download when the primary dies; do all of them
continue on the alternate, and what does each one feel?  A benchmark, not
a test: it prints a table and a 'summary:' line and never fails on time.

For each N (1, 10, 100, 1000; SCALE_N=) and each fault (process: SIGKILL of
the primary's application; host: its interfaces down), a fresh testbed and
stack run N rs-client connections that each fetch a small page (so the
connection is spliced) and then a file of 1 GB / N (at least 1 MB), once
without a fault and once with the fault injected 50 ms after the last
connection was spliced.  From the four clients' own pcaps:
  masked     the connection's checks passed, on one connection, no RST from the VIP
  stall      per connection, the longest gap between two data segments it
             received; extra stall = that minus the crash-free median of
             the same N (p50 / p95 / max over the connections)
and from the logs: the time from the crash until the last connection was
re-spliced, and false FAILUREs (the alternate declared failed, or anything
before the crash).  Writes results/bench-scale/runs.csv.
"""
import argparse
import csv
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import use_build  # noqa: E402
from emul.shaping import wait_until  # noqa: E402
from emul.places import binary  # noqa: E402
from emul.stack import Stack  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from experiments.common import Progress, percentile, summary  # noqa: E402
from experiments.pcaps import gaps_ms, rst_ports  # noqa: E402
from topologies.lan import SERVERS, LanTopo, client_ip  # noqa: E402

HOSTS = 4
VIP = SERVERS["proxy"]


def run(args, n, fault):
    """One run: 'n' connections, 'fault' in none/process/host.  Returns a dict."""
    size = max(1_000_000, 1_000_000_000 // n)
    work = os.path.join(args.out, "run", f"n{n}-{fault}")
    per = [n // HOSTS + (1 if i < n % HOSTS else 0) for i in range(HOSTS)]
    with Testbed(LanTopo(clients=HOSTS), work, seed=args.seed) as tb:
        stack = Stack(tb, work).start()
        caps, ds = [], []
        for i, k in enumerate(per):
            if not k:
                continue
            caps.append(tb.capture(f"c{i + 1}", f"c{i + 1}", bpf_filter="tcp port 80", snaplen=96))
            tr = os.path.join(work, f"t{i}.trace")
            with open(tr, "w") as f:
                f.write(f"request GET /static/1000?seed=9\n  expect content seed=9\n"
                        f"request GET /static/{size}?seed={i}\n  expect length {size}\n  expect content seed={i}\n")
            d = tb.start(f"c{i + 1}", f"client{i + 1}", [binary("rs-client"), "--server", stack.vip, "--trace", tr,
                                                         "--csv", os.path.join(work, f"c{i}.csv"), "--timeout", "20s",
                                                         "--connections", str(k), "--quiet"])
            d.csv, d.ip = os.path.join(work, f"c{i}.csv"), client_ip(i)
            ds.append(d)
        t_crash = None
        if fault != "none":
            wait_until(lambda: stack.splices() >= n, 60, 0.005)
            time.sleep(0.05)
            t_crash = time.time()
            stack.kill_primary() if fault == "process" else stack.primary_down()
        for d in ds:
            d.popen.wait(300)
        for c, _ in caps:
            tb.stop_capture(c)
        plog, llog = stack.log("proxy"), stack.log("logger")
    ok_ports = set()
    for d in ds:
        with open(d.csv) as f:
            rows = list(csv.DictReader(f))
        by = {}
        for r in rows:
            by.setdefault(r["connection"], []).append(r)
        for rs in by.values():
            if len(rs) == 2 and all(r["result"] == "ok" for r in rs) and len({r["local_port"] for r in rs}) == 1:
                ok_ports.add(f"{d.ip}.{rs[0]['local_port']}")
    gaps, rsts = {}, set()
    for _, pcap in caps:
        gaps.update(gaps_ms(pcap, VIP, by_flow=True))
        rsts |= rst_ports(pcap, VIP)
    masked = len(ok_ports - rsts)
    rec = [float(m.group(1)) for m in re.finditer(r"^(\d+\.\d+) rs-proxy recovered id=", plog, re.M)]
    false = 0
    for m in re.finditer(r"^(\d+\.\d+) rs-proxy failure backend_id=(\d+) ", plog, re.M):
        if fault == "none" or m.group(2) != "1" or float(m.group(1)) < t_crash:
            false += 1
    return {"n": n, "fault": fault, "size": size, "masked": masked, "recovered": len(rec),
            "unrecoverable": plog.count("unrecoverable id="), "last_resplice_ms":
            round((max(rec) - t_crash) * 1000, 1) if rec and t_crash else "", "false_failures": false,
            "logger_failed_alternate": llog.count("backend-failed backend=2"), "gaps": gaps, "seed": args.seed}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="results/bench-scale")
    ap.add_argument("--n", default=os.environ.get("SCALE_N", "1,10,100,1000"))
    ap.add_argument("--faults", default=os.environ.get("FAULTS", "process,host"))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    args = ap.parse_args()
    use_build(args.build)
    ns = [int(x) for x in args.n.split(",") if x]
    faults = [f for f in args.faults.split(",") if f]
    prog = Progress(len(ns) * (1 + len(faults)))
    rows, out = [], []
    print(f"{'N':>5s} {'fault':8s} {'masked':>11s} {'extra stall p50':>16s} {'p95':>8s} {'max':>8s} "
          f"{'last re-splice':>15s} {'false':>5s}")
    for n in ns:
        prog.step(f"N={n} no fault")
        base = run(args, n, "none")
        base_med = percentile(list(base["gaps"].values()), 0.5) or 0.0
        for fault in faults:
            prog.step(f"N={n} {fault}")
            r = run(args, n, fault)
            extra = [g - base_med for g in r["gaps"].values()]
            r.update(stall_p50_ms=round(percentile(extra, 0.5) or 0, 2), stall_p95_ms=round(percentile(extra, 0.95) or 0, 2),
                     stall_max_ms=round(max(extra) if extra else 0, 2), base_gap_ms=round(base_med, 2))
            del r["gaps"]
            rows.append(r)
            print(f"{n:>5d} {fault:8s} {r['masked']:>5d}/{n:<5d} {r['stall_p50_ms']:16.1f} {r['stall_p95_ms']:8.1f} "
                  f"{r['stall_max_ms']:8.1f} {str(r['last_resplice_ms']):>15s} {r['false_failures']:>5d}", flush=True)
            out += [(f"masked_{fault}_{n}", f"{r['masked']}/{n}"), (f"stall_p95_ms_{fault}_{n}", r["stall_p95_ms"]),
                    (f"last_resplice_ms_{fault}_{n}", r["last_resplice_ms"] or None)]
    os.makedirs(args.out, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    total = sum(r["n"] for r in rows)
    print(summary(("connections", total), ("masked_pct", round(100.0 * sum(r["masked"] for r in rows) / max(1, total), 2)),
                  ("false_failures", sum(r["false_failures"] for r in rows)), *out))


if __name__ == "__main__":
    main()
