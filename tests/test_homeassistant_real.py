"""The discovery promise checked by Home Assistant itself: a real Home Assistant 2024.1 (its own venv, built
on demand by scripts/ha-venv) with its MQTT integration on the test mosquitto, asked through its REST API.

It must create the device and every entity the README lists (so it accepted each config against its own
discovery schema), its entities must show what the daemon publishes (the label sensor follows the results;
the templates of the other tasks and of the diagnostics render to valid states), and they must go
``unavailable`` when the daemon stops. Python 3.11 is needed for Home Assistant 2024.1: without it the
test skips, except under CI=true where it fails.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Agents, results
from tests.ha_pipelines import DEVICE, NODE, entity_ids, ha_config
from tests.homeassistant_instance import HomeAssistant, build_venv
from tests.privacy import discovery_topics

pytestmark = pytest.mark.slow
NAMES = ["front.door", "yard", "vib", "pump"]
LABEL = f"sensor.{NODE}_front_door_label"


@pytest.fixture(scope="session")
def ha_venv() -> Path:
    t0 = time.monotonic()
    try:
        venv = build_venv()
    except LookupError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the real Home Assistant test: {exc}")
        pytest.skip(str(exc))
    print(f"\nHome Assistant venv ready in {time.monotonic() - t0:.1f} s: {venv}")
    return venv


@pytest.fixture
def home_assistant(ha_venv: Path, tmp_path: Path, mosquitto) -> Iterator[HomeAssistant]:
    broker = mosquitto()
    ha = HomeAssistant(ha_venv, tmp_path / "ha", broker)
    try:
        ha.start()
        print(f"\nHome Assistant up (API answers, MQTT set up) in {ha.startup_s:.1f} s")
        yield ha
    finally:
        ha.stop()


@pytest.fixture
def models(color_int8, yolo_float32, regression_int8, autoencoder_int8) -> dict:
    return {"front.door": color_int8, "yard": yolo_float32, "vib": regression_int8, "pump": autoencoder_int8}


def _number(state: dict) -> float:
    return float(state["state"])  # raises on 'unknown'/'unavailable'/text: the template gave no number


def test_home_assistant_shows_the_device_its_entities_and_their_availability(
    tmp_path: Path, home_assistant: HomeAssistant, privacy, models
) -> None:
    ha = home_assistant
    broker = ha.broker
    config = ha_config(tmp_path / "config.yaml", broker, models, NAMES)
    watch = privacy(broker, config, extra_topics=discovery_topics(config))
    want = entity_ids(NAMES)
    with Agents(tmp_path) as agents:
        agent = agents.start(config)

        # the device and every listed entity exist in Home Assistant (it accepted every config)
        def all_entities(h: HomeAssistant) -> bool:
            return want <= set(h.states())

        ha.wait_for(all_entities, f"entities {sorted(want - set(ha.states()))}", timeout=90)
        device = f"device_id('{LABEL}')"
        assert ha.template(f"{{{{ device_attr({device}, 'name') }}}}") == DEVICE
        assert ha.template(f"{{{{ device_attr({device}, 'model') }}}}") == "edge-agent"
        on_device = json.loads(ha.template(f"{{{{ device_entities({device}) | list | tojson }}}}"))
        assert set(on_device) == want, set(on_device) ^ want

        # the label sensor follows the results: both colours of the video show, as the daemon sent them
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while {"red", "blue"} - set(seen) and time.monotonic() < deadline:
            state = ha.state(LABEL)["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            time.sleep(0.1)
        sent = {r["label"] for r in results(watch.messages(), "front.door")}
        assert {"red", "blue"} <= set(seen), f"label states seen in Home Assistant: {seen}"
        assert set(seen) - {"unavailable", "unknown"} <= sent, (seen, sent)  # (before the first result)
        label = ha.state(LABEL)
        assert label["attributes"]["top_k"][0]["label"] in ("red", "blue")

        # every other task's templates give real states (values from the results, not 'unknown')
        def ready(h: HomeAssistant) -> dict:
            states = h.states()
            numeric = [f"sensor.{NODE}_{k}" for k in ("front_door_score", "yard_person_count",
                       "yard_car_count", "vib_load", "vib_temperature", "pump_anomaly_score",
                       "front_door_fps", "front_door_invoke_p99", "outbox_depth")]  # fmt: skip
            done = all(states[e]["state"] not in ("unknown", "unavailable") for e in numeric)
            return states if done else {}

        states = ha.wait_for(ready, "numeric states from results and stats", timeout=60)
        assert 0.0 <= _number(states[f"sensor.{NODE}_front_door_score"]) <= 1.0
        assert _number(states[f"sensor.{NODE}_yard_person_count"]) == 1  # the constant YOLO head
        assert _number(states[f"sensor.{NODE}_yard_car_count"]) == 1
        assert states[f"binary_sensor.{NODE}_yard_person_detected"]["state"] == "on"
        temperature = states[f"sensor.{NODE}_vib_temperature"]
        assert temperature["attributes"]["unit_of_measurement"] == "°C"
        assert 15.0 <= _number(temperature) <= 30.0  # 20 + 0.5 * (three samples in 0..1)
        assert states[f"binary_sensor.{NODE}_pump_anomaly"]["state"] in ("on", "off")
        assert "threshold" in states[f"sensor.{NODE}_pump_anomaly_score"]["attributes"]
        assert _number(states[f"sensor.{NODE}_front_door_fps"]) > 0
        assert _number(states[f"sensor.{NODE}_front_door_invoke_p99"]) > 0
        assert re.fullmatch(r"[0-9a-f]{12}", states[f"sensor.{NODE}_front_door_model_sha"]["state"])
        assert states[f"sensor.{NODE}_front_door_last_error"]["state"] == "none"
        connected = states[f"binary_sensor.{NODE}_front_door_source_connected"]
        assert connected["state"] == "on" and connected["attributes"]["device_class"] == "connectivity"
        assert states[f"sensor.{NODE}_front_door_fps"]["attributes"]["unit_of_measurement"] == "fps"

        # "last error" says why a source is away while it is (its error once it is back is history), and
        # the pipeline's own error first: the published template, rendered by Home Assistant on stats
        topic = f"homeassistant/sensor/{NODE}/front_door_last_error/config"
        config = next(json.loads(p) for t, p, _ in watch.messages() if t == topic and p)

        def last_error(
            pipeline_error: str | None, connected: bool, source_error: str | None, evidence: str | None = "-"
        ) -> str:
            stats = {"pipelines": {"front.door": {"last_error": pipeline_error, "source": {
                "connected": connected, "last_error": source_error}}}}  # fmt: skip
            if evidence != "-":  # only a pipeline that keeps evidence has the entry
                stats["pipelines"]["front.door"]["evidence"] = {"last_error": evidence}
            # a Python repr is a Jinja literal (None, True), JSON is not (null, true)
            return ha.template(f"{{% set value_json = {stats!r} %}}{config['value_template']}")

        assert last_error(None, False, "device /dev/video2 is not there") == "device /dev/video2 is not there"
        assert last_error(None, True, "stream lost") == "none"
        assert last_error("frame 7: bad", False, "stream lost") == "frame 7: bad"
        assert last_error(None, False, None) == "none"
        assert len(last_error(None, False, "x" * 300)) == 255
        # then why its evidence frames are not kept, while they are not
        full = "could not write /var/lib/edge-agent/evidence/front.door/42-x.jpg: No space left on device"
        assert last_error(None, True, None, full) == full
        assert last_error(None, True, None, None) == "none"
        assert last_error(None, False, "stream lost", full) == "stream lost"
        assert last_error("frame 7: bad", True, None, full) == "frame 7: bad"

        # the daemon stops: its status says offline, and Home Assistant marks every entity unavailable
        assert agent.stop() == 0, agent.log()

    def all_unavailable(h: HomeAssistant) -> bool:
        states = h.states()
        return all(states[e]["state"] == "unavailable" for e in want)

    ha.wait_for(all_unavailable, "every entity unavailable after the daemon stopped", timeout=30)
    ours = re.compile(rf"{NODE}|{re.escape(DEVICE)}")
    problems = [
        line
        for line in ha.log().splitlines()
        if re.search(r"\b(WARNING|ERROR)\b", line) and ours.search(line)
    ]
    assert not problems, "\n".join(problems[:20])
    watch.check()  # Home Assistant's own birth message included
