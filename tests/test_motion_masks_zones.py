"""Motion gating, privacy masks and zones of a camera pipeline, with real OpenCV frames and videos, tiny real
TFLite models, and (for the daemon cases) a real ``edge-agent run`` against a real mosquitto."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import EvidenceConfig
from edge_agent.evidence import EvidenceStore
from edge_agent.processing.detection import Detection, DetectionResult
from edge_agent.processing.masks import MaskConfig
from edge_agent.processing.steps import create_pipeline_steps
from edge_agent.processing.steps.motion import MotionConfig, MotionGate
from edge_agent.processing.zones import ZoneAssigner, ZonesConfig
from tests.daemon_harness import Agents, NotifySocket, results, stats, write_config
from tests.fixtures.broker import validate_payload
from tests.inprocess import FakeSource, RecordingPublisher, Running, make_pipeline, stages_for
from tests.test_config_check import edge_agent
from tests.test_pipeline_inprocess import stats_of

FPS = 10.0


def scene(size: tuple[int, int] = (120, 160), seed: int = 3) -> np.ndarray:
    """A smooth textured BGR background (upscaled noise), like a still camera view."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 220, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def frames_with(
    n: int,
    *,
    box_at: dict[int, tuple[int, int]] | None = None,
    light_from: int | None = None,
    light: tuple[float, float, int] = (1.0, 70.0, 1),
    seed: int = 4,
) -> list[np.ndarray]:
    """``n`` frames of ``scene()`` with sensor noise (sigma 3) and a slow brightness drift; a white 20x20
    box at (x, y) in the frames ``box_at`` names; from frame ``light_from`` on, a light change to
    ``gain * v + offset``, reached over ``light[2]`` frames (default: +70 grey levels at once)."""
    rng = np.random.default_rng(seed)
    base = scene().astype(np.float32)
    out = []
    for i in range(n):
        f = base + rng.normal(0, 3, base.shape) + 8 * np.sin(i / n * np.pi)
        if light_from is not None and i >= light_from:
            gain, offset, steps = light
            ramp = min(1.0, (i - light_from + 1) / steps)
            f = f * (1 + (gain - 1) * ramp) + offset * ramp
        f = np.clip(f, 0, 255).astype(np.uint8)
        if box_at and i in box_at:
            x, y = box_at[i]
            f[y : y + 20, x : x + 20] = 255
        out.append(f)
    return out


def gate_run(gate: MotionGate, frames: list[np.ndarray], clock: list[float]) -> list[int]:
    kept = []
    for i, f in enumerate(frames):
        clock[0] = i / FPS
        if gate.apply(f) is not None:
            kept.append(i)
    return kept


# ------------------------------------------------------------------------------------------------ motion


@pytest.mark.parametrize(
    "light",
    [(1.0, 70.0, 1), (1.35, 25.0, 2), (1.5, 0.0, 4), (0.7, 0.0, 2)],
    ids=["light-step", "lamp-over-2-frames", "exposure-over-4-frames", "dimming"],
)
def test_motion_wakes_the_model_for_an_object_not_for_noise_drift_or_light(light: tuple) -> None:
    clock = [0.0]
    gate = MotionGate(MotionConfig(cooldown_s=0.5, max_idle_s=1000), clock=lambda: clock[0])
    crossing = {i: (10 + (i - 40) * 12, 50) for i in range(40, 50)}  # 1 s crossing, frames 40-49
    kept = gate_run(gate, frames_with(100, box_at=crossing, light_from=70, light=light), clock)
    # frame 0 (no background yet: the max_idle_s run), the crossing, then 0.5 s of cooldown; no light run
    assert kept[0] == 0 and 40 in kept
    assert set(range(40, 50)) <= set(kept) <= {0, *range(40, 56)}
    assert gate.report()[1]["light_changes"] >= 1
    assert gate.report()[1]["motion_frames"] >= 9
    gate.apply(frames_with(1, light_from=0)[0])
    assert gate.report()[1]["state"] == "idle"


