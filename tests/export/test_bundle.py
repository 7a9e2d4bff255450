"""Signing, verification and every refusal of a bundle, on a real exported bundle."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import onnx
import pytest

from lineqc.edge.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    SIGNATURE,
    BundleError,
    external_data_locations,
    load_bundle,
    seal,
)
from lineqc.edge.manifest import Manifest
from lineqc.edge.signing import SigningKeyError, load_private_key, load_public_key, sign


def resign(root: Path, private_key: Path, **changes: object) -> None:
    """Edit the manifest and sign it again with the real key (an insider's bundle)."""
    doc = json.loads((root / MANIFEST).read_text())
    version = changes.pop("schema_version", None)
    doc.update(changes)
    key = load_private_key(private_key)
    seal(root, Manifest.from_json(doc), key)
    if version is not None:  # seal always writes the current schema: overwrite it
        doc = json.loads((root / MANIFEST).read_text())
        doc["schema_version"] = version
        data = json.dumps(doc).encode()
        (root / MANIFEST).write_bytes(data)
        (root / SIGNATURE).write_bytes(sign(data, key))


def test_intact_bundle_loads(signed_bundle: Path, keys: tuple[Path, Path]) -> None:
    bundle = load_bundle(signed_bundle, keys[1])
    assert bundle.version == "5.0"
    assert bundle.manifest.schema_version == SCHEMA_VERSION
    assert set(bundle.manifest.files) == {
        "model.fp32.onnx",
        "model.int8.onnx",
        "model.int8.tensorrt.onnx",
    }
    assert bundle.policy.ok_class == bundle.ok_class
    assert bundle.spec.height == 32
    assert bundle.model_path("int8").is_file()
    assert os.stat(keys[0]).st_mode & 0o777 == 0o600


def test_tar_round_trip(signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    tar = signed_bundle.with_name(signed_bundle.name + ".tar")
    bundle = load_bundle(tar, keys[1], unpack_dir=tmp_path / "unpacked")
    assert bundle.root == tmp_path / "unpacked"
    assert bundle.manifest == load_bundle(signed_bundle, keys[1]).manifest


def test_flipped_byte_in_a_model_is_refused(
    bundle_copy: Path, keys: tuple[Path, Path], flip_byte
) -> None:
    flip_byte(bundle_copy / "model.int8.onnx")
    with pytest.raises(BundleError, match=r"model\.int8\.onnx was modified"):
        load_bundle(bundle_copy, keys[1])


def test_edited_manifest_is_refused(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    doc = json.loads((bundle_copy / MANIFEST).read_text())
    doc["decision"]["temperature"] *= 10  # quietly flatten every probability: nothing rejected
    (bundle_copy / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle_copy, keys[1])


def test_signature_of_another_key_is_refused(
    bundle_copy: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    data = (bundle_copy / MANIFEST).read_bytes()
    (bundle_copy / SIGNATURE).write_bytes(sign(data, load_private_key(other_keys[0])))
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle_copy, keys[1])
    assert load_bundle(bundle_copy, other_keys[1])  # it is a valid signature, of the stranger


def test_missing_signature_is_refused(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    (bundle_copy / SIGNATURE).unlink()
    with pytest.raises(BundleError, match="unsigned"):
        load_bundle(bundle_copy, keys[1])


def test_unlisted_file_is_refused(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    (bundle_copy / "extra.onnx").write_bytes(b"not signed")
    with pytest.raises(BundleError, match="not covered by the signed manifest"):
        load_bundle(bundle_copy, keys[1])


def test_missing_file_is_refused(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    (bundle_copy / "model.fp32.onnx").unlink()
    with pytest.raises(BundleError, match="listed in the manifest but missing"):
        load_bundle(bundle_copy, keys[1])


def test_symlink_is_refused(bundle_copy: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "elsewhere.onnx").write_bytes((bundle_copy / "model.int8.onnx").read_bytes())
    (bundle_copy / "model.int8.onnx").unlink()
    (bundle_copy / "model.int8.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(bundle_copy, keys[1])


def test_unknown_schema_version_is_refused(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    resign(bundle_copy, keys[0], schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(BundleError, match="schema_version 2 is not supported"):
        load_bundle(bundle_copy, keys[1])


def test_external_data_leaving_the_bundle_is_refused(
    bundle_copy: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    path = bundle_copy / "model.fp32.onnx"
    model = onnx.load(str(path))
    assert external_data_locations(path.read_bytes()) == []
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "weights.bin").write_bytes(tensor.raw_data)  # beside the bundle, not in it
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../weights.bin"
    path.write_bytes(model.SerializeToString())
    resign(bundle_copy, keys[0])  # signed by the real key: only the path check can refuse it
    assert external_data_locations(path.read_bytes()) == ["../weights.bin"]
    with pytest.raises(BundleError, match=r"external data at '\.\./weights\.bin'"):
        load_bundle(bundle_copy, keys[1])


def test_external_data_inside_the_bundle_is_allowed(
    bundle_copy: Path, keys: tuple[Path, Path]
) -> None:
    path = bundle_copy / "model.fp32.onnx"
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, location="fp32.weights")
    resign(bundle_copy, keys[0])
    assert external_data_locations(path.read_bytes())  # really external now
    assert "fp32.weights" in load_bundle(bundle_copy, keys[1]).manifest.files


def test_older_version_is_refused_unless_forced(
    signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    with pytest.raises(BundleError, match=r"version 5\.0 is older than the installed 5\.1"):
        load_bundle(signed_bundle, keys[1], installed_version="5.1")
    assert load_bundle(signed_bundle, keys[1], installed_version="5.1", force=True)
    assert load_bundle(signed_bundle, keys[1], installed_version="4.99")
    assert load_bundle(signed_bundle, keys[1], installed_version="5.0")  # a reinstall


def _tar_with(tmp_path: Path, signed_bundle: Path, evil: tarfile.TarInfo, payload: bytes) -> Path:
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tar:
        for f in sorted(signed_bundle.iterdir()):
            tar.add(f, arcname=f.name)
        tar.addfile(evil, io.BytesIO(payload))
    return tar_path


def test_tar_member_escaping_is_refused(
    signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    evil = tarfile.TarInfo("../escaped.txt")
    evil.size = 5
    tar_path = _tar_with(tmp_path, signed_bundle, evil, b"owned")
    dest = tmp_path / "sub" / "unpacked"
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        load_bundle(tar_path, keys[1], unpack_dir=dest)
    assert not (tmp_path / "sub" / "escaped.txt").exists()
    assert not dest.exists()  # checked before anything was written


def test_tar_symlink_member_is_refused(
    signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    link = tarfile.TarInfo("link.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar_path = _tar_with(tmp_path, signed_bundle, link, b"")
    with pytest.raises(BundleError, match="not a plain file"):
        load_bundle(tar_path, keys[1], unpack_dir=tmp_path / "unpacked")


def test_bad_key_files(tmp_path: Path, keys: tuple[Path, Path], signed_bundle: Path) -> None:
    (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n")
    with pytest.raises(SigningKeyError, match=r"junk\.pub"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_bundle(signed_bundle, tmp_path / "absent.pub")
    raw = tmp_path / "raw.pub"  # a raw 32-byte public key works as well as PEM
    from cryptography.hazmat.primitives import serialization

    raw.write_bytes(
        load_public_key(keys[1]).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    )
    assert load_bundle(signed_bundle, raw)


def test_cli_verify_and_info(
    lineqc, signed_bundle: Path, bundle_copy: Path, keys: tuple[Path, Path], flip_byte
) -> None:
    ok = lineqc("bundle", "verify", str(signed_bundle), "--pubkey", str(keys[1]))
    assert ok.returncode == 0 and "OK" in ok.stdout
    tar = lineqc("bundle", "verify", str(signed_bundle) + ".tar", "--pubkey", str(keys[1]))
    assert tar.returncode == 0
    flip_byte(bundle_copy / "model.fp32.onnx")
    bad = lineqc("bundle", "verify", str(bundle_copy), "--pubkey", str(keys[1]), check=False)
    assert bad.returncode != 0
    assert "model.fp32.onnx was modified" in bad.stderr and "Traceback" not in bad.stderr
    old = lineqc(
        "bundle",
        "verify",
        str(signed_bundle),
        "--pubkey",
        str(keys[1]),
        "--installed-version",
        "6",
        check=False,
    )
    assert old.returncode == 2 and "older than the installed 6" in old.stderr
    info = lineqc("bundle", "info", str(signed_bundle), "--json")
    assert json.loads(info.stdout)["model"]["version"] == "5.0"
    assert "default" in lineqc("bundle", "info", str(signed_bundle) + ".tar").stdout


def test_cli_keys_generate(lineqc, tmp_path: Path) -> None:
    lineqc("keys", "generate", "--out", str(tmp_path / "k"))
    assert os.stat(tmp_path / "k.key").st_mode & 0o777 == 0o600
    assert load_public_key(tmp_path / "k.pub")
    again = lineqc("keys", "generate", "--out", str(tmp_path / "k"), check=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
