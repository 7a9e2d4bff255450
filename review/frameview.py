"""What the frame page and the adjudication page both show of a frame: the image with its
defect map, the model's view, and the class guide for the frame's classes."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from .guide import Guide
from .media import has_defect_map
from .store import Frame
from .web import store_of


def frame_view(request: Request, frame: Frame) -> dict[str, Any]:
    """Template context for one frame (``frame``, ``bars``, ``has_map``, ``guide``, ``ok``)."""
    store = store_of(request)
    guide: Guide = request.app.state.guide
    entries = guide.entries(store, frame.classes)
    return {
        "frame": frame,
        "bars": list(zip(frame.classes, frame.probabilities, strict=False)),
        "has_map": has_defect_map(store, frame.image_sha256),
        "guide": entries,
        "ok": {e.name for e in entries if e.is_ok},
    }
