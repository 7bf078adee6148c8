"""DeployAgent end to end over a real mosquitto: real signatures, real files; the model loader, golden
runner, swap and health are the fakes in fleet_support (the daemon's real ones come at integration)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.fleet.agent import DeployAgent
from edge_agent.fleet.broker import FleetClient
from edge_agent.fleet.config import FleetConfig
from edge_agent.fleet.deploy import ModelFiles, build_deployment, build_rollback, encode, read_model
from edge_agent.fleet.device import deployed_models
from edge_agent.fleet.signing import generate_keypair, load_private_key
from edge_agent.fleet.store import ModelStore
from edge_agent.fleet.topics import model_topic
from tests.fixtures.broker import validate_payload
from tests.fixtures.cards import immutable, set_immutable
from tests.fixtures.http import QuietHandler, serve_http
from tests.fleet_support import FakeDevice, device_client, make_agent, make_model


@pytest.fixture
def env(tmp_path: Path, mosquitto: Any, subscriber: Any) -> dict[str, Any]:
    broker = mosquitto()
    private, public, _ = generate_keypair(tmp_path / "keys")
    rogue, _, _ = generate_keypair(tmp_path / "rogue")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "op.pub").write_bytes(public.read_bytes())
    initial = make_model(tmp_path / "etc", "initial", b"GOOD")
    states = subscriber(broker, "edge/+/deploy/state")
    operator = device_client(broker, "operator")
    env = {
        "broker": broker,
        "key": load_private_key(private),
        "rogue": load_private_key(rogue),
        "trusted": trusted,
        "initial": initial,
        "states": states,
        "op": operator,
        "tmp": tmp_path,
        "number": 100,
    }
    yield env
    operator.close()


def start(env: dict[str, Any], device: str = "cam-01", **kw: Any) -> tuple[Any, Any, FleetClient]:
    agent, fake, client = make_agent(
        env["broker"], env["tmp"] / device, device, env["trusted"], env["initial"], groups=("lobby",), **kw
    )
    env.setdefault("cleanup", []).append((agent, client))
    agent.recover()
    agent.start()
    wait_state(env, device, lambda s: s["reason"] == "started" or s["state"] in ("active", "failed"))
    return agent, fake, client


@pytest.fixture(autouse=True)
def _stop_agents(env: dict[str, Any]) -> Any:
    yield
    for agent, client in env.get("cleanup", []):
        agent.stop()
        client.close()


def wait_state(env: dict[str, Any], device: str, pred: Any, timeout: float = 15) -> dict[str, Any]:
    topic = f"edge/{device}/deploy/state"

    def done(msgs: list[tuple[str, bytes, bool]]) -> bool:
        return any(pred(json.loads(p)) for t, p, _ in msgs if t == topic and p)

    msgs = env["states"].wait_for(done, timeout)
    return next(json.loads(p) for t, p, _ in reversed(msgs) if t == topic and p and pred(json.loads(p)))


def deploy(
    env: dict[str, Any],
    name: str,
    behaviour: bytes,
    *,
    target: tuple[str, str] = ("device", "cam-01"),
    key: str = "key",
    publish_model: bytes | None = None,
    number: int | None = None,
    padding: int = 1000,
    pipeline: str = "cam",
) -> tuple[int, str]:
    files = read_model(make_model(env["tmp"] / "ws", name, behaviour, padding=padding))
    if number is None:
        env["number"] += 1
        number = env["number"]
    dep = build_deployment(
        files, number=number, target=target, pipeline=pipeline, key=env[key], prefix="edge", healthy_for_s=0.5
    )
    env["op"].publish(
        model_topic("edge", files.sha256), files.data if publish_model is None else publish_model
    )
    topic = "edge/cam-01/deploy" if target[0] == "device" else f"edge/groups/{target[1]}/deploy"
    env["op"].publish(topic, encode(dep))
    return number, files.sha256


def deploy_from_url(env: dict[str, Any], files: ModelFiles, number: int, url: str) -> None:
    """Publish a deployment to cam-01 whose model is fetched from ``url`` (the model is not on the broker)."""
    dep = build_deployment(files, number=number, target=("device", "cam-01"), pipeline="cam", key=env["key"],
                           prefix="edge", healthy_for_s=0.2, url=url)  # fmt: skip
    env["op"].publish("edge/cam-01/deploy", encode(dep))


def outcome(env: dict[str, Any], number: int, device: str = "cam-01", timeout: float = 15) -> dict[str, Any]:
    return wait_state(
        env,
        device,
        lambda s: (
            s["number"] == number
            and (s["state"] in ("failed", "rolled_back") or (s["state"] == "active" and s["confirmed"]))
        ),
        timeout,
    )


def test_deploy_to_group_end_to_end(env: dict[str, Any]) -> None:
    agent, fake, client = start(env)
    number, sha = deploy(env, "v2", b"GOOD", target=("group", "lobby"))
    state = outcome(env, number)
    assert state["state"] == "active" and state["sha256"] == sha, state
    assert state["running"]["cam"] == {"sha256": sha, "number": number, "model": "v2"}
    validate_payload(state, "deploy-state")
    seen = [
        json.loads(p)["state"] for t, p, _ in env["states"].snapshot() if json.loads(p)["number"] == number
    ]
    assert seen == ["received", "verified", "fetching", "testing", "active", "active"]
    stored = agent.store.model_path(sha)
    assert fake.swaps == [stored] and stored.is_file()
    assert agent.store.entry("cam")["previous"]["path"] == str(env["initial"])
    # The retained deployment again (a reconnect): ignored, no new state.
    before = len(env["states"].snapshot())
    client.close()
    client._client.reconnect()
    client._client.loop_start()
    env["op"].publish(
        "edge/groups/lobby/deploy", env["op"].retained("edge/groups/lobby/deploy")["edge/groups/lobby/deploy"]
    )
    deadline = time.monotonic() + 5
    while agent.stats().get("duplicates_ignored", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.stats()["duplicates_ignored"] >= 2  # the reconnect's retained copy and the re-publish
    assert len(env["states"].snapshot()) == before
    assert ModelStore(env["tmp"] / "cam-01").current_model("cam") == stored  # what a restart would load


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("golden", "golden_mismatch"),
        ("shape", "incompatible"),
        ("sha", "sha256_mismatch"),
        ("truncated", "truncated"),
        ("too_large", "too_large"),
        ("unknown_key", "unknown_key"),
        ("replayed", "replayed"),
        ("bad_signature", "bad_signature"),
        ("malformed", "malformed"),
        ("wrong_target", "wrong_target"),
        ("full_card", "write_failed"),
    ],
)
def test_refused_with_reason_and_old_model_keeps_running(env: dict[str, Any], case: str, reason: str) -> None:
    agent, fake, _ = start(env, max_model_bytes=4096)
    running = env["initial"]
    if case == "golden":
        number, _ = deploy(env, "wrong", b"WRONG")
    elif case == "shape":
        number, _ = deploy(env, "shape", b"SHAPE")
    elif case == "sha":
        files = read_model(make_model(env["tmp"] / "x", "sha", b"GOOD"))
        number, _ = deploy(env, "sha", b"GOOD", publish_model=files.data[:-1] + b"X")
    elif case == "truncated":
        files = read_model(make_model(env["tmp"] / "x", "trunc", b"GOOD"))
        number, _ = deploy(env, "trunc", b"GOOD", publish_model=files.data[:-100])
    elif case == "too_large":
        number, _ = deploy(env, "big", b"GOOD", padding=5000)
    elif case == "unknown_key":
        number, _ = deploy(env, "rogue", b"GOOD", key="rogue")
    elif case == "replayed":
        first, _ = deploy(env, "v2", b"GOOD")
        assert outcome(env, first)["state"] == "active"
        fake.swaps.clear()
        running = fake.running.path
        number, _ = deploy(env, "v3", b"GOOD", number=first - 1)
    elif case == "full_card":  # the model's file is written where the kernel says ENOSPC: a full card
        sha = read_model(make_model(env["tmp"] / "ws", "full", b"GOOD")).sha256
        deployed = env["tmp"] / "cam-01" / "deployed"
        (deployed / f".tmp-{sha}.tflite").symlink_to("/dev/full")
        number, _ = deploy(env, "full", b"GOOD")
    elif case == "wrong_target":
        files = read_model(make_model(env["tmp"] / "ws", "other", b"GOOD"))
        env["number"] += 1
        number = env["number"]
        dep = build_deployment(
            files,
            number=number,
            target=("device", "cam-02"),
            pipeline="cam",
            key=env["key"],
            prefix="edge",
            healthy_for_s=0.5,
        )
        env["op"].publish("edge/cam-01/deploy", encode(dep))  # right topic, wrong signed target
    else:
        files = read_model(make_model(env["tmp"] / "ws", "forged", b"GOOD"))
        env["number"] += 1
        number = env["number"]
        dep = build_deployment(
            files,
            number=number,
            target=("device", "cam-01"),
            pipeline="cam",
            key=env["key"],
            prefix="edge",
            healthy_for_s=0.5,
        )
        if case == "bad_signature":
            dep["healthy_for_s"] = 0.0
            env["op"].publish("edge/cam-01/deploy", encode(dep))
        else:
            env["op"].publish("edge/cam-01/deploy", b'{"pipeline": "cam", "number": %d, "oops' % number)
    if case == "malformed":  # unparsable: no number to report
        state = wait_state(env, "cam-01", lambda s: s["state"] == "failed")
    else:
        state = outcome(env, number)
    assert state["state"] == "failed" and state["reason"].startswith(reason + ":"), state
    assert fake.swaps == [] and fake.running.path == running
    assert state["running"]["cam"]["number"] == (None if case != "replayed" else number + 1)
    assert agent.stats()[f"refused_{reason}"] == 1
    if case == "full_card":
        assert "No space left on device; make room on the device's state_dir" in state["reason"], state
        assert not list((env["tmp"] / "cam-01" / "deployed").glob(".tmp-*"))  # nothing left taking room
    # The agent still takes the next good deployment.
    good, _sha = deploy(env, "after", b"GOOD")
    assert outcome(env, good)["state"] == "active"


@pytest.mark.parametrize("when", ["at_once", "before_the_swap"])
def test_a_record_the_card_cannot_take_refuses_the_deployment_and_changes_nothing(
    env: dict[str, Any], when: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A state_dir that takes no new file (a card gone read-only; here an immutable folder): fleet.json
    cannot be saved, so the deployment is refused by name, the old model runs on, and the record (on disk
    and in memory) is what it was, so a restart runs the old model too; once the card takes files again the
    next deployment goes in. ``before_the_swap``: the card fails while the model is tested, so the record
    that makes the new model current is the one that cannot be saved: no swap happens."""
    agent, fake, _ = start(env)
    state_dir = env["tmp"] / "cam-01"
    record = state_dir / "fleet.json"
    on_disk, in_memory = (record.read_bytes() if record.exists() else None), agent.store.entry("cam")
    card = (state_dir, state_dir / "deployed")  # the whole card: no new record, no model deleted
    with immutable(*card), caplog.at_level(logging.WARNING, logger="edge_agent.fleet"):
        if when == "before_the_swap":
            for folder in card:
                set_immutable(folder, False)
            load = agent._load

            def load_then_fail(*args: Any) -> Any:
                agent._load = load  # once
                for folder in card:
                    set_immutable(folder, True)
                return load(*args)

            agent._load = load_then_fail
        number, unsaved = deploy(env, "unsaved", b"GOOD")
        state = outcome(env, number)
        assert state["state"] == "failed", state
        assert state["reason"].startswith(
            f"write_failed: could not save {record}: Operation not permitted; make room"
        ), state
        assert fake.swaps == [] and state["running"]["cam"]["number"] is None
        assert agent.stats()["refused_write_failed"] == 1 and agent.stats()["internal_errors"] == 0
        assert not [r for r in caplog.records if r.exc_info], "a card that fails is said, not a traceback"
        if when == "at_once":  # nothing saved; the number was not consumed: it can be sent again
            assert (record.read_bytes() if record.exists() else None) == on_disk
            assert agent.store.entry("cam") == in_memory
        else:  # saved up to "testing" (a restart tries it again, as after a crash); the old model current
            assert json.loads(record.read_text())["pipelines"]["cam"]["pending"]["phase"] == "testing"
            assert {**agent.store.entry("cam"), "last_number": None} == {**in_memory, "last_number": None}
            assert agent.store.model_path(unsaved).exists()  # could not be pruned: left for the next prune
    assert ModelStore(state_dir).current_model("cam") is None  # a restart runs the old model too
    good, sha = deploy(env, "after", b"GOOD")
    assert outcome(env, good)["state"] == "active"
    assert json.loads(record.read_text())["pipelines"]["cam"]["current"]["sha256"] == sha
    assert not agent.store.model_path(unsaved).exists()


