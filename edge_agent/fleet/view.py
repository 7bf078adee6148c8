"""The fleet as the broker's retained topics show it: devices, online or not, groups, what runs, last state.

Used by ``edge-fleet status`` and by ``deploy`` to learn a group's members (from the ``groups`` every
deploy-state message carries) and to follow progress live.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from edge_agent.fleet.broker import FleetClient


@dataclass
class DeviceView:
    device: str
    online: bool | None = None  # None: no status topic seen
    state: dict[str, Any] | None = None  # the last deploy-state payload

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
        if device in ("groups", "models"):
            return
        with self.changed:
            view = self.devices.setdefault(device, DeviceView(device))
            if topic.endswith("/status"):
                view.online = payload.strip() == b"online" if payload else None
            else:
                try:
                    obj = json.loads(payload) if payload else None
                except ValueError:
                    obj = None
                view.state = obj if isinstance(obj, dict) else view.state
            self.changed.notify_all()

    def snapshot(self) -> dict[str, DeviceView]:
        with self.changed:
            return {d: DeviceView(v.device, v.online, v.state) for d, v in self.devices.items()}

    def members(self, group: str) -> list[str]:
        return sorted(d for d, v in self.snapshot().items() if group in v.groups)


def render_table(views: list[DeviceView]) -> str:
    rows = [("DEVICE", "ONLINE", "GROUPS", "PIPELINE", "MODEL", "SHA256", "NUMBER", "LAST STATE")]
    for v in sorted(views, key=lambda v: v.device):
        d = v.as_dict()
        online = {True: "online", False: "offline", None: "?"}[v.online]
        last = d["last"] or {}
        number = f" #{last['number']}" if last and last.get("number") is not None else ""
        last_s = f"{last.get('state')}{number}" if last else "-"
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)  # fmt: skip
