"""``edge-convert explain`` and ``quantize --fallback auto`` on the digits CNN whose int8 model collapses
(converter/examples.py: a few huge channels in one hidden layer), run as a user would: the real CLI in a
child process, real TensorFlow and ai-edge-litert, and the mixed model run by ``edge-agent run`` against a
real mosquitto."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.daemon_harness import Agents, results, write_config
from tests.fixtures.broker import validate_payload
from tests.fixtures.digits import ConvertRun, DigitsData, run_edge_convert
from tests.test_convert_cli import assert_clean, validate_manifest

# The collapsed model: float 96.9%, full int8 ~10%; keeping its second conv ("conv", which reads the huge
# channels) and then "outliers" (which makes them) in float gives the float accuracy back.
BAD_LAYER = "conv"
ACCURACY_FLOOR = 0.90  # on the rendered video, as the int8 digits model in test_daemon.py


def _quantize_args(model: Path, data: DigitsData, out: Path, calib: Path | None = None) -> list:
    return ["quantize", model, "-o", out, "--calib", calib or data.train, "--eval", data.test,
            "--labels", data.labels, "--fallback", "auto"]  # fmt: skip


@pytest.fixture(scope="module")
def fallback_run(digits_outliers, digits_split, tmp_path_factory) -> ConvertRun:
    out = tmp_path_factory.mktemp("fallback") / "collapsed.tflite"
    proc = run_edge_convert(*_quantize_args(digits_outliers["collapsed"], digits_split, out))
    assert_clean(proc)
    return ConvertRun(out, out.with_suffix(".json"), proc.stdout, proc.stderr)


def test_explain_sorts_layers_and_names_the_bad_one(digits_outliers, digits_split, tmp_path):
    report = tmp_path / "explain.json"
    proc = run_edge_convert(
        "explain", digits_outliers["collapsed"], "--calib", digits_split.train, "--eval", digits_split.test,
        "--json", report,
    )  # fmt: skip
    assert_clean(proc)
    found = json.loads(report.read_text())
    layers = found["layers"]
    assert layers[0]["layer"] == BAD_LAYER, layers
    diffs = [layer["output_diff_if_float"] for layer in layers]
    assert diffs == sorted(diffs)  # worst (the one whose fallback helps most) first
    assert diffs[0] < found["output_diff_int8"] * 0.75 and layers[0]["accuracy_if_float"] > 0.8
    assert found["accuracy_int8"] < 0.5 < found["accuracy_float"]
    assert {"node", "op", "scale", "rmse_steps", "max_abs_error"} <= set(layers[0])
    first_row = next(line for line in proc.stdout.splitlines() if line.startswith("1 "))
    assert first_row.split()[1] == BAD_LAYER and "CONV_2D" in first_row


def test_fallback_recovers_the_collapsed_model(fallback_run: ConvertRun):
    manifest = validate_manifest(fallback_run.manifest)
    fallback, evaluation = manifest["fallback"], manifest["evaluation"]
    assert fallback["passed"] and not fallback["all_float"]
    assert fallback["float_layers"][0] == BAD_LAYER and len(fallback["float_layers"]) <= 3
    assert len(fallback["float_nodes"]) == len(fallback["float_layers"])
    steps = fallback["steps"]
    assert steps[0]["float_layers"] == [] and steps[0]["accuracy_drop_points"] > 50 and not steps[0]["passed"]
    assert [len(s["float_layers"]) for s in steps] == list(range(len(steps)))  # one layer per step
    assert steps[-1]["passed"] and all(not s["passed"] for s in steps[:-1])
    assert evaluation["gate"]["passed"] and evaluation["accuracy_drop_points"] <= 1.0
    sizes = fallback["size_bytes"]
    assert sizes["int8"] < sizes["mixed"] < sizes["float32"]
    assert sizes["mixed"] == fallback_run.tflite.stat().st_size == evaluation["size_bytes"]["tflite"]
    assert set(fallback["latency_ms"]) == {"float32", "int8", "mixed"}
    assert manifest["inputs"][0]["dtype"] == "int8"  # still an integer model at its edges
    out = fallback_run.stdout
    assert "fallback: full int8 failed the quality gate" in out and "the gate passed" in out
    assert "int8 + " in out and "float layers" in out


def test_mixed_model_runs_on_the_device_runtime(fallback_run: ConvertRun, digits_split: DigitsData):
    """ai-edge-litert, loaded as the device loads it, gives the accuracy the converter measured."""
    from edge_agent.processing.postprocess import PostContext, create_postprocessor
    from edge_agent.runtime import load_model
    from edge_agent.runtime.config import ModelConfig

    model = load_model(ModelConfig(path=fallback_run.tflite))
    assert model.backend == "litert"
    post = create_postprocessor(model.manifest)
    quant = model.manifest.inputs[0].quantization
    data = np.load(digits_split.test)
    correct = 0
    for x, y in zip(data["x"], data["y"], strict=True):
        q = np.clip(np.rint(x / quant.scale + quant.zero_point), -128, 127).astype(np.int8)
        correct += post(model.invoke(q[None]), PostContext()).label == str(y)
    measured = validate_manifest(fallback_run.manifest)["evaluation"]["accuracy_quantized"]
    assert correct / len(data["y"]) == pytest.approx(measured, abs=0.005)


def test_edge_agent_runs_the_mixed_model(
    fallback_run: ConvertRun, tmp_path, mosquitto, subscriber, digits_video
):
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pipeline = {"name": "mixed", "source": {"type": "camera", "url": str(digits_video.path)},
                "model": {"path": str(fallback_run.tflite)}, "publish": {"qos": 1}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        assert agent.wait(120) == 0, agent.log()  # a finite video: the run ends by itself
        got = agent.expect(sub, lambda m: len(results(m)) >= len(digits_video.labels), timeout=20)
    got = results(got)
    correct = 0
    for r in got:
        validate_payload(r, "result")
        correct += r["label"] == digits_video.labels[r["frame"]]
    assert correct / len(got) >= ACCURACY_FLOOR, f"accuracy {correct}/{len(got)}"


def test_fallback_exits_with_the_gate_code_when_even_all_float_fails(digits_outliers, digits_split, tmp_path):
    """Calibration data with a few samples 400 times too bright: the int8 input tensor's scale leaves
    typical inputs one or two steps, which no float layer can undo."""
    train = np.load(digits_split.train)
    x = train["x"].copy()
    x[:20] *= 400
    calib = tmp_path / "too_bright.npz"
    np.savez(calib, x=x)
    out = tmp_path / "bad.tflite"
    args = _quantize_args(digits_outliers["lossy"], digits_split, out, calib)
    proc = run_edge_convert(*args, "--max-float-layers", "20", "--scale", "1/255")
    assert_clean(proc, ok=False)
    assert proc.returncode == 8, proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:"))
    assert "even with every quantized layer in float" in error and "--io float32" in error
    fallback = validate_manifest(out.with_suffix(".json"))["fallback"]
    assert fallback["all_float"] and not fallback["passed"]
    assert validate_manifest(out.with_suffix(".json"))["evaluation"]["gate"]["passed"] is False


def test_fallback_budget_spent_says_so(digits_outliers, digits_split, tmp_path):
    out = tmp_path / "budget.tflite"
    args = _quantize_args(digits_outliers["collapsed"], digits_split, out)
    proc = run_edge_convert(*args, "--max-float-layers", "1")
    assert proc.returncode == 8, proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:"))
    assert "--max-float-layers 1" in error and BAD_LAYER in error
    fallback = validate_manifest(out.with_suffix(".json"))["fallback"]
    assert fallback["float_layers"] == [BAD_LAYER] and not fallback["passed"] and not fallback["all_float"]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("calib", [None, "random"])
def test_explain_without_calibration_data_is_a_clear_error(calib, tmp_path):
    args = ["explain", tmp_path / "model.keras"] + (["--calib", calib] if calib else [])
    proc = run_edge_convert(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-convert: error:")
    assert "explain needs calibration data: --calib" in lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-float-layers", "2"], "add --fallback auto"),
        (["--fallback", "auto", "--mode", "float16"], "cannot with --mode float16"),
        (["--fallback", "auto", "--io", "uint8"], "not --io uint8"),
        (["--fallback", "auto", "--no-gate"], "needs the quality gate"),
    ],
)
def test_fallback_options_that_cannot_work(extra, message, digits_split, tmp_path):
    args = ["quantize", tmp_path / "model.keras", "-o", tmp_path / "m.tflite", "--calib", digits_split.train,
            "--eval", digits_split.test, *extra]  # fmt: skip
    proc = run_edge_convert(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr


def test_layer_names_come_from_the_keras_scope():
    from converter.diagnosis import layer_name

    assert layer_name("m_1/m_1/outliers_1/Relu;m_1/m_1/outliers_1/BiasAdd", "CONV_2D") == "outliers"
    assert layer_name("seq/dense/MatMul", "FULLY_CONNECTED") == "dense"
    assert layer_name("StatefulPartitionedCall_1:0", "SOFTMAX") == "softmax (model output)"


# -------------------------------------------------------------------------------- a regression model


@pytest.fixture(scope="module")
def outlier_regression(tmp_path_factory) -> Path:
    """``y = a + b`` through a hidden layer ("spread") with a third unit carrying ``1000 * c`` that the next
    layer ("sum") ignores, as the outlier digits CNN's huge channels: int8 quantizes spread's output per
    tensor, so that unit's range leaves ``a`` and ``b`` no resolution, whatever the calibration. Keeping
    spread and sum in float gives it back. Targets carry sensor noise."""
    import keras

    folder = tmp_path_factory.mktemp("outlier-regression")
    spread = np.zeros((3, 3), np.float32)
    spread[0, 0], spread[1, 1], spread[2, 2] = 1.0, 1.0, 1000.0
    total = np.zeros((3, 2), np.float32)
    total[0, 0], total[1, 0], total[0, 1] = 1.0, 1.0, 1.0
    layers = [keras.layers.Dense(3, name="spread"), keras.layers.Dense(2, name="sum"), keras.layers.Dense(1)]
    model = keras.Sequential([keras.Input((3,)), *layers])
    model.layers[0].set_weights([spread, np.zeros(3, np.float32)])
    model.layers[1].set_weights([total, np.zeros(2, np.float32)])
    model.layers[2].set_weights([np.array([[1.0], [0.0]], np.float32), np.zeros(1, np.float32)])
    model.save(folder / "outliers.keras")
    rng = np.random.default_rng(5)
    x = rng.random((400, 3)).astype(np.float32)
    y = x[:, :2].sum(axis=1, keepdims=True) + rng.normal(0, 0.02, (400, 1)).astype(np.float32)
    np.save(folder / "calib.npy", x[:200])
    np.savez(folder / "eval.npz", x=x[200:], y=y[200:])
    return folder / "outliers.keras"


@pytest.mark.slow  # TensorFlow makes the model
def test_fallback_recovers_a_regression_model_by_its_error(outlier_regression: Path, tmp_path: Path) -> None:
    """The regression gate (mean absolute error at most 10% above float's) fails the full int8 model; the
    search keeps layers in float until it passes, and the manifest's steps carry the error, not accuracy."""
    folder, out = outlier_regression.parent, tmp_path / "m.tflite"
    args = ["quantize", outlier_regression, "-o", out, "--task", "regression",
            "--calib", folder / "calib.npy", "--eval", folder / "eval.npz"]  # fmt: skip
    plain = run_edge_convert(*args)
    assert_clean(plain, ok=False)
    assert plain.returncode == 8 and "mean absolute error rose by" in plain.stderr
    proc = run_edge_convert(*args, "--fallback", "auto")
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    fallback, evaluation = manifest["fallback"], manifest["evaluation"]
    steps = fallback["steps"]
    assert steps[0]["float_layers"] == [] and not steps[0]["passed"]
    assert steps[0]["error_increase"] > 10 * evaluation["mae_float"], steps[0]
    assert steps[-1]["passed"] and all(not s["passed"] for s in steps[:-1])
    assert all("accuracy" not in s and {"mae", "error_increase"} <= set(s) for s in steps)
    assert fallback["passed"] and evaluation["gate"]["passed"]
    assert evaluation["mae_quantized"] <= evaluation["mae_float"] * 1.1 + 0.01
    assert "step  float layers" in proc.stdout and "mean abs error" in proc.stdout, proc.stdout
