"""Which layers int8 hurts, and which to keep in float: ``edge-convert explain`` and ``--fallback auto``.

Built on TensorFlow Lite's ``tf.lite.experimental.QuantizationDebugger`` (in the TensorFlow the converter
already uses): it calibrates once, measures each op's own quantization error against the same op run in
float on the same (quantized) input, and re-quantizes the calibrated model with any ops left in float
(``denylisted_nodes``) without calibrating again (0.5 s for the debugger's run on the digits CNNs below).

ai-edge-quantizer 0.10 (the LiteRT team's selective quantizer) was tried on the same models, the outlier
digits CNN of converter/examples.py: its int8 scores 10.0% at factor 1000 (the TF converter 10.2%) and
95.3% at factor 200 (the converter 92.4%; float 96.9% for both), so it fails the 1-point gate too. Its
``validate`` gives each tensor's MSE accumulated through the whole model in raw units, so every tensor
after the first bad one looks bad and nothing says which op did it; the debugger's per-op error in
quantization steps does. It installs beside TensorFlow 2.21 and ai-edge-litert 2.3 without changing them,
but adds four packages; the debugger needs none.

Two measures per layer: ``rmse_steps``, the op's own error in quantization steps (sqrt(MSE) / scale: 1
means off by one step on average; the debugger's scale-adjusted RMSE), and ``output_diff_if_float``, the
model's mean absolute output error against the float model with only that layer kept in float: the layer
whose fallback brings the output closest to float is the worst. Layers are sorted by the second, since it
is what the user gets back.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from converter import report
from converter.calibration import Labelled
from converter.litert import LiteModel
from converter.loading import FloatModel
from converter.quiet import captured_fds, import_tensorflow
from edge_agent.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from converter.evaluate import Gate

PROBE_SAMPLES = 100  # calibration samples the per-layer errors and the output errors are measured on
MEASURE_TOP = 16  # layers (worst by rmse_steps first) whose float fallback is measured: one conversion each


@dataclass(frozen=True)
class LayerError:
    node: str  # the op's output tensor name, as QuantizationDebugOptions(denylisted_nodes=...) takes it
    layer: str  # readable: the Keras layer the op came from
    op: str  # TFLite op, e.g. CONV_2D
    scale: float  # of the op's int8 output
    rmse_steps: float  # sqrt(MSE) / scale of the op's own error
    max_abs_error: float
    output_diff_if_float: float | None = None  # mean |output - float output| with this layer alone in float
    accuracy_if_float: float | None = None  # with --eval


@dataclass
class Diagnosis:
    samples: int  # calibration samples the errors were measured on
    output_diff_int8: float  # mean |int8 output - float output| with every layer in int8
    layers: list[LayerError]  # worst first
    data: str | None = None  # --eval source
    accuracy_float: float | None = None
    accuracy_int8: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def text(self) -> str:
        head = [
            f"per-layer int8 error on {self.samples} calibration samples "
            f"(TensorFlow Lite QuantizationDebugger), worst first",
            f"int8 output diff vs float, mean: {self.output_diff_int8:.4g}",
        ]
        if self.accuracy_float is not None:
            head.append(
                f"accuracy on {self.data}: float {report.pct(self.accuracy_float)}, "
                f"int8 {report.pct(self.accuracy_int8)}"
            )
        headers = ["#", "layer", "op", "error (steps)", "max abs error", "output diff if float"]
        with_accuracy = any(layer.accuracy_if_float is not None for layer in self.layers)
        if with_accuracy:
            headers.append("accuracy if float")
        rows = []
        for i, layer in enumerate(self.layers, 1):
            row = [
                str(i), layer.layer, layer.op, f"{layer.rmse_steps:.3g}", f"{layer.max_abs_error:.4g}",
                "" if layer.output_diff_if_float is None else f"{layer.output_diff_if_float:.4g}",
            ]  # fmt: skip
            if with_accuracy:
                row.append(report.pct(layer.accuracy_if_float))
            rows.append(row)
        tail = [
            "",
            "error (steps): the op's own error, RMSE over its quantization step; output diff if float: the "
            "model's output error with only that layer kept in float.",
            "Next: edge-convert quantize ... --fallback auto keeps the worst layers in float until the "
            "quality gate passes.",
        ]
        return "\n".join([*head, "", report.table(headers, rows), *tail])


class Debugger:
    """A model calibrated once by QuantizationDebugger; per-layer errors, and mixed int8/float models
    with any layers kept in float. ``int8_io``: int8 input and output tensors, as ``--io int8``."""

    def __init__(self, model: FloatModel, calibration: np.ndarray, probe: np.ndarray, int8_io: bool) -> None:
        from converter.quantize import _converter_factories

        tf = import_tensorflow()
        self._tf = tf
        self._int8_io = int8_io
        self.probe = probe
        try:
            with _quiet():
                conv = _converter_factories(tf, model)[0]()
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = _dataset(calibration)
                self._debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=conv,
                    debug_dataset=_dataset(probe),
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(fully_quantize=int8_io),
                )
                reference = _converter_factories(tf, model)[0]().convert()
        except Exception as exc:
            raise ModelError(
                f"{model.path}: TensorFlow Lite's QuantizationDebugger cannot quantize this model "
                f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}); "
                "run with --verbose"
            ) from None
        self.reference = LiteModel(bytes(reference))
        self._reference_out = self.reference.predict(probe)

    def layer_errors(self) -> list[LayerError]:
        """Each quantized op's own error, worst (in quantization steps) first."""
        with _quiet():
            self._debugger.run()
            dump = io.StringIO()
            self._debugger.layer_statistics_dump(dump)
        layers = []
        for row in csv.DictReader(io.StringIO(dump.getvalue())):
            scale = float(row["scale"])
            rmse = math.sqrt(max(float(row["mean_squared_error"]), 0.0))
            layers.append(
                LayerError(
                    node=row["tensor_name"],
                    layer=layer_name(row["tensor_name"], row["op_name"]),
                    op=row["op_name"],
                    scale=scale,
                    rmse_steps=round(rmse / scale if scale > 0 else 0.0, 6),
                    max_abs_error=round(float(row["max_abs_error"]), 6),
                )
            )
        return sorted(layers, key=lambda layer: -layer.rmse_steps)

    def model(self, float_nodes: Sequence[str] = ()) -> bytes:
        """The int8 model with ``float_nodes`` (op output tensor names) kept in float."""
        tf = self._tf
        with _quiet():
            self._debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                fully_quantize=self._int8_io, denylisted_nodes=list(float_nodes) or None
            )
            return bytes(self._debugger.get_nondebug_quantized_model())

    def output_diff(self, model: bytes) -> float:
        """Mean |output - float output| of ``model`` on the probe samples (all outputs together)."""
        out = LiteModel(model).predict(self.probe)
        diffs = [np.abs(o.reshape(-1) - r.reshape(-1)) for o, r in zip(out, self._reference_out, strict=True)]
        return round(float(np.mean(np.concatenate(diffs))), 6)


