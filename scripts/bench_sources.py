"""What the sources cost: capture overhead next to a bare OpenCV loop, the age of the frame a model gets from
a live stream (newest-frame semantics), and sensor throughput.

  camera file      CameraSource replaying an MJPG file (every frame, in order) vs a bare cv2.VideoCapture
                   loop on the same file: frames/s and the ratio
  udp age          a 25 fps ffmpeg UDP stream: age of each frame when read() returns it (ms), for a fast
                   consumer and for a slow one (100 ms per frame: the age must stay small, skipped grows)
  file csv         FileSource on a 3-channel CSV, windows of 128 hop 64: samples/s
  iio              IioSource on a sysfs-shaped folder asked for 1000 Hz: achieved rate

Each number is the median over --runs. Output: a table, and --json FILE.
  /work/venv/bin/python scripts/bench_sources.py [--runs 3] [--json out.json]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.sources.base import Source  # noqa: E402
from edge_agent.sources.camera import CameraSourceConfig  # noqa: E402
from edge_agent.sources.factory import create_source  # noqa: E402
from edge_agent.sources.file_tail import FileSourceConfig  # noqa: E402
from edge_agent.sources.iio import IioSourceConfig  # noqa: E402
from edge_agent.sources.window import WindowConfig  # noqa: E402
from tests.fixtures.streams import FfmpegStream  # noqa: E402


def render_video(path: Path, frames: int, width: int, height: int, fps: float = 25.0) -> Path:
    """Moving noise-free gradients: cheap to make, realistic enough to decode."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    for i in range(frames):
        image = np.stack([(x + i * 3) % 256 + 0 * y, (y + i * 5) % 256 + 0 * x, ((x + y) / 2 + i) % 256], -1)
        writer.write(image.astype(np.uint8))
    writer.release()
    return path


def started(cfg: object, window: WindowConfig | None = None) -> tuple[Source, threading.Event]:
    stop = threading.Event()
    source = create_source(cfg, window)  # type: ignore[arg-type]
    source.start(stop)
    return source, stop


def finish(source: Source, stop: threading.Event) -> None:
    stop.set()
    source.close()


def drain(source: Source, timeout: float = 60.0) -> int:
    count, deadline = 0, time.monotonic() + timeout
    while not source.finished and time.monotonic() < deadline:
        if source.read(timeout=1.0) is not None:
            count += 1
    return count


def bench_camera_file(video: Path) -> dict:
    import cv2

    t0 = time.perf_counter()
    cap, raw = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG), 0
    while cap.read()[0]:
        raw += 1
    cap.release()
    raw_fps = raw / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    source, stop = started(CameraSourceConfig(url=str(video)))
    got = drain(source)
    source_fps = got / (time.perf_counter() - t0)
    finish(source, stop)
    return {"frames": got, "bare_fps": raw_fps, "source_fps": source_fps, "ratio": source_fps / raw_fps}


def bench_udp_age(url: str, frames: int, work_s: float) -> dict:
    source, stop = started(CameraSourceConfig(url=url, read_timeout_s=2.0))
    ages = []
    try:
        first = source.read(timeout=20.0)
        if first is None:
            return {"error": f"no frame from {url}"}
        skipped0 = source.stats["skipped"]
        for _ in range(frames):
            if work_s:
                time.sleep(work_s)  # the model's turn
            frame = source.read(timeout=5.0)
            if frame is not None:
                ages.append((time.monotonic() - frame.captured_mono) * 1000)
        skipped = source.stats["skipped"] - skipped0
    finally:
        finish(source, stop)
    ages.sort()
    return {
        "frames": len(ages),
        "age_ms_p50": statistics.median(ages),
        "age_ms_p99": ages[min(len(ages) - 1, int(len(ages) * 0.99))],
        "skipped": skipped,
    }


def bench_file_csv(path: Path, samples: int) -> dict:
    t0 = time.perf_counter()
    source, stop = started(FileSourceConfig(path=str(path)), WindowConfig(size=128, hop=64))
    windows = drain(source)
    elapsed = time.perf_counter() - t0
    finish(source, stop)
    return {"samples": samples, "windows": windows, "samples_per_s": samples / elapsed}


def bench_iio(root: Path, rate_hz: float, seconds: float) -> dict:
    cfg = IioSourceConfig(device="bench", channels=["accel_x", "accel_y", "accel_z"], rate_hz=rate_hz,
                          sysfs_root=str(root))  # fmt: skip
    source, stop = started(cfg)
    source.read(timeout=5.0)
    before, t0 = source.stats["samples"], time.monotonic()
    time.sleep(seconds)
    got = source.stats["samples"] - before
    elapsed = time.monotonic() - t0
    finish(source, stop)
    return {"asked_hz": rate_hz, "achieved_hz": got / elapsed}


def median_of(runs: int, fn: Callable[[], dict]) -> dict:
    results = [fn() for _ in range(runs)]
    errors = [r for r in results if "error" in r]
    if errors:
        return errors[0]
    return {k: statistics.median(r[k] for r in results) for k in results[0]} | {"runs": runs}


@click.command()
@click.option("--runs", default=3, show_default=True, help="Repetitions; medians are reported.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here."
)
def main(runs: int, json_path: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        work = Path(tmp)
        video = render_video(work / "vga.avi", frames=300, width=640, height=480)
        stream_video = render_video(work / "qvga.avi", frames=100, width=320, height=240)
        csv_path, samples = work / "walk.csv", 100_000
        csv_path.write_text("ax,ay,az\n" + "".join(f"{i % 7},{i % 11},{i % 13}\n" for i in range(samples)))
        device = work / "iio" / "iio:device0"
        device.mkdir(parents=True)
        (device / "name").write_text("bench\n")
        for axis, raw in zip("xyz", (12, -40, 980), strict=True):
            (device / f"in_accel_{axis}_raw").write_text(f"{raw}\n")
        (device / "in_accel_scale").write_text("0.0383\n")

        results: dict[str, dict] = {}
        results["camera file 640x480"] = median_of(runs, lambda: bench_camera_file(video))
        stream = FfmpegStream(stream_video, "udp").start()
        try:
            results["udp age, fast consumer"] = median_of(runs, lambda: bench_udp_age(stream.url, 75, 0.0))
            results["udp age, 100 ms consumer"] = median_of(runs, lambda: bench_udp_age(stream.url, 20, 0.1))
        finally:
            stream.stop()
        results["file csv 3 ch, window 128/64"] = median_of(runs, lambda: bench_file_csv(csv_path, samples))
        results["iio 3 ch @1000 Hz"] = median_of(runs, lambda: bench_iio(work / "iio", 1000.0, 2.0))

    click.echo(f"{'case':34} result")
    for case, r in results.items():
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        click.echo(f"{case:34} {shown}")
    if json_path is not None:
        json_path.write_text(json.dumps({"sources": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
