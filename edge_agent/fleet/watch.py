"""The health rule applied after a swap: when is the new model worse than the old one?"""

from __future__ import annotations

from typing import Any

# Fewer invokes than this since the swap make a p99 meaningless: over 20 samples the p99 is the single
# slowest call, and one call preempted on a loaded host rolled back a healthy model (1.5 ms vs 0.2 ms right
# after a restart, at load 20); from 100 on, one outlier no longer decides it.
MIN_SAMPLES_FOR_P99 = 100
# A p99 that grew by less than this is noise, whatever the factor: sub-millisecond invokes double under
# scheduling jitter alone (measured: a 0.1 ms model read 0.2 ms after a restart on a loaded 2-core host).
MIN_P99_RISE_MS = 1.0


def unhealthy_reason(start: dict[str, Any], now: dict[str, Any], p99_factor: float) -> str | None:
    """Why to roll back, or None. ``start``: health right after the swap plus the old model's p99;
    ``now``: the current health. Keys: state, errors, results, invoke_p99_ms."""
    state = now.get("state")
    if state in ("failed", "stopped", "crashed"):
        return f"the pipeline {state} after the swap"
    errors0, errors = start.get("errors") or 0, now.get("errors") or 0
    if errors > errors0:
        return f"pipeline errors rose from {errors0} to {errors} after the swap"
    old, new = start.get("invoke_p99_ms"), now.get("invoke_p99_ms")
    enough = (now.get("results") or 0) - (start.get("results") or 0) >= MIN_SAMPLES_FOR_P99
    if old and new and enough and new > p99_factor * old and new - old >= MIN_P99_RISE_MS:
        return f"invoke p99 {new:.1f} ms exceeds {p99_factor:g} x the old model's {old:.1f} ms"
    return None
