"""The stand-in upstream ESP for the container tests, run in a container on the test's network.

Behaves like sendgrid.net for the two tracking paths: 302 for /ls/click, a 43-byte GIF for
/wf/open; anything else 404. `delay_ms=N` in the query holds the answer N ms (a request in
flight during a shutdown). Each request is recorded as one JSON line on stdout (`docker logs`).
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
assert len(GIF) == 43


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        delay = int(query.get("delay_ms", ["0"])[0])
        if delay:
            time.sleep(min(delay, 30_000) / 1000)
        if url.path == "/ls/click":
            status, body, headers = 302, b"", {"Location": "https://example.com/landing"}
        elif url.path == "/wf/open":
            status, body, headers = 200, GIF, {"Content-Type": "image/gif"}
        else:
            status, body, headers = 404, b"not found\n", {"Content-Type": "text/plain"}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        record = {
            "path": self.path,
            "host": self.headers.get("Host"),
            "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            "status": status,
        }
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
