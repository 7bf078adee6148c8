"""Hardware delegates. Today: the Coral Edge TPU through ``libedgetpu.so.1``.

A delegate that cannot load is not fatal: the model runs on the CPU and the reason is kept
(``LoadedModel.delegate_error``, a log warning, the stats topic) so a user sees why it is slow.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.runtime.backends import RuntimeApi

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"


@dataclass(frozen=True)
class DelegateLoad:
    delegate: Any | None  # the runtime's Delegate object, or None
    error: str | None  # why it did not load


def edgetpu_model_path(model_path: Path) -> Path | None:
    """``door.tflite`` -> ``door_edgetpu.tflite`` (what edgetpu_compiler writes) when that file exists."""
    variant = model_path.with_name(f"{model_path.stem}_edgetpu{model_path.suffix}")
    return variant if variant.is_file() else None


def load_edgetpu(api: RuntimeApi, device: str | None = None, library: str = EDGETPU_LIBRARY) -> DelegateLoad:
    """Load the Edge TPU delegate, or say why not."""
    # Probe the shared library with ctypes first: the runtimes' load_delegate leaves a half-built
    # Delegate behind on failure whose __del__ prints a traceback at garbage collection.
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        return DelegateLoad(
            None, f"Edge TPU runtime {library} cannot be loaded ({exc}); install libedgetpu1-std"
        )
    options = {"device": device} if device else {}
    try:
        return DelegateLoad(api.load_delegate(library, options), None)
    except (ValueError, OSError, RuntimeError) as exc:
        where = f" device {device}" if device else ""
        detail = " ".join(str(exc).split())  # the runtime's message spans lines
        return DelegateLoad(None, f"Edge TPU{where} not usable ({detail}); is the accelerator plugged in?")
