"""Command source: run a program and read one sample per line of its stdout.

The program runs without a shell, in its own session (so stopping it cannot signal the daemon), with its
stderr forwarded to the log. When it exits it is started again with backoff if ``restart``.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from pydantic import Field

from edge_agent.backoff import SOURCE_MAX_S, SOURCE_MIN_S
from edge_agent.errors import SourceError
from edge_agent.sources.base import Backoff, RateLimitedWarning, SourceConfigBase
from edge_agent.sources.lines import LineParser, LineSplitter
from edge_agent.sources.samples import OVERFLOW_HELP, Overflow, SampleSource
from edge_agent.sources.window import WindowConfig

if TYPE_CHECKING:  # imported where a command starts: the other sources' daemons need not keep it
    import subprocess

log = logging.getLogger(__name__)

# A run that lasted this long (or produced samples) was healthy: the next restart starts from the
# shortest delay again.
_HEALTHY_RUN_S = 10.0
_TERMINATE_GRACE_S = 2.0


class CommandSourceConfig(SourceConfigBase):
    data_kind = "samples"

    type: Literal["command"] = "command"
    argv: list[str] = Field(min_length=1, description="Program and arguments (no shell).")
    format: Literal["csv", "json"] = Field(default="csv")
    fields: list[str] | None = Field(default=None, description="json: keys to read, in model input order.")
    restart: bool = Field(default=True, description="Start the command again (with backoff) when it exits.")
    overflow: Overflow = Field(default="block", description=OVERFLOW_HELP)

    def sample_channels(self) -> int | None:
        return len(self.fields) if self.fields else None


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CommandSource(SampleSource):
    def __init__(self, cfg: CommandSourceConfig, window: WindowConfig | None = None) -> None:
        super().__init__(f"command {Path(cfg.argv[0]).name}", window, overflow=cfg.overflow)
        self.cfg = cfg
        self._parser = LineParser(cfg.format, cfg.fields)
        self._warn_stderr = RateLimitedWarning(log, interval_s=10.0, burst=20)

    def _check(self) -> None:
        program = self.cfg.argv[0]
        found = program if os.sep in program else shutil.which(program)
        if found is None or not os.access(found, os.X_OK) or Path(found).is_dir():
            raise SourceError(
                f"command argv: program {program!r} was not found or is not executable: install it, "
                "or give its full path (there is no shell: write ['sh', '-c', '...'] for pipes)"
            )

    def _run(self) -> None:
        backoff = Backoff(SOURCE_MIN_S, SOURCE_MAX_S)
        first = True
        while not self._stopping():
            if not first:
                self._count_reconnect()
            first = False
            started, samples_before = time.monotonic(), self.stats["samples"]
            outcome = self._run_once()
            if outcome is None:
                return  # stopping
            self._set_connected(False, outcome)
            if not self.cfg.restart:
                log.info("%s: %s; not restarting (restart: false)", self.label, outcome)
                return
            if self.stats["samples"] > samples_before or time.monotonic() - started > _HEALTHY_RUN_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning("%s: %s; restarting in %.1f s", self.label, outcome, delay)
            if self._sleep(delay):
                return

    def _run_once(self) -> str | None:
        """Run the program until it exits (-> why) or we stop (-> None)."""
        import subprocess

        try:
            proc = subprocess.Popen(
                self.cfg.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot start: {exc}"
        assert proc.stdout is not None and proc.stderr is not None
        stderr_thread = threading.Thread(
            target=self._log_stderr, args=(proc.stderr,), name=f"{self.label}:stderr", daemon=True
        )
        stderr_thread.start()
        self._set_connected(True)
        log.info("%s: started (pid %d)", self.label, proc.pid)
        splitter = LineSplitter()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                fd = proc.stdout.fileno()
                while True:
                    if self._stopping():
                        return None
                    if not selector.select(0.1):
                        continue
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    self._feed_lines(splitter, self._parser, data)
            self._flush_lines(splitter, self._parser)
            return f"exited with code {proc.wait()}"
        finally:
            _stop_process(proc)
            proc.stdout.close()
            stderr_thread.join(timeout=_TERMINATE_GRACE_S)
            proc.stderr.close()

    def _log_stderr(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    self._warn_stderr("%s stderr: %s", self.label, line)
        except (OSError, ValueError):  # closed while reading: the program is gone
            pass
