"""The two workloads the studies run, each with its actions (rs-client
traces), its crash points and how to deploy it on the LAN testbed: the
backends a baseline technique puts behind its proxy or VIP, the whole
resplice stack, and the plain deployment the overhead study compares with.

  refapp     rs-app, the reference application (application mode): Action 1
             loads a page and its static files; Action 2 runs counter updates
             and a non-deterministic token on one connection.  Its state is
             in the process: nothing can share it between two backends.
  roundcube  Roundcube 1.6 (lighttpd + php-cgi) with dovecot and the SMTP
             server: the seed's Action 1 (login page and its static files)
             and Action 2 (log in, compose, send to bob, log out).
  mine       (only when WORKLOADS= names it) your own application, as
             the workload file $MINE describes it (experiments/mine.py;
             default: the guestbook, examples/guestbook/workload.ini).

Crash injection is the same for all: the primary's rs-app (the refapp
itself, or Roundcube's front, rs-front) SIGKILLs itself before byte
B of request N's response (--crash-at N+B); for Roundcube crash()
then kills lighttpd and php-cgi too, as a crash of the whole backend.

A crash point is (action, request, offset): request is a step number or
"largest" (the action's largest response), offset is bytes into the response
(its headers included) or "mid" (half the crash-free body)."""
import os
import sys

from emul.places import APP_PORT, binary
from emul.stack import Stack, StackRun
from emul.testbed import wait_death
from experiments import common, mine
from roundcube import deploy
from roundcube.deploy import (UPSTREAM_PORT, MAILSTORE_IP, AuxLog, MailStore, ResplicedRoundcube, Roundcube,
                              count_messages, init_db, remove_db, warm_up)

TRACES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traces")
FRONT_PORT = APP_PORT           # where every backend serves the client (rs-front, or rs-app itself)


class Workload:
    name = "?"
    actions = {}                # action -> trace file
    points = {}                 # crash point -> (action, request, offset)
    quick_points = ()           # QUICK=1's crash points
    headline = "?"              # the WAN study's crash point (common.HEADLINE)
    check_path = "/"            # a cheap URL for health checks
    shared_store = False        # backends can share a session store (technique browser-shared)
    fresh_actions = ()          # actions whose every run needs a fresh deployment
    trials = 5                  # the LAN study's default trials per crash point

    def __init__(self, tb, run_dir):
        self.tb, self.dir = tb, run_dir

    def client_args(self):
        """rs-client options every run of this workload takes."""
        return []

    def effects(self):
        """What the actions change outside the HTTP responses, before a
        trial (compared by effects_ok)."""
        return None

    def effects_ok(self, action, before):
        """(ok, duplicates) of 'action''s side effects since 'before'."""
        return True, 0


# ---- the reference application -------------------------------------------

class RefappBackends:
    """rs-app on 'hosts' at FRONT_PORT, the crash host's with --crash-at."""

    def __init__(self, tb, run_dir, hosts, shared_db=False, crash_host="primary"):
        self.tb, self.hosts, self.crash_host = tb, hosts, crash_host
        self.d = {}

    def start(self, crash_at):
        for h in self.hosts:
            argv = [binary("rs-app"), "--listen", f"0.0.0.0:{FRONT_PORT}", "--id", h]
            if crash_at and h == self.crash_host:
                argv += ["--crash-at", str(crash_at)]
            self.d[h] = self.tb.start(h, f"app-{h}", argv, ready="listening")

    def addr(self, host):
        return f"{self.tb[host].IP()}:{FRONT_PORT}"

    def crash(self, timeout=60):
        return wait_death(self.d[self.crash_host], timeout)

    def stop(self):
        for d in self.d.values():
            if d.alive():
                self.tb.stop(d)
        self.d.clear()


class RefappResplice(StackRun):
    """rs-app on both backends with rs-stated, rs-logger and rs-proxy
    (emul/stack.py); the primary's rs-app dies at 'crash_at'."""

    def __init__(self, tb, run_dir, crash_at):
        super().__init__(Stack(tb, run_dir, app_host_args=lambda h: ["--crash-at", str(crash_at)]
                               if crash_at and h == "primary" else []))


class RefappDirect:
    """rs-app alone on the primary (the overhead study's "direct")."""

    def __init__(self, tb, run_dir):
        self.b = RefappBackends(tb, run_dir, ["primary"])

    def start(self):
        self.b.start(None)
        self.addr = self.b.addr("primary")
        return self

    def stop(self):
        self.b.stop()


class Refapp(Workload):
    name = "refapp"
    actions = {"action1": os.path.join(TRACES, "refapp-action1.trace"),
               "action2": os.path.join(TRACES, "refapp-action2.trace")}
    points = {
        "static-mid": ("action1", "largest", "mid"),
        "token-mid": ("action2", 2, 100),       # 82 B of headers: inside the token
        "update": ("action2", 3, 0),            # the update ran, no response byte left
    }
    quick_points = ("static-mid", "update")
    headline = common.HEADLINE["refapp"]
    check_path = "/health"
    fresh_actions = ("action2",)    # the counter starts at 0
    trials = 3                  # keeps make experiment-lan within 20 minutes

    def backends(self, hosts, shared_db=False, crash_host="primary"):
        return RefappBackends(self.tb, self.dir, hosts, crash_host=crash_host)

    def resplice(self, crash_at):
        return RefappResplice(self.tb, self.dir, crash_at)

    def direct(self):
        return RefappDirect(self.tb, self.dir)


# ---- Roundcube -----------------------------------------------------------

