"""A pipeline's chain of steps (masks, steps:, the motion gate) and the crop the model may see: what the
chain hands on, what it counts, where a failure or a glance ends a frame, how steps are named and ordered,
and how a crop's boxes go back to the frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.processing.classification import ClassificationResult
from edge_agent.processing.crop import crop, result_to_frame
from edge_agent.processing.detection import Detection, DetectionResult
from edge_agent.processing.masks import MaskConfig
from edge_agent.processing.steps import StepChain, create_pipeline_steps, create_steps
from edge_agent.processing.steps.base import FrameStep, StepConfigBase
from edge_agent.processing.steps.every_nth import EveryNthConfig
from edge_agent.processing.steps.motion import MotionConfig

FRAME = np.arange(12, dtype=np.uint8).reshape(3, 4)


class Step(FrameStep):
    """A step whose answer the test sets: keep (optionally changed), skip, raise; with fields and a region."""

    def __init__(
        self,
        *,
        out: Any = "same",
        fields: dict | None = None,
        region: tuple | None = None,
        glance_width: int | None = None,
        passes_glance: bool = False,
    ) -> None:
        super().__init__(StepConfigBase())
        self.out, self._fields, self._region, self._width = out, fields, region, glance_width
        self.passes_glance = passes_glance  # type: ignore[misc]  # a class constant on real steps
        self.seen: list[np.ndarray] = []
        self.closed = False

    def apply(self, data: np.ndarray) -> np.ndarray | None:
        self.seen.append(data)
        if isinstance(self.out, Exception):
            raise self.out
        return data if isinstance(self.out, str) else self.out

    def fields(self) -> dict | None:
        return self._fields

    def region(self) -> tuple | None:
        return self._region

    def glance_width(self) -> int | None:
        return self._width

    def close(self) -> None:
        self.closed = True


def test_no_steps_hand_the_frame_on_as_it_is() -> None:
    verdict = StepChain().run(FRAME)
    assert verdict.data is FRAME and verdict.keep and verdict.fields is None and verdict.region is None


def test_a_step_that_fails_ends_the_frame_names_itself_and_is_counted() -> None:
    after = Step()
    chain = StepChain([("keep", Step()), ("broken", Step(out=ValueError("no mask"))), ("after", after)])
    for _ in range(2):
        verdict = chain.run(FRAME)
        assert verdict.data is None and not verdict.keep
        assert (verdict.step, verdict.error) == ("broken", "ValueError: no mask")
    assert after.seen == []  # fail closed: nothing after the failure sees the frame
    assert chain.stats() == {
        "keep": {"skipped": 0, "failed": 0},
        "broken": {"skipped": 0, "failed": 2},
        "after": {"skipped": 0, "failed": 0},
    }


def test_a_step_that_skips_ends_the_frame_without_an_error_and_is_counted() -> None:
    chain = StepChain([("gate", Step(out=None)), ("after", Step())])
    for _ in range(3):
        verdict = chain.run(FRAME)
        assert verdict.data is None and verdict.step == "gate" and verdict.error is None
    assert chain.stats()["gate"] == {"skipped": 3, "failed": 0}


def test_each_step_sees_what_the_one_before_returned_and_fields_and_region_are_gathered() -> None:
    changed = FRAME + 1
    last = Step(fields={"b": 2})
    chain = StepChain(
        [
            ("mask", Step(out=changed, fields={"a": 1}, region=(0.0, 0.0, 0.5, 0.5))),
            ("none", Step(region=None)),
            ("last", last),
        ]
    )
    verdict = chain.run(FRAME)
    assert verdict.data is changed and last.seen == [changed]
    assert verdict.fields == {"a": 1, "b": 2}
    assert verdict.region == (0.0, 0.0, 0.5, 0.5)  # a later step without one keeps it
    later = StepChain([("one", Step(region=(0.0, 0.0, 0.5, 0.5))), ("two", Step(region=(0.5, 0.5, 1, 1)))])
    assert later.run(FRAME).region == (0.5, 0.5, 1, 1)  # the last step that names one wins


def test_a_glance_decides_only_where_a_step_can_decide_from_one() -> None:
    small = np.zeros((8, 16), np.uint8)
    # a step that cannot take a glance (it needs the full frame) before the deciding one: decode in full
    assert StepChain([("full", Step()), ("gate", Step(out=None, glance_width=16))]).glance(small) is True
    # a privacy mask passes a glance through to the gate, which skips the frame: counted, not decoded
    chain = StepChain([("mask", Step(passes_glance=True)), ("gate", Step(out=None, glance_width=16))])
    assert chain.glance_width() == 16
    assert chain.glance(small) is False and chain.stats()["gate"]["skipped"] == 1
    # the gate keeps it: decode in full and run the chain
    assert StepChain([("gate", Step(glance_width=16))]).glance(small) is True
    # a glance that fails leaves the decision to the full frame, where a failure drops it (fail closed)
    assert StepChain([("gate", Step(out=RuntimeError("x"), glance_width=16))]).glance(small) is True
    # no step decides from a glance: decode in full
    assert StepChain([("mask", Step(passes_glance=True))]).glance(small) is True
    assert StepChain([("mask", Step(passes_glance=True))]).glance_width() is None


def test_a_frame_skipped_unseen_is_counted_for_the_step_that_skips_it() -> None:
    class Thin(Step):
        def skips_unseen(self) -> bool:
            return True

    assert StepChain().skip_unseen() is False
    assert StepChain([("a", Step())]).skip_unseen() is False
    chain = StepChain([("a", Step()), ("gate", Thin()), ("after", Thin())])
    assert chain.skip_unseen() is True and chain.skip_unseen() is True
    assert chain.stats() == {
        "a": {"skipped": 0, "failed": 0},
        "gate": {"skipped": 2, "failed": 0},
        "after": {"skipped": 0, "failed": 0},
    }


def test_the_steps_own_stats_entries_are_gathered_by_key() -> None:
    class Reporting(Step):
        def report(self) -> tuple[str, dict]:
            return "motion", {"state": "idle"}

    chain = StepChain([("a", Step()), ("gate", Reporting())])
    assert chain.reports() == {"motion": {"state": "idle"}}
    assert StepChain([("a", Step())]).reports() == {}


def test_close_reaches_every_step() -> None:
    steps = [Step(), Step()]
    StepChain([("a", steps[0]), ("b", steps[1])]).close()
    assert all(s.closed for s in steps)


def test_steps_are_named_by_type_and_numbered_when_used_twice() -> None:
    chain = create_steps(
        [
            EveryNthConfig(type="every_nth", n=2),
            EveryNthConfig(type="every_nth", n=3, name="thin"),
            EveryNthConfig(type="every_nth", n=4),
        ]
    )
    assert [name for name, _ in chain.steps] == ["every_nth", "thin", "every_nth#2"]


def test_an_unknown_step_type_is_refused_with_the_choices() -> None:
    class Odd(StepConfigBase):
        type: str = "odd"

    choices = "choose one of every_nth, masks, motion"
    with pytest.raises(ConfigError, match=rf"steps: unknown type 'odd'; {choices}"):
        create_steps([Odd()])


@pytest.mark.parametrize(
    ("motion", "names"),
    [
        (MotionConfig(), ["masks", "every_nth", "motion"]),  # masks first, the gate last
        (MotionConfig(enabled=False), ["masks", "every_nth"]),
        (None, ["masks", "every_nth"]),
    ],
)
def test_a_camera_pipelines_chain_masks_first_and_gates_last(motion, names) -> None:
    masks = [MaskConfig(polygon=[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]])]
    chain = create_pipeline_steps(masks, [EveryNthConfig(type="every_nth", n=2)], motion)
    assert [name for name, _ in chain.steps] == names


# ---------------------------------------------------------------------------------------------- the crop

IMAGE = np.zeros((100, 200, 3), np.uint8)


def test_a_crop_covers_whole_pixels_from_the_frames_edge() -> None:
    view, region = crop(IMAGE, (0.0, 0.0, 0.5, 0.5))
    assert view.shape == (50, 100, 3) and region == (0.0, 0.0, 0.5, 0.5)
    view, region = crop(IMAGE, (0.5, 0.5, 1.0, 1.0))
    assert view.shape == (50, 100, 3) and region == (0.5, 0.5, 1.0, 1.0)


@pytest.mark.parametrize(
    "region",
    [(0.5, 0.1, 0.505, 0.9), (0.1, 0.5, 0.9, 0.505)],  # 1 pixel wide, 1 pixel high
    ids=["narrow", "flat"],
)
def test_a_crop_under_two_pixels_either_way_is_the_whole_frame(region) -> None:
    view, covered = crop(IMAGE, region)
    assert view is IMAGE and covered == (0.0, 0.0, 1.0, 1.0)


def test_a_crop_of_two_pixels_is_kept() -> None:
    view, covered = crop(IMAGE, (0.5, 0.5, 0.51, 0.52))  # 2 x 2 pixels
    assert view.shape == (2, 2, 3) and covered == (0.5, 0.5, 0.51, 0.52)


def test_boxes_found_in_a_crop_go_back_to_the_frame() -> None:
    found = DetectionResult((Detection("car", 2, 0.9, (0.2, 0.1, 0.6, 0.9)),))
    moved = result_to_frame(found, (0.1, 0.2, 0.5, 0.6))
    assert moved.detections[0].box == pytest.approx((0.18, 0.24, 0.34, 0.56))
    assert moved.detections[0].label == "car" and moved.detections[0].score == 0.9
    classified = ClassificationResult("cat", 0.8, 1, ())
    assert result_to_frame(classified, (0.1, 0.2, 0.5, 0.6)) is classified  # nothing to move
    empty = DetectionResult(())
    assert result_to_frame(empty, (0.1, 0.2, 0.5, 0.6)) is empty
