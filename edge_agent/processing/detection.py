"""Detection: SSD (TFLite_Detection_PostProcess) and YOLO heads -> boxes in the original frame.

Boxes come out as normalized [xmin, ymin, xmax, ymax] in the ORIGINAL frame: the frame transform of
the preprocessor undoes the resize, crop or letterbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edge_agent.errors import ModelError
from edge_agent.processing.nms import batched_nms
from edge_agent.processing.postprocess import BasePostprocessor, PostContext, PostprocessOptions


class DetectionOptions(PostprocessOptions):
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Minimum score of a reported detection."
    )
    max_detections: int = Field(default=100, ge=1, description="At most this many detections, best first.")
    nms_iou: float = Field(default=0.45, gt=0.0, le=1.0, description="YOLO: IoU above which NMS drops a box.")
    class_agnostic: bool = Field(default=False, description="YOLO: NMS across classes instead of per class.")
    box_units: Literal["auto", "pixels", "normalized"] = Field(
        default="auto", description="YOLO boxes: input pixels or 0..1; auto decides from their magnitude."
    )
    objectness: bool = Field(
        default=False,
        description="YOLO: rows are [cx,cy,w,h,obj,classes...] (v5) instead of [cx,cy,w,h,classes...].",
    )
    label_offset: int = Field(default=0, description="SSD: added to class ids before looking up labels.")
    classes: list[str] | None = Field(default=None, description="Report only these labels.")


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # normalized xmin, ymin, xmax, ymax in the frame
    zones: tuple[str, ...] | None = None  # the zones its anchor lies in (None: the pipeline has no zones)

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "class_id": self.class_id, "score": self.score, "box": list(self.box)}
        if self.zones is not None:
            out["zones"] = list(self.zones)
        return out


@dataclass(frozen=True)
class DetectionResult:
    detections: tuple[Detection, ...]
    zone_counts: dict[str, dict[str, int]] | None = None  # zone -> label -> detections (zones configured)

    @property
    def label(self) -> str | None:
        return self.detections[0].label if self.detections else None

    @property
    def score(self) -> float | None:
        return self.detections[0].score if self.detections else None

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"detections": [d.to_dict() for d in self.detections]}
        if self.zone_counts is not None:
            fields["zone_counts"] = self.zone_counts
        return fields


class DetectionPostprocessor(BasePostprocessor):
    Options = DetectionOptions
    name = "detection"

    def __init__(self, manifest: Any, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(manifest, options)
        self.layout = "yolo" if manifest.output("yolo") is not None else "ssd"
        if self.layout == "ssd":
            for role in ("boxes", "classes", "scores"):
                self.spec(role)
        inp = manifest.inputs[0]
        h_axis, w_axis = (2, 3) if inp.layout == "NCHW" else (1, 2)
        self.input_h, self.input_w = inp.shape[h_axis], inp.shape[w_axis]

    def __call__(self, outputs: Mapping[str, np.ndarray], ctx: PostContext | None = None) -> DetectionResult:
        if self.layout == "yolo":
            boxes, scores, class_ids = self._yolo(outputs)
        else:
            boxes, scores, class_ids = self._ssd(outputs)
        transform = ctx.transform if ctx is not None else None
        if transform is not None and len(boxes):
            boxes = transform.box_to_frame(boxes)
        else:
            boxes = np.clip(boxes, 0.0, 1.0)
        wanted = set(self.options.classes) if self.options.classes else None
        found = []
        for box, score, cid in zip(boxes, scores, class_ids, strict=True):
            label = self.label_for(int(cid))
            if wanted is not None and label not in wanted:
                continue
            found.append(Detection(label, int(cid), float(score), tuple(round(float(v), 6) for v in box)))
            if len(found) == self.options.max_detections:
                break
        return DetectionResult(tuple(found))

    def _ssd(self, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = self.real(outputs, "boxes").reshape(-1, 4)
        classes = self.real(outputs, "classes").reshape(-1)
        scores = self.real(outputs, "scores").reshape(-1)
        n = min(len(boxes), len(classes), len(scores))
        if "count" in outputs and self.manifest.output("count") is not None:
            n = min(n, round(float(self.real(outputs, "count").reshape(-1)[0])))
        boxes, classes, scores = boxes[:n], classes[:n], scores[:n]
        keep = scores >= self.options.threshold
        order = np.argsort(-scores[keep], kind="stable")
        ymin, xmin, ymax, xmax = boxes[keep][order].T  # SSD order is y first
        ids = np.rint(classes[keep][order]).astype(np.int64) + self.options.label_offset
        return np.stack([xmin, ymin, xmax, ymax], axis=1), scores[keep][order], ids

    def _yolo(self, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw = self.real(outputs, "yolo")
        if raw.ndim == 3:
            raw = raw[0]
        if raw.ndim != 2:
            raise ModelError(
                f"model '{self.manifest.name}': YOLO output of shape {raw.shape}; expected [1, N, 4+C]"
            )
        extra = 5 if self.options.objectness else 4
        rows = self._rows(raw, extra)
        class_scores = rows[:, 5:] * rows[:, 4:5] if self.options.objectness else rows[:, 4:]
        class_ids = np.argmax(class_scores, axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids]
        keep = scores >= self.options.threshold
        rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
        if not len(rows):
            return np.zeros((0, 4)), scores, class_ids
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float64)
        units = self.options.box_units
        if units == "pixels" or (units == "auto" and float(np.max(np.abs(rows[:, :4]))) > 2.0):
            boxes /= np.array([self.input_w, self.input_h, self.input_w, self.input_h], dtype=np.float64)
        keep_idx = batched_nms(
            boxes,
            scores,
            class_ids,
            self.options.nms_iou,
            self.options.max_detections,
            self.options.class_agnostic,
        )
        return boxes[keep_idx], scores[keep_idx], class_ids[keep_idx]

    def _rows(self, raw: np.ndarray, extra: int) -> np.ndarray:
        """[N, extra+C] whichever way the head is laid out ([N, 4+C] or [4+C, N])."""
        if self.labels:
            width = extra + len(self.labels)
            if raw.shape[1] == width:
                return raw
            if raw.shape[0] == width:
                return raw.T
            raise ModelError(
                f"model '{self.manifest.name}': YOLO output {list(raw.shape)} has no axis of {width} "
                f"({extra} box values + {len(self.labels)} labels); check the labels or 'objectness'"
            )
        # Without labels: the box+class axis is the short one (e.g. 84 against 8400 anchors).
        return raw if raw.shape[1] <= raw.shape[0] else raw.T
