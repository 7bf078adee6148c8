"""edge-convert end to end: real Keras models, real TensorFlow conversion, results run on ai-edge-litert.

Every conversion goes through the CLI in a child process, as a user runs it. Converted models are
shared through session fixtures so each mode is converted once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edge_agent.manifest import SCHEMA_FILE, load_manifest
from tests.fixtures.digits import ConvertRun, DigitsData, run_edge_convert

pytestmark = pytest.mark.slow

TF_NOISE = (
    "Saved artifact",
    "I0000",
    "W0000",
    "oneDNN",
    "XNNPACK",
    "absl",
    "Statistics for quantized",
    "WARNING",
)


def validate_manifest(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(manifest)
    load_manifest(path)  # the device's reader: schema model + sha256 of the model file
    return manifest


def assert_clean(proc, *, ok: bool = True) -> None:
    """No traceback and none of TensorFlow's chatter in what the user sees."""
    for text in (proc.stdout, proc.stderr):
        assert "Traceback" not in text
        for noise in TF_NOISE:
            assert noise not in text, f"{noise!r} leaked into the output:\n{text}"
    if ok:
        assert proc.returncode == 0, proc.stderr


def litert_accuracy(tflite: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Accuracy of a .tflite on ai-edge-litert, fed by the manifest's own quantization parameters."""
    from ai_edge_litert.interpreter import Interpreter

    manifest = json.loads(tflite.with_suffix(".json").read_text())
    spec_in, spec_out = manifest["inputs"][0], manifest["outputs"][0]
    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert spec_in["dtype"] == np.dtype(inp["dtype"]).name and spec_in["shape"] == inp["shape"].tolist()
    predictions = []
    for sample in x:
        value = sample[None]
        if spec_in.get("quantization"):
            q = spec_in["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.rint(value / q["scale"]) + q["zero_point"], info.min, info.max)
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        if spec_out.get("quantization"):
            raw = (raw - spec_out["quantization"]["zero_point"]) * spec_out["quantization"]["scale"]
        predictions.append(raw)
    predictions = np.array(predictions)
    return float(np.mean(predictions.argmax(axis=1) == y)), predictions


@pytest.fixture(scope="session")
def digits_test_arrays(digits_split: DigitsData) -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits_split.test) as data:
        return data["x"], data["y"]


@pytest.fixture(scope="session")
def float_accuracy(digits_keras: Path, digits_test_arrays) -> tuple[float, np.ndarray]:
    import keras

    model = keras.models.load_model(digits_keras, compile=False)
    x, y = digits_test_arrays
    probabilities = np.asarray(model.predict(x, verbose=0))
    return float(np.mean(probabilities.argmax(axis=1) == y)), probabilities.argmax(axis=1)


# -------------------------------------------------------------------------------- the done-when command


def test_int8_meets_targets(digits_int8_run: ConvertRun, digits_test_arrays, float_accuracy):
    """The README's command: int8 <= 30% of the float32 TFLite, agreement >= 99%, drop <= 1 point."""
    assert_clean(
        type("P", (), {"stdout": digits_int8_run.stdout, "stderr": digits_int8_run.stderr, "returncode": 0})
    )
    manifest = validate_manifest(digits_int8_run.manifest)
    assert manifest["mode"] == "int8" and manifest["task"] == "classification"
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["inputs"][0]["dtype"] == "int8" and manifest["inputs"][0]["kind"] == "image"
    assert manifest["outputs"][0]["role"] == "probabilities"
    assert manifest["preprocess"]["color"] == "gray" and manifest["preprocess"]["resize"] == "stretch"
    assert manifest["preprocess"]["scale"] == pytest.approx(1 / 255)
    ev = manifest["evaluation"]
    assert ev["size_ratio"] <= 0.30
    assert ev["top1_agreement"] >= 0.99 and ev["accuracy_drop_points"] <= 1.0
    assert manifest["calibration"]["samples"] == 300
    assert manifest["converter"]["tensorflow"].startswith("2.")

    # the printed summary states the ratio and the accuracies the manifest holds
    out = digits_int8_run.stdout
    ratio = float(re.search(r"([\d.]+)% of float32", out).group(1))
    assert ratio == pytest.approx(ev["size_ratio"] * 100, abs=0.1)
    assert f"{ev['top1_agreement'] * 100:.2f}%" in out and "latency" in out

    # independent check on ai-edge-litert: accuracy and agreement with the Keras model
    x, y = digits_test_arrays
    quant_acc, probs = litert_accuracy(digits_int8_run.tflite, x, y)
    float_acc, float_top = float_accuracy
    assert quant_acc == pytest.approx(ev["accuracy_quantized"], abs=1e-6)
    assert np.mean(probs.argmax(axis=1) == float_top) >= 0.99
    assert float_acc - quant_acc <= 0.01
    assert float_acc >= 0.93


def test_int8_manifest_carries_golden_samples_the_device_reproduces(digits_int8_run: ConvertRun) -> None:
    """--eval stores 4 golden samples (quantized inputs, the quantized model's outputs); the device's runtime
    reproduces them, and a model whose outputs moved by 3 quantization steps does not."""
    from edge_agent.fleet import golden as golden_mod
    from edge_agent.fleet.errors import DeployRefused
    from edge_agent.runtime import load_model
    from edge_agent.runtime.config import ModelConfig

    manifest = load_manifest(digits_int8_run.manifest)
    assert manifest.golden is not None and len(manifest.golden.samples) == 4
    assert json.loads(digits_int8_run.manifest.read_text())["evaluation"]["golden_samples"] == 4
    assert "golden samples: 4 stored in the manifest" in digits_int8_run.stdout
    model = load_model(ModelConfig(path=digits_int8_run.tflite))
    try:
        names = {o.role: o.name for o in manifest.outputs}

        def invoke(x: np.ndarray) -> dict[str, np.ndarray]:
            return {names[role]: v for role, v in model.invoke(x).items()}

        golden_mod.run_golden(manifest.golden, manifest, invoke)
        out = manifest.outputs[0]
        sample = manifest.golden.samples[1]
        moved = [v + 3 * out.quantization.scale for v in sample.outputs[out.name]]
        moved_sample = sample.model_copy(update={"outputs": {out.name: moved}})
        bad = manifest.golden.model_copy(update={"samples": [moved_sample]})
        with pytest.raises(DeployRefused, match="golden sample 0: output"):
            golden_mod.run_golden(bad, manifest, invoke)
    finally:
        model.close()


# -------------------------------------------------------------------------------- every mode


@pytest.mark.parametrize(
    ("mode", "io", "input_dtype"),
    [
        ("float32", None, "float32"),
        ("float16", None, "float32"),
        ("dynamic", None, "float32"),
        ("int16x8", None, "int16"),
        ("int8", "uint8", "uint8"),
        ("int8", "float32", "float32"),
    ],
)
def test_every_mode_runs_on_litert(
    mode, io, input_dtype, digits_keras, digits_split, digits_test_arrays, float_accuracy, tmp_path
):
    out = tmp_path / f"digits-{mode}.tflite"
    args = ["quantize", digits_keras, "-o", out, "--mode", mode, "--labels", digits_split.labels]
    args += ["--calib", digits_split.train, "--eval", digits_split.test, "--calib-samples", "100"]
    args += ["--max-accuracy-drop", "1"]
    if io:
        args += ["--io", io]
    proc = run_edge_convert(*args)
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    assert manifest["mode"] == mode and manifest["inputs"][0]["dtype"] == input_dtype
    assert ("quantization" in manifest["inputs"][0]) == (input_dtype != "float32")
    assert manifest["evaluation"]["gate"]["passed"] is True and "PASSED" in proc.stdout
    x, y = digits_test_arrays
    accuracy, probs = litert_accuracy(out, x, y)
    assert float_accuracy[0] - accuracy <= 0.01
    assert np.mean(probs.argmax(axis=1) == float_accuracy[1]) >= 0.99


def test_calibration_modes_refuse_without_data_and_random_warns(digits_keras, tmp_path):
    out = tmp_path / "m.tflite"
    proc = run_edge_convert("quantize", digits_keras, "-o", out)
    assert_clean(proc, ok=False)
    assert (
        proc.returncode == 2 and "needs calibration data" in proc.stderr and "--calib random" in proc.stderr
    )
    assert not out.exists()

    proc = run_edge_convert("quantize", digits_keras, "-o", out, "--mode", "int16x8", "--calib", "random")
    assert_clean(proc)
    assert "accuracy of this model is unknown" in proc.stderr
    assert validate_manifest(out.with_suffix(".json"))["calibration"]["format"] == "random"


# -------------------------------------------------------------------------------- quality gate


def test_quality_gate_failure_keeps_files_and_marks_manifest(digits_keras, digits_split, tmp_path):
    out = tmp_path / "gated.tflite"
    proc = run_edge_convert(
        "quantize", digits_keras, "-o", out, "--calib", digits_split.train, "--calib-samples", "100",
        "--eval", digits_split.test, "--max-accuracy-drop", "-1",
    )  # fmt: skip
    assert_clean(proc, ok=False)
    assert proc.returncode == 8
    assert "quality gate failed" in proc.stderr and "allowed -1" in proc.stderr
    assert "FAILED" in proc.stdout
    assert out.is_file()
    gate = validate_manifest(out.with_suffix(".json"))["evaluation"]["gate"]
    assert gate == {"max_accuracy_drop_points": -1.0, "accuracy_drop_points": gate["accuracy_drop_points"],
                    "passed": False}  # fmt: skip
    # (a gate that passes is checked in test_every_mode_runs_on_litert)


# -------------------------------------------------------------------------------- other model formats


@pytest.fixture(scope="session")
def digits_saved_models(digits_keras: Path, tmp_path_factory) -> dict[str, Path]:
    """The digits model as SavedModel directories, the two ways users make them with TensorFlow 2."""
    import keras
    import tensorflow as tf

    base = tmp_path_factory.mktemp("saved")
    model = keras.models.load_model(digits_keras, compile=False)
    model.export(base / "export", verbose=False)
    tf.saved_model.save(model, str(base / "tf_saved"))
    model.save(base / "digits.h5")
    return {"export": base / "export", "tf_saved": base / "tf_saved", "h5": base / "digits.h5"}


@pytest.fixture(scope="module")
def lossy_no_gate(digits_outliers, digits_split, tmp_path_factory) -> ConvertRun:
    """The lossy outlier model converted with --no-gate: the measured int8 accuracy drop."""
    out = tmp_path_factory.mktemp("lossy") / "lossy.tflite"
    proc = run_edge_convert(*_outlier_args(digits_outliers["lossy"], digits_split, out), "--no-gate")
    assert_clean(proc)
    return ConvertRun(out, out.with_suffix(".json"), proc.stdout, proc.stderr)


def _outlier_args(model: Path, data: DigitsData, out: Path) -> list:
    return ["quantize", model, "-o", out, "--calib", data.train, "--eval", data.test, "--labels", data.labels]


def test_no_gate_evaluates_without_gating(lossy_no_gate: ConvertRun):
    evaluation = validate_manifest(lossy_no_gate.manifest)["evaluation"]
    assert evaluation["accuracy_drop_points"] > 1.5  # int8 really loses accuracy on this model
    assert "gate" not in evaluation
    assert re.search(r"quality gate\s+OFF\s+--no-gate", lossy_no_gate.stdout)


@pytest.mark.parametrize(("margin", "passes"), [(0.5, True), (-0.5, False)])
def test_gate_on_both_sides_of_the_measured_drop(
    margin, passes, lossy_no_gate, digits_outliers, digits_split, tmp_path
):
    drop = validate_manifest(lossy_no_gate.manifest)["evaluation"]["accuracy_drop_points"]
    out = tmp_path / "gated.tflite"
    args = _outlier_args(digits_outliers["lossy"], digits_split, out)
    proc = run_edge_convert(*args, "--max-accuracy-drop", f"{drop + margin:.4f}")
    assert_clean(proc, ok=passes)
    assert proc.returncode == (0 if passes else 8), proc.stderr
    assert ("PASSED" if passes else "FAILED") in proc.stdout
    gate = validate_manifest(out.with_suffix(".json"))["evaluation"]["gate"]
    assert gate == {"max_accuracy_drop_points": pytest.approx(drop + margin), "accuracy_drop_points": drop,
                    "passed": passes}  # fmt: skip


def test_default_gate_fails_a_collapsed_model_loudly(digits_outliers, digits_split, tmp_path):
    """With --eval and no gate option the gate is on at 1 point; a collapse is said in the table and on
    stderr with the next step; files are kept and the manifest says the gate failed."""
    out = tmp_path / "collapsed.tflite"
    proc = run_edge_convert(*_outlier_args(digits_outliers["collapsed"], digits_split, out))
    assert_clean(proc, ok=False)
    assert proc.returncode == 8
    assert out.is_file() and out.with_suffix(".json").is_file()
    gate = validate_manifest(out.with_suffix(".json"))["evaluation"]["gate"]
    assert gate["passed"] is False and gate["max_accuracy_drop_points"] == 1.0
    assert gate["accuracy_drop_points"] > 50
    assert re.search(r"answers vs float\s+COLLAPSED", proc.stdout) and "FAILED" in proc.stdout
    assert "COLLAPSED: the int8 model's answers collapsed" in proc.stdout
    warning = next(line for line in proc.stderr.splitlines() if "collapsed" in line)
    assert warning.startswith("edge-convert: warning:") and "--mode dynamic" in warning
    error = next(line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:"))
    assert "quality gate failed" in error and "allowed 1" in error and "--no-gate" in error


@pytest.mark.parametrize("kind", ["export", "tf_saved", "h5"])
def test_saved_model_and_h5_convert(
    kind, digits_saved_models, digits_split, digits_test_arrays, float_accuracy, tmp_path
):
    out = tmp_path / f"{kind}.tflite"
    proc = run_edge_convert(
        "quantize", digits_saved_models[kind], "-o", out, "--calib", digits_split.train,
        "--calib-samples", "100", "--eval", digits_split.test, "--labels", digits_split.labels,
    )  # fmt: skip
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    assert manifest["outputs"][0]["role"] == "probabilities"  # from the outputs summing to 1 for SavedModels
    assert manifest["evaluation"]["top1_agreement"] >= 0.99
    x, y = digits_test_arrays
    accuracy, _ = litert_accuracy(out, x, y)
    assert float_accuracy[0] - accuracy <= 0.01


def test_image_folder_calibration_and_evaluation(digits_keras, digits_split, tmp_path):
    """Calibrate and evaluate from image files, preprocessed by the device's own preprocessing."""
    import cv2

    from converter.examples import digit_frame

    for name, folder in (("train", "calib"), ("test", "eval")):
        with np.load(getattr(digits_split, name)) as data:
            for i, (x, y) in enumerate(zip(data["x"][:200], data["y"][:200], strict=True)):
                (tmp_path / folder / str(y)).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(tmp_path / folder / str(y) / f"{i}.png"), digit_frame(x))
    (tmp_path / "calib" / "notes.txt").write_text("not an image: skipped")
    out = tmp_path / "img.tflite"
    proc = run_edge_convert(
        "quantize", digits_keras, "-o", out, "--calib", tmp_path / "calib", "--scale", "1/255",
        "--eval", tmp_path / "eval", "--labels", digits_split.labels,
    )  # fmt: skip
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    assert manifest["calibration"]["format"] == "images" and manifest["calibration"]["samples"] == 200
    assert manifest["calibration"]["min"] >= 0.0 and manifest["calibration"]["max"] <= 1.0
    assert manifest["evaluation"]["samples"] == 200
    assert manifest["evaluation"]["top1_agreement"] >= 0.99
    assert manifest["evaluation"]["accuracy_drop_points"] <= 1.0


# -------------------------------------------------------------------------------- output roles


@pytest.fixture(scope="session")
def small_models(tmp_path_factory) -> dict[str, Path]:
    """Tensor-input models for the non-image tasks: logits, regression, autoencoder, and an LSTM."""
    import keras

    keras.utils.set_random_seed(0)
    base = tmp_path_factory.mktemp("small")
    inp = keras.Input((6,))
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inp))).save(
        base / "logits.keras"
    )
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(base / "regression.keras")
    hidden = keras.layers.Dense(3, activation="relu")(inp)
    keras.Model(inp, keras.layers.Dense(6)(hidden)).save(base / "autoencoder.keras")
    seq = keras.Input((10, 3))
    keras.Model(seq, keras.layers.Dense(2)(keras.layers.LSTM(4)(seq))).save(base / "lstm.keras")
    image = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    keras.Model(image, keras.layers.Dense(3, activation="softmax")(pooled)).save(base / "dynamic.keras")
    scene = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(scene)
    keras.Model(scene, keras.layers.Conv2D(2, 1, activation="softmax")(features)).save(
        base / "segmentation.keras"
    )
    rng = np.random.default_rng(0)
    np.save(base / "rows.npy", rng.standard_normal((60, 6)).astype(np.float32))
    np.savetxt(
        base / "rows.csv", rng.standard_normal((60, 6)), delimiter=",", header="a,b,c,d,e,f", comments=""
    )
    np.save(base / "seq.npy", rng.standard_normal((30, 10, 3)).astype(np.float32))
    y = rng.integers(0, 3, 60)
    np.savez(base / "labelled.npz", x=rng.standard_normal((60, 6)).astype(np.float32), y=y)
    return {p.stem if p.suffix == ".keras" else p.name: p for p in base.iterdir()}


