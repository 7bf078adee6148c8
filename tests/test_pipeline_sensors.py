"""Sensor pipelines end to end: IIO (a sysfs-shaped folder), a CSV file and a command's stdout, each through
windowing, a real int8 regression model (known weights, so the answer is computed on paper), real mosquitto
and a separate subscriber. Raw samples never appear in a payload: each test feeds a canary sample value and
the privacy watch (tests/privacy.py) looks for it in every message on '#'."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np

from tests.daemon_harness import Agents, results, write_config
from tests.fixtures.broker import validate_payload
from tests.fixtures.tflite_models import REGRESSION_BIAS, REGRESSION_KERNEL
from tests.privacy import ImageCanary, NumberCanary, canary_frame

# regression_int8: y = x @ K + b on 6 inputs; a window of 2 samples x 3 channels, flattened sample-major.
WINDOW = {"size": 2, "hop": 2}
TOLERANCE = 0.08  # int8 rounding: ~1/255 per input (x3 summed, x0.5 for temperature) plus one output step


def expected(window: np.ndarray) -> dict[str, float]:
    y = window.reshape(1, 6) @ REGRESSION_KERNEL + REGRESSION_BIAS
    return {"load": float(y[0, 0]), "temperature": float(y[0, 1])}


def check_values(payload: dict, window: np.ndarray) -> None:
    want = expected(window)
    got = payload["values"]
    for name, value in want.items():
        assert abs(got[name] - value) < TOLERANCE, (name, got, want)


SAMPLES = np.array(
    [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.9, 0.8, 0.7], [0.2, 0.2, 0.2], [0.5, 0.1, 0.3], [0.3, 0.9, 0.6]],
    dtype=np.float32,
)
CANARY = 1234.5678  # a sample value no model output, latency or counter comes near
# SAMPLES, then one window of canary samples: its result is published, the samples must not be
ROWS = np.vstack([SAMPLES, np.full((WINDOW["size"], 3), CANARY, np.float32)])


def write_csv(path: Path) -> Path:
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.8g}" for v in row) for row in ROWS) + "\n")
    return path


def run_to_end(tmp_path: Path, broker, privacy, model: Path, source: dict) -> list[tuple[str, bytes, bool]]:
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [{"name": "sensor", "source": source, "window": WINDOW, "model": {"path": str(model)}}],
    )
    watch = privacy(broker, config, canary=NumberCanary(CANARY))
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        assert agent.wait(60) == 0, agent.log()
    n = len(ROWS) // WINDOW["hop"]
    watch.sub.wait_for(lambda m: len(results(m)) >= n and any(p == b"offline" for _, p, _ in m), timeout=10)
    return watch.check()


def test_csv_file_source_to_results(tmp_path: Path, mosquitto, privacy, regression_int8) -> None:
    csv = write_csv(tmp_path / "samples.csv")
    broker = mosquitto()
    source = {"type": "file", "path": str(csv), "fields": ["a", "b", "c"]}
    messages = run_to_end(tmp_path, broker, privacy, regression_int8.path, source)
    got = results(messages, "sensor")
    assert [r["seq"] for r in got] == sorted({r["seq"] for r in got})  # strictly increasing, no duplicates
    assert len(got) == 4  # three windows of SAMPLES, one of the canary
    for r, start in zip(got[:3], range(0, len(SAMPLES), 2), strict=True):
        validate_payload(r, "result")
        check_values(r, SAMPLES[start : start + 2])


def test_command_source_to_results(tmp_path: Path, mosquitto, privacy, regression_int8) -> None:
    lines = "\\n".join(",".join(f"{v:.8g}" for v in row) for row in ROWS)
    argv = [sys.executable, "-c", f"print('{lines}')"]
    broker = mosquitto()
    source = {"type": "command", "argv": argv, "restart": False}
    messages = run_to_end(tmp_path, broker, privacy, regression_int8.path, source)
    got = results(messages, "sensor")
    assert len(got) == 4
    for r, start in zip(got[:3], range(0, len(SAMPLES), 2), strict=True):
        validate_payload(r, "result")
        check_values(r, SAMPLES[start : start + 2])


def make_iio_device(root: Path, raw: list[int], scale: float) -> Path:
    """An IIO accelerometer as the kernel shows it in sysfs: name, in_accel_{x,y,z}_raw, shared scale."""
    dev = root / "iio:device0"
    dev.mkdir(parents=True)
    (dev / "name").write_text("adxl345\n")
    for axis, value in zip("xyz", raw, strict=True):
        (dev / f"in_accel_{axis}_raw").write_text(f"{value}\n")
    (dev / "in_accel_scale").write_text(f"{scale}\n")
    return dev


def test_iio_source_to_results_until_sigterm(tmp_path: Path, mosquitto, privacy, regression_int8) -> None:
    raw, scale = [100, 250, 400], 0.001  # 0.1, 0.25, 0.4 after scaling
    dev = make_iio_device(tmp_path / "iio", raw, scale)
    broker = mosquitto()
    source = {"type": "iio", "device": "adxl345", "channels": ["accel_x", "accel_y", "accel_z"],
              "rate_hz": 50, "sysfs_root": str(tmp_path / "iio")}  # fmt: skip
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [
            {
                "name": "vib",
                "source": source,
                "window": WINDOW,
                "model": {"path": str(regression_int8.path)},
                "publish": {"qos": 1},
            }
        ],
    )
    watch = privacy(broker, config, canary=NumberCanary(1234.568))  # the x axis below, scaled
    sub = watch.sub
    sample = np.array(raw, dtype=np.float32) * scale
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        known = len(results(sub.wait_for(lambda m: len(results(m, "vib")) >= 5, timeout=30), "vib"))
        (dev / "in_accel_x_raw").write_text("1234568\n")  # the canary: the accelerometer now reads 1234.568
        sub.wait_for(lambda m: len(results(m, "vib")) >= known + 5, timeout=30)
        agent.send(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.log()
    messages = sub.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), timeout=10)
    got = results(messages, "vib")
    seqs = [r["seq"] for r in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps, no duplicates within one run
    for r in got:
        validate_payload(r, "result")
    for r in got[:known]:  # windows read before the canary was written
        check_values(r, np.stack([sample, sample]))
    watch.check()


def test_two_pipelines_in_one_daemon(
    tmp_path: Path, mosquitto, privacy, regression_int8, color_int8, canary_video
) -> None:
    """A camera and a sensor pipeline side by side, each with its own thread, topic and seq series."""
    csv = write_csv(tmp_path / "samples.csv")
    broker = mosquitto()
    pipelines = [
        {"name": "cam", "source": {"type": "camera", "url": str(canary_video)},
         "model": {"path": str(color_int8.path)}, "publish": {"topic": "site/door-cam"}},
        {"name": "sensor", "source": {"type": "file", "path": str(csv)}, "window": WINDOW,
         "model": {"path": str(regression_int8.path)}, "publish": {"qos": 0}},
    ]  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, pipelines)
    watch = privacy(broker, config, canary=[NumberCanary(CANARY), ImageCanary([canary_frame()])])
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        assert agent.wait(60) == 0, agent.log()
    messages = watch.sub.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), timeout=10)
    cam = [json.loads(p) for t, p, _ in messages if t == "site/door-cam"]
    sensor = [json.loads(p) for t, p, _ in messages if t == "edge/testdev/sensor/result"]
    assert sorted(r["seq"] for r in cam) == list(range(1, 51))  # canary_video: 50 frames
    assert [r["seq"] for r in sensor] == [1, 2, 3, 4]  # QoS 0 straight through, in order on one connection
    for r in cam + sensor:
        validate_payload(r, "result")
    assert {r["pipeline"] for r in cam} == {"cam"} and {r["label"] for r in cam} <= {"red", "green", "blue"}
    watch.check()
