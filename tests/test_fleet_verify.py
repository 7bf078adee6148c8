"""The inbound path: every refusal has its own reason; the shipped schemas are the models'; fuzzing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import TOPIC_SAFE
from edge_agent.errors import ConfigError
from edge_agent.fleet.deploy import build_deployment, build_rollback, encode, read_model
from edge_agent.fleet.errors import DeployRefused
from edge_agent.fleet.messages import NAME_PATTERN, SCHEMA_DIR, json_schemas
from edge_agent.fleet.signing import (
    generate_keypair,
    load_private_key,
    load_trusted_keys,
    remote_deploy_status,
)
from edge_agent.fleet.verify import DeviceIdentity, peek_number, verify_command, verify_deployment
from tests.fleet_support import make_model

ME = DeviceIdentity("cam-01", frozenset({"lobby"}), frozenset({"cam"}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("verify")
    private, public, _ = generate_keypair(tmp / "keys")
    rogue, _, _ = generate_keypair(tmp / "rogue")
    trusted = tmp / "trusted"
    trusted.mkdir()
    (trusted / "op.pub").write_bytes(public.read_bytes())
    files = read_model(make_model(tmp / "models", "m1", b"GOOD"))
    return {
        "key": load_private_key(private),
        "rogue": load_private_key(rogue),
        "files": files,
        "trusted": load_trusted_keys(trusted),
    }


def _deployment(
    setup: dict[str, Any],
    *,
    key: str = "key",
    number: int = 10,
    target: tuple[str, str] = ("device", "cam-01"),
    pipeline: str = "cam",
) -> dict[str, Any]:
    return build_deployment(
        setup["files"],
        number=number,
        target=target,
        pipeline=pipeline,
        key=setup[key],
        prefix="edge",
        healthy_for_s=1.0,
    )


def _verify(setup: dict[str, Any], payload: bytes, last: int | None = 5, max_bytes: int = 1 << 20) -> Any:
    return verify_deployment(
        payload, max_bytes=max_bytes, trusted_keys=setup["trusted"], me=ME, last_number=lambda p: last
    )


def _reason(fn: Any) -> str:
    with pytest.raises(DeployRefused) as info:
        fn()
    assert str(info.value)  # a sentence, not just a code
    return info.value.reason


def test_valid_deployment_passes(setup: dict[str, Any]) -> None:
    dep = _verify(setup, encode(_deployment(setup)))
    assert dep.number == 10 and dep.model.sha256 == setup["files"].sha256
    group = _verify(setup, encode(_deployment(setup, target=("group", "lobby"))))
    assert group.target.kind == "group"


def test_each_refusal_has_its_reason(setup: dict[str, Any]) -> None:
    good = _deployment(setup)
    tampered = {**good, "healthy_for_s": 999.0}
    assert _reason(lambda: _verify(setup, encode(tampered))) == "bad_signature"
    assert _reason(lambda: _verify(setup, encode(_deployment(setup, key="rogue")))) == "unknown_key"
    assert _reason(lambda: _verify(setup, encode(good), last=10)) == "replayed"
    assert _reason(lambda: _verify(setup, encode(good), last=11)) == "replayed"
    other = _deployment(setup, target=("device", "cam-02"))
    assert _reason(lambda: _verify(setup, encode(other))) == "wrong_target"
    other_group = _deployment(setup, target=("group", "garage"))
    assert _reason(lambda: _verify(setup, encode(other_group))) == "wrong_target"
    assert _reason(lambda: _verify(setup, encode(_deployment(setup, pipeline="door")))) == "unknown_pipeline"
    assert _reason(lambda: _verify(setup, b"{not json")) == "malformed"
    assert _reason(lambda: _verify(setup, b"[1, 2]")) == "malformed"
    assert _reason(lambda: _verify(setup, b'{"x": NaN}')) == "malformed"
    assert _reason(lambda: _verify(setup, encode(good), max_bytes=100)) == "oversized"
    assert _reason(lambda: _verify(setup, encode({**good, "extra": 1}))) == "schema"
    bad_sha = json.loads(json.dumps(good))
    bad_sha["model"]["manifest"]["sha256"] = "0" * 64
    assert _reason(lambda: _verify(setup, encode(bad_sha))) == "schema"


def _message(fn: Any) -> str:
    with pytest.raises(DeployRefused) as info:
        fn()
    return str(info.value)


def test_each_refusal_says_what_it_refused_and_what_to_do(setup: dict[str, Any]) -> None:
    """The sentence is what an operator reads (edge-fleet, the device's log and stats): it names the number,
    the key, the target or the setting involved, not only a reason code."""
    good = _deployment(setup)
    rogue = _deployment(setup, key="rogue")
    message = _message(lambda: _verify(setup, encode(rogue)))
    assert f"deployment 10 is signed by key {rogue['signer']!r}" in message
    assert "put its .pub in fleet.trusted_keys_dir" in message
    message = _message(lambda: _verify(setup, encode({**good, "healthy_for_s": 999.0})))
    assert message.endswith("deployment 10: the signature does not match (altered or forged)")
    message = _message(lambda: _verify(setup, encode(good), last=12))
    assert "deployment number 10 is not greater than the last one applied (12)" in message
    assert "a replayed old message is refused" in message
    other = _deployment(setup, target=("device", "cam-02"))
    assert "deployment 10 targets device 'cam-02', not this one" in _message(
        lambda: _verify(setup, encode(other))
    )
    garage = _deployment(setup, target=("group", "garage"))
    assert "targets group 'garage'; this device is in ['lobby']" in _message(
        lambda: _verify(setup, encode(garage))
    )
    door = _deployment(setup, pipeline="door")
    assert "is for pipeline 'door'; this device runs ['cam']" in _message(
        lambda: _verify(setup, encode(door))
    )
    message = _message(lambda: _verify(setup, encode(good), max_bytes=100))
    assert f"deployment of {len(encode(good))} bytes exceeds fleet.max_inbound_bytes (100)" in message
    assert "is JSON but not an object" in _message(lambda: _verify(setup, b"[1, 2]"))
    assert "NaN is not JSON" in _message(lambda: _verify(setup, b'{"x": NaN}'))
    assert "deployment field 'extra'" in _message(lambda: _verify(setup, encode({**good, "extra": 1})))


def test_peek_number_names_only_what_looks_like_ours(setup: dict[str, Any]) -> None:
    """The cheap look at a payload (before any check) for duplicate detection: never raises, and gives a
    (pipeline, number) only for one of this device's pipelines with an integer number."""
    good = _deployment(setup)
    assert peek_number(encode(good), {"cam"}) == ("cam", 10)
    assert peek_number(encode(good), {"door"}) is None
    assert peek_number(encode({**good, "number": True}), {"cam"}) is None  # a bool is not a number here
    assert peek_number(encode({**good, "number": "10"}), {"cam"}) is None
    for junk in (b"", b"\xff", b"[1]", b'{"pipeline": "cam"}', b"null"):
        assert peek_number(junk, {"cam"}) is None


def test_a_signature_that_is_not_base64_is_refused(setup: dict[str, Any]) -> None:
    """A signature field that is not exactly an Ed25519 signature in base64 is refused by the schema, naming
    the field; ``signature_valid`` refuses it again on its own (tests/test_fleet_signing.py)."""
    good = _deployment(setup)
    for signature in ("not base64!", f"{good['signature'][:8]}*{good['signature'][8:]}", ""):
        with pytest.raises(DeployRefused) as info:
            _verify(setup, encode({**good, "signature": signature}))
        assert info.value.reason == "schema" and "field 'signature'" in str(info.value)


def test_the_replay_guard_is_per_pipeline_and_the_size_bound_exact(setup: dict[str, Any]) -> None:
    """Each pipeline has its own last number: 10 is a replay on a pipeline that applied 12, not on one that
    applied 5; and a message of exactly fleet.max_inbound_bytes is taken."""
    me = DeviceIdentity("cam-01", frozenset({"lobby"}), frozenset({"cam", "door"}))
    last = {"cam": 5, "door": 12}.get
    args: dict[str, Any] = {"trusted_keys": setup["trusted"], "me": me, "last_number": last}
    payload = encode(_deployment(setup, pipeline="cam"))
    assert verify_deployment(payload, max_bytes=len(payload), **args).number == 10
    door = encode(_deployment(setup, pipeline="door"))
    assert _reason(lambda: verify_deployment(door, max_bytes=1 << 20, **args)) == "replayed"
    rollback = build_rollback(number=10, target=("device", "cam-01"), pipeline="door", key=setup["key"])
    message = _message(lambda: verify_command(encode(rollback), max_bytes=4096, **args))
    assert "command number 10 is not greater than the last one applied (12)" in message
    cam = build_rollback(number=10, target=("device", "cam-01"), pipeline="cam", key=setup["key"])
    assert verify_command(encode(cam), max_bytes=4096, **args).pipeline == "cam"


def test_unknown_pipeline_refusal_carries_its_subject(setup: dict[str, Any]) -> None:
    """Signed, so trusted to name its pipeline and number: the device reports them and edge-fleet stops
    waiting at once."""
    with pytest.raises(DeployRefused) as info:
        _verify(setup, encode(_deployment(setup, pipeline="door")))
    assert info.value.subject == ("door", 10)
    cmd = build_rollback(number=20, target=("group", "lobby"), pipeline="door", key=setup["key"])
    args: dict[str, Any] = {"max_bytes": 4096, "trusted_keys": setup["trusted"], "me": ME}
    with pytest.raises(DeployRefused) as info:
        verify_command(encode(cmd), last_number=lambda p: None, **args)
    assert info.value.subject == ("door", 20) and str(info.value).startswith("command 20 is for pipeline")
    forged = {**cmd, "number": 21}
    message = _message(lambda: verify_command(encode(forged), last_number=lambda p: None, **args))
    assert message.endswith("command 21: the signature does not match (altered or forged)")
    assert "command is not UTF-8 JSON" in _message(lambda: verify_command(b"\xff", last_number=None, **args))
    assert "command field 'extra'" in _message(
        lambda: verify_command(encode({**cmd, "extra": 1}), last_number=None, **args)
    )


def test_rollback_command_is_verified_too(setup: dict[str, Any]) -> None:
    cmd = build_rollback(number=20, target=("group", "lobby"), pipeline="cam", key=setup["key"])
    args: dict[str, Any] = {"max_bytes": 4096, "trusted_keys": setup["trusted"], "me": ME}
    assert verify_command(encode(cmd), last_number=lambda p: 10, **args).command == "rollback"
    forged = {**cmd, "pipeline": "cam", "number": 21}
    assert (
        _reason(lambda: verify_command(encode(forged), last_number=lambda p: 10, **args)) == "bad_signature"
    )
    assert _reason(lambda: verify_command(encode(cmd), last_number=lambda p: 20, **args)) == "replayed"


def test_remote_deploy_off_without_keys(tmp_path: Path) -> None:
    on, why = remote_deploy_status(True, {}, tmp_path)
    assert not on and "no trusted keys" in why and str(tmp_path) in why
    assert "copy an operator's fleet.pub there" in why


def test_remote_deploy_on_with_keys_and_off_when_disabled(setup: dict[str, Any], tmp_path: Path) -> None:
    on, why = remote_deploy_status(True, setup["trusted"], tmp_path)
    (kid,) = setup["trusted"]
    assert on and why == f"remote deployment is on: 1 trusted key(s) ({kid})"
    on, why = remote_deploy_status(False, setup["trusted"], tmp_path)  # keys present, fleet.enabled: false
    assert not on and why == "remote deployment is off (fleet.enabled: false)"
    assert remote_deploy_status(False, {"k": object()}, tmp_path)[0] is False


def test_shipped_schemas_match_the_models_and_validate_payloads(setup: dict[str, Any]) -> None:
    for name, schema in json_schemas().items():
        shipped = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        assert shipped == schema, f"{name}.schema.json is stale: python -m edge_agent.fleet.messages"
    jsonschema.validate(_deployment(setup), json_schemas()["deployment"])
    cmd = build_rollback(number=20, target=("group", "lobby"), pipeline="cam", key=setup["key"])
    jsonschema.validate(cmd, json_schemas()["fleet-command"])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_nothing_but_deploy_refused_escapes(setup: dict[str, Any], data: st.DataObject) -> None:
    good = _deployment(setup)
    kind = data.draw(st.sampled_from(["bytes", "json", "mutate"]))
    if kind == "bytes":
        payload = data.draw(st.binary(max_size=2000))
    elif kind == "json":
        payload = json.dumps(data.draw(_json)).encode()
    else:  # a valid deployment with one field replaced by junk: exercises schema and signature paths
        mutated = json.loads(json.dumps(good))
        paths = [
            ["number"],
            ["target"],
            ["model", "manifest"],
            ["model", "size"],
            ["transport"],
            ["signature"],
            ["signer"],
            ["model", "manifest", "golden"],
            ["healthy_for_s"],
            ["schema"],
        ]
        path = data.draw(st.sampled_from(paths))
        node = mutated
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = data.draw(_json)
        payload = json.dumps(mutated).encode()
    try:
        _verify(setup, payload)
    except DeployRefused as exc:
        assert exc.reason in {"malformed", "oversized", "schema", "unknown_key", "bad_signature"}


def test_watch_rule_p99_needs_a_factor_and_a_real_rise() -> None:
    from edge_agent.fleet.watch import unhealthy_reason

    start = {"state": "running", "errors": 0, "results": 0, "invoke_p99_ms": 0.1}
    noisy = {"state": "running", "errors": 0, "results": 100, "invoke_p99_ms": 0.2}  # 2x, but 0.1 ms
    assert unhealthy_reason(start, noisy, 1.5) is None
    slow = {**noisy, "invoke_p99_ms": 5.0}
    assert "exceeds 1.5 x the old model's 0.1 ms" in (unhealthy_reason(start, slow, 1.5) or "")
    assert unhealthy_reason(start, {**slow, "results": 10}, 1.5) is None  # too few invokes to judge
    assert "errors rose from 0 to 1" in (unhealthy_reason(start, {**noisy, "errors": 1}, 1.5) or "")
    assert "failed after the swap" in (unhealthy_reason(start, {**noisy, "state": "failed"}, 1.5) or "")


@pytest.mark.parametrize("build", ["deployment", "rollback"])
def test_the_workstation_signs_nothing_a_device_would_refuse(setup: dict[str, Any], build: str) -> None:
    """The last guard behind edge-fleet's option checks: an invalid message is never signed, and the error
    names the field."""
    target = ("group", "lobby/#")
    with pytest.raises(ConfigError, match=rf"the {'deployment' if build == 'deployment' else 'command'} "
                       r"would be invalid: field 'target.name': String should match"):  # fmt: skip
        if build == "deployment":
            _deployment(setup, target=target)
        else:
            build_rollback(number=10, target=target, pipeline="cam", key=setup["key"])


def test_names_follow_the_daemons_rule() -> None:
    """Device, group and pipeline names in messages and in the config are one rule (both are topic levels)."""
    assert TOPIC_SAFE.pattern == NAME_PATTERN
