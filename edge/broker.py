"""A private Mosquitto broker on a free loopback port: for the demo, the bench and tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from lineqc.errors import LineqcError


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in (
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ):
        if Path(path).is_file():
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class Mosquitto:
    """``with Mosquitto() as broker: broker.port``; ``stop``/``kill``/``start`` for outages."""

    def __init__(
        self,
        port: int | None = None,
        folder: Path | None = None,
        persistence: bool = False,
        extra: str = "",
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise LineqcError(
                "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.folder = Path(folder or tempfile.mkdtemp(prefix="lineqc-mosquitto-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "user root" if os.geteuid() == 0 else "",  # else it drops to a user without our files
            "allow_anonymous true" if "password_file" not in extra else "",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.folder}/",
            "autosave_interval 1" if persistence else "",
            "autosave_on_changes true" if persistence else "",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            extra,
        ]
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "mosquitto.log"

    def start(self) -> Mosquitto:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        if not wait_for_port(self.port):
            self.kill()
            raise LineqcError(f"mosquitto did not start on port {self.port}: {self.log}")
        return self

    def kill(self) -> None:
        """SIGKILL: an outage without any goodbye."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