def test_rolls_back_when_errors_rise_and_on_command(env: dict[str, Any]) -> None:
    agent, fake, _ = start(env)
    number, _ = deploy(env, "breaks", b"BREAKS")
    state = outcome(env, number)
    assert state["state"] == "rolled_back" and "errors rose" in state["reason"], state
    assert fake.swaps[-1] == env["initial"] and state["running"]["cam"]["number"] is None
    number, _ = deploy(env, "slow", b"SLOW")
    state = outcome(env, number)
    assert state["state"] == "rolled_back" and "p99" in state["reason"], state
    good, _sha = deploy(env, "good", b"GOOD")
    assert outcome(env, good)["state"] == "active"
    env["number"] += 1
    cmd = build_rollback(number=env["number"], target=("device", "cam-01"), pipeline="cam", key=env["key"])
    env["op"].publish("edge/cam-01/command", encode(cmd))
    state = outcome(env, env["number"])
    assert state["state"] == "rolled_back" and state["reason"] == "rollback command"
    assert fake.running.path == env["initial"]
    assert agent.store.entry("cam")["previous"] is None


def test_follows_the_config_a_reload_gives(env: dict[str, Any]) -> None:
    """The agent asks for the config's pipelines and models at each use, as a reload (SIGHUP) changes them:
    a rollback to the config's own model loads the file the config names now (what a restart would load)
    and reports its sha256; a pipeline a reload adds takes deployments, one it removes refuses them."""
    models = {"cam": env["initial"]}
    agent, fake, _ = start(env, config_models=models)
    number, _ = deploy(env, "v2", b"GOOD")
    assert outcome(env, number)["state"] == "active"
    newer = make_model(env["tmp"] / "etc", "newer", b"GOOD", padding=1500)
    models["cam"] = newer  # the reload: another model for cam, and a second pipeline
    models["door"] = env["initial"]
    env["number"] += 1
    cmd = build_rollback(number=env["number"], target=("device", "cam-01"), pipeline="cam", key=env["key"])
    env["op"].publish("edge/cam-01/command", encode(cmd))
    state = outcome(env, env["number"])
    assert state["state"] == "rolled_back", state
    assert fake.running.path == newer
    assert state["running"]["cam"] == {"sha256": read_model(newer).sha256, "number": None, "model": "newer"}
    assert agent.store.current_model("cam") is None  # a restart loads the config's model too
    number, sha = deploy(env, "d2", b"GOOD", pipeline="door")
    state = outcome(env, number)
    assert state["state"] == "active" and state["running"]["door"]["sha256"] == sha, state
    del models["door"]  # a reload removed it
    number, _ = deploy(env, "d3", b"GOOD", pipeline="door")
    state = outcome(env, number)  # signed: reported with its number, which edge-fleet waits for
    assert state["state"] == "failed" and state["pipeline"] == "door", state
    assert state["reason"].startswith("unknown_pipeline:") and "runs ['cam']" in state["reason"], state
    assert set(state["running"]) == {"cam"}


