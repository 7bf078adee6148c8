"""Hours in minutes: one camera daemon under broker outages and reloads, watched for what grows and for any
result lost.

    python scripts/soak.py [--minutes 10] [--outage-every 60] [--outage-s 8] [--reload-every 45]
                           [--same-model] [--json F]

``edge-agent run`` with two camera pipelines: ``cam``, MobileNetV2-int8 on the benchmark's 640x480 MJPG video
looped at 15 fps, and ``door``, the same model behind the config template's motion gate on the motion
benchmark's event scene (figures crossing at known times) looped at 10 fps. The broker is a mosquitto with
persistence, stopped every ``--outage-every`` s for ``--outage-s`` s; the subscriber keeps a persistent
session, so whatever the broker acknowledged reaches it. Every ``--reload-every`` s a SIGHUP reloads both
models (the config points at the other of two copies of the model file: a reload keeps a model whose file and
settings are unchanged), and every second one also changes ``door``'s fps, which restarts that pipeline (its
seq then goes on in a new block: gaps there are by design, one per restart).

Every 5 s the daemon's RSS, threads, open files and CPU are sampled from /proc. The report: results and seq
gaps per pipeline (``cam`` must have none: duplicates are QoS 1's right), RSS after the first minute and at
the end with its slope over the second half (MB per hour), threads and open files at their lowest and highest
after the first minute. Exits 1 when ``cam`` lost a result or the daemon stopped early. Needs the benchmark's
model and videos: ``scripts/bench --pipelines 1`` and ``scripts/bench --motion`` make them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import click
import numpy as np
import yaml
from bench_broker import REPO  # noqa: F401 - puts the repository on sys.path for tests.fixtures
from bench_pipeline import agent_command
from bench_profile import DEFAULT_WORK

from tests.fixtures.broker import Mosquitto, Subscriber

DEVICE = "soak"
SAMPLE_S = 5.0
GATE = {"min_area": 0.002, "max_idle_s": 60, "cooldown_s": 0.5, "idle_fps": 5}  # the config template's


def write_config(work: Path, broker: Mosquitto, video: Path, scene: Path, model: Path, door_fps: int) -> Path:
    def pipeline(name: str, url: Path, fps: int, **more: object) -> dict:
        return {
            "name": name,
            "source": {"type": "camera", "url": str(url), "fps": fps, "loop": True},
            "model": {"path": str(model), "num_threads": 1},
            "publish": {"qos": 1, "policy": "every"},
            **more,
        }

    path = work / "config.yaml"
    path.write_text(yaml.safe_dump({
        "device_id": DEVICE,
        "state_dir": str(work / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": 5.0,
                 "reconnect_min_s": 0.5, "reconnect_max_s": 2.0},
        "pipelines": [pipeline("cam", video, 15), pipeline("door", scene, door_fps, motion=GATE)],
    }, sort_keys=False))  # fmt: skip
    return path


def sample(pid: int) -> dict[str, float] | None:
    """RSS (MB), threads, open files and CPU seconds of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(values["VmRSS"].split()[0]) / 1024,
        "threads": int(values["Threads"]),
        "fds": fds,
        "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
    }


def seq_report(seqs: list[int]) -> dict[str, int]:
    """Results received, distinct seqs, duplicates, jumps over missing numbers and how many are missing
    (between the first and the last)."""
    distinct = sorted(set(seqs))
    jumps = [b - a - 1 for a, b in itertools.pairwise(distinct) if b - a > 1]
    first, last = (distinct[0], distinct[-1]) if distinct else (0, 0)
    duplicates = len(seqs) - len(distinct)
    return {"received": len(seqs), "distinct": len(distinct), "duplicates": duplicates, "first": first,
            "last": last, "gaps": len(jumps), "missing": sum(jumps)}  # fmt: skip


def slope_mb_per_hour(samples: list[tuple[float, dict[str, float]]]) -> float:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1]["rss_mb"] for s in samples])
    return float(np.polyfit(t, rss, 1)[0] * 3600) if len(samples) > 2 else 0.0


