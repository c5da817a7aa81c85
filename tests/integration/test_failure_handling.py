"""Failure handling that never causes a failure (issue 12).  Faults come
from the harness, outside the component under test: SIGKILL at a seeded
random moment, a host's interfaces down, SIGSTOP (a hung backend), a link
cut with iptables.  Each test judges from outside: the client's own pcap
(no RST from the VIP it did not cause), the bytes it checked, the daemons'
logs and stats, and a time bound.

  - a backend dead at connect: the request goes to the alternate;
  - a crash while the first response is still relayed in user space;
  - a crash at a seeded random moment of a keep-alive sequence;
  - a hung backend (SIGSTOP) found by the stall detector and failed over;
  - the logger or the alternate unreachable during a recovery: a RST
    within 1 s, nothing hangs;
  - the logger restarted: connections it joined midway end with a RST on
    their next failure, new ones are masked, no update is lost;
  - the proxy restarted (SIGKILL, or SIGTERM's hand-over): its spliced
    connections are adopted and a later primary crash is still masked;
  - a partitioned primary (cut off from the logger only) is fenced: its
    late bytes are dropped, never delivered;
  - 200 connections mid-download fail over together, byte-exact, and the
    alternate is never declared failed.

Each case runs where rs-proxy splices by default, at the client's SYN
(RS_SPLICE_AT=request runs them all at the request); the connect windows
run both ways, and the relay's and the proxy's own descriptors' cases at
the request, theirs alone."""
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from emul.shaping import wait_until
from emul.places import APP_PORT, LOGGER_CTL, LOGGER_RESEND, PROXY_CTL, STATED_PORT, binary
from emul.stack import Stack
from emul.testbed import Testbed, file_contains, leftovers, pcap_count
from tests.integration.harness import SAME_PORT, needs_root
from topologies.lan import SERVERS, SPARE_HOST, LanTopo
from topologies.profiles import Profile

VIP_IP = SERVERS["proxy"]
SPARE_IP = SPARE_HOST["spare"]
SLOW = "/slow?bytes=400000&chunk=8000&delay=20ms"   # 50 chunks, ~1 s
RST_FROM_VIP = f"src host {VIP_IP} and tcp[tcpflags] & tcp-rst != 0"
SPLICED = r"\b(?:splice|syn-spliced) id="    # a splice made at the request, or at the SYN
SEED = int(os.environ.get("RS_TEST_SEED", "12"))


def rst_times(pcap):
    """Times (s, epoch) of the RSTs the VIP sent in 'pcap'."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt"] + RST_FROM_VIP.split(),
                         capture_output=True, text=True).stdout
    return [float(l.split()[0]) for l in out.splitlines() if l.strip()]


def kv(line):
    return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)


@needs_root
class Case(unittest.TestCase):
    profile = None
    clients = 1
    topo_args = {}
    stack_args = {}

    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-fh-")
        self.dir = self.tmp.name
        self.tb = Testbed(LanTopo(profile=self.profile, clients=self.clients, **self.topo_args),
                          os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.addCleanup(self.tb.__exit__, None, None, None)    # also when the stack fails to start
        self.stack = Stack(self.tb, self.dir, **self.stack_args).start()

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        if os.environ.get("RS_KEEP"):     # a directory to keep the run's logs and pcaps in
            shutil.copytree(self.dir, os.path.join(os.environ["RS_KEEP"], self.id()), dirs_exist_ok=True)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def cid(self, n=1):
        """rs-proxy's id (its log's id=) of the n-th connection it splices."""
        return self.stack.first_id() + n - 1

    @property
    def at_syn(self):
        return self.stack.splice_at() == "syn"

    def client(self, trace, host="c1", name="client", extra=()):
        path = os.path.join(self.dir, f"{name}.trace")
        with open(path, "w") as f:
            f.write(trace)
        out = os.path.join(self.dir, f"{name}.csv")
        d = self.tb.start(host, name, [binary("rs-client"), "--server", self.stack.vip, "--trace", path,
                                       "--csv", out, "--timeout", "10s"] + list(extra))
        d.csv = out
        return d

    def slow_stream(self):
        """A client (pcap on) that updates, fetches SLOW, updates: returns
        (client, pcap) once the first update was answered."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10),
                        open(d.err).read()[-2000:] + "\n".join(
                            l for l in self.stack.log("proxy").splitlines() if "10.0.1.1:" in l)[-3000:])
        d.cap = cap
        return d, pcap

    def rows(self, d):
        with open(d.csv) as f:
            return list(csv.DictReader(f))

    def assert_transparent(self, d, pcap):
        log = open(d.err).read()
        self.assertEqual(d.popen.returncode, 0, d.output() + log[-3000:] + self.stack.log("proxy")[-3000:])
        rows = self.rows(d)
        self.assertEqual({r["result"] for r in rows}, {"ok"})
        self.assertEqual(len({(r["connection"], r["local_port"]) for r in rows}),
                         len({r["connection"] for r in rows}), "a client had to reconnect")
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "the client got a RST from the VIP")


class TestBeforeTheSplice(Case):
    """The windows before a connection is spliced."""
    stack_args = {"dead_after": "5s"}   # only the connect path can see these failures

    def test_dead_host_at_connect_goes_to_alternate(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        self.stack.primary_down()
        t0 = time.monotonic()
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        "request GET /static/200000?seed=5\n  expect content seed=5\n")
        d.popen.wait(20)
        elapsed = time.monotonic() - t0
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        if self.at_syn:     # the client's SYN again: the sign (docs/recovery.md)
            self.assertRegex(log, r"syn-unanswered id=\d+ .*backend=10\.0\.0\.11:")
            self.assertRegex(log, rf"syn-spliced id=\d+ client=\S+ backend={SERVERS['alternate']}:")
        else:
            self.assertRegex(log, r"redispatch id=1 .*why=(stated-unreachable|connect-failed)")
            self.assertRegex(log, rf"connect id=1 client=\S+ backend={SERVERS['alternate']}:")
        self.assertRegex(log, r"failure backend_id=1 .*fenced")
        print(f"\nrequest to a dead host answered by the alternate in {elapsed * 1000:.0f} ms")
        self.assertLess(elapsed, 2.0)

    def test_dead_process_at_connect_goes_to_alternate(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        # No report and no heartbeat silence can reach the proxy in time:
        # the backend's rs-stated is stopped with its application dead.
        self.stack.d["stated-primary"].popen.send_signal(signal.SIGSTOP)
        try:
            self.stack.kill_primary()
            d = self.client("request POST /counter\n  expect contains \"counter=1\"\n")
            d.popen.wait(20)
        finally:
            self.stack.d["stated-primary"].popen.send_signal(signal.SIGCONT)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        self.assertRegex(self.stack.log("proxy"), r"syn-refused id=\d+ " if self.at_syn else r"redispatch id=1 ")

    # How a hung application is found at connect: with the default
    # --identity header nothing asks it anything before the request goes
    # out, so the stall detector finds it (--stall-after, 2 s).
    hung_why = "response-stall"

    def test_hung_application_at_connect_is_fenced(self):
        """A hung application: the request goes to the alternate, and the
        primary is fenced first, so it cannot wake up and serve the next
        client with a counter the alternate never saw (found by make
        fault-campaign)."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        app = self.stack.d["app-primary"].popen
        app.send_signal(signal.SIGSTOP)
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n")
        d.popen.wait(20)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        # At the SYN nothing asks it anything before the request, whatever --identity says.
        self.assertRegex(log, rf"failure backend_id=1 .*why={'response-stall' if self.at_syn else self.hung_why} .*fenced")
        self.assertRegex(log, rf"(connect|recovered) id={self.cid()} client=\S+ (backend|alternate)={SERVERS['alternate']}:")
        app.send_signal(signal.SIGCONT)
        self.assertTrue(wait_until(lambda: app.poll() is not None, 5), "the fenced application lives on")
        d = self.client("request POST /counter\n  expect contains \"counter=2\"\n", name="client2")
        d.popen.wait(20)
        self.assertEqual(d.popen.returncode, 0, d.output())

    def test_client_half_close(self):
        """A request then shutdown(SHUT_WR): the response still comes."""
        out = self.tb["c1"].cmd(
            f"{sys.executable} -c \"import socket;s=socket.create_connection(('%s',80));"
            "s.sendall(b'GET /static/5000?seed=1 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');"
            "s.shutdown(socket.SHUT_WR);d=b''\nwhile True:\n c=s.recv(65536)\n if not c: break\n d+=c\n"
            "print(len(d.partition(b'\\r\\n\\r\\n')[2]), d.split(b' ')[1].decode())\"" % VIP_IP)
        self.assertEqual(out.split()[-2:], ["5000", "200"], out + self.stack.log("proxy")[-2000:])
        # Its FIN read by the relay, or, spliced already (at the SYN; at the
        # request when the splice came first), passed like any segment.
        self.assertRegex(self.stack.log("proxy"), rf"half-close id={self.cid(1)} |fin id={self.cid(1)} from=10\.0\.1\.1:")



class TestBeforeTheSpliceRequest(TestBeforeTheSplice):
    """The same windows spliced at the request: the proxy connects, and a
    failed connect sends the request to the alternate."""
    stack_args = {"dead_after": "5s", "proxy_args": ["--splice-at", "request"]}


class TestBeforeTheSpliceMapped(Case):
    """With --identity map the proxy asks the backend's rs-stated first
    (CONN_MAP): a hung application leaves it unanswered, and the request
    goes to the alternate before anything was sent."""
    stack_args = {"dead_after": "5s", "proxy_args": ["--identity", "map", "--splice-at", "request"]}
    hung_why = "stated-unreachable"
    test_hung_application_at_connect_is_fenced = TestBeforeTheSplice.test_hung_application_at_connect_is_fenced

HALF_CLOSE_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80))
s.sendall(b"GET /slow?bytes=400000&chunk=8000&delay=20ms HTTP/1.1\r\nHost: x\r\n\r\n")
s.shutdown(socket.SHUT_WR)
s.settimeout(10)
d = b""
try:
    while True:
        c = s.recv(65536)
        if not c:
            break
        d += c
except Exception as e:
    print("error", e, flush=True)
    sys.exit(1)
head, _, body = d.partition(b"\r\n\r\n")
n, i = 0, 0
while True:                 # chunked: sum the chunk sizes
    j = body.index(b"\r\n", i)
    k = int(body[i:j], 16)
    if k == 0:
        break
    n += k
    i = j + 2 + k + 2
print("status", head.split()[1].decode(), "body", n, "eof", flush=True)
"""


class TestHalfClosed(Case):
    """A client that sent its request and then shut its side down
    (shutdown(SHUT_WR)), reading the response to the end: the proxy relays
    it to the end in user space when the FIN has come by the time it would
    splice (it reads the request at accept; the FIN follows within
    microseconds), else the FIN passes the splice; when the primary dies
    meanwhile, the alternate gets the request and then the client's FIN."""

    def test_half_closed_client_fails_over(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.tb.start("c1", "halfclose", [sys.executable, "-c", HALF_CLOSE_CLIENT, VIP_IP])
        either = rf"half-close id=1 |fin id={self.cid()} from=10\.0\.1\."     # relayed, or its FIN passed the splice
        self.assertTrue(wait_until(lambda: re.search(either, self.stack.log("proxy")), 10), self.stack.log("proxy"))
        time.sleep(0.3)
        self.stack.kill_primary()
        d.popen.wait(20)
        self.tb.stop_capture(cap)
        log = self.stack.log("proxy")
        self.assertIn("status 200 body 400000 eof", d.output(), open(d.err).read() + log[-3000:])
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "the client got a RST from the VIP")
        self.assertRegex(log, rf"recovered id={self.cid()} ")


class TestFirstResponse(Case):
    """A crash while the first response of a fresh connection is still
    relayed in user space (the proxy relays the first 2 s here; over a
    60 ms path the logger also has bytes to resend)."""
    profile = Profile("wan", 60, 0, 0)
    stack_args = {"proxy_args": ["--relay-first", "2s", "--splice-at", "request"]}    # a relay: the request path's

    def test_crash_mid_first_response(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request GET /static/20000000?seed=3\n  expect length 20000000\n  expect content seed=3\n"
                        "request POST /counter\n  expect contains \"counter=1\"\n")
        self.assertTrue(wait_until(lambda: "connect id=1 " in self.stack.log("proxy"), 10))
        time.sleep(0.4)
        self.assertNotIn("splice id=1", self.stack.log("proxy"), "spliced too early for this test")
        self.stack.kill_primary()
        d.popen.wait(90)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        self.assertIn("detach id=1 ", log)
        self.assertRegex(log, rf"recovered id={self.cid()} ")


class TestRandomMoment(Case):
    """SIGKILL of the primary at a seeded random moment of a keep-alive
    sequence of updates, static files and a slow stream."""

    def test_random_crash_keepalive(self):
        rng = random.Random(SEED)
        delay = rng.uniform(0.05, 1.2)
        print(f"\nseed={SEED} crash {delay * 1000:.0f} ms after the client starts")
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        "request GET /static/3000000?seed=1\n  expect content seed=1\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=3\"\n"
                        "request GET /static/2000000?seed=2\n  expect content seed=2\n"
                        "request POST /counter\n  expect contains \"counter=4\"\n")
        time.sleep(delay)
        self.stack.kill_primary()
        d.popen.wait(60)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        self.assertNotIn("unrecoverable", self.stack.log("proxy"))