def test_max_idle_s_runs_the_model_on_a_still_scene_now_and_then() -> None:
    clock = [0.0]
    gate = MotionGate(MotionConfig(max_idle_s=2.0), clock=lambda: clock[0])
    kept = gate_run(gate, frames_with(61), clock)
    assert kept == [0, 20, 40, 60]
    assert gate.fields() == {"motion": False}
    assert gate.report()[1]["idle_runs"] == 4 and gate.report()[1]["gated"] == 57


def grey_copy(frame: np.ndarray, width: int) -> np.ndarray:
    """What a camera's glance decodes straight from the JPEG: a grey copy ``width`` pixels wide."""
    h, w = frame.shape[:2]
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (width, round(h * width / w)))


def looking_run(
    gate: MotionGate, frames: list[np.ndarray], clock: list[float], glance: bool = False
) -> tuple[list, list]:
    """As a camera runs the gate: it asks ``skips_unseen`` before it decodes a frame, and shows the gate only
    the frames it did not skip; with ``glance``, a small grey copy first whenever the gate asks for one, and
    the full frame only when the gate kept it. (kept, looked at) frame indices."""
    kept, looked = [], []
    for i, f in enumerate(frames):
        clock[0] = i / FPS
        if gate.skips_unseen():
            continue
        looked.append(i)
        width = gate.glance_width() if glance else None
        if width is not None and gate.glance(grey_copy(f, width)) is None:
            continue
        if gate.apply(f) is not None:
            kept.append(i)
    return kept, looked


@pytest.mark.parametrize("glance", [False, True], ids=["full-frames", "at-a-glance"])
@pytest.mark.parametrize("idle_fps", [5.0, 2.5, None])
def test_a_still_scene_is_looked_at_idle_fps_times_a_second_and_motion_at_every_frame(
    idle_fps, glance
) -> None:
    clock = [0.0]
    gate = MotionGate(MotionConfig(cooldown_s=0.5, max_idle_s=6.0, idle_fps=idle_fps), clock=lambda: clock[0])
    crossing = {i: (10 + (i - 40) * 12, 50) for i in range(40, 50)}  # frames 40-49
    kept, looked = looking_run(gate, frames_with(100, box_at=crossing), clock, glance)
    stride = round(FPS / idle_fps) if idle_fps else 1
    # still: one frame in `stride` looked at, from the first on; the crossing found within 1/idle_fps s
    assert [i for i in looked if i < 40] == list(range(0, 40, stride))
    assert kept[1] - 40 < stride and set(range(kept[1], 50)) <= set(looked) & set(kept)
    # after the cooldown the gate is idle again and looks at one frame in `stride` again
    after = [i for i in looked if i > max(kept)]
    assert after == list(range(max(kept) + 1, 100, stride))
    counts = gate.report()[1]
    assert counts["frames"] == 100 and counts["unseen"] == 100 - len(looked)
    assert counts["gated"] == 100 - len(kept) and counts["unseen"] <= counts["gated"]
    assert (counts["glanced"] > 0) == glance
    assert kept[0] == 0 and max(kept) < 60  # frame 0, the crossing and its cooldown; no max_idle_s run (6 s)


def test_a_due_max_idle_s_run_is_never_skipped_unseen() -> None:
    clock = [0.0]
    gate = MotionGate(MotionConfig(max_idle_s=2.0, idle_fps=1.0), clock=lambda: clock[0])
    kept, looked = looking_run(gate, frames_with(61), clock)
    assert kept == [0, 20, 40, 60]  # every 2 s, although idle_fps alone would look at 0, 10, 20, ...
    assert set(kept) <= set(looked) and len(looked) < 61


def chain(masks: list[list[list[float]]], **motion):
    return create_pipeline_steps(
        [MaskConfig(polygon=p) for p in masks], [], MotionConfig(max_idle_s=1000, **motion)
    )