def test_restart_during_test_resumes_and_twice_during_watch_rolls_back(env: dict[str, Any]) -> None:
    """A SIGKILL leaves the record's 'pending' behind; a new agent over the same state_dir finishes it."""
    state_dir = env["tmp"] / "cam-01"
    files = read_model(make_model(env["tmp"] / "ws", "v2", b"GOOD"))
    env["op"].publish(model_topic("edge", files.sha256), files.data)
    dep = build_deployment(
        files,
        number=500,
        target=("device", "cam-01"),
        pipeline="cam",
        key=env["key"],
        prefix="edge",
        healthy_for_s=0.3,
    )
    store = ModelStore(state_dir)
    store.update(
        "cam",
        last_number=500,
        pending={"deployment": dep, "sha256": files.sha256, "phase": "testing", "attempts": 0},
    )
    agent, fake, client = start(env)
    state = outcome(env, 500)
    assert state["state"] == "active" and fake.swaps == [agent.store.model_path(files.sha256)]
    agent.stop()
    client.close()
    # Killed twice while watching: the new model is suspected of killing the daemon; the start goes back.
    store = ModelStore(state_dir)
    entry = store.entry("cam")
    store.update(
        "cam", pending={"deployment": dep, "sha256": files.sha256, "phase": "watching", "restarts": 1}
    )
    assert entry["current"]["sha256"] == files.sha256
    agent2, _, _ = make_agent(
        env["broker"], state_dir, "cam-01", env["trusted"], env["initial"], groups=("lobby",)
    )
    env["cleanup"].append((agent2, _))
    assert agent2.recover() == {}  # back to the config's model
    agent2.start()
    state = wait_state(env, "cam-01", lambda s: s["state"] == "rolled_back")
    assert "restarted twice" in state["reason"] and state["running"]["cam"]["number"] is None


