"""Non-maximum suppression in numpy (no OpenCV/TensorFlow needed on a sensor-only device)."""

from __future__ import annotations

import numpy as np


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [xmin, ymin, xmax, ymax] box with each of ``boxes`` (N, 4)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int | None = None
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (max_out is None or len(keep) < max_out):
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    max_out: int | None = None,
    class_agnostic: bool = False,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Each class is shifted to its own region of the plane (offset larger than any box extent), so one
    greedy pass over all boxes does the work of one pass per class.
    """
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if class_agnostic:
        return nms(boxes, scores, iou_threshold, max_out)
    extent = float(np.max(boxes) - np.min(boxes)) + 1.0
    shifted = boxes + (class_ids.astype(np.float64) * extent)[:, None]
    return nms(shifted, scores, iou_threshold, max_out)
