"""Linux IIO sensor source, read through sysfs (in_<channel>_raw, _scale, _offset)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IioSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["iio"] = "iio"
    device: str = Field(description="Device directory name (iio:device0) or its 'name' attribute (adxl345).")
    channels: list[str] = Field(min_length=1, description="Channel names, e.g. accel_x -> in_accel_x_raw.")
    rate_hz: float = Field(default=100.0, gt=0, le=10000, description="Sampling rate.")
    sysfs_root: str = Field(default="/sys/bus/iio/devices", description="Where IIO devices live (tests point elsewhere).")
