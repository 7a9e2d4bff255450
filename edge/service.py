"""Running as a systemd service: the notify protocol, a watchdog fed by progress, hot reload
of the safe parts of the config, and the unit file ``lineqc edge install-service`` writes.

sd_notify is a datagram of ``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET`` (a
path, or an abstract name written with a leading ``@``); it is implemented here rather than
taken from a library. The runtime says ``READY=1`` once the bundle is verified and the
pipeline started, ``STATUS=...`` at each telemetry interval, ``RELOADING=1`` around a config
reload and ``STOPPING=1`` when it stops. ``WATCHDOG=1`` goes out at about half of
``$WATCHDOG_USEC`` and only when frames were inspected since the last one: a capture or an
inference that stalls stops the pings, and systemd restarts the service.
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineqc.errors import LineqcError

from .config import DeviceConfig

log = logging.getLogger("lineqc.edge.service")

# ---- sd_notify --------------------------------------------------------------------------------


def notify_address(value: str) -> str | None:
    """The socket address of ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract
    namespace (a leading NUL byte); None for what this device cannot use (vsock, relative)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages to systemd; does nothing when not run by systemd."""

    def __init__(self, address: str | None, watchdog_s: float | None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s  # systemd's WatchdogSec, when it is on for this process
        self._warned = False

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and remove the variables, as sd_notify's ``unset_environment`` does, so a child
        process (a private broker, an engine build) never speaks for the service."""
        env = os.environ if env is None else env
        raw = env.pop("NOTIFY_SOCKET", "")
        usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        address = notify_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r: not a path or @abstract name; not notifying", raw)
        watchdog_s = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when it could not go (logged once)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        # MONOTONIC_USEC: what Type=notify-reload (systemd 253+) asks for; ignored before
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")


class Watchdog:
    """``WATCHDOG=1`` at about half of systemd's watchdog interval, and only when the frame
    count rose since the last ping: a stalled pipeline must starve systemd's watchdog."""

    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.clock = clock
        self.period = notifier.watchdog_s / 2 if notifier.watchdog_s else None
        self.frames = 0
        self.due = clock()
        self.pings = 0

    def beat(self, frames: int) -> bool:
        """Called from the pipeline loop with the frames inspected so far; True when it pinged."""
        if self.period is None or frames <= self.frames:
            return False
        now = self.clock()
        if now < self.due:
            return False
        self.frames, self.due = frames, now + self.period
        if self.notifier.send("WATCHDOG=1"):
            self.pings += 1
            return True
        return False


class NotifyListener:
    """systemd's side, for tests and benchmarks: binds a notify socket (a path, or
    ``\0name`` for an abstract one) and collects each datagram as (arrival, {KEY: VALUE})."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, name="notify-listener", daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = data.decode(errors="replace").splitlines()
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if not self.address.startswith("\0"):
            Path(self.address).unlink(missing_ok=True)

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [
                (t, m) for t, m in self.messages if key in m and (value is None or m[key] == value)
            ]

    def count(self, key: str, value: str = "1") -> int:
        return len(self.with_key(key, value))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()


# ---- hot reload of the config -----------------------------------------------------------------

# Keys (dotted, prefixes included) a reload applies to the running pipeline between two
# frames. Everything else (camera, model, mqtt, outbox, actuator, commands, device, the
# telemetry window, shutdown_flush_s, which sizes the unit's stop timeout) needs a restart.
HOT_RELOADABLE = ("decision", "sampling", "telemetry.interval_s", "latency_budget_ms")


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):  # an empty one adds no key: {} -> {a: 1} is "x.a"
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _hot(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in HOT_RELOADABLE)


class NeedsRestart(LineqcError):
    """A reloaded config that changes keys only a restart applies; nothing was reloaded."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(
            f"{', '.join(keys)} changed, which only a restart applies "
            "(systemctl restart); nothing reloaded, the running config is kept"
        )


def config_changes(old: DeviceConfig, new: DeviceConfig) -> list[str]:
    """The keys whose value differs, all hot-reloadable; NeedsRestart naming any other."""
    a, b = _flatten(old.model_dump()), _flatten(new.model_dump())
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))
    cold = [k for k in changed if not _hot(k)]
    if cold:
        raise NeedsRestart(cold)
    return changed


# ---- the unit file ----------------------------------------------------------------------------

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
EXIT_REFUSED = 2  # `lineqc` exits 2 for a config or bundle it refuses: a restart will not help


@dataclass(frozen=True)
class UnitOptions:
    name: str
    user: str = "lineqc"
    groups: tuple[str, ...] = ("video",)
    watchdog_s: int = 30
    restart_s: int = 5
    start_timeout_s: int = 900


