"""The README's first command, in CI's quick mode: train, quantize, render, run the daemon, read MQTT."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_quick_shows_results_arriving_over_mqtt_and_reuses_its_work(tmp_path: Path) -> None:
    port = _free_port()  # nothing answers there: the demo must start (and stop) its own mosquitto
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "demo.py"),
        "--quick",
        "--fps",
        "60",
        "--work",
        str(tmp_path),
        "--broker",
        f"127.0.0.1:{port}",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "starting a private mosquitto" in out
    assert "Quantizing to full-integer int8" in out
    done = re.search(r"(\d+) results arrived over MQTT for 60 frames, accuracy ([\d.]+)%", out)
    assert done, out[-2000:]
    results, accuracy = int(done.group(1)), float(done.group(2))
    assert results >= 50  # an fps-capped replay may skip a frame when the machine is busy
    assert accuracy >= 90.0
    result_lines = re.findall(r"^\s+\d+\s+\d+\s+\d\s+\d\s+[\d.]+\s+(ok|MISS)", out, re.MULTILINE)
    assert len(result_lines) == results
    assert "status: online" in out and "status: offline" in out
    # the private broker is gone again
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Reusing the trained digits CNN" in second.stdout
    assert "Reusing the int8 model" in second.stdout
    assert "Reusing the demo video" in second.stdout


def test_demo_help_installs_nothing_and_lists_every_option(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {"PATH": "/usr/bin:/bin", "EDGE_AGENT_VENV": str(venv), "HOME": str(tmp_path)}
    shown = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert not venv.exists()  # nothing was set up
    # the wrapper's text lists what demo.py accepts (the two must not drift apart)
    import click

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    command: click.Command = demo.main
    options = {o for p in command.params for o in p.opts if o.startswith("--")}
    listed = set(re.findall(r"^\s+(?:-h, )?(--[a-z-]+)", shown.stdout, re.MULTILINE))
    assert options | {"--help"} == listed
