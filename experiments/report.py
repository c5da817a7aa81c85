#!/usr/bin/python3
"""Writes results/REPORT.md from the CSVs under results/ and the figures
under plots/: the machine and commit, one table per study, each figure
linked, and a note for every study with no results.  Ends with a `summary:`
line.

Tables (statistics as in experiments/common.py: type-7 percentiles; values
printed with two decimals, "–" when there is no value):
  LAN failover (study failover), one row per workload, action, technique
    over all its rows: trials, ok (trials with ok=1), failover median / p95
    (ms, over the rows with a failover_ms; n of them), errors and re-logins
    (sums over the trials); then one row per workload, action and crash
    point, one column per technique: median failover (completed / trials).
  WAN failover (study wan), one row per workload and profile (with its RTT
    and loss), one column per technique: median failover_ms (n), and the
    median stall_ms (from the client's pcap) when the rows have it.
  Overhead (study overhead), one row per workload, metric, technique:
    median, p5, p95, n.
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import group, natural_key, num, stats, technique_order  # noqa: E402

DASH = "–"


def fmt(x):
    """A table value: two decimals, or a dash for None."""
    return DASH if x is None else f"{x:.2f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def machine_lines(all_rows):
    seen = []
    for r in all_rows:
        m = r.get("machine", "")
        if m and m not in seen:
            seen.append(m)
    out = []
    for m in seen:
        try:
            d = json.loads(m)
            out.append(f"{d.get('host', '?')} (nproc {d.get('nproc', '?')}, kernel {d.get('kernel', '?')})")
        except ValueError:
            out.append(m)
    return out


def lan_table(rows):
    body = []
    keyf = lambda kv: (natural_key(kv[0][0]), natural_key(kv[0][1]), technique_order(kv[0][2]))  # noqa: E731
    for (wl, action, tech), rs in sorted(group(rows, "workload", "action", "technique").items(), key=keyf):
        st = stats(num(r["failover_ms"]) for r in rs)
        body.append([wl, action, tech, len(rs), sum(1 for r in rs if num(r["ok"]) == 1),
                     fmt(st["median"]), fmt(st["p95"]), st["n"],
                     int(sum(num(r["errors"]) or 0 for r in rs)),
                     int(sum(num(r["relogins"]) or 0 for r in rs)),
                     fmt(stats(num(r.get("stall_ms")) for r in rs)["median"])])
    return table(["workload", "action", "technique", "trials", "ok", "failover median (ms)",
                  "failover p95 (ms)", "n", "errors", "re-logins", "stall median (ms)"], body)


def wan_table(rows):
    techs = sorted({r["technique"] for r in rows}, key=technique_order)
    body = []
    groups = group(rows, "workload", "profile")
    for (wl, prof), rs in sorted(groups.items(), key=lambda kv: (natural_key(kv[0][0]),
                                                                 num(kv[1][0]["rtt_ms"]) or 0,
                                                                 num(kv[1][0]["loss_pct"]) or 0,
                                                                 natural_key(kv[0][1]))):
        rtts = sorted({r["rtt_ms"] for r in rs})
        losses = sorted({r["loss_pct"] for r in rs})
        cells = []
        for t in techs:
            st = stats(num(r["failover_ms"]) for r in rs if r["technique"] == t)
            stall = stats(num(r.get("stall_ms")) for r in rs if r["technique"] == t)
            # The stall the client felt, from its pcap: the difference to a
            # crash-free median is noise-dominated at these round trips.
            cells.append(f"{fmt(st['median'])} ({st['n']})"
                         + (f", stall {fmt(stall['median'])}" if stall["n"] else ""))
        body.append([wl, prof, "/".join(rtts), "/".join(losses)] + cells)
    return table(["workload", "profile", "RTT (ms)", "loss (%)"] + techs, body)


def overhead_table(rows):
    body = []
    keyf = lambda kv: (natural_key(kv[0][0]), kv[0][1], technique_order(kv[0][2]))  # noqa: E731
    for (wl, metric, tech), rs in sorted(group(rows, "workload", "metric", "technique").items(), key=keyf):
        st = stats(num(r["value"]) for r in rs)
        body.append([wl, metric, tech, fmt(st["median"]), fmt(st["p5"]), fmt(st["p95"]), st["n"]])
    return table(["workload", "metric", "technique", "median", "p5", "p95", "n"], body)


def point_table(rows):
    """One row per workload, action and crash point, one column per
    technique: median failover (completed trials / trials)."""
    techs = sorted({r["technique"] for r in rows}, key=technique_order)
    body = []
    keyf = lambda kv: tuple(natural_key(k) for k in kv[0])  # noqa: E731
    for (wl, action, point), rs in sorted(group(rows, "workload", "action", "crash_point").items(), key=keyf):
        cells = []
        for t in techs:
            tr = [r for r in rs if r["technique"] == t]
            st = stats(num(r["failover_ms"]) for r in tr)
            cells.append(f"{fmt(st['median'])} ({st['n']}/{len(tr)})" if tr else DASH)
        body.append([wl, action, point] + cells)
    return (["Per crash point: median failover in ms (completed trials / trials).", ""]
            + table(["workload", "action", "crash point"] + techs, body))


def failover_tables(rows):
    return lan_table(rows) + [""] + point_table(rows)


def faults_table(rows):
    """The campaign's matrix (fault x workload: masked / clean end /
    violation), its totals and every violation with its seed."""
    wls = []
    for r in rows:
        if r["workload"] not in wls:
            wls.append(r["workload"])
    faults = []
    for r in rows:
        if r["fault"] not in faults:
            faults.append(r["fault"])
    cell = {(r["fault"], r["workload"]): [0, 0, 0] for r in rows}
    for r in rows:
        cell[(r["fault"], r["workload"])][common.FAULT_VERDICTS.index(r["verdict"])] += 1
    body = [[f] + ["/".join(map(str, cell[(f, w)])) if (f, w) in cell else DASH for w in wls] for f in faults]
    n = {v: sum(r["verdict"] == v for r in rows) for v in common.FAULT_VERDICTS}
    bad = [r for r in rows if r["verdict"] == "violation"]
    out = (["Trials per fault and workload: masked / clean end (a RST from the VIP within 1 s of a fault "
            "that left no backend, counted by the proxy) / violation.", ""]
           + table(["fault"] + wls, body)
           + ["", f"{len(rows)} trials: {n['masked']} masked, {n['clean_end']} clean ends, "
              f"{n['violation']} violations."])
    if bad:
        out += ["", "Violations (rerun one with SEED= and FAULTS=, its logs are kept):", ""]
        out += table(["fault", "workload", "trial", "seed", "reason", "kept"],
                     [[r["fault"], r["workload"], r["trial"], r["seed"], r["reason"], r.get("kept", "")]
                      for r in bad[:20]])
    return out


def nospof_table(rows):
    """Per technique and proxy fault: trials, masked, completed, median
    extra stall."""
    body = [[t, f, str(sum(r["technique"] == t and r["fault"] == f for r in rows)), f"{m:.0f}%", f"{c:.0f}%",
             DASH if e is None else f"{e:.0f}"] for t, f, m, c, e in common.nospof_cells(rows)]
    return (["The active proxy killed (its process) or cut off (its host's interfaces down), or the primary's "
             "application killed and the alternate's 1 s later, during a keep-alive client's download.  Masked: every response complete and right on the connection it "
             "began on, no RST or FIN from the VIP; completed: the action finished at all (the baseline's "
             "client reloads like a browser); extra stall: the client's longest gap between data segments "
             "from the VIP (its own pcap), over the technique's crash-free median.", ""]
            + table(["technique", "fault", "trials", "masked", "completed", "extra stall ms"], body))


TABLES = {"failover": failover_tables, "wan": wan_table, "overhead": overhead_table, "faults": faults_table,
          "nospof": nospof_table}


# One sentence per figure: what it shows (by the start of its name).
CAPTIONS = (
    ("failover-time-", "How much longer the crashed request took than crash-free, per technique and crash "
                       "point (median, p5-p95 bars): what each technique costs the user when a backend dies."),
    ("wan-time-", "The same over the WAN client links."),
    ("failover-errors-", "Errors the client saw and forced re-logins per trial, per technique: what the "
                         "baselines cannot hide and resplice masks."),
    ("wan-errors-", "Errors and forced re-logins per trial over the WAN client links."),
    ("wan-failover-rtt-", "Median failover (p5-p95) against the client link's round trip, per technique: "
                          "whether the advantage holds far from the data center."),
    ("overhead-", "Each action's time (or Action 1's throughput) per technique with no crash: what the "
                  "protection costs while nothing fails."),
    ("nospof-", "The proxy killed or cut off, or two backends killed: per technique, the share of trials "
                "masked and completed, and the extra stall."),
    ("faults-", "Per fault and workload, the share of trials masked, ended cleanly, or violating an "
                "invariant, judged from outside."),
    ("timeline-", "One resplice trial from the client's own pcap: every data segment's sequence number "
                  "over time, re-sent data in grey, with the crash, detection, resend and re-splice marked."),
)


def trials_line(study, rows):
    """How many trials (runs) each cell of the study had, as a sentence."""
    keys = {"failover": ("workload", "technique", "crash_point"), "wan": ("workload", "technique", "profile"),
            "overhead": ("workload", "technique", "metric"), "faults": ("fault", "workload"),
            "nospof": ("technique", "fault")}[study]
    cells = group([r for r in rows if r.get("crash_point") != "none"], *keys)
    n = sorted(len(v) for v in cells.values())
    if not n:
        return ""
    span = str(n[0]) if n[0] == n[-1] else f"{n[0]}–{n[-1]}"
    noun = "trial" if n[-1] == 1 else "trials"
    return f"{span} {noun} per {', '.join(k.replace('_', ' ') for k in keys)} ({len(cells)} cells)."


def caption(name):
    """The sentence REPORT.md puts under figure 'name' (CAPTIONS)."""
    return next((text for prefix, text in CAPTIONS if name.startswith(prefix)), "")


def figures_for(plots, study):
    """PNG files under 'plots' drawn from 'study' (see figures.py names)."""
    if not os.path.isdir(plots):
        return []
    return sorted(n for n in os.listdir(plots) if n.endswith(".png") and
                  (n.startswith(study + "-") or n.startswith(f"timeline-{study}-")))


def shown(path):
    """'path' relative to the repository when inside it, else absolute."""
    p = os.path.abspath(path)
    return os.path.relpath(p, common.ROOT) if p.startswith(common.ROOT + os.sep) else p


def render(results, plots, out):
    """The text of REPORT.md and a dict of counts for the summary line."""
    per = {s: common.read_rows(results, s) for s in common.STUDIES}
    all_rows = [r for rs in per.values() for r in rs]
    outdir = os.path.dirname(os.path.abspath(out))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# resplice experiments: report", "",
             f"Generated {now} by experiments/report.py from `{shown(results)}/` "
             "(regenerate with `make figures`).", ""]
    machines = machine_lines(all_rows)
    lines.append("Machine: " + ("; ".join(machines) if machines else DASH))
    commits = sorted({r.get("commit", "") for r in all_rows if r.get("commit")})
    lines += [f"Commit: {', '.join(commits) if commits else DASH}", ""]
    counts = {"studies": 0, "missing": 0, "rows": len(all_rows), "figures": 0}
    for study in common.STUDIES:
        rows = per[study]
        lines += [f"## {common.STUDY_TITLES[study]} (study `{study}`)", ""]
        if not rows:
            counts["missing"] += 1
            lines += [f"Missing: no results for study `{study}` "
                      f"(`{os.path.relpath(os.path.join(results, study), outdir)}/*.csv` not found); "
                      f"run `{common.STUDY_TARGETS[study]}`.", ""]
            continue
        counts["studies"] += 1
        files = common.study_files(results, study)
        lines += [f"{len(rows)} rows from " + ", ".join(f"`{os.path.relpath(p, outdir)}`" for p in files)
                  + ". " + trials_line(study, rows), ""]
        lines += TABLES[study](rows) + [""]
        figs = figures_for(plots, study)
        counts["figures"] += len(figs)
        if figs:
            lines += ["Figures:", ""]
            for n in figs:
                rel = os.path.relpath(os.path.join(plots, n), outdir)
                lines += [f"- [{n}]({rel}): {caption(n)}", "", f"  ![{n}]({rel})", ""]
        else:
            lines += ["Figures: none drawn yet (run `make figures`).", ""]
    return "\n".join(lines).rstrip() + "\n", counts


def headline(rows):
    """{"<workload>_<technique>_ms": median failover at the workload's
    headline crash point ("none" when no trial completed)} of failover rows."""
    out = {}
    for (wl, tech), rs in sorted(group(rows, "workload", "technique").items(),
                                 key=lambda kv: (kv[0][0], technique_order(kv[0][1]))):
        st = stats(num(r["failover_ms"]) for r in rs if r["crash_point"] == common.HEADLINE.get(wl))
        if any(r["crash_point"] == common.HEADLINE.get(wl) for r in rs):
            out[f"{wl}_{tech.replace('-', '_')}_ms"] = round(st["median"], 2) if st["n"] else "none"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=os.environ.get("RS_RESULTS", os.path.join(common.ROOT, "results")))
    ap.add_argument("--plots", default=os.environ.get("RS_PLOTS", os.path.join(common.ROOT, "plots")))
    ap.add_argument("--out", help="default: RESULTS/REPORT.md")
    ap.add_argument("--headline", choices=("failover", "wan"),
                    help="the summary: line also gives this study's median failover per workload and "
                         "technique at the workload's headline crash point")
    a = ap.parse_args(argv)
    out = a.out or os.path.join(a.results, "REPORT.md")
    text, counts = render(a.results, a.plots, out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    print(out)
    print(common.summary(studies=counts["studies"], missing=counts["missing"], rows=counts["rows"],
                         figures=counts["figures"], report=out,
                         **(headline(common.read_rows(a.results, a.headline)) if a.headline else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
