"""Worker: the best any Python pipeline can do on this machine with this video, to read the daemon's
number against. Two threads and nothing else: a capture thread (OpenCV decode + edge-agent's own
ImagePreprocessor into a free buffer) and an inference thread (copy into the input tensor + invoke +
get_tensor), with ``--pin`` placed on the CPUs as a one-pipeline daemon places its own. No
postprocessing, no payload, no outbox, no MQTT. Also times the decode alone.

    bare loop (limit)  >=  this (decode + preprocess overlapped)  >=  edge-agent end to end

The first gap is the machine (decoding frames costs CPU on the same cores); the second is edge-agent.
With ``--fps`` the capture thread plays the video at that rate, the inference thread takes the newest
frame (older ones are skipped, as the daemon's camera does; a queue would make a slow invoke's delay last
several frames), and each frame is timed from its capture (the packet read, before decoding, where the
daemon times it) to the end of its invoke: the latency bound for the daemon's paced run. A decoder
beside the model slows the invoke (the caches and the memory both use), which the bare loop, with
nothing beside it, does not show.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path

import click
from bench_limit import percentile


def decode_ms(video: str, limit: int) -> tuple[float, int]:
    import cv2

    cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
    n, t0 = 0, time.perf_counter()
    while n < limit:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return (time.perf_counter() - t0) * 1000 / max(n, 1), n


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("video", type=click.Path(exists=True, dir_okay=False))
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--decode-frames", default=600, show_default=True, help="Frames of the decode-only timing.")
@click.option(
    "--seconds", type=float, default=None, help="Time this long, looping the video (default: once through)."
)
@click.option(
    "--pin",
    is_flag=True,
    help="Place the threads as a one-pipeline daemon does: inference on a CPU of its own, the reader on the "
    "rest (not for several at once: each would take the same CPU).",
)
@click.option(
    "--fps", "fps_cap", type=float, default=None, help="Play the video at this rate and time each frame."
)
@click.option("--start-at", type=float, default=0.0, help="Begin at this time.time() (runs side by side).")
def main(
    model: str,
    video: str,
    threads: int,
    decode_frames: int,
    seconds: float | None,
    fps_cap: float | None,
    pin: bool,
    start_at: float,
) -> None:
    """Decode-only speed and the two-thread upper bound for MODEL on VIDEO."""
    import cv2
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edge_agent.affinity import pin_this_thread, pinned, plan_cpus, usable_cpus
    from edge_agent.manifest import load_manifest, manifest_path_for
    from edge_agent.processing.preprocess import ImagePreprocessor

    decode, frames = decode_ms(video, decode_frames) if decode_frames else (None, 0)
    manifest = load_manifest(manifest_path_for(Path(model)), verify_sha256=False)
    spec = manifest.inputs[0]
    pre = ImagePreprocessor(spec, manifest.preprocess)
    # the daemon's CPU placement (edge_agent/affinity.py): inference on CPUs of its own, the reader elsewhere
    plan = plan_cpus("auto", [("ideal", threads)], usable_cpus()) if pin else None
    if plan is not None:
        pin_this_thread(plan.other)  # the reader thread started below inherits it
    with pinned(plan.inference["ideal"] if plan else None):
        interp = Interpreter(model_path=model, num_threads=threads)
        interp.allocate_tensors()
    in_index = interp.get_input_details()[0]["index"]
    out_index = interp.get_output_details()[0]["index"]
    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue(maxsize=2)
    for _ in range(3):
        free.put(np.empty(spec.shape, dtype=np.dtype(spec.dtype)))

    done = threading.Event()

    def capture() -> None:
        cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
        due = time.monotonic()
        while not done.is_set():
            if fps_cap:
                time.sleep(max(0.0, due - time.monotonic()))
                due += 1.0 / fps_cap
            ok = cap.grab()
            if not ok and seconds:  # timed: play the video again
                cap.release()
                cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
                ok = cap.grab()
            captured = time.monotonic()
            ok, frame = cap.retrieve() if ok else (False, None)
            if not ok:
                break
            buf = free.get()
            pre(frame, out=buf)
            ready.put((buf, captured))
        ready.put(None)

    if start_at > time.time():
        time.sleep(start_at - time.time())
    reader = threading.Thread(target=capture, daemon=True)
    reader.start()
    if plan is not None:
        pin_this_thread(plan.inference["ideal"])
    tensor = interp.tensor(in_index)
    n, t0, cpu0 = 0, 0.0, 0.0
    latency_ms: list[float] = []  # capture -> end of invoke
    invoke_ms: list[float] = []
    skipped = 0
    while (item := ready.get()) is not None:
        while fps_cap and not ready.empty():  # paced, like a camera: the newest frame, older ones skipped
            newer = ready.get()
            if newer is None:
                ready.put(None)
                break
            free.put(item[0])
            item, skipped = newer, skipped + 1
        buf, captured = item
        if n == 10:  # the first few include opening the file and warming the interpreter
            t0, cpu0 = time.perf_counter(), time.process_time()
        np.copyto(tensor(), buf)
        free.put(buf)
        t_inv = time.monotonic()
        interp.invoke()
        interp.get_tensor(out_index)
        if n >= 10 and fps_cap:  # at full speed frames queue: their latency would be the queue's
            end = time.monotonic()
            latency_ms.append((end - captured) * 1000)
            invoke_ms.append((end - t_inv) * 1000)
        n += 1
        if seconds and n > 10 and time.perf_counter() - t0 >= seconds:
            done.set()
            break
    fps = (n - 10) / (time.perf_counter() - t0) if n > 20 else 0.0
    cpu_ms = (time.process_time() - cpu0) * 1000 / (n - 10) if n > 20 else None  # both threads
    if seconds:  # let the reader end before the interpreter does (a thread inside OpenCV at exit aborts)
        free.put(np.empty(spec.shape, dtype=np.dtype(spec.dtype)))
        while reader.is_alive():
            try:
                back = ready.get(timeout=0.1)
            except queue.Empty:
                continue
            free.put(back[0] if back is not None else np.empty(spec.shape, dtype=np.dtype(spec.dtype)))
    click.echo(
        json.dumps(
            {
                "decode_ms": decode,
                "decode_frames": frames,
                "ideal_fps": fps,
                "frames": n,
                "cpu_ms_per_frame": cpu_ms,
                "fps_cap": fps_cap,
                "skipped": skipped,
                "pinned": plan is not None,
                # with --fps only (None at full speed): capture -> invoke end, the newest frame taken
                "latency_p50_ms": percentile(latency_ms, 50) if latency_ms else None,
                "latency_p99_ms": percentile(latency_ms, 99) if latency_ms else None,
                "invoke_p50_ms": percentile(invoke_ms, 50) if invoke_ms else None,
                "invoke_p99_ms": percentile(invoke_ms, 99) if invoke_ms else None,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
