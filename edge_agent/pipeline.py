"""One pipeline: source -> preprocess -> invoke -> postprocess -> publish policy -> payload -> publisher.

It is handed its source, model and publisher (no I/O setup of its own) and runs in its own inference
thread. A camera preprocesses each frame for the model on its own reader thread (``Source.set_preparer``)
while the model runs on the previous one, and the publisher stores results on its sender thread, so the
inference thread does little besides invoke. Each loop turn counts as progress, whether a frame was
processed or the source had nothing within the read timeout; the daemon's watchdog pings systemd only
while every running pipeline keeps turning, so an inference stuck in the model or a postprocessor (or a
publisher that stopped taking results) stops the pings.
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
from edge_agent.errors import DataError, EdgeAgentError, ModelError
from edge_agent.publish.payloads import result_payload
from edge_agent.sources.base import Frame, RateLimitedWarning, Source
from edge_agent.stats import PipelineStats

if TYPE_CHECKING:
    from edge_agent.evidence import EvidenceStore
    from edge_agent.runtime.model import LoadedModel

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.2  # longest a pipeline waits for a frame before it counts an idle turn of its loop
MAX_CONSECUTIVE_ERRORS = 100  # frames in a row that fail: the model or source is broken, not one frame


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


class ModelStages:
    """A model with the pre- and postprocessor made for it. Built (and checked against the source's kind of
    data) before it replaces a running model, so a reload that does not fit fails before the swap."""

    def __init__(
        self, model: LoadedModel, data_kind: Literal["image", "samples"], options: dict | None = None
    ):
        from edge_agent.processing.postprocess import create_postprocessor
        from edge_agent.processing.preprocess import ImagePreprocessor, TensorPreprocessor

        self.model = model
        spec = model.input
        manifest = model.manifest
        if data_kind == "image":
            if spec.kind != "image":
                raise ModelError(
                    f"model {model.path}: its input is a tensor {spec.shape}, but the source is a camera; "
                    "use a sensor source, or set model.input_kind: image (with model.preprocess)"
                )
            if manifest.preprocess is None:
                raise ModelError(f"model {model.path}: an image input needs a 'preprocess' section")
            self.image_pre: Any = ImagePreprocessor(spec, manifest.preprocess)
            self._prepare_pre = ImagePreprocessor(spec, manifest.preprocess)
            self.tensor_pre: Any = None
        else:
            if spec.kind == "image":
                raise ModelError(
                    f"model {model.path}: its input is an image {spec.shape}, but the source gives sensor "
                    "samples; use a camera source, or set model.input_kind: tensor"
                )
            self.image_pre = None
            self.tensor_pre = TensorPreprocessor(spec)
        self.post = create_postprocessor(manifest, options or None)
        self.wants_input = manifest.output("reconstruction") is not None
        self.info = {
            "name": manifest.name,
            "sha256": model.sha256,
            "backend": model.backend,
            "delegate": model.delegate,
            "delegate_error": model.delegate_error,
        }

    def prepare(self, image: np.ndarray) -> PreparedInput:
        """The model input for ``image``, in a buffer of its own: run on the source's thread (see
        ``Source.set_preparer``) with a preprocessor of its own, so it never races the inference thread's."""
        t0 = time.monotonic()
        tensor = np.empty(self.model.input.shape, dtype=self._prepare_pre.dtype)
        transform = self._prepare_pre(image, out=tensor)
        return PreparedInput(self, tensor, transform, (time.monotonic() - t0) * 1000.0)

    def run(self, frame: Frame) -> tuple[Any, float, float, float, float]:
        """Preprocess into the input buffer (or copy what the source's thread prepared), invoke,
        postprocess. Returns (result, preprocess_ms, t_invoke_start, t_invoke_end, t_postprocess_end),
        the times monotonic."""
        from edge_agent.processing.postprocess import PostContext

        model = self.model
        t0 = time.monotonic()
        buf = model.input_buffer()
        prepared = frame.prepared
        pre_ms = 0.0
        if self.image_pre is not None:
            if isinstance(prepared, PreparedInput) and prepared.stages is self:
                # a memoryview copy keeps the GIL (np.copyto drops and re-takes it: 10% of the loop's time
                # went to waiting for it again while other threads held it)
                memoryview(buf).cast("B")[:] = memoryview(prepared.tensor).cast("B")
                transform, pre_ms = prepared.transform, prepared.ms
            else:
                transform = self.image_pre(frame.data, out=buf)
            model_input = self.image_pre.to_float(frame.data)[0] if self.wants_input else None
        else:
            transform = None
            model_input = np.asarray(frame.data, dtype=np.float32)
            self.tensor_pre(model_input, out=buf)
        t_pre = time.monotonic()
        outputs = model.invoke()
        t_inv = time.monotonic()
        result = self.post(outputs, PostContext(transform=transform, model_input=model_input))
        return result, pre_ms + (t_pre - t0) * 1000.0, t_pre, t_inv, time.monotonic()