def test_an_unreadable_record_is_said_and_the_retained_deployment_applied_again(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """fleet.json torn by a file system that lost a renamed file's data: the start says so in the log, runs
    the config's model, and the deployment the broker still retains brings the deployed model back."""
    agent, _, client = start(env)
    number, sha = deploy(env, "v2", b"GOOD")
    assert outcome(env, number)["state"] == "active"
    agent.stop()
    client.close()
    state_dir = env["tmp"] / "cam-01"
    (state_dir / "fleet.json").write_text('{"pipelines": {"cam": {"curr')
    agent2, fake2, client2 = make_agent(
        env["broker"], state_dir, "cam-01", env["trusted"], env["initial"], groups=("lobby",)
    )
    env["cleanup"].append((agent2, client2))
    with caplog.at_level(logging.ERROR, logger="edge_agent.fleet.device"):
        assert deployed_models(agent2) == {}  # the config's model, and the stray deployed file removed
    assert f"fleet: {state_dir / 'fleet.json'} could not be read" in caplog.text, caplog.text
    assert not agent2.store.model_path(sha).exists()
    agent2.start()
    deadline = time.monotonic() + 15
    while not fake2.swaps and time.monotonic() < deadline:  # the retained state says "active" already
        time.sleep(0.05)
    assert fake2.swaps == [agent2.store.model_path(sha)]
    assert agent2.store.model_path(sha).is_file() and agent2.store.last_number("cam") == number


def test_without_trusted_keys_remote_deploy_is_off(env: dict[str, Any], tmp_path: Path) -> None:
    subscribed: list[str] = []
    agent, _, client = make_agent(env["broker"], tmp_path / "d", "cam-09", tmp_path / "none", env["initial"])
    agent._subscribe = lambda t, h, m: subscribed.append(t)
    agent.start()
    assert not agent.enabled and subscribed == []
    client.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3000) | st.text(max_size=500).map(str.encode))
