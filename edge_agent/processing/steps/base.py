"""The interface of a per-frame step (``FrameStep``) and the base of its config.

A step runs on each frame before the model and before evidence is saved: a privacy mask changes the
frame, a motion gate skips it. It returns the data to go on with (the same array or a changed copy), or
None to skip the frame. A step that raises makes the frame unusable: it is neither inferred nor stored
(fail closed), so a broken mask can never let an unmasked frame through. Each skip and failure is counted
per step on the stats topic; failures are also frame errors of the pipeline (logged, rate-limited), and
``MAX_CONSECUTIVE_ERRORS`` of them in a row end the pipeline like any frame error does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DataKind = Literal["image", "samples"]


class StepConfigBase(BaseModel):
    """Fields every step has. Subclasses add ``type: Literal[...]`` (the registry key) and their own."""

    model_config = ConfigDict(extra="forbid")

    # which sources' data the step understands; a pipeline whose source gives another kind is refused
    data_kinds: ClassVar[frozenset[DataKind]] = frozenset({"image", "samples"})

    name: str | None = Field(
        default=None,
        description="Name in stats and logs; default: the type (with #2, #3 ... when used twice).",
        min_length=1,
        max_length=64,
    )


class FrameStep(ABC):
    """One step. ``apply`` is called for every frame the source offers, one frame at a time (the chain
    serialises calls), on the source's producing thread when it has one (a camera) and on the pipeline's
    inference thread otherwise: keep per-frame state on ``self``, and make ``apply`` cheap."""

    def __init__(self, cfg: StepConfigBase) -> None:
        self.cfg = cfg

    @abstractmethod
    def apply(self, data: np.ndarray) -> np.ndarray | None:
        """The data to go on with (``data`` itself, or a changed copy), or None to skip this frame."""

    def skips_unseen(self) -> bool:
        """Whether the next frame may be skipped before it is even decoded (the motion gate while the scene
        is still, between the frames it looks at); the step counts such a skip itself. Asked on the
        source's thread, under the chain's lock, by sources that can skip a frame undecoded (MJPEG)."""
        return False

    # A step that does to a small grey copy what it does to the frame (a privacy mask) lets a glance through.
    passes_glance: ClassVar[bool] = False

    def glance_width(self) -> int | None:
        """The width of a small grey copy from which this step can decide on the next frame before it is
        decoded in full (the motion gate while the scene is still), or None. A camera then decodes that
        copy straight from the JPEG (a fraction of a full decode), or shrinks a frame its capture decoded
        (H.264, YUYV), and hands it to ``glance``."""
        return None

    def glance(self, small: np.ndarray) -> np.ndarray | None:
        """Decide on the next frame from ``small`` (grey, at least ``glance_width`` wide): None skips it
        (counted by the chain), anything else keeps it, and the frame is then decoded in full and goes
        through every step as usual. A step with ``passes_glance`` returns its output for ``small``."""
        return self.apply(small)

    def fields(self) -> dict[str, Any] | None:
        """Fields this step adds to the result of the frame it just kept (read right after ``apply``, under
        the chain's lock), e.g. the motion gate's ``motion``; None for none."""
        return None

    def region(self) -> tuple[float, float, float, float] | None:
        """The part of the frame (normalized xmin, ymin, xmax, ymax) the model is to see for the frame just
        kept (the motion gate's ``crop_to_motion``), or None for all of it. The data passed on stays whole:
        evidence keeps the full frame, and the pipeline maps the model's boxes back."""
        return None

    def report(self) -> tuple[str, dict[str, Any]] | None:
        """(key, object) for this step's own entry in the pipeline's stats (e.g. the motion state), or None.
        Called from the daemon's thread: guard what ``apply`` changes."""
        return None

    def close(self) -> None:  # noqa: B027 - optional for steps that hold nothing
        """Release what the step holds (none of the built-in ones holds anything)."""
