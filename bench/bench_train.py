"""Training throughput: one epoch of lineqc's training loop against a plain PyTorch loop.

Both train the same timm model at the same batch size and input size on the train split of a
real dataset (magnetic-tile by default, imported on first use), in the same process, one
after the other. Each runs a warm-up epoch first (worker start, allocator warm-up), then the
measured epoch. lineqc's loop augments (albumentations) from cached uint8 frames; the plain
loop decodes from disk and only resizes, as a minimal hand-written loop would.

    .venv/bin/python bench/bench_train.py [--dataset data/magnetic-tile] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, Dataset

from lineqc.datasets.manifest import load
from lineqc.datasets.prepare import magnetic_tile_dataset
from lineqc.train.config import load_config
from lineqc.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


class PlainImages(Dataset[tuple[torch.Tensor, int]]):
    """Decode from disk, resize, scale: what a minimal hand-written loop does."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, channels: int):
        self.paths, self.labels, self.size, self.channels = paths, labels, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        flag = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        frame = cv2.imread(str(self.paths[i]), flag)
        if frame is None:
            raise OSError(f"{self.paths[i]}: not a readable image")
        image = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(image).float().div_(255.0).sub_(0.5).div_(0.25)
        x = x[None] if self.channels == 1 else x.permute(2, 0, 1)
        return x, self.labels[i]


def plain_epoch(model: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer) -> dict:
    model.train()
    seen, wait = 0, 0.0
    start = fetched = time.perf_counter()
    for x, y in loader:
        wait += time.perf_counter() - fetched
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        fetched = time.perf_counter()
    elapsed = time.perf_counter() - start
    return {"images_per_s": seen / elapsed, "data_wait_share": wait / elapsed, "samples": seen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "magnetic-tile")
    parser.add_argument(
        "--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic-tile"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "train" / "configs" / "default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    magnetic_tile_dataset(args.dataset, args.source)
    cfg = load_config(
        args.config, [*args.overrides, "epochs=2", "tracking.mlflow=false", "progress=false"]
    )
    size = cfg.size_hw[0]

    start = time.perf_counter()
    trainer = Trainer(cfg, args.dataset, Path("/nonexistent-bench-run"))
    decode_s = time.perf_counter() - start
    trainer.run_info = {"run_id": "bench"}
    trainer._build()
    trainer.train_epoch(0)  # warm-up: worker start
    ours = trainer.train_epoch(1)

    manifest = load(args.dataset)
    train = manifest.in_split("train")
    classes = manifest.classes
    torch.manual_seed(cfg.seed)
    model = timm.create_model(cfg.model, num_classes=len(classes), in_chans=cfg.channels)
    loader = DataLoader(
        PlainImages(
            [args.dataset / r.path for r in train],
            [classes.index(r.label) for r in train if r.label],
            size,
            cfg.channels,
        ),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        multiprocessing_context="spawn" if cfg.data.num_workers > 0 else None,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    plain_epoch(model, loader, opt)  # warm-up
    plain = plain_epoch(model, loader, opt)

    result = {
        "model": cfg.model,
        "img_size": size,
        "batch_size": cfg.batch_size,
        "train_images": len(train),
        "num_workers": cfg.data.num_workers,
        "torch_threads": torch.get_num_threads(),
        "cached_decode_s": round(decode_s, 2),
        "lineqc": {k: round(float(v), 4) for k, v in ours.items() if k != "lr"},
        "plain_pytorch": {k: round(float(v), 4) for k, v in plain.items()},
        "speed_ratio": round(ours["images_per_s"] / plain["images_per_s"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{cfg.model} {size}px batch {cfg.batch_size}, {len(train)} train images, "
            f"{cfg.data.num_workers} worker(s), {torch.get_num_threads()} torch threads"
        )
        print(f"{'pipeline':16s}{'images/s':>10s}{'data wait':>11s}")
        for name, r in (("lineqc", ours), ("plain pytorch", plain)):
            print(f"{name:16s}{r['images_per_s']:10.1f}{100 * r['data_wait_share']:10.1f}%")
        print(
            f"lineqc / plain: {result['speed_ratio']:.2f}x "
            f"(lineqc also augments; decode+cache took {decode_s:.1f}s once)"
        )
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
