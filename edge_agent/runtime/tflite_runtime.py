"""Backend: tflite-runtime, the legacy interpreter package (needs numpy<2; no XNNPACK for int8)."""

from __future__ import annotations

from edge_agent.errors import missing_extra
from edge_agent.runtime.backends import BACKENDS, RuntimeApi, _version

NAME = "tflite-runtime"


def load_api() -> RuntimeApi:
    try:
        from tflite_runtime.interpreter import Interpreter, OpResolverType, load_delegate
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:  # e.g. built for numpy<2
        raise missing_extra("tflite-runtime", "tflite-runtime", exc) from None
    return RuntimeApi(NAME, _version(BACKENDS[NAME][2]), Interpreter, load_delegate, OpResolverType)
