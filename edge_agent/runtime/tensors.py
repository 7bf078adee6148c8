"""What the interpreter says about a model's tensors and ops, in the manifest's own vocabulary."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.manifest import Quantization, TensorSpec


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def quantization_of(detail: dict[str, Any]) -> Quantization | None:
    """Per-tensor affine quantization from an interpreter detail dict; None for float tensors (scale 0)."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return Quantization(scale=float(scale), zero_point=int(zero_point))


def spec_of(detail: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=detail["name"],
        shape=[int(d) for d in detail["shape"]],
        dtype=dtype_name(detail["dtype"]),
        quantization=quantization_of(detail),
    )


def op_names(interpreter: Any) -> list[str] | None:
    """Op names in execution order when the runtime exposes them (all current ones do, privately)."""
    get = getattr(interpreter, "_get_ops_details", None)
    if get is None:
        return None
    try:
        return [op["op_name"] for op in get()]
    except Exception:  # a private API: absence or change must not break loading
        return None


def producer_ops(interpreter: Any) -> dict[int, tuple[str, int]]:
    """Tensor index -> (name of the op that writes it, position among that op's outputs)."""
    get = getattr(interpreter, "_get_ops_details", None)
    if get is None:
        return {}
    try:
        ops = get()
    except Exception:
        return {}
    produced: dict[int, tuple[str, int]] = {}
    for op in ops:
        if op["op_name"] == "DELEGATE":  # a delegate's node re-lists tensors the real op wrote
            continue
        for pos, idx in enumerate(op["outputs"]):
            produced[int(idx)] = (op["op_name"], pos)
    return produced
