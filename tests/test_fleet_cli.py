"""``edge-fleet`` as a real process against a real mosquitto, with DeployAgents (fake model loading) as the
devices; and the shipped mosquitto ACL example in a real broker."""

from __future__ import annotations

import contextlib
import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent.fleet.deploy import read_model
from edge_agent.fleet.signing import generate_keypair
from tests.fleet_support import device_client, make_agent, make_model

EDGE_FLEET = str(Path(sys.executable).parent / "edge-fleet")
ACL = Path(__file__).resolve().parents[1] / "edge_agent" / "templates" / "mosquitto-acl.example"


def fleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGE_FLEET, *args], capture_output=True, text=True, timeout=timeout)


def test_keygen_cli(tmp_path: Path) -> None:
    res = fleet("keygen", str(tmp_path / "k"))
    assert res.returncode == 0, res.stderr
    assert "key id" in res.stdout
    assert stat.S_IMODE((tmp_path / "k" / "fleet.key").stat().st_mode) == 0o600
    again = fleet("keygen", str(tmp_path / "k"))
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    (tmp_path / "a-file").write_text("x")
    onto_file = fleet("keygen", str(tmp_path / "a-file"))
    assert onto_file.returncode == 2 and "a-file: cannot create the key (File exists)" in onto_file.stderr
    assert onto_file.stderr.count("\n") == 1, onto_file.stderr
    # A private key others can read is said before anything else happens (as ssh does).
    (tmp_path / "k" / "fleet.key").chmod(0o644)
    model = make_model(tmp_path / "ws", "v2", b"GOOD")
    res = fleet("deploy", str(model), "--pipeline", "cam", "--device", "cam-01", "--key",
                str(tmp_path / "k" / "fleet.key"), "--broker", "127.0.0.1:1")  # fmt: skip
    assert "can be read by other users (mode 644); chmod 600" in res.stderr and res.returncode == 6


@pytest.fixture
def fleet_env(tmp_path: Path, mosquitto: Any) -> Any:
    broker = mosquitto()
    private, public, _ = generate_keypair(tmp_path / "keys")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "op.pub").write_bytes(public.read_bytes())
    initial = make_model(tmp_path / "etc", "initial", b"GOOD")
    devices = {}
    for name in ("cam-01", "cam-02", "cam-03"):
        agent, fake, client = make_agent(broker, tmp_path / name, name, trusted, initial, groups=("lobby",))
        agent.recover()
        agent.start()
        devices[name] = (agent, fake, client)
    time.sleep(0.5)  # their first deploy-state (group membership) is retained on the broker
    env = {"broker": broker, "key": private, "tmp": tmp_path, "devices": devices, "initial": initial,
           "common": ["--broker", f"{broker.host}:{broker.port}"]}  # fmt: skip
    yield env
    for agent, _, client in devices.values():
        agent.stop()
        client.close()


def test_deploy_with_canary_then_status(fleet_env: dict[str, Any], subscriber: Any) -> None:
    env = fleet_env
    model = make_model(env["tmp"] / "ws", "v2", b"GOOD")
    sha = read_model(model).sha256
    args = ["deploy", str(model), "--pipeline", "cam", "--group", "lobby", "--canary", "1"]
    res = fleet(*args, "--key", str(env["key"]), "--healthy-for", "0.5s", *env["common"])
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.index("-> device cam-01") < out.index("-> group lobby"), out  # the canary first
    for name in env["devices"]:
        assert f"{name:<20} active (confirmed)" in out
    for _agent, fake, _ in env["devices"].values():
        assert [p.name for p in fake.swaps] == [f"{sha}.tflite"]
    # What a device connecting now would get: the retained model and the group deployment; the canary's
    # per-device deployment is cleared (the group's covers it).
    sub = subscriber(env["broker"], "edge/#")
    wanted = {f"edge/models/{sha}", "edge/groups/lobby/deploy"}
    msgs = sub.wait_for(lambda m: wanted <= {t for t, _, _ in m}, timeout=5)
    time.sleep(0.3)  # anything else retained arrives with them
    msgs = sub.snapshot()
    retained = {t: p for t, p, r in msgs if r}
    assert retained[f"edge/models/{sha}"] == model.read_bytes()
    dep = json.loads(retained["edge/groups/lobby/deploy"])
    assert dep["model"]["sha256"] == sha and dep["target"] == {"kind": "group", "name": "lobby"}
    assert "edge/cam-01/deploy" not in retained

    status = fleet("status", "--json", *env["common"])
    assert status.returncode == 0, status.stderr
    devices = {d["device"]: d for d in json.loads(status.stdout)}
    assert set(devices) == {"cam-01", "cam-02", "cam-03"}
    for d in devices.values():
        assert d["groups"] == ["lobby"]
        assert d["pipelines"]["cam"]["sha256"] == sha and d["pipelines"]["cam"]["model"] == "v2"
        assert d["last"]["state"] == "active" and d["last"]["confirmed"]
    table = fleet("status", "--group", "lobby", *env["common"])
    assert "cam-02" in table.stdout and sha[:12] in table.stdout


