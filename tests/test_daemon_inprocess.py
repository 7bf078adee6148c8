"""A ``Daemon`` built and run in the test's own process, against a real mosquitto: the pipelines get their
steps from the config, models come through the ``ModelLoader``, and a reload swaps between two frames or,
when the new model does not fit, keeps the old one. Fast next to the ``edge-agent run`` subprocess tests
(no interpreter start-up, no TensorFlow beyond the session's fixtures)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from edge_agent.config import parse_config
from edge_agent.daemon import Daemon
from edge_agent.errors import SourceError
from edge_agent.runtime.model import LoadedModel
from edge_agent.sdnotify import Notifier
from edge_agent.sources.samples import SampleSource
from tests.daemon_harness import NotifySocket, results, stats
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


def test_a_start_that_fails_half_way_closes_what_it_made(
    tmp_path: Path, mosquitto, regression_int8, monkeypatch
):
    """The second pipeline's file is missing: the start fails after both models loaded and both sources were
    made; the error names the file, and the sources (the failed one too), then both models, are closed."""
    closed: list[str] = []
    for cls, what in ((SampleSource, "source"), (LoadedModel, "model")):
        monkeypatch.setattr(cls, "close", lambda obj, c=cls.close, w=what: (closed.append(w), c(obj))[1])
    broker = mosquitto()
    good = {"type": "file", "path": str(csv_file(tmp_path / "s.csv", SAMPLES)), "fields": ["a", "b", "c"]}
    doc = config(tmp_path, broker, regression_int8.path, good)
    missing = good | {"path": str(tmp_path / "no.csv")}
    doc["pipelines"].append(doc["pipelines"][0] | {"name": "t", "source": missing})
    daemon = Daemon(parse_config(doc))
    with pytest.raises(SourceError, match=r"no\.csv does not exist"):
        daemon.run()
    assert closed == ["source", "source", "model", "model"]
    assert daemon.pipelines == []  # never made: nothing half-started is left for the stats or /metrics


def test_watchdog_off_under_a_unit_that_expects_pings_is_said(
    tmp_path: Path, regression_int8, caplog: pytest.LogCaptureFixture
) -> None:
    """systemd kills a daemon that does not ping (WatchdogSec=60 in the shipped unit): with
    watchdog.enabled false that would be a restart every minute with nothing in the log but systemd's."""
    source = {"type": "file", "path": str(csv_file(tmp_path / "s.csv", SAMPLES)), "fields": ["a", "b", "c"]}
    doc = config(
        tmp_path, SimpleNamespace(host="127.0.0.1", port=1), regression_int8.path, source
    )  # never run
    for enabled, usec in ((False, "60000000"), (True, "60000000"), (False, None)):
        caplog.clear()
        env = {"WATCHDOG_USEC": usec} if usec else {}
        Daemon(parse_config({**doc, "watchdog": {"enabled": enabled}}), notifier=Notifier(env))
        said = "systemd expects a ping every 60 s (WatchdogSec=)" in caplog.text
        assert said == (not enabled and usec is not None), (enabled, usec, caplog.text)


@contextmanager
def serving(path: Path) -> Iterator[Daemon]:
    """A daemon run in a thread from the config file ``path``; a reload reads it again."""
    daemon = Daemon(parse_config(yaml.safe_load(path.read_text())), config_path=path)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)


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
    with serving(path) as daemon:
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
    got = results(messages, "s")
    assert [r["frame"] for r in got] == [0, 1, 2, 3]
    assert [r["seq"] for r in got] == list(range(got[0]["seq"], got[0]["seq"] + 4))


