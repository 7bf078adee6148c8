"""Fetch a deployment's model bytes: the retained ``<prefix>/models/<sha256>`` message, or an http(s) URL.

Both read at most ``fleet.max_model_bytes + 1`` bytes, so an oversized model is refused (by the store's
size check) without ever being held in full; the sha256 is checked by the store, not here. Both give up
after ``fleet.fetch_timeout_s`` (a server that sends a byte now and then included) and end at once with
``Stopping`` when the daemon stops, so a restart in the middle of a download resumes the deployment.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from edge_agent.fleet.config import FleetConfig
from edge_agent.fleet.errors import DeployRefused, Stopping
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
        return fetch_http(dep.transport.url, limit, cfg.fetch_timeout_s, stop)
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
            if stop.is_set():
                raise Stopping(f"stopped while waiting for {topic}")
            if time.monotonic() > deadline:
                raise DeployRefused(
                    "fetch_failed",
                    f"no model on {topic} after {timeout_s:g} s (not published, cleared, or bigger than "
                    "the broker's message_size_limit)",
                )
    finally:
        if callable(unsubscribe):
            unsubscribe()
    return got[0]


HTTP_CHUNK = 1 << 16
HTTP_SOCKET_TIMEOUT_S = 30.0


def fetch_http(url: str, limit: int, timeout_s: float, stop: threading.Event) -> bytes:
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    got = 0
    try:  # the schema allows only http(s) URLs
        with urllib.request.urlopen(url, timeout=min(HTTP_SOCKET_TIMEOUT_S, timeout_s)) as resp:
            while got <= limit:
                if stop.is_set():
                    raise Stopping(f"stopped while downloading {url[:200]}")
                if time.monotonic() > deadline:
                    raise DeployRefused(
                        "fetch_failed",
                        f"{url[:200]}: {got} bytes after {timeout_s:g} s (fleet.fetch_timeout_s)",
                    )
                chunk = resp.read1(min(HTTP_CHUNK, limit + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except (OSError, ValueError) as exc:
        raise DeployRefused("fetch_failed", f"cannot download {url[:200]}: {exc}") from None
    return b"".join(chunks)