@pytest.mark.parametrize(
    ("model", "task", "calib", "extra", "roles"),
    [
        ("logits", "classification", "rows.npy", [], ["logits"]),
        ("logits", "classification", "rows.npy", ["--output-role", "0=probabilities"], ["probabilities"]),
        ("regression", "regression", "rows.csv", [], ["values"]),
        ("autoencoder", "anomaly", "rows.npy", ["--postprocess", "threshold=0.25"], ["reconstruction"]),
        ("autoencoder", "anomaly", "rows.npy", [], ["reconstruction"]),
    ],
)
def test_output_roles(model, task, calib, extra, roles, small_models, tmp_path):
    out = tmp_path / "m.tflite"
    proc = run_edge_convert(
        "quantize", small_models[model], "-o", out, "--task", task, "--calib", small_models[calib], *extra
    )
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    assert [o["role"] for o in manifest["outputs"]] == roles
    assert manifest["inputs"][0]["kind"] == "tensor" and manifest["inputs"][0]["layout"] == "NC"
    assert "preprocess" not in manifest
    if task == "anomaly" and extra:
        assert manifest["postprocess"] == {"threshold": 0.25}
    elif task == "anomaly":  # 99th percentile of the calibration scores, computed like the device does
        threshold = manifest["postprocess"]["threshold"]
        assert manifest["calibration"]["anomaly_threshold"]["percentile"] == 99
        scores = device_anomaly_scores(out, np.load(small_models[calib]))
        assert np.mean(scores > threshold) == pytest.approx(0.01, abs=0.02)


