"""``fleet:`` in the daemon's config: whether and how this device accepts remote deployments."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

GROUP_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Accept signed deployments over MQTT. Off anyway while trusted_keys_dir holds no key.",
    )
    trusted_keys_dir: Path = Field(
        default=Path("/etc/edge-agent/trusted-keys"),
        description="Operators' Ed25519 public keys, one *.pub file each (PEM or one line of base64).",
    )
    groups: list[str] = Field(
        default_factory=list, max_length=32, description="Groups this device belongs to (deploy targets)."
    )
    max_model_bytes: int = Field(
        default=64 << 20, ge=1024, le=1 << 30, description="Largest model accepted: protects the SD card."
    )
    max_inbound_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=16 << 20,
        description="Largest deployment/command payload accepted (the manifest and its golden samples).",
    )
    watch_s: float = Field(
        default=60.0, ge=0, le=86_400, description="After a swap, watch this long before calling it healthy."
    )
    p99_factor: float = Field(
        default=2.0, gt=1.0, description="Roll back when the new model's invoke p99 exceeds this x the old."
    )
    fetch_timeout_s: float = Field(default=300.0, gt=0, description="Give up fetching a model after this.")
    allow_http: bool = Field(default=True, description="Accept deployments whose model is an http(s) URL.")

    @field_validator("groups")
    @classmethod
    def _groups_topic_safe(cls, v: list[str]) -> list[str]:
        for g in v:
            if not GROUP_SAFE.match(g):
                raise ValueError(
                    f"group {g!r}: use 1-64 letters, digits, '_', '-' or '.' (it is a topic level)"
                )
        return v
