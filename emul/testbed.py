"""The Mininet testbed harness: build a topology, run daemons on its hosts,
inject crashes, capture packets, and always clean up.

    with Testbed(LanTopo(profile), run_dir="results/run1") as tb:
        srv = tb.start("primary", "app", ["build/rs-app", "--port", "80"])
        tb.crash_when(lambda: ..., tb.kill, srv)
        ...

Everything the testbed creates (hosts, switch, mirror, shaping, daemons,
captures, OVS daemons) is undone on exit, on an exception and on Ctrl-C or
SIGTERM, without `mn -c`.  Daemons are ended by the PIDs we started.
Python is the harness only; every component it runs is C.
"""
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import OVSSwitch
from mininet.nodelib import LinuxBridge

from emul.places import binary
from emul.shaping import Shaper, wait_until

OVS_RUN = "/var/run/openvswitch"


class TestbedError(RuntimeError):
    pass


class Daemon:
    """A process we started on a host, with its output files."""

    def __init__(self, host, name, popen, out, err, ready=None, timeout=10):
        self.host, self.name, self.popen = host, name, popen
        self.out, self.err = out, err
        self.ready, self.timeout = ready, timeout    # () -> whether it is ready (None: at once)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def output(self):
        with open(self.out) as f:
            return f.read()

    def __repr__(self):
        return f"<Daemon {self.name} pid={self.pid} on {self.host.name}>"


def kernel_has_ovs_datapath():
    return os.path.exists("/sys/module/openvswitch")


