"""Inbound deployments and commands: bounded parse, schema, signature, replay, target, pipeline.

Everything here raises only ``DeployRefused`` (a hypothesis test feeds it arbitrary bytes), each refusal
with its own reason code and a message that says what to do. The checks run in an order that never spends
work on an unauthenticated payload: size, JSON, schema, key, signature, then the device-specific checks.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from edge_agent.fleet.errors import DeployRefused
from edge_agent.fleet.messages import Deployment, FleetCommand, parse_model
from edge_agent.fleet.signing import signature_valid


@dataclass(frozen=True)
class DeviceIdentity:
    """Who this device is, for the target and pipeline checks."""

    device_id: str
    groups: frozenset[str]
    pipelines: frozenset[str]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(payload: bytes, max_bytes: int, what: str) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise DeployRefused(
            "oversized", f"{what} of {len(payload)} bytes exceeds fleet.max_inbound_bytes ({max_bytes})"
        )
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DeployRefused("malformed", f"{what} is not UTF-8 JSON ({str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise DeployRefused("malformed", f"{what} is JSON but not an object")
    return obj


def _check_signature(obj: dict[str, Any], trusted_keys: dict[str, Any], what: str) -> None:
    signer = obj.get("signer")
    key = trusted_keys.get(signer) if isinstance(signer, str) else None
    if key is None:
        raise DeployRefused(
            "unknown_key",
            f"{what} is signed by key {str(signer)[:16]!r}, which is not among this device's trusted keys; "
            "put its .pub in fleet.trusted_keys_dir or sign with a trusted key",
        )
    if not signature_valid(obj, key):
        raise DeployRefused("bad_signature", f"{what}: the signature does not match (altered or forged)")


def _check_device(number: int, target: Any, pipeline: str, me: DeviceIdentity, last_number: int | None,
                  what: str) -> None:  # fmt: skip
    if target.kind == "device" and target.name != me.device_id:
        raise DeployRefused("wrong_target", f"{what} {number} targets device {target.name!r}, not this one")
    if target.kind == "group" and target.name not in me.groups:
        raise DeployRefused(
            "wrong_target",
            f"{what} {number} targets group {target.name!r}; this device is in {sorted(me.groups)}",
        )
    if pipeline not in me.pipelines:  # signed: its number is reported, so the operator's edge-fleet stops
        raise DeployRefused(  # waiting for it
            "unknown_pipeline",
            f"{what} {number} is for pipeline {pipeline!r}; this device runs {sorted(me.pipelines)}",
            subject=(pipeline, number),
        )
    if last_number is not None and number <= last_number:
        raise DeployRefused(
            "replayed",
            f"{what} number {number} is not greater than the last one applied ({last_number}); "
            "a replayed old message is refused",
        )


def _validated(cls: type, obj: dict[str, Any], what: str) -> Any:
    try:
        return parse_model(cls, obj)
    except ValueError as exc:
        raise DeployRefused("schema", f"{what} {exc}") from None


def verify_deployment(payload: bytes, *, max_bytes: int, trusted_keys: dict[str, Any], me: DeviceIdentity,
                      last_number: Any) -> Deployment:  # fmt: skip
    """A verified deployment, or DeployRefused. ``last_number(pipeline) -> int | None``."""
    obj = parse_json(payload, max_bytes, "deployment")
    dep = _validated(Deployment, obj, "deployment")
    _check_signature(obj, trusted_keys, f"deployment {dep.number}")
    _check_device(dep.number, dep.target, dep.pipeline, me, last_number(dep.pipeline), "deployment")
    return dep


def verify_command(payload: bytes, *, max_bytes: int, trusted_keys: dict[str, Any], me: DeviceIdentity,
                   last_number: Any) -> FleetCommand:  # fmt: skip
    obj = parse_json(payload, max_bytes, "command")
    cmd = _validated(FleetCommand, obj, "command")
    _check_signature(obj, trusted_keys, f"command {cmd.number}")
    _check_device(cmd.number, cmd.target, cmd.pipeline, me, last_number(cmd.pipeline), "command")
    return cmd


def peek_number(payload: bytes, pipelines: Collection[str]) -> tuple[str, int] | None:
    """(pipeline, number) of a payload if it looks like ours, for cheap duplicate detection; never raises."""
    try:
        obj = json.loads(payload)
        pipeline, number = obj["pipeline"], obj["number"]
    except Exception:
        return None
    if isinstance(pipeline, str) and pipeline in pipelines and type(number) is int:
        return pipeline, number
    return None
