"""The whole loop on small synthetic data, every stage its real command: an edge replay
publishes to Mosquitto -> `lineqc review collect` stores the samples -> two inspectors label
them through `lineqc review serve` over HTTP (sign-in, CSRF, the label forms) ->
`lineqc review export-labels` puts them into the dataset -> `lineqc retrain` trains and
compares a challenger.

Then the demo's loop as `make demo` runs it: parts held out as new production, replayed by
`lineqc review demo`, labelled by `lineqc review demo-inspect` (the oracle), their labels in
training through `lineqc retrain`, and a second retrain with nothing new that trains,
promotes and signs nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from lineqc.datasets import manifest as mf
from lineqc.datasets.split import production_ids
from lineqc.edge.broker import Mosquitto, mosquitto_binary
from lineqc.review.conflicts import KnownLabels
from lineqc.review.store import Frame, Review, Store, User
from tests.review.kit import review_serve

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
INSPECTORS = {"ann": "ann-password-1", "bob": "bob-password-1"}


@pytest.fixture
def review_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """`lineqc review serve` on a free port; its URL and --db args."""
    db = ["--db", str(tmp_path / "review.db"), "--images", str(tmp_path / "review-images")]
    with review_serve(db, tmp_path / "serve.log") as url:
        yield url, db


def sign_in(base: str, name: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=True, timeout=30)
    page = client.get("/login")
    token = CSRF.search(page.text)
    assert token, page.text
    r = client.post(
        "/login", data={"name": name, "password": password, "csrf": token[1], "next": "/queue"}
    )
    assert r.status_code == 200 and "frames waiting" in r.text, r.text
    return client


def label_queue(client: httpx.Client, store: Store) -> int:
    """Answer every frame the app offers with the model's own top class; the count."""
    answered = 0
    page = client.get("/next")
    while "/frame/" in str(page.url):
        pk = int(str(page.url).split("/frame/")[1].split("?")[0].split("/")[0])
        with store.session() as s:
            predicted = s.get(Frame, pk).predicted  # type: ignore[union-attr]
        token = CSRF.search(page.text)
        assert token
        page = client.post(f"/frame/{pk}/label", data={"csrf": token[1], "label": predicted})
        assert page.status_code == 200, page.text
        answered += 1
    return answered


