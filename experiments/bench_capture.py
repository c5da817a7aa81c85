#!/usr/bin/python3
"""make bench-capture: what rs-logger's capture costs per GB with the tc
program's ring (--capture ebpf, the default) and with libpcap (--capture
pcap), in the same run, and whether the tc program keeps up with 1 GB/s.
A benchmark, not a test: it prints a table and a 'summary:' line and never
fails on time.

The testbed's transfers top out below 1 GB/s, so a sender of its own: in
namespaces this script creates (rsbc-srv, rsbc-cli, rsbc-log), lighttpd
serves a file from the page cache with sendfile to BENCH_P (default 2)
parallel receivers that throw the bytes away with splice (neither side
copies them), and tc's mirred mirrors the server port's both directions to
the capture interface in rsbc-log, where one rs-logger captures (the
logger works as on the testbed: every byte reassembled and
transactionalized; the client leg is HTTP).  Each round runs one transfer
with no logger (the baseline), one with --capture ebpf and one with
--capture pcap, in a rotating order; per phase:
  rate         bytes received / wall time
  logger_cpu   the logger's user+system CPU seconds per GB
  system_cpu   every CPU's busy time (user, system, irq, softirq) per GB;
               minus the baseline's = the capture's whole cost (softirq
               copies included, which no process is charged for)
  drops        the source's own (ring full / pcap's kernel drops), and
               incomplete connections in the log
Medians over BENCH_ROUNDS (default 3) rounds.  BENCH_MB (default 1024):
the file each receiver downloads.  Machine-wide noise (other work on the
machine) shows as spread between rounds: the table has each round."""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emul.places import binary, use_build, write_key  # noqa: E402
from experiments.common import summary  # noqa: E402

NS = ("rsbc-srv", "rsbc-cli", "rsbc-log")
SRV, CLI = "10.99.0.1", "10.99.0.2"
PORT = 80
GB = 1e9

# A receiver: GET the file, discard it through a pipe into /dev/null with
# splice (no copy into user space); prints the bytes it got.
RECEIVER = r'''
import os, socket, sys
s = socket.create_connection((sys.argv[1], 80))
s.sendall(("GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
r, w = os.pipe()
null = os.open("/dev/null", os.O_WRONLY)
got = 0
while True:
    k = os.splice(s.fileno(), w, 1 << 20)
    if k == 0:
        break
    got += k
    while k:
        k -= os.splice(r, null, k)
print(got)
'''


def sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
    return r.stdout


def netns_up():
    """srv (10.99.0.1) <-> cli (10.99.0.2) over a veth pair; both
    directions of the server's port mirrored to m1 in rsbc-log."""
    netns_down()
    for n in NS:
        sh(f"ip netns add {n} && ip -n {n} link set lo up")
    sh("ip link add s0 netns rsbc-srv type veth peer name c0 netns rsbc-cli")
    sh("ip link add m0 netns rsbc-srv type veth peer name m1 netns rsbc-log")
    sh(f"ip -n rsbc-srv addr add {SRV}/24 dev s0 && ip -n rsbc-cli addr add {CLI}/24 dev c0")
    for n, dev in (("rsbc-srv", "s0"), ("rsbc-srv", "m0"), ("rsbc-cli", "c0"), ("rsbc-log", "m1")):
        sh(f"ip -n {n} link set {dev} up")
    sh("ip netns exec rsbc-srv tc qdisc add dev s0 clsact")
    for d in ("ingress", "egress"):
        sh(f"ip netns exec rsbc-srv tc filter add dev s0 {d} prio 1 protocol all u32 match u32 0 0 "
           f"action mirred egress mirror dev m0")
    sh(f"ip netns exec rsbc-cli ping -c 1 -W 2 {SRV}")


