"""``edge-agent bench MODEL``: how fast, and how big, is this model on this device?

Init time, first inference, warm-up, steady state (count, min, median, p90, p99, max) and peak RSS per
runtime and thread count, each measured in a fresh process; plus the preprocessing of a 640x480 camera
frame into the model's input, shown as a share of one invoke. A table on stdout, ``--json`` for machines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

from edge_agent.errors import ConfigError, DependencyError, EdgeAgentError, ModelError
from edge_agent.runtime.backends import AUTO_ORDER, BACKENDS, available_runtimes
from edge_agent.runtime.benchmark import BenchRun, BenchSpec, run_from_dict
from edge_agent.runtime.model import check_model_file

ERRORS = {cls.__name__: cls for cls in (ConfigError, DependencyError, ModelError)}


def _threads(text: str | None) -> list[int]:
    if not text:
        from edge_agent.runtime.model import default_num_threads

        return [default_num_threads()]
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(
            f"--threads: '{text}' is not a comma-separated list of numbers (e.g. 1,2,4)"
        ) from None
    if not values or any(v < 1 or v > 64 for v in values):
        raise ConfigError(f"--threads: '{text}': each value must be 1..64")
    return values


def _primary_runtime(requested: str) -> str:
    if requested != "auto":
        return requested
    found = available_runtimes()
    for name in AUTO_ORDER:
        if found[name]:
            return name
    raise DependencyError("no TFLite runtime is installed: pip install 'edge-agent[device]'")


def run_worker(spec: BenchSpec) -> BenchRun:
    """Measure one configuration in a fresh Python process."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.runtime.benchmark", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(
            f"benchmark of {spec.model} on {spec.runtime} crashed (exit {proc.returncode}): {tail}"
        )
    data = json.loads(lines[-1])
    if "error" in data:
        raise ERRORS.get(data.get("error_type", ""), EdgeAgentError)(data["error"])
    return run_from_dict(data)


def _fmt(v: float | None, digits: int = 2) -> str:
    """Fixed decimals, more of them for sub-millisecond values so a tiny model does not show 0.00."""
    if v is None:
        return "-"
    if abs(v) < 0.1:
        digits = max(digits, 4)
    elif abs(v) < 1:
        digits = max(digits, 3)
    return f"{v:.{digits}f}"


def render_table(model: Path, runs: list[BenchRun], header: dict) -> str:
    lines = [
        f"model    {model}  ({header['task']}, {header['mode'] or 'unknown mode'}, "
        f"{header['size_kb']:.0f} KiB, sha256 {header['sha256'][:12]})",
        f"input    {header['input']}",
        f"cpu      {header['cpu'] or 'unknown'}, {header['cores']} usable core(s), SIMD for int8: "
        f"{' '.join(header['simd']) or 'none (no AVX2/VNNI, no Arm dot product)'}",
        f"xnnpack  {'on' if header['xnnpack'] else 'off'}; times in ms; each row measured in a fresh "
        "process; peak RSS: runtime + model, then with OpenCV and the processing loaded",
        "",
    ]
    cols = [
        "runtime",
        "version",
        "threads",
        "init",
        "first",
        "warmup",
        "count",
        "min",
        "median",
        "p90",
        "p99",
        "max",
        "peak RSS MB",
        "+processing",
    ]
    rows = []
    for r in runs:
        s = r.steady
        rows.append(
            [
                r.runtime,
                r.runtime_version,
                str(r.threads),
                _fmt(r.init_ms, 1),
                _fmt(r.first_ms),
                _fmt(r.warmup.mean_ms),
                str(s.count),
                _fmt(s.min_ms),
                _fmt(s.median_ms),
                _fmt(s.p90_ms),
                _fmt(s.p99_ms),
                _fmt(s.max_ms),
                _fmt(r.peak_rss_mb, 1),
                _fmt(r.extra.get("peak_rss_with_processing_mb"), 1),
            ]
        )
    lines += _table(cols, rows)
    stage_rows = []
    for r in runs:
        for stage, timing in (("preprocess", r.preprocess), ("postprocess", r.postprocess)):
            if timing is None:
                continue
            share = 100 * timing.median_ms / r.steady.median_ms if r.steady.median_ms else float("nan")
            stage_rows.append(
                [
                    stage,
                    r.runtime,
                    str(r.threads),
                    str(timing.count),
                    _fmt(timing.median_ms, 3),
                    _fmt(timing.p90_ms, 3),
                    f"{share:.1f}%",
                ]
            )
    if stage_rows:
        lines += [
            "",
            *(_table(["stage", "runtime", "threads", "count", "median", "p90", "of invoke"], stage_rows)),
        ]
        what = next((r.preprocess_what for r in runs if r.preprocess_what), None)
        if what:
            how = "resize, colour, normalize + quantize" if "BGR frame" in what else "quantize"
            lines.append(f"preprocess = {what} ({how}, written into the interpreter's input buffer)")
    fastest = min(runs, key=lambda r: r.steady.median_ms)
    lines += [
        "",
        f"fastest: {fastest.runtime} with {fastest.threads} thread(s), "
        f"median {_fmt(fastest.steady.median_ms)} ms ({1000 / fastest.steady.median_ms:.0f} inferences/s)",
    ]
    for r in runs:
        if "postprocess_error" in r.extra:
            lines.append(f"note: postprocess not timed: {r.extra['postprocess_error']}")
            break
    return "\n".join(lines)


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(cols), *(line(r) for r in rows)]


