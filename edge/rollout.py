"""Fleet rollout on the device: A/B bundle slots, download, shadow, switch and rollback.

A ``deploy`` command (``wire.Deploy``, retained on the device's ``cmd`` topic) names the
bundle the fleet wants here: its version, the sha256 and size of its tar and where to fetch
it. The device keeps two slots, ``a`` and ``b``, under ``rollout.dir``, beside the bundle
its config names (``config``), and one pointer file, ``rollout.json``, replaced atomically:
it says which slot is active, which one was before, and where the deploy stands. So a
SIGKILL at any moment leaves the device on a bundle that worked: before the pointer is
replaced, the old one; after, the new one, on probation.

Steps, each reported in the status's ``rollout``:

1. ``downloading``: HTTP(S) with ``Range`` resume into ``download/<sha256>.part``, never
   past the deploy's ``size``; then the sha256 of the whole tar.
2. unpacked into the inactive slot and verified by ``load_bundle`` (signature, hashes); its
   version must be the deploy's, and not older than the running one (``downgrade_to``).
3. ``shadow`` (stage shadow): the candidate runs beside the active model on a share of the
   frames, in its own thread, off the hot path; promoted when the agreement, the latency and
   the uncertain share pass the deploy's bounds, else ``shadow_failed``.
4. the switch, between two frames, then ``probation`` for ``probation_frames`` frames: too
   many frames over the latency budget, an uncertain share above its bound, or
   ``crash_restarts`` starts that never stopped cleanly roll back to the previous slot
   (``rolled_back`` with the reason); else ``done``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lineqc.atomic import atomic_write_text
from lineqc.errors import LineqcError

from .backends import Backend
from .bundle import Bundle, BundleError, load_bundle, unpack_tar
from .config import DeviceConfig
from .decision import DecisionPolicy, decide
from .outputs import ANOMALY, LOGITS
from .preprocess import preprocess
from .telemetry import Ring, percentiles
from .wire import Deploy

log = logging.getLogger("lineqc.edge.rollout")
SLOTS = ("a", "b")
CONFIG = "config"  # the bundle the device config names: the slot of last resort
STATE_FILE = "rollout.json"
CHUNK = 64 * 1024


class DownloadError(LineqcError):
    """A download that may succeed later (network, server); tried again."""


class Refused(LineqcError):
    """A deploy the device will not install; the message is reported (no paths)."""


# ---- the pointer file ---------------------------------------------------------------------


@dataclass
class SlotState:
    """What ``rollout.json`` holds."""

    active: str = CONFIG
    previous: str | None = None
    phase: str = "idle"  # idle downloading shadow probation done rolled_back refused ...
    reason: str | None = None
    deploy: dict[str, Any] | None = None  # the last deploy admitted (the desired state)
    queued: dict[str, Any] | None = None  # one that came during a probation
    candidate: str | None = None  # the slot being staged or shadowed
    starts: int = 0  # starts during this probation that did not stop cleanly
    clean_stop: bool = True
    versions: dict[str, str] = field(default_factory=dict)  # slot -> version

    @classmethod
    def read(cls, path: Path) -> SlotState:
        try:
            doc = json.loads(path.read_text())
            return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError) as exc:
            log.error("%s is unreadable (%s): starting from the configured bundle", path, exc)
            return cls()

    def write(self, path: Path) -> None:
        """Atomically: a crash leaves the old pointer or the new one, never a torn file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.__dict__, indent=1, sort_keys=True))


# ---- download -----------------------------------------------------------------------------


def download(urls: list[str], part: Path, size: int, sha256: str, cancel: threading.Event) -> Path:
    """Fetch the tar into ``part`` (resuming what is there) and check its sha256. Raises
    DownloadError to try again later, Refused for a tar that is not the one named."""
    errors = []
    for url in urls:
        try:
            _fetch(url, part, size, cancel)
            break
        except DownloadError as exc:
            errors.append(f"{url}: {exc}")
    else:
        raise DownloadError("; ".join(errors))
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)  # never resumed: its bytes are not the named ones
        raise Refused(
            f"deploy: the downloaded bundle's sha256 is {digest.hexdigest()}, not {sha256}"
        )
    return part


