"""Train-split augmentation of uint8 frames (albumentations), before the edge preprocessing.

The pipeline works on frames as the camera gives them (gray HxWx1 or BGR HxWx3), with their
defect masks moved alike, and the edge ``preprocess`` that follows is the same function the
device runs. With ``resize: stretch`` (the old recipes) the pipeline crops and resizes to
the model's input size itself; with ``letterbox`` it keeps the frame's size and aspect, and
``preprocess`` alone places the frame in the input: training and the device see the same
geometry.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from .config import AugmentConfig


def build_train_transform(
    cfg: AugmentConfig, size_hw: tuple[int, int], resize: str = "stretch"
) -> A.Compose:
    h, w = size_hw
    ops: list[A.BasicTransform] = []
    if resize == "letterbox":
        if cfg.enabled:
            ops.append(
                A.Affine(
                    scale=cfg.affine_scale,
                    translate_percent=(-cfg.affine_shift, cfg.affine_shift),
                    rotate=(-cfg.rotate_limit, cfg.rotate_limit),
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=cfg.rotate_p,
                )
            )
    elif cfg.enabled and cfg.crop_scale != (1.0, 1.0):
        ops.append(
            A.RandomResizedCrop(
                size=(h, w),
                scale=cfg.crop_scale,
                ratio=cfg.crop_ratio,
                interpolation=cv2.INTER_AREA,
            )
        )
    else:
        ops.append(A.Resize(h, w, interpolation=cv2.INTER_AREA))
    if cfg.enabled:
        # reflect at the border: a black wedge would be a tell-tale no real frame has
        ops += [
            A.HorizontalFlip(p=cfg.hflip),
            A.VerticalFlip(p=cfg.vflip),
        ]
        if resize != "letterbox":  # letterbox rotates inside its affine
            ops.append(
                A.Rotate(limit=cfg.rotate_limit, border_mode=cv2.BORDER_REFLECT_101, p=cfg.rotate_p)
            )
        ops += [
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness_contrast,
                contrast_limit=cfg.brightness_contrast,
                p=cfg.brightness_contrast_p,
            ),
            A.RandomGamma(gamma_limit=cfg.gamma_limit, p=cfg.gamma_p),
            A.CLAHE(clip_limit=(1, 3), p=cfg.clahe_p),
            A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur_p),
            A.GaussNoise(std_range=(0.02, 0.08), p=cfg.noise_p),
        ]
        ops = [op for op in ops if op.p > 0 or isinstance(op, A.Resize)]
    return A.Compose(ops)


def augment(
    transform: A.Compose, frame: np.ndarray, seed: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment one uint8 frame (and its mask, moved alike) with randomness from ``seed`` only.

    Seeding per sample makes an epoch's images independent of worker count, DDP rank and
    resumption, which is what lets a resumed run reach the same weights.
    """
    image = frame[:, :, None] if frame.ndim == 2 else frame
    transform.set_random_seed(seed)
    if mask is None:
        out = transform(image=image)["image"]
        return (out if out.ndim == 3 else out[:, :, None]), None
    done = transform(image=image, mask=mask)
    out = done["image"]
    return (out if out.ndim == 3 else out[:, :, None]), done["mask"]
