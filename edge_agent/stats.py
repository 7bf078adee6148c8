"""Counters and latency percentiles for the stats topic, cheap enough to call per frame.

Latencies go into fixed-size numpy ring buffers (one per stage): recording is an index write under a lock,
and the percentiles are computed only when the stats payload is built (every ``stats_interval_s``), over the
last ``window`` results, so a slow minute an hour ago does not hide today's p99. Each window also counts its
samples into fixed cumulative buckets (a Prometheus histogram, served by ``edge_agent.metrics``): the same
observation, never reset, so a scraper can compute any quantile over any range it likes.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

import numpy as np

from edge_agent.publish.payloads import LATENCY_STAGES

# source stats keys that are not passed through as counters: the pipeline reports frames and skipped itself
_SOURCE_OWN = frozenset({"frames", "skipped", "connected", "reconnects", "last_error"})
DEFAULT_WINDOW = 1024  # results per percentile window: ~34 s at 30 fps, enough samples for a stable p99
# Histogram bucket upper bounds (ms): 0.5 ms (a tiny model's invoke) to 10 s (a stalled camera's capture_age).
BUCKETS_MS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


class LatencyWindow:
    """The last ``size`` samples (milliseconds) of one stage; p50/p99 over them. Thread-safe."""

    def __init__(self, size: int = DEFAULT_WINDOW):
        if size < 1:
            raise ValueError("size must be >= 1")
        self._buf = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()
        self._buckets = [0] * (len(BUCKETS_MS) + 1)  # per bucket (the last one: above 10 s), not cumulative
        self._sum = 0.0

    def add(self, ms: float) -> None:
        slot = bisect.bisect_left(BUCKETS_MS, ms)  # le semantics: a sample equal to a bound counts in it
        with self._lock:
            self._buckets[slot] += 1
            self._sum += ms
            self._buf[self._next] = ms
            self._next = (self._next + 1) % self._buf.size
            if self._count < self._buf.size:
                self._count += 1

    def __len__(self) -> int:
        return self._count

    def reset(self) -> None:
        """Forget every sample of the window (a model swap: the old model's times must not count for the new
        one's percentiles). The histogram is a counter and keeps counting: a reset would look like a restart
        to Prometheus' rate()."""
        with self._lock:
            self._next = 0
            self._count = 0

    def histogram(self) -> tuple[list[tuple[float, int]], float]:
        """``([(upper bound ms, cumulative count), ..., (inf, total)], sum ms)`` since start."""
        with self._lock:
            counts = list(self._buckets)
            total_ms = self._sum
        cumulative, running = [], 0
        for bound, n in zip((*BUCKETS_MS, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return cumulative, total_ms

    def percentiles(self, qs: tuple[float, ...] = (50.0, 99.0)) -> dict[str, float | None]:
        """``{"p50": ms, "p99": ms}`` (rounded to µs); None for each when no sample was recorded yet."""
        with self._lock:
            samples = self._buf[: self._count].copy()
        keys = [f"p{q:g}" for q in qs]
        if samples.size == 0:
            return dict.fromkeys(keys)
        samples.sort()
        return {k: round(_linear_percentile(samples, q), 3) for k, q in zip(keys, qs, strict=True)}


def _linear_percentile(ordered: np.ndarray, q: float) -> float:
    """``np.percentile(ordered, q)`` (its default linear interpolation) on sorted samples. Written out
    because ``np.percentile`` imports ``numpy.ma`` on first use: 0.7 MB resident for the daemon's lifetime."""
    k = (ordered.size - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, ordered.size - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))


class RateMeter:
    """Events per second over the last ``size`` events (e.g. frames -> fps), from monotonic timestamps."""

    def __init__(self, size: int = 64):
        self._times = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        with self._lock:
            self._times[self._next] = t
            self._next = (self._next + 1) % self._times.size
            self._count = min(self._count + 1, self._times.size)

    def rate(self, now: float | None = None) -> float:
        """Events/s between the oldest kept event and ``now``; 0.0 with fewer than two events."""
        t = time.monotonic() if now is None else now
        with self._lock:
            if self._count < 2:
                return 0.0
            # When full, the slot about to be overwritten holds the oldest event.
            oldest = self._times[self._next] if self._count == self._times.size else self._times[0]
            count = self._count
        span = t - oldest
        return round((count - 1) / span, 3) if span > 0 else 0.0


class PipelineStats:
    """Per-pipeline counters and per-stage latency windows; ``snapshot()`` is the stats payload entry."""

    def __init__(self, window: int = DEFAULT_WINDOW, stages: tuple[str, ...] = LATENCY_STAGES):
        self.stages = stages
        self.latency = {stage: LatencyWindow(window) for stage in stages}
        self.fps = RateMeter()
        self._lock = threading.Lock()
        self.frames = 0  # frames/windows processed by the model
        self.skipped = 0  # frames the source dropped because the model was busy (from the source's stats)
        self.results = 0  # results produced by the postprocessor
        self.published = 0  # results handed to the publisher (after the publish policy)
        self.errors = 0  # frames that failed (bad input, invoke error, a step that raised) and were skipped
        self.prepare_errors = 0  # frames the source's thread could not prepare (the inference thread did)

    def count(self, **increments: int) -> None:
        """``count(frames=1, results=1)``: add to the named counters atomically."""
        with self._lock:
            for name, n in increments.items():
                setattr(self, name, getattr(self, name) + n)

    def frame_done(
        self, latency_ms: dict[str, float], *, result: bool = True, published: bool = False
    ) -> None:
        """Record one processed frame: its per-stage latencies, the fps tick and the counters."""
        for stage, ms in latency_ms.items():
            window = self.latency.get(stage)
            if window is not None:
                window.add(ms)
        self.fps.tick()
        with self._lock:
            self.frames += 1
            self.results += int(result)
            self.published += int(published)

    def snapshot(
        self,
        *,
        source: dict[str, Any],
        model: dict[str, Any],
        skipped: int | None = None,
        state: str | None = None,
        last_error: str | None = None,
        steps: dict[str, dict[str, int]] | None = None,
        reports: dict[str, dict[str, Any]] | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``pipelines[name]`` object of the stats payload.

        ``source``: the source's stats (connected, reconnects, last_error are kept); ``model``: {name, sha256,
        backend, delegate, delegate_error}; ``skipped``: the source's skipped-frame count when it keeps one;
        ``state``/``last_error``: the pipeline's own (a failed reload shows here while the old model runs on);
        ``steps``: per step, the frames it skipped and the ones it failed on (dropped); ``reports``: steps'
        own entries by key (``motion``: the gate's state and counters); ``evidence``: the evidence store's
        files, bytes, saved, failed and last_error, when the pipeline keeps evidence.
        Source counters beyond the common ones (a sensor's ``samples``, a camera's ``bad_frames``) are
        passed through as the source names them; ``frames`` and ``skipped`` are the pipeline's own here.
        """
        with self._lock:
            counters = {
                "frames": self.frames,
                "skipped": self.skipped if skipped is None else int(skipped),
                "results": self.results,
                "published": self.published,
                "errors": self.errors,
                "prepare_errors": self.prepare_errors,
            }
        pipeline = {"state": state} if state is not None else {}
        pipeline["last_error"] = last_error
        return {
            **pipeline,
            "fps": self.fps.rate(),
            **counters,
            "latency_ms": {stage: w.percentiles() for stage, w in self.latency.items() if len(w)},
            "source": {
                **{k: int(v) for k, v in source.items() if k not in _SOURCE_OWN and v is not None},
                "connected": bool(source.get("connected", False)),
                "reconnects": int(source.get("reconnects", 0)),
                "last_error": source.get("last_error"),
            },
            "steps": {name: dict(c) for name, c in (steps or {}).items()},
            **(reports or {}),
            **({} if evidence is None else {"evidence": evidence}),
            "model": {k: model.get(k) for k in ("name", "sha256", "backend", "delegate", "delegate_error")},
        }
