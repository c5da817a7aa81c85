"""Integration tests of rs-logger's capture by a tc program (--capture ebpf,
logger/capture_ebpf.c; the default for live capture): the program under
BPF_PROG_TEST_RUN (tests/bpf/test_capture_prog.c); on the LAN testbed, the
default logger's log byte for byte the same as a libpcap logger's beside it
on the same mirror port; the mirror's copies dropped in tc while the
host's own traffic (to the VIP too) passes; the fallback to libpcap
without BPF permission (one line), an explicit --capture ebpf failing
instead, a bad --iface's one clear error; a SIGKILLed logger's filter
replaced by its successor's (one filter on the interface), and none left
after a clean stop.  test_logger.py runs its live cases over both sources."""
import os
import re
import signal
import subprocess
import time
import unittest

from emul.places import LOGGER_CTL, LOGGER_RESEND, ROOT, VIP_PORT, binary
from emul.shaping import wait_until
from tests.integration.harness import needs_root
from tests.integration.test_logger import LOGGER, PROXY, STEPS, TRACE, VIP, LoggerCase, kv

IFACE = "logger-eth0"
# Without CAP_BPF and CAP_SYS_ADMIN no BPF map or program can be made
# (unprivileged BPF is off); CAP_NET_RAW and CAP_NET_ADMIN stay: libpcap's.
NO_BPF = ("setpriv", "--bounding-set", "-bpf,-sys_admin,-perfmon", "--")


@needs_root
class TestCaptureProgram(unittest.TestCase):
    """The tc program rs-logger embeds, under BPF_PROG_TEST_RUN."""

    def test_program(self):
        r = subprocess.run([binary(os.path.join("tests", "test_capture_prog"))], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(ROOT, "tests", "bpf", "test_capture_prog.c")) as f:
            n = f.read().count("cmocka_unit_test_teardown(")
        self.assertIn(f"{n} test(s) run", r.stdout + r.stderr)     # every case ran
        self.assertNotIn("FAILED", r.stdout + r.stderr)


class CaptureCase(LoggerCase):
    def filters(self):
        """The tc filters at the logger port's ingress: [(pref, prog id)]."""
        out = self.tb["logger"].cmd(f"tc filter show dev {IFACE} ingress")
        return [(int(m.group(1)), int(m.group(2)))
                for m in re.finditer(r"pref (\d+) bpf chain \d+ handle \S+ .* id (\d+)", out)]

    def stats(self, d):
        n = d.output().count("stats ")
        d.popen.send_signal(signal.SIGUSR1)
        self.assertTrue(wait_until(lambda: d.output().count("stats ") > n, 5))
        return kv([l for l in d.output().splitlines() if l.startswith("stats ")][-1])

    def logged(self, d):
        """The logger's txn-logged lines: [(id, req range, resp range)]."""
        return re.findall(r"txn-logged id=(\S+) .*(req=\[\d+,\d+\)) (resp=\[\d+,\d+\))", self.log(d))

    def serve(self):
        self.app("primary")
        self.proxy()


