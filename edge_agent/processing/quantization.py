"""Affine (de)quantization with a tensor's own scale and zero point: real = scale * (q - zero_point)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.manifest import Quantization


def quantize(x: np.ndarray, q: Quantization | None, dtype: Any) -> np.ndarray:
    """Real values -> ``dtype``: round to the nearest step, saturate at the dtype's range.
    Float dtypes (and a tensor without quantization) are a plain cast."""
    dtype = np.dtype(dtype)
    x = np.asarray(x)
    if dtype.kind == "f" or q is None:
        return x.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    scaled = np.asarray(x, dtype=np.float64) / q.scale + q.zero_point
    return np.clip(np.rint(scaled), info.min, info.max).astype(dtype)


def dequantize(q_arr: np.ndarray, q: Quantization | None) -> np.ndarray:
    """Quantized values -> float32 reals. Non-quantized arrays are returned as float32."""
    q_arr = np.asarray(q_arr)
    if q is None or q_arr.dtype.kind == "f":
        return q_arr.astype(np.float32, copy=False)
    # Widen to int64 before subtracting the zero point: in the tensor's own dtype the difference
    # wraps around (uint8 3 - 128 gives 131, int8 -128 - 127 overflows) and int32 inputs minus a
    # zero point can leave int32's range; int64 holds every difference of int8/uint8/int16/int32.
    centred = q_arr.astype(np.int64) - q.zero_point
    return (centred * q.scale).astype(np.float32)
