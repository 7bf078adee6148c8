"""Load a model with the lightest runtime available and run it: ``load_model(cfg) -> LoadedModel``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import DataError, ModelError
from edge_agent.manifest import InputSpec, Manifest, file_sha256, load_manifest, manifest_path_for
from edge_agent.runtime.backends import RuntimeApi, select_runtime
from edge_agent.runtime.config import ModelConfig
from edge_agent.runtime.delegates import edgetpu_model_path, load_edgetpu
from edge_agent.runtime.memory import release_mapped_file
from edge_agent.runtime.native_log import routine_native_lines_hidden
from edge_agent.runtime.synthesize import apply_overrides, synthesize_manifest
from edge_agent.runtime.tensors import op_names, producer_ops
from edge_agent.runtime.verify import match_tensors

log = logging.getLogger(__name__)

TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at bytes 4..8 of every .tflite


def default_num_threads() -> int:
    """The cores this process may run on (respects taskset/cgroup affinity), else os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LoadedModel:
    """A ready interpreter plus what it means: the effective manifest, backend and delegate in use."""

    def __init__(
        self,
        *,
        interpreter: Any,
        manifest: Manifest,
        api: RuntimeApi,
        path: Path,
        sha256: str,
        num_threads: int,
        delegate: str | None,
        delegate_error: str | None,
        input_index: int,
        output_indices: dict[str, int],
        ops: list[str] | None,
    ) -> None:
        self._interpreter = interpreter
        self.manifest = manifest
        self.backend = api.name
        self.runtime_version = api.version
        self.path = path
        self.sha256 = sha256
        self.num_threads = num_threads
        self.delegate = delegate
        self.delegate_error = delegate_error
        self.input: InputSpec = manifest.inputs[0]
        self.ops = ops
        self._input_index = input_index
        self._output_indices = output_indices  # role -> tensor index
        self._input_shape = tuple(self.input.shape)
        self._input_dtype = np.dtype(self.input.dtype)
        self.first_invoke_ms = self._settle()
        # packed by XNNPACK (or uploaded to the delegate) by now: the file's pages need not stay resident
        released = release_mapped_file(path)
        if released:
            log.debug("%s: released %.1f MB of mapped model file", path.name, released / 2**20)

    def _settle(self) -> float:
        """Run once on a zero input before handing out any view of the input.

        For models with dynamic-shaped tensors (Keras' Flatten exports SHAPE/RESHAPE ops) the first
        invoke re-plans the tensor arena and MOVES the input buffer; a view taken before it would write
        into freed memory. After this run the arena keeps its size, and the pipeline's first frame is no
        slower than the rest. Returns the time of this first invoke in ms.
        """
        buf = self._interpreter.tensor(self._input_index)()
        buf[...] = 0
        del buf
        t0 = time.perf_counter()
        self._invoke_native()
        elapsed = (time.perf_counter() - t0) * 1e3
        self._input_address = self._address()
        return elapsed

    def _address(self) -> int:
        return int(self._interpreter.tensor(self._input_index)().ctypes.data)

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.path.name}, task={self.manifest.task}, backend={self.backend}, "
            f"delegate={self.delegate}, threads={self.num_threads})"
        )

    def input_buffer(self) -> np.ndarray:
        """Writable view of the interpreter's input tensor: preprocess straight into it, no copy.

        The view stays valid across invoke() calls (the arena was settled at load; invoke() checks that
        the input did not move) until close() and the last view are gone."""
        self._check_open()
        return self._interpreter.tensor(self._input_index)()

    def invoke(self, x: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Run once. ``x`` is copied into the input first; None means input_buffer() is already filled.
        Returns copies of the outputs keyed by role."""
        self._check_open()
        if x is not None:
            x = np.asarray(x)
            if x.size != int(np.prod(self._input_shape)):
                raise DataError(
                    f"{self.path.name}: input has shape {x.shape}, the model needs {self._input_shape}"
                )
            if x.dtype != self._input_dtype:
                raise DataError(
                    f"{self.path.name}: input dtype {x.dtype}, the model needs {self._input_dtype} "
                    "(quantize it with edge_agent.processing.preprocess)"
                )
            buf = self._interpreter.tensor(self._input_index)()
            np.copyto(buf, x.reshape(self._input_shape))
            del buf
        self._invoke_native()
        if self._address() != self._input_address:  # never seen after _settle(); say so loudly if it happens
            log.error(
                "%s: the runtime moved the input tensor; views from input_buffer() taken before this "
                "invoke are stale: take a new one per frame",
                self.path.name,
            )
            self._input_address = self._address()
        return {role: self._interpreter.get_tensor(idx) for role, idx in self._output_indices.items()}

    def _invoke_native(self) -> None:
        # The Python wrapper refuses to invoke while any numpy view of its tensors is alive, because
        # tensors can move (allocate_tensors, or the first invoke of a model with dynamic shapes). We
        # never resize after loading and settled the arena in _settle(), so views from input_buffer()
        # stay valid (each holds a reference to the interpreter) and we call the C++ Invoke directly;
        # the public invoke() is the fallback for a runtime without it.
        native = getattr(self._interpreter, "_interpreter", None)
        if native is not None and hasattr(native, "Invoke"):
            native.Invoke()
        else:
            self._interpreter.invoke()

    def _check_open(self) -> None:
        if self._interpreter is None:
            raise ModelError(f"{self.path.name}: the model was closed")

    def close(self) -> None:
        """Drop the interpreter (views from input_buffer() keep its memory alive until they go)."""
        self._interpreter = None


def open_interpreter(api: RuntimeApi, path: Path, num_threads: int, delegates: list[Any]) -> Any:
    """An allocated interpreter, or a ModelError that names the file (runtimes raise bare ValueErrors)."""
    try:
        with routine_native_lines_hidden():
            interpreter = api.make_interpreter(str(path), num_threads=num_threads, delegates=delegates)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path}: the {api.name} runtime cannot load it ({str(exc).strip() or type(exc).__name__}); "
            "the file is damaged or needs ops this runtime lacks"
        ) from None
    return interpreter


def check_model_file(path: Path, named_by: str = "model.path") -> None:
    """A .tflite file is there (its identifier, not only its name): a runtime given anything else says
    "not a valid Flatbuffer buffer", or crashes."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found; check {named_by}")
    if not path.is_file():
        raise ModelError(f"{path}: not a file; {named_by} must name a .tflite file")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
        raise ModelError(f"{path}: not a TFLite model (no 'TFL3' identifier); is it a .tflite file?")


