"""Configuration files for the failover baselines, written as an operator
would write them: HAProxy with health checks + redispatch + L7 retries
(default and tuned timers), a plain round-robin HAProxy (no checks, no
retries) for the browser-retry baseline, and keepalived VRRP pairs for VIP takeover (advert 1 s and 100 ms).

Each generator returns the file's text; config_record() gives the settings
to store in a CSV row's config column.  Checked by the test against the real
checkers: `haproxy -c -f FILE` and `keepalived -t -f FILE` (Debian 12:
HAProxy 2.6, keepalived 2.2.7).

What the checkers taught (keepalived 2.2.7):
- advert_int below 1 s needs VRRPv3 ("version 3"); v3 counts in centiseconds
  (0.01 .. 40.95 s); VRRPv2 rounds 0.1 to an integer and warns.
- vrrp_script "interval" is whole seconds (>= 1), so a scripted service check
  cannot notice a dead service faster than 1 s; vrrp_track_process is told
  by the kernel (proc connector) when the process exits, so it is the fast
  local check.  A whole host going down is noticed only by missing adverts:
  master down interval = 3 * advert_int + skew, skew = (256 - priority) / 256
  * advert_int.
- `keepalived -t` checks that the interface exists and exits 5 on any
  warning; it starts nothing.
"""

# HAProxy health-check timers.  "default" is what an operator gets by adding
# `check` (inter 2s fall 3 rise 2 are HAProxy's defaults, written out);
# "tuned" is an aggressive but common production setting.
HAPROXY_TIMERS = {
    "default": {"inter": "2s", "fall": 3, "rise": 2},
    "tuned": {"inter": "100ms", "fall": 2, "rise": 1},
}

# Debian's /etc/haproxy/haproxy.cfg timeouts, kept for both timer sets so
# the health checks are the only difference.
HAPROXY_TIMEOUTS = {"connect": "5s", "client": "50s", "server": "50s", "check": "2s"}
HAPROXY_TUNED_TIMEOUTS = {"connect": "5s", "client": "50s", "server": "50s", "check": "100ms"}

# keepalived advert intervals: the default (VRRPv2, 1 s) and tuned (VRRPv3,
# 100 ms).
VRRP_ADVERT = {
    "default": {"version": 2, "advert_int": 1},
    "tuned": {"version": 3, "advert_int": 0.1},
}



def _servers(servers):
    """[(name, "ip:port")] from a list of such pairs or of "ip:port" strings
    (named primary, alternate, backend3 ...).  ValueError when empty."""
    out = []
    for i, s in enumerate(servers):
        if isinstance(s, str):
            name = ("primary", "alternate")[i] if i < 2 else f"backend{i + 1}"
            out.append((name, s))
        else:
            out.append((str(s[0]), str(s[1])))
    if not out:
        raise ValueError("need at least one server")
    for _, addr in out:
        if ":" not in addr:
            raise ValueError(f"server address {addr!r} needs ip:port")
    return out


def _global(log, stats_socket, maxconn):
    g = ["global", f"    maxconn {maxconn}"]
    if log == "stdout":
        # The driver runs haproxy -db inside a Mininet host and reads
        # "Server be/primary is DOWN" from stdout to time detection.
        g.append("    log stdout format raw local0 info")
    if stats_socket:
        g.append(f"    stats socket {stats_socket} mode 600 level admin")
    return g


def haproxy_cfg(vip, servers, port=80, timers="default", check_path="/", check_host="localhost",
                sticky=True, backup=True, redispatch=True, retries=3,
                retry_on="all-retryable-errors", timeouts=None, log="stdout",
                stats_socket=None, maxconn=4096):
    """HAProxy in front of 'servers' (first = primary) on 'vip':'port', mode
    http, every server with `check`, option redispatch, retries and retry-on.
    'timers' is "default", "tuned" or a dict like HAPROXY_TIMERS' values.
    'sticky' inserts a server cookie (session affinity, as Roundcube's
    per-backend sessions need); 'backup' marks every server but the first
    as backup (active/standby, like resplice's primary/alternate) instead of
    round robin."""
    t = HAPROXY_TIMERS[timers] if isinstance(timers, str) else dict(timers)
    to = dict(timeouts or (HAPROXY_TUNED_TIMEOUTS if timers == "tuned" else HAPROXY_TIMEOUTS))
    srv = _servers(servers)
    lines = _global(log, stats_socket, maxconn)
    lines += ["", "defaults", "    mode http"]
    if log:
        lines += ["    log global", "    option httplog"]
    lines += [f"    timeout {k} {to[k]}" for k in ("connect", "client", "server", "check") if k in to]
    lines.append(f"    retries {int(retries)}")
    if redispatch:
        # Retry a failed connection on another server instead of the dead one.
        lines.append("    option redispatch")
    if retry_on:
        lines.append(f"    retry-on {retry_on}")
    lines += ["", "frontend fe", f"    bind {vip}:{port}", "    default_backend be",
              "", "backend be", "    balance roundrobin"]
    if sticky:
        lines.append("    cookie SRV insert indirect nocache")
    lines += ["    option httpchk",
              f"    http-check send meth GET uri {check_path} ver HTTP/1.1 hdr Host {check_host}",
              "    http-check expect status 200-399",
              f"    default-server inter {t['inter']} fall {int(t['fall'])} rise {int(t['rise'])}"]
    for i, (name, addr) in enumerate(srv):
        s = f"    server {name} {addr} check"
        if sticky:
            s += f" cookie {name}"
        if backup and i > 0:
            s += " backup"
        lines.append(s)
    return "\n".join(lines) + "\n"