@click.command()
@click.option("--minutes", default=10.0, show_default=True, help="How long the daemon runs.")
@click.option("--outage-every", default=60.0, show_default=True, help="Seconds between broker outages.")
@click.option("--outage-s", default=8.0, show_default=True, help="How long each outage lasts.")
@click.option("--reload-every", default=45.0, show_default=True, help="Seconds between SIGHUPs.")
@click.option(
    "--same-model", is_flag=True, help="SIGHUPs keep the model file (the daemon keeps the model: no swap)."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@click.option(
    "--work", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORK, show_default=True
)
def main(
    minutes: float,
    outage_every: float,
    outage_s: float,
    reload_every: float,
    same_model: bool,
    json_out: Path | None,
    work: Path,
) -> None:
    """Run a camera daemon for MINUTES under outages and reloads; report losses and growth."""
    model, video = work / "mobilenet_v2_int8.tflite", next(work.glob("camera-640x480-*.avi"), None)
    scene = next(work.glob("motion-events-*.avi"), None)
    if not model.exists() or video is None or scene is None:
        raise click.ClickException(
            f"no benchmark model or videos in {work}: "
            "run scripts/bench --pipelines 1 and scripts/bench --motion"
        )
    scratch = work / "soak"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    broker = Mosquitto(scratch / "broker", persistent=True).start()
    sub = Subscriber(broker, f"edge/{DEVICE}/+/result", client_id="soak-subscriber", clean_session=False)
    copies = [scratch / side / model.name for side in ("a", "b")]  # a reload swaps to the other one
    for copy in copies:
        copy.parent.mkdir()
        shutil.copy(model, copy)
        shutil.copy(model.with_suffix(".json"), copy.with_suffix(".json"))
    door_fps = 10
    cfg = write_config(scratch, broker, video, scene, copies[0], door_fps)
    log = (scratch / "edge-agent.log").open("w")
    proc = subprocess.Popen([*agent_command(), "run", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    samples: list[tuple[float, dict[str, float]]] = []
    events: list[tuple[float, str]] = []
    t0 = time.monotonic()
    end = t0 + minutes * 60
    next_outage, next_reload, reloads = t0 + outage_every, t0 + reload_every, 0
    try:
        while (now := time.monotonic()) < end and proc.poll() is None:
            if now >= next_outage:
                broker.stop(kill=False)  # mosquitto saves its sessions on SIGTERM
                events.append((now - t0, "broker down"))
                time.sleep(outage_s)
                broker.start()
                events.append((time.monotonic() - t0, "broker up"))
                next_outage = time.monotonic() + outage_every
            if now >= next_reload:
                reloads += 1
                if reloads % 2 == 0:  # every second reload restarts door (a source change)
                    door_fps = 19 - door_fps  # 10 <-> 9
                model_file = copies[0 if same_model else reloads % 2]
                write_config(scratch, broker, video, scene, model_file, door_fps)
                proc.send_signal(signal.SIGHUP)
                what = f"reload {reloads}" + (" (door restarts)" if reloads % 2 == 0 else "")
                events.append((now - t0, what))
                next_reload = now + reload_every
            s = sample(proc.pid)
            if s is not None:
                samples.append((time.monotonic() - t0, s))
            time.sleep(SAMPLE_S)
    finally:
        crashed = proc.poll()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(2.0)  # the last results in flight to the subscriber
        messages = sub.snapshot()
        sub.close()
        broker.stop(kill=False)
    seqs: dict[str, list[int]] = {"cam": [], "door": []}
    for topic, payload, _ in messages:
        seqs.setdefault(topic.split("/")[2], []).append(json.loads(payload)["seq"])
    warm_up = min(60.0, minutes * 60 / 3)  # a short run: its first third
    warm = [s for s in samples if s[0] >= warm_up] or samples
    second_half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
    report = {
        "minutes": minutes,
        "outages": sum(1 for _, e in events if e == "broker down"),
        "reloads": reloads,
        "door_restarts": reloads // 2,
        "daemon_exit": proc.returncode,
        "crashed_before_end": crashed,
        "pipelines": {name: seq_report(v) for name, v in seqs.items()},
        "rss_mb": {"after_warm_up": round(warm[0][1]["rss_mb"], 1), "end": round(samples[-1][1]["rss_mb"], 1),
                   "max": round(max(s["rss_mb"] for _, s in samples), 1),
                   "slope_second_half_mb_per_hour": round(slope_mb_per_hour(second_half), 2)},
        "threads": [min(s["threads"] for _, s in warm), max(s["threads"] for _, s in warm)],
        "open_files": [min(s["fds"] for _, s in warm), max(s["fds"] for _, s in warm)],
        "cpu_percent": round(100 * (samples[-1][1]["cpu_s"] - warm[0][1]["cpu_s"])
                             / max(1e-9, samples[-1][0] - warm[0][0]), 1),
    }  # fmt: skip
    click.echo(f"soak: {minutes:g} min, {report['outages']} broker outages of {outage_s:g} s, "
               f"{reloads} reloads ({report['door_restarts']} restarting door); "
               f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    head = ("pipeline", "received", "distinct", "dupl.", "seq first..last", "gaps", "missing")
    click.echo("{:8s} {:>9s} {:>9s} {:>6s} {:>20s} {:>5s} {:>8s}".format(*head))
    for name, r in report["pipelines"].items():
        click.echo(f"{name:8s} {r['received']:9d} {r['distinct']:9d} {r['duplicates']:6d} "
                   f"{r['first']:>9d}..{r['last']:<10d} {r['gaps']:5d} {r['missing']:8d}")  # fmt: skip
    rss = report["rss_mb"]
    click.echo(f"RSS MB: {rss['after_warm_up']} after warm-up, {rss['end']} at the end, {rss['max']} max; "
               f"second half {rss['slope_second_half_mb_per_hour']:+.2f} MB/hour")  # fmt: skip
    click.echo(f"threads {report['threads'][0]}-{report['threads'][1]}, open files "
               f"{report['open_files'][0]}-{report['open_files'][1]}, "
               f"CPU {report['cpu_percent']}% of a core; daemon exit {proc.returncode}")  # fmt: skip
    if json_out:
        json_out.write_text(json.dumps({**report, "samples": samples, "events": events}, indent=1))
    if report["pipelines"]["cam"]["missing"] or crashed is not None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
