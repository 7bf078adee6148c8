"""The daemon's configuration: one strict YAML file (unknown keys rejected), checked before anything starts.

``load_config(path)`` reads the file and raises a single ``ConfigError`` that lists *every* problem with
its key path and the bad value (``pipelines[0].publish.qos: input should be 0, 1 or 2 (got 3)``), so a
user fixes the file in one pass. Relative paths in the file are resolved against the file's directory,
so a config and its models can travel together. Secrets come only through ``mqtt.password_*``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config_errors import format_validation_error
from edge_agent.errors import ConfigError
from edge_agent.fleet.config import FleetConfig
from edge_agent.homeassistant.config import HomeAssistantConfig
from edge_agent.metrics import MetricsConfig
from edge_agent.processing.masks import MaskConfig
from edge_agent.processing.polygons import coverage
from edge_agent.processing.steps import StepConfig
from edge_agent.processing.steps.motion import MotionConfig
from edge_agent.processing.zones import ZonesConfig
from edge_agent.publish.mqtt import MqttConfig
from edge_agent.runtime.config import ModelConfig
from edge_agent.sources import SourceConfig, WindowConfig

# Names that become topic levels: no MQTT wildcards, no separators, nothing a shell or file system minds.
TOPIC_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishConfig(_Strict):
    """Which results of a pipeline are published, and how."""

    qos: Literal[0, 1, 2] = Field(
        default=1, description="MQTT QoS; 1 and 2 go through the durable outbox first (no loss), 0 does not."
    )
    policy: Literal["every", "on_change", "interval"] = Field(
        default="every",
        description="every: each result; on_change: when the label changes or the score moves by more than "
        "change_delta; interval: the latest result every interval_s.",
    )
    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop results whose primary score is below this."
    )
    change_delta: float = Field(
        default=0.1, ge=0.0, description="on_change: a score change larger than this counts as a change."
    )
    interval_s: float | None = Field(
        default=None, gt=0, description="interval: seconds between published results."
    )
    max_rate_hz: float | None = Field(
        default=None, gt=0, description="Never publish more often than this (results in between are skipped)."
    )
    topic: str | None = Field(
        default=None,
        description="Full topic for this pipeline's results; "
        "default <topic_prefix>/<device_id>/<pipeline>/result.",
    )

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, v: str | None) -> str | None:
        if v is not None and (not v or "#" in v or "+" in v or v.startswith("/") or v.endswith("/")):
            raise ValueError(
                "a topic must be non-empty, not start or end with '/', and contain no '#' or '+'"
            )
        return v

    @model_validator(mode="after")
    def _policy_fields(self) -> PublishConfig:
        if self.policy == "interval" and self.interval_s is None:
            raise ValueError("policy 'interval' needs interval_s (seconds between published results)")
        if self.policy != "interval" and self.interval_s is not None:
            raise ValueError(f"interval_s is only used with policy 'interval' (policy is '{self.policy}')")
        return self


class EvidenceConfig(_Strict):
    """Local evidence: frames that triggered a published detection, kept as JPEG on the device, never sent."""

    enabled: bool = Field(
        default=False, description="Save the frame of each published result of this pipeline."
    )
    min_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Only results with at least this score; default: every published.",
    )
    labels: list[str] | None = Field(default=None, description="Only these labels; default: any label.")
    max_files: int = Field(
        default=500, ge=1, description="Keep at most this many files (oldest deleted first)."
    )
    max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1024, description="Keep at most this many bytes in total."
    )
    max_age_s: float = Field(default=7 * 24 * 3600, gt=0, description="Delete files older than this.")
    jpeg_quality: int = Field(default=85, ge=10, le=100, description="JPEG quality (10-100).")


class PipelineConfig(_Strict):
    """One source, one model, one publish policy."""

    name: str = Field(
        description="Pipeline name, used in topics and payloads: letters, digits, '_', '-', '.'."
    )
    source: SourceConfig = Field(description="Where frames or samples come from; 'type' selects the kind.")
    window: WindowConfig | None = Field(
        default=None, description="Sensor sources: samples per model input (size) and step (hop)."
    )
    steps: list[StepConfig] = Field(
        default_factory=list,
        description="Per-frame steps, in order, run on each frame before the model and before evidence is "
        "saved; each may skip the frame, and one that fails drops it (never used, never stored).",
    )
    masks: list[MaskConfig] = Field(
        default_factory=list,
        description="Cameras: privacy masks, blacked out of every frame before the motion detector, the "
        "model and any evidence file see it (a frame that cannot be masked is dropped).",
    )
    motion: MotionConfig | None = Field(
        default=None, description="Cameras: run the model only when something moves (off when left out)."
    )
    zones: ZonesConfig | None = Field(
        default=None, description="Cameras, detection models: named zones the detections are placed in."
    )
    model: ModelConfig = Field(description="The model to run.")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="Which results are published.")
    evidence: EvidenceConfig = Field(
        default_factory=EvidenceConfig, description="Keep triggering frames locally (camera sources only)."
    )

    @field_validator("name")
    @classmethod
    def _name_topic_safe(cls, v: str) -> str:
        if not TOPIC_SAFE.match(v):
            raise ValueError(
                "a pipeline name must be 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit "
                "(it becomes an MQTT topic level)"
            )
        return v

    @model_validator(mode="after")
    def _keys_match_source(self) -> PipelineConfig:
        """The source decides which pipeline keys apply: its own check of ``window``, evidence for image
        sources only, steps that understand its kind of data."""
        src = self.source
        src.check_window(self.window)
        if self.evidence.enabled and src.data_kind != "image":
            raise ValueError(f"evidence frames exist only for camera sources (this source is {src.type})")
        for key in ("masks", "motion", "zones"):
            if getattr(self, key) and src.data_kind != "image":
                raise ValueError(f"{key}: only for camera sources (this source is {src.type}); remove it")
        if self.masks and coverage([m.polygon for m in self.masks]) > 0.99:
            raise ValueError("masks cover the whole frame: nothing would be left to see; shrink them")
        for i, step in enumerate(self.steps):
            if src.data_kind not in step.data_kinds:
                raise ValueError(
                    f"steps[{i}] ({step.type}) works on {' or '.join(sorted(step.data_kinds))} data, but the "
                    f"source ({src.type}) gives {src.data_kind}: remove it or use another step"
                )
        return self


class OutboxConfig(_Strict):
    """Bounds of the durable result queue (SQLite under state_dir). When full, the oldest results are dropped
    (and counted on the stats topic)."""

    max_messages: int = Field(
        default=100_000, ge=100, description="Most results kept while the broker is away."
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024 * 1024, description="Most bytes kept (>= 1 MiB)."
    )


class WatchdogConfig(_Strict):
    """Liveness: systemd's WatchdogSec= pings are sent only while every pipeline makes progress."""

    enabled: bool = Field(
        default=True, description="Send WATCHDOG=1 when systemd asks for it (WATCHDOG_USEC)."
    )
    stall_after_s: float = Field(
        default=30.0,
        gt=0,
        description="A pipeline whose loop made no progress for this long is reported stuck (log, stats), "
        "whether or not systemd's watchdog is on.",
    )


