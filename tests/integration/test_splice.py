"""Integration tests of the splice data path (issue 4): rs-proxy hands each
client connection to a backend and splices it with the tc program; the
client's bytes must arrive exactly, the proxy's sockets must leave the path,
FIN/RST must end the splice, and a live re-splice must move a connection to
another server between transactions."""
import csv as csvmod
import os
import re
import subprocess
import tempfile
import time
import unittest

from emul.places import APP_PORT, PROXY_CTL, ROOT, VIP_PORT, binary, proxy_datapath, write_key
from emul.shaping import wait_until
from emul.testbed import Testbed, leftovers, pcap_count
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo, client_ip
from topologies.profiles import Profile

PROXY, PRIMARY, ALTERNATE = SERVERS["proxy"], SERVERS["primary"], SERVERS["alternate"]
VIP = f"{PROXY}:{VIP_PORT}"


@needs_root
class TestProgram(unittest.TestCase):
    """The tc program rs-proxy embeds, under BPF_PROG_TEST_RUN, translates
    as core/splice.h does (tests/bpf/test_splice_prog.c)."""

    def test_program_matches_core(self):
        r = subprocess.run([binary(os.path.join("tests", "test_splice_prog"))], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(ROOT, "tests", "bpf", "test_splice_prog.c")) as f:
            n = f.read().count("cmocka_unit_test(")
        self.assertIn(f"{n} test(s) run", r.stdout + r.stderr)     # every case ran
        self.assertNotIn("FAILED", r.stdout + r.stderr)