@pytest.mark.slow
def test_edge_replay_to_retrained_challenger(
    tmp_path: Path,
    edge: Any,
    broker_factory: Callable[..., Mosquitto],
    review_server: tuple[str, list[str]],
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    base, db = review_server
    broker = broker_factory()
    collect = [
        "review", "collect", "--broker", f"mqtt://127.0.0.1:{broker.port}", *db,
        "--client-id", "loop-collector",
    ]  # fmt: skip
    lineqc(*collect, "--exit-idle", "0.5")  # opens the persistent session, then leaves

    # The device replays the synthetic images; the broker queues its samples for the session.
    config = edge.config(broker.port, sampling={"audit_share": 0.3, "seed": 0})
    device = edge.run(config, "--json")
    assert device.returncode == 0, device.stderr
    counts = json.loads(device.stdout)["sampling"]
    sampled = counts.get("sampled_uncertain", 0) + counts.get("sampled_audit", 0)
    assert sampled > 0
    collected = lineqc(*collect, "--exit-idle", "3")
    assert f"stored {sampled}," in collected.stdout, collected.stdout

    store = Store(db[1], db[3])
    with store.session() as s:
        assert len(s.scalars(select(Frame)).all()) == sampled
        double = len(s.scalars(select(Frame).where(Frame.required_reviews == 2)).all())

    # Two inspectors label their queues through the web app.
    for name, password in INSPECTORS.items():
        lineqc("review", "add-user", name, "--password-stdin", *db, input=password + "\n")
    ann = label_queue(sign_in(base, "ann", INSPECTORS["ann"]), store)
    bob = label_queue(sign_in(base, "bob", INSPECTORS["bob"]), store)
    assert ann == sampled and bob == double  # bob sees only the frames still needing a label
    with store.session() as s:
        by_user = {
            u.name: len(s.scalars(select(Review).where(Review.user_id == u.id)).all())
            for u in s.scalars(select(User))
        }
    assert by_user == {"ann": sampled, "bob": double}
    store.close()

    # The labels go into (a copy of) the device's dataset; its frozen test split is untouched.
    dataset = Path(shutil.copytree(edge.bundle.dataset, tmp_path / "ds"))
    test_before = {r.id: r.to_json() for r in mf.load(dataset).in_split("test")}
    exported = lineqc("review", "export-labels", *db, "--dataset", str(dataset), "--json")
    summary = json.loads(exported.stdout)
    # The frames are shots of the dataset's own parts: an answer (the model's top class) that
    # contradicts the known label is held back for an admin, every other one goes in.
    conflicts = summary["conflicts"]
    assert all(c["held"] and c["label"] not in c["known"] for c in conflicts), conflicts
    assert summary["skipped"]["conflict"] == len(conflicts)
    assert summary["exported"] > 0 and summary["exported"] + len(conflicts) == sampled, summary
    manifest = mf.load(dataset)
    reviewed = [r for r in manifest if r.label_source.startswith("inspector:")]
    assert len(reviewed) == summary["exported"]
    held = {c["frame_id"] for c in conflicts}
    assert not held & {r.origin for r in reviewed}
    assert {r.id: r.to_json() for r in manifest.in_split("test")} == test_before
    assert all(r.split != "test" for r in reviewed)

    # The monthly job trains a challenger with the champion's config and compares them.
    champion = edge.bundle.bundle.parent / "run"
    out = tmp_path / "retrain"
    lineqc(
        "retrain", "--dataset", str(dataset), "--champion", str(champion), "--out", str(out),
        "--set", "epochs=1",
    )  # fmt: skip
    assert (out / "challenger" / "best.pt").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["decision"]["reasons"], comparison  # it says why, either way
    assert (out / "comparison.md").is_file()


SMOKE = Path(__file__).resolve().parents[2] / "train" / "configs" / "smoke.yaml"


def replay_config(folder: Path, dataset: Path, source: str, bundle: Path, pubkey: Path) -> Path:
    """firmware_config/replay-demo.yaml for a test dataset: its new production, replayed."""
    doc = yaml.safe_load((SMOKE.parents[2] / "firmware_config" / "replay-demo.yaml").read_text())
    doc["camera"]["source"] = f"dataset://{dataset}?split=None&source={source}"
    doc["model"].update(bundle=str(bundle), public_key=str(pubkey))
    doc["outbox"]["path"] = str(folder / "outbox.sqlite")
    doc["sampling"]["audit_share"] = 1.0  # every frame reaches review: more to label
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_demo_loop_labelled_production_reaches_training_and_nothing_new_promotes_nothing(
    tmp_path: Path, lineqc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    ds, run, key = tmp_path / "ds", tmp_path / "run", tmp_path / "key"
    lineqc("data", "synth", str(ds), "--n", "160", "--seed", "3", "--size", "64")
    split = lineqc("data", "split", str(ds), "--production", "0.25").stdout
    assert "held out as new production" in split
    before = mf.load(ds)
    held = production_ids(before)
    test_rows = {r.id: r.to_json() for r in before.in_split("test")}
    lineqc("train", "--config", str(SMOKE), "--dataset", str(ds), "--out", str(run))
    lineqc("keys", "generate", "--out", str(key))
    lineqc(
        "export", str(run), "--dataset", str(ds), "--out", str(tmp_path / "bundle"),
        "--key", f"{key}.key", "--calib-size", "64", "--latency-reps", "20",
    )  # fmt: skip
    config = replay_config(tmp_path, ds, "synth-3", tmp_path / "bundle", Path(f"{key}.pub"))

    # make demo: the production parts through the edge runtime into the review store.
    db = ["--db", str(tmp_path / "review.db"), "--images", str(tmp_path / "review-images")]
    demo = lineqc(
        "review", "demo", "--device-config", str(config), *db, "--dataset", str(ds), "--no-serve"
    )
    assert f"inspected {len(held)} frames: " in demo.stdout and "sent to review" in demo.stdout

    # make demo-inspect: the oracle labels the queue through the app, some answers wrong.
    with review_serve([*db, "--dataset", str(ds)], tmp_path / "serve.log") as url:
        proc = lineqc(
            "review", "demo-inspect", "--url", url, *db, "--dataset", str(ds),
            "--wrong-share", "0.2", "--json",
        )  # fmt: skip
    inspected = json.loads(proc.stdout)
    assert "ORACLE" in proc.stderr and inspected["answers"]["inspector"] == len(held)
    assert inspected["answers"]["inspector2"] > 0 and inspected["wrong"]["inspector"] > 0

    # make demo-retrain: the labels join training, a challenger is trained and compared.
    retrain = ["retrain", "--dataset", str(ds), *db, "--key", f"{key}.key", "--no-gate"]
    first = lineqc(*retrain, "--champion", str(run), "--out", str(tmp_path / "r1"))
    doc = json.loads((tmp_path / "r1" / "comparison.json").read_text())
    held_back = [c for c in doc["export_labels"]["conflicts"] if c["held"]]
    assert len(held_back) == inspected["conflicts_waiting"] > 0  # wrong and agreed: held
    manifest = mf.load(ds)
    reviewed = [r for r in manifest if r.label_source.startswith("inspector:")]
    production = KnownLabels.of(mf.Manifest({i: before.records[i] for i in held}))
    assert reviewed and all(production.for_hash(r.phash) is not None for r in reviewed)
    assert any(r.split == "train" for r in reviewed)  # labelled production frames train
    assert {r.split for r in reviewed} <= {"train", "val"}
    assert production_ids(manifest) == held and all(manifest.records[i].split is None for i in held)
    assert {r.id: r.to_json() for r in manifest.in_split("test")} == test_rows
    assert set(doc["since_champion"]["training"]) == {r.id for r in reviewed}
    assert (tmp_path / "r1" / "challenger" / "best.pt").is_file()
    assert "champion" in first.stdout and "challenger" in first.stdout  # side by side

    # Again, against the challenger, with nothing new: nothing trained, promoted or signed.
    second = lineqc(
        *retrain[:-1], "--champion", str(tmp_path / "r1" / "challenger"),
        "--out", str(tmp_path / "r2"),
    )  # fmt: skip
    assert second.stdout.startswith("NOT RETRAINED: no new training rows since the champion")
    again = json.loads((tmp_path / "r2" / "comparison.json").read_text())
    assert not again["decision"]["promoted"] and again["bundle"]["exported"] is False
    assert (
        not (tmp_path / "r2" / "challenger").exists() and not (tmp_path / "r2" / "bundle").exists()
    )
