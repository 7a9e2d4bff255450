"""The model bundle: the one artifact a device may load (format in DESIGN.md).

A folder (or one tar of it) holding ``manifest.json``, the model files it names and
``manifest.sig``, a detached Ed25519 signature over the manifest's exact bytes. The manifest
lists the sha256 of every other file, so the signature covers the whole bundle.

``load_bundle`` does every check before anything is loaded, and refuses with a
``BundleError`` naming the bundle and the reason: a missing or wrong signature, a file whose
hash differs (or one the manifest does not list), an unknown schema version, ONNX external
data that points outside the bundle, or a bundle older than the installed one (unless forced).
No torch or onnx here: this module runs on the device.

``models`` maps a precision to its entry; ``file`` is the ONNX that ONNX Runtime runs. An
entry may also name a ``tensorrt_file``: the ONNX that TensorRT compiles, where that differs
(the INT8 model: signed symmetric activations for TensorRT, the same quantization grid
re-expressed as UINT8 activations and weights for ONNX Runtime's CPU kernels; see
``lineqc.export.quantize.unsigned_activations`` and ``unsigned_weights``). Without it
TensorRT compiles ``file``.
An entry's ``decision`` is the policy chosen on that model's own outputs; the top-level
``decision`` repeats the default precision's, for devices that read only it. Both keys are
optional, so schema version 1 covers bundles with and without them. ``engines`` records the
TensorRT engines built into the bundle (``lineqc.edge.tensorrt_engine``). The manifest's
definition is ``lineqc.edge.manifest.Manifest``; a manifest that does not validate is
refused naming the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from lineqc.errors import LineqcError
from lineqc.versioned import parse_versioned

from .config import format_errors
from .decision import DecisionPolicy
from .manifest import SCHEMA_VERSION, Manifest, ModelEntry, Precision
from .preprocess import PreprocessSpec
from .signing import load_public_key, sign, verify

log = logging.getLogger("lineqc.edge.bundle")
MAX_EXPANSION = 16  # a compressed bundle tar unpacks to at most this times its size
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


class BundleError(LineqcError):
    """A bundle that must not be loaded; the message names it and the reason."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_version(version: str) -> tuple[int, ...]:
    """A model version is dotted integers ("3", "2025.611.1432"); compared numerically."""
    try:
        parts = tuple(int(p) for p in str(version).split("."))
    except ValueError:
        raise BundleError(f"model version {version!r} is not dotted integers") from None
    if any(p < 0 for p in parts):
        raise BundleError(f"model version {version!r} has a negative part")
    return parts


