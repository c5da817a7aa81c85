#!/usr/bin/python3
"""Lab 2, crash a backend mid-download (docs/labs/lab-2.md): `make lab-2`
runs it, `make lab-2-check` checks it.

run:   the LAN testbed with the whole stack; tcpdump on the client (c1);
       curl downloads 40 MB through the VIP at 25 MB/s (its socket buffers
       let it run ahead: about a second), and at a moment drawn from SEED=
       (default 1), 0.1 to 0.35 s after the splice, the harness
       SIGKILLs the primary's rs-app from outside.  Leaves in
       labs/run/lab-2/ (or DIR): client.pcap, proxy.log, logger.log,
       crash.json (when the kill happened, epoch seconds), timeline.png
       (the client's sequence numbers over time with the crash, detection,
       resend and re-splice marked) and answers.txt.  CLI=1 leaves a
       Mininet CLI with the stack running (the alternate serving).
check: that the run shows a masked failover (the whole download, no RST
       or FIN from the VIP before the client's own end, the proxy's hold,
       plan, resend and re-splice of that connection after the kill), then
       that answers.txt matches what the files show.  Exit 0 and "lab-2:
       all observations made", or 1 with what is missing or wrong."""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import pcaps  # noqa: E402
from labs import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "labs", "run", "lab-2")
SIZE = 40_000_000
RATE = "25M"
VIP = "10.0.0.1"
ANSWERS = """# Lab 2: crash a backend mid-download (docs/labs/lab-2.md).  Read
# proxy.log, logger.log, crash.json, client.pcap and timeline.png, fill in
# each line, then run
#   make lab-2-check
# Q1. Milliseconds from the kill (crash.json) to the proxy's hold of the
#     connection (its "step=hold" line), to 0.1 ms:
detect_ms =
# Q2. What told the proxy (the hold line's why=):
detected_by =
# Q3. How many response bytes did the logger send again from its log (the
#     "step=plan" line's resend=[a,b): b - a; 0 when the client had them
#     all, else the "step=resent" line says it too)?
resent_bytes =
# Q4. Milliseconds from the hold to the connection re-spliced to the
#     alternate (the "recovered" line's total_us), to 0.1 ms:
recover_ms =
# Q5. The longest the client waited for a new byte (client.pcap: the gap
#     between segments that brought new data; re-sent data is no progress),
#     to 1 ms:
stall_ms =
"""
LOG_TS = re.compile(r"^(\d+\.\d+) ")


def first(log, pattern):
    """(epoch seconds, match) of the first line of 'log' matching 'pattern'."""
    for line in log.splitlines():
        m = re.search(pattern, line)
        if m:
            return float(LOG_TS.match(line).group(1)), m
    return None, None


def truth(folder):
    """What the run shows (the answers' true values); raises ValueError
    naming what is missing."""
    for f in ("client.pcap", "proxy.log", "crash.json"):
        if not os.path.exists(os.path.join(folder, f)):
            raise ValueError(f"no {f} in {folder}: run make lab-2 first")
    with open(os.path.join(folder, "crash.json")) as f:
        crash = json.load(f)
    if crash.get("t") is None:
        raise ValueError("the harness killed nothing: it never saw the connection spliced")
    with open(os.path.join(folder, "proxy.log")) as f:
        plog = f.read()
    t_hold, hold = first(plog, r"recover id=(\d+) client=(\S+) backend=\S+ step=hold why=(\S+)")
    if not hold:
        raise ValueError("proxy.log has no step=hold: the proxy never held a connection")
    cid, client = hold.group(1), hold.group(2)
    if t_hold < crash["t"]:
        raise ValueError("the proxy held the connection before the kill: not this crash")
    _, plan = first(plog, rf"recover id={cid} client=\S+ step=plan status=0 .* resend=\[(\d+),(\d+)\)")
    _, done = first(plog, rf"recovered id={cid} .*total_us=(\d+)")
    if not plan or not done:
        raise ValueError(f"proxy.log lacks the {'plan' if not plan else 're-splice'} of connection {cid}")
    port = int(client.rsplit(":", 1)[1])
    end = pcaps.ends(os.path.join(folder, "client.pcap"), VIP).get(client.replace(":", "."), {})
    if "client_syn" not in end:
        raise ValueError(f"client.pcap has no connection from {client}")
    for what in ("server_rst", "server_fin"):
        if what in end and end[what] < end.get("client_end", float("inf")):
            raise ValueError(f"the VIP ended the client's connection ({what}) before the client did: not masked")
    if crash.get("size") != SIZE:
        raise ValueError(f"the client got {crash.get('size')} bytes, not {SIZE}")
    stall = pcaps.stall_ms(os.path.join(folder, "client.pcap"), port, end["client_syn"], end.get("client_end", 1e12))
    return {"detect_ms": (t_hold - crash["t"]) * 1000, "detected_by": hold.group(3),
            "resent_bytes": (int(plan.group(2)) - int(plan.group(1))) % (1 << 32),
            "recover_ms": int(done.group(1)) / 1000, "stall_ms": stall}


