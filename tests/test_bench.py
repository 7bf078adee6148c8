"""``edge-agent bench`` and ``edge-agent inspect`` on real models: the fields are there, errors exit clean.
Nothing here judges speed (benchmarks report it; tests never time things)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.cli import cli
from edge_agent.runtime.benchmark import BenchSpec, Timing, measure
from tests.fixtures.tflite_models import TinyModel

pytestmark = pytest.mark.slow  # models made by TensorFlow

EDGE_AGENT = [sys.executable, "-m", "edge_agent.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*EDGE_AGENT, *args], capture_output=True, text=True, env=env)


def test_timing_statistics() -> None:
    t = Timing.of([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert (t.count, t.min_ms, t.max_ms) == (100, pytest.approx(1), pytest.approx(100))
    assert (
        t.median_ms == pytest.approx(50.5)
        and t.p90_ms == pytest.approx(90.1)
        and t.p99_ms == pytest.approx(99.01)
    )


def test_measure_in_process_reports_every_stage(color_int8: TinyModel) -> None:
    run = measure(BenchSpec(str(color_int8.path), threads=1, warmup=2, count=7))
    assert run.runtime == "litert" and run.threads == 1
    assert run.steady.count == 7 and run.warmup.count == 2
    assert 0 < run.steady.min_ms <= run.steady.median_ms <= run.steady.p90_ms <= run.steady.max_ms
    assert run.init_ms > 0 and run.first_ms > 0 and run.peak_rss_mb > 10
    assert run.preprocess is not None and run.preprocess_what.startswith(
        "640x480 BGR frame -> [1, 32, 32, 3] int8"
    )
    assert run.postprocess is not None


def test_bench_table_and_json_with_thread_sweep(color_int8: TinyModel, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(color_int8.path),
            "--threads",
            "1,2",
            "--count",
            "20",
            "--no-compare",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    for column in (
        "runtime",
        "threads",
        "init",
        "first",
        "warmup",
        "count",
        "min",
        "median",
        "p90",
        "p99",
        "max",
        "peak RSS MB",
    ):
        assert column in text
    assert "preprocess = 640x480 BGR frame -> [1, 32, 32, 3] int8" in text
    doc = json.loads(out.read_text())
    assert [r["threads"] for r in doc["runs"]] == [1, 2]
    assert all(r["runtime"] == "litert" and r["steady"]["count"] == 20 for r in doc["runs"])
    assert all(r["preprocess"]["count"] >= 20 and r["peak_rss_mb"] > 0 for r in doc["runs"])
    assert doc["task"] == "classification" and doc["mode"] == "int8" and len(doc["sha256"]) == 64
    # what the numbers depend on: the CPU and the SIMD features that pick the int8 kernels, from /proc/cpuinfo
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert doc["cores"] >= 1 and ("avx2" in doc["simd"]) == (" avx2" in cpuinfo), doc
    assert f"cpu      {doc['cpu']}, {doc['cores']} usable core(s), SIMD for int8: " in text


def test_bench_compares_the_other_installed_runtime(color_int8: TinyModel, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = _run("bench", str(color_int8.path), "--threads", "1", "--count", "5", "--json", str(out))
    assert run.returncode == 0, run.stderr
    runtimes = [r["runtime"] for r in json.loads(out.read_text())["runs"]]
    assert runtimes[0] == "litert"
    assert "tensorflow" in runtimes  # installed on this host: a side-by-side row
    assert any(line.startswith("tensorflow") for line in run.stdout.splitlines())


def test_bench_duration_and_a_plain_tflite(color_logits_plain: TinyModel) -> None:
    result = CliRunner().invoke(
        cli, ["bench", str(color_logits_plain.path), "--threads", "1", "--duration", "0.2", "--no-compare"]
    )
    assert result.exit_code == 0, result.output
    assert "litert" in result.output and "float32" in result.output


def test_bench_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    missing = _run("bench", str(tmp_path / "nope.tflite"))
    assert missing.returncode == 3 and "model file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = _run("bench", str(tmp_path / "nope.tflite"), "--threads", "x")
    assert bad.returncode == 2 and "--threads" in bad.stderr


@pytest.mark.parametrize("command", ["bench", "inspect"])
def test_a_file_that_is_not_a_model_is_named_not_crashed_on(
    command: str, color_logits_plain: TinyModel, tmp_path: Path
) -> None:
    """A folder, a file of another kind and a cut-off copy of a model without a manifest (bench then asks
    the runtime for its outputs itself): one line naming the file, exit 3."""
    (tmp_path / "labels.tflite").write_text("person\ncar\n")
    cut = tmp_path / "cut.tflite"
    whole = color_logits_plain.path.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    expected = {
        tmp_path: "not a file",
        tmp_path / "labels.tflite": "not a TFLite model",
        cut: "the litert runtime cannot",
    }
    for path, says in expected.items():
        run = _run(command, str(path), *(["--no-compare"] if command == "bench" else []))
        assert run.returncode == 3, run.stderr
        assert run.stderr.count("\n") == 1 and f"{path}: {says}" in run.stderr, run.stderr
        assert "crashed" not in run.stderr and "Traceback" not in run.stderr


def test_inspect_shows_tensors_manifest_runtime_and_ops(color_int8: TinyModel) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(color_int8.path), "--delegate", "edgetpu"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "[1, 32, 32, 3]  int8  scale=" in text and "zero_point=-128" in text
    assert "role=probabilities" in text
    assert "task=classification mode=int8" in text and "labels: 3 (red, green, blue)" in text
    assert "checked: sha256, tensor shapes, dtypes and quantization match the model" in text
    assert "runtime   litert" in text
    assert "edgetpu unavailable, CPU fallback" in text
    assert "CONV_2D x1" in text and "SOFTMAX x1" in text


def test_inspect_json_and_plain_model(color_logits_plain: TinyModel) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(color_logits_plain.path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["manifest"] is None and info["runtime"]["name"] == "litert"
    assert info["inputs"][0]["shape"] == [1, 32, 32, 3] and info["inputs"][0]["quantization"] is None
    assert info["ops"]["FULLY_CONNECTED"] == 1
    guess = CliRunner().invoke(cli, ["inspect", str(color_logits_plain.path), "--task", "classification"])
    assert guess.exit_code == 0, guess.output
    assert "with task=classification: input kind image, output roles" in guess.output
    assert ': "logits"}' in guess.output  # the last op is FULLY_CONNECTED: softmax still to apply
    assert "assumed preprocess" in guess.output


def test_inspect_reports_a_manifest_mismatch_and_fails(color_int8: TinyModel, tmp_path: Path) -> None:
    model = tmp_path / color_int8.path.name
    shutil.copy(color_int8.path, model)
    manifest = json.loads(color_int8.manifest_path.read_text())
    manifest["outputs"][0]["quantization"]["zero_point"] = 0
    model.with_suffix(".json").write_text(json.dumps(manifest))
    run = _run("inspect", str(model))
    assert run.returncode == 3
    assert "MISMATCH" in run.stdout and "zero_point=0 in the manifest" in run.stdout
    assert run.stderr.strip().splitlines()[-1].startswith("edge-agent: error:")
