"""A private MQTT broker on a free loopback port: for the demo, the bench and tests.

Mosquitto when it is installed (MQTT 5); otherwise an embedded Python broker (amqtt, in a
subprocess, MQTT 3.1.1 only; ``pip install amqtt``, part of the ``dev`` extra). Tests force
one with ``LINEQC_BROKER=python`` (or ``mosquitto``; default ``auto``) or ``private_broker(kind)``.

Mosquitto can also run the production setup (firmware_config/README.md, MQTT security): a
TLS listener that requires a client certificate and takes its CN as the username
(``BrokerTLS``), and an ACL file (``acl_file``) whose ``%u`` patterns bind each device to
its own topics.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import yaml

from lineqc.errors import LineqcError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only, so 3.10 devices run this

log = logging.getLogger("lineqc.edge.broker")
BROKER_ENV = "LINEQC_BROKER"
BrokerKind = Literal["auto", "mosquitto", "python"]


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


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """True once something accepts on 127.0.0.1:port; False on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class BrokerProcess:
    """A broker in a child process: ``stop``/``kill`` for outages, a context manager."""

    name = "broker"
    mqtt_protocol: Literal[5, "3.1.1"] = 5
    stop_signal = signal.SIGTERM  # how the broker asks to shut down cleanly
    stop_timeout_s = 10.0
    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL: an outage without any goodbye."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        """The clean-shutdown signal, then SIGKILL when it does not exit in time."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class BrokerTLS:
    """A TLS listener: the broker's certificate and key, and the CA its clients' certificates
    must chain to. ``require_certificate``: a client without a valid certificate is refused
    at the handshake; ``use_identity_as_username``: the certificate's CN is the client's
    username (what an ACL's ``user`` lines and ``%u`` patterns match)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True
    use_identity_as_username: bool = True

    def lines(self) -> list[str]:
        return [
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
            f"use_identity_as_username {'true' if self.use_identity_as_username else 'false'}",
        ]


class Mosquitto(BrokerProcess):
    """``with Mosquitto() as broker: broker.port``; ``stop``/``kill``/``start`` for outages.

    ``tls``: the listener speaks TLS (see BrokerTLS); ``acl_file``: Mosquitto's ACL, read
    again on ``reload()``. Without a client certificate requirement or a password file the
    broker takes anonymous clients (an ACL still applies to them: its lines before the first
    ``user``). ``log_all``: log every packet (``Received PUBLISH from ...``) to ``log``.
    """

    name = "mosquitto"
    mqtt_protocol: Literal[5, "3.1.1"] = 5

    def __init__(
        self,
        port: int | None = None,
        folder: Path | None = None,
        persistence: bool = False,
        extra: str = "",
        tls: BrokerTLS | None = None,
        acl_file: Path | None = None,
        log_all: bool = False,
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
        self.tls = tls
        certified = tls is not None and tls.require_certificate and tls.use_identity_as_username
        anonymous = "password_file" not in extra and not certified
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(tls.lines() if tls is not None else []),
            "user root" if os.geteuid() == 0 else "",  # else it drops to a user without our files
            "allow_anonymous true" if anonymous else "",
            f"acl_file {acl_file}" if acl_file is not None else "",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.folder}/",
            "autosave_interval 1" if persistence else "",
            "autosave_on_changes true" if persistence else "",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type all" if log_all else "",
            extra,
        ]
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "mosquitto.log"

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its configuration again (the ACL file included)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self) -> Self:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        if not wait_for_port(self.port, proc=self.proc):
            self.kill()
            raise LineqcError(f"mosquitto did not start on port {self.port}: {self.log}")
        log.info(
            "private broker: mosquitto (%s) on 127.0.0.1:%d, MQTT 5%s",
            self.binary,
            self.port,
            ", TLS" if self.tls is not None else "",
        )
        return self


def python_broker_available() -> bool:
    return importlib.util.find_spec("amqtt") is not None


class PythonBroker(BrokerProcess):
    """amqtt in a subprocess, the same interface as ``Mosquitto`` (no persistence, no ACLs).

    It speaks MQTT 3.1.1 only (it refuses an MQTT 5 CONNECT): clients of it need
    ``mqtt.protocol: 3.1.1``.
    """

    name = "amqtt"
    mqtt_protocol: Literal[5, "3.1.1"] = "3.1.1"
    stop_signal = signal.SIGINT  # amqtt shuts down cleanly on KeyboardInterrupt
    stop_timeout_s = 5.0

    def __init__(self, port: int | None = None, folder: Path | None = None) -> None:
        if not python_broker_available():
            raise LineqcError(
                "no MQTT broker: mosquitto is not installed (apt-get install mosquitto) and "
                "neither is the embedded Python broker (pip install amqtt)"
            )
        self.version = importlib.metadata.version("amqtt")
        self.port = port or free_port()
        self.folder = Path(folder or tempfile.mkdtemp(prefix="lineqc-amqtt-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self.conf = self.folder / "amqtt.yaml"
        self.conf.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "amqtt.log"

    def start(self) -> Self:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if not wait_for_port(self.port, timeout=30.0, proc=self.proc):
            self.kill()
            raise LineqcError(f"amqtt did not start on port {self.port}: {self.log}")
        log.info(
            "private broker: embedded Python broker amqtt %s on 127.0.0.1:%d, MQTT 3.1.1 only",
            self.version,
            self.port,
        )
        return self


def broker_kind(kind: str | None = None) -> Literal["mosquitto", "python"]:
    """Which private broker to start: ``kind``, else ``$LINEQC_BROKER``, else ``auto``
    (Mosquitto when installed, else the Python broker)."""
    choice = (kind or os.environ.get(BROKER_ENV) or "auto").strip().lower()
    if choice == "mosquitto":
        return "mosquitto"
    if choice in ("python", "amqtt"):
        return "python"
    if choice != "auto":
        raise LineqcError(f"{BROKER_ENV}={choice!r}: expected auto, mosquitto or python")
    return "mosquitto" if mosquitto_binary() is not None else "python"


def private_broker(
    kind: str | None = None, port: int | None = None, folder: Path | None = None
) -> BrokerProcess:
    """A (not yet started) private broker: see ``broker_kind``."""
    chosen = broker_kind(kind)
    if chosen == "mosquitto":
        return Mosquitto(port=port, folder=folder)
    if mosquitto_binary() is None:
        log.warning("mosquitto is not installed: using the embedded Python broker (amqtt)")
    return PythonBroker(port=port, folder=folder)
