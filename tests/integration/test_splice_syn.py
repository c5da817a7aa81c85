"""rs-proxy --splice-at syn (issue 17): the tc program splices each new
connection at the client's SYN, with no process in the way.  What must
hold around it: a SYN sent to a backend that does not answer it (it
resets it, or the client sends it again) fails that backend and goes on
to the next one at once, as a failed connect does, unless it answers
others meanwhile (its accept queue full: busy, not failed, at the SYN
and at the request alike); with no port of
the pool free, or a port still in the backend's TIME_WAIT, a SYN goes to
the proxy's listener and is spliced at its request as before; a proxy
restarted adopts the connections spliced at the SYN and protects them;
the options that cannot go with it are refused.  (test_failover's
...Syn cases crash the primary mid-response, between transactions and
with its host down on connections spliced at the SYN.)"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

from emul.places import binary, build_dir
from emul.shaping import wait_until
from emul.stack import Stack
from emul.testbed import Testbed, file_contains, leftovers, pcap_count
from tests.integration.harness import SAME_PORT, needs_root
from topologies.lan import SERVERS, LanTopo

SYN_ID = 1 << 62        # RS_SYN_ID_BASE: the first id the tc program gives
STREAM = "/slow?bytes=1200000&chunk=8000&delay=20ms"    # 150 chunks, ~3 s


@needs_root
class SynCase(unittest.TestCase):
    proxy_args = ["--splice-at", "syn"]
    stack_args = {}
    clients = 1
    sanitized = False   # the daemons of the sanitized build (make san), where there is one

    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        san = os.path.join(build_dir(), "san")
        if self.sanitized and os.access(os.path.join(san, "rs-proxy"), os.X_OK):
            patch = mock.patch.dict(os.environ, RS_BUILD=san)
            patch.start()
            self.addCleanup(patch.stop)
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-syn-")
        self.dir = self.tmp.name
        self.tb = Testbed(LanTopo(clients=self.clients), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.addCleanup(self.tb.__exit__, None, None, None)    # also when the stack fails to start
        self.prepare()
        self.stack = Stack(self.tb, self.dir, proxy_args=self.proxy_args, **self.stack_args).start()

    def prepare(self):
        """The testbed runs, the stack not yet."""

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def client(self, trace, name="client", host="c1"):
        path = os.path.join(self.dir, f"{name}.trace")
        with open(path, "w") as f:
            f.write(trace)
        return self.tb.start(host, name, [binary("rs-client"), "--server", self.stack.vip, "--trace", path,
                                          "--timeout", "10s"])

    def run_on_c1(self, source, *args, during=None):
        """Runs the Python 'source' on c1 with 'args' (after 'during()', if
        given), its segments captured; returns (its last line as JSON, the
        pcap)."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        script = os.path.join(self.dir, "script.py")
        with open(script, "w") as f:
            f.write(source)
        if during:
            during()
        out = self.tb["c1"].cmd(" ".join([sys.executable, script] + [str(a) for a in args])).strip()
        self.tb.stop_capture(cap)
        try:
            return json.loads(out.splitlines()[-1]), pcap
        except (IndexError, ValueError):
            self.fail(out)

    def assert_no_failover(self, pcap):
        """No backend fenced, nothing unrecoverable or reset by the proxy,
        no RST from the VIP in 'pcap'.  Returns the proxy's log and stats."""
        log, st = self.stack.log("proxy"), self.stack.stats("proxy")
        self.assertNotIn("failure backend_id", log, log[-3000:])
        self.assertEqual((st["failures"], st["unrecoverable"], st["resets_sent"]), ("0", "0", "0"),
                         f"{st}\n{log[-3000:]}")
        self.assertEqual(pcap_count(pcap, f"src host {SERVERS['proxy']} and tcp[tcpflags] & tcp-rst != 0"), 0,
                         "the client saw a RST from the VIP")
        return log, st

    def assert_ok(self, d, timeout=30):
        d.popen.wait(timeout)
        self.assertEqual(d.popen.returncode, 0, open(d.err).read()[-2000:] + self.stack.log("proxy")[-3000:])