def test_fuzz_agent_inbound_never_raises_nor_swaps(tmp_path_factory: Any, payload: bytes) -> None:
    """The worker's handling of any deploy or command payload: no exception escapes, nothing is swapped, a
    refusal is reported as a valid deploy-state message."""
    tmp = tmp_path_factory.mktemp("fuzz")
    initial = make_model(tmp / "etc", "initial", b"GOOD")
    published: list[tuple[str, bytes, bool]] = []
    fake = FakeDevice(initial)
    agent = DeployAgent(
        FleetConfig(trusted_keys_dir=tmp / "none", max_inbound_bytes=2048),
        device_id="cam-01", state_dir=tmp / "state", config_models=lambda: {"cam": initial},
        subscribe=lambda t, h, m: None, publish=lambda t, p, r: published.append((t, p, r)),
        load_candidate=fake.load_candidate, run_golden=fake.run_golden, swap=fake.swap,
        pipeline_health=fake.pipeline_health, trusted_keys={"0" * 16: object()},
    )  # fmt: skip
    agent._on_deploy(payload)
    agent._on_command(payload)
    assert fake.swaps == []
    for _, p, retain in published:
        assert retain
        validate_payload(p, "deploy-state")


def test_model_from_an_http_url(env: dict[str, Any]) -> None:
    """For big models the deployment may name an http(s) URL instead of the retained MQTT message."""
    import functools
    import http.server

    folder = env["tmp"] / "www"
    files = read_model(make_model(folder, "web", b"GOOD"))
    base, server = serve_http(functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder)))
    try:
        _, fake, _ = start(env)
        url = f"{base}/web.tflite"
        deploy_from_url(env, files, 900, url)
        assert outcome(env, 900)["state"] == "active"
        assert fake.swaps[-1].read_bytes() == files.data
        other = read_model(make_model(env["tmp"] / "elsewhere", "gone", b"GOOD"))
        deploy_from_url(env, other, 901, url + ".gone")
        state = outcome(env, 901)
        assert state["state"] == "failed" and state["reason"].startswith("fetch_failed:"), state
    finally:
        server.shutdown()


def _fetching_again(msgs: list[tuple[str, bytes, bool]], number: int) -> bool:
    """A 'fetching' of ``number`` after its 'received' (a start first republishes the last state)."""
    states = [json.loads(p) for _, p, _ in msgs if p]
    steps = [s["state"] for s in states if s.get("number") == number]
    return "received" in steps and "fetching" in steps[steps.index("received") :]


