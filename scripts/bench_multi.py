"""scripts/bench --pipelines 1,2,4: several pipelines in one daemon, next to the same work in separate
processes that have nothing of edge-agent's, in the same run, with the same thread settings.

For each N, in this order (so other load on the machine hits them alike):
  bare loops   N bench_limit.py processes at once: invoke only, on a preprocessed input
  limit        N bench_ideal.py processes at once: each decodes the same video at the same scale,
               preprocesses and invokes (the two-thread upper bound of scripts/bench), looping the video
  daemon       one ``edge-agent run``: N camera pipelines (MobileNetV2-int8, each its own copy of the model
               file, each its own copy of the video, looped, full speed) + one sensor pipeline (a CSV file
               played at 400 samples/s, windows of 32, hop 16: 25 results/s), QoS 1 through the outbox
  paced        the same daemon with each camera capped at 2/3 of the full-speed rate per pipeline
Each part runs --seconds. What is reported per N (medians over --runs):
  results_per_s     the camera pipelines' results received by the subscriber per second, summed (steady
                    state: each pipeline's first results left out); the sensor's own rate separately
  vs_limit          that sum / the sum of the N limit processes' frames per second
  fairness          min / max of the camera pipelines' results per second (1.0 = equal shares)
  e2e_p99_ms        capture -> subscriber, the worst camera pipeline's p99 (scripts/bench_pipeline.py)
  rss_mb            the daemon's peak resident set (VmHWM); rss_anon_mb its anonymous part's peak, the
                    daemon's own memory without the mapped libraries (see bench_pipeline.py)
  cpu_ms_per_result the daemon's CPU time (all threads) per camera result, steady state only
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import yaml
from bench_broker import Broker
from bench_pipeline import DEVICE, measure_daemon, summarize, write_config, write_sensor_csv

HERE = Path(__file__).resolve().parent
PACED_FRACTION = 2 / 3
SENSOR_RATE_HZ = 400.0  # a vibration sensor; with window 32 / hop 16: 25 results/s
SENSOR_HOP = 16


def run_together(cmds: list[list[str]], what: str, timeout: float) -> list[dict]:
    """Start every command at once; each prints one JSON line. Failures come back as {"error": ...}."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out.append({"error": f"{what}: no answer within {timeout:.0f} s"})
            continue
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            out.append({"error": f"{what}: exit {p.returncode}: {(stdout + stderr).strip()[-400:]}"})
        else:
            out.append(json.loads(lines[-1]))
    return out


def prepare(work: Path, n: int, model: Path, video: Path) -> list[tuple[Path, Path]]:
    """N copies of the model (with its manifest) and of the video: every pipeline its own files."""
    pairs = []
    for i in range(n):
        d = work / f"multi-cam{i}"
        d.mkdir(parents=True, exist_ok=True)
        m, v = d / model.name, d / f"camera{i}{video.suffix}"
        for src, dst in ((model, m), (model.with_suffix(".json"), m.with_suffix(".json")), (video, v)):
            if not dst.exists():
                shutil.copyfile(src, dst)
        pairs.append((m, v))
    return pairs


def write_multi_config(
    work: Path,
    broker: Broker,
    pairs: list[tuple[Path, Path]],
    sensor: dict,
    csv: Path,
    threads: int,
    fps: float | None,
) -> Path:
    base = write_config(
        work, broker, "multi", {"type": "camera", "url": str(pairs[0][1])}, pairs[0][0], threads
    )
    cfg = yaml.safe_load(base.read_text())
    camera = cfg["pipelines"][0]
    pipelines = []
    for i, (model, video) in enumerate(pairs):
        source: dict = {"type": "camera", "url": str(video), "loop": True}
        if fps:
            source["fps"] = round(fps, 1)
        pipelines.append(
            {**camera, "name": f"cam{i}", "source": source, "model": {**camera["model"], "path": str(model)}}
        )
    pipelines.append(
        {
            **camera,
            "name": "sensor",
            "source": {"type": "file", "path": str(csv), "format": "csv", "rate_hz": SENSOR_RATE_HZ},
            "window": {"size": sensor["window"], "hop": SENSOR_HOP},
            "model": {**camera["model"], "path": sensor["tflite"]},
        }
    )
    cfg["pipelines"] = pipelines
    base.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return base


