"""Config loading: every problem reported at once, with its key path and the bad value."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.errors import ConfigError

GOOD = """
device_id: pi-kitchen
mqtt:
  host: 127.0.0.1
  port: 1883
  topic_prefix: edge
state_dir: state
pipelines:
  - name: door
    source: {type: camera, url: clips/door.mp4, fps: 10}
    model: {path: models/door.tflite}
    publish: {qos: 1, policy: every, min_score: 0.5}
  - name: vibration
    source: {type: iio, device: "iio:device0", channels: [accel_x, accel_y, accel_z], rate_hz: 100}
    window: {size: 200, hop: 100}
    model: {path: /var/lib/edge-agent/models/vibration.tflite}
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_good_config_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg, AgentConfig)
    assert cfg.device_id == "pi-kitchen"
    assert cfg.state_dir == tmp_path.resolve() / "state"
    door, vib = cfg.pipelines
    assert door.model.path == tmp_path.resolve() / "models" / "door.tflite"
    assert door.source.url == str(tmp_path.resolve() / "clips" / "door.mp4")
    assert vib.model.path == Path("/var/lib/edge-agent/models/vibration.tflite")  # absolute paths stay
    assert door.publish.qos == 1 and door.publish.min_score == 0.5
    assert vib.window is not None and (vib.window.size, vib.window.hop) == (200, 100)
    assert cfg.result_topic(door) == "edge/pi-kitchen/door/result"
    assert cfg.drain_timeout_s > 0 and cfg.outbox.max_messages > 0


def test_device_urls_and_streams_are_not_treated_as_paths(tmp_path: Path) -> None:
    text = GOOD.replace("clips/door.mp4", "udp://127.0.0.1:5000").replace("iio:device0", "adxl345")
    cfg = load_config(write(tmp_path, text))
    assert cfg.pipelines[0].source.url == "udp://127.0.0.1:5000"
    cfg = load_config(write(tmp_path, GOOD.replace("clips/door.mp4", "/dev/video0")))
    assert cfg.pipelines[0].source.url == "/dev/video0"


def test_device_id_defaults_to_host_name(tmp_path: Path) -> None:
    import socket

    cfg = load_config(write(tmp_path, GOOD.replace("device_id: pi-kitchen\n", "")))
    assert cfg.device_id == socket.gethostname().split(".")[0]


# (what is wrong, the YAML, the line the error must contain)
BAD = [
    (
        "qos out of range",
        GOOD.replace("qos: 1", "qos: 3"),
        "pipelines[0].publish.qos: input should be 0, 1 or 2 (got 3)",
    ),
    (
        "typo in a key",
        GOOD.replace("  port: 1883", "  prot: 1883"),
        "mqtt.prot: unknown key; did you mean 'port'?",
    ),
    ("unknown top-level key", GOOD + "loglevel: debug\n", "loglevel: unknown key; did you mean 'log_level'?"),
    (
        "unknown source type",
        GOOD.replace("type: camera", "type: webcam"),
        "pipelines[0].source.type: unknown source type 'webcam'",
    ),
    (
        "port out of range",
        GOOD.replace("port: 1883", "port: 70000"),
        "mqtt.port: input should be less than or equal to 65535 (got 70000)",
    ),
    (
        "negative fps (tag dropped from path)",
        GOOD.replace("fps: 10", "fps: -5"),
        "pipelines[0].source.fps: input should be greater than 0 (got -5)",
    ),
    (
        "min_score above 1",
        GOOD.replace("min_score: 0.5", "min_score: 1.5"),
        "pipelines[0].publish.min_score: input should be less than or equal to 1 (got 1.5)",
    ),
    (
        "bad policy",
        GOOD.replace("policy: every", "policy: sometimes"),
        "pipelines[0].publish.policy: input should be 'every', 'on_change' or 'interval' (got 'sometimes')",
    ),
    (
        "interval without interval_s",
        GOOD.replace("policy: every", "policy: interval"),
        "pipelines[0].publish: policy 'interval' needs interval_s",
    ),
    (
        "sensor without window",
        GOOD.replace("    window: {size: 200, hop: 100}\n", ""),
        "pipelines[1]: a sensor source (iio) needs a window",
    ),
    (
        "camera with window",
        GOOD.replace(
            "    model: {path: models/door.tflite}",
            "    window: {size: 2, hop: 1}\n    model: {path: models/door.tflite}",
        ),
        "pipelines[0]: a camera source takes no window",
    ),
    (
        "hop larger than size",
        GOOD.replace("hop: 100", "hop: 300"),
        "pipelines[1].window: hop (300) must not exceed size (200)",
    ),
    (
        "duplicate pipeline names",
        GOOD.replace("name: vibration", "name: door"),
        "pipeline name 'door' is used twice (pipelines[0] and pipelines[1])",
    ),
    (
        "pipeline name not topic-safe",
        GOOD.replace("name: door", "name: front/door"),
        "pipelines[0].name: a pipeline name must be",
    ),
    (
        "device_id with a wildcard",
        GOOD.replace("pi-kitchen", "pi+kitchen"),
        "device_id: device_id must be 1-64 letters",
    ),
    (
        "two password sources",
        GOOD.replace(
            "topic_prefix: edge", "topic_prefix: edge\n  username: u\n  password_file: p\n  password_env: P"
        ),
        "give only one of password_file, password_env, password_credential",
    ),
    (
        "password without username",
        GOOD.replace("topic_prefix: edge", "topic_prefix: edge\n  password_env: P"),
        "password_env is set but username is not",
    ),
    ("no pipelines", GOOD.split("pipelines:")[0], "pipelines: required key is missing"),
    (
        "empty pipelines",
        GOOD.split("pipelines:")[0] + "pipelines: []\n",
        "pipelines: list should have at least 1 item after validation, not 0",
    ),
    (
        "pipelines not a list",
        GOOD.split("pipelines:")[0] + "pipelines: door\n",
        "pipelines: input should be a valid list (got 'door')",
    ),
    (
        "model without path",
        GOOD.replace("model: {path: models/door.tflite}", "model: {}"),
        "pipelines[0].model.path: required key is missing",
    ),
    (
        "wrong runtime",
        GOOD.replace("model: {path: models/door.tflite}", "model: {path: m.tflite, runtime: tpu}"),
        "pipelines[0].model.runtime: input should be 'auto', 'litert', 'tflite-runtime' or 'tensorflow' "
        "(got 'tpu')",
    ),
    (
        "topic override with wildcard",
        GOOD.replace("min_score: 0.5", "topic: 'a/#'"),
        "pipelines[0].publish.topic: a topic must be non-empty",
    ),
    ("source without type", GOOD.replace("type: camera, ", ""), "pipelines[0].source: needs a 'type' key"),
    (
        "bad log level",
        GOOD + "log_level: loud\n",
        "log_level: input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (got 'LOUD')",
    ),
    (
        "TLS cert without key",
        GOOD.replace("topic_prefix: edge", "topic_prefix: edge\n  tls: {cert_file: c.pem}"),
        "mqtt.tls: cert_file and key_file go together",
    ),
]


