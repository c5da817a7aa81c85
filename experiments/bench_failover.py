#!/usr/bin/python3
"""make bench-failover: does resplice mask a crash of the primary, at a
random moment of a large download, every time, and what does it cost the
client?  A benchmark, not a test: it prints figures and a 'summary:' line
and never fails on time.

Per trial, a client downloads one large checkable file between two counter
updates on one keep-alive connection through the whole stack; at a moment
drawn uniformly from the download (seeded) the harness injects the fault
from outside:
  none     nothing (the baseline, and the false-failover check)
  process  SIGKILL of the primary's application
  host     the primary host's interfaces down
  hang     SIGSTOP of the primary's application (found by the logger's
           stall detector, --stall-after, default 2 s)
each with and without a CPU hog (a busy loop on the logger host; the
machine has two cores).  One testbed per configuration; the stack is
started afresh for every trial.

Judged from outside: masked = the client's checks all passed on one
connection and its own pcap holds no RST from the VIP; the stall is the
longest gap between two data segments the client received (its pcap),
the extra stall that minus the crash-free median of the same hog setting;
a false failover is a backend declared failed without a fault (or the
alternate, or the primary before its crash).
Writes results/bench-failover/trials.csv (one row per trial, with seed).
TRIALS= (default 50), KINDS=, HOG=0|1|both (default both), SIZE= bytes.
"""
import argparse
import csv
import os
import random
import re
import signal
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
from topologies.lan import SERVERS, LanTopo  # noqa: E402

KINDS = ("none", "process", "host", "hang")
VIP = SERVERS["proxy"]


def false_failovers(plog, kind, t_crash):
    """Failures the proxy took that no fault caused."""
    n = 0
    for m in re.finditer(r"^(\d+\.\d+) rs-proxy failure backend_id=(\d+) ", plog, re.M):
        t, bid = float(m.group(1)), int(m.group(2))
        if kind == "none" or bid != 1 or (t_crash and t < t_crash):
            n += 1
    return n


