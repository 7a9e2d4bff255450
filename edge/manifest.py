"""The bundle manifest, schema version 1: its one typed definition (described in BUNDLE.md).

``lineqc export`` builds a ``Manifest``, ``lineqc.edge.bundle.seal`` validates it again, hashes
the files into it and signs its bytes, and a device validates ``manifest.json`` into it
before it loads anything. Its JSON Schema is committed as ``edge/bundle.schema.json``,
generated from this module (``lineqc bundle schema --write``, or
``python -m lineqc.edge.manifest > edge/bundle.schema.json``); a test keeps it current.

Unknown keys: BUNDLE.md lets a writer add keys that a reader may ignore within version 1, so
every object here accepts keys it does not know. A reader ignores them; a re-seal
(``lineqc export build-engine``) keeps them, as the writer signed them. The keys this
version reads are typed, and what a device relies on is checked across fields (``ok_class``
among ``classes``, ``default_precision`` among ``models``, the policies and the input size
agreeing with the classes and the preprocessing). A change a reader must not ignore is a new
schema version. The preprocessing spec and the decision policies are validated by their own
definitions (``PreprocessSpec.from_json``, ``DecisionPolicy.from_json``), not copied here.
No torch or onnx: this module runs on the device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from .decision import DecisionPolicy
from .preprocess import PreprocessSpec

SCHEMA_VERSION: Literal[1] = 1
SCHEMA_FILE = Path(__file__).resolve().parent / "bundle.schema.json"
# A precision a device can run. A new one is a new schema version: it could be the default.
Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Version = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$")]  # compared numerically


def _from_json(cls: Any, what: str) -> Any:
    """A pydantic validator that builds ``cls`` with its own ``from_json`` (one definition)."""

    def validate(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
        try:
            return cls.from_json(value)
        except KeyError as exc:
            raise ValueError(f"{what} lacks {exc}") from None
        except (TypeError, ValueError) as exc:  # TypeError: an unknown or mistyped key
            raise ValueError(f"not a valid {what} ({exc})") from None

    return validate


# The two contracts with their own definition: stored as their objects, written by to_json.
Spec = Annotated[
    PreprocessSpec,
    PlainValidator(_from_json(PreprocessSpec, "preprocessing spec")),
    PlainSerializer(lambda spec: spec.to_json()),
    WithJsonSchema(TypeAdapter(PreprocessSpec).json_schema()),
]
Policy = Annotated[
    DecisionPolicy,
    PlainValidator(_from_json(DecisionPolicy, "decision policy")),
    PlainSerializer(lambda policy: policy.to_json()),
    WithJsonSchema(TypeAdapter(DecisionPolicy).json_schema()),
]


class _Part(BaseModel):
    # extra="allow": a newer writer's keys are ignored on reading and kept on re-sealing
    # strict: a JSON "yes" or "3" is no bool or int (gate_passed "false" would be truthy).
    # NaN stays NaN when dumped, for manifest_bytes to refuse, not a silent null.
    model_config = ConfigDict(
        extra="allow", frozen=True, strict=True, allow_inf_nan=False, ser_json_inf_nan="constants"
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the keys that were given (read, or set by the writer), so a
        manifest written and read back is the same document."""
        return self.model_dump(mode="json", exclude_unset=True)


class ModelInfo(_Part):
    name: str
    version: Version = Field(description="dotted integers, compared numerically")
    run_id: str | None = None
    epoch: int | None = None


class InputSpec(_Part):
    name: str
    layout: Literal["NCHW"]
    dtype: Literal["float32"]
    channels: int
    height: int
    width: int


class OutputSpec(_Part):
    name: str
    kind: Literal["logits"]
    classes: int


class DefectMapSpec(_Part):
    output: str
    kind: Literal["probability"]
    layout: Literal["N1HW"]
    stride: int = Field(ge=1)
    covers: str | None = None


class ModelEntry(_Part):
    """One precision's model. ``calibration`` and ``quantization`` describe how it was made,
    for people."""

    file: str = Field(description="the ONNX that ONNX Runtime runs")
    tensorrt_file: str | None = Field(
        default=None, description="the ONNX that TensorRT compiles, where it differs (INT8)"
    )
    opset: int | None = None
    decision: Policy | None = Field(
        default=None, description="the policy chosen on this model's outputs"
    )
    quantization: str | None = None
    calibration: dict[str, Any] | None = None
    kept_fp32: list[str] = Field(default_factory=list)
    qdq_nodes: dict[str, int] | None = None
    gate_passed: bool | None = Field(
        default=None,
        description="INT8: true when it passed the accuracy gate; a device runs no INT8 "
        "model without it (unless model.allow_failed_gate)",
    )


class EngineEntry(_Part):
    """A TensorRT engine in the bundle (``lineqc.edge.tensorrt_engine.engine_record``)."""

    file: str
    precision: Precision | None = None  # absent in the earliest bundles: then never used
    onnx: str | None = None
    tensorrt_version: str
    compute_capability: str
    builder_flags: list[str] = Field(default_factory=list)
    recipe: int | None = None
    max_batch: int | None = None
    built_at: str | None = None