@pytest.mark.parametrize(("what", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_key_and_value(tmp_path: Path, what: str, text: str, expected: str) -> None:
    message = errors_of(tmp_path, text)
    assert expected in message, message
    assert "Traceback" not in message


def test_every_error_is_listed_not_just_the_first(tmp_path: Path) -> None:
    text = GOOD.replace("qos: 1", "qos: 7").replace("port: 1883", "port: 0").replace("fps: 10", "fps: 0")
    message = errors_of(tmp_path, text + "extra_key: 1\n")
    assert "4 problem(s)" in message
    for part in (
        "pipelines[0].publish.qos",
        "mqtt.port",
        "pipelines[0].source.fps",
        "extra_key: unknown key",
    ):
        assert part in message


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    message = errors_of(tmp_path, "device_id: x\nmqtt:\n  host: a\n   port: 1\npipelines: []\n")
    assert "YAML syntax error at line 4, column 8: mapping values are not allowed here" in message
    assert str(tmp_path / "config.yaml") in message


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    message = errors_of(tmp_path, GOOD + "device_id: other\n")
    assert "duplicate key 'device_id' (first at line 2)" in message


def test_missing_file_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: config file not found"):
        load_config(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("text", "expected"), [("", "the file is empty"), ("- a\n- b\n", "must be a mapping")]
)
def test_empty_or_non_mapping_file(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in errors_of(tmp_path, text)


def test_parse_config_without_base_dir_keeps_relative_paths() -> None:
    import yaml

    cfg = parse_config(yaml.safe_load(GOOD))
    assert cfg.pipelines[0].model.path == Path("models/door.tflite")


def test_every_field_has_a_description() -> None:
    """The config documents itself (check --help, generated docs): no field without a description."""
    from edge_agent.config import EvidenceConfig, OutboxConfig, PipelineConfig, PublishConfig, WatchdogConfig

    for model in (AgentConfig, PipelineConfig, PublishConfig, EvidenceConfig, OutboxConfig, WatchdogConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert model.model_config.get("extra") == "forbid"


def test_two_pipelines_on_one_camera_device_or_serial_port_are_refused(tmp_path: Path) -> None:
    """A camera device streams to one reader and a serial port has one: the second pipeline never got a
    frame and retried for ever. The same device under another name (an index, a by-id link) is the same."""
    tty = tmp_path / "ttyUSB0"
    tty.touch()
    (tmp_path / "usb-FTDI-if00").symlink_to(tty)

    def pipelines(*sources: dict) -> dict:
        window = {"size": 4, "hop": 4}
        return {
            "pipelines": [
                {"name": f"p{i}", "source": s, "model": {"path": "m.tflite"}}
                | ({"window": window} if s["type"] != "camera" else {})
                for i, s in enumerate(sources)
            ]
        }

    refused = [
        ({"type": "camera", "url": "/dev/video0"}, {"type": "camera", "url": 0}),
        ({"type": "camera", "url": "2"}, {"type": "camera", "url": "/dev/video2"}),
        ({"type": "serial", "port": str(tty)}, {"type": "serial", "port": str(tmp_path / "usb-FTDI-if00")}),
    ]
    for first, second in refused:
        with pytest.raises(
            ConfigError, match=r"pipelines\[0\] and pipelines\[1\] both read .*, which serves one"
        ):
            parse_config(pipelines(first, second), base_dir=tmp_path)
    (tmp_path / "door.mp4").touch()
    shared = [  # files, streams and other devices may be read by several pipelines
        ({"type": "camera", "url": "door.mp4"}, {"type": "camera", "url": "door.mp4"}),
        ({"type": "camera", "url": "rtsp://cam/live"}, {"type": "camera", "url": "rtsp://cam/live"}),
        ({"type": "camera", "url": "/dev/video0"}, {"type": "camera", "url": "/dev/video1"}),
        ({"type": "file", "path": "x.csv"}, {"type": "file", "path": "x.csv"}),
    ]
    for first, second in shared:
        assert len(parse_config(pipelines(first, second), base_dir=tmp_path).pipelines) == 2
