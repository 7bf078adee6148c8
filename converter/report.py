"""Plain-text tables for the terminal: aligned columns, numbers formatted for reading, not parsing
(``--json`` and the manifest hold the exact values)."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=False)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *[line(r) for r in cells[1:]]])


def size(n: int | None) -> str:
    if n is None:
        return ""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.2f}%"


def ms(x: float | None) -> str:
    return "" if x is None else f"{x:.3f} ms"


def num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"
