"""The deploy state a device reports (retained ``<prefix>/<device>/deploy/state``) and its allowed moves.

One deployment (or command) walks received -> verified -> fetching -> testing -> active, or ends early in
failed; after ``active`` the watch either confirms it (``active`` again with ``confirmed: true``) or ends
in rolled_back. A rollback command goes received -> verified -> testing -> rolled_back. Every message also
carries what each pipeline runs now, so a refused or stale message never hides the truth.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.fleet.messages import DeployState, Running
from edge_agent.fleet.store import atomic_write
from edge_agent.fleet.topics import state_topic

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], Any]

ALLOWED: dict[str | None, frozenset[str]] = {
    None: frozenset({"received"}),
    "received": frozenset({"verified", "failed"}),
    "verified": frozenset({"fetching", "testing", "active", "failed", "rolled_back"}),
    "fetching": frozenset({"testing", "failed"}),
    "testing": frozenset({"active", "failed", "rolled_back"}),
    "active": frozenset({"active", "rolled_back", "failed"}),
    "failed": frozenset(),
    "rolled_back": frozenset(),
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeployRun:
    """The state of one deployment or command on this device; ``advance`` publishes each step."""

    def __init__(self, reporter: StateReporter, pipeline: str | None, number: int | None, sha256: str | None):
        self.reporter, self.pipeline, self.number, self.sha256 = reporter, pipeline, number, sha256
        self.state: str | None = None

    def advance(self, state: str, reason: str | None = None, *, confirmed: bool = False) -> None:
        if state not in ALLOWED[self.state]:
            raise ValueError(f"deploy state cannot go from {self.state} to {state}")
        self.state = state
        self.reporter.report(self, reason, confirmed)

    @property
    def finished(self) -> bool:
        return self.state in ("failed", "rolled_back")


class StateReporter:
    """Builds and publishes deploy-state payloads; ``running()`` says what each pipeline runs now."""

    def __init__(self, prefix: str, device: str, groups: list[str], publish: Publish,
                 running: Callable[[], dict[str, Running]], persist: Path | None = None):  # fmt: skip
        self.topic = state_topic(prefix, device)
        self.device, self.groups, self._publish, self._running = device, groups, publish, running
        self.persist = persist  # the last report, republished (with what runs now) at the next start
        self._unsaved: str | None = None  # why the last report could not be saved (said once per cause)
        self.last: dict[str, Any] | None = None

    def republish_last(self) -> None:
        """At start: the last event again with the current ``running`` map, or a first 'active' report."""
        last = None
        if self.persist is not None:
            try:
                last = json.loads(self.persist.read_text())
            except (OSError, ValueError):
                last = None
        run = DeployRun(self, None, None, None)
        if isinstance(last, dict) and last.get("state") in ALLOWED:
            run.pipeline, run.number, run.sha256 = (
                last.get("pipeline"),
                last.get("number"),
                last.get("sha256"),
            )
            run.state = last["state"]
            self.report(run, last.get("reason"), bool(last.get("confirmed")))
        else:
            run.state = "active"
            self.report(run, "started", True)

    def run(self, pipeline: str | None, number: int | None, sha256: str | None = None) -> DeployRun:
        return DeployRun(self, pipeline, number, sha256)

    def report(self, run: DeployRun, reason: str | None, confirmed: bool) -> None:
        msg = DeployState(
            device=self.device,
            groups=self.groups,
            pipeline=run.pipeline,
            number=run.number,
            state=run.state,  # type: ignore[arg-type]
            confirmed=confirmed,
            reason=reason[:500] if reason else None,
            sha256=run.sha256,
            running=self._running(),
            ts=now_iso(),
        )
        payload = msg.model_dump(mode="json", by_alias=True)
        self.last = payload
        if self.persist is not None:
            try:
                atomic_write(self.persist, [json.dumps(payload).encode()])
                self._unsaved = None
            except OSError as exc:  # a full or read-only card: said once, not a traceback per state
                why = exc.strerror or str(exc)
                if why != self._unsaved:
                    log.warning(
                        "could not save the deploy state to %s: %s; it is still published (a restart "
                        "reports the last state it could save)",
                        self.persist,
                        why,
                    )
                self._unsaved = why
        what = f"deploy {run.pipeline} {run.number}" if run.number is not None else "deploy state"
        log.info("%s: %s%s", what, run.state, f" ({reason})" if reason else "")
        try:
            self._publish(self.topic, json.dumps(payload, separators=(",", ":")).encode(), True)
        except Exception:  # the broker may be away; the next state (or the next start) reports again
            log.warning("could not publish the deploy state", exc_info=True)
