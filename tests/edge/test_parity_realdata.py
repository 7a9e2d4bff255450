"""The device sees exactly what training evaluation saw, on the real magnetic-tile images."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from lineqc.datasets.storage import decode
from lineqc.edge.config import CameraConfig
from lineqc.edge.preprocess import PreprocessSpec, preprocess, preprocess_batch
from lineqc.edge.sources import Capture, EndOfStream

pytestmark = pytest.mark.realdata


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(224, 224, 1),
        PreprocessSpec(128, 128, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_runtime_capture_matches_training_evaluation_path(
    magnetic_tile: Path, spec, tmp_path: Path
) -> None:
    files = sorted(magnetic_tile.glob("MT_*/Imgs/*.jpg"))
    picked = sorted(random.Random(0).sample(files, 40))
    # training evaluation: lineqc.datasets decode -> preprocess_batch (train.evaluate.frame_batches)
    expected = preprocess_batch([decode(p.read_bytes(), p.name) for p in picked], spec)
    # the device: a replay source through the capture thread -> preprocess
    folder = tmp_path / "replay"
    folder.mkdir()
    for p in picked:  # links, not copies
        (folder / p.name).symlink_to(p)
    cap = Capture(CameraConfig(source=str(folder)))
    names = {p.name: i for i, p in enumerate(picked)}
    cap.start()
    seen = 0
    try:
        while True:
            try:
                frame = cap.get(1.0)
            except EndOfStream:
                break
            if frame is None or Path(frame.origin).name not in names:
                continue
            np.testing.assert_array_equal(
                preprocess(frame.image, spec), expected[names[Path(frame.origin).name]]
            )
            seen += 1
    finally:
        cap.stop()
    assert seen == len(picked)
