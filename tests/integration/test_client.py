"""Integration tests of rs-client (issue 4) on 127.0.0.1, no Mininet: a tiny
raw-socket HTTP/1.1 server in this process plays each server behaviour
(keep-alive, cookies, tokens, chunked and close-delimited bodies, RST
mid-response, silence, early close), and the CSV rows, the summary line and
the exit code are checked.  A last case runs against the built rs-app."""
import csv
import hashlib
import os
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from emul.places import binary

CLIENT = binary("rs-client")
APP = binary("rs-app")

COLUMNS = ["run", "connection", "step", "method", "target", "start_us", "first_byte_us",
           "end_us", "status", "bytes", "result", "local_port", "retries", "txn"]


def content(seed, off, n):
    """The checkable stream of core/content.h (its Python rendering)."""
    tag = (seed * 0x9E3779B97F4A7C15 % 2**64) >> 48
    first = off - off % 16
    text = "".join("%04x %010x\n" % (tag, r % 2**40) for r in range(first, off + n, 16))
    return text.encode()[off - first:off - first + n]


class Request:
    def __init__(self, method, target, headers, body, conn_idx, peer_port):
        self.method, self.target, self.headers, self.body = method, target, headers, body
        self.conn_idx, self.peer_port = conn_idx, peer_port

    def header(self, name):
        return self.headers.get(name.lower())


def read_request(conn, buf):
    """Reads one request from 'conn' ('buf' holds leftover bytes, a list of one
    bytes object).  Returns (method, target, headers, body) or None at EOF."""
    data = buf[0]
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, data = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(data) < n:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    body, buf[0] = data[:n], data[n:]
    return method, target, headers, body


def response(status, body=b"", headers=(), chunked=False, length=True):
    reason = {200: "OK", 204: "No Content", 302: "Found", 404: "Not Found"}.get(status, "X")
    out = [f"HTTP/1.1 {status} {reason}"]
    out += [f"{k}: {v}" for k, v in headers]
    if chunked:
        out.append("Transfer-Encoding: chunked")
        parts = [body[i:i + 1000] for i in range(0, len(body), 1000)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    elif length:
        out.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(out) + "\r\n\r\n").encode() + body


