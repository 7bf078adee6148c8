"""``edge-convert distill`` end to end: the real CLI in a child process on the digits teacher, small data and
few epochs; the student then goes through the normal ``quantize`` path and runs in ``edge-agent run``
against a real mosquitto. The argument checks that need no TensorFlow run in the fast subset."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.daemon_harness import Agents, results, write_config
from tests.fixtures.digits import DigitsData, run_edge_convert

EPOCHS = "12"  # enough for the width:0.25 digits student to pass 90% (30, the default, gives ~98%)
WORK_RATIO = 3.0  # the README's example: 3.9x faster in int8 (distill --report, 0.0098 vs 0.0025 ms)
MAX_DROP_POINTS = 2.0
CHANCE = 0.1  # ten classes


@dataclass(frozen=True)
class Distilled:
    student: Path
    tflite: Path
    stdout: str
    stderr: str


def no_leftovers(folder: Path) -> list[str]:
    """Temp or partial files the distill run left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name)


def keras_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    return float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))


@pytest.fixture(scope="module")
def distilled(
    digits_keras: Path, digits_split: DigitsData, tmp_path_factory: pytest.TempPathFactory
) -> Distilled:
    """The README's example: the digits CNN distilled into width:0.25 on the labelled train split with the
    default settings and the int8 report, then quantized by the normal quantize path (default gate)."""
    folder = tmp_path_factory.mktemp("distilled")
    student = folder / "student.keras"
    proc = run_edge_convert(
        "distill", digits_keras, "--student", "width:0.25", "--data", digits_split.train,
        "--eval", digits_split.test, "--report", "-o", student,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tflite = folder / "student.tflite"
    quantized = run_edge_convert(
        "quantize", student, "-o", tflite, "--calib", digits_split.train, "--eval", digits_split.test,
        "--labels", digits_split.labels,
    )  # fmt: skip
    assert quantized.returncode == 0, quantized.stderr
    return Distilled(student, tflite, proc.stdout, proc.stderr)


def test_distilled_student_is_smaller_and_far_better_than_chance(
    distilled: Distilled, digits_keras: Path, digits_split: DigitsData
) -> None:
    import keras

    teacher = keras.models.load_model(digits_keras, compile=False)
    student = keras.models.load_model(distilled.student, compile=False)
    assert student.count_params() * 10 < teacher.count_params()
    assert student.input_shape == teacher.input_shape and student.output_shape == teacher.output_shape
    test = np.load(digits_split.test)
    assert keras_accuracy(distilled.student, test["x"], test["y"]) > 0.85 > 5 * CHANCE
    # progress: one line per epoch on stderr; the comparison table on stdout, int8 rows included
    assert "epoch 30/30" in distilled.stderr and "(labelled)" in distilled.stderr
    assert "Traceback" not in distilled.stderr
    for row in (
        "parameters",
        "accuracy (float)",
        "int8 .tflite size",
        "accuracy (int8)",
        "int8 latency median",
    ):
        assert row in distilled.stdout, distilled.stdout
    assert no_leftovers(distilled.student.parent) == []


def multiply_accumulates(tflite: Path) -> int:
    """The multiply-accumulates of one inference (convolutions and dense layers): the work a model does,
    independent of the machine's load, unlike a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(tflite))
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():
        out, weights = shapes[op["outputs"][0]], shapes[op["inputs"][1]] if len(op["inputs"]) > 1 else None
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):  # weights [out, (h, w,) in]
            total += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # weights [1, h, w, channels]
            total += int(np.prod(out)) * int(weights[1] * weights[2])
    return total


def test_the_example_student_does_a_third_of_the_work_in_int8_within_2_points(
    distilled: Distilled, digits_int8: Path, digits_split: DigitsData
) -> None:
    """The README's example. Its speed-up is measured by `edge-convert distill --report` (3.9x there); a
    test times nothing (it failed at 2.9x on a loaded machine), it counts the work instead."""
    teacher_eval = json.loads(digits_int8.with_suffix(".json").read_text())["evaluation"]
    student_eval = json.loads(distilled.tflite.with_suffix(".json").read_text())["evaluation"]
    drop = (teacher_eval["accuracy_quantized"] - student_eval["accuracy_quantized"]) * 100
    assert drop <= MAX_DROP_POINTS, (teacher_eval["accuracy_quantized"], student_eval["accuracy_quantized"])
    teacher, student = multiply_accumulates(digits_int8), multiply_accumulates(distilled.tflite)
    assert teacher == 1_330_432  # the digits CNN: 2 convolutions and 2 dense layers, counted by hand
    assert teacher >= WORK_RATIO * student, (teacher, student)


def test_unlabelled_data_trains_on_the_teacher_alone(
    tmp_path: Path, digits_keras: Path, digits_split: DigitsData
) -> None:
    train, test = np.load(digits_split.train), np.load(digits_split.test)
    unlabelled = tmp_path / "unlabelled.npy"
    np.save(unlabelled, train["x"][..., 0])  # (N, 8, 8): fitted to the teacher's (8, 8, 1) input
    out = tmp_path / "student.keras"
    proc = run_edge_convert(
        "distill", digits_keras, "--student", "width:0.25", "--data", unlabelled, "--epochs", EPOCHS,
        "--temperature", "2", "-o", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "unlabelled: teacher outputs only" in proc.stderr
    assert "accuracy" not in proc.stderr.split("\n")[-2]  # no labels: agreement with the teacher only
    assert keras_accuracy(out, test["x"], test["y"]) > 0.8


def test_a_folder_of_class_folders_is_labelled_data(
    tmp_path: Path, digits_keras: Path, digits_split: DigitsData
) -> None:
    import cv2

    train = np.load(digits_split.train)
    for i, (x, y) in enumerate(zip(train["x"][:200], train["y"][:200], strict=True)):
        folder = tmp_path / "images" / str(int(y))
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), np.rint(x[..., 0] * 255).astype(np.uint8))
    out = tmp_path / "student.keras"
    proc = run_edge_convert(
        "distill", digits_keras, "--student", "width:0.5", "--data", tmp_path / "images", "--scale", "1/255",
        "--epochs", "2", "-o", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "on 200 samples of images (labelled)" in proc.stderr and out.is_file()


def test_data_that_does_not_fit_the_teacher_fails_before_training(tmp_path: Path, digits_keras: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((20, 9, 9, 1), np.float32), y=np.zeros(20, np.int64))
    out = tmp_path / "student.keras"
    proc = run_edge_convert("distill", digits_keras, "--student", "width:0.5", "--data", bad, "-o", out)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        "--data" in lines[0]
        and "bad.npz" in lines[0]
        and "(9, 9, 1)" in lines[0]
        and "(None, 8, 8, 1)" in lines[0]
    )
    assert "epoch" not in proc.stderr and "distilling" not in proc.stderr
    assert not out.exists() and no_leftovers(tmp_path) == []


def test_labels_outside_the_teachers_classes_fail_before_training(tmp_path: Path, digits_keras: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((20, 8, 8, 1), np.float32), y=np.full(20, 12, np.int64))
    proc = run_edge_convert(
        "distill", digits_keras, "--student", "width:0.5", "--data", bad, "-o", tmp_path / "s.keras"
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip() == (
        f"edge-convert: error: --data {bad}: class indices range 12..12 but the model has 10 classes"
    )


def test_ctrl_c_during_training_leaves_no_output_file(
    tmp_path: Path, digits_keras: Path, digits_split: DigitsData
) -> None:
    out = tmp_path / "student.keras"
    args = [
        "distill",
        digits_keras,
        "--student",
        "width:0.5",
        "--data",
        digits_split.train,
        "--epochs",
        "500",
    ]
    child = subprocess.Popen(
        [sys.executable, "-m", "converter.cli", *map(str, args), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = child.stderr.readline()
            seen.append(line)
            if line.startswith("epoch 2/") or not line:
                break
        assert seen[-1].startswith("epoch 2/"), "".join(seen)
        child.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_edge_agent_runs_the_quantized_student(
    tmp_path: Path, mosquitto, subscriber, distilled: Distilled, digits_video
) -> None:
    manifest = json.loads(distilled.tflite.with_suffix(".json").read_text())
    assert manifest["evaluation"]["gate"]["passed"] is True
    broker = mosquitto()
    pipeline = {"name": "student", "source": {"type": "camera", "url": str(digits_video.path)},
                "model": {"path": str(distilled.tflite)}, "publish": {"qos": 1}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    sub = subscriber(broker, "#")
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        assert agent.wait(120) == 0, agent.log()  # a finite video: the run ends by itself, outbox drained
    n = len(digits_video.labels)
    messages = sub.wait_for(lambda m: len(results(m)) >= n, timeout=15)
    got = results(messages)
    assert sorted(r["frame"] for r in got) == list(range(n))
    correct = sum(r["label"] == digits_video.labels[r["frame"]] for r in got)
    assert correct / n >= 0.85, f"accuracy {correct}/{n}"


# ---------------------------------------------------------------------------------------------- students


@pytest.mark.slow
def test_width_narrows_mobilenet_v2_through_alpha() -> None:
    import keras

    from converter.distill import check_student, student_by_width

    teacher = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.5, weights=None, classes=3, classifier_activation="softmax"
    )
    student = student_by_width(teacher, 0.5)
    assert student.name == "mobilenetv2_0.25_32"
    assert student.count_params() < teacher.count_params()
    check_student(student, teacher, "width:0.5")


@pytest.mark.slow
def test_width_refuses_a_model_it_cannot_narrow() -> None:
    import keras

    from converter.distill import student_by_width
    from edge_agent.errors import ModelError

    teacher = keras.Sequential(
        [keras.Input((5, 3)), keras.layers.LSTM(8), keras.layers.Dense(4, activation="softmax")]
    )
    with pytest.raises(
        ModelError, match=r"lstm.*\(LSTM\).*give the student's architecture as a \.keras file"
    ):
        student_by_width(teacher, 0.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("width:1.5", "between 0 and 1"),
        ("width:half", "between 0 and 1"),
        ("student.h5", "give a .keras file"),
    ],
)
def test_bad_student_spec_is_refused_before_tensorflow(tmp_path: Path, spec: str, message: str) -> None:
    data = tmp_path / "d.npy"
    np.save(data, np.zeros((4, 8, 8), np.float32))
    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(b"not read before the spec is checked")
    proc = run_edge_convert("distill", teacher, "--student", spec, "--data", data, "-o", tmp_path / "s.keras")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
