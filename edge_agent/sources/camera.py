"""Camera source: a V4L2 device, a video file, or an rtsp/http/udp stream, read through OpenCV.

Live sources (devices, streams) keep only the newest frame: a capture thread reads as fast as the camera
delivers, so a slow model never builds a backlog, and frames the model never took are counted as skipped.
A video file without an fps cap is a replay: every frame is delivered, in order, the reader waiting for
the consumer, so a replay gives the same results every time. With an fps cap a file plays at that rate and
behaves like a live source.

A supervisor thread owns the reconnect loop and a watchdog: each connection attempt reads in its own
thread, and an attempt that makes no progress for longer than the open/read timeout is abandoned (OpenCV's
FFmpeg timeouts are not honoured by every demuxer, and a blocked ``read`` cannot be interrupted).

RTSP: OpenCV asks for RTP over TCP. For a server that only speaks UDP, set the FFmpeg options in the
service's environment: ``Environment=OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;udp`` (process-wide;
OpenCV offers no per-capture way to pass them).

Longer than ~450 lines on purpose: the supervisor, the read attempts it watches, the delivery slot and the
frames skipped before decoding (a motion gate's ``FrameGate``) share one lock and one set of counters; split
apart, each piece would reach into the others' state; its config (with the checks that a device's
``pixel_format`` needs) and opening a capture belong to the same camera. Decoding MJPEG reduced (and a
glance's grey copy from a JPEG) is its own module (``mjpeg.py``), as is a stream URL's login
(``stream_login.py``: the password put in at start, shown as ``***``); a glance's copy of a decoded frame
is the motion gate's own shrinking (``base.glance_copy``); where frames' memory comes from,
``runtime.memory.fit_frames`` (the camera only tells it their size); why a device node does not open,
``device_access.py``."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.credentials import PasswordFields, resolve_password
from edge_agent.errors import ConfigError, SourceError
from edge_agent.extras import OPENCV
from edge_agent.runtime.memory import fit_frames
from edge_agent.sources.base import (
    Backoff,
    Frame,
    Interruptible,
    RateLimitedWarning,
    Source,
    SourceConfigBase,
    absolute,
    glance_copy,
)
from edge_agent.sources.device_access import camera_open_problem
from edge_agent.sources.mjpeg import ScaledJpeg, jpeg_scale
from edge_agent.sources.stream_login import login_problem, shown_url, with_password

__all__ = ["CameraSource", "CameraSourceConfig", "camera_kind", "fourcc_text", "jpeg_scale", "shown_url"]

log = logging.getLogger(__name__)


class CameraSourceConfig(SourceConfigBase, PasswordFields):
    data_kind = "image"

    type: Literal["camera"] = "camera"
    url: str | int = Field(
        description="/dev/video0, a camera index (0), a video file path, or an rtsp://, http://, udp:// URL."
    )
    fps: float | None = Field(
        default=None, gt=0, description="Cap on frames handed to the model; none = as fast as read."
    )
    loop: bool = Field(
        default=False, description="Video files only: start again at the end instead of stopping."
    )
    pixel_format: str | None = Field(
        default=None,
        description="Devices only: the pixel format to ask the camera for, as its FourCC (MJPG, YUYV, ...; "
        "v4l2-ctl --list-formats-ext lists a camera's). USB cameras often give their larger sizes and higher "
        "frame rates only as MJPG, which is then decoded at a reduced size when the model needs no more, "
        "and glanced at by a motion gate without a full decode. None: OpenCV's choice (uncompressed first).",
    )
    width: int | None = Field(default=None, gt=0, description="Requested capture width (devices only).")
    height: int | None = Field(default=None, gt=0, description="Requested capture height (devices only).")
    decode_size: Literal["auto", "full"] = Field(
        default="auto",
        description="auto: MJPEG devices, video files and streams are decoded at 1/2, 1/4 or 1/8 "
        "size when that still covers the model's input (libjpeg's DCT scaling: less CPU and memory per "
        "frame; not with evidence frames, which are saved full size); full: always decode full frames.",
    )
    decode_threads: int = Field(
        default=1,
        ge=0,
        description="FFmpeg decoder threads for files and streams. One keeps decoding off the cores the "
        "model needs and costs the least CPU per frame (640x480 MJPG: 0.75 vs 0.90 ms); raise it for a "
        "high-resolution H.264/H.265 stream one core cannot decode in time; 0 = FFmpeg's choice.",
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, description="Give up opening after this long, then retry."
    )
    read_timeout_s: float = Field(
        default=5.0, gt=0, description="No frame for this long = stream lost; reconnect."
    )
    reconnect_min_s: float = Field(
        default=0.5, gt=0, description="First reconnect delay; doubles each failure."
    )
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay.")

    @field_validator("url")
    @classmethod
    def _file_url(cls, value: str | int) -> str | int:
        """``file:///clips/door.mp4`` is a video file (a replay that ends), not a stream to reconnect to."""
        if isinstance(value, str) and value[:7].lower() == "file://":
            parts = urllib.parse.urlsplit(value)
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise ValueError("a file URL names a local file: file:///path/to/video.mp4")
            return urllib.parse.unquote(parts.path)
        return value

    @field_validator("pixel_format")
    @classmethod
    def _fourcc(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 4 or not value.isascii()):
            raise ValueError("a FourCC is 4 characters, such as MJPG or YUYV")
        return value

    @model_validator(mode="after")
    def _password_for_a_stream_login(self) -> CameraSourceConfig:
        given = self.given_password_fields()
        if given and (problem := login_problem(self.url, given[0])):
            raise ValueError(problem)
        return self

    def url_with_password(self, field_prefix: str = "camera", unit: Path | None = None) -> str | int:
        """The url to open: a stream's login with the password from password_file/env/credential. Raises
        ConfigError naming the field when the password is not there."""
        password = resolve_password(self, field_prefix, unit)
        return self.url if password is None else with_password(str(self.url), password)

    @model_validator(mode="after")
    def _pixel_format_for_devices(self) -> CameraSourceConfig:
        if self.pixel_format is not None and camera_kind(self.url) != "device":
            raise ValueError(
                f"pixel_format applies to camera devices (/dev/video*), not to {shown_url(self.url)}: "
                "remove it (a file or stream's codec is what it is)"
            )
        return self

    @property
    def device_path(self) -> str | None:
        """A device's path (index N is /dev/videoN, as V4L2 numbers them); None for files and streams."""
        if camera_kind(self.url) != "device":
            return None
        index = str(self.url).strip()
        return f"/dev/video{index}" if index.isdigit() else index

    def missing_device(self) -> str | None:
        """The device's path when it is not there now (None for files, streams and a device that is; and
        off Linux, where an index is no /dev/video path)."""
        path = self.device_path
        if path is None or not sys.platform.startswith("linux") or os.path.exists(path):
            return None
        return path

    def held_device(self) -> str | None:
        path = self.device_path
        return None if path is None else os.path.realpath(path)  # by-id links too

    def resolve_paths(self, base: Path) -> None:
        if isinstance(self.url, str) and "://" not in self.url and not self.url.startswith("/dev/"):
            self.url = absolute(base, self.url)  # a video file beside the config
        if self.password_file is not None:
            self.password_file = Path(absolute(base, str(self.password_file)))


