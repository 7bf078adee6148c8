"""Command-line values turned into checked settings: numbers and lists, labels, the image
preprocessing the manifest declares (checked against the input's channels). What the calibration data
says about that preprocessing is decided in ``converter.calibration``."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from converter import quiet
from edge_agent.errors import ConfigError

# Layers --fallback auto may keep in float unless --max-float-layers says otherwise: the outlier digits
# CNN needs 2; more than a handful usually means the data or the model is the problem, not a few layers.
DEFAULT_MAX_FLOAT_LAYERS = 5


def warn(message: str) -> None:
    click.echo(f"edge-convert: warning: {message}", err=True)


def parse_number(text: str, option: str) -> float:
    """A float or a fraction such as 1/255."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{option} {text!r}: expected a number such as 0.0039 or 1/255") from None


def parse_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    return [parse_number(part, option) for part in text.split(",")]


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(
            f"--input-shape {text!r}: expected sizes without the batch, e.g. 224,224,3"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"--input-shape {text!r}: sizes must be positive")
    return dims


def read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--labels {path}: cannot read it ({exc})") from None
    if not labels:
        raise ConfigError(f"--labels {path}: holds no labels; write one label per line")
    return labels


def parse_postprocess(items: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--postprocess {item!r}: expected KEY=VALUE, e.g. top_k=3 or threshold=0.5")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build_preprocess(
    input_shape: tuple[int | None, ...],
    scale: str | None,
    mean: str | None,
    std: str | None,
    color: str | None,
    resize: str,
) -> Any:
    """The manifest's preprocess section for an image input, checked against its channel count."""
    from edge_agent.manifest import Preprocess

    channels = input_shape[-1]
    color = color or ("gray" if channels == 1 else "rgb")
    if (color == "gray") != (channels == 1):
        raise ConfigError(
            f"--color {color} does not fit the model input {list(input_shape)} ({channels} channel(s))"
        )
    means = parse_list(mean, "--mean") or [0.0]
    stds = parse_list(std, "--std") or [1.0]
    for option, values in (("--mean", means), ("--std", stds)):
        if len(values) not in (1, channels):
            raise ConfigError(f"{option}: give 1 value or {channels} (one per channel), not {len(values)}")
    if any(s == 0 for s in stds):
        raise ConfigError("--std must not be 0")
    return Preprocess(
        color=color,
        resize=resize,
        scale=parse_number(scale, "--scale") if scale is not None else 1.0,
        mean=means,
        std=stds,
    )


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        quiet.set_verbose(True)
        logging.getLogger().setLevel(logging.DEBUG)


verbose_option = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_verbose_callback,
    help="Show TensorFlow's own output (same as edge-convert --verbose).",
)