def _payload_files(root: Path) -> Iterator[str]:
    """Every file below root except the manifest and signature, as posix relative paths."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                raise BundleError(f"{root}: {path.relative_to(root)} is a symbolic link")
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in (MANIFEST, SIGNATURE):
                yield rel


def manifest_bytes(manifest: Manifest) -> bytes:
    """The exact bytes signed: sorted keys, no NaN, so one manifest has one encoding."""
    doc = manifest.to_json()
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def seal(root: Path, manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    """Hash every file of the bundle folder into the manifest, write it and its signature;
    returns the manifest as sealed. Validated again first (an object built with
    ``model_copy`` is not), so no writer signs a manifest a device would refuse."""
    root = Path(root)
    doc = manifest.to_json() | {"schema_version": SCHEMA_VERSION}
    doc["files"] = {rel: sha256_file(root / rel) for rel in _payload_files(root)}
    sealed = validate_manifest(doc, root / MANIFEST)
    _check_references(root, sealed)
    data = manifest_bytes(sealed)
    (root / MANIFEST).write_bytes(data)
    (root / SIGNATURE).write_bytes(sign(data, key))
    return sealed


def validate_manifest(doc: dict[str, Any], where: Path) -> Manifest:
    """``doc`` as a Manifest, or a BundleError naming ``where`` and each bad field."""
    try:
        return Manifest.from_json(doc)
    except ValidationError as exc:
        errors = format_errors(exc)
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BundleError(f"{where}: not a valid manifest: {'; '.join(errors[:5])}{more}") from None


def _check_references(root: Path, manifest: Manifest) -> None:
    unlisted = [rel for rel in manifest.referenced_files() if rel not in manifest.files]
    if unlisted:
        raise BundleError(f"{root}: the manifest names file(s) it does not list: {unlisted}")


# ---- checks ------------------------------------------------------------------------------


def read_verified_manifest(root: Path, pubkey: Ed25519PublicKey) -> Manifest:
    """Signature, schema version, the manifest's schema and every file hash; returns it."""
    manifest_path, sig_path = root / MANIFEST, root / SIGNATURE
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST} (not a model bundle?)")
    if not sig_path.is_file():
        raise BundleError(f"{root}: unsigned bundle ({SIGNATURE} is missing)")
    data = manifest_path.read_bytes()
    if not verify(data, sig_path.read_bytes(), pubkey):
        raise BundleError(
            f"{root}: the signature does not match the manifest (tampered, or signed with "
            "another key)"
        )
    doc = parse_versioned(data, str(manifest_path), "schema_version", SCHEMA_VERSION, BundleError)
    manifest = validate_manifest(doc, manifest_path)
    check_files(root, manifest.files)
    _check_references(root, manifest)
    return manifest


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing absolute paths and any that leave root."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or rel.startswith(("/", "\\")) or ":" in rel:
        raise BundleError(f"{root}: path {rel!r} leaves the bundle folder")
    return root / pure


