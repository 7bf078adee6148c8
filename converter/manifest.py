"""Build ``model.json``: what the device needs to run a converted model without hand-written settings.

The one manifest builder: ``edge-convert``, the tests' model fixtures and the benchmark script all call
``build`` (or ``build_for_file``), so the three cannot drift apart. Tensors come from the converted file
as ai-edge-litert reports them (names, shapes, dtypes, scale and zero point), not from the Keras model.
Every manifest is validated against the shipped JSON Schema file, the same contract ``edge_agent``
reads, before it is returned. TensorFlow is not imported here (nor by anything this module imports).

To add a field: add it to ``edge_agent.manifest.Manifest``,
regenerate the schema file, and add one keyword to ``build``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from converter.litert import LiteModel, Tensor
from edge_agent.errors import ModelError
from edge_agent.manifest import MANIFEST_SCHEMA_ID, file_sha256, manifest_path_for


def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("edge_agent").joinpath("schemas/manifest.schema.json").read_text())


def validate(manifest: dict[str, Any]) -> None:
    """ModelError when ``manifest`` does not satisfy the schema file (a builder bug, not the user's)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(top level)"
        raise ModelError(
            f"the manifest edge-convert built is invalid at {where}: {first.message} (please report this)"
        )


def input_kind(shape: tuple[int | None, ...]) -> str:
    """'image' for (N, H, W, C) inputs with 1 or 3 channels; 'tensor' otherwise."""
    return "image" if len(shape) == 4 and shape[-1] in (1, 3) else "tensor"


def input_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return "NC"
    if len(shape) == 3:
        return "NTC"
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW"
    return "NHWC"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def build(
    *,
    lite: LiteModel,
    model_file: str,
    sha256: str,
    name: str,
    task: str,
    mode: str,
    roles: list[str],
    labels: list[str] | None = None,
    kind: str = "tensor",
    preprocess: dict[str, Any] | None = None,
    postprocess: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    versions: dict[str, str] | None = None,
    created: str | None = None,
    golden: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of the converted model ``lite`` (validated; fields that are None left out).

    ``kind`` is the first input's ('image' inputs go through ``preprocess`` on the device, which is
    dropped for 'tensor' inputs); ``roles`` pairs with ``lite.outputs`` in order."""
    if len(roles) != len(lite.outputs):
        raise ModelError(
            f"{model_file}: {len(roles)} output role(s) for {len(lite.outputs)} output(s) (a builder bug)"
        )
    inputs = [
        {**_tensor_fields(t), "kind": kind if i == 0 else "tensor", "layout": input_layout(t.shape)}
        for i, t in enumerate(lite.inputs)
    ]
    outputs = [{**_tensor_fields(t), "role": role} for t, role in zip(lite.outputs, roles, strict=True)]
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA_ID,
        "name": name,
        "task": task,
        "model_file": model_file,
        "sha256": sha256,
        "mode": mode,
        "labels": labels,
        "inputs": inputs,
        "outputs": outputs,
        "preprocess": preprocess if kind == "image" else None,
        "postprocess": postprocess or {},
        "calibration": calibration,
        "evaluation": evaluation,
        "fallback": fallback,  # converter/diagnosis.py: layers kept in float by --fallback auto
        "converter": versions,
        "created": created or utc_now(),
        "golden": golden,  # converter/golden.py: a few evaluation inputs and the outputs they gave
    }
    manifest = {k: v for k, v in manifest.items() if v is not None}
    validate(manifest)
    return manifest


def build_for_file(tflite: Path, **fields: Any) -> dict[str, Any]:
    """``build`` for a .tflite already on disk: tensors, file name and sha256 are read from the file;
    ``name`` defaults to its stem."""
    fields.setdefault("name", tflite.stem)
    return build(lite=LiteModel(tflite), model_file=tflite.name, sha256=file_sha256(tflite), **fields)


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def write_beside(tflite: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as the .json beside ``tflite`` (where the device looks for it)."""
    path = manifest_path_for(tflite)
    path.write_bytes(dumps(manifest))
    return path


def _tensor_fields(t: Tensor) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
    if t.quantization() is not None:
        fields["quantization"] = t.quantization()
    return fields
