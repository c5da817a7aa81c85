#!/usr/bin/python3
"""Turns a HAR file (a browser's developer tools: Network, "Save all as HAR
with content") into an rs-client trace (core/trace.h), so that a study can
replay what a user did on your own application.

    experiments/har2trace.py session.har --out mine.trace [--origin URL] [--think]

- The requests of one origin (scheme://host:port; default: the first
  request's), in order, with their method, path and query, body (form or
  raw text) and the headers an application reads: Content-Type,
  Authorization and every X-*.  The browser's own (Host, Cookie,
  User-Agent, Accept-*, Connection, Sec-*, ...) go: rs-client keeps the
  cookies the responses set in its own jar and asks for no compression.
- Each response becomes `expect status N` (3xx for a redirect); a static
  file (not HTML or JSON) also `expect length N`.
- Tokens: a value a later request sends (a query or form parameter, an X-*
  or Authorization header, a path segment with a digit and no dot; 8
  characters or more) that an earlier response carried (its body, or its
  Location header) is a value the server made for this session: it
  becomes ${name}, and that response gets a
  `capture name body|header Location "ERE"` that finds it anew on every
  replay (the characters before it in the response, then the value up to
  the character that followed it).  A value no response carried stays as
  recorded (the user typed it, or the page's JavaScript made it: check
  those by hand).
- --think keeps the user's pauses over 50 ms as `think` lines.

Prints what it turned into captures; exits 2 on a file that is not a HAR."""
import argparse
import base64
import json
import os
import re
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roundcube.record import q as quote  # noqa: E402  (a trace's quoted string)

KEEP_HEADERS = ("content-type", "authorization")
MIN_TOKEN = 8
CONTEXT = 24            # characters of the response before a token the capture anchors on
ERE_SPECIAL = set("\\.[]()*+?{}|^$")


def ere_escape(text):
    """'text' as a literal POSIX extended regular expression."""
    return "".join("\\" + c if c in ERE_SPECIAL else c for c in text)


def origin_of(url):
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def response_text(entry):
    content = entry.get("response", {}).get("content", {})
    text = content.get("text") or ""
    if content.get("encoding") == "base64":
        try:
            text = base64.b64decode(text).decode("utf-8", "replace")
        except ValueError:
            text = ""
    return text


def header(entry, side, name):
    for h in entry.get(side, {}).get("headers", []):
        if h.get("name", "").lower() == name.lower():
            return h.get("value", "")
    return None


def sent_values(entry):
    """[(where, name, value)] a request sends that may be tokens."""
    req = entry["request"]
    out = [("query", k, v) for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(req["url"]).query,
                                                               keep_blank_values=True)]
    post = req.get("postData") or {}
    if "x-www-form-urlencoded" in (post.get("mimeType") or "") and post.get("text") is not None:
        out += [("form", k, v) for k, v in urllib.parse.parse_qsl(post["text"], keep_blank_values=True)]
    for h in req.get("headers", []):
        n = h.get("name", "")
        if n.lower().startswith("x-") or n.lower() == "authorization":
            v = h.get("value", "").split()[-1] if n.lower() == "authorization" else h.get("value", "")
            out.append(("header", n, v))
    # An id in the path (/entry/3f9a...): named after the segment before it.
    # It has a digit and no dot, unlike a file's name.
    segs = [urllib.parse.unquote(x) for x in urllib.parse.urlsplit(req["url"]).path.split("/")]
    out += [("path", segs[i - 1] or "id", v) for i, v in enumerate(segs)
            if i and re.search(r"[0-9]", v) and "." not in v]
    return [(w, n, v) for w, n, v in out if len(v) >= MIN_TOKEN and re.fullmatch(r"[A-Za-z0-9_\-.~+/=]+", v)]


def capture_for(entry, value):
    """(source, ERE) that finds 'value' again in 'entry''s response, or None:
    the CONTEXT characters before it, then the value up to the character
    that followed it."""
    for src, text in (("Location", header(entry, "response", "location") or ""), ("body", response_text(entry))):
        i = text.find(value)
        if i < 0:
            continue
        before = text[max(0, i - CONTEXT):i]
        before = before.split("\n")[-1]                 # one line: the ERE does not cross lines
        after = text[i + len(value):i + len(value) + 1]
        stop = "".join(sorted({after, '"', "'", "&", "<", ">", " "} - {""}))
        cls = "".join("\\" + c if c in "]\\^-" else c for c in stop)
        return src, f"{ere_escape(before)}([^{cls}]+)"
    return None


