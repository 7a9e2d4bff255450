"""The bundle manifest as the device reads it: one typed definition (``lineqc.edge.manifest``).

Every refusal here is of a manifest signed by the real key (an insider's or a buggy writer's
bundle), so the signature check passes and the schema is what refuses it, naming the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lineqc.edge.backends import BackendError, open_backend
from lineqc.edge.bundle import MANIFEST, BundleError, load_bundle, seal
from lineqc.edge.manifest import SCHEMA_FILE, EngineEntry, schema_text
from lineqc.edge.signing import generate_keys, load_private_key, load_public_key
from lineqc.export.bundle_writer import add_engine
from tests.edge.bundles import sign_as_is, tiny_bundle, tiny_manifest


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keys(tmp_path / "keys" / "signer")


@pytest.fixture
def bundle(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    return tiny_bundle(tmp_path / "bundle", keys[0])


def test_committed_schema_equals_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "edge/bundle.schema.json is stale: run `lineqc bundle schema --write`"
    )


def test_schema_command_prints_it(lineqc) -> None:
    assert lineqc("bundle", "schema").stdout == schema_text()


def test_a_sealed_manifest_reads_back_typed_and_byte_identical(
    bundle: Path, keys: tuple[Path, Path]
) -> None:
    loaded = load_bundle(bundle, keys[1])
    manifest = loaded.manifest
    assert manifest.models["int8"].gate_passed is True and manifest.default_precision == "fp32"
    assert loaded.spec == manifest.preprocess and loaded.policy == manifest.decision
    data = (bundle / MANIFEST).read_bytes()
    keys_in_order = list(json.loads(data))
    assert keys_in_order == sorted(keys_in_order)  # one manifest, one encoding
    seal(bundle, manifest, load_private_key(keys[0]))  # sealed again: the same bytes
    assert (bundle / MANIFEST).read_bytes() == data
    # what the writer did not set stays out of the file (as older devices expect)
    assert "tensorrt_file" not in json.loads(data)["models"]["int8"]


def _edited(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST).read_text())


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d.update(classes="ok,bad"), r"classes: Input should be a valid list"),
        (lambda d: d.pop("ok_class"), r"ok_class: Field required"),
        (lambda d: d.update(ok_class="good"), r"ok_class 'good' is not among classes"),
        (lambda d: d["model"].update(version=3), r"model\.version: Input should be a valid str"),
        (lambda d: d["model"].update(version="v3"), r"model\.version: String should match"),
        (lambda d: d.update(default_precision="int4"), r"default_precision: Input should be"),
        (lambda d: d["models"].pop("fp32"), r"default_precision 'fp32' is not among models"),
        (lambda d: d["models"]["int8"].update(gate_passed="yes"), r"models\.int8\.gate_passed"),
        (lambda d: d["preprocess"].update(channels=2), r"preprocess: not a valid preprocessing"),
        (lambda d: d["preprocess"].update(gamma=2.2), r"preprocess: .*unexpected keyword"),
        (lambda d: d["decision"].pop("temperature"), r"decision: decision policy lacks"),
        (lambda d: d["input"].update(height=64), r"input 1x64x32 is not the preprocessing spec"),
        (lambda d: d["output"].update(classes=3), r"output\.classes 3 is not the 2 classes"),
        (
            lambda d: d["models"]["int8"]["decision"].update(ok_class="bad"),
            r"models\.int8\.decision is for classes",
        ),
        (lambda d: d["files"].update({"model.fp32.onnx": "0" * 63}), r"files\.model\.fp32"),
    ],
)
def test_a_signed_manifest_that_breaks_the_schema_is_refused_naming_the_field(
    bundle: Path, keys: tuple[Path, Path], edit: Any, named: str
) -> None:
    doc = _edited(bundle)
    edit(doc)
    sign_as_is(bundle, doc, keys[0])
    with pytest.raises(BundleError, match=named) as refused:
        load_bundle(bundle, keys[1])
    assert str(refused.value).startswith(f"{bundle / MANIFEST}: not a valid manifest: ")


def test_a_model_file_the_manifest_does_not_list_is_refused(
    bundle: Path, keys: tuple[Path, Path]
) -> None:
    doc = _edited(bundle)
    doc["models"]["int8"]["tensorrt_file"] = "model.int8.tensorrt.onnx"  # never shipped
    sign_as_is(bundle, doc, keys[0])
    with pytest.raises(BundleError, match=r"names file\(s\) it does not list.*tensorrt"):
        load_bundle(bundle, keys[1])


def test_seal_refuses_what_a_device_would_refuse(bundle: Path, keys: tuple[Path, Path]) -> None:
    """A writer cannot sign a manifest that breaks the schema, nor one holding NaN."""
    before = (bundle / MANIFEST).read_bytes()
    manifest = tiny_manifest()
    wrong = manifest.model_copy(update={"ok_class": "good"})  # model_copy does not validate
    with pytest.raises(BundleError, match="ok_class 'good' is not among classes"):
        seal(bundle, wrong, load_private_key(keys[0]))
    nan = manifest.model_copy(update={"latency_environment": {"cpu_ms": math.nan}})
    with pytest.raises(ValueError, match="not JSON compliant"):
        seal(bundle, nan, load_private_key(keys[0]))
    assert (bundle / MANIFEST).read_bytes() == before


def test_unknown_keys_of_a_newer_writer_are_ignored_and_kept_on_reseal(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """BUNDLE.md: keys a reader may ignore are added within version 1. A device ignores
    them; adding an engine re-signs the manifest with them intact."""
    doc = _edited(bundle)
    doc["provenance"] = {"signed_off_by": "qa"}
    doc["models"]["int8"]["sparsity"] = 0.5
    sign_as_is(bundle, doc, keys[0])
    loaded = load_bundle(bundle, keys[1])
    assert loaded.policy_for("int8") == loaded.manifest.models["int8"].decision

    engine = tmp_path / "built.engine"
    engine.write_bytes(b"an engine, as far as the manifest is concerned")
    record = EngineEntry(
        file="model.fp32.trt10.3.0.sm87.engine",
        precision="fp32",
        onnx="model.fp32.onnx",
        tensorrt_version="10.3.0",
        compute_capability="8.7",
        recipe=2,
    )
    add_engine(bundle, engine, record, load_private_key(keys[0]), load_public_key(keys[1]))
    resealed = _edited(bundle)
    assert resealed["provenance"] == {"signed_off_by": "qa"}
    assert resealed["models"]["int8"]["sparsity"] == 0.5
    again = load_bundle(bundle, keys[1])
    assert again.engine_for("fp32", "10.3.0", "8.7", 2) == bundle / record.file
    assert again.engine_for("int8", "10.3.0", "8.7", 2) is None  # never another precision


@pytest.mark.parametrize("gate_passed", [False, None])
def test_an_int8_model_without_a_passed_gate_is_refused_unless_allowed(
    tmp_path: Path, keys: tuple[Path, Path], gate_passed: bool | None
) -> None:
    root = tiny_bundle(tmp_path / "ungated", keys[0], tiny_manifest(gate_passed=gate_passed))
    loaded = load_bundle(root, keys[1])
    assert loaded.manifest.models["int8"].gate_passed is gate_passed
    with pytest.raises(BackendError, match=r"did not pass the accuracy gate.*gate was skipped"):
        open_backend(loaded, "onnxruntime", threads=1, precision="int8")
    backend = open_backend(loaded, "onnxruntime", 1, "int8", allow_failed_gate=True)
    backend.close()
    open_backend(loaded, "onnxruntime", threads=1, precision="fp32").close()  # the reference


def test_an_int8_model_whose_gate_passed_runs(bundle: Path, keys: tuple[Path, Path]) -> None:
    loaded = load_bundle(bundle, keys[1])
    assert loaded.gate_failure("int8") is None
    open_backend(loaded, "onnxruntime", threads=1, precision="int8").close()
