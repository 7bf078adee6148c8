"""Teacher vs student after distillation: parameters, file size and accuracy of the Keras models, and with
``--report`` both converted to int8 (calibrated on the distillation data, in memory) with their .tflite
size, int8 accuracy and median latency measured by the converter's own evaluation (converter/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter import report
from converter.calibration import Labelled

CALIBRATION_SAMPLES = 300  # as edge-convert quantize's --calib-samples default


@dataclass(frozen=True)
class ModelFigures:
    params: int
    keras_bytes: int
    accuracy: float | None = None  # float model on --eval
    agreement: float | None = None  # top-1 agreement with the teacher on --eval
    int8_bytes: int | None = None
    int8_accuracy: float | None = None
    int8_latency_ms: float | None = None  # median per single-sample invoke


def measure(
    fm: Any,
    path: Path,
    held_out: Labelled | None,
    teacher_top: np.ndarray | None,
    calib: np.ndarray | None,
    threads: int,
) -> ModelFigures:
    """Figures for one model; int8 ones only when ``calib`` is given (needs TensorFlow's converter)."""
    figures: dict[str, Any] = {
        "params": int(fm.keras_model.count_params()),
        "keras_bytes": path.stat().st_size,
    }
    if held_out is not None:
        top = fm.predict(held_out.x)[0].argmax(axis=1)
        figures["accuracy"] = float(np.mean(top == held_out.y))
        if teacher_top is not None:
            figures["agreement"] = float(np.mean(top == teacher_top))
    if calib is not None:
        from converter.evaluate import evaluate
        from converter.litert import LiteModel
        from converter.quantize import convert

        model_bytes = convert(fm, "int8", "int8", calib)
        lite = LiteModel(model_bytes, threads)
        figures["int8_bytes"] = len(model_bytes)
        if held_out is not None:
            ev = evaluate(fm, lite, held_out, "classification")
            figures["int8_accuracy"] = ev.accuracy_quantized
            figures["int8_latency_ms"] = ev.latency_ms["tflite"]
        else:
            figures["int8_latency_ms"] = lite.median_latency_ms(calib[0])
    return ModelFigures(**figures)


def table(teacher: ModelFigures, student: ModelFigures, threads: int) -> str:
    """The comparison printed at the end of ``edge-convert distill``."""

    def ratio(t: float | None, s: float | None, fmt: str) -> str:
        return fmt.format(t / s) if t and s else ""

    def pct(value: float | None) -> str:
        return report.pct(value) if value is not None else "-"

    rows = [
        [
            "parameters",
            f"{teacher.params:,}",
            f"{student.params:,}",
            ratio(teacher.params, student.params, "{:.1f}x fewer"),
        ],
        [".keras size", report.size(teacher.keras_bytes), report.size(student.keras_bytes), ""],
    ]
    if teacher.accuracy is not None:
        drop = (teacher.accuracy - (student.accuracy or 0.0)) * 100
        rows.append(
            ["accuracy (float)", pct(teacher.accuracy), pct(student.accuracy), f"drop {drop:.2f} points"]
        )
        rows.append(["top-1 agreement with teacher", "", pct(student.agreement), ""])
    if teacher.int8_bytes is not None and student.int8_bytes is not None:
        rows.append(
            [
                "int8 .tflite size",
                report.size(teacher.int8_bytes),
                report.size(student.int8_bytes),
                ratio(teacher.int8_bytes, student.int8_bytes, "{:.1f}x smaller"),
            ]
        )
        if teacher.int8_accuracy is not None and student.int8_accuracy is not None:
            drop = (teacher.int8_accuracy - student.int8_accuracy) * 100
            rows.append(
                [
                    "accuracy (int8)",
                    pct(teacher.int8_accuracy),
                    pct(student.int8_accuracy),
                    f"drop {drop:.2f} points",
                ]
            )
        rows.append(
            [
                f"int8 latency median ({threads} thread{'s' if threads > 1 else ''})",
                _ms(teacher.int8_latency_ms),
                _ms(student.int8_latency_ms),
                ratio(teacher.int8_latency_ms, student.int8_latency_ms, "{:.1f}x faster"),
            ]
        )
    return report.table(["", "teacher", "student", ""], rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f} ms"  # 4 places: a small int8 model runs in microseconds