class TestBackendGone(SynCase):
    """A backend that does not answer a SYN spliced to it, before anything
    told the proxy it failed: what a failed connect is on the request
    path.  The client sees a connect no slower than its own SYN
    retransmission, no RST, its request served once by the alternate."""
    stack_args = {"dead_after": "5s"}   # only the SYN's fate can tell the proxy in time

    def connect_to_the_gone(self, gone):
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        self.stack.d["stated-primary"].popen.send_signal(signal.SIGSTOP)    # nothing tells the proxy
        try:
            gone()
            t0 = time.monotonic()
            d = self.client("request POST /counter\n  expect contains \"counter=1\"\n")
            self.assert_ok(d, 20)
            took = time.monotonic() - t0
        finally:
            self.stack.d["stated-primary"].popen.send_signal(signal.SIGCONT)
        self.tb.stop_capture(cap)
        self.assertEqual(pcap_count(pcap, "tcp[tcpflags] & tcp-rst != 0"), 0, "the client saw a RST")
        log = self.stack.log("proxy")
        self.assertRegex(log, r"syn-forget client=\S+ backend=10\.0\.0\.11:8080 port=\d+: entries removed")
        self.assertRegex(log, rf"syn-redispatch client=\S+ backend={re.escape(SERVERS['alternate'])}:8080\n")
        self.assertRegex(log, rf"syn-spliced id=\d+ client=\S+ backend={re.escape(SERVERS['alternate'])}:8080 ")
        self.assertNotRegex(log, r"accept id=", "the SYN went to the listener")
        out = self.tb["c1"].cmd(f"curl -s http://{SERVERS['alternate']}:8080/counter")
        self.assertEqual(out.strip(), "counter=1", out)
        print(f"\nserved in {took * 1000:.0f} ms")
        return log, took

    def test_dead_application_refuses(self):
        """Its kernel resets the SYN (nothing listens): the RST is held back,
        the primary fenced, the SYN sent on to the alternate at once."""
        log, took = self.connect_to_the_gone(self.stack.kill_primary)
        self.assertRegex(log, r"syn-refused id=\d+ client=\S+ backend=10\.0\.0\.11:8080")
        self.assertRegex(log, r"failure backend_id=1 .*why=connect-refused .*fenced")
        self.assertLess(took, 0.8, "the client waited for its own SYN retransmission")

    def test_dead_host_does_not_answer(self):
        """Its host is down: the client's SYN again (a second later) is the
        sign; the primary fenced, that SYN sent on to the alternate."""
        log, took = self.connect_to_the_gone(self.stack.primary_down)
        self.assertRegex(log, r"syn-unanswered id=\d+ client=\S+ backend=10\.0\.0\.11:8080 again_after_ms=\d+")
        self.assertRegex(log, r"failure backend_id=1 .*why=connect-failed .*fenced")
        self.assertLess(took, 2.0, "the client waited for a second SYN retransmission")

    def test_none_left_refuses_at_once(self):
        """Both applications dead: the SYN sent on to the alternate is
        refused too, and nothing is left to serve it.  The client gets a
        RST from the VIP at once, counted, not its own SYN again a second
        later (the campaign's alternate-in-recovery at the SYN)."""
        def gone():
            self.stack.kill_primary()
            self.tb.kill(self.stack.d["app-alternate"])

        self.stack.d["stated-primary"].popen.send_signal(signal.SIGSTOP)    # nothing tells the proxy
        try:
            got, pcap = self.run_on_c1(CONNECT_ONCE, SERVERS["proxy"], during=gone)
        finally:
            self.stack.d["stated-primary"].popen.send_signal(signal.SIGCONT)
        log = self.stack.log("proxy")
        self.assertEqual(got["error"], "ConnectionRefusedError", f"{got}\n{log[-3000:]}")
        self.assertLess(got["took_s"], 0.8, "the client waited for its own SYN retransmission")
        self.assertRegex(log, rf"failure backend_id=2 backend={re.escape(SERVERS['alternate'])}:8080 .*fenced")
        self.assertRegex(log, r"close id=0 client=10\.0\.1\.1:\d+ backend=- phase=syn reason=no-backend rst=1\n")
        self.assertEqual(pcap_count(pcap, f"src host {SERVERS['proxy']} and tcp[tcpflags] & tcp-rst != 0"), 1)
        self.assertEqual(pcap_count(pcap, "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack = 0"), 1,
                         "the client sent its SYN again")


