"""Windowing: turn a stream of sensor samples into overlapping windows of model input."""

from __future__ import annotations

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
