"""Sources and the capture thread: replay ends, newest frame wins, failures are reopened."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from lineqc.edge.config import CameraConfig
from lineqc.edge.sources import (
    MAX_HUNG_READS,
    Capture,
    EndOfStream,
    GuardedReader,
    Reader,
    SourceError,
    open_reader,
)
from tests.bombs import bomb_jpeg
from tests.cameras import MJPEGCamera


def _frames(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((20, 30), i, np.uint8))
    return folder


def _drain(cap: Capture, timeout: float = 10) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            f = cap.get(0.2)
        except EndOfStream:
            return out
        if f is not None:
            out.append(f)
    raise AssertionError("replay did not end")


def test_folder_replay_in_lockstep_delivers_every_frame_then_ends(tmp_path: Path) -> None:
    cap = Capture(CameraConfig(source=str(_frames(tmp_path / "f", 25))))
    cap.start()
    frames = _drain(cap)
    cap.stop()
    assert [f.seq for f in frames] == list(range(25)) and cap.drops == 0
    assert [int(f.image[0, 0]) for f in frames] == list(range(25))
    assert all(f.camera == "cam0" for f in frames)
    assert all(a.t_mono < b.t_mono for a, b in itertools.pairwise(frames))


def test_paced_replay_keeps_the_newest_frame_and_counts_drops(tmp_path: Path) -> None:
    cap = Capture(CameraConfig(source=str(_frames(tmp_path / "f", 60)), fps=200))
    cap.start()
    got = []
    while True:
        time.sleep(0.03)  # a slow consumer
        try:
            f = cap.get(0.5)
        except EndOfStream:
            break
        if f is not None:
            got.append(f.seq)
    cap.stop()
    assert cap.drops > 0 and len(got) + cap.drops == 60
    assert got == sorted(got)


def test_video_file_and_dataset_sources(tmp_path: Path) -> None:
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(12):
        w.write(np.full((24, 32, 3), i * 10, np.uint8))
    w.release()
    cap = Capture(CameraConfig(source=str(video)))
    cap.start()
    assert len(_drain(cap)) == 12
    cap.stop()
    ds = tmp_path / "ds"
    _frames(ds / "images", 4)
    rows = [
        {"id": str(i), "path": f"images/{i:03d}.png", "session": "exp5" if i % 2 else "exp1",
         "origin": str(i)}
        for i in range(4)
    ]  # fmt: skip
    (ds / "manifest.json").write_text(json.dumps({"images": rows}))
    reader = open_reader(CameraConfig(source=f"dataset://{ds}?session=exp5"))
    assert [p.name for p in reader.paths] == ["001.png", "003.png"]
    with pytest.raises(SourceError, match="unknown filter"):
        open_reader(CameraConfig(source=f"dataset://{ds}?colour=red"))


class Flaky(Reader):
    """Fails to open twice, then delivers, then its read fails (a camera unplugged)."""

    opens = 0

    def open(self) -> None:
        Flaky.opens += 1
        if Flaky.opens <= 2:
            raise SourceError("flaky: cannot open")
        self.n = 0

    def read(self) -> np.ndarray | None:
        self.n += 1
        if self.n > 5:
            raise SourceError("flaky: read failed")
        time.sleep(0.01)
        return np.full((8, 8), self.n, np.uint8)


def test_failing_source_is_reported_and_reopened_with_backoff() -> None:
    events = []
    cfg = CameraConfig(source="flaky://", reopen_min_s=0.05, reopen_max_s=0.2)
    cap = Capture(cfg, on_event=lambda s, d: events.append((s, d)), reader_factory=Flaky)
    cap.start()
    got = 0
    deadline = time.monotonic() + 5
    while cap.reopens < 2 and time.monotonic() < deadline:
        got += cap.get(0.1) is not None
    cap.stop()
    assert got > 0 and cap.reopens >= 2
    assert any("cannot open" in d for s, d in events if s == "error")
    assert any("read failed" in d for s, d in events if s == "error")
    assert any(s == "ok" for s, _ in events)


class Hangs(Reader):
    def __init__(self) -> None:
        self.n = 0
        self.released = threading.Event()

    def read(self) -> np.ndarray | None:
        self.n += 1
        if self.n > 3:
            self.released.wait(30)  # a driver that never returns
            raise SourceError("released")
        return np.full((8, 8), self.n, np.uint8)

    def close(self) -> None:
        self.released.set()


class Stale(Reader):
    def read(self) -> np.ndarray | None:
        time.sleep(0.005)
        return np.zeros((16, 16), np.uint8)


def test_hung_source_is_detected_and_reopened() -> None:
    events = []
    cfg = CameraConfig(source="hang://", frame_timeout_s=0.3, reopen_min_s=0.05)
    cap = Capture(cfg, on_event=lambda s, d: events.append((s, d)), reader_factory=Hangs)
    cap.start()
    deadline = time.monotonic() + 30  # a bound, not a timing: a loaded CI box is slow
    while cap.reopens < 1 and time.monotonic() < deadline:
        cap.get(0.1)
    cap.stop()
    assert cap.reopens >= 1 and any("hung" in d for _, d in events)


class Wedged(GuardedReader):
    """A driver that wedges after 3 frames until ``driver`` is set, and must never be torn
    down while a read is inside it (what OpenCV's FFmpeg backend crashes on)."""

    driver = threading.Event()
    torn_down: ClassVar[list[str]] = []  # "in-flight" for a teardown under a read

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.inside = False

    def _read(self) -> np.ndarray | None:
        self.n += 1
        if self.n > 3:
            self.inside = True
            try:
                Wedged.driver.wait(30)
            finally:
                self.inside = False
        return np.full((8, 8), self.n % 256, np.uint8)

    def _teardown(self) -> None:
        Wedged.torn_down.append("in-flight" if self.inside else "idle")


def test_hung_reads_are_abandoned_never_released_under_the_read_and_bounded() -> None:
    events = []
    cfg = CameraConfig(
        source="wedge://", frame_timeout_s=0.5, reopen_min_s=0.05, reopen_max_s=0.2, stale_frames=0
    )
    cap = Capture(cfg, on_event=lambda s, d: events.append((s, d)), reader_factory=Wedged)
    cap.start()
    try:
        most = 0
        deadline = time.monotonic() + 15
        while not any("not opening another" in d for _, d in events):
            assert time.monotonic() < deadline, events
            cap.get(0.05)
            most = max(most, cap.hung_reads())
        time.sleep(1.0)  # backing off at the bound: no further reader opens or hangs
        assert cap.hung_reads() == MAX_HUNG_READS <= cap.abandoned_reads
        assert most <= MAX_HUNG_READS and Wedged.torn_down == [], Wedged.torn_down

        Wedged.driver.set()  # the driver comes back: the abandoned reads return
        deadline = time.monotonic() + 15
        while cap.hung_reads() or cap.state != "ok":
            assert time.monotonic() < deadline, (cap.stats(), events[-3:])
            cap.get(0.05)
        got = [cap.get(1.0) for _ in range(5)]
        assert all(f is not None for f in got)  # frames flow from a fresh reader
        # each abandoned reader was torn down by its own thread once its read returned
        assert Wedged.torn_down.count("idle") >= MAX_HUNG_READS
        assert "in-flight" not in Wedged.torn_down
        assert cap.stats()["abandoned_reads"] >= MAX_HUNG_READS and cap.stats()["hung_reads"] == 0
    finally:
        cap.stop()
        Wedged.driver.set()


# A process of its own: the crash this guards against is a SIGSEGV, which would take pytest.
HUNG_STREAM_CHILD = """
import json, sys, threading, time
from lineqc.edge.config import CameraConfig
from lineqc.edge.sources import Capture

def say(**doc):
    print(json.dumps(doc), flush=True)

cfg = CameraConfig(id="cam0", source=sys.argv[1], frame_timeout_s=1.0, reopen_min_s=0.2,
                   reopen_max_s=1.0)
cap = Capture(cfg, on_event=lambda state, detail: say(state=state, detail=detail))
cap.start()
stdin_open = threading.Thread(target=sys.stdin.read)  # the parent closes it: stop
stdin_open.start()
while stdin_open.is_alive():
    frame = cap.get(0.2)
    if frame is not None:
        say(frame=frame.seq)
deadline = time.monotonic() + 20
while cap.hung_reads() and time.monotonic() < deadline:
    time.sleep(0.1)
cap.stop()
say(stats=cap.stats())
"""


@pytest.mark.slow
def test_a_hung_opencv_stream_that_resumes_is_reopened_without_crashing(tmp_path: Path) -> None:
    camera = MJPEGCamera(sorted(_frames(tmp_path / "frames", 10).iterdir()))
    child = subprocess.Popen(
        [sys.executable, "-c", HUNG_STREAM_CHILD, camera.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[dict] = []
    out: list[str] = []

    def collect() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            out.append(line)
            if line.startswith("{"):
                lines.append(json.loads(line))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    def wait_for(what, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert child.poll() is None, f"exit {child.returncode}: {''.join(out)}"
            assert time.monotonic() < deadline, "".join(out)
            time.sleep(0.05)

    def frames() -> int:
        return sum("frame" in d for d in lines)

    try:
        wait_for(lambda: frames() >= 10)
        camera.pause()
        wait_for(lambda: any("(hung); reopening" in d.get("detail", "") for d in lines))
        time.sleep(1.5)  # the fresh capture is opening on the silent stream
        before = frames()
        camera.resume()  # the abandoned read returns: its capture is released, in its thread
        wait_for(lambda: frames() >= before + 10)
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)
        reader.join(10)
        assert child.returncode == 0, f"exit {child.returncode}: {''.join(out)}"  # -11: SIGSEGV
        stats = lines[-1]["stats"]
        assert stats["abandoned_reads"] >= 1 and stats["reopens"] >= 1, stats
        assert stats["hung_reads"] == 0, stats  # the abandoned read returned and was closed
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        camera.close()


def test_stale_source_is_detected_and_reopened() -> None:
    events = []
    cfg = CameraConfig(source="stale://", stale_frames=10, reopen_min_s=0.05)
    cap = Capture(cfg, on_event=lambda s, d: events.append((s, d)), reader_factory=Stale)
    cap.start()
    deadline = time.monotonic() + 5
    while cap.reopens < 1 and time.monotonic() < deadline:
        cap.get(0.1)
    cap.stop()
    assert any("stale" in d for _, d in events)


def test_missing_camera_and_bad_uris() -> None:
    reader = open_reader(CameraConfig(source="v4l2://63"))
    with pytest.raises(SourceError, match="cannot open"):
        reader.open()
    with pytest.raises(SourceError, match="device number"):
        open_reader(CameraConfig(source="csi://front"))
    with pytest.raises(SourceError, match="no such camera"):
        unchecked = {"source": "/nonexistent/folder"}
        open_reader(CameraConfig.model_validate(unchecked, context={"check_files": False}))


@pytest.mark.parametrize("bad", ["empty", "fifo", "bomb", "undecodable"])
def test_a_bad_file_in_a_replay_is_skipped_and_counted(tmp_path: Path, bad: str) -> None:
    """A zero-byte file, a FIFO (a read would block forever), a decompression bomb (30000 x
    30000 pixels declared in 335 bytes) and bytes OpenCV cannot decode: each is one bad
    frame; the replay neither reopens from its first image, nor hangs, nor decodes the bomb."""
    folder = _frames(tmp_path / "f", 4)
    path = folder / "001-bad.jpg"
    if bad == "empty":
        path.write_bytes(b"")
    elif bad == "fifo":
        os.mkfifo(path)
    elif bad == "bomb":
        path.write_bytes(bomb_jpeg())
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    events: list[tuple[str, str]] = []
    cap = Capture(CameraConfig(source=str(folder)), on_event=lambda s, d: events.append((s, d)))
    cap.start()
    try:
        frames = _drain(cap)
    finally:
        cap.stop()
    assert [int(f.image[0, 0]) for f in frames] == [0, 1, 2, 3]
    assert (cap.bad_frames, cap.reopens) == (1, 0)
    assert not [d for s, d in events if s == "error"]


def test_a_looping_replay_of_unreadable_files_backs_off_instead_of_spinning(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    events: list[tuple[str, str]] = []
    cfg = CameraConfig(source=str(folder), loop=True, reopen_min_s=0.05, reopen_max_s=0.1)
    cap = Capture(cfg, on_event=lambda s, d: events.append((s, d)))
    cap.start()
    time.sleep(0.5)
    cap.stop()
    assert any("none of its 1 images reads" in d for s, d in events if s == "error")