# From a client host: one connect to argv[1]:80; prints its error's name
# (or null) and how long it took (s).
CONNECT_ONCE = r"""
import json, socket, sys, time
t0, err = time.monotonic(), None
try:
    socket.create_connection((sys.argv[1], 80), timeout=10).close()
except OSError as e:
    err = type(e).__name__
print(json.dumps({"error": err, "took_s": round(time.monotonic() - t0, 2)}))
"""


# From a client host: opens argv[2] connections to argv[1]:80 one after
# another, sending a GET ("Connection: close") on each as soon as it is
# open, then reads every response to EOF; prints how many were whole, and
# how long it all took (s).
ONE_BY_ONE = r"""
import json, socket, sys, time
t0, conns = time.monotonic(), []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80), timeout=10)
    s.sendall(b"GET /static/1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    conns.append(s)
ok = 0
for s in conns:
    d = b"".join(iter(lambda: s.recv(65536), b""))
    ok += d.startswith(b"HTTP/1.1 200") and len(d.partition(b"\r\n\r\n")[2]) == 1000
print(json.dumps({"ok": ok, "took_s": round(time.monotonic() - t0, 2)}))
"""


# From a client host: opens argv[2] connections to argv[1]:80 at once, a
# GET on each as soon as it is open; gives up on those not done in 10 s.
AT_ONCE = r"""
import json, selectors, socket, sys, time
sel, t0, n = selectors.DefaultSelector(), time.monotonic(), int(sys.argv[2])
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((sys.argv[1], 80))
    sel.register(s, selectors.EVENT_WRITE, [b""])
ok = left = n
while left and time.monotonic() - t0 < 10:
    for k, ev in sel.select(0.5):
        s, got = k.fileobj, k.data
        try:
            if ev & selectors.EVENT_WRITE:
                s.send(b"GET /static/1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                sel.modify(s, selectors.EVENT_READ, got)
                continue
            d = s.recv(65536)
        except OSError:
            d = b""
        got[0] += d
        if not d:
            sel.unregister(s)
            left -= 1
            ok -= not (got[0].startswith(b"HTTP/1.1 200") and len(got[0].partition(b"\r\n\r\n")[2]) == 1000)
print(json.dumps({"ok": ok - left, "waiting": left}))
"""


class TestBusyBackend(SynCase):
    """A backend that pauses for 0.4 s (SIGSTOP, SIGCONT: a garbage
    collector's pause) while new connections come, its accept queue short
    (its host's net.core.somaxconn at 4): once the queue is full it drops
    the next SYN, which is sent again a second later, when it answers.
    That is no failure, since it answered other SYNs just before: nothing
    fenced, every response whole, no RST from the VIP, the wait no longer
    than the SYN's retransmission.  (The SYN again, and at the request the
    connect past --connect-timeout, were taken for a dead backend.)  A
    connection the backend resets (a handshake ended by a SYN cookie while
    the queue was full) moves to the alternate, as any reset one does."""
    CONNS = 12

    def prepare(self):
        # (A listen() takes it then: before the application starts.)
        self.tb["primary"].cmd("sysctl -qw net.core.somaxconn=4; nstat -n")

    def test_paused_backend_with_its_accept_queue_full(self):
        app = self.stack.d["app-primary"].popen

        def pause():
            app.send_signal(signal.SIGSTOP)
            self.tb.crash_at(0.4, lambda: app.send_signal(signal.SIGCONT))
        try:
            r, pcap = self.run_on_c1(ONE_BY_ONE, SERVERS["proxy"], self.CONNS, during=pause)
        finally:
            app.send_signal(signal.SIGCONT)
        log, st = self.assert_no_failover(pcap)
        self.assertEqual(r["ok"], self.CONNS, f"{r}\n{log[-3000:]}")
        self.assertLess(r["took_s"], 3, r)
        drops = self.tb["primary"].cmd("nstat -z TcpExtListenOverflows")
        self.assertGreater(int(drops.split()[-2]), 0, f"the queue never filled:\n{drops}")
        self.assertGreater(int(st["connects_busy"]), 0, st)


