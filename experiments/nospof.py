#!/usr/bin/python3
"""make experiment-nospof: no single point of failure.  The proxy itself
fails, or two backends one after the other: resplice's proxy pair
(proxy/pair.c) and spare backend (re-protection) against the operators'
answer, an HAProxy pair with keepalived moving a VIP between them and a
third backend, on the LAN testbed with two proxy hosts and three backends
(LanTopo(pair=True, spare=True)).

Per trial a fresh deployment serves one client (rs-client on c1) that
updates the counter, downloads a slow 1.2 MB stream (about 3 s) and
updates again, on one keep-alive connection.  At a moment drawn (seeded)
uniformly over the first 2 s of the download the harness injects, from
outside:

  none            nothing (the crash-free reference of each technique)
  proxy-kill      SIGKILL of the active proxy's process (rs-proxy; haproxy)
  proxy-host      the active proxy host's interfaces down
  double-backend  SIGKILL of the primary's application, then of the
                  alternate's 1 s later (the moment drawn over the first
                  1.2 s: both land in the download)

Techniques:
  resplice      the proxy pair: the standby keeps a copy of the active's
                splice table and takes the VIP over (gratuitous ARP) when
                the active's connection closes or it is silent 300 ms;
                the spare becomes the alternate after the first failover
  haproxy-vrrp  HAProxy (mode http, health checks inter 100ms fall 2,
                retries, redispatch; the alternate and the spare as
                backups) on both proxy hosts; keepalived
                (VRRPv3, advert 100 ms, unicast) moves a VIP between them,
                with a check script (the local HAProxy answers, every 1 s:
                keepalived's shortest interval); the client behaves like a
                browser (it reloads on an error, POST included)

Measured from outside: whether the fault was masked (every response
complete and right, on the connection it began on, no RST or FIN from the
VIP before the client's own close), whether the action completed at all
(the browser-like client may reload), and the client's stall: the longest
gap between two data segments from the VIP in the client's own pcap, as
the extra over the technique's crash-free median.

Writes results/nospof/trials.csv (experiments/common.py's NOSPOF_COLUMNS),
make figures draws plots/nospof.png and REPORT.md's section; ends with
'summary: ...' (masked fraction and median extra stall per technique and
fault).  TRIALS= per technique and fault (default 10; QUICK=1: 2)."""
import argparse
import csv
import os
import random
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import binary, use_build  # noqa: E402
from emul.shaping import wait_until  # noqa: E402
from emul.stack import Stack  # noqa: E402
from emul.testbed import Testbed, file_contains  # noqa: E402
from experiments import baselines  # noqa: E402
from experiments.common import Progress, RowWriter, nospof_cells, summary, trials  # noqa: E402
from experiments.pcaps import ends, gaps_ms  # noqa: E402
from experiments.workloads import RefappBackends  # noqa: E402
from topologies.lan import PAIR_HOSTS, SERVERS, LanTopo  # noqa: E402

FAULTS = ("none", "proxy-kill", "proxy-host", "double-backend")
STREAM = "/slow?bytes=1200000&chunk=8000&delay=20ms"
TRACE = ("request POST /counter\n  expect contains \"counter=\"\n"
         f"request GET {STREAM}\n  expect content seed=0\n"
         "request POST /counter\n  expect contains \"counter=\"\n")
FAULT_WINDOW_S = 2.0        # the download lasts about 3 s: the fault lands inside it
SECOND_CRASH_S = 1.0        # double-backend: the alternate dies this long after the primary
BOUND_S = 40                # a client still running after this hangs
VRRP_VIP = "10.0.0.100"     # the baseline's VIP (resplice's is on the proxies' loopback)


class Resplice:
    name, browser = "resplice", False

    def __init__(self, tb, work):
        self.tb, self.work = tb, work

    def start(self):
        self.stack = Stack(self.tb, self.work).start()
        self.vip = SERVERS["proxy"]
        return self

    def active(self):
        """The active proxy's daemon."""
        return self.stack.d["proxy"]

    def app(self, host):
        return self.stack.d[f"app-{host}"]

    def stop(self):
        self.stack.stop()


