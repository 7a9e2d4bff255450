"""The training run: data, model, optimisation, checkpoints, resume, DDP, final evaluation.

One process trains alone; under ``torchrun`` each process takes every world-th sample of the
epoch's order and DDP averages the gradients. Rank 0 evaluates, checkpoints and reports.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lineqc.datasets.labels import label_indices, split_records
from lineqc.datasets.manifest import DatasetError, load, manifest_hash
from lineqc.edge import outputs
from lineqc.errors import LineqcError

from . import checkpoint, report
from .augment import build_train_transform
from .calibration import fit_temperature
from .config import (
    SCORING_KEYS,
    TrainConfig,
    TrainConfigError,
    differing_keys,
    from_dict,
    save_config,
)
from .copy_paste import CopyPaste, Donor
from .data import EpochBatches, FrameStore, TrainImages, eval_inputs
from .devices import choose_device, choose_precision, init_distributed
from .evaluate import (
    frame_batches,
    predict,
    predict_outputs,
    predictions_csv,
    slice_keys,
    tensor_batches,
)
from .intervals import parts_of
from .losses import build_loss, map_loss
from .metrics import anomaly_figures, evaluate, summary
from .model import DefectNet, build_model, class_logits, preprocess_spec
from .optim import freeze, lr_factor, param_groups
from .tracking import MlflowRun, environment, git_commit


class RunError(LineqcError):
    """A run folder that cannot be started or resumed."""


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # workers are the parallelism; OpenCV threads would oversubscribe


def _better(value: float, best: float, mode: str) -> bool:
    return value < best if mode == "min" else value > best


def _monitor_value(cfg: TrainConfig, val: dict[str, Any]) -> float:
    name = cfg.early_stopping.metric
    value = val["loss"] if name == "loss" else val[name]
    if value is None:  # e.g. AUROC with one class in val
        return math.inf if name == "loss" else -math.inf
    return float(value)


class Trainer:
    """State of one run; ``run()`` trains from scratch or from the last checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Path,
        out: Path,
        resume: bool = False,
        epoch_end: Callable[[int], None] | None = None,
    ):
        self.dataset, self.out, self.epoch_end = Path(dataset), Path(out), epoch_end
        self.cfg = self._settle_config(cfg, resume)
        self.resume = resume
        self.device = choose_device(self.cfg)
        self.dist = init_distributed(self.device)
        self.autocast = choose_precision(self.cfg, self.device)
        self.channels_last = (
            self.device.type == "cuda"
            if self.cfg.channels_last == "auto"
            else self.cfg.channels_last
        )
        self._load_data()

    # ---- setup -----------------------------------------------------------------------------

    def _settle_config(self, cfg: TrainConfig, resume: bool) -> TrainConfig:
        last = self.out / "last.pt"
        if resume:
            if not last.exists():
                raise RunError(f"{self.out}: nothing to resume (no last.pt); drop --resume")
            saved = from_dict(checkpoint.load_meta(last)["config"], f"{self.out}/last.json")
            diff = [k for k in differing_keys(saved, cfg) if k not in SCORING_KEYS]
            if diff:
                raise RunError(
                    f"{self.out}: --resume needs the run's own config; keys differ: "
                    + ", ".join(diff)
                )
            # how the weights are scored may change: a finished run is finished again
            return saved.model_copy(update=cfg.scoring)
        if last.exists():
            raise RunError(
                f"{self.out} already holds a run; "
                "pass --resume to continue it or choose a new --out"
            )
        return cfg

    def _load_data(self) -> None:
        cfg = self.cfg
        manifest = load(self.dataset)
        if not manifest.records:
            raise DatasetError(f"{self.dataset}: no manifest.json or no images")
        self.classes = manifest.classes
        if manifest.ok_class not in self.classes:
            raise DatasetError(
                f"{self.dataset}: the OK class {manifest.ok_class!r} has no labelled images"
            )
        self.ok_class: str = manifest.ok_class
        self.ok_index = self.classes.index(self.ok_class)
        self.train_records = split_records(manifest, "train", self.dataset)
        self.val_records = split_records(manifest, "val", self.dataset)
        try:
            self.test_records = split_records(manifest, "test", self.dataset)
        except DatasetError:
            self.test_records = []
        self.manifest_hash = manifest_hash(self.dataset)
        self.train_labels, self.val_labels, self.test_labels = (
            label_indices(rs, self.classes, self.ok_class, self.ok_class)
            for rs in (self.train_records, self.val_records, self.test_records)
        )
        self.class_counts = np.bincount(self.train_labels, minlength=len(self.classes))
        everything = self.train_records + self.val_records + self.test_records
        self.cached = cfg.data.cache == "always" or (
            cfg.data.cache == "auto" and FrameStore.decoded_mb(everything) <= cfg.data.cache_max_mb
        )
        self.spec = preprocess_spec(cfg)
        self.pasting = cfg.augment.enabled and cfg.augment.copy_paste > 0
        self.train_frames = FrameStore(
            self.dataset,
            self.train_records,
            self.cached,
            "decode train",
            masks=cfg.defect_map.weight > 0 or self.pasting,
        )
        # Validation runs every epoch: preprocess it once, through the edge function.
        self.val_inputs = (
            eval_inputs(
                FrameStore(self.dataset, self.val_records, self.cached, "decode val"), self.spec
            )
            if self.dist.main
            else None
        )

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every resume
        model = build_model(
            cfg.model,
            len(self.classes),
            cfg.channels,
            cfg.pretrained,
            cfg.model_kwargs,
            defect_map=cfg.defect_map.weight > 0,
            ok_index=self.ok_index,
        ).to(self.device)
        self.frozen = freeze(
            model.backbone if isinstance(model, DefectNet) else model, cfg.optim.freeze
        )
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw = model
        self.model: torch.nn.Module = (
            DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            if self.dist.world > 1
            else model
        )
        self.ema = (
            ModelEmaV3(model, cfg.optim.ema_decay, use_warmup=cfg.optim.ema_warmup)
            if cfg.optim.ema_decay
            else None
        )
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr
        )
        self.sampler = EpochBatches(
            self.train_labels,
            cfg.batch_size,
            cfg.seed,
            cfg.balanced_sampling,
            self.dist.rank,
            self.dist.world,
        )
        steps = self.sampler.steps
        warmup = round(cfg.optim.warmup_epochs * steps)
        total = cfg.epochs * steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total, cfg.optim.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler(enabled=self.autocast == torch.float16)
        self.loss_fn = build_loss(cfg.loss, self.class_counts.tolist()).to(self.device)
        workers = cfg.data.num_workers
        self.loader = DataLoader(
            TrainImages(
                self.train_frames,
                self.train_labels,
                build_train_transform(cfg.augment, cfg.size_hw, cfg.resize),
                self.spec,
                DefectNet.stride if cfg.defect_map.weight > 0 else None,
                self.ok_index,
                self._copy_paste(),
            ),
            batch_sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
            # Fresh worker processes: forking a process whose OpenCV, MLflow or OpenMP threads
            # are running can deadlock the child. The cached frames are pickled over once.
            multiprocessing_context="spawn" if workers > 0 else None,
        )

    def _copy_paste(self) -> CopyPaste | None:
        """Defects pasted onto OK samples, from the training rows that have a mask."""
        if not self.pasting:
            return None
        donors = [
            Donor(i, int(y))
            for i, (r, y) in enumerate(zip(self.train_records, self.train_labels, strict=True))
            if y != self.ok_index and r.mask_path
        ]
        if not donors:
            raise TrainConfigError(
                "augment.copy_paste needs defect rows with masks in the train split; "
                f"{self.dataset} has none (train without it: --set augment.copy_paste=0)"
            )
        return CopyPaste(donors, self.cfg.augment.copy_paste)

    # ---- one epoch -------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the epoch's samples; returns loss, throughput and data-wait share."""
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        torch.manual_seed(_seed_for(cfg.seed, epoch, self.dist.rank))  # dropout, drop-path
        self.model.train()
        for module in self.frozen:
            module.eval()  # frozen: BatchNorm keeps the pretrained statistics
        loss_sum = torch.zeros((), dtype=torch.float64)
        seen = 0
        wait = 0.0
        start = time.perf_counter()
        bar = tqdm(
            total=self.sampler.steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (self.dist.main and cfg.progress),
            unit="batch",
        )
        fetched = time.perf_counter()
        for x, y, target, target_weight in self.loader:
            wait += time.perf_counter() - fetched
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.device.type,
                dtype=self.autocast or torch.float32,
                enabled=self.autocast is not None,
            ):
                out = self.model(x)
                loss = self.loss_fn(class_logits(out), y)
                if isinstance(out, tuple):
                    loss = loss + cfg.defect_map.weight * map_loss(
                        out[1],
                        target.to(self.device, non_blocking=True),
                        target_weight.to(self.device, dtype=torch.float32),
                        cfg.defect_map.pos_weight,
                    )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:  # the step drives ModelEmaV3's warmup, when asked for
                warm = self.scheduler.last_epoch if cfg.optim.ema_warmup else None
                self.ema.update(self.raw, step=warm)
            loss_sum += loss.detach().double().cpu() * len(y)
            seen += len(y)
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss.item():.4f}", img_s=f"{seen * self.dist.world / elapsed:.1f}"
            )
            bar.update()
            fetched = time.perf_counter()
        bar.close()
        elapsed = time.perf_counter() - start
        totals = torch.tensor([float(loss_sum), float(seen), wait, elapsed], dtype=torch.float64)
        if self.dist.world > 1:
            dist.all_reduce(totals)
        samples = int(totals[1])
        return {
            "train_loss": float(totals[0] / totals[1]),
            "samples": samples,
            "images_per_s": samples / (float(totals[3]) / self.dist.world),
            "data_wait_share": float(totals[2] / totals[3]),
            "lr": float(self.scheduler.get_last_lr()[0]),
        }

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.raw

    def logits(self, inputs: torch.Tensor, model: torch.nn.Module | None = None) -> np.ndarray:
        return predict(
            model or self.eval_model,
            tensor_batches(inputs, self.cfg.data.eval_batch_size),
            self.device,
            self.autocast,
            self.channels_last,
        )

    def validate(self) -> tuple[dict[str, Any], np.ndarray]:
        assert self.val_inputs is not None
        logits = self.logits(self.val_inputs)
        probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
        val = summary(probs, self.val_labels, self.classes, self.ok_index)
        val["loss"] = float(
            torch.nn.functional.cross_entropy(
                torch.from_numpy(logits), torch.from_numpy(self.val_labels)
            )
        )
        return val, logits

    # ---- checkpoints -----------------------------------------------------------------------

    def meta(self, epoch: int, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "model_kwargs": self.cfg.model_kwargs,
            "defect_map": self.cfg.defect_map.weight > 0,
            **self.cfg.scoring,
            "classes": self.classes,
            "ok_class": self.ok_class,
            "preprocess": self.spec.to_json(),
            "temperature": None,
            "config": self.cfg.to_json(),
            "run_id": self.run_info["run_id"],
            "dataset_manifest_hash": self.manifest_hash,
            "epoch": epoch,
            **extra,
        }

    def save_last(
        self, epoch: int, best: float, bad_epochs: int, history: list[dict[str, Any]]
    ) -> None:
        state: dict[str, Any] = {
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_value": best,
            "bad_epochs": bad_epochs,
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        checkpoint.save(self.out / "last.pt", state, self.meta(epoch, history=history))

    def load_last(self) -> tuple[int, float, int, list[dict[str, Any]]]:
        path = self.out / "last.pt"
        state = checkpoint.load_state(path, self.device)
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        history = checkpoint.load_meta(path).get("history", [])
        return (
            int(state["epoch"]) + 1,
            float(state["best_value"]),
            int(state["bad_epochs"]),
            history,
        )

    # ---- the run ---------------------------------------------------------------------------

    def _start_run_folder(self) -> None:
        info_path = self.out / "run.json"
        if self.resume:
            self.run_info = json.loads(info_path.read_text())
            self.run_info.setdefault("resumed_at", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
            self.run_info = {
                "run_id": uuid.uuid4().hex[:12],
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "dataset": str(self.dataset.resolve()),
                "dataset_manifest_hash": self.manifest_hash,
                "seed": self.cfg.seed,
                "git": git_commit(),
                "environment": environment(),
                "device": str(self.device),
                "world_size": self.dist.world,
                "precision": str(self.autocast or torch.float32).replace("torch.", ""),
                "channels_last": self.channels_last,
                "cached_images": self.cached,
                "classes": self.classes,
                "ok_class": self.ok_class,
                "train_counts": dict(zip(self.classes, self.class_counts.tolist(), strict=True)),
                "split_sizes": {
                    "train": len(self.train_records),
                    "val": len(self.val_records),
                    "test": len(self.test_records),
                },
            }
        self.tracker = None
        if self.cfg.tracking.mlflow:
            self.tracker = MlflowRun(
                self.cfg.tracking, self.out.name, self.run_info.get("mlflow_run_id")
            )
            if "mlflow_run_id" not in self.run_info:
                self.tracker.log_params(
                    {
                        **self.cfg.to_json(),
                        "dataset_manifest_hash": self.manifest_hash,
                        "git_commit": self.run_info["git"]["commit"],
                        "run_id": self.run_info["run_id"],
                    }
                )
            self.run_info["mlflow_run_id"] = self.tracker.run_id
            self.run_info["mlflow_tracking_uri"] = self.tracker.uri
        (self.out / "run.json").write_text(json.dumps(self.run_info, indent=2) + "\n")

    def run(self) -> dict[str, Any]:
        """Train, keep the best weights by the validation metric, then evaluate and report."""
        cfg = self.cfg
        if self.dist.main:
            self._start_run_folder()
        else:
            self.run_info = {"run_id": ""}
        self._build()
        start_epoch, bad_epochs = 0, 0
        history: list[dict[str, Any]] = []
        mode = "min" if cfg.early_stopping.metric == "loss" else "max"
        best = math.inf if mode == "min" else -math.inf
        if self.resume:
            start_epoch, best, bad_epochs, history = self.load_last()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
                stop = torch.zeros(1)
                if self.dist.main:
                    val, _ = self.validate()
                    row.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
                    last = cfg.early_stopping.metric == "last"  # every epoch kept: the final
                    value = 0.0 if last else _monitor_value(cfg, val)
                    if last or _better(value, best, mode) or epoch == start_epoch == 0:
                        best, bad_epochs = value, 0
                        checkpoint.save(
                            self.out / "best.pt",
                            {"model": self.eval_model.state_dict()},
                            self.meta(epoch, val_metrics=row),
                        )
                    else:
                        bad_epochs += 1
                    history.append(row)
                    self.save_last(epoch, best, bad_epochs, history)
                    (self.out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
                    if self.tracker:
                        self.tracker.log_metrics(row, step=epoch + 1)
                    patience = cfg.early_stopping.patience
                    if patience is not None and bad_epochs >= patience:
                        print(
                            f"early stop after epoch {epoch + 1}: no better "
                            f"{cfg.early_stopping.metric} for {patience} epochs"
                        )
                        stop[0] = 1
                if self.dist.world > 1:
                    dist.broadcast(stop, 0)
                if self.epoch_end is not None:
                    self.epoch_end(epoch)
                if stop.item():
                    break
            result = self.finish() if self.dist.main else {}
        except BaseException:
            if self.dist.main and self.tracker:
                self.tracker.end("KILLED")
            raise
        finally:
            if self.dist.world > 1:
                dist.barrier()
        return result

    def fill_memory(self, model: DefectNet) -> None:
        """The anomaly memory from the OK frames of the train split, as the device sees them
        (no augmentation); saved into the best checkpoint."""
        ok_rows = [r for r, y in zip(self.train_records, self.train_labels, strict=True)
                   if y == self.ok_index]  # fmt: skip
        frames = FrameStore(self.dataset, ok_rows, self.cached, "decode OK train")
        patches = []
        model.eval()
        with torch.no_grad():
            for x in frame_batches(frames, self.spec, self.cfg.data.eval_batch_size, "OK patches"):
                features = model.patch_features(x.to(self.device))
                patches.append(model.memory.patches(features).flatten(0, 1).cpu())
        model.memory.fill(torch.cat(patches), self.cfg.anomaly.bank_size, self.cfg.seed)

    def finish(self) -> dict[str, Any]:
        """Best weights -> anomaly memory -> temperature fitted on val -> metrics on test
        (val when there is no test split)."""
        assert self.val_inputs is not None
        model, meta = checkpoint.load_model(self.out / "best.pt", self.device)
        if isinstance(model, DefectNet):  # a resumed run may score its weights otherwise
            for key, value in self.cfg.scoring.items():
                setattr(model, key, value)
            meta.update(self.cfg.scoring)
        meta["config"] = self.cfg.to_json()
        save_config(self.cfg, self.out / "config.yaml")
        if self.cfg.anomaly.bank_size and isinstance(model, DefectNet):
            self.fill_memory(model)
            checkpoint.save(self.out / "best.pt", {"model": model.state_dict()}, meta)
        temperature = fit_temperature(self.logits(self.val_inputs, model), self.val_labels)
        if self.test_records:
            split, records, labels = "test", self.test_records, self.test_labels
            inputs = eval_inputs(
                FrameStore(self.dataset, records, self.cached, "decode test"), self.spec
            )
        else:
            split, records, labels = "val", self.val_records, self.val_labels
            inputs = self.val_inputs
        out = predict_outputs(
            model,
            tensor_batches(inputs, self.cfg.data.eval_batch_size),
            self.device,
            self.autocast,
            self.channels_last,
        )
        logits = out[outputs.LOGITS]
        metrics = evaluate(
            logits,
            labels,
            self.classes,
            self.ok_index,
            temperature,
            slice_keys(records),
            parts_of(records),
        )
        if outputs.ANOMALY in out:
            metrics["anomaly"] = anomaly_figures(
                out[outputs.ANOMALY], labels, self.classes, self.ok_index, parts_of(records)
            )
        metrics["split"] = split
        metrics["dataset"] = str(self.dataset)
        metrics["best_epoch"] = int(meta["epoch"]) + 1
        meta.update(
            temperature=temperature,
            test_metrics={k: metrics[k] for k in report.HEADLINE if k in metrics},
        )
        checkpoint.write_meta(self.out / "best.pt", meta)
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        from .evaluate import SplitResult

        result = SplitResult(metrics, records, labels, logits, out.get(outputs.DEFECT_MAP))
        (self.out / "predictions.csv").write_text(
            predictions_csv(result, self.classes, temperature)
        )
        history = json.loads((self.out / "history.json").read_text())
        written = report.write_all(self.out, result, history, self.run_info, meta)
        if self.tracker:
            self.tracker.log_metrics({k: metrics[k] for k in report.HEADLINE if k in metrics})
            self.tracker.log_artifacts(
                [self.out / n for n in ("metrics.json", "config.yaml", "run.json", "best.json")]
                + written
            )
            self.tracker.end()
        return metrics


def train(
    cfg: TrainConfig,
    dataset: Path,
    out: Path,
    resume: bool = False,
    epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train a model into the run folder ``out``; returns the final metrics (rank 0)."""
    return Trainer(cfg, dataset, out, resume, epoch_end).run()