class TestBusyBackendRequest(TestBusyBackend):
    proxy_args = ["--splice-at", "request"]


class TestBurst(SynCase):
    """200 connections at once on a healthy backend's accept queue of 2
    (its host's net.core.somaxconn): many a handshake's end and request are
    dropped, to wait for the SYN-ACK sent again (as they would without the
    proxy: some for a minute), while the others are served.  A request
    that waits unacknowledged that long is no stall of the application (it
    never had it): no backend fenced, no RST from the VIP."""

    def prepare(self):
        self.tb["primary"].cmd("sysctl -qw net.core.somaxconn=2")

    def test_burst_at_once(self):
        r, pcap = self.run_on_c1(AT_ONCE, SERVERS["proxy"], 200)
        self.assert_no_failover(pcap)
        self.assertGreater(r["ok"], 0, r)


class TestBurstRequest(TestBurst):
    proxy_args = ["--splice-at", "request"]


class LostEventsCase(SynCase):
    """The tc program's events fill their ring while rs-proxy is stopped
    (SIGSTOP, under 0.5 s: within its lease; a ring of 4 KB holds ~70
    events, 100 connections make ~300): the connections whose SYN-ACK's
    event was lost are taken on at their next event, or by the sweep, and
    the FINs their backend sent meanwhile, held by the guard and reported
    to nobody, are judged then.  Every response whole; afterwards no
    connection of the backend's is left waiting for its FIN's ACK, none in
    the proxy."""
    proxy_args = ["--splice-at", "syn", "--event-ring", "4096", "--syn-sweep", "1s", "--linger", "100ms"]

    CONNS = 100

    def fill_the_ring(self, then=None):
        """Stops the proxy, makes CONNS connections (their events fill the
        ring), runs 'then', resumes the proxy: at the latest after 0.45 s,
        within its lease (0.5 s), whatever is left of them then."""
        path = os.path.join(self.dir, "one.trace")
        with open(path, "w") as f:
            f.write("request GET /static/1024?seed=1\n  expect length 1024\n")
        proxy = self.stack.d["proxy"].popen
        proxy.send_signal(signal.SIGSTOP)
        self.tb.crash_at(0.45, proxy.send_signal, signal.SIGCONT)
        try:
            out = self.tb["c1"].cmd(f"{binary('rs-client')} --server {self.stack.vip} --trace {path} "
                                    f"--repeat {self.CONNS} --quiet --timeout 10s; echo rc=$?")
            if then:
                then()
        finally:
            proxy.send_signal(signal.SIGCONT)
        self.assertIn("rc=0", out)


