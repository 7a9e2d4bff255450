"""The review app as inspectors use it: the real `lineqc review serve` process, driven by
Debian's headless Chromium through Selenium. Sign in, label three frames by keyboard, watch
the queue shrink, then check the database; adjudicate; and the admins' line-health and fleet
pages, fed through Mosquitto and the collector. LINEQC_SCREENSHOTS keeps the screenshots."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy import select

from lineqc.edge.wire import Sample, dumps, result_message
from lineqc.review.fleet import record_deploy, record_message
from lineqc.review.store import Adjudication, Review, ReviewHistory, Store, User, set_setting
from tests.review.kit import CLASSES as KIT_CLASSES
from tests.review.kit import HOUR, NOW, Seeder, defect_map, line_frames, review_serve
from tests.review.test_collector import publish

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


# LINEQC_REVIEW_URL, _DB and _IMAGES point the keyboard test at a running app instead (the
# `make demo` one, as inspector / inspect-demo).
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


# ---- an inspector's shift: queue pages, the fitted frame, the defect map, the guide ------

SHOTS = os.environ.get("LINEQC_SCREENSHOTS")  # a folder to keep the screenshots in


@dataclass
class Shift:
    url: str
    db: str
    images: Path
    shots: Path
    waiting: int  # frames in ann's queue
    disputed: int


@pytest.fixture
def shift(tmp_path: Path) -> Iterator[Shift]:
    """36 synthetic line frames with defect maps: 6 already agreed by bob (the class guide's
    examples), 2 disputed by bob and carol, the rest waiting; ann inspects, root adjudicates."""
    if DEMO["url"]:
        pytest.skip("needs its own frames, not the demo app's")
    db, images = f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images"
    store = Store(db, images)
    with store.session() as s:
        set_setting(s, "double_review_share", 0.0)
    seeder = Seeder(store)
    reasons = ["ambiguous", "low_confidence", "below_class_threshold"]
    frames = []
    for i, f in enumerate(line_frames(36)):
        probs = [0.1, 0.1, 0.1, 0.1]
        probs[KIT_CLASSES.index(f.label)] += 0.3 + 0.01 * (i % 7)  # leaning right, unsure
        pk = seeder.frame(
            f"dev1-cam0-7-{i:04d}", f.jpeg, required=2 if i in (1, 2) else 1,
            ts=NOW - HOUR + 60 * i, probabilities=[p / sum(probs) for p in probs],
            reason=reasons[i % 3], defect_map=defect_map(f.cells),
        )  # fmt: skip
        frames.append((pk, f.label))
    for pk, label in frames[3:9]:
        seeder.answer(pk, "bob", label)
    for pk, _ in frames[1:3]:
        seeder.answer(pk, "bob", "dent")
        seeder.answer(pk, "carol", "scratch")
    store.close()
    lineqc_review("add-user", "ann", "--password-stdin", "--db", db, stdin=PASSWORD + "\n")
    lineqc_review("add-user", "root", "--password-stdin", "--admin", "--db", db,
                  stdin=PASSWORD + "\n")  # fmt: skip
    shots = Path(SHOTS) if SHOTS else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    db_args = ["--db", db, "--images", str(images), "--host", "127.0.0.1"]
    with review_serve(db_args, tmp_path / "serve.log") as url:
        yield Shift(url, db, images, shots, waiting=36 - 8, disputed=2)


def sign_in(driver: Any, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: urlsplit(d.current_url).path == "/queue")


def wait_for(driver: Any, condition: Callable[[Any], Any]) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def loaded(driver: Any, image: Any) -> bool:
    script = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    return bool(driver.execute_script(script, image))


def rect(driver: Any, element_id: str) -> dict[str, float]:
    """The element's box on screen (CSS pixels)."""
    box: dict[str, float] = driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return {left: r.left, top: r.top, width: r.width, height: r.height};",
        element_id,
    )
    return box


def same_box(a: dict[str, float], b: dict[str, float], tolerance: float = 1.0) -> bool:
    return all(abs(a[k] - b[k]) <= tolerance for k in ("left", "top", "width", "height"))


