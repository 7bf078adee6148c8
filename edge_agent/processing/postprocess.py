"""Postprocessors: raw output tensors -> an immutable result a person can read.

One module per kind, registered in ``POSTPROCESSORS`` (name -> "module:Class", imported lazily). A user
adds a head without forking through the entry-point group ``edge_agent.postprocessors``::

    [project.entry-points."edge_agent.postprocessors"]
    my_head = "my_package.heads:MyHead"

and ``postprocess: {type: my_head, ...}`` in the model config. A postprocessor class is built as
``cls(manifest, options)`` and called as ``pp(outputs_by_role, PostContext(...)) -> Result``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.errors import ConfigError, ModelError
from edge_agent.manifest import Manifest, OutputSpec
from edge_agent.processing.preprocess import FrameTransform
from edge_agent.processing.quantization import dequantize

ENTRY_POINT_GROUP = "edge_agent.postprocessors"
POSTPROCESSORS: dict[str, str] = {
    "classification": "edge_agent.processing.classification:ClassificationPostprocessor",
    "detection": "edge_agent.processing.detection:DetectionPostprocessor",
    "regression": "edge_agent.processing.regression:RegressionPostprocessor",
    "anomaly": "edge_agent.processing.anomaly:AnomalyPostprocessor",
    "segmentation": "edge_agent.processing.segmentation:SegmentationPostprocessor",
}


@dataclass(frozen=True)
class PostContext:
    """What a postprocessor may need besides the outputs: the frame geometry and the model's input."""

    transform: FrameTransform | None = None  # image models: undo resize/letterbox for boxes
    model_input: np.ndarray | None = None  # the (quantized) input that was fed, for reconstruction scores


@runtime_checkable
class Result(Protocol):
    label: str | None
    score: float | None

    def to_fields(self) -> dict[str, Any]: ...


class Postprocessor(Protocol):
    def __call__(self, outputs: Mapping[str, np.ndarray], ctx: PostContext) -> Result: ...


class PostprocessOptions(BaseModel):
    """Base of every postprocessor's options: unknown keys are an error, so a typo is caught at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BasePostprocessor:
    """Shared plumbing: option validation, finding outputs by role, dequantizing them."""

    Options: ClassVar[type[PostprocessOptions]] = PostprocessOptions
    name: ClassVar[str] = "postprocessor"

    def __init__(self, manifest: Manifest, options: Mapping[str, Any] | None = None) -> None:
        self.manifest = manifest
        self.options = validate_options(self.Options, options or {}, self.name)
        self.labels = list(manifest.labels) if manifest.labels else None

    def spec(self, role: str) -> OutputSpec:
        spec = self.manifest.output(role)
        if spec is None:
            roles = ", ".join(o.role for o in self.manifest.outputs)
            raise ModelError(
                f"model '{self.manifest.name}': the {self.name} postprocessor needs an output with role "
                f"'{role}', the model has {roles}; set model.output_roles"
            )
        return spec

    def first_spec(self, *roles: str) -> OutputSpec:
        for role in roles:
            spec = self.manifest.output(role)
            if spec is not None:
                return spec
        return self.spec(" or ".join(roles))

    def raw(self, outputs: Mapping[str, np.ndarray], role: str) -> np.ndarray:
        """The output with ``role`` as the model gave it (quantized or not)."""
        try:
            return outputs[role]
        except KeyError:
            raise ModelError(f"model '{self.manifest.name}': no '{role}' output was produced") from None

    def real(self, outputs: Mapping[str, np.ndarray], role: str) -> np.ndarray:
        """The output with ``role`` as float32 reals (dequantized with its own scale and zero point)."""
        return dequantize(self.raw(outputs, role), self.spec(role).quantization)

    def label_for(self, class_id: int) -> str:
        if self.labels is not None and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return str(class_id)


def validate_options(model: type[BaseModel], options: Mapping[str, Any], what: str) -> Any:
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(options)"
        known = ", ".join(model.model_fields)
        bad = f" (got {err['input']!r})" if "input" in err and err["type"] != "extra_forbidden" else ""
        raise ConfigError(
            f"postprocess.{where}: {err['msg']}{bad}; the {what} postprocessor takes: {known or 'no options'}"
        ) from None


def _load(target: str, name: str) -> Callable[..., Postprocessor]:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"postprocess.type: '{name}' points at {target}, which cannot be imported ({exc})"
        ) from None


def postprocessor_names() -> list[str]:
    plugins = [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(set(POSTPROCESSORS) | set(plugins))


def resolve_postprocessor(name: str) -> Callable[..., Postprocessor]:
    """A built-in by name, else an installed plugin from the entry-point group."""
    if name in POSTPROCESSORS:
        return _load(POSTPROCESSORS[name], name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _load(ep.value, name)
    raise ConfigError(
        f"postprocess.type: unknown postprocessor '{name}'; available: {', '.join(postprocessor_names())} "
        f"(plugins register under the entry-point group '{ENTRY_POINT_GROUP}')"
    )


def create_postprocessor(manifest: Manifest, options: Mapping[str, Any] | None = None) -> Postprocessor:
    """The postprocessor for a model: ``options['type']`` or the manifest's task, with the manifest's
    ``postprocess`` options overridden by ``options``."""
    merged = {**manifest.postprocess, **(options or {})}
    name = merged.pop("type", None) or manifest.task
    factory = resolve_postprocessor(str(name))
    return factory(manifest, merged)
