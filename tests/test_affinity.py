"""CPU placement: the plan, and a real daemon whose inference thread runs alone on its CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge_agent.affinity import CpuPlan, pinned, plan_cpus, usable_cpus
from tests.daemon_harness import Agents, write_config


def test_each_pipeline_gets_its_own_cpus_and_the_rest_keep_one() -> None:
    cpus = frozenset(range(4))
    plan = plan_cpus("auto", [("cam", 2), ("vib", 1)], cpus)
    assert plan == CpuPlan({"cam": frozenset({3, 2}), "vib": frozenset({1})}, frozenset({0}))
    assert plan.describe() == (
        "pipeline cam inference on CPU 2,3; pipeline vib inference on CPU 1; "
        "capture, outbox and MQTT on CPU 0"
    )


@pytest.mark.parametrize(
    ("mode", "pipelines", "cpus"),
    [
        ("off", [("cam", 1)], range(4)),  # asked not to
        ("auto", [("cam", 4)], range(4)),  # the model takes every CPU: nothing left for capture and MQTT
        ("auto", [("cam", None)], range(4)),  # num_threads unset = the runtime's default, every CPU
        ("auto", [("a", 1), ("b", 1)], range(2)),
        ("auto", [("cam", 1)], [0]),  # one CPU
    ],
)
def test_no_pinning_when_asked_not_to_or_no_cpu_would_be_left(mode, pipelines, cpus) -> None:
    assert plan_cpus(mode, pipelines, frozenset(cpus)) is None


def test_pinned_block_returns_to_the_cpus_from_before() -> None:
    before = usable_cpus()
    one = frozenset({min(before)})
    with pinned(one):
        assert usable_cpus() == one
    assert usable_cpus() == before


def _tasks(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (Cpus_allowed_list, CPU ticks used) for every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        allowed = next(
            line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")
        )
        out[int(task.name)] = (allowed, int(stat[11]) + int(stat[12]))
    return out


@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs 2 CPUs")
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_daemon_runs_inference_alone_on_its_cpu(
    tmp_path: Path, mosquitto, privacy, digits_int8, digits_video, mode: str
) -> None:
    broker = mosquitto()
    cpus = sorted(usable_cpus())
    pipeline = {"name": "digits", "source": {"type": "camera", "url": str(digits_video.path), "loop": True},
                "model": {"path": str(digits_int8), "num_threads": 1}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline], cpu_pinning=mode)
    privacy(broker, config)  # checked at teardown: topics, schemas, no image files
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        agent.wait_log("running 1 pipeline(s)", timeout=60)
        time.sleep(2.0)  # let it work
        tasks = _tasks(agent.pid)
        log = agent.log()
        assert agent.stop() == 0, agent.log()
    full = _tasks(os.getpid())[os.getpid()][0]  # this test process: every usable CPU
    # the sender lingers over a flow of results only while inference shares the CPUs (mqtt.linger_ms unset)
    assert ("are stored and sent together" in log) is (mode == "off"), log
    if mode == "off":
        assert "CPU placement" not in log
        assert {allowed for allowed, _ in tasks.values()} == {full}, tasks
        return
    top, rest = cpus[-1], cpus[:-1]
    assert f"pipeline digits inference on CPU {top}" in log, log
    alone = [tid for tid, (allowed, _) in tasks.items() if allowed == str(top)]
    assert len(alone) == 1 and alone[0] != agent.pid, tasks  # one thread on the highest CPU: inference
    assert tasks[alone[0]][1] > 0, "the thread pinned for inference never ran"
    main_allowed = tasks[agent.pid][0]  # the main thread, and every thread it started, on the rest
    assert main_allowed in (str(rest[0]), f"{rest[0]}-{rest[-1]}", ",".join(map(str, rest))), main_allowed
    assert os.sched_getaffinity(0) == set(cpus)  # the test process itself was not touched
