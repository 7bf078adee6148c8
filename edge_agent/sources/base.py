"""What every source hands the pipeline (``Frame``), the interface it implements (``Source``), the base of
its config (``SourceConfigBase``: the kind of data it gives and its own checks), and the small helpers
sources share: reconnect backoff and rate-limited warnings."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from edge_agent.backoff import Backoff

__all__ = [
    "Backoff",
    "DataKind",
    "Frame",
    "Interruptible",
    "RateLimitedWarning",
    "Source",
    "SourceConfigBase",
]

DataKind = Literal["image", "samples"]


class SourceConfigBase(BaseModel):
    """What every source config declares besides its fields: the kind of data it gives (which decides the
    model input it needs and the pipeline keys that apply), and its own checks across pipeline keys."""

    model_config = ConfigDict(extra="forbid")

    data_kind: ClassVar[DataKind]

    def check_window(self, window: object | None) -> None:
        """Raise ValueError when ``window`` (the pipeline's) does not suit this source."""
        kind = getattr(self, "type", "?")
        if self.data_kind == "samples" and window is None:
            raise ValueError(
                f"a sensor source ({kind}) needs a window: add  window: {{size: N, hop: M}}  "
                "(samples per model input)"
            )
        if self.data_kind == "image" and window is not None:
            raise ValueError("a camera source takes no window (one frame = one model input): remove 'window'")

    def resolve_paths(self, base: Path) -> None:
        """Make this source's relative file paths absolute against ``base`` (the config file's folder)."""

    def sample_channels(self) -> int | None:
        """Values per sample when the config alone tells (sensor sources), else None (known at run time)."""
        return None

    def held_device(self) -> str | None:
        """The device this source holds for itself while it runs (a camera device streams to one reader, a
        serial port has one), as a resolved path; None when others may read it too (files, streams, IIO)."""
        return None


def absolute(base: Path, path: str) -> str:
    """``path`` (~ expanded) made absolute against ``base`` unless it already is."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


@dataclass(frozen=True, slots=True)
class Frame:
    """One unit of model input: an image (BGR uint8, as OpenCV returns it) or a window of samples."""

    data: np.ndarray  # image: BGR uint8 (H,W,3) or (H,W); samples: float32 window (size, channels)
    kind: DataKind
    index: int  # frames/windows produced so far by this source (0 for the first one)
    captured_at: float  # time.time() when captured (epoch s)
    captured_mono: float  # time.monotonic() when captured (for latency)
    prepared: Any = None  # what the consumer's preparer made of it on the source's thread (or None)


Preparer = Callable[[np.ndarray], Any]


def glance_copy(cv2: Any, image: np.ndarray, width: int) -> np.ndarray:
    """``image`` shrunk to ``width`` pixels wide (its aspect kept, at least 8 high) and grey: what a motion
    gate decides from. The gate shrinks a full frame with it, and a camera makes a glance with it from a
    frame its capture decoded (H.264, YUYV), so both decide the same. INTER_LINEAR, not INTER_AREA: 0.1 ms
    against 0.65 ms at 640x480 here; the gate's blur does the rest."""
    height, full_width = image.shape[:2]
    size = (width, max(8, round(height * width / full_width)))
    small = image if (full_width, height) == size else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small


class FrameGate(Protocol):
    """What a camera asks before it retrieves (decodes, converts) a frame: whether the consumer's steps skip
    it unseen, or decide it from a small grey copy (the pipeline's motion gate while the scene is still;
    processing/steps/chain.py) made straight from an MJPEG packet or from the decoded frame."""

    def skip_unseen(self) -> bool:
        """True: skip the next frame undecoded (the gate counted the skip)."""

    def glance_width(self) -> int | None:
        """The width of the small grey copy ``glance`` decides from; None: decode the frame in full."""

    def glance(self, small: np.ndarray) -> bool:
        """False: skip the frame (counted); True: decode it in full and offer it as usual."""


class Source(ABC):
    """A camera or sensor. ``start`` raises ``SourceError`` only for problems a retry cannot fix (a missing
    file); everything transient (a stream down, a port gone) is retried in the background and reported in
    ``stats`` (``connected``, ``last_error``, ``reconnects``)."""

    data_kind: ClassVar[DataKind]  # what ``Frame.kind`` its frames have
    preparer: Preparer | None = None
    min_size: tuple[int, int] | None = None
    gate: FrameGate | None = None

    def set_preparer(
        self,
        preparer: Preparer | None,
        min_size: tuple[int, int] | None = None,
        gate: FrameGate | None = None,
    ) -> None:
        """Have the source's producing thread turn each image into the model's input before offering it
        (``Frame.prepared``), so preprocessing overlaps with inference instead of adding to it. Sources
        without a thread of their own ignore it; the pipeline preprocesses whatever comes unprepared.
        ``min_size`` (width, height): the smallest image the consumer can use, so a camera may decode
        smaller frames than it captures; None: full-size frames are needed (evidence frames).
        ``gate``: asked before a frame is decoded (``FrameGate``)."""
        self.preparer = preparer
        self.min_size = min_size
        self.gate = gate

    def preflight(self) -> None:
        """Raise SourceError for what the start would refuse and no retry fixes; nothing is opened. Sources
        that retry everything (a camera, a serial port) have nothing to say here."""
        return None

    @abstractmethod
    def start(self, stop: threading.Event) -> None: ...

    @abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """The newest frame (camera) or next window (sensors); None when nothing came within ``timeout``."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once a non-looping file reached its end and everything it produced was read."""

    @property
    @abstractmethod
    def stats(self) -> dict:
        """{"frames", "skipped", "reconnects", "connected", "last_error"} + source-specific counters
        (non-negative integers), which the stats payload passes through as they are."""


class Interruptible:
    """For sources with background threads: they end on the daemon's stop event (``_stop``) or on
    ``close()`` (``_halt``), and every wait of theirs wakes for either."""

    _stop: threading.Event
    _halt: threading.Event
    _POLL_S = 0.1  # how long a wait may overrun a stop

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._halt.is_set()

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking early for stop or close; True when stopping."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._halt.wait(min(self._POLL_S, remaining))
        return True


class RateLimitedWarning:
    """Log a recurring problem (bad lines, a chatty stderr) at most ``burst`` times per ``interval_s``, with
    a count of what was suppressed in between, so a noisy sensor cannot flood the journal."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, burst: int = 1) -> None:
        self._logger = logger
        self._interval = interval_s
        self._burst = burst
        self._window_start = -float("inf")
        self._logged = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, msg: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self._interval:
                self._window_start, self._logged = now, 0
            if self._logged >= self._burst:
                self._suppressed += 1
                return
            self._logged += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg += f" ({suppressed} similar messages suppressed before this one)"
        self._logger.warning(msg, *args)
