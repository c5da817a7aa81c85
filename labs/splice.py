#!/usr/bin/python3
"""Lab 1, watch a splice (docs/labs/lab-1.md): `make lab-1` runs it,
`make lab-1-check` checks it.

run:   the LAN testbed with the whole stack (rs-proxy, rs-logger, rs-stated,
       rs-app on two backends); tcpdump on the client (c1, port 80) and on
       the primary (port 8080); one download of 200 KB with curl through the
       VIP.  Leaves in labs/run/lab-1/ (or DIR): client.pcap, backend.pcap,
       proxy.log and answers.txt for the student to fill in.  CLI=1 leaves a
       Mininet CLI with the stack running before it tears down.
check: from those files alone, that the run shows a splice (one client
       connection, one backend connection, the proxy's "splice" line naming
       both, every byte of the response the backend sent reaching the
       client at its sequence number plus one constant offset, the client's
       segments after its request reaching the backend likewise), then that
       answers.txt gives the ports and the two offsets.  Exit 0 and "lab-1:
       all observations made", or 1 with what is missing or wrong."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labs import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "labs", "run", "lab-1")
SIZE = 200000
ANSWERS = """# Lab 1: watch a splice (docs/labs/lab-1.md).  Read client.pcap,
# backend.pcap and proxy.log, fill in each line (decimal), then run
#   make lab-1-check
# Q1. The client's TCP port (its connection to the VIP, 10.0.0.1:80):
client_port =
# Q2. The proxy's TCP port on its connection to the backend (10.0.0.11:8080):
backend_local_port =
# Q3. The number to add (modulo 2^32) to the sequence number of a byte the
#     backend sent to get that byte's sequence number on the client's side:
offset_s2c =
# Q4. The number to add (modulo 2^32) to the sequence number of a byte the
#     client sent, after the splice, to get it on the backend's side:
offset_c2s =
"""
# tcpdump -n -tt -S: "T IP A.a > B.b: Flags [.], seq S:E, ack N, ..., length L"
SEG = re.compile(r"^(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\](?:, seq (\d+)(?::(\d+))?)?"
                 r"(?:, ack (\d+))?.*length (\d+)")
SPLICE = re.compile(r"splice id=\d+ client=(\S+):(\d+) vip=\S+ local=(\S+):(\d+) backend=(\S+):(\d+) "
                    r"c\.rcv_nxt=(\d+) c\.snd_nxt=(\d+) s\.snd_nxt=(\d+) s\.rcv_nxt=(\d+)")
M32 = 1 << 32


def segments(pcap):
    """[(t, src ip, src port, dst ip, dst port, flags, seq, end, length)] of
    the TCP segments in 'pcap' (absolute sequence numbers)."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", "-S", "tcp"], capture_output=True, text=True)
    segs = []
    for line in out.stdout.splitlines():
        m = SEG.match(line)
        if m:
            t, sip, sp, dip, dp, flags, seq, end, _, length = m.groups()
            segs.append((float(t), sip, int(sp), dip, int(dp), flags, int(seq) if seq else None,
                         int(end) if end else None, int(length)))
    return segs


