"""When to tell systemd the daemon is alive (WATCHDOG=1): only while every running pipeline makes progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.pipeline import Pipeline

__all__ = ["Watchdog"]


class Watchdog:
    """Decides whether to send WATCHDOG=1: only when every pipeline still running has turned its loop since
    the last ping (a pipeline idle on a silent source turns every read timeout, so it counts as alive; one
    stuck in invoke does not). Ended pipelines do not hold the ping back: the daemon exits when all ended."""

    def __init__(self, interval_s: float | None) -> None:
        self.interval_s = interval_s
        self._last_ping = -float("inf")
        self._seen: dict[str, int] = {}

    def due(self, now: float) -> bool:
        return self.interval_s is not None and now - self._last_ping >= self.interval_s

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next ping is due (0 when it is), None when there are no pings."""
        return None if self.interval_s is None else max(0.0, self._last_ping + self.interval_s - now)

    def lagging(self, pipelines: list[Pipeline]) -> list[str]:
        """Names of running pipelines that made no progress since the last ping (empty = healthy)."""
        return [
            p.name
            for p in pipelines
            if p.state in ("starting", "running") and p.progress == self._seen.get(p.name, -1)
        ]

    def pinged(self, now: float, pipelines: list[Pipeline]) -> None:
        self._last_ping = now
        self._seen = {p.name: p.progress for p in pipelines}
