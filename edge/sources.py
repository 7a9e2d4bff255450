"""Frame sources chosen by URI, and the capture thread that feeds the pipeline.

URIs: ``csi://N`` (Jetson CSI camera through GStreamer ``nvarguscamerasrc``), ``/dev/videoN``
or ``v4l2://N`` (USB camera), ``rtsp://...`` (IP camera), ``gige://SERIAL`` or
``genicam://ID`` (GigE Vision / GenICam camera through Aravis, see gige.py), a video file, an
image folder, a glob of images, or ``dataset://FOLDER?session=S&split=S`` (rows of a lineqc
dataset).

The capture thread stamps every frame (camera id, sequence number, monotonic time) and keeps
only the newest one: when inference falls behind, the older frame is dropped and counted.
A replay without a pace (fps 0) waits for the pipeline instead, so it drops nothing. A source
that fails, hangs (no frame within ``frame_timeout_s``) or repeats a stale frame is reported
and reopened with exponential backoff; the end of a replay ends the stream cleanly. A read
still blocked in a hung driver is abandoned, never released under it (see GuardedReader):
its reader closes when the read returns, and at most MAX_HUNG_READS are left behind at once.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import cv2
import numpy as np

from lineqc.errors import LineqcError

from .config import CameraConfig
from .imagesize import ImageSizeError, bounded_size
from .preprocess import decode_image

log = logging.getLogger("lineqc.edge.sources")
# Reads abandoned on hung sources that may still be blocked in their driver at once; at the
# bound the source does not open again (backing off) until one of them returns.
MAX_HUNG_READS = 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".h264"}


class SourceError(LineqcError):
    """A source that cannot be opened or read; the message names it and the reason."""


class EndOfStream(Exception):
    """A replay source has delivered its last frame."""


@dataclass(frozen=True)
class CapturedFrame:
    camera: str
    seq: int
    t_mono: float  # time.perf_counter() at capture: latencies are measured from here
    ts: float  # wall clock (Unix seconds) at capture
    image: np.ndarray
    origin: str | None = None  # replay: the file it came from


# ---- readers ----------------------------------------------------------------------------------


class Reader:
    """One opened source. ``read`` returns a frame, None at the end of a replay, or raises."""

    replay = False
    name = "source"
    # time.monotonic() when the reader last saw its device alive while no frame was due (a
    # triggered camera waiting for a part): the watchdog's hang timer starts from the later
    # of this and the last frame.
    alive_at = 0.0
    # Source-specific counters (incomplete_buffers, lost_buffers, ...); Capture hands every
    # reader it opens the same Counter, which its stats() report.
    counts: collections.Counter[str] | None = None

    def open(self) -> None:
        """Open the device or file; raises SourceError."""

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device (may be called from another thread to unblock a read)."""


