"""Load a pipeline's model and make it ready to run: the one way a model comes in, whether at start, on a
reload (SIGHUP) or from a fleet deployment (``loader.load(pcfg, path)`` then ``pipe.swap_model``).

Loading verifies what can be verified before the model ever sees a frame: the file's sha256 against its
manifest, the manifest against the interpreter's tensors (``runtime.load_model``), then the model's input
against the pipeline's source (``ModelStages``). The interpreter is made on the pipeline's inference CPUs,
because XNNPACK starts its worker threads there and they keep the placement they were born with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.affinity import pinned
from edge_agent.errors import ConfigError, ModelError
from edge_agent.model_stages import ModelStages

if TYPE_CHECKING:
    from edge_agent.config import PipelineConfig

log = logging.getLogger(__name__)

CpuPlacement = Callable[[str], "frozenset[int] | None"]  # pipeline name -> its inference CPUs (None: any)


class ModelLoader:
    """Builds verified ``ModelStages`` for pipeline configs. Holds no models: the caller owns what it gets."""

    def __init__(self, cpus_for: CpuPlacement | None = None) -> None:
        self._cpus_for = cpus_for or (lambda _name: None)

    def load(self, pcfg: PipelineConfig, model_path: Path | None = None) -> ModelStages:
        """The model of ``pcfg`` (or the file at ``model_path``, with the manifest beside it, instead of the
        configured one), loaded, verified and fitted to the pipeline's source. Raises ``ModelError``,
        ``ConfigError`` or ``DependencyError`` with a message naming the pipeline; nothing stays open then."""
        from edge_agent.runtime import load_model

        mcfg = pcfg.model
        if model_path is not None:
            mcfg = mcfg.model_copy(update={"path": Path(model_path), "manifest": None})
        with pinned(self._cpus_for(pcfg.name)):
            model = load_model(mcfg)
        try:
            stages = ModelStages(model, pcfg.source.data_kind, None)
            if pcfg.window is not None:
                stages.check_window(pcfg.window.size, pcfg.source.sample_channels())
            return stages
        except (ModelError, ConfigError) as exc:  # model vs source, or bad postprocess options
            model.close()
            raise type(exc)(f"pipeline {pcfg.name}: {exc}") from None

    def load_all(
        self, pcfgs: Sequence[PipelineConfig], model_paths: Mapping[str, Path] | None = None
    ) -> list[ModelStages]:
        """One ``ModelStages`` per config, in order; when one fails, the ones already loaded are closed.
        ``model_paths``: pipeline name -> the model file to load instead of the configured one (a model a
        fleet deployment put in place)."""
        loaded: list[ModelStages] = []
        paths = model_paths or {}
        try:
            for pcfg in pcfgs:
                loaded.append(self.load(pcfg, paths.get(pcfg.name)))
        except BaseException:
            for stages in loaded:
                try:
                    stages.model.close()
                except Exception as exc:  # go on closing the others; the load error is the one raised
                    log.warning("closing model %s failed: %s", stages.model.path, exc)
            raise
        return loaded
