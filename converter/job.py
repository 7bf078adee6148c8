"""The quantize job after its inputs are loaded: convert (and the float32 reference), check the result
runs on ai-edge-litert, decide output roles, evaluate and gate, then write model and manifest together."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter import report
from edge_agent import __version__
from edge_agent.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from converter.evaluate import Gate


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"edge_agent": __version__}
    for key, dist in (("tensorflow", "tensorflow"), ("keras", "keras"), ("ai_edge_litert", "ai-edge-litert")):
        try:
            found[key] = version(dist)
        except PackageNotFoundError:
            if key == "tensorflow":
                with contextlib.suppress(PackageNotFoundError):
                    found[key] = version("tensorflow-cpu")
    return found


@dataclass(frozen=True)
class QuantizeResult:
    summary: str  # the table printed on stdout
    gate: dict[str, Any] | None  # as recorded in the manifest; None when no gate ran
    collapse: str | None = None  # a sentence when the answers collapsed against the float model
    fallback: dict[str, Any] | None = None  # as recorded in the manifest, when --fallback auto ran

    @property
    def gate_passed(self) -> bool:
        return self.gate is None or bool(self.gate["passed"])


def run_quantize(
    *,
    fm: Any,
    out: Path,
    mode: str,
    io_type: str,
    samples: Any,
    held_out: Any,
    labels: list[str] | None,
    task: str,
    name: str,
    kind: str,
    pre: Any,
    output_roles: tuple[str, ...],
    postprocess: dict[str, Any],
    gate: Gate | None,
    threads: int,
    fallback: str | None = None,
    max_float_layers: int = 5,
) -> QuantizeResult:
    from converter import manifest as mf
    from converter import roles as rl
    from converter.evaluate import apply_gate, collapse, evaluate
    from converter.golden import golden_samples
    from converter.litert import LiteModel
    from converter.output import write_files
    from converter.quantize import convert

    x_calib = samples.x if samples is not None else None
    reference_bytes = convert(fm, "float32", "float32", None)
    model_bytes = reference_bytes if mode == "float32" else convert(fm, mode, io_type, x_calib)
    reference = LiteModel(reference_bytes, threads)
    lite = LiteModel(model_bytes, threads)
    try:
        lite.run_raw_zeros()
    except Exception as exc:
        raise ModelError(
            f"the converted model does not run on ai-edge-litert ({exc}); run with --verbose"
        ) from None

    overrides = rl.parse_role_overrides(output_roles, lite.outputs)
    probe = x_calib[:64] if x_calib is not None else (held_out.x[:64] if held_out is not None else None)
    softmax = fm.ends_in_softmax()
    sample_outputs = None
    if probe is not None:
        float_probe = fm.predict(probe)
        if task == "classification" and not softmax and len(float_probe) == 1:
            p = float_probe[0].reshape(len(probe), -1)
            softmax = bool(np.all(p >= -1e-6) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3))
        sample_outputs = lite.run(probe[0])
    roles = rl.guess_roles(task, lite, softmax, sample_outputs, overrides)
    rl.check_labels(labels, task, lite, roles, "labels")

    if task == "anomaly" and "threshold" not in postprocess:
        postprocess = {**postprocess, "threshold": _anomaly_threshold(lite, roles, samples)}

    evaluation: dict[str, Any] = {
        "size_bytes": {"float32_tflite": len(reference_bytes), "tflite": len(model_bytes)},
        "size_ratio": round(len(model_bytes) / len(reference_bytes), 4),
    }
    ev = None
    golden, golden_line = None, None
    fallen_back = None
    if held_out is not None:
        ev = evaluate(fm, lite, held_out, task, reference=reference, labels=labels)
        apply_gate(ev, gate)
        if fallback == "auto" and ev.gate is not None and not ev.gate["passed"]:
            assert gate is not None and x_calib is not None
            model_bytes, lite, ev, fallen_back = _fall_back(
                fm, x_calib, held_out, task, labels, reference, len(reference_bytes), len(model_bytes), ev,
                gate, max_float_layers, io_type, threads,
            )  # fmt: skip
            evaluation["size_bytes"]["tflite"] = len(model_bytes)
            evaluation["size_ratio"] = round(len(model_bytes) / len(reference_bytes), 4)
        evaluation.update(ev.to_dict())
        golden, note = golden_samples(lite, held_out.x)  # for the device's check before a deployment swap
        count = len(golden["samples"]) if golden else 0
        evaluation["golden_samples"] = count
        golden_line = f"golden samples: {count} stored in the manifest" + (f" ({note})" if note else "")

    sha = hashlib.sha256(model_bytes).hexdigest()
    manifest = mf.build(
        name=name, task=task, lite=lite, model_file=out.name, sha256=sha, mode=mode, labels=labels, kind=kind,
        preprocess=pre.model_dump() if pre is not None else None, roles=roles, postprocess=postprocess,
        calibration=samples.summary if samples is not None else None,
        evaluation=evaluation,
        versions=versions(),
        golden=golden,
        fallback=fallen_back,
    )  # fmt: skip
    manifest_path = out.with_suffix(".json")
    write_files({out: model_bytes, manifest_path: mf.dumps(manifest)})
    collapsed = collapse(ev, mode) if ev is not None else None
    label = mode if fallen_back is None else f"{mode} + {len(fallen_back['float_layers'])} float"
    summary = _summary(
        out, manifest_path, label, io_type, len(reference_bytes), len(model_bytes), ev, roles, lite, threads,
        collapsed,
    )  # fmt: skip
    if fallen_back is not None:
        summary = f"{summary}\n\n{_fallback_summary(fallen_back, mode, threads)}"
    if golden_line:
        summary = f"{summary}\n{golden_line}"
    return QuantizeResult(summary, ev.gate if ev else None, collapsed, fallen_back)


def _fall_back(
    fm: Any,
    x_calib: np.ndarray,
    held_out: Any,
    task: str,
    labels: list[str] | None,
    reference: Any,
    float32_size: int,
    int8_size: int,
    int8_ev: Any,
    gate: Gate,
    max_float_layers: int,
    io_type: str,
    threads: int,
) -> tuple[bytes, Any, Any, dict[str, Any]]:
    """Full int8 failed the gate: keep its worst layers in float (converter/diagnosis.py), then evaluate
    the mix like any converted model. Returns its bytes, LiteModel, evaluation and manifest record."""
    import sys

    from converter.diagnosis import fall_back
    from converter.evaluate import apply_gate, evaluate
    from converter.litert import LiteModel

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    found = fall_back(fm, x_calib, held_out, gate, max_float_layers, io_type != "float32", progress)
    lite = LiteModel(found.model, threads)
    try:
        lite.run_raw_zeros()
    except Exception as exc:
        raise ModelError(f"the mixed int8/float model does not run on ai-edge-litert ({exc})") from None
    ev = evaluate(fm, lite, held_out, task, reference=reference, labels=labels)
    apply_gate(ev, gate)
    record = {
        "float_layers": found.float_layers,
        "float_nodes": found.float_nodes,
        "max_float_layers": max_float_layers,
        "all_float": found.all_float,
        "passed": bool(ev.gate and ev.gate["passed"]),
        "steps": [s.record() for s in found.steps],
        "size_bytes": {"float32": float32_size, "int8": int8_size, "mixed": len(found.model)},
        "latency_ms": {
            "float32": ev.latency_ms["float32_tflite"],
            "int8": int8_ev.latency_ms["tflite"],
            "mixed": ev.latency_ms["tflite"],
        },
    }  # fmt: skip
    return found.model, lite, ev, record


def _fallback_summary(record: dict[str, Any], mode: str, threads: int) -> str:
    """The fallback's steps and the final mix against full int8 and float32."""
    layers = record["float_layers"]
    verdict = "passed" if record["passed"] else "still FAILED"
    lines = [
        f"fallback: full {mode} failed the quality gate; kept in float, one layer at a time: "
        f"{', '.join(layers) or 'none'} ({len(layers)} of at most {record['max_float_layers']}); "
        f"the gate {verdict}"
    ]
    accuracy = "accuracy" in record["steps"][0]
    steps = [
        [str(i), ", ".join(step["float_layers"]) or "(none)",
         *((report.pct(step["accuracy"]), f"{step['accuracy_drop_points']:.2f} points") if accuracy
           else (report.num(step["mae"]), f"{step['error_increase']:.4g}")),
         "PASSED" if step["passed"] else "FAILED"]
        for i, step in enumerate(record["steps"])
    ]  # fmt: skip
    measures = ["accuracy", "drop"] if accuracy else ["mean abs error", "rise"]
    lines += ["", report.table(["step", "float layers", *measures, "gate"], steps)]
    size, lat = record["size_bytes"], record["latency_ms"]
    plural = "s" if threads > 1 else ""
    mix = [
        [".tflite size", report.size(size["float32"]), report.size(size["int8"]), report.size(size["mixed"])],
        [f"latency median ({threads} thread{plural})", report.ms(lat["float32"]), report.ms(lat["int8"]),
         report.ms(lat["mixed"])],
    ]  # fmt: skip
    header = f"{mode} + {len(layers)} float layer{'s' if len(layers) != 1 else ''}"
    lines += ["", report.table(["", "float32", f"full {mode}", header], mix)]
    return "\n".join(lines)


