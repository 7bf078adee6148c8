"""The fleet's payloads as strict pydantic models; the single source of their JSON Schemas.

``python -m edge_agent.fleet.messages`` regenerates ``edge_agent/schemas/{deployment,deploy-state,
fleet-command}.schema.json`` (a test checks they agree). Every string and list is bounded: these arrive
from the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from edge_agent.fleet.golden import GoldenSet
from edge_agent.manifest import Manifest

DEPLOYMENT_SCHEMA = "edge-agent/deployment/1"
DEPLOY_STATE_SCHEMA = "edge-agent/deploy-state/1"
COMMAND_SCHEMA = "edge-agent/fleet-command/1"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

# Names that become topic levels (device, group, pipeline): the daemon's config holds them to the same rule.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
HTTP_URL_PATTERN = r"^https?://[^\s]+$"
HTTP_URL_MAX = 2000
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]  # 64 bytes
Timestamp = Annotated[str, StringConstraints(max_length=40)]
Reason = Annotated[str, StringConstraints(max_length=500)]
MAX_HEALTHY_FOR_S = 86_400
DeployNumber = Annotated[int, Field(ge=1, le=2**53 - 1)]
State = Literal["received", "verified", "fetching", "testing", "active", "failed", "rolled_back"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Target(_Strict):
    kind: Literal["device", "group"]
    name: Name


class MqttTransport(_Strict):
    kind: Literal["mqtt"] = "mqtt"
    topic: Annotated[str, StringConstraints(max_length=200, pattern=r"^[^#+]*/models/[0-9a-f]{64}$")]


class HttpTransport(_Strict):
    kind: Literal["http"] = "http"
    url: Annotated[str, StringConstraints(max_length=HTTP_URL_MAX, pattern=HTTP_URL_PATTERN)]


class ModelRef(_Strict):
    sha256: Sha256
    size: int = Field(ge=1, le=1 << 31, description="Bytes of the .tflite.")
    manifest: dict[str, Any] = Field(description="The model.json (with its optional 'golden' field).")

    @model_validator(mode="after")
    def _manifest_matches(self) -> ModelRef:
        manifest, _ = split_manifest(self.manifest)
        if manifest.sha256 != self.sha256:
            raise ValueError("manifest.sha256 differs from model.sha256")
        return self


def split_manifest(raw: dict[str, Any]) -> tuple[Manifest, GoldenSet | None]:
    """The manifest and its golden samples, validated; ValueError when either is invalid."""
    manifest = Manifest.model_validate(raw)
    return manifest, manifest.golden


class Deployment(_Strict):
    """Run this model on this pipeline of these devices. Signed; retained on the target's deploy topic."""

    schema_id: Literal["edge-agent/deployment/1"] = Field(alias="schema")
    number: DeployNumber = Field(description="Strictly increasing per target; a device refuses <= its last.")
    target: Target
    pipeline: Name
    model: ModelRef
    transport: MqttTransport | HttpTransport = Field(discriminator="kind")
    healthy_for_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_HEALTHY_FOR_S,
        description="Watch period after the swap; default: fleet.watch_s.",
    )
    created: Timestamp
    signer: KeyId
    signature: Signature


class FleetCommand(_Strict):
    """A signed command to a device or group; today only ``rollback`` (to the previous model)."""

    schema_id: Literal["edge-agent/fleet-command/1"] = Field(alias="schema")
    command: Literal["rollback"]
    number: DeployNumber = Field(description="Shares the deployment numbers: strictly increasing.")
    target: Target
    pipeline: Name
    created: Timestamp
    signer: KeyId
    signature: Signature


class Running(_Strict):
    sha256: Sha256 | None = None
    number: int | None = Field(default=None, description="Deployment number; null for the config's model.")
    model: Annotated[str, StringConstraints(max_length=200)] | None = None


class DeployState(_Strict):
    """What the device did with the last deployment or command, and what each pipeline runs now."""

    schema_id: Literal["edge-agent/deploy-state/1"] = Field(alias="schema", default=DEPLOY_STATE_SCHEMA)
    device: Name
    groups: list[Name] = Field(default_factory=list, max_length=32)
    pipeline: Name | None = None
    number: int | None = None
    state: State
    confirmed: bool = Field(
        default=False, description="For 'active': the watch period passed without a reason to roll back."
    )
    reason: Reason | None = None
    sha256: Sha256 | None = Field(default=None, description="The model of this deployment.")
    running: dict[Name, Running] = Field(default_factory=dict, max_length=64)
    ts: Timestamp


def parse_model(cls: type[BaseModel], obj: Any) -> Any:
    """``cls.model_validate(obj)``, with a one-line ValueError naming the first bad field."""
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ValueError(f"field '{where}': {first['msg']} ({exc.error_count()} problem(s))") from None


def json_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for name, model, sid in (
        ("deployment", Deployment, DEPLOYMENT_SCHEMA),
        ("deploy-state", DeployState, DEPLOY_STATE_SCHEMA),
        ("fleet-command", FleetCommand, COMMAND_SCHEMA),
    ):
        schema = model.model_json_schema(by_alias=True)
        schema["$id"] = sid
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = schema
    return out


if __name__ == "__main__":  # regenerate the shipped schema files
    for name, schema in json_schemas().items():
        path = SCHEMA_DIR / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {path}")
