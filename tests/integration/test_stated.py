"""Integration tests of state transfer (issue 5): rs-stated on the primary and
the alternate, each with an rs-app whose state library (--stated) talks to
it.  The primary's updates must reach the alternate's rs-stated, be applied
only once logged (TXN_LOGGED) or on APPLY, non-deterministic responses must
wait for the alternate's ACK, CONN_MAP must give a connection the client
identity and numbering it names, and heartbeats must flow to the logger
while the app lives and stop (with a FAILURE) when it dies."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from emul.places import APP_PORT, LOGGER_CTL, STATED_PORT, binary, write_key
from emul.shaping import wait_until
from emul.testbed import Testbed, leftovers
from tests.integration.harness import needs_root
from topologies.lan import SERVERS, LanTopo, client_ip

PRIMARY, ALTERNATE, LOGGER = SERVERS["primary"], SERVERS["alternate"], SERVERS["logger"]
C1 = client_ip(0)

# A stand-in for rs-logger's control port: accepts connections, and
# datagrams (heartbeats and failure reports) on the same port number, and
# prints one line per control frame (framed by the header's length field;
# the MAC is not checked here, rs-stated's peers check it).
FAKE_LOGGER = r"""
import select, socket, struct, sys, time
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(16)
us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); us.bind((sys.argv[1], int(sys.argv[2])))
print("listening on %s:%s" % (sys.argv[1], sys.argv[2]), flush=True)
conns, seen = {}, set()
def show(f, frm):
    extra = ""
    if f[3] == 2:
        extra = " backend=%d reason=%d" % struct.unpack(">IH", f[22:28])
    print("frame t=%.6f from=%s type=%d%s" % (time.monotonic(), frm, f[3], extra), flush=True)
while True:
    r, _, _ = select.select([ls, us] + list(conns), [], [])
    for s in r:
        if s is ls:
            c, a = ls.accept(); conns[c] = [a[0], b""]; continue
        if s is us:
            # A datagram to the mirror host arrives twice (forwarded and mirrored): once is news.
            f, a = us.recvfrom(65536)
            if f[6:18] not in seen:
                seen.add(f[6:18]); show(f, a[0])
            continue
        d = s.recv(65536)
        if not d:
            del conns[s]; s.close(); continue
        conns[s][1] += d
        buf = conns[s][1]
        while len(buf) >= 22:
            n = 22 + struct.unpack(">I", buf[18:22])[0] + 32
            if len(buf) < n:
                break
            f, buf = buf[:n], buf[n:]
            show(f, conns[s][0])
        conns[s][1] = buf
