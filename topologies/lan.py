"""The testbed of DESIGN.md: clients, proxy, logger, auxlog, primary,
alternate and mailstore on one switch.  The logger's port gets a copy of
all traffic between the other ports.  With a WAN profile the clients sit
behind an emulated link (delay/jitter/loss per direction).

Addresses are fixed so logs and configs can name them.

With 'pair', a second proxy host (proxy2) stands by: the VIP (SERVERS's
"proxy" address) is then on both proxy hosts' loopback, their kernels do
not answer ARP for it, and each host has an address of its own (PAIR_HOSTS)
for the pair's connection (proxy/pair.c).  With 'spare', a third backend
host (spare, SPARE_HOST) stands by to become the alternate after a
failover (re-protection).
"""
from mininet.topo import Topo

from emul.shaping import Shape, ShapedLink

SERVERS = {
    "proxy": "10.0.0.1",
    "logger": "10.0.0.2",
    "auxlog": "10.0.0.3",
    "primary": "10.0.0.11",
    "alternate": "10.0.0.12",
    "mailstore": "10.0.0.20",
}
PAIR_HOSTS = {"proxy": "10.0.0.5", "proxy2": "10.0.0.6"}
# bench-splice's nat deployment: the proxy host's second address, towards
# the primary (experiments/bench_splice.py says why it is not the proxy's).
NAT_SOURCE = "10.0.2.1"
SPARE_HOST = {"spare": "10.0.0.13"}
SWITCH = "rs1"


def client_ip(i):
    return f"10.0.1.{i + 1}"


class LanTopo(Topo):
    """'profile' is a topologies.profiles.Profile, or None for plain LAN.
    'clients' is how many client hosts (c1, c2, ...)."""

    mirror_host = "logger"

    def build(self, profile=None, clients=1, pair=False, spare=False):
        self.profile, self.pair, self.spare = profile, pair, spare
        sw = self.addSwitch(SWITCH)
        hosts = dict(SERVERS, **(PAIR_HOSTS if pair else {}), **(SPARE_HOST if spare else {}))
        for name, ip in hosts.items():
            self.addHost(name, ip=f"{ip}/8")
            self.addLink(name, sw)
        shape = profile.shape() if profile else Shape()
        for i in range(clients):
            c = self.addHost(f"c{i + 1}", ip=f"{client_ip(i)}/8")
            if shape.empty:
                self.addLink(c, sw)
            else:
                # Mininet passes these to ShapedLink; the testbed fills in
                # the shaper when it builds the net (see Testbed).
                self.addLink(c, sw, cls=ShapedLink, up=shape, down=shape,
                             shaper=_ShaperRef(self))


    def configure(self, net):
        """After the hosts are up: the pair's shared VIP."""
        if not self.pair:
            return
        for name in PAIR_HOSTS:
            h = net[name]
            for cmd in ("sysctl -qw net.ipv4.conf.all.arp_ignore=1", "sysctl -qw net.ipv4.conf.all.arp_announce=2",
                        f"ip addr add {SERVERS['proxy']}/32 dev lo"):
                out = h.cmd(f"{cmd} 2>&1; echo rc=$?")
                if "rc=0" not in out:
                    raise RuntimeError(f"{name}: {cmd}: {out.strip()}")


class _ShaperRef:
    """Resolves to the Testbed's Shaper when the link is created (the topo
    is declared before the Testbed that owns the shaper exists)."""

    def __init__(self, topo):
        self.topo = topo

    def add(self, link):
        self.topo.shaper.add(link)