class TestLostEvents(LostEventsCase):
    def test_events_lost_to_a_full_ring(self):
        self.fill_the_ring()

        def settled():
            waiting = self.tb["primary"].cmd(f"ss -tanH state last-ack state fin-wait-1 dst {SERVERS['proxy']}")
            return not waiting.strip() and self.stack.log("proxy").count("unsplice id=") == self.CONNS
        t0 = time.monotonic()
        self.assertTrue(wait_until(settled, 10), self.tb["primary"].cmd("ss -tan") + self.stack.log("proxy")[-3000:])
        print(f"\nsettled {time.monotonic() - t0:.2f} s after the proxy resumed")
        st = self.stack.stats("proxy")
        self.assertGreater(int(st["syn_late"]), 0, st)
        self.assertEqual(int(st["syn_spliced"]), self.CONNS, st)
        self.assertEqual((st["failures"], st["unrecoverable"]), ("0", "0"), st)

    def test_primary_crash_with_events_lost(self):
        """And then, the proxy still stopped, streams begin (their SYN-ACKs'
        events lost) and the primary's application is killed (its FINs'
        events lost): taken on when the primary is fenced, the streams are
        recovered on the alternate, whole, no RST from the VIP."""
        trace = f"request GET {STREAM}\n  expect length 1200000\n"
        ds = []

        def streams_then_crash():
            ds.extend(self.client(trace, name=f"stream{i}") for i in range(6))
            time.sleep(0.15)
            self.stack.kill_primary()
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        self.fill_the_ring(then=streams_then_crash)
        for d in ds:
            self.assert_ok(d)
        self.tb.stop_capture(cap)
        st = self.stack.stats("proxy")
        self.assertGreater(int(st["syn_late"]), 0, st)
        self.assertGreaterEqual(int(st["recovered"]), 6, st)
        self.assertEqual(st["unrecoverable"], "0", st)
        # None of the first 100 either: one whose end was held while its
        # events were lost met the dead backend's RST at its very end, the
        # client in TIME_WAIT already (once with two busy loops), before
        # the tc program dropped RSTs after a close in full.
        self.assertEqual(pcap_count(pcap, f"src host {SERVERS['proxy']} and tcp[tcpflags] & tcp-rst != 0"), 0,
                         "the client saw a RST from the VIP")


class TestLastBackendLostEvents(LostEventsCase):
    sanitized = True

    def test_last_backend_crash_with_events_lost(self):
        """The same with the alternate failed before: taken on late, each
        stream's recovery cannot start (no standby left) and ends it at
        once.  Each client gets a clean end (a RST from the VIP, counted),
        and the proxy lives on (with the sanitized build: without a
        report; it used the connection it had just freed)."""
        trace = f"request GET {STREAM}\n  expect length 1200000\n"
        ds = []

        def streams_then_crash():
            # Never accepted: its kernel resets them when it dies.
            self.stack.d["app-primary"].popen.send_signal(signal.SIGSTOP)
            ds.extend(self.client(trace, name=f"stream{i}") for i in range(6))
            time.sleep(0.15)
            self.stack.kill_primary()
        self.tb.kill(self.stack.d["app-alternate"])
        self.assertTrue(wait_until(lambda: "failure backend_id=2 " in self.stack.log("proxy"), 5),
                        self.stack.log("proxy")[-3000:])
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        stated = self.stack.d["stated-primary"].popen
        stated.send_signal(signal.SIGSTOP)      # the backend's RSTs, held, tell the proxy
        try:
            self.fill_the_ring(then=streams_then_crash)
        finally:
            stated.send_signal(signal.SIGCONT)
        for d in ds:
            d.popen.wait(10)
        self.tb.stop_capture(cap)
        self.assertEqual([d.popen.returncode != 0 for d in ds].count(True), 6)
        ports = [re.search(r"connected lport=(\d+)", open(d.err).read()).group(1) for d in ds]
        # From each client's side: its stream ended by a RST from the VIP, no FIN.
        for port in ports:
            to = f"src host {SERVERS['proxy']} and dst port {port}"
            self.assertGreaterEqual(pcap_count(pcap, f"{to} and tcp[tcpflags] & tcp-rst != 0"), 1, port)
            self.assertEqual(pcap_count(pcap, f"{to} and tcp[tcpflags] & tcp-fin != 0"), 0, port)

        def ended():    # (the RSTs may come before their lines in the log)
            log = self.stack.log("proxy")
            return all(re.search(rf"close id=\d+ client=10\.0\.1\.1:{p} .*reason=\S+ rst=1\n", log) for p in ports)
        self.assertTrue(wait_until(ended, 5), f"{ports}\n" + self.stack.log("proxy")[-3000:])
        proxy = self.stack.d["proxy"]
        with open(proxy.err) as f:
            err = f.read()
        self.assertIsNone(proxy.popen.poll(), err[-3000:])
        self.assertNotIn("Sanitizer", err, err[-3000:])
        st = self.stack.stats("proxy")
        self.assertGreater(int(st["syn_late"]), 0, st)


