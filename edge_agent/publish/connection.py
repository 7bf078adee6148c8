"""One MQTT connection per daemon: the paho client, its Last Will, reconnects with jitter, on-connect
listeners and bounded subscriptions.

What happens on every successful CONNACK, in this order (paho's network thread):
  1. the delivery tracker (the outbox sender) starts a new session: generation, window, replay;
  2. every subscription is sent again (clean session: the broker forgot them); ``subscribed(topic)`` turns
     true only when the broker's SUBACK grants it, and a refusal (EMQX, HiveMQ, mosquitto's dynamic-security
     plugin; its ``acl_file`` grants every SUBSCRIBE and filters on delivery) is logged as ``last_error``;
  3. on-connect listeners run in the order they were added (the ``online`` status, Home Assistant
     discovery, the fleet's deploy state).
A listener or message handler that raises is logged and counted; it never reaches paho, whose network
thread would otherwise die with it (paho re-raises callback exceptions unless ``suppress_exceptions``).

Reconnects: paho's own loop reconnects, but its delays (``reconnect_delay_set``) are a plain doubling with
no jitter, so a fleet that lost its broker would come back in lock-step waves. Before every wait paho calls
either ``on_connect_fail`` or ``on_disconnect``; there the next delay is drawn from ``Backoff`` (equal
jitter, edge_agent/backoff.py) and handed to paho as ``reconnect_delay_set(d, d)``, which makes paho's next
wait exactly ``d``. A successful CONNACK resets the policy.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.backoff import Backoff
from edge_agent.publish.client import build_client, refusal_hint
from edge_agent.publish.config import MqttConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024  # inbound payloads above this are dropped unread (per subscription)
_HANDLER_LOG_EVERY_S = 60.0  # a handler failing on every message is logged once a minute, not per message


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes
    retain: bool
    qos: int


Handler = Callable[[InboundMessage], None]
Listener = Callable[["MqttConnection"], None]


class DeliveryTracker(Protocol):
    """Who owns the message ids (mids) on this connection: the outbox sender. Told first about every new
    session, so nothing is published on a connection it does not know about."""

    def session_started(self, generation: int, receive_maximum: int | None) -> None: ...
    def session_ended(self, generation: int) -> None: ...
    def claim(self, mid: int, row_id: int | None, generation: int) -> None: ...
    def acknowledged(self, mid: int, reason_code: Any) -> None: ...


@dataclass
class _Subscription:
    topic: str
    handler: Handler
    qos: int
    max_bytes: int
    last_logged: float = -float("inf")
    unlogged: int = 0  # handler failures since the last log line


class _PahoLog:
    """paho's logger hook: keeps the last warning/error (e.g. an SSL alert) for ``last_error``; logs at DEBUG.

    A duck-typed logger: ``logging.Logger.log`` semantics, but nothing is formatted below WARNING, so paho's
    per-packet debug lines cost one comparison.
    """

    def __init__(self) -> None:
        self.last_problem: str | None = None

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level >= logging.WARNING:
            self.last_problem = fmt % args if args else fmt
            log.debug("paho: %s", self.last_problem)


class MqttConnection:
    """Owns the paho client. ``start`` connects in the background; a broker that is down is retried."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        *,
        will: tuple[str, str] | None = None,
        max_queued: int | None = None,
        backoff: Backoff | None = None,
    ):
        self.cfg = cfg
        self.broker = f"{cfg.host}:{cfg.port}"
        self.will = will  # (topic, payload): retained Last Will, and published the same way on a clean stop
        self.backoff = backoff or Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.last_error: str | None = None
        self.reconnects = 0
        self.inbound = {"received": 0, "oversized": 0, "handler_errors": 0}
        self._lock = threading.Lock()
        self._connected = False
        self._ever_connected = False
        self._started = False
        self._stopping = False
        self._attempting = False  # a connection attempt is under way (no CONNACK yet, no failure yet)
        self._generation = 0  # bumped on every connect and disconnect
        self._tracker: DeliveryTracker | None = None
        self._listeners: list[Listener] = []
        self._subscriptions: dict[str, _Subscription] = {}
        self._granted: set[str] = set()  # topics whose SUBACK granted them on this connection
        self._awaiting_suback: dict[int, str] = {}  # SUBSCRIBE mid -> topic
        self._early_subacks: dict[int, Any] = {}  # SUBACKs that beat ``subscribe`` to recording its mid
        self._paho_log = _PahoLog()

        client = build_client(cfg, client_id, will=will)
        if max_queued is not None:
            client.max_inflight_messages_set(max_queued)
        client.reconnect_delay_set(cfg.reconnect_min_s, max(cfg.reconnect_max_s, cfg.reconnect_min_s))
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.enable_logger(self._paho_log)  # type: ignore[arg-type]
        self.client = client

    # -- wiring (before or after start) --------------------------------------------------------------------
    def track_deliveries(self, tracker: DeliveryTracker) -> None:
        self._tracker = tracker

    def add_on_connect(self, listener: Listener) -> None:
        """Run ``listener(connection)`` after every successful connect (network thread; keep it short).
        Added while connected, it also runs now."""
        with self._lock:
            self._listeners.append(listener)
            connected = self._connected
        if connected:
            self._run_listener(listener)

    def subscribe(
        self, topic: str, handler: Handler, *, qos: int = 1, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        """Deliver messages on ``topic`` (wildcards allowed) to ``handler`` on paho's network thread.

        Sent again after every reconnect. Payloads over ``max_bytes`` are dropped and counted, unseen by the
        handler (paho has read them by then: the limit protects the handler; the broker's
        ``message_size_limit`` protects the link). A handler that raises is logged and counted.
        """
        sub = _Subscription(topic, handler, qos, max_bytes)
        with self._lock:
            self._subscriptions[topic] = sub
            connected = self._connected
        self.client.message_callback_add(topic, lambda _c, _u, msg: self._deliver(sub, msg))
        if connected:
            self._send_subscribe(sub)

    def unsubscribe(self, topic: str) -> None:
        """Stop delivering ``topic`` (as given to ``subscribe``) and stop re-subscribing it on reconnects.
        Unknown topics are ignored, so calling it twice is safe."""
        with self._lock:
            sub = self._subscriptions.pop(topic, None)
            self._granted.discard(topic)
            connected = self._connected
        if sub is None:
            return
        self.client.message_callback_remove(topic)
        if connected:
            self.client.unsubscribe(topic)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def stop(self, will_timeout: float = 2.0) -> None:
        """Publish the Last Will's message ourselves (retained: a clean stop says the same), disconnect."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self._connected and self.will is not None:
            gen = self._generation
            info = self.client.publish(self.will[0], self.will[1], qos=1, retain=True)
            if self._tracker is not None:
                self._tracker.claim(info.mid, None, gen)
            try:
                info.wait_for_publish(timeout=will_timeout)
            except (RuntimeError, ValueError):
                log.warning("could not publish %r on %s before disconnecting", self.will[1], self.will[0])
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            self._connected = False
            self._granted.clear()

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next disconnect."""
        return self._connected

    def subscribed(self, topic: str) -> bool:
        """True once the broker granted ``topic`` (as given to ``subscribe``) on this connection: from then
        on nothing published to it is missed. False again after a disconnect, until the next SUBACK."""
        with self._lock:
            return topic in self._granted

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        """Best effort: sent only while connected, never stored. True when handed to paho."""
        import paho.mqtt.client as mqtt

        if not self._connected:
            return False
        gen = self._generation
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if self._tracker is not None:
            self._tracker.claim(info.mid, None, gen)
        return True

    def report_error(self, message: str, quiet: bool = False) -> None:
        """Set ``last_error`` (shown in stats and the status line); log each distinct message once."""
        with self._lock:
            changed = message != self.last_error
            self.last_error = message
        if changed and not quiet:  # not on every retry
            log.error("%s", message)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connected": self._connected,
                "reconnects": self.reconnects,
                "last_error": self.last_error,
                "inbound": dict(self.inbound),
            }

    # -- inbound (network thread) --------------------------------------------------------------------------
    def _send_subscribe(self, sub: _Subscription) -> None:
        """SUBSCRIBE, remembering its mid for the SUBACK. Unsent (disconnected): the next CONNACK sends it."""
        import paho.mqtt.client as mqtt

        with self._lock:
            generation = self._generation
        rc, mid = self.client.subscribe(sub.topic, qos=sub.qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return
        with self._lock:  # paho's network thread may have read the SUBACK already
            if generation != self._generation:
                return  # that connection ended meanwhile, and its mids with it; the next CONNACK resends
            early = self._early_subacks.pop(mid, None)
            if early is None:
                self._awaiting_suback[mid] = sub.topic
        if early is not None:
            self._settle_subscription(sub.topic, early)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._lock:
            topic = self._awaiting_suback.pop(mid, None)
            if topic is None:
                self._early_subacks[mid] = reason_codes[0]
                return
        self._settle_subscription(topic, reason_codes[0])

    def _settle_subscription(self, topic: str, reason_code: Any) -> None:
        if reason_code.is_failure:
            self.report_error(
                f"broker {self.broker} refused the subscription to {topic} ({str(reason_code).lower()}): "
                "nothing sent there reaches this device; let its user read that topic in the broker's ACL"
            )
            return
        with self._lock:
            if topic in self._subscriptions:  # not unsubscribed meanwhile
                self._granted.add(topic)

    def _deliver(self, sub: _Subscription, msg: Any) -> None:
        payload = bytes(msg.payload)
        with self._lock:
            self.inbound["received"] += 1
            if len(payload) > sub.max_bytes:
                self.inbound["oversized"] += 1
                oversized = True
            else:
                oversized = False
        if oversized:
            log.warning("dropped a %d-byte message on %s (limit %d bytes for %s)",
                        len(payload), msg.topic, sub.max_bytes, sub.topic)  # fmt: skip
            return
        try:
            sub.handler(InboundMessage(msg.topic, payload, bool(msg.retain), int(msg.qos)))
        except Exception:
            with self._lock:
                self.inbound["handler_errors"] += 1
            now = time.monotonic()
            if now - sub.last_logged >= _HANDLER_LOG_EVERY_S:
                more = f" ({sub.unlogged} more failures since the last report)" if sub.unlogged else ""
                log.exception("the handler for %s failed on a message on %s%s", sub.topic, msg.topic, more)
                sub.last_logged, sub.unlogged = now, 0
            else:
                sub.unlogged += 1

    def _run_listener(self, listener: Listener) -> None:
        try:
            listener(self)
        except Exception:
            log.exception("on-connect listener %s failed", getattr(listener, "__qualname__", listener))

    # -- paho callbacks (network thread) ------------------------------------------------------------------
    def _schedule_retry(self) -> None:
        """paho waits next; make that wait one jittered step of the policy (see the module docstring)."""
        delay = self.backoff.next_delay()
        self.client.reconnect_delay_set(delay, delay)

    def _on_pre_connect(self, client: Any, userdata: Any) -> None:
        self._attempting = True
        self._paho_log.last_problem = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._attempting = False
        if reason_code.is_failure:
            name = str(reason_code)
            hint = refusal_hint(name, self.cfg)
            self.report_error(f"broker {self.broker} refused the connection: {name.lower()}; {hint}")
            return
        self.backoff.reset()
        # Nothing is resent from paho's memory: what must arrive is kept by its owner (the outbox) and
        # replayed by the tracker; otherwise every in-flight message would go out twice.
        client.drop_out_messages()
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        with self._lock:
            self._generation += 1
            gen = self._generation
            self._connected = True
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self.last_error = None
            subscriptions = list(self._subscriptions.values())
            listeners = list(self._listeners)
        if self._tracker is not None:
            self._tracker.session_started(gen, receive_max)
        else:
            log.info("connected to MQTT broker %s", self.broker)
        for sub in subscriptions:
            self._send_subscribe(sub)
        for listener in listeners:
            self._run_listener(listener)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` block, so the exception is still current.
        exc = sys.exc_info()[1]
        self._attempting = False
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            self.report_error(
                f"TLS handshake with broker {self.broker} failed: {exc}; check mqtt.tls.ca_file (and "
                "cert_file/key_file, or mqtt.tls.insecure for a self-signed lab broker)"
            )
        else:
            detail = f": {exc}" if exc else ""
            self.report_error(f"cannot connect to broker {self.broker}{detail}; is it running and reachable?")
        self._schedule_retry()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        # Safe to call twice: it only clears state.
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._generation += 1
            gen = self._generation
            self._granted.clear()
            self._awaiting_suback.clear()
            self._early_subacks.clear()
        if self._tracker is not None:
            self._tracker.session_ended(gen)
        if self._stopping:
            return
        self._schedule_retry()
        attempting, self._attempting = self._attempting, False
        problem = self._paho_log.last_problem
        self._paho_log.last_problem = None
        why = str(reason_code)
        detail = "" if why in ("Unspecified error", "Success", "Normal disconnection") else f" ({why})"
        if problem:
            detail += f": {problem}"
        if was_connected:
            self.report_error(f"lost the connection to broker {self.broker}{detail}; reconnecting")
        elif not attempting:
            pass  # after a CONNACK refusal (its message says why), or a repeated callback
        else:
            # e.g. a TLS broker that wants a client certificate fails only after the handshake, on CONNECT
            hint = "check mqtt.tls (cert_file/key_file if the broker requires a client certificate)" if (
                self.cfg.tls is not None) else "is it an MQTT port (TLS on 8883 needs mqtt.tls)?"  # fmt: skip
            self.report_error(
                f"broker {self.broker} closed the connection before accepting it{detail}; {hint}; "
                "the broker's log says more"
            )

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if self._tracker is not None:
            self._tracker.acknowledged(mid, reason_code)
