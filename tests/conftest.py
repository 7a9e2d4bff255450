"""Shared fixtures: synthetic datasets, the real magnetic-tile folder, running the CLI, and
for the edge and review tests a real signed bundle (made by the real CLI), private Mosquitto
brokers (and the embedded Python broker), a real MQTT subscriber, device configs and the
runtime as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lineqc.edge.broker import Mosquitto, PythonBroker, mosquitto_binary, python_broker_available

REPO = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = Path(
    os.environ.get("LINEQC_MAGNETIC_TILE", REPO.parent / "shared" / "datasets" / "magnetic-tile")
)


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    if not (MAGNETIC_TILE / "MT_Free" / "Imgs").is_dir():
        pytest.skip(f"real data not found at {MAGNETIC_TILE} (set LINEQC_MAGNETIC_TILE)")
    return MAGNETIC_TILE


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset, split; read-only for the tests that share it."""
    from lineqc.datasets.split import split_dataset
    from lineqc.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(root, 120, seed=7, size=64, quiet=True)
    split_dataset(root, seed=0)
    return root


# The recommended recipe's features on a tiny scale: letterbox, flat-field, defect map,
# anomaly memory, square-root sampling, EMA with warmup. About 10 s on a 2-core CPU.
DEFECT_RECIPE: dict[str, Any] = {
    "model": "resnet10t",
    "img_size": 64,
    "epochs": 8,
    "batch_size": 16,
    "progress": False,
    "resize": "letterbox",
    "illumination": "flatfield",
    "balanced_sampling": "sqrt",
    "defect_map": {"weight": 1.0},
    "anomaly": {"bank_size": 256},
    "loss": {"name": "focal", "gamma": 2.0},
    "optim": {"lr": 0.003, "warmup_epochs": 0.5, "ema_decay": 0.9, "ema_warmup": True},
    "early_stopping": {"metric": "last"},
    "data": {"num_workers": 0},
    "tracking": {"mlflow": False},
}


@pytest.fixture(scope="session")
def defect_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, run): synthetic parts with masks, and a DefectNet trained on them."""
    from lineqc.datasets.split import split_dataset
    from lineqc.datasets.synth import synthesize
    from lineqc.train.config import from_dict
    from lineqc.train.loop import train

    root = tmp_path_factory.mktemp("defect-run")
    synthesize(root / "ds", 200, seed=5, size=64, quiet=True)
    split_dataset(root / "ds", val=0.2, test=0.25, seed=0)
    train(from_dict(DEFECT_RECIPE), root / "ds", root / "run")
    return root / "ds", root / "run"


def run_lineqc(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `lineqc` command in a subprocess (``input``: its standard input)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lineqc", *args], capture_output=True, text=True, input=input
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lineqc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def lineqc() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The `lineqc` command, run as a user would (a subprocess)."""
    return run_lineqc


