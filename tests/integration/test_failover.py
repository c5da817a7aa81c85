"""End-to-end failover (issue 5): the primary backend crashes — its process
killed, or its host taken down — and the client's connection survives on
the alternate: same 4-tuple, no RST/FIN, every response byte exactly once
and as a crash-free run returns it, every update applied exactly once."""
import csv
import os
import re
import signal
import tempfile
import time
import unittest

from emul.shaping import wait_until
from emul.places import binary
from emul.stack import Stack
from emul.testbed import Testbed, file_contains, leftovers, pcap_count
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo
from topologies.profiles import Profile

SLOW = "/slow?bytes=400000&chunk=8000&delay=20ms"   # 50 chunks, ~1 s: a crash lands mid-response
# The ...Request cases: rs-proxy spliced at the request (the default splices at the SYN).
REQUEST = {"proxy_args": ["--splice-at", "request"]}


@needs_root
class FailoverCase(unittest.TestCase):
    profile = None

    @property
    def first_id(self):
        """rs-proxy's id of the first connection (the tc program's at the SYN)."""
        return self.stack.first_id()

    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-failover-")
        self.dir = self.tmp.name
        self.tb = Testbed(LanTopo(profile=self.profile), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.addCleanup(self.tb.__exit__, None, None, None)    # also when the stack fails to start
        self.stack = Stack(self.tb, self.dir, **getattr(self, "stack_args", {})).start()
        self.client_log = os.path.join(self.dir, "run", "client.err")

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def run_client(self, trace, crash_after_step, crash, delay=0.4, timeout=60):
        """Runs 'trace' and calls crash() 'delay' s after step 'crash_after_step'
        answered.  Returns (client daemon, csv rows, crash time)."""
        path = os.path.join(self.dir, "t.trace")
        with open(path, "w") as f:
            f.write(trace)
        out = os.path.join(self.dir, "c.csv")
        self.cap, self.pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.tb.start("c1", "client", [binary("rs-client"), "--server", self.stack.vip, "--trace", path,
                                           "--csv", out, "--timeout", "10s"])
        marker = f"step={crash_after_step} response"
        h = self.tb.crash_when(lambda: file_contains(d.err, marker),
                               lambda: (time.sleep(delay), crash())[1], timeout=30)
        d.popen.wait(timeout)
        self.tb.stop_capture(self.cap)
        with open(out) as f:
            rows = list(csv.DictReader(f))
        return d, rows, h.result

    def crash_mid_stream(self):
        """An update, a slow download the primary's crash cuts, an update,
        transparent to the client.  Returns the client ("IP:port") and the
        primary application's log."""
        d, rows, _ = self.run_client(
            "request POST /counter\n  expect contains \"counter=1\"\n"
            f"request GET {SLOW}\n  expect content seed=0\n"
            "request POST /counter\n  expect contains \"counter=2\"\n",
            crash_after_step=0, crash=self.stack.kill_primary)
        self.assert_transparent(d, rows)
        return f"10.0.1.1:{rows[0]['local_port']}", self.stack.log("app-primary")

    def assert_transparent(self, d, rows):
        log = open(d.err).read()
        self.assertEqual(d.popen.returncode, 0, d.output() + log + self.stack.log("proxy")[-3000:])
        self.assertEqual({r["result"] for r in rows}, {"ok"})
        self.assertEqual(len({r["local_port"] for r in rows}), 1, "the client had to reconnect")
        self.assertEqual(pcap_count(self.pcap, "tcp[tcpflags] & tcp-rst != 0"), 0, "the client saw a RST")
        self.assertRegex(self.stack.log("proxy"), rf"recovered id={self.first_id} ")


class TestProcessCrash(FailoverCase):
    def test_mid_response(self):
        d, rows, _ = self.run_client(
            "request POST /counter\n  expect contains \"counter=1\"\n"
            "request POST /counter\n  expect contains \"counter=2\"\n"
            f"request GET {SLOW}\n  expect length 400000\n  expect content seed=0\n"
            "request POST /counter\n  expect contains \"counter=3\"\n"
            "request GET /counter\n  expect contains \"counter=3\"\n",
            crash_after_step=1, crash=self.stack.kill_primary)
        self.assert_transparent(d, rows)

    def test_between_transactions(self):
        d, rows, _ = self.run_client(
            "request POST /counter\n  expect contains \"counter=1\"\n"
            "request POST /counter\n  expect contains \"counter=2\"\n"
            "think 800ms\n"
            "request POST /counter\n  expect contains \"counter=3\"\n"
            "request GET /static/2000000?seed=4\n  expect content seed=4\n",
            crash_after_step=1, crash=self.stack.kill_primary, delay=0.2)
        self.assert_transparent(d, rows)

    def test_nondeterministic_token(self):
        d, rows, _ = self.run_client(
            "request GET /token\n  capture t body \"token=([0-9a-f]+)\"\n"
            f"request GET {SLOW}\n  expect content seed=0\n"
            "request POST /counter\n  expect contains \"counter=1\"\n",
            crash_after_step=0, crash=self.stack.kill_primary)
        self.assert_transparent(d, rows)


class TestProcessCrashMapped(TestProcessCrash):
    """The same with rs-proxy --identity map: the backend learns whose
    requests a new connection carries from a CONN_MAP through rs-stated
    before the connect, not from a PROXY protocol v2 header."""
    stack_args = {"proxy_args": ["--identity", "map", "--splice-at", "request"]}

    def test_named_by_map(self):
        d, rows, _ = self.run_client("request POST /counter\n  expect contains \"counter=1\"\n"
                                     f"request GET {SLOW}\n  expect content seed=0\n",
                                     crash_after_step=0, crash=self.stack.kill_primary)
        self.assert_transparent(d, rows)
        client = f"10.0.1.1:{rows[0]['local_port']}"
        self.assertRegex(self.stack.log("app-primary"), rf"conn-mapped \S+ client={client} next=0")
        self.assertNotIn("conn-named", self.stack.log("app-primary"))


class TestSynIdentity(FailoverCase):
    """Spliced at the SYN (the default; TestProcessCrash's cases run so,
    this one even under RS_SPLICE_AT=request): the tc program splices each
    new connection at the client's SYN, names the client in the SYN (the
    backend reads it with TCP_SAVED_SYN), and the proxy takes the
    connection on from the backend's SYN-ACK: its recovery starts from the
    record made of the two SYNs."""
    stack_args = {"proxy_args": ["--splice-at", "syn"]}

    def test_named_by_syn(self):
        client, app = self.crash_mid_stream()
        self.assertRegex(app, rf"conn-named \S+ client={client} \(SYN option\)")
        self.assertNotIn("PROXY header", app)
        self.assertRegex(self.stack.log("proxy"), rf"syn-spliced id={self.first_id} client={client} ")
        self.assertNotRegex(self.stack.log("proxy"), r"accept id=")
        self.assertRegex(self.stack.log("stated-alternate"), rf"update {client}#0 ")
        self.assertRegex(self.stack.log("logger"), rf"txn-logged id={client}#0 ")
        self.assertRegex(self.stack.log("app-alternate"), rf"conn-mapped \S+ client={client} next=[12] rerun")


class TestIdentity(FailoverCase):
    stack_args = REQUEST      # the PROXY header is the request path's

    def test_named_by_header(self):
        """Spliced at its request (--identity header, the default there), a
        new connection tells the backend whose requests it carries with a
        PROXY protocol v2 header."""
        client, app = self.crash_mid_stream()
        self.assertRegex(app, rf"conn-named \S+ client={client} \(PROXY header\)")
        self.assertNotIn("conn-mapped", app, "the first connection needed no CONN_MAP")
        self.assertNotRegex(self.stack.log("stated-primary"), r"conn-map peer=")
        # The states went out named as the logger names the transactions.
        self.assertRegex(self.stack.log("stated-alternate"), rf"update {client}#0 ")
        self.assertRegex(self.stack.log("logger"), rf"txn-logged id={client}#0 ")
        # The recovery's move to the alternate still maps (a rerun from #1 on).
        self.assertRegex(self.stack.log("app-alternate"), rf"conn-mapped \S+ client={client} next=[12] rerun")


class TestLaggingState(FailoverCase):
    """The alternate is behind (its state updates are stuck on the primary):
    TA < TL, so the logger applies what the alternate has and replays the
    update transactions [TR, TL] before TL+1 (seed §4.3 step 3)."""

    def setUp(self):
        self.stack_args = {"dead_after": "3s"}   # the stuck rs-stated sends no heartbeats
        super().setUp()

    def test_replay_updates(self):
        stated = self.stack.d["stated-primary"]
        state = {"stopped": False}

        def stop_then_crash():
            stated.popen.send_signal(signal.SIGSTOP)   # updates 2 and 3 stay on the primary
            state["stopped"] = True
            time.sleep(0.05)
        # Updates 0 and 1 reached the alternate (they go asynchronously: the
        # client may see response 1 before its state left the primary).
        self.tb.crash_when(lambda: file_contains(self.client_log, "step=1 response")
                           and re.search(r"update \S+#1 ", self.stack.log("stated-alternate")), stop_then_crash)
        try:
            d, rows, _ = self.run_client(
                "request POST /counter\n  expect contains \"counter=1\"\n"
                "request POST /counter\n  expect contains \"counter=2\"\n"
                "think 300ms\n"
                "request POST /counter\n  expect contains \"counter=3\"\n"
                "request POST /counter\n  expect contains \"counter=4\"\n"
                "think 300ms\n"
                "request POST /counter\n  expect contains \"counter=5\"\n"
                "request GET /counter\n  expect contains \"counter=5\"\n",
                crash_after_step=3, crash=self.stack.kill_primary, delay=0.1)
        finally:
            stated.popen.send_signal(signal.SIGCONT)
        self.assertTrue(state["stopped"])
        self.assert_transparent(d, rows)
        self.assertRegex(self.stack.log("proxy"), r"step=plan status=0 tl=3 tsp=4 tr=2 replayed=2 ")


class TestLegitClose(FailoverCase):
    def test_connection_close_passes(self):
        d, rows, _ = self.run_client(
            "request POST /counter\n  expect contains \"counter=1\"\n"
            "request GET /static/3000?seed=2\n  header Connection: close\n  expect content seed=2\n",
            crash_after_step=5, crash=lambda: None, timeout=20)
        self.assertEqual(d.popen.returncode, 0, d.output() + open(d.err).read())
        # The application's FIN reached the client: held, confirmed by the
        # logger (its word, or a RECOVER's plan) and released.
        self.assertTrue(wait_until(lambda: f"unsplice id={self.first_id} " in self.stack.log("proxy"), 10),
                        self.stack.log("proxy"))
        log = self.stack.log("proxy")
        self.assertNotIn("recovered id=", log)
        self.assertNotIn("unrecoverable", log)
        self.assertTrue("step=legit-close" in log or "meant (the logger's word)" in log, log)
        if "step=hold" in log:
            self.assertIn("step=legit-close", log)
        self.assertRegex(self.stack.log("proxy"),
                         rf"fin id={self.first_id} from={re.escape(SERVERS['primary'])}:\d+ client=\S+ backend=\S+ seq=")


class TestWanCrash(FailoverCase):
    """Over a 60 ms path the client has not acknowledged what the logger
    logged when the primary dies: the logger resends it (seed §4.3 step 2)."""
    profile = Profile("wan", 60, 0, 0)

    def test_resend_from_log(self):
        # Usually a full window is in flight when the kill lands (0.3 s into
        # the download's slow start), but a sender that had nothing in
        # flight at that moment (seen once in CI: the client had acknowledged
        # every logged byte) leaves nothing to resend.  Such a trial must
        # still be transparent; then the next one is tried, up to five.
        # The plan never waits for response bytes the log lacks: the
        # proxy's RECOVER counted as sent to the client segments its HOLD
        # dropped (the backend's kernel sends on after its process died),
        # and the logger waited half its budget, ~390 ms, for them, while
        # the client acknowledged everything (4 trials in 8, session 44).
        for attempt in range(5):
            if attempt:
                self.stack.stop()
                self.stack.start()
            d, rows, _ = self.run_client(
                "request POST /counter\n  expect contains \"counter=1\"\n"
                "request GET /static/30000000?seed=9\n  expect length 30000000\n  expect content seed=9\n"
                "request POST /counter\n  expect contains \"counter=2\"\n",
                crash_after_step=0, crash=self.stack.kill_primary, delay=0.3, timeout=90)
            self.assert_transparent(d, rows)
            self.assertNotIn("the log still lacks response bytes", self.stack.log("logger"))
            log = self.stack.log("proxy")
            plan = re.search(r"step=plan status=0 .* resend=\[(\d+),(\d+)\)", log)
            self.assertIsNotNone(plan, log[-2000:])
            unacked = (int(plan.group(2)) - int(plan.group(1))) % 2**32
            if unacked:
                break
        self.assertGreater(unacked, 0, "the client had acknowledged every logged byte in five trials")
        self.assertRegex(log, rf"step=resent bytes={unacked} ")


class TestHostCrash(FailoverCase):
    def test_host_down_mid_response(self):
        d, rows, t_crash = self.run_client(
            "request POST /counter\n  expect contains \"counter=1\"\n"
            f"request GET {SLOW}\n  expect content seed=0\n"
            "request POST /counter\n  expect contains \"counter=2\"\n",
            crash_after_step=0, crash=self.stack.primary_down)
        self.assert_transparent(d, rows)
        # Detected by missing heartbeats, not by a FIN or RST.
        self.assertRegex(self.stack.log("proxy"), r"failure backend_id=1 .*why=heartbeat-timeout")



class TestHostCrashRequest(TestHostCrash):
    """The primary's host down under a connection spliced at its request."""
    stack_args = REQUEST


class TestWanCrashRequest(TestWanCrash):
    """The logger resends what a WAN client lacks, on a connection spliced
    at its request."""
    stack_args = REQUEST


class TestLegitCloseRequest(TestLegitClose):
    stack_args = REQUEST


if __name__ == "__main__":
    unittest.main()
