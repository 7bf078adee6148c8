"""Per-frame steps (masks, gates, ...): each kind lives in its own module with its config; ``STEPS`` maps
the config's ``type`` to the implementation, imported only when a pipeline uses it. The privacy masks and
the motion gate are configured by a camera pipeline's own ``masks:`` and ``motion:`` keys rather than in
``steps:`` (their place in the chain is fixed: masks first, the gate last; ``create_pipeline_steps``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from edge_agent.processing.steps.base import DataKind, FrameStep, StepConfigBase
from edge_agent.processing.steps.chain import StepChain, Verdict, create_pipeline_steps, create_steps
from edge_agent.processing.steps.every_nth import EveryNthConfig

# One member today; a single-member union needs no discriminator (pydantic refuses one). When a second kind
# comes: Annotated[EveryNthConfig | MotionConfig, Field(discriminator="type")].
StepConfig = Annotated[EveryNthConfig, Field(description="A per-frame step; 'type' selects the kind.")]

# type -> "module:Class" of the implementation (imported lazily: OpenCV only when a step needs it)
STEPS: dict[str, str] = {
    "every_nth": "edge_agent.processing.steps.every_nth:EveryNth",
    "masks": "edge_agent.processing.masks:MasksStep",
    "motion": "edge_agent.processing.steps.motion:MotionGate",
}

__all__ = [
    "STEPS",
    "DataKind",
    "FrameStep",
    "StepChain",
    "StepConfig",
    "StepConfigBase",
    "Verdict",
    "create_pipeline_steps",
    "create_steps",
]
