"""One retry policy for everything that reconnects: cameras, sensor sources, the MQTT client, fleet fetches.

Exponential from ``minimum`` doubling up to ``maximum`` with "equal jitter": each delay is drawn uniformly
from [d/2, d] where d is the exponential step. Why jitter: after a broker restart a whole fleet of devices
sees the disconnect at the same instant; without it they all reconnect in lock-step waves at 1, 2, 4 ... s
and the broker takes every wave at once. With equal jitter the waves spread over half of each step while
no device waits longer than the un-jittered policy would (AWS Architecture Blog, "Exponential Backoff
And Jitter", compares the variants).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Defaults for sources whose config has no reconnect keys of its own (iio, command, file tail).
SOURCE_MIN_S = 0.5
SOURCE_MAX_S = 30.0
# A sensor source whose reader crashed (a bug or a broken library, not a device that went away) starts again
# no sooner than this: a crash loop must not spin.
SOURCE_RESTART_MIN_S = 1.0


@dataclass
class Backoff:
    """Delays for successive retries; ``reset()`` after a success. ``jitter=0`` gives the plain doubling
    sequence (tests that assert exact delays use it)."""

    minimum: float
    maximum: float
    jitter: float = 0.5  # fraction of each step drawn at random: delay in [step * (1 - jitter), step]
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.minimum <= 0:
            raise ValueError("backoff minimum must be > 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be between 0 and 1")
        self.maximum = max(self.maximum, self.minimum)
        self._step = self.minimum

    def next_delay(self) -> float:
        step = self._step
        self._step = min(self._step * 2, self.maximum)
        if self.jitter == 0.0:
            return step
        return step * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self._step = self.minimum
