"""What the integration tests share besides the testbed (emul/) and the
places of things (emul/places.py)."""
import os
import shutil
import unittest

NEEDS_ROOT = "needs root (network namespaces, daemons on test hosts)"


def needs_root(cls):
    """Class decorator for a case that builds a testbed or starts system
    daemons.  Without root its tests are reported as skipped, and
    tests/run.py fails the run: a suite that should have run did not."""
    return unittest.skipUnless(os.geteuid() == 0, NEEDS_ROOT)(cls)


def keep_run(src, name):
    """With $RS_KEEP (a directory to keep runs' logs in): copies run
    directory 'src' to $RS_KEEP/'name', its files and directories only
    (not dovecot's sockets and fifos)."""
    if os.environ.get("RS_KEEP"):
        shutil.copytree(src, os.path.join(os.environ["RS_KEEP"], name), dirs_exist_ok=True, ignore=lambda d, names: [
            n for n in names if not os.path.isdir(os.path.join(d, n)) and not os.path.isfile(os.path.join(d, n))])


# From a client host: two connections to the VIP from one client port, the
# second while the first's entries linger (its docstring says how).
SAME_PORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "same_port_client.py")
