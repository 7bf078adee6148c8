"""Several pipelines in one daemon (real mosquitto, real TFLite models, real MJPG videos): they run side by
side and each publishes its own seq; one stuck in its postprocessing (a test-only plugin installed through
the real entry-point group) does not stop the other, and the stats, systemd's STATUS= and the log name it;
one with a slow model (a pure-Python loop that holds the GIL) leaves the other its frames.
Functional tests: counts and names, with margins far from any timing the machine could miss."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

from tests.daemon_harness import Agents, NotifySocket, install_stuck_plugin, results, stats, write_config
from tests.fixtures.streams import render_test_video

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1: the daemon pings every 0.5 s


def camera(video: Path, fps: float) -> dict[str, Any]:
    return {"type": "camera", "url": str(video), "loop": True, "fps": fps}


def pipe(name: str, source: dict[str, Any], model: Path, **model_keys: Any) -> dict[str, Any]:
    return {"name": name, "source": source, "model": {"path": str(model), **model_keys}}


def own_video(tmp_path: Path, name: str) -> Path:
    return render_test_video(tmp_path / f"{name}.avi", frames=50)


def plugin(tmp_path: Path, **options: Any) -> tuple[dict[str, Any], Path, Path]:
    block, marker = tmp_path / "block", tmp_path / "stuck-marker"
    return {"type": "stuck", "block_file": str(block), "marker": str(marker), **options}, block, marker


def all_stats(messages: list, names: set[str]) -> list[dict[str, Any]]:
    return [s for s in stats(messages) if names <= set(s["pipelines"])]


def newest_stats(sub: Any, names: set[str]) -> dict[str, Any]:
    found = all_stats(sub.snapshot(), names)
    assert found, "no stats payload with every pipeline"
    return found[-1]


def test_two_camera_pipelines_side_by_side_both_publish(
    tmp_path: Path, mosquitto, subscriber, color_int8, color_uint8
) -> None:
    broker = mosquitto()
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [
            pipe("door", camera(own_video(tmp_path, "door"), 20), color_int8.path),
            pipe("yard", camera(own_video(tmp_path, "yard"), 20), color_uint8.path),
        ],
    )
    sub = subscriber(broker, "edge/#")
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        agent.expect(sub, lambda m: all(len(results(m, p)) >= 30 for p in ("door", "yard")), timeout=60)
        assert agent.stop() == 0, agent.log()
    got = sub.snapshot()
    for name, model in (("door", color_int8), ("yard", color_uint8)):
        mine = results(got, name)
        seqs = [r["seq"] for r in mine]
        assert seqs == sorted(set(seqs)), f"{name}: seq not strictly increasing: {seqs[:20]}"
        assert {r["model"]["name"] for r in mine} == {model.path.stem}
    last = newest_stats(sub, {"door", "yard"})["pipelines"]
    assert last["door"]["results"] > 0 and last["yard"]["results"] > 0, last


def test_a_stuck_pipeline_does_not_stop_the_other_and_is_named(
    tmp_path: Path, mosquitto, subscriber, color_int8
) -> None:
    broker = mosquitto()
    plugin_dir = install_stuck_plugin(tmp_path / "plugin")
    stuck_pp, block, marker = plugin(tmp_path)
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [
            pipe("stuck", camera(own_video(tmp_path, "stuck"), 20), color_int8.path, postprocess=stuck_pp),
            pipe("alive", camera(own_video(tmp_path, "alive"), 20), color_int8.path),
        ],
        watchdog={"stall_after_s": 1.0},
    )
    sub = subscriber(broker, "edge/#")
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "PYTHONPATH": str(plugin_dir),
    }
    try:
        with Agents(tmp_path) as agents:
            agent = agents.start(config, env)
            agent.expect(sub, lambda m: all(len(results(m, p)) >= 10 for p in ("stuck", "alive")), timeout=60)

            block.touch()  # the stuck pipeline's postprocessor now blocks
            while not marker.exists():
                notify.poll(0.05)
                assert agent.proc.poll() is None, agent.log()
            before = len(results(sub.snapshot(), "alive"))
            stuck_results = len(results(sub.snapshot(), "stuck"))
            # the other pipeline goes on publishing while this one is stuck
            agent.expect(sub, lambda m: len(results(m, "alive")) >= before + 40, timeout=60)
            assert len(results(sub.snapshot(), "stuck")) <= stuck_results + 1  # at most the frame in flight
            agent.wait_log("pipeline stuck has made no progress", timeout=10)
            assert "pipeline alive has made no progress" not in agent.log()
            # the stats name it (and only it) as stalled; so does systemd's STATUS=
            agent.expect(
                sub,
                lambda m: any((s["pipelines"].get("stuck") or {}).get("stalled_s") for s in stats(m)),
                timeout=15,
            )
            last = newest_stats(sub, {"stuck", "alive"})["pipelines"]
            assert last["stuck"]["stalled_s"] >= 1.0 and last["alive"]["stalled_s"] is None, last
            assert last["stuck"]["state"] == last["alive"]["state"] == "running"
            status = [line for _, line in notify.poll(1.5) + notify.received if line.startswith("STATUS=")]
            assert any("stuck running" in s and "stalled" in s for s in status), status[-5:]

            block.unlink()  # unstuck: it publishes again, and nothing is stalled
            agent.expect(sub, lambda m: len(results(m, "stuck")) >= stuck_results + 10, timeout=30)
            agent.send(signal.SIGTERM)
            assert agent.wait(30) == 0, agent.log()
    finally:
        notify.close()


def test_a_slow_model_leaves_the_other_pipeline_its_frames(
    tmp_path: Path, mosquitto, subscriber, color_int8
) -> None:
    """``slow`` spends 150 ms per result in Python (holding the GIL but for the interpreter's switch
    interval); ``fast`` is offered 10 frames/s and needs ~2 ms each. Run one after the other, ``fast`` could
    take at most 1 / 0.152 = 6.6 of its 10 frames/s; side by side it takes nearly all of them."""
    broker = mosquitto()
    plugin_dir = install_stuck_plugin(tmp_path / "plugin")
    slow_pp, _, _ = plugin(tmp_path, busy_ms=150)
    video = own_video(tmp_path, "shared")
    fast_video = tmp_path / "fast.avi"
    shutil.copyfile(video, fast_video)
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [
            pipe("slow", camera(video, 20), color_int8.path, postprocess=slow_pp),
            pipe("fast", camera(fast_video, 10), color_int8.path),
        ],
    )
    sub = subscriber(broker, "edge/#")
    with Agents(tmp_path) as agents:
        agent = agents.start(config, {"PYTHONPATH": str(plugin_dir)})
        agent.expect(
            sub, lambda m: len(results(m, "fast")) >= 10 and all_stats(m, {"slow", "fast"}), timeout=60
        )
        first = newest_stats(sub, {"slow", "fast"})["pipelines"]
        time.sleep(8.0)
        agent.expect(sub, lambda m: all_stats(m, {"slow", "fast"})[-1]["pipelines"] != first, timeout=10)
        last = newest_stats(sub, {"slow", "fast"})["pipelines"]
        assert agent.stop() == 0, agent.log()
    taken = last["fast"]["frames"] - first["fast"]["frames"]
    offered = taken + last["fast"]["skipped"] - first["fast"]["skipped"]
    assert last["slow"]["results"] > first["slow"]["results"], "the slow pipeline made no progress"
    assert offered >= 40, (first["fast"], last["fast"])
    assert taken / offered >= 0.8, f"fast took {taken} of {offered} frames offered next to the slow one"
