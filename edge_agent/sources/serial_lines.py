"""Serial-line sensor source: one CSV or JSON sample per line (pyserial, the 'serial' extra).

A port that is missing or vanishes (USB unplugged) is retried with backoff: the sensor may come back,
and with a stable name (/dev/serial/by-id/...) it does so under the same path.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from pydantic import Field

from edge_agent.extras import PYSERIAL
from edge_agent.sources.base import Backoff, SourceConfigBase
from edge_agent.sources.device_access import EXPLAINED_ERRNOS, explain
from edge_agent.sources.lines import LineParser, LineSplitter
from edge_agent.sources.samples import OVERFLOW_HELP, Overflow, SampleSource
from edge_agent.sources.window import WindowConfig

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.1  # how long one read may block: bounds how fast a stop is noticed


class SerialSourceConfig(SourceConfigBase):
    data_kind = "samples"

    type: Literal["serial"] = "serial"
    port: str = Field(description="/dev/ttyUSB0, /dev/ttyACM0, /dev/serial/by-id/... (stable across replugs)")
    baudrate: int = Field(default=115200, gt=0)
    format: Literal["csv", "json"] = Field(
        default="csv", description="csv: numbers separated by commas; json: an object."
    )
    fields: list[str] | None = Field(
        default=None, description="json: the keys to read, in model input order; csv: names for the columns."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First retry delay when the port is gone.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest retry delay.")
    overflow: Overflow = Field(default="drop_oldest", description=OVERFLOW_HELP)

    def sample_channels(self) -> int | None:
        return len(self.fields) if self.fields else None

    def held_device(self) -> str | None:
        return os.path.realpath(self.port)  # /dev/serial/by-id/... is a link to /dev/ttyUSB0


class SerialSource(SampleSource):
    def __init__(self, cfg: SerialSourceConfig, window: WindowConfig | None = None) -> None:
        super().__init__(f"serial {cfg.port}", window, overflow=cfg.overflow)
        self.cfg = cfg
        self._serial = PYSERIAL.load()
        self._parser = LineParser(cfg.format, cfg.fields)

    def _run(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        first = True
        while not self._stopping():
            if not first:
                self._count_reconnect()
            first = False
            error, opened = self._read_port()
            if error is None:
                return  # stopping
            self._set_connected(False, error)
            if opened:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning("%s: %s; retrying in %.1f s", self.label, error, delay)
            if self._sleep(delay):
                return

    def _read_port(self) -> tuple[str | None, bool]:
        """Read lines until the port fails (-> why) or we stop (-> None); and whether it opened."""
        serial = self._serial
        try:
            port = serial.Serial(self.cfg.port, self.cfg.baudrate, timeout=_READ_TIMEOUT_S)
        except (serial.SerialException, OSError) as exc:
            code = getattr(exc, "errno", None)  # pyserial keeps the open's errno
            if code in EXPLAINED_ERRNOS:
                return f"cannot open: {explain(self.cfg.port, code)}", False
            return f"cannot open: {exc}", False
        self._set_connected(True)
        log.info("%s: opened at %d baud", self.label, self.cfg.baudrate)
        splitter = LineSplitter()  # a line cut by a disconnect is dropped with the old buffer
        try:
            while not self._stopping():
                data = port.read(max(1, port.in_waiting))
                if data:
                    self._feed_lines(splitter, self._parser, data)
            return None, True
        except (serial.SerialException, OSError) as exc:
            return f"port lost: {exc}", True
        finally:
            port.close()
