"""The preprocessing contract: layout, colour handling, normalisation, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lineqc.edge.preprocess import PreprocessSpec, placement, preprocess, preprocess_batch


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


def test_letterbox_keeps_the_aspect_and_pads_with_the_mean() -> None:
    frame = np.full((50, 200), 200, np.uint8)  # a 4:1 tile
    spec = PreprocessSpec(64, 64, 1, mean=(0.5,), std=(0.25,), resize="letterbox")
    out = preprocess(frame, spec)[0]
    place = placement(frame.shape, spec)
    assert (place.top, place.left, place.height, place.width) == (24, 0, 16, 64)
    body = out[place.top : place.top + place.height]
    np.testing.assert_allclose(body, (200 / 255 - 0.5) / 0.25, rtol=1e-6)
    assert np.all(out[: place.top] == 0) and np.all(out[place.top + place.height :] == 0)
    # a stretched frame fills the input: the same tile squashed to a square
    assert placement(frame.shape, PreprocessSpec(64, 64, 1)).height == 64


def test_a_frame_and_its_mask_land_in_the_same_cells_of_the_input() -> None:
    place = placement((30, 60), PreprocessSpec(40, 40, 1, resize="letterbox"))
    frame = np.full((place.height, place.width, 3), 2.0, np.float32)
    mask = np.ones((place.height, place.width), np.uint8)
    framed, masked = place.into_input(frame, 40, 40), place.into_input(mask, 40, 40)
    assert framed.shape == (40, 40, 3) and masked.shape == (40, 40) and masked.dtype == np.uint8
    np.testing.assert_array_equal(framed[:, :, 0] != 0, masked == 1)
    assert (masked.sum(axis=1) > 0).tolist() == [10 <= r < 30 for r in range(40)]
    assert place.into_input(frame, place.height, place.width) is frame  # nothing to pad


def test_flatfield_takes_out_a_lighting_gradient_but_keeps_a_defect() -> None:
    h, w = 120, 160
    light = np.linspace(60, 220, w, dtype=np.float32)[None, :].repeat(h, 0)  # uneven lighting
    frame = light.copy()
    frame[55:65, 75:85] *= 0.5  # a dark blemish
    frame = frame.astype(np.uint8)
    plain = PreprocessSpec(h, w, 1, mean=(0.0,), std=(1.0,))
    flat = PreprocessSpec(h, w, 1, mean=(0.0,), std=(1.0,), illumination="flatfield")
    before, after = preprocess(frame, plain)[0], preprocess(frame, flat)[0]
    background = np.ones_like(before, dtype=bool)
    background[40:80, 60:100] = False
    assert before[background].std() > 0.15  # the gradient dominates the raw frame
    assert after[background].std() < 0.05  # flat after the correction
    assert after[58:62, 78:82].mean() < after[background].mean() - 0.15  # the blemish stays


def test_clahe_and_spec_json_with_and_without_the_new_fields() -> None:
    rng = np.random.default_rng(1)
    frame = (rng.normal(100, 5, (60, 80))).clip(0, 255).astype(np.uint8)  # low contrast
    spec = PreprocessSpec(60, 80, 1, mean=(0.0,), std=(1.0,), illumination="clahe")
    assert (
        preprocess(frame, spec).std()
        > 2 * preprocess(frame, PreprocessSpec(60, 80, 1, (0.0,), (1.0,))).std()
    )
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    old = {"height": 32, "width": 32, "channels": 1, "mean": [0.5], "std": [0.25]}
    assert PreprocessSpec.from_json(old).resize == "stretch"  # bundles made before the fields
    with pytest.raises(ValueError, match="resize must be one of"):
        PreprocessSpec(resize="crop")
    assert PreprocessSpec.from_json(old).orient == "keep"
    with pytest.raises(ValueError, match="orient must be one of"):
        PreprocessSpec(orient="portrait")
    with pytest.raises(ValueError, match="illumination must be one of"):
        PreprocessSpec(illumination="gamma")
