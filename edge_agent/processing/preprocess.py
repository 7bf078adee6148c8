"""Camera frames and sensor windows -> model input, quantized with the input's own scale and zero point.

Image path, per frame: crop a region of interest (a view), resize it (cv2), fix the channel order on
the small image, pad for letterbox, then ONE lookup-table pass that normalizes and quantizes every
pixel straight into the interpreter's input buffer. The table holds, per channel, the quantized value
of each of the 256 possible pixel values, so ``(p*scale - mean)/std`` and rounding never run per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.errors import DataError, ModelError
from edge_agent.extras import OPENCV
from edge_agent.manifest import InputSpec, Preprocess
from edge_agent.processing.quantization import dequantize, quantize

__all__ = [
    "FrameTransform",
    "ImagePreprocessor",
    "TensorPreprocessor",
    "dequantize",
    "quantize",
]

LETTERBOX_PAD = 114  # grey border, the value YOLO models are trained with
_cv2: Any = None


def _import_cv2() -> Any:
    global _cv2
    if _cv2 is None:
        _cv2 = OPENCV.load()
    return _cv2


@dataclass(frozen=True)
class FrameTransform:
    """Where the model input sits in the original frame: ``model_px = frame_px * scale + offset`` per axis."""

    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def box_to_frame(self, box: np.ndarray) -> np.ndarray:
        """Normalized [xmin, ymin, xmax, ymax] in the model input -> normalized in the frame, clipped to 0..1.
        Accepts one box (4,) or many (N, 4)."""
        b = np.asarray(box, dtype=np.float64)
        x = (b[..., 0::2] * self.input_width - self.offset_x) / self.scale_x / self.frame_width
        y = (b[..., 1::2] * self.input_height - self.offset_y) / self.scale_y / self.frame_height
        out = np.empty_like(b)
        out[..., 0::2], out[..., 1::2] = x, y
        return np.clip(out, 0.0, 1.0)

    def box_to_input(self, box: np.ndarray) -> np.ndarray:
        """The inverse: normalized box in the frame -> normalized in the model input (not clipped)."""
        b = np.asarray(box, dtype=np.float64)
        out = np.empty_like(b)
        out[..., 0::2] = (b[..., 0::2] * self.frame_width * self.scale_x + self.offset_x) / self.input_width
        out[..., 1::2] = (b[..., 1::2] * self.frame_height * self.scale_y + self.offset_y) / self.input_height
        return out


def _per_channel(values: list[float], channels: int, field: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float64)
    if len(values) != channels:
        raise ModelError(
            f"preprocess.{field}: {len(values)} values for a {channels}-channel input (give 1 or {channels})"
        )
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class _Geometry:
    """How one frame size maps to the input: source region, resized size, padding."""

    roi: tuple[int, int, int, int]  # x0, y0, width, height in the frame
    size: tuple[int, int]  # width, height after resize
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    area_factor: int  # integer pre-shrink done with INTER_AREA's fast path (1 = none)
    transform: FrameTransform


class ImagePreprocessor:
    """BGR (or gray) uint8 frames -> the input tensor of an image model."""

    def __init__(self, input: InputSpec, pre: Preprocess) -> None:
        self.input = input
        self.pre = pre
        shape = input.shape
        if len(shape) != 4:
            raise ModelError(f"input '{input.name}' has shape {shape}; an image model needs 4 dimensions")
        self.nchw = input.layout == "NCHW"
        _, self.channels, self.height, self.width = (
            (shape[0], shape[1], shape[2], shape[3])
            if self.nchw
            else (shape[0], shape[3], shape[1], shape[2])
        )
        if self.channels not in (1, 3):
            raise ModelError(f"input '{input.name}' has {self.channels} channels; images need 1 or 3")
        if pre.color == "gray" and self.channels != 1:
            raise ModelError(
                f"preprocess.color is gray but input '{input.name}' has {self.channels} channels"
            )
        self.color = "gray" if self.channels == 1 else pre.color
        self.dtype = np.dtype(input.dtype)
        self.lut = self._table(self.dtype, quantized=True)  # (256, C)
        self._float_lut = self._table(np.dtype(np.float32), quantized=False)
        self._cv_tables = {id(t): self._cv_table(t) for t in (self.lut, self._float_lut)}
        self._geometry: dict[tuple[int, int], _Geometry] = {}
        self._scratch: np.ndarray | None = None
        self.output = np.empty(shape, dtype=self.dtype)  # used when no buffer is passed

    def _table(self, dtype: np.dtype, quantized: bool) -> np.ndarray:
        pixels = np.arange(256, dtype=np.float64)[:, None]
        mean = _per_channel(self.pre.mean, self.channels, "mean")
        std = _per_channel(self.pre.std, self.channels, "std")
        values = (pixels * self.pre.scale - mean) / std  # (256, C); channel order = model's
        if not quantized:
            return values.astype(np.float32)
        return quantize(values, self.input.quantization, dtype)

    # -- geometry ---------------------------------------------------------------------------------
    def _geometry_for(self, fw: int, fh: int) -> _Geometry:
        geo = self._geometry.get((fw, fh))
        if geo is None:
            geo = self._geometry[(fw, fh)] = self._plan(fw, fh)
        return geo

    def _plan(self, fw: int, fh: int) -> _Geometry:
        W, H = self.width, self.height
        x0, y0, rw, rh = 0, 0, fw, fh
        top = bottom = left = right = 0
        if self.pre.resize == "crop":  # the largest centred region with the input's aspect ratio
            if fw * H > fh * W:
                rw = max(1, round(fh * W / H))
                x0 = (fw - rw) // 2
            else:
                rh = max(1, round(fw * H / W))
                y0 = (fh - rh) // 2
        # Shrinking by an integer factor first with INTER_AREA (averaging, no aliasing) hits OpenCV's
        # fast path; the remaining step is INTER_LINEAR when < 2x. A plain INTER_AREA from 640x480 to
        # 224x224 costs 0.8 ms here, the two steps 0.2 ms. Only exact divisors: no pixel is dropped.
        largest = max(1, min(rw // W, rh // H))
        factor = next((f for f in range(largest, 1, -1) if rw % f == 0 and rh % f == 0), 1)
        if self.pre.resize == "letterbox":
            s = min(W / rw, H / rh)
            nw, nh = min(W, max(1, round(rw * s))), min(H, max(1, round(rh * s)))
            left, top = (W - nw) // 2, (H - nh) // 2
            right, bottom = W - nw - left, H - nh - top
            sx, sy = nw / rw, nh / rh
        else:
            nw, nh = W, H
            sx, sy = W / rw, H / rh
        transform = FrameTransform(
            frame_width=fw,
            frame_height=fh,
            input_width=W,
            input_height=H,
            scale_x=sx,
            scale_y=sy,
            offset_x=left - x0 * sx,
            offset_y=top - y0 * sy,
        )
        return _Geometry((x0, y0, rw, rh), (nw, nh), (top, bottom, left, right), factor, transform)

    # -- pixels -----------------------------------------------------------------------------------
    def _canvas(self, frame: np.ndarray) -> tuple[np.ndarray, FrameTransform]:
        """Resized, colour-converted, padded uint8 image (H, W) or (H, W, 3) in the model's channel order."""
        cv2 = _import_cv2()
        if frame.dtype != np.uint8:
            raise DataError(
                f"frame dtype {frame.dtype}; frames must be uint8 BGR or gray as OpenCV gives them"
            )
        if frame.ndim == 3 and frame.shape[2] == 4:
            frame = frame[..., :3]
        elif frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[..., 0]
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3) or frame.size == 0:
            raise DataError(f"frame shape {frame.shape}; expected (H, W, 3) BGR or (H, W) gray")
        fh, fw = frame.shape[:2]
        geo = self._geometry_for(fw, fh)
        x0, y0, rw, rh = geo.roi
        img = frame[y0 : y0 + rh, x0 : x0 + rw]
        if geo.area_factor > 1:
            img = cv2.resize(
                img, (rw // geo.area_factor, rh // geo.area_factor), interpolation=cv2.INTER_AREA
            )
        nw, nh = geo.size
        if img.shape[1] != nw or img.shape[0] != nh:
            big_shrink = img.shape[1] >= 2 * nw or img.shape[0] >= 2 * nh  # no integer pre-shrink fitted
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if big_shrink else cv2.INTER_LINEAR)
        if self.color == "gray":
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)  # same for BGR: all channels equal
        elif self.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        top, bottom, left, right = geo.pad
        if top or bottom or left or right:
            value = (LETTERBOX_PAD,) * (1 if img.ndim == 2 else 3)
            img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
        return np.ascontiguousarray(img), geo.transform

    def _cv_table(self, lut: np.ndarray) -> np.ndarray:
        """The table in cv2.LUT's layout. When every channel maps alike (one mean/std, the usual case) a
        single-channel table serves all three: OpenCV applies it 40% faster (0.036 vs 0.061 ms at 224x224)."""
        if self.channels == 1 or bool((lut == lut[:, :1]).all()):
            return np.ascontiguousarray(lut[:, 0].reshape(1, 256))
        return np.ascontiguousarray(lut.reshape(1, 256, self.channels))

    def _apply_table(self, canvas: np.ndarray, lut: np.ndarray, dst: np.ndarray) -> None:
        """dst (H, W, C) <- lut[canvas] per channel, in one pass."""
        cv2 = _import_cv2()
        if lut.dtype != np.float16 and dst.flags.c_contiguous:
            table = self._cv_tables.get(id(lut))
            if table is None:
                table = self._cv_table(lut)
            target = dst if self.channels > 1 else dst[..., 0]
            res = cv2.LUT(canvas, table, dst=target)
            if not np.shares_memory(res, target):
                target[...] = res
            return
        if self.channels == 1:
            np.take(lut[:, 0], canvas, out=dst[..., 0], mode="clip")
        else:
            for c in range(self.channels):
                np.take(lut[:, c], canvas[..., c], out=dst[..., c], mode="clip")

    def __call__(self, frame_bgr: np.ndarray, out: np.ndarray | None = None) -> FrameTransform:
        """Write the model input for ``frame_bgr`` into ``out`` (e.g. LoadedModel.input_buffer(),
        shape/dtype of the input) or into ``self.output``; returns the frame transform."""
        if out is None:
            out = self.output
        if tuple(out.shape) != tuple(self.input.shape) or out.dtype != self.dtype:
            raise DataError(
                f"output buffer {out.shape} {out.dtype}; the input needs {self.input.shape} {self.dtype}"
            )
        canvas, transform = self._canvas(frame_bgr)
        if self.nchw:
            if self._scratch is None:
                self._scratch = np.empty((self.height, self.width, self.channels), dtype=self.dtype)
            self._apply_table(canvas, self.lut, self._scratch)
            out[0] = self._scratch.transpose(2, 0, 1)
        else:
            self._apply_table(canvas, self.lut, out[0])
        return transform

    def to_float(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, FrameTransform]:
        """The normalized float32 image (H, W, C), before quantization; no batch axis."""
        canvas, transform = self._canvas(frame_bgr)
        dst = np.empty((self.height, self.width, self.channels), dtype=np.float32)
        self._apply_table(canvas, self._float_lut, dst)
        return dst, transform


class TensorPreprocessor:
    """Float sensor windows -> a (quantized) input tensor of the same number of elements."""

    def __init__(self, input: InputSpec) -> None:
        self.input = input
        self.shape = tuple(input.shape)
        self.dtype = np.dtype(input.dtype)
        self.size = math.prod(self.shape)
        self.output = np.empty(self.shape, dtype=self.dtype)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> None:
        x = np.asarray(x)
        if x.size != self.size:
            raise DataError(
                f"window of shape {x.shape} ({x.size} values) does not fit input '{self.input.name}' "
                f"of shape {list(self.shape)} ({self.size} values); set the window size and channels to match"
            )
        inner = self.shape[1:]
        if x.ndim == len(inner) and tuple(x.shape) != inner and sorted(x.shape) == sorted(inner):
            raise DataError(
                f"window of shape {x.shape} for input '{self.input.name}' of shape {list(self.shape)}: "
                "the axes are swapped (samples x channels?); transpose the window or fix the window settings"
            )
        if out is None:
            out = self.output
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"window for input '{self.input.name}' contains NaN or infinity")
        out[...] = quantize(x.reshape(self.shape), self.input.quantization, self.dtype)