def layer_name(tensor_name: str, op: str) -> str:
    """The Keras layer an op's output tensor came from: 'm_1/m_1/outliers_1/Relu;m_1/...' -> 'outliers'
    (the path's last scope before the TensorFlow op; Keras 3 appends _1 to traced scopes)."""
    parts = tensor_name.split(";")[0].split("/")
    if len(parts) >= 2:
        return re.sub(r"_\d+$", "", parts[-2])
    return f"{op.lower()} (model output)" if ":" in tensor_name else tensor_name


def diagnose(
    model: FloatModel, calibration: np.ndarray, held_out: Labelled | None = None, int8_io: bool = True
) -> Diagnosis:
    """Per-layer error of the int8 model against ``model``, worst first (see the module docstring)."""
    debugger = Debugger(model, calibration, calibration[:PROBE_SAMPLES], int8_io)
    layers = debugger.layer_errors()
    int8 = debugger.model()
    diagnosis = Diagnosis(samples=len(debugger.probe), output_diff_int8=debugger.output_diff(int8), layers=[])
    accuracy = _accuracy_fn(model, held_out)
    if accuracy is not None and held_out is not None:
        diagnosis.data = held_out.source
        diagnosis.accuracy_float = round(float(np.mean(accuracy.float_top == accuracy.y)), 6)
        diagnosis.accuracy_int8 = accuracy(int8)
    measured = []
    for layer in layers[:MEASURE_TOP]:
        try:
            mixed = debugger.model([layer.node])
        except Exception:  # the quantizer cannot leave this op in float: not a fallback candidate
            measured.append(layer)
            continue
        measured.append(
            LayerError(
                **{
                    **asdict(layer),
                    "output_diff_if_float": debugger.output_diff(mixed),
                    "accuracy_if_float": accuracy(mixed) if accuracy is not None else None,
                }
            )
        )
    unmeasured = math.inf
    measured.sort(
        key=lambda x: (
            unmeasured if x.output_diff_if_float is None else x.output_diff_if_float,
            -x.rmse_steps,
        )
    )
    diagnosis.layers = measured + layers[MEASURE_TOP:]
    return diagnosis


