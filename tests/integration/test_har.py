"""experiments/har2trace.py: a HAR recorded from a session with a small
web application on loopback (a login form with a token, a redirect that
carries the next token, a page whose JavaScript state holds a request
token an XHR header sends back, a static image; every token fresh per
session and checked by the server) turns into a trace that rs-client
replays against a fresh session of that application with every response
as expected: the tokens became captures, the cookies were left to
rs-client's jar, the browser's headers went.  And a file that is not a
HAR is refused."""
import csv
import datetime
import http.client
import http.server
import json
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import unittest
import urllib.parse

from emul.places import binary
from tests.integration.harness import needs_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "experiments", "har2trace.py")
PY = "/usr/bin/python3"
LOGO = bytes(range(256)) * 20           # a 5120-byte "image"


class App(http.server.BaseHTTPRequestHandler):
    """Sessions by cookie; each step's token is fresh and must come back."""
    sessions = {}
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def session(self):
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "sid" and v in self.sessions:
                return v, self.sessions[v]
        return None, None

    def send(self, status, body, ctype="text/html", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        sid, s = self.session()
        if u.path == "/" and not q:
            sid = secrets.token_hex(8)
            s = self.sessions[sid] = {"form": secrets.token_urlsafe(16)}
            page = (f'<html><form method="post" action="/login"><input type="hidden" name="_token" '
                    f'value="{s["form"]}"><input name="user"></form></html>').encode()
            self.send(200, page, extra=[("Set-Cookie", f"sid={sid}; HttpOnly")])
        elif u.path == "/" and s and q.get("_token") == s.get("next"):
            s["xhr"] = secrets.token_hex(12)
            self.send(200, f'<html><script>var env = {{"request_token":"{s["xhr"]}"}};</script></html>'.encode())
        elif u.path == "/list" and s and self.headers.get("X-Request-Token") == s.get("xhr"):
            self.send(200, b'{"messages": 3}', "application/json")
        elif u.path == "/logo.png":
            self.send(200, LOGO, "image/png")
        else:
            self.send(403, b"forbidden")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = dict(urllib.parse.parse_qsl(body))
        sid, s = self.session()
        if self.path == "/login" and s and form.get("_token") == s["form"] and form.get("user") == "alice":
            s["next"] = secrets.token_urlsafe(16)
            self.send(302, b"", extra=[("Location", f"/?_task=mail&_token={s['next']}")])
        else:
            self.send(403, b"forbidden")


def record_har(port):
    """Drives the application as a browser would and records a HAR 1.2 of it
    (headers a browser sends included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    cookie, entries = "", []
    browser = [("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"), ("Accept", "*/*"),
               ("Accept-Encoding", "gzip, deflate"), ("Accept-Language", "en")]

    def fetch(method, target, body=None, headers=()):
        hs = browser + list(headers) + ([("Cookie", cookie)] if cookie else [])
        if body is not None:
            hs.append(("Content-Type", "application/x-www-form-urlencoded"))
        t0 = datetime.datetime.now(datetime.timezone.utc)
        conn.request(method, target, body=body, headers=dict(hs))
        r = conn.getresponse()
        data = r.read()
        req = {"method": method, "url": f"http://127.0.0.1:{port}{target}", "httpVersion": "HTTP/1.1",
               "headers": [{"name": k, "value": v} for k, v in hs], "queryString": [], "cookies": [],
               "headersSize": -1, "bodySize": len(body or "")}
        if body is not None:
            req["postData"] = {"mimeType": "application/x-www-form-urlencoded", "text": body}
        ctype = r.getheader("Content-Type") or ""
        content = {"size": len(data), "mimeType": ctype}
        if ctype.startswith("image/"):
            import base64
            content.update(text=base64.b64encode(data).decode(), encoding="base64")
        else:
            content["text"] = data.decode()
        entries.append({"startedDateTime": t0.isoformat().replace("+00:00", "Z"), "time": 1.0, "request": req,
                        "response": {"status": r.status, "statusText": r.reason, "httpVersion": "HTTP/1.1",
                                     "headers": [{"name": k, "value": v} for k, v in r.getheaders()],
                                     "cookies": [], "content": content, "redirectURL": r.getheader("Location") or "",
                                     "headersSize": -1, "bodySize": len(data)}, "cache": {}, "timings": {}})
        return r, data.decode(errors="replace")

    nonlocal_cookie = {}
    r, page = fetch("GET", "/")
    nonlocal_cookie["c"] = r.getheader("Set-Cookie").split(";")[0]
    cookie = nonlocal_cookie["c"]
    token = page.split('name="_token" value="')[1].split('"')[0]
    r, _ = fetch("POST", "/login", urllib.parse.urlencode({"_token": token, "user": "alice"}))
    loc = r.getheader("Location")
    _, page = fetch("GET", loc)
    xhr = page.split('"request_token":"')[1].split('"')[0]
    fetch("GET", "/list", headers=[("X-Request-Token", xhr), ("X-Requested-With", "XMLHttpRequest")])
    fetch("GET", "/logo.png")
    conn.close()
    return {"log": {"version": "1.2", "creator": {"name": "test_har", "version": "1"}, "entries": entries}}


class HarImport(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-har-")
        self.addCleanup(self.tmp.cleanup)
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.addCleanup(self.srv.server_close)
        self.addCleanup(self.srv.shutdown)

    def convert(self, har):
        path, trace = os.path.join(self.tmp.name, "s.har"), os.path.join(self.tmp.name, "s.trace")
        with open(path, "w") as f:
            json.dump(har, f)
        r = subprocess.run([PY, TOOL, path, "--out", trace], capture_output=True, text=True, timeout=60)
        return r, trace

    def test_recorded_session_replays(self):
        r, trace = self.convert(record_har(self.port))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("5 requests, 3 captures", r.stdout)
        with open(trace) as f:
            text = f.read()
        for gone in ("Cookie", "User-Agent", "Accept-Encoding", "Accept-Language"):
            self.assertNotIn(f"header {gone}", text)
        self.assertIn('capture token body', text)
        self.assertIn('capture token_2 header Location', text)
        self.assertIn("header X-Request-Token: ${X_Request_Token}", text)
        self.assertIn("expect length 5120", text)
        # A fresh session: new tokens, which only captures can follow.
        out = os.path.join(self.tmp.name, "c.csv")
        c = subprocess.run([binary("rs-client"), "--server", f"127.0.0.1:{self.port}", "--trace", trace,
                            "--csv", out, "--quiet"], capture_output=True, text=True, timeout=60)
        with open(out) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr + text)
        self.assertEqual([r["result"] for r in rows], ["ok"] * 5, text)
        self.assertEqual([r["status"] for r in rows], ["200", "302", "200", "200", "200"])

    def test_not_a_har(self):
        path = os.path.join(self.tmp.name, "x.har")
        with open(path, "w") as f:
            f.write('{"not": "a har"}')
        r = subprocess.run([PY, TOOL, path, "--out", os.path.join(self.tmp.name, "x.trace")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a HAR file", r.stderr)


GUESTBOOK = os.path.join(ROOT, "examples", "guestbook")
BROWSER = os.path.join(ROOT, "experiments", "browser_har.py")


def requests_of(trace_text):
    return [l for l in trace_text.splitlines() if l.startswith("request ")]


@needs_root
class BrowserRecording(unittest.TestCase):
    """A real browser session: headless Chromium, driven by
    experiments/browser_har.py through examples/guestbook/visit.steps in a
    network namespace with nothing but loopback, records a HAR; har2trace
    turns the entry's id (drawn by the server, in the path of a later
    request) into a capture; the trace replays against a fresh guestbook,
    which draws another id; the example's visit.trace is that import."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="rs-har-browser-")
        self.addCleanup(self.tmp.cleanup)

    def record(self, steps):
        har = os.path.join(self.tmp.name, "visit.har")
        serve = f"{PY} {GUESTBOOK}/guestbook.py --port 8000 --data {self.tmp.name}/recorded"
        r = subprocess.run([PY, BROWSER, "--serve", serve, "--url", "http://127.0.0.1:8000/", "--steps", steps,
                            "--out", har], capture_output=True, text=True, timeout=120)
        return r, har

    def test_visit_recorded_in_chromium_replays(self):
        r, har = self.record(os.path.join(GUESTBOOK, "visit.steps"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(har) as f:
            entries = json.load(f)["log"]["entries"]
        got = [(e["request"]["method"], urllib.parse.urlsplit(e["request"]["url"]).path) for e in entries]
        self.assertEqual([g for g in got if g[1] != "/favicon.ico"],
                         [("GET", "/"), ("POST", "/sign"), ("GET", got[-3][1]), ("GET", "/"),
                          ("GET", "/static/guide.txt")], got)
        self.assertRegex(got[-3][1], r"^/entry/[0-9a-f]{16}$")
        sign = entries[[g[1] for g in got].index("/sign")]
        self.assertEqual(sign["request"]["postData"]["text"], "name=carol&message=recorded+in+Chromium")
        self.assertIn("HeadlessChrome", json.dumps(sign["request"]["headers"]))     # the browser's own request
        self.assertEqual(entries[-1]["response"]["content"]["size"], 280000)

        trace = os.path.join(self.tmp.name, "visit.trace")
        c = subprocess.run([PY, TOOL, har, "--out", trace], capture_output=True, text=True, timeout=60)
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertIn("${entry} = the value", c.stdout)
        with open(trace) as f, open(os.path.join(GUESTBOOK, "visit.trace")) as g:
            text, shipped = f.read(), g.read()
        self.assertIn("request GET /entry/${entry}", text)
        self.assertEqual([l for l in requests_of(text) if "favicon" not in l],
                         [l for l in requests_of(shipped) if "favicon" not in l])

        # A fresh guestbook draws another id: only the capture can follow it.
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        app = subprocess.Popen([PY, os.path.join(GUESTBOOK, "guestbook.py"), "--port", str(port), "--data",
                                os.path.join(self.tmp.name, "fresh")], stdout=subprocess.PIPE, text=True)
        self.addCleanup(app.stdout.close)
        self.addCleanup(app.wait)
        self.addCleanup(app.kill)
        self.assertIn("listening", app.stdout.readline())
        out = os.path.join(self.tmp.name, "c.csv")
        c = subprocess.run([binary("rs-client"), "--server", f"127.0.0.1:{port}", "--trace", trace, "--csv", out,
                            "--quiet"], capture_output=True, text=True, timeout=60)
        with open(out) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr + text)
        self.assertEqual({r["result"] for r in rows}, {"ok"})
        replayed = [r["target"] for r in rows if r["target"].startswith("/entry/")]
        self.assertEqual(len(replayed), 1)
        self.assertNotEqual(replayed[0], got[-3][1], "the replay reused the recorded id")

    def record_steps(self, text):
        steps = os.path.join(self.tmp.name, "test.steps")
        with open(steps, "w") as f:
            f.write(text)
        return self.record(steps)[0]

    def test_bad_steps(self):
        r = self.record_steps("open /\nscroll down\n")
        self.assertEqual(r.returncode, 2)
        self.assertIn("line 2: unknown step 'scroll'", r.stderr)

    def test_a_step_that_fails_is_named(self):
        r = self.record_steps("open /\nclick #no-such-button\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("step on line 2 (click #no-such-button)", r.stderr)


if __name__ == "__main__":
    unittest.main()
