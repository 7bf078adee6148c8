"""Fast tests of the converter's pure parts (no TensorFlow): data loading and shape checks, option
parsing, output safety, quantization arithmetic, the digits video contract with the device's preprocessor."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from converter import calibration as cal
from converter.calibration import infer_scaling
from converter.examples import DIGITS_PREPROCESS, digit_frame, load_digits_split, render_digits_video
from converter.litert import Tensor
from converter.loading import detect_kind
from converter.options import parse_number
from converter.output import check_writable, write_files
from converter.report import table
from edge_agent.errors import ConfigError, DataError, ModelError
from edge_agent.manifest import InputSpec, Preprocess

DIGITS_INPUT = (None, 8, 8, 1)


def test_fit_to_input_accepts_matching_missing_channel_and_flat_rows():
    x = np.zeros((5, 8, 8, 1))
    assert cal.fit_to_input(x, DIGITS_INPUT, "a", "data").shape == (5, 8, 8, 1)
    assert cal.fit_to_input(np.zeros((5, 8, 8)), DIGITS_INPUT, "a", "data").shape == (5, 8, 8, 1)
    assert cal.fit_to_input(np.zeros((5, 64)), DIGITS_INPUT, "a", "data").shape == (5, 8, 8, 1)
    assert cal.fit_to_input(x, DIGITS_INPUT, "a", "data").dtype == np.float32


def test_fit_to_input_names_both_shapes():
    with pytest.raises(DataError) as err:
        cal.fit_to_input(np.zeros((5, 28, 28, 1)), DIGITS_INPUT, "big.npy", "calibration data")
    message = str(err.value)
    assert "big.npy" in message and "(28, 28, 1)" in message and "(None, 8, 8, 1)" in message


def test_calibration_csv_with_header_and_subset(tmp_path: Path):
    csv = tmp_path / "rows.csv"
    rows = "\n".join(",".join(str(i + j) for j in range(6)) for i in range(20))
    csv.write_text("a,b,c,d,e,f\n" + rows + "\n")
    samples = cal.load_calibration(csv, (None, 3, 2), limit=7, preprocess=None, seed=1)
    assert samples.x.shape == (7, 3, 2)
    assert samples.summary["format"] == "csv" and samples.summary["samples"] == 7
    assert len({float(r[0, 0]) for r in samples.x}) == 7  # distinct rows, no repeats


def test_calibration_npz_without_x_and_nan(tmp_path: Path):
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no array named 'x'"):
        cal.load_calibration(tmp_path / "two.npz", (None, 2), 10, None)
    np.save(tmp_path / "nan.npy", np.full((3, 2), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        cal.load_calibration(tmp_path / "nan.npy", (None, 2), 10, None)


def test_labelled_npz_one_hot_and_length_mismatch(tmp_path: Path):
    y = np.eye(3)[[0, 2, 1, 1]]
    np.savez(tmp_path / "e.npz", x=np.zeros((4, 2)), y=y)
    data = cal.load_labelled(tmp_path / "e.npz", (None, 2), None, None)
    assert data.y.tolist() == [0, 2, 1, 1]
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="x has 4 samples but y has 3"):
        cal.load_labelled(tmp_path / "bad.npz", (None, 2), None, None)


def test_random_calibration_follows_preprocess_range():
    pre = Preprocess(color="gray", scale=1 / 255)
    samples = cal.random_calibration(DIGITS_INPUT, 50, pre)
    assert samples.x.shape == (50, 8, 8, 1)
    assert samples.x.min() >= 0.0 and samples.x.max() <= 1.0


def test_parse_number_and_infer_scaling():
    assert parse_number("1/255", "--scale") == pytest.approx(1 / 255)
    assert parse_number("127.5", "--mean") == 127.5
    with pytest.raises(ConfigError, match="--scale"):
        parse_number("abc", "--scale")
    pre = Preprocess(color="gray")
    assert infer_scaling(np.array([0.0, 1.0]), pre, "a").scale == pytest.approx(1 / 255)
    signed = infer_scaling(np.array([-1.0, 1.0]), pre, "a")
    assert signed.mean == [127.5] and signed.std == [127.5]
    assert infer_scaling(np.array([0.0, 255.0]), pre, "a").scale == 1.0


def test_detect_kind_rejects_non_models(tmp_path: Path):
    text = tmp_path / "m.keras"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a Keras model"):
        detect_kind(text)
    empty_zip = tmp_path / "z.keras"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(ModelError, match="not a Keras model"):
        detect_kind(empty_zip)
    with pytest.raises(ModelError, match="not a SavedModel"):
        detect_kind(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert detect_kind(tmp_path) == "saved_model"
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 8)
    assert detect_kind(h5) == "h5"


def test_check_writable(tmp_path: Path):
    check_writable(tmp_path / "ok.tflite")
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    with pytest.raises(ConfigError, match="does not exist"):
        check_writable(tmp_path / "missing" / "m.tflite")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_writable(tmp_path / "file" / "m.tflite")
    with pytest.raises(ConfigError, match="is a directory"):
        check_writable(tmp_path)


def test_write_files_replaces_atomically(tmp_path: Path):
    a, b = tmp_path / "m.tflite", tmp_path / "m.json"
    a.write_bytes(b"old")
    write_files({a: b"new model", b: b"{}"})
    assert a.read_bytes() == b"new model" and b.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.tflite"]  # no temp files left


def test_tensor_quantize_saturates_and_round_trips():
    t = Tensor("x", 0, (1, 4), "int8", scale=0.5, zero_point=-10)
    q = t.quantize(np.array([0.0, 1.0, 1000.0, -1000.0]))
    assert q.dtype == np.int8 and q.tolist() == [-10, -8, 127, -128]
    assert t.dequantize(q).tolist() == [0.0, 1.0, 68.5, -59.0]
    u = Tensor("y", 0, (1,), "uint8", scale=1 / 255, zero_point=0)
    assert u.dequantize(np.array([255], dtype=np.uint8))[0] == pytest.approx(1.0)


def test_table_aligns_columns():
    text = table(["", "a", "b"], [["size", "1 KiB", "22 KiB"], ["accuracy", "98%", "97.5%"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1
    assert lines[2].endswith("22 KiB") and lines[3].endswith("97.5%")


def test_digit_frames_preprocess_back_to_x(tmp_path: Path):
    """The digits contract: a rendered frame, through the device's own preprocessing, gives back x."""
    cv2 = pytest.importorskip("cv2")
    from edge_agent.processing.preprocess import ImagePreprocessor

    split = load_digits_split(0)
    spec = InputSpec(name="image", shape=[1, 8, 8, 1], dtype="float32", kind="image")
    pre = ImagePreprocessor(spec, Preprocess(**DIGITS_PREPROCESS))
    for x in split.x_test[:20]:
        y, _ = pre.to_float(digit_frame(x))
        assert np.abs(np.asarray(y).reshape(8, 8, 1) - x).max() < 0.6 / 255 + 1e-6

    path = tmp_path / "d.avi"
    truth = render_digits_video(path, split.x_test[:10], 10, labels=split.y_test[:10])
    assert truth == [str(v) for v in split.y_test[:10]]
    assert path.with_suffix(".labels.txt").read_text().split() == truth
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 10 and frames[0].shape == (64, 64, 3)
    worst = max(
        np.abs(np.asarray(pre.to_float(f)[0]).reshape(8, 8, 1) - x).max()
        for f, x in zip(frames, split.x_test[:10], strict=True)
    )
    assert worst < 4 / 255  # MJPG at quality 100: a few levels of JPEG rounding at most