# ---------------------------------------------------------------------------------------------- fallback


def check_fallback(
    fallback: str | None, max_float_layers: int | None, mode: str, io_type: str, gate: Gate | None
) -> None:
    """ConfigError, before anything slow, for --fallback settings that cannot work."""
    if fallback is None:
        if max_float_layers is not None:
            raise ConfigError("--max-float-layers is the budget of --fallback auto; add --fallback auto")
        return
    if mode != "int8":
        raise ConfigError(
            f"--fallback auto keeps layers of an int8 model in float; it cannot with --mode {mode}"
        )
    if io_type not in ("int8", "float32"):
        raise ConfigError(f"--fallback auto makes models with --io int8 or --io float32, not --io {io_type}")
    if gate is None:
        raise ConfigError(
            "--fallback auto needs the quality gate to know when to stop: --eval with labelled held-out data "
            "of a classifier or a regression model, without --no-gate"
        )


def fallback_failure(gate: dict[str, Any] | None, record: dict[str, Any], out: Any) -> str:
    """The error when --fallback auto ran and the gate still fails: all-float or the budget spent."""
    from converter.evaluate import gate_failure

    assert gate is not None
    layers = record["float_layers"]
    drop = gate_failure(gate)
    kept = f"{out} and its manifest were written (the last mix) and marked failed"
    if record["all_float"]:
        return (
            f"quality gate failed even with every quantized layer in float ({len(layers)} layers): {drop}; "
            f"{kept}. What is left in int8 is the input and output quantization and the calibration ranges: "
            "check that --calib holds typical inputs preprocessed exactly as in training, try --io float32, "
            "or --mode float16"
        )
    return (
        f"quality gate failed with --fallback auto: {len(layers)} layer(s) kept in float "
        f"({', '.join(layers)}; the budget, --max-float-layers {record['max_float_layers']}) and still "
        f"{drop}; "
        f"{kept}. Allow more with --max-float-layers N, or try --mode int16x8 or --mode float16"
    )


