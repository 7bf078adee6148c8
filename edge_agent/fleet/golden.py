"""Golden samples: a few evaluation inputs with their expected outputs, carried in the manifest.

A device runs them through a candidate model before swapping it in; a model that does not reproduce them
within tolerance is never used. The converter writes the field; this module defines it:

    "golden": {
      "tolerance": 0.02,          # optional: absolute tolerance in real (dequantized) output units
      "note": "...",              # optional: why fewer samples were kept (edge-convert's byte budget)
      "samples": [                # 1..16 samples
        {"input": "<base64>",     # raw bytes of inputs[0] for batch 1: exactly prod(shape[1:]) * itemsize
                                  # bytes in the input's dtype (quantized if the model is), C order;
                                  # images already preprocessed and down-scaled to the model's input size
         "outputs": {"<output tensor name>": [real values, flattened, C order]}}
      ]
    }

Expected outputs are *real* values (dequantized with the output's own scale and zero point), so the check
does not depend on how the device's runtime reports them. Default tolerance per output: 2 quantization
steps for a quantized output (one step for rounding on either side; kernels differ by one ulp between
XNNPACK and the reference ops), else 1e-3 + 1e-3 x |expected| for float outputs; ``tolerance`` overrides
when larger.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import numpy as np

from edge_agent.fleet.errors import DeployRefused
from edge_agent.manifest import (
    GOLDEN_MAX_SAMPLES,
    GoldenSample,
    GoldenSet,
    Manifest,
    OutputSpec,
    TensorSpec,
)

# The format's models live with the manifest that carries them; re-exported here for the fleet code.
MAX_SAMPLES = GOLDEN_MAX_SAMPLES
__all__ = ["GoldenSample", "GoldenSet", "check_sample", "decode_input", "run_golden", "tolerance_for"]


def decode_input(sample: GoldenSample, spec: TensorSpec) -> np.ndarray:
    """The sample's input in ``spec``'s dtype and shape (batch 1); DeployRefused if it does not fit."""
    try:
        raw = base64.b64decode(sample.input, validate=True)
    except binascii.Error:
        raise DeployRefused("golden_mismatch", "golden sample input is not valid base64") from None
    dtype = np.dtype(spec.dtype)
    shape = [1, *spec.shape[1:]]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DeployRefused(
            "incompatible",
            f"golden sample input has {len(raw)} bytes; input '{spec.name}' {shape} {spec.dtype} "
            f"needs {expected}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def tolerance_for(spec: OutputSpec, expected: np.ndarray, override: float | None) -> np.ndarray:
    if spec.quantization is not None:
        tol = np.full(expected.shape, 2.0 * spec.quantization.scale)
    else:
        tol = 1e-3 + 1e-3 * np.abs(expected)
    return np.maximum(tol, override) if override is not None else tol


def real_values(spec: OutputSpec, raw: np.ndarray) -> np.ndarray:
    """Dequantize with the tensor's own scale and zero point (widened to float64 first: int8 - zp
    can overflow int8)."""
    values = np.asarray(raw).astype(np.float64).ravel()
    if spec.quantization is not None:
        values = spec.quantization.scale * (values - spec.quantization.zero_point)
    return values


def check_sample(index: int, sample: GoldenSample, actual: dict[str, np.ndarray], manifest: Manifest,
                 override: float | None) -> None:  # fmt: skip
    """Raise DeployRefused('golden_mismatch') naming the output and the worst difference."""
    specs = {o.name: o for o in manifest.outputs}
    for name, values in sample.outputs.items():
        spec = specs.get(name)
        if spec is None or name not in actual:
            raise DeployRefused("golden_mismatch", f"golden sample {index}: the model has no output '{name}'")
        expected = np.asarray(values, dtype=np.float64)
        got = real_values(spec, actual[name])
        if got.shape != expected.shape:
            raise DeployRefused(
                "golden_mismatch",
                f"golden sample {index}: output '{name}' has {got.size} values, expected {expected.size}",
            )
        diff = np.abs(got - expected)
        tol = tolerance_for(spec, expected, override)
        if not np.all(diff <= tol):
            worst = int(np.argmax(diff - tol))
            raise DeployRefused(
                "golden_mismatch",
                f"golden sample {index}: output '{name}'[{worst}] = {got[worst]:.6g}, expected "
                f"{expected[worst]:.6g} (tolerance {tol[worst]:.3g})",
            )


def run_golden(
    golden: GoldenSet, manifest: Manifest, invoke: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> None:
    """Feed every sample's input to ``invoke`` (raw input array -> raw outputs by tensor name) and compare.

    The daemon's ``run_golden`` callable is this with its candidate interpreter's invoke bound in.
    """
    spec = manifest.inputs[0]
    for i, sample in enumerate(golden.samples):
        check_sample(i, sample, invoke(decode_input(sample, spec)), manifest, golden.tolerance)
