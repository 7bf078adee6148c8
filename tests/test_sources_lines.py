"""Pure parts of the sensor sources: windowing, line parsing, line splitting, backoff."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.sources.base import Backoff
from edge_agent.sources.lines import MAX_LINE_BYTES, BadLine, HeaderMismatch, LineParser, LineSplitter
from edge_agent.sources.window import Windower


def run_windower(n: int, size: int, hop: int, channels: int = 2) -> list[np.ndarray]:
    windower = Windower(size, hop)
    out = []
    for i in range(n):
        window = windower.push(np.array([i, -i][:channels], np.float32))
        if window is not None:
            out.append(window)
    return out


def test_windows_overlap_by_size_minus_hop() -> None:
    windows = run_windower(10, size=4, hop=2)
    assert [w[:, 0].tolist() for w in windows] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert all(w.shape == (4, 2) and w.dtype == np.float32 for w in windows)
    assert windows[1][:, 1].tolist() == [-2, -3, -4, -5]


def test_without_window_config_one_sample_is_one_window() -> None:
    windower = Windower.from_config(None)
    window = windower.push(np.array([1.5, 2.5], np.float32))
    assert window is not None and window.shape == (1, 2) and window.tolist() == [[1.5, 2.5]]


@given(n=st.integers(0, 60), size=st.integers(1, 12), hop_fraction=st.floats(0.01, 1.0))
def test_window_count_and_starts(n: int, size: int, hop_fraction: float) -> None:
    hop = max(1, round(size * hop_fraction))
    windows = run_windower(n, size, hop, channels=1)
    expected = 0 if n < size else (n - size) // hop + 1
    assert len(windows) == expected
    assert [int(w[0, 0]) for w in windows] == [k * hop for k in range(expected)]
    assert all(np.array_equal(w[:, 0], np.arange(w[0, 0], w[0, 0] + size)) for w in windows)


def test_windows_are_independent_copies() -> None:
    windows = run_windower(6, size=2, hop=1)
    windows[0][:] = 99
    assert windows[1][:, 0].tolist() == [1, 2]


def test_csv_with_header_picks_fields_in_order() -> None:
    parser = LineParser("csv", ["z", "x"])
    assert parser.parse("t,x,y,z") is None
    assert parser.header == ["t", "x", "y", "z"]
    assert parser.parse("0.1, 1, 2, 3").tolist() == [3, 1]
    with pytest.raises(BadLine, match="not a number"):
        parser.parse("0.2,1,oops,3x")
    with pytest.raises(BadLine, match="columns"):
        parser.parse("0.3,1")


def test_csv_header_without_the_fields_is_a_header_mismatch() -> None:
    parser = LineParser("csv", ["ax"])
    with pytest.raises(HeaderMismatch, match="ax"):
        parser.parse("t,x,y")
    with pytest.raises(HeaderMismatch):
        parser.parse("1,2,3")


def test_csv_without_header_fixes_the_channel_count() -> None:
    parser = LineParser("csv")
    assert parser.parse("# a comment") is None and parser.parse("   ") is None
    assert parser.parse("1,2,3").tolist() == [1, 2, 3]
    with pytest.raises(BadLine, match="2 values, expected 3"):
        parser.parse("1,2")
    with pytest.raises(BadLine, match="not a number"):
        parser.parse("a,b,c")  # a header is only possible before the first sample
    with pytest.raises(BadLine, match="finite"):
        parser.parse("1,nan,3")


def test_json_objects_and_arrays() -> None:
    parser = LineParser("jsonl")
    assert parser.parse('{"t": "12:00", "x": 1, "y": 2.5, "ok": true}').tolist() == [1, 2.5]
    assert parser.parse('{"y": 4, "x": 3}').tolist() == [3, 4]  # keys fixed by the first object, in its order
    with pytest.raises(BadLine, match="no key y"):
        parser.parse('{"x": 1}')
    with pytest.raises(BadLine, match="not JSON"):
        parser.parse('{"x": 1,')
    with pytest.raises(BadLine, match="not a number"):
        parser.parse('{"x": "1", "y": null}')
    assert LineParser("json").parse("[1, 2]").tolist() == [1, 2]
    assert LineParser("json", ["b"]).parse('{"a": 1, "b": 2}').tolist() == [2]


def test_splitter_keeps_partial_lines_and_drops_overlong() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"1,2\n3,") == ["1,2"]
    assert splitter.feed(b"4\r\n5") == ["3,4\r"]
    assert splitter.flush() == "5"
    assert splitter.feed(b"x" * (MAX_LINE_BYTES + 1)) == []
    assert splitter.overlong == 1
    assert splitter.feed(b"6\n") == ["6"]


def test_backoff_doubles_to_the_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 3.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_spreads_each_step_without_exceeding_it() -> None:
    delays = [Backoff(1.0, 8.0).next_delay() for _ in range(200)]
    assert min(delays) >= 0.5 and max(delays) <= 1.0
    assert max(delays) - min(delays) > 0.3  # spread, not lock-step
    backoff = Backoff(1.0, 8.0)
    steps = [backoff.next_delay() for _ in range(6)]
    assert all(lo / 2 <= d <= lo for d, lo in zip(steps, [1, 2, 4, 8, 8, 8], strict=True))