class HAProxyVrrp:
    name, browser = "haproxy-vrrp", True

    def __init__(self, tb, work):
        self.tb, self.work = tb, work
        self.vip = VRRP_VIP

    def start(self):
        hosts = ["primary", "alternate", "spare"]
        self.b = RefappBackends(self.tb, self.work, hosts)
        self.b.start(None)
        cfg = baselines.haproxy_cfg("*", [(h, self.b.addr(h)) for h in hosts], timers="tuned", check_path="/counter")
        check = "/usr/bin/curl -sf -o /dev/null -m 1 http://127.0.0.1:80/counter"
        texts = baselines.keepalived_pair(VRRP_VIP, ("proxy-eth0", PAIR_HOSTS["proxy"]),
                                          ("proxy2-eth0", PAIR_HOSTS["proxy2"]), advert="tuned", check_script=check)
        self.d = {}
        for host, text in zip(("proxy", "proxy2"), texts):
            path = os.path.join(self.work, f"haproxy-{host}.cfg")
            with open(path, "w") as f:
                f.write(cfg)
            self.d[f"haproxy-{host}"] = self.tb.start(host, f"haproxy-{host}", ["haproxy", "-db", "-f", path])
            run = os.path.join(self.work, f"keepalived-{host}")
            os.makedirs(run, exist_ok=True)
            conf = os.path.join(run, "keepalived.conf")
            with open(conf, "w") as f:
                f.write(text)
            self.d[f"keepalived-{host}"] = self.tb.start(host, f"keepalived-{host}", [
                "keepalived", "-n", "-l", "-D", "-G", "-P", "-f", conf, "-p", os.path.join(run, "pid"),
                "-r", os.path.join(run, "vrrp.pid")])
        if not wait_until(lambda: VRRP_VIP in self.tb["proxy"].cmd("ip -4 -o addr show dev proxy-eth0"), 10):
            raise RuntimeError(f"keepalived: the proxy host never held {VRRP_VIP}")
        time.sleep(0.3)     # HAProxy's first health checks
        return self

    def active(self):
        return self.d["haproxy-proxy"]

    def app(self, host):
        return self.b.d[host]

    def stop(self):
        for d in self.d.values():
            if d.alive():
                self.tb.stop(d)
        self.b.stop()


TECHNIQUES = {t.name: t for t in (Resplice, HAProxyVrrp)}


def trial(tb, args, tech, fault, n, seed):
    rng = random.Random(seed)
    t = tech(tb, args.work).start()
    cap, pcap = tb.capture("c1", "cap-c1", bpf_filter="tcp port 80", snaplen=96)
    trace = os.path.join(args.work, "c1.trace")
    with open(trace, "w") as f:
        f.write(TRACE)
    out = os.path.join(args.work, "c1.csv")
    if os.path.exists(out):
        os.remove(out)
    argv = [args.client, "--server", f"{t.vip}:80", "--trace", trace, "--csv", out, "--timeout", "10s"]
    if t.browser:
        argv += ["--browser", "--retry-post"]
    c = tb.start("c1", "client-c1", argv)
    window = FAULT_WINDOW_S - SECOND_CRASH_S * (fault == "double-backend")
    moment = rng.uniform(0.1, window) if fault != "none" else None
    undo = None
    if moment is not None:
        if not wait_until(lambda: file_contains(c.err, "step=0 response"), 10):
            raise RuntimeError(f"{t.name}: the first request was not answered; see {c.err}")
        time.sleep(moment)
        if fault == "proxy-kill":
            tb.kill(t.active())
        elif fault == "double-backend":
            tb.kill(t.app("primary"))
            time.sleep(SECOND_CRASH_S)
            tb.kill(t.app("alternate"))
        else:
            tb.host_down("proxy")
            undo = lambda: tb.host_up("proxy")  # noqa: E731
    hung = False
    try:
        c.popen.wait(BOUND_S)
    except Exception:
        hung = True
        c.popen.kill()
        c.popen.wait()
    tb.stop_capture(cap)
    if undo:
        undo()
    with open(out) as f:
        rows = list(csv.DictReader(f))
    t.stop()
    vip = t.vip
    flows = ends(pcap, vip)
    cut = [k for k, e in flows.items() if any(x in e for x in ("server_rst", "server_fin"))
           and not ("client_end" in e and e["client_end"] <= min(v for x, v in e.items() if x.startswith("server")))]
    ok = bool(rows) and all(r["result"] == "ok" for r in rows) and len(rows) == 3
    one_conn = len({r["local_port"] for r in rows}) == 1
    return {"technique": t.name, "fault": fault, "trial": n, "seed": seed,
            "moment_ms": round(moment * 1000, 1) if moment is not None else "",
            "masked": int(ok and one_conn and not cut and not hung), "completed": int(ok and not hung),
            "stall_ms": round(gaps_ms(pcap, vip), 1), "connections": len(flows), "cut": len(cut),
            "hung": int(hung), "requests": len(rows)}


