"""GigE Vision and other GenICam cameras through Aravis: ``gige://SERIAL``, ``genicam://ID``.

Aravis (Debian: ``gir1.2-aravis-0.8``) is reached through PyGObject (``gi``), imported only
when such a source opens: without it the source fails to open with the reason, and is
retried like any camera. ``make setup`` installs both (see firmware_config/README.md).

``gige://TARGET`` names the camera by serial number, Aravis device id (``Vendor-SERIAL``,
``Vendor-Model-SERIAL``) or IP address; ``gige://`` alone takes the only camera found.
``genicam://ID`` passes ID to Aravis as it is (any Aravis device: GigE Vision, USB3 Vision).

Free-run (``genicam.trigger_source`` unset): the camera streams, at ``fps`` when set; no
complete frame within ``frame_timeout_s`` is an error, and the source is reopened with the
capture's backoff. Triggered (``trigger_source: Line0``, ... or ``Software``): one frame per
trigger, a part in position; waiting for a part is not an error, so while it waits the reader
asks the camera a register every ``frame_timeout_s`` and watches Aravis's heartbeat (the
``control-lost`` signal): a camera that stops answering is reported and reopened.

Counted into the capture's ``counts`` (the status message's camera section):
``incomplete_buffers`` (a frame arrived with packets missing or the wrong size: skipped),
``lost_buffers`` (frames the camera sent that never arrived: no free buffer, a gap in the
frame ids) and ``timeouts`` (free-run: no frame within ``frame_timeout_s``).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import threading
import time
from typing import Any

import cv2
import numpy as np

from .config import CameraConfig
from .sources import GuardedReader, SourceError

log = logging.getLogger("lineqc.edge.gige")

POLL_S = 0.1  # longest a read waits inside Aravis: bounds close() and the liveness checks
# The longest a GigE Vision register read takes to fail: Aravis 0.8 tries 5 times 500 ms, and
# may first wait for its heartbeat's read, as long. The capture watchdog gives a liveness
# probe this long before calling the reader hung.
PROBE_GRACE_S = 6.0
FRAME_ID_JUMP = 1000  # a larger jump in frame ids is a camera that restarted, not losses

# PFNC codes (GenICam Pixel Format Naming Convention) of the formats converted to the
# pipeline's uint8 gray or BGR; Aravis reports a buffer's format by this code.
MONO = {0x01080001: 8, 0x01100003: 10, 0x01100005: 12, 0x01100025: 14, 0x01100007: 16}
COLOR: dict[int, tuple[int | None, int]] = {  # code: (OpenCV conversion to BGR, bytes/pixel)
    0x02180014: (cv2.COLOR_RGB2BGR, 3),  # RGB8
    0x02180015: (None, 3),  # BGR8
    0x01080008: (cv2.COLOR_BayerGRBG2BGR, 1),  # BayerGR8 (the top-left 2x2 is G R / B G)
    0x01080009: (cv2.COLOR_BayerRGGB2BGR, 1),  # BayerRG8
    0x0108000A: (cv2.COLOR_BayerGBRG2BGR, 1),  # BayerGB8
    0x0108000B: (cv2.COLOR_BayerBGGR2BGR, 1),  # BayerBG8
    0x0210001F: (cv2.COLOR_YUV2BGR_UYVY, 2),  # YUV422_8_UYVY (YUV422Packed)
    0x02100032: (cv2.COLOR_YUV2BGR_YUYV, 2),  # YUV422_8 (YUV422_YUYV_Packed)
}
FORMAT_NAMES = {
    0x01080001: "Mono8",
    0x01100003: "Mono10",
    0x01100005: "Mono12",
    0x01100025: "Mono14",
    0x01100007: "Mono16",
    0x02180014: "RGB8",
    0x02180015: "BGR8",
    0x01080008: "BayerGR8",
    0x01080009: "BayerRG8",
    0x0108000A: "BayerGB8",
    0x0108000B: "BayerBG8",
    0x0210001F: "YUV422_8_UYVY",
    0x02100032: "YUV422_8",
}


class UnsupportedFormat(SourceError):
    pass


def to_image(data: bytes, width: int, height: int, pixel_format: int) -> np.ndarray | None:
    """A buffer's pixels as the pipeline's uint8 gray or BGR image; None when ``data`` is too
    short for its declared size (an incomplete frame). Raises UnsupportedFormat."""
    if pixel_format in MONO:
        bits = MONO[pixel_format]
        size = width * height * (1 if bits == 8 else 2)
        if width <= 0 or height <= 0 or len(data) < size:
            return None
        if bits == 8:
            return np.frombuffer(data, np.uint8, width * height).reshape(height, width).copy()
        wide = np.frombuffer(data, "<u2", width * height).reshape(height, width)
        return (wide >> (bits - 8)).astype(np.uint8)  # the high 8 of the N bits
    if pixel_format in COLOR:
        code, channels = COLOR[pixel_format]
        size = width * height * channels
        if width <= 0 or height <= 0 or len(data) < size:
            return None
        shape = (height, width) if channels == 1 else (height, width, channels)
        raw = np.frombuffer(data, np.uint8, size).reshape(shape)
        return raw.copy() if code is None else cv2.cvtColor(raw, code)
    check_format(pixel_format)
    return None  # not reached


def check_format(pixel_format: int) -> None:
    """UnsupportedFormat (naming the supported ones) unless ``to_image`` converts it."""
    if pixel_format in MONO or pixel_format in COLOR:
        return
    name = FORMAT_NAMES.get(pixel_format, f"0x{pixel_format:08x}")
    supported = ", ".join(FORMAT_NAMES.values())
    raise UnsupportedFormat(
        f"pixel format {name} is not supported; set camera.genicam.pixel_format to one of "
        f"{supported}"
    )


def frames_missed(last: int | None, frame_id: int) -> int:
    """How many frames the camera sent between two buffers that never reached us (no free
    buffer, every packet lost). GigE Vision frame ids count 1..65535 and wrap past 0 (a
    64-bit id does not wrap); a backward step or a jump over FRAME_ID_JUMP is a camera that
    restarted counting, not losses."""
    if last is None or frame_id == 0:
        return 0
    step = frame_id - last
    if last <= 0xFFFF and frame_id <= 0xFFFF and step < 0:
        step += 0xFFFF  # wrapped: 65535 is followed by 1
    return step - 1 if 1 < step <= FRAME_ID_JUMP else 0


def load_aravis() -> Any:
    """The Aravis module through PyGObject; SourceError saying what is missing."""
    try:
        import gi
    except ImportError:
        raise SourceError(
            "GigE Vision needs PyGObject in this Python (make setup, or pip install "
            "'PyGObject<3.50' with Debian's libgirepository1.0-dev and libcairo2-dev)"
        ) from None
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError) as exc:
        raise SourceError(
            f"GigE Vision needs Aravis 0.8 (Debian: apt-get install gir1.2-aravis-0.8): {exc}"
        ) from None
    return Aravis


def list_devices(aravis: Any) -> list[dict[str, str]]:
    """The GenICam devices Aravis finds now (a GigE Vision discovery broadcast, USB)."""
    aravis.update_device_list()
    return [
        {
            "id": aravis.get_device_id(i) or "",
            "serial": aravis.get_device_serial_nbr(i) or "",
            "address": aravis.get_device_address(i) or "",
            "physical_id": aravis.get_device_physical_id(i) or "",
            "protocol": aravis.get_device_protocol(i) or "",
            "model": aravis.get_device_model(i) or "",
        }
        for i in range(aravis.get_n_devices())
    ]


def resolve_device(aravis: Any, uri: str) -> str:
    """The Aravis device id (or address) to open for ``uri``; SourceError when none matches."""
    scheme, _, target = uri.partition("://")
    if scheme == "genicam":
        if not target:
            raise SourceError(f"{uri}: expected genicam://DEVICE-ID")
        return target
    try:
        ipaddress.IPv4Address(target)
        return target  # opened directly: no discovery needed (a camera on another subnet)
    except ValueError:
        pass
    devices = [d for d in list_devices(aravis) if d["protocol"] in ("GigEVision", "")]
    if not target:
        if len(devices) != 1:
            found = ", ".join(d["id"] for d in devices) or "none"
            raise SourceError(f"{uri}: gige:// takes the only camera, found {found}")
        return devices[0]["id"]
    for d in devices:
        if target in (d["serial"], d["id"], d["physical_id"], d["address"]):
            return d["id"] or d["address"]
    found = ", ".join(f"{d['id']} ({d['address']})" for d in devices) or "none"
    raise SourceError(f"{uri}: no GigE Vision camera with serial or id {target} (found: {found})")


class GenICamReader(GuardedReader):
    """One camera through Aravis. ``read`` returns the next complete frame; ``close`` may be
    called from another thread (the read in flight tears the camera down when it returns)."""

    def __init__(self, uri: str, cfg: CameraConfig) -> None:
        super().__init__()
        self.name, self.cfg = uri, cfg
        self.triggered = cfg.genicam.trigger_source is not None
        self.counts: collections.Counter[str] = collections.Counter()
        self.device_id = ""
        self._cam: Any = None
        self._stream: Any = None
        self._handler = 0
        self._lost = threading.Event()  # the camera is gone (Aravis's heartbeat, a probe)
        self._last_id: int | None = None
        self.settings: dict[str, Any] = {}  # read back from the camera once opened

    # ---- open -----------------------------------------------------------------------------

    def open(self) -> None:
        aravis = load_aravis()
        glib = _glib_error()
        with self._lock:
            self._closed.clear()
            self._lost.clear()
            self._last_id = None
            try:
                self.device_id = resolve_device(aravis, self.name)
                _wait_released(self.name)  # a camera that was gone, still being released
                self._cam = cam = aravis.Camera.new(self.device_id)
                self._configure(cam)
                payload = cam.get_payload()
                self._stream = stream = cam.create_stream(None, None)
                if stream is None:
                    raise SourceError(f"{self.name}: no stream")
                for _ in range(self.cfg.genicam.buffers):
                    stream.push_buffer(aravis.Buffer.new_allocate(payload))
                self._handler = cam.get_device().connect("control-lost", self._on_control_lost)
                cam.start_acquisition()
            except glib as exc:
                self._teardown()
                raise SourceError(f"{self.name}: {exc.message}") from None
            except SourceError:
                self._teardown()
                raise
        self.settings = self._read_back(cam)
        log.info("%s: opened %s: %s", self.name, self.device_id, self.settings)

    def _read_back(self, cam: Any) -> dict[str, Any]:
        """What the camera says it is set to (each setting it cannot tell is left out)."""
        out: dict[str, Any] = {
            "model": f"{cam.get_vendor_name()} {cam.get_model_name()}",
            "serial": cam.get_device_serial_number(),
            "mode": f"triggered by {self.cfg.genicam.trigger_source}"
            if self.triggered
            else "free-run",
        }
        getters = {
            "pixel_format": cam.get_pixel_format_as_string,
            "region": lambda: tuple(cam.get_region()),
            "exposure_us": cam.get_exposure_time,
            "gain": cam.get_gain,
            "fps": cam.get_frame_rate,
        }
        for key, get in getters.items():
            with contextlib.suppress(_glib_error()):
                out[key] = get()
        return out

    def _configure(self, cam: Any) -> None:
        """Region, pixel format, exposure, gain, trigger, then the extra features, in order;
        each failure names the setting."""
        g = self.cfg.genicam
        steps: list[tuple[str, Any]] = []
        if self.cfg.width or self.cfg.height:
            w, h = self.cfg.width or 0, self.cfg.height or 0
            steps.append((f"region {w}x{h}", lambda: cam.set_region(-1, -1, w, h)))
        fmt, exposure, gain = g.pixel_format, self.cfg.exposure, self.cfg.gain
        if fmt:
            steps.append((f"pixel_format {fmt}", lambda: cam.set_pixel_format_from_string(fmt)))
        if exposure is not None:
            if cam.is_exposure_auto_available():
                steps.append(("exposure auto off", lambda: cam.set_exposure_time_auto(0)))
            steps.append((f"exposure {exposure:g} µs", lambda: cam.set_exposure_time(exposure)))
        if gain is not None:
            if cam.is_gain_auto_available():
                steps.append(("gain auto off", lambda: cam.set_gain_auto(0)))
            steps.append((f"gain {gain:g}", lambda: cam.set_gain(gain)))
        if g.trigger_source:
            steps.append((f"trigger {g.trigger_source}", lambda: cam.set_trigger(g.trigger_source)))
        else:
            steps.append(("free-run (triggers off)", cam.clear_triggers))
            if self.cfg.fps > 0:
                steps.append((f"fps {self.cfg.fps:g}", lambda: cam.set_frame_rate(self.cfg.fps)))
        for feature, value in g.features.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            steps.append((f"{feature}={text}", _feature_setter(cam, feature, text)))
        glib = _glib_error()
        for what, step in steps:
            try:
                step()
            except (glib, ValueError) as exc:
                why = getattr(exc, "message", None) or str(exc)
                raise SourceError(f"{self.name}: cannot set {what}: {why}") from None
        check_format(cam.get_pixel_format())

    def _on_control_lost(self, _device: Any) -> None:
        self._lost.set()  # from Aravis's heartbeat thread

    # ---- read -----------------------------------------------------------------------------

    def _read(self) -> np.ndarray:
        # self._stream and self._cam, never locals: an exception's traceback keeps the frame's
        # locals, and a camera released with it (on a thread that stops on its way) would
        # take its seconds of timeouts there, not in the background (see _teardown).
        if self._stream is None or self._closed.is_set():
            raise SourceError(f"{self.name}: not open")
        timeout = self.cfg.frame_timeout_s
        started = last_probe = time.monotonic()
        incomplete: list[str] = []
        while True:
            buf = self._stream.timeout_pop_buffer(int(POLL_S * 1e6))
            if buf is not None:
                self._count_gap(buf.get_frame_id())
                image, why = self._image(buf)
                self._stream.push_buffer(buf)
                del buf
                if image is not None:
                    self.alive_at = time.monotonic()
                    return image
                self.counts["incomplete_buffers"] += 1
                incomplete.append(why)
            if self._closed.is_set():
                raise SourceError(f"{self.name}: closed")
            if self._lost.is_set():
                raise SourceError(f"{self.name}: control lost (camera gone or unplugged?)")
            now = time.monotonic()
            if not self.triggered and now - started > timeout:
                self.counts["timeouts"] += 1
                self._probe(f"no complete frame in {timeout:g} s; ")
                detail = f" ({len(incomplete)} incomplete: {incomplete[-1]})" if incomplete else ""
                raise SourceError(
                    f"{self.name}: no complete frame in {timeout:g} s{detail}; the camera answers "
                    "(a network problem: packet size, bandwidth, firewall?)"
                )
            if self.triggered and now - last_probe > timeout:
                self._probe()  # waiting for a part: is the camera still there?
                last_probe = now
            self.alive_at = now  # a wait that is ours, not a hung driver (see Capture._watch)

    def _probe(self, prefix: str = "") -> None:
        """Read a register; SourceError when the camera does not answer (marked gone: closing
        it then skips the commands it would not answer either)."""
        self.alive_at = time.monotonic() + PROBE_GRACE_S
        try:
            self._cam.get_pixel_format()
        except _glib_error() as exc:
            self._lost.set()
            raise SourceError(
                f"{self.name}: {prefix}camera not answering ({exc.message})"
            ) from None

    def _image(self, buf: Any) -> tuple[np.ndarray | None, str]:
        status = buf.get_status()
        if status.value_nick != "success":
            return None, status.value_nick
        width, height = buf.get_image_width(), buf.get_image_height()
        image = to_image(buf.get_data(), width, height, buf.get_image_pixel_format())
        return image, "short buffer" if image is None else ""

    def _count_gap(self, frame_id: int) -> None:
        lost = frames_missed(self._last_id, frame_id)
        if lost:
            self.counts["lost_buffers"] += lost
        self._last_id = frame_id

    def trigger(self) -> None:
        """Send TriggerSoftware (``trigger_source: Software``): the camera takes one frame."""
        cam = self._cam
        if cam is None:
            raise SourceError(f"{self.name}: not open")
        try:
            cam.software_trigger()
        except _glib_error() as exc:
            raise SourceError(f"{self.name}: trigger: {exc.message}") from None

    # ---- close ----------------------------------------------------------------------------

    def _teardown(self) -> None:
        """Stop acquiring, drop the stream and the camera (which gives up control of it).
        A camera that is gone is released in the background: Aravis's register writes to it
        (stream channel, control) take seconds of timeouts. The same source is not opened
        again before they are done, so none of them can reach the camera once it is back."""
        cam, stream, handler = self._cam, self._stream, self._handler
        self._cam = self._stream = None
        self._handler = 0
        if cam is None:
            return
        if handler:
            cam.get_device().disconnect(handler)
        if self._lost.is_set():
            objects = [stream, cam]
            del stream, cam
            _release_later(self.name, objects)
            return
        if stream is not None:
            try:
                cam.stop_acquisition()
            except _glib_error() as exc:
                log.debug("%s: stop acquisition: %s", self.name, exc.message)
        del stream, cam


_releasing: dict[str, threading.Thread] = {}
_releasing_lock = threading.Lock()


def _release_later(key: str, objects: list[Any]) -> None:
    """Drop the last references to ``objects`` (stream first) in a thread of their own."""
    thread = threading.Thread(
        target=objects.clear, name="lineqc-gige-release", daemon=True
    )  # Thread drops its target once run: objects.clear() holds the last references
    with _releasing_lock:
        _releasing[key] = thread
    thread.start()


def _wait_released(key: str, timeout: float = 30.0) -> None:
    with _releasing_lock:
        thread = _releasing.pop(key, None)
    if thread is not None:
        thread.join(timeout)


def _glib_error() -> Any:
    """GLib.Error, what Aravis raises (with ``.message``); imported once gi is known present."""
    from gi.repository import GLib

    return GLib.Error


def _feature_setter(cam: Any, feature: str, text: str) -> Any:
    def setter() -> None:
        device = cam.get_device()
        node = device.get_feature(feature)
        if node is None:
            raise ValueError("no such feature on this camera")
        if type(node).__name__ == "GcCommand":
            device.execute_command(feature)
        else:
            node.set_value_from_string(text)

    return setter
