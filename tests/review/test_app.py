"""The review web app through FastAPI's TestClient, on SQLite and PostgreSQL: signing in and
out, CSRF, who may do what, body limits, image paths, the queue and its filters, labelling,
double review and adjudication, gold frames and the admin page."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import func, select, update

from lineqc.edge.defect_map import decode_png
from lineqc.edge.defect_map import png as png_bytes
from lineqc.edge.wire import Sample
from lineqc.review.app import create_app
from lineqc.review.auth import add_user
from lineqc.review.gold import add_gold
from lineqc.review.media import OVERLAY_BGR, OVERLAY_MAX_ALPHA
from lineqc.review.queue import CHANGE_WINDOW_S, QUEUE_PAGE
from lineqc.review.store import (
    SKIP,
    UNSURE,
    Adjudication,
    Frame,
    Review,
    ReviewHistory,
    Store,
    User,
    WebSession,
    get_setting,
    set_setting,
)
from lineqc.review.throttle import Limits, SignInThrottle
from lineqc.review.web import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from tests.bombs import bomb_jpeg, bomb_png
from tests.review.kit import defect_map, review_serve

PASSWORD = "long enough password"
CLASSES = ["ok", "scratch", "dent"]


def csrf_in(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def waiting_in(html: str) -> int:
    match = re.search(r'id="waiting-count">(\d+)<', html)
    assert match, "no waiting count on the page"
    return int(match.group(1))


def listed_in(html: str) -> list[int]:
    """The frames a queue page lists, in order."""
    return [int(pk) for pk in re.findall(r'href="/frame/(\d+)', html)]


@dataclass
class Inspector:
    """A signed-in browser: its client (cookies) and its session's CSRF token."""

    name: str
    client: TestClient
    csrf: str

    # Responses are httpx's or httpx2's, by Starlette version: typed Any.
    def get(self, url: str, **kwargs: Any) -> Any:
        return self.client.get(url, follow_redirects=False, **kwargs)

    def post(self, url: str, **data: str) -> Any:
        return self.client.post(url, data={"csrf": self.csrf, **data}, follow_redirects=False)

    def label(self, frame_pk: int, label: str, query: str = "", **extra: str) -> Any:
        return self.post(f"/frame/{frame_pk}/label{query}", label=label, **extra)