def device_anomaly_scores(tflite: Path, x: np.ndarray) -> np.ndarray:
    """Scores from the device's own anomaly postprocessor (reconstruction MSE on the quantized input)."""
    from edge_agent.processing.postprocess import PostContext, create_postprocessor
    from edge_agent.runtime import load_model
    from edge_agent.runtime.config import ModelConfig

    model = load_model(ModelConfig(path=tflite))
    try:
        post = create_postprocessor(model.manifest)
        scores = []
        for sample in x:
            buffer = model.input_buffer()
            buffer[...] = model_input_quantized(model.input, sample).reshape(buffer.shape)
            result = post(model.invoke(), PostContext(model_input=buffer.copy()))
            scores.append(result.score)
        return np.array(scores)
    finally:
        model.close()


def model_input_quantized(spec, sample: np.ndarray) -> np.ndarray:
    if spec.quantization is None:
        return sample.astype(spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.rint(sample / spec.quantization.scale) + spec.quantization.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def test_dynamic_input_size_needs_input_shape(small_models, tmp_path):
    out = tmp_path / "dyn.tflite"
    proc = run_edge_convert("quantize", small_models["dynamic"], "-o", out, "--calib", "random")
    assert_clean(proc, ok=False)
    assert proc.returncode == 3 and "unknown dimensions" in proc.stderr and "--input-shape" in proc.stderr
    assert not out.exists()

    rng = np.random.default_rng(1)
    data = tmp_path / "eval.npz"  # class names as targets, mapped through --labels
    np.savez(data, x=rng.random((30, 16, 16, 3), dtype=np.float32), y=np.array(["cat", "dog", "owl"] * 10))
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nowl\n")
    proc = run_edge_convert(
        "quantize", small_models["dynamic"], "-o", out, "--calib", data, "--input-shape", "16,16,3",
        "--eval", data, "--labels", labels, "--mean", "127.5,127.5,127.5", "--std", "127.5", "--color", "bgr",
    )  # fmt: skip
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    assert manifest["inputs"][0]["shape"] == [1, 16, 16, 3] and manifest["inputs"][0]["kind"] == "image"
    assert manifest["preprocess"] == {
        "color": "bgr", "resize": "stretch", "scale": 1.0, "mean": [127.5] * 3, "std": [127.5],
    }  # fmt: skip
    assert manifest["evaluation"]["samples"] == 30 and manifest["evaluation"]["top1_agreement"] >= 0.9
    assert "calibration data eval.npz spans" in proc.stderr  # 0..1 data vs a -1..1 preprocessing: warned


def test_segmentation_mask_and_its_labels(small_models, tmp_path):
    out = tmp_path / "seg.tflite"
    labels = tmp_path / "labels.txt"
    labels.write_text("background\nroad\nsky\n")
    args = [
        "quantize",
        small_models["segmentation"],
        "-o",
        out,
        "--task",
        "segmentation",
        "--calib",
        "random",
    ]
    proc = run_edge_convert(*args, "--labels", labels)
    assert_clean(proc, ok=False)
    assert proc.returncode == 2 and "has 3 labels but the model outputs 2 classes" in proc.stderr
    assert not out.exists()
    labels.write_text("background\nroad\n")
    proc = run_edge_convert(*args, "--labels", labels, "--scale", "1/255")
    assert_clean(proc)
    manifest = validate_manifest(out.with_suffix(".json"))
    assert manifest["outputs"][0]["role"] == "mask" and manifest["outputs"][0]["shape"] == [1, 16, 16, 2]
    assert manifest["labels"] == ["background", "road"]


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("case", "code", "expected"),
    [
        ("not_a_model", 3, ["notes.keras", "not a Keras model"]),
        ("lstm", 3, ["lstm", "unroll=True"]),
        ("calib_shape", 4, ["calibration data", "seq.npy", "(10, 3)", "(None, 8, 8, 1)"]),
        ("eval_shape", 4, ["evaluation data", "labelled.npz", "(6)", "(None, 8, 8, 1)"]),
        ("label_count", 2, ["9 labels", "10 classes"]),
        ("eval_classes", 4, ["class indices range", "10 classes"]),
        ("out_missing_dir", 2, ["does not exist"]),
        ("out_parent_is_file", 2, ["not a directory"]),
        ("out_not_tflite", 2, ["must end in .tflite"]),
        ("io_for_float_mode", 2, ["--io int8 is not possible with --mode float16"]),
        ("gate_without_eval", 2, ["--max-accuracy-drop needs --eval"]),
    ],
)
def test_bad_input_one_clear_line(case, code, expected, digits_keras, digits_split, small_models, tmp_path):
    out = tmp_path / "out.tflite"
    model, calib = digits_keras, digits_split.train
    extra: list = []
    if case == "not_a_model":
        model = tmp_path / "notes.keras"
        model.write_text("these are my notes, not a model\n")
    elif case == "lstm":
        model, calib, extra = small_models["lstm"], small_models["seq.npy"], ["--task", "regression"]
    elif case == "calib_shape":
        calib = small_models["seq.npy"]
    elif case == "eval_shape":
        extra = ["--eval", small_models["labelled.npz"]]
    elif case == "label_count":
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(str(d) for d in range(9)) + "\n")
        extra = ["--labels", labels]
    elif case == "eval_classes":
        bad = tmp_path / "bad.npz"
        np.savez(bad, x=np.zeros((4, 8, 8, 1), np.float32), y=np.array([0, 1, 2, 12]))
        extra = ["--eval", bad]
    elif case == "out_missing_dir":
        out = tmp_path / "no" / "such" / "dir" / "out.tflite"
    elif case == "out_parent_is_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out.tflite"
    elif case == "out_not_tflite":
        out = tmp_path / "out.json"
    elif case == "io_for_float_mode":
        extra = ["--mode", "float16", "--io", "int8"]
    elif case == "gate_without_eval":
        extra = ["--max-accuracy-drop", "1"]
    proc = run_edge_convert("quantize", model, "-o", out, "--calib", calib, *extra)
    assert_clean(proc, ok=False)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    error_lines = [line for line in lines if line.startswith("edge-convert: error:")]
    assert len(error_lines) == 1, proc.stderr
    for text in expected:
        assert text in error_lines[0], error_lines[0]
    assert (
        sorted(p.name for p in tmp_path.rglob("*") if p.suffix in (".tflite", ".json") and "out" in p.name)
        == []
    )