def keep(args, name):
    """Copies the trial's logs and pcaps to OUT/kept/NAME; returns it."""
    dst = os.path.join(args.out, "kept", name)
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(args.work):
        if f.endswith((".err", ".out", ".csv", ".pcap")):
            shutil.copy(os.path.join(args.work, f), dst)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("BUILD_DIR", "build"))
    ap.add_argument("--out", default="results/nospof")
    ap.add_argument("--techniques", default=os.environ.get("TECHNIQUES", ",".join(TECHNIQUES)))
    ap.add_argument("--faults", default=os.environ.get("FAULTS", ",".join(FAULTS)),
                    help="(FAULTS=) none measures the crash-free stall the others are compared with")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    args = ap.parse_args()
    use_build(args.build)
    args.client = binary("rs-client")
    for tool in ("haproxy", "keepalived"):
        if not shutil.which(tool):
            sys.exit(f"experiment-nospof: {tool} is missing: make deps")
    techs = [TECHNIQUES[n] for n in args.techniques.split(",") if n]
    faults = [f for f in FAULTS if f in args.faults.split(",")]
    per = trials(10, quick_default=2)
    os.makedirs(args.out, exist_ok=True)
    args.work = os.path.join(args.out, "run")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work, exist_ok=True)
    table = os.path.join(args.out, "trials.csv")
    if os.path.exists(table):
        os.remove(table)
    out = RowWriter(table, "nospof", config={"trials": per, "stream": STREAM, "window_s": FAULT_WINDOW_S})
    prog = Progress(len(techs) * len(faults) * per)
    rows, t0 = [], time.time()
    with Testbed(LanTopo(pair=True, spare=True), args.work, seed=args.seed) as tb:
        for tech in techs:
            for f in faults:
                for n in range(per):
                    seed = args.seed * 100000 + FAULTS.index(f) * 1000 + list(TECHNIQUES).index(tech.name) * 100 + n
                    prog.step(f"{tech.name} {f} trial {n}")
                    r = out.write(**trial(tb, args, tech, f, n, seed))
                    rows.append(r)
                    if tech.browser is False and f != "none" and r["masked"] != "1":
                        print(f"  not masked: {tech.name} {f} trial {n} seed={seed}; kept in "
                              f"{keep(args, f'{tech.name}-{f}-{n}')}", flush=True)
    out.close()
    pairs = []
    for t, f, masked, done, extra in nospof_cells(rows):
        print(f"{t:14s} {f:11s} masked {masked:.0f}% completed {done:.0f}% extra stall median "
              f"{'na' if extra is None else f'{extra:.0f} ms'}")
        key = f"{t}_{f}".replace("-", "_")
        pairs += [(f"{key}_masked_pct", masked), (f"{key}_extra_stall_ms", extra)]
    print(summary(("trials", len(rows)), *pairs, ("minutes", round((time.time() - t0) / 60, 1))))


if __name__ == "__main__":
    main()
