"""Integration tests of the emulation testbed (issue 2): topology lifetime
and cleanup, the logger's port mirror, RTT and loss accuracy of the link
emulation, and that shaping that is not in place is reported loudly."""
import os
import re
import tempfile
import time
import unittest

from emul.shaping import ShapingError, measure_rtt
from emul.testbed import Testbed, leftovers, pcap_count
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo
from topologies.profiles import Profile

PROXY, PRIMARY = SERVERS["proxy"], SERVERS["primary"]


def emul_stats(run_dir):
    """{(host, queue): {field: int}} from the emulators' logs."""
    out = {}
    for name in os.listdir(run_dir):
        if name.startswith("rs-emul-"):
            for line in open(os.path.join(run_dir, name)):
                if line.startswith("stats"):
                    f = dict(kv.split("=") for kv in line.split()[1:])
                    out[(name[8:-4], f["queue"])] = {k: float(v) for k, v in f.items()}
    return out


@needs_root
class TestbedCase(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-test-")
        self.run_dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])


class TestLifetime(TestbedCase):
    def test_up_down_leaves_nothing(self):
        with Testbed(LanTopo(profile=Profile("t", 10, 0, 0)), self.run_dir) as tb:
            pids = [p.pid for p in tb.shaper.procs.values()]
            self.assertTrue(pids, "a shaped topology runs emulators")
            self.assertIn("rs1-eth1", open("/proc/net/dev").read())
        self.assertNotIn("rs1-eth1", open("/proc/net/dev").read())
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}"), f"emulator {pid} still runs")

    def test_cleanup_on_error(self):
        with self.assertRaises(ZeroDivisionError):
            with Testbed(LanTopo(profile=Profile("t", 10, 0, 0)), self.run_dir) as tb:
                tb.start("primary", "sleeper", ["sleep", "60"])
                1 / 0
        self.assertEqual(leftovers(), [])

    def test_crash_injection(self):
        with Testbed(LanTopo(), self.run_dir) as tb:
            d = tb.start("primary", "sleeper", ["sleep", "60"])
            h = tb.crash_when(lambda: d.alive(), tb.kill, d, timeout=5)
            h.fired.wait(5)
            self.assertFalse(d.alive())
            self.assertEqual(d.popen.returncode, -9)
            tb.host_down("alternate")
            avg, (sent, recv) = measure_rtt(tb["proxy"], SERVERS["alternate"], count=3,
                                            interval=0.05, wait_s=1)
            self.assertEqual(recv, 0, "a downed host must not answer")

    def test_host_up_gives_back_static_routes(self):
        """A host's interfaces down and up again: its static routes come
        back (rs-auxlog's tap depends on the backends' route to the mail
        store through it)."""
        with Testbed(LanTopo(), self.run_dir) as tb:
            h = tb["alternate"]
            h.cmd(f"ip route replace 10.0.0.99/32 via {SERVERS['logger']}")
            tb.host_down("alternate")
            self.assertNotIn("10.0.0.99", h.cmd("ip -4 route show"))
            tb.host_up("alternate")
            self.assertIn(f"10.0.0.99 via {SERVERS['logger']}", h.cmd("ip -4 route show"))


class TestMirror(TestbedCase):
    def test_logger_sees_every_proxy_primary_frame(self):
        flt = f"host {PROXY} and host {PRIMARY}"
        with Testbed(LanTopo(), self.run_dir) as tb:
            pcap_p = tb.capture("proxy", "proxy", bpf_filter=flt)
            pcap_l = tb.capture("logger", "logger", bpf_filter=flt)
            srv = tb.start("primary", "iperf3", ["iperf3", "-s", "-1", "--forceflush"], ready="listening")
            tb["proxy"].cmd(f"ping -c 200 -i 0.002 -q {PRIMARY}")
            tb["proxy"].cmd(f"iperf3 -c {PRIMARY} -n 20M -b 400M")
            srv.popen.wait(10)
            time.sleep(0.3)
            tb.stop_capture(pcap_p[0])
            tb.stop_capture(pcap_l[0])
            errs = open(pcap_p[0].err).read() + open(pcap_l[0].err).read()
        self.assertNotRegex(errs, r"[1-9]\d* packets? dropped by kernel")
        n_proxy, n_logger = pcap_count(pcap_p[1]), pcap_count(pcap_l[1])
        self.assertGreater(n_proxy, 400)
        self.assertEqual(n_proxy, n_logger)
        # and per direction
        for d in (f"src {PROXY}", f"src {PRIMARY}"):
            self.assertEqual(pcap_count(pcap_p[1], d), pcap_count(pcap_l[1], d), d)


