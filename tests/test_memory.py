"""Resident memory given back: the mapped model file after XNNPACK packed its weights, malloc arenas."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime import load_model
from edge_agent.runtime.config import ModelConfig
from edge_agent.runtime.memory import release_mapped_file


def resident_kb(path: Path) -> int | None:
    """This process's resident KiB of every mapping of ``path``; None when it is not mapped at all."""
    real, total, inside = os.path.realpath(path), None, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header: address range ... path
            inside = line.split(maxsplit=5)[-1] == real
        elif inside and line.startswith("Rss:"):
            total = (total or 0) + int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_loaded_model_keeps_none_of_its_file_resident_and_still_runs(digits_int8: Path) -> None:
    x = np.random.default_rng(0).integers(-128, 127, (1, 8, 8, 1), dtype=np.int8)
    reference = load_model(ModelConfig(path=digits_int8, num_threads=1), xnnpack=False)
    expected = reference.invoke(x)
    model = load_model(ModelConfig(path=digits_int8, num_threads=1))
    try:
        assert resident_kb(digits_int8) is not None, "the runtime does not map the file; nothing to test"
        assert resident_kb(digits_int8) == 0
        for _ in range(20):
            got = model.invoke(x)
        for role, value in expected.items():
            assert np.array_equal(got[role], value), role
        assert release_mapped_file(Path("/nonexistent.tflite")) == 0
    finally:
        model.close()
        reference.close()


def test_malloc_arenas_capped_unless_the_operator_chose() -> None:
    code = "from edge_agent.runtime.memory import limit_malloc_arenas as f; print(f())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    chosen = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "MALLOC_ARENA_MAX": "4"}
    )
    assert chosen.stdout.strip() == "False", chosen.stderr
    assert capped.stdout.strip() == str(platform.libc_ver()[0] == "glibc"), capped.stderr
