"""Gold frames: dataset images with known labels, mixed into the queues to audit inspectors.

``lineqc review add-gold`` copies labelled rows of a dataset into the review store as frames
with ``why="gold"`` and ``gold_label`` set. An inspector must not be able to tell them from
flagged frames: the pages never show ``why``, the frame id or the gold label, and a gold
frame borrows the device, line, camera and model version of a stored flagged frame (when
there is one). Its probabilities are neutral (uniform): the model's view is not the point.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from lineqc.datasets.manifest import DatasetError, Record, load
from lineqc.datasets.storage import decode

from .store import SKIP, UNSURE, Frame, Review, Store, User

GOLD_PREFIX = "gold-"
JPEG_QUALITY = 90


def dataset_jpeg(root: Path, record: Record) -> bytes:
    """The row's image as JPEG bytes (JPEG files as they are, others re-encoded)."""
    path = root / record.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image of row {record.id} ({exc})") from None
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return data
    ok, buf = cv2.imencode(
        ".jpg", decode(data, str(path)), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise DatasetError(f"{path}: OpenCV cannot encode this image as JPEG")
    return np.asarray(buf).tobytes()


_Origin = tuple[str, str, str, str, str]  # device, site, line, camera, model version


def _origins(s: Session) -> list[_Origin]:
    """Where the stored flagged frames came from (what gold frames dress up as)."""
    rows = s.execute(
        select(Frame.device, Frame.site, Frame.line, Frame.camera, Frame.model_version)
        .where(Frame.gold_label.is_(None))
        .distinct()
    )
    return sorted(tuple(r) for r in rows)  # type: ignore[misc]


def add_gold(args: argparse.Namespace) -> int:
    """``lineqc review add-gold``: up to ``--count`` labelled rows of ``--split``; idempotent."""
    root = Path(args.dataset)
    manifest = load(root)
    rows = [r for r in manifest.in_split(args.split) if r.label is not None]
    if not rows:
        raise DatasetError(
            f"{root}: no labelled rows in split {args.split!r} (is it a dataset, and split? "
            "`lineqc data split`)"
        )
    if args.count < 1:
        raise DatasetError(f"--count must be at least 1, got {args.count}")
    rng = random.Random(args.seed)
    picked = rng.sample(rows, min(args.count, len(rows)))
    classes = manifest.classes
    store = Store(args.db, args.images)
    added = 0
    try:
        with store.session() as s:
            origins = _origins(s)
            known = set(
                s.scalars(select(Frame.frame_id).where(Frame.frame_id.startswith(GOLD_PREFIX)))
            )
        for record in picked:
            frame_id = f"{GOLD_PREFIX}{record.id}"
            if frame_id in known:
                continue
            device, site, line, camera, model = (
                rng.choice(origins) if origins else (record.source, "-", "-", "-", "-")
            )
            digest = store.put_image(dataset_jpeg(root, record))  # the file first, then its row
            now = time.time()
            with store.session() as s:
                s.add(
                    Frame(
                        frame_id=frame_id,
                        why="gold",
                        device=device,
                        site=site,
                        line=line,
                        camera=camera,
                        seq=0,
                        ts=now - rng.uniform(0, 3600),
                        model_version=model,
                        classes=list(classes),
                        probabilities=[1.0 / len(classes)] * len(classes),
                        verdict="uncertain",
                        predicted=rng.choice(classes),
                        confidence=1.0 / len(classes),
                        reason="low_confidence",
                        image_sha256=digest,
                        image_width=record.width,
                        image_height=record.height,
                        image_scale=1.0,
                        image_error=None,
                        received_at=now,
                        required_reviews=1,
                        gold_label=record.label,
                    )
                )
            added += 1
    finally:
        store.close()
    print(
        f"added {added} gold frame(s) from {root} ({args.split}); "
        f"{len(picked) - added} were already there"
    )
    return 0


@dataclass(frozen=True)
class GoldScore:
    inspector: str
    answered: int  # gold frames answered (skips are not answers)
    correct: int
    unsure: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def gold_audit(s: Session) -> list[GoldScore]:
    """Each inspector's answers on gold frames against the known labels."""
    rows = s.execute(
        select(User.name, Review.label, Frame.gold_label)
        .join(Review, Review.user_id == User.id)
        .join(Frame, Frame.id == Review.frame_pk)
        .where(Frame.gold_label.is_not(None), Review.label != SKIP)
    )
    tally: dict[str, list[int]] = {}
    for name, label, gold in rows:
        t = tally.setdefault(name, [0, 0, 0])
        t[0] += 1
        t[1] += label == gold
        t[2] += label == UNSURE
    return [GoldScore(name, *t) for name, t in sorted(tally.items())]
