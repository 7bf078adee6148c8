"""CI smoke run of the end-to-end benchmark: ``scripts/bench --quick --json F`` runs the real thing (bare
loop, ``edge-agent run`` against a private mosquitto, Keras in TensorFlow, the sensor case) briefly, and
its JSON has every key with sane values. No thresholds: a benchmark is not a test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_KEYS = (
    "limit_fps",
    "pipeline_fps",
    "pipeline_vs_limit",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "limit_p99_ms",
    "keras_ms",
    "keras_vs_pipeline",
    "rss_mb",
    "rss_anon_mb",
    "rss_file_mb",
    "startup_s",
)


def positive(value: object) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    # the models are made once and kept across sessions in pytest's cache
    work = cache.mkdir("edge-agent-bench") if cache is not None else tmp_path_factory.mktemp("bench-work")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ, EDGE_AGENT_PYTHON=sys.executable)
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick", "--json", str(out), "--work", str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_quick_json_has_every_model_key_with_positive_values(quick_run: tuple[dict, str]) -> None:
    report, _ = quick_run
    row = report["models"]["digits_int8"]
    bad = {k: row.get(k) for k in MODEL_KEYS if not positive(row.get(k))}
    assert not bad, f"missing or not positive: {bad}; errors: {row.get('errors')}"
    assert row["errors"] == []
    assert row["pipeline_vs_limit"] == pytest.approx(row["pipeline_fps"] / row["limit_fps"])
    assert row["e2e_p99_ms"] >= row["e2e_p50_ms"]
    assert row["rss_anon_mb"] < row["rss_mb"] and row["rss_file_mb"] < row["rss_mb"]  # the peak's two parts
    # the digits video is a replay: every frame is delivered, so every frame gives a published result
    assert row["results"] == row["runs"]["pipeline"][0]["results"] > 10
    assert set(row["stages_ms"]) >= {"invoke", "total", "publish"}
    # the paced run's latency bound: the two-thread pipeline played at the same rate, each frame timed
    bound = row["runs"]["paced_ideal"][0]
    assert bound["fps_cap"] == pytest.approx(row["runs"]["paced"][0]["fps"], rel=0.5)
    assert 0 < row["bound_paced_p50_ms"] <= row["bound_paced_p99_ms"] == bound["latency_p99_ms"]
    assert 0 < bound["invoke_p50_ms"] <= bound["latency_p50_ms"]
    # placed as the one-camera daemon places its threads (inference on a CPU of its own) where it can
    assert bound["pinned"] == (len(os.sched_getaffinity(0)) >= 2)


@pytest.mark.slow
def test_quick_json_has_the_sensor_case_and_the_run_context(quick_run: tuple[dict, str]) -> None:
    report, stdout = quick_run
    sensor = report["sensor"]
    assert positive(sensor["sensor_results_per_s"]), sensor.get("errors")
    assert 0 < sensor["results"] <= sensor["expected_results"]
    assert sensor["errors"] == []
    assert report["threads"] == 1 and report["cores"] >= 1 and report["cpu"]
    # The vector extensions that pick the int8 kernels, read from /proc/cpuinfo (every x86-64 host here has
    # at least SSE; the list names only those that change XNNPACK's speed, so it may be empty elsewhere).
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert isinstance(report["simd"], list)
    assert ("avx2" in report["simd"]) == (" avx2" in cpuinfo), report["simd"]
    assert report["date"].startswith("20")
    versions = report["versions"]
    assert versions.get("ai-edge-litert") and (versions.get("tensorflow-cpu") or versions.get("tensorflow"))
    assert report["targets"], "the targets are checked and reported (never asserted)"
    assert "targets:" in stdout and "digits_int8" in stdout


@pytest.mark.slow
def test_pipelines_part_reports_every_n_with_its_limit_fairness_and_memory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``scripts/bench --pipelines 1,2``: per N, the camera pipelines in one daemon (each publishing), the
    sensor pipeline beside them, the N-process limit and bare loops from the same run, the daemon's memory."""
    cache = getattr(request.config, "cache", None)
    work = cache.mkdir("edge-agent-bench") if cache is not None else tmp_path_factory.mktemp("bench-work")
    out = tmp_path_factory.mktemp("bench-multi") / "bench.json"
    cmd = [str(ROOT / "scripts" / "bench"), "--pipelines", "1,2", "--runs", "1", "--seconds", "2"]
    done = subprocess.run(
        [*cmd, "--json", str(out), "--work", str(work)],
        capture_output=True,
        text=True,
        env=dict(os.environ, EDGE_AGENT_PYTHON=sys.executable),
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["models"] == {} and report["sensor"] is None  # only this part was asked for
    rows = report["pipelines"]
    assert set(rows) == {"1", "2"}
    for n, row in rows.items():
        assert row["errors"] == [], row["errors"]
        daemon = row["runs"]["daemon"][0]
        cams = {name: p for name, p in daemon["pipelines"].items() if name.startswith("cam")}
        assert len(cams) == int(n) and all(p["results"] > 20 for p in cams.values()), daemon["pipelines"]
        assert daemon["pipelines"]["sensor"]["results"] > 0
        assert row["results_per_s"] == pytest.approx(sum(p["fps"] for p in cams.values()))
        assert row["vs_limit"] == pytest.approx(row["results_per_s"] / row["limit_fps"])
        assert 0 < row["fairness"] <= 1 and positive(row["bare_loops_fps"]) and positive(row["rss_mb"])
        assert positive(row["rss_anon_mb"]) and row["rss_anon_mb"] < row["rss_mb"]
        assert positive(row["cpu_ms_per_result"]) and positive(row["limit_cpu_ms_per_result"])
        assert positive(row["paced_results_per_s"]) and row["e2e_p99_ms"] >= row["e2e_p50_ms"]
        # N limit processes at once are placed by the kernel: pinned, each would take the same CPU
        assert row["runs"]["limit"][0]["pinned"] == [False] * int(n)
    assert rows["2"]["rss_mb"] > rows["1"]["rss_mb"]
    assert "several pipelines in one daemon" in done.stdout and "N=2" in done.stdout
