"""What the integration tests share besides the testbed (emul/) and the
places of things (emul/places.py)."""
import os
import unittest

NEEDS_ROOT = "needs root (network namespaces, daemons on test hosts)"


def needs_root(cls):
    """Class decorator for a case that builds a testbed or starts system
    daemons.  Without root its tests are reported as skipped, and
    tests/run.py fails the run: a suite that should have run did not."""
    return unittest.skipUnless(os.geteuid() == 0, NEEDS_ROOT)(cls)


# From a client host: two connections to the VIP from one client port, the
# second while the first's entries linger (its docstring says how).
SAME_PORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "same_port_client.py")
