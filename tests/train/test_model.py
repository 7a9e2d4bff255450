"""Model factory: local pretrained weights adapted to gray input, preprocessing spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from lineqc.train.config import ConfigError, from_dict
from lineqc.train.model import build_model, preprocess_spec


def test_local_pretrained_weights_are_loaded_and_adapted(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", num_classes=1000, in_chans=3)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet10t", 4, 1, pretrained=str(path))
    first = model.state_dict()["conv1.0.weight"]
    # timm folds the RGB filters into one gray channel (sum over input channels)
    expected = source.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(
        model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"]
    )
    assert model.get_classifier().out_features == 4


def test_missing_pretrained_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"weights file .*nope\.pth does not exist"):
        build_model("resnet10t", 2, 1, pretrained=str(tmp_path / "nope.pth"))


def test_spec_follows_config() -> None:
    base = {"model": "resnet10t", "img_size": [48, 64], "epochs": 1, "batch_size": 2}
    gray = preprocess_spec(from_dict(base))
    assert (gray.height, gray.width, gray.channels) == (48, 64, 1)
    rgb_pretrained = preprocess_spec(from_dict({**base, "channels": 3, "pretrained": True}))
    assert rgb_pretrained.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ConfigError, match="mean and std"):
        preprocess_spec(from_dict({**base, "mean": [0.5, 0.5], "std": [0.2, 0.2]}))
