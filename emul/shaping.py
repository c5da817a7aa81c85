"""Link shaping for Mininet that works with or without netem.

ShapedLink is a Mininet link class with a delay/jitter/loss per direction.
Where the kernel has netem it uses netem on both ends' egress; where it does
not (this project's CI machine) it uses emul/rs-emul, an NFQUEUE emulator,
on the receiving host's ingress (PREROUTING) so TCP small queues do not
throttle the sender.  Either way Shaper.verify() checks afterwards that the
shaping is really there, because Mininet's own TCLink logs tc errors and
carries on with no delay.

Direction names follow the link's ends: 'up' is node1 -> node2 (e.g. client
-> switch), 'down' is node2 -> node1.  With rs-emul, 'down' is shaped at
node1's ingress; 'up' at node2's ingress when node2 is a host.  When node2
is a Linux bridge, 'up' is shaped where the frame enters the bridge (the
root namespace's PREROUTING with bridge netfilter, matched by bridge port),
so the delay sits on the "wire" — not behind a receiving host's tc hook,
where a packet a tc program let through could wait while a socket it
belongs to goes away.  Other switches (OVS) get the fallback: the ingress of
every other host, for packets whose source is node1.
"""
import dataclasses
import os
import re
import subprocess
import time

from mininet.link import Link
from mininet.node import Switch


class ShapingError(RuntimeError):
    """Shaping was asked for but is not in place."""


@dataclasses.dataclass(frozen=True)
class Shape:
    """One direction of a link: delay and jitter in ms, loss as a fraction."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    def __post_init__(self):
        if self.delay_ms < 0 or self.jitter_ms < 0 or not 0 <= self.loss <= 1:
            raise ValueError(f"bad shape {self}")
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"jitter {self.jitter_ms} ms exceeds delay {self.delay_ms} ms")

    @property
    def empty(self):
        return not (self.delay_ms or self.jitter_ms or self.loss)

    def emul_args(self):
        return ["delay", f"{self.delay_ms}ms", "jitter", f"{self.jitter_ms}ms",
                "loss", f"{self.loss}"]

    def netem_args(self):
        args = ["delay", f"{self.delay_ms}ms"]
        if self.jitter_ms:
            args += [f"{self.jitter_ms}ms"]
        if self.loss:
            args += ["loss", f"{self.loss * 100}%"]
        return args


def kernel_has_netem():
    """True when a netem qdisc can be created (tried in a throwaway netns)."""
    r = subprocess.run(["mnexec", "-n", "tc", "qdisc", "add", "dev", "lo", "root",
                        "netem", "delay", "1ms"], capture_output=True)
    return r.returncode == 0


def _is_switch(node):
    return isinstance(node, Switch)


class ShapedLink(Link):
    """Mininet link with per-direction Shape; register with a Shaper.

    net.addLink(h, s, cls=ShapedLink, shaper=shaper, up=Shape(5), down=Shape(5))
    """

    def __init__(self, node1, node2, shaper=None, up=None, down=None, **kwargs):
        Link.__init__(self, node1, node2, **kwargs)
        if shaper is None:
            raise ValueError("ShapedLink needs shaper=Shaper(...)")
        self.up = up or Shape()
        self.down = down or Shape()
        shaper.add(self)


@dataclasses.dataclass
class _Rule:
    """One NFQUEUE rule at one host's ingress and the shape its queue applies."""
    host: object
    match: str        # iptables match: "-i IF", "-i IF -s SRC", "-m physdev --physdev-in PORT"
    shape: Shape
    queue: int = -1


class _RootNs:
    """The root network namespace (where Mininet's Linux bridges live),
    with the two methods of a Mininet host that shaping uses."""
    name = "bridge"
    shell = True
    QUEUE_BASE = 30000   # root-namespace queue numbers, away from anyone else's

    @staticmethod
    def cmd(command):
        r = subprocess.run(command, shell=True, capture_output=True, text=True)
        return r.stdout + r.stderr

    @staticmethod
    def popen(args, **kw):
        return subprocess.Popen(args, **kw)


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def _is_linux_bridge(node):
    return _is_switch(node) and type(node).__name__ == "LinuxBridge"


