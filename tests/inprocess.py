"""In-process seams: build a ``Pipeline``, ``ModelStages`` or ``Daemon`` in the test's own process, fast.

- ``FakeSource`` speaks the ``Source`` interface and yields the frames it is given. Like a camera it hands
  each frame to the consumer's preparer when it produces it (``prepare=True``), so the pipeline's
  steps-then-prepare path runs; with ``prepare=False`` frames come unprepared, as from a sensor source.
- ``RecordingPublisher`` speaks the pipeline's ``Publisher`` interface: it keeps every result, checked
  against the result schema, instead of sending it.
- ``stages_for`` loads one of the tiny real TFLite models of ``tests/fixtures/tflite_models.py`` (made by
  TensorFlow once per test session) into ``ModelStages``; nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import PublishConfig
from edge_agent.model_stages import ModelStages
from edge_agent.pipeline import Pipeline
from edge_agent.processing.steps import FrameStep, StepChain
from edge_agent.publish.outbox import SeqCounter
from edge_agent.sources.base import DataKind, Frame, Source
from tests.fixtures.broker import validate_payload

COLORS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}


def solid(color: str, size: int = 48) -> np.ndarray:
    """A BGR image of one colour; the colour classifier's answer is its name."""
    return np.full((size, size, 3), COLORS_BGR[color], dtype=np.uint8)


class FakeSource(Source):
    """Frames given up front or fed later (``feed``); finished once ``end()`` was called and all were read."""

    def __init__(self, frames: Iterable[np.ndarray] = (), *, kind: DataKind = "image", prepare: bool = True):
        self.data_kind = kind
        self._prepare_frames = prepare
        self._pending: deque[np.ndarray] = deque(frames)
        self._cond = threading.Condition()
        self._ended = False
        self._produced = 0
        self.closed = False

    def feed(self, *frames: np.ndarray) -> None:
        with self._cond:
            self._pending.extend(frames)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def start(self, stop: threading.Event) -> None:
        pass

    def read(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._pending and not self._cond.wait_for(lambda: self._pending or self._ended, timeout):
                return None
            if not self._pending:
                return None
            data = self._pending.popleft()
            index = self._produced
            self._produced += 1
        # produced now: prepared like a camera's reader thread does, before the consumer sees the frame
        preparer = self.preparer if self._prepare_frames else None
        prepared = preparer(data) if preparer is not None else None
        return Frame(data, self.data_kind, index, time.time(), time.monotonic(), prepared)

    def close(self) -> None:
        self.closed = True

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._ended and not self._pending

    @property
    def stats(self) -> dict:
        with self._cond:
            return {"frames": self._produced, "skipped": 0, "reconnects": 0, "connected": True,
                    "last_error": None, "samples": self._produced + len(self._pending)}  # fmt: skip


class RecordingPublisher:
    """Keeps every result it is handed (topic, payload as a dict, qos), each validated against the schema."""

    def __init__(self) -> None:
        self.results: list[tuple[str, dict[str, Any], int]] = []
        self._cond = threading.Condition()

    def publish_result(self, topic: str, payload: bytes, qos: int) -> None:
        obj = validate_payload(json.loads(payload), "result")
        with self._cond:
            self.results.append((topic, obj, qos))
            self._cond.notify_all()

    def payloads(self) -> list[dict[str, Any]]:
        with self._cond:
            return [p for _, p, _ in self.results]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.results) >= n, timeout):
                raise AssertionError(f"{len(self.results)} results within {timeout} s, wanted {n}")
        return self.payloads()


class CallStep(FrameStep):
    """A step that calls ``fn(data)`` (a test's own mask, gate or failure)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray | None]) -> None:
        self.fn = fn
        self.calls = 0

    def apply(self, data: np.ndarray) -> np.ndarray | None:
        self.calls += 1
        return self.fn(data)


def stages_for(model_path: Path, kind: DataKind = "image") -> ModelStages:
    """A tiny real model (manifest beside it) loaded through the device runtime, fitted to ``kind``."""
    from edge_agent.runtime import load_model
    from edge_agent.runtime.config import ModelConfig

    model = load_model(ModelConfig(path=model_path))
    try:
        return ModelStages(model, kind)
    except Exception:
        model.close()
        raise


def make_pipeline(
    tmp_path: Path,
    source: Source,
    stages: ModelStages,
    *,
    publisher: RecordingPublisher | None = None,
    steps: StepChain | None = None,
    **kwargs: Any,
) -> Pipeline:
    """A pipeline named ``p`` with a real seq counter (SQLite under ``tmp_path``)."""
    return Pipeline(
        name="p",
        device_id="dev",
        topic="edge/dev/p/result",
        source=source,
        stages=stages,
        publisher=publisher or RecordingPublisher(),
        seq=SeqCounter(tmp_path / "seq.sqlite3", "p"),
        publish=PublishConfig(qos=1),
        steps=steps,
        **kwargs,
    )


class Running:
    """``pipe.run(stop)`` on a thread of its own; ``finish()`` ends the source, waits and returns."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.stop = threading.Event()
        self.thread = threading.Thread(target=pipe.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def finish(self, timeout: float = 10.0) -> None:
        source = self.pipe.source
        if isinstance(source, FakeSource):
            source.end()
        else:
            self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipeline did not end"
