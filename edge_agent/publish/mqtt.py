"""MQTT client (paho-mqtt 2.x, callback API 2): status with Last Will, results through the outbox, stats.

Delivery: ``publish_result`` appends to the durable outbox and wakes a sender thread; the sender hands rows
to paho in id (= seq) order, at most ``max_inflight`` unacknowledged at a time, and remembers mid -> row id.
``on_publish`` (the PUBACK) marks the row acked; the sender deletes acked rows in batches. On every connect
paho's in-memory queue is dropped and all pending rows are replayed from the outbox, so the outbox is the
single source of truth (a duplicate of an in-flight message, same seq, is possible: that is QoS 1).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.errors import ConfigError, DataError
from edge_agent.publish.outbox import Outbox

log = logging.getLogger(__name__)

# Commit acks in batches of at most this many rows (one SQLite transaction each).
_ACK_BATCH = 500
# Acknowledged rows are deleted together: once this many are waiting, or the oldest has waited _ACK_DELAY_S,
# or someone waits for the outbox to empty: one write transaction per ~64 results instead of one per PUBACK
# (flash wear, CPU). A crash in between only means those rows are sent again after the restart (QoS 1 is
# at-least-once anyway).
_ACK_MIN = 64
_ACK_DELAY_S = 0.05
# Rows read from the outbox per query while sending.
_SEND_BATCH = 200
# Results handed in but not yet in the outbox; past this the pipeline waits (only a stalled disk gets here).
_INCOMING_MAX = 10_000


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(default=None, description="CA certificate (PEM); default: the system's CAs.")
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM), for brokers that require one."
    )
    key_file: Path | None = Field(default=None, description="Client private key (PEM), with cert_file.")
    insecure: bool = Field(
        default=False, description="Skip the host name check (self-signed lab brokers only)."
    )

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="1883 plain, 8883 usually TLS.")
    topic_prefix: str = Field(default="edge", description="Topics are <topic_prefix>/<device_id>/...")
    client_id: str | None = Field(default=None, description="Default: edge-agent-<device_id>.")
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT protocol version.")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = Field(default=None, description="File whose first line is the password.")
    password_env: str | None = Field(default=None, description="Environment variable holding the password.")
    password_credential: str | None = Field(
        default=None, description="Name of a systemd credential (LoadCredential=) holding the password."
    )
    tls: TlsConfig | None = Field(default=None, description="Enable TLS (give at least {} for system CAs).")
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    stats_interval_s: float = Field(default=30.0, gt=0, description="How often to publish the stats topic.")
    max_inflight: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Results sent but not yet acknowledged (PUBACK) at any time; bounds memory while a "
        "backlog replays. Raise it on links with a long round trip.",
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        given = [n for n in ("password_file", "password_env", "password_credential") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(
                f"give only one of password_file, password_env, password_credential (got {given})"
            )
        if given and not self.username:
            raise ValueError(f"{given[0]} is set but username is not")
        if self.topic_prefix.strip("/") != self.topic_prefix or any(c in self.topic_prefix for c in "#+"):
            raise ValueError("topic_prefix must not start or end with '/' nor contain '#' or '+'")
        return self


def resolve_password(cfg: MqttConfig, field_prefix: str = "mqtt") -> str | None:
    """The broker password from password_file, password_env or password_credential; None when none is set.

    Raises ConfigError naming the field when the file, variable or credential is missing.
    """
    if cfg.password_file is not None:
        path = Path(cfg.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{field_prefix}.password_file: {path} does not exist; create it with the broker password "
                "on its first line (chmod 600), or fix the path"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{field_prefix}.password_file: cannot read {path}: {exc.strerror}") from None
        lines = text.splitlines()
        password = lines[0].strip() if lines else ""
        if not password:
            raise ConfigError(
                f"{field_prefix}.password_file: {path} is empty; put the password on its first line"
            )
        return password
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(
                f"{field_prefix}.password_env: environment variable {cfg.password_env} is not set; set it "
                "(e.g. EnvironmentFile= in the systemd unit) or use password_file"
            )
        return value.strip()
    if cfg.password_credential is not None:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{field_prefix}.password_credential: CREDENTIALS_DIRECTORY is not set, so credential "
                f"{cfg.password_credential!r} is unavailable; run under systemd with "
                f"LoadCredential={cfg.password_credential}:/path/to/password, or use password_file"
            )
        path = Path(cred_dir) / cfg.password_credential
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            raise ConfigError(
                f"{field_prefix}.password_credential: credential {cfg.password_credential!r} not found in "
                f"{cred_dir}; check LoadCredential={cfg.password_credential}:... in the systemd unit"
            ) from None
        return lines[0].strip() if lines else ""
    return None


def _credentials_hint(cfg: MqttConfig) -> str:
    """Where the credentials came from, for a refusal message."""
    if cfg.username is None:
        return "the broker wants a login: set mqtt.username and mqtt.password_file"
    source = (
        f"mqtt.password_file ({cfg.password_file})"
        if cfg.password_file
        else f"mqtt.password_env ({cfg.password_env})"
        if cfg.password_env
        else f"mqtt.password_credential ({cfg.password_credential})"
        if cfg.password_credential
        else "the password (none is configured)"
    )
    return f"check mqtt.username ({cfg.username!r}) and {source}"


def _refusal_hint(name: str, cfg: MqttConfig) -> str:
    # mosquitto 2 answers a wrong password with "not authorized" (CONNACK 5), not "bad user name or password".
    if name in ("Bad user name or password", "Not authorized"):
        return _credentials_hint(cfg) + ", and the broker's ACL"
    return {
        "Client identifier not valid": "check mqtt.client_id",
        "Identifier rejected": "check mqtt.client_id",
        "Unsupported protocol version": "set mqtt.protocol to one the broker supports",
        "Server unavailable": "the broker is up but not accepting clients; check its log",
    }.get(name, "check the broker's log")


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


def _disable_nagle(sock: Any) -> None:
    """Send each MQTT packet at once. paho leaves Nagle's algorithm on, so after a small write that the
    broker has not acknowledged yet (a QoS 0 stats or status message), the next PUBLISHes wait for its
    delayed TCP ACK: about 40 ms. Measured with scripts/bench: end-to-end p99 37 ms -> 10 ms."""
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not fatal: only latency suffers
        log.debug("could not set TCP_NODELAY: %s", exc)


class MqttPublisher:
    """One paho client per daemon: status (online/offline, Last Will), durable results, best-effort stats."""

    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox):
        import paho.mqtt.client as mqtt  # imported here so `edge-agent check` does not need it loaded

        self._mqtt = mqtt
        self.cfg = cfg
        self.device_id = device_id
        self.outbox = outbox
        self.broker = f"{cfg.host}:{cfg.port}"
        self.status_topic = self.topic("status")
        self._window = cfg.max_inflight

        self._cond = threading.Condition()
        self._inflight: dict[int, int | None] = {}  # mid -> outbox row id (None: not an outbox row)
        self._inflight_rows = 0
        self._early: set[int] = set()  # mids whose PUBACK came before the sending thread recorded them
        self._acked_rows: list[int] = []  # PUBACKed, not yet deleted from the outbox
        self._first_ack_at = 0.0  # when the oldest of _acked_rows came
        self._flushing = 0  # threads in flush(): delete acked rows at once
        self._incoming: list[tuple[str, bytes, int]] = []  # QoS >= 1 results not yet in the outbox
        self._cursor = 0  # highest row id handed to paho on this connection
        self._gen = 0  # bumped on every connect/disconnect; a send from an older generation is stale
        self._more = True  # the outbox may hold rows past the cursor
        self._appends = 0
        self._connected = False
        self._ever_connected = False
        self._started = False
        self._stopping = False
        self._sender_exit = False
        self._sender: threading.Thread | None = None
        self._paho_log = _PahoLog()
        self._attempting = False  # a connection attempt is under way (no CONNACK yet, no failure yet)

        self.last_error: str | None = None
        self.reconnects = 0
        self.published = 0  # result messages handed to paho (replays included)
        self.acked = 0  # result messages acknowledged by the broker
        self.rejected = 0  # MQTT 5 PUBACKs with a failure reason code (kept in the outbox)

        self._client = self._make_client(resolve_password(cfg))

    # -- set-up --------------------------------------------------------------------------------------------
    def _make_client(self, password: str | None) -> Any:
        mqtt = self._mqtt
        cfg = self.cfg
        client_id = cfg.client_id or f"edge-agent-{self.device_id}"
        if cfg.protocol == "5":
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            self._configure_tls(client, cfg.tls)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_s, max(cfg.reconnect_max_s, cfg.reconnect_min_s))
        client.max_inflight_messages_set(self._window + 8)  # our window, plus room for status/stats
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.enable_logger(self._paho_log)  # type: ignore[arg-type]
        return client

    @staticmethod
    def _configure_tls(client: Any, tls: TlsConfig) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(
                    f"mqtt.tls.{name}: {path} does not exist; fix the path or copy the file there"
                )
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"mqtt.tls: cannot load the TLS files (ca_file={tls.ca_file}, cert_file={tls.cert_file}, "
                f"key_file={tls.key_file}): {exc}; they must be PEM and the key must match the certificate"
            ) from exc
        if tls.insecure:
            client.tls_insecure_set(True)

    def topic(self, *parts: str) -> str:
        """``<prefix>/<device_id>/<parts...>``."""
        return "/".join((self.cfg.topic_prefix, self.device_id, *parts))

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried with backoff, not fatal."""
        if self._started:
            return
        self._started = True
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def stop(self, drain_timeout: float) -> None:
        """Send what the outbox holds (up to ``drain_timeout`` s), publish retained ``offline``, disconnect.

        Rows not acknowledged by then stay in the outbox for the next start.
        """
        if not self._started:
            self._store_incoming()
            return
        if self._stopping:
            return
        drained = (
            self.flush(drain_timeout) if drain_timeout > 0 else not self._incoming and not self.outbox.depth()
        )
        self._stopping = True
        if self._connected:
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            self._claim(info.mid, None, self._gen)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                log.warning("could not publish 'offline' on %s before disconnecting", self.status_topic)
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._connected = False
            self._sender_exit = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=10.0)
        if not self._sender_alive():
            self._store_incoming()  # whatever the sender did not get to is kept for the next start
        if not drained:
            log.warning(
                "%d results are still in the outbox %s; they are sent after the next start",
                self.outbox.depth(),
                self.outbox.path,
            )

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next disconnect."""
        return self._connected

    def wait_stored(self, timeout: float) -> bool:
        """Wait until every result handed in so far is in the outbox (durable); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._incoming:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sender_alive():
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every outbox row is acknowledged and deleted; False when ``timeout`` s passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._incoming or self.outbox.depth() > 0 or self._acked_rows:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.5))
            finally:
                self._flushing -= 1
        return True

    # -- publishing ----------------------------------------------------------------------------------------
    @staticmethod
    def _check_topic(topic: str) -> None:
        # Checked before the outbox: a row paho can never send would block every result behind it.
        if not topic or "+" in topic or "#" in topic or len(topic.encode()) > 65535:
            raise DataError(f"cannot publish to topic {topic!r}: MQTT topic names must be non-empty, "
                            "without '+' or '#'; check the pipeline's publish.topic")  # fmt: skip

    def publish_result(self, topic: str, payload: bytes, qos: int) -> None:
        """QoS >= 1: durable, sent in order. The sender thread writes it to the outbox (with whatever else
        arrived meanwhile, in one transaction) before sending it, so the caller, the inference thread, never
        waits for SQLite. QoS 0: sent now, or lost."""
        self._check_topic(topic)
        if qos <= 0:
            self.publish_now(topic, payload, 0)
            return
        with self._cond:
            while len(self._incoming) >= _INCOMING_MAX and not self._sender_exit and self._sender_alive():
                self._cond.wait(0.5)  # the outbox cannot keep up (a very slow disk): slow the pipeline down
            self._incoming.append((topic, payload, qos))
            if len(self._incoming) == 1:
                self._cond.notify_all()

    def _sender_alive(self) -> bool:
        return self._sender is not None and self._sender.is_alive()

    def _store_incoming(self) -> bool:
        """Write the results handed in so far to the outbox, in order, in one transaction (sender thread,
        or ``stop`` once the sender has ended). False when the outbox refused them (kept for a retry)."""
        with self._cond:
            items, self._incoming = self._incoming, []
        if not items:
            return True
        try:
            self.outbox.append_many(items)
        except Exception as exc:  # disk full, read-only, closed: keep them in memory and say so
            with self._cond:
                self._incoming[:0] = items
            self._set_error(f"cannot write results to the outbox {self.outbox.path}: {exc}")
            return False
        with self._cond:
            self._appends += 1
            self._more = True
            self._cond.notify_all()
        return True

    def publish_now(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Best effort (stats, status): sent only while connected, never stored. True when handed to paho."""
        self._check_topic(topic)
        if not self._connected:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            return False
        self._claim(info.mid, None, self._gen)
        return True

    def stats(self) -> dict[str, Any]:
        """The ``mqtt`` object of the stats payload."""
        with self._cond:
            return {
                "connected": self._connected,
                "reconnects": self.reconnects,
                "last_error": self.last_error,
                "published": self.published,
                "acked": self.acked,
                "inflight": self._inflight_rows,
            }

    # -- mid bookkeeping -----------------------------------------------------------------------------------
    def _claim(self, mid: int, row_id: int | None, gen: int) -> None:
        """Record who owns ``mid`` after ``publish`` returned; the PUBACK may already have arrived."""
        with self._cond:
            if mid in self._early:
                self._early.discard(mid)
                if row_id is not None:
                    self._add_ack(row_id)
            elif gen == self._gen:
                self._inflight[mid] = row_id
                if row_id is not None:
                    self._inflight_rows += 1
            else:
                # Sent on a connection that has since been replaced: the replay covers the row; absorb any
                # late PUBACK so the mid cannot later acknowledge a different message.
                self._inflight[mid] = None
            if row_id is not None and gen == self._gen:
                self._cursor = max(self._cursor, row_id)

    # -- paho callbacks (network thread) ------------------------------------------------------------------
    def _on_pre_connect(self, client: Any, userdata: Any) -> None:
        self._attempting = True
        self._paho_log.last_problem = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._attempting = False
        if reason_code.is_failure:
            name = str(reason_code)
            hint = _refusal_hint(name, self.cfg)
            self._set_error(f"broker {self.broker} refused the connection: {name.lower()}; {hint}")
            return
        _disable_nagle(client.socket())
        # The outbox, not paho's memory, is the source of truth: drop paho's resend queue and replay pending
        # rows from the outbox in id order (otherwise every in-flight message would go out twice).
        client.drop_out_messages()
        # MQTT 5: never have more unacknowledged messages than the broker's Receive Maximum (it would close
        # the connection); keep room for the retained status messages.
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        window = (
            self.cfg.max_inflight
            if receive_max is None
            else max(1, min(self.cfg.max_inflight, receive_max - 2))
        )
        with self._cond:
            self._window = window
            self._inflight.clear()
            self._inflight_rows = 0
            self._early.clear()
            self._cursor = 0
            self._more = True
            self._gen += 1
            self._connected = True
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self.last_error = None
            self._cond.notify_all()
            gen = self._gen
        log.info("connected to MQTT broker %s; %d results pending", self.broker, self.outbox.depth())
        info = client.publish(self.status_topic, "online", qos=1, retain=True)
        self._claim(info.mid, None, gen)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` block, so the exception is still current.
        exc = sys.exc_info()[1]
        self._attempting = False
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            self._set_error(
                f"TLS handshake with broker {self.broker} failed: {exc}; check mqtt.tls.ca_file (and "
                "cert_file/key_file, or mqtt.tls.insecure for a self-signed lab broker)"
            )
        else:
            detail = f": {exc}" if exc else ""
            self._set_error(f"cannot connect to broker {self.broker}{detail}; is it running and reachable?")

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        # Safe to call twice: it only clears state.
        with self._cond:
            was_connected = self._connected
            self._connected = False
            self._inflight.clear()
            self._inflight_rows = 0
            self._early.clear()
            self._gen += 1
            self._cond.notify_all()
        if self._stopping:
            return
        attempting, self._attempting = self._attempting, False
        problem = self._paho_log.last_problem
        self._paho_log.last_problem = None
        why = str(reason_code)
        detail = "" if why in ("Unspecified error", "Success", "Normal disconnection") else f" ({why})"
        if problem:
            detail += f": {problem}"
        if was_connected:
            self._set_error(f"lost the connection to broker {self.broker}{detail}; reconnecting")
        elif not attempting:
            pass  # after a CONNACK refusal (its message says why), or a repeated callback
        else:
            # e.g. a TLS broker that wants a client certificate fails only after the handshake, on CONNECT
            hint = "check mqtt.tls (cert_file/key_file if the broker requires a client certificate)" if (
                self.cfg.tls is not None) else "is it an MQTT port (TLS on 8883 needs mqtt.tls)?"  # fmt: skip
            self._set_error(
                f"broker {self.broker} closed the connection before accepting it{detail}; {hint}; "
                "the broker's log says more"
            )

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            if mid not in self._inflight:
                self._early.add(mid)
                return
            row_id = self._inflight.pop(mid)
            if row_id is None:
                return
            self._inflight_rows -= 1
            if reason_code.is_failure:  # MQTT 5 only: the broker refused this message; keep it, count it
                self.rejected += 1
                self.last_error = (
                    f"broker {self.broker} rejected a result (outbox row {row_id}): {reason_code}"
                )
            else:
                self._add_ack(row_id)
            if self._inflight_rows == self._window - 1 and self._more:
                self._cond.notify_all()  # the window was full: the sender may go on

    def _add_ack(self, row_id: int) -> None:
        """(holding _cond) Note an acknowledged row; wake the sender only when it has something to do: the
        first ack (so it times the delay), a full batch, or a flush waiting."""
        if not self._acked_rows:
            self._first_ack_at = time.monotonic()
        self._acked_rows.append(row_id)
        if len(self._acked_rows) in (1, _ACK_MIN) or self._flushing:
            self._cond.notify_all()

    def _acks_due_in(self) -> float | None:
        """(holding _cond) Seconds until the acked rows are due for deletion (<= 0: now); None: none."""
        if not self._acked_rows:
            return None
        if len(self._acked_rows) >= _ACK_MIN or self._flushing or self._sender_exit:
            return 0.0
        return self._first_ack_at + _ACK_DELAY_S - time.monotonic()

    def _set_error(self, message: str) -> None:
        with self._cond:
            changed = message != self.last_error
            self.last_error = message
        if changed:  # log each distinct problem once, not on every retry
            log.error("%s", message)

    # -- sender thread -------------------------------------------------------------------------------------
    def _run_sender(self) -> None:
        """Delete acked rows in batches, and hand pending rows to paho in id order within the window."""
        while True:
            with self._cond:
                while True:
                    due = self._acks_due_in()
                    if (
                        (due is not None and due <= 0)
                        or self._incoming
                        or self._sender_exit
                        or (self._connected and self._more and self._inflight_rows < self._window)
                    ):
                        break
                    self._cond.wait(due)
                acks: list[int] = []
                if due is not None and due <= 0:
                    acks = self._acked_rows[:_ACK_BATCH]
                    del self._acked_rows[:_ACK_BATCH]
                    self._first_ack_at = time.monotonic()
                exiting = self._sender_exit
                incoming = bool(self._incoming)
            if incoming and not self._store_incoming():
                if exiting:
                    return  # stop() tries once more after the join
                time.sleep(1.0)
                continue
            if exiting:
                if acks:
                    self._ack(acks)
                if not self._acked_rows and not self._incoming:
                    return
                continue
            with self._cond:  # after storing: the rows just written count, unless the window is full
                send = self._connected and self._more and self._inflight_rows < self._window
                gen, cursor, appends = self._gen, self._cursor, self._appends
                room = self._window - self._inflight_rows
            if send:
                try:
                    self._send(gen, cursor, appends, min(room, _SEND_BATCH))
                except Exception as exc:  # keep the thread alive whatever happens; say so and retry
                    log.exception("sending results failed")
                    self._set_error(f"sending results failed: {exc}")
                    time.sleep(1.0)
            if acks:  # after sending: new results go out first, deleting delivered ones can wait
                self._ack(acks)

    def _ack(self, acks: list[int]) -> None:
        try:
            self.outbox.ack_many(acks)
        except Exception as exc:  # the outbox is closed or broken: the rows are resent next time (same seq)
            log.error("could not delete %d acknowledged rows from the outbox: %s", len(acks), exc)
        with self._cond:
            self.acked += len(acks)
            self._cond.notify_all()

    def _send(self, gen: int, cursor: int, appends: int, limit: int) -> None:
        try:
            rows = self.outbox.pending(limit=limit, after_id=cursor)
        except Exception as exc:
            self._set_error(f"cannot read the outbox {self.outbox.path}: {exc}")
            time.sleep(1.0)
            return
        if len(rows) < limit:
            with self._cond:
                if gen == self._gen and appends == self._appends:
                    self._more = False
        for row in rows:
            if gen != self._gen or not self._connected:
                return
            info = self._client.publish(row.topic, row.payload, qos=row.qos)
            if info.rc == self._mqtt.MQTT_ERR_NO_CONN:
                self._claim(info.mid, None, gen - 1)  # queued in paho, dropped on reconnect; replay resends
                return
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                self._set_error(f"paho refused to queue a result: {self._mqtt.error_string(info.rc)}")
                with self._cond:
                    self._more = True
                time.sleep(0.1)
                return
            self._claim(info.mid, row.id, gen)
            self.published += 1
