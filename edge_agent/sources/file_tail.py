"""File source: samples from a CSV or JSONL file (or stdin with '-'), optionally followed like tail -f.

The file is read as fast as the model takes windows (or paced at ``rate_hz``) and, with the default
``overflow: block``, nothing is dropped: the file is the buffer, so a replay is deterministic. With
``overflow: drop_oldest`` windows the model cannot keep up with are dropped as for a live sensor.
"""

from __future__ import annotations

import logging
import os
import selectors
import sys
import time
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from pydantic import Field

from edge_agent.errors import SourceError
from edge_agent.sources.base import SourceConfigBase, absolute
from edge_agent.sources.lines import BadLine, HeaderMismatch, LineParser, LineSplitter
from edge_agent.sources.samples import OVERFLOW_HELP, Overflow, SampleSource
from edge_agent.sources.window import WindowConfig

log = logging.getLogger(__name__)

_FOLLOW_POLL_S = 0.2
_CHUNK = 65536


class FileSourceConfig(SourceConfigBase):
    data_kind = "samples"

    type: Literal["file"] = "file"
    path: str = Field(description="A CSV or JSONL file, or '-' for stdin.")
    format: Literal["csv", "jsonl"] = Field(default="csv")
    fields: list[str] | None = Field(
        default=None, description="Columns (csv header names) or keys (jsonl) to read."
    )
    follow: bool = Field(
        default=False,
        description="Keep reading lines appended to the file, like tail -f (from its start; "
        "survives truncation and rotation).",
    )
    rate_hz: float | None = Field(
        default=None, gt=0, description="Replay at this sample rate; none = as fast as read."
    )
    overflow: Overflow = Field(default="block", description=OVERFLOW_HELP)

    def sample_channels(self) -> int | None:
        return len(self.fields) if self.fields else None

    def resolve_paths(self, base: Path) -> None:
        if self.path != "-":
            self.path = absolute(base, self.path)


class FileSource(SampleSource):
    def __init__(self, cfg: FileSourceConfig, window: WindowConfig | None = None) -> None:
        super().__init__(f"file {cfg.path}", window, overflow=cfg.overflow)
        self.cfg = cfg
        self.path = None if cfg.path == "-" else Path(cfg.path).expanduser()
        self._period = 1.0 / cfg.rate_hz if cfg.rate_hz else 0.0
        self._next_t = 0.0

    def _new_parser(self) -> LineParser:
        return LineParser(self.cfg.format, self.cfg.fields)

    def _check(self) -> None:
        if self.path is None:
            return
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise SourceError(f"file path: {self.path} {what}: fix the path (or use '-' to read stdin)")
        if self.cfg.format == "csv" and self.cfg.fields:
            self._check_header()

    def _check_header(self) -> None:
        """fields that the CSV header does not have: every line would be bad, so say so at start."""
        assert self.path is not None
        parser = self._new_parser()
        with self.path.open("rb") as f:
            for raw in f:
                try:
                    sample = parser.parse(raw.decode("utf-8", errors="replace"))
                except HeaderMismatch as exc:
                    raise SourceError(f"file fields: in {self.path}, {exc}") from None
                except BadLine:
                    return  # an ordinary bad line: counted when it is read
                if sample is not None or parser.header is not None:
                    return

    def _emit(self, sample: np.ndarray) -> None:
        if self._period:  # replay pacing: one sample per period, no burst after a stall
            now = time.monotonic()
            if self._next_t > now:
                self._sleep(self._next_t - now)
            self._next_t = max(self._next_t + self._period, time.monotonic() - self._period)
        super()._emit(sample)

    def _run(self) -> None:
        self._next_t = time.monotonic()
        self._set_connected(True)
        if self.path is None:
            self._read_stream(sys.stdin.buffer)
        else:
            self._read_file(self.path)

    def _read_stream(self, stream: BinaryIO) -> None:
        """stdin: a pipe; ends at EOF."""
        parser, splitter = self._new_parser(), LineSplitter()
        fd = stream.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while not self._stopping():
                if not selector.select(0.1):
                    continue
                data = os.read(fd, _CHUNK)
                if not data:
                    break
                self._feed_lines(splitter, parser, data)
        if not self._stopping():
            self._flush_lines(splitter, parser)

    def _read_file(self, path: Path) -> None:
        parser, splitter = self._new_parser(), LineSplitter()
        f = path.open("rb")
        try:
            while not self._stopping():
                data = f.read(_CHUNK)
                if data:
                    self._feed_lines(splitter, parser, data)
                    continue
                if not self.cfg.follow:
                    self._flush_lines(splitter, parser)
                    return
                if self._sleep(_FOLLOW_POLL_S):
                    return
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    continue  # rotated away; the new file may appear
                if current.st_ino != os.fstat(f.fileno()).st_ino:
                    # rotated: finish the old file, then start the new one from its beginning
                    self._drain(f, splitter, parser)
                    f.close()
                    f = path.open("rb")
                    parser, splitter = self._new_parser(), LineSplitter()
                    log.info("%s: file was replaced (rotated); reading the new one", self.label)
                elif current.st_size < f.tell():
                    f.seek(0)
                    parser, splitter = self._new_parser(), LineSplitter()  # it may start with a header again
                    log.info("%s: file was truncated; reading again from its start", self.label)
        finally:
            f.close()

    def _drain(self, f: BinaryIO, splitter: LineSplitter, parser: LineParser) -> None:
        while data := f.read(_CHUNK):
            self._feed_lines(splitter, parser, data)
        self._flush_lines(splitter, parser)
