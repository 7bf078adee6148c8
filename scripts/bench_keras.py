"""Worker: what a user without edge-agent runs on the device. The same Keras model, called in TensorFlow
as ``model(x, training=False)`` (eager) and inside ``tf.function``, in its own process so that the RSS
and import time it reports are TensorFlow's own. Prints one JSON object on stdout.

    python scripts/bench_keras.py MODEL.keras --threads 1 --seconds 10
"""

from __future__ import annotations

import json
import os
import sys
import time

import click
from bench_limit import peak_rss_mb, percentile


def timed_calls(fn, x, seconds: float, min_calls: int) -> list[float]:
    fn(x)  # first call traces (tf.function) / builds (eager): not part of steady state
    fn(x)
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(lat) < min_calls or time.perf_counter() < deadline:
        t = time.perf_counter()
        y = fn(x)
        _ = y.numpy()  # the result on the host, like get_tensor in the bare loop
        lat.append(time.perf_counter() - t)
    return lat


@click.command()
@click.argument("model_path")
@click.option(
    "--threads", default=1, show_default=True, help="TensorFlow intra-op threads (= the runtime's)."
)
@click.option("--seconds", default=10.0, show_default=True, help="Timed length of each of the two loops.")
@click.option("--min-calls", default=5, show_default=True)
def main(model_path: str, threads: int, seconds: float, min_calls: int) -> None:
    """Time MODEL_PATH (.keras) in TensorFlow: import, load, eager call, tf.function call, peak RSS."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    import_s = time.perf_counter() - t0
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    t1 = time.perf_counter()
    model = keras.models.load_model(model_path, compile=False)
    load_s = time.perf_counter() - t1
    shape = [1, *model.input_shape[1:]]
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))

    eager = timed_calls(lambda v: model(v, training=False), x, seconds, min_calls)
    graph_fn = tf.function(lambda v: model(v, training=False))
    graph = timed_calls(graph_fn, x, seconds, min_calls)
    click.echo(
        json.dumps(
            {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "threads": threads,
                "import_s": import_s,
                "load_s": load_s,
                "eager_ms": percentile(eager, 50) * 1000,
                "eager_p99_ms": percentile(eager, 99) * 1000,
                "eager_calls": len(eager),
                "function_ms": percentile(graph, 50) * 1000,
                "function_p99_ms": percentile(graph, 99) * 1000,
                "function_calls": len(graph),
                "rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
