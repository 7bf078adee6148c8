"""The daemon's MQTT publisher: one connection (``connection.py``) and the outbox sender (``sender.py``).

- status: retained ``online`` announced by an on-connect listener after every (re)connect; ``offline`` as the
  Last Will and on a clean stop.
- results: ``publish_result`` (QoS >= 1) appends to an in-memory list and returns at once; the sender thread
  stores it in the outbox and it is durable from then on (``wait_stored``); it is deleted from the outbox
  only once the broker acknowledged it (``flush`` waits for that). QoS 0 is sent now or lost.
- stats and other best-effort messages: ``publish_now``.
- inbound: ``subscribe`` and ``add_on_connect`` are the connection's (bounded, isolated handlers).

``MqttConfig``, ``TlsConfig`` and ``resolve_password`` are re-exported for the modules that import them here.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.errors import DataError
from edge_agent.publish.client import resolve_password
from edge_agent.publish.config import MqttConfig, TlsConfig
from edge_agent.publish.config import linger_s as config_linger_s
from edge_agent.publish.connection import Handler, InboundMessage, Listener, MqttConnection
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.sender import OutboxSender

__all__ = ["InboundMessage", "MqttConfig", "MqttPublisher", "TlsConfig", "resolve_password"]

log = logging.getLogger(__name__)

_STATUS_ROOM = 8  # paho's queue holds our window plus this many status/stats messages


class MqttPublisher:
    """One paho client per daemon: status (online/offline, Last Will), durable results, best-effort stats."""

    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox, linger_s: float | None = None):
        """``linger_s``: the sender's linger as the daemon resolved it (``config.linger_s``); None: the
        configured ``linger_ms``, or none."""
        if linger_s is None:
            linger_s = config_linger_s(cfg, inference_has_own_cpus=True)
        self.cfg = cfg
        self.device_id = device_id
        self.outbox = outbox
        self.status_topic = self.topic("status")
        self.connection = MqttConnection(
            cfg,
            cfg.client_id or f"edge-agent-{device_id}",
            will=(self.status_topic, "offline"),
            max_queued=cfg.max_inflight + _STATUS_ROOM,
        )
        self.broker = self.connection.broker
        self.sender = OutboxSender(self.connection, outbox, cfg.max_inflight, linger_s)
        self.connection.add_on_connect(self._announce_online)
        self._started = False
        self._stopping = False

    def topic(self, *parts: str) -> str:
        """``<prefix>/<device_id>/<parts...>``."""
        return "/".join((self.cfg.topic_prefix, self.device_id, *parts))

    def _announce_online(self, connection: MqttConnection) -> None:
        connection.publish(self.status_topic, "online", qos=1, retain=True)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried with backoff, not fatal."""
        if self._started:
            return
        self._started = True
        self.sender.start()
        self.connection.start()

    def stop(self, drain_timeout: float) -> None:
        """Send what the outbox holds (up to ``drain_timeout`` s), publish retained ``offline``, disconnect.

        Rows not acknowledged by then stay in the outbox for the next start.
        """
        if not self._started:
            self.sender.store_incoming()
            return
        if self._stopping:
            return
        drained = (
            self.flush(drain_timeout)
            if drain_timeout > 0
            else not self.sender.has_incoming and not self.outbox.depth()
        )
        self._stopping = True
        self.connection.stop()
        self.sender.stop()
        if not drained:
            log.warning(
                "%d results are still in the outbox %s; they are sent after the next start",
                self.outbox.depth(),
                self.outbox.path,
            )

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next disconnect."""
        return self.connection.connected

    @property
    def last_error(self) -> str | None:
        return self.connection.last_error

    @property
    def reconnects(self) -> int:
        return self.connection.reconnects

    @property
    def published(self) -> int:
        return self.sender.published

    @property
    def acked(self) -> int:
        return self.sender.acked

    @property
    def rejected(self) -> int:
        return self.sender.rejected

    def wait_stored(self, timeout: float) -> bool:
        """Wait until every result handed in so far is in the outbox (durable); False on timeout."""
        return self.sender.wait_stored(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every outbox row is acknowledged and deleted; False when ``timeout`` s passed first."""
        return self.sender.flush(timeout)

    # -- publishing ----------------------------------------------------------------------------------------
    @staticmethod
    def _check_topic(topic: str) -> None:
        # Checked before the outbox: a row paho can never send would block every result behind it.
        if not topic or "+" in topic or "#" in topic or len(topic.encode()) > 65535:
            raise DataError(f"cannot publish to topic {topic!r}: MQTT topic names must be non-empty, "
                            "without '+' or '#'; check the pipeline's publish.topic")  # fmt: skip

    def publish_result(self, topic: str, payload: bytes, qos: int) -> None:
        """QoS >= 1: durable once the sender thread stored it (``wait_stored``), sent in order; the caller,
        the inference thread, never waits for SQLite. QoS 0: sent now, or lost."""
        self._check_topic(topic)
        if qos <= 0:
            self.publish_now(topic, payload, 0)
            return
        self.sender.publish_result(topic, payload, qos)

    def publish_now(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Best effort (stats, status): sent only while connected, never stored. True when handed to paho."""
        self._check_topic(topic)
        return self.connection.publish(topic, payload, qos=qos, retain=retain)

    # -- inbound -------------------------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, **limits: Any) -> None:
        """See ``MqttConnection.subscribe``."""
        self.connection.subscribe(topic, handler, **limits)

    def unsubscribe(self, topic: str) -> None:
        """See ``MqttConnection.unsubscribe``."""
        self.connection.unsubscribe(topic)

    def subscribed(self, topic: str) -> bool:
        """See ``MqttConnection.subscribed``."""
        return self.connection.subscribed(topic)

    def add_on_connect(self, listener: Listener) -> None:
        """See ``MqttConnection.add_on_connect``."""
        self.connection.add_on_connect(listener)

    def stats(self) -> dict[str, Any]:
        """The ``mqtt`` object of the stats payload."""
        conn = self.connection.stats()
        inbound = conn.pop("inbound")
        return {**conn, **self.sender.stats(), "inbound": inbound}
