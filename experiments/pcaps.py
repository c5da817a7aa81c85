"""What the benchmarks read from a client's own pcap (tcpdump -r): the
longest silences between data segments from a server, per connection or in
all, and which connections got a RST from it."""
import re
import subprocess

# tcpdump -tt -S: "1796485.123 IP a.80 > b.5555: Flags [P.], seq 100:1548, ack 7, win 5, options [...], length 1448"
SEGMENT = re.compile(r"^(\d+\.\d+) IP .* seq (\d+):(\d+), .*length (\d+)")


def gaps_ms(pcap, src, by_flow=False):
    """The longest gap between two data segments from host 'src' in 'pcap',
    ms; with 'by_flow' a dict {"client-ip.port": gap} (0 for a flow with a
    single data segment)."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", f"src host {src} and greater 100"],
                         capture_output=True, text=True).stdout
    last, gap = {}, {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        t, flow = float(f[0]), f[4].rstrip(":") if by_flow else "all"
        if flow in last:
            gap[flow] = max(gap.get(flow, 0.0), (t - last[flow]) * 1000)
        else:
            gap.setdefault(flow, 0.0)
        last[flow] = t
    return gap if by_flow else gap.get("all", 0.0)


def stall_ms(pcap, client_port, t0, t1):
    """How long the client on port 'client_port' waited longest, between
    t0 and t1 (epoch seconds: its request sent, its response complete), for
    a new byte: from t0 or from a segment that brought new data to the next
    one that did (a retransmission of bytes it had, the logger's resend of
    what the crashed backend sent, is no progress).  From the client's own
    'pcap' (tcpdump -r); 0.0 when no data came."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", "-S", f"tcp dst port {client_port}"],
                         capture_output=True, text=True).stdout
    last, top, stall = t0, None, 0.0
    for line in out.splitlines():
        m = SEGMENT.match(line)
        if not m or not t0 <= float(m.group(1)) <= t1 or m.group(4) == "0":
            continue
        t, end = float(m.group(1)), int(m.group(3))
        if top is None or 0 < (end - top) % (1 << 32) < (1 << 31):
            stall = max(stall, (t - last) * 1000)
            last, top = t, end
    return stall


def rst_ports(pcap, src):
    """The clients ("ip.port") that got a RST from host 'src' in 'pcap'."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", f"src host {src} and tcp[tcpflags] & tcp-rst != 0"],
                         capture_output=True, text=True).stdout
    return {l.split()[4].rstrip(":") for l in out.splitlines() if len(l.split()) > 4}


def ends(pcap, server):
    """How each connection with host 'server' in 'pcap' began and ended, as
    a dict {"client-ip.port": {"client_syn": t, "server_rst": t, "server_fin":
    t, "client_end": t}} (the first such segment's time, seconds since the
    epoch; absent keys: none seen).  'client_end' is the client's own FIN or
    RST: a server end before it is one the client did not cause."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", f"host {server} and "
                          "tcp[tcpflags] & (tcp-rst|tcp-fin|tcp-syn) != 0"], capture_output=True, text=True).stdout
    flows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 7 or f[1] != "IP" or f[3] != ">":
            continue
        src, dst, flags = f[2], f[4].rstrip(":"), f[6]
        from_server = src.rsplit(".", 1)[0] == server
        e = flows.setdefault(dst if from_server else src, {})
        if "S" in flags:
            key = None if from_server else "client_syn"
        elif from_server:
            key = "server_rst" if "R" in flags else "server_fin"
        else:
            key = "client_end"
        if key:
            e.setdefault(key, float(f[0]))
    return flows