@dataclass(frozen=True)
class PreparedInput:
    """A frame already turned into the input of ``stages``' model (by the source's thread)."""

    stages: ModelStages
    tensor: np.ndarray
    transform: Any
    ms: float  # time it took


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
    ) -> None:
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
        self.state: PipelineState = "starting"
        self.error: EdgeAgentError | None = None
        self.last_error: str | None = None
        self.progress = 0  # loop turns; the watchdog compares it between pings
        self.last_progress = time.monotonic()
        self.last_seq: int | None = None
        self._swap: _Swap | None = None
        self._swap_lock = threading.Lock()
        self._warn = RateLimitedWarning(log)

    # -- control (other threads) -----------------------------------------------------------------------------
    def replace_model(self, stages: ModelStages) -> threading.Event:
        """Run ``stages`` from the next frame on; the old model is closed by the loop. Returns an event that
        is set once the swap happened (or the pipeline ended, in which case the new model is closed)."""
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

    def set_publish(self, cfg: PublishConfig) -> None:
        """New publish settings (reload); unchanged ones keep the policy's memory (on_change, interval)."""
        if cfg != self.policy.cfg:
            self.policy, self.qos = PublishPolicy(cfg), cfg.qos

    def model_info(self) -> dict[str, Any]:
        return dict(self.stages.info)

    def snapshot(self) -> dict[str, Any]:
        """This pipeline's entry in the stats payload."""
        src = self.source.stats
        return self.stats.snapshot(
            source=src,
            model=self.model_info(),
            skipped=src.get("skipped"),
            state=self.state,
            last_error=self.last_error,
        )

    # -- the inference thread --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Process frames until ``stop`` is set or a finite source is finished. The frame in hand when
        ``stop`` is set is still processed and published (finish in-flight results)."""
        self.state = "running"
        consecutive_errors = 0
        self.source.set_preparer(self._prepare, self._min_frame_size())
        try:
            while not stop.is_set():
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
            self._tick()
            with self._swap_lock:
                pending, self._swap = self._swap, None
            if pending is not None:
                pending.stages.model.close()
                pending.done.set()

    def process(self, frame: Frame) -> bool:
        """Run one frame through the model and publish its result if the policy says so. True if published."""
        result, pre_ms, t_pre, t_inv, t_post = self.stages.run(frame)
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
            seq = self.seq.next()
            info = self.stages.info
            payload = result_payload(
                device=self.device_id,
                pipeline=self.name,
                seq=seq,
                model_name=info["name"],
                model_sha256=info["sha256"],
                fields=result.to_fields(),
                latency_ms=latency,
                frame_index=frame.index,
            )
            self.publisher.publish_result(self.topic, payload, self.qos)
            self.last_seq = seq
            if self.evidence is not None and frame.kind == "image" and self.evidence.wants(label, score):
                self.evidence.save(frame.data, seq, label)
        self.stats.frame_done(latency, result=True, published=publish)
        return publish

    def _min_frame_size(self) -> tuple[int, int] | None:
        """The smallest frame the model can use (its input size); None: full frames are needed, for the
        evidence frames (or a sensor model)."""
        pre = self.stages.image_pre
        if pre is None or self.evidence is not None:
            return None
        return (pre.width, pre.height)

    def _prepare(self, image: np.ndarray) -> PreparedInput | None:
        """Runs on the source's thread: preprocess for the model in use now (a frame prepared for a model
        that was swapped out meanwhile is preprocessed again by ``ModelStages.run``)."""
        stages = self.stages
        return stages.prepare(image) if stages.image_pre is not None else None

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
        self.source.set_preparer(self._prepare, self._min_frame_size())  # the new input may be larger
        log.info(
            "pipeline %s: now running model %s (sha256 %s), was %s",
            self.name,
            swap.stages.info["name"],
            swap.stages.info["sha256"][:12],
            old.info["sha256"][:12],
        )
        try:
            old.model.close()
        finally:
            swap.done.set()

    def _fail(self, exc: EdgeAgentError, message: str) -> None:
        self.state = "failed"
        self.error = exc
        self.last_error = message
        log.error("pipeline %s stopped: %s", self.name, message)
