#!/usr/bin/python3
"""make figures: redraws every plot under plots/ from the CSVs under
results/ with gnuplot, without rerunning anything.  A study with no CSV is
skipped with a note.  Ends with a `summary:` line; exits 1 if gnuplot failed.

Figures (file names are what REPORT.md links):
  <study>-time-<workload>-<action>.png  failover time per technique,
      median with p5-p95 bars, one series per crash point (study failover)
  <study>-errors-<workload>.png    client-visible errors and forced re-logins
      per trial, per technique (studies failover and wan)
  wan-failover-rtt-<workload>[-loss<L>].png   median failover (p5-p95) vs
      RTT, one line per technique (one file per loss rate when an RTT comes
      with several loss rates)
  overhead-<metric>-<workload>.png  latency / throughput per technique
  nospof-proxy.png   the proxy fails, or two backends: per technique and fault, the
                     share masked and completed, and the median extra stall
  faults-matrix.png  the fault campaign: per fault and workload, the share
      of trials masked / ended cleanly / violating an invariant (stacked)
  timeline-<study>-<name>.png  from a sidecar results/<study>/**/<name>.timeline.json:
      {"pcap": "c1.pcap",          (relative to the sidecar's folder, or absolute)
       "server": "10.0.0.100",     (optional: the data sender, ip or ip:port;
                                    default: the one that sent most payload)
       "title": "...",             (optional)
       "xrange": [t0, t1],         (optional window, same clock as marks)
       "marks": {"crash": T, "detect": T, "resend": T, "resplice": T}}
      marks are epoch seconds in the pcap's clock (tcpdump -tt); the plot
      shows the relative sequence number of every data segment the client
      received (one colour per connection; segments that do not advance the
      highest sequence seen, i.e. re-sent data, in grey) against time since
      the first packet, with a vertical line per mark.
"""
import argparse
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import group, num, stats, technique_order, natural_key  # noqa: E402

MARK_TITLES = {"crash": "crash", "detect": "detection", "resend": "logger resend",
               "resplice": "re-splice"}
MARK_COLORS = {"crash": "#d62728", "detect": "#ff7f0e", "resend": "#2ca02c", "resplice": "#1f77b4"}


# ---- pcap reading (classic libpcap format, as tcpdump -w writes) ----------

