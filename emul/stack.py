"""Starts resplice's components on a running Testbed, with the addresses of
topologies/lan.py and the ports of docs/recovery.md:

    with Testbed(LanTopo(), run_dir) as tb:
        stack = Stack(tb, run_dir).start()
        ... rs-client against stack.vip ...
        stack.kill_primary()

'recovery=False' gives the splice alone (issue 4's setup: no logger, no
state transfer).  'front' serves another application through rs-front
instead of rs-app on each backend: a dict with "upstream" (host name ->
argv of the application, started first, ready when it prints "listening"),
"port" (where it listens on the backend's loopback) and optionally "args"
(host name -> extra rs-front options, e.g. --state-dir and --apply-cmd).
Instead of "upstream", "start" (host name -> None) starts an application
made of several processes itself (roundcube/deploy.py's Roundcube).
'app_args' go to every backend's rs-app (or rs-front), 'app_host_args'
(host name -> extra options) to one backend's, e.g. the primary's
--crash-at.  Either way the daemon serving APP_PORT is named "app-HOST".

On a LanTopo(pair=True) the stack has a proxy pair: "proxy" active on
host proxy, "proxy2" standing by on host proxy2 (proxy/pair.c).  On a
LanTopo(spare=True) a third backend, "spare", stands by to become the
alternate after a failover: the rs-stateds form a chain (primary ->
alternate -> spare, --peer with ids) and the proxy and the logger know
it (--spare, --spare-stated).  With 'readmit' (always with a spare) the
logger also knows the primary's rs-stated (--spare-stated), so that the
primary can be readmitted after a failover as a standby."""
import os
import re
import signal

from emul.places import (ALTERNATE_ID, APP_PORT, LOGGER_CTL, LOGGER_RESEND, PAIR_PORT, PRIMARY_ID, PROXY_CTL,
                         SPARE_ID, STATED_PORT, VIP_PORT, binary, proxy_datapath, proxy_identity, proxy_splice_at, splice_at,
                         write_key)
from emul.testbed import wait_death
from topologies.lan import PAIR_HOSTS, SERVERS, SPARE_HOST


BACKEND_IDS = {"primary": PRIMARY_ID, "alternate": ALTERNATE_ID, "spare": SPARE_ID}


