"""CPU placement: each pipeline's inference on CPUs of its own, everything else (capture and decoding,
preprocessing, the outbox, MQTT) on the rest.

Why: on a small board every thread competes for the same few cores. Left to the kernel, the capture, MQTT
and outbox threads keep preempting the inference thread and evicting its caches, and each result comes
later. With the inference thread alone on its core, MobileNetV2-int8 on this 2-core machine went from
0.86 to 0.92 of the bare interpreter loop's throughput, and capture-to-broker p99 from 8.3 to 6.1 ms
(``scripts/bench``).

Pinning only happens when the models' threads leave at least one CPU for the rest; otherwise the kernel
places every thread, as before. Threads inherit the affinity of the thread that creates them, so the
daemon pins its main thread to the "other" CPUs first (everything it starts afterwards follows), loads
each model inside ``pinned(its CPUs)`` (XNNPACK creates its worker threads while loading) and pins each
inference thread when it starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuPlan:
    inference: dict[str, frozenset[int]]  # pipeline name -> its CPUs
    other: frozenset[int]  # capture, outbox, MQTT, the main loop

    def describe(self) -> str:
        parts = [f"pipeline {name} inference on CPU {_cpus(cpus)}" for name, cpus in self.inference.items()]
        return "; ".join(parts) + f"; capture, outbox and MQTT on CPU {_cpus(self.other)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on (systemd's CPUAffinity=, cgroup cpusets and taskset included)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset()


def plan_cpus(
    mode: str, pipelines: Sequence[tuple[str, int | None]], available: frozenset[int]
) -> CpuPlan | None:
    """Give each pipeline ``threads`` CPUs of its own (highest numbers first: CPU 0 usually takes the
    interrupts) when at least one CPU is left for everything else; None = do not pin.
    ``pipelines``: (name, model threads); None threads means the runtime's default, every usable CPU."""
    if mode != "auto" or len(available) < 2:
        return None
    wanted = [(name, threads or len(available)) for name, threads in pipelines]
    if sum(t for _, t in wanted) >= len(available):
        return None
    free = sorted(available, reverse=True)
    inference: dict[str, frozenset[int]] = {}
    for name, threads in wanted:
        inference[name], free = frozenset(free[:threads]), free[threads:]
    return CpuPlan(inference, frozenset(free))


def pin_this_thread(cpus: frozenset[int]) -> bool:
    """Restrict the calling thread (Linux: affinity is per thread) to ``cpus``; False if not allowed."""
    try:
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError) as exc:
        log.warning("cannot pin a thread to CPU %s: %s; the kernel places it", _cpus(cpus), exc)
        return False
    return True


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block on ``cpus`` (threads it starts keep them), then return to the CPUs from before."""
    if not cpus:
        yield
        return
    before = usable_cpus()
    pin_this_thread(cpus)
    try:
        yield
    finally:
        if before:
            pin_this_thread(before)