class TestAfterFailover(Case):
    """What follows a failover: the client's close costs no RTO and leaks no
    RST; the survivor knows at once that it is unprotected (rs-ctl status,
    synchronous updates answered without waiting for the dead peer); the
    failed backend is readmitted after its rejoin, as the survivor's
    standby, and masks the survivor's crash."""
    stack_args = {"readmit": True}

    def ctl(self, *args):
        out = self.tb["logger"].cmd(" ".join([binary("rs-ctl"), "--to", f"{VIP_IP}:{PROXY_CTL}", "--key", self.stack.key]
                                             + list(args)) + " 2>&1; echo rc=$?")
        return out

    def status(self):
        return {int(m.group(1)): kv("x " + m.group(2)) for m in
                re.finditer(r"^backend id=(\d+) (.*?)\r?$", self.ctl("status"), re.M)}

    def test_close_status_degraded_readmit(self):
        st = self.status()
        self.assertEqual((st[1]["role"], st[1]["fenced"], st[1]["protected"]), ("primary", "0", "1"), st)
        self.assertEqual((st[2]["role"], st[2]["fenced"]), ("alternate", "0"), st)
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request GET /token\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10))
        time.sleep(0.3)
        self.stack.kill_primary()
        d.popen.wait(30)
        time.sleep(2.5)     # past the proxy's linger: a stray RST would be in the pcap now
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        # The close: the VIP's FIN answers the client's at once.
        fins = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", "tcp[tcpflags] & tcp-fin != 0"],
                              capture_output=True, text=True).stdout.splitlines()
        t_client = [float(l.split()[0]) for l in fins if f" > {VIP_IP}.80:" in l]
        t_vip = [float(l.split()[0]) for l in fins if f" {VIP_IP}.80 > " in l]
        self.assertTrue(t_client and t_vip, fins)
        print(f"\nclose after the failover: the VIP's FIN {abs(t_vip[0] - t_client[0]) * 1000:.1f} ms after the client's")
        self.assertLess(abs(t_vip[0] - t_client[0]), 0.1)
        # The survivor is unprotected, and knows it.
        st = self.status()
        self.assertEqual((st[1]["fenced"], st[2]["fenced"], st[2]["protected"]), ("1", "0", "0"), st)
        self.assertIn("fence backend=1 fenced=1 (the peer)", self.stack.log("stated-alternate"))
        t0 = time.monotonic()
        out = self.tb["c1"].cmd(f"curl -s -m 5 http://{VIP_IP}/token")
        took = time.monotonic() - t0
        self.assertIn("token=", out)
        print(f"a synchronous update on the lone alternate: {took * 1000:.0f} ms (relay timeout 1 s)")
        self.assertLess(took, 0.5)
        # Rejoin: readmit, then the application comes back.  The primary
        # rejoins as the standby at the end of the chain (its state is stale;
        # the survivor serves on), brought up to date by the survivor's
        # snapshot: the counter's value and how far each connection went.
        self.assertIn("status=0", self.ctl("readmit", "--backend-id", "1"))
        self.assertTrue(wait_until(lambda: "fence backend=1 fenced=0" in self.stack.log("stated-primary"), 5))
        self.assertTrue(wait_until(lambda: "snapshot to backend=" in self.stack.log("stated-alternate"), 5),
                        self.stack.log("stated-alternate")[-2000:])
        self.stack.start_app("primary", "app-primary-2")
        self.assertTrue(wait_until(lambda: "snapshot applied" in self.stack.log("stated-primary"), 5),
                        self.stack.log("stated-primary")[-2000:])
        self.assertIn("state-apply 0.0.0.0:0#0 counter=2", self.stack.log("app-primary"))
        st = self.status()
        self.assertEqual((st[1]["role"], st[1]["fenced"]), ("alternate", "0"), st)
        self.assertEqual((st[2]["role"], st[2]["protected"]), ("primary", "1"), st)
        # Protected again: the survivor crashes mid-response, the readmitted
        # primary takes the connection over, the counter exact.
        cap, pcap = self.tb.capture("c1", "c1-2", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=3\"\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=4\"\n", name="client-2")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10))
        time.sleep(0.3)
        self.tb.kill(self.stack.d["app-alternate"])
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        self.assertRegex(self.stack.log("proxy"), rf"recovered id=\d+ client=\S+ .*alternate={SERVERS['primary']}")


