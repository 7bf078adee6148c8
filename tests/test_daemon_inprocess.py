"""A ``Daemon`` built and run in the test's own process, against a real mosquitto: the pipelines get their
steps from the config, models come through the ``ModelLoader``, and a reload swaps between two frames or,
when the new model does not fit, keeps the old one. Fast next to the ``edge-agent run`` subprocess tests
(no interpreter start-up, no TensorFlow beyond the session's fixtures)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_agent.config import parse_config
from edge_agent.daemon import Daemon
from tests.daemon_harness import results, stats
from tests.fixtures.broker import validate_payload
from tests.waiting import wait_until

SAMPLES = np.arange(36, dtype=np.float32).reshape(12, 3) / 36.0  # 12 samples x 3 channels


def csv_file(path: Path, rows: np.ndarray) -> Path:
    path.write_text("a,b,c\n" + "".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows))
    return path


def config(tmp_path: Path, broker: Any, model: Path, source: dict[str, Any], **pipeline: Any) -> dict:
    return {
        "device_id": "inproc",
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "state_dir": str(tmp_path / "state"),
        "pipelines": [
            {"name": "s", "source": source, "window": {"size": 2, "hop": 2}, "model": {"path": str(model)}}
            | pipeline
        ],
    }


def test_daemon_in_process_runs_the_configured_steps(tmp_path: Path, mosquitto, subscriber, regression_int8):
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    source = {"type": "file", "path": str(csv_file(tmp_path / "s.csv", SAMPLES)), "fields": ["a", "b", "c"]}
    cfg = parse_config(
        config(tmp_path, broker, regression_int8.path, source, steps=[{"type": "every_nth", "n": 3}])
    )
    daemon = Daemon(cfg)
    assert daemon.run() == 0  # the file ends: every pipeline finished
    messages = sub.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), timeout=10)
    got = results(messages, "s")
    assert [r["frame"] for r in got] == [0, 3]  # 6 windows, every third kept
    for r in got:
        validate_payload(r, "result")
    last = stats(messages)[-1]["pipelines"]["s"]
    assert last["steps"] == {"every_nth": {"skipped": 4, "failed": 0}}
    assert (last["frames"], last["source"]["samples"]) == (2, 12)


def test_daemon_reload_swaps_through_the_loader_or_keeps_the_old_model(
    tmp_path: Path, mosquitto, subscriber, regression_int8, autoencoder_int8, color_int8
):
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    data = tmp_path / "s.csv"
    csv_file(data, SAMPLES[:4])
    source = {"type": "file", "path": str(data), "fields": ["a", "b", "c"], "follow": True}
    path = tmp_path / "config.yaml"

    def write(model: Path) -> None:
        path.write_text(yaml.safe_dump(config(tmp_path, broker, model, source)))

    write(regression_int8.path)
    daemon = Daemon(parse_config(yaml.safe_load(path.read_text())), config_path=path)
    serving = threading.Thread(target=daemon.run, daemon=True)
    serving.start()
    try:
        sub.wait_for(lambda m: len(results(m, "s")) >= 2, timeout=20)
        pipe = daemon.pipelines[0]
        first = pipe.stages

        for wrong, why in [
            (color_int8.path, "its input is an image"),
            (autoencoder_int8.path, "takes 8 values"),
        ]:
            write(wrong)
            daemon.reload()
            assert pipe.stages is first and why in pipe.last_error, pipe.last_error

        copy = tmp_path / "copy"
        copy.mkdir()
        for f in (regression_int8.path, regression_int8.manifest_path):
            shutil.copy(f, copy / f.name)
        write(copy / regression_int8.path.name)
        daemon.reload()
        with data.open("a") as f:
            f.write("".join(",".join(f"{v:g}" for v in row) + "\n" for row in SAMPLES[4:8]))
        assert wait_until(lambda: pipe.stages is not first, timeout=10)
        assert str(pipe.model_info.path).startswith(str(copy))
        messages = sub.wait_for(lambda m: len(results(m, "s")) >= 4, timeout=20)
    finally:
        daemon.request_stop()
        serving.join(30)
    got = results(messages, "s")
    assert [r["frame"] for r in got] == [0, 1, 2, 3]
    assert [r["seq"] for r in got] == list(range(got[0]["seq"], got[0]["seq"] + 4))
