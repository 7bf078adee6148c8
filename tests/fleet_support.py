"""Helpers for the fleet tests: model files with manifests and golden samples, a fake device behind the
DeployAgent's narrow callables (the real loader and pipeline come at integration), an agent on a real broker.

The fake "model" is a file whose bytes say how it behaves: b"GOOD" reproduces its golden samples,
b"WRONG" does not, b"SHAPE" does not fit the pipeline, b"BREAKS" raises errors once swapped in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ModelError
from edge_agent.fleet import golden as golden_mod
from edge_agent.fleet.agent import DeployAgent
from edge_agent.fleet.broker import BrokerOptions, FleetClient
from edge_agent.fleet.config import FleetConfig
from edge_agent.manifest import Manifest

GOLDEN_IN = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
GOLDEN_OUT = [0.25, 0.75]


def make_model(folder: Path, name: str, behaviour: bytes, *, padding: int = 1000) -> Path:
    """``folder/name.tflite`` + ``name.json`` (manifest with golden samples)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"{name}.tflite"
    model.write_bytes(behaviour + b"\0" * padding + name.encode())
    manifest = {
        "schema": "edge-agent/manifest/1",
        "name": name,
        "task": "classification",
        "model_file": model.name,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "labels": ["a", "b"],
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32", "kind": "tensor", "layout": "NC"}],
        "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32", "role": "probabilities"}],
        "golden": {
            "samples": [
                {"input": base64.b64encode(GOLDEN_IN.tobytes()).decode(), "outputs": {"y": GOLDEN_OUT}}
            ]
        },
    }
    model.with_suffix(".json").write_text(json.dumps(manifest))
    return model


class FakeCandidate:
    def __init__(self, path: Path, data: bytes):
        self.path, self.data = path, data

    def invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        assert x.shape == (1, 4) and x.dtype == np.float32
        good = self.data.startswith((b"GOOD", b"BREAKS", b"SLOW"))
        return {"y": np.array([GOLDEN_OUT if good else [0.9, 0.1]], dtype=np.float32)}


class FakeDevice:
    """load_candidate / run_golden / swap / pipeline_health as the daemon will provide them."""

    def __init__(self, initial: Path):
        self.lock = threading.Lock()
        self.running: FakeCandidate = FakeCandidate(
            initial, initial.read_bytes() if initial.exists() else b""
        )
        self.swaps: list[Path] = []
        self.loads: list[Path] = []
        self.errors = 0
        self.results = 0

    def load_candidate(self, pipeline: str, path: Path, manifest: dict[str, Any] | None) -> FakeCandidate:
        data = path.read_bytes()
        self.loads.append(path)
        if data.startswith(b"SHAPE"):
            raise ModelError(f"{path}: input 'x' is [1, 5], pipeline {pipeline!r} feeds [1, 4]")
        return FakeCandidate(path, data)

    def run_golden(self, candidate: FakeCandidate, golden: Any, manifest: Manifest) -> None:
        golden_mod.run_golden(golden, manifest, candidate.invoke)

    def swap(self, pipeline: str, candidate: FakeCandidate) -> None:
        with self.lock:
            self.running = candidate
            self.swaps.append(candidate.path)

    def pipeline_health(self, pipeline: str) -> dict[str, Any]:
        with self.lock:
            self.results += 25
            if self.running.data.startswith(b"BREAKS"):
                self.errors += 1
            p99 = 50.0 if self.running.data.startswith(b"SLOW") else 5.0
            return {"state": "running", "errors": self.errors, "results": self.results, "invoke_p99_ms": p99}


def device_client(broker: Any, device_id: str, **kw: Any) -> FleetClient:
    return FleetClient(
        BrokerOptions(host=broker.host, port=broker.port, client_id=f"dev-{device_id}", **kw)
    ).connect()


def make_agent(
    broker: Any,
    state_dir: Path,
    device_id: str,
    keys_dir: Path,
    initial: Path,
    *,
    groups: tuple[str, ...] = (),
    watch_s: float = 0.5,
    client_kw: dict[str, Any] | None = None,
    config_models: dict[str, Path] | None = None,
    **cfg: Any,
) -> tuple[DeployAgent, FakeDevice, FleetClient]:
    """``config_models``: pipeline -> the config's model, read at each use (a test changes it as a reload
    would); default ``{"cam": initial}``."""
    models = {"cam": initial} if config_models is None else config_models
    client = device_client(broker, device_id, **(client_kw or {}))
    device = FakeDevice(initial)
    agent = DeployAgent(
        FleetConfig(
            trusted_keys_dir=keys_dir, groups=list(groups), watch_s=watch_s, **{"fetch_timeout_s": 5, **cfg}
        ),
        device_id=device_id,
        state_dir=state_dir,
        config_models=lambda: dict(models),
        subscribe=client.subscribe,
        publish=client.publish,
        load_candidate=device.load_candidate,
        run_golden=device.run_golden,
        swap=device.swap,
        pipeline_health=device.pipeline_health,
        poll_s=0.1,
    )
    return agent, device, client
