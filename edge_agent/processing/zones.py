"""Zones: named polygons of a camera pipeline's frame. Each detection lists the zones its anchor point (the
bottom centre of its box by default: where a person or a car stands) lies in, the result counts detections
per zone and label, and ``filter: true`` drops detections that are in no zone.

Runs on the postprocessor's result (boxes are normalized to the full frame, as the zones are); results of
other tasks, which have no boxes, pass unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.processing.polygons import Polygon, contains

Anchor = Literal["bottom_center", "center", "top_center"]
_ANCHOR_Y = {"bottom_center": 3, "center": None, "top_center": 1}  # index into [xmin, ymin, xmax, ymax]


class ZonesConfig(BaseModel):
    """Named zones of the frame, for detection models."""

    model_config = ConfigDict(extra="forbid")

    polygons: dict[str, Polygon] = Field(
        min_length=1, description="Zone name -> polygon [[x, y], ...] (fractions of the frame, 0..1)."
    )
    anchor: Anchor = Field(
        default="bottom_center",
        description="The point of a detection's box that must lie in a zone: bottom_center (where it "
        "stands), center or top_center.",
    )
    filter: bool = Field(default=False, description="Drop detections whose anchor is in no zone.")

    @field_validator("polygons")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not name or len(name) > 64:
                raise ValueError(f"zone name {name!r}: use 1-64 characters")
        return v


class ZoneAssigner:
    """Adds ``zones`` to each detection and ``zone_counts`` to the result (a new result; inputs are
    immutable)."""

    def __init__(self, cfg: ZonesConfig) -> None:
        self.cfg = cfg
        self.zones = list(cfg.polygons.items())

    def anchors(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(xs, ys) of the configured anchor of each [xmin, ymin, xmax, ymax] row."""
        xs = (boxes[:, 0] + boxes[:, 2]) / 2.0
        y_col = _ANCHOR_Y[self.cfg.anchor]
        ys = (boxes[:, 1] + boxes[:, 3]) / 2.0 if y_col is None else boxes[:, y_col]
        return xs, ys

    def apply(self, result: Any) -> Any:
        detections = getattr(result, "detections", None)
        if detections is None:
            return result
        counts: dict[str, dict[str, int]] = {name: {} for name, _ in self.zones}
        if not detections:
            return replace(result, zone_counts=counts)
        boxes = np.array([d.box for d in detections], dtype=np.float64)
        xs, ys = self.anchors(boxes)
        inside = {name: contains(poly, xs, ys) for name, poly in self.zones}
        kept = []
        for i, det in enumerate(detections):
            names = tuple(name for name, _ in self.zones if inside[name][i])
            if self.cfg.filter and not names:
                continue
            for name in names:
                counts[name][det.label] = counts[name].get(det.label, 0) + 1
            kept.append(replace(det, zones=names))
        return replace(result, detections=tuple(kept), zone_counts=counts)
