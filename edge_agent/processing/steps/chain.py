"""The ordered steps of one pipeline, run on each frame, with what each skipped or failed counted.

Threads: ``run`` is called on the camera's reader thread (inside the pipeline's preparer, before the frame
is preprocessed) or on the pipeline's inference thread (sources without a thread of their own, frames read
before the preparer was set). A lock serialises the two, so a step sees one frame at a time and its state
needs no lock of its own; an uncontended lock costs ~0.1 µs, nothing next to a frame.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.errors import ConfigError
from edge_agent.processing.steps.base import FrameStep, StepConfigBase


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the steps made of one frame: ``data`` to go on with, or None (``step`` skipped it, or failed
    with ``error``: then the frame must not be used at all); ``fields`` the steps add to its result, and
    the ``region`` of the frame the model is to see (None: all of it)."""

    data: np.ndarray | None
    step: str | None = None
    error: str | None = None
    fields: Mapping[str, Any] | None = None
    region: tuple[float, float, float, float] | None = None

    @property
    def keep(self) -> bool:
        return self.data is not None


class StepChain:
    """Named steps in config order. The first one that skips or fails ends the frame's run."""

    def __init__(self, steps: Sequence[tuple[str, FrameStep]] = ()) -> None:
        self.steps = list(steps)
        self._lock = threading.Lock()
        self._skipped = {name: 0 for name, _ in self.steps}
        self._failed = {name: 0 for name, _ in self.steps}

    def __len__(self) -> int:
        return len(self.steps)

    def run(self, data: np.ndarray) -> Verdict:
        if not self.steps:
            return Verdict(data)
        with self._lock:
            for name, step in self.steps:
                try:
                    out = step.apply(data)
                except Exception as exc:  # fail closed: the caller drops the frame and reports the error
                    self._failed[name] += 1
                    return Verdict(None, name, f"{type(exc).__name__}: {exc}")
                if out is None:
                    self._skipped[name] += 1
                    return Verdict(None, name)
                data = out
            fields: dict[str, Any] = {}
            region = None
            for _, step in self.steps:
                fields.update(step.fields() or {})
                region = step.region() or region
        return Verdict(data, fields=fields or None, region=region)

    def skip_unseen(self) -> bool:
        """True when a step skips the next frame without seeing it (counted as that step's skip): the
        source then need not decode it."""
        if not self.steps:
            return False
        with self._lock:
            for name, step in self.steps:
                if step.skips_unseen():
                    self._skipped[name] += 1
                    return True
        return False

    def glance_width(self) -> int | None:
        """The width of the small grey copy a step decides the next frame from (see ``FrameStep.glance``),
        when every step before it lets a glance through; None: the frame must be decoded in full."""
        with self._lock:
            for _, step in self.steps:
                width = step.glance_width()
                if width is not None:
                    return width
                if not step.passes_glance:
                    return None
        return None

    def glance(self, small: np.ndarray) -> bool:
        """Run the steps on a small grey copy of the next frame up to the one that decides from it. False:
        that step skipped the frame (counted); True: decode it in full and ``run`` the chain on it. A step
        that raises here leaves the decision to the full frame, where failing closed drops it."""
        with self._lock:
            for name, step in self.steps:
                decides = step.glance_width() is not None
                if not (decides or step.passes_glance):
                    return True
                try:
                    out = step.glance(small)
                except Exception:  # the full frame's run reports it and drops the frame (fail closed)
                    return True
                if out is None:
                    self._skipped[name] += 1
                    return False
                if decides:
                    return True
                small = out
        return True

    def stats(self) -> dict[str, dict[str, int]]:
        """``{step name: {"skipped": n, "failed": n}}`` for the stats payload."""
        with self._lock:
            return {name: {"skipped": n, "failed": self._failed[name]} for name, n in self._skipped.items()}

    def reports(self) -> dict[str, dict[str, Any]]:
        """The steps' own stats entries by key (``{"motion": {...}}``), for the pipeline's stats."""
        found = (step.report() for _, step in self.steps)
        return dict(r for r in found if r is not None)

    def close(self) -> None:
        for _, step in self.steps:
            step.close()


def create_steps(configs: Sequence[StepConfigBase]) -> StepChain:
    """The chain for ``configs`` (a pipeline's ``steps``), each implementation imported from ``STEPS``."""
    from edge_agent.processing.steps import STEPS

    steps: list[tuple[str, FrameStep]] = []
    used: dict[str, int] = {}
    for cfg in configs:
        kind = cfg.type  # type: ignore[attr-defined]  # every registered config has one
        target = STEPS.get(kind)
        if target is None:
            raise ConfigError(f"steps: unknown type {kind!r}; choose one of {', '.join(sorted(STEPS))}")
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        base = cfg.name or kind
        used[base] = used.get(base, 0) + 1
        steps.append((base if used[base] == 1 else f"{base}#{used[base]}", cls(cfg)))
    return StepChain(steps)


def create_pipeline_steps(
    masks: Sequence[Any], steps: Sequence[StepConfigBase], motion: StepConfigBase | None
) -> StepChain:
    """A camera pipeline's chain: its privacy ``masks`` first (nothing sees an unmasked frame), then its
    ``steps``, then the ``motion`` gate (when enabled), which so sees the frames as masked and thinned."""
    from edge_agent.processing.masks import MasksStepConfig

    configs: list[StepConfigBase] = []
    if masks:
        configs.append(MasksStepConfig(polygons=[m.polygon for m in masks]))
    configs += steps
    if motion is not None and getattr(motion, "enabled", True):
        configs.append(motion)
    return create_steps(configs)
