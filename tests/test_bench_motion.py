"""The motion benchmark's own parts (scripts/bench_motion*.py), fast: the rendered events video shows the
figure exactly in the frames its ground truth names, and the metrics count what they say. The benchmark
itself is run by hand (README "Motion, zones and masks"), not timed in a test."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench_motion():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_motion
        import bench_motion_scenes

        yield bench_motion, bench_motion_scenes
    finally:
        sys.path.remove(str(SCRIPTS))


def test_the_events_video_shows_the_figure_exactly_in_its_event_frames(tmp_path: Path, bench_motion) -> None:
    _, scenes = bench_motion
    scene = scenes.render("events", tmp_path, seconds=20.0)
    assert scene.events and scene.motion_frames == sum(e - s for s, e in scene.events)
    cap = cv2.VideoCapture(str(scene.path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1].astype(np.int16))
    assert len(frames) == scene.frames
    moving = {i for s, e in scene.events for i in range(s, e)}
    still = [j for j in range(len(frames)) if j not in moving]
    for i in range(len(frames)):
        # the dark figure changes hundreds (entering) to thousands of pixels against the nearest still frame
        ref = min((j for j in still if j != i), key=lambda j: abs(j - i))
        changed = int((np.abs(frames[i] - frames[ref]).max(axis=2) > 40).sum())
        assert (changed > 300) == (i in moving), (i, changed)


def test_event_and_light_metrics(bench_motion) -> None:
    metrics, scenes = bench_motion
    scene = scenes.Scene("events", Path("x"), 10.0, 200, events=[(10, 20), (50, 53), (100, 130)])
    found = metrics.event_metrics(scene, [(0, False), (11, True), (12, True), (104, True), (105, True)])
    assert found["recall_within_0_3_s"] == 0.5  # the 0.3 s event does not count; 10->11 in, 100->104 late
    assert found["latency_s_max"] == pytest.approx(0.4)
    assert found["model_frames"] == 5 and found["motion_frames"] == 43
    light = scenes.Scene("light", Path("x"), 10.0, 100, light_at=50)
    overrun = metrics.light_metrics(light, [(0, False), (50, True), (54, True)])["overrun_s"]
    assert overrun == pytest.approx(0.5)
    assert metrics.light_metrics(light, [(0, False)])["model_runs_after_change"] == 0