def daemon_run(work: Path, broker: Broker, config: Path, n: int, seconds: float) -> dict:
    """The daemon for ``seconds`` of results (plus its start-up), then a clean stop; per-pipeline numbers."""
    seen = measure_daemon(
        work, broker, "multi", config, [f"edge/{DEVICE}/+/result"], expect=None, timeout=seconds + 3.0
    )
    names = [f"cam{i}" for i in range(n)]
    per = {}
    for name in [*names, "sensor"]:
        mine = [r for r in seen.records if r.topic == f"edge/{DEVICE}/{name}/result"]
        run = summarize(name, mine, seen.t0, seen.rss_mb, seen.wall_s, seen.exit_code, "bench", seen.log_path)
        per[name] = {
            "results": run.results,
            "fps": run.fps,
            "e2e_p50_ms": run.e2e_p50_ms,
            "e2e_p99_ms": run.e2e_p99_ms,
        }
    cams = [per[n_] for n_ in names]
    error = None
    if seen.exit_code not in (0, None) or any(c["results"] < 20 for c in cams):
        error = f"exit {seen.exit_code}, results {[c['results'] for c in cams]}; log: {seen.log_path}"
    camera_results = [r for r in seen.records if r.topic.rsplit("/", 2)[-2] in names]
    return {
        "pipelines": per,
        "results_per_s": sum(c["fps"] for c in cams),
        "fairness": min(c["fps"] for c in cams) / max(c["fps"] for c in cams) if cams[0]["fps"] else 0.0,
        "e2e_p99_ms": max(c["e2e_p99_ms"] for c in cams),
        "e2e_p50_ms": median(c["e2e_p50_ms"] for c in cams),
        "sensor_results_per_s": per["sensor"]["fps"],
        "rss_mb": seen.rss_mb,
        "rss_anon_mb": seen.peaks_mb.get("RssAnon"),
        "cpu_ms_per_result": _steady_cpu_ms(seen.cpu_samples, camera_results),
        "error": error,
    }


def _steady_cpu_ms(samples: list[tuple[float, float]], results: list) -> float | None:
    """Daemon CPU per camera result between the first CPU sample after start-up (the 10th result) and the
    last sample before the stop: leaves out imports, model loading and the drain."""
    times = sorted(r.recv_at for r in results)
    if len(times) < 40 or len(samples) < 3:
        return None
    start = next(((t, c) for t, c in samples if t >= times[10]), None)
    end = next(((t, c) for t, c in reversed(samples) if t <= times[-1]), None)
    if start is None or end is None or end[0] <= start[0]:
        return None
    count = sum(1 for t in times if start[0] < t <= end[0])
    return (end[1] - start[1]) * 1000 / count if count else None


def multi_part(
    work: Path,
    broker: Broker,
    made: dict,
    counts: list[int],
    threads: int,
    runs: int,
    seconds: float,
    say,
) -> dict:
    model = Path(made["mobilenet_v2_int8"]["tflite"])
    video = Path(made["camera"]["video"])
    sensor = made["sensor_dense_int8"]
    rows = int(SENSOR_RATE_HZ * (seconds * 2 + 60))
    csv = work / f"multi-sensor-{rows}.csv"
    write_sensor_csv(csv, rows, sensor["channels"])
    out: dict = {}
    for n in counts:
        pairs = prepare(work, n, model, video)
        bare, limit, full, paced = [], [], [], []
        for i in range(runs):
            tag = f"pipelines={n}: run {i + 1}/{runs}"
            say(f"{tag}: {n} bare loop process(es) at once ({seconds:.0f} s)")
            start = time.time() + 2.5
            got = run_together(
                [
                    [sys.executable, str(HERE / "bench_limit.py"), str(m), "--threads", str(threads),
                     "--seconds", str(seconds), "--start-at", str(start)]
                    for m, _ in pairs
                ],
                "bare loop",
                seconds * 5 + 60,
            )  # fmt: skip
            bare.append(_sum(got, "fps", "cpu_ms_per_iter"))
            say(f"{tag}: {n} limit process(es) at once: decode + preprocess + invoke ({seconds:.0f} s)")
            start = time.time() + 3.0
            got = run_together(
                [
                    [sys.executable, str(HERE / "bench_ideal.py"), str(m), str(v), "--threads", str(threads),
                     "--seconds", str(seconds), "--decode-frames", "0", "--start-at", str(start)]
                    for m, v in pairs
                ],
                "limit",
                seconds * 5 + 60,
            )  # fmt: skip
            limit.append(_sum(got, "ideal_fps", "cpu_ms_per_frame"))
            say(f"{tag}: edge-agent run with {n} camera pipeline(s) + 1 sensor pipeline, full speed")
            cfg = write_multi_config(work, broker, pairs, sensor, csv, threads, None)
            full.append(daemon_run(work, broker, cfg, n, seconds))
            rate = PACED_FRACTION * full[-1]["results_per_s"] / n
            if rate > 0:
                say(f"{tag}: edge-agent run paced at {rate:.0f} fps per camera")
                cfg = write_multi_config(work, broker, pairs, sensor, csv, threads, rate)
                paced.append(daemon_run(work, broker, cfg, n, seconds))
        out[str(n)] = summarize_multi(n, bare, limit, full, paced)
    return out


def _sum(runs: list[dict], key: str, cpu_key: str) -> dict:
    errors = [r["error"] for r in runs if "error" in r]
    cpu = [r[cpu_key] for r in runs if r.get(cpu_key)]
    return {
        "fps": sum(r.get(key) or 0.0 for r in runs),
        "each": [r.get(key) for r in runs],
        "pinned": [r.get("pinned") for r in runs],
        "cpu_ms_per_result": sum(cpu) / len(cpu) if cpu else None,  # CPU per frame, mean of the processes
        "errors": errors,
    }


