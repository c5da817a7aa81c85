#!/usr/bin/python3
"""Lab 5, an email and a re-run (docs/labs/lab-5.md): `make lab-5` runs it,
`make lab-5-check` checks it.

run:   Roundcube behind resplice (the paper's setup: dovecot and rs-smtpd on
       the mail store, rs-auxlog between the backends and it), the client
       running Action 2 (log in, compose, send to bob, log out); the
       primary dies right after its send request ran (rs-front --crash-at
       12+0: the mail went out, no byte of the response did), so the
       alternate runs the send again.  Twice: with rs-auxlog, and with the
       backends talking to the mail store directly.  Leaves in
       labs/run/lab-5/ (or DIR): counts.json (the messages bob's INBOX and
       alice's Sent gained in each run), auxlog.log, client-auxlog.csv,
       client-direct.csv, proxy-auxlog.log, proxy-direct.log, answers.txt.
check: that the run shows it (both clients completed Action 2 on one
       connection; with rs-auxlog bob got the message once and the auxlog
       answered the re-run's SMTP from its record; without, more than
       once), then that answers.txt matches.  Exit 0 and "lab-5: all
       observations made", or 1."""
import csv
import json
import os
import re
import shutil
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labs import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "labs", "run", "lab-5")
SEND = 12           # Action 2's send POST
ANSWERS = """# Lab 5: an email and a re-run (docs/labs/lab-5.md).  Read counts.json,
# auxlog.log and the proxies' logs, fill in each line, then run
#   make lab-5-check
# Q1. How many copies of alice's message did bob get with rs-auxlog?
copies_with_auxlog =
# Q2. And with the backends talking to the mail store directly?
copies_without_auxlog =
# Q3. Which transaction's SMTP conversation did rs-auxlog answer from its
#     record (the number after '#' in its "replay smtp" line)?
replayed_transaction =
# Q4. Did the client see an error in either run (yes or no)?
client_saw_error =
"""


def truth(folder):
    for f in ("counts.json", "auxlog.log", "client-auxlog.csv", "client-direct.csv"):
        if not os.path.exists(os.path.join(folder, f)):
            raise ValueError(f"no {f} in {folder}: run make lab-5 first")
    with open(os.path.join(folder, "counts.json")) as f:
        counts = json.load(f)
    errors = False
    for run in ("auxlog", "direct"):
        with open(os.path.join(folder, f"client-{run}.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or {r["result"] for r in rows} != {"ok"} or len({r["local_port"] for r in rows}) != 1:
            errors = True
    if errors:
        raise ValueError("a client did not complete Action 2 on one connection: the failover was not masked")
    with open(os.path.join(folder, "auxlog.log")) as f:
        m = re.search(r"replay smtp backend=\S+ txn=\S+#(\d+) ", f.read())
    if not m:
        raise ValueError("auxlog.log has no replay of an SMTP conversation: the send was not re-run")
    if counts["auxlog"]["bob"] != 1:
        raise ValueError(f"with rs-auxlog bob got {counts['auxlog']['bob']} messages, not 1")
    if counts["direct"]["bob"] < 2:
        raise ValueError(f"without rs-auxlog bob got {counts['direct']['bob']} messages: the re-run sent none")
    return {"copies_with_auxlog": counts["auxlog"]["bob"], "copies_without_auxlog": counts["direct"]["bob"],
            "replayed_transaction": int(m.group(1)), "client_saw_error": "no"}


def check(folder):
    return common.check("lab-5", folder, truth, "a re-run send: once with rs-auxlog, twice without")


def run(folder):
    from emul.places import binary
    from emul.testbed import Testbed
    from roundcube.deploy import AuxLog, MailStore, ResplicedRoundcube, count_messages
    from topologies.lan import LanTopo
    trace = os.path.join(ROOT, "roundcube", "traces", "action2.trace")
    counts = {}
    # The testbed under /tmp, open to all (common.fresh): dovecot runs as another user.
    with common.fresh("lab-5", folder) as work, Testbed(LanTopo(), os.path.join(work.path, "run")) as tb:
        run_dir = os.path.join(work.path, "run")
        ms = MailStore(tb, run_dir).start()
        aux = AuxLog(tb, run_dir).start()
        for name, kw in (("auxlog", {"aux": aux}), ("direct", {"auxlog": False})):
            before = (count_messages(run_dir, "bob"), count_messages(run_dir, "alice", "Sent"))
            rr = ResplicedRoundcube(tb, run_dir, crash_at=f"{SEND}+0", mailstore=ms, **kw).start()
            crashed = {}
            killer = threading.Thread(target=lambda: crashed.update(t=rr.crash(60)), daemon=True)
            killer.start()
            out = os.path.join(folder, f"client-{name}.csv")
            d = tb.start("c1", f"client-{name}", [binary("rs-client"), "--server", rr.vip, "--trace", trace,
                                                  "--csv", out, "--timeout", "10s"])
            d.popen.wait(90)
            killer.join(60)
            with open(os.path.join(folder, f"proxy-{name}.log"), "w") as f:
                f.write(rr.stack.log("proxy"))
            rr.stop()
            counts[name] = {"bob": count_messages(run_dir, "bob") - before[0],
                            "alice_sent": count_messages(run_dir, "alice", "Sent") - before[1],
                            "crashed": crashed.get("t") is not None}
            print(f"lab-5: {name}: bob's INBOX +{counts[name]['bob']}, alice's Sent +{counts[name]['alice_sent']}")
        shutil.copy(aux.d.err, os.path.join(folder, "auxlog.log"))
    with open(os.path.join(folder, "counts.json"), "w") as f:
        json.dump(counts, f, indent=1)
        f.write("\n")
    common.hand_over("lab-5", folder, ANSWERS)


def main():
    return common.main(__doc__, run, check, RUN)


if __name__ == "__main__":
    sys.exit(main())