@dataclass(frozen=True)
class FallbackStep:
    float_layers: list[str]  # readable names, in the order they were moved to float
    passed: bool
    accuracy: float | None = None  # a classifier's
    accuracy_drop_points: float | None = None
    mae: float | None = None  # a regression model's mean absolute error on --eval
    error_increase: float | None = None  # over the float model's

    def record(self) -> dict[str, Any]:
        """The manifest's ``fallback.steps`` entry: the measures this task has."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        if self.accuracy_drop_points is not None:
            return f"accuracy drop {self.accuracy_drop_points:.2f} points"
        return f"mean abs error {self.mae:.4g} (rise {self.error_increase:.4g})"


@dataclass
class Fallback:
    model: bytes  # the last model tried: the first that passed the gate, else the one with most float layers
    float_nodes: list[str]
    float_layers: list[str]
    steps: list[FallbackStep] = field(default_factory=list)
    all_float: bool = False  # every quantized layer was tried in float

    @property
    def passed(self) -> bool:
        return bool(self.steps) and self.steps[-1].passed


def fall_back(
    model: FloatModel,
    calibration: np.ndarray,
    held_out: Labelled,
    gate: Gate,
    max_float_layers: int,
    int8_io: bool,
    progress: Callable[[str], None] | None = None,
) -> Fallback:
    """Keep layers in float one at a time, each step the one whose fallback brings the output on the
    calibration samples closest to float (the diagnosis's ranking, redone on the current mix), until the
    mix passes ``gate`` (converter.evaluate.Gate: a classifier's accuracy drop, a regression model's error
    rise) on ``held_out``, or ``max_float_layers`` are float."""
    debugger = Debugger(model, calibration, calibration[:PROBE_SAMPLES], int8_io)
    candidates = {layer.node: layer.layer for layer in debugger.layer_errors()}
    judge = (
        _accuracy_fn(model, held_out, gate) if gate.metric == "accuracy" else _Error.of(model, held_out, gate)
    )
    chosen: list[str] = []
    current = debugger.model()
    result = Fallback(model=current, float_nodes=[], float_layers=[])
    while True:
        names = [candidates[n] for n in chosen]
        step = judge.step(current, names)
        result.steps.append(step)
        result.model, result.float_nodes, result.float_layers = current, list(chosen), names
        if progress is not None:
            mix = ", ".join(names) if names else "none"
            progress(f"fallback step {len(chosen)}: float layers {mix}: {step.describe()}")
        if step.passed or len(chosen) >= max_float_layers:
            return result
        best: tuple[float, str, bytes] | None = None
        for node in candidates:
            if node in chosen:
                continue
            try:
                mixed = debugger.model([*chosen, node])
            except Exception:  # this op cannot stay in float here: skip it
                continue
            diff = debugger.output_diff(mixed)
            if best is None or diff < best[0]:
                best = (diff, node, mixed)
        if best is None:
            result.all_float = True
            return result
        chosen.append(best[1])
        current = best[2]
        if len(chosen) == len(candidates):
            result.all_float = True


@dataclass(frozen=True)
class _Accuracy:
    """Top-1 accuracy of a .tflite on labelled data; the float model's answers computed once."""

    x: np.ndarray
    y: np.ndarray
    float_top: np.ndarray
    gate: Gate | None = None  # --fallback auto's steps are judged by it

    def __call__(self, model: bytes) -> float:
        out = LiteModel(model).predict(self.x)[0]
        return round(float(np.mean(out.reshape(len(self.x), -1).argmax(axis=1) == self.y)), 6)

    def step(self, model: bytes, names: list[str]) -> FallbackStep:
        assert self.gate is not None, "only --fallback auto's accuracy judges steps"
        acc = self(model)
        drop = round((float(np.mean(self.float_top == self.y)) - acc) * 100, 4)
        return FallbackStep(names, self.gate.drop_passes(drop), accuracy=acc, accuracy_drop_points=drop)


@dataclass(frozen=True)
class _Error:
    """A regression model's mean absolute error on labelled data, judged by the quality gate against the
    float model's (converter.evaluate.Gate.error_rise)."""

    x: np.ndarray
    y: np.ndarray
    mae_float: float
    gate: Gate

    @staticmethod
    def of(model: FloatModel, held_out: Labelled, gate: Gate) -> _Error:
        from converter.evaluate import missing_targets, regression_targets

        float_out = model.predict(held_out.x)[0].reshape(len(held_out.x), -1)
        y = regression_targets(held_out, float_out)
        if y is None:
            raise missing_targets(held_out.source)
        return _Error(held_out.x, y, float(np.mean(np.abs(float_out - y))), gate)

    def step(self, model: bytes, names: list[str]) -> FallbackStep:
        lite = LiteModel(model)
        mae = float(np.mean(np.abs(lite.predict(self.x)[0].reshape(self.y.shape) - self.y)))
        increase, _, passed = self.gate.error_rise(self.mae_float, mae, float(lite.outputs[0].scale or 0.0))
        return FallbackStep(names, passed, mae=round(mae, 6), error_increase=round(increase, 6))


def _accuracy_fn(model: FloatModel, held_out: Labelled | None, gate: Gate | None = None) -> _Accuracy | None:
    if held_out is None:
        return None
    from converter.evaluate import class_targets

    float_out = model.predict(held_out.x)[0].reshape(len(held_out.x), -1)
    y = class_targets(held_out.y, float_out.shape[1], held_out.source)
    return _Accuracy(held_out.x, y, float_out.argmax(axis=1), gate)


def _dataset(samples: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def dataset() -> Iterator[list[np.ndarray]]:
        for sample in samples:
            yield [np.asarray(sample, dtype=np.float32)[None]]

    return dataset


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The debugger runs tf.lite.Interpreter (a deprecation warning each time) and the converter, which
    print from C++ to fds 1 and 2."""
    with captured_fds(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