@pytest.mark.parametrize("prepare", [True, False], ids=["on-source-thread", "on-inference-thread"])
def test_motion_in_a_masked_region_never_wakes_the_model(tmp_path: Path, color_int8, prepare: bool) -> None:
    """A box moving only inside the mask: one result (the first frame, motion false). The same box outside
    the mask wakes the model (results with motion true)."""
    left_half = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
    inside = {i: (5 + (i - 5) * 3, 50) for i in range(5, 20)}  # x 5..62 of 160: within the left half
    outside = {i: (90 + (i - 5) * 3, 50) for i in range(5, 20)}
    for moves, woken in ((inside, False), (outside, True)):
        pub = RecordingPublisher()
        pipe = make_pipeline(
            tmp_path,
            FakeSource(frames_with(25, box_at=moves), prepare=prepare),
            stages_for(color_int8.path),
            publisher=pub,
            steps=chain([left_half]),
        )
        Running(pipe).finish()
        got = pub.payloads()
        snap = stats_of(pipe)  # schema-checked, with the motion entry
        if woken:
            assert len(got) > 1 and any(r["motion"] for r in got[1:])
            assert snap["motion"]["motion_frames"] > 0
        else:
            assert [(r["frame"], r["motion"]) for r in got] == [(0, False)]
            assert snap["motion"] == {"state": "idle", "frames": 25, "motion_frames": 0, "gated": 24,
                                      "unseen": 0, "glanced": 0, "idle_runs": 1,
                                      "light_changes": 0}  # fmt: skip
            assert snap["steps"]["motion"] == {"skipped": 24, "failed": 0}


def test_a_camera_glancing_at_small_grey_copies_never_wakes_the_model_for_motion_in_a_mask() -> None:
    """The chain as a camera runs it while all is still: a small grey copy goes through the masks and the
    gate, and only a frame the gate keeps is decoded in full and run through the chain. Motion inside the
    mask: nothing but the first frame is kept; the same motion outside it is, and found as soon."""
    left_half = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
    inside = {i: (5 + (i - 5) * 3, 50) for i in range(5, 20)}
    outside = {i: (90 + (i - 5) * 3, 50) for i in range(5, 20)}
    for moves, woken in ((inside, False), (outside, True)):
        steps = chain([left_half], idle_fps=None)
        kept, full_runs = [], 0
        for i, frame in enumerate(frames_with(25, box_at=moves)):
            width = steps.glance_width()
            if width is not None and not steps.glance(grey_copy(frame, width)):
                continue
            full_runs += 1
            if steps.run(frame).keep:
                kept.append(i)
        if woken:
            assert kept[:2] == [0, 5] and full_runs == len(kept)  # idle frames were decided at a glance
        else:
            assert kept == [0] and full_runs == 1
        assert steps.stats()["motion"]["skipped"] == 25 - len(kept)


# ------------------------------------------------------------------------------------------------ masks


def black_inside(image: np.ndarray, polygon: list[list[float]], margin: int = 3) -> bool:
    """Every pixel of ``polygon`` (shrunk by ``margin`` px: JPEG blurs the border) is (near) black."""
    h, w = image.shape[:2]
    region = np.zeros((h, w), np.uint8)
    pts = np.round(np.array(polygon) * [w, h]).astype(np.int32)
    cv2.fillPoly(region, [pts], 255)
    region = cv2.erode(region, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)
    assert region.any()
    return int(image[region].max()) <= 24


def test_the_evidence_store_masks_again_and_stores_nothing_it_cannot_mask(tmp_path: Path) -> None:
    from edge_agent.processing.masks import FrameMask

    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    square = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]
    path = store.save(np.full((64, 64, 3), 200, np.uint8), 1, "x", mask=FrameMask([square]))
    assert black_inside(cv2.imread(str(path)), square)
    assert store.save(np.full((64, 64, 3), 200, np.uint8), 2, "x", mask=FrameMask([square]).apply) is None
    assert store.save(np.zeros(5, np.uint8), 3, "x", mask=FrameMask([square])) is None
    assert "could not mask frame 3" in store.last_error
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [path.name]


