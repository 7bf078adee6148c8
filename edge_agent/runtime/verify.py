"""Check a manifest against the tensors the interpreter actually has, and pair them up.

Tensors are paired by name first, then by a unique shape and dtype: since TF 2.x the order of a
converted model's outputs is not guaranteed, so position is never used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.manifest import Quantization, TensorSpec
from edge_agent.runtime.tensors import spec_of

# Scales travel through JSON as decimal text and through float32 in the flatbuffer.
SCALE_REL_TOL = 1e-5


def _quant_text(q: Quantization | None) -> str:
    return "none" if q is None else f"scale={q.scale:.6g} zero_point={q.zero_point}"


def _differences(expected: TensorSpec, actual: TensorSpec) -> list[str]:
    diffs = []
    shape_ok = len(expected.shape) == len(actual.shape) and all(
        e in (-1, a) for e, a in zip(expected.shape, actual.shape, strict=False)
    )
    if not shape_ok:
        diffs.append(f"shape {expected.shape} in the manifest, {actual.shape} in the model")
    if expected.dtype != actual.dtype:
        diffs.append(f"dtype {expected.dtype} in the manifest, {actual.dtype} in the model")
    eq, aq = expected.quantization, actual.quantization
    same_q = (eq is None and aq is None) or (
        eq is not None
        and aq is not None
        and eq.zero_point == aq.zero_point
        and math.isclose(eq.scale, aq.scale, rel_tol=SCALE_REL_TOL)
    )
    if not same_q:
        diffs.append(f"quantization {_quant_text(eq)} in the manifest, {_quant_text(aq)} in the model")
    return diffs


def _compatible(expected: TensorSpec, actual: TensorSpec) -> bool:
    return (
        expected.dtype == actual.dtype
        and len(expected.shape) == len(actual.shape)
        and all(e in (-1, a) for e, a in zip(expected.shape, actual.shape, strict=False))
    )


def match_tensors(
    expected: list[TensorSpec], details: list[dict[str, Any]], what: str, model_path: Path
) -> list[dict[str, Any]]:
    """For each manifest tensor the interpreter detail it describes; ModelError saying what differs."""
    if len(expected) != len(details):
        raise ModelError(
            f"{model_path}: the manifest lists {len(expected)} {what}(s), the model has {len(details)} "
            f"({', '.join(d['name'] for d in details)}); the manifest belongs to another model"
        )
    actual = {d["name"]: (d, spec_of(d)) for d in details}
    paired: list[dict[str, Any] | None] = [None] * len(expected)
    used: set[str] = set()
    for i, spec in enumerate(expected):
        if spec.name in actual:
            paired[i] = actual[spec.name][0]
            used.add(spec.name)
    for i, spec in enumerate(expected):
        if paired[i] is not None:
            continue
        candidates = [n for n, (_, a) in actual.items() if n not in used and _compatible(spec, a)]
        if len(candidates) != 1:
            names = ", ".join(f"{n} {a.shape} {a.dtype}" for n, (_, a) in actual.items() if n not in used)
            raise ModelError(
                f"{model_path}: manifest {what} '{spec.name}' {spec.shape} {spec.dtype} is not in the model "
                f"(unmatched model {what}s: {names or 'none'}); re-create the manifest with edge-convert"
            )
        paired[i] = actual[candidates[0]][0]
        used.add(candidates[0])
    problems = []
    for spec, detail in zip(expected, paired, strict=True):
        assert detail is not None
        problems += [f"{what} '{spec.name}': {d}" for d in _differences(spec, spec_of(detail))]
    if problems:
        raise ModelError(
            f"{model_path}: does not match its manifest: "
            + "; ".join(problems)
            + "; copy the .tflite and .json that were converted together"
        )
    return [d for d in paired if d is not None]
