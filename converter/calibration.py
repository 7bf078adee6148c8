"""Representative and labelled data for calibration and evaluation: image folders, .npy, .npz, CSV;
and the calibration decisions: which samples ``--calib`` gives, and what they say about the pixel
scaling the manifest declares (read off the data, or checked against --scale/--mean/--std).

Arrays are taken as already preprocessed (what the model sees). Images are preprocessed with the
device's own ``ImagePreprocessor`` from the manifest fields, so calibration sees exactly the numbers
the device will compute from a camera frame.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
import numpy as np

from converter.options import warn
from edge_agent.errors import ConfigError, DataError, DependencyError, missing_extra
from edge_agent.manifest import InputSpec, Preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass
class Samples:
    """Model-ready float32 samples (batch first) and what the manifest records about them."""

    x: np.ndarray
    summary: dict[str, Any]


@dataclass
class Labelled:
    x: np.ndarray
    y: np.ndarray  # class indices (classification) or target values
    source: str


def describe_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def fit_to_input(x: np.ndarray, input_shape: tuple[int | None, ...], source: str, what: str) -> np.ndarray:
    """Return ``x`` shaped (N, *input_shape[1:]); DataError naming both shapes when it cannot be."""
    expected = tuple(input_shape[1:])

    def matches(shape: tuple[int, ...]) -> bool:
        if len(shape) != len(expected):
            return False
        return all(e is None or e == s for e, s in zip(expected, shape, strict=True))

    x = np.asarray(x)
    if x.ndim >= 1 and matches(x.shape[1:]):
        return x.astype(np.float32, copy=False)
    if x.ndim >= 1 and matches((*x.shape[1:], 1)):  # (N, 8, 8) for a (8, 8, 1) input
        return x[..., None].astype(np.float32, copy=False)
    if x.ndim == 2 and None not in expected and x.shape[1] == math.prod(expected):  # flattened rows (CSV)
        return x.reshape((len(x), *expected)).astype(np.float32, copy=False)
    raise DataError(
        f"{what} {source}: samples have shape {describe_shape(tuple(x.shape[1:]))} "
        f"(array {describe_shape(x.shape)}) "
        f"but the model input is {describe_shape(input_shape)}; give samples shaped "
        f"(N, {', '.join(str(d) for d in expected)})"
    )


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"{what} {path}: not a readable .npz file ({exc})") from None


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{what} {path}: not a readable .npy file ({exc})") from None


def _read_csv(path: Path, what: str) -> np.ndarray:
    """Numeric rows; a first row that is not numeric is taken as a header and skipped."""
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path}: cannot read CSV ({exc})") from None
    if rows:
        try:
            [float(c) for c in rows[0]]
        except ValueError:
            rows = rows[1:]
    if not rows:
        raise DataError(f"{what} {path}: CSV has no data rows")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DataError(f"{what} {path}: CSV rows have different numbers of columns ({sorted(widths)})")
    try:
        return np.array([[float(c) for c in r] for r in rows], dtype=np.float32)
    except ValueError as exc:
        raise DataError(f"{what} {path}: CSV has a non-numeric value ({exc})") from None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subset(n_total: int, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` samples, a seeded random subset when there are more."""
    if n_total <= limit:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=limit, replace=False))


class ImageReader:
    """Reads image files with OpenCV and preprocesses them like the device does."""

    def __init__(self, input_shape: tuple[int | None, ...], preprocess: Preprocess) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise missing_extra("opencv-python-headless", "convert", exc) from None
        try:
            from edge_agent.processing.preprocess import ImagePreprocessor
        except ImportError as exc:
            raise DependencyError(
                f"image calibration needs edge_agent.processing.preprocess.ImagePreprocessor ({exc}); "
                "give the data as .npy/.npz instead"
            ) from None
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise DataError(
                f"image files need a model with a fixed (N, H, W, C) input, not {describe_shape(input_shape)}"
            )
        spec = InputSpec(
            name="input", shape=[1, *input_shape[1:]], dtype="float32", kind="image", layout="NHWC"
        )
        self._cv2 = cv2
        self._pre = ImagePreprocessor(spec, preprocess)
        self.shape = tuple(input_shape[1:])

    def read(self, path: Path) -> np.ndarray | None:
        frame = self._cv2.imread(str(path), self._cv2.IMREAD_COLOR)
        if frame is None:
            return None
        x, _ = self._pre.to_float(frame)
        return np.asarray(x, dtype=np.float32).reshape(self.shape)


def _read_images(
    files: list[Path], reader: ImageReader, source: Path, what: str, progress: TextIO | None
) -> tuple[np.ndarray, list[int], list[str]]:
    """Read images; returns samples, the indices into ``files`` that were read, and unreadable names."""
    samples, kept, bad = [], [], []
    with click.progressbar(
        list(enumerate(files)), label=f"Reading {what} images", file=progress, show_pos=True
    ) as bar:
        for i, path in bar:
            x = reader.read(path)
            if x is None:
                bad.append(path.name)
                continue
            samples.append(x)
            kept.append(i)
    if not samples:
        raise DataError(f"{what} {source}: none of the {len(files)} image files could be read by OpenCV")
    return np.stack(samples), kept, bad


