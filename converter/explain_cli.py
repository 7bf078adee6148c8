"""``edge-convert explain``: the per-layer int8 quantization error of a model against its float self, worst
first, so a user whose int8 model fails the gate sees which layers to keep in float (see diagnosis.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from converter.options import build_preprocess, parse_shape, read_labels, verbose_option
from edge_agent.errors import ConfigError


@click.command("explain")
@verbose_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--calib",
    default=None,
    metavar="PATH",
    help="Calibration data (required): image folder, .npy, .npz (array x) or .csv rows of typical inputs.",
)
@click.option("--calib-samples", type=click.IntRange(1), default=300, show_default=True)
@click.option(
    "--eval",
    "eval_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Labelled held-out data: adds the accuracy with each layer kept in float.",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line (when --eval names classes).",
)
@click.option(
    "--io",
    "io_type",
    type=click.Choice(["int8", "float32"]),
    default="int8",
    show_default=True,
    help="Input/output tensor type of the int8 model, as you would quantize it.",
)
@click.option("--scale", default=None, help="Pixel multiplier for image folders, e.g. 1/255.")
@click.option("--mean", default=None, help="Subtracted after scaling (image folders).")
@click.option("--std", default=None, help="Divisor after the mean (image folders).")
@click.option("--input-shape", default=None, metavar="H,W,C", help="Fix unknown input dimensions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample selection.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the diagnosis as JSON here ('-': print it instead of the table).",
)
def explain_command(
    model: Path,
    calib: str | None,
    calib_samples: int,
    eval_path: Path | None,
    labels_file: Path | None,
    io_type: str,
    scale: str | None,
    mean: str | None,
    std: str | None,
    input_shape: str | None,
    seed: int,
    json_path: Path | None,
) -> None:
    """Per-layer int8 quantization error of MODEL against the float model, worst layer first.

    \b
    Example:
      edge-convert explain model.keras --calib train.npz --eval test.npz

    Built on TensorFlow Lite's QuantizationDebugger. For each layer: its own error in quantization
    steps, and the model's output error with only that layer kept in float (what
    `quantize --fallback auto` uses to choose).
    """
    from converter import calibration as cal
    from converter.manifest import input_kind
    from converter.output import check_writable, write_files

    to_stdout = json_path is not None and str(json_path) == "-"
    if calib is None or calib == "random":
        raise ConfigError(
            "edge-convert explain needs calibration data: --calib with an image folder, .npy, .npz or .csv "
            "of typical inputs, preprocessed as in training (per-layer errors are measured on it"
            + ("; random inputs say nothing about yours)" if calib == "random" else ")")
        )
    if json_path is not None and not to_stdout:
        check_writable(json_path)
    labels = read_labels(labels_file)

    from converter.loading import detect_kind, load_float_model

    detect_kind(model)
    fm = load_float_model(model).with_input_shape(parse_shape(input_shape))
    shape = fm.input_shape
    image = input_kind(shape) == "image"
    pre = build_preprocess(shape, scale, mean, std, None, "stretch") if image else None
    explicit_scaling = scale is not None or mean is not None or std is not None
    samples, pre = cal.choose_calibration(
        calib, shape, calib_samples, pre, explicit_scaling, seed, sys.stderr
    )
    assert samples is not None
    held_out = cal.load_labelled(eval_path, shape, pre, labels, sys.stderr) if eval_path is not None else None

    from converter.diagnosis import diagnose

    found = diagnose(fm, samples.x, held_out, int8_io=io_type == "int8")
    text = json.dumps({"model": str(model), **found.to_dict()}, indent=2) + "\n"
    if to_stdout:
        click.echo(text, nl=False)
        return
    click.echo(found.text())
    if json_path is not None:
        write_files({json_path: text.encode()})
