"""The privacy check every end-to-end test runs: "raw data stays on the device", tested on the wire.

A ``PrivacyWatch`` subscribes to ``#`` on the test broker before the daemon starts and checks every message
it saw, at the end of the test (and again at fixture teardown, so a test cannot forget):

* the topic is allowed: ``<prefix>/<device>/status``, ``/stats`` and each pipeline's result topic, derived
  from the config file the daemon runs with, plus whatever ``extra_topics`` a test adds (MQTT wildcards
  allowed; deploy-state topics go there, and Home Assistant discovery's: ``discovery_topics(config)``);
* the payload validates against its schema: status is ``online``/``offline``; stats against
  stats.schema.json (strict at every level); results of a built-in task against
  result.schema.json#/$defs/builtin (no field beyond those declared), results of a plugin task against the
  root schema (a plugin's own top-level fields allowed);
* no payload carries an image file (JPEG/PNG signature, raw or base64) or the test's **canary**: a
  recognizable sample value (``NumberCanary``) or frame (``ImageCanary``) the test fed the daemon, in any
  of the encodings a careless publisher would use (decimal text, float32/float64 bytes, raw pixel bytes,
  base64, runs of pixel values as JSON numbers).

    def test_x(tmp_path, mosquitto, privacy):
        broker = mosquitto()
        config = write_config(...)
        watch = privacy(broker, config, canary=NumberCanary(1234.5678))
        ... run the daemon ...
        watch.check()
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
import yaml

from tests.fixtures.broker import SCHEMAS, Mosquitto, Subscriber

Message = tuple[str, bytes, bool]
PayloadCheck = Callable[[bytes], None]  # raises AssertionError or ValueError when the payload is bad

# Image files a frame would travel as: JPEG SOI + marker, JFIF/Exif APP headers, PNG signature, and the
# base64 of each (what a JSON field carrying the file would hold).
MEDIA_MARKERS: tuple[bytes, ...] = (
    b"\xff\xd8\xff",
    b"JFIF\x00",
    b"Exif\x00\x00",
    b"\x89PNG\r\n\x1a\n",
    base64.b64encode(b"\xff\xd8\xff")[:4],  # "/9j/"
    base64.b64encode(b"\x89PNG\r\n\x1a\n")[:10],  # "iVBORw0KGg"
)


class Canary(Protocol):
    def find(self, payload: bytes) -> str | None:
        """A description of the canary form found in ``payload``, or None."""


def _base64_forms(raw: bytes, min_len: int) -> set[bytes]:
    """The parts of base64(...raw...) that do not depend on what surrounds ``raw``: one per byte alignment,
    with the characters that mix in neighbouring bytes cut off."""
    forms = set()
    for pad in range(3):
        text = base64.b64encode(b"\x00" * pad + raw + b"\x00" * 3)
        start = (pad * 4 + 2) // 3 + 1  # first character made only of ``raw`` bits
        end = ((pad + len(raw)) * 4) // 3 - 1  # last such character
        part = text[start:end]
        if len(part) >= min_len:
            forms.add(part)
    return forms


class NumberCanary:
    """A sample value that no model output or counter will produce by chance (e.g. 1234.5678), found as
    decimal text in any precision or notation, or as float32/float64 bytes (raw or base64)."""

    def __init__(self, value: float, repeat: int = 6) -> None:
        self.value = value
        digits = f"{abs(value):.10e}".replace(".", "")[:6]  # 1234.5678 -> "123456"
        whole = len(str(int(abs(value))))  # digits before the point in fixed notation
        assert 1 <= whole <= 4, "a canary needs 5 significant digits, at least one after the point"
        last = f"[{digits[5]}{min(9, int(digits[5]) + 1)}]"  # the sixth digit, rounded either way
        # fixed or scientific notation, any precision from 6 significant digits on: "1234.5678",
        # "1234.5677490234375" (float32 widened), "1234.57", "1.2345678e+03"; never inside a longer number
        fixed = rf"{digits[:whole]}\.{digits[whole:5]}{last}"
        scientific = rf"{digits[0]}\.{digits[1:5]}{last}"
        pattern = rf"(?<![\d.])(?:{fixed}|{scientific})"
        self.text = re.compile(pattern.encode())
        self.binary: set[bytes] = set()
        for fmt in ("<f", ">f", "<d", ">d"):
            one = struct.pack(fmt, value)
            self.binary.add(one)
            self.binary |= _base64_forms(one * repeat, 8)  # a window of samples, base64-encoded

    def find(self, payload: bytes) -> str | None:
        if m := self.text.search(payload):
            return f"the canary {self.value} as text {m.group().decode()!r}"
        for form in self.binary:
            if form in payload:
                return f"the canary {self.value} as bytes/base64 {form!r}"
        return None


class ImageCanary:
    """Frames the source delivers (as the test decodes them), found in a payload as a run of ``run`` raw
    pixel bytes (BGR, RGB, or shifted to int8 as a quantized input tensor holds them), the base64 of such a
    run, or a run of ``numbers`` consecutive pixel values printed as JSON numbers (``frame.tolist()``).
    Runs of fewer than 4 distinct values are ignored: flat areas are not recognizable."""

    def __init__(self, frames: Iterable[np.ndarray], run: int = 24, numbers: int = 12) -> None:
        self.run, self.numbers = run, numbers
        self.byte_runs: set[bytes] = set()
        self.b64_runs: set[bytes] = set()
        self.value_runs: set[tuple[int, ...]] = set()
        for frame in frames:
            bgr = np.ascontiguousarray(frame, dtype=np.uint8)
            for form in (bgr, bgr[..., ::-1]):
                flat = np.ascontiguousarray(form).ravel()
                for values in (flat.astype(np.int64), flat.astype(np.int64) - 128):  # uint8 and int8 tensors
                    raw = (values & 0xFF).astype(np.uint8).tobytes()
                    for i in range(0, len(raw) - run + 1):
                        chunk = raw[i : i + run]
                        if len(set(chunk)) >= 4:
                            self.byte_runs.add(chunk)
                    for i in range(0, len(values) - numbers + 1, numbers // 2):
                        seq = tuple(int(v) for v in values[i : i + numbers])
                        if len(set(seq)) >= 4:
                            self.value_runs.add(seq)
                pixels = flat.tobytes()
                # every other run: the base64 of any longer span of the frame contains one of them
                for i in range(0, len(pixels) - 2 * run, run):
                    self.b64_runs |= _base64_forms(pixels[i : i + run], run)

    def find(self, payload: bytes) -> str | None:
        for i in range(0, len(payload) - self.run + 1):
            if payload[i : i + self.run] in self.byte_runs:
                return f"{self.run} raw bytes of a frame at offset {i}"
        for form in self.b64_runs:
            if form in payload:
                return f"base64 of frame bytes {form[:16]!r}..."
        ints = [int(x) for x in re.findall(rb"-?\d+(?![.\d])", payload)]
        for i in range(0, len(ints) - self.numbers + 1):
            if tuple(ints[i : i + self.numbers]) in self.value_runs:
                return f"{self.numbers} pixel values as numbers: {ints[i : i + self.numbers]}"
        return None


def decoded_frames(video: Path, limit: int = 5) -> list[np.ndarray]:
    """The first ``limit`` frames of ``video`` as OpenCV decodes them (BGR uint8)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    try:
        while len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise RuntimeError(f"OpenCV decodes no frame of {video}")
    return frames


