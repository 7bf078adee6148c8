"""The ``mqtt:`` section of the config: broker address, login, TLS, reconnect policy, the results window.

Kept apart from the client code so that validating a config loads neither paho nor the outbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.credentials import PasswordFields


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


class MqttConfig(PasswordFields):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="1883 plain, 8883 usually TLS.")
    topic_prefix: str = Field(default="edge", description="Topics are <topic_prefix>/<device_id>/...")
    client_id: str | None = Field(default=None, description="Default: edge-agent-<device_id>.")
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT protocol version.")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    tls: TlsConfig | None = Field(default=None, description="Enable TLS (give at least {} for system CAs).")
    reconnect_min_s: float = Field(
        default=1.0,
        gt=0,
        description="First wait before reconnecting after the broker is lost or refuses; doubles on each "
        "failed attempt up to reconnect_max_s. Each wait is drawn at random from the upper half of its step "
        "(edge_agent/backoff.py), so a fleet that lost its broker at once does not return all at once.",
    )
    reconnect_max_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait between reconnect attempts (before the random half is taken off). "
        "Reset to reconnect_min_s after every successful connect.",
    )
    stats_interval_s: float = Field(default=30.0, gt=0, description="How often to publish the stats topic.")
    max_inflight: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Results sent but not yet acknowledged (PUBACK) at any time; bounds memory while a "
        "backlog replays. Raise it on links with a long round trip.",
    )
    linger_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="While results come faster than one per linger_ms, they are stored in the outbox and "
        "sent together, at most once per linger_ms: fewer wake-ups and SQLite transactions, for up to "
        "linger_ms more latency. 0: each result is stored and sent as soon as the sender is free (results "
        "that came meanwhile still go together). Default: 0 while every model's threads have CPUs of their "
        "own (cpu_pinning placed them), where the sender's wake-ups take nothing from inference; else 10 "
        "(pipelines share the cores: measured +3-6% results/s with 2 cameras on 2 cores, +5 ms p50).",
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        given = self.given_password_fields()
        if given and not self.username:
            raise ValueError(f"{given[0]} is set but username is not")
        if problem := topic_prefix_problem(self.topic_prefix):
            raise ValueError(f"topic_prefix {problem}")
        return self


def topic_prefix_problem(prefix: str) -> str | None:
    """What is wrong with a topic prefix, or None: the daemon's config and ``edge-fleet --prefix`` ask."""
    if prefix.strip("/") != prefix or any(c in prefix for c in "#+"):
        return "must not start or end with '/' nor contain '#' or '+'"
    return None


LINGER_MS_SHARED_CORES = 10.0


def linger_s(cfg: MqttConfig, inference_has_own_cpus: bool) -> float:
    """The sender's linger in seconds: ``linger_ms`` as configured, else by where inference runs (see the
    field's description; README "Performance")."""
    if cfg.linger_ms is not None:
        return cfg.linger_ms / 1000
    return 0.0 if inference_has_own_cpus else LINGER_MS_SHARED_CORES / 1000
