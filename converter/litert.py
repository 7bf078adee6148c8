"""A converted model on ai-edge-litert, the runtime the device uses: tensors, ops, float-in/float-out runs.

The converter checks its output on the device's runtime rather than on TensorFlow's own interpreter,
so "it converts" also means "the device can run it".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.quiet import captured_fds
from edge_agent.errors import ModelError, missing_extra

DTYPE_NAMES = {
    np.float32: "float32",
    np.float16: "float16",
    np.int8: "int8",
    np.uint8: "uint8",
    np.int16: "int16",
    np.int32: "int32",
    np.int64: "int64",
    np.bool_: "bool",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float | None  # None: not quantized
    zero_point: int | None

    def quantization(self) -> dict[str, float | int] | None:
        if self.scale is None:
            return None
        return {"scale": self.scale, "zero_point": self.zero_point}

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float -> this tensor's dtype (round, saturate), so inputs match the integer range exactly."""
        dtype = np.dtype(self.dtype)
        if self.scale is None:
            return np.asarray(x, dtype=dtype)
        info = np.iinfo(dtype)
        q = np.rint(np.asarray(x, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        # widen before subtracting the zero point: int8 - (-128) overflows int8
        if self.scale is None:
            return np.asarray(q, dtype=np.float32)
        return ((np.asarray(q, dtype=np.int64) - self.zero_point) * self.scale).astype(np.float32)


def _tensor(detail: dict[str, Any]) -> Tensor:
    scale, zero_point = detail["quantization"]
    dtype = DTYPE_NAMES.get(detail["dtype"], np.dtype(detail["dtype"]).name)
    quantized = scale != 0 and dtype in ("int8", "uint8", "int16")
    return Tensor(
        name=detail["name"],
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=dtype,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


class LiteModel:
    """One .tflite on ai-edge-litert, fed and read in float (quantization handled here)."""

    def __init__(self, model: bytes | Path, num_threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise missing_extra("ai-edge-litert", "convert", exc) from None
        where = str(model) if isinstance(model, Path) else "the converted model"
        try:
            with captured_fds():  # "INFO: Created TensorFlow Lite XNNPACK delegate" goes to fd 2
                if isinstance(model, Path):
                    self.interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
                else:
                    self.interpreter = Interpreter(model_content=model, num_threads=num_threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"{where}: ai-edge-litert cannot load it ({str(exc).strip()[:200]})") from None
        self.inputs = [_tensor(d) for d in self.interpreter.get_input_details()]
        self.outputs = [_tensor(d) for d in self.interpreter.get_output_details()]

    def ops(self) -> dict[str, int]:
        """Operator name -> count, in first-seen order."""
        counts: dict[str, int] = {}
        for op in self.interpreter._get_ops_details():  # the only op listing the interpreter offers
            if op["op_name"] != "DELEGATE":  # XNNPACK nodes added at allocation, not the model's own
                counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        return counts

    def run(self, sample: np.ndarray) -> list[np.ndarray]:
        """One float sample (no batch dim) -> dequantized outputs (batch dim kept)."""
        tensor = self.inputs[0]
        self.interpreter.set_tensor(
            tensor.index, tensor.quantize(np.asarray(sample)[None]).reshape(tensor.shape)
        )
        self.interpreter.invoke()
        return [t.dequantize(self.interpreter.get_tensor(t.index)) for t in self.outputs]

    def run_raw_zeros(self) -> None:
        """One invoke on an all-zero input in the tensor's own dtype (does it run at all?)."""
        for tensor in self.inputs:
            self.interpreter.set_tensor(tensor.index, np.zeros(tensor.shape, dtype=np.dtype(tensor.dtype)))
        self.interpreter.invoke()

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """Dequantized outputs for a batch of float samples, one array per output, batch first."""
        rows = [self.run(sample) for sample in x]
        return [np.concatenate([r[i] for r in rows]) for i in range(len(self.outputs))]

    def median_latency_ms(self, sample: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
        tensor = self.inputs[0]
        q = tensor.quantize(np.asarray(sample)[None]).reshape(tensor.shape)
        times = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            self.interpreter.set_tensor(tensor.index, q)
            self.interpreter.invoke()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000)
