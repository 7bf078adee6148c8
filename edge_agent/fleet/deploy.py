"""The workstation side of a deployment: build and sign it, publish model and deployment, follow progress.

Deployment numbers: ``max(milliseconds since the epoch, last number this key issued + 1)``, the last one
kept in ``numbers.json`` beside the private key, so numbers strictly increase per key even when the clock
steps back. Two operators with different keys share a target only if their clocks roughly agree.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, ModelError
from edge_agent.fleet.broker import FleetClient
from edge_agent.fleet.messages import (
    COMMAND_SCHEMA,
    DEPLOYMENT_SCHEMA,
    Deployment,
    FleetCommand,
    parse_model,
    split_manifest,
)
from edge_agent.fleet.signing import sign
from edge_agent.fleet.state import now_iso
from edge_agent.fleet.store import atomic_write
from edge_agent.fleet.topics import command_topic, deploy_topic, model_topic
from edge_agent.fleet.view import FleetView
from edge_agent.manifest import manifest_path_for


def next_number(key_path: Path) -> int:
    counter = key_path.parent / "numbers.json"
    try:
        last = int(json.loads(counter.read_text()).get("last", 0))
    except (OSError, ValueError, AttributeError):
        last = 0
    number = max(int(time.time() * 1000), last + 1)
    atomic_write(counter, [json.dumps({"last": number}).encode()])
    return number


@dataclass(frozen=True)
class ModelFiles:
    data: bytes
    sha256: str
    manifest: dict[str, Any]


def read_model(model_path: Path) -> ModelFiles:
    """The .tflite and the manifest beside it, checked against each other (as the device will)."""
    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{model_path}: cannot read the model ({exc.strerror})") from None
    mpath = manifest_path_for(model_path)
    try:
        raw = json.loads(mpath.read_text())
        split_manifest(raw)
    except FileNotFoundError:
        raise ModelError(f"{mpath}: manifest not found beside the model; convert with edge-convert") from None
    except ValueError as exc:
        raise ModelError(f"{mpath}: invalid manifest ({str(exc).splitlines()[0]})") from None
    sha = hashlib.sha256(data).hexdigest()
    if raw.get("sha256") != sha:
        raise ModelError(f"{mpath}: sha256 does not match {model_path.name}; copy the pair together again")
    return ModelFiles(data, sha, raw)


def build_deployment(
    model: ModelFiles,
    *,
    number: int,
    target: tuple[str, str],
    pipeline: str,
    key: Any,
    prefix: str,
    healthy_for_s: float | None,
    url: str | None = None,
) -> dict[str, Any]:
    transport = (
        {"kind": "http", "url": url} if url else {"kind": "mqtt", "topic": model_topic(prefix, model.sha256)}
    )
    body = {
        "schema": DEPLOYMENT_SCHEMA,
        "number": number,
        "target": {"kind": target[0], "name": target[1]},
        "pipeline": pipeline,
        "model": {"sha256": model.sha256, "size": len(model.data), "manifest": model.manifest},
        "transport": transport,
        "healthy_for_s": healthy_for_s,
        "created": now_iso(),
    }
    return _signed(Deployment, body, key)


def build_rollback(*, number: int, target: tuple[str, str], pipeline: str, key: Any) -> dict[str, Any]:
    body = {
        "schema": COMMAND_SCHEMA,
        "command": "rollback",
        "number": number,
        "target": {"kind": target[0], "name": target[1]},
        "pipeline": pipeline,
        "created": now_iso(),
    }
    return _signed(FleetCommand, body, key)


def _signed(model: type[Deployment | FleetCommand], body: dict[str, Any], key: Any) -> dict[str, Any]:
    """``body`` signed, after the check the devices will make: nothing invalid goes out under a signature."""
    signed = sign(body, key)
    try:
        parse_model(model, signed)
    except ValueError as exc:
        kind = "deployment" if model is Deployment else "command"
        raise ConfigError(f"the {kind} would be invalid: {exc}") from None
    return signed


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def target_topic(prefix: str, kind: str, name: str, command: bool = False) -> str:
    fn = command_topic if command else deploy_topic
    return fn(prefix, device=name) if kind == "device" else fn(prefix, group=name)


@dataclass
class Outcome:
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)


def follow(view: FleetView, devices: list[str], number: int, *, timeout: float, done_state: str,
           echo: Callable[[str], None], wait_offline: bool = False) -> Outcome:  # fmt: skip
    """Wait until every device reported ``number`` as finished: ``done_state`` (with confirmed for active),
    failed or rolled_back. Prints each device's state changes. An offline device is not waited for (it
    applies the retained deployment when it reconnects) unless ``wait_offline``: a canary that goes offline
    after its swap may have been killed by the new model, so it must come back and confirm in time."""
    out = Outcome()
    seen: dict[str, tuple[Any, ...]] = {}
    said_offline: set[str] = set()
    deadline = time.monotonic() + timeout
    waiting = set(devices)
    with view.changed:
        while waiting:
            for d in sorted(waiting):
                v = view.devices.get(d)
                s = (v.state if v else None) or {}
                if s.get("number") == number:
                    key = (s.get("state"), s.get("confirmed"), s.get("reason"))
                    if seen.get(d) != key:
                        seen[d] = key
                        reason = f"  ({s['reason']})" if s.get("reason") else ""
                        confirmed = " (confirmed)" if s.get("confirmed") else ""
                        echo(f"  {d:<20} {s.get('state')}{confirmed}{reason}")
                    if s.get("state") in ("failed", "rolled_back") and s.get("state") != done_state:
                        out.failed[d] = f"{s.get('state')}: {s.get('reason')}"
                        waiting.discard(d)
                        continue
                    if s.get("state") == done_state and (done_state != "active" or s.get("confirmed")):
                        out.ok.append(d)
                        waiting.discard(d)
                        continue
                if v is not None and v.online is False and d not in said_offline:
                    said_offline.add(d)
                    if not wait_offline:
                        echo(f"  {d:<20} offline: it gets the deployment when it reconnects")
                        out.offline.append(d)
                        waiting.discard(d)
                    else:
                        echo(f"  {d:<20} offline: waiting for it to come back and confirm")
                elif v is not None and v.online is not False:
                    said_offline.discard(d)
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                break
            view.changed.wait(min(remaining, 0.5))
    out.pending = sorted(waiting)
    return out


def start_view(client: FleetClient, prefix: str, settle_s: float = 0.5) -> FleetView:
    """A live FleetView, after the retained messages had ``settle_s`` to arrive."""
    view = FleetView(prefix)
    view.watch(client)
    time.sleep(settle_s)
    return view


def clear_unreferenced_models(
    client: FleetClient, prefix: str, keep: frozenset[str] = frozenset()
) -> list[str]:
    """Clear (empty retained message) every ``<prefix>/models/<sha256>`` no retained deployment refers to."""
    retained = client.retained(f"{prefix}/+/deploy", f"{prefix}/groups/+/deploy", f"{prefix}/models/+")
    referenced = set(keep)
    for topic, payload in retained.items():
        if topic.endswith("/deploy"):
            try:
                referenced.add(json.loads(payload)["model"]["sha256"])
            except (ValueError, KeyError, TypeError):
                continue
    cleared = []
    for topic in retained:
        if topic.startswith(f"{prefix}/models/") and topic.rsplit("/", 1)[1] not in referenced:
            client.publish(topic, b"", retain=True)
            cleared.append(topic)
    return cleared