class TestHungBackend(Case):
    """SIGSTOP of the primary's application mid-response: it heartbeats on
    (its rs-stated is fine) but owes a response; the logger's stall
    detector finds it within --stall-after."""
    stack_args = {"logger_args": ["--stall-after", "300ms"]}

    def test_hang_detected_and_failed_over(self):
        d, pcap = self.slow_stream()
        time.sleep(0.3)
        t_stop = time.time()
        self.stack.d["app-primary"].popen.send_signal(signal.SIGSTOP)
        d.popen.wait(30)
        self.tb.stop_capture(d.cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        m = re.search(r"^(\d+\.\d+) rs-proxy failure backend_id=1 .*why=response-stall", log, re.M)
        self.assertIsNotNone(m, log[-3000:])
        detect = float(m.group(1)) - t_stop
        print(f"\nhung backend detected {detect * 1000:.0f} ms after SIGSTOP (bound 300 ms + chunk gap)")
        self.assertLess(detect, 0.3 + 0.02 + 0.1)
        self.assertRegex(log, rf"recovered id={self.cid()} ")

    def test_hang_mid_upload_detected_and_failed_over(self):
        """Hung while a large request body comes in: it owes no response
        yet, but it stops reading, so its ACK stops moving (its kernel
        still answers the client's window probes).  Found by make
        fault-campaign: the client used to time out after 10 s."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        "request POST /upload?seed=3\n  fill seed=3 length=48M\n"
                        "  expect contains \"upload=50331648 counter=2\"\n")
        d.cap = cap
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10))
        time.sleep(0.05)
        t_stop = time.time()
        self.stack.d["app-primary"].popen.send_signal(signal.SIGSTOP)
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        log = self.stack.log("proxy")
        m = re.search(r"^(\d+\.\d+) rs-proxy failure backend_id=1 .*why=not-reading", log, re.M)
        self.assertIsNotNone(m, log[-3000:] + self.stack.log("logger")[-3000:])
        self.assert_transparent(d, pcap)
        print(f"\nbackend that stopped reading detected {(float(m.group(1)) - t_stop) * 1000:.0f} ms after SIGSTOP")
        self.assertRegex(log, rf"recovered id={self.cid()} ")


class TestUnreachableDuringRecovery(Case):
    """Nothing hangs: a connection whose recovery cannot finish ends with a
    RST from the VIP within 1 s of the crash."""

    def crash_and_measure(self, prepare):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n"
                        f"request GET {SLOW}\n  expect content seed=0\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10))
        time.sleep(0.2)
        prepare()
        time.sleep(0.1)
        t_crash = time.time()
        self.stack.kill_primary()
        d.popen.wait(30)
        time.sleep(0.3)
        self.tb.stop_capture(cap)
        self.assertNotEqual(d.popen.returncode, 0)
        self.assertIn("reset", {r["result"] for r in self.rows(d)})
        rsts = rst_times(pcap)
        self.assertTrue(rsts, "no RST reached the client")
        print(f"\nRST at the client {(rsts[0] - t_crash) * 1000:.0f} ms after the crash")
        self.assertLess(rsts[0] - t_crash, 1.0)
        self.assertRegex(self.stack.log("proxy"), rf"unrecoverable id={self.cid()} ")
        self.assertRegex(self.stack.log("proxy"), rf"close id={self.cid()} .*reason=unrecoverable rst=1")

    def test_logger_down(self):
        self.crash_and_measure(lambda: self.tb.host_down("logger"))

    def test_alternate_down(self):
        self.crash_and_measure(lambda: self.tb.host_down("alternate"))


class TestLoggerRestart(Case):
    """The logger crashes mid-run and is restarted (issue 15): a restarted
    logger cannot recover a connection it joined midway (it lacks its
    history), so such a connection ends with a RST, counted, on its
    backend's next failure; a connection opened after the restart is
    logged whole and masked.  Meanwhile no update is lost: with the logger
    gone the alternate applies every state as it arrives."""
    clients = 2

    def test_new_connections_masked_old_ones_end_cleanly(self):
        cap_old, pcap_old = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        old = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                          "think 3s\nrequest POST /counter\n", name="old")
        self.assertTrue(wait_until(lambda: file_contains(old.err, "step=0 response"), 10))
        self.tb.kill(self.stack.d["logger"])
        self.assertTrue(wait_until(lambda: "logger gone" in self.stack.log("stated-alternate"), 5),
                        self.stack.log("stated-alternate"))
        self.stack.start_logger("logger-restarted")
        cap_new, pcap_new = self.tb.capture("c2", "c2", bpf_filter="tcp port 80")
        new = self.client("request POST /counter\n  expect contains \"counter=2\"\n"
                          f"request GET {SLOW}\n  expect content seed=0\n"
                          "request POST /counter\n  expect contains \"counter=3\"\n", host="c2", name="new")
        self.assertTrue(wait_until(lambda: file_contains(new.err, "step=0 response"), 10))
        time.sleep(0.3)
        t_crash = time.time()
        self.stack.kill_primary()
        new.popen.wait(30)
        old.popen.wait(30)
        time.sleep(0.3)
        self.tb.stop_capture(cap_new)
        self.tb.stop_capture(cap_old)
        log = self.stack.log("proxy")
        self.assert_transparent(new, pcap_new)
        self.assertRegex(log, rf"recovered id={self.cid(2)} ")
        # The old connection, idle: a RST within 1 s of the crash, a counted
        # reason; the client opens a new one for its next request, as a
        # browser does with a keep-alive connection the server closed.
        self.assertEqual(old.popen.returncode, 0, open(old.err).read()[-2000:])
        self.assertEqual(len({r["local_port"] for r in self.rows(old)}), 2, self.rows(old))
        rsts = rst_times(pcap_old)
        self.assertTrue(rsts, "the old connection got no RST")
        self.assertLess(rsts[0] - t_crash, 1.0)
        self.assertRegex(log, rf"close id={self.cid()} .*reason=unrecoverable rst=1")
        self.assertRegex(self.stack.log("logger"), r"not-loggable client=10\.0\.1\.1:\d+ reason=mid-stream")
        # Every update counted once: two of each client.
        out = self.tb["c2"].cmd(f"curl -s http://{SERVERS['alternate']}:{APP_PORT}/counter")
        self.assertEqual(out.strip(), "counter=4", out)


class TestProxyRestart(Case):
    """rs-proxy restarted on its host (issue 15): the tc program it leaves
    attached goes on splicing while no proxy runs; the next proxy takes
    over its table, adopts the spliced connections and protects them: the
    primary then dies mid-download and the client, on the same
    connection, notices nothing."""
    STREAM = "/slow?bytes=1200000&chunk=8000&delay=20ms"   # 150 chunks, ~3 s

    def logger_ups(self, since):
        """When each of the logger's two connections to the proxy first came
        up after 'since': {liveness?: time}."""
        out = {}
        for t, live in re.findall(r"(?m)^(\d+\.\d+) rs-logger control proxy(\(liveness\))?=\S+ up$",
                                  self.stack.log("logger")):
            if float(t) > since:
                out.setdefault(bool(live), float(t))
        return out

    def restart_then_crash(self, stop, pause=0.0):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {self.STREAM}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n")
        d.cap = cap
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10), open(d.err).read()[-2000:])
        self.assertTrue(wait_until(lambda: re.search(SPLICED + f"{self.cid()} ", self.stack.log("proxy")), 5))
        time.sleep(0.3)
        stopped = time.time()
        stop(self.stack.d["proxy"])
        old = self.stack.log("proxy")
        time.sleep(pause)
        self.stack.start_proxy("proxy-restarted")
        log = self.stack.log("proxy")
        self.assertIn("adopted 1 spliced connections", log, old[-2000:] + log[-2000:])
        # The logger's connections to the proxy (its words, and its
        # failure notices from the liveness thread) are back within its
        # reconnect back-off's cap of the successor's listening (a try
        # once its control port opens may come a little before its line).
        listening = float(re.search(r"(?m)^(\d+\.\d+) rs-proxy listening", log).group(1))
        self.assertTrue(wait_until(lambda: len(self.logger_ups(stopped)) == 2, 2), self.stack.log("logger")[-2000:])
        self.assertLess(max(self.logger_ups(stopped).values()) - listening, 0.15, self.stack.log("logger")[-2000:])
        time.sleep(0.3)
        self.assertFalse(file_contains(d.err, "step=1 response"), "the stream ended before the crash")
        self.stack.kill_primary()
        d.popen.wait(30)
        self.tb.stop_capture(d.cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        self.assertRegex(log, rf"recovered id={self.cid()} ")
        self.assertNotIn("unrecoverable", log)
        return old

    def test_sigkill_then_primary_crash(self):
        # Restarted after a while, as a supervisor would: the logger has
        # been trying to reach a proxy for as long.
        self.restart_then_crash(self.tb.kill, pause=1.0)

    def test_sigterm_hands_over(self):
        def term(d):
            self.tb.stop(d)
            self.assertFalse(d.alive())
        old = self.restart_then_crash(term)
        self.assertRegex(old, r"exiting: 1 spliced connections handed over .* 0 cut")

    def test_word_lost_with_the_predecessor(self):
        """The client closes first while rs-proxy hangs: the logger's
        unasked word that the close is meant goes into the hung proxy's
        socket and dies unread with it (SIGKILL).  The successor adopts
        the connection and the logger connects to it; then the backend
        (stopped meanwhile) sends its FIN, which the guard holds, and the
        successor asks.  The logger must answer, since its word went to
        the predecessor: the FIN passes as meant, without 50 ms waiting
        for a word that will not come, and without a RECOVER."""
        go = os.path.join(self.dir, "go")
        client = ("import os, socket, time, sys\n"
                  f"s = socket.create_connection(('{VIP_IP}', 80), timeout=10)\n"
                  "s.sendall(b'GET /static/1000?seed=9 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                  "buf = b''\n"
                  "while len(buf) < 1000 or b'\\r\\n\\r\\n' not in buf: buf += s.recv(65536)\n"
                  "print('got', flush=True)\n"
                  f"while not os.path.exists('{go}'): time.sleep(0.02)\n"
                  "s.shutdown(socket.SHUT_WR)\n"
                  "while s.recv(65536): pass\n"
                  "print('eof', flush=True)\n")
        proxy, app = self.stack.d["proxy"], self.stack.d["app-primary"]
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.tb.start("c1", "closer", ["python3", "-c", client])
        self.assertTrue(wait_until(lambda: "got" in d.output(), 10), d.output() + open(d.err).read())
        os.kill(proxy.pid, signal.SIGSTOP)
        os.kill(app.pid, signal.SIGSTOP)        # its FIN comes once the successor runs
        try:
            open(go, "w").close()               # the client's FIN, then the logger's word
            time.sleep(0.3)
            self.tb.kill(proxy)
            stopped = time.time()
            self.stack.start_proxy("proxy-restarted")
            self.assertIn("adopted 1 spliced connections", self.stack.log("proxy"))
            self.assertTrue(wait_until(lambda: len(self.logger_ups(stopped)) == 2, 2),
                            self.stack.log("logger")[-2000:])
        finally:
            os.kill(app.pid, signal.SIGCONT)
        d.popen.wait(10)
        time.sleep(0.2)
        self.tb.stop_capture(cap)
        log = self.stack.log("proxy")
        self.assertIn("eof", d.output(), log[-2000:])
        # From the client's side: its close answered by a FIN, no RST.
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "the client got a RST from the VIP")
        self.assertGreaterEqual(pcap_count(pcap, f"src {VIP_IP} and tcp[tcpflags] & tcp-fin != 0"), 1)
        self.assertNotIn("no word from the logger", log)
        self.assertNotRegex(log, r"recover id=\d+ .*why=backend-fin")
        self.assertRegex(log, r"close id=\d+ client=10\.0\.1\.1:\d+ .*meant \(the logger's word\)")

    def test_new_connection_on_an_adopted_port(self):
        """An adopted connection that ends (a RST from its client) while a
        new one from the same client port begins: the new one is served,
        and the old one's removal, a linger later, leaves it alone."""
        go = os.path.join(self.dir, "go")
        # Client port 45001: the first connection reset by the client once
        # the harness has restarted the proxy and created GO, the second
        # begun at once, before the first's entries are gone.
        d = self.tb.start("c1", "sameport", ["python3", SAME_PORT, VIP_IP, "45001", "rst", go, "3"])
        first = self.cid()
        self.assertTrue(wait_until(lambda: re.search(SPLICED + f"{first} ", self.stack.log("proxy")), 10),
                        d.output() + self.stack.log("proxy")[-2000:])
        self.tb.kill(self.stack.d["proxy"])
        self.stack.start_proxy("proxy-restarted")
        self.assertIn("adopted 1 spliced connections", self.stack.log("proxy"))
        open(go, "w").close()
        d.popen.wait(20)
        self.assertEqual(d.popen.returncode, 0, d.output() + self.stack.log("proxy")[-3000:])
        self.assertIn("second: 100000 bytes", d.output())
        self.assertIn("third: 100000 bytes", d.output())
        log = self.stack.log("proxy")
        self.assertRegex(log, rf"unsplice id={first} ")
        t_rst = float(re.search(rf"^(\d+\.\d+) rs-proxy rst id={first} ", log, re.M).group(1))
        # The new one's SYN met the old one's entries: the old client entry
        # removed and the SYN sent again, spliced at the SYN as a new one.
        self.assertRegex(log, rf"syn-reused id={first} ")
        new = re.search(r"^(\d+\.\d+) rs-proxy syn-spliced id=(\d+) client=10\.0\.1\.1:45001 ", log, re.M)
        self.assertTrue(new and int(new.group(2)) != first, log[-3000:])
        self.assertNotIn("accept id=", log)
        self.assertLess(float(new.group(1)) - t_rst, 0.5, "the new connection waited for the old one's entries to go")


class TestProxyRestartPorts(Case):
    """A proxy that adopts many connections spliced at the request: their
    ports to the backend are one run of the sequence its predecessor
    picked them from, and its own walk through the same sequence starts
    at a random port.  Started inside the run, it gave up after 64 ports
    whose entries live on, and reset the new client (`backend-socket`;
    the fault campaign's pair-host on refapp-churn, 268 adopted).  Here
    the proxy's host has 400 ports to pick from, 380 of them adopted: a
    random start lands 64 or more before the run's end 4 times in 5."""
    stack_args = {"proxy_args": ["--splice-at", "request"]}
    HELD = 380

    def test_new_connections_after_adopting_most_ports(self):
        self.tb["proxy"].cmd("sysctl -qw net.ipv4.ip_local_port_range='40000 40800'")
        self.tb.kill(self.stack.d["proxy"])
        self.stack.start_proxy("proxy-ports")        # picks its ports from that range
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        held = self.client("request GET /static/1000?seed=9\n  expect content seed=9\nthink 8s\n"
                           "request GET /static/1000?seed=10\n  expect content seed=10\n",
                           name="held", extra=["--connections", str(self.HELD)])
        self.assertTrue(wait_until(lambda: self.stack.splices() >= self.HELD, 10),
                        self.stack.log("proxy")[-2000:])
        self.tb.kill(self.stack.d["proxy"])
        self.stack.start_proxy("proxy-restarted")
        self.assertRegex(self.stack.log("proxy"), rf"adopted {self.HELD} spliced connections")
        new = self.client("request GET /static/1000?seed=11\n  expect content seed=11\n", name="new",
                          extra=["--repeat", "20"])
        new.popen.wait(30)
        held.popen.wait(30)
        self.tb.stop_capture(cap)
        log = self.stack.log("proxy")
        self.assertEqual(new.popen.returncode, 0, open(new.err).read()[-2000:] + log[-2000:])
        self.assertEqual(held.popen.returncode, 0, open(held.err).read()[-2000:])
        self.assertEqual(len(self.rows(new)), 20)
        self.assertNotIn("backend-socket", log)
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "a client got a RST from the VIP")


