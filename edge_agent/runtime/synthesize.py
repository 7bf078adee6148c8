"""The effective manifest: read from the file, or made from ModelConfig + the model's real tensors.

A plain ``.tflite`` from elsewhere runs with ``task`` (and labels) in the config; what the manifest would
say about tensors comes from the interpreter, output roles from the config or guessed per task from
shapes and the ops that produce them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import ConfigError, ModelError
from edge_agent.manifest import MANIFEST_SCHEMA_ID, InputSpec, Manifest, OutputSpec, Preprocess
from edge_agent.runtime.config import ModelConfig
from edge_agent.runtime.tensors import spec_of

log = logging.getLogger(__name__)

SSD_OUTPUT_ROLES = ("boxes", "classes", "scores", "count")  # TFLite_Detection_PostProcess output order


def read_labels(cfg: ModelConfig) -> list[str] | None:
    if cfg.labels is not None:
        return list(cfg.labels)
    if cfg.labels_file is None:
        return None
    try:
        lines = cfg.labels_file.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"model.labels_file: cannot read {cfg.labels_file} ({exc.strerror})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def _input_spec(detail: dict[str, Any], kind: str | None) -> InputSpec:
    spec = spec_of(detail)
    shape = spec.shape
    if len(shape) == 4:
        layout = "NCHW" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "NHWC"
        channels = shape[1] if layout == "NCHW" else shape[3]
        kind = kind or ("image" if channels in (1, 3) else "tensor")
    else:
        layout = {2: "NC", 3: "NTC"}.get(len(shape), "NC")
        kind = kind or "tensor"
    return InputSpec(**spec.model_dump(), kind=kind, layout=layout)


def default_preprocess(inp: InputSpec) -> Preprocess:
    """A guess for a camera model without settings: uint8 models take raw pixels, others 0..1."""
    channels = inp.shape[1] if inp.layout == "NCHW" else inp.shape[-1]
    color = "gray" if channels == 1 else "rgb"
    q = inp.quantization
    if inp.dtype == "uint8" and q is not None:
        # value = pixel*scale - mean quantizes back to the pixel itself
        pre = Preprocess(color=color, scale=q.scale, mean=[q.scale * q.zero_point])
    else:
        pre = Preprocess(color=color, scale=1 / 255)
    log.info(
        "no preprocess configured: assuming %s; set model.preprocess if the model expects otherwise",
        pre.model_dump(),
    )
    return pre


def guess_roles(
    task: str,
    outputs: list[dict[str, Any]],
    input_shape: list[int],
    producers: dict[int, tuple[str, int]],
    model_path: Path,
) -> dict[str, str]:
    """Tensor name -> role from shapes and producing ops; ConfigError asking for output_roles when unsure."""
    by_name = {d["name"]: d for d in outputs}

    def ask(why: str) -> ConfigError:
        listing = ", ".join(f"{n} {list(d['shape'])}" for n, d in by_name.items())
        return ConfigError(
            f"model.output_roles: {model_path} has outputs {listing}; {why}: "
            "set model.output_roles (tensor name -> role)"
        )

    if task == "classification":
        if len(outputs) != 1:
            raise ask("a classifier should have one output")
        d = outputs[0]
        op = producers.get(int(d["index"]), ("", 0))[0]
        return {d["name"]: "probabilities" if op in ("SOFTMAX", "LOGISTIC") or not producers else "logits"}
    if task == "detection":
        if len(outputs) == 1:
            return {outputs[0]["name"]: "yolo"}
        if len(outputs) == 4:
            ssd = {}
            for d in outputs:
                op, pos = producers.get(int(d["index"]), ("", -1))
                if op == "TFLite_Detection_PostProcess" and 0 <= pos < 4:
                    ssd[d["name"]] = SSD_OUTPUT_ROLES[pos]
            if len(set(ssd.values())) == 4:
                return ssd
            raise ask("the SSD outputs are not written by TFLite_Detection_PostProcess")
        raise ask("detection needs one YOLO output or the four SSD outputs")
    if task == "regression":
        if len(outputs) != 1:
            raise ask("a regression model should have one output")
        return {outputs[0]["name"]: "values"}
    if task == "anomaly":
        if len(outputs) != 1:
            raise ask("an anomaly model should have one output")
        d = outputs[0]
        shape = [int(s) for s in d["shape"]]
        if shape == list(input_shape):
            return {d["name"]: "reconstruction"}
        if math.prod(shape) == 1:
            return {d["name"]: "anomaly_score"}
        raise ask("the output is neither the input's shape (reconstruction) nor a single score")
    if task == "segmentation":
        if len(outputs) != 1:
            raise ask("a segmentation model should have one output")
        return {outputs[0]["name"]: "mask"}
    raise ask(f"unknown task {task}")


def synthesize_manifest(
    cfg: ModelConfig,
    path: Path,
    sha256: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    producers: dict[int, tuple[str, int]],
) -> Manifest:
    if cfg.task is None:
        raise ConfigError(
            f"model.task: {path} has no manifest ({path.with_suffix('.json').name}); set model.task "
            "(classification, detection, regression, anomaly, segmentation) or convert it with edge-convert"
        )
    input_specs = [_input_spec(d, cfg.input_kind if i == 0 else None) for i, d in enumerate(inputs)]
    if cfg.output_roles is not None:
        names = {d["name"] for d in outputs}
        unknown = sorted(set(cfg.output_roles) - names)
        if unknown:
            raise ConfigError(
                f"model.output_roles: {', '.join(unknown)} not outputs of {path} "
                f"(its outputs: {', '.join(sorted(names))})"
            )
        roles = dict(cfg.output_roles)
    else:
        roles = guess_roles(cfg.task, outputs, input_specs[0].shape, producers, path)
    output_specs = [
        OutputSpec(**spec_of(d).model_dump(), role=roles[d["name"]]) for d in outputs if d["name"] in roles
    ]
    preprocess = cfg.preprocess
    if preprocess is None and input_specs[0].kind == "image":
        preprocess = default_preprocess(input_specs[0])
    try:
        return Manifest.model_validate(
            {
                "schema": MANIFEST_SCHEMA_ID,
                "name": path.stem,
                "task": cfg.task,
                "model_file": path.name,
                "sha256": sha256,
                "labels": read_labels(cfg),
                "inputs": [s.model_dump() for s in input_specs],
                "outputs": [s.model_dump() for s in output_specs],
                "preprocess": preprocess,
                "postprocess": dict(cfg.postprocess),
            }
        )
    except ValidationError as exc:
        raise ModelError(
            f"{path}: cannot describe this model from the config: {exc.errors()[0]['msg']}"
        ) from None


def apply_overrides(manifest: Manifest, cfg: ModelConfig, path: Path) -> Manifest:
    """Fields set in the config win over the manifest's (labels, preprocess, roles, postprocess options)."""
    data = manifest.model_dump(by_alias=True)
    given = cfg.model_fields_set
    if "task" in given and cfg.task is not None:
        data["task"] = cfg.task
    if ("labels" in given and cfg.labels is not None) or (
        "labels_file" in given and cfg.labels_file is not None
    ):
        data["labels"] = read_labels(cfg)
    if "preprocess" in given and cfg.preprocess is not None:
        data["preprocess"] = cfg.preprocess.model_dump()
    if "input_kind" in given and cfg.input_kind is not None:
        data["inputs"][0]["kind"] = cfg.input_kind
    if cfg.output_roles:
        names = {o["name"] for o in data["outputs"]}
        unknown = sorted(set(cfg.output_roles) - names)
        if unknown:
            raise ConfigError(
                f"model.output_roles: {', '.join(unknown)} not outputs of {path} "
                f"(its outputs: {', '.join(sorted(names))})"
            )
        for o in data["outputs"]:
            o["role"] = cfg.output_roles.get(o["name"], o["role"])
    if cfg.postprocess:
        data["postprocess"] = {**data.get("postprocess", {}), **cfg.postprocess}
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"model: the config's overrides make the manifest invalid: {exc.errors()[0]['msg']}"
        ) from None