def test_a_stop_while_fetching_leaves_the_deployment_for_the_next_start(env: dict[str, Any]) -> None:
    """systemctl stop or restart in the middle of a download: the deployment is neither failed nor counted
    as an attempt (it was refused as fetch_failed, its number spent, so the retained deployment was never
    applied again); each start takes it up again until the model arrives."""
    files = read_model(make_model(env["tmp"] / "ws", "v2", b"GOOD"))
    dep = build_deployment(files, number=300, target=("device", "cam-01"), pipeline="cam", key=env["key"],
                           prefix="edge", healthy_for_s=0.2)  # fmt: skip
    env["op"].publish("edge/cam-01/deploy", encode(dep))  # the model is not on the broker yet
    for restart in range(3):  # three stops in a row: a crash is allowed one
        seen = len(env["states"].snapshot())
        agent, fake, client = start(env)
        env["states"].wait_for(lambda m, seen=seen: _fetching_again(m[seen:], 300))
        agent.stop()
        client.close()
        pending = ModelStore(env["tmp"] / "cam-01").entry("cam")["pending"]
        assert pending["phase"] == "fetching" and pending["attempts"] == 0 and pending["stopped"], restart
        time.sleep(0.3)
        assert not [p for _, p, _ in env["states"].snapshot()[seen:] if b'"failed"' in p], restart
    env["op"].publish(model_topic("edge", files.sha256), files.data)
    agent, fake, _ = start(env)
    state = outcome(env, 300)
    assert state["state"] == "active" and fake.swaps == [agent.store.model_path(files.sha256)]


def test_a_download_that_trickles_gives_up_at_fetch_timeout_and_stops_at_once(env: dict[str, Any]) -> None:
    """An http(s) model whose server sends a byte now and then (a stalled proxy, a link at its limit): the
    device gives up after fleet.fetch_timeout_s, as for an MQTT model (it waited for hours: each byte
    restarted a 30 s socket timeout), and a stop in the middle ends the download at once."""

    files = read_model(make_model(env["tmp"] / "ws", "slow", b"GOOD"))

    class Trickle(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(files.data)))
            self.end_headers()
            try:
                for byte in files.data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass  # the device hung up

    base, server = serve_http(Trickle)
    url = f"{base}/slow.tflite"
    try:
        agent, _, client = start(env, fetch_timeout_s=2)
        deploy_from_url(env, files, 310, url)
        state = outcome(env, 310, timeout=10)
        assert state["state"] == "failed" and "after 2 s (fleet.fetch_timeout_s)" in state["reason"], state
        agent.stop()
        client.close()
        agent, _, client = start(env, fetch_timeout_s=60)
        deploy_from_url(env, files, 311, url)
        wait_state(env, "cam-01", lambda s: s["number"] == 311 and s["state"] == "fetching")
        time.sleep(0.5)
        began = time.monotonic()
        agent.stop()
        assert time.monotonic() - began < 2.0  # the join's own limit is 5 s
        pending = ModelStore(env["tmp"] / "cam-01").entry("cam")["pending"]
        assert pending["deployment"]["number"] == 311 and pending["stopped"] is True
    finally:
        server.shutdown()


def test_a_stop_while_the_server_sends_nothing_ends_the_download_at_once(env: dict[str, Any]) -> None:
    """A server that sent the headers and a few bytes, then nothing (a dead link that no reset reached): a
    stop is not held by the read waiting for its 30 s socket timeout (the daemon's join gave up after 5 s,
    and the fetch counted as an attempt, as after a crash); the deployment stays pending, marked stopped."""
    import threading

    files = read_model(make_model(env["tmp"] / "ws", "stalled", b"GOOD"))
    release = threading.Event()

    class Stall(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(files.data)))
            self.end_headers()
            self.wfile.write(files.data[:16])
            self.wfile.flush()
            release.wait(60)

    base, server = serve_http(Stall)
    url = f"{base}/stalled.tflite"
    try:
        agent, _, client = start(env, fetch_timeout_s=60)
        deploy_from_url(env, files, 320, url)
        wait_state(env, "cam-01", lambda s: s["number"] == 320 and s["state"] == "fetching")
        time.sleep(0.5)  # inside the read that waits for bytes
        began = time.monotonic()
        agent.stop()
        assert time.monotonic() - began < 2.0  # the join's own limit is 5 s
        client.close()
        pending = ModelStore(env["tmp"] / "cam-01").entry("cam")["pending"]
        assert pending["deployment"]["number"] == 320 and pending["stopped"] is True
        assert pending["attempts"] == 0
    finally:
        release.set()
        server.shutdown()
