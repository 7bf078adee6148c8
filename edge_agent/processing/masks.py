"""Privacy masks: polygons blacked out of every frame before anything else sees it (the motion detector,
the model, an evidence JPEG).

``MasksStep`` is the first step of a camera pipeline's chain, so a frame goes on only as a masked copy; if
masking raises, the chain drops the frame (fail closed: it is neither inferred nor stored). The evidence
store applies the same ``FrameMask`` once more as it takes a frame (into the copy its writer thread encodes),
so a stored frame is masked even if a future code path handed it an unmasked one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.processing.polygons import Point, Polygon
from edge_agent.processing.steps.base import DataKind, FrameStep, StepConfigBase


class MaskConfig(BaseModel):
    """One privacy mask: a polygon that is blacked out."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=64, description="For your own reference (logs).")
    polygon: Polygon


class MasksStepConfig(StepConfigBase):
    """The masks of a pipeline as a step (made from ``masks:``, always first in the chain)."""

    data_kinds: ClassVar[frozenset[DataKind]] = frozenset({"image"})
    type: Literal["masks"] = "masks"
    polygons: list[Polygon] = Field(min_length=1)


class FrameMask:
    """Blacks out ``polygons`` in frames of any size. The pixel mask is rasterised once per frame size
    (cv2.fillPoly, ~50 µs at 640x480) and reused; applying it is one copy and one boolean write."""

    def __init__(self, polygons: Sequence[Sequence[Point]]) -> None:
        if not polygons:
            raise ValueError("a FrameMask needs at least one polygon")
        self.polygons = [list(p) for p in polygons]
        self._by_size: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()  # the camera thread and the evidence writer may both ask

    def pixels(self, height: int, width: int) -> np.ndarray:
        """Boolean [height, width]: True where the frame is blacked out."""
        key = (height, width)
        with self._lock:
            got = self._by_size.get(key)
        if got is not None:
            return got
        import cv2

        canvas = np.zeros((height, width), dtype=np.uint8)
        scale = np.array([width, height], dtype=np.float64)
        pts = [np.round(np.asarray(p, dtype=np.float64) * scale).astype(np.int32) for p in self.polygons]
        cv2.fillPoly(canvas, pts, 255)
        got = canvas.astype(bool)
        got.flags.writeable = False
        with self._lock:
            self._by_size[key] = got
        return got

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A masked copy of ``image`` (HxW or HxWxC); raises ValueError for anything that is not an image,
        so the caller drops the frame rather than keep it unmasked."""
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"cannot mask data of shape {getattr(image, 'shape', None)}: not an image")
        out = image.copy()
        out[self.pixels(image.shape[0], image.shape[1])] = 0
        return out


class MasksStep(FrameStep):
    """Keeps every frame, as a masked copy (a glance's small grey copy too: polygons fit any size)."""

    passes_glance = True

    def __init__(self, cfg: MasksStepConfig) -> None:
        super().__init__(cfg)
        self.mask = FrameMask(cfg.polygons)

    def apply(self, data: np.ndarray) -> np.ndarray:
        return self.mask.apply(data)