def plain_proxy_cfg(vip, servers, port=80, mode="tcp", log="stdout", timeouts=None,
                    stats_socket=None, maxconn=4096):
    """The proxy of the browser-retry baseline: HAProxy round robin over
    'servers' with no health checks, no redispatch and no retries, so the
    only recovery is the browser's own reload on a new connection.  In
    'mode' "tcp" each new connection goes to the next server and a
    persistent connection stays on its server (a user keeps his session
    until the crash; without a shared session store the move means logging
    in again); "http" balances per request, preferring the last server."""
    if mode not in ("tcp", "http"):
        raise ValueError(f"mode {mode!r}: tcp or http")
    to = dict(timeouts or HAPROXY_TIMEOUTS)
    srv = _servers(servers)
    lines = _global(log, stats_socket, maxconn)
    lines += ["", "defaults", f"    mode {mode}"]
    if log:
        lines += ["    log global", f"    option {'tcplog' if mode == 'tcp' else 'httplog'}"]
    lines += [f"    timeout {k} {to[k]}" for k in ("connect", "client", "server") if k in to]
    lines += ["    retries 0",
              "", "frontend fe", f"    bind {vip}:{port}", "    default_backend be",
              "", "backend be", "    balance roundrobin"]
    if mode == "http":
        lines.append("    option prefer-last-server")
    for name, addr in srv:
        lines.append(f"    server {name} {addr}")
    return "\n".join(lines) + "\n"


def _fmt_advert(v):
    return str(int(v)) if float(v) == int(v) else f"{float(v):.2f}".rstrip("0")


