"""Issue 6's failover tests on the paper's workload: Roundcube on the primary
and the alternate behind resplice (fronts, rs-stated, rs-logger, rs-proxy)
and rs-auxlog before the mail store.  The primary's front SIGKILLs itself
at a chosen point (rs-app --crash-at N+B: before byte B of transaction N's
response), the rest of the primary is killed at once, and the recorded
action must complete on the same connection: no client error, no re-login
(the trace's markers: the mailbox page names the user), the message
delivered exactly once (bob's INBOX and alice's Sent), every byte the
client got from the primary followed by the alternate's identical bytes.

Crash points: every request of Action 2, before its first response byte
(the request ran, its side effects happened, nothing reached the client)
and in the middle of its response; and the middle of Action 1's largest
static file.  One testbed for the class; a fresh resplice stack and fresh
databases for every trial."""
import csv
import os
import re
import threading
import unittest
from unittest import mock

from emul.shaping import wait_until
from emul.places import binary
from roundcube.deploy import AuxLog, ResplicedRoundcube, count_messages
from tests.integration.mail_case import MailTestbedCase
from topologies.lan import SPARE_HOST

HERE = os.path.dirname(os.path.abspath(__file__))
TRACES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "roundcube", "traces")
ACTION2_STEPS = 17
SEND_STEP = 12          # Action 2's send POST (the SMTP conversation and the APPEND to Sent)


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


