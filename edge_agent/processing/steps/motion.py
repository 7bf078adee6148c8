"""The motion gate: the model runs only while something moves (and ``cooldown_s`` after), plus once every
``max_idle_s`` so a steady state still gets confirmed. A still scene then costs a frame decode and this step,
not an invoke; and while nothing moves, only ``idle_fps`` frames a second are looked at: a camera skips the
others before decoding them (decoding is most of what a gated frame costs), and decodes the ones looked at
as a small grey copy straight from the JPEG (``glance``): only a frame the gate keeps is decoded in full.

The detector works on a small grey copy (``width`` pixels wide; ~0.4 ms per 640x480 frame on this project's
loaded 2-core machine, about 1/17 of one MobileNetV2-int8 invoke there; README "Motion, zones and masks"):
blur, absolute difference to a running-average background, threshold, dilate, contours; motion when one
changed region covers ``min_area`` of the frame. Pixels that moved join the background 10x slower, so an
object's trail does not read as motion after it has gone (and a parked car still fades in, within a minute or
so). Light (a lamp, auto exposure) changes the whole frame roughly as grey' = gain * grey + offset: each frame
is first fitted to the background that way (least squares over the small copy; a moving object is too small a
part of it to bend the fit) and compared after the fit, so drift and small exposure steps never read as
motion. When the fit itself moves the frame by more than ``threshold / 2`` on average, or more than
``light_change`` of the frame changed anyway, the change is light: the background is reset to the new frame
and the model is not woken. Masked pixels are black in every frame (the masks step runs first), so motion
there never wakes the model. With ``crop_to_motion`` the gate also names the region around the motion
(``region()``); the pipeline runs the model on that crop and maps the boxes back (processing/crop.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edge_agent.extras import OPENCV
from edge_agent.processing.steps.base import DataKind, FrameStep, StepConfigBase
from edge_agent.sources.base import glance_copy

MotionState = Literal["idle", "motion", "cooldown"]
SLOW_FACTOR = 0.1  # background learning rate of moving pixels, relative to still ones
CROP_MARGIN = 0.25  # crop_to_motion: the moving region grows by this fraction of its size on each side
CROP_MIN = 0.25  # ... and covers at least this fraction of the frame's width and of its height


class MotionConfig(StepConfigBase):
    """Run the model only when (and shortly after) something moves."""

    data_kinds: ClassVar[frozenset[DataKind]] = frozenset({"image"})
    type: Literal["motion"] = "motion"
    enabled: bool = Field(
        default=True, description="false: run the model on every frame (as without motion:)."
    )
    threshold: int = Field(
        default=25, ge=1, le=254, description="Grey-level difference (0-255) from the background that counts."
    )
    min_area: float = Field(
        default=0.002,
        gt=0.0,
        lt=1.0,
        description="A changed region must cover at least this fraction of the frame to count as motion.",
    )
    max_idle_s: float = Field(
        default=60.0, gt=0, description="Run the model at least this often even when nothing moves."
    )
    cooldown_s: float = Field(
        default=0.5, ge=0, description="Keep running the model this long after the motion stopped."
    )
    light_change: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="A change over more than this fraction of the frame at once is light, not motion "
        "(the background adapts to it).",
    )
    background_alpha: float = Field(
        default=0.05, gt=0.0, le=1.0, description="How fast the background learns the scene, per frame."
    )
    idle_fps: float | None = Field(
        default=5.0,
        gt=0,
        description="While nothing moves, look at most this many frames a second; the others are skipped "
        "before they are decoded (MJPEG), the CPU a still scene costs. Motion is then seen within "
        "1/idle_fps s of its start. null: look at every frame.",
    )
    width: int = Field(default=160, ge=32, le=640, description="Width of the grey copy the detector uses.")
    crop_to_motion: bool = Field(
        default=False,
        description="Detection models: run the model on the moving region only (with a margin, at least a "
        "quarter of the frame each way); boxes are mapped back to the full frame.",
    )


class MotionGate(FrameStep):
    """Keeps a frame when it moves, within ``cooldown_s`` of motion, or after ``max_idle_s`` without a model
    run; skips the rest. Adds ``motion: true|false`` to the result of each frame it keeps."""

    def __init__(self, cfg: MotionConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cfg)
        self._cv2 = OPENCV.load()
        self.cfg: MotionConfig = cfg
        self._clock = clock
        self._kernel = np.ones((3, 3), np.uint8)
        self._background: np.ndarray | None = None
        self._last_motion = -math.inf
        self._last_run = -math.inf
        self._last_look = -math.inf
        self._motion_field = False
        self._moved_at: tuple[float, float, float, float] | None = None  # last moving region (normalized)
        self._crop: tuple[float, float, float, float] | None = None
        self._kept_at_a_glance = False  # the next full frame is kept without a second look
        self._lock = threading.Lock()  # stats() is read on the daemon's thread
        self.state: MotionState = "idle"
        # frames: all it was asked about; gated: the model did not run; unseen: gated without a look;
        # glanced: decided from a glance (a small grey copy a camera decoded straight from the JPEG)
        keys = ("frames", "motion_frames", "gated", "unseen", "glanced", "idle_runs", "light_changes")
        self.counts = dict.fromkeys(keys, 0)

    # -- the detector ----------------------------------------------------------------------------------------
    def moving(self, image: np.ndarray) -> bool:
        """Whether ``image`` shows motion against the background (and learn it into the background)."""
        cv2 = self._cv2
        cfg = self.cfg
        grey = cv2.GaussianBlur(glance_copy(cv2, image, cfg.width), (5, 5), 0)  # a glance's copy: as it is
        bg = self._background
        if bg is None or bg.shape != grey.shape:
            self._background = grey.astype(np.float32)
            return False
        g = grey.astype(np.float32)
        gain, offset = _light_fit(g[::2, ::2], bg[::2, ::2])  # a quarter of the pixels fit as well
        fitted = g * gain + offset
        # how much the light alone changed the frame, in grey levels
        shift = float(np.mean(np.abs(g[::2, ::2] * (gain - 1.0) + offset)))
        _, changed = cv2.threshold(cv2.absdiff(fitted, bg), cfg.threshold, 255, cv2.THRESH_BINARY)
        changed = changed.astype(np.uint8)
        changed_fraction = cv2.countNonZero(changed) / changed.size
        if shift > cfg.threshold / 2 or changed_fraction > cfg.light_change:  # light: start from this frame
            self._background = grey.astype(np.float32)
            with self._lock:
                self.counts["light_changes"] += 1
            return False
        still = cv2.bitwise_not(changed)
        cv2.accumulateWeighted(grey, bg, cfg.background_alpha, mask=still)
        cv2.accumulateWeighted(grey, bg, cfg.background_alpha * SLOW_FACTOR, mask=changed)
        if changed_fraction < cfg.min_area:
            return False  # not even all changed pixels together are big enough
        changed = cv2.dilate(changed, self._kernel, iterations=2)
        contours, _ = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        least = cfg.min_area * changed.size
        boxes = [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= least]
        if not boxes:
            return False
        ch, cw = changed.shape
        self._moved_at = (
            min(x for x, _, _, _ in boxes) / cw,
            min(y for _, y, _, _ in boxes) / ch,
            max(x + w for x, _, w, _ in boxes) / cw,
            max(y + h for _, y, _, h in boxes) / ch,
        )
        return True

    # -- the gate --------------------------------------------------------------------------------------------
    def skips_unseen(self) -> bool:
        """While idle, frames between two looks (``idle_fps``) are skipped unseen, unless a ``max_idle_s``
        run is due: the camera then does not decode them. Counted as gated (and ``unseen``)."""
        if self.cfg.idle_fps is None:
            return False
        now = self._clock()
        if (
            self.state != "idle"
            or now - self._last_look >= 0.9 / self.cfg.idle_fps  # a frame's jitter must not skip one more
            or now - self._last_run >= self.cfg.max_idle_s
        ):
            return False
        with self._lock:
            for key in ("frames", "gated", "unseen"):
                self.counts[key] += 1
        return True

    def glance_width(self) -> int | None:
        """While idle (and no ``max_idle_s`` run is due) the gate decides from a small grey copy that a
        camera decodes straight from the JPEG: 0.75 ms against 0.95 ms for a half-size colour decode and
        the shrinking, on this project's machine; only a frame it keeps is then decoded in full."""
        if self.state != "idle" or self._clock() - self._last_run >= self.cfg.max_idle_s:
            return None
        return self.cfg.width

    def glance(self, small: np.ndarray) -> np.ndarray | None:
        with self._lock:
            self.counts["glanced"] += 1
        kept = self.apply(small)
        self._kept_at_a_glance = kept is not None  # decided: the full frame is not looked at again
        return kept

    def apply(self, data: np.ndarray) -> np.ndarray | None:
        if self._kept_at_a_glance:
            self._kept_at_a_glance = False
            return data
        now = self._clock()
        self._last_look = now
        moving = self.moving(data)
        if moving:
            self._last_motion = now
        recent = now - self._last_motion <= self.cfg.cooldown_s
        idle_run = not recent and now - self._last_run >= self.cfg.max_idle_s
        run = recent or idle_run
        with self._lock:
            self.counts["frames"] += 1
            self.counts["motion_frames"] += int(moving)
            self.counts["gated"] += int(not run)
            self.counts["idle_runs"] += int(idle_run)
            self.state = "motion" if moving else "cooldown" if recent else "idle"
        if not run:
            return None
        self._last_run = now
        self._motion_field = recent
        self._crop = _grown(self._moved_at) if self.cfg.crop_to_motion and recent and self._moved_at else None
        return data

    def region(self) -> tuple[float, float, float, float] | None:
        return self._crop

    def fields(self) -> dict[str, Any]:
        return {"motion": self._motion_field}

    def report(self) -> tuple[str, dict[str, Any]]:
        with self._lock:
            return "motion", {"state": self.state, **self.counts}


def _light_fit(grey: np.ndarray, background: np.ndarray) -> tuple[float, float]:
    """(gain, offset) with gain * grey + offset closest to ``background`` (least squares); (1, mean
    difference) for a flat frame, whose gain says nothing."""
    mg, mb = float(grey.mean()), float(background.mean())
    var = float(grey.var())
    if var < 1.0:
        return 1.0, mb - mg
    gain = float(((grey - mg) * (background - mb)).mean()) / var
    return gain, mb - gain * mg


def _grown(region: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``region`` with a margin, at least ``CROP_MIN`` of the frame each way, shifted back inside it."""
    out = []
    for lo, hi in ((region[0], region[2]), (region[1], region[3])):
        size = max(CROP_MIN, (hi - lo) * (1 + 2 * CROP_MARGIN))
        centre = (lo + hi) / 2
        start = min(max(0.0, centre - size / 2), max(0.0, 1.0 - size))
        out.append((start, min(1.0, start + size)))
    (x0, x1), (y0, y1) = out
    return (x0, y0, x1, y1)
