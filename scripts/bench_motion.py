"""scripts/bench --motion: what the motion gate saves and what it costs, on rendered videos
(bench_motion_scenes.py), with ``edge-agent run`` playing each at its frame rate (a live camera) against a
private mosquitto, QoS 1 through the outbox, MobileNetV2-int8.

- CPU: the daemon's CPU seconds (all threads, /proc/<pid>/stat) per second of video, steady state: from its
  first result to 1 s before the video ends (start-up and shutdown left out), times 3600. Ungated, gated
  (the template's gate: idle_fps 5) and gated with the gate looking at every frame (idle_fps null) runs of
  the still scene alternate, so other load on the machine hits all alike.
- events: an event is found when a result for one of its frames arrives; latency is video time from its
  first frame to the first frame with a result. Model runs are the results (policy every), against the
  frames that show the figure.
- light: model runs on frames after the change (the max_idle_s runs are left out: none in these videos).
- gate cost: median ``MotionGate`` time on the events video's 640x480 frames, next to the median invoke
  of the same model (ai-edge-litert, same threads), measured alternately in one process.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import yaml
from bench_broker import Broker, Recorder
from bench_motion_scenes import Scene, render
from bench_pipeline import DEVICE, agent_command, cpu_seconds

MOTION = {"min_area": 0.002, "max_idle_s": 60, "cooldown_s": 0.5, "idle_fps": 5}  # as in the config template
# the still scene is also run with the gate looking at every frame, to show what idle_fps saves
EVERY_FRAME = {**MOTION, "idle_fps": None}
VARIANTS = {"ungated": None, "gated": MOTION, "gated_every_frame": EVERY_FRAME}
SECONDS = {"still": 60.0, "events": 90.0, "light": 30.0}


def run_scene(work: Path, broker: Broker, scene: Scene, model: str, threads: int, variant: str) -> dict:
    name = f"{scene.name}-{variant.replace('_', '-')}"
    motion = VARIANTS[variant]
    state = work / f"state-{name}"
    if state.exists():
        for p in sorted(state.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    pipeline: dict = {
        "name": name,
        "source": {"type": "camera", "url": str(scene.path), "fps": scene.fps},
        "model": {"path": model, "num_threads": threads},
        "publish": {"qos": 1, "policy": "every"},
    }
    if motion is not None:
        pipeline["motion"] = motion
    config = work / f"config-{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": DEVICE,
                "mqtt": {"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 5.0},
                "state_dir": str(state),
                "pipelines": [pipeline],
            },
            sort_keys=False,
        )
    )
    record = work / f"received-{name}.txt"
    recorder = Recorder(broker, [f"edge/{DEVICE}/{name}/result"], record).start()
    samples: list[tuple[float, float]] = []  # (monotonic, daemon CPU s)
    first_at = None
    with (work / f"agent-{name}.log").open("wb") as log:
        proc = subprocess.Popen([*agent_command(), "run", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + scene.frames / scene.fps + 120
        try:
            while proc.poll() is None:
                cpu = cpu_seconds(proc.pid)
                now = time.monotonic()
                if cpu is not None:
                    samples.append((now, cpu))
                if first_at is None and record.exists() and b"/result " in record.read_bytes():
                    first_at = now
                if now > deadline:
                    proc.send_signal(signal.SIGTERM)
                    deadline = now + 30
                time.sleep(0.1)
        except BaseException:
            proc.kill()
            recorder.stop()
            raise
    records = recorder.stop()
    results = [r.payload for r in records if r.topic.endswith("/result")]
    out: dict = {"exit_code": proc.returncode, "results": len(results)}
    if first_at is None:
        out["error"] = f"no result; see {work / f'agent-{name}.log'}"
        return out
    end = first_at + scene.frames / scene.fps - 1.0
    a = next(s for s in samples if s[0] >= first_at)
    b = max((s for s in samples if s[0] <= end), default=samples[-1])
    out["cpu_s_per_hour"] = (b[1] - a[1]) / (b[0] - a[0]) * 3600 if b[0] > a[0] else None
    out["frames"] = sorted((int(r["frame"]), bool(r.get("motion", True))) for r in results)
    return out


def event_metrics(scene: Scene, frames: list[tuple[int, bool]]) -> dict:
    ran = [f for f, _ in frames]
    latencies = []
    for start, end in scene.events:
        hit = next((f for f in ran if start <= f < end), None)
        latencies.append(None if hit is None else (hit - start) / scene.fps)
    long_ones = [
        lat for (s, e), lat in zip(scene.events, latencies, strict=True) if (e - s) / scene.fps > 0.5
    ]
    found = [lat for lat in long_ones if lat is not None and lat <= 0.3]
    return {
        "events": len(scene.events),
        "recall_within_0_3_s": len(found) / len(long_ones) if long_ones else None,
        "latency_s_max": max((lat for lat in latencies if lat is not None), default=None),
        "model_frames": len(ran),
        "motion_frames": scene.motion_frames,
        "model_per_motion_frame": len(ran) / scene.motion_frames,
    }


def light_metrics(scene: Scene, frames: list[tuple[int, bool]]) -> dict:
    after = [f for f, motion in frames if scene.light_at is not None and f >= scene.light_at and motion]
    return {
        "model_runs_after_change": len(after),
        "overrun_s": (max(after) - scene.light_at + 1) / scene.fps if after else 0.0,
        "cooldown_s": MOTION["cooldown_s"],
    }


def gate_cost(scene: Scene, model: str, threads: int, blocks: int = 10) -> dict:
    """Median gate time per frame and median invoke time, alternating blocks of 20 of each."""
    import cv2
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edge_agent.processing.steps.motion import MotionConfig, MotionGate

    cap = cv2.VideoCapture(str(scene.path))
    images = []
    while len(images) < 200:
        ok, img = cap.read()
        if not ok:
            break
        images.append(img)
    cap.release()
    gate = MotionGate(MotionConfig(**MOTION))
    interp = Interpreter(model_path=model, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    info = np.iinfo(inp["dtype"]) if np.issubdtype(inp["dtype"], np.integer) else None
    rng = np.random.default_rng(0)
    if info is not None:
        x = rng.integers(info.min, info.max, inp["shape"], endpoint=True).astype(inp["dtype"])
    else:
        x = rng.random(inp["shape"], np.float32)
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    gate_ms, invoke_ms = [], []
    k = 0
    for _ in range(blocks):
        for _ in range(20):
            t0 = time.perf_counter()
            gate.apply(images[k % len(images)])
            gate_ms.append((time.perf_counter() - t0) * 1000)
            k += 1
        for _ in range(20):
            t0 = time.perf_counter()
            interp.invoke()
            invoke_ms.append((time.perf_counter() - t0) * 1000)
    g, i = statistics.median(gate_ms), statistics.median(invoke_ms)
    return {"gate_ms": g, "invoke_ms": i, "fraction_of_invoke": g / i}


def run_motion(work: Path, broker: Broker, model: str, threads: int, runs: int, say) -> dict:
    scenes = {k: render(k, work, s) for k, s in SECONDS.items()}
    cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    events, light, errors = [], [], []
    for i in range(runs):
        for variant in VARIANTS:
            say(f"motion: run {i + 1}/{runs}: still scene, {variant.replace('_', ' ')}")
            got = run_scene(work, broker, scenes["still"], model, threads, variant)
            if got.get("cpu_s_per_hour") is not None:
                cpu[variant].append(got["cpu_s_per_hour"])
            errors += [got["error"]] if "error" in got else []
        say(f"motion: run {i + 1}/{runs}: events scene, gated")
        got = run_scene(work, broker, scenes["events"], model, threads, "gated")
        if "frames" in got:
            events.append(event_metrics(scenes["events"], got["frames"]))
        say(f"motion: run {i + 1}/{runs}: light scene, gated")
        got = run_scene(work, broker, scenes["light"], model, threads, "gated")
        if "frames" in got:
            light.append(light_metrics(scenes["light"], got["frames"]))
    say("motion: gate cost next to one invoke")
    cost = gate_cost(scenes["events"], model, threads)
    med = {k: statistics.median(v) if v else None for k, v in cpu.items()}
    return {
        "motion_config": MOTION,
        "scenes": {
            k: {
                "seconds": SECONDS[k],
                "fps": s.fps,
                "frames": s.frames,
                "events": s.events,
                "light_at": s.light_at,
            }
            for k, s in scenes.items()
        },
        "cpu_s_per_hour": {
            "runs": cpu,
            "median": med,
            "ratio": _ratio(med["ungated"], med["gated"]),
            "ratio_every_frame": _ratio(med["ungated"], med["gated_every_frame"]),
        },
        "events": events,
        "light": light,
        "gate_cost": cost,
        "errors": errors,
        "loadavg_end": os.getloadavg(),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def table(report: dict) -> str:
    c = report["cpu_s_per_hour"]
    ev, li, cost = report["events"], report["light"], report["gate_cost"]

    def med(rows: list[dict], key: str) -> str:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return f"{statistics.median(vals):.2f}" if vals else "-"

    def worst(rows: list[dict], key: str, fn=max) -> str:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return f"{fn(vals):.2f}" if vals else "-"

    m = c["median"]
    rows = [
        (
            "still scene: daemon CPU-s per hour of video, ungated",
            f"{m['ungated']:.0f}" if m["ungated"] else "-",
            "-",
        ),
        (
            "still scene: daemon CPU-s per hour of video, gated",
            f"{m['gated']:.0f}" if m["gated"] else "-",
            f"ratio {c['ratio']:.1f}x (target >= 10x)" if c["ratio"] else "-",
        ),
        (
            "still scene: the same, the gate looking at every frame (idle_fps null)",
            f"{m['gated_every_frame']:.0f}" if m.get("gated_every_frame") else "-",
            f"ratio {c['ratio_every_frame']:.1f}x" if c.get("ratio_every_frame") else "-",
        ),
        (
            "events: recall, events > 0.5 s with a result within 0.3 s",
            worst(ev, "recall_within_0_3_s", min),
            "target 1.00 (worst run)",
        ),
        ("events: latency to the first result, s (video time)", worst(ev, "latency_s_max"), "worst event"),
        ("events: model-run frames / frames with motion", med(ev, "model_per_motion_frame"), "target <= 2"),
        ("light: model runs after the change", med(li, "model_runs_after_change"), ""),
        (
            "light: model ran until, s after the change",
            worst(li, "overrun_s"),
            f"target <= cooldown_s {MOTION['cooldown_s']}",
        ),
        ("gate per 640x480 frame, ms", f"{cost['gate_ms']:.2f}", ""),
        ("one MobileNetV2-int8 invoke, ms", f"{cost['invoke_ms']:.2f}", ""),
        ("gate / invoke", f"{cost['fraction_of_invoke']:.3f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"| {a:<{width}} | {b:>8} | {n} |" for a, b, n in rows)