@pytest.mark.parametrize(
    "points, message",
    [
        ([(0, 0), (1, 0)], "a polygon needs at least 3 points [x, y] (got 2)"),
        ([(0, 0), (1.5, 0), (1, 1)], "point 1 [1.5, 0] is outside the frame: coordinates are fractions"),
        ([(0, 0), (1, 0), (0, -0.1)], "point 2 [0, -0.1] is outside the frame"),
        ([(0, 0), (1, 0), (0.5, 1.2)], "point 2 [0.5, 1.2] is outside the frame"),
        ([(0, 0), (0, 0), (1, 1)], "points 0 and 1 are the same point; remove one"),
        ([(0, 0), (1, 0), (0, 0)], "points 2 and 0 are the same point"),  # the closing edge
        ([(0, 0), (1, 1), (1, 0), (0, 1)], "edge 0-1 crosses edge 2-3: the polygon intersects itself"),
        ([(0, 0), (1, 0), (1, 1), (0.5, 0), (0, 1)], "edge 0-1 crosses edge 2-3"),  # a corner on an edge
        ([(0, 1), (0, 0), (1, 1), (1, 0)], "edge 1-2 crosses edge 3-0"),  # the closing edge crosses
        ([(0, 0), (0.5, 0.5), (1, 1)], "the polygon has no area (its points lie on one line)"),
    ],
)
def test_each_bad_polygon_is_named(points: list, message: str) -> None:
    """check_polygon without pydantic or OpenCV (``edge-agent check`` runs it): each fault its sentence."""
    from edge_agent.processing.polygons import check_polygon

    with pytest.raises(ValueError) as info:
        check_polygon([tuple(map(float, p)) for p in points])
    assert message in str(info.value), str(info.value)


def test_good_polygons_pass_and_containment_is_half_open() -> None:
    """Concave and tiny polygons pass; a point on a left or top edge is inside, on a right or bottom edge
    outside (neighbouring zones never share a point); coverage is the union's share of the frame."""
    from edge_agent.processing.polygons import area, check_polygon, contains, coverage

    ell = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]
    square = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
    tiny = [(0.5, 0.5), (0.502, 0.5), (0.5, 0.502)]
    for poly in (ell, square, tiny, [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]):
        assert check_polygon(poly) == poly
    assert area(square) == pytest.approx(0.25) and area(ell) == pytest.approx(0.75)
    xs = np.array([0.25, 0.75, 0.5, 0.5, 0.5, 0.1, 0.9])
    ys = np.array([0.5, 0.5, 0.25, 0.75, 0.5, 0.1, 0.9])
    assert contains(square, xs, ys).tolist() == [True, False, True, False, True, False, False]
    assert contains(ell, np.array([0.75, 0.25, 0.75]), np.array([0.25, 0.25, 0.75])).tolist() == [
        False,  # the notch
        True,
        True,
    ]
    left, top = (
        [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)],
        [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (0.0, 0.5)],
    )
    assert coverage([left]) == pytest.approx(0.5) and coverage([left, top]) == pytest.approx(0.75)
    assert coverage([ell, left]) == pytest.approx(0.75)  # the left half lies inside the L
    assert coverage([ell, [(0.5, 0.0), (1.0, 0.0), (1.0, 0.5), (0.5, 0.5)]]) == 1.0


GRID = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # coarse on purpose: corners on edges, collinear runs


