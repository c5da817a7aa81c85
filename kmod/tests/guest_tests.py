#!/usr/bin/python3
"""kmod tests, run as root inside Debian's kernel booted by kmod/guest/run.py
(make kmod-test): loads build/kmod/rs_logmod.ko and checks it from outside,
through its device and the traffic it sees.  Two network namespaces joined
by a veth pair stand for a client and the logger's side; the module hooks
the server end (ingress: client -> VIP, egress: VIP -> client), as the
logger's mirror port sees both directions.

Checked: the module loads and unloads cleanly (no oops or warning in the
kernel log); a fast transfer both ways is captured with no loss (every
payload byte, in order, per direction, and the counters agree); a ring too
small for what comes counts its drops and never overruns the reader; bad
configurations are refused; the module cannot be unloaded while a reader
holds the device, and can once a reader is SIGKILLed; an interface that
goes away ends the capture (poll says HUP).  Prints 'N passed, N failed'."""
import ctypes
import fcntl
import mmap
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KO = os.path.join(ROOT, "build", "kmod", "rs_logmod.ko")
DEV = "/dev/rs_logmod"
HDR = 4096
VIP, PORT, CLIENT = "10.9.0.2", 8080, "10.9.0.1"

# kmod/logmod.h
CFG = struct.Struct("=16sIHHI")                       # ifname, vip, port, flags, ring_bytes
RING = struct.Struct("=QQQQQII")                      # head, tail, records, drops, bytes, size, pad
REC = struct.Struct("=IIIIQ")                         # len, caplen, flags, pad, ts_ns
EGRESS, PAD = 1, 1
START = (1 << 30) | (CFG.size << 16) | (ord("r") << 8) | 1    # _IOW('r', 1, cfg)


def sh(cmd, check=True):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{cmd}: {r.returncode} {r.stderr.strip()}")
    return r.stdout


def netns_setup():
    sh("ip netns add cli; ip netns add srv")
    sh("ip link add va netns cli type veth peer name vb netns srv")
    sh(f"ip -n cli addr add {CLIENT}/24 dev va; ip -n cli link set va up; ip -n cli link set lo up")
    sh(f"ip -n srv addr add {VIP}/24 dev vb; ip -n srv link set vb up; ip -n srv link set lo up")


def netns_teardown():
    sh("ip netns del cli; ip netns del srv", check=False)