def _default_device_id() -> str:
    """The host name, cut to its first label and made topic-safe."""
    name = socket.gethostname().split(".")[0] or "edge-device"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:64]


class AgentConfig(_Strict):
    """Top level of /etc/edge-agent/config.yaml."""

    device_id: str = Field(
        default_factory=_default_device_id,
        description="This device's name in topics and payloads; default: the host name.",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The broker and topics.")
    state_dir: Path = Field(
        default=Path("/var/lib/edge-agent"), description="Outbox, seq counters and evidence frames live here."
    )
    pipelines: list[PipelineConfig] = Field(
        min_length=1, description="What to run: one entry per source+model."
    )
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="Bounds of the durable result queue."
    )
    drain_timeout_s: float = Field(
        default=10.0, ge=0, description="On stop, wait this long for pending results to reach the broker."
    )
    watchdog: WatchdogConfig = Field(
        default_factory=WatchdogConfig, description="Liveness checks and systemd pings."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Logging level."
    )
    metrics: MetricsConfig | None = Field(
        default=None, description="Serve Prometheus /metrics (opt-in; e.g. {listen: 127.0.0.1:9101})."
    )
    fleet: FleetConfig = Field(
        default_factory=FleetConfig,
        description="Signed model deployments over MQTT (edge-fleet); off while trusted_keys_dir has no key.",
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig,
        description="Home Assistant MQTT discovery (opt-in): the device and its pipelines appear there.",
    )
    cpu_pinning: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: when the models' num_threads leave a CPU free, each pipeline's inference runs on "
        "CPUs of its own and capture, outbox and MQTT on the rest (fewer preemptions: higher throughput, "
        "lower p99); off: the kernel places every thread.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("device_id")
    @classmethod
    def _device_topic_safe(cls, v: str) -> str:
        if not TOPIC_SAFE.match(v):
            raise ValueError(
                "device_id must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                "(it becomes an MQTT topic level)"
            )
        return v

    @model_validator(mode="after")
    def _unique_pipeline_names(self) -> AgentConfig:
        seen: dict[str, int] = {}
        for i, p in enumerate(self.pipelines):
            if p.name in seen:
                raise ValueError(
                    f"pipeline name '{p.name}' is used twice (pipelines[{seen[p.name]}] and pipelines[{i}]): "
                    "names must be unique"
                )
            seen[p.name] = i
        return self

    @model_validator(mode="after")
    def _one_pipeline_per_device(self) -> AgentConfig:
        """Two pipelines on one camera device or serial port: the second never got a frame and retried
        for ever ("cannot open"), with nothing to say why."""
        held: dict[str, int] = {}
        for i, p in enumerate(self.pipelines):
            device = p.source.held_device()
            if device is None:
                continue
            if device in held:
                raise ValueError(
                    f"pipelines[{held[device]}] and pipelines[{i}] both read {device}, which serves one "
                    "reader: the second would never get a frame. Give each pipeline its own device (two "
                    "models on one camera: serve it as an RTSP stream, e.g. with go2rtc or mediamtx, and "
                    "point both pipelines at the stream)"
                )
            held[device] = i
        return self

    @model_validator(mode="after")
    def _detection_classes_of_known_pipelines(self) -> AgentConfig:
        names = [p.name for p in self.pipelines]
        unknown = sorted(set(self.homeassistant.detection_classes) - set(names))
        if unknown:
            raise ValueError(
                f"homeassistant.detection_classes names pipeline(s) {unknown} that are not configured "
                f"(pipelines: {names})"
            )
        return self

    @model_validator(mode="after")
    def _resolve_relative_paths(self, info: ValidationInfo) -> AgentConfig:
        base = (info.context or {}).get("base_dir")
        if base is not None:
            _resolve_paths(self, Path(base))
        return self

    def result_topic(self, pipeline: PipelineConfig) -> str:
        return pipeline.publish.topic or f"{self.mqtt.topic_prefix}/{self.device_id}/{pipeline.name}/result"

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    def evidence_dir(self, pipeline: PipelineConfig) -> Path:
        return self.state_dir / "evidence" / pipeline.name


