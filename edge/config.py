"""The device configuration: one YAML file per device, validated into typed settings.

Every key is checked (unknown keys are errors), files the device needs must exist (relative
paths are resolved against the config file's folder), and every error names its key path:
``mqtt.tls.ca_file: file not found (/etc/lineqc/ca.pem)``. The JSON Schema generated from
these models is committed as ``firmware_config/device.schema.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic import model_validator as _model_validator

from lineqc.errors import LineqcError

from .manifest import Precision
from .wire import ID_PATTERN

CONFIG_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "firmware_config" / "device.schema.json"
_ID = rf"^{ID_PATTERN}$"  # safe inside an MQTT topic level and a file name


class ConfigError(LineqcError):
    """A device config that cannot be used; the message lists every error with its key path."""

    def __init__(self, path: Path | str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{path}: {len(errors)} error(s)\n  " + "\n  ".join(errors))


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = Path(value).expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    value = _resolve(value, info)
    if (info.context or {}).get("check_files", True) and not value.is_file():
        raise ValueError(f"file not found ({value})")
    return value


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    value = _resolve(value, info)
    if (info.context or {}).get("check_files", True) and not value.exists():
        raise ValueError(f"file or folder not found ({value})")
    return value


def _writable_file(value: Path, info: ValidationInfo) -> Path:
    value = _resolve(value, info)
    if (info.context or {}).get("check_files", True):
        problem = unwritable(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def unwritable(path: Path) -> str | None:
    """Why a file (an SQLite database, with its journal files beside it) cannot be written
    or created at ``path``; None when it can."""
    if path.exists():
        if not path.is_file():
            return f"not a file ({path})"
        if not os.access(path, os.W_OK):
            return f"not writable ({path})"
    folder = next(p for p in path.parents if p.exists() or p.is_symlink())
    if not folder.is_dir():
        return f"cannot be created: {folder} is not a folder ({path})"
    if not os.access(folder, os.W_OK | os.X_OK):  # a read-only filesystem too, even for root
        return f"cannot be written: {folder} is not writable ({path})"
    return None


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
WritableFile = Annotated[Path, AfterValidator(_writable_file)]
ExistingPath = Annotated[Path, AfterValidator(_existing_path)]
LocalPath = Annotated[Path, AfterValidator(_resolve)]
Ident = Annotated[str, Field(pattern=_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceIds(_Strict):
    id: Ident = Field(description="device id, unique in the plant; part of every topic")
    site: Ident
    line: Ident


class GenICamConfig(_Strict):
    """A GigE Vision (or other GenICam) camera read through Aravis: ``gige://``, ``genicam://``."""

    pixel_format: str | None = Field(
        default=None,
        description="GenICam PixelFormat to set: Mono8, Mono10/12/14/16, RGB8, BGR8, BayerRG8 "
        "(GR, GB, BG), YUV422_8_UYVY (YUV422Packed), YUV422_8; default: as the camera is",
    )
    trigger_source: str | None = Field(
        default=None,
        description="unset: free-run (at fps when set); Line0, Line1, ...: hardware trigger, one "
        "frame per edge (a part in position); Software: one frame per TriggerSoftware command",
    )
    features: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="further GenICam features written at open, in order, after the above "
        "(e.g. TriggerActivation: FallingEdge, GevSCPSPacketSize: 1500)",
    )
    buffers: int = Field(default=8, ge=1, le=256, description="stream buffers queued")


