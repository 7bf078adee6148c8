"""The digits example: a tiny real model and real data, used by the tests, the demo and the benchmarks.

sklearn's ``load_digits`` ships with scikit-learn (no download): 1,797 gray 8x8 images with pixel
values 0..16. The CNN is trained on ``x = pixel / 16`` in [0, 1]. Video frames are the same digits
rendered at 8x (64x64, ``pixel * 255 / 16``), so the device's preprocessing (gray, INTER_AREA resize
to 8x8, scale 1/255) gives back ``x`` up to JPEG rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

if TYPE_CHECKING:
    import keras

DIGIT_LABELS = [str(d) for d in range(10)]
# What the manifest of a digits model declares, so that a rendered frame preprocesses back to x.
DIGITS_PREPROCESS = {"color": "gray", "resize": "stretch", "scale": 1 / 255}
DIGITS_TEST_FRACTION = 0.25  # 450 held-out images: enough to see a 1-point accuracy change


@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray  # float32 (N, 8, 8, 1) in [0, 1]
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """Stratified train/test split of sklearn's digits, as the CNN expects them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=seed
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def build_digits_cnn(width: float = 1.0) -> keras.Model:
    """A small CNN with a softmax head: input (1, 8, 8, 1), 10 classes. About 150k parameters, so that
    weights, not flatbuffer overhead, dominate the file size, as in real models. ``width`` multiplies
    every hidden layer's channels/units (a distilled student is narrower)."""
    import keras

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Conv2D(scaled(32), 3, padding="same", activation="relu"),
            keras.layers.Conv2D(scaled(64), 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(scaled(128), activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )


def train_digits(path: Path, epochs: int = 40, seed: int = 0) -> float:
    """Train the digits CNN (seconds on 1 core), save it to ``path`` (.keras or .h5), return test accuracy."""
    import keras

    keras.utils.set_random_seed(seed)
    split = load_digits_split(seed)
    model = build_digits_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(0.002), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    _, accuracy = model.evaluate(split.x_test, split.y_test, verbose=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return float(accuracy)


# A digits model where plain int8 loses accuracy for a real reason: a few channels of one hidden layer
# carry huge activations. Their conv weights are multiplied by a factor and the next layer's weights for
# them divided by it: ReLU is positively homogeneous, so the float model is unchanged, but int8 shares one
# scale per activation tensor, so the large channels leave the others only a few quantization steps.
# Measured (tensorflow-cpu 2.21, 300 calibration samples): float 96.89%; int8 96.22% at factor 150,
# 92.44% at 200 (a 4.4-point drop), 10.22% at 1000 (a collapse).
OUTLIER_CHANNELS = (0, 1, 2)
OUTLIER_LAYER = "outliers"


def build_small_digits_cnn() -> keras.Model:
    """Two small convolutions and a dense head: trains in seconds; the first conv is OUTLIER_LAYER."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=OUTLIER_LAYER),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_outliers",
    )


def add_outlier_channels(model: keras.Model, factor: float) -> None:
    """Scale OUTLIER_CHANNELS of OUTLIER_LAYER's output by ``factor`` and undo it in the next layer, in
    place: the float model's outputs do not change, its activation range grows ``factor`` times."""
    first, second = model.get_layer(OUTLIER_LAYER), model.get_layer("conv")
    (kernel, bias), (next_kernel, next_bias) = first.get_weights(), second.get_weights()
    channels = list(OUTLIER_CHANNELS)
    kernel[..., channels] *= factor
    bias[channels] *= factor
    next_kernel[:, :, channels, :] /= factor
    first.set_weights([kernel, bias])
    second.set_weights([next_kernel, next_bias])


def train_outlier_digits(
    directory: Path, factors: tuple[float, ...] = (200.0,), epochs: int = 15, seed: int = 0
) -> dict[float, Path]:
    """Train the small digits CNN once and save one copy per outlier ``factor`` into ``directory``
    (``digits_outliers_<factor>.keras``); factor -> path."""
    import keras

    keras.utils.set_random_seed(seed)
    split = load_digits_split(seed)
    model = build_small_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    trained = model.get_weights()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for factor in factors:
        model.set_weights(trained)
        add_outlier_channels(model, factor)
        paths[factor] = directory / f"digits_outliers_{factor:g}.keras"
        model.save(paths[factor])
    return paths


def write_digits_data(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Write train.npz and test.npz (arrays x, y) and labels.txt ('0'..'9') into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    split = load_digits_split(seed)
    paths = {
        "train": directory / "train.npz",
        "test": directory / "test.npz",
        "labels": directory / "labels.txt",
    }
    np.savez(paths["train"], x=split.x_train, y=split.y_train)
    np.savez(paths["test"], x=split.x_test, y=split.y_test)
    paths["labels"].write_text("\n".join(DIGIT_LABELS) + "\n")
    return paths


def digit_frame(image: np.ndarray, scale: int = 8) -> np.ndarray:
    """One digit (8x8, values x in [0, 1]) as a BGR uint8 frame of (8*scale)^2 pixels, pixel = x*255."""
    gray = np.clip(np.rint(np.asarray(image, dtype=np.float32).reshape(8, 8) * 255.0), 0, 255).astype(
        np.uint8
    )
    big = np.kron(gray, np.ones((scale, scale), dtype=np.uint8))
    return np.repeat(big[:, :, None], 3, axis=2)


def render_digits_video(
    path: Path, images: np.ndarray, fps: float = 10.0, scale: int = 8, labels: np.ndarray | None = None
) -> list[str]:
    """Write ``images`` (x in [0, 1], (N, 8, 8[, 1])) as an MJPG .avi, one digit per frame.

    With ``labels`` (class ids), the ground truth is written beside the video as ``<stem>.labels.txt``
    (one label per frame) and returned.
    """
    import cv2

    path = Path(path)
    size = 8 * scale
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (size, size), True)
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write an MJPG video here")
    writer.set(
        cv2.VIDEOWRITER_PROP_QUALITY, 100
    )  # keep JPEG rounding small: 8x8 blocks survive almost exactly
    try:
        for image in images:
            writer.write(digit_frame(image, scale))
    finally:
        writer.release()
    truth = [DIGIT_LABELS[int(y)] for y in labels] if labels is not None else []
    if labels is not None:
        path.with_suffix(".labels.txt").write_text("\n".join(truth) + "\n")
    return truth


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--video-frames", type=click.IntRange(0), default=100, show_default=True)
def main(directory: Path, epochs: int, seed: int, video_frames: int) -> None:
    """Write the digits example into DIRECTORY: digits.keras, train.npz, test.npz, labels.txt and
    digits.avi (held-out digits as video, ground truth in digits.labels.txt)."""
    from converter import quiet

    quiet.set_verbose(False)
    paths = write_digits_data(directory, seed)
    with quiet.captured_fds():
        accuracy = train_digits(directory / "digits.keras", epochs=epochs, seed=seed)
    split = load_digits_split(seed)
    if video_frames:
        render_digits_video(
            directory / "digits.avi", split.x_test[:video_frames], 10.0, labels=split.y_test[:video_frames]
        )
    click.echo(
        f"wrote {directory}/digits.keras (test accuracy {accuracy * 100:.2f}%), "
        f"{', '.join(p.name for p in paths.values())}" + (", digits.avi" if video_frames else "")
    )


if __name__ == "__main__":
    main()
