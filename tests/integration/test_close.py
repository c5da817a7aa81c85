"""Responses that end the connection ("Connection: close": the backend
closes first) through the whole stack, back to back: each is complete and
byte-exact, no RST from the VIP, no failover (the backend's FIN is the
application's own, which the logger confirms), and none waits for a
retransmission (the FIN the guard held is released at once) — with the
machine idle and with busy loops on it, with the logger's table full of
connections that ended; and a crash of the primary in the middle of it is
still masked, as is one after the client half-closed its side."""
import json
import os
import random
import subprocess
import tempfile
import time
import unittest

from emul.places import APP_PORT, VIP_PORT
from emul.stack import Stack
from emul.testbed import Testbed, leftovers, pcap_count
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo

PROXY, PRIMARY = SERVERS["proxy"], SERVERS["primary"]
PATH = "/static/1000"
SLOW = "/slow?bytes=200000&chunk=8000&delay=20ms"     # 25 chunks, ~0.5 s: a crash lands mid-response

# One connection per request for 'dur' seconds; each response read to EOF
# and compared with the one the backend gives directly.  Prints a JSON line.
LOOP = r'''
import json, socket, sys, time
vip, direct, path, dur = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

def get(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    t0 = time.monotonic()
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        got = b""
        while True:
            d = s.recv(65536)
            if not d:
                return got, time.monotonic() - t0
            got += d
    finally:
        s.close()

want, _ = get(direct)
ok, bad, times, errors = 0, 0, [], {}
end = time.monotonic() + dur
while time.monotonic() < end:
    try:
        got, t = get(vip)
        times.append(t)
        if got == want:
            ok += 1
        else:
            bad += 1
    except Exception as e:
        k = type(e).__name__
        errors[k] = errors.get(k, 0) + 1
times.sort()
print(json.dumps({"ok": ok, "bad": bad, "errors": errors, "want_len": len(want),
                  "p90_ms": 1e3 * times[int(len(times) * 0.9)] if times else None}))
'''