def test_a_reload_keeps_an_unchanged_model_and_loads_one_whose_manifest_file_or_settings_changed(
    tmp_path: Path, mosquitto, subscriber, regression_int8, autoencoder_int8, caplog
):
    """A SIGHUP that changed nothing about a model (a publish setting, say) builds no second interpreter
    beside the running one; an edited manifest, a replaced file or new model settings load again, compared
    with the model the pipeline runs next (a swap not yet made), not the one in hand."""
    caplog.set_level("INFO", logger="edge_agent.daemon")
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    model = tmp_path / "models" / regression_int8.path.name
    manifest = model.with_suffix(".json")
    model.parent.mkdir()
    shutil.copy(regression_int8.path, model)
    shutil.copy(regression_int8.manifest_path, manifest)
    data = csv_file(tmp_path / "s.csv", SAMPLES[:4])
    source = {"type": "file", "path": str(data), "fields": ["a", "b", "c"], "follow": True}
    path = tmp_path / "config.yaml"

    def write(publish: dict[str, Any] | None = None, **model_settings: Any) -> None:
        doc = config(tmp_path, broker, model, source, **({"publish": publish} if publish else {}))
        doc["pipelines"][0]["model"] |= model_settings
        path.write_text(yaml.safe_dump(doc))

    write()
    with serving(path) as daemon:
        sub.wait_for(lambda m: len(results(m, "s")) >= 2, timeout=20)
        pipe = daemon.pipelines[0]
        first = pipe.stages

        write(publish={"qos": 1, "max_rate_hz": 1000})  # a publish setting: the model stays as it is
        daemon.reload()
        assert pipe.next_stages is first and "reload: pipeline s keeps" in caplog.text

        doc = json.loads(manifest.read_text())
        doc["postprocess"]["units"] = ["kg", "K"]
        manifest.write_text(json.dumps(doc))
        daemon.reload()
        edited = pipe.next_stages
        assert edited is not first and pipe.stages is first  # loaded; swapped at the next window
        daemon.reload()
        assert pipe.next_stages is edited  # unchanged against the model waiting to run

        write(num_threads=1)
        daemon.reload()
        threads1 = pipe.next_stages
        assert threads1 is not edited

        shutil.copy(autoencoder_int8.path, model)  # replaced in place: loaded again, refused by its manifest
        daemon.reload()
        assert pipe.next_stages is threads1 and "does not match its manifest" in (pipe.last_error or "")
        shutil.copy(regression_int8.path, model)  # back: what threads1 was loaded from
        caplog.clear()
        daemon.reload()
        assert pipe.next_stages is threads1 and "reload: pipeline s keeps" in caplog.text
        assert pipe.last_error is None  # the config's model runs again: the failure no longer shows

        write(num_threads=1, delegate="edgetpu")  # none here: the CPU runs it, and each reload tries again
        daemon.reload()
        tried = pipe.next_stages
        daemon.reload()
        last = pipe.next_stages
        assert threads1 is not tried is not last and last.info.delegate_error, last.info

        with data.open("a") as f:
            f.write("".join(",".join(f"{v:g}" for v in row) + "\n" for row in SAMPLES[4:8]))
        assert wait_until(lambda: pipe.stages is last, timeout=10)
        messages = sub.wait_for(lambda m: len(results(m, "s")) >= 4, timeout=20)
    got = results(messages, "s")
    units = [r["units"]["temperature"] for r in got]
    assert units[:2] == ["°C", "°C"] and units[-1] == "K", units  # the edited manifest runs (a window in hand
    # when the swap came finishes on the old model)
    assert [r["seq"] for r in got] == list(range(got[0]["seq"], got[0]["seq"] + 4))


