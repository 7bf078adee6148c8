"""Postprocessors: golden results from known-head models (real TFLite), synthetic tensors where no model
can be made here (SSD's TFLite_Detection_PostProcess), option validation and user plugins."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ConfigError, DataError, ModelError
from edge_agent.manifest import Manifest
from edge_agent.processing.nms import batched_nms, nms
from edge_agent.processing.postprocess import ENTRY_POINT_GROUP, PostContext, create_postprocessor
from edge_agent.processing.preprocess import FrameTransform, ImagePreprocessor, TensorPreprocessor
from edge_agent.runtime import load_model
from edge_agent.runtime.config import ModelConfig
from tests.fixtures.tflite_models import (
    REGRESSION_BIAS,
    REGRESSION_KERNEL,
    SSD_LABELS,
    YOLO_LABELS,
    YOLO_SIZE,
    TinyModel,
)

SHA = "0" * 64


def _manifest(task: str, outputs: list[dict], labels=None, postprocess=None, inp=None) -> Manifest:
    return Manifest.model_validate(
        {
            "name": "synthetic",
            "task": task,
            "model_file": "m.tflite",
            "sha256": SHA,
            "labels": labels,
            "inputs": [inp or {"name": "in", "shape": [1, 300, 300, 3], "dtype": "uint8", "kind": "image"}],
            "outputs": outputs,
            "preprocess": {"scale": 1.0},
            "postprocess": postprocess or {},
        }
    )


def _run(model, x_frame_or_window, options=None):
    """preprocess -> invoke -> postprocess, the way the pipeline does it."""
    post = create_postprocessor(model.manifest, options)
    buf = model.input_buffer()
    if model.input.kind == "image":
        transform = ImagePreprocessor(model.input, model.manifest.preprocess)(x_frame_or_window, out=buf)
    else:
        TensorPreprocessor(model.input)(x_frame_or_window, out=buf)
        transform = None
    fed = buf.copy()
    return post(model.invoke(), PostContext(transform=transform, model_input=fed))


# -- classification ---------------------------------------------------------------------------------


def test_classification_dequantizes_with_its_own_zero_point_and_thresholds() -> None:
    m = _manifest(
        "classification",
        [
            {
                "name": "p",
                "shape": [1, 4],
                "dtype": "uint8",
                "role": "probabilities",
                "quantization": {"scale": 1 / 256, "zero_point": 0},
            }
        ],
        labels=["a", "b", "c", "d"],
        postprocess={"top_k": 3, "threshold": 0.2},
    )
    result = create_postprocessor(m)({"probabilities": np.array([[10, 200, 60, 0]], np.uint8)}, PostContext())
    assert result.label == "b" and result.class_id == 1
    assert result.score == pytest.approx(200 / 256)
    assert [c.label for c in result.top_k] == ["b", "c"]  # a (10/256) and d fall under 0.2
    assert result.to_fields()["top_k"][1] == {"label": "c", "class_id": 2, "score": pytest.approx(60 / 256)}
    nothing = create_postprocessor(m, {"threshold": 0.9})(
        {"probabilities": np.array([[10, 200, 60, 0]], np.uint8)}
    )
    assert nothing.label is None and nothing.top_k == () and nothing.score == pytest.approx(200 / 256)


def test_classification_logits_get_softmax_and_missing_labels_are_ids() -> None:
    m = _manifest(
        "classification",
        [
            {
                "name": "l",
                "shape": [1, 3],
                "dtype": "int8",
                "role": "logits",
                "quantization": {"scale": 0.1, "zero_point": -10},
            }
        ],
    )
    raw = np.array([[10, 30, -10]], np.int8)  # reals 2.0, 4.0, 0.0
    result = create_postprocessor(m, {"top_k": 1})({"logits": raw}, PostContext())
    expected = np.exp([2.0, 4.0, 0.0]) / np.exp([2.0, 4.0, 0.0]).sum()
    assert result.label == "1" and result.score == pytest.approx(expected[1], rel=1e-6)


def test_binary_classifier_with_one_sigmoid_output() -> None:
    m = _manifest(
        "classification",
        [{"name": "p", "shape": [1, 1], "dtype": "float32", "role": "probabilities"}],
        labels=["ok", "defect"],
    )
    result = create_postprocessor(m)({"probabilities": np.array([[0.8]], np.float32)}, PostContext())
    assert result.label == "defect" and result.score == pytest.approx(0.8)


def test_ties_go_to_the_lowest_class_id_on_every_cpu() -> None:
    m = _manifest(
        "classification",
        [{"name": "p", "shape": [1, 12], "dtype": "int8", "role": "probabilities",
          "quantization": {"scale": 1 / 256, "zero_point": -128}}],
    )  # fmt: skip
    raw = np.full((1, 12), -128, np.int8)
    raw[0, [9, 4, 7]] = 0  # three classes with the same quantized score
    result = create_postprocessor(m, {"top_k": 2})({"probabilities": raw}, PostContext())
    assert [c.class_id for c in result.top_k] == [4, 7]
    assert result.class_id == 4


@pytest.mark.parametrize(("dtype", "zero_point"), [(np.int8, -128), (np.uint8, 0), (np.int16, 0)])
def test_ranking_on_the_raw_integers_is_the_stable_sort_of_the_scores(dtype, zero_point: int) -> None:
    """The k best are found on the quantized values as they are (no overflow at the dtype's ends) and are
    exactly those a stable sort of all dequantized scores would give."""
    info = np.iinfo(dtype)
    m = _manifest(
        "classification",
        [{"name": "p", "shape": [1, 40], "dtype": np.dtype(dtype).name, "role": "probabilities",
          "quantization": {"scale": 1 / 256, "zero_point": zero_point}}],
    )  # fmt: skip
    post = create_postprocessor(m, {"top_k": 7})
    rng = np.random.default_rng(7)
    for _ in range(50):
        raw = rng.integers(info.min, info.max, (1, 40), endpoint=True).astype(dtype)
        raw[0, rng.choice(40, 6, replace=False)] = [info.min, info.min, info.max, info.max, 0, 0]
        scores = (raw.reshape(-1).astype(np.float64) - zero_point) / 256
        expected = np.argsort(-scores, kind="stable")[:7]
        result = post({"probabilities": raw}, PostContext())
        assert [c.class_id for c in result.top_k] == expected.tolist()
        assert [c.score for c in result.top_k] == pytest.approx(scores[expected].tolist())


def test_results_are_immutable() -> None:
    m = _manifest(
        "classification", [{"name": "p", "shape": [1, 2], "dtype": "float32", "role": "probabilities"}]
    )
    result = create_postprocessor(m)({"probabilities": np.array([[0.3, 0.7]], np.float32)}, PostContext())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.label = "x"


# -- detection: SSD (synthetic tensors as TFLite_Detection_PostProcess writes them) -------------------


def _ssd_manifest(**post) -> Manifest:
    return _manifest(
        "detection",
        [
            {
                "name": "TFLite_Detection_PostProcess",
                "shape": [1, 10, 4],
                "dtype": "float32",
                "role": "boxes",
            },
            {
                "name": "TFLite_Detection_PostProcess:1",
                "shape": [1, 10],
                "dtype": "float32",
                "role": "classes",
            },
            {
                "name": "TFLite_Detection_PostProcess:2",
                "shape": [1, 10],
                "dtype": "float32",
                "role": "scores",
            },
            {"name": "TFLite_Detection_PostProcess:3", "shape": [1], "dtype": "float32", "role": "count"},
        ],
        labels=["person", "bicycle", "car"],
        postprocess=post,
    )


def _ssd_outputs() -> dict[str, np.ndarray]:
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]  # ymin, xmin, ymax, xmax
    boxes[0, 1] = [0.0, 0.0, 1.0, 1.0]
    boxes[0, 2] = [0.3, 0.3, 0.4, 0.4]
    boxes[0, 3] = [0.5, 0.5, 0.9, 0.9]  # beyond count: garbage the op leaves behind
    classes = np.array([[2, 0, 1, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.6, 0.3, 0.99, 0, 0, 0, 0, 0, 0]], np.float32)
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": np.array([3], np.float32)}


def test_ssd_boxes_are_reordered_to_xyxy_and_count_is_respected() -> None:
    result = create_postprocessor(_ssd_manifest(threshold=0.5))(_ssd_outputs(), PostContext())
    fields = result.to_fields()["detections"]
    assert [(d["label"], d["score"]) for d in fields] == [
        ("car", pytest.approx(0.9)),
        ("person", pytest.approx(0.6)),
    ]
    assert fields[0]["box"] == pytest.approx([0.2, 0.1, 0.6, 0.5])
    assert result.label == "car" and result.score == pytest.approx(0.9)


def test_ssd_boxes_are_mapped_back_through_the_letterbox() -> None:
    # 640x480 letterboxed into 300x300: scale 300/640, content 300x225, 37 px pad at the top
    t = FrameTransform(640, 480, 300, 300, 300 / 640, 300 / 640, 0.0, 37.0)
    out = _ssd_outputs()
    out["boxes"][0, 0] = [37 / 300, 0.0, (37 + 225) / 300, 0.5]  # left half of the content, full height
    result = create_postprocessor(_ssd_manifest(threshold=0.5))(out, PostContext(transform=t))
    assert result.detections[0].box == pytest.approx((0.0, 0.0, 0.5, 1.0), abs=1e-6)


def test_ssd_label_offset_and_class_filter() -> None:
    result = create_postprocessor(_ssd_manifest(threshold=0.2, label_offset=-1, classes=["bicycle"]))(
        _ssd_outputs(), PostContext()
    )
    assert [d.label for d in result.detections] == ["bicycle"]  # class id 2 - 1


@pytest.mark.slow
def test_real_ssd_postprocess_op_roles_by_op_position_and_golden_boxes(ssd_plain: TinyModel) -> None:
    model = load_model(ModelConfig(path=ssd_plain.path, task="detection", labels=SSD_LABELS,
                                   preprocess={"resize": "stretch", "scale": 1 / 255}))  # fmt: skip
    roles = {o.name: o.role for o in model.manifest.outputs}
    assert sorted(roles.values()) == ["boxes", "classes", "count", "scores"]
    # the interpreter lists these outputs in no useful order; the op's own output positions decide
    assert roles == {"PartitionedCall:0": "boxes", "PartitionedCall:1": "classes",
                     "PartitionedCall:2": "scores", "PartitionedCall:3": "count"}  # fmt: skip
    result = _run(model, np.zeros((48, 64, 3), np.uint8), {"threshold": 0.25})
    got = [(d.label, round(d.score, 3), d.box) for d in result.detections]
    assert [g[:2] for g in got] == [("person", 0.9), ("car", 0.7), ("person", 0.3)]
    # anchor (yc, xc, h, w) = (0.5, 0.5, 0.5, 0.5) -> [xmin, ymin, xmax, ymax] = [0.25, 0.25, 0.75, 0.75]
    assert got[0][2] == pytest.approx((0.25, 0.25, 0.75, 0.75), abs=1e-6)
    assert got[1][2] == pytest.approx((0.1, 0.1, 0.3, 0.3), abs=1e-6)
    assert got[2][2] == pytest.approx((0.75, 0.75, 0.85, 0.85), abs=1e-6)
    assert [d.label for d in _run(model, np.zeros((48, 64, 3), np.uint8)).detections] == ["person", "car"]


# -- detection: YOLO ------------------------------------------------------------------------------


def test_nms_is_greedy_and_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]
    assert batched_nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5).tolist() == [0, 2, 3]
    assert batched_nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5, class_agnostic=True).tolist() == [0, 3]
    assert batched_nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5, max_out=2).tolist() == [0, 2]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["yolo_float32", "yolo_int8"])
def test_yolo_model_golden_detections_in_the_original_frame(fixture: str, request) -> None:
    tiny: TinyModel = request.getfixturevalue(fixture)
    model = load_model(ModelConfig(path=tiny.path))
    q = model.manifest.outputs[0].quantization
    # int8: boxes (pixels up to 28) and scores share one scale, so a score is only good to half a step
    # (~0.06 here); a box corner to half a step of input pixels (~0.002 of the frame after the letterbox)
    score_tol, tol = (
        (1e-6, 1e-6) if q is None else (q.scale / 2 + 1e-6, q.scale / 2 / YOLO_SIZE * 640 / 480 + 1e-6)
    )
    frame = np.zeros((480, 640, 3), np.uint8)
    result = _run(model, frame)
    # letterbox 640x480 -> 32x24 + 4 px pad top: input box x 8..24, y 4..28 is frame x 0.25..0.75, y 0..1
    assert [d.label for d in result.detections] == ["person", "car"]
    assert [d.score for d in result.detections] == pytest.approx([0.9, 0.7], abs=score_tol)
    assert result.detections[0].box == pytest.approx((0.25, 0.0, 0.75, 1.0), abs=tol)
    # the car box is 1 input px right: 1/32 input = 20 frame px = 1/32 of the width
    assert result.detections[1].box == pytest.approx((0.25 + 1 / 32, 0.0, 0.75 + 1 / 32, 1.0), abs=tol)
    agnostic = _run(model, frame, {"class_agnostic": True})
    assert [d.label for d in agnostic.detections] == ["person"]


@pytest.mark.slow
def test_yolo_transposed_normalized_head_without_manifest(yolo_transposed_plain: TinyModel) -> None:
    model = load_model(
        ModelConfig(
            path=yolo_transposed_plain.path,
            task="detection",
            labels=YOLO_LABELS,
            preprocess={"resize": "stretch", "scale": 1 / 255},
        )
    )
    assert model.manifest.outputs[0].role == "yolo" and model.manifest.outputs[0].shape == [1, 6, 16]
    result = _run(model, np.zeros((64, 64, 3), np.uint8), {"threshold": 0.5})
    assert [d.label for d in result.detections] == ["person", "car"]
    assert result.detections[0].box == pytest.approx((0.25, 0.125, 0.75, 0.875), abs=1e-6)


def test_yolo_v5_objectness_and_wrong_labels() -> None:
    out = {"name": "y", "shape": [1, 2, 7], "dtype": "float32", "role": "yolo"}
    inp = {"name": "in", "shape": [1, 100, 100, 3], "dtype": "float32", "kind": "image"}
    m = _manifest(
        "detection", [out], labels=["a", "b"], inp=inp, postprocess={"objectness": True, "threshold": 0.3}
    )
    rows = np.array([[[50, 50, 20, 20, 0.5, 0.9, 0.1], [10, 10, 4, 4, 0.2, 0.9, 0.9]]], np.float32)
    result = create_postprocessor(m)({"yolo": rows}, PostContext())
    assert [(d.label, d.score) for d in result.detections] == [("a", pytest.approx(0.45))]
    assert result.detections[0].box == pytest.approx((0.4, 0.4, 0.6, 0.6))
    with pytest.raises(ModelError, match="no axis of 6"):
        create_postprocessor(m, {"objectness": False})({"yolo": rows}, PostContext())


# -- regression, anomaly, segmentation on real models -------------------------------------------------


@pytest.mark.slow
def test_regression_golden_values_with_names_and_units(regression_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=regression_int8.path))
    x = np.array([0.2, 0.3, 0.1, 0.8, 0.4, 0.6])
    result = _run(model, x)
    expected = x @ REGRESSION_KERNEL + REGRESSION_BIAS  # [0.6, 20.9]
    fields = result.to_fields()
    assert fields["units"] == {"load": "kg", "temperature": "°C"}
    assert fields["values"]["load"] == pytest.approx(expected[0], abs=0.03)
    assert fields["values"]["temperature"] == pytest.approx(expected[1], abs=0.1)
    with pytest.raises(ModelError, match=r"postprocess\.names: 3 names for 2 output values"):
        create_postprocessor(model.manifest, {"names": ["a", "b", "c"], "units": None})


@pytest.mark.slow
def test_anomaly_reconstruction_error_is_mse_of_dequantized_tensors(autoencoder_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=autoencoder_int8.path))
    normal = _run(model, np.array([0.5, 0.2, 0.9, 0.4, 0, 0, 0, 0]))
    odd = _run(model, np.array([0.5, 0.2, 0.9, 0.4, 1, 1, 0.5, 0.5]))
    assert normal.anomaly_score == pytest.approx(0.0, abs=2e-4) and not normal.is_anomaly
    assert odd.anomaly_score == pytest.approx((1 + 1 + 0.25 + 0.25) / 8, abs=0.01)  # 0.3125
    assert odd.to_fields() == {"anomaly_score": odd.anomaly_score, "threshold": 0.1, "is_anomaly": True}
    assert (odd.label, normal.label) == ("anomaly", "normal")
    with pytest.raises(DataError, match="model_input"):
        create_postprocessor(model.manifest)(model.invoke(), PostContext())


@pytest.mark.slow
def test_anomaly_score_output_without_manifest(anomaly_score_plain: TinyModel) -> None:
    model = load_model(
        ModelConfig(path=anomaly_score_plain.path, task="anomaly", postprocess={"threshold": 0.5})
    )
    assert model.manifest.outputs[0].role == "anomaly_score"
    result = _run(model, np.full(8, 0.75))
    assert result.anomaly_score == pytest.approx(0.75, abs=1e-6) and result.is_anomaly


def test_anomaly_needs_a_threshold() -> None:
    m = _manifest("anomaly", [{"name": "s", "shape": [1, 1], "dtype": "float32", "role": "anomaly_score"}])
    with pytest.raises(ConfigError, match=r"postprocess.threshold: Field required"):
        create_postprocessor(m)


@pytest.mark.slow
def test_segmentation_golden_fractions(segmentation_int8: TinyModel) -> None:
    model = load_model(ModelConfig(path=segmentation_int8.path))
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[:, :4] = (0, 0, 200)  # red: background, half
    frame[:, 4:6] = (0, 200, 0)  # green: road, a quarter
    frame[:, 6:] = (200, 0, 0)  # blue: sky, a quarter
    result = _run(model, frame)
    assert result.to_fields() == {"class_fractions": {"background": 0.5, "road": 0.25, "sky": 0.25}}
    assert result.label in ("road", "sky") and result.score == 0.25  # background is never the primary label
    assert "mask" not in str(result.to_fields())


def test_segmentation_from_class_ids() -> None:
    m = _manifest(
        "segmentation",
        [{"name": "m", "shape": [1, 2, 4], "dtype": "int32", "role": "mask"}],
        labels=["bg", "cat"],
        postprocess={"min_fraction": 0.2},
    )
    result = create_postprocessor(m)(
        {"mask": np.array([[[0, 0, 0, 1], [0, 0, 1, 1]]], np.int32)}, PostContext()
    )
    assert result.to_fields() == {"class_fractions": {"bg": 0.625, "cat": 0.375}}
    assert result.label == "bg"  # no background option: the largest class


# -- registry -----------------------------------------------------------------------------------------


def test_unknown_option_and_unknown_postprocessor_are_clear_config_errors() -> None:
    m = _manifest(
        "classification", [{"name": "p", "shape": [1, 2], "dtype": "float32", "role": "probabilities"}]
    )
    with pytest.raises(ConfigError, match=r"postprocess.topk: Extra inputs are not permitted.*takes: top_k"):
        create_postprocessor(m, {"topk": 3})
    with pytest.raises(ConfigError, match=r"postprocess.threshold: .*less than or equal to 1 \(got 5\)"):
        create_postprocessor(m, {"threshold": 5})
    with pytest.raises(
        ConfigError, match=r"unknown postprocessor 'nope'; available: anomaly, classification"
    ):
        create_postprocessor(m, {"type": "nope"})


def test_missing_output_role_is_a_model_error() -> None:
    m = _manifest("detection", [{"name": "p", "shape": [1, 2], "dtype": "float32", "role": "probabilities"}])
    with pytest.raises(ModelError, match="needs an output with role 'boxes'"):
        create_postprocessor(m)


def test_user_plugin_from_the_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed-distribution layout (dist-info with entry_points.txt) on sys.path."""
    (tmp_path / "my_heads.py").write_text(
        textwrap.dedent(
            """
        from dataclasses import dataclass
        import numpy as np

        @dataclass(frozen=True)
        class Level:
            label: str
            score: float
            def to_fields(self):
                return {"label": self.label, "level": self.score}

        class LevelHead:
            def __init__(self, manifest, options):
                self.full = options.get("full", 1.0)
            def __call__(self, outputs, ctx):
                v = float(np.asarray(outputs["values"]).reshape(-1)[0]) / self.full
                return Level("full" if v > 0.9 else "ok", v)
        """
        )
    )
    dist = tmp_path / "my_heads-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-heads\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nlevel = my_heads:LevelHead\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = _manifest(
        "regression",
        [{"name": "v", "shape": [1, 1], "dtype": "float32", "role": "values"}],
        postprocess={"type": "level", "full": 2.0},
    )
    result = create_postprocessor(m)({"values": np.array([[1.9]], np.float32)}, PostContext())
    assert result.to_fields() == {"label": "full", "level": pytest.approx(0.95)}
    monkeypatch.delitem(sys.modules, "my_heads", raising=False)
