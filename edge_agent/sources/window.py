"""Windowing: turn a stream of sensor samples into overlapping windows of model input."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class WindowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(gt=0, description="Samples per window (model input).")
    hop: int = Field(gt=0, description="Samples between the starts of two windows (size = no overlap).")

    @model_validator(mode="after")
    def _hop_not_larger(self) -> WindowConfig:
        if self.hop > self.size:
            raise ValueError(f"hop ({self.hop}) must not exceed size ({self.size}): samples would be skipped")
        return self


class Windower:
    """Cuts samples into windows of ``size`` starting every ``hop`` samples: the first window comes after
    ``size`` samples, each next one after ``hop`` more. Windows are float32 (size, channels), copies."""

    def __init__(self, size: int = 1, hop: int = 1) -> None:
        if not 0 < hop <= size:
            raise ValueError(f"need 0 < hop <= size, got size={size} hop={hop}")
        self.size = size
        self.hop = hop
        self._samples: list[np.ndarray] = []

    @classmethod
    def from_config(cls, cfg: WindowConfig | None) -> Windower:
        """Without a window config one sample is one window (size 1)."""
        return cls(1, 1) if cfg is None else cls(cfg.size, cfg.hop)

    def push(self, sample: np.ndarray) -> np.ndarray | None:
        """Add one sample (channels,); returns a window when one is complete."""
        self._samples.append(sample)
        if len(self._samples) < self.size:
            return None
        window = np.asarray(self._samples, dtype=np.float32)
        del self._samples[: self.hop]
        return window
