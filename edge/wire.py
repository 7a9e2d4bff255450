"""The MQTT wire format, version 1: topics, message builders and parsers (see WIRE.md).

One definition for both sides: the device builds its messages with the ``*_message``
functions (plain dicts, cheap on the hot path) and every reader (the review collector,
tests, tools) parses them with ``parse_message``, which validates against the pydantic
models below. Every message is one UTF-8 JSON object carrying ``"v": 1`` and ``"type"``.
Commands to the device are version 2: a signed envelope (``parse_signed_command``), whose
signature, target and counter ``lineqc.edge.commands`` checks before ``parse_command``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lineqc.errors import LineqcError
from lineqc.versioned import parse_versioned

WIRE_VERSION = 1
KINDS = ("result", "sample", "status", "telemetry", "cmd", "cmd/reply", "alert")
# Site, line, device and camera ids (the device config's): one MQTT topic level each, safe in
# a file name. A frame id is "<device>-<camera>-<run: hex>-<seq: digits>".
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ID_RE = re.compile(ID_PATTERN)
_FRAME_TAIL_RE = re.compile(r"[0-9a-f]{1,16}-[0-9]{1,20}")


class WireError(LineqcError):
    """A message that is not valid wire format v1; the message says what is wrong."""


def topic(root: str, kind: str) -> str:
    """``<prefix>/<site>/<line>/<device>/<kind>``; root is DeviceConfig.topic_root."""
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{root}/{kind}"


def is_id(value: str) -> bool:
    """Whether ``value`` is a valid site, line, device or camera id."""
    return _ID_RE.fullmatch(value) is not None


def is_frame_id(frame_id: str, device: str, camera: str) -> bool:
    """Whether ``frame_id`` is the frame id the device ``device`` makes for ``camera``."""
    prefix = f"{device}-{camera}-"
    tail = frame_id[len(prefix) :]
    return frame_id.startswith(prefix) and _FRAME_TAIL_RE.fullmatch(tail) is not None


def topic_ids(name: str, kind: str) -> tuple[str, str, str] | None:
    """(site, line, device) of a topic ``<prefix>/<site>/<line>/<device>/<kind>``; None
    when ``name`` is not such a topic."""
    suffix = f"/{kind}"
    levels = name.removesuffix(suffix).split("/")
    if not name.endswith(suffix) or len(levels) < 4:  # a prefix, then the three ids
        return None
    site, line, device = levels[-3:]
    return (site, line, device) if all(map(is_id, (site, line, device))) else None


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


# ---- models (the definition readers validate against) -------------------------------------


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # newer minor fields are ignored
    v: Literal[1]


class Result(_Msg):
    type: Literal["result"]
    frame_id: str
    device: str
    camera: str
    seq: int
    ts: float = Field(description="capture time, Unix seconds")
    model_version: str
    verdict: Literal["ok", "defect", "uncertain"]
    label: str
    confidence: float
    reason: str | None = None
    latency_ms: float
    sampled: Literal["uncertain", "audit"] | None = None
    anomaly: float | None = None  # a model with an anomaly score only
    # the frame's mean intensity (lineqc.edge.drift.frame_brightness): input drift
    brightness: float | None = None


class SampleImage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    format: Literal["jpeg"]
    encoding: Literal["base64"]
    width: int
    height: int
    quality: int
    scale: float = Field(description="1.0, or the factor the frame was shrunk by to fit")
    data: str

    def jpeg_bytes(self) -> bytes:
        return base64.b64decode(self.data)


class DefectMapImage(BaseModel):
    """Where the model saw defects: an 8-bit grey PNG over the frame (value / 255 = defect
    probability of that cell), to be drawn stretched over the image."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    format: Literal["png"]
    encoding: Literal["base64"]
    width: int = Field(ge=1, le=1024)
    height: int = Field(ge=1, le=1024)
    data: str

    def png_bytes(self) -> bytes:
        return base64.b64decode(self.data)


