"""The fleet's MQTT topics, in one place for the device and the workstation.

``<prefix>/<device>/deploy`` and ``<prefix>/groups/<group>/deploy``: the signed deployment (retained).
``<prefix>/<device>/command`` and ``<prefix>/groups/<group>/command``: signed commands (rollback; retained).
``<prefix>/models/<sha256>``: the model bytes (retained). ``<prefix>/<device>/deploy/state``: the device's
deploy state (retained). ``<prefix>/<device>/status``: ``online``/``offline`` (the daemon's, retained).
"""

from __future__ import annotations


def deploy_topic(prefix: str, *, device: str | None = None, group: str | None = None) -> str:
    return f"{prefix}/groups/{group}/deploy" if group else f"{prefix}/{device}/deploy"


def command_topic(prefix: str, *, device: str | None = None, group: str | None = None) -> str:
    return f"{prefix}/groups/{group}/command" if group else f"{prefix}/{device}/command"


def model_topic(prefix: str, sha256: str) -> str:
    return f"{prefix}/models/{sha256}"


def state_topic(prefix: str, device: str) -> str:
    return f"{prefix}/{device}/deploy/state"


def status_topic(prefix: str, device: str) -> str:
    return f"{prefix}/{device}/status"
