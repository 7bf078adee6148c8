"""Worker: the limit. A bare interpreter loop (set_tensor, invoke, get_tensor) on an already preprocessed
input, nothing else: no capture, no preprocessing, no publishing. Whatever edge-agent does end to end can
at best match this.

Standalone on purpose (numpy + one runtime, nothing from edge_agent, no click), so the same file runs in a
separate tflite-runtime venv (Python 3.11, numpy<2). Prints one JSON object on stdout.

    python scripts/bench_limit.py MODEL --runtime litert --threads 1 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time

IMPORTS = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}


def peak_rss_mb() -> float:
    """VmHWM: the peak resident set of this process, as the kernel counted it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runtime", choices=sorted(IMPORTS), default="litert")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0, help="Length of the timed loop.")
    ap.add_argument("--min-iters", type=int, default=50)
    ap.add_argument(
        "--start-at", type=float, default=0.0, help="Begin timing at this time.time() (runs side by side)."
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    import importlib
    from importlib import metadata

    import numpy as np

    module_name, dist = IMPORTS[args.runtime]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(json.dumps({"error": f"{dist} does not import here ({exc})"}))
        sys.exit(3)
    import_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    try:
        interp = module.Interpreter(model_path=args.model, num_threads=args.threads)
        interp.allocate_tensors()
    except Exception as exc:  # the runtime's own error types differ per package
        print(json.dumps({"error": f"{dist} cannot load {args.model}: {exc}"}))
        sys.exit(3)
    load_s = time.perf_counter() - t1
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    rng = np.random.default_rng(0)
    dtype = np.dtype(inp["dtype"])
    if dtype.kind in "iu":  # quantized input: the full range of the integer type
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=inp["shape"], endpoint=True).astype(dtype)
    else:
        x = rng.uniform(-1.0, 1.0, size=inp["shape"]).astype(dtype)
    in_index, out_index = inp["index"], out["index"]

    t2 = time.perf_counter()
    interp.set_tensor(in_index, x)
    interp.invoke()
    interp.get_tensor(out_index)
    first_ms = (time.perf_counter() - t2) * 1000
    for _ in range(10):  # warm caches and XNNPACK's packed weights before timing
        interp.set_tensor(in_index, x)
        interp.invoke()
        interp.get_tensor(out_index)
    rss_mb = peak_rss_mb()  # interpreter + model + invocations, before the timing list below grows

    if args.start_at > time.time():
        time.sleep(args.start_at - time.time())
    lat: list[float] = []
    clock = time.perf_counter
    cpu0 = time.process_time()
    start = clock()
    deadline = start + args.seconds
    while True:
        t = clock()
        interp.set_tensor(in_index, x)
        interp.invoke()
        interp.get_tensor(out_index)
        now = clock()
        lat.append(now - t)
        if now >= deadline and len(lat) >= args.min_iters:
            break
    elapsed = clock() - start
    cpu_ms = (time.process_time() - cpu0) * 1000 / len(lat)
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = None
    print(
        json.dumps(
            {
                "runtime": args.runtime,
                "version": version,
                "threads": args.threads,
                "iters": len(lat),
                "fps": len(lat) / elapsed,
                "p50_ms": percentile(lat, 50) * 1000,
                "p99_ms": percentile(lat, 99) * 1000,
                "mean_ms": elapsed / len(lat) * 1000,
                "first_ms": first_ms,
                "cpu_ms_per_iter": cpu_ms,
                "import_s": import_s,
                "load_s": load_s,
                "rss_mb": rss_mb,
                "python": sys.version.split()[0],
                "numpy": np.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
