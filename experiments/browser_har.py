#!/usr/bin/python3
"""Records what a real browser does on a web application as a HAR file,
offline: the application and a headless Chromium run together in a network
namespace of their own that has nothing but loopback, so neither can reach
any other address.  experiments/har2trace.py then turns the HAR into an
rs-client trace (docs/your-application.md).

    experiments/browser_har.py --serve "CMD" --url http://127.0.0.1:PORT/ \\
        --steps session.steps --out session.har

--serve starts the application (a shell command) in that namespace and
waits for it to listen on --url's port; the browser then follows the steps
file, one step a line (a line starting with '#' is a comment; quote a
selector with spaces or quotes in it, shell-like):

    open PATH                 load PATH (relative to --url) and wait for it
    type SELECTOR TEXT        type TEXT into the element CSS SELECTOR finds
    click SELECTOR            click it; when that loads a page, wait for it
    wait SELECTOR             wait until an element matches (10 s)

The HAR (1.2) holds every request that reached the network, in the order
the browser sent it, with its headers, form body, response headers and
body (base64 when not text), from Chromium's own DevTools protocol events
(Network.*), the ones DevTools' "Save all as HAR with content" is made of;
what the browser took from its cache is left out, as it never reached the
server.  Needs chromium, chromium-driver and python3-selenium (make deps)
and root (the namespace).  Exits 2 on a bad steps file, 1 when a step
fails."""
import argparse
import base64
import datetime
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
STEP_WORDS = {"open": 1, "type": 2, "click": 1, "wait": 1}     # arguments each takes (type: selector, text)
TIMEOUT = 10        # s for a page, an element, the application to listen
BROWSER_ARGS = ("--headless=new", "--no-sandbox",   # root, in a namespace: Chromium's sandbox cannot start
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-features=Translate,OptimizationHints,MediaRouter")


class BadSteps(ValueError):
    pass


def parse_steps(text):
    """[(line, word, args)] of a steps file; raises BadSteps naming the line."""
    steps = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)       # no comments after a step: '#' starts a CSS id
        except ValueError as e:
            raise BadSteps(f"line {n}: {e}") from None
        if not words:
            continue
        word, args = words[0], words[1:]
        if word not in STEP_WORDS:
            raise BadSteps(f"line {n}: unknown step {word!r} (known: {', '.join(STEP_WORDS)})")
        want = STEP_WORDS[word]
        if word == "type" and len(args) > 2:
            args = [args[0], " ".join(args[1:])]
        if len(args) != want:
            raise BadSteps(f"line {n}: {word} takes {want} argument{'s' if want > 1 else ''}")
        steps.append((n, word, args))
    if not steps:
        raise BadSteps("no steps")
    return steps


# ---- the HAR --------------------------------------------------------------

def _headers(d):
    return [{"name": k, "value": v} for k, v in (d or {}).items()]


