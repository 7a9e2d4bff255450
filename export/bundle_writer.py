"""Write a signed bundle folder (and optionally its tar) atomically; add engines to one.

The format and the checks belong to ``lineqc.edge.bundle``; this module only assembles files
and hands them to ``seal``. A failed write leaves no bundle and an existing one untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineqc.edge.bundle import MANIFEST, load_bundle, pack_tar, seal
from lineqc.edge.manifest import EngineEntry, Manifest

from .errors import ExportError

MODEL_FILES = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx"}  # what ONNX Runtime runs
# what TensorRT compiles, where it differs from the above (manifest: models.P.tensorrt_file)
TENSORRT_FILES = {"int8": "model.int8.tensorrt.onnx"}


def tar_path_of(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".tar")


def write_bundle(
    out: Path,
    manifest: Manifest,
    sources: Mapping[str, Path],
    key: Ed25519PrivateKey,
    tar: bool = False,
    overwrite: bool = False,
) -> Manifest:
    """Copy the files into ``out`` and seal it; returns the signed manifest.

    ``sources``: bundle file name -> the file to copy there; every file the manifest names
    (models, TensorRT sources) needs one (the names: ``MODEL_FILES``, ``TENSORRT_FILES``).
    """
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists (use --overwrite to replace it)")
    missing = sorted(set(manifest.referenced_files()) - set(sources))
    if missing:
        raise ExportError(f"the manifest names file(s) with no source to copy: {missing}")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name, src in sources.items():
            shutil.copyfile(src, partial / name)
        signed = seal(partial, manifest, key)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if tar:
        pack_tar(out, tar_path_of(out))
    return signed


def add_engine(
    bundle: Path,
    engine: Path,
    record: EngineEntry,
    key: Ed25519PrivateKey,
    pubkey: Ed25519PublicKey,
) -> Manifest:
    """Move a built engine into a verified bundle folder and re-sign its manifest.

    ``record`` names the engine's file, TensorRT version, compute capability and precision;
    an engine for the same TensorRT version and GPU replaces the earlier one.
    """
    current = load_bundle(bundle, pubkey)  # never re-sign a bundle that fails verification
    same = (record.tensorrt_version, record.compute_capability, record.precision)
    kept = []
    for e in current.manifest.engines:
        if (e.tensorrt_version, e.compute_capability, e.precision) == same:
            (bundle / e.file).unlink(missing_ok=True)
        else:
            kept.append(e)
    os.replace(engine, bundle / record.file)
    signed = seal(bundle, current.manifest.model_copy(update={"engines": [*kept, record]}), key)
    if tar_path_of(bundle).exists():
        pack_tar(bundle, tar_path_of(bundle))
    return signed


def read_manifest_unverified(bundle: Path) -> dict[str, Any]:
    """The manifest as it stands, for `bundle info` (verification is `bundle verify`)."""
    try:
        if bundle.is_file():
            with tarfile.open(bundle) as tar:
                member = tar.extractfile(MANIFEST)
                if member is None:
                    raise KeyError(MANIFEST)
                data = member.read()
        else:
            data = (bundle / MANIFEST).read_bytes()
        doc = json.loads(data)
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as exc:
        raise ExportError(f"{bundle}: no readable {MANIFEST} ({exc})") from None
    if not isinstance(doc, dict):
        raise ExportError(f"{bundle}: {MANIFEST} is not a JSON object")
    return doc
