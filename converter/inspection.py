"""What a .tflite holds and whether the device can use it: tensors, ops, a test invoke on ai-edge-litert,
and a check of the manifest beside it (schema, sha256, tensors)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter import report
from converter.litert import LiteModel, Tensor
from edge_agent.errors import ModelError

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier at bytes 4..8 of every .tflite


def check_tflite_file(path: Path) -> None:
    """ModelError unless ``path`` is a readable file that starts like a TFLite flatbuffer."""
    if not path.is_file():
        raise ModelError(f"{path}: no such .tflite file")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror})") from None
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(
            f"{path}: not a TFLite model (no 'TFL3' identifier); make one with edge-convert quantize"
        )


def read_manifest(tflite: Path, manifest_path: Path | None = None) -> dict[str, Any] | None:
    """The manifest beside ``tflite`` as a dict, None when there is none; ModelError when unreadable."""
    path = manifest_path or tflite.with_suffix(".json")
    if not path.is_file():
        if manifest_path is not None:
            raise ModelError(f"--manifest {path}: no such file")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a manifest (expected a JSON object)")
    return data


@dataclass
class Inspection:
    path: Path
    size: int
    sha256: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    ops: dict[str, int]
    runs: bool
    invoke_ms: float | None
    run_error: str | None
    manifest_path: Path | None
    manifest_checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def tensor(t: Tensor) -> dict[str, Any]:
            return {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "quantization": t.quantization(),
            }

        return {
            "path": str(self.path),
            "size_bytes": self.size,
            "sha256": self.sha256,
            "inputs": [tensor(t) for t in self.inputs],
            "outputs": [tensor(t) for t in self.outputs],
            "ops": self.ops,
            "runs_on_litert": self.runs,
            "invoke_ms": self.invoke_ms,
            "run_error": self.run_error,
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "manifest_checks": self.manifest_checks,
            "problems": self.problems,
        }

    def text(self) -> str:
        def quant(t: Tensor) -> str:
            return f"scale {t.scale:.6g}, zero point {t.zero_point}" if t.scale is not None else "-"

        rows = [["input", t.name, str(list(t.shape)), t.dtype, quant(t)] for t in self.inputs]
        rows += [["output", t.name, str(list(t.shape)), t.dtype, quant(t)] for t in self.outputs]
        lines = [
            f"{self.path}  {report.size(self.size)}  sha256 {self.sha256[:16]}...",
            "",
            report.table(["", "name", "shape", "dtype", "quantization"], rows),
            "",
            report.table(["op", "count"], [[name, str(n)] for name, n in self.ops.items()]),
            "",
        ]
        if self.runs:
            lines.append(f"runs on ai-edge-litert: yes (one invoke on zeros: {self.invoke_ms:.3f} ms)")
        else:
            lines.append(f"runs on ai-edge-litert: NO ({self.run_error})")
        if self.manifest_path is None:
            lines.append(
                "manifest: none beside the model (the device then needs task/preprocess in its config)"
            )
        else:
            checks = ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in self.manifest_checks.items())
            lines.append(f"manifest {self.manifest_path.name}: {checks}")
        return "\n".join(lines)


def inspect_tflite(path: Path, manifest_path: Path | None = None) -> Inspection:
    check_tflite_file(path)
    data = path.read_bytes()
    lite = LiteModel(path)
    runs, run_error, invoke_ms = True, None, None
    try:
        start = time.perf_counter()
        lite.run_raw_zeros()
        invoke_ms = (time.perf_counter() - start) * 1000
    except Exception as exc:
        runs, run_error = False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    info = Inspection(
        path=path,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=lite.inputs,
        outputs=lite.outputs,
        ops=lite.ops(),
        runs=runs,
        invoke_ms=invoke_ms,
        run_error=run_error,
        manifest_path=None,
    )
    if not runs:
        info.problems.append(f"does not run on ai-edge-litert ({run_error})")
    manifest = read_manifest(path, manifest_path)
    if manifest is not None:
        info.manifest_path = manifest_path or path.with_suffix(".json")
        _check_manifest(info, manifest)
    return info


def _check_manifest(info: Inspection, manifest: dict[str, Any]) -> None:
    from converter.manifest import validate

    checks = info.manifest_checks
    try:
        validate(manifest)
        checks["schema"] = True
    except ModelError as exc:
        checks["schema"] = False
        info.problems.append(f"manifest does not match the schema ({str(exc).split(': ', 1)[-1]})")
    checks["sha256"] = manifest.get("sha256") == info.sha256
    if not checks["sha256"]:
        info.problems.append(
            "manifest sha256 does not match the model file (copy the .tflite and .json together)"
        )
    for key, tensors in (("inputs", info.inputs), ("outputs", info.outputs)):
        declared = manifest.get(key) or []
        ok = len(declared) == len(tensors) and all(
            _same_tensor(d, t) for d, t in zip(declared, tensors, strict=True)
        )
        checks[key] = ok
        if not ok:
            info.problems.append(f"manifest {key} differ from the model's tensors")


def _same_tensor(declared: dict[str, Any], t: Tensor) -> bool:
    if (
        declared.get("name") != t.name
        or declared.get("shape") != list(t.shape)
        or declared.get("dtype") != t.dtype
    ):
        return False
    q = declared.get("quantization")
    if t.quantization() is None:
        return q is None
    return (
        q is not None
        and abs(q["scale"] - t.scale) <= 1e-9 * max(1.0, t.scale)
        and q["zero_point"] == t.zero_point
    )
