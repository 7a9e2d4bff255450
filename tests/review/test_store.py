"""The review store on SQLite and on PostgreSQL (the `store` fixture runs each test on both):
idempotent by frame id, content-addressed images, the double-review share, rejects."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lineqc.edge.wire import Sample
from lineqc.review.store import (
    Frame,
    Outcome,
    Reject,
    Store,
    StoreError,
    in_share,
    set_setting,
)
from tests.review.kit import defect_map

MakeSample = Callable[..., Sample]  # the make_sample fixture (tests/review/conftest.py)


def frames(store: Store) -> list[Frame]:
    with store.session() as s:
        return list(s.scalars(select(Frame).order_by(Frame.frame_id)))


def image_files(store: Store) -> list[Path]:
    return sorted(p for p in store.images.rglob("*") if p.is_file())


def test_add_sample_is_idempotent_by_frame_id(store: Store, make_sample: MakeSample) -> None:
    assert store.add_sample(make_sample("dev1-cam0-1-1")) is Outcome.STORED
    # at-least-once delivery: the same frame again is a duplicate; with other values it is
    # a conflict (said so, never silently dropped); either way the first one is kept
    assert store.add_sample(make_sample("dev1-cam0-1-1")) is Outcome.DUPLICATE
    other = make_sample("dev1-cam0-1-1", probabilities=[0.1, 0.1, 0.8])
    assert store.add_sample(other) is Outcome.CONFLICT
    other_image = make_sample("dev1-cam0-1-1", jpeg=make_sample("dev1-cam0-1-2").image.jpeg_bytes())
    assert store.add_sample(other_image) is Outcome.CONFLICT
    assert not store.add_sample(other)  # only a stored frame is true
    rows = frames(store)
    assert len(rows) == 1 and rows[0].confidence == 0.5
    assert (rows[0].device, rows[0].predicted, rows[0].reason) == ("dev1", "ok", "ambiguous")
    assert rows[0].classes == ["ok", "scratch", "dent"]
    assert rows[0].probabilities == [0.5, 0.3, 0.2]


def test_image_is_stored_content_addressed_with_identical_bytes(
    store: Store, make_sample: MakeSample
) -> None:
    sample = make_sample("dev1-cam0-1-1")
    assert sample.image is not None
    data = sample.image.jpeg_bytes()
    store.add_sample(sample)
    (row,) = frames(store)
    digest = hashlib.sha256(data).hexdigest()
    assert row.image_sha256 == digest
    assert (row.image_width, row.image_height, row.image_scale) == (32, 24, 1.0)
    path = store.image_path(digest)
    assert path == store.images / digest[:2] / f"{digest}.jpg"
    assert path.read_bytes() == data
    assert image_files(store) == [path]  # and no temporary file left behind


def test_frames_with_the_same_image_share_one_file(store: Store, make_sample: MakeSample) -> None:
    first = make_sample("dev1-cam0-1-1")
    same_image = make_sample("dev1-cam0-1-2").model_copy(update={"image": first.image})
    other = make_sample("dev1-cam0-1-3")
    assert first.image != other.image
    for sample in (first, same_image, other):
        assert store.add_sample(sample)
    rows = frames(store)
    assert rows[0].image_sha256 == rows[1].image_sha256 != rows[2].image_sha256
    assert len(image_files(store)) == 2


def test_a_batch_stores_as_one_sample_at_a_time_would(
    store: Store, make_sample: MakeSample
) -> None:
    """add_samples: one commit for the batch, the same outcomes as one by one, duplicates
    and conflicts inside the batch and against stored frames included."""
    assert store.add_sample(make_sample("dev1-cam0-1-0")) is Outcome.STORED
    first = make_sample("dev1-cam0-1-1", defect_map=defect_map([[0.1, 0.9], [0.0, 0.5]]))
    batch = [
        make_sample("dev1-cam0-1-0"),  # stored before: a redelivery
        make_sample("dev1-cam0-1-0", probabilities=[0.1, 0.1, 0.8]),  # stored before, changed
        first,
        first,  # twice in one batch
        make_sample("dev1-cam0-1-1", probabilities=[0.2, 0.2, 0.6]),  # the batch's own conflict
        make_sample("dev1-cam0-1-2").model_copy(update={"image": first.image}),  # same image
        make_sample("dev1-cam0-1-3"),
    ]
    assert store.add_samples(batch) == [
        Outcome.DUPLICATE, Outcome.CONFLICT, Outcome.STORED, Outcome.DUPLICATE,
        Outcome.CONFLICT, Outcome.STORED, Outcome.STORED,
    ]  # fmt: skip
    rows = {r.frame_id: r for r in frames(store)}
    assert sorted(rows) == [f"dev1-cam0-1-{i}" for i in range(4)]
    assert rows["dev1-cam0-1-1"].probabilities == [0.5, 0.3, 0.2]  # the first kept
    assert rows["dev1-cam0-1-1"].image_sha256 == rows["dev1-cam0-1-2"].image_sha256
    digest = rows["dev1-cam0-1-1"].image_sha256
    assert first.image is not None and first.defect_map is not None
    assert store.image_path(digest).read_bytes() == first.image.jpeg_bytes()
    assert store.defect_map_path(digest).read_bytes() == first.defect_map.png_bytes()
    # three images (frames 0, 1 and 3) and one defect map, no temporary file left behind
    assert len(image_files(store)) == 4
    assert store.add_samples([]) == []


def test_image_path_refuses_anything_but_a_sha256(store: Store) -> None:
    for bad in ("../x", "../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "/etc/passwd"):
        with pytest.raises(StoreError, match="not an image id"):
            store.image_path(bad)
    assert store.image_path("0f" * 32).is_relative_to(store.images)


def test_sample_without_image_is_stored_with_its_reason(
    store: Store, make_sample: MakeSample
) -> None:
    why = "too large even re-encoded"
    sample = make_sample("dev1-cam0-1-1").model_copy(update={"image": None, "image_error": why})
    assert store.add_sample(sample)
    (row,) = frames(store)
    assert row.image_sha256 is None and row.image_width is None and row.image_error == why
    assert image_files(store) == []


def test_defect_map_is_stored_beside_its_image(store: Store, make_sample: MakeSample) -> None:
    first = make_sample("dev1-cam0-1-1", defect_map=defect_map([[0.0, 1.0]]))
    assert first.image is not None and first.defect_map is not None
    assert store.add_sample(first)
    (row,) = frames(store)
    path = store.defect_map_path(row.image_sha256 or "")
    assert path == store.images / path.name[:2] / f"{row.image_sha256}.defect.png"
    assert path.read_bytes() == first.defect_map.png_bytes()
    # the same image again with another map (say, another model): the first map is kept
    again = make_sample("dev1-cam0-1-2", defect_map=defect_map([[1.0, 0.0]]))
    assert store.add_sample(again.model_copy(update={"image": first.image}))
    assert path.read_bytes() == first.defect_map.png_bytes()
    # a map without an image has nothing to lie over: not stored
    blind = make_sample("dev1-cam0-1-3", defect_map=defect_map([[0.5]]))
    assert store.add_sample(blind.model_copy(update={"image": None, "image_error": "big"}))
    assert image_files(store) == sorted([store.image_path(row.image_sha256 or ""), path])
    with pytest.raises(StoreError, match="not an image id"):
        store.defect_map_path("../" + "a" * 61)


def test_double_review_share_is_stable_and_near_the_setting(
    store: Store, make_sample: MakeSample
) -> None:
    with store.session() as s:
        set_setting(s, "double_review_share", 0.3)
    ids = [f"dev1-cam0-18f3a9c2b41-{i:07d}" for i in range(300)]
    for frame_id in ids:
        store.add_sample(make_sample(frame_id).model_copy(update={"image": None}))
    double = {r.frame_id for r in frames(store) if r.required_reviews == 2}
    # the same frame gets the same choice on every collector and after every restart
    assert double == {f for f in ids if in_share(f, 0.3)}
    assert 0.3 - 0.1 < len(double) / len(ids) < 0.3 + 0.1  # ~4 standard deviations
    assert all(r.required_reviews in (1, 2) for r in frames(store))


def test_in_share_follows_the_configured_share() -> None:
    keys = [f"orin-{d}-cam0-1-{i}" for d in range(4) for i in range(2500)]
    for share in (0.0, 0.1, 0.5, 1.0):
        got = sum(in_share(k, share) for k in keys) / len(keys)
        assert abs(got - share) < 0.02
    assert [in_share(k, 0.1) for k in keys[:50]] == [in_share(k, 0.1) for k in keys[:50]]


def test_rejects_are_recorded_without_payload(store: Store) -> None:
    store.add_reject("lineqc/v1/a/b/c/sample", "message: not JSON", 5)
    store.add_reject("t" * 400, "message: wire version 2 is not supported", 120)
    with store.session() as s:
        rows = list(s.scalars(select(Reject).order_by(Reject.id)))
        assert s.scalar(select(func.count()).select_from(Frame)) == 0
    assert [(r.reason, r.size) for r in rows] == [
        ("message: not JSON", 5),
        ("message: wire version 2 is not supported", 120),
    ]
    assert rows[0].topic == "lineqc/v1/a/b/c/sample" and rows[1].topic == "t" * 300


def test_sqlite_is_wal_with_full_sync(sqlite_store: Store) -> None:
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_unusable_database_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nosuch"):
        Store("nosuch://host/db", tmp_path / "images")
