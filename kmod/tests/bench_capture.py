#!/usr/bin/python3
"""make bench-kmod (the capture half; inside Debian's kernel booted by
kmod/guest/run.py): rs-logger capturing a fast download through logmod
(--capture kmod) against libpcap (--capture pcap), the two side by side on
the same interface in the same run, so both see the same segments.
Reports each logger's CPU time per GB captured, the captured segments and
drops, and the ratio kmod/pcap (TCG makes absolute numbers meaningless; the
ratio is the result).  Not a test: it gates nothing.  Ends with a
'summary:' line.  BENCH_MB= sets the download (default 256)."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guest_tests import KO, PORT, ROOT, VIP, listen_vip, netns_setup, netns_teardown, setns, sh  # noqa: E402

MB = int(os.environ.get("BENCH_MB", "256"))


def cpu_s(pid):
    """utime + stime of process 'pid', in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def download(nbytes):
    """A server in 'srv' sends 'nbytes' to a client in 'cli' that reads
    them all.  Returns the seconds it took."""
    ready = threading.Event()

    def server():
        ls = listen_vip()
        ready.set()
        c, _ = ls.accept()
        chunk = bytes(1 << 20)
        for _ in range(nbytes >> 20):
            c.sendall(chunk)
        c.close()
        ls.close()
    t = threading.Thread(target=server)
    t.start()
    ready.wait(10)
    setns("cli")
    t0 = time.monotonic()
    s = socket.create_connection((VIP, PORT), timeout=60)
    got = 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        got += len(d)
    s.close()
    took = time.monotonic() - t0
    t.join(30)
    assert got == nbytes, (got, nbytes)
    return took


def main():
    sh("modprobe veth")
    sh(f"insmod {KO}")
    netns_setup()
    procs, out = {}, {}
    try:
        key = "/tmp/rs-key.hex"
        with open(key, "w") as f:
            f.write("ab" * 32 + "\n")
        os.chmod(key, 0o600)
        for cap, base in (("kmod", 7071), ("pcap", 7081)):
            out[cap] = f"/tmp/bench-{cap}"
            procs[cap] = subprocess.Popen(
                ["ip", "netns", "exec", "srv", os.path.join(ROOT, "build", "rs-logger"), "--iface", "vb",
                 "--vip", f"{VIP}:{PORT}", "--key", key, "--capture", cap, "--listen", f"127.0.0.1:{base}",
                 "--resend", f"127.0.0.1:{base + 1}"], stdout=open(out[cap] + ".out", "w"),
                stderr=open(out[cap] + ".err", "w"))
        end = time.monotonic() + 20
        while time.monotonic() < end and not all("start vip=" in open(o + ".err").read() for o in out.values()):
            time.sleep(0.1)
        # ip netns exec execs the logger: its pid is the Popen's.
        before = {c: cpu_s(p.pid) for c, p in procs.items()}
        took = download(MB << 20)
        time.sleep(1.0)
        used = {c: cpu_s(p.pid) - before[c] for c, p in procs.items()}
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        res = {}
        for cap in procs:
            stats = [l for l in open(out[cap] + ".out").read().splitlines() if l.startswith("stats received=")]
            kv = dict(f.split("=", 1) for f in stats[-1].split()[1:] if "=" in f)
            res[cap] = (int(kv["received"]), int(kv["dropped"]))
        gb = MB / 1024
        print(f"download {MB} MB in {took:.2f} s ({MB * 8 / took / 1000:.2f} Gbit/s under TCG)")
        for cap in procs:
            print(f"  {cap:5s} cpu {used[cap]:.2f} s ({used[cap] / gb:.2f} s/GB)  received={res[cap][0]} "
                  f"dropped={res[cap][1]}")
        ratio = used["kmod"] / used["pcap"] if used["pcap"] else float("nan")
        print(f"summary: mb={MB} seconds={took:.2f} kmod_cpu_s_per_gb={used['kmod'] / gb:.2f} "
              f"pcap_cpu_s_per_gb={used['pcap'] / gb:.2f} cpu_ratio_kmod_to_pcap={ratio:.2f} "
              f"kmod_received={res['kmod'][0]} kmod_dropped={res['kmod'][1]} pcap_received={res['pcap'][0]} "
              f"pcap_dropped={res['pcap'][1]}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        netns_teardown()
        sh("rmmod rs_logmod", check=False)


if __name__ == "__main__":
    main()
