"""The review app as inspectors use it: the real `lineqc review serve` process, driven by
Debian's headless Chromium through Selenium. Sign in, label three frames by keyboard, watch
the queue shrink, then check the database."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from lineqc.edge.wire import Sample
from lineqc.review.store import Review, Store, User, set_setting
from tests.review.kit import review_serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "inspector password"
CLASSES = ["ok", "scratch", "dent"]
WAIT_S = 20  # an upper bound for each page condition, never a pause


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/
    db: str
    images: Path
    user: str = "ann"
    password: str = PASSWORD
    waiting: int | None = 5  # frames in the inspector's queue at the start, when known


# `make demo-inspect` points the keyboard test at the running `make demo` app instead.
DEMO = {k: os.environ.get(f"LINEQC_REVIEW_{k.upper()}") for k in ("url", "db", "images")}


def lineqc_review(*args: str, stdin: str = "") -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lineqc", "review", *args], input=stdin, capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def server(tmp_path: Path, make_sample: Callable[..., Sample]) -> Iterator[Server]:
    """Five flagged frames and one inspector, served by the real command on a free port."""
    if DEMO["url"] and DEMO["db"] and DEMO["images"]:
        yield Server(
            DEMO["url"], DEMO["db"], Path(DEMO["images"]), "inspector", "inspect-demo", None
        )
        return
    db, images = f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images"
    store = Store(db, images)
    with store.session() as s:
        set_setting(s, "double_review_share", 0.0)
    for i in range(5):
        probs = [0.4 + 0.1 * i, 0.35 - 0.05 * i, 0.25 - 0.05 * i]  # f0 the most uncertain
        sample = make_sample(f"dev1-cam0-1-{i}", classes=CLASSES, probabilities=probs)
        assert store.add_sample(sample)
    store.close()
    lineqc_review("add-user", "ann", "--password-stdin", "--db", db, stdin=PASSWORD + "\n")

    db_args = ["--db", db, "--images", str(images), "--host", "127.0.0.1"]
    with review_serve(db_args, tmp_path / "serve.log") as url:
        yield Server(url, db, images)


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromedriver are needed at /usr/bin "
            "(apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
    ]:  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_sign_in_label_three_frames_by_keyboard(server: Server, chrome: object) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(chrome, WebDriver)
    driver = chrome
    wait = WebDriverWait(driver, WAIT_S)

    def waiting_count() -> int:
        return int(wait.until(ec.presence_of_element_located((By.ID, "waiting-count"))).text)

    # anonymous: the queue sends us to the sign-in page
    driver.get(server.url + "queue")
    wait.until(ec.url_contains("/login"))
    driver.find_element(By.ID, "name").send_keys(server.user)
    driver.find_element(By.ID, "password").send_keys(server.password)
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda d: urlsplit(d.current_url).path == "/queue")
    assert driver.find_element(By.ID, "signed-in-as").text == server.user
    before = waiting_count()
    assert before == server.waiting if server.waiting is not None else before >= 3

    def reviews() -> list[tuple[int, str]]:
        store = Store(server.db, server.images)
        try:
            with store.session() as s:
                rows = s.execute(
                    select(Review.frame_pk, Review.label).join(User).where(User.name == server.user)
                ).all()
        finally:
            store.close()
        return sorted((int(pk), str(label)) for pk, label in rows)

    earlier = reviews()

    driver.find_element(By.ID, "start").click()
    page = wait.until(ec.presence_of_element_located((By.ID, "frame-page")))

    # the image zooms on a click and fits again on a double click
    image = wait.until(ec.presence_of_element_located((By.ID, "frame-image")))
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth > 0", image))
    viewer = driver.find_element(By.ID, "viewer")
    viewer.click()
    wait.until(lambda d: "zoomed" in (viewer.get_attribute("class") or ""))
    ActionChains(driver).double_click(viewer).perform()
    wait.until(lambda d: "zoomed" not in (viewer.get_attribute("class") or ""))

    typed: dict[int, str] = {}
    for key in ["2", "3", "u"]:
        frame_pk = int(page.get_attribute("data-frame") or 0)
        button = driver.find_element(By.CSS_SELECTOR, f'#label-form button[data-key="{key}"]')
        label = button.get_attribute("value") or ""
        shown = waiting_count()
        ActionChains(driver).send_keys(key).perform()
        wait.until(ec.staleness_of(page))  # the answer was posted and the next page loaded
        typed[frame_pk] = label
        page = wait.until(ec.presence_of_element_located((By.ID, "frame-page")))
        assert int(page.get_attribute("data-frame") or 0) not in typed
        assert waiting_count() == shown - 1

    driver.get(server.url + "queue")
    assert waiting_count() == before - 3

    # exactly three new answers, by this inspector, with the labels typed
    assert reviews() == sorted(earlier + list(typed.items()))
    if server.waiting is not None:
        assert sorted(typed.values()) == ["dent", "scratch", "unsure"]


def test_the_running_server_refuses_paths_out_of_the_store(server: Server) -> None:
    if server.waiting is None:
        pytest.skip("not against the demo app")
    """Raw HTTP (no client clean-up of '..'), signed in, against the real uvicorn server."""
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port

    def request(
        method: str, path: str, body: str = "", cookie: str = ""
    ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(host or "", port, timeout=WAIT_S)
        headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        conn.request(method, path, body=body, headers=headers)
        return conn.getresponse()

    login = request("GET", "/login")
    csrf_cookie = login.getheader("set-cookie", "").split(";")[0]
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.read().decode())
    assert csrf
    signed = request(
        "POST", "/login", f"name=ann&password={PASSWORD.replace(' ', '+')}&csrf={csrf.group(1)}",
        csrf_cookie,
    )  # fmt: skip
    assert signed.status == 303
    session = next(
        c.split(";")[0] for c in signed.headers.get_all("set-cookie") or [] if "lineqc_session" in c
    )
    for path in [
        "/image/../../etc/passwd",
        "/image/..%2f..%2fetc%2fpasswd",
        "/image/%2e%2e/%2e%2e/etc/passwd",
        "/static/../../../etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
    ]:
        response = request("GET", path, cookie=session)
        body = response.read()
        assert response.status == 404, path
        assert b"root:" not in body
    assert request("GET", "/queue", cookie=session).status == 200
