"""Seeded synthetic metal-part images with scratch, dent and contamination defects.

For fast tests and for users without data. Image i depends only on (seed, i), so the
same seed always gives the same bytes. Parts are sometimes photographed twice (under
another session's lighting): those shots share a group id, as real re-shots would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from .ingest import Candidate, ImportReport, ingest
from .manifest import DatasetError

CLASSES = ("ok", "scratch", "dent", "contamination")
CLASS_WEIGHTS = (0.55, 0.15, 0.15, 0.15)
OK_CLASS = "ok"
# Session = lighting setup: gradient direction (rad), gradient strength, vignette strength.
SESSIONS = {"L0": (0.0, 30.0, 0.25), "L1": (2.1, 45.0, 0.15), "L2": (4.0, 20.0, 0.35)}
RESHOT_SHARE = 0.2
START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
LICENSE = "synthetic (lineqc data synth), CC0"


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal: noise smeared along one axis, plus a few polishing streaks."""
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    brushed: np.ndarray = cv2.GaussianBlur(noise, (0, 0), sigmaX=size / 10.0, sigmaY=0.7)
    brushed *= 12.0 / (brushed.std() + 1e-6)
    for _ in range(int(rng.integers(2, 6))):
        row = int(rng.integers(0, size))
        brushed[row : row + int(rng.integers(1, 3)), :] += float(rng.uniform(-10, 10))
    return 128.0 + brushed


def _lighting(rng: np.random.Generator, size: int, session: str) -> np.ndarray:
    angle, strength, vignette = SESSIONS[session]
    angle += float(rng.normal(0, 0.15))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    gradient = strength * (np.cos(angle) * xx + np.sin(angle) * yy)
    radius2 = (xx**2 + yy**2) / 0.5
    return gradient - 128.0 * vignette * radius2


def _scratch(rng: np.random.Generator, size: int, mask: np.ndarray) -> np.ndarray:
    layer = np.zeros((size, size), np.float32)
    length = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform(0.3, 0.7, 2) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    bend = rng.normal(0, 0.08 * size) * np.array([-direction[1], direction[0]])
    t = np.linspace(-0.5, 0.5, 24)[:, None]
    points = centre + t * length * direction + (1 - 4 * t**2) * bend
    pts = np.round(points).astype(np.int32).reshape(-1, 1, 2)
    width = int(rng.integers(1, 3))
    cv2.polylines(layer, [pts], False, 1.0, width, cv2.LINE_AA)
    cv2.polylines(mask, [pts], False, 255, width + 2)
    return layer * float(rng.choice([-1.0, 1.0]) * rng.uniform(45, 75))


def _dent(rng: np.random.Generator, size: int, mask: np.ndarray) -> np.ndarray:
    """A dent catches the light on one side and shades the other: a Gaussian's derivative."""
    radius = rng.uniform(0.07, 0.15) * size
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / radius
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2
    cv2.circle(mask, (int(cx), int(cy)), int(radius * 1.5), 255, -1)
    return float(rng.uniform(60, 90)) * u * np.exp(-r2)


def _contamination(rng: np.random.Generator, size: int, mask: np.ndarray) -> np.ndarray:
    blob = np.zeros((size, size), np.float32)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    for _ in range(int(rng.integers(3, 7))):
        ox, oy = rng.normal(0, 0.05 * size, 2)
        axes = (int(rng.uniform(0.02, 0.07) * size) + 1, int(rng.uniform(0.02, 0.07) * size) + 1)
        centre = (int(cx + ox), int(cy + oy))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(blob, centre, axes, angle, 0, 360, 1.0, -1)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1)
    return -float(rng.uniform(50, 90)) * cv2.GaussianBlur(blob, (0, 0), 1.2)


DEFECTS = {"scratch": _scratch, "dent": _dent, "contamination": _contamination}


def render(
    part_seed: np.random.SeedSequence,
    shot_seed: np.random.SeedSequence,
    label: str,
    session: str,
    size: int,
) -> tuple[bytes, bytes | None]:
    """One shot of one part -> (PNG bytes, defect mask PNG bytes or None for OK parts)."""
    part = np.random.default_rng(part_seed)
    shot = np.random.default_rng(shot_seed)
    image = _texture(part, size)
    mask = np.zeros((size, size), np.uint8)
    if label != OK_CLASS:
        image += DEFECTS[label](part, size, mask)
    image += _lighting(shot, size, session)
    image += shot.normal(0, shot.uniform(1.5, 4.0), image.shape)  # sensor read noise
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    encoded = cv2.imencode(".png", pixels)[1].tobytes()
    mask_png = cv2.imencode(".png", mask)[1].tobytes() if label != OK_CLASS else None
    return encoded, mask_png


def candidates(n: int, seed: int, size: int = 128) -> Iterator[Candidate]:
    sessions = list(SESSIONS)
    i = part_no = 0
    while i < n:
        part_seq = np.random.SeedSequence([seed, 1, part_no])
        plan = np.random.default_rng(part_seq.spawn(1)[0])
        label = str(plan.choice(CLASSES, p=CLASS_WEIGHTS))
        shots = 2 if plan.random() < RESHOT_SHARE else 1
        first_session = int(plan.integers(0, len(sessions)))
        for k in range(min(shots, n - i)):
            session = sessions[(first_session + k) % len(sessions)]
            shot_seq = np.random.SeedSequence([seed, 2, i])
            data, mask = render(part_seq, shot_seq, label, session, size)
            yield Candidate(
                origin=f"{i:06d}.png",
                source=f"synth-{seed}",
                label=label,
                data=data,
                session=session,
                captured_at=(START + timedelta(seconds=37 * i)).isoformat(),
                group=f"part-{part_no:06d}",
                label_source="importer:synth",
                license=LICENSE,
                mask_data=mask,
            )
            i += 1
        part_no += 1


def synthesize(
    root: Path | str, n: int, seed: int, size: int = 128, quiet: bool = False
) -> ImportReport:
    """Write ``n`` synthetic images into the dataset at ``root`` (importing them as usual)."""
    if n < 1:
        raise DatasetError(f"n must be at least 1, got {n}")
    return ingest(
        root,
        candidates(n, seed, size),
        import_name=f"synth n={n} seed={seed} size={size}",
        ok_class=OK_CLASS,
        quiet=quiet,
        total=n,
    )
