#!/usr/bin/python3
"""Lab 3, the seed's recovery arithmetic (docs/labs/lab-3.md): `make lab-3`
runs it, `make lab-3-check` checks it.

run:   the LAN testbed with the whole stack; one client connection sends six
       counter updates (POST /counter) and reads the counter.  After the
       alternate has the state of update #1, the harness freezes the
       primary's rs-stated (SIGSTOP: the states of #2 and #3 stay on the
       primary, the alternate lags), then SIGKILLs the primary's rs-app
       after response #3: the logger must replay [TR, TL] on the alternate
       before the client's next request runs there.  Leaves in
       labs/run/lab-3/ (or DIR): client.csv (what the client saw: each
       response checked, counter=1..6), proxy.log, logger.log,
       stated-alternate.log and answers.txt.
check: that the run shows a recovery with replays (every response as
       expected, the logger's recover line with TL and TA, the proxy's
       plan with Tsp, TR and the replayed count, TR <= TL), then that
       answers.txt matches it.  Exit 0 and "lab-3: all observations made",
       or 1 with what is missing or wrong."""
import csv
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labs import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "labs", "run", "lab-3")
TRACE = "".join(f"request POST /counter\n  expect contains \"counter={n}\"\n" + ("think 300ms\n" if n in (2, 4) else "")
                for n in range(1, 7)) + "request GET /counter\n  expect contains \"counter=6\"\n"
ANSWERS = """# Lab 3: the seed's recovery arithmetic (docs/labs/lab-3.md).  Read
# logger.log, proxy.log, stated-alternate.log and client.csv, fill in each
# line, then run
#   make lab-3-check
# Transactions are numbered per connection from 0 (the "#n" in the logs).
# Q1. TL: the last transaction whose response the logger had whole:
tl =
# Q2. TA: the last transaction whose state the alternate had applied:
ta =
# Q3. TR: the transaction the alternate starts executing at (seed eq. for TR):
tr =
# Q4. Tsp: the transaction at which the client is re-spliced to the alternate:
tsp =
# Q5. How many transactions did the logger replay on the alternate?
replayed =
# Q6. Equation 1, AckcL <= AckTL + p: does it hold here (yes or no)?
equation1 =
# Q7. The counter the client read at the end:
counter =
"""


def grab(text, pattern, what):
    m = re.search(pattern, text)
    if not m:
        raise ValueError(f"no {what}")
    return m


def truth(folder):
    for f in ("client.csv", "proxy.log", "logger.log"):
        if not os.path.exists(os.path.join(folder, f)):
            raise ValueError(f"no {f} in {folder}: run make lab-3 first")
    with open(os.path.join(folder, "client.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 7 or any(r["result"] != "ok" for r in rows):
        raise ValueError(f"the client did not get its 7 responses as expected ({[r['result'] for r in rows]})")
    if len({r["local_port"] for r in rows}) != 1:
        raise ValueError("the client had to open a new connection: not masked")
    with open(os.path.join(folder, "logger.log")) as f:
        llog = f.read()
    with open(os.path.join(folder, "proxy.log")) as f:
        plog = f.read()
    rec = grab(llog, r"recover client=\S+ .* has_ts=\d+ ts=(\d+) has_ta=(\d+) ta=(\d+) tl=(\d+)",
               "recover line in logger.log")
    plan = grab(plog, r"step=plan status=0 tl=(\d+) tsp=(\d+) tr=(\d+) replayed=(\d+) ack_tl=(\d+) p=(\d+) "
                      r"ackcl=(\d+)", "successful plan in proxy.log")
    tl, tsp, tr, replayed, ack_tl, p, ackcl = (int(x) for x in plan.groups())
    if int(rec.group(4)) != tl:
        raise ValueError("the logger's TL and the proxy's plan disagree")
    if not replayed or tr > tl:
        raise ValueError(f"no transaction was replayed (TR={tr}, TL={tl}): the alternate did not lag")
    holds = (ack_tl + p - ackcl) % (1 << 32) < (1 << 31)      # AckcL <= AckTL + p, in sequence space
    return {"tl": tl, "ta": int(rec.group(3)), "tr": tr, "tsp": tsp, "replayed": replayed,
            "equation1": "yes" if holds else "no", "counter": 6}


def check(folder):
    return common.check("lab-3", folder, truth, "a recovery with replays, every update applied once")


def run(folder):
    from emul.places import binary
    from emul.stack import Stack
    from emul.testbed import Testbed, file_contains
    from topologies.lan import LanTopo
    with common.fresh("lab-3", folder) as scratch, Testbed(LanTopo(), scratch.path) as tb:
        work = scratch.path
        # A frozen rs-stated sends no heartbeats: the logger waits 3 s
        # before it calls that a failure (the SIGKILL is found long before).
        stack = Stack(tb, work, dead_after="3s").start()
        stated = stack.d["stated-primary"]
        trace = os.path.join(work, "lab-3.trace")
        with open(trace, "w") as f:
            f.write(TRACE)
        out = os.path.join(folder, "client.csv")
        client = tb.start("c1", "client", [binary("rs-client"), "--server", stack.vip, "--trace", trace,
                                           "--csv", out, "--timeout", "10s"])
        tb.crash_when(lambda: file_contains(client.err, "step=1 response")
                      and re.search(r"update \S+#1 ", stack.log("stated-alternate")),
                      lambda: stated.popen.send_signal(signal.SIGSTOP), timeout=30)
        tb.crash_when(lambda: file_contains(client.err, "step=3 response"),
                      lambda: (time.sleep(0.1), stack.kill_primary()), timeout=30)
        client.popen.wait(60)
        stated.popen.send_signal(signal.SIGCONT)
        for name, log in (("proxy", "proxy"), ("logger", "logger"), ("stated-alternate", "stated-alternate")):
            with open(os.path.join(folder, f"{name}.log"), "w") as f:
                f.write(stack.log(log))
        print(f"lab-3: the client's run ended with status {client.popen.returncode}")
        common.offer_cli(tb, "the stack running, the alternate serving")
        stack.stop()
    common.hand_over("lab-3", folder, ANSWERS)


def main():
    return common.main(__doc__, run, check, RUN)


if __name__ == "__main__":
    sys.exit(main())
