"""Integration tests of rs-app, the reference application (issue 4), on
127.0.0.1 (no Mininet): checkable static content, HEAD, keep-alive,
pipelining, the counter, the token, the slow chunked stream, connection
close, malformed and oversize requests, bounded memory on large responses,
the held-response path (--sync-delay), logs and signals."""
import http.client
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from emul.places import binary
from emul.shaping import wait_until

APP = binary("rs-app")
TIMEOUT = 10


def content(seed, off, n):
    """The pattern of core/content.h, as documented there."""
    tag = (seed * 0x9E3779B97F4A7C15 % 2**64) >> 48
    first = off - off % 16
    text = "".join("%04x %010x\n" % (tag, r % 2**40) for r in range(first, off + n, 16))
    return text.encode()[off - first:off - first + n]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(f, head=False):
    """Reads one response from buffered socket file 'f'.
    Returns (status, headers with lower-case names, body, chunk sizes or None)."""
    line = f.readline()
    if not line:
        raise EOFError("connection closed before a response")
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", line)
    if not m:
        raise ValueError(f"bad status line {line!r}")
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body, chunks = b"", None
    if head:
        pass
    elif headers.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            size = int(f.readline().strip(), 16)
            data = f.read(size)
            assert f.read(2) == b"\r\n", "chunk not followed by CRLF"
            if size == 0:
                break
            chunks.append(size)
            body += data
    else:
        body = f.read(int(headers["content-length"]))
    return int(m.group(1)), headers, body, chunks


def request(method, target, headers=None, body=b"", version="HTTP/1.1"):
    hdrs = {"Host": "app"}
    hdrs.update(headers or {})
    if body:
        hdrs["Content-Length"] = str(len(body))
    text = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return text.encode() + b"\r\n" + body