def _anomaly_threshold(lite: Any, roles: list[str], samples: Any) -> float:
    """The device's anomaly postprocessor needs a threshold: the 99th percentile of the scores of the
    calibration data, which is assumed normal."""
    from converter.evaluate import ANOMALY_PERCENTILE, anomaly_threshold

    if samples is None or samples.summary.get("format") == "random":
        raise ConfigError(
            "--task anomaly needs a threshold: give --calib with normal data (the threshold becomes the "
            f"{ANOMALY_PERCENTILE:g}th percentile of its scores) or set it with --postprocess threshold=X"
        )
    role = next(r for r in roles if r in ("reconstruction", "anomaly_score"))
    threshold = anomaly_threshold(lite, samples.x, role)
    samples.summary["anomaly_threshold"] = {"percentile": ANOMALY_PERCENTILE, "value": threshold}
    return round(threshold, 8)


def _summary(
    out: Path,
    manifest_path: Path,
    mode: str,
    io_type: str,
    ref_size: int,
    size: int,
    ev: Any,
    roles: list[str],
    lite: Any,
    threads: int,
    collapsed: str | None = None,
) -> str:
    """The table on stdout. Column "float32" is the float model: its .tflite for size and latency,
    the model itself (Keras / SavedModel) for accuracy."""
    t_in = lite.inputs[0]
    outputs = ", ".join(f"{r} {t.dtype} {list(t.shape)}" for r, t in zip(roles, lite.outputs, strict=True))
    lines = [
        f"wrote {out} and {manifest_path.name}",
        f"mode {mode}: input {t_in.dtype} {list(t_in.shape)}, output {outputs}",
    ]
    rows = [
        [".tflite size", report.size(ref_size), report.size(size), f"{size / ref_size * 100:.1f}% of float32"]
    ]
    if ev is not None:
        lines.append(f"evaluated on {ev.samples} samples of {ev.data}")
        if ev.accuracy_float is not None:
            drop = f"drop {ev.accuracy_drop_points:.2f} points"
            rows.append(["accuracy", report.pct(ev.accuracy_float), report.pct(ev.accuracy_quantized), drop])
            rows.append(["top-1 agreement with float", "", report.pct(ev.top1_agreement), ""])
        if ev.mae_float is not None:
            rise = f"rise {ev.mae_quantized - ev.mae_float:.4g}" if ev.mae_quantized is not None else ""
            rows.append(["mean abs error", report.num(ev.mae_float), report.num(ev.mae_quantized), rise])
        diff = f"{ev.output_mean_abs_diff:.4g} / {ev.output_max_abs_diff:.4g}"
        rows.append(["output diff vs float, mean / max", "", diff, ""])
        lat = ev.latency_ms
        rows.append([
            f"latency median ({threads} thread{'s' if threads > 1 else ''})",
            report.ms(lat.get("float32_tflite")),
            report.ms(lat.get("tflite")),
            f"Keras/TF: {report.ms(lat.get('float_model'))}",
        ])  # fmt: skip
        if collapsed is not None:
            rows.append(["answers vs float", "", "COLLAPSED", "see below"])
        if ev.gate is not None:
            verdict = "PASSED" if ev.gate["passed"] else "FAILED"
            rows.append(["quality gate", "", verdict, _gate_limit(ev.gate)])
        elif ev.accuracy_float is not None or ev.mae_float is not None:
            rows.append(["quality gate", "", "OFF", "--no-gate"])
    lines += ["", report.table(["", "float32", mode, ""], rows)]
    if collapsed is not None:
        lines += ["", f"COLLAPSED: {collapsed}"]
    return "\n".join(lines)


def _gate_limit(gate: dict[str, Any]) -> str:
    if "max_error_increase_pct" in gate:
        return (
            f"max error +{gate['max_error_increase_pct']:g}% (rise allowed: {gate['allowed_increase']:.4g})"
        )
    return f"max drop {gate['max_accuracy_drop_points']:g} points"
