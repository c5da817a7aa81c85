#!/usr/bin/python3
"""make bench-failover: how long a client stalls when the primary crashes
mid-download, through resplice, with the reference application.

Per trial: a client downloads one large checkable file through the proxy;
the primary is crashed (process SIGKILL, or host interfaces down) once the
client has received part of it.  The client-side stall is the longest gap
between two data segments arriving at the client (from its own pcap); a
crash-free trial in the same run gives the baseline gap.  The proxy's log
gives the breakdown (hold -> plan -> resend -> re-splice).  A benchmark, not
a test: it prints figures and a 'summary:' line and never fails on time.
Writes results/bench-failover/trials.csv.
"""
import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.shaping import wait_until  # noqa: E402
from emul.stack import Stack, binary  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from topologies.lan import SERVERS, LanTopo  # noqa: E402
from topologies.profiles import get as get_profile  # noqa: E402

SIZE = 200_000_000   # ~0.3 s on this machine's veth: the crash lands mid-download


def max_gap_ms(pcap):
    """Longest gap between data segments the client received, in ms."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", f"src host {SERVERS['proxy']} and greater 100"],
                         capture_output=True, text=True).stdout
    ts = [float(l.split()[0]) for l in out.splitlines() if l.strip()]
    return max((b - a for a, b in zip(ts, ts[1:])), default=0.0) * 1000


def trial(args, kind, n):
    run_dir = os.path.join(args.out, "run", f"{kind}-{n}")
    os.makedirs(run_dir, exist_ok=True)
    trace = os.path.join(run_dir, "t.trace")
    with open(trace, "w") as f:
        f.write(f"request POST /counter\nrequest GET /static/{SIZE}?seed=7\n  expect content seed=7\n"
                "request POST /counter\n  expect contains \"counter=2\"\n")
    profile = get_profile(args.profile) if args.profile != "lan" else None
    with Testbed(LanTopo(profile=profile), run_dir, seed=args.seed + n) as tb:
        stack = Stack(tb, run_dir).start()
        cap, pcap = tb.capture("c1", "c1", bpf_filter="tcp port 80", snaplen=96)
        out = os.path.join(run_dir, "c.csv")
        d = tb.start("c1", "client", [binary("rs-client"), "--server", stack.vip, "--trace", trace,
                                      "--csv", out, "--timeout", "10s"])
        t_crash = None
        if kind != "none":
            crash = stack.kill_primary if kind == "process" else stack.primary_down
            # Crash once the download is under way (the client has answered step 0).
            if wait_until(lambda: "step=0 response" in open(d.err).read(), 20):
                time.sleep(args.crash_after)
                t_crash = time.time()
                crash()
        d.popen.wait(120)
        tb.stop_capture(cap)
        plog = stack.log("proxy")
        with open(out) as f:
            rows = list(csv.DictReader(f))
    ok = d.popen.returncode == 0 and all(r["result"] == "ok" for r in rows) and len({r["local_port"] for r in rows}) == 1
    row = {"kind": kind, "trial": n, "ok": int(ok), "stall_ms": round(max_gap_ms(pcap), 3),
           "profile": args.profile, "size": SIZE, "crash_after_s": args.crash_after, "seed": args.seed + n}
    m = re.search(r"recovered id=\d+ .* plan_us=(\d+) resend_us=(\d+) splice_us=(\d+) total_us=(\d+)", plog)
    if m:
        row.update(plan_ms=int(m.group(1)) / 1000, resend_ms=int(m.group(2)) / 1000,
                   splice_ms=int(m.group(3)) / 1000, recover_ms=int(m.group(4)) / 1000)
    hold = re.search(r"^(\d+\.\d+) rs-proxy recover id=\d+ .*step=hold why=(\S+)", plog, re.M)
    if hold and t_crash:
        row.update(detect_ms=round((float(hold.group(1)) - t_crash) * 1000, 3), detected_by=hold.group(2))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="results/bench-failover")
    ap.add_argument("--trials", type=int, default=int(os.environ.get("TRIALS", 5)))
    ap.add_argument("--profile", default="lan")
    ap.add_argument("--crash-after", type=float, default=0.1, help="seconds into the download")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("RS_BUILD", os.path.abspath(args.build))
    rows = []
    kinds = ("none", "process", "host")
    total = len(kinds) * args.trials
    t0 = time.time()
    for kind in kinds:
        for n in range(args.trials):
            rows.append(trial(args, kind, n))
            done = len(rows)
            eta = (time.time() - t0) / done * (total - done)
            r = rows[-1]
            print(f"[{done}/{total}] {kind:8s} trial {n}: ok={r['ok']} stall={r['stall_ms']:.1f} ms "
                  f"detect={r.get('detect_ms', '-')} ms recover={r.get('recover_ms', '-')} ms  eta {eta:.0f}s",
                  flush=True)
    os.makedirs(args.out, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(args.out, "trials.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    med = {k: statistics.median([r["stall_ms"] for r in rows if r["kind"] == k]) for k in kinds}
    okc = {k: sum(r["ok"] for r in rows if r["kind"] == k) for k in kinds}
    det = {k: statistics.median([r["detect_ms"] for r in rows if r["kind"] == k and "detect_ms" in r] or [0])
           for k in ("process", "host")}
    rec = statistics.median([r["recover_ms"] for r in rows if "recover_ms" in r] or [0])
    print(f"{'crash':8s} {'ok':>5s} {'median stall ms':>16s}")
    for k in kinds:
        print(f"{k:8s} {okc[k]:>2d}/{args.trials:<2d} {med[k]:16.1f}")
    print(f"summary: trials={args.trials} profile={args.profile} stall_none_ms={med['none']:.1f} "
          f"stall_process_ms={med['process']:.1f} stall_host_ms={med['host']:.1f} "
          f"detect_process_ms={det['process']:.1f} detect_host_ms={det['host']:.1f} recover_ms={rec:.2f} "
          f"ok_process={okc['process']}/{args.trials} ok_host={okc['host']}/{args.trials}")


if __name__ == "__main__":
    main()
