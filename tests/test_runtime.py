"""Model loading on the real ai-edge-litert runtime: manifest checks, plain .tflite, errors, delegates."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ConfigError, DataError, DependencyError, ModelError
from edge_agent.processing.postprocess import PostContext, create_postprocessor
from edge_agent.processing.preprocess import ImagePreprocessor
from edge_agent.runtime import available_runtimes, load_model
from edge_agent.runtime.backends import select_runtime
from edge_agent.runtime.config import ModelConfig
from edge_agent.runtime.model import default_num_threads
from tests.fixtures.tflite_models import COLOR_LABELS, TinyModel

pytestmark = pytest.mark.slow  # the models come from real TensorFlow conversions

RED_BGR = (0, 0, 255)


def _frame(bgr: tuple[int, int, int], h: int = 48, w: int = 64) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = bgr
    return frame


def _copy(model: TinyModel, dest: Path) -> Path:
    shutil.copy(model.path, dest / model.path.name)
    if model.manifest_path.exists():
        shutil.copy(model.manifest_path, dest / model.manifest_path.name)
    return dest / model.path.name


def _classify(model, frame):
    pre = ImagePreprocessor(model.input, model.manifest.preprocess)
    post = create_postprocessor(model.manifest)
    transform = pre(frame, out=model.input_buffer())
    return post(model.invoke(), PostContext(transform=transform))


def test_converter_style_model_runs_from_its_path_alone(color_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=color_int8.path))
    assert model.backend == "litert"
    assert model.delegate is None and model.delegate_error is None
    assert model.num_threads == default_num_threads()
    assert model.manifest.labels == COLOR_LABELS
    assert model.input.dtype == "int8" and model.input.quantization is not None
    result = _classify(model, _frame(RED_BGR))
    # golden: logits = 10 * mean RGB = (10, 0, 0) -> softmax 0.99991; int8 output step is 1/256
    assert result.label == "red"
    assert result.score == pytest.approx(0.9999, abs=1 / 256 + 1e-3)
    fields = result.to_fields()
    assert [c["label"] for c in fields["top_k"]] == ["red", "green", "blue"]  # top_k 3 from the manifest


@pytest.mark.parametrize("fixture", ["color_int8", "color_uint8", "color_float16"])
def test_every_quantization_mode_gives_the_golden_probabilities(fixture: str, request) -> None:
    tiny: TinyModel = request.getfixturevalue(fixture)
    model = load_model(ModelConfig(path=tiny.path, num_threads=1))
    # a mixed colour: RGB means (0.4, 0.2, 0.1) -> softmax(4, 2, 1)
    frame = _frame((int(0.1 * 255), int(0.2 * 255), int(0.4 * 255)))
    rgb = np.array([int(0.4 * 255), int(0.2 * 255), int(0.1 * 255)]) / 255
    expected = np.exp(10 * rgb) / np.exp(10 * rgb).sum()
    result = _classify(model, frame)
    got = {c.label: c.score for c in result.top_k}
    tolerance = 0.02 if fixture == "color_float16" else 0.03
    for label, p in zip(COLOR_LABELS, expected, strict=True):
        assert got[label] == pytest.approx(p, abs=tolerance)
    if fixture == "color_float16":
        assert model.ops is not None and "DEQUANTIZE" in model.ops
    if fixture == "color_uint8":
        assert model.input.dtype == "uint8" and model.manifest.outputs[0].dtype == "uint8"


def test_plain_tflite_runs_with_config_fields(color_logits_plain: TinyModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    cfg = ModelConfig(
        path=color_logits_plain.path,
        task="classification",
        labels_file=labels,
        preprocess={"color": "rgb", "scale": 1 / 255},
    )
    model = load_model(cfg)
    assert not color_logits_plain.manifest_path.exists()
    assert model.manifest.labels == COLOR_LABELS
    assert model.manifest.outputs[0].role == "logits"  # last op is FULLY_CONNECTED, not SOFTMAX
    assert model.input.kind == "image"
    result = _classify(model, _frame((255, 0, 0)))  # pure blue
    assert result.label == "blue"
    assert result.score == pytest.approx(np.exp(10) / (np.exp(10) + 2), abs=1e-4)  # softmax applied


def test_plain_tflite_without_task_says_what_to_set(color_logits_plain: TinyModel) -> None:
    with pytest.raises(ConfigError, match=r"model\.task.*no manifest"):
        load_model(ModelConfig(path=color_logits_plain.path))


def test_output_roles_from_config_must_name_real_tensors(color_logits_plain: TinyModel) -> None:
    with pytest.raises(ConfigError, match=r"model\.output_roles: nope not outputs"):
        load_model(
            ModelConfig(path=color_logits_plain.path, task="classification", output_roles={"nope": "logits"})
        )


def test_output_roles_in_the_config_override_the_manifest(color_int8: TinyModel) -> None:
    with pytest.raises(ConfigError, match=r"model\.output_roles: x not outputs"):
        load_model(ModelConfig(path=color_int8.path, output_roles={"x": "logits"}))
    name = json.loads(color_int8.manifest_path.read_text())["outputs"][0]["name"]
    model = load_model(ModelConfig(path=color_int8.path, task="regression", output_roles={name: "values"}))
    assert model.manifest.task == "regression" and set(model.invoke()) == {"values"}


def test_config_fields_override_the_manifest(color_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=color_int8.path, labels=["r", "g", "b"], postprocess={"top_k": 1}))
    result = _classify(model, _frame(RED_BGR))
    assert result.label == "r"
    assert len(result.top_k) == 1


def test_invoke_with_an_array_and_outputs_keyed_by_role(color_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=color_int8.path))
    outputs = model.invoke(np.zeros(model.input.shape, np.int8))
    assert set(outputs) == {"probabilities"}
    assert outputs["probabilities"].shape == (1, 3)
    with pytest.raises(DataError, match="shape"):
        model.invoke(np.zeros((1, 2, 2, 3), np.int8))
    with pytest.raises(DataError, match="dtype float32"):
        model.invoke(np.zeros(model.input.shape, np.float32))


def test_input_buffer_view_may_be_held_across_invokes(color_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=color_int8.path))
    pre = ImagePreprocessor(model.input, model.manifest.preprocess)
    buf = model.input_buffer()
    scores = []
    for bgr in (RED_BGR, (0, 255, 0)):
        pre(_frame(bgr), out=buf)
        scores.append(model.invoke()["probabilities"].copy())
    assert np.argmax(scores[0]) == 0 and np.argmax(scores[1]) == 1
    model.close()
    with pytest.raises(ModelError, match="closed"):
        model.invoke()


def test_held_input_view_survives_a_model_whose_first_invoke_moves_its_input(dynamic_int8: TinyModel) -> None:
    """Regression: this model's first invoke moves the input tensor; a view held from before it wrote
    into freed memory (wrong answers, heap corruption). A child process, so a crash fails only this test.
    Reference: a second instance fed through invoke(x), which copies into a fresh view every time."""
    code = textwrap.dedent(
        f"""
        import numpy as np
        from edge_agent.runtime import load_model
        from edge_agent.runtime.config import ModelConfig
        from edge_agent.processing.preprocess import ImagePreprocessor
        cfg = ModelConfig(path={str(dynamic_int8.path)!r})
        held, reference = load_model(cfg), load_model(cfg)
        assert "RESHAPE" in held.ops, held.ops
        pre = ImagePreprocessor(held.input, held.manifest.preprocess)
        buf = held.input_buffer()
        rng = np.random.default_rng(0)
        for i in range(40):
            frame = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            pre(frame, out=buf)
            got = held.invoke()["logits"]
            want = reference.invoke(buf.copy())["logits"]
            assert np.array_equal(got, want), (i, got, want)
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
    assert "moved the input tensor" not in run.stderr