def read_pcap(path):
    """TCP segments of an IPv4/IPv6 pcap: a list of dicts (t, src, sport,
    dst, dport, seq, ack, flags, len) with 'len' the TCP payload length
    from the IP header (right even with a short snaplen).  ValueError for
    a file that is not a classic pcap or has an unknown link type."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: too short for a pcap header")
    magic = data[:4]
    table = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
             b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
    if magic not in table:
        raise ValueError(f"{path}: not a classic pcap (pcapng? write with tcpdump -w)")
    e, frac = table[magic]
    linktype = struct.unpack(e + "I", data[20:24])[0] & 0x0FFFFFFF
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, sub, incl, _orig = struct.unpack(e + "IIII", data[off:off + 16])
        off += 16
        pkt = data[off:off + incl]
        off += incl
        seg = _parse_frame(pkt, linktype)
        if seg:
            seg["t"] = sec + sub * frac
            out.append(seg)
    return out


def _parse_frame(pkt, linktype):
    if linktype == 1:                      # Ethernet, maybe VLAN-tagged
        if len(pkt) < 14:
            return None
        proto, l3 = struct.unpack("!H", pkt[12:14])[0], 14
        while proto in (0x8100, 0x88A8) and len(pkt) >= l3 + 4:
            proto, l3 = struct.unpack("!H", pkt[l3 + 2:l3 + 4])[0], l3 + 4
    elif linktype == 113:                  # Linux cooked (tcpdump -i any)
        if len(pkt) < 16:
            return None
        proto, l3 = struct.unpack("!H", pkt[14:16])[0], 16
    elif linktype == 276:                  # Linux cooked v2
        if len(pkt) < 20:
            return None
        proto, l3 = struct.unpack("!H", pkt[0:2])[0], 20
    elif linktype in (101, 12, 14):        # raw IP
        if not pkt:
            return None
        proto, l3 = (0x0800 if pkt[0] >> 4 == 4 else 0x86DD), 0
    elif linktype == 0:                    # BSD loopback
        if len(pkt) < 4:
            return None
        fam = struct.unpack("<I", pkt[:4])[0]
        proto, l3 = (0x0800 if fam == 2 else 0x86DD), 4
    else:
        raise ValueError(f"unsupported pcap link type {linktype}")
    ip = pkt[l3:]
    if proto == 0x0800:
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            return None
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp, l4len = ip[ihl:], total - ihl
    elif proto == 0x86DD:
        if len(ip) < 40 or ip[6] != 6:     # no extension headers
            return None
        src = ":".join(f"{x:x}" for x in struct.unpack("!8H", ip[8:24]))
        dst = ":".join(f"{x:x}" for x in struct.unpack("!8H", ip[24:40]))
        tcp, l4len = ip[40:], struct.unpack("!H", ip[4:6])[0]
    else:
        return None
    if len(tcp) < 14:
        return None
    sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
    doff = (tcp[12] >> 4) * 4
    return {"src": src, "sport": sport, "dst": dst, "dport": dport, "seq": seq, "ack": ack,
            "flags": tcp[13], "len": max(0, l4len - doff)}


def timeline_series(segs, server=None):
    """Per connection, the (t, relative end seq, flags) of every segment
    the server sent to the client that carries data or SYN/FIN/RST, with
    relative seq counted from the SYN-ACK (or the first segment seen),
    modulo 2^32.  'server' is "ip" or "ip:port"; None picks the sender of
    the most payload bytes.  Returns (server_label, {conn_label: [...]})."""
    if server is None:
        sent = {}
        for s in segs:
            sent[(s["src"], s["sport"])] = sent.get((s["src"], s["sport"]), 0) + s["len"]
        if not sent:
            return None, {}
        sip, sport = max(sent.items(), key=lambda kv: kv[1])[0]
    else:
        sip, _, p = str(server).partition(":") if str(server).count(":") == 1 else (str(server), "", "")
        sport = int(p) if p else None
    conns = {}
    base = {}
    for s in segs:
        if s["src"] != sip or (sport is not None and s["sport"] != sport):
            continue
        key = (s["dst"], s["dport"], s["sport"])
        syn = s["flags"] & 0x02
        if key not in base or syn:
            base[key] = (s["seq"] + 1) % 2**32 if syn else s["seq"]
        if s["len"] == 0 and not s["flags"] & 0x07:
            continue                       # pure ACK
        rel = 0 if syn else (s["seq"] - base[key]) % 2**32 + s["len"]
        conns.setdefault(key, []).append((s["t"], rel, s["flags"]))
    label = f"{sip}" + (f":{sport}" if sport is not None else "")
    return label, {f"{d}:{dp}": v for (d, dp, _sp), v in conns.items()}


def split_resent(pts):
    """(new, again): the (t, rel) points of 'pts' that advance the highest
    sequence number seen so far on the connection, and those that do not
    (retransmissions, or a stream re-sent from further back)."""
    new, again, top = [], [], None
    for t, rel, _flags in pts:
        if top is None or rel > top:
            new.append((t, rel))
            top = rel
        else:
            again.append((t, rel))
    return new, again


# ---- gnuplot -------------------------------------------------------------

class Plotter:
    def __init__(self, plots, work):
        self.plots, self.work = plots, work
        self.made, self.failed = [], []
        self._n = 0

    def data(self, lines):
        """Writes 'lines' (strings) to a data file; returns its path."""
        self._n += 1
        p = os.path.join(self.work, f"d{self._n}.dat")
        with open(p, "w") as f:
            f.write("\n".join(lines) + "\n")
        return p

    def draw(self, name, body, size="900,520"):
        """Runs gnuplot with 'body' drawing plots/'name'."""
        out = os.path.join(self.plots, name)
        script = (f"set terminal pngcairo size {size} font 'sans,10' noenhanced\n"
                  f"set output {q(out)}\nset datafile separator '\\t'\nset key outside right top\n"
                  f"set grid ytics lc rgb '#dddddd'\n" + body + "\nunset output\n")
        with open(os.path.join(self.work, name + ".gp"), "w") as f:
            f.write(script)
        r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(out) or os.path.getsize(out) == 0:
            self.failed.append(name)
            print(f"figures: gnuplot failed on {name}: {r.stderr.strip()[-600:]}", file=sys.stderr)
        else:
            self.made.append(name)


def q(s):
    """A gnuplot string literal."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', "'") + '"'


