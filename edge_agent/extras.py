"""Optional packages: the pip extra that brings each, imported with an error that names it.

The daemon imports OpenCV, pyserial and prometheus-client only when its config uses them (a sensor-only
device needs none of them), so a missing one shows at start as exit 7. ``edge-agent check`` asks the same
table which of them a config needs and tries each, so it says so before the service is started.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from edge_agent.errors import missing_extra


@dataclass(frozen=True)
class Extra:
    module: str  # what is imported
    package: str  # what pip installs
    extra: str  # the edge-agent[extra] that brings it

    def load(self) -> ModuleType:
        """The module; DependencyError naming the extra when it is missing or cannot be imported (an
        install of the wrong OpenCV wheel fails on a missing libGL, which the exception's text says)."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise missing_extra(self.package, self.extra, exc) from None


OPENCV = Extra("cv2", "opencv-python-headless", "camera")
PYSERIAL = Extra("serial", "pyserial", "serial")
PROMETHEUS = Extra("prometheus_client", "prometheus-client", "device")
