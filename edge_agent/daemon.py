"""The daemon's lifecycle, and nothing else: start order, one stop event, signals, reload, sd_notify, stats,
and cleanup in reverse start order.

Start: state dir + outbox -> publisher (connects in the background) -> models -> sources -> pipelines
(one inference thread each) -> READY=1. The main thread then loops, waking when something is due: it
applies signals (the handlers only set flags and wake it), pings the watchdog while every pipeline makes
progress, publishes stats and keeps systemd's STATUS= current. Stop: STOPPING=1, set the stop event
(sources stop, each pipeline finishes the frame in hand), drain the outbox up to ``drain_timeout_s``,
publish ``offline``, close all.

About 650 lines on purpose: the optional services (fleet deployments, Home Assistant discovery, /metrics)
join the same start order, reload and reverse-order cleanup, a reload starts and stops single pipelines in
that same order, and the main loop's waking (signals, ended pipelines, what is due) serves them all, which
is the one thing this module is about; each pipeline's parts are one record (``_Slot``), so a start that
fails half way and a reload's stop close exactly what was made. What each service does lives in its own
package, and which config changes a reload applies how in ``reload_changes.py``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.affinity import CpuPlan, pin_this_thread, plan_cpus, usable_cpus
from edge_agent.config import AgentConfig, PipelineConfig, load_config
from edge_agent.errors import BrokerError, ConfigError, EdgeAgentError, SourceError
from edge_agent.frame_settings import build_frame_settings, frame_config
from edge_agent.model_loader import ModelLoader
from edge_agent.reload_changes import pipeline_restart_reasons, restart_only_changes
from edge_agent.runtime.memory import fix_mmap_threshold, limit_malloc_arenas, trim_heap
from edge_agent.sdnotify import Notifier
from edge_agent.storage_room import storage_notes, unkept_evidence
from edge_agent.watchdog import Watchdog

if TYPE_CHECKING:  # the heavy modules are imported where they are first used
    from edge_agent.fleet.agent import DeployAgent
    from edge_agent.homeassistant.discovery import Discovery
    from edge_agent.metrics import MetricsServer
    from edge_agent.model_stages import ModelStages
    from edge_agent.pipeline import Pipeline
    from edge_agent.publish.mqtt import MqttPublisher
    from edge_agent.publish.outbox import Outbox, SeqCounter
    from edge_agent.sources.base import Source

log = logging.getLogger(__name__)

# The main loop wakes when something is due (a stats report, a watchdog ping), at least every TICK_S, and at
# once for a signal or a pipeline that ended (``_wake``). Every wake of an idle thread costs ~0.1 ms of CPU on
# this project's machine, which a still, motion-gated camera notices (README "Motion, zones and masks").
TICK_S = 1.0
MIN_TICK_S = 0.05
STATUS_EVERY_S = 1.0  # systemd's STATUS= line changes with every frame count: sent at most this often
JOIN_TIMEOUT_S = 10.0  # longest a pipeline may take to finish its frame in hand on stop
# Freed heap memory is given back this often (runtime/memory.py: trim_heap), so what a reload or a deployment
# freed does not stay resident; 0.1-1 ms of the main thread (ctypes releases the GIL meanwhile).
TRIM_EVERY_S = 30.0


@dataclass
class _Slot:
    """One configured pipeline and what is its own, made in start order: a field the start did not reach (a
    later step failed) stays None, and cleanup closes what is there."""

    cfg: PipelineConfig  # as applied: a reload updates what it applied live
    stages: ModelStages  # the model loaded at start (the pipeline closes the ones it swaps out)
    source: Source | None = None
    seq: SeqCounter | None = None
    pipe: Pipeline | None = None
    thread: threading.Thread | None = None


class Daemon:
    """Owns every component of one ``edge-agent run``."""

    def __init__(
        self, cfg: AgentConfig, config_path: Path | None = None, notifier: Notifier | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.outbox: Outbox | None = None
        self.publisher: MqttPublisher | None = None
        self.fleet: DeployAgent | None = None  # remote deployments (edge_agent/fleet/); None while off
        self._fleet_off = False  # started with remote deployment off and nothing deployed: no agent
        self.discovery: Discovery | None = None  # Home Assistant (edge_agent/homeassistant/), opt-in
        self.cpu_plan: CpuPlan | None = None
        self.metrics: MetricsServer | None = None  # /metrics, when configured (edge_agent/metrics.py)
        self._slots: list[_Slot] = []  # one per pipeline, in config order, once every model loaded
        self._stop_requested = False
        self._ended_by_itself = False  # every pipeline finished (finite sources), no stop was asked for
        self.left_in_outbox = 0  # results still undelivered when the daemon stopped
        self.boot: int | None = None  # this start's number (persisted in the outbox database)
        self._reload_requested = False
        # the main loop looks now: a signal, or a pipeline ended. A SimpleQueue, not an Event: its put() is
        # reentrant, so a signal handler that interrupts the main thread inside it cannot deadlock
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._started_mono = time.monotonic()
        self._status = ""
        self._status_sent = -float("inf")
        self._stall_logged: set[str] = set()
        self.watchdog = Watchdog(self.notifier.watchdog_interval_s if cfg.watchdog.enabled else None)
        if not cfg.watchdog.enabled and self.notifier.watchdog_interval_s is not None:
            log.warning(
                "watchdog.enabled is false, but systemd expects a ping every %.0f s (WatchdogSec=) and will "
                "stop the daemon as hung without one: set watchdog.enabled: true, or WatchdogSec=0 with "
                "systemctl edit edge-agent",
                2 * self.notifier.watchdog_interval_s,
            )
        self.loader = ModelLoader(self._inference_cpus)  # start, reload and fleet deployments use it

    @property
    def pipelines(self) -> list[Pipeline]:
        """The pipelines made, in config order; a new list, since other threads read it during a reload."""
        return [s.pipe for s in self._slots if s.pipe is not None]

    # -- signals (handlers set flags and wake the main loop, which acts on them) ---------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True
        self._wake.put(None)

    def request_reload(self, *_: Any) -> None:
        self._reload_requested = True
        self._wake.put(None)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start, serve until stopped or every pipeline ended, stop. Returns the process exit code."""
        try:
            self.start()
        except BaseException:
            self.shutdown(drain=False)
            raise
        try:
            code = self.serve()
        finally:
            self.shutdown(drain=True)
        if code == 0 and self._ended_by_itself and self.left_in_outbox:
            # A run over finite sources is done only when its results are delivered: say so with the
            # documented broker exit code (a stop by signal exits 0: the results wait for the next start).
            log.error(
                "%d result(s) could not be delivered within drain_timeout_s (%.0f s): the broker %s:%d did "
                "not take them; they stay in the outbox and are sent at the next start",
                self.left_in_outbox,
                self.cfg.drain_timeout_s,
                self.cfg.mqtt.host,
                self.cfg.mqtt.port,
            )
            return BrokerError.exit_code
        return code

    def start(self) -> None:
        from edge_agent.fleet.device import deployed_models, make_agent, start_agent
        from edge_agent.metrics import serve_metrics
        from edge_agent.publish.config import linger_s
        from edge_agent.publish.mqtt import MqttPublisher
        from edge_agent.publish.outbox import Outbox, SeqCounter
        from edge_agent.sources.factory import create_source

        cfg = self.cfg
        self._set_status("starting")
        limit_malloc_arenas()  # before any thread starts
        fix_mmap_threshold()
        self._place_threads()
        self.metrics = serve_metrics(cfg.metrics, self)  # first: a port in use fails before anything starts
        state_dir = _prepare_state_dir(cfg.state_dir)
        for note in storage_notes(cfg):
            log.warning("%s", note)
        self.outbox = Outbox(
            cfg.outbox_path, max_messages=cfg.outbox.max_messages, max_bytes=cfg.outbox.max_bytes
        )
        self.boot = self.outbox.next_boot()
        pending = self.outbox.depth()
        if pending:
            log.info("outbox %s holds %d results from before; they are sent first", self.outbox.path, pending)
        linger = linger_s(cfg.mqtt, inference_has_own_cpus=self.cpu_plan is not None)
        if linger:
            log.info("results that flow faster than one per %.0f ms are stored and sent together "
                     "(mqtt.linger_ms; the pipelines share the CPUs)", linger * 1000)  # fmt: skip
        self.publisher = MqttPublisher(cfg.mqtt, cfg.device_id, self.outbox, linger)
        self.publisher.start()

        # The deploy agent finishes what a crash interrupted; a deployed model replaces the config's.
        # It asks for the pipelines' configs at each use: a reload (SIGHUP) adds, removes or changes them.
        pcfgs = lambda: {p.name: p for p in self.cfg.pipelines}  # noqa: E731
        pipes = lambda: {p.name: p for p in self.pipelines}  # noqa: E731 - filled in below
        self.fleet = make_agent(cfg, state_dir, self.loader, pcfgs, pipes, self.publisher.connection)
        self._fleet_off = self.fleet is None
        stages = self.loader.load_all(cfg.pipelines, deployed_models(self.fleet))
        self._slots = [_Slot(p, st) for p, st in zip(cfg.pipelines, stages, strict=True)]
        for slot in self._slots:
            slot.source = create_source(slot.cfg.source, slot.cfg.window)
            slot.source.start(self.stop_event)
        for slot in self._slots:
            slot.seq = SeqCounter(self.outbox, slot.cfg.name)
            slot.pipe = self._make_pipeline(slot.cfg, slot.stages, slot.source, slot.seq)
        for slot in self._slots:
            self._start_thread(slot)
        start_agent(self.fleet, cfg.fleet)  # after the pipelines: it swaps their models
        if cfg.homeassistant.discovery:  # its modules only when asked for
            from edge_agent.homeassistant.discovery import start_discovery

            self.discovery = start_discovery(cfg, self.publisher, lambda: self.pipelines)  # after them too
        names = ", ".join(f"{p.name} ({p.model_info.name} on {p.model_info.backend})" for p in self.pipelines)
        log.info(
            "running %d pipeline(s): %s; broker %s:%d",
            len(self.pipelines),
            names,
            cfg.mqtt.host,
            cfg.mqtt.port,
        )
        self.notifier.ready(self._status_line())

    def _place_threads(self) -> None:
        """Decide the CPU placement and move this (main) thread to the non-inference CPUs before any other
        thread starts, so the publisher's, the sources' and the outbox's threads inherit them."""
        cfg = self.cfg
        self.cpu_plan = plan_cpus(
            cfg.cpu_pinning, [(p.name, p.model.num_threads) for p in cfg.pipelines], usable_cpus()
        )
        if self.cpu_plan is not None and pin_this_thread(self.cpu_plan.other):
            log.info("CPU placement: %s", self.cpu_plan.describe())
        else:
            self.cpu_plan = None

    def _inference_cpus(self, pipeline: str) -> frozenset[int] | None:
        return self.cpu_plan.inference.get(pipeline) if self.cpu_plan is not None else None

    def _start_thread(self, slot: _Slot) -> None:
        assert slot.pipe is not None
        name = f"pipeline-{slot.pipe.name}"
        slot.thread = threading.Thread(target=self._run_pipeline, args=(slot.pipe,), name=name, daemon=True)
        slot.thread.start()

    def _run_pipeline(self, pipe: Pipeline) -> None:
        cpus = self._inference_cpus(pipe.name)
        if cpus:
            pin_this_thread(cpus)
        try:
            pipe.run(self.stop_event)
        finally:
            self._wake.put(None)  # the main loop sees at once that it ended (or failed)

    def serve(self) -> int:
        """The main loop, in the main thread. Returns when asked to stop or when every pipeline ended."""
        next_stats = time.monotonic() + min(self.cfg.mqtt.stats_interval_s, 5.0)  # a first report early
        next_trim = time.monotonic() + TRIM_EVERY_S
        while not self.stop_event.is_set():
            self._sleep_until_due(next_stats)
            if self._stop_requested:
                log.info("stop requested; finishing in-flight results")
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            now = time.monotonic()
            self._check_watchdog(now)
            self._expire_evidence()
            if now >= next_stats:
                self.publish_stats()
                next_stats = now + self.cfg.mqtt.stats_interval_s
            if now >= next_trim:
                trim_heap()
                next_trim = now + TRIM_EVERY_S
            self._set_status(self._status_line())
            failed = [p.name for p in self.pipelines if p.state == "failed"]
            if failed:
                # A pipeline that cannot go on (a broken model, a bug) stops the daemon with its exit code, so
                # systemd's Restart=on-failure gets everything back instead of leaving it half dead.
                log.error("pipeline(s) %s failed; stopping", ", ".join(failed))
                break
            if not self.pipelines:  # a reload's pipelines did not start (a renamed one has no previous)
                log.error("no pipeline runs: the reload's could not start (above); stopping, so that systemd "
                          "restarts the daemon and says so")  # fmt: skip
                return SourceError.exit_code
            if all(p.state in ("finished", "stopped") for p in self.pipelines):
                log.info("every pipeline has ended")
                self._ended_by_itself = True
                break
        failed = [p for p in self.pipelines if p.state == "failed"]
        if failed:
            return max(p.error.exit_code if p.error else 1 for p in failed)
        return 0

    def shutdown(self, drain: bool) -> None:
        """Stop everything in reverse start order, each step in its own try so one failure skips nothing."""
        self.notifier.stopping("stopping: draining the outbox" if drain else "stopping")
        self.stop_event.set()
        if self.fleet is not None:  # started last: stopped first (a deployment in progress resumes at start)
            _quietly(self.fleet.stop, "stopping the deploy agent")
        for slot in self._slots:
            _join(slot.thread)
        drain_until = time.monotonic() + self.cfg.drain_timeout_s
        if drain and self.pipelines:
            if self.publisher is not None:  # the last stats then say what the drain left (0 when it worked)
                _quietly(lambda: self.publisher.flush(self.cfg.drain_timeout_s), "draining the outbox")
            _quietly(self.publish_stats, "publishing the last stats")
        for slot in reversed(self._slots):
            if slot.source is not None:
                _quietly(slot.source.close, f"closing source {slot.source!r}")
        for pipe in self.pipelines:  # after the sources: a camera's thread may run the steps until then
            _quietly(pipe.steps.close, f"closing the steps of {pipe.name}")
        for slot in self._slots:
            _close_model(slot)
        if self.publisher is not None:
            timeout = max(0.0, drain_until - time.monotonic()) if drain else 0.0
            _quietly(lambda: self.publisher.stop(timeout), "stopping the MQTT client")
        for slot in reversed(self._slots):
            if slot.seq is not None:
                _quietly(slot.seq.close, "closing a seq counter")
        if self.outbox is not None:
            depth = _quietly(self.outbox.depth, "reading the outbox depth")
            _quietly(self.outbox.close, "closing the outbox")
            self.left_in_outbox = depth or 0
            if self.pipelines or self.left_in_outbox:  # not after a start-up error that left nothing behind
                log.info("stopped; %s results left in the outbox", depth)
        if self.metrics is not None:  # started first: stopped last
            _quietly(self.metrics.close, "stopping the metrics server")
        self.notifier.close()
        self.publisher = None
        self.outbox = None
        for slot in self._slots:  # the pipelines stay readable (their stats); what was closed is let go
            slot.source = slot.thread = None

    # -- reload (SIGHUP) -------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config and apply it: each pipeline's model (one that fails to load, or does not fit its
        source, keeps the old one running), publish settings and frame steps; a pipeline removed from the
        file is stopped, one added is started, and one whose source, window or evidence changed is started
        again. The outbox and the broker connection are untouched: results already taken are delivered."""
        self.notifier.reloading()
        log.info("reloading %s", self.config_path)
        try:
            new_cfg = load_config(self.config_path) if self.config_path is not None else self.cfg
        except ConfigError as exc:
            log.error("reload: the new config is invalid, keeping the running one: %s", exc)
            self.notifier.ready("reload failed (config invalid); running the previous config")
            return
        self._warn_restart_only_changes(new_cfg)
        by_name = {p.name: p for p in new_cfg.pipelines}
        restarted: dict[str, PipelineConfig] = {}  # name -> the config it ran with, to go back to
        for slot in list(self._slots):
            pcfg = by_name.get(slot.cfg.name)
            reasons = pipeline_restart_reasons(slot.cfg, pcfg) if pcfg is not None else []
            if pcfg is None or reasons:
                why = "removed from the config" if pcfg is None else f"its {', '.join(reasons)} changed"
                if pcfg is not None:
                    restarted[slot.cfg.name] = slot.cfg
                self._stop_pipeline(slot, why)
        swaps = []
        for slot in self._slots:
            pipe, old_pcfg, pcfg = slot.pipe, slot.cfg, by_name[slot.cfg.name]
            assert pipe is not None
            if pipe.state not in ("starting", "running"):
                continue
            pipe.set_publish(pcfg.publish)
            if frame_config(pcfg) != frame_config(old_pcfg):  # masks, steps, motion, zones
                pipe.set_frame_steps(*build_frame_settings(pcfg))
            applied, swapped = self._reload_model(pipe, pcfg)
            swaps += [swapped] if swapped is not None else []
            model_cfg = pcfg.model if applied else old_pcfg.model  # what a deployment then loads with
            frame = dict(zip(("masks", "steps", "motion", "zones"), frame_config(pcfg), strict=True))
            slot.cfg = old_pcfg.model_copy(update={"model": model_cfg, "publish": pcfg.publish, **frame})
        running = {slot.cfg.name for slot in self._slots}
        for pcfg in new_cfg.pipelines:
            if pcfg.name in running or self._add_pipeline(pcfg) or pcfg.name not in restarted:
                continue
            # its new source (or window, evidence) does not start: a reload never leaves it worse off
            log.error("reload: pipeline %s runs its previous config again", pcfg.name)
            self._add_pipeline(restarted[pcfg.name])
        # Applied live: pipelines (added, removed, restarted), models, publish settings, frame steps (masks,
        # motion, zones), drain timeout, stall detection. The rest needs a restart.
        self.cfg = self.cfg.model_copy(
            update={
                "pipelines": [slot.cfg for slot in self._slots],
                "drain_timeout_s": new_cfg.drain_timeout_s,
                "watchdog": new_cfg.watchdog,
            }
        )
        for note in unkept_evidence(self.cfg):  # a pipeline removed (or its evidence turned off) left frames
            log.warning("%s", note)
        if self.discovery is not None:
            self.discovery.reload(new_cfg, swaps)
        self.notifier.ready(self._status_line())

    def _stop_pipeline(self, slot: _Slot, why: str) -> None:
        """Stop one pipeline (a reload removed or restarts it) as a stop would: its frame in hand is finished
        and published, its results stay in the outbox until delivered; then close what was its own."""
        pipe, source, seq = slot.pipe, slot.source, slot.seq
        assert pipe is not None and source is not None and seq is not None
        log.info("reload: stopping pipeline %s (%s)", pipe.name, why)
        pipe.retire()
        _join(slot.thread)
        _quietly(source.close, f"closing source {source!r}")
        _quietly(pipe.steps.close, f"closing the steps of {pipe.name}")
        _close_model(slot)
        _quietly(seq.close, "closing a seq counter")
        self._slots.remove(slot)
        self._stall_logged.discard(pipe.name)
        self.cfg = self.cfg.model_copy(update={"pipelines": [s.cfg for s in self._slots]})

    def _add_pipeline(self, pcfg: PipelineConfig) -> bool:
        """Start a pipeline a reload added (or restarts), as at start: model, source, seq counter, thread.
        When it cannot start: said in the log, nothing of it left open, the others run on; returns False."""
        from edge_agent.publish.outbox import SeqCounter
        from edge_agent.sources.factory import create_source

        assert self.outbox is not None
        made: list[Callable[[], Any]] = []  # closers of what was made, for a failure half way
        try:
            stages = self.loader.load(pcfg, self._deployed_model(pcfg.name))
            made.append(stages.model.close)
            source = create_source(pcfg.source, pcfg.window)
            made.append(source.close)
            source.start(self.stop_event)
            seq = SeqCounter(self.outbox, pcfg.name)
            made.append(seq.close)
            pipe = self._make_pipeline(pcfg, stages, source, seq)
        except Exception as exc:  # a reload never ends the daemon: the others run on
            log.error("reload: pipeline %s not started: %s", pcfg.name, exc)
            for close in reversed(made):
                _quietly(close, f"cleaning up pipeline {pcfg.name}")
            return False
        slot = _Slot(pcfg, stages, source, seq, pipe)
        self._slots.append(slot)
        self._start_thread(slot)
        cpus = self._inference_cpus(pcfg.name)  # a restarted pipeline keeps its planned CPUs
        if cpus:
            where = f"inference on CPU {','.join(map(str, sorted(cpus)))}"
        else:
            where = "unpinned" if self.cpu_plan is None else "on the CPUs of capture and MQTT until a restart"
        log.info("reload: pipeline %s started: %s, %s", pcfg.name, stages.info.describe(), where)
        return True

    def _reload_model(self, pipe: Pipeline, pcfg: PipelineConfig) -> tuple[bool, threading.Event | None]:
        """Load ``pcfg.model`` and swap the pipeline to it; on any error keep the old one, and keep it without
        a load when nothing about it changed (with a deployed model, the config's file may have changed).
        Returns whether ``pcfg.model`` is now the pipeline's (False: the reload failed), and the swap's done
        event (set once the new model runs) or None when no new model was loaded."""
        deployed = self._deployed_model(pipe.name)
        if self.loader.unchanged(pipe.next_stages, pcfg, deployed):
            log.info(
                "reload: pipeline %s keeps %s (settings, file and manifest unchanged)",
                pipe.name,
                pipe.next_stages.info.describe(),
            )
            pipe.reload_applied()
            return True, None
        try:
            stages = self.loader.load(pcfg, deployed)
            try:
                done = pipe.swap_model(stages)
            except EdgeAgentError:
                stages.model.close()
                raise
        except EdgeAgentError as exc:
            old = pipe.model_info.describe()
            pipe.reload_failed(f"the config's model was not taken: {exc}")  # the stats' `model`: what runs
            log.error("reload: pipeline %s keeps its old model %s: %s", pipe.name, old, exc)
            return False, None
        log.info("reload: pipeline %s will run %s", pipe.name, stages.info.describe())
        pipe.reload_applied()
        return True, done

    def _deployed_model(self, pipeline: str) -> Path | None:
        """The model a fleet deployment put in place for ``pipeline`` (a reload keeps it), or None."""
        return self.fleet.store.current_model(pipeline) if self.fleet is not None else None

    def _warn_restart_only_changes(self, new: AgentConfig) -> None:
        changed = restart_only_changes(self.cfg, new)
        if changed:
            log.warning(
                "reload: these changes need a restart (systemctl restart edge-agent) and are not applied: %s",
                ", ".join(changed),
            )

    # -- health ----------------------------------------------------------------------------------------------
    def _sleep_until_due(self, next_stats: float) -> None:
        """Wait until the stats or a watchdog ping are due, at most TICK_S; a signal or an ended pipeline
        wakes it at once."""
        now = time.monotonic()
        ping = self.watchdog.wait_s(now)
        if ping == 0.0 and self.watchdog.interval_s is not None:  # due, held back by a lagging pipeline
            ping = self.watchdog.interval_s / 4  # look again soon: the ping is sent at half WatchdogSec
        wait = min(TICK_S, next_stats - now, TICK_S if ping is None else ping)
        try:
            self._wake.get(timeout=max(MIN_TICK_S, wait))
            while True:
                self._wake.get_nowait()
        except queue.Empty:
            pass

    def _expire_evidence(self) -> None:
        for p in self.pipelines:
            if p.evidence is not None:
                p.evidence.expire()

    def _check_watchdog(self, now: float) -> None:
        stall = self.cfg.watchdog.stall_after_s
        for p in self.pipelines:
            stuck = p.state == "running" and now - p.last_progress > stall
            if stuck and p.name not in self._stall_logged:
                log.error(
                    "pipeline %s has made no progress for %.0f s (stuck in the model?)",
                    p.name,
                    now - p.last_progress,
                )
                self._stall_logged.add(p.name)
            elif not stuck:
                self._stall_logged.discard(p.name)
        if not self.watchdog.due(now):
            return
        lagging = self.watchdog.lagging(self.pipelines)
        if lagging:
            log.debug("watchdog: no ping, no progress in %s", ", ".join(lagging))
            return
        self.notifier.watchdog()
        self.watchdog.pinged(now, self.pipelines)

    def stats_payload(self) -> bytes:
        from edge_agent.publish.payloads import stats_payload

        return stats_payload(
            device=self.cfg.device_id,
            uptime_s=time.monotonic() - self._started_mono,
            pipelines={p.name: {**p.snapshot(), "stalled_s": self._stalled_s(p)} for p in self.pipelines},
            mqtt=self.publisher.stats(),
            outbox=self.outbox.stats(),
            boot=self.boot,
            fleet=self.fleet_stats(),
        )

    def fleet_stats(self) -> dict[str, Any] | None:
        """The stats' ``fleet`` object (all 0 while remote deployment is off); None before the start."""
        if self.fleet is not None:
            return self.fleet.stats()
        if self._fleet_off:
            from edge_agent.fleet.device import idle_stats

            return idle_stats()
        return None

    def _stalled_s(self, p: Pipeline) -> float | None:
        """Seconds without progress of a running pipeline past ``watchdog.stall_after_s``; else None."""
        idle = time.monotonic() - p.last_progress
        return round(idle, 1) if p.state == "running" and idle > self.cfg.watchdog.stall_after_s else None

    def publish_stats(self) -> None:
        if self.publisher is None:
            return
        self.publisher.publish_now(self.publisher.topic("stats"), self.stats_payload(), qos=0)

    def _status_line(self) -> str:
        parts = []
        pub = self.publisher
        if pub is not None:
            parts.append(
                "broker connected" if pub.connected else f"broker down: {pub.last_error or 'connecting'}"
            )
        for p in self.pipelines:
            stalled = self._stalled_s(p)
            source = p.source.stats  # its last error while it is down, not one it has recovered from
            down = None if source.get("connected", True) else source.get("last_error")
            ev = p.evidence  # failing to keep frames: said here too, while it lasts (the why is in the log)
            unkept = f"evidence: {ev.failed} frame(s) not kept" if ev is not None and ev.last_error else None
            err = f"stalled {stalled:.0f} s" if stalled else p.last_error or down or unkept
            parts.append(f"{p.name} {p.state} {p.stats.frames} frames" + (f" ({err})" if err else ""))
        if self.outbox is not None:
            parts.append(f"outbox {self.outbox.depth()}")
        return "; ".join(parts)

    def _set_status(self, text: str) -> None:
        now = time.monotonic()
        if text != self._status and now - self._status_sent >= STATUS_EVERY_S:
            self._status, self._status_sent = text, now
            self.notifier.status(text)

    # -- construction helpers --------------------------------------------------------------------------------
    def _make_pipeline(
        self, p: PipelineConfig, stages: ModelStages, source: Source, seq: SeqCounter
    ) -> Pipeline:
        from edge_agent.pipeline import Pipeline

        evidence = None
        if p.evidence.enabled:
            from edge_agent.evidence import EvidenceStore

            evidence = EvidenceStore(self.cfg.evidence_dir(p), p.evidence)
        return Pipeline(
            name=p.name,
            device_id=self.cfg.device_id,
            topic=self.cfg.result_topic(p),
            source=source,
            stages=stages,
            publisher=self.publisher,
            seq=seq,
            publish=p.publish,
            evidence=evidence,
            boot=self.boot,
            **build_frame_settings(p)._asdict(),
        )


def _prepare_state_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise ConfigError(
            f"state_dir: cannot create {path} ({exc.strerror}); create it or fix state_dir"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"state_dir: {path} is not writable by this user; fix its owner or state_dir")
    return path


def _join(thread: threading.Thread | None) -> None:
    if thread is None:
        return
    thread.join(JOIN_TIMEOUT_S)
    if thread.is_alive():
        log.error("%s did not finish within %.0f s; leaving it behind", thread.name, JOIN_TIMEOUT_S)


def _close_model(slot: _Slot) -> None:
    """Close the pipeline's current model (it closed the ones it swapped out), not while a stuck thread may
    still run it; or, for a pipeline never made (a later start-up step failed), the model loaded for it."""
    if slot.pipe is None:
        _quietly(slot.stages.model.close, f"closing model {slot.stages.model.path}")
    elif slot.thread is None or not slot.thread.is_alive():
        _quietly(slot.pipe.stages.model.close, f"closing the model of {slot.pipe.name}")


def _quietly(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except Exception as exc:  # cleanup goes on: one failing component must not skip the others
        log.warning("%s failed: %s", what, exc)
        return None
