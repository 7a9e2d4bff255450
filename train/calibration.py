"""Calibration: temperature scaling fitted on the validation split, ECE, reliability bins."""

from __future__ import annotations

import numpy as np
import torch

N_BINS = 15


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy (NaN if empty), count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # bin i holds confidences in (i/n, (i+1)/n]; confidence 0 cannot occur for a softmax
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(index, weights=correct.astype(float), minlength=n_bins) / count
    return conf, acc, count


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> float:
    """Top-label ECE: count-weighted mean |accuracy - confidence| over bins (NaN if empty)."""
    if len(labels) == 0:
        return float("nan")
    conf, acc, count = reliability_bins(probs, labels, n_bins)
    filled = count > 0
    return float((np.abs(acc - conf)[filled] * count[filled]).sum() / count.sum())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T).

    Optimised over log T with L-BFGS so that T stays positive. Returns 1.0 when there is
    nothing to fit on.
    """
    if len(labels) == 0:
        return 1.0
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    return t if np.isfinite(t) else 1.0
