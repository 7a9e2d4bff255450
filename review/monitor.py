"""Fleet monitoring: the collector's rollups, drift scores, audit estimates and alarms.

The collector feeds every ``result``, ``telemetry`` and ``status`` message into ``Rollups``
(in memory) and commits them in one transaction per batch (``Rollups.flush``): per camera,
model version and time bucket the frame count, the decision mix, how many frames were
audited, a latency histogram (log bins) and the drift statistic's histogram (the grid of
``lineqc.edge.drift``); per device and bucket the telemetry reports; per device its latest
status. Rows are not kept per message.

``Monitor.evaluate`` then scores each recently active camera over its last ``window_s``:
input drift (PSI of the window's brightness histogram against the training reference the
bundle carries, or, without one, the camera's own first ``reference_frames`` frames on that
model version), the uncertain share, the p99 latency, and the false-reject and escape rates
estimated from the audited frames inspectors labelled (Wilson intervals). Each measure has
a threshold per line (``MonitorConfig``); an alarm changing state is stored (the app shows
it) and returned, for the collector to publish on the alert topic.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lineqc.edge import drift
from lineqc.edge.manifest import Manifest
from lineqc.edge.wire import Alert, Result, Status, TelemetryMessage
from lineqc.errors import LineqcError

from .consensus import frame_states
from .store import (
    Alarm,
    DeviceRollup,
    DeviceState,
    DriftBaseline,
    Frame,
    Rollup,
    Store,
)

LATENCY_BASE_MS = 0.05  # latency bin 0 holds everything up to this
LATENCY_STEP = 1.05  # each bin 5% wider than the one before: p99 to within 5%
LATENCY_BINS = 400  # up to about 15 minutes
Z95 = 1.959963984540054
SEEN_FRAME_IDS = 200_000  # results redelivered within this many are not counted twice
CURRENT_S = 300.0  # the app's and /metrics' "now": a camera's last five minutes


class MonitorConfigError(LineqcError):
    """A monitoring config that cannot be used; the message names the file and the key."""


# ---- configuration ------------------------------------------------------------------------


class Thresholds(BaseModel):
    """When an alarm fires (None: never). Rates fire when the lower end of their 95%
    interval is above the threshold, so a handful of audits cannot raise them."""

    model_config = ConfigDict(extra="forbid")
    drift_psi: float | None = Field(default=0.25, gt=0)
    uncertain_share: float | None = Field(default=0.3, gt=0, le=1)
    latency_p99_ms: float | None = Field(default=None, gt=0)
    false_reject_rate: float | None = Field(default=0.05, ge=0, le=1)
    escape_rate: float | None = Field(default=0.02, ge=0, le=1)
    min_frames: int = Field(default=200, ge=1, description="frames in the window to judge it")
    min_audited: int = Field(default=20, ge=1, description="labelled audits to judge a rate")


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bucket_s: int = Field(default=60, ge=1, description="rollup time bucket")
    window_s: float = Field(default=3600, gt=0, description="judged: a camera's last window_s")
    reference_frames: int = Field(default=500, ge=1, description="the fallback reference")
    evaluate_every_s: float = Field(default=10, gt=0)
    bundles: list[Path] = Field(
        default_factory=list,
        description="bundle folders (or folders of them): their drift references by version",
    )
    defaults: Thresholds = Field(default_factory=Thresholds)
    lines: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="'<site>/<line>' -> thresholds that differ"
    )

    def model_post_init(self, _: Any) -> None:
        self._lines = {
            key: Thresholds.model_validate({**self.defaults.model_dump(), **value})
            for key, value in self.lines.items()
        }

    def thresholds(self, site: str, line: str) -> Thresholds:
        return self._lines.get(f"{site}/{line}", self.defaults)


def load_config(path: Path | None) -> MonitorConfig:
    """The YAML at ``path`` (None: the defaults); MonitorConfigError naming each bad key."""
    if path is None:
        return MonitorConfig()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise MonitorConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MonitorConfigError(f"{path}: not YAML ({exc})") from None
    try:
        config = MonitorConfig.model_validate(doc)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise MonitorConfigError(f"{path}: {errors}") from None
    config.bundles = [p if p.is_absolute() else path.parent / p for p in config.bundles]
    return config


@dataclasses.dataclass(frozen=True)
class Reference:
    counts: list[int]
    frames: int
    kind: str  # "bundle" (the training split) or "first_frames" (the camera's own)


def bundle_references(paths: Iterable[Path]) -> dict[str, Reference]:
    """Model version -> the drift reference its bundle carries, from bundle folders or
    folders holding them (the manifest is read, not verified: it only sets a baseline)."""
    found: dict[str, Reference] = {}
    for path in paths:
        manifests = [path / "manifest.json"] if (path / "manifest.json").is_file() else []
        manifests = manifests or sorted(path.glob("*/manifest.json"))
        if not manifests:
            raise MonitorConfigError(f"bundles: {path}: no manifest.json in or below it")
        for file in manifests:
            try:
                manifest = Manifest.from_json(json.loads(file.read_text()))
            except (OSError, ValueError) as exc:  # ValidationError is a ValueError
                raise MonitorConfigError(
                    f"bundles: {file}: not a bundle manifest ({exc})"
                ) from None
            ref = manifest.drift_reference
            if (
                ref is not None
                and ref.bin_width == drift.BIN_WIDTH
                and len(ref.counts) == drift.BINS
            ):
                found[manifest.model.version] = Reference(list(ref.counts), ref.frames, "bundle")
    return found


# ---- measures -----------------------------------------------------------------------------


def latency_bin(ms: float) -> int:
    if not ms > LATENCY_BASE_MS:  # NaN too
        return 0
    return min(LATENCY_BINS - 1, int(math.log(ms / LATENCY_BASE_MS) / math.log(LATENCY_STEP)) + 1)


def latency_quantile(hist: dict[str, int], q: float) -> float | None:
    """The q-quantile of a latency histogram: its bin's upper edge (ms); None when empty."""
    total = sum(hist.values())
    if not total:
        return None
    acc = 0
    for key in sorted(hist, key=int):
        acc += hist[key]
        if acc >= q * total:
            return LATENCY_BASE_MS * LATENCY_STEP ** int(key)
    return None  # not reached: acc ends at total


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclasses.dataclass(frozen=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)