@dataclass
class Site:
    """The app on a store, with helpers to seed frames and sign users in."""

    store: Store
    make_sample: Callable[..., Sample]
    users: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.app = create_app(self.store)
        self.settings(double_review_share=0.0, gold_share=0.0)

    def settings(self, **values: float) -> None:
        with self.store.session() as s:
            for key, value in values.items():
                set_setting(s, key, value)

    def add(self, frame_id: str, **fields: Any) -> int:
        fields.setdefault("classes", CLASSES)
        fields.setdefault("probabilities", [0.5, 0.3, 0.2])
        received_at = fields.pop("received_at", None)
        assert self.store.add_sample(self.make_sample(frame_id, **fields), received_at)
        return self.pk(frame_id)

    def pk(self, frame_id: str) -> int:
        with self.store.session() as s:
            value = s.scalar(select(Frame.id).where(Frame.frame_id == frame_id))
            assert value is not None
            return value

    def browser(self) -> TestClient:
        return TestClient(self.app, headers={"accept": "text/html"})

    def user(self, name: str, admin: bool = False) -> int:
        if name not in self.users:
            add_user(self.store, name, PASSWORD, admin=admin)
            with self.store.session() as s:
                self.users[name] = s.scalar(select(User.id).where(User.name == name)) or 0
        return self.users[name]

    def login(self, name: str, admin: bool = False) -> Inspector:
        self.user(name, admin)
        client = self.browser()
        page = client.get("/login")
        response = client.post(
            "/login",
            data={"name": name, "password": PASSWORD, "csrf": csrf_in(page.text)},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        queue = client.get("/queue")
        return Inspector(name, client, csrf_in(queue.text))

    def reviews(self) -> list[tuple[str, str, str]]:
        """(frame id, inspector, answer) of every stored review."""
        with self.store.session() as s:
            rows = s.execute(
                select(Frame.frame_id, User.name, Review.label)
                .join(Frame, Frame.id == Review.frame_pk)
                .join(User, User.id == Review.user_id)
            )
            return sorted(tuple(r) for r in rows)


@pytest.fixture
def site(store: Store, make_sample: Callable[..., Sample]) -> Site:
    return Site(store, make_sample)


@pytest.fixture
def sqlite_site(sqlite_store: Store, make_sample: Callable[..., Sample]) -> Site:
    return Site(sqlite_store, make_sample)


# ---- signing in and out -------------------------------------------------------------------


def test_sign_in_sets_a_hashed_http_only_session(site: Site) -> None:
    site.user("ann")
    client = site.browser()
    page = client.get("/login")
    assert page.status_code == 200 and LOGIN_CSRF_COOKIE in page.headers["set-cookie"]
    response = client.post(
        "/login",
        data={"name": "ann", "password": PASSWORD, "csrf": csrf_in(page.text), "next": "/admin"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/admin"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("lineqc_s"))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    token = client.cookies[SESSION_COOKIE]
    with site.store.session() as s:
        (row,) = s.scalars(select(WebSession)).all()
        assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    queue = client.get("/queue")
    assert queue.status_code == 200
    assert 'id="signed-in-as">ann<' in queue.text and "Sign out" in queue.text


def test_wrong_password_or_unknown_user_is_refused(site: Site) -> None:
    site.user("ann")
    for name, password in [("ann", "wrong password!"), ("nobody", PASSWORD)]:
        client = site.browser()
        csrf = csrf_in(client.get("/login").text)
        data = {"name": name, "password": password, "csrf": csrf}
        response = client.post("/login", data=data, follow_redirects=False)
        assert response.status_code == 401
        assert "wrong name or password" in response.text
        assert SESSION_COOKIE not in client.cookies
    with site.store.session() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0


def sign_in_attempt(
    app: Any, name: str, password: str, client: str = "10.0.0.1", **headers: str
) -> Any:
    """One sign-in from ``client`` (an address), through the form and its CSRF cookie."""
    browser = TestClient(app, headers={"accept": "text/html", **headers}, client=(client, 1000))
    page = browser.get("/login")
    token = csrf_in(page.text)
    return browser.post(
        "/login",
        data={"name": name, "password": password, "csrf": token},
        headers={"cookie": f"{LOGIN_CSRF_COOKIE}={token}"},  # even where it came as Secure
        follow_redirects=False,
    )


def test_failed_sign_ins_are_throttled_per_account_and_per_address(
    sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    throttle = SignInThrottle(
        account=Limits(free_failures=3, base_delay_s=60),
        address=Limits(free_failures=6, base_delay_s=60),
        clock=lambda: now[0],
    )
    app = create_app(sqlite_store, throttle=throttle)
    for name in ("ann", "bob"):
        add_user(sqlite_store, name, PASSWORD)
    caplog.set_level("WARNING", "lineqc.review.app")
    for _ in range(3):
        assert sign_in_attempt(app, "ann", "wrong password!").status_code == 401
    locked = sign_in_attempt(app, "ann", PASSWORD)  # even the right password waits now
    assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
    assert "too many failed sign-ins: try again in 60 s" in locked.text
    assert sign_in_attempt(app, "ANN", PASSWORD, client="10.0.0.2").status_code == 429
    assert sign_in_attempt(app, "bob", PASSWORD).status_code == 303  # the address is not locked
    now[0] += 61
    assert sign_in_attempt(app, "ann", "wrong password!").status_code == 401  # one more try
    assert sign_in_attempt(app, "ann", PASSWORD).status_code == 429  # then twice as long
    assert sign_in_attempt(app, "ann", PASSWORD).headers["retry-after"] == "120"
    now[0] += 121
    assert sign_in_attempt(app, "ann", PASSWORD).status_code == 303  # a success clears it
    assert sign_in_attempt(app, "ann", "wrong password!").status_code == 401
    assert sign_in_attempt(app, "ann", PASSWORD).status_code == 303
    # One address spraying names is slowed down too, whichever name it tries next.
    for i in range(6):
        assert sign_in_attempt(app, f"guess{i}", PASSWORD, client="10.0.0.9").status_code == 401
    assert sign_in_attempt(app, "bob", PASSWORD, client="10.0.0.9").status_code == 429
    logged = caplog.text
    assert "failed sign-in as 'ann' from 10.0.0.1" in logged
    assert "sign-in as 'ann' from 10.0.0.1 throttled (60 s)" in logged
    assert "sign-in as 'bob' from 10.0.0.9 throttled" in logged


def test_forwarded_headers_count_only_from_a_trusted_proxy(
    sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a TLS proxy the cookies get the Secure flag and the client its own address,
    but only from --trusted-proxy addresses: anyone else's X-Forwarded-* are ignored."""
    add_user(sqlite_store, "ann", PASSWORD)
    caplog.set_level("WARNING", "lineqc.review.app")
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-for": "192.0.2.7"}
    behind = create_app(sqlite_store, trusted_proxies=["10.0.0.1", "10.1.0.0/16"])
    for proxy in ("10.0.0.1", "10.1.2.3"):
        response = sign_in_attempt(behind, "ann", PASSWORD, client=proxy, **forwarded)
        assert response.status_code == 303
        assert all("; secure" in c.lower() for c in response.headers.get_list("set-cookie"))
        sign_in_attempt(behind, "ann", "wrong password!", client=proxy, **forwarded)
        assert "failed sign-in as 'ann' from 192.0.2.7" in caplog.text
        caplog.clear()
    for app, client in [(behind, "10.0.0.66"), (create_app(sqlite_store), "10.0.0.1")]:
        response = sign_in_attempt(app, "ann", PASSWORD, client=client, **forwarded)
        assert response.status_code == 303
        assert not any("secure" in c.lower() for c in response.headers.get_list("set-cookie"))
        sign_in_attempt(app, "ann", "wrong password!", client=client, **forwarded)
        assert f"failed sign-in as 'ann' from {client}" in caplog.text
        caplog.clear()


def test_serve_takes_trusted_proxies(lineqc, tmp_path: Path) -> None:
    db = ["--db", str(tmp_path / "review.db")]
    headers = {"x-forwarded-proto": "https"}
    for extra, secure in [(["--trusted-proxy", "127.0.0.1"], True), ([], False)]:
        with review_serve([*db, *extra], tmp_path / f"serve{len(extra)}.log") as url:
            cookie = httpx.get(f"{url}login", headers=headers).headers["set-cookie"]
        assert ("; secure" in cookie.lower()) is secure, cookie
    proc = lineqc("review", "serve", *db, "--trusted-proxy", "proxy.plant", check=False)
    assert proc.returncode == 2 and "--trusted-proxy 'proxy.plant': not an IP" in proc.stderr


def test_sign_in_never_redirects_to_another_site(site: Site) -> None:
    site.user("ann")
    for target in ["//evil.example/", "https://evil.example/", "/\\evil.example"]:
        client = site.browser()
        csrf = csrf_in(client.get("/login").text)
        data = {"name": "ann", "password": PASSWORD, "csrf": csrf, "next": target}
        response = client.post("/login", data=data, follow_redirects=False)
        assert response.headers["location"] == "/queue"


def test_sign_out_ends_the_session(site: Site) -> None:
    ann = site.login("ann")
    token = ann.client.cookies[SESSION_COOKIE]
    response = ann.post("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    with site.store.session() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0
    # the old cookie, replayed by another client, no longer signs anyone in
    replay = TestClient(site.app, cookies={SESSION_COOKIE: token})
    assert replay.get("/queue", follow_redirects=False).status_code == 401


# ---- anonymous requests, CSRF, roles ------------------------------------------------------


def test_anonymous_requests_are_refused(site: Site) -> None:
    pk = site.add("dev1-cam0-1-1")
    with site.store.session() as s:
        sha = s.get(Frame, pk).image_sha256
    browser = site.browser()
    page = browser.get("/queue?line=line1", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fqueue%3Fline%3Dline1"
    assert browser.get("/admin", follow_redirects=False).status_code == 303
    api = TestClient(site.app)  # not a browser page: 401, no redirect
    for url in ["/queue", "/", f"/frame/{pk}", "/next", f"/image/{sha}", "/admin", "/adjudicate"]:
        assert api.get(url, follow_redirects=False).status_code == 401, url
    for url in [f"/frame/{pk}/label", "/logout", "/admin/settings", f"/adjudicate/{pk}"]:
        assert api.post(url, data={"label": "ok", "csrf": "x"}).status_code == 401, url
    assert site.reviews() == []
    # the stylesheet and script are public (the sign-in page needs them), and nothing else
    assert api.get("/static/style.css").status_code == 200
    assert api.get("/static/..%2fapp.py").status_code == 404


def test_posts_without_the_right_csrf_token_are_refused(site: Site) -> None:
    pk = site.add("dev1-cam0-1-1")
    ann = site.login("ann", admin=True)
    for token in [None, "", "wrong", ann.csrf[:-1]]:
        data = {"label": "ok"} if token is None else {"label": "ok", "csrf": token}
        for url in [f"/frame/{pk}/label", "/logout", "/admin/settings", f"/adjudicate/{pk}"]:
            response = ann.client.post(url, data=data, follow_redirects=False)
            assert response.status_code == 403, (url, token)
    assert site.reviews() == []
    assert ann.get("/queue").status_code == 200  # the refused logout left the session alone

    # the sign-in form: its token must match the pre-session cookie (double submit)
    client = site.browser()
    client.get("/login")
    for token in ["", "forged"]:
        response = client.post(
            "/login", data={"name": "ann", "password": PASSWORD, "csrf": token},
            follow_redirects=False,
        )  # fmt: skip
        assert response.status_code == 403
    assert SESSION_COOKIE not in client.cookies


def test_an_inspector_cannot_act_as_another(site: Site) -> None:
    first = site.add("dev1-cam0-1-1")
    second = site.add("dev1-cam0-1-2")
    ann = site.login("ann")
    bob_id = site.user("bob")
    response = ann.label(first, "scratch", user="bob", user_id=str(bob_id), name="bob")
    assert response.status_code == 303
    assert ann.get(f"/frame/{second}?user_id={bob_id}").status_code == 200
    assert ann.label(second, "dent", query=f"?user=bob&user_id={bob_id}").status_code == 303
    assert site.reviews() == [("dev1-cam0-1-1", "ann", "scratch"), ("dev1-cam0-1-2", "ann", "dent")]
    # nor with bob's CSRF token in ann's session
    bob = site.login("bob")
    third = site.add("dev1-cam0-1-3")
    bad = ann.client.post(f"/frame/{third}/label", data={"csrf": bob.csrf, "label": "ok"})
    assert bad.status_code == 403


def test_inspectors_get_403_on_admin_pages(site: Site) -> None:
    pk = site.add("dev1-cam0-1-1")
    ann = site.login("ann")
    assert ann.get("/admin").status_code == 403
    assert ann.get("/adjudicate").status_code == 403
    assert ann.post("/admin/settings", double_review_share="1", gold_share="1").status_code == 403
    assert ann.post(f"/adjudicate/{pk}", label="ok").status_code == 403
    with site.store.session() as s:
        assert get_setting(s, "gold_share") == 0.0
        assert s.scalar(select(func.count()).select_from(Adjudication)) == 0
    assert "/admin" not in ann.get("/queue").text  # and no link to them


# ---- request size, image paths, headers ---------------------------------------------------


def test_oversized_bodies_get_413(sqlite_site: Site) -> None:
    pk = sqlite_site.add("dev1-cam0-1-1")
    ann = sqlite_site.login("ann")
    big = "x" * (100 * 1024)
    declared = ann.label(pk, big)  # Content-Length over the limit
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield f"csrf={ann.csrf}&label=ok&pad=".encode()
        for _ in range(100):
            yield b"y" * 1024

    streamed = ann.client.post(
        f"/frame/{pk}/label",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert streamed.status_code == 413
    assert sqlite_site.reviews() == []
    assert ann.label(pk, "ok").status_code == 303  # a normal form still goes through


def raw_get(app: Any, path: str, cookie: str) -> int:
    """GET ``path`` exactly as given (no client-side '..' clean-up), straight through ASGI."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 1000), "server": ("testserver", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return statuses[0]


def test_images_are_served_only_from_the_store(sqlite_site: Site, tmp_path: Path) -> None:
    pk = sqlite_site.add("dev1-cam0-1-1")
    store = sqlite_site.store
    with store.session() as s:
        sha = s.get(Frame, pk).image_sha256
    assert sha is not None
    ann = sqlite_site.login("ann")
    ok = ann.get(f"/image/{sha}")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert ok.content == store.image_path(sha).read_bytes() and ok.content[:2] == b"\xff\xd8"

    secret = tmp_path / "secret.txt"
    secret.write_text("not an image of the store")
    planted = "ab" * 32  # a well-formed id whose file is a link out of the store
    store.image_path(planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, store.image_path(planted))
    missing = "cd" * 32
    for name in [
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5c..%5cetc%5cpasswd",
        "etc%2fpasswd",
        sha.upper(),
        sha[:-1],
        sha + "0",
        "z" * 64,
        missing,
        planted,
        f"{sha}%00.jpg",
    ]:
        response = ann.get(f"/image/{name}")
        assert response.status_code == 404, name
        assert b"not an image of the store" not in response.content
    cookie = f"{SESSION_COOKIE}={ann.client.cookies[SESSION_COOKIE]}"
    for path in ["/image/../../etc/passwd", f"/image/../{sha[:2]}/{sha}.jpg", "/image/../../"]:
        assert raw_get(sqlite_site.app, path, cookie) == 404, path


def test_defect_map_is_served_as_an_overlay_of_its_size(sqlite_site: Site, tmp_path: Path) -> None:
    cells = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]], np.float32)
    mapped = sqlite_site.add("dev1-cam0-1-1", defect_map=defect_map(cells))
    plain = sqlite_site.add("dev1-cam0-1-2")
    store = sqlite_site.store
    with store.session() as s:
        sha, other = s.get(Frame, mapped).image_sha256, s.get(Frame, plain).image_sha256
    assert sha and other
    ann = sqlite_site.login("ann")
    response = ann.get(f"/defect-map/{sha}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (2, 3, 4)  # BGRA, the map's own size: the page stretches it
    stored = decode_png(store.defect_map_path(sha).read_bytes())
    expected = np.rint(stored * OVERLAY_MAX_ALPHA * 255)
    np.testing.assert_array_equal(overlay[..., 3], expected)  # alpha follows probability
    assert (overlay[..., :3] == OVERLAY_BGR).all()  # red
    # the frame page offers the overlay only where there is a map
    assert 'id="defect-map-toggle"' in ann.get(f"/frame/{mapped}").text
    assert f'src="/defect-map/{sha}"' in ann.get(f"/frame/{mapped}").text
    assert "defect-map" not in ann.get(f"/frame/{plain}").text
    assert ann.get(f"/defect-map/{other}").status_code == 404  # no map for this image

    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(np.full((2, 2), 1.0, np.float32)))
    planted = "ab" * 32
    store.defect_map_path(planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, store.defect_map_path(planted))
    for name in ["..%2f..%2fsecret.png", sha.upper(), sha[:-1], "z" * 64, planted,
                 f"{sha}.defect.png", f"..%2f{sha[:2]}%2f{sha}.defect.png"]:  # fmt: skip
        assert ann.get(f"/defect-map/{name}").status_code == 404, name
    cookie = f"{SESSION_COOKIE}={ann.client.cookies[SESSION_COOKIE]}"
    for path in ["/defect-map/../../secret.png", f"/defect-map/../{sha[:2]}/{sha}.defect.png"]:
        assert raw_get(sqlite_site.app, path, cookie) == 404, path
    assert TestClient(sqlite_site.app).get(f"/defect-map/{sha}").status_code == 401


def test_a_stored_decompression_bomb_is_never_served(sqlite_site: Site) -> None:
    """An image (or defect map) whose header declares 30000 x 30000 pixels, stored before the
    collector read headers: refused from its header, so no browser ever expands it."""
    pk = sqlite_site.add("dev1-cam0-1-1")
    store = sqlite_site.store
    with store.session() as s:
        sha = s.get(Frame, pk).image_sha256
    assert sha is not None
    store.image_path(sha).write_bytes(bomb_jpeg())
    ann = sqlite_site.login("ann")
    response = ann.get(f"/image/{sha}")
    assert response.status_code == 404 and "refused before decoding" in response.text
    store.defect_map_path(sha).write_bytes(bomb_png())
    response = ann.get(f"/defect-map/{sha}")
    assert response.status_code == 404 and "refused before decoding" in response.text


BEYOND = ["2147483648", "9223372036854775808", "18446744073709551616", "9" * 40]


def test_a_frame_number_beyond_the_column_is_a_404(site: Site) -> None:
    site.add("dev1-cam0-1-1")
    ann = site.login("ann", admin=True)
    for number in BEYOND:
        for response in (
            ann.get(f"/frame/{number}"),
            ann.get(f"/adjudicate/{number}"),
            ann.label(int(number), "ok"),
            ann.post(f"/adjudicate/{number}", label="ok"),
        ):
            assert response.status_code == 404, (number, response.status_code, response.text)


@pytest.mark.parametrize("ts", [1e18, -1e18, 1e300, 253402300800.0, -62135596801.0])
def test_a_stored_absurd_value_never_breaks_a_page(site: Site, ts: float) -> None:
    """Values the collector refuses now, stored by an older one: every page still answers."""
    pk = site.add("dev1-cam0-1-1")
    disputed = site.add("dev1-cam0-1-2")
    bob, carol = site.user("bob"), site.user("carol")
    with site.store.session() as s:
        s.execute(
            update(Frame).values(
                ts=ts, classes=[], probabilities=[0.2, 0.9, 5.0], confidence=7.0,
                predicted="<b>x</b>", image_width=-3, required_reviews=2,
            )
        )  # fmt: skip
        s.add_all([
            Review(frame_pk=disputed, user_id=bob, label="ok", created_at=ts),
            Review(frame_pk=disputed, user_id=carol, label="dent", created_at=1e18),
        ])  # fmt: skip
    ann = site.login("ann", admin=True)
    for url in [
        "/queue", "/queue?date_from=2020-01-01&date_to=2030-01-01", f"/frame/{pk}",
        f"/frame/{disputed}", "/adjudicate", f"/adjudicate/{disputed}", "/admin", "/next",
    ]:  # fmt: skip
        response = ann.get(url)
        assert response.status_code in (200, 303), (url, response.status_code)
    assert "(not a valid time)" in ann.get(f"/frame/{pk}").text
    assert waiting_in(ann.get("/queue?date_from=2020-01-01").text) == 0  # no date, no match


def test_security_headers_and_escaping(sqlite_site: Site) -> None:
    pk = sqlite_site.add("dev1-cam0-1-1", reason="<script>alert(1)</script>", line="l<b>1")
    ann = sqlite_site.login("ann")
    page = ann.get(f"/frame/{pk}")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "l&lt;b&gt;1" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"


# ---- the queue: order and filters ---------------------------------------------------------


def ts(day: int, hour: int = 12) -> float:
    """A capture time on 2026-06-<day>, in the server's time zone (as the filters read it)."""
    return datetime(2026, 6, day, hour, 0).timestamp()


def test_queue_lists_in_priority_order_and_next_opens_the_first(site: Site) -> None:
    sure = site.add("f-sure", probabilities=[0.9, 0.05, 0.05])
    torn = site.add("f-torn", probabilities=[0.34, 0.33, 0.33])
    leaning = site.add("f-leaning", probabilities=[0.6, 0.3, 0.1])
    ann = site.login("ann")
    page = ann.get("/queue")
    assert waiting_in(page.text) == 3 and "3 frames waiting" in re.sub(r"<[^>]+>", "", page.text)
    assert listed_in(page.text) == [torn, leaning, sure]
    assert ann.get("/next").headers["location"] == f"/frame/{torn}"


DENT = {"probabilities": [0.1, 0.2, 0.7]}  # predicted "dent"


def test_every_filter_narrows_the_queue(site: Site) -> None:
    frames = {
        "a": site.add("a", line="line1", device="dev1", camera="cam0", ts=ts(10)),
        "b": site.add("b", line="line2", device="dev1", camera="cam1", ts=ts(11)),
        "c": site.add("c", line="line2", device="dev2", camera="cam0", ts=ts(12, 23), **DENT),
        "d": site.add("d", line="line3", device="dev3", camera="cam0", ts=ts(13, 0)),
    }
    ann = site.login("ann")

    def queue(query: str) -> set[str]:
        page = ann.get(f"/queue?{query}")
        assert page.status_code == 200, page.text
        names = {pk: name for name, pk in frames.items()}
        listed = {names[pk] for pk in listed_in(page.text)}
        assert waiting_in(page.text) == len(listed)
        return listed

    assert queue("") == {"a", "b", "c", "d"}
    assert queue("line=line2") == {"b", "c"}
    assert queue("device=dev1") == {"a", "b"}
    assert queue("camera=cam0") == {"a", "c", "d"}
    assert queue("predicted=dent") == {"c"}
    assert queue("date_from=2026-06-11") == {"b", "c", "d"}
    assert queue("date_to=2026-06-12") == {"a", "b", "c"}  # the whole day, 23:00 included
    assert queue("date_from=2026-06-11&date_to=2026-06-12") == {"b", "c"}
    assert queue("line=line2&camera=cam0") == {"c"}
    assert queue("line=nowhere") == set()
    assert queue("line=&device=") == {"a", "b", "c", "d"}  # "any"
    # the filter form offers the stored values
    page = ann.get("/queue").text
    for value in ["line1", "line2", "line3", "dev2", "cam1", "dent"]:
        assert f'<option value="{value}"' in page
    assert ann.get("/queue?date_from=June").status_code == 400
    # labelling keeps the filters: the next frame is the next one under them
    nxt = ann.label(frames["b"], "ok", query="?line=line2")
    assert nxt.headers["location"] == f"/frame/{frames['c']}?line=line2"
    last = ann.label(frames["c"], "ok", query="?line=line2")
    assert last.headers["location"] == "/queue?line=line2"


def test_queue_pages_thumbnails_and_reasons_in_words(sqlite_site: Site) -> None:
    site = sqlite_site
    n = QUEUE_PAGE + 5
    reasons = ["ambiguous", "below_class_threshold", "low_confidence"]
    pks = [site.add(f"f{i:02d}", reason=reasons[i % 3]) for i in range(n)]
    other = site.add("other-line", line="line2")
    ann = site.login("ann")
    first = ann.get("/queue").text
    assert waiting_in(first) == n + 1
    assert len(listed_in(first)) == QUEUE_PAGE
    assert "page 1 of 2" in first and 'id="page-prev"' not in first
    assert len(re.findall(r'<img class="thumb" src="/image/[0-9a-f]{64}"', first)) == QUEUE_PAGE
    text = html.unescape(first)
    for words in ["two classes nearly tied", "below the class's threshold", "low confidence"]:
        assert words in text
    assert "below_class_threshold" not in text
    second = ann.get("/queue?page=2").text
    assert sorted(listed_in(first) + listed_in(second)) == sorted([*pks, other])
    assert "page 2 of 2" in second and 'id="page-next"' not in second
    assert 'href="/queue?page=1"' in second
    # the filters go with the pages, and a page past the end shows the last one
    filtered = ann.get("/queue?line=line1&page=2").text
    assert len(listed_in(filtered)) == n - QUEUE_PAGE and other not in listed_in(filtered)
    assert 'href="/queue?line=line1&amp;page=1"' in filtered
    assert listed_in(ann.get("/queue?page=9").text) == listed_in(second)
    for bad in ["0", "-1", "x", "1.5", "²", "9" * 20]:
        assert ann.get(f"/queue?page={bad}").status_code == 400, bad
    frame = html.unescape(ann.get(f"/frame/{pks[1]}").text)
    assert "below the class's threshold" in frame and "Captured" in frame


# ---- labelling ----------------------------------------------------------------------------


def test_frame_page_shows_the_model_view_and_the_keys(site: Site) -> None:
    pk = site.add(
        "dev7-cam2-1-9", device="dev7", line="line4", camera="cam2", model_version="20260611.1432",
        probabilities=[0.21, 0.42, 0.37], reason="ambiguous", ts=ts(11, 14),
    )  # fmt: skip
    ann = site.login("ann")
    page = ann.get(f"/frame/{pk}").text
    for text in ["dev7", "line4", "cam2", "20260611.1432", "ambiguous", "scratch", "uncertain"]:
        assert text in page
    assert "2026-06-11 14:00:00" in page  # the capture time, for people
    for name, p in zip(CLASSES, [0.21, 0.42, 0.37], strict=True):
        assert f'<meter min="0" max="1" value="{p}">' in page and name in page
    keys = re.findall(r'name="label" value="([^"]+)" data-key="([^"]+)"', page)
    assert keys == [("ok", "1"), ("scratch", "2"), ("dent", "3"), (UNSURE, "u"), (SKIP, "s")]
    assert '<img id="frame-image"' in page and "/static/frame.js" in page
    assert "dev7-cam2-1-9" not in page  # frame ids are not shown (gold frames have telling ones)


def test_classes_past_the_ninth_get_buttons_without_keys(sqlite_site: Site) -> None:
    classes = [f"c{i}" for i in range(11)]
    pk = sqlite_site.add("f-many", classes=classes, probabilities=[1 / 11] * 11)
    ann = sqlite_site.login("ann")
    page = ann.get(f"/frame/{pk}").text
    keys = re.findall(r'name="label" value="([^"]+)" data-key="([^"]*)"', page)
    assert keys[:9] == [(f"c{i}", str(i + 1)) for i in range(9)]
    assert keys[9:] == [("c9", ""), ("c10", ""), (UNSURE, "u"), (SKIP, "s")]
    assert ann.label(pk, "c10").status_code == 303


def test_label_flow_moves_to_the_next_frame_and_the_queue_shrinks(site: Site) -> None:
    # all "ok", less and less uncertain: f0 first
    probs = [[0.4 + 0.1 * i, 0.35 - 0.05 * i, 0.25 - 0.05 * i] for i in range(4)]
    pks = [site.add(f"f{i}", probabilities=p) for i, p in enumerate(probs)]
    ann = site.login("ann")
    assert waiting_in(ann.get("/queue").text) == 4
    first = ann.label(pks[0], "scratch")
    assert first.status_code == 303 and first.headers["location"] == f"/frame/{pks[1]}"
    assert waiting_in(ann.get(first.headers["location"]).text) == 3
    assert ann.label(pks[1], UNSURE).headers["location"] == f"/frame/{pks[2]}"
    skipped = ann.label(pks[2], SKIP)  # skipped: to the back, behind f3
    assert skipped.headers["location"] == f"/frame/{pks[3]}"
    assert listed_in(ann.get("/queue").text) == [pks[3], pks[2]]
    assert ann.label(pks[3], "dent").headers["location"] == f"/frame/{pks[2]}"
    assert ann.label(pks[2], "ok").headers["location"] == "/queue"
    assert waiting_in(ann.get("/queue").text) == 0
    assert site.reviews() == [
        ("f0", "ann", "scratch"), ("f1", "ann", UNSURE), ("f2", "ann", "ok"), ("f3", "ann", "dent")
    ]  # fmt: skip


def test_labels_outside_the_frame_classes_and_repeats_are_refused(site: Site) -> None:
    pk = site.add("f1")
    ann = site.login("ann")
    for bad in ["", "OK", "crack", "ok ", "x" * 500]:
        assert ann.label(pk, bad).status_code == 400, bad
    assert ann.label(999999, "ok").status_code == 404
    assert ann.get("/frame/999999").status_code == 404
    assert ann.get("/frame/abc").status_code == 400
    assert site.reviews() == []
    assert ann.label(pk, "ok").status_code == 303
    bob = site.login("bob")
    assert bob.label(pk, "dent").status_code == 409  # single review: done
    assert site.reviews() == [("f1", "ann", "ok")]


def history(site: Site) -> list[tuple[str, str, str]]:
    """(frame id, inspector, replaced answer) of every answer replaced, oldest first."""
    with site.store.session() as s:
        rows = s.execute(
            select(Frame.frame_id, User.name, ReviewHistory.label)
            .join(Frame, Frame.id == ReviewHistory.frame_pk)
            .join(User, User.id == ReviewHistory.user_id)
            .order_by(ReviewHistory.id)
        )
        return [tuple(r) for r in rows]


def backdate(site: Site, frame_pk: int, seconds: float) -> None:
    with site.store.session() as s:
        for review in s.scalars(select(Review).where(Review.frame_pk == frame_pk)):
            review.created_at -= seconds


def test_an_answer_can_be_changed_within_the_window_and_the_history_keeps_it(
    site: Site,
) -> None:
    first, second = site.add("f1"), site.add("f2")
    ann = site.login("ann")
    assert ann.label(first, "ok").status_code == 303
    page = ann.get(f"/frame/{first}").text
    assert 'id="your-answer"' in page and "change it, until" in page
    keys = re.findall(r'name="label" value="([^"]+)" data-key="([^"]+)"', page)
    assert keys == [("ok", "1"), ("scratch", "2"), ("dent", "3"), (UNSURE, "u")]  # no skip
    # the next frame links back to it (key b)
    assert f'id="last-answer" href="/frame/{first}"' in ann.get(f"/frame/{second}").text

    assert ann.label(first, "dent").headers["location"] == f"/frame/{second}"
    assert site.reviews() == [("f1", "ann", "dent")]  # the new answer counts
    assert history(site) == [("f1", "ann", "ok")]  # the old one is kept
    assert ann.label(first, "dent").status_code == 303  # the same answer again: no change
    assert ann.label(first, SKIP).status_code == 400  # an answer is not taken back
    assert history(site) == [("f1", "ann", "ok")]
    assert "<strong>ok</strong> at" in ann.get(f"/frame/{first}").text  # shown to ann

    backdate(site, first, CHANGE_WINDOW_S + 1)  # too late now
    assert ann.label(first, "scratch").status_code == 409
    page = ann.get(f"/frame/{first}").text
    assert "change it" not in page and 'id="label-form"' not in page
    assert 'id="last-answer"' not in ann.get(f"/frame/{second}").text
    assert site.reviews() == [("f1", "ann", "dent")]

    # a skip replaced by an answer is kept too
    assert ann.label(second, SKIP).status_code == 303
    assert ann.label(second, "scratch").status_code == 303
    assert history(site) == [("f1", "ann", "ok"), ("f2", "ann", SKIP)]


def test_no_change_after_adjudication_or_with_a_zero_window(site: Site) -> None:
    site.settings(double_review_share=1.0)
    pk = site.add("f1")
    ann, bob, root = site.login("ann"), site.login("bob"), site.login("root", admin=True)
    ann.label(pk, "ok")
    bob.label(pk, "dent")
    assert ann.label(pk, "dent").status_code == 303  # agreed now, still within the window
    assert ann.label(pk, "ok").status_code == 303  # disputed again
    assert root.post(f"/adjudicate/{pk}", label="ok").status_code == 303
    assert ann.label(pk, "scratch").status_code == 409  # the final word was given
    assert history(site) == [("f1", "ann", "ok"), ("f1", "ann", "dent")]

    strict = Site(site.store, site.make_sample, dict(site.users))
    strict.app = create_app(site.store, change_window_s=0)
    carol = strict.login("carol")
    other = strict.add("f2")
    assert carol.label(other, "ok").status_code == 303
    assert carol.label(other, "dent").status_code == 409
    assert "change it" not in carol.get(f"/frame/{other}").text


# ---- double review, adjudication, gold, admin ---------------------------------------------


def states(site: Site, root: Inspector) -> dict[str, int]:
    page = root.get("/admin").text
    return {s: int(n) for s, n in re.findall(r'id="state-(\w+)">(\d+)<', page)}


def test_double_review_agreed_disputed_adjudicated(site: Site) -> None:
    site.settings(double_review_share=1.0)
    agreed, disputed, unsure = site.add("agree"), site.add("dispute"), site.add("unsure")
    ann, bob, root = site.login("ann"), site.login("bob"), site.login("root", admin=True)
    for pk, a, b in [(agreed, "ok", "ok"), (disputed, "ok", "dent"), (unsure, UNSURE, UNSURE)]:
        assert ann.label(pk, a).status_code == 303
        assert waiting_in(bob.get("/queue").text) >= 1  # still waits for a second answer
        assert bob.label(pk, b).status_code == 303
    assert states(site, root) == {"pending": 0, "agreed": 1, "disputed": 2, "adjudicated": 0}
    assert waiting_in(root.get("/queue").text) == 0  # nothing pending for a third inspector
    assert root.label(agreed, "dent").status_code == 409

    page = root.get("/adjudicate").text
    assert f'id="dispute-{disputed}"' in page and f'id="dispute-{unsure}"' in page
    assert f'id="dispute-{agreed}"' not in page
    section = page[page.index(f'id="dispute-{disputed}"') :]
    assert "ann: <strong>ok</strong>" in section and "bob: <strong>dent</strong>" in section

    assert root.post(f"/adjudicate/{disputed}", label=UNSURE).status_code == 400
    assert root.post(f"/adjudicate/{agreed}", label="ok").status_code == 409
    assert root.post(f"/adjudicate/{disputed}", label="dent").status_code == 303
    assert root.post(f"/adjudicate/{disputed}", label="ok").status_code == 409  # final
    with site.store.session() as s:
        row = s.get(Adjudication, disputed)
        assert row is not None and (row.label, row.user_id) == ("dent", site.users["root"])
    assert states(site, root) == {"pending": 0, "agreed": 1, "disputed": 1, "adjudicated": 1}
    assert f'id="dispute-{disputed}"' not in root.get("/adjudicate").text


def test_adjudication_page_has_the_viewer_keys_and_goes_to_the_next(site: Site) -> None:
    site.settings(double_review_share=1.0)
    early = site.add("early", ts=ts(10), defect_map=defect_map([[0.9, 0.1]]))
    late = site.add("late", ts=ts(11))
    agreed = site.add("agreed")
    ann, bob, root = site.login("ann"), site.login("bob"), site.login("root", admin=True)
    for pk, a, b in [(early, "ok", "dent"), (late, "scratch", UNSURE), (agreed, "ok", "ok")]:
        ann.label(pk, a)
        bob.label(pk, b)
    ann.label(late, "dent")  # changed within the window: the adjudicator sees both
    listing = root.get("/adjudicate").text
    assert listed_in_adjudication(listing) == [early, late]
    page = root.get(f"/adjudicate/{late}").text
    assert '<img id="frame-image"' in page and "/static/frame.js" in page
    keys = re.findall(r'name="label" value="([^"]+)" data-key="([^"]*)"', page)
    assert keys == [("ok", "1"), ("scratch", "2"), ("dent", "3")]  # classes only
    assert "ann: <strong>dent</strong>" in page and "bob: <strong>unsure</strong>" in page
    assert "ann first answered <strong>scratch</strong>" in page
    assert 'id="guide"' in page
    assert 'id="defect-map-toggle"' in root.get(f"/adjudicate/{early}").text
    assert 'id="not-disputed"' in root.get(f"/adjudicate/{agreed}").text
    assert ann.get(f"/adjudicate/{late}").status_code == 403
    assert root.get("/adjudicate/999999").status_code == 404
    # each final label opens the next disputed frame, then the (empty) list
    assert root.post(f"/adjudicate/{early}", label="dent").headers["location"] == (
        f"/adjudicate/{late}"
    )
    assert root.post(f"/adjudicate/{late}", label="scratch").headers["location"] == "/adjudicate"
    assert "No disputed frame waits" in root.get("/adjudicate").text


def listed_in_adjudication(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'id="dispute-(\d+)"', page)]


def test_admin_page_shows_kappa_per_pair_and_class(site: Site) -> None:
    site.settings(double_review_share=1.0)
    a = ["ok", "ok", "scratch", "dent", "dent", "ok"]
    b = ["ok", "scratch", "scratch", "dent", "ok", "ok"]
    pks = [site.add(f"f{i}") for i in range(len(a))]
    ann, bob, root = site.login("ann"), site.login("bob"), site.login("root", admin=True)
    for pk, x, y in zip(pks, a, b, strict=True):
        ann.label(pk, x)
        bob.label(pk, y)
    site.store.add_reject("lineqc/v1/s/l/d/sample", "not JSON", 12)
    page = root.get("/admin").text
    cells = r"<td>ann · bob</td>\s*<td>(\d+)</td>\s*<td>([^<]+)</td>\s*<td>([^<]*)</td>"
    row = re.search(cells, page)
    assert row, page
    assert int(row.group(1)) == 6
    assert row.group(2) == f"{cohen_kappa_score(a, b):.2f}"
    per_class = dict(item.split() for item in row.group(3).split(", "))
    for c in CLASSES:
        expected = cohen_kappa_score([x == c for x in a], [y == c for y in b])
        assert per_class[c] == f"{expected:.2f}"
    assert re.search(r'id="rejects">1<', page)


def test_settings_are_validated(site: Site) -> None:
    root = site.login("root", admin=True)
    saved = root.post("/admin/settings", double_review_share="0.25", gold_share="0.5")
    assert saved.status_code == 303
    for bad in [("1.5", "0.1"), ("0.1", "-0.01"), ("abc", "0.1"), ("nan", "0.1"), ("", "0")]:
        response = root.post("/admin/settings", double_review_share=bad[0], gold_share=bad[1])
        assert response.status_code == 400 and "from 0 to 1" in response.text
    with site.store.session() as s:
        assert (get_setting(s, "double_review_share"), get_setting(s, "gold_share")) == (0.25, 0.5)
    # the share applies to frames stored from now on
    site.settings(double_review_share=1.0)
    pk = site.add("after")
    with site.store.session() as s:
        assert s.get(Frame, pk).required_reviews == 2


def gold_args(store: Store, dataset: Path, count: int) -> argparse.Namespace:
    return argparse.Namespace(
        db=store.url, images=store.images, dataset=dataset, count=count, split="train", seed=3
    )


def test_gold_frames_are_mixed_in_and_audit_each_inspector(
    site: Site, synth_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flagged = site.add("dev1-cam0-1-1", line="line9", device="dev9", camera="cam9")
    assert add_gold(gold_args(site.store, synth_dataset, 3)) == 0
    assert add_gold(gold_args(site.store, synth_dataset, 3)) == 0  # idempotent
    assert "added 0 gold frame(s)" in capsys.readouterr().out
    with site.store.session() as s:
        golds = s.scalars(select(Frame).where(Frame.why == "gold").order_by(Frame.id)).all()
    assert len(golds) == 3
    for g in golds:
        assert g.frame_id.startswith("gold-") and g.gold_label in g.classes
        assert (g.line, g.device, g.camera) == ("line9", "dev9", "cam9")  # dressed as flagged
        assert site.store.image_path(g.image_sha256 or "").read_bytes()[:2] == b"\xff\xd8"

    ann, bob, root = site.login("ann"), site.login("bob"), site.login("root", admin=True)
    assert listed_in(ann.get("/queue").text) == [flagged]  # gold_share 0: none mixed in
    site.settings(gold_share=1.0)
    gold_pks = {g.id for g in golds}
    answers = {g.id: g.gold_label for g in golds}
    wrong = next(iter(gold_pks))
    answers[wrong] = next(c for c in CLASSES if c != answers[wrong])
    seen = []
    for _ in range(3):
        pk = int(ann.get("/next").headers["location"].split("/")[-1])
        seen.append(pk)
        page = ann.get(f"/frame/{pk}").text
        assert "gold" not in page.lower()
        assert ann.label(pk, answers[pk] or "").status_code == 303
    assert set(seen) == gold_pks  # all of ann's gold first (share 1), each once
    assert ann.get("/next").headers["location"] == f"/frame/{flagged}"
    # bob meets them too (one at a time, at the head of his queue)
    assert int(bob.get("/next").headers["location"].split("/")[-1]) in gold_pks

    page = root.get("/admin").text
    row = re.search(r"<td>ann</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td>", page)
    assert row and row.groups() == ("3", "2", "0", "0.67")
    assert re.search(r'id="gold-frames">3<', page)
    # gold frames are not flagged frames: they do not count among the consensus states
    assert sum(states(site, root).values()) == 1


def test_a_label_the_dataset_contradicts_waits_for_adjudication(
    sqlite_site: Site, synth_dataset: Path
) -> None:
    from lineqc.datasets import manifest as mf
    from lineqc.review.guide import Guide
    from tests.review.kit import CLASSES as SYNTH_CLASSES
    from tests.review.kit import to_jpeg

    site = sqlite_site
    rows = mf.load(synth_dataset).in_split("train")[:2]
    shots = [to_jpeg((synth_dataset / r.path).read_bytes()) for r in rows]
    wrong = next(c for c in SYNTH_CLASSES if c != rows[0].label)
    kinds = {"classes": SYNTH_CLASSES, "probabilities": [0.25] * 4}
    conflicting = site.add("dev1-cam0-1-1", jpeg=shots[0], **kinds)
    fine = site.add("dev1-cam0-1-2", jpeg=shots[1], **kinds)
    ann, root = site.login("ann"), site.login("root", admin=True)
    assert ann.label(conflicting, wrong).status_code == 303  # agreed: one answer needed
    assert ann.label(fine, str(rows[1].label)).status_code == 303
    assert listed_in_adjudication(root.get("/adjudicate").text) == []  # no dataset: no check

    site.app = create_app(site.store, guide=Guide.load(synth_dataset))
    root = site.login("root", admin=True)
    listing = root.get("/adjudicate").text
    assert listed_in_adjudication(listing) == [conflicting]
    assert f"the dataset says {rows[0].label} for the same part (row {rows[0].id}" in listing
    page = root.get(f"/adjudicate/{conflicting}").text
    assert 'id="conflict"' in page and f"agreed on <strong>{wrong}</strong>" in page
    assert re.findall(r'name="label" value="([^"]+)"', page) == SYNTH_CLASSES  # may decide
    assert root.post(f"/adjudicate/{fine}", label="ok").status_code == 409  # no conflict
    assert root.post(f"/adjudicate/{conflicting}", label=str(rows[0].label)).status_code == 303
    assert listed_in_adjudication(root.get("/adjudicate").text) == []
    assert 'id="not-disputed"' in root.get(f"/adjudicate/{conflicting}").text
