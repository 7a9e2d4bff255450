"""How urgent a waiting frame is: one score in [0, 1] per frame, the highest reviewed first.

    priority = 0.5 * uncertainty + 0.3 * rarity + 0.2 * age

- uncertainty = ((1 - p1) + (1 - (p1 - p2))) / 2, with p1 >= p2 the two highest class
  probabilities: 0 when the model put everything on one class, near 1 when it spread its
  belief thinly or could not separate its top two classes. Both terms matter: a low top
  probability and a small top-two margin are the two ways the edge policy flags a frame.
- rarity = 1 - (share of the waiting frames predicted as this frame's class): frames of a
  class that rarely comes up are worth more to the next training set than the hundredth
  frame of a common one.
- age = 1 - 2 ** (-waited / 24 h): grows with time in the queue (half-way after a day), so
  a frame that is neither uncertain nor rare is not starved forever.

Ties go to the frame that waited longest. Pure functions: the queue feeds them numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

W_UNCERTAINTY = 0.5
W_RARITY = 0.3
W_AGE = 0.2
AGE_HALF_LIFE_S = 24 * 3600.0


def uncertainty(probabilities: Sequence[float]) -> float:
    """1 - the mean of the top probability and the top-two margin, in [0, 1]."""
    top = sorted((min(max(float(p), 0.0), 1.0) for p in probabilities), reverse=True)
    p1 = top[0] if top else 0.0
    p2 = top[1] if len(top) > 1 else 0.0
    return ((1.0 - p1) + (1.0 - (p1 - p2))) / 2.0


def rarity(predicted: str, waiting_by_class: Mapping[str, int]) -> float:
    """1 - the share of waiting frames predicted as ``predicted``, in [0, 1]."""
    total = sum(waiting_by_class.values())
    if total <= 0:
        return 0.0
    return 1.0 - waiting_by_class.get(predicted, 0) / total


def age(waited_s: float, half_life_s: float = AGE_HALF_LIFE_S) -> float:
    """0 for a frame that just arrived, 0.5 after ``half_life_s``, towards 1 after that."""
    return 1.0 - 0.5 ** (max(waited_s, 0.0) / half_life_s)


def priority(
    probabilities: Sequence[float],
    predicted: str,
    waiting_by_class: Mapping[str, int],
    waited_s: float,
) -> float:
    """The weighted score of the module docstring."""
    return (
        W_UNCERTAINTY * uncertainty(probabilities)
        + W_RARITY * rarity(predicted, waiting_by_class)
        + W_AGE * age(waited_s)
    )
