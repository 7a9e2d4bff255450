"""The preprocessing contract: layout, colour handling, normalisation, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lineqc.edge.preprocess import PreprocessSpec, preprocess, preprocess_batch


def test_gray_frame_resized_and_normalised() -> None:
    frame = np.full((100, 150), 191, np.uint8)
    spec = PreprocessSpec(height=32, width=48, channels=1, mean=(0.5,), std=(0.25,))
    out = preprocess(frame, spec)
    assert out.shape == (1, 32, 48) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, (191 / 255 - 0.5) / 0.25, rtol=1e-6)


def test_bgr_frame_becomes_rgb_channels() -> None:
    frame = np.zeros((16, 16, 3), np.uint8)
    frame[..., 0] = 255  # pure blue in OpenCV's BGR order
    spec = PreprocessSpec(16, 16, 3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = preprocess(frame, spec)
    assert out[2].min() == 1.0 and out[0].max() == 0.0 and out[1].max() == 0.0  # blue is last


def test_colour_frame_for_a_gray_model_matches_opencv_gray() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    spec = PreprocessSpec(40, 40, 1, mean=(0.0,), std=(1.0,))
    expected = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    np.testing.assert_allclose(preprocess(frame, spec)[0], expected, atol=1e-6)


def test_batch_and_json_roundtrip() -> None:
    spec = PreprocessSpec(24, 24, 3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    frames = [np.full((30, 20), v, np.uint8) for v in (0, 128, 255)]
    batch = preprocess_batch(frames, spec)
    assert batch.shape == (3, 3, 24, 24)
    np.testing.assert_array_equal(batch[1], preprocess(frames[1], spec))
    assert preprocess_batch([], spec).shape == (0, 3, 24, 24)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"mean": (0.5, 0.5)}, "mean and std need 1"),
        ({"std": (0.0,)}, "std values must be positive"),
        ({"interpolation": "nearest-ish"}, "interpolation must be one of"),
        ({"height": 4}, "too small"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessSpec(**kwargs)


def test_bad_frames_are_refused() -> None:
    spec = PreprocessSpec(16, 16, 1)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((16, 16), np.float32), spec)
    with pytest.raises(ValueError, match="gray or BGR"):
        preprocess(np.zeros((16, 16, 2), np.uint8), spec)
