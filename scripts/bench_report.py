"""Turning the runs of scripts/bench into medians, ratios, target checks, a terminal table and the JSON."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from importlib import metadata

import click

from edge_agent.commands.probe_device import Roots, probe_system

IMAGE_MODELS = {
    "mobilenet_v2_int8": "MobileNetV2 224x224 int8 on a 640x480 MJPG video",
    "mobilenet_v2_float32": "MobileNetV2 224x224 float32 on a 640x480 MJPG video",
    "digits_int8": "digits CNN 8x8x1 int8 on a 64x64 MJPG video",
}
# Models whose inference dominates a frame's cost: there, "pipeline >= 95% of the bare loop" is the test of
# overlap. A model that runs in microseconds (digits) measures the per-frame cost of everything else instead.
INFERENCE_BOUND = ("mobilenet_v2_int8", "mobilenet_v2_float32")
STAGES = ("capture_age", "preprocess", "invoke", "postprocess", "total")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def med_of(runs: list[dict], key: str) -> float:
    return median([r[key] for r in runs if isinstance(r.get(key), (int, float)) and not r.get("error")])


def stage_medians(pipes: list[dict]) -> dict:
    names = {s for p in pipes for s in p.get("stages_ms", {})}
    ordered = [s for s in STAGES if s in names] + sorted(names - set(STAGES))
    return {
        s: {q: median([p["stages_ms"][s][q] for p in pipes if s in p["stages_ms"]]) for q in ("p50", "p99")}
        for s in ordered
    }


def cpu_medians(pipes: list[dict]) -> dict:
    who = sorted({w for p in pipes for w in p.get("cpu_ms_per_result") or {}})
    return {
        w: median([p["cpu_ms_per_result"][w] for p in pipes if w in (p.get("cpu_ms_per_result") or {})])
        for w in who
    }


def busiest_thread(pipes: list[dict]) -> dict:
    """The daemon's busiest thread (the inference thread): median ms per result on a CPU / waiting for one."""
    first = [p["threads_ms_per_result"][0] for p in pipes if p.get("threads_ms_per_result")]
    return {k: median([t[k] for t in first]) for k in ("cpu", "waiting_for_cpu")} if first else {}