CameraKind = Literal["device", "file", "stream"]

# Anything with a scheme is handed to FFmpeg as a network URL (rtsp, http(s), udp, tcp, rtmp, srt, ...).
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# How much longer than OpenCV's own timeout the watchdog waits before abandoning an attempt.
_WATCHDOG_GRACE_S = 1.0
_POLL_S = 0.1
# The supervisor checks a running attempt for a stall this often. Every wake of an idle thread costs ~0.1 ms
# of CPU on this project's machine (README "Motion, zones and masks"), so it wakes rarely: an attempt that
# ends, and a close, wake it at once (``_Attempt.wake``); only a stall is seen up to this much later.
_WATCH_S = 0.5
_RELEASE_WAIT_S = 2.0
_DEVICE_POLL_S = 1.0  # how soon a camera plugged in is seen (a stat of its path)


def fourcc_text(code: float) -> str | None:
    """A capture's ``CAP_PROP_FOURCC`` as its four letters (``MJPG``, ``YUYV``), None when it has none."""
    code = int(code)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") or None


def camera_kind(url: str | int) -> CameraKind:
    """Tell a device (index or /dev path), a network stream (has a scheme) and a video file apart."""
    if isinstance(url, int) or url.strip().isdigit() or url.startswith("/dev/"):
        return "device"
    if _URL_SCHEME.match(url):
        return "stream"
    return "file"