class TestProxyPairAtRequest(Case):
    """A pair splicing at the request: the active proxy hangs (SIGSTOP)
    as a client connects and sends its request.  Its host's stack accepts
    the connection and acknowledges the request, but the daemon never
    copies it: the standby takes over knowing nothing of it, and nothing
    would tell the client, which waits for its response in silence.  The
    logger saw the request: it names the connection to the new active
    proxy as its control connection comes up, and the proxy resets it
    (found by the fault campaign's pair-host on refapp-churn: a client
    timed out after 10 s)."""
    topo_args = {"pair": True}
    stack_args = {"proxy_args": ["--splice-at", "request"]}
    WAIT_S = 6

    def test_request_to_a_hung_active_ends_at_the_takeover(self):
        old = self.stack.d["proxy"]
        script = ("import socket, sys, time\n"
                  f"s = socket.create_connection(('{VIP_IP}', 80), timeout={self.WAIT_S})\n"
                  "t0 = time.monotonic()\n"
                  "s.sendall(b'GET /static/1000?seed=9 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                  "try:\n"
                  "    print('answered' if s.recv(65536) else 'closed', flush=True)\n"
                  "except ConnectionResetError:\n"
                  "    print('reset', flush=True)\n"
                  "except socket.timeout:\n"
                  "    print('timeout', flush=True)\n"
                  "print(f'after {time.monotonic() - t0:.2f} s', flush=True)\n")
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        # c1 knows the VIP's address (ARP) already: a hung proxy answers no ARP.
        self.assertIn("200", self.tb["c1"].cmd(f"curl -s -o /dev/null -w '%{{http_code}}' http://{VIP_IP}/static/10"))
        old.popen.send_signal(signal.SIGSTOP)
        try:
            d = self.tb.start("c1", "waiter", [sys.executable, "-c", script])
            # The logger saw the request: the one it will name to the new active.
            self.assertTrue(wait_until(lambda: re.search(r"txn-request id=10\.0\.1\.1:\S+ method=GET "
                                                         r"target=/static/1000\?seed=9 ", self.stack.log("logger")), 3),
                            self.stack.log("logger")[-2000:])
            self.assertTrue(wait_until(lambda: "pair: active" in self.stack.log("proxy2"), 5),
                            self.stack.log("proxy2")[-2000:])
            d.popen.wait(self.WAIT_S + 5)
        finally:
            self.tb.kill(old)
        self.tb.stop_capture(cap)
        out, log = d.output(), self.stack.log("proxy2")
        self.assertIn("reset", out, out + log[-2000:])
        self.assertLess(float(re.search(r"after (\S+) s", out).group(1)), 2.0, out)
        self.assertRegex(log, r"owed client=10\.0\.1\.1:\d+: no connection here")
        self.assertRegex(self.stack.log("logger"), r"owed client=10\.0\.1\.1:\d+ why=new-proxy")
        self.assertGreaterEqual(pcap_count(pcap, RST_FROM_VIP), 1)


class TestProxyGap(Case):
    """rs-proxy SIGKILLed where it splices at the request: a new
    connection's SYN in the gap before its successor listens is dropped by
    the tc program (the proxy's listener is gone, though its lease runs
    on), not refused by the host: the client sends it again, and the
    successor serves it."""
    stack_args = {"proxy_args": ["--splice-at", "request"]}

    def test_new_connection_held_back_not_refused(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        self.tb.kill(self.stack.d["proxy"])
        d = self.client("request GET /static/1000?seed=9\n  expect content seed=9\n")
        time.sleep(0.3)
        self.stack.start_proxy("proxy-restarted")
        d.popen.wait(20)
        self.tb.stop_capture(cap)
        self.assertEqual(d.popen.returncode, 0, open(d.err).read()[-2000:])
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "the host refused it")
        self.assertGreaterEqual(pcap_count(pcap, "tcp[tcpflags] == tcp-syn"), 2, "its SYN was answered at once")
        self.assertRegex(self.stack.log("proxy"), r"accept id=\d+ client=10\.0\.1\.1:")


