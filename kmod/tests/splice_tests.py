#!/usr/bin/python3
"""tcpspmod tests, run as root inside Debian's kernel booted by
kmod/guest/run.py (make kmod-test): loads build/kmod/rs_tcpspmod.ko and
checks it from outside.

- Its generic netlink interface refuses what is malformed (unknown or
  missing attributes, wrong sizes, bad values, unknown commands) with
  EINVAL and no harm, and answers well-formed requests.
- The integration tests of the splice run here on the kmod data path
  (RS_DATAPATH=kmod: rs-proxy --datapath kmod), then on the eBPF one in the
  same kernel for comparison: a spliced download byte-exact, a live
  re-splice to another backend, a process crash mid-response masked
  (tests/integration/, on a Mininet testbed inside the guest).
- A proxy SIGKILLed while it holds the netlink socket and a full table
  leaves nothing behind: the module unloads afterwards, and the kernel log
  holds no oops, warning or bug.
Prints 'N passed, N failed'."""
import os
import re
import socket
import struct
import subprocess
import sys
import time
import traceback
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KO = os.path.join(ROOT, "build", "kmod", "rs_tcpspmod.ko")
# The modules the testbed and the tc program need: the guest's init has no
# modprobe for the kernel to call on demand.
MODULES = ("veth", "bridge", "sch_ingress", "cls_bpf", "act_mirred", "cls_u32", "sch_htb", "sch_tbf")
# tests/integration/, per data path.
INTEGRATION = (
    "tests.integration.test_splice.TestSplice.test_download_exact_and_sockets_leave",
    "tests.integration.test_splice.TestResplice.test_resplice_between_transactions",
    "tests.integration.test_failover.TestProcessCrash.test_mid_response",
)

# proxy/tcpsp.h
C_ATTACH, C_DETACH, C_VIP, C_TS_TAKE, C_GET, C_SET, C_DEL, C_NEXT, C_EVENT = range(1, 10)
A_IFINDEX, A_FLAGS, A_KEY, A_FLOW, A_TRACK, A_VIP, A_TS, A_EVENT = range(1, 9)
FLOW_SIZE, TRACK_SIZE = 152, 184       # sizeof(struct rs_flow), sizeof(struct rs_flow_track)
FLOW_STATE, FLOW_SPLICE_ID = 36, 40     # their offsets in struct rs_flow
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR, GENL_ID_CTRL = 1, 4, 2, 0x10


def sh(cmd, check=True):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{cmd}: {r.returncode} {r.stderr.strip()}")
    return r.stdout


def attr(t, payload):
    a = struct.pack("=HH", 4 + len(payload), t) + payload
    return a + b"\0" * (-len(a) % 4)


def flow_with(off, fmt, v):
    """A struct rs_flow of zeros but for one field."""
    flow = bytearray(FLOW_SIZE)
    struct.pack_into(fmt, flow, off, v)
    return bytes(flow)


class Genl:
    """A raw generic netlink socket: what a buggy or hostile program sends."""

    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)   # NETLINK_GENERIC
        self.s.bind((0, 0))
        self.s.settimeout(5)
        self.seq = 0
        reply = self.call(GENL_ID_CTRL, 3, attr(2, b"rs_tcpsp\0"))       # CTRL_CMD_GETFAMILY
        if isinstance(reply, int):
            raise RuntimeError(f"no rs_tcpsp family ({reply})")
        attrs = self.attrs(reply)
        self.family = struct.unpack("=H", attrs[1][:2])[0]               # CTRL_ATTR_FAMILY_ID

    def call(self, family, cmd, payload, version=1):
        """Sends one request; returns the first answer's attributes (bytes)
        or the errno of its NLMSG_ERROR (0: a plain ACK)."""
        self.seq += 1
        body = struct.pack("=BBH", cmd, version, 0) + payload
        self.s.send(struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + body)
        answer = None
        while True:
            data = self.s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, typ, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    return answer if err == 0 and answer is not None else err
                if seq == self.seq:
                    answer = data[off + 20:off + length]
                off += (length + 3) & ~3

    @staticmethod
    def attrs(payload):
        out, off = {}, 0
        while off + 4 <= len(payload):
            alen, typ = struct.unpack_from("=HH", payload, off)
            out[typ & 0x3fff] = payload[off + 4:off + alen]
            off += (alen + 3) & ~3
        return out

    def req(self, cmd, payload):
        return self.call(self.family, cmd, payload)