class Latency(_Part):
    p50: float
    p99: float


class GateSummary(_Part):
    """The accuracy gate's verdict; its figures (agreement, per class, intervals) are extra
    keys, for people (``lineqc.export.gate.GateResult.to_json``)."""

    passed: bool
    failures: list[str] = Field(default_factory=list)


class Evaluation(_Part):
    """How the export judged the models: reports for people. A device reads only the gate's
    failures, to say why it refuses an INT8 model."""

    parity: dict[str, Any] | None = None
    int8_tensorrt_vs_onnxruntime: dict[str, Any] | None = None
    gate: GateSummary | None = None
    decision_on_val: dict[str, Any] | None = None
    decision_on_val_by_precision: dict[str, Any] | None = None
    training_test_metrics: dict[str, Any] | None = None


class DatasetInfo(_Part):
    manifest_hash: str | None = None
    training_manifest_hash: str | None = None


class DriftReference(_Part):
    """The training split's distribution of the drift statistic (``lineqc.edge.drift``):
    what the review collector scores each camera's recent frames against."""

    statistic: Literal["brightness"] = "brightness"
    bin_width: float = Field(description="levels per bin; bins start at 0")
    counts: list[int] = Field(min_length=1, description="frames per bin")
    frames: int = Field(ge=1)
    split: str = Field(description="the dataset split it was computed on")

    @model_validator(mode="after")
    def _consistent(self) -> DriftReference:
        if sum(self.counts) != self.frames or min(self.counts) < 0:
            raise ValueError(f"counts add up to {sum(self.counts)}, not frames {self.frames}")
        return self


class Manifest(_Part):
    """``manifest.json``. ``files`` is filled in by ``seal`` (pass ``{}`` before sealing)."""

    model_config = ConfigDict(title="lineqc model bundle manifest")

    schema_version: Literal[1]
    model: ModelInfo
    created_at: str | None = None
    created_by: str | None = None
    classes: list[str] = Field(min_length=2, description="class names in logit order")
    ok_class: str
    input: InputSpec
    output: OutputSpec | None = None
    defect_map: DefectMapSpec | None = None
    preprocess: Spec
    decision: Policy = Field(description="the default precision's policy, for older devices")
    dataset: DatasetInfo | None = None
    models: dict[Precision, ModelEntry] = Field(min_length=1)
    default_precision: Precision
    engines: list[EngineEntry] = Field(default_factory=list)
    evaluation: Evaluation | None = None
    latency_ms: dict[Precision, Latency] = Field(default_factory=dict)
    latency_environment: dict[str, Any] | None = Field(
        default=None, description="where latency_ms was measured (for people)"
    )
    files: dict[str, Sha256] = Field(
        description="relative path -> sha256 of every file but the manifest and its signature"
    )
    drift_reference: DriftReference | None = Field(
        default=None, description="the input statistic on the training split (monitoring)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        """What a device relies on, across fields; each message names the fields."""
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeat a name: {self.classes}")
        if self.ok_class not in self.classes:
            raise ValueError(f"ok_class {self.ok_class!r} is not among classes {self.classes}")
        if self.default_precision not in self.models:
            raise ValueError(
                f"default_precision {self.default_precision!r} is not among models "
                f"{sorted(self.models)}"
            )
        if self.output is not None and self.output.classes != len(self.classes):
            raise ValueError(
                f"output.classes {self.output.classes} is not the {len(self.classes)} classes"
            )
        spec, given = self.preprocess, self.input
        if (given.channels, given.height, given.width) != (spec.channels, spec.height, spec.width):
            raise ValueError(
                f"input {given.channels}x{given.height}x{given.width} is not the preprocessing "
                f"spec's {spec.channels}x{spec.height}x{spec.width}"
            )
        policies = {"decision": self.decision} | {
            f"models.{p}.decision": e.decision for p, e in self.models.items() if e.decision
        }
        for where, policy in policies.items():
            if list(policy.classes) != self.classes or policy.ok_class != self.ok_class:
                raise ValueError(
                    f"{where} is for classes {list(policy.classes)} (OK {policy.ok_class!r}), "
                    f"not the bundle's {self.classes} (OK {self.ok_class!r})"
                )
        for i, engine in enumerate(self.engines):
            if engine.precision is not None and engine.precision not in self.models:
                raise ValueError(f"engines.{i}.precision {engine.precision!r} has no model")
        return self

    def referenced_files(self) -> list[str]:
        """Every bundle file the manifest points at (models, TensorRT sources, engines)."""
        names = [e.file for e in self.models.values()]
        names += [e.tensorrt_file for e in self.models.values() if e.tensorrt_file]
        return names + [e.file for e in self.engines]

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        """Validate a loaded ``manifest.json``; raises pydantic's ValidationError."""
        return cls.model_validate(doc)


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lineqc.example/edge/bundle.schema.json"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