def placeholder(name, taken):
    base = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_")[:24] or "token"
    n, k = base, 2
    while n in taken:
        n, k = f"{base}_{k}", k + 1
    taken.add(n)
    return n


def convert(har, origin=None, think=False):
    """(trace text, [(name, value, step it came from)])."""
    entries = har["log"]["entries"]
    if not entries:
        raise ValueError("the HAR has no requests")
    origin = origin or origin_of(entries[0]["request"]["url"])
    entries = [e for e in entries if origin_of(e["request"]["url"]) == origin]
    values, taken, found = {}, set(), []      # value -> (placeholder, the step that captures it)
    captures = {}                             # step -> [(name, src, ere)]
    for k, e in enumerate(entries):
        for _, name, v in sent_values(e):
            if v in values:
                continue
            for j in range(k - 1, -1, -1):
                cap = capture_for(entries[j], v)
                if cap:
                    values[v] = (placeholder(name, taken), j)
                    captures.setdefault(j, []).append((values[v][0], *cap))
                    found.append((values[v][0], v, j))
                    break

    def sub(text, step):
        """'text' of request 'step' with the values captured before it as ${name}."""
        for v, (n, j) in sorted(values.items(), key=lambda kv: -len(kv[0])):
            if j < step:
                text = text.replace(v, "${" + n + "}")
        return text

    lines = [f"# Imported by experiments/har2trace.py from a HAR of {origin}: {len(entries)} requests."]
    t_prev = None
    for k, e in enumerate(entries):
        req, resp = e["request"], e.get("response", {})
        if think and t_prev is not None and e.get("startedDateTime"):
            gap = _ms(e["startedDateTime"]) - t_prev
            if gap > 50:
                lines.append(f"think {int(gap)}ms")
        u = urllib.parse.urlsplit(req["url"])
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines += ["", f"request {req['method']} {sub(target, k)}"]
        for h in req.get("headers", []):
            n = h.get("name", "")
            if n.startswith(":"):
                continue
            if n.lower() in KEEP_HEADERS or n.lower().startswith("x-"):
                lines.append(f"  header {n}: {sub(h.get('value', ''), k)}")
        post = req.get("postData") or {}
        if post.get("text"):
            lines.append(f"  body {quote(sub(post['text'], k))}")
        status = int(resp.get("status") or 0)
        if 300 <= status < 400:
            lines.append("  expect status 3xx")
        elif status:
            lines.append(f"  expect status {status}")
        mime = (resp.get("content", {}).get("mimeType") or "").lower()
        size = resp.get("content", {}).get("size")
        if status == 200 and size and not any(m in mime for m in ("html", "json", "xml", "javascript")):
            lines.append(f"  expect length {size}")
        for name, src, ere in captures.get(k, []):
            where = "body" if src == "body" else f"header {src}"
            lines.append(f"  capture {name} {where} {quote(ere)}")
        if e.get("startedDateTime"):
            t_prev = _ms(e["startedDateTime"]) + float(e.get("time") or 0)
    return "\n".join(lines) + "\n", found


def _ms(iso):
    """Milliseconds since the epoch of an ISO 8601 time (HAR's startedDateTime)."""
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("har")
    ap.add_argument("--out", required=True)
    ap.add_argument("--origin", help="keep the requests to this scheme://host:port (default: the first one's)")
    ap.add_argument("--think", action="store_true", help="keep the user's pauses (over 50 ms)")
    a = ap.parse_args()
    try:
        with open(a.har, encoding="utf-8") as f:
            har = json.load(f)
        text, found = convert(har, a.origin, a.think)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"har2trace: {a.har}: not a HAR file this tool can read ({e})", file=sys.stderr)
        return 2
    with open(a.out, "w") as f:
        f.write(text)
    for name, value, step in found:
        print(f"har2trace: ${{{name}}} = the value {value[:12]}... that response {step} carried (captured anew)")
    print(f"har2trace: {a.out}: {text.count(chr(10) + 'request ')} requests, {len(found)} captures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
