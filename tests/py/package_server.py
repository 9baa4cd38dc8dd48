"""The package sources a bare fake VM installs from, served on its bridge: the wheelhouse as
PEP 503 simple indexes under /wheels/simple/ and /wheels/simple-pep658/, the apt repository
under /apt/ (see bare_image.py).

A VM finds them through its environment (PIP_INDEX_URL, UV_INDEX_URL) and its sources.list,
both of which `vm_settings()` gives. On a real VM neither is set: pip and uv use PyPI, apt the
image's own mirror, over the internet.
"""

from __future__ import annotations

import io
import os
import re
import socketserver
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class PackageServer:
    def __init__(self, host: str, wheelhouse: Path, apt_repo: Path):
        roots = {"wheels": Path(wheelhouse), "apt": Path(apt_repo)}
        self.requests: list[str] = []  # paths asked for, in order: what a VM really fetched
        self.refused: set[str] = set()  # path prefixes answered 404, as an index without them would
        requests, refused = self.requests, self.refused

        class Handler(SimpleHTTPRequestHandler):
            def translate_path(self, path: str) -> str:
                path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
                top, _, rest = path.lstrip("/").partition("/")
                if top not in roots:
                    return "/nonexistent"
                parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
                return str(roots[top].joinpath(*parts)) + ("/" if path.endswith("/") else "")

            def send_head(self):
                """Whole files, or one byte range of one (uv reads a wheel's metadata from its end
                with range requests, as PyPI's file host allows)."""
                requests.append(self.path)
                if any(self.path.startswith(prefix) for prefix in refused):
                    self.send_error(404)
                    return None
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                path = self.translate_path(self.path)
                if not m or m.groups() == ("", "") or not os.path.isfile(path):
                    return super().send_head()
                size = os.path.getsize(path)
                first, last = m.groups()
                start, end = (size - int(last), size - 1) if first == "" else (int(first), int(last or size - 1))
                start, end = max(start, 0), min(end, size - 1)
                if start > end:
                    self.send_error(416)
                    return None
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(end - start + 1)
                self.send_response(206)
                self.send_header("Content-Type", self.guess_type(path))
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return io.BytesIO(data)

            def end_headers(self):
                self.send_header("Accept-Ranges", "bytes")
                super().end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # uv opens dozens of connections at once; a backlog of 5 drops some for 1 s

            def server_bind(self):  # no getfqdn(): it can hang without DNS
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

        self.server = Server((host, 0), Handler)
        self.host = host
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def vm_settings(self, pep658: bool = False) -> tuple[dict[str, str], dict[str, str]]:
        """(environment, files) that point a VM's pip, uv and apt here; `pep658`: to the index that
        offers PEP 658 metadata files."""
        index = f"{self.url}/wheels/{'simple-pep658' if pep658 else 'simple'}/"
        env = {"PIP_INDEX_URL": index, "PIP_TRUSTED_HOST": self.host,  # plain http: pip refuses it otherwise
               "UV_INDEX_URL": index, "UV_INSECURE_HOST": self.host}
        files = {"/etc/apt/sources.list": f"deb [trusted=yes] {self.url}/apt ./\n"}
        return env, files

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