@settings(max_examples=600, deadline=None)
@given(points=st.lists(st.tuples(GRID, GRID), min_size=3, max_size=7))
def test_check_polygon_agrees_with_geos(points: list[tuple[float, float]]) -> None:
    """GEOS (shapely), a geometry engine no one here wrote, is the oracle: a polygon passes exactly when its
    ring is simple (no edge touches or crosses another), no two neighbouring corners coincide, and it has an
    area. A grid of 5 values makes touching corners and overlapping edges common."""
    from shapely.geometry import LinearRing, Polygon

    from edge_agent.processing.polygons import check_polygon

    n = len(points)
    repeated = any(points[i] == points[(i + 1) % n] for i in range(n))
    expected = not repeated and LinearRing(points).is_simple and Polygon(points).area >= 1e-6
    try:
        check_polygon(points)
        passed = True
    except ValueError:
        passed = False
    assert passed == expected


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(GRID, GRID), min_size=3, max_size=7),
    probes=st.lists(st.tuples(st.floats(0.01, 0.99), st.floats(0.01, 0.99)), min_size=1, max_size=20),
)
def test_contains_agrees_with_geos(
    points: list[tuple[float, float]], probes: list[tuple[float, float]]
) -> None:
    """Inside or outside a valid polygon, as GEOS says, for points off its edges (on an edge the zones'
    half-open rule decides: test_good_polygons_pass_and_containment_is_half_open)."""
    from shapely.geometry import Point, Polygon

    from edge_agent.processing.polygons import check_polygon, contains

    try:
        check_polygon(points)
    except ValueError:
        return
    shape = Polygon(points)
    probes = [p for p in probes if shape.exterior.distance(Point(p)) > 1e-9]
    if not probes:
        return
    xs, ys = np.array([p[0] for p in probes]), np.array([p[1] for p in probes])
    assert contains(points, xs, ys).tolist() == [shape.contains(Point(p)) for p in probes]


