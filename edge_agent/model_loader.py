"""Load a pipeline's model and make it ready to run: the one way a model comes in, whether at start, on a
reload (SIGHUP) or from a fleet deployment (``loader.load(pcfg, path)`` then ``pipe.swap_model``).

Loading verifies what can be verified before the model ever sees a frame: the file's sha256 against its
manifest, the manifest against the interpreter's tensors (``runtime.load_model``), then the model's input
against the pipeline's source (``ModelStages``). The interpreter is made on the pipeline's inference CPUs,
because XNNPACK starts its worker threads there and they keep the placement they were born with.

Each ``ModelStages`` remembers what it was loaded from (``LoadedFrom``): a reload whose model settings and
files (model, manifest, labels) are all unchanged keeps the running model instead of building a second
interpreter beside it (a transient of one more model in memory, a warm-up, for a SIGHUP that changed a
publish setting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.affinity import pinned
from edge_agent.errors import ConfigError, ModelError
from edge_agent.manifest import file_sha256, manifest_path_for
from edge_agent.model_stages import ModelStages

if TYPE_CHECKING:
    from edge_agent.config import PipelineConfig
    from edge_agent.runtime.config import ModelConfig

log = logging.getLogger(__name__)

CpuPlacement = Callable[[str], "frozenset[int] | None"]  # pipeline name -> its inference CPUs (None: any)


@dataclass(frozen=True)
class LoadedFrom:
    """What a model was loaded from: its settings, the sha256 of its file and of the other files the load
    read (its manifest, a labels file; None for one that was absent)."""

    settings: ModelConfig
    model_sha256: str
    others_sha256: tuple[str | None, ...]


def _others_sha256(mcfg: ModelConfig) -> tuple[str | None, ...]:
    """sha256 of the model's manifest and labels file (None: absent). Raises OSError if one is unreadable."""
    manifest = Path(mcfg.manifest) if mcfg.manifest else manifest_path_for(Path(mcfg.path).expanduser())
    files = [manifest] + ([Path(mcfg.labels_file)] if mcfg.labels_file else [])
    return tuple(file_sha256(f) if f.is_file() else None for f in files)


def _settings(pcfg: PipelineConfig, model_path: Path | None) -> ModelConfig:
    """The model config to load: the pipeline's, or its settings for a deployed file (manifest beside it)."""
    if model_path is None:
        return pcfg.model
    return pcfg.model.model_copy(update={"path": Path(model_path), "manifest": None})


class ModelLoader:
    """Builds verified ``ModelStages`` for pipeline configs. Holds no models: the caller owns what it gets."""

    def __init__(self, cpus_for: CpuPlacement | None = None) -> None:
        self._cpus_for = cpus_for or (lambda _name: None)

    def load(self, pcfg: PipelineConfig, model_path: Path | None = None) -> ModelStages:
        """The model of ``pcfg`` (or the file at ``model_path``, with the manifest beside it, instead of the
        configured one), loaded, verified and fitted to the pipeline's source. Raises ``ModelError``,
        ``ConfigError`` or ``DependencyError`` with a message naming the pipeline; nothing stays open then."""
        from edge_agent.runtime import load_model

        mcfg = _settings(pcfg, model_path)
        try:  # before the load: a file replaced during it makes the next reload load again
            others_sha256: tuple[str | None, ...] | None = _others_sha256(mcfg)
        except OSError:
            others_sha256 = None  # unreadable: load_model says so
        with pinned(self._cpus_for(pcfg.name)):
            model = load_model(mcfg)
        try:
            stages = ModelStages(model, pcfg.source.data_kind, None)
            if pcfg.window is not None:
                stages.check_window(pcfg.window.size, pcfg.source.sample_channels())
            if others_sha256 is not None:  # the model file's own sha256: load_model hashed it (once)
                stages.loaded_from = LoadedFrom(mcfg, model.sha256, others_sha256)
            return stages
        except (ModelError, ConfigError) as exc:  # model vs source, or bad postprocess options
            model.close()
            raise type(exc)(f"pipeline {pcfg.name}: {exc}") from None

    def unchanged(self, stages: ModelStages, pcfg: PipelineConfig, model_path: Path | None = None) -> bool:
        """True when ``load(pcfg, model_path)`` would load what ``stages`` already runs: the same settings
        and the same bytes in the model file, manifest and labels file. A model with a delegate always loads
        again (a reload is how an Edge TPU plugged in later is tried), as does one whose files cannot be read
        (the load says why)."""
        was = stages.loaded_from
        mcfg = _settings(pcfg, model_path)
        if was is None or mcfg != was.settings or mcfg.delegate != "none":
            return False
        try:
            same_model = file_sha256(Path(mcfg.path).expanduser()) == was.model_sha256
            return same_model and _others_sha256(mcfg) == was.others_sha256
        except OSError:
            return False

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
