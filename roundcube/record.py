#!/usr/bin/python3
"""Records the paper's two user actions (seed §6) on a running Roundcube and
writes them as rs-client traces (core/trace.h):

  Action 1  a first visit: the login page and the static files it loads.
  Action 2  log in, the mailbox (page, its static files, message list,
            unread counts), compose, send a message to bob, the mailbox
            again, log out.  The login page itself (no static files: the
            browser has them from Action 1) comes first, for its cookie and
            form token.

Every request is sent for real and follows the pages: static files are the
ones the HTML (and, for fonts and images, the CSS) references, form fields
are the ones the form holds, the request token is the one the page's env
JSON holds.  Values that change from run to run (form token, request token,
compose ID) become ${name} placeholders with a 'capture' on the response
they come from; cookies are left to rs-client's jar.

    sudo /usr/bin/python3 roundcube/record.py          # testbed, deploy, record
    record.py --drive http://10.0.0.11:8080 --out DIR  # the recorder alone,
                                                       # run on a client host
"""
import argparse
import hashlib
import html.parser
import http.client
import os
import re
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SENDER, SENDER_PW = "alice", "alice-secret"
RECIPIENT = "bob"
SUBJECT = "resplice action 2"
MESSAGE = "Hello Bob,\r\n\r\nthis message was sent by a recorded Roundcube action.\r\n\r\nAlice\r\n"
# _unlock values the JS would make from the clock ("loading" + ms); fixed
# so the trace is the same on every replay.
UNLOCK_LIST = "loading1000000000001"
UNLOCK_SEND = "sending1000000000002"
# Resources a stylesheet references that --css also fetches: the fonts in
# the one format a browser picks (woff2) and images.  Off by default: the
# paper's Action 1 is the page and what its HTML references.
CSS_KEEP = (".woff2", ".svg", ".png", ".gif", ".jpg", ".ico")


# ---- page parsing -------------------------------------------------------------