# ---------------------------------------------------------------------------------------------- paths


def _abs(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else base / p


def _resolve_paths(cfg: AgentConfig, base: Path) -> None:
    """Make every relative file path absolute against the config file's directory (in place)."""
    cfg.state_dir = _abs(base, cfg.state_dir)
    cfg.mqtt.password_file = _abs(base, cfg.mqtt.password_file)
    if cfg.mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            setattr(cfg.mqtt.tls, name, _abs(base, getattr(cfg.mqtt.tls, name)))
    cfg.fleet.trusted_keys_dir = _abs(base, cfg.fleet.trusted_keys_dir)
    for p in cfg.pipelines:
        m = p.model
        m.path = _abs(base, m.path)
        m.manifest = _abs(base, m.manifest)
        m.labels_file = _abs(base, m.labels_file)
        p.source.resolve_paths(base)


# ---------------------------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {seen[key].start_mark.line + 1})", mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; give the path of your config.yaml") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; give the path of a config .yaml file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; run as a user that can read it") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context and "duplicate" not in problem else problem
        raise ConfigError(f"{path}: YAML syntax error at {where}: {detail}") from None


# ---------------------------------------------------------------------------------------------- loading


def parse_config(data: Any, *, base_dir: Path | None = None, source: str = "config") -> AgentConfig:
    """Validate already-parsed YAML/JSON data; ``ConfigError`` lists every problem."""
    if data is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least 'pipelines:'")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (got {type(data).__name__})")
    try:
        return AgentConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = format_validation_error(exc, AgentConfig)
        listing = "\n".join(f"  {line}" for line in lines)
        raise ConfigError(f"{source}: {len(lines)} problem(s):\n{listing}") from None


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read, validate and resolve a config file. Raises ``ConfigError`` naming every problem."""
    path = Path(path).expanduser()
    data = _read_yaml(path)
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))
