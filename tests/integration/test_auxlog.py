"""Integration tests of rs-auxlog (issue 6): the aux logger between two web
backends and a real mail store (dovecot IMAP, rs-smtpd SMTP), on loopback
only (no Mininet).  A backend is known by its source address: the tests bind
their client sockets to 127.0.0.2 ("primary") and 127.0.0.3 ("alternate").

Checked: a marked SMTP conversation re-run by the alternate gets the
primary's replies and delivers nothing new; a primary cut mid-DATA leaves
nothing delivered and the alternate's re-run catches up and delivers once;
an IMAP LOGIN/SELECT/APPEND ({N} and {N+}) re-run stores nothing new; an
unmarked conversation is relayed and not recorded; a backend reusing a
marker opens a new ordinal and stays live; SIGTERM ends the daemon."""
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from emul.places import binary
from roundcube.deploy import DOVECOT, USERS, MailStore
from tests.integration.harness import keep_run, needs_root

PRIMARY, ALTERNATE = "127.0.0.2", "127.0.0.3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Daemon:
    """A process whose stdout lines are collected by a thread."""

    def __init__(self, argv, err_path):
        self.err = open(err_path, "w")
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} from {self.p.args[0]}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.err.close()
        self.p.stdout.close()


def stats(d):
    d.p.send_signal(signal.SIGUSR1)
    line = d.wait_line(r"^stats:")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


# ---- protocol clients ------------------------------------------------------

class Conn:
    def __init__(self, src, port):
        self.s = socket.socket()
        self.s.bind((src, 0))
        self.s.settimeout(10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.connect(("127.0.0.1", port))
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError(f"closed; have {self.buf!r}")
            self.buf += d
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, b):
        self.s.sendall(b)

    def close(self):
        self.s.close()


def smtp_reply(c):
    out = b""
    while True:
        ln = c.line()
        out += ln
        if len(ln) < 4 or ln[3:4] != b"-":
            return out


def marker_label(txn, rerun=False):
    """'10.0.1.1:40000#3' -> 'x-resplice-txn-10-0-1-1-40000-3' (a re-run after
    a failover: 'x-resplice-rerun-...')"""
    ip, rest = txn.split(":")
    port, num = rest.split("#")
    return ("x-resplice-rerun-" if rerun else "x-resplice-txn-") + "-".join(ip.split(".") + [port, num])


def message(msg_id, to="bob"):
    return (f"From: alice@resplice.test\r\nTo: {to}@resplice.test\r\nSubject: auxlog test\r\n"
            f"Message-ID: <{msg_id}@resplice.test>\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
            f"\r\nHello {to}.\r\n.a line starting with a dot\r\n").replace("\r\n.a", "\r\n..a").encode()


