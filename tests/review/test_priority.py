"""The priority formula, and the queue it orders: uncertainty, rare class and age first, skips
to the back, answered frames out (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from lineqc.edge.wire import Sample
from lineqc.review.auth import add_user
from lineqc.review.priority import age, priority, rarity, uncertainty
from lineqc.review.queue import Filters, build_queue, record_answer
from lineqc.review.store import SKIP, Frame, Review, Store, User, set_setting

NOW = 1790000000.0
DAY = 86400.0


def test_uncertainty() -> None:
    assert uncertainty([1.0, 0.0, 0.0]) == 0.0
    assert uncertainty([0.5, 0.5]) == pytest.approx(0.75)  # no margin, top at one half
    assert uncertainty([0.52, 0.41, 0.07]) == pytest.approx(((1 - 0.52) + (1 - 0.11)) / 2)
    assert uncertainty([0.9, 0.1]) < uncertainty([0.6, 0.4]) < uncertainty([0.5, 0.5])
    assert uncertainty([0.2, 0.7, 0.1]) == uncertainty([0.7, 0.2, 0.1])  # order-free
    assert 0.0 <= uncertainty([0.25] * 4) <= 1.0
    assert uncertainty([]) == 1.0 and uncertainty([1.0]) == 0.0


def test_rarity() -> None:
    waiting = {"ok": 8, "dent": 2}
    assert rarity("dent", waiting) == pytest.approx(0.8)
    assert rarity("ok", waiting) == pytest.approx(0.2)
    assert rarity("scratch", waiting) == 1.0  # none of it waiting
    assert rarity("ok", {}) == 0.0


def test_age() -> None:
    assert age(0) == 0.0
    assert age(-5) == 0.0  # a device clock ahead of the server's
    assert age(DAY) == pytest.approx(0.5)
    assert age(3 * DAY) == pytest.approx(0.875)
    assert age(10 * DAY) < 1.0


def test_priority_is_the_documented_weighted_sum() -> None:
    probs, waiting = [0.6, 0.3, 0.1], {"ok": 3, "dent": 1}
    expected = 0.5 * uncertainty(probs) + 0.3 * rarity("dent", waiting) + 0.2 * age(DAY)
    assert priority(probs, "dent", waiting, DAY) == pytest.approx(expected)


# ---- the queue ----------------------------------------------------------------------------

CLASSES = ["ok", "scratch", "dent"]


def seed(
    store: Store,
    make_sample: Callable[..., Sample],
    frames: dict[str, tuple],
    double_review_share: float = 0.0,
) -> None:
    """frame id -> (probabilities, days in the queue)."""
    with store.session() as s:
        set_setting(s, "double_review_share", double_review_share)
    for frame_id, (probs, days) in frames.items():
        assert store.add_sample(
            make_sample(frame_id, classes=CLASSES, probabilities=probs),
            received_at=NOW - days * DAY,
        )


def users(store: Store, *names: str) -> list[int]:
    for name in names:
        add_user(store, name, "long enough password")
    with store.session() as s:
        by_name = {u.name: u.id for u in s.scalars(select(User))}
    return [by_name[n] for n in names]


def order(store: Store, user_id: int, filters: Filters | None = None) -> list[str]:
    with store.session() as s:
        return [f.frame_id for f in build_queue(s, user_id, filters or Filters(), now=NOW).frames]


def pk(store: Store, frame_id: str) -> int:
    with store.session() as s:
        value = s.scalar(select(Frame.id).where(Frame.frame_id == frame_id))
        assert value is not None
        return value


FRAMES = {
    # priorities with 4 "ok" and 1 "dent" waiting (rarity 0.2 and 0.8):
    "torn": ([0.34, 0.33, 0.33], 0),  # 0.5*0.825 + 0.3*0.2 = 0.4725
    "leaning": ([0.6, 0.3, 0.1], 0),  # 0.5*0.55 + 0.06 = 0.335
    "rare": ([0.05, 0.05, 0.9], 0),  # 0.5*0.125 + 0.3*0.8 = 0.3025
    "old": ([0.9, 0.05, 0.05], 3),  # 0.0625 + 0.06 + 0.2*0.875 = 0.2975
    "sure": ([0.9, 0.05, 0.05], 0),  # 0.0625 + 0.06 = 0.1225
}


def test_queue_order_uncertain_rare_old_first(
    store: Store, make_sample: Callable[..., Sample]
) -> None:
    seed(store, make_sample, FRAMES)
    (ann,) = users(store, "ann")
    assert order(store, ann) == ["torn", "leaning", "rare", "old", "sure"]


def test_skip_goes_to_the_back_for_that_inspector_only(
    store: Store, make_sample: Callable[..., Sample]
) -> None:
    seed(store, make_sample, FRAMES)
    ann, bob = users(store, "ann", "bob")
    record_answer(store, ann, pk(store, "torn"), SKIP)
    record_answer(store, ann, pk(store, "leaning"), SKIP)
    # skipped frames: at the back, oldest skip first
    assert order(store, ann) == ["rare", "old", "sure", "torn", "leaning"]
    assert order(store, bob) == ["torn", "leaning", "rare", "old", "sure"]
    record_answer(store, ann, pk(store, "torn"), SKIP)  # skipped again: to the very back
    assert order(store, ann)[-2:] == ["leaning", "torn"]

    # a real answer replaces the skip: one row per (frame, inspector), and the frame is done
    record_answer(store, ann, pk(store, "torn"), "scratch")
    assert "torn" not in order(store, ann) and "torn" not in order(store, bob)
    with store.session() as s:
        mine = s.execute(select(Review.frame_pk, Review.label).where(Review.user_id == ann))
        assert sorted(tuple(r) for r in mine) == sorted(
            [(pk(store, "torn"), "scratch"), (pk(store, "leaning"), SKIP)]
        )


def test_double_review_frame_waits_for_the_second_inspector(
    store: Store, make_sample: Callable[..., Sample]
) -> None:
    seed(store, make_sample, {"both": ([0.5, 0.3, 0.2], 0)}, double_review_share=1.0)
    ann, bob, cy = users(store, "ann", "bob", "cy")
    record_answer(store, ann, pk(store, "both"), "ok")
    assert order(store, ann) == []  # ann answered it
    assert order(store, bob) == order(store, cy) == ["both"]
    record_answer(store, bob, pk(store, "both"), "ok")
    assert order(store, cy) == []  # agreed: no longer pending for anyone


def test_rarity_counts_all_pending_frames_whatever_the_filter(
    store: Store, make_sample: Callable[..., Sample]
) -> None:
    seed(store, make_sample, FRAMES)
    (ann,) = users(store, "ann")
    assert order(store, ann, Filters(predicted="ok")) == ["torn", "leaning", "old", "sure"]
    assert order(store, ann, Filters(predicted="dent")) == ["rare"]