def summarize_model(
    key: str,
    limits: list[dict],
    pipes: list[dict],
    keras: list[dict],
    tflrt: list[dict],
    ideals: list[dict] | None = None,
    paced: list[dict] | None = None,
    paced_ideals: list[dict] | None = None,
) -> dict:
    ideals, paced, paced_ideals = ideals or [], paced or [], paced_ideals or []
    ok = [p for p in pipes if not p.get("error")]
    row: dict = {
        "what": IMAGE_MODELS[key],
        "limit_fps": med_of(limits, "fps"),
        "limit_p50_ms": med_of(limits, "p50_ms"),
        "limit_p99_ms": med_of(limits, "p99_ms"),
        "limit_rss_mb": med_of(limits, "rss_mb"),
        "pipeline_fps": med_of(ok, "fps"),
        "e2e_p50_ms": med_of(ok, "e2e_p50_ms"),
        "e2e_p99_ms": med_of(ok, "e2e_p99_ms"),
        "rss_mb": med_of(ok, "rss_mb"),
        "rss_anon_mb": med_of(ok, "rss_anon_mb"),
        "rss_file_mb": med_of(ok, "rss_file_mb"),
        "startup_s": med_of(ok, "startup_s"),
        "results": med_of(ok, "results"),
        "source_frames": med_of(ok, "source_frames"),
        "skipped": med_of(ok, "skipped"),
    }
    row["pipeline_vs_limit"] = row["pipeline_fps"] / row["limit_fps"]
    if ideals:
        row["decode_ms"] = med_of(ideals, "decode_ms")
        row["ideal_fps"] = med_of(ideals, "ideal_fps")
        row["ideal_vs_limit"] = row["ideal_fps"] / row["limit_fps"]
        row["pipeline_vs_ideal"] = row["pipeline_fps"] / row["ideal_fps"]
    # what each result costs on top of the bare invoke, in the inference thread's time budget
    row["overhead_ms_per_result"] = 1000.0 / row["pipeline_fps"] - 1000.0 / row["limit_fps"]
    row["stages_ms"] = stage_medians(ok)
    paced_ok = [p for p in paced if not p.get("error")]
    if paced_ok:
        row["paced_fps"] = med_of(paced_ok, "fps")
        row["e2e_paced_p50_ms"] = med_of(paced_ok, "e2e_p50_ms")
        row["e2e_paced_p99_ms"] = med_of(paced_ok, "e2e_p99_ms")
        row["paced_stages_ms"] = stage_medians(paced_ok)
    bounds = [b for b in paced_ideals if not b.get("error") and b.get("latency_p99_ms") is not None]
    if bounds:  # the same rate without edge-agent: capture -> invoke end, decoding beside the model
        row["bound_paced_p50_ms"] = med_of(bounds, "latency_p50_ms")
        row["bound_paced_p99_ms"] = med_of(bounds, "latency_p99_ms")
        row["bound_paced_invoke_p99_ms"] = med_of(bounds, "invoke_p99_ms")
    row["limit_cpu_ms_per_result"] = med_of(limits, "cpu_ms_per_iter")
    row["cpu_ms_per_result"] = cpu_medians(ok)
    row["daemon_cpu_ms"] = row["cpu_ms_per_result"].get("daemon", float("nan"))
    row["tools_cpu_ms"] = row["cpu_ms_per_result"].get("broker", 0.0) + row["cpu_ms_per_result"].get(
        "subscriber", 0.0
    )
    row["daemon_cores"] = med_of(ok, "daemon_cores")
    row["inference_thread_ms_per_result"] = busiest_thread(ok)
    row["infer_cpu_ms"] = row["inference_thread_ms_per_result"].get("cpu", float("nan"))
    row["infer_wait_ms"] = row["inference_thread_ms_per_result"].get("waiting_for_cpu", float("nan"))
    if keras:
        row["keras_ms"] = med_of(keras, "function_ms")  # the faster way of the two: the fair comparison
        row["keras_eager_ms"] = med_of(keras, "eager_ms")
        row["keras_rss_mb"] = med_of(keras, "rss_mb")
        row["keras_import_s"] = med_of(keras, "import_s")
        per_result_ms = 1000.0 / row["pipeline_fps"]
        row["keras_vs_pipeline"] = row["keras_ms"] / per_result_ms
        row["keras_eager_vs_pipeline"] = row["keras_eager_ms"] / per_result_ms
        row["keras_rss_vs_pipeline"] = row["keras_rss_mb"] / row["rss_mb"]
    if tflrt:
        row["tflite_runtime_fps"] = med_of(tflrt, "fps")
        row["tflite_runtime_p50_ms"] = med_of(tflrt, "p50_ms")
        row["tflite_runtime_rss_mb"] = med_of(tflrt, "rss_mb")
        row["limit_vs_tflite_runtime"] = row["limit_fps"] / row["tflite_runtime_fps"]
    every = [*limits, *ideals, *pipes, *paced, *paced_ideals, *keras, *tflrt]
    row["errors"] = [p["error"] for p in every if p.get("error")]
    row["runs"] = {
        "limit": limits,
        "ideal": ideals,
        "pipeline": pipes,
        "paced": paced,
        "paced_ideal": paced_ideals,
        "keras": keras,
        "tflite_runtime": tflrt,
    }
    return row


def summarize_sensor(what: str, windows: int, limits: list[dict], pipes: list[dict]) -> dict:
    ok = [p for p in pipes if not p.get("error")]
    return {
        "what": what,
        "sensor_results_per_s": med_of(ok, "fps"),
        "results": med_of(ok, "results"),
        "expected_results": windows,
        "e2e_p50_ms": med_of(ok, "e2e_p50_ms"),
        "e2e_p99_ms": med_of(ok, "e2e_p99_ms"),
        "rss_mb": med_of(ok, "rss_mb"),
        "startup_s": med_of(ok, "startup_s"),
        "limit_fps": med_of(limits, "fps"),
        "stages_ms": stage_medians(ok),
        "cpu_ms_per_result": cpu_medians(ok),
        "daemon_cores": med_of(ok, "daemon_cores"),
        "errors": [p["error"] for p in [*limits, *pipes] if p.get("error")],
        "runs": {"limit": limits, "pipeline": pipes},
    }