def smtp_send(src, port, txn, msg_id, cut_mid_data=False, pipeline=False, rerun=False):
    """One Roundcube-like SMTP conversation; returns every reply received."""
    c = Conn(src, port)
    replies = [smtp_reply(c)]
    helo = f"{marker_label(txn, rerun)}.resplice.test" if txn else "web.resplice.test"
    cmds = [f"EHLO {helo}\r\n", "MAIL FROM:<alice@resplice.test>\r\n", "RCPT TO:<bob@resplice.test>\r\n",
            "DATA\r\n"]
    if pipeline:
        c.send(cmds[0].encode())
        replies.append(smtp_reply(c))
        c.send("".join(cmds[1:]).encode())
        replies += [smtp_reply(c) for _ in cmds[1:]]
    else:
        for cmd in cmds:
            c.send(cmd.encode())
            replies.append(smtp_reply(c))
    assert replies[-1].startswith(b"354"), replies
    body = message(msg_id)
    if cut_mid_data:
        c.send(body[: len(body) // 2])
        time.sleep(0.2)
        c.close()
        return replies
    c.send(body + b".\r\n")
    replies.append(smtp_reply(c))
    c.send(b"QUIT\r\n")
    replies.append(smtp_reply(c))
    c.close()
    return replies


def smtp_until_data(src, port, txn):
    """A marked SMTP conversation up to DATA's 354; returns the connection."""
    c = Conn(src, port)
    smtp_reply(c)
    for cmd in (f"EHLO {marker_label(txn)}.resplice.test\r\n", "MAIL FROM:<alice@resplice.test>\r\n",
                "RCPT TO:<bob@resplice.test>\r\n", "DATA\r\n"):
        c.send(cmd.encode())
        smtp_reply(c)
    return c


def imap_tagged(c, tag):
    out = b""
    while True:
        ln = c.line()
        out += ln
        m = re.search(rb"\{(\d+)\+?\}\r\n$", ln)
        if m and not ln.startswith(tag.encode() + b" "):
            out += c.exact(int(m.group(1)))
            continue
        if ln.startswith(tag.encode() + b" "):
            return out


def imap_append_session(src, port, txn, msg_ids, rerun=False):
    """Greeting, ID with the marker, LOGIN, SELECT Sent, one APPEND per
    message (first with {N}, then {N+}), LOGOUT.  Returns what came back."""
    c = Conn(src, port)
    out = [c.line()]
    cmds = []
    if txn:
        key = "x-resplice-rerun" if rerun else "x-resplice-txn"
        cmds.append(("A0001", f'ID ("name" "Roundcube" "version" "1.6" "{key}" "{txn}")'))
    cmds += [("A0002", 'LOGIN "alice" "alice-secret"'), ("A0003", 'SELECT "Sent"')]
    for tag, cmd in cmds:
        c.send(f"{tag} {cmd}\r\n".encode())
        out.append(imap_tagged(c, tag))
    for i, mid in enumerate(msg_ids):
        tag, body = f"A01{i:02d}", message(mid)
        if i % 2 == 0:
            c.send(f'{tag} APPEND "Sent" (\\Seen) {{{len(body)}}}\r\n'.encode())
            cont = c.line()
            assert cont.startswith(b"+"), cont
            out.append(cont)
            c.send(body + b"\r\n")
        else:
            c.send(f'{tag} APPEND "Sent" (\\Seen) {{{len(body)}+}}\r\n'.encode() + body + b"\r\n")
        out.append(imap_tagged(c, tag))
    c.send(b"A0099 LOGOUT\r\n")
    out.append(imap_tagged(c, "A0099"))
    c.close()
    return out


# ---- the test case -----------------------------------------------------------

@needs_root
class AuxlogCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for b in ("rs-auxlog", "rs-smtpd"):
            if not os.access(binary(b), os.X_OK):
                raise unittest.SkipTest(f"build/{b} missing (make)")
        if not os.access(DOVECOT, os.X_OK):
            raise unittest.SkipTest("dovecot not installed")
        cls.d = {}
        cls.dir = tempfile.mkdtemp(prefix="rs-auxlog-")
        try:
            cls._start()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        os.chmod(cls.dir, 0o711)       # dovecot's mail processes are not root
        cls.imap_port, cls.smtp_port = free_port(), free_port()
        cls.aux_imap, cls.aux_smtp = free_port(), free_port()
        # The one dovecot configuration (roundcube/deploy.py), run here on loopback.
        ms = MailStore(None, cls.dir, users=USERS, imap_port=cls.imap_port, listen="127.0.0.1")
        conf = ms.config()
        cls.home = ms.home
        cls.d["dovecot"] = Daemon([DOVECOT, "-F", "-c", conf], os.path.join(cls.dir, "dovecot.log"))
        cls.d["smtpd"] = Daemon([binary("rs-smtpd"), "--listen", f"127.0.0.1:{cls.smtp_port}",
                                 "--maildirs", cls.home, "--hostname", "resplice.test"],
                                os.path.join(cls.dir, "smtpd.log"))
        cls.d["smtpd"].wait_line("listening")
        cls.auxlog_log = os.path.join(cls.dir, "auxlog.log")
        cls.d["auxlog"] = Daemon([binary("rs-auxlog"),
                                  "--imap", f"127.0.0.1:{cls.aux_imap}=127.0.0.1:{cls.imap_port}",
                                  "--smtp", f"127.0.0.1:{cls.aux_smtp}=127.0.0.1:{cls.smtp_port}",
                                  "--ttl", "600s", "--log", cls.auxlog_log], os.path.join(cls.dir, "auxlog.err"))
        cls.d["auxlog"].wait_line("listening on smtp")
        if not wait_port(cls.imap_port):
            raise RuntimeError(f"dovecot not listening; see {cls.dir}/dovecot.log")

    @classmethod
    def tearDownClass(cls):
        for name in ("auxlog", "smtpd", "dovecot"):
            if name in cls.d:
                cls.d[name].stop()
        alive = [n for n, d in cls.d.items() if d.p.poll() is None]
        keep_run(cls.dir, f"{cls.__module__}.{cls.__name__}")
        shutil.rmtree(cls.dir, ignore_errors=True)
        assert not alive, f"still running: {alive}"

    # -- helpers ---------------------------------------------------------------
    def count(self, user="bob", folder=""):
        md = os.path.join(self.home, user, "Maildir", folder)
        return sum(len(os.listdir(os.path.join(md, s))) for s in ("new", "cur"))

    def stats(self):
        return stats(self.d["auxlog"])

    def log(self):
        with open(self.auxlog_log) as f:
            return f.read()

    def wait_log(self, pattern, timeout=5):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if re.search(pattern, self.log()):
                return
            time.sleep(0.02)
        self.fail(f"no log line matching {pattern!r}")

    # -- (a) ---------------------------------------------------------------------
    def test_a_smtp_replay_delivers_once(self):
        txn = "10.0.1.1:40000#1"
        before, s0 = self.count(), self.stats()
        t = time.monotonic()
        r1 = smtp_send(PRIMARY, self.aux_smtp, txn, "a-primary")
        t1 = time.monotonic() - t
        self.assertEqual(self.count(), before + 1)
        t = time.monotonic()
        r2 = smtp_send(ALTERNATE, self.aux_smtp, txn, "a-alternate-new-id", rerun=True)
        t2 = time.monotonic() - t
        self.assertEqual(r1, r2)
        self.assertTrue(r1[-2].startswith(b"250 2.0.0 Ok: queued"), r1)
        self.assertEqual(self.count(), before + 1, "the re-run delivered again")
        self.wait_log(r"end smtp backend=127\.0\.0\.3:\d+ txn=10\.0\.1\.1:40000#1 ordinal=0 mode=replay ")
        s1 = self.stats()
        self.assertEqual(s1["replayed"] - s0["replayed"], 1)
        self.assertEqual(s1["live"] - s0["live"], 1)
        self.assertEqual(s1["caught_up"], s0["caught_up"])
        self.assertGreaterEqual(s1["records"], 1)
        print(f"\n  smtp primary {t1 * 1000:.1f} ms, replayed {t2 * 1000:.1f} ms", end=" ")

    def test_a2_smtp_pipelined_replay(self):
        txn = "10.0.1.1:40000#2"
        before = self.count()
        r1 = smtp_send(PRIMARY, self.aux_smtp, txn, "a2-primary", pipeline=True)
        r2 = smtp_send(ALTERNATE, self.aux_smtp, txn, "a2-alternate", pipeline=True, rerun=True)
        self.assertEqual(r1, r2)
        self.assertEqual(self.count(), before + 1)

    # -- (b) ---------------------------------------------------------------------
    def test_b_smtp_cut_mid_data_catches_up(self):
        txn = "10.0.1.1:40001#1"
        before, s0 = self.count(), self.stats()
        smtp_send(PRIMARY, self.aux_smtp, txn, "b-primary", cut_mid_data=True)
        self.wait_log(r"end smtp backend=127\.0\.0\.2:\d+ txn=10\.0\.1\.1:40001#1 ")
        time.sleep(0.2)
        self.assertEqual(self.count(), before, "a cut message was delivered")
        r2 = smtp_send(ALTERNATE, self.aux_smtp, txn, "b-alternate", rerun=True)
        self.assertTrue(r2[-2].startswith(b"250 2.0.0 Ok"), r2)
        self.assertEqual(self.count(), before + 1)
        self.wait_log(r"catch-up smtp backend=127\.0\.0\.3:\d+ txn=10\.0\.1\.1:40001#1 ordinal=0 at=5 resent=4")
        self.wait_log(r"end smtp backend=127\.0\.0\.3:\d+ txn=10\.0\.1\.1:40001#1 ordinal=0 mode=replay\+live ")
        s1 = self.stats()
        self.assertEqual(s1["caught_up"] - s0["caught_up"], 1)
        self.assertEqual(s1["replayed"] - s0["replayed"], 1)
        # The record now holds the alternate's completed conversation, the
        # data unit included: a re-run from another backend replays all of it.
        # (The primary's own next run would be its ordinal 1; fake a third
        # backend instead.)
        r3 = smtp_send("127.0.0.4", self.aux_smtp, txn, "b-third", rerun=True)
        self.assertEqual(r3, r2)
        self.assertEqual(self.count(), before + 1)

    # -- (c) ---------------------------------------------------------------------
    def test_c_imap_append_replay(self):
        txn = "10.0.1.2:40000#7"
        before, s0 = self.count("alice", ".Sent"), self.stats()
        t = time.monotonic()
        r1 = imap_append_session(PRIMARY, self.aux_imap, txn, ["c-1", "c-2"])
        t1 = time.monotonic() - t
        self.assertEqual(self.count("alice", ".Sent"), before + 2)
        self.assertTrue(any(b"APPENDUID" in x or b"OK" in x for x in r1[-2:]))
        t = time.monotonic()
        r2 = imap_append_session(ALTERNATE, self.aux_imap, txn, ["c-1-rerun", "c-2-rerun"], rerun=True)
        t2 = time.monotonic() - t
        self.assertEqual(r1[1:], r2[1:])   # the greeting comes live from dovecot
        self.assertEqual(self.count("alice", ".Sent"), before + 2, "the re-run appended again")
        s1 = self.stats()
        self.assertEqual(s1["replayed"] - s0["replayed"], 1)
        self.assertEqual(s1["caught_up"], s0["caught_up"])
        print(f"\n  imap primary {t1 * 1000:.1f} ms, replayed {t2 * 1000:.1f} ms", end=" ")

    def test_c2_imap_diverged_catches_up(self):
        """The alternate appends a second message the primary never did: the
        first is replayed, then ID, LOGIN and SELECT are resent and the new
        APPEND goes live."""
        txn = "10.0.1.2:40000#8"
        before, s0 = self.count("alice", ".Sent"), self.stats()
        imap_append_session(PRIMARY, self.aux_imap, txn, ["c2-1"])
        r2 = imap_append_session(ALTERNATE, self.aux_imap, txn, ["c2-1-rerun", "c2-2-new"], rerun=True)
        self.assertEqual(self.count("alice", ".Sent"), before + 2)
        self.assertRegex(r2[-2], rb"(?m)^A0101 OK \[APPENDUID")
        self.wait_log(r"catch-up imap backend=127\.0\.0\.3:\d+ txn=10\.0\.1\.2:40000#8 ordinal=0 at=5 resent=3 "
                      r"why=diverged: A0101 APPEND vs recorded A0099 LOGOUT")
        s1 = self.stats()
        self.assertEqual(s1["diverged"] - s0["diverged"], 1)

    # -- (d) ---------------------------------------------------------------------
    def test_d_unmarked_is_live_and_not_recorded(self):
        before, s0 = self.count(), self.stats()
        smtp_send(PRIMARY, self.aux_smtp, None, "d-1")
        smtp_send(ALTERNATE, self.aux_smtp, None, "d-2")
        imap_append_session(ALTERNATE, self.aux_imap, None, ["d-3"])
        self.assertEqual(self.count(), before + 2)
        s1 = self.stats()
        self.assertEqual(s1["unmarked"] - s0["unmarked"], 3)
        self.assertEqual(s1["records"], s0["records"])
        self.assertEqual(s1["record_bytes"], s0["record_bytes"])
        self.assertEqual(s1["replayed"], s0["replayed"])

    # -- (e) ---------------------------------------------------------------------
    def test_e_same_backend_reusing_marker_stays_live(self):
        txn = "10.0.1.3:40000#1"
        before, s0 = self.count(), self.stats()
        r1 = smtp_send(PRIMARY, self.aux_smtp, txn, "e-1")
        r2 = smtp_send(PRIMARY, self.aux_smtp, txn, "e-2")
        self.assertEqual(self.count(), before + 2, "a backend's own second conversation must go live")
        self.assertNotEqual(r1[-2], r2[-2])    # two different queue ids
        s1 = self.stats()
        self.assertEqual(s1["live"] - s0["live"], 2)
        self.assertEqual(s1["replayed"], s0["replayed"])
        # The alternate's first and second conversations map to ordinals 0 and 1.
        a1 = smtp_send(ALTERNATE, self.aux_smtp, txn, "e-1-rerun", rerun=True)
        a2 = smtp_send(ALTERNATE, self.aux_smtp, txn, "e-2-rerun", rerun=True)
        self.assertEqual((a1, a2), (r1, r2))
        self.assertEqual(self.count(), before + 2)

    def test_e2_after_a_take_over_only_the_rerunner_acts(self):
        """After the alternate re-ran a transaction (here: caught up on the
        primary's cut conversation), the primary — failed over, perhaps
        only hung — may not act for it any more: its next conversation for
        it is refused at the marker, and the alternate's second one goes
        live (nothing of the primary's to replay)."""
        txn = "10.0.1.3:40001#1"
        before, s0 = self.count(), self.stats()
        smtp_send(PRIMARY, self.aux_smtp, txn, "e2-primary", cut_mid_data=True)
        self.wait_log(r"end smtp backend=127\.0\.0\.2:\d+ txn=10\.0\.1\.3:40001#1 ")
        smtp_send(ALTERNATE, self.aux_smtp, txn, "e2-alternate", rerun=True)   # caught up: owner is now .3
        self.assertEqual(self.count(), before + 1)
        with self.assertRaises(ConnectionError):
            smtp_send(PRIMARY, self.aux_smtp, txn, "e2-primary-2")
        self.wait_log(r"refused smtp backend=127\.0\.0\.2:\d+ txn=10\.0\.1\.3:40001#1: re-run by 127\.0\.0\.3")
        self.assertEqual(self.count(), before + 1)
        smtp_send(ALTERNATE, self.aux_smtp, txn, "e2-alternate-2", rerun=True)
        self.assertEqual(self.count(), before + 2)
        self.assertEqual(self.stats()["superseded"] - s0["superseded"], 1)

    def test_e4_rerun_cuts_a_hung_backends_conversation(self):
        """The primary hangs mid-DATA (its conversation still open), the
        alternate re-runs the transaction: the primary's conversation is
        cut, so when it resumes its message goes nowhere — one mail."""
        txn = "10.0.1.3:40003#2"
        before, s0 = self.count(), self.stats()
        c = smtp_until_data(PRIMARY, self.aux_smtp, txn)
        body = message("e4-primary")
        c.send(body[: len(body) // 2])
        time.sleep(0.2)
        r2 = smtp_send(ALTERNATE, self.aux_smtp, txn, "e4-alternate", rerun=True)
        self.assertTrue(r2[-2].startswith(b"250 2.0.0 Ok"), r2)
        self.wait_log(r"cut smtp backend=127\.0\.0\.2:\d+ txn=10\.0\.1\.3:40003#2 ordinal=0: re-run by 127\.0\.0\.3")
        # The primary resumes: the rest of its message and the end of DATA.
        with self.assertRaises((ConnectionError, OSError)):
            c.send(body[len(body) // 2:] + b".\r\n")
            smtp_reply(c)
        c.close()
        time.sleep(0.3)
        self.assertEqual(self.count(), before + 1)
        self.assertEqual(self.stats()["superseded"] - s0["superseded"], 1)

    def test_e3_first_run_is_never_replayed(self):
        """A reused client port: the same transaction ID comes as a first run
        (no rerun marker) from another backend.  It goes live (the message is
        sent), the other backend's record is dropped as stale, and a later
        re-run replays the new conversation, not the stale one."""
        txn = "10.0.1.3:40002#4"
        before, s0 = self.count(), self.stats()
        r1 = smtp_send(PRIMARY, self.aux_smtp, txn, "e3-old-connection")
        r2 = smtp_send(ALTERNATE, self.aux_smtp, txn, "e3-new-connection")
        self.assertEqual(self.count(), before + 2, "a first run was answered from an old record")
        self.assertNotEqual(r1[-2], r2[-2])
        s1 = self.stats()
        self.assertEqual(s1["stale"] - s0["stale"], 1)
        self.assertEqual(s1["replayed"], s0["replayed"])
        self.wait_log(r"drop smtp txn=10\.0\.1\.3:40002#4 ordinal=0 from=127\.0\.0\.2")
        r3 = smtp_send("127.0.0.4", self.aux_smtp, txn, "e3-rerun", rerun=True)
        self.assertEqual(r3, r2)
        self.assertEqual(self.count(), before + 2)

    # -- (f) ---------------------------------------------------------------------
    def test_f_sigterm_exits_cleanly(self):
        port = free_port()
        d = Daemon([binary("rs-auxlog"), "--smtp", f"127.0.0.1:{port}=127.0.0.1:{self.smtp_port}"],
                   os.path.join(self.dir, "auxlog-f.err"))
        try:
            d.wait_line("listening on smtp")
            c = Conn(PRIMARY, port)            # an open conversation must not hold it up
            self.assertTrue(smtp_reply(c).startswith(b"220"))
            d.p.send_signal(signal.SIGTERM)
            self.assertEqual(d.p.wait(5), 0)
            c.close()
        finally:
            d.stop()
        self.assertIsNotNone(d.p.poll())
        with open(os.path.join(self.dir, "auxlog-f.err")) as f:
            self.assertIn("exit on signal 15", f.read())

    def test_g_bad_usage(self):
        for argv in ([], ["--smtp", "nonsense"], ["--ttl", "x", "--smtp", "127.0.0.1:1=127.0.0.1:2"],
                     ["--smtp", "127.0.0.1:1=127.0.0.1:2", "extra"]):
            r = subprocess.run([binary("rs-auxlog")] + argv, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, argv)
            self.assertIn("rs-auxlog:", r.stderr)
        # --tap: one store address, a queue number, an interface that exists.
        for argv, why in ((["--tap-queue", "70000"], "--tap-queue"),
                          (["--tap", "lo", "--smtp", "127.0.0.1:1=127.0.0.2:25"], "one address")):
            r = subprocess.run([binary("rs-auxlog"), "--imap", "127.0.0.1:1=127.0.0.1:143"] + argv,
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, argv)
            self.assertIn(why, r.stderr)
        r = subprocess.run([binary("rs-auxlog"), "--imap", f"127.0.0.1:{free_port()}=127.0.0.1:143",
                            "--tap", "rs-no-such0"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertIn("tap on rs-no-such0: cannot find the interface", r.stderr)


if __name__ == "__main__":
    unittest.main()


class SlowStore:
    """A mail store's SMTP side that takes its time over one message: it
    delivers (counts) each message at the end of its DATA, and answers that
    end 'delay' seconds later when the message holds 'slow'."""

    def __init__(self, slow, delay):
        self.slow, self.delay, self.delivered = slow, delay, []
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        f = s.makefile("rb")
        s.sendall(b"220 slow.test ESMTP\r\n")
        try:
            for line in f:
                verb = line[:4].upper()
                if verb == b"DATA":
                    s.sendall(b"354 go ahead\r\n")
                    body = b"".join(iter(f.readline, b".\r\n"))
                    self.delivered.append(body)
                    if self.slow in body:
                        time.sleep(self.delay)
                    s.sendall(b"250 2.0.0 Ok: queued\r\n")
                elif verb == b"QUIT":
                    s.sendall(b"221 bye\r\n")
                    return
                else:
                    s.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            s.close()

    def close(self):
        self.ls.close()


class AuxlogDrainCase(unittest.TestCase):
    def setUp(self):
        if not os.access(binary("rs-auxlog"), os.X_OK):
            self.skipTest("build/rs-auxlog missing (make)")
        self.dir = tempfile.mkdtemp(prefix="rs-auxlog-drain-")
        self.store = SlowStore(b"drain-primary", 1.0)
        self.port = free_port()
        self.log = os.path.join(self.dir, "auxlog.log")
        self.auxlog = Daemon([binary("rs-auxlog"), "--smtp", f"127.0.0.1:{self.port}=127.0.0.1:{self.store.port}",
                              "--log", self.log], os.path.join(self.dir, "auxlog.err"))
        self.auxlog.wait_line("listening on smtp")

    def tearDown(self):
        self.auxlog.stop()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_rerun_waits_for_what_a_hung_backend_sent(self):
        """The primary's whole message, end of DATA included, reached the
        mail store, which has not answered yet, when the alternate re-runs
        the transaction (the primary hung or was failed over).  The message
        may be delivered, so the primary's conversation drains instead of
        being cut: the store's reply completes the record and the re-run is
        answered from it, one mail.  (Cut, as before, the store had the
        primary's message and the re-run's catch-up sent a second one.)"""
        txn = "10.0.1.3:40005#2"
        s0 = stats(self.auxlog)
        c = smtp_until_data(PRIMARY, self.port, txn)
        c.send(message("drain-primary") + b".\r\n")
        end = time.monotonic() + 5
        while not self.store.delivered and time.monotonic() < end:
            time.sleep(0.01)
        t0 = time.monotonic()
        r = smtp_send(ALTERNATE, self.port, txn, "drain-alternate", rerun=True)
        waited = time.monotonic() - t0
        c.close()
        self.assertTrue(r[-2].startswith(b"250 2.0.0 Ok"), r)
        self.assertGreater(waited, 0.5, "answered before the store replied to the primary")
        self.assertEqual(len(self.store.delivered), 1, "the re-run sent the message again")
        with open(self.log) as f:
            log = f.read()
        self.assertRegex(log, r"drain smtp backend=127\.0\.0\.2:\d+ txn=10\.0\.1\.3:40005#2 ordinal=0")
        self.assertRegex(log, r"end smtp backend=127\.0\.0\.2:\d+ txn=10\.0\.1\.3:40005#2 .*superseded \(drained\)")
        s1 = stats(self.auxlog)
        # (Then QUIT, which the primary never sent, is caught up: EHLO again, no DATA.)
        self.assertEqual((s1["drained"] - s0["drained"], s1["replayed"] - s0["replayed"]), (1, 1))