def load_calibration(
    source: Path,
    input_shape: tuple[int | None, ...],
    limit: int,
    preprocess: Preprocess | None,
    seed: int = 0,
    progress: TextIO | None = None,
) -> Samples:
    """Calibration samples from a folder of images, a .npy, a .npz (array ``x``) or a CSV of rows."""
    what = "calibration data"
    source = Path(source)
    if source.is_dir():
        files = _image_files(source)
        if not files:
            raise DataError(
                f"{what} {source}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        if preprocess is None:
            raise DataError(f"{what} {source}: image files need an image model (input kind 'image')")
        reader = ImageReader(input_shape, preprocess)
        chosen = [files[i] for i in _subset(len(files), limit, seed)]
        x, _, bad = _read_images(chosen, reader, source, what, progress)
        summary: dict[str, Any] = {"format": "images", "files_unreadable": len(bad)}
    else:
        x = fit_to_input(_read_array(source, what), input_shape, str(source), what)
        x = x[_subset(len(x), limit, seed)]
        summary = {"format": source.suffix.lstrip(".").lower()}
    if len(x) == 0:
        raise DataError(f"{what} {source}: holds no samples")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what} {source}: contains NaN or infinite values")
    summary.update(source=source.name, samples=len(x), **_stats(x))
    return Samples(x, summary)


def random_calibration(
    input_shape: tuple[int | None, ...], limit: int, preprocess: Preprocess | None, seed: int = 0
) -> Samples:
    """Random samples, for when no data is at hand: uniform pixels through the preprocessing for
    images, standard normal values otherwise. The resulting quantization ranges are a guess."""
    if None in input_shape[1:]:
        raise DataError(f"--calib random needs a fixed input shape, not {describe_shape(input_shape)}")
    rng = np.random.default_rng(seed)
    shape = (limit, *input_shape[1:])
    if preprocess is not None:
        pixels = rng.uniform(0, 255, size=shape).astype(np.float32)
        mean = np.asarray(preprocess.mean, dtype=np.float32)
        std = np.asarray(preprocess.std, dtype=np.float32)
        x = (pixels * preprocess.scale - mean) / std
    else:
        x = rng.standard_normal(shape)
    x = x.astype(np.float32)
    return Samples(x, {"format": "random", "source": "random", "samples": limit, **_stats(x)})


def require_calibration(mode: str, calib: str | None) -> None:
    """ConfigError before anything slow when ``mode`` is full-integer and no --calib was given."""
    from converter.quantize import NEEDS_CALIBRATION

    if mode in NEEDS_CALIBRATION and calib is None:
        raise ConfigError(
            f"--mode {mode} needs calibration data: --calib with an image folder, .npy, .npz or .csv "
            "of typical inputs (or --calib random to accept unknown accuracy)"
        )


def choose_calibration(
    calib: str | None,
    input_shape: tuple[int | None, ...],
    limit: int,
    preprocess: Preprocess | None,
    explicit_scaling: bool,
    seed: int = 0,
    progress: TextIO | None = None,
) -> tuple[Samples | None, Preprocess | None]:
    """The samples ``--calib`` (a path, 'random' or None) gives, and the image preprocessing the manifest
    will declare: array data without --scale/--mean/--std decides the scaling; with them, it is checked.
    Warns when the device would feed raw 0..255 pixels for lack of either."""
    samples = None
    if calib == "random":
        warn(
            "--calib random: quantization ranges come from random data, "
            "so the accuracy of this model is unknown"
        )
        samples = random_calibration(input_shape, limit, preprocess, seed)
    elif calib is not None:
        calib_path = Path(calib)
        if not calib_path.exists():
            raise DataError(f"--calib {calib}: no such file or folder")
        samples = load_calibration(calib_path, input_shape, limit, preprocess, seed, progress)
        if preprocess is not None and not calib_path.is_dir():
            if explicit_scaling:
                check_range(samples.x, preprocess, calib_path.name)
            else:
                preprocess = infer_scaling(samples.x, preprocess, calib_path.name)
                explicit_scaling = True
    if preprocess is not None and not explicit_scaling:
        warn("no --scale/--mean/--std given: the device will feed raw 0..255 pixels to this model")
    return samples, preprocess


def check_range(x: np.ndarray, pre: Any, source: str) -> None:
    """Warn when array calibration data cannot come out of the declared preprocessing (0..255 pixels)."""
    mean = np.asarray(pre.mean, dtype=np.float64)
    std = np.asarray(pre.std, dtype=np.float64)
    ends = np.stack([(0 * pre.scale - mean) / std, (255 * pre.scale - mean) / std])
    low, high = float(ends.min()), float(ends.max())
    span = high - low
    if (
        float(x.min()) < low - 0.05 * span
        or float(x.max()) > high + 0.05 * span
        or float(x.max() - x.min()) < 0.6 * span
    ):
        warn(
            f"calibration data {source} spans {float(x.min()):.3g}..{float(x.max()):.3g} but camera frames "
            f"will be preprocessed to {low:.3g}..{high:.3g} (--scale/--mean/--std); "
            "check those options match training"
        )


