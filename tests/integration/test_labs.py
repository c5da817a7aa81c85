"""The teaching labs (docs/labs/): lab 1's self-check on a recorded good
run (tests/data/labs/lab-1: its pcaps, the proxy's log, right answers)
passes; the same run with a wrong or missing answer, without its splice
line, or with a response segment lost on the way fails it; and on the
testbed, `labs/splice.py run` makes a run whose observations the check
finds, and which passes once answered."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from emul.testbed import leftovers
from tests.integration.harness import needs_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB1 = os.path.join(ROOT, "labs", "splice.py")
GOOD = os.path.join(ROOT, "tests", "data", "labs", "lab-1")
PY = "/usr/bin/python3"


def check(folder):
    r = subprocess.run([PY, LAB1, "check", "--dir", folder], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def set_answer(folder, key, value):
    path = os.path.join(folder, "answers.txt")
    with open(path) as f:
        text = f.read()
    text = re.sub(rf"^{key} =.*$", f"{key} = {value}" if value is not None else f"{key} =", text, flags=re.M)
    with open(path, "w") as f:
        f.write(text)


class Lab1Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-lab-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = os.path.join(self.tmp.name, "lab-1")
        shutil.copytree(GOOD, self.dir)

    def test_good_run_passes(self):
        rc, out = check(self.dir)
        self.assertEqual(rc, 0, out)
        self.assertIn("lab-1: all observations made", out)
        self.assertEqual(out.count(": right"), 4, out)

    def test_wrong_or_missing_answer_fails(self):
        set_answer(self.dir, "offset_s2c", 12345)
        set_answer(self.dir, "client_port", None)
        rc, out = check(self.dir)
        self.assertEqual(rc, 1, out)
        self.assertIn("offset_s2c: 12345 is not what the run shows", out)
        self.assertIn("client_port: not answered yet", out)
        self.assertNotIn("all observations made", out)

    def test_run_without_a_splice_fails(self):
        log = os.path.join(self.dir, "proxy.log")
        with open(log) as f:
            lines = [l for l in f if " splice id=" not in l]
        with open(log, "w") as f:
            f.writelines(lines)
        rc, out = check(self.dir)
        self.assertEqual(rc, 1, out)
        self.assertIn("not spliced", out)

    def test_response_bytes_lost_on_the_way_fail(self):
        # The client's pcap without its largest data segment from the VIP.
        pcap = os.path.join(self.dir, "client.pcap")
        listing = subprocess.run(["tcpdump", "-r", pcap, "-n", "-S", "-tt", "tcp"], capture_output=True,
                                 text=True).stdout.splitlines()
        largest = max(int(m.group(1)) for m in (re.search(r"length (\d+)", l) for l in listing) if m)
        kept = os.path.join(self.dir, "kept.pcap")
        subprocess.run(["tcpdump", "-r", pcap, "-w", kept, f"not greater {largest + 40}"],   # its frame and up
                       check=True, capture_output=True)
        os.replace(kept, pcap)
        rc, out = check(self.dir)
        self.assertEqual(rc, 1, out)
        self.assertIn("not in client.pcap at their sequence number", out)


@needs_root
class Lab1Run(unittest.TestCase):
    def test_run_then_check(self):
        self.assertEqual(leftovers(), [])
        with tempfile.TemporaryDirectory(prefix="rs-lab-") as tmp:
            folder = os.path.join(tmp, "lab-1")
            r = subprocess.run([PY, LAB1, "run", "--dir", folder], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            self.assertEqual(sorted(os.listdir(folder)), ["answers.txt", "backend.pcap", "client.pcap", "proxy.log"])
            rc, out = check(folder)
            self.assertEqual(rc, 1, out)                        # the run is good, the answers are not there
            self.assertIn("the run shows a splice", out)
            self.assertIn("client_port: not answered yet", out)
            with open(os.path.join(folder, "proxy.log")) as f:
                m = re.search(r"client=\S+:(\d+) vip=\S+ local=\S+:(\d+) backend=\S+ c\.rcv_nxt=(\d+) "
                              r"c\.snd_nxt=(\d+) s\.snd_nxt=(\d+) s\.rcv_nxt=(\d+)", f.read())
            cport, lport, c_rcv, c_snd, s_snd, s_rcv = (int(x) for x in m.groups())
            for key, v in (("client_port", cport), ("backend_local_port", lport),
                           ("offset_s2c", (c_snd - s_rcv) % (1 << 32)), ("offset_c2s", (s_snd - c_rcv) % (1 << 32))):
                set_answer(folder, key, v)
            rc, out = check(folder)
            self.assertEqual(rc, 0, out)
        self.assertEqual(leftovers(), [])


if __name__ == "__main__":
    unittest.main()
