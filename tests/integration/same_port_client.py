"""From a client host: two connections to the VIP from one client port
(the second while the proxy's entries of the first still linger), a GET
of /static/100000 on each, and another on the second once the first's
linger is over (its end must leave the second's entries alone).

  python3 same_port_client.py VIP PORT rst GO LATER
      the first connection reset by the client once file GO exists
  python3 same_port_client.py VIP PORT close WAIT LATER
      the first closed by the client (its TIME_WAIT), the second WAIT
      seconds later (tcp_tw_reuse takes the port back after a second)

LATER: seconds between the second connection's two GETs.  Prints
"first: N bytes", "second: N bytes", "third: N bytes"."""
import os
import socket
import struct
import sys
import time


def connect(vip, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", port))
    s.settimeout(10)
    s.connect((vip, 80))
    return s


def get(s):
    s.sendall(b"GET /static/100000?seed=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    n = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
    while len(body) < n:
        c = s.recv(65536)
        if not c:
            raise SystemExit("closed early")
        body += c
    return len(body)


def main():
    vip, port, how, arg, later = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
    s = connect(vip, port)
    print("first:", get(s), "bytes", flush=True)
    if how == "rst":
        while not os.path.exists(arg):
            time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    else:
        s.close()
        time.sleep(float(arg))
    s = connect(vip, port)
    print("second:", get(s), "bytes", flush=True)
    time.sleep(later)
    print("third:", get(s), "bytes", flush=True)
    s.close()


if __name__ == "__main__":
    main()
