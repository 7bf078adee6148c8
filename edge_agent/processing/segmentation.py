"""Segmentation: a mask -> the fraction of pixels per class. The mask itself never leaves the device.

Three mask shapes:
- ``[1, H, W, C]`` with C > 1: per-class scores, the class of a pixel is the argmax;
- ``[1, H, W]`` / ``[1, H, W, 1]`` integer class ids (an argmax already in the model);
- ``[1, H, W, 1]`` / ``[1, H, W]`` float or quantized **probability** of one foreground class (a sigmoid
  head, as person-segmentation models have): a pixel is foreground when its probability reaches
  ``mask_threshold``. Its labels: one label names the foreground (``labels: [person]``; the rest is
  reported as ``background``), or two name background then foreground (``[background, person]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from edge_agent.errors import ModelError
from edge_agent.processing.postprocess import BasePostprocessor, PostContext, PostprocessOptions


class SegmentationOptions(PostprocessOptions):
    background: str | int | None = Field(
        default=None, description="Label (or class id) never chosen as the primary label, e.g. 'background'."
    )
    min_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Omit classes covering less than this."
    )
    mask_threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="One-channel probability masks: a pixel is foreground at this probability or more.",
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
        self.probability = not self.scores_axis and (
            spec.dtype in ("float32", "float16") or spec.quantization is not None
        )
        if self.probability:
            self._binary_labels()
        self.num_classes = (
            spec.shape[-1]
            if self.scores_axis
            else 2
            if self.probability
            else (len(self.labels) if self.labels else None)
        )
        bg = self.options.background
        self.background_id = (
            bg
            if isinstance(bg, int)
            else (self.labels.index(bg) if self.labels and bg in self.labels else None)
        )

    def _binary_labels(self) -> None:
        """Class 0 is the background, 1 the foreground; one label names the foreground."""
        labels = self.labels or []
        if len(labels) > 2:
            raise ModelError(
                f"model '{self.manifest.name}': a one-channel mask has two classes, but {len(labels)} "
                "labels are given; give one (the foreground, e.g. [person]) or two ([background, person])"
            )
        if len(labels) == 1:
            self.labels = ["background", labels[0]]
        if self.options.background is None and self.labels:
            self.options = self.options.model_copy(update={"background": 0})

    def __call__(
        self, outputs: Mapping[str, np.ndarray], ctx: PostContext | None = None
    ) -> SegmentationResult:
        raw = outputs["mask"]
        if self.scores_axis:
            # argmax is the same on quantized values (monotonic scale), so no need to dequantize
            ids = np.argmax(raw.reshape(-1, raw.shape[-1]), axis=1)
        elif self.probability:
            ids = (self.real(outputs, "mask").reshape(-1) >= self.options.mask_threshold).astype(np.int64)
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