class NetlinkCase(unittest.TestCase):
    def setUp(self):
        sh("ip link add rsk0 type veth peer name rsk1")
        self.ifi = socket.if_nametoindex("rsk0")
        self.nl = Genl()

    def tearDown(self):
        sh("ip link del rsk0", check=False)

    def ifindex(self, i=None):
        return attr(A_IFINDEX, struct.pack("=I", self.ifi if i is None else i))

    def test_malformed_requests_are_refused(self):
        key = attr(A_KEY, bytes(12))
        bad = {
            "no attributes": (C_ATTACH, b""),
            "ifindex 0": (C_ATTACH, self.ifindex(0)),
            "short attribute": (C_GET, self.ifindex() + attr(A_KEY, bytes(11))),
            "long attribute": (C_GET, self.ifindex() + attr(A_KEY, bytes(13))),
            "unknown attribute": (C_GET, self.ifindex() + key + attr(40, b"x")),
            "attribute the command does not take": (C_DETACH, self.ifindex() + key),
            "twice the same": (C_GET, self.ifindex() + key + key),
            "length past the end": (C_GET, self.ifindex() + struct.pack("=HH", 200, A_KEY) + bytes(12)),
            "length below a header": (C_GET, self.ifindex() + struct.pack("=HH", 2, A_KEY)),
            "trailing bytes": (C_DETACH, self.ifindex() + b"\1\2"),
            "unknown state": (C_SET, self.ifindex() + key + attr(A_FLOW, flow_with(FLOW_STATE, "=I", 9))),
            "both EXIST and NOEXIST": (C_SET, self.ifindex() + key + attr(A_FLOW, bytes(FLOW_SIZE))
                                       + attr(A_FLAGS, struct.pack("=I", 6))),
            "unknown flag": (C_ATTACH, self.ifindex() + attr(A_FLAGS, struct.pack("=I", 0x100))),
        }
        for what, (cmd, payload) in bad.items():
            with self.subTest(what):
                self.assertEqual(self.nl.req(cmd, payload), 22, what)        # EINVAL
        for cmd in (C_EVENT, 99):      # the module's own command, and none at all
            self.assertEqual(self.nl.req(cmd, self.ifindex() + attr(A_EVENT, bytes(48))), 95)   # EOPNOTSUPP

    def test_well_formed_requests_work(self):
        nl, key = self.nl, attr(A_KEY, struct.pack("=IIHH", 0x0100000a, 0x0200000a, 0x5000, 0x1000))
        self.assertEqual(nl.req(C_GET, self.ifindex() + key), 19, "ENODEV before ATTACH")
        self.assertEqual(nl.req(C_ATTACH, self.ifindex()), 0)
        self.assertEqual(nl.req(C_GET, self.ifindex() + key), 2, "ENOENT: no such entry")
        self.assertEqual(nl.req(C_SET, self.ifindex() + key + attr(A_FLOW, bytes(FLOW_SIZE))
                                + attr(A_FLAGS, struct.pack("=I", 2))), 2, "EXIST on a missing entry")
        flow = flow_with(FLOW_SPLICE_ID, "=Q", 77)
        self.assertEqual(nl.req(C_SET, self.ifindex() + key + attr(A_FLOW, flow)), 0)
        got = nl.req(C_GET, self.ifindex() + key)
        self.assertIsInstance(got, bytes)
        a = Genl.attrs(got)
        self.assertEqual(a[A_FLOW], flow)
        self.assertEqual(len(a[A_TRACK]), TRACK_SIZE)
        nxt = Genl.attrs(nl.req(C_NEXT, self.ifindex()))
        self.assertEqual(nxt[A_KEY], key[4:])
        self.assertEqual(nl.req(C_NEXT, self.ifindex() + key), 2, "one entry: none after it")
        self.assertEqual(nl.req(C_DEL, self.ifindex() + key), 0)
        self.assertEqual(nl.req(C_DEL, self.ifindex() + key), 2)
        self.assertEqual(nl.req(C_TS_TAKE, self.ifindex() + key), 2)
        self.assertEqual(nl.req(C_DETACH, self.ifindex()), 0)
        self.assertEqual(nl.req(C_DETACH, self.ifindex()), 19)

    def test_interface_gone_takes_its_table(self):
        self.assertEqual(self.nl.req(C_ATTACH, self.ifindex()), 0)
        sh("ip link del rsk0")
        self.assertEqual(self.nl.req(C_GET, self.ifindex() + attr(A_KEY, bytes(12))), 19)


