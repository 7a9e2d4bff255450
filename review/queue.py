"""One inspector's queue, and recording an inspector's answer.

A frame waits in inspector U's queue while its consensus (``consensus.py``) is pending and U
has not answered it. A skip is stored as U's answer ``SKIP``: the frame goes to the back of
U's queue (skipped frames oldest skip first) and stays in everyone else's; a later real
answer replaces the skip, so there is one row per (frame, inspector).

Gold frames (known labels, ``gold.py``) are slipped in until U has answered each of them:
before each new frame a stable draw, with probability ``gold_share``, puts one of U's
unanswered gold frames first. The draw depends on how many answers U has given, so it is
the same on every page load and changes with each answer.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from lineqc.errors import LineqcError

from .consensus import Consensus, consensus
from .priority import priority
from .store import SKIP, UNSURE, Adjudication, Frame, Review, Store, get_setting, in_share

QUEUE_PAGE = 200  # rows the queue page lists (the count covers all of them)


class QueueError(LineqcError):
    """A request about the queue that cannot be honoured; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def capture_date(ts: float) -> date:
    """The capture day in the server's time zone (the plant's), as the filters read it."""
    return datetime.fromtimestamp(ts).date()


@dataclass(frozen=True)
class Filters:
    """What the inspector narrowed the queue to; None means any."""

    line: str | None = None
    device: str | None = None
    camera: str | None = None
    predicted: str | None = None
    date_from: date | None = None  # capture date, inclusive
    date_to: date | None = None  # capture date, inclusive

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Filters:
        """From query parameters; empty values mean any, a malformed date is refused."""

        def text(key: str) -> str | None:
            return params.get(key, "").strip()[:100] or None

        def day(key: str) -> date | None:
            value = text(key)
            try:
                return date.fromisoformat(value) if value else None
            except ValueError:
                raise QueueError(f"{key}: {value!r} is not a date (YYYY-MM-DD)", 400) from None

        return cls(
            line=text("line"),
            device=text("device"),
            camera=text("camera"),
            predicted=text("predicted"),
            date_from=day("date_from"),
            date_to=day("date_to"),
        )

    def as_params(self) -> dict[str, str]:
        """The non-empty filters as query parameters (to carry them from page to page)."""
        return {
            f.name: str(value) for f in fields(self) if (value := getattr(self, f.name)) is not None
        }

    def matches(self, frame: Frame) -> bool:
        if self.line is not None and frame.line != self.line:
            return False
        if self.device is not None and frame.device != self.device:
            return False
        if self.camera is not None and frame.camera != self.camera:
            return False
        if self.predicted is not None and frame.predicted != self.predicted:
            return False
        day = capture_date(frame.ts)
        if self.date_from is not None and day < self.date_from:
            return False
        return self.date_to is None or day <= self.date_to


def answers_by_frame(s: Session, frame_pks: Iterable[int]) -> dict[int, list[Review]]:
    """Every answer of the given frames, oldest first."""
    pks = list(frame_pks)
    out: dict[int, list[Review]] = {pk: [] for pk in pks}
    for chunk in (pks[i : i + 500] for i in range(0, len(pks), 500)):
        rows = s.scalars(
            select(Review).where(Review.frame_pk.in_(chunk)).order_by(Review.created_at, Review.id)
        )
        for r in rows:
            out[r.frame_pk].append(r)
    return out


def resolve(
    frame: Frame, answers: list[Review], adjudication: Adjudication | None = None
) -> Consensus:
    return consensus(
        frame.required_reviews,
        [a.label for a in answers],
        adjudication.label if adjudication else None,
    )


def _open_frames(s: Session) -> list[Frame]:
    """Frames that can still be pending: not gold, not adjudicated, fewer counted answers
    than required. Only a narrowing for the database; ``consensus`` has the final say."""
    counted = (
        select(func.count(Review.id))
        .where(Review.frame_pk == Frame.id, Review.label != SKIP)
        .correlate(Frame)
        .scalar_subquery()
    )
    adjudicated = exists().where(Adjudication.frame_pk == Frame.id)
    return list(
        s.scalars(
            select(Frame).where(
                Frame.gold_label.is_(None), ~adjudicated, counted < Frame.required_reviews
            )
        )
    )


