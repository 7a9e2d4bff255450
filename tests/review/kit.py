"""Test kit for the review tests: real wire-format samples, and a seeder that writes frames,
inspectors and answers through the review store's tables (with a scenario holding every
consensus state). Imported as ``tests.review.kit`` (pytest's pythonpath is the repo root)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import update

from lineqc.datasets import manifest as mf
from lineqc.datasets.synth import candidates
from lineqc.edge.defect_map import png
from lineqc.edge.wire import (
    Sample,
    defect_map_part,
    dumps,
    image_part,
    parse_message,
    sample_message,
)
from lineqc.review.store import SKIP, UNSURE, Adjudication, Frame, Review, Store, User

NOW = time.time()
HOUR = 3600.0


@contextmanager
def review_serve(db_args: list[str], log: Path) -> Iterator[str]:
    """The real `lineqc review serve` on a free port (``--port 0``); yields the URL it prints
    once it listens, and stops it at the end."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lineqc", "review", "serve", *db_args, "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"review app: (http://\S+)", log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`lineqc review serve` did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wire_sample(
    frame_id: str, jpeg: bytes | None = None, image_error: str | None = None, **fields: Any
) -> Sample:
    """A real ``sample`` message: built with the device's builder around a real small JPEG
    (distinct per frame id), serialised, and parsed as the collector parses it. ``fields``
    override the metadata; ``label`` and ``confidence`` follow the probabilities by default.
    ``jpeg`` replaces the generated image; ``image_error`` sends none (as a device does when
    even the smallest re-encoding is too large).
    """
    doc: dict[str, Any] = {
        "why": "uncertain", "device": "dev1", "site": "site1", "line": "line1",
        "camera": "cam0", "seq": 1, "ts": 1790000000.0, "model_version": "m1",
        "classes": ["ok", "scratch", "dent"], "probabilities": [0.5, 0.3, 0.2],
        "verdict": "uncertain", "reason": "ambiguous",
    }  # fmt: skip
    doc.update(fields)
    probs = doc["probabilities"]
    top = max(range(len(probs)), key=probs.__getitem__)
    doc.setdefault("label", doc["classes"][top])
    doc.setdefault("confidence", probs[top])
    msg = sample_message(frame_id=frame_id, **doc)
    if image_error is not None:
        msg["image_error"] = image_error
    else:
        if jpeg is None:
            shade = hashlib.sha256(frame_id.encode()).digest()[0]
            gray = (np.add.outer(np.arange(24), np.arange(32)) * 3 + shade) % 256
            ok, buf = cv2.imencode(".jpg", gray.astype(np.uint8))
            assert ok
            jpeg = buf.tobytes()
        h, w = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
        msg["image"] = image_part(jpeg, w, h, 90, 1.0)
    parsed = parse_message(dumps(msg))
    assert isinstance(parsed, Sample)
    return parsed


def defect_map(cells: np.ndarray | list[list[float]]) -> dict[str, Any]:
    """A sample's ``defect_map`` part as the device makes it, from probabilities (h x w)."""
    grid = np.asarray(cells, np.float32)
    return defect_map_part(png(grid), grid.shape[1], grid.shape[0])


CLASSES = ["contamination", "dent", "ok", "scratch"]  # the synthetic dataset's, sorted