def check_files(root: Path, files: dict[str, str]) -> None:
    have = set(_payload_files(root))
    unlisted = sorted(have - set(files))
    if unlisted:
        raise BundleError(f"{root}: file(s) not covered by the signed manifest: {unlisted}")
    for rel, expected in sorted(files.items()):
        path = _inside(root, rel)
        if not path.is_file():
            raise BundleError(f"{root}: {rel} is listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise BundleError(f"{root}: {rel} was modified (its sha256 differs from the manifest)")


# ONNX external data, found by walking the protobuf wire format (no onnx package on the
# device). Field numbers from onnx.proto: message -> {field: message type it holds}.
_ONNX_PATHS: dict[str, dict[int, str]] = {
    "Model": {7: "Graph", 25: "Function"},
    "Function": {7: "Node"},
    "Graph": {1: "Node", 5: "Tensor", 15: "Sparse"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "Sparse", 23: "Sparse"},
    "Sparse": {1: "Tensor", 2: "Tensor"},
    "Tensor": {13: "Entry"},
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, bytes of a length-delimited field or None) for each field."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield tag >> 3, None
        elif wire == 1:
            pos += 8
            yield tag >> 3, None
        elif wire == 5:
            pos += 4
            yield tag >> 3, None
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            yield tag >> 3, buf[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


def external_data_locations(onnx_bytes: bytes) -> list[str]:
    """Every external-data ``location`` named anywhere in a serialized ONNX model."""
    found: list[str] = []

    def walk(buf: bytes, kind: str) -> None:
        children = _ONNX_PATHS.get(kind, {})
        for number, value in _fields(buf):
            if value is None or number not in children:
                continue
            child = children[number]
            if child == "Entry":
                entry = {n: v for n, v in _fields(value) if v is not None}
                if entry.get(1) == b"location":
                    found.append(entry.get(2, b"").decode("utf-8", "replace"))
            else:
                walk(value, child)

    walk(onnx_bytes, "Model")
    return found


def check_external_data(root: Path, rel: str) -> None:
    try:
        locations = external_data_locations(_inside(root, rel).read_bytes())
    except ValueError as exc:
        raise BundleError(f"{root}: {rel} is not a readable ONNX file ({exc})") from None
    folder = PurePosixPath(rel).parent.as_posix()
    for location in locations:
        joined = location if folder == "." else f"{folder}/{location}"
        try:
            _inside(root, joined)
        except BundleError:
            raise BundleError(
                f"{root}: {rel} has external data at {location!r}, outside the bundle folder"
            ) from None


# ---- tar ---------------------------------------------------------------------------------


def pack_tar(root: Path, tar_path: Path) -> Path:
    """One uncompressed tar of a bundle folder (files at the top level of the archive)."""
    root, tar_path = Path(root), Path(tar_path)
    tmp = tar_path.with_name(f".{tar_path.name}.tmp")
    with tarfile.open(tmp, "w") as tar:
        for rel in [*sorted(_payload_files(root)), MANIFEST, SIGNATURE]:
            info = tar.gettarinfo(root / rel, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(root / rel, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, tar_path)
    return tar_path


def unpack_tar(tar_path: Path, dest: Path) -> Path:
    """Extract a bundle tar into ``dest``, refusing links, devices and paths that escape."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            _unpack_checked(tar, tar_path, dest)
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{tar_path}: not a readable tar ({exc})") from None
    return dest


def _unpack_checked(tar: tarfile.TarFile, tar_path: Path, dest: Path) -> None:
    """Every member is checked before anything is written."""
    members = tar.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir()) or m.issparse():
            raise BundleError(
                f"{tar_path}: member {m.name!r} is not a plain file or folder"
                + (f" (a sparse file of {m.size} bytes)" if m.issparse() else "")
            )
        _inside(dest, m.name)
    _check_unpacked_size(tar_path, members, dest)
    dest.mkdir(parents=True, exist_ok=True)
    for m in members:
        target = _inside(dest, m.name)
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        assert src is not None  # a regular file always has content
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def _check_unpacked_size(tar_path: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Refuse a tar whose members declare more bytes than it can hold: a plain tar holds
    its members' bytes, a compressed one at most MAX_EXPANSION times its size (model weights
    barely compress; zeros do, by a thousand), and never more than the disk has free."""
    total = sum(m.size for m in members if m.isfile())
    size = tar_path.stat().st_size
    limit = size if size and _is_plain_tar(tar_path) else size * MAX_EXPANSION
    folder = next(p for p in (dest, *dest.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if total > min(limit, free):
        largest = max((m for m in members if m.isfile()), key=lambda m: m.size)
        raise BundleError(
            f"{tar_path}: expands to {total} bytes ({largest.name!r}: {largest.size}), more "
            f"than a {size}-byte bundle tar holds or {folder} has free ({free}): refused "
            "before unpacking"
        )


def _is_plain_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(262)[257:262] == b"ustar"


# ---- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and manifest. Nothing else is loaded yet."""

    root: Path
    manifest: Manifest

    @property
    def version(self) -> str:
        return self.manifest.model.version

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def ok_class(self) -> str:
        return self.manifest.ok_class

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @property
    def policy(self) -> DecisionPolicy:
        """The decision policy of the bundle's default precision."""
        return self.policy_for(None)

    def policy_for(self, precision: str | None) -> DecisionPolicy:
        """The decision policy chosen at export on the outputs of the ``precision`` model, so
        the thresholds a device applies match the model it runs. A bundle written before
        policies were per precision has one, chosen on its default precision: used for
        another precision with a warning, as those devices always did."""
        precision = precision or self.default_precision
        entry = self._model_entry(precision)
        if entry.decision is not None:
            return entry.decision
        if precision != self.default_precision:
            log.warning(
                "%s: no decision policy for its %s model (an older bundle); using the one "
                "chosen on its %s model",
                self.root,
                precision,
                self.default_precision,
            )
        return self.manifest.decision

    def gate_failure(self, precision: str | None = None) -> str | None:
        """Why the model of ``precision`` must not run: its INT8 accuracy gate failed or was
        skipped at export, ``gate_passed`` not true (None: it may run; FP32 is the reference
        and always may)."""
        precision = precision or self.default_precision
        entry = self._model_entry(precision)
        if precision != "int8" or entry.gate_passed is True:
            return None
        evaluation = self.manifest.evaluation
        gate = evaluation.gate if evaluation is not None else None
        failures = "; ".join(f for f in (gate.failures if gate else []) if f)
        return (
            f"{self.root}: its INT8 model did not pass the accuracy gate at export "
            f"({failures or 'the gate was skipped'})"
        )

    @property
    def has_defect_map(self) -> bool:
        """Whether the models have a ``defect_map`` output beside the logits."""
        return self.manifest.defect_map is not None

    @property
    def default_precision(self) -> Precision:
        return self.manifest.default_precision

    def _model_entry(self, precision: str | None) -> ModelEntry:
        precision = precision or self.default_precision
        models = self.manifest.models
        for name, entry in models.items():
            if name == precision:
                return entry
        raise BundleError(f"{self.root}: no {precision} model (has {sorted(models)})")

    def model_path(self, precision: str | None = None) -> Path:
        """The ONNX file ONNX Runtime runs for ``precision`` (default: the bundle's)."""
        return _inside(self.root, self._model_entry(precision).file)

    def tensorrt_model_path(self, precision: str | None = None) -> Path:
        """The ONNX file TensorRT compiles for ``precision``: its ``tensorrt_file`` if the
        manifest names one (INT8: signed symmetric Q/DQ), else the ONNX Runtime file."""
        entry = self._model_entry(precision)
        return _inside(self.root, entry.tensorrt_file or entry.file)

    def engine_for(
        self, precision: str, tensorrt_version: str, compute_capability: str, recipe: int
    ) -> Path | None:
        """The bundle's engine of ``precision`` built for exactly this TensorRT version and GPU
        by builder recipe ``recipe`` (``lineqc.edge.tensorrt_engine``), if it has one: an
        engine of another precision is never a stand-in."""
        for e in self.manifest.engines:
            if (e.precision, e.tensorrt_version, e.compute_capability, e.recipe) == (
                precision,
                tensorrt_version,
                compute_capability,
                recipe,
            ):
                return _inside(self.root, e.file)
        return None


def load_bundle(
    path: Path,
    pubkey: Path | Ed25519PublicKey,
    installed_version: str | None = None,
    force: bool = False,
    unpack_dir: Path | None = None,
) -> Bundle:
    """Verify a bundle folder or tar and return it; raises BundleError on any refusal.

    A tar is unpacked into ``unpack_dir`` (by default a new temporary folder, removed once
    the returned bundle is no longer referenced, or at exit) and checked there.
    ``installed_version``: the version the device runs now; an older bundle is refused
    unless ``force``.
    """
    path = Path(path)
    key = pubkey if isinstance(pubkey, Ed25519PublicKey) else load_public_key(pubkey)
    if path.is_file():
        dest = unpack_dir or Path(tempfile.mkdtemp(prefix="lineqc-bundle-"))
        try:
            bundle = _load_folder(unpack_tar(path, dest), key, installed_version, force)
        except BaseException:
            if unpack_dir is None:
                shutil.rmtree(dest, ignore_errors=True)
            raise
        if unpack_dir is None:  # ours: removed with the bundle, or when the process exits
            weakref.finalize(bundle, shutil.rmtree, dest, True)
        return bundle
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder or tar")
    return _load_folder(path, key, installed_version, force)


def _load_folder(
    root: Path, key: Ed25519PublicKey, installed_version: str | None, force: bool
) -> Bundle:
    manifest = read_verified_manifest(root, key)
    for rel in manifest.files:
        if rel.endswith(".onnx"):
            check_external_data(root, rel)
    version = manifest.model.version
    if (
        installed_version is not None
        and not force
        and parse_version(version) < parse_version(installed_version)
    ):
        raise BundleError(
            f"{root}: model version {version} is older than the installed "
            f"{installed_version} (use force to roll back)"
        )
    return Bundle(root, manifest)
