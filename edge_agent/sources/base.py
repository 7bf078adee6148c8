"""What every source hands the pipeline (``Frame``), the interface it implements (``Source``), and the
small helpers sources share: reconnect backoff and rate-limited warnings."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edge_agent.backoff import Backoff

__all__ = ["Backoff", "Frame", "Interruptible", "RateLimitedWarning", "Source"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One unit of model input: an image (BGR uint8, as OpenCV returns it) or a window of samples."""

    data: np.ndarray  # image: BGR uint8 (H,W,3) or (H,W); samples: float32 window (size, channels)
    kind: Literal["image", "samples"]
    index: int  # frames/windows produced so far by this source (0 for the first one)
    captured_at: float  # time.time() when captured (epoch s)
    captured_mono: float  # time.monotonic() when captured (for latency)
    prepared: Any = None  # the model input, made on the source's own thread by its preparer (or None)


Preparer = Callable[[np.ndarray], Any]


class Source(ABC):
    """A camera or sensor. ``start`` raises ``SourceError`` only for problems a retry cannot fix (a missing
    file); everything transient (a stream down, a port gone) is retried in the background and reported in
    ``stats`` (``connected``, ``last_error``, ``reconnects``)."""

    preparer: Preparer | None = None
    min_size: tuple[int, int] | None = None

    def set_preparer(self, preparer: Preparer | None, min_size: tuple[int, int] | None = None) -> None:
        """Have the source's producing thread turn each image into the model's input before offering it
        (``Frame.prepared``), so preprocessing overlaps with inference instead of adding to it. Sources
        without a thread of their own ignore it; the pipeline preprocesses whatever comes unprepared.
        ``min_size`` (width, height): the smallest image the consumer can use, so a camera may decode
        smaller frames than it captures; None: full-size frames are needed (evidence frames)."""
        self.preparer = preparer
        self.min_size = min_size

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
        """{"frames", "skipped", "reconnects", "connected", "last_error"} (+ source-specific counters)."""


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
