"""A test class base for the Roundcube tests: one Mininet testbed and a
running mail store (dovecot + rs-smtpd) for the whole class, everything
torn down after it, and a check that no process it started outlived it."""
import os
import tempfile
import unittest

from emul.testbed import Testbed, leftovers
from roundcube.deploy import MailStore, pid_alive
from tests.integration.harness import keep_run, needs_root
from topologies.lan import LanTopo


@needs_root
class MailTestbedCase(unittest.TestCase):
    prefix = "rs-mail-"
    topo_args = {}

    @classmethod
    def start_class(cls):
        """Starts the class's own daemons (the testbed and cls.ms are up);
        returns the PIDs that must be gone after the class."""
        return []

    @classmethod
    def setUpClass(cls):
        assert leftovers() == [], leftovers()
        cls.tmp = tempfile.TemporaryDirectory(prefix=cls.prefix)
        os.chmod(cls.tmp.name, 0o755)      # dovecot's mail processes are not root
        cls.dir = os.path.join(cls.tmp.name, "run")
        cls.tb = Testbed(LanTopo(**cls.topo_args), cls.dir)
        cls.tb.__enter__()
        try:
            cls.ms = MailStore(cls.tb, cls.dir).start()
            cls.pids = cls.ms.pids() + list(cls.start_class())
        except BaseException:
            cls.tb.__exit__(None, None, None)
            cls.tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.tb.__exit__(None, None, None)
        keep_run(cls.dir, f"{cls.__module__}.{cls.__name__}")
        try:
            # Every process we started, php-cgi's children included, is gone.
            left = [p for p in cls.pids if pid_alive(p)]
            assert left == [], f"processes left behind: {left}"
            assert leftovers() == [], leftovers()
        finally:
            cls.tmp.cleanup()
