"""The load generator of the container tests, run in a container of its own on the test's network
(so the load balancer sees this container's address as the client's).

Each request on a new TLS connection (as clicks from many recipients arrive), verified against
the test's CA, `Connection: close`. Bounded by count and by time; prints one JSON summary line.

    python3 loadgen.py HOST PORT SNI CAFILE SECONDS MAX_REQUESTS THREADS
"""

import json
import socket
import ssl
import sys
import threading
import time

host, port, sni, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seconds, max_requests, threads = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])

ctx = ssl.create_default_context(cafile=cafile)
lock = threading.Lock()
ok = 0
sent = 0
failures = []
deadline = time.monotonic() + seconds


def one(i):
    request = (
        f"GET /wf/open?upn=load{i} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(request)
            out = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                out += chunk
    head = out.split(b"\r\n", 1)[0].decode(errors="replace")
    if not head.startswith("HTTP/1.1 200 ") or not out.endswith(b";"):
        raise RuntimeError(f"unexpected answer: {head!r}, {len(out)} bytes")


def worker():
    global ok, sent
    while time.monotonic() < deadline:
        with lock:
            if sent >= max_requests:
                return
            sent += 1
            i = sent
        try:
            one(i)
            with lock:
                ok += 1
        except Exception as e:  # every failure is reported, none retried
            with lock:
                failures.append(f"{time.monotonic() - (deadline - seconds):.2f}s: {e!r}")


started = time.monotonic()
pool = [threading.Thread(target=worker) for _ in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
print(
    json.dumps(
        {
            "ok": ok,
            "failed": len(failures),
            "failures": failures[:20],
            "seconds": round(time.monotonic() - started, 2),
        }
    ),
    flush=True,
)
