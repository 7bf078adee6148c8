"""The motion gate's own rules, frame by frame on real OpenCV frames with a clock the test sets: what counts
as motion (one region big enough, not scattered specks), what the background learns (no ghost behind an
object that left, a parked one fades in), light, the moving region for ``crop_to_motion``, the cooldown's
edge, and the state and counts the stats report. The pipelines and daemons that use it are in
test_motion_masks_zones.py."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.processing.steps.motion import MotionConfig, MotionGate, _grown
from tests.test_motion_masks_zones import FPS, frames_with, scene

BOX = 20  # frames_with's white box: 20x20 pixels of a 160x120 frame


def gate_for(clock: list[float], **cfg) -> MotionGate:
    settings = {"cooldown_s": 0.0, "max_idle_s": 1000.0, "idle_fps": None, **cfg}
    return MotionGate(MotionConfig(**settings), clock=lambda: clock[0])


def motion_frames(gate: MotionGate, frames: list[np.ndarray], clock: list[float]) -> list[int]:
    """The frames the gate saw motion in (its ``motion_frames`` count going up)."""
    seen = []
    for i, f in enumerate(frames):
        clock[0] = i / FPS
        before = gate.report()[1]["motion_frames"]
        gate.apply(f)
        if gate.report()[1]["motion_frames"] > before:
            seen.append(i)
    return seen


def test_an_object_that_left_leaves_no_ghost_behind() -> None:
    clock = [0.0]
    gate = gate_for(clock)
    here = {i: (100, 50) for i in range(10, 30)}  # 2 s in one place, then gone
    seen = motion_frames(gate, frames_with(60, box_at=here), clock)
    # moving pixels are learnt 10x slower: the 2 s did not teach the background the box, so its leaving is
    # the end of the motion, not the start of a ghost of it
    assert seen == list(range(10, 30))


def test_an_object_that_stays_fades_into_the_background_within_a_minute() -> None:
    clock = [0.0]
    gate = gate_for(clock)
    parked = {i: (100, 50) for i in range(10, 700)}
    seen = motion_frames(gate, frames_with(700, box_at=parked), clock)
    assert seen[:20] == list(range(10, 30))  # a car parks: motion at first...
    assert seen[-1] < 10 + 60 * FPS  # ...then it is part of the scene: no model run every frame forever
    assert gate.report()[1]["state"] == "idle"


def specks(frame: np.ndarray, spacing: int = 16, size: int = 4) -> np.ndarray:
    """``frame`` with small white specks on a grid (rain, snow, insects at night)."""
    out = frame.copy()
    for y in range(4, frame.shape[0] - size, spacing):
        for x in range(4, frame.shape[1] - size, spacing):
            out[y : y + size, x : x + size] = 255
    return out


def test_scattered_specks_are_not_motion_though_together_they_are_bigger_than_min_area() -> None:
    clock = [0.0]
    gate = gate_for(clock, min_area=0.01)  # 192 of the 160x120 pixels in one region
    frames = frames_with(20)
    frames[10:13] = [specks(f) for f in frames[10:13]]
    spread = np.count_nonzero(frames[10] != frames_with(20)[10]) / frames[10].size
    assert spread > 0.01  # the specks together cover more than min_area...
    assert motion_frames(gate, frames, clock) == []  # ...but no one region does
    one = frames_with(20, box_at={10: (60, 40)})  # the same area in one piece is motion
    assert motion_frames(gate_for(clock, min_area=0.01), one, clock) == [10]


def fence(frame: np.ndarray, bars: int, gap: int = 5) -> np.ndarray:
    """``frame`` with an object seen in vertical pieces 3 pixels wide, ``gap`` apart (someone behind a fence,
    a striped shirt)."""
    out = frame.copy()
    for k in range(bars):
        x = 60 + k * (3 + gap)
        out[40:60, x : x + 3] = 255
    return out


def test_an_object_seen_in_pieces_a_few_pixels_apart_is_one_region() -> None:
    clock = [0.0]
    frames = frames_with(14)
    frames[10] = fence(frames[10], bars=4)
    assert motion_frames(gate_for(clock, min_area=0.01), frames, clock) == [10]
    frames[10] = fence(frames_with(14)[10], bars=1)  # one piece alone is under min_area
    assert motion_frames(gate_for(clock, min_area=0.01), frames, clock) == []


def test_an_object_right_after_a_light_change_is_seen() -> None:
    """Someone opens the door and switches the light on: the frame after the switch shows them."""
    clock = [0.0]
    gate = gate_for(clock)
    person = {i: (100, 50) for i in range(31, 40)}
    seen = motion_frames(gate, frames_with(40, box_at=person, light_from=30), clock)
    assert gate.report()[1]["light_changes"] == 1
    assert seen and seen[0] == 31


def test_each_light_change_is_counted_once() -> None:
    clock = [0.0]
    gate = gate_for(clock)
    frames = frames_with(30, light_from=10)[:20] + frames_with(30, light_from=0, light=(0.6, 0.0, 1))[20:]
    assert motion_frames(gate, frames, clock) == []
    assert gate.report()[1]["light_changes"] == 2  # on at 10, dimmed at 20


def test_a_flat_dark_scene_drifting_is_neither_motion_nor_light() -> None:
    """A camera at night sees a nearly uniform frame (its variance under 1 grey level): the fit's gain says
    nothing there, and a slow drift of its level must not read as light changes."""
    clock = [0.0]
    gate = gate_for(clock)
    frames = [np.full((120, 160, 3), 40 + i // 4, np.uint8) for i in range(40)]
    assert motion_frames(gate, frames, clock) == []
    assert gate.report()[1]["light_changes"] == 0


def test_crop_to_motion_names_the_region_that_moved_and_only_while_it_moves() -> None:
    clock = [0.0]
    gate = gate_for(clock, crop_to_motion=True, cooldown_s=0.25, max_idle_s=3.0)
    box = (100, 50)
    frames = frames_with(30, box_at={10: box, 11: box})
    regions = {}
    for i, f in enumerate(frames):
        clock[0] = i * 0.25  # exact in binary: no edge falls on the wrong side by a rounding
        if gate.apply(f) is not None:
            regions[i] = gate.region()
    x0, y0, x1, y1 = regions[10]
    inside = (box[0] / 160, box[1] / 120, (box[0] + BOX) / 160, (box[1] + BOX) / 120)
    assert x0 <= inside[0] and y0 <= inside[1] and x1 >= inside[2] and y1 >= inside[3]  # the box is in it
    assert x1 - x0 < 0.5 and y1 - y0 < 0.5  # and it is not the frame
    # the first frame (no background yet), the motion, its cooldown (still cropped to where it moved), and
    # the max_idle_s run 3 s after the last run: nothing moved, the model sees the whole frame
    assert set(regions) == {0, 10, 11, 12, 24}
    assert regions[0] is None and regions[24] is None
    assert regions[12] == regions[11]
    plain = gate_for(clock, cooldown_s=0.25)
    for i, f in enumerate(frames[:12]):
        clock[0] = i * 0.25
        plain.apply(f)
    assert plain.region() is None  # crop_to_motion off


@pytest.mark.parametrize(
    ("region", "grown"),
    [
        ((0.9, 0.9, 1.0, 1.0), (0.75, 0.75, 1.0, 1.0)),  # in a corner: a quarter of the frame, kept inside
        ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0)),  # everything moved: the whole frame, not more
        ((0.8, 0.1, 1.0, 0.3), (0.7, 0.05, 1.0, 0.35)),  # at the right edge: shifted back in
    ],
)
def test_the_grown_region_stays_inside_the_frame(region, grown) -> None:
    assert _grown(region) == pytest.approx(grown)


def test_the_cooldown_runs_the_model_to_its_last_instant() -> None:
    clock = [0.0]
    gate = gate_for(clock, cooldown_s=0.5)
    frames = frames_with(12, box_at={4: (100, 50)})
    kept = []
    for i, f in enumerate(frames):
        clock[0] = i * 0.25  # exact in binary: the edge is exactly cooldown_s after the motion
        if gate.apply(f) is not None:
            kept.append(i)
    assert kept == [0, 4, 5, 6]  # 0.25 s and 0.5 s after the motion still run the model; 0.75 s does not


def test_state_glances_and_counts_in_the_stats() -> None:
    clock = [0.0]
    gate = gate_for(clock, cooldown_s=0.25, max_idle_s=2.0, idle_fps=5.0)
    frames = frames_with(15, box_at={4: (100, 50)})
    states = []
    for i, f in enumerate(frames):
        clock[0] = i * 0.25
        width = gate.glance_width()
        if width is None or gate.glance(f[:, :, 0]) is not None:
            gate.apply(f)
        states.append(gate.report()[1]["state"])
        if i == 4:
            assert gate.glance_width() is None  # moving: every frame is decoded in full, no glance
    assert states[3:7] == ["idle", "motion", "cooldown", "idle"]
    key, counts = gate.report()
    assert key == "motion"
    # full frames: 0 (the first: a max_idle_s run), 5 and 6 (after motion, and in the cooldown), 13 (a
    # max_idle_s run, 2 s after the last run at 5); the other 11 are glanced at
    assert counts["glanced"] == 11
    assert counts["frames"] == 15 and counts["motion_frames"] == 1 and counts["idle_runs"] == 2
    assert counts["gated"] == 15 - 4  # the model ran on 0, 4, 5 and 13


def test_a_max_idle_s_run_due_to_the_instant_is_decoded_in_full() -> None:
    clock = [0.0]
    gate = gate_for(clock, max_idle_s=2.0, idle_fps=5.0)
    gate.apply(scene())
    clock[0] = 1.75
    assert gate.glance_width() == 160
    clock[0] = 2.0  # exactly max_idle_s after the last run
    assert gate.glance_width() is None and not gate.skips_unseen()