@needs_root
class TestConnectionClose(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-close-")
        self.dir = self.tmp.name
        self.tb = Testbed(LanTopo(), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        # A small connection table: the connections lingering after their
        # end fill it within the test, and must give way to new ones.
        self.stack = Stack(self.tb, self.dir, logger_args=("--max-conns", "256")).start()
        self.script = os.path.join(self.dir, "loop.py")
        with open(self.script, "w") as f:
            f.write(LOOP)

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def loop(self, dur=3.0, path=PATH, min_ok=20, crash_after=None):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.tb.start("c1", "loop", ["/usr/bin/python3", self.script, f"{PROXY}:{VIP_PORT}",
                                         f"{PRIMARY}:{APP_PORT}", path, str(dur)])
        if crash_after is not None:
            self.tb.crash_at(crash_after, self.stack.kill_primary)
        d.popen.wait(dur + 60)
        self.tb.stop_capture(cap)
        lines = [l for l in d.output().splitlines() if l.startswith("{")]
        if not lines:
            with open(d.err) as f:
                self.fail(d.output() + f.read())
        r = json.loads(lines[-1])
        proxy_log = self.stack.log("proxy")[-3000:]
        self.assertGreater(r["want_len"], 1000)
        self.assertGreaterEqual(r["ok"], min_ok, r)
        self.assertEqual((r["bad"], r["errors"]), (0, {}), f"{r}\n{proxy_log}")
        self.assertEqual(pcap_count(pcap, f"src host {PROXY} and tcp[tcpflags] & tcp-rst != 0"), 0,
                         "the client saw a RST from the VIP")
        st = self.stack.stats("proxy")
        if crash_after is not None:
            self.assertEqual((st["unrecoverable"], st["resets_sent"]), ("0", "0"), f"{st}\n{proxy_log}")
            self.assertGreaterEqual(int(st["recovered"]), 1, f"{st}\n{proxy_log}")
            return r
        self.assertEqual((st["recovered"], st["unrecoverable"], st["resets_sent"]), ("0", "0", "0"),
                         f"{st}\n{proxy_log}")
        # The FIN the guard held goes out as soon as the logger confirms it:
        # no close waits for the backend's retransmission (200 ms at least).
        self.assertEqual(st["fins_released"], st["legit_closes"], st)
        # Confirmed by the logger's word (unasked, or its answer to the
        # proxy's CLOSE_ASK), or by a RECOVER when the word did not cover
        # the FIN; the logger's own count is the RECOVERs it judged meant.
        lg = self.stack.stats("logger")
        self.assertGreater(int(st["close_words"]), 0, st)
        # A question goes unanswered (50 ms) only while the logger gets no
        # core that long: a few at most, even with busy loops beside it.
        self.assertLessEqual(100 * int(st["close_words_late"]), int(st["legit_closes"]), st)
        self.assertEqual(int(st["legit_closes"]), int(st["close_words"]) + int(lg["legit_closes"]), f"{st}\n{lg}")
        self.assertLess(r["p90_ms"], 150, r)
        # More connections than the logger's table holds: those that ended
        # made room (freed at once when settled, else the one that ended
        # longest ago), and no new one went unlogged.
        self.assertGreater(int(lg["conns_total"]), 2 * 256, lg)
        self.assertGreater(int(lg["retired"]), 256, lg)
        self.assertEqual(lg["nl_limit"], "0", lg)
        return r

    def test_back_to_back(self):
        self.loop()

    def test_back_to_back_busy_machine(self):
        hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
        try:
            self.loop()
        finally:
            for h in hogs:
                h.kill()
                h.wait()

    def test_primary_crash_mid_response_masked(self):
        self.loop(path=SLOW, min_ok=3, crash_after=1.2)

    def test_half_closed_client_crash_masked(self):
        """A client that closes its side right after its last request
        (shutdown(SHUT_WR), on a connection spliced by its first one) and
        reads on: the primary killed mid-response must not end the response
        with a FIN from the VIP (the guard holds a backend's FIN even after
        the client's own, for the logger's word); the alternate finishes it."""
        script = os.path.join(self.dir, "half.py")
        with open(script, "w") as f:
            f.write(HALF)
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        ref = self.tb.start("c1", "ref", ["/usr/bin/python3", script, f"{PRIMARY}:{APP_PORT}", SLOW])
        ref.popen.wait(30)
        # The moment: within the ~0.5 s response, drawn from a seed the
        # failure message gives (RS_SEED= repeats it).
        seed = int(os.environ.get("RS_SEED", time.time_ns() % 1000000))
        at = 0.1 + random.Random(seed).random() * 0.3
        d = self.tb.start("c1", "half", ["/usr/bin/python3", script, f"{PROXY}:{VIP_PORT}", SLOW])
        self.tb.crash_at(at, self.stack.kill_primary)
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        want, got = json.loads(ref.output().strip()), json.loads(d.output().strip())
        self.assertGreater(want["len"], 200000, want)
        self.assertEqual(got, want, f"seed {seed}: crash at {at:.3f} s\n" + self.stack.log("proxy")[-3000:])
        self.assertEqual(pcap_count(pcap, f"src host {PROXY} and tcp[tcpflags] & tcp-rst != 0"), 0)
        st = self.stack.stats("proxy")
        self.assertEqual((st["recovered"], st["unrecoverable"]), ("1", "0"), st)


# One keep-alive GET, then the slow one with "Connection: close" and the
# client's side shut at once; prints the second response's length and digest.
HALF = r'''
import hashlib, json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(b"GET /static/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
first = b""
while b"\r\n\r\n" not in first or len(first.split(b"\r\n\r\n", 1)[1]) < 1000:
    first += s.recv(65536)
s.sendall(f"GET {sys.argv[2]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
print(json.dumps({"len": len(got), "sha": hashlib.sha256(got.split(b"\r\n\r\n", 1)[1]).hexdigest()}))
'''


if __name__ == "__main__":
    unittest.main()
