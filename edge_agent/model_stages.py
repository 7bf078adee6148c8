"""A loaded model with the pre- and postprocessor made for it (``ModelStages``), what the rest of the daemon
needs to know about it (``ModelInfo``), and what one run of a frame through it gives (``StageResult``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from edge_agent.errors import ModelError
from edge_agent.publish.payloads import SHA256_PREFIX
from edge_agent.sources.base import DataKind

if TYPE_CHECKING:
    from edge_agent.model_loader import LoadedFrom
    from edge_agent.runtime.model import LoadedModel


@dataclass(frozen=True)
class ModelInfo:
    """Which model runs, where: for logs, payloads and the stats topic."""

    name: str
    sha256: str
    backend: str
    delegate: str | None = None
    delegate_error: str | None = None
    path: str | None = None

    @classmethod
    def of(cls, model: LoadedModel) -> ModelInfo:
        return cls(
            name=model.manifest.name,
            sha256=model.sha256,
            backend=model.backend,
            delegate=model.delegate,
            delegate_error=model.delegate_error,
            path=str(model.path),
        )

    @property
    def short_sha(self) -> str:
        return self.sha256[:SHA256_PREFIX]  # as in result payloads

    def describe(self) -> str:
        """``name (sha256 0123456789ab)``"""
        return f"{self.name} (sha256 {self.short_sha})"

    def as_stats(self) -> dict[str, Any]:
        """The ``model`` object of a pipeline's stats entry."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "backend": self.backend,
            "delegate": self.delegate,
            "delegate_error": self.delegate_error,
        }


class StageResult(NamedTuple):
    """One frame through the model; the times are ``time.monotonic()``."""

    result: Any  # the postprocessor's result (label, score, to_fields())
    preprocess_ms: float
    t_invoke_start: float
    t_invoke_end: float
    t_postprocess_end: float


class ModelStages:
    """A model with the pre- and postprocessor made for it. Built (and checked against the source's kind of
    data) before it replaces a running model, so a reload that does not fit fails before the swap."""

    def __init__(self, model: LoadedModel, data_kind: DataKind, options: dict | None = None):
        from edge_agent.processing.postprocess import create_postprocessor
        from edge_agent.processing.preprocess import ImagePreprocessor, TensorPreprocessor

        self.model = model
        self.data_kind: DataKind = data_kind
        spec = model.input
        manifest = model.manifest
        if data_kind == "image":
            if spec.kind != "image":
                raise ModelError(
                    f"model {model.path}: its input is a tensor {spec.shape}, but the source is a camera; "
                    "use a sensor source, or set model.input_kind: image (with model.preprocess)"
                )
            if manifest.preprocess is None:
                raise ModelError(f"model {model.path}: an image input needs a 'preprocess' section")
            self.image_pre: Any = ImagePreprocessor(spec, manifest.preprocess)
            self._prepare_pre = ImagePreprocessor(spec, manifest.preprocess)
            self.tensor_pre: Any = None
        else:
            if spec.kind == "image":
                raise ModelError(
                    f"model {model.path}: its input is an image {spec.shape}, but the source gives sensor "
                    "samples; use a camera source, or set model.input_kind: tensor"
                )
            self.image_pre = None
            self.tensor_pre = TensorPreprocessor(spec)
        self.post = create_postprocessor(manifest, options or None)
        self.wants_input = manifest.output("reconstruction") is not None
        self.info = ModelInfo.of(model)
        self.loaded_from: LoadedFrom | None = None  # set by the ModelLoader: a reload compares against it

    def check_fits(self, data_kind: DataKind, sample_shape: tuple[int, ...] | None) -> None:
        """Raise ModelError unless this model takes data of ``data_kind`` (and, for samples, windows of
        ``sample_shape`` when known): images are resized to any input, windows must have its size."""
        if data_kind != self.data_kind:
            raise ModelError(
                f"model {self.info.describe()} was built for {self.data_kind} data, but the source gives "
                f"{data_kind}"
            )
        if self.tensor_pre is not None and sample_shape is not None:
            size = int(np.prod(sample_shape))
            if size != self.tensor_pre.size:
                raise ModelError(
                    f"model {self.info.describe()}: its input {list(self.tensor_pre.shape)} takes "
                    f"{self.tensor_pre.size} values, but the source's windows have shape "
                    f"{list(sample_shape)} ({size} values); change the window or the model"
                )

    def check_window(self, size: int, channels: int | None) -> None:
        """Raise ModelError unless windows of ``size`` samples (of ``channels`` values, when the config says)
        fill this model's input exactly, saying which window would. Caught at start, reload and deployment,
        not as a warning per window after the daemon has started (a user got exit 0 and no results)."""
        if self.tensor_pre is None:
            return
        want = self.tensor_pre.size
        shape = list(self.tensor_pre.shape)
        if channels is not None:
            if size * channels == want:
                return
            fits = f"window size {want // channels}" if want % channels == 0 else f"{want} values per window"
            raise ModelError(
                f"model {self.info.describe()}: its input {shape} takes {want} values, but a window of "
                f"{size} samples x {channels} channels has {size * channels}; {fits} would fit"
            )
        if want % size == 0:
            return
        inner = [d for d in shape[1:] if d > 1]
        hint = (
            f"e.g. window size {inner[0]} with {want // inner[0]} channel(s)"
            if inner and want % inner[0] == 0
            else f"a window size that divides {want}"
        )
        raise ModelError(
            f"model {self.info.describe()}: its input {shape} takes {want} values, which windows of {size} "
            f"samples cannot fill for any number of channels; {hint} would fit"
        )

    def prepare(self, image: np.ndarray) -> PreparedInput:
        """The model input for ``image``, in a buffer of its own: run on the source's thread (see
        ``Source.set_preparer``) with a preprocessor of its own, so it never races the inference thread's."""
        t0 = time.monotonic()
        tensor = np.empty(self.model.input.shape, dtype=self._prepare_pre.dtype)
        transform = self._prepare_pre(image, out=tensor)
        return PreparedInput(self, tensor, transform, (time.monotonic() - t0) * 1000.0)

    def run(self, data: np.ndarray, prepared: PreparedInput | None = None) -> StageResult:
        """Preprocess ``data`` into the input buffer (or copy what the source's thread ``prepared`` from it
        for this model), invoke, postprocess."""
        from edge_agent.processing.postprocess import PostContext

        model = self.model
        t0 = time.monotonic()
        buf = model.input_buffer()
        pre_ms = 0.0
        if self.image_pre is not None:
            if prepared is not None and prepared.stages is self:
                # a memoryview copy keeps the GIL (np.copyto drops and re-takes it: 10% of the loop's time
                # went to waiting for it again while other threads held it)
                memoryview(buf).cast("B")[:] = memoryview(prepared.tensor).cast("B")
                transform, pre_ms = prepared.transform, prepared.ms
            else:
                transform = self.image_pre(data, out=buf)
            model_input = self.image_pre.to_float(data)[0] if self.wants_input else None
        else:
            transform = None
            model_input = np.asarray(data, dtype=np.float32)
            self.tensor_pre(model_input, out=buf)
        t_pre = time.monotonic()
        outputs = model.invoke()
        t_inv = time.monotonic()
        result = self.post(outputs, PostContext(transform=transform, model_input=model_input))
        return StageResult(result, pre_ms + (t_pre - t0) * 1000.0, t_pre, t_inv, time.monotonic())


@dataclass(frozen=True)
class PreparedInput:
    """A frame already turned into the input of ``stages``' model (by the source's thread)."""

    stages: ModelStages
    tensor: np.ndarray
    transform: Any
    ms: float  # time it took
