"""Linux IIO sensor source, read through sysfs (in_<channel>_raw, _scale, _offset)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.backoff import SOURCE_MAX_S, SOURCE_MIN_S
from edge_agent.errors import SourceError
from edge_agent.sources.base import Backoff, SourceConfigBase, absolute
from edge_agent.sources.samples import OVERFLOW_HELP, Overflow, SampleSource
from edge_agent.sources.window import WindowConfig

log = logging.getLogger(__name__)


class IioSourceConfig(SourceConfigBase):
    data_kind = "samples"

    type: Literal["iio"] = "iio"
    device: str = Field(description="Device directory name (iio:device0) or its 'name' attribute (adxl345).")
    channels: list[str] = Field(min_length=1, description="Channel names, e.g. accel_x -> in_accel_x_raw.")
    rate_hz: float = Field(default=100.0, gt=0, le=10000, description="Sampling rate.")
    overflow: Overflow = Field(default="drop_oldest", description=OVERFLOW_HELP)

    def sample_channels(self) -> int | None:
        return len(self.channels)

    sysfs_root: str = Field(
        default="/sys/bus/iio/devices", description="Where IIO devices live (tests point elsewhere)."
    )

    def resolve_paths(self, base: Path) -> None:
        self.sysfs_root = absolute(base, self.sysfs_root)


_CHANNEL_TYPE = re.compile(r"^[a-z]+")


@dataclass(frozen=True)
class IioChannel:
    """One channel's raw file and its conversion: value = (raw + offset) * scale (IIO ABI)."""

    name: str
    raw_path: Path
    scale: float
    offset: float

    def read(self) -> float:
        return (float(self.raw_path.read_text().strip()) + self.offset) * self.scale


def find_device(root: Path, device: str) -> Path:
    """The device directory, by directory name (iio:device0) or by the content of its ``name`` file."""
    if not root.is_dir():
        raise SourceError(
            f"iio sysfs_root: {root} does not exist: this system has no IIO devices; check the sensor's "
            "driver is loaded (lsmod, dmesg) or the device tree overlay is enabled"
        )
    if (root / device / "name").is_file() or any((root / device).glob("in_*_raw")):
        return root / device
    names = {}
    for entry in sorted(root.iterdir()):
        name_file = entry / "name"
        if name_file.is_file():
            names[entry.name] = name_file.read_text().strip()
            if names[entry.name] == device:
                return entry
    found = ", ".join(f"{d} ({n})" for d, n in names.items()) or "none"
    raise SourceError(f"iio device: no IIO device called {device!r} under {root}; found: {found}")


def _read_attr(device_dir: Path, channel: str, attr: str, default: float) -> float:
    """Channel-specific ``in_<channel>_<attr>``, else the shared ``in_<type>_<attr>``, else the default."""
    channel_type = _CHANNEL_TYPE.match(channel)
    candidates = [f"in_{channel}_{attr}"] + ([f"in_{channel_type.group(0)}_{attr}"] if channel_type else [])
    for name in candidates:
        path = device_dir / name
        if path.is_file():
            text = path.read_text().strip()
            try:
                return float(text)
            except ValueError:
                raise SourceError(f"iio: {path} holds {text!r}, not a number: is it an IIO device?") from None
    return default


def open_channels(device_dir: Path, channels: list[str]) -> list[IioChannel]:
    opened = []
    for given in channels:
        name = given.removeprefix("in_").removesuffix("_raw")
        raw = device_dir / f"in_{name}_raw"
        if not raw.is_file():
            available = sorted(p.name[3:-4] for p in device_dir.glob("in_*_raw"))
            raise SourceError(
                f"iio channels: {device_dir} has no channel {given!r} ({raw.name}); "
                f"available: {', '.join(available) or 'none'}"
            )
        scale = _read_attr(device_dir, name, "scale", 1.0)
        offset = _read_attr(device_dir, name, "offset", 0.0)
        opened.append(IioChannel(name, raw, scale, offset))
    return opened


class IioSource(SampleSource):
    """Polls the channels' raw files at ``rate_hz`` (sysfs polling: fine up to a few hundred Hz; faster
    sensors need the IIO buffer interface, not supported here)."""

    def __init__(self, cfg: IioSourceConfig, window: WindowConfig | None = None) -> None:
        super().__init__(f"iio {cfg.device}", window, overflow=cfg.overflow)
        self.cfg = cfg
        self.channels: list[IioChannel] = []

    def _check(self) -> None:
        device_dir = find_device(Path(self.cfg.sysfs_root), self.cfg.device)
        self.channels = open_channels(device_dir, self.cfg.channels)
        log.info(
            "%s: %s, channels %s",
            self.label,
            device_dir,
            ", ".join(f"{c.name} (scale {c.scale:g}, offset {c.offset:g})" for c in self.channels),
        )

    def _run(self) -> None:
        period = 1.0 / self.cfg.rate_hz
        backoff = Backoff(SOURCE_MIN_S, SOURCE_MAX_S)
        next_t = time.monotonic()
        self._set_connected(True)
        while not self._stopping():
            try:
                raw_values = [channel.read() for channel in self.channels]
            except ValueError as exc:  # a torn or garbled read
                self._bad(str(exc), "")
                raw_values = None
            except OSError as exc:  # device unbound, sensor asleep or gone: retry, find it again
                if self._reopen_after(exc, backoff):
                    return
                next_t = time.monotonic()
                continue
            if raw_values is not None:
                backoff.reset()
                self._emit(np.asarray(raw_values, dtype=np.float32))
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                if self._sleep(delay):
                    return
            elif delay < -period:
                next_t = time.monotonic()  # fell behind (loaded machine): resume the rate, no burst

    def _reopen_after(self, exc: OSError, backoff: Backoff) -> bool:
        """Report the failure, wait, and look the device up again; True when stopping."""
        error = f"read failed: {exc}"
        self._set_connected(False, error)
        delay = backoff.next_delay()
        log.warning("%s: %s; retrying in %.1f s", self.label, error, delay)
        if self._sleep(delay):
            return True
        self._count_reconnect()
        try:
            self._check()
        except SourceError as again:
            self._set_connected(False, str(again))
            return False
        self._set_connected(True)
        return False
