"""Every reject reason, each with a real broken file, through the real importer."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lineqc.datasets import manifest as mf
from lineqc.datasets.importers import imagefolder
from lineqc.datasets.ingest import ingest
from lineqc.datasets.validate import Limits, Rejected, inspect_image


def _texture(seed: int, shape: tuple[int, ...] = (96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (5, 5), 0)


def _jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", _texture(seed))[1].tobytes()


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_texture(3)).save(buf, format="GIF")
    return buf.getvalue()


BROKEN = {
    "empty.jpg": (lambda: b"", "zero-size"),
    "noise.png": (
        lambda: bytes(np.random.default_rng(1).integers(0, 255, 5000, dtype=np.uint8)),
        "unreadable",
    ),
    "half.jpg": (lambda: _jpeg(4)[: len(_jpeg(4)) // 2], "truncated"),
    "half.png": (lambda: _png(_texture(5))[: len(_png(_texture(5))) // 2], "truncated"),
    "no_eoi.jpg": (lambda: _jpeg(6)[:-2], "truncated"),
    "anim.gif": (_gif, "wrong-format"),
    "png_inside.jpg": (lambda: _png(_texture(7)), "wrong-format"),
    "huge.png": (lambda: _png(np.zeros((6500, 6500), np.uint8)), "too-large"),
    "tiny.png": (lambda: _png(np.zeros((4, 4), np.uint8)), "too-small"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_file_is_rejected_with_its_reason(name: str) -> None:
    make, reason = BROKEN[name]
    with pytest.raises(Rejected) as info:
        inspect_image(make(), name)
    assert info.value.reason == reason


def test_file_size_limit() -> None:
    data = _jpeg(8)
    assert inspect_image(data, "ok.jpg").width == 128
    with pytest.raises(Rejected, match="too-large"):
        inspect_image(data, "ok.jpg", Limits(max_bytes=len(data) - 1))


def test_good_images_report_their_geometry() -> None:
    info = inspect_image(_png(np.dstack([_texture(9)] * 3)), "colour.png")
    assert (info.format, info.width, info.height, info.channels) == ("PNG", 128, 96, 3)
    assert inspect_image(_jpeg(10), "gray.JPEG").channels == 1


def test_import_rejects_broken_files_one_line_each_and_imports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    (src / "bad").mkdir()
    for i in range(3):
        (src / "ok" / f"good{i}.jpg").write_bytes(_jpeg(20 + i))
    for name, (make, _) in BROKEN.items():
        (src / "bad" / name).write_bytes(make())
    report = ingest(tmp_path / "ds", imagefolder(src), import_name="t", ok_class="ok")
    err = capsys.readouterr().err
    assert report.added == 3
    assert len(report.rejected) == len(BROKEN)
    reject_lines = [line for line in err.splitlines() if line.startswith("rejected ")]
    assert len(reject_lines) == len(BROKEN)
    for name, (_, reason) in BROKEN.items():
        assert any(name in line and f": {reason}:" in line for line in reject_lines), name
    assert "imported 3 images" in err and f"rejected {len(BROKEN)}" in err
    manifest = mf.load(tmp_path / "ds")
    assert len(manifest) == 3 and len(manifest.rejects) == len(BROKEN)
