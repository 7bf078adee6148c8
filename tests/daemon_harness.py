"""Run ``edge-agent run`` as a real subprocess for the daemon tests: config writing, start/stop/kill,
log access, results from a subscriber, an sd_notify socket, and a test-only postprocessor plugin.

Every process started through ``Agents`` is killed when the ``with`` block ends, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, broker: Any, pipelines: list[dict[str, Any]], **top: Any) -> Path:
    """A config for ``broker`` (a tests.fixtures.broker.Mosquitto) with fast reconnects and stats."""
    mqtt = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
            "stats_interval_s": 1.0}  # fmt: skip
    mqtt.update(top.pop("mqtt", {}))
    cfg = {
        "device_id": "testdev",
        "mqtt": mqtt,
        "state_dir": str(path.parent / "state"),
        "pipelines": pipelines,
    }
    cfg.update(top)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Agent:
    """One ``edge-agent run`` subprocess; stdout+stderr go to a log file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (full_env.get("PYTHONPATH"), str(REPO)) if p)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.cli", "run", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=config.parent,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        """Wait until ``text`` appears in the log (fails early if the process exited)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log:
                return log
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"edge-agent exited ({self.proc.returncode}) before logging {text!r}:\n{log}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the log after {timeout} s:\n{log[-3000:]}")
            time.sleep(0.05)

    def expect(self, sub: Any, predicate: Any, timeout: float = 30.0) -> list[tuple[str, bytes, bool]]:
        """``sub.wait_for(predicate)``, failing with this agent's log (not just a count) on timeout."""
        try:
            return sub.wait_for(predicate, timeout=timeout)
        except TimeoutError as exc:
            state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
            raise AssertionError(f"{exc}; edge-agent {state}, log:\n{self.log()[-4000:]}") from None

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"edge-agent still running after {timeout} s:\n{self.log()[-3000:]}"
            ) from None

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Agents:
    """Starts agents and guarantees they are gone at the end of the ``with`` block."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Agent] = []

    def start(self, config: Path, env: dict[str, str] | None = None) -> Agent:
        agent = Agent(config, self.tmp_path / f"agent{len(self.started)}.log", env)
        self.started.append(agent)
        return agent

    def __enter__(self) -> Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        for agent in self.started:
            agent.kill()


def results(messages: list[tuple[str, bytes, bool]], pipeline: str | None = None) -> list[dict[str, Any]]:
    """Result payloads (parsed) among a subscriber's messages."""
    out = []
    for topic, payload, _ in messages:
        if topic.endswith("/result"):
            obj = json.loads(payload)
            if pipeline is None or obj["pipeline"] == pipeline:
                out.append(obj)
    return out


def stats(messages: list[tuple[str, bytes, bool]]) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in messages if t.endswith("/stats")]


class NotifySocket:
    """What systemd does for Type=notify: a unix datagram socket whose path goes into NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, str]] = []  # (monotonic arrival time, one KEY=value line)

    def poll(self, duration: float) -> list[tuple[float, str]]:
        """Receive for ``duration`` s; returns what arrived in that time (also kept in ``received``)."""
        new: list[tuple[float, str]] = []
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            now = time.monotonic()
            new += [(now, line) for line in data.decode().splitlines()]
        self.received += new
        return new

    def wait_for(self, line: str, timeout: float = 15.0) -> float:
        """Arrival time of the first ``line`` (from now on, or already received); TimeoutError otherwise."""
        for t, got in self.received:
            if got == line:
                return t
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, got in self.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
                if got == line:
                    return t
        raise TimeoutError(f"{line!r} not received in {timeout} s; got {[x for _, x in self.received][-10:]}")

    def close(self) -> None:
        self.sock.close()


STUCK_PLUGIN = '''
"""Test-only postprocessor plugin: classification, except that it blocks while ``block_file`` exists
(a model or delegate that hangs), touching ``marker`` so the test knows the loop is stuck; and, with
``busy_ms``, spends that long per result in a pure-Python loop (a slow model that holds the GIL)."""
import time
from pathlib import Path

from edge_agent.processing.postprocess import resolve_postprocessor


class StuckPostprocessor:
    def __init__(self, manifest, options):
        options = dict(options)
        self.block_file = Path(options.pop("block_file"))
        self.marker = Path(options.pop("marker"))
        self.busy_s = float(options.pop("busy_ms", 0)) / 1000
        self.inner = resolve_postprocessor("classification")(manifest, options)

    def __call__(self, outputs, ctx):
        until = time.perf_counter() + self.busy_s
        while time.perf_counter() < until:
            pass
        while self.block_file.exists():
            self.marker.touch()
            time.sleep(0.02)
        return self.inner(outputs, ctx)
'''


def install_stuck_plugin(folder: Path) -> Path:
    """A real installed plugin: a module plus a .dist-info with an ``edge_agent.postprocessors`` entry point.
    Put ``folder`` on PYTHONPATH and use ``postprocess: {type: stuck, block_file: ..., marker: ...}``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edge_agent_stuck_plugin.py").write_text(textwrap.dedent(STUCK_PLUGIN))
    dist = folder / "edge_agent_stuck_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edge-agent-stuck-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[edge_agent.postprocessors]\nstuck = edge_agent_stuck_plugin:StuckPostprocessor\n"
    )
    return folder