def truth(folder):
    """What the run shows: {"client_port", "backend_local_port", "offset_s2c",
    "offset_c2s", "checked"}; raises ValueError naming what is missing."""
    for f in ("client.pcap", "backend.pcap", "proxy.log"):
        if not os.path.exists(os.path.join(folder, f)):
            raise ValueError(f"no {f} in {folder}: run make lab-1 first")
    with open(os.path.join(folder, "proxy.log")) as f:
        spl = [m for m in map(SPLICE.search, f) if m]
    if len(spl) != 1:
        raise ValueError(f"proxy.log has {len(spl)} splice lines, not one: the connection was not spliced once")
    cip, cport, lip, lport, bip, bport, c_rcv, c_snd, s_snd, s_rcv = spl[0].groups()
    cport, lport, bport = int(cport), int(lport), int(bport)
    client = [s for s in segments(os.path.join(folder, "client.pcap")) if s[4] == cport or s[2] == cport]
    backend = [s for s in segments(os.path.join(folder, "backend.pcap")) if s[2] == lport or s[4] == lport]
    if not client:
        raise ValueError(f"client.pcap has no segment of port {cport}, the spliced client")
    if not backend:
        raise ValueError(f"backend.pcap has no segment of port {lport}, the proxy's end of the splice")
    s2c, c2s = (int(c_snd) - int(s_rcv)) % M32, (int(s_snd) - int(c_rcv)) % M32
    # Every byte the backend sent reaches the client at seq + s2c, as many.
    got = {}
    for s in client:
        if s[2] == 80 and s[8] > 0:
            got[s[6]] = max(got.get(s[6], 0), s[8])
    sent = [(s[6], s[8]) for s in backend if s[2] == bport and s[8] > 0]
    if sum(n for _, n in sent) < SIZE:
        raise ValueError(f"backend.pcap holds {sum(n for _, n in sent)} response bytes, fewer than {SIZE}")
    missing = [(seq, n) for seq, n in sent if got.get((seq + s2c) % M32, 0) < n]
    if missing:
        raise ValueError(f"{len(missing)} of the backend's {len(sent)} data segments are not in client.pcap at "
                         f"their sequence number + {s2c} (first: seq {missing[0][0]})")
    # And what the client sends after its request (ACKs, its FIN) reaches
    # the backend at seq + c2s.
    theirs = {s[6] for s in backend if s[2] == lport and s[6] is not None}
    after = [s[6] for s in client if s[4] == 80 and s[6] is not None and s[6] == int(c_rcv)]
    if not after or (after[0] + c2s) % M32 not in theirs:
        raise ValueError(f"the client's segments after the splice (seq {c_rcv}) are not in backend.pcap at "
                         f"seq + {c2s}")
    return {"client_port": cport, "backend_local_port": lport, "offset_s2c": s2c, "offset_c2s": c2s,
            "checked": len(sent)}


def check(folder):
    def shown(f):
        t = truth(f)
        print(f"lab-1: {t.pop('checked')} data segments of the backend's reached the client at one offset")
        return t
    def modulo(v):
        try:
            return int(v) % M32
        except ValueError:
            return v
    return common.check("lab-1", folder, shown, "a splice", normalize={"offset_s2c": modulo, "offset_c2s": modulo})


def run(folder):
    from emul.shaping import wait_until
    from emul.stack import Stack
    from emul.testbed import Testbed, pcap_count
    from topologies.lan import LanTopo
    with common.fresh("lab-1", folder) as scratch, Testbed(LanTopo(), scratch.path) as tb:
        work = scratch.path
        # At the request: a splice at the SYN has no offsets to find.
        stack = Stack(tb, work, proxy_args=["--splice-at", "request"]).start()
        caps = [tb.capture("c1", "client", bpf_filter="tcp port 80", snaplen=96),
                tb.capture("primary", "backend", bpf_filter="tcp port 8080", snaplen=96)]
        url = f"http://{stack.vip}/static/{SIZE}.jpg?seed=7"
        out = tb["c1"].cmd(f"curl -sf -o /dev/null -w '%{{size_download}}' '{url}'")
        # curl's FIN is the client's one segment after the splice that
        # tcpdump prints with a sequence number: stopped before it passed
        # the backend's capture, the run would show no such segment.
        fin = "tcp[tcpflags] & tcp-fin != 0"
        wait_until(lambda: pcap_count(caps[0][1], f"dst port 80 and {fin}") >= 1
                   and pcap_count(caps[1][1], f"dst port 8080 and {fin}") >= 1, 5, 0.05)
        for d, _ in caps:
            tb.stop_capture(d)
        if out.strip() != str(SIZE):
            raise SystemExit(f"lab-1: the download failed ({out.strip()!r}); see {work}")
        for (_, path), name in zip(caps, ("client.pcap", "backend.pcap")):
            shutil.copy(path, os.path.join(folder, name))
        with open(os.path.join(folder, "proxy.log"), "w") as f:
            f.write(stack.log("proxy"))
        print(f"lab-1: c1 downloaded {SIZE} bytes through {stack.vip}")
        common.offer_cli(tb, "the stack running (try: c1 curl -s http://10.0.0.1/health)")
        stack.stop()
    common.hand_over("lab-1", folder, ANSWERS)


def main():
    return common.main(__doc__, run, check, RUN)


if __name__ == "__main__":
    sys.exit(main())
