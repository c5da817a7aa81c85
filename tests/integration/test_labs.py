"""The teaching labs (docs/labs/), each lab's self-check on a recorded good
run (tests/data/labs/lab-N: its files and right answers) and on broken
copies of it that must fail, then on the testbed: the lab's run makes
files whose observations the check finds, and which pass once answered.
Lab 1: a wrong or missing answer, no splice line, a response segment lost
on the way.  Lab 2: a wrong answer, a reset from the VIP, no re-splice.
Lab 3: a wrong answer, no replay (the alternate did not lag), a response
the client found wrong.  Lab 4: a wrong answer, resplice's client seeing
an error.  Lab 5: a wrong answer, the message delivered twice with
rs-auxlog, no replay in its log."""
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest

from emul.testbed import leftovers
from labs import failover, replay
from tests.integration.harness import needs_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB1 = os.path.join(ROOT, "labs", "splice.py")
LAB2 = os.path.join(ROOT, "labs", "failover.py")
GOOD = os.path.join(ROOT, "tests", "data", "labs", "lab-1")
GOOD2 = os.path.join(ROOT, "tests", "data", "labs", "lab-2")
LAB3 = os.path.join(ROOT, "labs", "replay.py")
GOOD3 = os.path.join(ROOT, "tests", "data", "labs", "lab-3")
LAB4 = os.path.join(ROOT, "labs", "baselines.py")
GOOD4 = os.path.join(ROOT, "tests", "data", "labs", "lab-4")
LAB5 = os.path.join(ROOT, "labs", "rerun.py")
GOOD5 = os.path.join(ROOT, "tests", "data", "labs", "lab-5")
PY = "/usr/bin/python3"


def check(folder, lab=LAB1):
    r = subprocess.run([PY, lab, "check", "--dir", folder], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def set_answer(folder, key, value):
    path = os.path.join(folder, "answers.txt")
    with open(path) as f:
        text = f.read()
    text = re.sub(rf"^{key} =.*$", f"{key} = {value}" if value is not None else f"{key} =", text, flags=re.M)
    with open(path, "w") as f:
        f.write(text)


def append_rst(pcap, t, port):
    """Appends to Ethernet 'pcap' a RST from the VIP (10.0.0.1:80) to the
    client (10.0.1.1:'port') at epoch time 't' (checksums left zero)."""
    tcp = struct.pack("!HHIIBBHHH", 80, port, 1, 0, 5 << 4, 0x04, 0, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 1, 1]))
    frame = b"\x00" * 12 + b"\x08\x00" + ip + tcp
    with open(pcap, "ab") as f:
        f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)


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