def _fetch(url: str, part: Path, size: int, cancel: threading.Event) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    try:
        # the part opens after the stream: "ab" only where the server resumes at ``have``
        with _open_url(url, have) as (resp, have), open(part, "ab" if have else "wb") as out:
            while have < size:
                if cancel.is_set():
                    raise DownloadError("cancelled")
                block = resp.read(min(CHUNK, size - have + 1))
                if not block:
                    break
                if have + len(block) > size:
                    raise Refused(f"deploy: the bundle is larger than the deploy's {size} bytes")
                out.write(block)
                have += len(block)
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(str(getattr(exc, "reason", exc))) from None
    if have < size:
        raise DownloadError(f"connection ended at {have} of {size} bytes (resumed next time)")


@contextlib.contextmanager
def _open_url(url: str, have: int) -> Iterator[tuple[BinaryIO, int]]:
    """(a stream from byte ``have`` on, or from 0 where the server ignores Range, and
    where it starts)."""
    if url.startswith("file://"):
        with open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb") as f:
            f.seek(have)
            yield f, have
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        if resp.status == 200:
            have = 0  # the server ignores Range: start over
        elif resp.status != 206:
            raise DownloadError(f"HTTP {resp.status}")
        yield resp, have


# ---- shadow and probation -----------------------------------------------------------------


@dataclass
class Candidate:
    """A verified bundle in a slot, with its policy and an open backend."""

    slot: str
    bundle: Bundle
    policy: DecisionPolicy
    backend: Backend


