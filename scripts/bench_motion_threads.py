"""Where a still scene's CPU goes: per thread, ms of CPU per second of video, of a camera daemon on the motion
benchmark's still scene (MobileNetV2-int8, 10 fps played as a live camera, QoS 1 to a private mosquitto),
motion-gated as in the config template, then ungated.

    python scripts/bench_motion_threads.py [--seconds 30] [--codec mjpeg|h264] [--width W] [--work DIR]

``--codec h264`` plays the same scene re-encoded as H.264 (an RTSP camera's usual codec: FFmpeg decodes
every frame, and the gate glances at the decoded frames instead of at the JPEG packets). ``--width 320``
re-encodes it smaller, as a camera's low-resolution substream that a detector is pointed at.

Thread CPU comes from /proc/<pid>/task/<tid>/stat over a steady window (after 12 s of start-up and warm-up),
thread names from ``py-spy dump``. The README's "Motion, zones and masks" quotes it; ``scripts/bench
--motion`` is the benchmark (CPU-seconds per hour, gated against ungated, in one run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import click
import yaml
from bench_broker import Broker
from bench_motion_scenes import render
from bench_pipeline import agent_command
from bench_profile import DEFAULT_WORK, py_spy_exe, thread_times
from bench_report import machine

WARM_UP_S = 12.0
GATE = {"min_area": 0.002, "max_idle_s": 60, "cooldown_s": 0.5, "idle_fps": 5}  # the config template's


def thread_names(pid: int) -> dict[int, str]:
    """tid -> Python thread name (py-spy dump); empty without py-spy."""
    exe = py_spy_exe()
    if exe is None:
        return {}
    out = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False).stdout
    return {int(tid): name for tid, name in re.findall(r'Thread (\d+) \(\w+\): "([^"]+)"', out)}


def encoded(video: Path, codec: str, width: int | None) -> Path:
    """``video`` as ``codec`` (H.264: libx264, a keyframe every 2 s as cameras do; MJPEG: ffmpeg's encoder)
    at ``width`` (None: its own size; a camera's low-resolution substream otherwise); cached."""
    if codec == "mjpeg" and width is None:
        return video
    args = (
        ["-c:v", "libx264", "-g", "20", "-pix_fmt", "yuv420p"]
        if codec == "h264"
        else ["-c:v", "mjpeg", "-q:v", "3"]
    )
    if width is not None:
        args += ["-vf", f"scale={width}:-2"]
    out = video.with_name(
        f"{video.stem}.{codec}{'' if width is None else f'-{width}w'}.{'mp4' if codec == 'h264' else 'avi'}"
    )
    if not out.exists():
        tmp = out.with_name("tmp-" + out.name)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), *args, str(tmp)], check=True)
        tmp.rename(out)
    return out


def measure(
    work: Path, video: Path, fps: float, model: Path, gated: bool, seconds: float
) -> dict[str, float]:
    """Thread name -> ms of CPU per second of video over ``seconds``."""
    scratch = work / "motion-threads"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    broker = Broker(scratch).start()
    pipeline = {"name": "cam", "source": {"type": "camera", "url": str(video), "fps": fps, "loop": True},
                "model": {"path": str(model), "num_threads": 1},
                "publish": {"qos": 1, "policy": "every"}}  # fmt: skip
    if gated:
        pipeline["motion"] = GATE
    cfg = scratch / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "bench", "state_dir": str(scratch / "state"), "pipelines": [pipeline],
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 5.0},
    }))  # fmt: skip
    proc = subprocess.Popen(
        [*agent_command(), "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        time.sleep(WARM_UP_S)
        names = thread_names(proc.pid)
        before, t0 = thread_times(proc.pid), time.monotonic()
        time.sleep(seconds)
        after, elapsed = thread_times(proc.pid), time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(30)
        broker.stop()
    per_thread: dict[str, float] = {}
    for tid, (cpu, _) in after.items():
        name = re.sub(r":.*", "", names.get(tid, f"native {tid}"))  # camera-read:<url> -> camera-read
        per_thread[name] = per_thread.get(name, 0.0) + (cpu - before.get(tid, (0.0, 0.0))[0]) * 1000 / elapsed
    return per_thread


@click.command()
@click.option("--seconds", default=30.0, show_default=True, help="Length of the measured window.")
@click.option(
    "--codec",
    type=click.Choice(["mjpeg", "h264"]),
    default="mjpeg",
    show_default=True,
    help="The still scene as MJPEG (a USB camera's) or re-encoded as H.264 (an RTSP camera's).",
)
@click.option(
    "--width",
    type=click.IntRange(64, 640),
    help="Re-encode the 640x480 scene at this width, as a camera's low-resolution substream (e.g. 320).",
)
@click.option(
    "--work", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORK, show_default=True
)
def main(seconds: float, codec: str, width: int | None, work: Path) -> None:
    """Per-thread CPU of a gated and an ungated camera daemon on the still scene."""
    model = work / "mobilenet_v2_int8.tflite"
    if not model.exists():
        raise click.ClickException(f"no benchmark model in {work}: run scripts/bench --motion first")
    scene = render("still", work, 60.0)
    video = encoded(scene.path, codec, width)
    runs = {label: measure(work, video, scene.fps, model, label == "gated", seconds)
            for label in ("gated", "ungated")}  # fmt: skip
    threads = sorted(set().union(*runs.values()), key=lambda t: -runs["gated"].get(t, 0.0))
    size = f"{width} px wide" if width else "640x480"
    click.echo(f"ms of daemon CPU per second of video, still scene ({codec}, {size}), {seconds:.0f} s "
               f"window; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
               f"({' '.join(machine()['simd'])})")  # fmt: skip
    click.echo(f"{'thread':24s} {'gated':>8s} {'ungated':>8s}")
    for t in threads:
        gated, ungated = runs["gated"].get(t, 0.0), runs["ungated"].get(t, 0.0)
        if gated >= 0.05 or ungated >= 0.05:
            click.echo(f"{t[:24]:24s} {gated:8.2f} {ungated:8.2f}")
    total = {k: sum(v.values()) for k, v in runs.items()}
    click.echo(f"{'all threads':24s} {total['gated']:8.2f} {total['ungated']:8.2f}")
    gated, ungated = total["gated"] * 3.6, total["ungated"] * 3.6
    click.echo(f"CPU-s per hour of video: gated {gated:.0f}, ungated {ungated:.0f} ({ungated / gated:.1f}x)")


if __name__ == "__main__":
    main()
