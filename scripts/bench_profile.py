"""Where the CPU of a several-pipeline daemon goes, and whether Python's GIL is the limit.

    python scripts/bench_profile.py --pipelines 2 [--seconds 8] [--work DIR]

Runs ``edge-agent run`` with N MobileNetV2-int8 camera pipelines at full speed (the scripts/bench models and
video in --work, made by ``scripts/bench --pipelines ...`` first) against a private mosquitto, and over a
steady window reports, per thread (names from py-spy, CPU from /proc/<pid>/task/<tid>/stat and schedstat):
  cpu ms/result      CPU time per result of all camera pipelines
  runq ms/result     time runnable but waiting for a core (the machine's cores were busy)
  GIL share          share of py-spy's samples (100/s) in which this thread held the GIL (py-spy --gil)
and the frames in which the GIL was held most. A GIL share summed over threads near 100% means the GIL is
the limit; a sum well below it with runq high means the cores are; one sender thread near 100% CPU would
mean the single MQTT sender is. Needs py-spy (pip install py-spy) and ptrace permission.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml
from bench_broker import Broker, Recorder
from bench_pipeline import DEVICE, agent_command, write_config

DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-agent-bench"
RATE = 100  # py-spy samples per second


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """tid -> (CPU seconds, seconds runnable but waiting for a CPU)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            wait_ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(tid)] = ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), wait_ns / 1e9)
    return out


def py_spy_exe() -> str | None:
    """py-spy on PATH, or installed beside this Python (a venv's bin/)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def py_spy(pid: int, seconds: float, gil: bool, out: Path) -> list[tuple[int, str, list[str], int]]:
    """(tid, thread name, frames, count) per stack py-spy sampled."""
    cmd = [
        py_spy_exe() or "py-spy",
        "record",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-r",
        str(RATE),
        "--threads",
    ]
    cmd += ["--format", "raw", "-o", str(out), "--nonblocking", "--gil" if gil else "--idle"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if not out.exists():
        raise click.ClickException(f"py-spy failed: {done.stderr.strip()[-300:]}")
    rows = []
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        head, *frames = stack.split(";")
        name, _, tid = head.removeprefix("thread (").partition("): ")
        rows.append((int(name) if name.isdigit() else 0, tid, frames, int(count)))
    return rows


@click.command()
@click.option("--pipelines", "n", default=2, show_default=True, help="Camera pipelines in the daemon.")
@click.option("--seconds", default=8.0, show_default=True, help="Length of each sampled window.")
@click.option("--threads", default=1, show_default=True, help="Interpreter threads per pipeline.")
@click.option(
    "--work", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORK, show_default=True
)
def main(n: int, seconds: float, threads: int, work: Path) -> None:
    """Per-thread CPU and GIL share of a daemon with N camera pipelines at full speed."""
    if py_spy_exe() is None:
        raise click.ClickException("py-spy is not on PATH: pip install py-spy")
    model, video = work / "mobilenet_v2_int8.tflite", next(work.glob("camera-640x480-*.avi"), None)
    if not model.exists() or video is None:
        raise click.ClickException(
            f"no benchmark model/video in {work}: run scripts/bench --pipelines 1 first"
        )
    scratch = work / "profile"
    scratch.mkdir(exist_ok=True)
    broker = Broker(scratch).start()
    cfg = write_config(
        scratch, broker, "profile", {"type": "camera", "url": str(video), "loop": True}, model, threads
    )
    doc = yaml.safe_load(cfg.read_text())
    doc["pipelines"] = [dict(doc["pipelines"][0], name=f"cam{i}") for i in range(n)]
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.Popen(
        [*agent_command(), "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(5.0)  # start-up and warm-up
        rec = Recorder(broker, [f"edge/{DEVICE}/+/result"], scratch / "received.txt").start()
        before, t0 = thread_times(proc.pid), time.time()
        samples = py_spy(proc.pid, seconds, False, scratch / "all.txt")
        after, t1 = thread_times(proc.pid), time.time()
        results = [r for r in rec.stop() if t0 <= r.recv_at <= t1]
        gil = py_spy(proc.pid, seconds, True, scratch / "gil.txt")
    finally:
        proc.terminate()
        proc.wait(30)
        broker.stop()
    count = max(len(results), 1)
    names = {tid: name for tid, name, _, _ in samples}
    held = collections.Counter()
    where = collections.Counter()
    for tid, _, frames, c in gil:
        held[tid] += c
        if not frames:
            continue  # a sample taken between Python frames (native code only)
        ours = [f.split(" (")[0] for f in frames if "edge_agent/" in f]
        where[(ours[-1] if ours else "-") + " > " + frames[-1].split(" (")[0]] += c
    ticks = seconds * RATE
    per_pipe = collections.Counter(r.topic.split("/")[2] for r in results)
    click.echo(f"{n} camera pipeline(s), {len(results) / (t1 - t0):.0f} results/s over {t1 - t0:.1f} s "
               f"({', '.join(f'{k} {v / (t1 - t0):.0f}/s' for k, v in sorted(per_pipe.items()))}); "
               f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    click.echo(f"{'thread':44s} {'cpu ms/res':>10s} {'runq ms/res':>11s} {'GIL share':>9s}")
    total_cpu = total_gil = 0.0
    for tid in sorted(after, key=lambda t: -(after[t][0] - before.get(t, (0, 0))[0])):
        cpu = after[tid][0] - before.get(tid, (0, 0))[0]
        runq = after[tid][1] - before.get(tid, (0, 0))[1]
        share = held[tid] / ticks
        total_cpu, total_gil = total_cpu + cpu, total_gil + share
        if cpu * 1000 / count >= 0.01 or share >= 0.005:
            click.echo(f"{names.get(tid, f'native {tid}')[:44]:44s} {cpu * 1000 / count:10.2f} "
                       f"{runq * 1000 / count:11.2f} {share:9.1%}")  # fmt: skip
    click.echo(f"{'all threads':44s} {total_cpu * 1000 / count:10.2f} {'':11s} {total_gil:9.1%}")
    click.echo("GIL held most in (deepest edge_agent frame > innermost frame):")
    for k, c in where.most_common(10):
        click.echo(f"  {c / ticks:6.1%}  {k}")


if __name__ == "__main__":
    main()
