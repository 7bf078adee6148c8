"""Configuration of one model: which file, which runtime, and the manifest fields for a plain .tflite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.manifest import OutputRole, Preprocess, Task

RuntimeName = Literal["auto", "litert", "tflite-runtime", "tensorflow"]


class ModelConfig(BaseModel):
    """A model to load. With a manifest beside the file (``door.tflite`` + ``door.json``) only ``path``
    is needed; for a plain ``.tflite`` from elsewhere give ``task`` and the fields below. Fields set here
    override the manifest's."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="The .tflite file.")
    manifest: Path | None = Field(
        default=None, description="Manifest file; default: the .json beside the model, when present."
    )
    runtime: RuntimeName = Field(
        default="auto", description="auto = ai-edge-litert, then tflite-runtime, then tensorflow.lite."
    )
    num_threads: int | None = Field(default=None, ge=1, le=64, description="Default: usable CPU cores.")
    delegate: Literal["none", "edgetpu"] = Field(
        default="none", description="edgetpu: load libedgetpu.so.1; runs on the CPU when it cannot load."
    )
    edgetpu_device: str | None = Field(default=None, description="e.g. 'usb:0', 'pci:0'; default: the first.")
    task: Task | None = Field(default=None, description="Required without a manifest.")
    labels: list[str] | None = Field(default=None, description="Class names, or see labels_file.")
    labels_file: Path | None = Field(default=None, description="One label per line.")
    input_kind: Literal["image", "tensor"] | None = Field(
        default=None, description="Without a manifest: 'image' for camera models (default for a 4-D input)."
    )
    preprocess: Preprocess | None = Field(default=None, description="Without a manifest: frame prep.")
    output_roles: dict[str, OutputRole] | None = Field(
        default=None, description="Without a manifest: tensor name -> role; default: guessed from the shapes."
    )
    postprocess: dict[str, Any] = Field(
        default_factory=dict, description="Postprocessor options (top_k, threshold, names, units, nms_iou)."
    )
    verify_sha256: bool = Field(default=True, description="Check the sha256 in the manifest.")
