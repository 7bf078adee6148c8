"""Camera source: a V4L2 device, a video file, or an rtsp/http/udp stream, read through OpenCV."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CameraSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["camera"] = "camera"
    url: str | int = Field(
        description="/dev/video0, a camera index (0), a video file path, or rtsp://, http://, udp:// stream URL."
    )
    fps: float | None = Field(default=None, gt=0, description="Cap on frames handed to the model; none = as fast as read.")
    loop: bool = Field(default=False, description="Video files only: start again at the end instead of stopping.")
    width: int | None = Field(default=None, gt=0, description="Requested capture width (devices only).")
    height: int | None = Field(default=None, gt=0, description="Requested capture height (devices only).")
    open_timeout_s: float = Field(default=10.0, gt=0, description="Give up opening after this long, then retry.")
    read_timeout_s: float = Field(default=5.0, gt=0, description="No frame for this long = stream lost; reconnect.")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay; doubles each failure.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay.")
