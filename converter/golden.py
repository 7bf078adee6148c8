"""Golden samples for the manifest: a few evaluation inputs and what the quantized model gave for them.

A device reproduces them before a fleet deployment swaps the model in (format and check:
``edge_agent/fleet/golden.py``). The inputs are the quantized model's own input tensors (the evaluation
sample after its quantization, exactly the bytes the device feeds); the expected outputs are that model's
outputs on ai-edge-litert, dequantized with each output's own scale and zero point. The device's default
tolerance is 2 output quantization steps: x86 and aarch64 kernels can differ by one step (measured: 3 of
4,500 int8 values differed by one step on a Raspberry Pi).

Bounded by a byte budget, because the manifest travels inside the deployment message: a 224x224x3 input
is ~200 KB of base64, so such a model gets no samples (and a note saying why) rather than a manifest that
no longer fits the device's ``fleet.max_inbound_bytes``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from converter.litert import LiteModel

DEFAULT_SAMPLES = 4
DEFAULT_BUDGET_BYTES = 64 * 1024  # of the manifest's JSON; the deployment message allows 1 MiB by default


def golden_samples(
    lite: LiteModel, x: np.ndarray, count: int = DEFAULT_SAMPLES, budget: int = DEFAULT_BUDGET_BYTES
) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest's ``golden`` field or None, a note when fewer than ``count`` samples fit ``budget``).

    ``x``: evaluation samples as the model sees them in float (no batch dimension per sample); samples are
    taken evenly spread over ``x``."""
    if len(x) == 0:
        return None, "no evaluation samples"
    picks = np.unique(np.linspace(0, len(x) - 1, num=min(count, len(x))).round().astype(int))
    spec = lite.inputs[0]
    samples: list[dict[str, Any]] = []
    used = 0
    for i in picks:
        raw = spec.quantize(np.asarray(x[i])[None]).reshape(spec.shape)
        sample = {"input": base64.b64encode(raw.tobytes()).decode(), "outputs": _outputs(lite, raw)}
        size = len(json.dumps(sample))
        if used + size > budget:
            break
        samples.append(sample)
        used += size
    if not samples:
        return None, (
            f"no golden samples: one takes {size // 1024} KiB of the manifest (budget {budget // 1024} KiB); "
            "fleet deployments of this model skip the golden check"
        )
    note = None
    if len(samples) < len(picks):
        note = f"{len(samples)} of {len(picks)} golden samples kept (manifest budget {budget // 1024} KiB)"
    golden: dict[str, Any] = {"samples": samples}
    if note:
        golden["note"] = note
    return golden, note


def _outputs(lite: LiteModel, raw: np.ndarray) -> dict[str, list[float]]:
    """Every output for the raw input, in real values (float64 after widening: int8 - zp overflows int8)."""
    interp = lite.interpreter
    interp.set_tensor(lite.inputs[0].index, raw)
    interp.invoke()
    out = {}
    for t in lite.outputs:
        values = np.asarray(interp.get_tensor(t.index)).astype(np.float64).ravel()
        if t.scale is not None:
            values = t.scale * (values - t.zero_point)
        out[t.name] = [float(v) for v in values]
    return out
