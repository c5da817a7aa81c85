#!/usr/bin/python3
"""make emul-check: for every network profile, build the testbed, measure
the client<->proxy RTT and loss, and print requested vs measured.

Writes results/emul-check/profiles.csv (one row per profile, with the seed
and configuration) and ends with a 'summary:' line.
"""
import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import use_build  # noqa: E402
from emul.shaping import measure_rtt  # noqa: E402
from emul.testbed import Testbed  # noqa: E402
from topologies import profiles  # noqa: E402
from topologies.lan import LanTopo, SERVERS  # noqa: E402


def check_profile(p, args):
    with Testbed(LanTopo(profile=p), os.path.join(args.out, "run", p.name),
                 switch=args.switch, shaping=args.shaping, seed=args.seed) as tb:
        # Warm up (ARP is static; the first packets still pay cache misses).
        measure_rtt(tb["c1"], SERVERS["proxy"], count=3, interval=0.01)
        t0 = time.monotonic()
        avg, (sent, recv) = measure_rtt(tb["c1"], SERVERS["proxy"], count=args.count,
                                        interval=args.interval, wait_s=3 + p.rtt_ms / 1000)
        took = time.monotonic() - t0
        mode = tb.shaper.mode
    want_loss = 1 - (1 - p.loss) ** 2   # lost on the way out or on the way back
    got_loss = 1 - recv / sent if sent else float("nan")
    err = (avg - p.rtt_ms) if avg is not None else float("nan")
    return {
        "profile": p.name, "rtt_req_ms": p.rtt_ms, "rtt_meas_ms": avg,
        "rtt_err_ms": round(err, 3), "rtt_err_pct": round(100 * err / p.rtt_ms, 2) if p.rtt_ms else "",
        "jitter_req_ms": p.jitter_ms, "loss_req_rt": round(want_loss, 4),
        "loss_meas_rt": round(got_loss, 4), "pings": sent, "seconds": round(took, 1),
        "shaping": mode, "switch": args.switch, "seed": args.seed,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="results/emul-check")
    ap.add_argument("--profiles", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--count", type=int, default=500, help="pings per profile")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between pings")
    ap.add_argument("--switch", choices=["bridge", "ovs"], default="bridge")
    ap.add_argument("--shaping", choices=["netem", "emul"], default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    use_build(args.build)
    if os.geteuid() != 0:
        sys.exit("emul-check: needs root (Mininet builds network namespaces)")

    all_profiles = profiles.load()
    names = args.profiles.split(",") if args.profiles else list(all_profiles)
    rows = []
    print(f"{'profile':15s} {'rtt req':>8s} {'rtt meas':>9s} {'err ms':>7s} {'err %':>6s} "
          f"{'loss req':>9s} {'loss meas':>9s}  pings")
    for i, name in enumerate(names, 1):
        if name not in all_profiles:
            sys.exit(f"emul-check: unknown profile {name!r}")
        if sys.stdout.isatty():
            print(f"[{i}/{len(names)}] {name} ...", end="\r", flush=True)
        r = check_profile(all_profiles[name], args)
        rows.append(r)
        clear = "\r\033[K" if sys.stdout.isatty() else ""
        print(f"{clear}{r['profile']:15s} {r['rtt_req_ms']:8.1f} {r['rtt_meas_ms'] or float('nan'):9.3f} "
              f"{r['rtt_err_ms']:7.3f} {str(r['rtt_err_pct']):>6s} {r['loss_req_rt']:9.4f} "
              f"{r['loss_meas_rt']:9.4f}  {r['pings']}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "profiles.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path} (shaping: {rows[0]['shaping']}, switch: {args.switch})")
    max_ms = max(abs(r["rtt_err_ms"]) for r in rows)
    max_pct = max((abs(r["rtt_err_pct"]) for r in rows if r["rtt_err_pct"] != ""), default=0)
    print(f"summary: profiles={len(rows)} max_rtt_err_ms={max_ms:.3f} max_rtt_err_pct={max_pct:.2f} "
          f"shaping={rows[0]['shaping']}")


if __name__ == "__main__":
    main()