@needs_root
class SpliceCase(unittest.TestCase):
    profile = None

    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-splice-")
        self.dir = self.tmp.name
        self.key = os.path.join(self.dir, "key.hex")
        write_key(self.key)
        self.tb = Testbed(LanTopo(profile=self.profile), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.addCleanup(self.tb.__exit__, None, None, None)    # also when a test's set-up fails

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def app(self, host, name=None):
        return self.tb.start(host, name or f"app-{host}",
                             [binary("rs-app"), "--listen", f"0.0.0.0:{APP_PORT}", "--id", host],
                             ready="listening")

    def proxy(self, *extra, backends=(PRIMARY,)):
        # The splice made at the request (test_splice_syn has the SYN's).
        argv = [binary("rs-proxy"), "--listen", VIP, "--control", f"{PROXY}:{PROXY_CTL}", "--key", self.key,
                "--splice-at", "request"]
        for b in backends:
            argv += ["--backend", f"{b}:{APP_PORT}"]
        return self.tb.start("proxy", "proxy", argv + proxy_datapath() + list(extra), ready="listening")

    def client(self, trace, name="client", *extra, wait=True, timeout=60):
        path = os.path.join(self.dir, f"{name}.trace")
        with open(path, "w") as f:
            f.write(trace)
        csv = os.path.join(self.dir, f"{name}.csv")
        d = self.tb.start("c1", name, [binary("rs-client"), "--server", VIP, "--trace", path,
                                       "--csv", csv] + list(extra))
        if wait:
            d.popen.wait(timeout)
        return d, csv

    def log(self, d):
        return open(d.err).read()

    def summary(self, d):
        m = re.search(r"^summary: (.*)$", d.output(), re.M)
        self.assertIsNotNone(m, f"no summary from {d.name}: {d.output()} {self.log(d)}")
        return dict(kv.split("=", 1) for kv in m.group(1).split())

    def ctl_resplice(self, client_port, target, q=None, r=None):
        argv = [binary("rs-ctl"), "--to", f"{PROXY}:{PROXY_CTL}", "--key", self.key, "resplice",
                "--client", f"{client_ip(0)}:{client_port}", "--vip", VIP, "--target", target]
        if q is not None:
            argv += ["--q", str(q), "--r", str(r)]
        return self.tb["logger"].cmd(" ".join(argv))


class TestSplice(SpliceCase):
    def test_download_exact_and_sockets_leave(self):
        self.app("primary")
        px = self.proxy()
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        # The think time gives the proxy its quiet moment to splice in: on an
        # idle machine all four requests can otherwise pass in 12 ms of
        # relaying with no pause long enough (the splice polls every 5 ms).
        d, _ = self.client("request GET /static/5000000?seed=3\n"
                           "  expect status 200\n  expect length 5000000\n  expect content seed=3\n"
                           "think 50ms\n"
                           "request GET /static/1000?seed=4\n  expect content seed=4\n"
                           "request POST /counter\n  expect contains \"counter=1\"\n"
                           "request POST /counter\n  expect contains \"counter=2\"\n")
        self.assertEqual(d.popen.returncode, 0, d.output() + self.log(d))
        s = self.summary(d)
        self.assertEqual((s["ok"], s["errors"]), ("4", "0"))
        log = self.log(px)
        self.assertEqual(len(re.findall(r" splice id=", log)), 1, log)
        # The proxy holds no socket of the spliced connection (closed 100 ms
        # after the splice, quiet meanwhile: a fast client can be done first).
        def gone():
            ss = self.tb["proxy"].cmd("ss -tan state established")
            return client_ip(0) not in ss and PRIMARY not in ss
        self.assertTrue(wait_until(gone, 2), self.tb["proxy"].cmd("ss -tan state established"))
        # The connection ended through the splice: both FINs, then unsplice.
        self.assertTrue(wait_until(lambda: "unsplice id=1" in self.log(px), 10), self.log(px))
        self.assertRegex(self.log(px), r"unsplice id=1 .* errors=0 dropped=0")
        self.tb.stop_capture(cap)
        self.assertEqual(pcap_count(pcap, "tcp[tcpflags] & tcp-rst != 0"), 0, "the client saw a RST")

    def test_many_connections(self):
        self.app("primary")
        px = self.proxy()
        d, _ = self.client("request GET /static/20000?seed=9\n  expect content seed=9\n"
                           "request POST /counter\n  expect status 200\n",
                           "many", "--connections", "40", "--repeat", "1", timeout=120)
        s = self.summary(d)
        self.assertEqual(s["errors"], "0", d.output() + self.log(d))
        self.assertEqual(s["ok"], "80")
        self.assertEqual(len(re.findall(r" splice id=", self.log(px))), 40)
        # Its backend ports: 40 different ones, all of the parity the
        # kernel's bind(0) takes, so no connect() from the proxy's host
        # (the other parity) lands on a 4-tuple whose splice outlived its
        # socket.
        ports = [int(x) for x in re.findall(r"connect id=\d+ .* local=[\d.]+:(\d+)", self.log(px))]
        low = int(self.tb["proxy"].cmd("sysctl -n net.ipv4.ip_local_port_range").split()[0])
        self.assertEqual(len(set(ports)), 40, ports)
        self.assertEqual({p % 2 for p in ports}, {(low + 1) % 2}, ports)
        # 80 POSTs reached one counter: every update applied once.
        out = self.tb["c1"].cmd(f"curl -s http://{VIP}/counter")
        self.assertIn("counter=40", out)

    def test_spliced_connections_keep_no_buffers(self):
        """A spliced connection lingers for seconds after its end; the 64 KB
        buffer its request was read into is freed once the request is out,
        so a thousand short connections do not grow the proxy's heap by
        64 MB (it grew by 64 MB before)."""
        self.app("primary")
        px = self.proxy()

        def data_kb():
            with open(f"/proc/{px.pid}/status") as f:
                return int(re.search(r"VmData:\s+(\d+)", f.read()).group(1))

        self.client("request GET /static/1000?seed=1\n  expect content seed=1\n", "warm")
        before = data_kb()
        d, _ = self.client("request GET /static/1000?seed=1\n  expect content seed=1\n", "short",
                           "--repeat", "1000", timeout=120)
        self.assertEqual(self.summary(d)["errors"], "0", d.output() + self.log(d))
        self.assertGreaterEqual(len(re.findall(r" splice id=", self.log(px))), 1001)
        grown = data_kb() - before
        self.assertLess(grown, 16 * 1024, f"the proxy's heap grew by {grown} KB over 1000 connections")

    def test_sticky_cookie_picks_one_backend(self):
        self.app("primary")
        self.app("alternate")
        self.proxy("--sticky", "sid", backends=(PRIMARY, ALTERNATE))
        for _ in range(6):
            self.tb["c1"].cmd(f"curl -s -b sid=alice -X POST http://{VIP}/counter")
        counts = [self.tb[h].cmd(f"curl -s http://127.0.0.1:{APP_PORT}/counter").strip()
                  for h in ("primary", "alternate")]
        self.assertIn("counter=6", counts, counts)
        self.assertIn("counter=0", counts, counts)
        # Round-robin without the cookie spreads connections.
        for _ in range(4):
            self.tb["c1"].cmd(f"curl -s -X POST http://{VIP}/counter")
        counts2 = [self.tb[h].cmd(f"curl -s http://127.0.0.1:{APP_PORT}/counter").strip()
                   for h in ("primary", "alternate")]
        self.assertNotEqual(sorted(counts2), sorted(["counter=10", "counter=0"]), counts2)

    def test_backend_reset_ends_splice(self):
        self.app("primary")
        px = self.proxy()
        d, _ = self.client("request GET /slow?bytes=200000&chunk=1000&delay=20ms\n  expect status 200\n",
                           "slow", "--timeout", "20s", wait=False)
        self.assertTrue(wait_until(lambda: " splice id=1" in self.log(px), 10))
        time.sleep(0.3)
        app = [x for x in self.tb.daemons if x.name == "app-primary"][0]
        self.tb.kill(app)
        d.popen.wait(30)
        # Without recovery (next issue) the client sees the backend's end of
        # the connection, passed through the splice, and says so.
        self.assertNotEqual(d.popen.returncode, 0)
        self.assertRegex(d.output() + self.log(d), r"reset|eof")
        self.assertTrue(wait_until(lambda: re.search(r"(fin|rst) id=1 from=10.0.0.11", self.log(px)), 5),
                        self.log(px))


class TestSpliceLossy(SpliceCase):
    profile = Profile("lossy", 10, 0, 0.02)

    def test_download_exact_with_loss(self):
        self.app("primary")
        px = self.proxy()
        d, _ = self.client("request GET /static/5000000?seed=5\n  expect content seed=5\n"
                           "  expect length 5000000\n", timeout=120)
        self.assertEqual(d.popen.returncode, 0, d.output() + self.log(d))
        self.assertTrue(wait_until(lambda: "unsplice id=1" in self.log(px), 10), self.log(px))
        self.assertRegex(self.log(px), r"splice id=1 .* sack=1")
        self.assertRegex(self.log(px), r"unsplice id=1 .* errors=0")


class TestResplice(SpliceCase):
    def test_resplice_between_transactions(self):
        self.app("primary")
        self.app("alternate")
        px = self.proxy()
        d, csv = self.client("request POST /counter\n  expect contains \"counter=1\"\n"
                             "request POST /counter\n  expect contains \"counter=2\"\n"
                             "think 1500ms\n"
                             "request POST /counter\n  expect contains \"counter=1\"\n"
                             "request GET /static/3000000?seed=7\n  expect content seed=7\n",
                             wait=False)
        self.assertTrue(wait_until(lambda: re.search(r"accept id=1 client=[\d.]+:(\d+)", self.log(px)), 10))
        port = re.search(r"accept id=1 client=[\d.]+:(\d+)", self.log(px)).group(1)
        time.sleep(0.5)
        out = self.ctl_resplice(port, f"{ALTERNATE}:{APP_PORT}")
        self.assertIn("status=0", out)
        d.popen.wait(30)
        self.assertEqual(d.popen.returncode, 0, d.output() + self.log(d))
        # One TCP connection throughout (one local port in the CSV).
        with open(csv) as f:
            ports = {row["local_port"] for row in csvmod.DictReader(f)}
        self.assertEqual(len(ports), 1, ports)
        self.assertIn("resplice id=1", self.log(px))

    def test_forged_control_message_rejected(self):
        self.app("primary")
        px = self.proxy()
        bad = os.path.join(self.dir, "bad.hex")
        write_key(bad)
        out = self.tb["logger"].cmd(f"{binary('rs-ctl')} --to {PROXY}:{PROXY_CTL} --key {bad} resplice "
                                    f"--client {client_ip(0)}:1234 --vip {VIP} --target {ALTERNATE}:{APP_PORT}")
        self.assertNotIn("status=0", out)
        self.assertTrue(wait_until(lambda: "rejected message" in self.log(px), 5))
        out = self.ctl_resplice(1234, f"{ALTERNATE}:{APP_PORT}")
        self.assertIn("No such file", out)   # -ENOENT: no such connection, but authenticated


if __name__ == "__main__":
    unittest.main()