def test_a_frame_mask_blacks_out_exactly_its_polygon_at_every_size() -> None:
    """A glance's small grey copy and the full colour frame go through the same FrameMask: each size gets its
    own pixel mask, masked pixels are 0, the rest and the caller's frame are untouched, the cached mask is
    read-only, and anything that is not an image is refused (so the caller drops it, never keeps it)."""
    from edge_agent.processing.masks import FrameMask

    quarter = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]
    mask = FrameMask([quarter])
    for h, w, channels in ((48, 64, (3,)), (12, 16, ()), (48, 64, ())):
        frame = np.full((h, w, *channels), 200, np.uint8)
        out = mask.apply(frame)
        assert (out[: h // 2, : w // 2] == 0).all()
        assert (out[h // 2 + 1 :] == 200).all() and (out[:, w // 2 + 1 :] == 200).all()
        assert (frame == 200).all()
    assert not mask.pixels(48, 64).flags.writeable
    assert mask.pixels(48, 64) is mask.pixels(48, 64)  # rasterised once per size, not once per frame
    assert mask.pixels(12, 16).shape == (12, 16)
    for bad, shape in (
        (np.zeros(5, np.uint8), "(5,)"),
        (np.zeros((2, 2, 2, 2), np.uint8), "(2, 2, 2, 2)"),
        (np.zeros((0, 4, 3), np.uint8), "(0, 4, 3)"),
        ([[1]], "None"),
    ):
        message = f"cannot mask data of shape {shape}: not an image"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            mask.apply(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one polygon"):
        FrameMask([])


TOP_LEFT = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]
BOTTOM_RIGHT = [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.5, 1.0]]


def test_masked_pixels_are_black_in_every_evidence_jpeg_also_after_a_reload(
    tmp_path: Path, mosquitto, privacy, color_int8, canary_video
) -> None:
    broker = mosquitto()
    pipeline = {"name": "cam", "source": {"type": "camera", "url": str(canary_video), "loop": True,
                                          "fps": 20},
                "model": {"path": str(color_int8.path)},
                "masks": [{"name": "neighbour", "polygon": TOP_LEFT}],
                "evidence": {"enabled": True}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    watch = privacy(broker, config)
    folder = tmp_path / "state" / "evidence" / "cam"

    def saved() -> list[Path]:
        return sorted(folder.glob("*.jpg")) if folder.exists() else []

    def wait_files(n: int, after: int = 0) -> list[Path]:
        deadline = time.monotonic() + 30
        while len([f for f in saved() if int(f.name[:12]) > after]) < n:
            assert time.monotonic() < deadline, agent.log()[-2000:]
            time.sleep(0.1)
        return saved()

    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        before = wait_files(5)
        pipeline["masks"] = [{"polygon": BOTTOM_RIGHT}]
        cfg = yaml.safe_load(config.read_text())
        cfg["pipelines"] = [pipeline]
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        agent.send(signal.SIGHUP)
        agent.wait_log("reload: pipeline cam keeps")  # masks changed, applied live; the model stays
        last_before = int(saved()[-1].name[:12])
        after = [f for f in wait_files(5, after=last_before) if int(f.name[:12]) > last_before]
        assert agent.stop() == 0
    for f in before:
        assert black_inside(cv2.imread(str(f)), TOP_LEFT), f
    for f in after:
        image = cv2.imread(str(f))
        assert black_inside(image, BOTTOM_RIGHT), f
        assert not black_inside(image, TOP_LEFT), f"{f}: the old mask is still applied"
    for f in saved():  # and nothing in between escaped both
        image = cv2.imread(str(f))
        assert black_inside(image, TOP_LEFT) or black_inside(image, BOTTOM_RIGHT), f
    watch.check()


# ------------------------------------------------------------------------------------------------ zones


def det(label: str, box: tuple[float, float, float, float]) -> Detection:
    return Detection(label, 0, 0.9, box)


def test_a_detection_is_in_a_zone_exactly_when_its_anchor_is() -> None:
    """Boxes that straddle the border of ``left`` (x < 0.5): the one whose bottom centre is left of it is
    in, the other is out, whatever their overlap; counts per zone and label follow."""
    zones = ZonesConfig(polygons={"left": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]],
                                  "bottom": [[0, 0.8], [1, 0.8], [1, 1], [0, 1]]})  # fmt: skip
    result = DetectionResult((
        det("person", (0.2, 0.1, 0.78, 0.9)),  # anchor (0.49, 0.9): left, bottom
        det("person", (0.22, 0.1, 0.8, 0.7)),  # anchor (0.51, 0.7): mostly left, but neither
        det("car", (0.1, 0.1, 0.3, 0.85)),  # anchor (0.2, 0.85): left, bottom
    ))  # fmt: skip
    out = ZoneAssigner(zones).apply(result)
    assert [d.zones for d in out.detections] == [("left", "bottom"), (), ("left", "bottom")]
    assert out.zone_counts == {"left": {"person": 1, "car": 1}, "bottom": {"person": 1, "car": 1}}
    top = ZoneAssigner(zones.model_copy(update={"anchor": "top_center", "filter": True})).apply(result)
    assert [d.box for d in top.detections] == [(0.2, 0.1, 0.78, 0.9), (0.1, 0.1, 0.3, 0.85)]
    assert top.zone_counts == {"left": {"person": 1, "car": 1}, "bottom": {}}
    crowd = DetectionResult((
        *result.detections,
        det("car", (0.3, 0.2, 0.4, 0.6)),  # a second car on the left: counted twice
        det("dog", (0.6, 0.7, 0.7, 1.0)),  # centre (0.65, 0.85): bottom only
    ))  # fmt: skip
    centre = ZoneAssigner(zones.model_copy(update={"anchor": "center"})).apply(crowd)
    assert [d.zones for d in centre.detections] == [("left",), (), ("left",), ("left",), ("bottom",)]
    assert centre.zone_counts == {"left": {"person": 1, "car": 2}, "bottom": {"dog": 1}}
    empty = ZoneAssigner(zones).apply(DetectionResult(()))
    assert empty.detections == () and empty.zone_counts == {"left": {}, "bottom": {}}


def test_zones_in_published_results(tmp_path: Path, yolo_float32) -> None:
    """The YOLO fixture's person (anchor x 0.5) and car (anchor x 0.531) on a square frame: a zone that ends
    at x 0.52 holds the person only; with filter: true the car is dropped."""
    zone = [[0.0, 0.5], [0.52, 0.5], [0.52, 1.0], [0.0, 1.0]]
    frame = np.full((96, 96, 3), 128, np.uint8)
    for filtering in (False, True):
        pub = RecordingPublisher()
        zones = ZoneAssigner(ZonesConfig(polygons={"door": zone}, filter=filtering))
        pipe = make_pipeline(tmp_path, FakeSource([frame]), stages_for(yolo_float32.path), publisher=pub,
                             zones=zones)  # fmt: skip
        Running(pipe).finish()
        (r,) = pub.payloads()
        got = [(d["label"], d["zones"]) for d in r["detections"]]
        assert got == ([("person", ["door"])] if filtering else [("person", ["door"]), ("car", [])])
        assert r["zone_counts"] == {"door": {"person": 1}}


# ------------------------------------------------------------------------------------------- idle daemon


def write_still_video(path: Path, frames: int = 40) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 120))
    for f in frames_with(frames):
        writer.write(f)
    writer.release()
    return path


