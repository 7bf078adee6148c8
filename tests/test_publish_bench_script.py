"""scripts/bench_outbox.py still runs and writes its JSON (tiny sizes; the numbers are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_outbox_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_outbox.py"), "--n", "300", "--repeats", "1",
         "--backlog", "500", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "end to end QoS 1 via mosquitto" in proc.stdout
    result = json.loads(out.read_text())
    rates = result["per_second_median"]
    assert len(rates) == 6 and all(v > 0 for v in rates.values())
    assert result["backlog"]["rows"] == 500 and result["backlog"]["drain_per_s"] > 0
