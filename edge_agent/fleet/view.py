"""The fleet as the broker's retained topics show it: devices, online or not, groups, what runs, last state.

Used by ``edge-fleet status`` and by ``deploy`` to learn a group's members (from the ``groups`` every
deploy-state message carries) and to follow progress live. What a device publishes is input like any
other: a deploy state is kept only when it passes the schema the devices publish with and names the device
of its topic, and the table prints no control characters, so one device's bad message cannot break (or
repaint) the operator's view of the fleet.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from edge_agent.fleet.broker import FleetClient
from edge_agent.fleet.messages import NAME_PATTERN, DeployState


@dataclass
class DeviceView:
    device: str
    online: bool | None = None  # None: no status topic seen
    state: dict[str, Any] | None = None  # the last deploy-state payload
    unreadable: bool = False  # its last deploy state did not pass the schema (not shown)

    @property
    def groups(self) -> list[str]:
        return list((self.state or {}).get("groups") or [])

    def as_dict(self) -> dict[str, Any]:
        s = self.state or {}
        return {
            "device": self.device,
            "online": self.online,
            "groups": self.groups,
            "pipelines": s.get("running") or {},
            "last": {
                k: s.get(k) for k in ("pipeline", "number", "state", "confirmed", "reason", "sha256", "ts")
            }
            if s
            else None,
            "state_unreadable": self.unreadable,
        }


@dataclass
class FleetView:
    """Thread-safe map device -> view, fed by ``watch(client)``; ``changed`` wakes waiters."""

    prefix: str = "edge"
    devices: dict[str, DeviceView] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def watch(self, client: FleetClient) -> None:
        client.subscribe(f"{self.prefix}/+/status", self._on_message, 1024)
        client.subscribe(f"{self.prefix}/+/deploy/state", self._on_message, 1 << 20)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        device = parts[len(self.prefix.split("/"))]
        if device in ("groups", "models") or not re.match(NAME_PATTERN, device):
            return
        state = _read_state(payload, device) if topic.endswith("/deploy/state") and payload else None
        with self.changed:
            view = self.devices.setdefault(device, DeviceView(device))
            if topic.endswith("/status"):
                view.online = payload.strip() == b"online" if payload else None
            elif payload:
                view.state, view.unreadable = state, state is None
            self.changed.notify_all()

    def snapshot(self) -> dict[str, DeviceView]:
        with self.changed:
            return {d: DeviceView(v.device, v.online, v.state, v.unreadable) for d, v in self.devices.items()}

    def members(self, group: str) -> list[str]:
        return sorted(d for d, v in self.snapshot().items() if group in v.groups)


def _read_state(payload: bytes, device: str) -> dict[str, Any] | None:
    """The deploy state as a device publishes it, or None: invalid, or about another device."""
    try:
        state = DeployState.model_validate_json(payload)
    except ValidationError:
        return None
    return state.model_dump(mode="json", by_alias=True) if state.device == device else None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def render_table(views: list[DeviceView]) -> str:
    rows = [("DEVICE", "ONLINE", "GROUPS", "PIPELINE", "MODEL", "SHA256", "NUMBER", "LAST STATE")]
    for v in sorted(views, key=lambda v: v.device):
        d = v.as_dict()
        online = {True: "online", False: "offline", None: "?"}[v.online]
        last = d["last"] or {}
        number = f" #{last['number']}" if last and last.get("number") is not None else ""
        last_s = (
            f"{last.get('state')}{number}" if last else ("unreadable deploy state" if v.unreadable else "-")
        )
        if last.get("reason"):
            last_s += f" ({last['reason'][:60]})"
        pipes = d["pipelines"] or {"-": {}}
        for i, (pipe, run) in enumerate(sorted(pipes.items())):
            rows.append((
                v.device if i == 0 else "",
                online if i == 0 else "",
                ",".join(v.groups) if i == 0 else "",
                pipe,
                str(run.get("model") or "-"),
                (run.get("sha256") or "-")[:12],
                str(run.get("number") or "-"),
                last_s if i == 0 else "",
            ))  # fmt: skip
    rows = [tuple(_printable(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)  # fmt: skip
