"""The whole loop on small synthetic data, every stage its real command: an edge replay
publishes to Mosquitto -> `lineqc review collect` stores the samples -> two inspectors label
them through `lineqc review serve` over HTTP (sign-in, CSRF, the label forms) ->
`lineqc review export-labels` puts them into the dataset -> `lineqc retrain` trains and
compares a challenger."""

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
from sqlalchemy import select

from lineqc.datasets import manifest as mf
from lineqc.edge.broker import Mosquitto
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
    assert summary["exported"] == sampled, summary
    manifest = mf.load(dataset)
    reviewed = [r for r in manifest if r.label_source.startswith("inspector:")]
    assert len(reviewed) == sampled
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
