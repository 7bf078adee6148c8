"""``edge-convert``: quantize a Keras model for the device, check it against the float model.

TensorFlow is imported only inside the commands (after ``--verbose`` is known), so ``--help`` is instant
and bad arguments fail before the slow import.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from converter import quiet, report
from converter.distill_cli import distill_command
from converter.explain_cli import explain_command
from converter.options import (
    DEFAULT_MAX_FLOAT_LAYERS,
    build_preprocess,
    parse_postprocess,
    parse_shape,
    read_labels,
    verbose_option,
    warn,
)
from converter.quantize import MODES
from edge_agent import __version__
from edge_agent.cli import run_cli
from edge_agent.errors import ConfigError, DataError, ModelError, QualityGateError

TASKS = ("classification", "detection", "regression", "anomaly", "segmentation")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-convert")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own output and debug logging.")
def cli(verbose: bool) -> None:
    """Turn a Keras model into a quantized TFLite model with a manifest, checked against the float model."""
    quiet.set_verbose(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------- quantize


@cli.command()
@verbose_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="The .tflite to write; the manifest goes beside it (.json).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="int8",
    show_default=True,
    help="int8: full-integer; int16x8: 16-bit activations; dynamic: int8 weights; float16; float32.",
)
@click.option(
    "--io",
    "io_type",
    type=click.Choice(["int8", "uint8", "int16", "float32"]),
    default=None,
    help="Input/output tensor type. Default: int8 for --mode int8, int16 for int16x8, else float32.",
)
@click.option(
    "--calib",
    default=None,
    metavar="PATH|random",
    help="Calibration data: image folder, .npy, .npz (array x), .csv rows; 'random' when you have none.",
)
@click.option("--calib-samples", type=click.IntRange(1), default=300, show_default=True)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line, in class-index order.",
)
@click.option("--task", type=click.Choice(TASKS), default="classification", show_default=True)
@click.option(
    "--name", default=None, help="Model name in the manifest and results (default: output file stem)."
)
@click.option("--scale", default=None, help="Pixel multiplier applied first, e.g. 1/255.")
@click.option(
    "--mean", default=None, help="Subtracted after scaling: one value or one per channel (comma list)."
)
@click.option(
    "--std", default=None, help="Divisor after the mean: one value or one per channel (comma list)."
)
@click.option(
    "--color",
    type=click.Choice(["rgb", "bgr", "gray"]),
    default=None,
    help="Channel order the model was trained on (default: gray for 1 channel, rgb for 3).",
)
@click.option(
    "--resize", type=click.Choice(["stretch", "letterbox", "crop"]), default="stretch", show_default=True
)
@click.option(
    "--input-kind",
    type=click.Choice(["image", "tensor"]),
    default=None,
    help="Default: image for a rank-4 input with 1 or 3 channels, else tensor.",
)
@click.option(
    "--input-shape",
    default=None,
    metavar="H,W,C",
    help="Fix unknown input dimensions (without batch), e.g. 224,224,3.",
)
@click.option(
    "--output-role",
    "output_roles",
    multiple=True,
    metavar="NAME=ROLE",
    help="Set an output's role (NAME: tensor name or index), e.g. 0=logits.",
)
@click.option(
    "--postprocess",
    "postprocess_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Postprocessor option stored in the manifest, e.g. top_k=3, threshold=0.4.",
)
@click.option(
    "--eval",
    "eval_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Labelled held-out data: .npz (x, y), .csv (last column y) or a folder of class folders.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    metavar="POINTS",
    help="Quality gate: fail (exit 8, files kept, manifest marked) when accuracy drops more. "
    "Default with --eval on a classifier: 1.",
)
@click.option(
    "--max-error-increase",
    type=click.FloatRange(0),
    default=None,
    metavar="PERCENT",
    help="Quality gate of a regression model: fail (exit 8, files kept, manifest marked) when its mean "
    "absolute error on --eval rises more than this above the float model's (never less than one int8 output "
    "step). Default with --eval on a regression model: 10.",
)
@click.option(
    "--no-gate", is_flag=True, help="Evaluate with --eval but never fail on the accuracy drop or error rise."
)
@click.option(
    "--fallback",
    type=click.Choice(["auto"]),
    default=None,
    help="When int8 fails the quality gate, keep its worst layers in float, one at a time, until it "
    "passes (see edge-convert explain).",
)
@click.option(
    "--max-float-layers",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help=f"Most layers --fallback auto may keep in float. Default: {DEFAULT_MAX_FLOAT_LAYERS}.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample selection.")
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Interpreter threads for evaluation and latency.",
)
def quantize(
    model: Path,
    out: Path,
    mode: str,
    io_type: str | None,
    calib: str | None,
    calib_samples: int,
    labels_file: Path | None,
    task: str,
    name: str | None,
    scale: str | None,
    mean: str | None,
    std: str | None,
    color: str | None,
    resize: str,
    input_kind: str | None,
    input_shape: str | None,
    output_roles: tuple[str, ...],
    postprocess_items: tuple[str, ...],
    eval_path: Path | None,
    max_accuracy_drop: float | None,
    max_error_increase: float | None,
    no_gate: bool,
    fallback: str | None,
    max_float_layers: int | None,
    seed: int,
    threads: int,
) -> None:
    """Convert MODEL (.keras, .h5 or SavedModel directory) to a quantized OUT.tflite plus OUT.json.

    \b
    Example:
      edge-convert quantize digits.keras -o digits.tflite \\
          --calib train.npz --eval test.npz --labels labels.txt

    With --eval on a classifier the quality gate is on: more than 1 point of accuracy lost fails the
    conversion (exit 8, files kept, manifest marked failed); on a regression model, a mean absolute error
    more than 10% above the float model's. --max-accuracy-drop and --max-error-increase set them,
    --no-gate turns the gate off. With --fallback auto a failing int8 model keeps its worst layers in float
    until the gate passes (at most --max-float-layers); the manifest records which.
    """
    from converter import calibration as cal
    from converter.diagnosis import check_fallback, fallback_failure
    from converter.evaluate import gate_failure, next_step, quality_gate
    from converter.manifest import input_kind as default_input_kind
    from converter.output import check_writable
    from converter.quantize import resolve_io_type

    # everything that can be checked without TensorFlow, first
    if out.suffix != ".tflite":
        raise ConfigError(
            f"-o {out}: the output must end in .tflite (the manifest is written beside it as .json)"
        )
    check_writable(out)
    io_type = resolve_io_type(mode, io_type)
    cal.require_calibration(mode, calib)
    gate = quality_gate(max_accuracy_drop, max_error_increase, no_gate, eval_path is not None, task)
    check_fallback(fallback, max_float_layers, mode, io_type, gate)
    labels = read_labels(labels_file)
    postprocess = parse_postprocess(postprocess_items)

    from converter.loading import detect_kind, load_float_model

    detect_kind(model)
    fm = load_float_model(model).with_input_shape(parse_shape(input_shape))
    shape = fm.input_shape
    kind = input_kind or default_input_kind(shape)
    if kind == "image" and (len(shape) != 4 or shape[-1] not in (1, 3)):
        raise ConfigError(
            f"--input-kind image needs an (N, H, W, 1 or 3) input, the model's is {list(shape)}"
        )
    pre = build_preprocess(shape, scale, mean, std, color, resize) if kind == "image" else None
    explicit_scaling = scale is not None or mean is not None or std is not None
    if task == "classification" and labels and len(fm.output_shapes) == 1:
        classes = fm.output_shapes[0][-1]
        if classes is not None and classes != len(labels):
            raise ConfigError(
                f"--labels {labels_file}: has {len(labels)} labels but the model outputs {classes} classes; "
                "give one label per class, one per line, in class-index order"
            )

    progress = sys.stderr
    samples, pre = cal.choose_calibration(calib, shape, calib_samples, pre, explicit_scaling, seed, progress)
    held_out = cal.load_labelled(eval_path, shape, pre, labels, progress) if eval_path is not None else None

    from converter.job import run_quantize

    result = run_quantize(
        fm=fm, out=out, mode=mode, io_type=io_type, samples=samples, held_out=held_out, labels=labels,
        task=task, name=name or out.stem, kind=kind, pre=pre, output_roles=output_roles,
        postprocess=postprocess, gate=gate, threads=threads,
        fallback=fallback, max_float_layers=max_float_layers or DEFAULT_MAX_FLOAT_LAYERS,
    )  # fmt: skip
    click.echo(result.summary)
    if result.collapse is not None:
        warn(result.collapse)
    if not result.gate_passed and result.fallback is not None:
        raise QualityGateError(fallback_failure(result.gate, result.fallback, out))
    if not result.gate_passed:
        assert result.gate is not None
        accept = (
            "--max-accuracy-drop POINTS"
            if gate and gate.metric == "accuracy"
            else "--max-error-increase PERCENT"
        )
        raise QualityGateError(
            f"quality gate failed: {gate_failure(result.gate)}; "
            f"{out} and its manifest were written and marked failed. "
            f"Next: {next_step(mode)}; or quantization-aware training; "
            f"{accept} or --no-gate accepts the loss"
        )


# ---------------------------------------------------------------------------------------------- evaluate


@cli.command("evaluate")
@verbose_option
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("tflite", type=click.Path(path_type=Path))
@click.option(
    "--data",
    "--eval",
    "data_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Labelled data: .npz (x, y), .csv (last column y) or a folder of class folders (--eval as in "
    "quantize).",
)
@click.option(
    "--task", type=click.Choice(TASKS), default=None, help="Default: from the manifest, else classification."
)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the results here."
)
def evaluate_command(
    model: Path, tflite: Path, data_path: Path, task: str | None, threads: int, json_path: Path | None
) -> None:
    """Compare the float MODEL with its converted TFLITE on labelled DATA."""
    from converter.calibration import load_labelled
    from converter.evaluate import evaluate
    from converter.inspection import check_tflite_file, read_manifest
    from converter.litert import LiteModel
    from converter.loading import detect_kind, load_float_model
    from converter.output import check_writable, write_files

    if json_path is not None:
        check_writable(json_path)
    check_tflite_file(tflite)
    detect_kind(model)
    manifest = read_manifest(tflite)
    task = task or (manifest or {}).get("task", "classification")
    labels = (manifest or {}).get("labels")
    fm = load_float_model(model)
    pre = None
    if data_path.is_dir():
        if not manifest or "preprocess" not in manifest:
            raise DataError(
                f"evaluation data {data_path}: image folders need the preprocessing "
                "from the model's manifest "
                f"({tflite.with_suffix('.json').name} beside {tflite.name}); or give a .npz"
            )
        from edge_agent.manifest import Preprocess

        pre = Preprocess.model_validate(manifest["preprocess"])
    lite = LiteModel(tflite, threads)
    if None in fm.input_shape[1:]:  # a dynamic-size model: evaluate at the size it was converted for
        fm = fm.with_input_shape(tuple(lite.inputs[0].shape[1:]))
    data = load_labelled(data_path, fm.input_shape, pre, labels, sys.stderr)
    ev = evaluate(fm, lite, data, task, labels=labels)
    sizes = {"float_model": _path_size(model), "tflite": tflite.stat().st_size}
    result = {"model": str(model), "tflite": str(tflite), "task": task, **ev.to_dict(), "size_bytes": sizes}
    rows = []
    if ev.accuracy_float is not None:
        rows.append(["accuracy", report.pct(ev.accuracy_float), report.pct(ev.accuracy_quantized)])
        rows.append(["accuracy drop", "", f"{ev.accuracy_drop_points:.2f} points"])
        rows.append(["top-1 agreement", "", report.pct(ev.top1_agreement)])
    if ev.mae_float is not None:
        rows.append(["mean abs error", report.num(ev.mae_float), report.num(ev.mae_quantized)])
    rows.append(["output diff mean", "", f"{ev.output_mean_abs_diff:.4g}"])
    rows.append(["output diff max", "", f"{ev.output_max_abs_diff:.4g}"])
    rows.append(["file size", report.size(sizes["float_model"]), report.size(sizes["tflite"])])
    rows.append(
        [
            "latency (median)",
            report.ms(ev.latency_ms.get("float_model")),
            report.ms(ev.latency_ms.get("tflite")),
        ]
    )
    click.echo(f"{ev.samples} samples of {data_path.name}, task {task}")
    click.echo(report.table(["", f"float ({fm.kind})", "tflite (ai-edge-litert)"], rows))
    if json_path is not None:
        write_files({json_path: (json.dumps(result, indent=2) + "\n").encode()})


def _path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- inspect


@cli.command("inspect")
@verbose_option
@click.argument("tflite", type=click.Path(path_type=Path))
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Manifest to check (default: the .json beside the model).",
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the report here."
)
def inspect_command(tflite: Path, manifest_path: Path | None, json_path: Path | None) -> None:
    """Show TFLITE's tensors, ops, whether it runs on ai-edge-litert, and whether its manifest matches."""
    from converter.inspection import inspect_tflite
    from converter.output import check_writable, write_files

    if json_path is not None:
        check_writable(json_path)
    info = inspect_tflite(tflite, manifest_path)
    click.echo(info.text())
    if json_path is not None:
        write_files({json_path: (json.dumps(info.to_dict(), indent=2) + "\n").encode()})
    if info.problems:
        raise ModelError(f"{tflite}: " + "; ".join(info.problems))


cli.add_command(explain_command)
cli.add_command(distill_command)


def main() -> None:
    run_cli(cli, "edge-convert")


if __name__ == "__main__":
    main()
