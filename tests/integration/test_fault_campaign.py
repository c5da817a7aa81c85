"""The fault campaign (issue 14), QUICK: every fault of
experiments/fault_campaign.py at seeded random moments, on the reference
app's workloads (one client; 50 connections on five client hosts; new
connections every few ms from eight clients) and Roundcube's (one user;
four at once), against the daemons built with AddressSanitizer and
UndefinedBehaviorSanitizer (build/san, `make san`).  Judged from outside by the driver's checker:
no wrong byte, no duplicate or lost update, no hang, no false failover, no
unclean end, no sanitizer report.  The seed is RS_TEST_SEED (default 1).
Twice: new connections spliced at their request, and at their SYN."""
import os
import subprocess
import sys
import tempfile
import unittest

from emul.places import ROOT, build_dir
from emul.testbed import leftovers
from experiments.common import parse_summary
from tests.integration.harness import needs_root

SEED = os.environ.get("RS_TEST_SEED", "1")


class JudgeAfterAProxyFault(unittest.TestCase):
    """The checker's rule for a proxy's death: a connection it had not
    spliced may end within 1 s (it died with the proxy's sockets), unless
    its first SYN came after a proxy served again, or it ended once a hung
    proxy was woken; then it must live."""

    def test_a_connection_after_the_successor_must_live(self):
        from experiments.fault_campaign import judge, serving_again
        plog = ("100.000000 rs-proxy listening on 10.0.0.1:80 ifname=proxy-eth0\n"
                "105.500000 rs-proxy listening on 10.0.0.1:80 ifname=proxy-eth0\n")
        self.assertEqual(serving_again(plog, 105.0), 105.5)
        self.assertIsNone(serving_again(plog, 106.0))
        self.assertEqual(serving_again("105.6 rs-proxy pair: active (the other fell silent)\n", 105.0), 105.6)
        flows = {"10.0.1.1.40000": {"client_syn": 104.9, "server_rst": 105.2},    # died with the proxy
                 "10.0.1.1.40001": {"client_syn": 105.3, "server_rst": 105.4}}    # before the successor
        row = {"false_failovers": 0, "sanitizer": ""}
        self.assertEqual(judge(row, [], flows, plog, [("proxy", 105.0)], ({}, [])), [])
        self.assertEqual(row["clean_ends"], 2)
        flows["10.0.1.1.40002"] = {"client_syn": 105.6, "server_rst": 105.7}      # after it
        row = {"false_failovers": 0, "sanitizer": ""}
        self.assertEqual(judge(row, [], flows, plog, [("proxy", 105.0)], ({}, [])), ["unclean_end"])
        self.assertIn("rst@10.0.1.1.40002", row["detail"])

    def test_nothing_may_end_once_a_hung_proxy_is_woken(self):
        """pair-hang: the hung proxy's stop counts as its death until it is
        woken (after the takeover); what ends from then on is its doing."""
        from experiments.fault_campaign import judge
        plog = "100.300000 rs-proxy pair: active (the active proxy is silent)\n"
        flows = {"10.0.1.1.40000": {"client_syn": 99.9, "server_rst": 100.3},     # at the takeover
                 "10.0.1.1.40001": {"client_syn": 100.1, "server_rst": 100.9}}    # once woken
        times = [("proxy", 100.0), ("resume", 100.8)]
        row = {"false_failovers": 0, "sanitizer": ""}
        self.assertEqual(judge(row, [], flows, plog, times, ({}, [])), ["unclean_end"])
        self.assertEqual(row["clean_ends"], 1)
        self.assertIn("rst@10.0.1.1.40001", row["detail"])
        row = {"false_failovers": 0, "sanitizer": ""}
        self.assertIn("proxy_stuck", judge(row, [], flows, plog, times + [("proxy-stuck", 101.0)], ({}, [])))


@needs_root
class TestFaultCampaign(unittest.TestCase):
    def campaign(self, **extra_env):
        san = os.path.join(build_dir(), "san")
        self.assertTrue(os.access(os.path.join(san, "rs-proxy"), os.X_OK), f"no sanitized build in {san}: make san")
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        with tempfile.TemporaryDirectory(prefix="rs-faults-") as out:
            os.chmod(out, 0o755)        # dovecot's mail processes are not root
            env = dict(os.environ, QUICK="1", SEED=SEED, **extra_env)
            env.pop("TRIALS", None)
            r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "fault_campaign.py"),
                                "--build", san, "--out", out], env=env, capture_output=True, text=True,
                               timeout=900)
            lines = r.stdout.strip().splitlines()
            print("\n" + "\n".join(l for l in lines if not l.startswith("[")))
            self.assertTrue(lines and lines[-1].startswith("summary:"), r.stdout[-3000:] + r.stderr[-3000:])
            s = parse_summary(lines[-1])
            self.assertGreaterEqual(int(s["trials"]), 30)
            for key in ("wrong_bytes", "duplicates", "hangs", "false_failovers", "violations", "unclean_ends",
                        "lost_updates", "sanitizer"):
                self.assertEqual(s[key], "0", f"{key}: {lines[-1]}\n" + r.stdout[-4000:])
            # The unmaskable faults were there and ended cleanly.
            self.assertGreater(int(s["clean_ends"]), 0, lines[-1])
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            self.assertTrue(os.path.getsize(os.path.join(out, "trials.csv")) > 0)
        self.assertEqual(leftovers(), [])

    def test_quick_campaign_has_no_violation(self):
        """Every new connection spliced at its request (rs-proxy
        --splice-at request)."""
        self.campaign(RS_SPLICE_AT="request")

    def test_quick_campaign_spliced_at_the_syn(self):
        """The same with every new connection spliced by the tc program at
        the client's SYN (rs-proxy's default), the proxy pair's trials
        included."""
        self.campaign(RS_SPLICE_AT="syn")


if __name__ == "__main__":
    unittest.main()
