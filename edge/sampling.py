"""Active-learning sampling: which frames go to review, and their JPEG within the size limit.

Every uncertain frame is sampled (unless switched off), plus a random ``audit_share`` of the
confident ones, at most ``audit_cap_per_hour`` audits per class, and at most
``max_per_minute`` samples of any kind. Every refusal is counted, never silent.
"""

from __future__ import annotations

import collections
import random
import time

import cv2
import numpy as np

from .config import SamplingConfig
from .decision import Decision
from .wire import dumps, image_part

MIN_QUALITY = 40
SHRINK_STEPS = (1.0, 0.75, 0.5, 0.35, 0.25)


class Sampler:
    def __init__(
        self, cfg: SamplingConfig, clock: collections.abc.Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.clock = clock
        self.counters: collections.Counter[str] = collections.Counter()
        self._audits: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._recent: collections.deque[float] = collections.deque()

    def choose(self, decision: Decision) -> str | None:
        """'uncertain', 'audit' or None for one frame's decision."""
        if decision.verdict == "uncertain":
            if not self.cfg.uncertain:
                return None
            why = "uncertain"
        else:
            if self.cfg.audit_share <= 0 or self.rng.random() >= self.cfg.audit_share:
                return None
            cap = self.cfg.audit_cap_per_hour.get(
                decision.label, self.cfg.default_audit_cap_per_hour
            )
            seen = self._audits[decision.label]
            now = self.clock()
            while seen and now - seen[0] > 3600:
                seen.popleft()
            if len(seen) >= cap:
                self.counters["audit_capped"] += 1
                return None
            why = "audit"
        if self.cfg.max_per_minute:
            now = self.clock()
            while self._recent and now - self._recent[0] > 60:
                self._recent.popleft()
            if len(self._recent) >= self.cfg.max_per_minute:
                self.counters[f"rate_limited_{why}"] += 1
                return None
            self._recent.append(now)
        if why == "audit":
            self._audits[decision.label].append(self.clock())
        self.counters[f"sampled_{why}"] += 1
        return why


def encode_sample(
    doc: dict[str, object], frame: np.ndarray, quality: int, max_bytes: int
) -> tuple[bytes, str | None]:
    """The sample message with its JPEG, re-encoded smaller until it fits ``max_bytes``.

    Returns (payload, note): note is None when the frame went as captured at ``quality``,
    'image_reencoded' when it had to be shrunk, 'image_refused_oversized' when even the
    smallest encoding did not fit (the message then carries the metadata and the reason).
    """
    h, w = frame.shape[:2]
    qualities = sorted({quality, min(quality, 75), MIN_QUALITY}, reverse=True)
    for scale in SHRINK_STEPS:
        image = frame
        if scale < 1.0:
            size = (max(8, round(w * scale)), max(8, round(h * scale)))
            image = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        for q in qualities:
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
            if not ok:
                break
            part = image_part(jpeg.tobytes(), image.shape[1], image.shape[0], q, scale)
            payload = dumps({**doc, "image": part, "image_error": None})
            if len(payload) <= max_bytes:
                return payload, (None if (scale, q) == (1.0, quality) else "image_reencoded")
    reason = f"frame {w}x{h} does not fit in {max_bytes} bytes even at 25% scale and quality 40"
    return dumps({**doc, "image": None, "image_error": reason}), "image_refused_oversized"
