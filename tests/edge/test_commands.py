"""Device commands are signed: the attacks of issue 13 against a real runtime on a real
Mosquitto (unsigned, replayed, a downgrade by flag, probing paths), and the gate's rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lineqc.edge.bundle import MANIFEST, seal
from lineqc.edge.commands import CommandGate, CommandRefused, new_command, sign_command
from lineqc.edge.manifest import Manifest
from lineqc.edge.runtime import NO_SUCH_BUNDLE
from lineqc.edge.signing import generate_keys, load_private_key, load_public_key
from lineqc.edge.wire import dumps

ZERO = {c: 0.0 for c in ("contamination", "dent", "ok", "scratch")}  # the line rejects all


def _replies(sub: Any, n: int) -> list[dict[str, Any]]:
    assert sub.wait_for(lambda: len(sub.docs("cmd/reply")) >= n, 15), sub.docs("cmd/reply")
    return sub.docs("cmd/reply")


def _status_after(sub: Any, n_before: int) -> dict[str, Any]:
    """A status the device published after the first ``n_before`` ones."""
    assert sub.wait_for(lambda: len(sub.docs("status")) > n_before, 15)
    return sub.docs("status")[-1]


def _counters(sub: Any) -> dict[str, int]:
    n = len(sub.docs("telemetry"))
    assert sub.wait_for(lambda: len(sub.docs("telemetry")) > n, 5)
    return dict(sub.docs("telemetry")[-1]["counters"])


def _running(edge: Any, sub: Any, port: int, **sections: Any) -> Any:
    seen = len(sub.docs("result"))
    proc = edge.start(edge.config(port, camera={"loop": True, "fps": 20}, **sections))
    assert sub.wait_for(lambda: len(sub.docs("result")) > seen + 3, 30)
    return proc


def test_an_unsigned_command_is_refused_and_the_policy_stays(
    edge, broker, subscriber_factory
) -> None:
    sub = subscriber_factory(broker.port)
    proc = _running(edge, sub, broker.port)
    before = sub.docs("status")[-1]["decision"]
    n = len(sub.docs("status"))
    # the attack: anyone on the broker sets every threshold to zero
    edge.publish_command(
        broker.port,
        json.dumps({"v": 1, "cmd": "set_thresholds", "id": "evil", "prob_floor": 0.0,
                    "margin": 0.0, "thresholds": ZERO}),
    )  # fmt: skip
    reply = _replies(sub, 1)[0]
    assert reply["ok"] is False and "not a signed command" in reply["error"]
    assert reply["id"] is None  # nothing of an unverified message is echoed
    assert _status_after(sub, n)["decision"] == before
    assert before["prob_floor"] > 0 or before["margin"] > 0 or any(before["thresholds"].values())
    counters = _counters(sub)
    assert counters["commands_refused"] == counters["commands_refused_unsigned"] == 1
    edge.terminate(proc)


def test_a_signed_command_is_applied_once_and_its_replay_refused(
    edge, broker, subscriber_factory
) -> None:
    sub = subscriber_factory(broker.port)
    proc = _running(edge, sub, broker.port)
    n = len(sub.docs("status"))
    sent = subprocess.run(
        [sys.executable, "-m", "lineqc", "edge", "command",
         "--broker", f"mqtt://127.0.0.1:{broker.port}", "--device", edge.TARGET,
         "--key", str(edge.bundle.private_key), "--id", "c1",
         "set-thresholds", "--prob-floor", "0", "--margin", "0",
         *[a for c in ZERO for a in ("--threshold", f"{c}=0")]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"{edge.TARGET}: set_thresholds c1: done"
    decision = _status_after(sub, n)["decision"]
    assert decision["prob_floor"] == decision["margin"] == 0.0
    assert decision["thresholds"] == ZERO
    # an eavesdropper replays the very message the fleet sent
    (captured,) = [p for t, p, _ in sub.messages if t.endswith("/cmd")]
    assert b'"sig"' in captured
    edge.publish_command(broker.port, captured)
    replay = _replies(sub, 2)[1]
    assert replay["ok"] is False and replay["id"] == "c1" and "not above" in replay["error"]
    assert _counters(sub)["commands_refused_replayed"] == 1
    edge.terminate(proc)


def _older_bundle(edge: Any, store: Path, version: str) -> Path:
    """The test bundle re-signed by the fleet's key as an older version."""
    old = store / "old"
    shutil.copytree(edge.bundle.bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["model"]["version"] = version
    seal(old, Manifest.from_json(manifest), load_private_key(edge.bundle.private_key))
    return old


def test_a_downgrade_needs_the_device_allowance_and_the_exact_version(
    edge, broker, subscriber_factory, tmp_path: Path
) -> None:
    store = tmp_path / "bundles"
    store.mkdir()
    _older_bundle(edge, store, "1")
    sub = subscriber_factory(broker.port)
    proc = _running(edge, sub, broker.port, commands={"bundle_dir": str(store)})
    running = sub.docs("status")[-1]["model_version"]
    assert running != "1"
    # the v1 way, `force`, now signed by the fleet: no longer a downgrade licence
    forced = new_command("reload_bundle", edge.TARGET, "r0", bundle="old")
    edge.publish_command(
        broker.port,
        sign_command({**forced, "force": True}, load_private_key(edge.bundle.private_key)),
    )
    edge.command(broker.port, "reload_bundle", id="r1", bundle="old", downgrade_to="1")
    r0, r1 = _replies(sub, 2)
    assert r0["ok"] is False and "force" in r0["error"]
    assert r1["ok"] is False and "does not allow downgrades" in r1["error"]
    n = len(sub.docs("status"))
    assert _status_after(sub, n)["model_version"] == running
    edge.terminate(proc)

    # a device that allows downgrades still needs the exact version named
    proc = _running(
        edge, sub, broker.port, commands={"bundle_dir": str(store), "allow_downgrade": True}
    )
    edge.command(broker.port, "reload_bundle", id="r2", bundle="old")
    edge.command(broker.port, "reload_bundle", id="r3", bundle="old", downgrade_to="0.9")
    edge.command(broker.port, "reload_bundle", id="r4", bundle="old", downgrade_to="1")
    r2, r3, r4 = _replies(sub, 5)[2:]
    assert r2["ok"] is False and "must name it" in r2["error"]
    assert r3["ok"] is False and "not 0.9" in r3["error"]
    assert r4["ok"] is True, r4
    n = len(sub.docs("status"))
    assert _status_after(sub, n)["model_version"] == "1"
    edge.terminate(proc)


def test_missing_and_forbidden_bundle_paths_read_the_same(
    edge, broker, subscriber_factory, tmp_path: Path
) -> None:
    store = tmp_path / "bundles"
    store.mkdir()
    sub = subscriber_factory(broker.port)
    proc = _running(edge, sub, broker.port, commands={"bundle_dir": str(store)})
    real = edge.bundle.bundle  # a valid bundle, but outside the device's bundle folder
    names = ["/nonexistent/bundle", str(real), f"../../{real.name}", "/etc", "missing"]
    for i, name in enumerate(names):
        edge.command(broker.port, "reload_bundle", id=f"p{i}", bundle=name)
    replies = _replies(sub, len(names))
    assert {r["error"] for r in replies} == {NO_SUCH_BUNDLE}
    assert not any(str(real.parent) in r["error"] or "etc" in r["error"] for r in replies)
    edge.terminate(proc)


# ---- the gate's rules, without a broker -----------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Any, Any]:
    private, public = generate_keys(tmp_path / "fleet")
    return load_private_key(private), load_public_key(public)


def test_the_gate_refuses_forgeries_other_devices_stale_and_replayed_commands(
    fleet: tuple[Any, Any], tmp_path: Path
) -> None:
    key, public = fleet
    state = tmp_path / "state" / "commands.state.json"
    gate = CommandGate(public, "s/l/d", state, max_age_s=60)
    now = time.time()

    def refusal(payload: bytes) -> str:
        with pytest.raises(CommandRefused) as info:
            gate.admit(payload, now)
        return info.value.reason

    ok = sign_command(new_command("status", "s/l/d", "a", seq=10), key)
    stranger = load_private_key(generate_keys(tmp_path / "stranger")[0])
    assert refusal(sign_command(new_command("status", "s/l/d", seq=11), stranger)) == (
        "bad_signature"
    )
    doc = json.loads(ok)
    doc["command"] = doc["command"][:-4] + "AAA="  # the signed bytes altered
    assert refusal(dumps(doc)) == "bad_signature"
    assert refusal(sign_command(new_command("status", "s/l/other", seq=12), key)) == (
        "wrong_device"
    )
    stale = {**new_command("status", "s/l/d", seq=13), "ts": now - 3600}
    assert refusal(sign_command(stale, key)) == "stale"
    assert gate.admit(ok, now).id == "a"
    assert refusal(ok) == "replayed"
    assert refusal(sign_command(new_command("status", "s/l/d", seq=9), key)) == "replayed"
    # the counter outlives a restart
    assert json.loads(state.read_text())["last_seq"] == 10
    again = CommandGate(public, "s/l/d", state, max_age_s=60)
    with pytest.raises(CommandRefused, match="not above"):
        again.admit(ok, now)
    assert again.admit(sign_command(new_command("status", "s/l/d", seq=11), key), now)