class _Attempt:
    """One connection: opened and read in its own thread; the supervisor watches ``progress``."""

    def __init__(self) -> None:
        self.abandoned = threading.Event()
        self.done = threading.Event()
        self.wake = threading.Event()  # the supervisor looks now: the attempt is done, or the source closes
        self.opened = False
        self.progress = time.monotonic()  # last sign of life: opened, frame read, or waiting for the consumer
        self.delivered = 0
        self.outcome: Literal["eof", "error", "stopped"] = "stopped"
        self.error: str | None = None


class CameraSource(Interruptible, Source):
    """Frames from OpenCV ``VideoCapture``; see the module docstring for the delivery rules."""

    data_kind = "image"

    def __init__(self, cfg: CameraSourceConfig, window: object | None = None) -> None:
        if window is not None:
            raise ConfigError("window: applies to sensor sources only; remove it from the camera pipeline")
        self.cfg = cfg
        self.kind = camera_kind(cfg.url)
        self._cv2 = OPENCV.load()
        self._label = shown_url(cfg.url)
        self._url: str | int = cfg.url  # what is opened: a stream's password is put in at start
        # A file replay without an fps cap delivers every frame; everything else keeps only the newest.
        self._deliver_all = self.kind == "file" and cfg.fps is None
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._produced = 0
        self._skipped = 0
        self._reconnects = 0
        self._connected = False
        self._last_error: str | None = None
        self._eof = False
        self._stop = threading.Event()
        self._halt = threading.Event()  # set by close()
        self._thread: threading.Thread | None = None
        self._preopened: tuple[Any, Any, ScaledJpeg] | None = None  # a file checked at start: capture,
        # its first image (or JPEG packet) and its decoder
        self._attempt: _Attempt | None = None
        self._decode_scale = 1  # 2, 4, 8: MJPEG packets decoded by libjpeg at that fraction of full size
        self._bad_frames = 0  # packets that did not decode (skipped)
        self._frame_bytes = 0  # the largest frame-sized buffer made so far (runtime.memory.fit_frames)
        self._scaled_jpeg_ok = True  # False once libjpeg failed on this source's packets: FFmpeg decodes
        self._consumer_seen = False  # read() was called: a replay's first packets wait for that
        self._prepare_errors = 0  # frames the consumer's preparer raised on (offered unprepared)
        self._warn = RateLimitedWarning(log)

    # -- Source interface -------------------------------------------------------------------------

    def preflight(self) -> None:
        """A video file that is not there or does not decode stops the start (exit 5), and no restart fixes
        it: opened and its first frame decoded as the start does, then released. Devices and streams are
        waited for or retried (a USB camera plugged in late), so they pass."""
        if self.kind == "file":
            self._open_file_checked()[0].release()

    def start(self, stop: threading.Event) -> None:
        self._stop = stop
        self._url = self.cfg.url_with_password()
        if self.kind == "file":
            self._preopened = self._open_file_checked()
        self._thread = threading.Thread(target=self._supervise, name=f"camera:{self._label}", daemon=True)
        self._thread.start()

    def read(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._consumer_seen:
                self._consumer_seen = True
                self._cond.notify_all()  # a replay's reader may wait for us (_await_consumer)
            while self._latest is None:
                remaining = deadline - time.monotonic()
                if self._eof or self._halt.is_set() or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._latest = self._latest, None
            self._cond.notify_all()  # a file reader may be waiting for the slot
            return frame

    def close(self) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        if self._attempt is not None:
            self._attempt.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._attempt is not None:
            # let the reader release the device, so a reload can open it again at once; a read stuck in
            # OpenCV cannot be interrupted, so do not wait for it forever
            self._attempt.done.wait(_RELEASE_WAIT_S)
        if self._preopened is not None:  # started but the supervisor never took it
            self._preopened[0].release()
            self._preopened = None

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._eof and self._latest is None

    @property
    def stats(self) -> dict:
        with self._cond:
            return {
                "frames": self._produced,
                "skipped": self._skipped,
                "reconnects": self._reconnects,
                "connected": self._connected,
                "last_error": self._last_error,
                "decode_scale": self._decode_scale,
                "bad_frames": self._bad_frames,
                "prepare_errors": self._prepare_errors,
            }

    # -- opening ----------------------------------------------------------------------------------

    def _open_file_checked(self) -> tuple[Any, Any]:
        """A video file that is missing or undecodable is a config problem: fail at start, say what to do."""
        path = Path(str(self.cfg.url)).expanduser()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise SourceError(
                f"camera url: video file {path} {what}: fix the path in the config "
                "(or use /dev/videoN for a camera, rtsp:// or http:// for a stream)"
            )
        cap, jpeg = self._open_decoding()
        ok, image = (False, None)
        if cap is not None and cap.isOpened():
            ok, image = cap.read()
            # raw mode: the first frame stays a packet, decoded when delivered (at the scale known by then)
            if ok and jpeg.raw and not jpeg.readable(image):
                image = None  # skipped, as when reading; enough of them and FFmpeg decodes instead
                with self._cond:
                    self._bad_frames += 1
                if self._ffmpeg_decodes_first_frame():
                    return cap, None, jpeg
        if not ok or image is None:
            if cap is not None:
                cap.release()
            raise SourceError(
                f"camera url: cannot decode video file {path}: check that it plays (ffprobe {path}) "
                "or re-encode it, e.g. ffmpeg -i in.mov -c:v libx264 out.mp4"
            )
        return cap, image, jpeg

    def _ffmpeg_decodes_first_frame(self) -> bool:
        """The start's check for a file whose first packet libjpeg did not decode, on a capture of its own."""
        probe = self._open()
        try:
            return bool(probe is not None and probe.isOpened() and probe.read()[0])
        finally:
            if probe is not None:
                probe.release()

    def _open_decoding(self) -> tuple[Any, ScaledJpeg]:
        """A capture and its decoder (MJPEG: libjpeg on the packets from the first one on, see ScaledJpeg)."""
        cap, jpeg = self._open(), ScaledJpeg(self)
        if cap is not None and cap.isOpened():
            jpeg.begin(cap)
        return cap, jpeg

    def _open(self) -> Any:
        cv2 = self._cv2
        url = self._url
        if self.kind == "device":
            index_or_path: int | str = int(url) if isinstance(url, int) or url.strip().isdigit() else url
            cap = cv2.VideoCapture(
                index_or_path, cv2.CAP_V4L2 if isinstance(index_or_path, str) else cv2.CAP_ANY
            )
            # the format before the size: a size may exist in one format only
            if self.cfg.pixel_format and cap.isOpened():
                self._ask_pixel_format(cap, self.cfg.pixel_format)
            if self.cfg.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            if self.cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            return cap
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout_s * 1000),
        ]  # fmt: skip
        if self.cfg.decode_threads:
            params += [cv2.CAP_PROP_N_THREADS, self.cfg.decode_threads]
        path = str(Path(str(url)).expanduser()) if self.kind == "file" else str(url)
        return cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)

    def _ask_pixel_format(self, cap: Any, wanted: str) -> None:
        """Ask the device for ``wanted``; one that does not offer it keeps its own, with a warning that
        names both (the camera still works, at the cost the user meant to avoid)."""
        if cap.set(self._cv2.CAP_PROP_FOURCC, self._cv2.VideoWriter_fourcc(*wanted)):
            return
        delivers = fourcc_text(cap.get(self._cv2.CAP_PROP_FOURCC)) or "unknown"
        log.warning(
            "camera %s: the device refused pixel_format %s and delivers %s; v4l2-ctl -d %s "
            "--list-formats-ext lists what it offers",
            self._label, wanted, delivers, self._label,
        )  # fmt: skip

    # -- threads ----------------------------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        first = True
        while not self._stopping():
            if not first:
                with self._cond:
                    self._reconnects += 1
            first = False
            if not self._await_device():
                return
            attempt = self._attempt = _Attempt()
            preopened, self._preopened = self._preopened, None
            threading.Thread(
                target=self._read_attempt,
                args=(attempt, preopened),
                name=f"camera-read:{self._label}",
                daemon=True,
            ).start()
            self._watch(attempt)
            if attempt.outcome == "stopped":
                return
            if attempt.outcome == "eof":
                with self._cond:
                    self._eof = True
                    self._connected = False
                    self._cond.notify_all()
                log.info("camera %s: end of file after %d frames", self._label, self._produced)
                return
            with self._cond:
                self._connected = False
                self._last_error = attempt.error
            if self._stopping():
                return
            if attempt.delivered:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning("camera %s: %s; retrying in %.1f s", self._label, attempt.error, delay)
            if self._sleep(delay):
                return

    def _await_device(self) -> bool:
        """A device path that is not there (a USB camera not plugged in at boot, or pulled out) is waited for
        with a stat a second while the daemon's other pipelines run on: stopping the daemon instead would
        end them too, and systemd's start limit gives up on a daemon that keeps failing. False: stopping."""
        path = self.cfg.missing_device()
        if path is None:
            return True
        error = (
            f"device {path} is not there: check the camera is plugged in (ls /dev/video*, edge-agent probe)"
        )
        with self._cond:
            self._connected = False
            self._last_error = error
        log.warning("camera %s: %s; waiting for it", self._label, error)
        while self.cfg.missing_device() is not None:
            if self._sleep(_DEVICE_POLL_S):
                return False
        log.info("camera %s: device %s is there now", self._label, path)
        return True

    def _why_not_opened(self) -> str:
        """OpenCV tells only that it failed; a device node that is there says why (``device_access``)."""
        path = self.cfg.device_path
        if path is None or not sys.platform.startswith("linux") or not os.path.exists(path):
            return "cannot open (nothing there, or refused)"
        return camera_open_problem(path)

    def _watch(self, attempt: _Attempt) -> None:
        """Wait for the attempt to end; abandon it when it stalls past its timeout or when stopping."""
        while not attempt.done.is_set():
            attempt.wake.wait(_WATCH_S)
            if attempt.done.is_set():
                return
            if self._stopping():
                attempt.abandoned.set()
                attempt.outcome = "stopped"
                return
            limit = (
                self.cfg.read_timeout_s if attempt.opened else self.cfg.open_timeout_s
            ) + _WATCHDOG_GRACE_S
            if time.monotonic() - attempt.progress > limit:
                attempt.abandoned.set()
                attempt.outcome = "error"
                attempt.error = (
                    f"no frame for {limit:.0f} s"
                    if attempt.opened
                    else f"opening did not finish in {limit:.0f} s"
                )
                return

    def _read_attempt(self, attempt: _Attempt, preopened: tuple[Any, Any, ScaledJpeg] | None) -> None:
        cap = None
        try:
            if preopened is not None:
                cap, first_image, jpeg = preopened
            else:
                (cap, jpeg), first_image = self._open_decoding(), None
                if attempt.abandoned.is_set():
                    return
                if not cap.isOpened():
                    attempt.outcome, attempt.error = "error", self._why_not_opened()
                    return
            attempt.opened = True
            attempt.progress = time.monotonic()
            with self._cond:
                if attempt.abandoned.is_set():  # the watchdog gave up on this open meanwhile
                    return
                self._connected = True
            log.info("camera %s: opened", self._label)
            cap = self._read_frames(cap, jpeg, first_image, attempt)
        except Exception as exc:  # an OpenCV error must not kill the supervisor; it retries
            attempt.outcome, attempt.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            if cap is not None:
                cap.release()
            attempt.done.set()
            attempt.wake.set()

    def _read_frames(self, cap: Any, jpeg: ScaledJpeg, first_image: Any, attempt: _Attempt) -> Any:
        """Read until the end, an error, or abandonment; returns the capture in use (files reopen to loop)."""
        period = 1.0 / self.cfg.fps if self.cfg.fps else 0.0
        next_due = time.monotonic()
        pass_frames = 0  # frames in this pass over a file: a looping file that yields none is an error
        pending = first_image
        while not (self._stopping() or attempt.abandoned.is_set()):
            if self.kind == "file" and period and not self._pace(next_due, attempt):
                break
            if pending is not None:  # the start's first frame (a packet, in raw mode)
                ok, image, pending = True, pending, None
            else:  # retrieved (colour-converted, or the packet copied) only when it is wanted, below
                ok, image = cap.grab(), None
            if ok and jpeg.raw and jpeg.undecided and self._deliver_all:
                self._await_consumer(attempt)
            now = time.monotonic()
            if attempt.abandoned.is_set():
                break
            if ok:
                attempt.progress = now
                if period:
                    if self.kind != "file" and now < next_due:
                        continue  # a live source over its fps cap: not offered, not counted, not retrieved
                    next_due = max(next_due + period, now)
                if not self._deliver_all and self._skipped_unseen():
                    pass_frames += 1
                    continue
                if image is None:
                    ok, image = cap.retrieve()
            if not ok or image is None:
                if self.kind != "file":
                    attempt.outcome, attempt.error = "error", "stream ended or a read failed"
                    return cap
                if not self.cfg.loop:
                    attempt.outcome = "eof"
                    return cap
                if pass_frames == 0:
                    attempt.outcome, attempt.error = (
                        "error",
                        f"video file {self._label} has no readable frames",
                    )
                    return cap
                cap.release()
                (cap, jpeg), pass_frames = self._open_decoding(), 0  # a decoder per capture
                if not cap.isOpened():
                    attempt.outcome, attempt.error = (
                        "error",
                        f"cannot reopen video file {self._label} to loop",
                    )
                    return cap
                continue
            if not self._deliver_all and self._skipped_at_a_glance(jpeg, image):
                pass_frames += 1
                continue  # never offered (an MJPEG packet never decoded in full)
            if jpeg.raw:
                image = jpeg.decode(image)
                if image is None:
                    if self._undecodable_packet(jpeg, attempt):
                        return cap  # reopened by the supervisor, FFmpeg decoding from then on
                    continue
            pass_frames += 1
            if jpeg.undecided:
                jpeg.decide(image)
            if self._offer(image, attempt, (time.time(), now)):
                attempt.delivered += 1
        return cap

    def _skipped_unseen(self) -> bool:
        """The consumer's steps (a motion gate while all is still) skip the next frame without seeing it: it
        is never retrieved, so neither colour-converted (FFmpeg's swscale for H.264 and the like: 0.13-0.5
        ms a frame here; the V4L2 backend's YUYV conversion) nor decoded (MJPEG). It still takes a
        frame index, as a frame the steps skip after a full look does: results' ``frame`` numbers then stay
        those of the camera's frames."""
        if self.gate is None or not self.gate.skip_unseen():
            return False
        with self._cond:
            self._produced += 1
        return True

    def _skipped_at_a_glance(self, jpeg: ScaledJpeg, image: Any) -> bool:
        """The steps skip the frame after a glance at a small grey copy (a frame index taken, as above): one
        decoded straight from an MJPEG packet, else the decoded frame (H.264, YUYV) shrunk as the gate would
        shrink it itself. A frame skipped so is never offered: no wake-up of the pipeline's thread for it."""
        gate = self.gate
        if gate is None or (width := gate.glance_width()) is None:
            return False
        small = jpeg.decode_grey(image, width) if jpeg.raw else glance_copy(self._cv2, image, width)
        if small is None or gate.glance(small):
            return False  # decoded in full and offered as usual
        with self._cond:
            self._produced += 1
        return True

    def _await_consumer(self, attempt: _Attempt) -> None:
        """A replay's packet waits for its consumer to show up (it takes no frame earlier anyway), so it is
        decoded at the scale the consumer needs, not full size (two full frames: ~1.5 MB at the start)."""
        with self._cond:
            while self.preparer is None and not self._consumer_seen:
                if self._stopping() or attempt.abandoned.is_set():
                    return
                self._cond.wait(_POLL_S)
                attempt.progress = time.monotonic()

    def _undecodable_packet(self, jpeg: ScaledJpeg, attempt: _Attempt) -> bool:
        """Count a packet libjpeg could not decode (skipped); True when libjpeg has decoded none of the
        first ones: the attempt ends so the source reopens and lets FFmpeg decode."""
        attempt.progress = time.monotonic()
        with self._cond:
            self._bad_frames += 1
            if not jpeg.hopeless:
                return False
            self._scaled_jpeg_ok, self._decode_scale = False, 1
        attempt.outcome = "error"
        attempt.error = (
            f"{jpeg.failures} MJPEG packets in a row did not decode with libjpeg; reopening with "
            f"{'OpenCV' if self.kind == 'device' else 'FFmpeg'} decoding them"
        )
        return True

    def _pace(self, due: float, attempt: _Attempt) -> bool:
        """File played at the fps cap: wait for the next frame's time; False when stopping."""
        while (remaining := due - time.monotonic()) > 0:
            if self._stopping() or attempt.abandoned.is_set():
                return False
            self._halt.wait(min(_POLL_S, remaining))
            attempt.progress = time.monotonic()
        return True

    def _offer(self, image: Any, attempt: _Attempt, read_at: tuple[float, float]) -> bool:
        """Hand ``image`` to the consumer: a replay waits for the slot, a live source replaces what is there.
        The image is prepared (preprocessed for the model) here, on the reader's thread, outside the lock."""
        captured_at, captured_mono = read_at
        if self._deliver_all:
            with self._cond:
                while self._latest is not None:
                    if self._stopping() or attempt.abandoned.is_set():
                        return False
                    self._cond.wait(_POLL_S)
                    attempt.progress = time.monotonic()
            # a replayed frame is "captured" when the consumer is ready for it, not when it was read ahead
            captured_at, captured_mono = time.time(), time.monotonic()
        prepared = self._prepare(image)
        with self._cond:
            if not self._deliver_all and self._latest is not None:
                self._skipped += 1  # the consumer never took the previous frame
            if attempt.abandoned.is_set():
                return False
            self._latest = Frame(image, "image", self._produced, captured_at, captured_mono, prepared)
            self._produced += 1
            self._cond.notify_all()
            return True

    def _prepare(self, image: Any) -> Any:
        preparer = self.preparer
        if preparer is None:
            return None  # frames before the pipeline starts may be full size: they say nothing of the rest
        try:
            prepared = preparer(image)
        except Exception as exc:  # offered unprepared: the consumer does the work on its own thread
            with self._cond:
                self._prepare_errors += 1
            self._warn("camera %s: preparing a frame failed (%r); handed over unprepared", self._label, exc)
            return None
        tensor = getattr(prepared, "tensor", None)  # a float model's input can be larger than the frame
        size = max(image.nbytes, tensor.nbytes if tensor is not None else 0)
        if size > self._frame_bytes:  # the first frame, or larger ones: from the heap, reused, not mapped
            self._frame_bytes = size
            fit_frames(size)
        return prepared