class PageParser(html.parser.HTMLParser):
    """Static resources a browser fetches for a page, and its forms' fields."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.resources = []
        self.forms = {}          # form name or id -> {"attrs": {}, "fields": [(name, value)]}
        self._form = None
        self._textarea = None
        self._select = None

    def _add_res(self, url):
        if url and not url.startswith(("data:", "javascript:", "#", "http:", "https:", "//")) \
                and url not in self.resources:
            self.resources.append(url)

    def _field(self, attrs, value):
        name = attrs.get("name")
        if not name:
            return
        form = attrs.get("form") or self._form
        if form is None:
            return
        self.forms.setdefault(form, {"attrs": {}, "fields": []})["fields"].append((name, value))

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "link" and set(a.get("rel", "").split()) & {"stylesheet", "icon", "shortcut"}:
            self._add_res(a.get("href"))
        elif tag == "script" and a.get("src"):
            self._add_res(a["src"])
        elif tag == "img" and a.get("src"):
            self._add_res(a["src"])
        elif tag == "form":
            self._form = a.get("name") or a.get("id") or f"form{len(self.forms)}"
            self.forms.setdefault(self._form, {"attrs": a, "fields": []})["attrs"] = a
        elif tag == "input":
            kind = a.get("type", "text").lower()
            if kind in ("submit", "button", "file", "image", "reset"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self._field(a, a.get("value", "on" if kind in ("checkbox", "radio") else ""))
        elif tag == "textarea":
            self._textarea = (a, [])
        elif tag == "select":
            self._select = (a, None, None)
        elif tag == "option" and self._select:
            sa, first, chosen = self._select
            v = a.get("value", "")
            self._select = (sa, first if first is not None else v, v if "selected" in a else chosen)

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "textarea" and self._textarea:
            a, parts = self._textarea
            self._field(a, "".join(parts))
            self._textarea = None
        elif tag == "select" and self._select:
            a, first, chosen = self._select
            self._field(a, chosen if chosen is not None else (first or ""))
            self._select = None

    def handle_data(self, data):
        if self._textarea:
            self._textarea[1].append(data)


def parse_page(body):
    p = PageParser()
    p.feed(body.decode("utf-8", "replace"))
    return p


def css_resources(css):
    out = []
    for m in re.finditer(rb"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", css):
        u = m.group(1).decode("latin-1")
        if u.startswith(("data:", "#")):
            continue
        if urllib.parse.urlsplit(u).path.lower().endswith(CSS_KEEP) and u not in out:
            out.append(u)
    return out


# ---- the recorder ------------------------------------------------------------

def q(text):
    """A trace quoted string."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 32 or o == 127:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Recorder:
    """Sends requests on one persistent connection with a cookie jar and
    writes each as a trace step, with the dynamic values replaced by
    placeholders."""

    def __init__(self, base, pin=False, dump=None, css=False):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None
        self.cookies = {}
        self.vars = {}           # placeholder name -> value it stands for
        self.steps = []
        self.pin, self.dump, self.css = pin, dump, css
        self.cached = set()      # static files a browser holds already
        self.n = 0
        self.bytes = 0

    def _connect(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def fill(self, text):
        """'text' with every known dynamic value replaced by ${name}
        (longest first, so a value containing another is kept whole)."""
        for name, v in sorted(self.vars.items(), key=lambda kv: -len(kv[1])):
            # Short values ("1") would match unrelated text: those are
            # placed by the caller (see form_body's 'raw').
            if len(v) >= 8:
                text = text.replace(v, "${" + name + "}")
        return text

    def request(self, method, target, headers=(), body=None, expect_status=None, contains=(),
                captures=(), comment=None, static=False, record_body=None):
        """Sends one request, checks it, records it.  'captures' are (name,
        "body"|header name, ERE): the value is taken now and becomes a
        placeholder from the next step on.  'record_body', when given, is
        what the trace says instead of 'body'.  Returns the Response."""
        self._connect()
        hdrs = dict(headers)
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        hdrs.setdefault("User-Agent", "rs-client")
        data = body.encode() if isinstance(body, str) else body
        self.conn.request(method, target, body=data, headers=hdrs)
        r = self.conn.getresponse()
        resp = Response(r.status, r.getheaders(), r.read())
        self.n += 1
        self.bytes += len(resp.body)
        if self.dump:
            with open(os.path.join(self.dump, f"{self.n:03d}.txt"), "wb") as f:
                f.write(f"{method} {target}\n{body or ''}\n\n{resp.status}\n".encode())
                f.write("".join(f"{k}: {v}\n" for k, v in resp.headers).encode() + b"\n" + resp.body)
        for k, v in resp.headers:
            if k.lower() == "set-cookie":
                self._set_cookie(v)
        want = expect_status or 200
        ok = (300 <= resp.status < 400) if want == "3xx" else resp.status == want
        if not ok:
            raise RuntimeError(f"{method} {target}: status {resp.status}, wanted {want}\n{resp.body[:2000]!r}")
        for c in contains:
            if c.encode() not in resp.body:
                raise RuntimeError(f"{method} {target}: no {c!r} in the response\n{resp.body[:3000]!r}")
        lines = []
        if comment:
            lines.append(f"# {comment}")
        lines.append(f"request {method} {self.fill(target)}")
        for k, v in headers:
            lines.append(f"  header {k}: {self.fill(v)}")
        if body is not None:
            lines.append(f"  body {q(self.fill(record_body if record_body is not None else body))}")
        lines.append(f"  expect status {want}")
        for c in contains:
            lines.append(f"  expect contains {q(self.fill(c))}")
        if static and self.pin:
            lines.append(f"  expect sha256 {hashlib.sha256(resp.body).hexdigest()}")
        new = {}
        for name, src, ere in captures:
            text = resp.body.decode("latin-1") if src == "body" else (resp.header(src) or "")
            m = re.search(ere, text)
            if not m:
                raise RuntimeError(f"{method} {target}: capture {name} /{ere}/ found nothing in {src}")
            new[name] = m.group(1) if m.groups() else m.group(0)
            where = "body" if src == "body" else f"header {src}"
            lines.append(f"  capture {name} {where} {q(ere)}")
        self.vars.update(new)
        self.steps.append("\n".join(lines))
        return resp

    def _set_cookie(self, v):
        pair = v.split(";", 1)[0]
        name, _, value = pair.partition("=")
        attrs = v.lower()
        if "max-age=0" in attrs or value.strip() in ("-del-", "deleted"):
            self.cookies.pop(name.strip(), None)
        else:
            self.cookies[name.strip()] = value.strip()

    def statics(self, page_url, urls, comment):
        """Fetches the static files of a page a browser does not hold yet, and
        those their stylesheets reference.  Returns how many."""
        todo, n = [urllib.parse.urljoin(page_url, u) for u in urls], 0
        first = True
        while todo:
            absu = todo.pop(0)
            sp = urllib.parse.urlsplit(absu)
            target = sp.path + (f"?{sp.query}" if sp.query else "")
            if target in self.cached:
                continue
            self.cached.add(target)
            r = self.request("GET", target, static=True, comment=comment if first else None)
            first = False
            n += 1
            if self.css and sp.path.endswith(".css"):
                todo += [urllib.parse.urljoin(absu, u) for u in css_resources(r.body)]
        return n

    def write(self, path, title):
        with open(path, "w") as f:
            f.write(f"# {title}\n# Recorded by roundcube/record.py from Roundcube {rc_version()}; "
                    f"re-record with it (see roundcube/README.md).\n\n")
            f.write("\n\n".join(self.steps) + "\n")
        self.steps = []


def rc_version():
    try:
        with open("/usr/share/roundcube/index.php") as f:
            m = re.search(r"Version ([0-9.]+)", f.read())
            return m.group(1) if m else "?"
    except OSError:
        return "?"


def env_token(body):
    m = re.search(rb'"request_token":"([^"]+)"', body)
    if not m:
        raise RuntimeError("no request_token in the page's env")
    return m.group(1).decode()


def location_target(resp):
    loc = resp.header("Location")
    if not loc:
        raise RuntimeError(f"redirect without Location: {resp.headers}")
    sp = urllib.parse.urlsplit(urllib.parse.urljoin("/", loc))
    return sp.path + (f"?{sp.query}" if sp.query else "")


def form_body(fields, raw=None):
    """application/x-www-form-urlencoded 'fields'; a field named in 'raw'
    gets raw[name] unencoded instead (a ${placeholder})."""
    raw = raw or {}
    q_ = urllib.parse.quote
    return "&".join(f"{q_(k, safe='')}={raw[k] if k in raw else q_(v, safe='')}" for k, v in fields)


# Capture patterns (POSIX ERE, also valid Python re).
RE_FORM_TOKEN = 'name="_token" value="([^"]+)"'
RE_ENV_TOKEN = '"request_token":"([^"]+)"'
RE_COMPOSE_ID = "_id=([0-9a-zA-Z]+)"
RE_LOCATION_TOKEN = "_token=([0-9a-zA-Z]+)"
RE_IDENTITY = f'<option value="([0-9]+)" selected>{SENDER} '   # the sender's identity in _from


def action1(rec):
    """The login page and its static files, on a first visit."""
    r = rec.request("GET", "/", contains=['name="_token"', 'id="login-form"'],
                    comment="Action 1: the login page (first visit)")
    page = parse_page(r.body)
    n = rec.statics("/", page.resources, "static files of the login page")
    return page, n


def action2(rec, login_page):
    """Log in, read the mailbox, compose, send, mailbox again, log out."""
    # The login page again (the browser has its static files), for the
    # session cookie and the form token.
    r = rec.request("GET", "/", contains=['name="_token"'], captures=[("login_token", "body", RE_FORM_TOKEN)],
                    comment="Action 2: the login page (static files cached)")
    page = parse_page(r.body)
    form = page.forms.get("login-form")
    if not form:
        raise RuntimeError("no login-form on the login page")
    fields = []
    for k, v in form["fields"]:
        if k == "_user":
            v = SENDER
        elif k == "_pass":
            v = SENDER_PW
        elif k == "_timezone":
            v = "UTC"      # the JS fills it from the browser
        fields.append((k, v))
    action = form["attrs"].get("action", "/?_task=login")
    r = rec.request("POST", action, headers=[("Content-Type", "application/x-www-form-urlencoded")],
                    body=form_body(fields), expect_status="3xx",
                    captures=[("req_token", "Location", RE_LOCATION_TOKEN)], comment="log in")
    target = location_target(r)
    r = rec.request("GET", target, contains=['"task":"mail"', f"{SENDER}@resplice.test"],
                    captures=[("req_token", "body", RE_ENV_TOKEN)], comment="the mailbox page")
    token = rec.vars["req_token"]
    rec.statics(target, parse_page(r.body).resources, "static files of the mailbox page (first visit)")
    ajax = [("X-Roundcube-Request", token), ("X-Requested-With", "XMLHttpRequest")]
    list_q = (f"/?_task=mail&_action=list&_refresh=1&_layout=widescreen&_mbox=INBOX&_page=&_remote=1"
              f"&_unlock={UNLOCK_LIST}")
    rec.request("GET", list_q, headers=ajax, contains=['"action":"list"'], comment="message list (XHR)")
    rec.request("GET", "/?_task=mail&_action=getunread&_page=1&_remote=1&_unlock=0", headers=ajax,
                contains=['"action":"getunread"'], comment="unread counts (XHR)")

    r = rec.request("GET", "/?_task=mail&_action=compose", expect_status="3xx",
                    captures=[("compose_id", "Location", RE_COMPOSE_ID)], comment="compose: new ID")
    target = location_target(r)
    r = rec.request("GET", target, contains=['name="_id"', '"compose_id"'],
                    captures=[("identity", "body", RE_IDENTITY)], comment="the compose page")
    page = parse_page(r.body)
    rec.statics(target, page.resources, "static files of the compose page (first visit)")
    form = next((f for f in page.forms.values() if any(k == "_action" and v == "send" for k, v in f["fields"])),
                None)
    if not form:
        raise RuntimeError(f"no compose form (with _action=send) among {list(page.forms)}")
    fields = []
    for k, v in form["fields"]:
        if k == "_to":
            v = f"{RECIPIENT}@resplice.test"
        elif k == "_subject":
            v = SUBJECT
        elif k == "_message":
            v = MESSAGE
        fields.append((k, v))
    action = form["attrs"].get("action", "./?_task=mail")
    target = urllib.parse.urljoin("/", action)
    target += ("&" if "?" in target else "?") + f"_unlock={UNLOCK_SEND}&_framed=1"
    enctype = form["attrs"].get("enctype", "application/x-www-form-urlencoded")
    if enctype != "application/x-www-form-urlencoded":
        raise RuntimeError(f"compose form enctype {enctype}: the recorder knows urlencoded forms only")
    body = form_body(fields)
    rec.request("POST", target, headers=[("Content-Type", "application/x-www-form-urlencoded")], body=body,
                record_body=form_body(fields, raw={"_from": "${identity}"}),
                contains=["sent_successfully"], comment="send (the compose form, as the JS submits it)")

    r = rec.request("GET", "/?_task=mail&_mbox=INBOX", contains=['"task":"mail"'],
                    comment="back to the mailbox")
    rec.request("GET", list_q, headers=ajax, contains=['"action":"list"'], comment="message list (XHR)")
    rec.request("GET", "/?_task=mail&_action=getunread&_page=1&_remote=1&_unlock=0", headers=ajax,
                contains=['"action":"getunread"'], comment="unread counts (XHR)")
    rec.request("GET", f"/?_task=logout&_token={token}", contains=['id="login-form"', "terminated the session"],
                comment="log out (answers the login page)")


def drive(args):
    os.makedirs(args.out, exist_ok=True)
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    rec = Recorder(args.drive, pin=args.pin, dump=args.dump, css=args.css)
    t = time.monotonic()
    page, n = action1(rec)
    a1_bytes, a1_n = rec.bytes, rec.n
    rec.write(os.path.join(args.out, "action1.trace"),
              f"Action 1: Roundcube's login page and its {n} static files (first visit)")
    rec.cookies.clear()          # a run of action2 starts with an empty jar
    rec.vars.clear()
    rec.conn.close()
    rec.conn = None
    action2(rec, page)
    rec.write(os.path.join(args.out, "action2.trace"),
              "Action 2: log in, mailbox, compose, send to bob, mailbox, log out")
    print(f"recorded action1: {a1_n} requests {a1_bytes} bytes; action2: {rec.n - a1_n} requests "
          f"{rec.bytes - a1_bytes} bytes; {time.monotonic() - t:.2f}s")


def full(args):
    """Builds the LAN testbed, deploys the mail store and Roundcube on the
    primary, and runs the recorder on c1."""
    sys.path.insert(0, ROOT)
    import tempfile
    from emul.testbed import Testbed
    from roundcube.deploy import MailStore, Roundcube, count_messages
    from topologies.lan import LanTopo
    with tempfile.TemporaryDirectory(prefix="rs-record-") as tmp:
        run = args.run or tmp
        with Testbed(LanTopo(), run) as tb:
            MailStore(tb, run).start()
            rc = Roundcube(tb, run, "primary").start()
            argv = ["/usr/bin/python3", os.path.abspath(__file__), "--drive", f"http://{rc.addr}",
                    "--out", os.path.abspath(args.out)] + (["--pin"] if args.pin else []) + \
                   (["--css"] if args.css else []) + \
                   (["--dump", os.path.abspath(args.dump)] if args.dump else [])
            d = tb.start("c1", "recorder", argv)
            d.popen.wait(120)
            sys.stdout.write(d.output())
            err = open(d.err).read()
            if d.popen.returncode != 0:
                sys.stderr.write(err)
                return 1
            print(f"bob's INBOX: {count_messages(run, 'bob')}  alice's Sent: {count_messages(run, 'alice', 'Sent')}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drive", metavar="URL", help="record against this running Roundcube (run on a client host)")
    ap.add_argument("--out", default=os.path.join(HERE, "traces"), help="where the traces go")
    ap.add_argument("--pin", action="store_true",
                    help="also check every static file's SHA-256 (ties the traces to this Roundcube build)")
    ap.add_argument("--css", action="store_true",
                    help="also fetch the fonts and images the stylesheets reference")
    ap.add_argument("--dump", metavar="DIR", help="write every request and response into DIR (debugging)")
    ap.add_argument("--run", metavar="DIR", help="testbed run directory (default: a temporary one)")
    args = ap.parse_args()
    if args.drive:
        drive(args)
        return 0
    return full(args)


if __name__ == "__main__":
    sys.exit(main())