def slug(s):
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in str(s)) or "x"


def title_of(t):
    return common.TECHNIQUE_TITLES.get(t, t)


LOG_FLOOR = 0.1     # ms: on a log scale, values below are drawn here


def _yscale(values):
    """(gnuplot settings, 'using' columns) for error-bar data of 'values':
    a log scale when the positive values span more than 30x (a failover time
    measured against a noisy crash-free median can be zero or negative: such
    values are drawn at LOG_FLOOR, and the axis says so), else linear from 0
    (or from just below the lowest value)."""
    vals = [v for v in values if v is not None]
    pos = [v for v in vals if v > 0]
    if pos and max(pos) / min(pos) > 30:
        if len(pos) == len(vals):
            return "set logscale y\n", "1:2:3:4"
        f = LOG_FLOOR
        cols = ":".join(f"(${c} > {f} ? ${c} : {f})" for c in (2, 3, 4))
        return f"set logscale y\nset yrange [{f}:*]\nset label {q(f'values <= {f} ms drawn at {f}')} " \
               f"at graph 0.01, graph 0.02 font ',8'\n", "1:" + cols
    if all(v >= 0 for v in vals):
        return "set yrange [0:*]\n", "1:2:3:4"
    lo, hi = min(vals), max(vals)
    return f"set yrange [{lo - 0.05 * (hi - lo or 1):g}:*]\n", "1:2:3:4"


# ---- figures ---------------------------------------------------------------

def err_row(lines, allv, x, values):
    """Appends "x median p5 p95" of 'values' to 'lines' (nothing when there
    are none) and the p5/p95 to 'allv' (for the y scale)."""
    st = stats(values)
    if st["n"]:
        lines.append(f"{x}\t{st['median']}\t{st['p5']}\t{st['p95']}")
        allv += [st["p5"], st["p95"]]


def crash_rows(rows):
    return [r for r in rows if r.get("crash_point", "") not in ("", "none")]


def fig_failover(pl, study, rows):
    """Failover time per technique, one file per (workload, action)."""
    for (wl, action), rs in sorted(group(crash_rows(rows), "workload", "action").items(),
                                   key=lambda kv: [natural_key(x) for x in kv[0]]):
        techs = sorted({r["technique"] for r in rs}, key=technique_order)
        points = sorted({r["crash_point"] for r in rs}, key=natural_key)
        width = 0.6
        series, allv = [], []
        for j, cp in enumerate(points):
            lines = []
            for i, t in enumerate(techs):
                x = i + (j - (len(points) - 1) / 2) * (width / max(1, len(points)))
                err_row(lines, allv, f"{x:.4f}", (num(r["failover_ms"]) for r in rs
                                                   if r["technique"] == t and r["crash_point"] == cp))
            if lines:
                series.append((cp, pl.data(lines)))
        if not series:
            continue
        tics = ", ".join(f"{q(title_of(t))} {i}" for i, t in enumerate(techs))
        scale, cols = _yscale(allv)
        plots = ", ".join(f"{q(d)} using {cols} with yerrorbars pt 7 ps 1 title {q('crash ' + cp)}"
                          for cp, d in series)
        # A technique whose client never got data again has no point: say so.
        gone = "".join(f"set label {q('no recovery')} at {i}, graph 0.04 left rotate by 90 tc rgb '#d62728'\n"
                       for i, t in enumerate(techs)
                       if not any(num(r["failover_ms"]) is not None for r in rs if r["technique"] == t))
        body = gone + (f"set title {q(f'{study}: failover time, {wl} {action} (median, p5-p95)')}\n"
                f"set ylabel 'failover: extra time of the crashed request (ms)'\nset xrange [-0.6:{len(techs) - 0.4}]\n"
                f"set xtics ({tics}) rotate by -25\n" + scale + f"plot {plots}")
        pl.draw(f"{study}-time-{slug(wl)}-{slug(action)}.png", body)


