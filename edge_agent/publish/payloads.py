"""Result and stats payloads: compact JSON built per frame, described by edge_agent/schemas/*.schema.json.

Every payload carries ``schema``, ``device`` and ``ts`` so a subscriber can route and de-duplicate it
without knowing which daemon sent it; results add ``pipeline``, ``seq`` (strictly increasing per
pipeline), ``boot`` (the daemon's start count: a seq jump at a new boot is numbers skipped, a gap within
one boot is a loss) and ``model``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from edge_agent.errors import DataError

RESULT_SCHEMA = "edge-agent/result/1"
STATS_SCHEMA = "edge-agent/stats/1"
SHA256_PREFIX = (
    12  # hex digits of the model hash in each result: enough to tell models apart, cheap per frame
)

LATENCY_STAGES = ("capture_age", "preprocess", "invoke", "postprocess", "total")
_ENVELOPE = frozenset({"schema", "device", "pipeline", "seq", "boot", "ts", "model", "latency_ms", "frame"})


def iso_ts(ts: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` (``2026-11-26T08:00:44.123Z``); naive datetimes are UTC."""
    if ts is None:
        ts = datetime.now(timezone.utc)
    elif ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    else:
        ts = ts.astimezone(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays (a postprocessor's natural output) become plain JSON; anything else is a bug."""
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return item()
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _dumps(obj: dict[str, Any], what: str) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default).encode()
    except ValueError as exc:  # NaN/inf: not JSON; name what carried it
        bad = [k for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)]
        raise DataError(f"{what} has a NaN or infinite value{f' in {bad}' if bad else ''}: {exc}") from exc
    except TypeError as exc:
        raise DataError(f"{what} has a value that is not JSON: {exc}") from exc


def result_payload(
    *,
    device: str,
    pipeline: str,
    seq: int,
    model_name: str,
    model_sha256: str,
    fields: dict[str, Any],
    latency_ms: dict[str, float],
    ts: datetime | None = None,
    frame_index: int | None = None,
    boot: int | None = None,
) -> bytes:
    """One result as compact JSON bytes (schema ``edge-agent/result/1``); task ``fields`` are merged in."""
    clash = _ENVELOPE.intersection(fields)
    if clash:
        raise DataError(f"result fields {sorted(clash)} would overwrite the payload envelope; rename them")
    obj: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "device": device,
        "pipeline": pipeline,
        "seq": int(seq),
        **({"boot": int(boot)} if boot is not None else {}),
        "ts": iso_ts(ts),
        "model": {"name": model_name, "sha256": model_sha256[:SHA256_PREFIX]},
        "latency_ms": {k: round(float(v), 3) for k, v in latency_ms.items()},
    }
    if frame_index is not None:
        obj["frame"] = int(frame_index)
    obj.update(fields)
    return _dumps(obj, f"result of pipeline {pipeline!r}")


def stats_payload(
    *,
    device: str,
    uptime_s: float,
    pipelines: dict[str, dict[str, Any]],
    mqtt: dict[str, Any],
    outbox: dict[str, int],
    ts: datetime | None = None,
    boot: int | None = None,
    fleet: dict[str, Any] | None = None,
) -> bytes:
    """The periodic health report (schema ``edge-agent/stats/1``).

    ``pipelines[name]`` = {fps, frames, skipped, results, published,
    latency_ms: {stage: {p50, p99}}, source: {connected, reconnects, last_error},
    model: {name, sha256, backend, delegate, delegate_error}} (see ``stats.PipelineStats.snapshot``);
    ``mqtt`` = {connected, reconnects, last_error, published, acked, inflight, inbound}
    (``MqttPublisher.stats``); ``outbox`` = {depth, bytes, dropped} (``Outbox.stats``).
    """
    obj = {
        "schema": STATS_SCHEMA,
        "device": device,
        **({"boot": int(boot)} if boot is not None else {}),
        "ts": iso_ts(ts),
        "uptime_s": round(float(uptime_s), 3),
        "pipelines": pipelines,
        "mqtt": mqtt,
        "outbox": outbox,
    }
    if fleet is not None:  # DeployAgent.stats(): remote deployment on/off and its counters
        obj["fleet"] = fleet
    return _dumps(obj, "stats")
