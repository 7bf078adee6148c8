"""The broker part of ``edge-agent probe``: a TCP connect, then a real MQTT CONNECT with the daemon's own
client, TLS checks and login (the password resolved as the service would); never publishes."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.commands.probe_device import DEFAULT_CONFIG, DEFAULT_UNIT
from edge_agent.errors import ConfigError


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    reachable: bool
    connected: bool
    result: str  # what happened, in words
    source: str  # where the address came from
    hint: str | None = None  # what to do about a refusal


# ---------------------------------------------------------------------------------------------- broker


def check_broker(target: BrokerTarget, timeout: float) -> Broker:
    """TCP connect, then a real MQTT CONNECT with the configured credentials and TLS; never publishes.

    The client is the daemon's own (``build_client``): same protocol, TLS checks and login."""
    import paho.mqtt.client as mqtt

    from edge_agent.publish.client import build_client, credentials_hint, refusal_hint

    mqtt_cfg, password = target.mqtt, target.password
    host, port, tls = mqtt_cfg.host, mqtt_cfg.port, mqtt_cfg.tls is not None

    def broker(reachable: bool, connected: bool, result: str, hint: str | None = None) -> Broker:
        return Broker(host, port, tls, mqtt_cfg.username, reachable, connected, result, target.source, hint)

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return broker(False, False, f"unreachable: {exc.strerror or exc}")
    if target.login_problem:
        return broker(True, False, f"reachable; login not tried: {target.login_problem}")
    try:
        client = build_client(mqtt_cfg, f"edge-agent-probe-{os.getpid()}", password=password)
    except ConfigError as exc:
        return broker(True, False, f"reachable; connect not tried: {exc}")
    client.connect_timeout = timeout
    answer: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.setdefault("reason", reason)
    try:
        client.connect(host, port, keepalive=max(5, int(timeout) + 5))
        deadline = time.monotonic() + timeout
        while "reason" not in answer and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return broker(True, False, f"connect failed: {exc}")
    finally:
        client.disconnect()
    reason = answer.get("reason")
    if reason is None:
        return broker(True, False, f"no MQTT answer within {timeout:g}s (is it an MQTT port? TLS expected?)")
    if reason.is_failure:
        login = "" if mqtt_cfg.username else f" ({credentials_hint(mqtt_cfg)})"
        return broker(True, False, f"refused: {reason}{login}", refusal_hint(str(reason), mqtt_cfg))
    who = f"as {mqtt_cfg.username}" if mqtt_cfg.username else "anonymously"
    return broker(True, True, f"connected {who}")


@dataclass(frozen=True)
class BrokerTarget:
    mqtt: Any  # MqttConfig
    password: str | None
    source: str  # where the address came from
    login_problem: str | None = None  # why the configured password could not be read


def broker_target(config: Path | None, host: str | None, port: int | None) -> BrokerTarget | None:
    """The broker to try and the password the service would use; None when there is nothing to check.

    Outside the service, a ``password_credential`` is read from the file that the unit's LoadCredential=
    names (root only, mode 0600), through the daemon's one credential resolver."""
    from edge_agent.config import load_config
    from edge_agent.publish.client import resolve_password
    from edge_agent.publish.config import MqttConfig

    if config is None and host is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is not None:
        mqtt_cfg = load_config(config).mqtt
        source = str(config)
    elif host is not None:
        mqtt_cfg, source = MqttConfig(host=host), "--host"
    else:
        return None
    updates: dict[str, Any] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if updates:
        mqtt_cfg = mqtt_cfg.model_copy(update=updates)
    try:
        return BrokerTarget(mqtt_cfg, resolve_password(mqtt_cfg, unit=DEFAULT_UNIT), source)
    except ConfigError as exc:
        return BrokerTarget(mqtt_cfg, None, source, str(exc))
