"""Build a source from its config through the ``SOURCES`` table, importing only the implementation used
(so a sensor-only device never imports OpenCV)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edge_agent.errors import ConfigError
from edge_agent.sources.base import Source

if TYPE_CHECKING:
    from edge_agent.sources import SourceConfig
    from edge_agent.sources.window import WindowConfig


def create_source(cfg: SourceConfig, window: WindowConfig | None = None) -> Source:
    """The source for ``cfg`` (not started). Sensor sources cut samples into ``window``s (none = one sample
    per window); a camera takes no window. Raises DependencyError when the source's extra is missing."""
    from edge_agent.sources import SOURCES

    target = SOURCES.get(cfg.type)
    if target is None:
        raise ConfigError(
            f"source type: unknown type {cfg.type!r}; choose one of {', '.join(sorted(SOURCES))}"
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(cfg, window)