def rst_close(conn):
    """Closes with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class Server:
    """Accepts on 127.0.0.1 and hands every request to handler(server, conn,
    req); the handler answers and returns True to keep the connection."""

    def __init__(self, handler):
        self.handler = handler
        self.requests, self.errors, self.peers = [], [], []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def check(self, cond, msg):
        if not cond:
            with self.lock:
                self.errors.append(msg)

    def _accept(self):
        while not self.stopping.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with self.lock:
                idx = len(self.peers)
                self.peers.append(peer[1])
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, idx, peer[1]), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn, idx, peer_port):
        buf = [b""]
        try:
            while not self.stopping.is_set():
                got = read_request(conn, buf)
                if got is None:
                    break
                req = Request(*got, idx, peer_port)
                with self.lock:
                    self.requests.append(req)
                if not self.handler(self, conn, req):
                    break
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stopping.set()
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(timeout=5)


def parse_summary(out):
    lines = [l for l in out.splitlines() if l.startswith("summary:")]
    if not lines:
        return {}
    return dict(kv.split("=", 1) for kv in lines[-1].split()[1:])


class ClientCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-client-test-")
        self.servers, self.procs = [], []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for s in self.servers:
            s.close()
        self.tmp.cleanup()

    def serve(self, handler):
        s = Server(handler)
        self.servers.append(s)
        return s

    def client(self, trace, port, *args, timeout=60):
        """Runs rs-client to completion; returns (rc, rows, summary, stderr, seconds)."""
        tpath = os.path.join(self.tmp.name, "trace.txt")
        cpath = os.path.join(self.tmp.name, "out.csv")
        with open(tpath, "w") as f:
            f.write(trace)
        if os.path.exists(cpath):
            os.unlink(cpath)
        cmd = [CLIENT, "--server", f"127.0.0.1:{port}", "--trace", tpath, "--csv", cpath,
               *args]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        out, err = p.communicate(timeout=timeout)
        secs = time.monotonic() - t0
        rows = []
        if os.path.exists(cpath):
            with open(cpath, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                self.assertEqual(header, COLUMNS)
                for r in reader:
                    self.assertEqual(len(r), len(COLUMNS), f"malformed CSV row {r}")
                    rows.append(dict(zip(COLUMNS, r)))
        return p.returncode, rows, parse_summary(out), err, secs


class TestFlow(ClientCase):
    """Captures, placeholders and cookies across requests on one keep-alive
    connection, then a close-delimited body, HEAD, 204 and a chunked body."""

    PAGE = (b'<html><form><input type="hidden" name="_token" value="TOK42xyz">'
            b'</form></html>')

    def handler(self, srv, conn, req):
        cookie = req.header("cookie") or ""
        if req.target == "/?_task=login":
            srv.check(cookie == "", f"first request carried cookies: {cookie!r}")
            conn.sendall(response(200, self.PAGE, [
                ("Set-Cookie", "sess=abc123; Path=/; HttpOnly"),
                ("Set-Cookie", "old=x; Expires=Wed, 01-Jan-2070 00:00:00 GMT"),
                ("Content-Type", "text/html")]))
            return True
        if req.target == "/?_task=login&_action=login":
            srv.check(req.method == "POST", "login is a POST")
            srv.check("sess=abc123" in cookie and "old=x" in cookie,
                      f"login lacks cookies: {cookie!r}")
            srv.check(req.header("x-roundcube-request") == "TOK42xyz",
                      f"token header {req.header('x-roundcube-request')!r}")
            srv.check(req.body == b"_token=TOK42xyz&_user=alice&_pass=secret",
                      f"login body {req.body!r}")
            srv.check(req.header("content-type") == "application/x-www-form-urlencoded",
                      "content type")
            conn.sendall(response(302, b"", [
                ("Location", "./?_task=mail&_action=compose&_id=CMP77"),
                ("Set-Cookie", "old=deleted; Max-Age=0"),
                ("Set-Cookie", "sess=def456; path=/")]))
            return True
        if req.target == "/?_task=mail&_action=compose&_id=CMP77":
            srv.check(cookie == "sess=def456", f"compose cookies {cookie!r}")
            conn.sendall(response(200, b"compose ok " * 500, chunked=True))
            return True
        if req.target == "/?_task=mail&_action=send":
            srv.check(req.body == b"_id=CMP77&_to=bob%40example.org", f"send body {req.body!r}")
            # HTTP/1.1 without a length: the body ends with the connection.
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
                         b"this.sent_successfully(...);")
            return False
        if req.method == "HEAD":
            conn.sendall(response(200, b"", [("Content-Length", "5000")], length=False))
            return True
        if req.target == "/empty":
            conn.sendall(response(204, length=False))
            return True
        if req.target.startswith("/static/"):
            n = int(req.target.split("/")[2].split("?")[0])
            conn.sendall(response(200, content(3, 0, n)))
            return True
        srv.check(False, f"unexpected {req.method} {req.target}")
        conn.sendall(response(404))
        return True

    TRACE = """# Roundcube-like flow