@dataclasses.dataclass(frozen=True)
class AuditEstimate:
    """From audited frames with a final label: false reject = of the frames the device
    rejected, the share that were OK; escape = of those it passed, the share that were
    defects. Audits are a random share of confident frames whatever their verdict, so each
    share estimates its verdict's population (while no per-class audit cap binds)."""

    site: str
    line: str
    false_reject: Rate
    escape: Rate


def audit_estimates(s: Session, since: float = 0.0) -> dict[tuple[str, str], AuditEstimate]:
    """(device, camera) -> the audit estimates over frames captured since ``since``."""
    frames = s.execute(
        select(Frame.id, Frame.site, Frame.line, Frame.device, Frame.camera, Frame.verdict)
        .where(Frame.why == "audit", Frame.ts >= since)
        .add_columns(Frame.required_reviews, Frame.model_version)
    ).all()
    states = frame_states(s, {f.id: f.required_reviews for f in frames})
    ok_classes = _ok_classes(s)
    counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    where: dict[tuple[str, str], tuple[str, str]] = {}
    for f in frames:
        label = states[f.id].consensus.label
        ok_class = ok_classes.get(f.model_version)
        if label is None or ok_class is None or f.verdict not in ("ok", "defect"):
            continue
        c = counts[(f.device, f.camera)]
        where[(f.device, f.camera)] = (f.site, f.line)
        if f.verdict == "defect":
            c[0] += 1
            c[1] += label == ok_class
        else:
            c[2] += 1
            c[3] += label != ok_class
    return {
        key: AuditEstimate(*where[key], Rate(c[1], c[0]), Rate(c[3], c[2]))
        for key, c in counts.items()
    }


def _ok_classes(s: Session) -> dict[str, str]:
    """Model version -> its OK class: what a frame the device passed predicted (a pass is
    the OK class), else what a device running it reports in its status."""
    found = {
        v: c
        for v, c in s.execute(
            select(DeviceState.model_version, DeviceState.ok_class).where(
                DeviceState.ok_class.is_not(None)
            )
        )
        if v is not None and c is not None
    }
    passes = s.execute(
        select(Frame.model_version, func.min(Frame.predicted))
        .where(Frame.verdict == "ok")
        .group_by(Frame.model_version)
    )
    found.update({v: c for v, c in passes})
    return found


# ---- rollups ------------------------------------------------------------------------------


@dataclasses.dataclass
class _CameraBucket:
    site: str
    line: str
    frames: int = 0
    ok: int = 0
    defect: int = 0
    uncertain: int = 0
    audited: int = 0
    latency: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    brightness: list[int] = dataclasses.field(default_factory=lambda: [0] * drift.BINS)
    brightness_n: int = 0


@dataclasses.dataclass
class _DeviceBucket:
    site: str
    line: str
    reports: int = 0
    frames: int = 0
    fps: float = 0.0
    drops: int = 0
    outbox_depth_max: int = 0


