#!/usr/bin/python3
"""Runs resplice's test suites and prints one closing line
"N passed, N failed, N skipped".

Suites: unit (cmocka binaries built under ASan+UBSan), fuzz (each libFuzzer
target for a bounded time, starting from its seed corpus), integration
(Python unittest modules in tests/integration; those that build a testbed
need root, the others run without it).

Honest by construction: a skipped test, or a suite with nothing to run,
fails the run (exit status 1) with the reasons listed, so a run that did
not test something never reads as green.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Tally:
    def __init__(self):
        self.passed = self.failed = 0
        self.skipped = {}       # reason -> count

    def skip(self, reason, n=1):
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def nothing_ran(self, suite, why):
        print(f"{suite}: nothing to run ({why})")
        self.failed += 1


def run_unit(build, t):
    bins = sorted(glob.glob(os.path.join(build, "asan", "tests", "test_*")))
    bins = [b for b in bins if os.access(b, os.X_OK) and not b.endswith(".d")]
    if not bins:
        t.nothing_ran("unit", f"no test binary in {build}/asan/tests: make unit")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    for b in bins:
        r = subprocess.run([b], capture_output=True, text=True, env=env)
        out = r.stdout + r.stderr
        p = sum(int(n) for n in re.findall(r"\[  PASSED  \] (\d+) test", out))
        f = sum(int(n) for n in re.findall(r"\[  FAILED  \] (\d+) test", out))
        if r.returncode != 0 and f == 0:
            f = 1  # crashed or sanitizer report: count the binary as one failure
        t.passed += p
        t.failed += f
        status = "ok" if r.returncode == 0 and f == 0 else "FAIL"
        print(f"unit  {os.path.basename(b):32s} {p} passed, {f} failed  {status}")
        if status != "ok":
            print(out)


def run_fuzz(build, seconds, t):
    bins = sorted(glob.glob(os.path.join(build, "fuzz", "fuzz_*")))
    bins = [b for b in bins if os.access(b, os.X_OK) and not b.endswith(".d")]
    if not bins:
        t.nothing_ran("fuzz", f"no target in {build}/fuzz: make fuzz-smoke")
    for b in bins:
        name = os.path.basename(b)
        seeds = os.path.join(HERE, "fuzz", "corpus", name)
        with tempfile.TemporaryDirectory(prefix=name) as work:
            corpus = os.path.join(work, "corpus")
            if os.path.isdir(seeds):
                shutil.copytree(seeds, corpus)
            else:
                os.makedirs(corpus)
            cmd = [b, corpus, f"-max_total_time={seconds}", "-print_final_stats=1",
                   f"-artifact_prefix={work}/"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", r.stderr)
            ok = r.returncode == 0
            if not ok:
                crash = glob.glob(os.path.join(work, "crash-*")) + glob.glob(os.path.join(work, "leak-*"))
                keep = os.path.join(build, "fuzz", "artifacts")
                os.makedirs(keep, exist_ok=True)
                for c in crash:
                    shutil.copy(c, keep)
                print(r.stderr[-4000:])
        t.passed += ok
        t.failed += not ok
        print(f"fuzz  {name:32s} {runs[0] if runs else '?'} runs in {seconds}s  {'ok' if ok else 'FAIL'}")


def run_kmod(build, t):
    """The kernel modules' tests, in Debian's kernel booted under qemu
    (kmod/guest/run.py; make kmod builds the modules first): one boot for
    logmod's, one for tcpspmod's."""
    if not all(os.path.exists(os.path.join(build, "kmod", f"{m}.ko")) for m in ("rs_logmod", "rs_tcpspmod")):
        t.nothing_ran("kmod", f"no {build}/kmod/rs_logmod.ko or rs_tcpspmod.ko: make kmod")
        return
    sys.path.insert(0, os.path.join(ROOT, "kmod", "guest"))
    from run import run as guest_run
    for script in ("guest_tests.py", "splice_tests.py"):
        t0 = time.monotonic()
        status, console = guest_run([sys.executable, os.path.join(ROOT, "kmod", "tests", script)],
                                    timeout=900, mem=2048, echo=False)
        m = re.search(r"^(\d+) passed, (\d+) failed$", console, re.M)
        p, f = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
        if status and not f:
            f = 1
        for line in console.splitlines():
            if line.startswith(("ok", "FAIL", "ERROR", "  ")) or "Traceback" in line or "Error" in line:
                print(f"kmod  {line}")
        print(f"kmod  {script} (Debian's kernel in qemu, {time.monotonic() - t0:.0f} s) {p} passed, {f} failed  "
              f"{'ok' if not f else 'FAIL'}")
        t.passed += p
        t.failed += f


def run_integration(build, pattern, t):
    os.environ["RS_BUILD"] = os.path.abspath(build)
    sys.path.insert(0, ROOT)
    from emul.testbed import sweep_stale
    swept = sweep_stale()
    if swept:
        print(f"removed interfaces an earlier, interrupted run left: {' '.join(swept)}")
    suite = unittest.defaultTestLoader.discover(os.path.join(HERE, "integration"),
                                                pattern=pattern, top_level_dir=ROOT)
    if suite.countTestCases() == 0:
        t.nothing_ran("integration", f"no test matches {pattern}")
        return
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    for _, reason in result.skipped:
        t.skip(reason)
    t.passed += result.testsRun - bad - len(result.skipped)
    t.failed += bad


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", default="build")
    ap.add_argument("--fuzz-seconds", type=int, default=15)
    ap.add_argument("--only", choices=["unit", "fuzz", "kmod", "integration"])
    ap.add_argument("--pattern", default="test_*.py", help="integration test file pattern")
    a = ap.parse_args()
    t = Tally()
    for name, fn in (("unit", lambda: run_unit(a.build, t)),
                     ("fuzz", lambda: run_fuzz(a.build, a.fuzz_seconds, t)),
                     ("kmod", lambda: run_kmod(a.build, t)),
                     ("integration", lambda: run_integration(a.build, a.pattern, t))):
        if not a.only or a.only == name:
            fn()
    for reason, n in sorted(t.skipped.items()):
        print(f"skipped {n}: {reason}")
    n_skipped = sum(t.skipped.values())
    print(f"{t.passed} passed, {t.failed} failed, {n_skipped} skipped")
    return 1 if t.failed or n_skipped else 0


if __name__ == "__main__":
    sys.exit(main())
