"""Prometheus ``/metrics`` (opt-in ``metrics: {listen: 127.0.0.1:9101}``) from the stats topic's counters.

One source of truth: at each scrape a custom collector asks the daemon's components for the very objects the
stats payload is built from (each pipeline's ``snapshot()``, ``MqttPublisher.stats()``, ``Outbox.stats()``),
so a scrape and the next stats message can only differ by the work done in between; nothing is counted twice.
Stage latency comes twice: the window percentiles the stats topic carries (a gauge with a ``quantile`` label)
and a real histogram, counted where the timing is recorded (``stats.LatencyWindow.add``).

The server is ``prometheus_client``'s own (a thread per request, off the frame path). It binds to localhost
unless told otherwise and carries counters, timings and model identity only: no result, no frame, no sample.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

import edge_agent
from edge_agent.errors import ConfigError
from edge_agent.extras import PROMETHEUS

if TYPE_CHECKING:
    from edge_agent.daemon import Daemon

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9101"  # 9100 is node_exporter's; localhost: a scraper on the device or a tunnel
_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})$")
_PIPELINE_COUNTERS = {
    "frames": "Frames (or sensor windows) run through the model.",
    "skipped": "Frames the source dropped because the model was busy.",
    "results": "Results produced by the postprocessor.",
    "published": "Results handed to the publisher (after the publish policy).",
    "errors": "Frames that failed (bad input, invoke error, a step that raised) and were skipped.",
    "prepare_errors": "Frames the source's thread could not prepare (the inference thread did).",
}
_SOURCE_COUNTERS = {
    "reconnects": "Times the source reconnected.",
    "samples": "Sensor samples read.",
    "bad_lines": "Sensor lines that did not parse (skipped).",
    "bad_frames": "Camera packets that did not decode (skipped).",
}
_EVIDENCE = {  # name: (a counter, help)
    "saved": (True, "Evidence frames saved."),
    "failed": (True, "Evidence frames to be kept that were not (masking, encoding or writing failed)."),
    "files": (False, "Evidence files in the folder."),
    "bytes": (False, "Bytes of the evidence folder's files."),
}
_STATES = ("starting", "running", "finished", "stopped", "failed")


class MetricsConfig(BaseModel):
    """Prometheus ``/metrics`` over HTTP: counters, latencies, outbox and broker health; no result data."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(
        default=DEFAULT_LISTEN,
        description="host:port to serve /metrics on ([v6]:port for IPv6). Keep it on localhost unless a "
        "firewall guards the port: there is no authentication.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        m = _LISTEN.match(v.strip())
        if m is None:
            raise ValueError("want host:port, e.g. 127.0.0.1:9101 (or [::1]:9101)")
        if m["v6"] is not None:
            try:
                ipaddress.IPv6Address(m["v6"])
            except ValueError:
                raise ValueError(f"'{m['v6']}' is not an IPv6 address") from None
        if not 1 <= int(m["port"]) <= 65535:
            raise ValueError(f"port {m['port']} is not in 1-65535")
        return v.strip()

    @property
    def host(self) -> str:
        m = _LISTEN.match(self.listen)
        assert m is not None  # validated
        return m["v6"] or m["host"]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://{self.listen}/metrics"

    @property
    def local_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: whatever it resolves to
            return False


class MetricsServer:
    """The running ``/metrics`` endpoint; ``close()`` stops it (idempotent)."""

    def __init__(self, server: Any, thread: Any, cfg: MetricsConfig) -> None:
        self._server = server
        self._thread = thread
        self.cfg = cfg

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5.0)
            self._server = None


def serve_metrics(cfg: MetricsConfig | None, daemon: Daemon) -> MetricsServer | None:
    """Start serving ``daemon``'s metrics (None when ``metrics:`` is not configured). An address that cannot
    be bound (a port in use) is a ``ConfigError`` naming ``metrics.listen``."""
    if cfg is None:
        return None
    prometheus = PROMETHEUS.load()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    prometheus.ProcessCollector(registry=registry)  # RSS, CPU seconds, open files: what a Pi runs short of
    try:
        server, thread = prometheus.start_http_server(cfg.port, cfg.host, registry)
    except OSError as exc:
        raise ConfigError(
            f"metrics.listen: cannot serve on {cfg.listen} ({exc.strerror or exc}); choose a free port "
            "(another edge-agent or exporter may hold it) or remove the metrics section"
        ) from None
    log.info("metrics on %s", cfg.url)
    if not cfg.local_only:
        log.warning("metrics.listen %s is reachable from the network and has no authentication", cfg.listen)
    return MetricsServer(server, thread, cfg)