def test_canary_failure_stops_before_the_group(fleet_env: dict[str, Any], subscriber: Any) -> None:
    env = fleet_env
    model = make_model(env["tmp"] / "ws", "bad", b"BREAKS")
    args = ["deploy", str(model), "--pipeline", "cam", "--group", "lobby", "--canary", "1"]
    res = fleet(*args, "--key", str(env["key"]), "--healthy-for", "0.5s", *env["common"])
    assert res.returncode == 10, res.stdout + res.stderr
    assert "canary failed, not deploying to group 'lobby'" in res.stderr and "errors rose" in res.stderr
    assert "Traceback" not in res.stderr
    sub = subscriber(env["broker"], "edge/+/deploy")
    time.sleep(0.5)
    assert not [t for t, p, r in sub.snapshot() if r and p], "no deployment may stay retained"
    assert env["devices"]["cam-02"][1].swaps == [] and env["devices"]["cam-03"][1].swaps == []
    fake01 = env["devices"]["cam-01"][1]
    assert fake01.running.path == env["initial"]  # rolled back on its own


def test_a_canary_that_goes_offline_after_its_swap_stops_the_group(
    fleet_env: dict[str, Any], subscriber: Any
) -> None:
    """A new model that kills its daemon takes the canary offline during its watch: that is no success.
    edge-fleet waited only for online devices, so the group got the model; now it waits for the canary to
    come back and confirm, and stops when it does not before --timeout."""
    env = fleet_env
    model = make_model(env["tmp"] / "ws", "v2", b"GOOD")
    states = subscriber(env["broker"], "edge/cam-01/deploy/state")
    args = ["deploy", str(model), "--pipeline", "cam", "--group", "lobby", "--canary", "1"]
    proc = subprocess.Popen([EDGE_FLEET, *args, "--key", str(env["key"]), "--healthy-for", "3s",
                             "--timeout", "3s", *env["common"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    swapped = b'"state":"active"'
    states.wait_for(lambda m: any(swapped in p and b'"confirmed":false' in p for _, p, _ in m), timeout=30)
    agent = env["devices"]["cam-01"][0]
    agent.stop()  # as if the new model had killed the daemon: its watch never ends
    op = device_client(env["broker"], "lwt")
    op.publish("edge/cam-01/status", b"offline")  # what the broker's last will says then
    op.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 10, out + err
    assert "cam-01               offline: waiting for it to come back and confirm" in out, out
    assert "canary failed, not deploying to group 'lobby': cam-01: offline, and no answer" in err, err
    assert "-> group lobby" not in out
    assert env["devices"]["cam-02"][1].swaps == [] and env["devices"]["cam-03"][1].swaps == []


def test_rollback_cli_and_errors(fleet_env: dict[str, Any]) -> None:
    env = fleet_env
    model = make_model(env["tmp"] / "ws", "v3", b"GOOD")
    res = fleet("deploy", str(model), "--pipeline", "cam", "--device", "cam-02", "--key", str(env["key"]),
                "--healthy-for", "0.2s", *env["common"])  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    res = fleet(
        "rollback", "--pipeline", "cam", "--device", "cam-02", "--key", str(env["key"]), *env["common"]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rolled_back  (rollback command)" in res.stdout
    assert env["devices"]["cam-02"][1].running.path == env["initial"]
    # Bad input: one line, its exit code, no traceback.
    (env["tmp"] / "lonely.tflite").write_bytes(b"x")
    res = fleet("deploy", str(env["tmp"] / "lonely.tflite"), "--pipeline", "cam", "--device", "cam-02",
                "--key", str(env["key"]), *env["common"])  # fmt: skip
    assert res.returncode == 3 and "manifest not found" in res.stderr and "Traceback" not in res.stderr
    res = fleet("status", "--broker", "127.0.0.1:1")
    assert res.returncode == 6 and "cannot connect" in res.stderr and res.stderr.count("\n") == 1


BAD_OPTIONS = [
    (["--pipeline", "door/cam"], "--pipeline 'door/cam'"),
    (["--device", "cam-01", "--device", "edge/#"], "--device 'edge/#'"),
    (["--group", "lobby+"], "--group 'lobby+'"),
    (["--url", "ftp://models.example/v2.tflite"], "--url 'ftp://"),
    (["--url", "https://models.example/a b.tflite"], "--url 'https://"),
    (["--healthy-for", "48h"], "--healthy-for 48h: at most 24h"),
    (["--healthy-for", "soon"], "--healthy-for: 'soon' is not a duration"),
    (["--prefix", "site/#"], "--prefix 'site/#'"),
    (["--broker", "127.0.0.1:99999"], "--broker: write HOST:PORT with a port from 1 to 65535"),
    (["--canary", "-1"], "'--canary': -1 is not in the range"),
    (["--device", "cam-01", "--canary", "1"], "--canary needs --group"),
]


@pytest.mark.parametrize(("options", "named"), BAD_OPTIONS, ids=[o[1][:24] for o in BAD_OPTIONS])
def test_a_bad_option_is_named_before_the_broker_is_asked(
    tmp_path: Path, options: list[str], named: str
) -> None:
    """Every option is checked before edge-fleet connects: nothing listens on the broker given here, so
    a check made after connecting would say "cannot connect" (exit 6) instead."""
    model = make_model(tmp_path / "ws", "v2", b"GOOD")
    private, _, _ = generate_keypair(tmp_path / "keys")
    defaults = {"--pipeline": "cam", "--broker": "127.0.0.1:1"}
    if not {"--device", "--group"} & set(options):
        defaults["--group"] = "lobby"
    args = [a for k, v in defaults.items() if k not in options for a in (k, v)]
    res = fleet("deploy", str(model), "--key", str(private), *args, *options)
    assert res.returncode == 2, res.stdout + res.stderr
    assert named in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("command", ["status", "gc", "rollback"])
def test_the_other_commands_check_before_connecting(tmp_path: Path, command: str) -> None:
    private, _, _ = generate_keypair(tmp_path / "keys")
    rollback = ["--pipeline", "cam", "--device", "cam/01", "--key", str(private)]
    extra = rollback if command == "rollback" else []
    res = fleet(command, "--prefix", "/edge", *extra, "--broker", "127.0.0.1:1")
    assert res.returncode == 2 and "--prefix '/edge'" in res.stderr and "Traceback" not in res.stderr
    if command == "rollback":
        res = fleet(command, *extra, "--broker", "127.0.0.1:1")
        assert res.returncode == 2 and "--device 'cam/01'" in res.stderr, res.stderr


def test_a_refused_deploy_leaves_nothing_retained(tmp_path: Path, mosquitto: Any, subscriber: Any) -> None:
    """A bad option, or a canary larger than the online part of its group, publishes nothing: before,
    the model was retained first and the deployment refused after, leaving a model no deployment uses."""
    broker = mosquitto()
    model = make_model(tmp_path / "ws", "v2", b"GOOD")
    private, _, _ = generate_keypair(tmp_path / "keys")
    common = ["--key", str(private), "--broker", f"{broker.host}:{broker.port}"]
    bad = fleet("deploy", str(model), "--pipeline", "door/cam", "--device", "cam-01", *common)
    assert bad.returncode == 2 and "--pipeline 'door/cam'" in bad.stderr, bad.stderr
    canary = fleet("deploy", str(model), "--pipeline", "cam", "--group", "lobby", "--canary", "2", *common)
    assert canary.returncode == 10 and "--canary 2: group 'lobby' has 0 online device(s)" in canary.stderr
    assert "published" not in bad.stdout + canary.stdout
    watch = subscriber(broker, "edge/#")
    time.sleep(1.0)  # retained messages arrive at once on subscribing
    assert watch.snapshot() == []


def test_a_device_never_seen_is_said_at_once(tmp_path: Path, mosquitto: Any) -> None:
    """A typo in --device waited silently until --timeout (15 minutes by default)."""
    broker = mosquitto()
    model = make_model(tmp_path / "ws", "v2", b"GOOD")
    private, _, _ = generate_keypair(tmp_path / "keys")
    args = ["--timeout", "1s", "--healthy-for", "0s", "--broker", f"{broker.host}:{broker.port}"]
    res = fleet("deploy", str(model), "--pipeline", "cam", "--device", "cma-01", "--key", str(private), *args)
    assert "cma-01               never seen on this broker: waiting for it (is the id right" in res.stdout
    assert res.returncode == 10 and "cma-01: no answer before --timeout" in res.stderr, res.stderr


def test_status_shows_a_fleet_whose_devices_publish_nonsense(mosquitto: Any) -> None:
    """A deploy state is the devices' input to the operator's terminal: one that fails the schema, or names
    another device, is shown as unreadable (it made `status` a traceback for the whole fleet), and no
    control character reaches the terminal."""
    broker = mosquitto()
    good = {"schema": "edge-agent/deploy-state/1", "device": "cam-01", "state": "failed", "number": 7,
            "groups": ["lobby"], "reason": "\x1b[2Jwiped", "ts": "2026-12-01T10:00:00Z"}  # fmt: skip
    published = {
        "cam-01": json.dumps(good),
        "cam-02": '{"reason": 5, "state": "failed"}',
        "cam-03": '{"running": [1]}',
        "cam-04": '{"groups": [1, 2], "state": "active"}',
        "cam-05": json.dumps({**good, "device": "cam-01"}),
        "cam-06": "not json",
    }
    op = device_client(broker, "operator")
    for device, payload in published.items():
        op.publish(f"edge/{device}/deploy/state", payload.encode())
    op.publish("edge/cam-01/status", b"online")
    op.close()
    table = fleet("status", "--broker", f"{broker.host}:{broker.port}")
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert set(rows) == set(published)
    assert "failed #7 (?[2Jwiped)" in rows["cam-01"] and "lobby" in rows["cam-01"]
    assert "\x1b" not in table.stdout
    for device in ("cam-02", "cam-03", "cam-04", "cam-05", "cam-06"):
        assert rows[device].endswith("unreadable deploy state"), rows[device]
    as_json = {d["device"]: d for d in json.loads(fleet("status", "--json", "--broker",
                                                         f"{broker.host}:{broker.port}").stdout)}  # fmt: skip
    assert as_json["cam-01"]["groups"] == ["lobby"] and as_json["cam-01"]["state_unreadable"] is False
    assert as_json["cam-04"]["last"] is None and as_json["cam-04"]["state_unreadable"] is True
    lobby = fleet("status", "--group", "lobby", "--broker", f"{broker.host}:{broker.port}")
    assert [line.split()[0] for line in lobby.stdout.splitlines()[1:]] == ["cam-01"]


def _client(broker: Any, user: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=mqtt.MQTTv311)
    c.username_pw_set(user, "pw-" + user)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert connected.wait(10), "no CONNACK"  # publishing before it fails with 'not currently connected'
    return c


def test_acl_example_in_a_real_mosquitto(mosquitto: Any, subscriber: Any) -> None:
    """The shipped ACL: a device writes its own topics only and reads its deploy topics and models; only the
    operator writes deployments and models. (Uses the fixture's extra_config for acl_file.)"""
    users = {u: "pw-" + u for u in ("operator", "cam-01", "cam-02")}
    broker = mosquitto(users=users, extra_config=(f"acl_file {ACL}",))
    watch = subscriber(broker, "edge/#", username="operator", password="pw-operator")
    forged = [("edge/cam-02/deploy", b"forged"), ("edge/groups/lobby/deploy", b"forged"),
              ("edge/models/" + "0" * 64, b"forged"), ("edge/cam-02/deploy/state", b"forged")]  # fmt: skip
    for topic, payload in forged:
        # mosquitto 2.0.11 drops the connection of a v3.1.1 client on a denied PUBLISH ("Bad socket
        # read/write"), so each attempt gets its own connection, and a refused publish may raise.
        c = _client(broker, "cam-01")
        with contextlib.suppress(RuntimeError, ValueError):
            c.publish(topic, payload, qos=1, retain=True).wait_for_publish(3)
        c.loop_stop()
    cam01 = _client(broker, "cam-01")
    cam01.publish("edge/cam-01/deploy/state", b"mine", qos=1, retain=True).wait_for_publish(5)
    watch.wait_for(lambda m: any(t == "edge/cam-01/deploy/state" for t, _, _ in m), timeout=5)
    time.sleep(0.3)
    assert {t for t, _, _ in watch.snapshot()} == {"edge/cam-01/deploy/state"}, watch.snapshot()
    # Reading: cam-01 gets its group's deployment and models, never cam-02's deployment.
    op = _client(broker, "operator")
    for topic in (
        "edge/groups/lobby/deploy",
        "edge/cam-02/deploy",
        "edge/cam-01/deploy",
        "edge/models/" + "1" * 64,
    ):
        op.publish(topic, b"from operator", qos=1, retain=True).wait_for_publish(5)
    reader = subscriber(broker, "edge/#", username="cam-01", password="pw-cam-01")
    reader.wait_for(lambda m: len(m) >= 3, timeout=5)
    time.sleep(0.3)
    got = {t for t, _, _ in reader.snapshot()}
    assert {"edge/groups/lobby/deploy", "edge/cam-01/deploy", "edge/models/" + "1" * 64} <= got
    assert "edge/cam-02/deploy" not in got
    cam01.loop_stop()
    op.loop_stop()
