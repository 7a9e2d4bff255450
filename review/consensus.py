"""What the inspectors' answers on one frame add up to: the one definition of "labelled".

A frame asks for ``required_reviews`` answers (2 for the double-review share). Skips do not
count. When every required answer is the same class, the frame is ``agreed`` (with one
required answer that answer is the label). Different classes, or any "unsure", make it
``disputed``: it waits in the adjudication view until an adjudicator gives the final word
(``adjudicated``). Only agreed and adjudicated labels become training labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from .store import SKIP, UNSURE, Adjudication, Review, User

State = Literal["pending", "agreed", "disputed", "adjudicated"]


@dataclass(frozen=True)
class Consensus:
    state: State
    label: str | None  # the training label when agreed or adjudicated
    answers: tuple[str, ...]  # the counted answers (no skips), oldest first
    agreement: float | None  # share of counted answers equal to the label

    @property
    def final(self) -> bool:
        return self.state in ("agreed", "adjudicated")


def consensus(
    required_reviews: int, answers: Sequence[str], adjudicated: str | None = None
) -> Consensus:
    """Resolve one frame from its answers (oldest first) and an adjudication, if any."""
    counted = tuple(a for a in answers if a != SKIP)
    if adjudicated is not None:
        share = sum(a == adjudicated for a in counted) / len(counted) if counted else None
        return Consensus("adjudicated", adjudicated, counted, share)
    if len(counted) < required_reviews:
        return Consensus("pending", None, counted, None)
    first = counted[0]
    if first != UNSURE and all(a == first for a in counted):
        return Consensus("agreed", first, counted, 1.0)
    return Consensus("disputed", None, counted, None)


@dataclass(frozen=True)
class Answer:
    inspector: str
    label: str  # a class, UNSURE or SKIP (an adjudication: a class)
    at: float


@dataclass(frozen=True)
class FrameState:
    consensus: Consensus
    answers: list[Answer]  # oldest first, skips included
    adjudication: Answer | None


def frame_states(s: Session, required: Mapping[int, int]) -> dict[int, FrameState]:
    """The consensus of the frames ``required`` names (pk -> required reviews), with who
    answered what and when: what the admin pages and the label export read."""
    answers: dict[int, list[Answer]] = {pk: [] for pk in required}
    for pk, name, label, at in s.execute(
        select(Review.frame_pk, User.name, Review.label, Review.created_at)
        .join(User, User.id == Review.user_id)
        .order_by(Review.created_at, Review.id)
    ):
        if pk in answers:
            answers[pk].append(Answer(name, label, at))
    final = {
        pk: Answer(name, label, at)
        for pk, name, label, at in s.execute(
            select(
                Adjudication.frame_pk, User.name, Adjudication.label, Adjudication.created_at
            ).join(User, User.id == Adjudication.user_id)
        )
        if pk in answers
    }
    return {
        pk: FrameState(
            consensus(n, [a.label for a in answers[pk]], final[pk].label if pk in final else None),
            answers[pk],
            final.get(pk),
        )
        for pk, n in required.items()
    }
