"""The converter's own model on the device side with no configuration beyond its path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.processing.postprocess import PostContext, create_postprocessor
from edge_agent.processing.preprocess import ImagePreprocessor
from edge_agent.runtime import load_model
from edge_agent.runtime.config import ModelConfig

pytestmark = pytest.mark.slow  # trains and converts with TensorFlow (cached across sessions)


def test_edge_convert_model_classifies_the_rendered_video_from_its_path_alone(
    digits_int8: Path, digits_video
) -> None:
    import cv2

    model = load_model(ModelConfig(path=digits_int8))
    assert model.backend == "litert" and model.manifest.task == "classification"
    assert model.manifest.sha256 == json.loads(digits_int8.with_suffix(".json").read_text())["sha256"]
    pre = ImagePreprocessor(model.input, model.manifest.preprocess)
    post = create_postprocessor(model.manifest)
    buf = model.input_buffer()
    cap = cv2.VideoCapture(str(digits_video.path))
    predicted = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            transform = pre(frame, out=buf)
            predicted.append(post(model.invoke(), PostContext(transform=transform)).label)
    finally:
        cap.release()
    assert len(predicted) == len(digits_video.labels)
    accuracy = np.mean([p == t for p, t in zip(predicted, digits_video.labels, strict=True)])
    # the converter measured ~96% on the held-out set; MJPG compression of the frames costs a little
    assert accuracy >= 0.9, (accuracy, predicted[:20], digits_video.labels[:20])