# -- errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        load_model(ModelConfig(path=tmp_path / "nope.tflite", task="classification"))


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "junk.tflite"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not a TFLite model"):
        load_model(ModelConfig(path=bad, task="classification"))


def test_truncated_file(color_int8: TinyModel, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tflite"
    data = color_int8.path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load it"):
        load_model(ModelConfig(path=cut, task="classification"))


def test_sha256_mismatch(color_int8: TinyModel, tmp_path: Path) -> None:
    path = _copy(color_int8, tmp_path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"sha256 .* does not match its manifest"):
        load_model(ModelConfig(path=path))
    model = load_model(ModelConfig(path=path, verify_sha256=False))  # the user's explicit choice
    assert model.manifest.sha256 == "0" * 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["inputs"][0].update(shape=[1, 16, 16, 3]), r"shape \[1, 16, 16, 3\] in the manifest"),
        (lambda m: m["inputs"][0].update(dtype="uint8"), r"dtype uint8 in the manifest, int8 in the model"),
        (
            lambda m: m["outputs"][0]["quantization"].update(
                scale=m["outputs"][0]["quantization"]["scale"] * 2
            ),
            r"output .*quantization scale=.* in the manifest",
        ),
        (lambda m: m["inputs"][0]["quantization"].update(zero_point=3), r"zero_point=3 in the manifest"),
        (lambda m: m["outputs"].append({**m["outputs"][0], "name": "extra"}), r"lists 2 output\(s\)"),
    ],
    ids=["shape", "dtype", "scale", "zero_point", "count"],
)
def test_manifest_model_mismatch_says_what_differs(
    color_int8: TinyModel, tmp_path: Path, edit, message
) -> None:
    path = _copy(color_int8, tmp_path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    edit(manifest)
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        load_model(ModelConfig(path=path))


def test_renamed_tensor_is_found_by_shape(color_int8: TinyModel, tmp_path: Path) -> None:
    path = _copy(color_int8, tmp_path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["outputs"][0]["name"] = "renamed_by_another_tf_version"
    path.with_suffix(".json").write_text(json.dumps(manifest))
    model = load_model(ModelConfig(path=path))
    assert _classify(model, _frame(RED_BGR)).label == "red"


# -- runtimes and delegates -----------------------------------------------------------------------


def test_available_runtimes_reports_versions_without_importing_tensorflow() -> None:
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json; from edge_agent.runtime import available_runtimes as a; "
            "print(json.dumps(a())); assert 'tensorflow' not in sys.modules",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    runtimes = json.loads(found.stdout)
    assert runtimes["litert"] == available_runtimes()["litert"] and runtimes["litert"]
    assert runtimes["tensorflow"]  # installed here (host), though never imported by the line above


def test_missing_runtime_names_the_extra() -> None:
    if available_runtimes()["tflite-runtime"] is not None:
        pytest.skip("tflite-runtime is installed here")
    with pytest.raises(DependencyError, match=r"pip install 'edge-agent\[tflite-runtime\]'"):
        select_runtime("tflite-runtime")
    with pytest.raises(ConfigError, match="unknown runtime"):
        select_runtime("onnx")


def test_tensorflow_runtime_when_named_gives_the_same_answer(color_int8: TinyModel) -> None:
    lite = load_model(ModelConfig(path=color_int8.path, runtime="litert"))
    tf = load_model(ModelConfig(path=color_int8.path, runtime="tensorflow"))
    assert tf.backend == "tensorflow"
    x = np.full(lite.input.shape, 20, np.int8)
    np.testing.assert_array_equal(lite.invoke(x)["probabilities"], tf.invoke(x)["probabilities"])


def test_edgetpu_unavailable_falls_back_to_cpu_and_says_why(
    color_int8: TinyModel, tmp_path: Path, caplog
) -> None:
    path = _copy(color_int8, tmp_path)
    shutil.copy(color_int8.path, tmp_path / "color_int8_edgetpu.tflite")  # a compiled variant beside it
    with caplog.at_level(logging.WARNING):
        model = load_model(ModelConfig(path=path, delegate="edgetpu"))
    assert model.delegate is None
    assert "libedgetpu.so.1" in model.delegate_error
    assert model.path == path  # the CPU model, not the _edgetpu variant
    assert any("running on the CPU" in r.getMessage() for r in caplog.records)
    assert _classify(model, _frame(RED_BGR)).label == "red"  # and it keeps running


def test_default_runtime_never_imports_tensorflow(color_int8: TinyModel) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from edge_agent.runtime import load_model
        from edge_agent.runtime.config import ModelConfig
        from edge_agent.processing.preprocess import ImagePreprocessor
        from edge_agent.processing.postprocess import PostContext, create_postprocessor
        model = load_model(ModelConfig(path={str(color_int8.path)!r}))
        pre = ImagePreprocessor(model.input, model.manifest.preprocess)
        frame = np.zeros((48, 64, 3), np.uint8); frame[..., 2] = 255
        t = pre(frame, out=model.input_buffer())
        result = create_postprocessor(model.manifest)(model.invoke(), PostContext(transform=t))
        assert result.label == "red", result
        leaked = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
        assert not leaked, leaked
        print("ok", model.backend)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok litert"


def test_routine_runtime_lines_stay_off_stderr_and_the_rest_passes_through(
    color_int8: TinyModel, capfd: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.runtime.native_log import routine_native_lines_hidden

    load_model(ModelConfig(path=color_int8.path)).close()  # LiteRT prints its XNNPACK INFO line here
    with routine_native_lines_hidden():
        import os

        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nWARNING: a real problem\n")
    err = capfd.readouterr().err
    assert "Created TensorFlow Lite" not in err
    assert "WARNING: a real problem\n" in err  # anything else written meanwhile is kept, verbatim
