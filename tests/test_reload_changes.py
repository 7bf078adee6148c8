"""A reload names every change it cannot apply (so the log tells the user to restart), and only those."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from edge_agent.config import parse_config
from edge_agent.reload_changes import restart_only_changes
from tests.test_config import GOOD


def changed(edit: Any) -> list[str]:
    old = yaml.safe_load(GOOD)
    new = copy.deepcopy(old)
    edit(new)
    return restart_only_changes(parse_config(old), parse_config(new))


def test_nothing_changed_names_nothing() -> None:
    assert changed(lambda c: None) == []


def test_live_changes_are_not_named() -> None:
    def edit(c: dict[str, Any]) -> None:
        c["pipelines"][0]["publish"]["min_score"] = 0.9
        c["pipelines"][0]["model"]["path"] = "models/other.tflite"
        c["pipelines"][0]["motion"] = {"threshold": 30}

    assert changed(edit) == []


def test_restart_only_changes_are_named() -> None:
    def edit(c: dict[str, Any]) -> None:
        c["mqtt"]["port"] = 1884
        c["pipelines"][0]["source"]["fps"] = 5
        c["pipelines"][1]["window"]["hop"] = 50
        c["pipelines"].append({**c["pipelines"][0], "name": "yard"})
        c["homeassistant"] = {"discovery": True}

    assert changed(edit) == [
        "mqtt",
        "pipeline yard added",
        "homeassistant.discovery",
        "pipelines.door.source",
        "pipelines.vibration.window",
    ]


def test_a_removed_pipeline_is_named() -> None:
    assert changed(lambda c: c["pipelines"].pop()) == ["pipeline vibration removed"]