def _lite(inputs: list[tuple[int, ...]], outputs: list[tuple[str, tuple[int, ...]]]):
    from types import SimpleNamespace

    return SimpleNamespace(
        inputs=[Tensor("in", 0, s, "float32", None, None) for s in inputs],
        outputs=[Tensor(n, i + 1, s, "float32", None, None) for i, (n, s) in enumerate(outputs)],
    )


def test_roles_by_task_and_shape():
    from converter.roles import guess_roles, parse_role_overrides

    ssd = _lite([(1, 300, 300, 3)], [("a", (1, 10, 4)), ("b", (1, 10)), ("c", (1, 10)), ("d", (1,))])
    sample = [np.zeros((1, 10, 4)), np.full((1, 10), 0.7), np.arange(10.0)[None], np.array([3.0])]
    assert guess_roles("detection", ssd, False, sample, {}) == ["boxes", "scores", "classes", "count"]
    yolo = _lite([(1, 320, 320, 3)], [("y", (1, 84, 2100))])
    assert guess_roles("detection", yolo, False, None, {}) == ["yolo"]
    ae = _lite([(1, 6)], [("r", (1, 6))])
    assert guess_roles("anomaly", ae, False, None, {}) == ["reconstruction"]
    assert guess_roles("anomaly", _lite([(1, 6)], [("s", (1, 1))]), False, None, {}) == ["anomaly_score"]
    assert guess_roles("classification", _lite([(1, 6)], [("p", (1, 3))]), True, None, {}) == [
        "probabilities"
    ]
    assert guess_roles("segmentation", _lite([(1, 8, 8, 3)], [("m", (1, 8, 8, 2))]), False, None, {}) == [
        "mask"
    ]
    odd = _lite([(1, 6)], [("x", (1, 2, 3, 4, 5))])
    with pytest.raises(ConfigError, match="--output-role"):
        guess_roles("detection", odd, False, None, {})
    assert guess_roles("detection", odd, False, None, parse_role_overrides(("x=yolo",), odd.outputs)) == [
        "yolo"
    ]
    with pytest.raises(ConfigError, match="no output 'nope'"):
        parse_role_overrides(("nope=mask",), odd.outputs)
    with pytest.raises(ConfigError, match="ROLE one of"):
        parse_role_overrides(("x=banana",), odd.outputs)


