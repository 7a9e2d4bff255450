"""`lineqc export build-engine`: a TensorRT engine built into a verified bundle, re-signed.

What an engine of each precision compiles, its builder flags and its name are
``lineqc.edge.tensorrt_engine``'s, the definition the device uses when it builds one itself.
INT8 compiles the INT8 entry's ``tensorrt_file`` (signed symmetric Q/DQ, as TensorRT
requires), not the UINT8 file ONNX Runtime runs: ``Bundle.tensorrt_model_path``
picks it.

Runs where ``tensorrt`` exists (the device, or any NVIDIA GPU machine); everything before the
build (the signature, the precision, the INT8 gate) is checked first, anywhere.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from lineqc.edge.bundle import load_bundle
from lineqc.edge.manifest import EngineEntry
from lineqc.edge.signing import load_private_key, load_public_key
from lineqc.edge.tensorrt_engine import (
    build_engine,
    check_precision,
    compute_capability,
    engine_record,
    load_tensorrt,
)

from .bundle_writer import add_engine
from .errors import ExportError


def build_into_bundle(
    bundle: Path,
    key_path: Path,
    pubkey_path: Path,
    precision: str | None = None,
    allow_failed_gate: bool = False,
    workspace_mb: int = 1024,
    timing_cache: Path | None = None,
) -> EngineEntry:
    """Build the ``precision`` engine (default: the bundle's default precision) of a verified
    bundle folder, add it and re-sign the manifest; returns the engine's record.

    An INT8 model whose accuracy gate failed or was skipped at export is refused unless
    ``allow_failed_gate`` (``Bundle.gate_failure``, the rule the device applies).
    """
    if not bundle.is_dir():
        raise ExportError(f"{bundle}: build-engine needs a bundle folder (unpack a tar first)")
    key, pubkey = load_private_key(key_path), load_public_key(pubkey_path)
    verified = load_bundle(bundle, pubkey)
    precision = check_precision(precision or verified.default_precision)
    failure = verified.gate_failure(precision)
    if failure and not allow_failed_gate:
        raise ExportError(
            f"{failure}: no engine built; build its fp32 engine (--precision fp32), or pass "
            "--allow-failed-gate to diagnose it (devices refuse to run it all the same)"
        )
    if failure:
        print(f"build-engine: building although {failure}", file=sys.stderr)
    source = verified.tensorrt_model_path(precision)
    version = load_tensorrt().__version__
    cc = compute_capability()
    record = engine_record(
        precision, source, version, cc, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    cache = timing_cache or bundle.parent / f"timing.trt{version}.sm{cc.replace('.', '')}.cache"
    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        engine = build_engine(source, Path(tmp) / record.file, precision, cache, workspace_mb)
        add_engine(bundle, engine, record, key, pubkey)
    return record
