"""Backend: ai-edge-litert, the maintained successor of tflite-runtime (the default)."""

from __future__ import annotations

from edge_agent.errors import missing_extra
from edge_agent.runtime.backends import BACKENDS, RuntimeApi, _version

NAME = "litert"


def load_api() -> RuntimeApi:
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:  # e.g. built for numpy<2
        raise missing_extra("ai-edge-litert", "device", exc) from None
    return RuntimeApi(NAME, _version(BACKENDS[NAME][2]), Interpreter, load_delegate, OpResolverType)