class Sample(_Msg):
    type: Literal["sample"]
    why: Literal["uncertain", "audit"]
    frame_id: str
    device: str
    site: str
    line: str
    camera: str
    seq: int
    ts: float
    model_version: str
    classes: list[str]
    probabilities: list[float]
    verdict: Literal["ok", "defect", "uncertain"]
    label: str
    confidence: float
    reason: str | None = None
    image: SampleImage | None = None
    image_error: str | None = Field(
        default=None, description="why the image is missing (e.g. too large even re-encoded)"
    )
    defect_map: DefectMapImage | None = None  # a model with a defect-map output only
    anomaly: float | None = None  # a model with an anomaly score only


class Status(_Msg):
    type: Literal["status"]
    device: str
    ts: float
    state: Literal["starting", "online", "degraded", "offline", "stopped"]
    model_version: str | None = None
    camera: dict[str, Any] = Field(default_factory=dict)
    outbox: dict[str, Any] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    last_command: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None  # the policy in force (commands may change it)
    rollout: dict[str, Any] | None = None  # the A/B slots and the deploy in progress (fleet)


class TelemetryMessage(_Msg):
    type: Literal["telemetry"]
    device: str
    ts: float
    interval_s: float
    frames: int
    fps: float
    drops: dict[str, int]
    verdicts: dict[str, int]
    latency_ms: dict[str, dict[str, float]]
    outbox: dict[str, Any]
    input: dict[str, dict[str, float]]
    counters: dict[str, int] = Field(default_factory=dict)


# ---- commands (to the device): signed, version 2 ------------------------------------------
# Commands changed incompatibly from v1 (unsigned JSON) to v2 (a signed envelope), so their
# version moved while the device's own messages stay v1: a reader refuses another version.
COMMAND_VERSION = 2


class SignedCommand(BaseModel):
    """The envelope on ``<root>/cmd``: a command's exact JSON bytes and their signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[2]
    command: str = Field(description="base64 of the command's UTF-8 JSON, the signed bytes")
    sig: str = Field(description="base64 Ed25519 signature of those bytes (the fleet's key)")


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str | None = Field(default=None, max_length=64)
    target: str = Field(description="<site>/<line>/<device> the command is for, and only it")
    seq: int = Field(ge=1, description="the sender's counter; the device applies increasing seq")
    ts: float = Field(description="issue time, Unix seconds; stale commands are refused")


class ReloadBundle(_Command):
    cmd: Literal["reload_bundle"]
    bundle: str | None = Field(
        default=None,
        max_length=255,
        description="a bundle in the device's bundle folder (default: the configured bundle)",
    )
    downgrade_to: str | None = Field(
        default=None,
        max_length=64,
        description="the exact older version this reload may install (a downgrade needs it "
        "and commands.allow_downgrade on the device)",
    )


class SetThresholds(_Command):
    cmd: Literal["set_thresholds"]
    prob_floor: float | None = Field(default=None, ge=0, le=1)
    margin: float | None = Field(default=None, ge=0, le=1)
    thresholds: dict[str, float | None] | None = None


class StatusRequest(_Command):
    cmd: Literal["status"]


class ReloadConfig(_Command):
    """Read the device's config file again and apply its hot-reloadable keys (as SIGHUP)."""

    cmd: Literal["reload_config"]


