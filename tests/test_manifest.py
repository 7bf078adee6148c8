"""The manifest contract: the shipped JSON Schema is the pydantic model's, and bad manifests are named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from edge_agent.errors import ModelError
from edge_agent.manifest import SCHEMA_FILE, json_schema, load_manifest


def _manifest(tmp_path: Path, **changes: object) -> Path:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not really a model, but the sha256 is what is checked here")
    raw = {
        "schema": "edge-agent/manifest/1",
        "name": "m",
        "task": "classification",
        "model_file": "m.tflite",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "labels": ["a", "b"],
        "inputs": [
            {
                "name": "x",
                "shape": [1, 8, 8, 1],
                "dtype": "int8",
                "kind": "image",
                "quantization": {"scale": 0.004, "zero_point": -128},
            }
        ],
        "outputs": [
            {
                "name": "y",
                "shape": [1, 2],
                "dtype": "int8",
                "role": "probabilities",
                "quantization": {"scale": 0.0039, "zero_point": -128},
            }
        ],
        "preprocess": {"color": "gray", "resize": "stretch", "scale": 1 / 255},
    }
    raw.update(changes)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    return path


def test_shipped_schema_file_is_generated_from_the_model() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), "run: python -m edge_agent.manifest"


def test_a_valid_manifest_loads_and_validates_against_the_schema_file(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    manifest = load_manifest(path)
    assert manifest.output("probabilities").name == "y"
    jsonschema.validate(json.loads(path.read_text()), json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "dancing"}, "invalid manifest field 'task'"),
        ({"surprise": 1}, "invalid manifest field 'surprise'"),
        ({"sha256": "0" * 64}, "does not match its manifest"),
        ({"model_file": "elsewhere.tflite"}, "which is not beside it"),
        ({"preprocess": None}, "needs a 'preprocess' section"),
    ],
)
def test_bad_manifests_name_the_field_or_file(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_manifest(_manifest(tmp_path, **changes))


def test_unreadable_manifest_says_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match=r"not a readable JSON manifest.*edge-convert"):
        load_manifest(bad)
    with pytest.raises(ModelError, match="manifest not found"):
        load_manifest(tmp_path / "missing.json")


def test_output_of_a_missing_role_is_none(tmp_path: Path) -> None:
    """The pipeline asks for optional roles (``reconstruction``): a missing one is None, not an exception."""
    manifest = load_manifest(_manifest(tmp_path))
    assert manifest.output("reconstruction") is None


def test_nested_errors_name_the_key_path_and_a_swap_says_what_to_do(tmp_path: Path) -> None:
    raw = json.loads(_manifest(tmp_path).read_text())
    raw["inputs"][0]["dtype"] = "int4"
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=r"invalid manifest field 'inputs\.0\.dtype'"):
        load_manifest(tmp_path / "m.json")
    with pytest.raises(ModelError, match=r"replaced or damaged: copy the \.tflite and \.json together again"):
        load_manifest(_manifest(tmp_path, sha256="0" * 64))
