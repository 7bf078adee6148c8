"""The model manifest (``model.json`` beside ``model.tflite``): the contract between converter and device.

The converter writes it; the daemon reads it so that a converted model needs no hand-written
preprocessing settings. This pydantic model is the single source of the JSON Schema shipped in
``edge_agent/schemas/manifest.schema.json`` (``python -m edge_agent.manifest`` regenerates it; a test
checks the two agree). The converter validates what it writes against that file, not this code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from edge_agent.errors import ModelError

MANIFEST_SCHEMA_ID = "edge-agent/manifest/1"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "manifest.schema.json"

Task = Literal["classification", "detection", "regression", "anomaly", "segmentation"]
Mode = Literal["int8", "float16", "dynamic", "int16x8", "float32"]
DType = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]
# What an output tensor means, so the device finds outputs by role, never by position.
OutputRole = Literal[
    "probabilities",  # classification, softmax already applied
    "logits",  # classification, softmax still to apply
    "boxes",  # SSD: [1, N, 4] as ymin, xmin, ymax, xmax
    "classes",  # SSD: [1, N]
    "scores",  # SSD: [1, N]
    "count",  # SSD: [1]
    "yolo",  # YOLO head: [1, N, 4+C] or [1, 4+C, N]
    "values",  # regression
    "reconstruction",  # anomaly: autoencoder output, compared with its input
    "anomaly_score",  # anomaly: the model outputs the score itself
    "mask",  # segmentation: [1, H, W, C] class scores or [1, H, W] class ids
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(_Strict):
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float = Field(gt=0, description="Real value of one quantization step.")
    zero_point: int = Field(description="Quantized value that represents real 0.0.")


class TensorSpec(_Strict):
    name: str = Field(description="Tensor name as the interpreter reports it.")
    shape: list[int] = Field(min_length=1, description="Shape with the batch dimension first.")
    dtype: DType
    quantization: Quantization | None = Field(
        default=None, description="Present for quantized (int8/uint8/int16) tensors."
    )


class InputSpec(TensorSpec):
    kind: Literal["image", "tensor"] = Field(
        default="tensor", description="'image': camera frames go through `preprocess`; 'tensor': raw arrays."
    )
    layout: Literal["NHWC", "NCHW", "NC", "NTC"] = Field(
        default="NHWC", description="Meaning of the axes of `shape`."
    )


class OutputSpec(TensorSpec):
    role: OutputRole = Field(description="What the tensor holds; the device looks outputs up by role.")


class Preprocess(_Strict):
    """How a camera frame becomes model input: value = (pixel * scale - mean) / std, per channel."""

    color: Literal["rgb", "bgr", "gray"] = Field(default="rgb", description="Channel order the model wants.")
    resize: Literal["stretch", "letterbox", "crop"] = Field(
        default="stretch", description="stretch: ignore aspect; letterbox: pad; crop: centre crop."
    )
    scale: float = Field(default=1.0, description="Multiplies the 0..255 pixels first (1/255 = 0.00392).")
    mean: list[float] = Field(default_factory=lambda: [0.0], description="Subtracted after scaling; 1 or C.")
    std: list[float] = Field(default_factory=lambda: [1.0], description="Divisor after the mean; 1 or C.")

    @model_validator(mode="after")
    def _std_nonzero(self) -> Preprocess:
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


GOLDEN_MAX_SAMPLES = 16
GOLDEN_MAX_INPUT_B64 = 350_000  # ~256 KiB of raw input: a 224x224x3 uint8 image is 147 KiB
GOLDEN_MAX_OUTPUT_VALUES = 100_000
_B64 = Annotated[str, StringConstraints(max_length=GOLDEN_MAX_INPUT_B64, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]


class GoldenSample(_Strict):
    """One evaluation input with the outputs the converted model gave for it (see edge_agent/fleet/golden.py,
    which checks a candidate model against them before a deployment swaps it in)."""

    input: _B64 = Field(description="base64 of the raw input tensor bytes (batch 1, model input dtype).")
    outputs: dict[
        Annotated[str, StringConstraints(max_length=256)],
        Annotated[list[float], Field(max_length=GOLDEN_MAX_OUTPUT_VALUES)],
    ] = Field(min_length=1, max_length=8, description="Output tensor name -> expected real values, flat.")


class GoldenSet(_Strict):
    tolerance: float | None = Field(
        default=None, ge=0, le=1e6, description="Absolute, in real output units (default: per output)."
    )
    samples: list[GoldenSample] = Field(min_length=1, max_length=GOLDEN_MAX_SAMPLES)
    note: str | None = Field(default=None, max_length=500, description="Why fewer samples were kept.")


class FallbackStep(_Strict):
    """One step of the search: a classifier's accuracy, or a regression model's error, with these layers
    in float."""

    float_layers: list[str] = Field(description="Layers in float at this step, in the order chosen.")
    accuracy: float | None = Field(default=None, ge=0, le=1, description="Top-1 accuracy on the --eval data.")
    accuracy_drop_points: float | None = None
    mae: float | None = Field(default=None, ge=0, description="Mean absolute error on the --eval data.")
    error_increase: float | None = Field(
        default=None, description="Over the float model's mean absolute error."
    )
    passed: bool


class ThreeWay(_Strict):
    float32: float = Field(description="The float32 .tflite.")
    int8: float = Field(description="Full int8, every layer quantized.")
    mixed: float = Field(description="This model: int8 with the float layers.")


class FloatFallback(_Strict):
    """What ``edge-convert quantize --fallback auto`` did after full int8 failed the quality gate: the
    layers it kept in float, one step at a time (converter/diagnosis.py). ai-edge-litert runs the mix."""

    float_layers: list[str] = Field(description="Keras layers kept in float, in the order chosen.")
    float_nodes: list[str] = Field(description="Their TFLite op output tensors (the quantizer's denylist).")
    max_float_layers: int = Field(ge=1, description="The budget (--max-float-layers).")
    all_float: bool = Field(description="Every quantized layer was tried in float.")
    passed: bool = Field(description="The quality gate passed with this mix.")
    steps: list[FallbackStep] = Field(min_length=1)
    size_bytes: ThreeWay
    latency_ms: ThreeWay = Field(description="Median single-sample latency on the converting machine.")


class Manifest(_Strict):
    schema_id: Literal["edge-agent/manifest/1"] = Field(alias="schema", default=MANIFEST_SCHEMA_ID)
    name: str = Field(description="Model name, shown in every result payload.")
    task: Task
    model_file: str = Field(description="File name of the .tflite beside this manifest.")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] = Field(description="sha256 of the .tflite.")
    mode: Mode | None = Field(default=None, description="Quantization mode the converter used.")
    labels: list[str] | None = Field(default=None, description="Class names, index = class id.")
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    preprocess: Preprocess | None = Field(default=None, description="Required when an input is an 'image'.")
    postprocess: dict[str, Any] = Field(
        default_factory=dict,
        description="Options for the task's postprocessor (threshold, top_k, names, units...).",
    )
    calibration: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    converter: dict[str, str] | None = Field(default=None, description="edge-agent and TensorFlow versions.")
    created: str | None = Field(default=None, description="ISO 8601 UTC time of conversion.")
    fallback: FloatFallback | None = Field(
        default=None, description="Layers kept in float because full int8 failed the quality gate."
    )
    golden: GoldenSet | None = Field(
        default=None,
        description="A few evaluation inputs and the outputs this model gave for them: a device reproduces "
        "them before a fleet deployment swaps the model in (edge_agent/fleet/golden.py).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _image_needs_preprocess(self) -> Manifest:
        if any(i.kind == "image" for i in self.inputs) and self.preprocess is None:
            raise ValueError("an input of kind 'image' needs a 'preprocess' section")
        return self

    def output(self, role: str) -> OutputSpec | None:
        return next((o for o in self.outputs if o.role == role), None)


def manifest_path_for(model_path: Path) -> Path:
    """``door.tflite`` -> ``door.json`` (the converter writes the manifest beside the model)."""
    return model_path.with_suffix(".json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path: Path, *, verify_sha256: bool = True) -> Manifest:
    """Read and validate a manifest; with ``verify_sha256`` check the model file it names."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{path}: manifest not found; write one with edge-convert or configure the model fields"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{path}: not a readable JSON manifest ({exc}); re-create it with edge-convert"
        ) from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ModelError(
            f"{path}: invalid manifest field '{where}': {first['msg']} "
            f"({exc.error_count()} problem(s)); re-create it with edge-convert"
        ) from None
    if verify_sha256:
        model_file = path.parent / manifest.model_file
        if not model_file.is_file():
            raise ModelError(f"{path}: names model file '{manifest.model_file}', which is not beside it")
        actual = file_sha256(model_file)
        if actual != manifest.sha256:
            raise ModelError(
                f"{model_file}: sha256 {actual[:12]}... does not match its manifest "
                f"({manifest.sha256[:12]}...); the model was replaced or damaged: "
                "copy the .tflite and .json together again"
            )
    return manifest


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$id"] = MANIFEST_SCHEMA_ID
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":  # regenerate the shipped schema file
    SCHEMA_FILE.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_FILE}")
