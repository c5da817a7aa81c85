"""The fault-tolerance techniques the studies compare, each deployed on the
LAN testbed in front of a workload of experiments/workloads.py (the
reference app or Roundcube) as an operator would, with the same crash
injection: the primary backend's rs-app dies at a chosen response byte
(rs-app --crash-at; see workloads.py).

    t = TECHNIQUES["haproxy"](tb, run_dir, workload)
    t.start(crash_at="12+0")        # one trial
    rs-client --server t.server() + t.client_args() ...
    t.crash(); ...; t.stop()

Techniques (experiments/common.py's names):
  none            one backend, the client talks to it directly, no retry
  browser         rs-client --browser (reload on a reset, POST included)
                  through a plain round-robin proxy (HAProxy mode tcp, no
                  checks); each backend its own session database: the
                  alternate does not know the user
  browser-shared  the same with one session database for both backends
                  (Roundcube only: the reference app's state is in its process)
  haproxy         HAProxy mode http, health checks, option redispatch,
                  retries 3, retry-on all-retryable-errors, default timers
                  (inter 2s fall 3), active/backup, shared session database
                  (Roundcube), the browser-like client in front of it
  haproxy-tuned   the same with inter 100ms fall 2
  vrrp            VIP takeover with keepalived (VRRPv2, advert 1 s) on the two
                  backends, a check script (the front answers, every 1 s,
                  keepalived's shortest interval) moves the VIP; shared
                  session database (Roundcube), the browser-like client to the VIP
  vrrp-tuned      the same with VRRPv3 adverts every 100 ms
  resplice        the workload's resplice deployment (the whole stack of
                  emul/stack.py; for Roundcube roundcube/deploy.py's
                  ResplicedRoundcube) on the ebpf data path: the only one
                  that recovers on this machine (kmod needs Debian's 6.1
                  kernel, in qemu; the proxy's user-space relay, --no-splice,
                  recovers nothing: only spliced connections move)
and, for the overhead study only (no crash injection), Plain ("direct"):
the workload on the primary with nothing in front of it."""
import os
import time

from emul.testbed import wait_listening
from experiments import baselines
from experiments.workloads import FRONT_PORT
from roundcube.deploy import DeployError
from topologies.lan import SERVERS

VIP = f"{SERVERS['proxy']}:80"
VRRP_VIP = "10.0.0.100"     # a free address on the testbed's /8


class Technique:
    name = "?"
    browser = True      # the client reloads on errors, like a browser
    # The period of the technique's slowest failure-detection timer, s: a
    # trial starts its client at a seeded random phase of it, so that the
    # crash does not always land at the same point of the timer.
    timer_period = 0

    def __init__(self, tb, run_dir, workload):
        self.tb, self.dir, self.wl = tb, run_dir, workload

    @classmethod
    def applies(cls, workload):
        """Whether the technique can be deployed with 'workload'."""
        return True

    def client_args(self):
        return ["--browser", "--retry-post"] if self.browser else []

    def config(self):
        return baselines.config_record(self.name)


class Direct(Technique):
    name, browser = "none", False

    def start(self, crash_at):
        self.b = self.wl.backends(["primary"])
        self.b.start(crash_at)
        return self

    def server(self):
        return self.b.addr("primary")

    def crash(self):
        return self.b.crash()

    def stop(self):
        self.b.stop()


class HAProxied(Technique):
    """Two backends behind HAProxy on the proxy host."""
    shared, timers = True, "default"

    @property
    def timer_period(self):
        return baselines.haproxy_ms(baselines.HAPROXY_TIMERS[self.timers]["inter"]) / 1000

    def cfg(self, servers):
        return baselines.haproxy_cfg(SERVERS["proxy"], servers, timers=self.timers, check_path=self.wl.check_path)

    def start(self, crash_at):
        self.b = self.wl.backends(["primary", "alternate"], shared_db=self.shared)
        self.b.start(crash_at)
        path = os.path.join(self.dir, f"haproxy-{self.name}.cfg")
        with open(path, "w") as f:
            f.write(self.cfg([("primary", self.b.addr("primary")), ("alternate", self.b.addr("alternate"))]))
        self.hp = self.tb.start("proxy", f"haproxy-{self.name}", ["haproxy", "-db", "-f", path])
        if not wait_listening(self.tb["proxy"], 80, 10) or not self.hp.alive():
            raise DeployError(f"haproxy did not start; see {self.hp.err}")
        time.sleep(0.3)             # its first health checks
        return self

    def server(self):
        return VIP

    def crash(self):
        return self.b.crash()

    def stop(self):
        if self.hp.alive():
            self.tb.stop(self.hp)
        self.b.stop()


