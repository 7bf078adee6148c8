"""Fetch a deployment's model bytes: the retained ``<prefix>/models/<sha256>`` message, or an http(s) URL.

Both read at most ``fleet.max_model_bytes + 1`` bytes, so an oversized model is refused (by the store's
size check) without ever being held in full; the sha256 is checked by the store, not here.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from edge_agent.fleet.config import FleetConfig
from edge_agent.fleet.errors import DeployRefused
from edge_agent.fleet.messages import Deployment


def fetch_model(
    dep: Deployment, cfg: FleetConfig, subscribe: Callable[..., Any], stop: threading.Event
) -> bytes:
    size, limit = dep.model.size, cfg.max_model_bytes
    if size > limit:
        raise DeployRefused("too_large", f"model of {size} bytes exceeds fleet.max_model_bytes ({limit})")
    if dep.transport.kind == "http":
        if not cfg.allow_http:
            raise DeployRefused("fetch_failed", "http(s) model URLs are off (fleet.allow_http: false)")
        return fetch_http(dep.transport.url, limit)
    return fetch_mqtt(dep.transport.topic, limit, cfg.fetch_timeout_s, subscribe, stop)


def fetch_mqtt(topic: str, limit: int, timeout_s: float, subscribe: Callable[..., Any],
               stop: threading.Event) -> bytes:  # fmt: skip
    got: list[bytes] = []
    arrived = threading.Event()

    def handler(_topic: str, payload: bytes) -> None:  # network thread: only keep the bytes
        if payload:  # an empty retained message means "cleared", not a model
            got.append(bytes(payload[: limit + 1]))
            arrived.set()

    unsubscribe = subscribe(topic, handler, limit + 1)
    try:
        deadline = time.monotonic() + timeout_s
        while not arrived.wait(0.2):
            if stop.is_set() or time.monotonic() > deadline:
                raise DeployRefused(
                    "fetch_failed",
                    f"no model on {topic} after {timeout_s:g} s (not published, cleared, or bigger than "
                    "the broker's message_size_limit)",
                )
    finally:
        if callable(unsubscribe):
            unsubscribe()
    return got[0]


def fetch_http(url: str, limit: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # the schema allows only http(s) URLs
            return resp.read(limit + 1)
    except (OSError, ValueError) as exc:
        raise DeployRefused("fetch_failed", f"cannot download {url[:200]}: {exc}") from None
