#!/usr/bin/python3
"""Runs a command inside Debian 12's own kernel (6.1), booted under qemu
(TCG: this machine's kernel loads no modules, and KVM cannot boot a stock
kernel here), with the host's root file system as the guest's, read-only
over 9p under a tmpfs overlay: the project's build and Debian's userland
are there without building an image.

    kmod/guest/run.py [--timeout S] [--mem MB] -- COMMAND...

The command runs as root in the guest (cwd /), its output on the guest's
console; run.py prints the console and exits with the command's status
(124 on a time-out, 125 when the guest could not start it).  The initramfs
(busybox-static, the virtio/9p/overlay modules of the installed
linux-image-amd64, kmod/guest/init) is built under build/kmod/.  Needs the
packages linux-image-amd64, qemu-system-x86 and busybox-static (make deps).
"""
import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WANT = ("virtio_pci", "9pnet_virtio", "9p", "overlay")     # the guest's root needs these


def kernel():
    """(version, vmlinuz path) of the newest Debian kernel installed."""
    images = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    if not images:
        sys.exit("kmod/guest: no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64: make deps)")
    path = images[-1]
    return path[len("/boot/vmlinuz-"):], path


def module_order(version):
    """The .ko files (paths under /lib/modules/VERSION) WANT needs, each
    after the modules it depends on."""
    base = f"/lib/modules/{version}"
    deps = {}
    with open(f"{base}/modules.dep") as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod] = rest.split()
    by_name = {os.path.basename(m)[:-3].replace("-", "_"): m for m in deps}
    order = []

    def add(m):
        for d in reversed(deps[m]):      # modules.dep lists the deepest last
            if d not in order:
                add(d)
        if m not in order:
            order.append(m)
    for name in WANT:
        add(by_name[name])
    return base, order


def initramfs(version, out_dir):
    """Builds (when older than its inputs) and returns the initramfs path."""
    base, order = module_order(version)
    img = os.path.join(out_dir, f"initramfs-{version}.cpio.gz")
    init = os.path.join(ROOT, "kmod", "guest", "init")
    inputs = [init, "/bin/busybox", __file__] + [f"{base}/{m}" for m in order]
    if os.path.exists(img) and os.path.getmtime(img) >= max(os.path.getmtime(p) for p in inputs):
        return img
    with tempfile.TemporaryDirectory(prefix="rs-initramfs-") as tree:
        for d in ("bin", "modules", "proc", "sys", "dev", "host", "rw", "newroot"):
            os.makedirs(os.path.join(tree, d))
        shutil.copy("/bin/busybox", os.path.join(tree, "bin", "busybox"))
        shutil.copy(init, os.path.join(tree, "init"))
        with open(os.path.join(tree, "modules.order"), "w") as f:
            for m in order:
                shutil.copy(f"{base}/{m}", os.path.join(tree, "modules", os.path.basename(m)))
                f.write(os.path.basename(m) + "\n")
        tmp = img + ".tmp"
        with open(tmp, "wb") as f:
            find = subprocess.Popen(["find", "."], cwd=tree, stdout=subprocess.PIPE)
            cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, stdin=find.stdout,
                                    stdout=subprocess.PIPE)
            gz = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=f)
            find.stdout.close()
            cpio.stdout.close()
            if gz.wait() or cpio.wait() or find.wait():
                sys.exit("kmod/guest: building the initramfs failed")
        os.replace(tmp, img)
    return img


def run(argv, timeout=300, mem=1024, echo=True):
    """Boots the guest, runs 'argv' (a list) in it; returns (status, console)."""
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("kmod/guest: no qemu-system-x86_64 (apt-get install qemu-system-x86: make deps)")
    version, vmlinuz = kernel()
    out_dir = os.path.join(ROOT, "build", "kmod")
    os.makedirs(out_dir, exist_ok=True)
    img = initramfs(version, out_dir)
    # The command goes through a script on the shared root: the kernel's
    # command line is short and splits on spaces.
    fd, script = tempfile.mkstemp(prefix="guest-", suffix=".sh", dir=out_dir)
    with os.fdopen(fd, "w") as f:
        f.write("#!/bin/sh\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                f"cd {shlex.quote(ROOT)} && exec {' '.join(shlex.quote(a) for a in argv)}\n")
    os.chmod(script, 0o755)
    qemu = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", str(mem), "-smp", "1",
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", vmlinuz, "-initrd", img,
            "-append", f"console=ttyS0 panic=-1 quiet loglevel=4 rs.cmd={script}",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
    t0 = time.monotonic()
    p = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    lines, status = [], 124
    try:
        deadline = t0 + timeout
        os.set_blocking(p.stdout.fileno(), True)
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        buf = b""
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.1, deadline - time.monotonic())):
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").rstrip("\r")
                lines.append(text)
                m = re.match(r"RS-GUEST-EXIT=(\d+)", text)
                if m:
                    status = int(m.group(1))
                elif echo:
                    print(text, flush=True)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        os.unlink(script)
    if echo:
        print(f"kmod/guest: status {status} after {time.monotonic() - t0:.1f} s (kernel {version}, TCG)", flush=True)
    return status, "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--mem", type=int, default=1024)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")
    status, _ = run(cmd, args.timeout, args.mem)
    sys.exit(status)


if __name__ == "__main__":
    main()
