"""What a reload compares before it loads a model again: the settings and every file the load read."""

from __future__ import annotations

import shutil
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.model_loader import ModelLoader
from tests.fixtures.tflite_models import COLOR_LABELS, TinyModel


def test_a_model_counts_as_unchanged_until_its_settings_file_manifest_or_labels_file_changes(
    tmp_path: Path, color_int8: TinyModel, color_uint8: TinyModel
) -> None:
    model = tmp_path / "color.tflite"
    shutil.copy(color_int8.path, model)
    shutil.copy(color_int8.manifest_path, model.with_suffix(".json"))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(COLOR_LABELS) + "\n")
    doc = {
        "device_id": "d",
        "mqtt": {"host": "127.0.0.1"},
        "pipelines": [
            {
                "name": "c",
                "source": {"type": "camera", "url": str(tmp_path / "cam.avi")},
                "model": {"path": str(model), "labels_file": str(labels)},
            }
        ],
    }
    pcfg = parse_config(doc).pipelines[0]
    loader = ModelLoader()
    stages = loader.load(pcfg)
    try:
        assert loader.unchanged(stages, pcfg)

        labels.write_text("\n".join(reversed(COLOR_LABELS)) + "\n")
        assert not loader.unchanged(stages, pcfg), "the labels file changed"
        labels.write_text("\n".join(COLOR_LABELS) + "\n")
        assert loader.unchanged(stages, pcfg)

        manifest = model.with_suffix(".json")
        text = manifest.read_text()
        manifest.write_text(text + " ")
        assert not loader.unchanged(stages, pcfg), "the manifest changed"
        manifest.write_text(text)

        shutil.copy(color_uint8.path, model)
        assert not loader.unchanged(stages, pcfg), "the model file changed"
        shutil.copy(color_int8.path, model)
        assert loader.unchanged(stages, pcfg)

        threads = pcfg.model_copy(update={"model": pcfg.model.model_copy(update={"num_threads": 2})})
        assert not loader.unchanged(stages, threads), "a setting changed"
        deployed = tmp_path / "deployed" / "abc.tflite"  # a fleet deployment's file instead of the config's
        deployed.parent.mkdir()
        shutil.copy(color_int8.path, deployed)
        assert not loader.unchanged(stages, pcfg, deployed)
        edgetpu = pcfg.model_copy(update={"model": pcfg.model.model_copy(update={"delegate": "edgetpu"})})
        edgetpu_stages = loader.load(edgetpu)  # no Edge TPU here: it runs on the CPU; a reload tries again
        try:
            assert edgetpu_stages.info.delegate_error and not loader.unchanged(edgetpu_stages, edgetpu)
        finally:
            edgetpu_stages.model.close()

        model.unlink()
        assert not loader.unchanged(stages, pcfg), "a missing file: the load says why"
    finally:
        stages.model.close()