def netns_down():
    for n in NS:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def cpu_s(pid):
    """utime + stime of process 'pid', in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_s():
    """Busy CPU seconds of the whole machine so far (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def stats_of(out_path):
    with open(out_path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("stats ")]
    return dict(x.split("=", 1) for x in lines[-1].split()[1:] if "=" in x) if lines else {}


class Logger:
    def __init__(self, source, work, key):
        self.out, self.err = os.path.join(work, f"logger-{source}.out"), os.path.join(work, f"logger-{source}.err")
        # ip netns exec execs the logger: its pid is the Popen's.
        self.p = subprocess.Popen(["ip", "netns", "exec", "rsbc-log", binary("rs-logger"), "--iface", "m1",
                                   "--capture", source, "--vip", f"{SRV}:{PORT}", "--key", key,
                                   "--listen", "127.0.0.1:7071", "--resend", "127.0.0.1:7072"],
                                  stdout=open(self.out, "w"), stderr=open(self.err, "w"))
        end = time.monotonic() + 20
        while time.monotonic() < end and "listening on" not in open(self.out).read():
            if self.p.poll() is not None:
                raise RuntimeError(f"rs-logger --capture {source} exited: {open(self.err).read()[-500:]}")
            time.sleep(0.05)
        if f"source={source}" not in open(self.out).read():
            raise RuntimeError(f"rs-logger did not start --capture {source}: {open(self.err).read()[-500:]}")

    def stats(self):
        n = open(self.out).read().count("stats ")
        self.p.send_signal(signal.SIGUSR1)
        end = time.monotonic() + 5
        while time.monotonic() < end and open(self.out).read().count("stats ") == n:
            time.sleep(0.02)
        return stats_of(self.out)

    def settle(self):
        """Waits until the logger has handled every segment (its count stops moving)."""
        last = None
        for _ in range(50):
            s = self.stats()
            if s.get("packets") == last:
                return s
            last = s.get("packets")
            time.sleep(0.1)
        return s

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def transfer(path, nrecv, recv_script):
    """nrecv receivers fetch 'path' at once: (bytes, seconds)."""
    t0 = time.monotonic()
    ps = [subprocess.Popen(["ip", "netns", "exec", "rsbc-cli", "/usr/bin/python3", recv_script, SRV, path],
                           stdout=subprocess.PIPE, text=True) for _ in range(nrecv)]
    got = 0
    for p in ps:
        out, _ = p.communicate(timeout=600)
        got += int(out.strip() or 0)
    return got, time.monotonic() - t0


def phase(source, work, key, nrecv, recv_script):
    lg = Logger(source, work, key) if source != "none" else None
    c0 = cpu_s(lg.p.pid) if lg else 0.0
    b0 = busy_s()
    got, secs = transfer("/big.bin", nrecv, recv_script)
    st = lg.settle() if lg else {}
    b1 = busy_s()
    c1 = cpu_s(lg.p.pid) if lg else 0.0
    if lg:
        lg.stop()
    gb = got / GB
    return {"source": source, "gb": gb, "secs": secs, "rate": gb / secs, "logger_cpu": (c1 - c0) / gb,
            "system_cpu": (b1 - b0) / gb, "received": int(st.get("received", 0)),
            "dropped": int(st.get("dropped", 0)) + int(st.get("ifdropped", 0)),
            "incomplete": int(st.get("incomplete", 0)), "txns_logged": int(st.get("txns_logged", 0))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    use_build(a.build)
    if os.geteuid() != 0:
        sys.exit("bench-capture: needs root (namespaces, tc, BPF)")
    mb = int(os.environ.get("BENCH_MB", "1024"))
    nrecv = int(os.environ.get("BENCH_P", "2"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    work = tempfile.mkdtemp(prefix="rs-bench-capture-")
    lighttpd = None
    try:
        www = os.path.join(work, "www")
        os.makedirs(www)
        with open(os.path.join(www, "big.bin"), "wb") as f:
            chunk = bytes(range(256)) * 4096
            for _ in range(mb):
                f.write(chunk)
        os.chmod(work, 0o755)
        conf = os.path.join(work, "lighttpd.conf")
        with open(conf, "w") as f:
            f.write(f'server.document-root = "{www}"\nserver.bind = "{SRV}"\nserver.port = {PORT}\n'
                    f'server.errorlog = "{work}/lighttpd.err"\n')
        recv_script = os.path.join(work, "recv.py")
        with open(recv_script, "w") as f:
            f.write(RECEIVER)
        key = os.path.join(work, "key.hex")
        write_key(key)
        netns_up()
        lighttpd = subprocess.Popen(["ip", "netns", "exec", "rsbc-srv", shutil.which("lighttpd") or "lighttpd",
                                     "-D", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        transfer("/big.bin", 1, recv_script)        # warm the page cache and the path
        order = ["none", "ebpf", "pcap"]
        runs = []
        print(f"{nrecv} receivers x {mb} MB per phase, {rounds} rounds")
        print(f"{'round':>5} {'source':6} {'GB':>5} {'GB/s':>5} {'logger s/GB':>11} {'system s/GB':>11} "
              f"{'received':>8} {'dropped':>7} {'incompl':>7} {'txns':>4}")
        for r in range(rounds):
            for source in order[r % 3:] + order[:r % 3]:
                x = phase(source, work, key, nrecv, recv_script)
                x["round"] = r
                runs.append(x)
                print(f"{r:5d} {source:6} {x['gb']:5.2f} {x['rate']:5.2f} {x['logger_cpu']:11.3f} "
                      f"{x['system_cpu']:11.3f} {x['received']:8d} {x['dropped']:7d} {x['incomplete']:7d} "
                      f"{x['txns_logged']:4d}", flush=True)

        def med(source, k):
            return statistics.median(x[k] for x in runs if x["source"] == source)

        base = med("none", "system_cpu")
        res = {}
        for s in ("ebpf", "pcap"):
            mine = [x for x in runs if x["source"] == s]
            res[s] = {"rate": med(s, "rate"), "rate_min": min(x["rate"] for x in mine),
                      "logger": med(s, "logger_cpu"),
                      "overhead": statistics.median(x["system_cpu"] - base for x in mine),
                      "dropped": sum(x["dropped"] for x in mine), "incomplete": sum(x["incomplete"] for x in mine),
                      "logged_ok": all(x["txns_logged"] == nrecv for x in mine)}
        e, p = res["ebpf"], res["pcap"]
        print(f"baseline (no logger): {med('none', 'rate'):.2f} GB/s, {base:.3f} CPU s/GB")
        for s, x in res.items():
            print(f"{s:5s} {x['rate']:.2f} GB/s (min {x['rate_min']:.2f}), logger {x['logger']:.3f} CPU s/GB, "
                  f"capture's whole cost {x['overhead']:.3f} CPU s/GB over the baseline, dropped {x['dropped']}, "
                  f"incomplete {x['incomplete']}, every download logged: {x['logged_ok']}")
        kept = e["rate_min"] >= 1.0 and e["dropped"] == 0 and e["incomplete"] == 0
        print(f"ebpf kept >= 1 GB/s without drops in every round: {'yes' if kept else 'no'}")
        print(summary(receivers=nrecv, mb=mb, rounds=rounds, baseline_gbps=med("none", "rate"),
                      ebpf_gbps=e["rate"], ebpf_gbps_min=e["rate_min"], ebpf_dropped=e["dropped"],
                      ebpf_incomplete=e["incomplete"], pcap_gbps=p["rate"], pcap_dropped=p["dropped"],
                      pcap_incomplete=p["incomplete"], ebpf_logger_cpu_s_per_gb=e["logger"],
                      pcap_logger_cpu_s_per_gb=p["logger"],
                      logger_cpu_ratio_ebpf_to_pcap=e["logger"] / p["logger"] if p["logger"] else None,
                      ebpf_overhead_cpu_s_per_gb=e["overhead"], pcap_overhead_cpu_s_per_gb=p["overhead"],
                      overhead_ratio_ebpf_to_pcap=e["overhead"] / p["overhead"] if p["overhead"] > 0 else None,
                      ebpf_kept_1gbps=int(kept)))
    finally:
        if lighttpd and lighttpd.poll() is None:
            lighttpd.terminate()
            lighttpd.wait(10)
        netns_down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
