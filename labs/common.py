"""What the labs share: the student's answers.txt, grading them against
what a run shows, drawing a failover timeline, and the command line."""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_answers(folder):
    """{key: value as written} of the filled-in 'key = value' lines of
    folder/answers.txt (comments and blank answers left out)."""
    out = {}
    path = os.path.join(folder, "answers.txt")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                k, eq, v = line.partition("=")
                if eq and not line.lstrip().startswith("#") and v.strip():
                    out[k.strip()] = v.strip()
    return out


def right(answer, want, tolerance=0.0):
    """Whether the written 'answer' is 'want': a number within 'tolerance'
    (integers exactly, modulo nothing), or the same word, case aside."""
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        try:
            return abs(float(answer) - want) <= tolerance
        except ValueError:
            return False
    return answer.lower() == str(want).lower()


def grade(lab, folder, truth, tolerance=None, normalize=None):
    """Prints one line per question (right / not answered yet / not what
    the run shows) and the verdict; returns the exit status.  'normalize':
    {key: function of the written answer} before comparing (e.g. modulo 2^32)."""
    got, bad = read_answers(folder), 0
    for k, want in truth.items():
        if k not in got:
            print(f"  {k}: not answered yet (answers.txt)")
        elif right(str((normalize or {}).get(k, str)(got[k])), want, (tolerance or {}).get(k, 0.0)):
            print(f"  {k}: right")
            continue
        else:
            print(f"  {k}: {got[k]} is not what the run shows; look again")
        bad += 1
    if bad:
        return 1
    print(f"{lab}: all observations made")
    return 0


def check(lab, folder, truth_of, shows, tolerance=None, normalize=None):
    """make lab-N-check: 'truth_of(folder)' is what the run shows (it raises
    ValueError naming what the run lacks: "the run does not show 'shows'")."""
    try:
        truth = truth_of(folder)
    except ValueError as e:
        print(f"{lab}: the run does not show {shows}: {e}")
        return 1
    print(f"{lab}: the run shows {shows}")
    return grade(lab, folder, truth, tolerance, normalize)


def draw_timeline(folder, sidecar_dir, name, out_png):
    """Draws experiments/figures.py's timeline of sidecar 'name' (its
    .timeline.json and pcap in 'sidecar_dir') into 'out_png'; True when it did."""
    fig = os.path.join(folder, ".figure")
    shutil.rmtree(fig, ignore_errors=True)
    shutil.copytree(sidecar_dir, os.path.join(fig, "failover"))
    subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "figures.py"), "--results", fig,
                    "--plots", fig], capture_output=True, text=True)
    png = os.path.join(fig, f"timeline-failover-{name}.png")
    done = os.path.exists(png)
    if done:
        shutil.move(png, out_png)
    shutil.rmtree(fig, ignore_errors=True)
    return done


def write_sidecar(folder, name, pcap, server, title, marks):
    """A figures.py timeline sidecar for 'pcap' (copied in) with 'marks'
    (epoch seconds, None left out) in 'folder'."""
    os.makedirs(folder, exist_ok=True)
    shutil.copy(pcap, os.path.join(folder, f"{name}.pcap"))
    t = [v for v in marks.values() if v]
    meta = {"pcap": f"{name}.pcap", "server": server, "title": title,
            "marks": {k: v for k, v in marks.items() if v}}
    if t:
        meta["xrange"] = [min(t) - 0.03, max(t) + 0.03]
    with open(os.path.join(folder, f"{name}.timeline.json"), "w") as f:
        json.dump(meta, f)


def fresh(lab, folder):
    """Empties 'folder' for a new run of 'lab'; returns the testbed's scratch
    directory under /tmp, open to all (experiments/common.py's WorkDir: gone
    at the end unless KEEP=1 or the run failed)."""
    from experiments.common import WorkDir
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return WorkDir(f"rs-{lab}-")


def offer_cli(tb, what):
    """CLI=1: a Mininet CLI on testbed 'tb' before it goes ('what': what is
    running, said first)."""
    if os.environ.get("CLI") == "1":
        from mininet.cli import CLI
        print(f"Mininet CLI with {what} (exit to end)")
        CLI(tb.net)


def hand_over(lab, folder, answers):
    """Writes the questions (folder/answers.txt) and says what to do next."""
    with open(os.path.join(folder, "answers.txt"), "w") as f:
        f.write(answers)
    files = ", ".join(sorted(n for n in os.listdir(folder) if n != "answers.txt"))
    print(f"{lab}: in {os.path.relpath(folder)}: {files}; answer the questions in "
          f"{os.path.relpath(os.path.join(folder, 'answers.txt'))}, then make {lab}-check")


def main(doc, run, check_fn, default_dir):
    """The labs' command line: run | check [--dir DIR]."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("what", choices=("run", "check"))
    ap.add_argument("--dir", default=default_dir)
    a = ap.parse_args()
    if a.what == "run":
        run(a.dir)
        return 0
    return check_fn(a.dir)