def keepalived_conf(state, interface, vip, priority=None, advert="default", vrid=51,
                    prefix_len=8, src_ip=None, peers=(), track_process=None,
                    check_script=None, check_interval=1, router_id=None, nopreempt=False):
    """keepalived.conf for one VRRP node: 'state' "MASTER" or "BACKUP",
    holding 'vip'/'prefix_len' on 'interface'.  'advert' is "default"
    (VRRPv2, 1 s), "tuned" (VRRPv3, 100 ms) or a dict like VRRP_ADVERT's
    values.  'peers' (with 'src_ip') switches to unicast adverts.  The local
    service check is 'track_process' (a process name: the node goes to FAULT
    as soon as it exits) and/or 'check_script' (a command run every
    'check_interval' whole seconds).  ValueError for a bad state, an
    advert outside keepalived's range or a sub-second VRRPv2 advert."""
    state = state.upper()
    if state not in ("MASTER", "BACKUP"):
        raise ValueError(f"state {state!r}: MASTER or BACKUP")
    a = VRRP_ADVERT[advert] if isinstance(advert, str) else dict(advert)
    adv, ver = float(a["advert_int"]), int(a.get("version", 2))
    if ver == 2 and adv != int(adv):
        raise ValueError(f"advert_int {adv}: VRRPv2 takes whole seconds; use version 3")
    if not (0.01 <= adv <= 40.95 if ver == 3 else 1 <= adv <= 255):
        raise ValueError(f"advert_int {adv} outside VRRPv{ver}'s range")
    if int(check_interval) != check_interval or check_interval < 1:
        raise ValueError("vrrp_script interval is whole seconds, at least 1")
    if priority is None:
        priority = 150 if state == "MASTER" else 100
    if nopreempt and state != "BACKUP":
        raise ValueError("keepalived honours nopreempt only with state BACKUP")
    rid = router_id or f"rs_{state.lower()}"
    lines = ["global_defs {", f"    router_id {rid}"]
    if check_script:
        lines += ["    enable_script_security", "    script_user root"]
    lines += ["}"]
    if track_process:
        lines += ["", "vrrp_track_process chk_proc {", f"    process {track_process}",
                  "    quorum 1", "}"]
    if check_script:
        lines += ["", "vrrp_script chk_svc {", f"    script \"{check_script}\"",
                  f"    interval {int(check_interval)}", "    fall 1", "    rise 1", "}"]
    lines += ["", "vrrp_instance VI_1 {", f"    state {state}", f"    interface {interface}",
              f"    virtual_router_id {int(vrid)}", f"    priority {int(priority)}",
              f"    version {ver}", f"    advert_int {_fmt_advert(adv)}"]
    if nopreempt:
        lines.append("    nopreempt")
    if peers:
        if not src_ip:
            raise ValueError("unicast peers need src_ip")
        lines.append(f"    unicast_src_ip {src_ip}")
        lines += ["    unicast_peer {"] + [f"        {p}" for p in peers] + ["    }"]
    lines += ["    virtual_ipaddress {", f"        {vip}/{int(prefix_len)} dev {interface}", "    }"]
    if track_process:
        lines += ["    track_process {", "        chk_proc", "    }"]
    if check_script:
        lines += ["    track_script {", "        chk_svc", "    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def keepalived_pair(vip, master, backup, advert="default", vrid=51, prefix_len=8,
                    track_process=None, check_script=None, unicast=True):
    """(master_text, backup_text) for a VRRP pair.  'master' and 'backup'
    are (interface, ip) of each node; with 'unicast' the nodes advertise to
    each other's ip instead of the VRRP multicast group."""
    (mi, mip), (bi, bip) = master, backup
    common = dict(advert=advert, vrid=vrid, prefix_len=prefix_len,
                  track_process=track_process, check_script=check_script)
    m = keepalived_conf("MASTER", mi, vip, priority=150, router_id="rs_master",
                        src_ip=mip if unicast else None, peers=(bip,) if unicast else (), **common)
    b = keepalived_conf("BACKUP", bi, vip, priority=100, router_id="rs_backup",
                        src_ip=bip if unicast else None, peers=(mip,) if unicast else (), **common)
    return m, b


def master_down_ms(advert="default", priority=100):
    """VRRP's master down interval (RFC 5798 / 3768) for a backup of
    'priority', in ms: how long after the last advert it takes over."""
    a = VRRP_ADVERT[advert] if isinstance(advert, str) else dict(advert)
    adv = float(a["advert_int"])
    return (3 * adv + (256 - priority) / 256 * adv) * 1000


def haproxy_detect_ms(timers="default"):
    """Worst-case time for HAProxy to mark a dead server DOWN: fall
    consecutive failed checks 'inter' apart (check timeouts aside), ms."""
    t = HAPROXY_TIMERS[timers] if isinstance(timers, str) else dict(timers)
    return haproxy_ms(t["inter"]) * int(t["fall"])


def haproxy_ms(v):
    """HAProxy time ("100ms", "2s", "1m", "250" = ms) in ms."""
    s = str(v).strip()
    for suf, mul in (("us", 0.001), ("ms", 1), ("s", 1000), ("m", 60000), ("h", 3600000)):
        if s.endswith(suf) and s[:-len(suf)].replace(".", "", 1).isdigit():
            return float(s[:-len(suf)]) * mul
    return float(s)


# Technique name (experiments/common.TECHNIQUES) -> its baseline settings.
TECHNIQUE_SETTINGS = {
    "none": {"proxy": None},
    "browser": {"proxy": "plain", "proxy_mode": "tcp", "shared_sessions": False},
    "browser-shared": {"proxy": "plain", "proxy_mode": "tcp", "shared_sessions": True},
    "haproxy": {"proxy": "haproxy", "timers": "default", **HAPROXY_TIMERS["default"]},
    "haproxy-tuned": {"proxy": "haproxy", "timers": "tuned", **HAPROXY_TIMERS["tuned"]},
    "vrrp": {"vrrp": "keepalived", "advert": "default", **VRRP_ADVERT["default"]},
    "vrrp-tuned": {"vrrp": "keepalived", "advert": "tuned", **VRRP_ADVERT["tuned"]},
    "resplice": {"proxy": "resplice"},
    "resplice-nostate": {"proxy": "resplice", "state": None},
}


def config_record(technique, **extra):
    """The settings of 'technique' as a dict for a CSV row's config column
    (merged with 'extra'); KeyError for an unknown technique."""
    d = {"technique": technique, **TECHNIQUE_SETTINGS[technique]}
    d.update(extra)
    return d
