"""Measure one model on one runtime and thread count, like TFLite's benchmark_model: init, first
inference, warm-up, steady state, the pre/postprocessing stages, and the process's peak RSS.

``edge-agent bench`` runs each configuration in a fresh process (``python -m edge_agent.runtime.benchmark
'<json>'``) so peak RSS belongs to that configuration alone and one runtime's imports (TensorFlow's
hundreds of MB) never inflate another's figures.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.manifest import manifest_path_for

FRAME_WIDTH, FRAME_HEIGHT = 640, 480  # the camera frame the preprocess row starts from


@dataclass(frozen=True)
class Timing:
    count: int
    min_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(
            count=int(ms.size),
            min_ms=float(ms.min()),
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            max_ms=float(ms.max()),
            mean_ms=float(ms.mean()),
        )


@dataclass(frozen=True)
class BenchSpec:
    model: str
    runtime: str = "auto"
    threads: int = 1
    warmup: int = 5
    count: int = 100
    duration: float | None = None  # seconds of steady state instead of ``count`` runs
    task: str | None = None  # for a plain .tflite without manifest
    xnnpack: bool = True


@dataclass
class BenchRun:
    runtime: str
    runtime_version: str
    threads: int
    delegate: str | None
    init_ms: float
    first_ms: float
    warmup: Timing
    steady: Timing
    peak_rss_mb: float
    preprocess: Timing | None = None
    preprocess_what: str | None = None
    postprocess: Timing | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _repeat(fn: Callable[[], Any], count: int, duration: float | None) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + duration if duration else None
    while (len(times) < count) if deadline is None else (time.perf_counter() < deadline or not times):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _model_config(spec: BenchSpec) -> Any:
    from edge_agent.runtime.config import ModelConfig

    path = Path(spec.model)
    fields: dict[str, Any] = {"path": path, "runtime": spec.runtime, "num_threads": spec.threads}
    if not manifest_path_for(path).is_file():
        if spec.task:
            fields["task"] = spec.task
        else:  # timing needs no meaning: call the first output 'values' and let the rest be
            from edge_agent.runtime.backends import select_runtime
            from edge_agent.runtime.model import open_interpreter

            it = open_interpreter(select_runtime(spec.runtime), path, num_threads=1, delegates=[])
            first = it.get_output_details()[0]["name"]
            fields.update(task="regression", output_roles={first: "values"}, input_kind="tensor")
    return ModelConfig(**fields)


def measure(spec: BenchSpec) -> BenchRun:
    """Benchmark in this process (``edge-agent bench`` calls it through a fresh worker process)."""
    from edge_agent.runtime.model import load_model

    cfg = _model_config(spec)
    t0 = time.perf_counter()
    model = load_model(cfg, xnnpack=spec.xnnpack)
    first = model.first_invoke_ms / 1e3  # load_model runs the first inference (it settles the arena)
    init = time.perf_counter() - t0 - first

    outputs = model.invoke()
    warm = _repeat(model.invoke, max(1, spec.warmup), None)
    steady = _repeat(model.invoke, spec.count, spec.duration)

    rss = peak_rss_mb()  # model + runtime only: before OpenCV is imported for the preprocess row

    rng = np.random.default_rng(0)
    buf = model.input_buffer()
    pre_times: list[float] | None = None
    what = None
    if model.input.kind == "image" and model.manifest.preprocess is not None:
        import cv2

        from edge_agent.processing.preprocess import ImagePreprocessor

        cv2.setNumThreads(spec.threads)  # the preprocessing shares the cores the interpreter was given
        pre = ImagePreprocessor(model.input, model.manifest.preprocess)
        # a smooth synthetic camera frame (a random-noise frame resizes the same but looks nothing like one)
        small = rng.integers(0, 256, (FRAME_HEIGHT // 16, FRAME_WIDTH // 16, 3), dtype=np.uint8)
        frame = cv2.resize(small, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_CUBIC)
        pre(frame, out=buf)
        pre_times = _repeat(lambda: pre(frame, out=buf), max(spec.count, 50), None)
        what = f"{FRAME_WIDTH}x{FRAME_HEIGHT} BGR frame -> {model.input.shape} {model.input.dtype}"
    else:
        from edge_agent.processing.preprocess import TensorPreprocessor

        tp = TensorPreprocessor(model.input)
        window = rng.random(model.input.shape).astype(np.float32)
        tp(window, out=buf)
        pre_times = _repeat(lambda: tp(window, out=buf), max(spec.count, 50), None)
        what = f"float window -> {model.input.shape} {model.input.dtype}"

    post_times = None
    extra: dict[str, Any] = {"peak_rss_with_processing_mb": None}
    try:
        from edge_agent.processing.postprocess import PostContext, create_postprocessor

        post = create_postprocessor(model.manifest)
        ctx = PostContext(model_input=model.input_buffer().copy())
        post(outputs, ctx)
        post_times = _repeat(lambda: post(outputs, ctx), max(spec.count, 50), None)
    except EdgeAgentError as exc:  # e.g. an anomaly model without a threshold: time the rest
        extra["postprocess_error"] = str(exc)
    extra["peak_rss_with_processing_mb"] = peak_rss_mb()
    run = BenchRun(
        runtime=model.backend,
        runtime_version=model.runtime_version,
        threads=model.num_threads,
        delegate=model.delegate,
        init_ms=init * 1e3,
        first_ms=first * 1e3,
        warmup=Timing.of(warm),
        steady=Timing.of(steady),
        peak_rss_mb=rss,
        preprocess=Timing.of(pre_times) if pre_times else None,
        preprocess_what=what,
        postprocess=Timing.of(post_times) if post_times else None,
        extra=extra,
    )
    model.close()
    return run


def run_from_dict(data: dict[str, Any]) -> BenchRun:
    run = BenchRun(
        **{k: v for k, v in data.items() if k not in ("warmup", "steady", "preprocess", "postprocess")},
        warmup=Timing(**data["warmup"]),
        steady=Timing(**data["steady"]),
    )
    run.preprocess = Timing(**data["preprocess"]) if data.get("preprocess") else None
    run.postprocess = Timing(**data["postprocess"]) if data.get("postprocess") else None
    return run


def _worker(argv: list[str]) -> int:
    spec = BenchSpec(**json.loads(argv[0]))
    try:
        run = measure(spec)
    except EdgeAgentError as exc:
        print(json.dumps({"error": str(exc), "error_type": type(exc).__name__}))
        return exc.exit_code
    print(json.dumps(asdict(run)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
