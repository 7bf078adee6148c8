"""Resident memory given back: the mapped model file after XNNPACK packed its weights, malloc arenas."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

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


def test_mmap_threshold_fixed_unless_the_operator_chose() -> None:
    code = "from edge_agent.runtime.memory import fix_mmap_threshold as f; print(f())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    fixed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    chosen = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    assert chosen.stdout.strip() == "False", chosen.stderr
    assert fixed.stdout.strip() == str(platform.libc_ver()[0] == "glibc"), fixed.stderr


FRAME_FAULTS = """
import resource, threading
import numpy as np
from edge_agent.runtime import memory

memory.limit_malloc_arenas()
memory.fix_mmap_threshold()  # as the daemon starts

def faults_per_frame(frames=200):
    # what a camera's reader thread does per frame: a decoded 320x240 BGR image and a 224x224x3 model input,
    # made, filled and freed (in a thread: its own malloc arena, whose heap is small, like the reader's)
    got = []
    def read():
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(frames):
            image, tensor = np.empty((240, 320, 3), np.uint8), np.empty((224, 224, 3), np.int8)
            image[...], tensor[...] = 1, 1
            del image, tensor
        got.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / frames)
    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    return got[0]

mapped = faults_per_frame()
fitted = memory.fit_frames(240 * 320 * 3)
again = memory.fit_frames(1000)  # smaller: the threshold is never lowered
print(mapped, fitted, again, faults_per_frame(), memory.fit_frames(10**9))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_frames_come_from_the_heap_once_fitted_instead_of_being_mapped_and_faulted_in_each_time() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", FRAME_FAULTS], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    mapped, fitted, again, heap, largest = out.stdout.split()
    assert float(mapped) > 50, "each frame's buffers were mapped: their pages faulted in every frame"
    assert (int(fitted), again) == (256 * 1024, "None")  # the next power of two above 230,400 bytes
    assert float(heap) < 1, f"{heap} page faults per frame after fit_frames: the buffers were not reused"
    assert int(largest) == 8 * 1024 * 1024  # capped: a larger frame keeps its own mapping
    operator = subprocess.run(
        [sys.executable, "-c", "from edge_agent.runtime import memory; print(memory.fit_frames(1 << 20))"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert operator.stdout.strip() == "None", (
        "without fix_mmap_threshold (an operator's choice) nothing changes"
    )


HOLES = """
from edge_agent.runtime import memory

def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

memory.fix_mmap_threshold()  # as the daemon starts: blocks under 128 KiB come from the heap
blocks = [bytearray(60_000) for _ in range(2000)]  # 120 MB of heap, touched
kept = blocks[::20]  # what lives on (a new interpreter among the old one's freed blocks)
del blocks
full = rss_mb()
trimmed = memory.trim_heap()
print(full, rss_mb(), trimmed)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_trim_heap_gives_back_the_holes_freed_between_blocks_still_in_use() -> None:
    """What a reload frees (an interpreter, a capture) lies between blocks still in use: glibc keeps those
    holes resident until ``trim_heap``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    full, after, trimmed = out.stdout.split()
    assert float(full) - float(after) > 80, (full, after)  # ~114 of the 120 MB were freed as holes
    assert trimmed == "True"


def test_latency_percentiles_match_numpy_without_importing_numpy_ma() -> None:
    code = (
        "import sys, numpy as np\n"
        "from edge_agent.stats import LatencyWindow\n"
        "w = LatencyWindow(64)\n"
        "xs = np.random.default_rng(3).exponential(5.0, 50)\n"
        "for x in xs: w.add(float(x))\n"
        "got = w.percentiles((0.0, 50.0, 90.0, 99.0, 100.0))\n"
        "want = [round(float(v), 3) for v in np.percentile(xs, [0, 50, 90, 99, 100])]\n"
        "print(list(got.values()) == want)\n"
    )
    # np.percentile is called last above, so numpy.ma in sys.modules before it would be the stats' doing
    probe = code.replace("want = ", "print('numpy.ma' in sys.modules)\nwant = ")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"], out.stderr


# What a camera config without fleet keys, homeassistant:, metrics: (nor a command source, nor a config
# error) must never load: each costs resident memory.
OPT_IN_MODULES = (
    "edge_agent.fleet.agent",  # the deploy agent: only with trusted keys or a deployment stored
    "edge_agent.fleet.fetch",
    "edge_agent.fleet.messages",  # its signed-message models (pydantic)
    "edge_agent.homeassistant.discovery",  # homeassistant.discovery: true
    "edge_agent.homeassistant.entities",
    "prometheus_client",  # metrics:
    "subprocess",  # a command source's
    "difflib",  # config errors' "did you mean"
)


def test_daemon_without_fleet_homeassistant_metrics_does_not_load_their_modules(
    tmp_path: Path, mosquitto, digits_int8: Path, digits_video
) -> None:
    broker = mosquitto()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "mem",
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "state_dir": str(tmp_path / "state"),
                "fleet": {"trusted_keys_dir": str(tmp_path / "no-keys")},
                "pipelines": [
                    {
                        "name": "cam",
                        "source": {"type": "camera", "url": str(digits_video.path)},
                        "model": {"path": str(digits_int8)},
                    }
                ],
            }
        )
    )
    code = (
        "import importlib.metadata, json, sys, time\n"
        "from pathlib import Path\n"
        "looked_up, _version = [], importlib.metadata.version\n"
        "importlib.metadata.version = lambda name: looked_up.append(name) or _version(name)\n"
        "import edge_agent.cli  # as `edge-agent run` does\n"
        "from edge_agent.config import load_config\n"
        "from edge_agent.daemon import Daemon\n"
        f"daemon = Daemon(load_config(Path({str(config)!r})))\n"
        "daemon.start()\n"
        "time.sleep(0.5)\n"
        "stats = json.loads(daemon.stats_payload())\n"
        "daemon.shutdown(drain=False)\n"
        f"print(json.dumps({{'loaded': [m for m in {OPT_IN_MODULES!r} if m in sys.modules],\n"
        "                   'version_looked_up': 'edge-agent' in looked_up,\n"
        "                   'fleet': stats['fleet']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["version_looked_up"] is False  # the package-metadata scan: only Home Assistant, metrics
    assert report["fleet"]["enabled"] is False  # still reported, every counter 0
    assert not any(report["fleet"].values())
