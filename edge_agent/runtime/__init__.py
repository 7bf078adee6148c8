"""Device runtime: load a .tflite with the lightest interpreter available and run it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.runtime.model import LoadedModel

__all__ = ["LoadedModel", "available_runtimes", "load_model"]


def __getattr__(name: str):  # lazy: importing edge_agent.runtime.config must not import numpy or a runtime
    if name in ("LoadedModel", "load_model"):
        from edge_agent.runtime import model

        return getattr(model, name)
    if name == "available_runtimes":
        from edge_agent.runtime.backends import available_runtimes

        return available_runtimes
    raise AttributeError(name)