def check_targets(models: dict, sensor: dict | None) -> dict:
    """The issue's targets, checked on the medians. Printed and written, never asserted."""
    out: dict = {}

    def put(name: str, met: bool, value: str) -> None:
        out[name] = {"met": bool(met), "value": value}

    for key, r in models.items():
        if key in INFERENCE_BOUND:
            put(
                f"{key}: pipeline_fps >= 0.95 x limit_fps",
                r["pipeline_vs_limit"] >= 0.95,
                f"{r['pipeline_vs_limit']:.3f} ({r['pipeline_fps']:.0f} vs {r['limit_fps']:.0f}/s)",
            )
        put(
            f"{key}: e2e_p99_ms <= limit_p99_ms + 5",
            r["e2e_p99_ms"] <= r["limit_p99_ms"] + 5.0,
            f"{r['e2e_p99_ms']:.2f} vs {r['limit_p99_ms']:.2f} + 5 ms",
        )
        if "e2e_paced_p99_ms" in r:
            bound = (
                f" (the 2-thread bound at that rate, no MQTT: p99 {r['bound_paced_p99_ms']:.2f} ms)"
                if "bound_paced_p99_ms" in r
                else ""
            )
            put(
                f"{key}: paced (2/3 rate) e2e_p99_ms <= limit_p99_ms + 5",
                r["e2e_paced_p99_ms"] <= r["limit_p99_ms"] + 5.0,
                f"{r['e2e_paced_p99_ms']:.2f} vs {r['limit_p99_ms']:.2f} + 5 ms at {r['paced_fps']:.0f} fps"
                + bound,
            )
        put(f"{key}: startup_s <= 2", r["startup_s"] <= 2.0, f"{r['startup_s']:.2f} s")
    if "mobilenet_v2_int8" in models:
        r = models["mobilenet_v2_int8"]
        split = (
            f" (anon {r['rss_anon_mb']:.1f} + libraries {r['rss_file_mb']:.1f})"
            if r.get("rss_anon_mb")
            else ""
        )
        put(
            "mobilenet_v2_int8: daemon peak RSS <= 100 MB", r["rss_mb"] <= 100, f"{r['rss_mb']:.1f} MB{split}"
        )
        if "keras_vs_pipeline" in r:
            put(
                "mobilenet_v2_int8: >= 20x faster than Keras in TF",
                r["keras_vs_pipeline"] >= 20,
                f"{r['keras_vs_pipeline']:.1f}x vs tf.function, {r['keras_eager_vs_pipeline']:.1f}x vs eager",
            )
    if "mobilenet_v2_int8" in models and "mobilenet_v2_float32" in models:
        i8, f32 = models["mobilenet_v2_int8"], models["mobilenet_v2_float32"]
        put(
            "mobilenet_v2: int8 faster than float32",
            i8["limit_fps"] > f32["limit_fps"] and i8["pipeline_fps"] > f32["pipeline_fps"],
            f"bare loop {i8['limit_fps'] / f32['limit_fps']:.2f}x, end to end "
            f"{i8['pipeline_fps'] / f32['pipeline_fps']:.2f}x",
        )
    if sensor:
        put(
            "sensor: >= 2000 results/s (QoS 1 + outbox)",
            sensor["sensor_results_per_s"] >= 2000,
            f"{sensor['sensor_results_per_s']:.0f}/s",
        )
    return out


def fmt(v: object, spec: str) -> str:
    return "-" if not isinstance(v, (int, float)) or v != v else format(v, spec)


