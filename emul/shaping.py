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
node1's ingress; 'up' at node2's ingress when node2 is a host, or, when
node2 is a switch, at the ingress of every other host for packets whose
source is node1 (the switch itself has no ingress hook of ours).
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
    intf: str
    src: str          # source address to match, or None for all
    shape: Shape
    queue: int = -1


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
                self.rules.append(_Rule(n1, l.intf1.name, None, l.down))
            if l.up.empty:
                continue
            if not _is_switch(n2):
                self.rules.append(_Rule(n2, l.intf2.name, None, l.up))
                continue
            src = n1.IP()
            for h in net.hosts:
                if h is not n1:
                    self.rules.append(_Rule(h, h.defaultIntf().name, src, l.up))

    def _start_emul(self):
        by_host = {}
        for r in self.rules:
            by_host.setdefault(r.host.name, []).append(r)
        os.makedirs(self.run_dir, exist_ok=True)
        for name, rules in by_host.items():
            host = rules[0].host
            args = [self.emulator, "--seed", str(self.seed + len(self.procs))]
            for q, r in enumerate(rules):
                r.queue = q
                args += ["queue", str(q)] + r.shape.emul_args()
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
                match = f"-i {r.intf}" + (f" -s {r.src}" if r.src else "")
                out = host.cmd(f"iptables -w -t mangle -A PREROUTING {match} "
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
                match = f"-i {r.intf}" + (f" -s {r.src}" if r.src else "")
                r.host.cmd(f"iptables -w -t mangle -D PREROUTING {match} "
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
