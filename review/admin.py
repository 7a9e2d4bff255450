"""Admin pages: agreement and gold audit, the review settings, and adjudication.

Only users created with ``--admin`` see them (others get 403). Frame states come from
``consensus.py``, the one definition of pending / agreed / disputed / adjudicated. With a
dataset (``--dataset``), agreed frames whose label the dataset contradicts for the same part
(``conflicts.py``) wait for adjudication beside the disputed ones.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .agreement import PairAgreement, pair_agreement
from .auth import SignedIn
from .conflicts import ConflictFinder, Known, own_row_id
from .consensus import FrameState, frame_states
from .frameview import frame_view
from .gold import GoldScore, gold_audit
from .queue import answers_by_frame, history_of, resolve
from .store import (
    DEFAULT_SETTINGS,
    SKIP,
    Adjudication,
    Frame,
    Reject,
    get_frame,
    get_setting,
    set_setting,
)
from .web import Admin, AdminPoster, answer_keys, render, store_of

router = APIRouter()
STATES = ("pending", "agreed", "disputed", "adjudicated")
ADJUDICATE_PAGE = 200  # disputed frames the list shows (the count covers all of them)


def _flagged(s: Session) -> dict[int, int]:
    """pk -> required reviews of every flagged (not gold) frame."""
    query = select(Frame.id, Frame.required_reviews).where(Frame.gold_label.is_(None))
    return {pk: n for pk, n in s.execute(query)}


@dataclass(frozen=True)
class Overview:
    states: dict[str, int]
    gold_frames: int
    pairs: list[PairAgreement]
    gold: list[GoldScore]
    rejects: int
    settings: dict[str, float]


def overview(s: Session) -> Overview:
    frames = s.execute(select(Frame.id, Frame.required_reviews, Frame.gold_label)).all()
    gold = {pk for pk, _, label in frames if label is not None}
    states = frame_states(s, {pk: n for pk, n, _ in frames})
    counts: Counter[str] = Counter(
        st.consensus.state for pk, st in states.items() if pk not in gold
    )
    by_frame = {  # agreement counts every frame two inspectors answered, gold ones too
        pk: {a.inspector: a.label for a in st.answers if a.label != SKIP}
        for pk, st in states.items()
    }
    return Overview(
        states={state: counts.get(state, 0) for state in STATES},
        gold_frames=len(gold),
        pairs=pair_agreement(by_frame),
        gold=gold_audit(s),
        rejects=s.scalar(select(func.count(Reject.id))) or 0,
        settings={key: float(get_setting(s, key)) for key in DEFAULT_SETTINGS},
    )


def _admin_page(
    request: Request, user: SignedIn, error: str | None = None, status: int = 200
) -> Response:
    with store_of(request).session() as s:
        view = overview(s)
    return render(
        request, "admin.html", status, view=view, error=error, states=STATES, csrf=user.csrf
    )


def _share(name: str, value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:  # NaN fails too
        raise ValueError(f"{name}: {value[:40]!r} is not a number from 0 to 1")
    return share


@router.get("/admin")
def admin_page(request: Request, user: Admin) -> Response:
    return _admin_page(request, user)


@router.post("/admin/settings")
def change_settings(
    request: Request,
    user: AdminPoster,
    double_review_share: Annotated[str, Form()] = "",
    gold_share: Annotated[str, Form()] = "",
) -> Response:
    try:
        values = {
            "double_review_share": _share("double_review_share", double_review_share),
            "gold_share": _share("gold_share", gold_share),
        }
    except ValueError as exc:
        return _admin_page(request, user, str(exc), 400)
    with store_of(request).session() as s:
        for key, value in values.items():
            set_setting(s, key, value)
    return RedirectResponse("/admin", 303)


@dataclass(frozen=True)
class Waiting:
    """What waits for an admin: disputed frames and label conflicts, oldest capture first."""

    frames: list[Frame]
    states: dict[int, FrameState]  # every flagged frame's
    conflicts: dict[int, Known]  # agreed frames the dataset contradicts

    def needs_admin(self, pk: int) -> bool:
        return self.states[pk].consensus.state == "disputed" or pk in self.conflicts


def _contradiction(request: Request, frame: Frame, label: str | None) -> Known | None:
    """What the app's dataset says of ``frame``'s part when it contradicts ``label``."""
    finder: ConflictFinder | None = request.app.state.conflicts
    if finder is None or frame.image_sha256 is None:
        return None
    own = own_row_id(frame.device, frame.camera, frame.frame_id)
    known = finder.known_for(store_of(request).image_path(frame.image_sha256), own)
    return known if known is not None and known.contradicts(label) else None


def _conflicts(request: Request, s: Session, states: dict[int, FrameState]) -> dict[int, Known]:
    """Agreed frames whose label the app's dataset contradicts (none without a dataset)."""
    agreed = [pk for pk, st in states.items() if st.consensus.state == "agreed"]
    if request.app.state.conflicts is None or not agreed:
        return {}
    out = {}
    for frame in s.scalars(select(Frame).where(Frame.id.in_(agreed))):
        known = _contradiction(request, frame, states[frame.id].consensus.label)
        if known is not None:
            out[frame.id] = known
    return out