class CameraConfig(_Strict):
    id: Ident = Field(default="cam0", description="camera id stamped on every frame")
    source: str = Field(
        description=(
            "csi://N (GStreamer nvarguscamerasrc), /dev/videoN or v4l2://N, rtsp://..., "
            "gige://SERIAL (or an IP address) or genicam://DEVICE-ID (Aravis), a video file, "
            "an image folder, a glob of images, or dataset://FOLDER?session=S&split=S"
        ),
        min_length=1,
    )
    width: int | None = Field(default=None, gt=0, description="requested capture width")
    height: int | None = Field(default=None, gt=0)
    fps: float = Field(
        default=0.0,
        ge=0,
        description="camera: requested rate; replay: pace (0 = as fast as inference takes them)",
    )
    gstreamer_pipeline: str | None = Field(
        default=None, description="a full GStreamer pipeline ending in appsink (overrides URI)"
    )
    exposure: float | None = Field(
        default=None, description="V4L2: exposure (camera units); GenICam: ExposureTime (µs)"
    )
    gain: float | None = Field(default=None, description="GenICam: Gain (dB on most cameras)")
    frame_timeout_s: float = Field(default=2.0, gt=0, description="no frame this long: reopen")
    stale_frames: int = Field(
        default=30, ge=0, description="identical consecutive frames before reopen (0 = off)"
    )
    reopen_min_s: float = Field(default=0.5, gt=0)
    reopen_max_s: float = Field(default=30.0, gt=0)
    loop: bool = Field(default=False, description="replay: start again at the end")
    preload: bool = Field(default=False, description="replay: decode every frame into memory")
    genicam: GenICamConfig = Field(default_factory=GenICamConfig)

    @field_validator("source")
    @classmethod
    def _local_source(cls, value: str, info: ValidationInfo) -> str:
        """A file, folder or glob source is resolved against the config's folder and checked."""
        if "://" in value and not value.startswith(("file://", "dataset://")):
            return value  # a camera or stream: opened (and retried) at run time
        if value.startswith("/dev/"):
            return value
        scheme = "dataset://" if value.startswith("dataset://") else ""
        rest = value.removeprefix("dataset://").removeprefix("file://")
        folder, sep, query = rest.partition("?") if scheme else (rest, "", "")
        path = _resolve(Path(folder), info)
        check = (info.context or {}).get("check_files", True)
        if check and not any(c in folder for c in "*?[") and not path.exists():
            raise ValueError(f"file or folder not found ({path})")
        if check and scheme and not (path / "manifest.json").is_file():
            raise ValueError(f"no dataset manifest at {path / 'manifest.json'}")
        return f"{scheme}{path}{sep}{query}"


class ModelConfig(_Strict):
    bundle: ExistingPath = Field(description="signed model bundle: folder or .tar")
    public_key: ExistingFile = Field(description="trusted Ed25519 public key (PREFIX.pub)")
    precision: Precision | None = Field(
        default=None, description="model precision (default: the bundle's default)"
    )
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    allow_failed_gate: bool = Field(
        default=False,
        description="run an INT8 model whose accuracy gate failed or was skipped at export "
        "(to diagnose it; never on a line)",
    )
    threads: int = Field(default=2, ge=1, le=64, description="ONNX Runtime intra-op threads")
    engine_cache: LocalPath | None = Field(
        default=None, description="TensorRT: folder for engines built on this device"
    )


class DecisionOverrides(_Strict):
    prob_floor: float | None = Field(default=None, ge=0, le=1)
    margin: float | None = Field(default=None, ge=0, le=1)
    thresholds: dict[str, float | None] = Field(
        default_factory=dict, description="class -> minimum probability (null: always review)"
    )
    reject_uncertain: bool = Field(
        default=False, description="also send uncertain frames to the actuator"
    )


class ModbusActuatorConfig(_Strict):
    """Modbus TCP: per decision a coil (1 = reject) then the decision's number in two holding
    registers (see edge/PLC.md)."""

    host: str = Field(min_length=1, description="the PLC's address")
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255, description="Modbus unit (device) id")
    reject_coil: int = Field(ge=0, le=65535, description="coil address: 1 reject, 0 pass")
    id_register: int = Field(
        ge=0,
        le=65534,
        description="first of two holding registers: the decision number (frame seq + 1, "
        "unsigned 32-bit, high word first), written after the coil",
    )


class OpcUaActuatorConfig(_Strict):
    """OPC UA: per decision one Write of the verdict node and the id node (see edge/PLC.md)."""

    url: str = Field(pattern=r"^opc\.tcp://\S+$", description="opc.tcp://HOST:PORT[/PATH]")
    verdict_node: str = Field(
        min_length=1,
        description="node id of the verdict (Boolean: true = reject; an integer: 1/0; "
        "String: 'reject'/'pass'), e.g. 'ns=3;s=\"QC\".\"Reject\"'",
    )
    id_node: str = Field(
        min_length=1,
        description="node id of the part id (String: the frame id; an integer: the decision "
        "number, frame seq + 1)",
    )
    username: str | None = None
    password_file: ExistingFile | None = Field(default=None, description="file with the password")


