#!/usr/bin/python3
"""A guestbook: the smallest application that shows how to put your own
HTTP/1.1 server behind resplice (docs/your-application.md).  Python's
standard library only.

    guestbook.py --data DIR [--listen ADDR] [--port N] [--state-dir DIR]

  GET  /                  the entries, newest last (HTML)
  POST /sign              form name=...&message=...: a new entry with a
                          random id (non-deterministic), answered with it
  GET  /entry/ID          one entry
  GET  /static/guide.txt  a 280 KB text file (never changes)
  GET  /health            "ok"

The state is one file, DIR/guestbook.json, read on every request: so a
standby's rs-front can install a newer copy by renaming it over the file
(rs-front --apply-file).  With --state-dir (the front's), every POST /sign
also hands that copy to the front in the response's headers:

  X-Resplice-State: FILE      the whole state after this request, written
                              into the front's --state-dir
  X-Resplice-State-Seq: N     its age: a standby never installs an older one
  X-Resplice-Sync: 1          the response carries a value drawn at random
                              (the id): the front holds it until the standby
                              has the state, so a failover never draws
                              another one

That is all the application does for resplice: the front numbers the
requests (X-Resplice-Txn, which it may ignore) and strips these headers
before the client sees them."""
import argparse
import html
import json
import os
import secrets
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUIDE = "".join(f"{n:06d} Be kind, sign the guestbook, and come back soon.\n" for n in range(5000)).encode()


class Book:
    """The entries in 'data_dir'/guestbook.json: {"seq": N, "entries": [...]}."""

    def __init__(self, data_dir):
        self.path = os.path.join(data_dir, "guestbook.json")
        self.lock = threading.Lock()

    def read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"seq": 0, "entries": []}

    def sign(self, name, message):
        """Adds an entry; returns (the entry, the whole new state as text)."""
        with self.lock:
            book = self.read()
            entry = {"id": secrets.token_hex(8), "name": name, "message": message}
            book["entries"].append(entry)
            book["seq"] += 1
            text = json.dumps(book, indent=1)
            write_atomically(self.path, text)
            return entry, book["seq"], text


def write_atomically(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".guestbook-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive: the client's connection outlives a failover
    disable_nagle_algorithm = True      # headers and body are two writes

    def version_string(self):
        return "guestbook/1"            # the same on every backend: responses must be byte-identical

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="text/html; charset=utf-8", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        book = self.server.book
        path = urllib.parse.urlsplit(self.path).path
        if path == "/":
            rows = "".join(f'<li><a href="/entry/{e["id"]}">{html.escape(e["name"])}</a>: '
                           f'{html.escape(e["message"])}</li>\n' for e in book.read()["entries"])
            self.reply(200, (f"<!doctype html>\n<title>Guestbook</title>\n<h1>Guestbook</h1>\n<ul>\n{rows}</ul>\n"
                             '<form method="post" action="/sign"><input name="name"> <input name="message"> '
                             '<button>Sign</button></form>\n<p><a href="/static/guide.txt">guide</a></p>\n').encode())
        elif path.startswith("/entry/"):
            found = [e for e in book.read()["entries"] if e["id"] == path[len("/entry/"):]]
            if found:
                e = found[0]
                self.reply(200, f'<p id="{e["id"]}">{html.escape(e["name"])} wrote: '
                                f'{html.escape(e["message"])}</p>\n'.encode())
            else:
                self.reply(404, b"no such entry\n", "text/plain")
        elif path == "/static/guide.txt":
            self.reply(200, GUIDE, "text/plain")
        elif path == "/health":
            self.reply(200, b"ok\n", "text/plain")
        else:
            self.reply(404, b"not found\n", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urllib.parse.urlsplit(self.path).path != "/sign":
            self.reply(404, b"not found\n", "text/plain")
            return
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        if not form.get("name"):
            self.reply(400, b"a name, please\n", "text/plain")
            return
        entry, seq, state = self.server.book.sign(form["name"], form.get("message", ""))
        self.reply(200, f'<p>Thank you. Your entry: <a href="/entry/{entry["id"]}">{entry["id"]}</a></p>\n'.encode(),
                   headers=self.state_headers(seq, state))

    def state_headers(self, seq, state):
        """The state hand-over to rs-front (nothing without --state-dir)."""
        if not self.server.state_dir:
            return ()
        fd, path = tempfile.mkstemp(dir=self.server.state_dir, prefix="guestbook-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(state)
        return (("X-Resplice-State", path), ("X-Resplice-State-Seq", str(seq)), ("X-Resplice-Sync", "1"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the directory of guestbook.json")
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--state-dir", help="rs-front's --state-dir: hand each new state to the front")
    a = ap.parse_args()
    os.makedirs(a.data, exist_ok=True)
    server = ThreadingHTTPServer((a.listen, a.port), Handler)
    server.daemon_threads = True
    server.book, server.state_dir = Book(a.data), a.state_dir
    print(f"guestbook: listening on {a.listen}:{a.port}, data in {a.data}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
