"""Where resplice's pieces are, for every script and test: the source tree,
the build's binaries and the ports of docs/recovery.md.  The addresses are
topologies/lan.py's SERVERS.  Imports nothing heavy (no Mininet), so tests
that need no root use it too.

The build directory is $RS_BUILD, else build/ in the tree; it is read at
each call, so a driver's --build option only has to set $RS_BUILD.
$RS_DATAPATH picks rs-proxy's data path likewise (proxy_datapath), and
$RS_IDENTITY how it names a new connection to a backend (proxy_identity)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VIP_PORT = 80           # rs-proxy's clients
PROXY_CTL = 7070        # rs-proxy's control port (FAILURE, RESPLICE, STATUS, ...)
LOGGER_CTL = 7071       # rs-logger's control port; heartbeats are UDP datagrams to it
LOGGER_RESEND = 7072    # rs-logger's resend port
STATED_PORT = 7073      # rs-stated on each backend
PAIR_PORT = 7074        # a proxy pair: the standby's copy of the active's splice table
APP_PORT = 8080         # the application (rs-app, or the front) on each backend
UPSTREAM_PORT = 8081    # behind a front: the real application, on the backend's loopback
PRIMARY_ID, ALTERNATE_ID, SPARE_ID = 1, 2, 3


def build_dir():
    return os.environ.get("RS_BUILD", os.path.join(ROOT, "build"))


def binary(name):
    """The path of the built program 'name' (e.g. "rs-proxy")."""
    return os.path.join(build_dir(), name)


def proxy_datapath():
    """rs-proxy's --datapath option as $RS_DATAPATH names it ("ebpf",
    "kmod"), or nothing: the default.  The kmod tests run the same
    integration tests with each inside Debian's kernel (kmod/tests/)."""
    dp = os.environ.get("RS_DATAPATH")
    return ["--datapath", dp] if dp else []


def proxy_identity():
    """rs-proxy's --identity option as $RS_IDENTITY names it ("map",
    "header"), or nothing: the default."""
    how = os.environ.get("RS_IDENTITY")
    return ["--identity", how] if how else []


def proxy_splice_at():
    """rs-proxy's --splice-at option as $RS_SPLICE_AT names it ("request",
    "syn"), or nothing: the default (at the SYN).  The whole stack's tests
    run with RS_SPLICE_AT=request as well (docs/recovery.md)."""
    at = os.environ.get("RS_SPLICE_AT")
    return ["--splice-at", at] if at else []


def splice_at(proxy_argv):
    """Where an rs-proxy with one --backend, started with 'proxy_argv',
    splices new connections: "syn" or "request" (its last --splice-at, else
    its default: at the SYN where it can be)."""
    at = [proxy_argv[i + 1] for i, a in enumerate(proxy_argv[:-1]) if a == "--splice-at"]
    if at:
        return at[-1]
    kmod = any(a == "--datapath" and b == "kmod" for a, b in zip(proxy_argv, proxy_argv[1:]))
    return "request" if kmod or "--sticky" in proxy_argv or "--no-splice" in proxy_argv else "syn"


def use_build(path):
    """Makes 'path' the build directory for binary() (a driver's --build)."""
    os.environ["RS_BUILD"] = os.path.abspath(path)


def write_key(path):
    """A fresh control-plane key file at 'path': 64 hex characters, mode
    0600 (the daemons refuse a key file others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return path