def test_preprocess_options_checked_against_channels():
    from converter.options import build_preprocess

    pre = build_preprocess((None, 32, 32, 3), "1/255", "0.485,0.456,0.406", "0.229,0.224,0.225", None, "crop")
    assert pre.color == "rgb" and pre.resize == "crop" and pre.mean == [0.485, 0.456, 0.406]
    assert build_preprocess((None, 8, 8, 1), None, None, None, None, "stretch").color == "gray"
    with pytest.raises(ConfigError, match="give 1 value or 3"):
        build_preprocess((None, 32, 32, 3), None, "1,2", None, None, "stretch")
    with pytest.raises(ConfigError, match="--color gray does not fit"):
        build_preprocess((None, 32, 32, 3), None, None, None, "gray", "stretch")
    with pytest.raises(ConfigError, match="--std must not be 0"):
        build_preprocess((None, 8, 8, 1), None, None, "0", None, "stretch")


# -------------------------------------------------------------------------------- the quality gate


def _evaluation(drop: float | None, agreement: float | None = 0.97):
    from converter.evaluate import Evaluation

    ev = Evaluation(samples=450, data="test.npz", accuracy_drop_points=drop, top1_agreement=agreement)
    if drop is not None:
        ev.accuracy_float, ev.accuracy_quantized = 0.97, 0.97 - drop / 100
    return ev


@pytest.mark.parametrize(
    ("drop", "limit", "passed"),
    [(4.4444, 4.9444, True), (4.4444, 3.9444, False), (4.4444, 4.4444, True), (0.0, 0.0, True),
     (0.2222, 0.0, False), (-0.4, -0.5, False), (-0.4, 0.0, True)],
)  # fmt: skip
def test_apply_gate_compares_the_drop_with_the_limit(drop, limit, passed):
    from converter.evaluate import Gate, apply_gate, gate_failure

    ev = _evaluation(drop)
    assert apply_gate(ev, Gate("accuracy", limit)) is passed
    assert ev.gate == {"max_accuracy_drop_points": limit, "accuracy_drop_points": drop, "passed": passed}
    assert gate_failure(ev.gate) == f"accuracy dropped {drop:.2f} points (allowed {limit:g})"


def test_apply_gate_without_a_limit_or_without_accuracy():
    from converter.evaluate import Gate, apply_gate

    ev = _evaluation(30.0)
    assert apply_gate(ev, None) is True and ev.gate is None
    with pytest.raises(DataError, match="needs a classification model"):
        apply_gate(_evaluation(None, None), Gate("accuracy", 1.0))


@pytest.mark.parametrize(
    ("mae_float", "mae_quantized", "step", "passed", "allowed"),
    [(1.0, 1.09, 0.01, True, 0.1),  # 9% more error, allowed 10%
     (1.0, 1.11, 0.01, False, 0.1),  # 11%
     (1.0, 1.10, 0.01, True, 0.1),  # exactly the limit
     (0.0, 0.004, 0.008, True, 0.008),  # an exact float model: up to one output step is rounding
     (0.0, 0.009, 0.008, False, 0.008),
     (0.05, 0.2, 0.0, False, 0.005),  # float output: no step, only the percentage
     (1.0, 0.9, 0.01, True, 0.1)],  # int8 did better: passes
)  # fmt: skip
def test_the_regression_gate_allows_a_percentage_of_the_float_error_and_at_least_one_step(
    mae_float, mae_quantized, step, passed, allowed
):
    from converter.evaluate import Evaluation, Gate, apply_gate, gate_failure

    ev = Evaluation(samples=100, data="rows.csv", mae_float=mae_float, mae_quantized=mae_quantized)
    ev.output_step = step
    assert apply_gate(ev, Gate("mae", 10.0)) is passed
    assert ev.gate is not None and ev.gate["passed"] is passed
    assert ev.gate["allowed_increase"] == pytest.approx(allowed)
    assert ev.gate["error_increase"] == pytest.approx(mae_quantized - mae_float)
    pct = ev.gate["error_increase_pct"]
    assert pct == (pytest.approx((mae_quantized - mae_float) / mae_float * 100) if mae_float else None)
    failure = gate_failure(ev.gate)
    assert failure.startswith(f"mean absolute error rose by {mae_quantized - mae_float:.4g}")
    assert (f"({pct:.1f}%)" in failure) if mae_float else ("%)" not in failure.split("(allowed")[0])
    assert f"(allowed {allowed:.4g}: +10%, at least one output step)" in failure