def integration(datapath):
    """The integration tests of INTEGRATION on 'datapath'."""
    os.environ["RS_DATAPATH"] = datapath
    sys.path.insert(0, ROOT)
    return unittest.defaultTestLoader.loadTestsFromNames(INTEGRATION)


class KilledProxy(unittest.TestCase):
    """rs-proxy SIGKILLed with spliced connections in its table: the
    module keeps the table for a successor, and still unloads."""

    def test_killed_proxy_then_unload(self):
        sys.path.insert(0, ROOT)
        os.environ["RS_DATAPATH"] = "kmod"
        from tests.integration.test_splice import SpliceCase

        class Case(SpliceCase):
            def runTest(self):
                self.app("primary")
                px = self.proxy()
                d, _ = self.client("request GET /slow?bytes=2000000&chunk=20000&delay=10ms\n"
                                   "  expect length 2000000\n", wait=False)
                from emul.shaping import wait_until
                # Once the connection has opened (its request through): before
                # that the request goes out through the proxy's own socket,
                # which dies with it (a successor would end the connection).
                self.assertTrue(wait_until(lambda: re.search(r" open id=1 client=\S+ us=", self.log(px)), 20),
                                self.log(px))
                self.tb.kill(px)
                d.popen.wait(60)
                self.assertEqual(d.popen.returncode, 0, "the splice goes on without its daemon: "
                                 + d.output() + self.log(d))
        r = unittest.TestResult()
        Case().run(r)
        self.assertEqual(r.failures + r.errors, [], [t for _, t in r.failures + r.errors])


def main():
    t0 = time.monotonic()
    for m in MODULES:
        sh(f"modprobe {m}", check=False)
    sh(f"insmod {KO}")
    suite = unittest.TestSuite()
    suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(NetlinkCase))
    results = []
    r = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    results.append(r)
    for dp in ("kmod", "ebpf"):
        print(f"-- the integration tests on the {dp} data path", flush=True)
        results.append(unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(integration(dp)))
    results.append(unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(KilledProxy)))
    passed = sum(r.testsRun - len(r.failures) - len(r.errors) for r in results)
    failed = sum(len(r.failures) + len(r.errors) for r in results)
    # Unloads with the killed proxy's table still there, and nothing went wrong.
    try:
        sh("rmmod rs_tcpspmod")
        kernel = sh("dmesg")
        bad = [l for l in kernel.splitlines() if re.search(r"Oops|WARNING:|BUG:|refcount|leak", l)]
        if bad:
            raise RuntimeError("kernel log: " + " | ".join(bad[:5]))
        print("ok  unload, clean kernel log")
        passed += 1
    except Exception:
        traceback.print_exc()
        print("FAIL unload, clean kernel log")
        failed += 1
    print(f"({time.monotonic() - t0:.0f} s in the guest)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
