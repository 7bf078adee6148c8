"""Parse one text line into one sample: CSV (optional header) or a JSON object/array per line.

Shared by the serial, command and file sources. A line that is not a sample raises ``BadLine`` with the
reason; the source counts and logs it and carries on. The number of values is fixed by the first good
line, so a truncated line cannot silently shift the channels of the model input.
"""

from __future__ import annotations

import csv
import json
import math
from typing import Literal

import numpy as np


class BadLine(ValueError):
    """A line that is not a valid sample; the message says why."""


class HeaderMismatch(BadLine):
    """The CSV header lacks a column named in ``fields``: every line will be bad until the config is fixed."""


def _number(token: object) -> float:
    if isinstance(token, bool) or not isinstance(token, int | float | str):
        raise BadLine(f"{token!r} is not a number")
    try:
        value = float(token)
    except ValueError:
        raise BadLine(f"{token!r} is not a number") from None
    if not math.isfinite(value):
        raise BadLine(f"{token!r} is not a finite number")
    return value


class LineParser:
    """``parse(line)`` -> float32 sample (channels,), or None for lines that carry no sample (blank,
    ``#`` comment, CSV header).

    csv: values separated by commas. A first line that is not all numbers is the header; with ``fields``
    the named columns are read, in that order. Without a header, ``fields`` name the columns by position.
    json/jsonl: an object per line (``fields`` = keys in model input order; default: the numeric keys of
    the first object) or an array of numbers.
    """

    def __init__(self, fmt: Literal["csv", "json", "jsonl"], fields: list[str] | None = None) -> None:
        self.format = fmt
        self.fields = fields
        self.channels: int | None = None
        self.header: list[str] | None = None  # csv: column names, when the input has a header
        self._seen_data = False
        self._columns: list[int] | None = None  # csv: indices picked from the header
        self._header_error: str | None = None
        self._keys: list[str] | None = list(fields) if fields else None  # json: keys read, in order

    def parse(self, line: str) -> np.ndarray | None:
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        values = self._parse_csv(text) if self.format == "csv" else self._parse_json(text)
        if values is None:
            return None
        if self.channels is None:
            self.channels = len(values)
        elif len(values) != self.channels:
            raise BadLine(f"{len(values)} values, expected {self.channels}")
        self._seen_data = True
        return np.asarray(values, dtype=np.float32)

    def _parse_csv(self, text: str) -> list[float] | None:
        tokens = [t.strip() for t in next(csv.reader([text]))]
        header_possible = not self._seen_data and self._columns is None and self._header_error is None
        if header_possible and not all(_is_number(t) for t in tokens):
            self._read_header(tokens)
            return None
        if self._header_error:
            raise HeaderMismatch(self._header_error)
        if self._columns is not None:
            if len(tokens) <= max(self._columns):
                raise BadLine(f"{len(tokens)} columns, the header has more")
            tokens = [tokens[i] for i in self._columns]
        elif self.fields and len(tokens) != len(self.fields):
            raise BadLine(f"{len(tokens)} columns, fields names {len(self.fields)}")
        return [_number(t) for t in tokens]

    def _read_header(self, names: list[str]) -> None:
        self.header = names
        if not self.fields:
            self._columns = list(range(len(names)))
            return
        missing = [f for f in self.fields if f not in names]
        if missing:
            self._header_error = f"the csv header {names} has no column {', '.join(missing)} (from 'fields')"
            raise HeaderMismatch(self._header_error)
        self._columns = [names.index(f) for f in self.fields]

    def _parse_json(self, text: str) -> list[float]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadLine(f"not JSON ({exc.msg})") from None
        if isinstance(obj, list):
            return [_number(v) for v in obj]
        if not isinstance(obj, dict):
            raise BadLine("not a JSON object or array")
        if self._keys is None:
            self._keys = [k for k, v in obj.items() if _is_json_number(v)]
            if not self._keys:
                self._keys = None
                raise BadLine("the object has no numeric values")
        missing = [k for k in self._keys if k not in obj]
        if missing:
            raise BadLine(f"no key {', '.join(missing)}")
        return [_number(obj[k]) for k in self._keys]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


MAX_LINE_BYTES = 64 * 1024  # a "line" longer than this is garbage (wrong baud rate, binary data)


class LineSplitter:
    """Bytes in (as they arrive from a port, pipe or file), complete text lines out; a partial line waits
    for the rest. ``overlong`` counts lines dropped for exceeding ``MAX_LINE_BYTES``."""

    def __init__(self) -> None:
        self._buffer = b""
        self.overlong = 0

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE_BYTES:
            self._buffer = b""
            self.overlong += 1
        return [line.decode("utf-8", errors="replace") for line in lines]

    def flush(self) -> str | None:
        """The last line when the input ended without a newline."""
        rest, self._buffer = self._buffer, b""
        return rest.decode("utf-8", errors="replace") if rest.strip() else None

    def reset(self) -> None:
        self._buffer = b""
