"""What every sensor source shares: a producer thread turns samples into windows, and windows wait for the
model in a bounded queue.

What happens when the model is slower than the samples arrive is each source's ``overflow`` setting:
- ``block`` (default for recorded and counted streams: ``file``, ``command``): the producer waits for the
  model, so every sample becomes part of a window (the file or the pipe is the buffer) and a replay is
  deterministic. A user piping a CSV through ``cat`` lost 16 of 45 rows to the old newest-wins policy.
- ``drop_oldest`` (default for live sensors: ``iio``, ``serial``): the oldest waiting window is dropped,
  so a slow model never builds a backlog of stale readings; drops are counted (``skipped``) and logged.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from abc import abstractmethod
from typing import Literal

import numpy as np

from edge_agent.backoff import SOURCE_MAX_S, SOURCE_RESTART_MIN_S
from edge_agent.sources.base import Backoff, Frame, Interruptible, RateLimitedWarning, Source
from edge_agent.sources.lines import MAX_LINE_BYTES, BadLine, HeaderMismatch, LineParser, LineSplitter
from edge_agent.sources.window import WindowConfig, Windower

log = logging.getLogger(__name__)

QUEUE_WINDOWS = 16  # windows waiting for the model; more than this and the source blocks or drops
_POLL_S = 0.1

Overflow = Literal["block", "drop_oldest"]
OVERFLOW_HELP = (
    "When the model is slower than the samples arrive: 'block' waits for it (every sample is used; for "
    "recorded or counted streams), 'drop_oldest' drops the oldest waiting window (live sensors; counted "
    "as skipped)."
)


class SampleSource(Interruptible, Source):
    """Base of the sensor sources. Subclasses implement ``_check`` (fatal problems, at start) and ``_run``
    (the producer loop, which returns when the source has ended for good and calls ``_emit`` per sample)."""

    data_kind = "samples"

    def __init__(self, label: str, window: WindowConfig | None, *, overflow: Overflow) -> None:
        self.label = label
        self._windower = Windower.from_config(window)
        self._lossless = overflow == "block"
        self._queue: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._halt = threading.Event()  # set by close()
        self._thread: threading.Thread | None = None
        self._ended = False
        self._windows = 0
        self._samples = 0
        self._skipped = 0
        self._bad_lines = 0
        self._reconnects = 0
        self._connected = False
        self._last_error: str | None = None
        self._warn_bad = RateLimitedWarning(log)

    # -- Source interface -------------------------------------------------------------------------

    def preflight(self) -> None:
        """The start's fatal checks alone (``_check``: nothing read yet, no thread): ``edge-agent check``
        asks them, so it says what the start would stop on."""
        self._check()

    def start(self, stop: threading.Event) -> None:
        self._stop = stop
        self._check()
        self._thread = threading.Thread(target=self._main, name=f"source:{self.label}", daemon=True)
        self._thread.start()

    def read(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                remaining = deadline - time.monotonic()
                if self._ended or self._halt.is_set() or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._queue.popleft()
            self._cond.notify_all()  # a lossless producer may be waiting for room
            return frame

    def close(self) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._ended and not self._queue

    @property
    def stats(self) -> dict:
        with self._cond:
            return {
                "frames": self._windows,
                "skipped": self._skipped,
                "reconnects": self._reconnects,
                "connected": self._connected,
                "last_error": self._last_error,
                "samples": self._samples,
                "bad_lines": self._bad_lines,
            }

    # -- for subclasses ---------------------------------------------------------------------------

    def _check(self) -> None:
        """Raise SourceError for what no retry can fix (a missing file, an unknown device)."""

    @abstractmethod
    def _run(self) -> None:
        """Produce samples until stopped (return) or until the source has ended for good (return)."""

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        with self._cond:
            self._connected = connected
            if error is not None:
                self._last_error = error

    def _count_reconnect(self) -> None:
        with self._cond:
            self._reconnects += 1

    def _bad(self, reason: str, line: str) -> None:
        with self._cond:
            self._bad_lines += 1
            count = self._bad_lines
        self._warn_bad("%s: bad line (%s): %.80r [%d bad so far]", self.label, reason, line, count)

    def _parse_and_emit(self, parser: LineParser, line: str) -> None:
        """One text line -> one sample, or one counted bad line."""
        try:
            sample = parser.parse(line)
        except BadLine as exc:
            if isinstance(exc, HeaderMismatch):  # every line will fail: make it visible in stats too
                self._set_connected(self._connected, str(exc))
            self._bad(str(exc), line)
            return
        if sample is not None:
            self._emit(sample)

    def _feed_lines(self, splitter: LineSplitter, parser: LineParser, data: bytes) -> None:
        """Bytes as they arrived -> samples from the complete lines among them."""
        overlong = splitter.overlong
        for line in splitter.feed(data):
            self._parse_and_emit(parser, line)
        if splitter.overlong > overlong:
            self._bad(f"no newline within {MAX_LINE_BYTES} bytes", "")

    def _flush_lines(self, splitter: LineSplitter, parser: LineParser) -> None:
        """The input ended: a last line without a newline still counts."""
        rest = splitter.flush()
        if rest is not None:
            self._parse_and_emit(parser, rest)

    def _emit(self, sample: np.ndarray) -> None:
        """Add one sample (channels,); queue a window when one is complete."""
        window = self._windower.push(sample)
        with self._cond:
            self._samples += 1
            if window is None:
                return
            if self._lossless:
                while len(self._queue) >= QUEUE_WINDOWS and not self._stopping():
                    self._cond.wait(_POLL_S)
            elif len(self._queue) >= QUEUE_WINDOWS:
                self._queue.popleft()
                self._skipped += 1
                if self._skipped == 1:  # once: the count goes on in stats (source.skipped)
                    log.warning(
                        "%s: the model is slower than the samples arrive: dropping the oldest windows "
                        "(overflow: drop_oldest; counted in stats as skipped); set overflow: block to keep "
                        "every sample",
                        self.label,
                    )
            self._queue.append(Frame(window, "samples", self._windows, time.time(), time.monotonic()))
            self._windows += 1
            self._cond.notify_all()

    # -- thread -----------------------------------------------------------------------------------

    def _main(self) -> None:
        """Run the producer; a bug or an unexpected error is logged and retried, never silently fatal."""
        backoff = Backoff(SOURCE_RESTART_MIN_S, SOURCE_MAX_S)
        try:
            while not self._stopping():
                try:
                    self._run()
                    return
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    self._set_connected(False, error)
                    delay = backoff.next_delay()
                    log.exception("%s: failed (%s); restarting in %.1f s", self.label, error, delay)
                    if self._sleep(delay):
                        return
                    self._count_reconnect()
        finally:
            with self._cond:
                if not self._stopping():  # _run returned on its own: the source has ended
                    self._ended = True
                self._connected = False
                self._cond.notify_all()
