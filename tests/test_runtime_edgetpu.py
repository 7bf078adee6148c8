"""The Edge TPU path against a fake libedgetpu.so.1 that speaks the real delegate ABI (no TPU here).

Each case runs in a child process: the dynamic loader reads LD_LIBRARY_PATH once, at process start,
and finds the fake by the same name the runtime asks for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.tflite_models import TinyModel

pytestmark = pytest.mark.slow  # the model is made by TensorFlow

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from edge_agent.runtime import load_model
    from edge_agent.runtime.config import ModelConfig
    cfg = ModelConfig(**json.loads(sys.argv[1]))
    model = load_model(cfg)
    x = np.zeros(model.input.shape, np.int8); x[..., 0] = 127  # a red image
    out = model.invoke(x)["probabilities"]
    print(json.dumps({"delegate": model.delegate, "delegate_error": model.delegate_error,
                      "path": str(model.path), "argmax": int(np.argmax(out))}))
    """
)


def _load(model_path: Path, lib_dir: Path, log: Path, device: str | None = None, **env: str) -> dict:
    cfg = {"path": str(model_path), "delegate": "edgetpu", "edgetpu_device": device}
    environ = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir), "FAKE_EDGETPU_LOG": str(log), **env}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg)], capture_output=True, text=True, env=environ
    )
    assert run.returncode == 0, run.stderr
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "stderr": run.stderr}


@pytest.fixture
def model_with_variant(color_int8: TinyModel, tmp_path: Path) -> Path:
    path = tmp_path / color_int8.path.name
    shutil.copy(color_int8.path, path)
    shutil.copy(color_int8.manifest_path, path.with_suffix(".json"))
    # what edgetpu_compiler writes beside the model (here the same bytes: the fake runs it on the CPU)
    shutil.copy(color_int8.path, tmp_path / f"{path.stem}_edgetpu.tflite")
    return path


def test_delegate_loads_and_the_edgetpu_variant_runs(
    model_with_variant: Path, fake_edgetpu_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "edgetpu.log"
    got = _load(model_with_variant, fake_edgetpu_dir, log, device="usb:0")
    assert got["delegate"] == "edgetpu" and got["delegate_error"] is None
    assert got["path"].endswith("color_int8_edgetpu.tflite")
    assert got["argmax"] == 0  # red, still the right answer
    calls = log.read_text().split("\n")
    assert "device usb:0" in calls and "create -" in calls and "prepare -" in calls  # the interpreter used it


def test_missing_accelerator_falls_back_to_the_cpu_model(
    model_with_variant: Path, fake_edgetpu_dir: Path, tmp_path: Path
) -> None:
    got = _load(model_with_variant, fake_edgetpu_dir, tmp_path / "log", device="usb:9")
    assert got["delegate"] is None
    assert "Edge TPU device usb:9 not usable" in got["delegate_error"]
    assert "Failed to open device usb:9" in got["delegate_error"]
    assert got["path"] == str(model_with_variant)  # the CPU model, not the _edgetpu variant
    assert got["argmax"] == 0
    assert "running on the CPU" in got["stderr"]


def test_delegate_that_rejects_the_graph_falls_back_to_the_cpu_model(
    model_with_variant: Path, fake_edgetpu_dir: Path, tmp_path: Path
) -> None:
    got = _load(model_with_variant, fake_edgetpu_dir, tmp_path / "log", FAKE_EDGETPU_FAIL_PREPARE="1")
    assert got["delegate"] is None
    assert "Edge TPU delegate rejected color_int8_edgetpu.tflite" in got["delegate_error"]
    assert got["path"] == str(model_with_variant) and got["argmax"] == 0