class TestCaptureLive(CaptureCase):
    def test_default_logs_as_pcap(self):
        """The default logger (the tc program) and a libpcap one beside it on
        the same mirror port log the same transactions, the same bytes."""
        self.serve()
        dump_e, dump_p = os.path.join(self.dir, "dump-ebpf"), os.path.join(self.dir, "dump-pcap")
        pc = self.logger("--dump", dump_p, name="logger-pcap", ctl=LOGGER_CTL + 10, resend=LOGGER_RESEND + 10,
                         source="pcap")
        eb = self.logger("--dump", dump_e)
        self.assertRegex(self.log(eb), rf"capture ebpf on {IFACE}: tc ingress filter \(handle 1 prio 2\)")
        self.assertEqual(len(self.filters()), 1, self.filters())
        self.client(TRACE)
        n = len(STEPS)
        self.assertTrue(wait_until(lambda: len(self.logged(eb)) == n and len(self.logged(pc)) == n, 10),
                        self.log(eb)[-2000:] + self.log(pc)[-2000:])
        time.sleep(0.3)
        self.assertEqual(self.logged(eb), self.logged(pc))
        se, sp = self.stats(eb), self.stats(pc)
        for s in (se, sp):
            self.assertEqual((s["txns_logged"], s["dropped"], s["incomplete"], s["not_loggable"], s["truncated"]),
                             (str(n), "0", "0", "0", "0"), s)
        # Every segment both saw, the tc program as one record each.
        self.assertEqual(se["packets"], se["received"])
        self.assertEqual(se["packets"], sp["packets"])
        names = sorted(os.listdir(dump_e))
        self.assertEqual(names, sorted(os.listdir(dump_p)))
        self.assertEqual(len(names), 2, names)      # one connection: .req and .resp
        for name in names:
            with open(os.path.join(dump_e, name), "rb") as a, open(os.path.join(dump_p, name), "rb") as b:
                self.assertTrue(a.read() == b.read(), f"{name} differs")
        self.assertGreater(os.path.getsize(os.path.join(dump_e, names[1])), 2000000)

    def test_copies_dropped_own_traffic_passes(self):
        """The mirror's copies of the VIP's segments end in tc (counted as the
        clsact qdisc's drops); the logger host's own connections, to the VIP
        too, are served as before."""
        self.serve()
        lg = self.logger()
        self.client("request GET /static/1000000?seed=4\n  expect content seed=4\n")
        time.sleep(0.3)
        out = self.tb["logger"].cmd(f"tc -s qdisc show dev {IFACE}")
        m = re.search(r"qdisc clsact .*?dropped (\d+)", out, re.S)
        # At least one copy per 64 KB of the 1 MB response (veth hands GSO
        # super-packets over whole: a busy machine makes fewer, larger ones;
        # 73 were seen with make test's load).
        self.assertTrue(m and int(m.group(1)) >= 16, out)
        before = self.stats(lg)
        self.assertEqual(before["not_loggable"], "0", before)
        # The logger host as a client of the VIP: the segments it receives
        # are copied (addressed to it) but not dropped, and the download
        # completes.  (The program sits at ingress only: the host's own
        # SYN goes out unseen, so the connection is not loggable, mid-stream:
        # a mirror port carries no connection of its own host.)
        r = self.tb["logger"].cmd(f"curl -s -m 10 -o /dev/null -w '%{{http_code}} %{{size_download}}' "
                                  f"http://{PROXY}:{VIP_PORT}/static/300000?seed=5")
        self.assertEqual(r.strip(), "200 300000")
        self.assertIn(" 0% packet loss", self.tb["logger"].cmd(f"ping -c 2 -W 1 {PROXY}"))
        s = self.stats(lg)
        self.assertEqual((s["dropped"], s["incomplete"], s["nl_midstream"]), ("0", "0", "1"), s)
        self.assertGreater(int(s["received"]), int(before["received"]) + 10)
        self.assertEqual(len(self.logged(lg)), 1)

    def test_killed_logger_replaced_then_clean_stop(self):
        """A SIGKILLed logger's filter stays (tc filters outlive their
        process); its successor's replaces it: one filter, the successor's,
        which logs.  A clean stop (SIGTERM) leaves none."""
        self.serve()
        first = self.logger(name="logger1")
        (pref, old), = self.filters()
        self.assertEqual(pref, 2)
        self.tb.kill(first)
        first.popen.wait(5)
        self.assertEqual(self.filters(), [(2, old)], "the killed logger's filter is gone")
        second = self.logger(name="logger2")
        self.assertIn(f"replaced the filter a previous rs-logger left (program {old})", self.log(second))
        (pref, new), = self.filters()
        self.assertNotEqual(new, old)
        self.client("request GET /static/200000?seed=6\n  expect content seed=6\n")
        self.assertTrue(wait_until(lambda: len(self.logged(second)) == 1, 5), self.log(second))
        self.assertEqual(self.stats(second)["incomplete"], "0")
        self.tb.stop(second)
        self.assertEqual(second.popen.returncode, 0, self.log(second))
        self.assertEqual(self.filters(), [])
        self.assertNotIn("pref", self.tb["logger"].cmd(f"tc filter show dev {IFACE} ingress"))
        # Nor does it stay promiscuous (libpcap's membership ended with it).
        self.assertNotIn("PROMISC", self.tb["logger"].cmd(f"ip link show {IFACE}"))


class TestCaptureFallback(CaptureCase):
    def test_no_bpf_permission_falls_back_to_pcap(self):
        self.serve()
        lg = self.logger(wrap=NO_BPF)
        self.assertIn("source=pcap\n", lg.output())
        lines = [l for l in self.log(lg).splitlines() if "capture ebpf" in l]
        self.assertEqual(len(lines), 1, self.log(lg))
        self.assertRegex(lines[0], rf"capture ebpf on {IFACE}: cannot load the program: Operation not permitted; "
                                   r"libpcap instead$")
        self.assertNotIn("libbpf", self.log(lg))
        self.assertEqual(self.filters(), [])
        self.client("request GET /static/100000?seed=7\n  expect content seed=7\n")
        self.assertTrue(wait_until(lambda: len(self.logged(lg)) == 1, 5), self.log(lg))
        s = self.stats(lg)
        self.assertEqual((s["dropped"], s["incomplete"]), ("0", "0"), s)
        self.assertGreater(int(s["received"]), 10)

    def run_logger(self, *argv, wrap=()):
        """rs-logger on the logger host, expected to exit: (status, stderr)."""
        err = os.path.join(self.dir, "fail.err")
        with open(err, "w") as fe:
            p = self.tb["logger"].popen(list(wrap) + [binary("rs-logger"), "--vip", VIP, "--key", self.key,
                                                      "--listen", f"{LOGGER}:{LOGGER_CTL}",
                                                      "--resend", f"{LOGGER}:{LOGGER_RESEND}"] + list(argv),
                                        stdout=subprocess.DEVNULL, stderr=fe)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.fail("rs-logger did not exit")
        with open(err) as f:
            return p.returncode, f.read()

    def test_explicit_ebpf_does_not_fall_back(self):
        rc, err = self.run_logger("--iface", IFACE, "--capture", "ebpf", wrap=NO_BPF)
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, rf"capture ebpf on {IFACE}: cannot load the program: Operation not permitted\n")
        self.assertNotIn("libpcap instead", err)
        self.assertNotIn("listening", err)
        self.assertEqual(self.filters(), [])

    def test_bad_iface(self):
        rc, err = self.run_logger("--iface", "nosuch0")
        self.assertEqual(rc, 1, err)
        self.assertEqual([l.split(" ", 2)[2] for l in err.splitlines()], ["capture on nosuch0: no such interface"])
        rc, err = self.run_logger("--iface", "nosuch0", "--capture", "pcap")
        self.assertEqual(rc, 1, err)
        self.assertIn("nosuch0", err)


if __name__ == "__main__":
    unittest.main()