class Rollups:
    """What arrived since the last flush, summed per bucket; ``flush`` commits it."""

    def __init__(self, bucket_s: int) -> None:
        self.bucket_s = bucket_s
        self.cameras: dict[tuple[str, str, str, int], _CameraBucket] = {}
        self.devices: dict[tuple[str, int], _DeviceBucket] = {}
        self.states: dict[str, tuple[str, str, Status]] = {}
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.pending = 0
        self.batch_ids: list[str] = []  # the frame ids counted since the last flush

    def _bucket(self, ts: float) -> int:
        return int(ts // self.bucket_s) * self.bucket_s

    def add_result(self, site: str, line: str, r: Result) -> bool:
        """Count one result; False for a frame id counted lately (a redelivery)."""
        if r.frame_id in self.seen:
            self.seen.move_to_end(r.frame_id)
            return False
        self.seen[r.frame_id] = None
        self.batch_ids.append(r.frame_id)
        if len(self.seen) > SEEN_FRAME_IDS:
            self.seen.popitem(last=False)
        key = (r.device, r.camera, r.model_version, self._bucket(r.ts))
        b = self.cameras.get(key) or self.cameras.setdefault(key, _CameraBucket(site, line))
        b.frames += 1
        setattr(b, r.verdict, getattr(b, r.verdict) + 1)
        b.audited += r.sampled == "audit"
        b.latency[str(latency_bin(r.latency_ms))] += 1
        if r.brightness is not None and math.isfinite(r.brightness):
            b.brightness[drift.bin_of(r.brightness)] += 1
            b.brightness_n += 1
        self.pending += 1
        return True

    def add_telemetry(self, site: str, line: str, t: TelemetryMessage) -> None:
        key = (t.device, self._bucket(t.ts))
        b = self.devices.get(key) or self.devices.setdefault(key, _DeviceBucket(site, line))
        b.reports += 1
        b.frames += t.frames
        b.fps = t.fps
        b.drops += sum(t.drops.values())
        depth = t.outbox.get("depth", 0)
        b.outbox_depth_max = max(b.outbox_depth_max, depth if isinstance(depth, int) else 0)
        self.pending += 1

    def add_status(self, site: str, line: str, st: Status) -> None:
        held = self.states.get(st.device)
        if held is None or held[2].ts <= st.ts:
            self.states[st.device] = (site, line, st)
        self.pending += 1

    def flush(self, store: Store) -> None:
        """Commit everything in one transaction (a row lock per bucket row: collectors in a
        shared group add to the same rows); cleared only once committed."""
        if not self.pending:
            return
        try:
            self._write(store)
        except IntegrityError:  # another collector inserted one of our new rows first
            self._write(store)
        self._clear()

    def discard(self) -> None:
        """Forget the batch (its commit failed): its messages come again, to be counted."""
        for frame_id in self.batch_ids:
            self.seen.pop(frame_id, None)
        self._clear()

    def _clear(self) -> None:
        self.cameras.clear()
        self.devices.clear()
        self.states.clear()
        self.batch_ids.clear()
        self.pending = 0

    def _write(self, store: Store) -> None:
        now = time.time()
        with store.write_session() as s:
            for (device, camera, version, bucket), b in self.cameras.items():
                row = s.scalar(
                    select(Rollup)
                    .where(
                        Rollup.device == device,
                        Rollup.camera == camera,
                        Rollup.model_version == version,
                        Rollup.bucket == bucket,
                    )
                    .with_for_update()
                )
                if row is None:
                    row = Rollup(
                        site=b.site, line=b.line, device=device, camera=camera,
                        model_version=version, bucket=bucket, frames=0, ok=0, defect=0,
                        uncertain=0, audited=0, latency={}, brightness=[0] * drift.BINS,
                        brightness_n=0,
                    )  # fmt: skip
                    s.add(row)
                for name in ("frames", "ok", "defect", "uncertain", "audited", "brightness_n"):
                    setattr(row, name, getattr(row, name) + getattr(b, name))
                row.latency = dict(collections.Counter(row.latency) + b.latency)  # a new object
                row.brightness = [x + y for x, y in zip(row.brightness, b.brightness, strict=True)]
                row.updated_at = now
            for (device, bucket), d in self.devices.items():
                drow = s.scalar(
                    select(DeviceRollup)
                    .where(DeviceRollup.device == device, DeviceRollup.bucket == bucket)
                    .with_for_update()
                )
                if drow is None:
                    drow = DeviceRollup(
                        site=d.site, line=d.line, device=device, bucket=bucket, reports=0,
                        frames=0, fps=0.0, drops=0, outbox_depth_max=0,
                    )  # fmt: skip
                    s.add(drow)
                drow.reports += d.reports
                drow.frames += d.frames
                drow.drops += d.drops
                drow.fps = d.fps
                drow.outbox_depth_max = max(drow.outbox_depth_max, d.outbox_depth_max)
                drow.updated_at = now
            for device, (site, line, st) in self.states.items():
                state = s.get(DeviceState, device, with_for_update=True)
                if state is not None and state.ts > st.ts:
                    continue  # an older status arriving late
                if state is None:
                    state = DeviceState(device=device)
                    s.add(state)
                state.site, state.line, state.state, state.ts = site, line, st.state, st.ts
                state.model_version = st.model_version
                ok_class = (st.decision or {}).get("ok_class")
                state.ok_class = ok_class if isinstance(ok_class, str) else None
                state.problems = [p[:500] for p in st.problems[:20]]
                state.received_at = now


# ---- judging ------------------------------------------------------------------------------


@dataclasses.dataclass
class CameraWindow:
    """One camera's figures over its last window (from its rollups)."""

    site: str
    line: str
    device: str
    camera: str
    model_version: str
    start: int  # first bucket
    end: float  # end of the last bucket
    frames: int
    ok: int
    defect: int
    uncertain: int
    latency: dict[str, int]
    brightness: list[int]  # of the latest model version only
    brightness_n: int

    @property
    def fps(self) -> float:
        return self.frames / max(self.end - self.start, 1.0)

    @property
    def uncertain_share(self) -> float | None:
        return self.uncertain / self.frames if self.frames else None

    def p(self, q: float) -> float | None:
        return latency_quantile(self.latency, q)


def camera_window(rows: Sequence[Rollup], bucket_s: float) -> CameraWindow:
    """Sum a camera's rollup rows (non-empty, any order)."""
    last = max(rows, key=lambda r: (r.bucket, r.updated_at))
    latency: collections.Counter[str] = collections.Counter()
    brightness = [0] * drift.BINS
    for r in rows:
        latency.update(r.latency)
        if r.model_version == last.model_version:
            brightness = [x + y for x, y in zip(brightness, r.brightness, strict=True)]
    return CameraWindow(
        site=last.site, line=last.line, device=last.device, camera=last.camera,
        model_version=last.model_version, start=min(r.bucket for r in rows),
        end=last.bucket + bucket_s, frames=sum(r.frames for r in rows),
        ok=sum(r.ok for r in rows), defect=sum(r.defect for r in rows),
        uncertain=sum(r.uncertain for r in rows), latency=dict(latency), brightness=brightness,
        brightness_n=sum(brightness),
    )  # fmt: skip


def recent_windows(s: Session, window_s: float, bucket_s: float) -> list[CameraWindow]:
    """Every camera with rollups, over its last ``window_s`` (back from its latest bucket)."""
    latest = s.execute(
        select(Rollup.device, Rollup.camera, func.max(Rollup.bucket)).group_by(
            Rollup.device, Rollup.camera
        )
    ).all()
    windows = []
    for device, camera, last in latest:
        rows = s.scalars(
            select(Rollup).where(
                Rollup.device == device,
                Rollup.camera == camera,
                Rollup.bucket > last - window_s,
            )
        ).all()
        windows.append(camera_window(rows, bucket_s))
    return sorted(windows, key=lambda w: (w.site, w.line, w.device, w.camera))


@dataclasses.dataclass(frozen=True)
class Judgement:
    alarm: str
    value: float | None
    threshold: float
    firing: bool
    detail: str
    reference: str | None = None  # drift: "bundle" or "first_frames"


class Monitor:
    """The collector's judge: scores windows, keeps alarms, says which changed."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.references = bundle_references(config.bundles)

    def reference(self, s: Session, w: CameraWindow) -> tuple[Reference | None, str]:
        """The window's drift reference, or None and why not."""
        ref = self.references.get(w.model_version)
        if ref is not None:
            return ref, ""
        held = s.scalar(
            select(DriftBaseline).where(
                DriftBaseline.device == w.device,
                DriftBaseline.camera == w.camera,
                DriftBaseline.model_version == w.model_version,
            )
        )
        if held is not None:
            return Reference(held.counts, held.frames, "first_frames"), ""
        need = self.config.reference_frames
        counts, n = [0] * drift.BINS, 0
        for row in s.scalars(
            select(Rollup)
            .where(
                Rollup.device == w.device,
                Rollup.camera == w.camera,
                Rollup.model_version == w.model_version,
            )
            .order_by(Rollup.bucket)
        ):
            counts = [x + y for x, y in zip(counts, row.brightness, strict=True)]
            n += row.brightness_n
            if n >= need:  # fixed from now on: later frames are what it judges
                s.add(
                    DriftBaseline(
                        device=w.device, camera=w.camera, model_version=w.model_version,
                        counts=counts, frames=n, created_at=time.time(),
                    )
                )  # fmt: skip
                return Reference(counts, n, "first_frames"), ""
        return None, f"collecting a reference from the camera's first frames ({n} of {need})"

    def judge(self, s: Session, w: CameraWindow, audits: AuditEstimate | None) -> list[Judgement]:
        t = self.config.thresholds(w.site, w.line)
        out: list[Judgement] = []
        if t.drift_psi is not None and w.brightness_n >= t.min_frames:
            ref, _ = self.reference(s, w)
            if ref is not None:
                score = drift.psi(ref.counts, w.brightness)
                out.append(
                    Judgement(
                        "drift", score, t.drift_psi, score > t.drift_psi,
                        f"PSI {score:.3f} of {w.brightness_n} frames against the "
                        f"{'training split' if ref.kind == 'bundle' else 'first frames'} "
                        f"({ref.frames} frames)", ref.kind,
                    )
                )  # fmt: skip
        if t.uncertain_share is not None and w.frames >= t.min_frames:
            share = w.uncertain / w.frames
            out.append(
                Judgement(
                    "uncertain_share", share, t.uncertain_share, share > t.uncertain_share,
                    f"{w.uncertain} of {w.frames} frames uncertain",
                )
            )  # fmt: skip
        p99 = w.p(0.99)
        if t.latency_p99_ms is not None and w.frames >= t.min_frames and p99 is not None:
            out.append(
                Judgement(
                    "latency_p99", p99, t.latency_p99_ms, p99 > t.latency_p99_ms,
                    f"p99 {p99:.1f} ms over {w.frames} frames",
                )
            )  # fmt: skip
        for name, rate, limit in (
            ("false_reject", audits.false_reject if audits else None, t.false_reject_rate),
            ("escape", audits.escape if audits else None, t.escape_rate),
        ):
            if rate is None or limit is None or rate.n < t.min_audited:
                continue
            lo, hi = rate.interval
            out.append(
                Judgement(
                    name, rate.value, limit, lo > limit,
                    f"{rate.k} of {rate.n} audited, 95% interval {lo:.3f}-{hi:.3f}",
                )
            )  # fmt: skip
        return out

    def evaluate(self, store: Store) -> list[Alert]:
        """Judge every camera; store its alarms and drift score; the alarms that changed."""
        cfg, now, alerts = self.config, time.time(), []
        with store.write_session() as s:
            audits = audit_estimates(s)
            for w in recent_windows(s, cfg.window_s, cfg.bucket_s):
                judgements = self.judge(s, w, audits.get((w.device, w.camera)))
                for j in judgements:
                    alert = _set_alarm(s, w, j, now)
                    if alert is not None:
                        alerts.append(alert)
                    if j.alarm == "drift":
                        _record_drift(s, w, j.value, j.reference)
        return alerts


def _record_drift(s: Session, w: CameraWindow, score: float | None, kind: str | None) -> None:
    row = s.scalar(
        select(Rollup)
        .where(Rollup.device == w.device, Rollup.camera == w.camera)
        .order_by(Rollup.bucket.desc(), Rollup.updated_at.desc())
        .limit(1)
    )
    if row is not None:
        row.drift_psi, row.drift_ref = score, kind


def _set_alarm(s: Session, w: CameraWindow, j: Judgement, now: float) -> Alert | None:
    row = s.scalar(
        select(Alarm).where(
            Alarm.device == w.device, Alarm.camera == w.camera, Alarm.alarm == j.alarm
        )
    )
    state = "firing" if j.firing else "ok"
    changed = (row is None and j.firing) or (row is not None and row.state != state)
    if row is None:
        row = Alarm(
            site=w.site, line=w.line, device=w.device, camera=w.camera, alarm=j.alarm,
            state=state, since=now,
        )  # fmt: skip
        s.add(row)
    if changed:
        row.state, row.since = state, now
    row.value, row.threshold, row.detail, row.updated_at = j.value, j.threshold, j.detail, now
    if not changed:
        return None
    return Alert(
        v=1, type="alert", site=w.site, line=w.line, device=w.device, camera=w.camera,
        alarm=j.alarm, state="firing" if j.firing else "resolved", value=j.value,
        threshold=j.threshold, ts=now, detail=j.detail,
    )  # fmt: skip
