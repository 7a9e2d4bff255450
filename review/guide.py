"""The class guide: what each class means, which one is OK, and example images, one key
(``g``) away on the frame and adjudication pages.

- Descriptions: built in for the demo's datasets (magnetic-tile, ``lineqc data synth``);
  ``lineqc review serve --guide FILE`` (YAML, class name -> one line) adds or replaces them.
- The OK class: the dataset's (``--dataset``); else the class the model called OK in stored
  frames (verdict ``ok``: audited confident frames); else a class named like OK.
- Examples: labelled images of the dataset (``--dataset``), never rows serving as gold frames
  nor the held-out production parts (an inspector who had seen one would know its answer);
  then frames that inspectors agreed on or an admin adjudicated in this review store (gold
  frames never).

What the store says is read again every ``REFRESH_S``: page loads stay cheap on a large store.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from lineqc.datasets.manifest import DatasetError, Manifest, Record, load
from lineqc.datasets.split import production_ids
from lineqc.errors import LineqcError

from .consensus import frame_states
from .gold import GOLD_PREFIX, dataset_jpeg
from .store import SKIP, Frame, Review, Store

EXAMPLES_PER_CLASS = 4
REFRESH_S = 60.0
STORE_SCAN = 2000  # the most recent reviewed frames searched for examples
OK_NAMES = ("ok", "good", "free", "pass", "normal", "no_defect")

DESCRIPTIONS = {  # lower-case class name -> what the inspector looks for
    # magnetic-tile (the demo's real images)
    "blowhole": "small round pits or holes in the tile's surface",
    "break": "a piece missing: the tile broken off at an edge or corner",
    "crack": "a thin dark line where the tile has split",
    "fray": "a ragged, chipped or worn edge",
    "free": "no defect: a good tile",
    "uneven": "an uneven surface: grinding marks, waves or blotchy brightness",
    # lineqc data synth
    "ok": "no defect: a good part",
    "scratch": "a thin bright or dark line, straight or gently curved, across the surface",
    "dent": "a round dip with a shaded rim, like a shallow crater",
    "contamination": "a blot or spot of foreign matter lying on the surface",
}


@dataclass(frozen=True)
class ClassEntry:
    """One class as the guide shows it."""

    name: str
    description: str | None
    is_ok: bool
    examples: list[str]  # image URLs


@dataclass(frozen=True)
class _Snapshot:
    ok_classes: frozenset[str]
    dataset_examples: dict[str, list[Record]]
    store_examples: dict[str, list[str]]  # class -> image sha256s
    at: float


@dataclass
class Guide:
    descriptions: dict[str, str] = field(default_factory=lambda: dict(DESCRIPTIONS))
    dataset: Path | None = None
    manifest: Manifest | None = None
    _snapshot: _Snapshot | None = None
    _jpegs: dict[str, bytes] = field(default_factory=dict)  # example row id -> JPEG
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, dataset: Path | None = None, guide_file: Path | None = None) -> Guide:
        """The guide for ``lineqc review serve``; LineqcError naming a bad file or folder."""
        descriptions = dict(DESCRIPTIONS)
        if guide_file is not None:
            descriptions.update(read_guide_file(guide_file))
        manifest = None
        if dataset is not None:
            manifest = load(dataset)
            if not manifest.classes:
                raise DatasetError(f"--dataset {dataset}: no labelled images")
        return cls(descriptions, dataset, manifest)

    def entries(self, store: Store, classes: Sequence[str]) -> list[ClassEntry]:
        """The guide for a frame's classes, in the frame's order."""
        snap = self._current(store)
        named_ok = not snap.ok_classes
        return [
            ClassEntry(
                name=c,
                description=self.descriptions.get(c.lower()),
                is_ok=c in snap.ok_classes or (named_ok and c.lower() in OK_NAMES),
                examples=self._example_urls(snap, c),
            )
            for c in classes
        ]

    def example_jpeg(self, row_id: str) -> bytes | None:
        """A dataset example's image as JPEG, only for a row the guide shows (else None)."""
        snap = self._snapshot
        if snap is None or self.dataset is None:
            return None
        record = next(
            (r for rows in snap.dataset_examples.values() for r in rows if r.id == row_id), None
        )
        root = self.dataset.resolve()
        if record is None or not (root / record.path).resolve().is_relative_to(root):
            return None
        if row_id not in self._jpegs:
            try:
                self._jpegs[row_id] = dataset_jpeg(self.dataset, record)
            except DatasetError:  # moved or damaged since the server started
                return None
        return self._jpegs[row_id]

    def _example_urls(self, snap: _Snapshot, name: str) -> list[str]:
        urls = [f"/example/{r.id}" for r in snap.dataset_examples.get(name, [])]
        urls += [f"/image/{sha}" for sha in snap.store_examples.get(name, [])]
        return urls[:EXAMPLES_PER_CLASS]

    def _current(self, store: Store) -> _Snapshot:
        with self._lock:
            snap = self._snapshot
            if snap is None or time.monotonic() - snap.at > REFRESH_S:
                with store.session() as s:
                    snap = self._read(s)
                self._snapshot = snap
            return snap

    def _read(self, s: Session) -> _Snapshot:
        gold_ids = {
            fid.removeprefix(GOLD_PREFIX)
            for fid in s.scalars(select(Frame.frame_id).where(Frame.gold_label.is_not(None)))
        }
        return _Snapshot(
            ok_classes=frozenset(self._ok_classes(s)),
            dataset_examples=_dataset_examples(self.manifest, gold_ids),
            store_examples=_store_examples(s),
            at=time.monotonic(),
        )

    def _ok_classes(self, s: Session) -> set[str]:
        if self.manifest is not None and self.manifest.ok_class:
            return {self.manifest.ok_class}
        query = select(Frame.predicted).where(Frame.verdict == "ok", Frame.gold_label.is_(None))
        return set(s.scalars(query.distinct()))


def read_guide_file(path: Path) -> dict[str, str]:
    """``--guide FILE``: a YAML mapping of class name to a one-line description."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LineqcError(f"--guide {path}: cannot read it ({exc})") from None
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise LineqcError(f"--guide {path}: expected a mapping of class name to description")
    return {k.lower(): v.strip() for k, v in doc.items()}


def _dataset_examples(manifest: Manifest | None, gold_ids: set[str]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    if manifest is None:
        return out
    hidden = gold_ids | production_ids(manifest)
    for r in sorted(manifest, key=lambda r: (r.split != "train", r.id)):  # train first
        if r.label is not None and r.id not in hidden and len(out[r.label]) < EXAMPLES_PER_CLASS:
            out[r.label].append(r)
    return out


def _store_examples(s: Session) -> dict[str, list[str]]:
    """Images of the latest frames with a final label (agreed or adjudicated), per class."""
    answered = exists().where(Review.frame_pk == Frame.id, Review.label != SKIP)
    rows = s.execute(
        select(Frame.id, Frame.required_reviews, Frame.image_sha256)
        .where(Frame.gold_label.is_(None), Frame.image_sha256.is_not(None), answered)
        .order_by(Frame.id.desc())
        .limit(STORE_SCAN)
    ).all()
    states = frame_states(s, {pk: n for pk, n, _ in rows})
    out: dict[str, list[str]] = defaultdict(list)
    for pk, _, sha in rows:  # newest first
        label = states[pk].consensus.label
        if label is not None and sha not in out[label] and len(out[label]) < EXAMPLES_PER_CLASS:
            out[label].append(str(sha))
    return out
