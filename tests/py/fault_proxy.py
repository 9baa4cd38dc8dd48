"""An HTTP proxy in front of a storage emulator that injects faults: it holds a response
back (the request itself went through), or refuses requests with 503 for a while, as a
throttled or briefly unavailable bucket does.

    proxy = FaultProxy(emulator_url, host)
    proxy.hold(lambda r: "manifest.json" in r.path, seconds=5)   # the next matching request
    proxy.refuse(lambda r: "/results/" in r.path, seconds=3)       # from the first match on
"""

from __future__ import annotations

import http.client
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Req:
    method: str
    path: str  # unquoted, with the query
    body: bytes = b""

    def names(self, text: str) -> bool:
        """Does the request name `text`: in its path (S3, GCS media uploads), or in the object name
        of the metadata part that opens a GCS multipart upload (not in the object itself: a log
        or a status being uploaded may quote any key)?"""
        m = re.search(rb'"name": ?"([^"]*)"', self.body[:512])
        return text in self.path or bool(m and text.encode() in m.group(1))


class FaultProxy:
    def __init__(self, target: str, host: str = "127.0.0.1"):
        t = urlparse(target)
        self.target = (t.hostname, t.port)
        self.lock = threading.Lock()
        self.holds: list[tuple[Callable[[Req], bool], float, threading.Event]] = []
        self.refusals: list[dict] = []
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, head: bool) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = dict((k.lower(), v) for k, v in headers).get("content-length") if head else None
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                req = Req(self.command, unquote(self.path), body)
                if proxy._refusing(req):
                    self._reply(503, [("Content-Type", "application/json")],
                                b'{"error": {"code": 503, "message": "injected: service unavailable"}}', False)
                    return
                conn = http.client.HTTPConnection(*proxy.target, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                proxy._hold(req)
                self._reply(resp.status, resp.getheaders(), data, self.command == "HEAD")

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self):  # no getfqdn(): it can hang without DNS
                import socketserver

                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

            def handle_error(self, request, client_address):
                """A client that hung up (a CLI the cell interrupted, a request its own timeout
                gave up on) is part of a fault cell, not an error of the proxy's."""
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.server = Server((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, match: Callable[[Req], bool], seconds: float) -> threading.Event:
        """Delay the response to the next matching request; the event is set when it arrives."""
        seen = threading.Event()
        with self.lock:
            self.holds.append((match, seconds, seen))
        return seen

    def refuse(self, match: Callable[[Req], bool], seconds: float, scope: Callable[[Req], bool] | None = None) -> None:
        """From the first matching request on, answer 503 to those in `scope` (default: the
        matching ones) for `seconds`."""
        with self.lock:
            self.refusals.append({"match": match, "scope": scope or match, "seconds": seconds, "until": None})

    def _refusing(self, req: Req) -> bool:
        now = time.monotonic()
        with self.lock:
            for r in self.refusals:
                if r["until"] is None and r["match"](req):
                    r["until"] = now + r["seconds"]
                if r["until"] is not None and now < r["until"] and r["scope"](req):
                    self.refused += 1
                    return True
        return False

    def _hold(self, req: Req) -> None:
        with self.lock:
            hit = next((h for h in self.holds if h[0](req)), None)
            if hit:
                self.holds.remove(hit)
        if hit:
            hit[2].set()
            time.sleep(hit[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
