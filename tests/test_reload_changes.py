"""A reload names every change it cannot apply (so the log tells the user to restart), and only those; a
pipeline whose source, window or evidence changed is restarted on its own."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from edge_agent.config import AgentConfig, parse_config
from edge_agent.reload_changes import (
    APPLIED_LIVE,
    RESTART_ONLY,
    pipeline_restart_reasons,
    restart_only_changes,
)
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
        c["pipelines"][0]["source"]["fps"] = 5  # restarts that pipeline: applied, not named
        c["pipelines"].append({**c["pipelines"][0], "name": "yard"})  # started: applied
        c["homeassistant"] = {"discovery": True}
        c["fleet"] = {"groups": ["lobby"]}  # a device added to a group must not wait in silence
        c["watchdog"] = {"enabled": False, "stall_after_s": 5}  # the stall time is applied

    assert changed(edit) == ["mqtt", "fleet", "homeassistant.discovery", "watchdog.enabled"]


def test_a_pipeline_is_restarted_for_its_source_window_or_evidence() -> None:
    old = parse_config(yaml.safe_load(GOOD))
    new = yaml.safe_load(GOOD)
    new["pipelines"][0]["source"]["fps"] = 5
    new["pipelines"][0]["publish"]["min_score"] = 0.9
    new["pipelines"][1]["window"]["hop"] = 50
    new = parse_config(new)
    assert pipeline_restart_reasons(old.pipelines[0], new.pipelines[0]) == ["source"]
    assert pipeline_restart_reasons(old.pipelines[1], new.pipelines[1]) == ["window"]
    assert pipeline_restart_reasons(old.pipelines[1], old.pipelines[1]) == []


def test_every_section_is_either_applied_or_named() -> None:
    """A new section of the config must be sorted into one of the two, or a reload ignores it in silence
    (as it did with fleet:)."""
    assert sorted(AgentConfig.model_fields) == sorted(APPLIED_LIVE + RESTART_ONLY)
