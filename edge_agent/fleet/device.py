"""The daemon's side of a deployment: the narrow callables ``DeployAgent`` asks for, over the real model
loader, the running pipelines and the broker connection (``DeviceHooks``), and the agent's construction.

- ``config_models`` and the pipeline configs: the daemon's running config, asked at each use (a reload
  (SIGHUP) adds, removes or changes pipelines; a deployment loads with the settings that run now).
- ``load_candidate``: ``ModelLoader.load(pcfg, model_path=...)`` with the manifest beside the stored model: a
  *second* interpreter, on the pipeline's inference CPUs, while the running one keeps going; it must also fit
  what the pipeline's source delivers now (a window's size), so a model that would not fit is refused
  before the swap rather than at it.
- ``run_golden``: ``golden.run_golden`` with the candidate's raw invoke (raw input in, outputs by name).
- ``swap``: ``Pipeline.swap_model`` (between two frames), then the pipeline's invoke latency window starts
  afresh, so the watch's p99 is the new model's alone.
- ``pipeline_health``: state, error and result counters and the invoke p99 from the pipeline's stats.
- ``publish``: the deploy state, retained at QoS 1 straight through the connection (not the results outbox:
  a retained state is only worth its latest value); the latest one is sent again after every reconnect.

None of this runs on the per-frame path: the agent's worker thread calls it, a few times per deployment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.fleet import golden as golden_mod
from edge_agent.fleet.errors import STATS_COUNTERS, DeployRefused
from edge_agent.manifest import Manifest

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, PipelineConfig
    from edge_agent.fleet.agent import DeployAgent
    from edge_agent.fleet.config import FleetConfig
    from edge_agent.model_loader import ModelLoader
    from edge_agent.model_stages import ModelStages
    from edge_agent.pipeline import Pipeline
    from edge_agent.publish.connection import InboundMessage, MqttConnection

log = logging.getLogger(__name__)

SWAP_WAIT_S = 10.0  # a pipeline swaps at its next loop turn; a silent source turns it every read timeout


class DeviceHooks:
    """What ``DeployAgent`` calls, bound to one daemon's loader, pipelines and connection."""

    def __init__(
        self,
        pcfgs: Callable[[], Mapping[str, PipelineConfig]],
        loader: ModelLoader,
        pipelines: Callable[[], Mapping[str, Pipeline]],
        connection: MqttConnection,
    ) -> None:
        self._pcfgs, self.loader, self._pipelines, self.connection = pcfgs, loader, pipelines, connection
        self._last_state: tuple[str, bytes] | None = None
        self._lock = threading.Lock()
        connection.add_on_connect(self._resend_state)

    # -- transport -----------------------------------------------------------------------------------------
    def subscribe(
        self, topic: str, handler: Callable[[str, bytes], None], max_bytes: int
    ) -> Callable[[], None]:
        def deliver(msg: InboundMessage) -> None:
            handler(msg.topic, msg.payload)

        self.connection.subscribe(topic, deliver, qos=1, max_bytes=max_bytes)
        return lambda: self.connection.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            self._last_state = (topic, payload)
        self.connection.publish(topic, payload, qos=1, retain=retain)  # not connected: sent on connect

    def _resend_state(self, connection: MqttConnection) -> None:
        with self._lock:
            last = self._last_state
        if last is not None:
            connection.publish(last[0], last[1], qos=1, retain=True)

    # -- models --------------------------------------------------------------------------------------------
    def config_models(self) -> dict[str, Path]:
        return {name: pcfg.model.path for name, pcfg in self._pcfgs().items()}

    def load_candidate(self, pipeline: str, model_path: Path, manifest: dict[str, Any] | None) -> ModelStages:
        """A second interpreter for ``model_path`` (manifest beside it), fitted to the running pipeline."""
        pcfg = self._pcfgs().get(pipeline)
        if pcfg is None:
            raise _gone(pipeline)
        own = Path(model_path) == pcfg.model.path  # the config's model: its config (manifest path) applies
        stages = self.loader.load(pcfg, None if own else Path(model_path))
        pipe = self._pipelines().get(pipeline)
        if pipe is not None:
            try:
                stages.check_fits(pipe.data_kind, pipe.sample_shape)
            except Exception:
                stages.model.close()
                raise
        return stages

    def run_golden(self, candidate: ModelStages, golden: golden_mod.GoldenSet, manifest: Manifest) -> None:
        model = candidate.model
        by_role = {o.role: o.name for o in model.manifest.outputs}

        def invoke_raw(x: np.ndarray) -> dict[str, np.ndarray]:
            outputs = model.invoke(x)
            return {by_role[role]: value for role, value in outputs.items() if role in by_role}

        try:
            golden_mod.run_golden(golden, manifest, invoke_raw)
        except Exception:
            candidate.model.close()  # never swapped in: nobody else will close it
            raise

    def swap(self, pipeline: str, candidate: ModelStages) -> None:
        pipe = self._pipelines().get(pipeline)
        try:
            if pipe is None:
                raise _gone(pipeline)
            done = pipe.swap_model(candidate)
        except Exception:
            candidate.model.close()
            raise
        if not done.wait(SWAP_WAIT_S):
            log.warning("pipeline %s has not taken the new model after %.0f s", pipeline, SWAP_WAIT_S)
        pipe.stats.latency["invoke"].reset()  # after the swap: old and new invoke times never mix

    def pipeline_health(self, pipeline: str) -> dict[str, Any]:
        pipe = self._pipelines()[pipeline]
        return {
            "state": pipe.state,
            "errors": pipe.stats.errors,
            "results": pipe.stats.results,
            "invoke_p99_ms": pipe.stats.latency["invoke"].percentiles((99.0,))["p99"],
        }


