#!/usr/bin/python3
"""make bench-kmod (the splice half; inside Debian's kernel booted by
kmod/guest/run.py): the reference application reached directly, through
rs-proxy splicing with its tc program (--datapath ebpf), and through
rs-proxy splicing with tcpspmod (--datapath kmod), in the same guest run
on the LAN testbed (Mininet inside the guest).  For each: the throughput
of one large download, and the time of a keep-alive 1 KB GET once the
connection is spliced (medians of ROUNDS).  Reported as ratios to direct
(TCG makes absolute numbers meaningless).  Not a test: it gates nothing.
Ends with a 'summary:' line.  BENCH_MB= sets the download (default 64),
BENCH_ROUNDS= the rounds (default 3)."""
import csv
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from splice_tests import KO, MODULES  # noqa: E402

MB = int(os.environ.get("BENCH_MB", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
GETS = 200


def run_trace(tb, run_dir, server, trace, name):
    """rs-client on c1: returns its CSV rows (it must succeed)."""
    from emul.places import binary
    path = os.path.join(run_dir, f"{name}.trace")
    out = os.path.join(run_dir, f"{name}.csv")
    with open(path, "w") as f:
        f.write(trace)
    d = tb.start("c1", name, [binary("rs-client"), "--server", server, "--trace", path, "--csv", out, "--quiet",
                              "--timeout", "60s"])
    if d.popen.wait(600) != 0:
        raise RuntimeError(f"{name} failed: {open(d.err).read()[-2000:]}")
    with open(out) as f:
        return list(csv.DictReader(f))


def tcp_counters(tb, host):
    """The TCP counters of 'host''s namespace (/proc/net/snmp), by name."""
    lines = [l.split() for l in tb[host].cmd("cat /proc/net/snmp").splitlines() if l.startswith("Tcp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def measure(tb, run_dir, server, mode):
    """(MB/s of the download, ms per keep-alive GET) through 'server'; and
    what the download cost in retransmissions (the backend's) and segments
    with bad checksums (the client's)."""
    before = tcp_counters(tb, "primary"), tcp_counters(tb, "c1")
    rows = run_trace(tb, run_dir, server, f"request GET /static/{MB}M?seed=1\n  expect length {MB << 20}\n",
                     f"{mode}-download")
    secs = (int(rows[0]["end_us"]) - int(rows[0]["start_us"])) / 1e6
    after = tcp_counters(tb, "primary"), tcp_counters(tb, "c1")
    print(f"  {mode}: backend retransmitted {after[0]['RetransSegs'] - before[0]['RetransSegs']} segments, "
          f"client got {after[1]['InCsumErrors'] - before[1]['InCsumErrors']} with bad checksums, "
          f"{after[1]['InErrs'] - before[1]['InErrs']} in error", flush=True)
    # The first request and the pause let the proxy splice; then GETS small ones.
    rows = run_trace(tb, run_dir, server, "request GET /static/1000?seed=2\nthink 100ms\n"
                     + "request GET /static/1000?seed=2\n  expect length 1000\n" * GETS, f"{mode}-gets")
    per = [(int(r["end_us"]) - int(r["start_us"])) / 1e3 for r in rows[1:]]
    return MB / secs, statistics.median(per)


def main():
    for m in MODULES:
        subprocess.run(["modprobe", m], capture_output=True)
    subprocess.run(["insmod", KO], check=True)
    from emul.places import APP_PORT, PROXY_CTL, VIP_PORT, binary, write_key
    from emul.testbed import Testbed
    from topologies.lan import SERVERS, LanTopo
    vip = f"{SERVERS['proxy']}:{VIP_PORT}"
    results = {m: [] for m in ("direct", "ebpf", "kmod")}
    with tempfile.TemporaryDirectory(prefix="rs-bench-kmod-") as tmp, \
            Testbed(LanTopo(), os.path.join(tmp, "run")) as tb:
        run_dir = os.path.join(tmp, "run")
        key = os.path.join(tmp, "key.hex")
        write_key(key)
        tb.start("primary", "app", [binary("rs-app"), "--listen", f"0.0.0.0:{APP_PORT}", "--id", "primary"],
                 ready="listening")
        for n in range(ROUNDS):
            for mode in results:
                px = None
                if mode != "direct":
                    px = tb.start("proxy", f"proxy-{mode}-{n}", [
                        binary("rs-proxy"), "--listen", vip, "--control", f"{SERVERS['proxy']}:{PROXY_CTL}",
                        "--key", key, "--backend", f"{SERVERS['primary']}:{APP_PORT}", "--datapath", mode,
                        "--fresh"], ready="listening")
                server = vip if px else f"{SERVERS['primary']}:{APP_PORT}"
                results[mode].append(measure(tb, run_dir, server, f"{mode}-{n}"))
                print(f"  round {n} {mode:6s} {results[mode][-1][0]:8.1f} MB/s  {results[mode][-1][1]:.3f} ms/GET",
                      flush=True)
                if px:
                    tb.stop(px)
    med = {m: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for m, v in results.items()}
    for m, (tput, lat) in med.items():
        print(f"{m:6s} {tput:8.1f} MB/s ({tput / med['direct'][0]:.2f}x direct)  "
              f"{lat:.3f} ms per keep-alive GET ({lat / med['direct'][1]:.2f}x direct)")
    subprocess.run(["rmmod", "rs_tcpspmod"], capture_output=True)
    print(f"summary: mb={MB} rounds={ROUNDS} "
          f"throughput_ebpf_to_direct={med['ebpf'][0] / med['direct'][0]:.2f} "
          f"throughput_kmod_to_direct={med['kmod'][0] / med['direct'][0]:.2f} "
          f"throughput_kmod_to_ebpf={med['kmod'][0] / med['ebpf'][0]:.2f} "
          f"latency_ebpf_to_direct={med['ebpf'][1] / med['direct'][1]:.2f} "
          f"latency_kmod_to_direct={med['kmod'][1] / med['direct'][1]:.2f} "
          f"latency_kmod_to_ebpf={med['kmod'][1] / med['ebpf'][1]:.2f}")


if __name__ == "__main__":
    main()
