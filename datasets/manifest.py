"""The dataset manifest: one row per image with its provenance, written atomically.

A dataset is a folder::

    DIR/manifest.json      schema version, dataset facts, import log, one row per image
    DIR/images/ab/<sha256>.<ext>   content-addressed image files
    DIR/masks/ab/<sha256>.png      optional defect masks

The whole manifest is one JSON file replaced with ``os.replace``: a reader sees the old
dataset or the new one, never half of each. Each image row sits on its own line so that a
diff of two manifests reads row by row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineqc.atomic import atomic_write_text
from lineqc.errors import LineqcError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")


class DatasetError(LineqcError):
    """A dataset folder or manifest that cannot be used; the message names it and why."""


@dataclass
class Record:
    """One image and everything known about where it came from."""

    id: str  # stable: derived from source + the image's key within that source
    path: str  # relative to the dataset folder, posix separators
    sha256: str
    width: int
    height: int
    channels: int
    label: str | None  # class name, None when unlabelled
    source: str  # dataset name, or device/camera id
    origin: str = ""  # the image's key in its source (relative path, frame id)
    session: str | None = None  # capture session / lighting id
    captured_at: str | None = None  # ISO 8601, when known
    group: str | None = None  # physical part id, when known
    label_source: str = ""  # "importer:<format>", "inspector:<id>", ...
    labeled_at: str | None = None
    label_policy: str = "v1"
    license: str | None = None
    mask_path: str | None = None
    phash: str = ""  # 64-bit perceptual hash, 16 hex digits
    split: str | None = None  # train / val / test, None before the first split
    extra: dict[str, Any] = field(default_factory=dict)  # further provenance

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any], where: str) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(row) - names)
        if unknown:
            raise DatasetError(f"{where}: unknown field(s) {', '.join(unknown)}")
        try:
            record = cls(**row)
        except TypeError as exc:  # a required field is missing
            raise DatasetError(f"{where}: {exc}") from None
        if record.split is not None and record.split not in SPLITS:
            raise DatasetError(f"{where}: split {record.split!r} is not one of {SPLITS}")
        return record


@dataclass
class Manifest:
    """The in-memory form of ``manifest.json``."""

    records: dict[str, Record] = field(default_factory=dict)  # by id
    ok_class: str | None = None
    imports: list[dict[str, Any]] = field(default_factory=list)  # one entry per import run
    rejects: dict[str, dict[str, str]] = field(default_factory=dict)  # source file -> reason
    split_params: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records.values() if r.label is not None})

    def __iter__(self) -> Iterator[Record]:
        return iter(sorted(self.records.values(), key=lambda r: r.id))

    def __len__(self) -> int:
        return len(self.records)

    def in_split(self, split: str) -> list[Record]:
        return [r for r in self if r.split == split]


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST_NAME


def load(root: Path | str) -> Manifest:
    """Read a dataset's manifest; an absent manifest is an empty dataset."""
    path = manifest_path(Path(root))
    if not path.exists():
        return Manifest()
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: not a readable manifest (not a JSON object)")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {version!r} is not supported (this lineqc reads "
            f"{SCHEMA_VERSION})"
        )
    records = {}
    for i, row in enumerate(doc.get("images", [])):
        rec = Record.from_json(row, f"{path}: images[{i}]")
        records[rec.id] = rec
    return Manifest(
        records=records,
        ok_class=doc.get("ok_class"),
        imports=doc.get("imports", []),
        rejects=doc.get("rejects", {}),
        split_params=doc.get("split_params", {}),
    )


def _dump_rows(rows: Iterable[dict[str, Any]]) -> str:
    return ",\n".join("    " + json.dumps(row, sort_keys=True) for row in rows)


def render(manifest: Manifest) -> str:
    head = {
        "schema_version": SCHEMA_VERSION,
        "ok_class": manifest.ok_class,
        "classes": manifest.classes,
        "split_params": manifest.split_params,
        "imports": manifest.imports,
        "rejects": manifest.rejects,
    }
    head_text = json.dumps(head, indent=2, sort_keys=True)
    rows = _dump_rows(r.to_json() for r in manifest)
    # Splice the image rows in as the last key, one row per line.
    body = f',\n  "images": [\n{rows}\n  ]\n}}' if rows else ',\n  "images": []\n}'
    return head_text[: head_text.rfind("}")].rstrip() + body + "\n"


def save(root: Path | str, manifest: Manifest) -> None:
    """Write the manifest atomically (temp file, fsync, rename, fsync the folder)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest_path(root), render(manifest))


def manifest_hash(root: Path | str) -> str:
    """sha256 of the image rows (ids, content hashes, labels, splits): what a model saw."""
    manifest = load(root)
    digest = hashlib.sha256()
    for r in manifest:
        digest.update(f"{r.id}\t{r.sha256}\t{r.label}\t{r.split}\n".encode())
    return digest.hexdigest()


def stable_id(source: str, origin: str) -> str:
    """The id of an image: the same source and key always give the same id."""
    return hashlib.sha256(f"{source}\0{origin}".encode()).hexdigest()[:16]
