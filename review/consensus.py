"""What the inspectors' answers on one frame add up to: the one definition of "labelled".

A frame asks for ``required_reviews`` answers (2 for the double-review share). Skips do not
count. When every required answer is the same class, the frame is ``agreed`` (with one
required answer that answer is the label). Different classes, or any "unsure", make it
``disputed``: it waits in the adjudication view until an adjudicator gives the final word
(``adjudicated``). Only agreed and adjudicated labels become training labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .store import SKIP, UNSURE

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