class TestPortPool(SynCase):
    proxy_args = ["--splice-at", "syn", "--syn-ports", "62000-62001"]

    def test_pool_empty_goes_to_the_listener(self):
        """Two ports, four connections open at once: two are spliced at
        the SYN, the others through the listener, all served."""
        trace = ("request GET /static/1024?seed=1\n  expect length 1024\nthink 1500ms\n"
                 "request GET /static/1024?seed=2\n  expect length 1024\n")
        ds = [self.client(trace, name=f"client{i}") for i in range(4)]
        for d in ds:
            self.assert_ok(d)
        log = self.stack.log("proxy")
        self.assertEqual(len(re.findall(r"syn-spliced id=", log)), 2, log[-3000:])
        self.assertEqual(len(re.findall(r"accept id=", log)), 2, log[-3000:])
        self.assertEqual(set(re.findall(r"syn-spliced id=\d+ client=\S+ backend=\S+ port=(\d+)", log)),
                         {"62000", "62001"})


# A client that asks the server to close, reads to the server's FIN, then waits before it closes.
SERVER_CLOSES = ("import socket, sys, time; s = socket.create_connection((sys.argv[1], 80)); "
                 "s.sendall(b'GET /static/1024?seed=1 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'); "
                 "d = b''.join(iter(lambda: s.recv(65536), b'')); time.sleep(0.3); s.close(); "
                 "print(len(d), 'eof')")


class TestPortReturn(SynCase):
    proxy_args = ["--splice-at", "syn", "--syn-ports", "62000-62000", "--linger", "50ms"]

    def test_ports_come_back(self):
        """A port comes back when its connection is freed: at once where
        the client closed first; where the backend did, once a RST has
        ended the backend's TIME_WAIT on it.  One port: connections one
        after another, one of them closed by the server, are all spliced
        at the SYN, and the backend holds no TIME_WAIT from the proxy."""
        one = "request GET /static/1024?seed=1\n  expect length 1024\n"
        for i in range(5):
            if i == 3:      # the server closes; the client reads its FIN, and only then closes
                out = self.tb["c1"].cmd(f"{sys.executable} -c \"{SERVER_CLOSES}\" {SERVERS['proxy']}")
                self.assertIn("eof", out)
            else:
                self.assert_ok(self.client(one, name=f"seq{i}"))
            self.assertTrue(wait_until(lambda: self.stack.log("proxy").count("unsplice id=") > i, 10),
                            self.stack.log("proxy")[-2000:])
        log = self.stack.log("proxy")
        self.assertEqual(len(re.findall(r"syn-spliced id=\S+ client=\S+ backend=\S+ port=62000", log)), 5, log[-3000:])
        self.assertNotRegex(log, r"accept id=|syn-stale", "the port's TIME_WAIT on the backend was still there")
        self.assertEqual(self.stack.stats("proxy")["syn_time_waits_reset"], "1")
        tw = self.tb["primary"].cmd(f"ss -tan state time-wait dst {SERVERS['proxy']}")
        self.assertNotIn(":62000", tw)