def fitted(driver: Any) -> dict[str, float]:
    """The image's box once the viewer fitted it: whole, centred, touching two sides."""
    wait_for(
        driver, lambda d: "ready" in (d.find_element("id", "viewer").get_attribute("class") or "")
    )
    image, viewer = rect(driver, "frame-image"), rect(driver, "viewer")
    assert image["left"] >= viewer["left"] - 1 and image["top"] >= viewer["top"] - 1
    gaps = (
        image["left"] - viewer["left"],
        viewer["left"] + viewer["width"] - image["left"] - image["width"],
        image["top"] - viewer["top"],
        viewer["top"] + viewer["height"] - image["top"] - image["height"],
    )
    assert min(gaps) >= -1, (image, viewer)
    assert abs(gaps[0] - gaps[1]) <= 1 and abs(gaps[2] - gaps[3]) <= 1, "not centred"
    assert min(gaps[0] + gaps[1], gaps[2] + gaps[3]) <= 2, "fills neither width nor height"
    return image


def answers_of(db: str, images: Path, name: str) -> tuple[dict[int, str], list[tuple[int, str]]]:
    """(frame pk -> current answer, [(frame pk, replaced answer)]) of one inspector."""
    store = Store(db, images)
    try:
        with store.session() as s:
            user = s.scalar(select(User.id).where(User.name == name))
            current = dict(
                s.execute(select(Review.frame_pk, Review.label).where(Review.user_id == user)).all()
            )
            replaced = s.execute(
                select(ReviewHistory.frame_pk, ReviewHistory.label)
                .where(ReviewHistory.user_id == user)
                .order_by(ReviewHistory.id)
            ).all()
    finally:
        store.close()
    return current, [(int(pk), str(label)) for pk, label in replaced]