def test_the_regression_gate_needs_targets():
    from converter.evaluate import Evaluation, Gate, apply_gate

    for maes in ({}, {"mae_float": 0.5}, {"mae_quantized": 0.5}):  # either one missing is as bad as both
        with pytest.raises(
            DataError, match=r"rows\.csv: the regression quality gate needs y to hold the targets"
        ):
            apply_gate(Evaluation(samples=100, data="rows.csv", **maes), Gate("mae", 10.0))


def test_gate_is_on_by_default_with_eval_and_off_when_asked():
    from converter.evaluate import (
        DEFAULT_MAX_ACCURACY_DROP,
        DEFAULT_MAX_ERROR_INCREASE_PCT,
        Gate,
        quality_gate,
    )

    assert DEFAULT_MAX_ACCURACY_DROP == 1.0 and DEFAULT_MAX_ERROR_INCREASE_PCT == 10.0
    assert quality_gate(None, None, False, True, "classification") == Gate("accuracy", 1.0)
    assert quality_gate(2.5, None, False, True, "classification") == Gate("accuracy", 2.5)
    assert quality_gate(None, None, True, True, "classification") is None
    assert quality_gate(None, None, False, False, "classification") is None  # nothing to evaluate on
    assert quality_gate(None, None, False, True, "regression") == Gate("mae", 10.0)
    assert quality_gate(None, 25.0, False, True, "regression") == Gate("mae", 25.0)
    assert quality_gate(None, None, True, True, "regression") is None
    assert quality_gate(None, None, False, True, "anomaly") is None  # no gate for it yet
    with pytest.raises(ConfigError, match="--no-gate and --max-accuracy-drop contradict"):
        quality_gate(1.0, None, True, True, "classification")
    with pytest.raises(ConfigError, match="--no-gate and --max-error-increase contradict"):
        quality_gate(None, 5.0, True, True, "regression")
    with pytest.raises(ConfigError, match="--max-accuracy-drop needs --eval"):
        quality_gate(1.0, None, False, False, "classification")
    with pytest.raises(
        ConfigError, match=r"^--max-accuracy-drop applies to classification models \(--max-error"
    ):
        quality_gate(1.0, None, False, True, "regression")
    with pytest.raises(
        ConfigError, match=r"^--max-error-increase applies to regression models \(--max-accuracy"
    ):
        quality_gate(None, 5.0, False, True, "classification")
    with pytest.raises(
        ConfigError, match=r"^--max-accuracy-drop is a classifier's gate, --max-error-increase a"
    ):
        quality_gate(1.0, 5.0, False, True, "regression")


def test_the_next_step_after_a_loss_points_int8_to_explain_and_fallback_and_others_to_the_next_mode():
    from converter.evaluate import next_step

    int8 = next_step("int8")
    assert (
        "see which layers lose it with edge-convert explain and keep them in float with --fallback auto"
        in int8
    )
    assert int8.endswith(
        "then try --mode int16x8, --mode float16, or --mode dynamic (needs no calibration data)"
    )
    for mode, then in (("float16", "--mode float32"), ("dynamic", "--mode int16x8 or --mode float16")):
        text = next_step(mode)
        assert "--fallback auto" not in text and "explain" not in text
        assert text.endswith(f"(the input normalization, --scale/--mean/--std), then try {then}"), text
    assert next_step("something new").endswith("then try --mode float16")


def test_collapse_is_named_with_the_next_step():
    from converter.evaluate import collapse

    assert collapse(_evaluation(0.0, 1.0), "int8") is None
    assert collapse(_evaluation(4.4, 0.93), "int8") is None  # a loss, not a collapse
    low_agreement = collapse(_evaluation(5.0, 0.6), "int8")
    big_drop = collapse(_evaluation(88.67, 0.0844), "int8")
    assert low_agreement and big_drop
    assert "8.44%" in big_drop and "88.67 points" in big_drop
    for text in (low_agreement, big_drop):
        assert "--mode dynamic" in text and "--mode float16" in text and "normalization" in text
    assert collapse(_evaluation(None, None), "int8") is None  # regression: no agreement measured
    assert collapse(_evaluation(5.0, None), "int8") is None  # no agreement measured: nothing to compare
    assert collapse(_evaluation(9.99, 0.8), "int8") is None  # both at their limits: still a loss
    assert collapse(_evaluation(10.0, 0.9), "int8") and collapse(_evaluation(1.0, 0.799), "int8")
    dynamic = collapse(_evaluation(86.89, 0.0978), "dynamic")
    assert dynamic and "--mode dynamic" not in dynamic and "--mode int16x8" in dynamic  # never the same mode