def _cli(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lineqc", *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssertionError(f"lineqc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


@dataclass(frozen=True)
class EdgeBundle:
    bundle: Path
    pubkey: Path
    private_key: Path
    dataset: Path
    images: Path  # a folder of the dataset's images, for replay


@pytest.fixture(scope="session")
def edge_bundle(tmp_path_factory: pytest.TempPathFactory) -> EdgeBundle:
    """synth -> split -> train (smoke) -> keys -> export: a real signed bundle."""
    work = tmp_path_factory.mktemp("edge-bundle")
    _cli("data", "synth", "ds", "--n", "120", "--seed", "1", "--size", "64", cwd=work)
    _cli("data", "split", "ds", cwd=work)
    _cli(
        "train", "--config", str(REPO / "train/configs/smoke.yaml"), "--dataset", "ds",
        "--out", "run", cwd=work,
    )  # fmt: skip
    _cli("keys", "generate", "--out", "key", cwd=work)
    _cli("export", "run", "--dataset", "ds", "--out", "bundle", "--key", "key.key", cwd=work)
    return EdgeBundle(
        work / "bundle", work / "key.pub", work / "key.key", work / "ds", work / "ds" / "images"
    )


@pytest.fixture(scope="session")
def defect_bundle(defect_run: tuple[Path, Path]) -> EdgeBundle:
    """The DefectNet run (defect map, anomaly memory) exported by the real CLI."""
    dataset, run = defect_run
    work = run.parent
    _cli("keys", "generate", "--out", "key", cwd=work)
    _cli(
        "export", str(run), "--dataset", str(dataset), "--out", "bundle", "--key", "key.key",
        "--calib-size", "64", "--latency-reps", "20", cwd=work,
    )  # fmt: skip
    return EdgeBundle(
        work / "bundle", work / "key.pub", work / "key.key", dataset, dataset / "images"
    )


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start private Mosquitto brokers on free loopback ports; all stopped at the end."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    started: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        kwargs.setdefault("folder", tmp_path / f"broker{len(started)}")
        broker = Mosquitto(**kwargs).start()
        started.append(broker)
        return broker

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return broker_factory()


@pytest.fixture
def python_broker(tmp_path: Path) -> Iterator[PythonBroker]:
    """The embedded Python broker (amqtt, MQTT 3.1.1) on a free loopback port."""
    if not python_broker_available():
        pytest.skip("amqtt is not installed (pip install amqtt)")
    broker = PythonBroker(folder=tmp_path / "amqtt").start()
    yield broker
    broker.stop()


@dataclass
class Subscriber:
    """A real MQTT client with a persistent session, recording every message by kind."""

    port: int
    client_id: str = "test-subscriber"
    topic: str = "lineqc/#"
    protocol: int = mqtt.MQTTv5  # or mqtt.MQTTv311 (the Python broker)
    tls: dict[str, str] | None = None  # paho's tls_set arguments: ca_certs, certfile, keyfile
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connected: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Subscriber:
        v5 = self.protocol == mqtt.MQTTv5
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else False,  # 3.1.1: a persistent session
        )
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        if self.tls is not None:
            c.tls_set(**self.tls)

        def on_connect(client: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
            if not rc.is_failure:
                client.subscribe(self.topic, qos=1)
                self.connected.set()

        def on_message(client: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        c.on_connect = on_connect
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = on_message
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600  # messages wait for us while the broker restarts
            c.connect_async(
                "127.0.0.1", self.port, keepalive=10, clean_start=False, properties=props
            )
        else:
            c.connect_async("127.0.0.1", self.port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.connected.wait(10), "subscriber could not connect"
        time.sleep(0.2)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def docs(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            msgs = list(self.messages)
        return [json.loads(p) for t, p, _ in msgs if t.endswith("/" + kind) and p]

    def frame_ids(self, kind: str = "sample") -> set[str]:
        return {d["frame_id"] for d in self.docs(kind)}

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    subs: list[Subscriber] = []

    def make(port: int, **kwargs: Any) -> Subscriber:
        s = Subscriber(port, **kwargs).start()
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.stop()


def device_config(
    tmp: Path, eb: EdgeBundle, port: int, source: str | None = None, **sections: Any
) -> Path:
    """Write a device YAML for the test bundle; ``sections`` update the top-level keys."""
    doc: dict[str, Any] = {
        "device": {"id": "dev1", "site": "site1", "line": "line1"},
        "camera": {"id": "cam0", "source": source or f"{eb.images}/**/*.png"},
        "model": {"bundle": str(eb.bundle), "public_key": str(eb.pubkey)},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        "outbox": {"path": str(tmp / "outbox.sqlite")},
        "telemetry": {"interval_s": 1},
        "actuator": {"kind": "none"},
        "shutdown_flush_s": 5,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = tmp / "device.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start_runtime(config: Path, *extra: str, log: Path | None = None) -> subprocess.Popen[str]:
    out = open(log, "a") if log else subprocess.PIPE  # noqa: SIM115 (closed by the caller)
    return subprocess.Popen(
        [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(config), *extra],
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def terminate(proc: subprocess.Popen[str], timeout: float = 15) -> float:
    """SIGTERM; returns the seconds it took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    return time.monotonic() - t0


@dataclass
class EdgeKit:
    """Helpers for a test: device configs and runtime processes (killed at the end)."""

    tmp: Path
    bundle: EdgeBundle
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def config(self, port: int, source: str | None = None, **sections: Any) -> Path:
        return device_config(self.tmp, self.bundle, port, source, **sections)

    def start(self, config: Path, *extra: str, log: Path | None = None) -> subprocess.Popen[str]:
        proc = start_runtime(config, *extra, log=log)
        self.procs.append(proc)
        return proc

    def run(
        self, config: Path, *extra: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(config), *extra],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    terminate = staticmethod(terminate)

    # the device every config here makes: dev1 on site1/line1
    TARGET = "site1/line1/dev1"

    def publish_command(self, port: int, payload: bytes | str) -> None:
        """Publish a payload on dev1's command topic, as anyone on the broker can."""
        import paho.mqtt.publish as mqtt_publish

        mqtt_publish.single(
            f"lineqc/v1/{self.TARGET}/cmd", payload, qos=1, hostname="127.0.0.1", port=port
        )

    def command(self, port: int, cmd: str, **fields: Any) -> bytes:
        """Sign a command with the fleet's key (the bundle's), publish it; returns the
        payload (to replay it)."""
        from lineqc.edge.commands import new_command, sign_command
        from lineqc.edge.signing import load_private_key

        doc = new_command(cmd, self.TARGET, fields.pop("id", None), **fields)
        payload = sign_command(doc, load_private_key(self.bundle.private_key))
        self.publish_command(port, payload)
        return payload


@pytest.fixture
def edge(tmp_path: Path, edge_bundle: EdgeBundle) -> Iterator[EdgeKit]:
    kit = EdgeKit(tmp_path, edge_bundle)
    yield kit
    for p in kit.procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """tmpfs("size=512k") or tmpfs("ro,size=64k"): a real small filesystem (root only; the
    test skips where mounting is not allowed), unmounted at the end."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