def canary_frame(size: int = 64, seed: int = 15) -> np.ndarray:
    """A BGR frame of seeded noise: every 24-byte run of it is unique, so finding one anywhere is proof."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def render_canary_video(path: Path, frames: int = 50, fps: float = 25.0, size: int = 64) -> Path:
    """A lossless (FFV1) .avi showing ``canary_frame`` ``frames`` times: decoded bytes equal the canary."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write FFV1 to {path}")
    try:
        for _ in range(frames):
            writer.write(canary_frame(size))
    finally:
        writer.release()
    return path


@pytest.fixture(scope="session")
def canary_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 lossless frames of ``canary_frame()``; check with ``ImageCanary([canary_frame()])``."""
    return render_canary_video(tmp_path_factory.mktemp("canary") / "canary.avi")


@cache
def _schema(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


@cache
def _validator(kind: str, pointer: str = "") -> Any:
    """A Draft 2020-12 validator for ``<kind>.schema.json`` or one of its ``#/$defs/...`` parts."""
    import jsonschema
    from referencing import Registry, Resource

    schema = _schema(kind)
    registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
    root = {"$ref": schema["$id"] + pointer} if pointer else schema
    return jsonschema.Draft202012Validator(
        root, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_check(kind: str, pointer: str = "") -> PayloadCheck:
    def check(payload: bytes) -> None:
        obj = json.loads(payload)
        errors = sorted(_validator(kind, pointer).iter_errors(obj), key=lambda e: list(e.path))
        if errors:  # raised, not asserted: pytest's assertion rewriting would repeat the error objects
            where = ["/".join(map(str, e.path)) or "<root>" for e in errors]
            raise AssertionError("; ".join(f"{w}: {e.message}" for w, e in zip(where, errors, strict=True)))

    return check


def status_check(payload: bytes) -> None:
    if payload not in (b"online", b"offline"):
        raise AssertionError(f"status is {payload[:80]!r}, not online/offline")


BUILTIN_RESULT = schema_check("result", "#/$defs/builtin")
PLUGIN_RESULT = schema_check("result")
STATS = schema_check("stats")


def topics_from_config(config: Path) -> dict[str, PayloadCheck]:
    """Allowed topic -> payload check, derived from the config file as a reader of the docs would: status
    and stats under ``<topic_prefix>/<device_id>``, each pipeline's ``publish.topic`` or
    ``<prefix>/<device>/<pipeline>/result``; strict result schema unless a postprocessor plugin runs."""
    from edge_agent.processing.postprocess import POSTPROCESSORS

    cfg = yaml.safe_load(config.read_text())
    base = f"{cfg.get('mqtt', {}).get('topic_prefix', 'edge')}/{cfg['device_id']}"
    topics: dict[str, PayloadCheck] = {f"{base}/status": status_check, f"{base}/stats": STATS}
    for p in cfg["pipelines"]:
        topic = (p.get("publish") or {}).get("topic") or f"{base}/{p['name']}/result"
        post = (p.get("model") or {}).get("postprocess") or {}
        builtin = post.get("type", "auto") in ("auto", *POSTPROCESSORS)
        topics[topic] = BUILTIN_RESULT if builtin else PLUGIN_RESULT
    return topics


# Every key a discovery config of edge-agent may hold (edge_agent/homeassistant/entities.py); the values are
# names, labels, units, topics and templates: strings, but for off_delay (seconds).
DISCOVERY_KEYS = frozenset({
    "name", "unique_id", "object_id", "state_topic", "value_template", "json_attributes_topic",
    "json_attributes_template", "availability_topic", "payload_available", "payload_not_available",
    "device", "origin", "icon", "state_class", "device_class", "unit_of_measurement", "entity_category",
    "off_delay",
})  # fmt: skip
DISCOVERY_DEVICE_KEYS = frozenset({"identifiers", "name", "manufacturer", "model", "sw_version"})


def discovery_check(own_topics: Iterable[str]) -> PayloadCheck:
    """A Home Assistant discovery config: empty (an entity taken back) or a JSON object of the keys above,
    whose topics are the device's own (``own_topics``) and whose only number is off_delay."""
    own = set(own_topics)

    def check(payload: bytes) -> None:
        if payload == b"":
            return
        obj = json.loads(payload)
        if not isinstance(obj, dict) or set(obj) - DISCOVERY_KEYS:
            raise AssertionError(f"unexpected discovery keys {sorted(set(obj) - DISCOVERY_KEYS)}")
        if set(obj.get("device", {})) - DISCOVERY_DEVICE_KEYS:
            raise AssertionError(f"unexpected device keys {sorted(obj['device'])}")
        for key, value in obj.items():
            if key.endswith("_topic") and value not in own:
                raise AssertionError(f"{key} {value!r} is not one of the device's topics")
            if key == "off_delay" and not isinstance(value, int):
                raise AssertionError(f"off_delay {value!r} is not whole seconds")
            if key not in ("off_delay", "device", "origin") and not isinstance(value, str):
                raise AssertionError(f"{key} is {type(value).__name__}, not a string")

    return check


def discovery_topics(config: Path) -> dict[str, PayloadCheck]:
    """The topics Home Assistant discovery adds (``extra_topics=`` of a watch) when the config turns it on:
    the configs under ``<prefix>/{sensor,binary_sensor}/<node>/`` (node: the device id, lower case, any
    character but letters, digits, '_' and '-' made '_'), and Home Assistant's own birth/will message."""
    cfg = yaml.safe_load(config.read_text())
    ha = cfg.get("homeassistant") or {}
    if not ha.get("discovery"):
        return {}
    prefix = ha.get("prefix", "homeassistant")
    node = re.sub(r"[^a-z0-9_-]+", "_", str(cfg["device_id"]).lower()).strip("_")
    check = discovery_check(topics_from_config(config))
    return {
        f"{prefix}/status": status_check,
        **{f"{prefix}/{component}/{node}/+/config": check for component in ("sensor", "binary_sensor")},
    }


def violations(
    messages: Iterable[Message],
    topics: Mapping[str, PayloadCheck],
    canaries: Iterable[Canary] = (),
) -> list[str]:
    """Everything wrong with ``messages``; empty when they keep the privacy promise. ``topics`` keys may
    use MQTT wildcards (``+``, ``#``)."""
    from paho.mqtt.client import topic_matches_sub

    canaries = list(canaries)
    found: list[str] = []
    for topic, payload, _retain in messages:
        check = topics.get(topic) or next(
            (c for sub, c in topics.items() if topic_matches_sub(sub, topic)), None
        )
        if check is None:
            found.append(f"{topic}: not an allowed topic ({len(payload)} bytes)")
        else:
            try:
                check(payload)
            except (AssertionError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
                found.append(f"{topic}: payload does not validate: {exc}")
        for marker in MEDIA_MARKERS:
            if marker in payload:
                found.append(f"{topic}: carries an image file (marker {marker!r})")
        for canary in canaries:
            if (what := canary.find(payload)) is not None:
                found.append(f"{topic}: carries {what}")
    return found


class PrivacyWatch:
    """A subscriber on ``#`` for the whole test, and the check of everything it received."""

    def __init__(
        self,
        broker: Mosquitto,
        config: Path,
        canary: Canary | Iterable[Canary] = (),
        extra_topics: Mapping[str, PayloadCheck] | None = None,
        **subscriber_kwargs: Any,
    ) -> None:
        self.config = config
        self.canaries = [canary] if hasattr(canary, "find") else list(canary)  # type: ignore[arg-type]
        self.extra_topics = dict(extra_topics or {})
        self.sub = Subscriber(broker, "#", **subscriber_kwargs)
        self.checked = 0  # messages covered by the last check(), passed or failed

    def topics(self) -> dict[str, PayloadCheck]:
        return {**topics_from_config(self.config), **self.extra_topics}

    def messages(self) -> list[Message]:
        return self.sub.snapshot()

    def check(self) -> list[Message]:
        """Assert the promise over every message so far (at least one: a silent watch proves nothing)."""
        messages = self.messages()
        self.checked = len(messages)
        assert messages, "the privacy watch on '#' received nothing"
        found = violations(messages, self.topics(), self.canaries)
        assert not found, f"{len(found)} privacy violations in {len(messages)} messages:\n" + "\n".join(
            found[:20]
        )
        return messages

    def close(self) -> None:
        self.sub.close()


@pytest.fixture
def privacy() -> Iterator[Callable[..., PrivacyWatch]]:
    """Factory: ``privacy(broker, config, canary=...)`` -> a started ``PrivacyWatch``; checked again and
    closed at teardown."""
    watches: list[PrivacyWatch] = []

    def make(broker: Mosquitto, config: Path, **kwargs: Any) -> PrivacyWatch:
        watch = PrivacyWatch(broker, config, **kwargs)
        watches.append(watch)
        return watch

    yield make
    try:
        for watch in watches:
            # what the test did not check itself (nothing at all: a test that failed before the daemon
            # spoke has its own failure to report)
            if len(watch.messages()) > watch.checked:
                watch.check()
    finally:
        for watch in watches:
            watch.close()
