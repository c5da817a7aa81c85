"""Your own application as a workload (WORKLOADS=mine, experiments/mine.py,
docs/your-application.md), on the shipped example, the guestbook:

- a workload file that cannot work is refused with the file and the setting
  named, before anything starts;
- the guestbook hands its state to a front only when it has one;
- the failover and overhead studies run on it: resplice masks a SIGKILL of
  the primary in the middle of the big static file and in the middle of
  the answer that carries a freshly drawn id, and the overhead study times
  it direct and through resplice;
- the same crash without the state hooks cannot be masked: the entry's id
  was drawn on the primary and nothing carried it to the alternate, so
  the logger refuses to plan a recovery (a re-run would draw another id)
  and the client sees the connection reset, not a wrong answer."""
import csv
import glob
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from emul.places import ROOT
from emul.testbed import leftovers
from experiments import mine
from experiments.workloads import FRONT_PORT, Workload
from tests.integration.harness import needs_root

PY = "/usr/bin/python3"
GUESTBOOK = os.path.join(ROOT, "examples", "guestbook")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Loader(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-mine-")
        self.addCleanup(self.tmp.cleanup)
        with open(os.path.join(GUESTBOOK, "workload.ini")) as f:
            self.good = f.read()

    def load(self, text):
        shutil.copytree(GUESTBOOK, self.tmp.name, dirs_exist_ok=True)
        path = os.path.join(self.tmp.name, "workload.ini")
        with open(path, "w") as f:
            f.write(text)
        return mine.load(path, FRONT_PORT, Workload)

    def refused(self, old, new, why):
        self.assertIn(old, self.good)
        with self.assertRaises(mine.BadWorkload) as e:
            self.load(self.good.replace(old, new))
        self.assertIn(os.path.join(self.tmp.name, "workload.ini"), str(e.exception))
        self.assertRegex(str(e.exception), why)

    def test_the_example(self):
        w = self.load(self.good)
        self.assertTrue(issubclass(w, Workload))
        self.assertEqual(w.name, "mine")
        self.assertEqual(set(w.actions), {"browse", "sign", "visit"})
        self.assertEqual(w.points["guide-mid"], ("browse", "largest", "mid"))
        self.assertEqual(w.points["sign-mid"], ("sign", 1, 170))
        self.assertEqual((w.quick_points, w.headline, w.trials), (("guide-mid", "sign-mid"), "guide-mid", 3))
        self.assertEqual(w.check_path, "/health")
        self.assertEqual(w.app.front_args("/d", "/s"), ["--state-dir", "/s", "--apply-file", "/d/guestbook.json"])
        self.assertEqual(w.app.argv[1], "{dir}/guestbook.py")

    def test_refused(self):
        self.refused("[actions]", "[acts]", r"no \[actions\] section")
        self.refused("port = 8000", "port = eighty", r"\[app\] port: not a number")
        self.refused("port = 8000", f"port = {FRONT_PORT}", r"\[app\] port: .*other than the front's")
        self.refused("--data {data}", "--data {datadir}", r"\[app\] command: .*datadir.*it may use")
        self.refused("{dir}/sign.trace", "{dir}/signs.trace", r"\[actions\] sign: no such file .*signs.trace")
        self.refused("sign-done = sign 1 0", "sign-done = signing 1 0", r"\[points\] sign-done: no action 'signing'")
        self.refused("sign-done = sign 1 0", "sign-done = sign one 0", r"\[points\] sign-done: .*a number or 'largest'")
        self.refused("sign-done = sign 1 0", "sign-done = sign 1", r"\[points\] sign-done: .*action request offset")
        self.refused("quick = guide-mid sign-mid", "quick = guide-mid sign-end", r"\[points\] quick: .*'sign-end'")
        self.refused("apply_file = {data}/guestbook.json",
                     "apply_file = {data}/guestbook.json\napply_cmd = cp", r"one or the other")
        self.refused("tags = {dir}/tags.conf", "tags = {dir}/tag.conf", r"\[app\] tags: no such file")
        self.refused("apply_file = {data}/guestbook.json", "apply_file = {data}/${name}.json",
                     r"\[app\] apply_file: 'name' \(it may use \{data\}, \{dir\}\)")

    def test_refused_by_the_studies(self):
        """A study asked for WORKLOADS=mine with a bad file stops at once and
        says why."""
        path = os.path.join(self.tmp.name, "bad.ini")
        with open(path, "w") as f:
            f.write("[app]\ncommand = true\n")
        r = subprocess.run([PY, os.path.join(ROOT, "experiments", "failover.py"), "--results", self.tmp.name],
                           env=dict(os.environ, WORKLOADS="mine", MINE=path), capture_output=True, text=True,
                           timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"WORKLOADS=mine: {path}: no [actions] section", r.stderr)


class GuestbookHooks(unittest.TestCase):
    """The guestbook on loopback: its state goes to the front's directory
    as X-Resplice-State only when it has a --state-dir."""

    def serve(self, *args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tmp = tempfile.TemporaryDirectory(prefix="rs-guestbook-")
        self.addCleanup(tmp.cleanup)
        p = subprocess.Popen([PY, os.path.join(GUESTBOOK, "guestbook.py"), "--data", os.path.join(tmp.name, "data"),
                              "--port", str(port)] + [a.replace("TMP", tmp.name) for a in args],
                             stdout=subprocess.PIPE, text=True)
        self.addCleanup(p.stdout.close)
        self.addCleanup(p.wait)
        self.addCleanup(p.kill)
        self.assertIn("listening", p.stdout.readline())
        return port, tmp.name

    def sign(self, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/sign", "name=ann&message=hi", {"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        body = r.read().decode()
        c.request("GET", "/")
        page = c.getresponse().read().decode()
        c.close()
        return r, body, page

    def test_with_a_front(self):
        port, tmp = self.serve("--state-dir", "TMP")
        r, body, page = self.sign(port)
        eid = re.search(r"/entry/([0-9a-f]{16})", body).group(1)
        self.assertIn(eid, page)
        state = r.getheader("X-Resplice-State")
        self.assertEqual(os.path.dirname(state), tmp)
        self.assertEqual((r.getheader("X-Resplice-State-Seq"), r.getheader("X-Resplice-Sync")), ("1", "1"))
        with open(state) as f, open(os.path.join(tmp, "data", "guestbook.json")) as g:
            self.assertEqual(f.read(), g.read())        # the whole state, as the standby installs it

    def test_without_a_front(self):
        port, _ = self.serve()
        r, body, _ = self.sign(port)
        self.assertEqual([h for h, _ in r.getheaders() if h.lower().startswith("x-resplice")], [])


@needs_root
class Study(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [])
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-mine-")
        self.addCleanup(self.tmp.cleanup)
        os.chmod(self.tmp.name, 0o755)

    def study(self, script, env):
        cmd = [PY, os.path.join(ROOT, "experiments", script), "--results", self.tmp.name]
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=dict(os.environ, WORKLOADS="mine", QUICK="1", **env), capture_output=True,
                           text=True, timeout=600)
        self.assertIn(r.returncode, (0, 1), r.stdout[-3000:] + r.stderr[-3000:])
        self.assertEqual(leftovers(), [])
        print(f"\n{script} on the guestbook: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        return r

    def test_failover_and_overhead(self):
        r = self.study("failover.py", {"TECHNIQUES": "resplice,haproxy-tuned"})
        table = rows(os.path.join(self.tmp.name, "failover", "mine.csv"))
        got = {(x["technique"], x["crash_point"]): x for x in table}
        self.assertEqual(set(got), {(t, p) for t in ("resplice", "haproxy-tuned") for p in ("guide-mid", "sign-mid")})
        for p in ("guide-mid", "sign-mid"):
            x = got[("resplice", p)]
            self.assertEqual((x["ok"], x["errors"]), ("1", "0"), x)
            self.assertTrue(x["detect_ms"] and x["recover_ms"], x)      # the stack saw the crash and recovered
        # HAProxy recovers the static file only by the client's retry.
        self.assertNotEqual(got[("haproxy-tuned", "guide-mid")]["errors"], "0")
        self.assertIn("summary: study=failover", r.stdout)

        r = self.study("overhead.py", {"TECHNIQUES": "direct,resplice"})
        table = rows(os.path.join(self.tmp.name, "overhead", "mine.csv"))
        timed = {(x["technique"], x["workload"]) for x in table if x["metric"] == "latency_ms"}
        self.assertEqual(timed, {(t, f"mine-{a}") for t in ("direct", "resplice") for a in ("browse", "sign", "visit")})
        self.assertIn("summary:", r.stdout)

    def test_without_state_hooks_the_sign_is_not_masked(self):
        """The guestbook without --state-dir and the front without
        --apply-file, the sign still tagged non-deterministic."""
        with open(os.path.join(GUESTBOOK, "workload.ini")) as f:
            text = f.read()
        for old, new in ((' --state-dir "{state_dir}"', ""), ("apply_file = {data}/guestbook.json", ""),
                         ("quick = guide-mid sign-mid", "quick = sign-mid"),
                         ("= {dir}/", f"= {GUESTBOOK}/"), ("{dir}/guestbook.py", f"{GUESTBOOK}/guestbook.py")):
            self.assertIn(old, text)
            text = text.replace(old, new)
        path = os.path.join(self.tmp.name, "nohooks.ini")
        with open(path, "w") as f:
            f.write(text)
        r = self.study("failover.py", {"TECHNIQUES": "resplice", "MINE": path, "KEEP": "1"})
        [x] = rows(os.path.join(self.tmp.name, "failover", "mine.csv"))
        self.assertEqual((x["crash_point"], x["ok"]), ("sign-mid", "0"), x)
        kept = re.search(r"run directory kept: (\S+)", r.stderr).group(1)
        self.addCleanup(shutil.rmtree, kept)
        with open(os.path.join(kept, "mine-0", "logger.err")) as f:
            self.assertRegex(f.read(), r"plan failed: nondet-state-missing")
        last = max(glob.glob(os.path.join(kept, "mine-0", "c*.csv")), key=lambda c: int(os.path.basename(c)[1:-4]))
        with open(last) as f:       # the trial's client
            sign = [x for x in csv.DictReader(f) if x["target"] == "/sign"]
        self.assertEqual([x["result"] for x in sign], ["reset"])


if __name__ == "__main__":
    unittest.main()