class DaemonCollector:
    """A prometheus_client custom collector over one daemon's live components, read at scrape time."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._version = edge_agent.__version__  # looked up here: a daemon without metrics never scans for it

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        d = self._daemon
        info = InfoMetricFamily("edge_agent", "This daemon: device id, version.")
        info.add_metric([], {"device": d.cfg.device_id, "version": self._version})
        yield info
        if d.boot is not None:
            yield GaugeMetricFamily("edge_agent_boot", "This start's number (as in results).", value=d.boot)
        yield from _pipeline_metrics({p.name: (p.snapshot(), p.stats.latency) for p in list(d.pipelines)})
        publisher, outbox = d.publisher, d.outbox
        if publisher is not None:
            yield from _mqtt_metrics(publisher.stats())
        if outbox is not None:
            yield from _outbox_metrics(outbox.stats())
        fleet = d.fleet_stats()
        if fleet is not None:
            yield from _fleet_metrics(fleet)


def _pipeline_metrics(pipelines: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        StateSetMetricFamily,
    )

    by = ["pipeline"]
    counters = {
        k: CounterMetricFamily(f"edge_agent_{k}", doc, labels=by) for k, doc in _PIPELINE_COUNTERS.items()
    }
    fps = GaugeMetricFamily("edge_agent_fps", "Frames per second over the last 64 frames.", labels=by)
    state = StateSetMetricFamily("edge_agent_pipeline_state", "The pipeline's state.", labels=by)
    model = InfoMetricFamily("edge_agent_model", "The model a pipeline runs.", labels=by)
    connected = GaugeMetricFamily("edge_agent_source_connected", "1 while the source delivers.", labels=by)
    source = {
        k: CounterMetricFamily(f"edge_agent_source_{k}", doc, labels=by)
        for k, doc in _SOURCE_COUNTERS.items()
    }
    step_skipped = CounterMetricFamily(
        "edge_agent_step_skipped", "Frames a per-frame step skipped.", labels=[*by, "step"]
    )
    step_failed = CounterMetricFamily(
        "edge_agent_step_failed", "Frames a step failed on (dropped).", labels=[*by, "step"]
    )
    evidence = {
        k: (CounterMetricFamily if counter else GaugeMetricFamily)(f"edge_agent_evidence_{k}", doc, labels=by)
        for k, (counter, doc) in _EVIDENCE.items()
    }
    window = GaugeMetricFamily(
        "edge_agent_stage_latency_window_seconds",
        "Stage latency percentiles over the last results (the stats topic's p50/p99).",
        labels=[*by, "stage", "quantile"],
    )
    histogram = HistogramMetricFamily(
        "edge_agent_stage_latency_seconds", "Stage latency of every frame since start.", labels=[*by, "stage"]
    )
    for name, (snap, latency) in pipelines.items():
        for k, family in counters.items():
            family.add_metric([name], snap.get(k, 0))
        fps.add_metric([name], snap["fps"])
        if snap.get("state") is not None:
            state.add_metric([name], {s: s == snap["state"] for s in _STATES})
        m = snap["model"]
        model.add_metric(
            [name],
            {"name": m["name"], "sha256": m["sha256"], "backend": m["backend"],
             "delegate": m["delegate"] or "none"},
        )  # fmt: skip
        src = snap["source"]
        connected.add_metric([name], float(src["connected"]))
        for k, family in source.items():
            if k in src:
                family.add_metric([name], src[k])
        for step, c in snap["steps"].items():
            step_skipped.add_metric([name, step], c["skipped"])
            step_failed.add_metric([name, step], c["failed"])
        if "evidence" in snap:
            for k, family in evidence.items():
                family.add_metric([name], snap["evidence"][k])
        for stage, qs in snap["latency_ms"].items():
            for key, q in (("p50", "0.5"), ("p99", "0.99")):
                if qs.get(key) is not None:
                    window.add_metric([name, stage, q], round(qs[key] / 1000.0, 6))  # µs, as sent
        for stage, w in latency.items():
            buckets, sum_ms = w.histogram()
            if buckets[-1][1]:
                histogram.add_metric(
                    [name, stage], [(_le(ms), n) for ms, n in buckets], sum_value=sum_ms / 1000.0
                )
    families = (*counters.values(), fps, state, model, connected, *source.values(), *evidence.values())
    yield from (f for f in (*families, step_skipped, step_failed, window, histogram) if f.samples)


def _le(ms: float) -> str:
    return "+Inf" if ms == float("inf") else f"{ms / 1000.0:g}"


def _mqtt_metrics(mqtt: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("edge_agent_mqtt_connected", "1 while connected to the broker.",
                            value=float(mqtt["connected"]))  # fmt: skip
    yield CounterMetricFamily("edge_agent_mqtt_reconnects", "Reconnects to the broker.",
                              value=mqtt["reconnects"])  # fmt: skip
    for key, doc in (("published", "Messages handed to the broker."), ("acked", "QoS>0 messages acked.")):
        if key in mqtt:
            yield CounterMetricFamily(f"edge_agent_mqtt_{key}", doc, value=mqtt[key])
    if "inflight" in mqtt:
        yield GaugeMetricFamily(
            "edge_agent_mqtt_inflight", "Messages awaiting an ack.", value=mqtt["inflight"]
        )
    inbound = CounterMetricFamily(
        "edge_agent_mqtt_inbound", "Messages on the device's subscriptions, by outcome.", labels=["outcome"]
    )
    for outcome, n in mqtt.get("inbound", {}).items():
        inbound.add_metric([outcome], n)
    yield inbound


def _outbox_metrics(outbox: dict[str, int]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("edge_agent_outbox_depth", "Results waiting for the broker's ack.",
                            value=outbox["depth"])  # fmt: skip
    yield GaugeMetricFamily("edge_agent_outbox_bytes", "Payload bytes waiting.", value=outbox["bytes"])
    yield CounterMetricFamily("edge_agent_outbox_dropped", "Results dropped unsent (outbox full, disk full).",
                              value=outbox["dropped"])  # fmt: skip


def _fleet_metrics(fleet: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("edge_agent_fleet_enabled", "1 while signed remote deployments are accepted.",
                            value=float(fleet["enabled"]))  # fmt: skip
    events = CounterMetricFamily(
        "edge_agent_fleet_events",
        "Deployments and commands since start, by what became of them.",
        labels=["event"],
    )
    refused = CounterMetricFamily(
        "edge_agent_fleet_refused_by_reason",
        "Refused deployments by reason (reasons seen).",
        labels=["reason"],
    )
    for key, n in fleet.items():
        if key.startswith("refused_"):
            refused.add_metric([key.removeprefix("refused_")], n)
        elif key != "enabled":
            events.add_metric([key], n)
    yield from (f for f in (events, refused) if f.samples)