class ActuatorConfig(_Strict):
    kind: Literal["log", "none", "hook", "modbus", "opcua"] = "log"
    hook: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="kind=hook: 'package.module:factory' returning an actuator (GPIO, PLC)",
    )
    modbus: ModbusActuatorConfig | None = Field(default=None, description="kind=modbus")
    opcua: OpcUaActuatorConfig | None = Field(default=None, description="kind=opcua")
    deadline_ms: float = Field(
        default=50.0,
        gt=0,
        description="modbus/opcua: from the decision to the PLC confirming the write; a "
        "decision not confirmed by then gets fail_safe",
    )
    fail_safe: Literal["reject", "pass"] = Field(
        default="reject", description="modbus/opcua: what a decision that missed its deadline gets"
    )
    timeout_s: float = Field(default=1.0, gt=0, description="modbus/opcua: connect and request")
    reconnect_min_s: float = Field(default=0.2, gt=0, description="first retry; doubles each")
    reconnect_max_s: float = Field(default=5.0, gt=0)
    queue_size: int = Field(
        default=64, ge=1, description="decisions waiting for the PLC; the oldest beyond it miss"
    )

    @_model_validator(mode="after")
    def _kind_needs(self) -> ActuatorConfig:
        if self.kind == "hook" and not self.hook:
            raise ValueError("kind 'hook' needs hook: 'package.module:factory'")
        for kind in ("modbus", "opcua"):
            if self.kind == kind and getattr(self, kind) is None:
                raise ValueError(f"kind '{kind}' needs its section {kind}:")
            if self.kind != kind and getattr(self, kind) is not None:
                raise ValueError(f"section {kind}: given, but kind is '{self.kind}'")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s is above reconnect_max_s")
        return self


class TLSConfig(_Strict):
    ca_file: ExistingFile | None = None
    cert_file: ExistingFile | None = Field(default=None, description="client certificate")
    key_file: ExistingFile | None = None
    insecure: bool = Field(default=False, description="skip host name check (testing only)")

    @_model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MQTTConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, description="default: lineqc-<device id>")
    keepalive_s: int = Field(default=30, ge=5)
    username: str | None = None
    password: str | None = None
    password_file: ExistingFile | None = Field(default=None, description="file with the password")
    tls: TLSConfig | None = None
    topic_prefix: str = Field(default="lineqc/v1", pattern=r"^[^#+\s]+[^/#+\s]$")
    protocol: Literal[5, "3.1.1"] = Field(
        default=5,
        description="MQTT version: 5 (the broker's Maximum Packet Size lowers max_payload_bytes) "
        "or 3.1.1 (older brokers; max_payload_bytes alone bounds a message)",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        description="largest message sent (the broker's limit may lower it); bigger frames are "
        "re-encoded smaller, or refused and reported",
    )
    publish_results: bool = Field(default=True, description="a small JSON per frame (QoS 1)")
    max_inflight: int = Field(default=64, ge=1, le=1000)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_spelling(cls, value: Any) -> Any:
        """``5``, ``"5"`` and ``5.0`` are MQTT 5; ``"3.1.1"`` (a YAML string) is 3.1.1."""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value).strip().lower().removeprefix("mqtt").removeprefix("v")
            if text in ("5", "5.0"):
                return 5
            if text in ("3.1.1", "311"):
                return "3.1.1"
        return value

    @_model_validator(mode="after")
    def _one_password(self) -> MQTTConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class OutboxConfig(_Strict):
    path: WritableFile = Field(description="SQLite file of the durable outbox")
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024, description="disk bound")


class SamplingConfig(_Strict):
    uncertain: bool = Field(default=True, description="send every uncertain frame for review")
    audit_share: float = Field(
        default=0.01, ge=0, le=1, description="share of confident frames sent as an audit"
    )
    audit_cap_per_hour: dict[str, int] = Field(
        default_factory=dict, description="class -> most audit frames per hour (default below)"
    )
    default_audit_cap_per_hour: int = Field(default=60, ge=0)
    max_per_minute: int = Field(
        default=0, ge=0, description="rate limit on all samples (0 = none); refusals are counted"
    )
    jpeg_quality: int = Field(default=90, ge=10, le=100)
    seed: int | None = None


class TelemetryConfig(_Strict):
    interval_s: float = Field(default=10.0, gt=0)
    window: int = Field(default=2048, ge=16, description="latency samples kept per stage")


