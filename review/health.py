"""The line-health page (``/health``) and the Prometheus endpoint (``/metrics``).

Both read what the collector's monitoring stored (``monitor.py``): rollups per camera and
time bucket, drift scores, device states and alarms, plus the audit estimates computed
from the inspectors' labels. ``/metrics`` is the Prometheus text format for Grafana; it
needs no sign-in (Prometheus scrapes without one), so expose it only to the plant network
or put it behind the reverse proxy's access rules. Plots are inline SVG drawn here: no
script, no CDN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .monitor import (
    CURRENT_S,
    AuditEstimate,
    CameraWindow,
    MonitorConfig,
    audit_estimates,
    latency_quantile,
    recent_windows,
)
from .store import Alarm, DeviceState, Rollup, Store
from .web import Inspector, render, store_of

router = APIRouter()
HISTORY_S = 24 * 3600.0  # the plots: the last day of each camera
CAMERA = ("site", "line", "device", "camera")


def monitor_config(request: Request) -> MonitorConfig:
    config: MonitorConfig = request.app.state.monitor
    return config


# ---- the page -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    unit: str
    points: list[tuple[float, float]]  # (bucket start, value)
    threshold: float | None = None


def sparkline(series: Series, width: int = 360, height: int = 90) -> Markup:
    """An inline SVG line of one series (with its alarm threshold dashed), numbers only."""
    pts = series.points
    if not pts:
        return Markup('<p class="muted">no data</p>')
    t0, t1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
    top = max([v for _, v in pts] + [series.threshold or 0.0]) or 1.0
    pad = 4

    def xy(t: float, v: float) -> str:
        x = pad + (t - t0) / (t1 - t0) * (width - 2 * pad)
        y = height - pad - v / top * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in pts)
    parts = [
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{series.name}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="none" stroke="#ccc"/>',
    ]
    if series.threshold is not None:
        y = xy(t0, series.threshold).split(",")[1]
        parts.append(
            f'<line x1="0" x2="{width}" y1="{y}" y2="{y}" stroke="#c33" stroke-dasharray="4 3"/>'
        )
    if len(pts) == 1:
        x, y = xy(*pts[0]).split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="#36c"/>')
    else:
        parts.append(f'<polyline points="{line}" fill="none" stroke="#36c" stroke-width="1.5"/>')
    parts.append(f'<text x="{width - pad}" y="12" text-anchor="end" font-size="10">')
    parts.append(f"max {top:.3g} {series.unit}</text></svg>")
    return Markup("".join(parts))


@dataclasses.dataclass
class CameraHealth:
    window: CameraWindow
    drift_psi: float | None
    drift_ref: str | None
    audits: AuditEstimate | None
    alarms: list[Alarm]
    plots: list[tuple[Series, Markup]]

    @property
    def key(self) -> str:
        w = self.window
        return f"{w.site}/{w.line}/{w.device}/{w.camera}"


def _series(rows: Sequence[Rollup], config: MonitorConfig, w: CameraWindow) -> list[Series]:
    t = config.thresholds(w.site, w.line)
    fps, unsure, p99, psi = [], [], [], []
    for r in sorted(rows, key=lambda r: r.bucket):
        fps.append((float(r.bucket), r.frames / config.bucket_s))
        if r.frames:
            unsure.append((float(r.bucket), r.uncertain / r.frames))
        q = latency_quantile(r.latency, 0.99)
        if q is not None:
            p99.append((float(r.bucket), q))
        if r.drift_psi is not None:
            psi.append((float(r.bucket), r.drift_psi))
    return [
        Series("throughput", "frames/s", fps),
        Series("uncertain share", "", unsure, t.uncertain_share),
        Series("latency p99", "ms", p99, t.latency_p99_ms),
        Series("drift (PSI)", "", psi, t.drift_psi),
    ]


def line_health(s: Session, config: MonitorConfig) -> list[CameraHealth]:
    audits = audit_estimates(s)
    alarms = list(s.scalars(select(Alarm).order_by(Alarm.alarm)))
    out = []
    for w in recent_windows(s, CURRENT_S, config.bucket_s):
        history = s.scalars(
            select(Rollup).where(
                Rollup.device == w.device,
                Rollup.camera == w.camera,
                Rollup.bucket > w.end - HISTORY_S,
            )
        ).all()
        scored = [r for r in history if r.drift_psi is not None]
        last = max(scored, key=lambda r: (r.bucket, r.updated_at)) if scored else None
        out.append(
            CameraHealth(
                w,
                last.drift_psi if last else None,
                last.drift_ref if last else None,
                audits.get((w.device, w.camera)),
                [a for a in alarms if (a.device, a.camera) == (w.device, w.camera)],
                [(series, sparkline(series)) for series in _series(history, config, w)],
            )
        )
    return out


@router.get("/health")
def health_page(request: Request, user: Inspector) -> Response:
    config = monitor_config(request)
    with store_of(request).session() as s:
        cameras = line_health(s, config)
        firing = list(
            s.scalars(
                select(Alarm)
                .where(Alarm.state == "firing")
                .order_by(Alarm.line, Alarm.device, Alarm.camera)
            )
        )
        devices = list(
            s.scalars(select(DeviceState).order_by(DeviceState.line, DeviceState.device))
        )
    return render(
        request,
        "health.html",
        cameras=cameras,
        firing=firing,
        devices=devices,
        reference_frames=config.reference_frames,
        current_s=CURRENT_S,
        describe=describe,
    )


# ---- /metrics -----------------------------------------------------------------------------


class MonitorMetrics(Collector):
    """Reads the store at each scrape (nothing cached): one set of series per camera."""

    def __init__(self, store: Store, config: MonitorConfig) -> None:
        self.store = store
        self.config = config

    def collect(self) -> Iterator[Metric]:
        with self.store.session() as s:
            yield from self._camera_metrics(s)
            yield from self._audit_metrics(s)
            yield from self._alarm_metrics(s)
            yield from self._device_metrics(s)

    def _camera_metrics(self, s: Session) -> Iterator[Metric]:
        frames = CounterMetricFamily(
            "lineqc_camera_frames", "frames inspected (all rollups)", labels=[*CAMERA, "verdict"]
        )
        totals = s.execute(
            select(
                Rollup.site, Rollup.line, Rollup.device, Rollup.camera,
                func.sum(Rollup.ok), func.sum(Rollup.defect), func.sum(Rollup.uncertain),
            ).group_by(Rollup.site, Rollup.line, Rollup.device, Rollup.camera)
        )  # fmt: skip
        for site, line, device, camera, ok, defect, uncertain in totals:
            for verdict, n in (("ok", ok), ("defect", defect), ("uncertain", uncertain)):
                frames.add_metric([site, line, device, camera, verdict], float(n or 0))
        yield frames
        help_now = f"over the camera's last {CURRENT_S:g} s of rollups"
        fps = GaugeMetricFamily("lineqc_camera_throughput_fps", help_now, labels=list(CAMERA))
        latency = GaugeMetricFamily(
            "lineqc_camera_latency_ms",
            f"capture to decision, {help_now}",
            labels=[*CAMERA, "quantile"],
        )
        unsure = GaugeMetricFamily("lineqc_camera_uncertain_share", help_now, labels=list(CAMERA))
        psi = GaugeMetricFamily(
            "lineqc_camera_drift_psi",
            "the collector's latest drift score",
            labels=[*CAMERA, "reference"],
        )
        for w in recent_windows(s, CURRENT_S, self.config.bucket_s):
            ids = [w.site, w.line, w.device, w.camera]
            fps.add_metric(ids, w.fps)
            for q in (0.5, 0.99):
                value = w.p(q)
                if value is not None:
                    latency.add_metric([*ids, str(q)], value)
            if w.uncertain_share is not None:
                unsure.add_metric(ids, w.uncertain_share)
            scored = s.execute(
                select(Rollup.drift_psi, Rollup.drift_ref)
                .where(
                    Rollup.device == w.device,
                    Rollup.camera == w.camera,
                    Rollup.drift_psi.is_not(None),
                )
                .order_by(Rollup.bucket.desc(), Rollup.updated_at.desc())
                .limit(1)
            ).first()
            if scored is not None and scored[0] is not None:
                psi.add_metric([*ids, scored[1] or "unknown"], scored[0])
        yield from (fps, latency, unsure, psi)

    def _audit_metrics(self, s: Session) -> Iterator[Metric]:
        labels = [*CAMERA, "bound"]
        families = {
            "false_reject": GaugeMetricFamily(
                "lineqc_camera_false_reject_rate",
                "audited frames the device rejected that inspectors labelled OK (share; "
                "bound: estimate, lower, upper of the 95% Wilson interval)",
                labels=labels,
            ),
            "escape": GaugeMetricFamily(
                "lineqc_camera_escape_rate",
                "audited frames the device passed that inspectors labelled a defect (share)",
                labels=labels,
            ),
        }
        support = GaugeMetricFamily(
            "lineqc_camera_audited_labelled",
            "audited frames with a final label",
            labels=[*CAMERA, "decision"],
        )
        for (device, camera), est in audit_estimates(s).items():
            ids = [est.site, est.line, device, camera]
            for name, rate in (("false_reject", est.false_reject), ("escape", est.escape)):
                decision = "rejected" if name == "false_reject" else "passed"
                support.add_metric([*ids, decision], rate.n)
                if rate.value is None:
                    continue
                lo, hi = rate.interval
                for bound, value in (("estimate", rate.value), ("lower", lo), ("upper", hi)):
                    families[name].add_metric([*ids, bound], value)
        yield from (*families.values(), support)

    def _alarm_metrics(self, s: Session) -> Iterator[Metric]:
        firing = GaugeMetricFamily(
            "lineqc_alarm_firing", "1 while the alarm fires", labels=[*CAMERA, "alarm"]
        )
        value = GaugeMetricFamily(
            "lineqc_alarm_value", "the alarm's last measured value", labels=[*CAMERA, "alarm"]
        )
        for a in s.scalars(select(Alarm)):
            ids = [a.site, a.line, a.device, a.camera, a.alarm]
            firing.add_metric(ids, 1.0 if a.state == "firing" else 0.0)
            if a.value is not None:
                value.add_metric(ids, a.value)
        yield from (firing, value)

    def _device_metrics(self, s: Session) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "lineqc_device_online",
            "1 when the device's latest status is online or degraded",
            labels=["site", "line", "device", "state"],
        )
        for d in s.scalars(select(DeviceState)):
            up.add_metric(
                [d.site, d.line, d.device, d.state], float(d.state in ("online", "degraded"))
            )
        yield up


def metrics_registry(store: Store, config: MonitorConfig) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorMetrics(store, config))
    return registry


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def describe(value: Any) -> str:
    """A rate and its interval for the page."""
    if value is None or value.value is None:
        return "n/a"
    lo, hi = value.interval
    return f"{value.value:.3f} ({lo:.3f}-{hi:.3f}, {value.k} of {value.n})"
