"""One inspector's queue, and recording an inspector's answer.

A frame waits in inspector U's queue while its consensus (``consensus.py``) is pending and U
has not answered it. A skip is stored as U's answer ``SKIP``: the frame goes to the back of
U's queue (skipped frames oldest skip first) and stays in everyone else's; a later real
answer replaces the skip, so there is one row per (frame, inspector).

U may change an answer for ``change_window_s`` seconds after giving it (a slip of the key,
a second look), unless an admin has adjudicated the frame. The row in ``reviews`` then holds
the new answer (the one that counts) and ``review_history`` the one it replaced, as it does
for a replaced skip: nothing is overwritten without a trace.

Gold frames (known labels, ``gold.py``) are slipped in until U has answered each of them:
before each new frame a stable draw, with probability ``gold_share``, puts one of U's
unanswered gold frames first. The draw depends on how many answers U has given, so it is
the same on every page load and changes with each answer.
"""

from __future__ import annotations

import hashlib
import re
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
from .store import (
    SKIP,
    UNSURE,
    Adjudication,
    Frame,
    Review,
    ReviewHistory,
    Store,
    User,
    get_frame,
    get_setting,
    in_share,
)

QUEUE_PAGE = 24  # frames per queue page (the count covers all of them)
CHANGE_WINDOW_S = 300.0  # how long an inspector may change an answer (lineqc review serve)


class QueueError(LineqcError):
    """A request about the queue that cannot be honoured; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def local_time(ts: float) -> datetime | None:
    """A Unix time in the server's zone (the plant's); None for one no calendar holds (a
    device's broken clock stored before the collector checked capture times)."""
    try:
        return datetime.fromtimestamp(ts).astimezone()
    except (OverflowError, OSError, ValueError):
        return None


def capture_date(ts: float) -> date | None:
    """The capture day in the server's time zone (the plant's), as the filters read it;
    None for a time no calendar holds."""
    at = local_time(ts)
    return None if at is None else at.date()


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
        if self.date_from is None and self.date_to is None:
            return True
        day = capture_date(frame.ts)
        if day is None:  # no date: outside every date range
            return False
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


@dataclass(frozen=True)
class Page:
    number: int  # from 1
    pages: int  # at least 1
    frames: list[Frame]


def parse_page(value: str | None) -> int:
    """A page number from the query (1 when absent); a malformed one is refused."""
    if not value:
        return 1
    if re.fullmatch(r"[1-9][0-9]{0,8}", value) is None:
        raise QueueError(f"page: {value[:20]!r} is not a page number", 400)
    return int(value)


@dataclass
class Queue:
    frames: list[Frame]  # in the order the inspector gets them

    @property
    def waiting(self) -> int:
        return len(self.frames)

    @property
    def first(self) -> Frame | None:
        return self.frames[0] if self.frames else None

    def page(self, number: int) -> Page:
        """Page ``number`` of QUEUE_PAGE frames; past the end (frames labelled since the
        link was made), the last page."""
        pages = max(1, -(-len(self.frames) // QUEUE_PAGE))
        number = min(number, pages)
        start = (number - 1) * QUEUE_PAGE
        return Page(number, pages, self.frames[start : start + QUEUE_PAGE])


def answer_of(s: Session, frame_pk: int, user_id: int) -> Review | None:
    """The inspector's stored answer for a frame (SKIP included), if any."""
    return s.scalar(select(Review).where(Review.frame_pk == frame_pk, Review.user_id == user_id))


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


def changeable_until(
    review: Review | None, adjudicated: bool, change_window_s: float
) -> float | None:
    """Until when this answer may be changed; None when it may not (a skip is no answer)."""
    if review is None or review.label == SKIP or adjudicated or change_window_s <= 0:
        return None
    return review.created_at + change_window_s


def record_answer(
    store: Store,
    user_id: int,
    frame_pk: int,
    label: str,
    change_window_s: float = CHANGE_WINDOW_S,
) -> None:
    """Store ``user_id``'s answer (a class, UNSURE or SKIP) for a frame that waits for it,
    or change their answer within ``change_window_s`` (to a class or UNSURE)."""
    now = time.time()
    with store.write_session() as s:  # two inspectors cannot both take the last slot
        frame = get_frame(s, frame_pk, lock=True)
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
        adjudicated = s.get(Adjudication, frame.id)
        if mine is not None and mine.label != SKIP:
            until = changeable_until(mine, adjudicated is not None, change_window_s)
            _check_change(label, until, now)
            if label != mine.label:
                replace_answer(s, mine, label, now)
            return
        if not frame.is_gold and resolve(frame, rows, adjudicated).state != "pending":
            raise QueueError("this frame no longer waits for review", 409)
        if mine is None:
            s.add(Review(frame_pk=frame.id, user_id=user_id, label=label, created_at=now))
        else:  # a skip, replaced (or a skip again: back of the queue once more)
            replace_answer(s, mine, label, now)


def _check_change(label: str, until: float | None, now: float) -> None:
    if until is None or now > until:
        raise QueueError("you already answered this frame (too late to change it)", 409)
    if label == SKIP:
        raise QueueError("an answer can change to a class or unsure, not to a skip", 400)


def replace_answer(s: Session, review: Review, label: str, now: float) -> None:
    """Give ``review`` a new label, keeping the one it had in ``review_history``."""
    s.add(
        ReviewHistory(
            frame_pk=review.frame_pk,
            user_id=review.user_id,
            label=review.label,
            answered_at=review.created_at,
            replaced_at=now,
        )
    )
    review.label = label
    review.created_at = now


@dataclass(frozen=True)
class Replaced:
    """An answer its inspector replaced (``review_history``), for the pages."""

    inspector: str
    label: str
    answered_at: float
    replaced_at: float


def history_of(s: Session, frame_pk: int, user_id: int | None = None) -> list[Replaced]:
    """The answers replaced on a frame (by one inspector, or by all), oldest first."""
    query = (
        select(User.name, ReviewHistory.label, ReviewHistory.answered_at, ReviewHistory.replaced_at)
        .join(User, User.id == ReviewHistory.user_id)
        .where(ReviewHistory.frame_pk == frame_pk)
        .order_by(ReviewHistory.replaced_at, ReviewHistory.id)
    )
    if user_id is not None:
        query = query.where(ReviewHistory.user_id == user_id)
    return [Replaced(*row) for row in s.execute(query)]


def last_answer(s: Session, user_id: int) -> Review | None:
    """The inspector's latest answer (not a skip): what the "back" key reopens."""
    return s.scalar(
        select(Review)
        .where(Review.user_id == user_id, Review.label != SKIP)
        .order_by(Review.created_at.desc(), Review.id.desc())
        .limit(1)
    )