class TestSpreadReceive(TestbedCase):
    def test_rps_on_the_hosts_own_interface(self):
        """spread_receive() sets RPS over every CPU on the named hosts'
        interfaces, read back through each host's own sysfs, and leaves
        the other hosts and the root namespace's /sys alone."""
        def rps(tb, host):
            q = f"/sys/class/net/{tb[host].defaultIntf().name}/queues/rx-0/rps_cpus"
            out = tb[host].cmd(f"unshare -m sh -c 'umount -l /sys && mount -t sysfs sysfs /sys && cat {q}'")
            return int(out.strip().replace(",", ""), 16)

        with Testbed(LanTopo(), self.run_dir) as tb:
            tb.spread_receive(["proxy"])
            self.assertEqual(rps(tb, "proxy"), (1 << os.cpu_count()) - 1)
            self.assertEqual(rps(tb, "primary"), 0)
            self.assertTrue(os.path.exists(f"/sys/class/net/{tb.net.switches[0].name}"),
                            "the root namespace's /sys must still show its own devices")


class TestOvs(TestbedCase):
    def test_ovs_switch_mirror_and_shaping(self):
        flt = f"host {PROXY} and host {PRIMARY}"
        with Testbed(LanTopo(profile=Profile("t", 10, 0, 0)), self.run_dir, switch="ovs") as tb:
            # The userspace datapath adds its own latency (upcalls, a busy CPU).
            tb.shaper.verify_rtt(tb["c1"], tb["proxy"], 10, tolerance=3)
            pp, pl = tb.capture("proxy", "p", bpf_filter=flt), tb.capture("logger", "l", bpf_filter=flt)
            tb["proxy"].cmd(f"ping -c 100 -i 0.005 -q {PRIMARY}")
            time.sleep(0.3)
            tb.stop_capture(pp[0])
            tb.stop_capture(pl[0])
        self.assertEqual(pcap_count(pp[1]), 200)
        self.assertEqual(pcap_count(pl[1]), 200)


class TestShaping(TestbedCase):
    def rtt_within(self, rtt):
        with Testbed(LanTopo(profile=Profile("t", rtt, 0, 0)), self.run_dir) as tb:
            measure_rtt(tb["c1"], PROXY, count=3, interval=0.01)
            avg, (sent, recv) = measure_rtt(tb["c1"], PROXY, count=100, interval=0.01)
        self.assertEqual(sent, recv)
        self.assertLessEqual(abs(avg - rtt), max(1.0, 0.05 * rtt), f"measured {avg} ms")
        return avg

    def test_rtt_10ms(self):
        self.rtt_within(10)

    def test_rtt_60ms(self):
        self.rtt_within(60)

    def test_loss_1pct(self):
        n = 2000
        with Testbed(LanTopo(profile=Profile("t", 2, 0, 0.01)), self.run_dir, seed=7) as tb:
            _, (sent, recv) = measure_rtt(tb["c1"], PROXY, count=n, interval=0.002)
        self.assertEqual(sent, n)
        # Round trip: lost either way, p = 1 - 0.99^2 = 1.99%.  Binomial sd
        # is ~6.2 packets; accept 4.5 sd around the mean (~40).
        lost = sent - recv
        self.assertTrue(12 <= lost <= 68, f"{lost} of {n} lost")
        # Each direction's emulator dropped about 1% of what it saw.
        for (host, q), st in emul_stats(self.run_dir).items():
            if st["received"] >= n / 2:
                self.assertAlmostEqual(st["dropped"] / st["received"], 0.01, delta=0.0067,
                                       msg=f"{host} queue {q}")

    def test_no_drops_at_1000pps(self):
        with Testbed(LanTopo(profile=Profile("t", 10, 0, 0)), self.run_dir) as tb:
            _, (sent, recv) = measure_rtt(tb["c1"], PROXY, count=3000, interval=0.001)
        self.assertEqual((sent, recv), (3000, 3000))
        for key, st in emul_stats(self.run_dir).items():
            self.assertEqual(st["overflow"], 0, key)
            self.assertEqual(st["enobufs"], 0, key)
            self.assertEqual(st["held"], 0, key)

    def test_missing_shaping_fails_loudly(self):
        with Testbed(LanTopo(profile=Profile("t", 10, 0, 0)), self.run_dir) as tb:
            tb.shaper.verify()
            tb.shaper.verify_rtt(tb["c1"], tb["proxy"], 10, tolerance=3)
            with self.assertRaisesRegex(ShapingError, "not in place"):
                tb.shaper.verify_rtt(tb["c1"], tb["proxy"], 30)
            victim = next(iter(tb.shaper.procs.values()))
            victim.kill()
            victim.wait()
            with self.assertRaisesRegex(ShapingError, "exited"):
                tb.shaper.verify()

    def test_jitter_keeps_order(self):
        with Testbed(LanTopo(profile=Profile("t", 20, 16, 0)), self.run_dir) as tb:
            out = tb["c1"].cmd(f"ping -U -n -c 200 -i 0.002 {PROXY}")
        seqs = [int(s) for s in re.findall(r"icmp_seq=(\d+)", out)]
        self.assertEqual(len(seqs), 200)
        self.assertEqual(seqs, sorted(seqs), "jitter must not reorder")
        rtts = [float(s) for s in re.findall(r"time=([\d.]+)", out)]
        self.assertGreater(max(rtts) - min(rtts), 4, "jitter must vary the delay")


if __name__ == "__main__":
    unittest.main()
