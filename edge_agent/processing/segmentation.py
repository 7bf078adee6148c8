"""Segmentation: a mask -> the fraction of pixels per class. The mask itself never leaves the device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from edge_agent.processing.postprocess import BasePostprocessor, PostContext, PostprocessOptions


class SegmentationOptions(PostprocessOptions):
    background: str | int | None = Field(
        default=None, description="Label (or class id) never chosen as the primary label, e.g. 'background'."
    )
    min_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Omit classes covering less than this."
    )


@dataclass(frozen=True)
class SegmentationResult:
    class_fractions: Mapping[str, float]
    label: str | None
    score: float | None

    def to_fields(self) -> dict[str, Any]:
        return {"class_fractions": dict(self.class_fractions)}


class SegmentationPostprocessor(BasePostprocessor):
    Options = SegmentationOptions
    name = "segmentation"

    def __init__(self, manifest: Any, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(manifest, options)
        spec = self.spec("mask")
        # [1, H, W, C] class scores, or [1, H, W] / [1, H, W, 1] class ids (integer tensors)
        self.scores_axis = len(spec.shape) == 4 and spec.shape[-1] > 1
        self.num_classes = spec.shape[-1] if self.scores_axis else (len(self.labels) if self.labels else None)
        bg = self.options.background
        self.background_id = (
            bg
            if isinstance(bg, int)
            else (self.labels.index(bg) if self.labels and bg in self.labels else None)
        )

    def __call__(
        self, outputs: Mapping[str, np.ndarray], ctx: PostContext | None = None
    ) -> SegmentationResult:
        raw = outputs["mask"]
        if self.scores_axis:
            # argmax is the same on quantized values (monotonic scale), so no need to dequantize
            ids = np.argmax(raw.reshape(-1, raw.shape[-1]), axis=1)
        else:
            ids = np.rint(self.real(outputs, "mask").reshape(-1)).astype(np.int64)
        counts = np.bincount(ids, minlength=self.num_classes or 0)
        fractions = counts / max(1, ids.size)
        out = {
            self.label_for(i): round(float(f), 6)
            for i, f in enumerate(fractions)
            if f > 0 and f >= self.options.min_fraction
        }
        candidates = [(f, i) for i, f in enumerate(fractions) if i != self.background_id and f > 0]
        if candidates:
            f, i = max(candidates)
            return SegmentationResult(out, self.label_for(i), float(f))
        return SegmentationResult(out, None, None)
