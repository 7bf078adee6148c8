"""Polygons in normalized frame coordinates (x, y in 0..1, origin top left), shared by masks and zones.

Pure numpy, so ``edge-agent check`` validates them without OpenCV: at least 3 distinct corners, every
coordinate in 0..1, no edge crossing another (a bow tie has no sensible inside), a non-zero area.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field

Point = tuple[float, float]


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """True when the closed segments p1p2 and q1q2 touch or cross (collinear overlap included)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4):
        return True

    def on(a: Point, b: Point, c: Point) -> bool:
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    return (
        (d1 == 0 and on(q1, q2, p1))
        or (d2 == 0 and on(q1, q2, p2))
        or (d3 == 0 and on(p1, p2, q1))
        or (d4 == 0 and on(p1, p2, q2))
    )


def area(poly: Sequence[Point]) -> float:
    """Area (shoelace), as a fraction of the frame."""
    xs = np.array([p[0] for p in poly])
    ys = np.array([p[1] for p in poly])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2.0)


def check_polygon(points: list[Point]) -> list[Point]:
    """The polygon, or ValueError saying what is wrong with it (pydantic puts the key path in front)."""
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points [x, y] (got {len(points)})")
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"point {i} [{x:g}, {y:g}] is outside the frame: coordinates are fractions of the width "
                "and height, 0..1"
            )
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        if a == b:
            raise ValueError(f"points {i} and {(i + 1) % n} are the same point; remove one")
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the closing edge shares point 0 with the first edge
            if _segments_cross(a, b, points[j], points[(j + 1) % n]):
                raise ValueError(
                    f"edge {i}-{(i + 1) % n} crosses edge {j}-{(j + 1) % n}: the polygon intersects itself; "
                    "list its corners in order around it"
                )
    if area(points) < 1e-6:
        raise ValueError("the polygon has no area (its points lie on one line)")
    return points


Polygon = Annotated[
    list[tuple[Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]]],
    AfterValidator(check_polygon),
    Field(description="Corners [x, y] in order around the polygon, as fractions of the frame (0..1)."),
]


def contains(poly: Sequence[Point], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which points (xs[i], ys[i]) lie inside ``poly`` (even-odd ray casting; a point exactly on the left
    or top edge counts as inside, on the right or bottom edge as outside, so neighbours never share one)."""
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    inside = np.zeros(xs.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > ys) != (y2 > ys)
        x_at = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xs < x_at)
    return inside


def coverage(polygons: Sequence[Sequence[Point]], cells: int = 64) -> float:
    """Fraction of the frame the union of ``polygons`` covers, sampled on a cells x cells grid."""
    centres = (np.arange(cells) + 0.5) / cells
    xs, ys = np.meshgrid(centres, centres)
    covered = np.zeros(xs.shape, dtype=bool)
    for poly in polygons:
        covered |= contains(poly, xs, ys)
    return float(covered.mean())