request GET /?_task=login
  expect status 200
  capture token body "name=\\"_token\\" value=\\"([^\\"]+)\\""
request POST /?_task=login&_action=login
  header Content-Type: application/x-www-form-urlencoded
  header X-Roundcube-Request: ${token}
  body _token=${token}&_user=${user}&_pass=secret
  expect status 302
  capture compose_id header Location "_id=([0-9a-zA-Z]+)"
think 20ms
request GET /?_task=mail&_action=compose&_id=${compose_id}
  expect status 200
  expect length 5500
  expect contains "compose ok"
request POST /?_task=mail&_action=send
  body "_id=${compose_id}&_to=bob%40example.org"
  expect contains "sent_successfully"
request HEAD /head
  expect status 200
  expect length 0
request GET /empty
  expect status 204
request GET /static/100000?seed=3
  expect content seed=3
  expect length 100000
  expect sha256 @SHA@
"""

    def test_captures_cookies_keepalive(self):
        srv = self.serve(self.handler)
        digest = hashlib.sha256(content(3, 0, 100000)).hexdigest()
        rc, rows, summ, err, _ = self.client(self.TRACE.replace("@SHA@", digest), srv.port, "-D", "user=alice",
                                             "--repeat", "2")
        self.assertEqual(srv.errors, [])
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(rows), 14)
        self.assertEqual([r["result"] for r in rows], ["ok"] * 14, err)
        self.assertEqual([int(r["step"]) for r in rows], list(range(7)) * 2)
        self.assertEqual([int(r["run"]) for r in rows], [0] * 7 + [1] * 7)
        self.assertEqual([int(r["status"]) for r in rows[:7]], [200, 302, 200, 200, 200, 204, 200])
        self.assertEqual(rows[2]["target"], "/?_task=mail&_action=compose&_id=CMP77")
        self.assertEqual(int(rows[6]["bytes"]), 100000)
        self.assertEqual(int(rows[4]["bytes"]), 0)      # HEAD: no body despite the length
        # Keep-alive: the first four requests of a run share a connection;
        # after the close-delimited reply a new one is opened; each run has its own.
        ports = [int(r["local_port"]) for r in rows]
        self.assertEqual(len(set(ports[:4])), 1)
        self.assertNotEqual(ports[4], ports[3])
        self.assertEqual(len(set(ports[4:7])), 1)
        self.assertNotIn(ports[7], ports[:7])
        self.assertEqual(len(srv.peers), 4)
        self.assertEqual(sorted(set(ports)), sorted(srv.peers))
        self.assertEqual(rows[2]["txn"], f"127.0.0.1:{ports[2]}#2")
        for r in rows:
            s, fb, e = int(r["start_us"]), int(r["first_byte_us"]), int(r["end_us"])
            self.assertTrue(0 < s <= fb <= e, r)
        # The think time shows between step 1's end and step 2's start.
        self.assertGreaterEqual(int(rows[2]["start_us"]) - int(rows[1]["end_us"]), 19000)
        self.assertEqual(summ["runs"], "2")
        self.assertEqual(summ["requests"], "14")
        self.assertEqual(summ["ok"], "14")
        self.assertEqual(summ["errors"], "0")
        self.assertGreater(float(summ["action_ms_median"]), 20.0)

    def test_parallel_connections(self):
        srv = self.serve(self.handler)
        digest = hashlib.sha256(content(3, 0, 100000)).hexdigest()
        rc, rows, summ, err, _ = self.client(self.TRACE.replace("@SHA@", digest), srv.port, "-D", "user=alice",
                                             "--connections", "3", "--quiet")
        self.assertEqual(rc, 0, err)
        self.assertEqual(srv.errors, [])
        self.assertEqual(len(rows), 21)
        self.assertEqual(sorted(int(r["connection"]) for r in rows),
                         sorted([0, 1, 2] * 7))
        self.assertEqual(summ["runs"], "3")
        self.assertNotIn("response ok", err)         # --quiet

    def test_unset_placeholder_is_a_trace_error(self):
        srv = self.serve(self.handler)
        rc, rows, _, err, _ = self.client(self.TRACE.replace("@SHA@", "0" * 64), srv.port)
        self.assertEqual(rc, 2)
        self.assertRegex(err, r"trace\.txt:8: placeholder \$\{user\}")
        self.assertEqual(srv.requests, [])


def serve_bytes(body_for_target):
    """A handler answering every request with 200 and the given body."""
    def handler(srv, conn, req):
        conn.sendall(response(200, body_for_target(req.target)))
        return True
    return handler


class TestVerification(ClientCase):
    def test_checksum_mismatch_is_bad_content(self):
        good = content(7, 0, 20000)
        bad = bytearray(good)
        bad[12345] ^= 1
        srv = self.serve(serve_bytes(lambda t: bytes(bad) if t == "/bad" else good))
        digest = hashlib.sha256(good).hexdigest()
        trace = (f"request GET /good\n expect sha256 {digest}\n expect content seed=7\n"
                 f"request GET /bad\n expect sha256 {digest}\n")
        rc, rows, summ, err, _ = self.client(trace, srv.port)
        self.assertEqual(rc, 1)
        self.assertEqual([r["result"] for r in rows], ["ok", "bad-content"])
        self.assertEqual(summ["errors"], "1")
        self.assertEqual(summ["verify_failed"], "1")
        self.assertIn("sha256 mismatch", err)
        # The generated-content check says where the first wrong byte is.
        trace = "request GET /bad\n expect content seed=7\n"
        rc, rows, _, err, _ = self.client(trace, srv.port)
        self.assertEqual([r["result"] for r in rows], ["bad-content"])
        self.assertIn("wrong at byte 12345", err)

    def test_status_length_marker_capture(self):
        srv = self.serve(serve_bytes(lambda t: b"hello world"))
        cases = [("expect status 404", "bad-status"), ("expect length 12", "bad-length"),
                 ('expect contains "bye"', "missing-marker"),
                 ('capture x body "z(.)"', "bad-capture"),
                 ('capture x header Location "(.*)"', "bad-capture"),
                 ('expect contains "world"', "ok")]
        for directive, want in cases:
            with self.subTest(directive=directive):
                rc, rows, _, err, _ = self.client(
                    f"request GET /\n {directive}\nrequest GET /next\n", srv.port)
                # A failure ends the run: the second request is never sent.
                self.assertEqual([r["result"] for r in rows],
                                 [want] if want != "ok" else ["ok", "ok"], err)
                self.assertEqual(rc, 0 if want == "ok" else 1)

    def test_login_marker_names_a_lost_session(self):
        """A failed check on a page carrying the login form is 'login' (the
        session is gone); the same failure without the form stays what it is."""
        srv = self.serve(serve_bytes(lambda t: b'<form id="login-form">' if t == "/lost" else b"inbox"))
        for target, want in (("/lost", "login"), ("/other", "missing-marker")):
            with self.subTest(target=target):
                rc, rows, _, err, _ = self.client(f'request GET {target}\n expect contains "inbox of alice"\n',
                                                  srv.port, "--login-marker", 'id="login-form"')
                self.assertEqual([r["result"] for r in rows], [want], err)
                self.assertEqual(rc, 1)
        # A response that passes its checks is ok even with the form in it.
        rc, rows, _, err, _ = self.client('request GET /lost\n expect contains "login-form"\n', srv.port,
                                          "--login-marker", 'id="login-form"')
        self.assertEqual([r["result"] for r in rows], ["ok"], err)

    def test_malformed_response(self):
        def handler(srv, conn, req):
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            return True
        srv = self.serve(handler)
        rc, rows, _, err, _ = self.client("request GET /\n", srv.port, "--browser")
        self.assertEqual(rc, 1)
        self.assertEqual(rows[0]["result"], "bad-response")
        self.assertEqual(rows[0]["retries"], "0")    # not a transport failure


class TestFraming(ClientCase):
    def test_interim_response_and_csv_quoting(self):
        def handler(srv, conn, req):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"final"))
            return True
        srv = self.serve(handler)
        trace = 'request GET /q?a=1,2&b="x"\n expect contains final\n expect status 200\n'
        rc, rows, _, err, _ = self.client(trace, srv.port)
        self.assertEqual(rc, 0, err)
        self.assertEqual(rows[0]["target"], '/q?a=1,2&b="x"')
        self.assertEqual((rows[0]["status"], rows[0]["bytes"]), ("200", "5"))
        self.assertEqual(srv.requests[0].target, '/q?a=1,2&b="x"')

    def test_host_header_and_unsolicited_bytes(self):
        def handler(srv, conn, req):
            srv.check(req.header("host") == "mail.example", f"host {req.header('host')!r}")
            # a stray byte after the response: the connection must not be reused
            conn.sendall(response(200, b"ok") + b"X")
            return True
        srv = self.serve(handler)
        rc, rows, _, err, _ = self.client("request GET /a\nrequest GET /b\n", srv.port,
                                          "--host", "mail.example")
        self.assertEqual(rc, 0, err)
        self.assertEqual(srv.errors, [])
        self.assertNotEqual(rows[0]["local_port"], rows[1]["local_port"])
        self.assertIn("unsolicited", err)


class TestTransportFailures(ClientCase):
    def test_reset_mid_response(self):
        def handler(srv, conn, req):
            if req.target == "/big":
                conn.sendall(response(200, b"x" * 1000, length=False)
                             .replace(b"\r\n\r\n", b"\r\nContent-Length: 100000\r\n\r\n", 1))
                time.sleep(0.2)
                rst_close(conn)
                return False
            conn.sendall(response(200, b"ok"))
            return True
        srv = self.serve(handler)
        rc, rows, summ, err, _ = self.client("request GET /small\nrequest GET /big\n", srv.port)
        self.assertEqual(rc, 1)
        self.assertEqual([r["result"] for r in rows], ["ok", "reset"])
        self.assertEqual(int(rows[1]["bytes"]), 1000)
        self.assertEqual(int(rows[1]["status"]), 200)
        self.assertGreater(int(rows[1]["first_byte_us"]), 0)
        self.assertEqual(summ["resets"], "1")
        self.assertEqual(summ["timeouts"], "0")

    def test_silent_server_times_out(self):
        release = threading.Event()
        self.addCleanup(release.set)

        def handler(srv, conn, req):
            if req.target == "/partial":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            release.wait(30)
            return False
        srv = self.serve(handler)
        for target in ("/silent", "/partial"):
            with self.subTest(target=target):
                rc, rows, summ, err, secs = self.client(f"request GET {target}\n", srv.port,
                                                        "--timeout", "1s")
                self.assertEqual(rc, 1)
                self.assertEqual(rows[0]["result"], "timeout")
                took = (int(rows[0]["end_us"]) - int(rows[0]["start_us"])) / 1e6
                self.assertGreaterEqual(took, 0.95)
                self.assertLess(took, 1.5)
                self.assertLess(secs, 5)
                self.assertEqual(summ["timeouts"], "1")
                self.assertEqual(summ["resets"], "0")
        release.set()

    def test_early_close_is_eof(self):
        def handler(srv, conn, req):
            if req.target == "/half":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
            return False
        srv = self.serve(handler)
        for target, got_bytes in (("/none", 0), ("/half", 3)):
            rc, rows, summ, err, _ = self.client(f"request GET {target}\n", srv.port)
            self.assertEqual(rc, 1)
            self.assertEqual(rows[0]["result"], "eof")
            self.assertEqual(int(rows[0]["bytes"]), got_bytes)
            self.assertEqual(summ["eofs"], "1")

    def test_many_failing_runs_do_not_recurse(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        rc, rows, summ, err, _ = self.client("request GET /\n", port, "--repeat", "3000",
                                             "--quiet")
        self.assertEqual(rc, 1)
        self.assertEqual(len(rows), 3000)
        self.assertEqual(summ["runs"], "3000")
        self.assertEqual(summ["connect_failed"], "3000")

    def test_connect_failed(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()                                   # nobody listens there now
        rc, rows, summ, err, _ = self.client("request GET /\n", port)
        self.assertEqual(rc, 1)
        self.assertEqual(rows[0]["result"], "connect-failed")
        self.assertEqual(summ["connect_failed"], "1")


class TestBrowserMode(ClientCase):
    def flaky(self, failures):
        """Serves normally, except that the first failures[target] requests
        for 'target' get a partial response and an RST."""
        left = dict(failures)

        def handler(srv, conn, req):
            with srv.lock:
                fail = left.get(req.target, 0) > 0
                if fail:
                    left[req.target] -= 1
            if fail:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                time.sleep(0.1)
                rst_close(conn)
                return False
            conn.sendall(response(200, b"fine"))
            return True
        return self.serve(handler)

    def test_retry_after_reset_on_new_connection(self):
        srv = self.flaky({"/b": 1})
        trace = "request GET /a\nrequest GET /b\n expect contains fine\nrequest GET /c\n"
        rc, rows, summ, err, _ = self.client(trace, srv.port, "--browser", "--backoff", "50ms")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r["result"] for r in rows], ["ok", "ok", "ok"])
        self.assertEqual([r["retries"] for r in rows], ["0", "1", "0"])
        # /b's first attempt reused the keep-alive connection of /a and was
        # reset there; the retry and /c ran on a second connection.
        self.assertEqual(len(srv.peers), 2)
        self.assertEqual([int(r["local_port"]) for r in rows],
                         [srv.peers[0], srv.peers[1], srv.peers[1]])
        self.assertEqual(summ["retries"], "1")
        self.assertEqual(summ["resets"], "1")
        self.assertEqual(summ["errors"], "0")
        self.assertIn("retry n=1", err)

    def test_retry_on_fresh_connection_and_back_off(self):
        srv = self.flaky({"/a": 2})
        t0 = time.monotonic()
        rc, rows, summ, err, _ = self.client("request GET /a\n", srv.port, "--browser",
                                             "--backoff", "200ms")
        self.assertEqual(rc, 0, err)
        self.assertEqual(rows[0]["retries"], "2")
        self.assertEqual(int(rows[0]["local_port"]), srv.peers[2])
        # back-off 200 ms, then 400 ms
        took = (int(rows[0]["end_us"]) - int(rows[0]["start_us"])) / 1e6
        self.assertGreaterEqual(took, 0.6)
        self.assertLess(time.monotonic() - t0, 10)

    def test_reused_connection_closed_is_resent_at_once(self):
        def handler(srv, conn, req):
            if req.target == "/b" and not any(r.target == "/b" for r in srv.requests[:-1]):
                conn.shutdown(socket.SHUT_WR)  # as a server closing an idle keep-alive
                return False
            conn.sendall(response(200, b"fine"))
            return True
        srv = self.serve(handler)
        rc, rows, summ, err, _ = self.client("request GET /a\nrequest GET /b\n", srv.port,
                                             "--browser", "--backoff", "2s")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r["retries"] for r in rows], ["0", "1"])
        took = (int(rows[1]["end_us"]) - int(rows[1]["start_us"])) / 1e6
        self.assertLess(took, 1.0)              # no 2 s back-off
        self.assertEqual(summ["eofs"], "1")

    def test_retries_run_out(self):
        srv = self.flaky({"/a": 100})
        rc, rows, summ, err, _ = self.client("request GET /a\n", srv.port, "--browser",
                                             "--retries", "2", "--backoff", "10ms")
        self.assertEqual(rc, 1)
        self.assertEqual(rows[0]["result"], "reset")
        self.assertEqual(rows[0]["retries"], "2")
        self.assertEqual(len(srv.peers), 3)
        self.assertEqual(summ["resets"], "3")

    def test_post_retried_only_with_retry_post(self):
        srv = self.flaky({"/send": 1})
        trace = "request POST /send\n body x=1\n"
        rc, rows, _, err, _ = self.client(trace, srv.port, "--browser", "--backoff", "10ms")
        self.assertEqual(rc, 1)
        self.assertEqual((rows[0]["result"], rows[0]["retries"]), ("reset", "0"))
        srv2 = self.flaky({"/send": 1})
        rc, rows, _, err, _ = self.client(trace, srv2.port, "--browser", "--retry-post",
                                          "--backoff", "10ms")
        self.assertEqual(rc, 0, err)
        self.assertEqual((rows[0]["result"], rows[0]["retries"]), ("ok", "1"))
        self.assertEqual([r.body for r in srv2.requests], [b"x=1", b"x=1"])

    def test_without_browser_no_retry_and_run_ends(self):
        srv = self.flaky({"/a": 1})
        rc, rows, summ, err, _ = self.client("request GET /a\nrequest GET /b\n", srv.port,
                                             "--repeat", "2")
        self.assertEqual(rc, 1)
        # run 0 fails at once; run 1 starts on a new connection and succeeds
        self.assertEqual([(r["run"], r["step"], r["result"]) for r in rows],
                         [("0", "0", "reset"), ("1", "0", "ok"), ("1", "1", "ok")])
        self.assertEqual(summ["runs"], "2")
        self.assertEqual(summ["runs_ok"], "1")

    def test_stale_keepalive_connection_is_replaced(self):
        def handler(srv, conn, req):
            conn.sendall(response(200, b"ok"))
            return False        # close after each response, without saying so
        srv = self.serve(handler)
        rc, rows, summ, err, _ = self.client("request GET /a\nthink 100ms\nrequest GET /b\n",
                                             srv.port)
        self.assertEqual(rc, 0, err)
        self.assertEqual(summ["eofs"], "0")
        self.assertNotEqual(rows[0]["local_port"], rows[1]["local_port"])


class TestAgainstReferenceApp(ClientCase):
    def test_static_and_slow(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        log_path = os.path.join(self.tmp.name, "app.log")
        with open(log_path, "w") as log:
            app = subprocess.Popen([APP, "--listen", f"127.0.0.1:{port}"], stdout=log,
                                   stderr=subprocess.STDOUT)
        self.procs.append(app)
        deadline = time.monotonic() + 10
        seen = ""
        while "listening on" not in seen and time.monotonic() < deadline and app.poll() is None:
            time.sleep(0.05)
            with open(log_path) as f:
                seen = f.read()
        self.assertIn("listening on", seen, "rs-app did not start")
        trace = """request GET /static/1048576?seed=3
  expect status 200
  expect length 1048576
  expect content seed=3
request GET /static/0?seed=1
  expect length 0
request GET /slow?bytes=20000&chunk=1000&delay=1ms&seed=5
  expect status 200
  expect length 20000
  expect content seed=5
request POST /counter
  capture first body "counter=([0-9]+)"
request POST /counter
  capture second body "counter=([0-9]+)"
request GET /counter
  expect contains "counter=${second}"
request GET /token
  capture token body "token=([0-9a-f]{32})"
"""
        rc, rows, summ, err, _ = self.client(trace, port, "--repeat", "2")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r["result"] for r in rows], ["ok"] * 14)
        self.assertEqual(len({r["local_port"] for r in rows[:7]}), 1)
        self.assertEqual(summ["ok"], "14")
        # Both runs' updates took effect, one each: the counter went to 4.
        self.assertIn("counter=4", self._counter(port))

    def _counter(self, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /counter HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.decode()


if __name__ == "__main__":
    unittest.main()