class Deploy(_Command):
    """The fleet's desired bundle for this device, published retained on its ``cmd`` topic:
    an offline device gets it when it comes back (so no ``max_age_s`` window; ``seq`` alone
    refuses replays). The device downloads, verifies and stages it in an A/B slot, then
    shadows it (stage ``shadow``) or switches to it (``canary``, ``all``)."""

    cmd: Literal["deploy"]
    version: str = Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the bundle tar")
    size: int = Field(gt=0, description="bytes of the bundle tar: the download's bound")
    urls: list[str] = Field(min_length=1, max_length=8, description="http(s):// or file://")
    stage: Literal["shadow", "canary", "all"]
    downgrade_to: str | None = Field(
        default=None, max_length=64, description="as reload_bundle: the older version allowed"
    )
    # shadow: the candidate beside the active model on a sample of frames, then promotion
    shadow_share: float = Field(default=0.5, gt=0, le=1, description="frames shadowed")
    shadow_frames: int = Field(default=50, ge=1, description="shadowed frames before judging")
    min_agreement: float = Field(default=0.9, ge=0, le=1, description="same verdict share")
    max_uncertain_delta: float = Field(
        default=0.2, ge=0, le=1, description="candidate's uncertain share minus the active's"
    )
    # after a switch: the probation window and the bounds that roll it back
    probation_frames: int = Field(default=100, ge=1)
    max_over_budget_share: float = Field(default=0.2, ge=0, le=1)
    max_uncertain_share: float = Field(default=0.5, ge=0, le=1)


AnyCommand = ReloadBundle | SetThresholds | StatusRequest | ReloadConfig | Deploy
Command = Annotated[AnyCommand, Field(discriminator="cmd")]
_COMMAND = TypeAdapter(Command)
_ENVELOPE = TypeAdapter(SignedCommand)


class Alert(_Msg):
    """An alarm of the review collector's fleet monitoring changing state (firing or
    resolved), on ``<prefix>/<site>/<line>/<device>/alert``."""

    type: Literal["alert"]
    site: str
    line: str
    device: str
    camera: str | None = None  # None: the device's alarm, not one camera's
    alarm: str = Field(description="drift, uncertain_share, latency_p99, false_reject, escape")
    state: Literal["firing", "resolved"]
    value: float | None = None
    threshold: float | None = None
    ts: float
    detail: str = ""


class CommandReply(_Msg):
    type: Literal["command_reply"]
    device: str
    ts: float
    id: str | None
    cmd: str | None
    ok: bool
    error: str | None = None


Message = Annotated[
    Result | Sample | Status | TelemetryMessage | CommandReply | Alert, Field(discriminator="type")
]
_MESSAGE = TypeAdapter(Message)


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def parse_message(
    payload: bytes | str,
) -> Result | Sample | Status | TelemetryMessage | CommandReply | Alert:
    """Any device message, validated; raises WireError naming what is wrong."""
    doc = parse_versioned(payload, "message", "v", WIRE_VERSION, WireError, "wire version")
    try:
        return _MESSAGE.validate_python(doc)
    except ValidationError as exc:
        raise WireError(f"message: {_explain(exc)}") from None


def parse_signed_command(payload: bytes | str) -> tuple[bytes, bytes]:
    """(command bytes, signature) of a command envelope; WireError if it is not one (an
    unsigned v1 command included). Nothing in it is trusted before the signature is checked."""
    doc = parse_versioned(
        payload, "command", "v", COMMAND_VERSION, WireError, "command version (signed)"
    )
    try:
        env = _ENVELOPE.validate_python(doc)
        return (
            base64.b64decode(env.command, validate=True),
            base64.b64decode(env.sig, validate=True),
        )
    except ValidationError as exc:
        raise WireError(f"command: {_explain(exc)}") from None
    except ValueError:  # binascii.Error
        raise WireError("command: command or sig is not base64") from None


def parse_command(data: bytes) -> AnyCommand:
    """A command's (verified) JSON bytes, validated; WireError naming what is wrong."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(f"command: not JSON ({exc})") from None
    except RecursionError:
        raise WireError("command: JSON nested too deeply") from None
    try:
        return _COMMAND.validate_python(doc)
    except ValidationError as exc:
        raise WireError(f"command: {_explain(exc)}") from None


def signed_command(data: bytes, signature: bytes) -> dict[str, Any]:
    """The envelope of a command's JSON bytes and their signature."""
    return {
        "v": COMMAND_VERSION,
        "command": base64.b64encode(data).decode("ascii"),
        "sig": base64.b64encode(signature).decode("ascii"),
    }


