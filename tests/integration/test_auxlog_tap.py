"""rs-auxlog --tap on the LAN testbed: the backends reach the mail store at
its own address, routed through the auxlog host, whose kernel forwards;
rs-auxlog records what passes from a tc program's ring, and a re-run,
which comes through its relay, is answered from that record.

Checked from outside: the mail store's own Maildir (an APPEND stored once),
the clients' replies (the re-run gets the first run's), and the fences:
a backend whose transaction another one re-runs gets nothing more to the
store, whether its conversation was open then (hung, SIGSTOP) or opened
after, even while rs-auxlog itself hangs (a conversation's first units
wait for its marker's judgment on a netfilter queue).  rs-auxlog's death (SIGKILL) does not stop the mail: the kernel
forwards on, and a successor replaces the filter its predecessor left."""
import os
import re
import signal
import sys
import time
import shutil
import tempfile
import unittest

from emul.shaping import wait_until
from emul.testbed import Testbed
from roundcube.deploy import AUXLOG_IP, MAILSTORE_IP, USERS, AuxLog, MailStore, count_messages, pid_alive
from tests.integration.harness import needs_root
from topologies.lan import LanTopo

# An IMAP client: argv HOST MARKER TXN STEP..., one line out per tagged
# reply ("A2 OK ..."); a step "wait:PATH" waits for that file first.
# Exits 3 when a reply does not come within $TIMEOUT s (default 2: a
# fenced backend), its socket reset (no FIN left to send: the port is free
# at once).  $LPORT: its local port.
IMAP_CLIENT = r"""
import os, socket, struct, sys, time
host, marker, txn, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if os.environ.get("LPORT"):
    s.bind(("", int(os.environ["LPORT"])))
s.settimeout(5)
s.connect((host, 143))
f = s.makefile("rb")
print("greeting", f.readline().decode().strip(), flush=True)
MSG = b"From: a@example.org\r\nSubject: tapped\r\n\r\nonce\r\n"
cmds = {"id": f'ID ("name" "t" "{marker}" "{txn}")', "select": "SELECT INBOX", "logout": "LOGOUT"}
n = 0
for st in steps:
    if st.startswith("wait:"):
        while not os.path.exists(st[5:]):
            time.sleep(0.01)
        continue
    n += 1
    tag = f"A{n}"
    if st == "append":
        s.sendall(f"{tag} APPEND INBOX {{{len(MSG)}+}}\r\n".encode() + MSG + b"\r\n")
    elif st == "login":
        s.sendall(f"{tag} LOGIN alice {os.environ['PW']}\r\n".encode())
    else:
        s.sendall(f"{tag} {cmds[st]}\r\n".encode())
    s.settimeout(float(os.environ.get("TIMEOUT", "2")))
    try:
        while True:
            line = f.readline()
            if not line:
                print("eof", flush=True)
                sys.exit(4)
            if line.startswith(tag.encode() + b" "):
                print(line.decode().strip(), flush=True)
                break
    except socket.timeout:
        print("no reply", st, flush=True)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        sys.exit(3)
"""

TXN = "10.0.1.1:41000#7"


