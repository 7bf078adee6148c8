"""Payloads: compact JSON that validates against the shipped schemas; the schemas reject broken envelopes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import jsonschema
import numpy as np
import pytest

from edge_agent.errors import DataError
from edge_agent.publish.payloads import LATENCY_STAGES, iso_ts, result_payload, stats_payload
from edge_agent.stats import LatencyWindow, PipelineStats, RateMeter
from tests.fixtures.broker import validate_payload

SHA = "0123456789abcdef" * 4
LAT = {"capture_age": 3.2, "preprocess": 0.41, "invoke": 4.1234567, "postprocess": 0.05, "total": 7.8}

TASK_FIELDS = {
    "classification": {
        "label": "seven",
        "class_id": 7,
        "score": 0.93,
        "top_k": [
            {"label": "seven", "class_id": 7, "score": 0.93},
            {"label": "one", "class_id": 1, "score": 0.04},
        ],
    },
    "detection": {
        "detections": [{"label": "person", "class_id": 0, "score": 0.8, "box": [0.1, 0.2, 0.5, 0.9]}]
    },
    "detection_empty": {"detections": []},
    "regression": {"values": {"temperature": 21.5, "humidity": 40.0}, "units": {"temperature": "C"}},
    "anomaly": {"anomaly_score": 0.31, "threshold": 0.25, "is_anomaly": True},
    "segmentation": {"class_fractions": {"road": 0.6, "car": 0.1}},
}


def make(fields: dict, **kw) -> bytes:
    args = dict(device="pi-1", pipeline="door", seq=42, model_name="door", model_sha256=SHA, fields=fields,
                latency_ms=LAT)  # fmt: skip
    args.update(kw)
    return result_payload(**args)


@pytest.mark.parametrize("task", sorted(TASK_FIELDS))
def test_every_task_payload_validates(task: str) -> None:
    raw = make(TASK_FIELDS[task], frame_index=17)
    obj = validate_payload(raw, "result")
    assert obj["schema"] == "edge-agent/result/1"
    assert obj["model"] == {"name": "door", "sha256": SHA[:12]}
    assert obj["frame"] == 17 and obj["seq"] == 42
    assert obj["latency_ms"]["invoke"] == 4.123
    for key, value in TASK_FIELDS[task].items():
        assert obj[key] == value
    assert b" " not in raw.replace(b"pi-1", b"")  # compact separators


def test_ts_is_iso_utc_with_millis_and_z() -> None:
    ts = datetime(2026, 3, 4, 5, 6, 7, 891_999, tzinfo=timezone(timedelta(hours=2)))
    assert iso_ts(ts) == "2026-03-04T03:06:07.891Z"
    assert iso_ts(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000Z"  # naive = UTC
    obj = json.loads(make(TASK_FIELDS["anomaly"], ts=ts))
    assert obj["ts"] == "2026-03-04T03:06:07.891Z"
    now = json.loads(make(TASK_FIELDS["anomaly"]))["ts"]
    parsed = datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - parsed).total_seconds()) < 5


def test_numpy_values_become_json() -> None:
    fields = {"label": "a", "class_id": np.int64(3), "score": np.float32(0.5)}
    obj = validate_payload(make(fields))
    assert obj["class_id"] == 3 and obj["score"] == 0.5


def test_field_overwriting_the_envelope_is_refused() -> None:
    with pytest.raises(DataError, match=r"\['seq'\]"):
        make({"seq": 1, "label": "a", "class_id": 0, "score": 0.1})


def test_nan_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="NaN"):
        make({"anomaly_score": float("nan"), "threshold": 0.5, "is_anomaly": False})


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda o: o.pop("seq"), id="no-seq"),
        pytest.param(lambda o: o.update(seq=0), id="seq-zero"),
        pytest.param(lambda o: o.update(schema="edge-agent/result/2"), id="schema-id"),
        pytest.param(lambda o: o.update(ts="2026-01-01T00:00:00Z"), id="ts-without-millis"),
        pytest.param(lambda o: o["model"].update(sha256=SHA), id="full-sha"),
        pytest.param(lambda o: o["model"].update(path="/x"), id="model-extra-key"),
        pytest.param(lambda o: o["latency_ms"].pop("invoke"), id="missing-stage"),
        pytest.param(lambda o: o["latency_ms"].update(gpu=1.0), id="unknown-stage"),
        pytest.param(lambda o: o.update(score=1.5), id="score-above-1"),
        pytest.param(lambda o: o.pop("class_id"), id="classification-incomplete"),
        pytest.param(
            lambda o: [o.pop(k) for k in ("label", "class_id", "score", "top_k")], id="no-task-fields"
        ),
    ],
)
def test_schema_rejects_broken_results(mutate) -> None:
    obj = json.loads(make(TASK_FIELDS["classification"]))
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate_payload(obj)


def test_schema_rejects_bad_detection_box() -> None:
    obj = json.loads(
        make({"detections": [{"label": "x", "class_id": 0, "score": 0.5, "box": [0.1, 0.2, 1.4, 0.9]}]})
    )
    with pytest.raises(jsonschema.ValidationError):
        validate_payload(obj)


def test_latency_window_percentiles() -> None:
    w = LatencyWindow(size=100)
    assert w.percentiles() == {"p50": None, "p99": None}
    for v in range(1, 1001):  # only the last 100 (901..1000) count
        w.add(float(v))
    p = w.percentiles()
    assert p["p50"] == pytest.approx(950.5)
    assert p["p99"] == pytest.approx(999.01)
    assert len(w) == 100


def test_rate_meter() -> None:
    r = RateMeter(size=10)
    assert r.rate(now=0.0) == 0.0
    for i in range(30):
        r.tick(now=i * 0.1)  # 10 per second; only the last 10 ticks are kept
    assert r.rate(now=2.9) == pytest.approx(10.0)


def test_stats_payload_from_pipeline_stats_validates() -> None:
    ps = PipelineStats(window=64)
    for i in range(50):
        ps.frame_done({stage: float(i) for stage in LATENCY_STAGES}, published=i % 2 == 0)
    ps.count(skipped=3)
    snap = ps.snapshot(
        source={"frames": 50, "connected": True, "reconnects": 1, "last_error": None, "skipped": 3},
        model={"name": "door", "sha256": SHA, "backend": "litert", "delegate": None, "delegate_error": None},
    )
    assert snap["frames"] == 50 and snap["results"] == 50 and snap["published"] == 25 and snap["skipped"] == 3
    assert snap["latency_ms"]["total"]["p50"] == pytest.approx(24.5)
    raw = stats_payload(
        device="pi-1",
        uptime_s=12.3456,
        pipelines={"door": snap},
        mqtt={
            "connected": True,
            "reconnects": 0,
            "last_error": None,
            "published": 5,
            "acked": 5,
            "inflight": 0,
        },
        outbox={"depth": 0, "bytes": 0, "dropped": 0},
    )
    obj = validate_payload(raw, "stats")
    assert obj["uptime_s"] == 12.346
    obj["outbox"]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_payload(obj, "stats")


def test_stats_schema_rejects_unknown_backend() -> None:
    ps = PipelineStats()
    snap = ps.snapshot(source={}, model={"name": "m", "sha256": SHA, "backend": "onnx", "delegate": None,
                                         "delegate_error": None})  # fmt: skip
    raw = stats_payload(device="d", uptime_s=1, pipelines={"p": snap},
                        mqtt={"connected": False, "reconnects": 0, "last_error": "x"},
                        outbox={"depth": 0, "bytes": 0, "dropped": 0})  # fmt: skip
    with pytest.raises(jsonschema.ValidationError, match="onnx"):
        validate_payload(raw, "stats")


def test_sensor_source_counters_reach_the_stats_payload() -> None:
    snap = PipelineStats().snapshot(
        source={"connected": True, "reconnects": 0, "last_error": "line 3: 'x' is not a number",
                "samples": 1200, "bad_lines": 2, "frames": 11},
        model={"name": "m", "sha256": SHA, "backend": "litert", "delegate": None, "delegate_error": None},
    )  # fmt: skip
    assert snap["source"]["samples"] == 1200 and snap["source"]["bad_lines"] == 2
    raw = stats_payload(device="d", uptime_s=1, pipelines={"vibration": snap},
                        mqtt={"connected": True, "reconnects": 0, "last_error": None},
                        outbox={"depth": 0, "bytes": 0, "dropped": 0})  # fmt: skip
    assert validate_payload(raw, "stats")["pipelines"]["vibration"]["source"]["bad_lines"] == 2


def test_numpy_arrays_become_lists_and_other_objects_are_named() -> None:
    """A postprocessor (or a plugin) may return numpy arrays as they come out of the model: they become JSON
    lists; anything JSON cannot hold is a DataError naming the type, not a crash in the publish path."""
    fields = {"label": "a", "class_id": 0, "score": 0.5, "embedding": np.array([[1, 2], [3, 4]], np.int8),
              "mean": np.float32(0.25), "flags": np.array([True, False])}  # fmt: skip
    obj = json.loads(make(fields))
    assert obj["embedding"] == [[1, 2], [3, 4]] and obj["mean"] == 0.25 and obj["flags"] == [True, False]
    with pytest.raises(DataError, match=r"not JSON: .*\bobject\b is not JSON serializable"):
        make({**fields, "embedding": object()})


def test_timestamps_are_utc_whatever_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device set to local time still stamps UTC (a subscriber compares devices across zones)."""
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        now = datetime.strptime(iso_ts(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - now).total_seconds()) < 5
        ts = datetime(2026, 3, 4, 5, 6, 7, 500_000, tzinfo=timezone(timedelta(hours=-3)))
        assert iso_ts(ts) == "2026-03-04T08:06:07.500Z"  # milliseconds exact: 500000 us -> .500
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_stats_payload_carries_the_given_time_and_names_a_nan_field() -> None:
    ts = datetime(2026, 3, 4, 5, 6, 7, 250_000, tzinfo=timezone.utc)
    raw = stats_payload(device="pi-1", uptime_s=1.0, pipelines={}, ts=ts,
                        mqtt={"connected": True, "reconnects": 0, "last_error": None},
                        outbox={"depth": 0, "bytes": 0, "dropped": 0})  # fmt: skip
    assert validate_payload(raw, "stats")["ts"] == "2026-03-04T05:06:07.250Z"
    with pytest.raises(
        DataError, match=r"result of pipeline 'door' has a NaN or infinite value in \['threshold'\]"
    ):
        make({"anomaly_score": 0.1, "threshold": float("inf"), "is_anomaly": False})