def test_an_inspectors_shift(shift: Shift, chrome: object) -> None:
    """Queue pages with thumbnails; a frame fitted to the viewer; the defect map over it at
    fit and zoomed, toggled by `m` and remembered; the class guide on `g`; an answer
    changed by going back (`b`), kept in the history."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(chrome, WebDriver)
    driver = chrome

    def press(key: str) -> None:
        ActionChains(driver).send_keys(key).perform()

    def frame_pk() -> int:
        return int(driver.find_element(By.ID, "frame-page").get_attribute("data-frame") or 0)

    def shot(name: str) -> None:
        driver.save_screenshot(str(shift.shots / f"{name}.png"))

    sign_in(driver, shift.url, "ann")
    # the queue: a page of thumbnail cards, then the next page
    cards = driver.find_elements(By.CSS_SELECTOR, "#queue-frames > li")
    assert len(cards) == 24 and driver.find_element(By.ID, "page-of").text == "page 1 of 2"
    assert int(driver.find_element(By.ID, "waiting-count").text) == shift.waiting
    first_thumbs = driver.find_elements(By.CSS_SELECTOR, "#queue-frames img.thumb")[:5]
    wait_for(driver, lambda d: all(loaded(d, t) for t in first_thumbs))
    reasons = {c.find_element(By.CLASS_NAME, "reason").text for c in cards}
    assert reasons == {
        "two classes nearly tied", "low confidence", "below the class's threshold"
    }  # fmt: skip
    shot("queue")
    driver.find_element(By.ID, "page-next").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "page-of").text == "page 2 of 2")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#queue-frames > li")) == shift.waiting - 24
    driver.find_element(By.ID, "start").click()

    # the frame opens fitted; the defect map is off until asked for
    first = frame_pk()
    at_fit = fitted(driver)
    overlay = driver.find_element(By.ID, "defect-map")
    toggle = driver.find_element(By.ID, "defect-map-toggle")
    assert not overlay.is_displayed() and not toggle.is_selected()
    shot("frame-fit")
    press("m")
    wait_for(driver, lambda d: overlay.is_displayed())
    wait_for(driver, lambda d: loaded(d, overlay))
    assert toggle.is_selected()
    assert same_box(rect(driver, "defect-map"), at_fit)
    shot("frame-map-fit")
    press("+")
    press("+")
    wait_for(driver, lambda d: rect(d, "frame-image")["width"] > 2 * at_fit["width"])
    assert same_box(rect(driver, "defect-map"), rect(driver, "frame-image"))
    shot("frame-map-zoomed")
    press("0")
    wait_for(driver, lambda d: same_box(rect(d, "frame-image"), at_fit))

    # the class guide, one key away: a line and examples per class, the OK class marked
    press("g")
    guide = driver.find_element(By.ID, "guide")
    wait_for(driver, lambda d: guide.is_displayed())
    entries = guide.find_elements(By.CLASS_NAME, "guide-entry")
    assert [e.get_attribute("data-class") for e in entries] == KIT_CLASSES
    for e in entries:
        assert e.find_element(By.CLASS_NAME, "description").text
    ok_entry = entries[KIT_CLASSES.index("ok")]
    assert ok_entry.find_elements(By.CLASS_NAME, "ok-badge")
    examples = guide.find_elements(By.CSS_SELECTOR, ".examples img")
    assert examples  # bob's agreed frames
    wait_for(driver, lambda d: all(loaded(d, img) for img in examples))
    shot("guide")
    press("g")
    wait_for(driver, lambda d: not guide.is_displayed())

    # answer, go back with `b`, change the answer; the next frame keeps the map on
    page = driver.find_element(By.ID, "frame-page")
    press(str(KIT_CLASSES.index("scratch") + 1))
    wait_for(driver, lambda d: d.find_element(By.ID, "frame-page") != page)
    assert frame_pk() != first
    fitted(driver)
    wait_for(driver, lambda d: d.find_element(By.ID, "defect-map").is_displayed())
    press("b")
    wait_for(driver, lambda d: frame_pk() == first)
    notice = driver.find_element(By.ID, "your-answer").text
    assert "You answered scratch" in notice and "change it" in notice
    page = driver.find_element(By.ID, "frame-page")
    press(str(KIT_CLASSES.index("dent") + 1))
    wait_for(driver, lambda d: d.find_element(By.ID, "frame-page") != page)
    current, replaced = answers_of(shift.db, shift.images, "ann")
    assert current == {first: "dent"} and replaced == [(first, "scratch")]
    driver.get(f"{shift.url}frame/{first}")
    assert "scratch" in driver.find_element(By.ID, "history").text
    shot("frame-changed")
    press("m")  # off again, and remembered off
    driver.get(f"{shift.url}frame/{first}")
    fitted(driver)
    assert not driver.find_element(By.ID, "defect-map").is_displayed()


def test_adjudication_with_the_viewer_and_keys(shift: Shift, chrome: object) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(chrome, WebDriver)
    driver = chrome
    sign_in(driver, shift.url, "root")
    driver.get(shift.url + "adjudicate")
    thumbs = driver.find_elements(By.CSS_SELECTOR, "li.card-frame img.thumb")
    assert len(thumbs) == shift.disputed
    wait_for(driver, lambda d: all(loaded(d, t) for t in thumbs))
    driver.save_screenshot(str(shift.shots / "adjudicate-list.png"))
    driver.find_element(By.ID, "start").click()
    at_fit = fitted(driver)
    keys = [
        b.get_attribute("data-key")
        for b in driver.find_elements(By.CSS_SELECTOR, "#label-form button")
    ]
    assert keys == ["1", "2", "3", "4"]  # classes only: no unsure, no skip
    assert "bob: dent" in driver.find_element(By.ID, "inspector-answers").text
    ActionChains(driver).send_keys("+").perform()
    wait_for(driver, lambda d: rect(d, "frame-image")["width"] > at_fit["width"] * 1.2)
    driver.save_screenshot(str(shift.shots / "adjudicate-frame.png"))
    ActionChains(driver).send_keys("0").perform()
    decided = []
    for key in ["2", "4"]:
        page = driver.find_element(By.ID, "frame-page")
        decided.append(int(page.get_attribute("data-frame") or 0))
        ActionChains(driver).send_keys(key).perform()
        wait_for(driver, lambda d, p=page: d.find_elements(By.ID, "frame-page") != [p])
    wait_for(driver, lambda d: urlsplit(d.current_url).path == "/adjudicate")
    assert "No disputed frame waits" in driver.page_source
    store = Store(shift.db, shift.images)
    try:
        with store.session() as s:
            rows = s.execute(select(Adjudication.frame_pk, Adjudication.label)).all()
    finally:
        store.close()
    assert sorted(rows) == sorted(zip(decided, ["dent", "scratch"], strict=True))


def test_line_health_and_fleet_pages_as_an_admin_sees_them(
    tmp_path: Path,
    chrome: object,
    broker_factory: Callable[..., Any],
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """Two cameras' results go through Mosquitto into the collector's rollups; the second
    camera's lamp brightens half way. In the browser, /health shows that camera's drift
    alarm and every camera's four plots drawn, and /fleet shows the devices' rollout."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(chrome, WebDriver)
    driver = chrome
    broker = broker_factory(extra="max_queued_messages 10000")  # all held for the session
    db, images = f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images"
    config = tmp_path / "monitor.yaml"
    thresholds = {"min_frames": 100, "drift_psi": 0.25, "uncertain_share": 0.3}
    config.write_text(
        yaml.safe_dump({"bucket_s": 300, "reference_frames": 150, "defaults": thresholds})
    )
    collect = [
        "review", "collect", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db,
        "--images", str(images), "--group", "", "--client-id", "health",
        "--monitor-config", str(config),
    ]  # fmt: skip
    lineqc(*collect, "--exit-idle", "0.5")  # opens the persistent session
    n = 600  # one frame every 5 s: the ten buckets before the current one
    start = (time.time() // 300 - 10) * 300
    for device in ("dev1", "dev2"):
        results = []
        for seq in range(n):
            relit = device == "dev2" and seq >= n // 2
            results.append(
                dumps(
                    result_message(
                        frame_id=f"{device}-cam0-1-{seq}", device=device, camera="cam0",
                        seq=seq, ts=start + seq * 5.0, model_version="m1",
                        verdict="uncertain" if seq % 10 == 0 else "ok", label="ok",
                        confidence=0.9, reason=None, latency_ms=4.0 + seq % 7, sampled=None,
                        brightness=(160.0 if relit else 100.0) + seq % 9,
                    )
                )
            )  # fmt: skip
        publish(broker.port, results, topic=f"lineqc/v1/site1/line1/{device}/result")
    done = lineqc(*collect, "--exit-idle", "2")
    assert f"monitored {2 * n}" in done.stdout, done.stdout + done.stderr

    store = Store(db, images)
    try:
        record_deploy(store, "site1/line1/dev2", "cmd-1", "m2", "canary")
        for device, rollout in (
            ("dev1", None),
            ("dev2", {"state": "rolled_back", "reason": "p99 41 ms > 30 ms", "active": "m1",
                      "active_slot": "a", "candidate": None}),
        ):  # fmt: skip
            status = {"state": "running", "model_version": "m1", "rollout": rollout}
            record_message(store, f"site1/line1/{device}", "status", status)
    finally:
        store.close()
    lineqc_review("add-user", "root", "--password-stdin", "--admin", "--db", db,
                  stdin=PASSWORD + "\n")  # fmt: skip
    shots = Path(SHOTS) if SHOTS else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    serve = ["--db", db, "--images", str(images), "--host", "127.0.0.1"]
    with review_serve([*serve, "--monitor-config", str(config)], tmp_path / "serve.log") as url:
        sign_in(driver, url, "root")
        driver.get(url + "health")
        alarms = driver.find_elements(By.CSS_SELECTOR, "#alarms tr.alarm")
        assert [a.get_attribute("data-alarm") for a in alarms] == ["site1/line1/dev2/cam0/drift"]
        assert alarms[0].is_displayed()
        for device in ("dev1", "dev2"):
            card = driver.find_element(By.ID, f"camera-site1-line1-{device}-cam0")
            plots = card.find_elements(By.CSS_SELECTOR, "svg.plot")
            assert len(plots) == 4
            assert all(p.is_displayed() and p.size["width"] > 100 for p in plots)
            # throughput, uncertain share and latency: a line over the ten buckets
            lines = card.find_elements(By.CSS_SELECTOR, "svg.plot polyline")
            assert len(lines) == 3
            assert all(len((p.get_attribute("points") or "").split()) == 10 for p in lines)
        driver.save_screenshot(str(shots / "health.png"))

        driver.get(url + "fleet")
        rows = {
            r.get_attribute("data-device") or "": r
            for r in driver.find_elements(By.CSS_SELECTOR, "#fleet tr[data-device]")
        }
        assert sorted(rows) == ["site1/line1/dev1", "site1/line1/dev2"]
        dev2 = rows["site1/line1/dev2"]
        assert dev2.find_element(By.CSS_SELECTOR, "td.rollout").text == "rolled_back"
        assert "error" in (dev2.find_element(By.CSS_SELECTOR, "td.rollout").get_attribute(
            "class") or "")  # fmt: skip
        assert dev2.find_element(By.CSS_SELECTOR, "td.reason").text == "p99 41 ms > 30 ms"
        assert "m2 (canary)" in dev2.text
        driver.save_screenshot(str(shots / "fleet.png"))
