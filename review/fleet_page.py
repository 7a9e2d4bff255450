"""The fleet page (admins): each device's active and candidate bundle, its rollout state and
the reason of a refusal or rollback, from the fleet table that ``lineqc fleet watch`` and
``lineqc fleet deploy --db`` keep (``fleet.py``), and the latest steps. And the artifact
store for devices: ``/bundles/<sha256>.tar`` from ``serve --bundle-store`` (no sign-in: a
device has no account, and a bundle is signed and named by its hash; Range for resumed
downloads)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select

from .store import FleetDevice, FleetEvent
from .web import Admin, render, store_of

router = APIRouter()
EVENTS = 100  # the latest steps shown
TAR_NAME = re.compile(r"[0-9a-f]{64}\.tar")


@router.get("/fleet")
def fleet_page(request: Request, user: Admin) -> Response:
    with store_of(request).session() as s:
        devices = list(s.scalars(select(FleetDevice).order_by(FleetDevice.target)))
        events = list(s.scalars(select(FleetEvent).order_by(FleetEvent.id.desc()).limit(EVENTS)))
        s.expunge_all()
    return render(request, "fleet.html", devices=devices, events=events)


@router.get("/bundles/{name}")
def bundle_tar(request: Request, name: str) -> Response:
    store: Path | None = request.app.state.bundle_store
    if store is None or not TAR_NAME.fullmatch(name) or not (store / name).is_file():
        raise HTTPException(404, "no such bundle")
    return FileResponse(store / name, media_type="application/x-tar")
