"""Runtime selection: which TFLite interpreter package runs the model.

Each backend lives in its own module (litert, tflite_runtime, tensorflow) and imports its package only
when chosen, so ``edge_agent`` never pays for (or drags in) TensorFlow unless the user asks for it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import ConfigError, DependencyError

log = logging.getLogger(__name__)

# name -> (module in edge_agent.runtime, package that must import, distributions that give the version)
BACKENDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "litert": ("litert", "ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
    "tflite-runtime": ("tflite_runtime", "tflite_runtime", ("tflite-runtime", "tflite-runtime-nightly")),
    "tensorflow": (
        "tensorflow",
        "tensorflow",
        ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-aarch64"),
    ),
}
AUTO_ORDER = ("litert", "tflite-runtime", "tensorflow")


@dataclass(frozen=True)
class RuntimeApi:
    """The few entry points of a TFLite Python package that edge_agent uses; all three share this API."""

    name: str
    version: str
    interpreter_class: Any
    load_delegate: Callable[..., Any]
    op_resolver_type: Any  # the package's OpResolverType enum

    def make_interpreter(
        self, model_path: str, *, num_threads: int, delegates: list[Any] | None = None, xnnpack: bool = True
    ) -> Any:
        """An interpreter for ``model_path``; ``xnnpack=False``: builtin kernels, no default delegates."""
        resolver = (
            self.op_resolver_type.AUTO if xnnpack else self.op_resolver_type.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        return self.interpreter_class(
            model_path=model_path,
            num_threads=num_threads,
            experimental_delegates=delegates or None,
            experimental_op_resolver_type=resolver,
        )


def _version(distributions: tuple[str, ...]) -> str:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def available_runtimes() -> dict[str, str | None]:
    """Runtime name -> installed version, or None when its package is absent.

    Decided from the installed package metadata without importing anything, so asking never imports
    TensorFlow (which takes seconds and hundreds of MB).
    """
    found: dict[str, str | None] = {}
    for name, (_, package, dists) in BACKENDS.items():
        try:
            present = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            present = False
        found[name] = _version(dists) if present else None
    return found


def import_runtime(name: str) -> RuntimeApi:
    """Import one backend by name; DependencyError naming the pip extra when its package is missing."""
    if name not in BACKENDS:
        raise ConfigError(
            f"model.runtime: unknown runtime '{name}'; choose one of auto, {', '.join(BACKENDS)}"
        )
    module = importlib.import_module(f"edge_agent.runtime.{BACKENDS[name][0]}")
    return module.load_api()


def select_runtime(name: str = "auto") -> RuntimeApi:
    """The runtime named, or with ``auto`` the first of litert, tflite-runtime, tensorflow that imports."""
    if name != "auto":
        return import_runtime(name)
    errors: list[str] = []
    for candidate in AUTO_ORDER:
        if available_runtimes()[candidate] is None:
            errors.append(f"{candidate}: not installed")
            continue
        if candidate == "tensorflow":
            log.warning(
                "neither ai-edge-litert nor tflite-runtime is installed; falling back to tensorflow.lite "
                "(slow to import, large): pip install 'edge-agent[device]'"
            )
        try:
            return import_runtime(candidate)
        except DependencyError as exc:
            errors.append(f"{candidate}: {exc}")
    raise DependencyError(
        "no TFLite runtime could be imported (" + "; ".join(errors) + "): install one with  "
        "pip install 'edge-agent[device]'"
    )
