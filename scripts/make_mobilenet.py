#!/usr/bin/env python3
"""Build the benchmark models: MobileNetV2 224x224x3 (random weights, nothing downloaded) as float32 and
full-integer int8 .tflite files, each with its manifest, into a folder.

    python scripts/make_mobilenet.py [FOLDER] [--calib N] [--force]

Cache-friendly: a model whose .tflite and manifest are present and agree (sha256) is not rebuilt.
The int8 model is calibrated on N random images; its accuracy means nothing (random weights), its
speed and size are those of the real network. Needs the host extra: pip install 'edge-agent[convert]'.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.manifest import load_manifest

MODES = ("float32", "int8")
NAME = "mobilenet_v2_{mode}"
# keras.applications.mobilenet_v2.preprocess_input: x / 127.5 - 1
PREPROCESS = {"color": "rgb", "resize": "crop", "scale": 1 / 127.5, "mean": [1.0], "std": [1.0]}


def _is_fresh(tflite: Path) -> bool:
    manifest = tflite.with_suffix(".json")
    if not (tflite.is_file() and manifest.is_file()):
        return False
    try:
        load_manifest(manifest)  # validates and checks the sha256
    except Exception:
        return False
    return True


def write_manifest(tflite: Path, mode: str, versions: dict[str, str]) -> None:
    """The manifest beside ``tflite``, by edge-convert's own (validated) builder."""
    from converter.manifest import build_for_file, write_beside

    manifest = build_for_file(
        tflite, task="classification", mode=mode, roles=["probabilities"], kind="image",
        preprocess=PREPROCESS, postprocess={"top_k": 5}, versions=versions,
    )  # fmt: skip
    write_beside(tflite, manifest)


def build(folder: Path, calib: int = 32, force: bool = False) -> dict[str, Path]:
    """The two models in ``folder`` (built when missing or stale); mode -> .tflite path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {mode: folder / f"{NAME.format(mode=mode)}.tflite" for mode in MODES}
    todo = [mode for mode, path in paths.items() if force or not _is_fresh(path)]
    if not todo:
        return paths
    import keras
    import tensorflow as tf

    import edge_agent

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    versions = {
        "edge_agent": edge_agent.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    rng = np.random.default_rng(0)
    for mode in todo:
        t0 = time.perf_counter()
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode == "int8":
            images = [rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32) for _ in range(calib)]
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda images=images: ([x] for x in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        paths[mode].write_bytes(converter.convert())
        write_manifest(paths[mode], mode, versions)
        print(
            f"built {paths[mode]} ({paths[mode].stat().st_size / 1e6:.1f} MB) "
            f"in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("build/models"))
    parser.add_argument(
        "--calib", type=int, default=32, help="random calibration images for int8 (default 32)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are present")
    args = parser.parse_args()
    for path in build(args.folder, args.calib, args.force).values():
        print(path)


if __name__ == "__main__":
    main()
