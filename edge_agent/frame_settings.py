"""What a pipeline does to each frame around its model, built from its config: the step chain (privacy
masks, the configured steps, the motion gate), the zones, and the mask the evidence store applies again.
Used at start and by a reload that changes any of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from edge_agent.config import PipelineConfig
    from edge_agent.processing.masks import FrameMask
    from edge_agent.processing.steps import StepChain
    from edge_agent.processing.zones import ZoneAssigner


class FrameSettings(NamedTuple):
    steps: StepChain
    zones: ZoneAssigner | None
    mask: FrameMask | None


def frame_config(p: PipelineConfig) -> tuple:
    """The parts of ``p`` that ``build_frame_settings`` reads (a reload rebuilds when they changed)."""
    return (p.masks, p.steps, p.motion, p.zones)


def build_frame_settings(p: PipelineConfig) -> FrameSettings:
    from edge_agent.processing.masks import MasksStep
    from edge_agent.processing.steps import create_pipeline_steps

    steps = create_pipeline_steps(p.masks, p.steps, p.motion)
    mask = next((s.mask for _, s in steps.steps if isinstance(s, MasksStep)), None)
    zones = None
    if p.zones is not None:
        from edge_agent.processing.zones import ZoneAssigner

        zones = ZoneAssigner(p.zones)
    return FrameSettings(steps, zones, mask)
