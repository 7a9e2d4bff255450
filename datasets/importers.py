"""Source layouts -> Candidates. Validation and storage happen in ``ingest``."""

from __future__ import annotations

import re
from pathlib import Path

from .ingest import Candidate
from .manifest import DatasetError
from .parts import Shot, compile_part_pattern, frame_run_parts, pattern_part

MAGNETIC_TILE_PAPER = (
    "Huang, Qiu, Yuan: Surface defect saliency of magnetic tile, The Visual Computer 36 "
    "(2020) 85-96"
)
MAGNETIC_TILE_LICENSE = f"{MAGNETIC_TILE_PAPER}; the authors ask users to cite the paper"
_MT_NAME = re.compile(r"^exp(?P<session>\d+)_num_(?P<num>\d+)$")


def _require_dir(src: Path) -> None:
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")


def imagefolder(
    src: Path,
    *,
    source: str | None = None,
    session: str | None = None,
    license: str | None = None,
    part_pattern: str | None = None,
) -> list[Candidate]:
    """``SRC/<class>/<image>`` or ``SRC/<class>/<part>/<image>``: the class is the folder name.

    Every non-hidden file in a class folder is offered, so a stray non-image is reported as a
    reject instead of vanishing silently. ``part_pattern`` (a regular expression) finds each
    image's part id in its path below the class folder (``parts.pattern_part``): for
    example ``^([^/]+)/`` for a folder per part, ``^(?P<part>\\d+)_`` for a part number
    that starts the file name.
    """
    pattern = compile_part_pattern(part_pattern) if part_pattern else None
    _require_dir(src)
    name = source or src.resolve().name
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{src}: no class folders (expected SRC/<class>/<image files>)")
    out = []
    for class_dir in class_dirs:
        files = sorted(
            f
            for f in class_dir.rglob("*")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(src).parts)
        )
        for file in files:
            key = file.relative_to(class_dir).as_posix()
            out.append(
                Candidate(
                    origin=f"{class_dir.name}/{key}",
                    source=name,
                    label=class_dir.name,
                    file=file,
                    session=session,
                    group=pattern_part(pattern, key) if pattern else None,
                    label_source="importer:imagefolder",
                    license=license,
                    root=src,
                )
            )
    return out


def magnetic_tile(src: Path, *, source: str = "magnetic-tile") -> list[Candidate]:
    """``MT_<Class>/Imgs/exp<K>_num_<ID>.jpg`` with its mask beside it as ``.png``.

    The class comes from the folder, the session from ``exp<K>``; the layout is used exactly
    as published. The part (the physical tile) comes from runs of nearby frame numbers
    within a class (``parts.frame_run_parts``): each tile was shot once per session.
    """
    _require_dir(src)
    class_dirs = sorted(p for p in src.glob("MT_*") if (p / "Imgs").is_dir())
    if not class_dirs:
        raise DatasetError(f"{src}: no MT_<Class>/Imgs folders; is this the magnetic-tile layout?")
    out = []
    for class_dir in class_dirs:
        label = class_dir.name.removeprefix("MT_")
        for file in sorted((class_dir / "Imgs").glob("*.jpg")):
            match = _MT_NAME.match(file.stem)
            mask = file.with_suffix(".png")
            out.append(
                Candidate(
                    origin=f"{class_dir.name}/Imgs/{file.name}",
                    source=source,
                    label=label,
                    file=file,
                    session=f"exp{match['session']}" if match else None,
                    label_source="importer:magnetic-tile",
                    license=MAGNETIC_TILE_LICENSE,
                    mask_file=mask if mask.exists() else None,
                    extra={"frame_number": int(match["num"])} if match else {},
                    root=src,
                )
            )
    numbered = [c for c in out if "frame_number" in c.extra]
    shots = [Shot(str(c.label), c.extra["frame_number"], str(c.session)) for c in numbered]
    for cand, part in zip(numbered, frame_run_parts(shots), strict=True):
        cand.group = part
    return out


FORMATS = {"imagefolder": imagefolder, "magnetic-tile": magnetic_tile}
DEFAULT_OK_CLASS = {"magnetic-tile": "Free"}
