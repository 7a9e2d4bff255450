"""The quality benchmark's fold cache: keyed on the resolved training config, so a stored
model is reused only for the same training, and rejudged under other scoring keys."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from lineqc.train.config import DefectMapConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "train" / "configs" / "default.yaml"


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_quality", ROOT / "bench" / "bench_quality.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BASE = {"dataset": "d", "folds": 3, "seed": 0, "leave_out": None, "commit": "c1"}


def _key(bench, *overrides: str, commit: str = "c1"):
    cfg = load_config(RECIPE, [*overrides, "tracking.mlflow=false"])
    return bench.fold_cache_key(cfg, {**BASE, "commit": commit})


def test_key_is_the_resolved_config_not_its_spelling() -> None:
    bench = _bench()
    default_epochs = load_config(RECIPE).epochs
    assert _key(bench) == _key(bench, f"epochs={default_epochs}")
    assert _key(bench) != _key(bench, f"epochs={default_epochs + 1}")
    assert _key(bench) == _key(bench, "tracking.mlflow=true")  # tracking is not training


def test_rejudge_keeps_a_model_only_for_the_same_training() -> None:
    bench = _bench()
    stored = {"cache_key": _key(bench, commit="old")}
    assert bench._same_training(stored, _key(bench))  # any commit
    assert bench._same_training(stored, _key(bench, "flip_views=2"))  # scored otherwise
    assert not bench._same_training(stored, _key(bench, "epochs=3"))
    assert not bench._same_training(stored, _key(bench, "seed=1"))
    other_data = {**_key(bench), "dataset": "e"}
    assert not bench._same_training(stored, other_data)
    # a fold stored under the old key (recipe hash and override strings) is trained again
    old = {"cache_key": {**BASE, "recipe": "ab12", "overrides": []}}
    assert not bench._same_training(old, _key(bench))
    assert not bench._same_training({}, _key(bench))


def test_a_key_added_since_a_fold_was_stored_reads_as_its_default() -> None:
    bench = _bench()
    today = _key(bench)
    # the recipe keeps pos_weight's default, so a fold stored without the key reads as today's
    assert today["config"]["defect_map"]["pos_weight"] == DefectMapConfig().pos_weight
    before = {**today, "config": {**today["config"]}}
    before["config"]["defect_map"] = {
        k: v for k, v in today["config"]["defect_map"].items() if k != "pos_weight"
    }  # as if stored before defect_map.pos_weight existed
    stored = {"cache_key": before}
    assert bench.stored_key(stored) == today  # --reuse keeps it
    assert bench._same_training(stored, today)  # --rejudge too
    assert not bench._same_training(stored, _key(bench, "defect_map.pos_weight=5"))
    # a key today's config does not know (removed or renamed) cannot be read: trained again
    renamed = {"cache_key": {**today, "config": {**today["config"], "epoch": 3}}}
    assert bench.stored_key(renamed) is None
    assert not bench._same_training(renamed, today)
