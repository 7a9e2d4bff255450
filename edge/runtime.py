"""The pipeline: capture -> preprocess -> backend -> decision -> actuator, sampling, MQTT.

One inference thread runs the per-frame hot path (numpy in, numpy out; no JSON for the
model input). Capture, publishing (outbox, JPEG encoding) and MQTT networking run in their
own threads. Commands from MQTT, once admitted (signed and fresh: ``commands.py``), are
applied between frames. SIGTERM or SIGINT (or the end of a replay) stops the loop; the
publisher then flushes the outbox for up to ``shutdown_flush_s`` and the process exits
(undelivered messages stay in the outbox and go out at the next start). SIGHUP re-reads the
config between frames and applies its hot-reloadable keys (``service.py``). Under systemd
the runtime says when it is ready and feeds the watchdog while frames progress.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from . import defect_map
from .actuator import RejectEvent, make_actuator
from .backends import Backend, BackendError, open_backend
from .bundle import Bundle, BundleError, load_bundle, parse_version
from .commands import AnyCommand, CommandGate, CommandRefused
from .config import ConfigError, DecisionOverrides, DeviceConfig
from .decision import DecisionPolicy, decide
from .outbox import Outbox
from .outputs import ANOMALY, DEFECT_MAP, LOGITS
from .preprocess import preprocess
from .publisher import PendingSample, Publisher
from .rollout import CONFIG, Refused, Slots
from .sampling import Sampler
from .service import NeedsRestart, Notifier, Watchdog, config_changes
from .signing import load_public_key
from .sources import Capture, EndOfStream, Reader
from .telemetry import Telemetry
from .wire import (
    Deploy,
    ReloadBundle,
    ReloadConfig,
    SetThresholds,
    command_reply,
    defect_map_part,
    dumps,
    result_message,
    sample_message,
    status_message,
)

log = logging.getLogger("lineqc.edge.runtime")
# One answer for a bundle name that is missing and for one outside the bundle folder, so a
# command cannot probe which paths exist on the device.
NO_SUCH_BUNDLE = "reload_bundle: no such bundle in the device's bundle folder"


def apply_overrides(
    policy: DecisionPolicy,
    prob_floor: float | None,
    margin: float | None,
    thresholds: dict[str, float | None] | None,
) -> DecisionPolicy:
    """The policy with some parameters replaced; raises ValueError for invalid ones."""
    changes: dict[str, Any] = {}
    if prob_floor is not None:
        changes["prob_floor"] = prob_floor
    if margin is not None:
        changes["margin"] = margin
    if thresholds:
        changes["thresholds"] = {**policy.thresholds, **thresholds}
    return dataclasses.replace(policy, **changes) if changes else policy


def config_policy(
    bundle: Bundle, overrides: DecisionOverrides, precision: str | None
) -> DecisionPolicy:
    """The policy chosen for the model of ``precision`` (the one the device runs), overridden."""
    try:
        return apply_overrides(
            bundle.policy_for(precision),
            overrides.prob_floor,
            overrides.margin,
            overrides.thresholds,
        )
    except ValueError as exc:
        raise BundleError(f"decision overrides do not fit bundle {bundle.root}: {exc}") from None


class Runtime:
    def __init__(
        self,
        cfg: DeviceConfig,
        max_frames: int | None = None,
        bundle: Bundle | None = None,
        reader_factory: Callable[[], Reader] | None = None,
        config_loader: Callable[[], DeviceConfig] | None = None,
    ) -> None:
        """``bundle``: already verified (default: load and verify the configured one);
        ``config_loader``: reads the config again for a reload (SIGHUP)."""
        self.cfg = cfg
        self.config_loader = config_loader
        self.notifier = Notifier.from_env()
        self.watchdog = Watchdog(self.notifier)
        self.reload_requested = threading.Event()
        self.max_frames = max_frames
        self._status_dirty = threading.Event()
        self.slots = Slots(cfg, self._open_backend, self._policy_of, self._status_dirty.set)
        self.booted = bundle is None  # an explicit bundle (bench, tests) leaves the slots be
        self.bundle = bundle or self.slots.boot()
        # during a probation after a switch: what runs if it fails (None: load it from disk)
        self.previous: tuple[Bundle, DecisionPolicy, Backend] | None = None
        self.policy = config_policy(self.bundle, cfg.decision, cfg.model.precision)
        self.backend: Backend = self._open_backend(self.bundle)
        self.spec = self.bundle.spec
        self.run_id = f"{int(time.time() * 1000):x}"
        self.telemetry = Telemetry(cfg.telemetry.window)
        self.sampler = Sampler(cfg.sampling)
        self.actuator = make_actuator(cfg.actuator)
        self.commands: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.gate = CommandGate(
            load_public_key(cfg.command_key), cfg.target, cfg.command_state, cfg.commands.max_age_s
        )
        self.stop_event = threading.Event()
        self.last_command: dict[str, Any] | None = None
        self.counters: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes)
        self.publisher = Publisher(cfg, self.outbox, self.commands.put, self.status)
        self.capture = Capture(
            cfg.camera, on_event=self._camera_event, reader_factory=reader_factory
        )
        self.actuator.on_change = self._status_dirty.set
        self.frames = 0
        self.problems_seen: set[str] = set()

    def _policy_of(self, bundle: Bundle) -> DecisionPolicy:
        return config_policy(bundle, self.cfg.decision, self.cfg.model.precision)

    def _open_backend(self, bundle: Bundle) -> Backend:
        m = self.cfg.model
        return open_backend(
            bundle, m.backend, m.threads, m.precision, m.engine_cache, m.allow_failed_gate
        )

    # ---- status ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        out = []
        cam = self.capture.stats()
        if cam["state"] == "error":
            out.append(f"camera {cam['id']}: {cam['detail']}")
        if self.outbox.at_bound:
            out.append(
                f"outbox at its disk bound ({self.outbox.bytes} of {self.outbox.max_bytes} bytes); "
                f"dropped so far: {self.outbox.counters()}"
            )
        if self.publisher.last_error:
            out.append(f"mqtt: {self.publisher.last_error}")
        if (actuator := self.actuator.problem()) is not None:
            out.append(actuator)
        if self.counters["over_budget_recent"]:
            out.append(
                f"{self.counters['over_budget_recent']} frame(s) over the latency budget of "
                f"{self.cfg.latency_budget_ms:g} ms in the last interval"
            )
        return out

    def status(self) -> dict[str, Any]:
        problems = self.problems()
        return status_message(
            device=self.cfg.device.id,
            state="degraded" if problems else "online",
            ts=time.time(),
            model_version=self.bundle.version,
            camera=self.capture.stats(),
            outbox=self.outbox.stats(),
            problems=problems,
            last_command=self.last_command,
            decision=self.policy.to_json(),
            rollout=self.slots.report(self.bundle.version),
        )

    def _camera_event(self, state: str, detail: str) -> None:
        self._status_dirty.set()

    def telemetry_message(self) -> dict[str, Any]:
        rep = self.telemetry.report()
        drops = {"capture": self.capture.drops}
        for key, n in self.publisher.counters.items():
            if key.startswith("handoff_dropped"):
                drops[key] = n
        for key, n in self.outbox.counters().items():
            drops[f"outbox_{key}"] = n
        counters = {
            **self.sampler.counters, **self.publisher.counters, **self.counters,
            **self.actuator.counters(),
        }  # fmt: skip
        counters.pop("over_budget_recent", None)
        return {
            "v": 1,
            "type": "telemetry",
            "device": self.cfg.device.id,
            "ts": round(time.time(), 3),
            "interval_s": rep["interval_s"],
            "frames": rep["frames"],
            "fps": rep["fps"],
            "drops": drops,
            "verdicts": rep["verdicts"],
            "latency_ms": {**rep["latency_ms"], **self.actuator.latency()},
            "outbox": self.publisher.stats(),
            "input": rep["input"],
            "counters": {k: int(v) for k, v in counters.items()},
        }

    # ---- commands ----------------------------------------------------------------------------

    def _handle_commands(self) -> None:
        while True:
            try:
                payload = self.commands.get_nowait()
            except queue.Empty:
                return
            cmd: AnyCommand | None = None
            try:
                cmd = self.gate.admit(payload, time.time())
                self._apply(cmd)
                error = None
            except (BundleError, BackendError, ValueError) as exc:  # details may name paths
                log.warning("command not applied: %s", exc)
                error = self._refused(
                    CommandRefused("not_applied", "command not applied (see the device log)")
                )
            except CommandRefused as exc:
                cmd = exc.cmd or cmd
                if (
                    exc.reason == "replayed"
                    and isinstance(cmd, Deploy)
                    and self.slots.already_have(cmd.seq)
                ):
                    continue  # the retained deploy met again at a (re)connect: in hand
                error = self._refused(exc)
            self.counters["commands"] += 1
            now = time.time()
            cmd_id, name = (cmd.id, cmd.cmd) if cmd is not None else (None, None)
            self.last_command = {"id": cmd_id, "cmd": name, "ok": error is None, "error": error}
            reply = command_reply(self.cfg.device.id, now, cmd_id, name, error is None, error)
            self.publisher.publish_direct("cmd/reply", reply, qos=1)
            self._status_dirty.set()

    def _refused(self, exc: CommandRefused) -> str:
        self.counters["commands_refused"] += 1
        self.counters[f"commands_refused_{exc.reason}"] += 1
        log.warning("command refused (%s): %s", exc.reason, exc)
        return str(exc)

    def _apply(self, cmd: AnyCommand) -> None:
        """Apply an admitted command; CommandRefused says why not (without paths)."""
        if isinstance(cmd, ReloadBundle):
            self._reload(cmd)
        elif isinstance(cmd, SetThresholds):
            try:
                self.policy = apply_overrides(
                    self.policy, cmd.prob_floor, cmd.margin, cmd.thresholds
                )
            except ValueError as exc:
                raise CommandRefused("not_applied", f"set_thresholds: {exc}", cmd) from None
            log.info("decision policy changed by command: %s", self.policy.to_json())
        elif isinstance(cmd, Deploy):
            self._check_version(cmd, cmd.version)  # a downgrade is refused before a download
            try:
                self.slots.offer(cmd, self.bundle.version)
            except Refused as exc:
                raise CommandRefused("not_applied", str(exc), cmd) from None
        elif isinstance(cmd, ReloadConfig):
            why = self.reload_config()
            if why is not None:
                raise CommandRefused("not_applied", why, cmd)

    def _bundle_path(self, cmd: ReloadBundle) -> Path:
        if cmd.bundle is None:
            return self.cfg.model.bundle
        store = self.cfg.bundle_dir.resolve()
        path = (store / cmd.bundle).resolve()  # an absolute name replaces the store
        if not path.is_relative_to(store) or not path.exists():
            log.warning("reload_bundle: %s is missing or outside %s", cmd.bundle, store)
            raise CommandRefused("no_bundle", NO_SUCH_BUNDLE, cmd)
        return path

    def _reload(self, cmd: ReloadBundle) -> None:
        path = self._bundle_path(cmd)
        try:
            # Verified here; the version rule is below, where the command and config are.
            bundle = load_bundle(path, self.cfg.model.public_key, force=True)
        except BundleError as exc:
            log.warning("reload_bundle refused: %s", exc)
            raise CommandRefused(
                "bundle_invalid",
                "reload_bundle: the bundle does not verify (see the device log)",
                cmd,
            ) from None
        self._check_version(cmd, bundle.version)
        # BundleError: the net in _handle_commands
        policy = config_policy(bundle, self.cfg.decision, self.cfg.model.precision)
        try:
            backend = self._open_backend(bundle)
        except BackendError as exc:
            log.warning("reload_bundle refused: %s", exc)
            raise CommandRefused(
                "not_applied",
                "reload_bundle: the bundle's model cannot run here (see the device log)",
                cmd,
            ) from None
        old = self.backend
        self.bundle, self.policy, self.backend, self.spec = bundle, policy, backend, bundle.spec
        old.close()
        log.info("bundle reloaded: %s version %s", bundle.root, bundle.version)

    def _check_version(self, cmd: ReloadBundle | Deploy, version: str) -> None:
        """A downgrade takes two keys: the device allows it and the signed command names the
        exact version it installs; a ``force`` flag alone never did enough."""
        if cmd.downgrade_to is not None and cmd.downgrade_to != version:
            raise CommandRefused(
                "downgrade", f"reload_bundle: the bundle is version {version}, not "
                f"{cmd.downgrade_to}", cmd,
            )  # fmt: skip
        if parse_version(version) >= parse_version(self.bundle.version):
            return
        if not self.cfg.commands.allow_downgrade:
            raise CommandRefused(
                "downgrade", f"reload_bundle: version {version} is older than the running "
                f"{self.bundle.version} and this device does not allow downgrades "
                "(commands.allow_downgrade)", cmd,
            )  # fmt: skip
        if cmd.downgrade_to is None:
            raise CommandRefused(
                "downgrade", f"reload_bundle: version {version} is older than the running "
                f"{self.bundle.version}; a downgrade must name it (downgrade_to)", cmd,
            )  # fmt: skip

    # ---- rollout (rollout.py): between frames ------------------------------------------------

    def _rollout_tick(self) -> None:
        slots = self.slots
        deploy = slots.deploy
        if slots.staged is not None and deploy is not None:
            if deploy.stage != "shadow":
                self._switch()
            else:
                slots.start_shadow(self.cfg.latency_budget_ms)
                judged = slots.shadow.judgement() if slots.shadow is not None else None
                if judged is not None and judged[0]:
                    log.info("rollout: shadow passed (%s): promoting", judged[1])
                    self._switch()
                elif judged is not None:
                    slots.discard_candidate()
                    slots.set_phase("shadow_failed", judged[1])
        if slots.probation is not None and (judged := slots.probation.judgement()) is not None:
            if judged[0]:
                if self.previous is not None:
                    self.previous[2].close()
                    self.previous = None
                slots.end_probation(True, judged[1])
            else:
                self._roll_back(judged[1])

    def _switch(self) -> None:
        """Between two frames: the candidate becomes the running model; the old stays open
        for the probation."""
        cand = self.slots.staged
        assert cand is not None
        self.previous = (self.bundle, self.policy, self.backend)
        self.bundle, self.policy, self.backend = cand.bundle, cand.policy, cand.backend
        self.spec = cand.bundle.spec
        self.slots.switched(self.slots.state.active)
        log.info("rollout: switched to %s (slot %s)", cand.bundle.version, cand.slot)

    def _roll_back(self, why: str) -> None:
        if self.previous is None:  # started on probation: the previous slot from disk
            slot = self.slots.state.previous or CONFIG
            try:
                bundle = load_bundle(self.slots.slot_path(slot), self.cfg.model.public_key)
                self.previous = (bundle, self._policy_of(bundle), self._open_backend(bundle))
            except (BundleError, BackendError) as exc:
                log.error("rollout: cannot roll back to slot %s (%s); staying", slot, exc)
                self.slots.end_probation(True, f"{why}; no previous bundle to go back to")
                return
        failed = self.backend
        self.bundle, self.policy, self.backend = self.previous
        self.spec, self.previous = self.bundle.spec, None
        failed.close()
        self.counters["rollbacks"] += 1
        self.slots.end_probation(False, why)

    # ---- the loop ----------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.stop_event.set()

    def request_reload(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.reload_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def reload_config(self) -> str | None:
        """Read the config again and apply it between two frames when it changes only
        hot-reloadable keys (``service.HOT_RELOADABLE``); otherwise keep the running config
        and return why (without paths: a command reply may carry it)."""
        self.reload_requested.clear()
        if self.config_loader is None:
            log.warning("config reload: this runtime was not started from a config file")
            return "reload_config: the device was not started from a config file"
        self.notifier.reloading()
        why = None
        try:
            new = self.config_loader()
            changed = config_changes(self.cfg, new)
            policy = self.policy  # one a command set stays unless the file's decision changed
            if any(k == "decision" or k.startswith("decision.") for k in changed):
                policy = config_policy(self.bundle, new.decision, new.model.precision)
        except NeedsRestart as exc:
            log.warning("config reload refused: %s", exc)
            why = f"reload_config: {exc}"
        except (ConfigError, BundleError) as exc:
            log.warning("config reload refused, the running config is kept: %s", exc)
            why = "reload_config: the config does not validate (see the device log)"
        else:
            self.cfg, self.policy = new, policy
            self.sampler.cfg = new.sampling  # keeps its counters and rate-limit history
            log.info("config reloaded: %s", ", ".join(changed) or "nothing changed")
            self._status_dirty.set()
        self.counters["config_reloads_refused" if why else "config_reloads"] += 1
        self.notifier.ready(self.service_status())
        return why

    def service_status(self) -> str:
        """One line for ``systemctl status``."""
        problems = self.problems()
        text = (
            f"{self.frames} frames inspected; model {self.bundle.version}; camera "
            f"{self.capture.stats()['state']}; outbox {self.outbox.depth} waiting"
        )
        return text + (f"; {len(problems)} problem(s): {problems[0]}" if problems else "")

    def run(self) -> dict[str, Any]:
        """Run until stopped or the replay ends; returns the summary."""
        cfg = self.cfg
        log.info(
            "device %s: bundle %s (model %s, %s, %s), camera %s",
            cfg.device.id,
            self.bundle.root,
            self.bundle.version,
            self.backend.name,
            self.backend.model_path.name,
            cfg.camera.source,
        )
        self.publisher.start()
        self.actuator.start()
        self.capture.start()
        self.notifier.ready(self.service_status())
        started = time.perf_counter()
        next_report = time.monotonic() + cfg.telemetry.interval_s
        ended = normal = False
        if self.booted:
            self.slots.resume_probation()
            self.slots.resume(self.bundle.version)
        try:
            while not self.stop_event.is_set():
                self._handle_commands()
                self._rollout_tick()
                if self.reload_requested.is_set():
                    self.reload_config()
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + self.cfg.telemetry.interval_s
                    self.publisher.publish_direct("telemetry", self.telemetry_message())
                    self.publisher.publish_status()
                    self.notifier.status(self.service_status())
                    self.counters["over_budget_recent"] = 0
                elif self._status_dirty.is_set():
                    self._status_dirty.clear()
                    self.publisher.publish_status()
                try:
                    frame = self.capture.get(timeout=0.1)
                except EndOfStream:
                    ended = True
                    break
                if frame is None:
                    continue
                self._process(frame)
                self.watchdog.beat(self.frames)
                if self.max_frames is not None and self.frames >= self.max_frames:
                    break
            normal = True
        finally:
            if self.booted and normal:
                self.slots.clean_stop()  # not after a crash: that counts towards a rollback
            elapsed = time.perf_counter() - started
            self.notifier.stopping(f"stopping: flushing the outbox ({self.outbox.depth} waiting)")
            self.capture.stop()
            self.actuator.close()  # what is queued is written or misses its deadline
            clean = self.publisher.stop(cfg.shutdown_flush_s)
            self.outbox.close()
        return self.summary(elapsed, ended, clean)

    def _defect_map(
        self, outputs: dict[str, np.ndarray], frame_hw: tuple[int, int]
    ) -> dict[str, Any] | None:
        """The sample's defect map (the cells over the frame, as PNG), if the model has one."""
        if DEFECT_MAP not in outputs:
            return None
        cells = defect_map.frame_cells(outputs[DEFECT_MAP][0], frame_hw, self.spec)
        return defect_map_part(defect_map.png(cells), cells.shape[1], cells.shape[0])

    def _process(self, frame: Any) -> None:
        t1 = time.perf_counter()
        x = preprocess(frame.image, self.spec)[None]
        t2 = time.perf_counter()
        outputs = self.backend.infer(x)
        t3 = time.perf_counter()
        anomaly = outputs.get(ANOMALY)
        d = decide(outputs[LOGITS][0], self.policy, None if anomaly is None else float(anomaly[0]))
        t4 = time.perf_counter()
        cfg = self.cfg
        frame_id = f"{cfg.device.id}-{frame.camera}-{self.run_id}-{frame.seq:07d}"
        reject = d.verdict == "defect" or (
            d.verdict == "uncertain" and cfg.decision.reject_uncertain
        )
        if reject or self.actuator.every_decision:  # a PLC gets passes too; a queue, no wait
            self.actuator.submit(
                RejectEvent(
                    frame_id, frame.camera, frame.seq, frame.ts, d.verdict, d.label,
                    d.confidence, d.reason, reject, t4,
                )
            )  # fmt: skip
        why = self.sampler.choose(d)
        latency = (t4 - frame.t_mono) * 1000
        tel = self.telemetry
        brightness = tel.inputs[frame.camera].add(frame.image)  # drift: sent with the result
        if cfg.mqtt.publish_results:
            result = result_message(
                frame_id=frame_id, device=cfg.device.id, camera=frame.camera, seq=frame.seq,
                ts=frame.ts, model_version=self.bundle.version, verdict=d.verdict, label=d.label,
                confidence=d.confidence, reason=d.reason, latency_ms=latency, sampled=why,
                anomaly=None if anomaly is None else float(anomaly[0]), brightness=brightness,
            )  # fmt: skip
            self.publisher.submit("result", frame_id, dumps(result))
        if why is not None:
            doc = sample_message(
                why=why, frame_id=frame_id, device=cfg.device.id, site=cfg.device.site,
                line=cfg.device.line, camera=frame.camera, seq=frame.seq, ts=frame.ts,
                model_version=self.bundle.version, classes=list(self.policy.classes),
                probabilities=list(d.probabilities), verdict=d.verdict, label=d.label,
                confidence=d.confidence, reason=d.reason,
                defect_map=self._defect_map(outputs, frame.image.shape[:2]),
                anomaly=None if anomaly is None else float(anomaly[0]),
            )  # fmt: skip
            self.publisher.submit(
                "sample", frame_id, PendingSample(doc, frame.image, cfg.sampling.jpeg_quality)
            )
        t5 = time.perf_counter()
        tel.record(
            {
                "queue": (t1 - frame.t_mono) * 1000,
                "preprocess": (t2 - t1) * 1000,
                "infer": (t3 - t2) * 1000,
                "decide": (t4 - t3) * 1000,
                "publish": (t5 - t4) * 1000,
                "capture_to_decision": latency,
                "total": (t5 - frame.t_mono) * 1000,
            }
        )
        tel.frames += 1
        tel.verdicts[d.verdict] += 1
        self.verdicts[d.verdict] += 1
        if d.verdict == "defect":
            self.verdicts[f"defect:{d.label}"] += 1
        if latency > cfg.latency_budget_ms:
            self.counters["over_budget"] += 1
            self.counters["over_budget_recent"] += 1
        if self.slots.shadow is not None:
            self.slots.shadow.offer(frame.image, d.verdict, d.label)
        if self.slots.probation is not None:
            self.slots.probation.record(d.verdict, latency > cfg.latency_budget_ms)
        self.frames += 1

    def summary(self, elapsed: float, ended: bool, clean: bool) -> dict[str, Any]:
        return {
            "device": self.cfg.device.id,
            "model_version": self.bundle.version,
            "backend": self.backend.name,
            "frames": self.frames,
            "elapsed_s": round(elapsed, 3),
            "fps": round(self.frames / elapsed, 2) if elapsed > 0 else 0.0,
            "ended": "replay finished" if ended else "stopped",
            "decisions": dict(self.verdicts),
            "latency_ms": self.telemetry.latency(),
            "capture": self.capture.stats(),
            "sampling": dict(self.sampler.counters),
            "publisher": {k: int(v) for k, v in self.publisher.counters.items()},
            "actuator": {
                "kind": self.actuator.kind,
                "counters": self.actuator.counters(),
                "latency_ms": self.actuator.latency(),
            },
            "outbox": {
                "left": self.outbox.depth,
                "bytes": self.outbox.bytes,
                "flushed": clean,
            },
        }


def latency_table(latency: dict[str, dict[str, float]]) -> str:
    lines = [f"{'stage':<22}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for stage, p in latency.items():
        lines.append(f"{stage:<22}{p['p50']:>9.2f}{p['p95']:>9.2f}{p['p99']:>9.2f}{p['max']:>9.2f}")
    return "\n".join(lines)