COLUMNS = [
    ("bare loop fps", "limit_fps", ".0f"),
    ("edge-agent fps", "pipeline_fps", ".0f"),
    ("  / bare loop", "pipeline_vs_limit", ".3f"),
    ("2-thread bound fps", "ideal_fps", ".0f"),
    ("  / bare loop", "ideal_vs_limit", ".3f"),
    ("edge-agent / bound", "pipeline_vs_ideal", ".3f"),
    ("decode ms/frame", "decode_ms", ".3f"),
    ("overhead ms/res", "overhead_ms_per_result", ".3f"),
    ("bare p99 ms", "limit_p99_ms", ".2f"),
    ("e2e p50 ms", "e2e_p50_ms", ".2f"),
    ("e2e p99 ms", "e2e_p99_ms", ".2f"),
    ("paced fps (2/3)", "paced_fps", ".0f"),
    ("paced e2e p50 ms", "e2e_paced_p50_ms", ".2f"),
    ("paced e2e p99 ms", "e2e_paced_p99_ms", ".2f"),
    ("bound paced p50 ms", "bound_paced_p50_ms", ".2f"),
    ("bound paced p99 ms", "bound_paced_p99_ms", ".2f"),
    ("  its invoke p99", "bound_paced_invoke_p99_ms", ".2f"),
    ("daemon RSS MB", "rss_mb", ".1f"),
    ("  anon (own) MB", "rss_anon_mb", ".1f"),
    ("  file (libs) MB", "rss_file_mb", ".1f"),
    ("bare RSS MB", "limit_rss_mb", ".1f"),
    ("bare CPU ms/inf", "limit_cpu_ms_per_result", ".3f"),
    ("daemon CPU ms/res", "daemon_cpu_ms", ".3f"),
    ("broker+sub ms/res", "tools_cpu_ms", ".3f"),
    ("daemon cores", "daemon_cores", ".2f"),
    ("infer thr CPU ms", "infer_cpu_ms", ".3f"),
    ("infer thr runq ms", "infer_wait_ms", ".3f"),
    ("start->1st s", "startup_s", ".2f"),
    ("Keras tf.fn ms", "keras_ms", ".2f"),
    ("Keras eager ms", "keras_eager_ms", ".2f"),
    ("  speedup x", "keras_vs_pipeline", ".1f"),
    ("Keras RSS MB", "keras_rss_mb", ".0f"),
    ("TF import s", "keras_import_s", ".2f"),
    ("tflite-rt fps", "tflite_runtime_fps", ".0f"),
]


def table(report: dict) -> str:
    m = report["models"]
    names = list(m)
    w = max(14, *(len(n) for n in names)) + 2 if names else 16
    lines = [f"{'':<18}" + "".join(f"{n:>{w}}" for n in names)] if names else []
    for label, key, spec in COLUMNS:
        if any(key in m[n] for n in names):
            lines.append(f"{label:<18}" + "".join(f"{fmt(m[n].get(key), spec):>{w}}" for n in names))
    stages = list(dict.fromkeys(s for n in names for s in m[n].get("stages_ms", {})))
    for s in stages:
        cells = []
        for n in names:
            st = m[n]["stages_ms"].get(s, {})
            cells.append(f"{fmt(st.get('p50'), '.2f')}/{fmt(st.get('p99'), '.2f')}")
        lines.append(f"{s[:11] + ' p50/p99':<18}" + "".join(f"{c:>{w}}" for c in cells))
    head = (
        f"edge-agent benchmark  {report['date']}  {report['cpu']} x{report['cores']} "
        f"{'on ' + report['board'] + ' ' if report.get('board') else ''}"
        f"({' '.join(report.get('simd') or ['no SIMD flags read'])})  "
        f"{report['threads']} thread(s)  medians of {report['runs']} run(s)  load "
        f"{report['loadavg_1_5_15_min']['start'][0]:.1f} -> {report['loadavg_1_5_15_min']['end'][0]:.1f}"
    )
    settings = report.get("daemon_mqtt_settings")
    if settings:
        head += "  daemon mqtt: " + ", ".join(f"{k} {v:g}" for k, v in settings.items())
    out = [head, *lines]
    s = report.get("sensor")
    if s:
        out += [
            "",
            f"sensor: {s['what']}",
            f"  {fmt(s['sensor_results_per_s'], '.0f')} results/s end to end (QoS 1 + outbox; bare loop "
            f"{fmt(s['limit_fps'], '.0f')}/s), e2e p50 {fmt(s['e2e_p50_ms'], '.2f')} ms, p99 "
            f"{fmt(s['e2e_p99_ms'], '.2f')} ms, daemon RSS {fmt(s['rss_mb'], '.1f')} MB, "
            f"{fmt(s['results'], '.0f')}/{s['expected_results']} results",
        ]
    multi = report.get("pipelines")
    if multi:
        from bench_multi import multi_table

        out += multi_table(multi)
    out += ["", "targets:"]
    out += [
        f"  [{'met ' if t['met'] else 'MISS'}] {name}: {t['value']}" for name, t in report["targets"].items()
    ]
    errors = [e for n in names for e in m[n]["errors"]] + ((s or {}).get("errors") or [])
    errors += [e for r in (multi or {}).values() for e in r["errors"]]
    out += [f"  error: {e.splitlines()[0]}" for e in errors]
    return "\n".join(out)