def trial(tb, args, kind, hog, n, seed):
    rng = random.Random(seed)
    trace = os.path.join(args.work, "t.trace")
    with open(trace, "w") as f:
        f.write("request POST /counter\n  expect contains \"counter=1\"\n"
                f"request GET /static/{args.size}?seed={n}\n  expect content seed={n}\n"
                "request POST /counter\n  expect contains \"counter=2\"\n")
    stack = Stack(tb, args.work).start()
    cap, pcap = tb.capture("c1", "c1", bpf_filter="tcp port 80", snaplen=96)
    out = os.path.join(args.work, "c.csv")
    d = tb.start("c1", "client", [binary("rs-client"), "--server", stack.vip, "--trace", trace,
                                  "--csv", out, "--timeout", "10s"])
    t_crash = None
    delay = rng.uniform(0.02, args.window)
    if kind != "none" and wait_until(lambda: "step=0 response" in open(d.err).read(), 20, 0.001):
        time.sleep(delay)
        t_crash = time.time()
        if kind == "process":
            stack.kill_primary()
        elif kind == "host":
            stack.primary_down()
        else:
            stack.d["app-primary"].popen.send_signal(signal.SIGSTOP)
    d.popen.wait(60)
    tb.stop_capture(cap)
    plog, llog = stack.log("proxy"), stack.log("logger")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    if kind == "hang":
        stack.d["app-primary"].popen.send_signal(signal.SIGCONT)
    stack.stop()
    if kind == "host":
        tb.host_up("primary")
    ok = (d.popen.returncode == 0 and len(rows) == 3 and all(r["result"] == "ok" for r in rows)
          and len({r["local_port"] for r in rows}) == 1)
    rsts = len(rst_ports(pcap, VIP))
    row = {"kind": kind, "hog": int(hog), "trial": n, "seed": seed, "crash_delay_ms": round(delay * 1000, 1)
           if t_crash else "", "masked": int(ok and rsts == 0), "rsts": rsts, "stall_ms": round(gaps_ms(pcap, VIP), 3),
           "false_failovers": false_failovers(plog, kind, t_crash), "size": args.size}
    hold = re.search(r"^(\d+\.\d+) rs-proxy recover id=\d+ .*step=hold why=(\S+)", plog, re.M)
    if hold and t_crash:
        row.update(detect_ms=round((float(hold.group(1)) - t_crash) * 1000, 3), detected_by=hold.group(2))
    m = re.search(r"recovered id=\d+ .* total_us=(\d+)", plog)
    if m:
        row["recover_ms"] = int(m.group(1)) / 1000
    row["logger_failures"] = llog.count("backend-failed")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="results/bench-failover")
    ap.add_argument("--trials", type=int, default=int(os.environ.get("TRIALS", 50)))
    ap.add_argument("--kinds", default=os.environ.get("KINDS", ",".join(KINDS)))
    ap.add_argument("--hog", default=os.environ.get("HOG", "both"), choices=("0", "1", "both"))
    ap.add_argument("--size", type=int, default=int(os.environ.get("SIZE", 200_000_000)))
    ap.add_argument("--window", type=float, default=0.25, help="crash within this many s of the download's start")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    args = ap.parse_args()
    use_build(args.build)
    kinds = [k for k in args.kinds.split(",") if k]
    hogs = [False, True] if args.hog == "both" else [args.hog == "1"]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    prog = Progress(len(kinds) * len(hogs) * args.trials)
    for hog in hogs:
        for kind in kinds:
            args.work = os.path.join(args.out, "run", f"{kind}-hog{int(hog)}")
            os.makedirs(args.work, exist_ok=True)
            with Testbed(LanTopo(), args.work, seed=args.seed) as tb:
                if hog:
                    tb.start("logger", "hog", ["sh", "-c", "while :; do :; done"])
                for n in range(args.trials):
                    seed = args.seed * 100000 + KINDS.index(kind) * 1000 + n
                    prog.step(f"{kind} hog={int(hog)} trial {n}")
                    r = trial(tb, args, kind, hog, n, seed)
                    rows.append(r)
                    if not r["masked"] or r["false_failovers"]:
                        print(f"  {kind} hog={int(hog)} trial {n} seed={seed}: masked={r['masked']} "
                              f"rsts={r['rsts']} false_failovers={r['false_failovers']}", flush=True)
    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(args.out, "trials.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    base = {h: percentile([r["stall_ms"] for r in rows if r["kind"] == "none" and r["hog"] == h], 0.5) or 0.0
            for h in (0, 1)}
    print(f"{'kind':8s} {'hog':>3s} {'masked':>8s} {'false':>5s} {'extra stall p50':>16s} {'p95':>8s} "
          f"{'detect p50':>10s} {'recover p50':>11s}")
    out = [("trials", len(rows)), ("masked_pct", round(100.0 * sum(r["masked"] for r in rows) / max(1, len(rows)), 2)),
           ("false_failovers", sum(r["false_failovers"] for r in rows))]
    for hog in sorted({r["hog"] for r in rows}):
        for kind in kinds:
            rs = [r for r in rows if r["kind"] == kind and r["hog"] == hog]
            if not rs:
                continue
            extra = [r["stall_ms"] - base[hog] for r in rs]
            p50, p95 = percentile(extra, 0.5), percentile(extra, 0.95)
            det = percentile([r["detect_ms"] for r in rs if "detect_ms" in r], 0.5)
            rec = percentile([r["recover_ms"] for r in rs if "recover_ms" in r], 0.5)
            print(f"{kind:8s} {hog:>3d} {sum(r['masked'] for r in rs):>3d}/{len(rs):<4d} "
                  f"{sum(r['false_failovers'] for r in rs):>5d} {p50:16.1f} {p95:8.1f} "
                  f"{det if det is not None else float('nan'):10.2f} {rec if rec is not None else float('nan'):11.2f}")
            sfx = f"{kind}{'_hog' if hog else ''}"
            out += [(f"stall_ms_p50_{sfx}", round(p50, 2)), (f"stall_ms_p95_{sfx}", round(p95, 2))]
    print(summary(*out))


if __name__ == "__main__":
    main()
