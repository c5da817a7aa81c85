"""Integration tests of rs-front (front/): rs-front numbers the
requests of each client connection, forwards them to an application (here a
Python HTTP/1.1 server standing in for lighttpd + PHP) with X-Resplice-Txn,
turns the application's X-Resplice-State / X-Resplice-Sync response headers
into state transfer through rs-stated, strips them and Date from what the
client sees, runs --apply-cmd on the alternate, and survives a failover of
the real stack byte-exactly."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from emul.places import APP_PORT, LOGGER_CTL, STATED_PORT, UPSTREAM_PORT, binary, write_key
from emul.shaping import wait_until
from emul.stack import Stack
from emul.testbed import Testbed, leftovers, pcap_count
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo, client_ip

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_stated import FAKE_LOGGER  # noqa: E402

PRIMARY, ALTERNATE, LOGGER = SERVERS["primary"], SERVERS["alternate"], SERVERS["logger"]
C1 = client_ip(0)

# The application behind the front: HTTP/1.1 keep-alive; logs the
# X-Resplice-Txn of every request to DIR/txns.log; POST /counter writes its
# state to a file named by X-Resplice-State, /token also says
# X-Resplice-Sync: 1; http.server adds a Date header to every response.
UPSTREAM = r'''
import hashlib, http.server, os, sys, time, urllib.parse, uuid

LISTEN, PORT, DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def content(seed, off, n):
    """core/content.h's checkable stream, as rs-client checks it."""
    tag = (seed * 0x9E3779B97F4A7C15 % 2**64) >> 48
    first = off - off % 16
    text = "".join("%04x %010x\n" % (tag, r % 2**40) for r in range(first, off + n, 16))
    return text.encode()[off - first:off - first + n]


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def small(self, body, state=None, sync=False, code=200, extra=()):
        body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        if state:
            p = os.path.join(DIR, "st-%s" % uuid.uuid4().hex)
            with open(p, "w") as f:
                f.write(state)
            self.send_header("X-Resplice-State", p)
            if sync:
                self.send_header("X-Resplice-Sync", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        self.do_GET(self.body())

    def do_GET(self, body=b""):
        with open(os.path.join(DIR, "txns.log"), "a") as f:
            f.write("%s %s %s\n" % (self.headers.get("X-Resplice-Txn", "-"), self.command, self.path))
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        counter = os.path.join(DIR, "counter")
        if u.path == "/counter":
            v = int(open(counter).read()) if os.path.exists(counter) else 0
            if self.command == "POST":
                v += 1
                with open(counter + ".tmp", "w") as f:
                    f.write(str(v))
                os.rename(counter + ".tmp", counter)
                return self.small("counter=%d\n" % v, state="counter=%d" % v,
                                  extra=[("X-Resplice-State-Seq", str(v))])
            return self.small("counter=%d\n" % v)
        if u.path == "/token":
            t = uuid.uuid4().hex
            return self.small("token=%s\n" % t, state="token=%s" % t, sync=True)
        if u.path == "/bigstate":
            return self.small("big\n", state="big=" + "b" * 900000)
        if u.path == "/inline":      # the state in the head, as the Roundcube plugin sends a small one
            return self.small("inline\n", extra=[("X-Resplice-State-Data", "aW5saW5lPTQy")])     # "inline=42"
        if u.path == "/badinline":
            return self.small("bad\n", extra=[("X-Resplice-State-Data", "not*base64")])
        if u.path == "/echo":
            return self.small("%d %s\n" % (len(body), hashlib.sha256(body).hexdigest()))
        if u.path == "/headers":
            return self.small("".join("%s: %s\n" % kv for kv in self.headers.items()))
        if u.path.startswith("/static/"):
            n, seed = int(u.path[8:]), int(q.get("seed", 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            off = 0
            while off < n and self.command != "HEAD":
                k = min(1 << 20, n - off)
                self.wfile.write(content(seed, off, k))
                off += k
            return
        if u.path == "/slow":
            n, chunk = int(q.get("bytes", 4096)), int(q.get("chunk", 1024))
            delay, seed = float(q.get("delay", 0.02)), int(q.get("seed", 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            off = 0
            while off < n:
                time.sleep(delay)
                k = min(chunk, n - off)
                self.wfile.write(b"%x\r\n" % k + content(seed, off, k) + b"\r\n")
                self.wfile.flush()
                off += k
            self.wfile.write(b"0\r\n\r\n")
            return
        if u.path == "/nocontent":
            self.send_response(204)
            self.end_headers()
            return
        return self.small("not found\n", code=404)


class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = S((LISTEN, PORT), H)
print("listening on %s:%d" % (LISTEN, PORT), flush=True)
srv.serve_forever()
'''

# --apply-cmd: records each blob it is given and applies counter=N.
APPLY = r'''#!/bin/sh
dir=$(dirname "$0")
printf '%s %s %s\n' "$2" "$(cat "$1")" "$1" >> "$dir/applies.log"
case "$(cat "$1")" in
counter=*) sed 's/^counter=//' "$1" > "$dir/counter.tmp" && mv "$dir/counter.tmp" "$dir/counter" ;;
esac
'''

# A client on c1: sends the requests (a JSON file: a list of [method,
# target, headers, body]) on one connection from 'port', pipelined or one by one,
# and prints per response: status, headers, body length and SHA-256, the
# time it arrived, and whether the body is core/content.h's stream 'seed'.
CLIENT = r'''
import hashlib, http.client, json, socket, sys, threading, time
host, port, lport, pipeline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
reqs = json.load(open(sys.argv[5]))

def content_ok(body, seed):
    tag = (seed * 0x9E3779B97F4A7C15 % 2**64) >> 48
    for off in range(0, len(body), 1 << 20):
        n = min(1 << 20, len(body) - off)
        text = "".join("%04x %010x\n" % (tag, r % 2**40) for r in range(off, off + n, 16)).encode()
        if body[off:off + n] != text[:n]:
            return False
    return True

s = socket.create_connection((host, port), source_address=("", lport), timeout=30)
class Shared:
    # One buffered reader for every response: HTTPResponse closes its file
    # at the end of each body, and pipelined bytes must not be lost.
    def __init__(self, f):
        self.f = f
    def __getattr__(self, name):
        return getattr(self.f, name)
    def close(self):
        pass
f = Shared(s.makefile("rb"))
class Sock:
    def makefile(self, *a, **k):
        return f
def raw(m, t, h, b):
    h = dict(h); h.setdefault("Host", host)
    if b:
        h["Content-Length"] = str(len(b))
    return ("%s %s HTTP/1.1\r\n" % (m, t) + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n").encode() + b.encode()
out = []
def read(m, t):
    r = http.client.HTTPResponse(Sock(), method=m)
    r.begin()
    body = r.read()
    seed = None
    if "seed=" in t:
        seed = int(t.split("seed=")[1].split("&")[0])
    out.append({"status": r.status, "headers": r.getheaders(), "len": len(body),
                "sha": hashlib.sha256(body).hexdigest(), "t": time.time(),
                "body": body[:200].decode("latin1"),
                "content_ok": content_ok(body, seed) if seed is not None else None})
if pipeline:
    # Sent from a thread: a client that stops reading while it sends can
    # deadlock any server once the buffers in between are full.
    threading.Thread(target=s.sendall, args=(b"".join(raw(*r) for r in reqs),), daemon=True).start()
    for m, t, _, _ in reqs:
        read(m, t)
else:
    for r in reqs:
        s.sendall(raw(*r))
        read(r[0], r[1])
print(json.dumps(out))
'''


class TestFrontOptions(unittest.TestCase):
    """rs-front refuses bad command lines with a reason (exit 2), and rs-app
    points at rs-front for the options that moved there."""

    def run_front(self, *args):
        return subprocess.run([binary("rs-front"), *args], capture_output=True, text=True, timeout=10)

    def test_help_and_bad_options(self):
        r = self.run_front("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--apply-file", r.stdout)
        up = ("--upstream", "127.0.0.1:8081")
        for args, why in ((("--listen", "0.0.0.0:1"), "--upstream ADDR:PORT is required"),
                          (("--upstream", "nowhere"), "bad --upstream"),
                          (up + ("--listen", "x"), "bad --listen"),
                          (up + ("--apply-cmd", "true", "--apply-file", "/tmp/x"), "not both"),
                          (up + ("--crash-at", "1+x"), "bad --crash-at"),
                          (up + ("--apply-timeout", "0"), "bad --apply-timeout"),
                          (up + ("extra",), "unexpected argument")):
            r = self.run_front(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(why, r.stderr, args)
        r = self.run_front(*up, "--listen", "127.0.0.1:1", "--state-dir", "/nonexistent/dir")
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad --state-dir", r.stderr)

    def test_rs_app_points_at_rs_front(self):
        for opt in ("--upstream", "--apply-file", "--strip-header"):
            r = subprocess.run([binary("rs-app"), opt, "x"], capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, opt)
            self.assertIn(f"{opt} is an option of rs-front", r.stderr)


@needs_root
class FrontCase(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-front-")
        self.dir = self.tmp.name
        self.key = os.path.join(self.dir, "key.hex")
        write_key(self.key)
        for name, text in (("upstream.py", UPSTREAM), ("client.py", CLIENT)):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        for host in ("primary", "alternate"):
            os.makedirs(self.hdir(host))
            with open(os.path.join(self.hdir(host), "apply.sh"), "w") as f:
                f.write(APPLY)
        self.tb = Testbed(LanTopo(), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.d = {}

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    def hdir(self, host):
        """The backend's own directory: its application's files and state."""
        return os.path.join(self.dir, host)

    def upstream_argv(self, host):
        return [sys.executable, os.path.join(self.dir, "upstream.py"), "127.0.0.1", str(UPSTREAM_PORT),
                self.hdir(host)]

    apply_file = None       # a test sets it: --apply-file instead of --apply-cmd

    def front_args(self, host):
        if self.apply_file:
            return ["--state-dir", self.hdir(host), "--apply-file", self.apply_file]
        return ["--state-dir", self.hdir(host), "--apply-cmd", f"sh {self.hdir(host)}/apply.sh",
                "--apply-timeout", "5s"]

    # -- daemons -------------------------------------------------------------
    def start_pair(self, *front_extra):
        """Fake logger; rs-stated, the upstream and a front on both backends."""
        self.d["logger"] = self.tb.start("logger", "fake-logger",
                                         [sys.executable, "-c", FAKE_LOGGER, LOGGER, str(LOGGER_CTL)],
                                         ready="listening")
        for host, bid, peer in (("primary", 1, ALTERNATE), ("alternate", 2, PRIMARY)):
            sock = os.path.join(self.dir, f"{host}.sock")
            self.d[f"stated-{host}"] = self.tb.start(
                host, f"stated-{host}",
                [binary("rs-stated"), "--id", str(bid), "--listen", f"0.0.0.0:{STATED_PORT}",
                 "--app-socket", sock, "--key", self.key, "--peer", f"{peer}:{STATED_PORT}",
                 "--logger", f"{LOGGER}:{LOGGER_CTL}", "--heartbeat", "10ms"], ready="listening")
            self.d[f"upstream-{host}"] = self.tb.start(host, f"upstream-{host}", self.upstream_argv(host),
                                                       ready="listening")
            self.start_front(host, f"front-{host}", *front_extra)
        for h in ("primary", "alternate"):
            self.assertTrue(wait_until(lambda: "app-connect" in self.log(f"stated-{h}"), 5),
                            self.log(f"stated-{h}"))

    def start_front(self, host, name, *extra):
        """rs-front on 'host' (again, after a crash: its log goes to run/'name'.err)."""
        sock = os.path.join(self.dir, f"{host}.sock")
        self.d[f"front-{host}"] = self.tb.start(
            host, name, [binary("rs-front"), "--listen", f"0.0.0.0:{APP_PORT}", "--id", host, "--stated", sock,
                         "--upstream", f"127.0.0.1:{UPSTREAM_PORT}"] + self.front_args(host) + list(extra),
            ready="listening")

    def log(self, name):
        with open(self.d[name].err) as f:
            return f.read()

    def txns(self, host):
        path = os.path.join(self.hdir(host), "txns.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [l.split() for l in f.read().splitlines()]

    def ctl(self, to, *args):
        cmd = [binary("rs-ctl"), "--to", f"{to}:{STATED_PORT}", "--key", self.key] + list(args)
        out = self.tb["logger"].cmd(" ".join(cmd) + " 2>&1; echo rc=$?")
        m = re.search(r"rc=(\d+)\s*$", out)
        return int(m.group(1)), out[:m.start()].strip()

    def report(self, to, client):
        rc, out = self.ctl(to, "state-query", "--client", client)
        self.assertEqual(rc, 0, out)
        m = re.match(r"report client=(\S+) ts=(\S+) ta=(\S+)$", out)
        self.assertIsNotNone(m, out)
        return m.group(2), m.group(3)

    def client(self, port, reqs, pipeline=False, host=PRIMARY):
        """Runs CLIENT on c1; returns its list of responses."""
        path = os.path.join(self.dir, f"reqs-{port}.json")    # a shell line holds 4 KB at most
        with open(path, "w") as f:
            json.dump(reqs, f)
        argv = [sys.executable, os.path.join(self.dir, "client.py"), host, str(APP_PORT), str(port),
                "1" if pipeline else "0", path]
        out = self.tb["c1"].cmd(" ".join(argv) + " 2>&1")
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail(f"client failed: {out}\n{self.log('front-primary')[-3000:]}")

    def assert_clean_headers(self, resp):
        names = {k.lower() for k, _ in resp["headers"]}
        self.assertNotIn("date", names, resp["headers"])
        self.assertEqual([n for n in names if n.startswith("x-resplice")], [], resp["headers"])


class TestFront(FrontCase):
    def test_numbering_state_apply_and_headers(self):
        self.start_pair()
        port = 42001
        client = f"{C1}:{port}"
        resps = self.client(port, [["POST", "/counter", {}, ""], ["POST", "/counter", {}, ""],
                                   ["GET", "/headers", {"X-Resplice-Txn": "10.9.9.9:1#7",
                                                        # as lighttpd would hand them to PHP:
                                                        "X_Resplice_Rerun": "1", "x-RESPLICE_txn": "x",
                                                        "X-Resplice-" + "y" * 80: "long"}, ""],
                                   ["GET", "/counter", {}, ""]])
        self.assertEqual([r["body"] for r in resps[:2]], ["counter=1\n", "counter=2\n"])
        self.assertEqual(resps[3]["body"], "counter=2\n")
        for r in resps:
            self.assertEqual(r["status"], 200)
            self.assert_clean_headers(r)
        # Numbered per connection from 0, exactly as the logger numbers them;
        # the client's own X-Resplice-Txn never reaches the application.
        self.assertEqual([t[0] for t in self.txns("primary")], [f"{client}#{n}" for n in range(4)])
        self.assertIn(f"X-Resplice-Txn: {client}#2\n", resps[2]["body"])
        self.assertNotIn("10.9.9.9", resps[2]["body"])
        # However spelled, a client's X-Resplice-* never reaches the application:
        # only the front's own header does (logged and counted).
        seen = [l.split(":")[0] for l in resps[2]["body"].splitlines()]
        self.assertEqual([n for n in seen if n.lower().replace("_", "-").startswith("x-resplice-")],
                         ["X-Resplice-Txn"], resps[2]["body"])
        self.assertEqual(len(re.findall(r"client-header \S+ '.*' dropped", self.log("front-primary"))), 4)
        # The state files went to the alternate's rs-stated (and are gone).
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, client) == ("none", "1"), 5),
                        self.log("stated-alternate"))
        self.assertEqual([n for n in os.listdir(self.hdir("primary")) if n.startswith("st-")], [])
        self.assertFalse(os.path.exists(os.path.join(self.hdir("alternate"), "counter")))
        # Logged: the alternate's front runs --apply-cmd with the blob, in order.
        for n in (0, 1):
            rc, out = self.ctl(ALTERNATE, "txn-logged", "--txn", f"{client}#{n}", "--resp-end", "1000")
            self.assertEqual(rc, 0, out)
        applies = os.path.join(self.hdir("alternate"), "applies.log")
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, client) == ("1", "1"), 5),
                        self.log("front-alternate"))
        # rs-stated counts a state applied once handed over; the command ends later.
        self.assertTrue(wait_until(lambda: "#1 cmd exit" in self.log("front-alternate"), 5),
                        self.log("front-alternate"))
        with open(applies) as f:
            lines = [l.split() for l in f.read().splitlines()]
        self.assertEqual([l[:2] for l in lines], [[f"{client}#0", "counter=1"], [f"{client}#1", "counter=2"]])
        self.assertTrue(lines[0][2].startswith(self.hdir("alternate") + "/rs-apply-"))
        self.assertFalse(os.path.exists(lines[0][2]), "the blob file outlived its apply")
        with open(os.path.join(self.hdir("alternate"), "counter")) as f:
            self.assertEqual(f.read().strip(), "2")
        self.assertRegex(self.log("front-alternate"), rf"state-apply {re.escape(client)}#1 cmd exit=0 9B")
        # A state near the 1 MiB limit goes through too.
        big = f"{C1}:{port + 1}"
        self.assertEqual(self.client(port + 1, [["POST", "/bigstate", {}, ""]])[0]["status"], 200)
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, big) == ("none", "0"), 5),
                        self.log("front-primary")[-2000:])
        # 900004 bytes of state in the front's 20-byte envelope.
        self.assertIn(f"update {big}#0 900024B", self.log("stated-alternate"))

    def test_state_in_the_head(self):
        """A state the response carries in its head (X-Resplice-State-Data,
        base64) reaches the alternate as a file's would; the header never
        reaches the client; one that is not base64 is logged and counted,
        and the response still goes."""
        self.start_pair()
        port = 42101
        resps = self.client(port, [["POST", "/inline", {}, ""], ["POST", "/badinline", {}, ""]])
        self.assertEqual([(r["status"], r["body"]) for r in resps], [(200, "inline\n"), (200, "bad\n")])
        for r in resps:
            self.assert_clean_headers(r)
        client = f"{C1}:{port}"
        self.assertTrue(wait_until(lambda: f"update {client}#0 29B" in self.log("stated-alternate"), 5),
                        self.log("stated-alternate")[-2000:])      # 9 bytes in the 20-byte envelope
        self.assertRegex(self.log("front-primary"),
                         rf"state {re.escape(client)}#1 \S+ X-Resplice-State-Data: not base64")
        self.assertNotIn(f"update {client}#1 ", self.log("stated-alternate"))

    def test_apply_file_newest_state_wins(self):
        """--apply-file installs a whole-state file by rename; states of two
        client connections logged out of the order they were taken in: the
        older one (X-Resplice-State-Seq) is skipped."""
        self.apply_file = os.path.join(self.hdir("alternate"), "app.state")
        self.start_pair()
        a, b = f"{C1}:42041", f"{C1}:42042"
        self.client(42041, [["POST", "/counter", {}, ""]])     # counter=1, seq 1
        self.client(42042, [["POST", "/counter", {}, ""]])     # counter=2, seq 2
        for cl in (a, b):
            self.assertTrue(wait_until(lambda: self.report(ALTERNATE, cl) == ("none", "0"), 5))
        read = lambda: open(self.apply_file).read() if os.path.exists(self.apply_file) else None  # noqa: E731
        self.assertEqual(self.ctl(ALTERNATE, "txn-logged", "--txn", f"{b}#0", "--resp-end", "1")[0], 0)
        self.assertTrue(wait_until(lambda: read() == "counter=2", 5), self.log("front-alternate"))
        self.assertEqual(self.ctl(ALTERNATE, "txn-logged", "--txn", f"{a}#0", "--resp-end", "1")[0], 0)
        self.assertTrue(wait_until(lambda: "older than the installed 2: skipped" in self.log("front-alternate"), 5),
                        self.log("front-alternate"))
        self.assertEqual(read(), "counter=2")
        self.assertIn(f"state-apply {b}#0 file 9B seq=2", self.log("front-alternate"))
        self.assertEqual([f for f in os.listdir(self.hdir("alternate")) if ".rs-" in f], [])

    def test_export_brings_a_rejoining_standby_up_to_date(self):
        """A backend readmitted after a failure rejoins the chain and gets its
        predecessor's whole state (rs-stated's snapshot, the library's
        export): from the serving front its own newest state, from a
        standby the one --apply-file installed.  Each readmission is the
        proxy's FENCE pair (fenced, then readmitted) sent by rs-ctl to both
        rs-stateds; the fenced backend's front is stopped and started again."""
        self.front_args = lambda host: ["--state-dir", self.hdir(host), "--apply-file",
                                        os.path.join(self.hdir(host), "app.state")]
        self.start_pair()
        self.client(42051, [["POST", "/counter", {}, ""]])     # counter=1, seq 1
        self.client(42052, [["POST", "/counter", {}, ""]])     # counter=2, seq 2

        def readmit(bid, host, generation):
            for word in ("fence", "readmit"):
                for to in (PRIMARY, ALTERNATE):
                    self.assertEqual(self.ctl(to, word, "--backend-id", str(bid),
                                              "--target", f"{SERVERS[host]}:{APP_PORT}")[0], 0)
            self.start_front(host, f"front-{host}-{generation}")
            self.assertTrue(wait_until(lambda: "snapshot applied" in self.log(f"stated-{host}"), 5),
                            self.log(f"stated-{host}")[-2000:])
            # rs-stated logs the snapshot once it went to the front, which
            # installs it a moment later.
            path = os.path.join(self.hdir(host), "app.state")
            self.assertTrue(wait_until(lambda: os.path.exists(path) and open(path).read() == "counter=2", 5),
                            self.log(f"front-{host}")[-2000:])
            self.assertIn("state-apply 0.0.0.0:0#0 file 9B seq=2", self.log(f"front-{host}"))

        readmit(2, "alternate", 2)      # from the serving primary: its own newest state
        self.assertIn("state-export 9B seq=2", self.log("front-primary"))
        readmit(1, "primary", 2)        # from the alternate: the state it installed
        self.assertIn("state-export 9B seq=2", self.log("front-alternate"))
        self.assertIn("snapshot to backend=0: 29B covered=2", self.log("stated-alternate"))

    def test_apply_failure_is_reported(self):
        self.start_pair()
        port = 42002
        client = f"{C1}:{port}"
        self.client(port, [["POST", "/counter", {}, ""]])
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, client) == ("none", "0"), 5))
        with open(os.path.join(self.hdir("alternate"), "apply.sh"), "w") as f:
            f.write("#!/bin/sh\nexit 3\n")
        rc, out = self.ctl(ALTERNATE, "apply", "--client", client, "--upto", "1")
        self.assertNotEqual((rc, out), (0, "ack APPLY status=0"))
        self.assertIn("status=-5", out)        # -EIO: the command failed
        self.assertIn("cmd exit=3", self.log("front-alternate"))
        self.assertTrue(self.d["front-alternate"].alive())

    def test_conn_map_names_the_client(self):
        self.start_pair()
        port = 42010
        rc, out = self.ctl(PRIMARY, "conn-map", "--peer", f"{C1}:{port}", "--client", "10.0.9.9:1234",
                           "--next", "5")
        self.assertEqual((rc, out), (0, "ack CONN_MAP status=0"))
        resps = self.client(port, [["POST", "/counter", {}, ""], ["GET", "/counter", {}, ""]])
        self.assertEqual([r["status"] for r in resps], [200, 200])
        self.assertEqual([t[0] for t in self.txns("primary")], ["10.0.9.9:1234#5", "10.0.9.9:1234#6"])
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, "10.0.9.9:1234") == ("none", "5"), 5))

    def test_sync_waits_for_the_alternate(self):
        self.start_pair("--stated-timeout", "300ms")
        port = 42020
        client = f"{C1}:{port}"
        t0 = time.time()
        resps = self.client(port, [["GET", "/token", {}, ""]])
        self.assertEqual(resps[0]["status"], 200)
        self.assert_clean_headers(resps[0])
        self.assertRegex(resps[0]["body"], r"^token=[0-9a-f]{32}\n$")
        # The alternate's rs-stated had the state before the response left.
        m = re.search(rf"^(\d+\.\d+) \S+ update {re.escape(client)}#0 (\d+)B sync", self.log("stated-alternate"),
                      re.M)
        self.assertIsNotNone(m, self.log("stated-alternate"))
        # The envelope carries the 38-byte state and the whole response.
        self.assertGreater(int(m.group(2)), 20 + 38 + len(resps[0]["body"]))
        self.assertLessEqual(float(m.group(1)), resps[0]["t"])
        self.assertGreaterEqual(float(m.group(1)), t0)
        self.assertEqual(self.report(ALTERNATE, client), ("none", "0"))
        # With the alternate's stated stuck (connected, never answering), a
        # sync response waits for the library's timeout (then goes
        # unreplicated); an async one does not wait.
        st = self.d["stated-alternate"]
        st.popen.send_signal(signal.SIGSTOP)
        try:
            t0 = time.time()
            r = self.client(port + 1, [["POST", "/counter", {}, ""], ["GET", "/token", {}, ""]])
        finally:
            st.popen.send_signal(signal.SIGCONT)
        self.assertEqual([x["status"] for x in r], [200, 200])
        self.assertLess(r[0]["t"] - t0, 0.25 + 0.5)     # python start-up included
        self.assertGreaterEqual(r[1]["t"] - r[0]["t"], 0.25)
        self.assertRegex(self.log("front-primary"), r"state-update \S+ timed out")

    def test_pipelining_large_bodies_bounded_memory(self):
        self.start_pair()
        port = 42030
        client = f"{C1}:{port}"
        big = 50_000_000
        reqs = [["GET", "/counter", {}, ""], ["HEAD", "/static/100", {}, ""], ["GET", "/nocontent", {}, ""],
                ["GET", f"/static/{big}?seed=3", {}, ""], ["POST", "/counter", {}, ""],
                ["GET", "/slow?bytes=30000&chunk=7000&delay=0.01&seed=5", {}, ""],
                ["POST", "/echo", {}, "x" * 100000], ["GET", "/counter", {}, ""]]
        resps = self.client(port, reqs, pipeline=True)
        self.assertEqual([r["status"] for r in resps], [200, 200, 204, 200, 200, 200, 200, 200])
        self.assertEqual(resps[0]["body"], "counter=0\n")
        self.assertEqual(resps[1]["len"], 0)
        self.assertEqual(dict((k.lower(), v) for k, v in resps[1]["headers"])["content-length"], "100")
        self.assertEqual((resps[3]["len"], resps[3]["content_ok"]), (big, True))
        self.assertEqual(resps[4]["body"], "counter=1\n")
        self.assertEqual((resps[5]["len"], resps[5]["content_ok"]), (30000, True))
        self.assertTrue(resps[6]["body"].startswith("100000 "))
        self.assertEqual(resps[7]["body"], "counter=1\n")
        for r in resps:
            self.assert_clean_headers(r)
        # In order, numbered in order.
        self.assertEqual([(t[0], t[1]) for t in self.txns("primary")],
                         [(f"{client}#{n}", m) for n, (m, *_) in enumerate(reqs)])
        # 50 MB went through bounded buffers.
        with open(f"/proc/{self.d['front-primary'].pid}/status") as f:
            hwm = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))
        self.assertLess(hwm, 32 * 1024, f"front peaked at {hwm} kB")


@needs_root
class TestFrontFailover(unittest.TestCase):
    """The real stack (proxy, logger, rs-stated) with fronts and the Python
    application on both backends: the primary's front dies mid-response."""

    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-front-fo-")
        self.dir = self.tmp.name
        with open(os.path.join(self.dir, "upstream.py"), "w") as f:
            f.write(UPSTREAM)
        for host in ("primary", "alternate"):
            os.makedirs(os.path.join(self.dir, host))
            with open(os.path.join(self.dir, host, "apply.sh"), "w") as f:
                f.write(APPLY)
        self.tb = Testbed(LanTopo(), os.path.join(self.dir, "run"))
        self.tb.__enter__()

    def start_stack(self, crash_at=None):
        hd = lambda h: os.path.join(self.dir, h)  # noqa: E731
        crash = lambda h: ["--crash-at", crash_at] if crash_at and h == "primary" else []  # noqa: E731
        tags = os.path.join(self.dir, "tags.conf")
        with open(tags, "w") as f:
            f.write("* /token* update nondeterministic\n")
        self.stack = Stack(self.tb, self.dir, logger_args=["--tags", tags], front={
            "upstream": lambda h: [sys.executable, os.path.join(self.dir, "upstream.py"), "127.0.0.1",
                                   str(UPSTREAM_PORT), hd(h)],
            "port": UPSTREAM_PORT,
            "args": lambda h: ["--state-dir", hd(h), "--apply-cmd", f"sh {hd(h)}/apply.sh"] + crash(h),
        }).start()

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    @staticmethod
    def read(path):
        with open(path) as f:
            return f.read()

    def test_front_killed_mid_response(self):
        self.start_stack()
        slow = "/slow?bytes=400000&chunk=8000&delay=0.02"
        trace = os.path.join(self.dir, "t.trace")
        with open(trace, "w") as f:
            f.write("request POST /counter\n  expect contains \"counter=1\"\n"
                    "request POST /counter\n  expect contains \"counter=2\"\n"
                    f"request GET {slow}\n  expect length 400000\n  expect content seed=0\n"
                    "request POST /counter\n  expect contains \"counter=3\"\n"
                    "request GET /counter\n  expect contains \"counter=3\"\n")
        out = os.path.join(self.dir, "c.csv")
        cap, pcap = self.tb.capture("c1", "c1", bpf_filter="tcp port 80")
        d = self.tb.start("c1", "client", [binary("rs-client"), "--server", self.stack.vip, "--trace", trace,
                                           "--csv", out, "--timeout", "10s"])
        h = self.tb.crash_when(lambda: "step=1 response" in self.read(d.err),
                               lambda: (time.sleep(0.4), self.stack.kill_primary())[1], timeout=30)
        d.popen.wait(60)
        self.tb.stop_capture(cap)
        log = self.read(d.err)
        self.assertIsNotNone(h.result, "the crash never happened")
        self.assertEqual(d.popen.returncode, 0, d.output() + log + self.stack.log("proxy")[-3000:])
        with open(out) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 5, rows)
        self.assertEqual({r["result"] for r in rows}, {"ok"}, rows)
        self.assertEqual(len({r["local_port"] for r in rows}), 1, "the client had to reconnect")
        self.assertEqual(pcap_count(pcap, "tcp[tcpflags] & tcp-rst != 0"), 0, "the client saw a RST")
        self.assertRegex(self.stack.log("proxy"), rf"recovered id={self.stack.first_id()} ")
        # The alternate got the counter through --apply-cmd and served the rest.
        with open(os.path.join(self.dir, "alternate", "counter")) as f:
            self.assertEqual(f.read().strip(), "3")
        # It regenerated TL+1 (the slow response) and served the rest under
        # the client's own transaction IDs.
        port = rows[0]["local_port"]
        with open(os.path.join(self.dir, "alternate", "txns.log")) as f:
            alt = [l.split()[:2] for l in f.read().splitlines()]
        for n, m in ((2, "GET"), (3, "POST"), (4, "GET")):
            self.assertIn([f"{C1}:{port}#{n}", m], alt)

    def test_nondeterministic_answered_from_record(self):
        """The primary dies 60 bytes into the response of a synchronous
        (non-deterministic) transaction: the alternate must answer it with
        the primary's response, which travelled with the state, not with a
        new token of its own."""
        self.start_stack(crash_at="1+60")
        trace = os.path.join(self.dir, "t.trace")
        with open(trace, "w") as f:
            f.write("request POST /counter\n  expect contains \"counter=1\"\n"
                    "request GET /token\n  capture t body \"token=([0-9a-f]+)\"\n"
                    "request POST /counter\n  expect contains \"counter=2\"\n"
                    "request GET /counter?t=${t}\n  expect contains \"counter=2\"\n")
        out = os.path.join(self.dir, "c.csv")
        d = self.tb.start("c1", "client", [binary("rs-client"), "--server", self.stack.vip, "--trace", trace,
                                           "--csv", out, "--timeout", "10s"])
        d.popen.wait(60)
        self.assertEqual(d.popen.returncode, 0, d.output() + self.read(d.err) + self.stack.log("proxy")[-3000:]
                         + self.stack.log("logger")[-3000:])
        with open(out) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([r["result"] for r in rows], ["ok"] * 4, rows)
        self.assertEqual(len({r["local_port"] for r in rows}), 1, "the client had to reconnect")
        client = f"{C1}:{rows[0]['local_port']}"
        self.assertRegex(self.stack.log("app-primary"), rf"crash-at {re.escape(client)}#1 ")
        self.assertRegex(self.stack.log("proxy"), rf"recovered id={self.stack.first_id()} ")
        self.assertIn(f"from-record {client}#1", self.stack.log("app-alternate"))
        # The token the client went on with is the primary's.
        crash = os.path.join(self.dir, "primary", f"crash-{client.replace(':', '_')}_1.resp")
        primary_token = re.search(r"token=([0-9a-f]{32})", self.read(crash)).group(1)
        with open(os.path.join(self.dir, "alternate", "txns.log")) as f:
            used = re.findall(r"GET /counter\?t=([0-9a-f]+)", f.read())
        self.assertEqual(used, [primary_token])
        # The alternate never ran /token itself.
        with open(os.path.join(self.dir, "alternate", "txns.log")) as f:
            self.assertNotIn("/token", f.read())


if __name__ == "__main__":
    unittest.main()