"""


@needs_root
class StatedCase(unittest.TestCase):
    def setUp(self):
        self.assertEqual(leftovers(), [], "testbed leftovers from an earlier run")
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-stated-")
        self.dir = self.tmp.name
        self.key = os.path.join(self.dir, "key.hex")
        write_key(self.key)
        self.tb = Testbed(LanTopo(), os.path.join(self.dir, "run"))
        self.tb.__enter__()
        self.d = {}

    def tearDown(self):
        self.tb.__exit__(None, None, None)
        self.tmp.cleanup()
        self.assertEqual(leftovers(), [])

    # -- daemons -------------------------------------------------------------
    def fake_logger(self):
        self.d["logger"] = self.tb.start("logger", "fake-logger",
                                         [sys.executable, "-c", FAKE_LOGGER, LOGGER, str(LOGGER_CTL)],
                                         ready="listening")

    def stated(self, host, bid, peer):
        sock = os.path.join(self.dir, f"{host}.sock")
        self.d[f"stated-{host}"] = self.tb.start(
            host, f"stated-{host}",
            [binary("rs-stated"), "--id", str(bid), "--listen", f"0.0.0.0:{STATED_PORT}",
             "--app-socket", sock, "--key", self.key, "--peer", f"{peer}:{STATED_PORT}",
             "--logger", f"{LOGGER}:{LOGGER_CTL}", "--heartbeat", "10ms"], ready="listening")
        return sock

    def app(self, host, sock, *extra):
        self.d[f"app-{host}"] = self.tb.start(
            host, f"app-{host}",
            [binary("rs-app"), "--listen", f"0.0.0.0:{APP_PORT}", "--id", host, "--stated", sock]
            + list(extra), ready="listening")

    def pair(self, *app_extra):
        """rs-stated + rs-app on the primary (id 1) and the alternate (id 2)."""
        sp = self.stated("primary", 1, ALTERNATE)
        sa = self.stated("alternate", 2, PRIMARY)
        self.app("primary", sp, *app_extra)
        self.app("alternate", sa)
        # Each app's library is connected once its stated says so.
        for h in ("primary", "alternate"):
            self.assertTrue(wait_until(lambda: "app-connect" in self.log(f"stated-{h}"), 5),
                            self.log(f"stated-{h}"))

    def log(self, name):
        with open(self.d[name].err) as f:
            return f.read()

    # -- clients -------------------------------------------------------------
    def ctl(self, to, *args):
        """Runs rs-ctl from the logger host; returns (exit status, output)."""
        cmd = [binary("rs-ctl"), "--to", f"{to}:{STATED_PORT}", "--key", self.key] + list(args)
        out = self.tb["logger"].cmd(" ".join(cmd) + " 2>&1; echo rc=$?")
        m = re.search(r"rc=(\d+)\s*$", out)
        return int(m.group(1)), out[:m.start()].strip()

    def report(self, to, client):
        rc, out = self.ctl(to, "state-query", "--client", client)
        self.assertEqual(rc, 0, out)
        m = re.match(r"report client=(\S+) ts=(\S+) ta=(\S+)$", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(m.group(1), client)
        return m.group(2), m.group(3)

    def curl(self, host_ip, path, *opts, method="GET", port=None):
        """curl from c1; returns (HTTP code, seconds, body)."""
        argv = ["curl", "-s", "-X", method, "-o", "-", "-w", "'\\n%{http_code} %{time_total}'",
                "--max-time", "10"] + list(opts)
        if port:
            argv += ["--local-port", str(port)]
        out = self.tb["c1"].cmd(" ".join(argv + [f"http://{host_ip}:{APP_PORT}{path}"]))
        body, _, tail = out.rstrip().rpartition("\n")
        code, secs = tail.split()
        return int(code), float(secs), body

    def counter(self, host_ip):
        code, _, body = self.curl(host_ip, "/counter")
        self.assertEqual(code, 200, body)
        return int(body.strip().split("=")[1])

    def frames(self, src, ftype):
        """(time, line) of each frame of type 'ftype' from 'src' the fake logger saw."""
        out = self.d["logger"].output()
        return [(float(m.group(1)), m.group(0)) for m in
                re.finditer(rf"^frame t=(\S+) from={re.escape(src)} type={ftype}\b.*$", out, re.M)]


class TestStated(StatedCase):
    def test_updates_buffered_until_logged_then_applied(self):
        self.fake_logger()
        self.pair()
        port = 41001
        client = f"{C1}:{port}"
        # Three updates on one connection from c1 (a direct client: the
        # peer address is the client), transactions 0, 1, 2.
        url = f"http://{PRIMARY}:{APP_PORT}/counter"
        out = self.tb["c1"].cmd(f"curl -s --local-port {port} -X POST {url} {url} {url}")
        self.assertEqual(out.split(), ["counter=1", "counter=2", "counter=3"], out)
        # The alternate received them all (asynchronously) but applied none.
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, client) == ("none", "2"), 5),
                        self.log("stated-alternate"))
        self.assertEqual(self.counter(ALTERNATE), 0)
        # The logger logged 0 and 1: their states are applied, in order.
        for n in (0, 1):
            rc, out = self.ctl(ALTERNATE, "txn-logged", "--txn", f"{client}#{n}", "--resp-end", "1000")
            self.assertEqual(rc, 0, out)
        self.assertTrue(wait_until(lambda: self.counter(ALTERNATE) == 2, 5))
        self.assertEqual(self.report(ALTERNATE, client), ("1", "2"))
        log = self.log("app-alternate")
        self.assertLess(log.index(f"state-apply {client}#0 counter+=1"),
                        log.index(f"state-apply {client}#1 counter+=1"))
        # Recovery's APPLY takes the rest below 3, logged or not; ACKed once applied.
        rc, out = self.ctl(ALTERNATE, "apply", "--client", client, "--upto", "3")
        self.assertEqual((rc, out), (0, "ack APPLY status=0"))
        self.assertEqual(self.counter(ALTERNATE), 3)
        self.assertEqual(self.report(ALTERNATE, client), ("2", "2"))
        # Nothing left: an unknown client and a repeated APPLY are harmless.
        self.assertEqual(self.report(ALTERNATE, "10.0.7.7:7"), ("none", "none"))
        self.assertEqual(self.ctl(ALTERNATE, "apply", "--client", client, "--upto", "3")[0], 0)
        # The primary's own state never went anywhere else.
        self.assertEqual(self.counter(PRIMARY), 3)

    def test_logged_before_update_applies_on_arrival(self):
        self.fake_logger()
        self.pair()
        port = 41002
        client = f"{C1}:{port}"
        # TXN_LOGGED first (the asynchronous transfer lags), then the update.
        rc, out = self.ctl(ALTERNATE, "txn-logged", "--txn", f"{client}#0", "--resp-end", "1")
        self.assertEqual(rc, 0, out)
        self.assertEqual(self.report(ALTERNATE, client), ("none", "none"))
        code, _, body = self.curl(PRIMARY, "/counter", method="POST", port=port)
        self.assertEqual((code, body.strip()), (200, "counter=1"))
        self.assertTrue(wait_until(lambda: self.counter(ALTERNATE) == 1, 5), self.log("stated-alternate"))
        self.assertEqual(self.report(ALTERNATE, client), ("0", "0"))
        # A frame under another key and plain junk are refused; stated carries on.
        other = os.path.join(self.dir, "other.hex")
        write_key(other)
        out = self.tb["logger"].cmd(f"{binary('rs-ctl')} --to {ALTERNATE}:{STATED_PORT} --key {other} "
                                    f"apply --client {client} --upto 9 2>&1; echo rc=$?")
        self.assertIn("rc=1", out)
        self.tb["logger"].cmd(f"{sys.executable} -c \"import socket; s=socket.create_connection("
                              f"('{ALTERNATE}', {STATED_PORT})); s.sendall(b'GET / HTTP/1.1' * 9)\"")
        self.assertTrue(wait_until(lambda: "bad MAC" in self.log("stated-alternate"), 5))
        self.assertEqual(self.report(ALTERNATE, client), ("0", "0"))
        self.assertTrue(self.d["stated-alternate"].alive())

    def test_nondeterministic_response_waits_for_the_alternate(self):
        self.fake_logger()
        self.pair("--stated-timeout", "300ms")
        code, secs, body = self.curl(PRIMARY, "/token", port=41003)
        self.assertEqual(code, 200, body)
        token = re.match(r"token=([0-9a-f]{32})$", body.strip())
        self.assertIsNotNone(token, body)
        # The alternate's stated had it (sync) before the response left.
        client = f"{C1}:41003"
        self.assertRegex(self.log("stated-alternate"), rf"update {re.escape(client)}#0 38B sync")
        self.assertEqual(self.report(ALTERNATE, client), ("none", "0"))
        self.assertRegex(self.log("stated-primary"), rf"relay {re.escape(client)}#0 38B sync")
        # Deterministic updates do not wait, tokens do: with the alternate's
        # stated stuck (connected, never answering), /token waits for the
        # library's timeout, then answers without a standby copy (recovery
        # would refuse to regenerate it).
        st = self.d["stated-alternate"]
        st.popen.send_signal(signal.SIGSTOP)
        try:
            results = [self.curl(PRIMARY, "/token", port=41004 + i) for i in range(2)]
            code, secs, body = self.curl(PRIMARY, "/counter", method="POST")
        finally:
            st.popen.send_signal(signal.SIGCONT)
        for c, s_, b in results:
            self.assertEqual(c, 200, b)
            self.assertLess(s_, 2.0)
        self.assertGreaterEqual(max(s_ for _, s_, _ in results), 0.25, results)
        self.assertEqual((code, body.strip()), (200, "counter=1"))
        self.assertLess(secs, 0.25)
        self.assertRegex(self.log("app-primary"), r"state-update \S+ timed out")
        self.assertRegex(self.log("app-primary"), r"state-update \S+ unreplicated")
        # With the alternate's stated gone (its port refuses), nothing waits.
        self.tb.stop(st)
        code, secs, body = self.curl(PRIMARY, "/token", port=41007)
        self.assertEqual(code, 200, body)
        self.assertLess(secs, 0.25)

    def test_conn_map_names_the_client(self):
        self.fake_logger()
        self.pair()
        port = 41010
        rc, out = self.ctl(PRIMARY, "conn-map", "--peer", f"{C1}:{port}", "--client", "10.0.9.9:1234",
                           "--next", "5")
        self.assertEqual((rc, out), (0, "ack CONN_MAP status=0"))
        code, _, body = self.curl(PRIMARY, "/counter", method="POST", port=port)
        self.assertEqual((code, body.strip()), (200, "counter=1"))
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, "10.0.9.9:1234") == ("none", "5"), 5),
                        self.log("stated-alternate"))
        self.assertIn("update 10.0.9.9:1234#5 10B", self.log("stated-alternate"))
        self.assertIn("txn 10.0.9.9:1234#5 ", self.log("app-primary"))
        # The map is used once: the next connection from that port is itself.
        time.sleep(0.1)
        code, _, _ = self.curl(PRIMARY, "/counter", method="POST", port=port + 1)
        self.assertEqual(code, 200)
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, f"{C1}:{port + 1}") == ("none", "0"), 5))
        # Without an app connected, CONN_MAP is refused (the proxy must not
        # connect to a backend that cannot number its requests).
        self.tb.kill(self.d["app-alternate"])
        rc, out = self.ctl(ALTERNATE, "conn-map", "--peer", f"{C1}:{port}", "--client", "10.0.9.9:1234",
                           "--next", "1")
        self.assertEqual(rc, 1, out)
        self.assertIn("status=-107", out)      # -ENOTCONN

    def test_heartbeats_and_failure(self):
        self.fake_logger()
        self.pair()
        # Both backends heartbeat every ~10 ms.
        self.assertTrue(wait_until(lambda: len(self.frames(PRIMARY, 1)) > 20, 5), self.d["logger"].output())
        t0 = time.monotonic()
        time.sleep(1.05)
        n = len([t for t, _ in self.frames(PRIMARY, 1) if t0 < t <= t0 + 1.0])
        self.assertTrue(80 <= n <= 120, f"{n} heartbeats from the primary in 1 s")
        self.assertGreater(len(self.frames(ALTERNATE, 1)), 50)
        # The primary's app dies: FAILURE at once, heartbeats stop.
        t_kill = self.tb.kill(self.d["app-primary"])
        self.assertTrue(wait_until(lambda: self.frames(PRIMARY, 2), 2), self.log("stated-primary"))
        t_fail, line = self.frames(PRIMARY, 2)[0]
        self.assertIn("backend=1 reason=3", line)       # RS_CTL_FAIL_EXITED
        self.assertLess(t_fail - t_kill, 0.05)
        time.sleep(0.3)
        late = [t for t, _ in self.frames(PRIMARY, 1) if t > t_kill + 0.05]
        self.assertEqual(late, [], "heartbeats after the app died")
        # One report, sent as a few copies of the datagram at once.
        fails = self.frames(PRIMARY, 2)
        self.assertTrue(1 <= len(fails) <= 3, fails)
        self.assertLess(fails[-1][0] - fails[0][0], 0.01)
        # The alternate keeps going; a restarted app resumes heartbeats.
        n_alt = len(self.frames(ALTERNATE, 1))
        time.sleep(0.1)
        self.assertGreater(len(self.frames(ALTERNATE, 1)), n_alt)
        self.app("primary", os.path.join(self.dir, "primary.sock"))
        self.assertTrue(wait_until(lambda: [t for t, _ in self.frames(PRIMARY, 1) if t > t_kill + 0.4], 5))
        self.assertIn("app-disconnect", self.log("stated-primary"))


class TestKeyFile(unittest.TestCase):
    """A key file others can read is refused, with the reason; 0600 is taken.
    (No testbed: the daemons fail before they open a socket.)"""

    def test_readable_key_refused(self):
        with tempfile.TemporaryDirectory(prefix="rs-key-") as d:
            key = write_key(os.path.join(d, "key.hex"))
            self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
            os.chmod(key, 0o640)
            for argv in ([binary("rs-stated"), "--id", "1", "--key", key, "--app-socket", os.path.join(d, "s")],
                         [binary("rs-ctl"), "--to", "127.0.0.1:1", "--key", key, "status"]):
                r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                self.assertEqual(r.returncode, 1, argv)
                self.assertIn("can be read by others (mode 0640): chmod 600 it", r.stderr)
            os.chmod(key, 0o600)
            r = subprocess.run([binary("rs-ctl"), "--to", "127.0.0.1:1", "--key", key, "status"],
                               capture_output=True, text=True, timeout=10)
            self.assertIn("cannot send to 127.0.0.1:1", r.stderr)     # past the key


# Connects from c1's port argv[3] to argv[1]:argv[2], sends the lines of
# argv[4] ('|'-separated) and prints the answers '|'-separated.
LINES_CLIENT = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[3]))); s.settimeout(10); s.connect((sys.argv[1], int(sys.argv[2])))
lines = sys.argv[4].split("|")
s.sendall("".join(l + "\n" for l in lines).encode())
f = s.makefile()
print("|".join(f.readline().strip() for _ in lines))
"""


