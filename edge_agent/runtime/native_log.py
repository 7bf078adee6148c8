"""Keep the runtimes' own C++ chatter off the terminal and the journal, and nothing else.

LiteRT and tflite-runtime print ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to
file descriptor 2 from C++ every time an interpreter is made, bypassing Python's logging: a user saw it on
every ``run`` and ``check`` and took it for a problem. There is no Python switch for it, so interpreter
creation runs with fd 2 pointed at a temp file; afterwards the known INFO lines go to our log at DEBUG and
everything else that was written meanwhile (a real runtime warning, or another thread's log line) is
written back to fd 2 unchanged, a few milliseconds late. Nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Lines the runtimes print on every interpreter: information, never a problem.
_ROUTINE = re.compile(
    r"^INFO: (Created TensorFlow Lite (XNNPACK )?delegate for CPU\.|Initialized TensorFlow Lite runtime\.)$"
)
_lock = threading.Lock()  # fd 2 is process-wide: one redirect at a time


def split_routine(text: str) -> tuple[list[str], str]:
    """(routine lines, the rest verbatim) of what the native side wrote."""
    routine: list[str] = []
    rest: list[str] = []
    for line in text.splitlines(keepends=True):
        (routine if _ROUTINE.match(line.rstrip("\r\n")) else rest).append(line)
    return [line.rstrip("\r\n") for line in routine], "".join(rest)


@contextlib.contextmanager
def routine_native_lines_hidden() -> Iterator[None]:
    """Run the body with fd 2 captured; pass through whatever is not a routine runtime line."""
    if os.environ.get("EDGE_AGENT_NATIVE_LOG") == "1":  # for debugging a runtime: show everything
        yield
        return
    with _lock, tempfile.TemporaryFile(mode="w+b") as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            routine, rest = split_routine(sink.read().decode("utf-8", "replace"))
            for line in routine:
                log.debug("runtime: %s", line)
            if rest:
                os.write(2, rest.encode("utf-8", "replace"))
