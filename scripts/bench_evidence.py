"""What keeping evidence frames costs a camera pipeline: the same daemon with evidence off and with every
result's frame kept, side by side in one run, at full speed (MobileNetV2-int8, 1 thread, QoS 1 through the
outbox to a private mosquitto), on the benchmark's 640x480 MJPG video and the same re-encoded 1280x720.

    python scripts/bench_evidence.py [--runs 3] [--frames 600] [--sizes 640,1280] [--json F]

Off and on alternate within each run, so other load on the machine hits both alike. Reported per size
(medians over --runs): results/s, on / off, daemon CPU per result, the inference thread's CPU per result
(a JPEG encoded on that thread delays the next frame's invoke), e2e p99, and the frames the store kept and
failed to keep. Needs the models and video of ``scripts/bench`` (made once, in --work).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from statistics import median

import click
import yaml
from bench_broker import Broker
from bench_pipeline import run_daemon, write_config
from bench_profile import DEFAULT_WORK
from bench_report import machine

VIDEO = "camera-640x480-1500.avi"
MODEL = "mobilenet_v2_int8.tflite"
EVIDENCE = {"enabled": True, "max_files": 100}  # every published result's frame; the folder stays small


def video_at(work: Path, width: int, frames: int) -> Path:
    """The benchmark's video, its first ``frames`` frames, as MJPG at ``width`` (4:3); cached."""
    out = work / f"evidence-{width}w-{frames}.avi"
    if not out.exists():
        tmp = out.with_name("tmp-" + out.name)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(work / VIDEO), "-frames:v", str(frames),
             "-vf", f"scale={width}:-2", "-c:v", "mjpeg", "-q:v", "3", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(out)
    return out


def one_run(scratch: Path, broker: Broker, video: Path, model: Path, evidence: bool) -> dict:
    name = f"ev-{'on' if evidence else 'off'}"
    cfg = write_config(scratch, broker, name, {"type": "camera", "url": str(video)}, model, 1)
    if evidence:
        data = yaml.safe_load(cfg.read_text())
        data["pipelines"][0]["evidence"] = EVIDENCE
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    run = run_daemon(scratch, broker, name, cfg, expect=None, timeout=600)
    if run.error:
        raise click.ClickException(f"{name} on {video.name}: {run.error}")
    stats = next(iter(run.last_stats.get("pipelines", {}).values()), {})
    return {
        "results_per_s": run.fps,
        "daemon_cpu_ms_per_result": run.cpu_ms_per_result.get("daemon"),
        "inference_thread_cpu_ms_per_result": (run.threads_ms_per_result or [{}])[0].get("cpu"),
        "e2e_p99_ms": run.e2e_p99_ms,
        "evidence": stats.get("evidence"),
    }


def med(runs: list[dict], key: str) -> float:
    return median(r[key] for r in runs if r.get(key) is not None)


@click.command()
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--frames", default=600, show_default=True, type=click.IntRange(100, 1500))
@click.option("--sizes", default="640,1280", show_default=True, help="Frame widths (4:3), comma-separated.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--work", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORK, show_default=True
)
def main(runs: int, frames: int, sizes: str, json_path: Path | None, work: Path) -> None:
    if not (work / MODEL).exists() or not (work / VIDEO).exists():
        raise click.ClickException(f"no benchmark model or video in {work}: run scripts/bench once first")
    scratch = work / "evidence-bench"
    scratch.mkdir(parents=True, exist_ok=True)
    broker = Broker(scratch).start()
    report: dict = {"machine": machine(), "runs": runs, "frames": frames, "sizes": {}}
    try:
        for width in (int(w) for w in sizes.split(",")):
            video = video_at(work, width, frames)
            got: dict[str, list[dict]] = {"off": [], "on": []}
            for i in range(runs):
                for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    click.echo(f"{width}w run {i + 1}/{runs}: evidence {mode}", err=True)
                    got[mode].append(one_run(scratch, broker, video, work / MODEL, mode == "on"))
            report["sizes"][width] = got
    finally:
        broker.stop()
    keys = ("results_per_s", "daemon_cpu_ms_per_result", "inference_thread_cpu_ms_per_result", "e2e_p99_ms")
    click.echo(f"\nevidence off / on, medians of {runs} run(s), {frames} frames at full speed")
    click.echo(f"{'width':>6s} {'measure':36s} {'off':>8s} {'on':>8s} {'on/off':>7s}")
    for width, got in report["sizes"].items():
        for key in keys:
            off, on = med(got["off"], key), med(got["on"], key)
            click.echo(f"{width:>6d} {key:36s} {off:8.2f} {on:8.2f} {on / off:7.3f}")
        kept = [r["evidence"] for r in got["on"]]
        click.echo(f"{width:>6d} {'evidence saved / failed (each run)':36s} "
                   + ", ".join(f"{e['saved']}/{e['failed']}" for e in kept if e))  # fmt: skip
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1))
        click.echo(f"JSON: {json_path}")


if __name__ == "__main__":
    main()
