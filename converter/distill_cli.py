"""``edge-convert distill``: train a smaller student classifier on a teacher's soft outputs, save it as
.keras (atomically), and compare teacher and student; ``edge-convert quantize`` then takes the student."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from edge_agent.errors import ConfigError, DataError

WHAT = "--data"


@click.command("distill")
@click.argument("teacher", type=click.Path(path_type=Path))
@click.option(
    "--student",
    "student_spec",
    required=True,
    metavar="FILE.keras|width:F",
    help="The student: a .keras file with its (untrained) architecture, or width:F for the teacher's own "
    "architecture F times as wide (keras MobileNetV2, or a keras.Sequential of Conv/Dense layers).",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Training inputs: .npz (x, and y when labelled), .npy, or an image folder (class sub-folders "
    "give labels). Unlabelled data works: the student learns the teacher's outputs only.",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="The student .keras to write.",
)
@click.option(
    "--eval",
    "eval_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Labelled held-out data (.npz x, y or class folders) for the accuracy comparison.",
)
@click.option(
    "--report",
    "int8_report",
    is_flag=True,
    help="Also convert teacher and student to int8 (in memory) and compare size, accuracy and latency.",
)
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(0, min_open=True),
    default=4.0,
    show_default=True,
    help="Softens the teacher's outputs so the student learns which wrong classes look alike.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Weight of the true labels (when --data has them); 1 - alpha goes to the teacher's soft outputs.",
)
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=0.002, show_default=True)
@click.option(
    "--validation-split",
    type=click.FloatRange(0, 0.5),
    default=0.1,
    show_default=True,
    help="Fraction of --data held out to report agreement (and accuracy) per epoch.",
)
@click.option("--scale", default=None, help="Image folders: pixel multiplier, e.g. 1/255.")
@click.option("--mean", default=None, help="Image folders: subtracted after scaling (per channel).")
@click.option("--std", default=None, help="Image folders: divisor after the mean (per channel).")
@click.option("--color", type=click.Choice(["rgb", "bgr", "gray"]), default=None, help="Image folders.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="For --report.")
def distill_command(
    teacher: Path,
    student_spec: str,
    data_path: Path,
    out: Path,
    eval_path: Path | None,
    int8_report: bool,
    epochs: int,
    batch_size: int,
    temperature: float,
    alpha: float,
    learning_rate: float,
    validation_split: float,
    scale: str | None,
    mean: str | None,
    std: str | None,
    color: str | None,
    seed: int,
    threads: int,
) -> None:
    """Train a smaller student of the classifier TEACHER (.keras/.h5) on its soft outputs for --data.

    \b
    Example:
      edge-convert distill digits.keras --student width:0.25 --data train.npz \\
          --eval test.npz --report -o student.keras
      edge-convert quantize student.keras -o student.tflite --calib train.npz --eval test.npz

    Ctrl-C leaves no output file: the student is written to a temp file and renamed when complete.
    """
    from converter import distill as ds
    from converter.output import check_writable

    if out.suffix != ".keras":
        raise ConfigError(f"-o {out}: the student is saved as a Keras model; give a name ending in .keras")
    check_writable(out)
    student_source = ds.parse_student(student_spec)
    if not data_path.exists():
        raise DataError(f"{WHAT} {data_path}: no such file or folder")
    settings = ds.Settings(
        epochs=epochs, batch_size=batch_size, temperature=temperature, alpha=alpha,
        learning_rate=learning_rate, validation_split=validation_split, seed=seed,
    )  # fmt: skip

    from converter import quiet
    from converter.loading import detect_kind, load_float_model

    detect_kind(teacher)
    teacher_fm = load_float_model(teacher)
    classes = ds.check_teacher(teacher_fm.keras_model, teacher)
    shape = teacher_fm.input_shape
    pre = _image_preprocess(data_path, eval_path, shape, scale, mean, std, color)
    x, y = load_training_data(data_path, shape, pre, classes)  # a shape that does not fit fails here
    held_out = _load_eval(eval_path, shape, pre, classes)
    student = _student(student_source, teacher_fm.keras_model)
    ds.check_student(student, teacher_fm.keras_model, student_spec)

    labelled = "labelled" if y is not None else "unlabelled: teacher outputs only"
    click.echo(
        f"distilling {teacher.name} ({teacher_fm.keras_model.count_params():,} parameters) into a student of "
        f"{student.count_params():,} on {len(x)} samples of {data_path.name} ({labelled}), "
        f"temperature {temperature:g}, alpha {alpha:g}",
        err=True,
    )
    with quiet.captured_fds() as capture:
        ds.train_student(teacher_fm.keras_model, student, x, y, settings, capture.stderr)
        ds.save_atomically(student, out)
    click.echo(f"wrote {out}")
    _compare(teacher_fm, out, held_out, x, int8_report, threads)


def load_training_data(
    path: Path, shape: tuple[int | None, ...], pre: Any, classes: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples shaped for the teacher and their class ids when the data has labels; DataError naming the
    file when the shape does not fit (before anything trains)."""
    from converter import calibration as cal
    from converter.evaluate import class_targets

    if path.is_dir():
        if any(d.is_dir() for d in path.iterdir()):  # class folders: labelled
            data = cal.load_labelled(path, shape, pre, None, sys.stderr)
            return data.x, class_targets(data.y, classes, str(path))
        samples = cal.load_calibration(path, shape, sys.maxsize, pre, progress=sys.stderr)
        return samples.x, None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = cal._read_npz(path, WHAT)
        if "x" not in arrays:
            raise DataError(f"{WHAT} {path}: needs an array 'x' (it holds {', '.join(arrays) or 'nothing'})")
        x, y = arrays["x"], arrays.get("y")
    elif suffix == ".npy":
        x, y = cal._read_npy(path, WHAT), None
    else:
        raise DataError(f"{WHAT} {path}: unknown format; give a .npz (x[, y]), a .npy or an image folder")
    x = cal.fit_to_input(x, shape, str(path), WHAT)
    if len(x) < 2:
        raise DataError(f"{WHAT} {path}: holds {len(x)} sample(s); distillation needs many")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{WHAT} {path}: contains NaN or infinite values")
    if y is None:
        return x, None
    if len(y) != len(x):
        raise DataError(f"{WHAT} {path}: x has {len(x)} samples but y has {len(y)}")
    y = np.argmax(y, axis=1) if y.ndim == 2 and y.shape[1] > 1 else y
    try:
        return x, class_targets(y, classes, str(path))
    except DataError as exc:  # its messages say "evaluation data"; here the labels come with --data
        raise DataError(str(exc).replace("evaluation data", WHAT, 1)) from None