def test_a_reload_starts_added_pipelines_stops_removed_ones_and_restarts_a_changed_source(
    tmp_path: Path, mosquitto, subscriber, regression_int8, caplog
):
    """Pipelines follow the file on a reload (SIGHUP's path: the main loop reloads), the others untouched: an
    added one starts, a removed one finishes its frame in hand and stops (every result it took is delivered;
    it leaves the stats), one whose source changed starts again on the new source with its seq going on, and
    one that cannot start (a missing model) is logged while the rest run on."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    files = {name: csv_file(tmp_path / f"{name}.csv", SAMPLES[:4]) for name in ("s", "t", "u")}
    path = tmp_path / "config.yaml"

    def pipeline(name: str, data: Path, model: Path = regression_int8.path) -> dict[str, Any]:
        source = {"type": "file", "path": str(data), "fields": ["a", "b", "c"], "follow": True}
        return {
            "name": name,
            "source": source,
            "window": {"size": 2, "hop": 2},
            "model": {"path": str(model)},
        }

    def reload_to(*pipelines: dict[str, Any]) -> None:
        """Write the config and reload as SIGHUP does; wait until the main loop has applied it."""
        cfg = config(tmp_path, broker, regression_int8.path, {})
        cfg["mqtt"]["stats_interval_s"] = 1.0
        path.write_text(yaml.safe_dump({**cfg, "pipelines": list(pipelines)}))
        seen = len(notify.received)
        daemon.request_reload()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # systemd's view: RELOADING=1, then READY=1 once applied
            notify.poll(0.1)
            lines = [line for _, line in notify.received[seen:]]
            if "RELOADING=1" in lines and "READY=1" in lines[lines.index("RELOADING=1") :]:
                return
        raise AssertionError(f"no READY=1 after RELOADING=1: {lines}")

    def append(name: str, rows: np.ndarray) -> None:
        with files[name].open("a") as f:
            f.write("".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows))

    caplog.set_level("INFO", logger="edge_agent.daemon")
    cfg = config(tmp_path, broker, regression_int8.path, {})
    left = tmp_path / "state" / "evidence" / "door"  # frames of a camera pipeline since removed
    left.mkdir(parents=True)
    (left / "000000000001-x.jpg").write_bytes(b"\xff\xd8")
    notify = NotifySocket(tmp_path / "notify")
    daemon = Daemon(
        parse_config({**cfg, "pipelines": [pipeline("s", files["s"])]}),
        config_path=path,
        notifier=Notifier({"NOTIFY_SOCKET": str(notify.path)}),
    )
    serving = threading.Thread(target=daemon.run, daemon=True)
    serving.start()
    try:
        sub.wait_for(lambda m: len(results(m, "s")) >= 2, timeout=20)
        reload_to(pipeline("s", files["s"]), pipeline("t", files["t"]))  # t added
        sub.wait_for(lambda m: len(results(m, "t")) >= 2, timeout=20)
        assert [p.name for p in daemon.pipelines] == ["s", "t"]
        assert caplog.text.count(f"evidence folder {left}: 1 frame(s)") == 2  # at the start and the reload

        s_pipe = daemon.pipelines[0]
        reload_to(pipeline("t", files["t"]), pipeline("x", files["u"], tmp_path / "missing.tflite"))
        assert [p.name for p in daemon.pipelines] == ["t"] and s_pipe.state == "stopped"
        assert "reload: stopping pipeline s (removed from the config)" in caplog.text
        assert "reload: pipeline x not started" in caplog.text and "missing.tflite" in caplog.text
        append("s", SAMPLES[4:8])  # s reads no more
        append("t", SAMPLES[4:8])
        sub.wait_for(lambda m: len(results(m, "t")) >= 4, timeout=20)
        first_t = results(sub.messages, "t")

        reload_to(pipeline("t", files["u"]))  # t's source changed: started again, on u.csv
        assert "reload: stopping pipeline t (its source changed)" in caplog.text
        append("u", SAMPLES[4:6])  # u: 6 rows, 3 windows
        messages = sub.wait_for(lambda m: len(results(m, "t")) >= 7, timeout=20)
        after = stats(sub.wait_for(lambda m: "s" not in (stats(m) or [{"pipelines": "s"}])[-1]["pipelines"]))[
            -1
        ]

        # t's new source does not start: t runs on with the config it had (it stopped, and the daemon then
        # ended as if every pipeline had finished, exit 0, which systemd does not restart)
        before = len(results(sub.messages, "t"))
        reload_to(pipeline("t", tmp_path / "gone.csv"))
        assert "reload: pipeline t not started" in caplog.text and "gone.csv" in caplog.text
        assert "reload: pipeline t runs its previous config again" in caplog.text
        assert [(p.name, p.state) for p in daemon.pipelines] in ([("t", "starting")], [("t", "running")])
        sub.wait_for(lambda m: len(results(m, "t")) >= before + 3, timeout=20)  # u.csv again, from its start
        assert daemon.cfg.pipelines[0].source.path == str(files["u"])
    finally:
        daemon.request_stop()
        serving.join(30)
        notify.close()
    assert set(after["pipelines"]) == {"t"}
    assert [r["frame"] for r in results(messages, "s")] == [0, 1]  # all s took, and no more after it stopped
    t = results(messages, "t")
    assert [r["frame"] for r in t] == [0, 1, 2, 3, 0, 1, 2]  # t.csv, then u.csv from its start
    seqs = [r["seq"] for r in t]
    assert seqs == sorted(set(seqs)) and t[:4] == first_t[:4]  # seq goes on (a new block), none reused


def test_a_reload_that_leaves_no_pipeline_running_exits_with_the_source_error_code(
    tmp_path: Path, mosquitto, subscriber, regression_int8, caplog
) -> None:
    """The only pipeline renamed to one whose source does not start: there is no previous config to go back
    to, and the daemon ended as if its pipelines had finished (exit 0: not restarted by systemd). It exits 5
    (a source error, restarted), with the reason in the log."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    data = csv_file(tmp_path / "s.csv", SAMPLES[:4])
    source = {"type": "file", "path": str(data), "fields": ["a", "b", "c"], "follow": True}
    cfg = config(tmp_path, broker, regression_int8.path, source)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    caplog.set_level("INFO", logger="edge_agent.daemon")
    daemon = Daemon(parse_config(cfg), config_path=path)
    codes: list[int] = []
    serving = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    serving.start()
    try:
        sub.wait_for(lambda m: len(results(m, "s")) >= 2, timeout=20)
        renamed = {
            **cfg["pipelines"][0],
            "name": "other",
            "source": {**source, "path": str(tmp_path / "gone.csv")},
        }
        path.write_text(yaml.safe_dump({**cfg, "pipelines": [renamed]}))
        daemon.request_reload()
        serving.join(30)
    finally:
        daemon.request_stop()
        serving.join(30)
    assert codes == [SourceError.exit_code], caplog.text[-2000:]
    assert "reload: pipeline other not started" in caplog.text and "no pipeline runs" in caplog.text


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir(), reason="needs /dev/shm: a device path this test can create"
)
def test_a_camera_device_that_is_not_there_is_waited_for_while_the_other_pipelines_run(
    tmp_path: Path, mosquitto, subscriber, regression_int8, color_int8, caplog
) -> None:
    """A USB camera not plugged in at boot stopped the whole daemon (exit 5), its sensor pipelines too, and
    systemd's start limit (10 starts in 5 min) then gave up on it for good. The camera pipeline now waits for
    its device (a path under /dev/shm stands for it: this machine has no camera) while the others run, says
    why in its stats and status, and goes on to open it once it is there."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    device = Path("/dev/shm") / f"edge-agent-test-video-{tmp_path.name}"
    device.unlink(missing_ok=True)
    source = {"type": "file", "path": str(csv_file(tmp_path / "s.csv", SAMPLES)), "fields": ["a", "b", "c"],
              "follow": True}  # fmt: skip
    cfg = config(tmp_path, broker, regression_int8.path, source)
    cfg["mqtt"]["stats_interval_s"] = 0.5
    camera = {"type": "camera", "url": str(device), "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}
    cfg["pipelines"].append({"name": "cam", "source": camera, "model": {"path": str(color_int8.path)}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    caplog.set_level("INFO", logger="edge_agent")

    def camera_error(messages: list) -> str | None:
        last = stats(messages)[-1:] if messages else []
        return last[0]["pipelines"]["cam"]["source"]["last_error"] if last else None

    try:
        with serving(path) as daemon:
            messages = sub.wait_for(lambda m: len(results(m, "s")) >= 6, timeout=20)
            messages = sub.wait_for(lambda m: "is not there" in (camera_error(m) or ""), timeout=10)
            cam = stats(messages)[-1]["pipelines"]["cam"]
            assert (cam["state"], cam["source"]["connected"], cam["frames"]) == ("running", False, 0)
            assert f"device {device} is not there" in daemon._status_line()
            assert f"camera {device}: device {device} is not there" in caplog.text
            device.write_bytes(b"")  # plugged in (a plain file: it opens, but OpenCV gets no video from it)
            messages = sub.wait_for(lambda m: "gets no video" in (camera_error(m) or ""), timeout=10)
            assert f"camera {device}: device {device} is there now" in caplog.text
            assert daemon.pipelines and all(p.state == "running" for p in daemon.pipelines)
    finally:
        device.unlink(missing_ok=True)