def infer_scaling(x: np.ndarray, pre: Any, source: str) -> Any:
    """Without --scale/--mean/--std, read the pixel scaling off preprocessed calibration arrays:
    0..1 -> scale 1/255; -1..1 -> (p - 127.5) / 127.5; 0..255 -> raw pixels. Says what it chose."""
    low, high = float(x.min()), float(x.max())
    if low >= -0.01 and high <= 1.01:
        choice, fields = "--scale 1/255", {"scale": 1 / 255}
    elif low >= -1.01 and high <= 1.01:
        choice, fields = "--mean 127.5 --std 127.5", {"mean": [127.5], "std": [127.5]}
    elif low >= 0 and high <= 255.5:
        choice, fields = "--scale 1", {}
    else:
        warn(
            f"calibration data {source} spans {low:.3g}..{high:.3g}, not a pixel range: "
            "give --scale/--mean/--std "
            "so that the device turns 0..255 pixels into what the model was trained on"
        )
        return pre
    click.echo(
        f"edge-convert: note: calibration data {source} spans {low:.3g}..{high:.3g}, "
        "so camera frames will be "
        f"preprocessed as {choice} (give --scale/--mean/--std to choose yourself)",
        err=True,
    )
    return pre.model_copy(update=fields)


def _read_array(source: Path, what: str) -> np.ndarray:
    suffix = source.suffix.lower()
    if suffix == ".npy":
        return _read_npy(source, what)
    if suffix == ".npz":
        arrays = _read_npz(source, what)
        if "x" in arrays:
            return arrays["x"]
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise DataError(f"{what} {source}: no array named 'x' (it holds {', '.join(arrays) or 'nothing'})")
    if suffix in (".csv", ".txt"):
        return _read_csv(source, what)
    raise DataError(f"{what} {source}: unknown format; give an image folder, .npy, .npz (array x) or .csv")


def load_labelled(
    source: Path,
    input_shape: tuple[int | None, ...],
    preprocess: Preprocess | None,
    labels: list[str] | None,
    progress: TextIO | None = None,
) -> Labelled:
    """Held-out data with targets: .npz with ``x`` and ``y``, a CSV whose last column is the target,
    or a folder of class sub-folders of images (folder name = label, else sorted order = class id)."""
    what = "evaluation data"
    source = Path(source)
    if source.is_dir():
        return _labelled_images(source, input_shape, preprocess, labels, progress)
    suffix = source.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(source, what)
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise DataError(
                f"{what} {source}: needs arrays 'x' and 'y' (missing {', '.join(missing)}; "
                f"it holds {', '.join(arrays) or 'nothing'})"
            )
        x, y = arrays["x"], arrays["y"]
    elif suffix in (".csv", ".txt"):
        table = _read_csv(source, what)
        x, y = table[:, :-1], table[:, -1]
    else:
        raise DataError(
            f"{what} {source}: unknown format; give a .npz (x, y), a .csv or a folder of class folders"
        )
    if len(x) != len(y):
        raise DataError(f"{what} {source}: x has {len(x)} samples but y has {len(y)}")
    x = fit_to_input(x, input_shape, str(source), what)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot targets
        y = np.argmax(y, axis=1)
    return Labelled(x, y.reshape(len(y), *y.shape[1:]), source.name)


def _labelled_images(
    source: Path,
    input_shape: tuple[int | None, ...],
    preprocess: Preprocess | None,
    labels: list[str] | None,
    progress: TextIO | None,
) -> Labelled:
    what = "evaluation data"
    class_dirs = sorted(d for d in source.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(
            f"{what} {source}: needs one sub-folder of images per class (e.g. {source}/cat/*.jpg)"
        )
    if preprocess is None:
        raise DataError(f"{what} {source}: image files need an image model (input kind 'image')")
    if labels:
        unknown = [d.name for d in class_dirs if d.name not in labels]
        if unknown:
            raise DataError(
                f"{what} {source}: class folder(s) {', '.join(unknown)} "
                f"are not in the labels ({', '.join(labels)})"
            )
        class_of = {d.name: labels.index(d.name) for d in class_dirs}
    else:
        class_of = {d.name: i for i, d in enumerate(class_dirs)}
    files, targets = [], []
    for d in class_dirs:
        for f in _image_files(d):
            files.append(f)
            targets.append(class_of[d.name])
    if not files:
        raise DataError(f"{what} {source}: the class folders hold no image files")
    reader = ImageReader(input_shape, preprocess)
    x, kept, _ = _read_images(files, reader, source, what, progress)
    return Labelled(x, np.asarray(targets)[kept], source.name)


def _stats(x: np.ndarray) -> dict[str, float]:
    return {
        "min": round(float(x.min()), 6),
        "max": round(float(x.max()), 6),
        "mean": round(float(x.mean()), 6),
    }