# ---- builders (the device side) -----------------------------------------------------------


def status_message(*, device: str, state: str, ts: float, **fields: Any) -> dict[str, Any]:
    """A status message (published retained); ``fields`` are Status's optional ones. The
    Last Will is ``status_message(device=..., state="offline", ts=0.0)``."""
    unknown = sorted(set(fields) - set(Status.model_fields))
    if unknown:
        raise ValueError(f"status message: unknown field(s) {unknown}")
    return {
        "v": WIRE_VERSION,
        "type": "status",
        "device": device,
        "ts": round(ts, 3),
        "state": state,
        **fields,
    }


def result_message(
    *,
    frame_id: str,
    device: str,
    camera: str,
    seq: int,
    ts: float,
    model_version: str,
    verdict: str,
    label: str,
    confidence: float,
    reason: str | None,
    latency_ms: float,
    sampled: str | None,
    anomaly: float | None = None,
    brightness: float | None = None,
) -> dict[str, Any]:
    doc = {
        "v": WIRE_VERSION,
        "type": "result",
        "frame_id": frame_id,
        "device": device,
        "camera": camera,
        "seq": seq,
        "ts": round(ts, 6),
        "model_version": model_version,
        "verdict": verdict,
        "label": label,
        "confidence": round(confidence, 6),
        "reason": reason,
        "latency_ms": round(latency_ms, 3),
        "sampled": sampled,
    }
    if anomaly is not None:  # a minor addition: only where the model has the score
        doc["anomaly"] = round(anomaly, 6)
    if brightness is not None:  # a minor addition: input drift (lineqc.edge.drift)
        doc["brightness"] = round(brightness, 2)
    return doc


def sample_message(
    *,
    why: str,
    frame_id: str,
    device: str,
    site: str,
    line: str,
    camera: str,
    seq: int,
    ts: float,
    model_version: str,
    classes: list[str],
    probabilities: list[float],
    verdict: str,
    label: str,
    confidence: float,
    reason: str | None,
    defect_map: dict[str, Any] | None = None,
    anomaly: float | None = None,
) -> dict[str, Any]:
    """The sample's metadata; ``attach_image`` adds the JPEG (or the reason it is missing).
    ``defect_map``: a ``defect_map_part``, when the model has a defect-map output;
    ``anomaly``: the frame's anomaly score, when the model has one."""
    doc = {
        "v": WIRE_VERSION,
        "type": "sample",
        "why": why,
        "frame_id": frame_id,
        "device": device,
        "site": site,
        "line": line,
        "camera": camera,
        "seq": seq,
        "ts": round(ts, 6),
        "model_version": model_version,
        "classes": list(classes),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "verdict": verdict,
        "label": label,
        "confidence": round(float(confidence), 6),
        "reason": reason,
        "image": None,
        "image_error": None,
        "defect_map": defect_map,
    }
    if anomaly is not None:
        doc["anomaly"] = round(anomaly, 6)
    return doc


def image_part(jpeg: bytes, width: int, height: int, quality: int, scale: float) -> dict[str, Any]:
    return {
        "format": "jpeg",
        "encoding": "base64",
        "width": width,
        "height": height,
        "quality": quality,
        "scale": round(scale, 4),
        "data": base64.b64encode(jpeg).decode("ascii"),
    }


def defect_map_part(png: bytes, width: int, height: int) -> dict[str, Any]:
    return {
        "format": "png",
        "encoding": "base64",
        "width": width,
        "height": height,
        "data": base64.b64encode(png).decode("ascii"),
    }


def command_reply(
    device: str, ts: float, cmd_id: str | None, cmd: str | None, ok: bool, error: str | None
) -> dict[str, Any]:
    return {
        "v": WIRE_VERSION,
        "type": "command_reply",
        "device": device,
        "ts": round(ts, 3),
        "id": cmd_id,
        "cmd": cmd,
        "ok": ok,
        "error": error,
    }
