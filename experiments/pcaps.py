"""What the benchmarks read from a client's own pcap (tcpdump -r): the
longest silences between data segments from a server, per connection or in
all, and which connections got a RST from it."""
import subprocess


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


def rst_ports(pcap, src):
    """The clients ("ip.port") that got a RST from host 'src' in 'pcap'."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", f"src host {src} and tcp[tcpflags] & tcp-rst != 0"],
                         capture_output=True, text=True).stdout
    return {l.split()[4].rstrip(":") for l in out.splitlines() if len(l.split()) > 4}