def _load_eval(path: Path | None, shape: tuple[int | None, ...], pre: Any, classes: int) -> Any:
    if path is None:
        return None
    from converter.calibration import Labelled, load_labelled
    from converter.evaluate import class_targets

    data = load_labelled(path, shape, pre, None, sys.stderr)
    return Labelled(data.x, class_targets(data.y, classes, data.source), data.source)


def _image_preprocess(
    data: Path,
    eval_path: Path | None,
    shape: tuple[int | None, ...],
    scale: Any,
    mean: Any,
    std: Any,
    color: Any,
) -> Any:
    """The preprocessing image folders are read with (None when no folder is involved)."""
    if not data.is_dir() and not (eval_path is not None and eval_path.is_dir()):
        return None
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise DataError(f"{WHAT} {data}: image folders need a teacher with an (N, H, W, 1 or 3) input")
    from converter.options import build_preprocess

    return build_preprocess(shape, scale, mean, std, color, "stretch")


def _student(source: float | Path, teacher: Any) -> Any:
    from converter import distill as ds

    if isinstance(source, float):
        return ds.student_by_width(teacher, source)
    from converter.loading import load_float_model

    student = load_float_model(source).keras_model
    if student is None:
        raise ConfigError(f"--student {source}: give a .keras file")
    return student


def _compare(teacher_fm: Any, out: Path, held_out: Any, x: np.ndarray, int8: bool, threads: int) -> None:
    from converter import distill_report as dr
    from converter import quiet
    from converter.loading import load_float_model

    student_fm = load_float_model(out)
    calib = None
    if int8:
        calib = x[np.random.default_rng(0).permutation(len(x))[: dr.CALIBRATION_SAMPLES]]
        click.echo("converting teacher and student to int8 for the comparison", err=True)
    teacher_top = teacher_fm.predict(held_out.x)[0].argmax(axis=1) if held_out is not None else None
    with quiet.captured_fds():
        teacher_fig = dr.measure(teacher_fm, teacher_fm.path, held_out, None, calib, threads)
        student_fig = dr.measure(student_fm, out, held_out, teacher_top, calib, threads)
    if held_out is not None:
        click.echo(f"evaluated on {len(held_out.x)} samples of {held_out.source}")
    click.echo(dr.table(teacher_fig, student_fig, threads))