def summarize_multi(n: int, bare: list[dict], limit: list[dict], full: list[dict], paced: list[dict]) -> dict:
    def med(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if not r.get("error") and not r.get("errors") and r.get(key) is not None]
        return median(vals) if vals else None

    ok = [r for r in full if not r["error"]]
    ratios = [
        f["results_per_s"] / lim["fps"]
        for f, lim in zip(full, limit, strict=True)
        if not f["error"] and lim["fps"]
    ]
    row = {
        "camera_pipelines": n,
        "results_per_s": med(ok, "results_per_s"),
        "limit_fps": med(limit, "fps"),
        "vs_limit": median(ratios) if ratios else None,  # the median of same-run ratios
        "bare_loops_fps": med(bare, "fps"),
        "fairness": med(ok, "fairness"),
        "e2e_p50_ms": med(ok, "e2e_p50_ms"),
        "e2e_p99_ms": med(ok, "e2e_p99_ms"),
        "sensor_results_per_s": med(ok, "sensor_results_per_s"),
        "rss_mb": med(ok, "rss_mb"),
        "rss_anon_mb": med(ok, "rss_anon_mb"),
        "cpu_ms_per_result": med(ok, "cpu_ms_per_result"),
        "limit_cpu_ms_per_result": med(limit, "cpu_ms_per_result"),
        "bare_cpu_ms_per_result": med(bare, "cpu_ms_per_result"),
        "paced_results_per_s": med(paced, "results_per_s"),
        "paced_fairness": med(paced, "fairness"),
        "paced_e2e_p99_ms": med(paced, "e2e_p99_ms"),
        "paced_rss_mb": med(paced, "rss_mb"),
        "paced_cpu_ms_per_result": med(paced, "cpu_ms_per_result"),
    }
    row["errors"] = [e for r in [*bare, *limit] for e in r["errors"]] + [
        r["error"] for r in [*full, *paced] if r["error"]
    ]
    row["runs"] = {"bare_loops": bare, "limit": limit, "daemon": full, "paced": paced}
    return row


MULTI_COLUMNS = [
    ("camera pipelines", "camera_pipelines", "{:.0f}"),
    ("results/s (sum)", "results_per_s", "{:.0f}"),
    ("limit: N processes/s", "limit_fps", "{:.0f}"),
    ("  / limit", "vs_limit", "{:.3f}"),
    ("bare loops/s (N procs)", "bare_loops_fps", "{:.0f}"),
    ("fairness min/max", "fairness", "{:.3f}"),
    ("e2e p50 ms", "e2e_p50_ms", "{:.1f}"),
    ("e2e p99 ms (worst)", "e2e_p99_ms", "{:.1f}"),
    ("sensor results/s", "sensor_results_per_s", "{:.1f}"),
    ("daemon RSS MB", "rss_mb", "{:.1f}"),
    ("  anon (own) MB", "rss_anon_mb", "{:.1f}"),
    ("daemon CPU ms/result", "cpu_ms_per_result", "{:.2f}"),
    ("limit CPU ms/frame", "limit_cpu_ms_per_result", "{:.2f}"),
    ("bare loop CPU ms/inf", "bare_cpu_ms_per_result", "{:.2f}"),
    ("paced results/s", "paced_results_per_s", "{:.0f}"),
    ("paced fairness", "paced_fairness", "{:.3f}"),
    ("paced e2e p99 ms", "paced_e2e_p99_ms", "{:.1f}"),
]


def multi_table(rows: dict) -> list[str]:
    keys = list(rows)
    lines = [
        "",
        "several pipelines in one daemon (MobileNetV2-int8 on 640x480 MJPG each, + 1 sensor pipeline)",
    ]
    lines.append(f"{'':24s}" + "".join(f"{'N=' + k:>10s}" for k in keys))
    for label, key, fmt in MULTI_COLUMNS[1:]:
        cells = [rows[k].get(key) for k in keys]
        lines.append(
            f"{label:24s}" + "".join(f"{(fmt.format(c) if c is not None else '-'):>10s}" for c in cells)
        )
    return lines


def multi_targets(rows: dict) -> dict:
    out = {}
    for k, r in rows.items():
        if r["vs_limit"] is not None and int(k) >= 2:
            out[f"pipelines={k}: results/s >= 0.90 x N-process limit"] = {
                "met": r["vs_limit"] >= 0.90,
                "value": f"{r['vs_limit']:.3f} ({r['results_per_s']:.0f} vs {r['limit_fps']:.0f}/s)",
            }
        if r["fairness"] is not None and int(k) >= 2:
            out[f"pipelines={k}: fairness min/max >= 0.8"] = {
                "met": r["fairness"] >= 0.8,
                "value": f"{r['fairness']:.3f}",
            }
        if r["rss_mb"] is not None and int(k) >= 2 and "1" in rows and rows["1"]["rss_mb"]:
            per = (r["rss_mb"] - rows["1"]["rss_mb"]) / (int(k) - 1)
            out[f"pipelines={k}: RSS per further camera pipeline <= 25 MB"] = {
                "met": per <= 25,
                "value": f"{per:.1f} MB",
            }
    return out