class GuardedReader(Reader):
    """A reader whose ``read`` blocks inside a driver that must not be released under it
    (OpenCV's FFmpeg backend segfaults, Aravis too): ``close`` from another thread, while a
    read is in flight, only marks it closed, and the reading thread tears it down when its
    read returns. A reader whose read never returns is abandoned, never released under it."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._lock = threading.Lock()  # held while a read is inside the driver

    def read(self) -> np.ndarray | None:
        try:
            with self._lock:
                if self._closed.is_set():
                    raise SourceError(f"{self.name}: closed")
                return self._read()
        finally:
            if self._closed.is_set():
                self.close()  # a close that came during the read: done here, once it returned

    def _read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        if self._lock.acquire(blocking=False):  # else the read in flight closes on its way out
            try:
                self._teardown()
            finally:
                self._lock.release()

    def _teardown(self) -> None:
        """Release the device; called with no read in flight."""


def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file; OSError for anything else (a FIFO or a device would
    block the read forever, and the replay with it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not block either
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"not a regular file ({path})")
        return f.read()


def load_image_file(path: Path) -> np.ndarray | str:
    """A replayed image, decoded; else why not (the caller skips it and counts it). Its size
    is read from the header first, so a decompression bomb is never decoded."""
    try:
        data = read_regular_file(path)
        bounded_size(data)
        image = decode_image(data)
    except (OSError, ImageSizeError, cv2.error) as exc:
        return f"{path}: {exc}"
    return image if image is not None else f"{path}: not an image OpenCV can decode"


class ImageListReader(Reader):
    replay = True

    def __init__(self, name: str, paths: list[Path], loop: bool = False, preload: bool = False):
        if not paths:
            raise SourceError(f"{name}: no images")
        self.name, self.paths, self.loop = name, paths, loop
        self.frames: list[np.ndarray | str] | None = None
        if preload:
            self.frames = [load_image_file(p) for p in paths]
        self.index = 0
        self.bad = 0
        self.good_in_pass = 0
        self.origin: str | None = None

    def read(self) -> np.ndarray | None:
        while True:
            if self.index >= len(self.paths):
                if not self.loop:
                    return None
                if not self.good_in_pass:  # looping over nothing readable would spin
                    raise SourceError(f"{self.name}: none of its {len(self.paths)} images reads")
                self.index, self.good_in_pass = 0, 0
            i = self.index
            self.index += 1
            loaded = self.frames[i] if self.frames is not None else load_image_file(self.paths[i])
            if isinstance(loaded, str):
                self.bad += 1
                log.warning("%s: %s; skipped", self.name, loaded)
                continue
            self.good_in_pass += 1
            self.origin = str(self.paths[i])
            return loaded


class CaptureReader(GuardedReader):
    """OpenCV VideoCapture: cameras (V4L2, GStreamer, RTSP, HTTP MJPEG) and video files."""

    def __init__(
        self, name: str, target: str | int, api: int, replay: bool, cfg: CameraConfig
    ) -> None:
        super().__init__()
        self.name, self.target, self.api, self.replay, self.cfg = name, target, api, replay, cfg
        self.cap: cv2.VideoCapture | None = None
        self.loop = cfg.loop and replay

    def open(self) -> None:
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open")
        if not self.replay:
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                (cv2.CAP_PROP_FPS, self.cfg.fps or None),
                (cv2.CAP_PROP_EXPOSURE, self.cfg.exposure),
                (cv2.CAP_PROP_GAIN, self.cfg.gain),
            ):
                if value is not None:
                    cap.set(prop, float(value))
        with self._lock:
            self._closed.clear()
            self.cap = cap

    def _read(self) -> np.ndarray | None:
        cap = self.cap
        if cap is None:
            raise SourceError(f"{self.name}: not open")
        ok, frame = cap.read()
        if not ok or frame is None:
            if self.replay:
                if self.loop:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                    if ok and frame is not None:
                        return np.asarray(frame)
                return None
            raise SourceError(f"{self.name}: read failed (camera unplugged or stream lost?)")
        return np.asarray(frame)

    def _teardown(self) -> None:
        cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()


def csi_pipeline(sensor: int, cfg: CameraConfig) -> str:
    w, h, fps = cfg.width or 1920, cfg.height or 1080, int(cfg.fps or 30)
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM), width={w}, height={h}, framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def dataset_images(spec: str, base: Path | None) -> list[Path]:
    """``FOLDER?session=S&split=S&label=L``: the image files of matching dataset rows."""
    folder, _, query = spec.partition("?")
    root = Path(folder).expanduser()
    if not root.is_absolute() and base is not None:
        root = base / root
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"dataset://{spec}: no readable manifest.json ({exc})") from None
    filters = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(filters) - {"session", "split", "label", "source"}
    if unknown:
        raise SourceError(f"dataset://{spec}: unknown filter(s) {sorted(unknown)}")
    rows = [
        r for r in manifest.get("images", []) if all(str(r.get(k)) == v for k, v in filters.items())
    ]
    rows.sort(key=lambda r: (str(r.get("origin")), str(r.get("id"))))
    return [root / r["path"] for r in rows]


def open_reader(cfg: CameraConfig, base: Path | None = None) -> Reader:
    """The reader for ``cfg.source`` (not opened yet)."""
    uri = cfg.source
    if cfg.gstreamer_pipeline:
        return CaptureReader(
            f"gstreamer:{cfg.id}", cfg.gstreamer_pipeline, cv2.CAP_GSTREAMER, False, cfg
        )
    if uri.startswith("csi://"):
        sensor = _index(uri, "csi://")
        return CaptureReader(uri, csi_pipeline(sensor, cfg), cv2.CAP_GSTREAMER, False, cfg)
    if uri.startswith("v4l2://"):
        return CaptureReader(uri, _index(uri, "v4l2://"), cv2.CAP_V4L2, False, cfg)
    if uri.startswith("/dev/video"):
        return CaptureReader(uri, uri, cv2.CAP_V4L2, False, cfg)
    if uri.startswith(("gige://", "genicam://")):
        from .gige import GenICamReader  # Aravis through PyGObject, imported when opened

        return GenICamReader(uri, cfg)
    if uri.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return CaptureReader(uri, uri, cv2.CAP_FFMPEG, False, cfg)
    if uri.startswith("dataset://"):
        paths = dataset_images(uri[len("dataset://") :], base)
        return ImageListReader(uri, paths, cfg.loop, cfg.preload)
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if any(c in uri for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        return ImageListReader(
            uri, [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES], cfg.loop, cfg.preload
        )
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return ImageListReader(str(path), paths, cfg.loop, cfg.preload)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageListReader(str(path), [path], cfg.loop, cfg.preload)
        return CaptureReader(str(path), str(path), cv2.CAP_ANY, True, cfg)
    raise SourceError(f"{uri}: no such camera, file or folder")


def _index(uri: str, prefix: str) -> int:
    rest = uri[len(prefix) :]
    if not rest.isdigit():
        raise SourceError(f"{uri}: expected {prefix}N with a device number")
    return int(rest)


# ---- the capture thread -------------------------------------------------------------------


def _fingerprint(image: np.ndarray) -> bytes:
    step = max(1, min(image.shape[:2]) // 32)
    return hashlib.blake2b(image[::step, ::step].tobytes(), digest_size=16).digest()


class Capture:
    """Runs a source in its own thread; ``get`` returns the newest frame."""

    def __init__(
        self,
        cfg: CameraConfig,
        base: Path | None = None,
        on_event: Callable[[str, str], None] | None = None,
        reader_factory: Callable[[], Reader] | None = None,
    ) -> None:
        self.cfg = cfg
        self.factory = reader_factory or (lambda: open_reader(cfg, base))
        self.on_event = on_event or (lambda state, detail: None)
        self.state = "starting"
        self.detail = ""
        self.drops = 0
        self.reopens = 0
        self.frames = 0
        self.bad_frames = 0
        self.abandoned_reads = 0  # reads the watchdog gave up on (see _watch)
        self.counts: collections.Counter[str] = collections.Counter()  # the readers' own
        self._slot: CapturedFrame | None = None
        self._waiting = False  # the consumer is inside get(): a lockstep replay may deliver
        self._cond = threading.Condition()
        self._ended = False
        self._stop = threading.Event()
        self._seq = 0
        self._generation = 0
        self._reader: Reader | None = None
        self._last_frame = time.monotonic()
        self._replay = False
        self._thread: threading.Thread | None = None
        self._hung: list[threading.Thread] = []  # abandoned, still blocked in their read
        self._watchdog: threading.Thread | None = None

    # ---- consumer side ----------------------------------------------------------------------

    def start(self) -> None:
        self._spawn()
        self._watchdog = threading.Thread(
            target=self._watch, name="lineqc-capture-watch", daemon=True
        )
        self._watchdog.start()

    def get(self, timeout: float) -> CapturedFrame | None:
        """The newest frame, or None after ``timeout``; raises EndOfStream after a replay."""
        with self._cond:
            if self._slot is None and not self._ended:
                self._waiting = True
                self._cond.notify_all()
                self._cond.wait(timeout)
                self._waiting = False
            frame, self._slot = self._slot, None
            if frame is None and self._ended:
                raise EndOfStream
            self._cond.notify_all()
            return frame

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        reader = self._reader
        if reader is not None:
            reader.close()
        # Wait for a read in flight to return and release its device: one returning into a
        # finalizing interpreter aborts it (the thread is unwound through OpenCV's C++). One
        # that does not return within frame_timeout_s is hung, and left behind.
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.cfg.frame_timeout_s)

    @property
    def is_replay(self) -> bool:
        return self._replay

    def stats(self) -> dict[str, object]:
        return {
            "id": self.cfg.id,
            "source": self.cfg.source,
            "state": self.state,
            "detail": self.detail,
            "frames": self.frames,
            "drops": self.drops,
            "reopens": self.reopens,
            "bad_frames": self.bad_frames,
            "abandoned_reads": self.abandoned_reads,
            "hung_reads": self.hung_reads(),
            **dict(sorted(self.counts.items())),
        }

    def hung_reads(self) -> int:
        """Abandoned reads still blocked in their driver."""
        return sum(t.is_alive() for t in self._hung)

    # ---- producer side ----------------------------------------------------------------------

    def _event(self, state: str, detail: str) -> None:
        changed = (state, detail) != (self.state, self.detail)
        self.state, self.detail = state, detail
        if changed:
            (log.info if state in ("ok", "ended") else log.warning)(
                "camera %s: %s %s", self.cfg.id, state, detail
            )
            self.on_event(state, detail)

    def _spawn(self) -> None:
        self._generation += 1
        t = threading.Thread(
            target=self._run, args=(self._generation,), name="lineqc-capture", daemon=True
        )
        self._thread = t
        self._last_frame = time.monotonic()
        t.start()

    def _watch(self) -> None:
        """Reopen a source that hangs: no frame within frame_timeout_s while it is open."""
        while not self._stop.wait(0.1):
            waiting_on_us = self._replay and self.cfg.fps == 0  # lockstep: paced by us
            if self.state != "ok" or waiting_on_us or self._ended:
                self._last_frame = time.monotonic()
                continue
            reader = self._reader
            alive = max(self._last_frame, reader.alive_at if reader is not None else 0.0)
            if time.monotonic() - alive > self.cfg.frame_timeout_s:
                self._event(
                    "error", f"no frame for {self.cfg.frame_timeout_s:g} s (hung); reopening"
                )
                # Abandon the blocked read: its reader is closed when the read returns (in its
                # own thread, see GuardedReader), a fresh one opens meanwhile, at most
                # MAX_HUNG_READS of them left behind at once (see _open).
                reader = self._reader
                self._reader = None
                hung = [t for t in self._hung if t.is_alive()]  # only this thread writes it
                if self._thread is not None and self._thread.is_alive():
                    hung.append(self._thread)
                    self.abandoned_reads += 1
                self._hung = hung
                if reader is not None:
                    threading.Thread(target=reader.close, daemon=True).start()
                self.reopens += 1
                self._spawn()

    def _open(self) -> Reader:
        hung = self.hung_reads()
        if hung >= MAX_HUNG_READS:
            raise SourceError(
                f"{self.cfg.source}: {hung} reads on hung captures have not returned "
                f"(at most {MAX_HUNG_READS}); not opening another yet"
            )
        reader = self.factory()
        reader.counts = self.counts
        reader.open()
        return reader

    def _run(self, generation: int) -> None:
        backoff = self.cfg.reopen_min_s
        reader: Reader | None = None
        stale, last_print = 0, b""
        next_due = time.perf_counter()
        while not self._stop.is_set() and generation == self._generation:
            if reader is None:
                try:
                    reader = self._open()
                except (SourceError, cv2.error, OSError) as exc:
                    reader = None
                    self._event("error", f"{exc}; retry in {backoff:.1f} s")
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.cfg.reopen_max_s)
                    continue
                self._reader = reader
                self._replay = reader.replay
                self._event("ok", f"opened {reader.name}")
                self._last_frame = time.monotonic()
            try:
                image = reader.read()
            except (SourceError, cv2.error) as exc:
                if generation != self._generation or self._stop.is_set():
                    reader.close()  # stopped, or the watchdog gave up on this reader
                    return
                self._event("error", f"{exc}; reopening in {backoff:.1f} s")
                reader.close()
                reader = None
                self.reopens += 1
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.cfg.reopen_max_s)
                continue
            if generation != self._generation:
                return  # the watchdog gave up on this reader
            if image is None:
                self.bad_frames += getattr(reader, "bad", 0)
                self._event("ended", "end of replay")
                with self._cond:
                    self._ended = True
                    self._cond.notify_all()
                return
            self._last_frame = time.monotonic()
            if self.cfg.stale_frames and not reader.replay:
                fp = _fingerprint(image)
                stale = stale + 1 if fp == last_print else 0
                last_print = fp
                if stale >= self.cfg.stale_frames:
                    self._event("error", f"{stale} identical frames (stale source); reopening")
                    reader.close()
                    reader, stale = None, 0
                    self.reopens += 1
                    continue
            backoff = self.cfg.reopen_min_s
            if reader.replay and self.cfg.fps > 0:
                next_due += 1.0 / self.cfg.fps
                delay = next_due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_due = time.perf_counter()
            self._put(
                image, getattr(reader, "origin", None), lockstep=reader.replay and self.cfg.fps == 0
            )

    def _put(self, image: np.ndarray, origin: str | None, lockstep: bool) -> None:
        frame = CapturedFrame(
            self.cfg.id, self._seq, time.perf_counter(), time.time(), image, origin
        )
        self._seq += 1
        self.frames += 1
        with self._cond:
            if lockstep:  # a triggered camera: capture when the pipeline asks for a frame
                while (self._slot is not None or not self._waiting) and not self._stop.is_set():
                    self._cond.wait(0.1)
                frame = CapturedFrame(
                    frame.camera, frame.seq, time.perf_counter(), frame.ts, image, origin
                )
            elif self._slot is not None:
                self.drops += 1
            self._slot = frame
            self._cond.notify_all()
