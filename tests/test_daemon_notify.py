"""sd_notify from a real ``edge-agent run``: READY=1, WATCHDOG=1 while the inference loop turns, silence
when it is stuck (a test-only postprocessor plugin that blocks, installed through the real entry-point
group), pings again once it moves, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.daemon_harness import Agents, NotifySocket, install_stuck_plugin, write_config
from tests.privacy import ImageCanary, canary_frame

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1: the daemon pings every 0.5 s


def test_ready_watchdog_stuck_and_stopping(
    tmp_path: Path, mosquitto, privacy, color_int8, canary_video
) -> None:
    broker = mosquitto()
    plugin_dir = install_stuck_plugin(tmp_path / "plugin")
    block, marker = tmp_path / "block", tmp_path / "stuck-marker"
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [
            {
                "name": "cam",
                "source": {"type": "camera", "url": str(canary_video), "loop": True, "fps": 20},
                "model": {
                    "path": str(color_int8.path),
                    "postprocess": {"type": "stuck", "block_file": str(block), "marker": str(marker)},
                },
            }
        ],
        watchdog={"stall_after_s": 1.0},
    )
    # a plugin's result: its own fields are allowed, the canary frame is not
    watch = privacy(broker, config, canary=ImageCanary([canary_frame()]))
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "PYTHONPATH": str(plugin_dir),
    }
    try:
        with Agents(tmp_path) as agents:
            agent = agents.start(config, env)
            notify.wait_for("READY=1", timeout=30)
            assert any(line.startswith("STATUS=") for _, line in notify.received)
            # running: pings keep coming (>= 3 in 3 s at one per 0.5 s)
            pings = [t for t, line in notify.poll(3.0) if line == "WATCHDOG=1"]
            assert len(pings) >= 3, notify.received

            # stuck: the postprocessor blocks; after at most one ping already due, systemd hears nothing
            block.touch()
            while not marker.exists():
                notify.poll(0.05)
                assert agent.proc.poll() is None, agent.log()
            stuck_at = time.monotonic()
            window = notify.poll(3.0)
            late = [t for t, line in window if line == "WATCHDOG=1" and t - stuck_at > 0.6]
            assert late == [], f"watchdog pinged while the loop was stuck: {window}"
            agent.wait_log("pipeline cam has made no progress", timeout=5)

            # unstuck: pings resume
            block.unlink()
            resumed = notify.poll(3.0)
            assert any(line == "WATCHDOG=1" for _, line in resumed), resumed

            agent.send(signal.SIGTERM)
            notify.wait_for("STOPPING=1", timeout=15)
            assert agent.wait(30) == 0, agent.log()
        watch.check()
    finally:
        notify.close()


class _P:
    def __init__(self, name: str, state: str = "running", progress: int = 0) -> None:
        self.name, self.state, self.progress = name, state, progress


def test_watchdog_rule() -> None:
    """Ping only when every running pipeline turned its loop since the last ping; ended ones don't count."""
    from edge_agent.watchdog import Watchdog

    dog = Watchdog(interval_s=0.5)
    a, b = _P("a"), _P("b")
    assert dog.due(0.0) and dog.lagging([a, b]) == []  # first ping: nothing to compare with yet
    dog.pinged(0.0, [a, b])
    assert not dog.due(0.4) and dog.due(0.5)
    a.progress += 1  # a turned (a frame, or an idle read timeout); b did not: stuck
    assert dog.lagging([a, b]) == ["b"]
    b.progress += 3
    assert dog.lagging([a, b]) == []
    dog.pinged(1.0, [a, b])
    b.state = "finished"  # a finished file source does not hold the pings back
    a.progress += 1
    assert dog.lagging([a, b]) == []
    assert not Watchdog(interval_s=None).due(100.0)  # systemd does not watch us: never due