def fig_errors(pl, study, rows):
    """Errors and re-logins per trial, per technique, one file per workload."""
    for (wl,), rs in sorted(group(rows, "workload").items()):
        techs = sorted({r["technique"] for r in rs}, key=technique_order)
        lines = []
        for t in techs:
            tr = [r for r in rs if r["technique"] == t]
            e = sum(num(r["errors"]) or 0 for r in tr) / len(tr)
            lg = sum(num(r["relogins"]) or 0 for r in tr) / len(tr)
            lines.append(f"{title_of(t)}\t{e}\t{lg}")
        d = pl.data(lines)
        body = (f"set title {q(f'{study}: client-visible errors and forced re-logins, {wl} (per trial)')}\n"
                "set style data histogram\nset style histogram cluster gap 1\n"
                "set style fill solid 0.8 border -1\nset boxwidth 0.9\nset yrange [0:*]\n"
                "set ylabel 'per trial'\nset xtics rotate by -25\n"
                f"plot {q(d)} using 2:xtic(1) title 'errors' lc rgb '#d62728', "
                f"'' using 3 title 're-logins' lc rgb '#1f77b4'")
        pl.draw(f"{study}-errors-{slug(wl)}.png", body)


def fault_cells(rows):
    """[(fault, workload, {verdict: n})] in the campaign's order."""
    order = []
    for r in rows:
        if (r["fault"], r["workload"]) not in order:
            order.append((r["fault"], r["workload"]))
    return [(f, w, {v: sum(r["fault"] == f and r["workload"] == w and r["verdict"] == v for r in rows)
                    for v in common.FAULT_VERDICTS}) for f, w in order]


def fig_faults(pl, rows):
    """The fault campaign's matrix, one stacked bar per (fault, workload)."""
    lines = [f"{f} / {w}\t" + "\t".join(f"{100.0 * n[v] / max(1, sum(n.values())):.2f}" for v in common.FAULT_VERDICTS)
             for f, w, n in fault_cells(rows)]
    d = pl.data(lines)
    body = (f"set title {q(f'fault campaign: {len(rows)} trials, verdicts per fault and workload')}\n"
            "set style data histogram\nset style histogram rowstacked\n"
            "set style fill solid 0.85 border -1\nset boxwidth 0.8\nset yrange [0:100]\n"
            "set ylabel '% of the trials'\nset xtics rotate by -50 font ',8'\nset bmargin 12\n"
            f"plot {q(d)} using 2:xtic(1) title 'masked' lc rgb '#2ca02c', "
            "'' using 3 title 'clean end (RST, counted)' lc rgb '#1f77b4', "
            "'' using 4 title 'violation' lc rgb '#d62728'")
    pl.draw("faults-matrix.png", body, size="1100,560")


def fig_nospof(pl, rows):
    """Masked share and median extra stall per technique and proxy fault."""
    cells = common.nospof_cells(rows)
    d = pl.data([f"{t} / {f}\t{m:.1f}\t{c:.1f}\t{e if e is not None else 0:.1f}" for t, f, m, c, e in cells])
    body = (f"set title {q('no single point of failure: masked share and extra stall (client pcap)')}\n"
            "set multiplot layout 1,2\n"
            "set style data histogram\nset style histogram cluster gap 1\n"
            "set style fill solid 0.85 border -1\nset boxwidth 0.9\nset xtics rotate by -30 font ',9'\n"
            "set bmargin 8\nset yrange [0:100]\nset ylabel '% of the trials'\n"
            f"plot {q(d)} using 2:xtic(1) title 'masked' lc rgb '#2ca02c', "
            "'' using 3 title 'completed (a browser may reload)' lc rgb '#1f77b4'\n"
            "set yrange [0:*]\nset ylabel 'ms (median)'\n"
            f"plot {q(d)} using 4:xtic(1) title 'extra stall over crash-free' lc rgb '#ff7f0e'\n"
            "unset multiplot")
    pl.draw("nospof-proxy.png", body, size="1100,520")


