"""``homeassistant:`` in the daemon's config: opt-in MQTT discovery for Home Assistant."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class HomeAssistantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    discovery: bool = Field(
        default=False,
        description="Announce this device and its pipelines to Home Assistant (MQTT discovery, retained).",
    )
    prefix: str = Field(
        default="homeassistant",
        description="Home Assistant's discovery prefix (its MQTT integration's setting); its birth message "
        "on <prefix>/status makes the daemon announce again.",
    )
    detection_classes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Detection pipelines: pipeline name -> the classes that get a count sensor and a "
        "'<class> detected' binary sensor. Default: the postprocessor's 'classes' filter when set, else the "
        "model's first max_detection_classes labels.",
    )
    max_detection_classes: int = Field(
        default=3, ge=1, le=50, description="Classes announced per detection pipeline by default."
    )
    off_delay_s: int = Field(
        default=10,
        ge=1,
        le=86_400,
        description="A '<class> detected' binary sensor turns off this many seconds after the last result "
        "that had the class.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if not v or v.strip("/") != v or any(c in v for c in "#+"):
            raise ValueError("prefix must be non-empty, not start or end with '/', and contain no '#' or '+'")
        return v

    @field_validator("detection_classes")
    @classmethod
    def _classes_not_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, classes in v.items():
            if not classes or any(not c for c in classes):
                raise ValueError(f"'{name}': give at least one class, each a non-empty label")
        return v
