"""The fleet page (admins): each device's active and candidate bundle, its rollout state and
the reason of a refusal or rollback, from the fleet table that ``lineqc fleet watch`` and
``lineqc fleet deploy --db`` keep (``fleet.py``), and the latest steps."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from .store import FleetDevice, FleetEvent
from .web import Admin, render, store_of

router = APIRouter()
EVENTS = 100  # the latest steps shown


@router.get("/fleet")
def fleet_page(request: Request, user: Admin) -> Response:
    with store_of(request).session() as s:
        devices = list(s.scalars(select(FleetDevice).order_by(FleetDevice.target)))
        events = list(s.scalars(select(FleetEvent).order_by(FleetEvent.id.desc()).limit(EVENTS)))
        s.expunge_all()
    return render(request, "fleet.html", devices=devices, events=events)
