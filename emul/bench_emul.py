#!/usr/bin/python3
"""make bench-emul: TCP throughput through the link emulator at 10 ms RTT
against an unshaped link in the same run, and the emulator's RTT offset at
idle.  A benchmark, not a test: it prints figures and a 'summary:' line and
never fails on absolute numbers."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import use_build  # noqa: E402
from emul.shaping import measure_rtt  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from topologies.lan import LanTopo, SERVERS  # noqa: E402
from topologies.profiles import Profile  # noqa: E402

PROXY = SERVERS["proxy"]


def iperf(tb, seconds):
    """Gbit/s of one TCP stream c1 -> proxy (iperf3 JSON)."""
    srv = tb.start("proxy", "iperf3", ["iperf3", "-s", "-1", "--forceflush"], ready="listening")
    out = tb["c1"].cmd(f"iperf3 -c {PROXY} -t {seconds} -J")
    srv.popen.wait(10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def run(profile, args, tag):
    with Testbed(LanTopo(profile=profile), os.path.join(args.out, tag), seed=args.seed) as tb:
        measure_rtt(tb["c1"], PROXY, count=3, interval=0.01)
        idle, _ = measure_rtt(tb["c1"], PROXY, count=args.pings, interval=0.05)
        gbps = iperf(tb, args.seconds)
    return idle, gbps


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="results/bench-emul")
    ap.add_argument("--rtt", type=float, default=10.0)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    use_build(args.build)
    base_rtt, base = run(None, args, "unshaped")
    rtt, shaped = run(Profile("bench", args.rtt, 0, 0), args, "shaped")
    offset = rtt - base_rtt - args.rtt
    print(f"unshaped: rtt {base_rtt:.3f} ms  tcp {base:.2f} Gbit/s")
    print(f"rs-emul {args.rtt:g} ms: rtt {rtt:.3f} ms (offset {offset:+.3f} ms over requested + unshaped)"
          f"  tcp {shaped:.2f} Gbit/s")
    print(f"summary: tcp_unshaped_gbps={base:.2f} tcp_shaped_gbps={shaped:.2f} "
          f"ratio={shaped / base:.3f} rtt_req_ms={args.rtt:g} idle_offset_ms={offset:.3f}")


if __name__ == "__main__":
    main()
