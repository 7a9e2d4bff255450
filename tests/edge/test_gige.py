"""GigE Vision sources (edge/gige.py): pixel conversion and frame-id accounting here, and end
to end against Aravis's fake GigE Vision camera (``arv-fake-gv-camera-0.8``) on loopback:
frames arrive as configured, one software trigger yields exactly one frame, incomplete and
lost buffers are counted, a killed camera is detected and the source reopens when a camera
answers again. Without Aravis (``make setup`` as root installs it) those tests skip, saying
what is missing."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from lineqc.edge.config import CameraConfig
from lineqc.edge.gige import (
    COLOR,
    MONO,
    GenICamReader,
    UnsupportedFormat,
    frames_missed,
    load_aravis,
    resolve_device,
    to_image,
)
from lineqc.edge.sources import Capture, CapturedFrame, Reader, SourceError, open_reader

FAKE_CAMERA = "arv-fake-gv-camera-0.8"
LOCK = Path("/tmp/lineqc-test-fake-gige.lock")  # one fake camera on 127.0.0.1 at a time


# ---- without a camera ---------------------------------------------------------------------


def test_mono_formats_keep_the_high_eight_bits() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(to_image(gray.tobytes(), 4, 3, 0x01080001), gray)
    for code, bits in MONO.items():
        if bits == 8:
            continue
        wide = (gray.astype(np.uint16) << (bits - 8)) | ((1 << (bits - 8)) - 1)  # low bits set
        got = to_image(wide.astype("<u2").tobytes(), 4, 3, code)
        assert got is not None and got.dtype == np.uint8 and np.array_equal(got, gray), bits


def test_color_formats_become_bgr() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # a red scene
    bgr = to_image(rgb.tobytes(), 6, 4, 0x02180014)  # RGB8
    assert bgr is not None and bgr.shape == (4, 6, 3) and (bgr[..., 2] == 200).all()
    assert np.array_equal(to_image(bgr.tobytes(), 6, 4, 0x02180015), bgr)  # BGR8 as is
    # Bayer: a red scene through each mosaic comes out red (the top-left 2x2 names it)
    where_red = {0x01080009: (0, 0), 0x01080008: (0, 1), 0x0108000B: (1, 1), 0x0108000A: (1, 0)}
    for code, (y, x) in where_red.items():
        mosaic = np.zeros((8, 8), np.uint8)
        mosaic[y::2, x::2] = 200
        out = to_image(mosaic.tobytes(), 8, 8, code)
        assert out is not None and tuple(out[4, 4]) == (0, 0, 200), hex(code)
    uyvy = np.full((4, 6, 2), 128, np.uint8)  # mid-grey in YUV 4:2:2
    for code in (0x0210001F, 0x02100032):
        out = to_image(uyvy.tobytes(), 6, 4, code)
        assert out is not None and out.shape == (4, 6, 3) and abs(int(out.mean()) - 128) < 3


def test_short_buffers_and_unknown_formats() -> None:
    assert to_image(b"\0" * 11, 4, 3, 0x01080001) is None  # one byte short: incomplete
    assert to_image(b"\0" * 24, 4, 3, 0x02180014) is None
    with pytest.raises(UnsupportedFormat, match=r"Mono12Packed|0x010c0006.*Mono8"):
        to_image(b"\0" * 64, 4, 3, 0x010C0006)  # Mono12Packed


def test_frame_id_gaps_count_lost_frames() -> None:
    assert frames_missed(None, 7) == 0
    assert frames_missed(7, 8) == 0
    assert frames_missed(7, 10) == 2
    assert frames_missed(65534, 2) == 2  # wrapped: 65535 and 1 were lost (0 is not an id)
    assert frames_missed(65535, 1) == 0
    assert frames_missed(10, 5) == 0  # backwards: the camera restarted counting
    assert frames_missed(10, 50_000) == 0  # a jump that large is a restart, not losses
    assert frames_missed(2**40, 2**40 + 4) == 3  # 64-bit ids (GigE Vision 2, USB3) do not wrap


def test_gige_uris_open_through_aravis_only_when_opened() -> None:
    code = (
        "import sys; from lineqc.edge.config import CameraConfig; "
        "from lineqc.edge.sources import open_reader; "
        "r = open_reader(CameraConfig(source='gige://X1')); "
        "print(type(r).__name__, 'gi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["GenICamReader", "False"]


def test_without_pygobject_the_source_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gi", None)  # import gi -> ImportError
    reader = open_reader(CameraConfig(source="gige://X1"))
    with pytest.raises(SourceError, match="PyGObject"):
        reader.open()


class WaitsForParts(Reader):
    """A triggered camera: no frame, but alive (alive_at moves on) until released."""

    def __init__(self) -> None:
        self.n = 0

    def read(self) -> np.ndarray | None:
        self.n += 1
        if self.n == 1:
            return np.zeros((8, 8), np.uint8)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            self.alive_at = time.monotonic()
            time.sleep(0.02)
        return np.full((8, 8), self.n, np.uint8)


def test_the_watchdog_lets_a_live_triggered_camera_wait() -> None:
    events: list[tuple[str, str]] = []
    cfg = CameraConfig(source="trig://", frame_timeout_s=0.3, stale_frames=0)
    cap = Capture(cfg, on_event=lambda s, d: events.append((s, d)), reader_factory=WaitsForParts)
    cap.start()
    got = []
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        frame = cap.get(0.1)
        if frame is not None:
            got.append(frame)
    cap.stop()
    assert len(got) >= 2 and cap.reopens == 0, events
    assert not [d for s, d in events if s == "error"]


# ---- against Aravis's fake GigE Vision camera -----------------------------------------------


@pytest.fixture(scope="module")
def aravis() -> Iterator[Any]:
    if shutil.which(FAKE_CAMERA) is None:
        pytest.skip(
            f"{FAKE_CAMERA} not installed (Debian aravis-tools; `make setup` as root installs it)"
        )
    try:
        module = load_aravis()
    except SourceError as exc:
        pytest.skip(f"{exc} (`make setup` as root installs it)")
    # One fake camera on loopback at a time, across concurrent test runs on this machine:
    # two would answer on the same address.
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test run holds {LOCK} (its fake camera) for 300 s")
                time.sleep(0.5)
        here = [d for d in _devices(module) if d["address"] == "127.0.0.1"]
        if here:
            pytest.fail(f"a GigE Vision device already answers on 127.0.0.1: {here} (stop it)")
        yield module


def _devices(aravis: Any) -> list[dict[str, str]]:
    from lineqc.edge.gige import list_devices

    return list_devices(aravis)


class FakeCamera:
    """arv-fake-gv-camera-0.8 on 127.0.0.1, started and killed by the test."""

    def __init__(self, aravis: Any, serial: str, *args: str) -> None:
        self.aravis, self.serial, self.args = aravis, serial, args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeCamera:
        self.proc = subprocess.Popen(
            [FAKE_CAMERA, "-i", "127.0.0.1", "-s", self.serial, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not any(d["serial"] == self.serial for d in _devices(self.aravis)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{FAKE_CAMERA} -s {self.serial} did not answer")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # a camera losing power: nothing said
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def fake_camera(aravis: Any) -> Iterator[Callable[..., FakeCamera]]:
    cameras: list[FakeCamera] = []

    def start(*args: str) -> FakeCamera:
        serial = f"LQC{os.getpid() % 100000}{len(cameras)}"
        cameras.append(FakeCamera(aravis, serial, *args).start())
        return cameras[-1]

    yield start
    for camera in cameras:
        camera.kill()


def _config(serial: str, **kw: Any) -> CameraConfig:
    base = {"frame_timeout_s": 1.0, "reopen_min_s": 0.2, "reopen_max_s": 1.0}
    return CameraConfig.model_validate({"source": f"gige://{serial}", **base, **kw})


class Recorded:
    """A Capture whose readers the test can reach (to send software triggers)."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.readers: list[GenICamReader] = []
        self.events: list[tuple[str, str]] = []
        self.cap = Capture(
            cfg, on_event=lambda s, d: self.events.append((s, d)), reader_factory=self._new
        )

    def _new(self) -> Reader:
        reader = open_reader(self.cap.cfg)
        assert isinstance(reader, GenICamReader)
        self.readers.append(reader)
        return reader

    def __enter__(self) -> Recorded:
        self.cap.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cap.stop()
        time.sleep(0.3)  # the capture thread closes its camera within a poll

    def wait_ok(self, opens: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not (self.cap.state == "ok" and len(self.readers) >= opens):
            assert time.monotonic() < deadline, (self.cap.stats(), self.events[-3:])
            time.sleep(0.05)

    def frames(self, seconds: float) -> list[CapturedFrame]:
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frame = self.cap.get(0.05)
            if frame is not None:
                out.append(frame)
        return out


@pytest.mark.slow
def test_free_run_frames_arrive_as_configured(fake_camera: Callable[..., FakeCamera]) -> None:
    camera = fake_camera()
    cfg = _config(
        camera.serial,
        fps=40,
        width=320,
        height=240,
        exposure=3000,
        gain=2,
        genicam={"pixel_format": "RGB8"},
    )
    with Recorded(cfg) as rec:
        rec.wait_ok()
        frames = rec.frames(1.5)
        settings = rec.readers[-1].settings
    assert len(frames) >= 10, rec.cap.stats()  # 40 fps: about 60
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    assert len({f.image.tobytes() for f in frames}) > 1  # a moving test pattern, not one frame
    assert settings["serial"] == camera.serial and settings["mode"] == "free-run"
    assert settings["pixel_format"] == "RGB8" and settings["region"][2:] == (320, 240)
    assert (settings["exposure_us"], settings["gain"], settings["fps"]) == (3000, 2, 40)
    assert rec.cap.reopens == 0 and not rec.cap.counts


@pytest.mark.slow
def test_a_software_trigger_yields_exactly_one_frame(
    fake_camera: Callable[..., FakeCamera],
) -> None:
    camera = fake_camera()
    cfg = _config(camera.serial, frame_timeout_s=0.5, genicam={"trigger_source": "Software"})
    with Recorded(cfg) as rec:
        rec.wait_ok()
        # No part in position: no frame, and waiting for one is not a hang (frame_timeout_s
        # passes several times over without a reopen: the reader checks the camera instead).
        assert rec.frames(2.0) == []
        reader = rec.readers[-1]
        assert reader.settings["mode"] == "triggered by Software"
        counts = []
        for _ in range(3):
            reader.trigger()
            first = rec.cap.get(5.0)  # the part's frame
            counts.append((first is not None) + len(rec.frames(0.6)))  # and nothing after it
        stats = rec.cap.stats()
    assert counts == [1, 1, 1], stats
    assert stats["frames"] == 3 and stats["reopens"] == 0 and stats["state"] == "ok"
    assert not [d for s, d in rec.events if s == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("trigger", [None, "Software"], ids=["free-run", "triggered"])
def test_a_killed_camera_is_detected_and_reopened(
    fake_camera: Callable[..., FakeCamera], trigger: str | None
) -> None:
    camera = fake_camera()
    cfg = _config(camera.serial, fps=25, genicam={"trigger_source": trigger})
    with Recorded(cfg) as rec:
        rec.wait_ok()
        if trigger:
            rec.readers[-1].trigger()
        assert rec.frames(1.0), rec.cap.stats()
        camera.kill()
        killed = time.monotonic()
        while rec.cap.state == "ok":
            assert time.monotonic() - killed < 15, "a dead camera went unnoticed"
            time.sleep(0.05)
        detected = time.monotonic() - killed
        while not any("no GigE Vision camera with serial" in d for _, d in rec.events):
            assert time.monotonic() - killed < 20, rec.events  # reopening: none answers
            time.sleep(0.05)
        assert rec.cap.state == "error"
        camera.start()  # the camera comes back (same serial, same address)
        rec.wait_ok(opens=2)
        if trigger:
            time.sleep(0.2)
            rec.readers[-1].trigger()
        after = rec.frames(1.5)
        stats = rec.cap.stats()
    errors = [d for s, d in rec.events if s == "error"]
    # the reader asks the camera (waiting for a part, or no frame in frame_timeout_s)
    gone = "camera not answering" if trigger else "no complete frame in 1 s; camera not answering"
    assert any(gone in e or "control lost" in e for e in errors), errors
    if not trigger:
        assert stats["timeouts"] >= 1
    assert detected < 8, detected  # frame_timeout_s, then a register read's retries
    assert after and stats["reopens"] >= 1, stats


@pytest.mark.slow
def test_incomplete_and_lost_buffers_are_counted(fake_camera: Callable[..., FakeCamera]) -> None:
    camera = fake_camera("--gvsp-lost-ratio", "3")  # 0.3% of packets lost, ~200 per frame
    reader = open_reader(_config(camera.serial, fps=100, genicam={"buffers": 2}))
    assert isinstance(reader, GenICamReader)
    reader.open()
    try:
        for _ in range(20):  # fast: every complete frame is read
            image = reader.read()
            assert image is not None and image.shape == (512, 512)
        assert reader.counts["incomplete_buffers"] > 0, reader.counts  # skipped, not delivered
        lost = reader.counts["lost_buffers"]
        for _ in range(3):  # slow: the camera sends into no free buffer
            reader.read()
            time.sleep(0.4)
        reader.read()
        # 100 fps asked, 2 buffers: about 110 lost; a loaded machine's fake camera sends fewer
        assert reader.counts["lost_buffers"] > lost + 10, reader.counts
    finally:
        reader.close()


@pytest.mark.slow
def test_a_camera_that_answers_but_streams_no_complete_frame_says_so(
    fake_camera: Callable[..., FakeCamera],
) -> None:
    camera = fake_camera("--gvsp-lost-ratio", "500")  # half the packets: no frame completes
    reader = open_reader(_config(camera.serial, fps=50))
    reader.open()
    try:
        with pytest.raises(
            SourceError,
            match=r"no complete frame in 1 s \(\d+ incomplete: "
            r"missing-packets\); the camera answers \(a network problem",
        ):
            reader.read()
        assert reader.counts["timeouts"] == 1 and reader.counts["incomplete_buffers"] >= 10
    finally:
        reader.close()


@pytest.mark.slow
def test_unknown_serials_and_bad_settings_say_what_is_wrong(
    aravis: Any, fake_camera: Callable[..., FakeCamera]
) -> None:
    camera = fake_camera()
    with pytest.raises(SourceError, match=rf"no GigE Vision camera .* NOPE .*{camera.serial}"):
        resolve_device(aravis, "gige://NOPE")
    assert resolve_device(aravis, "gige://127.0.0.1") == "127.0.0.1"  # no discovery needed
    listed = subprocess.run(
        [sys.executable, "-m", "lineqc", "edge", "cameras", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert {"serial": camera.serial, "address": "127.0.0.1", "protocol": "GigEVision"}.items() <= (
        next(d for d in json.loads(listed.stdout) if d["serial"] == camera.serial).items()
    )
    assert resolve_device(aravis, "genicam://Aravis-Fake-X") == "Aravis-Fake-X"
    for genicam, match in [
        ({"features": {"NoSuchFeature": 1}}, "cannot set NoSuchFeature=1: no such feature"),
        ({"pixel_format": "Mono12Packed"}, "cannot set pixel_format Mono12Packed"),
        ({"features": {"TriggerActivation": "FallingEdge"}}, "FallingEdge' not an entry"),
    ]:
        reader = open_reader(_config(camera.serial, genicam=genicam))
        with pytest.raises(SourceError, match=match):
            reader.open()
        reader.close()
    # the features are written in order, after the trigger settings
    features = {"TriggerSource": "Line0", "Width": 256, "TestRegister": 7}
    cfg = _config(camera.serial, genicam={"trigger_source": "Software", "features": features})
    reader = open_reader(cfg)
    assert isinstance(reader, GenICamReader)
    reader.open()
    try:
        device = reader._cam.get_device()
        assert device.get_string_feature_value("TriggerMode") == "On"
        assert device.get_string_feature_value("TriggerSource") == "Line0"
        assert device.get_integer_feature_value("Width") == 256
        assert device.get_integer_feature_value("TestRegister") == 7
    finally:
        reader.close()


def test_pfnc_codes_match_aravis(aravis: Any) -> None:
    names = {
        "MONO_8": 0x01080001, "MONO_10": 0x01100003, "MONO_12": 0x01100005,
        "MONO_14": 0x01100025, "MONO_16": 0x01100007, "RGB_8_PACKED": 0x02180014,
        "BGR_8_PACKED": 0x02180015, "BAYER_GR_8": 0x01080008, "BAYER_RG_8": 0x01080009,
        "BAYER_GB_8": 0x0108000A, "BAYER_BG_8": 0x0108000B, "YUV_422_PACKED": 0x0210001F,
        "YUV_422_YUYV_PACKED": 0x02100032,
    }  # fmt: skip
    assert {getattr(aravis, f"PIXEL_FORMAT_{n}") for n in names} == set(MONO) | set(COLOR)
    assert all(getattr(aravis, f"PIXEL_FORMAT_{n}") == code for n, code in names.items())
    assert cv2.COLOR_BayerRGGB2BGR == cv2.COLOR_BayerBG2BGR  # the naming the table relies on