class TestProxyPair(Case):
    """Two proxies share the VIP (issue 15): the standby keeps a copy of
    the active's splice table and takes the VIP over when the active
    dies, its process or its whole host.  A client mid-download goes on
    on the same connection; then the primary dies too, and the proxy that
    took over masks that as well."""
    topo_args = {"pair": True}

    def takeover_then_crash(self, *faults):
        """Each of 'faults' is (what to do, the host whose proxy then serves)."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {TestProxyRestart.STREAM}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10), open(d.err).read()[-2000:])
        self.assertTrue(wait_until(lambda: re.search(SPLICED + f"{self.cid()} ", self.stack.log("proxy")), 5))
        for fault, serving in faults:
            time.sleep(0.3)
            t_fault = time.monotonic()
            fault()
            self.assertTrue(wait_until(lambda: "adopted 1 spliced connections" in self.stack.log(serving), 5),
                            self.stack.log(serving)[-3000:])
            print(f"\ntakeover by {serving} {time.monotonic() - t_fault:.3f} s after the fault")
        time.sleep(0.3)
        self.assertFalse(file_contains(d.err, "step=1 response"), "the stream ended before the crash")
        self.stack.kill_primary()
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log(serving)
        self.assertRegex(log, rf"recovered id={self.cid()} ")
        self.assertNotIn("unrecoverable", log)
        out = self.tb["c1"].cmd(f"curl -s http://{SERVERS['alternate']}:{APP_PORT}/counter")
        self.assertEqual(out.strip(), "counter=2", out)
        return log

    def test_sigkill_of_the_active_proxy(self):
        log = self.takeover_then_crash((lambda: self.tb.kill(self.stack.d["proxy"]), "proxy2"))
        self.assertIn("pair: active (the active proxy's connection closed)", log)

    def test_host_down_of_the_active_proxy(self):
        log = self.takeover_then_crash((lambda: self.tb.host_down("proxy"), "proxy2"))
        self.assertIn("pair: active (the active proxy is silent)", log)

    def test_hang_of_the_active_proxy(self):
        """SIGSTOP: taken over while it lives; woken, it steps down."""
        old = self.stack.d["proxy"]

        def wake():
            old.popen.send_signal(signal.SIGCONT)
            old.popen.wait(5)
        self.takeover_then_crash((lambda: old.popen.send_signal(signal.SIGSTOP), "proxy2"), (wake, "proxy2"))
        self.assertEqual(old.popen.returncode, 3)
        self.assertIn("pair: stepping down", self.stack.log("proxy"))

    def test_connection_opened_while_the_active_hangs(self):
        """The active proxy hangs (SIGSTOP) as a client connects: its tc
        program splices the SYN but holds the backend's SYN-ACK, for the
        proxy to copy the connection to its standby first.  The standby
        takes the VIP over; the client's SYN, sent again, reaches it, and
        the stream comes whole.  (Let through, the SYN-ACK would leave the
        client on a connection no running proxy knows, cut off once the
        VIP moved: the campaign's pair-kill at early moments.)"""
        old, go = self.stack.d["proxy"], os.path.join(self.dir, "go")
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.tb.start("c1", "streamer", [sys.executable, "-c", STREAM_ON_CUE, VIP_IP, go])
        self.assertTrue(wait_until(lambda: "ready" in d.output(), 10), open(d.err).read())
        # c1 knows the VIP's address (ARP) already: a hung proxy answers no ARP.
        self.assertIn("200", self.tb["c1"].cmd(f"curl -s -o /dev/null -w '%{{http_code}}' http://{VIP_IP}/static/10"))
        old.popen.send_signal(signal.SIGSTOP)
        try:
            open(go, "w").close()
            self.assertTrue(wait_until(lambda: "pair: active" in self.stack.log("proxy2"), 5),
                            self.stack.log("proxy2")[-2000:])
            d.popen.wait(30)
        finally:
            old.popen.send_signal(signal.SIGCONT)
        old.popen.wait(5)
        self.tb.stop_capture(cap)
        self.assertIn("whole", d.output(), d.output() + open(d.err).read() + self.stack.log("proxy2")[-2000:])
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "the client got a RST from the VIP")
        self.assertGreaterEqual(pcap_count(pcap, "tcp[tcpflags] == tcp-syn"), 2, "its SYN was not sent again")
        self.assertRegex(self.stack.log("proxy2"), r"syn-spliced id=\d+ client=10\.0\.1\.1:")

    def new_connections_across(self, fault, active, serving, then=None):
        """New connections from c1, four at a time, one after another,
        while 'fault' makes the proxy on 'serving' take over from the one on
        'active', at a seeded random moment ('then' runs once it did): none
        fails, no RST comes from the VIP."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80", snaplen=96)
        stop = os.path.join(self.dir, "stop")
        script = os.path.join(self.dir, "newconns.py")
        with open(script, "w") as f:
            f.write(NEW_CONNECTIONS)
        n = self.tb.start("c1", "newconns", ["python3", script, VIP_IP, stop])
        self.assertTrue(wait_until(lambda: self.stack.splices(active) >= 20, 10), self.stack.log(active)[-2000:])
        taken = self.stack.log(serving).count("pair: active")
        delay = random.Random(SEED).uniform(0, 0.3)
        print(f"\nseed={SEED} fault {delay * 1000:.0f} ms after the 20th splice")
        time.sleep(delay)
        fault()
        self.assertTrue(wait_until(lambda: self.stack.log(serving).count("pair: active") > taken, 5),
                        self.stack.log(serving)[-2000:])
        if then:
            then()
        time.sleep(1.5)         # a SYN dropped meanwhile is sent again after 1 s
        open(stop, "w").close()
        n.popen.wait(20)
        self.tb.stop_capture(cap)
        out = n.output()
        print(f"\nnew connections across the takeover: {out.strip()}")
        m = re.search(r"ok=(\d+) failed=(\d+) held=(\d+)", out)
        self.assertTrue(m, out + open(n.err).read())
        self.assertEqual(m.group(2), "0", out + open(n.err).read()[-2000:] + self.stack.log(serving)[-2000:])
        self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "a client got a RST from the VIP")

    def test_new_connections_across_a_kill_of_the_active(self):
        """The active proxy SIGKILLed while new connections come every few
        ms: those whose SYN came while the standby took over (between its
        listening and its splicing at the SYN) were spliced by its program
        with splice ids the other proxy had given (its standby's
        configuration), taken for the adopted connections of those ids,
        and their SYN-ACKs held for good: the clients hung."""
        self.new_connections_across(lambda: self.tb.kill(self.stack.d["proxy"]), "proxy", "proxy2")

    def test_new_connections_across_a_hang_of_the_active(self):
        """The active proxy SIGSTOPped at a seeded moment while connections
        open and close every few ms, so it is likely stopped inside its
        work on one (the guard's FIN of a closing connection let through,
        not yet sent itself); SIGCONTed once the standby took over.  It
        must do nothing more but step down: not finish that work (it once
        sent that FIN after the new active had closed the connection, and
        the client's answer drew a RST from the backend), nor run a timer
        or an event first."""
        old, cont = self.stack.d["proxy"], []

        def stop_at_work():
            """SIGSTOP once it is seen running (not waiting in epoll)."""
            end = time.monotonic() + 1
            while time.monotonic() < end:
                with open(f"/proc/{old.popen.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "R":
                        break
            old.popen.send_signal(signal.SIGSTOP)

        def wake():
            time.sleep(0.1)
            cont.append(time.time())
            old.popen.send_signal(signal.SIGCONT)
            old.popen.wait(5)
        self.new_connections_across(stop_at_work, "proxy", "proxy2", then=wake)
        self.assertEqual(old.popen.returncode, 3)
        after = [l for l in self.stack.log("proxy").splitlines()
                 if re.match(r"\d+\.\d+ ", l) and float(l.split()[0]) >= cont[0]]
        self.assertTrue(after and all("pair: stepping down (we were stopped" in l for l in after), after)

    def test_new_connections_across_a_kill_of_a_restarted_active(self):
        """The same, the proxy taking over this time restarted as the
        standby where the active one ran: its tc program, kept from then,
        must not splice with the ids it had reached (the other proxy's
        have gone above them)."""
        self.tb.kill(self.stack.d["proxy"])
        self.assertTrue(wait_until(lambda: "pair: active" in self.stack.log("proxy2"), 5))
        self.stack.start_proxy("proxy-restarted", host="proxy", standby=True)
        self.stack.wait_standby("proxy")
        self.new_connections_across(lambda: self.tb.kill(self.stack.d["proxy2"]), "proxy2", "proxy")

    def test_restarted_proxy_stands_by_and_takes_over_again(self):
        def restart_then_kill_the_other():
            self.stack.start_proxy("proxy-restarted", host="proxy", standby=True)
            self.stack.wait_standby("proxy")
            self.tb.kill(self.stack.d["proxy2"])
        self.takeover_then_crash((lambda: self.tb.kill(self.stack.d["proxy"]), "proxy2"),
                                 (restart_then_kill_the_other, "proxy"))

    def test_restarted_standby_leaves_its_predecessors_events(self):
        """Keep-alive connections are spliced; the active proxy hangs
        (SIGSTOP); the client closes them, so its tc program reports their
        FINs in its rings (and holds the backend's); the proxy is then
        SIGKILLed with those events unread.  Restarted as the standby on
        its own host it must leave them: the connections are the serving
        proxy's, and a standby has no logger to ask about a held FIN (it
        took them on and asked, and crashed: the fault campaign's pair
        trials, 1 in 20).  Then it takes over again as ever."""
        go = os.path.join(self.dir, "close-now")
        d = self.tb.start("c1", "closer", [sys.executable, "-c", CLOSE_ON_CUE, VIP_IP, "4", go])
        self.assertTrue(wait_until(lambda: "open 4" in d.output(), 10), d.output() + open(d.err).read())
        old = self.stack.d["proxy"]
        old.popen.send_signal(signal.SIGSTOP)
        open(go, "w").close()
        self.assertTrue(wait_until(lambda: "closed" in d.output(), 5), d.output())
        time.sleep(0.2)
        self.tb.kill(old)
        self.assertTrue(wait_until(lambda: "pair: active" in self.stack.log("proxy2"), 5),
                        self.stack.log("proxy2")[-2000:])
        restarted = self.stack.start_proxy("proxy-restarted", host="proxy", standby=True)
        self.stack.wait_standby("proxy")
        time.sleep(1.5)         # a held FIN is asked about after 50 ms
        log = self.stack.log("proxy")
        self.assertTrue(restarted.alive(), log[-3000:])
        self.assertNotIn("runtime error", log)
        # Neither taken on nor asked about (what the old standby did).
        self.assertIsNone(re.search(r"\b(?:syn-spliced|taken on|held \(guarded\)|RECOVER|recover)\b", log),
                          log[-3000:])
        # It still takes over, and serves.
        self.tb.kill(self.stack.d["proxy2"])
        self.assertTrue(wait_until(lambda: "pair: active" in self.stack.log("proxy"), 5), self.stack.log("proxy")[-2000:])
        out = self.tb["c1"].cmd(f"curl -s -m 5 http://{VIP_IP}/counter -d ''")
        self.assertIn("counter=1", out)
        self.assertTrue(restarted.alive())


# Opens N keep-alive connections to the VIP, one request each, prints
# "open N", closes them all once the file argv[3] exists, prints "closed".
# From a client host: once file argv[2] exists, one connection to
# argv[1]:80 for the 1.2 MB stream of TestProxyRestart; prints "whole" when
# every byte came.
STREAM_ON_CUE = r"""
import os, socket, sys, time
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(b"GET /slow?bytes=1200000&chunk=8000&delay=20ms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
d = b"".join(iter(lambda: s.recv(65536), b""))
head, _, rest = d.partition(b"\r\n\r\n")
body = b""
while b"\r\n" in rest:    # chunked
    size, _, rest = rest.partition(b"\r\n")
    n = int(size, 16)
    if n == 0:
        break
    body, rest = body + rest[:n], rest[n + 2:]
print("whole" if head.startswith(b"HTTP/1.1 200") and len(body) == 1200000 else "cut at %d" % len(body), flush=True)
"""


CLOSE_ON_CUE = r"""
import os, socket, sys, time
socks = []
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80))
    s.sendall(b"GET /static/1000?seed=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    d = b""
    while b"\r\n\r\n" not in d or len(d.partition(b"\r\n\r\n")[2]) < 1000:
        c = s.recv(65536)
        if not c:
            sys.exit("closed early")
        d += c
    socks.append(s)
print("open", len(socks), flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
for s in socks:
    s.close()
print("closed", flush=True)
"""


class TestProxyHandOverUnderLoad(Case):
    """A graceful restart (SIGTERM, then a new rs-proxy) under load: 50
    connections mid-stream on c1 go on, every byte checked; new
    connections opened from c2 all along are delayed (their SYNs are held
    back until the successor listens), never refused."""
    clients = 2

    def test_graceful_restart_loses_no_connection(self):
        caps = [self.tb.capture(f"c{i + 1}", f"c{i + 1}", bpf_filter="tcp port 80", snaplen=96)
                for i in range(self.clients)]
        d = self.client("request GET /static/1000?seed=9\n  expect content seed=9\n"
                        "request GET /slow?bytes=800000&chunk=8000&delay=20ms\n  expect content seed=0\n",
                        name="streams", extra=["--connections", "50", "--quiet"])
        stop = os.path.join(self.dir, "stop")
        script = os.path.join(self.dir, "newconns.py")
        with open(script, "w") as f:
            f.write(NEW_CONNECTIONS)
        n = self.tb.start("c2", "newconns", ["python3", script, VIP_IP, stop])
        self.assertTrue(wait_until(lambda: self.stack.splices() >= 50, 20),
                        self.stack.log("proxy")[-2000:])
        time.sleep(0.3)
        self.tb.stop(self.stack.d["proxy"])
        old = self.stack.log("proxy")
        serving = self.successor()
        d.popen.wait(60)
        time.sleep(1.5)
        open(stop, "w").close()
        n.popen.wait(20)
        for c, _ in caps:
            self.tb.stop_capture(c)
        self.assert_transparent(d, caps[0][1])
        self.assertEqual(len(self.rows(d)), 100)
        # The 50 streams, and any of c2's short connections spliced then
        # (the successor also adopts those that were ending: they linger).
        handed = re.search(r"exiting: (\d+) spliced connections handed over .*, 0 cut", old)
        adopted = re.search(r"adopted (\d+) spliced connections", self.stack.log(serving))
        self.assertTrue(handed and adopted, old[-2000:])
        self.assertGreaterEqual(int(handed.group(1)), 50)
        self.assertGreaterEqual(int(adopted.group(1)), int(handed.group(1)))
        out = n.output()
        print(f"\nnew connections across the restart: {out.strip()}")
        m = re.search(r"ok=(\d+) failed=(\d+) held=(\d+)", out)
        self.assertTrue(m, out + open(n.err).read())
        self.assertEqual(m.group(2), "0", out)
        self.assertGreater(int(m.group(1)), 20, out)
        if self.expect_held and int(m.group(3)) == 0:
            # Not a failure: no SYN happened to come in the moment no proxy
            # listened (1 run in 4 here, with four connectors every 5 ms);
            # when one does, it must be delayed, not refused (failed = 0).
            print("(no new connection met the hand-over's gap this time)")
        self.assertRegex(self.stack.log(serving).split("adopted")[-1], r"\b(?:accept|syn-spliced) id=", "none came after")
        self.assertEqual(pcap_count(caps[1][1], RST_FROM_VIP), 0)

    expect_held = True      # some new connection's SYN came while no proxy listened

    def successor(self):
        """Starts the proxy that takes over; returns its host."""
        self.stack.start_proxy("proxy-restarted")
        return "proxy"


class TestReprotection(Case):
    """Three backends (issue 15): after the primary fails and the alternate
    serves its clients, the spare becomes the alternate's standby (the
    rs-stateds form a chain: it has held the alternate's states all
    along), so a second crash, of the alternate, 1 s later on the same
    client connection, is masked too, and every update counts once."""
    topo_args = {"spare": True}
    STREAM = "/slow?bytes=2000000&chunk=8000&delay=20ms"   # 250 chunks, ~5 s

    def test_primary_then_alternate_crash(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n"
                        "request GET /token\n"
                        f"request GET {self.STREAM}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=3\"\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10), open(d.err).read()[-2000:])
        time.sleep(0.3)
        t1 = time.monotonic()
        self.stack.kill_primary()       # mid-SLOW: the alternate takes over
        self.assertTrue(wait_until(lambda: f"recovered id={self.cid()} " in self.stack.log("proxy"), 5),
                        self.stack.log("proxy")[-3000:])
        # The roles change with the FAILURE, which may come after a recovery
        # that the primary's own end (a FIN, a RST) began.
        self.assertTrue(wait_until(lambda: re.search(r"role backend_id=3 \S+ spare -> alternate",
                                                     self.stack.log("proxy")), 5), self.stack.log("proxy")[-3000:])
        # The alternate serves an update and a synchronous one (the token),
        # which reach the spare, then dies mid-STREAM.
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=3 response"), 10), open(d.err).read()[-2000:])
        time.sleep(max(0.3, 1.0 - (time.monotonic() - t1)))
        self.assertFalse(file_contains(d.err, "step=4 response"), "the stream ended before the second crash")
        self.tb.kill(self.stack.d["app-alternate"])
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        self.assertEqual(len(re.findall(rf"recovered id={self.cid()} ", log)), 2, log[-3000:])
        self.assertRegex(log, rf"recovered id={self.cid()} client=\S+ alternate={SPARE_IP}:{APP_PORT}")
        out = self.tb["c1"].cmd(f"curl -s http://{SPARE_IP}:{APP_PORT}/counter")
        self.assertEqual(out.strip(), "counter=3", out)
        self.assertIn("successor backend=3", self.stack.log("stated-alternate"))
        self.assertRegex(self.stack.log("stated-spare"), r"update 10\.0\.1\.1:\d+#3 \d+B sync")


class TestSecondCrashDuringRecovery(Case):
    """Three backends: the primary is killed under 20 connections and the
    alternate as soon as the proxy holds the first of them (their
    recoveries to it are under way): each recovery whose target died
    starts again, to the spare; every connection masked, every update
    counted once (found by make fault-campaign's 'double': 20-47 of 50
    connections reset)."""
    topo_args = {"spare": True}

    def test_alternate_killed_while_recovering_to_it(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request POST /counter\n", extra=["--connections", "20"])
        self.assertTrue(wait_until(lambda: open(d.err).read().count("step=0 response") == 20, 10),
                        open(d.err).read()[-2000:])
        time.sleep(0.3)
        # The alternate stopped first, so that the recoveries to it are still
        # under way when it dies (on a fast host they could all be done
        # within the millisecond the harness takes to see them begin).
        alternate = self.stack.d["app-alternate"]
        alternate.popen.send_signal(signal.SIGSTOP)
        second = self.tb.crash_when(lambda: "step=hold" in self.stack.proxy_log(),
                                    lambda: self.tb.kill(alternate), timeout=5)
        self.stack.kill_primary()
        second.fired.wait(6)
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        log = self.stack.proxy_log()
        self.assertIn("again, to the next standby", log)
        self.assertNotIn("unrecoverable", log)
        out = self.tb["c1"].cmd(f"curl -s http://{SPARE_IP}:{APP_PORT}/counter")
        self.assertEqual(out.strip(), "counter=40", out)


class TestReadmission(Case):
    """Three backends, three crashes on one client connection (issue 15):
    the primary fails (the alternate serves, the spare is its standby); the
    primary is restarted and readmitted: it rejoins at the end of the chain,
    brought up to date by the spare's snapshot; the alternate fails (the
    spare serves, the readmitted primary is its standby); the spare fails:
    the readmitted primary takes the connection over.  Every response
    byte-exact on one connection, every update counted once."""
    topo_args = {"spare": True}
    ctl = TestAfterFailover.ctl
    status = TestAfterFailover.status
    STREAM = "/slow?bytes=3200000&chunk=8000&delay=20ms"   # 400 chunks, ~8 s

    def kill_mid(self, d, step, app, recovered, target):
        """Once step 'step' was answered, SIGKILLs 'app' during the next one
        and waits until the proxy recovered the connection for the
        'recovered'-th time, to 'target'."""
        self.assertTrue(wait_until(lambda: file_contains(d.err, f"step={step} response"), 20), open(d.err).read()[-2000:])
        time.sleep(0.5)
        self.assertFalse(file_contains(d.err, f"step={step + 1} response"), "the stream ended before the crash")
        self.tb.kill(self.stack.d[app])
        self.assertTrue(wait_until(lambda: len(re.findall(rf"recovered id={self.cid()} ", self.stack.log("proxy"))) == recovered, 5),
                        self.stack.log("proxy")[-3000:])
        self.assertRegex(self.stack.log("proxy"), rf"recovered id={self.cid()} client=\S+ alternate={target}:{APP_PORT}")

    def test_three_crashes_one_connection(self):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {SLOW}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n"
                        f"request GET {self.STREAM}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=3\"\n"
                        f"request GET {self.STREAM}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=4\"\n", extra=["--timeout", "30s"])
        self.kill_mid(d, 0, "app-primary", 1, SERVERS["alternate"])
        # The primary's host restarts its daemons; the operator readmits it.
        self.stack.restart_backend("primary")
        self.assertIn("status=0", self.ctl("readmit", "--backend-id", "1"))
        self.assertTrue(wait_until(lambda: "snapshot applied" in self.stack.log("stated-primary"), 5),
                        self.stack.log("stated-primary")[-2000:] + self.stack.log("stated-spare")[-2000:])
        self.assertRegex(self.stack.log("stated-spare"), r"snapshot to backend=1: \d+B covered=\d+")
        st = self.status()
        self.assertEqual([st[i]["role"] for i in (1, 2, 3)], ["spare", "primary", "alternate"], st)
        self.kill_mid(d, 2, "app-alternate", 2, SPARE_IP)
        st = self.status()
        self.assertEqual([st[i]["role"] for i in (1, 3)], ["alternate", "primary"], st)
        self.kill_mid(d, 4, "app-spare", 3, SERVERS["primary"])
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        out = self.tb["c1"].cmd(f"curl -s http://{SERVERS['primary']}:{APP_PORT}/counter")
        self.assertEqual(out.strip(), "counter=4", out)


class TestPairFence(Case):
    """A backend fenced before a takeover stays fenced after it: the
    standby learns fences with the table (a primary cut off from the
    logger lives on, and must never serve again)."""
    topo_args = {"pair": True}
    ctl = TestAfterFailover.ctl
    status = TestAfterFailover.status

    def test_fenced_backend_stays_fenced(self):
        self.assertIn("status=0", self.ctl("fence", "--backend-id", "1"))
        self.assertTrue(wait_until(lambda: "backend_id=1 fenced by the active proxy" in self.stack.log("proxy2"), 5),
                        self.stack.log("proxy2"))
        self.tb.kill(self.stack.d["proxy"])
        self.assertTrue(wait_until(lambda: "pair: active" in self.stack.log("proxy2"), 5))
        st = self.status()
        self.assertEqual(st[1]["fenced"], "1", st)
        # New connections go to the alternate: the primary's counter stays.
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n")
        d.popen.wait(20)
        self.assertEqual(d.popen.returncode, 0, open(d.err).read()[-2000:])
        self.assertRegex(self.stack.log("proxy2"), r"\b(?:connect|syn-spliced) id=\d+ client=\S+ backend=10\.0\.0\.12:")


class TestPairHandOverUnderLoad(TestProxyHandOverUnderLoad):
    """The same graceful stop of the active proxy of a pair: the standby
    takes over when the stopping proxy is gone (within ms: a new
    connection may not even have to retry its SYN)."""
    topo_args = {"pair": True}
    expect_held = False

    def successor(self):
        self.assertTrue(wait_until(lambda: "adopted" in self.stack.log("proxy2"), 5),
                        self.stack.log("proxy2")[-2000:])
        return "proxy2"


# From a client host: new connections to VIP:80, one after another (each a
# GET of 1000 bytes, closed by the client), until file STOP exists; prints
# "ok= failed= held=" (held: the connect took over 0.5 s: a SYN retried).
NEW_CONNECTIONS = r"""
import os, socket, sys, threading, time
vip, stop = sys.argv[1], sys.argv[2]
counts = {"ok": 0, "failed": 0, "held": 0}
lock = threading.Lock()