def _waiting(request: Request, s: Session) -> Waiting:
    states = frame_states(s, _flagged(s))
    conflicts = _conflicts(request, s, states)
    pks = [pk for pk, st in states.items() if st.consensus.state == "disputed"] + list(conflicts)
    frames = s.scalars(select(Frame).where(Frame.id.in_(pks)).order_by(Frame.ts, Frame.id)).all()
    return Waiting(list(frames), states, conflicts)


@router.get("/adjudicate")
def adjudicate_page(request: Request, user: Admin) -> Response:
    with store_of(request).session() as s:
        waiting = _waiting(request, s)
        items = [
            (f, waiting.states[f.id].answers, waiting.conflicts.get(f.id))
            for f in waiting.frames[:ADJUDICATE_PAGE]
        ]
    return render(request, "adjudicate.html", items=items, waiting=len(waiting.frames))


@router.get("/adjudicate/{frame_pk}")
def adjudicate_frame(request: Request, frame_pk: int, user: Admin) -> Response:
    """One disputed or conflicting frame with the frame page's viewer, guide and keys
    (classes only)."""
    with store_of(request).session() as s:
        frame = get_frame(s, frame_pk)
        if frame is None or frame.is_gold:
            raise HTTPException(404, f"no frame {frame_pk} to adjudicate")
        waiting = _waiting(request, s)
        history = history_of(s, frame.id)
    return render(
        request,
        "adjudicate_frame.html",
        **frame_view(request, frame),
        state=waiting.states[frame.id],
        conflict=waiting.conflicts.get(frame.id),
        open=waiting.needs_admin(frame.id),
        history=history,
        keys=answer_keys(frame.classes),
        waiting=len(waiting.frames),
        csrf=user.csrf,
    )


@router.post("/adjudicate/{frame_pk}")
def adjudicate(
    request: Request,
    frame_pk: int,
    user: AdminPoster,
    label: Annotated[str, Form()] = "",
) -> Response:
    with store_of(request).write_session() as s:
        frame = get_frame(s, frame_pk, lock=True)
        if frame is None or frame.is_gold:
            raise HTTPException(404, f"no frame {frame_pk} to adjudicate")
        if label not in frame.classes:
            raise HTTPException(400, f"label {label[:100]!r} is not one of {frame.classes}")
        answers = answers_by_frame(s, [frame.id])[frame.id]
        result = resolve(frame, answers, s.get(Adjudication, frame.id))
        if result.state != "disputed" and not _contradiction(request, frame, result.label):
            raise HTTPException(409, "this frame is not disputed (anymore)")
        s.add(
            Adjudication(
                frame_pk=frame.id, user_id=user.user_id, label=label, created_at=time.time()
            )
        )
    with store_of(request).session() as s:
        following = _waiting(request, s).frames
    return RedirectResponse(f"/adjudicate/{following[0].id}" if following else "/adjudicate", 303)
