"""Output roles: what each output tensor of a converted model holds (probabilities, boxes, mask...),
guessed from the task and the tensors' shapes, or named by the user with ``--output-role``; and the
check that the labels fit the class outputs."""

from __future__ import annotations

from typing import get_args

import numpy as np

from converter.litert import LiteModel, Tensor
from edge_agent.errors import ConfigError
from edge_agent.manifest import OutputRole

ROLES: tuple[str, ...] = get_args(OutputRole)  # the manifest's own list: one definition


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
