"""Prometheus ``/metrics`` (``metrics: {listen: ...}``): a real ``edge-agent run`` scraped over HTTP and
parsed with prometheus_client's own parser; its values move with the work and agree with the stats topic.
Plus the config: validated by ``edge-agent check``; a port already in use is a config error at start."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.fleet.agent import STATS_COUNTERS
from edge_agent.fleet.errors import REASONS
from edge_agent.stats import LatencyWindow
from tests.daemon_harness import Agents, results, stats, write_config
from tests.fixtures.broker import free_port
from tests.waiting import wait_until

# Every label value a scrape may carry besides the config's own names and the model's identity: nothing else
# (no result, no sample value) can reach /metrics.
FIXED_LABEL_VALUES = {
    *("capture_age", "preprocess", "invoke", "postprocess", "total"),  # stages
    *("0.5", "0.99"),  # window quantiles
    *("starting", "running", "finished", "stopped", "failed"),  # pipeline states
    *("received", "oversized", "handler_errors"),  # inbound outcomes
    "none",  # no delegate
    *STATS_COUNTERS,  # fleet events
    *REASONS,  # fleet refusals
}


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of one scrape, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset], float], sample: str, /, **labels: str) -> float | None:
    return scraped.get((sample, frozenset(labels.items())))


def scrape_when(url: str, predicate: Any, timeout: float = 20.0) -> dict[tuple[str, frozenset], float]:
    """Scrape until ``predicate(scraped)`` holds (the server may not be up yet: refused is retried)."""
    last: dict[tuple[str, frozenset], float] = {}

    def ok() -> bool:
        nonlocal last
        try:
            last = scrape(url)
        except OSError:
            return False
        return bool(predicate(last))

    assert wait_until(ok, timeout=timeout, interval=0.1), f"condition not met; last scrape: {last}"
    return last


def rows(path: Path, n: int, start: int = 0) -> None:
    """Append ``n`` CSV rows of three small values (the regression model takes 2 samples x 3 channels)."""
    with path.open("a") as f:
        f.write("".join(f"{(i % 7) / 10},{(i % 5) / 10},{(i % 3) / 10}\n" for i in range(start, start + n)))


def test_scrape_follows_the_work_and_agrees_with_the_stats_topic(
    tmp_path: Path, mosquitto, subscriber, privacy, regression_int8
) -> None:
    broker = mosquitto(persistent=True)  # the subscriber's session outlives the outage below
    sub = subscriber(broker, "edge/#", client_id="metrics-sub", clean_session=False)
    data = tmp_path / "samples.csv"
    data.write_text("a,b,c\n")
    rows(data, 4)  # 2 windows: the first inferred, the second skipped by every_nth
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    pipeline = {
        "name": "load",
        "source": {"type": "file", "path": str(data), "fields": ["a", "b", "c"], "follow": True},
        "window": {"size": 2, "hop": 2},
        "steps": [{"type": "every_nth", "n": 2}],
        "model": {"path": str(regression_int8.path)},
    }
    config = write_config(
        tmp_path / "config.yaml", broker, [pipeline], metrics={"listen": f"127.0.0.1:{port}"}
    )
    watch = privacy(broker, config)
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        agent.wait_log(f"metrics on {url}")
        agent.expect(sub, lambda m: len(results(m)) == 1)
        first = scrape_when(url, lambda s: value(s, "edge_agent_frames_total", pipeline="load") == 1)

        # the same counters as the next stats message (no work in between: equal, not close)
        report = stats(
            agent.expect(sub, lambda m: any(s["pipelines"]["load"]["frames"] == 1 for s in stats(m)))
        )
        report = next(s for s in reversed(report) if s["pipelines"]["load"]["frames"] == 1)
        now = scrape(url)
        p = report["pipelines"]["load"]
        for key in ("frames", "results", "published", "skipped", "errors", "prepare_errors"):
            assert value(now, f"edge_agent_{key}_total", pipeline="load") == p[key], key
        assert value(now, "edge_agent_step_skipped_total", pipeline="load", step="every_nth") == 1
        assert p["steps"]["every_nth"] == {"skipped": 1, "failed": 0}
        assert value(now, "edge_agent_source_samples_total", pipeline="load") == p["source"]["samples"] == 4
        assert value(now, "edge_agent_source_connected", pipeline="load") == 1.0
        m = p["model"]
        model_labels = {"pipeline": "load", "name": m["name"], "sha256": m["sha256"], "backend": m["backend"],
                        "delegate": "none"}  # fmt: skip
        assert value(now, "edge_agent_model_info", **model_labels) == 1.0
        assert (
            value(now, "edge_agent_pipeline_state", pipeline="load", edge_agent_pipeline_state="running") == 1
        )
        assert value(now, "edge_agent_outbox_depth") == report["outbox"]["depth"] == 0
        assert value(now, "edge_agent_outbox_dropped_total") == report["outbox"]["dropped"] == 0
        assert value(now, "edge_agent_mqtt_connected") == 1.0 and report["mqtt"]["connected"]
        assert value(now, "edge_agent_mqtt_reconnects_total") == report["mqtt"]["reconnects"] == 0
        assert value(now, "edge_agent_info", device="testdev", version=_version()) == 1.0
        fleet = report["fleet"]  # off here (no trusted key): its counters are still reported, all 0
        assert value(now, "edge_agent_fleet_enabled") == float(fleet["enabled"]) == 0.0
        for event in STATS_COUNTERS:
            assert value(now, "edge_agent_fleet_events_total", event=event) == fleet[event] == 0, event
        assert set(p["latency_ms"]) == {"capture_age", "preprocess", "invoke", "postprocess", "total"}
        for stage, qs in p["latency_ms"].items():
            for key, q in (("p50", "0.5"), ("p99", "0.99")):
                got = value(
                    now, "edge_agent_stage_latency_window_seconds", pipeline="load", stage=stage, quantile=q
                )
                assert got is not None and math.isclose(got, qs[key] / 1000.0, rel_tol=1e-9, abs_tol=1e-12)
            assert value(now, "edge_agent_stage_latency_seconds_count", pipeline="load", stage=stage) == 1
            inf = value(
                now, "edge_agent_stage_latency_seconds_bucket", pipeline="load", stage=stage, le="+Inf"
            )
            assert inf == 1
        assert value(now, "edge_agent_stage_latency_seconds_sum", pipeline="load", stage="total") > 0

        # more work: the counters and the histogram move by exactly that work
        rows(data, 8, start=4)  # windows 2..5: 2 and 4 inferred, 3 and 5 skipped
        agent.expect(sub, lambda m: len(results(m)) == 3)
        more = scrape_when(url, lambda s: value(s, "edge_agent_frames_total", pipeline="load") == 3)
        assert value(more, "edge_agent_published_total", pipeline="load") == 3
        assert value(more, "edge_agent_step_skipped_total", pipeline="load", step="every_nth") == 3
        assert value(more, "edge_agent_stage_latency_seconds_count", pipeline="load", stage="invoke") == 3
        total_sum = ("edge_agent_stage_latency_seconds_sum", "total")
        assert value(more, total_sum[0], pipeline="load", stage=total_sum[1]) > value(
            first, total_sum[0], pipeline="load", stage=total_sum[1]
        )

        # the broker goes away: connected drops, a result waits in the outbox, then it is delivered
        broker.stop(kill=False)  # SIGTERM: mosquitto saves the subscriber's session
        scrape_when(url, lambda s: value(s, "edge_agent_mqtt_connected") == 0.0)
        rows(data, 4, start=12)  # windows 6 (inferred) and 7 (skipped)
        scrape_when(url, lambda s: value(s, "edge_agent_outbox_depth") == 1)
        broker.start()
        back = scrape_when(url, lambda s: value(s, "edge_agent_outbox_depth") == 0, timeout=30)
        assert value(back, "edge_agent_mqtt_connected") == 1.0
        assert value(back, "edge_agent_mqtt_reconnects_total") >= 1
        assert value(back, "edge_agent_frames_total", pipeline="load") == 4
        agent.expect(sub, lambda m: len(results(m)) >= 4, timeout=30)
        assert process_rss(back) > 0

        # only counters, timings and names: every label value is a known name, never data
        allowed = FIXED_LABEL_VALUES | {"load", "every_nth", "testdev", _version(), *model_labels.values()}
        for (name, labels), _ in back.items():
            for key, val in labels:
                assert key == "le" or val in allowed, (name, key, val)
        assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()
    watch.check()


def process_rss(scraped: dict[tuple[str, frozenset], float]) -> float:
    return value(scraped, "process_resident_memory_bytes") or 0.0


def _version() -> str:
    from edge_agent import __version__

    return __version__


def test_latency_histogram_counts_every_sample_and_survives_a_window_reset() -> None:
    w = LatencyWindow(size=4)
    samples = (0.5, 0.7, 3.0, 20_000.0, 3.0, 3.0)
    for ms in samples:
        w.add(ms)
    buckets, sum_ms = w.histogram()
    cumulative = dict(buckets)
    assert cumulative[0.5] == 1  # a sample equal to a bound counts in it (Prometheus' le)
    assert (cumulative[1.0], cumulative[2.5], cumulative[5.0], cumulative[10_000.0]) == (2, 2, 5, 5)
    assert cumulative[math.inf] == len(samples) > len(w)  # every sample, not just the window's
    assert math.isclose(sum_ms, sum(samples))
    w.reset()  # a model swap empties the window; the histogram is a counter and keeps its counts
    assert len(w) == 0 and w.histogram() == (buckets, sum_ms)


# ---------------------------------------------------------------------------------------------- config


def _config(model: Path, **top: Any) -> dict[str, Any]:
    return {
        "device_id": "m",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [
            {
                "name": "p",
                "source": {"type": "file", "path": "-"},
                "window": {"size": 2, "hop": 2},
                "model": {"path": str(model)},
            }
        ],
        **top,
    }


def test_metrics_section_is_opt_in_and_defaults_to_localhost(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    assert parse_config(_config(model)).metrics is None
    cfg = parse_config(_config(model, metrics={})).metrics
    assert (cfg.host, cfg.port, cfg.local_only) == ("127.0.0.1", 9101, True)
    v6 = parse_config(_config(model, metrics={"listen": "[::1]:9200"})).metrics
    assert (v6.host, v6.port, v6.local_only) == ("::1", 9200, True)
    lan = parse_config(_config(model, metrics={"listen": "0.0.0.0:9101"})).metrics
    assert not lan.local_only


@pytest.mark.parametrize(
    ("metrics", "says"),
    [
        ({"listen": "9101"}, "want host:port"),
        ({"listen": "localhost:0"}, "not in 1-65535"),
        ({"listen": "127.0.0.1:70000"}, "not in 1-65535"),
        ({"listen": "[1::2::3]:9101"}, "not an IPv6 address"),
        ({"port": 9101}, "metrics.port"),
    ],
)
def test_bad_metrics_section_names_the_field(tmp_path: Path, metrics: dict, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(tmp_path / "m.tflite", metrics=metrics))
    assert says in str(err.value) and "metrics." in str(err.value), str(err.value)


def edge_agent(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)  # fmt: skip


def test_check_validates_the_metrics_section(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not loaded: --no-models")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(model, metrics={"listen": "127.0.0.1:9101"})))
    ok = edge_agent("check", "--no-models", str(path), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "  metrics: http://127.0.0.1:9101/metrics" in ok.stdout

    path.write_text(yaml.safe_dump(_config(model, metrics={"listen": "127.0.0.1"})))
    bad = edge_agent("check", "--no-models", str(path), cwd=tmp_path)
    assert bad.returncode == ConfigError.exit_code, bad.stdout
    assert "metrics.listen: want host:port" in bad.stderr and "Traceback" not in bad.stderr


def test_metrics_port_in_use_is_a_config_error_at_start(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        model = tmp_path / "m.tflite"
        model.write_bytes(b"never loaded: the metrics port is checked first")
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(_config(model, metrics={"listen": f"127.0.0.1:{port}"})))
        proc = edge_agent("run", str(path), cwd=tmp_path, timeout=30)
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("edge-agent: error:")]
    assert len(error_lines) == 1, proc.stderr
    assert f"metrics.listen: cannot serve on 127.0.0.1:{port}" in error_lines[0]
    assert "in use" in error_lines[0] and "Traceback" not in proc.stderr