# -------------------------------------------------------------------------------- evaluate and inspect


def test_evaluate_command(digits_keras, digits_int8, digits_split, tmp_path):
    report = tmp_path / "eval.json"
    proc = run_edge_convert(
        "evaluate", digits_keras, digits_int8, "--eval", digits_split.test, "--json", report
    )
    assert_clean(proc)
    result = json.loads(report.read_text())
    assert result["samples"] == 450 and result["top1_agreement"] >= 0.99
    assert 0 <= result["accuracy_drop_points"] <= 1.0
    assert result["size_bytes"]["tflite"] == digits_int8.stat().st_size
    assert result["size_bytes"]["float_model"] == digits_keras.stat().st_size
    assert result["latency_ms"]["tflite"] > 0 and result["latency_ms"]["float_model"] > 0
    assert 0 < result["output_mean_abs_diff"] <= result["output_max_abs_diff"] < 0.5
    for row in ("accuracy", "top-1 agreement", "output diff max", "file size", "latency (median)"):
        assert row in proc.stdout
    manifest = json.loads(digits_int8.with_suffix(".json").read_text())
    assert result["accuracy_quantized"] == manifest["evaluation"]["accuracy_quantized"]


def test_inspect_command(digits_int8, tmp_path):
    report = tmp_path / "inspect.json"
    proc = run_edge_convert("inspect", digits_int8, "--json", report)
    assert_clean(proc)
    info = json.loads(report.read_text())
    assert info["runs_on_litert"] is True and info["problems"] == []
    assert info["manifest_checks"] == {"schema": True, "sha256": True, "inputs": True, "outputs": True}
    assert (
        info["ops"]["CONV_2D"] == 2 and info["ops"]["FULLY_CONNECTED"] == 2 and "DELEGATE" not in info["ops"]
    )
    assert info["inputs"][0]["dtype"] == "int8" and info["inputs"][0]["quantization"]["zero_point"] == -128
    assert "CONV_2D" in proc.stdout and "sha256 ok" in proc.stdout

    # a manifest that no longer matches its model is reported and fails the command
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(digits_int8.read_bytes())
    manifest = json.loads(digits_int8.with_suffix(".json").read_text())
    manifest["sha256"] = "0" * 64
    manifest["inputs"][0]["shape"] = [1, 28, 28, 1]
    copy.with_suffix(".json").write_text(json.dumps(manifest))
    proc = run_edge_convert("inspect", copy)
    assert_clean(proc, ok=False)
    assert proc.returncode == 3
    assert "sha256 does not match" in proc.stderr and "inputs differ" in proc.stderr
    assert "sha256 MISMATCH" in proc.stdout

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0" * 64)
    proc = run_edge_convert("inspect", garbage)
    assert_clean(proc, ok=False)
    assert proc.returncode == 3 and "not a TFLite model" in proc.stderr