def test_a_gated_pipeline_keeps_the_watchdog_fed_and_stats_flowing_while_idle(
    tmp_path: Path, mosquitto, privacy, color_int8
) -> None:
    broker = mosquitto()
    video = write_still_video(tmp_path / "still.avi")
    pipeline = {"name": "cam", "source": {"type": "camera", "url": str(video), "loop": True, "fps": FPS},
                "model": {"path": str(color_int8.path)}, "motion": {"max_idle_s": 1000}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline], watchdog={"stall_after_s": 1.0})
    watch = privacy(broker, config)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        with Agents(tmp_path) as agents:
            agent = agents.start(config, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
            notify.wait_for("READY=1", timeout=30)
            pings = [t for t, line in notify.poll(4.0) if line == "WATCHDOG=1"]
            assert len(pings) >= 5, notify.received
            messages = agent.expect(watch.sub, lambda m: len(stats(m)) >= 4)
            assert agent.stop() == 0
    finally:
        notify.close()
    entries = [s["pipelines"]["cam"] for s in stats(messages)]
    assert [e["motion"]["state"] for e in entries[-2:]] == ["idle", "idle"]
    gated = [e["motion"]["gated"] for e in entries]
    assert gated == sorted(gated) and gated[-1] - gated[0] >= 15  # 10 fps, >= 3 stats intervals of 1 s
    # idle_fps 5 (the default) at 10 fps: about every second frame is skipped before it is decoded, so it
    # never reaches the pipeline either
    last = entries[-1]
    assert last["motion"]["unseen"] * 3 >= last["motion"]["gated"]
    # ... and the frames it looked at were decided from a small grey copy (a glance), never decoded in full:
    # all but the first ones, read before the pipeline had started
    looked = last["motion"]["frames"] - last["motion"]["unseen"]
    assert last["motion"]["glanced"] >= looked - 3, last
    assert "stuck" not in agent.log() and "no progress" not in agent.log()
    got = results(messages)
    assert [r["motion"] for r in got] == [False]  # the first frame only (max_idle_s 1000)
    for r in got:
        validate_payload(r, "result")
    watch.check()


# ------------------------------------------------------------------------------------------------ check


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"masks": [{"polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}]},
         "pipelines[0].masks[0].polygon: edge 0-1 crosses edge 2-3: the polygon intersects itself"),
        ({"zones": {"polygons": {"door": [[0, 0], [1.5, 0], [1, 1]]}}},
         "pipelines[0].zones.polygons.door: point 1 [1.5, 0] is outside the frame"),
        ({"masks": [{"polygon": [[0, 0], [1, 0], [1, 1]]}, {"polygon": [[0, 0], [1, 1], [0, 1]]}]},
         "masks cover the whole frame"),
        ({"motion": {"min_area": 0}}, "pipelines[0].motion.min_area: input should be greater than 0"),
    ],
)  # fmt: skip
def test_check_names_each_bad_polygon_or_key(
    tmp_path: Path, color_int8, test_video: Path, change: dict, message: str
) -> None:
    video = test_video  # check decodes its first frame
    pipe = {"name": "cam", "source": {"type": "camera", "url": str(video)},
            "model": {"path": str(color_int8.path)}, **change}  # fmt: skip
    cfg = {"mqtt": {"host": "127.0.0.1", "port": 1}, "state_dir": "state", "pipelines": [pipe]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = edge_agent("check", "config.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_check_refuses_camera_keys_on_a_sensor_pipeline(tmp_path: Path, color_int8) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text("1\n2\n")
    square = [[0, 0], [0.5, 0], [0.5, 0.5]]
    pipe = {"name": "s", "source": {"type": "file", "path": str(csv), "format": "csv"},
            "window": {"size": 4, "hop": 4}, "model": {"path": str(color_int8.path)},
            "zones": {"polygons": {"a": square}}, "motion": {}}  # fmt: skip
    cfg = {"mqtt": {"host": "127.0.0.1", "port": 1}, "state_dir": "state", "pipelines": [pipe]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = edge_agent("check", "config.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "motion: only for camera sources (this source is file); remove it" in done.stderr


# ------------------------------------------------------------------------------------------- crop_to_motion


def test_crop_to_motion_runs_the_model_on_the_moving_region_and_maps_boxes_back(
    tmp_path: Path, yolo_float32
) -> None:
    """The YOLO fixture finds the same boxes in whatever it sees (person x 0.25-0.75 of its input): with
    crop_to_motion, the input is the region around a box moving in the right third of the frame, so the
    published person box lies there, in full-frame coordinates; without, it spans the middle of the frame."""
    crossing = {i: (115 + (i - 5), 50) for i in range(5, 12)}  # x 115-141 of 160, y 50-70 of 120
    boxes = {}
    for cropping in (False, True):
        pub = RecordingPublisher()
        steps = create_pipeline_steps([], [], MotionConfig(max_idle_s=1000, crop_to_motion=cropping))
        source = FakeSource(frames_with(12, box_at=crossing))
        pipe = make_pipeline(tmp_path, source, stages_for(yolo_float32.path), publisher=pub, steps=steps)
        Running(pipe).finish()
        got = [r for r in pub.payloads() if r["motion"]]
        assert got, pub.payloads()
        boxes[cropping] = next(d["box"] for d in got[0]["detections"] if d["label"] == "person")
    assert boxes[False][0] < 0.3 and boxes[False][2] > 0.7  # the whole frame: the middle
    x0, y0, x1, y1 = boxes[True]
    assert 0.5 < x0 < x1 <= 1.0 and 0.2 < y0 < y1 < 0.8  # the crop around the box at x 0.72-0.88
    assert x0 < 115 / 160 + 0.05 and x1 > 141 / 160 - 0.05


def test_crop_geometry() -> None:
    from edge_agent.processing.crop import crop, result_to_frame
    from edge_agent.processing.steps.motion import _grown

    assert _grown((0.45, 0.45, 0.55, 0.55)) == pytest.approx((0.375, 0.375, 0.625, 0.625))  # at least 1/4
    assert _grown((0.0, 0.2, 0.6, 0.4)) == pytest.approx((0.0, 0.15, 0.9, 0.45))  # margin, kept inside
    view, region = crop(np.zeros((100, 200, 3), np.uint8), (0.1, 0.25, 0.5, 0.755))
    assert view.shape == (51, 80, 3) and region == pytest.approx((0.1, 0.25, 0.5, 0.76))
    moved = result_to_frame(DetectionResult((det("car", (0.0, 0.5, 1.0, 1.0)),)), (0.1, 0.2, 0.5, 0.6))
    assert moved.detections[0].box == pytest.approx((0.1, 0.4, 0.5, 0.6))


def test_check_refuses_zones_for_a_model_without_boxes(tmp_path: Path, color_int8, test_video: Path) -> None:
    video = test_video  # check decodes its first frame
    pipe = {"name": "cam", "source": {"type": "camera", "url": str(video)},
            "model": {"path": str(color_int8.path)},
            "zones": {"polygons": {"a": [[0, 0], [0.5, 0], [0.5, 0.5]]}}}  # fmt: skip
    cfg = {"mqtt": {"host": "127.0.0.1", "port": 1}, "state_dir": "state", "pipelines": [pipe]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = edge_agent("check", "config.yaml", cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "pipelines[0].zones: zones place detections, but model" in done.stderr
    assert "is a classification model" in done.stderr and "Traceback" not in done.stderr
