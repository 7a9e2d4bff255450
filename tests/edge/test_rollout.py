"""Fleet rollout (issue 11 §1) with real processes: `lineqc fleet publish` and `deploy`, a
real Mosquitto, a real HTTP artifact store and `lineqc edge run` devices with A/B slots.
Shadow then promote on three devices (one away during the deploy), a bad bundle rolling
back by itself, tampered and older bundles refused, SIGKILL mid-download and on probation."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from lineqc.edge.bundle import seal, sha256_file
from lineqc.edge.decision import DecisionPolicy
from lineqc.edge.manifest import ModelEntry, ModelInfo
from lineqc.edge.rollout import Probation, SlotState
from lineqc.edge.signing import generate_keys, load_private_key
from tests.conftest import EdgeBundle, device_config, run_lineqc, start_runtime
from tests.edge.bundles import CLASSES, POLICY, tiny_manifest, tiny_onnx
from tests.fleet_http import StoreServer

# sends every frame to review: p(class) never reaches 1.0
REVIEW_ALL = DecisionPolicy(tuple(CLASSES), "ok", thresholds={"ok": 1.0, "bad": 1.0})


def make_bundle(
    root: Path, key: Path, version: str, policy: DecisionPolicy = POLICY, pad: int = 0
) -> Path:
    manifest = tiny_manifest().model_copy(
        update={
            "model": ModelInfo(name="tiny", version=version),
            "decision": policy,
            "models": {
                "fp32": ModelEntry(file="model.fp32.onnx", decision=policy),
                "int8": ModelEntry(file="model.int8.onnx", decision=policy, gate_passed=True),
            },
        }
    )
    root.mkdir(parents=True)
    model = tiny_onnx()
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        (root / name).write_bytes(model)
    if pad:  # a bigger tar, so a slow server takes seconds to serve it
        (root / "pad.bin").write_bytes(os.urandom(pad))
    seal(root, manifest, load_private_key(key))
    return root


@dataclass
class Fleet:
    tmp: Path
    private: Path
    public: Path
    images: Path
    v1: Path
    store: Path
    http: StoreServer
    port: int
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def config(self, device: str, **sections: Any) -> Path:
        folder = self.tmp / device
        folder.mkdir(exist_ok=True)
        eb = EdgeBundle(self.v1, self.public, self.private, self.images, self.images)
        path = device_config(
            folder,
            eb,
            self.port,
            f"{self.images}/*.png",
            device={"id": device, "site": "site1", "line": "line1"},
            camera={"loop": True, "fps": 20},
            model={"bundle": str(self.v1), "public_key": str(self.public), "threads": 1},
            rollout={"retry_s": 0.5},
            latency_budget_ms=1000,
            **sections,
        )
        return path

    def start(self, device: str, **sections: Any) -> subprocess.Popen[str]:
        proc = start_runtime(self.config(device, **sections), log=self.tmp / f"{device}.log")
        self.procs.append(proc)
        return proc

    def deploy(self, version: str, devices: str, stage: str, *extra: str) -> str:
        return run_lineqc(
            "fleet",
            "deploy",
            "--broker",
            f"mqtt://127.0.0.1:{self.port}",
            "--store",
            str(self.store),
            "--url",
            self.http.url,
            "--bundle",
            version,
            "--devices",
            devices,
            "--stage",
            stage,
            "--key",
            str(self.private),
            *extra,
        ).stdout

    def signed_deploy(self, device: str, **fields: Any) -> None:
        """A deploy published by hand (not through `fleet deploy`), retained, as an insider."""
        import paho.mqtt.publish as mqtt_publish

        from lineqc.edge.commands import new_command, sign_command
        from lineqc.edge.signing import load_private_key

        target = f"site1/line1/{device}"
        doc = new_command("deploy", target, "by-hand", **fields)
        payload = sign_command(doc, load_private_key(self.private))
        mqtt_publish.single(
            f"lineqc/v1/{target}/cmd",
            payload,
            qos=1,
            retain=True,
            hostname="127.0.0.1",
            port=self.port,
        )

    def entry(self, version: str) -> dict[str, Any]:
        return dict(json.loads((self.store / "index.json").read_text())[version])


@pytest.fixture
def fleet(tmp_path: Path, broker: Any) -> Iterator[Fleet]:
    private, public = generate_keys(tmp_path / "fleet")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (48, 64), dtype=np.uint8))
    store = tmp_path / "store"
    v1 = make_bundle(tmp_path / "bundles" / "v1", private, "1.0")
    for version, policy, pad in (
        ("2.0", POLICY, 300_000),
        ("3.0", REVIEW_ALL, 0),
        ("0.5", POLICY, 0),
    ):
        folder = make_bundle(tmp_path / "bundles" / version, private, version, policy, pad)
        run_lineqc(
            "fleet", "publish", str(folder), "--store", str(store), "--public-key", str(public)
        )
    http = StoreServer(store).start()
    kit = Fleet(tmp_path, private, public, images, v1, store, http, broker.port)
    yield kit
    for p in kit.procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    http.stop()


def statuses(sub: Any, device: str) -> list[dict[str, Any]]:
    return [d for d in sub.docs("status") if d["device"] == device]


def rollout_of(sub: Any, device: str) -> dict[str, Any]:
    docs = statuses(sub, device)
    return dict(docs[-1].get("rollout") or {}) if docs else {}


def wait_rollout(sub: Any, device: str, state: str, timeout: float = 60) -> dict[str, Any]:
    ok = sub.wait_for(lambda: rollout_of(sub, device).get("state") == state, timeout)
    assert ok, f"{device}: rollout {rollout_of(sub, device)} never reached {state}"
    return rollout_of(sub, device)


def online(sub: Any, device: str, timeout: float = 30) -> None:
    assert sub.wait_for(lambda: any(r["device"] == device for r in sub.docs("result")), timeout), (
        f"{device} inspects no frame"
    )


def test_three_devices_shadow_then_promote_one_away_catches_up(
    fleet: Fleet, subscriber_factory: Any
) -> None:
    sub = subscriber_factory(fleet.port)
    for device in ("dev1", "dev2", "dev3"):
        fleet.start(device)
    for device in ("dev1", "dev2", "dev3"):
        online(sub, device)
    away = fleet.procs[2]
    away.send_signal(signal.SIGTERM)  # dev3 leaves; its retained status stays
    assert away.wait(20) == 0
    out = fleet.deploy(
        "2.0", "site1/line1/*", "shadow", "--shadow-frames", "15", "--probation-frames", "20"
    )
    assert out.count("deploy 2.0 (shadow)") == 3, out
    for device in ("dev1", "dev2"):
        done = wait_rollout(sub, device, "done")
        assert done["active"] == "2.0" and done["active_slot"] in ("a", "b")
        seen = [s.get("rollout") or {} for s in statuses(sub, device)]
        shadowed = [r["shadow"] for r in seen if r.get("state") == "shadow" and "shadow" in r]
        assert shadowed, f"{device} reported no shadow figures"
        assert {"agreement", "latency_ms", "uncertain_candidate"} <= set(shadowed[-1])
        assert any(r.get("state") == "probation" for r in seen)
        assert any(r["model_version"] == "2.0" for r in sub.docs("result") if r["device"] == device)
    assert not [
        r for r in sub.docs("result") if r["device"] == "dev3" and r["model_version"] == "2.0"
    ]
    fleet.start("dev3")  # back: the retained deploy reaches it
    assert wait_rollout(sub, "dev3", "done")["active"] == "2.0"
    replies = [r for r in sub.docs("cmd/reply") if r["cmd"] == "deploy"]
    assert len(replies) == 3 and all(r["ok"] for r in replies), replies
    table = run_lineqc("fleet", "status", "--broker", f"mqtt://127.0.0.1:{fleet.port}").stdout
    assert table.count("active 2.0") == 3 and "done" in table, table


def test_a_bundle_that_sends_everything_to_review_rolls_back(
    fleet: Fleet, subscriber_factory: Any
) -> None:
    sub = subscriber_factory(fleet.port)
    fleet.start("dev1")
    online(sub, "dev1")
    fleet.deploy(
        "3.0", "site1/line1/dev1", "all", "--probation-frames", "40", "--max-uncertain-share", "0.3"
    )
    back = wait_rollout(sub, "dev1", "rolled_back")
    assert back["active"] == "1.0" and "uncertain" in back["reason"], back
    versions = [r["model_version"] for r in sub.docs("result")]
    assert "3.0" in versions  # it ran, judged by its own frames
    n = len(versions)
    assert sub.wait_for(lambda: len(sub.docs("result")) > n + 5, 20)
    assert {r["model_version"] for r in sub.docs("result")[n:]} == {"1.0"}
    state = SlotState.read(fleet.tmp / "dev1" / "bundles" / "rollout.json")
    assert state.active == "config" and state.phase == "rolled_back"


def test_tampered_wrong_hash_and_older_bundles_are_refused(
    fleet: Fleet, subscriber_factory: Any
) -> None:
    sub = subscriber_factory(fleet.port)
    fleet.start("dev1")
    online(sub, "dev1")
    # older: refused in the reply, before any download
    fleet.deploy("0.5", "site1/line1/dev1", "all")
    assert sub.wait_for(lambda: sub.docs("cmd/reply"), 15)
    reply = sub.docs("cmd/reply")[-1]
    assert reply["ok"] is False and "older than the running 1.0" in reply["error"], reply
    # a tar whose bytes are not the ones the deploy names
    good = fleet.entry("2.0")
    fleet.signed_deploy(
        "dev1",
        version="2.0",
        sha256="0" * 64,
        size=good["size"],
        urls=[f"{fleet.http.url}/{good['sha256']}.tar"],
        stage="all",
    )
    assert "sha256" in wait_rollout(sub, "dev1", "refused")["reason"]
    # a tampered bundle, stored with its own hash: the signature refuses it
    tampered = fleet.store / "tampered.tar"
    with (
        tarfile.open(fleet.store / f"{good['sha256']}.tar") as src,
        tarfile.open(tampered, "w") as dst,
    ):
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "model.fp32.onnx":
                data = data[:-4] + b"\x00\x00\x80\x3f"
            dst.addfile(m, io.BytesIO(data))
    n = len(statuses(sub, "dev1"))
    fleet.signed_deploy(
        "dev1",
        version="2.0",
        sha256=sha256_file(tampered),
        size=tampered.stat().st_size,
        urls=[f"{fleet.http.url}/tampered.tar"],
        stage="all",
    )
    assert sub.wait_for(
        lambda: any(
            "does not verify" in str((s.get("rollout") or {}).get("reason"))
            for s in statuses(sub, "dev1")[n:]
        ),
        30,
    ), rollout_of(sub, "dev1")
    assert rollout_of(sub, "dev1")["active"] == "1.0"
    assert {r["model_version"] for r in sub.docs("result")} == {"1.0"}
    # and `fleet publish` refuses it too
    bad = run_lineqc(
        "fleet",
        "publish",
        str(tampered),
        "--store",
        str(fleet.store),
        "--public-key",
        str(fleet.public),
        check=False,
    )
    assert bad.returncode == 2 and "not published" in bad.stderr


def test_sigkill_mid_download_resumes_and_on_probation_rolls_back_a_crash_loop(
    fleet: Fleet, subscriber_factory: Any
) -> None:
    sub = subscriber_factory(fleet.port)
    fleet.http.rate = 60_000  # bytes/s: the 300 kB bundle takes about 5 s
    proc = fleet.start("dev1")
    online(sub, "dev1")
    fleet.deploy("2.0", "site1/line1/dev1", "all", "--probation-frames", "100000")
    part = fleet.tmp / "dev1" / "bundles" / "download" / f"{fleet.entry('2.0')['sha256']}.part"
    assert sub.wait_for(lambda: part.exists() and part.stat().st_size > 50_000, 30)
    proc.kill()  # SIGKILL mid-download
    proc.wait()
    fleet.http.rate = None
    n = len(sub.docs("result"))
    proc = fleet.start("dev1")  # it starts on the bundle it had and resumes the download
    assert sub.wait_for(lambda: len(sub.docs("result")) > n, 30)
    assert sub.docs("result")[n]["model_version"] == "1.0"
    wait_rollout(sub, "dev1", "probation")
    resumed = [r for r in fleet.http.ranges if r and r != "bytes=0-"]
    assert resumed and int(resumed[-1][6:-1]) > 50_000, fleet.http.ranges
    # killed three times on probation (a crash loop): the third start goes back
    for _ in range(3):
        n = len(sub.docs("result"))
        assert sub.wait_for(lambda n=n: len(sub.docs("result")) > n + 2, 30)
        proc.kill()
        proc.wait()
        proc = fleet.start("dev1")
    back = wait_rollout(sub, "dev1", "rolled_back")
    assert back["active"] == "1.0" and "crash loop" in back["reason"], back
    n = len(sub.docs("result"))
    assert sub.wait_for(lambda: len(sub.docs("result")) > n + 2, 30)
    assert sub.docs("result")[-1]["model_version"] == "1.0"


def test_probation_judges_its_window() -> None:
    p = Probation(frames=10, max_over_budget=0.2, max_uncertain=0.5)
    for _ in range(9):
        p.record("ok", over_budget=False)
    assert p.judgement() is None
    p.record("ok", over_budget=False)
    assert p.judgement() == (True, "10 frames within the bounds")
    slow = Probation(frames=10, max_over_budget=0.2, max_uncertain=0.5)
    for _ in range(3):
        slow.record("ok", over_budget=True)
    judged = slow.judgement()
    assert judged is not None and not judged[0] and "latency" in judged[1]


def test_the_fleet_table_and_page_follow_a_rollout(
    fleet: Fleet, subscriber_factory: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from lineqc.review.app import create_app
    from lineqc.review.auth import add_user
    from lineqc.review.store import FleetDevice, FleetEvent, Store

    db = f"sqlite:///{tmp_path / 'review.sqlite'}"
    sub = subscriber_factory(fleet.port)
    fleet.start("dev1")
    online(sub, "dev1")
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lineqc",
            "fleet",
            "watch",
            "--broker",
            f"mqtt://127.0.0.1:{fleet.port}",
            "--db",
            db,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    fleet.procs.append(watcher)
    fleet.deploy("3.0", "site1/line1/dev1", "all", "--probation-frames", "40", "--db", db)
    wait_rollout(sub, "dev1", "rolled_back")
    store = Store(db)

    def row() -> FleetDevice | None:
        with store.session() as s:
            found = s.get(FleetDevice, "site1/line1/dev1")
            s.expunge_all()
            return found

    assert sub.wait_for(lambda: (r := row()) is not None and r.rollout == "rolled_back", 20)
    device = row()
    assert device is not None
    assert (device.active, device.desired, device.stage, device.reply) == (
        "1.0",
        "3.0",
        "all",
        "accepted",
    )
    with store.session() as s:
        steps = [(e.kind, e.state) for e in s.scalars(select(FleetEvent).order_by(FleetEvent.id))]
    assert steps.index(("deploy", "all")) < steps.index(("reply", "ok")), steps
    assert [st for k, st in steps if k == "rollout"][-2:] == ["probation", "rolled_back"], steps
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(20) == 0
    add_user(store, "boss", "a long enough password", admin=True)
    add_user(store, "ann", "a long enough password")
    app = create_app(store)
    for name, code in (("ann", 403), ("boss", 200)):
        client = TestClient(app, headers={"accept": "text/html"})
        page = client.get("/login")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        client.post(
            "/login",
            data={"name": name, "password": "a long enough password", "csrf": csrf},
            follow_redirects=False,
        )
        response = client.get("/fleet")
        assert response.status_code == code
    text = response.text
    assert 'data-device="site1/line1/dev1"' in text and "rolled_back" in text
    assert "uncertain share" in text  # the reason
    store.close()


def test_download_resumes_bounds_and_checks_its_bytes(tmp_path: Path) -> None:
    import hashlib
    import threading

    from lineqc.edge.rollout import Refused, download

    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "b.tar").write_bytes(data)
    never = threading.Event()
    part = tmp_path / "b.part"
    part.write_bytes(data[:70_000])  # what a killed download left: resumed from there
    download([(tmp_path / "store" / "b.tar").as_uri()], part, len(data), sha, never)
    assert part.read_bytes() == data
    http = StoreServer(tmp_path / "store").start()
    try:
        part.write_bytes(data[:123_456])
        download([f"{http.url}/missing.tar", f"{http.url}/b.tar"], part, len(data), sha, never)
        assert part.read_bytes() == data and http.ranges[-1] == "bytes=123456-"
        part.unlink()
        with pytest.raises(Refused, match="larger than the deploy's 100000 bytes"):
            download([f"{http.url}/b.tar"], part, 100_000, sha, never)
        part.unlink()
        with pytest.raises(Refused, match="sha256"):
            download([f"{http.url}/b.tar"], part, len(data), "0" * 64, never)
        assert not part.exists()  # never resumed from bytes that are not the named ones
    finally:
        http.stop()


def test_a_deploy_of_the_running_version_fetches_nothing(
    fleet: Fleet, subscriber_factory: Any
) -> None:
    sub = subscriber_factory(fleet.port)
    fleet.start("dev1")
    online(sub, "dev1")
    fleet.deploy("2.0", "site1/line1/dev1", "canary", "--probation-frames", "10")
    assert wait_rollout(sub, "dev1", "done")["active"] == "2.0"
    fetched = len(fleet.http.ranges)
    n = len(statuses(sub, "dev1"))
    fleet.deploy("2.0", "site1/line1/*", "all")  # the rest of the line, this one included
    assert sub.wait_for(
        lambda: any(
            (s.get("rollout") or {}).get("reason") == "already running 2.0"
            for s in statuses(sub, "dev1")[n:]
        ),
        20,
    ), rollout_of(sub, "dev1")
    assert len(fleet.http.ranges) == fetched
    assert rollout_of(sub, "dev1")["active_slot"] in ("a", "b")


def test_the_review_server_serves_the_store_with_range(fleet: Fleet, tmp_path: Path) -> None:
    import threading
    import urllib.error
    import urllib.request

    from lineqc.edge.rollout import download

    entry = fleet.entry("2.0")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lineqc",
            "review",
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'r.sqlite'}",
            "--port",
            "0",
            "--bundle-store",
            str(fleet.store),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    fleet.procs.append(server)
    assert server.stdout is not None
    line = server.stdout.readline()
    url = line.split("review app: ")[1].strip().rstrip("/")
    tar = fleet.store / f"{entry['sha256']}.tar"
    part = tmp_path / "b.part"
    part.write_bytes(tar.read_bytes()[:100_000])  # resumed with Range from the review server
    download(
        [f"{url}/bundles/{entry['sha256']}.tar"],
        part,
        entry["size"],
        entry["sha256"],
        threading.Event(),
    )
    assert part.read_bytes() == tar.read_bytes()
    ranged = urllib.request.Request(
        f"{url}/bundles/{entry['sha256']}.tar", headers={"Range": "bytes=100000-"}
    )
    with urllib.request.urlopen(ranged) as resp:
        assert resp.status == 206 and resp.read() == tar.read_bytes()[100_000:]
    for name in ("0" * 64 + ".tar", "index.json", "..%2Findex.json"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/bundles/{name}")
        assert err.value.code == 404