def _unit_arg(text: str) -> str:
    """One word of ExecStart= or a path list, quoted for systemd: ``%`` and ``$`` are its
    specifiers and variables, so they are doubled."""
    if any(c in text for c in "\n\r\0"):
        raise LineqcError(f"{text!r}: a line break or NUL cannot go in a unit file")
    text = text.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def writable_folders(cfg: DeviceConfig) -> list[Path]:
    """The folders the runtime writes: the outbox, the command counter, the engine cache."""
    folders = [cfg.outbox.path.parent, cfg.command_state.parent]
    if cfg.model.engine_cache is not None:
        folders.append(cfg.model.engine_cache)
    return list(dict.fromkeys(folders))


def unit_text(cfg: DeviceConfig, config_path: Path, opts: UnitOptions) -> str:
    exec_start = " ".join(
        _unit_arg(a)
        for a in (sys.executable, "-m", "lineqc", "edge", "run", "--config", str(config_path))
    )
    # '-': a folder missing at start does not fail the namespace setup; the runtime reports it
    rw = " ".join(_unit_arg(f"-{p}") for p in writable_folders(cfg))
    stop_s = math.ceil(cfg.shutdown_flush_s) + 15  # the flush, then the worker's join and status
    d = cfg.device
    lines = [
        "# Written by `lineqc edge install-service`; run it again after changing",
        f"# shutdown_flush_s or the paths the device writes ({config_path}).",
        "[Unit]",
        f"Description=lineqc edge inspection, device {d.id} ({d.site}/{d.line})",
        "After=network-online.target time-sync.target",
        "Wants=network-online.target",
        # A crash loop (a fast failure) stops after 5 tries in 2 minutes; a watchdog restart
        # takes longer than WatchdogSec each, so a camera that is away keeps being retried.
        "StartLimitIntervalSec=120",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WatchdogSec={opts.watchdog_s}",
        "Restart=on-failure",
        f"RestartSec={opts.restart_s}",
        f"RestartPreventExitStatus={EXIT_REFUSED}",
        f"TimeoutStartSec={opts.start_timeout_s}",
        f"TimeoutStopSec={stop_s}",
        "KillMode=mixed",
        "Environment=PYTHONUNBUFFERED=1",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=lineqc-edge",
    ]
    if opts.user != "root":
        lines.append(f"User={opts.user}")
        if opts.groups:
            lines.append(f"SupplementaryGroups={' '.join(opts.groups)}")
    lines += [
        # Hardening that leaves cameras, GPUs and the network alone (no PrivateDevices,
        # no MemoryDenyWriteExecute: CUDA and ONNX Runtime map executable memory).
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={rw}",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    output: str


def verify_unit(path: Path) -> Verdict | None:
    """``systemd-analyze verify``; None when it is not installed. A warning about the unit's
    own file fails it too (systemd ignores an unknown or malformed line and exits 0)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, "verify", str(path)], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return Verdict(False, "systemd-analyze verify did not finish in 120 s")
    output = (done.stdout + done.stderr).strip()
    ours = [line for line in output.splitlines() if path.name in line]
    return Verdict(done.returncode == 0 and not ours, output)


@dataclass(frozen=True)
class Installed:
    text: str
    path: Path | None  # None: a dry run
    verdict: Verdict | None
    warnings: list[str]


def install_warnings(cfg: DeviceConfig, opts: UnitOptions) -> list[str]:
    """What would stop the service at its start, said before it is started."""
    out = []
    if opts.user != "root":
        try:
            pwd.getpwnam(opts.user)
        except KeyError:
            groups = f" --groups {','.join(opts.groups)}" if opts.groups else ""
            out.append(
                f"user {opts.user} does not exist: useradd --system --no-create-home"
                f"{groups} {shlex.quote(opts.user)}"
            )
    for folder in writable_folders(cfg):
        if not folder.is_dir():
            out.append(
                f"{folder} does not exist (the service cannot create it under "
                f"ProtectSystem=strict): install -d -o {opts.user} {shlex.quote(str(folder))}"
            )
    return out


def install_unit(
    cfg: DeviceConfig, config_path: Path, opts: UnitOptions, dest: Path | None
) -> Installed:
    """Verify the unit in a scratch folder, then write it to ``dest`` (None: a dry run).
    A unit that fails verification is not written."""
    text = unit_text(cfg, config_path.resolve(), opts)
    filename = f"{opts.name}.service"
    with tempfile.TemporaryDirectory(prefix="lineqc-unit-") as scratch:
        draft = Path(scratch) / filename
        draft.write_text(text)
        verdict = verify_unit(draft)
    warnings = install_warnings(cfg, opts)
    if dest is None or (verdict is not None and not verdict.ok):
        return Installed(text, None, verdict, warnings)
    target = dest / filename
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{filename}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(target)
    except OSError as exc:
        raise LineqcError(
            f"cannot write {target}: {exc.strerror} (run as root, or give --dest)"
        ) from None
    return Installed(text, target, verdict, warnings)
