"""A real static HTTP server for the artifact store in tests: serves a folder with
``Range`` (206) like any static server a plant would use, optionally at a bounded rate so a
test can kill a device in the middle of a download. Records the Range header of each
request."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class StoreServer:
    def __init__(self, folder: Path, rate_bytes_s: float | None = None) -> None:
        self.folder, self.rate = Path(folder), rate_bytes_s
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = server.folder / self.path.lstrip("/")
                if ".." in self.path or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = 0
                if header and header.startswith("bytes=") and header.endswith("-"):
                    start = int(header[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                step = 4096
                for i in range(start, len(data), step):
                    try:
                        self.wfile.write(data[i : i + step])
                    except OSError:
                        return
                    if server.rate:
                        time.sleep(step / server.rate)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> StoreServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
