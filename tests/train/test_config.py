"""Config validation: unknown keys named, bad values named, overrides typed."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from lineqc.cli import main
from lineqc.train.config import TrainConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = "model: resnet10t\nimg_size: 32\nepochs: 1\nbatch_size: 4\n"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_example_configs_validate_and_name_timm_models(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert timm.is_model(cfg.model)


def test_example_configs_cover_cnn_mobile_and_vit() -> None:
    models = {load_config(p).model for p in CONFIGS.glob("*.yaml")}
    assert any("vit" in m for m in models)
    assert any("mobilenet" in m or "efficientnet" in m for m in models)
    assert (CONFIGS / "default.yaml").exists() and (CONFIGS / "smoke.yaml").exists()


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "optim:\n  lr_max: 0.1\n")
    with pytest.raises(TrainConfigError, match=r"unknown config key 'optim\.lr_max'"):
        load_config(path)


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="unknown config key 'epoch'"):
        load_config(write(tmp_path, BASE + "epoch: 3\n"))


def test_missing_and_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="missing config key 'batch_size'"):
        load_config(write(tmp_path, "model: resnet10t\nimg_size: 32\nepochs: 1\n"))
    with pytest.raises(TrainConfigError, match=r"config key 'loss\.gamma'"):
        load_config(write(tmp_path, BASE + "loss:\n  gamma: -1\n"))
    with pytest.raises(TrainConfigError, match="config key 'img_size'"):
        load_config(write(tmp_path, BASE.replace("32", "4")))
    with pytest.raises(TrainConfigError, match="config key 'flip_views'"):
        load_config(write(tmp_path, BASE + "flip_views: 3\n"))
    with pytest.raises(TrainConfigError, match=r"flip_views > 1 needs a defect-map model"):
        load_config(write(tmp_path, BASE + "flip_views: 2\n"))
    views = load_config(write(tmp_path, BASE), ["flip_views=4", "defect_map.weight=1"])
    assert views.flip_views == 4
    with pytest.raises(TrainConfigError, match="config key 'defect_score'"):
        load_config(write(tmp_path, BASE + "defect_score: pooled\n"))
    with pytest.raises(TrainConfigError, match=r"defect_score 'map' needs a defect-map model"):
        load_config(write(tmp_path, BASE + "defect_score: map\n"))
    scored = load_config(write(tmp_path, BASE), ["defect_score=map", "defect_map.weight=1"])
    assert scored.defect_score == "map"


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, BASE),
        ["optim.lr=3e-4", "augment.enabled=false", "img_size=[32, 48]", "loss.name=focal"],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.augment.enabled is False
    assert cfg.size_hw == (32, 48)
    assert cfg.loss.name == "focal"
    with pytest.raises(TrainConfigError, match=r"unknown config key 'optim\.lr_max'"):
        load_config(write(tmp_path, BASE), ["optim.lr_max=1"])
    with pytest.raises(TrainConfigError, match="expected key=value"):
        load_config(write(tmp_path, BASE), ["optim.lr"])


def test_cli_reports_config_error_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE + "optim:\n  lr_max: 0.1\n")
    code = main(
        ["train", "--config", str(path), "--dataset", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lr_max'" in err and "Traceback" not in err


def test_unknown_model_name_is_named(tmp_path: Path) -> None:
    from lineqc.train.model import build_model

    with pytest.raises(TrainConfigError, match="'resnet_nope' is not a timm model"):
        build_model("resnet_nope", 2, 1)