def connector():
    # Four of these, each about every 5 ms: some SYN lands while no proxy
    # listens, however short that is (those are "held").
    while not os.path.exists(stop):
        t0 = time.monotonic()
        try:
            s = socket.create_connection((vip, 80), timeout=5)
            held = time.monotonic() - t0 > 0.5
            s.sendall(b"GET /static/1000?seed=9 HTTP/1.1\r\nHost: x\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf or len(buf.split(b"\r\n\r\n", 1)[1]) < 1000:
                c = s.recv(65536)
                if not c:
                    raise OSError("closed early")
                buf += c
            s.close()
            with lock:
                counts["ok"] += 1
                counts["held"] += held
        except OSError as e:
            with lock:
                counts["failed"] += 1
            print("failed:", e, file=sys.stderr, flush=True)
        time.sleep(0.005)


threads = [threading.Thread(target=connector) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"ok={counts['ok']} failed={counts['failed']} held={counts['held']}", flush=True)
"""




class TestPartition(Case):
    """The primary is cut off from the logger only (its heartbeats stop;
    the mirror still sees its traffic) and the proxy's FENCE cannot reach
    its rs-stated: it lives on and keeps sending.  Declared failed, it is
    fenced: the client continues on the alternate and gets none of its bytes."""

    def test_partitioned_primary_fenced(self):
        d, pcap = self.slow_stream()
        time.sleep(0.3)
        lg = SERVERS["logger"]
        self.tb["primary"].cmd(f"iptables -w -A OUTPUT -d {lg} -j DROP; iptables -w -A INPUT -s {lg} -j DROP;"
                               f" iptables -w -A INPUT -p tcp --dport {STATED_PORT} -j DROP")
        d.popen.wait(30)
        time.sleep(2.5)     # the connection's linger: its entries are gone, their drops counted
        self.tb.stop_capture(d.cap)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        self.assertRegex(log, r"failure backend_id=1 .*why=heartbeat-timeout .*fenced")
        self.assertRegex(log, rf"recovered id={self.cid()} ")
        self.assertTrue(self.stack.d["app-primary"].alive(), "the fence was not meant to reach the primary")
        st = self.stack.stats("proxy")
        print(f"\nfenced primary: {st['fenced_drops']} of its segments dropped after the move")
        self.assertGreater(int(st["fenced_drops"]), 0)


class TestConcurrent(Case):
    """200 connections on four client hosts, mid-download when the primary
    dies, all move to the alternate together."""
    clients = 4

    def test_200_connections_fail_over_together(self):
        caps = [self.tb.capture(f"c{i + 1}", f"c{i + 1}", bpf_filter="tcp port 80", snaplen=96)
                for i in range(self.clients)]
        ds = [self.client("request GET /static/1000?seed=9\n  expect content seed=9\n"
                          f"request GET /static/4000000?seed={i}\n  expect content seed={i}\n",
                          host=f"c{i + 1}", name=f"client{i + 1}", extra=["--connections", "50", "--quiet"])
              for i in range(self.clients)]
        self.assertTrue(wait_until(lambda: self.stack.splices()
                                   >= 200, 20), self.stack.log("proxy")[-2000:])
        time.sleep(0.1)
        self.stack.kill_primary()
        for d in ds:
            d.popen.wait(120)
        for c, _ in caps:
            self.tb.stop_capture(c)
        for d, (_, pcap) in zip(ds, caps):
            self.assert_transparent(d, pcap)
            self.assertEqual(len(self.rows(d)), 100)
        log = self.stack.log("proxy")
        n = log.count("recovered id=")
        print(f"\n{n} connections recovered together; "
              f"{self.stack.log('logger').count('recover client=')} plans")
        self.assertGreater(n, 100, "too few connections were mid-download")
        self.assertNotIn("unrecoverable", log)
        # Before the crash, nothing looked hung (a stall check that took
        # segments newer than its clock for 49 days old once did).
        self.assertNotRegex(self.stack.log("logger").split("backend-failed")[0], r"suspect client=")
        self.assertNotIn("backend-failed backend=2", self.stack.log("logger"))
        self.assertNotRegex(log, r"failure backend_id=2 ")


# From a client host: for each ADDR:PORT in argv[1:], one connection of 4 KiB
# of random bytes, one with a well-formed header that claims a 4 GiB frame,
# and one that sends half a header and stays; prints "sent".
HOSTILE_FRAMES = r"""
import os, socket, struct, sys, time
idle = []
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    for payload in (os.urandom(4096), b"RS" + bytes([2, 1, 0, 0]) + struct.pack(">IQI", 7, 1, 0xfffffff0)):
        s = socket.create_connection((host, int(port)), timeout=5)
        try:
            s.sendall(payload)
        except OSError:
            pass
        s.close()
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(b"RS\x02")
    idle.append(s)
time.sleep(0.5)
print("sent", flush=True)
"""


# "grab PORT": takes one connection, saves what it sends to ./frame.bin.
# "replay ADDR:PORT": sends frame.bin twice, each on a new connection, and
# says whether an answer came or the connection was closed.
REPLAY_FRAME = r"""
import os, socket, sys, time
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frame.bin")
if sys.argv[1] == "grab":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("", int(sys.argv[2]))); ls.listen(1)
    print("listening", flush=True)
    c, _ = ls.accept(); c.settimeout(2); data = b""
    try:
        while len(data) < 22 or len(data) < 22 + int.from_bytes(data[18:22], "big") + 32:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    open(path, "wb").write(data)
    print("grabbed %d" % len(data), flush=True)
    time.sleep(30)
