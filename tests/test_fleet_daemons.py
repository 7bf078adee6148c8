"""Remote deployment end to end: real ``edge-agent run`` daemons, a real mosquitto with the shipped ACL, the
real ``edge-fleet`` CLI, real int8 TFLite models made by TensorFlow (with golden samples as edge-convert
stores them).

The devices run a sensor pipeline fed by a command source (6 values per window, ~20 windows/s). Models are
``y = x @ K + b`` regressions that differ in their bias; the ones meant to misbehave do so through a
test-only postprocessor plugin named in their manifest (``flaky``: every second frame raises; ``gate``:
its construction blocks while a file exists, which holds the device in the ``testing`` step).

Refusals covered here with real daemons: golden-sample mismatch, wrong input shape, bad signature,
replayed deployment. The others (sha256 mismatch, truncated, over the size limit, unknown key, oversized
or malformed payloads, fuzzed inbound bytes) are covered at unit level in test_fleet_agent.py and
test_fleet_verify.py with a real broker but a fake model loader.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.fleet.deploy import build_deployment, encode, read_model
from edge_agent.fleet.signing import generate_keypair, load_private_key
from tests.bridge_config import bridge_to
from tests.daemon_harness import Agent, Agents, write_config
from tests.fixtures.tflite_models import TinyModel, _convert
from tests.privacy import PrivacyWatch, schema_check, topics_from_config

pytestmark = pytest.mark.slow  # TensorFlow makes the models

EDGE_FLEET = str(Path(sys.executable).parent / "edge-fleet")
ACL = Path(__file__).resolve().parents[1] / "edge_agent" / "templates" / "mosquitto-acl.example"
PIPELINE = "sensor"
DEVICES = ("cam-01", "cam-02", "cam-03")
FEED = "import sys, time\nwhile True:\n    print('0.2,0.4,0.6', flush=True)\n    time.sleep(0.025)\n"

PLUGIN = '''
"""Test-only postprocessors named by a deployed model's manifest (tests/test_fleet_daemons.py)."""
import time
from pathlib import Path

from edge_agent.processing.postprocess import resolve_postprocessor


class Flaky:
    """Regression, except that every second frame raises (a model whose outputs break the postprocessor)."""

    def __init__(self, manifest, options):
        self.inner = resolve_postprocessor("regression")(manifest, options)
        self.calls = 0

    def __call__(self, outputs, ctx):
        self.calls += 1
        if self.calls % 2 == 0:
            raise ValueError("flaky postprocessor: output out of range")
        return self.inner(outputs, ctx)


class Gate:
    """Regression; its construction (the candidate's load, in the device's testing step) waits while
    ``block_file`` exists, touching ``marker``."""

    def __init__(self, manifest, options):
        options = dict(options)
        block, marker = Path(options.pop("block_file")), Path(options.pop("marker"))
        while block.exists():
            marker.touch()
            time.sleep(0.02)
        self.inner = resolve_postprocessor("regression")(manifest, options)

    def __call__(self, outputs, ctx):
        return self.inner(outputs, ctx)
