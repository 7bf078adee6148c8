"""scripts/bench: edge-agent end to end, next to the bare interpreter and to what users do without it.

One run, one machine, same model and thread count, every measurement in its own child process:
  limit      bench_limit.py: bare ai-edge-litert loop (set_tensor/invoke/get_tensor, preprocessed input)
  pipeline   bench_pipeline.py: ``edge-agent run`` on a video file at full speed, QoS 1 via the outbox
             to a private mosquitto (bench_broker.py), measured by a subscriber
  keras      bench_keras.py: the same Keras model in TensorFlow (eager and tf.function)
  tflite-rt  bench_limit.py: tflite-runtime on the same .tflite, when --tflite-runtime-python is given
  sensor     bench_pipeline.py: a small dense model on windows of a CSV file source, QoS 1 via the outbox
  pipelines  bench_multi.py (--pipelines 1,2,4): N camera pipelines + 1 sensor pipeline in one daemon, next
             to N separate limit processes and N bare loops at once (alone unless --models is given too)
  motion     bench_motion.py (--motion, on its own): the motion gate on rendered videos: CPU per hour of a
             still scene gated vs ungated, event recall and latency, a light change, the gate's own cost
Limit and pipeline runs alternate, so that other load on the machine hits both alike; each number is the
median over --runs. Models are made once into --work (no download). Output: a table, and --json FILE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from bench_broker import Broker
from bench_multi import multi_part, multi_targets
from bench_pipeline import MQTT_SETTINGS, PipelineRun, run_daemon, write_config, write_sensor_csv
from bench_report import (
    IMAGE_MODELS,
    WHAT_IS_MEASURED,
    check_targets,
    machine,
    print_table,
    summarize_model,
    summarize_sensor,
    versions,
)

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-agent-bench"
SENSOR_MODEL = "sensor_dense_int8"
PACED_FRACTION = 2 / 3  # the paced run plays the video at this fraction of the full-speed rate


def say(text: str) -> None:
    click.echo(text, err=True)


def run_json(cmd: list[str], what: str, timeout: float, env: dict | None = None) -> dict:
    """Run a worker; its last stdout line is JSON. Failures come back as {"error": ...}, never raise."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"{what}: no answer within {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"{what}: exit {done.returncode}: {(done.stdout + done.stderr).strip()[-600:]}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------- the parts


def make_models(work: Path, which: list[str], frames: int) -> dict:
    say(f"models: making or reusing {', '.join(which)} in {work}")
    got = run_json(
        [sys.executable, str(HERE / "bench_models.py"), "--out", str(work), "--frames", str(frames), *which],
        "making models",
        timeout=1800,
    )
    if "error" in got:
        raise click.ClickException(got["error"])
    return got


def limit_run(
    model: str, threads: int, seconds: float, python: str = sys.executable, runtime: str = "litert"
) -> dict:
    return run_json(
        [
            python,
            str(HERE / "bench_limit.py"),
            model,
            "--runtime",
            runtime,
            "--threads",
            str(threads),
            "--seconds",
            str(seconds),
        ],
        f"{runtime} loop on {Path(model).name}",
        timeout=seconds * 10 + 120,
    )


def ideal_run(model: str, video: str, threads: int, fps: float | None = None) -> dict:
    """The two-thread upper bound at full speed; with ``fps``, played at that rate (the paced run's
    latency bound: once through the video, as the daemon's paced run plays it). Pinned as the one-camera
    daemon pins its threads."""
    cmd = [sys.executable, str(HERE / "bench_ideal.py"), model, video, "--threads", str(threads), "--pin"]
    if fps:
        cmd += ["--fps", f"{round(fps, 1)}", "--decode-frames", "0"]
    return run_json(cmd, f"two-thread upper bound on {Path(video).name}", timeout=600)


def keras_run(keras_path: str, threads: int, seconds: float) -> dict:
    return run_json(
        [
            sys.executable,
            str(HERE / "bench_keras.py"),
            keras_path,
            "--threads",
            str(threads),
            "--seconds",
            str(seconds),
        ],
        f"Keras in TensorFlow on {Path(keras_path).name}",
        timeout=seconds * 20 + 300,
    )


def pipeline_run(
    work: Path, broker: Broker, name: str, model: str, video: str, threads: int, fps: float | None = None
) -> PipelineRun:
    """The daemon on ``video``: at full speed, or played at ``fps`` (below saturation: latency without
    queueing)."""
    source: dict = {"type": "camera", "url": video}
    if fps:
        source["fps"] = round(fps, 1)
    cfg = write_config(work, broker, name, source, Path(model), threads)
    return run_daemon(work, broker, name, cfg, expect=None, timeout=600)


def sensor_run(
    work: Path, broker: Broker, model: str, csv: Path, window: int, hop: int, threads: int, expect: int
) -> PipelineRun:
    source = {"type": "file", "path": str(csv), "format": "csv"}
    cfg = write_config(
        work, broker, "sensor", source, Path(model), threads, window={"size": window, "hop": hop}
    )
    return run_daemon(work, broker, "sensor", cfg, expect=expect, timeout=600)


def report_header(threads: int, runs: int, load_before: tuple) -> dict[str, Any]:
    """What every report starts with: when, on what machine, with which settings, under what load."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **machine(),
        "threads": threads,
        "runs": runs,
        "daemon_mqtt_settings": dict(MQTT_SETTINGS),  # beyond the daemon's defaults (--linger-ms)
        "loadavg_1_5_15_min": {"start": load_before, "end": os.getloadavg()},
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--quick", is_flag=True, help="Seconds, for CI's smoke run: digits + sensor only, 1 run, short loops."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here."
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORK,
    show_default=True,
    help="Cache of the models and videos (made once; nothing is downloaded).",
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    help="Interpreter threads (litert, tflite-runtime, TF intra-op).",
)
@click.option("--runs", type=int, default=None, help="Runs per measurement (median); default 3, --quick 1.")
@click.option("--seconds", type=float, default=None, help="Length of each bare loop; default 5, --quick 1.")
@click.option(
    "--models",
    "only",
    default=None,
    help="Comma list of models (mobilenet_v2_int8,mobilenet_v2_float32,digits_int8).",
)
@click.option("--no-keras", is_flag=True, help="Skip Keras in TensorFlow (the slowest part).")
@click.option("--no-sensor", is_flag=True, help="Skip the sensor case.")
@click.option("--frames", default=1500, show_default=True, help="Frames of the 640x480 camera video.")
@click.option(
    "--sensor-windows", type=int, default=None, help="Windows in the sensor CSV; default 20000, --quick 3000."
)
@click.option(
    "--tflite-runtime-python",
    type=click.Path(exists=True, dir_okay=False),
    help="A python with tflite-runtime to add its row; make one with: python3.11 -m venv V && "
    "V/bin/pip install tflite-runtime 'numpy<2'",
)
@click.option(
    "--pipelines",
    "pipeline_counts",
    metavar="N[,N...]",
    help="Several pipelines in one daemon: for each N, N MobileNetV2-int8 camera pipelines + 1 sensor "
    "pipeline, next to N limit processes at once; each part --seconds long (default 8). Runs only this "
    "part unless --models is given too. E.g. --pipelines 1,2,4 --runs 3: about 7 minutes.",
)
@click.option(
    "--linger-ms",
    type=click.FloatRange(0, 1000),
    default=None,
    help="The daemon's mqtt.linger_ms (default: the daemon's own: 0 when inference has CPUs of its own, "
    "else 10).",
)
@click.option(
    "--motion",
    is_flag=True,
    help="Only the motion-gating part (bench_motion.py, MobileNetV2-int8, ~15 min with --runs 3).",
)
def main(
    motion: bool,
    quick: bool,
    json_path: Path | None,
    work: Path,
    threads: int,
    runs: int | None,
    seconds: float | None,
    only: str | None,
    no_keras: bool,
    no_sensor: bool,
    frames: int,
    sensor_windows: int | None,
    tflite_runtime_python: str | None,
    pipeline_counts: str | None,
    linger_ms: float | None,
) -> None:
    """Measure edge-agent end to end next to the bare interpreter loop and Keras in TensorFlow."""
    if linger_ms is not None:
        MQTT_SETTINGS["linger_ms"] = linger_ms
    # SIGTERM unwinds like Ctrl-C, so the daemon, the subscriber and the broker are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = runs or (1 if quick else 3)
    counts: list[int] = []
    if pipeline_counts:
        try:
            counts = [int(c) for c in pipeline_counts.split(",") if c.strip()]
        except ValueError:
            raise click.BadParameter(f"'{pipeline_counts}': a comma list of numbers, e.g. 1,2,4") from None
        if not counts or any(c < 1 or c > 16 for c in counts):
            raise click.BadParameter(f"'{pipeline_counts}': each N must be 1..16")
        if not only:
            only, no_sensor, no_keras = "", True, True  # only the multi-pipeline part
    multi_seconds = seconds or 8.0
    seconds = seconds or (1.0 if quick else 5.0)
    sensor_windows = sensor_windows or (3000 if quick else 20000)
    keys = list(IMAGE_MODELS) if not quick else ["digits_int8"]
    if only is not None:
        keys = [k.strip() for k in only.split(",") if k.strip()]
        unknown = set(keys) - set(IMAGE_MODELS)
        if unknown:
            raise click.BadParameter(f"unknown model(s) {sorted(unknown)}; choose from {list(IMAGE_MODELS)}")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    load_before = os.getloadavg()  # other work on the machine makes every number here noisier
    if motion:
        motion_part(work, threads, runs, json_path, load_before)
        return
    which = (
        (["mobilenet", "camera"] if counts or any(k.startswith("mobilenet") for k in keys) else [])
        + (["digits"] if "digits_int8" in keys else [])
        + ([] if no_sensor and not counts else ["sensor"])
    )
    made = make_models(work, which, frames)
    video_of = {k: made["camera"]["video"] if k.startswith("mobilenet") else made[k]["video"] for k in keys}

    scratch = Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
    broker = Broker(scratch).start()
    say(f"broker: private mosquitto on 127.0.0.1:{broker.port}; scratch {scratch}")
    models: dict = {}
    sensor: dict | None = None
    multi: dict | None = None
    try:
        for key in keys:
            limits, ideals, pipes, paced, paced_ideals, keras, tflrt = [], [], [], [], [], [], []
            for i in range(runs):
                say(f"{key}: run {i + 1}/{runs}: bare loop ({seconds:.0f} s)")
                limits.append(limit_run(made[key]["tflite"], threads, seconds))
                say(f"{key}: run {i + 1}/{runs}: two-thread upper bound (decode + preprocess + invoke)")
                ideals.append(ideal_run(made[key]["tflite"], video_of[key], threads))
                say(f"{key}: run {i + 1}/{runs}: edge-agent run on {Path(video_of[key]).name}")
                pipes.append(
                    pipeline_run(
                        scratch, broker, key.replace("_", "-"), made[key]["tflite"], video_of[key], threads
                    ).as_dict()
                )
                if pipes[-1]["fps"] > 0:  # latency when not saturated: the same video at 2/3 of that rate
                    rate = PACED_FRACTION * pipes[-1]["fps"]
                    say(f"{key}: run {i + 1}/{runs}: edge-agent run paced at {rate:.0f} fps")
                    paced.append(
                        pipeline_run(
                            scratch,
                            broker,
                            key.replace("_", "-"),
                            made[key]["tflite"],
                            video_of[key],
                            threads,
                            rate,
                        ).as_dict()
                    )
                    say(f"{key}: run {i + 1}/{runs}: two-thread upper bound paced at {rate:.0f} fps")
                    paced_ideals.append(ideal_run(made[key]["tflite"], video_of[key], threads, rate))
                if tflite_runtime_python:
                    say(f"{key}: run {i + 1}/{runs}: tflite-runtime loop")
                    tflrt.append(
                        limit_run(
                            made[key]["tflite"], threads, seconds, tflite_runtime_python, "tflite-runtime"
                        )
                    )
            keras_path = made[key].get("keras")
            if keras_path and not no_keras:
                same = next(
                    (models[k]["runs"]["keras"] for k in models if made[k].get("keras") == keras_path), None
                )
                if same:  # int8 and float32 come from the same Keras model: measure it once
                    keras = same
                else:
                    for i in range(runs):
                        say(f"{key}: run {i + 1}/{runs}: Keras in TensorFlow")
                        keras.append(keras_run(keras_path, threads, seconds * 2))
            models[key] = summarize_model(key, limits, pipes, keras, tflrt, ideals, paced, paced_ideals)
        if not no_sensor:
            sensor = run_sensor(scratch, broker, made[SENSOR_MODEL], threads, runs, seconds, sensor_windows)
        if counts:
            multi = multi_part(scratch, broker, made, counts, threads, runs, multi_seconds, say)
    finally:
        broker.stop()

    report = {
        **report_header(threads, runs, load_before),
        "quick": quick,
        "loop_seconds": seconds,
        "versions": versions(),
        "models": models,
        "sensor": sensor,
        "what_is_measured": WHAT_IS_MEASURED,
    }
    if multi is not None:
        report["pipelines"] = multi
        report["pipelines_seconds"] = multi_seconds
        report["what_is_measured_pipelines"] = sys.modules["bench_multi"].__doc__
    if tflite_runtime_python:
        report["versions"]["tflite-runtime"] = next(
            (
                r["runs"]["tflite_runtime"][0].get("version")
                for r in models.values()
                if r["runs"]["tflite_runtime"]
            ),
            None,
        )
    report["targets"] = check_targets(models, sensor)
    if multi is not None:
        report["targets"].update(multi_targets(multi))
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print_table(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"\nJSON: {json_path}")
    multi_errors = any(r["errors"] for r in (multi or {}).values())
    if (
        not any(r["errors"] for r in models.values())
        and not (sensor and sensor["errors"])
        and not multi_errors
    ):
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    else:
        say(f"logs kept in {scratch}")


def motion_part(work: Path, threads: int, runs: int, json_path: Path | None, load_before: tuple) -> None:
    from bench_motion import run_motion, table

    made = make_models(work, ["mobilenet"], 10)
    scratch = Path(tempfile.mkdtemp(prefix="edge-agent-bench-motion-"))
    broker = Broker(scratch).start()
    try:
        part = run_motion(work, broker, made["mobilenet_v2_int8"]["tflite"], threads, runs, say)
    finally:
        broker.stop()
    report = {
        **report_header(threads, runs, load_before),
        "versions": versions(),
        "motion": part,
    }
    click.echo("\n" + table(part))
    click.echo(
        f"\nmedians over {runs} run(s); load average at start {load_before[0]:.1f}, end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"\nJSON: {json_path}")
    if part["errors"]:
        say(f"logs kept in {work}: {part['errors']}")


def run_sensor(
    scratch: Path, broker: Broker, made: dict, threads: int, runs: int, seconds: float, windows: int
) -> dict:
    window, channels = made["window"], made["channels"]
    hop = window // 2  # 50% overlap, the usual for activity windows
    rows = window + hop * (windows - 1)
    csv = scratch / f"sensor-{rows}.csv"
    write_sensor_csv(csv, rows, channels)
    limits, pipes = [], []
    for i in range(runs):
        say(f"sensor: run {i + 1}/{runs}: bare loop")
        limits.append(limit_run(made["tflite"], threads, seconds))
        say(f"sensor: run {i + 1}/{runs}: edge-agent run on {csv.name} ({windows} windows)")
        pipes.append(
            sensor_run(scratch, broker, made["tflite"], csv, window, hop, threads, windows).as_dict()
        )
    what = f"dense int8 model on {window}x{channels} windows (hop {hop}) of a CSV file source, no rate limit"
    return summarize_sensor(what, windows, limits, pipes)


if __name__ == "__main__":
    main(prog_name="scripts/bench")
