"""Float model vs converted model on held-out data: accuracy, top-1 agreement, output error, latency,
and the quality gate that turns a loss (a classifier's accuracy, a regression's error) into a failed
conversion."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from converter.calibration import Labelled
from converter.litert import LiteModel, Tensor
from converter.loading import FloatModel
from edge_agent.errors import ConfigError, DataError, ModelError


@dataclass
class Evaluation:
    samples: int
    data: str
    accuracy_float: float | None = None  # fraction correct, classification only
    accuracy_quantized: float | None = None
    accuracy_drop_points: float | None = None  # (float - quantized) * 100
    top1_agreement: float | None = None  # fraction of samples where both pick the same class
    mae_float: float | None = None  # regression: mean absolute error against the targets
    mae_quantized: float | None = None
    output_mean_abs_diff: float = 0.0  # quantized (dequantized) vs float outputs
    output_max_abs_diff: float = 0.0
    output_step: float | None = None  # regression: the first output's quantization step (0 when float)
    latency_ms: dict[str, float] = field(default_factory=dict)  # median per single-sample call
    gate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def pair_outputs(model: FloatModel, lite: LiteModel) -> list[int]:
    """For each float output, the index of the TFLite output with the same shape (TFLite's output
    order is not the model's, so match by shape, in order among equal shapes)."""
    free = list(range(len(lite.outputs)))
    pairs = []
    for shape in model.output_shapes:
        match = next((i for i in free if _same(shape, lite.outputs[i])), None)
        if match is None:
            raise ModelError(
                f"{model.path}: the converted model has no output shaped like the float output {shape}; "
                "was the .tflite made from this model?"
            )
        free.remove(match)
        pairs.append(match)
    return pairs


def _same(shape: tuple[int | None, ...], tensor: Tensor) -> bool:
    return len(shape) == len(tensor.shape) and all(
        s is None or s == t for s, t in zip(shape[1:], tensor.shape[1:], strict=False)
    )


def class_targets(y: np.ndarray, classes: int, source: str, labels: list[str] | None = None) -> np.ndarray:
    """Integer class ids in [0, classes) (label names are looked up in ``labels``); DataError otherwise."""
    y = np.asarray(y).reshape(len(y), -1)
    if y.dtype.kind in "USO":
        names = [str(v) for v in y[:, 0]]
        unknown = sorted(set(names) - set(labels or []))
        if unknown:
            hint = "not in the labels" if labels else "names, but no --labels were given to map them"
            raise DataError(f"evaluation data {source}: y holds class {hint}: {', '.join(unknown[:5])}")
        assert labels is not None
        return np.array([labels.index(n) for n in names], dtype=np.int64)
    if y.dtype.kind not in "iufb":
        raise DataError(f"evaluation data {source}: y must hold class indices, not {y.dtype}")
    if y.shape[1] != 1:
        raise DataError(
            f"evaluation data {source}: y must hold one class index per sample, got shape {y.shape}"
        )
    y = y[:, 0]
    if not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"evaluation data {source}: y must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= classes:
        raise DataError(
            f"evaluation data {source}: class indices range {y.min()}..{y.max()} "
            f"but the model has {classes} classes"
        )
    return y


def evaluate(
    model: FloatModel,
    lite: LiteModel,
    data: Labelled,
    task: str,
    float_outputs: list[np.ndarray] | None = None,
    latency: bool = True,
    reference: LiteModel | None = None,
    labels: list[str] | None = None,
) -> Evaluation:
    """Compare ``lite`` with the float ``model`` on ``data``; ``reference`` (the float32 .tflite), when
    given, is timed too so the latency gain is measured on the same runtime."""
    if not _same(model.input_shape, lite.inputs[0]):
        raise ModelError(
            f"{model.path}: its input {list(model.input_shape)} differs from the .tflite's "
            f"{list(lite.inputs[0].shape)}; was the .tflite made from this model?"
        )
    pairs = pair_outputs(model, lite)
    float_out = float_outputs if float_outputs is not None else model.predict(data.x)
    lite_out = lite.predict(data.x)
    quant = [lite_out[i] for i in pairs]
    diffs = np.concatenate(
        [np.abs(q.reshape(-1) - f.reshape(-1)) for q, f in zip(quant, float_out, strict=True)]
    )
    result = Evaluation(
        samples=len(data.x),
        data=data.source,
        output_mean_abs_diff=round(float(diffs.mean()), 6),
        output_max_abs_diff=round(float(diffs.max()), 6),
    )
    f0, q0 = float_out[0].reshape(len(data.x), -1), quant[0].reshape(len(data.x), -1)
    if task == "classification":
        y = class_targets(data.y, f0.shape[1], data.source, labels)
        float_top, quant_top = f0.argmax(axis=1), q0.argmax(axis=1)
        result.accuracy_float = round(float(np.mean(float_top == y)), 6)
        result.accuracy_quantized = round(float(np.mean(quant_top == y)), 6)
        result.accuracy_drop_points = round((result.accuracy_float - result.accuracy_quantized) * 100, 4)
        result.top1_agreement = round(float(np.mean(float_top == quant_top)), 6)
    elif task == "regression" and (y := regression_targets(data, f0)) is not None:
        result.mae_float = round(float(np.mean(np.abs(f0 - y))), 6)
        result.mae_quantized = round(float(np.mean(np.abs(q0 - y))), 6)
        result.output_step = float(lite.outputs[pairs[0]].scale or 0.0)
    if latency:
        sample = data.x[0]
        result.latency_ms["float_model"] = round(_median_ms(model.predict_one(), sample[None]), 4)
        if reference is not None:
            result.latency_ms["float32_tflite"] = round(reference.median_latency_ms(sample), 4)
        result.latency_ms["tflite"] = round(lite.median_latency_ms(sample), 4)
    return result


ANOMALY_PERCENTILE = 99.0  # of scores on normal (calibration) data: ~1% false alarms on data like it


def anomaly_scores(lite: LiteModel, x: np.ndarray, role: str) -> np.ndarray:
    """The score the device computes for each sample: the model's own score, or the mean squared
    error between the (quantized, then dequantized) input and the reconstruction."""
    tensor = lite.inputs[0]
    scores = []
    for sample in x:
        out = lite.run(sample)[0]
        if role == "anomaly_score":
            scores.append(float(out.reshape(-1)[0]))
        else:
            seen = tensor.dequantize(tensor.quantize(np.asarray(sample)[None])).astype(np.float64)
            scores.append(float(np.mean((seen.reshape(-1) - out.astype(np.float64).reshape(-1)) ** 2)))
    return np.asarray(scores)


def anomaly_threshold(lite: LiteModel, x: np.ndarray, role: str) -> float:
    return float(np.percentile(anomaly_scores(lite, x, role), ANOMALY_PERCENTILE))


DEFAULT_MAX_ACCURACY_DROP = 1.0  # points: the gate with --eval on a classifier, unless --no-gate
DEFAULT_MAX_ERROR_INCREASE_PCT = 10.0  # percent: the gate with --eval on a regression model, unless --no-gate
# Below these the quantized model no longer answers like the float one (measured on the digits CNN: a
# healthy int8 conversion keeps 100% agreement and drops 0 points; a collapsed one fell to 8% agreement).
COLLAPSE_AGREEMENT = 0.8
COLLAPSE_DROP_POINTS = 10.0
# What to try instead, per mode. Measured on the digits CNN with large-range channels (converter/examples.py,
# factor 1000): int8 10.2%, dynamic 10.0% (its activations are quantized on the fly, per tensor, too),
# int16x8 96.4%, float16 96.9% (float 96.9%). dynamic still helps when the calibration data is the problem.
OTHER_MODES = {
    "int8": "--mode int16x8, --mode float16, or --mode dynamic (needs no calibration data)",
    "int16x8": "--mode float16",
    "dynamic": "--mode int16x8 or --mode float16",
    "float16": "--mode float32",
    "float32": "another export of the model",
}


def next_step(mode: str) -> str:
    """What to do when ``mode`` lost too much: check the data first, then find and keep the bad layers in
    float (int8), then another mode."""
    layers = (
        ", see which layers lose it with edge-convert explain and keep them in float with --fallback auto"
        if mode == "int8"
        else ""
    )
    return (
        "check that --calib holds typical inputs preprocessed exactly as in training (the input "
        f"normalization, --scale/--mean/--std){layers}, then try {OTHER_MODES.get(mode, '--mode float16')}"
    )


@dataclass(frozen=True)
class Gate:
    """The quality gate: how much worse than the float model the converted one may do on --eval. A
    classifier loses accuracy (``limit``: points); a regression model gains error (``limit``: percent its
    mean absolute error may grow, and never less than one step of its int8 output: rounding to that
    resolution alone costs up to half a step per value, so a smaller rise says nothing)."""

    metric: Literal["accuracy", "mae"]
    limit: float

    def drop_passes(self, drop_points: float) -> bool:
        """A classifier's accuracy drop (points) is within the gate."""
        return drop_points <= self.limit

    def error_rise(
        self, mae_float: float, mae_quantized: float, output_step: float
    ) -> tuple[float, float, bool]:
        """A regression model's (rise of its mean absolute error, the rise allowed, whether it passes)."""
        increase = mae_quantized - mae_float
        allowed = max(mae_float * self.limit / 100, output_step)
        return increase, allowed, increase <= allowed + 1e-9  # MAEs rounded to 6 places: the limit passes


def regression_targets(data: Labelled, outputs: np.ndarray) -> np.ndarray | None:
    """``data.y`` shaped like the model's first output ``outputs`` (one number per output value for each
    sample), or None when it does not hold such targets."""
    if data.y.size != outputs.size or data.y.dtype.kind not in "iufb":
        return None
    return np.asarray(data.y, dtype=np.float32).reshape(outputs.shape)


def missing_targets(source: str) -> DataError:
    return DataError(
        f"evaluation data {source}: the regression quality gate needs y to hold the targets, one number per "
        "model output value for each sample; fix y, or --no-gate to convert without it"
    )


def quality_gate(
    max_accuracy_drop: float | None,
    max_error_increase: float | None,
    no_gate: bool,
    has_eval: bool,
    task: str,
) -> Gate | None:
    """The gate a conversion runs, None for none: with --eval it is on for a classifier (accuracy drop at
    most DEFAULT_MAX_ACCURACY_DROP points) and a regression model (mean absolute error at most
    DEFAULT_MAX_ERROR_INCREASE_PCT percent higher); the --max-* options change it, --no-gate turns it off."""
    given = "--max-accuracy-drop" if max_accuracy_drop is not None else None
    if max_error_increase is not None:
        given = "--max-error-increase"
    if max_accuracy_drop is not None and max_error_increase is not None:
        raise ConfigError(
            "--max-accuracy-drop is a classifier's gate, --max-error-increase a regression's; give one"
        )
    if no_gate and given:
        raise ConfigError(f"--no-gate and {given} contradict each other; give one of them")
    if given and not has_eval:
        raise ConfigError(f"{given} needs --eval with labelled held-out data")
    if max_accuracy_drop is not None and task != "classification":
        raise ConfigError(
            "--max-accuracy-drop applies to classification models (--max-error-increase to regression)"
        )
    if max_error_increase is not None and task != "regression":
        raise ConfigError(
            "--max-error-increase applies to regression models (--max-accuracy-drop to classification)"
        )
    if no_gate or not has_eval or task not in ("classification", "regression"):
        return None
    if task == "classification":
        return Gate("accuracy", DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop)
    return Gate("mae", DEFAULT_MAX_ERROR_INCREASE_PCT if max_error_increase is None else max_error_increase)


def apply_gate(evaluation: Evaluation, gate: Gate | None) -> bool:
    """Record the quality gate in ``evaluation``; True when it passed (or none was set)."""
    if gate is None:
        return True
    if gate.metric == "mae":
        return _apply_error_gate(evaluation, gate)
    if evaluation.accuracy_drop_points is None:
        raise DataError("--max-accuracy-drop needs a classification model and labelled --eval data")
    passed = gate.drop_passes(evaluation.accuracy_drop_points)
    evaluation.gate = {
        "max_accuracy_drop_points": gate.limit,
        "accuracy_drop_points": evaluation.accuracy_drop_points,
        "passed": passed,
    }
    return passed


def _apply_error_gate(evaluation: Evaluation, gate: Gate) -> bool:
    mae_float, mae_quantized = evaluation.mae_float, evaluation.mae_quantized
    if mae_float is None or mae_quantized is None:
        raise missing_targets(evaluation.data)
    increase, allowed, passed = gate.error_rise(mae_float, mae_quantized, evaluation.output_step or 0.0)
    evaluation.gate = {
        "max_error_increase_pct": gate.limit,
        "error_increase": round(increase, 6),
        "error_increase_pct": round(increase / mae_float * 100, 4) if mae_float > 0 else None,
        "allowed_increase": round(allowed, 6),
        "passed": passed,
    }
    return passed


def gate_failure(gate: dict[str, Any]) -> str:
    """What failed, in one clause: ``accuracy dropped 4.67 points (allowed 1)``."""
    if "max_error_increase_pct" in gate:
        pct = gate["error_increase_pct"]
        rise = f" ({pct:.1f}%)" if pct is not None else ""
        return (
            f"mean absolute error rose by {gate['error_increase']:.4g}{rise} (allowed "
            f"{gate['allowed_increase']:.4g}: +{gate['max_error_increase_pct']:g}%, at least one output step)"
        )
    drop, allowed = gate["accuracy_drop_points"], gate["max_accuracy_drop_points"]
    return f"accuracy dropped {drop:.2f} points (allowed {allowed:g})"


def collapse(evaluation: Evaluation, mode: str) -> str | None:
    """One sentence when the converted model's answers collapsed against the float model's, else None:
    said whether or not a gate runs, because a collapse is never a small loss worth accepting."""
    agreement, drop = evaluation.top1_agreement, evaluation.accuracy_drop_points
    if agreement is None or drop is None:
        return None
    if agreement >= COLLAPSE_AGREEMENT and drop < COLLAPSE_DROP_POINTS:
        return None
    return (
        f"the {mode} model's answers collapsed: top-1 agreement with the float model "
        f"{agreement * 100:.2f}%, accuracy drop {drop:.2f} points; {next_step(mode)}"
    )


def _median_ms(fn: Any, x: np.ndarray, runs: int = 30, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        fn(x)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