class TestLibraryAlone(StatedCase):
    """rs-kv (libstate/example/kv.c), written against libstate/rs_state.h
    alone as a third-party application would be, takes part like rs-app:
    its updates reach the alternate and are applied once logged, its
    non-deterministic answer waits for the alternate and is repeated there
    by a replay that a CONN_MAP names."""

    def kv(self, host, sock):
        self.d[f"app-{host}"] = self.tb.start(host, f"kv-{host}", [binary("rs-kv"), "--listen",
                                              f"0.0.0.0:{APP_PORT}", "--stated", sock], ready="listening")

    def talk(self, host_ip, port, *lines):
        script = os.path.join(self.dir, "lines.py")
        with open(script, "w") as f:
            f.write(LINES_CLIENT)
        out = self.tb["c1"].cmd(f"{sys.executable} {script} {host_ip} {APP_PORT} {port} '{'|'.join(lines)}'")
        return out.strip().split("|")

    def test_state_flows_and_token_replays(self):
        self.fake_logger()
        sp = self.stated("primary", 1, ALTERNATE)
        sa = self.stated("alternate", 2, PRIMARY)
        self.kv("primary", sp)
        self.kv("alternate", sa)
        for h in ("primary", "alternate"):
            self.assertTrue(wait_until(lambda: "app-connect" in self.log(f"stated-{h}"), 5))
        client = f"{C1}:42001"
        answers = self.talk(PRIMARY, 42001, "set a 1", "set b 2", "token")
        self.assertEqual(answers[:2], ["ok", "ok"], answers)
        self.assertRegex(answers[2], r"^token [0-9a-f]{16}$")
        self.assertRegex(self.log("stated-alternate"), rf"update {re.escape(client)}#2 \d+B sync")
        self.assertTrue(wait_until(lambda: self.report(ALTERNATE, client) == ("none", "2"), 5))
        self.assertEqual(self.talk(ALTERNATE, 42010, "get a"), ["none"])       # not logged yet
        for n in (0, 1):
            self.assertEqual(self.ctl(ALTERNATE, "txn-logged", "--txn", f"{client}#{n}", "--resp-end", "1")[0], 0)
        self.assertTrue(wait_until(lambda: self.talk(ALTERNATE, 42011, "get a", "get b") == ["1", "2"], 5))
        # Recovery: APPLY below 3 (the token's state), then the replay of #2
        # from a connection the CONN_MAP names as the client's, from number 2.
        self.assertEqual(self.ctl(ALTERNATE, "apply", "--client", client, "--upto", "3"), (0, "ack APPLY status=0"))
        rc, out = self.ctl(ALTERNATE, "conn-map", "--peer", f"{C1}:42012", "--client", client, "--next", "2")
        self.assertEqual(rc, 0, out)
        self.assertEqual(self.talk(ALTERNATE, 42012, "token"), [answers[2]])

    def test_named_by_proxy_header(self):
        """rs-proxy's PROXY v2 header, in two pieces, names the client."""
        self.fake_logger()
        sp = self.stated("primary", 1, ALTERNATE)
        self.stated("alternate", 2, PRIMARY)
        self.kv("primary", sp)
        self.assertTrue(wait_until(lambda: "app-connect" in self.log("stated-primary"), 5))
        header = ("b'\\r\\n\\r\\n\\x00\\r\\nQUIT\\n\\x21\\x11\\x00\\x0c' + bytes([10, 0, 9, 9, 10, 0, 0, 1])"
                  " + (777).to_bytes(2, 'big') + (80).to_bytes(2, 'big')")
        out = self.tb["c1"].cmd(
            f"{sys.executable} -c \"import socket,time;s=socket.create_connection(('{PRIMARY}',{APP_PORT}));"
            f"h={header};s.sendall(h[:9]);time.sleep(0.05);s.sendall(h[9:]+b'set c 3\\n');"
            "print(s.recv(100).decode().strip())\"")
        self.assertEqual(out.strip().splitlines()[-1:], ["ok"], out)
        self.assertRegex(self.log("app-primary"), r"conn-named \S+ client=10\.0\.9\.9:777 \(PROXY header\)")
        self.assertTrue(wait_until(lambda: "update 10.0.9.9:777#0 " in self.log("stated-alternate"), 5),
                        self.log("stated-alternate"))


if __name__ == "__main__":
    unittest.main()