class RoundcubeFailover(MailTestbedCase):
    prefix = "rs-rcfo-"

    @classmethod
    def start_class(cls):
        cls.aux = AuxLog(cls.tb, cls.dir).start()
        cls.sizes = None
        cls.n = 0
        return [cls.aux.d.pid]

    # -- helpers -------------------------------------------------------------
    def counts(self):
        return count_messages(self.dir, "bob", "INBOX"), count_messages(self.dir, "alice", "Sent")

    def trial(self, trace, crash_at=None):
        """Runs 'trace' once through a fresh stack, crashing the primary at
        'crash_at'.  Returns (rows, stack, client exit status, client log)."""
        type(self).n += 1
        rr = ResplicedRoundcube(self.tb, self.dir, crash_at=crash_at, mailstore=self.ms, aux=self.aux,
                                dump=True).start()
        self.addCleanup(rr.stop)
        crashed = {}
        if crash_at:
            w = threading.Thread(target=lambda: crashed.update(t=rr.crash(60)), daemon=True)
            w.start()
        out = os.path.join(self.dir, f"t{self.n}.csv")
        d = self.tb.start("c1", f"client-{self.n}", [binary("rs-client"), "--server", rr.vip, "--trace",
                                                    os.path.join(TRACES, trace), "--csv", out, "--timeout", "10s"])
        d.popen.wait(90)
        if crash_at:
            w.join(60)
            self.assertIsNotNone(crashed.get("t"), "the primary never reached its crash point\n"
                                 + rr.stack.log("app-primary")[-2000:])
        rows = list(csv.DictReader(open(out))) if os.path.exists(out) else []
        return rows, rr, d.popen.returncode, read(d.err)

    def diagnose(self, rr, log):
        parts = [log[-3000:]]
        for name in ("proxy", "logger", "app-primary", "app-alternate", "stated-alternate"):
            parts.append(f"--- {name}\n" + rr.stack.log(name)[-2500:])
        parts.append("--- auxlog\n" + read(self.aux.d.err)[-1500:])
        return "\n".join(parts)

    def baseline(self):
        """Body sizes of every request of both actions, from a crash-free run
        (cached for the class)."""
        if type(self).sizes is None:
            sizes = {}
            for trace in ("action1.trace", "action2.trace"):
                rows, rr, rc, log = self.trial(trace)
                self.assertEqual(rc, 0, self.diagnose(rr, log))
                sizes[trace] = [int(r["bytes"]) for r in rows]
                rr.stop()
            type(self).sizes = sizes
        return type(self).sizes

    def check_crash(self, trace, step, offset):
        before = self.counts()
        rows, rr, rc, log = self.trial(trace, f"{step}+{offset}")
        why = self.diagnose(rr, log)
        self.assertEqual(rc, 0, why)
        self.assertEqual([r["result"] for r in rows], ["ok"] * len(rows), why)
        self.assertEqual(len({r["local_port"] for r in rows}), 1, "the client had to reconnect\n" + why)
        client = f"{rows[0]['txn'].split('#')[0]}" if rows[0].get("txn") else None
        plog = rr.stack.log("proxy")
        self.assertRegex(plog, r"recovered id=\d+ ", why)
        self.assertNotRegex(plog, r"recover.* failed|closing", why)
        # The logger compares every response byte the alternate sends again
        # with the copy it logged from the primary: no difference.
        self.assertNotIn("reason=conflict", rr.stack.log("logger"), why)
        if trace == "action2.trace" and step == SEND_STEP and offset == 0:
            # Re-run on the alternate: its mail conversations came from the record.
            aux = read(self.aux.d.err)
            for proto in ("smtp", "imap"):
                self.assertRegex(aux, rf"replay {proto} backend=\S+ txn=\S+:{rows[0]['local_port']}#{step} ", why)
        if trace == "action2.trace":
            self.assertTrue(wait_until(lambda: self.counts() != before, 5), why)
            self.assertEqual(self.counts(), (before[0] + 1, before[1] + 1),
                             "the message must be delivered exactly once\n" + why)
        # Every byte the primary held beyond the crash point reached the
        # client unchanged: the alternate regenerated (or replayed from the
        # record) the same response.
        crash = [f for f in os.listdir(rr.rc["primary"].state_dir) if f.startswith("crash-")]
        self.assertEqual(len(crash), 1, crash)
        held = read(os.path.join(rr.rc["primary"].state_dir, crash[0]), "rb")
        port = rows[0]["local_port"]
        streams = [f for f in os.listdir(os.path.join(self.dir, "streams")) if f.endswith(f"_{port}.resp")]
        self.assertEqual(len(streams), 1, streams)
        stream = read(os.path.join(self.dir, "streams", streams[0]), "rb")
        if offset > 0 and held:
            self.assertIn(held, stream, "the client's bytes differ from what the primary was sending\n" + why)
        rr.stop()
        return rows, rr, client

    # -- tests ---------------------------------------------------------------
    def test_0_no_crash(self):
        before = self.counts()
        sizes = self.baseline()
        self.assertEqual(len(sizes["action1.trace"]), 14)
        self.assertEqual(len(sizes["action2.trace"]), ACTION2_STEPS)
        self.assertEqual(self.counts(), (before[0] + 1, before[1] + 1))

    def test_action2_14_first_byte_by_snapshots(self):
        """The whole database as every request's state (the plugin's
        'snapshot', its way when it cannot read the changes), and php-cgi
        children whose connections stay open from request to request
        (Roundcube's db_persistent): the alternate's front copies each
        snapshot into its database in place, so that those connections
        read the session after the failover (a rename left them on the
        old file: the client got the login form)."""
        with mock.patch.dict(os.environ, {"RS_ROUNDCUBE_STATE": "snapshot", "RS_ROUNDCUBE_PERSISTENT": "1"}):
            self.check_crash("action2.trace", 14, 0)

    def test_action2_14_first_byte_changes_on_persistent_connections(self):
        """The change sets with php-cgi children whose connections stay
        open from request to request: the temporary triggers and their
        notes outlive a request on such a connection, and each request's
        change set must still hold its own rows only, every one of them
        (the list request re-run on the alternate needs the session the
        requests before it wrote)."""
        with mock.patch.dict(os.environ, {"RS_ROUNDCUBE_PERSISTENT": "1"}):
            _, rr, _ = self.check_crash("action2.trace", 14, 0)
        applied = re.findall(r"state-apply \S+ (changes|file) ", read(os.path.join(rr.dir, "app-alternate.err")))
        self.assertGreaterEqual(len(applied), 9, "the states of the 9 PHP requests before the crash")
        self.assertEqual(set(applied), {"changes"}, "a whole snapshot: the notes could not be read")
        errors = os.path.join(rr.rc["primary"].dir, "logs", "errors.log")
        self.assertNotIn("resplice:", read(errors) if os.path.exists(errors) else "")

    def test_action1_mid_largest_static(self):
        sizes = self.baseline()["action1.trace"]
        step = max(range(1, len(sizes)), key=lambda i: sizes[i])
        self.check_crash("action1.trace", step, sizes[step] // 2)


def _crash_test(step, mid):
    def test(self):
        offset = max(self.baseline()["action2.trace"][step] // 2, 40) if mid else 0
        self.check_crash("action2.trace", step, offset)
    test.__doc__ = f"Action 2, request {step}: crash {'mid-response' if mid else 'before the first byte'}"
    return test


for _step in range(ACTION2_STEPS):
    setattr(RoundcubeFailover, f"test_action2_{_step:02d}_first_byte", _crash_test(_step, False))
    setattr(RoundcubeFailover, f"test_action2_{_step:02d}_mid", _crash_test(_step, True))


class RoundcubeReprotection(MailTestbedCase):
    """Re-protection on the paper's workload (issue 15): Roundcube on three
    backends.  The primary's front dies in Action 2's request 4 (before its
    first byte), the alternate's as the send runs on it (request 12, before
    its first byte: the message went out); the spare finishes the action on
    the same connection, its re-run of the send answered from rs-auxlog's
    record: the message is delivered once."""
    prefix = "rs-rcre-"
    topo_args = {"spare": True}

    @classmethod
    def start_class(cls):
        cls.aux = AuxLog(cls.tb, cls.dir).start()
        return [cls.aux.d.pid]

    def test_primary_then_alternate_crash(self):
        counts = lambda: (count_messages(self.dir, "bob", "INBOX"), count_messages(self.dir, "alice", "Sent"))  # noqa: E731
        before = counts()
        rr = ResplicedRoundcube(self.tb, self.dir, crash_at="4+0", alternate_crash_at=f"{SEND_STEP}+0",
                                mailstore=self.ms, aux=self.aux).start()
        self.addCleanup(rr.stop)
        crashed = {}
        watchers = [threading.Thread(target=lambda: crashed.update(primary=rr.crash(60)), daemon=True),
                    threading.Thread(target=lambda: crashed.update(alternate=rr.crash_alternate(60)), daemon=True)]
        for w in watchers:
            w.start()
        out = os.path.join(self.dir, "reprotect.csv")
        d = self.tb.start("c1", "client-reprotect", [binary("rs-client"), "--server", rr.vip, "--trace",
                                                      os.path.join(TRACES, "action2.trace"), "--csv", out,
                                                      "--timeout", "10s"])
        d.popen.wait(90)
        for w in watchers:
            w.join(60)
        plog = rr.stack.log("proxy")
        why = read(d.err)[-3000:] + "\n--- proxy\n" + plog[-4000:] + "\n--- auxlog\n" + read(self.aux.d.err)[-1500:]
        self.assertIsNotNone(crashed.get("primary"), why)
        self.assertIsNotNone(crashed.get("alternate"), why)
        self.assertEqual(d.popen.returncode, 0, why)
        rows = list(csv.DictReader(open(out)))
        self.assertEqual([r["result"] for r in rows], ["ok"] * ACTION2_STEPS, why)
        self.assertEqual(len({r["local_port"] for r in rows}), 1, "the client had to reconnect\n" + why)
        self.assertEqual(len(re.findall(r"recovered id=\d+ ", plog)), 2, why)
        self.assertRegex(plog, rf"recovered id=\d+ client=\S+ alternate={SPARE_HOST['spare']}:", why)
        self.assertNotIn("reason=conflict", rr.stack.log("logger"), why)
        self.assertRegex(read(self.aux.d.err), rf"replay smtp backend=\S+ txn=\S+:{rows[0]['local_port']}#{SEND_STEP} ",
                         why)
        self.assertTrue(wait_until(lambda: counts() != before, 5), why)
        self.assertEqual(counts(), (before[0] + 1, before[1] + 1), "the message must be delivered exactly once\n" + why)


if __name__ == "__main__":
    unittest.main()
