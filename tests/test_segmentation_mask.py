"""One-channel (sigmoid) segmentation masks, as outside person-segmentation models have: the one label
names the foreground, never the background (a user saw ``{"person": 0.456, "1": 0.544}`` for a photo where
the person covered 0.545 of the frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.manifest import Manifest
from edge_agent.processing.postprocess import PostContext, create_postprocessor
from edge_agent.processing.preprocess import ImagePreprocessor
from edge_agent.runtime import load_model
from edge_agent.runtime.config import ModelConfig


def _mask_manifest(labels: list[str] | None, dtype: str = "float32", quantization=None) -> Manifest:
    return Manifest.model_validate(
        {
            "name": "personseg",
            "task": "segmentation",
            "model_file": "m.tflite",
            "sha256": "0" * 64,
            "labels": labels,
            "inputs": [{"name": "in", "shape": [1, 4, 4, 3], "dtype": "float32", "kind": "image"}],
            "outputs": [
                {
                    "name": "m",
                    "shape": [1, 2, 5, 1],
                    "dtype": dtype,
                    "role": "mask",
                    "quantization": quantization,
                }
            ],
            "preprocess": {"scale": 1.0},
        }
    )


PROBS = np.array([[[[0.9], [0.8], [0.6], [0.2], [0.1]], [[0.7], [0.5], [0.3], [0.4], [0.0]]]], np.float32)


@pytest.mark.parametrize("labels", [["person"], ["background", "person"]])
def test_one_label_names_the_foreground_of_a_probability_mask(labels: list[str]) -> None:
    post = create_postprocessor(_mask_manifest(labels))
    result = post({"mask": PROBS}, PostContext())
    assert result.to_fields() == {"class_fractions": {"background": 0.5, "person": 0.5}}
    assert result.label == "person" and result.score == 0.5  # the background is never the primary label


def test_quantized_probability_mask_and_threshold_option() -> None:
    q = {"scale": 1 / 255, "zero_point": 0}
    post = create_postprocessor(_mask_manifest(["person"], "uint8", q), {"mask_threshold": 0.75})
    raw = np.rint(PROBS * 255).astype(np.uint8)
    assert post({"mask": raw}, PostContext()).to_fields() == {
        "class_fractions": {"background": 0.8, "person": 0.2}
    }


def test_three_labels_for_a_one_channel_mask_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match=r"one-channel mask has two classes.*\[person\]"):
        create_postprocessor(_mask_manifest(["background", "person", "dog"]))


@pytest.mark.slow
def test_outside_sigmoid_person_model_configured_with_one_label(tmp_path: Path) -> None:
    """A plain .tflite with a sigmoid head (person = red), configured like an outside model: no manifest."""
    import tensorflow as tf

    size = 20
    keras = tf.keras.Sequential(
        [tf.keras.Input((size, size, 3)), tf.keras.layers.Conv2D(1, 1, activation="sigmoid")]
    )
    keras.layers[0].set_weights([np.array([20.0, 0, 0], np.float32).reshape(1, 1, 3, 1), np.array([-10.0])])
    path = tmp_path / "personseg.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras).convert())

    model = load_model(
        ModelConfig(path=path, task="segmentation", labels=["person"], preprocess={"scale": 1 / 255})
    )
    frame = np.zeros((size, size, 3), np.uint8)  # BGR, like a camera frame
    frame[:, :9, 2] = 255  # red: the "person" covers 9 of 20 columns
    ImagePreprocessor(model.input, model.manifest.preprocess)(frame, out=model.input_buffer())
    result = create_postprocessor(model.manifest)(model.invoke(), PostContext())
    assert result.to_fields() == {"class_fractions": {"background": 0.55, "person": 0.45}}
    assert result.label == "person"
