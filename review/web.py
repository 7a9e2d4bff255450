"""What every page of the review app shares: templates, who is signed in, CSRF, errors.

The acting user always comes from the session cookie (``signed_in``), never from a form or
a query. Every POST checks the session's CSRF token (``form_user``), in constant time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from .auth import SignedIn, same_token, session_user
from .queue import local_time
from .store import Store

SESSION_COOKIE = "lineqc_session"
LOGIN_CSRF_COOKIE = "lineqc_login_csrf"  # the sign-in form's double-submit token
HERE = Path(__file__).parent

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every page: inspector input and device metadata are never markup
    undefined=jinja2.StrictUndefined,
)


def when(ts: float) -> str:
    """A Unix time as the plant reads it: the server's local time, with its zone."""
    at = local_time(ts)
    return f"{ts!r} (not a valid time)" if at is None else at.strftime("%Y-%m-%d %H:%M:%S %Z")


def clock(ts: float) -> str:
    """The time of day of a Unix time, for times within the hour (an answer's window)."""
    at = local_time(ts)
    return f"{ts!r} (not a valid time)" if at is None else at.strftime("%H:%M:%S")


def with_query(path: str, params: dict[str, str]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def ratio(value: float | None) -> str:
    """Kappa, accuracy and shares for people: two decimals, "n/a" when undefined."""
    return "n/a" if value is None else f"{value:.2f}"


REASON_WORDS = {  # the decision policy's reason codes (edge/decision.py), for inspectors
    "low_confidence": "low confidence",
    "ambiguous": "two classes nearly tied",
    "below_class_threshold": "below the class's threshold",
    "anomalous": "unlike the good parts the model learnt from",
}


def reason_words(code: str | None) -> str:
    """Why the model was unsure, in words; an unknown code as it is."""
    return "—" if code is None else REASON_WORDS.get(code, code)


_ENV.filters["when"] = when
_ENV.filters["clock"] = clock
_ENV.filters["ratio"] = ratio
_ENV.filters["reason_words"] = reason_words
_ENV.globals["with_query"] = with_query


def answer_keys(
    classes: list[str], extra: tuple[tuple[str, str], ...] = ()
) -> list[tuple[str, str]]:
    """(key, label) per answer button: 1..9 for the first nine classes in order (a tenth
    class and beyond get a button without a key), then ``extra`` (unsure, skip)."""
    keys = [(str(i) if i <= 9 else "", c) for i, c in enumerate(classes, start=1)]
    return [*keys, *extra]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", getattr(request.state, "user", None))
    html = _ENV.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)


class NotSignedIn(Exception):
    """An anonymous request to a page that needs a user (a redirect or a 401)."""


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def signed_in(request: Request) -> SignedIn:
    user = session_user(store_of(request), request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise NotSignedIn()
    request.state.user = user  # for the page header
    return user


Inspector = Annotated[SignedIn, Depends(signed_in)]


def admin_user(user: Inspector) -> SignedIn:
    if not user.is_admin:
        raise HTTPException(403, "this page is for admins")
    return user


async def form_user(request: Request, user: Inspector) -> SignedIn:
    """The signed-in user of a POST whose form carries the session's CSRF token."""
    form = await request.form()
    token = form.get("csrf")
    if not same_token(user.csrf, token if isinstance(token, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return user


Admin = Annotated[SignedIn, Depends(admin_user)]
Poster = Annotated[SignedIn, Depends(form_user)]  # a POST with the right CSRF token


async def form_admin(user: Poster) -> SignedIn:
    return admin_user(user)


AdminPoster = Annotated[SignedIn, Depends(form_admin)]


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def safe_next(target: str | None) -> str:
    """A local path to go to after signing in (never another site: no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/queue"
