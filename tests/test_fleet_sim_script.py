"""scripts/fleet-sim still runs end to end with two real daemons and writes its JSON (the numbers are not
judged here: it is a benchmark, and this machine is shared)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow  # TensorFlow makes the two models

REPO = Path(__file__).resolve().parents[1]


def test_fleet_sim_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fleet-sim.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fleet_sim.py"), "--devices", "2", "--healthy-for", "1s",
         "--idle", "1", "--outage", "1", "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "storm: delay min / median (s)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["command"].startswith("scripts/fleet-sim ") and report["machine"]["cores"]
    (run,) = report["runs"]
    assert run["devices"] == 2
    deploy, storm = run["deploy"], run["storm"]
    for key in ("canary_active_s", "canary_confirmed_s", "all_active_s", "all_confirmed_s", "cli_s"):
        assert isinstance(deploy[key], float) and deploy[key] > 0, (key, deploy)
    assert deploy["canary_active_s"] <= deploy["all_active_s"] <= deploy["all_confirmed_s"]
    assert deploy["devices_not_seen_active"] == 0
    assert deploy["broker_peak_rss_mib"] > 0 and deploy["broker_cpu_s"] >= 0
    assert deploy["broker_bytes"]["sent"] > deploy["model_bytes"] * 2  # the model went to both devices
    assert deploy["daemons_memory"]["rss_sum_mib"] > 0
    assert storm["reconnected"] == 2 and storm["delay_s"]["n"] == 2
    assert set(storm["delay_s"]) == {"min", "median", "p90", "max", "n"}
    # nothing it started is left running
    leftovers = [p for p in psutil.process_iter(["pid", "cmdline"])
                 if str(tmp_path) in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    for p in leftovers:  # not this test's business to leave them running either
        with contextlib.suppress(psutil.Error, OSError):
            os.killpg(p.pid, signal.SIGKILL) if os.getpgid(p.pid) == p.pid else p.kill()
    assert [p.info for p in leftovers] == []