class Shadow:
    """The candidate on a share of the live frames, in its own thread: the hot path only
    offers a frame (never waits; a full queue drops it, counted)."""

    def __init__(self, cand: Candidate, deploy: Deploy, budget_ms: float) -> None:
        self.cand, self.deploy, self.budget_ms = cand, deploy, budget_ms
        self.q: queue.Queue[tuple[np.ndarray, str, str] | None] = queue.Queue(maxsize=4)
        self.rng = random.Random(deploy.seq)
        self.latency = Ring(max(deploy.shadow_frames, 16))
        self.n = self.agree = self.uncertain_active = self.uncertain_cand = self.dropped = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name="lineqc-shadow", daemon=True)
        self.thread.start()

    def offer(self, image: np.ndarray, verdict: str, label: str) -> None:
        if self.rng.random() >= self.deploy.shadow_share:
            return
        try:
            self.q.put_nowait((image, verdict, label))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            image, verdict, label = item
            t0 = time.perf_counter()
            try:
                x = preprocess(image, self.cand.bundle.spec)[None]
                out = self.cand.backend.infer(x)
                anomaly = out.get(ANOMALY)
                d = decide(
                    out[LOGITS][0], self.cand.policy, None if anomaly is None else float(anomaly[0])
                )
            except Exception as exc:  # a candidate that cannot run fails its shadow
                log.warning("shadow: the candidate failed on a frame: %s", exc)
                self.errors += 1
                continue
            self.latency.add((time.perf_counter() - t0) * 1000)
            self.n += 1
            self.agree += (d.verdict, d.label) == (verdict, label)
            self.uncertain_active += verdict == "uncertain"
            self.uncertain_cand += d.verdict == "uncertain"

    def report(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {
            "frames": self.n,
            "agreement": round(self.agree / n, 4),
            "uncertain_active": round(self.uncertain_active / n, 4),
            "uncertain_candidate": round(self.uncertain_cand / n, 4),
            "latency_ms": percentiles(self.latency.snapshot()),
            "dropped": self.dropped,
            "errors": self.errors,
        }

    def judgement(self) -> tuple[bool, str] | None:
        """None while judging; (passed, why) once ``shadow_frames`` were shadowed."""
        if self.errors:
            return False, f"the candidate failed on {self.errors} shadowed frame(s)"
        if self.n < self.deploy.shadow_frames:
            return None
        r, d = self.report(), self.deploy
        p99 = r["latency_ms"]["p99"]
        delta = r["uncertain_candidate"] - r["uncertain_active"]
        if r["agreement"] < d.min_agreement:
            return False, f"agreement {r['agreement']:.3f} under {d.min_agreement:g}"
        if p99 > self.budget_ms:
            return False, f"latency p99 {p99:.1f} ms over the budget of {self.budget_ms:g} ms"
        if delta > d.max_uncertain_delta:
            return False, f"uncertain share up by {delta:.3f} (bound {d.max_uncertain_delta:g})"
        return True, f"agreement {r['agreement']:.3f}, p99 {p99:.1f} ms over {r['frames']} frames"

    def stop(self) -> None:
        while True:  # what waits is dropped: the thread takes the end mark next
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self.q.put_nowait(None)
        self.thread.join(timeout=5)


@dataclass
class Probation:
    """The frames after a switch, judged against the deploy's bounds."""

    frames: int
    max_over_budget: float
    max_uncertain: float
    n: int = 0
    over_budget: int = 0
    uncertain: int = 0

    def record(self, verdict: str, over_budget: bool) -> None:
        self.n += 1
        self.over_budget += over_budget
        self.uncertain += verdict == "uncertain"

    def judgement(self) -> tuple[bool, str] | None:
        """(False, why) as soon as a bound is broken for the window; (True, ...) at its end."""
        if self.over_budget > self.max_over_budget * self.frames:
            return False, (
                f"latency: {self.over_budget} of {self.n} frames over the budget "
                f"(bound {self.max_over_budget:g} of {self.frames})"
            )
        if self.uncertain > self.max_uncertain * self.frames:
            return False, (
                f"uncertain share: {self.uncertain} of {self.n} frames uncertain "
                f"(bound {self.max_uncertain:g} of {self.frames})"
            )
        if self.n >= self.frames:
            return True, f"{self.n} frames within the bounds"
        return None

    def report(self) -> dict[str, int]:
        return {"frames": self.n, "of": self.frames, "over_budget": self.over_budget,
                "uncertain": self.uncertain}  # fmt: skip


# ---- the slots ------------------------------------------------------------------------------


class Slots:
    """The A/B slots and their pointer file; a worker thread downloads and stages a deploy.

    The runtime calls ``boot`` once, ``offer`` with each admitted deploy, and the rest from
    its loop between frames; ``staged`` hands it a verified candidate with an open backend."""

    def __init__(
        self,
        cfg: DeviceConfig,
        open_backend: Callable[[Bundle], Backend],
        policy_for: Callable[[Bundle], DecisionPolicy],
        on_change: Callable[[], None],
    ) -> None:
        self.cfg, self.dir = cfg, cfg.rollout_dir
        self.open_backend, self.policy_for, self.on_change = open_backend, policy_for, on_change
        self.path = self.dir / STATE_FILE
        self.state = SlotState.read(self.path)
        self.lock = threading.Lock()
        self.staged: Candidate | None = None
        self.cancel = threading.Event()
        self.worker: threading.Thread | None = None
        self.shadow: Shadow | None = None
        self.probation: Probation | None = None

    def slot_path(self, slot: str) -> Path:
        return self.cfg.model.bundle if slot == CONFIG else self.dir / slot

    def save(self) -> None:
        with self.lock:
            self.state.write(self.path)
        self.on_change()

    def set_phase(self, phase: str, reason: str | None = None) -> None:
        self.state.phase, self.state.reason = phase, reason
        (log.warning if phase in ("refused", "rolled_back", "shadow_failed") else log.info)(
            "rollout: %s%s", phase, f" ({reason})" if reason else ""
        )
        self.save()

    @property
    def deploy(self) -> Deploy | None:
        return None if self.state.deploy is None else Deploy.model_validate(self.state.deploy)

    # ---- start -------------------------------------------------------------------------------

    def boot(self) -> Bundle:
        """The bundle to start with: the active slot, unless this start ends a crash loop
        on probation or the slot does not verify; then the previous, then the configured."""
        st = self.state
        if st.phase == "probation" and not st.clean_stop:
            st.starts += 1
            if st.starts >= self.cfg.rollout.crash_restarts:
                self._point_back(
                    f"crash loop: {st.starts} starts on probation without a clean stop"
                )
        st.clean_stop = False
        for slot in dict.fromkeys([st.active, st.previous or CONFIG, CONFIG]):
            try:
                bundle = load_bundle(self.slot_path(slot), self.cfg.model.public_key)
            except BundleError as exc:
                if slot == CONFIG:
                    raise
                log.error("rollout: slot %s does not load (%s); trying the one before", slot, exc)
                self._point_back(f"slot {slot} does not verify")
                continue
            if slot != st.active:
                st.active = slot
            st.versions[slot] = bundle.version
            self.save()
            return bundle
        raise AssertionError("unreachable: the configured bundle raised above")

    def _point_back(self, why: str) -> None:
        st = self.state
        st.active, st.previous, st.starts, st.candidate = st.previous or CONFIG, None, 0, None
        st.phase, st.reason = "rolled_back", why
        log.error("rollout: rolled back to slot %s: %s", st.active, why)

    def resume(self, running: str) -> None:
        """After a restart: carry on with a deploy that was under way."""
        st = self.state
        if st.phase in ("downloading", "staged", "shadow") and st.deploy is not None:
            self._start(Deploy.model_validate(st.deploy), running)

    def clean_stop(self) -> None:
        self.cancel.set()
        if self.shadow is not None:
            self.shadow.stop()
        self.state.clean_stop = True
        self.save()

    # ---- a deploy ------------------------------------------------------------------------------

    def already_have(self, seq: int) -> bool:
        """Whether a deploy of this seq (a retained copy met again) was admitted before."""
        deploy = self.state.deploy
        return deploy is not None and seq <= int(deploy["seq"])

    def offer(self, deploy: Deploy, running: str) -> None:
        """A deploy just admitted; Refused for one the device will not take (the reply)."""
        bad = [u for u in deploy.urls if not u.startswith(("http://", "https://", "file://"))]
        if bad:
            raise Refused(f"deploy: only http(s):// and file:// URLs, not {bad[0]!r}")
        if deploy.size > self.cfg.rollout.max_bundle_bytes:
            raise Refused(
                f"deploy: the bundle's {deploy.size} bytes exceed rollout.max_bundle_bytes "
                f"({self.cfg.rollout.max_bundle_bytes})"
            )
        if self.probation is not None:  # its slot is the rollback target: after it
            self.state.queued = deploy.model_dump()
            self.save()
            return
        if deploy.version == running:  # e.g. a canary, then the whole line: nothing to fetch
            self.discard_candidate()
            self.state.deploy, self.state.candidate = deploy.model_dump(), None
            self.set_phase("done", f"already running {running}")
            return
        self._start(deploy, running)

    def _start(self, deploy: Deploy, running: str) -> None:
        self.discard_candidate()
        st = self.state
        st.deploy, st.queued = deploy.model_dump(), None
        st.candidate = next(s for s in SLOTS if s != st.active)
        self.set_phase("downloading")
        self.cancel = threading.Event()
        self.worker = threading.Thread(
            target=self._work, args=(deploy, st.candidate, running, self.cancel),
            name="lineqc-rollout", daemon=True,
        )  # fmt: skip
        self.worker.start()

    def discard_candidate(self) -> None:
        self.cancel.set()
        if self.worker is not None:
            self.worker.join()
            self.worker = None
        if self.shadow is not None:
            self.shadow.stop()
            self.shadow = None
        if self.staged is not None:
            self.staged.backend.close()
            self.staged = None

    def _work(self, deploy: Deploy, slot: str, running: str, cancel: threading.Event) -> None:
        part = self.dir / "download" / f"{deploy.sha256}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        for old in part.parent.glob("*.part"):
            if old != part:
                old.unlink(missing_ok=True)
        while not cancel.is_set():
            try:
                tar = download(deploy.urls, part, deploy.size, deploy.sha256, cancel)
                break
            except DownloadError as exc:
                if cancel.is_set():
                    return
                log.warning("rollout: download of %s: %s; again in %g s", deploy.version, exc,
                            self.cfg.rollout.retry_s)  # fmt: skip
                self.state.reason = f"download: {exc}"
                self.on_change()
                cancel.wait(self.cfg.rollout.retry_s)
            except Refused as exc:
                self.set_phase("refused", str(exc))
                return
        else:
            return
        try:
            cand = self._stage(deploy, tar, slot, running)
        except Refused as exc:
            self.set_phase("refused", str(exc))
            return
        if cancel.is_set():
            cand.backend.close()
            return
        self.staged = cand
        self.state.versions[slot] = cand.bundle.version
        self.set_phase("shadow" if deploy.stage == "shadow" else "staged")

    def _stage(self, deploy: Deploy, tar: Path, slot: str, running: str) -> Candidate:
        """Unpack into the slot and verify; the bundle must be the version the deploy names."""
        target = self.slot_path(slot)
        staging = self.dir / f".staging-{slot}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            unpack_tar(tar, staging)
            bundle = load_bundle(staging, self.cfg.model.public_key)
        except BundleError as exc:
            log.warning("rollout: %s refused: %s", deploy.version, exc)
            shutil.rmtree(staging, ignore_errors=True)
            raise Refused("deploy: the bundle does not verify (see the device log)") from None
        if bundle.version != deploy.version:
            shutil.rmtree(staging, ignore_errors=True)
            raise Refused(f"deploy: the bundle is version {bundle.version}, not {deploy.version}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        tar.unlink(missing_ok=True)
        bundle = load_bundle(target, self.cfg.model.public_key)  # its root is the slot now
        try:
            backend = self.open_backend(bundle)
            policy = self.policy_for(bundle)
        except (LineqcError, ValueError) as exc:
            log.warning("rollout: %s cannot run here: %s", deploy.version, exc)
            raise Refused(
                "deploy: the bundle's model cannot run here (see the device log)"
            ) from None
        return Candidate(slot, bundle, policy, backend)

    # ---- between frames --------------------------------------------------------------------------

    def start_shadow(self, budget_ms: float) -> None:
        deploy = self.deploy
        if self.staged is not None and deploy is not None and self.shadow is None:
            self.shadow = Shadow(self.staged, deploy, budget_ms)

    def switched(self, old_slot: str) -> None:
        """The runtime runs the candidate now: the pointer moves (atomically), probation."""
        assert self.staged is not None and self.state.deploy is not None
        deploy = Deploy.model_validate(self.state.deploy)
        st = self.state
        st.previous, st.active, st.candidate, st.starts = old_slot, self.staged.slot, None, 0
        self.probation = Probation(
            deploy.probation_frames, deploy.max_over_budget_share, deploy.max_uncertain_share
        )
        self.staged = None
        if self.shadow is not None:
            self.shadow.stop()
            self.shadow = None
        self.set_phase("probation")

    def resume_probation(self) -> None:
        """A start during probation judges the switch again from its first frame."""
        deploy = self.deploy
        if self.state.phase == "probation" and deploy is not None:
            self.probation = Probation(
                deploy.probation_frames, deploy.max_over_budget_share, deploy.max_uncertain_share
            )

    def end_probation(self, passed: bool, why: str) -> None:
        self.probation = None
        if passed:
            self.state.starts = 0
            self.set_phase("done", why)
        else:
            self._point_back(why)
            self.save()
        if self.state.queued is not None:
            queued = Deploy.model_validate(self.state.queued)
            self._start(queued, self.state.versions.get(self.state.active, "0"))

    def report(self, running: str) -> dict[str, Any]:
        st = self.state
        deploy = st.deploy or {}
        out: dict[str, Any] = {
            "active_slot": st.active,
            "active": running,
            "previous_slot": st.previous,
            "candidate": deploy.get("version") if st.phase in (
                "downloading", "staged", "shadow") else None,
            "state": st.phase,
            "reason": st.reason,
            "deploy": deploy.get("id"),
            "stage": deploy.get("stage"),
        }  # fmt: skip
        if self.shadow is not None:
            out["shadow"] = self.shadow.report()
        if self.probation is not None:
            out["probation"] = self.probation.report()
        return out