def fig_wan(pl, rows):
    """Median failover vs RTT, one line per technique, one file per
    workload.  When the profiles pair each RTT with one loss rate the x tics
    name both; when one RTT comes with several loss rates, one file per
    loss rate."""
    for (wl,), wrs in sorted(group(crash_rows(rows), "workload").items()):
        losses = {}
        for r in wrs:
            losses.setdefault(num(r["rtt_ms"]), set()).add(num(r["loss_pct"]) or 0)
        paired = all(len(v) == 1 for v in losses.values())
        parts = [(None, wrs)] if paired else sorted(
            ((num(k[0]) or 0, v) for k, v in group(wrs, "loss_pct").items()), key=lambda kv: kv[0])
        for loss, rs in parts:
            series, allv = [], []
            for t in sorted({r["technique"] for r in rs}, key=technique_order):
                lines = []
                by_rtt = group([r for r in rs if r["technique"] == t and num(r["rtt_ms"]) is not None], "rtt_ms")
                for (rtt,), rr in sorted(by_rtt.items(), key=lambda kv: num(kv[0][0])):
                    err_row(lines, allv, num(rtt), (num(r["failover_ms"]) for r in rr))
                if lines:
                    series.append((t, pl.data(lines)))
            if not series:
                continue
            scale, cols = _yscale(allv)
            plots = ", ".join(f"{q(d)} using {cols} with yerrorlines pt 7 title {q(title_of(t))}"
                              for t, d in series)
            body = "set xlabel 'RTT (ms)'\n"
            if paired:
                what = ""
                tics = ", ".join(f"{q(f'{_g(rtt)} | {_g(min(ls))}%%')} {rtt}" for rtt, ls in sorted(losses.items())
                                 if rtt is not None)
                body = f"set xlabel 'RTT (ms) | loss'\nset xtics ({tics}) rotate by -25\n"
                name = f"wan-failover-rtt-{slug(wl)}.png"
            else:
                what = f", loss {_g(loss)}%"
                name = f"wan-failover-rtt-{slug(wl)}-loss{slug(_g(loss))}.png"
            body = (f"set title {q(f'WAN: failover time vs RTT, {wl}{what} (median, p5-p95)')}\n" + body +
                    "set ylabel 'failover: extra time of the crashed request (ms)'\nset offsets graph 0.03, graph 0.03, 0, 0\n"
                    + scale + f"plot {plots}")
            pl.draw(name, body)


def _g(x):
    """A number without a needless '.0'."""
    return f"{x:g}"


def fig_overhead(pl, rows):
    for (metric, wl), rs in sorted(group(rows, "metric", "workload").items()):
        techs = sorted({r["technique"] for r in rs}, key=technique_order)
        lines = []
        for i, t in enumerate(techs):
            st = stats(num(r["value"]) for r in rs if r["technique"] == t)
            if st["n"]:
                lines.append(f"{i}\t{st['median']}\t{st['p5']}\t{st['p95']}\t{title_of(t)}")
        if not lines:
            continue
        d = pl.data(lines)
        label = {"latency_ms": "latency (ms)", "throughput_mbps": "throughput (Mbit/s)"}.get(metric, metric)
        body = (f"set title {q(f'overhead without crash: {label}, {wl} (median, p5-p95)')}\n"
                f"set ylabel {q(label)}\nset style fill solid 0.6 border -1\nset boxwidth 0.6\n"
                f"set yrange [0:*]\nset xrange [-0.6:{len(techs) - 0.4}]\nset xtics rotate by -25\n"
                f"plot {q(d)} using 1:2:xtic(5) with boxes lc rgb '#1f77b4' notitle, "
                f"'' using 1:2:3:4 with yerrorbars lc rgb 'black' pt 0 notitle")
        pl.draw(f"overhead-{slug(metric)}-{slug(wl)}.png", body)


