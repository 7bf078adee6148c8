"""Write ``model.json``: what the device needs to run the converted model without hand-written settings.

Tensors come from the converted file as ai-edge-litert reports them (names, shapes, dtypes, scale and
zero point), not from the Keras model. The result is validated against the shipped JSON Schema file,
the same contract ``edge_agent`` reads, before anything is written.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import numpy as np

from converter.litert import LiteModel, Tensor
from edge_agent.errors import ConfigError, ModelError

SCHEMA_ID = "edge-agent/manifest/1"
ROLES = (
    "probabilities", "logits", "boxes", "classes", "scores", "count", "yolo",
    "values", "reconstruction", "anomaly_score", "mask",
)  # fmt: skip


def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("edge_agent").joinpath("schemas/manifest.schema.json").read_text())


def validate(manifest: dict[str, Any]) -> None:
    """ModelError when ``manifest`` does not satisfy the schema file (a converter bug, not the user's)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(top level)"
        raise ModelError(
            f"the manifest edge-convert built is invalid at {where}: {first.message} (please report this)"
        )


def input_kind(shape: tuple[int, ...]) -> str:
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


def parse_role_overrides(items: tuple[str, ...], outputs: list[Tensor]) -> dict[int, str]:
    """``NAME=ROLE`` or ``INDEX=ROLE`` -> output index -> role."""
    result: dict[int, str] = {}
    for item in items:
        key, sep, role = item.partition("=")
        if not sep or role not in ROLES:
            raise ConfigError(
                f"--output-role {item!r}: expected NAME=ROLE with ROLE one of {', '.join(ROLES)}"
            )
        index = next((i for i, t in enumerate(outputs) if t.name == key), None)
        if index is None and key.isdigit() and int(key) < len(outputs):
            index = int(key)
        if index is None:
            names = ", ".join(f"{i}={t.name}" for i, t in enumerate(outputs))
            raise ConfigError(f"--output-role {item!r}: the model has no output {key!r} (outputs: {names})")
        result[index] = role
    return result


def guess_roles(
    task: str,
    lite: LiteModel,
    softmax_head: bool,
    sample_outputs: list[np.ndarray] | None,
    overrides: dict[int, str],
) -> list[str]:
    """The role of each TFLite output, by task and shape; overrides win. ConfigError when it cannot tell."""
    outputs, in_shape = lite.outputs, lite.inputs[0].shape
    if len(overrides) == len(outputs):
        return [overrides[i] for i in range(len(outputs))]
    roles: list[str | None] = [None] * len(outputs)
    if task == "classification":
        roles = ["probabilities" if softmax_head else "logits" for _ in outputs]
    elif task == "regression":
        roles = ["values" for _ in outputs]
    elif task == "segmentation":
        roles = ["mask" for _ in outputs]
    elif task == "anomaly":
        roles = ["reconstruction" if t.shape == in_shape else "anomaly_score" for t in outputs]
    elif task == "detection":
        roles = _detection_roles(outputs, sample_outputs)
    roles = [overrides.get(i, r) for i, r in enumerate(roles)]
    unknown = [outputs[i].name for i, r in enumerate(roles) if r is None]
    if unknown:
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in outputs)
        raise ConfigError(
            f"cannot tell the role of output(s) {', '.join(unknown)} for task {task} (outputs: {shapes}); "
            "name them with --output-role NAME=ROLE"
        )
    if task == "classification" and len(outputs) > 1 and not overrides:
        raise ConfigError(
            f"the classification model has {len(outputs)} outputs; "
            "say which is which with --output-role NAME=ROLE"
        )
    return [r for r in roles if r is not None]


def _detection_roles(outputs: list[Tensor], sample_outputs: list[np.ndarray] | None) -> list[str | None]:
    """SSD post-processed heads (boxes [1,N,4], classes [1,N], scores [1,N], count [1]) or one YOLO tensor."""
    if len(outputs) == 1 and len(outputs[0].shape) == 3 and max(outputs[0].shape[1:]) > 4:
        return ["yolo"]
    roles: list[str | None] = [None] * len(outputs)
    pair = []
    for i, t in enumerate(outputs):
        if len(t.shape) == 3 and t.shape[-1] == 4:
            roles[i] = "boxes"
        elif len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1):
            roles[i] = "count"
        elif len(t.shape) == 2:
            pair.append(i)
    if len(pair) == 2:

        def integral(i: int) -> bool:
            if sample_outputs is None:
                return "class" in outputs[i].name.lower()
            return bool(np.all(np.equal(np.mod(sample_outputs[i], 1), 0)))

        classes = pair[0] if integral(pair[0]) or not integral(pair[1]) else pair[1]
        roles[classes] = "classes"
        roles[pair[1] if classes == pair[0] else pair[0]] = "scores"
    return roles


def check_labels(labels: list[str] | None, task: str, lite: LiteModel, roles: list[str], source: str) -> None:
    """The number of labels must be the number of classes the model outputs."""
    if not labels:
        return
    for tensor, role in zip(lite.outputs, roles, strict=False):
        if (task == "classification" and role in ("probabilities", "logits")) or (
            task == "segmentation" and role == "mask" and len(tensor.shape) == 4
        ):
            classes = tensor.shape[-1]
            if len(labels) != classes:
                raise ConfigError(
                    f"--labels {source}: has {len(labels)} labels but the model outputs {classes} classes; "
                    "give one label per class, one per line, in class-index order"
                )


def build(
    *,
    name: str,
    task: str,
    lite: LiteModel,
    model_file: str,
    sha256: str,
    mode: str,
    labels: list[str] | None,
    kind: str,
    preprocess: dict[str, Any] | None,
    roles: list[str],
    postprocess: dict[str, Any],
    calibration: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    versions: dict[str, str],
) -> dict[str, Any]:
    inputs = []
    for i, t in enumerate(lite.inputs):
        inputs.append(
            {
                **_tensor_fields(t),
                "kind": kind if i == 0 else "tensor",
                "layout": input_layout(t.shape),
            }
        )
    outputs = [{**_tensor_fields(t), "role": role} for t, role in zip(lite.outputs, roles, strict=False)]
    manifest: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "name": name,
        "task": task,
        "model_file": model_file,
        "sha256": sha256,
        "mode": mode,
        "labels": labels,
        "inputs": inputs,
        "outputs": outputs,
        "preprocess": preprocess if kind == "image" else None,
        "postprocess": postprocess,
        "calibration": calibration,
        "evaluation": evaluation,
        "converter": versions,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return {k: v for k, v in manifest.items() if v is not None}


def _tensor_fields(t: Tensor) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
    if t.quantization() is not None:
        fields["quantization"] = t.quantization()
    return fields
