"""File source: read samples from a CSV or JSONL file (or stdin with '-'), optionally following it like tail -f."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FileSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["file"] = "file"
    path: str = Field(description="A CSV or JSONL file, or '-' for stdin.")
    format: Literal["csv", "jsonl"] = Field(default="csv")
    fields: list[str] | None = Field(default=None, description="Columns (csv header names) or keys (jsonl) to read.")
    follow: bool = Field(default=False, description="Keep reading lines appended to the file, like tail -f.")
    rate_hz: float | None = Field(default=None, gt=0, description="Replay at this sample rate; none = as fast as read.")