def fig_timeline(pl, study, sidecar):
    with open(sidecar) as f:
        meta = json.load(f)
    pcap = meta["pcap"]
    if not os.path.isabs(pcap):
        pcap = os.path.join(os.path.dirname(sidecar), pcap)
    segs = read_pcap(pcap)
    server, conns = timeline_series(segs, meta.get("server"))
    name = os.path.basename(sidecar)[:-len(".timeline.json")]
    if not conns:
        print(f"figures: {sidecar}: no data segments from the server in {pcap}", file=sys.stderr)
        pl.failed.append(f"timeline-{study}-{name}.png")
        return
    t0 = min(s["t"] for s in segs)
    top = max(rel for v in conns.values() for _, rel, _ in v)
    unit, div = ("MB", 1e6) if top > 5e6 else ("KB", 1e3) if top > 5e3 else ("bytes", 1)
    plots = []
    for i, (conn, pts) in enumerate(sorted(conns.items())):
        new, again = split_resent(pts)
        d = pl.data(f"{t - t0:.6f}\t{rel / div}" for t, rel in new)
        plots.append(f"{q(d)} using 1:2 with points pt 7 ps 0.4 lc {i + 1} title {q('to ' + conn)}")
        if again:
            d = pl.data(f"{t - t0:.6f}\t{rel / div}" for t, rel in again)
            plots.append(f"{q(d)} using 1:2 with points pt 6 ps 0.5 lc rgb '#999999' "
                         f"title {q('re-sent to ' + conn)}")
    body = []
    marks = meta.get("marks") or {}
    for k, t in sorted(marks.items(), key=lambda kv: kv[1] if kv[1] is not None else 0):
        if t is None:
            continue
        color = MARK_COLORS.get(k, "#555555")
        body.append(f"set arrow from first {t - t0:.6f}, graph 0 to first {t - t0:.6f}, graph 1 "
                    f"nohead lw 1.5 dt 2 lc rgb '{color}'")
        # A title entry per mark so the key explains the lines.
        plots.append(f"NaN with lines lw 1.5 dt 2 lc rgb '{color}' title {q(MARK_TITLES.get(k, k))}")
    if meta.get("xrange"):
        a, b = meta["xrange"]
        # Widen the window to the data segments on either side of it: a
        # crash before a response's first byte leaves none inside.
        times = sorted(t for v in conns.values() for t, _, _ in v)
        a = min([a] + [t for t in times if t <= a][-1:])
        b = max([b] + [t for t in times if t >= b][:1])
        a, b = a - (b - a) * 0.05, b + (b - a) * 0.05
        body.append(f"set xrange [{a - t0:.6f}:{b - t0:.6f}]")
    title = meta.get("title") or name
    body += [f"set title {q(f'timeline: {title} (data from {server})')}",
             "set xlabel 'time since first packet (s)'",
             f"set ylabel {q(f'client-side sequence number, relative ({unit})')}",
             "plot " + ", ".join(plots)]
    pl.draw(f"timeline-{study}-{slug(name)}.png", "\n".join(body))


def sidecars(results, study):
    return sorted(glob.glob(os.path.join(results, study, "**", "*.timeline.json"), recursive=True))


def draw_all(results, plots, work):
    """Draws every figure; returns (plotter, notes about skipped studies)."""
    os.makedirs(plots, exist_ok=True)
    pl = Plotter(plots, work)
    notes = []
    for study in common.STUDIES:
        rows = common.read_rows(results, study)
        if not rows:
            notes.append(f"no results for study {study} ({os.path.join(results, study)}/*.csv): skipped")
        elif study == "faults":
            fig_faults(pl, rows)
        elif study == "nospof":
            fig_nospof(pl, rows)
        elif study in ("failover", "wan"):
            if study == "failover":
                fig_failover(pl, study, rows)
            else:
                fig_wan(pl, rows)
            fig_errors(pl, study, rows)
        else:
            fig_overhead(pl, rows)
        for sc in sidecars(results, study):
            try:
                fig_timeline(pl, study, sc)
            except (OSError, ValueError, KeyError) as e:
                print(f"figures: {sc}: {e}", file=sys.stderr)
                pl.failed.append(os.path.basename(sc))
    return pl, notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=os.environ.get("RS_RESULTS", os.path.join(common.ROOT, "results")))
    ap.add_argument("--plots", default=os.environ.get("RS_PLOTS", os.path.join(common.ROOT, "plots")))
    ap.add_argument("--keep-scripts", metavar="DIR", help="also keep the gnuplot scripts and data here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rs-figures.") as tmp:
        work = a.keep_scripts or tmp
        os.makedirs(work, exist_ok=True)
        pl, notes = draw_all(a.results, a.plots, work)
    for n in notes:
        print(f"figures: {n}", file=sys.stderr)
    for m in pl.made:
        print(os.path.join(a.plots, m))
    print(common.summary(figures=len(pl.made), failed=len(pl.failed), skipped_studies=len(notes),
                         plots=a.plots))
    return 1 if pl.failed else 0


if __name__ == "__main__":
    sys.exit(main())