def _gone(pipeline: str) -> DeployRefused:
    return DeployRefused(
        "unknown_pipeline", f"pipeline {pipeline!r} is no longer running here (a reload removed it)"
    )


def make_agent(
    cfg: AgentConfig,
    state_dir: Path,
    loader: ModelLoader,
    pcfgs: Callable[[], Mapping[str, PipelineConfig]],
    pipelines: Callable[[], Mapping[str, Pipeline]],
    connection: MqttConnection,
) -> DeployAgent | None:
    """The daemon's ``DeployAgent`` (its trusted keys read now: a bad key file is a config error), or None
    when remote deployment is off and no deployment was ever stored here: then the agent would have nothing
    to recover, run or serve, and its modules (the deploy worker, HTTP fetching) stay unloaded (~2 MB)."""
    from edge_agent.fleet.signing import load_trusted_keys
    from edge_agent.fleet.store import has_deployments

    keys = load_trusted_keys(cfg.fleet.trusted_keys_dir)
    if not (cfg.fleet.enabled and keys) and not has_deployments(state_dir):
        return None
    from edge_agent.fleet.agent import DeployAgent

    hooks = DeviceHooks(pcfgs, loader, pipelines, connection)
    return DeployAgent(
        cfg.fleet,
        device_id=cfg.device_id,
        state_dir=state_dir,
        config_models=hooks.config_models,
        subscribe=hooks.subscribe,
        publish=hooks.publish,
        load_candidate=hooks.load_candidate,
        run_golden=hooks.run_golden,
        swap=hooks.swap,
        pipeline_health=hooks.pipeline_health,
        topic_prefix=cfg.mqtt.topic_prefix,
        poll_s=0.5,
        trusted_keys=keys,
    )


def idle_stats() -> dict[str, Any]:
    """The stats payload's ``fleet`` object without an agent (remote deployment off): all counters 0."""
    return {"enabled": False, **dict.fromkeys(STATS_COUNTERS, 0)}


def deployed_models(agent: DeployAgent | None) -> dict[str, Path]:
    """``agent.recover()`` (before the pipelines are built), logged: pipeline -> the deployed model file to
    load instead of the config's."""
    if agent is None:
        return {}
    if agent.store.unreadable_record is not None:
        log.error("fleet: %s", agent.store.unreadable_record)
    overrides = agent.recover()
    for name, path in overrides.items():
        log.info("pipeline %s runs the deployed model %s", name, path)
    return overrides


def start_agent(agent: DeployAgent | None, cfg: FleetConfig) -> None:
    """Say once whether remote deployment is on (and why not), then start the agent (a no-op when off)."""
    from edge_agent.fleet.signing import load_trusted_keys, remote_deploy_status

    keys = agent.trusted_keys if agent is not None else load_trusted_keys(cfg.trusted_keys_dir)
    on, why = remote_deploy_status(cfg.enabled, keys, cfg.trusted_keys_dir)
    log.log(logging.INFO if on else logging.WARNING, "%s", why)
    if agent is not None:
        agent.start()
