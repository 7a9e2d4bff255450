"""`lineqc edge ...`: the device side. numpy, OpenCV and ONNX Runtime only; never torch."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineqc.errors import LineqcError

from .preprocess import PreprocessSpec, preprocess


def runtime_info() -> dict[str, Any]:
    """What this device can run: Python, OpenCV, and which inference backends exist."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "backends": {},
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        info["backends"]["onnxruntime"] = {
            "version": ort.__version__,
            "providers": ort.get_available_providers(),
        }
    if importlib.util.find_spec("tensorrt") is not None:
        info["backends"]["tensorrt"] = {"available": True}
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = runtime_info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Show what the model would see of one image: shape and per-channel statistics."""
    frame = cv2.imread(str(args.image), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise LineqcError(f"{args.image}: not a readable image")
    channels = args.channels
    spec = PreprocessSpec(
        height=args.size,
        width=args.size,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
    tensor = preprocess(frame, spec)
    doc = {
        "image": str(args.image),
        "frame_shape": list(frame.shape),
        "tensor_shape": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "mean": [round(float(c.mean()), 6) for c in tensor],
        "std": [round(float(c.std()), 6) for c in tensor],
    }
    print(json.dumps(doc, indent=2) if args.json else doc)
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("info", help="this device's runtime and available inference backends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("preprocess", help="run the preprocessing contract on one image")
    p.add_argument("image", type=Path)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preprocess)