def load_model(cfg: ModelConfig, *, xnnpack: bool = True) -> LoadedModel:
    """Load, verify and allocate a model. ModelError/ConfigError/DependencyError say what to fix."""
    path = Path(cfg.path).expanduser()
    check_model_file(path)
    manifest_file = Path(cfg.manifest) if cfg.manifest else manifest_path_for(path)
    manifest: Manifest | None = None
    if cfg.manifest is not None or manifest_file.is_file():
        manifest = load_manifest(manifest_file, verify_sha256=False)
        if manifest.model_file != path.name:  # normal for deployed models (<sha256>.tflite): the sha decides
            log.debug(
                "%s names model file %s; checking it against %s",
                manifest_file,
                manifest.model_file,
                path.name,
            )
    sha256 = file_sha256(path)
    if manifest is not None and cfg.verify_sha256 and manifest.sha256 != sha256:
        raise ModelError(
            f"{path}: sha256 {sha256[:12]}... does not match its manifest {manifest_file.name} "
            f"({manifest.sha256[:12]}...); the model was replaced or damaged: "
            "copy the .tflite and .json together"
        )

    api = select_runtime(cfg.runtime)
    num_threads = cfg.num_threads or default_num_threads()
    delegate_name: str | None = None
    delegate_error: str | None = None
    run_path = path
    delegates: list[Any] = []
    if cfg.delegate == "edgetpu":
        loaded = load_edgetpu(api, cfg.edgetpu_device)
        if loaded.delegate is None:
            delegate_error = loaded.error
            log.warning("%s: running on the CPU: %s", path.name, delegate_error)
        else:
            delegates = [loaded.delegate]
            delegate_name = "edgetpu"
            variant = edgetpu_model_path(path)
            if variant is not None:
                run_path = variant
                check_model_file(run_path)
            else:
                log.warning(
                    "%s: no %s_edgetpu%s beside it; the Edge TPU runs only ops compiled for it",
                    path.name,
                    path.stem,
                    path.suffix,
                )

    try:
        interpreter = open_interpreter(api, run_path, num_threads, delegates)
    except ModelError as exc:
        if not delegates:
            raise
        # The delegate loaded but could not take this model (e.g. dynamic shapes): the CPU model still runs.
        delegate_name, delegates = None, []
        delegate_error = f"Edge TPU delegate rejected {run_path.name}: {exc}"
        log.warning("%s: running on the CPU: %s", path.name, delegate_error)
        run_path = path
        interpreter = open_interpreter(api, run_path, num_threads, delegates)
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if manifest is None:
        manifest = synthesize_manifest(cfg, path, sha256, inputs, outputs, producer_ops(interpreter))
        matched_inputs = [next(d for d in inputs if d["name"] == s.name) for s in manifest.inputs]
        matched_outputs = [next(d for d in outputs if d["name"] == s.name) for s in manifest.outputs]
    else:
        matched_inputs = match_tensors(list(manifest.inputs), inputs, "input", run_path)
        matched_outputs = match_tensors(list(manifest.outputs), outputs, "output", run_path)
        manifest = apply_overrides(manifest, cfg, path)
    if len(manifest.inputs) != 1:
        raise ModelError(f"{path}: has {len(manifest.inputs)} inputs; edge-agent runs single-input models")
    role_list = [o.role for o in manifest.outputs]
    if len(set(role_list)) != len(role_list):
        twice = sorted({r for r in role_list if role_list.count(r) > 1})
        raise ModelError(
            f"{path}: more than one output has role {', '.join(twice)}; each role names one tensor"
        )
    if run_path != path:
        sha256 = file_sha256(run_path)
    roles = {spec.role: int(d["index"]) for spec, d in zip(manifest.outputs, matched_outputs, strict=True)}
    model = LoadedModel(
        interpreter=interpreter,
        manifest=manifest,
        api=api,
        path=run_path,
        sha256=sha256,
        num_threads=num_threads,
        delegate=delegate_name,
        delegate_error=delegate_error,
        input_index=int(matched_inputs[0]["index"]),
        output_indices=roles,
        ops=op_names(interpreter),
    )
    log.info(
        "loaded %s (%s) with %s %s, %d thread(s)%s",
        run_path.name,
        manifest.task,
        api.name,
        api.version,
        num_threads,
        ", Edge TPU" if delegate_name else "",
    )
    return model