def test_verbose_shows_tensorflow_output(digits_keras, tmp_path):
    """The quiet default is real filtering: with --verbose TensorFlow's own lines come through."""
    out = tmp_path / "v.tflite"
    proc = run_edge_convert("--verbose", "quantize", digits_keras, "-o", out, "--mode", "float32")
    assert proc.returncode == 0, proc.stderr
    assert "Saved artifact" in proc.stdout + proc.stderr
    proc = run_edge_convert("quantize", digits_keras, "-o", out, "--mode", "dynamic", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "Saved artifact" in proc.stdout + proc.stderr


def test_device_runtime_reads_the_manifest_and_classifies_video(
    digits_int8, digits_video, digits_test_arrays
):
    """The contract end to end: the daemon's runtime and preprocessing, fed only the converted model and
    its manifest, classify rendered video frames as the converter's own int8 evaluation predicts."""
    import cv2

    from edge_agent.processing.postprocess import PostContext, create_postprocessor
    from edge_agent.processing.preprocess import ImagePreprocessor
    from edge_agent.runtime import load_model
    from edge_agent.runtime.config import ModelConfig

    model = load_model(ModelConfig(path=digits_int8))
    try:
        preprocess = ImagePreprocessor(model.input, model.manifest.preprocess)
        postprocess = create_postprocessor(model.manifest)
        capture = cv2.VideoCapture(str(digits_video.path))
        device_labels = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            transform = preprocess(frame, model.input_buffer())
            device_labels.append(postprocess(model.invoke(), PostContext(transform=transform)).label)
        capture.release()
    finally:
        model.close()
    assert len(device_labels) == len(digits_video.labels)
    x, _ = digits_test_arrays
    _, converter_probs = litert_accuracy(digits_int8, x[: len(device_labels)], np.zeros(len(device_labels)))
    converter_labels = [str(i) for i in converter_probs.argmax(axis=1)]
    agreement = np.mean([a == b for a, b in zip(device_labels, converter_labels, strict=True)])
    assert agreement >= 0.98  # MJPG rounding may flip a borderline digit, no more
    accuracy = np.mean([a == b for a, b in zip(device_labels, digits_video.labels, strict=True)])
    assert accuracy >= 0.93


# -------------------------------------------------------------------------------- the regression gate


@pytest.fixture(scope="session")
def sensor_regression(tmp_path_factory) -> dict[str, Path]:
    """``y = a + b`` from three sensor columns, the third unused: once normalized like the others (0..1),
    once left in its raw unit (0..1000, e.g. a pressure in Pa). int8 quantizes the input per tensor, so the
    raw column takes the whole range and a and b round to nothing; held-out targets carry sensor noise."""
    import keras

    base = tmp_path_factory.mktemp("sensor-regression")
    rng = np.random.default_rng(3)
    made = {}
    for name, third in (("normalized", 1.0), ("raw_unit", 1000.0)):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.layers[0].set_weights([np.array([[1.0], [1.0], [0.0]], np.float32), np.zeros(1, np.float32)])
        model.save(base / f"{name}.keras")
        x = rng.random((400, 3)).astype(np.float32) * np.array([1.0, 1.0, third], np.float32)
        y = x[:, :1] + x[:, 1:2] + rng.normal(0, 0.02, (400, 1)).astype(np.float32)
        np.save(base / f"{name}-calib.npy", x[:200])
        np.savez(base / f"{name}-eval.npz", x=x[200:], y=y[200:])
        made[name] = base / f"{name}.keras"
    return made


def _regression_args(model: Path, out: Path, *extra: str) -> list:
    stem = model.with_suffix("")
    return ["quantize", model, "-o", out, "--task", "regression", "--calib", f"{stem}-calib.npy",
            "--eval", f"{stem}-eval.npz", *extra]  # fmt: skip


def test_the_regression_gate_is_on_by_default_and_fails_a_model_int8_breaks(sensor_regression, tmp_path):
    """With --eval on a regression model the gate is on: a mean absolute error more than 10% above the
    float model's fails the conversion (exit 8, files kept, manifest marked); a healthy one passes."""
    good = tmp_path / "good.tflite"
    proc = run_edge_convert(*_regression_args(sensor_regression["normalized"], good))
    assert_clean(proc)
    gate = validate_manifest(good.with_suffix(".json"))["evaluation"]["gate"]
    assert gate["passed"] is True and gate["max_error_increase_pct"] == 10.0
    assert re.search(r"quality gate\s+PASSED\s+max error \+10%", proc.stdout), proc.stdout

    broken = tmp_path / "broken.tflite"
    proc = run_edge_convert(*_regression_args(sensor_regression["raw_unit"], broken))
    assert_clean(proc, ok=False)
    assert proc.returncode == 8, proc.stdout + proc.stderr
    assert broken.is_file() and broken.with_suffix(".json").is_file()
    evaluation = validate_manifest(broken.with_suffix(".json"))["evaluation"]
    assert evaluation["gate"]["passed"] is False
    assert evaluation["mae_quantized"] > 10 * evaluation["mae_float"], evaluation
    error = next(line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:"))
    assert "quality gate failed: mean absolute error rose by" in error
    assert "--max-error-increase PERCENT or --no-gate accepts the loss" in error
    assert "--mode int16x8" in error and "--fallback auto" in error
    assert re.search(r"quality gate\s+FAILED", proc.stdout)

    rescued = run_edge_convert(*_regression_args(sensor_regression["raw_unit"], broken, "--mode", "int16x8"))
    assert_clean(rescued)  # what the error suggests: 16-bit activations keep a and b
    assert validate_manifest(broken.with_suffix(".json"))["evaluation"]["gate"]["passed"] is True
    # the loss is in the int8 input, which no layer kept in float gives back: the search says so
    searched = run_edge_convert(
        *_regression_args(sensor_regression["raw_unit"], broken, "--fallback", "auto")
    )
    assert_clean(searched, ok=False)
    assert searched.returncode == 8, searched.stdout + searched.stderr
    assert "even with every quantized layer in float" in searched.stderr
    assert "the input and output quantization" in searched.stderr

    accepted = run_edge_convert(*_regression_args(sensor_regression["raw_unit"], broken, "--no-gate"))
    assert_clean(accepted)
    assert "gate" not in validate_manifest(broken.with_suffix(".json"))["evaluation"]
    assert re.search(r"quality gate\s+OFF", accepted.stdout), accepted.stdout