def setns(name):
    """Moves the calling thread into network namespace 'name'."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:       # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class Capture:
    """One open of the device: START, the mapped ring, its records."""

    def __init__(self, ifname="vb", ring=1 << 22, flags=EGRESS):
        self.fd = os.open(DEV, os.O_RDWR)
        fcntl.ioctl(self.fd, START, CFG.pack(ifname.encode(), socket_aton(VIP), socket.htons(PORT), flags, ring))
        self.size = ring
        self.map = mmap.mmap(self.fd, HDR + ring, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def hdr(self):
        head, tail, records, drops, nbytes, size, _ = RING.unpack_from(self.map, 0)
        return {"head": head, "tail": tail, "records": records, "drops": drops, "bytes": nbytes, "size": size}

    def records(self):
        """Reads and consumes every record: yields the IPv4 packets."""
        h = self.hdr()
        tail = h["tail"]
        while tail < h["head"]:
            off = HDR + tail % self.size
            ln, caplen, flags, _, _ = REC.unpack_from(self.map, off)
            if not flags & PAD:
                yield bytes(self.map[off + REC.size: off + REC.size + caplen])
            tail += ln
        struct.pack_into("=Q", self.map, 8, tail)

    def close(self):
        self.map.close()
        os.close(self.fd)


def socket_aton(ip):
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def payloads(packets):
    """Per direction ('up': to the VIP, 'down': from it) the TCP payload
    bytes in sequence order (a retransmission overwrites, never adds)."""
    out = {"up": {}, "down": {}}
    for p in packets:
        ihl = (p[0] & 15) * 4
        src, dst = socket.inet_ntoa(p[12:16]), socket.inet_ntoa(p[16:20])
        sport, dport, seq = struct.unpack("!HHI", p[ihl:ihl + 8])
        doff = (p[ihl + 12] >> 4) * 4
        data = p[ihl + doff:]
        d = "up" if dst == VIP and dport == PORT else "down"
        if data:
            out[d][seq] = data
    joined = {}
    for d, segs in out.items():
        buf, nxt = bytearray(), None
        for seq in sorted(segs):
            data = segs[seq]
            if nxt is not None and seq > nxt:
                break       # a hole
            if nxt is None or seq + len(data) > nxt:
                buf += data[(nxt - seq) if nxt is not None and nxt > seq else 0:]
                nxt = seq + len(data)
        joined[d] = bytes(buf)
    return joined


def listen_vip():
    """A listening socket on VIP:PORT in namespace 'srv' (the calling
    thread moves there)."""
    setns("srv")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((VIP, PORT))
    ls.listen(1)
    return ls


def transfer(nbytes_up, nbytes_down):
    """A server in 'srv' reads nbytes_up and answers nbytes_down; a client in
    'cli' sends and reads.  Returns the two bodies (what was sent)."""
    up = bytes((i * 7 + 3) % 251 for i in range(nbytes_up))
    down = bytes((i * 13 + 5) % 241 for i in range(nbytes_down))
    ready = threading.Event()
    err = []

    def server():
        try:
            ls = listen_vip()
            ready.set()
            c, _ = ls.accept()
            got = 0
            while got < nbytes_up:
                d = c.recv(1 << 16)
                if not d:
                    break
                got += len(d)
            c.sendall(down)
            c.close()
            ls.close()
        except Exception as e:       # noqa: BLE001
            err.append(e)
            ready.set()

    t = threading.Thread(target=server)
    t.start()
    ready.wait(10)
    setns("cli")
    s = socket.create_connection((VIP, PORT), timeout=30)
    s.sendall(up)
    got = bytearray()
    while len(got) < nbytes_down:
        d = s.recv(1 << 16)
        if not d:
            break
        got += d
    s.close()
    t.join(30)
    if err:
        raise err[0]
    assert bytes(got) == down, "the transfer itself failed"
    return up, down


# ---- the tests ---------------------------------------------------------------

def test_load():
    sh("modprobe veth")         # the guest's init has no modprobe for the kernel to call
    sh(f"insmod {KO}")
    assert os.path.exists(DEV), "no /dev/rs_logmod"
    assert "rs_logmod" in sh("lsmod")


def test_bad_configurations():
    netns_setup()
    try:
        setns("srv")
        for ring, ifname, want in ((1 << 22 | 1, "vb", 22), (1 << 10, "vb", 22), (1 << 22, "nonesuch", 19)):
            fd = os.open(DEV, os.O_RDWR)
            try:
                fcntl.ioctl(fd, START, CFG.pack(ifname.encode(), socket_aton(VIP), socket.htons(PORT), 0, ring))
                raise AssertionError(f"ring={ring} ifname={ifname} accepted")
            except OSError as e:
                assert e.errno == want, (ring, ifname, e)
            finally:
                os.close(fd)
        c = Capture()
        try:
            fcntl.ioctl(c.fd, START, CFG.pack(b"vb", socket_aton(VIP), socket.htons(PORT), 0, 1 << 20))
            raise AssertionError("a second START accepted")
        except OSError as e:
            assert e.errno == 16, e      # EBUSY
        c.close()
    finally:
        netns_teardown()


def test_fast_transfer_no_loss():
    netns_setup()
    try:
        setns("srv")
        c = Capture(ring=1 << 25)
        packets, stop = [], threading.Event()

        def reader():
            poller = select.poll()
            poller.register(c.fd, select.POLLIN)
            while not stop.is_set():
                poller.poll(50)
                packets.extend(c.records())
            packets.extend(c.records())
        t = threading.Thread(target=reader)
        t.start()
        t0 = time.monotonic()
        up, down = transfer(4 << 20, 8 << 20)
        took = time.monotonic() - t0
        time.sleep(0.2)
        stop.set()
        t.join(10)
        h = c.hdr()
        got = payloads(packets)
        print(f"  captured {h['records']} segments, {h['bytes']} bytes in {took:.2f} s, drops={h['drops']}")
        assert h["drops"] == 0, h
        assert h["records"] == len(packets), (h, len(packets))
        assert got["up"] == up, f"up: {len(got['up'])} of {len(up)} bytes"
        assert got["down"] == down, f"down: {len(got['down'])} of {len(down)} bytes"
        c.close()
    finally:
        netns_teardown()


def test_small_ring_counts_drops():
    netns_setup()
    try:
        setns("srv")
        c = Capture(ring=1 << 16)        # 64 KiB, never read during the transfer
        transfer(1 << 20, 2 << 20)
        h = c.hdr()
        print(f"  64 KiB ring unread: records={h['records']} drops={h['drops']} head={h['head']}")
        assert h["drops"] > 0 and h["records"] > 0, h
        assert h["head"] - h["tail"] <= h["size"], h
        n = sum(1 for _ in c.records())
        assert n == h["records"], (n, h)
        c.close()
    finally:
        netns_teardown()


def test_no_unload_while_held_then_reader_killed():
    netns_setup()
    try:
        # A reader in a child process holds the device and its mapping.
        r = subprocess.Popen([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from guest_tests import Capture, setns
import time
setns("srv"); c = Capture(); print("holding", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
        assert r.stdout.readline().strip() == "holding"
        rc = subprocess.run(["rmmod", "rs_logmod"], capture_output=True).returncode
        assert rc != 0, "unloaded while a reader held it"
        r.send_signal(signal.SIGKILL)
        r.wait()
        sh("rmmod rs_logmod")
        sh(f"insmod {KO}")
    finally:
        netns_teardown()


def test_interface_gone_ends_capture():
    netns_setup()
    setns("srv")
    c = Capture()
    sh("ip netns del cli; ip netns del srv", check=False)   # the veth pair goes with them
    poller = select.poll()
    poller.register(c.fd, select.POLLIN)
    end = time.monotonic() + 10
    events = 0
    while time.monotonic() < end and not events & select.POLLHUP:
        events = dict(poller.poll(100)).get(c.fd, 0)
    assert events & select.POLLHUP, events
    c.close()


def test_logger_captures_through_logmod():
    """rs-logger --capture kmod beside rs-logger --capture pcap on the same
    interface, a keep-alive client's transactions through rs-app: both
    log the same transactions, byte for byte the same request and response
    ranges, and the kmod one dropped nothing."""
    netns_setup()
    procs = []
    try:
        key = "/tmp/rs-key.hex"
        with open(key, "w") as f:
            f.write("ab" * 32 + "\n")
        os.chmod(key, 0o600)
        build = os.path.join(ROOT, "build")

        def start(argv, log):
            p = subprocess.Popen(["ip", "netns", "exec", "srv"] + argv, stdout=open(log + ".out", "w"),
                                 stderr=open(log, "w"))
            procs.append(p)
            return p
        start([f"{build}/rs-app", "--listen", f"{VIP}:{PORT}", "--id", "guest"], "/tmp/app.err")
        logs = {}
        for cap, base in (("kmod", 7071), ("pcap", 7081)):
            logs[cap] = f"/tmp/logger-{cap}.err"
            start([f"{build}/rs-logger", "--iface", "vb", "--vip", f"{VIP}:{PORT}", "--key", key, "--capture", cap,
                   "--listen", f"127.0.0.1:{base}", "--resend", f"127.0.0.1:{base + 1}"], logs[cap])
        end = time.monotonic() + 20
        while time.monotonic() < end and not all("start vip=" in open(l).read() for l in logs.values()):
            time.sleep(0.1)
        time.sleep(0.5)
        setns("cli")
        for conn in range(2):
            s = socket.create_connection((VIP, PORT), timeout=20)
            f = s.makefile("rb")
            reqs = [f"GET /static/200000?seed={conn * 10 + i} HTTP/1.1\r\nHost: x\r\n\r\n" for i in range(5)]
            reqs += ["POST /counter HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"] * 2
            for r in reqs:
                s.sendall(r.encode())
                status = f.readline()
                assert b" 200 " in status, status
                length = 0
                while True:
                    line = f.readline()
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line in (b"\r\n", b""):
                        break
                f.read(length)
            s.close()
        time.sleep(1.0)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(10)
        txns = {}
        for cap, log in logs.items():
            text = open(log).read()
            txns[cap] = sorted(re.findall(r"txn-logged (id=\S+ status=\d+ req=\S+ resp=\S+)", text))
        print(f"  transactions logged: kmod {len(txns['kmod'])}, pcap {len(txns['pcap'])}")
        assert len(txns["kmod"]) == 14, txns["kmod"]
        assert txns["kmod"] == txns["pcap"], (txns["kmod"], txns["pcap"])
        stats = re.findall(r"^stats received=(\d+) dropped=(\d+)", open(logs["kmod"] + ".out").read(), re.M)
        assert stats and int(stats[-1][0]) > 0 and stats[-1][1] == "0", stats
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        netns_teardown()


def test_unload_clean():
    sh("rmmod rs_logmod")
    assert not os.path.exists(DEV)
    log = sh("dmesg")
    bad = [l for l in log.splitlines() if any(w in l for w in ("BUG", "WARNING", "Oops", "refcount", "leak"))]
    assert not bad, "\n".join(bad)


TESTS = [test_load, test_bad_configurations, test_fast_transfer_no_loss, test_small_ring_counts_drops,
         test_no_unload_while_held_then_reader_killed, test_interface_gone_ends_capture,
         test_logger_captures_through_logmod, test_unload_clean]


def main():
    passed = failed = 0
    for t in TESTS:
        try:
            # Each test in a thread of its own: setns moves only that thread.
            res = []
            th = threading.Thread(target=lambda: res.append(run_one(t)))
            th.start()
            th.join(300)
            ok = res == [True]
        except Exception:       # noqa: BLE001
            ok = False
        print(f"{'ok  ' if ok else 'FAIL'} {t.__name__}", flush=True)
        passed += ok
        failed += not ok
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(0 if failed == 0 else 1)


def run_one(t):
    try:
        t()
        return True
    except Exception:       # noqa: BLE001
        traceback.print_exc()
        return False


if __name__ == "__main__":
    main()
