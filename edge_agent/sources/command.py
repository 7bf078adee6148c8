"""Command source: run a program and read one sample per line of its stdout."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CommandSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["command"] = "command"
    argv: list[str] = Field(min_length=1, description="Program and arguments (no shell).")
    format: Literal["csv", "json"] = Field(default="csv")
    fields: list[str] | None = Field(default=None, description="json: keys to read, in model input order.")
    restart: bool = Field(default=True, description="Start the command again (with backoff) when it exits.")
