"""What a reload (SIGHUP) cannot apply: the config changes that need a restart, named for the log, so a user
who edited one of them is told instead of wondering why nothing changed."""

from __future__ import annotations

from edge_agent.config import AgentConfig

RESTART_ONLY = ("device_id", "mqtt", "state_dir", "outbox", "log_level", "cpu_pinning", "metrics")
PIPELINE_RESTART_ONLY = ("source", "window", "evidence")


def restart_only_changes(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The changed keys from ``old`` to ``new`` that a reload leaves as they are, e.g. ``mqtt``,
    ``pipeline yard added``, ``pipelines.door.source``."""
    changed = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
    old_p = {p.name: p for p in old.pipelines}
    new_p = {p.name: p for p in new.pipelines}
    changed += [f"pipeline {n} added" for n in sorted(new_p.keys() - old_p.keys())]
    changed += [f"pipeline {n} removed" for n in sorted(old_p.keys() - new_p.keys())]
    changed += [
        f"homeassistant.{k}"
        for k in ("discovery", "prefix")
        if getattr(old.homeassistant, k) != getattr(new.homeassistant, k)
    ]
    changed += [
        f"pipelines.{n}.{part}"
        for n in sorted(new_p.keys() & old_p.keys())
        for part in PIPELINE_RESTART_ONLY
        if getattr(new_p[n], part) != getattr(old_p[n], part)
    ]
    return changed
