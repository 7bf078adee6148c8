"""The two tiny models of scripts/fleet-sim: int8 ``y = x @ K + bias`` regressions on 6 sensor values that
differ only in their bias (v1: what the devices' config names; v2: what the simulation deploys), each with
the manifest and golden samples edge-convert writes. Made by TensorFlow once into a folder, then reused.

Run as a program (``python scripts/fleet_sim_models.py FOLDER``) so TensorFlow's memory and threads are
gone before the daemons start; prints the two paths as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

INPUTS = 6
BIASES = {"v1": (0.0, 20.0), "v2": (5.0, 25.0)}


def _make(folder: Path, name: str, bias: tuple[float, float]) -> Path:
    import keras
    import tensorflow as tf

    from converter.golden import golden_samples
    from converter.litert import LiteModel
    from converter.manifest import build_for_file, write_beside

    kernel = np.zeros((INPUTS, 2), np.float32)
    kernel[: INPUTS // 2, 0], kernel[INPUTS // 2 :, 1] = 1.0, 0.5
    model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(2)])
    model.layers[0].set_weights([kernel, np.asarray(bias, np.float32)])
    rng = np.random.default_rng(7)
    calib = [rng.random((1, INPUTS), dtype=np.float32) for _ in range(48)] + [
        np.ones((1, INPUTS), np.float32)
    ]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([c] for c in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = folder / f"fleet-sim-{name}.tflite"
    path.write_bytes(converter.convert())
    golden, _ = golden_samples(LiteModel(path), rng.random((8, INPUTS), dtype=np.float32))
    manifest = build_for_file(
        path,
        task="regression",
        roles=["values"],
        mode="int8",
        postprocess={"names": ["load", "temperature"]},
        golden=golden,
    )
    write_beside(path, manifest)
    return path


def ensure_models(folder: Path) -> dict[str, Path]:
    """``{"v1": path, "v2": path}``, made only when a file or its manifest is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, bias in BIASES.items():
        path = folder / f"fleet-sim-{name}.tflite"
        if not (path.exists() and path.with_suffix(".json").exists()):
            path = _make(folder, name, bias)
        out[name] = path
    return out


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    print(json.dumps({k: str(v) for k, v in ensure_models(Path(sys.argv[1])).items()}))