LOGIN_FORM = 'id="login-form"'     # rs-client --login-marker: the session was lost


class RoundcubeBackends:
    """Roundcube behind a crash-injecting front (rs-front) on
    'hosts'; 'shared_db': one session database for all of them."""

    def __init__(self, tb, run_dir, hosts, shared_db=False, crash_host="primary"):
        self.tb, self.dir, self.hosts, self.crash_host = tb, run_dir, hosts, crash_host
        extra = {}
        self.shared = os.path.join(os.path.abspath(run_dir), "shared-roundcube.db") if shared_db else None
        if self.shared:
            extra["db_dsnw"] = f"sqlite:///{self.shared}?mode=0640"
        self.rc = {h: Roundcube(tb, run_dir, h, mailstore_ip=MAILSTORE_IP, port=UPSTREAM_PORT, bind="127.0.0.1",
                                extra_config=extra) for h in hosts}
        self.front = {}

    def start(self, crash_at):
        if self.shared:
            remove_db(self.shared)
            init_db(self.shared)
        for h, rc in self.rc.items():
            remove_db(rc.db)
            rc.start()
            argv = [binary("rs-front"), "--listen", f"0.0.0.0:{FRONT_PORT}", "--id", h,
                    "--upstream", f"127.0.0.1:{UPSTREAM_PORT}", "--state-dir", rc.state_dir]
            if crash_at and h == self.crash_host:
                argv += ["--crash-at", str(crash_at)]
            self.front[h] = self.tb.start(h, f"front-{h}", argv, ready="listening")
        # Warm PHP's opcache on every backend (as ResplicedRoundcube does).
        warm_up(self.tb, self.dir, self.rc, one_by_one=self.shared is not None)

    def addr(self, host):
        return f"{self.tb[host].IP()}:{FRONT_PORT}"

    def crash(self, timeout=60):
        t = wait_death(self.front[self.crash_host], timeout)
        if t is not None:
            self.rc[self.crash_host].crash()
        return t

    def stop(self):
        for d in self.front.values():
            if d.alive():
                self.tb.stop(d)
        self.front.clear()
        for rc in self.rc.values():
            rc.stop()
            rc.d.clear()


class RoundcubeDirect:
    """Roundcube on the primary, nothing in front of it."""

    def __init__(self, tb, run_dir, mailstore):
        self.rc = Roundcube(tb, run_dir, "primary", mailstore_ip=mailstore.ip)

    def start(self):
        # A fresh database, as every other deployment starts with: one
        # that kept every earlier round's sessions made direct's requests
        # ~5% slower (session 40).
        remove_db(self.rc.db)
        self.rc.start()
        self.addr = self.rc.addr
        return self

    def stop(self):
        self.rc.stop()
        self.rc.d.clear()


class RoundcubeWorkload(Workload):
    """Starts the mail store and rs-auxlog on the testbed (they stay for
    every trial)."""
    name = "roundcube"
    actions = {"action1": os.path.join(deploy.ROOT, "roundcube", "traces", "action1.trace"),
               "action2": os.path.join(deploy.ROOT, "roundcube", "traces", "action2.trace")}
    points = {
        "static-mid": ("action1", "largest", "mid"),
        "login-mid": ("action2", 1, 40),        # a new session: non-deterministic
        "mailbox-mid": ("action2", 2, "mid"),
        "send": ("action2", 12, 0),             # the mail was sent, no response byte left
        "compose-mid": ("action2", 8, "mid"),
    }
    quick_points = ("mailbox-mid", "send")
    headline = common.HEADLINE["roundcube"]
    # HAProxy's and keepalived's check: a static file through the front (no
    # PHP session is made per check).
    check_path = "/skins/elastic/images/favicon.ico"
    shared_store = True

    def __init__(self, tb, run_dir):
        super().__init__(tb, run_dir)
        self.ms = MailStore(tb, run_dir).start()
        self.aux = AuxLog(tb, run_dir).start()

    def client_args(self):
        return ["--login-marker", LOGIN_FORM]

    def backends(self, hosts, shared_db=False, crash_host="primary"):
        return RoundcubeBackends(self.tb, self.dir, hosts, shared_db=shared_db, crash_host=crash_host)

    def resplice(self, crash_at, state=True):
        return ResplicedRoundcube(self.tb, self.dir, crash_at=crash_at, mailstore=self.ms, aux=self.aux, state=state)

    def direct(self):
        return RoundcubeDirect(self.tb, self.dir, self.ms)

    def effects(self):
        return count_messages(self.dir, "bob", "INBOX"), count_messages(self.dir, "alice", "Sent")

    def effects_ok(self, action, before):
        """Action 2 sends one message: bob's INBOX and alice's Sent grow by
        exactly one each."""
        if action != "action2":
            return True, 0
        got = self.effects()
        dup = max(0, (got[0] - before[0]) - 1) + max(0, (got[1] - before[1]) - 1)
        return got == (before[0] + 1, before[1] + 1), dup


WORKLOADS = {w.name: w for w in (Refapp, RoundcubeWorkload)}
# WORKLOADS=mine: your own application, as the workload file $MINE says
# (experiments/mine.py; default the guestbook example).
if "mine" in os.environ.get("WORKLOADS", "").split(","):
    try:
        WORKLOADS["mine"] = mine.load(os.environ.get("MINE") or mine.EXAMPLE, FRONT_PORT, Workload)
    except mine.BadWorkload as e:
        sys.exit(f"WORKLOADS=mine: {e}")
