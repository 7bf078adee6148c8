"""Keep TensorFlow's noise out of the CLI's output.

TensorFlow and LiteRT write from C++ straight to file descriptors 1 and 2 ("Saved artifact at ...",
INFO lines, the quantized-input statistics warning), bypassing ``sys.stdout``; so besides the env
variable and the Python loggers, conversion runs with fds 1 and 2 pointed at a temp file. What was
captured is kept so that an error can quote it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import TextIO

_verbose = False
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3", "ABSL_MIN_LOG_LEVEL": "3"}
_env_set_by_us: set[str] = set()


def set_verbose(verbose: bool) -> None:
    """Called by the CLI before anything imports TensorFlow (the env variables only work before)."""
    global _verbose
    _verbose = verbose
    if verbose:
        for key in _env_set_by_us:
            os.environ.pop(key, None)
        _env_set_by_us.clear()
        warnings.resetwarnings()
        return
    for key, value in _QUIET_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _env_set_by_us.add(key)
    warnings.filterwarnings("ignore")


def is_verbose() -> bool:
    return _verbose


def import_tensorflow() -> ModuleType:
    """Import TensorFlow with its loggers silenced (unless verbose); DependencyError when missing."""
    from edge_agent.errors import missing_extra

    set_verbose(_verbose)
    try:
        with captured_fds():
            import tensorflow as tf
    except ImportError as exc:
        raise missing_extra("tensorflow", "convert", exc) from None
    if not _verbose:
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
        with contextlib.suppress(ImportError):
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
    return tf


class Capture:
    """What the C++ side wrote while the fds were redirected, and the real stderr for progress bars."""

    def __init__(self, stderr: TextIO) -> None:
        self.stderr = stderr
        self.text = ""


@contextlib.contextmanager
def captured_fds() -> Iterator[Capture]:
    """Point fds 1 and 2 at a temp file for the duration (a no-op when verbose)."""
    if _verbose:
        yield Capture(sys.stderr)
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    real_stderr = io.TextIOWrapper(os.fdopen(os.dup(saved_err), "wb", buffering=0), write_through=True)
    capture = Capture(real_stderr)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield capture
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            with contextlib.suppress(Exception):
                real_stderr.close()
            sink.seek(0)
            capture.text = sink.read().decode("utf-8", "replace")
