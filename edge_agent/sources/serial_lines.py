"""Serial-line sensor source: one CSV or JSON sample per line (pyserial, the 'serial' extra)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SerialSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["serial"] = "serial"
    port: str = Field(description="/dev/ttyUSB0, /dev/ttyACM0, ...")
    baudrate: int = Field(default=115200, gt=0)
    format: Literal["csv", "json"] = Field(default="csv", description="csv: numbers separated by commas; json: an object.")
    fields: list[str] | None = Field(
        default=None, description="json: the keys to read, in model input order; csv: names for the columns."
    )
