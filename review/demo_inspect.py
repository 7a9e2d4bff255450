"""`lineqc review demo-inspect`: scripted inspectors for `make demo`, and an admin.

They are an ORACLE, and say so: each answer is the dataset's known label of the frame's
part (the demo replays held-out production parts whose labels the dataset keeps,
``conflicts.KnownLabels``), never a judgement of the image. A share of answers
(``--wrong-share``) is wrong on purpose, so that double review disagrees, the admin
adjudicates, and agreed wrong labels surface as label conflicts. They use the running app
over HTTP as a person's browser does (sign-in, CSRF tokens, the label forms); only the
oracle's lookup reads the store.

The admin settles the disputed frames with the known label and leaves the label conflicts
waiting in /adjudicate: export-labels holds them back, which is what the demo shows.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path

from lineqc.datasets import manifest as mf
from lineqc.errors import LineqcError

from .conflicts import ConflictFinder, KnownLabels, own_row_id
from .demo import DEMO_USERS
from .store import UNSURE, Frame, Store

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FRAME_URL = re.compile(r"/frame/(\d+)")
DISPUTE = re.compile(r'id="dispute-(\d+)"')
CONFLICT = re.compile(r'id="conflict-(\d+)"')
INSPECTORS = [(name, password) for name, password, admin in DEMO_USERS if not admin]
ADMIN = next((name, password) for name, password, admin in DEMO_USERS if admin)


def log(message: str) -> None:
    print(f"demo-inspect: {message}", file=sys.stderr, flush=True)


class Browser:
    """A signed-in session of the review app: cookies, the CSRF token, form posts."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.csrf = ""

    def get(self, path: str) -> tuple[str, str]:
        """(the URL it ended at after redirects, the page)."""
        return self._open(path, None)

    def post(self, path: str, **form: str) -> tuple[str, str]:
        return self._open(path, urllib.parse.urlencode({"csrf": self.csrf, **form}).encode())

    def _open(self, path: str, data: bytes | None) -> tuple[str, str]:
        try:
            with self.opener.open(self.base + path, data, timeout=30) as response:
                return response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            raise LineqcError(f"demo-inspect: {path}: the review app answered {exc.code}") from None
        except urllib.error.URLError as exc:
            raise LineqcError(
                f"demo-inspect: no review app at {self.base} ({exc.reason}); is `make demo` "
                "serving?"
            ) from None

    def sign_in(self, name: str, password: str) -> None:
        _, page = self.get("/login")
        self.csrf = _csrf(page)
        url, page = self.post("/login", name=name, password=password, next="/queue")
        if "/login" in url:
            raise LineqcError(f"demo-inspect: cannot sign in as {name} at {self.base}")
        self.csrf = _csrf(page)  # the session's token from now on

    def next_frame(self) -> int | None:
        url, page = self.get("/next")
        found = FRAME_URL.search(urllib.parse.urlsplit(url).path)
        if found is None:
            return None
        self.csrf = _csrf(page)
        return int(found[1])


def _csrf(page: str) -> str:
    found = CSRF.search(page)
    if found is None:
        raise LineqcError("demo-inspect: the review app's page has no CSRF token")
    return found[1]


@dataclass
class Oracle:
    """The dataset's known label of a stored frame, and a seeded share of wrong ones."""

    store: Store
    finder: ConflictFinder
    wrong_share: float
    seed: int
    wrong: dict[str, int] = field(default_factory=dict)  # inspector -> wrong answers given

    def truth(self, pk: int) -> tuple[str, list[str]] | None:
        """(the known label, the frame's classes), None when the dataset knows nothing."""
        with self.store.session() as s:
            frame = s.get(Frame, pk)
            if frame is None or frame.image_sha256 is None:
                return None
            image = self.store.image_path(frame.image_sha256)
            own = own_row_id(frame.device, frame.camera, frame.frame_id)
            classes = list(frame.classes)
        known = self.finder.known_for(image, own)
        if known is None or len(known.labels) != 1 or known.labels[0] not in classes:
            return None
        return known.labels[0], classes

    def answer(self, pk: int, inspector: str) -> str:
        found = self.truth(pk)
        if found is None:
            return UNSURE  # nothing known: an honest inspector says so
        label, classes = found
        draw = random.Random(f"{self.seed}:{inspector}:{pk}")
        if len(classes) > 1 and draw.random() < self.wrong_share:
            self.wrong[inspector] = self.wrong.get(inspector, 0) + 1
            return draw.choice([c for c in classes if c != label])
        return label


def inspect_queue(browser: Browser, oracle: Oracle, name: str) -> int:
    """Answer every frame the app offers ``name``; how many."""
    answered = 0
    while (pk := browser.next_frame()) is not None:
        browser.post(f"/frame/{pk}/label", label=oracle.answer(pk, name))
        answered += 1
    return answered


def adjudicate_disputes(browser: Browser, oracle: Oracle) -> tuple[int, int]:
    """Settle every disputed frame with its known label; (settled, label conflicts left)."""
    _, page = browser.get("/adjudicate")
    conflicts = {int(pk) for pk in CONFLICT.findall(page)}
    disputed = [int(pk) for pk in DISPUTE.findall(page) if int(pk) not in conflicts]
    settled = 0
    for pk in disputed:
        found = oracle.truth(pk)
        if found is not None:
            _, frame_page = browser.get(f"/adjudicate/{pk}")
            browser.csrf = _csrf(frame_page)
            browser.post(f"/adjudicate/{pk}", label=found[0])
            settled += 1
    return settled, len(conflicts)


def run_demo_inspect(args: argparse.Namespace) -> int:
    if not 0 <= args.wrong_share < 1:
        raise LineqcError(f"--wrong-share {args.wrong_share}: must lie from 0 up to 1")
    manifest = mf.load(Path(args.dataset))
    if not manifest.records:
        raise LineqcError(f"--dataset {args.dataset}: no dataset there")
    log(
        "the scripted inspectors are an ORACLE: each answer is the dataset's known label of "
        "the frame's part (the held-out production parts), not a judgement of the image; "
        f"{args.wrong_share:.0%} of their answers are wrong on purpose, to show agreement, "
        "adjudication and label conflicts at work"
    )
    store = Store(args.db, args.images)
    try:
        oracle = Oracle(
            store, ConflictFinder(KnownLabels.of(manifest)), args.wrong_share, args.seed
        )
        answers = {}
        for name, password in INSPECTORS:
            browser = Browser(args.url)
            browser.sign_in(name, password)
            answers[name] = inspect_queue(browser, oracle, name)
            log(f"{name}: {answers[name]} answer(s), {oracle.wrong.get(name, 0)} wrong on purpose")
        admin = Browser(args.url)
        admin.sign_in(*ADMIN)
        settled, conflicts = adjudicate_disputes(admin, oracle)
    finally:
        store.close()
    log(f"{ADMIN[0]}: {settled} disputed frame(s) adjudicated with the known label")
    log(
        f"{conflicts} label conflict(s) wait at {args.url.rstrip('/')}/adjudicate: agreed "
        "answers the dataset contradicts; export-labels holds them back until an admin decides"
    )
    if args.json:
        doc = {"answers": answers, "wrong": oracle.wrong, "adjudicated": settled}
        print(json.dumps({**doc, "conflicts_waiting": conflicts}, indent=2))
    return 0