@needs_root
class TestAuxlogTap(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rs-test-tap-")
        os.chmod(self.dir, 0o755)
        self.addCleanup(self.remove_dir)       # also when setUp fails
        self.tb = Testbed(LanTopo(), os.path.join(self.dir, "run")).__enter__()
        self.addCleanup(self.tb.__exit__, None, None, None)
        self.ms = MailStore(self.tb, self.tb.run_dir).start()
        self.addCleanup(self.stop_mailstore)
        self.aux = AuxLog(self.tb, self.tb.run_dir, tap=True).start()
        self.addCleanup(lambda: self.aux.stop())
        for h in ("primary", "alternate"):
            self.aux.route(h)
        self.script = os.path.join(self.dir, "imapc.py")
        with open(self.script, "w") as f:
            f.write(IMAP_CLIENT)
        self.n = 0

    def stop_mailstore(self):
        """Stops the mail store, and ends whatever of it outlived its
        master (dovecot's children, once seen beside two busy loops)."""
        pids = self.ms.pids()
        self.ms.stop()
        if wait_until(lambda: not any(pid_alive(p) for p in pids), 5):
            return
        for p in pids:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)

    def remove_dir(self):
        if os.environ.get("RS_KEEP"):
            shutil.copytree(self.dir, os.path.join(os.environ["RS_KEEP"], self.id()), dirs_exist_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def imap(self, host, to, marker, steps, wait=True, timeout=2, txn=TXN, port=None):
        self.n += 1
        env = dict(os.environ, PW=USERS["alice"], TIMEOUT=str(timeout), **({"LPORT": str(port)} if port else {}))
        d = self.tb.start(host, f"imap-{host}-{self.n}", [sys.executable, self.script, to, marker, txn] + steps,
                          env=env)
        if wait:
            d.popen.wait(20)
        return d

    def log(self):
        with open(self.aux.d.err) as f:
            return f.read()

    def inbox(self):
        return count_messages(self.tb.run_dir, "alice", "INBOX")

    def test_tapped_conversation_recorded_and_replayed(self):
        """The primary's APPEND reaches the store through the kernel and
        is recorded; the alternate's re-run through the relay gets the
        same replies and stores nothing."""
        before = self.inbox()
        first = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "append", "logout"])
        self.assertEqual(first.popen.returncode, 0, first.output())
        self.assertEqual(self.inbox(), before + 1)
        self.assertTrue(wait_until(lambda: "end imap backend=10.0.0.11" in self.log(), 5), self.log())
        self.assertRegex(self.log(), rf"live imap backend=10\.0\.0\.11:\d+ txn={re.escape(TXN)} ordinal=0")
        rerun = self.imap("alternate", AUXLOG_IP, "x-resplice-rerun", ["id", "login", "select", "append", "logout"])
        self.assertEqual(rerun.popen.returncode, 0, rerun.output())
        self.assertRegex(self.log(), rf"replay imap backend=10\.0\.0\.12:\d+ txn={re.escape(TXN)} ordinal=0 "
                         r"from=10\.0\.0\.11")
        # The same replies, the APPEND's UID included.
        self.assertEqual(first.output().splitlines()[1:], rerun.output().splitlines()[1:])
        self.assertEqual(self.inbox(), before + 1)

    def test_rerun_fences_a_hung_backends_open_conversation(self):
        """The primary logs in and hangs before its APPEND; the alternate
        re-runs the transaction through the relay (the APPEND stored once,
        by it); the primary resumes and sends its APPEND: dropped on the
        way, it never reaches the store."""
        go = os.path.join(self.dir, "resume")
        before = self.inbox()
        hung = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", f"wait:{go}", "append"],
                         wait=False)
        self.assertTrue(wait_until(lambda: "A3 OK" in hung.output(), 10), hung.output())
        self.assertTrue(wait_until(lambda: "live imap backend=10.0.0.11" in self.log(), 5), self.log())
        rerun = self.imap("alternate", AUXLOG_IP, "x-resplice-rerun", ["id", "login", "select", "append", "logout"])
        self.assertEqual(rerun.popen.returncode, 0, rerun.output())
        self.assertRegex(self.log(), r"fence imap backend=10\.0\.0\.11:\d+ txn=")
        self.assertEqual(self.inbox(), before + 1)
        open(go, "w").close()
        hung.popen.wait(10)
        self.assertEqual(hung.popen.returncode, 3, hung.output())     # its APPEND got no reply
        time.sleep(0.5)
        self.assertEqual(self.inbox(), before + 1)

    def test_rerun_fences_a_conversation_opened_after(self):
        """The alternate re-runs the transaction first; the primary, resumed
        later, opens a conversation for it: fenced at its marker, its
        APPEND never reaches the store."""
        before = self.inbox()
        rerun = self.imap("alternate", AUXLOG_IP, "x-resplice-rerun", ["id", "login", "select", "append", "logout"])
        self.assertEqual(rerun.popen.returncode, 0, rerun.output())
        self.assertEqual(self.inbox(), before + 1)
        late = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "append", "logout"])
        self.assertNotEqual(late.popen.returncode, 0, late.output())
        self.assertRegex(self.log(), r"superseded \(fenced\)")
        time.sleep(0.5)
        self.assertEqual(self.inbox(), before + 1)

    def test_fenced_port_used_again(self):
        """A fenced conversation's 4-tuple comes back for another
        transaction (the backend's kernel gave its port out again): its
        SYN clears the fence, and the new conversation reaches the store,
        recorded.  (The store may still hold the fenced connection, whose
        end was dropped too: its challenge ACK and the backend's RST clear
        it, and the SYN is sent again.)"""
        port = 41777
        before = self.inbox()
        rerun = self.imap("alternate", AUXLOG_IP, "x-resplice-rerun", ["id", "login", "select", "append", "logout"])
        self.assertEqual(rerun.popen.returncode, 0, rerun.output())
        late = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "append", "logout"],
                         port=port)
        self.assertEqual(late.popen.returncode, 3, late.output())
        self.assertRegex(self.log(), rf"end imap backend=10\.0\.0\.11:{port} .*superseded \(fenced\)")
        self.assertEqual(self.inbox(), before + 1)
        again = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "append", "logout"],
                          txn="10.0.1.1:41002#3", port=port, timeout=5)
        self.assertEqual(again.popen.returncode, 0, again.output())
        self.assertEqual(self.inbox(), before + 2)
        self.assertTrue(wait_until(lambda: f"end imap backend=10.0.0.11:{port} txn=10.0.1.1:41002#3" in self.log(), 5),
                        self.log())

    def test_marker_waits_for_its_judgment(self):
        """rs-auxlog hangs (SIGSTOP) when the primary, resumed after the
        alternate re-ran its transaction, opens a conversation for it: its
        marker waits in the netfilter queue, and once rs-auxlog runs again
        it is dropped there; nothing of the conversation reaches the store.
        (Without the queue, everything passed while rs-auxlog was stopped,
        the APPEND too.)"""
        before = self.inbox()
        rerun = self.imap("alternate", AUXLOG_IP, "x-resplice-rerun", ["id", "login", "select", "append", "logout"])
        self.assertEqual(rerun.popen.returncode, 0, rerun.output())
        self.aux.d.popen.send_signal(signal.SIGSTOP)
        try:
            late = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "append", "logout"],
                             wait=False, timeout=3)
            time.sleep(1)
            self.assertEqual(late.output().splitlines()[1:], [], "a reply came while rs-auxlog was stopped")
        finally:
            self.aux.d.popen.send_signal(signal.SIGCONT)
        late.popen.wait(10)
        self.assertEqual(late.popen.returncode, 3, late.output())       # the ID never answered
        self.assertRegex(self.log(), r"superseded \(fenced\)")
        time.sleep(0.5)
        self.assertEqual(self.inbox(), before + 1)

    def stopped_first_run(self):
        """A first run's conversation opened while rs-auxlog is stopped:
        whether a reply came before it ran again, and the client."""
        self.aux.d.popen.send_signal(signal.SIGSTOP)
        try:
            d = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "logout"], wait=False,
                          timeout=5)
            time.sleep(0.7)
            replied = d.output().splitlines()[1:] != []
        finally:
            self.aux.d.popen.send_signal(signal.SIGCONT)
        d.popen.wait(10)
        self.assertEqual(d.popen.returncode, 0, d.output())
        self.assertTrue(wait_until(lambda: "end imap backend=10.0.0.11" in self.log(), 5), self.log())
        self.assertRegex(self.log(), rf"live imap backend=10\.0\.0\.11:\d+ txn={re.escape(TXN)}")
        return replied

    def test_first_run_passes_a_hung_rs_auxlog_while_nothing_is_rerun(self):
        """No re-run remembered: nothing is judged, a first run's
        conversation goes on while rs-auxlog is stopped, and is recorded
        once it runs again."""
        self.assertTrue(self.stopped_first_run(), "a first run waited for rs-auxlog with nothing re-run")
        self.assertNotIn("judging every conversation", self.log())

    def test_first_run_waits_for_a_hung_rs_auxlog_while_judging(self):
        """After a re-run (of another transaction), every marker is judged:
        a first run's conversation opened while rs-auxlog is stopped waits
        at its marker, then goes on, recorded."""
        other = self.imap("alternate", AUXLOG_IP, "x-resplice-rerun", ["id", "login", "logout"], txn="10.0.1.1:41001#1")
        self.assertEqual(other.popen.returncode, 0, other.output())
        self.assertIn("judging every conversation", self.log())
        self.assertFalse(self.stopped_first_run(), "the marker passed while rs-auxlog was stopped")

    def test_mail_goes_on_without_rs_auxlog(self):
        """SIGKILL of rs-auxlog: the primary's mail still flows (the kernel
        forwards it, unrecorded: the queue lets what nobody judges pass); a
        new rs-auxlog replaces the filter and the iptables rule the dead
        one left, and records again."""
        self.tb.kill(self.aux.d)
        before = self.inbox()
        d = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "append", "logout"])
        self.assertEqual(d.popen.returncode, 0, d.output())
        self.assertEqual(self.inbox(), before + 1)
        self.aux = AuxLog(self.tb, self.tb.run_dir, tap=True).start()
        self.assertIn("replaced a previous rs-auxlog's filter", self.log())
        d = self.imap("primary", MAILSTORE_IP, "x-resplice-txn", ["id", "login", "select", "logout"])
        self.assertEqual(d.popen.returncode, 0, d.output())
        self.assertTrue(wait_until(lambda: "end imap backend=10.0.0.11" in self.log(), 5), self.log())
        filters = self.tb["auxlog"].cmd("tc filter show dev auxlog-eth0 ingress")
        self.assertEqual(len(re.findall(r"handle 0x1 rs_capture_ingr", filters)), 1, filters)
        rules = self.tb["auxlog"].cmd("iptables -w -t mangle -S")
        self.assertEqual(rules.count("-A FORWARD -j rs_auxlog"), 1, rules)
        self.assertEqual(rules.count("-j NFQUEUE"), 1, rules)

