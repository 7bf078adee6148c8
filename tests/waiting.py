"""Polling with a deadline, for tests on a loaded machine: wait for a condition, never sleep to assert."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT_S = 20.0  # generous: two cores shared with TensorFlow conversions


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
