"""A ``Pipeline`` built in-process (fake source, tiny real TFLite models, recording publisher): one result
per frame, steps that skip, mask or fail (fail closed), the model swap between two frames, and a swap that
does not fit. The models come from the session fixtures (TensorFlow runs once per session to make them)."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import EvidenceConfig
from edge_agent.errors import ModelError
from edge_agent.evidence import EvidenceStore
from edge_agent.processing.steps import StepChain, create_steps
from edge_agent.processing.steps.every_nth import EveryNthConfig
from edge_agent.publish.payloads import stats_payload
from tests.fixtures.broker import validate_payload
from tests.inprocess import (
    CallStep,
    FakeSource,
    RecordingPublisher,
    Running,
    make_pipeline,
    solid,
    stages_for,
)
from tests.test_evidence import recorded_saves

COLORS = ["red", "green", "blue", "green", "red", "blue"]
PATHS = pytest.mark.parametrize("prepare", [True, False], ids=["on-source-thread", "on-inference-thread"])


def stats_of(pipe) -> dict:
    """The pipeline's entry of a full stats payload, validated against the stats schema."""
    raw = stats_payload(
        device="dev",
        uptime_s=1.0,
        pipelines={pipe.name: pipe.snapshot()},
        mqtt={"connected": True, "reconnects": 0, "last_error": None},
        outbox={"depth": 0, "bytes": 0, "dropped": 0},
    )
    return validate_payload(raw, "stats")["pipelines"][pipe.name]


@PATHS
def test_one_result_per_frame_with_increasing_seq(tmp_path: Path, color_int8, prepare: bool) -> None:
    pub = RecordingPublisher()
    pipe = make_pipeline(
        tmp_path, FakeSource(map(solid, COLORS), prepare=prepare), stages_for(color_int8.path), publisher=pub
    )
    Running(pipe).finish()
    got = pub.payloads()
    assert pipe.state == "finished"
    assert [r["frame"] for r in got] == list(range(len(COLORS)))
    assert [r["seq"] for r in got] == list(range(got[0]["seq"], got[0]["seq"] + len(COLORS)))
    assert [r["label"] for r in got] == COLORS
    assert {r["model"]["sha256"] for r in got} == {pipe.model_info.short_sha}
    snap = stats_of(pipe)
    assert (snap["frames"], snap["published"], snap["errors"], snap["steps"]) == (6, 6, 0, {})
    assert snap["source"]["samples"] == 6  # a source's own (schema-declared) counters pass through


@PATHS
def test_a_step_that_skips_is_counted_and_gives_no_result(tmp_path: Path, color_int8, prepare: bool) -> None:
    pub = RecordingPublisher()
    steps = create_steps([EveryNthConfig(type="every_nth", n=2)])
    source = FakeSource(map(solid, COLORS), prepare=prepare)
    pipe = make_pipeline(tmp_path, source, stages_for(color_int8.path), publisher=pub, steps=steps)
    Running(pipe).finish()
    got = pub.payloads()
    assert [r["frame"] for r in got] == [0, 2, 4]
    assert [r["label"] for r in got] == COLORS[0::2]
    snap = stats_of(pipe)
    assert snap["steps"] == {"every_nth": {"skipped": 3, "failed": 0}}
    assert (snap["frames"], snap["results"], snap["errors"]) == (3, 3, 0)


@PATHS
def test_a_failing_step_drops_the_frame_unstored(tmp_path: Path, color_int8, prepare: bool) -> None:
    """Fail closed: a step that raises (a broken privacy mask) means the frame is neither inferred nor kept
    as evidence; the failure is counted and named."""
    seen = []

    def flaky_mask(data: np.ndarray) -> np.ndarray:
        seen.append(len(seen))
        if len(seen) % 2 == 0:  # frames 1, 3, 5
            raise RuntimeError("mask polygon outside the frame")
        return data

    pub = RecordingPublisher()
    evidence = EvidenceStore(tmp_path / "evidence", EvidenceConfig(enabled=True))
    pipe = make_pipeline(
        tmp_path,
        FakeSource(map(solid, COLORS), prepare=prepare),
        stages_for(color_int8.path),
        publisher=pub,
        steps=StepChain([("mask", CallStep(flaky_mask))]),
        evidence=evidence,
    )
    Running(pipe).finish()
    got = pub.payloads()
    assert [r["frame"] for r in got] == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "evidence").iterdir()) == [
        f"{r['seq']:012d}-{r['label']}.jpg" for r in got
    ]
    assert len(seen) == len(COLORS)  # the steps ran once per frame, whichever thread ran them
    snap = stats_of(pipe)
    assert snap["steps"] == {"mask": {"skipped": 0, "failed": 3}}
    assert (snap["frames"], snap["errors"]) == (3, 3)
    stored = sum(p.stat().st_size for p in (tmp_path / "evidence").iterdir())
    assert snap["evidence"] == {"files": 3, "bytes": stored, "saved": 3, "failed": 0, "last_error": None}
    assert "step mask failed" in pipe.last_error and "mask polygon outside the frame" in pipe.last_error


