"""Model files and the fleet record survive a crash at any point; sizes and hashes are checked; golden."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edge_agent.fleet.errors import DeployRefused
from edge_agent.fleet.golden import GoldenSet, run_golden
from edge_agent.fleet.store import TMP_MARK, ModelStore, check_model_bytes
from edge_agent.manifest import Manifest

DATA = b"model bytes " * 100
SHA = hashlib.sha256(DATA).hexdigest()


def _refusal(data: bytes, size: int, max_bytes: int) -> tuple[str, str]:
    with pytest.raises(DeployRefused) as info:
        check_model_bytes(data, SHA, size, max_bytes)
    return info.value.reason, str(info.value)


def test_checks_size_and_hash() -> None:
    check_model_bytes(DATA, SHA, len(DATA), 10_000)
    check_model_bytes(DATA, SHA, len(DATA), len(DATA))  # exactly at fleet.max_model_bytes: taken
    reason, message = _refusal(DATA[:-1], len(DATA), 10_000)
    assert reason == "truncated" and f"{len(DATA) - 1} of its {len(DATA)} bytes" in message
    reason, message = _refusal(DATA[:-1] + b"X", len(DATA), 10_000)
    assert reason == "sha256_mismatch" and f"differs from the signed {SHA[:12]}..." in message
    reason, message = _refusal(DATA + b"X", len(DATA), 10_000)  # more bytes than the signed size
    assert reason == "sha256_mismatch" and f"{len(DATA) + 1} bytes, the deployment says {len(DATA)}" in (
        message
    )
    reason, message = _refusal(DATA, len(DATA), len(DATA) - 1)
    assert reason == "too_large" and f"exceeds fleet.max_model_bytes ({len(DATA) - 1})" in message
    # The signed size alone over the limit is refused, whatever arrived (nothing larger is ever fetched),
    # and so is a body over the limit that claims a small size.
    assert _refusal(DATA[:10], 10_001, 10_000)[0] == "too_large"
    assert _refusal(DATA, 10, len(DATA) - 1)[0] == "too_large"


def test_crash_between_temp_write_and_rename(tmp_path: Path) -> None:
    """Simulate a SIGKILL after the temp files were written but before their rename: the next open sees the
    old record and no half model, and removes the leftovers."""
    store = ModelStore(tmp_path)
    store.write_model(DATA, SHA, len(DATA), 1 << 20, {"name": "old"})
    store.update("cam", current={"sha256": SHA, "number": 1, "model": "old"}, last_number=1)
    record_before = store.record_path.read_bytes()
    # What atomic_write leaves behind when killed before os.replace:
    (store.dir / f"{TMP_MARK}{'f' * 64}.tflite").write_bytes(b"half a mod")
    (tmp_path / f"{TMP_MARK}fleet.json").write_text('{"pipelines": {"cam": {"current": {"sha256": "ff')
    reopened = ModelStore(tmp_path)
    assert sorted(reopened.removed_leftovers) == sorted(
        [f"{TMP_MARK}{'f' * 64}.tflite", f"{TMP_MARK}fleet.json"]
    )
    assert not list(tmp_path.rglob(f"{TMP_MARK}*"))
    assert reopened.record_path.read_bytes() == record_before
    assert reopened.current_model("cam") == reopened.model_path(SHA)
    assert reopened.model_path(SHA).read_bytes() == DATA
    assert reopened.last_number("cam") == 1


def test_record_persists_and_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    shas = []
    for i in range(3):
        data = DATA + bytes([i])
        sha = hashlib.sha256(data).hexdigest()
        shas.append(sha)
        store.write_model(data, sha, len(data), 1 << 20, {"name": f"m{i}"})
    store.update("cam", current={"sha256": shas[2]}, previous={"sha256": shas[1]}, last_number=7)
    removed = store.prune()
    assert removed and all(n.startswith(shas[0]) for n in removed)
    assert json.loads(store.record_path.read_text())["pipelines"]["cam"]["last_number"] == 7
    assert ModelStore(tmp_path).entry("cam")["previous"] == {"sha256": shas[1]}
    assert oct(os.stat(store.model_path(shas[2])).st_mode & 0o777)  # written, readable


def test_corrupt_record_falls_back_to_config_models(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text("{garbage")
    store = ModelStore(tmp_path)
    assert store.current_model("cam") is None and store.last_number("cam") is None
    assert store.unreadable_record is not None and str(tmp_path / "fleet.json") in store.unreadable_record
    (aside,) = tmp_path.glob("fleet.json.corrupt-*")  # kept for inspection, as the outbox keeps its own
    assert aside.read_text() == "{garbage" and f"moved aside to {aside.name}" in store.unreadable_record
    aside.unlink()
    (tmp_path / "fleet.json").write_text('{"pipelines": []}')  # JSON, but not a record
    assert "not a record of pipelines" in (ModelStore(tmp_path).unreadable_record or "")
    assert not (tmp_path / "fleet.json").exists()  # moved aside too: the next start is a first start,
    assert ModelStore(tmp_path).unreadable_record is None  # with nothing to say


def test_where_things_are_and_what_an_entry_holds(tmp_path: Path) -> None:
    """The layout the README and the daemon's start-up check (``has_deployments``) rely on, the manifest
    stored as given, and entries handed out as copies (a caller's change never reaches the record)."""
    store = ModelStore(tmp_path)
    assert store.entry("cam") == {"current": None, "previous": None, "last_number": None, "pending": None}
    path = store.write_model(DATA, SHA, len(DATA), 1 << 20, {"name": "m", "labels": ["a", "é"]})
    assert path == tmp_path / "deployed" / f"{SHA}.tflite" and path.read_bytes() == DATA
    assert json.loads((tmp_path / "deployed" / f"{SHA}.json").read_text()) == {
        "name": "m",
        "labels": ["a", "é"],
    }
    returned = store.update("cam", current={"sha256": SHA, "number": 2}, last_number=2)
    assert returned == {**store.entry("cam")} and returned["current"] == {"sha256": SHA, "number": 2}
    returned["current"]["number"] = 99
    store.entry("cam")["current"]["number"] = 98
    record = json.loads((tmp_path / "fleet.json").read_text())
    assert record["version"] == 1 and record["pipelines"]["cam"]["current"]["number"] == 2
    assert store.entry("cam")["current"]["number"] == 2


def test_a_deployed_model_file_that_is_gone_falls_back_to_the_config_model(tmp_path: Path) -> None:
    """A record naming a file someone deleted: the daemon starts with the config's model, not a missing
    path."""
    store = ModelStore(tmp_path)
    path = store.write_model(DATA, SHA, len(DATA), 1 << 20, {"name": "m"})
    store.update("cam", current={"sha256": SHA, "number": 3}, last_number=3)
    assert store.current_model("cam") == path
    path.unlink()
    assert store.current_model("cam") is None
    assert store.last_number("cam") == 3  # the replay guard stays


def test_prune_keeps_a_deployment_in_progress(tmp_path: Path) -> None:
    """The model of a deployment between its download and its swap is no pipeline's current or previous
    yet: a prune then (another pipeline's deployment finishing) must not delete it under its feet."""
    store = ModelStore(tmp_path)
    other = DATA + b"pending"
    other_sha = hashlib.sha256(other).hexdigest()
    store.write_model(DATA, SHA, len(DATA), 1 << 20, {"name": "old"})
    store.write_model(other, other_sha, len(other), 1 << 20, {"name": "new"})
    store.update("door", pending={"deployment": {"number": 4}, "sha256": other_sha, "phase": "testing"})
    assert sorted(store.prune()) == [f"{SHA}.json", f"{SHA}.tflite"]
    assert store.model_path(other_sha).read_bytes() == other and store.manifest_path(other_sha).is_file()


def _manifest(quantized: bool) -> Manifest:
    out = {"name": "y", "shape": [1, 3], "dtype": "int8" if quantized else "float32", "role": "probabilities"}
    if quantized:
        out["quantization"] = {"scale": 1 / 256, "zero_point": -128}
    return Manifest.model_validate({
        "name": "m", "task": "classification", "model_file": "m.tflite", "sha256": "0" * 64,
        "inputs": [{"name": "x", "shape": [1, 2], "dtype": "uint8", "kind": "tensor", "layout": "NC"}],
        "outputs": [out],
    })  # fmt: skip


def test_golden_tolerance_is_the_quantization_step() -> None:
    manifest = _manifest(quantized=True)
    golden = GoldenSet.model_validate({"samples": [
        {"input": base64.b64encode(bytes([7, 9])).decode(), "outputs": {"y": [0.0, 0.5, 0.99609375]}}
    ]})  # fmt: skip
    seen = []

    def invoke(delta: int):  # raw int8 outputs, `delta` steps off the expected ones
        def f(x: np.ndarray) -> dict[str, np.ndarray]:
            seen.append(x.copy())
            return {"y": np.array([[-128 + delta, 0, 127]], dtype=np.int8)}

        return f

    run_golden(golden, manifest, invoke(2))  # two steps: within tolerance
    assert seen[0].tolist() == [[7, 9]] and seen[0].dtype == np.uint8
    with pytest.raises(DeployRefused, match=r"output 'y'\[0\]") as info:
        run_golden(golden, manifest, invoke(3))
    assert info.value.reason == "golden_mismatch"
    wrong_size = GoldenSet.model_validate({"samples": [{"input": "AAAA", "outputs": {"y": [0.0, 0.5, 1.0]}}]})
    with pytest.raises(DeployRefused) as info:
        run_golden(wrong_size, manifest, invoke(0))
    assert info.value.reason == "incompatible"


def test_the_users_own_models_are_never_touched(tmp_path: Path) -> None:
    """The README has users copy their models into state_dir/models/: deployments live elsewhere, and
    prune only ever deletes <sha256>-named files of its own (it once emptied models/ at every start)."""
    own = tmp_path / "models"
    own.mkdir()
    for name in ("door.tflite", "door.json"):
        (own / name).write_bytes(b"the user's")
    store = ModelStore(tmp_path)
    store.write_model(DATA, SHA, len(DATA), 1 << 20, {"name": "m"})
    strangers = ["notes.json", "abc123.tflite", f"{'x' * 64}.tflite"]  # not <sha256> names: not ours
    for name in strangers:
        (store.dir / name).write_text("{}")
    store.prune()  # no pipeline refers to SHA: it goes, nothing else does
    assert sorted(p.name for p in own.iterdir()) == ["door.json", "door.tflite"]
    assert sorted(p.name for p in store.dir.iterdir()) == sorted(strangers)
    assert store.dir != own