def to_jpeg(png: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@dataclass
class Seeder:
    """Frames, inspectors and answers written through the review store's own tables."""

    store: Store
    users: dict[str, int] = field(default_factory=dict)
    clock: float = NOW - 10 * HOUR

    def user(self, name: str) -> int:
        if name not in self.users:
            with self.store.session() as s:
                u = User(name=name, password_hash="-", is_admin=True, created_at=NOW)
                s.add(u)
                s.flush()
                self.users[name] = u.id
        return self.users[name]

    def frame(
        self,
        frame_id: str,
        jpeg: bytes | None,
        required: int = 1,
        ts: float | None = None,
        gold: str | None = None,
        **fields: Any,
    ) -> int:
        """A frame with the synthetic dataset's classes; ``fields`` override the sample's."""
        meta: dict[str, Any] = {
            "model_version": "2026.1",
            "classes": CLASSES,
            "probabilities": [0.1, 0.2, 0.45, 0.25],
            "reason": "low_confidence",
        }
        sample = wire_sample(
            frame_id,
            jpeg=jpeg,
            image_error=None if jpeg else "too large even re-encoded",
            ts=NOW - 2 * HOUR if ts is None else ts,
            seq=int(ts or NOW) % 1000,
            **{**meta, **fields},
        )
        assert self.store.add_sample(sample)
        with self.store.session() as s:
            s.execute(
                update(Frame)
                .where(Frame.frame_id == frame_id)
                .values(
                    required_reviews=required, gold_label=gold, why="gold" if gold else "uncertain"
                )
            )
            pk = s.query(Frame.id).filter(Frame.frame_id == frame_id).scalar()
        return int(pk)

    def _tick(self) -> float:
        self.clock += 60
        return self.clock

    def answer(self, pk: int, name: str, label: str) -> None:
        user, at = self.user(name), self._tick()
        with self.store.session() as s:
            s.add(Review(frame_pk=pk, user_id=user, label=label, created_at=at))

    def adjudicate(self, pk: int, name: str, label: str) -> None:
        user, at = self.user(name), self._tick()
        with self.store.session() as s:
            s.add(Adjudication(frame_pk=pk, user_id=user, label=label, created_at=at))


@dataclass
class Scenario:
    frames: dict[str, str]  # name -> frame_id
    labels: dict[str, str]  # name -> the label it should get in the dataset
    new_ids: list[str]  # frame_ids of the new line images (all agreed)


@dataclass(frozen=True)
class LineFrame:
    label: str
    jpeg: bytes  # 256 x 192: a synthetic part, as a camera on the line would see it
    cells: np.ndarray  # its defect map, 8-pixel cells (32 x 24): the mask, as a model would


def line_frames(n: int, seed: int = 11) -> list[LineFrame]:
    """``n`` synthetic parts cropped to 4:3 (a frame is rarely square), each with a defect
    map made from its defect mask, so a test can see the map lie over the defect."""
    out = []
    for c in candidates(n, seed=seed, size=256):
        image = cv2.imdecode(np.frombuffer(c.read(), np.uint8), cv2.IMREAD_UNCHANGED)[32:224]
        mask_png = c.read_mask()
        mask = (
            np.zeros(image.shape[:2], np.uint8)
            if mask_png is None
            else cv2.imdecode(np.frombuffer(mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)[32:224]
        )
        share = cv2.resize(mask.astype(np.float32) / 255, (32, 24), interpolation=cv2.INTER_AREA)
        cells = np.clip(0.03 + share * 3.0, 0.0, 1.0)  # a cell half covered is a sure one
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        out.append(LineFrame(str(c.label), jpeg, cells))
    return out


def row_id(frame_id: str, camera: str = "cam0") -> str:
    return mf.stable_id(f"dev1/{camera}", frame_id)


def seed(seeder: Seeder, dataset: Path, n_new: int = 12) -> Scenario:
    """Every consensus state, gold and image-less frames, re-encoded shots of a test, a train
    and a val image of the dataset, and ``n_new`` new synthetic line images."""
    manifest = mf.load(dataset)
    new = list(candidates(n_new + 4, seed=99, size=64))
    png = {c.origin: c.read() for c in new}
    frames, labels = {}, {}

    def frame(
        name: str,
        image: bytes | None,
        required: int = 1,
        ts: float | None = None,
        gold: str | None = None,
    ) -> int:
        frames[name] = f"dev1-cam0-{name}"
        return seeder.frame(frames[name], image, required, ts, gold)

    pk = frame("agreed1", to_jpeg(png[new[0].origin]))
    seeder.answer(pk, "alice", str(new[0].label))
    labels["agreed1"] = str(new[0].label)
    pk = frame("agreed2", to_jpeg(png[new[1].origin]), required=2)
    seeder.answer(pk, "alice", SKIP)  # a skip does not count
    seeder.answer(pk, "bob", "dent")
    seeder.answer(pk, "carol", "dent")
    labels["agreed2"] = "dent"
    pk = frame("adjudicated", to_jpeg(png[new[2].origin]), required=2)
    seeder.answer(pk, "alice", "ok")
    seeder.answer(pk, "bob", "scratch")
    seeder.adjudicate(pk, "dora", "scratch")
    labels["adjudicated"] = "scratch"
    pk = frame("disputed", to_jpeg(png[new[3].origin]), required=2)
    seeder.answer(pk, "alice", "ok")
    seeder.answer(pk, "bob", "dent")
    pk = frame("unsure", to_jpeg(png[new[3].origin]))
    seeder.answer(pk, "alice", UNSURE)
    frame("pending", to_jpeg(png[new[3].origin]))
    pk = frame("half", to_jpeg(png[new[3].origin]), required=2)
    seeder.answer(pk, "alice", "ok")
    pk = frame("skipped", to_jpeg(png[new[3].origin]))
    seeder.answer(pk, "alice", SKIP)
    gold_row = manifest.in_split("train")[0]
    pk = frame("gold", to_jpeg((dataset / gold_row.path).read_bytes()), gold=str(gold_row.label))
    seeder.answer(pk, "alice", str(gold_row.label))
    pk = frame("noimage", None)
    seeder.answer(pk, "alice", "ok")
    for split in mf.SPLITS:  # a re-encoded shot of an image already in the dataset
        row = manifest.in_split(split)[0]
        pk = frame(f"dup-{split}", to_jpeg((dataset / row.path).read_bytes()))
        seeder.answer(pk, "bob", str(row.label))
        labels[f"dup-{split}"] = str(row.label)
    new_ids = []
    for i, c in enumerate(new[4:]):
        pk = frame(f"new{i:02d}", to_jpeg(png[c.origin]), ts=NOW - (i + 1) * HOUR)
        seeder.answer(pk, "erin", str(c.label))
        labels[f"new{i:02d}"] = str(c.label)
        new_ids.append(frames[f"new{i:02d}"])
    return Scenario(frames, labels, new_ids)


def manifest_rows(dataset: Path) -> dict[str, str]:
    """id -> the row's exact line in manifest.json."""
    out = {}
    for line in mf.manifest_path(dataset).read_text().splitlines():
        if line.startswith('    {"'):
            out[json.loads(line.rstrip(","))["id"]] = line.rstrip(",")
    return out
