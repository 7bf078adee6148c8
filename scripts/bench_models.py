"""Benchmark models, made once into a cache folder (TensorFlow runs here, in its own process, never in the
process that measures). Nothing is downloaded: MobileNetV2 has random weights (``weights=None``), the
digits CNN trains on scikit-learn's bundled digits, the sensor model trains on synthetic windows.

    python scripts/bench_models.py --out DIR mobilenet digits sensor

prints one JSON object: model name -> {"tflite": path, "keras": path, "how": ...}. Files that exist are
reused. MobileNetV2 comes from scripts/make_mobilenet.py (the runtime's maker) when that script exists,
the digits model from ``edge-convert`` when it is installed; otherwise the fallback below converts with
TFLiteConverter directly and writes the same manifest the converter would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SENSOR_WINDOW = 32  # samples per window (about 0.3 s of a 100 Hz accelerometer)
SENSOR_CHANNELS = 3  # ax, ay, az
SENSOR_LABELS = ["idle", "walk", "run"]


def log(text: str) -> None:
    click.echo(f"bench_models: {text}", err=True)


# ------------------------------------------------------------------------------------------- conversion


def convert(model, mode: str, representative: np.ndarray | None) -> bytes:
    """Keras model -> .tflite: full-integer int8 (int8 I/O, calibrated on ``representative``) or float32."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "int8":
        assert representative is not None

        def samples():
            for x in representative:
                yield [x[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def write_manifest(
    tflite: Path,
    *,
    name: str,
    task: str,
    mode: str,
    kind: str,
    role: str,
    labels: list[str] | None,
    preprocess: dict | None,
) -> None:
    """The manifest beside ``tflite``, from the real tensors, by edge-convert's own (validated) builder."""
    from converter.manifest import build_for_file, write_beside

    manifest = build_for_file(
        tflite, name=name, task=task, mode=mode, kind=kind, roles=[role], labels=labels,
        preprocess=preprocess, versions={"by": "scripts/bench_models.py"},
    )  # fmt: skip
    write_beside(tflite, manifest)


# ------------------------------------------------------------------------------------------- MobileNetV2


def mobilenet(out: Path, calib: int) -> dict:
    """MobileNetV2 int8 + float32 from scripts/make_mobilenet.py (the runtime's maker, the manifests the
    product uses), plus the same Keras model saved for the Keras-in-TensorFlow row. The fallback below
    (no make_mobilenet.py) converts with TFLiteConverter the same way."""
    import keras

    keras_path = out / "mobilenet_v2.keras"
    if not keras_path.exists():
        keras.utils.set_random_seed(0)  # the seed make_mobilenet.py uses: the same weights
        keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None).save(keras_path)
    maker = ROOT / "scripts" / "make_mobilenet.py"
    if maker.exists():
        sys.path.insert(0, str(maker.parent))
        from make_mobilenet import build

        made = build(out, calib)  # reuses files that are present and match their manifest
        return {
            f"mobilenet_v2_{m}": {"tflite": str(p), "keras": str(keras_path), "how": "make_mobilenet.py"}
            for m, p in made.items()
        }
    made = {m: out / f"mobilenet_v2_{m}.tflite" for m in ("int8", "float32")}
    if not all(p.exists() and p.with_suffix(".json").exists() for p in made.values()):
        log(f"building MobileNetV2 224x224 (weights=None); int8 ({calib} random calibration images), float32")
        model = keras.models.load_model(keras_path, compile=False)
        rep = np.random.default_rng(0).uniform(-1, 1, size=(calib, 224, 224, 3)).astype(np.float32)
        pre = {"color": "rgb", "resize": "crop", "scale": 1 / 127.5, "mean": [1.0], "std": [1.0]}
        for mode, path in made.items():
            path.write_bytes(convert(model, mode, rep if mode == "int8" else None))
            write_manifest(
                path,
                name=f"mobilenet_v2_{mode}",
                task="classification",
                mode=mode,
                kind="image",
                role="probabilities",
                labels=None,
                preprocess=pre,
            )
    return {
        f"mobilenet_v2_{m}": {"tflite": str(p), "keras": str(keras_path), "how": "TFLiteConverter"}
        for m, p in made.items()
    }


def camera_video(out: Path, frames: int) -> Path:
    """A 640x480 MJPG .avi (a camera's usual size and codec): a slow pan across scikit-learn's two bundled
    photos (china.jpg, flower.jpg; offline), so that every frame is a different, natural-looking JPEG."""
    import cv2
    import sklearn

    path = out / f"camera-640x480-{frames}.avi"
    if path.exists():
        return path
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    photos = [
        cv2.resize(cv2.imread(str(p)), (960, 720), interpolation=cv2.INTER_LINEAR)
        for p in sorted(folder.glob("*.jpg"))
    ]
    tmp = path.with_name(path.stem + ".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480), True)
    if not writer.isOpened():
        raise RuntimeError(f"{tmp}: OpenCV cannot write an MJPG video here")
    for k in range(frames):
        photo = photos[(k // 150) % len(photos)]
        t = (k % 150) / 150
        x, y = int(320 * t), int(240 * (0.5 + 0.5 * np.sin(2 * np.pi * t)))
        writer.write(np.ascontiguousarray(photo[y : y + 480, x : x + 640]))
    writer.release()
    tmp.rename(path)
    return path


# ------------------------------------------------------------------------------------------- digits CNN


def digits(out: Path) -> dict:
    from converter import examples

    keras_path, tflite = out / "digits.keras", out / "digits_int8.tflite"
    video = out / "digits.avi"
    data = examples.write_digits_data(out)
    if not keras_path.exists():
        log("training the digits CNN (sklearn digits, offline)")
        examples.train_digits(keras_path)
    how = "cached"
    if not (tflite.exists() and tflite.with_suffix(".json").exists()):
        edge_convert = Path(sys.executable).with_name("edge-convert")
        if edge_convert.exists() and (ROOT / "converter" / "cli.py").exists():
            how = "edge-convert"
            cmd = [
                str(edge_convert),
                "quantize",
                str(keras_path),
                "-o",
                str(tflite),
                "--calib",
                str(data["train"]),
                "--labels",
                str(data["labels"]),
                "--color",
                "gray",
                "--resize",
                "stretch",
                "--scale",
                repr(1 / 255),
            ]
            done = subprocess.run(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
            )
            if done.returncode != 0 or not tflite.exists():
                log(f"edge-convert failed ({done.stderr.strip()[-300:]}); converting here instead")
                how = ""
        if how != "edge-convert":
            import keras

            how = "TFLiteConverter"
            model = keras.models.load_model(keras_path)
            x_train = np.load(data["train"])["x"]
            tflite.write_bytes(convert(model, "int8", x_train[:200]))
            write_manifest(
                tflite,
                name="digits_int8",
                task="classification",
                mode="int8",
                kind="image",
                role="probabilities",
                labels=examples.DIGIT_LABELS,
                preprocess=examples.DIGITS_PREPROCESS,
            )
    if not video.exists():
        x_test = np.load(data["test"])["x"]
        frames = np.concatenate([x_test] * 10)  # 4,500 frames of 64x64: a few seconds at full speed
        examples.render_digits_video(video, frames, fps=30)
    return {"digits_int8": {"tflite": str(tflite), "keras": str(keras_path), "video": str(video), "how": how}}


# ------------------------------------------------------------------------------------------- sensor model


def sensor_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic accelerometer windows (n, SENSOR_WINDOW, 3): idle, walk (2 Hz), run (3 Hz, 3x amplitude)."""
    rng = np.random.default_rng(seed)
    t = np.arange(SENSOR_WINDOW) / 100.0
    y = rng.integers(0, len(SENSOR_LABELS), n)
    freq = np.array([0.0, 2.0, 3.0])[y][:, None, None]
    amp = np.array([0.0, 1.0, 3.0])[y][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, SENSOR_CHANNELS))
    x = amp * np.sin(2 * np.pi * freq * t[None, :, None] + phase) + rng.normal(0, 0.1, (n, SENSOR_WINDOW, 3))
    x[:, :, 2] += 1.0  # gravity on z
    return x.astype(np.float32), y


def sensor(out: Path) -> dict:
    tflite, keras_path = out / "sensor_dense_int8.tflite", out / "sensor_dense.keras"
    if not (tflite.exists() and tflite.with_suffix(".json").exists()):
        import keras

        log("training the small dense sensor model (synthetic accelerometer windows)")
        keras.utils.set_random_seed(0)
        x, y = sensor_windows(3000, seed=0)
        model = keras.Sequential(
            [
                keras.Input(shape=(SENSOR_WINDOW, SENSOR_CHANNELS), name="window"),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(len(SENSOR_LABELS), activation="softmax", name="probabilities"),
            ],
            name="sensor_dense",
        )
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=5, batch_size=64, verbose=0)
        model.save(keras_path)
        tflite.write_bytes(convert(model, "int8", x[:300]))
        write_manifest(
            tflite,
            name="sensor_dense_int8",
            task="classification",
            mode="int8",
            kind="tensor",
            role="probabilities",
            labels=SENSOR_LABELS,
            preprocess=None,
        )
    return {
        "sensor_dense_int8": {
            "tflite": str(tflite),
            "keras": str(keras_path),
            "window": SENSOR_WINDOW,
            "channels": SENSOR_CHANNELS,
        }
    }


@click.command()
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Cache folder for the model files."
)
@click.option(
    "--calib", default=32, show_default=True, help="Random calibration images for MobileNetV2 int8."
)
@click.option("--frames", default=1500, show_default=True, help="Frames of the 640x480 camera video.")
@click.argument("which", nargs=-1, type=click.Choice(["mobilenet", "camera", "digits", "sensor"]))
def main(out: Path, calib: int, frames: int, which: tuple[str, ...]) -> None:
    """Make (or reuse) the benchmark's models in OUT and print where they are as JSON."""
    out.mkdir(parents=True, exist_ok=True)
    made: dict = {}
    for name in which:
        made.update(
            {
                "mobilenet": lambda: mobilenet(out, calib),
                "digits": lambda: digits(out),
                "sensor": lambda: sensor(out),
                "camera": lambda: {"camera": {"video": str(camera_video(out, frames))}},
            }[name]()
        )
    click.echo(json.dumps(made))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
