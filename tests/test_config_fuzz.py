"""Any value anywhere in a config is refused with a ConfigError that names it, never another exception:
a config is typed by people, and a traceback from `check` or a unit that dies with one helps nobody."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError

# Every section and source type, each key set (the template documents them; this one sets them all).
FULL: dict[str, Any] = {
    "device_id": "pi-frontdoor",
    "mqtt": {"host": "127.0.0.1", "port": 1883, "topic_prefix": "edge", "client_id": "c", "protocol": "5",
             "keepalive_s": 30, "username": "u", "password_env": "PW", "tls": {"ca_file": "ca.pem"},
             "reconnect_min_s": 1.0, "reconnect_max_s": 30.0, "stats_interval_s": 30.0, "max_inflight": 256,
             "linger_ms": 10},
    "state_dir": "state",
    "pipelines": [
        {"name": "camera",
         "source": {"type": "camera", "url": "/dev/video0", "fps": 5, "pixel_format": "MJPG", "width": 640,
                    "height": 480, "open_timeout_s": 10.0, "read_timeout_s": 5.0, "reconnect_min_s": 0.5,
                    "reconnect_max_s": 30.0, "loop": False, "decode_size": "auto", "decode_threads": 1},
         "model": {"path": "m.tflite", "runtime": "auto", "num_threads": 3, "delegate": "none",
                   "edgetpu_device": "usb:0", "postprocess": {"top_k": 3}, "task": "detection",
                   "labels": ["person", "car"]},
         "publish": {"qos": 1, "policy": "on_change", "min_score": 0.5, "change_delta": 0.1, "max_rate_hz": 2,
                     "topic": "site/door/result"},
         "motion": {"min_area": 0.002, "max_idle_s": 60, "cooldown_s": 0.5, "idle_fps": 5, "threshold": 25,
                    "light_change": 0.5, "crop_to_motion": True},
         "masks": [{"name": "n", "polygon": [[0.0, 0.0], [0.4, 0.0], [0.4, 0.3], [0.0, 0.3]]}],
         "zones": {"polygons": {"driveway": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]},
                   "anchor": "bottom_center", "filter": False},
         "steps": [{"type": "every_nth", "n": 3}],
         "evidence": {"enabled": True, "min_score": 0.8, "labels": ["person"], "max_files": 500,
                      "max_bytes": 104857600, "max_age_s": 604800, "jpeg_quality": 85}},
        {"name": "vibration",
         "source": {"type": "iio", "device": "adxl345", "channels": ["accel_x", "accel_y"], "rate_hz": 100,
                    "overflow": "drop_oldest"},
         "window": {"size": 128, "hop": 64}, "model": {"path": "v.tflite"}, "publish": {"qos": 1}},
        {"name": "ser",
         "source": {"type": "serial", "port": "/dev/ttyUSB0", "baudrate": 115200, "format": "csv",
                    "fields": ["a", "b"]},
         "window": {"size": 16, "hop": 16}, "model": {"path": "v.tflite"}},
        {"name": "cmd", "source": {"type": "command", "argv": ["cat", "x"]}, "window": {"size": 16, "hop": 8},
         "model": {"path": "v.tflite"}},
        {"name": "file", "source": {"type": "file", "path": "x.csv"}, "window": {"size": 16, "hop": 8},
         "model": {"path": "v.tflite"}},
    ],
    "outbox": {"max_messages": 100000, "max_bytes": 268435456},
    "drain_timeout_s": 10.0,
    "watchdog": {"enabled": True, "stall_after_s": 30.0},
    "metrics": {"listen": "127.0.0.1:9101"},
    "fleet": {"enabled": True, "trusted_keys_dir": "keys", "groups": ["lobby"], "max_model_bytes": 67108864,
              "max_inbound_bytes": 1048576, "watch_s": 60, "p99_factor": 2.0, "fetch_timeout_s": 300,
              "allow_http": True},
    "homeassistant": {"discovery": True, "prefix": "homeassistant", "off_delay_s": 10},
    "log_level": "INFO",
    "cpu_pinning": "auto",
}  # fmt: skip


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        found += _paths(child, (*path, key))
    return found


PATHS = _paths(FULL)
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=80),
    st.lists(st.integers(), max_size=4), st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    st.lists(st.lists(st.floats(), max_size=3), max_size=4), st.just("x" * 5000), st.just("../../etc/passwd"),
)  # fmt: skip


def test_the_full_config_is_valid() -> None:
    parse_config(FULL, base_dir=Path("/etc/edge-agent"))  # so every mutation below starts from a valid one


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), ODD), min_size=1, max_size=3))
def test_any_value_anywhere_is_a_config_error_or_accepted(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = copy.deepcopy(FULL)
    for path, value in edits:
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent
    try:
        parse_config(doc, base_dir=Path("/etc/edge-agent"))
    except ConfigError as exc:
        assert str(exc).strip()