class TestPortReused(SynCase):
    proxy_args = ["--splice-at", "syn", "--linger", "4s"]

    def prepare(self):
        self.tb["c1"].cmd("sysctl -qw net.ipv4.tcp_tw_reuse=1")

    def test_client_port_reused_while_its_old_connection_lingers(self):
        """A client whose TCP reuses a port in TIME_WAIT (after a second)
        while its ended connection's entry still lingers on the proxy: the
        new connection is spliced at the SYN too (the proxy removes the old
        entry and sends the SYN again), not through the listener, and the
        old connection's linger end leaves the new one's entry alone."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        out = self.tb["c1"].cmd(f"python3 {SAME_PORT} {SERVERS['proxy']} 40000 close 1.3 3.5")
        self.tb.stop_capture(cap)
        for step in ("first", "second", "third"):
            self.assertIn(f"{step}: 100000 bytes", out)
        log, st = self.assert_no_failover(pcap)
        self.assertEqual(len(re.findall(r"syn-spliced id=\d+ client=10\.0\.1\.1:40000 ", log)), 2, log[-3000:])
        self.assertNotIn("accept id=", log, "the new connection went to the listener")
        self.assertIn("syn-reused id=", log)
        self.assertEqual(st["syn_reused"], "1")
        self.assertEqual(pcap_count(pcap, "tcp[tcpflags] & tcp-syn != 0 and dst port 80"), 2,
                         "the client had to send a SYN again")


# From a client host: opens argv[2] connections to argv[1]:80 at once and
# gives them up after 0.5 s (its host drops the SYN-ACKs: half-open ones).
HALF_OPEN = ("import socket, sys, time; ss = [socket.socket() for _ in range(int(sys.argv[2]))]; "
             "[s.setblocking(False) or s.connect_ex((sys.argv[1], 80)) for s in ss]; time.sleep(0.5); "
             "[s.close() for s in ss]; print('opened', len(ss))")


class TestHalfOpen(SynCase):
    proxy_args = ["--splice-at", "syn", "--syn-ports", "62000-62009", "--syn-sweep", "1s"]

    def test_half_open_connections_give_their_ports_back(self):
        """Clients that never acknowledge the backend's SYN-ACK (a SYN
        flood) take every port of the pool; the sweep closes them (and
        resets the backend's half), the ports come back, and the next
        client is spliced at the SYN again."""
        c1 = self.tb["c1"]
        drop = f"INPUT -p tcp -s {SERVERS['proxy']} --tcp-flags SYN,ACK SYN,ACK -j DROP"
        c1.cmd(f"iptables -w -A {drop}")
        try:
            out = c1.cmd(f"{sys.executable} -c \"{HALF_OPEN}\" {SERVERS['proxy']} 10")
            self.assertIn("opened 10", out)
            self.assertTrue(wait_until(lambda: self.stack.log("proxy").count("syn-spliced id=") == 10, 5),
                            self.stack.log("proxy")[-3000:])
            self.assertTrue(wait_until(lambda: self.stack.log("proxy").count("reason=half-open") == 10, 5),
                            self.stack.log("proxy")[-3000:])
        finally:
            c1.cmd(f"iptables -w -D {drop}")
        self.assertEqual(self.stack.stats("proxy")["syn_half_open"], "10")
        self.assert_ok(self.client("request GET /static/1024?seed=1\n  expect length 1024\n"))
        # rs-proxy logs the take-on when it reads the quiet ring, which may
        # be after the client's response (it wakes nobody).
        self.assertTrue(wait_until(lambda: self.stack.log("proxy").count("syn-spliced id=") == 11, 5),
                        self.stack.log("proxy")[-3000:])
        self.assertNotIn("accept id=", self.stack.log("proxy"), "no port came back")


# From a client host: opens argv[2] connections to argv[1]:80, one request
# each, and keeps them open, idle, until killed.
IDLE = ("import socket, sys, time; ss = [socket.create_connection((sys.argv[1], 80)) for _ in range(int(sys.argv[2]))]; "
        "[s.sendall(b'GET /static/100?seed=1 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n') for s in ss]; "
        "[s.recv(65536) for s in ss]; print('idle', len(ss), flush=True); time.sleep(60)")


class TestReap(SynCase):
    proxy_args = ["--splice-at", "syn", "--idle", "10s"]

    def test_idle_connections_reaped_in_time(self):
        """Connections idle for --idle are closed: read by the reap a slice
        at a time (here each one every second), none before its time and
        none much after it."""
        d = self.tb.start("c1", "idle", [sys.executable, "-c", IDLE, SERVERS["proxy"], "20"])
        self.assertTrue(wait_until(lambda: "idle 20" in d.output(), 10), d.output() + open(d.err).read())
        t_idle = time.time()
        self.assertTrue(wait_until(lambda: self.stack.log("proxy").count("reason=idle") == 20, 15),
                        self.stack.log("proxy")[-3000:])
        closes = [float(l.split()[0]) for l in self.stack.log("proxy").splitlines() if "reason=idle" in l]
        print(f"\nidle closes {min(closes) - t_idle:.2f}-{max(closes) - t_idle:.2f} s after the last byte")
        self.assertGreaterEqual(min(closes) - t_idle, 9.9)
        self.assertLess(max(closes) - t_idle, 12)
        self.assertEqual(self.stack.stats("proxy")["reaped_idle"], "20")
        d.popen.kill()


class TestRestart(SynCase):
    def test_restarted_proxy_adopts_and_protects(self):
        """A connection spliced at the SYN survives a SIGKILL of rs-proxy
        and the primary's crash after it: the next proxy adopts it (its
        port stays out of the pool), and new connections get new ids."""
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                        f"request GET {STREAM}\n  expect content seed=0\n"
                        "request POST /counter\n  expect contains \"counter=2\"\n")
        self.assertTrue(wait_until(lambda: file_contains(d.err, "step=0 response"), 10), open(d.err).read()[-2000:])
        taken = rf"syn-spliced id={SYN_ID} client=\S+ backend=\S+ port=(\d+)"   # (read within 100 ms)
        self.assertTrue(wait_until(lambda: re.search(taken, self.stack.log("proxy")), 2), self.stack.log("proxy"))
        old = self.stack.log("proxy")
        port = re.search(taken, old).group(1)
        self.tb.kill(self.stack.d["proxy"])
        self.stack.start_proxy("proxy-restarted")
        log = self.stack.log("proxy")
        self.assertIn("adopted 1 spliced connections", log, old[-2000:] + log[-2000:])
        time.sleep(0.3)
        new = self.client("request GET /static/1024?seed=3\n  expect length 1024\n", name="new")
        self.assert_ok(new)
        self.assertFalse(file_contains(d.err, "step=1 response"), "the stream ended before the crash")
        self.stack.kill_primary()
        self.assert_ok(d)
        self.tb.stop_capture(cap)
        self.assertEqual(pcap_count(pcap, "tcp[tcpflags] & tcp-rst != 0"), 0, "the client saw a RST")
        log = self.stack.log("proxy")
        self.assertRegex(log, rf"recovered id={SYN_ID} ")
        m = re.search(r"syn-spliced id=(\d+) client=\S+ backend=\S+ port=(\d+)", log)
        self.assertIsNotNone(m, log[-3000:])
        self.assertGreater(int(m.group(1)), SYN_ID)
        self.assertNotEqual(m.group(2), port, "the adopted connection's port was given out again")


class TestRefused(unittest.TestCase):
    def test_options_that_cannot_go_with_it(self):
        base = [binary("rs-proxy"), "--listen", "127.0.0.1:8080", "--backend", "127.0.0.1:9000"]
        for extra, why in ((["--backend", "127.0.0.1:9001"], "one --backend"),
                           (["--datapath", "kmod"], "ebpf data path"),
                           (["--sticky", "sid"], "not --sticky"),
                           (["--no-splice"], "or --no-splice")):
            r = subprocess.run(base + ["--splice-at", "syn"] + extra, capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(why, r.stderr)
        for bad in ("--splice-at=connect", "--syn-ports=9-8", "--syn-ports=0-10", "--syn-ports=1-70000"):
            r = subprocess.run(base + [bad], capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, bad + r.stderr)


if __name__ == "__main__":
    unittest.main()
