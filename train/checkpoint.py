"""Checkpoints: weights in ``NAME.pt`` (loaded with ``weights_only=True``) and, beside them,
``NAME.json`` with everything needed to rebuild the model (timm name, classes, input spec,
temperature, config) without unpickling anything.

A run folder holds ``best`` (the inference weights: EMA when enabled) and ``last`` (the full
training state, for ``--resume``). Both are replaced atomically, so a killed run leaves the
previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lineqc.atomic import atomic_write_text
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.errors import LineqcError

from .model import build_model

FORMAT = "lineqc-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(LineqcError):
    """A checkpoint or run folder that cannot be loaded."""


def save(path: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``path`` (.pt) and its .json atomically; the .json last, as the commit mark."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    write_meta(path, meta)


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    atomic_write_text(path.with_suffix(".json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")


def load_meta(path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{meta_path}: not a readable checkpoint description ({exc})"
        ) from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} v{FORMAT_VERSION} file")
    return dict(meta)


def load_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:  # missing, truncated or not a torch file
        raise CheckpointError(f"{path}: cannot load checkpoint ({exc})") from None
    return dict(state)


def resolve(run_or_checkpoint: Path) -> Path:
    """A run folder means its best checkpoint."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (is {run_or_checkpoint} a run folder?)")
    return path


def load_model(
    run_or_checkpoint: Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode) and return it with its metadata."""
    path = resolve(run_or_checkpoint)
    meta = load_meta(path)
    model = build_model(
        meta["model"],
        len(meta["classes"]),
        meta["preprocess"]["channels"],
        model_kwargs=meta.get("model_kwargs"),
        defect_map=bool(meta.get("defect_map")),
        ok_index=list(meta["classes"]).index(meta["ok_class"]),
        flip_views=int(meta.get("flip_views", 1)),
        defect_score=str(meta.get("defect_score", "head")),
    )
    state = load_state(path, device)
    bank = state["model"].get("memory.bank")
    if bank is not None:  # a filled anomaly memory: its size is the checkpoint's
        model.memory.bank = torch.zeros_like(bank)  # type: ignore[union-attr]
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


def spec_of(meta: dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec.from_json(meta["preprocess"])