def _header(model: Path, xnnpack: bool, task: str | None) -> dict:
    from edge_agent.commands.probe_device import Roots, probe_system
    from edge_agent.manifest import file_sha256, load_manifest, manifest_path_for

    manifest_file = manifest_path_for(model)
    system = probe_system(Roots())  # the CPU's name and features: the same model runs 3x apart on two "EPYC"s
    header = {
        "cpu": system.cpu_model,
        "cores": system.usable_cores,
        "simd": system.simd,
        "sha256": file_sha256(model),
        "size_kb": model.stat().st_size / 1024,
        "xnnpack": xnnpack,
        "task": task or "unknown task",
        "mode": None,
        "input": "see inspect",
        "manifest": None,
    }
    if manifest_file.is_file():
        m = load_manifest(manifest_file, verify_sha256=False)
        inp = m.inputs[0]
        q = (
            f" scale={inp.quantization.scale:.6g} zero_point={inp.quantization.zero_point}"
            if inp.quantization
            else ""
        )
        header.update(
            task=m.task,
            mode=m.mode,
            input=f"{inp.name} {inp.shape} {inp.dtype}{q}",
            manifest=str(manifest_file),
        )
    return header


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--runtime",
    type=click.Choice(["auto", *BACKENDS]),
    default="auto",
    show_default=True,
    help="Runtime to benchmark; the others installed are shown side by side unless --no-compare.",
)
@click.option(
    "--threads",
    "threads_text",
    metavar="N[,N...]",
    help="Thread counts to sweep, e.g. 1,2,4 (default: the number of cores).",
)
@click.option("--count", type=click.IntRange(1), default=100, show_default=True, help="Steady-state runs.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    help="Run the steady state for this many seconds instead of --count runs.",
)
@click.option(
    "--warmup", type=click.IntRange(1), default=5, show_default=True, help="Warm-up runs, not counted."
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Also measure the other installed runtimes.",
)
@click.option("--xnnpack/--no-xnnpack", default=True, show_default=True, help="XNNPACK CPU delegate.")
@click.option(
    "--task",
    type=click.Choice(["classification", "detection", "regression", "anomaly", "segmentation"]),
    help="For a .tflite without manifest: times the postprocessing too.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the figures as JSON.")
def command(
    model: Path,
    runtime: str,
    threads_text: str | None,
    count: int,
    duration: float | None,
    warmup: int,
    compare: bool,
    xnnpack: bool,
    task: str | None,
    json_path: Path | None,
) -> None:
    """Benchmark MODEL: init, first inference, steady-state latency, peak RSS, preprocessing."""
    threads = _threads(threads_text)
    check_model_file(model, named_by="the MODEL argument")
    primary = _primary_runtime(runtime)
    runtimes = [primary]
    if compare:
        found = available_runtimes()
        runtimes += [name for name in AUTO_ORDER if name != primary and found[name]]
    header = _header(model, xnnpack, task)
    runs: list[BenchRun] = []
    skipped: list[str] = []
    for name in runtimes:
        for n in threads:
            spec = BenchSpec(str(model), name, n, warmup, count, duration, task, xnnpack)
            try:
                runs.append(run_worker(spec))
            except EdgeAgentError as exc:
                if name == primary:
                    raise
                skipped.append(f"{name}: {exc}")
                break
    click.echo(render_table(model, runs, header))
    for note in skipped:
        click.echo(f"not compared: {note}")
    if json_path is not None:
        doc = {
            "model": str(model),
            **{k: v for k, v in header.items()},
            "runs": [asdict(r) for r in runs],
            "skipped": skipped,
        }
        try:
            json_path.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"--json: cannot write {json_path} ({exc.strerror})") from None
        click.echo(f"wrote {json_path}")