class CommandsConfig(_Strict):
    """Who may command the device and what a command may do (see edge/WIRE.md, Commands)."""

    public_key: ExistingFile | None = Field(
        default=None,
        description="Ed25519 public key that signs commands (default: model.public_key)",
    )
    max_age_s: float = Field(
        default=300.0,
        ge=0,
        description="refuse a command issued further than this from the device clock "
        "(0: no window; the counter still refuses replays)",
    )
    state_file: WritableFile | None = Field(
        default=None,
        description="the last applied command counter, kept across restarts "
        "(default: commands.state.json beside the outbox)",
    )
    bundle_dir: LocalPath | None = Field(
        default=None,
        description="reload_bundle may name only bundles inside this folder "
        "(default: the folder holding model.bundle)",
    )
    allow_downgrade: bool = Field(
        default=False,
        description="let a signed reload_bundle install an older bundle version, which it "
        "must name exactly (downgrade_to)",
    )


class RolloutConfig(_Strict):
    """Fleet deploys (edge/WIRE.md, deploy): where the A/B slots live and how a download and
    a switch are bounded."""

    dir: LocalPath | None = Field(
        default=None,
        description="folder of the A/B bundle slots, the download and rollout.json "
        "(default: bundles/ beside the outbox)",
    )
    max_bundle_bytes: int = Field(
        default=1 << 30, ge=1024, description="a deploy naming a larger bundle tar is refused"
    )
    crash_restarts: int = Field(
        default=3,
        ge=1,
        description="starts during a switch's probation that did not end cleanly before the "
        "device rolls back to the previous slot (a crash loop)",
    )
    retry_s: float = Field(default=2.0, gt=0, description="a failed download tries again after")


class DeviceConfig(_Strict):
    version: Literal[1] = Field(default=1, description="config format version")
    device: DeviceIds
    camera: CameraConfig
    model: ModelConfig
    decision: DecisionOverrides = DecisionOverrides()
    actuator: ActuatorConfig = ActuatorConfig()
    mqtt: MQTTConfig = MQTTConfig()
    outbox: OutboxConfig
    sampling: SamplingConfig = SamplingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    commands: CommandsConfig = CommandsConfig()
    rollout: RolloutConfig = RolloutConfig()
    latency_budget_ms: float = Field(default=30.0, gt=0, description="capture to decision")
    shutdown_flush_s: float = Field(
        default=3.0, ge=0, description="on SIGTERM or end of replay: time to flush the outbox"
    )

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"lineqc-{self.device.id}"

    @property
    def topic_root(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.target}"

    @property
    def target(self) -> str:
        """``<site>/<line>/<device>``: what a signed command names to reach this device."""
        d = self.device
        return f"{d.site}/{d.line}/{d.id}"

    @property
    def command_key(self) -> Path:
        return self.commands.public_key or self.model.public_key

    @property
    def command_state(self) -> Path:
        return self.commands.state_file or self.outbox.path.with_name("commands.state.json")

    @property
    def rollout_dir(self) -> Path:
        return self.rollout.dir or self.outbox.path.with_name("bundles")

    @property
    def bundle_dir(self) -> Path:
        return self.commands.bundle_dir or self.model.bundle.parent


def _key_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    return ".".join(parts) or "(top level)"


def format_errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        msg = re.sub(r"^(Value error|Assertion failed), ", "", err["msg"])
        out.append(f"{_key_path(tuple(err['loc']))}: {msg}")
    return out


def parse_config(doc: Any, base: Path | None = None, check_files: bool = True) -> DeviceConfig:
    """Validate a loaded YAML document; raises ConfigError listing every error."""
    try:
        return DeviceConfig.model_validate(doc, context={"base": base, "check_files": check_files})
    except ValidationError as exc:
        raise ConfigError(base or "config", format_errors(exc)) from None


def load_config(path: Path | str, check_files: bool = True) -> DeviceConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, [f"(file): cannot read ({exc.strerror})"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"(file): not valid YAML ({exc})"]) from None
    if not isinstance(doc, dict):
        raise ConfigError(path, ["(top level): expected a mapping of keys"])
    try:
        return DeviceConfig.model_validate(
            doc, context={"base": path.resolve().parent, "check_files": check_files}
        )
    except ValidationError as exc:
        raise ConfigError(path, format_errors(exc)) from None


def json_schema() -> dict[str, Any]:
    schema = DeviceConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lineqc.example/firmware_config/device.schema.json"
    schema["title"] = "lineqc device config"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
