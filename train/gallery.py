"""The errors an engineer must look at, as pictures: missed defects and false rejects.

Each frame is shown small, with the model's defect map (where it has one) drawn over it in
red, so that a glance tells a label error from a blind spot from a lighting problem. Errors
are the model's top class against the label: a defect frame called OK is missed, an OK frame
called a defect is a false reject. Per class, worst first (the most confident mistakes),
with the session in every caption and a count per session.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lineqc.datasets.manifest import DatasetError, Record
from lineqc.datasets.storage import read_image
from lineqc.edge.defect_map import frame_cells
from lineqc.edge.preprocess import PreprocessSpec

PER_CLASS = 8
THUMB = 150  # the longer side, pixels


def thumbnail(frame: np.ndarray, cells: np.ndarray | None) -> bytes:
    """A JPEG of the frame, shrunk, with the defect probabilities as a red overlay."""
    image = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    scale = THUMB / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    if cells is not None:
        alpha = cv2.resize(cells.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        alpha = np.clip(alpha, 0, 1)[:, :, None] * 0.6
        red = np.zeros_like(small)
        red[:, :, 2] = 255
        small = small * (1 - alpha) + red * alpha
    ok, data = cv2.imencode(".jpg", small.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return bytes(data) if ok else b""


def _card(
    dataset: Path,
    record: Record,
    cells_of: np.ndarray | None,
    spec: PreprocessSpec,
    caption: str,
) -> str:
    try:
        frame = read_image(dataset, record)
    except DatasetError as exc:
        return f'<figure class="missing"><figcaption>{html.escape(str(exc))}</figcaption></figure>'
    cells = None if cells_of is None else frame_cells(cells_of, frame.shape[:2], spec)
    b64 = base64.b64encode(thumbnail(frame, cells)).decode()
    return (
        f'<figure><img alt="{html.escape(record.id)}" src="data:image/jpeg;base64,{b64}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def error_gallery(
    records: Sequence[Record],
    labels: np.ndarray,
    probs: np.ndarray,
    defect_maps: np.ndarray | None,
    classes: Sequence[str],
    ok_index: int,
    dataset: Path,
    spec: PreprocessSpec,
) -> str:
    """The HTML section: missed defects per true class, false rejects per predicted class."""
    top = probs.argmax(axis=1)
    p_ok = probs[:, ok_index]
    missed = np.flatnonzero((labels != ok_index) & (top == ok_index))
    rejected = np.flatnonzero((labels == ok_index) & (top != ok_index))
    parts = [
        "<h2>Errors to look at</h2>",
        f"<p>{len(missed)} defect frames called OK (missed), {len(rejected)} OK frames called "
        "a defect (false rejects), by the top class. Red: the model's defect map. Most "
        f"confident mistakes first, at most {PER_CLASS} per class.</p>",
    ]
    sessions = Counter(str(records[int(i)].session) for i in missed)
    sessions_fr = Counter(str(records[int(i)].session) for i in rejected)
    if sessions or sessions_fr:
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{sessions.get(s, 0)}</td>"
            f"<td>{sessions_fr.get(s, 0)}</td></tr>"
            for s in sorted(sessions.keys() | sessions_fr.keys())
        )
        parts.append(
            f"<table><tr><th>session</th><th>missed</th><th>false rejects</th></tr>{rows}</table>"
        )

    def name(index: int) -> str:
        return classes[index] if index >= 0 else "(unknown class)"

    def section(title: str, rows: np.ndarray, group: np.ndarray, worst_first: np.ndarray) -> None:
        groups: dict[str, list[int]] = {}
        for i in rows[np.argsort(worst_first[rows], kind="stable")]:
            groups.setdefault(name(int(group[i])), []).append(int(i))
        for key, members in sorted(groups.items()):
            cards = [
                _card(
                    dataset,
                    records[i],
                    None if defect_maps is None else defect_maps[i],
                    spec,
                    f"{name(int(labels[i]))} · {records[i].session} · p(OK) {p_ok[i]:.2f} · "
                    f"part {records[i].group or '?'} · {records[i].id}",
                )
                for i in members[:PER_CLASS]
            ]
            parts.append(
                f"<h3>{title} {html.escape(key)} ({len(members)})</h3>"
                f'<div class="gallery">{"".join(cards)}</div>'
            )

    section("Missed defects, true class", missed, labels, -p_ok)
    section("False rejects, called", rejected, top, p_ok)
    return "".join(parts)
