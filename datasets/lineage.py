"""What a dataset gained since a model trained on it: the new training rows.

A training run records the hash of the manifest it read (``dataset_manifest_hash``: the id,
content, label and split of every row), not the rows themselves. The rows the review loop
adds carry when they were exported (``extra.exported_at``; ``labeled_at`` for rows exported
before that was recorded). Taking away the newest reviewed rows, one export at a time,
until the hash is the run's, finds what was added since; the new *training* rows are those
of them in train or val (val steers the epoch and the temperature). When no cut gives the
run's hash, the dataset changed some other way (an import, a re-split, a changed label),
and the change is reported as not known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from lineqc.datasets import manifest as mf

EXPORTED_AT = "exported_at"  # extra key: when export-labels first added the row
TRAINING_SPLITS = ("train", "val")


def rows_hash(records: Iterable[mf.Record]) -> str:
    """``manifest.manifest_hash`` of a manifest holding exactly these rows."""
    digest = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.id):
        digest.update(f"{r.id}\t{r.sha256}\t{r.label}\t{r.split}\n".encode())
    return digest.hexdigest()


def _added_at(record: mf.Record) -> str | None:
    """When a reviewed row entered the dataset (None: not a reviewed row)."""
    if not record.label_source.startswith("inspector:"):
        return None
    return str(record.extra.get(EXPORTED_AT) or record.labeled_at or "")


@dataclass(frozen=True)
class Since:
    """The dataset now against the one a run trained on."""

    known: bool  # the run's dataset was found inside this one
    added: list[str] = field(default_factory=list)  # row ids added since
    training: list[str] = field(default_factory=list)  # of them, in train or val

    def sentence(self) -> str:
        if not self.known:
            return (
                "the dataset changed since the champion trained in a way that cannot be told "
                "row by row (an import, a re-split or a changed label): training anyway"
            )
        if not self.added:
            return "the dataset is exactly the one the champion trained on"
        return (
            f"{len(self.added)} reviewed row(s) added since the champion trained, "
            f"{len(self.training)} of them in train or val"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "sentence": self.sentence()}


def since(manifest: mf.Manifest, trained_hash: str | None) -> Since:
    """What ``manifest`` gained since a run that read a manifest hashing to ``trained_hash``."""
    rows = list(manifest)
    if trained_hash is None:
        return Since(known=False)
    stamped = sorted(
        ((at, r) for r in rows if (at := _added_at(r)) is not None),
        key=lambda pair: pair[0],
        reverse=True,
    )
    cuts = [None, *dict.fromkeys(at for at, _ in stamped)]  # newest export first
    for cut in cuts:
        added = {r.id for at, r in stamped if cut is not None and at >= cut}
        if rows_hash(r for r in rows if r.id not in added) == trained_hash:
            training = [r.id for r in rows if r.id in added and r.split in TRAINING_SPLITS]
            return Since(True, sorted(added), sorted(training))
    return Since(known=False)
