"""edge-agent: run quantized TFLite models on a device and publish results over MQTT."""

from __future__ import annotations

from functools import cache


def __getattr__(name: str) -> str:
    """``edge_agent.__version__``, looked up when first asked: a daemon needs it only for Home Assistant and
    Prometheus, and the package-metadata scan costs memory it would keep (~0.3 MB)."""
    if name != "__version__":
        raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
    return _installed_version()


@cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-agent")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+local"