class Stack:
    def __init__(self, tb, run_dir, recovery=True, app_args=(), logger_args=(), proxy_args=(),
                 heartbeat="10ms", dead_after="100ms", front=None, app_host_args=None, readmit=False):
        self.tb, self.dir, self.recovery = tb, run_dir, recovery
        self.app_args, self.logger_args, self.proxy_args = list(app_args), list(logger_args), list(proxy_args)
        self.heartbeat, self.dead_after = heartbeat, dead_after
        self.front = front
        self.pair = getattr(tb.topo, "pair", False)
        self.spare = getattr(tb.topo, "spare", False)
        self.backends = ("primary", "alternate") + (("spare",) if self.spare else ())
        self.readmit = readmit or self.spare
        self.app_host_args = app_host_args or (lambda host: [])
        self.key = os.path.join(run_dir, "key.hex")
        self.vip = f"{SERVERS['proxy']}:{VIP_PORT}"
        self.d = {}

    def _key(self):
        # A fresh key each start: one left by an earlier run may predate the
        # 0600 rule (the daemons refuse a key file others can read).
        write_key(self.key)

    def start(self):
        """Starts the rs-stateds, the chain's end first (each connects to
        its successor at once), then the logger and the applications side
        by side, then the proxy (which talks to all of them)."""
        self._key()
        first = []
        if self.recovery:
            for host in reversed(self.backends):
                self.start_stated(host)
            first.append(self.start_logger(wait=False))
        self.tb.wait_ready(*first, *[self.start_app(host, wait=False) for host in self.backends])
        if self.pair:       # the standby first: the active connects to it at once
            self.start_proxy("proxy2", fresh=True, host="proxy2", standby=True)
        self.start_proxy(fresh=True)   # a new deployment: nothing of an earlier stack
        if self.pair:
            self.wait_standby()
        return self

    def start_stated(self, host, name=None, wait=True):
        """Starts rs-stated on backend 'host' (again, after a crash: its log
        then goes to run/'name'.err).  'wait' as for Testbed.start."""
        s = SERVERS
        sock = os.path.join(self.dir, f"stated-{host}.sock")
        self.d[f"stated-{host}"] = self.tb.start(host, name or f"stated-{host}", [
            binary("rs-stated"), "--id", str(BACKEND_IDS[host]), "--listen", f"0.0.0.0:{STATED_PORT}",
            "--app-socket", sock, "--key", self.key] + self._peers(host) + [
            "--logger", f"{s['logger']}:{LOGGER_CTL}", "--heartbeat", self.heartbeat], ready="listening", wait=wait)
        return self.d[f"stated-{host}"]

    def start_app(self, host, name=None, wait=True):
        """Starts the application on backend 'host' (again: see start_stated)."""
        argv = [binary("rs-front" if self.front else "rs-app"), "--listen", f"0.0.0.0:{APP_PORT}",
                "--id", host] + self.app_args
        argv += list(self.app_host_args(host))
        if self.front and "start" in self.front:
            self.front["start"](host)
        elif self.front:
            self.d[f"upstream-{host}"] = self.tb.start(host, f"upstream-{host}", self.front["upstream"](host),
                                                       ready="listening")
        if self.front:
            argv += ["--upstream", f"127.0.0.1:{self.front['port']}"]
            argv += list(self.front.get("args", lambda h: [])(host))
        if self.recovery:
            argv += ["--stated", os.path.join(self.dir, f"stated-{host}.sock")]
        self.d[f"app-{host}"] = self.tb.start(host, name or f"app-{host}", argv, ready="listening", wait=wait)
        return self.d[f"app-{host}"]

    def restart_backend(self, host, generation=2):
        """A failed backend's restart: SIGKILLs what is left of its rs-stated
        and application, starts both afresh (logs run/stated-'host'-N.err,
        app-'host'-N.err).  Readmit it at the proxy afterwards."""
        for key in (f"app-{host}", f"stated-{host}"):
            if self.d[key].alive():
                self.tb.kill(self.d[key])
        self.start_stated(host, f"stated-{host}-{generation}")
        return self.start_app(host, f"app-{host}-{generation}")

    def wait_standby(self, host="proxy2", timeout=5):
        """Waits until the pair's standby on 'host' holds the active's table."""
        from emul.shaping import wait_until
        if not wait_until(lambda: "pair: standby of" in self.log(host), timeout):
            raise RuntimeError(f"the standby on {host} never heard of the active proxy")

    def _peers(self, host):
        """rs-stated's --peer options on backend 'host': the other one (as
        before re-protection), or with a spare the chain, with ids."""
        if not self.spare:
            other = "alternate" if host == "primary" else "primary"
            return ["--peer", f"{SERVERS[other]}:{STATED_PORT}"]
        return [a for h in self.backends if h != host
                for a in ("--peer", f"{BACKEND_IDS[h]}={self.addr(h)}:{STATED_PORT}")]

    @staticmethod
    def addr(host):
        return SERVERS.get(host) or SPARE_HOST[host]

    def start_proxy(self, name="proxy", fresh=False, host="proxy", standby=False):
        """Starts rs-proxy on 'host' (again, after a crash or a stop: as
        start_logger; it adopts the spliced connections its predecessor
        left, unless 'fresh').  In a pair, 'standby' starts the standby;
        the daemon is self.d[host] either way."""
        s = SERVERS
        argv = [binary("rs-proxy"), "--listen", self.vip, "--control", f"{s['proxy']}:{PROXY_CTL}",
                "--key", self.key, "--backend", f"{PRIMARY_ID}={s['primary']}:{APP_PORT}"]
        if self.recovery:
            argv += ["--alternate", f"{ALTERNATE_ID}={s['alternate']}:{APP_PORT}",
                     "--logger", f"{s['logger']}:{LOGGER_CTL}",
                     "--logger-resend", f"{s['logger']}:{LOGGER_RESEND}", "--stated-port", str(STATED_PORT)]
            if self.spare:
                argv += ["--spare", f"{SPARE_ID}={self.addr('spare')}:{APP_PORT}"]
        if fresh:
            argv.append("--fresh")
        if self.pair:
            other = "proxy2" if host == "proxy" else "proxy"
            argv += ["--ifname", f"{host}-eth0", "--pair", f"{PAIR_HOSTS[other]}:{PAIR_PORT}",
                     "--pair-listen", f"{PAIR_HOSTS[host]}:{PAIR_PORT}"] + (["--standby"] if standby else [])
        self.d[host] = self.tb.start(host, name,
                                     argv + proxy_datapath() + proxy_identity() + proxy_splice_at() + self.proxy_args,
                                     ready="listening")
        return self.d[host]

    def splice_at(self):
        """Where rs-proxy splices new connections: "syn" or "request"."""
        return splice_at(proxy_datapath() + proxy_splice_at() + self.proxy_args)

    def splices(self, name="proxy"):
        """How many connections rs-proxy 'name' spliced, at the request or
        at the SYN (its log's "splice id=", "syn-spliced id=")."""
        return len(re.findall(r"\b(?:splice|syn-spliced) id=", self.log(name)))

    def first_id(self):
        """rs-proxy's id of the first connection it splices (its log's
        id=): the tc program's when it splices at the SYN (RS_SYN_ID_BASE)."""
        return 1 << 62 if self.splice_at() == "syn" else 1

    def start_logger(self, name="logger", wait=True):
        """Starts rs-logger (again, after a crash: its log then goes to
        run/'name'.err, and log("logger") reads the new one)."""
        s = SERVERS
        self.d["logger"] = self.tb.start("logger", name, [
            binary("rs-logger"), "--iface", "logger-eth0", "--vip", self.vip,
            "--listen", f"0.0.0.0:{LOGGER_CTL}", "--resend", f"0.0.0.0:{LOGGER_RESEND}", "--key", self.key,
            "--proxy", f"{s['proxy']}:{PROXY_CTL}", "--alternate-stated", f"{s['alternate']}:{STATED_PORT}",
            "--backend", f"{PRIMARY_ID}={s['primary']}", "--backend", f"{ALTERNATE_ID}={s['alternate']}",
            "--dead-after", self.dead_after] + ([
                "--backend", f"{SPARE_ID}={self.addr('spare')}",
                "--spare-stated", f"{self.addr('spare')}:{STATED_PORT}"] if self.spare else []) + (
                ["--spare-stated", f"{s['primary']}:{STATED_PORT}"] if self.readmit else []) + self.logger_args,
            ready="listening", wait=wait)
        return self.d["logger"]

    def log(self, name):
        with open(self.d[name].err) as f:
            return f.read()

    def proxy_log(self):
        """The logs of the running stack's proxies (both of a pair), one after the other."""
        return "".join(self.log(h) for h in ("proxy", "proxy2") if h in self.d)

    def stats(self, name):
        """Daemon 'name''s stats line (it prints one on SIGUSR1), as a dict."""
        from emul.shaping import wait_until
        d = self.d[name]
        n = d.output().count("stats ")
        d.popen.send_signal(signal.SIGUSR1)
        if not wait_until(lambda: d.output().count("stats ") > n, 5):
            raise RuntimeError(f"{name} printed no stats line")
        line = [l for l in d.output().splitlines() if l.startswith("stats ")][-1]
        return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)

    def stop(self):
        """Stops every daemon of the stack (SIGTERM, all at once; the testbed
        lives on), so that a driver can start a fresh stack for its next
        trial."""
        self.tb.stop(*reversed(list(self.d.values())))
        self.d = {}

    def kill_primary(self):
        """SIGKILLs the primary's rs-app (a process crash; with 'front' its
        rs-front: the application behind it lives on)."""
        return self.tb.kill(self.d["app-primary"])

    def primary_down(self):
        """Takes the primary host's interfaces down (a host crash)."""
        return self.tb.host_down("primary")


class StackRun:
    """A Stack as one deployment of a study's trial: the client talks to
    'vip'; crash() waits for the primary's application (rs-app or
    rs-front) to die at its --crash-at; stop() ends what is still running,
    so that the next trial starts afresh on the same testbed."""

    def __init__(self, stack):
        self.stack = stack

    @property
    def vip(self):
        return self.stack.vip

    def start(self):
        self.stack.start()
        return self

    def crash(self, timeout=60):
        """The monotonic time the primary's application was seen dead, or
        None after 'timeout' s."""
        return wait_death(self.stack.d["app-primary"], timeout)

    def stop(self):
        self.stack.tb.stop(*[d for d in self.stack.d.values() if d.alive()])
        self.stack.d.clear()

