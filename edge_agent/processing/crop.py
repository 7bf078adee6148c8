"""Cropping a frame to a region before the model (``motion: {crop_to_motion: true}``) and mapping the
detections found in the crop back to the full frame. Regions are normalized (xmin, ymin, xmax, ymax)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

Region = tuple[float, float, float, float]


def crop(image: np.ndarray, region: Region) -> tuple[np.ndarray, Region]:
    """(the view of ``image`` inside ``region``, the region it really covers after rounding to pixels)."""
    h, w = image.shape[:2]
    x0, y0 = max(0, math.floor(region[0] * w)), max(0, math.floor(region[1] * h))
    x1, y1 = min(w, math.ceil(region[2] * w)), min(h, math.ceil(region[3] * h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, (0.0, 0.0, 1.0, 1.0)
    return image[y0:y1, x0:x1], (x0 / w, y0 / h, x1 / w, y1 / h)


def result_to_frame(result: Any, region: Region) -> Any:
    """``result`` with each detection's box, normalized to the crop, normalized to the full frame instead;
    results without detections are returned as they are."""
    detections = getattr(result, "detections", None)
    if not detections:
        return result
    x0, y0, x1, y1 = region
    sx, sy = x1 - x0, y1 - y0
    moved = tuple(
        replace(d, box=tuple(round(v, 6) for v in (x0 + d.box[0] * sx, y0 + d.box[1] * sy,
                                                    x0 + d.box[2] * sx, y0 + d.box[3] * sy)))
        for d in detections
    )  # fmt: skip
    return replace(result, detections=moved)
