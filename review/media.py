"""Pictures for signed-in users: stored frame images, their defect maps as overlays, and the
class guide's dataset examples.

Files are served only by a sha256 name from inside the image folder: ``Store`` refuses any
other name (traversal), and a link planted in the folder that points elsewhere is refused
here (the resolved file must lie in the folder). Both answer 404, like a missing file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from lineqc.edge.defect_map import decode_png
from lineqc.edge.imagesize import MAX_PIXELS, ImageSizeError, bounded_size

from .guide import Guide
from .store import Store, StoreError
from .web import Inspector, store_of

router = APIRouter()
CACHE = {"cache-control": "private, max-age=86400"}  # content-addressed: never changes
OVERLAY_BGR = (40, 40, 255)  # red
# Alpha = probability x this: a sure cell tints the frame strongly yet leaves the defect
# under it visible (the inspector judges the defect, not the tint).
OVERLAY_MAX_ALPHA = 0.5
MAP_MAX_PIXELS = 1024 * 1024  # a defect map's bound (WIRE.md: at most 1024 a side)


def overlay_png(cells: np.ndarray) -> bytes:
    """A defect map (probabilities, h x w) as a red RGBA PNG of the same size whose alpha
    follows the probability; the browser stretches it over the frame."""
    alpha = np.clip(np.rint(cells * (OVERLAY_MAX_ALPHA * 255.0)), 0, 255).astype(np.uint8)
    bgra = np.empty((*cells.shape, 4), np.uint8)
    bgra[..., :3] = OVERLAY_BGR
    bgra[..., 3] = alpha
    ok, data = cv2.imencode(".png", bgra)
    if not ok:
        raise ValueError("OpenCV could not encode the overlay as PNG")
    return bytes(data)


def stored_file(store: Store, path_of: Callable[[str], Path], sha256: str) -> Path:
    """The file ``path_of(sha256)`` names, if it is a file inside the store; else 404."""
    try:
        path = path_of(sha256)
    except StoreError:
        raise HTTPException(404, "no such image") from None
    real = path.resolve()
    if not real.is_relative_to(store.images.resolve()) or not real.is_file():
        raise HTTPException(404, "no such image")
    return real


def bounded_file(real: Path, max_pixels: int) -> Path:
    """``real`` if its header declares at most ``max_pixels``; else 404: a browser (or the
    overlay's decoder) would expand a decompression bomb stored before the collector
    checked image headers."""
    try:
        bounded_size(real, max_pixels)
    except ImageSizeError as exc:
        raise HTTPException(404, f"image refused: {exc}") from None
    return real


def has_defect_map(store: Store, image_sha256: str | None) -> bool:
    return image_sha256 is not None and store.defect_map_path(image_sha256).is_file()


@router.get("/image/{sha256}")
def image(request: Request, sha256: str, user: Inspector) -> Response:
    store = store_of(request)
    real = bounded_file(stored_file(store, store.image_path, sha256), MAX_PIXELS)
    return FileResponse(real, media_type="image/jpeg", headers=CACHE)


@router.get("/defect-map/{sha256}")
def defect_map(request: Request, sha256: str, user: Inspector) -> Response:
    """The defect map of the frame image ``sha256``, as a red overlay; 404 without one."""
    store = store_of(request)
    real = bounded_file(stored_file(store, store.defect_map_path, sha256), MAP_MAX_PIXELS)
    try:
        cells = decode_png(real.read_bytes())
    except ValueError:  # the collector checked it; a file damaged since is treated as gone
        raise HTTPException(404, "no readable defect map") from None
    return Response(overlay_png(cells), media_type="image/png", headers=CACHE)


@router.get("/example/{row_id}")
def example(request: Request, row_id: str, user: Inspector) -> Response:
    """A dataset image the class guide shows (only those: never any other row or file)."""
    guide: Guide = request.app.state.guide
    data = guide.example_jpeg(row_id)
    if data is None:
        raise HTTPException(404, "no such example")
    return Response(data, media_type="image/jpeg", headers=CACHE)