class HAProxyDefault(HAProxied):
    name, timers = "haproxy", "default"


class HAProxyTuned(HAProxied):
    name, timers = "haproxy-tuned", "tuned"


class BrowserRetry(HAProxied):
    name, shared = "browser", False
    timer_period = 0        # no health checks

    def cfg(self, servers):
        return baselines.plain_proxy_cfg(SERVERS["proxy"], servers, mode="tcp")


class BrowserRetryShared(BrowserRetry):
    name, shared = "browser-shared", True

    @classmethod
    def applies(cls, workload):
        return workload.shared_store


class Vrrp(Technique):
    """keepalived on the primary (MASTER) and the alternate (BACKUP)."""
    name, advert = "vrrp", "default"
    timer_period = 1.0      # the check script's interval

    def start(self, crash_at):
        self.b = self.wl.backends(["primary", "alternate"], shared_db=True)
        self.b.start(crash_at)
        hosts = ("primary", "alternate")
        ifs = [(f"{h}-eth0", self.tb[h].IP()) for h in hosts]
        check = f"/usr/bin/curl -sf -o /dev/null -m 1 http://127.0.0.1:{FRONT_PORT}{self.wl.check_path}"
        texts = baselines.keepalived_pair(VRRP_VIP, ifs[0], ifs[1], advert=self.advert, check_script=check)
        self.ka = {}
        for h, text in zip(hosts, texts):
            run = os.path.join(os.path.abspath(self.dir), f"keepalived-{h}")
            os.makedirs(run, exist_ok=True)
            cfg = os.path.join(run, "keepalived.conf")
            with open(cfg, "w") as f:
                f.write(text)
            self.ka[h] = self.tb.start(h, f"keepalived-{h}", [
                "keepalived", "-n", "-l", "-D", "-G", "-P", "-f", cfg, "-p", os.path.join(run, "pid"),
                "-r", os.path.join(run, "vrrp.pid")])
        end = time.monotonic() + 10
        while VRRP_VIP not in self.tb["primary"].cmd("ip -4 -o addr show dev primary-eth0"):
            if time.monotonic() > end or not all(d.alive() for d in self.ka.values()):
                raise DeployError(f"keepalived: the primary never held {VRRP_VIP}; see {self.ka['primary'].err}")
            time.sleep(0.05)
        return self

    def server(self):
        return f"{VRRP_VIP}:{FRONT_PORT}"

    def crash(self):
        return self.b.crash()

    def stop(self):
        for d in self.ka.values():
            if d.alive():
                self.tb.stop(d)
        self.b.stop()


class VrrpTuned(Vrrp):
    name, advert = "vrrp-tuned", "tuned"


class Resplice(Technique):
    name, browser = "resplice", False

    def start(self, crash_at):
        self.rr = self.wl.resplice(crash_at).start()
        return self

    def server(self):
        return self.rr.vip

    def crash(self):
        return self.rr.crash(60)

    def stop(self):
        self.rr.stop()


class RespliceNoState(Resplice):
    """resplice without the application's state: Roundcube without the
    resplice plugin.  The overhead study's measure of what the state's
    tracking and shipping add (resplice - resplice-nostate) to the rest of
    the stack; it masks no crash that loses a session, so it is not a
    technique of the failover studies (COST_ONLY)."""
    name = "resplice-nostate"

    @classmethod
    def applies(cls, workload):
        return workload.name == "roundcube"

    def start(self, crash_at):
        self.rr = self.wl.resplice(crash_at, state=False).start()
        return self


class Plain(Technique):
    """The workload on the primary, nothing in front of it (no crash injection)."""
    name, browser = "direct", False

    def start(self, crash_at):
        self.d = self.wl.direct().start()
        return self

    def server(self):
        return self.d.addr

    def stop(self):
        self.d.stop()

    def config(self):
        return {"technique": "direct"}


TECHNIQUES = {t.name: t for t in (Direct, BrowserRetry, BrowserRetryShared, HAProxyDefault, HAProxyTuned, Vrrp,
                                  VrrpTuned, Resplice)}
# Measured by the overhead study only.
COST_ONLY = {t.name: t for t in (RespliceNoState,)}