@PATHS
def test_evidence_and_model_see_what_the_steps_returned(tmp_path: Path, color_int8, prepare: bool) -> None:
    """A mask that paints the frame blue: the model answers blue and the stored evidence is blue, never the
    raw red frame."""

    def paint_blue(data: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.array(COLOR_BLUE, np.uint8), data.shape).copy()

    COLOR_BLUE = (255, 0, 0)
    pub = RecordingPublisher()
    evidence = EvidenceStore(tmp_path / "evidence", EvidenceConfig(enabled=True))
    pipe = make_pipeline(
        tmp_path,
        FakeSource([solid("red")], prepare=prepare),
        stages_for(color_int8.path),
        publisher=pub,
        steps=StepChain([("mask", CallStep(paint_blue))]),
        evidence=evidence,
    )
    Running(pipe).finish()
    (result,) = pub.payloads()
    assert result["label"] == "blue"
    (saved,) = (tmp_path / "evidence").iterdir()
    b, g, r = cv2.imread(str(saved)).reshape(-1, 3).mean(axis=0)
    assert b > 200 and g < 30 and r < 30


def test_a_pipeline_that_ends_has_written_the_frames_it_kept(tmp_path: Path, color_int8) -> None:
    """Evidence is written on the store's own thread: a pipeline's end (a finite file, a stop, a reload)
    waits for it, so the last results' frames are on disk and in the final stats (a slow card here)."""
    evidence = EvidenceStore(tmp_path / "evidence", EvidenceConfig(enabled=True))
    recorded_saves(evidence, delay_s=0.2)
    pub = RecordingPublisher()
    pipe = make_pipeline(
        tmp_path,
        FakeSource(map(solid, COLORS[:3])),
        stages_for(color_int8.path),
        publisher=pub,
        evidence=evidence,
    )
    Running(pipe).finish()
    assert len(pub.payloads()) == 3
    assert len(list((tmp_path / "evidence").glob("*.jpg"))) == 3
    assert stats_of(pipe)["evidence"]["saved"] == 3


def test_a_preparer_failure_is_counted_and_the_frame_still_processed(tmp_path: Path, color_int8) -> None:
    stages = stages_for(color_int8.path)

    def broken_prepare(image: np.ndarray):
        raise ValueError("out of memory for the input buffer")

    stages.prepare = broken_prepare  # type: ignore[method-assign]
    pub = RecordingPublisher()
    pipe = make_pipeline(tmp_path, FakeSource(map(solid, COLORS[:3])), stages, publisher=pub)
    Running(pipe).finish()
    assert [r["label"] for r in pub.payloads()] == COLORS[:3]  # prepared on the inference thread instead
    snap = stats_of(pipe)
    assert (snap["prepare_errors"], snap["errors"]) == (3, 0)


def test_swap_between_two_frames_drops_and_repeats_none(tmp_path: Path, color_int8, color_uint8) -> None:
    """Frames keep coming while the model is swapped: every frame is processed exactly once, seq goes on
    without a gap, the results switch from the old model to the new one exactly once, the old is closed."""
    old, new = stages_for(color_int8.path), stages_for(color_uint8.path)
    assert old.info.sha256 != new.info.sha256
    pub = RecordingPublisher()
    source = FakeSource()
    pipe = make_pipeline(tmp_path, source, old, publisher=pub)
    running = Running(pipe)
    n = 80

    def feed() -> None:
        for i in range(n):
            source.feed(solid(COLORS[i % len(COLORS)]))
            if i == 5:
                pub.wait_for(1)  # the old model has answered at least once before the swap

    feeder = threading.Thread(target=feed)
    feeder.start()
    pub.wait_for(3)
    done = pipe.swap_model(new)
    assert done.wait(5)
    feeder.join()
    running.finish()
    got = pub.payloads()
    assert [r["frame"] for r in got] == list(range(n))
    assert [r["seq"] for r in got] == list(range(got[0]["seq"], got[0]["seq"] + n))
    shas = [r["model"]["sha256"] for r in got]
    switch = shas.index(new.info.short_sha)
    assert 0 < switch < n and shas == [old.info.short_sha] * switch + [new.info.short_sha] * (n - switch)
    assert [r["label"] for r in got] == [COLORS[i % len(COLORS)] for i in range(n)]
    assert pipe.stages is new and pipe.model_info == new.info
    with pytest.raises(Exception, match="closed"):
        old.model.invoke()


def test_a_swap_that_does_not_fit_is_refused_and_the_old_model_runs_on(
    tmp_path: Path, color_int8, regression_int8
) -> None:
    old = stages_for(color_int8.path)
    pub = RecordingPublisher()
    source = FakeSource([solid("red")])
    pipe = make_pipeline(tmp_path, source, old, publisher=pub)
    running = Running(pipe)
    pub.wait_for(1)
    wrong = stages_for(regression_int8.path, kind="samples")
    with pytest.raises(ModelError, match="built for samples data, but the source gives image"):
        pipe.swap_model(wrong)
    wrong.model.close()  # refused: still the caller's
    source.feed(solid("green"))
    running.finish()
    assert pipe.state == "finished" and pipe.stages is old
    assert [(r["label"], r["model"]["sha256"]) for r in pub.payloads()] == [
        ("red", old.info.short_sha),
        ("green", old.info.short_sha),
    ]


def test_a_swap_to_a_model_of_another_window_size_is_refused(
    tmp_path: Path, regression_int8, autoencoder_int8
) -> None:
    window = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)  # 6 values: what regression_int8 takes
    pub = RecordingPublisher()
    source = FakeSource([window], kind="samples", prepare=False)
    pipe = make_pipeline(tmp_path, source, stages_for(regression_int8.path, "samples"), publisher=pub)
    running = Running(pipe)
    pub.wait_for(1)
    wider = stages_for(autoencoder_int8.path, "samples")  # 8 inputs
    with pytest.raises(ModelError, match=r"takes 8 values, but the source's windows have shape \[2, 3\]"):
        pipe.swap_model(wider)
    wider.model.close()
    running.finish()
    assert pipe.state == "finished" and len(pub.payloads()) == 1
