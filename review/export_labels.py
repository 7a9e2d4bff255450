"""`lineqc review export-labels`: reviewed frames into a dataset, as rows with provenance.

A frame becomes a row when its consensus (``consensus.py``, the one rule) is final: agreed
or adjudicated. Pending and disputed frames wait; gold frames (already dataset images) and
frames without an image are never exported. Each row carries where the frame came from
(device, site, line, camera, capture time), the model that flagged it (version, classes,
probabilities, verdict, reason) and how it was labelled (inspectors, their answers,
agreement, adjudicator, labelling-policy version).

Rows go in through ``datasets.ingest`` (validation, content-addressed files, an atomic
manifest), keyed by ``(device/camera, frame_id)``, so a re-run adds nothing twice and a
later adjudication replaces the row's label. New rows are then placed into train or val by
``datasets.split.place_new``: never into the frozen test split, and a frame that is a near
duplicate of a test image is kept out of every split (labelled, unused for training) and
reported, since training on it would leak that test image.

A final label that contradicts the dataset's own label for the same part or a near
duplicate (``conflicts.py``) is not exported: the frame is held back and listed, and waits
in the admin's adjudication queue; once adjudicated it is exported (the admin's word is
final) with the contradicted labels noted in its provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lineqc.datasets import manifest as mf
from lineqc.datasets.ingest import Candidate, ImportReport, ingest
from lineqc.datasets.lineage import EXPORTED_AT
from lineqc.datasets.split import place_new
from lineqc.errors import LineqcError

from .conflicts import ConflictFinder, KnownLabels, own_row_id
from .consensus import FrameState, frame_states
from .store import POLICY_VERSION, SKIP, Frame, Store

IMPORT_NAME = "review-export-labels"
SKIP_REASONS = ("pending", "disputed", "gold", "no-image", "conflict")


class ExportLabelsError(LineqcError):
    """Labels that cannot go into the dataset; nothing was written."""


@dataclass
class ExportSummary:
    dataset: str
    frames: int = 0  # frames in the review store
    exported: int = 0  # frames with a final label offered to the dataset
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    rejected: list[dict[str, str]] = field(default_factory=list)  # the dataset refused the image
    placed: dict[str, int] = field(default_factory=dict)  # split -> new rows placed there
    kept_out: list[dict[str, str]] = field(default_factory=list)  # rows in no split, and why
    # final labels contradicting the dataset's for the same part: frame_id, label, known,
    # rows, held (True: not exported until adjudicated)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def text(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items() if n)
        lines = [
            f"{self.frames} reviewed frame(s) in the store; {self.exported} with a final label "
            f"into {self.dataset}: {self.added} new, {self.updated} updated, "
            f"{self.unchanged} unchanged, {len(self.rejected)} rejected",
            f"skipped: {skipped or 'none'}",
            "new rows placed: "
            + (", ".join(f"{n} {s}" for s, n in sorted(self.placed.items())) or "none"),
        ]
        lines += [f"rejected frame {r['frame_id']}: {r['reason']}" for r in self.rejected]
        lines += [_conflict_line(c) for c in self.conflicts]
        if self.kept_out:
            lines.append(
                f"{len(self.kept_out)} row(s) kept out of training (labelled, in no split):"
            )
            lines += [f"  {k['id']} (frame {k['frame_id']}): {k['why']}" for k in self.kept_out]
        return "\n".join(lines)


def _conflict_line(c: dict[str, Any]) -> str:
    then = (
        "held back until an admin adjudicates it (/adjudicate)"
        if c["held"]
        else "exported: an admin adjudicated it"
    )
    return (
        f"label conflict: frame {c['frame_id']} labelled {c['label']}, but the dataset says "
        f"{' or '.join(c['known'])} for the same part (row {', '.join(c['rows'])}); {then}"
    )


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def source_of(frame: Frame) -> str:
    return f"{frame.device}/{frame.camera}"


def _candidate(
    store: Store,
    frame: Frame,
    state: FrameState,
    contradicts: list[str] | None = None,
    exported_at: str | None = None,
) -> Candidate:
    result, adjudication = state.consensus, state.adjudication
    assert result.label is not None and frame.image_sha256 is not None
    counted = [a for a in state.answers if a.label != SKIP]
    inspectors = list(dict.fromkeys(a.inspector for a in counted))
    if adjudication is not None:
        adjudicator = adjudication.inspector
        label_source, labeled_at = f"inspector:adjudicated:{adjudicator}", adjudication.at
    else:
        adjudicator = None
        label_source = "inspector:" + "+".join(inspectors)
        labeled_at = max(a.at for a in counted)
    extra: dict[str, Any] = {
        # where and when
        "frame_id": frame.frame_id,
        "device": frame.device,
        "site": frame.site,
        "line": frame.line,
        "camera": frame.camera,
        "seq": frame.seq,
        "image_scale": frame.image_scale,
        # the model that flagged it
        "why": frame.why,
        "model_version": frame.model_version,
        "classes": list(frame.classes),
        "probabilities": list(frame.probabilities),
        "predicted": frame.predicted,
        "confidence": frame.confidence,
        "verdict": frame.verdict,
        "reason": frame.reason,
        # how it was labelled
        "consensus": result.state,
        "required_reviews": frame.required_reviews,
        "inspectors": inspectors,
        "answers": [
            {"inspector": a.inspector, "answer": a.label, "at": iso(a.at)} for a in counted
        ],
        "agreement": result.agreement,
        "adjudicator": adjudicator,
    }
    if contradicts:  # adjudicated against the dataset's labels of the same part
        extra["contradicts"] = contradicts
    if exported_at is not None:  # a new row: when it entered (retrain tells what is new)
        extra[EXPORTED_AT] = exported_at
    return Candidate(
        origin=frame.frame_id,
        source=source_of(frame),
        label=result.label,
        file=store.image_path(frame.image_sha256),  # read when ingest reaches it
        captured_at=iso(frame.ts),
        label_source=label_source,
        labeled_at=iso(labeled_at),
        label_policy=POLICY_VERSION,
        extra=extra,
    )


def _classes(dataset: Path, manifest: mf.Manifest) -> set[str]:
    if not manifest.records or manifest.ok_class is None:
        raise ExportLabelsError(
            f"{dataset}: not a dataset with labelled images and an OK class; export-labels adds "
            "reviewed frames to an existing dataset (import one with `lineqc data import`)"
        )
    return {*manifest.classes, manifest.ok_class}


def _without_conflicts(
    store: Store,
    finals: list[tuple[Frame, FrameState]],
    known: KnownLabels,
    summary: ExportSummary,
) -> list[tuple[Frame, FrameState]]:
    """The frames to export: those whose label the dataset does not contradict, and the
    contradicted ones an admin adjudicated. Every conflict is recorded in ``summary``."""
    finder = ConflictFinder(known)
    out = []
    for frame, state in finals:
        own = own_row_id(frame.device, frame.camera, frame.frame_id)
        found = finder.known_for(store.image_path(str(frame.image_sha256)), own)
        label = state.consensus.label
        if found is not None and found.contradicts(label):
            held = state.adjudication is None
            summary.conflicts.append(
                {
                    "frame_id": frame.frame_id,
                    "label": label,
                    "known": list(found.labels),
                    "rows": list(found.rows),
                    "held": held,
                }
            )
            if held:
                summary.skipped["conflict"] += 1
                continue
        out.append((frame, state))
    return out


def export_labels(store: Store, dataset: Path, quiet: bool = False) -> ExportSummary:
    """Add every agreed or adjudicated, non-gold frame of ``store`` to ``dataset``."""
    dataset = Path(dataset)
    before = mf.load(dataset)
    classes = _classes(dataset, before)
    summary = ExportSummary(str(dataset))
    finals: list[tuple[Frame, FrameState]] = []
    with store.session() as s:
        frames = list(s.scalars(select(Frame).order_by(Frame.id)))
        states = frame_states(s, {f.id: f.required_reviews for f in frames})
    for frame in frames:
        summary.frames += 1
        if frame.is_gold or frame.why == "gold":
            summary.skipped["gold"] += 1
            continue
        result = states[frame.id].consensus
        if not result.final:
            summary.skipped[result.state] += 1
        elif frame.image_sha256 is None:
            summary.skipped["no-image"] += 1
        else:
            finals.append((frame, states[frame.id]))

    unknown: dict[str, list[str]] = defaultdict(list)
    for frame, state in finals:
        if state.consensus.label not in classes:
            unknown[str(state.consensus.label)].append(frame.frame_id)
    for frame, _ in finals:  # a wrong --images must not look like a store without images
        path = store.image_path(str(frame.image_sha256))
        if not path.is_file():
            raise ExportLabelsError(
                f"frame {frame.frame_id}: its image {path} is missing; is --images the review "
                "store's image folder? Nothing was written"
            )
    if unknown:  # before any write: a typo'd class must not become a training label
        detail = "; ".join(
            f"{label!r} ({len(ids)} frame(s): {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''})"
            for label, ids in sorted(unknown.items())
        )
        raise ExportLabelsError(
            f"{dataset}: label(s) not among the dataset's classes ({', '.join(sorted(classes))}): "
            f"{detail}; nothing was written"
        )

    finals = _without_conflicts(store, finals, KnownLabels.of(before), summary)
    summary.exported = len(finals)
    if not finals:
        return summary  # the dataset stays as it was
    contradicted = {c["frame_id"]: c["known"] for c in summary.conflicts}
    now = iso(time.time())
    candidates = (
        _candidate(
            store,
            f,
            state,
            contradicted.get(f.frame_id),
            None if own_row_id(f.device, f.camera, f.frame_id) in before.records else now,
        )
        for f, state in finals
    )
    report: ImportReport = ingest(
        dataset, candidates, import_name=IMPORT_NAME, quiet=quiet, total=len(finals)
    )
    summary.added, summary.updated, summary.unchanged = (
        report.added,
        report.updated,
        report.unchanged,
    )
    by_display: dict[str, list[str]] = defaultdict(list)  # frames may share one image file
    for f, _ in finals:
        by_display[str(store.image_path(str(f.image_sha256)))].append(f.frame_id)
    summary.rejected = [
        {"frame_id": ", ".join(by_display.get(display, [display])), "reason": reason}
        for display, reason in report.rejected
    ]

    manifest = mf.load(dataset)
    ids = {mf.stable_id(source_of(f), f.frame_id): f.frame_id for f, _ in finals}
    placement = place_new(manifest, set(ids))
    if placement.placed:
        mf.save(dataset, manifest)
    summary.placed = dict(Counter(placement.placed.values()))
    summary.kept_out = [
        {"id": rid, "frame_id": ids[rid], "why": why}
        for rid, why in sorted(placement.kept_out.items())
    ]
    return summary


def run_export_labels(args: argparse.Namespace) -> int:
    store = Store(args.db, args.images)
    try:
        summary = export_labels(store, Path(args.dataset), quiet=bool(args.json))
    finally:
        store.close()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.text())
    if summary.kept_out and not args.json:
        print(
            "note: rows kept out of training are near duplicates of frozen test images (or of "
            "both train and val); they keep their label and stay in no split",
            file=sys.stderr,
        )
    return 0
