"""The inspectors' web app: sign-in, the queue, the frame page, labelling.

``create_app(store)`` builds the FastAPI app (tests drive it with TestClient);
``serve(args)`` runs it with uvicorn for ``lineqc review serve``. Admin pages (agreement,
settings, adjudication) live in ``admin.py``; images, defect-map overlays and the guide's
examples in ``media.py``; the class guide in ``guide.py``; shared page plumbing in ``web.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineqc.errors import LineqcError

from . import admin, health, logs, media
from .auth import (
    SESSION_TTL_S,
    authenticate,
    end_session,
    new_token,
    same_token,
    start_session,
)
from .conflicts import ConflictFinder, KnownLabels
from .fleet_page import router as fleet_router
from .frameview import frame_view
from .guide import Guide
from .middleware import MAX_BODY_BYTES, BodyLimit, SecurityHeaders
from .monitor import MonitorConfig, load_config
from .queue import (
    CHANGE_WINDOW_S,
    Filters,
    QueueError,
    answer_of,
    build_queue,
    changeable_until,
    history_of,
    last_answer,
    parse_page,
    record_answer,
)
from .store import SKIP, UNSURE, Adjudication, Frame, Store, User, get_frame
from .throttle import SignInThrottle
from .web import (
    HERE,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Inspector,
    NotSignedIn,
    Poster,
    answer_keys,
    render,
    safe_next,
    store_of,
    wants_html,
    with_query,
)

log = logging.getLogger("lineqc.review.app")
KEY_UNSURE = "u"
KEY_SKIP = "s"


def create_app(
    store: Store,
    max_body_bytes: int = MAX_BODY_BYTES,
    *,
    guide: Guide | None = None,
    change_window_s: float = CHANGE_WINDOW_S,
    throttle: SignInThrottle | None = None,
    trusted_proxies: Sequence[str] = (),
    monitor: MonitorConfig | None = None,
    bundle_store: Path | None = None,
) -> FastAPI:
    """The app on ``store``; ``guide``: the class guide (default: built-in descriptions and
    examples from the store); ``change_window_s``: how long an answer may be changed;
    ``throttle``: failed sign-ins (default: the standard limits); ``trusted_proxies``: the
    addresses (or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed;
    ``monitor``: the collector's monitoring config (its bucket and thresholds, for the
    line-health page and /metrics); ``bundle_store``: the folder of ``lineqc fleet publish``,
    served to devices at /bundles/<sha256>.tar."""
    app = FastAPI(title="lineqc review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.guide = guide if guide is not None else Guide()
    manifest = app.state.guide.manifest  # with --dataset: label conflicts are flagged
    app.state.conflicts = ConflictFinder(KnownLabels.of(manifest)) if manifest is not None else None
    app.state.change_window_s = change_window_s
    app.state.throttle = throttle if throttle is not None else SignInThrottle()
    app.state.monitor = monitor if monitor is not None else MonitorConfig()
    app.state.bundle_store = bundle_store
    app.state.metrics = health.metrics_registry(store, app.state.monitor)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(SecurityHeaders)  # on every response, errors included
    if trusted_proxies:  # outermost: the client and scheme every other layer sees
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(trusted_proxies))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_error_pages(app)
    _add_sign_in(app)
    _add_inspection(app)
    app.include_router(fleet_router)
    app.include_router(media.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    return app


# ---- errors -------------------------------------------------------------------------------


def _error(request: Request, status: int, message: str) -> Response:
    if wants_html(request):
        return render(request, "error.html", status, status=status, message=message)
    return PlainTextResponse(message, status)


def _add_error_pages(app: FastAPI) -> None:
    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if request.method == "GET" and wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(with_query("/login", {"next": target}), 303)
        return PlainTextResponse("sign in first", 401)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        response = _error(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        return _error(request, 400, f"bad request: {where}")

    @app.exception_handler(QueueError)
    async def queue_error(request: Request, exc: QueueError) -> Response:
        return _error(request, exc.status, str(exc))


# ---- signing in and out -------------------------------------------------------------------


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    # The scheme the browser used: behind a TLS proxy listed with --trusted-proxy, its
    # X-Forwarded-Proto (the proxy middleware rewrote the scope); from anyone else, ours.
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def _login_page(request: Request, next_path: str, error: str | None, status: int) -> Response:
    # A fresh double-submit token per form: the POST must echo the cookie's value.
    token = new_token()
    response = render(request, "login.html", status, csrf=token, next=next_path, error=error)
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, 3600)
    return response


def _throttled(request: Request, next_path: str, wait: float) -> Response:
    seconds = math.ceil(wait)
    message = f"too many failed sign-ins: try again in {seconds} s"
    response = _login_page(request, next_path, message, 429)
    response.headers["retry-after"] = str(seconds)
    return response


def _add_sign_in(app: FastAPI) -> None:
    @app.get("/login")
    def login_form(request: Request, next: str = "/queue") -> Response:
        return _login_page(request, safe_next(next), None, 200)

    @app.post("/login")
    def login(
        request: Request,
        name: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/queue",
    ) -> Response:
        if not same_token(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the sign-in page")
        throttle: SignInThrottle = request.app.state.throttle
        address = request.client.host if request.client else "unknown"
        wait = throttle.retry_after(name, address)
        if wait > 0:  # before the (deliberately costly) password hash
            log.warning("sign-in as %r from %s throttled (%.0f s)", name[:100], address, wait)
            return _throttled(request, safe_next(next), wait)
        user_id = authenticate(store_of(request), name, password)
        if user_id is None:
            throttle.failed(name, address)
            log.warning("failed sign-in as %r from %s", name[:100], address)
            return _login_page(request, safe_next(next), "wrong name or password", 401)
        throttle.succeeded(name)
        response = RedirectResponse(safe_next(next), 303)
        token = start_session(store_of(request), user_id)
        _set_cookie(request, response, SESSION_COOKIE, token, int(SESSION_TTL_S))
        _set_cookie(request, response, LOGIN_CSRF_COOKIE, "", 0)  # deleted
        return response

    @app.post("/logout")
    def logout(request: Request, user: Poster) -> Response:
        end_session(store_of(request), request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", 303)
        _set_cookie(request, response, SESSION_COOKIE, "", 0)  # deleted
        return response


# ---- the queue, the frame page, labelling, images ------------------------------------------


def _choices(store: Store) -> dict[str, list[str]]:
    """The values each filter can take (every stored frame's)."""
    columns = {
        "line": Frame.line,
        "device": Frame.device,
        "camera": Frame.camera,
        "predicted": Frame.predicted,
    }
    with store.session() as s:
        return {
            key: list(s.scalars(select(col).distinct().order_by(col)))
            for key, col in columns.items()
        }


def _frame_url(frame: Frame | None, filters: Filters) -> str:
    path = f"/frame/{frame.id}" if frame else "/queue"
    return with_query(path, filters.as_params())


ANSWER_EXTRAS = ((KEY_UNSURE, UNSURE), (KEY_SKIP, SKIP))


def _page_url(filters: Filters, page: int) -> str:
    return with_query("/queue", {**filters.as_params(), "page": str(page)})


def _answer_view(s: Session, request: Request, frame: Frame, user_id: int) -> dict[str, Any]:
    """The inspector's own answer on the frame page: what they answered, until when they may
    change it, what they replaced, and their last answer elsewhere (the back key)."""
    window: float = request.app.state.change_window_s
    now = time.time()
    mine = answer_of(s, frame.id, user_id)
    until = changeable_until(mine, s.get(Adjudication, frame.id) is not None, window)
    last = last_answer(s, user_id)
    if last is not None and (last.frame_pk == frame.id or now > last.created_at + window):
        last = None
    return {
        "mine": mine if mine is not None and mine.label != SKIP else None,
        "change_until": until if until is not None and now <= until else None,
        "history": history_of(s, frame.id, user_id),
        "last": last,
    }


def _add_inspection(app: FastAPI) -> None:
    @app.get("/")
    def home(user: Inspector) -> Response:
        return RedirectResponse("/queue", 303)

    @app.get("/queue")
    def queue_page(request: Request, user: Inspector) -> Response:
        filters = Filters.parse(request.query_params)
        number = parse_page(request.query_params.get("page"))
        store = store_of(request)
        with store.session() as s:
            queue = build_queue(s, user.user_id, filters)
            page = queue.page(number)
            return render(
                request,
                "queue.html",
                queue=queue,
                page=page,
                prev_url=_page_url(filters, page.number - 1) if page.number > 1 else None,
                next_url=_page_url(filters, page.number + 1) if page.number < page.pages else None,
                filters=filters,
                params=filters.as_params(),
                choices=_choices(store),
            )

    @app.get("/next")
    def next_frame(request: Request, user: Inspector) -> Response:
        filters = Filters.parse(request.query_params)
        with store_of(request).session() as s:
            first = build_queue(s, user.user_id, filters).first
        return RedirectResponse(_frame_url(first, filters), 303)

    @app.get("/frame/{frame_pk}")
    def frame_page(request: Request, frame_pk: int, user: Inspector) -> Response:
        filters = Filters.parse(request.query_params)
        with store_of(request).session() as s:
            frame = get_frame(s, frame_pk)
            if frame is None:
                raise HTTPException(404, f"no frame {frame_pk}")
            waiting = build_queue(s, user.user_id, filters).waiting
            answer = _answer_view(s, request, frame, user.user_id)
        return render(
            request,
            "frame.html",
            **frame_view(request, frame),
            **answer,
            keys=answer_keys(frame.classes, ANSWER_EXTRAS),
            change_keys=answer_keys(frame.classes, ANSWER_EXTRAS[:1]),  # a change: no skip
            waiting=waiting,
            filters=filters,
            params=filters.as_params(),
        )

    @app.post("/frame/{frame_pk}/label")
    def label(
        request: Request,
        frame_pk: int,
        user: Poster,
        label: Annotated[str, Form()] = "",
    ) -> Response:
        filters = Filters.parse(request.query_params)
        store = store_of(request)
        window = request.app.state.change_window_s
        record_answer(store, user.user_id, frame_pk, label, window)  # as the session's user
        with store.session() as s:
            following = build_queue(s, user.user_id, filters).first
        return RedirectResponse(_frame_url(following, filters), 303)


def _listen(host: str, port: int) -> socket.socket:
    """Bind before printing the URL, so the URL printed is one that answers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LineqcError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def _trusted_proxy(value: str) -> str:
    """An address or network (CIDR) for --trusted-proxy; LineqcError naming a bad one."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise LineqcError(
            f"--trusted-proxy {value!r}: not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"
        ) from None


def serve(args: argparse.Namespace) -> int:
    """``lineqc review serve``: the app on ``--host``/``--port`` until interrupted."""
    import uvicorn

    guide = Guide.load(
        Path(args.dataset) if args.dataset else None, Path(args.guide) if args.guide else None
    )
    window = float(args.change_window)
    if not window >= 0:  # NaN too
        raise LineqcError(f"--change-window {window:g}: must be 0 (no changes) or more seconds")
    proxies = [_trusted_proxy(value) for value in args.trusted_proxy]
    logs.configure()  # failed and throttled sign-ins are logged
    store = Store(args.db, args.images)
    with store.session() as s:
        users = s.scalar(select(func.count(User.id))) or 0
    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"review app: http://{host}:{port}/", flush=True)
    if not users:
        print(
            "no accounts yet: create one with `lineqc review add-user NAME --password-stdin`",
            file=sys.stderr,
            flush=True,
        )
    config = uvicorn.Config(
        create_app(
            store,
            guide=guide,
            change_window_s=window,
            trusted_proxies=proxies,
            monitor=load_config(getattr(args, "monitor_config", None)),
            bundle_store=getattr(args, "bundle_store", None),
        ),
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # only create_app's, only from --trusted-proxy addresses
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
    return 0