def print_table(report: dict) -> None:
    click.echo("\n" + table(report))


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in (
        "edge-agent",
        "ai-edge-litert",
        "numpy",
        "opencv-python-headless",
        "paho-mqtt",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, IndexError):
        first = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout
        out["mosquitto"] = first.splitlines()[0].split()[-1]
    return out


def machine() -> dict:
    """The CPU the numbers came from, through ``edge-agent probe``'s reader (an Arm board's core by name)."""
    system = probe_system(Roots())
    return {
        "cpu": system.cpu_model or platform.processor() or platform.machine(),
        "board": system.board,
        "simd": system.simd,  # they pick the int8 kernels: compare only runs where they match
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


WHAT_IS_MEASURED = {
    "limit": "bare ai-edge-litert loop: set_tensor + invoke + get_tensor on a random, already quantized "
    "input; fps = iterations / loop time, p50/p99 per iteration",
    "e2e_paced": "the same e2e, with the video played at 2/3 of the full-speed rate of that run (source fps "
    "cap): latency without queueing behind a saturated inference thread",
    "bound_paced": "bench_ideal.py --fps at the paced run's rate, once through the video, the newest frame "
    "taken: capture (packet read) -> decode -> preprocess -> invoke end, the daemon's CPU placement, no "
    "postprocessing or MQTT: what decoding and the model alone get at that rate on this machine, in the "
    "same run (a decoder on the other core slows the invoke, which the bare loop does not see); "
    "bound_paced_invoke_p99_ms: its invoke alone",
    "pipeline_fps": "results/s received by a mosquitto_sub subscriber, steady state (first 10 left out)",
    "e2e": "frame capture -> subscriber receive = (receive - payload ts) + latency_ms.total; ts = payload "
    "build time, ms resolution, truncated, so up to 1 ms high: capture -> wait for the inference thread -> "
    "preprocess -> invoke -> postprocess -> outbox (SQLite) -> paho -> mosquitto (forwards as it PUBACKs) "
    "-> subscriber; stages_ms.publish = receive - ts",
    "stages_ms": "the daemon's latency_ms fields in each payload (p50/p99 over results, median of runs)",
    "rss_mb": "daemon's VmHWM (kernel peak resident set) polled every 20 ms; rss_anon_mb / rss_file_mb: "
    "peaks of its anonymous part (the daemon's own memory) and its file-backed part (mapped libraries; "
    "varies with how the page cache holds them: see bench_pipeline.py)",
    "startup_s": "Popen of `edge-agent run CONFIG` -> first result received by the subscriber",
    "keras_ms": "median of model(x, training=False) inside tf.function (keras_eager_ms: called eagerly), "
    "own process, intra-op threads = --threads; keras_vs_pipeline = keras_ms / edge-agent ms per result",
    "overhead_ms_per_result": "1000/pipeline_fps - 1000/limit_fps",
    "ideal_fps": "upper bound for a Python pipeline on this machine and video (bench_ideal.py): a capture "
    "thread (OpenCV decode + edge-agent's ImagePreprocessor) and an inference thread (copy + invoke), "
    "nothing else; decode_ms: OpenCV decode alone, ms per frame",
    "inference_thread_ms_per_result": "the daemon's busiest thread (the inference thread), from "
    "/proc/<pid>/task/<tid>/schedstat: ms per result on a CPU, and ms runnable but waiting for a CPU",
    "cpu_ms_per_result": "CPU time (user+system, all threads) per result: daemon (wait4 rusage), broker and "
    "subscriber (/proc/<pid>/stat); limit_cpu_ms_per_result: the bare loop's CPU per iteration",
}