class _OvsDaemons:
    """ovsdb-server + ovs-vswitchd started by us (no systemd here), in a
    private run directory, stopped by PID."""

    def __init__(self, run_dir):
        self.dir = os.path.join(run_dir, "ovs")
        self.procs = []

    def start(self):
        if os.path.exists(os.path.join(OVS_RUN, "db.sock")):
            raise TestbedError(f"an OVS database already runs ({OVS_RUN}/db.sock); "
                               "stop it or use the Linux bridge")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(OVS_RUN, exist_ok=True)
        db = os.path.join(self.dir, "conf.db")
        subprocess.run(["ovsdb-tool", "create", db,
                        "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
        log = open(os.path.join(self.dir, "ovs.log"), "w")
        self.procs.append(subprocess.Popen(
            ["ovsdb-server", db, f"--remote=punix:{OVS_RUN}/db.sock",
             f"--unixctl={self.dir}/ovsdb.ctl"], stdout=log, stderr=log))
        if not wait_until(lambda: os.path.exists(f"{OVS_RUN}/db.sock"), 10):
            raise TestbedError("ovsdb-server did not start")
        subprocess.run(["ovs-vsctl", "--no-wait", "init"], check=True)
        self.procs.append(subprocess.Popen(
            ["ovs-vswitchd", f"unix:{OVS_RUN}/db.sock", f"--unixctl={self.dir}/vswitchd.ctl"],
            stdout=log, stderr=log))
        time.sleep(0.5)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        for f in ("db.sock",):
            try:
                os.unlink(os.path.join(OVS_RUN, f))
            except FileNotFoundError:
                pass


class Testbed:
    """A running topology.  'topo' is a topologies.* Topo that declares
    .mirror_host (the host whose port receives a copy of all other traffic,
    or None).  'switch' is "bridge" (default) or "ovs"; 'shaping' forces
    "netem" or "emul" (default: netem when the kernel has it)."""

    def __init__(self, topo, run_dir, switch="bridge", shaping=None, seed=1, quiet=True):
        self.topo, self.run_dir, self.switch_kind = topo, run_dir, switch
        self.seed = seed
        self.net = None
        self.daemons = []
        self.captures = []
        self.timers = []
        self.routes_down = {}     # host -> its static routes while host_down() holds it down
        self.ovs = None
        self._old_handlers = {}
        os.makedirs(run_dir, exist_ok=True)
        self.shaper = Shaper(binary("rs-emul"), run_dir, mode=shaping, seed=seed)
        topo.shaper = self.shaper
        if quiet:
            setLogLevel("error")

    # -- lifetime ----------------------------------------------------------
    def __enter__(self):
        self._trap_signals()
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()
        return False

    def _trap_signals(self):
        def raise_interrupt(sig, frame):
            raise KeyboardInterrupt(f"signal {sig}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, raise_interrupt)

    def up(self):
        if not os.access(self.shaper.emulator, os.X_OK):
            raise TestbedError(f"{self.shaper.emulator} missing: run make first")
        if self.switch_kind == "ovs":
            self.ovs = _OvsDaemons(self.run_dir)
            self.ovs.start()
            datapath = "kernel" if kernel_has_ovs_datapath() else "user"

            def switch(name, **kw):
                return OVSSwitch(name, failMode="standalone", datapath=datapath, **kw)
        elif self.switch_kind == "bridge":
            datapath = None
            switch = LinuxBridge
        else:
            raise TestbedError(f"unknown switch kind {self.switch_kind!r}")
        self.net = Mininet(topo=self.topo, switch=switch, controller=None,
                           autoSetMacs=True, autoStaticArp=True, waitConnected=False)
        self.net.start()
        for h in self.net.hosts:
            h.cmd("ip link set lo up")
            if datapath == "user":
                # The userspace datapath does not fill in offloaded checksums.
                h.cmd(f"ethtool -K {h.defaultIntf()} tx off >/dev/null 2>&1")
        if hasattr(self.topo, "configure"):
            self.topo.configure(self.net)
        self._pin_fdb()
        self._mirror()
        self.shaper.apply(self.net)
        self.shaper.verify()

    def down(self):
        """Undoes everything; safe to call twice and after a partial up()."""
        for t in self.timers:
            t.cancel()
        for d in self.daemons:
            self._end(d.popen)
        for c in self.captures:
            self._end(c.popen, signal.SIGINT)
        self.daemons, self.captures, self.timers = [], [], []
        self.shaper.remove()
        if self.net is not None:
            self.net.stop()
            self.net = None
        if self.ovs:
            self.ovs.stop()
            self.ovs = None
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}

    @staticmethod
    def _end(p, sig=signal.SIGTERM, grace=3):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __getitem__(self, name):
        return self.net[name]

    def _pin_fdb(self):
        """Teaches the switch every host's port up front, so it never floods
        unicast frames to unknown destinations: a flooded frame would reach
        the logger twice (flood + mirror) and other hosts once."""
        sw = self.net.switches[0]
        if self.switch_kind == "ovs":
            sw.cmd(f"ovs-vsctl set bridge {sw.name} other_config:mac-aging-time=3600")
            first = self.net.hosts[0]
            for h in self.net.hosts[1:]:
                h.cmd(f"ping -c 1 -W 1 {first.IP()} >/dev/null")
            return
        for h in self.net.hosts:
            link = h.defaultIntf().link
            port = link.intf2 if link.intf2.node is sw else link.intf1
            out = sw.cmd(f"bridge fdb replace {h.defaultIntf().MAC()} dev {port} master static 2>&1; echo rc=$?")
            if "rc=0" not in out:
                raise TestbedError(f"cannot pin {h.name}'s MAC on {port}: {out.strip()}")

    # -- receive processing -------------------------------------------------
    def spread_receive(self, hosts=None):
        """Lets the kernel of each of 'hosts' (default: all) process what
        its interface receives on any core (RPS over every CPU), as a
        multi-queue NIC spreads flows with RSS.  A veth has one queue, and
        without RPS the receiver's whole softirq chain (and every hop a
        forwarder adds to it) runs in the sender's context, on the sender's
        core.  A host's /sys shows the root namespace's devices: the
        setting is written from a mount namespace of its own with its
        network namespace's sysfs."""
        mask = format((1 << os.cpu_count()) - 1, "x")
        for h in (self.net[n] for n in hosts) if hosts else self.net.hosts:
            q = f"/sys/class/net/{h.defaultIntf().name}/queues/rx-0/rps_cpus"
            out = h.cmd(f"unshare -m sh -c 'umount -l /sys && mount -t sysfs sysfs /sys && echo {mask} > {q}"
                        f" && cat {q}' 2>&1").strip()
            got = out.replace(",", "")
            if not re.fullmatch(r"[0-9a-f]+", got) or int(got, 16) != int(mask, 16):
                raise TestbedError(f"RPS on {h.name}'s {h.defaultIntf().name}: {out}")

    # -- port mirror -------------------------------------------------------
    def _mirror(self):
        mh = getattr(self.topo, "mirror_host", None)
        if not mh:
            return
        sw = self.net.switches[0]
        target = self.net[mh].defaultIntf().link
        tport = target.intf2 if target.intf2.node is sw else target.intf1
        if self.switch_kind == "ovs":
            out = sw.cmd(f"ovs-vsctl -- --id=@p get port {tport.name} "
                         f"-- --id=@m create mirror name=logmirror select-all=true output-port=@p "
                         f"-- set bridge {sw.name} mirrors=@m 2>&1")
            if "error" in out.lower():
                raise TestbedError(f"OVS mirror failed: {out.strip()}")
            return
        # Every frame enters the switch through exactly one port, so copying
        # each other port's ingress gives the logger one copy of each frame.
        for intf in sw.intfList():
            if intf.name in ("lo", tport.name) or intf.name == sw.name:
                continue
            out = sw.cmd(f"tc qdisc add dev {intf} clsact 2>&1 && "
                         f"tc filter add dev {intf} ingress prio 1 protocol all u32 "
                         f"match u32 0 0 action mirred egress mirror dev {tport} 2>&1; echo rc=$?")
            if "rc=0" not in out:
                raise TestbedError(f"mirror {intf} -> {tport} failed: {out.strip()}")

    # -- daemons -----------------------------------------------------------
    def start(self, host, name, argv, ready=None, timeout=10, env=None, wait=True):
        """Starts 'argv' on 'host' with stdout/stderr in run_dir/name.{out,err}.
        'ready', when given, is a string to wait for in stdout; with 'wait'
        False, wait_ready() waits for it later (daemons that do not need
        each other start side by side).  Returns a Daemon."""
        h = self.net[host] if isinstance(host, str) else host
        out = os.path.join(self.run_dir, f"{name}.out")
        err = os.path.join(self.run_dir, f"{name}.err")
        with open(out, "w") as fo, open(err, "w") as fe:
            p = h.popen(argv, stdout=fo, stderr=fe, env=env)
        d = Daemon(h, name, p, out, err, ready and (lambda: ready in d.output()), timeout)
        self.daemons.append(d)
        if wait:
            self.wait_ready(d)
        return d

    def wait_ready(self, *ds):
        """Waits until every daemon of 'ds' is ready; raises TestbedError
        when one exits first or is not ready within its timeout."""
        t0 = time.monotonic()
        for d in ds:
            if d.ready is None:
                continue
            left = d.timeout - (time.monotonic() - t0)
            if not wait_until(lambda: d.ready() or not d.alive(), max(left, 0.01)):
                raise TestbedError(f"{d.name} on {d.host.name} not ready after {d.timeout}s; see {d.err}")
            if not d.alive():
                raise TestbedError(f"{d.name} on {d.host.name} exited with {d.popen.returncode}; see {d.err}")

    def stop(self, *ds, sig=signal.SIGTERM):
        """Stops daemons 'ds': all are signalled first, then each is
        waited for (sanitized daemons take a while to exit)."""
        for d in ds:
            if d.popen.poll() is None:
                d.popen.send_signal(sig)
        for d in ds:
            self._end(d.popen, sig)

    # -- crash injection ---------------------------------------------------
    def kill(self, d):
        """SIGKILLs daemon 'd' (a process crash).  Returns the monotonic time."""
        t = time.monotonic()
        d.popen.send_signal(signal.SIGKILL)
        d.popen.wait()
        return t

    def host_down(self, host):
        """Takes every interface of 'host' down (a host crash: no FIN, no RST).
        Returns the monotonic time."""
        h = self.net[host] if isinstance(host, str) else host
        # The kernel forgets the static routes of an interface taken down;
        # a host's own configuration would set them again (host_up does).
        self.routes_down[h.name] = [l for l in h.cmd("ip -4 route show").splitlines()
                                    if l.strip() and "proto kernel" not in l]
        t = time.monotonic()
        for intf in h.intfList():
            if intf.name != "lo":
                h.cmd(f"ip link set dev {intf.name} down")
        return t

    def host_up(self, host):
        """Brings 'host''s interfaces back up after host_down(), with the
        static routes it had (rs-auxlog's tap: a backend whose route to the
        mail store through it was lost reached the mail store past it, and
        a fenced primary's late mail counted)."""
        h = self.net[host] if isinstance(host, str) else host
        for intf in h.intfList():
            if intf.name != "lo":
                h.cmd(f"ip link set dev {intf.name} up")
        for route in self.routes_down.pop(h.name, []):
            h.cmd(f"ip route replace {route}")

    def crash_at(self, delay_s, action, *args):
        """Runs action(*args) 'delay_s' seconds from now, in the background."""
        t = threading.Timer(delay_s, action, args)
        t.daemon = True
        self.timers.append(t)
        t.start()
        return t

    def crash_when(self, cond, action, *args, timeout=30, step=0.001):
        """Runs action(*args) as soon as cond() is true (polled every 'step'
        seconds, for at most 'timeout').  Returns a handle whose .result is
        the action's return value, or None if the condition never held."""
        ev = threading.Event()

        class Handle:
            result = None
            fired = ev

        def watch():
            if wait_until(cond, timeout, step):
                Handle.result = action(*args)
            ev.set()
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        return Handle

    # -- packet capture ----------------------------------------------------
    def capture(self, host, name, intf=None, bpf_filter="", snaplen=0, buffer_kib=65536, wait=True):
        """Starts tcpdump on 'host' ('intf' defaults to its main interface)
        writing run_dir/name.pcap; stopped at teardown or with stop().
        'buffer_kib' is the kernel buffer: tcpdump's default (2 MiB) drops
        frames of a fast download on the mirror.  'wait' as for start().
        Returns (Daemon, pcap path)."""
        h = self.net[host] if isinstance(host, str) else host
        path = os.path.join(self.run_dir, f"{name}.pcap")
        intf = intf or h.defaultIntf().name
        argv = ["tcpdump", "-i", intf, "-w", path, "-U", "-n", "-s", str(snaplen), "-B", str(buffer_kib),
                "--immediate-mode"] + (bpf_filter.split() if bpf_filter else [])
        err = os.path.join(self.run_dir, f"{name}.tcpdump.err")
        with open(err, "w") as fe:
            p = h.popen(argv, stdout=fe, stderr=fe)
        d = Daemon(h, name, p, err, err, lambda: "listening on" in d.output())
        self.captures.append(d)
        if wait:
            self.wait_ready(d)
        return d, path

    def stop_capture(self, d):
        self._end(d.popen, signal.SIGINT)


def wait_death(d, timeout):
    """Waits for daemon 'd' to die (e.g. at its --crash-at); returns the
    monotonic time it was seen dead, or None after 'timeout' s."""
    try:
        d.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic()


def wait_listening(host, port, timeout):
    """Whether something listens on TCP 'port' on Mininet host 'host'
    within 'timeout' s."""
    return bool(wait_until(lambda: f":{port}" in host.cmd(f"ss -Hltn 'sport = :{port}'"), timeout, 0.05))


def file_contains(path, text):
    """True when file 'path' exists and contains 'text' (for crash_when)."""
    try:
        with open(path) as f:
            return text in f.read()
    except FileNotFoundError:
        return False


def pcap_count(path, bpf_filter=""):
    """Number of packets in 'path' matching 'bpf_filter' (via tcpdump -r)."""
    r = subprocess.run(["tcpdump", "-r", path, "-n", "-q"] + (bpf_filter.split() if bpf_filter else []),
                       capture_output=True, text=True)
    return sum(1 for l in r.stdout.splitlines() if l.strip())


def leftovers():
    """What a testbed could leave behind on this machine: Mininet host
    shells, our interfaces and bridges, our daemons.  Empty when clean."""
    found = []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for l in links.splitlines():
        name = l.split(":")[1].strip().split("@")[0]
        if name.startswith("rs") and ("-eth" in name or name[2:].isdigit()):
            found.append(f"interface {name}")
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for l in ps.splitlines()[1:]:
        pid, _, args = l.strip().partition(" ")
        if ("mininet:" in args or "rs-emul" in args.split(" ")[0]
                or args.startswith(("ovs-vswitchd", "ovsdb-server"))):
            found.append(f"process {pid} {args[:60]}")
    if shutil.which("iptables"):
        rules = subprocess.run(["iptables", "-w", "-t", "mangle", "-S"], capture_output=True,
                               text=True).stdout
        if "NFQUEUE" in rules:
            found.append("NFQUEUE rule in the root namespace")
    return found


def sweep_stale():
    """Delete the interfaces and bridges an earlier run left when it was
    killed before its cleanup ran.  Only when no testbed process is alive
    (another run may own them otherwise).  Returns what it removed."""
    found = leftovers()
    if any(not f.startswith("interface ") for f in found):
        return []
    removed = []
    for f in found:
        name = f.split(" ", 1)[1]
        if subprocess.run(["ip", "link", "del", name], capture_output=True).returncode == 0:
            removed.append(name)
    return removed
