"""``every_nth``: keep one frame in ``n`` (a cheap way to thin a fast camera or sensor stream)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.processing.steps.base import FrameStep, StepConfigBase


class EveryNthConfig(StepConfigBase):
    """Keep the first frame and then every n-th one the source offers; skip the others."""

    type: Literal["every_nth"] = Field(description="Keep every n-th frame.")
    n: int = Field(ge=1, description="Keep 1 frame in n (1 keeps all).")


class EveryNth(FrameStep):
    def __init__(self, cfg: EveryNthConfig) -> None:
        super().__init__(cfg)
        self.n = cfg.n
        self._seen = 0

    def apply(self, data: np.ndarray) -> np.ndarray | None:
        keep = self._seen % self.n == 0
        self._seen += 1
        return data if keep else None
