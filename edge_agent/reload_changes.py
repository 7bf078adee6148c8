"""What a reload (SIGHUP) does with each config change: most are applied live; a pipeline whose source,
window or evidence changed is restarted on its own; the rest need a restart of the daemon and are named for
the log, so a user who edited one of them is told instead of wondering why nothing changed."""

from __future__ import annotations

from edge_agent.config import AgentConfig, PipelineConfig

# fleet: its groups are subscriptions, enabled starts the deploy agent, its keys are read once at start.
RESTART_ONLY = ("device_id", "mqtt", "state_dir", "outbox", "log_level", "cpu_pinning", "metrics", "fleet")
# homeassistant: all but discovery and prefix, watchdog: all but enabled (named by restart_only_changes)
APPLIED_LIVE = ("pipelines", "drain_timeout_s", "watchdog", "homeassistant")
PIPELINE_RESTARTED = ("source", "window", "evidence")  # a reload stops the pipeline and starts it again


def restart_only_changes(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The changed keys from ``old`` to ``new`` that a reload leaves as they are, e.g. ``mqtt``,
    ``homeassistant.prefix``."""
    changed = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
    changed += [
        f"homeassistant.{k}"
        for k in ("discovery", "prefix")
        if getattr(old.homeassistant, k) != getattr(new.homeassistant, k)
    ]
    if old.watchdog.enabled != new.watchdog.enabled:  # stall_after_s is live; the pings are set at start
        changed.append("watchdog.enabled")
    return changed


def pipeline_restart_reasons(old: PipelineConfig, new: PipelineConfig) -> list[str]:
    """The parts of a pipeline that changed and that only a new start of it applies (``source``, ...)."""
    return [part for part in PIPELINE_RESTARTED if getattr(new, part) != getattr(old, part)]
