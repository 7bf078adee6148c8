"""One pipeline: source -> steps -> preprocess -> invoke -> postprocess -> publish policy -> payload ->
publisher.

It is handed its source, steps, model and publisher (no I/O setup of its own) and runs in its own inference
thread. A camera runs the steps and preprocesses each frame for the model on its own reader thread
(``Source.set_preparer``: the pipeline's ``_prepare``) while the model runs on the previous one, and the
publisher stores results on its sender thread, so the inference thread does little besides invoke.

Steps come first, always: a frame is preprocessed, inferred or stored as evidence only after the pipeline's
steps kept it, and only the data they returned (a masked copy) is used. ``_prepare`` runs the steps before it
prepares; a frame that comes without the steps' verdict (a sensor window, a frame read before the preparer
was set) has them run on the inference thread; a step that raised drops the frame (fail closed), counted.
The model changes only between two frames, on the inference thread (``swap_model``).

Each loop turn counts as progress, whether a frame was processed or the source had nothing within the read
timeout; the daemon's watchdog pings systemd only while every running pipeline keeps turning, so an
inference stuck in the model or a postprocessor (or a publisher that stopped taking results) stops the
pings.
Raw frames and sample windows never reach a payload: only the postprocessor's ``to_fields()`` does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from edge_agent.config import PublishConfig
from edge_agent.errors import DataError, EdgeAgentError, StorageFullError
from edge_agent.model_stages import ModelInfo, ModelStages, PreparedInput, StageResult
from edge_agent.processing.crop import crop, result_to_frame
from edge_agent.processing.steps import StepChain, Verdict
from edge_agent.publish.payloads import result_payload
from edge_agent.sources.base import Frame, RateLimitedWarning, Source
from edge_agent.stats import PipelineStats

if TYPE_CHECKING:
    from edge_agent.evidence import EvidenceStore
    from edge_agent.processing.masks import FrameMask
    from edge_agent.processing.zones import ZoneAssigner

__all__ = ["ModelInfo", "ModelStages", "Pipeline", "PreparedInput", "PublishPolicy", "StageResult"]

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.2  # longest a pipeline waits for a frame before it counts an idle turn of its loop
MAX_CONSECUTIVE_ERRORS = 100  # frames in a row that fail: the model or source is broken, not one frame
RELOAD_FAILED = "reload failed"  # how last_error starts while a reload's new model could not be taken


class Publisher(Protocol):
    def publish_result(self, topic: str, payload: bytes, qos: int) -> None: ...


class SeqSource(Protocol):
    def next(self) -> int: ...


PipelineState = Literal["starting", "running", "finished", "stopped", "failed"]


class PublishPolicy:
    """Which results are published: ``min_score``, then ``policy`` (every / on_change / interval), then the
    ``max_rate_hz`` cap. on_change compares with the last *published* result, so a slow drift is reported
    once it adds up to more than ``change_delta``."""

    def __init__(self, cfg: PublishConfig) -> None:
        self.cfg = cfg
        self._last_time: float | None = None
        self._last_label: str | None = None
        self._last_score: float | None = None

    def decide(self, label: str | None, score: float | None, now: float) -> bool:
        """True when this result is to be published; records it as the last published one."""
        cfg = self.cfg
        if cfg.min_score is not None and score is not None and score < cfg.min_score:
            return False
        if self._last_time is not None:
            since = now - self._last_time
            if cfg.max_rate_hz is not None and since < 1.0 / cfg.max_rate_hz:
                return False
            if cfg.policy == "interval" and cfg.interval_s is not None and since < cfg.interval_s:
                return False
            if cfg.policy == "on_change" and not self._changed(label, score):
                return False
        self._last_time, self._last_label, self._last_score = now, label, score
        return True

    def _changed(self, label: str | None, score: float | None) -> bool:
        if label != self._last_label:
            return True
        if score is None or self._last_score is None:
            return score is not self._last_score
        return abs(score - self._last_score) > self.cfg.change_delta


@dataclass(frozen=True, slots=True)
class SteppedFrame:
    """What the pipeline's preparer made of an image on the source's thread: the verdict of ``chain`` and,
    when they kept it, the model input prepared from the data they returned (None if preparing failed)."""

    chain: StepChain
    verdict: Verdict
    input: PreparedInput | None = None


@dataclass
class _Swap:
    stages: ModelStages
    done: threading.Event


class Pipeline:
    """The inference loop of one configured pipeline."""

    def __init__(
        self,
        *,
        name: str,
        device_id: str,
        topic: str,
        source: Source,
        stages: ModelStages,
        publisher: Publisher,
        seq: SeqSource,
        publish: PublishConfig,
        stats: PipelineStats | None = None,
        evidence: EvidenceStore | None = None,
        steps: StepChain | None = None,
        boot: int | None = None,
        zones: ZoneAssigner | None = None,
        mask: FrameMask | None = None,
    ) -> None:
        self.data_kind = source.data_kind
        self.boot = boot
        stages.check_fits(self.data_kind, None)
        self.name = name
        self.device_id = device_id
        self.topic = topic
        self.source = source
        self.stages = stages
        self.publisher = publisher
        self.seq = seq
        self.qos = publish.qos
        self.policy = PublishPolicy(publish)
        self.stats = stats or PipelineStats()
        self.evidence = evidence
        self.steps = steps if steps is not None else StepChain()
        self.zones = zones
        self.mask = mask  # the privacy mask, applied again by the evidence store before it writes a JPEG
        self.state: PipelineState = "starting"
        self.error: EdgeAgentError | None = None
        self.last_error: str | None = None
        self.progress = 0  # loop turns; the watchdog compares it between pings
        self.last_progress = time.monotonic()
        self.last_seq: int | None = None
        self._swap: _Swap | None = None
        self._swap_lock = threading.Lock()
        self._retired = threading.Event()  # a reload removed this pipeline (or is restarting it)
        self._sample_shape: tuple[int, ...] | None = None  # of the last window (a swap must fit it)
        self._warn = RateLimitedWarning(log)
        self._warn_prepare = RateLimitedWarning(log)

    # -- control (other threads) -----------------------------------------------------------------------------
    def swap_model(self, stages: ModelStages) -> threading.Event:
        """Run ``stages`` instead of the current model, from the next frame on.

        The inference thread swaps between two frames: the frame in hand finishes on the old model, the
        next one runs on the new, none is dropped or run twice, and seq goes on. Raises ``ModelError`` when
        the new model does not fit the source (its kind of data, a window's size): the current model keeps
        running and ``stages`` stays the caller's to close. Otherwise the pipeline owns ``stages``: the
        swapped-out model is closed by the loop, and the returned event is set once the swap happened (or
        the pipeline ended first, in which case ``stages``' model is closed). A second swap before the next
        frame replaces the first (whose model is closed unused)."""
        stages.check_fits(self.data_kind, self._sample_shape)
        done = threading.Event()
        with self._swap_lock:
            if self.state in ("finished", "stopped", "failed"):
                stages.model.close()
                done.set()
                return done
            previous, self._swap = self._swap, _Swap(stages, done)
        if previous is not None:  # two reloads before one frame: the first new model is never used
            previous.stages.model.close()
            previous.done.set()
        return done

    def retire(self) -> None:
        """End this pipeline alone (a reload removed it, or restarts it with another source): its loop
        finishes the frame in hand, publishes its result and returns, as on a stop; the others run on."""
        self._retired.set()

    def set_publish(self, cfg: PublishConfig) -> None:
        """New publish settings (reload); unchanged ones keep the policy's memory (on_change, interval)."""
        if cfg != self.policy.cfg:
            self.policy, self.qos = PublishPolicy(cfg), cfg.qos

    def set_frame_steps(self, steps: StepChain, zones: ZoneAssigner | None, mask: FrameMask | None) -> None:
        """New steps, zones and masks (reload). The mask is swapped first, so no evidence is written with
        the old one once the new steps run; a frame the old steps already passed is run through the new ones
        (``_stepped`` checks which chain judged it). The old steps hold nothing and are simply dropped."""
        self.mask = mask
        self.zones = zones
        self.steps = steps

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of the last window of samples (None before the first, or for images): a new model must
        take it (``ModelStages.check_fits``)."""
        return self._sample_shape

    @property
    def model_info(self) -> ModelInfo:
        return self.stages.info

    @property
    def next_stages(self) -> ModelStages:
        """The model this pipeline runs from its next frame on: a swap not yet made, or the current one."""
        with self._swap_lock:
            return self._swap.stages if self._swap is not None else self.stages

    def snapshot(self) -> dict[str, Any]:
        """This pipeline's entry in the stats payload."""
        src = self.source.stats
        return self.stats.snapshot(
            source=src,
            model=self.stages.info.as_stats(),
            skipped=src.get("skipped"),
            state=self.state,
            last_error=self.last_error,
            steps=self.steps.stats(),
            reports=self.steps.reports(),
            evidence=None if self.evidence is None else self.evidence.stats(),
        )

    # -- the inference thread --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Process frames until ``stop`` is set or a finite source is finished. The frame in hand when
        ``stop`` is set is still processed and published (finish in-flight results)."""
        self.state = "running"
        consecutive_errors = 0
        self.source.set_preparer(self._prepare, self._min_frame_size(), self)
        try:
            while not (stop.is_set() or self._retired.is_set()):
                self._tick()
                self._apply_swap()
                frame = self.source.read(READ_TIMEOUT_S)
                if frame is None:
                    if self.source.finished:
                        self.state = "finished"
                        log.info("pipeline %s: source finished after %d frames", self.name, self.stats.frames)
                        return
                    continue
                try:
                    self.process(frame)
                    consecutive_errors = 0
                except (DataError, ValueError, RuntimeError) as exc:
                    consecutive_errors += 1
                    self.stats.count(errors=1)
                    self.last_error = f"frame {frame.index}: {exc}"
                    self._warn("pipeline %s: skipped frame %d: %s", self.name, frame.index, exc)
                    if consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                        raise DataError(
                            f"pipeline {self.name}: {consecutive_errors} frames in a row failed; last: {exc}"
                        ) from exc
            self.state = "stopped"
        except EdgeAgentError as exc:
            self._fail(exc, str(exc))
        except Exception as exc:  # a bug or a broken library: keep the message, end this pipeline only
            log.exception("pipeline %s crashed", self.name)
            self._fail(EdgeAgentError(f"pipeline {self.name} crashed: {exc!r}"), repr(exc))
        finally:
            if self.evidence is not None:
                self.evidence.close()  # its last frames written before the pipeline counts as ended
            self._tick()
            with self._swap_lock:
                pending, self._swap = self._swap, None
            if pending is not None:
                pending.stages.model.close()
                pending.done.set()

    def process(self, frame: Frame) -> bool:
        """Run one frame through the steps and the model, and publish its result if the policy says so.
        True if published. Raises DataError when a step failed (the frame is dropped: fail closed)."""
        data, prepared, verdict = self._stepped(frame)
        if data is None:
            return False  # a step skipped it (counted by the chain)
        if frame.kind == "samples":
            self._sample_shape = tuple(np.shape(data))
        model_data, region = crop(data, verdict.region) if verdict.region else (data, None)
        result, pre_ms, t_pre, t_inv, t_post = self.stages.run(model_data, prepared)
        if region is not None:  # the model saw a crop (crop_to_motion): boxes back to the full frame
            result = result_to_frame(result, region)
        if self.zones is not None:
            result = self.zones.apply(result)
        latency = {
            # waiting for the model (in the source's slot), whether or not it was preprocessed meanwhile
            "capture_age": max(0.0, (t_pre - frame.captured_mono) * 1000.0 - pre_ms),
            "preprocess": pre_ms,
            "invoke": (t_inv - t_pre) * 1000.0,
            "postprocess": (t_post - t_inv) * 1000.0,
            "total": (t_post - frame.captured_mono) * 1000.0,
        }
        label, score = result.label, result.score
        publish = self.policy.decide(label, None if score is None else float(score), t_post)
        if publish:
            try:
                seq = self.seq.next()
            except StorageFullError as exc:  # the result is dropped and counted; the pipeline goes on
                self.stats.count(errors=1)
                self._warn("pipeline %s: result dropped: %s", self.name, exc)
                self.stats.frame_done(latency, result=True, published=False)
                return False
            info = self.stages.info
            payload = result_payload(
                device=self.device_id,
                pipeline=self.name,
                seq=seq,
                model_name=info.name,
                model_sha256=info.sha256,
                fields={**result.to_fields(), **(verdict.fields or {})},
                latency_ms=latency,
                frame_index=frame.index,
                boot=self.boot,
            )
            self.publisher.publish_result(self.topic, payload, self.qos)
            self.last_seq = seq
            if self.evidence is not None and frame.kind == "image" and self.evidence.wants(label, score):
                # what the steps returned (masked), not frame.data; the store masks its copy once more and
                # writes it on its own thread
                self.evidence.keep(data, seq, label, mask=self.mask)
        self.stats.frame_done(latency, result=True, published=publish)
        return publish

    def _min_frame_size(self) -> tuple[int, int] | None:
        """The smallest frame the model can use (its input size); None: full frames are needed, for the
        evidence frames (or a sensor model)."""
        pre = self.stages.image_pre
        if pre is None or self.evidence is not None:
            return None
        return (pre.width, pre.height)

    def _stepped(self, frame: Frame) -> tuple[np.ndarray | None, PreparedInput | None, Verdict]:
        """(data to infer, its prepared input or None, the steps' verdict: fields they add to the result, the
        region the model is to see) after the steps; data None when they skipped it. Uses the verdict the
        source's thread recorded, or runs the steps here (inference thread)."""
        made = frame.prepared
        if isinstance(made, SteppedFrame) and made.chain is self.steps:
            verdict, prepared = made.verdict, made.input
        else:
            verdict, prepared = self.steps.run(frame.data), None
        if verdict.error is not None:
            raise DataError(f"step {verdict.step} failed, frame dropped (fail closed): {verdict.error}")
        return verdict.data, prepared, verdict

    # -- the source's FrameGate: asked before it decodes a frame (a still scene's motion gate) ---------------
    def skip_unseen(self) -> bool:
        return self.steps.skip_unseen()

    def glance_width(self) -> int | None:
        return self.steps.glance_width()

    def glance(self, small: np.ndarray) -> bool:
        return self.steps.glance(small)

    def _prepare(self, image: np.ndarray) -> SteppedFrame:
        """Runs on the source's thread: the steps, then (if they kept the frame) preprocessing of what they
        returned for the model in use now (a frame prepared for a model that was swapped out meanwhile is
        preprocessed again by ``ModelStages.run``). Never raises: a step's failure is in the verdict, a
        preprocessing failure is counted and logged and the inference thread prepares the frame itself."""
        verdict = self.steps.run(image)
        stages = self.stages
        prepared = None
        if verdict.data is not None and stages.image_pre is not None:
            try:
                data = crop(verdict.data, verdict.region)[0] if verdict.region else verdict.data
                prepared = stages.prepare(data)
            except Exception as exc:
                self.stats.count(prepare_errors=1)
                self._warn_prepare(
                    "pipeline %s: preparing a frame on the source's thread failed (%r); preparing it on the "
                    "inference thread instead",
                    self.name,
                    exc,
                )
        return SteppedFrame(self.steps, verdict, prepared)

    def _tick(self) -> None:
        self.progress += 1
        self.last_progress = time.monotonic()

    def _apply_swap(self) -> None:
        if self._swap is None:
            return
        with self._swap_lock:
            swap, self._swap = self._swap, None
        if swap is None:
            return
        old, self.stages = self.stages, swap.stages
        # the new input may be larger
        self.source.set_preparer(self._prepare, self._min_frame_size(), self)
        log.info(
            "pipeline %s: now running model %s, was %s",
            self.name,
            swap.stages.info.describe(),
            old.info.describe(),
        )
        try:
            old.model.close()
        finally:
            swap.done.set()

    def reload_failed(self, message: str) -> None:
        """A reload could not give this pipeline its new model; the old one runs on (stats say so). The
        message names what failed, not the model that runs: a deployment may swap that before a reload
        succeeds."""
        self.last_error = f"{RELOAD_FAILED}, {message}"

    def reload_applied(self) -> None:
        """A reload gave this pipeline the model its config names: an earlier reload's failure is over and
        stops showing in the stats and the status line (a frame's error stays: it is not about the config)."""
        error = self.last_error
        if error is not None and error.startswith(RELOAD_FAILED):
            self.last_error = None

    def _fail(self, exc: EdgeAgentError, message: str) -> None:
        self.state = "failed"
        self.error = exc
        self.last_error = message
        log.error("pipeline %s stopped: %s", self.name, message)