class Lab2Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-lab-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = os.path.join(self.tmp.name, "lab-2")
        shutil.copytree(GOOD2, self.dir)

    def test_good_run_passes(self):
        rc, out = check(self.dir, LAB2)
        self.assertEqual(rc, 0, out)
        self.assertIn("lab-2: all observations made", out)
        self.assertEqual(out.count(": right"), 5, out)

    def test_wrong_answer_fails(self):
        set_answer(self.dir, "detected_by", "heartbeat")
        set_answer(self.dir, "stall_ms", 1)
        rc, out = check(self.dir, LAB2)
        self.assertEqual(rc, 1, out)
        self.assertIn("detected_by: heartbeat is not what the run shows", out)
        self.assertIn("stall_ms: 1 is not what the run shows", out)

    def test_unmasked_or_unrecovered_run_fails(self):
        # A reset from the VIP in the client's pcap: the connection was lost.
        pcap = os.path.join(self.dir, "client.pcap")
        listing = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", "tcp"], capture_output=True,
                                 text=True).stdout.splitlines()
        port = re.search(r"10\.0\.1\.1\.(\d+) > 10\.0\.0\.1\.80", "\n".join(listing)).group(1)
        t_mid = float(listing[len(listing) // 2].split()[0])
        append_rst(pcap, t_mid, int(port))
        rc, out = check(self.dir, LAB2)
        self.assertEqual(rc, 1, out)
        self.assertIn("not masked", out)
        shutil.copy(os.path.join(GOOD2, "client.pcap"), pcap)
        # No re-splice in the proxy's log.
        log = os.path.join(self.dir, "proxy.log")
        with open(log) as f:
            lines = [l for l in f if "recovered id=" not in l]
        with open(log, "w") as f:
            f.writelines(lines)
        rc, out = check(self.dir, LAB2)
        self.assertEqual(rc, 1, out)
        self.assertIn("lacks the re-splice", out)


@needs_root
class Lab2Run(unittest.TestCase):
    def test_run_then_check(self):
        self.assertEqual(leftovers(), [])
        with tempfile.TemporaryDirectory(prefix="rs-lab-") as tmp:
            folder = os.path.join(tmp, "lab-2")
            r = subprocess.run([PY, LAB2, "run", "--dir", folder], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, SEED="2"))
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            for f in ("answers.txt", "client.pcap", "crash.json", "logger.log", "proxy.log", "timeline.png"):
                self.assertTrue(os.path.exists(os.path.join(folder, f)), f)
            rc, out = check(folder, LAB2)
            self.assertEqual(rc, 1, out)
            self.assertIn("the run shows a masked failover", out)
            for key, v in failover.truth(folder).items():
                set_answer(folder, key, round(v, 2) if isinstance(v, float) else v)
            rc, out = check(folder, LAB2)
            self.assertEqual(rc, 0, out)
        self.assertEqual(leftovers(), [])


class Lab3Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-lab-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = os.path.join(self.tmp.name, "lab-3")
        shutil.copytree(GOOD3, self.dir)

    def edit(self, name, old, new):
        path = os.path.join(self.dir, name)
        with open(path) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(path, "w") as f:
            f.write(text.replace(old, new))

    def test_good_run_passes(self):
        rc, out = check(self.dir, LAB3)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count(": right"), 7, out)

    def test_wrong_answer_fails(self):
        set_answer(self.dir, "tr", 4)           # TL + 1: as if the alternate had not lagged
        rc, out = check(self.dir, LAB3)
        self.assertEqual(rc, 1, out)
        self.assertIn("tr: 4 is not what the run shows", out)

    def test_no_replay_fails(self):
        self.edit("proxy.log", "tr=2 replayed=2", "tr=4 replayed=0")
        rc, out = check(self.dir, LAB3)
        self.assertEqual(rc, 1, out)
        self.assertIn("did not lag", out)

    def test_wrong_response_fails(self):
        with open(os.path.join(self.dir, "client.csv")) as f:
            text = f.read()
        lines = text.splitlines(True)
        lines[-1] = lines[-1].replace(",ok,", ",mismatch,")
        with open(os.path.join(self.dir, "client.csv"), "w") as f:
            f.writelines(lines)
        rc, out = check(self.dir, LAB3)
        self.assertEqual(rc, 1, out)
        self.assertIn("did not get its 7 responses as expected", out)