TOLERANCE = {"detect_ms": 0.1, "recover_ms": 0.1, "stall_ms": 1.0}


def check(folder):
    return common.check("lab-2", folder, truth, "a masked failover", TOLERANCE)


def run(folder, seed):
    from emul.shaping import wait_until
    from emul.stack import Stack
    from emul.testbed import Testbed
    from topologies.lan import LanTopo
    moment = random.Random(seed).uniform(0.1, 0.35)
    with common.fresh("lab-2", folder) as scratch, Testbed(LanTopo(), scratch.path) as tb:
        work = scratch.path
        stack = Stack(tb, work).start()
        cap, pcap = tb.capture("c1", "client", bpf_filter="tcp port 80", snaplen=96)
        crash = {}
        curl = tb["c1"].popen(["curl", "-sf", "--limit-rate", RATE, "-o", "/dev/null", "-w", "%{size_download}",
                               f"http://{stack.vip}/static/{SIZE}.jpg?seed=9"], stdout=subprocess.PIPE, text=True)
        # The moment counts from the splice, not from curl's start (a busy
        # machine may take longer than the moment to start it).
        if wait_until(lambda: stack.splices() > 0, 10):
            time.sleep(moment)
            crash.update(t=time.time(), mono=stack.kill_primary())
        out, _ = curl.communicate(timeout=120)
        time.sleep(0.2)
        tb.stop_capture(cap)
        shutil.copy(pcap, os.path.join(folder, "client.pcap"))
        for name in ("proxy", "logger"):
            with open(os.path.join(folder, f"{name}.log"), "w") as f:
                f.write(stack.log(name))
        size = int(out.strip()) if out.strip().isdigit() else None
        with open(os.path.join(folder, "crash.json"), "w") as f:
            json.dump({"t": crash.get("t"), "seed": seed, "moment_s": round(moment, 3), "size": size}, f)
            f.write("\n")
        print(f"lab-2: c1 downloaded {size} of {SIZE} bytes; the primary's rs-app was killed {moment:.3f} s after "
              "the splice")
        common.offer_cli(tb, "the stack running, the alternate serving")
        stack.stop()
    with open(os.path.join(folder, "proxy.log")) as f:
        plog = f.read()
    side = os.path.join(folder, ".sidecar")
    common.write_sidecar(side, "lab-2", os.path.join(folder, "client.pcap"), VIP,
                         "lab 2: the primary killed mid-download",
                         {"crash": crash.get("t"), "detect": first(plog, r"step=hold")[0],
                          "resend": first(plog, r"step=resent")[0], "resplice": first(plog, r"recovered id=")[0]})
    common.draw_timeline(folder, side, "lab-2", os.path.join(folder, "timeline.png"))
    shutil.rmtree(side, ignore_errors=True)
    common.hand_over("lab-2", folder, ANSWERS)


def main():
    return common.main(__doc__, lambda d: run(d, int(os.environ.get("SEED", "1"))), check, RUN)


if __name__ == "__main__":
    sys.exit(main())
