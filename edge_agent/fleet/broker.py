"""A small synchronous MQTT client for the workstation (``edge-fleet``) and for tests of the device side.

Unlike the daemon's publisher it has no outbox: an operator's command either reaches the broker (QoS 1,
acknowledged) or fails with one line. ``subscribe(topic, handler, max_bytes)`` has the shape the
``DeployAgent`` expects, so tests drive the agent over a real broker with it.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import BrokerError, ConfigError

Handler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False
    client_id: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


class FleetClient:
    def __init__(self, opts: BrokerOptions, *, will: tuple[str, bytes] | None = None):
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.opts = opts
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=opts.client_id or f"edge-fleet-{id(self):x}-{time.monotonic_ns() % 10**6}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if opts.username:
            self._client.username_pw_set(opts.username, opts.password)
        if opts.tls:
            try:
                self._client.tls_set(
                    ca_certs=str(opts.tls_ca) if opts.tls_ca else None,
                    certfile=str(opts.tls_cert) if opts.tls_cert else None,
                    keyfile=str(opts.tls_key) if opts.tls_key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigError(f"--tls-*: cannot load the TLS files: {exc}") from None
            if opts.tls_insecure:
                self._client.tls_insecure_set(True)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.reconnect_delay_set(0.2, 2.0)
        self._lock = threading.Lock()
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._acked = threading.Condition()
        self._acked_mids: set[int] = set()
        self.dropped_oversized = 0

    # -- connection ----------------------------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> FleetClient:
        where = f"{self.opts.host}:{self.opts.port}"
        try:
            self._client.connect_async(self.opts.host, self.opts.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"--broker {where}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            why = self._refused or "no answer (is the broker running? check --broker and the TLS options)"
            raise BrokerError(f"--broker {where}: cannot connect: {why}")
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = f"refused ({reason_code}); check --username and --password-file, and the ACL"
            client.disconnect()
            return
        with self._lock:
            topics = list(self._subs)
        for t in topics:  # clean session: subscribe again after every reconnect
            client.subscribe(t, qos=1)
        self._connected.set()

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    # -- publish -------------------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, retain: bool = True, timeout: float = 60.0) -> None:
        """QoS 1 publish that returns once the broker acknowledged it; BrokerError otherwise."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"publishing to {topic} failed: {exc}") from None
        if not info.is_published():
            raise BrokerError(f"publishing to {topic}: no acknowledgement after {timeout:g} s")

    # -- subscribe -----------------------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, max_bytes: int = 1 << 28) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for messages matching ``topic`` up to ``max_bytes`` (larger ones
        are dropped and counted); returns the function that unsubscribes."""
        with self._lock:
            self._subs[topic] = (handler, max_bytes)
        _, mid = self._client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5.0
        with self._acked:  # retained messages follow the SUBACK: a caller may rely on having seen them
            while mid not in self._acked_mids and time.monotonic() < deadline and self._connected.is_set():
                self._acked.wait(0.1)
            self._acked_mids.discard(mid)

        def unsubscribe() -> None:
            with self._lock:
                self._subs.pop(topic, None)
            self._client.unsubscribe(topic)

        return unsubscribe

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._acked:
            self._acked_mids.add(mid)
            self._acked.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            subs = list(self._subs.items())
        for filt, (handler, max_bytes) in subs:
            if self._mqtt.topic_matches_sub(filt, msg.topic):
                if len(msg.payload) > max_bytes:
                    self.dropped_oversized += 1
                    continue
                handler(msg.topic, bytes(msg.payload))

    def retained(self, *filters: str, quiet_s: float = 0.5, timeout: float = 10.0) -> dict[str, bytes]:
        """The retained messages under ``filters`` (empty ones left out): collected until none arrived for
        ``quiet_s`` after the subscriptions were acknowledged."""
        got: dict[str, bytes] = {}
        last = [time.monotonic()]

        def collect(topic: str, payload: bytes) -> None:
            got[topic] = payload
            last[0] = time.monotonic()

        unsubs = [self.subscribe(f, collect) for f in filters]
        last[0] = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
        for u in unsubs:
            u()
        return {t: p for t, p in got.items() if p}