'''


def install_plugin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edge_agent_fleet_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = folder / "edge_agent_fleet_test_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: edge-agent-fleet-test-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[edge_agent.postprocessors]\n"
        "flaky = edge_agent_fleet_test_plugin:Flaky\ngate = edge_agent_fleet_test_plugin:Gate\n"
    )
    return folder


# ------------------------------------------------------------------------------------------------ models


def _regression(
    folder: Path,
    name: str,
    bias: tuple[float, float],
    *,
    inputs: int = 6,
    postprocess: dict[str, Any] | None = None,
    golden_from: Path | None = None,
) -> Path:
    """An int8 ``y = x @ K + bias`` with its manifest and golden samples (edge-convert's builders)."""
    import keras

    from converter.golden import golden_samples
    from converter.litert import LiteModel
    from converter.manifest import build_for_file, write_beside

    kernel = np.zeros((inputs, 2), np.float32)
    kernel[: inputs // 2, 0], kernel[inputs // 2 :, 1] = 1.0, 0.5
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(2)])
    model.layers[0].set_weights([kernel, np.asarray(bias, np.float32)])
    rng = np.random.default_rng(7)
    calib = [rng.random((1, inputs), dtype=np.float32) for _ in range(48)] + [
        np.ones((1, inputs), np.float32)
    ]
    path = folder / f"{name}.tflite"
    path.write_bytes(_convert(model, "int8", lambda: ([c] for c in calib)))
    golden, _ = golden_samples(LiteModel(path), rng.random((8, inputs), dtype=np.float32))
    if golden_from is not None:  # another model's expectations: this one cannot reproduce them
        golden = json.loads(golden_from.with_suffix(".json").read_text())["golden"]
    manifest = build_for_file(path, task="regression", roles=["values"], mode="int8",
                              postprocess={"names": ["load", "temperature"], **(postprocess or {})},
                              golden=golden)  # fmt: skip
    write_beside(path, manifest)
    return path


@dataclass(frozen=True)
class FleetModels:
    v1: Path  # what the devices' config names
    v2: Path
    v3: Path
    golden_mismatch: Path
    wrong_shape: Path
    flaky: Path
    gated: Path
    gate_file: Path
    gate_marker: Path

    @staticmethod
    def sha(path: Path) -> str:
        return read_model(path).sha256


@pytest.fixture(scope="session")
def fleet_models(tflite_dir: Path, regression_int8: TinyModel) -> FleetModels:
    folder = tflite_dir / "fleet"
    folder.mkdir(exist_ok=True)
    v2 = _regression(folder, "v2", (5.0, 25.0))
    gate_file, gate_marker = folder / "gate.block", folder / "gate.marker"
    gate = {"type": "gate", "block_file": str(gate_file), "marker": str(gate_marker)}
    return FleetModels(
        v1=regression_int8.path,
        v2=v2,
        v3=_regression(folder, "v3", (3.0, 23.0)),
        golden_mismatch=_regression(folder, "drifted", (9.0, 29.0), golden_from=v2),
        wrong_shape=_regression(folder, "seven", (5.0, 25.0), inputs=7),
        flaky=_regression(folder, "flaky", (4.0, 24.0), postprocess={"type": "flaky"}),
        gated=_regression(folder, "gated", (6.0, 26.0), postprocess=gate),
        gate_file=gate_file,
        gate_marker=gate_marker,
    )


# ------------------------------------------------------------------------------------------------ fleet


class Fleet:
    """A broker with the shipped ACL, an operator key, and devices run by ``edge-agent run``."""

    def __init__(self, tmp: Path, broker: Any, agents: Agents, v1: Path, plugin: Path) -> None:
        self.tmp, self.broker, self.agents, self.v1, self.plugin = tmp, broker, agents, v1, plugin
        self.key, public, _ = generate_keypair(tmp / "operator")
        self.trusted = tmp / "trusted"
        self.trusted.mkdir()
        (self.trusted / "operator.pub").write_bytes(public.read_bytes())
        (tmp / "operator.pw").write_text("pw-operator\n")
        self.configs: dict[str, Path] = {}
        self.running: dict[str, Agent] = {}
        self.operator_broker = broker  # where edge-fleet publishes: a central broker when a bridge is between

    def config(self, device: str, **fleet: Any) -> Path:
        folder = self.tmp / device
        folder.mkdir(exist_ok=True)
        (folder / "pw").write_text(f"pw-{device}\n")
        pipeline = {"name": PIPELINE, "window": {"size": 2, "hop": 2}, "model": {"path": str(self.v1)},
                    "source": {"type": "command", "argv": [sys.executable, "-c", FEED]}}  # fmt: skip
        fleet_cfg = {"trusted_keys_dir": str(self.trusted), "groups": ["lobby"], "watch_s": 2, **fleet}
        self.configs[device] = write_config(
            folder / "config.yaml", self.broker, [pipeline], device_id=device, fleet=fleet_cfg,
            mqtt={"username": device, "password_file": str(folder / "pw")},
        )  # fmt: skip
        return self.configs[device]

    def start(self, device: str) -> Agent:
        agent = self.agents.start(self.configs[device], env={"PYTHONPATH": str(self.plugin)})
        self.running[device] = agent
        return agent

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        at = self.operator_broker
        common = ["--broker", f"{at.host}:{at.port}", "--username", "operator",
                  "--password-file", str(self.tmp / "operator.pw")]  # fmt: skip
        key = ["--key", str(self.key)] if args[0] in ("deploy", "rollback") else []
        return subprocess.run([EDGE_FLEET, *args, *key, *common], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def deploy(self, model: Path, *target: str, healthy: str = "1s", extra: tuple[str, ...] = ()) -> Any:
        return self.cli(
            "deploy", str(model), "--pipeline", PIPELINE, *target, "--healthy-for", healthy, *extra
        )

    def publish_as_operator(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.broker.publish(topic, payload, retain=retain, username="operator", password="pw-operator")

    def signed(self, model: Path, device: str, number: int, healthy_for_s: float = 1.0) -> dict[str, Any]:
        files = read_model(model)
        return build_deployment(files, number=number, target=("device", device), pipeline=PIPELINE,
                                key=load_private_key(self.key), prefix="edge",
                                healthy_for_s=healthy_for_s)  # fmt: skip


def fleet_topics(configs: list[Path]) -> dict[str, Callable[[bytes], None]]:
    """What the privacy watch allows: each device's own topics, and the fleet's (each against its schema;
    models are opaque bytes whose size the broker bounds)."""
    topics: dict[str, Callable[[bytes], None]] = {}
    for c in configs:
        topics |= topics_from_config(c)

    def clearable(check: Callable[[bytes], None]) -> Callable[[bytes], None]:
        return lambda payload: None if payload == b"" else check(payload)  # b"": a cleared retained message

    return topics | {
        "edge/+/deploy/state": schema_check("deploy-state"),
        "edge/+/deploy": clearable(schema_check("deployment")),
        "edge/groups/+/deploy": clearable(schema_check("deployment")),
        "edge/+/command": clearable(schema_check("fleet-command")),
        "edge/models/+": lambda payload: None,
    }


def states(watch: PrivacyWatch, device: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in watch.messages() if t == f"edge/{device}/deploy/state" and p]


def wait_state(watch: PrivacyWatch, agent: Agent, device: str, pred: Callable[[dict[str, Any]], bool],
               timeout: float = 60.0) -> dict[str, Any]:  # fmt: skip
    def found(_: Any) -> bool:
        return any(pred(s) for s in states(watch, device))

    agent.expect(watch.sub, found, timeout)
    return next(s for s in states(watch, device) if pred(s))


def results(watch: PrivacyWatch, device: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in watch.messages() if t == f"edge/{device}/{PIPELINE}/result"]


def stats_of(watch: PrivacyWatch, device: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in watch.messages() if t == f"edge/{device}/stats"]


def running_sha(state: dict[str, Any]) -> str:
    return state["running"][PIPELINE]["sha256"]


def wait_results_of(watch: PrivacyWatch, agent: Agent, device: str, sha: str, count: int = 5) -> None:
    """``count`` results of the model ``sha`` (results carry its 12-character prefix)."""
    agent.expect(
        watch.sub,
        lambda _: sum(r["model"]["sha256"] == sha[:12] for r in results(watch, device)) >= count,
        timeout=60,
    )


def assert_seq_continuous(watch: PrivacyWatch, device: str, since: int = 0) -> list[dict[str, Any]]:
    rs = [r for r in results(watch, device) if r["seq"] >= since]
    seqs = sorted({r["seq"] for r in rs})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"{device}: seq gap in {seqs}"
    return rs


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any, privacy: Any, fleet_models: FleetModels) -> Any:
    users = {u: "pw-" + u for u in ("operator", *DEVICES)}
    broker = mosquitto(users=users, extra_config=(f"acl_file {ACL}", "message_size_limit 262144"))
    with Agents(tmp_path) as agents:
        fl = Fleet(tmp_path, broker, agents, fleet_models.v1, install_plugin(tmp_path / "plugin"))
        yield fl


# ------------------------------------------------------------------------------------------------ tests


def test_group_deploy_canary_refusals_bad_canary_and_offline_device(
    fleet: Fleet, privacy: Any, fleet_models: FleetModels
) -> None:
    m = fleet_models
    configs = [fleet.config(d) for d in DEVICES]
    watch = privacy(fleet.broker, configs[0], extra_topics=fleet_topics(configs),
                    username="operator", password="pw-operator")  # fmt: skip
    agents = {d: fleet.start(d) for d in DEVICES}
    v1, v2 = m.sha(m.v1), m.sha(m.v2)
    for d, a in agents.items():
        a.wait_log("remote deployment is on: 1 trusted key(s)", timeout=60)
        wait_state(watch, a, d, lambda s: running_sha(s) == v1)  # its first state: group membership
        wait_results_of(watch, a, d, v1, 3)

    # 1. The group, one canary first: every device ends active (confirmed) with v2; results never stop
    #    and seq has no gap across the swap.
    res = fleet.deploy(m.v2, "--group", "lobby", extra=("--canary", "1"))
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.index("-> device cam-01") < out.index("-> group lobby"), out
    for d, a in agents.items():
        assert f"{d:<20} active (confirmed)" in out, out
        last = wait_state(
            watch, a, d, lambda s: s["state"] == "active" and s["confirmed"] and s["sha256"] == v2
        )
        assert running_sha(last) == v2
        wait_results_of(watch, a, d, v2, 5)
        rs = assert_seq_continuous(watch, d)
        shas = [r["model"]["sha256"] for r in sorted(rs, key=lambda r: r["seq"])]
        switch = shas.index(v2[:12])
        assert set(shas[:switch]) == {v1[:12]} and set(shas[switch:]) == {v2[:12]}, (
            "one switch, no going back"
        )
        times = sorted(datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() for r in rs)
        # ~20 results/s; the swap itself takes ~30 ms (log), the rest of the margin is a loaded 2-core host
        assert max(np.diff(times)) < 2.0, f"{d}: results stopped for {max(np.diff(times)):.2f} s"

    # 2. Refusals, each with its reason in the deploy state; v2 keeps running.
    a1 = agents["cam-01"]
    res = fleet.deploy(m.golden_mismatch, "--device", "cam-01")
    assert res.returncode != 0 and "golden_mismatch" in res.stdout + res.stderr, res.stdout + res.stderr
    s = wait_state(watch, a1, "cam-01", lambda s: s["state"] == "failed" and "golden_mismatch" in s["reason"])
    assert running_sha(s) == v2 and "golden sample 0: output" in s["reason"]
    res = fleet.deploy(m.wrong_shape, "--device", "cam-01")
    assert res.returncode != 0
    s = wait_state(watch, a1, "cam-01", lambda s: s["state"] == "failed" and "incompatible" in s["reason"])
    assert running_sha(s) == v2 and "7 values" in s["reason"], s["reason"]
    forged = fleet.signed(m.v3, "cam-01", number=int(time.time() * 1000) + 10)
    forged["healthy_for_s"] = 0.5  # changed after signing
    fleet.publish_as_operator("edge/models/" + m.sha(m.v3), m.v3.read_bytes())
    fleet.publish_as_operator("edge/cam-01/deploy", encode(forged))
    s = wait_state(watch, a1, "cam-01", lambda s: s["state"] == "failed" and "bad_signature" in s["reason"])
    assert running_sha(s) == v2
    group_dep = next(p for t, p, _ in watch.messages() if t == "edge/groups/lobby/deploy" and p)
    fleet.publish_as_operator("edge/cam-01/deploy", group_dep)  # v2's deployment again: an older number
    s = wait_state(watch, a1, "cam-01", lambda s: s["state"] == "failed" and "replayed" in s["reason"])
    assert running_sha(s) == v2
    fleet.publish_as_operator("edge/cam-01/deploy", b"", retain=True)
    time.sleep(1.0)
    assert results(watch, "cam-01")[-1]["model"]["sha256"] == v2[:12], "still v2 after every refusal"
    refused = stats_of(watch, "cam-01")[-1]["fleet"]
    assert refused["refused_golden_mismatch"] == refused["refused_incompatible"] == 1
    assert refused["refused_bad_signature"] == refused["refused_replayed"] == 1

    # 3. A canary that goes bad after the swap rolls back on its own; the group never gets the model.
    res = fleet.deploy(m.flaky, "--group", "lobby", healthy="4s", extra=("--canary", "1"))
    assert res.returncode != 0, res.stdout
    assert "canary failed, not deploying to group 'lobby'" in res.stderr, res.stdout + res.stderr
    assert "-> group lobby" not in res.stdout
    s = wait_state(watch, a1, "cam-01", lambda s: s["state"] == "rolled_back")
    assert "errors rose" in s["reason"] and running_sha(s) == v2
    so_far = sum(r["model"]["sha256"] == v2[:12] for r in results(watch, "cam-01"))
    wait_results_of(watch, a1, "cam-01", v2, count=so_far + 5)  # v2 runs again
    for d in ("cam-02", "cam-03"):
        assert all(s["sha256"] != m.sha(m.flaky) for s in states(watch, d))
        assert results(watch, d)[-1]["model"]["sha256"] == v2[:12]

    # 4. A device offline during its deployment gets it when it comes back.
    assert agents["cam-03"].stop() == 0
    res = fleet.deploy(m.v3, "--device", "cam-03", extra=("--timeout", "1s"))
    assert "offline: it gets the deployment when it reconnects" in res.stdout, res.stdout + res.stderr
    again = fleet.start("cam-03")
    v3 = m.sha(m.v3)
    wait_state(
        watch, again, "cam-03", lambda s: s["state"] == "active" and s["confirmed"] and s["sha256"] == v3
    )
    wait_results_of(watch, again, "cam-03", v3, 3)
    watch.check()


def test_sigkill_during_fetch_test_and_after_the_swap(
    fleet: Fleet, privacy: Any, fleet_models: FleetModels
) -> None:
    """After each SIGKILL and a restart the device runs a whole model, and its deploy state says which."""
    m = fleet_models
    config = fleet.config("cam-01")
    watch = privacy(fleet.broker, config, extra_topics=fleet_topics([config]),
                    username="operator", password="pw-operator")  # fmt: skip
    agent = fleet.start("cam-01")
    v1, v2, gated, v3 = m.sha(m.v1), m.sha(m.v2), m.sha(m.gated), m.sha(m.v3)
    wait_results_of(watch, agent, "cam-01", v1, 3)

    def restart_and_check(expect_sha: str) -> Agent:
        again = fleet.start("cam-01")
        s = wait_state(watch, again, "cam-01", lambda s: s["state"] == "active" and s["confirmed"]
                       and s["sha256"] == expect_sha)  # fmt: skip
        assert running_sha(s) == expect_sha
        wait_results_of(watch, again, "cam-01", expect_sha, 5)
        return again

    # During the fetch: the deployment is there, its model not yet (the device waits for it).
    number = int(time.time() * 1000)
    fleet.publish_as_operator("edge/cam-01/deploy", encode(fleet.signed(m.v2, "cam-01", number)))
    wait_state(watch, agent, "cam-01", lambda s: s["state"] == "fetching" and s["number"] == number)
    agent.proc.kill()
    agent.proc.wait(10)
    fleet.publish_as_operator("edge/models/" + v2, m.v2.read_bytes())
    agent = restart_and_check(v2)
    assert "resumed after a restart" in json.dumps(states(watch, "cam-01"))

    # During the test: the candidate's postprocessor blocks its construction.
    m.gate_file.touch()
    m.gate_marker.unlink(missing_ok=True)
    fleet.publish_as_operator("edge/models/" + gated, m.gated.read_bytes())
    fleet.publish_as_operator("edge/cam-01/deploy", encode(fleet.signed(m.gated, "cam-01", number + 1)))
    wait_state(watch, agent, "cam-01", lambda s: s["state"] == "testing" and s["number"] == number + 1)
    deadline = time.monotonic() + 20
    while not m.gate_marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.gate_marker.exists(), agent.log()[-2000:]
    agent.proc.kill()
    agent.proc.wait(10)
    assert results(watch, "cam-01")[-1]["model"]["sha256"] == v2[:12], "v2 ran while the candidate was tested"
    m.gate_file.unlink()
    agent = restart_and_check(gated)

    # Right after the swap (watching): the restart resumes the watch and confirms it.
    fleet.publish_as_operator("edge/models/" + v3, m.v3.read_bytes())
    fleet.publish_as_operator("edge/cam-01/deploy", encode(fleet.signed(m.v3, "cam-01", number + 2, 5.0)))
    wait_state(watch, agent, "cam-01", lambda s: s["state"] == "active" and s["sha256"] == v3)
    agent.proc.kill()
    agent.proc.wait(10)
    agent = restart_and_check(v3)
    assert "(again, after a restart)" in json.dumps(states(watch, "cam-01"))
    models = sorted(p.name for p in (fleet.tmp / "cam-01" / "state" / "deployed").iterdir())
    assert models == sorted([f"{v3}.tflite", f"{v3}.json", f"{gated}.tflite", f"{gated}.json"]), models
    # A reload (SIGHUP) keeps the deployed model, not the config's.
    agent.send(signal.SIGHUP)
    agent.wait_log("reload: pipeline sensor keeps v3", timeout=60)  # unchanged: not loaded again
    assert agent.stop() == 0
    watch.check()


def test_deploy_and_rollback_from_a_central_broker_through_a_site_bridge(
    tmp_path: Path, mosquitto: Any, privacy: Any, fleet_models: FleetModels
) -> None:
    """The README's bridge, both directions, with edge-fleet on the central broker and the devices on the
    site broker (the shipped ACL): the deployment, its model and the rollback command come in through the
    bridge, the deploy states and results go out; a device that connects to the site broker after the
    deployment gets it from what the bridge left retained there."""
    m = fleet_models
    central = mosquitto(persistent=True)
    users = {u: "pw-" + u for u in ("operator", *DEVICES)}
    site = mosquitto(users=users, persistent=True, extra_config=(
        f"acl_file {ACL}", "message_size_limit 262144", *bridge_to(central.port)))  # fmt: skip
    with Agents(tmp_path) as agents:
        fleet = Fleet(tmp_path, site, agents, m.v1, install_plugin(tmp_path / "plugin"))
        fleet.operator_broker = central
        configs = [fleet.config(d) for d in ("cam-01", "cam-02")]
        watch = privacy(central, configs[0], extra_topics=fleet_topics(configs))  # what the centre sees
        v1, v2 = m.sha(m.v1), m.sha(m.v2)
        early = fleet.start("cam-01")
        early.wait_log("remote deployment is on: 1 trusted key(s)", timeout=60)
        wait_state(watch, early, "cam-01", lambda s: running_sha(s) == v1)  # out through the bridge
        wait_results_of(watch, early, "cam-01", v1, 3)

        res = fleet.deploy(m.v2, "--group", "lobby")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{'cam-01':<20} active (confirmed)" in res.stdout, res.stdout
        wait_results_of(watch, early, "cam-01", v2, 5)

        late = fleet.start("cam-02")  # the deployment reached the site broker before this device did
        wait_state(
            watch, late, "cam-02", lambda s: s["state"] == "active" and s["confirmed"] and s["sha256"] == v2
        )
        wait_results_of(watch, late, "cam-02", v2, 3)

        res = fleet.cli("rollback", "--pipeline", PIPELINE, "--device", "cam-01")
        assert res.returncode == 0, res.stdout + res.stderr
        s = wait_state(watch, early, "cam-01", lambda s: s["state"] == "rolled_back")
        assert running_sha(s) == v1
        so_far = sum(r["model"]["sha256"] == v1[:12] for r in results(watch, "cam-01"))
        wait_results_of(watch, early, "cam-01", v1, count=so_far + 3)
        assert results(watch, "cam-02")[-1]["model"]["sha256"] == v2[:12], "only cam-01 was rolled back"
        assert site.log_tail(10_000).count("Connecting bridge (step 2) central") >= 1, site.log_tail()
        watch.check()


def test_deployments_and_rollbacks_follow_what_a_reload_changed(
    fleet: Fleet, privacy: Any, fleet_models: FleetModels
) -> None:
    """A reload (SIGHUP) that names another model for the pipeline and adds a second one: the deploy agent
    sees the running config, not the one of the start. The new pipeline takes a deployment (the deploy state
    lists it), and a rollback goes to the model the config names now, the one a restart would load."""
    import yaml

    m = fleet_models
    config = fleet.config("cam-01")
    reloaded = yaml.safe_load(config.read_text())
    reloaded["pipelines"][0]["model"]["path"] = str(m.v3)
    reloaded["pipelines"].append({**reloaded["pipelines"][0], "name": "door", "model": {"path": str(m.v1)}})
    after = config.with_name("reloaded.yaml")
    after.write_text(yaml.safe_dump(reloaded, sort_keys=False))
    watch = privacy(fleet.broker, config, extra_topics=fleet_topics([config, after]),
                    username="operator", password="pw-operator")  # fmt: skip
    v1, v2, v3 = m.sha(m.v1), m.sha(m.v2), m.sha(m.v3)
    agent = fleet.start("cam-01")
    wait_results_of(watch, agent, "cam-01", v1, 3)
    res = fleet.deploy(m.v2, "--device", "cam-01")
    assert res.returncode == 0, res.stdout + res.stderr

    door = ("deploy", str(m.v2), "--pipeline", "door", "--device", "cam-01", "--healthy-for", "1s")
    res = fleet.cli(*door)  # not yet: refused, and edge-fleet hears so at once (no wait for its timeout)
    assert res.returncode != 0 and "failed  (unknown_pipeline: " in res.stdout, res.stdout + res.stderr
    config.write_text(after.read_text())
    agent.send(signal.SIGHUP)
    agent.wait_log("reload: pipeline door started", timeout=60)
    res = fleet.cli(*door)
    assert res.returncode == 0, res.stdout + res.stderr
    s = wait_state(watch, agent, "cam-01", lambda s: s["pipeline"] == "door" and s["state"] == "active")
    assert s["running"]["door"]["sha256"] == v2 and running_sha(s) == v2, s

    res = fleet.cli("rollback", "--pipeline", PIPELINE, "--device", "cam-01")
    assert res.returncode == 0, res.stdout + res.stderr
    s = wait_state(watch, agent, "cam-01", lambda s: s["state"] == "rolled_back")
    assert s["pipeline"] == PIPELINE and running_sha(s) == v3, s  # not v1, the config's model at the start
    wait_results_of(watch, agent, "cam-01", v3, 5)
    assert agent.stop() == 0
    again = fleet.start("cam-01")  # what a restart loads is what the rollback put in place
    wait_results_of(watch, again, "cam-01", v3, count=10)
    assert again.stop() == 0
    watch.check()