else:
    host, port = sys.argv[2].rsplit(":", 1)
    for label in ("first", "again"):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(open(path, "rb").read())
        try:
            print(label + (": answered" if s.recv(65536) else ": closed"), flush=True)
        except (ConnectionResetError, socket.timeout):
            print(label + ": closed", flush=True)
        s.close()
"""


class TestHostileFrames(Case):
    """Garbage, a frame claiming 4 GiB and a half-sent header on every
    control port (proxy, logger, logger resend, both rs-stated), from a
    client host: each is refused and counted, nothing else changes — a
    failover right after is as transparent as ever."""

    def test_sniffed_frame_replayed(self):
        """A control frame seen on the wire (here: rs-ctl's STATUS request,
        caught by a listener standing in for the proxy) is taken once and
        refused when it comes again on a new connection."""
        script = os.path.join(self.dir, "replay.py")
        with open(script, "w") as f:
            f.write(REPLAY_FRAME)
        grab = self.tb.start("logger", "grab", [sys.executable, script, "grab", "9999"], ready="listening")
        self.tb["logger"].cmd(f"{binary('rs-ctl')} --to {SERVERS['logger']}:9999 --key {self.stack.key} "
                              "--timeout 1s status")
        self.assertTrue(wait_until(lambda: "grabbed" in grab.output(), 5), grab.output())
        before = int(self.stack.stats("proxy")["ctl_rejected"])
        out = self.tb["logger"].cmd(f"{sys.executable} {script} replay {SERVERS['proxy']}:{PROXY_CTL}")
        self.assertIn("first: answered", out)
        self.assertIn("again: closed", out)
        self.assertEqual(int(self.stack.stats("proxy")["ctl_rejected"]), before + 1)
        self.assertIn("rejected message: replayed", self.stack.log("proxy"))

    def test_role_checked_not_only_the_key(self):
        """Frames signed with the right key but from a sender whose role
        never sends them — a FAILURE from an operator's tool, a RESPLICE
        from a backend — are refused and counted: no backend is failed,
        nothing moves."""
        script = os.path.join(self.dir, "roles.py")
        with open(script, "w") as f:
            f.write(WRONG_ROLE_FRAMES)
        before = int(self.stack.stats("proxy")["ctl_rejected"])
        out = self.tb["logger"].cmd(f"{sys.executable} {script} {self.stack.key} {SERVERS['proxy']}:{PROXY_CTL}")
        self.assertIn("sent 2", out)
        self.assertTrue(wait_until(lambda: int(self.stack.stats("proxy")["ctl_rejected"]) >= before + 2, 5),
                        self.stack.log("proxy")[-2000:])
        log = self.stack.log("proxy")
        self.assertRegex(log, r"FAILURE from sender 7f\w+ refused: its role does not send it")
        self.assertRegex(log, r"RESPLICE from sender 04\w+ refused: its role does not send it")
        self.assertNotRegex(log, r"failure backend_id=1 ")
        out = self.tb["c1"].cmd(f"curl -s -m 5 http://{VIP_IP}/static/1000?seed=2 -o /dev/null -w '%{{http_code}}'")
        self.assertIn("200", out)

    def test_junk_on_every_control_port(self):
        s = SERVERS
        targets = [f"{s['proxy']}:{PROXY_CTL}", f"{s['logger']}:{LOGGER_CTL}", f"{s['logger']}:{LOGGER_RESEND}",
                   f"{s['primary']}:{STATED_PORT}", f"{s['alternate']}:{STATED_PORT}"]
        script = os.path.join(self.dir, "hostile.py")
        with open(script, "w") as f:
            f.write(HOSTILE_FRAMES)
        out = self.tb["c1"].cmd(f"{sys.executable} {script} {' '.join(targets)}")
        self.assertIn("sent", out)
        for name in ("proxy", "logger", "stated-primary", "stated-alternate"):
            self.assertGreaterEqual(int(self.stack.stats(name)["ctl_rejected"]), 2, (name, self.stack.log(name)))
        # The stack works as before: a mid-download crash is masked.
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client(f"request GET {SLOW}\n  expect content seed=0\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "connected"), 10))
        time.sleep(0.4)
        self.stack.kill_primary()
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        self.assert_transparent(d, pcap)
        for name in ("proxy", "logger"):
            self.assertNotRegex(self.stack.log(name), r"backend-failed backend=2|failure backend_id=2",
                                "the alternate was declared failed")


# "KEYFILE ADDR:PORT": on one connection, a FAILURE{backend 1} signed with
# the key but from an operator's sender, then a RESPLICE from a backend's
# sender; prints "sent 2".
WRONG_ROLE_FRAMES = r"""
import hashlib, socket, struct, sys, time
key = bytes.fromhex(open(sys.argv[1]).read().strip())
host, port = sys.argv[2].rsplit(":", 1)
def frame(mtype, sender, payload):
    head = b"RS" + bytes([2, mtype, 0, 0]) + struct.pack(">IQI", sender, time.time_ns() // 1000, len(payload))
    return head + payload + hashlib.blake2b(head + payload, key=key, digest_size=32).digest()
s = socket.create_connection((host, int(port)), timeout=5)
s.sendall(frame(2, 0x7f000001, struct.pack(">IHH", 1, 1, 0)))                    # FAILURE, TIMEOUT
conn = lambda ip, port: socket.inet_aton(ip) + struct.pack(">H", port)
s.sendall(frame(6, 0x04000021, conn("10.0.1.1", 40000) + conn("10.0.0.1", 80)
                + conn("10.0.0.12", 8080) + b"\0\0" + struct.pack(">II", 1, 2)))       # RESPLICE
time.sleep(0.5)
print("sent 2", flush=True)
"""


# On the logger host: "grab PCAP PORT OUT SRC": the payload of the first UDP
# datagram from SRC to PORT in an Ethernet pcap, into OUT; "replay FRAME
# ADDR PORT SECONDS": sends it to ADDR:PORT every 5 ms for SECONDS.
REPLAY_HEARTBEAT = r"""
import socket, struct, sys, time
if sys.argv[1] == "grab":
    data = open(sys.argv[2], "rb").read()
    off = 24
    while off + 16 <= len(data):
        caplen = struct.unpack("<I", data[off + 8:off + 12])[0]
        pkt = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        ip = pkt[14:]
        if pkt[12:14] == b"\x08\x00" and len(ip) > 28 and ip[9] == 17 and ip[12:16] == socket.inet_aton(sys.argv[5]):
            udp = ip[(ip[0] & 15) * 4:]
            if struct.unpack(">H", udp[2:4])[0] == int(sys.argv[3]):
                open(sys.argv[4], "wb").write(udp[8:])
                print("grabbed %d" % (len(udp) - 8))
                break
else:
    frame = open(sys.argv[2], "rb").read()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.monotonic() + float(sys.argv[5])
    while time.monotonic() < end:
        s.sendto(frame, (sys.argv[3], int(sys.argv[4])))
        time.sleep(0.005)
    print("replayed")
"""


class TestReplayedHeartbeats(Case):
    """A backend's heartbeat caught on the wire and replayed every 5 ms does
    not keep it alive: with its rs-stated stopped (SIGSTOP: no heartbeats),
    the logger still declares it failed within the bound."""

    def test_replayed_heartbeat_does_not_keep_a_backend_alive(self):
        logger = SERVERS["logger"]
        pcap = os.path.join(self.dir, "hb.pcap")
        cap = self.tb.start("logger", "hb-capture", ["tcpdump", "-i", "logger-eth0", "-w", pcap, "-U", "-n",
                                                     "--immediate-mode", "udp", "and", "dst", "port",
                                                     str(LOGGER_CTL)])
        self.assertTrue(wait_until(lambda: "listening on" in open(cap.err).read(), 10))
        time.sleep(0.3)
        self.tb.stop(cap, sig=signal.SIGINT)
        script = os.path.join(self.dir, "hb.py")
        with open(script, "w") as f:
            f.write(REPLAY_HEARTBEAT)
        frame = os.path.join(self.dir, "hb.bin")
        out = self.tb["logger"].cmd(f"{sys.executable} {script} grab {pcap} {LOGGER_CTL} {frame} "
                                    f"{SERVERS['primary']}")
        self.assertIn("grabbed", out, (os.path.getsize(pcap), open(cap.err).read()))
        replay = self.tb.start("logger", "hb-replay", [sys.executable, script, "replay", frame, logger,
                                                       str(LOGGER_CTL), "3"])
        time.sleep(0.2)
        self.stack.d["stated-primary"].popen.send_signal(signal.SIGSTOP)
        try:
            self.assertTrue(wait_until(lambda: "backend-failed backend=1 reason=timeout" in self.stack.log("logger"), 2.5),
                            self.stack.log("logger")[-2000:])
        finally:
            self.stack.d["stated-primary"].popen.send_signal(signal.SIGCONT)
        replay.popen.wait(10)
        self.assertIn("replayed", replay.output())


# From a client host: a RST forged with the backend's address and port to
# the proxy's port argv[3] (argv[1] backend, argv[2] proxy), sequence
# number argv[4]; prints "sent".
FORGED_RST = r"""
import socket, struct, sys
src, dst, dport, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def csum(b):
    if len(b) % 2:
        b += b"\\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
tcp = struct.pack("!HHIIBBHHH", 8080, dport, seq, 0, 5 << 4, 0x04, 0, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + tcp, (dst, 0))
print("sent")
"""


class TestForgedEnds(Case):
    """A RST forged with the primary's address and port, mid-download, at a
    sequence number that is not where the primary's stream stands: the
    splice drops and counts it, nothing is recovered, the download is exact
    and the client never sees it."""

    def forged_rst_mid_download(self, target):
        """Downloads 'target' (seed 0) on c1 and, once spliced, forges a RST
        from the primary's address and port at sequence number 12345.
        Returns (client, pcap) after the client ended."""
        script = os.path.join(self.dir, "rst.py")
        with open(script, "w") as f:
            f.write(FORGED_RST)
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client(f"request GET {target}\n  expect content seed=0\n")
        self.assertTrue(wait_until(lambda: re.search(SPLICED + f"{self.cid()} ", self.stack.log("proxy")), 10),
                        self.stack.log("proxy"))
        # The proxy's port towards the primary.
        port = re.search(rf"(?:connect id=1 .* local=[\d.]+:|syn-spliced id={self.cid()} .* port=)(\d+)",
                         self.stack.log("proxy")).group(1)
        out = self.tb["c1"].cmd(f"{sys.executable} {script} {SERVERS['primary']} {VIP_IP} {port} 12345")
        self.assertIn("sent", out)
        d.popen.wait(30)
        self.tb.stop_capture(cap)
        return d, pcap

    def test_forged_rst_changes_nothing(self):
        d, pcap = self.forged_rst_mid_download(SLOW)
        self.assert_transparent(d, pcap)
        log = self.stack.log("proxy")
        # The RST was never taken for the primary's end, and nothing failed
        # over (the download's own end is a meant close, the logger says).
        self.assertNotIn("why=backend-rst", log)
        self.assertNotIn(f"recovered id={self.cid()}", log)
        self.assertTrue(wait_until(lambda: f"unsplice id={self.cid()} " in self.stack.log("proxy"), 10))
        self.assertRegex(self.stack.log("proxy"), rf"unsplice id={self.cid()} .* ends_refused=1\b")


# From a client host: keeps argv[2] connections to argv[1]:80 that never
# finish their first request (a header line every 200 ms, reconnecting when
# the server drops one) for argv[3] seconds; prints how many it opened and
# how many the server ended.
SLOWLORIS = r"""
import socket, sys, time
vip, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks, opened, ended = [], 0, 0
end = time.time() + secs
while time.time() < end:
    while len(socks) < n and time.time() < end:
        try:
            s = socket.create_connection((vip, 80), timeout=1)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
            opened += 1
        except OSError:
            ended += 1
            break
    time.sleep(0.2)
    for s in list(socks):
        try:
            s.sendall(b"X-Slow: 1\r\n")
            s.setblocking(False)
            if s.recv(1) == b"":
                raise OSError
        except BlockingIOError:
            pass
        except OSError:
            ended += 1
            socks.remove(s)
            s.close()
print(f"opened={opened} ended={ended}", flush=True)
"""

# From a client host whose SYN-ACKs are dropped: argv[2] connection
# attempts to argv[1]:80 that stay half-open on the server's side.
HALF_OPEN = r"""
import socket, sys, time
vip, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((vip, 80))
    socks.append(s)
time.sleep(3)
print("sent", len(socks), flush=True)
"""


class TestHostileClients(Case):
    """Slow clients that never finish their first request (slowloris), a
    flood of half-open connections, and a proxy out of file descriptors:
    it keeps serving the connections it has, a crash is still masked (its
    recoveries have descriptors of their own), the slow clients are reset
    after --request-timeout, and all of it is counted."""
    clients = 3
    # The proxy's own descriptors and request timeout: the request path's (at
    # the SYN the backend meets such clients itself, as it would direct).
    stack_args = {"proxy_args": ["--request-timeout", "1s", "--splice-at", "request"]}

    def test_slowloris_half_open_and_no_descriptors(self):
        pid = self.stack.d["proxy"].pid
        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=256:256"], check=True)
        self.tb["c3"].cmd(f"iptables -w -A INPUT -p tcp -s {VIP_IP} --tcp-flags SYN,ACK SYN,ACK -j DROP")
        slow = self.tb.start("c2", "slowloris", [sys.executable, "-c", SLOWLORIS, VIP_IP, "400", "4"])
        half = self.tb.start("c3", "half-open", [sys.executable, "-c", HALF_OPEN, VIP_IP, "2000"])
        time.sleep(0.5)
        d, pcap = self.slow_stream()
        time.sleep(0.3)
        self.stack.kill_primary()
        d.popen.wait(30)
        self.tb.stop_capture(d.cap)
        self.assert_transparent(d, pcap)
        self.assertRegex(self.stack.log("proxy"), r"recovered id=\d+ client=10\.0\.1\.1:")
        slow.popen.wait(30)
        half.popen.wait(30)
        print("\nslowloris: " + slow.output().strip())
        st = self.stack.stats("proxy")
        print(f"proxy: request_evictions={st['request_evictions']} fd_reserve_drops={st['fd_reserve_drops']} "
              f"accepted={st['accepted']}")
        self.assertGreater(int(st["request_evictions"]), 0, "the attack never reached the descriptor reserve")
        self.assertGreater(int(re.search(r"ended=(\d+)", slow.output()).group(1)), 0)
        # Without pressure a slow client is reset after --request-timeout.
        slow = self.tb.start("c2", "slowloris-5", [sys.executable, "-c", SLOWLORIS, VIP_IP, "5", "1.6"])
        slow.popen.wait(30)
        self.assertRegex(slow.output(), r"opened=\d+ ended=[5-9]")
        self.assertGreaterEqual(int(self.stack.stats("proxy")["request_timeouts"]), 5)
        # The attack over, a new client is served at once.
        out = self.tb["c1"].cmd(f"curl -s -m 5 http://{VIP_IP}/static/1000?seed=2 -o /dev/null -w '%{{http_code}}'")
        self.assertIn("200", out)


class TestForgedEndsWithoutRecovery(TestForgedEnds):
    """Without recovery (no guard), a RST forged with the primary's address
    and port at a sequence number that is not where its stream stands is
    passed on (the client's TCP judges it: a challenge ACK) but does not end
    the splice: a 3 s download outlives the proxy's linger and stays exact."""
    stack_args = {"recovery": False}

    def test_forged_rst_changes_nothing(self):
        d, _ = self.forged_rst_mid_download("/slow?bytes=400000&chunk=4000&delay=30ms")
        self.assertEqual(d.popen.returncode, 0, d.output() + open(d.err).read()[-2000:] + self.stack.log("proxy"))
        self.assertNotRegex(self.stack.log("proxy"), rf"rst id={self.cid()} ")
        self.assertTrue(wait_until(lambda: f"unsplice id={self.cid()} " in self.stack.log("proxy"), 10))
        self.assertRegex(self.stack.log("proxy"), rf"unsplice id={self.cid()} .* ends_refused=1\b")


if __name__ == "__main__":
    unittest.main()