def _gold_due(user_id: int, answered: int, share: float) -> bool:
    return in_share(f"gold:{user_id}:{answered}", share)


def _gold_order(user_id: int, frame: Frame) -> bytes:
    # Each inspector meets the gold frames in an order of their own.
    return hashlib.sha256(f"{user_id}:{frame.frame_id}".encode()).digest()


@dataclass
class Queue:
    frames: list[Frame]  # in the order the inspector gets them

    @property
    def waiting(self) -> int:
        return len(self.frames)

    @property
    def first(self) -> Frame | None:
        return self.frames[0] if self.frames else None


def answer_of(s: Session, frame_pk: int, user_id: int) -> str | None:
    """The inspector's stored answer for a frame (SKIP included), if any."""
    return s.scalar(
        select(Review.label).where(Review.frame_pk == frame_pk, Review.user_id == user_id)
    )


def build_queue(s: Session, user_id: int, filters: Filters, now: float | None = None) -> Queue:
    """Inspector ``user_id``'s queue under ``filters``, highest priority first."""
    now = time.time() if now is None else now
    frames = _open_frames(s)
    golds = list(s.scalars(select(Frame).where(Frame.gold_label.is_not(None))))
    answers = answers_by_frame(s, [f.id for f in frames + golds])
    pending = [f for f in frames if resolve(f, answers[f.id]).state == "pending"]
    by_class = Counter(f.predicted for f in pending)

    skipped_at: dict[int, float] = {}
    answered: set[int] = set()
    for pk, rows in answers.items():
        for r in rows:
            if r.user_id == user_id and r.label == SKIP:
                skipped_at[pk] = r.created_at
            elif r.user_id == user_id:
                answered.add(pk)

    def waiting(candidates: list[Frame]) -> list[Frame]:
        return [f for f in candidates if f.id not in answered and filters.matches(f)]

    mine, my_golds = waiting(pending), waiting(golds)
    fresh = sorted(
        (f for f in mine if f.id not in skipped_at),
        key=lambda f: (
            -priority(f.probabilities, f.predicted, by_class, now - f.received_at),
            f.received_at,
            f.id,
        ),
    )
    fresh_golds = sorted(
        (f for f in my_golds if f.id not in skipped_at), key=lambda f: _gold_order(user_id, f)
    )
    skipped = sorted(
        (f for f in mine + my_golds if f.id in skipped_at), key=lambda f: (skipped_at[f.id], f.id)
    )
    my_count = s.scalar(
        select(func.count(Review.id)).where(Review.user_id == user_id, Review.label != SKIP)
    )
    share = float(get_setting(s, "gold_share"))
    first = fresh_golds[:1] if _gold_due(user_id, int(my_count or 0), share) else []
    return Queue(first + fresh + skipped)


def record_answer(store: Store, user_id: int, frame_pk: int, label: str) -> None:
    """Store ``user_id``'s answer (a class, UNSURE or SKIP) for a frame that waits for it."""
    with store.session() as s:
        # Locks the frame row (PostgreSQL) so two inspectors cannot both take its last slot.
        frame = s.get(Frame, frame_pk, with_for_update=True)
        if frame is None:
            raise QueueError(f"no frame {frame_pk}", 404)
        if label not in frame.classes and label not in (UNSURE, SKIP):
            raise QueueError(
                f"label {label[:100]!r} is not one of {', '.join(frame.classes)}, "
                f"{UNSURE} or {SKIP}",
                400,
            )
        rows = answers_by_frame(s, [frame.id])[frame.id]
        mine = next((r for r in rows if r.user_id == user_id), None)
        if mine is not None and mine.label != SKIP:
            raise QueueError("you already answered this frame", 409)
        adjudicated = s.get(Adjudication, frame.id)
        if not frame.is_gold and resolve(frame, rows, adjudicated).state != "pending":
            raise QueueError("this frame no longer waits for review", 409)
        if mine is None:
            s.add(Review(frame_pk=frame.id, user_id=user_id, label=label, created_at=time.time()))
        else:  # a skip, replaced (or a skip again: back of the queue once more)
            mine.label = label
            mine.created_at = time.time()