class Shaper:
    """Installs, verifies and removes the shaping of every ShapedLink of a net.

    'emulator' is the rs-emul binary; 'run_dir' receives each emulator's
    output; 'mode' is "netem", "emul" or None (pick netem when present);
    'seed' makes the emulators' jitter and loss reproducible.
    """

    def __init__(self, emulator, run_dir, mode=None, seed=1):
        self.emulator = emulator
        self.run_dir = run_dir
        self.mode = mode or ("netem" if kernel_has_netem() else "emul")
        self.seed = seed
        self.links = []
        self.rules = []
        self.procs = {}       # host name -> Popen of its rs-emul
        self.netem_intfs = []
        self.bridge_nf_saved = None

    def add(self, link):
        self.links.append(link)

    # -- installing --------------------------------------------------------
    def apply(self, net):
        """Shapes every registered link of the started 'net'."""
        if self.mode == "netem":
            for l in self.links:
                self._netem(l.intf1, l.up)
                self._netem(l.intf2, l.down)
        else:
            self._plan_emul(net)
            self._start_emul()
        return self

    def _netem(self, intf, shape):
        if shape.empty:
            return
        cmd = ["tc", "qdisc", "replace", "dev", intf.name, "root", "netem"] + shape.netem_args()
        out = intf.node.cmd(" ".join(cmd) + " 2>&1; echo rc=$?")
        if "rc=0" not in out:
            raise ShapingError(f"netem on {intf.name} failed: {out.strip()}")
        self.netem_intfs.append(intf)

    def _plan_emul(self, net):
        for l in self.links:
            n1, n2 = l.intf1.node, l.intf2.node
            if not l.down.empty:
                if _is_switch(n1):
                    raise ShapingError(f"link {l}: node1 must be a host for rs-emul shaping")
                self.rules.append(_Rule(n1, f"-i {l.intf1.name}", l.down))
            if l.up.empty:
                continue
            if not _is_switch(n2):
                self.rules.append(_Rule(n2, f"-i {l.intf2.name}", l.up))
            elif _is_linux_bridge(n2) and os.path.exists(BRIDGE_NF):
                self._bridge_netfilter_on()
                self.rules.append(_Rule(_RootNs, f"-m physdev --physdev-in {l.intf2.name}", l.up))
            else:
                src = n1.IP()
                for h in net.hosts:
                    if h is not n1:
                        self.rules.append(_Rule(h, f"-i {h.defaultIntf().name} -s {src}", l.up))

    def _bridge_netfilter_on(self):
        """Bridged IPv4 frames must traverse the root namespace's iptables."""
        if self.bridge_nf_saved is not None:
            return
        with open(BRIDGE_NF) as f:
            self.bridge_nf_saved = f.read().strip()
        if self.bridge_nf_saved != "1":
            with open(BRIDGE_NF, "w") as f:
                f.write("1")

    def _start_emul(self):
        by_host = {}
        for r in self.rules:
            by_host.setdefault(r.host.name, []).append(r)
        os.makedirs(self.run_dir, exist_ok=True)
        for name, rules in by_host.items():
            host = rules[0].host
            base = getattr(host, "QUEUE_BASE", 0)
            args = [self.emulator, "--seed", str(self.seed + len(self.procs))]
            for q, r in enumerate(rules):
                r.queue = base + q
                args += ["queue", str(r.queue)] + r.shape.emul_args()
            log = open(os.path.join(self.run_dir, f"rs-emul-{name}.log"), "w")
            p = host.popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
            self.procs[name] = p
            line = p.stdout.readline()
            if not line.startswith("ready"):
                p.kill()
                raise ShapingError(f"rs-emul on {name} did not start: {line!r} "
                                   f"(see {log.name})")
            # The rest of its stdout (statistics) goes to the log from now on.
            p.log_path = log.name
            for r in rules:
                out = host.cmd(f"iptables -w -t mangle -A PREROUTING {r.match} "
                               f"-j NFQUEUE --queue-num {r.queue} 2>&1; echo rc=$?")
                if "rc=0" not in out:
                    raise ShapingError(f"iptables on {name} failed: {out.strip()}")

    # -- checking ----------------------------------------------------------
    def verify(self):
        """Raises ShapingError unless every shaped direction is in place."""
        if self.mode == "netem":
            for intf in self.netem_intfs:
                out = intf.node.cmd(f"tc qdisc show dev {intf.name}")
                if "netem" not in out:
                    raise ShapingError(f"no netem qdisc on {intf.name}: {out.strip()}")
            return
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ShapingError(f"rs-emul on {name} exited with {p.returncode}")
        for r in self.rules:
            rules = r.host.cmd("iptables -w -t mangle -S PREROUTING")
            if f"--queue-num {r.queue}" not in rules:
                raise ShapingError(f"NFQUEUE rule for queue {r.queue} missing on {r.host.name}")

    def verify_rtt(self, a, b, expected_ms, count=10, tolerance=None):
        """Pings 'b' from host 'a'; raises ShapingError unless the average RTT
        is within 'tolerance' ms (default max(1, 5%)) of 'expected_ms'.
        Returns the measured average."""
        # Warm up first: switch upcalls and cache misses slow the first packets.
        measure_rtt(a, b.IP(), count=5, interval=0.01)
        avg, _ = measure_rtt(a, b.IP(), count=count, interval=0.05)
        tol = tolerance if tolerance is not None else max(1.0, 0.05 * expected_ms)
        if avg is None or abs(avg - expected_ms) > tol:
            raise ShapingError(f"{a.name} -> {b.name}: RTT {avg} ms, asked for "
                               f"{expected_ms} ms (+-{tol}): shaping is not in place as asked")
        return avg

    # -- removing ----------------------------------------------------------
    def remove(self):
        """Removes rules first (so nothing is blackholed), then stops the
        emulators, which release every packet they hold.  Safe to repeat."""
        for r in self.rules:
            if r.queue >= 0 and getattr(r.host, "shell", None):
                r.host.cmd(f"iptables -w -t mangle -D PREROUTING {r.match} "
                           f"-j NFQUEUE --queue-num {r.queue} 2>/dev/null")
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for name, p in self.procs.items():
            try:
                rest, _ = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                rest, _ = p.communicate()
            with open(p.log_path, "a") as f:
                f.write(rest or "")
        self.procs = {}
        self.rules = []
        for intf in self.netem_intfs:
            if getattr(intf.node, "shell", None):
                intf.node.cmd(f"tc qdisc del dev {intf.name} root 2>/dev/null")
        self.netem_intfs = []
        if self.bridge_nf_saved is not None and self.bridge_nf_saved != "1":
            with open(BRIDGE_NF, "w") as f:
                f.write(self.bridge_nf_saved)
        self.bridge_nf_saved = None

    def stats(self):
        """Per-queue statistics lines of the (stopped) emulators' logs."""
        lines = []
        for name in sorted(os.listdir(self.run_dir)):
            if name.startswith("rs-emul-"):
                with open(os.path.join(self.run_dir, name)) as f:
                    lines += [f"{name[8:-4]} {l.strip()}" for l in f if l.startswith("stats")]
        return lines


_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
_LOSS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def measure_rtt(host, ip, count=10, interval=0.05, size=56, wait_s=3):
    """Pings 'ip' from 'host' with user-to-user timing (-U: the kernel's
    receive timestamp would hide delay added at the pinging host's own
    ingress); sends exactly 'count' and waits 'wait_s' for the last reply.
    Returns (avg RTT in ms or None, (sent, received))."""
    out = host.cmd(f"ping -U -q -n -c {count} -i {interval} -s {size} -W {wait_s} {ip}")
    m, l = _RTT.search(out), _LOSS.search(out)
    sent_recv = (int(l.group(1)), int(l.group(2))) if l else (0, 0)
    return (float(m.group(2)) if m else None), sent_recv


def wait_until(cond, timeout, step=0.01):
    """Polls 'cond' until it returns true or 'timeout' seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()
