"""The privacy check itself (tests/privacy.py): it must flag each way raw data could leave the device, and
pass what the daemon really publishes. The shipped schemas are strict wherever they are ours."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.publish.payloads import result_payload, stats_payload
from tests.daemon_harness import write_config
from tests.fixtures.broker import SCHEMAS
from tests.privacy import (
    ImageCanary,
    NumberCanary,
    canary_frame,
    decoded_frames,
    render_canary_video,
    topics_from_config,
    violations,
)

LATENCY = {"capture_age": 1.0, "preprocess": 0.5, "invoke": 2.0, "postprocess": 0.1, "total": 3.6}


class _Broker:
    host, port = "127.0.0.1", 1883


def topics(tmp_path: Path, **postprocess: Any) -> dict:
    pipelines = [{"name": "cam", "source": {"type": "camera", "url": "x"}, "model": {"path": "m.tflite"}},
                 {"name": "vib", "source": {"type": "file", "path": "x"}, "publish": {"topic": "site/vib"},
                  "model": {"path": "m.tflite",
                            "postprocess": postprocess or {"type": "regression"}}}]  # fmt: skip
    return topics_from_config(write_config(tmp_path / "config.yaml", _Broker(), pipelines))


def result(pipeline: str = "cam", **fields: Any) -> bytes:
    fields = fields or {"label": "red", "class_id": 0, "score": 0.9}
    return result_payload(device="testdev", pipeline=pipeline, seq=1, model_name="m", model_sha256="ab" * 32,
                          fields=fields, latency_ms=LATENCY, frame_index=3)  # fmt: skip


def stats(**pipeline_extra: Any) -> bytes:
    entry = {"state": "running", "last_error": None, "fps": 1.0, "frames": 1, "skipped": 0, "results": 1,
             "published": 1, "errors": 0, "latency_ms": {"total": {"p50": 1.0, "p99": 2.0}},
             "source": {"connected": True, "reconnects": 0, "last_error": None},
             "model": {"name": "m", "sha256": "ab" * 6, "backend": "litert", "delegate": None,
                       "delegate_error": None}, **pipeline_extra}  # fmt: skip
    return stats_payload(device="testdev", uptime_s=1.0, pipelines={"cam": entry},
                         mqtt={"connected": True, "reconnects": 0, "last_error": None},
                         outbox={"depth": 0, "bytes": 0, "dropped": 0})  # fmt: skip


def test_what_the_daemon_publishes_passes(tmp_path: Path) -> None:
    allowed = topics(tmp_path)
    messages = [("edge/testdev/status", b"online", True), ("edge/testdev/stats", stats(), False),
                ("edge/testdev/cam/result", result(), False),
                ("site/vib", result("vib", values={"load": 0.5}, units={"load": "kW"}), False),
                ("edge/testdev/status", b"offline", True)]  # fmt: skip
    canaries = [NumberCanary(1234.5678), ImageCanary([canary_frame()])]
    assert violations(messages, allowed, canaries) == []


@pytest.mark.parametrize(
    "message, expected",
    [
        (("edge/testdev/cam/evidence", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", False), "not an allowed topic"),
        (("edge/testdev/cam/result", result(window=[0.1, 0.2]), False), "'window' was unexpected"),
        (("edge/testdev/stats", stats(inbound=3), False), "'inbound' was unexpected"),
        (("edge/testdev/status", b"rebooting", True), "does not validate"),
        (("edge/testdev/cam/result", b"not json", False), "does not validate"),
    ],
)
def test_wrong_topic_or_payload_is_flagged(tmp_path: Path, message: tuple, expected: str) -> None:
    found = violations([message], topics(tmp_path))
    assert any(expected in f for f in found), found


def test_a_plugin_may_add_fields_but_not_the_canary(tmp_path: Path) -> None:
    allowed = topics(tmp_path, type="my-plugin")
    samples = np.full((2, 3), 1234.5678, np.float32)
    ok = result("vib", values={"load": 0.5}, trend="up")
    leak = result("vib", values={"load": 0.5}, window=samples.tolist())
    assert violations([("site/vib", ok, False)], allowed, [NumberCanary(1234.5678)]) == []
    found = violations([("site/vib", leak, False)], allowed, [NumberCanary(1234.5678)])
    assert len(found) == 1 and "canary 1234.5678 as text" in found[0], found
    # the same field on a built-in task's topic is a schema violation as well
    found = violations([("edge/testdev/cam/result", leak, False)], allowed, [NumberCanary(1234.5678)])
    assert len(found) == 2, found


@pytest.mark.parametrize(
    "encode",
    [
        lambda f: {"frame": f.tolist()},
        lambda f: {"frame": f[..., ::-1].ravel().tolist()},  # RGB
        lambda f: {"tensor": (f.astype(np.int16) - 128).ravel()[100:200].tolist()},  # int8 input tensor
        lambda f: {"frame": base64.b64encode(f.tobytes()[1000:1100]).decode()},
        lambda f: {"frame": base64.b64encode(b"x" + f.tobytes()[5:90]).decode()},
        lambda f: b"crop:" + f[10:12, 10:30].tobytes(),  # a binary payload
    ],
    ids=["tolist", "rgb", "int8", "base64", "base64-shifted", "raw"],
)
def test_image_canary_found_in_every_encoding(tmp_path: Path, encode: Any) -> None:
    frame = decoded_frames(render_canary_video(tmp_path / "c.avi", frames=2))[0]
    assert np.array_equal(frame, canary_frame())  # lossless: the daemon sees exactly these bytes
    encoded = encode(frame)
    payload = encoded if isinstance(encoded, bytes) else json.dumps({"label": "red", **encoded}).encode()
    assert ImageCanary([frame]).find(payload) is not None


def test_number_canary_found_in_every_encoding() -> None:
    canary = NumberCanary(1234.5678)
    window = np.full((2, 3), 1234.5678, np.float32)
    for payload in (json.dumps(window.tolist()), json.dumps(window.astype(float).round(2).tolist()),
                    f"{1234.5678:e}", base64.b64encode(b"ab" + window.tobytes()).decode()):  # fmt: skip
        assert canary.find(payload.encode()) is not None, payload
    assert canary.find(window.tobytes()) is not None
    assert canary.find(b'{"values":{"load":0.123456,"t":12.3456}}') is None


def _objects(node: Any, path: str = "#") -> list[tuple[str, dict]]:
    """Every subschema that declares ``properties``, with its JSON pointer."""
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            found += _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects(value, f"{path}/{i}")
    return found


@pytest.mark.parametrize("kind", ["stats", "result"])
def test_schemas_are_strict_where_they_are_ours(kind: str) -> None:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    loose = [path for path, node in _objects(schema) if node.get("additionalProperties") is not False]
    if kind == "result":  # the root leaves room for plugin fields; #/$defs/builtin closes it for built-ins
        assert loose == ["#"]
        assert schema["$defs"]["builtin"] == {**schema["$defs"]["builtin"], "$ref": "#",
                                              "unevaluatedProperties": False}  # fmt: skip
    else:
        assert loose == []