def _iso(wall):
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class Recorder:
    """HAR entries from the DevTools protocol's Network events, by request
    id; a redirect's hop becomes an entry of its own."""

    def __init__(self):
        self.open, self.entries = {}, []

    def event(self, method, p, body_of):
        """Takes one Network event; 'body_of(request id)' returns (text,
        base64?) or None."""
        rid = p.get("requestId")
        if method == "Network.requestWillBeSent":
            if p.get("redirectResponse") and rid in self.open:     # the hop before: answered, no body
                hop = self.open.pop(rid)
                self._respond(hop, p["redirectResponse"])
                self.entries.append(hop)
            req = p["request"]
            if not req["url"].startswith(("http://", "https://")):
                return                      # the browser's own pages and data: URLs
            post = req.get("postData")
            if post is None and req.get("postDataEntries"):
                post = b"".join(base64.b64decode(e.get("bytes", "")) for e in req["postDataEntries"]).decode(
                    "utf-8", "replace")
            entry = {"startedDateTime": _iso(p.get("wallTime", time.time())), "time": 0, "_t0": p.get("timestamp"),
                     "request": {"method": req["method"], "url": req["url"], "httpVersion": "HTTP/1.1",
                                 "headers": _headers(req.get("headers")), "queryString": [], "cookies": [],
                                 "headersSize": -1, "bodySize": len(post.encode()) if post else 0},
                     "response": None, "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0}}
            if post is not None:
                ctype = {k.lower(): v for k, v in (req.get("headers") or {}).items()}.get("content-type", "")
                entry["request"]["postData"] = {"mimeType": ctype, "text": post}
            self.open[rid] = entry
        elif method == "Network.responseReceived" and rid in self.open:
            r = p["response"]
            if r.get("fromDiskCache") or r.get("fromPrefetchCache") or r.get("fromServiceWorker"):
                self.open.pop(rid)          # never reached the server
                return
            self._respond(self.open[rid], r)
        elif method in ("Network.loadingFinished", "Network.loadingFailed") and rid in self.open:
            entry = self.open.pop(rid)
            if entry["response"] is None:
                return                      # failed before any response: nothing the server answered
            if entry["_t0"] is not None and p.get("timestamp"):
                entry["time"] = round((p["timestamp"] - entry["_t0"]) * 1000, 3)
            got = body_of(rid) if method == "Network.loadingFinished" else None
            content = entry["response"]["content"]
            if got:
                text, b64 = got
                content["text"] = text
                if b64:
                    content["encoding"] = "base64"
                content["size"] = len(base64.b64decode(text)) if b64 else len(text.encode())
            self.entries.append(entry)

    @staticmethod
    def _respond(entry, r):
        h = r.get("headers") or {}
        entry["response"] = {"status": r.get("status", 0), "statusText": r.get("statusText", ""),
                             "httpVersion": "HTTP/1.1", "headers": _headers(h), "cookies": [],
                             "content": {"size": 0, "mimeType": r.get("mimeType", "")},
                             "redirectURL": {k.lower(): v for k, v in h.items()}.get("location", ""),
                             "headersSize": -1, "bodySize": -1}

    def har(self, version):
        entries = sorted(self.entries, key=lambda e: e["_t0"] or 0)
        for e in entries:
            e.pop("_t0", None)
        return {"log": {"version": "1.2", "creator": {"name": "resplice experiments/browser_har.py", "version": "1"},
                        "browser": {"name": "Chromium", "version": version}, "pages": [], "entries": entries}}


# ---- the browser ------------------------------------------------------------

def record(url, steps, profile_dir):
    """Runs 'steps' in headless Chromium from 'url'; returns the HAR."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in BROWSER_ARGS + (f"--user-data-dir={profile_dir}",):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    rec = Recorder()

    def body_of(rid):
        try:
            b = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": rid})
            return b["body"], b.get("base64Encoded", False)
        except WebDriverException:
            return None

    def drain():
        """Takes the events so far, fetching each body at once (the browser
        forgets them as pages go)."""
        for e in driver.get_log("performance"):
            m = json.loads(e["message"])["message"]
            if m.get("method", "").startswith("Network."):
                rec.event(m["method"], m.get("params", {}), body_of)

    def settle():
        """Waits until the page has loaded and no request is in flight."""
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            drain()
            if driver.execute_script("return document.readyState") == "complete" and not rec.open:
                time.sleep(0.2)     # a late request (the favicon) still comes
                drain()
                if not rec.open:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"requests still open after {TIMEOUT} s: {[e['request']['url'] for e in rec.open.values()]}")

    try:
        wait = WebDriverWait(driver, TIMEOUT)
        for n, word, args in steps:
            try:
                if word == "open":
                    driver.get(urllib.parse.urljoin(url, args[0]))
                elif word == "type":
                    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, args[0]))).send_keys(args[1])
                elif word == "click":
                    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, args[0]))).click()
                elif word == "wait":
                    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, args[0])))
                settle()
            except (WebDriverException, TimeoutError) as e:
                raise RuntimeError(f"step on line {n} ({word} {' '.join(args)}): {str(e).splitlines()[0]}") from None
            print(f"browser_har: line {n}: {word} {' '.join(args)}: {len(rec.entries)} requests so far", flush=True)
        return rec.har(driver.capabilities.get("browserVersion", "?"))
    finally:
        driver.quit()


# ---- the namespace ---------------------------------------------------------

def wait_port(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def inside(a):
    """In the namespace: loopback up, the application, the browser."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = urllib.parse.urlsplit(a.url).port or 80
    app = subprocess.Popen(["sh", "-c", a.serve], start_new_session=True)
    profile = tempfile.mkdtemp(prefix="rs-browser-")
    try:
        if not wait_port(port, TIMEOUT) or app.poll() is not None:
            print(f"browser_har: the application ({a.serve}) did not listen on port {port}", file=sys.stderr)
            return 1
        with open(a.steps) as f:
            steps = parse_steps(f.read())
        har = record(a.url, steps, profile)
    except RuntimeError as e:
        print(f"browser_har: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            os.killpg(app.pid, 9)
        except ProcessLookupError:
            pass
        app.wait()
        shutil.rmtree(profile, ignore_errors=True)
    with open(a.out, "w") as f:
        json.dump(har, f, indent=1)
    print(f"browser_har: {len(har['log']['entries'])} requests in {a.out}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", required=True, help="shell command that runs the application")
    ap.add_argument("--url", required=True, help="where it serves, on loopback: http://127.0.0.1:PORT/")
    ap.add_argument("--steps", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        with open(a.steps) as f:
            parse_steps(f.read())
    except (OSError, BadSteps) as e:
        print(f"browser_har: {a.steps}: {e}", file=sys.stderr)
        return 2
    if urllib.parse.urlsplit(a.url).hostname not in ("127.0.0.1", "localhost"):
        print("browser_har: --url must be on loopback (the namespace has nothing else)", file=sys.stderr)
        return 2
    if a.inside:
        return inside(a)
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not os.access(tool, os.X_OK):
            print(f"browser_har: no {tool} (make deps)", file=sys.stderr)
            return 1
    # A network namespace of our own: only loopback, no route anywhere.
    return subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__), "--inside"]
                          + sys.argv[1:]).returncode


if __name__ == "__main__":
    sys.exit(main())
