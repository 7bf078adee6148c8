"""Home Assistant discovery on the wire (a real mosquitto, ``edge-agent run`` as a subprocess): every config
retained, re-announced when Home Assistant restarts and when the broker comes back, taken back when a
pipeline leaves, names slugified; the privacy watch covers the discovery topics too. What a real Home
Assistant makes of these configs is tested in test_homeassistant_real.py."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from tests.daemon_harness import Agents, write_config
from tests.ha_pipelines import DEVICE, NODE, config_topics, ha_config, pipelines
from tests.privacy import BUILTIN_RESULT, discovery_topics

PREFIX = "homeassistant"


@pytest.fixture
def models(color_int8, yolo_float32, regression_int8, autoencoder_int8) -> dict:
    return {"front.door": color_int8, "yard": yolo_float32, "vib": regression_int8, "pump": autoencoder_int8}


def configs(messages: list, nonempty: bool = True) -> dict[str, dict]:
    """The last discovery config per topic among ``messages`` (empty payloads: taken back)."""
    last: dict[str, bytes] = {}
    for topic, payload, _ in messages:
        if topic.startswith(f"{PREFIX}/") and topic.endswith("/config"):
            last[topic] = payload
    return {t: json.loads(p) if p else {} for t, p in last.items() if p or not nonempty}


def has_all(topics: set[str]):
    return lambda messages: topics <= set(configs(messages))


def test_every_task_is_announced_retained_with_stable_ids_and_nothing_raw(
    tmp_path: Path, mosquitto, subscriber, privacy, models
) -> None:
    broker = mosquitto()
    names = ["front.door", "yard", "vib", "pump"]
    config = ha_config(tmp_path / "config.yaml", broker, models, names)
    watch = privacy(broker, config, extra_topics=discovery_topics(config))
    want = config_topics(names)
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        agent.expect(watch.sub, has_all(want), timeout=60)
        late = subscriber(broker, f"{PREFIX}/#")  # joins after the announcement: gets the retained copies
        got = late.wait_for(has_all(want), timeout=10)
        assert agent.stop() == 0, agent.log()
        log = agent.log()
    assert set(configs(got)) == want
    assert all(retain for _, _, retain in got), "every discovery config is retained"
    found = configs(got)
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    assert "edge-agent-pi.kitchen-front.door-label" in unique_ids  # made of the names: stable across runs
    for topic, c in found.items():
        assert c["availability_topic"] == f"edge/{DEVICE}/status"
        assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")
        assert c["device"]["identifiers"] == [f"edge-agent-{DEVICE}"] and c["device"]["name"] == DEVICE
        assert c["object_id"] == f"{NODE}_{topic.split('/')[3]}"
    label = found[f"{PREFIX}/sensor/{NODE}/front_door_label/config"]
    assert label["state_topic"] == f"edge/{DEVICE}/front.door/result"
    assert found[f"{PREFIX}/sensor/{NODE}/front_door_fps/config"]["entity_category"] == "diagnostic"
    assert found[f"{PREFIX}/sensor/{NODE}/front_door_fps/config"]["state_topic"] == f"edge/{DEVICE}/stats"
    detected = found[f"{PREFIX}/binary_sensor/{NODE}/yard_person_detected/config"]
    assert detected["off_delay"] == 10 and "'person'" in detected["value_template"].replace('"', "'")
    temperature = found[f"{PREFIX}/sensor/{NODE}/vib_temperature/config"]
    assert (temperature["unit_of_measurement"], temperature["device_class"]) == ("°C", "temperature")
    assert found[f"{PREFIX}/binary_sensor/{NODE}/pump_anomaly/config"]["device_class"] == "problem"
    # the names Home Assistant cannot take are slugified, and the mapping is logged
    assert "device_id 'pi.kitchen' is 'pi_kitchen'" in log
    assert "pipeline name 'front.door' is 'front_door'" in log
    watch.check()  # discovery configs: only our keys and topics; results and stats strict; nothing raw


def test_announced_again_on_home_assistant_birth_and_after_a_broker_restart(
    tmp_path: Path, mosquitto, subscriber, privacy, models
) -> None:
    broker = mosquitto()
    config = ha_config(tmp_path / "config.yaml", broker, models, ["front.door"])
    watch = privacy(broker, config, extra_topics=discovery_topics(config))
    want = config_topics(["front.door"])
    label = f"{PREFIX}/sensor/{NODE}/front_door_label/config"

    def announced(times: int):
        return lambda messages: sum(t == label and p != b"" for t, p, _ in messages) >= times

    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        agent.expect(watch.sub, has_all(want), timeout=60)
        agent.expect(watch.sub, announced(1))
        broker.publish(f"{PREFIX}/status", b"online")  # Home Assistant started (its birth message)
        agent.expect(watch.sub, announced(2), timeout=10)
        agent.wait_log("Home Assistant (re)started: announcing again")

        broker.stop()  # not persistent: the retained configs are gone with it
        broker.start()
        fresh = subscriber(broker, f"{PREFIX}/#")
        agent.expect(fresh, has_all(want), timeout=30)  # the daemon reconnected and announced again
        late = subscriber(broker, f"{PREFIX}/#")  # and retained them
        assert all(retain for _, _, retain in late.wait_for(has_all(want), timeout=10))
        assert agent.stop() == 0, agent.log()
    watch.check()


def test_a_flood_of_births_is_answered_once_a_second_not_once_each(
    tmp_path: Path, mosquitto, subscriber, models
) -> None:
    """Anyone who can write homeassistant/status (or a client repeating its birth) made the device publish
    every entity's retained config once per ``online``: 2,000 births, 18,000 configs. Births are coalesced;
    the last one is still answered."""
    import time

    broker = mosquitto()
    config = ha_config(tmp_path / "config.yaml", broker, models, ["front.door"])
    want = config_topics(["front.door"])
    label = f"{PREFIX}/sensor/{NODE}/front_door_label/config"
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        watch = subscriber(broker, f"{PREFIX}/#")
        agent.expect(watch, has_all(want), timeout=60)
        flooder = broker.client("flooder")
        flooder.connect(broker.host, broker.port)
        flooder.loop_start()
        began = time.monotonic()
        seen = len(watch.snapshot())
        for _ in range(500):
            last = flooder.publish(f"{PREFIX}/status", b"online", qos=1)
        last.wait_for_publish(10)
        flooded_s = time.monotonic() - began
        agent.wait_log("Home Assistant (re)started: announcing again (for ")
        time.sleep(2.5)  # the announcement for the last births, if one is due, is out by now
        flooder.loop_stop()
        flooder.disconnect()
        labels = sum(t == label and p != b"" for t, p, _ in watch.snapshot()[seen:])
        assert 1 <= labels <= flooded_s + 3, (labels, flooded_s)
        assert agent.stop() == 0, agent.log()


def test_a_pipeline_that_leaves_the_config_loses_its_entities(
    tmp_path: Path, mosquitto, subscriber, privacy, models
) -> None:
    broker = mosquitto()
    path = tmp_path / "config.yaml"
    both = ha_config(path, broker, models, ["front.door", "vib"])
    full_text = both.read_text()
    # the file loses vib below; its results and discovery topics stay allowed (derived from both)
    extra = {**discovery_topics(both), f"edge/{DEVICE}/vib/result": BUILTIN_RESULT}
    watch = privacy(broker, both, extra_topics=extra)
    cam, vib = config_topics(["front.door"]), config_topics(["vib"]) - config_topics([])

    def taken_back(topics: set[str]):
        return lambda messages: topics <= {t for t, p, _ in messages if p == b""}

    with Agents(tmp_path) as agents:
        # 1. on reload: the configs of the pipeline gone from the file are emptied (retained)
        agent = agents.start(both)
        agent.expect(watch.sub, has_all(cam | vib), timeout=60)
        ha_config(path, broker, models, ["front.door"])
        agent.send(signal.SIGHUP)
        agent.expect(watch.sub, taken_back(vib), timeout=30)
        after = subscriber(broker, f"{PREFIX}/#")
        agent.expect(after, has_all(cam))
        assert set(configs(after.snapshot())) == cam  # only what is configured is still retained
        agent.wait_log("reload: stopping pipeline vib (removed from the config)")

        # 1b. a reload that brings it back starts it again: its entities are announced, its results flow
        path.write_text(full_text)
        before = len(watch.messages())
        agent.send(signal.SIGHUP)
        agent.expect(watch.sub, lambda m: vib <= set(configs(m[before:])), timeout=30)
        vib_results = f"edge/{DEVICE}/vib/result"
        agent.expect(watch.sub, lambda m: any(t == vib_results for t, _, _ in m[before:]), timeout=30)
        agent.wait_log("reload: pipeline vib started")
        assert agent.stop() == 0, agent.log()

        # 2. at a start with a config that lost a pipeline since the last run: the broker's retained
        # configs say what was announced before; the ones not wanted now are emptied
        path.write_text(full_text)
        before = len(watch.messages())
        agent = agents.start(path)
        agent.expect(watch.sub, lambda m: vib <= set(configs(m[before:])), timeout=60)  # announced again
        assert agent.stop() == 0, agent.log()
        ha_config(path, broker, models, ["front.door"])
        before = len(watch.messages())
        agent = agents.start(path)
        agent.expect(watch.sub, lambda m: taken_back(vib)(m[before:]), timeout=60)
        last = subscriber(broker, f"{PREFIX}/#")
        agent.expect(last, has_all(cam))
        assert set(configs(last.snapshot())) == cam
        assert agent.stop() == 0, agent.log()
    watch.check()


def _cfg(**homeassistant: object) -> dict:
    pipeline = {"name": "cam", "source": {"type": "camera", "url": "x.avi"}, "model": {"path": "m.tflite"}}
    return {"device_id": "dev", "pipelines": [pipeline], "homeassistant": homeassistant}


@pytest.mark.parametrize(
    "homeassistant, message",
    [
        ({"discovery": "sometimes"}, "homeassistant.discovery"),
        ({"prefix": "ha/#"}, "homeassistant.prefix"),
        ({"detection_classes": {"gate": ["person"]}}, "names pipeline(s) ['gate'] that are not configured"),
        ({"detection_classes": {"cam": []}}, "give at least one class"),
        ({"off_delay_s": 0}, "homeassistant.off_delay_s"),
        ({"discover": True}, "homeassistant.discover"),
    ],
)
def test_bad_homeassistant_section_is_a_config_error(homeassistant: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_cfg(**homeassistant))
    assert message in str(exc.value)


def test_discovery_is_off_by_default() -> None:
    cfg = parse_config(_cfg())
    assert cfg.homeassistant.discovery is False and cfg.homeassistant.prefix == "homeassistant"


def test_the_privacy_check_of_discovery_configs_flags_values_and_foreign_topics(tmp_path: Path) -> None:
    """tests/privacy.py's discovery check: only our keys, only the device's topics, no numbers but
    off_delay; an empty payload (an entity taken back) passes."""

    class Broker:
        host, port = "127.0.0.1", 1883

    pipeline = {"name": "cam", "source": {"type": "camera", "url": "x"}, "model": {"path": "m.tflite"}}
    config = write_config(tmp_path / "config.yaml", Broker(), [pipeline], homeassistant={"discovery": True})
    topics = discovery_topics(config)
    check = topics["homeassistant/sensor/testdev/+/config"]
    good = {
        "name": "cam label",
        "state_topic": "edge/testdev/cam/result",
        "value_template": "{{ value_json.label }}",
        "availability_topic": "edge/testdev/status",
        "device": {"identifiers": ["edge-agent-testdev"]},
    }
    check(json.dumps(good).encode())
    check(b"")
    for bad, why in [
        ({**good, "state_topic": "edge/otherdev/cam/result"}, "not one of the device's topics"),
        ({**good, "json_attributes": {"window": [0.25, 0.5]}}, "unexpected discovery keys"),
        ({**good, "icon": 1234.5678}, "not a string"),
        ({**good, "device": {"serial": "x"}}, "unexpected device keys"),
    ]:
        with pytest.raises(AssertionError, match=why):
            check(json.dumps(bad).encode())


def test_detection_classes_from_the_config_else_the_first_labels() -> None:
    from edge_agent.homeassistant.config import HomeAssistantConfig
    from edge_agent.homeassistant.entities import EntityBuilder, PipelineView

    labels = ("person", "traffic light", "car", "dog", "Traffic Light")
    view = PipelineView("yard", "edge/dev/yard/result", "detection", labels=labels)

    def objects(**cfg: object) -> list[str]:
        builder = EntityBuilder(HomeAssistantConfig(discovery=True, **cfg), "dev", "s", "st")
        return [e.object_id for e in builder.entities([view]) if e.object_id.endswith("_detected")]

    assert objects() == ["yard_person_detected", "yard_traffic_light_detected", "yard_car_detected"]
    assert objects(max_detection_classes=1) == ["yard_person_detected"]
    chosen = objects(detection_classes={"yard": ["dog", "traffic light", "Traffic Light"]})  # same slug: _2
    assert chosen == ["yard_dog_detected", "yard_traffic_light_detected", "yard_traffic_light_2_detected"]
    filtered = PipelineView("yard", "t", "detection", labels=labels, detection_filter=("car",))
    builder = EntityBuilder(HomeAssistantConfig(discovery=True), "dev", "s", "st")
    assert [e.object_id for e in builder.entities([filtered]) if e.object_id.endswith("_detected")] == [
        "yard_car_detected"
    ]


def test_the_shipped_acl_lets_a_device_announce_and_take_back(
    tmp_path: Path, mosquitto, subscriber, models
) -> None:
    """edge_agent/templates/mosquitto-acl.example has the lines discovery needs: mosquitto drops a device's
    connection on a denied PUBLISH, so without them discovery would cut the results off too."""
    acl = Path(__file__).resolve().parents[1] / "edge_agent" / "templates" / "mosquitto-acl.example"
    users = {"cam-01": "pw-cam", "operator": "pw-op"}
    broker = mosquitto(users=users, extra_config=(f"acl_file {acl}",))
    login = {"username": "cam-01", "password_env": "MQTT_PW"}
    path = tmp_path / "config.yaml"

    def config(names: list[str]) -> Path:
        return write_config(path, broker, pipelines(tmp_path, models, names), device_id="cam-01",
                            mqtt=login, homeassistant={"discovery": True})  # fmt: skip

    own = subscriber(broker, f"{PREFIX}/+/cam-01/+/config", username="cam-01", password="pw-cam")
    results = subscriber(broker, "edge/cam-01/+/result", username="operator", password="pw-op")
    label, vib = f"{PREFIX}/sensor/cam-01/front_door_label/config", f"{PREFIX}/sensor/cam-01/vib_load/config"
    with Agents(tmp_path) as agents:
        agent = agents.start(config(["front.door", "vib"]), env={"MQTT_PW": "pw-cam"})
        agent.expect(own, has_all({label, vib}), timeout=60)
        assert agent.stop() == 0, agent.log()
        agent = agents.start(config(["front.door"]), env={"MQTT_PW": "pw-cam"})
        agent.expect(own, lambda m: (vib, b"", False) in m, timeout=60)  # read back, then taken back
        agent.expect(results, lambda m: len(m) >= 3)  # and the connection carries results all along
        assert agent.stop() == 0, agent.log()
    assert "lost the connection" not in agent.log()