class App:
    """One rs-app process on 127.0.0.1; stdout lines are collected by a thread."""

    def __init__(self, *args, name="test"):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="rs-app-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [APP, "--listen", f"127.0.0.1:{self.port}", "--id", name, *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()
        self.wait_line(lambda l: l == f"listening on 127.0.0.1:{self.port}")

    def _reader(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pred, timeout=TIMEOUT, start=0):
        """Returns the first stdout line from index 'start' on matching 'pred'."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for l in self.lines[start:]:
                    if pred(l):
                        return l
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such line from rs-app; got {self.lines}, "
                                         f"log: {self.log_text()[-2000:]}")
                self.cond.wait(min(left, 0.2))

    def stats(self):
        """Sends SIGUSR1 and returns the stats line as a dict of ints."""
        with self.cond:
            start = len(self.lines)
        os.kill(self.proc.pid, signal.SIGUSR1)
        line = self.wait_line(lambda l: l.startswith("stats "), start=start)
        return {k: (int(v) if v.isdigit() else v) for k, v in
                (kv.split("=", 1) for kv in line.split()[1:])}

    def log_text(self):
        with open(self.log.name) as f:
            return f.read()

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        return s, s.makefile("rb")

    def http(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.log.close()
        os.unlink(self.log.name)


class AppCase(unittest.TestCase):
    args = ()

    @classmethod
    def setUpClass(cls):
        if not os.access(APP, os.X_OK):
            raise unittest.SkipTest(f"{APP} not built (make all)")

    def setUp(self):
        self.app = App(*self.args)

    def tearDown(self):
        self.app.stop()

    def get(self, conn, method, target, body=None, headers=None):
        conn.request(method, target, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r


class TestContent(AppCase):
    def test_static_body_matches_pattern(self):
        c = self.app.http()
        for size, seed in ((0, 0), (1, 5), (15, 1), (16, 2), (1237, 7), (100000, 123456789)):
            status, body, r = self.get(c, "GET", f"/static/{size}?seed={seed}")
            self.assertEqual(status, 200)
            self.assertEqual(int(r.getheader("Content-Length")), size)
            self.assertEqual(body, content(seed, 0, size), f"size {size} seed {seed}")
        # Default seed 0, size suffixes and file extensions.
        status, body, r = self.get(c, "GET", "/static/2k.css")
        self.assertEqual((status, body, r.getheader("Content-Type")), (200, content(0, 0, 2048), "text/css"))
        self.assertTrue(body.startswith(b"0000 0000000000\n0000 0000000010\n"))
        # Different seeds give different bodies.
        self.assertNotEqual(self.get(c, "GET", "/static/64?seed=1")[1], self.get(c, "GET", "/static/64?seed=2")[1])

    def test_static_bad_parameters(self):
        c = self.app.http()
        for target in ("/static/", "/static/abc", "/static/10?seed=-1", "/static/10?seed=x",
                       "/static/10.exe", "/static/2000G", "/static/99999999999999999999999"):
            status, _, _ = self.get(c, "GET", target)
            self.assertEqual(status, 400, target)
        self.assertEqual(self.get(c, "GET", "/static/3")[0], 200, "connection still usable")

    def test_head(self):
        c = self.app.http()
        status, body, r = self.get(c, "HEAD", "/static/1M")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(r.getheader("Content-Length"), str(1 << 20))
        status, body, r = self.get(c, "HEAD", "/counter")
        self.assertEqual((status, body, r.getheader("Content-Length")), (200, b"", "10"))
        # No body was sent: the next response on the connection parses cleanly.
        s, f = self.app.connect()
        s.sendall(request("HEAD", "/static/5000") + request("GET", "/health"))
        st, h, b, _ = read_response(f, head=True)
        self.assertEqual((st, h["content-length"], b), (200, "5000", b""))
        self.assertEqual(read_response(f)[2], b"ok\n")
        f.close()
        s.close()

    def test_large_static_streams_with_bounded_memory(self):
        size, seed = 50 << 20, 9
        rss_before = self.app.rss_kb()
        s, f = self.app.connect()
        s.sendall(request("GET", f"/static/{size}?seed={seed}"))
        st, h, _, _ = read_response(f, head=True)
        self.assertEqual((st, int(h["content-length"])), (200, size))
        off, peak, piece = 0, 0, 1 << 20
        while off < size:
            data = f.read(min(piece, size - off))
            self.assertEqual(len(data), min(piece, size - off), "short read")
            if data != content(seed, off, len(data)):
                self.fail(f"content differs in [{off}, {off + len(data)})")
            off += len(data)
            peak = max(peak, self.app.rss_kb())
        f.close()
        s.close()
        # The app streams from a 16 KiB buffer: far below the 50 MB body.
        self.assertLess(peak - rss_before, 8 * 1024, f"RSS grew from {rss_before} to {peak} kB")
        self.assertLess(peak, 32 * 1024)


class TestConnections(AppCase):
    def test_keep_alive_100_requests(self):
        c = self.app.http()
        port = None
        for i in range(100):
            target = ("/health", "/counter", "/static/100?seed=3", "/token")[i % 4]
            status, body, _ = self.get(c, "GET", target)
            self.assertEqual(status, 200, target)
            if port is None:
                port = c.sock.getsockname()[1]
            self.assertEqual(c.sock.getsockname()[1], port, "connection was replaced")
        st = self.app.stats()
        self.assertEqual((st["conns_total"], st["reqs"]), (1, 100))
        # Transaction numbers count the requests on the connection from 0.
        log = self.app.log_text()
        for n in (0, 1, 50, 99):
            self.assertIn(f"txn 127.0.0.1:{port}#{n} ", log)

    def test_pipelined_requests_answered_in_order(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/counter") + request("POST", "/counter", body=b"x=1")
                  + request("GET", "/static/40?seed=3"))
        self.assertEqual(read_response(f)[2], b"counter=0\n")
        self.assertEqual(read_response(f)[2], b"counter=1\n")
        self.assertEqual(read_response(f)[2], content(3, 0, 40))
        # A slow response holds back the fast one behind it.
        s.sendall(request("GET", "/slow?bytes=64&chunk=32&delay=50ms") + request("GET", "/health"))
        st, _, body, chunks = read_response(f)
        self.assertEqual((st, body, chunks), (200, content(0, 0, 64), [32, 32]))
        self.assertEqual(read_response(f)[2], b"ok\n")
        # Many pipelined in one write (more than the app's response queue).
        s.sendall(b"".join(request("GET", "/counter") for _ in range(200)))
        for _ in range(200):
            self.assertEqual(read_response(f)[2], b"counter=1\n")
        f.close()
        s.close()

    def test_half_close_after_pipelining(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/health") + request("GET", "/static/10"))
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(read_response(f)[2], b"ok\n")
        self.assertEqual(read_response(f)[2], content(0, 0, 10))
        self.assertEqual(f.read(), b"", "server closes after answering")
        f.close()
        s.close()

    def test_connection_close_honoured(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/health", {"Connection": "close"}) + request("GET", "/counter"))
        st, h, body, _ = read_response(f)
        self.assertEqual((st, body, h.get("connection")), (200, b"ok\n", "close"))
        self.assertEqual(f.read(), b"", "no answer after Connection: close, then EOF")
        f.close()
        s.close()
        # HTTP/1.0 without keep-alive closes too; with keep-alive it stays open.
        s, f = self.app.connect()
        s.sendall(request("GET", "/health", version="HTTP/1.0"))
        self.assertEqual(read_response(f)[1].get("connection"), "close")
        self.assertEqual(f.read(), b"")
        f.close()
        s.close()
        s, f = self.app.connect()
        s.sendall(request("GET", "/health", {"Connection": "keep-alive"}, version="HTTP/1.0") * 2)
        self.assertEqual(read_response(f)[1].get("connection"), "keep-alive")
        self.assertEqual(read_response(f)[2], b"ok\n")
        f.close()
        s.close()

    def test_closing_socket_lingers_boundedly(self):
        # After a 400 the app shuts its write side and drains; a client that
        # never closes is dropped after the linger time (2 s).
        s, f = self.app.connect()
        s.sendall(b"NOT HTTP\r\n\r\n")
        self.assertEqual(read_response(f)[0], 400)
        self.assertEqual(f.read(), b"")
        s.sendall(b"more bytes the app drops")
        self.assertEqual(self.app.stats()["conns_open"], 1)
        deadline = time.monotonic() + 5
        while self.app.stats()["conns_open"] and time.monotonic() < deadline:
            time.sleep(0.25)
        self.assertEqual(self.app.stats()["conns_open"], 0)
        self.assertIn("linger timeout", self.app.log_text())
        f.close()
        s.close()

    def test_client_abort_mid_response(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/static/1G"))
        read_response(f, head=True)
        f.read(100000)
        f.close()
        s.close()
        deadline = time.monotonic() + TIMEOUT
        while "aborted" not in self.app.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertRegex(self.app.log_text(), r"txn \S+#0 \S+ GET /static/1G 200 \d+B \S+ aborted")
        c = self.app.http()
        self.assertEqual(self.get(c, "GET", "/health")[:2], (200, b"ok\n"))
        self.assertEqual(self.app.stats()["txn_aborted"], 1)


    def test_concurrent_clients(self):
        """20 clients at once, each 25 keep-alive POSTs: every update counts once."""
        errors = []

        def client():
            try:
                c = self.app.http()
                for _ in range(25):
                    status, body, _ = self.get(c, "POST", "/counter", body=b"")
                    if status != 200 or not body.startswith(b"counter="):
                        errors.append((status, body))
                c.close()
            except Exception as e:      # reported below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(20)]
        for t in threads:
            t.start()
        # A big response in flight does not starve the others.
        s, f = self.app.connect()
        s.sendall(request("GET", "/static/200M"))
        read_response(f, head=True)
        f.read(1 << 20)
        t0 = time.monotonic()
        self.assertEqual(self.get(self.app.http(), "GET", "/health")[0], 200)
        self.assertLess(time.monotonic() - t0, 2.0)
        for t in threads:
            t.join(TIMEOUT * 3)
        f.close()
        s.close()
        self.assertEqual(errors, [])
        self.assertEqual(self.get(self.app.http(), "GET", "/counter")[1], b"counter=500\n")

    def test_upgrade_not_spoken(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/health", {"Connection": "Upgrade", "Upgrade": "websocket"}))
        st, h, body, _ = read_response(f)
        self.assertEqual((st, body, h.get("connection")), (200, b"ok\n", "close"))
        self.assertEqual(f.read(), b"")
        f.close()
        s.close()


class TestEndpoints(AppCase):
    def test_counter(self):
        c = self.app.http()
        self.assertEqual(self.get(c, "GET", "/counter")[:2], (200, b"counter=0\n"))
        for i in range(1, 6):
            self.assertEqual(self.get(c, "POST", "/counter", body=b"")[:2], (200, f"counter={i}\n".encode()))
        self.assertEqual(self.get(c, "GET", "/counter")[:2], (200, b"counter=5\n"))
        self.assertEqual(self.get(c, "GET", "/counter")[:2], (200, b"counter=5\n"), "GET is read-only")
        st = self.app.stats()
        self.assertEqual((st["req_counter_read"], st["req_counter_update"], st["counter"]), (3, 5, 5))

    def test_token(self):
        c = self.app.http()
        tokens = set()
        for method in ("GET", "GET", "POST"):
            status, body, _ = self.get(c, method, "/token")
            self.assertEqual(status, 200)
            self.assertRegex(body.decode(), r"^token=[0-9a-f]{32}\n$")
            tokens.add(body)
        self.assertEqual(len(tokens), 3, "tokens repeat")
        self.assertEqual(self.get(c, "HEAD", "/token")[0], 405)

    def test_slow_is_chunked_and_paced(self):
        n, k, d = 1000, 100, 0.03
        s, f = self.app.connect()
        t0 = time.monotonic()
        s.sendall(request("GET", f"/slow?bytes={n}&chunk={k}&delay={int(d * 1000)}ms&seed=4"))
        st, h, _, _ = read_response(f, head=True)
        self.assertEqual((st, h.get("transfer-encoding")), (200, "chunked"))
        self.assertNotIn("content-length", h)
        body, sizes, times = b"", [], []
        while True:
            size = int(f.readline().strip(), 16)
            body += f.read(size)
            f.read(2)
            times.append(time.monotonic() - t0)
            if size == 0:
                break
            sizes.append(size)
        self.assertEqual(sizes, [k] * (n // k))
        self.assertEqual(body, content(4, 0, n))
        self.assertGreaterEqual(times[-1], (n // k) * d, "think time not applied")
        # Streamed: the first chunk came long before the last.
        self.assertGreaterEqual(times[-1] - times[0], (n // k - 1) * d * 0.9)
        # Uneven last chunk, zero bytes, HTTP/1.0 framing.
        s.sendall(request("GET", "/slow?bytes=250&chunk=100&delay=1ms"))
        self.assertEqual(read_response(f)[3], [100, 100, 50])
        s.sendall(request("GET", "/slow?bytes=0"))
        self.assertEqual(read_response(f)[2:], (b"", []))
        f.close()
        s.close()
        s, f = self.app.connect()
        s.sendall(request("GET", "/slow?bytes=300&chunk=100&delay=1ms", version="HTTP/1.0"))
        st, h, body, chunks = read_response(f)
        self.assertEqual((h.get("content-length"), body, chunks), ("300", content(0, 0, 300), None))
        f.close()
        s.close()

    def test_slow_bad_parameters(self):
        c = self.app.http()
        for q in ("bytes=x", "chunk=0", "delay=-1", "delay=2h", "delay=61s", "seed=1.5"):
            self.assertEqual(self.get(c, "GET", f"/slow?{q}")[0], 400, q)

    def test_health_404_405(self):
        c = self.app.http()
        self.assertEqual(self.get(c, "GET", "/health")[:2], (200, b"ok\n"))
        for target in ("/", "/nope", "/counters", "/healthz", "/static"):
            self.assertEqual(self.get(c, "GET", target)[0], 404, target)
        status, _, r = self.get(c, "DELETE", "/counter")
        self.assertEqual((status, r.getheader("Allow")), (405, "GET, HEAD, POST"))
        self.assertEqual(self.get(c, "POST", "/static/10", body=b"")[0], 405)


PP2 = b"\r\n\r\n\x00\r\nQUIT\n"           # the PROXY protocol v2 signature


def pp2(client_ip, client_port, cmd=0x21):
    """A PROXY protocol v2 header naming 'client_ip':'client_port' (to 10.0.0.1:80)."""
    return (PP2 + bytes([cmd, 0x11, 0, 12]) + socket.inet_aton(client_ip) + socket.inet_aton("10.0.0.1")
            + client_port.to_bytes(2, "big") + (80).to_bytes(2, "big"))


class TestBadRequests(AppCase):
    def exchange(self, raw):
        """Sends 'raw'; returns (status, headers, then-closed)."""
        s, f = self.app.connect()
        s.sendall(raw)
        st, h, _, _ = read_response(f)
        closed = f.read() == b""
        f.close()
        s.close()
        return st, h, closed

    def test_malformed_gets_400_and_close(self):
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                    b"GET /he\x01lth HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00",  # a TLS hello
                    b"POST /counter HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                    b"POST /counter HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"):
            st, h, closed = self.exchange(raw)
            self.assertEqual((st, h.get("connection"), closed), (400, "close", True), raw)
        for raw in (b"GET /health HTTP/9.9\r\n\r\n", b"GET /health HTTP/2.0\r\n\r\n"):
            st, h, closed = self.exchange(raw)
            self.assertEqual((st, h.get("connection"), closed), (505, "close", True), raw)
        # A good request before the bad one is answered first.
        s, f = self.app.connect()
        s.sendall(request("GET", "/health") + b"BROKEN\r\n\r\n")
        self.assertEqual(read_response(f)[0], 200)
        self.assertEqual(read_response(f)[0], 400)
        f.close()
        s.close()
        self.assertEqual(self.app.stats()["bad_request"], 9)

    def test_oversize_rejected(self):
        st, _, closed = self.exchange(request("GET", "/health", {"X-Big": "a" * 10000}))
        self.assertEqual((st, closed), (431, True))
        st, _, closed = self.exchange(request("GET", "/health", {f"X-{i}": "b" * 90 for i in range(100)}))
        self.assertEqual((st, closed), (431, True))
        st, _, closed = self.exchange(request("GET", "/static/1?" + "x" * 3000))
        self.assertEqual((st, closed), (414, True))
        st, _, closed = self.exchange(request("POST", "/counter", {"Content-Length": str(65 << 20)}))
        self.assertEqual((st, closed), (413, True))
        # A chunked body that grows too large (over 64 MiB: uploads are streamed, not kept).
        raw = (b"POST /counter HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"100000\r\n" + b"z" * 0x100000 + b"\r\n" for _ in range(65)))
        s, f = self.app.connect()
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertEqual(read_response(f)[0], 413)
        f.close()
        s.close()
        # Acceptable sizes are fine, and the app still serves.
        c = self.app.http()
        self.assertEqual(self.get(c, "POST", "/counter", body=b"y" * 100000)[:2], (200, b"counter=1\n"))
        self.assertEqual(self.get(c, "GET", "/health", headers={"X-Ok": "a" * 4000})[0], 200)


class TestLogsAndSignals(AppCase):
    def test_log_lines(self):
        c = self.app.http()
        self.get(c, "POST", "/counter", body=b"")
        port = c.sock.getsockname()[1]
        c.close()
        time.sleep(0.2)
        log = self.app.log_text()
        tuple_ = rf"127\.0\.0\.1:{port}->127\.0\.0\.1:{self.app.port}"
        self.assertRegex(log, rf"(?m)^\d+\.\d{{6}} rs-app\[test\] conn-open {tuple_}$")
        self.assertRegex(log, rf"(?m)^\d+\.\d{{6}} rs-app\[test\] txn 127\.0\.0\.1:{port}#0 {tuple_} "
                              r"POST /counter 200 \d+B \d+\.\d{3}ms$")
        self.assertRegex(log, rf"(?m)^\d+\.\d{{6}} rs-app\[test\] conn-close {tuple_} reqs=1 ")
        ts = float(log.split()[0])
        self.assertLess(abs(ts - time.time()), 60, "timestamps are CLOCK_REALTIME")

    def test_stats_and_clean_exit(self):
        c = self.app.http()
        for t in ("/health", "/static/100", "/counter", "/token", "/nope"):
            self.get(c, "GET", t)
        st = self.app.stats()
        for k in ("conns_open", "conns_total", "reqs", "req_static", "req_counter_read",
                  "req_counter_update", "req_token", "req_slow", "req_health", "req_other",
                  "bytes_in", "bytes_out", "counter"):
            self.assertIn(k, st)
        self.assertEqual(st["id"], "test")
        self.assertEqual((st["conns_open"], st["reqs"], st["req_static"], st["req_other"]), (1, 5, 1, 1))
        self.assertGreater(st["bytes_out"], 100)
        os.kill(self.app.proc.pid, signal.SIGTERM)
        self.assertEqual(self.app.proc.wait(TIMEOUT), 0)
        self.app.wait_line(lambda l: l.startswith("stats ") and "conns_open=0" in l)

    def test_log_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "app.log")
            app = App("--log", path, name="logged")
            try:
                c = app.http()
                self.assertEqual(self.get(c, "GET", "/health")[0], 200)
                c.close()
                time.sleep(0.2)
                with open(path) as f:
                    text = f.read()
                self.assertRegex(text, r"rs-app\[logged\] txn \S+#0 \S+ GET /health 200 ")
                self.assertNotIn("GET /health", app.log_text(), "logs went to the file, not stderr")
            finally:
                app.stop()

    def test_help(self):
        r = subprocess.run([APP, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--listen", r.stdout)
        r = subprocess.run([APP, "--listen", "nowhere"], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 2)


class TestStartState(AppCase):
    # A value, then increments (an update's state): they add, in any order.
    args = ("--state", "counter=41", "--state", "counter+=2", "--state", "counter+=1")

    def test_state_blob_applied(self):
        c = self.app.http()
        self.assertEqual(self.get(c, "GET", "/counter")[1], b"counter=44\n")
        self.assertEqual(self.get(c, "POST", "/counter", body=b"")[1], b"counter=45\n")

    def test_recorded_token_replayed(self):
        # The alternate answers a replayed /token with the primary's token.
        token = "0123456789abcdef" * 2
        port = free_port()
        self.app.stop()
        self.app = App("--state", f"token={token}@127.0.0.1:{port}#1")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.settimeout(TIMEOUT)
        s.connect(("127.0.0.1", self.app.port))
        f = s.makefile("rb")
        s.sendall(request("GET", "/token") + request("GET", "/token") + request("GET", "/token"))
        first, second, third = (read_response(f)[2] for _ in range(3))
        self.assertEqual(second, f"token={token}\n".encode(), "transaction #1 gets the recorded token")
        self.assertNotIn(token.encode(), first + third)
        self.assertNotEqual(first, third)
        f.close()
        s.close()

    def test_bad_state_blob(self):
        for blob in ("counter=", "counter=x", "token=abc", "nothing", "counter=1@10.0.0.1:80",
                     "token=" + "0" * 31 + "g@10.0.0.1:80#1", "counter=18446744073709551616", "counter+=",
                     "counter+=-1", "counter++"):
            r = subprocess.run([APP, "--state", blob], capture_output=True, text=True, timeout=TIMEOUT)
            self.assertEqual(r.returncode, 2, blob)
        r = subprocess.run([APP, "--state", "counter=18446744073709551615", "--state", "counter+=1"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 2, "an increment past the counter's range")


class TestProxyHeader(AppCase):
    """rs-proxy --identity header: a connection may start with a PROXY v2
    header naming the client its transactions belong to; believed only by
    a resplice backend (with --stated), refused when malformed."""
    args = ("--stated", "/nonexistent/rs-stated.sock")      # the library keeps trying in the background

    def test_named_by_header(self):
        s, f = self.app.connect()
        s.sendall(pp2("10.9.8.7", 4242)[:10])       # a header may come in pieces
        time.sleep(0.05)
        s.sendall(pp2("10.9.8.7", 4242)[10:] + request("GET", "/health") + request("POST", "/counter"))
        self.assertEqual(read_response(f)[:1], (200,))
        self.assertEqual(read_response(f)[0], 200)
        self.assertTrue(wait_until(lambda: "client=10.9.8.7:4242 (PROXY header)" in self.app.log_text(), TIMEOUT))
        self.assertTrue(wait_until(lambda: "txn 10.9.8.7:4242#1 " in self.app.log_text(), TIMEOUT),
                        self.app.log_text())
        f.close()
        s.close()

    def test_malformed_header_refused(self):
        s, f = self.app.connect()
        s.sendall(pp2("10.9.8.7", 4242, cmd=0x11) + request("GET", "/health"))   # "version 1"
        st, h, _, _ = read_response(f)
        self.assertEqual((st, h.get("connection")), (400, "close"))
        f.close()
        s.close()

    def test_without_header_named_by_peer(self):
        c = self.app.http()
        self.assertEqual(self.get(c, "GET", "/health")[0], 200)
        self.assertTrue(wait_until(lambda: "txn 127.0.0.1:" in self.app.log_text(), TIMEOUT), self.app.log_text())


class TestProxyHeaderNotBelieved(AppCase):
    """Without rs-stated an application is nobody's backend: a client
    cannot name itself someone else."""

    def test_refused(self):
        s, f = self.app.connect()
        s.sendall(pp2("10.9.8.7", 4242) + request("GET", "/health"))
        self.assertEqual(read_response(f)[0], 400)
        f.close()
        s.close()
        self.assertNotIn("conn-named", self.app.log_text())


class TestHeldResponse(AppCase):
    """--sync-delay holds each token response as a synchronous state
    transfer would; everything else keeps running."""
    args = ("--sync-delay", "300ms")

    def test_token_held_others_not(self):
        s, f = self.app.connect()
        t0 = time.monotonic()
        s.sendall(request("GET", "/token") + request("GET", "/health"))
        # Another connection is served while the token waits.
        c = self.app.http()
        self.assertEqual(self.get(c, "POST", "/counter", body=b"")[:2], (200, b"counter=1\n"))
        self.assertLess(time.monotonic() - t0, 0.3)
        st, _, body, _ = read_response(f)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.assertRegex(body.decode(), r"^token=[0-9a-f]{32}\n$")
        self.assertEqual(read_response(f)[2], b"ok\n", "pipelined request answered after")
        f.close()
        s.close()

    def test_reset_while_held(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/token"))
        time.sleep(0.05)
        # A reset, not a FIN: after a FIN the client may still read (half-close).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        f.close()
        s.close()
        time.sleep(0.5)
        self.assertEqual(self.app.stats()["txn_aborted"], 1)
        c = self.app.http()
        self.assertEqual(self.get(c, "GET", "/health")[0], 200)


class TestCrashAt(AppCase):
    """--crash-at N+B: the process dies (SIGKILL) before byte B of
    transaction N's response leaves, earlier responses whole."""
    args = ("--crash-at", "1+100")

    def test_dies_at_the_byte(self):
        s, f = self.app.connect()
        s.sendall(request("GET", "/static/1K") + request("GET", "/static/1K"))
        self.assertEqual(read_response(f)[2], content(0, 0, 1024))
        self.assertEqual(len(f.read()), 100, "exactly B bytes of the second response")
        self.assertEqual(self.app.proc.wait(TIMEOUT), -signal.SIGKILL)
        self.assertRegex(self.app.log_text(), r"crash-at 127\.0\.0\.1:\d+#1 .*SIGKILL after 100B")
        f.close()
        s.close()

    def test_offset_past_the_end_dies_after_the_response(self):
        self.app.stop()
        self.app = App("--crash-at", "0+999999")
        s, f = self.app.connect()
        s.sendall(request("GET", "/counter"))
        self.assertEqual(read_response(f)[2], b"counter=0\n")
        self.assertEqual(self.app.proc.wait(TIMEOUT), -signal.SIGKILL)
        f.close()
        s.close()

    def test_bad_values(self):
        for v in ("x", "-1", "70000", "1+", "1+x", "1+2x"):
            r = subprocess.run([APP, "--crash-at", v], capture_output=True, text=True, timeout=TIMEOUT)
            self.assertEqual(r.returncode, 2, v)
            self.assertIn("bad --crash-at", r.stderr)


if __name__ == "__main__":
    unittest.main()
