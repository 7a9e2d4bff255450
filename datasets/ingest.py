"""Bring candidate images into a dataset: validate, hash, store, record provenance.

Every importer (ImageFolder, magnetic-tile, the synthetic generator, the review export)
yields Candidates and hands them to ``ingest``, so validation, idempotency and atomicity
are defined once. New files are staged in a private folder; only when every candidate has
been handled are they moved in and the manifest replaced, so a failed import leaves the
dataset as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from . import manifest as mf
from .duplicates import duplicate_groups, phash
from .manifest import DatasetError
from .storage import decode, image_relpath, mask_relpath
from .validate import Limits, Rejected, inspect_image


@dataclass
class Candidate:
    """An image offered to a dataset, with what its source knows about it."""

    origin: str  # the image's key within its source (relative path, frame id)
    source: str
    label: str | None
    file: Path | None = None  # read from here ...
    data: bytes | None = None  # ... or these bytes
    session: str | None = None
    captured_at: str | None = None
    group: str | None = None
    label_source: str = ""
    labeled_at: str | None = None
    label_policy: str = "v1"
    license: str | None = None
    mask_file: Path | None = None
    mask_data: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # the source folder its files must lie in (links are followed)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.file is not None, "a Candidate needs file or data"
        return self._within_root(self.file).read_bytes()

    def read_mask(self) -> bytes | None:
        if self.mask_data is not None:
            return self.mask_data
        return self._within_root(self.mask_file).read_bytes() if self.mask_file else None

    def _within_root(self, path: Path) -> Path:
        """``path``, unless a symbolic link on the way leads out of the source folder (an
        import must not copy /etc or another dataset into this one)."""
        real = path.resolve()
        if self.root is not None and not real.is_relative_to(self.root.resolve()):
            raise Rejected("outside-source", f"a link to {real}, outside {self.root}")
        return path

    @property
    def display(self) -> str:
        return str(self.file) if self.file is not None else f"{self.source}:{self.origin}"


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file, "reason: detail")
    warnings: list[str] = field(default_factory=list)
    exact_groups: list[list[str]] = field(default_factory=list)
    near_groups: list[list[str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"imported {self.added + self.updated + self.unchanged} images "
            f"({self.added} new, {self.updated} updated, {self.unchanged} unchanged), "
            f"rejected {len(self.rejected)}; duplicates: {len(self.exact_groups)} exact "
            f"group(s), {len(self.near_groups)} near-duplicate group(s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [{"file": f, "reason": r} for f, r in self.rejected],
            "warnings": self.warnings,
            "exact_duplicate_groups": self.exact_groups,
            "near_duplicate_groups": self.near_groups,
        }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


STAGING_PREFIX = ".staging-"
LEGACY_STAGING_AGE_S = 3600.0  # a staging folder without a process id: stale after an hour


class _Stage:
    """New files written under a private folder, moved into the dataset on commit.

    The folder is named after the importing process (``.staging-<pid>-<random>``), so a
    later import can tell one left by a killed import (its process is gone) from one in use.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.pending: set[str] = set()

    def put(self, relpath: str, data: bytes) -> None:
        if relpath in self.pending or (self.root / relpath).exists():
            return  # content-addressed: the same bytes are already there
        target = self.dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.pending.add(relpath)

    def commit(self) -> None:
        for relpath in sorted(self.pending):
            final = self.root / relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            (self.dir / relpath).replace(final)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def remove_stale_stages(root: Path) -> list[Path]:
    """Remove the staging folders that killed imports left in ``root``; the ones removed."""
    stale = [d for d in root.glob(f"{STAGING_PREFIX}*") if d.is_dir() and _is_stale(d)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _is_stale(folder: Path) -> bool:
    pid = folder.name.removeprefix(STAGING_PREFIX).partition("-")[0]
    if not pid.isdigit():  # made before folders carried their process id
        return time.time() - folder.stat().st_mtime > LEGACY_STAGING_AGE_S
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def _record_for(candidate: Candidate, data: bytes, limits: Limits, stage: _Stage) -> mf.Record:
    info = inspect_image(data, candidate.file.name if candidate.file else candidate.origin, limits)
    try:  # Pillow read it; the training side reads with OpenCV, which may still refuse it
        image = decode(data, candidate.display)
    except (DatasetError, cv2.error) as exc:
        raise Rejected("unreadable", str(exc).strip()) from None
    sha = hashlib.sha256(data).hexdigest()
    relpath = image_relpath(sha, info.format)
    stage.put(relpath, data)
    return mf.Record(
        id=mf.stable_id(candidate.source, candidate.origin),
        path=relpath,
        sha256=sha,
        width=info.width,
        height=info.height,
        channels=info.channels,
        label=candidate.label,
        source=candidate.source,
        origin=candidate.origin,
        session=candidate.session,
        captured_at=candidate.captured_at,
        group=candidate.group,
        label_source=candidate.label_source,
        labeled_at=candidate.labeled_at,
        label_policy=candidate.label_policy,
        license=candidate.license,
        phash=phash(image),
        extra=dict(candidate.extra),
    )


DEFAULT_LIMITS = Limits()


def _attach_mask(candidate: Candidate, record: mf.Record, limits: Limits, stage: _Stage) -> str:
    """Store the candidate's mask; returns a warning ('' when fine or absent)."""
    try:
        mask = candidate.read_mask()
        if mask is None:
            return ""
        name = candidate.mask_file.name if candidate.mask_file else f"{candidate.origin}.mask.png"
        inspect_image(mask, name, limits)
    except (OSError, Rejected) as exc:
        return f"mask of {candidate.display} not kept: {exc}"
    relpath = mask_relpath(hashlib.sha256(mask).hexdigest())
    stage.put(relpath, mask)
    record.mask_path = relpath
    return ""


def _merge(old: mf.Record | None, new: mf.Record) -> tuple[mf.Record, str]:
    """Combine a re-imported row with the stored one: the split and human labels persist."""
    if old is None:
        return new, "added"
    new.split = old.split  # a re-import never moves an image between splits
    # A person's label beats a folder name; a later person's word (an adjudication) replaces
    # an earlier one.
    if old.label_source.startswith("inspector") and not new.label_source.startswith("inspector"):
        new.label, new.label_source = old.label, old.label_source
        new.labeled_at, new.label_policy = old.labeled_at, old.label_policy
    new.extra = {**old.extra, **new.extra}
    return new, "unchanged" if new.to_json() == old.to_json() else "updated"


def ingest(
    root: Path | str,
    candidates: Iterable[Candidate],
    *,
    import_name: str,
    ok_class: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    quiet: bool = False,
    total: int | None = None,
) -> ImportReport:
    """Validate and add ``candidates`` to the dataset at ``root``; all or nothing."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = mf.load(root)
    report = ImportReport()
    for folder in remove_stale_stages(root):
        report.warnings.append(f"removed {folder.name}, left by an import that did not finish")
    stage = _Stage(root)
    sources: set[str] = set()
    rejects: dict[str, dict[str, str]] = {}
    try:
        for cand in tqdm(
            candidates, total=total, desc="import", unit="img", disable=quiet, file=sys.stderr
        ):
            sources.add(cand.source)
            try:
                record = _record_for(cand, cand.read(), limits, stage)
            except (Rejected, OSError) as exc:
                reason = str(exc) if isinstance(exc, Rejected) else f"unreadable: {exc}"
                report.rejected.append((cand.display, reason))
                rejects[f"{cand.source}:{cand.origin}"] = {
                    "source": cand.source,
                    "file": cand.display,
                    "reason": reason,
                }
                continue
            warning = _attach_mask(cand, record, limits, stage)
            if warning:
                report.warnings.append(warning)
            merged, outcome = _merge(manifest.records.get(record.id), record)
            manifest.records[record.id] = merged
            setattr(report, outcome, getattr(report, outcome) + 1)
        stage.commit()
    except BaseException:
        stage.discard()
        raise
    # Rejects of this import replace earlier ones from the same sources.
    manifest.rejects = {
        key: value for key, value in manifest.rejects.items() if value["source"] not in sources
    } | rejects
    if ok_class is not None:
        manifest.ok_class = ok_class
    manifest.imports.append(
        {
            "name": import_name,
            "at": now_iso(),
            "sources": sorted(sources),
            "added": report.added,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "rejected": len(report.rejected),
        }
    )
    mf.save(root, manifest)
    report.exact_groups, report.near_groups = duplicate_groups(
        [(r.id, r.sha256, r.phash) for r in manifest]
    )
    if not quiet:
        for file, reason in report.rejected:
            print(f"rejected {file}: {reason}", file=sys.stderr)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(report.summary(), file=sys.stderr)
    return report
