"""Healthy connections never break (issue 12, item 0): with no fault at
all, and CPU hogs on the proxy, logger and primary hosts (this machine has
two cores), large downloads on keep-alive and fresh connections run beside
many small requests through the whole stack.  Nothing may be reset, no
backend declared failed or suspected, no connection reaped or left
unrecoverable.  Trials are drawn from a seed (RS_TEST_SEED, TRIALS)."""
import os
import random
import re
import tempfile
import time
import unittest

from emul.places import binary
from emul.stack import Stack
from emul.testbed import Testbed, leftovers, pcap_count
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo

TRIALS = int(os.environ.get("SOAK_TRIALS", "20"))
SEED = int(os.environ.get("RS_TEST_SEED", "12"))
BIG = 200_000_000
RST_FROM_VIP = f"src host {SERVERS['proxy']} and tcp[tcpflags] & tcp-rst != 0"


@needs_root
class TestSoak(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-soak-")
        self.dir = self.tmp.name
        self.tb = Testbed(LanTopo(clients=2), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.stack = Stack(self.tb, self.dir).start()

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def test_no_fault_no_failure_under_load(self):
        rng = random.Random(SEED)
        for h in ("proxy", "logger", "primary"):
            self.tb.start(h, f"hog-{h}", ["sh", "-c", "while :; do :; done"])
        caps = [self.tb.capture(c, c, bpf_filter="tcp port 80", snaplen=96) for c in ("c1", "c2")]
        small = os.path.join(self.dir, "small.trace")
        with open(small, "w") as f:
            for i in range(40):
                f.write(f"request GET /static/{rng.randint(100, 20000)}?seed={i}\n  expect content seed={i}\n")
            f.write("request POST /counter\n")
        t0 = time.monotonic()
        for n in range(TRIALS):
            keepalive = rng.random() < 0.5
            seeds = [rng.randint(0, 999), rng.randint(0, 999)]
            urls = " ".join(f"http://{self.stack.vip}/static/{BIG}?seed={s}" for s in seeds)
            # Fresh connections: one curl per download; keep-alive: both on one.
            cmd = (f"curl -s -o /dev/null -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' {urls}" if keepalive
                   else " ; ".join(f"curl -s -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' "
                                   f"http://{self.stack.vip}/static/{BIG}?seed={s}" for s in seeds))
            sm = self.tb.start("c2", f"small-{n}", [binary("rs-client"), "--server", self.stack.vip, "--trace", small,
                                                    "--connections", "4", "--quiet", "--timeout", "10s"])
            out = self.tb["c1"].cmd(cmd + "; echo rc=$?")
            sm.popen.wait(60)
            self.assertIn("rc=0", out, f"trial {n}: {out}")
            self.assertEqual(re.findall(r"^200 (\d+)\r?$", out, re.M), [str(BIG)] * 2, f"trial {n}: {out}")
            self.assertEqual(sm.popen.returncode, 0, f"trial {n}: " + sm.output() + open(sm.err).read()[-2000:])
        elapsed = time.monotonic() - t0
        for c, _ in caps:
            self.tb.stop_capture(c)
        for _, pcap in caps:
            self.assertEqual(pcap_count(pcap, RST_FROM_VIP), 0, "a client got a RST from the VIP")
        px, lg = self.stack.stats("proxy"), self.stack.stats("logger")
        print(f"\nsoak: {TRIALS} trials ({2 * TRIALS} downloads of {BIG // 1000000} MB, {4 * 41 * TRIALS} small "
              f"requests) with 3 CPU hogs in {elapsed:.0f} s; longest heartbeat gap {lg['hb_max_gap_us']} us; "
              f"proxy: spliced={px['spliced']} failures={px['failures']}; logger: dropped={lg['dropped']}")
        for k in ("failures", "suspects", "unrecoverable", "reaped_idle", "reaped_half_open", "resets_sent",
                  "redispatched", "recovered"):
            self.assertEqual(px[k], "0", f"proxy {k}: {px}")
        held = "\n".join(l for l in self.stack.log("proxy").splitlines() if "held (guarded)" in l or "recover id=" in l)
        for k in ("failures_declared", "suspects", "recovery_errors"):
            self.assertEqual(lg[k], "0", f"logger {k}: {lg}\n{held[-3000:]}")
        # Every backend's end is judged by the logger (the proxy cannot judge
        # one alone, not even after the client's FIN): by its word, or when
        # that does not cover it, by a RECOVER; a legitimate close either
        # way, never a recovery.
        self.assertEqual(lg["recoveries"], lg["legit_closes"], f"logger: {lg}\n{held[-3000:]}")
        self.assertEqual(int(px["legit_closes"]), int(lg["legit_closes"]) + int(px["close_words"]),
                         f"proxy: {px}\nlogger: {lg}")
        self.assertNotIn("backend-failed", self.stack.log("logger"))


if __name__ == "__main__":
    unittest.main()
