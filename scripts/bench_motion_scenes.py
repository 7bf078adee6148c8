"""The motion benchmark's videos, rendered from seeds (nothing tuned by hand, nothing downloaded): a 640x480
MJPG view of a scikit-learn bundled photo (china.jpg) with sensor noise and a slow lighting drift, and

- ``still``: nothing else;
- ``events``: a dark figure crossing the view at known frames (durations and gaps drawn from the seed);
- ``light``: a lamp switched on (the whole view 1.35x brighter + 25 levels, over 2 frames) at ``light_at``.

``render`` returns the path and the ground truth (event frame spans, the light change's frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 640, 480
FIGURE_W, FIGURE_H = 70, 160  # a person at some distance


@dataclass
class Scene:
    name: str
    path: Path
    fps: float
    frames: int
    events: list[tuple[int, int]] = field(default_factory=list)  # [start, end) frame spans with motion
    light_at: int | None = None

    @property
    def motion_frames(self) -> int:
        return sum(e - s for s, e in self.events)


def _view() -> np.ndarray:
    import cv2
    import sklearn

    photo = cv2.imread(str(Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"))
    return cv2.resize(photo, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32)


def event_spans(frames: int, fps: float, seed: int) -> list[tuple[int, int]]:
    """Events of 0.6-3 s separated by 4-8 s of stillness, from 3 s on, until the video ends."""
    rng = np.random.default_rng(seed)
    spans, t = [], 3.0
    while True:
        length = rng.uniform(0.6, 3.0)
        start, end = round(t * fps), round((t + length) * fps)
        if end >= frames - round(2 * fps):
            return spans
        spans.append((start, end))
        t += length + rng.uniform(4.0, 8.0)


def render(kind: str, out: Path, seconds: float, fps: float = 10.0, seed: int = 12) -> Scene:
    import cv2

    frames = round(seconds * fps)
    scene = Scene(kind, out / f"motion-{kind}-{frames}f-{fps:g}fps-s{seed}.avi", fps, frames)
    if kind == "events":
        scene.events = event_spans(frames, fps, seed)
    if kind == "light":
        scene.light_at = frames // 2
    if scene.path.exists():
        return scene
    rng = np.random.default_rng(seed)
    view = _view()
    tmp = scene.path.with_name(scene.path.stem + ".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT), True)
    if not writer.isOpened():
        raise RuntimeError(f"{tmp}: OpenCV cannot write an MJPG video here")
    for i in range(frames):
        drift = 1.0 + 0.06 * np.sin(2 * np.pi * i / frames)  # +-6 % over the video: clouds, time of day
        f = view * drift
        if scene.light_at is not None and i >= scene.light_at:
            ramp = min(1.0, (i - scene.light_at + 1) / 2)
            f = f * (1 + 0.35 * ramp) + 25 * ramp
        f = f + rng.normal(0.0, 2.5, f.shape).astype(np.float32)  # sensor noise
        img = np.clip(f, 0, 255).astype(np.uint8)
        for start, end in scene.events:
            if start <= i < end:  # enters at the left edge, leaves at the right one
                x = round(-FIGURE_W + (WIDTH + FIGURE_W) * (i - start + 0.5) / (end - start))
                y = HEIGHT - FIGURE_H - 40
                cv2.rectangle(img, (x, y), (x + FIGURE_W, y + FIGURE_H), (40, 45, 50), -1)
                cv2.circle(img, (x + FIGURE_W // 2, y - 18), 20, (60, 70, 90), -1)
        writer.write(img)
    writer.release()
    tmp.rename(scene.path)
    return scene
