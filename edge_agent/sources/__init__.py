"""Sources: where frames and samples come from. Each source type lives in its own module with its config;
``SOURCES`` maps the config's ``type`` to the implementation, imported only when used."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from edge_agent.sources.camera import CameraSourceConfig
from edge_agent.sources.command import CommandSourceConfig
from edge_agent.sources.factory import create_source
from edge_agent.sources.file_tail import FileSourceConfig
from edge_agent.sources.iio import IioSourceConfig
from edge_agent.sources.serial_lines import SerialSourceConfig
from edge_agent.sources.window import WindowConfig

SourceConfig = Annotated[
    CameraSourceConfig | IioSourceConfig | SerialSourceConfig | CommandSourceConfig | FileSourceConfig,
    Field(discriminator="type"),
]

# type -> "module:Class" of the implementation (imported lazily: OpenCV only when a camera is used)
SOURCES: dict[str, str] = {
    "camera": "edge_agent.sources.camera:CameraSource",
    "iio": "edge_agent.sources.iio:IioSource",
    "serial": "edge_agent.sources.serial_lines:SerialSource",
    "command": "edge_agent.sources.command:CommandSource",
    "file": "edge_agent.sources.file_tail:FileSource",
}

__all__ = ["SOURCES", "SourceConfig", "WindowConfig", "create_source"]
