"""Why a deployment was refused: one exception with a short machine-readable reason code."""

from __future__ import annotations

from edge_agent.errors import EdgeAgentError


class DeployRefused(EdgeAgentError):
    """A deployment, command or model was refused; ``reason`` is a stable code, the message says why.

    Reason codes: malformed, oversized, schema, unknown_key, bad_signature, replayed, wrong_target,
    unknown_pipeline, sha256_mismatch, truncated, too_large, fetch_failed, incompatible, golden_mismatch,
    no_previous, disabled, interrupted, write_failed.
    """

    exit_code = 9

    def __init__(self, reason: str, message: str, subject: tuple[str, int] | None = None):
        super().__init__(message)
        self.reason = reason
        self.subject = subject  # (pipeline, number) of a signed message refused after its signature checked


class Stopping(Exception):
    """The daemon is stopping in the middle of a step: the deployment stays pending, not refused, and the
    next start takes it up again (a stop is not the deployment's fault: not counted as an attempt)."""


REASONS = (
    "malformed", "oversized", "schema", "unknown_key", "bad_signature", "replayed", "wrong_target",
    "unknown_pipeline", "sha256_mismatch", "truncated", "too_large", "fetch_failed", "incompatible",
    "golden_mismatch", "no_previous", "disabled", "interrupted", "write_failed",
)  # fmt: skip

STATS_COUNTERS = ("received", "refused", "swapped", "active", "rolled_back", "duplicates_ignored",
                  "dropped_queue_full", "internal_errors")  # fmt: skip
