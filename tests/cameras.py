"""Real cameras for the tests: an IP camera's MJPEG stream over HTTP that can hang."""

from __future__ import annotations

import http.server
import itertools
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

import cv2


class MJPEGCamera:
    """An IP camera's MJPEG stream over HTTP, at about 20 fps, cycling through ``images``;
    ``pause`` stalls it (every connection stays open and silent, like a hung camera, and a
    new one gets its headers, then nothing), ``resume`` sends again on all of them."""

    def __init__(self, images: list[Path]) -> None:
        frames = []
        for p in images:
            ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
            assert ok, p
            frames.append(jpeg.tobytes())
        self.flowing = threading.Event()
        self.flowing.set()
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for jpeg in itertools.cycle(frames):
                        camera.flowing.wait()
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\n"
                            b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
                        )
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        self.server.shutdown()
        self.server.server_close()
