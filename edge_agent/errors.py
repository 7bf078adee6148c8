"""One exception tree for the whole project.

The CLI turns an ``EdgeAgentError`` into one line on stderr and its ``exit_code``; nothing below
the CLI calls ``sys.exit``. Every message says what is wrong *and* what to do about it.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every error a user is meant to read."""

    exit_code = 1


class ConfigError(EdgeAgentError):
    """The configuration (file, field or command-line option) is invalid."""

    exit_code = 2


class ModelError(EdgeAgentError):
    """A model file or its manifest is missing, corrupt, or inconsistent."""

    exit_code = 3


class DataError(EdgeAgentError):
    """Input data (calibration, evaluation, samples) has the wrong shape, type or content."""

    exit_code = 4


class StorageFullError(DataError):
    """The state directory's file system has no room (results, seq reservations, the boot number).
    Exit 4 at start: systemd restarts it (RestartSec=), so the device comes back by itself once there is
    room; while running, the results that cannot be stored are dropped and counted instead."""


class SourceError(EdgeAgentError):
    """A camera or sensor source cannot be opened or read."""

    exit_code = 5


class BrokerError(EdgeAgentError):
    """The MQTT broker refused us (bad credentials, bad TLS files)."""

    exit_code = 6


class DependencyError(EdgeAgentError):
    """An optional package is missing; the message names the extra to install."""

    exit_code = 7


class QualityGateError(EdgeAgentError):
    """A quantized model lost more accuracy than the user allowed."""

    exit_code = 8


def missing_extra(package: str, extra: str, exc: BaseException | None = None) -> DependencyError:
    """Build the error for an optional import that failed, naming the pip extra that brings it."""
    detail = f" ({exc})" if exc else ""
    return DependencyError(
        f"{package} is not installed{detail}: install it with  pip install 'edge-agent[{extra}]'"
    )
