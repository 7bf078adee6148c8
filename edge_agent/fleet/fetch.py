"""Fetch a deployment's model bytes: the retained ``<prefix>/models/<sha256>`` message, or an http(s) URL.

Both read at most ``fleet.max_model_bytes + 1`` bytes, so an oversized model is refused (by the store's
size check) without ever being held in full; the sha256 is checked by the store, not here. Both give up
after ``fleet.fetch_timeout_s`` (a server that sends a byte now and then, or stopped sending, included) and
end at once with ``Stopping`` when the daemon stops, so a restart in the middle of a download resumes the
deployment.
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
POLL_S = 0.2


class _Download(threading.Thread):
    """Reads the URL in its own thread, so that a stall inside one read (a server that stopped sending, up to
    the 30 s socket timeout) holds neither a stop nor ``fleet.fetch_timeout_s``: the caller stops waiting at
    once and the thread, told to give up, drops what it read at its next chunk or timeout."""

    def __init__(self, url: str, limit: int, socket_timeout_s: float) -> None:
        super().__init__(name="fleet-download", daemon=True)
        self.url, self.limit, self.socket_timeout_s = url, limit, socket_timeout_s
        self.chunks: list[bytes] = []
        self.got = 0
        self.error: Exception | None = None
        self.abandoned = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:  # the schema allows only http(s) URLs
            with urllib.request.urlopen(self.url, timeout=self.socket_timeout_s) as resp:
                while self.got <= self.limit and not self.abandoned.is_set():
                    chunk = resp.read1(min(HTTP_CHUNK, self.limit + 1 - self.got))
                    if not chunk:
                        break
                    self.chunks.append(chunk)
                    self.got += len(chunk)
        except (OSError, ValueError) as exc:
            self.error = exc
        finally:
            if self.abandoned.is_set():
                self.chunks = []
            self.done.set()


def fetch_http(url: str, limit: int, timeout_s: float, stop: threading.Event) -> bytes:
    deadline = time.monotonic() + timeout_s
    download = _Download(url, limit, min(HTTP_SOCKET_TIMEOUT_S, timeout_s))
    download.start()
    try:
        while not download.done.wait(POLL_S):
            if stop.is_set():
                raise Stopping(f"stopped while downloading {url[:200]}")
            if time.monotonic() > deadline:
                raise DeployRefused(
                    "fetch_failed",
                    f"{url[:200]}: {download.got} bytes after {timeout_s:g} s (fleet.fetch_timeout_s)",
                )
    finally:
        if not download.done.is_set():
            download.abandoned.set()
    if download.error is not None:
        raise DeployRefused("fetch_failed", f"cannot download {url[:200]}: {download.error}")
    return b"".join(download.chunks)