@needs_root
class Lab3Run(unittest.TestCase):
    def test_run_then_check(self):
        self.assertEqual(leftovers(), [])
        with tempfile.TemporaryDirectory(prefix="rs-lab-") as tmp:
            folder = os.path.join(tmp, "lab-3")
            r = subprocess.run([PY, LAB3, "run", "--dir", folder], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            rc, out = check(folder, LAB3)
            self.assertEqual(rc, 1, out)
            self.assertIn("the run shows a recovery with", out)
            want = replay.truth(folder)
            self.assertEqual((want["tl"], want["tsp"], want["tr"]), (3, 4, want["ta"] + 1))    # TR = TA + 1
            self.assertEqual(want["replayed"], want["tl"] - want["ta"])                       # [TR, TL]
            for key, v in want.items():
                set_answer(folder, key, v)
            rc, out = check(folder, LAB3)
            self.assertEqual(rc, 0, out)
        self.assertEqual(leftovers(), [])


class Lab4Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-lab-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = os.path.join(self.tmp.name, "lab-4")
        shutil.copytree(GOOD4, self.dir)

    def test_good_run_passes(self):
        rc, out = check(self.dir, LAB4)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count(": right"), 7, out)

    def test_wrong_answer_fails(self):
        set_answer(self.dir, "kept_connection_haproxy_tuned", "yes")
        rc, out = check(self.dir, LAB4)
        self.assertEqual(rc, 1, out)
        self.assertIn("kept_connection_haproxy_tuned: yes is not what the run shows", out)

    def test_resplice_with_an_error_fails(self):
        path = os.path.join(self.dir, "trials.csv")
        with open(path) as f:
            lines = f.readlines()
        lines = [re.sub(r"^(failover,refapp,action1,resplice,static-mid,0,0,1,[^,]*,[^,]*,[^,]*,)0,", r"\g<1>1,", l)
                 for l in lines]
        with open(path, "w") as f:
            f.writelines(lines)
        rc, out = check(self.dir, LAB4)
        self.assertEqual(rc, 1, out)
        self.assertIn("resplice's trial did not complete without an error", out)


@needs_root
class Lab4Run(unittest.TestCase):
    def test_run_then_check(self):
        self.assertEqual(leftovers(), [])
        with tempfile.TemporaryDirectory(prefix="rs-lab-") as tmp:
            folder = os.path.join(tmp, "lab-4")
            r = subprocess.run([PY, LAB4, "run", "--dir", folder], capture_output=True, text=True, timeout=600)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            self.assertTrue(os.path.exists(os.path.join(folder, "timeline.png")))
            rc, out = check(folder, LAB4)
            self.assertEqual(rc, 1, out)
            self.assertIn("the run shows the difference", out)
        self.assertEqual(leftovers(), [])


class Lab5Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-lab-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = os.path.join(self.tmp.name, "lab-5")
        shutil.copytree(GOOD5, self.dir)

    def test_good_run_passes(self):
        rc, out = check(self.dir, LAB5)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count(": right"), 4, out)

    def test_wrong_answer_fails(self):
        set_answer(self.dir, "copies_without_auxlog", 1)
        rc, out = check(self.dir, LAB5)
        self.assertEqual(rc, 1, out)
        self.assertIn("copies_without_auxlog: 1 is not what the run shows", out)

    def test_duplicate_with_auxlog_or_no_replay_fails(self):
        path = os.path.join(self.dir, "counts.json")
        with open(path) as f:
            counts = json.load(f)
        counts["auxlog"]["bob"] = 2
        with open(path, "w") as f:
            json.dump(counts, f)
        rc, out = check(self.dir, LAB5)
        self.assertEqual(rc, 1, out)
        self.assertIn("with rs-auxlog bob got 2 messages", out)
        shutil.copy(os.path.join(GOOD5, "counts.json"), path)
        log = os.path.join(self.dir, "auxlog.log")
        with open(log) as f:
            lines = [l for l in f if "replay smtp" not in l]
        with open(log, "w") as f:
            f.writelines(lines)
        rc, out = check(self.dir, LAB5)
        self.assertEqual(rc, 1, out)
        self.assertIn("no replay of an SMTP conversation", out)


@needs_root
class Lab5Run(unittest.TestCase):
    def test_run_then_check(self):
        self.assertEqual(leftovers(), [])
        with tempfile.TemporaryDirectory(prefix="rs-lab-") as tmp:
            folder = os.path.join(tmp, "lab-5")
            r = subprocess.run([PY, LAB5, "run", "--dir", folder], capture_output=True, text=True, timeout=600)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            rc, out = check(folder, LAB5)
            self.assertEqual(rc, 1, out)
            self.assertIn("the run shows a re-run send", out)
        self.assertEqual(leftovers(), [])


if __name__ == "__main__":
    unittest.main()
